/* A parallel compressor (the shape of pigz and friends): main opens the input and the output
 * file; a reader thread reads the input in chunks, N worker threads run-length encode them, a
 * writer thread writes the encoded chunks to the output in order. Every descriptor is opened
 * by main and used by other threads only. Builds natively too: the outputs must be equal.
 *
 *   compress INPUT OUTPUT WORKERS [rle|lz [CHUNK]]
 *       ->  prints "chunks=N in=BYTES out=BYTES sum=CHECKSUM"
 *
 * rle (the default, 4000-byte chunks) is cheap: the threads mostly hand chunks to each other.
 * lz is a greedy LZ77 with hash chains (deflate's matcher without the entropy coder): the
 * workers' compute dominates, as in pigz, so it measures how the threads scale
 * (scripts/bench-scaling).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RLE_CHUNK 4000 /* not a power of two: chunks straddle the guest's and the host's pages */
#define MAX_CHUNK (1 << 20)
#define SLOTS 8
#define MAX_WORKERS 8
#define HASH_BITS 15
#define MAX_CHAIN 48
#define MAX_MATCH 258

struct slot {
    int state; /* 0 free, 1 read (to encode), 2 encoding, 3 encoded (to write) */
    long index;
    size_t in_len, out_len;
    unsigned char *in;  /* CHUNK bytes */
    unsigned char *out; /* 2 * CHUNK + 8 bytes */
};

static size_t chunk = RLE_CHUNK;
static int use_lz;

static struct slot slots[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static int in_fd, out_fd, reading_done;
static long chunks_read, next_to_write;
static uint64_t in_bytes, out_bytes, checksum = 1469598103934665603ull;

static void die(const char *what) {
    fprintf(stderr, "compress: %s: %s\n", what, strerror(errno));
    exit(1);
}

static size_t rle(const unsigned char *in, size_t n, unsigned char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t run = 1;
        while (i + run < n && run < 255 && in[i + run] == in[i]) run++;
        out[o++] = (unsigned char)run;
        out[o++] = in[i];
        i += run;
    }
    return o;
}

static uint32_t hash4(const unsigned char *p) {
    uint32_t v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    return (v * 2654435761u) >> (32 - HASH_BITS);
}

static size_t put_literals(const unsigned char *from, size_t n, unsigned char *out) {
    size_t o = 0;
    while (n > 255) { /* a full literal run with no match after it */
        out[o++] = 255;
        memcpy(out + o, from, 255);
        o += 255;
        out[o++] = 0;
        from += 255;
        n -= 255;
    }
    out[o++] = (unsigned char)n;
    memcpy(out + o, from, n);
    return o + n;
}

/* Tokens: [literal count][literals][match length - 3, 0 for none][distance, 2 bytes]. */
static size_t lz(const unsigned char *in, size_t n, unsigned char *out, int32_t *head,
                 int32_t *prev) {
    for (size_t h = 0; h < (1u << HASH_BITS); h++) head[h] = -1;
    size_t o = 0, literals = 0, i = 0;
    while (i < n) {
        size_t best = 0, dist = 0;
        if (i + 4 <= n) {
            uint32_t h = hash4(in + i);
            int32_t cand = head[h];
            prev[i] = cand;
            head[h] = (int32_t)i;
            for (int depth = 0; cand >= 0 && depth < MAX_CHAIN && i - (size_t)cand <= 65535;
                 depth++, cand = prev[cand]) {
                size_t len = 0;
                while (i + len < n && len < MAX_MATCH && in[cand + len] == in[i + len]) len++;
                if (len > best) {
                    best = len;
                    dist = i - (size_t)cand;
                }
            }
        }
        if (best < 4) {
            i++;
            continue;
        }
        o += put_literals(in + literals, i - literals, out + o);
        out[o++] = (unsigned char)(best - 3);
        out[o++] = (unsigned char)dist;
        out[o++] = (unsigned char)(dist >> 8);
        for (size_t k = i + 1; k < i + best && k + 4 <= n; k++) {
            uint32_t h = hash4(in + k);
            prev[k] = head[h];
            head[h] = (int32_t)k;
        }
        i += best;
        literals = i;
    }
    o += put_literals(in + literals, n - literals, out + o);
    out[o++] = 0;
    return o;
}

static void *reader(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&lock);
        struct slot *s = NULL;
        while (!s) {
            for (int i = 0; i < SLOTS && !s; i++)
                if (slots[i].state == 0) s = &slots[i];
            if (!s) pthread_cond_wait(&changed, &lock);
        }
        pthread_mutex_unlock(&lock);
        size_t got = 0;
        while (got < chunk) {
            ssize_t n = read(in_fd, s->in + got, chunk - got);
            if (n < 0) die("read error");
            if (n == 0) break;
            got += (size_t)n;
        }
        pthread_mutex_lock(&lock);
        if (got == 0) {
            reading_done = 1;
            pthread_cond_broadcast(&changed);
            pthread_mutex_unlock(&lock);
            return NULL;
        }
        s->in_len = got;
        s->index = chunks_read++;
        in_bytes += got;
        s->state = 1;
        pthread_cond_broadcast(&changed);
        pthread_mutex_unlock(&lock);
    }
}

static void *worker(void *arg) {
    (void)arg;
    int32_t *head = NULL, *prev = NULL;
    if (use_lz && (!(head = malloc(sizeof *head << HASH_BITS)) ||
                   !(prev = malloc(sizeof *prev * chunk))))
        die("malloc");
    for (;;) {
        pthread_mutex_lock(&lock);
        struct slot *s = NULL;
        while (!s) {
            for (int i = 0; i < SLOTS && !s; i++)
                if (slots[i].state == 1) s = &slots[i];
            if (!s && reading_done) {
                pthread_mutex_unlock(&lock);
                free(head);
                free(prev);
                return NULL;
            }
            if (!s) pthread_cond_wait(&changed, &lock);
        }
        s->state = 2;
        pthread_mutex_unlock(&lock);
        uint32_t len = (uint32_t)(use_lz ? lz(s->in, s->in_len, s->out + 4, head, prev)
                                         : rle(s->in, s->in_len, s->out + 4));
        memcpy(s->out, &len, 4);
        pthread_mutex_lock(&lock);
        s->out_len = len + 4;
        s->state = 3;
        pthread_cond_broadcast(&changed);
        pthread_mutex_unlock(&lock);
    }
}

static void *writer(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&lock);
        struct slot *s = NULL;
        while (!s) {
            for (int i = 0; i < SLOTS && !s; i++)
                if (slots[i].state == 3 && slots[i].index == next_to_write) s = &slots[i];
            if (!s && reading_done && next_to_write == chunks_read) {
                pthread_mutex_unlock(&lock);
                return NULL;
            }
            if (!s) pthread_cond_wait(&changed, &lock);
        }
        pthread_mutex_unlock(&lock);
        size_t done = 0;
        while (done < s->out_len) {
            ssize_t n = write(out_fd, s->out + done, s->out_len - done);
            if (n < 0) die("write error");
            done += (size_t)n;
        }
        for (size_t i = 0; i < s->out_len; i++) checksum = (checksum ^ s->out[i]) * 1099511628211ull;
        pthread_mutex_lock(&lock);
        out_bytes += s->out_len;
        next_to_write++;
        s->state = 0;
        pthread_cond_broadcast(&changed);
        pthread_mutex_unlock(&lock);
    }
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 6 || (argc > 4 && strcmp(argv[4], "rle") && strcmp(argv[4], "lz"))) {
        fprintf(stderr, "usage: compress INPUT OUTPUT WORKERS [rle|lz [CHUNK]]\n");
        return 2;
    }
    int workers = atoi(argv[3]);
    if (workers < 1 || workers > MAX_WORKERS) workers = 2;
    use_lz = argc > 4 && !strcmp(argv[4], "lz");
    if (argc > 5) chunk = (size_t)atol(argv[5]);
    if (chunk < 1 || chunk > MAX_CHUNK) {
        fprintf(stderr, "compress: CHUNK must be 1..%d\n", MAX_CHUNK);
        return 2;
    }
    for (int i = 0; i < SLOTS; i++)
        if (!(slots[i].in = malloc(chunk)) || !(slots[i].out = malloc(2 * chunk + 8))) die("malloc");
    in_fd = open(argv[1], O_RDONLY);
    if (in_fd < 0) die(argv[1]);
    out_fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out_fd < 0) die(argv[2]);
    pthread_t r, w, ws[MAX_WORKERS];
    if (pthread_create(&r, NULL, reader, NULL) || pthread_create(&w, NULL, writer, NULL))
        die("pthread_create");
    for (int i = 0; i < workers; i++)
        if (pthread_create(&ws[i], NULL, worker, NULL)) die("pthread_create");
    pthread_join(r, NULL);
    for (int i = 0; i < workers; i++) pthread_join(ws[i], NULL);
    pthread_join(w, NULL);
    if (close(out_fd) || close(in_fd)) die("close");
    printf("chunks=%ld in=%llu out=%llu sum=%016llx\n", chunks_read,
           (unsigned long long)in_bytes, (unsigned long long)out_bytes,
           (unsigned long long)checksum);
    return 0;
}
