/*
 * plugins/faulty/libctortrap.c -> plugins/faulty/libctortrap.so: a plugin whose constructor
 * traps. dlopen must fail (NULL, dlerror naming the library and the trap) and leave the
 * linker as it was: plugins loaded afterwards get the same handles, memory and table slots
 * they would have had.
 */
#include <stdio.h>

#include "../plugin_api.h"

__attribute__((constructor)) static void explode(void) {
    printf("[ctortrap] constructor about to trap\n");
    __builtin_trap();
}

static int never_run(int x) { return x; }

const struct plugin_info plugin_info = {PLUGIN_ABI_VERSION, "ctortrap", "traps in its ctor",
                                        never_run};
