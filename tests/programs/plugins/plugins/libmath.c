/*
 * plugins/plugins/libmath.c -> plugins/plugins/libmath.so: plugin for plugins/host.wasm.
 * Shared-memory PIC side module (-Bsymbolic); uses the host's malloc/free/printf and host_add.
 * run(x) fills a malloc'ed table with 1..x, prints "[math] sum(1..21)=231 squares=3311" and
 * returns host_add(sum, squares) = 3542 for x = 21.
 */
#include <stdio.h>
#include <stdlib.h>

#include "../plugin_api.h"

static int math_run(int x) {
    int *table = malloc((size_t)x * sizeof *table);
    if (!table) return -1;
    for (int i = 0; i < x; i++) table[i] = i + 1;
    int sum = 0, squares = 0;
    for (int i = 0; i < x; i++) {
        sum += table[i];
        squares += table[i] * table[i];
    }
    free(table);
    printf("[math] sum(1..%d)=%d squares=%d\n", x, sum, squares);
    return host_add(sum, squares);
}

const struct plugin_info plugin_info = {
    PLUGIN_ABI_VERSION,
    "math",
    "sums with a malloc'ed table",
    math_run,
};
