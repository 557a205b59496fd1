/*
 * SQLite back end of svc/db.h. Each pooled connection is its own sqlite3 handle on the same file
 * (WAL: readers never block the one writer). Connections are opened SQLITE_OPEN_NOMUTEX because
 * the pool already guarantees one thread at a time per handle.
 */

#include "db_int.h"

#include <fcntl.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "svc/loop.h"

struct sqlite_conn {
    struct svc_db_conn base; /* first: the pool sees only this */
    sqlite3 *h;
    int64_t busy_since_us; /* when the current wait for the write lock began (on_busy) */
};

static struct sqlite_conn *sq(struct svc_db_conn *c)
{
    return (struct sqlite_conn *)c;
}

/* Maps an extended result code to SVC_E*. */
static int map_err(int code)
{
    switch (code) {
    case SQLITE_CONSTRAINT_UNIQUE:
    case SQLITE_CONSTRAINT_PRIMARYKEY:
        return SVC_EEXIST;
    case SQLITE_TOOBIG:
        return SVC_ETOOLARGE;
    case SQLITE_NOMEM:
        return SVC_ENOMEM;
    case SQLITE_RANGE:
    case SQLITE_MISUSE:
        return SVC_EINVAL;
    }
    switch (code & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return SVC_ECONFLICT;
    case SQLITE_CANTOPEN:
        return SVC_EUNAVAIL;
    }
    return SVC_EIO;
}

static int fail(struct sqlite_conn *c, int code)
{
    svc__db_set_err(&c->base, "sqlite %d: %s", code, sqlite3_errmsg(c->h));
    return map_err(code);
}

static void stmt_finalize(struct svc_db_conn *conn, void *stmt)
{
    (void)conn;
    sqlite3_finalize(stmt);
}

/* Runs a fixed pragma/statement during connection set-up; copies one text result if asked. */
static int setup_stmt(sqlite3 *h, const char *sql, char *out, size_t outlen, char *err,
                      size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(h, sql, -1, &st, NULL);

    if (rc == SQLITE_OK) {
        while ((rc = sqlite3_step(st)) == SQLITE_ROW)
            if (out != NULL && sqlite3_column_text(st, 0) != NULL)
                snprintf(out, outlen, "%s", (const char *)sqlite3_column_text(st, 0));
        if (rc == SQLITE_DONE)
            rc = SQLITE_OK;
    }
    if (rc != SQLITE_OK)
        snprintf(err, errlen, "sqlite: %s: %s", sql, sqlite3_errmsg(h));
    sqlite3_finalize(st);
    return rc == SQLITE_OK ? SVC_OK : map_err(rc);
}

/*
 * Switches the file to WAL. The mode is stored in the file, so usually it is WAL already and
 * only read. Switching needs an exclusive lock and, when several connections race to create
 * the file, fails with SQLITE_BUSY without consulting the busy handler: retry for up to
 * busy_timeout.
 */
static int set_wal(sqlite3 *h, unsigned busy_ms, char *mode, size_t modelen, char *err,
                   size_t errlen)
{
    struct timespec nap = {0, 10 * 1000000L};
    unsigned waited = 0;
    int rc;

    if ((rc = setup_stmt(h, "PRAGMA journal_mode", mode, modelen, err, errlen)) != SVC_OK)
        return rc;
    if (strcmp(mode, "wal") == 0)
        return SVC_OK;
    for (;;) {
        rc = setup_stmt(h, "PRAGMA journal_mode=WAL", mode, modelen, err, errlen);
        if (rc != SVC_ECONFLICT || waited >= busy_ms)
            return rc;
        nanosleep(&nap, NULL);
        waited += 10;
    }
}

/*
 * Waits for another connection's write lock. SQLite's own busy_timeout handler sleeps 1, 2, 5,
 * 10 ... ms, while a write transaction here (billing's Reserve, Settle) holds the lock for tens
 * of microseconds: two concurrent writers made every second request wait a whole millisecond or
 * more. Naps start at 20 us and double up to 1 ms; the total wait stays busy_timeout.
 */
static int on_busy(void *data, int count)
{
    struct sqlite_conn *c = data;
    int64_t now = (int64_t)svc_loop_clock_us(), nap_us = 20;
    struct timespec nap;

    if (count == 0)
        c->busy_since_us = now;
    else if (now - c->busy_since_us >= (int64_t)c->base.db->opts.busy_timeout_ms * 1000)
        return 0; /* give up: the statement fails with SQLITE_BUSY */
    for (int i = 0; i < count && nap_us < 1000; i++)
        nap_us *= 2;
    if (nap_us > 1000)
        nap_us = 1000;
    nap.tv_sec = 0;
    nap.tv_nsec = (long)nap_us * 1000;
    nanosleep(&nap, NULL);
    return 1;
}

static int conn_create(struct svc_db *db, struct svc_db_conn **out, char *err, size_t errlen)
{
    const int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    struct sqlite_conn *c = NULL;
    char mode[32] = "";
    int rc;

    *out = NULL;
    if ((c = calloc(1, sizeof(*c))) == NULL) {
        snprintf(err, errlen, "out of memory");
        return SVC_ENOMEM;
    }
    c->base.db = db;
    /* Created 0600 before SQLite sees it (SQLite would use 0644 less the umask): the file holds
     * password and key hashes. SQLite gives its -wal and -shm files the main file's mode.
     * O_EXCL: only a file that did not exist is opened (and closed) here. Closing a descriptor
     * of a file drops every POSIX lock this process holds on it, those of the pool's open
     * connections too; without their shared lock another process (a replica, the sqlite3
     * shell) took its closing EXCLUSIVE lock, deleted the WAL this process was still writing,
     * and the two went on seeing different files (test_db's test_sqlite_other_process). */
    if (!db->dsn.memory) {
        int fd = open(db->dsn.path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd >= 0)
            close(fd);
    }
    rc = sqlite3_open_v2(db->dsn.path, &c->h, flags, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "cannot open sqlite database %.300s: %s", db->dsn.path,
                 c->h != NULL ? sqlite3_errmsg(c->h) : sqlite3_errstr(rc));
        rc = SVC_EUNAVAIL;
        goto out;
    }
    sqlite3_extended_result_codes(c->h, 1);
    sqlite3_busy_handler(c->h, on_busy, c);
    /* WAL: readers and one writer at a time without blocking each other; NORMAL sync is
     * durable across application crashes and only risks the last commits on power loss. */
    if ((rc = set_wal(c->h, db->opts.busy_timeout_ms, mode, sizeof(mode), err, errlen)) != SVC_OK)
        goto out;
    if (!db->dsn.memory && strcmp(mode, "wal") != 0) {
        snprintf(err, errlen, "sqlite database %.300s refuses WAL mode (journal_mode=%s)",
                 db->dsn.path, mode);
        rc = SVC_EIO;
        goto out;
    }
    if ((rc = setup_stmt(c->h, "PRAGMA synchronous=NORMAL", NULL, 0, err, errlen)) != SVC_OK ||
        (rc = setup_stmt(c->h, "PRAGMA foreign_keys=ON", NULL, 0, err, errlen)) != SVC_OK)
        goto out;
    *out = &c->base;
    c = NULL;
    rc = SVC_OK;
out:
    if (c != NULL) {
        sqlite3_close_v2(c->h);
        free(c);
    }
    return rc;
}

static void conn_destroy(struct svc_db_conn *conn)
{
    struct sqlite_conn *c = sq(conn);

    if (c == NULL)
        return;
    svc__db_stmt_cache_clear(conn);
    sqlite3_close_v2(c->h);
    free(c);
}

static int bind_params(struct sqlite_conn *c, sqlite3_stmt *st, const struct svc_db_param *p,
                       size_t n)
{
    static const char empty[1] = "";
    int want = sqlite3_bind_parameter_count(st);

    if ((size_t)want != n) {
        svc__db_set_err(&c->base, "statement has %d placeholders, %zu parameters given", want, n);
        return SVC_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        int idx = (int)i + 1, rc = SQLITE_OK;
        /* SQLITE_STATIC: the bytes are the caller's and stay valid for this call; bindings are
         * cleared before returning. A NULL pointer would bind SQL NULL, hence `empty`. */
        const void *ptr = p[i].ptr != NULL ? p[i].ptr : empty;
        switch (p[i].type) {
        case SVC_DB_T_NULL:
            rc = sqlite3_bind_null(st, idx);
            break;
        case SVC_DB_T_I64:
            rc = sqlite3_bind_int64(st, idx, p[i].i64);
            break;
        case SVC_DB_T_TEXT:
            rc = sqlite3_bind_text64(st, idx, ptr, p[i].len, SQLITE_STATIC, SQLITE_UTF8);
            break;
        case SVC_DB_T_BLOB:
            rc = sqlite3_bind_blob64(st, idx, ptr, p[i].len, SQLITE_STATIC);
            break;
        }
        if (rc != SQLITE_OK)
            return fail(c, rc);
    }
    return SVC_OK;
}

static int read_row(sqlite3_stmt *st, struct svc_db_rows *rows, int ncols)
{
    int rc = svc__db_rows_add_row(rows);

    for (int i = 0; i < ncols && rc == SVC_OK; i++) {
        switch (sqlite3_column_type(st, i)) {
        case SQLITE_NULL:
            break;
        case SQLITE_INTEGER:
            rc = svc__db_rows_set_i64(rows, (size_t)i, sqlite3_column_int64(st, i));
            break;
        case SQLITE_FLOAT: {
            char tmp[40];
            int n = snprintf(tmp, sizeof(tmp), "%.17g", sqlite3_column_double(st, i));
            rc = svc__db_rows_set_bytes(rows, (size_t)i, tmp, (size_t)n);
            break;
        }
        case SQLITE_BLOB: {
            const void *b = sqlite3_column_blob(st, i);
            rc = svc__db_rows_set_bytes(rows, (size_t)i, b, (size_t)sqlite3_column_bytes(st, i));
            break;
        }
        default: { /* SQLITE_TEXT */
            const unsigned char *t = sqlite3_column_text(st, i);
            rc = svc__db_rows_set_bytes(rows, (size_t)i, t, (size_t)sqlite3_column_bytes(st, i));
            break;
        }
        }
    }
    return rc;
}

static int run(struct svc_db_conn *conn, const char *sql, size_t len,
               const struct svc_db_param *params, size_t nparams, unsigned flags,
               struct svc__db_result *res)
{
    struct sqlite_conn *c = sq(conn);
    const int cache = !(flags & SVC__DB_RUN_NOCACHE);
    sqlite3_stmt *st = NULL;
    struct svc_db_rows *rows = NULL;
    sqlite3_int64 total_before;
    int rc, src;

    st = cache ? svc__db_stmt_cache_find(conn, sql, len) : NULL;
    if (st == NULL) {
        const char *tail = NULL;
        src = sqlite3_prepare_v3(c->h, sql, (int)len, cache ? SQLITE_PREPARE_PERSISTENT : 0, &st,
                                 &tail);
        if (src != SQLITE_OK)
            return fail(c, src);
        if (st == NULL) {
            svc__db_set_err(conn, "empty SQL statement");
            return SVC_EINVAL;
        }
        if (tail != NULL && !svc__db_sql_is_blank(tail, len - (size_t)(tail - sql))) {
            sqlite3_finalize(st);
            svc__db_set_err(conn, "more than one SQL statement in one call");
            return SVC_EINVAL;
        }
        if (cache && (rc = svc__db_stmt_cache_add(conn, sql, len, st)) != SVC_OK) {
            svc__db_set_err(conn, "out of memory");
            return rc; /* the cache finalized st */
        }
    }
    if ((rc = bind_params(c, st, params, nparams)) != SVC_OK)
        goto out;

    if (flags & SVC__DB_RUN_ROWS) {
        int ncols = sqlite3_column_count(st);
        if ((rc = svc__db_rows_create(&rows, (size_t)ncols, conn->db->opts.max_result_rows,
                                      conn->db->opts.max_result_bytes)) != SVC_OK) {
            svc__db_set_err(conn, "result has %d columns (max %d)", ncols, SVC_DB_COLS_MAX);
            goto out;
        }
        for (int i = 0; i < ncols && rc == SVC_OK; i++) {
            const char *name = sqlite3_column_name(st, i);
            if (name == NULL)
                name = "";
            rc = svc__db_rows_set_name(rows, (size_t)i, name, strlen(name));
        }
        if (rc != SVC_OK)
            goto out;
    }

    total_before = sqlite3_total_changes64(c->h);
    /* 0 unless this statement inserts a row (sqlite would report an older insert). */
    sqlite3_set_last_insert_rowid(c->h, 0);
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        if (rows != NULL && (rc = read_row(st, rows, sqlite3_column_count(st))) != SVC_OK) {
            if (rc == SVC_ETOOLARGE)
                svc__db_set_err(conn, "result larger than %zu rows or %zu bytes",
                                (size_t)conn->db->opts.max_result_rows,
                                (size_t)conn->db->opts.max_result_bytes);
            goto out;
        }
    }
    if (src != SQLITE_DONE) {
        rc = fail(c, sqlite3_extended_errcode(c->h));
        goto out;
    }
    /* sqlite3_changes() keeps the count of the last INSERT/UPDATE/DELETE, so it is only this
     * statement's when the total moved. */
    res->affected =
        sqlite3_total_changes64(c->h) != total_before ? (uint64_t)sqlite3_changes64(c->h) : 0;
    res->last_id = sqlite3_last_insert_rowid(c->h);
    res->rows = rows;
    rows = NULL;
    rc = SVC_OK;
out:
    svc_db_rows_destroy(&rows);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (!cache)
        sqlite3_finalize(st);
    return rc;
}

static int simple(struct svc_db_conn *conn, const char *sql)
{
    struct svc__db_result res = {0};

    return run(conn, sql, strlen(sql), NULL, 0, 0, &res);
}

static int begin(struct svc_db_conn *conn)
{
    /* IMMEDIATE takes the write lock now (waiting up to busy_timeout): a DEFERRED transaction
     * that reads first and writes later can fail with SQLITE_BUSY at the upgrade, without the
     * busy handler being able to help. */
    return simple(conn, "BEGIN IMMEDIATE");
}

static int rollback(struct svc_db_conn *conn)
{
    if (sqlite3_get_autocommit(sq(conn)->h))
        return SVC_OK; /* sqlite already rolled back (after SQLITE_FULL, IOERR, BUSY, ...) */
    return simple(conn, "ROLLBACK");
}

static int commit(struct svc_db_conn *conn)
{
    int rc;

    if (sqlite3_get_autocommit(sq(conn)->h)) {
        svc__db_set_err(conn, "sqlite rolled the transaction back after an earlier error");
        return SVC_ECONFLICT;
    }
    if ((rc = simple(conn, "COMMIT")) != SVC_OK) {
        char saved[SVC__DB_ERR_MAX];
        memcpy(saved, conn->err, sizeof(saved));
        (void)rollback(conn);
        memcpy(conn->err, saved, sizeof(saved));
    }
    return rc;
}

static int in_tx(struct svc_db_conn *conn)
{
    return !sqlite3_get_autocommit(sq(conn)->h);
}

const struct svc__db_vtable svc__db_sqlite_vtable = {
    .name = "sqlite",
    .conn_create = conn_create,
    .conn_destroy = conn_destroy,
    .stmt_finalize = stmt_finalize,
    .run = run,
    .begin = begin,
    .commit = commit,
    .rollback = rollback,
    .in_tx = in_tx,
};
