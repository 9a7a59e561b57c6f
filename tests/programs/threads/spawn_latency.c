/*
 * threads/spawn_latency.c -> threads/spawn_latency.wasm: thread-spawn latency, for
 * scripts/bench-spawn. argv: SPAWNS. For each round main reads CLOCK_MONOTONIC just before
 * pthread_create; the new thread's start routine reads it again first thing, and main joins it.
 * The latency of a round is the thread's entry time minus main's time before pthread_create.
 * Prints the sorted figures in integer microseconds:
 *   spawn_latency: spawns=N p50_us=X p90_us=Y max_us=Z
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define MAX_SPAWNS 1000

static struct timespec before, entered;

static void *record_entry(void *arg) {
    (void)arg;
    clock_gettime(CLOCK_MONOTONIC, &entered);
    return 0;
}

static int compare(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int spawns = argc > 1 ? atoi(argv[1]) : 50;
    if (spawns < 1 || spawns > MAX_SPAWNS) return 2;
    static long micros[MAX_SPAWNS];
    for (int r = 0; r < spawns; r++) {
        pthread_t t;
        clock_gettime(CLOCK_MONOTONIC, &before);
        if (pthread_create(&t, 0, record_entry, 0) != 0) {
            printf("pthread_create failed in round %d\n", r);
            return 1;
        }
        pthread_join(t, 0); /* join orders the thread's write to `entered` before this read */
        micros[r] = (entered.tv_sec - before.tv_sec) * 1000000L +
                    (entered.tv_nsec - before.tv_nsec) / 1000;
    }
    qsort(micros, spawns, sizeof micros[0], compare);
    printf("spawn_latency: spawns=%d p50_us=%ld p90_us=%ld max_us=%ld\n", spawns,
           micros[spawns / 2], micros[spawns * 9 / 10], micros[spawns - 1]);
    return 0;
}
