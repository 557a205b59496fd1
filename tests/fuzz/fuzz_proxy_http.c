/*
 * Fuzz target: the /v1 proxy's request handling (services/proxy/v1.c proxy_v1: the body parser,
 * the model's upstream (UPSTREAMS), the members it inserts into the body, the headers it sends
 * and passes back), through the real handler on one worker (event loop, fetch multis, async
 * Redis, auth and billing clients, meter) set up the way services/proxy/main.c does it, behind
 * the real svc_http server in LOOPS mode. Auth and billing are the stand-ins of fake_services.c;
 * the upstreams are two stand-ins on the same server that check what the proxy sends them:
 *   default  FZ_FAKE_PREFIX/v1      key sk-fuzz, models gpt-* and text-*
 *   alt      FZ_FAKE_PREFIX/alt/v1  key sk-alt,  models alt-*
 * Redis is a closed port (no rate limit is configured, so no request needs it).
 *
 * Input: byte 0 picks the path, byte 1 the headers (F_* flags); the rest is split at 0xff into
 * the credential (Authorization or api-key value), a query string or X-Request-Id value, and the
 * body.
 *
 * Checked by the stand-in upstreams, on every request the proxy sends them: the upstream's own
 * key as Authorization (never the client's) and no api-key header; a metered request's model is one
 * that upstream serves; its body is one JSON object without a duplicate key, whose every member is
 * the client's unchanged but for what the proxy adds: stream_options.include_usage true on a
 * streamed chat or completion, and a reply limit (an integer >= 1) where the client gave none.
 * Checked on every reply: complete within the harness's timeout; never a 5xx but 503; an error
 * is OpenAI's {"error": {"message", "type"}}; a stream is SSE events of JSON objects (or
 * [DONE]) without the usage chunk the client did not ask for; the upstream's Set-Cookie,
 * OpenAI-Organization and Strict-Transport-Security never reach the client, its X-Request-Id
 * comes as X-Upstream-Request-Id and its other headers pass.
 */

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth/client.h"
#include "billing/client.h"
#include "fake_services.h"
#include "http_harness.h"
#include "meter/meter.h"
#include "meter/workers.h"
#include "proxy.h"
#include "svc/cfg.h"
#include "svc/fetch.h"
#include "svc/log.h"
#include "svc/loop.h"
#include "svc/modelmap.h"
#include "svc/redis.h"
#include "svc/rpc.h"

/* proxy_core's configuration and metrics, lent to it the way services/proxy/main.c (not linked
 * here) does it */
static struct proxy_setting setting = {PROXY_OPTIONS(SVC_OPTION_INIT)};
static struct proxy_stats stats = {PROXY_METRICS(SVC_METRIC_INIT)};

#define MAX_BODY 8192

enum {
    F_KEY = 1 << 0,     /* Authorization: Bearer FZ_FAKE_KEY (a chatweb API key) */
    F_LIMITED = 1 << 1, /* ... FZ_FAKE_KEY_LIMITED instead (two models allowed) */
    F_AUTHZ = 1 << 2,   /* Authorization: field 0 */
    F_APIKEY = 1 << 3,  /* api-key: field 0 (Azure style) */
    F_QUERY = 1 << 4,   /* "?" and field 1 after the path */
    F_RID = 1 << 5,     /* X-Request-Id: field 1 */
    F_GET = 1 << 6,     /* GET instead of POST */
    F_CTYPE = 1 << 7,   /* Content-Type: application/json */
};

static const char *const paths[] = {
    "/v1/chat/completions", "/v1/chat/completions", "/v1/chat/completions",
    "/v1/completions",      "/v1/embeddings",       "/v1/responses",
    "/v1/models",           "/v1/models/gpt-4o",    "/v1/files",
    "/v1/nothing-here",
};
#define NPATHS (sizeof(paths) / sizeof(paths[0]))

/* ---- the stand-in upstreams ---- */

/* What the request being sent looks like, for the upstreams' checks (set by the fuzzing thread
 * before the request, read by the loop thread while it is served). */
static struct {
    json_t *body; /* the client's body as the proxy parses it, NULL if it does not */
} expect;
static atomic_int upstream_calls;

static void up_fail(const char *what, const char *path, const char *body, size_t len)
{
    fprintf(stderr, "fuzz: upstream check: %s: %s\n%.*s\n", what, path,
            (int)(len > 2000 ? 2000 : len), body != NULL ? body : "");
    abort();
}

/* 1 when k is one of the reply limits of this kind of request (the OpenAI API's names). */
static int is_limit_key(const char *kind, const char *k)
{
    if (strcmp(kind, "chat") == 0)
        return strcmp(k, "max_tokens") == 0 || strcmp(k, "max_completion_tokens") == 0;
    if (strcmp(kind, "completions") == 0)
        return strcmp(k, "max_tokens") == 0;
    if (strcmp(kind, "responses") == 0)
        return strcmp(k, "max_output_tokens") == 0;
    return 0;
}

/* The checks on a metered request's body (see the top). */
static void check_metered_body(const char *kind, const char *path, const char *body, size_t len,
                               const char *prefix)
{
    json_error_t e;
    json_t *up = json_loadb(body, len, JSON_REJECT_DUPLICATES, &e), *v, *so;
    const char *k, *model;
    int stream, chat_like = strcmp(kind, "chat") == 0 || strcmp(kind, "completions") == 0;
    int limit = 0;

    if (!json_is_object(up))
        up_fail("not one JSON object without a duplicate key", path, body, len);
    if (!json_is_object(expect.body))
        up_fail("the proxy sent a body it should have refused", path, body, len);
    model = json_string_value(json_object_get(up, "model"));
    if (model == NULL || strncmp(model, prefix, strlen(prefix)) != 0)
        up_fail("a model this upstream does not serve", path, body, len);
    stream = json_is_true(json_object_get(up, "stream"));
    so = json_object_get(up, "stream_options");
    if (stream && chat_like) {
        /* include_usage may be added or set; the rest of a client's stream_options stays */
        json_t *cso = json_object_get(expect.body, "stream_options");
        json_object_foreach(cso, k, v) {
            if (strcmp(k, "include_usage") != 0 && !json_equal(v, json_object_get(so, k)))
                up_fail("a member of the client's stream_options changed", k, body, len);
        }
        if (!json_is_true(json_object_get(so, "include_usage")))
            up_fail("a streamed request without stream_options.include_usage", path, body, len);
    }
    json_object_foreach(expect.body, k, v) {
        if ((stream && chat_like && strcmp(k, "stream_options") == 0) || is_limit_key(kind, k))
            continue;
        if (!json_equal(v, json_object_get(up, k)))
            up_fail("a member of the client's body changed", k, body, len);
    }
    json_object_foreach(up, k, v) {
        if (json_object_get(expect.body, k) == NULL &&
            !(stream && chat_like && strcmp(k, "stream_options") == 0) && !is_limit_key(kind, k))
            up_fail("a member the client did not send", k, body, len);
        if (is_limit_key(kind, k) && !json_is_null(v)) {
            if (!json_is_integer(v) || json_integer_value(v) < 1)
                up_fail("a reply limit below 1", k, body, len);
            limit = 1;
        }
        if (is_limit_key(kind, k) && json_object_get(expect.body, k) != NULL &&
            !json_is_null(json_object_get(expect.body, k)) &&
            !json_equal(v, json_object_get(expect.body, k)))
            up_fail("the client's reply limit changed", k, body, len);
    }
    if (strcmp(kind, "embeddings") != 0 && !limit)
        up_fail("no reply limit", path, body, len);
    json_decref(up);
}

static const char chat_sse[] =
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
    "\"delta\":{\"role\":\"assistant\",\"content\":\"Hi \\u00e9\"},\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
    "\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],"
    "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n"
    "data: [DONE]\n\n";
static const char chat_json[] =
    "{\"id\":\"c1\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":"
    "{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":\"stop\"}],"
    "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}";
static const char embed_json[] =
    "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,\"embedding\":[0.5]}],"
    "\"usage\":{\"prompt_tokens\":3,\"total_tokens\":3}}";
static const char models_json[] =
    "{\"object\":\"list\",\"data\":[{\"id\":\"gpt-4o\",\"object\":\"model\"},"
    "{\"id\":\"gpt-4o-mini\",\"object\":\"model\"},{\"id\":\"alt-one\",\"object\":\"model\"}]}";

/* One upstream (ctx: its mount prefix, key and model prefix). */
struct upstream {
    const char *mount, *auth, *model_prefix;
};

static int fake_upstream(void *ctx, struct svc_req *req)
{
    const struct upstream *u = ctx;
    const char *path = svc_req_path(req) + strlen(u->mount),
               *a = svc_req_header(req, "Authorization");
    const char *kind = NULL, *body;
    size_t len;
    int ok;

    atomic_fetch_add(&upstream_calls, 1);
    body = svc_req_body(req, &len);
    if (a == NULL || strcmp(a, u->auth) != 0)
        up_fail("not this upstream's key", path, a, a != NULL ? strlen(a) : 0);
    if (svc_req_header(req, "api-key") != NULL)
        up_fail("the client's api-key went upstream", path, NULL, 0);
    if (strcmp(path, "/chat/completions") == 0)
        kind = "chat";
    else if (strcmp(path, "/completions") == 0)
        kind = "completions";
    else if (strcmp(path, "/embeddings") == 0)
        kind = "embeddings";
    else if (strcmp(path, "/responses") == 0)
        kind = "responses";
    if (kind != NULL)
        check_metered_body(kind, path, body, len, u->model_prefix);
    ok = svc_req_add_header(req, "Set-Cookie", "up=1") == SVC_OK &&
         svc_req_add_header(req, "OpenAI-Organization", "org-secret") == SVC_OK &&
         svc_req_add_header(req, "Strict-Transport-Security", "max-age=1") == SVC_OK &&
         svc_req_add_header(req, "X-Request-Id", "up-rid") == SVC_OK &&
         svc_req_add_header(req, "X-Up-Custom", "kept") == SVC_OK;
    if (!ok)
        abort();
    if (kind != NULL && strcmp(kind, "embeddings") == 0)
        svc_req_reply(req, 200, "application/json", embed_json, sizeof(embed_json) - 1);
    else if (kind != NULL && json_is_true(json_object_get(expect.body, "stream")))
        svc_req_reply(req, 200, "text/event-stream", chat_sse, sizeof(chat_sse) - 1);
    else if (kind != NULL)
        svc_req_reply(req, 200, "application/json", chat_json, sizeof(chat_json) - 1);
    else if (strncmp(path, "/models", 7) == 0)
        svc_req_reply(req, 200, "application/json", models_json, sizeof(models_json) - 1);
    else
        svc_req_reply(req, 200, "application/json", "{}", 2);
    return SVC_HTTP_DONE;
}

static const struct upstream up_default = {FZ_FAKE_PREFIX "/v1", "Bearer sk-fuzz", ""};
static const struct upstream up_alt = {FZ_FAKE_PREFIX "/alt/v1", "Bearer sk-alt", "alt-"};

static const struct svc_http_route routes[] = {
    {NULL, "/v1/*", proxy_v1, NULL, SVC_HTTP_STYLE_OPENAI, 1},
    FZ_FAKE_ROUTE,
    {NULL, FZ_FAKE_PREFIX "/alt/v1/*", fake_upstream, (void *)&up_alt, SVC_HTTP_STYLE_OPENAI},
    {NULL, FZ_FAKE_PREFIX "/v1/*", fake_upstream, (void *)&up_default, SVC_HTTP_STYLE_OPENAI},
};

/* ---- the proxy's worker ---- */

static struct meter_worker worker;
static struct svc_modelmap *models;

static void *run_loop(void *arg)
{
    svc_loop_run(arg);
    return NULL;
}

static void setup(void)
{
    struct svc_loop *loops[1];
    static char base[96], up[128], ups[512];
    char err[256] = "";
    pthread_t t;

    svc_log_setup("fuzz_proxy_http", SVC_LOG_LVL_ERR);
    setenv("OPENAI_PROXY", "true", 1);
    setenv("OPENAI_KEY", "sk-fuzz", 1);
    setenv("PROXY_PASSTHROUGH", "/files", 1);
    setenv("PROXY_UPSTREAM_IDLE_TIMEOUT", "5", 1);
    setenv("PROXY_AUTH_CACHE_MS", "0", 1); /* every request asks (the stand-in) auth */
    setenv("PROXY_BILLING_LEASES", "false", 1);
    if (svc_cfg_load_env((struct svc_cfg_option *)&setting, SVC_OPTION_COUNT(setting), err,
                         sizeof(err)) != SVC_OK ||
        svc_modelmap_create(&models, "", err, sizeof(err)) != SVC_OK ||
        auth_client_setup(64, 0) != SVC_OK) {
        fprintf(stderr, "fuzz_proxy_http: setup: %s\n", err);
        abort();
    }
    if (svc_loop_create(&worker.loop) != SVC_OK)
        abort();
    loops[0] = worker.loop;
    svc_loop_set_data(worker.loop, &worker);
    fz_http_start(routes, sizeof(routes) / sizeof(routes[0]), SVC_HTTP_STYLE_OPENAI, MAX_BODY,
                  loops, 1);
    snprintf(base, sizeof(base), "http://127.0.0.1:%d" FZ_FAKE_PREFIX, fz_http_port());
    /* the upstreams: the settings proxy_upstreams_setup reads, pointed at the stand-ins */
    snprintf(up, sizeof(up), "%s/v1", base);
    snprintf(ups, sizeof(ups),
             "[{\"name\":\"default\",\"models\":[\"gpt-*\",\"text-*\"]},"
             "{\"name\":\"alt\",\"base_url\":\"%s/alt/v1\",\"key\":\"sk-alt\","
             "\"models\":[\"alt-*\"]}]",
             base);
    setting.OPENAI_BASE_URL.s = up;
    setting.UPSTREAMS.s = ups;
    if (proxy_upstreams_setup(&setting, err, sizeof(err)) != SVC_OK) {
        fprintf(stderr, "fuzz_proxy_http: UPSTREAMS: %s\n", err);
        abort();
    }
    proxy_v1_setup(&setting, &stats);
    worker.models = models;
    if (svc_fetch_multi_create(&worker.upstream, worker.loop, 0) != SVC_OK ||
        svc_fetch_multi_create(&worker.rpc, worker.loop, 8) != SVC_OK ||
        svc_redis_async_create(&worker.redis, worker.loop, "redis://127.0.0.1:1/0", 500, NULL, 0) !=
            SVC_OK ||
        svc_rpc_client_create(&worker.auth, base, 3000, NULL, 0) != SVC_OK ||
        svc_rpc_client_create(&worker.billing, base, 3000, NULL, 0) != SVC_OK)
        abort();
    if (billing_client_create(&worker.bill, worker.loop, worker.billing, worker.rpc, 5,
                              &stats.proxy_settles_pending) != SVC_OK ||
        meter_loop_create(&worker.meters, worker.loop, worker.upstream, worker.redis, worker.bill,
                          NULL, 0) != SVC_OK)
        abort();
    if (pthread_create(&t, NULL, run_loop, worker.loop) != 0 || pthread_detach(t) != 0) {
        fprintf(stderr, "fuzz_proxy_http: cannot start the proxy's loop\n");
        abort();
    }
}

/* ---- the replies ---- */

/*
 * The fuzzed query: up to QUERY_MAX bytes, any number of arguments. libmicrohttpd 0.9.75 keeps
 * every query argument in the connection's memory pool, and a few hundred short ones (`?&&&...`)
 * left a request unanswered; common/http.c now answers a query of more arguments than the pool
 * can take 414 before MHD splits it (the former reproducers are seeds: corpus/proxy_http/query_*).
 */
#define QUERY_ARGS_MAX 100000
#define QUERY_MAX 2300

/* 1 when the body is OpenAI's error object. */
static int openai_error(const struct fz_resp *r)
{
    json_t *j = json_loadb(r->body.data, r->body.len, 0, NULL);
    json_t *e = json_object_get(j, "error");
    int ok =
        json_is_string(json_object_get(e, "message")) && json_is_string(json_object_get(e, "type"));

    json_decref(j);
    return ok;
}

/* 1 when the body is SSE events of JSON objects or [DONE], and (hide_usage) none is the usage
 * chunk (no choices, a usage). */
static int sse_ok(const struct fz_resp *r, int hide_usage)
{
    const char *p = r->body.data, *end = p + r->body.len;

    while (p < end) {
        const char *sep = strstr(p, "\n\n");
        size_t n;
        json_t *j;
        int ok;

        if (sep == NULL || strncmp(p, "data: ", 6) != 0)
            return 0;
        n = (size_t)(sep - p) - 6;
        if (n == 6 && strncmp(p + 6, "[DONE]", 6) == 0) {
            p = sep + 2;
            continue;
        }
        j = json_loadb(p + 6, n, 0, NULL);
        ok = json_is_object(j) && !(hide_usage && json_object_get(j, "usage") != NULL &&
                                    json_array_size(json_object_get(j, "choices")) == 0);
        json_decref(j);
        if (!ok)
            return 0;
        p = sep + 2;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    const uint8_t *f[3];
    size_t fl[3];
    char hdrs[8192], v[2048], path[2400], h[256];
    const char *method;
    struct fz_resp r;
    uint8_t flags;
    size_t o = 0;
    int calls, hide_usage;

    if (!ready) {
        setup();
        ready = 1;
    }
    if (size < 2)
        return 0;
    flags = data[1];
    fz_split(data + 2, size - 2, 0xff, f, fl, 3);
    method = (flags & F_GET) ? "GET" : "POST";
    snprintf(path, sizeof(path), "%s", paths[data[0] % NPATHS]);
    if (flags & F_QUERY) {
        /* a query string of URL-safe bytes (the harness sends the path as it is), kept below
         * the open bug above */
        size_t n = strlen(path), start = n + 1;
        int args = 1;
        path[n++] = '?';
        for (size_t i = 0; i < fl[1] && n + 1 < sizeof(path) && n - start < QUERY_MAX; i++) {
            char ch = f[1][i] > 0x20 && f[1][i] < 0x7f && f[1][i] != '#' ? (char)f[1][i] : '_';
            if (ch == '&' && ++args > QUERY_ARGS_MAX)
                ch = '_';
            path[n++] = ch;
        }
        path[n] = '\0';
    }
    hdrs[0] = '\0';
#define ADD(...) o += (size_t)snprintf(hdrs + o, sizeof(hdrs) - o, __VA_ARGS__)
    if (flags & F_LIMITED)
        ADD("Authorization: Bearer " FZ_FAKE_KEY_LIMITED "\r\n");
    else if (flags & F_KEY)
        ADD("Authorization: Bearer " FZ_FAKE_KEY "\r\n");
    else if (flags & F_AUTHZ)
        ADD("Authorization: %s\r\n", fz_header_value(f[0], fl[0], v, sizeof(v)));
    if (flags & F_APIKEY)
        ADD("api-key: %s\r\n", fz_header_value(f[0], fl[0], v, sizeof(v)));
    if (flags & F_RID)
        ADD("X-Request-Id: %s\r\n", fz_header_value(f[1], fl[1], v, sizeof(v)));
    if (flags & F_CTYPE)
        ADD("Content-Type: application/json\r\n");
#undef ADD
    expect.body = json_loadb((const char *)f[2], fl[2], JSON_REJECT_DUPLICATES, NULL);
    {
        /* the proxy asks for the usage (and hides its chunk) only on a chat or a completion */
        json_t *so = json_object_get(expect.body, "stream_options");
        hide_usage = (strncmp(path, "/v1/chat/completions", 20) == 0 ||
                      strncmp(path, "/v1/completions", 15) == 0) &&
                     !json_is_true(json_object_get(so, "include_usage"));
    }
    calls = atomic_load(&upstream_calls);
    fz_http_do(method, path, hdrs, f[2], fl[2], &r);
    calls = atomic_load(&upstream_calls) - calls;
    if (r.reset && fl[2] <= MAX_BODY)
        fz_fail("connection closed without a reply", method, path, &r);
    if (r.status != 0) {
        if (r.status >= 500 && r.status != 503)
            fz_fail("server error", method, path, &r);
        if (fz_header(&r, "Set-Cookie", h, sizeof(h)) != NULL ||
            fz_header(&r, "OpenAI-Organization", h, sizeof(h)) != NULL ||
            fz_header(&r, "Strict-Transport-Security", h, sizeof(h)) != NULL)
            fz_fail("an upstream header that must not pass", method, path, &r);
        if (r.status != 200) {
            if (!openai_error(&r))
                fz_fail("not OpenAI's error object", method, path, &r);
        } else if (calls > 0 && strstr(path, "/models") == NULL) {
            /* an answer of an upstream (GET /v1/models may be rebuilt for the key's models) */
            if (fz_header(&r, "X-Up-Custom", h, sizeof(h)) == NULL ||
                fz_header(&r, "X-Upstream-Request-Id", h, sizeof(h)) == NULL ||
                strcmp(h, "up-rid") != 0)
                fz_fail("the upstream's headers did not pass as they should", method, path, &r);
            if (strncmp(r.content_type, "text/event-stream", 17) == 0 && !sse_ok(&r, hide_usage))
                fz_fail("not SSE events of JSON objects without a hidden usage chunk", method, path,
                        &r);
        } else if (calls == 0) {
            fz_fail("200 without asking an upstream", method, path, &r);
        }
    }
    fz_resp_deinit(&r);
    json_decref(expect.body);
    expect.body = NULL;
    return 0;
}
