/* Out-of-bounds stores: `oob LIB side` dlopens LIB (libpoke.so) and has its code store past
 * the memory's end; `oob LIB main` dlopens it too, then stores there itself. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: oob LIB side|main\n");
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    void (*poke)(volatile char *, char) = (void (*)(volatile char *, char))dlsym(lib, "poke");
    volatile char *past_the_end = (volatile char *)0xFFFFFFF0u;
    printf("storing past the end from the %s module\n", argv[2]);
    fflush(stdout);
    if (strcmp(argv[2], "side") == 0)
        poke(past_the_end, 1);
    else
        *past_the_end = 1;
    printf("not reached\n");
    return 0;
}
