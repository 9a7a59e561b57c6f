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
 *   probe leave         leaves traces for a next program in the same worker: a marker in
 *                       static data and on the heap, LEFT=yes in its environment, an open
 *                       descriptor of / (with a --dir mapping there); prints "left fd N"
 *   probe look          prints what it finds of such traces: "marker: ...", "heap: ...",
 *                       "LEFT=..." or "LEFT unset", and "open: N..." (descriptors from 3)
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char marker[64];

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
    if (argc == 2 && strcmp(argv[1], "leave") == 0) {
        strcpy(marker, "left by the last program");
        char *block = malloc(64);
        strcpy(block, "heap of the last program");
        setenv("LEFT", "yes", 1);
        int fd = open("/", O_RDONLY | O_DIRECTORY);
        printf("left fd %d\n", fd);
        return 0;  /* block and fd stay: the process's end is their release */
    }
    if (argc == 2 && strcmp(argv[1], "look") == 0) {
        printf("marker: '%s'\n", marker);
        unsigned char *block = malloc(64);
        int zero = 1;
        for (int i = 0; i < 64; i++) zero &= block[i] == 0;
        printf("heap: %s\n", zero ? "zero" : (char *)block);
        const char *left = getenv("LEFT");
        printf(left ? "LEFT=%s\n" : "LEFT unset\n", left);
        printf("open:");
        struct stat st;
        for (int fd = 3; fd < 64; fd++)
            if (fstat(fd, &st) == 0) printf(" %d", fd);
        printf("\n");
        return 0;
    }
    fprintf(stderr, "usage: probe env NAME... | sleep | spin | grow | malloc | late-thread | cpus"
            " | cat | leave | look\n");
    return 2;
}
