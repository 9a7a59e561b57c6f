/*
 * rpath/lib/libqux.c -> rpath/lib/libqux.so: leaf side module found only through libbaz.so's
 * RUNTIME_PATH ($ORIGIN/lib). qux(x) = 3*x + qux_base (qux_base = 100). Prints nothing.
 */
int qux_base = 100;

int qux(int x) { return 3 * x + qux_base; }
