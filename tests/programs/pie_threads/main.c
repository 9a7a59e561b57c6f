/*
 * pie_threads/main.c (+ ../threads/wasi_thread_start.s) -> pie_threads/main_v2.wasm (threads from
 * wasix_32v1.thread_spawn_v2), main_wasi.wasm (wasi.thread-spawn) and main_nostart.wasm (no
 * wasi_thread_start export): the program shape Wasmer runs — a freestanding PIE main (dylink.0,
 * imported shared memory, table and __stack_pointer), no libc, raw WASIX imports, static thread
 * stacks — with threads that dlopen.
 *
 * Usage: main_*.wasm WAIT [N]   (libraries libpt0..N.so found by bare name: in LD_LIBRARY_PATH,
 * else in /lib)
 *   N threads (default 4, at most 8) start together; each dlopens a different libpt<k>.so at
 *   the same time and dlsyms four symbols. Main calls every thread's pointers (cross-thread
 *   calls through dlsym'd pointers). Then the threads wait while main dlopens libpt<N>.so:
 *   WAIT says how — `futex` (host wasix_32v1.futex_wait), `atomic` (raw memory.atomic.wait32),
 *   `spin` (a guest loop with no host call), `sleep` (wasix_32v1.thread_sleep in a loop).
 *   Released, each thread calls every pointer, main's new ones included, and reports a sum.
 * Expected stdout:
 *   pie_threads: N threads, WAIT
 *   phase 1: N libraries loaded by N threads, pointers ok
 *   phase 2: libpt<N>.so loaded while threads WAIT, N sums ok
 *   pie_threads: done
 * main_nostart.wasm (any arguments) prints
 *   spawn: errno=76
 *   pie_threads: done
 * Exit code 0; 1 after "FAIL ..." lines.
 */
#include "pt.h"

#define MAX_THREADS 8
#define STACK_SIZE 65536
#define RTLD_NOW 2

static char stacks[MAX_THREADS][STACK_SIZE] __attribute__((aligned(16)));
static struct thread_start starts[MAX_THREADS];

enum { W_FUTEX, W_ATOMIC, W_SPIN, W_SLEEP };
static int wait_kind;
static int nthreads;

static volatile int phase;       /* 0 before the start, 1 loading, 2 released after main's load */
static volatile int ready_count; /* threads done with phase 1 */
static volatile int done_count;  /* threads done with phase 2 */

/* Per library k (thread k's, and main's at k = nthreads): handle and dlsym'd symbols. */
static io_u32 fn_ptr[MAX_THREADS + 1], data_ptr[MAX_THREADS + 1], getfp_ptr[MAX_THREADS + 1],
    callmain_ptr[MAX_THREADS + 1];
static int thread_failed[MAX_THREADS];
static long long thread_sums[MAX_THREADS];
static char errors[MAX_THREADS + 1][160];
static char ld_path[256]; /* LD_LIBRARY_PATH, read once by main (io_getenv is not thread-safe) */

typedef int (*int_fn)(int);
typedef int_fn (*getfp_fn)(void);

int pt_main_scale(int x) { return x * 7; } /* imported by every libpt */

static int load(int k) {
    char name[] = "libpt0.so";
    name[5] = (char)('0' + k);
    io_u32 handle = 0;
    char *err = errors[k];
    if (wasix_dlopen(name, sizeof name - 1, RTLD_NOW, err, sizeof errors[k], ld_path,
                     io_strlen(ld_path), &handle))
        return 1;
    static const char *const symbols[4] = {"side_fn", "side_data", "side_get_fp",
                                           "side_call_main"};
    io_u32 *outs[4] = {&fn_ptr[k], &data_ptr[k], &getfp_ptr[k], &callmain_ptr[k]};
    for (int i = 0; i < 4; i++) {
        if (wasix_dlsym(handle, symbols[i], io_strlen(symbols[i]), err, sizeof errors[k],
                        outs[i]))
            return 1;
    }
    return 0;
}

/* What library k's symbols give, called through the pointers, and what they should give. */
static long long through_pointers(int k) {
    int_fn fn = (int_fn)fn_ptr[k], call_main = (int_fn)callmain_ptr[k];
    int_fn local = ((getfp_fn)getfp_ptr[k])();
    return fn(3) + *(int *)data_ptr[k] + local(3) + call_main(2);
}

static long long expected(int k) {
    return (3 * (k + 2) + 1000 + k) + (1000 + k) + (3 + 100 * k) + (2 * 7 + k);
}

static void wake_all(volatile int *addr) {
    io_u32 woken;
    wasix_futex_wake_all(addr, &woken);
    __builtin_wasm_memory_atomic_notify((int *)addr, 0x7fffffff);
}

/* Wait while *addr == value: through the host, unless `kind` says otherwise. */
static void wait_while(volatile int *addr, int value, int kind) {
    static const struct { unsigned char tag; unsigned long long ns; } forever = {0, 0};
    io_u32 woken;
    while (__atomic_load_n(addr, __ATOMIC_SEQ_CST) == value) {
        switch (kind) {
        case W_ATOMIC: __builtin_wasm_memory_atomic_wait32((int *)addr, value, -1); break;
        case W_SPIN: break;
        case W_SLEEP: wasix_thread_sleep(1000000); break;
        default: wasix_futex_wait(addr, value, &forever, &woken);
        }
    }
}

void thread_entry(int tid, struct thread_start *start) {
    (void)tid;
    int k = (int)start->start_args;
    wait_while(&phase, 0, W_FUTEX);
    thread_failed[k] = load(k);
    __atomic_fetch_add(&ready_count, 1, __ATOMIC_SEQ_CST);
    wake_all(&ready_count);
    wait_while(&phase, 1, wait_kind);
    long long sum = 0;
    for (int j = 0; j <= nthreads; j++) sum += through_pointers(j);
    thread_sums[k] = sum;
    __atomic_fetch_add(&done_count, 1, __ATOMIC_SEQ_CST);
    wake_all(&done_count);
}

static int spawn(int k) {
    struct thread_start *st = &starts[k];
    st->stack_upper = (io_u32)(stacks[k] + STACK_SIZE);
    st->stack_size = STACK_SIZE;
    st->start_args = (io_u32)k;
#ifdef USE_WASI_THREAD_SPAWN
    int tid = wasi_thread_spawn(st);
    return tid < 0 ? -tid : 0;
#else
    io_u32 tid;
    return wasix_thread_spawn_v2(st, &tid);
#endif
}

static int failures;

static void fail(const char *what, int k) {
    io_puts("FAIL ");
    io_puts(what);
    io_putc(' ');
    io_putint(k);
    if (errors[k][0]) {
        io_puts(": ");
        io_puts(errors[k]);
    }
    io_putc('\n');
    failures++;
}

static int streq(const char *a, const char *b) {
    return io_streq_prefix(a, b) && io_strlen(a) == io_strlen(b);
}

extern void __wasm_call_ctors(void);

void _start(void) {
    __wasm_call_ctors();
    static char kind[16]; /* a copy: the next io_arg reuses its buffer */
    const char *arg = io_arg(1, "futex");
    for (io_u32 i = 0; arg[i] && i + 1 < sizeof kind; i++) kind[i] = arg[i];
    wait_kind = streq(kind, "atomic") ? W_ATOMIC : streq(kind, "spin") ? W_SPIN
              : streq(kind, "sleep") ? W_SLEEP : W_FUTEX;
    const char *env_path = io_getenv("LD_LIBRARY_PATH");
    for (io_u32 i = 0; env_path && env_path[i] && i + 1 < sizeof ld_path; i++)
        ld_path[i] = env_path[i];
    const char *count = io_arg(2, "4");
    nthreads = 0;
    for (const char *p = count; *p >= '0' && *p <= '9'; p++) nthreads = nthreads * 10 + *p - '0';
    if (nthreads < 1 || nthreads > MAX_THREADS) nthreads = 4;
#ifdef NO_THREAD_START
    int err = spawn(0);
    io_kv("spawn: errno", err);
    io_puts("pie_threads: done\n");
    __wasi_proc_exit(err == 76 ? 0 : 1);
#endif
    io_puts("pie_threads: ");
    io_putint(nthreads);
    io_puts(" threads, ");
    io_puts(kind);
    io_putc('\n');
    for (int k = 0; k < nthreads; k++) {
        int err = spawn(k);
        if (err) {
            io_kv("FAIL spawn errno", err);
            __wasi_proc_exit(1);
        }
    }
    __atomic_store_n(&phase, 1, __ATOMIC_SEQ_CST);
    wake_all(&phase);
    for (int seen; (seen = __atomic_load_n(&ready_count, __ATOMIC_SEQ_CST)) < nthreads;)
        wait_while(&ready_count, seen, W_FUTEX);
    for (int k = 0; k < nthreads; k++) {
        if (thread_failed[k]) fail("thread load", k);
        else if (through_pointers(k) != expected(k)) fail("pointers of library", k);
    }
    if (!failures) {
        io_puts("phase 1: ");
        io_putint(nthreads);
        io_puts(" libraries loaded by ");
        io_putint(nthreads);
        io_puts(" threads, pointers ok\n");
    }
    /* The threads now wait (WAIT) while this thread loads one more library. */
    if (load(nthreads)) fail("main load", nthreads);
    __atomic_store_n(&phase, 2, __ATOMIC_SEQ_CST);
    wake_all(&phase);
    for (int seen; (seen = __atomic_load_n(&done_count, __ATOMIC_SEQ_CST)) < nthreads;)
        wait_while(&done_count, seen, W_FUTEX);
    long long want = 0;
    for (int j = 0; j <= nthreads; j++) want += expected(j);
    int sums_ok = 0;
    for (int k = 0; k < nthreads; k++) {
        if (thread_sums[k] == want) sums_ok++;
        else fail("sum of thread", k);
    }
    if (!failures) {
        io_puts("phase 2: libpt");
        io_putint(nthreads);
        io_puts(".so loaded while threads ");
        io_puts(kind);
        io_puts(", ");
        io_putint(sums_ok);
        io_puts(" sums ok\n");
    }
    io_puts("pie_threads: done\n");
    __wasi_proc_exit(failures ? 1 : 0);
}
