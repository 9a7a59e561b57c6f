/*
 * closures/unlinked.c -> closures/unlinked.wasm: a wasix-libc main that defines its own table
 * (exported, not imported): closures need the table every instance group shares, so
 * closure_allocate/closure_prepare return ENOTSUP (58); call_dynamic and reflect_signature
 * work on the exported table.
 * Expected stdout:
 *   closure_allocate: 58
 *   closure_prepare: 58
 *   call_dynamic: 0 result=42
 *   reflect_signature: 0 args=1 results=1
 */
#include <stdint.h>
#include <stdio.h>
#include <wasi/api_wasix.h>

int answer(int x) { return x + 1; }

int main(void) {
    __wasi_function_pointer_t slot = 0;
    printf("closure_allocate: %d\n", __wasi_closure_allocate(&slot));
    static const uint8_t I32_ONLY[] = {__WASI_WASM_VALUE_TYPE_I32};
    printf("closure_prepare: %d\n",
           __wasi_closure_prepare(1, 1, I32_ONLY, 1, I32_ONLY, 1, NULL));
    int32_t arg = 41, result = 0;
    int err = __wasi_call_dynamic((uint32_t)(uintptr_t)answer, (uint8_t *)&arg, 4,
                                  (uint8_t *)&result, 4, 1);
    printf("call_dynamic: %d result=%d\n", err, result);
    uint8_t types[2];
    __wasi_reflection_result_t r = {0, 0, 0};
    err = __wasi_reflect_signature((uint32_t)(uintptr_t)answer, types, 2, types + 1, 1, &r);
    printf("reflect_signature: %d args=%d results=%d\n", err, r.arguments, r.results);
    return 0;
}
