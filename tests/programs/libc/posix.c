/*
 * libc/posix.c -> libc/posix.wasm: everyday POSIX calls of a wasix-libc program, which import
 * WASIX functions beyond the dl* and thread ones (thread_parallelism, proc_id, chdir, getcwd,
 * fd_fdflags_*, path_open2) and WASI path calls with absolute paths ("/x" against the "/"
 * preopen). Run with a directory mapped at "/" that holds input.txt ("hello\n") and sub/.
 * Expected stdout:
 *   sleeps: ok
 *   cpus>0: 1
 *   pid>0: 1
 *   read /input.txt: hello
 *   stat /input.txt: 0 size=6
 *   mkdir /made: 0
 *   write /made/new.txt: 5
 *   rename: 0
 *   stat renamed: 0 size=5
 *   unlink: 0
 *   rmdir: 0
 *   access /input.txt: 0
 *   access /missing: -1 ENOENT
 *   chdir /sub: 0
 *   cwd: /sub
 *   relative read: hello
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void read_line(const char *label, const char *path) {
    char buf[64] = "";
    FILE *f = fopen(path, "r");
    if (f) {
        if (!fgets(buf, sizeof buf, f)) buf[0] = 0;
        fclose(f);
    }
    buf[strcspn(buf, "\n")] = 0;
    printf("%s: %s\n", label, f ? buf : strerror(errno));
}

int main(void) {
    struct timespec ts = {0, 1000000};
    int slept = nanosleep(&ts, 0) == 0 && usleep(1000) == 0 && sleep(0) == 0;
    printf("sleeps: %s\n", slept ? "ok" : "failed");
    printf("cpus>0: %d\n", sysconf(_SC_NPROCESSORS_ONLN) > 0);
    printf("pid>0: %d\n", getpid() > 0);
    read_line("read /input.txt", "/input.txt");
    struct stat st;
    int rc = stat("/input.txt", &st);
    printf("stat /input.txt: %d size=%lld\n", rc, (long long)st.st_size);
    printf("mkdir /made: %d\n", mkdir("/made", 0755));
    FILE *f = fopen("/made/new.txt", "w");
    int written = f ? fputs("data\n", f) >= 0 ? 5 : -1 : -1;
    if (f) fclose(f);
    printf("write /made/new.txt: %d\n", written);
    printf("rename: %d\n", rename("/made/new.txt", "/made/renamed.txt"));
    rc = stat("/made/renamed.txt", &st);
    printf("stat renamed: %d size=%lld\n", rc, (long long)st.st_size);
    printf("unlink: %d\n", unlink("/made/renamed.txt"));
    printf("rmdir: %d\n", rmdir("/made"));
    printf("access /input.txt: %d\n", access("/input.txt", R_OK));
    rc = access("/missing", R_OK);
    printf("access /missing: %d %s\n", rc, errno == ENOENT ? "ENOENT" : strerror(errno));
    printf("chdir /sub: %d\n", chdir("/sub"));
    char cwd[64];
    printf("cwd: %s\n", getcwd(cwd, sizeof cwd));
    read_line("relative read", "../input.txt");
    return 0;
}
