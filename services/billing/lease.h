#ifndef BILLING_LEASE_H
#define BILLING_LEASE_H

/*
 * Per-replica balance leases, the caller's side (decision 46, docs/billing.md "Leases"): part of
 * the billing client library. A loop holds, per user, a lease: a slice of the user's balance that
 * billing keeps held in SQL. A request whose worst case fits in what the lease has left is
 * admitted from memory, with no round trip; its real cost is queued and reported to billing in
 * the next LeaseSync (one call carries every charge of the lease since the last one, at most
 * every BILLING_LEASE_FLUSH_MS), which also tops the lease up to what the traffic needs and
 * renews it.
 *
 * A request that does not fit waits for a LeaseSync that grows the lease. When the balance cannot
 * grow it, the lease is shrunk to what its requests in flight need, and the request (and the
 * user's next ones for BILLING_LEASE_LEAN_MS) take the exact path instead: the Reserve RPC, which
 * caps the hold to the balance or refuses it. So a lease never refuses a request the balance could
 * pay, except while another replica's lease holds that part of the balance.
 *
 * Money: every admitted request ends with exactly one billing_lease_settle or
 * billing_lease_release. A LeaseSync is repeated unchanged (same seq) until billing answers it, so
 * a charge is applied once. With a journal (opts.journal, journal.h), every admission and every
 * ended request's usage is also written to Redis as it happens (the usage before the caller
 * answers its client), so a replica that dies is charged exactly by billing's expiry: the worst
 * case of its requests in flight and the usage of those that ended unreported. Without one (or
 * once Redis refused a journal write), the expiry charges the worst case of the requests it had
 * reported in flight; requests admitted and finished since its last LeaseSync (at most
 * BILLING_LEASE_FLUSH_MS of them) are then not charged.
 *
 * One per event loop, like the billing client; not thread-safe.
 */

#include <stddef.h>
#include <stdint.h>

#include "svc/err.h"

struct svc_loop;
struct svc_fetch_multi;
struct svc_rpc_client;
struct svc_metric;
struct svc_redis_async;
struct billing_lease;
struct billing_leases;

struct billing_leases_opts {
    const char *source;      /* "chat" or "proxy", for the ledger rows */
    long flush_ms;           /* charges wait at most this long before they are reported */
    long idle_ms;            /* a lease unused this long is closed (its units go back) */
    long lean_ms;            /* after the balance could not grow a lease: exact path this long */
    long retry_for_s;        /* a LeaseSync is retried this long while billing cannot be reached */
    struct svc_metric *open; /* gauge of leases alive on this loop (may be NULL) */
    struct svc_redis_async *journal; /* charge journal (journal.h), same loop (may be NULL) */
};

#define BILLING_LEASE_MODEL_MAX 128
#define BILLING_LEASE_MODELS 16 /* ratios a lease keeps (LeaseSyncRequest.models) */

enum billing_lease_admit {
    BILLING_LEASE_ADMITTED = 0, /* from the lease: end it with settle or release */
    BILLING_LEASE_WAIT,         /* the callback answers later (ADMITTED or FALLBACK) */
    BILLING_LEASE_FALLBACK,     /* use the exact path (Reserve) for this request */
};

typedef void (*billing_lease_admit_cb)(void *ctx, int result);

/* What one request holds of a lease; the caller's memory, zeroed before admission. */
struct billing_lease_ticket {
    struct billing_lease *lease; /* the lease admitted from (or waited on) */
    long long units;             /* its worst case, counted in the lease's reserved units */
    int waiting;
    struct billing_lease_ticket *wnext;
    billing_lease_admit_cb cb;
    void *ctx;
    char model[BILLING_LEASE_MODEL_MAX];
    long long prompt, max_completion;
    int64_t asked_seq; /* the first LeaseSync sent that knew of this request */
    uint64_t jid;      /* its entry in the lease's journal */
};

/* rpc and multi are borrowed, as by billing_client_create. SVC_OK or SVC_ENOMEM (*out NULL). */
int billing_leases_create(struct billing_leases **out, struct svc_loop *loop,
                          struct svc_rpc_client *rpc, struct svc_fetch_multi *multi,
                          const struct billing_leases_opts *o) SVC_MUST_CHECK;

/*
 * Admits a request of user_id (model, prompt tokens, the largest completion it may produce)
 * against the user's lease. ADMITTED: *t holds it; FALLBACK: nothing is held; WAIT: cb(ctx,
 * result) runs once, later, from the loop, with ADMITTED or FALLBACK, unless the ticket is
 * cancelled first.
 */
int billing_lease_admit(struct billing_leases *ls, struct billing_lease_ticket *t, int64_t user_id,
                        const char *username, int create_unlimited, const char *model,
                        long long prompt, long long max_completion, billing_lease_admit_cb cb,
                        void *ctx);

/* A waiting admission whose caller is gone: nothing is held, cb never runs. */
void billing_lease_cancel(struct billing_lease_ticket *t);

/* Ends an admitted request with its usage (estimated: our own count): queued for the next
 * LeaseSync, and written to the journal at once (svc_redis_async_flush). */
void billing_lease_settle(struct billing_lease_ticket *t, const char *rid, const char *request_id,
                          const char *model, long long prompt_tokens, long long completion_tokens,
                          int estimated);

/* Ends an admitted request that produced nothing: its worst case is free again. */
void billing_lease_release(struct billing_lease_ticket *t);

/* Draining: every lease reports what it has and closes; waiting admissions fall back. The gauge
 * (opts.open) reaches 0 once billing has answered every close. */
void billing_leases_close_all(struct billing_leases *ls);

/* Leases alive (open, closing, or retired with charges still to report). */
size_t billing_leases_count(const struct billing_leases *ls);

/* Logs what is still unreported (left to billing's expiry) and frees everything. Waiting
 * admissions get FALLBACK first. Accepts NULL; sets *ls to NULL. */
void billing_leases_destroy(struct billing_leases **ls);

#endif
