/* Side module for sjlj_main.c, with its own (hidden) copy of the setjmp runtime, so that its
 * longjmps throw the `__c_longjmp` tag as this module imports it. */
#include <setjmp.h>

/* Recurse through side-module frames, then longjmp to a setjmp in the caller's module. */
__attribute__((noinline)) int side_jump_through(jmp_buf *env, int depth, int value) {
    volatile int here = depth;
    if (depth == 0) {
        longjmp(*env, value);
    }
    return side_jump_through(env, depth - 1, value) + here; /* never returns */
}

/* setjmp here; `jump` (a function of another module) longjmps back to it. */
int side_catch(void (*jump)(jmp_buf *, int), int value) {
    jmp_buf env;
    volatile int calls = 0;
    int got = setjmp(env);
    if (got == 0) {
        calls++;
        jump(&env, value);
        return -1; /* jump returned instead of jumping */
    }
    return got * 10 + calls;
}
