/* A program that imports WASIX process calls (system() pulls in proc_spawn2 and proc_join) but
 * calls them only when asked: `system.wasm` runs without touching them; `system.wasm run`
 * calls system() and popen(), which must fail with an error, not crash the program. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "run") != 0) {
        puts("system: not called");
        return 0;
    }
    errno = 0;
    int status = system("echo from a child");
    printf("system: %d, errno %d (%s)\n", status, errno, strerror(errno));
    errno = 0;
    FILE *pipe = popen("echo from a pipe", "r");
    printf("popen: %s, errno %d (%s)\n", pipe ? "a stream" : "NULL", errno, strerror(errno));
    return 0;
}
