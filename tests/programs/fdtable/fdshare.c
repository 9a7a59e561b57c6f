/* Descriptors shared by the threads of one program: scenarios by name (argv[1]), each printing
 * what it saw. Files are made under the working directory's mapping ("/").
 *   cross     a file opened by main, written by a thread; one opened by a thread, read by main
 *   close     a thread's cached descriptor after main closes it and reopens the number
 *   renumber  dup2 over a number a thread uses: the thread's next write follows it
 *   append    two threads writing lines to one descriptor (shared offset) and one O_APPEND
 *   pipe      a thread blocked reading a pipe while main dlopens, then gets every byte
 *   poll      a thread blocked in poll() on a pipe while main dlopens
 *   pipewrite a thread blocked writing a full pipe while main dlopens, then reads it all
 *   stdin     a thread blocked reading stdin while main dlopens (the test writes after
 *             "dlopened" appears)
 *   churn     threads opening, writing and closing at once: numbers freed by one thread
 *             and taken by another never carry a write to the wrong file
 *   isatty    which of stdin, stdout, stderr is a terminal
 *   fs        directories and names: mkdir, readdir, rename, symlink, readlink, unlink, stat
 */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int shared_fd = -1;
static int pipe_fds[2];
static volatile int thread_opened = -1;

static void *write_hello(void *arg) {
    const char *text = arg;
    ssize_t n = write(shared_fd, text, strlen(text));
    printf("thread write: %zd %s\n", n, n < 0 ? strerror(errno) : "ok");
    thread_opened = open("/by-thread.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (thread_opened >= 0) write(thread_opened, "from thread\n", 12);
    return NULL;
}

static char *slurp(const char *path) {
    static char buf[4096];
    int fd = open(path, O_RDONLY);
    if (fd < 0) return strerror(errno);
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    buf[n < 0 ? 0 : n] = 0;
    return buf;
}

static int cross(void) {
    shared_fd = open("/cross.txt", O_RDWR | O_CREAT | O_TRUNC, 0644);
    pthread_t t;
    pthread_create(&t, NULL, write_hello, "hello from thread\n");
    pthread_join(t, NULL);
    char buf[64] = {0};
    ssize_t n = pread(shared_fd, buf, sizeof buf - 1, 0);
    printf("main pread: %zd %s", n, buf);
    lseek(thread_opened, 0, SEEK_SET);
    n = write(thread_opened, "FROM", 4);
    printf("main write to thread's fd: %zd\n", n);
    close(thread_opened);
    printf("by-thread: %s", slurp("/by-thread.txt"));
    return 0;
}

static pthread_mutex_t step_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t step_cond = PTHREAD_COND_INITIALIZER;
static int step;

static void wait_step(int s) {
    pthread_mutex_lock(&step_lock);
    while (step < s) pthread_cond_wait(&step_cond, &step_lock);
    pthread_mutex_unlock(&step_lock);
}

static void set_step(int s) {
    pthread_mutex_lock(&step_lock);
    step = s;
    pthread_cond_broadcast(&step_cond);
    pthread_mutex_unlock(&step_lock);
}

static void *writer_steps(void *arg) {
    (void)arg;
    write(shared_fd, "one\n", 4); /* caches the descriptor */
    set_step(1);
    wait_step(2); /* main closed or replaced the number */
    ssize_t n = write(shared_fd, "two\n", 4);
    printf("thread second write: %zd %s\n", n, n < 0 ? strerror(errno) : "ok");
    set_step(3);
    wait_step(4); /* main reopened the number */
    n = write(shared_fd, "three\n", 6);
    printf("thread third write: %zd %s\n", n, n < 0 ? strerror(errno) : "ok");
    set_step(5);
    return NULL;
}

static int close_or_renumber(int renumber) {
    shared_fd = open("/a.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pthread_t t;
    pthread_create(&t, NULL, writer_steps, NULL);
    wait_step(1);
    if (renumber) {
        int b = open("/b.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        printf("dup2: %d\n", dup2(b, shared_fd) == shared_fd);
        close(b);
    } else {
        close(shared_fd);
    }
    set_step(2);
    wait_step(3);
    if (!renumber) {
        int again = open("/b.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        printf("reopened same number: %d\n", again == shared_fd);
    }
    set_step(4);
    wait_step(5);
    pthread_join(t, NULL);
    printf("a: %s", slurp("/a.txt"));
    printf("b: %s", slurp("/b.txt"));
    return 0;
}

#define LINES 300
static void *append_lines(void *arg) {
    char line[32];
    for (int i = 0; i < LINES; i++) {
        int n = snprintf(line, sizeof line, "%s %04d\n", (char *)arg, i);
        if (write(shared_fd, line, (size_t)n) != n) printf("short write\n");
    }
    return NULL;
}

static int append(void) {
    for (int mode = 0; mode < 2; mode++) {
        const char *path = mode ? "/appended.txt" : "/shared-offset.txt";
        shared_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | (mode ? O_APPEND : 0), 0644);
        pthread_t t1, t2;
        pthread_create(&t1, NULL, append_lines, "first");
        pthread_create(&t2, NULL, append_lines, "second");
        pthread_join(t1, NULL);
        pthread_join(t2, NULL);
        close(shared_fd);
        struct stat st;
        stat(path, &st);
        printf("%s: %lld bytes\n", path, (long long)st.st_size);
    }
    return 0;
}

static void *read_pipe(void *arg) {
    int fd = *(int *)arg;
    char buf[256];
    size_t total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) break;
        total += (size_t)n;
    }
    printf("reader got %zu bytes\n", total);
    return NULL;
}

static void *poll_pipe(void *arg) {
    struct pollfd p = {.fd = *(int *)arg, .events = POLLIN};
    int r = poll(&p, 1, 10000);
    printf("poll: %d revents_in=%d\n", r, (p.revents & POLLIN) != 0);
    return read_pipe(arg);
}

static void *fill_pipe(void *arg) {
    (void)arg;
    static char block[100000];
    memset(block, 'z', sizeof block);
    ssize_t n = write(pipe_fds[1], block, sizeof block); /* blocks: no one reads yet */
    close(pipe_fds[1]);
    printf("writer wrote %zd bytes\n", n);
    return NULL;
}

static int writer_blocked_while_dlopen(void) {
    if (pipe(pipe_fds)) { printf("pipe: %s\n", strerror(errno)); return 1; }
    pthread_t t;
    pthread_create(&t, NULL, fill_pipe, NULL);
    usleep(300 * 1000); /* the writer is blocked on the full pipe by now */
    void *h = dlopen("libfdplug.so", RTLD_NOW);
    int (*value)(void) = h ? (int (*)(void))dlsym(h, "fdplug_value") : NULL;
    printf("dlopened: %d\n", value ? value() : -1);
    fflush(stdout);
    read_pipe(&pipe_fds[0]);
    pthread_join(t, NULL);
    return 0;
}

#define CHURN_THREADS 4
#define CHURN_ROUNDS 150
static void *churn(void *arg) {
    long me = (long)arg;
    char path[32], line[8];
    snprintf(path, sizeof path, "/churn-%ld", me);
    snprintf(line, sizeof line, "%ld\n", me);
    for (int i = 0; i < CHURN_ROUNDS; i++) {
        /* every thread reuses the same few numbers, freed and taken by the others */
        int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd < 0 || write(fd, line, strlen(line)) != (ssize_t)strlen(line) || close(fd))
            printf("thread %ld round %d: %s\n", me, i, strerror(errno));
    }
    return NULL;
}

static int churn_numbers(void) {
    pthread_t t[CHURN_THREADS];
    for (long i = 0; i < CHURN_THREADS; i++) pthread_create(&t[i], NULL, churn, (void *)i);
    for (int i = 0; i < CHURN_THREADS; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < CHURN_THREADS; i++) {
        char path[32], expected = (char)('0' + i);
        snprintf(path, sizeof path, "/churn-%d", i);
        const char *text = slurp(path);
        size_t lines = 0, foreign = 0;
        for (const char *c = text; *c; c++) {
            if (*c == '\n') lines++;
            else if (*c != expected) foreign++;
        }
        printf("churn-%d: %zu lines, %zu foreign\n", i, lines, foreign);
    }
    return 0;
}

static int blocked_while_dlopen(void *(*body)(void *), int from_stdin) {
    static int read_fd;
    if (from_stdin) {
        read_fd = 0;
    } else {
        if (pipe(pipe_fds)) { printf("pipe: %s\n", strerror(errno)); return 1; }
        read_fd = pipe_fds[0];
    }
    pthread_t t;
    pthread_create(&t, NULL, body, &read_fd);
    usleep(300 * 1000); /* the thread is blocked by now */
    void *h = dlopen("libfdplug.so", RTLD_NOW);
    int (*value)(void) = h ? (int (*)(void))dlsym(h, "fdplug_value") : NULL;
    printf("dlopened: %d\n", value ? value() : -1);
    fflush(stdout);
    if (!from_stdin) {
        char block[1000];
        memset(block, 'x', sizeof block);
        for (int i = 0; i < 10; i++) write(pipe_fds[1], block, sizeof block);
        close(pipe_fds[1]);
    }
    pthread_join(t, NULL);
    return 0;
}

static int fs(void) {
    printf("mkdir: %d\n", mkdir("/d", 0755));
    printf("mkdir again: %s\n", mkdir("/d", 0755) ? strerror(errno) : "ok");
    close(open("/d/one", O_WRONLY | O_CREAT, 0644));
    printf("rename: %d\n", rename("/d/one", "/d/two"));
    printf("symlink: %d\n", symlink("two", "/d/link"));
    char target[64] = {0};
    printf("readlink: %zd %s\n", readlink("/d/link", target, sizeof target - 1), target);
    struct stat st;
    printf("stat link: %d regular=%d\n", stat("/d/link", &st), S_ISREG(st.st_mode));
    printf("lstat link: %d symlink=%d\n", lstat("/d/link", &st), S_ISLNK(st.st_mode));
    DIR *dir = opendir("/d");
    int entries = 0;
    struct dirent *e;
    while (dir && (e = readdir(dir))) entries++;
    if (dir) closedir(dir);
    printf("entries: %d\n", entries);
    printf("escape: %s\n", open("/../../etc/passwd", O_RDONLY) < 0 ? "refused" : "OPENED");
    /* the test plants d-escape, a symlink to a directory outside the mapping */
    printf("symlink escape: %s\n", open("/d-escape/secret", O_RDONLY) < 0 ? strerror(errno)
                                                                          : "OPENED");
    printf("unlink: %d %d\n", unlink("/d/two"), unlink("/d/link"));
    printf("rmdir: %d\n", rmdir("/d"));
    printf("stat gone: %s\n", stat("/d", &st) ? strerror(errno) : "exists");
    printf("bad fd: %s\n", write(4242, "x", 1) < 0 ? strerror(errno) : "wrote");
    return 0;
}

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "";
    if (!strcmp(what, "cross")) return cross();
    if (!strcmp(what, "close")) return close_or_renumber(0);
    if (!strcmp(what, "renumber")) return close_or_renumber(1);
    if (!strcmp(what, "append")) return append();
    if (!strcmp(what, "pipe")) return blocked_while_dlopen(read_pipe, 0);
    if (!strcmp(what, "poll")) return blocked_while_dlopen(poll_pipe, 0);
    if (!strcmp(what, "stdin")) return blocked_while_dlopen(read_pipe, 1);
    if (!strcmp(what, "pipewrite")) return writer_blocked_while_dlopen();
    if (!strcmp(what, "churn")) return churn_numbers();
    if (!strcmp(what, "isatty")) {
        printf("isatty: %d %d %d\n", isatty(0), isatty(1), isatty(2));
        return 0;
    }
    if (!strcmp(what, "fs")) return fs();
    fprintf(stderr, "fdshare: unknown scenario %s\n", what);
    return 2;
}
