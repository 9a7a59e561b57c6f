/*
 * batch/job.c -> batch/job.wasm: one small job of a `wasmgroup batch` test or benchmark, one
 * mode per run (argv[1]):
 *   job echo WORD...     prints "job WORD..." (one line) and exits 0
 *   job nap MS WORD      sleeps MS milliseconds, then prints "job WORD"
 *   job exit N           prints "exiting N" and exits with status N
 *   job trap             traps (unreachable)
 *   job hang             sleeps forever (for timeouts)
 *   job oom              mallocs 1 MiB blocks, touching each, until malloc fails, then says so
 *                        on stderr and aborts (a program that dies of running out of memory)
 *   job cat              copies stdin to stdout
 *   job big N            writes N bytes ('x', a newline every 64) to stdout
 *   job read PATH        prints the file at PATH (in the guest view) and the working directory
 *   job env NAME         prints "NAME=value" or "NAME unset"
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *volatile kept;

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "echo") == 0) {
        fputs("job", stdout);
        for (int i = 2; i < argc; i++) printf(" %s", argv[i]);
        putchar('\n');
        return 0;
    }
    if (strcmp(mode, "nap") == 0 && argc == 4) {
        usleep((useconds_t)atoi(argv[2]) * 1000);
        printf("job %s\n", argv[3]);
        return 0;
    }
    if (strcmp(mode, "exit") == 0 && argc == 3) {
        printf("exiting %s\n", argv[2]);
        return atoi(argv[2]);
    }
    if (strcmp(mode, "trap") == 0) __builtin_trap();
    if (strcmp(mode, "hang") == 0) {
        puts("hanging");
        fflush(stdout);
        for (;;) sleep(1);
    }
    if (strcmp(mode, "oom") == 0) {
        unsigned long n = 0;
        char *block;
        while ((block = malloc(1 << 20)) != NULL) {
            memset(block, 1, 1 << 20);
            *(void **)block = (void *)kept;  /* a chain the compiler cannot elide */
            kept = block;
            n++;
        }
        fprintf(stderr, "out of memory after %lu MiB\n", n);
        abort();
    }
    if (strcmp(mode, "cat") == 0) {
        char buffer[4096];
        size_t n;
        while ((n = fread(buffer, 1, sizeof buffer, stdin)) > 0) fwrite(buffer, 1, n, stdout);
        return 0;
    }
    if (strcmp(mode, "big") == 0 && argc == 3) {
        long n = atol(argv[2]);
        for (long i = 0; i < n; i++) putchar(i % 64 == 63 ? '\n' : 'x');
        return 0;
    }
    if (strcmp(mode, "read") == 0 && argc == 3) {
        FILE *f = fopen(argv[2], "r");
        if (!f) {
            perror(argv[2]);
            return 1;
        }
        char buffer[4096];
        size_t n;
        while ((n = fread(buffer, 1, sizeof buffer, f)) > 0) fwrite(buffer, 1, n, stdout);
        fclose(f);
        char cwd[256];
        printf("cwd %s\n", getcwd(cwd, sizeof cwd) ? cwd : "?");
        return 0;
    }
    if (strcmp(mode, "env") == 0 && argc == 3) {
        const char *value = getenv(argv[2]);
        if (value) printf("%s=%s\n", argv[2], value);
        else printf("%s unset\n", argv[2]);
        return 0;
    }
    fprintf(stderr, "usage: job echo WORD... | nap MS WORD | exit N | trap | hang | oom | cat | "
            "big N | read PATH | env NAME\n");
    return 2;
}
