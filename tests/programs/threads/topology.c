/*
 * threads/topology.c -> threads/topology.wasm: the seed's topology stress scenarios, one per
 * run (argv[1]); each prints "topology NAME ok" on success and exits non-zero otherwise.
 * Libraries are dlopened from "/" (map build/guests/threads there).
 *
 *   dl-concurrent-open-and-spawn   a thread runs 32 rounds of dlopen (8 distinct names, so 8
 *                                  real loads) / dlsym / call / dlclose, while main spawns and
 *                                  joins 48 threads that call every function published so far.
 *   dl-spawn-under-dlsym-worker    a worker dlsyms and calls in a tight loop while main spawns
 *                                  and joins 64 threads.
 *   spawn-under-nanosleep-worker   a worker sleeps 1 ms at a time while main spawns and joins
 *                                  32 threads and dlopens a library halfway through.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

typedef int (*work_fn)(int);

int mt_host_square(int x) { return x * x; } /* called back by libmtplug */

#define NAMES 8
static _Atomic(work_fn) published[NAMES];
static atomic_int stop_worker;
static atomic_int failures;

static const char *name_for(int k, char *buf) {
    /* "/libmtplug.so", "/./libmtplug.so", "/././libmtplug.so", ...: distinct names, one file */
    strcpy(buf, "/");
    for (int i = 0; i < k; i++) strcat(buf, "./");
    strcat(buf, "libmtplug.so");
    return buf;
}

static work_fn open_work(int k) {
    char buf[64];
    void *h = dlopen(name_for(k, buf), RTLD_NOW);
    if (!h) {
        printf("dlopen %s: %s\n", buf, dlerror());
        return 0;
    }
    return (work_fn)dlsym(h, "mtplug_work");
}

static void *call_published(void *arg) {
    (void)arg;
    for (int k = 0; k < NAMES; k++) {
        work_fn fn = atomic_load(&published[k]);
        if (fn && fn(3) != 10) atomic_fetch_add(&failures, 1);
    }
    return 0;
}

static void *opener(void *arg) {
    (void)arg;
    for (int round = 0; round < 32; round++) {
        int k = round % NAMES;
        char buf[64];
        void *h = dlopen(name_for(k, buf), RTLD_NOW);
        work_fn fn = h ? (work_fn)dlsym(h, "mtplug_work") : 0;
        if (!fn || fn(2) != 5) atomic_fetch_add(&failures, 1);
        atomic_store(&published[k], fn);
        if (h) dlclose(h);
    }
    return 0;
}

static void *dlsym_worker(void *arg) {
    void *h = arg;
    while (!atomic_load(&stop_worker)) {
        work_fn fn = (work_fn)dlsym(h, "mtplug_work");
        if (!fn || fn(4) != 17) atomic_fetch_add(&failures, 1);
    }
    return 0;
}

static void *sleep_worker(void *arg) {
    (void)arg;
    struct timespec ts = {0, 1000000};
    while (!atomic_load(&stop_worker)) nanosleep(&ts, 0);
    return 0;
}

static int spawn_and_join(int count) {
    for (int i = 0; i < count; i++) {
        pthread_t t;
        if (pthread_create(&t, 0, call_published, 0) != 0) return -1;
        pthread_join(t, 0);
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *scenario = argc > 1 ? argv[1] : "dl-concurrent-open-and-spawn";
    pthread_t worker;
    if (strcmp(scenario, "dl-concurrent-open-and-spawn") == 0) {
        pthread_create(&worker, 0, opener, 0);
        if (spawn_and_join(48) != 0) atomic_fetch_add(&failures, 1);
        pthread_join(worker, 0);
    } else if (strcmp(scenario, "dl-spawn-under-dlsym-worker") == 0) {
        void *h = dlopen("/libmtplug.so", RTLD_NOW);
        if (!h) return 1;
        pthread_create(&worker, 0, dlsym_worker, h);
        if (spawn_and_join(64) != 0) atomic_fetch_add(&failures, 1);
        atomic_store(&stop_worker, 1);
        pthread_join(worker, 0);
    } else if (strcmp(scenario, "spawn-under-nanosleep-worker") == 0) {
        pthread_create(&worker, 0, sleep_worker, 0);
        if (spawn_and_join(16) != 0) atomic_fetch_add(&failures, 1);
        work_fn fn = open_work(0);
        if (!fn || fn(1) != 2) atomic_fetch_add(&failures, 1);
        atomic_store(&published[0], fn);
        if (spawn_and_join(16) != 0) atomic_fetch_add(&failures, 1);
        atomic_store(&stop_worker, 1);
        pthread_join(worker, 0);
    } else {
        printf("unknown scenario %s\n", scenario);
        return 2;
    }
    int failed = atomic_load(&failures);
    if (failed) {
        printf("topology %s: %d failure(s)\n", scenario, failed);
        return 1;
    }
    printf("topology %s ok\n", scenario);
    return 0;
}
