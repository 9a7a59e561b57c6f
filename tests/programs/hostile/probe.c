/*
 * hostile/probe.c -> hostile/probe.wasm: a guest that attacks the library locator. Static
 * wasix-libc pthreads main (shared memory, imported table, --export-dynamic).
 *
 *   probe.wasm open NAME...        dlopen each NAME through the raw wasix_32v1.dlopen (so a
 *                                  name may hold a NUL byte: write it as %00) and print
 *                                  "loaded NAME" or "failed NAME: <dlerror text>"
 *   probe.wasm ldpath ENTRY NAME   the same with ENTRY as the caller's LD_LIBRARY_PATH
 *   probe.wasm chdir PATH...       chdir to each PATH, print "chdir PATH: ok|failed cwd=CWD"
 *   probe.wasm race N              needs a mapping at /m holding d/ (a directory with lib.so,
 *                                  which is not a module, and data.txt) and out (a symlink to a
 *                                  host directory outside the mapping, with a loadable decoy
 *                                  lib.so and a data.txt starting with OUTSIDE). One thread
 *                                  swaps d and out by renaming in a tight loop, another opens
 *                                  /m/d/data.txt, the main thread calls dlopen("/m/d/lib.so")
 *                                  N times. Prints one line:
 *   race: attempts=N inside=I missing=M other=O escaped=E outside_reads=R swaps=S reads=F
 *                                  (and "other: <dlerror>" for the first unexpected error).
 *                                  The sandbox holds when E and R are 0 and O is 0.
 * Exit code 0 (2 on bad arguments).
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int32_t raw_dlopen(const char *path, uint32_t path_len, uint32_t flags, char *err_buf,
                   uint32_t err_len, const char *ld_path, uint32_t ld_path_len,
                   uint32_t *handle)
    __attribute__((__import_module__("wasix_32v1"), __import_name__("dlopen")));

/* "%00" becomes a NUL byte, "%%" a percent sign; returns the length. */
static size_t unescape(const char *in, char *out, size_t cap) {
    size_t n = 0;
    while (*in && n + 1 < cap) {
        if (in[0] == '%' && in[1] == '0' && in[2] == '0') {
            out[n++] = '\0';
            in += 3;
        } else if (in[0] == '%' && in[1] == '%') {
            out[n++] = '%';
            in += 2;
        } else {
            out[n++] = *in++;
        }
    }
    out[n] = '\0';
    return n;
}

static void try_open(const char *arg, const char *ld) {
    static char name[4096], ld_path[4096], err[2048];
    size_t n = unescape(arg, name, sizeof name);
    size_t m = ld ? unescape(ld, ld_path, sizeof ld_path) : 0;
    uint32_t handle = 0;
    memset(err, 0, sizeof err);
    int32_t rc = raw_dlopen(name, n, RTLD_NOW, err, sizeof err, ld ? ld_path : NULL, m, &handle);
    if (rc == 0)
        printf("loaded %s\n", arg);
    else
        printf("failed %s: %s\n", arg, err);
}

static atomic_int stop;
static atomic_long swaps, reads, outside_reads;

static void *swapper(void *unused) {
    (void)unused;
    while (!atomic_load(&stop)) {
        rename("/m/d", "/m/d.real");
        rename("/m/out", "/m/d");
        rename("/m/d", "/m/out");
        rename("/m/d.real", "/m/d");
        atomic_fetch_add(&swaps, 1);
    }
    return NULL;
}

static void *reader(void *unused) {
    (void)unused;
    char buf[16];
    while (!atomic_load(&stop)) {
        int fd = open("/m/d/data.txt", O_RDONLY);
        if (fd < 0) continue;
        ssize_t got = read(fd, buf, sizeof buf);
        close(fd);
        atomic_fetch_add(&reads, 1);
        if (got >= 7 && memcmp(buf, "OUTSIDE", 7) == 0) atomic_fetch_add(&outside_reads, 1);
    }
    return NULL;
}

static int race(int attempts) {
    pthread_t threads[2];
    pthread_create(&threads[0], NULL, swapper, NULL);
    pthread_create(&threads[1], NULL, reader, NULL);
    int inside = 0, missing = 0, other = 0, escaped = 0;
    static char first_other[1024];
    for (int i = 0; i < attempts; i++) {
        void *h = dlopen("/m/d/lib.so", RTLD_NOW);
        if (h) {
            escaped++;
            continue;
        }
        const char *e = dlerror();
        if (!e) e = "(no dlerror)";
        if (strstr(e, "not a valid module"))
            inside++;
        else if (strstr(e, "not found") || strstr(e, "cannot read"))
            missing++;
        else if (other++ == 0)
            snprintf(first_other, sizeof first_other, "%s", e);
    }
    atomic_store(&stop, 1);
    pthread_join(threads[0], NULL);
    pthread_join(threads[1], NULL);
    printf("race: attempts=%d inside=%d missing=%d other=%d escaped=%d outside_reads=%ld "
           "swaps=%ld reads=%ld\n", attempts, inside, missing, other, escaped,
           atomic_load(&outside_reads), atomic_load(&swaps), atomic_load(&reads));
    if (other) printf("other: %s\n", first_other);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "race") == 0) return race(atoi(argv[2]));
    if (argc >= 4 && strcmp(argv[1], "ldpath") == 0) {
        try_open(argv[3], argv[2]);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "chdir") == 0) {
        char cwd[1024];
        for (int i = 2; i < argc; i++) {
            int rc = chdir(argv[i]);
            printf("chdir %s: %s cwd=%s\n", argv[i], rc == 0 ? "ok" : "failed",
                   getcwd(cwd, sizeof cwd) ? cwd : "?");
        }
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "open") == 0) {
        for (int i = 2; i < argc; i++) try_open(argv[i], NULL);
        return 0;
    }
    fprintf(stderr, "usage: probe.wasm open NAME... | ldpath ENTRY NAME | chdir PATH... | "
                    "race N\n");
    return 2;
}
