/* The SQLite amalgamation, built for wasix-libc with loadable extensions: sqlite3.h turns
 * SQLITE_OMIT_LOAD_EXTENSION on for every __wasi__ target, but WASIX has dlopen. Including the
 * header first runs that block once; its copy inside sqlite3.c is then skipped by the include
 * guard, after the macro is gone. That copy is also where the amalgamation defines
 * sqlite3_version, so it is defined here. Everything else stays as SQLite sets it for WASI
 * (the "unix-dotfile" VFS: no fcntl locks, no mmap). The native build compiles this file too. */
#include "sqlite3.h"
#undef SQLITE_OMIT_LOAD_EXTENSION
#include "sqlite3.c"
SQLITE_API const char sqlite3_version[] = SQLITE_VERSION;
