/*
 * plugins/faulty/libmissing.c -> plugins/faulty/libmissing.so: takes the address of a strong
 * data symbol nobody defines (GOT.mem.no_such_data, not weak). dlopen must fail naming the
 * symbol (the seed's UnresolvedGlobal), and nothing is loaded.
 */
#include "../plugin_api.h"

extern int no_such_data;

static int run(int x) { return x + no_such_data; }

const struct plugin_info plugin_info = {PLUGIN_ABI_VERSION, "missing", "needs a missing symbol",
                                        run};
