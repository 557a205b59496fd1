#ifndef SVC_DB_H
#define SVC_DB_H

/*
 * SQL access for the services: one API, two back ends.
 *
 *   - MariaDB/MySQL (production): libmariadb, binary protocol, prepared statements.
 *   - SQLite (single-node installs and unit tests): a file in the data directory, WAL mode.
 *
 * Shape of use:
 *
 *     struct svc_db *db = NULL;
 *     char err[256];
 *     if (svc_db_create(&db, dsn, data_dir, NULL, err, sizeof(err)) != SVC_OK) {
 *         fprintf(stderr, "DB: %s\n", err);
 *         return EX_CONFIG;
 *     }
 *     if (svc_db_migrate(db, auth_migrations, n) != SVC_OK) ...
 *
 *     struct svc_db_conn *conn = NULL;              (in a request handler)
 *     if ((rc = svc_db_conn_get(db, &conn, -1)) != SVC_OK) return rc;
 *     struct svc_db_param p[] = {SVC_DB_TEXT(name), SVC_DB_I64(user_id)};
 *     rc = svc_db_exec(conn, "UPDATE chats SET title = ? WHERE owner = ?", p, 2, NULL, NULL);
 *     svc_db_conn_put(db, &conn);
 *
 * Only prepared statements are used: user data travels in parameters, never in SQL text. Both
 * back ends take `?` placeholders. Statements are cached per connection, keyed by the SQL text,
 * so pass constant SQL strings (not text built at run time) to benefit from the cache.
 *
 * Threading: `struct svc_db` (the pool) is thread-safe. A `struct svc_db_conn` is used by one
 * thread at a time: borrow it with svc_db_conn_get(), give it back with svc_db_conn_put(). It may
 * be handed between threads as long as uses do not overlap. MariaDB needs per-thread cleanup: a
 * thread that used a connection should call svc_db_thread_end() before it exits.
 *
 * Errors are the SVC_E* codes of svc/err.h; see docs/db.md for the mapping from driver errors.
 * A statement that fails logs the driver's text (never parameter values) itself, at debug level
 * for the outcomes a caller handles (SVC_EEXIST, SVC_ECONFLICT) and at warning level for the
 * others, so callers only return or map the code (docs/decisions.md 44).
 */

#include <stddef.h>
#include <stdint.h>

#include "svc/err.h"

struct svc_db;
struct svc_db_conn;
struct svc_db_rows;

/* ---- limits ------------------------------------------------------------------------------- */

#define SVC_DB_SQL_MAX (64 * 1024)                 /* bytes of SQL text in one statement */
#define SVC_DB_PARAMS_MAX 1024                     /* parameters in one statement */
#define SVC_DB_PARAM_BYTES_MAX (16 * 1024 * 1024)  /* bytes of one text or blob parameter */
#define SVC_DB_ROWS_MAX 100000                     /* rows in one buffered result */
#define SVC_DB_RESULT_BYTES_MAX (64 * 1024 * 1024) /* bytes of one buffered result */
#define SVC_DB_COLS_MAX 256                        /* columns in one result */
#define SVC_DB_POOL_MAX 256                        /* connections in one pool */
#define SVC_DB_STMT_CACHE_MAX 128                  /* cached prepared statements per connection */
#define SVC_DB_TX_ATTEMPTS 5                       /* attempts of svc_db_tx_run() */
#define SVC_DB_COMPONENT_MAX 64                    /* bytes of a migration component name */

/* ---- opening ------------------------------------------------------------------------------ */

enum svc_db_dialect {
    SVC_DB_SQLITE = 1,
    SVC_DB_MYSQL = 2, /* MariaDB or MySQL */
};

/*
 * Options of svc_db_create(). Zero in any field means "the default", so `{0}` is valid.
 * Times are milliseconds; MariaDB takes its timeouts in whole seconds, rounded up.
 */
struct svc_db_opts {
    unsigned pool_size;          /* max connections: default 8 (MySQL), 4 (SQLite), 1 (:memory:) */
    unsigned acquire_timeout_ms; /* wait of svc_db_conn_get(timeout_ms < 0): default 5000 */
    unsigned connect_timeout_ms; /* MySQL connect: default 5000; DSN `timeout=` wins */
    unsigned io_timeout_ms;      /* MySQL read and write: default 60000; DSN readTimeout= ... */
    unsigned busy_timeout_ms;    /* SQLite busy_timeout: default 5000 */
    unsigned lock_wait_ms;       /* MySQL innodb_lock_wait_timeout: default 10000 */
    unsigned max_result_rows;    /* per query: default and cap SVC_DB_ROWS_MAX */
    unsigned max_result_bytes;   /* per query: default and cap SVC_DB_RESULT_BYTES_MAX */
};

/*
 * Creates a database handle (a connection pool) for `dsn`, with options (NULL = all defaults):
 *
 *   NULL or ""                                   SQLite file <data_dir>/chatweb.db
 *   sqlite:///abs/path.db   sqlite:/abs/path.db  SQLite file at an absolute path
 *   sqlite:rel.db                                SQLite file relative to data_dir (else the cwd)
 *   sqlite::memory:                              private in-memory SQLite (pool size forced to 1)
 *   mysql://user:pass@host[:port]/db[?opts]      MariaDB; user and password are %-decoded;
 *   mariadb://...                                host may be [v6addr] or unix(/path/to.sock)
 *   user:pass@tcp(host:port)/db[?opts]           go-sql-driver form; user:pass taken verbatim
 *   user:pass@unix(/path/to.sock)/db[?opts]      (the password ends at the last '@')
 *
 * Options (both MySQL forms): charset (must include utf8mb4 or utf8), collation (utf8mb4_*),
 * parseTime, loc, clientFoundRows=true, allowNativePasswords, interpolateParams (accepted and
 * ignored: go-sql-driver knobs), timeout, readTimeout, writeTimeout (go durations such as 5s,
 * 500ms, 1m30s), tls (false; true = encrypted and verified against the system CAs;
 * skip-verify = encrypted, any certificate), socket (/path). Any other option is an error.
 * The data directory is created (mode 0750, with parents) when an SQLite file is placed in it.
 * One connection is opened at once so a bad DSN, password or path fails here.
 *
 * On success *out owns the handle: destroy it with svc_db_destroy(). On failure *out is NULL and
 * the reason, fit to print after "DB: ", is written to err (when err != NULL and errlen > 0;
 * "" after a success). The message never contains the password.
 *
 * Returns 0, SVC_EINVAL (malformed DSN), SVC_EUNAVAIL (cannot connect / open the file),
 * SVC_EIO (could not configure it), SVC_ENOMEM or SVC_EINTERNAL (driver initialisation).
 * Thread-safe; does mysql_library_init() once per process (pthread_once).
 */
SVC_MUST_CHECK int svc_db_create(struct svc_db **out, const char *dsn, const char *data_dir,
                                 const struct svc_db_opts *opts, char *err, size_t errlen);

/*
 * Closes every pooled connection and frees the handle; sets *db to NULL. Accepts NULL and
 * *db == NULL. All borrowed connections must have been put back first (a connection still out
 * is a bug: it is reported with SVC_LOG_ERR and leaked rather than freed under its user).
 * Not thread-safe with respect to other calls on the same handle.
 */
void svc_db_destroy(struct svc_db **db);

/*
 * Writes a description of the handle for start-up logs, with the password masked, e.g.
 * "mysql://app:***@10.0.0.5:3306/chat (pool 8)" or "sqlite:/data/chatweb.db (pool 4, wal)".
 * Always NUL-terminates buf when len > 0 (truncating if needed). Thread-safe.
 */
void svc_db_describe(const struct svc_db *db, char *buf, size_t len);

/* SVC_DB_SQLITE or SVC_DB_MYSQL, to pick dialect-specific SQL. Thread-safe. */
enum svc_db_dialect svc_db_dialect(const struct svc_db *db);

/*
 * Checks that the database answers (SELECT 1 on a pooled connection, reconnecting a MariaDB
 * connection that went stale), for /readyz. Waits at most 1 s for a free connection.
 * Returns 0, SVC_ETIMEDOUT (pool busy), SVC_EUNAVAIL or SVC_EIO. Thread-safe.
 */
SVC_MUST_CHECK int svc_db_ping(struct svc_db *db);

/*
 * Per-thread cleanup for the MariaDB client library (mysql_thread_end). Call it in every thread
 * that used a connection, just before the thread exits (for the HTTP server's pool threads: in a thread-exit hook).
 * Harmless to call from any thread, also when only SQLite is used.
 */
void svc_db_thread_end(void);

/*
 * Process-wide cleanup (mysql_library_end). Optional; call once at exit after every handle was
 * destroyed, e.g. to keep leak checkers quiet. No svc_db call may follow it.
 */
void svc_db_teardown(void);

/* ---- connections -------------------------------------------------------------------------- */

/*
 * Borrows a connection from the pool, opening a new one when none is idle and the pool is not
 * full, else waiting for one to be put back. timeout_ms: 0 = do not wait, > 0 = wait at most
 * that long, < 0 = the pool's acquire_timeout_ms.
 *
 * On success *conn is the caller's until svc_db_conn_put(); on failure *conn is NULL.
 * Returns 0, SVC_ETIMEDOUT (pool exhausted), SVC_EUNAVAIL (a new connection could not be
 * opened), SVC_ENOMEM, SVC_EINVAL. Thread-safe.
 */
SVC_MUST_CHECK int svc_db_conn_get(struct svc_db *db, struct svc_db_conn **conn, int timeout_ms);

/*
 * Gives a connection back and sets *conn to NULL. Accepts NULL and *conn == NULL. A connection
 * still inside a transaction is rolled back first (and that is logged as a bug). Thread-safe.
 */
void svc_db_conn_put(struct svc_db *db, struct svc_db_conn **conn);

/* The dialect of the handle the connection belongs to. */
enum svc_db_dialect svc_db_conn_dialect(const struct svc_db_conn *conn);

/* ---- parameters --------------------------------------------------------------------------- */

enum svc_db_type {
    SVC_DB_T_NULL = 0,
    SVC_DB_T_I64 = 1,
    SVC_DB_T_TEXT = 2, /* UTF-8 bytes, length in len; need not be NUL-terminated */
    SVC_DB_T_BLOB = 3, /* raw bytes, may contain NUL */
};

/*
 * One bound parameter. The pointed-to bytes are borrowed for the duration of the call only.
 * Build them with the helpers below rather than by hand.
 */
struct svc_db_param {
    int type; /* enum svc_db_type */
    int64_t i64;
    const void *ptr; /* TEXT and BLOB; may be NULL when len == 0 */
    size_t len;
};

static inline struct svc_db_param svc_db_param_null(void)
{
    struct svc_db_param p = {SVC_DB_T_NULL, 0, NULL, 0};
    return p;
}

static inline struct svc_db_param svc_db_param_i64(int64_t v)
{
    struct svc_db_param p = {SVC_DB_T_I64, v, NULL, 0};
    return p;
}

/* text of len bytes; s == NULL gives SQL NULL. */
static inline struct svc_db_param svc_db_param_textn(const char *s, size_t len)
{
    struct svc_db_param p = {SVC_DB_T_TEXT, 0, s, len};
    if (s == NULL)
        p.type = SVC_DB_T_NULL, p.len = 0;
    return p;
}

/* NUL-terminated text; s == NULL gives SQL NULL. */
static inline struct svc_db_param svc_db_param_text(const char *s)
{
    size_t len = 0;
    if (s != NULL)
        while (s[len] != '\0')
            len++;
    return svc_db_param_textn(s, len);
}

/* bytes; p == NULL with len == 0 gives an empty blob (not NULL). */
static inline struct svc_db_param svc_db_param_blob(const void *ptr, size_t len)
{
    struct svc_db_param p = {SVC_DB_T_BLOB, 0, ptr, len};
    return p;
}

#define SVC_DB_NULL svc_db_param_null()
#define SVC_DB_I64(x) svc_db_param_i64((int64_t)(x))
#define SVC_DB_TEXT(s) svc_db_param_text(s)
#define SVC_DB_TEXTN(s, n) svc_db_param_textn((s), (n))
#define SVC_DB_BLOB(p, n) svc_db_param_blob((p), (n))
#define SVC_DB_BOOL(b) svc_db_param_i64((b) ? 1 : 0)

/* ---- statements --------------------------------------------------------------------------- */

/*
 * Runs one statement (INSERT, UPDATE, DELETE, DDL; a SELECT's rows are read and discarded).
 * sql holds exactly one statement with `?` placeholders; nparams must equal their number.
 *
 * affected_rows (may be NULL) receives the rows *matched* by an UPDATE's WHERE clause, also
 * those whose values did not change: SQLite counts that way and MariaDB connections are opened
 * with CLIENT_FOUND_ROWS, so `UPDATE ... SET bal = bal - ? WHERE id = ? AND bal >= ?` gives 1
 * when the row qualified and 0 when it did not, on both back ends. For INSERT/DELETE it is the
 * rows inserted/deleted. last_insert_id (may be NULL) receives the AUTO_INCREMENT / rowid of an
 * INSERT, 0 for other statements.
 *
 * Returns 0, SVC_EEXIST (unique or primary key violation), SVC_ECONFLICT (deadlock, lock wait
 * timeout, SQLITE_BUSY: retry the transaction), SVC_EUNAVAIL (connection lost; outside a
 * transaction the next call reconnects), SVC_ETOOLARGE (a value too long for its column),
 * SVC_EINVAL (bad arguments, placeholder count mismatch, more than one statement), SVC_ENOMEM,
 * SVC_EIO (anything else: the driver's text is logged).
 * A MariaDB connection that was found broken before the statement was sent is reconnected
 * first (outside transactions only); a statement that failed after it was sent is not retried,
 * because it may have been applied.
 */
SVC_MUST_CHECK int svc_db_exec(struct svc_db_conn *conn, const char *sql,
                               const struct svc_db_param *params, size_t nparams,
                               uint64_t *affected_rows, int64_t *last_insert_id);

/*
 * Runs one statement that returns rows and buffers the whole result. Outside a transaction a
 * query that lost its MariaDB connection is retried once on a fresh one.
 *
 * On success *rows is owned by the caller: free it with svc_db_rows_destroy(). It does not
 * depend on the connection, which can be put back at once. On failure *rows is NULL.
 * Returns what svc_db_exec() returns, plus SVC_ETOOLARGE when the result passes
 * max_result_rows / max_result_bytes (the rest of it is discarded; the connection stays usable).
 */
SVC_MUST_CHECK int svc_db_query(struct svc_db_conn *conn, const char *sql,
                                const struct svc_db_param *params, size_t nparams,
                                struct svc_db_rows **rows);

/* ---- results ------------------------------------------------------------------------------ */
/*
 * Accessors of a buffered result. Rows and columns count from 0. All are thread-safe for
 * concurrent readers. Out-of-range indexes give the value documented for NULL.
 */

size_t svc_db_rows_count(const struct svc_db_rows *rows);
size_t svc_db_rows_columns(const struct svc_db_rows *rows);

/* Column name as the driver reports it (alias if one was given); NULL when out of range. */
const char *svc_db_rows_name(const struct svc_db_rows *rows, size_t c);

/* 1 when the value is SQL NULL (or out of range), else 0. */
int svc_db_rows_is_null(const struct svc_db_rows *rows, size_t r, size_t c);

/*
 * The value as a 64-bit integer: integers as they are, text that is exactly a decimal integer
 * converted; 0 for NULL, for other text and for values out of range.
 */
int64_t svc_db_rows_i64(const struct svc_db_rows *rows, size_t r, size_t c);

/*
 * The value as NUL-terminated text (integers in decimal, floats with %.17g); NULL for SQL NULL.
 * Borrowed from rows: valid until svc_db_rows_destroy(). A blob may contain NULs: use
 * svc_db_rows_len() or svc_db_rows_blob() for it.
 */
const char *svc_db_rows_text(const struct svc_db_rows *rows, size_t r, size_t c);

/* Byte length of the value's text form (without the terminating NUL); 0 for NULL. */
size_t svc_db_rows_len(const struct svc_db_rows *rows, size_t r, size_t c);

/* The value's bytes and their count in *len (may be NULL); NULL (and *len 0) for SQL NULL. */
const void *svc_db_rows_blob(const struct svc_db_rows *rows, size_t r, size_t c, size_t *len);

/* Frees a result and sets *rows to NULL. Accepts NULL and *rows == NULL. */
void svc_db_rows_destroy(struct svc_db_rows **rows);

/* ---- transactions ------------------------------------------------------------------------- */

/*
 * Starts a transaction: BEGIN IMMEDIATE on SQLite (takes the write lock now, so concurrent
 * writers queue on busy_timeout instead of failing when a reader upgrades), START TRANSACTION
 * on MariaDB (REPEATABLE READ; use SELECT ... FOR UPDATE to lock rows you will change).
 * Transactions do not nest. A stale MariaDB connection is reconnected before the BEGIN.
 * Returns 0, SVC_EINVAL (already in one), SVC_ECONFLICT (SQLite write lock not obtained within
 * busy_timeout), SVC_EUNAVAIL, SVC_EIO. Never issue BEGIN/COMMIT/ROLLBACK as SQL text.
 */
SVC_MUST_CHECK int svc_db_begin(struct svc_db_conn *conn);

/*
 * Commits. Whatever it returns, the transaction is over: on SVC_ECONFLICT or SVC_EIO it was
 * rolled back; on SVC_EUNAVAIL the connection died and, in general, the outcome is unknown
 * (svc_db_tx_run() can tell the case where COMMIT was never sent and replays that one).
 * Returns SVC_EINVAL when no transaction is open.
 */
SVC_MUST_CHECK int svc_db_commit(struct svc_db_conn *conn);

/*
 * Rolls back. The transaction is over afterwards in any case. On MariaDB a ROLLBACK that fails,
 * or a dead connection, ends the session instead (which discards the work just as surely) and
 * returns 0; the next statement reconnects. Returns SVC_EINVAL when no transaction is open.
 */
int svc_db_rollback(struct svc_db_conn *conn);

/* 1 between svc_db_begin() and svc_db_commit()/svc_db_rollback(), else 0. */
int svc_db_in_tx(const struct svc_db_conn *conn);

/* Body of a transaction, with the ctx given to svc_db_tx_run / svc_db_tx_group: return 0 to
 * commit, an SVC_E* code to roll back (and return it). */
typedef int (*svc_db_tx_cb)(void *ctx, struct svc_db_conn *conn);

/*
 * Runs fn inside a transaction on conn and commits. When fn, BEGIN or COMMIT fails with
 * SVC_ECONFLICT (deadlock, lock wait timeout, busy), or fn or BEGIN fail with SVC_EUNAVAIL
 * (the work was lost with the connection, so replaying is safe), the transaction is rolled back
 * and run again, up to SVC_DB_TX_ATTEMPTS times in all, with a short randomised back-off.
 * A COMMIT that fails with SVC_EUNAVAIL is not retried (it may have been applied), unless
 * the connection was found dead before COMMIT was sent.
 * fn may therefore run more than once: it must not have effects outside the database, or they
 * must be idempotent. fn must not call begin/commit/rollback itself.
 * Returns 0 or the last error. The connection is never left inside a transaction.
 */
SVC_MUST_CHECK int svc_db_tx_run(struct svc_db_conn *conn, svc_db_tx_cb fn, void *ctx);

/*
 * Group commit: runs fn in a transaction shared with the calls other threads make at the same
 * time, so that one COMMIT (one write of the log, one fsync) serves many small transactions.
 * The calling thread blocks until its fn has been committed or has failed; one of the waiting
 * threads runs the whole group on one pooled connection, each fn inside its own SAVEPOINT.
 * Alone, a call is exactly svc_db_tx_run() on a pooled connection.
 *
 * What fn returns decides: 0 keeps its work; SVC_ENOTFOUND, SVC_EEXIST, SVC_EINVAL or
 * SVC_ETOOLARGE roll back its own work only (ROLLBACK TO SAVEPOINT) and are returned to its
 * caller. Any other error (a conflict, a lost connection, a rule answered as SVC_ECONFLICT), a
 * failed BEGIN, or a COMMIT that failed in a way svc_db_tx_run() would replay, rolls the whole
 * group back and runs each fn again alone through svc_db_tx_run(), with its retries. A COMMIT
 * whose outcome is unknown (SVC_EUNAVAIL) is returned to every caller of the group, as
 * svc_db_tx_run() returns it.
 * fn runs on another thread than the caller's: thread-local state it sets (an error text) must
 * be carried back through ctx. It may run more than once, as with svc_db_tx_run().
 */
SVC_MUST_CHECK int svc_db_tx_group(struct svc_db *db, svc_db_tx_cb fn, void *ctx);

/* How many groups svc_db_tx_group has run, and how many transactions they held in all. */
void svc_db_group_stats(struct svc_db *db, uint64_t *groups, uint64_t *txs);

/* ---- migrations --------------------------------------------------------------------------- */

/*
 * One schema change of one component ("auth", "billing", ...). Versions are positive and,
 * within a component, strictly increasing in the array passed to svc_db_migrate(). The SQL may
 * hold several statements: a statement ends with a ';' that is the last non-blank character of
 * a line (so never end a line with ';' inside a string literal). NULL means nothing to run for
 * that dialect (the version is still recorded).
 */
struct svc_db_migration {
    const char *component;
    int version;
    const char *sql_sqlite;
    const char *sql_mysql;
};

/*
 * Applies, in array order, every migration whose (component, version) is not yet recorded in
 * table schema_migrations(component, version, applied_at), creating that table when needed.
 * Each migration runs in its own transaction together with its row in schema_migrations. On
 * MariaDB, DDL commits implicitly, so a migration that fails half-way leaves its earlier
 * statements applied but the version unrecorded: keep one DDL statement per migration or write
 * them re-runnable (IF NOT EXISTS). Several processes may call this at once: on MariaDB they
 * serialise on GET_LOCK('chatweb_migrate', 30), on SQLite on BEGIN IMMEDIATE.
 *
 * Before applying anything it refuses a database that already holds a version of a component
 * above the last one in the array (a newer release migrated it): SVC_ECONFLICT, logged, nothing
 * applied. A service therefore refuses to start on a schema newer than it knows.
 *
 * Returns 0, SVC_EINVAL (bad array: empty component, version <= 0, versions out of order),
 * SVC_ECONFLICT (the database is newer), SVC_ETIMEDOUT (lock not obtained), or the error of the
 * failing statement (already logged with component, version and driver text). Thread-safe.
 */
SVC_MUST_CHECK int svc_db_migrate(struct svc_db *db, const struct svc_db_migration *migrations,
                                  size_t n);

#endif
