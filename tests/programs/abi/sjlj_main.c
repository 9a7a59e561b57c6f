/* setjmp/longjmp built with wasm exception handling (see scripts/build-guests), across the
 * main module and a dlopened side module, in the main thread and in two more threads:
 *   - a longjmp thrown in the side module, through side-module frames, to a setjmp in main;
 *   - a longjmp thrown by main (through a function pointer) to a setjmp in the side module;
 *   - setjmp and longjmp within main.
 * Usage: sjlj_main.wasm /path/to/libsjlj.so */
#include <dlfcn.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>

typedef int (*jump_through_fn)(jmp_buf *, int, int);
typedef int (*catch_fn)(void (*)(jmp_buf *, int), int);

static jump_through_fn side_jump_through;
static catch_fn side_catch;

__attribute__((noinline)) static void main_jump(jmp_buf *env, int value) {
    longjmp(*env, value);
}

/* One round of every case; returns a checksum the caller compares. */
static int round_trip(int seed) {
    int sum = 0;
    jmp_buf env;
    volatile int tries = 0;
    int got = setjmp(env);
    if (got == 0) {
        tries++;
        side_jump_through(&env, 5 + seed % 3, 100 + seed);
        return -1000; /* the side module returned instead of jumping */
    }
    sum += got + tries; /* 100 + seed + 1 */
    sum += side_catch(main_jump, 7); /* 7 * 10 + 1 */
    jmp_buf local;
    volatile int count = 0;
    if (setjmp(local) < 3) {
        count++;
        main_jump(&local, count);
    }
    return sum + count; /* + 3 */
}

static void *thread_main(void *arg) {
    int id = (int)(long)arg, ok = 0;
    for (int i = 0; i < 50; i++)
        ok += round_trip(id + i) == 100 + id + i + 1 + 71 + 3;
    return (void *)(long)ok;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: sjlj_main LIBSJLJ\n");
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) {
        printf("dlopen: %s\n", dlerror());
        return 1;
    }
    side_jump_through = (jump_through_fn)dlsym(lib, "side_jump_through");
    side_catch = (catch_fn)dlsym(lib, "side_catch");
    if (!side_jump_through || !side_catch) {
        printf("dlsym: %s\n", dlerror());
        return 1;
    }
    int got = round_trip(0);
    printf("main thread: round trip %d (expect %d)\n", got, 100 + 1 + 71 + 3);
    pthread_t threads[2];
    for (long t = 0; t < 2; t++)
        if (pthread_create(&threads[t], NULL, thread_main, (void *)(t + 1))) {
            puts("pthread_create failed");
            return 1;
        }
    for (int t = 0; t < 2; t++) {
        void *ok;
        pthread_join(threads[t], &ok);
        printf("thread %d: %ld/50 round trips right\n", t + 1, (long)ok);
    }
    int *reached = (int *)dlsym(lib, "side_depth_reached");
    printf("side depth reached: %d\n", reached ? *reached : -1);
    return 0;
}
