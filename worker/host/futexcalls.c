/* wasix_32v1 futex_wake and futex_wake_all as wasmtime host functions in C (worker/host/
 * native.py registers them with wasmtime_func_new_unchecked). Through Python and ctypes a
 * wake cost 3-6 us of CPU; here it is the syscall. Built by scripts/setup-venv beside this
 * file (_futexcalls.so); without it the Python functions of wasix.py serve the calls.
 *
 * A wake changes no link state, reaches no safe point and never blocks, so nothing in it
 * needs Python. The memory is the program's fixed region: its base and length never change
 * while the store lives (the environment below is the group's, kept alive with the store). */
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/futex.h>

#define EMEMVIOLATION 78

struct wg_memory {
    uint8_t *base;
    uint64_t length;
};

typedef union {
    int32_t i32;
    int64_t i64;
    uint8_t bytes[16]; /* wasmtime_val_raw_t */
} wg_raw;

static void *wake(const struct wg_memory *m, wg_raw *values, int count) {
    uint64_t futex = (uint32_t)values[0].i32, ret_woken = (uint32_t)values[1].i32;
    if (futex + 4 > m->length || ret_woken >= m->length) {
        values[0].i32 = EMEMVIOLATION;
        return NULL;
    }
    /* Not private: the waiters are other processes mapping the same memory. */
    long woken = syscall(SYS_futex, m->base + futex, FUTEX_WAKE, count, NULL, NULL, 0);
    m->base[ret_woken] = woken > 0;
    values[0].i32 = 0;
    return NULL;
}

void *wg_futex_wake(void *env, void *caller, wg_raw *values, size_t count) {
    (void)caller;
    (void)count;
    return wake(env, values, 1);
}

void *wg_futex_wake_all(void *env, void *caller, wg_raw *values, size_t count) {
    (void)caller;
    (void)count;
    return wake(env, values, 0x7fffffff);
}
