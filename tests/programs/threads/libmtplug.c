/*
 * threads/libmtplug.c -> threads/libmtplug.so: shared-memory PIC side module (-Bsymbolic)
 * loaded by threads/mt_host.wasm and called from several threads.
 *
 * mtplug_work(x) counts its calls in a _Thread_local (per thread, per instance), adds x to a
 * shared atomic total and returns mt_host_square(x) + 1 (a call back into the main module).
 * Exports __wasix_init_tls() (as wasixcc-built side modules do): a loader that instantiates this
 * module in a new thread calls it to get a fresh TLS block; it allocates the block with the
 * main module's aligned_alloc and initialises it with __wasm_init_tls. Prints nothing.
 */
#include <stddef.h>

extern int mt_host_square(int x);                     /* from the main module */
extern void *aligned_alloc(size_t align, size_t size); /* from the main module's libc */
extern void __wasm_init_tls(void *block);             /* synthesized by wasm-ld */

static _Thread_local int calls;
static int total;

int mtplug_work(int x) {
    calls++;
    __atomic_fetch_add(&total, x, __ATOMIC_SEQ_CST);
    return mt_host_square(x) + 1;
}

int mtplug_calls(void) { return calls; }

int mtplug_total(void) { return __atomic_load_n(&total, __ATOMIC_SEQ_CST); }

#ifdef __wasm__
void *__wasix_init_tls(void) {
    size_t align = __builtin_wasm_tls_align();
    size_t size = __builtin_wasm_tls_size();
    if (align < sizeof(void *)) align = sizeof(void *);
    void *block = aligned_alloc(align, (size + align - 1) / align * align);
    if (block) __wasm_init_tls(block);
    return block;
}
#endif
