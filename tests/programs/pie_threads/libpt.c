/*
 * pie_threads/libpt.c -> pie_threads/lib/libpt<N>.so (built once per -DSIDE_ID=N): a PIC side
 * module with shared memory for the freestanding PIE threads program (main.c).
 * Exports a function, a data symbol, a function returning a pointer to a module-local function
 * (a slot in this module's own table region), and a function that calls back into the main
 * module (env import resolved against main's exports).
 */
#ifndef SIDE_ID
#define SIDE_ID 0
#endif

extern int pt_main_scale(int x); /* exported by the main module */

int side_data = 1000 + SIDE_ID;

int side_fn(int x) { return x * (SIDE_ID + 2) + side_data; }

static int helper(int x) { return x + 100 * SIDE_ID; }

typedef int (*fp_t)(int);
fp_t side_get_fp(void) { return helper; }

int side_call_main(int x) { return pt_main_scale(x) + SIDE_ID; }
