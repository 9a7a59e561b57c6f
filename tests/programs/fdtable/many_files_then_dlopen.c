/* Holds ARGV[1] descriptors open (of ARGV[2]), then starts ARGV[3] threads, all alive at once,
 * that each dlopen ARGV[4] and call its `poke`: their workers are started after the files are
 * open, so their sockets have numbers past 1024 in the coordinator. */
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static const char *library;
static pthread_barrier_t all_started;

static void *load_and_call(void *arg) {
    pthread_barrier_wait(&all_started);
    void *handle = dlopen(library, RTLD_NOW);
    if (!handle) {
        printf("thread %ld: dlopen: %s\n", (long)arg, dlerror());
        return NULL;
    }
    void (*poke)(volatile char *, char) = (void (*)(volatile char *, char))dlsym(handle, "poke");
    volatile char byte = 0;
    poke(&byte, 7);
    printf("thread %ld: %d\n", (long)arg, byte);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: many_files_then_dlopen COUNT FILE THREADS LIBRARY\n");
        return 2;
    }
    int count = atoi(argv[1]), threads = atoi(argv[3]);
    library = argv[4];
    for (int i = 0; i < count; i++)
        if (open(argv[2], O_RDONLY) < 0) {
            perror("open");
            return 1;
        }
    printf("%d files open\n", count);
    fflush(stdout);
    if (threads < 1 || threads > 64)
        return 2;
    pthread_barrier_init(&all_started, NULL, (unsigned)threads);
    pthread_t ids[64];
    for (long i = 0; i < threads; i++)
        if (pthread_create(&ids[i], NULL, load_and_call, (void *)i) != 0) {
            printf("pthread_create failed\n");
            return 1;
        }
    for (long i = 0; i < threads; i++)
        pthread_join(ids[i], NULL);
    return 0;
}
