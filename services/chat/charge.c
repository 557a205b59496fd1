/*
 * Admission of a chat turn through its meter (services/meter): the exact prompt against the
 * tokens-per-minute scopes, then a Reserve of the prompt plus the reply limit; and the messages
 * chat shows when it is refused. The meter owns the hold from here on and ends it exactly once
 * (Settle to the upstream's usage or our exact count, or Release).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "billing.pb-c.h"
#include "meter/meter.h"
#include "svc/http.h"
#include "svc/log.h"
#include "turn.h"

static void on_admitted(void *ctx, const struct meter_admission *a)
{
    struct chat_turn *t = ctx;
    char text[512], ra[16];

    switch (a->result) {
    case METER_ADMITTED:
        t->completion_limit = (long)a->completion_limit;
        chat_turn_upstream(t);
        break;
    case METER_TPM_REFUSED:
        svc_metric_add(&t->stats->chat_rate_limited_total, 1);
        snprintf(ra, sizeof(ra), "%d", a->retry_after_s);
        if (svc_req_add_header(t->req, "Retry-After", ra) != SVC_OK)
            SVC_LOG_ERR(t->rid, "ratelimit", "cannot add Retry-After");
        if (t->budget_used > a->tpm_limit)
            snprintf(text, sizeof(text),
                     "Too many tokens: this request has %ld prompt tokens, more than the limit "
                     "of %lld tokens per minute",
                     t->budget_used, a->tpm_limit);
        else
            snprintf(text, sizeof(text),
                     "Too many tokens per minute (limit %lld, used %lld, requested %ld), please "
                     "try again in %d s",
                     a->tpm_limit, a->tpm_used, t->budget_used, a->retry_after_s);
        chat_turn_reply(t, 429, "Fail", text);
        break;
    case METER_INSUFFICIENT:
        /* The seed's "tokens used up" message, with the self-service link. */
        snprintf(text, sizeof(text), "Token数已用尽,请到[自助中心](%s)补充,您的账号: %s",
                 t->setting->OPS_LINK.s, t->username);
        chat_turn_fail(t, text);
        break;
    case METER_NO_ACCOUNT:
        chat_turn_fail(t, "账号未开通计费,请联系管理员 | This account has no balance yet; ask the "
                          "operator");
        break;
    case METER_UNAVAILABLE:
    default:
        chat_turn_reply(t, 503, "Fail", "计费服务不可用，请稍后再试 | Billing service unavailable, "
                                        "please try again later");
        break;
    }
}

void chat_charge_reserve(struct chat_turn *t)
{
    Chatweb__Billing__ReserveRequest in = CHATWEB__BILLING__RESERVE_REQUEST__INIT;

    in.user_id = t->user_id;
    in.prompt_tokens = t->budget_used;
    in.max_completion_tokens = t->budget - t->budget_used;
    in.completion_limit_fixed = 0;
    in.source = "chat";
    /* A static user's account is created unlimited on first use, whatever auth did at start. */
    in.create_unlimited = t->is_static;
    /* A small balance still buys a reply this long (the seed's reserved reply size). */
    in.min_completion_tokens = t->setting->CHAT_MIN_RESPONSE_TOKENS.i;
    in.username = t->username;
    if (meter_admit(t->meter, &in, on_admitted) != SVC_OK)
        chat_turn_reply(t, 500, "Fail", "内部错误 | internal error");
}
