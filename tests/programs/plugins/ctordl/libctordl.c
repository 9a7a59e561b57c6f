/*
 * plugins/ctordl/libctordl.c -> plugins/ctordl/libctordl.so: a constructor that calls back into
 * the dynamic linker while its own dlopen is under way. dlsym(RTLD_DEFAULT, "host_add") must
 * work (a function slot broadcast from inside the load); a nested dlopen must fail cleanly
 * (NULL and a dlerror text), never hang. The constructor prints
 *   "[ctordl] nested dlopen refused: <dlerror text>"
 * and run(x) returns host_add(x, 100) * 10 + 1 = 1211 for x = 21.
 */
#include <dlfcn.h>
#include <stdio.h>

#include "../plugin_api.h"

static int (*add)(int, int);
static int nested_refused;

__attribute__((constructor)) static void init(void) {
    add = (int (*)(int, int))dlsym(RTLD_DEFAULT, "host_add");
    void *nested = dlopen("/plugins/libhello.so", RTLD_NOW);
    nested_refused = nested == 0;
    if (nested == 0) printf("[ctordl] nested dlopen refused: %s\n", dlerror());
}

static int run(int x) { return (add ? add(x, 100) : -1) * 10 + nested_refused; }

const struct plugin_info plugin_info = {PLUGIN_ABI_VERSION, "ctordl",
                                        "dlsym and dlopen in its constructor", run};
