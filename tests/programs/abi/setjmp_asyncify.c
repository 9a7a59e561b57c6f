/* setjmp/longjmp built the default way for wasix-libc: its setjmp calls
 * wasix_32v1.stack_checkpoint, which needs asyncify. wasmgroup must stop the program with a
 * message saying how to build setjmp code instead (see sjlj_main.c for the way that works). */
#include <setjmp.h>
#include <stdio.h>

static jmp_buf env;

int main(void) {
    puts("setjmp_asyncify: before setjmp");
    fflush(stdout);
    if (setjmp(env) == 0) longjmp(env, 1);
    puts("setjmp_asyncify: after longjmp");
    return 0;
}
