/* A guest that spawns sleeping threads until pthread_create refuses (at most ARGV[1]), then
 * says how many it got and why it stopped, and exits with them still sleeping. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *sleeper(void *arg) {
    (void)arg;
    for (;;)
        sleep(1000);
    return NULL;
}

int main(int argc, char **argv) {
    int most = argc > 1 ? atoi(argv[1]) : 100000;
    int created = 0, rc = 0;
    for (; created < most; created++) {
        pthread_t thread;
        rc = pthread_create(&thread, NULL, sleeper, NULL);
        if (rc != 0)
            break;
    }
    printf("created %d threads, then: %s\n", created, rc ? strerror(rc) : "stopped");
    return 0;
}
