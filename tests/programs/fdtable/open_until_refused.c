/* Opens ARGV[1] until the descriptor table is full, then checks that the program still works
 * as a process out of descriptors does: stdout writes, a new thread starts and joins, and a
 * closed number is handed out again (the lowest free one). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void *report(void *arg) {
    printf("a new thread runs: %s\n", (const char *)arg);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: open_until_refused FILE\n");
        return 2;
    }
    int opened = 0, last = -1, fd;
    while ((fd = open(argv[1], O_RDONLY)) >= 0) {
        opened++;
        last = fd;
    }
    int refused = errno;
    printf("opened %d, then: %s\n", opened, strerror(refused));
    fflush(stdout);
    pthread_t thread;
    int rc = pthread_create(&thread, NULL, report, "yes");
    if (rc == 0)
        pthread_join(thread, NULL);
    else
        printf("pthread_create: %s\n", strerror(rc));
    int middle = last - opened / 2;
    close(middle);
    fd = open(argv[1], O_RDONLY);
    printf("after closing one: %s\n", fd == middle ? "its number again" : "another number");
    return refused == EMFILE && rc == 0 && fd == middle ? 0 : 1;
}
