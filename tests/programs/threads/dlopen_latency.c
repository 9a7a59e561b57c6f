/*
 * threads/dlopen_latency.c -> threads/dlopen_latency.wasm: dlopen latency with N groups, for
 * scripts/bench-dlopen. argv: GROUPS ROUNDS. GROUPS-1 threads park on a condition variable;
 * main then dlopens ROUNDS distinct names of one small library (each a real load of a module
 * already compiled), timing each call from the guest, and prints
 *   dlopen_latency: groups=G rounds=R p50_us=X p90_us=Y max_us=Z
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int mt_host_square(int x) { return x * x; } /* called back by libmtplug */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int released, parked;

static void *park(void *arg) {
    (void)arg;
    pthread_mutex_lock(&lock);
    parked++;
    pthread_cond_broadcast(&cond);
    while (!released) pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    return 0;
}

static int compare(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int groups = argc > 1 ? atoi(argv[1]) : 1;
    int rounds = argc > 2 ? atoi(argv[2]) : 20;
    if (groups < 1 || groups > 64 || rounds < 1 || rounds > 60) return 2;
    pthread_t threads[64];
    for (int i = 1; i < groups; i++) pthread_create(&threads[i], 0, park, 0);
    pthread_mutex_lock(&lock);
    while (parked < groups - 1) pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);

    long micros[64];
    char name[256];
    for (int r = 0; r < rounds; r++) {
        strcpy(name, "/");
        for (int i = 0; i <= r; i++) strcat(name, "./"); /* a new name: a real load */
        strcat(name, "libmtplug.so");
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        void *h = dlopen(name, RTLD_NOW);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (!h) {
            printf("dlopen %s: %s\n", name, dlerror());
            return 1;
        }
        micros[r] = (t1.tv_sec - t0.tv_sec) * 1000000L + (t1.tv_nsec - t0.tv_nsec) / 1000;
    }
    pthread_mutex_lock(&lock);
    released = 1;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
    for (int i = 1; i < groups; i++) pthread_join(threads[i], 0);
    qsort(micros, rounds, sizeof micros[0], compare);
    printf("dlopen_latency: groups=%d rounds=%d p50_us=%ld p90_us=%ld max_us=%ld\n", groups, rounds,
           micros[rounds / 2], micros[rounds * 9 / 10], micros[rounds - 1]);
    return 0;
}
