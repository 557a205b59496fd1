/*
 * Billing for a chat turn: Reserve before the upstream call, Settle to the upstream's usage (or a
 * local estimate when the client left before usage arrived) or Release when the upstream produced
 * nothing. The billing service makes each call idempotent by request id (the reply id), so the
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

#define FINISH_ATTEMPTS 4
#define FINISH_BACKOFF_MS 100 /* x4 each attempt: 100, 400, 1600 ms */

/* ---- reserve ---- */

static void on_reserved(int err, ProtobufCMessage *out_msg, const char *errmsg, void *data)
{
    struct chat_turn *t = data;
    Chatweb__Billing__ReserveResponse *out = (void *)out_msg;
    char text[512];

    t->billing_call = NULL;
    if (err == SVC_OK && out->result == CHATWEB__BILLING__RESERVE_RESULT__RESERVE_OK)
        t->reserved = 1;
    if (t->req == NULL || svc_req_is_done(t->req)) { /* the client left while we waited */
        chat_charge_finish(t, 0);
        goto out;
    }
    if (err != SVC_OK) {
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
        /* The seed's "tokens used up" message, with the self-service link. */
        snprintf(text, sizeof(text), "Token数已用尽,请到[自助中心](%s)补充,您的账号: %s",
                 chat_setting.OPS_LINK.s, t->username);
        chat_turn_fail(t, text);
        break;
    default:
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
        chat_turn_reply(t, 503, "Fail", "计费服务不可用 | Billing service unavailable");
        return;
    }
    t->refs++; /* held until billing answers, even if the client leaves */
}

/* ---- settle / release, with retries ---- */

static void send_finish(struct chat_turn *t);

static void on_finished(int err, ProtobufCMessage *out_msg, const char *errmsg, void *data)
{
    struct chat_turn *t = data;

    if (out_msg != NULL)
        protobuf_c_message_free_unpacked(out_msg, NULL);
    if (err == SVC_OK) {
        chat_turn_unref(t);
        return;
    }
    /* Transport trouble is retried; a definite answer from billing is not. */
    if ((err == SVC_EUNAVAIL || err == SVC_ETIMEDOUT) && t->settle_attempts < FINISH_ATTEMPTS) {
        uint64_t wait = FINISH_BACKOFF_MS;
        for (int i = 1; i < t->settle_attempts; i++)
            wait *= 4;
        if (t->retry != NULL && svc_timer_start(t->retry, wait) == SVC_OK)
            return; /* the reference stays with the pending retry */
    }
    SVC_LOG_ERR(t->rid, "billing", "%s for user %lld failed after %d attempt(s): %s; the hold "
                "is left to billing's expiry",
                t->finish_settle ? "Settle" : "Release", t->user_id, t->settle_attempts,
                errmsg ? errmsg : svc_strerror(err));
    chat_turn_unref(t);
}

static void on_retry(struct svc_timer *timer, void *data)
{
    (void)timer;
    send_finish(data);
}

static void send_finish(struct chat_turn *t)
{
    struct svc_fetch *f;

    t->settle_attempts++;
    if (t->finish_settle) {
        Chatweb__Billing__SettleRequest in = CHATWEB__BILLING__SETTLE_REQUEST__INIT;
        in.request_id = t->reply_id;
        in.prompt_tokens = t->settle_prompt;
        in.completion_tokens = t->settle_completion;
        in.model = t->params.model;
        in.estimated = t->settle_estimated;
        f = svc_rpc_call_async(t->w->billing, t->w->rpc, "/rpc/Billing/Settle", &in.base,
                               &chatweb__billing__settle_response__descriptor, t->rid, on_finished,
                               t);
    } else {
        Chatweb__Billing__ReleaseRequest in = CHATWEB__BILLING__RELEASE_REQUEST__INIT;
        in.request_id = t->reply_id;
        in.reason = "no output";
        f = svc_rpc_call_async(t->w->billing, t->w->rpc, "/rpc/Billing/Release", &in.base,
                               &chatweb__billing__release_response__descriptor, t->rid,
                               on_finished, t);
    }
    if (f == NULL)
        on_finished(SVC_ENOMEM, NULL, "cannot start the call", t);
}

void chat_charge_finish(struct chat_turn *t, int produced)
{
    if (!t->reserved)
        return;
    t->reserved = 0;
    t->finish_settle = produced;
    if (produced) {
        /* The upstream's usage when it sent one; otherwise (client left, stream broke) a local
         * estimate of what was generated, marked as such. */
        t->settle_estimated = t->completion_tokens == 0 && t->prompt_tokens == 0;
        t->settle_prompt = t->prompt_tokens > 0 ? t->prompt_tokens : t->budget_used;
        t->settle_completion = t->settle_estimated ? (long)((t->text.len + 2) / 3)
                                                   : t->completion_tokens;
    }
    t->refs++; /* held until billing has answered (or we gave up) */
    if (t->retry == NULL)
        t->retry = svc_timer_create(t->w->loop, on_retry, t);
    send_finish(t);
}
