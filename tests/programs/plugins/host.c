/*
 * plugins/host.c -> plugins/host.wasm: a real-world style plugin host. Static wasix-libc main
 * (shared memory, imported table, --export-dynamic + the libc functions plugins use).
 *
 * Opens the directory argv[1] (default "plugins"), sorts the names, dlopen()s every *.so with
 * <dlfcn.h> (wasix_32v1.dlopen underneath), looks up the data symbol `plugin_info`, and calls
 * its run(21). Plugins call back into host_add/host_version and into the host's libc
 * (malloc, free, snprintf, puts, printf, strlen). A failing dlopen/dlsym is reported with
 * dlerror() and the host carries on.
 *
 * Expected stdout, run with cwd = build/guests/plugins (the line marked * ends in
 * runtime-specific dlerror() text):
 *   plugin host wasmgroup-demo 1.0: scanning plugins
 * * failed libbroken.so: <dlerror text>
 *   [hello] hello, world! (host wasmgroup-demo 1.0, x=21)
 *   loaded libhello.so (hello: greets through the host's libc) run(21)=66
 *   [math] sum(1..21)=231 squares=3311
 *   loaded libmath.so (math: sums with a malloc'ed table) run(21)=3542
 *   2 plugin(s), 1 failure(s)
 * Exit code 0 if at least one plugin loaded, else 1.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin_api.h"

int host_add(int a, int b) { return a + b; }

const char *host_version(void) { return "wasmgroup-demo 1.0"; }

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "plugins";
    printf("plugin host %s: scanning %s\n", host_version(), dir);

    DIR *d = opendir(dir);
    if (!d) {
        perror(dir);
        return 1;
    }
    char **names = NULL;
    size_t count = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!ends_with(e->d_name, ".so")) continue;
        if (count == cap) {
            cap = cap ? 2 * cap : 8;
            names = realloc(names, cap * sizeof *names);
        }
        names[count++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, count, sizeof *names, cmp_names);

    int loaded = 0, failed = 0;
    for (size_t i = 0; i < count; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            printf("failed %s: %s\n", names[i], dlerror());
            failed++;
            continue;
        }
        const struct plugin_info *info = dlsym(h, "plugin_info");
        if (!info) {
            printf("failed %s: %s\n", names[i], dlerror());
            failed++;
            continue;
        }
        if (info->abi_version != PLUGIN_ABI_VERSION) {
            printf("failed %s: abi version %d\n", names[i], info->abi_version);
            failed++;
            continue;
        }
        fflush(stdout); /* plugins print through the same stdout; keep the order obvious */
        int r = info->run(21);
        printf("loaded %s (%s: %s) run(21)=%d\n", names[i], info->name, info->description, r);
        loaded++;
    }
    printf("%d plugin(s), %d failure(s)\n", loaded, failed);
    for (size_t i = 0; i < count; i++) free(names[i]);
    free(names);
    return loaded > 0 ? 0 : 1;
}
