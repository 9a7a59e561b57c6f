/*
 * side/libfoo.c -> side/libfoo.so: freestanding dylink.0 side module (no libc).
 *
 * Tests: data relocations (__wasm_apply_data_relocs) of a pointer to its own exported data
 * (GOT.mem.foo_counter, since it is linked without -Bsymbolic), of a pointer to static data
 * (__memory_base relative), of a function pointer to a main-module function (GOT.func.host_callback)
 * and to a static function (__table_base relative); a direct call to a main-module function
 * (env.host_callback); a weak undefined data symbol (IMPORT_INFO binding-weak, GOT.mem.maybe_missing
 * must resolve to 0); a constructor (__wasm_call_ctors must run once, after data relocs); an
 * exported hidden function (foo_hidden: exported, but the build marks it visibility-hidden in
 * EXPORT_INFO, so dlsym must not find it).
 *
 * Prints nothing itself; pie/main.wasm prints the values (foo_counter starts at 1000, the
 * constructor adds 5).
 */
extern int host_callback(int x);                  /* defined by the main module */
extern int maybe_missing __attribute__((weak));   /* defined nowhere */

int foo_counter = 1000;
int foo_ctor_ran = 0;
int *foo_counter_ptr = &foo_counter;              /* GOT.mem.foo_counter in apply_data_relocs */
static const char foo_name_str[] = "libfoo";
const char *foo_name = foo_name_str;              /* __memory_base + offset */
int (*foo_callback_ptr)(int) = host_callback;     /* GOT.func.host_callback */

static int foo_twice(int x) { return 2 * x; }
int (*foo_twice_ptr)(int) = foo_twice;            /* __table_base + slot (own elem segment) */

__attribute__((constructor)) static void foo_init(void) {
    foo_counter += 5;
    foo_ctor_ran = 1;
}

int foo(int x) { return x + *foo_counter_ptr; }

int foo_bump(int delta) {
    foo_counter += delta;
    return foo_counter;
}

int foo_call_host(int x) { return host_callback(x) + foo_callback_ptr(x); }

int foo_twice_via_ptr(int x) { return foo_twice_ptr(x); }

int foo_has_maybe_missing(void) { return &maybe_missing != 0; }

const char *foo_get_name(void) { return foo_name; }

int foo_get_ctor_ran(void) { return foo_ctor_ran; }

/* Exported with --export=foo_hidden; EXPORT_INFO marks it visibility-hidden. */
__attribute__((visibility("hidden"))) int foo_hidden(int x) { return x + 99; }
