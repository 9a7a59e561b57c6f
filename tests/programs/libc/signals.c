/*
 * libc/signals.c -> libc/signals.wasm: signals a program sends itself. One mode per run
 * (argv[1]); every mode first prints "signals: MODE".
 *   abort          abort() in the main thread: the program ends as SIGABRT (134).
 *   abort-thread   abort() in a second thread while main waits in pthread_join.
 *   term           raise(SIGTERM): ends as SIGTERM (143).
 *   kill-usr1      kill(getpid(), SIGUSR1): ends as SIGUSR1 (138).
 *   handled        handlers run: raise(SIGUSR1) and kill(getpid(), SIGTERM) reach them,
 *                  SIGINT set to SIG_IGN and SIGCHLD (ignored by default) do nothing; prints
 *                  one line for each, then "handled: done" and exits 0.
 *   handled-abort  a handler for SIGUSR1 is installed (so libc registers its signal
 *                  callback), then abort(): still ends as SIGABRT.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile int got;

static void handler(int sig) { got = sig; }

static void *aborter(void *arg) {
    (void)arg;
    abort();
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    printf("signals: %s\n", mode);
    fflush(stdout);
    pthread_t a;
    if (strcmp(mode, "abort") == 0) abort();
    if (strcmp(mode, "abort-thread") == 0) {
        pthread_create(&a, 0, aborter, 0);
        pthread_join(a, 0);
        puts("abort-thread: joined (unexpected)");
        return 1;
    }
    if (strcmp(mode, "term") == 0) raise(SIGTERM);
    if (strcmp(mode, "kill-usr1") == 0) kill(getpid(), SIGUSR1);
    if (strcmp(mode, "handled") == 0) {
        signal(SIGUSR1, handler);
        raise(SIGUSR1);
        printf("handled: raise SIGUSR1 -> handler got %d\n", got);
        signal(SIGTERM, handler);
        kill(getpid(), SIGTERM);
        printf("handled: kill SIGTERM -> handler got %d\n", got);
        signal(SIGINT, SIG_IGN);
        raise(SIGINT);
        puts("handled: SIGINT ignored");
        raise(SIGCHLD);
        puts("handled: SIGCHLD ignored");
        puts("handled: done");
        return 0;
    }
    if (strcmp(mode, "handled-abort") == 0) {
        signal(SIGUSR1, handler);
        abort();
    }
    printf("signals: %s returned (unexpected)\n", mode);
    return 1;
}
