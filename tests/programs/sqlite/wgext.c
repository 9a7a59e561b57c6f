/*
 * sqlite/wgext.c -> sqlite/libwgext.so (side module) and build/native/sqlite/libwgext.so: a
 * loadable SQLite extension. sqlite3_load_extension("…/libwgext.so") finds the entry point
 * sqlite3_wgext_init by the file name (SQLite strips "lib" and the suffix), through dlsym.
 * Everything it calls in SQLite goes through the sqlite3_api table the loader hands over, so
 * the side module imports no SQLite symbol; it keeps a counter in its own data.
 *   rot13(text)  the text with ASCII letters rotated by 13 (NULL for NULL)
 *   fib(n)       the n-th Fibonacci number, an error for negative n
 *   wg_calls()   how many times rot13/fib ran since the library was loaded
 */
#include "sqlite3ext.h"
SQLITE_EXTENSION_INIT1

static int calls;

static void rot13(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
    (void)argc;
    calls++;
    const unsigned char *in = sqlite3_value_text(argv[0]);
    if (!in) {
        sqlite3_result_null(ctx);
        return;
    }
    int n = sqlite3_value_bytes(argv[0]);
    char *out = sqlite3_malloc(n + 1);
    if (!out) {
        sqlite3_result_error_nomem(ctx);
        return;
    }
    for (int i = 0; i <= n; i++) {
        unsigned char c = in[i];
        if (c >= 'a' && c <= 'z') c = 'a' + (c - 'a' + 13) % 26;
        else if (c >= 'A' && c <= 'Z') c = 'A' + (c - 'A' + 13) % 26;
        out[i] = (char)c;
    }
    sqlite3_result_text(ctx, out, n, sqlite3_free);
}

static void fib(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
    (void)argc;
    calls++;
    sqlite3_int64 n = sqlite3_value_int64(argv[0]);
    if (n < 0) {
        sqlite3_result_error(ctx, "fib: negative argument", -1);
        return;
    }
    sqlite3_int64 a = 0, b = 1;
    for (sqlite3_int64 i = 0; i < n; i++) {
        sqlite3_int64 t = a + b;
        a = b;
        b = t;
    }
    sqlite3_result_int64(ctx, a);
}

static void wg_calls(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
    (void)argc;
    (void)argv;
    sqlite3_result_int(ctx, calls);
}

int sqlite3_wgext_init(sqlite3 *db, char **err, const sqlite3_api_routines *api) {
    (void)err;
    SQLITE_EXTENSION_INIT2(api);
    int flags = SQLITE_UTF8 | SQLITE_INNOCUOUS;
    int rc = sqlite3_create_function(db, "rot13", 1, flags | SQLITE_DETERMINISTIC, 0, rot13, 0, 0);
    if (rc == SQLITE_OK)
        rc = sqlite3_create_function(db, "fib", 1, flags | SQLITE_DETERMINISTIC, 0, fib, 0, 0);
    if (rc == SQLITE_OK) rc = sqlite3_create_function(db, "wg_calls", 0, flags, 0, wg_calls, 0, 0);
    return rc;
}
