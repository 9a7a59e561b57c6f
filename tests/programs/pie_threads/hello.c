/*
 * pie_threads/hello.c -> pie_threads/hello.wasm: hello world as a freestanding PIE that imports
 * no thread-spawn call, for scripts/bench-start (the whole process of a one-thread program,
 * under wasmgroup and under the real Wasmer). Prints "hello, world" and returns from _start.
 * The greeting is called through a function pointer: the module then imports its table, as
 * Wasmer's linker requires of every main.
 */
#include "../include/wasi_io.h"

static void greet(void) {
    static const char text[] = "hello, world\n";
    struct io_ciovec iov = {text, sizeof text - 1};
    io_u32 written;
    __wasi_fd_write(1, &iov, 1, &written);
}

static void (*volatile greeting)(void) = greet;

void _start(void) { greeting(); }
