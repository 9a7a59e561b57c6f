/*
 * plugin_api.h - the interface between plugins/host.c and its plugins.
 * A plugin exports one data symbol, `plugin_info`, of type struct plugin_info.
 */
#ifndef WASMGROUP_PLUGIN_API_H
#define WASMGROUP_PLUGIN_API_H

#define PLUGIN_ABI_VERSION 1

struct plugin_info {
    int abi_version;         /* PLUGIN_ABI_VERSION */
    const char *name;        /* short name */
    const char *description; /* one line */
    int (*run)(int x);       /* the plugin's work */
};

/* Exported by the host (the main module) for plugins to call back. */
int host_add(int a, int b);
const char *host_version(void);

#endif
