/*
 * threads/mt_host.c -> threads/mt_host.wasm: wasix-libc pthreads main (static, shared memory,
 * imported table, --export-dynamic) that dlopen()s threads/libmtplug.so and calls it from
 * several threads.
 *
 * The main thread dlopens the plugin (argv[1], default "./libmtplug.so": run with
 * cwd = build/guests/threads) and calls mtplug_work(5); then 4 threads each dlopen the same
 * path again (must give the same handle), dlsym mtplug_work and mtplug_calls themselves, call
 * mtplug_work(i) for i = 0..999, and read their own TLS call count. Results are printed by the
 * main thread after joining, so the output is deterministic.
 * Expected stdout:
 *   mt_host: main mtplug_work(5)=26 calls=1
 *   thread 0: sum=332834500 calls=1000 same_handle=1
 *   thread 1: sum=332834500 calls=1000 same_handle=1
 *   thread 2: sum=332834500 calls=1000 same_handle=1
 *   thread 3: sum=332834500 calls=1000 same_handle=1
 *   mt_host: joined=4 total=1998005 main_calls=1
 * Exit code 0.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

#define NTHREADS 4
#define ITERS 1000

int mt_host_square(int x) { return x * x; }

struct result {
    int ok;
    int sum;
    int calls;
    int same_handle;
    char error[128];
};

static const char *plugin_path;
static void *main_handle;
static struct result results[NTHREADS];

static void *worker(void *arg) {
    struct result *r = &results[(intptr_t)arg];
    void *h = dlopen(plugin_path, RTLD_NOW);
    if (!h) {
        snprintf(r->error, sizeof r->error, "dlopen: %s", dlerror());
        return NULL;
    }
    int (*work)(int) = (int (*)(int))dlsym(h, "mtplug_work");
    int (*get_calls)(void) = (int (*)(void))dlsym(h, "mtplug_calls");
    if (!work || !get_calls) {
        snprintf(r->error, sizeof r->error, "dlsym: %s", dlerror());
        return NULL;
    }
    int sum = 0;
    for (int i = 0; i < ITERS; i++) sum += work(i);
    r->sum = sum;
    r->calls = get_calls();
    r->same_handle = h == main_handle;
    r->ok = 1;
    return NULL;
}

int main(int argc, char **argv) {
    plugin_path = argc > 1 ? argv[1] : "./libmtplug.so";
    main_handle = dlopen(plugin_path, RTLD_NOW);
    if (!main_handle) {
        printf("mt_host: dlopen %s failed: %s\n", plugin_path, dlerror());
        return 1;
    }
    int (*work)(int) = (int (*)(int))dlsym(main_handle, "mtplug_work");
    int (*get_calls)(void) = (int (*)(void))dlsym(main_handle, "mtplug_calls");
    int (*get_total)(void) = (int (*)(void))dlsym(main_handle, "mtplug_total");
    if (!work || !get_calls || !get_total) {
        printf("mt_host: dlsym failed: %s\n", dlerror());
        return 1;
    }
    int first = work(5);
    printf("mt_host: main mtplug_work(5)=%d calls=%d\n", first, get_calls());

    pthread_t threads[NTHREADS];
    int started = 0;
    for (intptr_t i = 0; i < NTHREADS; i++) {
        if (pthread_create(&threads[i], NULL, worker, (void *)i) != 0) break;
        started++;
    }
    int joined = 0, bad = started != NTHREADS;
    for (int i = 0; i < started; i++) {
        if (pthread_join(threads[i], NULL) == 0) joined++;
    }
    for (int i = 0; i < NTHREADS; i++) {
        struct result *r = &results[i];
        if (r->ok) {
            printf("thread %d: sum=%d calls=%d same_handle=%d\n", i, r->sum, r->calls, r->same_handle);
        } else {
            printf("thread %d: FAILED %s\n", i, r->error);
        }
        bad |= !r->ok || r->calls != ITERS || !r->same_handle || r->sum != 332834500;
    }
    printf("mt_host: joined=%d total=%d main_calls=%d\n", joined, get_total(), get_calls());
    return bad || get_total() != 1998005 || get_calls() != 1 ? 1 : 0;
}
