/* Billing money rules on SQL: see store.h and docs/billing.md. */
#include "store.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/crypto.h"
#include "svc/db.h"
#include "svc/log.h"
#include "svc/util.h"

#define MS_PER_DAY 86400000LL

/* A LeaseSync's ledger rows go out in multi-row INSERTs of at most this many (ledger_batch), with
 * a cached statement for each count: a sync of up to 64 charges is one INSERT and one outbox row. */
#define LEDGER_BATCH 64

struct billing_store {
    struct svc_db *db;
    const struct billing_prices *prices; /* BILLING_PRICES (borrowed) */
    struct billing_store_opts opts;
    int mysql;
    /* BILLING_PRICES merged with billing_prices (SQL), swapped by billing_store_prices_refresh;
     * NULL until the first load (then `prices` alone applies) */
    pthread_rwlock_t prices_lock;
    struct billing_prices *merged;
    struct billing_prices *sql;   /* the SQL rows alone (which prices are "sql": price_source) */
    int64_t prices_version;       /* of `merged`; -1 before the first load */
    pthread_mutex_t refresh_lock; /* one reload at a time */
    char *ledger_multi_sql[LEDGER_BATCH]; /* [k - 1]: the INSERT of k ledger rows */
};

/* The ratio a model is priced with now (SQL over BILLING_PRICES). Thread-safe. */
static struct billing_ratio price_of(struct billing_store *s, const char *model)
{
    struct billing_ratio r;

    pthread_rwlock_rdlock(&s->prices_lock);
    r = billing_prices_lookup(s->merged ? s->merged : s->prices, model);
    pthread_rwlock_unlock(&s->prices_lock);
    return r;
}

/*
 * The ratio model is priced with now and where it comes from, as ListPrices names it: "sql" (a
 * billing_prices row), "env" (BILLING_PRICES) or "default" (1:1, no "*" entry). Thread-safe.
 */
static struct billing_ratio price_source(struct billing_store *s, const char *model,
                                         const char **source)
{
    struct billing_ratio r, unused;
    const char *name, *in_sql;

    pthread_rwlock_rdlock(&s->prices_lock);
    name = billing_prices_match(s->merged ? s->merged : s->prices, model, &r);
    /* the entry that matched is an SQL row when the SQL table alone matches it by that name */
    in_sql = name ? billing_prices_match(s->sql, name, &unused) : NULL;
    *source = name == NULL ? "default" : in_sql && strcmp(in_sql, name) == 0 ? "sql" : "env";
    pthread_rwlock_unlock(&s->prices_lock);
    return r;
}

/* Writes the reason of a refusal into the caller's err[errlen] (err may be NULL); returns rc. */
static int why(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int why(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return rc;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

static void why_clear(char *err, size_t errlen)
{
    if (err != NULL && errlen > 0)
        err[0] = '\0';
}

/* ---- schema ---- */

static const struct svc_db_migration migrations[] = {
    {"billing", 1,
     "CREATE TABLE billing_accounts (user_id INTEGER PRIMARY KEY, username TEXT NOT NULL DEFAULT "
     "'',"
     " granted INTEGER NOT NULL DEFAULT 0, used INTEGER NOT NULL DEFAULT 0,"
     " held INTEGER NOT NULL DEFAULT 0, unlimited INTEGER NOT NULL DEFAULT 0,"
     " deleted INTEGER NOT NULL DEFAULT 0, seq INTEGER NOT NULL DEFAULT 0,"
     " updated_at_ms INTEGER NOT NULL DEFAULT 0)",
     "CREATE TABLE IF NOT EXISTS billing_accounts (user_id BIGINT NOT NULL PRIMARY KEY,"
     " username VARCHAR(255) NOT NULL DEFAULT '', granted BIGINT NOT NULL DEFAULT 0,"
     " used BIGINT NOT NULL DEFAULT 0, held BIGINT NOT NULL DEFAULT 0,"
     " unlimited TINYINT NOT NULL DEFAULT 0, deleted TINYINT NOT NULL DEFAULT 0,"
     " seq BIGINT NOT NULL DEFAULT 0, updated_at_ms BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB"},
    {"billing", 2,
     "CREATE TABLE billing_holds (request_id TEXT PRIMARY KEY, user_id INTEGER NOT NULL,"
     " units INTEGER NOT NULL, model TEXT NOT NULL DEFAULT '', prompt_tokens INTEGER NOT NULL,"
     " completion_limit INTEGER NOT NULL, source TEXT NOT NULL DEFAULT '',"
     " state INTEGER NOT NULL DEFAULT 0, charged INTEGER NOT NULL DEFAULT 0,"
     " tokens_in INTEGER NOT NULL DEFAULT 0, tokens_out INTEGER NOT NULL DEFAULT 0,"
     " created_at_ms INTEGER NOT NULL, expires_at_ms INTEGER NOT NULL,"
     " closed_at_ms INTEGER NOT NULL DEFAULT 0);\n"
     "CREATE INDEX billing_holds_due ON billing_holds (state, expires_at_ms);\n"
     "CREATE INDEX billing_holds_user ON billing_holds (user_id, state);\n",
     "CREATE TABLE IF NOT EXISTS billing_holds (request_id VARCHAR(128) COLLATE utf8mb4_bin NOT "
     "NULL"
     " PRIMARY KEY, user_id BIGINT NOT NULL, units BIGINT NOT NULL,"
     " model VARCHAR(128) NOT NULL DEFAULT '', prompt_tokens BIGINT NOT NULL,"
     " completion_limit BIGINT NOT NULL, source VARCHAR(16) NOT NULL DEFAULT '',"
     " state TINYINT NOT NULL DEFAULT 0, charged BIGINT NOT NULL DEFAULT 0,"
     " tokens_in BIGINT NOT NULL DEFAULT 0, tokens_out BIGINT NOT NULL DEFAULT 0,"
     " created_at_ms BIGINT NOT NULL, expires_at_ms BIGINT NOT NULL,"
     " closed_at_ms BIGINT NOT NULL DEFAULT 0, KEY billing_holds_due (state, expires_at_ms),"
     " KEY billing_holds_user (user_id, state)) ENGINE=InnoDB"},
    {"billing", 3,
     "CREATE TABLE billing_ledger (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL,"
     " kind TEXT NOT NULL, units INTEGER NOT NULL, tokens_in INTEGER NOT NULL DEFAULT 0,"
     " tokens_out INTEGER NOT NULL DEFAULT 0, model TEXT NOT NULL DEFAULT '',"
     " request_id TEXT NOT NULL DEFAULT '', balance_after INTEGER NOT NULL,"
     " created_at_ms INTEGER NOT NULL, day INTEGER NOT NULL, note TEXT NOT NULL DEFAULT '',"
     " source TEXT NOT NULL DEFAULT '', user_seq INTEGER NOT NULL, idem_key TEXT UNIQUE);\n"
     "CREATE INDEX billing_ledger_user ON billing_ledger (user_id, id);\n"
     "CREATE INDEX billing_ledger_day ON billing_ledger (user_id, day);\n",
     "CREATE TABLE IF NOT EXISTS billing_ledger (id BIGINT AUTO_INCREMENT PRIMARY KEY,"
     " user_id BIGINT NOT NULL, kind VARCHAR(16) NOT NULL, units BIGINT NOT NULL,"
     " tokens_in BIGINT NOT NULL DEFAULT 0, tokens_out BIGINT NOT NULL DEFAULT 0,"
     " model VARCHAR(128) NOT NULL DEFAULT '', request_id VARCHAR(128) NOT NULL DEFAULT '',"
     " balance_after BIGINT NOT NULL, created_at_ms BIGINT NOT NULL, day INT NOT NULL,"
     " note VARCHAR(255) NOT NULL DEFAULT '', source VARCHAR(16) NOT NULL DEFAULT '',"
     " user_seq BIGINT NOT NULL, idem_key VARCHAR(160) COLLATE utf8mb4_bin NULL,"
     " UNIQUE KEY billing_ledger_idem (idem_key), KEY billing_ledger_user (user_id, id),"
     " KEY billing_ledger_day (user_id, day)) ENGINE=InnoDB"},
    {"billing", 4,
     "CREATE TABLE billing_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
     " ledger_id INTEGER NOT NULL, user_id INTEGER NOT NULL, created_at_ms INTEGER NOT NULL)",
     "CREATE TABLE IF NOT EXISTS billing_outbox (id BIGINT AUTO_INCREMENT PRIMARY KEY,"
     " ledger_id BIGINT NOT NULL, user_id BIGINT NOT NULL, created_at_ms BIGINT NOT NULL)"
     " ENGINE=InnoDB"},
    {"billing", 5,
     "CREATE TABLE billing_relay_lease (name TEXT PRIMARY KEY, owner TEXT NOT NULL DEFAULT '',"
     " until_ms INTEGER NOT NULL DEFAULT 0);\n"
     "INSERT INTO billing_relay_lease (name, owner, until_ms) VALUES ('relay', '', 0);\n",
     "CREATE TABLE IF NOT EXISTS billing_relay_lease (name VARCHAR(32) NOT NULL PRIMARY KEY,"
     " owner VARCHAR(64) NOT NULL DEFAULT '', until_ms BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB"},
    {"billing", 6, NULL,
     "INSERT IGNORE INTO billing_relay_lease (name, owner, until_ms) VALUES ('relay', '', 0)"},
    {"billing", 7, "CREATE INDEX billing_holds_closed ON billing_holds (closed_at_ms)",
     "CREATE INDEX IF NOT EXISTS billing_holds_closed ON billing_holds (closed_at_ms)"},
    /* The request an idempotency key was first used with (see credit()): NULL on older rows. */
    {"billing", 8, "ALTER TABLE billing_ledger ADD COLUMN idem_hash TEXT",
     "ALTER TABLE billing_ledger ADD COLUMN IF NOT EXISTS idem_hash CHAR(64) NULL"},
    /* Prices set through the ops API (override BILLING_PRICES), and the version every replica
     * polls to know when to reload them (decision 38). */
    {"billing", 9,
     "CREATE TABLE billing_prices (model TEXT PRIMARY KEY, in_milli INTEGER NOT NULL,"
     " out_milli INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL,"
     " updated_by TEXT NOT NULL DEFAULT '')",
     "CREATE TABLE IF NOT EXISTS billing_prices (model VARCHAR(128) COLLATE utf8mb4_bin NOT NULL"
     " PRIMARY KEY, in_milli BIGINT NOT NULL, out_milli BIGINT NOT NULL,"
     " updated_at_ms BIGINT NOT NULL, updated_by VARCHAR(64) NOT NULL DEFAULT '') ENGINE=InnoDB"},
    {"billing", 10,
     "CREATE TABLE billing_price_version (id INTEGER PRIMARY KEY, version INTEGER NOT NULL);\n"
     "INSERT INTO billing_price_version (id, version) VALUES (1, 0);\n",
     "CREATE TABLE IF NOT EXISTS billing_price_version (id INT NOT NULL PRIMARY KEY,"
     " version BIGINT NOT NULL) ENGINE=InnoDB"},
    {"billing", 11, NULL,
     "INSERT IGNORE INTO billing_price_version (id, version) VALUES (1, 0)"},
    /* Per-replica balance leases (docs/billing.md "Leases"): a lease is a billing_holds row of
     * kind 1 with the last seq applied and the inflight units its caller last reported. */
    {"billing", 12,
     "ALTER TABLE billing_holds ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;\n"
     "ALTER TABLE billing_holds ADD COLUMN lease_seq INTEGER NOT NULL DEFAULT 0;\n"
     "ALTER TABLE billing_holds ADD COLUMN inflight INTEGER NOT NULL DEFAULT 0;\n",
     "ALTER TABLE billing_holds ADD COLUMN IF NOT EXISTS kind TINYINT NOT NULL DEFAULT 0,"
     " ADD COLUMN IF NOT EXISTS lease_seq BIGINT NOT NULL DEFAULT 0,"
     " ADD COLUMN IF NOT EXISTS inflight BIGINT NOT NULL DEFAULT 0"},
    /* An outbox row stands for the n ledger rows ledger_id .. ledger_id + n - 1 (consecutive
     * ids, one user, one statement): one row per multi-row INSERT instead of one per charge.
     * Rows written before (and by an older replica during a rolling upgrade) are n = 1. */
    {"billing", 13, "ALTER TABLE billing_outbox ADD COLUMN n INTEGER NOT NULL DEFAULT 1",
     "ALTER TABLE billing_outbox ADD COLUMN IF NOT EXISTS n INT NOT NULL DEFAULT 1"},
    /* A relay of an older release sends only an outbox row's first ledger row: renaming the
     * lease row it renews stops it at once (events wait for a relay of this release; the rolling
     * update starts one next), so no row with n > 1 ever reaches it. */
    {"billing", 14, "UPDATE billing_relay_lease SET name = 'relay-runs' WHERE name = 'relay'",
     "UPDATE billing_relay_lease SET name = 'relay-runs' WHERE name = 'relay'"},
};

int billing_store_migrate(struct svc_db *db)
{
    return svc_db_migrate(db, migrations, sizeof(migrations) / sizeof(migrations[0]));
}

static int ledger_multi_sql_make(struct billing_store *s);

int billing_store_create(struct billing_store **out, struct svc_db *db,
                         const struct billing_prices *prices, const struct billing_store_opts *opts)
{
    struct billing_store *s = calloc(1, sizeof(*s));

    *out = NULL;
    if (s == NULL)
        return SVC_ENOMEM;
    s->db = db;
    s->prices = prices;
    s->opts = *opts;
    s->prices_version = -1;
    pthread_rwlock_init(&s->prices_lock, NULL);
    pthread_mutex_init(&s->refresh_lock, NULL);
    s->mysql = svc_db_dialect(db) == SVC_DB_MYSQL;
    if (ledger_multi_sql_make(s) != SVC_OK) {
        billing_store_destroy(&s);
        return SVC_ENOMEM;
    }
    *out = s;
    return SVC_OK;
}

void billing_store_destroy(struct billing_store **s)
{
    if (s == NULL || *s == NULL)
        return;
    billing_prices_destroy(&(*s)->merged);
    billing_prices_destroy(&(*s)->sql);
    pthread_rwlock_destroy(&(*s)->prices_lock);
    pthread_mutex_destroy(&(*s)->refresh_lock);
    for (int i = 0; i < LEDGER_BATCH; i++)
        free((*s)->ledger_multi_sql[i]);
    free(*s);
    *s = NULL;
}

/* ---- helpers ---- */

static const char *nz(const char *s)
{
    return s ? s : "";
}

static int check_text(char *err, size_t errlen, const char *what, const char *s, size_t max,
                      int required)
{
    size_t n = s ? strlen(s) : 0;

    if (required && n == 0)
        return why(err, errlen, SVC_EINVAL, "%s is required", what);
    if (n > max)
        return why(err, errlen, SVC_EINVAL, "%s is longer than %zu bytes", what, max);
    if (!svc_util_utf8_valid(nz(s), n))
        return why(err, errlen, SVC_EINVAL, "%s is not valid UTF-8", what);
    return SVC_OK;
}

static int check_tokens(char *err, size_t errlen, const char *what, int64_t v)
{
    if (v < 0 || v > BILLING_TOKENS_MAX)
        return why(err, errlen, SVC_EINVAL, "%s out of range 0..%lld: %lld", what,
                   BILLING_TOKENS_MAX, (long long)v);
    return SVC_OK;
}

static int check_user(char *err, size_t errlen, int64_t uid)
{
    return uid > 0 ? SVC_OK : why(err, errlen, SVC_EINVAL, "user_id must be > 0");
}

/* A transaction body run by svc_db_tx_group, perhaps on another thread, and perhaps more than
 * once: each run starts with the caller's err cleared (the caller blocks meanwhile). The SQL error
 * text is logged by svc_db. */
struct grouped_tx {
    svc_db_tx_cb fn;
    void *arg;
    char *err;
    size_t errlen;
};

static int grouped_body(void *ctx, struct svc_db_conn *c)
{
    struct grouped_tx *g = ctx;
    int rc;

    why_clear(g->err, g->errlen);
    rc = g->fn(g->arg, c);
    return rc;
}

/*
 * Runs fn in a transaction, grouped with the transactions other threads run at the same moment
 * (one COMMIT for all of them: docs/billing.md, "Group commit").
 */
static int with_tx(struct billing_store *s, svc_db_tx_cb fn, void *arg, char *err, size_t errlen)
{
    struct grouped_tx g = {.fn = fn, .arg = arg, .err = err, .errlen = errlen};
    int rc;

    rc = svc_db_tx_group(s->db, grouped_body, &g);
    if (rc != SVC_OK && rc != SVC_ENOTFOUND && rc != SVC_EEXIST && rc != SVC_EINVAL &&
        rc != SVC_ECONFLICT && rc != SVC_ETOOLARGE)
        SVC_LOG_WARN(NULL, "billing-sql", "%s", svc_strerror(rc));
    return rc;
}

struct acct_row {
    struct billing_account a;
    int64_t seq;
    int deleted;
    int found;
    /* deferred: acct_delta only adds to pend_* (the row is locked, and nothing in the
     * transaction reads it back from SQL); acct_flush writes them in one UPDATE */
    int deferred;
    int64_t pend_g, pend_u, pend_h, pend_seq;
};

static const char SQL_ACCT[] =
    "SELECT user_id, username, granted, used, held, unlimited, "
    "updated_at_ms, seq, deleted FROM billing_accounts WHERE user_id = ?";
static const char SQL_ACCT_LOCK[] = "SELECT user_id, username, granted, used, held, unlimited, "
                                    "updated_at_ms, seq, deleted FROM billing_accounts "
                                    "WHERE user_id = ? FOR UPDATE";

/* Reads an account (locking it on MariaDB when lock). found = 0 when absent. */
static int acct_read(struct svc_db_conn *c, int64_t uid, int lock, struct acct_row *r)
{
    struct svc_db_rows *rows = NULL;
    struct svc_db_param p[] = {SVC_DB_I64(uid)};
    int mysql = svc_db_conn_dialect(c) == SVC_DB_MYSQL;
    int rc;

    memset(r, 0, sizeof(*r));
    rc = svc_db_query(c, lock && mysql ? SQL_ACCT_LOCK : SQL_ACCT, p, 1, &rows);
    if (rc != SVC_OK)
        return rc;
    if (svc_db_rows_count(rows) == 1) {
        r->found = 1;
        r->a.user_id = svc_db_rows_i64(rows, 0, 0);
        snprintf(r->a.username, sizeof(r->a.username), "%s", nz(svc_db_rows_text(rows, 0, 1)));
        r->a.granted = svc_db_rows_i64(rows, 0, 2);
        r->a.used = svc_db_rows_i64(rows, 0, 3);
        r->a.held = svc_db_rows_i64(rows, 0, 4);
        r->a.unlimited = svc_db_rows_i64(rows, 0, 5) != 0;
        r->a.updated_at_ms = svc_db_rows_i64(rows, 0, 6);
        r->seq = svc_db_rows_i64(rows, 0, 7);
        r->deleted = svc_db_rows_i64(rows, 0, 8) != 0;
        r->a.balance = r->a.granted - r->a.used - r->a.held;
    }
    svc_db_rows_destroy(&rows);
    return SVC_OK;
}

/* granted += dg, used += du, held += dh, seq += dseq (the row is locked by the caller). */
static int acct_delta(struct svc_db_conn *c, struct acct_row *r, int64_t dg, int64_t du, int64_t dh,
                      int64_t dseq, int64_t now)
{
    struct svc_db_param p[] = {SVC_DB_I64(dg),   SVC_DB_I64(du),  SVC_DB_I64(dh),
                               SVC_DB_I64(dseq), SVC_DB_I64(now), SVC_DB_I64(r->a.user_id)};
    uint64_t n = 0;
    int rc;

    if (r->deferred) {
        r->pend_g += dg;
        r->pend_u += du;
        r->pend_h += dh;
        r->pend_seq += dseq;
    } else {
        rc = svc_db_exec(c,
                         "UPDATE billing_accounts SET granted = granted + ?, used = used + ?, "
                         "held = held + ?, seq = seq + ?, updated_at_ms = ? WHERE user_id = ?",
                         p, 6, &n, NULL);
        if (rc != SVC_OK)
            return rc;
        if (n != 1)
            return SVC_ECONFLICT;
    }
    r->a.granted += dg;
    r->a.used += du;
    r->a.held += dh;
    r->seq += dseq;
    r->a.updated_at_ms = now;
    r->a.balance = r->a.granted - r->a.used - r->a.held;
    return SVC_OK;
}

/* Writes what a deferred row gathered (one UPDATE for a LeaseSync's many charges) and stops
 * deferring. */
static int acct_flush(struct svc_db_conn *c, struct acct_row *r, int64_t now)
{
    int64_t dg = r->pend_g, du = r->pend_u, dh = r->pend_h, dseq = r->pend_seq;

    r->deferred = 0;
    r->pend_g = r->pend_u = r->pend_h = r->pend_seq = 0;
    if (dg == 0 && du == 0 && dh == 0 && dseq == 0)
        return SVC_OK;
    /* acct_delta adds to the local copy as well: take the deltas back out first */
    r->a.granted -= dg;
    r->a.used -= du;
    r->a.held -= dh;
    r->seq -= dseq;
    return acct_delta(c, r, dg, du, dh, dseq, now);
}

struct ledger_row {
    const char *kind;
    int64_t units, tokens_in, tokens_out;
    const char *model, *request_id, *source, *idem_key;
    const char *idem_hash; /* with idem_key: the digest of the request it was used with */
    char note[BILLING_NOTE_MAX + 1];
};

#define LEDGER_COLS                                                                                \
    "INSERT INTO billing_ledger (user_id, kind, units, tokens_in, tokens_out, model, request_id, " \
    "balance_after, created_at_ms, day, note, source, user_seq, idem_key, idem_hash) VALUES "
#define LEDGER_NCOLS 15
#define LEDGER_VALUES "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

/* The LEDGER_NCOLS parameters of one ledger row into p. */
static void ledger_params(struct svc_db_param *p, int64_t user_id, const struct ledger_row *l,
                          int64_t balance_after, int64_t user_seq, int64_t now)
{
    const struct svc_db_param v[LEDGER_NCOLS] = {
        SVC_DB_I64(user_id),
        SVC_DB_TEXT(l->kind),
        SVC_DB_I64(l->units),
        SVC_DB_I64(l->tokens_in),
        SVC_DB_I64(l->tokens_out),
        SVC_DB_TEXT(nz(l->model)),
        SVC_DB_TEXT(nz(l->request_id)),
        SVC_DB_I64(balance_after),
        SVC_DB_I64(now),
        SVC_DB_I64(now / MS_PER_DAY),
        SVC_DB_TEXT(l->note),
        SVC_DB_TEXT(nz(l->source)),
        SVC_DB_I64(user_seq),
        l->idem_key && l->idem_key[0] ? SVC_DB_TEXT(l->idem_key) : SVC_DB_NULL,
        l->idem_hash && l->idem_hash[0] ? SVC_DB_TEXT(l->idem_hash) : SVC_DB_NULL};

    memcpy(p, v, sizeof(v));
}

/*
 * Appends a ledger row and its outbox row for account r, whose balance and seq the caller has
 * already updated (r holds the values after the change). balance_after is granted - used: the
 * running sum of the ledger's units, holds in flight excluded. *id (may be NULL) gets the id.
 */
static int ledger_append(struct svc_db_conn *c, const struct acct_row *r,
                         const struct ledger_row *l, int64_t now, int64_t *id)
{
    struct svc_db_param p[LEDGER_NCOLS];
    int64_t lid = 0;
    int rc;

    ledger_params(p, r->a.user_id, l, r->a.granted - r->a.used, r->seq, now);
    rc = svc_db_exec(c, LEDGER_COLS LEDGER_VALUES, p, LEDGER_NCOLS, NULL, &lid);
    if (rc != SVC_OK)
        return rc;
    {
        struct svc_db_param q[] = {SVC_DB_I64(lid), SVC_DB_I64(r->a.user_id), SVC_DB_I64(now)};
        rc = svc_db_exec(c,
                         "INSERT INTO billing_outbox (ledger_id, user_id, created_at_ms) "
                         "VALUES (?, ?, ?)",
                         q, 3, NULL, NULL);
    }
    if (rc == SVC_OK && id != NULL)
        *id = lid;
    return rc;
}

/*
 * The ledger rows of one LeaseSync (one account, one transaction), written a few statements at
 * a time rather than two per row: a sync carries up to hundreds of charges, and on MariaDB each
 * statement cost more than the row it wrote (docs/billing.md "Leases"). Rows are added in order;
 * ledger_batch_flush writes up to LEDGER_BATCH of them with one multi-row INSERT (a cached
 * statement per count), followed by one INSERT ... SELECT that gives those rows their outbox row
 * (outbox_write). The account row is locked by the caller, so the only ledger rows of this user
 * from the statement's first id on are these; the SELECT is bounded by id and user_seq, and must
 * find exactly them.
 */

struct ledger_batch {
    struct billing_store *s;
    struct svc_db_conn *c;
    int64_t user_id, now;
    size_t n;
    struct {
        struct ledger_row l; /* its strings live as long as the transaction */
        int64_t balance_after, user_seq;
    } rows[LEDGER_BATCH];
};

static int ledger_multi_sql_make(struct billing_store *s)
{
    for (size_t k = 1; k <= LEDGER_BATCH; k++) {
        size_t cap = sizeof(LEDGER_COLS) + k * (sizeof(LEDGER_VALUES) + 2), off;
        char *sql = malloc(cap);

        if (sql == NULL)
            return SVC_ENOMEM;
        off = (size_t)snprintf(sql, cap, "%s", LEDGER_COLS);
        for (size_t j = 0; j < k; j++)
            off += (size_t)snprintf(sql + off, cap - off, "%s%s", j ? ", " : "", LEDGER_VALUES);
        s->ledger_multi_sql[k - 1] = sql;
    }
    return SVC_OK;
}

/*
 * The outbox rows of the k ledger rows of b just inserted by one statement, whose first row got
 * id first. Normally one row standing for all k (billing_outbox.n = k): the INSERT ... SELECT
 * writes it only when exactly k rows of this user from first on carry those user_seq values and
 * their ids are consecutive (one multi-row INSERT under innodb_autoinc_lock_mode 0 or 1, and
 * always on SQLite). Otherwise (interleaved ids, mode 2) one outbox row per ledger row. Either
 * way the count is checked: no ledger row without its event.
 */
static int outbox_write(struct ledger_batch *b, size_t k, int64_t first)
{
    int64_t seq_lo = b->rows[0].user_seq, seq_hi = b->rows[k - 1].user_seq;
    uint64_t n = 0;
    int rc;

    {
        struct svc_db_param q[] = {SVC_DB_I64(b->user_id), SVC_DB_I64(b->now),
                                   SVC_DB_I64(b->user_id), SVC_DB_I64(first),
                                   SVC_DB_I64(seq_lo),      SVC_DB_I64(seq_hi),
                                   SVC_DB_I64((int64_t)k),  SVC_DB_I64((int64_t)k - 1)};
        rc = svc_db_exec(b->c,
                         "INSERT INTO billing_outbox (ledger_id, user_id, created_at_ms, n) "
                         "SELECT MIN(id), ?, ?, COUNT(*) FROM billing_ledger WHERE user_id = ? "
                         "AND id >= ? AND user_seq BETWEEN ? AND ? "
                         "HAVING COUNT(*) = ? AND MAX(id) - MIN(id) = ?",
                         q, 8, &n, NULL);
    }
    if (rc != SVC_OK || n == 1)
        return rc;
    {
        struct svc_db_param q[] = {SVC_DB_I64(b->now), SVC_DB_I64(b->user_id), SVC_DB_I64(first),
                                   SVC_DB_I64(seq_lo), SVC_DB_I64(seq_hi)};
        rc = svc_db_exec(b->c,
                         "INSERT INTO billing_outbox (ledger_id, user_id, created_at_ms) "
                         "SELECT id, user_id, ? FROM billing_ledger WHERE user_id = ? AND id >= ? "
                         "AND user_seq BETWEEN ? AND ? ORDER BY id",
                         q, 5, &n, NULL);
    }
    if (rc != SVC_OK)
        return rc;
    if (n != k) {
        SVC_LOG_ERR(NULL, "billing", "ledger batch: %llu outbox rows for %zu ledger rows",
                    (unsigned long long)n, k);
        return SVC_EINTERNAL; /* the transaction is rolled back: no row without its event */
    }
    return SVC_OK;
}

/* Writes the rows added so far (at most LEDGER_BATCH) with one INSERT, and their outbox row(s). */
static int ledger_batch_flush(struct ledger_batch *b)
{
    size_t k = b->n;
    struct svc_db_param p[LEDGER_BATCH * LEDGER_NCOLS];
    int64_t lid = 0;
    int rc;

    if (k == 0)
        return SVC_OK;
    for (size_t j = 0; j < k; j++)
        ledger_params(p + j * LEDGER_NCOLS, b->user_id, &b->rows[j].l, b->rows[j].balance_after,
                      b->rows[j].user_seq, b->now);
    rc = svc_db_exec(b->c, b->s->ledger_multi_sql[k - 1], p, k * LEDGER_NCOLS, NULL, &lid);
    if (rc != SVC_OK)
        return rc;
    b->n = 0;
    /* the id of the statement's first row: MariaDB reports the first, SQLite the last (one
     * writer: a statement's rows are consecutive there) */
    return outbox_write(b, k, b->s->mysql ? lid : lid - (int64_t)(k - 1));
}

/* ledger_append() for a batch: the row goes out with the next flush (at once when full). */
static int ledger_batch_add(struct ledger_batch *b, const struct acct_row *r,
                            const struct ledger_row *l)
{
    if (b->n == LEDGER_BATCH) {
        int rc = ledger_batch_flush(b);
        if (rc != SVC_OK)
            return rc;
    }
    b->rows[b->n].l = *l;
    b->rows[b->n].balance_after = r->a.granted - r->a.used;
    b->rows[b->n].user_seq = r->seq;
    b->n++;
    return SVC_OK;
}

static void ledger_note(struct ledger_row *l, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void ledger_note(struct ledger_row *l, const char *fmt, ...)
{
    va_list ap;
    size_t n;

    va_start(ap, fmt);
    vsnprintf(l->note, sizeof(l->note), fmt, ap);
    va_end(ap);
    /* never cut a UTF-8 sequence in half */
    n = strlen(l->note);
    while (n > 0 && !svc_util_utf8_valid(l->note, n))
        l->note[--n] = '\0';
}

struct hold_row {
    int found;
    int64_t user_id, units, prompt_tokens, completion_limit, state, charged, expires_at_ms;
    int64_t kind, lease_seq, inflight; /* enum billing_hold_kind; the last two: leases only */
    char model[BILLING_PRICE_MODEL_MAX + 1];
    char source[BILLING_SOURCE_MAX + 1];
};

static int hold_read(struct svc_db_conn *c, const char *rid, int lock, struct hold_row *h)
{
    static const char sql[] = "SELECT user_id, units, prompt_tokens, completion_limit, state, "
                              "charged, expires_at_ms, model, source, kind, lease_seq, inflight "
                              "FROM billing_holds WHERE request_id = ?";
    static const char sql_lock[] = "SELECT user_id, units, prompt_tokens, completion_limit, "
                                   "state, charged, expires_at_ms, model, source, kind, "
                                   "lease_seq, inflight FROM billing_holds WHERE request_id = ? "
                                   "FOR UPDATE";
    struct svc_db_rows *rows = NULL;
    struct svc_db_param p[] = {SVC_DB_TEXT(rid)};
    int mysql = svc_db_conn_dialect(c) == SVC_DB_MYSQL;
    int rc;

    memset(h, 0, sizeof(*h));
    if ((rc = svc_db_query(c, lock && mysql ? sql_lock : sql, p, 1, &rows)) != SVC_OK)
        return rc;
    if (svc_db_rows_count(rows) == 1) {
        h->found = 1;
        h->user_id = svc_db_rows_i64(rows, 0, 0);
        h->units = svc_db_rows_i64(rows, 0, 1);
        h->prompt_tokens = svc_db_rows_i64(rows, 0, 2);
        h->completion_limit = svc_db_rows_i64(rows, 0, 3);
        h->state = svc_db_rows_i64(rows, 0, 4);
        h->charged = svc_db_rows_i64(rows, 0, 5);
        h->expires_at_ms = svc_db_rows_i64(rows, 0, 6);
        snprintf(h->model, sizeof(h->model), "%s", nz(svc_db_rows_text(rows, 0, 7)));
        snprintf(h->source, sizeof(h->source), "%s", nz(svc_db_rows_text(rows, 0, 8)));
        h->kind = svc_db_rows_i64(rows, 0, 9);
        h->lease_seq = svc_db_rows_i64(rows, 0, 10);
        h->inflight = svc_db_rows_i64(rows, 0, 11);
    }
    svc_db_rows_destroy(&rows);
    return SVC_OK;
}

static int hold_close(struct svc_db_conn *c, const char *rid, int64_t from_state, int64_t to_state,
                      int64_t charged, int64_t tin, int64_t tout, int64_t now)
{
    struct svc_db_param p[] = {SVC_DB_I64(to_state),  SVC_DB_I64(charged), SVC_DB_I64(tin),
                               SVC_DB_I64(tout),      SVC_DB_I64(now),     SVC_DB_TEXT(rid),
                               SVC_DB_I64(from_state)};
    uint64_t n = 0;
    int rc = svc_db_exec(c,
                         "UPDATE billing_holds SET state = ?, charged = ?, tokens_in = ?, "
                         "tokens_out = ?, closed_at_ms = ? WHERE request_id = ? AND state = ?",
                         p, 7, &n, NULL);
    if (rc == SVC_OK && n != 1)
        rc = SVC_ECONFLICT; /* someone else closed it: replay the transaction */
    return rc;
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static int64_t max64(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

/*
 * The account of a static user (create_unlimited of Reserve and LeaseSync) when it has none, or
 * a deleted one: revived or created unlimited. a is what acct_read found (not found or deleted).
 */
static int acct_create_unlimited(struct svc_db_conn *c, struct acct_row *a, int64_t uid,
                                 const char *username, int64_t now)
{
    struct svc_db_param p[] = {SVC_DB_I64(uid), SVC_DB_TEXT(nz(username)), SVC_DB_I64(now)};
    int rc;

    rc = svc_db_exec(c,
                     a->found ? "UPDATE billing_accounts SET deleted = 0, unlimited = 1, "
                                "username = ?, updated_at_ms = ? WHERE user_id = ?"
                              : "INSERT INTO billing_accounts (user_id, username, "
                                "unlimited, updated_at_ms) VALUES (?, ?, 1, ?)",
                     a->found ? (struct svc_db_param[]){p[1], p[2], p[0]} : p, 3, NULL, NULL);
    if (rc == SVC_EEXIST)
        return SVC_ECONFLICT; /* created concurrently: replay */
    if (rc != SVC_OK)
        return rc;
    SVC_LOG_NOTICE(NULL, "reserve", "created unlimited account user_id=%lld", (long long)uid);
    /* re-read: a revived account keeps its granted and used */
    return acct_read(c, uid, 1, a);
}

/*
 * What usage costs now: ceil rules of price.h with model's ratio (SQL over BILLING_PRICES).
 * Tokens are within 0..BILLING_TOKENS_MAX, so the sum stays far below 2^63.
 */
static int64_t cost_of(struct billing_store *s, const char *model, int64_t tokens_in,
                       int64_t tokens_out)
{
    struct billing_ratio r = price_of(s, model);

    return billing_units_for(tokens_in, r.in_milli) + billing_units_for(tokens_out, r.out_milli);
}

/* What a request that cost `cost` is charged when `held` units were set aside for it: the
 * held units, then the spendable balance, never below zero; unlimited accounts pay in full. */
static int64_t capped_charge(const struct acct_row *a, int64_t cost, int64_t held)
{
    return a->a.unlimited ? cost : min64(cost, held + max64(a->a.balance, 0));
}

/*
 * Charges one request of account a (locked by the caller): used += charge, held -= freed (what
 * its hold or lease gives back), and one "charge" ledger row l (the caller fills tokens, model,
 * request id, source, and may start the note) whose note says when the usage is estimated and
 * what of cost was not charged. Settle's and LeaseSync's charges are this one row.
 */
static int charge_append(struct svc_db_conn *c, struct ledger_batch *b, struct acct_row *a,
                         struct ledger_row *l, int64_t cost, int64_t charge, int64_t freed,
                         int estimated, int64_t now)
{
    char said[BILLING_NOTE_MAX + 1]; /* the caller's start of the note */
    const char *sep;
    int rc;

    if ((rc = acct_delta(c, a, 0, charge, -freed, 1, now)) != SVC_OK)
        return rc;
    l->kind = "charge";
    l->units = -charge;
    svc_util_str_copy(said, sizeof(said), l->note);
    sep = said[0] != '\0' ? "; " : "";
    if (charge < cost)
        ledger_note(l, "%s%s%scapped: %lld units over hold and balance not charged", said, sep,
                    estimated ? "estimated usage; " : "", (long long)(cost - charge));
    else if (estimated)
        ledger_note(l, "%s%sestimated usage", said, sep);
    else
        ledger_note(l, "%s", said);
    return b != NULL ? ledger_batch_add(b, a, l) : ledger_append(c, a, l, now, NULL);
}

/* ---- reserve ---- */

struct reserve_ctx {
    struct billing_store *s;
    const struct billing_reserve_in *in;
    struct billing_reserve_out *out;
};

static int reserve_tx(void *ctx, struct svc_db_conn *c)
{
    struct reserve_ctx *x = ctx;
    const struct billing_reserve_in *in = x->in;
    struct billing_reserve_out *out = x->out;
    struct billing_ratio r = price_of(x->s, in->model);
    int64_t now = svc_util_wallclock_ms();
    int64_t units_in = billing_units_for(in->prompt_tokens, r.in_milli);
    int64_t worst = units_in + billing_units_for(in->max_completion_tokens, r.out_milli);
    int64_t hold = worst, limit = in->max_completion_tokens;
    struct acct_row a;
    uint64_t n = 0;
    int rc;

    memset(out, 0, sizeof(*out));
    {
        /* The fast path: one conditional update holds the worst case if it fits. */
        struct svc_db_param p[] = {SVC_DB_I64(worst), SVC_DB_I64(now), SVC_DB_I64(in->user_id),
                                   SVC_DB_I64(worst)};
        rc = svc_db_exec(c,
                         "UPDATE billing_accounts SET held = held + ?, updated_at_ms = ? "
                         "WHERE user_id = ? AND deleted = 0 AND unlimited = 0 "
                         "AND granted - used - held >= ?",
                         p, 4, &n, NULL);
        if (rc != SVC_OK)
            return rc;
    }
    if ((rc = acct_read(c, in->user_id, 1, &a)) != SVC_OK)
        return rc;
    if (n == 0) {
        struct hold_row h;

        /* A replay of a request id must find its hold, not a refusal. */
        if ((rc = hold_read(c, in->request_id, 0, &h)) != SVC_OK)
            return rc;
        if (h.found)
            return SVC_EEXIST;
        if (!a.found || a.deleted) {
            if (!in->create_unlimited) {
                out->result = BILLING_RESERVE_NO_ACCOUNT;
                return SVC_OK;
            }
            if ((rc = acct_create_unlimited(c, &a, in->user_id, in->username, now)) != SVC_OK)
                return rc;
        }
        if (a.a.unlimited) {
            hold = 0;
            out->unlimited = 1;
        } else {
            int64_t min_reply = in->min_completion_tokens > 0 ? in->min_completion_tokens
                                                              : x->s->opts.min_reply_tokens;
            int64_t minimum;

            min_reply = min64(min_reply, in->max_completion_tokens);
            minimum = units_in + billing_units_for(min_reply, r.out_milli);
            if (a.a.balance >= worst) {
                hold = worst; /* changed since the fast path looked */
            } else if (in->completion_limit_fixed || a.a.balance < minimum) {
                out->result = BILLING_RESERVE_INSUFFICIENT;
                out->balance = max64(a.a.balance, 0);
                return SVC_OK;
            } else {
                limit = min64(billing_tokens_within(a.a.balance - units_in, r.out_milli),
                              in->max_completion_tokens);
                hold = units_in + billing_units_for(limit, r.out_milli);
            }
            struct svc_db_param p[] = {SVC_DB_I64(hold), SVC_DB_I64(now), SVC_DB_I64(in->user_id),
                                       SVC_DB_I64(hold)};
            rc = svc_db_exec(c,
                             "UPDATE billing_accounts SET held = held + ?, updated_at_ms = ? "
                             "WHERE user_id = ? AND deleted = 0 AND unlimited = 0 "
                             "AND granted - used - held >= ?",
                             p, 4, &n, NULL);
            if (rc != SVC_OK)
                return rc;
            if (n != 1)
                return SVC_ECONFLICT;
            a.a.balance -= hold;
        }
    }
    {
        struct svc_db_param p[] = {SVC_DB_TEXT(in->request_id),
                                   SVC_DB_I64(in->user_id),
                                   SVC_DB_I64(hold),
                                   SVC_DB_TEXT(nz(in->model)),
                                   SVC_DB_I64(in->prompt_tokens),
                                   SVC_DB_I64(limit),
                                   SVC_DB_TEXT(nz(in->source)),
                                   SVC_DB_I64(now),
                                   SVC_DB_I64(now + x->s->opts.hold_ttl_ms)};
        rc = svc_db_exec(c,
                         "INSERT INTO billing_holds (request_id, user_id, units, model, "
                         "prompt_tokens, completion_limit, source, state, charged, "
                         "created_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?)",
                         p, 9, NULL, NULL);
        if (rc != SVC_OK)
            return rc; /* SVC_EEXIST: a replay; the caller reads the existing hold */
    }
    out->result = BILLING_RESERVE_OK;
    out->held_units = hold;
    out->completion_limit = limit;
    out->balance = a.a.balance;
    out->unlimited = a.a.unlimited;
    out->expires_at_ms = now + x->s->opts.hold_ttl_ms;
    return SVC_OK;
}

int billing_reserve(struct billing_store *s, const struct billing_reserve_in *in,
                    struct billing_reserve_out *out, char *err, size_t errlen)
{
    struct reserve_ctx x = {s, in, out};
    struct svc_db_conn *c = NULL;
    struct hold_row h;
    struct acct_row a;
    int rc;

    why_clear(err, errlen);
    if ((rc = check_text(err, errlen, "request_id", in->request_id, BILLING_ID_MAX, 1)) != SVC_OK ||
        (rc = check_user(err, errlen, in->user_id)) != SVC_OK ||
        (rc = check_text(err, errlen, "model", in->model, BILLING_PRICE_MODEL_MAX, 0)) != SVC_OK ||
        (rc = check_text(err, errlen, "source", in->source, BILLING_SOURCE_MAX, 0)) != SVC_OK ||
        (rc = check_text(err, errlen, "username", in->username, BILLING_NAME_MAX - 1, 0)) !=
            SVC_OK ||
        (rc = check_tokens(err, errlen, "prompt_tokens", in->prompt_tokens)) != SVC_OK ||
        (rc = check_tokens(err, errlen, "max_completion_tokens", in->max_completion_tokens)) !=
            SVC_OK ||
        (rc = check_tokens(err, errlen, "min_completion_tokens", in->min_completion_tokens)) !=
            SVC_OK)
        return rc;
    rc = with_tx(s, reserve_tx, &x, err, errlen);
    if (rc != SVC_EEXIST)
        return rc;
    /* A replay of a request id: answer with the hold it already has. */
    if ((rc = svc_db_conn_get(s->db, &c, -1)) != SVC_OK)
        return rc;
    if ((rc = hold_read(c, in->request_id, 0, &h)) == SVC_OK && h.found && h.user_id == in->user_id)
        rc = acct_read(c, h.user_id, 0, &a);
    svc_db_conn_put(s->db, &c);
    if (rc != SVC_OK)
        return rc;
    if (!h.found)
        return why(err, errlen, SVC_ECONFLICT, "request_id collided and vanished; retry");
    if (h.kind == BILLING_KIND_LEASE)
        return why(err, errlen, SVC_ECONFLICT, "request_id is a lease");
    if (h.user_id != in->user_id)
        return why(err, errlen, SVC_ECONFLICT, "request_id is in use by another user");
    memset(out, 0, sizeof(*out));
    out->result = BILLING_RESERVE_OK;
    out->duplicate = 1;
    out->held_units = h.units;
    out->completion_limit = h.completion_limit;
    out->expires_at_ms = h.expires_at_ms;
    out->balance = a.a.balance;
    out->unlimited = a.a.unlimited;
    return SVC_OK;
}

/* ---- settle ---- */

struct settle_ctx {
    struct billing_store *s;
    const struct billing_settle_in *in;
    struct billing_settle_out *out;
    char *err; /* the caller's, for why() */
    size_t errlen;
};

static int settle_tx(void *ctx, struct svc_db_conn *c)
{
    struct settle_ctx *x = ctx;
    const struct billing_settle_in *in = x->in;
    struct billing_settle_out *out = x->out;
    int64_t now = svc_util_wallclock_ms();
    struct ledger_row l = {0};
    struct hold_row h;
    struct acct_row a;
    int64_t cost, charge;
    const char *model;
    int rc;

    memset(out, 0, sizeof(*out));
    if ((rc = hold_read(c, in->request_id, 1, &h)) != SVC_OK)
        return rc;
    if (!h.found)
        return why(x->err, x->errlen, SVC_ENOTFOUND, "no hold for this request_id");
    if (h.kind == BILLING_KIND_LEASE)
        return why(x->err, x->errlen, SVC_ECONFLICT,
                   "request_id is a lease; report to it with LeaseSync");
    if ((rc = acct_read(c, h.user_id, 1, &a)) != SVC_OK)
        return rc;
    if (!a.found)
        return why(x->err, x->errlen, SVC_ENOTFOUND, "the account of this hold is gone");
    if (h.state == BILLING_HOLD_SETTLED || h.state == BILLING_HOLD_SETTLED_LATE) {
        out->already_settled = 1;
        out->charged = h.charged;
        out->balance = a.a.balance;
        return SVC_OK;
    }
    if (h.state == BILLING_HOLD_RELEASED || h.state == BILLING_HOLD_RELEASED_LATE)
        return why(x->err, x->errlen, SVC_ECONFLICT, "the hold was released; nothing to settle");
    model = in->model && in->model[0] ? in->model : h.model;
    cost = cost_of(x->s, model, in->prompt_tokens, in->completion_tokens);
    l.tokens_in = in->prompt_tokens;
    l.tokens_out = in->completion_tokens;
    l.model = model;
    l.request_id = in->request_id;
    l.source = h.source;
    if (h.state == BILLING_HOLD_OPEN) {
        charge = capped_charge(&a, cost, h.units);
        if ((rc = hold_close(c, in->request_id, BILLING_HOLD_OPEN, BILLING_HOLD_SETTLED, charge,
                             in->prompt_tokens, in->completion_tokens, now)) != SVC_OK ||
            (rc = charge_append(c, NULL, &a, &l, cost, charge, h.units, in->estimated, now)) !=
                SVC_OK)
            return rc;
        out->refunded = max64(h.units - charge, 0);
    } else { /* BILLING_HOLD_EXPIRED: correct the expiry charge to the real usage */
        charge = a.a.unlimited ? cost : min64(cost, h.charged);
        if ((rc = acct_delta(c, &a, 0, charge - h.charged, 0, 1, now)) != SVC_OK ||
            (rc = hold_close(c, in->request_id, BILLING_HOLD_EXPIRED, BILLING_HOLD_SETTLED_LATE,
                             charge, in->prompt_tokens, in->completion_tokens, now)) != SVC_OK)
            return rc;
        l.kind = charge > h.charged ? "charge" : "refund";
        l.units = h.charged - charge;
        ledger_note(&l, "settled after expiry: expiry charged %lld, real usage %lld%s",
                    (long long)h.charged, (long long)charge, in->estimated ? " (estimated)" : "");
        out->refunded = max64(h.charged - charge, 0);
        if ((rc = ledger_append(c, &a, &l, now, NULL)) != SVC_OK)
            return rc;
    }
    out->charged = charge;
    out->balance = a.a.balance;
    return SVC_OK;
}

int billing_settle(struct billing_store *s, const struct billing_settle_in *in,
                   struct billing_settle_out *out, char *err, size_t errlen)
{
    struct settle_ctx x = {s, in, out};
    int rc;

    x.err = err;
    x.errlen = errlen;
    why_clear(err, errlen);
    if ((rc = check_text(err, errlen, "request_id", in->request_id, BILLING_ID_MAX, 1)) != SVC_OK ||
        (rc = check_text(err, errlen, "model", in->model, BILLING_PRICE_MODEL_MAX, 0)) != SVC_OK ||
        (rc = check_tokens(err, errlen, "prompt_tokens", in->prompt_tokens)) != SVC_OK ||
        (rc = check_tokens(err, errlen, "completion_tokens", in->completion_tokens)) != SVC_OK)
        return rc;
    return with_tx(s, settle_tx, &x, err, errlen);
}

/* ---- release ---- */

struct release_ctx {
    const char *request_id, *reason;
    struct billing_release_out *out;
    char *err; /* the caller's, for why() */
    size_t errlen;
};

static int release_tx(void *ctx, struct svc_db_conn *c)
{
    struct release_ctx *x = ctx;
    struct billing_release_out *out = x->out;
    int64_t now = svc_util_wallclock_ms();
    struct ledger_row l = {0};
    struct hold_row h;
    struct acct_row a;
    int rc;

    memset(out, 0, sizeof(*out));
    if ((rc = hold_read(c, x->request_id, 1, &h)) != SVC_OK)
        return rc;
    if (!h.found)
        return why(x->err, x->errlen, SVC_ENOTFOUND, "no hold for this request_id");
    if (h.kind == BILLING_KIND_LEASE)
        return why(x->err, x->errlen, SVC_ECONFLICT,
                   "request_id is a lease; close it with LeaseSync");
    if ((rc = acct_read(c, h.user_id, 1, &a)) != SVC_OK)
        return rc;
    if (h.state != BILLING_HOLD_OPEN && h.state != BILLING_HOLD_EXPIRED) {
        out->already_closed = 1;
        out->balance = a.a.balance;
        return SVC_OK;
    }
    if (!a.found)
        return why(x->err, x->errlen, SVC_ENOTFOUND, "the account of this hold is gone");
    if (h.state == BILLING_HOLD_OPEN) {
        if ((rc = acct_delta(c, &a, 0, 0, -h.units, 0, now)) != SVC_OK ||
            (rc = hold_close(c, x->request_id, BILLING_HOLD_OPEN, BILLING_HOLD_RELEASED, 0, 0, 0,
                             now)) != SVC_OK)
            return rc;
        out->refunded = h.units;
    } else {
        if ((rc = acct_delta(c, &a, 0, -h.charged, 0, 1, now)) != SVC_OK ||
            (rc = hold_close(c, x->request_id, BILLING_HOLD_EXPIRED, BILLING_HOLD_RELEASED_LATE, 0,
                             0, 0, now)) != SVC_OK)
            return rc;
        l.kind = "refund";
        l.units = h.charged;
        l.model = h.model;
        l.request_id = x->request_id;
        l.source = h.source;
        ledger_note(&l, "released after expiry: %s", nz(x->reason));
        if ((rc = ledger_append(c, &a, &l, now, NULL)) != SVC_OK)
            return rc;
        out->refunded = h.charged;
    }
    out->balance = a.a.balance;
    return SVC_OK;
}

int billing_release(struct billing_store *s, const char *request_id, const char *reason,
                    struct billing_release_out *out, char *err, size_t errlen)
{
    struct release_ctx x = {request_id, reason, out};
    int rc;

    x.err = err;
    x.errlen = errlen;
    why_clear(err, errlen);
    if ((rc = check_text(err, errlen, "request_id", request_id, BILLING_ID_MAX, 1)) != SVC_OK ||
        (rc = check_text(err, errlen, "reason", reason, 1024, 0)) != SVC_OK)
        return rc;
    return with_tx(s, release_tx, &x, err, errlen);
}

/* ---- expiry ---- */

struct expire_ctx {
    struct billing_store *s;
    const char *request_id;
    const struct billing_journal *journal; /* a lease's, read before the transaction */
    int expired;
    int lease; /* it was a lease */
    int64_t charged;
    int from_journal; /* the charge is the journal's */
};

/*
 * The requests a usable journal says ended unreported (no applied LeaseSync carried them, by
 * its "_b"): each is charged its usage with its own "charge" row, from the lease
 * first, as its LeaseSync would have done. *units is what is left of the lease; *charged and
 * *ended grow by what was charged and how many.
 */
static int journal_charges(struct svc_db_conn *c, struct expire_ctx *x, const struct hold_row *h,
                           struct acct_row *a, int64_t now, int64_t *units, int64_t *charged,
                           int *ended)
{
    for (size_t i = 0; i < x->journal->n; i++) {
        const struct billing_journal_entry *e = &x->journal->v[i];
        struct ledger_row l = {0};
        int64_t cost, charge, from_lease;
        int rc;

        if (!e->ended || billing_journal_applied(x->journal, e, h->lease_seq))
            continue;
        cost = cost_of(x->s, e->model, e->prompt, e->completion);
        charge = capped_charge(a, cost, *units);
        from_lease = min64(charge, *units);
        l.tokens_in = e->prompt;
        l.tokens_out = e->completion;
        l.model = e->model;
        l.request_id = e->request_id;
        l.source = h->source;
        ledger_note(&l, "from the charge journal of its expired lease");
        if ((rc = charge_append(c, NULL, a, &l, cost, charge, from_lease, e->estimated, now)) !=
            SVC_OK)
            return rc;
        *units -= from_lease;
        *charged += charge;
        (*ended)++;
    }
    return SVC_OK;
}

/* The worst case of the requests a usable journal says were in flight; *n how many. */
static int64_t journal_in_flight(struct expire_ctx *x, int *n)
{
    int64_t worst = 0;

    *n = 0;
    for (size_t i = 0; i < x->journal->n; i++) {
        const struct billing_journal_entry *e = &x->journal->v[i];
        if (!e->ended) {
            worst += cost_of(x->s, e->model, e->prompt, e->completion);
            (*n)++;
        }
    }
    return worst;
}

/*
 * Expires an open lease (row h, locked, of account a): its caller stopped reporting. With a
 * usable journal, the requests it says ended unreported are charged their usage (journal_charges)
 * and those in flight their worst case; without one, what the caller last said was in flight.
 * What is in flight is capped at what is left of the lease (it could not admit more), one
 * "expiry" row; the rest is freed. A late LeaseSync refunds up to what the expiry charged.
 */
static int expire_lease(struct svc_db_conn *c, struct expire_ctx *x, const struct hold_row *h,
                        struct acct_row *a, int64_t now)
{
    const char *lease_id = x->request_id;
    struct ledger_row l = {0};
    int64_t units = h->units, ended_charged = 0, charge;
    int in_flight = 0, ended = 0, rc;

    x->from_journal = x->journal != NULL && x->journal->usable;
    if (x->from_journal) {
        if ((rc = journal_charges(c, x, h, a, now, &units, &ended_charged, &ended)) != SVC_OK)
            return rc;
        charge = min64(journal_in_flight(x, &in_flight), units);
    } else {
        charge = min64(max64(h->inflight, 0), units);
    }
    x->charged = ended_charged + charge;
    if ((rc = acct_delta(c, a, 0, charge, -units, charge > 0, now)) != SVC_OK ||
        (rc = hold_close(c, lease_id, BILLING_HOLD_OPEN, BILLING_HOLD_EXPIRED, x->charged, 0, 0,
                         now)) != SVC_OK)
        return rc;
    if (charge == 0)
        return SVC_OK; /* nothing in flight: no expiry row (an idle lease is the common case) */
    l.kind = "expiry";
    l.units = -charge;
    l.request_id = lease_id;
    l.source = h->source;
    if (x->from_journal)
        ledger_note(&l,
                    "lease expired: %d request(s) in flight at their worst case, %lld (of %lld "
                    "leased), from its journal; %d ended unreported charged apart; a late report "
                    "refunds it",
                    in_flight, (long long)charge, (long long)h->units, ended);
    else
        ledger_note(&l,
                    "lease expired: its last reported inflight %lld charged (of %lld leased); "
                    "a late report refunds it",
                    (long long)charge, (long long)h->units);
    return ledger_append(c, a, &l, now, NULL);
}

static int expire_tx(void *ctx, struct svc_db_conn *c)
{
    struct expire_ctx *x = ctx;
    int64_t now = svc_util_wallclock_ms();
    struct ledger_row l = {0};
    struct hold_row h;
    struct acct_row a;
    int rc;

    x->expired = 0;
    if ((rc = hold_read(c, x->request_id, 1, &h)) != SVC_OK)
        return rc;
    if (!h.found || h.state != BILLING_HOLD_OPEN || h.expires_at_ms > now)
        return SVC_OK; /* settled meanwhile, or another replica expired it */
    if ((rc = acct_read(c, h.user_id, 1, &a)) != SVC_OK)
        return rc;
    if (!a.found)
        return hold_close(c, x->request_id, BILLING_HOLD_OPEN, BILLING_HOLD_RELEASED, 0, 0, 0, now);
    x->lease = h.kind == BILLING_KIND_LEASE;
    if (x->lease) {
        if ((rc = expire_lease(c, x, &h, &a, now)) != SVC_OK)
            return rc;
        x->expired = 1;
        return SVC_OK;
    }
    if ((rc = acct_delta(c, &a, 0, h.units, -h.units, 1, now)) != SVC_OK ||
        (rc = hold_close(c, x->request_id, BILLING_HOLD_OPEN, BILLING_HOLD_EXPIRED, h.units,
                         h.prompt_tokens, h.completion_limit, now)) != SVC_OK)
        return rc;
    l.kind = "expiry";
    l.units = -h.units;
    l.tokens_in = h.prompt_tokens;
    l.tokens_out = h.completion_limit;
    l.model = h.model;
    l.request_id = x->request_id;
    l.source = h.source;
    ledger_note(&l, "hold expired unsettled: the held worst case is charged; a late Settle "
                    "corrects it");
    if ((rc = ledger_append(c, &a, &l, now, NULL)) != SVC_OK)
        return rc;
    x->expired = 1;
    return SVC_OK;
}

int billing_expire_due(struct billing_store *s, int max, const struct billing_journal_io *io,
                       int *expired)
{
    struct svc_db_conn *c = NULL;
    struct svc_db_rows *rows = NULL;
    struct svc_db_param p[] = {SVC_DB_I64(svc_util_wallclock_ms()), SVC_DB_I64(max)};
    int rc;

    *expired = 0;
    if ((rc = svc_db_conn_get(s->db, &c, -1)) != SVC_OK)
        return rc;
    rc = svc_db_query(c,
                      "SELECT request_id, kind FROM billing_holds WHERE state = 0 AND "
                      "expires_at_ms <= ? ORDER BY expires_at_ms LIMIT ?",
                      p, 2, &rows);
    for (size_t i = 0; rc == SVC_OK && i < svc_db_rows_count(rows); i++) {
        struct billing_journal j = {0};
        struct expire_ctx x = {0};

        x.s = s;
        x.request_id = svc_db_rows_text(rows, i, 0);
        if (svc_db_rows_i64(rows, i, 1) == BILLING_KIND_LEASE && io != NULL) {
            io->read(io->ctx, x.request_id, &j);
            x.journal = &j;
        }
        rc = svc_db_tx_run(c, expire_tx, &x);
        billing_journal_clear(&j);
        if (rc == SVC_OK && x.expired && x.lease && io != NULL)
            io->drop(io->ctx, x.request_id);
        if (rc == SVC_OK && x.expired) {
            (*expired)++;
            if (x.lease)
                SVC_LOG_NOTICE(x.request_id, "expire",
                               "lease expired unreported: %lld charged (%s), the rest freed",
                               (long long)x.charged,
                               x.from_journal ? "its journal" : "its last reported inflight");
            else
                SVC_LOG_NOTICE(x.request_id, "expire", "hold expired unsettled: charged in full");
        }
    }
    svc_db_rows_destroy(&rows);
    svc_db_conn_put(s->db, &c);
    return rc;
}

int billing_purge_closed(struct billing_store *s, int64_t before_ms, int max, int *purged)
{
    struct svc_db_conn *c = NULL;
    struct svc_db_param p[] = {SVC_DB_I64(before_ms), SVC_DB_I64(max)};
    uint64_t n = 0;
    int rc;

    *purged = 0;
    if ((rc = svc_db_conn_get(s->db, &c, -1)) != SVC_OK)
        return rc;
    /* Open holds have closed_at_ms = 0 but are never older than the TTL: keep state <> 0. */
    rc = svc_db_exec(c,
                     s->mysql ? "DELETE FROM billing_holds WHERE closed_at_ms > 0 AND "
                                "closed_at_ms < ? AND state <> 0 LIMIT ?"
                              : "DELETE FROM billing_holds WHERE request_id IN (SELECT request_id "
                                "FROM billing_holds WHERE closed_at_ms > 0 AND closed_at_ms < ? "
                                "AND state <> 0 LIMIT ?)",
                     p, 2, &n, NULL);
    svc_db_conn_put(s->db, &c);
    if (rc == SVC_OK)
        *purged = (int)n;
    return rc;
}

/* ---- leases (docs/billing.md "Leases") ---- */

struct lease_ctx {
    struct billing_store *s;
    const struct billing_lease_in *in;
    struct billing_lease_out *out;
    char *err; /* the caller's, for why() */
    size_t errlen;
};

/* The answer every LeaseSync ends with: the lease h (found = 0: none), account a, the prices. */
static void lease_answer(struct billing_store *s, const struct billing_lease_in *in,
                         const struct hold_row *h, const struct acct_row *a,
                         struct billing_lease_out *out)
{
    int open = h->found && h->state == BILLING_HOLD_OPEN;

    out->result = BILLING_RESERVE_OK;
    out->units = open ? h->units : 0;
    out->closed = !open;
    out->expires_at_ms = open ? h->expires_at_ms : 0;
    out->balance = a->a.balance;
    out->unlimited = a->a.unlimited;
    for (size_t i = 0; i < in->n_models; i++)
        out->prices[i].r = price_source(s, in->models[i], &out->prices[i].source);
}

static int lease_tx(void *ctx, struct svc_db_conn *c)
{
    struct lease_ctx *x = ctx;
    const struct billing_lease_in *in = x->in;
    struct billing_lease_out *out = x->out;
    const char *source = in->source && in->source[0] ? in->source : NULL;
    int64_t now = svc_util_wallclock_ms();
    int64_t total = 0, units;
    struct hold_row h;
    struct acct_row a;
    struct ledger_batch batch;
    uint64_t n = 0;
    int was_open, rc;

    memset(out, 0, sizeof(*out));
    batch.s = x->s;
    batch.c = c;
    batch.user_id = in->user_id;
    batch.now = now;
    batch.n = 0;
    /* Lock order of every transaction: the hold (lease) row, then the account row. A lease
     * that may not exist yet (seq 1) is not read FOR UPDATE at first: on MariaDB a locking read
     * of a missing key takes a gap lock, and concurrent creations of other leases would
     * deadlock on it; the account lock serialises them. A later seq has its row (one locking
     * read); when it does not (the lease was purged), a deadlock on that gap lock is retried
     * like any other. */
    if (in->seq > 1)
        rc = hold_read(c, in->lease_id, 1, &h);
    else if ((rc = hold_read(c, in->lease_id, 0, &h)) == SVC_OK && h.found)
        rc = hold_read(c, in->lease_id, 1, &h);
    if (rc != SVC_OK)
        return rc;
    if (h.found && h.user_id != in->user_id)
        return why(x->err, x->errlen, SVC_ECONFLICT, "lease_id is in use by another user");
    if (h.found && h.kind != BILLING_KIND_LEASE)
        return why(x->err, x->errlen, SVC_ECONFLICT, "lease_id is the request_id of a hold");
    if ((rc = acct_read(c, in->user_id, 1, &a)) != SVC_OK)
        return rc;
    if (!a.found || a.deleted) {
        if (!in->create_unlimited) {
            out->result = BILLING_RESERVE_NO_ACCOUNT;
            out->closed = 1;
            return SVC_OK;
        }
        if ((rc = acct_create_unlimited(c, &a, in->user_id, in->username, now)) != SVC_OK)
            return rc;
    }
    if (h.found && in->seq <= h.lease_seq) {
        lease_answer(x->s, in, &h, &a, out);
        out->duplicate = 1;
        return SVC_OK;
    }
    /* Every change of the account below (charges, refund, resize) is one UPDATE at the end. */
    a.deferred = 1;
    if (!h.found && in->seq == 1) {
        struct svc_db_param p[] = {SVC_DB_TEXT(in->lease_id), SVC_DB_I64(in->user_id),
                                   SVC_DB_TEXT(nz(source)), SVC_DB_I64(now),
                                   SVC_DB_I64(now + x->s->opts.lease_ttl_ms)};
        rc = svc_db_exec(c,
                         "INSERT INTO billing_holds (request_id, user_id, units, model, "
                         "prompt_tokens, completion_limit, source, state, charged, created_at_ms, "
                         "expires_at_ms, kind) VALUES (?, ?, 0, '', 0, 0, ?, 0, 0, ?, ?, 1)",
                         p, 5, NULL, NULL);
        if (rc == SVC_EEXIST)
            return SVC_ECONFLICT; /* created concurrently (a retry racing itself): replay */
        if (rc != SVC_OK)
            return rc;
        memset(&h, 0, sizeof(h));
        h.found = 1;
        h.user_id = in->user_id;
        h.kind = BILLING_KIND_LEASE;
        h.state = BILLING_HOLD_OPEN;
        snprintf(h.source, sizeof(h.source), "%s", nz(source));
    }
    if (source == NULL)
        source = h.source; /* the lease's (a purged lease has none) */
    units = h.found && h.state == BILLING_HOLD_OPEN ? h.units : 0;
    for (size_t i = 0; i < in->n_charges; i++)
        total += cost_of(x->s, in->charges[i].model, in->charges[i].prompt_tokens,
                         in->charges[i].completion_tokens);
    if (h.found && h.state == BILLING_HOLD_EXPIRED && h.charged > 0 && total > 0) {
        /* A late report after the expiry charge E: the user pays max(E, real), never both. The
         * refund comes first so that the charges below can take it back even from an empty
         * balance (refunding after them would leave E - min(E, real) when the balance was 0). */
        struct ledger_row l = {0};
        int64_t refund = min64(h.charged, total);

        if ((rc = acct_delta(c, &a, 0, -refund, 0, 1, now)) != SVC_OK)
            return rc;
        l.kind = "refund";
        l.units = refund;
        l.request_id = in->lease_id;
        l.source = source;
        ledger_note(&l, "late lease report after expiry: %lld of the expiry charge %lld refunded",
                    (long long)refund, (long long)h.charged);
        if ((rc = ledger_batch_add(&batch, &a, &l)) != SVC_OK)
            return rc;
        h.charged -= refund;
    }
    for (size_t i = 0; i < in->n_charges; i++) {
        const struct billing_lease_charge *ch = &in->charges[i];
        int64_t cost = cost_of(x->s, ch->model, ch->prompt_tokens, ch->completion_tokens);
        int64_t charge = capped_charge(&a, cost, units);
        int64_t from_lease = min64(charge, units);
        struct ledger_row l = {0};

        l.tokens_in = ch->prompt_tokens;
        l.tokens_out = ch->completion_tokens;
        l.model = ch->model;
        l.request_id = ch->request_id;
        l.source = source;
        if ((rc = charge_append(c, &batch, &a, &l, cost, charge, from_lease, ch->estimated,
                                now)) != SVC_OK)
            return rc;
        units -= from_lease;
        out->charged_units += charge;
    }
    was_open = h.found && h.state == BILLING_HOLD_OPEN;
    if (was_open) {
        int64_t target = in->close ? 0 : max64(in->want_units, in->inflight_units);
        int64_t change = 0;

        if (a.a.unlimited)
            target = 0; /* nothing is leased: the caller admits everything */
        if (target > units) {
            /* A lease takes at most a quarter of the free balance (but always what its
             * requests in flight need, while there is some): near the end of a balance the
             * leases stay small and the rest is left to other replicas and the exact path. */
            int64_t room = max64(a.a.balance, 0), cap = room / BILLING_LEASE_SHARE;
            if (in->inflight_units - units > cap)
                cap = in->inflight_units - units;
            change = min64(target - units, min64(cap, room));
        }
        else if (target < units)
            change = target - units;
        if (change != 0 && (rc = acct_delta(c, &a, 0, 0, change, 0, now)) != SVC_OK)
            return rc;
        h.units = units + change;
        h.inflight = in->inflight_units;
        h.state = in->close ? BILLING_HOLD_SETTLED : BILLING_HOLD_OPEN;
        h.expires_at_ms = in->close ? now : now + x->s->opts.lease_ttl_ms;
        struct svc_db_param p[] = {SVC_DB_I64(h.units),         SVC_DB_I64(h.inflight),
                                   SVC_DB_I64(in->seq),         SVC_DB_I64(h.state),
                                   SVC_DB_I64(h.expires_at_ms), SVC_DB_I64(in->close ? now : 0),
                                   SVC_DB_TEXT(in->lease_id)};
        rc = svc_db_exec(c,
                         "UPDATE billing_holds SET units = ?, inflight = ?, lease_seq = ?, "
                         "state = ?, expires_at_ms = ?, closed_at_ms = ? "
                         "WHERE request_id = ? AND state = 0",
                         p, 7, &n, NULL);
    } else if (h.found) {
        /* closed or expired: only the seq (so a replay is a duplicate) and what is left of the
         * expiry charge to refund */
        struct svc_db_param p[] = {SVC_DB_I64(in->seq), SVC_DB_I64(h.charged),
                                   SVC_DB_TEXT(in->lease_id)};
        rc = svc_db_exec(c,
                         "UPDATE billing_holds SET lease_seq = ?, charged = ? WHERE request_id = ?",
                         p, 3, &n, NULL);
    }
    if (h.found) {
        if (rc != SVC_OK)
            return rc;
        if (n != 1)
            return SVC_ECONFLICT; /* changed under us: replay */
    }
    if ((rc = ledger_batch_flush(&batch)) != SVC_OK || (rc = acct_flush(c, &a, now)) != SVC_OK)
        return rc;
    lease_answer(x->s, in, &h, &a, out);
    return SVC_OK;
}

static int check_units(char *err, size_t errlen, const char *what, int64_t v)
{
    if (v < 0 || v > BILLING_SAFE_MAX)
        return why(err, errlen, SVC_EINVAL, "%s out of range 0..%lld: %lld", what, BILLING_SAFE_MAX,
                   (long long)v);
    return SVC_OK;
}

int billing_lease_sync(struct billing_store *s, const struct billing_lease_in *in,
                       struct billing_lease_out *out, char *err, size_t errlen)
{
    struct lease_ctx x = {s, in, out, err, errlen};
    int rc;

    why_clear(err, errlen);
    memset(out, 0, sizeof(*out));
    if ((rc = check_text(err, errlen, "lease_id", in->lease_id, BILLING_ID_MAX, 1)) != SVC_OK ||
        (rc = check_user(err, errlen, in->user_id)) != SVC_OK ||
        (rc = check_units(err, errlen, "inflight_units", in->inflight_units)) != SVC_OK ||
        (rc = check_units(err, errlen, "want_units", in->want_units)) != SVC_OK ||
        (rc = check_text(err, errlen, "source", in->source, BILLING_SOURCE_MAX - 1, 0)) != SVC_OK ||
        (rc = check_text(err, errlen, "username", in->username, BILLING_NAME_MAX - 1, 0)) != SVC_OK)
        return rc;
    if (in->seq < 1)
        return why(err, errlen, SVC_EINVAL, "seq must be >= 1: %lld", (long long)in->seq);
    if (in->n_charges > BILLING_LEASE_CHARGES_MAX)
        return why(err, errlen, SVC_EINVAL, "charges: at most %d in one call, got %zu",
                   BILLING_LEASE_CHARGES_MAX, in->n_charges);
    if (in->n_models > BILLING_LEASE_MODELS_MAX)
        return why(err, errlen, SVC_EINVAL, "models: at most %d in one call, got %zu",
                   BILLING_LEASE_MODELS_MAX, in->n_models);
    for (size_t i = 0; i < in->n_charges; i++) {
        const struct billing_lease_charge *ch = &in->charges[i];
        char what[64];

        snprintf(what, sizeof(what), "charges[%zu].request_id", i);
        if ((rc = check_text(err, errlen, what, ch->request_id, BILLING_ID_MAX, 1)) != SVC_OK)
            return rc;
        snprintf(what, sizeof(what), "charges[%zu].model", i);
        if ((rc = check_text(err, errlen, what, ch->model, BILLING_PRICE_MODEL_MAX, 0)) != SVC_OK)
            return rc;
        snprintf(what, sizeof(what), "charges[%zu].prompt_tokens", i);
        if ((rc = check_tokens(err, errlen, what, ch->prompt_tokens)) != SVC_OK)
            return rc;
        snprintf(what, sizeof(what), "charges[%zu].completion_tokens", i);
        if ((rc = check_tokens(err, errlen, what, ch->completion_tokens)) != SVC_OK)
            return rc;
    }
    for (size_t i = 0; i < in->n_models; i++) {
        char what[32];

        snprintf(what, sizeof(what), "models[%zu]", i);
        if ((rc = check_text(err, errlen, what, in->models[i], BILLING_PRICE_MODEL_MAX - 1, 0)) !=
            SVC_OK)
            return rc;
    }
    return with_tx(s, lease_tx, &x, err, errlen);
}

/* ---- recharge / adjust ---- */

struct credit_ctx {
    const struct billing_credit_in *in;
    struct billing_credit_out *out;
    const char *kind;
    char idem[BILLING_ID_MAX + 16];
    char idem_hash[2 * SVC_CRYPTO_SHA256_BYTES + 1];
    char *err; /* the caller's, for why() */
    size_t errlen;
};

/*
 * The digest stored with an idempotency key: SHA-256 (hex) of what the request asks for (kind,
 * user, units, force). The actor and the note only describe it, so a webhook delivered again
 * with another note is still the same request.
 */
static void credit_hash(const char *kind, const struct billing_credit_in *in,
                        char out[2 * SVC_CRYPTO_SHA256_BYTES + 1])
{
    unsigned char h[SVC_CRYPTO_SHA256_BYTES];
    char text[160];
    int n = snprintf(text, sizeof(text), "v1\n%s\n%lld\n%lld\n%d", kind, (long long)in->user_id,
                     (long long)in->units, in->force ? 1 : 0);

    svc_crypto_sha256(h, text, (size_t)n);
    svc_crypto_hex(out, h, sizeof(h));
}

static int64_t abs64(int64_t v)
{
    return v < 0 ? -v : v;
}

/*
 * SVC_ETOOLARGE when crediting units (signed, |units| <= BILLING_UNITS_OP_MAX) would take granted,
 * granted - used or the spendable balance of account r outside +-BILLING_SAFE_MAX. Every stored
 * value is within that range and |units| is far below 2^62, so the sums cannot overflow.
 */
static int credit_in_range(char *err, size_t errlen, const struct acct_row *r, int64_t units)
{
    if (abs64(r->a.granted + units) > BILLING_SAFE_MAX ||
        abs64(r->a.granted - r->a.used + units) > BILLING_SAFE_MAX ||
        abs64(r->a.balance + units) > BILLING_SAFE_MAX)
        return why(err, errlen, SVC_ETOOLARGE,
                   "the balance would leave +-%lld (2^53 - 1, the largest integer JSON clients "
                   "read exactly): balance %lld, granted %lld, change %lld",
                   BILLING_SAFE_MAX, (long long)r->a.balance, (long long)r->a.granted,
                   (long long)units);
    return SVC_OK;
}

static int credit_tx(void *ctx, struct svc_db_conn *c)
{
    struct credit_ctx *x = ctx;
    const struct billing_credit_in *in = x->in;
    int64_t now = svc_util_wallclock_ms();
    struct ledger_row l = {0};
    struct acct_row a;
    int rc;

    if ((rc = acct_read(c, in->user_id, 1, &a)) != SVC_OK)
        return rc;
    if (!a.found || a.deleted)
        return why(x->err, x->errlen, SVC_ENOTFOUND, "no account for user_id %lld",
                   (long long)in->user_id);
    if (x->idem[0]) {
        /* A key seen before is answered by credit() before any rule runs: an exact replay must
         * not be refused because the balance changed since, another request must hear that. */
        struct svc_db_rows *rows = NULL;
        struct svc_db_param p[] = {SVC_DB_TEXT(x->idem)};
        size_t n;
        if ((rc = svc_db_query(c, "SELECT id FROM billing_ledger WHERE idem_key = ?", p, 1,
                               &rows)) != SVC_OK)
            return rc;
        n = svc_db_rows_count(rows);
        svc_db_rows_destroy(&rows);
        if (n > 0)
            return SVC_EEXIST;
    }
    if ((rc = credit_in_range(x->err, x->errlen, &a, in->units)) != SVC_OK)
        return rc;
    if (strcmp(x->kind, "adjustment") == 0 && in->units < 0 && !in->force &&
        a.a.balance + in->units < 0)
        return why(x->err, x->errlen, SVC_ECONFLICT,
                   "adjustment would take the balance below zero "
                   "(balance %lld, adjustment %lld); use force",
                   (long long)a.a.balance, (long long)in->units);
    if ((rc = acct_delta(c, &a, in->units, 0, 0, 1, now)) != SVC_OK)
        return rc;
    l.kind = x->kind;
    l.units = in->units;
    l.idem_key = x->idem[0] ? x->idem : NULL;
    l.idem_hash = x->idem[0] ? x->idem_hash : NULL;
    ledger_note(&l, "%s%s%s", nz(in->actor),
                in->actor && in->actor[0] && in->note && in->note[0] ? ": " : "", nz(in->note));
    if ((rc = ledger_append(c, &a, &l, now, &x->out->ledger_id)) != SVC_OK)
        return rc; /* SVC_EEXIST: the key was used before */
    x->out->account = a.a;
    return SVC_OK;
}

static int credit(struct billing_store *s, const struct billing_credit_in *in,
                  struct billing_credit_out *out, const char *kind, char *err, size_t errlen)
{
    struct credit_ctx x = {in, out, kind, {0}, {0}};
    struct svc_db_conn *c = NULL;
    struct svc_db_rows *rows = NULL;
    struct acct_row a;
    int rc;

    x.err = err;
    x.errlen = errlen;
    why_clear(err, errlen);
    memset(out, 0, sizeof(*out));
    if ((rc = check_user(err, errlen, in->user_id)) != SVC_OK ||
        (rc = check_text(err, errlen, "idempotency_key", in->idempotency_key, BILLING_ID_MAX, 0)) !=
            SVC_OK ||
        (rc = check_text(err, errlen, "actor", in->actor, 128, 0)) != SVC_OK ||
        (rc = check_text(err, errlen, "note", in->note, 1024, 0)) != SVC_OK)
        return rc;
    if (in->idempotency_key && in->idempotency_key[0]) {
        snprintf(x.idem, sizeof(x.idem), "%s:%s", kind, in->idempotency_key);
        credit_hash(kind, in, x.idem_hash);
    }
    rc = with_tx(s, credit_tx, &x, err, errlen);
    if (rc != SVC_EEXIST)
        return rc;
    /* The idempotency key was used before: the same request is answered with that credit and
     * credits nothing now; another request is refused, never answered as if it were done. */
    if ((rc = svc_db_conn_get(s->db, &c, -1)) != SVC_OK)
        return rc;
    {
        struct svc_db_param p[] = {SVC_DB_TEXT(x.idem)};
        rc = svc_db_query(c, "SELECT id, user_id, idem_hash FROM billing_ledger WHERE idem_key = ?",
                          p, 1, &rows);
    }
    if (rc == SVC_OK && svc_db_rows_count(rows) == 1) {
        const char *h = svc_db_rows_text(rows, 0, 2);
        if (svc_db_rows_i64(rows, 0, 1) != in->user_id) {
            rc = why(err, errlen, SVC_ECONFLICT,
                     "idempotency_key was used for another user (a different "
                     "request)");
        } else if (h != NULL && h[0] != '\0' && strcmp(h, x.idem_hash) != 0) {
            /* rows written before the digest was stored (NULL) match any request of that user */
            rc = why(err, errlen, SVC_ECONFLICT,
                     "idempotency_key was used with a different request");
        } else if ((rc = acct_read(c, in->user_id, 0, &a)) == SVC_OK) {
            out->ledger_id = svc_db_rows_i64(rows, 0, 0);
            out->account = a.a;
            out->duplicate = 1;
        }
    } else if (rc == SVC_OK) {
        rc = why(err, errlen, SVC_ECONFLICT, "idempotency_key collided; retry");
    }
    svc_db_rows_destroy(&rows);
    svc_db_conn_put(s->db, &c);
    return rc;
}

int billing_recharge(struct billing_store *s, const struct billing_credit_in *in,
                     struct billing_credit_out *out, char *err, size_t errlen)
{
    if (in->units <= 0 || in->units > BILLING_UNITS_OP_MAX)
        return why(err, errlen, SVC_EINVAL, "units must be 1..%lld", BILLING_UNITS_OP_MAX);
    return credit(s, in, out, "recharge", err, errlen);
}

int billing_adjust(struct billing_store *s, const struct billing_credit_in *in,
                   struct billing_credit_out *out, char *err, size_t errlen)
{
    if (in->units == 0 || in->units > BILLING_UNITS_OP_MAX || in->units < -BILLING_UNITS_OP_MAX)
        return why(err, errlen, SVC_EINVAL, "units must be non-zero and within +-%lld",
                   BILLING_UNITS_OP_MAX);
    return credit(s, in, out, "adjustment", err, errlen);
}

/* ---- accounts ---- */

struct create_ctx {
    int64_t user_id, initial;
    const char *username, *actor;
    int unlimited;
    struct billing_account *acct;
    int *existed;
    char *err; /* the caller's, for why() */
    size_t errlen;
};

static int create_tx(void *ctx, struct svc_db_conn *c)
{
    struct create_ctx *x = ctx;
    int64_t now = svc_util_wallclock_ms();
    struct ledger_row l = {0};
    struct acct_row a;
    int rc;

    *x->existed = 0;
    if ((rc = acct_read(c, x->user_id, 1, &a)) != SVC_OK)
        return rc;
    if (a.found && !a.deleted) {
        *x->existed = 1;
        *x->acct = a.a;
        return SVC_OK;
    }
    {
        struct svc_db_param p[] = {SVC_DB_TEXT(nz(x->username)), SVC_DB_BOOL(x->unlimited),
                                   SVC_DB_I64(now), SVC_DB_I64(x->user_id)};
        rc = svc_db_exec(c,
                         a.found ? "UPDATE billing_accounts SET username = ?, unlimited = ?, "
                                   "deleted = 0, updated_at_ms = ? WHERE user_id = ?"
                                 : "INSERT INTO billing_accounts (username, unlimited, "
                                   "updated_at_ms, user_id) VALUES (?, ?, ?, ?)",
                         p, 4, NULL, NULL);
        if (rc == SVC_EEXIST)
            return SVC_ECONFLICT; /* created concurrently: replay and find it */
        if (rc != SVC_OK)
            return rc;
    }
    if ((rc = acct_read(c, x->user_id, 1, &a)) != SVC_OK)
        return rc;
    if (x->initial > 0) {
        /* a revived account keeps its history, so its initial credit is bounded too */
        if ((rc = credit_in_range(x->err, x->errlen, &a, x->initial)) != SVC_OK ||
            (rc = acct_delta(c, &a, x->initial, 0, 0, 1, now)) != SVC_OK)
            return rc;
        l.kind = "recharge";
        l.units = x->initial;
        ledger_note(&l, "initial credit%s%s", x->actor && x->actor[0] ? " by " : "", nz(x->actor));
        if ((rc = ledger_append(c, &a, &l, now, NULL)) != SVC_OK)
            return rc;
    }
    *x->acct = a.a;
    return SVC_OK;
}

int billing_account_create(struct billing_store *s, int64_t user_id, const char *username,
                           int64_t initial_units, int unlimited, const char *actor,
                           struct billing_account *acct, int *existed, char *err, size_t errlen)
{
    struct create_ctx x = {user_id, initial_units, username, actor, unlimited, acct, existed};
    int rc;

    x.err = err;
    x.errlen = errlen;
    why_clear(err, errlen);
    memset(acct, 0, sizeof(*acct));
    if ((rc = check_user(err, errlen, user_id)) != SVC_OK ||
        (rc = check_text(err, errlen, "username", username, BILLING_NAME_MAX - 1, 0)) != SVC_OK ||
        (rc = check_text(err, errlen, "actor", actor, 128, 0)) != SVC_OK)
        return rc;
    if (initial_units < 0 || initial_units > BILLING_UNITS_OP_MAX)
        return why(err, errlen, SVC_EINVAL, "initial_units must be 0..%lld", BILLING_UNITS_OP_MAX);
    return with_tx(s, create_tx, &x, err, errlen);
}

int billing_account_get(struct billing_store *s, int64_t user_id, struct billing_account *acct,
                        char *err, size_t errlen)
{
    struct svc_db_conn *c = NULL;
    struct acct_row a;
    int rc;

    why_clear(err, errlen);
    memset(acct, 0, sizeof(*acct));
    if ((rc = check_user(err, errlen, user_id)) != SVC_OK)
        return rc;
    if ((rc = svc_db_conn_get(s->db, &c, -1)) != SVC_OK)
        return rc;
    rc = acct_read(c, user_id, 0, &a);
    svc_db_conn_put(s->db, &c);
    if (rc != SVC_OK)
        return rc;
    if (!a.found || a.deleted)
        return why(err, errlen, SVC_ENOTFOUND, "no account for user_id %lld", (long long)user_id);
    *acct = a.a;
    return SVC_OK;
}

struct delete_ctx {
    int64_t user_id;
    int *deleted;
};

static int delete_tx(void *ctx, struct svc_db_conn *c)
{
    struct delete_ctx *x = ctx;
    int64_t now = svc_util_wallclock_ms();
    struct svc_db_param p[] = {SVC_DB_I64(now), SVC_DB_I64(x->user_id)};
    uint64_t n = 0;
    int rc;

    rc = svc_db_exec(c,
                     "UPDATE billing_accounts SET deleted = 1, held = 0, updated_at_ms = ? "
                     "WHERE user_id = ? AND deleted = 0",
                     p, 2, &n, NULL);
    if (rc != SVC_OK)
        return rc;
    *x->deleted = n == 1;
    if (n == 1)
        rc = svc_db_exec(c,
                         "UPDATE billing_holds SET state = 2, closed_at_ms = ? "
                         "WHERE user_id = ? AND state = 0",
                         p, 2, NULL, NULL);
    return rc;
}

int billing_account_delete(struct billing_store *s, int64_t user_id, int *deleted, char *err,
                           size_t errlen)
{
    struct delete_ctx x = {user_id, deleted};
    int rc;

    why_clear(err, errlen);
    *deleted = 0;
    if ((rc = check_user(err, errlen, user_id)) != SVC_OK)
        return rc;
    return with_tx(s, delete_tx, &x, err, errlen);
}

/* ---- usage ---- */

int billing_usage_ledger(struct billing_store *s, int64_t user_id, int64_t before_id, int limit,
                         struct svc_db_rows **rows)
{
    struct svc_db_conn *c = NULL;
    struct svc_db_param p[] = {
        SVC_DB_I64(user_id), SVC_DB_I64(before_id > 0 ? before_id : INT64_MAX), SVC_DB_I64(limit)};
    int rc;

    *rows = NULL;
    if ((rc = svc_db_conn_get(s->db, &c, -1)) != SVC_OK)
        return rc;
    rc = svc_db_query(c,
                      "SELECT id, user_id, kind, units, tokens_in, tokens_out, model, request_id, "
                      "balance_after, created_at_ms, note FROM billing_ledger "
                      "WHERE user_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
                      p, 3, rows);
    svc_db_conn_put(s->db, &c);
    return rc;
}

int billing_usage_daily(struct billing_store *s, int64_t user_id, int days,
                        struct svc_db_rows **rows)
{
    struct svc_db_conn *c = NULL;
    int64_t today = svc_util_wallclock_ms() / MS_PER_DAY;
    struct svc_db_param p[] = {SVC_DB_I64(user_id), SVC_DB_I64(today - days + 1)};
    int rc;

    *rows = NULL;
    if ((rc = svc_db_conn_get(s->db, &c, -1)) != SVC_OK)
        return rc;
    rc = svc_db_query(c,
                      "SELECT day, SUM(CASE WHEN kind = 'refund' THEN 0 ELSE 1 END), "
                      "SUM(CASE WHEN kind = 'refund' THEN 0 ELSE tokens_in END), "
                      "SUM(CASE WHEN kind = 'refund' THEN 0 ELSE tokens_out END), "
                      "0 - SUM(units) FROM billing_ledger WHERE user_id = ? AND day >= ? AND "
                      "kind IN ('charge', 'expiry', 'refund') GROUP BY day ORDER BY day DESC",
                      p, 2, rows);
    svc_db_conn_put(s->db, &c);
    return rc;
}

/* ---- prices set by operators (decision 38) ---- */

struct price_ctx {
    const char *model, *actor;
    struct billing_ratio r;
    int del;
    int *changed; /* set: 1 = created; delete: 1 = deleted */
    char *err;    /* the caller's, for why() */
    size_t errlen;
};

static int price_tx(void *ctx, struct svc_db_conn *c)
{
    struct price_ctx *x = ctx;
    int64_t now = svc_util_wallclock_ms();
    struct svc_db_rows *rows = NULL;
    uint64_t n = 0;
    int rc;

    *x->changed = 0;
    if (x->del) {
        struct svc_db_param p[] = {SVC_DB_TEXT(x->model)};
        if ((rc = svc_db_exec(c, "DELETE FROM billing_prices WHERE model = ?", p, 1, &n, NULL)) !=
            SVC_OK)
            return rc;
        if (n == 0)
            return SVC_OK; /* nothing changed: the version stays */
        *x->changed = 1;
    } else {
        struct svc_db_param p[] = {SVC_DB_I64(x->r.in_milli), SVC_DB_I64(x->r.out_milli),
                                   SVC_DB_I64(now), SVC_DB_TEXT(x->actor), SVC_DB_TEXT(x->model)};
        if ((rc = svc_db_exec(c,
                              "UPDATE billing_prices SET in_milli = ?, out_milli = ?, "
                              "updated_at_ms = ?, updated_by = ? WHERE model = ?",
                              p, 5, &n, NULL)) != SVC_OK)
            return rc;
        if (n == 0) {
            if ((rc = svc_db_query(c, "SELECT COUNT(*) FROM billing_prices", NULL, 0, &rows)) !=
                SVC_OK)
                return rc;
            n = (uint64_t)svc_db_rows_i64(rows, 0, 0);
            svc_db_rows_destroy(&rows);
            if (n >= BILLING_PRICE_ENTRIES_MAX)
                return why(x->err, x->errlen, SVC_ECONFLICT, "at most %d prices can be set",
                           BILLING_PRICE_ENTRIES_MAX);
            struct svc_db_param q[] = {SVC_DB_TEXT(x->model), SVC_DB_I64(x->r.in_milli),
                                       SVC_DB_I64(x->r.out_milli), SVC_DB_I64(now),
                                       SVC_DB_TEXT(x->actor)};
            if ((rc = svc_db_exec(c,
                                  "INSERT INTO billing_prices (model, in_milli, out_milli, "
                                  "updated_at_ms, updated_by) VALUES (?, ?, ?, ?, ?)",
                                  q, 5, NULL, NULL)) != SVC_OK)
                return rc == SVC_EEXIST ? SVC_ECONFLICT : rc; /* set concurrently: retried */
            *x->changed = 1;
        }
    }
    return svc_db_exec(c, "UPDATE billing_price_version SET version = version + 1 WHERE id = 1",
                       NULL, 0, NULL, NULL);
}

static int price_args(char *err, size_t errlen, const char *model, const char *actor)
{
    if (!billing_price_model_ok(model))
        return why(err, errlen, SVC_EINVAL,
                   "model must be \"*\" or 1-%d bytes of A-Z a-z 0-9 . _ - : / @ +, not starting "
                   "with - or .",
                   BILLING_PRICE_MODEL_MAX - 1);
    return check_text(err, errlen, "actor", actor, 63, 0);
}

int billing_price_set(struct billing_store *s, const char *model, const char *input,
                      const char *output, const char *actor, struct billing_ratio *r, int *created,
                      char *err, size_t errlen)
{
    struct price_ctx x = {model, nz(actor), {0, 0}, 0, created};
    int rc;

    x.err = err;
    x.errlen = errlen;
    why_clear(err, errlen);
    *created = 0;
    if ((rc = price_args(err, errlen, model, x.actor)) != SVC_OK)
        return rc;
    if (billing_price_parse(input, &x.r.in_milli) != SVC_OK ||
        billing_price_parse(output, &x.r.out_milli) != SVC_OK)
        return why(err, errlen, SVC_EINVAL,
                   "input and output must be units per token: digits with at most 3 decimals, "
                   "0 to %d (as in BILLING_PRICES)",
                   BILLING_PRICE_MILLI_MAX / 1000);
    if ((rc = with_tx(s, price_tx, &x, err, errlen)) != SVC_OK)
        return rc;
    *r = x.r;
    /* this replica prices with it at once; the others within their next poll */
    if (billing_store_prices_refresh(s) != SVC_OK)
        SVC_LOG_WARN(NULL, "prices", "reload after set failed; the poll retries");
    return SVC_OK;
}

int billing_price_delete(struct billing_store *s, const char *model, const char *actor,
                         int *deleted, char *err, size_t errlen)
{
    struct price_ctx x = {model, nz(actor), {0, 0}, 1, deleted};
    int rc;

    x.err = err;
    x.errlen = errlen;
    why_clear(err, errlen);
    *deleted = 0;
    if ((rc = price_args(err, errlen, model, x.actor)) != SVC_OK)
        return rc;
    if ((rc = with_tx(s, price_tx, &x, err, errlen)) != SVC_OK)
        return rc;
    if (billing_store_prices_refresh(s) != SVC_OK)
        SVC_LOG_WARN(NULL, "prices", "reload after delete failed; the poll retries");
    return SVC_OK;
}

int billing_price_rows(struct billing_store *s, struct svc_db_rows **rows, int64_t *version)
{
    struct svc_db_conn *c = NULL;
    struct svc_db_rows *v = NULL;
    int rc;

    *rows = NULL;
    *version = 0;
    if ((rc = svc_db_conn_get(s->db, &c, -1)) != SVC_OK)
        return rc;
    rc = svc_db_query(c, "SELECT version FROM billing_price_version WHERE id = 1", NULL, 0, &v);
    if (rc == SVC_OK) {
        *version = svc_db_rows_i64(v, 0, 0);
        rc = svc_db_query(c,
                          "SELECT model, in_milli, out_milli, updated_at_ms, updated_by "
                          "FROM billing_prices ORDER BY model",
                          NULL, 0, rows);
    }
    svc_db_rows_destroy(&v);
    svc_db_conn_put(s->db, &c);
    return rc;
}

int64_t billing_store_prices_version(struct billing_store *s)
{
    int64_t v;

    pthread_rwlock_rdlock(&s->prices_lock);
    v = s->prices_version;
    pthread_rwlock_unlock(&s->prices_lock);
    return v;
}

const struct billing_prices *billing_store_env_prices(const struct billing_store *s)
{
    return s->prices;
}

int billing_store_prices_refresh(struct billing_store *s)
{
    struct svc_db_conn *c = NULL;
    struct svc_db_rows *v = NULL, *rows = NULL;
    struct billing_price_row *list = NULL;
    struct billing_prices *next = NULL, *old = NULL, *sql = NULL, *old_sql = NULL;
    int64_t version;
    size_t n = 0;
    int rc;

    pthread_mutex_lock(&s->refresh_lock);
    if ((rc = svc_db_conn_get(s->db, &c, -1)) != SVC_OK)
        goto out;
    /* The cheap check, every poll: one primary-key row. */
    if ((rc = svc_db_query(c, "SELECT version FROM billing_price_version WHERE id = 1", NULL, 0,
                           &v)) != SVC_OK)
        goto out;
    version = svc_db_rows_i64(v, 0, 0);
    if (version == billing_store_prices_version(s))
        goto out;
    if ((rc = svc_db_query(c, "SELECT model, in_milli, out_milli FROM billing_prices", NULL, 0,
                           &rows)) != SVC_OK)
        goto out;
    n = svc_db_rows_count(rows);
    list = calloc(n ? n : 1, sizeof(*list));
    if (list == NULL) {
        rc = SVC_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const char *m = svc_db_rows_text(rows, i, 0);
        snprintf(list[i].model, sizeof(list[i].model), "%s", m ? m : "");
        list[i].r.in_milli = svc_db_rows_i64(rows, i, 1);
        list[i].r.out_milli = svc_db_rows_i64(rows, i, 2);
    }
    if ((rc = billing_prices_merge(&next, s->prices, list, n)) != SVC_OK ||
        (rc = billing_prices_merge(&sql, NULL, list, n)) != SVC_OK)
        goto out;
    pthread_rwlock_wrlock(&s->prices_lock);
    old = s->merged;
    old_sql = s->sql;
    s->merged = next;
    s->sql = sql;
    s->prices_version = version;
    pthread_rwlock_unlock(&s->prices_lock);
    next = sql = NULL;
    billing_prices_destroy(&old);
    billing_prices_destroy(&old_sql);
    SVC_LOG_NOTICE(NULL, "prices", "loaded %zu price%s from SQL (version %lld)", n,
                   n == 1 ? "" : "s", (long long)version);
out:
    svc_db_conn_put(s->db, &c);
    svc_db_rows_destroy(&v);
    svc_db_rows_destroy(&rows);
    billing_prices_destroy(&next);
    billing_prices_destroy(&sql);
    free(list);
    pthread_mutex_unlock(&s->refresh_lock);
    return rc;
}
