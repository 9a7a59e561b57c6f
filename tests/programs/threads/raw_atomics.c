/*
 * threads/raw_atomics.c (+ wasi_thread_start.s) -> threads/raw_atomics.wasm: freestanding
 * threads program, no libc, not dynamic. Imports only a shared env.memory, wasi.thread-spawn
 * and wasi_snapshot_preview1 (fd_write, proc_exit); exports _start and wasi_thread_start.
 *
 * 4 threads spawned with wasi.thread-spawn; each takes a futex mutex
 * (memory.atomic.wait32/notify) 2500 times to bump a shared counter, counts in its own TLS
 * variable (initialised per thread with __wasm_init_tls), then marks itself done; main waits
 * on an atomic join counter with memory.atomic.wait32.
 * Expected stdout:
 *   raw_atomics: spawned 4 threads
 *   counter=10000 joined=4 tls_ok=4 main_tls=7
 * Exit code 0.
 */
#include "../include/wasi_io.h"

__attribute__((import_module("wasi"), import_name("thread-spawn")))
int wasi_thread_spawn(void *start_arg);

extern void __wasm_init_tls(void *block); /* synthesized by wasm-ld with --shared-memory */

#define NTHREADS 4
#define ITERS 2500
#define STACK_SIZE 16384
#define TLS_BLOCK 64

struct start_arg {
    char *stack_top; /* must stay first: read by wasi_thread_start.s */
    void *tls_block;
    int index;
};

static char stacks[NTHREADS][STACK_SIZE] __attribute__((aligned(16)));
static char tls_blocks[NTHREADS][TLS_BLOCK] __attribute__((aligned(16)));
static struct start_arg args[NTHREADS];

static int mutex;    /* 0 unlocked, 1 locked, 2 locked with waiters */
static int counter;
static int finished; /* join counter */
static int tls_ok;
static _Thread_local int my_adds = 7;

static void lock(int *m) {
    int c = 0;
    if (__atomic_compare_exchange_n(m, &c, 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return;
    if (c != 2) c = __atomic_exchange_n(m, 2, __ATOMIC_SEQ_CST);
    while (c != 0) {
        __builtin_wasm_memory_atomic_wait32(m, 2, -1);
        c = __atomic_exchange_n(m, 2, __ATOMIC_SEQ_CST);
    }
}

static void unlock(int *m) {
    if (__atomic_fetch_sub(m, 1, __ATOMIC_SEQ_CST) != 1) {
        __atomic_store_n(m, 0, __ATOMIC_SEQ_CST);
        __builtin_wasm_memory_atomic_notify(m, 1);
    }
}

/* Called from wasi_thread_start.s once the stack pointer is set. */
void thread_entry(int tid, struct start_arg *arg) {
    (void)tid;
    __wasm_init_tls(arg->tls_block);
    my_adds = 0; /* this thread's copy; main's stays 7 */
    for (int i = 0; i < ITERS; i++) {
        lock(&mutex);
        counter++;
        unlock(&mutex);
        my_adds++;
    }
    if (my_adds == ITERS) __atomic_fetch_add(&tls_ok, 1, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&finished, 1, __ATOMIC_SEQ_CST);
    __builtin_wasm_memory_atomic_notify(&finished, 1);
}

void _start(void) {
    if (__builtin_wasm_tls_size() > TLS_BLOCK) {
        io_puts("FAIL tls block too small\n");
        __wasi_proc_exit(1);
    }
    int spawned = 0;
    for (int i = 0; i < NTHREADS; i++) {
        args[i].stack_top = stacks[i] + STACK_SIZE;
        args[i].tls_block = tls_blocks[i];
        args[i].index = i;
        int tid = wasi_thread_spawn(&args[i]);
        if (tid <= 0) {
            io_kv("FAIL thread-spawn", tid);
            __wasi_proc_exit(1);
        }
        spawned++;
    }
    io_puts("raw_atomics: spawned ");
    io_putint(spawned);
    io_puts(" threads\n");
    for (;;) {
        int f = __atomic_load_n(&finished, __ATOMIC_SEQ_CST);
        if (f == NTHREADS) break;
        __builtin_wasm_memory_atomic_wait32(&finished, f, -1);
    }
    io_puts("counter=");
    io_putint(counter);
    io_puts(" joined=");
    io_putint(finished);
    io_puts(" tls_ok=");
    io_putint(tls_ok);
    io_puts(" main_tls=");
    io_putint(my_adds);
    io_putc('\n');
    __wasi_proc_exit(counter == NTHREADS * ITERS && tls_ok == NTHREADS && my_adds == 7 ? 0 : 1);
}
