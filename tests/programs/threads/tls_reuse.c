/*
 * threads/tls_reuse.c -> threads/tls_reuse.wasm: wasix-libc pthreads main that dlopens
 * threads/libmtplug.so (argv[2], default "./libmtplug.so": run with cwd = build/guests/threads)
 * and then, ROUNDS times (argv[1], default 12, at most 64), starts one thread and joins it.
 * Each thread calls mtplug_work(1) once and reads the plugin's _Thread_local call count and
 * bumps a _Thread_local of the main module: both must start from their initial values in
 * every thread, however the runtime got the thread's instances (wasmgroup keeps the group of
 * a thread that exited for a later one, and sets its side modules' TLS up again).
 * Expected stdout:
 *   tls_reuse: rounds=12 plugin_calls=1 main_tls=8
 * (or "tls_reuse: round R: plugin_calls=C main_tls=M" for the first round that differs).
 * Exit code 0 when every round saw 1 and 8.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static _Thread_local int main_tls = 7;

int mt_host_square(int x) { return x * x; } /* the plugin calls back into its host */
static int (*work)(int);
static int (*get_calls)(void);
static int seen_calls, seen_main;

static void *once(void *arg) {
    (void)arg;
    work(1);
    seen_calls = get_calls();
    seen_main = ++main_tls;
    return NULL;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 12;
    const char *path = argc > 2 ? argv[2] : "./libmtplug.so";
    if (rounds < 1 || rounds > 64) return 2;
    void *h = dlopen(path, RTLD_NOW);
    if (!h) {
        printf("tls_reuse: dlopen %s failed: %s\n", path, dlerror());
        return 1;
    }
    work = (int (*)(int))dlsym(h, "mtplug_work");
    get_calls = (int (*)(void))dlsym(h, "mtplug_calls");
    if (!work || !get_calls) {
        printf("tls_reuse: dlsym failed: %s\n", dlerror());
        return 1;
    }
    for (int r = 0; r < rounds; r++) {
        pthread_t t;
        seen_calls = seen_main = -1;
        if (pthread_create(&t, NULL, once, NULL) != 0) {
            printf("tls_reuse: pthread_create failed in round %d\n", r);
            return 1;
        }
        pthread_join(t, NULL);
        if (seen_calls != 1 || seen_main != 8) {
            printf("tls_reuse: round %d: plugin_calls=%d main_tls=%d\n", r, seen_calls,
                   seen_main);
            return 1;
        }
    }
    printf("tls_reuse: rounds=%d plugin_calls=1 main_tls=8\n", rounds);
    return 0;
}
