/*
 * stress/lazy_registry.c -> stress/lazy_registry.wasm: a planted ordering bug, for
 * `wasmgroup stress` to find (tests/test_stress.py).
 *
 * Two plugins: libreg_core.so creates the program's registry in its constructor,
 * libreg_ext.so registers itself in its constructor (into the registry if there is one, else
 * it is lost). Thread "core" dlopens libreg_core.so at once; thread "ext" first sleeps
 * STAGGER_MS milliseconds (argv[1], default 20), "long enough for core to be loaded", then
 * dlopens libreg_ext.so. The bug: nothing but that sleep orders the two loads. Unperturbed,
 * core's dlopen reaches the coordinator STAGGER_MS before ext's and takes the topology lock
 * first; when a schedule delays core's request by more than that (or ext's by less), ext's
 * constructor runs first and its registration is lost.
 * Run with cwd = the directory of this file (the plugins are found as ./libreg_*.so).
 * Expected stdout:
 *   registry: core ext
 * With the bug:
 *   registry: core (lost: ext)
 * Exit code 0 either way.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char registry[128];
static int registry_ready;
static char lost[128];

/* Called from the plugins' constructors (exported to them). */
void registry_create(const char *owner) {
    strcpy(registry, owner);
    registry_ready = 1;
}

void registry_add(const char *name) {
    char *into = registry_ready ? registry : lost;
    if (*into) strcat(into, " ");
    strcat(into, name);
}

static pthread_barrier_t start;
static int stagger_ms = 20;

static void *load(void *arg) {
    const char *path = arg;
    pthread_barrier_wait(&start);
    if (strstr(path, "ext")) usleep(stagger_ms * 1000);
    if (!dlopen(path, RTLD_NOW)) {
        printf("dlopen %s: %s\n", path, dlerror());
        exit(1);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) stagger_ms = atoi(argv[1]);
    pthread_barrier_init(&start, NULL, 2);
    pthread_t core, ext;
    if (pthread_create(&core, NULL, load, "./libreg_core.so") ||
        pthread_create(&ext, NULL, load, "./libreg_ext.so")) {
        printf("pthread_create failed\n");
        return 1;
    }
    pthread_join(core, NULL);
    pthread_join(ext, NULL);
    if (*lost)
        printf("registry: %s (lost: %s)\n", registry, lost);
    else
        printf("registry: %s\n", registry);
    return 0;
}
