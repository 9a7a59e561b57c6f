/*
 * plugins/stubcall/libcallsmissing.c -> plugins/stubcall/libcallsmissing.so: calls a function
 * that no module defines. Loading succeeds (the import becomes a lazy stub, as in the seed);
 * the call in run() must fail clearly, naming the function, and end the program (trap).
 * Expected: "loaded"-line never printed for it; wasmgroup exits 134 naming no_such_function.
 */
#include "../plugin_api.h"

extern int no_such_function(int x);

static int run(int x) { return no_such_function(x); }

const struct plugin_info plugin_info = {PLUGIN_ABI_VERSION, "callsmissing",
                                        "calls an undefined function", run};
