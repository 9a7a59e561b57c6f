/*
 * hostile/libdecoy.c -> hostile/libdecoy.so: a loadable side module that tests place OUTSIDE
 * every mapped directory. The locator must never read it, let alone load it.
 */
int decoy_marker = 0x0de0c0de;

int decoy(void) { return decoy_marker; }
