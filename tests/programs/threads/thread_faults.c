/*
 * threads/thread_faults.c -> threads/thread_faults.wasm: wasix-libc pthreads, one mode per run
 * (argv[1]), each with the main thread blocked in pthread_join while a thread acts:
 *   trap    the thread traps in crash_here(): the program ends with a trap naming the thread
 *           (wasmgroup exits 134); main's "joined" line is never printed.
 *   exit    the thread calls exit(3): the program ends with status 3, main never resumes.
 *   malloc  the thread mallocs 1000 blocks and fills them; main checks and frees them:
 *           prints "malloc: 1000 blocks checked and freed by main" and exits 0.
 * Every mode first prints "thread_faults: MODE" (flushed).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLOCKS 1000

static const char *mode;
static unsigned char *blocks[BLOCKS];

__attribute__((noinline)) static void crash_here(void) { __builtin_trap(); }

static void *worker(void *arg) {
    (void)arg;
    volatile unsigned long spin = 0;
    for (unsigned long i = 0; i < 1000000; i++) spin += i;
    if (strcmp(mode, "trap") == 0) crash_here();
    if (strcmp(mode, "exit") == 0) exit(3);
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
    if (pthread_create(&t, 0, worker, 0) != 0) {
        printf("pthread_create failed\n");
        return 1;
    }
    pthread_join(t, 0);
    printf("joined\n");
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
