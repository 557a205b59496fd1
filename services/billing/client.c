/*
 * The billing client library (client.h): Reserve, and the Settle/Release calls that outlive their
 * request, kept in a per-loop list and retried with backoff while billing cannot be reached.
 */
#include "client.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/fetch.h"
#include "svc/log.h"
#include "svc/loop.h"
#include "svc/metrics.h"
#include "svc/rpc.h"

#define FINISH_BACKOFF_MS 100       /* x4 each attempt: 100, 400, 1600 ms ... */
#define FINISH_BACKOFF_MAX_MS 30000 /* ... up to one try every 30 s */

struct billing_client {
    struct svc_loop *loop;
    struct svc_rpc_client *rpc;
    struct svc_fetch_multi *multi;
    long retry_for_s;
    struct svc_metric *pending_gauge;
    struct billing_finish *finishes; /* Settle/Release calls still waiting */
    size_t pending;
};

/* One Settle or Release, copied out of its request. */
struct billing_finish {
    struct billing_client *c;
    struct billing_finish *prev, *next;
    struct svc_timer *timer;
    struct svc_fetch *call;
    char rid[72];
    char request_id[64];
    char model[128];
    char reason[64];
    int settle; /* 1: Settle, 0: Release */
    int estimated;
    int attempts;
    long long prompt, completion;
    uint64_t started_ms;
};

int billing_client_create(struct billing_client **out, struct svc_loop *loop,
                          struct svc_rpc_client *rpc, struct svc_fetch_multi *multi,
                          long retry_for_s, struct svc_metric *pending)
{
    struct billing_client *c = calloc(1, sizeof(*c));

    *out = NULL;
    if (c == NULL)
        return SVC_ENOMEM;
    c->loop = loop;
    c->rpc = rpc;
    c->multi = multi;
    c->retry_for_s = retry_for_s;
    c->pending_gauge = pending;
    *out = c;
    return SVC_OK;
}

size_t billing_client_pending(const struct billing_client *c)
{
    return c->pending;
}

/* ---- reserve ---- */

int billing_client_reserve_held(int err, const Chatweb__Billing__ReserveResponse *out)
{
    if (err == SVC_ETIMEDOUT || err == SVC_EUNAVAIL)
        return 1;
    return err == SVC_OK && out != NULL &&
           out->result == CHATWEB__BILLING__RESERVE_RESULT__RESERVE_OK;
}

struct svc_fetch *billing_client_reserve(struct billing_client *c,
                                         const Chatweb__Billing__ReserveRequest *in,
                                         const char *rid, svc_rpc_done_cb done, void *ctx)
{
    struct svc_fetch *f;

    return svc_rpc_call_async(&f, c->rpc, c->multi, "/rpc/Billing/Reserve", &in->base,
                              &chatweb__billing__reserve_response__descriptor, rid, done,
                              ctx) == SVC_OK
               ? f
               : NULL;
}

/* ---- settle / release ---- */

static void finish_free(struct billing_finish *bf)
{
    struct billing_client *c = bf->c;

    if (bf->prev != NULL)
        bf->prev->next = bf->next;
    else
        c->finishes = bf->next;
    if (bf->next != NULL)
        bf->next->prev = bf->prev;
    svc_fetch_cancel(&bf->call);
    svc_timer_destroy(&bf->timer);
    free(bf);
    c->pending--;
    if (c->pending_gauge != NULL)
        svc_metric_add(c->pending_gauge, -1);
}

static void finish_send(struct billing_finish *bf);

static void on_finished(void *ctx, int err, ProtobufCMessage *out_msg, const char *errmsg)
{
    struct billing_finish *bf = ctx;
    uint64_t waited = svc_loop_clock_ms() - bf->started_ms;

    bf->call = NULL;
    if (out_msg != NULL)
        svc_rpc_message_destroy(&out_msg);
    if (err == SVC_ENOTFOUND && !bf->settle)
        err = SVC_OK; /* a Release after a Reserve that never took effect: nothing to give back */
    if (err == SVC_OK) {
        if (bf->attempts > 1)
            SVC_LOG_NOTICE(bf->rid, "billing", "%s went through at attempt %d",
                           bf->settle ? "Settle" : "Release", bf->attempts);
        finish_free(bf);
        return;
    }
    /* Transport trouble is retried; a definite answer from billing is not. */
    if ((err == SVC_EUNAVAIL || err == SVC_ETIMEDOUT) &&
        waited < (uint64_t)bf->c->retry_for_s * 1000) {
        uint64_t wait = FINISH_BACKOFF_MS;
        for (int i = 1; i < bf->attempts && wait < FINISH_BACKOFF_MAX_MS; i++)
            wait *= 4;
        if (wait > FINISH_BACKOFF_MAX_MS)
            wait = FINISH_BACKOFF_MAX_MS;
        if (bf->attempts == 1)
            SVC_LOG_WARN(bf->rid, "billing", "%s failed (%s); retrying for up to %ld s",
                         bf->settle ? "Settle" : "Release", errmsg ? errmsg : svc_strerror(err),
                         bf->c->retry_for_s);
        if (svc_timer_start(bf->timer, wait) == SVC_OK)
            return;
    }
    SVC_LOG_ERR(bf->rid, "billing", "%s of %s failed after %d attempt(s): %s; the hold is left "
                "to billing's expiry",
                bf->settle ? "Settle" : "Release", bf->request_id, bf->attempts,
                errmsg ? errmsg : svc_strerror(err));
    finish_free(bf);
}

static void on_finish_retry(void *ctx, struct svc_timer *timer)
{
    (void)timer;
    finish_send(ctx);
}

static void finish_send(struct billing_finish *bf)
{
    struct billing_client *c = bf->c;
    int rc;

    bf->attempts++;
    if (bf->settle) {
        Chatweb__Billing__SettleRequest in = CHATWEB__BILLING__SETTLE_REQUEST__INIT;
        in.request_id = bf->request_id;
        in.prompt_tokens = bf->prompt;
        in.completion_tokens = bf->completion;
        in.model = bf->model;
        in.estimated = bf->estimated;
        rc = svc_rpc_call_async(&bf->call, c->rpc, c->multi, "/rpc/Billing/Settle", &in.base,
                                &chatweb__billing__settle_response__descriptor, bf->rid,
                                on_finished, bf);
    } else {
        Chatweb__Billing__ReleaseRequest in = CHATWEB__BILLING__RELEASE_REQUEST__INIT;
        in.request_id = bf->request_id;
        in.reason = bf->reason;
        rc = svc_rpc_call_async(&bf->call, c->rpc, c->multi, "/rpc/Billing/Release", &in.base,
                                &chatweb__billing__release_response__descriptor, bf->rid,
                                on_finished, bf);
    }
    if (rc != SVC_OK)
        on_finished(bf, SVC_EUNAVAIL, NULL, "cannot start the call");
}

static struct billing_finish *finish_new(struct billing_client *c, const char *rid,
                                         const char *request_id)
{
    struct billing_finish *bf = calloc(1, sizeof(*bf));

    if (bf == NULL || svc_timer_create(&bf->timer, c->loop, on_finish_retry, bf) != SVC_OK) {
        SVC_LOG_ERR(rid, "billing", "out of memory: the hold %s is left to billing's expiry",
                    request_id);
        free(bf);
        return NULL;
    }
    bf->c = c;
    bf->started_ms = svc_loop_clock_ms();
    snprintf(bf->rid, sizeof(bf->rid), "%s", rid != NULL ? rid : "");
    snprintf(bf->request_id, sizeof(bf->request_id), "%s", request_id);
    bf->next = c->finishes;
    if (bf->next != NULL)
        bf->next->prev = bf;
    c->finishes = bf;
    c->pending++;
    if (c->pending_gauge != NULL)
        svc_metric_add(c->pending_gauge, 1);
    return bf;
}

void billing_client_settle(struct billing_client *c, const char *rid, const char *request_id,
                           const char *model, long long prompt_tokens,
                           long long completion_tokens, int estimated)
{
    struct billing_finish *bf = finish_new(c, rid, request_id);

    if (bf == NULL)
        return;
    bf->settle = 1;
    snprintf(bf->model, sizeof(bf->model), "%s", model != NULL ? model : "");
    bf->prompt = prompt_tokens;
    bf->completion = completion_tokens;
    bf->estimated = estimated;
    finish_send(bf);
}

void billing_client_release(struct billing_client *c, const char *rid, const char *request_id,
                            const char *reason)
{
    struct billing_finish *bf = finish_new(c, rid, request_id);

    if (bf == NULL)
        return;
    snprintf(bf->reason, sizeof(bf->reason), "%s", reason != NULL ? reason : "");
    finish_send(bf);
}

void billing_client_destroy(struct billing_client **cp)
{
    struct billing_client *c = cp != NULL ? *cp : NULL;
    size_t n = 0;

    if (c == NULL)
        return;
    while (c->finishes != NULL) {
        SVC_LOG_ERR(c->finishes->rid, "billing",
                    "shutting down with a %s of %s unsent; the hold is left to billing's expiry",
                    c->finishes->settle ? "Settle" : "Release", c->finishes->request_id);
        finish_free(c->finishes);
        n++;
    }
    if (n > 0)
        SVC_LOG_WARN(NULL, "shutdown", "%zu settle(s) abandoned", n);
    free(c);
    *cp = NULL;
}
