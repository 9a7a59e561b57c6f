/*
 * plugins/faulty/libmismatch.c -> plugins/faulty/libmismatch.so: imports the host's
 * `host_add(int, int)` with the wrong type `(int) -> int`. dlopen must fail with a type
 * mismatch naming host_add (the seed's ImportTypeMismatch), and nothing is loaded.
 */
/* Not plugin_api.h: it declares host_add with the right type. */
#define PLUGIN_ABI_VERSION 1
struct plugin_info {
    int abi_version;
    const char *name;
    const char *description;
    int (*run)(int x);
};

extern int host_add(int a); /* the host defines host_add(int, int) */

static int run(int x) { return host_add(x); }

const struct plugin_info plugin_info = {PLUGIN_ABI_VERSION, "mismatch", "wrong import type",
                                        run};
