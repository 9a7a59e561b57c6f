/*
 * closures/closures.c -> closures/closures.wasm: wasix-libc pthreads main (static, shared
 * memory, imported table, exported __stack_pointer) exercising WASIX closures and dynamic
 * calls across threads: closure_allocate/prepare/free, call_dynamic, reflect_signature.
 *
 * - a closure prepared by main while a thread already runs, called by that thread (the
 *   broadcast path) and by a thread started later (the replay path); a closure prepared by
 *   a thread, called by main after the join;
 * - 300 allocate/prepare/call/free cycles (one slot, reused), then 150 closures held at once
 *   (a second block of slots, grown while a thread spins calling a closure), then two threads
 *   cycling at once;
 * - call_dynamic (strict and not) and reflect_signature on i32/i64/f32/f64 signatures, on a
 *   plain function and on closures; the errors of every call.
 * Every line is printed by the main thread, so the output is deterministic; exit code 0.
 * With argument "trap": a thread calls (through call_dynamic) a closure whose backing function
 * traps; the program ends with status 134.
 * With arguments "afterfail LIB": a dlopen of LIB fails after growing the table in this thread's
 * group only (a library whose constructor traps); closure slots added afterwards must still
 * be the same in every thread. Expected stdout:
 *   dlopen failed: yes
 *   closure after a failed dlopen: 21 (in another thread: 21)
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <wasi/api_wasix.h>

#define I32 __WASI_WASM_VALUE_TYPE_I32
#define I64 __WASI_WASM_VALUE_TYPE_I64
#define F32 __WASI_WASM_VALUE_TYPE_F32
#define F64 __WASI_WASM_VALUE_TYPE_F64

typedef double (*mix_fn)(int32_t, int64_t, float, double);
typedef int64_t (*neg_fn)(int64_t);
typedef int32_t (*add_fn)(int32_t);
typedef float (*half_fn)(float);

struct env {
    double scale;
    int calls;
};

static void mix_backing(uint8_t *values, uint8_t *results, void *user) {
    struct env *e = user;
    int32_t a;
    int64_t b;
    float c;
    double d;
    memcpy(&a, values, 4);
    memcpy(&b, values + 4, 8);
    memcpy(&c, values + 12, 4);
    memcpy(&d, values + 16, 8);
    double r = (a + (double)b + c + d) * e->scale;
    __atomic_fetch_add(&e->calls, 1, __ATOMIC_SEQ_CST);
    memcpy(results, &r, 8);
}

static void neg_backing(uint8_t *values, uint8_t *results, void *user) {
    (void)user;
    int64_t v;
    memcpy(&v, values, 8);
    v = -v;
    memcpy(results, &v, 8);
}

static void add_backing(uint8_t *values, uint8_t *results, void *user) {
    int32_t v;
    memcpy(&v, values, 4);
    v += (int32_t)(intptr_t)user;
    memcpy(results, &v, 4);
}

static void half_backing(uint8_t *values, uint8_t *results, void *user) {
    (void)user;
    float v;
    memcpy(&v, values, 4);
    v /= 2;
    memcpy(results, &v, 4);
}

int64_t plain_mix(int32_t a, int64_t b, float c, double d) {
    return (int64_t)a * 1000 + b + (int64_t)(c * 10) + (int64_t)(d * 100);
}

void plain_noop(void) {}

static uint32_t slot_of(void (*f)(uint8_t *, uint8_t *, void *)) { return (uint32_t)(uintptr_t)f; }

static uint32_t make(void (*backing)(uint8_t *, uint8_t *, void *), const uint8_t *args,
                     size_t nargs, const uint8_t *results, size_t nresults, void *env) {
    __wasi_function_pointer_t slot = 0;
    int err = __wasi_closure_allocate(&slot);
    if (err) {
        printf("closure_allocate failed: %d\n", err);
        return 0;
    }
    err = __wasi_closure_prepare(slot_of(backing), slot, args, nargs, results, nresults,
                                 (uint8_t *)env);
    if (err) {
        printf("closure_prepare failed: %d\n", err);
        return 0;
    }
    return slot;
}

static const uint8_t MIX_ARGS[] = {I32, I64, F32, F64};
static const uint8_t F64_ONLY[] = {F64};
static const uint8_t I64_ONLY[] = {I64};
static const uint8_t I32_ONLY[] = {I32};
static const uint8_t F32_ONLY[] = {F32};

static struct env mix_env = {2.0, 0};
static volatile uint32_t mix_slot;  /* set by main once prepared */
static volatile int stop_spinning;
static double early_result, late_result;
static volatile uint32_t thread_slot;
static long spins;

/* Started before the closure exists: waits for it, calls it, then spins calling it until
 * told to stop (so table growth and preparations reach a thread in guest code). */
static void *early_thread(void *arg) {
    (void)arg;
    while (!__atomic_load_n(&mix_slot, __ATOMIC_ACQUIRE)) {
    }
    mix_fn f = (mix_fn)(uintptr_t)mix_slot;
    early_result = f(1, 2, 0.5f, 0.25);
    /* A closure made in this thread, for main to call after the join. */
    thread_slot = make(neg_backing, I64_ONLY, 1, I64_ONLY, 1, NULL);
    while (!__atomic_load_n(&stop_spinning, __ATOMIC_ACQUIRE)) {
        f(0, 0, 0, 0);
        spins++;
    }
    return NULL;
}

static void *late_thread(void *arg) {
    (void)arg;
    late_result = ((mix_fn)(uintptr_t)mix_slot)(10, 20, 1.5f, 0.5);
    return NULL;
}

/* Two threads allocating, preparing and freeing at once: each one's requests wait on the
 * other's link operations, which it must keep applying meanwhile. */
static long racing_total[2];
static void *racing_thread(void *arg) {
    intptr_t me = (intptr_t)arg;
    for (int i = 0; i < 60; i++) {
        uint32_t s = make(add_backing, I32_ONLY, 1, I32_ONLY, 1, (void *)(intptr_t)(i + me));
        if (!s) return NULL;
        racing_total[me] += ((add_fn)(uintptr_t)s)(1);
        if (__wasi_closure_free(s)) return NULL;
    }
    return NULL;
}

static void pack(uint8_t *buf, int32_t a, int64_t b, float c, double d) {
    memcpy(buf, &a, 4);
    memcpy(buf + 4, &b, 8);
    memcpy(buf + 12, &c, 4);
    memcpy(buf + 16, &d, 8);
}

static void reflect(const char *what, uint32_t slot, uint16_t cap) {
    uint8_t args[8], results[8];
    memset(args, 0xEE, sizeof args);
    memset(results, 0xEE, sizeof results);
    __wasi_reflection_result_t r = {9, 9, 9};
    int err = __wasi_reflect_signature(slot, args, cap, results, cap, &r);
    printf("reflect %s: err=%d cacheable=%d args=%d results=%d types=", what, err, r.cacheable,
           r.arguments, r.results);
    for (int i = 0; i < r.arguments && i < 8; i++) printf("%d", args[i] == 0xEE ? 9 : args[i]);
    printf("/");
    for (int i = 0; i < r.results && i < 8; i++) printf("%d", results[i] == 0xEE ? 9 : results[i]);
    printf("\n");
}

static void trap_backing(uint8_t *values, uint8_t *results, void *user) {
    (void)values, (void)results, (void)user;
    __builtin_trap();
}

static void *trap_thread(void *arg) {
    uint8_t values[4] = {0}, results[4];
    int err = __wasi_call_dynamic((uint32_t)(uintptr_t)arg, values, 4, results, 4, 1);
    printf("call_dynamic returned %d after a trap\n", err);
    return NULL;
}

static volatile uint32_t waited_slot;
static int waited_result;
static void *waiting_thread(void *arg) {
    (void)arg;
    while (!__atomic_load_n(&waited_slot, __ATOMIC_ACQUIRE)) {
    }
    waited_result = ((add_fn)(uintptr_t)waited_slot)(1);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "afterfail") == 0) {
        pthread_t t;
        pthread_create(&t, NULL, waiting_thread, NULL);
        printf("dlopen failed: %s\n", dlopen(argv[2], RTLD_NOW) ? "no" : "yes");
        uint32_t s = make(add_backing, I32_ONLY, 1, I32_ONLY, 1, (void *)(intptr_t)20);
        if (!s) return 1;
        int here = ((add_fn)(uintptr_t)s)(1);
        __atomic_store_n(&waited_slot, s, __ATOMIC_RELEASE);
        pthread_join(t, NULL);
        printf("closure after a failed dlopen: %d (in another thread: %d)\n", here,
               waited_result);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "trap") == 0) {
        uint32_t s = make(trap_backing, I32_ONLY, 1, I32_ONLY, 1, NULL);
        pthread_t t;
        pthread_create(&t, NULL, trap_thread, (void *)(uintptr_t)s);
        pthread_join(t, NULL);
        return 0;
    }
    pthread_t early, late;
    pthread_create(&early, NULL, early_thread, NULL);

    uint32_t slot = make(mix_backing, MIX_ARGS, 4, F64_ONLY, 1, &mix_env);
    __atomic_store_n(&mix_slot, slot, __ATOMIC_RELEASE);
    double direct = ((mix_fn)(uintptr_t)slot)(3, 4, 0.5f, 0.5);
    printf("closure in main: %.2f\n", direct);
    pthread_create(&late, NULL, late_thread, NULL);
    pthread_join(late, NULL);
    /* The early thread sets thread_slot after early_result: wait for both before printing.
     * Slot numbers below are deterministic once the thread has its closure. */
    while (!__atomic_load_n(&thread_slot, __ATOMIC_ACQUIRE)) {
    }
    printf("called from a thread started before: %.2f, after: %.2f\n", early_result,
           late_result);

    /* Many cycles: the freed slot comes back each time. */
    uint32_t first = 0, distinct = 0, last = 0;
    long total = 0;
    for (int i = 0; i < 300; i++) {
        uint32_t s = make(add_backing, I32_ONLY, 1, I32_ONLY, 1, (void *)(intptr_t)i);
        if (!s) return 1;
        if (s != last) distinct++;
        if (!first) first = s;
        last = s;
        total += ((add_fn)(uintptr_t)s)(1000);
        if (__wasi_closure_free(s)) return 1;
    }
    printf("cycles: 300 total=%ld distinct_slots=%u\n", total, distinct);

    /* More closures at once than a block holds: the table grows while a thread spins. */
    static uint32_t held[150];
    long sum = 0;
    for (int i = 0; i < 150; i++) {
        held[i] = make(add_backing, I32_ONLY, 1, I32_ONLY, 1, (void *)(intptr_t)(i * 3));
        if (!held[i]) return 1;
    }
    for (int i = 0; i < 150; i++) sum += ((add_fn)(uintptr_t)held[i])(1);
    uint32_t lo = held[0], hi = held[0];
    for (int i = 0; i < 150; i++) {
        if (held[i] < lo) lo = held[i];
        if (held[i] > hi) hi = held[i];
    }
    printf("held: 150 sum=%ld span=%u\n", sum, hi - lo + 1);

    __atomic_store_n(&stop_spinning, 1, __ATOMIC_RELEASE);
    pthread_join(early, NULL);
    printf("closure from the thread: neg(5)=%lld spun=%d calls>0=%d\n",
           (long long)((neg_fn)(uintptr_t)thread_slot)(5), spins > 0, mix_env.calls > 2);
    for (int i = 0; i < 150; i++)
        if (__wasi_closure_free(held[i])) return 1;

    pthread_t racers[2];
    for (intptr_t i = 0; i < 2; i++) pthread_create(&racers[i], NULL, racing_thread, (void *)i);
    for (int i = 0; i < 2; i++) pthread_join(racers[i], NULL);
    printf("racing threads: %ld %ld\n", racing_total[0], racing_total[1]);

    /* f32 in and out. */
    uint32_t half = make(half_backing, F32_ONLY, 1, F32_ONLY, 1, NULL);
    printf("half(5)=%.2f\n", ((half_fn)(uintptr_t)half)(5.0f));

    /* call_dynamic */
    uint8_t values[24], results[16];
    int64_t r64 = 0;
    uint32_t plain = (uint32_t)(uintptr_t)plain_mix;
    pack(values, 7, 5, 1.5f, 0.25);
    int err = __wasi_call_dynamic(plain, values, 24, results, 8, 1);
    memcpy(&r64, results, 8);
    printf("call_dynamic plain strict: err=%d result=%lld\n", err, (long long)r64);
    err = __wasi_call_dynamic(plain, values, 20, results, 8, 1);
    printf("call_dynamic strict, short values: err=%d\n", err);
    err = __wasi_call_dynamic(plain, values, 24, results, 4, 1);
    printf("call_dynamic strict, short results: err=%d\n", err);
    memset(results, 0, sizeof results);
    err = __wasi_call_dynamic(plain, values, 4, results, 8, 0);
    memcpy(&r64, results, 8);
    printf("call_dynamic lax, only the i32: err=%d result=%lld\n", err, (long long)r64);
    memset(results, 0xAB, sizeof results);
    err = __wasi_call_dynamic(plain, values, 24, results, 2, 0);
    printf("call_dynamic lax, 2 result bytes: err=%d bytes=%02x%02x%02x\n", err, results[0],
           results[1], results[2]);
    double rd = 0;
    pack(values, 1, 1, 1.0f, 1.0);
    err = __wasi_call_dynamic(slot, values, 24, results, 8, 1);
    memcpy(&rd, results, 8);
    printf("call_dynamic closure: err=%d result=%.2f\n", err, rd);
    float f = 3.0f, rf = 0;
    err = __wasi_call_dynamic(half, (uint8_t *)&f, 4, (uint8_t *)&rf, 4, 1);
    printf("call_dynamic half: err=%d result=%.2f\n", err, rf);
    err = __wasi_call_dynamic(0, values, 0, results, 0, 0);
    printf("call_dynamic null slot: err=%d\n", err);
    err = __wasi_call_dynamic(1u << 30, values, 0, results, 0, 0);
    printf("call_dynamic beyond the table: err=%d\n", err);

    /* reflect_signature */
    reflect("plain_mix", plain, 8);
    reflect("plain_noop", (uint32_t)(uintptr_t)plain_noop, 0);
    reflect("closure", slot, 8);
    reflect("thread closure", thread_slot, 8);
    reflect("half", half, 8);
    reflect("plain_mix cap 2", plain, 2);
    reflect("null", 0, 8);
    reflect("beyond", 1u << 30, 8);

    /* v128: a closure of it can be made and reflected; call_dynamic cannot pass it. */
    static const uint8_t V128_I32[] = {__WASI_WASM_VALUE_TYPE_V128, I32};
    static const uint8_t V128_ONLY[] = {__WASI_WASM_VALUE_TYPE_V128};
    uint32_t vec = make(half_backing, V128_I32, 2, V128_ONLY, 1, NULL);
    reflect("v128 closure", vec, 8);
    err = __wasi_call_dynamic(vec, values, 20, results, 16, 1);
    printf("call_dynamic v128: err=%d\n", err);

    /* Errors of closure_prepare and free. */
    static const uint8_t BAD[] = {I32, 9};
    static uint8_t args_buf[8];
    __wasi_function_pointer_t s2 = 0;
    if (__wasi_closure_allocate(&s2)) return 1;
    err = __wasi_closure_prepare(slot_of(add_backing), s2, BAD, 2, I32_ONLY, 1, NULL);
    printf("prepare, bad type: err=%d\n", err);
    if (__wasi_closure_free(s2)) return 1;
    err = __wasi_closure_prepare(slot_of(add_backing), s2, I32_ONLY, 1, I32_ONLY, 1, NULL);
    printf("prepare, freed slot: err=%d\n", err);
    err = __wasi_closure_prepare(slot_of(add_backing), plain, I32_ONLY, 1, I32_ONLY, 1, NULL);
    printf("prepare, not a closure slot: err=%d\n", err);
    uint8_t *wild = (uint8_t *)(uintptr_t)0xFFFFFFF0u;
    err = __wasi_closure_prepare(slot_of(add_backing), s2, wild, 64, I32_ONLY, 1, NULL);
    printf("prepare, types beyond memory: err=%d\n", err);
    err = __wasi_closure_prepare(slot_of(add_backing), s2, I32_ONLY, 100000, I32_ONLY, 1, NULL);
    printf("prepare, 100000 arguments: err=%d\n", err);
    err = __wasi_closure_allocate((__wasi_function_pointer_t *)wild);
    printf("allocate, result beyond memory: err=%d\n", err);
    err = __wasi_call_dynamic(plain, wild, 24, results, 8, 1);
    printf("call_dynamic, values beyond memory: err=%d\n", err);
    err = __wasi_call_dynamic(plain, values, 24, wild, 8, 1);
    printf("call_dynamic, results beyond memory: err=%d\n", err);
    err = __wasi_reflect_signature(plain, args_buf, 8, args_buf, 8,
                                   (__wasi_reflection_result_t *)wild);
    printf("reflect, result beyond memory: err=%d\n", err);
    err = __wasi_closure_free(123456);
    printf("free, unknown slot: err=%d\n", err);
    err = __wasi_closure_free(s2);
    printf("free, twice: err=%d\n", err);
    reflect("plain_mix after", plain, 8);
    return 0;
}
