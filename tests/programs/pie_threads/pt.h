/*
 * pie_threads/pt.h: what main.c and bench.c share — raw WASIX imports (declared directly, no
 * libc), the WASIX ThreadStart layout, and the thread entry that ../threads/wasi_thread_start.s
 * calls once it has set the new thread's __stack_pointer from the start argument.
 */
#ifndef WASMGROUP_PT_H
#define WASMGROUP_PT_H

#include "../include/wasi_io.h"

#define WASIX(name) __attribute__((import_module("wasix_32v1"), import_name(#name)))

WASIX(dlopen) int wasix_dlopen(const char *path, io_u32 path_len, io_u32 flags, char *err,
                               io_u32 err_len, const char *ld_path, io_u32 ld_path_len,
                               io_u32 *out_handle);
WASIX(dlsym) int wasix_dlsym(io_u32 handle, const char *symbol, io_u32 symbol_len, char *err,
                             io_u32 err_len, io_u32 *out);
WASIX(futex_wait) int wasix_futex_wait(volatile int *futex, int expected,
                                       const void *timeout, io_u32 *woken);
WASIX(futex_wake_all) int wasix_futex_wake_all(volatile int *futex, io_u32 *woken);
WASIX(thread_sleep) int wasix_thread_sleep(unsigned long long duration_ns);
WASIX(thread_spawn_v2) int wasix_thread_spawn_v2(void *start, io_u32 *ret_tid);
__attribute__((import_module("wasi"), import_name("thread-spawn")))
int wasi_thread_spawn(void *start_arg);

/* WASIX ThreadStart (wasm32): stack_upper must stay first (wasi_thread_start.s reads it). */
struct thread_start {
    io_u32 stack_upper, tls_base, start_funct, start_args, reserved[10], stack_size, guard_size;
};

/* Called by wasi_thread_start(tid, start) once __stack_pointer is set. */
void thread_entry(int tid, struct thread_start *start);

#endif
