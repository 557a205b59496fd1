#ifndef BILLING_CLIENT_H
#define BILLING_CLIENT_H

#include <stddef.h>

#include "billing.pb-c.h"
#include "svc/err.h"
#include "svc/rpc.h"

/*
 * The billing service's client library, for its callers (chat, proxy): Reserve a hold before an
 * upstream call, then end it with exactly one Settle or Release.
 *
 * A Settle or Release outlives the request that made it: the client copies it, sends it, and
 * retries it with backoff (0.1 s, x4, at most every 30 s) while billing cannot be reached, for up
 * to retry_for_s seconds. Billing makes each call idempotent by request id, so a retry never
 * charges twice, and it corrects a hold that expired meanwhile (docs/billing.md). Only a process
 * that dies (or is destroyed) with a call still pending leaves its hold to billing's expiry.
 *
 * One client per event loop: every function must be called on that loop, and every callback runs
 * on it. Not thread-safe.
 */

struct svc_loop;
struct svc_fetch;
struct svc_fetch_multi;
struct svc_rpc_client;
struct svc_metric;
struct billing_client;

/*
 * A client sending on rpc (billing's base URL) through multi, both borrowed for its lifetime.
 * pending (may be NULL) is a gauge kept equal to the Settle/Release calls still waiting. SVC_OK,
 * or SVC_ENOMEM with *out NULL.
 */
int billing_client_create(struct billing_client **out, struct svc_loop *loop,
                          struct svc_rpc_client *rpc, struct svc_fetch_multi *multi,
                          long retry_for_s, struct svc_metric *pending) SVC_MUST_CHECK;

/* Logs and drops the calls still pending (their holds expire). Accepts NULL; sets *c to NULL. */
void billing_client_destroy(struct billing_client **c);

/* Settle/Release calls still waiting for billing. */
size_t billing_client_pending(const struct billing_client *c);

/*
 * Sends a Reserve; done gets the answer as svc_rpc_call_async gives it (the caller frees out).
 * Returns the call (cancel with svc_fetch_cancel: done then never runs), or NULL when it could
 * not be started (done never runs).
 */
struct svc_fetch *billing_client_reserve(struct billing_client *c,
                                         const Chatweb__Billing__ReserveRequest *in,
                                         const char *rid, svc_rpc_done_cb done, void *ctx);

/*
 * 1 when a Reserve answered this way may have left a hold that must be ended: an OK answer, or
 * no answer at all (billing may have made it all the same; a Release, which billing answers "no
 * such hold" when there is none, is then the safe end).
 */
int billing_client_reserve_held(int err, const Chatweb__Billing__ReserveResponse *out);

/* Ends the hold request_id with the usage charged (estimated: our own count, not the
 * upstream's). Owned and retried by the client from here on; never fails. */
void billing_client_settle(struct billing_client *c, const char *rid, const char *request_id,
                           const char *model, long long prompt_tokens,
                           long long completion_tokens, int estimated);

/* Gives the hold request_id back untouched (nothing was produced). Same ownership as settle. */
void billing_client_release(struct billing_client *c, const char *rid, const char *request_id,
                            const char *reason);

#endif
