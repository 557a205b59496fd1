#ifndef METER_METER_H
#define METER_METER_H

#include <stddef.h>

#include "billing.pb-c.h"
#include "svc/err.h"
#include "svc/fetch.h"
#include "svc/modelmap.h"
#include "svc/ratelimit.h"

/*
 * The metered pipeline shared by chat and the /v1 proxy: one metered upstream request from
 * admission to the end of its hold.
 *
 *   meter_create ─> meter_admit (tokens per minute, then the billing Reserve)
 *                ─> meter_start (the upstream stream, with backpressure from the client)
 *                ─> events to the caller ─> usage ─> exactly one Settle or Release
 *
 * One owner of the hold: whichever way the request ends — done, the client gone at any moment
 * (meter_detach), an upstream error before or after the first byte, a cut or stalled upstream,
 * billing or Redis down, the process draining — the meter ends it with exactly one Settle or
 * Release (through the billing client, which retries it), and corrects the tokens-per-minute
 * counters once. The charge is the upstream's usage when it was received, else the exact count
 * of the prompt and of the text received (docs/billing.md, "Every exit of a metered request").
 *
 * After the caller detaches (its request is over) the meter never calls a hook again: it reads
 * what the upstream already sent for up to drain_ms (stopping at the first gap without a byte of
 * 5 ms, or drain_ms / 20 when longer),
 * counts it, ends the hold and frees itself.
 *
 * Everything runs on one event loop. Not thread-safe.
 */

struct svc_loop;
struct svc_fetch_multi;
struct svc_fetch_req;
struct svc_redis_async;
struct billing_client;
struct billing_leases;
struct meter_loop;
struct meter;

/* One upstream SSE event, delivered in order. Borrowed for the call. */
struct meter_event {
    const char *data;    /* the event's data as received */
    size_t len;
    const char *content; /* the text this event adds to the reply (may be NULL) */
    size_t content_len;
    int has_choice;      /* choices[0] exists */
    int has_finish;      /* choices[0].finish_reason is a string */
    int usage_only;      /* a usage chunk with no choices */
    int done;            /* data: [DONE] */
};

/* How the upstream ended. Borrowed for the call. */
struct meter_end {
    int err;             /* SVC_OK: a complete HTTP answer arrived (whatever its status) */
    long status;         /* HTTP status, 0 when none arrived */
    const char *errmsg;  /* what failed in the transfer (curl's words), or NULL */
    const char *stream_error; /* an error the stream itself reported ("[OpenAI] ..."), a
                               * malformed event, or a reply over the size limit; else NULL */
    const char *body;    /* a non-200 answer's body (bounded), else NULL */
    size_t body_len;
    int complete;        /* a 200 stream that ended with its finish chunk or [DONE] */
    int started;         /* on_head ran */
    long long prompt_tokens, completion_tokens; /* what was charged */
    int counted;         /* 1: our own count (the upstream sent no usage) */
};

struct meter_hooks {
    /* The upstream answered 200: the client's response may start. 0, or an error to stop. */
    int (*on_head)(void *ctx);
    /* One event of a 200 stream. 0, or an error to stop the upstream (reported to on_end). */
    int (*on_event)(void *ctx, const struct meter_event *ev);
    /* Bytes still waiting for the client. Above METER_CLIENT_HIGH no more events are produced
     * (the upstream is paused once its own input piles up); call meter_resume when it drains. */
    size_t (*client_pending)(void *ctx);
    /* Not streamed (meter_start with sse = 0): the whole 200 body, once, before on_end. 0, or
     * an error. May be NULL for callers that only stream. */
    int (*on_body)(void *ctx, const char *body, size_t len);
    /* The upstream is over, every event was delivered, and the hold has been ended. */
    void (*on_end)(void *ctx, const struct meter_end *end);
    /* Optional: each attempt at the upstream, once its status is known (ok: not 429 or 5xx) or
     * once it failed without one (ok = 0): for the caller's circuit breaker. */
    void (*on_attempt)(void *ctx, int ok);
    /* Optional: before a retry, may send it elsewhere: writes the URL into url and the whole
     * Authorization header line into auth ("" for none) and returns 1; 0 keeps the target. */
    int (*retarget)(void *ctx, char *url, size_t url_len, char *auth, size_t auth_len);
};

/* Calls fn for each header of the upstream's answer (the last attempt's), as received: from
 * on_head on, in on_body and in on_end (none when no answer arrived). */
void meter_upstream_headers(const struct meter *m, svc_fetch_header_cb fn, void *ud);

#define METER_CLIENT_HIGH (256u << 10)
/* The drain mark callers give svc_req_on_drain() to call meter_resume(): 0, i.e. when the client
 * took everything, because over the output budget a stream stops with any amount waiting. */
#define METER_CLIENT_LOW 0u

/*
 * A budget for the bytes queued for clients by the whole process (svc_http_queued()): above it,
 * a stream whose client has anything still waiting makes no more events, and its upstream is
 * paused as soon as the next bytes arrive, so a crowd of clients that read nothing holds about
 * one event and one upstream read each instead of METER_CLIENT_HIGH + 64 KiB. 0 = no budget.
 * Call once at start, before any loop runs.
 */
void meter_set_output_budget(size_t bytes);

/* ---- per loop ---- */

/* Borrowed for its lifetime: the loop, the upstream transfers, Redis (token counters), billing,
 * and the balance leases (NULL: every request takes the exact path, a Reserve RPC). drain_ms:
 * how long a detached meter may read what the upstream already sent (0: cancel at once).
 * SVC_OK, or SVC_ENOMEM with *out NULL. */
int meter_loop_create(struct meter_loop **out, struct svc_loop *loop,
                      struct svc_fetch_multi *upstream, struct svc_redis_async *redis,
                      struct billing_client *bill, struct billing_leases *leases,
                      long drain_ms) SVC_MUST_CHECK;

/* Ends the detached meters still draining (charged as counted). Accepts NULL. */
void meter_loop_destroy(struct meter_loop **ml);

/* ---- per request ---- */

/*
 * A meter for one request. request_id is the hold's id (unique per request); model and mi say
 * how to count and what to bill. hooks and ctx are the caller's until meter_detach (ctx is
 * every hook's first argument). SVC_OK, or SVC_ENOMEM with *out NULL.
 */
int meter_create(struct meter **out, struct meter_loop *ml, const struct meter_hooks *hooks,
                 void *ctx, const char *rid, const char *request_id, const char *model,
                 const struct svc_modelmap_info *mi) SVC_MUST_CHECK;

/* Token-per-minute scopes to admit the prompt against (none: no token limit). */
void meter_set_tpm(struct meter *m, const char *tag, const struct svc_ratelimit_scope *scopes,
                   int nscopes);

enum meter_admit_result {
    METER_ADMITTED = 0,
    METER_TPM_REFUSED,   /* retry_after_s, tpm_scope, tpm_limit, tpm_used say why */
    METER_INSUFFICIENT,  /* the balance cannot pay the smallest reply */
    METER_NO_ACCOUNT,    /* billing has no account for the user */
    METER_UNAVAILABLE,   /* billing could not be asked */
};

struct meter_admission {
    enum meter_admit_result result;
    long long completion_limit; /* ADMITTED: the largest reply the hold covers */
    int retry_after_s;
    int tpm_scope;              /* index of the refusing scope */
    long long tpm_limit, tpm_used;
    const char *errmsg;
};

typedef void (*meter_admit_fn)(void *ctx, const struct meter_admission *a);

/*
 * Admits the request: its prompt (in->prompt_tokens, exact) against the token scopes, then its
 * worst case against the user's balance lease when the loop has leases and it fits (no round
 * trip), else the Reserve in (request_id is set by the meter). cb runs once, later, unless the caller detached
 * first. SVC_EINVAL when called twice.
 */
int meter_admit(struct meter *m, Chatweb__Billing__ReserveRequest *in, meter_admit_fn cb)
    SVC_MUST_CHECK;


/* Starts the upstream request (the meter sets the callbacks). sse = 1: the answer is an SSE
 * stream turned into events; 0: a JSON answer, buffered (bounded) and given to on_body, its usage
 * read from it. SVC_ENOMEM when it cannot start: the hold is released and on_end is not called. */
int meter_start(struct meter *m, const struct svc_fetch_req *fr, int sse) SVC_MUST_CHECK;

/* The client drained below METER_CLIENT_LOW: produce more events. */
void meter_resume(struct meter *m);

/* The reply text received so far (every content delta, in order), and its length. */
const char *meter_text(const struct meter *m, size_t *len);

/* The caller's request is over (done, or the client left). Accepts NULL; sets *m to NULL. */
void meter_detach(struct meter **m);

#endif
