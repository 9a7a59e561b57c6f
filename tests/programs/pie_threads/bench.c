/*
 * pie_threads/bench.c (+ ../threads/wasi_thread_start.s) -> pie_threads/bench.wasm: link-operation and thread
 * timings taken inside the guest (clock_time_get MONOTONIC), for scripts/bench-peers, which runs
 * the same binary under wasmgroup and under the real Wasmer. Freestanding PIE, raw WASIX imports.
 *
 * Usage: bench.wasm IDLE OPENS PINGPONG
 *   spawns IDLE threads (timing each spawn to the thread's entry), parks them in the host
 *   futex_wait, then for k < OPENS: dlopen libpt<k>.so, dlsym of a function (a new table slot),
 *   dlsym of data, dlopen of the same name again, dlsym of the function again (its slot is
 *   known); then, with the idle threads released, PINGPONG
 *   round trips between main and one more thread over host futexes.
 * Output lines, one figure each:  spawn K ns=..  open K ns=..  sym K ns=..  symdata K ns=..
 *   reopen K ns=..  symagain K ns=..  pingpong N ns=..  and last "bench: ok" (exit 0) or "bench: FAIL ..." (exit 1).
 */
#include "pt.h"

__attribute__((import_module("wasi_snapshot_preview1"), import_name("clock_time_get")))
int wasi_clock_time_get(io_u32 id, unsigned long long precision, unsigned long long *out);

#define MAX_THREADS 16
#define STACK_SIZE 32768

static char stacks[MAX_THREADS + 1][STACK_SIZE] __attribute__((aligned(16)));
static struct thread_start starts[MAX_THREADS + 1];
static unsigned long long entered_ns[MAX_THREADS + 1];
static volatile int ready, quit, finished, ball;
static char err[256];
static char ld_path[256];
static int rounds;

static unsigned long long now_ns(void) {
    unsigned long long t = 0;
    wasi_clock_time_get(1, 1, &t);
    return t;
}

static void wait_while(volatile int *addr, int value) {
    static const struct { unsigned char tag; unsigned long long ns; } forever = {0, 0};
    io_u32 woken;
    while (__atomic_load_n(addr, __ATOMIC_SEQ_CST) == value)
        wasix_futex_wait(addr, value, &forever, &woken);
}

static void wake(volatile int *addr) {
    io_u32 woken;
    wasix_futex_wake_all(addr, &woken);
}

static void bump(volatile int *addr) {
    __atomic_fetch_add(addr, 1, __ATOMIC_SEQ_CST);
    wake(addr);
}

/* Odd values of `ball` are the partner's turn, even ones main's. */
static void partner(void) {
    for (int i = 0; i < rounds; i++) {
        wait_while(&ball, 2 * i);
        bump(&ball);
    }
}

void thread_entry(int tid, struct thread_start *start) {
    (void)tid;
    int k = (int)start->start_args;
    entered_ns[k] = now_ns();
    if (k == MAX_THREADS) {
        partner();
        return;
    }
    bump(&ready);
    wait_while(&quit, 0);
    bump(&finished);
}

static int spawn(int k) {
    struct thread_start *st = &starts[k];
    st->stack_upper = (io_u32)(stacks[k] + STACK_SIZE);
    st->stack_size = STACK_SIZE;
    st->start_args = (io_u32)k;
    io_u32 tid;
    return wasix_thread_spawn_v2(st, &tid);
}

static void line(const char *what, int k, unsigned long long ns) {
    io_puts(what);
    io_putc(' ');
    io_putint(k);
    io_puts(" ns=");
    io_putint((long long)ns);
    io_putc('\n');
}

static void fail(const char *what) {
    io_puts("bench: FAIL ");
    io_puts(what);
    if (err[0]) {
        io_puts(": ");
        io_puts(err);
    }
    io_putc('\n');
    __wasi_proc_exit(1);
}

static int number(io_u32 i, int fallback) {
    const char *a = io_arg(i, "");
    if (!*a) return fallback;
    int v = 0;
    while (*a >= '0' && *a <= '9') v = v * 10 + *a++ - '0';
    return v;
}

extern void __wasm_call_ctors(void);

void _start(void) {
    __wasm_call_ctors();
    int idle = number(1, 0), opens = number(2, 4);
    rounds = number(3, 0);
    if (idle > MAX_THREADS) idle = MAX_THREADS;
    if (opens > 9) opens = 9;
    const char *env_path = io_getenv("LD_LIBRARY_PATH");
    for (io_u32 i = 0; env_path && env_path[i] && i + 1 < sizeof ld_path; i++)
        ld_path[i] = env_path[i];
    for (int k = 0; k < idle; k++) {
        unsigned long long t0 = now_ns();
        if (spawn(k)) fail("spawn");
        for (int seen; (seen = __atomic_load_n(&ready, __ATOMIC_SEQ_CST)) <= k;)
            wait_while(&ready, seen);
        line("spawn", k, entered_ns[k] - t0);
    }
    for (int k = 0; k < opens; k++) {
        char name[] = "libpt0.so";
        name[5] = (char)('0' + k);
        io_u32 handle = 0, again = 0, fn = 0, data = 0;
        unsigned long long t0 = now_ns();
        if (wasix_dlopen(name, sizeof name - 1, 2, err, sizeof err, ld_path,
                         io_strlen(ld_path), &handle))
            fail("dlopen");
        unsigned long long t1 = now_ns();
        if (wasix_dlsym(handle, "side_fn", 7, err, sizeof err, &fn)) fail("dlsym side_fn");
        unsigned long long t2 = now_ns();
        if (wasix_dlsym(handle, "side_data", 9, err, sizeof err, &data)) fail("dlsym side_data");
        unsigned long long t3 = now_ns();
        if (wasix_dlopen(name, sizeof name - 1, 2, err, sizeof err, ld_path,
                         io_strlen(ld_path), &again) || again != handle)
            fail("dlopen again");
        unsigned long long t4 = now_ns();
        io_u32 fn_again = 0;
        if (wasix_dlsym(handle, "side_fn", 7, err, sizeof err, &fn_again) || fn_again != fn)
            fail("dlsym side_fn again");
        unsigned long long t5 = now_ns();
        if (((int (*)(int))fn)(5) != 5 * (k + 2) + 1000 + k || *(int *)data != 1000 + k)
            fail("results");
        line("open", k, t1 - t0);
        line("sym", k, t2 - t1);
        line("symdata", k, t3 - t2);
        line("reopen", k, t4 - t3);
        line("symagain", k, t5 - t4);
    }
    __atomic_store_n(&quit, 1, __ATOMIC_SEQ_CST);
    wake(&quit);
    for (int seen; (seen = __atomic_load_n(&finished, __ATOMIC_SEQ_CST)) < idle;)
        wait_while(&finished, seen);
    if (rounds > 0) {
        if (spawn(MAX_THREADS)) fail("spawn partner");
        unsigned long long t0 = now_ns();
        for (int i = 0; i < rounds; i++) {
            bump(&ball);
            wait_while(&ball, 2 * i + 1);
        }
        line("pingpong", rounds, now_ns() - t0);
    }
    io_puts("bench: ok\n");
    __wasi_proc_exit(0);
}
