/*
 * pie/main.c -> pie/main.wasm: freestanding PIE main module (dylink.0, no libc) with
 * NEEDED libbar.so, which itself needs libfoo.so. Uses only WASI + raw WASIX imports.
 *
 * Tests: load-time NEEDED chain (main -> libbar -> libfoo; run with LD_LIBRARY_PATH set to the
 * directory holding libbar.so and libfoo.so, e.g. build/guests/side); main exporting a function
 * that a side module imports (host_callback); main's own GOT.mem/GOT.func imports resolved from
 * a transitively loaded module (foo_counter, foo) and applied by main's __wasm_apply_data_relocs;
 * side constructors run before _start; raw wasix_32v1.dlopen/dlsym with RUNTIME_PATH ($ORIGIN/lib)
 * resolution; dlopen returning an already-loaded module; dlsym of a data symbol; dlsym of a
 * hidden export failing; dlopen of a missing library failing with an error text.
 *
 * argv[1]: path of libbaz.so (default "../rpath/libbaz.so", i.e. run with cwd = build/guests/pie).
 * Expected stdout (lines marked * contain runtime-specific error text after the colon):
 *   pie main: start
 *   foo_counter=1005
 *   foo_ctor_ran=1
 *   bar(4)=2104
 *   bar_call_foo_fp(10)=1015
 *   foo_twice_via_ptr(21)=42
 *   foo_has_maybe_missing=0
 *   foo_name=libfoo
 *   main_fps[0](2)=23
 *   main_fps[1](1)=1006
 *   bar_bump(10)=1015
 *   bar_read_counter=1015
 *   main_counter_ptr=1015
 *   baz(5)=122
 *   baz_magic=4242
 *   foo_bump via dlsym(1)=1016
 *   dlsym foo_hidden: not found (expected)
 * *   error: <text>
 *   dlopen libdoesnotexist.so: failed (expected)
 * *   error: <text>
 *   pie main: done
 * Exit code 0 (1 on an unexpected failure, after printing "FAIL ...").
 */
#include "../include/wasi_io.h"

/* Raw WASIX dynamic-linking ABI (all i32; returns a WASI errno, 0 = success). */
__attribute__((import_module("wasix_32v1"), import_name("dlopen")))
int wasix_dlopen(const char *path, io_u32 path_len, io_u32 flags, char *err_buf, io_u32 err_buf_len,
                 const char *ld_library_path, io_u32 ld_library_path_len, io_u32 *out_handle);

__attribute__((import_module("wasix_32v1"), import_name("dlsym")))
int wasix_dlsym(io_u32 handle, const char *symbol, io_u32 symbol_len, char *err_buf,
                io_u32 err_buf_len, io_u32 *out_symbol);

#define RTLD_NOW 2

/* From libbar.so (NEEDED). */
extern int bar(int x);
extern int bar_call_foo_fp(int x);
extern int bar_bump(int delta);
extern int bar_read_counter(void);
/* From libfoo.so (loaded as libbar's dependency; main has no NEEDED entry for it). */
extern int foo(int x);
extern int foo_counter;
extern int foo_ctor_ran;
extern int foo_twice_via_ptr(int x);
extern int foo_has_maybe_missing(void);
extern const char *foo_get_name(void);

/* Imported by libfoo.so. */
int host_callback(int x) { return x * 10 + 3; }

/* Data relocations in the main module itself. */
int (*const main_fps[2])(int) = {host_callback, foo}; /* own slot + GOT.func.foo */
int *main_counter_ptr = &foo_counter;                 /* GOT.mem.foo_counter */

static int failures;
static char err_buf[256];

static void fail(const char *what) {
    io_puts("FAIL ");
    io_puts(what);
    io_putc('\n');
    failures++;
}

static void expect(const char *name, long long got, long long want) {
    io_kv(name, got);
    if (got != want) fail(name);
}

static void print_error_text(void) {
    err_buf[sizeof err_buf - 1] = 0;
    io_puts("  error: ");
    io_puts(err_buf);
    io_putc('\n');
}

static char dl_path_buf[512];

static int dl_open(const char *path, io_u32 *handle) {
    /* Copy first: io_getenv reuses the buffer that io_arg's result may live in. */
    io_u32 n = io_strlen(path);
    if (n >= sizeof dl_path_buf) return 28;
    for (io_u32 i = 0; i <= n; i++) dl_path_buf[i] = path[i];
    path = dl_path_buf;
    const char *ldp = io_getenv("LD_LIBRARY_PATH"); /* as wasix-libc's dlopen does */
    err_buf[0] = 0;
    return wasix_dlopen(path, io_strlen(path), RTLD_NOW, err_buf, sizeof err_buf, ldp,
                        ldp ? io_strlen(ldp) : 0, handle);
}

static int dl_sym(io_u32 handle, const char *name, io_u32 *out) {
    err_buf[0] = 0;
    return wasix_dlsym(handle, name, io_strlen(name), err_buf, sizeof err_buf, out);
}

extern void __wasm_call_ctors(void); /* synthesized by wasm-ld; crt1 would call it */

void _start(void) {
    __wasm_call_ctors();
    io_puts("pie main: start\n");

    expect("foo_counter", foo_counter, 1005);
    expect("foo_ctor_ran", foo_ctor_ran, 1);
    expect("bar(4)", bar(4), 2104);
    expect("bar_call_foo_fp(10)", bar_call_foo_fp(10), 1015);
    expect("foo_twice_via_ptr(21)", foo_twice_via_ptr(21), 42);
    expect("foo_has_maybe_missing", foo_has_maybe_missing(), 0);
    const char *name = foo_get_name();
    io_puts("foo_name=");
    io_puts(name);
    io_putc('\n');
    if (!(name[0] == 'l' && name[3] == 'f' && name[6] == 0)) fail("foo_name");
    expect("main_fps[0](2)", main_fps[0](2), 23);
    expect("main_fps[1](1)", main_fps[1](1), 1006);
    expect("bar_bump(10)", bar_bump(10), 1015);
    expect("bar_read_counter", bar_read_counter(), 1015);
    expect("main_counter_ptr", *main_counter_ptr, 1015);

    /* dlopen through a path: libbaz.so needs libqux.so via its RUNTIME_PATH $ORIGIN/lib. */
    const char *baz_path = io_arg(1, "../rpath/libbaz.so");
    io_u32 h = 0, sym = 0;
    int rc = dl_open(baz_path, &h);
    if (rc != 0) {
        io_puts("dlopen ");
        io_puts(baz_path);
        io_puts(": failed\n");
        print_error_text();
        fail("dlopen libbaz");
    } else {
        if (dl_sym(h, "baz", &sym) != 0) {
            print_error_text();
            fail("dlsym baz");
        } else {
            int (*baz)(int) = (int (*)(int))sym; /* a table index */
            expect("baz(5)", baz(5), 122);
        }
        if (dl_sym(h, "baz_magic", &sym) != 0) {
            print_error_text();
            fail("dlsym baz_magic");
        } else {
            expect("baz_magic", *(int *)sym, 4242); /* a data address */
        }
    }

    /* dlopen of an already loaded module (same name as libbar's NEEDED entry). */
    rc = dl_open("libfoo.so", &h);
    if (rc != 0) {
        print_error_text();
        fail("dlopen libfoo.so");
    } else {
        if (dl_sym(h, "foo_bump", &sym) != 0) {
            print_error_text();
            fail("dlsym foo_bump");
        } else {
            expect("foo_bump via dlsym(1)", ((int (*)(int))sym)(1), 1016);
        }
        if (dl_sym(h, "foo_hidden", &sym) == 0) {
            fail("dlsym foo_hidden succeeded");
        } else {
            io_puts("dlsym foo_hidden: not found (expected)\n");
            print_error_text();
        }
    }

    rc = dl_open("libdoesnotexist.so", &h);
    if (rc == 0) {
        fail("dlopen libdoesnotexist.so succeeded");
    } else {
        io_puts("dlopen libdoesnotexist.so: failed (expected)\n");
        print_error_text();
    }

    io_puts("pie main: done\n");
    __wasi_proc_exit(failures ? 1 : 0);
}
