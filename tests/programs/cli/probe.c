/*
 * cli/probe.c -> cli/probe.wasm: what the command-line tests observe from inside the guest.
 *   probe env NAME...   prints "NAME=value" or "NAME unset" for each NAME
 *   probe sleep         sleeps forever (a thread blocked in the host)
 *   probe spin          loops forever in guest code (no host calls)
 *   probe grow          grows memory a page at a time until memory.grow fails, then prints
 *                       "grew to N KiB"
 *   probe malloc        mallocs 1 MiB blocks until malloc returns NULL: "malloc: N MiB"
 *   probe late-thread   waits until the file /go exists (in the guest view), then starts a
 *                       thread that prints "thread ran" and joins it
 *   probe cpus          prints "cpus: N" (sysconf(_SC_NPROCESSORS_ONLN): thread_parallelism)
 *   probe cat           copies stdin to stdout, then prints "read N bytes" to stderr
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *say(void *arg) {
    (void)arg;
    puts("thread ran");
    return NULL;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "env") == 0) {
        for (int i = 2; i < argc; i++) {
            const char *value = getenv(argv[i]);
            if (value) printf("%s=%s\n", argv[i], value);
            else printf("%s unset\n", argv[i]);
        }
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "sleep") == 0) {
        puts("sleeping");
        fflush(stdout);
        for (;;) sleep(1);
    }
    if (argc == 2 && strcmp(argv[1], "spin") == 0) {
        puts("spinning");
        fflush(stdout);
        volatile unsigned long n = 0;
        for (;;) n++;
    }
    if (argc == 2 && strcmp(argv[1], "grow") == 0) {
        while (__builtin_wasm_memory_grow(0, 1) != (__SIZE_TYPE__)-1) {
        }
        printf("grew to %lu KiB\n", (unsigned long)(__builtin_wasm_memory_size(0) * 64));
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "malloc") == 0) {
        unsigned long n = 0;
        void *volatile block;  /* volatile: the loop must really call malloc */
        while ((block = malloc(1 << 20)) != NULL) n++;
        printf("malloc: %lu MiB\n", n);
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "late-thread") == 0) {
        puts("waiting for /go");
        fflush(stdout);
        while (access("/go", F_OK) != 0) usleep(20000);
        pthread_t t;
        if (pthread_create(&t, NULL, say, NULL) != 0 || pthread_join(t, NULL) != 0) {
            puts("pthread failed");
            return 1;
        }
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "cpus") == 0) {
        printf("cpus: %ld\n", sysconf(_SC_NPROCESSORS_ONLN));
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "cat") == 0) {
        char buffer[4096];
        long total = 0;
        ssize_t n;
        while ((n = read(0, buffer, sizeof buffer)) > 0) {
            fwrite(buffer, 1, (size_t)n, stdout);
            total += n;
        }
        fflush(stdout);
        fprintf(stderr, "read %ld bytes\n", total);
        return n < 0 ? 1 : 0;
    }
    fprintf(stderr, "usage: probe env NAME... | sleep | spin | grow | malloc | late-thread | cpus"
            " | cat\n");
    return 2;
}
