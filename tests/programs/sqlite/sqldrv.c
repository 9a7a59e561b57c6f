/*
 * sqlite/sqldrv.c -> sqlite/sqldrv.wasm (wasix-libc main) and build/native/sqlite/sqldrv (host):
 * a small driver over the SQLite amalgamation that scripts/fetch-sources unpacks. The test runs
 * both builds with the same arguments and compares their output line by line.
 *
 *   sqldrv basic DIR          file database DIR/basic.db: schema, a transaction of inserts,
 *                             selects, an update, a constraint and a syntax error, reopen
 *   sqldrv ext DIR LIB        sqlite3_load_extension(LIB) (a side module: dlopen + dlsym of
 *                             sqlite3_wgext_init), its SQL functions, then a missing extension
 *   sqldrv threads DIR N      one connection (serialized mode) used by N threads at once
 *   sqldrv shared DIR N       shared-cache mode: N threads, a connection each, one pager
 *   (DIR ":memory:" for threads/shared: an in-memory database instead, no file descriptors)
 *   sqldrv bench DIR N        scripts/bench-io's workload: N rows inserted in transactions of
 *                             N/20 into DIR/bench.db, then N selects by key; prints the time of
 *                             each phase (CLOCK_MONOTONIC) and a checksum
 *
 * Every line is printed by the main thread, after joins, so the output is deterministic.
 * Exit status 0 when every step did what it should, 1 otherwise (the failing step is printed).
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sqlite3.h"

#define MAX_THREADS 8
#define ROWS_PER_THREAD 40

static int failures;

static void fail(const char *what, sqlite3 *db) {
    printf("FAIL %s: %s\n", what, db ? sqlite3_errmsg(db) : "(no connection)");
    failures++;
}

static int exec(sqlite3 *db, const char *sql) {
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    if (rc != SQLITE_OK) {
        printf("FAIL exec \"%s\": %s\n", sql, err ? err : sqlite3_errstr(rc));
        failures++;
    }
    sqlite3_free(err);
    return rc;
}

static int print_row(void *label, int n, char **values, char **names) {
    printf("%s:", (const char *)label);
    for (int i = 0; i < n; i++) printf(" %s=%s", names[i], values[i] ? values[i] : "NULL");
    printf("\n");
    return 0;
}

static void query(sqlite3 *db, const char *label, const char *sql) {
    char *err = NULL;
    if (sqlite3_exec(db, sql, print_row, (void *)label, &err) != SQLITE_OK) {
        printf("FAIL %s: %s\n", label, err ? err : "?");
        failures++;
    }
    sqlite3_free(err);
}

static sqlite3 *open_db(const char *dir, const char *name, int flags) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    sqlite3 *db = NULL;
    if (!(flags & SQLITE_OPEN_READONLY)) flags |= SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    if (sqlite3_open_v2(path, &db, flags, NULL) != SQLITE_OK) {
        fail("open", db);
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 10000);
    return db;
}

static void remove_db(const char *dir, const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
    snprintf(path, sizeof path, "%s/%s-journal", dir, name);
    unlink(path);
}

/* ---- basic ------------------------------------------------------------------------------- */
static int cmd_basic(const char *dir) {
    remove_db(dir, "basic.db");
    sqlite3 *db = open_db(dir, "basic.db", 0);
    if (!db) return 1;
    printf("sqlite %s\n", sqlite3_libversion());
    exec(db, "CREATE TABLE fruit(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL,"
             " price REAL, qty INTEGER)");
    exec(db, "BEGIN");
    sqlite3_stmt *ins;
    if (sqlite3_prepare_v2(db, "INSERT INTO fruit(name, price, qty) VALUES (?1, ?2, ?3)", -1,
                           &ins, NULL) != SQLITE_OK) {
        fail("prepare insert", db);
        return 1;
    }
    static const char *names[] = {"apple", "banana", "cherry", "date", "elderberry", "fig"};
    for (int i = 0; i < 600; i++) {
        char name[32];
        snprintf(name, sizeof name, "%s-%03d", names[i % 6], i);
        sqlite3_bind_text(ins, 1, name, -1, SQLITE_TRANSIENT);
        sqlite3_bind_double(ins, 2, 0.25 * (i % 17) + 1.0);
        sqlite3_bind_int(ins, 3, (i * 7919) % 101);
        if (sqlite3_step(ins) != SQLITE_DONE) fail("insert", db);
        sqlite3_reset(ins);
    }
    sqlite3_finalize(ins);
    exec(db, "COMMIT");
    query(db, "count", "SELECT count(*) AS n, sum(qty) AS qty, printf('%.2f', sum(price)) AS price"
                       " FROM fruit");
    query(db, "group", "SELECT substr(name, 1, instr(name, '-') - 1) AS kind, count(*) AS n,"
                       " max(qty) AS top FROM fruit GROUP BY kind ORDER BY kind");
    query(db, "top3", "SELECT name, qty FROM fruit ORDER BY qty DESC, name LIMIT 3");
    exec(db, "CREATE INDEX fruit_qty ON fruit(qty)");
    exec(db, "UPDATE fruit SET qty = qty + 1000 WHERE name LIKE 'fig-%'");
    query(db, "updated", "SELECT changes() AS changed, total_changes() AS total");
    /* Failures SQLite must report, and the program goes on. */
    char *err = NULL;
    int rc = sqlite3_exec(db, "INSERT INTO fruit(name) VALUES ('apple-000')", NULL, NULL, &err);
    printf("duplicate: rc=%d %s\n", rc, err ? err : "");
    sqlite3_free(err);
    err = NULL;
    rc = sqlite3_exec(db, "SELEC nonsense", NULL, NULL, &err);
    printf("syntax: rc=%d %s\n", rc, err ? err : "");
    sqlite3_free(err);
    if (sqlite3_close(db) != SQLITE_OK) fail("close", db);
    /* The data is in the file: a second connection sees it. */
    db = open_db(dir, "basic.db", SQLITE_OPEN_READONLY);
    if (!db) return 1;
    query(db, "reopened", "SELECT count(*) AS n, sum(qty) AS qty FROM fruit");
    query(db, "integrity", "PRAGMA integrity_check");
    sqlite3_close(db);
    printf("basic: %s\n", failures ? "FAILED" : "ok");
    return failures != 0;
}

/* ---- ext --------------------------------------------------------------------------------- */
static int cmd_ext(const char *dir, const char *lib) {
    sqlite3 *db = open_db(dir, "ext.db", 0);
    if (!db) return 1;
    sqlite3_enable_load_extension(db, 1);
    char *err = NULL;
    if (sqlite3_load_extension(db, lib, NULL, &err) != SQLITE_OK) {
        printf("FAIL load_extension: %s\n", err ? err : "?");
        sqlite3_free(err);
        sqlite3_close(db);
        return 1;
    }
    printf("loaded extension\n");
    query(db, "rot13", "SELECT rot13('Hello, WebAssembly!') AS r, rot13(rot13('abc')) AS rr");
    query(db, "fib", "SELECT fib(10) AS f10, fib(40) AS f40");
    exec(db, "DROP TABLE IF EXISTS words");
    exec(db, "CREATE TABLE words(w TEXT)");
    exec(db, "INSERT INTO words VALUES ('alpha'), ('bravo'), ('charlie'), (NULL)");
    query(db, "words", "SELECT group_concat(rot13(w), ',') AS g, wg_calls() AS calls FROM words");
    err = NULL;
    int rc = sqlite3_exec(db, "SELECT fib(-1)", NULL, NULL, &err);
    printf("fib(-1): rc=%d %s\n", rc, err ? err : "");
    sqlite3_free(err);
    /* A second connection loads the same library again: one dlopen handle, fresh functions. */
    sqlite3 *db2 = open_db(dir, "ext.db", 0);
    if (db2) {
        sqlite3_enable_load_extension(db2, 1);
        err = NULL;
        if (sqlite3_load_extension(db2, lib, "sqlite3_wgext_init", &err) != SQLITE_OK)
            printf("FAIL second load: %s\n", err ? err : "?"), failures++;
        sqlite3_free(err);
        query(db2, "second", "SELECT rot13('Uryyb') AS r, wg_calls() >= 5 AS shared_counter");
        sqlite3_close(db2);
    }
    /* Failure paths: a library that does not exist, an entry point that does not. */
    err = NULL;
    rc = sqlite3_load_extension(db, "libwg_no_such_ext", NULL, &err);
    printf("missing library: rc=%d %s\n", rc, err ? "error reported" : "NO ERROR");
    sqlite3_free(err);
    err = NULL;
    rc = sqlite3_load_extension(db, lib, "sqlite3_no_such_init", &err);
    printf("missing entry point: rc=%d %s\n", rc,
           err && strstr(err, "sqlite3_no_such_init") ? "named in the error" : "NOT NAMED");
    sqlite3_free(err);
    sqlite3_close(db);
    printf("ext: %s\n", failures ? "FAILED" : "ok");
    return failures != 0;
}

/* ---- threads / shared -------------------------------------------------------------------- */
struct job {
    int id;
    const char *path; /* what the thread opens (shared) */
    sqlite3 *db; /* the shared connection (threads), or NULL: open one (shared) */
    int inserted;
    long long seen;
    char error[256];
};

/* Shared cache: a table lock held by another connection of the cache gives SQLITE_LOCKED,
 * which busy_timeout does not cover: retry, boundedly (a lock never released must not hang). */
static int step_retry(sqlite3_stmt *st) {
    for (int tries = 0;; tries++) {
        int rc = sqlite3_step(st);
        if (((rc & 0xff) != SQLITE_LOCKED && rc != SQLITE_BUSY) || tries == 1000000) return rc;
        sqlite3_reset(st);
        if (tries > 100) usleep(100);
        else sched_yield();
    }
}

static void *worker(void *arg) {
    struct job *j = arg;
    sqlite3 *db = j->db;
    if (!db) {
        if (sqlite3_open_v2(j->path, &db,
                            SQLITE_OPEN_READWRITE | SQLITE_OPEN_SHAREDCACHE | SQLITE_OPEN_URI,
                            NULL)) {
            snprintf(j->error, sizeof j->error, "open: %s", sqlite3_errmsg(db));
            sqlite3_close(db);
            return NULL;
        }
        sqlite3_busy_timeout(db, 10000);
    }
    sqlite3_stmt *ins = NULL, *sel = NULL;
    if (sqlite3_prepare_v2(db, "INSERT INTO log(thread, n, payload) VALUES (?1, ?2, ?3)", -1,
                           &ins, NULL) ||
        sqlite3_prepare_v2(db, "SELECT count(*) FROM log WHERE thread = ?1", -1, &sel, NULL)) {
        snprintf(j->error, sizeof j->error, "prepare: %s", sqlite3_errmsg(db));
        goto out;
    }
    for (int n = 0; n < ROWS_PER_THREAD; n++) {
        char payload[64];
        snprintf(payload, sizeof payload, "thread %d row %d", j->id, n);
        sqlite3_bind_int(ins, 1, j->id);
        sqlite3_bind_int(ins, 2, n);
        sqlite3_bind_text(ins, 3, payload, -1, SQLITE_TRANSIENT);
        int rc = step_retry(ins);
        sqlite3_reset(ins);
        if (rc != SQLITE_DONE) {
            snprintf(j->error, sizeof j->error, "insert %d: %s", n, sqlite3_errmsg(db));
            goto out;
        }
        j->inserted++;
        sqlite3_bind_int(sel, 1, j->id);
        rc = step_retry(sel);
        if (rc == SQLITE_ROW) j->seen = sqlite3_column_int64(sel, 0);
        sqlite3_reset(sel);
        if (rc != SQLITE_ROW) {
            snprintf(j->error, sizeof j->error, "select %d: %s", n, sqlite3_errmsg(db));
            goto out;
        }
    }
out:
    sqlite3_finalize(ins);
    sqlite3_finalize(sel);
    if (!j->db) sqlite3_close(db);
    return NULL;
}

static int cmd_threads(const char *dir, int nthreads, int shared) {
    if (nthreads < 1 || nthreads > MAX_THREADS) {
        printf("FAIL thread count %d (1..%d)\n", nthreads, MAX_THREADS);
        return 1;
    }
    const char *name = shared ? "shared.db" : "threads.db";
    int memory = !strcmp(dir, ":memory:");
    char path[512];
    if (memory) /* shared: one named in-memory database, seen by every connection of the cache */
        snprintf(path, sizeof path, "%s", shared ? "file:wgmem?mode=memory&cache=shared" : dir);
    else
        snprintf(path, sizeof path, "%s/%s", dir, name), remove_db(dir, name);
    if (shared && sqlite3_enable_shared_cache(1) != SQLITE_OK) fail("enable_shared_cache", NULL);
    printf("threadsafe=%d\n", sqlite3_threadsafe());
    /* Serialized mode: one connection, SQLite's own mutex around every call. */
    sqlite3 *db = NULL;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI |
                (shared ? SQLITE_OPEN_SHAREDCACHE : SQLITE_OPEN_FULLMUTEX);
    if (sqlite3_open_v2(path, &db, flags, NULL) != SQLITE_OK) {
        fail("open", db);
        return 1;
    }
    sqlite3_busy_timeout(db, 10000);
    exec(db, "CREATE TABLE log(id INTEGER PRIMARY KEY, thread INTEGER, n INTEGER, payload TEXT)");
    exec(db, "INSERT INTO log(thread, n, payload) VALUES (-1, 0, 'opened by main')");
    pthread_t tids[MAX_THREADS];
    struct job jobs[MAX_THREADS];
    for (int i = 0; i < nthreads; i++) {
        jobs[i] = (struct job){.id = i, .path = path, .db = shared ? NULL : db};
        if (pthread_create(&tids[i], NULL, worker, &jobs[i])) {
            printf("FAIL pthread_create %d\n", i);
            return 1;
        }
    }
    for (int i = 0; i < nthreads; i++) pthread_join(tids[i], NULL);
    for (int i = 0; i < nthreads; i++) {
        if (jobs[i].error[0]) {
            printf("thread %d: FAIL %s\n", i, jobs[i].error);
            failures++;
        } else {
            printf("thread %d: inserted=%d saw=%lld\n", i, jobs[i].inserted, jobs[i].seen);
        }
    }
    query(db, "total", "SELECT count(*) AS n, count(DISTINCT thread) AS threads, sum(n) AS sum_n"
                       " FROM log");
    query(db, "per-thread", "SELECT thread, count(*) AS n, min(n) AS lo, max(n) AS hi FROM log"
                            " GROUP BY thread ORDER BY thread");
    query(db, "integrity", "PRAGMA integrity_check");
    sqlite3_close(db);
    printf("%s: %s\n", shared ? "shared" : "threads", failures ? "FAILED" : "ok");
    return failures != 0;
}

static long long micros_since(const struct timespec *start) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - start->tv_sec) * 1000000LL + (now.tv_nsec - start->tv_nsec) / 1000;
}

static int cmd_bench(const char *dir, int rows) {
    char path[512];
    snprintf(path, sizeof path, "%s/bench.db", dir);
    unlink(path);
    sqlite3 *db = NULL;
    if (sqlite3_open(path, &db) != SQLITE_OK) {
        fail("open", db);
        return 1;
    }
    exec(db, "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)");
    sqlite3_stmt *insert = NULL, *select = NULL;
    sqlite3_prepare_v2(db, "INSERT INTO kv VALUES (?, ?)", -1, &insert, NULL);
    sqlite3_prepare_v2(db, "SELECT length(v) FROM kv WHERE k = ?", -1, &select, NULL);
    int batch = rows / 20 > 0 ? rows / 20 : 1;
    char value[64];
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int i = 0; i < rows; i++) {
        if (i % batch == 0) exec(db, "BEGIN");
        snprintf(value, sizeof value, "value %d of a benchmark row", i * 7919 % rows);
        sqlite3_bind_int(insert, 1, i);
        sqlite3_bind_text(insert, 2, value, -1, SQLITE_TRANSIENT);
        if (sqlite3_step(insert) != SQLITE_DONE) fail("insert", db);
        sqlite3_reset(insert);
        if (i % batch == batch - 1 || i == rows - 1) exec(db, "COMMIT");
    }
    long long insert_us = micros_since(&start);
    long long sum = 0;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int i = 0; i < rows; i++) {
        sqlite3_bind_int(select, 1, i * 31 % rows);
        if (sqlite3_step(select) == SQLITE_ROW) sum += sqlite3_column_int(select, 0);
        sqlite3_reset(select);
    }
    long long select_us = micros_since(&start);
    sqlite3_finalize(insert);
    sqlite3_finalize(select);
    sqlite3_close(db);
    printf("bench: rows=%d insert_us=%lld select_us=%lld sum=%lld\n", rows, insert_us,
           select_us, sum);
    return failures != 0;
}

/* ---- sql: extensions loaded, then statements, every row printed ------------------------ */
static int cmd_sql(const char *dir, const char *extensions, int count, char **statements) {
    sqlite3 *db = open_db(dir, "sql.db", 0);
    if (!db) return 1;
    sqlite3_enable_load_extension(db, 1);
    char list[1024];
    snprintf(list, sizeof list, "%s", extensions);
    for (char *lib = strtok(list, ","); lib && strcmp(lib, "-"); lib = strtok(NULL, ",")) {
        char *err = NULL;
        if (sqlite3_load_extension(db, lib, NULL, &err) != SQLITE_OK) {
            printf("FAIL load_extension %s: %s\n", lib, err ? err : "?");
            failures++;
        }
        sqlite3_free(err);
    }
    for (int i = 0; i < count; i++) {
        char label[16];
        snprintf(label, sizeof label, "%d", i + 1);
        query(db, label, statements[i]);
    }
    sqlite3_close(db);
    return failures != 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 3 && !strcmp(argv[1], "basic")) return cmd_basic(argv[2]);
    if (argc >= 4 && !strcmp(argv[1], "ext")) return cmd_ext(argv[2], argv[3]);
    if (argc >= 4 && !strcmp(argv[1], "threads")) return cmd_threads(argv[2], atoi(argv[3]), 0);
    if (argc >= 4 && !strcmp(argv[1], "shared")) return cmd_threads(argv[2], atoi(argv[3]), 1);
    if (argc >= 4 && !strcmp(argv[1], "bench")) return cmd_bench(argv[2], atoi(argv[3]));
    if (argc >= 4 && !strcmp(argv[1], "sql")) return cmd_sql(argv[2], argv[3], argc - 4, argv + 4);
    fprintf(stderr, "usage: sqldrv basic DIR | ext DIR LIB | threads DIR N | shared DIR N"
                    " | bench DIR N | sql DIR LIB,LIB...|- SQL...\n");
    return 2;
}
