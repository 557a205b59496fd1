/*
 * Billing for a chat turn: Reserve the exact prompt plus the reply limit before the upstream call,
 * Settle to the upstream's usage (or, when none arrived, the exact count of the prompt and of the
 * reply text received: chat_turn_account) or Release when the upstream produced nothing. The billing service makes each call idempotent by request id (the reply id), so the
 * retries below can never charge twice; a settle that still cannot get through leaves the hold to
 * billing's expiry rule (docs/billing.md).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "billing.pb-c.h"
#include "svc/fetch.h"
#include "svc/http.h"
#include "svc/log.h"
#include "svc/loop.h"
#include "svc/rpc.h"
#include "turn.h"

#define FINISH_BACKOFF_MS 100        /* x4 each attempt: 100, 400, 1600 ms ... */
#define FINISH_BACKOFF_MAX_MS 30000  /* ... up to one try every 30 s */

/* ---- reserve ---- */

static void on_reserved(int err, ProtobufCMessage *out_msg, const char *errmsg, void *data)
{
    struct chat_turn *t = data;
    Chatweb__Billing__ReserveResponse *out = (void *)out_msg;
    char text[512];

    t->billing_call = NULL;
    if (err == SVC_OK && out->result == CHATWEB__BILLING__RESERVE_RESULT__RESERVE_OK)
        t->reserved = 1;
    /* No answer: billing may have made the hold all the same. A Release (idempotent; "no such
     * hold" is fine) gives it back instead of leaving it to expire charged in full. */
    if (err == SVC_ETIMEDOUT || err == SVC_EUNAVAIL)
        t->reserved = 1;
    if (t->req == NULL || svc_req_is_done(t->req)) { /* the client left while we waited */
        chat_charge_finish(t, 0);
        goto out;
    }
    if (err != SVC_OK) {
        chat_charge_finish(t, 0);
        SVC_LOG_ERR(t->rid, "billing", "Reserve failed: %s", errmsg ? errmsg : "");
        chat_turn_reply(t, 503, "Fail", "计费服务不可用，请稍后再试 | Billing service unavailable, "
                                        "please try again later");
        goto out;
    }
    switch (out->result) {
    case CHATWEB__BILLING__RESERVE_RESULT__RESERVE_OK:
        t->completion_limit = out->completion_limit;
        chat_turn_upstream(t);
        break;
    case CHATWEB__BILLING__RESERVE_RESULT__RESERVE_INSUFFICIENT:
        chat_turn_account(t, 0); /* refused: the admitted tokens are given back */
        /* The seed's "tokens used up" message, with the self-service link. */
        snprintf(text, sizeof(text), "Token数已用尽,请到[自助中心](%s)补充,您的账号: %s",
                 chat_setting.OPS_LINK.s, t->username);
        chat_turn_fail(t, text);
        break;
    default:
        chat_turn_account(t, 0);
        SVC_LOG_WARN(t->rid, "billing", "no billing account for user %lld", t->user_id);
        chat_turn_fail(t, "账号未开通计费,请联系管理员 | This account has no balance yet; ask the "
                          "operator");
        break;
    }
out:
    if (out_msg != NULL)
        protobuf_c_message_free_unpacked(out_msg, NULL);
    chat_turn_unref(t);
}

void chat_charge_reserve(struct chat_turn *t)
{
    Chatweb__Billing__ReserveRequest in = CHATWEB__BILLING__RESERVE_REQUEST__INIT;

    in.request_id = t->reply_id;
    in.user_id = t->user_id;
    in.model = t->params.model;
    in.prompt_tokens = t->budget_used;
    in.max_completion_tokens = t->budget - t->budget_used;
    in.completion_limit_fixed = 0;
    in.source = "chat";
    /* A static user's account is created unlimited on first use, whatever auth did at start. */
    in.create_unlimited = t->is_static;
    /* A small balance still buys a reply this long (the seed's reserved reply size). */
    in.min_completion_tokens = chat_setting.CHAT_MIN_RESPONSE_TOKENS.i;
    in.username = t->username;
    t->billing_call = svc_rpc_call_async(t->w->billing, t->w->rpc, "/rpc/Billing/Reserve",
                                         &in.base, &chatweb__billing__reserve_response__descriptor,
                                         t->rid, on_reserved, t);
    if (t->billing_call == NULL) {
        chat_turn_account(t, 0);
        chat_turn_reply(t, 503, "Fail", "计费服务不可用 | Billing service unavailable");
        return;
    }
    t->refs++; /* held until billing answers, even if the client leaves */
}

/* ---- settle / release, with retries ----
 *
 * A Settle (or Release) outlives its request: it is copied into a chat_settle owned by the loop's
 * worker and retried with backoff while billing cannot be reached, for up to
 * CHAT_SETTLE_RETRY_FOR seconds (billing corrects an expired hold when the Settle arrives late,
 * docs/billing.md). Only a replica that dies, or gives up, leaves the hold to expiry.
 */

struct chat_settle {
    struct chat_worker *w;
    struct chat_settle *prev, *next; /* the worker's list, for shutdown */
    struct svc_timer *timer;
    struct svc_fetch *call;
    char rid[72];
    char request_id[40];
    char model[128];
    long long user_id;
    int settle; /* 1: Settle, 0: Release */
    int estimated;
    int attempts;
    long prompt, completion;
    uint64_t started_ms;
};

static void settle_free(struct chat_settle *cs)
{
    if (cs->prev != NULL)
        cs->prev->next = cs->next;
    else
        cs->w->settles = cs->next;
    if (cs->next != NULL)
        cs->next->prev = cs->prev;
    svc_fetch_cancel(&cs->call);
    svc_timer_destroy(&cs->timer);
    free(cs);
    svc_metric_add(&chat_stats.chat_settles_pending, -1);
}

static void settle_send(struct chat_settle *cs);

static void on_settled(int err, ProtobufCMessage *out_msg, const char *errmsg, void *data)
{
    struct chat_settle *cs = data;
    uint64_t waited = svc_clock_ms() - cs->started_ms;

    cs->call = NULL;
    if (out_msg != NULL)
        protobuf_c_message_free_unpacked(out_msg, NULL);
    if (err == SVC_ENOTFOUND && !cs->settle)
        err = SVC_OK; /* a Release after a Reserve that never took effect: nothing to give back */
    if (err == SVC_OK) {
        if (cs->attempts > 1)
            SVC_LOG_NOTICE(cs->rid, "billing", "%s went through at attempt %d",
                           cs->settle ? "Settle" : "Release", cs->attempts);
        settle_free(cs);
        return;
    }
    /* Transport trouble is retried; a definite answer from billing is not. */
    if ((err == SVC_EUNAVAIL || err == SVC_ETIMEDOUT) &&
        waited < (uint64_t)chat_setting.CHAT_SETTLE_RETRY_FOR.i * 1000) {
        uint64_t wait = FINISH_BACKOFF_MS;
        for (int i = 1; i < cs->attempts && wait < FINISH_BACKOFF_MAX_MS; i++)
            wait *= 4;
        if (wait > FINISH_BACKOFF_MAX_MS)
            wait = FINISH_BACKOFF_MAX_MS;
        if (cs->attempts == 1)
            SVC_LOG_WARN(cs->rid, "billing", "%s failed (%s); retrying for up to %lld s",
                         cs->settle ? "Settle" : "Release", errmsg ? errmsg : svc_strerror(err),
                         (long long)chat_setting.CHAT_SETTLE_RETRY_FOR.i);
        if (svc_timer_start(cs->timer, wait) == SVC_OK)
            return;
    }
    SVC_LOG_ERR(cs->rid, "billing", "%s for user %lld failed after %d attempt(s): %s; the hold "
                "is left to billing's expiry",
                cs->settle ? "Settle" : "Release", cs->user_id, cs->attempts,
                errmsg ? errmsg : svc_strerror(err));
    settle_free(cs);
}

static void on_settle_retry(struct svc_timer *timer, void *data)
{
    (void)timer;
    settle_send(data);
}

static void settle_send(struct chat_settle *cs)
{
    cs->attempts++;
    if (cs->settle) {
        Chatweb__Billing__SettleRequest in = CHATWEB__BILLING__SETTLE_REQUEST__INIT;
        in.request_id = cs->request_id;
        in.prompt_tokens = cs->prompt;
        in.completion_tokens = cs->completion;
        in.model = cs->model;
        in.estimated = cs->estimated;
        cs->call = svc_rpc_call_async(cs->w->billing, cs->w->rpc, "/rpc/Billing/Settle", &in.base,
                                      &chatweb__billing__settle_response__descriptor, cs->rid,
                                      on_settled, cs);
    } else {
        Chatweb__Billing__ReleaseRequest in = CHATWEB__BILLING__RELEASE_REQUEST__INIT;
        in.request_id = cs->request_id;
        in.reason = "no output";
        cs->call = svc_rpc_call_async(cs->w->billing, cs->w->rpc, "/rpc/Billing/Release",
                                      &in.base, &chatweb__billing__release_response__descriptor,
                                      cs->rid, on_settled, cs);
    }
    if (cs->call == NULL)
        on_settled(SVC_EUNAVAIL, NULL, "cannot start the call", cs);
}

void chat_charge_finish(struct chat_turn *t, int produced)
{
    struct chat_settle *cs;

    chat_turn_account(t, produced);
    if (!t->reserved)
        return;
    t->reserved = 0;
    cs = calloc(1, sizeof(*cs));
    if (cs == NULL || (cs->timer = svc_timer_create(t->w->loop, on_settle_retry, cs)) == NULL) {
        SVC_LOG_ERR(t->rid, "billing", "out of memory: the hold is left to billing's expiry");
        free(cs);
        return;
    }
    cs->w = t->w;
    cs->settle = produced;
    cs->user_id = t->user_id;
    cs->started_ms = svc_clock_ms();
    snprintf(cs->rid, sizeof(cs->rid), "%s", t->rid);
    snprintf(cs->request_id, sizeof(cs->request_id), "%s", t->reply_id);
    snprintf(cs->model, sizeof(cs->model), "%s", t->params.model);
    if (produced) {
        /* The upstream's usage when it sent one; otherwise (client left, stream broke) our exact
         * count of the prompt and of the text received, marked as ours. */
        cs->estimated = t->counted;
        cs->prompt = (long)t->final_prompt;
        cs->completion = (long)t->final_completion;
    }
    svc_metric_add(&chat_stats.chat_settles_pending, 1);
    cs->next = t->w->settles;
    if (cs->next != NULL)
        cs->next->prev = cs;
    t->w->settles = cs;
    settle_send(cs);
}

void chat_charge_abandon_all(struct chat_worker *w)
{
    int n = 0;

    while (w->settles != NULL) {
        SVC_LOG_ERR(w->settles->rid, "billing",
                    "shutting down with a %s for user %lld unsent; the hold is left to "
                    "billing's expiry",
                    w->settles->settle ? "Settle" : "Release", w->settles->user_id);
        settle_free(w->settles);
        n++;
    }
    if (n > 0)
        SVC_LOG_WARN(NULL, "shutdown", "%d settle(s) abandoned", n);
}
