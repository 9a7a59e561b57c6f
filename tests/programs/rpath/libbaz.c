/*
 * rpath/libbaz.c -> rpath/libbaz.so: side module with NEEDED libqux.so and RUNTIME_PATH
 * "$ORIGIN/lib" (linked with ziglang's wasm-ld, lld 19 has no --rpath). dlopen'ed by
 * pie/main.wasm through wasix_32v1.dlopen; the loader must find lib/libqux.so next to it.
 * baz(x) = qux(x) + 7, so baz(5) = 122; exports data baz_magic = 4242. Prints nothing.
 */
extern int qux(int x);

int baz_magic = 4242;

int baz(int x) { return qux(x) + 7; }
