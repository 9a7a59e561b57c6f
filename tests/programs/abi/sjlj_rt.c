/* The runtime clang's wasm setjmp/longjmp lowering (-mllvm -wasm-enable-sjlj) calls, as
 * wasi-libc's rt.c has it; wasix-libc lacks it. longjmp throws the `__c_longjmp` tag, which
 * every module imports from env: a longjmp thrown by one module is caught by a setjmp in
 * another only if the runtime gives both the same tag. */
#include <stddef.h>
#include <stdint.h>

struct jmp_buf_impl {
    void *func_invocation_id;
    uint32_t label;
    struct arg {
        void *env;
        int val;
    } arg;
};

void __wasm_setjmp(void *env, uint32_t label, void *func_invocation_id) {
    struct jmp_buf_impl *jb = env;
    if (label == 0 || func_invocation_id == NULL) __builtin_trap();
    jb->func_invocation_id = func_invocation_id;
    jb->label = label;
}

uint32_t __wasm_setjmp_test(void *env, void *func_invocation_id) {
    struct jmp_buf_impl *jb = env;
    if (jb->label == 0 || func_invocation_id == NULL) __builtin_trap();
    return jb->func_invocation_id == func_invocation_id ? jb->label : 0;
}

void __wasm_longjmp(void *env, int val) {
    struct jmp_buf_impl *jb = env;
    jb->arg.env = env;
    jb->arg.val = val == 0 ? 1 : val;
    __builtin_wasm_throw(1, &jb->arg); /* 1: the C longjmp tag */
}
