#ifndef BILLING_RELAY_H
#define BILLING_RELAY_H

/*
 * Background work of a billing replica, one thread each:
 *
 *   relay    moves the ledger rows of billing_outbox rows to the Redis Stream (XADD MAXLEN ~),
 *            oldest first, and deletes (or shrinks) each outbox row once Redis acknowledged its
 *            entries. Only the holder of the SQL lease row billing_relay_lease('relay-runs')
 *            relays, so events of one user leave in user_seq
 *            order even with many replicas; a dead holder's lease runs out after lease_ms and
 *            another replica takes over. Delivery is at-least-once: a holder that dies between
 *            XADD and DELETE makes its successor send that entry again (same id).
 *   sweeper  expires open holds whose time has passed (billing_expire_due), on every replica;
 *            each hold is expired once (state guard in the transaction); and deletes closed
 *            holds older than hold_retention_ms (billing_purge_closed).
 *   prices   every prices_refresh_ms reads the SQL price table's version and reloads the table
 *            when it changed (billing_store_prices_refresh), on every replica.
 *
 * Thread-safety: create/destroy from the main thread only.
 */

#include <stddef.h>
#include <stdint.h>

#include "svc/err.h"

struct svc_db;
struct billing_store;
struct billing_relay;

struct billing_relay_opts {
    const char *redis_url;     /* "" = no relay (events wait in the outbox) */
    const char *stream;        /* BILLING_EVENTS_STREAM */
    int64_t maxlen;            /* BILLING_EVENTS_MAXLEN (approximate trim) */
    int min_replicas;          /* BILLING_EVENTS_REPLICAS: WAIT for them after each XADD */
    int64_t poll_ms;           /* idle wait between outbox polls */
    int64_t lease_ms;          /* relay lease length */
    int64_t sweep_ms;          /* hold-expiry sweep interval */
    int64_t batch;             /* outbox rows per poll */
    int64_t hold_retention_ms; /* closed holds older than this are purged by the sweeper */
    int64_t prices_refresh_ms; /* BILLING_PRICES_REFRESH_MS: price version poll (0 = 1000) */
};

/*
 * The events stream as Redis describes it (XINFO STREAM, XINFO GROUPS) and the outbox's size,
 * for the ops API. Strings are copied into the caller's struct; groups beyond
 * BILLING_EVENTS_GROUPS_MAX are left out (n_groups counts the ones kept, more = 1).
 */
#define BILLING_EVENTS_GROUPS_MAX 32
struct billing_events_info {
    int exists;
    int64_t length;
    char first_id[48], last_id[48];
    struct {
        char name[128];
        int64_t consumers, pending, lag;
        char last_delivered_id[48];
    } groups[BILLING_EVENTS_GROUPS_MAX];
    size_t n_groups;
    int more;
    int64_t outbox_pending;
    char redis_error[160]; /* "" when Redis answered */
};

/* Fills *info. Returns 0 (Redis errors are reported in info->redis_error), or an SQL error
 * from counting the outbox. Thread-safe (uses the relay's Redis pool). */
int billing_relay_events_info(struct billing_relay *r,
                              struct billing_events_info *info) SVC_MUST_CHECK;

/* Metrics the threads update (owned by the caller, must outlive the relay). */
struct billing_relay_stats {
    struct svc_metric *relayed, *relay_errors, *expired, *outbox_pending, *leader;
};

/*
 * Starts both threads. db, store and stats are borrowed. On success *out owns the threads: stop
 * them with billing_relay_destroy (which joins them). Returns 0, SVC_ENOMEM, SVC_EINVAL (bad
 * Redis URL) or SVC_EINTERNAL (thread creation).
 */
int billing_relay_create(struct billing_relay **out, struct svc_db *db, struct billing_store *store,
                         const struct billing_relay_opts *opts,
                         const struct billing_relay_stats *stats) SVC_MUST_CHECK;

/* BILLING_EVENTS_STREAM ("" for NULL). Borrowed from the options. */
const char *billing_relay_stream(const struct billing_relay *r);

/* Whether name can be the events stream: without { or }, or with a non-empty hash tag (the
 * relay writes a key in the stream's Cluster slot, which other braces would move). */
int billing_relay_stream_name_ok(const char *name);

/* Wakes the relay at once (after a commit that wrote outbox rows). Thread-safe; r may be NULL. */
void billing_relay_kick(struct billing_relay *r);

/* Stops and joins the threads, frees everything; sets *r to NULL. Accepts NULL. */
void billing_relay_destroy(struct billing_relay **r);

#endif
