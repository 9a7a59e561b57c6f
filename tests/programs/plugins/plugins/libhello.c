/*
 * plugins/plugins/libhello.c -> plugins/plugins/libhello.so: plugin for plugins/host.wasm.
 * Shared-memory PIC side module (-Bsymbolic); uses the host's libc (malloc, snprintf, puts,
 * strlen, free) and host_version/host_add through env imports.
 * run(x) prints "[hello] hello, world! (host wasmgroup-demo 1.0, x=21)" and returns
 * host_add(x, strlen(message)) = 21 + 45 = 66 for x = 21.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../plugin_api.h"

static int hello_run(int x) {
    char *msg = malloc(128);
    if (!msg) return -1;
    snprintf(msg, 128, "hello, world! (host %s, x=%d)", host_version(), x);
    char *line = malloc(160);
    snprintf(line, 160, "[hello] %s", msg);
    puts(line);
    int r = host_add(x, (int)strlen(msg));
    free(line);
    free(msg);
    return r;
}

const struct plugin_info plugin_info = {
    PLUGIN_ABI_VERSION,
    "hello",
    "greets through the host's libc",
    hello_run,
};
