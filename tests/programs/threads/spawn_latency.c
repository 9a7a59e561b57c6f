/*
 * threads/spawn_latency.c -> threads/spawn_latency.wasm: thread-spawn latency, for
 * scripts/bench-spawn. argv: SPAWNS [burst].
 * Default mode: for each round main reads CLOCK_MONOTONIC just before pthread_create; the new
 * thread's start routine reads it again first thing, and main joins it. The latency of a round
 * is the thread's entry time minus main's time before pthread_create. Prints the sorted
 * figures in integer microseconds:
 *   spawn_latency: spawns=N p50_us=X p90_us=Y max_us=Z
 * burst: main first starts and joins one thread and sleeps 300 ms (idle workers and the standby
 * group are ready then, as in a program that has been running), then creates SPAWNS threads
 * back to back (at most 64) and joins them all; prints how long after main's first
 * pthread_create of the burst the first and the last of them reached its entry:
 *   spawn_burst: threads=N first_us=X last_us=Y
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_SPAWNS 1000
#define MAX_BURST 64

static struct timespec before, entered;
static struct timespec burst_entered[MAX_BURST];

static void *record_entry(void *arg) {
    (void)arg;
    clock_gettime(CLOCK_MONOTONIC, &entered);
    return 0;
}

static void *record_burst_entry(void *arg) {
    clock_gettime(CLOCK_MONOTONIC, &burst_entered[(long)arg]);
    return 0;
}

static long micros_between(const struct timespec *a, const struct timespec *b) {
    return (b->tv_sec - a->tv_sec) * 1000000L + (b->tv_nsec - a->tv_nsec) / 1000;
}

static int compare(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

static int burst(int threads) {
    pthread_t t[MAX_BURST];
    if (threads < 1 || threads > MAX_BURST) return 2;
    if (pthread_create(&t[0], 0, record_entry, 0) != 0) return 1;
    pthread_join(t[0], 0);
    struct timespec settle = {0, 300 * 1000 * 1000};
    nanosleep(&settle, 0);
    clock_gettime(CLOCK_MONOTONIC, &before);
    for (long i = 0; i < threads; i++) {
        if (pthread_create(&t[i], 0, record_burst_entry, (void *)i) != 0) {
            printf("pthread_create failed for thread %ld\n", i);
            return 1;
        }
    }
    for (int i = 0; i < threads; i++) pthread_join(t[i], 0);
    long first = -1, last = -1;
    for (int i = 0; i < threads; i++) {
        long us = micros_between(&before, &burst_entered[i]);
        if (first < 0 || us < first) first = us;
        if (us > last) last = us;
    }
    printf("spawn_burst: threads=%d first_us=%ld last_us=%ld\n", threads, first, last);
    return 0;
}

int main(int argc, char **argv) {
    int spawns = argc > 1 ? atoi(argv[1]) : 50;
    if (argc > 2 && strcmp(argv[2], "burst") == 0) return burst(spawns);
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
        micros[r] = micros_between(&before, &entered);
    }
    qsort(micros, spawns, sizeof micros[0], compare);
    printf("spawn_latency: spawns=%d p50_us=%ld p90_us=%ld max_us=%ld\n", spawns,
           micros[spawns / 2], micros[spawns * 9 / 10], micros[spawns - 1]);
    return 0;
}
