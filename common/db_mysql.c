/*
 * MariaDB/MySQL back end of svc/db.h (MariaDB Connector/C, binary protocol only).
 *
 * Reconnection: the library's own MYSQL_OPT_RECONNECT is off, because it silently drops session
 * state and prepared statements and may replay a statement. Instead, before every statement
 * outside a transaction, the socket is polled without waiting: a server that closed the
 * connection (KILL, wait_timeout, restart) has made it readable, and the connection is then
 * reopened with its statement cache emptied. Inside a transaction a lost connection is an error
 * (SVC_EUNAVAIL): the server has rolled the work back and only the caller can replay it.
 */

#include "db_int.h"

#include <ctype.h>
#include <errmsg.h>
#include <errno.h>
#include <mysql.h>
#include <mysqld_error.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "svc/log.h"

#define COL_SMALL 256 /* inline buffer per string column; longer values use fetch_column */

struct mysql_conn {
    struct svc_db_conn base; /* first: the pool sees only this */
    MYSQL *m;
    int broken; /* the connection must be reopened before the next statement */
};

static struct mysql_conn *my(struct svc_db_conn *c)
{
    return (struct mysql_conn *)c;
}

/* ---- library ------------------------------------------------------------------------------ */

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;
static int lib_ok; /* written once under pthread_once, read with atomics */

static void lib_init(void)
{
    if (mysql_library_init(0, NULL, NULL) == 0)
        __atomic_store_n(&lib_ok, 1, __ATOMIC_RELEASE);
}

int svc__db_mysql_library_init(void)
{
    pthread_once(&lib_once, lib_init);
    return __atomic_load_n(&lib_ok, __ATOMIC_ACQUIRE) ? SVC_OK : SVC_EINTERNAL;
}

void svc__db_mysql_library_end(void)
{
    if (__atomic_exchange_n(&lib_ok, 0, __ATOMIC_ACQ_REL))
        mysql_library_end();
}

void svc__db_mysql_thread_end(void)
{
    if (__atomic_load_n(&lib_ok, __ATOMIC_ACQUIRE))
        mysql_thread_end();
}

/* ---- errors ------------------------------------------------------------------------------- */

/* Errors after which the connection is unusable and must be reopened. */
static int conn_gone(unsigned e)
{
    switch (e) {
    case CR_CONNECTION_ERROR:
    case CR_CONN_HOST_ERROR:
    case CR_SERVER_GONE_ERROR:
    case CR_SERVER_LOST:
    case CR_SERVER_LOST_EXTENDED:
    case CR_COMMANDS_OUT_OF_SYNC:
    case CR_SSL_CONNECTION_ERROR: /* how a dead TLS connection reports itself */
    case ER_CONNECTION_KILLED:
    case ER_SERVER_SHUTDOWN:
    case ER_NET_PACKET_TOO_LARGE: /* the server closes the connection after it */
    case ER_NET_READ_ERROR:
    case ER_NET_READ_INTERRUPTED:
    case ER_NET_ERROR_ON_WRITE:
    case ER_NET_WRITE_INTERRUPTED:
        return 1;
    }
    return 0;
}

static int map_errno(unsigned e)
{
    switch (e) {
    case ER_DUP_ENTRY:
    case ER_DUP_ENTRY_WITH_KEY_NAME:
    case ER_DUP_UNIQUE:
        return SVC_EEXIST;
    case ER_LOCK_DEADLOCK:
    case ER_LOCK_WAIT_TIMEOUT:
    case ER_CHECKREAD: /* "record has changed since last read" (snapshot isolation) */
        return SVC_ECONFLICT;
    case ER_DATA_TOO_LONG:
    case ER_NET_PACKET_TOO_LARGE:
        return SVC_ETOOLARGE;
    case CR_OUT_OF_MEMORY:
        return SVC_ENOMEM;
    case CR_COMMANDS_OUT_OF_SYNC:
        return SVC_EIO;
    case ER_CON_COUNT_ERROR:
    case ER_TOO_MANY_USER_CONNECTIONS:
        return SVC_EUNAVAIL;
    }
    return conn_gone(e) ? SVC_EUNAVAIL : SVC_EIO;
}

/* 1 when the quote at q opens a data value in a server message: "entry 'x'", "value: 'x'". */
static int quotes_value(const char *msg, const char *q)
{
    static const char *const words[] = {"entry", "value", "value:"};
    const char *end = q, *start;

    if (end > msg && end[-1] == ' ')
        end--;
    start = end;
    while (start > msg && (isalpha((unsigned char)start[-1]) || start[-1] == ':'))
        start--;
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if ((size_t)(end - start) == strlen(words[i]) &&
            strncasecmp(start, words[i], (size_t)(end - start)) == 0)
            return 1;
    return 0;
}

/*
 * Copies a server message with quoted data values replaced by '?', so that logs never carry
 * user data ("Duplicate entry 'alice@x' for key 'email'" -> "Duplicate entry '?' for key
 * 'email'"). The value ends at the first later quote followed by " for " or the end.
 */
static void sanitize(char *dst, size_t cap, const char *msg)
{
    size_t o = 0;
    const char *p = msg;

    while (*p != '\0' && o + 4 < cap) {
        if (*p == '\'' && quotes_value(msg, p)) {
            const char *q = p + 1, *close = NULL;
            for (; *q != '\0'; q++)
                if (*q == '\'' && (q[1] == '\0' || strncmp(q + 1, " for ", 5) == 0)) {
                    close = q;
                    break;
                }
            if (close != NULL) {
                memcpy(dst + o, "'?'", 3);
                o += 3;
                p = close + 1;
                continue;
            }
        }
        dst[o++] = *p++;
    }
    dst[o] = '\0';
}

static int record(struct mysql_conn *c, unsigned e, const char *state, const char *msg)
{
    char clean[SVC__DB_ERR_MAX];

    sanitize(clean, sizeof(clean), msg != NULL ? msg : "");
    svc__db_set_err(&c->base, "mysql %u (%s): %s", e, state != NULL ? state : "HY000", clean);
    if (conn_gone(e))
        c->broken = 1;
    return map_errno(e);
}

static int stmt_fail(struct mysql_conn *c, MYSQL_STMT *st)
{
    return record(c, mysql_stmt_errno(st), mysql_stmt_sqlstate(st), mysql_stmt_error(st));
}

static int conn_fail(struct mysql_conn *c)
{
    return record(c, mysql_errno(c->m), mysql_sqlstate(c->m), mysql_error(c->m));
}

/* ---- connecting --------------------------------------------------------------------------- */

static unsigned secs(unsigned ms)
{
    unsigned s = (ms + 999) / 1000;
    return s == 0 ? 1 : s;
}

static int connect_one(struct mysql_conn *c, char *err, size_t errlen)
{
    struct svc_db *db = c->base.db;
    const struct svc__db_dsn *d = &db->dsn;
    unsigned int ct = secs(db->opts.connect_timeout_ms);
    unsigned int rt = secs(d->read_timeout_ms), wt = secs(d->write_timeout_ms);
    unsigned int no_infile = 0;
    my_bool off = 0, on = 1;
    char init[320], where[SVC__DB_PATH_MAX + 512];
    MYSQL *m;

    if ((m = mysql_init(NULL)) == NULL) {
        snprintf(err, errlen, "mysql_init: out of memory");
        return SVC_ENOMEM;
    }
    /* Every session: UTC, strict data checks, InnoDB, and row lock waits well under the read
     * timeout (a lock wait must end as ER_LOCK_WAIT_TIMEOUT, not as a lost connection). */
    snprintf(init, sizeof(init),
             "SET SESSION time_zone = '+00:00', "
             "sql_mode = 'STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION', "
             "default_storage_engine = InnoDB, innodb_lock_wait_timeout = %u",
             secs(db->opts.lock_wait_ms));
    if (mysql_options(m, MYSQL_OPT_CONNECT_TIMEOUT, &ct) != 0 ||
        mysql_options(m, MYSQL_OPT_READ_TIMEOUT, &rt) != 0 ||
        mysql_options(m, MYSQL_OPT_WRITE_TIMEOUT, &wt) != 0 ||
        mysql_options(m, MYSQL_OPT_RECONNECT, &off) != 0 ||
        mysql_options(m, MYSQL_OPT_LOCAL_INFILE, &no_infile) != 0 ||
        mysql_options(m, MYSQL_REPORT_DATA_TRUNCATION, &on) != 0 ||
        mysql_options(m, MYSQL_SET_CHARSET_NAME, "utf8mb4") != 0 ||
        mysql_options(m, MYSQL_INIT_COMMAND, init) != 0) {
        snprintf(err, errlen, "mysql_options failed");
        mysql_close(m);
        return SVC_EIO;
    }
    if (d->tls != SVC__DB_TLS_OFF) {
        my_bool verify = d->tls == SVC__DB_TLS_VERIFY;
        if (mysql_options(m, MYSQL_OPT_SSL_ENFORCE, &on) != 0 ||
            mysql_options(m, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &verify) != 0) {
            snprintf(err, errlen, "mysql_options (tls) failed");
            mysql_close(m);
            return SVC_EIO;
        }
    }
    /* CLIENT_FOUND_ROWS: affected rows of an UPDATE count matched rows, as SQLite does. */
    if (mysql_real_connect(m, d->socket[0] != '\0' ? "localhost" : d->host, d->user, d->pass,
                           d->dbname, d->socket[0] != '\0' ? 0 : d->port,
                           d->socket[0] != '\0' ? d->socket : NULL, CLIENT_FOUND_ROWS) == NULL) {
        char clean[SVC__DB_ERR_MAX];
        svc__db_dsn_describe(d, where, sizeof(where));
        sanitize(clean, sizeof(clean), mysql_error(m));
        snprintf(err, errlen, "cannot connect to %.300s: mysql %u: %s", where, mysql_errno(m),
                 clean);
        mysql_close(m);
        return SVC_EUNAVAIL;
    }
    /* With verification off, this Connector/C treats MYSQL_OPT_SSL_ENFORCE as "try": a server
     * without TLS is accepted in plain text. tls=skip-verify must still mean encrypted. */
    if (d->tls != SVC__DB_TLS_OFF && mysql_get_ssl_cipher(m) == NULL) {
        svc__db_dsn_describe(d, where, sizeof(where));
        snprintf(err, errlen,
                 "cannot connect to %.300s: TLS was asked for but the server did "
                 "not negotiate it",
                 where);
        mysql_close(m);
        return SVC_EUNAVAIL;
    }
    c->m = m;
    c->broken = 0;
    return SVC_OK;
}

static void disconnect(struct mysql_conn *c)
{
    /* mysql_close() first: it detaches the statements, so closing them afterwards only frees
     * memory instead of sending COM_STMT_CLOSE over a possibly dead socket. */
    if (c->m != NULL) {
        mysql_close(c->m);
        c->m = NULL;
    }
    svc__db_stmt_cache_clear(&c->base);
    c->broken = 1;
}

/* 1 when the connection looks usable: no error seen and nothing unsolicited on the socket. */
static int alive(struct mysql_conn *c)
{
    struct pollfd pfd;
    int n;

    if (c->m == NULL || c->broken)
        return 0;
    pfd.fd = (int)mysql_get_socket(c->m);
    if (pfd.fd < 0)
        return 0;
    pfd.events = POLLIN;
    pfd.revents = 0;
    /* Between statements the server sends nothing, so readable means EOF or a KILL notice. */
    n = poll(&pfd, 1, 0);
    return n == 0 || (n < 0 && errno == EINTR);
}

/* Outside a transaction: reopen the connection if it is broken or stale. */
static int ensure(struct mysql_conn *c)
{
    char err[SVC__DB_ERR_MAX], where[SVC__DB_PATH_MAX + 512];
    int rc;

    if (alive(c))
        return SVC_OK;
    disconnect(c);
    if ((rc = connect_one(c, err, sizeof(err))) != SVC_OK) {
        svc__db_set_err(&c->base, "%s", err);
        return rc;
    }
    svc__db_dsn_describe(&c->base.db->dsn, where, sizeof(where));
    SVC_LOG_NOTICE(NULL, "db reconnect", "reconnected to %s", where);
    return SVC_OK;
}

static int conn_create(struct svc_db *db, struct svc_db_conn **out, char *err, size_t errlen)
{
    struct mysql_conn *c;
    int rc;

    *out = NULL;
    if ((c = calloc(1, sizeof(*c))) == NULL) {
        snprintf(err, errlen, "out of memory");
        return SVC_ENOMEM;
    }
    c->base.db = db;
    if ((rc = connect_one(c, err, errlen)) != SVC_OK) {
        free(c);
        return rc;
    }
    *out = &c->base;
    return SVC_OK;
}

static void conn_destroy(struct svc_db_conn *conn)
{
    if (conn == NULL)
        return;
    disconnect(my(conn));
    free(conn);
}

static void stmt_finalize(struct svc_db_conn *conn, void *stmt)
{
    (void)conn;
    mysql_stmt_close(stmt);
}

/* ---- statements --------------------------------------------------------------------------- */

enum { COL_INT, COL_UINT, COL_DOUBLE, COL_STR };

struct col {
    unsigned long len;
    my_bool is_null, error;
    int kind;
    long long i;
    double d;
    char small[COL_SMALL];
};

/* Reads the whole result set of an executed statement into *out. */
static int fetch_rows(struct mysql_conn *c, MYSQL_STMT *st, struct svc_db_rows **out)
{
    struct svc_db *db = c->base.db;
    MYSQL_RES *meta = NULL;
    MYSQL_FIELD *fields;
    MYSQL_BIND *binds = NULL;
    struct col *cols = NULL;
    struct svc_db_rows *rows = NULL;
    unsigned ncols = mysql_stmt_field_count(st);
    int rc;

    *out = NULL;
    if (ncols == 0)
        return svc__db_rows_create(out, 0, db->opts.max_result_rows, db->opts.max_result_bytes);
    if (ncols > SVC_DB_COLS_MAX) {
        svc__db_set_err(&c->base, "result has %u columns (max %d)", ncols, SVC_DB_COLS_MAX);
        rc = SVC_ETOOLARGE;
        goto out;
    }
    if ((meta = mysql_stmt_result_metadata(st)) == NULL) {
        rc = stmt_fail(c, st);
        goto out;
    }
    fields = mysql_fetch_fields(meta);
    binds = calloc(ncols, sizeof(*binds));
    cols = calloc(ncols, sizeof(*cols));
    if (binds == NULL || cols == NULL) {
        rc = SVC_ENOMEM;
        goto out;
    }
    if ((rc = svc__db_rows_create(&rows, ncols, db->opts.max_result_rows,
                                  db->opts.max_result_bytes)) != SVC_OK)
        goto out;
    for (unsigned i = 0; i < ncols; i++) {
        MYSQL_BIND *b = &binds[i];
        const char *name = fields[i].name != NULL ? fields[i].name : "";
        if ((rc = svc__db_rows_set_name(rows, i, name, strlen(name))) != SVC_OK)
            goto out;
        switch (fields[i].type) {
        case MYSQL_TYPE_TINY:
        case MYSQL_TYPE_SHORT:
        case MYSQL_TYPE_INT24:
        case MYSQL_TYPE_LONG:
        case MYSQL_TYPE_LONGLONG:
        case MYSQL_TYPE_YEAR:
            cols[i].kind = (fields[i].flags & UNSIGNED_FLAG) ? COL_UINT : COL_INT;
            b->buffer_type = MYSQL_TYPE_LONGLONG;
            b->buffer = &cols[i].i;
            b->is_unsigned = cols[i].kind == COL_UINT;
            break;
        case MYSQL_TYPE_FLOAT:
        case MYSQL_TYPE_DOUBLE:
            cols[i].kind = COL_DOUBLE;
            b->buffer_type = MYSQL_TYPE_DOUBLE;
            b->buffer = &cols[i].d;
            break;
        default: /* strings, blobs, DECIMAL, dates and times: as text / bytes */
            cols[i].kind = COL_STR;
            b->buffer_type = MYSQL_TYPE_STRING;
            b->buffer = cols[i].small;
            b->buffer_length = sizeof(cols[i].small);
            break;
        }
        b->length = &cols[i].len;
        b->is_null = &cols[i].is_null;
        b->error = &cols[i].error;
    }
    if (mysql_stmt_bind_result(st, binds) != 0) {
        rc = stmt_fail(c, st);
        goto out;
    }
    for (;;) {
        int f = mysql_stmt_fetch(st);
        if (f == MYSQL_NO_DATA)
            break;
        if (f == 1) {
            rc = stmt_fail(c, st);
            goto out;
        }
        if ((rc = svc__db_rows_add_row(rows)) != SVC_OK)
            goto too_large;
        for (unsigned i = 0; i < ncols; i++) {
            struct col *col = &cols[i];
            char tmp[40];
            if (col->is_null)
                continue;
            switch (col->kind) {
            case COL_INT:
                rc = svc__db_rows_set_i64(rows, i, (int64_t)col->i);
                break;
            case COL_UINT:
                if ((unsigned long long)col->i <= (unsigned long long)INT64_MAX) {
                    rc = svc__db_rows_set_i64(rows, i, (int64_t)col->i);
                } else { /* above INT64_MAX: text only */
                    int n = snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)col->i);
                    rc = svc__db_rows_set_bytes(rows, i, tmp, (size_t)n);
                }
                break;
            case COL_DOUBLE: {
                int n = snprintf(tmp, sizeof(tmp), "%.17g", col->d);
                rc = svc__db_rows_set_bytes(rows, i, tmp, (size_t)n);
                break;
            }
            default:
                if (col->len <= sizeof(col->small)) {
                    rc = svc__db_rows_set_bytes(rows, i, col->small, col->len);
                } else {
                    /* Too long for the inline buffer: fetch the column again straight into
                     * the result's storage. */
                    MYSQL_BIND tb;
                    unsigned long got = 0;
                    my_bool tnull = 0, terr = 0;
                    char *dst = NULL;
                    if ((rc = svc__db_rows_reserve(rows, i, col->len, &dst)) != SVC_OK)
                        break;
                    memset(&tb, 0, sizeof(tb));
                    tb.buffer_type = MYSQL_TYPE_STRING;
                    tb.buffer = dst;
                    tb.buffer_length = col->len;
                    tb.length = &got;
                    tb.is_null = &tnull;
                    tb.error = &terr;
                    if (mysql_stmt_fetch_column(st, &tb, i, 0) != 0) {
                        rc = stmt_fail(c, st);
                        goto out;
                    }
                }
                break;
            }
            if (rc != SVC_OK)
                goto too_large;
        }
    }
    *out = rows;
    rows = NULL;
    rc = SVC_OK;
    goto out;

too_large:
    if (rc == SVC_ETOOLARGE)
        svc__db_set_err(&c->base, "result larger than %u rows or %u bytes",
                        db->opts.max_result_rows, db->opts.max_result_bytes);
out:
    if (meta != NULL)
        mysql_free_result(meta);
    free(binds);
    free(cols);
    svc_db_rows_destroy(&rows);
    return rc;
}

/*
 * One attempt at a statement. *sent is set once the execution request has gone to the server:
 * after that point a failure does not say whether the statement took effect.
 */
static int run_once(struct mysql_conn *c, const char *sql, size_t len,
                    const struct svc_db_param *params, size_t nparams, unsigned flags,
                    struct svc__db_result *res, int *sent)
{
    const int cache = !(flags & SVC__DB_RUN_NOCACHE);
    MYSQL_BIND small[16], *pb = small;
    MYSQL_STMT *st;
    unsigned long want;
    int rc;

    *sent = 0;
    st = cache ? svc__db_stmt_cache_find(&c->base, sql, len) : NULL;
    if (st == NULL) {
        if ((st = mysql_stmt_init(c->m)) == NULL) {
            svc__db_set_err(&c->base, "mysql_stmt_init: out of memory");
            return SVC_ENOMEM;
        }
        if (mysql_stmt_prepare(st, sql, len) != 0) {
            rc = stmt_fail(c, st);
            mysql_stmt_close(st);
            return rc;
        }
        if (cache && (rc = svc__db_stmt_cache_add(&c->base, sql, len, st)) != SVC_OK) {
            svc__db_set_err(&c->base, "out of memory");
            return rc; /* the cache closed st */
        }
    }
    want = mysql_stmt_param_count(st);
    if (want != nparams) {
        svc__db_set_err(&c->base, "statement has %lu placeholders, %zu parameters given", want,
                        nparams);
        rc = SVC_EINVAL;
        goto out;
    }
    if (nparams > sizeof(small) / sizeof(small[0]) && (pb = calloc(nparams, sizeof(*pb))) == NULL) {
        svc__db_set_err(&c->base, "out of memory");
        rc = SVC_ENOMEM;
        goto out;
    }
    memset(pb, 0, (nparams > 0 ? nparams : 1) * sizeof(*pb));
    for (size_t i = 0; i < nparams; i++) {
        const struct svc_db_param *p = &params[i];
        switch (p->type) {
        case SVC_DB_T_NULL:
            pb[i].buffer_type = MYSQL_TYPE_NULL;
            break;
        case SVC_DB_T_I64:
            pb[i].buffer_type = MYSQL_TYPE_LONGLONG;
            pb[i].buffer = (void *)&p->i64; /* read only */
            break;
        case SVC_DB_T_TEXT:
        case SVC_DB_T_BLOB:
            pb[i].buffer_type = p->type == SVC_DB_T_TEXT ? MYSQL_TYPE_STRING : MYSQL_TYPE_BLOB;
            pb[i].buffer = (void *)(p->ptr != NULL ? p->ptr : ""); /* read only */
            pb[i].buffer_length = (unsigned long)p->len;
            break;
        }
    }
    if (nparams > 0 && mysql_stmt_bind_param(st, pb) != 0) {
        rc = stmt_fail(c, st);
        goto out;
    }
    *sent = 1;
    if (mysql_stmt_execute(st) != 0) {
        rc = stmt_fail(c, st);
        goto out;
    }
    if (flags & SVC__DB_RUN_ROWS) {
        if ((rc = fetch_rows(c, st, &res->rows)) != SVC_OK) {
            /* Drop the rest of the result set so the connection stays in sync. */
            if (!c->broken && mysql_stmt_reset(st) != 0)
                c->broken = 1;
            goto out;
        }
        res->affected = 0;
    } else if (mysql_stmt_field_count(st) > 0) {
        /* exec() of something that returns rows: discard them. */
        if (mysql_stmt_reset(st) != 0) {
            rc = stmt_fail(c, st);
            goto out;
        }
        res->affected = 0;
    } else {
        res->affected = (uint64_t)mysql_stmt_affected_rows(st);
        res->last_id = (int64_t)mysql_stmt_insert_id(st);
    }
    mysql_stmt_free_result(st);
    rc = SVC_OK;
out:
    if (pb != small)
        free(pb);
    if (!cache)
        mysql_stmt_close(st);
    return rc;
}

static int run(struct svc_db_conn *conn, const char *sql, size_t len,
               const struct svc_db_param *params, size_t nparams, unsigned flags,
               struct svc__db_result *res)
{
    struct mysql_conn *c = my(conn);
    int rc, sent = 0;

    for (int attempt = 0;; attempt++) {
        if (!conn->in_tx) {
            if ((rc = ensure(c)) != SVC_OK)
                return rc;
        } else if (!alive(c)) {
            svc__db_set_err(conn, "connection lost inside a transaction (the server rolled it "
                                  "back)");
            c->broken = 1;
            conn->tx_lost = 1;
            return SVC_EUNAVAIL;
        }
        rc = run_once(c, sql, len, params, nparams, flags, res, &sent);
        /* Retry once on a fresh connection when that cannot apply a statement twice: it never
         * reached execution, or it is a query (reads). Never inside a transaction. */
        if (rc != SVC_EUNAVAIL || !c->broken || conn->in_tx || attempt > 0)
            return rc;
        if (sent && !(flags & SVC__DB_RUN_ROWS))
            return rc;
        svc_db_rows_destroy(&res->rows);
    }
}

/* ---- transactions ------------------------------------------------------------------------- */

static int begin(struct svc_db_conn *conn)
{
    struct mysql_conn *c = my(conn);
    int rc;

    for (int attempt = 0;; attempt++) {
        if ((rc = ensure(c)) != SVC_OK)
            return rc;
        if (mysql_real_query(c->m, "START TRANSACTION", 17) == 0)
            return SVC_OK;
        rc = conn_fail(c);
        if (rc != SVC_EUNAVAIL || attempt > 0)
            return rc;
    }
}

static int commit(struct svc_db_conn *conn)
{
    struct mysql_conn *c = my(conn);
    int rc;

    if (!alive(c)) {
        /* COMMIT was never sent: the server has certainly rolled the work back. */
        svc__db_set_err(conn, "connection lost inside a transaction (the server rolled it back)");
        c->broken = 1;
        conn->tx_lost = 1;
        return SVC_EUNAVAIL;
    }
    if (mysql_commit(c->m) == 0)
        return SVC_OK;
    rc = conn_fail(c);
    if (!c->broken) {
        char saved[SVC__DB_ERR_MAX];
        memcpy(saved, conn->err, sizeof(saved));
        if (mysql_rollback(c->m) != 0)
            c->broken = 1;
        memcpy(conn->err, saved, sizeof(saved));
    }
    return rc;
}

static int rollback(struct svc_db_conn *conn)
{
    struct mysql_conn *c = my(conn);

    if (!alive(c)) {
        c->broken = 1;
        return SVC_OK; /* the server discards the work of a dead session */
    }
    if (mysql_rollback(c->m) == 0)
        return SVC_OK;
    /* Whatever went wrong, ending the session rolls the transaction back for sure. */
    (void)conn_fail(c);
    disconnect(c);
    return SVC_OK;
}

const struct svc__db_vtable svc__db_mysql_vtable = {
    .name = "mysql",
    .conn_create = conn_create,
    .conn_destroy = conn_destroy,
    .stmt_finalize = stmt_finalize,
    .run = run,
    .begin = begin,
    .commit = commit,
    .rollback = rollback,
};
