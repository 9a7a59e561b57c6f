/* errno for side modules. wasix-libc declares errno as an extern _Thread_local variable, and
 * PIC code cannot reference a thread-local defined in another module (wasm-ld: "relocation
 * R_WASM_MEMORY_ADDR_TLS_SLEB cannot be used against an undefined symbol `errno`"). libc's
 * __errno_location() returns the calling thread's errno of the main module: route errno
 * through it (the main must export it; build-guests' exports_for does, from the imports).
 * glibc already defines errno this way, so native builds of the same source are unchanged. */
#ifndef SIDE_ERRNO_H
#define SIDE_ERRNO_H
#include <errno.h>
#if defined(__wasi__)
#undef errno
int *__errno_location(void);
#define errno (*__errno_location())
#endif
#endif
