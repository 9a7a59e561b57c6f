/*
 * pcomp/pcomp.c -> pcomp/pcomp.wasm (wasix-libc main) and build/native/pcomp/pcomp (host): a
 * parallel compressor shaped like pigz. Main writes a deterministic input file, opens it and
 * the output file, then a reader thread reads 64 KiB chunks from the input descriptor, N worker
 * threads run-length-encode them, and a writer thread writes the results, in order, to the
 * output descriptor. Main then reads the output back, decodes it and compares with the input.
 *
 *   pcomp DIR N threads   reader and writer threads use the descriptors main opened
 *   pcomp DIR N main      main reads and writes itself (only the workers are threads)
 *
 * Output (printed by main): sizes, a checksum of the output file, "roundtrip ok", "pcomp: ok".
 * Exit 0 on success, 1 with a "FAIL ..." line otherwise.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK 65536
#define MAX_CHUNKS 64
#define MAX_WORKERS 8
#define INPUT_CHUNKS 24

struct chunk {
    unsigned char *in, *out;
    size_t in_len, out_len;
    int compressed;
};

static struct chunk chunks[MAX_CHUNKS];
static int nchunks = -1; /* known once the reader reached the end */
static int read_upto, next_job, done_upto;
static int in_fd, out_fd;
static char failure[256];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;

static void set_failure(const char *what) {
    pthread_mutex_lock(&lock);
    if (!failure[0]) snprintf(failure, sizeof failure, "%s (%s)", what, strerror(errno));
    nchunks = nchunks < 0 ? read_upto : nchunks; /* stop everyone */
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
}

static uint32_t crc32(const unsigned char *p, size_t n, uint32_t crc) {
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & -(crc & 1));
    }
    return ~crc;
}

/* (count, byte) pairs, count 1..255 */
static size_t rle(const unsigned char *in, size_t n, unsigned char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && j - i < 255 && in[j] == in[i]) j++;
        out[o++] = (unsigned char)(j - i);
        out[o++] = in[i];
        i = j;
    }
    return o;
}

static int read_chunk(int index) {
    struct chunk *c = &chunks[index];
    c->in = malloc(CHUNK);
    size_t got = 0;
    while (got < CHUNK) {
        ssize_t r = read(in_fd, c->in + got, CHUNK - got);
        if (r < 0) {
            set_failure("read error");
            return -1;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    c->in_len = got;
    return got > 0;
}

static int write_all(int fd, const void *buf, size_t n) {
    const unsigned char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int write_chunk(int index) {
    struct chunk *c = &chunks[index];
    uint32_t header[3] = {(uint32_t)c->in_len, (uint32_t)c->out_len, crc32(c->in, c->in_len, 0)};
    if (write_all(out_fd, header, sizeof header) || write_all(out_fd, c->out, c->out_len)) {
        set_failure("write error");
        return -1;
    }
    return 0;
}

static void *reader(void *arg) {
    (void)arg;
    for (int i = 0; i < MAX_CHUNKS; i++) {
        int r = read_chunk(i);
        if (r < 0) return NULL;
        pthread_mutex_lock(&lock);
        if (r == 0) nchunks = i;
        else read_upto = i + 1;
        pthread_cond_broadcast(&changed);
        pthread_mutex_unlock(&lock);
        if (r == 0) return NULL;
    }
    set_failure("input too large");
    return NULL;
}

static void *worker(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&lock);
        while (next_job >= read_upto && (nchunks < 0 || next_job < nchunks))
            pthread_cond_wait(&changed, &lock);
        if (nchunks >= 0 && next_job >= nchunks) {
            pthread_mutex_unlock(&lock);
            return NULL;
        }
        int i = next_job++;
        pthread_mutex_unlock(&lock);
        struct chunk *c = &chunks[i];
        c->out = malloc(2 * c->in_len);
        c->out_len = rle(c->in, c->in_len, c->out);
        pthread_mutex_lock(&lock);
        c->compressed = 1;
        pthread_cond_broadcast(&changed);
        pthread_mutex_unlock(&lock);
    }
}

static void *writer(void *arg) {
    (void)arg;
    for (int i = 0;; i++) {
        pthread_mutex_lock(&lock);
        while (!(nchunks >= 0 && i >= nchunks) && !(i < read_upto && chunks[i].compressed))
            pthread_cond_wait(&changed, &lock);
        int end = nchunks >= 0 && i >= nchunks;
        pthread_mutex_unlock(&lock);
        if (end || write_chunk(i)) return NULL;
        done_upto = i + 1;
    }
}

static int make_input(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return -1;
    unsigned char *buf = malloc(CHUNK);
    uint32_t x = 12345;
    for (int c = 0; c < INPUT_CHUNKS; c++) {
        for (size_t i = 0; i < CHUNK;) { /* runs of pseudo-random length and byte */
            x = x * 1103515245u + 12345u;
            size_t run = 1 + (x >> 16) % 40;
            unsigned char b = (unsigned char)('a' + (x >> 8) % 6);
            while (run-- && i < CHUNK) buf[i++] = b;
        }
        size_t n = c == INPUT_CHUNKS - 1 ? CHUNK / 3 : CHUNK; /* a short last chunk */
        if (write_all(fd, buf, n)) return -1;
    }
    free(buf);
    return close(fd);
}

static int verify(const char *in_path, const char *out_path, size_t *in_size, size_t *out_size,
                  uint32_t *out_crc) {
    FILE *in = fopen(in_path, "rb"), *out = fopen(out_path, "rb");
    if (!in || !out) return -1;
    unsigned char *a = malloc(CHUNK), *enc = malloc(2 * CHUNK), *dec = malloc(CHUNK);
    uint32_t header[3];
    *in_size = *out_size = 0;
    *out_crc = 0;
    while (fread(header, sizeof header, 1, out) == 1) {
        if (header[0] > CHUNK || header[1] > 2 * CHUNK) return -1;
        if (fread(enc, 1, header[1], out) != header[1]) return -1;
        *out_crc = crc32((unsigned char *)header, sizeof header, *out_crc);
        *out_crc = crc32(enc, header[1], *out_crc);
        *out_size += sizeof header + header[1];
        size_t n = 0;
        for (size_t i = 0; i + 1 < header[1]; i += 2)
            for (int k = 0; k < enc[i] && n < CHUNK; k++) dec[n++] = enc[i + 1];
        if (n != header[0] || crc32(dec, n, 0) != header[2]) return -1;
        if (fread(a, 1, n, in) != n || memcmp(a, dec, n)) return -1;
        *in_size += n;
    }
    int rest = fgetc(in);
    fclose(in);
    fclose(out);
    return rest == EOF ? 0 : -1;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 4) {
        fprintf(stderr, "usage: pcomp DIR N threads|main\n");
        return 2;
    }
    int nworkers = atoi(argv[2]), io_threads = !strcmp(argv[3], "threads");
    if (nworkers < 1 || nworkers > MAX_WORKERS) {
        printf("FAIL workers: %d (1..%d)\n", nworkers, MAX_WORKERS);
        return 1;
    }
    char in_path[512], out_path[512];
    snprintf(in_path, sizeof in_path, "%s/input.dat", argv[1]);
    snprintf(out_path, sizeof out_path, "%s/output.rle", argv[1]);
    if (make_input(in_path)) {
        printf("FAIL writing %s: %s\n", in_path, strerror(errno));
        return 1;
    }
    in_fd = open(in_path, O_RDONLY);
    out_fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in_fd < 0 || out_fd < 0) {
        printf("FAIL open: %s\n", strerror(errno));
        return 1;
    }
    pthread_t r, w, workers[MAX_WORKERS];
    if (!io_threads) { /* main reads everything first */
        reader(NULL);
    } else if (pthread_create(&r, NULL, reader, NULL)) {
        printf("FAIL pthread_create reader\n");
        return 1;
    }
    for (int i = 0; i < nworkers; i++)
        if (pthread_create(&workers[i], NULL, worker, NULL)) {
            printf("FAIL pthread_create worker %d\n", i);
            return 1;
        }
    if (io_threads && pthread_create(&w, NULL, writer, NULL)) {
        printf("FAIL pthread_create writer\n");
        return 1;
    }
    if (io_threads) pthread_join(r, NULL);
    for (int i = 0; i < nworkers; i++) pthread_join(workers[i], NULL);
    if (io_threads) pthread_join(w, NULL);
    else writer(NULL);
    close(in_fd);
    if (close(out_fd)) set_failure("close output");
    if (failure[0]) {
        printf("FAIL %s after %d of %d chunks\n", failure, done_upto, nchunks);
        return 1;
    }
    size_t in_size, out_size;
    uint32_t out_crc;
    printf("chunks=%d workers=%d\n", nchunks, nworkers);
    if (verify(in_path, out_path, &in_size, &out_size, &out_crc)) {
        printf("FAIL roundtrip\n");
        return 1;
    }
    printf("input=%zu output=%zu crc=%08x\nroundtrip ok\npcomp: ok\n", in_size, out_size,
           (unsigned)out_crc);
    return 0;
}
