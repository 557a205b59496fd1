/*
 * Billing for a chat turn: Reserve the exact prompt plus the reply limit before the upstream call,
 * Settle to the upstream's usage (or, when none arrived, the exact count of the prompt and of the
 * reply text received: chat_turn_account) or Release when the upstream produced nothing, through
 * the billing client library (services/billing/client.h), which retries the end of a hold until
 * billing answers. The reply id is the hold's request id, so no retry can charge twice.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "billing/client.h"
#include "svc/fetch.h"
#include "svc/http.h"
#include "svc/log.h"
#include "svc/loop.h"
#include "svc/rpc.h"
#include "turn.h"

/* ---- reserve ---- */

static void on_reserved(int err, ProtobufCMessage *out_msg, const char *errmsg, void *data)
{
    struct chat_turn *t = data;
    Chatweb__Billing__ReserveResponse *out = (void *)out_msg;
    char text[512];

    t->billing_call = NULL;
    /* No answer counts as held: a Release gives back a hold made without our knowing. */
    t->reserved = billing_client_reserve_held(err, out);
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
    t->billing_call = billing_client_reserve(t->w->bill, &in, t->rid, on_reserved, t);
    if (t->billing_call == NULL) {
        chat_turn_account(t, 0);
        chat_turn_reply(t, 503, "Fail", "计费服务不可用 | Billing service unavailable");
        return;
    }
    t->refs++; /* held until billing answers, even if the client leaves */
}

/* ---- settle / release ----
 *
 * The hold ends here, once: chat_turn_account decided what was consumed, and the billing client
 * owns the call from now on (retried while billing cannot be reached, services/billing/client.h).
 */

void chat_charge_finish(struct chat_turn *t, int produced)
{
    chat_turn_account(t, produced);
    if (!t->reserved)
        return;
    t->reserved = 0;
    if (produced)
        billing_client_settle(t->w->bill, t->rid, t->reply_id, t->params.model, t->final_prompt,
                              t->final_completion, t->counted);
    else
        billing_client_release(t->w->bill, t->rid, t->reply_id, "no output");
}
