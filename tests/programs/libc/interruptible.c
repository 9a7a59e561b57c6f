/*
 * libc/interruptible.c -> libc/interruptible.wasm: programs to press Ctrl-C on. One mode per
 * run (argv[1]); every mode first prints "interruptible: MODE".
 *   forever  two threads, one spinning, one sleeping, main in pthread_join: runs until it is
 *            interrupted; prints "forever: running" once both threads run.
 *   read     prints "read: waiting", then blocks reading stdin (a terminal that never types).
 *   done     a thread runs and is joined; prints "done: exiting" and exits 0.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile int started;

static void *spinner(void *arg) {
    (void)arg;
    __atomic_fetch_add(&started, 1, __ATOMIC_SEQ_CST);
    volatile unsigned long spin = 0;
    for (;;) spin++;
}

static void *sleeper(void *arg) {
    (void)arg;
    __atomic_fetch_add(&started, 1, __ATOMIC_SEQ_CST);
    for (;;) {
        struct timespec t = {0, 20 * 1000 * 1000};
        nanosleep(&t, 0);
    }
}

static void *briefly(void *arg) { return arg; }

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    printf("interruptible: %s\n", mode);
    fflush(stdout);
    pthread_t a, b;
    if (strcmp(mode, "forever") == 0) {
        pthread_create(&a, 0, spinner, 0);
        pthread_create(&b, 0, sleeper, 0);
        while (__atomic_load_n(&started, __ATOMIC_SEQ_CST) < 2) {
            struct timespec t = {0, 1000 * 1000};
            nanosleep(&t, 0);
        }
        puts("forever: running");
        fflush(stdout);
        pthread_join(a, 0);
        return 1;
    }
    if (strcmp(mode, "read") == 0) {
        char buf[64];
        puts("read: waiting");
        fflush(stdout);
        printf("read: %d bytes\n", (int)read(0, buf, sizeof buf));
        return 0;
    }
    if (strcmp(mode, "done") == 0) {
        pthread_create(&a, 0, briefly, 0);
        pthread_join(a, 0);
        puts("done: exiting");
        fflush(stdout);
        return 0;
    }
    printf("interruptible: %s is no mode\n", mode);
    return 1;
}
