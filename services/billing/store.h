#ifndef BILLING_STORE_H
#define BILLING_STORE_H

/*
 * The billing money rules on SQL (docs/billing.md has the full contract). Every function runs
 * one short transaction through svc_db_tx_run (conflicts and lost connections are retried) and
 * is thread-safe: the store only holds the pool and immutable configuration.
 *
 * Tables (component "billing"): billing_accounts (one row per user: granted, used, held, seq),
 * billing_holds (one row per Reserve, and one per lease of LeaseSync, keyed by request_id /
 * lease_id), billing_ledger (one row per change of
 * granted - used, never updated or deleted), billing_outbox (one row per ledger row, deleted by
 * the relay once the event is in the Redis Stream), billing_relay_lease (who relays).
 *
 * Spendable balance = granted - used - held. A ledger row's units are the signed change of
 * granted - used (the money actually moved); holds live in billing_holds and show as `held`.
 *
 * Return codes: 0, SVC_EINVAL (bad argument, reason in err), SVC_ENOTFOUND (no such account /
 * hold, reason in err), SVC_ECONFLICT (a rule refused it: reason in err),
 * SVC_ETOOLARGE (a sum would overflow), SVC_EUNAVAIL / SVC_ETIMEDOUT (SQL unreachable or pool
 * exhausted), SVC_EIO (other SQL failure, logged).
 */

#include <stdint.h>

#include "journal.h"
#include "price.h"
#include "svc/err.h"

struct svc_db;
struct svc_db_rows;
struct billing_store;

#define BILLING_ID_MAX 128                      /* bytes of a request id or idempotency key */
#define BILLING_WHY_MAX 256                     /* bytes of an err buffer: holds every reason */
#define BILLING_NAME_MAX 256                    /* bytes of a username */
#define BILLING_NOTE_MAX 255                    /* bytes of a ledger note (longer notes are cut) */
#define BILLING_SOURCE_MAX 16                   /* bytes of a source ("chat", "proxy") */
#define BILLING_UNITS_OP_MAX 1000000000000000LL /* 1e15: one recharge / adjustment */
/* 2^53 - 1: the largest integer a JSON (JavaScript) client reads exactly. No recharge, adjustment
 * or initial credit may take an account's granted, granted - used or balance outside
 * [-BILLING_SAFE_MAX, BILLING_SAFE_MAX] (SVC_ETOOLARGE). */
#define BILLING_SAFE_MAX 9007199254740991LL
/* A LeaseSync grows a lease by at most 1/BILLING_LEASE_SHARE of the free balance. */
#define BILLING_LEASE_SHARE 4

/* Hold states in billing_holds.state. */
enum billing_hold_state {
    BILLING_HOLD_OPEN = 0,
    BILLING_HOLD_SETTLED = 1,
    BILLING_HOLD_RELEASED = 2,
    BILLING_HOLD_EXPIRED = 3,      /* charged in full by the sweeper; a late Settle corrects */
    BILLING_HOLD_SETTLED_LATE = 4, /* settled after expiry */
    BILLING_HOLD_RELEASED_LATE = 5 /* released after expiry: the expiry charge was refunded */
};

/* What a billing_holds row is (billing_holds.kind). A lease uses the states OPEN, SETTLED
 * (closed by its caller) and EXPIRED (RELEASED when its account was deleted). */
enum billing_hold_kind {
    BILLING_KIND_HOLD = 0,  /* one request: Reserve, then Settle or Release */
    BILLING_KIND_LEASE = 1, /* a caller replica's slice of a balance: LeaseSync */
};

struct billing_store_opts {
    int64_t hold_ttl_ms;       /* an open hold is expired this long after Reserve */
    int64_t min_reply_tokens;  /* default smallest reply a capped Reserve still accepts */
    int64_t hold_retention_ms; /* closed holds are deleted this long after closing (sweeper) */
    int64_t lease_ttl_ms;      /* an open lease is expired this long after its last LeaseSync */
};

struct billing_account {
    int64_t user_id;
    char username[BILLING_NAME_MAX];
    int64_t granted, used, held, balance; /* balance = granted - used - held */
    int unlimited;
    int64_t updated_at_ms;
};

/* Creates the billing tables (idempotent; safe with several replicas starting at once). */
int billing_store_migrate(struct svc_db *db) SVC_MUST_CHECK;

/* db and prices are borrowed and must outlive the store. *out: free with billing_store_destroy. */
int billing_store_create(struct billing_store **out, struct svc_db *db,
                         const struct billing_prices *prices,
                         const struct billing_store_opts *opts) SVC_MUST_CHECK;
void billing_store_destroy(struct billing_store **s);

/*
 * The calls that refuse for a reason a client must read (reserve, settle, release, recharge,
 * adjust, account create/get/delete, price set/delete) end with `char *err, size_t errlen`: err
 * (may be NULL) receives the reason of an SVC_EINVAL, SVC_ENOTFOUND, SVC_ECONFLICT or
 * SVC_ETOOLARGE the store itself decided, and is "" otherwise (a SQL failure is logged instead).
 * BILLING_WHY_MAX bytes hold every reason.
 */

/* ---- reserve / settle / release ---- */

enum billing_reserve_result {
    BILLING_RESERVE_OK = 1,
    BILLING_RESERVE_INSUFFICIENT = 2,
    BILLING_RESERVE_NO_ACCOUNT = 3,
};

struct billing_reserve_in {
    const char *request_id;                       /* 1..BILLING_ID_MAX bytes */
    int64_t user_id;                              /* > 0 */
    const char *model;                            /* may be NULL or "" */
    int64_t prompt_tokens, max_completion_tokens; /* 0..BILLING_TOKENS_MAX */
    int64_t min_completion_tokens;                /* 0 = the store's min_reply_tokens */
    int completion_limit_fixed;
    const char *source;
    int create_unlimited;
    const char *username;
};

struct billing_reserve_out {
    int result; /* enum billing_reserve_result */
    int64_t held_units, completion_limit, balance, expires_at_ms;
    int duplicate, unlimited;
};

/*
 * Holds prompt + max completion (priced) with one conditional UPDATE; when that does not fit
 * and the caller allows it, caps the hold to the balance and lowers completion_limit, down to
 * prompt + the minimum reply; below that answers INSUFFICIENT and changes nothing.
 * Idempotent by request_id (a replay returns the existing hold with duplicate = 1; the same id
 * for another user is SVC_ECONFLICT).
 */
int billing_reserve(struct billing_store *s, const struct billing_reserve_in *in,
                    struct billing_reserve_out *out, char *err, size_t errlen) SVC_MUST_CHECK;

struct billing_settle_in {
    const char *request_id;
    int64_t prompt_tokens, completion_tokens;
    const char *model; /* "" or NULL = the model given to Reserve */
    int estimated;
};

struct billing_settle_out {
    int64_t charged, refunded, balance;
    int already_settled;
};

/*
 * Charges the real usage (at most hold + spendable balance, so never below zero; unlimited
 * accounts are charged in full) and frees the hold: one ledger row "charge". A second call
 * charges nothing (already_settled). After expiry: corrects the expiry charge to the real usage
 * (one row "refund", or "charge" for unlimited accounts). A released hold: SVC_ECONFLICT.
 * Unknown request id: SVC_ENOTFOUND.
 */
int billing_settle(struct billing_store *s, const struct billing_settle_in *in,
                   struct billing_settle_out *out, char *err, size_t errlen) SVC_MUST_CHECK;

struct billing_release_out {
    int64_t refunded, balance;
    int already_closed;
};

/* Frees an open hold untouched (no ledger row: granted - used does not change). After expiry,
 * refunds the expiry charge (one row "refund"). Closed holds: already_closed. */
int billing_release(struct billing_store *s, const char *request_id, const char *reason,
                    struct billing_release_out *out, char *err, size_t errlen) SVC_MUST_CHECK;

/* ---- leases (docs/billing.md "Leases", proto LeaseSyncRequest) ---- */

#define BILLING_LEASE_CHARGES_MAX 4096 /* charges in one LeaseSync */
#define BILLING_LEASE_MODELS_MAX 16    /* models whose prices one LeaseSync answers */

struct billing_lease_charge {
    const char *request_id;                   /* 1..BILLING_ID_MAX bytes */
    const char *model;                        /* may be NULL or "" (the default price) */
    int64_t prompt_tokens, completion_tokens; /* 0..BILLING_TOKENS_MAX */
    int estimated;
};

struct billing_lease_in {
    const char *lease_id; /* 1..BILLING_ID_MAX bytes, shares billing_holds' key space */
    int64_t user_id;      /* > 0 */
    int64_t seq;          /* >= 1; seq 1 creates the lease */
    const struct billing_lease_charge *charges; /* n_charges <= BILLING_LEASE_CHARGES_MAX */
    size_t n_charges;
    int64_t inflight_units, want_units; /* 0..BILLING_SAFE_MAX */
    int close;
    const char *const *models; /* n_models <= BILLING_LEASE_MODELS_MAX, each a price name */
    size_t n_models;
    const char *source; /* < BILLING_SOURCE_MAX bytes */
    int create_unlimited;
    const char *username;
};

struct billing_lease_price {
    struct billing_ratio r;
    const char *source; /* "sql", "env" or "default" (static strings) */
};

struct billing_lease_out {
    int result;            /* BILLING_RESERVE_OK or BILLING_RESERVE_NO_ACCOUNT */
    int64_t units;         /* held by the lease now (0 once closed) */
    int64_t balance;       /* spendable outside every hold and lease */
    int64_t expires_at_ms; /* 0 when there is no open lease */
    int64_t charged_units; /* what this call's charges cost in all (0 for a duplicate) */
    int unlimited, closed, duplicate;
    struct billing_lease_price prices[BILLING_LEASE_MODELS_MAX]; /* one per in->models[i] */
};

/*
 * Creates, reports to, resizes or closes the lease in->lease_id, in one transaction (grouped):
 * records each charge (one "charge" row each, from the lease's units, then the balance, never
 * below zero), refunds an expiry charge the charges show was too much, sets inflight, grows the
 * lease towards max(want, inflight) as far as the balance goes or shrinks it, or closes it.
 * Idempotent by (lease_id, seq): seq <= the last applied one answers the lease as it is now with
 * duplicate = 1 and changes nothing. A lease_id of another user or of a hold: SVC_ECONFLICT. A
 * missing lease with seq > 1 (purged): the charges are taken from the balance, closed = 1. No
 * account (and not create_unlimited): result NO_ACCOUNT, closed = 1, nothing changes.
 * out->prices[i] is the ratio in->models[i] is priced with now. in's pointers are borrowed.
 * Errors as the other calls (SVC_EINVAL names the field). Thread-safe.
 */
int billing_lease_sync(struct billing_store *s, const struct billing_lease_in *in,
                       struct billing_lease_out *out, char *err, size_t errlen) SVC_MUST_CHECK;

/* How the sweeper reaches the charge journals of leases (journal.h); NULL: it cannot. */
struct billing_journal_io {
    /* Fills *j (zeroed) with lease_id's journal; j->usable = 0 when there is none or it cannot be
     * read. Called outside any transaction. */
    void (*read)(void *ctx, const char *lease_id, struct billing_journal *j);
    /* lease_id has expired: its journal is no longer needed. */
    void (*drop)(void *ctx, const char *lease_id);
    void *ctx;
};

/*
 * Expires (charges in full, one row "expiry") up to max open holds whose time has passed, and
 * open leases whose caller stopped reporting: with a usable journal (io), the worst case of its
 * requests in flight and the usage of those that ended unreported are charged; without one, the
 * inflight it last reported; capped at the lease's units either way, the rest freed. *expired
 * receives how many (holds and leases). Safe with several replicas sweeping at once.
 */
int billing_expire_due(struct billing_store *s, int max, const struct billing_journal_io *io,
                       int *expired) SVC_MUST_CHECK;

/*
 * Deletes up to max holds closed before before_ms (their request ids can then no longer be
 * replayed: a Settle of such an id is SVC_ENOTFOUND). *purged receives how many.
 */
int billing_purge_closed(struct billing_store *s, int64_t before_ms, int max,
                         int *purged) SVC_MUST_CHECK;

/* ---- operator money ---- */

struct billing_credit_in {
    int64_t user_id;
    int64_t units; /* recharge: 1..1e15; adjust: non-zero, |units| <= 1e15 */
    int force;     /* adjust only: may go below zero */
    const char *idempotency_key, *actor, *note;
};

struct billing_credit_out {
    struct billing_account account;
    int duplicate;
    int64_t ledger_id;
};

int billing_recharge(struct billing_store *s, const struct billing_credit_in *in,
                     struct billing_credit_out *out, char *err, size_t errlen) SVC_MUST_CHECK;
int billing_adjust(struct billing_store *s, const struct billing_credit_in *in,
                   struct billing_credit_out *out, char *err, size_t errlen) SVC_MUST_CHECK;

/* ---- accounts ---- */

/* Idempotent by user_id: an existing account is returned with *existed = 1 and not credited. A
 * deleted account is revived with its history. initial_units > 0 is one "recharge" row. */
int billing_account_create(struct billing_store *s, int64_t user_id, const char *username,
                           int64_t initial_units, int unlimited, const char *actor,
                           struct billing_account *acct, int *existed, char *err,
                           size_t errlen) SVC_MUST_CHECK;
int billing_account_get(struct billing_store *s, int64_t user_id, struct billing_account *acct,
                        char *err, size_t errlen) SVC_MUST_CHECK;
/* Marks the account deleted and releases its open holds; ledger rows stay. */
int billing_account_delete(struct billing_store *s, int64_t user_id, int *deleted, char *err,
                           size_t errlen) SVC_MUST_CHECK;

/* ---- usage ---- */

/*
 * Ledger rows of a user, newest first, id < before_id (0 = newest), at most limit. Columns:
 * 0 id, 1 user_id, 2 kind, 3 units, 4 tokens_in, 5 tokens_out, 6 model, 7 request_id,
 * 8 balance_after, 9 created_at_ms, 10 note. *rows: free with svc_db_rows_destroy.
 */
int billing_usage_ledger(struct billing_store *s, int64_t user_id, int64_t before_id, int limit,
                         struct svc_db_rows **rows) SVC_MUST_CHECK;

/*
 * Per-day totals (UTC) for the last `days` days, newest first. Columns: 0 day (days since the
 * epoch), 1 requests (charge + expiry rows), 2 tokens_in, 3 tokens_out, 4 units charged net
 * (charges + expiries - refunds).
 */
int billing_usage_daily(struct billing_store *s, int64_t user_id, int days,
                        struct svc_db_rows **rows) SVC_MUST_CHECK;

/* ---- prices set by operators (docs/billing.md "Prices", decision 38) ---- */

/*
 * Creates or replaces the SQL price of model ("*" = the default) from decimal text as
 * BILLING_PRICES writes it, and bumps billing_price_version in the same transaction; then
 * reloads this replica's table (the others poll: billing_store_prices_refresh). *r receives the
 * ratio, *created 1 when the model had no SQL price. SVC_EINVAL (model or ratio, reason in
 * err), SVC_ECONFLICT (BILLING_PRICE_ENTRIES_MAX prices already), SQL errors.
 */
int billing_price_set(struct billing_store *s, const char *model, const char *input,
                      const char *output, const char *actor, struct billing_ratio *r, int *created,
                      char *err, size_t errlen) SVC_MUST_CHECK;

/* Removes the SQL price of model (*deleted 0 when it had none; the version is then unchanged). */
int billing_price_delete(struct billing_store *s, const char *model, const char *actor,
                         int *deleted, char *err, size_t errlen) SVC_MUST_CHECK;

/*
 * The SQL prices, by model. Columns: 0 model, 1 in_milli, 2 out_milli, 3 updated_at_ms,
 * 4 updated_by. *rows: free with svc_db_rows_destroy. *version: the table's version now.
 */
int billing_price_rows(struct billing_store *s, struct svc_db_rows **rows,
                       int64_t *version) SVC_MUST_CHECK;

/*
 * Reads billing_price_version (one primary-key row) and, when it differs from the loaded one,
 * reloads billing_prices and swaps in BILLING_PRICES merged with them (SQL wins per model name).
 * Reserve and Settle price under a read lock that the swap holds only for a pointer exchange.
 * Called once at start, by the poll thread (relay.h) and after each set/delete. Thread-safe.
 */
int billing_store_prices_refresh(struct billing_store *s) SVC_MUST_CHECK;

/* The version the replica prices with (-1 before the first load). Thread-safe. */
int64_t billing_store_prices_version(struct billing_store *s);

/* BILLING_PRICES as configured (borrowed). */
const struct billing_prices *billing_store_env_prices(const struct billing_store *s);

#endif
