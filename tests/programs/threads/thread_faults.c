/*
 * threads/thread_faults.c -> threads/thread_faults.wasm: wasix-libc pthreads, one mode per run
 * (argv[1]), each with the main thread blocked in pthread_join while a thread acts:
 *   trap    the thread traps in crash_here(): the program ends with a trap naming the thread
 *           (wasmgroup exits 134); main's "joined" line is never printed.
 *   exit    the thread calls exit(3): the program ends with status 3, main never resumes.
 *   malloc  the thread mallocs 1000 blocks and fills them; main checks and frees them:
 *           prints "malloc: 1000 blocks checked and freed by main" and exits 0.
 *   ids     the thread reads getpid() and CLOCK_MONOTONIC; main checks they agree with its
 *           own (one process id, one monotonic clock): prints "ids: pid same, clock ordered".
 * Every mode first prints "thread_faults: MODE" (flushed).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BLOCKS 1000

static const char *mode;
static unsigned char *blocks[BLOCKS];
static int thread_pid;
static struct timespec thread_now;

static long long ns(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }

__attribute__((noinline)) static void crash_here(void) { __builtin_trap(); }

static void *worker(void *arg) {
    (void)arg;
    volatile unsigned long spin = 0;
    for (unsigned long i = 0; i < 1000000; i++) spin += i;
    if (strcmp(mode, "trap") == 0) crash_here();
    if (strcmp(mode, "exit") == 0) exit(3);
    if (strcmp(mode, "ids") == 0) {
        thread_pid = getpid();
        clock_gettime(CLOCK_MONOTONIC, &thread_now);
        return 0;
    }
    for (int i = 0; i < BLOCKS; i++) {
        blocks[i] = malloc(64 + i);
        memset(blocks[i], i & 0xff, 64 + i);
    }
    return 0;
}

int main(int argc, char **argv) {
    mode = argc > 1 ? argv[1] : "malloc";
    printf("thread_faults: %s\n", mode);
    fflush(stdout);
    pthread_t t;
    struct timespec before, after;
    clock_gettime(CLOCK_MONOTONIC, &before);
    if (pthread_create(&t, 0, worker, 0) != 0) {
        printf("pthread_create failed\n");
        return 1;
    }
    pthread_join(t, 0);
    clock_gettime(CLOCK_MONOTONIC, &after);
    printf("joined\n");
    if (strcmp(mode, "ids") == 0) {
        int ordered = ns(before) <= ns(thread_now) && ns(thread_now) <= ns(after);
        printf("ids: pid %s, clock %s\n", thread_pid == getpid() ? "same" : "different",
               ordered ? "ordered" : "disordered");
        return 0;
    }
    for (int i = 0; i < BLOCKS; i++) {
        for (int j = 0; j < 64 + i; j++) {
            if (blocks[i][j] != (i & 0xff)) {
                printf("block %d corrupt at %d\n", i, j);
                return 1;
            }
        }
        free(blocks[i]);
    }
    printf("malloc: %d blocks checked and freed by main\n", BLOCKS);
    return 0;
}
