/*
 * One chat turn, once web.c has admitted it: its lifetime, its answers, and the metered stream
 *
 *   upstream stream (the meter) ─> one cumulative JSON object per upstream chunk to the client,
 *        as fast as it reads ─> the meter settles ─> store the user message and the reply
 *        ─> the final object, end.
 *
 * The calls from the request's side (web.c, commands.c, charge.c) come down to this file; it
 * calls nothing of theirs (context.c and model.c are below it).
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

#define REPLY_MAX (4u << 20)      /* bytes of one reply kept in memory */
/* Upstream transfers open on one loop beyond which new ones take a fresh connection: below it
 * keep-alive saves a TLS handshake per request, above it the walk costs more than it saves. */
#define UPSTREAM_REUSE_LIMIT 1024

/* ---- lifetime ---- */

void chat_turn_unref(struct chat_turn *t)
{
    if (--t->refs > 0)
        return;
    svc_timer_destroy(&t->save_timer);
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

static void on_saved(void *ctx, int err, const struct svc_redis_reply *reply);

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
    snprintf(ttl, sizeof(ttl), "%lld", (long long)t->setting->CHAT_SESSION_TTL.i * 60);
    const char *argv[] = {"SET", key, value, "EX", ttl};
    size_t lens[] = {3, strlen(key), strlen(value), 2, strlen(ttl)};
    rc = svc_redis_async_cmd(t->w->redis, track ? on_saved : NULL, track ? t : NULL, 5, argv,
                             lens);
    free(value);
    if (rc != SVC_OK) {
        svc_metric_add(&t->stats->chat_context_errors_total, 1);
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
    svc_metric_add(&t->stats->chat_replies_completed_total, 1);
}

/*
 * Confirming the context (CHAT_CONTEXT_REPLICAS > 0). Redis replicates asynchronously: a turn
 * stored on a master that is being replaced (a failover; a forced one leaves the old master
 * writable for seconds) is lost, and the conversation's next turn goes on without its history.
 * So after its SETs the turn WAITs for that many replicas. When fewer confirm (or a SET failed)
 * the sentinels are asked at once; if they name a new master within CONTEXT_RECHECK_MS the turn
 * is stored again there (the SETs are idempotent), else it waits once more. The final object
 * goes out when the context is confirmed, stored again, or after CONTEXT_ROUNDS rounds (logged).
 * A master that had a replica less than CONTEXT_FAILOVER_MS ago may be one the sentinels are
 * replacing: between the replica's promotion and the sentinels naming it (a second or more) the
 * old master takes writes that are lost when it is demoted, so the turn keeps asking until then.
 * A replica that is just gone costs the turns of those few seconds the wait, no more.
 */
#define CONTEXT_WAIT_MS 100
#define CONTEXT_RECHECK_MS 300
#define CONTEXT_ROUNDS 4
#define CONTEXT_FAILOVER_MS 5000

static void context_confirm(struct chat_turn *t);
static void context_recheck(struct chat_turn *t);

static void on_recheck(void *data, struct svc_timer *timer)
{
    struct chat_turn *t = data;
    uint64_t replicated = svc_redis_async_replicated_ms(t->w->redis);

    (void)timer;
    t->save_rounds++;
    if (svc_redis_async_master_epoch(t->w->redis) != t->save_epoch) {
        /* first, even after the last round: the turn is on a master that is gone */
        SVC_LOG_NOTICE(t->rid, "context", "the Redis master changed: storing the turn again");
        t->save_epoch = svc_redis_async_master_epoch(t->w->redis);
        t->saves_failed = 0;
        t->saves_pending = save_turn(t, 1);
        if (t->saves_pending == 0) /* not connected to it yet */
            context_recheck(t);
    } else if (t->save_rounds >= CONTEXT_ROUNDS &&
               (replicated == 0 || svc_loop_now(t->w->loop) >= replicated + CONTEXT_FAILOVER_MS)) {
        svc_metric_add(&t->stats->chat_context_errors_total, 1);
        SVC_LOG_WARN(t->rid, "context", "no replica confirmed the turn's context after %d rounds",
                     t->save_rounds);
        finish_stream(t);
    } else {
        context_confirm(t); /* the same master: it may be a slow replica */
    }
    chat_turn_unref(t);
}

static void context_recheck(struct chat_turn *t)
{
    svc_redis_async_recheck(t->w->redis);
    if ((t->save_timer != NULL ||
         svc_timer_create(&t->save_timer, t->w->loop, on_recheck, t) == SVC_OK) &&
        svc_timer_start(t->save_timer, CONTEXT_RECHECK_MS) == SVC_OK) {
        t->refs++;
        return;
    }
    finish_stream(t);
}

static void on_waited(void *ctx, int err, const struct svc_redis_reply *reply)
{
    struct chat_turn *t = ctx;

    if (err == SVC_OK && svc_redis_reply_type(reply) == SVC_REDIS_INTEGER &&
        svc_redis_reply_int(reply) >= t->setting->CHAT_CONTEXT_REPLICAS.i)
        finish_stream(t);
    else
        context_recheck(t);
    chat_turn_unref(t);
}

/* The round's SETs have answered: confirm them, or finish. */
static void context_confirm(struct chat_turn *t)
{
    char key[CHAT_KEY_MAX];

    if (t->setting->CHAT_CONTEXT_REPLICAS.i == 0 || t->req == NULL) {
        finish_stream(t);
        return;
    }
    if (t->saves_failed) {
        context_recheck(t);
        return;
    }
    if (chat_ctx_key(key, sizeof(key), t->user_id, t->reply_id) != SVC_OK ||
        svc_redis_async_wait(t->w->redis, key, (int)t->setting->CHAT_CONTEXT_REPLICAS.i,
                             CONTEXT_WAIT_MS, on_waited, t) != SVC_OK) {
        context_recheck(t);
        return;
    }
    t->refs++;
}

static void on_saved(void *ctx, int err, const struct svc_redis_reply *reply)
{
    struct chat_turn *t = ctx;

    if (err != SVC_OK || svc_redis_reply_type(reply) == SVC_REDIS_ERROR) {
        svc_metric_add(&t->stats->chat_context_errors_total, 1);
        SVC_LOG_WARN(t->rid, "context", "storing the turn failed: %s",
                     err != SVC_OK ? svc_strerror(err) : svc_redis_reply_str(reply, NULL));
        t->saves_failed = 1;
    }
    if (--t->saves_pending == 0)
        context_confirm(t);
    chat_turn_unref(t);
}

/* ---- streaming objects to the client ---- */

/*
 * Builds one cumulative object and appends it (with its leading newline) to out, written field by
 * field (a jansson tree of it per upstream event was a quarter of chat's CPU with 1,000 streams
 * open): {"role","id","parentMessageId","text","delta","detail"}, as the tree gave them. detail is
 * the upstream's event as it came (a JSON object the meter has checked), or null.
 */
static int build_object(struct chat_turn *t, const char *delta, size_t delta_len,
                        const char *detail, size_t detail_len, struct svc_buf *out)
{
    size_t text_len, len0 = out->len;
    const char *text = meter_text(t->meter, &text_len);
    const char *parent = t->prompt_len > 0 ? t->user_msg_id : t->parent_id;
    int rc = t->objects_sent > 0 || out == &t->held ? svc_buf_append(out, "\n", 1) : SVC_OK;

    if (rc == SVC_OK)
        rc = svc_buf_append_str(out, "{\"role\":\"assistant\",\"id\":");
    if (rc == SVC_OK)
        rc = svc_json_buf_string(out, t->reply_id, strlen(t->reply_id));
    if (rc == SVC_OK)
        rc = svc_buf_append_str(out, ",\"parentMessageId\":");
    if (rc == SVC_OK)
        rc = svc_json_buf_string(out, parent, strlen(parent));
    if (rc == SVC_OK)
        rc = svc_buf_append_str(out, ",\"text\":");
    if (rc == SVC_OK)
        rc = svc_json_buf_string(out, text != NULL ? text : "", text_len);
    if (rc == SVC_OK)
        rc = svc_buf_append_str(out, ",\"delta\":");
    if (rc == SVC_OK)
        rc = svc_json_buf_string(out, delta != NULL ? delta : "", delta_len);
    if (rc == SVC_OK)
        rc = svc_buf_append_str(out, ",\"detail\":");
    if (rc == SVC_OK && detail != NULL) {
        size_t at = out->len;
        rc = svc_buf_append(out, detail, detail_len);
        /* An event spread over several data: lines has newlines, which would cut the object's
         * line. In valid JSON they can only be whitespace (a string holds them escaped). */
        for (size_t i = at; rc == SVC_OK && i < out->len; i++)
            if (out->data[i] == '\n' || out->data[i] == '\r')
                out->data[i] = ' ';
    } else if (rc == SVC_OK) {
        rc = svc_buf_append_str(out, "null");
    }
    if (rc == SVC_OK)
        rc = svc_buf_append(out, "}", 1);
    if (rc != SVC_OK)
        out->len = len0;
    return rc;
}

static int write_object(struct chat_turn *t, const char *delta, size_t delta_len,
                        const char *detail, size_t detail_len)
{
    struct svc_buf line;
    int rc;

    svc_buf_init(&line, REPLY_MAX * 2);
    rc = build_object(t, delta, delta_len, detail, detail_len, &line);
    if (rc == SVC_OK)
        rc = svc_req_stream_write(t->req, line.data, line.len);
    if (rc == SVC_OK)
        t->objects_sent++;
    svc_buf_deinit(&line);
    return rc;
}

/* The client took some of what was waiting: the meter produces more. */
static void on_client_drained(void *ctx, struct svc_req *req)
{
    struct chat_turn *t = ctx;

    (void)req;
    if (t->meter != NULL)
        meter_resume(t->meter);
}

/* ---- the metered stream's hooks (services/meter) ---- */

static int on_meter_head(void *ctx)
{
    struct chat_turn *t = ctx;
    int rc;

    if (t->streaming)
        return SVC_OK;
    rc = svc_req_stream_start(t->req, 200, "application/octet-stream");
    if (rc == SVC_OK) {
        t->streaming = 1;
        svc_metric_add(&t->stats->chat_streams_open, 1);
        svc_req_on_drain(t->req, on_client_drained, t, METER_CLIENT_LOW);
    }
    return rc;
}

static size_t on_meter_pending(void *ctx)
{
    struct chat_turn *t = ctx;

    return t->req != NULL ? svc_req_stream_pending(t->req) : 0;
}

/* One upstream event: one cumulative object, the one with finish_reason held back until the
 * context is stored (see the top of this file). */
static int on_meter_event(void *ctx, const struct meter_event *ev)
{
    struct chat_turn *t = ctx;

    if (ev->done || !ev->has_choice)
        return 0; /* [DONE], the usage-only chunk, or keep-alive noise */
    if (ev->has_finish) {
        svc_buf_reset(&t->held);
        return build_object(t, ev->content, ev->content_len, ev->data, ev->len, &t->held);
    }
    return write_object(t, ev->content, ev->content_len, ev->data, ev->len);
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

    svc_metric_add(&t->stats->chat_upstream_errors_total, 1);
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

    svc_metric_add(&t->stats->chat_upstream_errors_total, 1);
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
static void on_meter_end(void *ctx, const struct meter_end *end)
{
    struct chat_turn *t = ctx;

    t->ended = 1;
    if (end->counted)
        svc_metric_add(&t->stats->chat_counted_charges_total, 1);
    else if (end->prompt_tokens > 0 || end->completion_tokens > 0) {
        svc_metric_add(&t->stats->chat_prompt_tokens_total, end->prompt_tokens);
        svc_metric_add(&t->stats->chat_completion_tokens_total, end->completion_tokens);
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
    t->save_epoch = svc_redis_async_master_epoch(t->w->redis);
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

int chat_turn_meter_create(struct chat_turn *t)
{
    return meter_create(&t->meter, t->w->meters, &chat_meter_hooks, t, t->rid, t->reply_id,
                        t->params.model, &t->mi);
}

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
    const char *base = t->setting->OPENAI_BASE_URL.s;
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
                                        : (double)t->setting->OPENAI_TEMPERATURE.i / 100.0,
            "presence_penalty",
            t->params.has_presence ? t->params.presence
                                   : (double)t->setting->OPENAI_PRESENCE_PENALTY.i / 100.0,
            "frequency_penalty",
            t->params.has_frequency ? t->params.frequency
                                    : (double)t->setting->OPENAI_FREQUENCY_PENALTY.i / 100.0,
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
    if (t->setting->OPENAI_KEY.s[0] != '\0') {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", t->setting->OPENAI_KEY.s);
        headers[nh++] = auth;
    }
    headers[nh] = NULL;
    fr.method = "POST";
    fr.url = url;
    fr.headers = headers;
    fr.body = text;
    fr.body_len = strlen(text);
    fr.idle_timeout_ms = t->setting->CHAT_UPSTREAM_IDLE_TIMEOUT.i * 1000;
    fr.proxy = t->setting->SOCKS_PROXY.s;
    fr.ca_file = t->setting->OPENAI_CA_FILE.s;
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

/* ---- request lifecycle hooks ---- */

/* The client left before the end: what it was sent stays the context of its next turn; the
 * meter, detached in the cleanup right after, still reads, counts and charges what the
 * upstream already sent (meter.h). */
static void on_client_gone(void *ctx, struct svc_req *req)
{
    struct chat_turn *t = ctx;
    size_t n = 0;

    (void)req;
    svc_metric_add(&t->stats->chat_client_aborts_total, 1);
    if (t->meter != NULL && t->streaming && !t->ended) {
        (void)meter_text(t->meter, &n);
        SVC_LOG_INFO(t->rid, "stream", "client left after %zu bytes of reply", n);
        save_turn(t, 0);
    }
}

static void on_request_done(void *ctx)
{
    struct chat_turn *t = ctx;

    svc_fetch_cancel(&t->auth_call);
    meter_detach(&t->meter); /* no meter hook runs after this */
    if (t->streaming)
        svc_metric_add(&t->stats->chat_streams_open, -1);
    t->req = NULL;
    chat_turn_unref(t);
}

int chat_turn_create(struct chat_turn **out, struct svc_req *req,
                     const struct chat_setting *setting, struct chat_stats *stats)
{
    struct chat_turn *t = calloc(1, sizeof(*t));

    *out = NULL;
    if (t == NULL)
        return SVC_ENOMEM;
    t->refs = 1;
    t->req = req;
    t->setting = setting;
    t->stats = stats;
    t->w = svc_loop_data(svc_req_loop(req));
    snprintf(t->rid, sizeof(t->rid), "%s", svc_req_id(req));
    svc_buf_init(&t->held, REPLY_MAX * 2);
    svc_util_uuid4(t->user_msg_id);
    svc_util_uuid4(t->reply_id);
    /* From here the request's cleanup owns the turn's first reference, failure or not. */
    svc_req_set_cleanup(req, on_request_done, t);
    svc_req_on_abort(req, on_client_gone, t);
    t->history = svc_json_array();
    if (t->history == NULL)
        return SVC_ENOMEM;
    *out = t;
    return SVC_OK;
}
