/*
 * /v1: the metered OpenAI-compatible API (docs/proxy.md).
 *
 *   parse + validate ─> Authenticate the chatweb API key (auth's client library)
 *        ─> model allowed? ─> requests per minute ─> count the prompt exactly
 *        ─> the meter (services/meter): tokens per minute, Reserve, the upstream call
 *        ─> the answer passed through unchanged (SSE events or JSON) ─> the meter settles.
 *
 * Request bodies are forwarded byte for byte unless something must change: a streamed request
 * gets stream_options.include_usage (and the usage chunk it did not ask for is not shown to it),
 * and a request without a reply limit gets the limit its hold covers. GET /v1/models is the
 * upstream's list filtered to the key's models; paths in PROXY_PASSTHROUGH are relayed unmetered.
 * Everything runs on the request's loop; nothing blocks.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/uio.h>

#include "auth.pb-c.h"
#include "auth/client.h"
#include "billing.pb-c.h"
#include "meter/meter.h"
#include "proxy.h"
#include "svc/fetch.h"
#include "svc/http.h"
#include "svc/json.h"
#include "svc/log.h"
#include "svc/loop.h"
#include "svc/modelmap.h"
#include "svc/ratelimit.h"
#include "svc/util.h"

#define MODELS_MAX 16
#define ALLOWED_BYTES 1024 /* of their names */
#define RELAY_MAX (16u << 20) /* bytes of an unmetered answer */
#define RPM_WINDOW_S 60
/* A request-limit check Redis could not answer is asked again this many times, this long apart,
 * before the request is refused (503): a failover or a reconnect takes that long. */
#define RPM_RETRIES 3
#define RPM_RETRY_MS 100

enum v1_kind { V1_CHAT, V1_COMPLETIONS, V1_EMBEDDINGS, V1_RESPONSES, V1_MODELS, V1_RELAY };

struct v1_call {
    struct meter_worker *w;
    struct svc_req *req; /* NULL once the request is over */
    char rid[72];
    char hold_id[48];
    enum v1_kind kind;
    char path[256];      /* after /v1 */
    char method[8];

    /* the request */
    struct svc_json *body;
    int stream, hide_usage, has_limit;
    int own_ratelimit; /* our x-ratelimit-* headers are on the reply: the upstream's are not */
    char up_ctype[128]; /* the upstream answer's Content-Type (pass_header), "" when none */
    char model[128];
    struct svc_modelmap_info mi;
    long long prompt_tokens, max_completion;

    /* who */
    struct svc_fetch *auth_call;
    long long user_id;
    char username[128];
    char key_id[64];
    int is_static;
    char **allowed; /* the key's models (NULL: any): one block, the pointers then the names */
    size_t nallowed;
    long long rpm, tpm;

    /* the answer */
    struct meter *meter;
    struct svc_fetch *relay;
    int streaming;
    uint64_t t0_us, first_byte_us; /* arrival; the answer's first byte to the client (0: none) */
    int upstream;                  /* index (upstreams.c) of the upstream asked last */
    int redis_pending;             /* rate-limit calls in flight: c is freed after the last */
    int rpm_tries;                 /* request-limit checks that Redis could not answer */
    struct svc_timer *rpm_retry;   /* the next check after such a failure */
    int client_key;                /* PROXY_CLIENT_KEYS=relay: the client's own key, "default" */
    unsigned tried;                /* upstreams asked for this request, one bit each */
    long long tokens_in, tokens_out;
};

/* ---- per model, key and upstream metrics (docs/proxy.md, "Metrics") ---- */

static struct svc_metric_vec *m_requests, *m_tokens_in, *m_tokens_out, *m_ttft, *m_duration;

/* The service's settings and counters, owned by main.c (proxy_v1_setup). */
static const struct proxy_setting *setting;
static struct proxy_stats *stats;

void proxy_v1_setup(const struct proxy_setting *s, struct proxy_stats *st)
{
    static const char *const by_request[] = {"model", "key", "upstream", "status"};
    static const char *const by_key[] = {"model", "key", "upstream"};
    static const char *const by_model[] = {"model", "upstream"};

    setting = s;
    stats = st;

    /* A family that cannot be made stays NULL and counts nothing (svc_metric_vec_add). */
    int rc = svc_metric_vec_create(&m_requests, "proxy_model_requests_total",
                                   "/v1 requests by model, API key id, upstream and status",
                                   SVC_METRIC_VEC_COUNTER, by_request, 4);
    if (rc == SVC_OK)
        rc = svc_metric_vec_create(&m_tokens_in, "proxy_model_prompt_tokens_total",
                                   "prompt tokens billed, by model, API key id and upstream",
                                   SVC_METRIC_VEC_COUNTER, by_key, 3);
    if (rc == SVC_OK)
        rc = svc_metric_vec_create(&m_tokens_out, "proxy_model_completion_tokens_total",
                                   "completion tokens billed, by model, API key id and upstream",
                                   SVC_METRIC_VEC_COUNTER, by_key, 3);
    if (rc == SVC_OK)
        rc = svc_metric_vec_create(&m_ttft, "proxy_time_to_first_token_seconds",
                                   "arrival to the answer's first byte to the client (a stream's "
                                   "first event), by model and upstream",
                                   SVC_METRIC_VEC_HISTOGRAM, by_model, 2);
    if (rc == SVC_OK)
        rc = svc_metric_vec_create(&m_duration, "proxy_request_duration_seconds",
                                   "arrival to the answer's last byte, by model and upstream",
                                   SVC_METRIC_VEC_HISTOGRAM, by_model, 2);
    if (rc != SVC_OK)
        SVC_LOG_ERR(NULL, "startup", "cannot create the per-model metrics: %s", svc_strerror(rc));
}

/* At the end of a request: one of each, under the model asked for and the key's id ("" before
 * authentication; "static" for a BASIC_AUTH or static user). */
static void record_metrics(struct v1_call *c, int status)
{
    const char *key = c->is_static ? "static" : c->key_id;
    const char *upstream_label = proxy_upstream_name(c->upstream);
    char st[8];
    uint64_t now = svc_loop_clock_us();

    snprintf(st, sizeof(st), "%d", status);
    svc_metric_vec_add(m_requests, (const char *[]){c->model, key, upstream_label, st}, 1);
    if (c->tokens_in > 0)
        svc_metric_vec_add(m_tokens_in, (const char *[]){c->model, key, upstream_label},
                           c->tokens_in);
    if (c->tokens_out > 0)
        svc_metric_vec_add(m_tokens_out, (const char *[]){c->model, key, upstream_label},
                           c->tokens_out);
    if (c->first_byte_us != 0)
        svc_metric_vec_observe(m_ttft, (const char *[]){c->model, upstream_label},
                               (double)(c->first_byte_us - c->t0_us) / 1e6);
    svc_metric_vec_observe(m_duration, (const char *[]){c->model, upstream_label},
                           (double)(now - c->t0_us) / 1e6);
}

/* ---- replies ---- */

/* OpenAI's error object: {"error":{"message","type","param","code"}}. */
/* OpenAI's error object: {"error":{"message","type","param":null,"code"}} (code may be NULL). */
static struct svc_json *error_object(const char *type, const char *code, const char *message)
{
    return svc_json_pack("{s:{s:s, s:s, s:n, s:s?}}", "error", "message", message, "type", type,
                         "param", "code", code);
}

static void v1_error(struct v1_call *c, int status, const char *type, const char *code,
                     const char *message)
{
    if (c->req == NULL)
        return;
    svc_req_reply_json(c->req, status, error_object(type, code, message));
}

static void add_header(struct v1_call *c, const char *name, const char *value)
{
    if (strncasecmp(name, "x-ratelimit-", 12) == 0)
        c->own_ratelimit = 1;
    if (c->req != NULL && svc_req_add_header(c->req, name, value) != SVC_OK)
        SVC_LOG_WARN(c->rid, "reply", "cannot add %s", name);
}

/*
 * Headers of the upstream's answer that are not passed on: hop-by-hop ones (RFC 9110 7.6.1),
 * the framing we set ourselves, cookies and browser policies meant for the upstream's own origin,
 * and the operator's organisation and project. Lower case: a header's first letter picks the few
 * names worth a strcasecmp (70 of them per request otherwise).
 */
static const char *const UPSTREAM_HEADERS_DROPPED[] = {
    "connection",      "keep-alive",       "proxy-connection", "proxy-authenticate",
    "te",              "trailer",          "transfer-encoding", "upgrade",
    "content-length",  "content-type",     "content-encoding", "date",
    "server",          "set-cookie",       "alt-svc",          "strict-transport-security",
    "openai-organization", "openai-project", "x-request-id",
};

/* An upstream header, passed on to the client unless dropped (svc_fetch_header_cb). The
 * upstream's X-Request-Id comes as X-Upstream-Request-Id beside ours; its Content-Type is kept in
 * up_ctype for the reply. */
static void pass_header(void *ctx, const char *name, const char *value)
{
    struct v1_call *c = ctx;

    if (strcasecmp(name, "content-type") == 0 && c->up_ctype[0] == '\0')
        svc_util_str_copy(c->up_ctype, sizeof(c->up_ctype), value);
    if (strcasecmp(name, "x-request-id") == 0) {
        add_header(c, "X-Upstream-Request-Id", value);
        return;
    }
    for (size_t i = 0; i < sizeof(UPSTREAM_HEADERS_DROPPED) / sizeof(UPSTREAM_HEADERS_DROPPED[0]);
         i++)
        if (tolower((unsigned char)name[0]) == UPSTREAM_HEADERS_DROPPED[i][0] &&
            strcasecmp(name, UPSTREAM_HEADERS_DROPPED[i]) == 0)
            return;
    if (strncasecmp(name, "access-control-", 15) == 0 ||
        (c->own_ratelimit && strncasecmp(name, "x-ratelimit-", 12) == 0))
        return;
    if (c->req != NULL && svc_req_add_header(c->req, name, value) != SVC_OK)
        SVC_LOG_WARN(c->rid, "reply", "cannot add %s", name);
}

/* The upstream answer's Content-Type, or JSON when it sent none (after pass_header ran). */
static const char *reply_ctype(const struct v1_call *c)
{
    return c->up_ctype[0] != '\0' ? c->up_ctype : "application/json";
}

static void call_free(struct v1_call *c)
{
    svc_json_destroy(&c->body);
    free(c->allowed);
    free(c);
}

static void on_request_done(void *ctx)
{
    struct v1_call *c = ctx;

    record_metrics(c, c->req != NULL ? svc_req_status(c->req) : 0);
    svc_fetch_cancel(&c->auth_call);
    svc_fetch_cancel(&c->relay);
    meter_detach(&c->meter); /* no meter hook runs after this; it ends the hold */
    svc_timer_destroy(&c->rpm_retry);
    if (c->streaming)
        svc_metric_add(&stats->proxy_streams_open, -1);
    c->req = NULL;
    if (c->redis_pending == 0) /* else the last rate-limit answer frees it */
        call_free(c);
}

static void on_client_gone(void *ctx, struct svc_req *req)
{
    (void)req;
    (void)ctx;
    svc_metric_add(&stats->proxy_client_aborts_total, 1);
}

/*
 * The URL of the call's path (after /v1) at its upstream, with the client's query string
 * (Azure-style clients send ?api-version=, list endpoints ?limit=&after=). SVC_ETOOLARGE: it does
 * not fit.
 */
static int upstream_url(const struct v1_call *c, char *url, size_t len)
{
    char query[PROXY_QUERY_MAX];
    int n;

    if (svc_req_query_string(c->req, query, sizeof(query)) != SVC_OK)
        return SVC_ETOOLARGE;
    n = snprintf(url, len, "%s%s%s", proxy_upstream_base(c->upstream), c->path, query);
    return n < 0 || (size_t)n >= len ? SVC_ETOOLARGE : SVC_OK;
}

/* ---- the metered answer: meter hooks ---- */

/* The client took what was waiting: the meter produces more (it stopped when the client fell
 * behind, see meter.h). */
static void on_client_drained(void *ctx, struct svc_req *req)
{
    struct v1_call *c = ctx;

    (void)req;
    if (c->meter != NULL)
        meter_resume(c->meter);
}

static int on_head(void *ctx)
{
    struct v1_call *c = ctx;
    int rc;

    if (!c->stream)
        return SVC_OK; /* the JSON answer goes out whole, in on_body */
    meter_upstream_headers(c->meter, pass_header, c);
    c->first_byte_us = svc_loop_clock_us();
    rc = svc_req_stream_start(c->req, 200, "text/event-stream; charset=utf-8");
    if (rc == SVC_OK) {
        c->streaming = 1;
        svc_metric_add(&stats->proxy_streams_open, 1);
        svc_req_on_drain(c->req, on_client_drained, c, METER_CLIENT_LOW);
    }
    return rc;
}

static size_t on_pending(void *ctx)
{
    struct v1_call *c = ctx;

    return c->req != NULL ? svc_req_stream_pending(c->req) : 0;
}

/* One SSE event, passed through as it came (data only), unless it is the usage chunk the client
 * did not ask for. */
static int on_event(void *ctx, const struct meter_event *ev)
{
    struct v1_call *c = ctx;
    struct iovec parts[3] = {
        {(void *)"data: ", 6}, {(void *)ev->data, ev->len}, {(void *)"\n\n", 2}};

    if (ev->usage_only && c->hide_usage)
        return 0;
    return svc_req_stream_writev(c->req, parts, 3); /* one chunk, one system call */
}

static int on_body(void *ctx, const char *body, size_t len)
{
    struct v1_call *c = ctx;

    meter_upstream_headers(c->meter, pass_header, c);
    c->first_byte_us = svc_loop_clock_us();
    return svc_req_reply(c->req, 200, "application/json", body, len);
}

/*
 * A stream that broke off after it started ends with an error event, as OpenAI's own API ends
 * one: `data: {"error":{...}}`. The OpenAI SDKs raise an APIError on it; without it a stream that
 * stops short (no [DONE]) ends their iteration as if the reply were complete.
 */
static void stream_error_event(struct v1_call *c, const char *message)
{
    struct svc_json *obj = error_object("server_error", "upstream_error", message);
    char *text = obj != NULL ? svc_json_dump(obj, 0) : NULL;

    svc_json_destroy(&obj);
    if (text != NULL) {
        struct iovec parts[3] = {{(void *)"data: ", 6}, {text, strlen(text)}, {(void *)"\n\n", 2}};
        (void)svc_req_stream_writev(c->req, parts, 3); /* a client gone or full: nothing to do */
    }
    free(text);
}

static void on_end(void *ctx, const struct meter_end *end)
{
    struct v1_call *c = ctx;
    char msg[512];

    if (end->counted) {
        SVC_LOG_INFO(c->rid, "billing", "no usage from the upstream: charged our count");
    }
    svc_metric_add(&stats->proxy_prompt_tokens_total, end->prompt_tokens);
    svc_metric_add(&stats->proxy_completion_tokens_total, end->completion_tokens);
    c->tokens_in = end->prompt_tokens;
    c->tokens_out = end->completion_tokens;
    if (end->started) {
        if (c->streaming) {
            if (end->err != SVC_OK || end->stream_error != NULL) {
                svc_metric_add(&stats->proxy_upstream_errors_total, 1);
                stream_error_event(c, end->stream_error != NULL ? end->stream_error
                                                                : "the upstream answer broke off");
            }
            svc_req_stream_end(c->req);
        } else if (end->err != SVC_OK || end->stream_error != NULL) {
            svc_metric_add(&stats->proxy_upstream_errors_total, 1);
            v1_error(c, 502, "server_error", "upstream_error",
                     end->stream_error != NULL ? end->stream_error
                                               : "the upstream answer broke off");
        }
        return;
    }
    svc_metric_add(&stats->proxy_upstream_errors_total, 1);
    if (end->status != 0 && end->status != 200) {
        /* The upstream's own error, passed through as it answered. */
        meter_upstream_headers(c->meter, pass_header, c);
        svc_req_reply(c->req, (int)end->status, reply_ctype(c), end->body != NULL ? end->body : "",
                      end->body_len);
        return;
    }
    snprintf(msg, sizeof(msg), "the upstream could not be reached: %s",
             end->errmsg != NULL ? end->errmsg : svc_strerror(end->err));
    svc_util_utf8_trim_end(msg);
    if (end->err == SVC_ETIMEDOUT)
        v1_error(c, 504, "server_error", "upstream_timeout", msg);
    else
        v1_error(c, 502, "server_error", "upstream_error", msg);
}

/* An attempt's outcome, for its upstream's circuit breaker. */
static void on_attempt(void *ctx, int ok)
{
    struct v1_call *c = ctx;

    proxy_upstream_report(c->upstream, ok);
}

/* A retry goes to another upstream serving the model when there is one. */
static int retarget(void *ctx, char *url, size_t url_len, char *auth, size_t auth_len)
{
    struct v1_call *c = ctx;
    int no_model, next = proxy_upstream_pick(c->model, c->tried, &no_model);

    if (next < 0 || next == c->upstream || c->client_key)
        return 0;
    c->upstream = next;
    c->tried |= 1u << next;
    if (upstream_url(c, url, url_len) != SVC_OK)
        return 0;
    svc_util_str_copy(auth, auth_len, proxy_upstream_auth(next));
    SVC_LOG_INFO(c->rid, "upstream", "retrying at %s", proxy_upstream_name(next));
    return 1;
}

static const struct meter_hooks v1_hooks = {
    .on_head = on_head,
    .on_event = on_event,
    .client_pending = on_pending,
    .on_body = on_body,
    .on_end = on_end,
    .on_attempt = on_attempt,
    .retarget = retarget,
};

/* ---- going upstream ---- */

/*
 * The client's body with members inserted at the start of its top-level object (members: one or
 * more `"key":value` joined by commas), every other byte as it came. For members the body does
 * not have at all: an existing one (even null) is changed through the tree instead, since a key
 * given twice means the last to most parsers. NULL when out of memory.
 */
static char *splice_members(const char *raw, size_t len, const char *members, size_t *out_len)
{
    size_t at = 0, mlen = strlen(members), rest;
    char *out;
    int empty;

    while (at < len && raw[at] != '{') /* whitespace before it: the body parsed as an object */
        at++;
    if (at == len)
        return NULL;
    at++;
    rest = at;
    while (rest < len && (raw[rest] == ' ' || raw[rest] == '\t' || raw[rest] == '\n' ||
                          raw[rest] == '\r'))
        rest++;
    empty = rest < len && raw[rest] == '}';
    if ((out = malloc(len + mlen + 2)) == NULL)
        return NULL;
    memcpy(out, raw, at);
    memcpy(out + at, members, mlen);
    *out_len = at + mlen;
    if (!empty)
        out[(*out_len)++] = ',';
    memcpy(out + *out_len, raw + at, len - at);
    *out_len += len - at;
    out[*out_len] = '\0';
    return out;
}

/*
 * The body to send upstream when it must change (see the top of this file), in *text (NULL: send
 * the client's bytes as they are): a streamed chat or completion without include_usage asks for
 * the usage (and the usage chunk is then hidden, c->hide_usage), a request without a reply limit
 * gets completion_limit. Members the body lacks are inserted into its bytes (splice_members); one
 * it has (a stream_options without include_usage, a limit given as null) is changed through the
 * tree, which is then written out whole. SVC_OK, or SVC_ENOMEM.
 */
static int upstream_body(struct v1_call *c, long long completion_limit, const char *raw,
                         size_t blen, char **text, size_t *text_len)
{
    struct svc_json *so = svc_json_member(c->body, "stream_options");
    int add_usage = completion_limit >= 0 && c->stream &&
                    (c->kind == V1_CHAT || c->kind == V1_COMPLETIONS) &&
                    !svc_json_is_true(svc_json_member(so, "include_usage"));
    const char *limit_key = NULL;
    char added[160];
    size_t n;

    *text = NULL;
    if (!c->has_limit && c->kind != V1_EMBEDDINGS && completion_limit > 0)
        limit_key = c->kind == V1_RESPONSES                 ? "max_output_tokens"
                    : c->kind == V1_CHAT && c->mi.reasoning ? "max_completion_tokens"
                                                            : "max_tokens";
    if (!add_usage && limit_key == NULL)
        return SVC_OK;
    c->hide_usage = add_usage;
    if ((add_usage && so != NULL) || (limit_key != NULL && svc_json_member(c->body, limit_key))) {
        if (add_usage) {
            if (!svc_json_is_object(so)) {
                so = svc_json_object();
                svc_json_set(c->body, "stream_options", so);
            }
            svc_json_set(so, "include_usage", svc_json_bool(1));
        }
        if (limit_key != NULL)
            svc_json_set(c->body, limit_key, svc_json_integer(completion_limit));
        if ((*text = svc_json_dump(c->body, 0)) == NULL)
            return SVC_ENOMEM;
        *text_len = strlen(*text);
        return SVC_OK;
    }
    n = add_usage ? (size_t)snprintf(added, sizeof(added),
                                     "\"stream_options\":{\"include_usage\":true}")
                  : 0;
    if (limit_key != NULL)
        snprintf(added + n, sizeof(added) - n, "%s\"%s\":%lld", n > 0 ? "," : "", limit_key,
                 completion_limit);
    *text = splice_members(raw, blen, added, text_len);
    return *text != NULL ? SVC_OK : SVC_ENOMEM;
}

/* Sends the request upstream through the meter. completion_limit < 0: a client's own upstream
 * key (PROXY_CLIENT_KEYS=relay): its Authorization goes upstream, the body is not touched. */
static void start_upstream(struct v1_call *c, long long completion_limit)
{
    char url[PROXY_URL_MAX], auth[1100], hid[128], msg[256];
    const char *headers[6];
    struct svc_fetch_req fr = {0};
    size_t nh = 0, blen;
    const char *raw = svc_req_body(c->req, &blen);
    char *text = NULL;
    size_t text_len = 0;
    int rc, no_model;

    if (completion_limit < 0) {
        c->client_key = 1; /* the client's key is for the default upstream */
    } else if ((c->upstream = proxy_upstream_pick(c->model, 0, &no_model)) < 0) {
        c->upstream = 0;
        if (no_model) {
            snprintf(msg, sizeof(msg), "The model `%.128s` does not exist or you do not have "
                     "access to it.", c->model);
            v1_error(c, 404, "invalid_request_error", "model_not_found", msg);
        } else {
            add_header(c, "Retry-After", "1");
            v1_error(c, 503, "server_error", "upstream_unavailable",
                     "Every upstream serving this model is failing; please try again later.");
        }
        return;
    }
    c->tried = 1u << c->upstream;
    if (upstream_body(c, completion_limit, raw, blen, &text, &text_len) != SVC_OK) {
        v1_error(c, 500, "server_error", NULL, "out of memory");
        return;
    }
    if (upstream_url(c, url, sizeof(url)) != SVC_OK) {
        free(text);
        v1_error(c, 414, "invalid_request_error", NULL, "the request's URL is too long");
        return;
    }
    headers[nh++] = "Content-Type: application/json";
    headers[nh++] = c->stream ? "Accept: text/event-stream" : "Accept: application/json";
    snprintf(hid, sizeof(hid), "X-Request-Id: %s", c->rid);
    headers[nh++] = hid;
    if (completion_limit < 0) {
        snprintf(auth, sizeof(auth), "Authorization: %s", svc_req_header(c->req, "Authorization"));
        headers[nh++] = auth;
    } else if (proxy_upstream_auth(c->upstream)[0] != '\0') {
        svc_util_str_copy(auth, sizeof(auth), proxy_upstream_auth(c->upstream));
        headers[nh++] = auth;
    }
    headers[nh] = NULL;
    fr.method = "POST";
    fr.url = url;
    fr.headers = headers;
    fr.body = text != NULL ? text : raw;
    fr.body_len = text != NULL ? text_len : blen;
    fr.idle_timeout_ms = setting->PROXY_UPSTREAM_IDLE_TIMEOUT.i * 1000;
    fr.proxy = setting->SOCKS_PROXY.s;
    fr.ca_file = setting->OPENAI_CA_FILE.s;
    fr.http = c->w->upstream_http;
    rc = meter_start(c->meter, &fr, c->stream);
    free(text);
    svc_util_wipe(auth, sizeof(auth));
    if (rc != SVC_OK)
        v1_error(c, 500, "server_error", NULL, "cannot start the upstream call");
}

static void on_admitted(void *ctx, const struct meter_admission *a)
{
    struct v1_call *c = ctx;
    char ra[16], msg[256];

    switch (a->result) {
    case METER_ADMITTED:
        start_upstream(c, a->completion_limit);
        return;
    case METER_TPM_REFUSED:
        svc_metric_add(&stats->proxy_rate_limited_total, 1);
        snprintf(ra, sizeof(ra), "%d", a->retry_after_s);
        add_header(c, "Retry-After", ra);
        snprintf(msg, sizeof(msg), "%lld", a->tpm_limit);
        add_header(c, "x-ratelimit-limit-tokens", msg);
        snprintf(msg, sizeof(msg), "%lld",
                 a->tpm_limit > a->tpm_used ? a->tpm_limit - a->tpm_used : 0);
        add_header(c, "x-ratelimit-remaining-tokens", msg);
        snprintf(msg, sizeof(msg), "%ds", a->retry_after_s);
        add_header(c, "x-ratelimit-reset-tokens", msg);
        snprintf(msg, sizeof(msg),
                 "Rate limit reached for tokens per minute (TPM): Limit %lld, Used %lld, "
                 "Requested %lld. Please try again in %ds.",
                 a->tpm_limit, a->tpm_used, c->prompt_tokens, a->retry_after_s);
        v1_error(c, 429, "tokens", "rate_limit_exceeded", msg);
        return;
    case METER_INSUFFICIENT:
    case METER_NO_ACCOUNT:
        v1_error(c, 429, "insufficient_quota", "insufficient_quota",
                 "You exceeded your current quota: the account's token balance is used up.");
        return;
    case METER_UNAVAILABLE:
    default:
        v1_error(c, 503, "server_error", "billing_unavailable",
                 "The billing service is unavailable, please try again later.");
        return;
    }
}

/* Requests per minute answered: refuse with OpenAI's headers, or admit the tokens. */
static void admit(struct v1_call *c)
{
    Chatweb__Billing__ReserveRequest in = CHATWEB__BILLING__RESERVE_REQUEST__INIT;
    struct svc_ratelimit_scope sc[2];
    char key_scope[96];
    int n = 0;

    if (meter_create(&c->meter, c->w->meters, &v1_hooks, c, c->rid, c->hold_id, c->model,
                     &c->mi) != SVC_OK) {
        v1_error(c, 500, "server_error", NULL, "out of memory");
        return;
    }
    if (c->tpm > 0 && c->key_id[0] != '\0') {
        snprintf(key_scope, sizeof(key_scope), "key:%s", c->key_id);
        sc[n].name = key_scope;
        sc[n++].limit = c->tpm;
    }
    if (setting->PROXY_TPM_LIMIT.i > 0) {
        sc[n].name = "user";
        sc[n++].limit = setting->PROXY_TPM_LIMIT.i;
    }
    {
        char tag[32];
        snprintf(tag, sizeof(tag), "u%lld", c->user_id);
        meter_set_tpm(c->meter, tag, sc, n);
    }
    in.user_id = c->user_id;
    in.prompt_tokens = c->prompt_tokens;
    in.max_completion_tokens = c->max_completion;
    /* A client's own limit is all or nothing; ours may be lowered to what the balance covers. */
    in.completion_limit_fixed = c->has_limit || c->kind == V1_EMBEDDINGS;
    in.min_completion_tokens = c->has_limit || c->kind == V1_EMBEDDINGS ? c->max_completion : 1;
    in.source = "proxy";
    in.create_unlimited = c->is_static;
    in.username = c->username;
    if (meter_admit(c->meter, &in, on_admitted) != SVC_OK)
        v1_error(c, 500, "server_error", NULL, "internal error");
}

static void check_rpm(struct v1_call *c);

static void on_rpm_retry(void *ctx, struct svc_timer *t)
{
    (void)t;
    check_rpm(ctx);
}

/*
 * Redis could not count the request: a failover or a reconnect takes a moment, so the check is
 * asked again RPM_RETRIES times before the request is refused. 1 when a retry is scheduled. (A
 * call that failed after Redis ran it counts this request twice in its minute: the safe side.)
 */
static int rpm_retry(struct v1_call *c, int err)
{
    if (c->rpm_tries >= RPM_RETRIES)
        return 0;
    c->rpm_tries++;
    if (c->rpm_retry == NULL &&
        svc_timer_create(&c->rpm_retry, c->w->loop, on_rpm_retry, c) != SVC_OK)
        return 0;
    if (svc_timer_start(c->rpm_retry, RPM_RETRY_MS) != SVC_OK)
        return 0;
    SVC_LOG_INFO(c->rid, "ratelimit", "cannot count this request (%s): asking again",
                 svc_strerror(err));
    return 1;
}

static void on_rpm(void *ctx, int err, int allowed, long long count)
{
    struct v1_call *c = ctx;
    long long limit = c->rpm > 0 ? c->rpm : setting->PROXY_RPM_LIMIT.i;
    int reset = RPM_WINDOW_S - (int)(svc_util_wallclock_ms() / 1000 % RPM_WINDOW_S);
    char v[32];

    c->redis_pending--;
    if (c->req == NULL) { /* the request ended while Redis answered */
        if (c->redis_pending == 0)
            call_free(c);
        return;
    }
    if (svc_req_is_done(c->req))
        return;
    if (err != SVC_OK && !setting->PROXY_RATELIMIT_FAIL_OPEN.i && rpm_retry(c, err))
        return;
    if (err != SVC_OK && !setting->PROXY_RATELIMIT_FAIL_OPEN.i) {
        SVC_LOG_WARN(c->rid, "ratelimit", "cannot count this request: %s", svc_strerror(err));
        v1_error(c, 503, "server_error", "rate_limiter_unavailable",
                 "The rate limiter is unavailable, please try again later.");
        return;
    }
    if (err == SVC_OK) {
        snprintf(v, sizeof(v), "%lld", limit);
        add_header(c, "x-ratelimit-limit-requests", v);
        snprintf(v, sizeof(v), "%lld", count < limit ? limit - count : 0);
        add_header(c, "x-ratelimit-remaining-requests", v);
        snprintf(v, sizeof(v), "%ds", reset);
        add_header(c, "x-ratelimit-reset-requests", v);
    }
    if (err == SVC_OK && !allowed) {
        char msg[256];
        svc_metric_add(&stats->proxy_rate_limited_total, 1);
        snprintf(v, sizeof(v), "%d", reset);
        add_header(c, "Retry-After", v);
        snprintf(msg, sizeof(msg),
                 "Rate limit reached for requests per minute (RPM): Limit %lld, Used %lld, "
                 "Requested 1. Please try again in %ds.",
                 limit, count - 1, reset);
        v1_error(c, 429, "requests", "rate_limit_exceeded", msg);
        return;
    }
    admit(c);
}

/* Requests per minute, in Redis (the key's rpm, else PROXY_RPM_LIMIT per user); then admit. */
static void check_rpm(struct v1_call *c)
{
    long long limit = c->rpm > 0 ? c->rpm : setting->PROXY_RPM_LIMIT.i;
    char scope[96];
    int rc = SVC_OK;

    if (c->rpm > 0)
        snprintf(scope, sizeof(scope), "key:%s", c->key_id);
    else
        snprintf(scope, sizeof(scope), "proxy:%lld", c->user_id);
    if (limit > 0 &&
        (rc = svc_ratelimit_hit(c->w->redis, scope, limit, RPM_WINDOW_S, on_rpm, c)) == SVC_OK) {
        c->redis_pending++;
        return;
    }
    if (limit > 0 && !setting->PROXY_RATELIMIT_FAIL_OPEN.i && rpm_retry(c, rc))
        return;
    if (limit > 0 && !setting->PROXY_RATELIMIT_FAIL_OPEN.i) {
        v1_error(c, 503, "server_error", "rate_limiter_unavailable",
                 "The rate limiter is unavailable, please try again later.");
        return;
    }
    admit(c);
}

/* ---- counting the prompt ---- */

/* Text of an OpenAI "content": a string, or an array of parts whose text parts count. */
static long long content_tokens(const struct svc_modelmap_info *mi, struct svc_json *content,
                                int *bad)
{
    const struct svc_tokenizer *tk = svc_tokenizer_get(mi->encoding);
    long long n = 0;
    size_t i;
    struct svc_json *part;

    if (tk == NULL) {
        *bad = 1;
        return 0;
    }
    if (svc_json_is_string(content))
        return svc_tokenizer_count(tk, svc_json_str(content), svc_json_strlen(content));
    if (svc_json_is_null(content) || content == NULL)
        return 0;
    if (!svc_json_is_array(content)) {
        *bad = 1;
        return 0;
    }
    SVC_JSON_ARRAY_EACH(content, i, part) {
        struct svc_json *t = svc_json_member(part, "text");
        if (svc_json_is_string(t))
            n += svc_tokenizer_count(tk, svc_json_str(t), svc_json_strlen(t));
    }
    return n;
}

/* Strings, or token arrays (their length), or arrays of either: a prompt or an input. */
static long long input_tokens(const struct svc_modelmap_info *mi, struct svc_json *v, int depth,
                              int *bad)
{
    size_t i;
    struct svc_json *e;
    long long n = 0;

    if (svc_json_is_string(v))
        return content_tokens(mi, v, bad);
    if (svc_json_is_integer(v) && depth > 0)
        return 1;
    if (!svc_json_is_array(v) || depth > 1) {
        *bad = 1;
        return 0;
    }
    SVC_JSON_ARRAY_EACH(v, i, e)
        n += input_tokens(mi, e, depth + 1, bad);
    return n;
}

/* The chat format's count of messages (modelmap.h), with content parts and names. */
static long long messages_tokens(const struct svc_modelmap_info *mi, struct svc_json *messages,
                                 int *bad)
{
    long long n = svc_modelmap_reply_priming(mi);
    size_t i;
    struct svc_json *m;

    if (!svc_json_is_array(messages) || svc_json_array_len(messages) == 0) {
        *bad = 1;
        return 0;
    }
    SVC_JSON_ARRAY_EACH(messages, i, m) {
        const char *role = svc_json_str(svc_json_member(m, "role"));
        const char *name = svc_json_str(svc_json_member(m, "name"));
        struct svc_json *content = svc_json_member(m, "content");
        if (!svc_json_is_object(m) || role == NULL) {
            *bad = 1;
            return 0;
        }
        n += svc_modelmap_message_tokens(mi, role, "", 0, name);
        n += content_tokens(mi, content, bad);
    }
    return n;
}

/* The exact prompt and the largest reply of the request; 0, or a message for a 400. */
static const char *count_request(struct v1_call *c)
{
    struct svc_json *b = c->body;
    struct svc_json *limit = NULL;
    int bad = 0;

    switch (c->kind) {
    case V1_CHAT:
        c->prompt_tokens = messages_tokens(&c->mi, svc_json_member(b, "messages"), &bad);
        if (bad)
            return "'messages' must be a non-empty array of messages with a role";
        /* a null max_completion_tokens is no limit (as OpenAI reads it): max_tokens still is one,
         * and must not be overwritten (upstream_body) with the hold's limit */
        limit = svc_json_member(b, "max_completion_tokens");
        if (limit == NULL || svc_json_is_null(limit))
            limit = svc_json_member(b, "max_tokens");
        break;
    case V1_COMPLETIONS:
        c->prompt_tokens = input_tokens(&c->mi, svc_json_member(b, "prompt"), 0, &bad);
        if (bad)
            return "'prompt' must be a string, an array of strings or of token arrays";
        limit = svc_json_member(b, "max_tokens");
        break;
    case V1_EMBEDDINGS:
        c->prompt_tokens = input_tokens(&c->mi, svc_json_member(b, "input"), 0, &bad);
        if (bad)
            return "'input' must be a string, an array of strings or of token arrays";
        c->max_completion = 0;
        return NULL;
    case V1_RESPONSES: {
        struct svc_json *input = svc_json_member(b, "input");
        struct svc_json *instr = svc_json_member(b, "instructions");
        c->prompt_tokens = svc_json_is_array(input) ? messages_tokens(&c->mi, input, &bad)
                                                    : content_tokens(&c->mi, input, &bad);
        c->prompt_tokens += content_tokens(&c->mi, instr, &bad);
        if (bad)
            return "'input' must be a string or an array of messages";
        limit = svc_json_member(b, "max_output_tokens");
        break;
    }
    default:
        return "unsupported endpoint";
    }
    if (limit != NULL && !svc_json_is_null(limit)) {
        if (!svc_json_is_integer(limit) || svc_json_int(limit) < 1)
            return "the reply limit (max_tokens) must be an integer of at least 1";
        c->has_limit = 1;
        c->max_completion = svc_json_int(limit);
    } else {
        /* No limit asked: the hold covers what the model's window leaves, at least one token. */
        c->max_completion = c->mi.context_window - c->prompt_tokens;
        if (c->max_completion < 1)
            c->max_completion = 1;
    }
    return NULL;
}

/* ---- who is calling ---- */

static int model_allowed(const struct v1_call *c, const char *model)
{
    if (c->nallowed == 0)
        return 1;
    for (size_t i = 0; i < c->nallowed; i++)
        if (strcmp(c->allowed[i], model) == 0)
            return 1;
    return 0;
}

static void relay_start(struct v1_call *c);

static void on_authenticated(void *ctx, int err, int result, const char *scheme,
                             const Chatweb__Auth__Identity *id, long long retry_after_ms,
                             const char *errmsg)
{
    struct v1_call *c = ctx;
    const char *why;
    char msg[320];
    size_t off = 0;

    (void)scheme;
    c->auth_call = NULL;
    if (err == SVC_OK && result == CHATWEB__AUTH__AUTH_RESULT__AUTH_THROTTLED) {
        char ra[24];
        snprintf(ra, sizeof(ra), "%lld", (retry_after_ms + 999) / 1000);
        add_header(c, "Retry-After", ra);
        snprintf(msg, sizeof(msg), "Too many failed attempts with this key: retry after %s s.",
                 ra);
        v1_error(c, 429, "requests", "rate_limit_exceeded", msg);
        return;
    }
    if (err != SVC_OK) {
        SVC_LOG_ERR(c->rid, "auth", "Authenticate failed: %s", errmsg ? errmsg : "");
        v1_error(c, 503, "server_error", "auth_unavailable",
                 "The authentication service is unavailable, please try again later.");
        return;
    }
    /* PROXY_CLIENT_KEYS=relay: a Bearer auth does not know is the client's own upstream key, sent
     * on as is and not metered (the seed's behaviour, for operators who want it). */
    if (err == SVC_OK && result == CHATWEB__AUTH__AUTH_RESULT__AUTH_UNKNOWN_USER &&
        strcmp(setting->PROXY_CLIENT_KEYS.s, "relay") == 0 && c->kind != V1_MODELS &&
        c->kind != V1_RELAY && svc_req_header(c->req, "Authorization") != NULL &&
        strncasecmp(svc_req_header(c->req, "Authorization"), "Bearer ", 7) == 0) {
        svc_modelmap_lookup(c->w->models, c->model, &c->mi);
        if (meter_create(&c->meter, c->w->meters, &v1_hooks, c, c->rid, c->hold_id, c->model,
                         &c->mi) != SVC_OK) {
            v1_error(c, 500, "server_error", NULL, "out of memory");
            return;
        }
        start_upstream(c, -1); /* never admitted: no hold, no token counters */
        return;
    }
    /* Only a chatweb API key opens /v1 (not a password, not a browser session). */
    if (result != CHATWEB__AUTH__AUTH_RESULT__AUTH_OK || id == NULL || id->key_id == NULL ||
        id->key_id[0] == '\0') {
        svc_metric_add(&stats->proxy_auth_errors_total, 1);
        v1_error(c, 401, "invalid_request_error", "invalid_api_key",
                 result == CHATWEB__AUTH__AUTH_RESULT__AUTH_THROTTLED
                     ? "Too many failed attempts, please try again later."
                     : "Incorrect API key provided. Ask your operator for a chatweb API key.");
        return;
    }
    c->user_id = id->user_id;
    c->is_static = id->is_static;
    c->rpm = id->rpm_limit;
    c->tpm = id->tpm_limit;
    svc_util_str_copy(c->username, sizeof(c->username), id->username ? id->username : "");
    svc_util_str_copy(c->key_id, sizeof(c->key_id), id->key_id);
    /* Held apart, and only for a key limited to some models: most calls need none of it, and
     * every byte of struct v1_call is resident for each open stream. */
    if (id->n_allowed_models > 0 &&
        (c->allowed = malloc(MODELS_MAX * sizeof(char *) + ALLOWED_BYTES)) == NULL) {
        v1_error(c, 500, "server_error", NULL, "out of memory");
        return;
    }
    for (size_t i = 0; i < id->n_allowed_models && c->nallowed < MODELS_MAX; i++) {
        char *names = (char *)(c->allowed + MODELS_MAX);
        size_t len = strlen(id->allowed_models[i]);
        if (off + len + 1 > ALLOWED_BYTES)
            break;
        memcpy(names + off, id->allowed_models[i], len + 1);
        c->allowed[c->nallowed++] = names + off;
        off += len + 1;
    }
    if (c->kind == V1_MODELS && strncmp(c->path, "/models/", 8) == 0 &&
        !model_allowed(c, c->path + 8)) {
        snprintf(msg, sizeof(msg),
                 "The model '%.128s' does not exist or you do not have access to it.",
                 c->path + 8);
        v1_error(c, 404, "invalid_request_error", "model_not_found", msg);
        return;
    }
    if (c->kind == V1_MODELS || c->kind == V1_RELAY) {
        relay_start(c);
        return;
    }
    if (!model_allowed(c, c->model)) {
        snprintf(msg, sizeof(msg), "This API key may not use the model '%.128s'.", c->model);
        v1_error(c, 403, "invalid_request_error", "model_not_allowed", msg);
        return;
    }
    svc_modelmap_lookup(c->w->models, c->model, &c->mi);
    why = count_request(c);
    if (why != NULL) {
        v1_error(c, 400, "invalid_request_error", NULL, why);
        return;
    }
    if (c->prompt_tokens < 0) {
        v1_error(c, 500, "server_error", NULL, "cannot count the prompt");
        return;
    }
    check_rpm(c);
}

/* ---- unmetered: the model list and PROXY_PASSTHROUGH ---- */

/* GET /v1/models: the upstream's list, only the key's models when it has a list. */
static void reply_models(struct v1_call *c, const char *body, size_t len)
{
    struct svc_json *j = svc_json_parse(body, len, 0, NULL, 0);
    struct svc_json *data = svc_json_member(j, "data"), *kept;
    size_t i;
    struct svc_json *m;

    if (!svc_json_is_array(data)) {
        svc_json_destroy(&j);
        v1_error(c, 502, "server_error", "upstream_error",
                 "the upstream's model list is malformed");
        return;
    }
    kept = svc_json_array();
    SVC_JSON_ARRAY_EACH(data, i, m) {
        const char *id = svc_json_str(svc_json_member(m, "id"));
        if (id != NULL && model_allowed(c, id))
            svc_json_append(kept, svc_json_ref(m));
    }
    svc_json_set(j, "data", kept);
    svc_req_reply_json(c->req, 200, j);
}

static void on_relay_done(void *ctx, int err, struct svc_fetch *f, long status, const char *body,
                          size_t len, const char *errmsg)
{
    struct v1_call *c = ctx;
    char msg[320];

    c->relay = NULL;
    if (err != SVC_OK) {
        snprintf(msg, sizeof(msg), "the upstream could not be reached: %s",
                 errmsg != NULL ? errmsg : svc_strerror(err));
        svc_util_utf8_trim_end(msg);
        v1_error(c, err == SVC_ETIMEDOUT ? 504 : 502, "server_error",
                 err == SVC_ETIMEDOUT ? "upstream_timeout" : "upstream_error", msg);
        return;
    }
    if (c->kind == V1_MODELS && status == 200 && c->nallowed > 0 &&
        strcmp(c->path, "/models") == 0) {
        reply_models(c, body, len);
        return;
    }
    svc_fetch_headers_each(f, pass_header, c);
    svc_req_reply(c->req, (int)status, reply_ctype(c), body, len);
}

static void relay_start(struct v1_call *c)
{
    static const struct svc_fetch_callbacks cb = {.on_done = on_relay_done};
    char url[PROXY_URL_MAX], auth[1100], hid[128];
    const char *headers[5];
    struct svc_fetch_req fr = {0};
    size_t nh = 0, blen = 0;
    int rc;
    const char *body = svc_req_body(c->req, &blen);

    if (upstream_url(c, url, sizeof(url)) != SVC_OK) {
        v1_error(c, 414, "invalid_request_error", NULL, "the request's URL is too long");
        return;
    }
    headers[nh++] = "Content-Type: application/json";
    snprintf(hid, sizeof(hid), "X-Request-Id: %s", c->rid);
    headers[nh++] = hid;
    if (proxy_upstream_auth(0)[0] != '\0') { /* relayed paths go to the default upstream */
        svc_util_str_copy(auth, sizeof(auth), proxy_upstream_auth(0));
        headers[nh++] = auth;
    }
    headers[nh] = NULL;
    fr.method = c->method;
    fr.url = url;
    fr.headers = headers;
    fr.body = blen > 0 ? body : NULL;
    fr.body_len = blen;
    fr.timeout_ms = setting->PROXY_UPSTREAM_IDLE_TIMEOUT.i * 1000;
    fr.max_response = RELAY_MAX;
    fr.proxy = setting->SOCKS_PROXY.s;
    fr.ca_file = setting->OPENAI_CA_FILE.s;
    fr.http = c->w->upstream_http;
    rc = svc_fetch_start(&c->relay, c->w->upstream, &fr, &cb, c);
    svc_util_wipe(auth, sizeof(auth));
    if (rc != SVC_OK)
        v1_error(c, 500, "server_error", NULL, "cannot start the upstream call");
}

/* ---- the request ---- */

static int listed(const char *path, const char *list)
{
    size_t n = strlen(path);
    const char *p = list;

    while (p != NULL && *p != '\0') {
        const char *end = strchr(p, ',');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        while (len > 0 && *p == ' ') {
            p++;
            len--;
        }
        if (len == n && strncmp(p, path, n) == 0)
            return 1;
        p = end != NULL ? end + 1 : NULL;
    }
    return 0;
}

/* What the path is; -1 for a path we do not serve. */
static int classify(struct v1_call *c, const char *method)
{
    static const struct {
        const char *path;
        enum v1_kind kind;
    } metered[] = {{"/chat/completions", V1_CHAT},
                   {"/completions", V1_COMPLETIONS},
                   {"/embeddings", V1_EMBEDDINGS},
                   {"/responses", V1_RESPONSES}};

    for (size_t i = 0; i < sizeof(metered) / sizeof(metered[0]); i++)
        if (strcmp(c->path, metered[i].path) == 0)
            return strcmp(method, "POST") == 0 ? (int)metered[i].kind : -2;
    if (strcmp(c->path, "/models") == 0 || strncmp(c->path, "/models/", 8) == 0)
        return strcmp(method, "GET") == 0 ? V1_MODELS : -2;
    if (listed(c->path, setting->PROXY_PASSTHROUGH.s) ||
        listed(svc_req_path(c->req), setting->PROXY_PASSTHROUGH.s))
        return V1_RELAY; /* entries may be written "/files" or "/v1/files" */
    return -1;
}

/* The Authorization value to verify: "Bearer <key>", or Azure-style "api-key: <key>". */
static const char *credentials(struct svc_req *req, char *buf, size_t len)
{
    const char *a = svc_req_header(req, "Authorization");
    const char *k = svc_req_header(req, "api-key");

    if (a != NULL && a[0] != '\0')
        return a;
    if (k != NULL && k[0] != '\0' && (size_t)snprintf(buf, len, "Bearer %s", k) < len)
        return buf;
    return NULL;
}

int proxy_v1(void *ctx, struct svc_req *req)
{
    struct v1_call *c;
    const char *path = svc_req_path(req), *authz, *body;
    const char *method = svc_req_method(req);
    char keybuf[512], msg[320];
    size_t len;
    int kind, remembered = 0;

    (void)ctx;
    svc_metric_add(&stats->proxy_requests_total, 1);
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        svc_req_error(req, 500, "out of memory");
        return SVC_HTTP_DONE;
    }
    c->req = req;
    c->t0_us = svc_loop_clock_us();
    c->w = svc_loop_data(svc_req_loop(req));
    svc_util_str_copy(c->rid, sizeof(c->rid), svc_req_id(req));
    svc_util_str_copy(c->path, sizeof(c->path), path + 3); /* after "/v1" */
    svc_util_str_copy(c->method, sizeof(c->method), method);
    {
        char uuid[37];
        svc_util_uuid4(uuid);
        snprintf(c->hold_id, sizeof(c->hold_id), "px-%s", uuid);
    }
    svc_req_set_cleanup(req, on_request_done, c);
    svc_req_on_abort(req, on_client_gone, c);

    kind = classify(c, method);
    if (kind == -1) {
        snprintf(msg, sizeof(msg), "Invalid URL (%s %.200s)", method, path);
        v1_error(c, 404, "invalid_request_error", NULL, msg);
        return SVC_HTTP_DONE;
    }
    if (kind == -2) {
        snprintf(msg, sizeof(msg), "Invalid method for URL (%s %.200s)", method, path);
        v1_error(c, 405, "invalid_request_error", NULL, msg);
        return SVC_HTTP_DONE;
    }
    c->kind = (enum v1_kind)kind;
    if (c->kind != V1_MODELS && c->kind != V1_RELAY) {
        char jerr[160];
        struct svc_json *model, *stream;
        body = svc_req_body(req, &len);
        c->body = svc_json_parse(body, len, SVC_JSON_STRICT, jerr, sizeof(jerr));
        if (c->body == NULL || !svc_json_is_object(c->body)) {
            snprintf(msg, sizeof(msg), "We could not parse the JSON body of your request: %s",
                     c->body == NULL ? jerr : "not an object");
            v1_error(c, 400, "invalid_request_error", NULL, msg);
            return SVC_HTTP_DONE;
        }
        model = svc_json_member(c->body, "model");
        if (!svc_json_is_string(model) || svc_json_strlen(model) == 0 ||
            svc_json_strlen(model) >= sizeof(c->model)) {
            v1_error(c, 400, "invalid_request_error", NULL, "you must provide a model parameter");
            return SVC_HTTP_DONE;
        }
        svc_util_str_copy(c->model, sizeof(c->model), svc_json_str(model));
        stream = svc_json_member(c->body, "stream");
        if (stream != NULL && !svc_json_is_bool(stream) && !svc_json_is_null(stream)) {
            v1_error(c, 400, "invalid_request_error", NULL, "'stream' must be a boolean");
            return SVC_HTTP_DONE;
        }
        c->stream = svc_json_is_true(stream) && c->kind != V1_EMBEDDINGS;
    }
    authz = credentials(req, keybuf, sizeof(keybuf));
    if (authz == NULL) {
        svc_metric_add(&stats->proxy_auth_errors_total, 1);
        v1_error(c, 401, "invalid_request_error", "invalid_api_key",
                 "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.");
        return SVC_HTTP_DONE;
    }
    if (auth_client_authenticate(c->w->auth, c->w->rpc, authz, NULL, svc_req_client_ip(req),
                                 c->rid, on_authenticated, c, &c->auth_call,
                                 &remembered) != SVC_OK) {
        v1_error(c, 503, "server_error", "auth_unavailable",
                 "The authentication service is unavailable, please try again later.");
        return SVC_HTTP_DONE;
    }
    svc_util_wipe(keybuf, sizeof(keybuf));
    return SVC_HTTP_ASYNC;
}
