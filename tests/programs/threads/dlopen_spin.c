/*
 * threads/dlopen_spin.c -> threads/dlopen_spin.wasm: dlopen while other threads spin in pure
 * guest code (no host calls at all), then call the new function from those threads.
 *
 * 3 threads start and spin on an atomic function pointer. Main waits until all spin, dlopens
 * libmtplug.so (argv[1], default "/libmtplug.so"), dlsyms mtplug_work and publishes the
 * pointer. Each thread calls it through its own function table, which is only correct if its
 * instance group applied the load and the dlsym'd slot while it was spinning.
 * Expected stdout:
 *   dlopen_spin: 3 threads spinning
 *   thread 0: mtplug_work(1)=2
 *   thread 1: mtplug_work(2)=5
 *   thread 2: mtplug_work(3)=10
 *   dlopen_spin: total=6
 */
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#define THREADS 3

typedef int (*work_fn)(int);

int mt_host_square(int x) { return x * x; } /* called back by libmtplug */

static _Atomic(work_fn) work;
static atomic_int spinning;
static int results[THREADS];

static void *spin(void *arg) {
    int i = (int)(intptr_t)arg;
    atomic_fetch_add(&spinning, 1);
    work_fn fn;
    while (!(fn = atomic_load(&work))) {
        /* no host calls: only an interrupt inside guest code can bring this group along */
    }
    results[i] = fn(i + 1);
    return 0;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "/libmtplug.so";
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&threads[i], 0, spin, (void *)(intptr_t)i);
    while (atomic_load(&spinning) < THREADS) sched_yield();
    printf("dlopen_spin: %d threads spinning\n", THREADS);
    fflush(stdout);
    void *h = dlopen(path, RTLD_NOW);
    if (!h) {
        printf("dlopen failed: %s\n", dlerror());
        return 1;
    }
    work_fn fn = (work_fn)dlsym(h, "mtplug_work");
    int (*total)(void) = (int (*)(void))dlsym(h, "mtplug_total");
    if (!fn || !total) {
        printf("dlsym failed: %s\n", dlerror());
        return 1;
    }
    atomic_store(&work, fn);
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], 0);
    for (int i = 0; i < THREADS; i++) printf("thread %d: mtplug_work(%d)=%d\n", i, i + 1, results[i]);
    printf("dlopen_spin: total=%d\n", total());
    return 0;
}
