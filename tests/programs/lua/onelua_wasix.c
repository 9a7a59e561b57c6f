/* Lua 5.4's onelua.c (core, libraries and the lua.c interpreter in one unit) for wasix-libc,
 * and for the native build alike. Built without LUA_USE_POSIX, so that errors use plain
 * setjmp/longjmp (what clang's wasm exception-handling lowering knows), with dlopen for C
 * modules (LUA_USE_DLOPEN, on the command line) and os.tmpname through mkstemp: wasix-libc has
 * no tmpnam (the ISO C fallback Lua would take), so this is the POSIX branch of loslib.c, with
 * the file in the working directory (a guest sees no temporary directory unless one is mapped). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#define LUA_TMPNAMBUFSIZE 32
#define lua_tmpnam(b, e) \
    { strcpy(b, "lua_XXXXXX"); e = mkstemp(b); if (e != -1) close(e); e = (e == -1); }
#include "onelua.c"
