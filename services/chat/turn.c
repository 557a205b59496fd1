/*
 * One chat turn: POST /api/chat-process, from request to the last streamed byte.
 *
 *   parse + validate ─> (a seed command: commands.c) ─> Authenticate (auth's client library)
 *        ─> rate limit ─> walk the context chain in Redis, counting it exactly
 *        ─> the meter (services/meter): tokens per minute, Reserve (charge.c), upstream stream
 *        ─> one cumulative JSON object per upstream chunk to the client, as fast as it reads
 *        ─> the meter settles ─> store the user message and the reply ─> the final object, end.
 *
 * Chat keeps only what is chat: the ChatGPT Web framing, the context and the commands; the hold,
 * the upstream transfer, backpressure and the charge belong to the meter, which ends the hold
 * exactly once however the turn ends. Everything runs on the request's event loop; nothing
 * blocks. The final object (the one with finish_reason) is held back until the context is
 * stored, so the frontend's automatic "continue" request always finds its parent (the seed's
 * C1). A client that leaves cancels the upstream call (the seed's C4) once the meter has read
 * what it already sent, and what the client was sent is still stored.
 *
 * Lifetime: a turn is reference-counted. The request holds one reference until its cleanup runs;
 * every Redis command in flight holds one. RPCs are cancelled and the meter detached in the
 * cleanup, so their callbacks never see a dead turn.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.pb-c.h"
#include "auth/client.h"
#include "meter/meter.h"
#include "turn.h"
#include "svc/buf.h"
#include "svc/fetch.h"
#include "svc/http.h"
#include "svc/json.h"
#include "svc/log.h"
#include "svc/loop.h"
#include "svc/modelmap.h"
#include "svc/ratelimit.h"
#include "svc/redis.h"
#include "svc/util.h"

#define PROMPT_MAX (256u << 10)   /* bytes of one prompt */
#define SYSTEM_MAX (32u << 10)    /* bytes of the system message */
#define REPLY_MAX (4u << 20)      /* bytes of one reply kept in memory */
/* Upstream transfers open on one loop beyond which new ones take a fresh connection: below it
 * keep-alive saves a TLS handshake per request, above it the walk costs more than it saves. */
#define UPSTREAM_REUSE_LIMIT 1024

/* ---- lifetime ---- */

void chat_turn_unref(struct chat_turn *t)
{
    if (--t->refs > 0)
        return;
    svc_buf_deinit(&t->held);
    svc_json_destroy(&t->history);
    free(t->prompt);
    free(t->system_message);
    free(t);
}

/* ---- replies before streaming ---- */

void chat_turn_reply(struct chat_turn *t, int http_status, const char *status,
                     const char *message)
{
    if (t->req != NULL)
        svc_req_reply_envelope(t->req, http_status, status, message, NULL);
}

void chat_turn_fail(struct chat_turn *t, const char *message)
{
    chat_turn_reply(t, 200, "Fail", message);
}

/* ---- storing the context ---- */

static void on_saved(void *data, int err, const struct svc_redis_reply *reply);

/* Queues SET key value EX ttl; returns 1 when a command was sent (a reference is held). */
static int save_message(struct chat_turn *t, const char *id, const char *role, const char *content,
                        size_t content_len, const char *parent, int track)
{
    char key[CHAT_KEY_MAX], ttl[24];
    char *value;
    int rc;

    if (chat_ctx_key(key, sizeof(key), t->user_id, id) != SVC_OK)
        return 0;
    value = chat_ctx_encode(role, content, content_len, parent);
    if (value == NULL)
        return 0;
    snprintf(ttl, sizeof(ttl), "%lld", (long long)chat_setting.CHAT_SESSION_TTL.i * 60);
    const char *argv[] = {"SET", key, value, "EX", ttl};
    size_t lens[] = {3, strlen(key), strlen(value), 2, strlen(ttl)};
    rc = svc_redis_async_cmd(t->w->redis, track ? on_saved : NULL, track ? t : NULL, 5, argv,
                             lens);
    free(value);
    if (rc != SVC_OK) {
        svc_metric_add(&chat_stats.chat_context_errors_total, 1);
        SVC_LOG_WARN(t->rid, "context", "cannot store message %s: %s", id, svc_strerror(rc));
        return 0;
    }
    if (track)
        t->refs++;
    return 1;
}

/* Stores the user message (if any) and the reply. track = 0: fire and forget (client gone). */
static int save_turn(struct chat_turn *t, int track)
{
    size_t text_len = 0;
    const char *text = t->meter != NULL ? meter_text(t->meter, &text_len) : "";
    int sent = 0;

    if (t->prompt_len > 0)
        sent += save_message(t, t->user_msg_id, "user", t->prompt, t->prompt_len, t->parent_id,
                             track);
    if (text_len > 0)
        sent += save_message(t, t->reply_id, "assistant", text, text_len,
                             t->prompt_len > 0 ? t->user_msg_id : t->parent_id, track);
    return sent;
}

static void finish_stream(struct chat_turn *t)
{
    if (t->req == NULL)
        return;
    if (t->held.len > 0 && svc_req_stream_write(t->req, t->held.data, t->held.len) != SVC_OK)
        SVC_LOG_WARN(t->rid, "stream", "cannot send the final object");
    svc_req_stream_end(t->req);
    svc_metric_add(&chat_stats.chat_replies_completed_total, 1);
}

static void on_saved(void *data, int err, const struct svc_redis_reply *reply)
{
    struct chat_turn *t = data;

    if (err != SVC_OK || svc_redis_reply_type(reply) == SVC_REDIS_ERROR) {
        svc_metric_add(&chat_stats.chat_context_errors_total, 1);
        SVC_LOG_WARN(t->rid, "context", "storing the turn failed: %s",
                     err != SVC_OK ? svc_strerror(err) : svc_redis_reply_str(reply, NULL));
    }
    if (--t->saves_pending == 0)
        finish_stream(t);
    chat_turn_unref(t);
}

/* ---- streaming objects to the client ---- */

/* Builds one cumulative object; appends it (with its leading newline) to out. */
static int build_object(struct chat_turn *t, const char *delta, size_t delta_len,
                        struct svc_json *detail, struct svc_buf *out)
{
    size_t text_len;
    const char *text = meter_text(t->meter, &text_len);
    struct svc_json *o =
        svc_json_pack("{s:s, s:s, s:s, s:s%, s:s%, s:O}", "role", "assistant", "id", t->reply_id,
                      "parentMessageId", t->prompt_len > 0 ? t->user_msg_id : t->parent_id, "text",
                      text, text_len, "delta", delta != NULL ? delta : "", delta_len, "detail",
                      detail != NULL ? detail : svc_json_null());
    char *s;
    int rc;

    if (o == NULL)
        return SVC_ENOMEM;
    s = svc_json_dump(o, 0);
    svc_json_destroy(&o);
    if (s == NULL)
        return SVC_ENOMEM;
    rc = t->objects_sent > 0 || out == &t->held ? svc_buf_append(out, "\n", 1) : SVC_OK;
    if (rc == SVC_OK)
        rc = svc_buf_append_str(out, s);
    free(s);
    return rc;
}

static int write_object(struct chat_turn *t, const char *delta, size_t delta_len,
                        struct svc_json *detail)
{
    struct svc_buf line;
    int rc;

    svc_buf_init(&line, REPLY_MAX * 2);
    rc = build_object(t, delta, delta_len, detail, &line);
    if (rc == SVC_OK)
        rc = svc_req_stream_write(t->req, line.data, line.len);
    if (rc == SVC_OK)
        t->objects_sent++;
    svc_buf_deinit(&line);
    return rc;
}

/* The client took some of what was waiting: the meter produces more. */
static void on_client_drained(void *data, struct svc_req *req)
{
    struct chat_turn *t = data;

    (void)req;
    if (t->meter != NULL)
        meter_resume(t->meter);
}

/* ---- the metered stream's hooks (services/meter) ---- */

static int on_meter_head(void *ud)
{
    struct chat_turn *t = ud;
    int rc;

    if (t->streaming)
        return SVC_OK;
    rc = svc_req_stream_start(t->req, 200, "application/octet-stream");
    if (rc == SVC_OK) {
        t->streaming = 1;
        svc_metric_add(&chat_stats.chat_streams_open, 1);
        svc_req_on_drain(t->req, on_client_drained, t, METER_CLIENT_LOW);
    }
    return rc;
}

static size_t on_meter_pending(void *ud)
{
    struct chat_turn *t = ud;

    return t->req != NULL ? svc_req_stream_pending(t->req) : 0;
}

/* One upstream event: one cumulative object, the one with finish_reason held back until the
 * context is stored (see the top of this file). */
static int on_meter_event(void *ud, const struct meter_event *ev)
{
    struct chat_turn *t = ud;

    if (ev->done || svc_json_array_at(svc_json_member(ev->json, "choices"), 0) == NULL)
        return 0; /* [DONE], the usage-only chunk, or keep-alive noise */
    if (ev->finish != NULL) {
        svc_buf_reset(&t->held);
        return build_object(t, ev->content, ev->content_len, ev->json, &t->held);
    }
    return write_object(t, ev->content, ev->content_len, ev->json);
}

/* The frontend shows these for upstream HTTP errors (chatgpt-web contract §1.3). */
static const char *upstream_status_text(long status)
{
    switch (status) {
    case 401: return "[OpenAI] 提供错误的API密钥 | Incorrect API key provided";
    case 403: return "[OpenAI] 服务器拒绝访问，请稍后再试 | Server refused to access, please try again later";
    case 429: return "[OpenAI] 请求过于频繁，请稍后再试 | Too many requests, please try again later";
    case 502: return "[OpenAI] 错误的网关 | Bad Gateway";
    case 503: return "[OpenAI] 服务器繁忙，请稍后再试 | Server is busy, please try again later";
    case 504: return "[OpenAI] 网关超时 | Gateway Time-out";
    case 500: return "[OpenAI] 服务器繁忙，请稍后再试 | Internal Server Error";
    }
    return NULL;
}

/* Nothing reached the client yet: one Fail envelope saying what the upstream did. */
static void fail_before_stream(struct chat_turn *t, const struct meter_end *end)
{
    const char *known = upstream_status_text(end->status);
    char msg[768];

    svc_metric_add(&chat_stats.chat_upstream_errors_total, 1);
    if (end->stream_error != NULL) {
        snprintf(msg, sizeof(msg), "%s", end->stream_error);
    } else if (end->err != SVC_OK && end->status == 0) {
        snprintf(msg, sizeof(msg), "[OpenAI] 无法连接上游服务 | Cannot reach the upstream: %s",
                 end->errmsg != NULL ? end->errmsg : svc_strerror(end->err));
    } else if (known != NULL) {
        snprintf(msg, sizeof(msg), "%s", known);
    } else {
        struct svc_json *j = svc_json_parse(end->body, end->body_len, 0, NULL, 0);
        const char *m = svc_json_str(svc_json_member(svc_json_member(j, "error"), "message"));
        snprintf(msg, sizeof(msg), "[OpenAI] HTTP %ld: %s", end->status,
                 m != NULL ? m : "the upstream refused the request");
        svc_json_destroy(&j);
    }
    svc_util_utf8_trim_end(msg);
    SVC_LOG_WARN(t->rid, "upstream", "failed before the first chunk: status=%ld %s",
                 end->status, end->errmsg != NULL ? end->errmsg : "");
    chat_turn_fail(t, msg);
}

/* A mid-stream failure is reported as a last normal-shaped object whose text carries the error,
 * which this frontend shows (contract §1.5); the held finish object, if any, is dropped. */
static void fail_in_stream(struct chat_turn *t, const char *error)
{
    size_t text_len;
    const char *text = meter_text(t->meter, &text_len);
    struct svc_buf shown;

    svc_metric_add(&chat_stats.chat_upstream_errors_total, 1);
    SVC_LOG_WARN(t->rid, "upstream", "stream failed: %s", error);
    svc_buf_reset(&t->held);
    if (svc_buf_appendf(&t->held, "%s", t->objects_sent > 0 ? "\n" : "") != SVC_OK)
        return;
    svc_buf_init(&shown, REPLY_MAX + 1024);
    if (svc_buf_append(&shown, text, text_len) == SVC_OK &&
        svc_buf_appendf(&shown, "%s[%s]", text_len > 0 ? "\n" : "", error) == SVC_OK) {
        struct svc_json *o =
            svc_json_pack("{s:s, s:s, s:s, s:s%, s:n}", "role", "assistant", "id", t->reply_id,
                          "parentMessageId", t->prompt_len > 0 ? t->user_msg_id : t->parent_id,
                          "text", shown.data, shown.len, "detail");
        char *s = o != NULL ? svc_json_dump(o, 0) : NULL;
        if (s != NULL && svc_buf_append_str(&t->held, s) != SVC_OK)
            svc_buf_reset(&t->held);
        free(s);
        svc_json_destroy(&o);
    }
    svc_buf_deinit(&shown);
}

/* The upstream is over, its events are all objects, and the meter has ended the hold: report a
 * failure, store the context, then send the held final object. */
static void on_meter_end(void *ud, const struct meter_end *end)
{
    struct chat_turn *t = ud;

    t->ended = 1;
    if (end->counted)
        svc_metric_add(&chat_stats.chat_counted_charges_total, 1);
    else if (end->prompt_tokens > 0 || end->completion_tokens > 0) {
        svc_metric_add(&chat_stats.chat_prompt_tokens_total, end->prompt_tokens);
        svc_metric_add(&chat_stats.chat_completion_tokens_total, end->completion_tokens);
    }
    if (!end->started) {
        fail_before_stream(t, end);
        return;
    }
    if (end->err != SVC_OK)
        SVC_LOG_INFO(t->rid, "upstream", "transfer ended: %s (HTTP %ld): %s",
                     svc_strerror(end->err), end->status, end->errmsg != NULL ? end->errmsg : "");
    if (end->stream_error != NULL)
        fail_in_stream(t, end->stream_error);
    else if (end->err != SVC_OK || !end->complete)
        fail_in_stream(t, end->err == SVC_ETIMEDOUT ? "[OpenAI] 上游超时 | upstream timed out"
                                                    : "[OpenAI] 上游连接中断 | the upstream "
                                                      "stream broke off");
    t->saves_pending = save_turn(t, 1);
    if (t->saves_pending == 0)
        finish_stream(t);
}

static const struct meter_hooks chat_meter_hooks = {
    .on_head = on_meter_head,
    .on_event = on_meter_event,
    .client_pending = on_meter_pending,
    .on_end = on_meter_end,
};

static int start_upstream(struct chat_turn *t)
{
    char url[1024], auth[1100], hid[128];
    struct svc_json *body, *messages, *msg;
    const char *headers[6];
    struct svc_fetch_req fr = {0};
    int rc;
    long max_tokens = t->completion_limit;
    size_t nh = 0, i;
    char *text;
    const char *base = chat_setting.OPENAI_BASE_URL.s;
    size_t blen = strlen(base);

    messages = svc_json_array();
    if (messages == NULL)
        return SVC_ENOMEM;
    if (t->system_message != NULL && t->system_message[0] != '\0')
        svc_json_append(
            messages, svc_json_pack("{s:s, s:s}", "role", "system", "content", t->system_message));
    /* history was collected newest first */
    for (i = svc_json_array_len(t->history); i > 0; i--)
        svc_json_append(messages, svc_json_ref(svc_json_array_at(t->history, i - 1)));
    if (t->prompt_len > 0) {
        msg = svc_json_pack("{s:s, s:s%}", "role", "user", "content", t->prompt, t->prompt_len);
        svc_json_append(messages, msg);
    }
    if (t->mi.reasoning) {
        /* o-series and gpt-5 reject max_tokens and every sampling option: they get the reply
         * limit as max_completion_tokens and nothing else. */
        body = svc_json_pack("{s:s, s:o, s:I, s:b, s:{s:b}}", "model", t->params.model, "messages",
                             messages, "max_completion_tokens", (long long)max_tokens, "stream", 1,
                             "stream_options", "include_usage", 1);
    } else {
        /* The frontend's own temperature wins, then the user's /model setting, then the env.
         * Zeros are real values and are sent as such. */
        body = svc_json_pack(
            "{s:s, s:o, s:I, s:f, s:f, s:f, s:b, s:{s:b}}", "model", t->params.model, "messages",
            messages, "max_tokens", (long long)max_tokens, "temperature",
            t->has_temperature          ? t->temperature
            : t->params.has_temperature ? t->params.temperature
                                        : (double)chat_setting.OPENAI_TEMPERATURE.i / 100.0,
            "presence_penalty",
            t->params.has_presence ? t->params.presence
                                   : (double)chat_setting.OPENAI_PRESENCE_PENALTY.i / 100.0,
            "frequency_penalty",
            t->params.has_frequency ? t->params.frequency
                                    : (double)chat_setting.OPENAI_FREQUENCY_PENALTY.i / 100.0,
            "stream", 1, "stream_options", "include_usage", 1);
        if (body != NULL && t->has_top_p)
            svc_json_set(body, "top_p", svc_json_real(t->top_p));
    }
    if (body == NULL)
        return SVC_ENOMEM;
    text = svc_json_dump(body, SVC_JSON_SHORT_REALS);
    svc_json_destroy(&body);
    if (text == NULL)
        return SVC_ENOMEM;

    while (blen > 0 && base[blen - 1] == '/')
        blen--;
    snprintf(url, sizeof(url), "%.*s/chat/completions", (int)blen, base);
    headers[nh++] = "Content-Type: application/json";
    headers[nh++] = "Accept: text/event-stream";
    snprintf(hid, sizeof(hid), "X-Request-Id: %s", t->rid);
    headers[nh++] = hid;
    if (chat_setting.OPENAI_KEY.s[0] != '\0') {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", chat_setting.OPENAI_KEY.s);
        headers[nh++] = auth;
    }
    headers[nh] = NULL;
    fr.method = "POST";
    fr.url = url;
    fr.headers = headers;
    fr.body = text;
    fr.body_len = strlen(text);
    fr.idle_timeout_ms = chat_setting.CHAT_UPSTREAM_IDLE_TIMEOUT.i * 1000;
    fr.proxy = chat_setting.SOCKS_PROXY.s;
    fr.ca_file = chat_setting.OPENAI_CA_FILE.s;
    fr.http = t->w->upstream_http;
    /* With many streams open, nearly every connection to the upstream is busy, and libcurl's
     * search for an idle one walks them all for each new request (docs/benchmarks.md): skip it. */
    fr.fresh_connection = svc_fetch_multi_active(t->w->upstream) >= UPSTREAM_REUSE_LIMIT;
    rc = meter_start(t->meter, &fr, 1);
    free(text);
    svc_util_wipe(auth, sizeof(auth));
    SVC_LOG_INFO(t->rid, "upstream", "user=\"%s\" model=%s history=%zu max_tokens=%ld", t->username,
                 t->params.model, svc_json_array_len(t->history), max_tokens);
    return rc;
}

void chat_turn_upstream(struct chat_turn *t)
{
    if (start_upstream(t) != SVC_OK) /* the meter released the hold */
        chat_turn_fail(t, "内部错误 | internal error");
}

/* The context is collected: admit the turn through a meter (its tokens per key and user, then
 * the Reserve), then go upstream (charge.c). */
static void context_collected(struct chat_turn *t)
{
    struct svc_ratelimit_scope sc[2];

    t->meter = meter_create(t->w->meters, &chat_meter_hooks, t, t->rid, t->reply_id,
                            t->params.model, &t->mi);
    if (t->meter == NULL) {
        chat_turn_reply(t, 500, "Fail", "out of memory");
        return;
    }
    for (int i = 0; i < t->tpm_scopes; i++) {
        sc[i].name = t->tpm_names[i];
        sc[i].limit = t->tpm_limits[i];
    }
    meter_set_tpm(t->meter, t->tpm_tag, sc, t->tpm_scopes);
    chat_charge_reserve(t);
}

/* ---- the context walk ---- */

static void walk_next(struct chat_turn *t);

static long message_cost(struct chat_turn *t, const char *role, const char *content, size_t len)
{
    return (long)svc_modelmap_message_tokens(&t->mi, role, content, len, NULL);
}

/*
 * The newest earlier message does not fit whole: keep the longest tail of its content that does
 * (cut at a UTF-8 character boundary, counted exactly). This is the case of a continuation: a
 * reply cut for length used the whole budget, so without its tail the model would continue
 * blind (docs/tokens.md). A binary search over the start offset; each candidate is counted, so
 * what is sent always fits even where the count of a tail is not monotonic in its start.
 * Returns the shortened message's cost (its content replaced), or -1 when no non-empty tail fits.
 */
static long fit_tail(struct chat_turn *t, struct svc_json *msg, long room)
{
    const char *role = svc_json_str(svc_json_member(msg, "role"));
    struct svc_json *content = svc_json_member(msg, "content");
    const char *s = svc_json_str(content);
    size_t len = svc_json_strlen(content), lo = 0, hi, best;
    long best_cost = -1, c;

    if (s == NULL || role == NULL || room <= 0)
        return -1;
    best = len;
    hi = len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2, m = mid;

        while (m < hi && ((unsigned char)s[m] & 0xC0) == 0x80)
            m++;
        if (m == hi) { /* no character starts in [mid, hi) */
            hi = mid;
            continue;
        }
        if ((c = message_cost(t, role, s + m, len - m)) < 0)
            return -1;
        if (c <= room) {
            best = m;
            best_cost = c;
            hi = mid; /* an earlier start may fit too */
        } else {
            lo = m + 1;
        }
    }
    if (best >= len || best_cost < 0)
        return -1;
    if (svc_json_set(msg, "content", svc_json_stringn(s + best, len - best)) != 0)
        return -1;
    return best_cost;
}

static void on_history(void *data, int err, const struct svc_redis_reply *reply)
{
    struct chat_turn *t = data;
    struct svc_json *msg = NULL;
    char parent[CHAT_ID_MAX + 1];
    const char *v;
    size_t vlen;

    if (t->req == NULL)
        goto out;
    if (err != SVC_OK || svc_redis_reply_type(reply) == SVC_REDIS_ERROR) {
        svc_metric_add(&chat_stats.chat_context_errors_total, 1);
        chat_turn_reply(t, 503, "Fail", "会话存储不可用，请稍后再试 | Conversation store unavailable, "
                                       "please try again later");
        goto out;
    }
    if (svc_redis_reply_type(reply) != SVC_REDIS_STRING) { /* expired or unknown: chain ends */
        context_collected(t);
        goto out;
    }
    v = svc_redis_reply_str(reply, &vlen);
    if (chat_ctx_decode(v, vlen, &msg, parent) != SVC_OK) {
        SVC_LOG_WARN(t->rid, "context", "ignoring a malformed stored message %s", t->walk_id);
        context_collected(t);
        goto out;
    }
    {
        struct svc_json *content = svc_json_member(msg, "content");
        long cost = (long)svc_modelmap_message_tokens(
            &t->mi, svc_json_str(svc_json_member(msg, "role")), svc_json_str(content),
            svc_json_strlen(content), NULL);
        long limit = t->budget - (long)chat_setting.CHAT_MIN_RESPONSE_TOKENS.i;
        if (cost >= 0 && t->budget_used + cost > limit && svc_json_array_len(t->history) == 0 &&
            strcmp(svc_json_str(svc_json_member(msg, "role")) ?: "", "assistant") == 0) {
            /* the parent reply alone is too long (a continuation): its tail, then stop */
            cost = fit_tail(t, msg, limit - t->budget_used);
            if (cost >= 0) {
                t->budget_used += cost;
                svc_json_append(t->history, msg);
                SVC_LOG_INFO(t->rid, "context", "parent reply cut to its last %zu bytes to fit",
                             svc_json_strlen(svc_json_member(msg, "content")));
                context_collected(t);
                goto out;
            }
        }
        if (cost < 0 || t->budget_used + cost > limit) { /* older messages would not fit */
            svc_json_destroy(&msg);
            context_collected(t);
            goto out;
        }
        t->budget_used += cost;
    }
    svc_json_append(t->history, msg);
    snprintf(t->walk_id, sizeof(t->walk_id), "%s", parent);
    walk_next(t);
out:
    chat_turn_unref(t);
}

static void walk_next(struct chat_turn *t)
{
    char key[CHAT_KEY_MAX], ttl[24];
    int rc;

    if (t->walk_id[0] == '\0' ||
        svc_json_array_len(t->history) >= (size_t)chat_setting.CHAT_MAX_HISTORY.i ||
        chat_ctx_key(key, sizeof(key), t->user_id, t->walk_id) != SVC_OK) {
        context_collected(t);
        return;
    }
    const char *argv[] = {"GET", key};
    size_t lens[] = {3, strlen(key)};
    rc = svc_redis_async_cmd(t->w->redis, on_history, t, 2, argv, lens);
    if (rc != SVC_OK) {
        svc_metric_add(&chat_stats.chat_context_errors_total, 1);
        chat_turn_reply(t, 503, "Fail", "会话存储不可用，请稍后再试 | Conversation store unavailable, "
                                       "please try again later");
        return;
    }
    t->refs++;
    /* A conversation in use stays alive: each message read gets a fresh TTL. */
    snprintf(ttl, sizeof(ttl), "%lld", (long long)chat_setting.CHAT_SESSION_TTL.i * 60);
    const char *exargv[] = {"EXPIRE", key, ttl};
    size_t exlens[] = {6, strlen(key), strlen(ttl)};
    if (svc_redis_async_cmd(t->w->redis, NULL, NULL, 3, exargv, exlens) != SVC_OK)
        SVC_LOG_DEBUG(t->rid, "context", "cannot refresh a TTL");
}

/* ---- authentication ---- */

/* ---- rate limits ---- */

static void on_rate_checked(void *data, int err, int allowed, long long count)
{
    struct chat_turn *t = data;

    (void)count;
    if (t->req == NULL)
        goto out;
    if (err != SVC_OK) /* a limiter that cannot count must not stop the chat */
        SVC_LOG_WARN(t->rid, "ratelimit", "cannot count this request: %s", svc_strerror(err));
    if (err == SVC_OK && !allowed) {
        svc_metric_add(&chat_stats.chat_rate_limited_total, 1);
        if (svc_req_add_header(t->req, "Retry-After", "60") != SVC_OK)
            SVC_LOG_ERR(t->rid, "ratelimit", "cannot add Retry-After");
        chat_turn_reply(t, 429, "Fail", "Too many requests, please try again later");
        goto out;
    }
    walk_next(t);
out:
    chat_turn_unref(t);
}

/* A key's own RPM when it has one, else CHAT_RATE_LIMIT per user; then the context walk. */
static void rate_limit_then_walk(struct chat_turn *t, const Chatweb__Auth__Identity *id)
{
    char scope[160];
    long long limit = 0;

    if (id != NULL && id->rpm_limit > 0 && id->key_id != NULL && id->key_id[0] != '\0') {
        limit = id->rpm_limit;
        snprintf(scope, sizeof(scope), "key:%s", id->key_id);
    } else if (chat_setting.CHAT_RATE_LIMIT.i > 0) {
        limit = chat_setting.CHAT_RATE_LIMIT.i;
        snprintf(scope, sizeof(scope), "chat:%lld", t->user_id);
    }
    if (limit == 0 || svc_ratelimit_hit(t->w->redis, scope, limit, 60, on_rate_checked, t) != SVC_OK) {
        walk_next(t);
        return;
    }
    t->refs++;
}

/* The exact prompt of this turn in chat format, before any history: the reply priming, the
 * system message and the user's message. >= 0, or -1 when out of memory. */
static long count_prompt(struct chat_turn *t)
{
    long long n = svc_modelmap_reply_priming(&t->mi), m;

    if (t->system_message != NULL && t->system_message[0] != '\0') {
        m = svc_modelmap_message_tokens(&t->mi, "system", t->system_message,
                                        strlen(t->system_message), NULL);
        if (m < 0)
            return -1;
        n += m;
    }
    if (t->prompt_len > 0) {
        m = svc_modelmap_message_tokens(&t->mi, "user", t->prompt, t->prompt_len, NULL);
        if (m < 0)
            return -1;
        n += m;
    }
    return (long)n;
}

/* The token-per-minute scopes of this turn: the API key's own limit, and CHAT_TPM_LIMIT for the
 * user; both under the user's hash tag, so one atomic script checks them together. */
static void tpm_scopes_setup(struct chat_turn *t, const Chatweb__Auth__Identity *id)
{
    t->tpm_scopes = 0;
    snprintf(t->tpm_tag, sizeof(t->tpm_tag), "u%lld", t->user_id);
    if (id != NULL && id->tpm_limit > 0 && id->key_id != NULL && id->key_id[0] != '\0') {
        snprintf(t->tpm_names[t->tpm_scopes], sizeof(t->tpm_names[0]), "key:%s", id->key_id);
        t->tpm_limits[t->tpm_scopes++] = id->tpm_limit;
    }
    if (chat_setting.CHAT_TPM_LIMIT.i > 0) {
        snprintf(t->tpm_names[t->tpm_scopes], sizeof(t->tpm_names[0]), "user");
        t->tpm_limits[t->tpm_scopes++] = chat_setting.CHAT_TPM_LIMIT.i;
    }
}

/* Who the client is (from auth, or remembered): commands, refusals, or on with the chat. */
static void on_identity(struct chat_turn *t, int result, const char *scheme,
                        const Chatweb__Auth__Identity *id)
{
    long budget, limit;
    char msg[256];

    if (id != NULL) {
        t->user_id = id->user_id;
        t->is_static = id->is_static;
        t->via_key = id->key_id != NULL && id->key_id[0] != '\0';
        snprintf(t->username, sizeof(t->username), "%s", id->username ? id->username : "");
        snprintf(t->model_setting, sizeof(t->model_setting), "%s", id->model ? id->model : "");
        chat_model_parse(id->model, chat_setting.OPENAI_MODEL.s, &t->params);
    }
    if (t->cmd != CHAT_CMD_NONE) {
        chat_command_run(t, result);
        return;
    }
    switch (result) {
    case CHATWEB__AUTH__AUTH_RESULT__AUTH_OK:
        break;
    case CHATWEB__AUTH__AUTH_RESULT__AUTH_UNKNOWN_USER:
    case CHATWEB__AUTH__AUTH_RESULT__AUTH_WRONG_PASSWORD:
    case CHATWEB__AUTH__AUTH_RESULT__AUTH_BLOCKED:
        if (scheme != NULL && strcmp(scheme, "basic") == 0) {
            chat_turn_fail(t, "账号未授权,请输入/login登录其他账户");
            return;
        }
        /* a bearer token the frontend must drop */
        __attribute__((fallthrough));
    default:
        chat_turn_reply(t, 200, "Unauthorized", "Error: 无访问权限 | No access rights");
        return;
    }
    /* The seed's budget rule (§6.3): the user's max_tokens override, else OPENAI_MAX_TOKENS;
     * never more than the model's own context window. */
    svc_modelmap_lookup(t->w->models, t->params.model, &t->mi);
    budget = t->params.max_tokens > 0 ? t->params.max_tokens
                                      : (long)chat_setting.OPENAI_MAX_TOKENS.i;
    if (budget > t->mi.context_window)
        budget = (long)t->mi.context_window;
    limit = budget - (long)chat_setting.CHAT_MIN_RESPONSE_TOKENS.i;
    t->budget_used = count_prompt(t);
    if (t->budget_used < 0) {
        chat_turn_reply(t, 500, "Fail", "内部错误 | internal error");
        return;
    }
    if (t->budget_used > limit) {
        long over = t->budget_used - limit;
        snprintf(msg, sizeof(msg),
                 "消息过长：%ld tokens，超出 %ld tokens（上下文 %ld，回复保留 %lld） | The message is "
                 "too long: %ld tokens, %ld more than fit (context %ld tokens, %lld kept for the "
                 "reply)",
                 t->budget_used, over, budget, (long long)chat_setting.CHAT_MIN_RESPONSE_TOKENS.i,
                 t->budget_used, over, budget, (long long)chat_setting.CHAT_MIN_RESPONSE_TOKENS.i);
        chat_turn_fail(t, msg);
        return;
    }
    t->budget = budget;
    /* An API key may be limited to some models (accounts.md). */
    if (id != NULL && id->n_allowed_models > 0) {
        size_t i;
        for (i = 0; i < id->n_allowed_models; i++)
            if (strcmp(id->allowed_models[i], t->params.model) == 0)
                break;
        if (i == id->n_allowed_models) {
            snprintf(msg, sizeof(msg), "此密钥不能使用模型 %.64s | this key may not use model %.64s",
                     t->params.model, t->params.model);
            chat_turn_fail(t, msg);
            return;
        }
    }
    tpm_scopes_setup(t, id);
    snprintf(t->walk_id, sizeof(t->walk_id), "%s", t->parent_id);
    rate_limit_then_walk(t, id);
}

static void on_authenticated(void *ctx, int err, int result, const char *scheme,
                             const Chatweb__Auth__Identity *id, long long retry_after_ms,
                             const char *errmsg)
{
    struct chat_turn *t = ctx;

    t->auth_call = NULL;
    if (err != SVC_OK) {
        svc_metric_add(&chat_stats.chat_auth_errors_total, 1);
        SVC_LOG_ERR(t->rid, "auth", "Authenticate failed: %s", errmsg ? errmsg : "");
        chat_turn_reply(t, 503, "Fail", "认证服务不可用，请稍后再试 | Authentication service "
                                        "unavailable, please try again later");
        return;
    }
    if (result == CHATWEB__AUTH__AUTH_RESULT__AUTH_THROTTLED && t->cmd == CHAT_CMD_NONE) {
        /* Throttled is not "wrong": never the Unauthorized envelope, which makes the frontend
         * drop a token that may well be right. */
        char ra[24], msg[200];
        snprintf(ra, sizeof(ra), "%lld", (retry_after_ms + 999) / 1000);
        if (t->req != NULL && svc_req_add_header(t->req, "Retry-After", ra) != SVC_OK)
            SVC_LOG_ERR(t->rid, "auth", "cannot add Retry-After");
        snprintf(msg, sizeof(msg), "登录失败次数过多，请 %s 秒后再试 | Too many failed logins, retry "
                                   "after %s s",
                 ra, ra);
        chat_turn_reply(t, 429, "Fail", msg);
        return;
    }
    on_identity(t, result, scheme, id);
}

/* ---- request parsing ---- */

static int parse_turn(struct chat_turn *t, const char *body, size_t len, char *err, size_t errlen)
{
    struct svc_json *j, *prompt, *options, *parent, *sys, *temp, *topp;
    char jerr[160];
    int rc = SVC_EINVAL;

    j = svc_json_parse(body, len, SVC_JSON_STRICT, jerr, sizeof(jerr));
    if (j == NULL) {
        snprintf(err, errlen, "invalid JSON: %s", jerr);
        return SVC_EINVAL;
    }
    if (!svc_json_is_object(j)) {
        snprintf(err, errlen, "the body must be a JSON object");
        goto out;
    }
    prompt = svc_json_member(j, "prompt");
    options = svc_json_member(j, "options");
    sys = svc_json_member(j, "systemMessage");
    temp = svc_json_member(j, "temperature");
    topp = svc_json_member(j, "top_p");
    if (prompt != NULL && !svc_json_is_string(prompt)) {
        snprintf(err, errlen, "prompt must be a string");
        goto out;
    }
    if (prompt != NULL && svc_json_strlen(prompt) > PROMPT_MAX) {
        snprintf(err, errlen, "prompt is longer than %u bytes", PROMPT_MAX);
        goto out;
    }
    if (options != NULL && !svc_json_is_object(options) && !svc_json_is_null(options)) {
        snprintf(err, errlen, "options must be an object");
        goto out;
    }
    parent = svc_json_member(options, "parentMessageId");
    if (parent != NULL && !svc_json_is_string(parent) && !svc_json_is_null(parent)) {
        snprintf(err, errlen, "options.parentMessageId must be a string");
        goto out;
    }
    if (sys != NULL && !svc_json_is_null(sys) &&
        (!svc_json_is_string(sys) || svc_json_strlen(sys) > SYSTEM_MAX)) {
        snprintf(err, errlen, "systemMessage must be a string of at most %u bytes", SYSTEM_MAX);
        goto out;
    }
    if (temp != NULL && !svc_json_is_null(temp) &&
        (!svc_json_is_number(temp) || svc_json_number(temp) < 0 || svc_json_number(temp) > 2)) {
        snprintf(err, errlen, "temperature must be a number from 0 to 2");
        goto out;
    }
    if (topp != NULL && !svc_json_is_null(topp) &&
        (!svc_json_is_number(topp) || svc_json_number(topp) < 0 || svc_json_number(topp) > 1)) {
        snprintf(err, errlen, "top_p must be a number from 0 to 1");
        goto out;
    }
    t->prompt_len = prompt != NULL ? svc_json_strlen(prompt) : 0;
    t->prompt = malloc(t->prompt_len + 1);
    if (t->prompt == NULL) {
        rc = SVC_ENOMEM;
        goto out;
    }
    memcpy(t->prompt, prompt != NULL ? svc_json_str(prompt) : "", t->prompt_len);
    t->prompt[t->prompt_len] = '\0';
    if (svc_json_is_string(sys) && (t->system_message = strdup(svc_json_str(sys))) == NULL) {
        rc = SVC_ENOMEM;
        goto out;
    }
    if (svc_json_is_string(parent)) {
        /* An id we never minted cannot have context: degrade to "no history", not an error. */
        if (chat_id_valid(svc_json_str(parent)))
            snprintf(t->parent_id, sizeof(t->parent_id), "%s", svc_json_str(parent));
    }
    if (t->prompt_len == 0 && t->parent_id[0] == '\0') {
        snprintf(err, errlen, "prompt is empty");
        goto out;
    }
    if (svc_json_is_number(temp)) {
        t->has_temperature = 1;
        t->temperature = svc_json_number(temp);
    }
    if (svc_json_is_number(topp)) {
        t->has_top_p = 1;
        t->top_p = svc_json_number(topp);
    }
    rc = SVC_OK;
out:
    svc_json_destroy(&j);
    return rc;
}

/* ---- request lifecycle hooks ---- */

/* The client left before the end: what it was sent stays the context of its next turn; the
 * meter, detached in the cleanup right after, still reads, counts and charges what the
 * upstream already sent (meter.h). */
static void on_client_gone(void *data, struct svc_req *req)
{
    struct chat_turn *t = data;
    size_t n = 0;

    (void)req;
    svc_metric_add(&chat_stats.chat_client_aborts_total, 1);
    if (t->meter != NULL && t->streaming && !t->ended) {
        (void)meter_text(t->meter, &n);
        SVC_LOG_INFO(t->rid, "stream", "client left after %zu bytes of reply", n);
        save_turn(t, 0);
    }
}

static void on_request_done(void *data)
{
    struct chat_turn *t = data;

    svc_fetch_cancel(&t->auth_call);
    meter_detach(&t->meter); /* no meter hook runs after this */
    if (t->streaming)
        svc_metric_add(&chat_stats.chat_streams_open, -1);
    t->req = NULL;
    chat_turn_unref(t);
}

int chat_process(void *ctx, struct svc_req *req)
{
    struct chat_turn *t;
    const char *authz = svc_req_header(req, "Authorization");
    const char *cookie;
    const char *body;
    size_t len;
    char err[256];
    int rc;

    (void)ctx;
    svc_metric_add(&chat_stats.chat_requests_total, 1);
    t = calloc(1, sizeof(*t));
    if (t == NULL) {
        svc_req_error(req, 500, "out of memory");
        return SVC_HTTP_DONE;
    }
    t->refs = 1;
    t->req = req;
    t->w = svc_loop_data(svc_req_loop(req));
    t->history = svc_json_array();
    snprintf(t->rid, sizeof(t->rid), "%s", svc_req_id(req));
    svc_buf_init(&t->held, REPLY_MAX * 2);
    svc_util_uuid4(t->user_msg_id);
    svc_util_uuid4(t->reply_id);
    svc_req_set_cleanup(req, on_request_done, t);
    svc_req_on_abort(req, on_client_gone, t);
    if (t->history == NULL) {
        svc_req_error(req, 500, "out of memory");
        return SVC_HTTP_DONE;
    }

    body = svc_req_body(req, &len);
    rc = parse_turn(t, body, len, err, sizeof(err));
    if (rc != SVC_OK) {
        chat_turn_reply(t, rc == SVC_EINVAL ? 400 : 500, "Fail", err);
        return SVC_HTTP_DONE;
    }
    {
        const char *lang = svc_req_header(req, "Accept-Language");
        t->lang_en = lang != NULL && strncasecmp(lang, "en", 2) == 0;
    }
    t->cmd = chat_command_parse(t->prompt, &t->cmd_arg);
    if (chat_command_early(t))
        return SVC_HTTP_DONE;

    cookie = svc_req_header(req, "Cookie");
    if ((authz == NULL || authz[0] == '\0') && (cookie == NULL || strstr(cookie, "chatweb_session=") == NULL)) {
        if (t->cmd != CHAT_CMD_NONE) { /* the seed: commands without credentials */
            chat_turn_fail(t, t->lang_en ? "Not logged in" : "未登录");
            return SVC_HTTP_DONE;
        }
        /* The seed's browser-native login: the XHR gets a Basic challenge. */
        if (svc_req_add_header(req, "WWW-Authenticate", "Basic realm=\"Restricted\"") != SVC_OK)
            SVC_LOG_ERR(t->rid, "auth", "cannot add the challenge header");
        svc_req_reply(req, 401, NULL, "", 0);
        return SVC_HTTP_DONE;
    }
    {
        int remembered = 0;
        if (auth_client_authenticate(t->w->auth, t->w->rpc, authz, cookie, svc_req_client_ip(req),
                                     t->rid, on_authenticated, t, &t->auth_call,
                                     &remembered) != SVC_OK) {
            chat_turn_reply(t, 503, "Fail", "认证服务不可用 | Authentication service unavailable");
            return SVC_HTTP_DONE;
        }
        if (remembered) {
            svc_metric_add(&chat_stats.chat_auth_memo_hits_total, 1);
            return SVC_HTTP_ASYNC; /* a reply given meanwhile is sent; otherwise we answer later */
        }
    }
    return SVC_HTTP_ASYNC;
}
