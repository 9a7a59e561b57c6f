/* setjmp/longjmp built with wasm exception handling (see scripts/build-guests), across the
 * main module and a dlopened side module, in the main thread and in two more threads:
 *   - a longjmp thrown in the side module, through side-module frames, to a setjmp in main;
 *   - a longjmp thrown by main (through a function pointer) to a setjmp in the side module;
 *   - setjmp and longjmp within main.
 * Thread 1 runs them against a second copy of the library that it dlopens itself (under
 * another name), which main then uses too: tags bound when another thread loads a module.
 * Usage: sjlj_main.wasm LIBSJLJ OTHER-NAME-OF-LIBSJLJ */
#include <dlfcn.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>

typedef int (*jump_through_fn)(jmp_buf *, int, int);
typedef int (*catch_fn)(void (*)(jmp_buf *, int), int);

struct side {
    jump_through_fn jump_through;
    catch_fn catch_;
};

static struct side first, second;
static const char *second_name;

__attribute__((noinline)) static void main_jump(jmp_buf *env, int value) {
    longjmp(*env, value);
}

static int load(const char *name, struct side *side) {
    void *lib = dlopen(name, RTLD_NOW);
    if (!lib) {
        printf("dlopen %s: %s\n", name, dlerror());
        return 0;
    }
    side->jump_through = (jump_through_fn)dlsym(lib, "side_jump_through");
    side->catch_ = (catch_fn)dlsym(lib, "side_catch");
    if (!side->jump_through || !side->catch_) {
        printf("dlsym: %s\n", dlerror());
        return 0;
    }
    return 1;
}

/* One round of every case; returns a checksum the caller compares. */
static int round_trip(const struct side *side, int seed) {
    int sum = 0;
    jmp_buf env;
    volatile int tries = 0;
    int got = setjmp(env);
    if (got == 0) {
        tries++;
        side->jump_through(&env, 5 + seed % 3, 100 + seed);
        return -1000; /* the side module returned instead of jumping */
    }
    sum += got + tries; /* 100 + seed + 1 */
    sum += side->catch_(main_jump, 7); /* 7 * 10 + 1 */
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
    const struct side *side = &first;
    if (id == 1) {
        if (!load(second_name, &second)) return (void *)-1L;
        side = &second;
    }
    for (int i = 0; i < 50; i++)
        ok += round_trip(side, id + i) == 100 + id + i + 1 + 71 + 3;
    return (void *)(long)ok;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: sjlj_main LIBSJLJ OTHER-NAME-OF-LIBSJLJ\n");
        return 2;
    }
    second_name = argv[2];
    if (!load(argv[1], &first)) return 1;
    int got = round_trip(&first, 0);
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
    got = round_trip(&second, 0);
    printf("main thread, second copy: round trip %d (expect %d)\n", got, 100 + 1 + 71 + 3);
    return 0;
}
