/*
 * threads/pthreads.c -> threads/pthreads.wasm: wasix-libc pthreads program (static main,
 * shared memory; imports wasi.thread-spawn and wasix_32v1.futex_* / thread_exit / proc_exit2).
 *
 * 8 threads wait on a condition variable until main broadcasts "go", then each adds 1 to a
 * mutex-protected counter 10000 times, counting its own additions in a _Thread_local
 * variable, and returns (index + 1) through pthread_join.
 * Expected stdout:
 *   pthreads: 8 threads ready
 *   counter=80000 joined=8 retsum=36 tls_ok=8
 * Exit code 0.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

#define NTHREADS 8
#define ITERS 10000

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int go;
static int ready;
static long counter;
static int tls_ok;
static _Thread_local int my_adds;

static void *worker(void *arg) {
    intptr_t index = (intptr_t)arg;
    pthread_mutex_lock(&lock);
    ready++;
    pthread_cond_broadcast(&cond); /* wakes main waiting for `ready` */
    while (!go) pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);

    for (int i = 0; i < ITERS; i++) {
        pthread_mutex_lock(&lock);
        counter++;
        pthread_mutex_unlock(&lock);
        my_adds++;
    }
    pthread_mutex_lock(&lock);
    if (my_adds == ITERS) tls_ok++;
    pthread_mutex_unlock(&lock);
    return (void *)(index + 1);
}

int main(void) {
    pthread_t threads[NTHREADS];
    for (intptr_t i = 0; i < NTHREADS; i++) {
        if (pthread_create(&threads[i], NULL, worker, (void *)i) != 0) {
            printf("pthread_create %d failed\n", (int)i);
            return 1;
        }
    }
    pthread_mutex_lock(&lock);
    while (ready < NTHREADS) pthread_cond_wait(&cond, &lock);
    printf("pthreads: %d threads ready\n", ready);
    go = 1;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);

    int joined = 0;
    intptr_t retsum = 0;
    for (int i = 0; i < NTHREADS; i++) {
        void *ret = NULL;
        if (pthread_join(threads[i], &ret) == 0) {
            joined++;
            retsum += (intptr_t)ret;
        }
    }
    printf("counter=%ld joined=%d retsum=%d tls_ok=%d\n", counter, joined, (int)retsum, tls_ok);
    return (counter == (long)NTHREADS * ITERS && joined == NTHREADS && tls_ok == NTHREADS) ? 0 : 1;
}
