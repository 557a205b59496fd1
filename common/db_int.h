#ifndef SVC_DB_INT_H
#define SVC_DB_INT_H

/*
 * Internals of svc/db.h shared by db.c (pool, DSN, statement cache, results, migrations) and
 * the back ends db_sqlite.c and db_mysql.c. Not for services: include svc/db.h instead.
 *
 * "Embed the base": each back end's connection struct starts with a `struct svc_db_conn base`
 * and is reached from it with a cast; `struct svc_db` carries the back end's vtable.
 */

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "svc/db.h"

#define SVC__DB_ERR_MAX 512
#define SVC__DB_PATH_MAX 1024
#define SVC__DB_NAME_MAX 128
#define SVC__DB_PASS_MAX 256
#define SVC__DB_HOST_MAX 256

/* ---- DSN ---------------------------------------------------------------------------------- */

enum svc__db_tls {
    SVC__DB_TLS_OFF = 0,
    SVC__DB_TLS_VERIFY = 1,      /* tls=true: encrypted, server certificate verified */
    SVC__DB_TLS_SKIP_VERIFY = 2, /* tls=skip-verify: encrypted, any certificate */
};

/* A parsed DSN. Holds the password: never log it, describe it with svc__db_dsn_describe(). */
struct svc__db_dsn {
    int dialect; /* enum svc_db_dialect */

    /* SQLite */
    char path[SVC__DB_PATH_MAX]; /* file, or ":memory:" */
    int memory;
    int use_data_dir; /* path is inside data_dir, which is created on open */
    char data_dir[SVC__DB_PATH_MAX];

    /* MySQL */
    char user[SVC__DB_NAME_MAX];
    char pass[SVC__DB_PASS_MAX];
    char host[SVC__DB_HOST_MAX]; /* "" when socket is used */
    unsigned port;
    char socket[SVC__DB_PATH_MAX]; /* "" for TCP */
    char dbname[SVC__DB_NAME_MAX];
    unsigned connect_timeout_ms; /* 0 = not given in the DSN */
    unsigned read_timeout_ms;
    unsigned write_timeout_ms;
    int tls; /* enum svc__db_tls */
};

/*
 * Parses dsn (see svc_db_open() for the forms). data_dir may be NULL. On failure writes a
 * message (never containing the password) to err and returns SVC_EINVAL. Thread-safe.
 */
SVC_MUST_CHECK int svc__db_dsn_parse(struct svc__db_dsn *out, const char *dsn, const char *data_dir,
                                     char *err, size_t errlen);

/* The DSN with the password masked ("mysql://app:***@host:3306/db"). Always NUL-terminates. */
void svc__db_dsn_describe(const struct svc__db_dsn *dsn, char *buf, size_t len);

/* ---- connections and the statement cache -------------------------------------------------- */

struct svc__db_stmt_slot {
    char *sql; /* owned copy of the key */
    size_t len;
    uint64_t hash;
    uint64_t used; /* LRU tick */
    void *stmt;    /* back end's statement */
};

struct svc_db_conn {
    struct svc_db *db;
    int in_tx;
    int tx_lost; /* the back end knows the open transaction died unapplied (safe to replay) */
    int borrowed;
    uint64_t tick;
    unsigned nstmt;
    struct svc__db_stmt_slot stmts[SVC_DB_STMT_CACHE_MAX];
    char err[SVC__DB_ERR_MAX];
};

/* Flags of vtable->run(). */
#define SVC__DB_RUN_ROWS 0x1    /* buffer the rows into res->rows */
#define SVC__DB_RUN_NOCACHE 0x2 /* do not cache the prepared statement (one-off DDL) */

struct svc__db_result {
    uint64_t affected;
    int64_t last_id;
    struct svc_db_rows *rows; /* only with SVC__DB_RUN_ROWS; caller owns */
};

struct svc__db_vtable {
    const char *name;
    /* Opens one connection. On failure writes the reason to err (no password). */
    int (*conn_create)(struct svc_db *db, struct svc_db_conn **out, char *err, size_t errlen);
    /* Closes the connection, its cached statements, and frees it. */
    void (*conn_destroy)(struct svc_db_conn *conn);
    /* Frees one back-end statement (statement cache eviction). */
    void (*stmt_finalize)(struct svc_db_conn *conn, void *stmt);
    /* Runs one statement; arguments were validated by db.c. */
    int (*run)(struct svc_db_conn *conn, const char *sql, size_t len,
               const struct svc_db_param *params, size_t nparams, unsigned flags,
               struct svc__db_result *res);
    int (*begin)(struct svc_db_conn *conn);
    int (*commit)(struct svc_db_conn *conn);
    int (*rollback)(struct svc_db_conn *conn);
    /* Whether the back end itself is inside a transaction; NULL when it cannot be asked. */
    int (*in_tx)(struct svc_db_conn *conn);
};

extern const struct svc__db_vtable svc__db_sqlite_vtable;
extern const struct svc__db_vtable svc__db_mysql_vtable;

struct svc_db {
    const struct svc__db_vtable *vt;
    struct svc__db_dsn dsn;
    struct svc_db_opts opts; /* defaults filled in */

    pthread_mutex_t mu;
    pthread_cond_t cv; /* signalled when a connection is put back or a slot frees up */
    struct svc_db_conn *idle[SVC_DB_POOL_MAX];
    unsigned nidle;
    unsigned nopen; /* connections that exist (idle + borrowed + being opened) */

    /* Group commit (db_group.c): calls waiting for the leader, and whether one is running. */
    pthread_mutex_t group_mu;
    pthread_cond_t group_cv;
    struct svc__db_group_item *group_head, *group_tail;
    int group_leader;
    uint64_t groups, group_txs; /* svc_db_group_stats */
};

/* Initialises the MariaDB library once per process. Returns 0 or SVC_EINTERNAL. */
SVC_MUST_CHECK int svc__db_mysql_library_init(void);
void svc__db_mysql_library_end(void);
void svc__db_mysql_thread_end(void);

/* Looks up sql in the connection's cache; NULL when absent. Marks the slot as recently used. */
void *svc__db_stmt_cache_find(struct svc_db_conn *conn, const char *sql, size_t len);

/*
 * Adds a prepared statement; the cache takes ownership of stmt (on failure too: it is finalized
 * and SVC_ENOMEM returned). Evicts the least recently used statement when full.
 */
SVC_MUST_CHECK int svc__db_stmt_cache_add(struct svc_db_conn *conn, const char *sql, size_t len,
                                          void *stmt);

/* Removes stmt from the cache without finalizing it (the caller does). No-op when absent. */
void svc__db_stmt_cache_forget(struct svc_db_conn *conn, void *stmt);

/* Finalizes and forgets every cached statement. */
void svc__db_stmt_cache_clear(struct svc_db_conn *conn);

/*
 * The driver's text for the last failure on this connection, e.g.
 * "mysql 1062 (23000): Duplicate entry '?' for key 'users_email'" or
 * "sqlite 2067: UNIQUE constraint failed: users.email". Values of parameters are never in it
 * (MariaDB messages that quote a value have it replaced by '?'). "" when there was no error.
 * Borrowed: valid until the next call on the connection. Internal: db.c logs it at each failing
 * statement (svc/db.h); tests/unit/test_db.c checks what it holds.
 */
const char *svc__db_last_error(const struct svc_db_conn *conn);

/* Sets conn->err with printf formatting. */
void svc__db_set_err(struct svc_db_conn *conn, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* 1 when the text is empty, blank or only `--` / `#` / C comments, else 0. */
int svc__db_sql_is_blank(const char *sql, size_t len);

/* ---- building results --------------------------------------------------------------------- */

/* A result with ncols columns and no rows, bounded by the handle's limits. */
SVC_MUST_CHECK int svc__db_rows_create(struct svc_db_rows **out, size_t ncols, size_t max_rows,
                                       size_t max_bytes);
SVC_MUST_CHECK int svc__db_rows_set_name(struct svc_db_rows *rows, size_t c, const char *name,
                                         size_t len);
/* Appends a row of NULLs; SVC_ETOOLARGE past the row or byte limit. */
SVC_MUST_CHECK int svc__db_rows_add_row(struct svc_db_rows *rows);
/* Setters of the last row. Values are copied; SVC_ETOOLARGE past the byte limit. */
SVC_MUST_CHECK int svc__db_rows_set_i64(struct svc_db_rows *rows, size_t c, int64_t v);
SVC_MUST_CHECK int svc__db_rows_set_bytes(struct svc_db_rows *rows, size_t c, const void *p,
                                          size_t len);
/*
 * Reserves len bytes (plus a NUL, written here) for column c of the last row and returns where
 * to write them. The pointer is valid until the next setter call.
 */
SVC_MUST_CHECK int svc__db_rows_reserve(struct svc_db_rows *rows, size_t c, size_t len, char **dst);

#endif
