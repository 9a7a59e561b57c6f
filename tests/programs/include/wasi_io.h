/*
 * wasi_io.h - tiny freestanding helpers for guest programs built without a libc.
 *
 * Uses only wasi_snapshot_preview1 imports (fd_write, proc_exit, args_*, environ_*), declared
 * with import_module/import_name so that nothing lands in the `env` namespace. Output is built
 * into a line buffer and written with one fd_write per line, so that lines stay whole.
 * Not thread-safe: print from one thread only.
 */
#ifndef WASMGROUP_WASI_IO_H
#define WASMGROUP_WASI_IO_H

typedef unsigned int io_u32;

/* Helpers are static; not every program uses all of them. */
#define IO_FN static __attribute__((unused))

struct io_ciovec {
    const void *buf;
    io_u32 len;
};

__attribute__((import_module("wasi_snapshot_preview1"), import_name("fd_write")))
int __wasi_fd_write(int fd, const struct io_ciovec *iovs, int iovs_len, io_u32 *nwritten);

__attribute__((import_module("wasi_snapshot_preview1"), import_name("proc_exit"), noreturn))
void __wasi_proc_exit(int code);

__attribute__((import_module("wasi_snapshot_preview1"), import_name("args_sizes_get")))
int __wasi_args_sizes_get(io_u32 *argc, io_u32 *argv_buf_size);

__attribute__((import_module("wasi_snapshot_preview1"), import_name("args_get")))
int __wasi_args_get(char **argv, char *argv_buf);

__attribute__((import_module("wasi_snapshot_preview1"), import_name("environ_sizes_get")))
int __wasi_environ_sizes_get(io_u32 *count, io_u32 *buf_size);

__attribute__((import_module("wasi_snapshot_preview1"), import_name("environ_get")))
int __wasi_environ_get(char **environ, char *environ_buf);

IO_FN io_u32 io_strlen(const char *s) {
    io_u32 n = 0;
    while (s[n]) n++;
    return n;
}

IO_FN int io_streq_prefix(const char *s, const char *prefix) {
    while (*prefix) {
        if (*s++ != *prefix++) return 0;
    }
    return 1;
}

static char io_line_buf[256];
static io_u32 io_line_len;

IO_FN void io_flush(void) {
    io_u32 off = 0;
    while (off < io_line_len) {
        struct io_ciovec iov = {io_line_buf + off, io_line_len - off};
        io_u32 written = 0;
        if (__wasi_fd_write(1, &iov, 1, &written) != 0 || written == 0) break;
        off += written;
    }
    io_line_len = 0;
}

IO_FN void io_putc(char c) {
    if (io_line_len == sizeof io_line_buf) io_flush();
    io_line_buf[io_line_len++] = c;
    if (c == '\n') io_flush();
}

IO_FN void io_puts(const char *s) {
    while (*s) io_putc(*s++);
}

IO_FN void io_putn(const char *s, io_u32 n) {
    for (io_u32 i = 0; i < n; i++) io_putc(s[i]);
}

IO_FN void io_putint(long long v) {
    char tmp[24];
    int n = 0;
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    if (v < 0) io_putc('-');
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    while (n) io_putc(tmp[--n]);
}

/* "name=value\n" */
IO_FN void io_kv(const char *name, long long value) {
    io_puts(name);
    io_putc('=');
    io_putint(value);
    io_putc('\n');
}

/* Copy of the last io_arg()/io_getenv() result (argv and environ themselves go on the stack). */
static char io_value_buf[1024];

IO_FN const char *io_keep(const char *v) {
    io_u32 n = io_strlen(v);
    if (n >= sizeof io_value_buf) return 0;
    for (io_u32 i = 0; i <= n; i++) io_value_buf[i] = v[i];
    return io_value_buf;
}

/* argv[i] (valid until the next io_arg/io_getenv call), or `fallback` when absent. */
IO_FN const char *io_arg(io_u32 i, const char *fallback) {
    io_u32 argc = 0, size = 0;
    if (__wasi_args_sizes_get(&argc, &size) != 0 || i >= argc) return fallback;
    char *argv[argc];
    char buf[size + 1];
    if (__wasi_args_get(argv, buf) != 0) return fallback;
    const char *v = io_keep(argv[i]);
    return v ? v : fallback;
}

/* getenv(name) (valid until the next io_arg/io_getenv call), or 0. */
IO_FN const char *io_getenv(const char *name) {
    io_u32 count = 0, size = 0;
    if (__wasi_environ_sizes_get(&count, &size) != 0 || count == 0) return 0;
    char *envp[count];
    char buf[size + 1];
    if (__wasi_environ_get(envp, buf) != 0) return 0;
    io_u32 n = io_strlen(name);
    for (io_u32 i = 0; i < count; i++) {
        if (io_streq_prefix(envp[i], name) && envp[i][n] == '=') return io_keep(envp[i] + n + 1);
    }
    return 0;
}

#endif
