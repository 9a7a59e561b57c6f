/*
 * side/libbar.c -> side/libbar.so: freestanding side module with NEEDED libfoo.so.
 *
 * Tests: load-time dependency loading (NEEDED), env.* function imports resolved from another
 * side module (foo, foo_call_host, foo_bump), GOT.mem of another module's data (foo_counter),
 * and GOT.func of another module's function stored in data (bar_foo_fp = foo).
 * Linked with -Bsymbolic, so it has no GOT imports for its own symbols.
 *
 * Prints nothing itself; pie/main.wasm prints bar(4)=2104 etc.
 */
extern int foo(int x);
extern int foo_call_host(int x);
extern int foo_bump(int delta);
extern int foo_counter;

int (*bar_foo_fp)(int) = foo;        /* GOT.func.foo, stored by __wasm_apply_data_relocs */
int *bar_counter_ptr = &foo_counter; /* GOT.mem.foo_counter */

/* bar(x) = 2*foo(x) + foo_call_host(x) = 2*(x + foo_counter) + 2*host_callback(x) */
int bar(int x) { return foo(x) * 2 + foo_call_host(x); }

int bar_call_foo_fp(int x) { return bar_foo_fp(x); }

int bar_bump(int delta) { return foo_bump(delta); }

int bar_read_counter(void) { return *bar_counter_ptr; }
