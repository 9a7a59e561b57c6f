/*
 * static_needed/static_main.c -> static_needed/static_main.wasm: a static (non-PIC) wasix-libc main linked
 * against libsn.so, so wasm-ld gives it a dylink.0 section (NEEDED libsn.so, no data or table
 * of its own to place) while its data, stack and table layout stay its own. It uses its own
 * function pointers (its table elements start at slot 1), calls the library from main and
 * from a thread, and the library calls back into it.
 * Expected stdout:
 *   static main: local=42 sn_compute(5)=70
 *   thread: sn_compute(7)=82
 * Exit code 0. The _ownmemory/_owntable variants (no --import-memory / --import-table) are
 * refused at start.
 */
#include <pthread.h>
#include <stdio.h>

int sn_compute(int x);

int sn_host_scale(int x) { return 3 * x; }

static int add_one(int x) { return x + 1; }
int (*volatile local_op)(int) = add_one;

static int thread_result;
static void *thread_main(void *arg) {
    (void)arg;
    thread_result = sn_compute(7);
    return NULL;
}

int main(void) {
    printf("static main: local=%d sn_compute(5)=%d\n", local_op(41), sn_compute(5));
    pthread_t t;
    if (pthread_create(&t, NULL, thread_main, NULL)) return 1;
    pthread_join(t, NULL);
    printf("thread: sn_compute(7)=%d\n", thread_result);
    return 0;
}
