/*
 * threads/compute.c -> threads/compute.wasm: compute-bound threads for the scaling benchmark
 * (scripts/bench-threads). argv: THREADS ITERATIONS. Each thread runs work(ITERATIONS), a pure
 * integer loop with no memory traffic and no host calls; main prints the combined checksum:
 *   compute: THREADS threads x ITERATIONS iterations, checksum=HEX
 * `work` is exported so the benchmark can run the same code in a bare wasmtime store.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_THREADS 64

__attribute__((export_name("work"))) uint32_t work(uint32_t iterations, uint32_t seed) {
    uint32_t x = seed * 2654435761u + 1;
    for (uint32_t i = 0; i < iterations; i++) x = x * 1664525u + 1013904223u + (x >> 13);
    return x;
}

static uint32_t iterations;
static uint32_t results[MAX_THREADS];

static void *run(void *arg) {
    uintptr_t i = (uintptr_t)arg;
    results[i] = work(iterations, (uint32_t)i);
    return 0;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    iterations = argc > 2 ? (uint32_t)strtoul(argv[2], 0, 10) : 100000000u;
    if (threads < 1 || threads > MAX_THREADS) return 2;
    pthread_t t[MAX_THREADS];
    for (int i = 0; i < threads; i++) pthread_create(&t[i], 0, run, (void *)(uintptr_t)i);
    uint32_t checksum = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], 0);
        checksum ^= results[i];
    }
    printf("compute: %d threads x %u iterations, checksum=%08x\n", threads, iterations, checksum);
    return 0;
}
