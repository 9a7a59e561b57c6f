/* A side module that stores a byte wherever it is told: with an address past the memory's
 * end, an out-of-bounds store made by a side module's code. */
void poke(volatile char *where, char value) { *where = value; }
