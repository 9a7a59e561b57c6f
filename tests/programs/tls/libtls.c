/*
 * tls/libtls.c -> tls/libtls.so: freestanding side module with shared memory and thread-local
 * storage. Exports the TLS data symbol tls_counter (EXPORT_INFO flag tls; dlsym/GOT.mem must
 * give the calling thread's address: __tls_base + offset), plus __tls_base, __wasm_init_tls,
 * __tls_size and __tls_align so that a loader can give every instance (thread) its own block.
 * tls_counter starts at 7 in every thread; tls_bump() returns the incremented per-thread value;
 * tls_shared_bump() bumps a normal (shared) global atomically. Prints nothing.
 */
_Thread_local int tls_counter = 7;
_Thread_local int tls_zeroed; /* .tbss */
int shared_counter;

int tls_bump(void) { return ++tls_counter; }

int *tls_counter_addr(void) { return &tls_counter; }

int tls_get_zeroed(void) { return tls_zeroed; }

int tls_shared_bump(void) { return __atomic_add_fetch(&shared_counter, 1, __ATOMIC_SEQ_CST); }
