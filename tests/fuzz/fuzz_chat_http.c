/*
 * Fuzz target: the request fields and the JSON body of POST /api/chat-process, through the chat
 * service's real handler (chat_process in services/chat/web.c: the body parser is static there)
 * on one chat worker (event loop, fetch multis, async Redis, auth and billing clients, meter) set
 * up the way services/chat/main.c does it, behind the real svc_http server in LOOPS mode. Auth
 * and billing are the stand-ins of fake_services.c on the same server, and so is the upstream: a
 * short fixed SSE reply. Redis is a closed port, so a turn that needs history gets 503 and a
 * finished reply is not stored (both are handled paths).
 *
 * Input: byte 0 picks the path (mostly /api/chat-process), byte 1 the headers (F_* flags); the
 * rest is split at 0xff into the Authorization value, the Cookie value, one more header value
 * (Accept-Language, X-Request-Id or Origin) and the body.
 *
 * Checked on every reply: complete within the harness's timeout; never a 5xx but 503; a 401
 * carries the Basic challenge; anything else is the {status, message} envelope or a chat stream
 * whose every line is a JSON object with a string "text" and "id".
 */

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/client.h"
#include "billing/client.h"
#include "chat.h"
#include "fake_services.h"
#include "http_harness.h"
#include "meter/meter.h"
#include "svc/cfg.h"
#include "svc/fetch.h"
#include "svc/log.h"
#include "svc/loop.h"
#include "svc/modelmap.h"
#include "svc/redis.h"
#include "svc/rpc.h"

/* chat_core's configuration and metrics, lent to its handler as the route's ctx the way
 * services/chat/main.c (not linked here) does it */
static struct chat_setting chat_setting = {CHAT_OPTIONS(SVC_OPTION_INIT)};
static struct chat_stats chat_stats = {CHAT_METRICS(SVC_METRIC_INIT)};
static struct chat_ctx chat_ctx = {&chat_setting, &chat_stats};

#define MAX_BODY 4096

enum {
    F_AUTHZ = 1 << 0,  /* Authorization: field 0 */
    F_GOOD = 1 << 1,   /* Authorization: Basic credentials the stand-in auth accepts */
    F_COOKIE = 1 << 2, /* Cookie: field 1 */
    F_LANG = 1 << 3,   /* Accept-Language: field 2 */
    F_RID = 1 << 4,    /* X-Request-Id: field 2 */
    F_ORIGIN = 1 << 5, /* Origin: field 2 */
    F_CTYPE = 1 << 6,  /* Content-Type: application/json */
    F_GET = 1 << 7,    /* GET instead of POST */
};

static const char upstream_reply[] =
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
    "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
    "\"delta\":{\"content\":\"Hello \\u00e9\"},\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
    "\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":5,"
    "\"completion_tokens\":2,\"total_tokens\":7}}\n\n"
    "data: [DONE]\n\n";

/* The upstream: every call gets the same short streamed reply. */
static int fake_upstream(void *ctx, struct svc_req *req)
{
    (void)ctx;
    svc_req_reply(req, 200, "text/event-stream", upstream_reply, sizeof(upstream_reply) - 1);
    return SVC_HTTP_DONE;
}

static const struct svc_http_route routes[] = {
    {"POST", "/api/chat-process", chat_process, &chat_ctx, SVC_HTTP_STYLE_ENVELOPE, 1},
    FZ_FAKE_ROUTE,
    {"POST", FZ_FAKE_PREFIX "/v1/*", fake_upstream, NULL, SVC_HTTP_STYLE_OPENAI},
};

static const char *const paths[] = {"/api/chat-process", "/api/chat-process", "/api/chat-process",
                                    "/api/nothing-here"};
#define NPATHS (sizeof(paths) / sizeof(paths[0]))

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
    char err[256], base[96];
    pthread_t t;

    svc_log_setup("fuzz_chat_http", SVC_LOG_LVL_ERR);
    /* the configuration chat_core reads; the upstream and the services are set below */
    setenv("CHAT_AUTH_CACHE_MS", "0", 1); /* every request asks (the stand-in) auth */
    setenv("CHAT_UPSTREAM_IDLE_TIMEOUT", "5", 1);
    setenv("OPENAI_KEY", "sk-fuzz", 1);
    if (svc_cfg_load_env((struct svc_cfg_option *)&chat_setting, SVC_OPTION_COUNT(chat_setting),
                         err, sizeof(err)) != SVC_OK ||
        svc_modelmap_create(&models, "", err, sizeof(err)) != SVC_OK ||
        auth_client_setup(64, 0) != SVC_OK) {
        fprintf(stderr, "fuzz_chat_http: setup: %s\n", err);
        abort();
    }
    if (svc_loop_create(&worker.loop) != SVC_OK)
        abort();
    loops[0] = worker.loop;
    svc_loop_set_data(worker.loop, &worker);
    fz_http_start(routes, sizeof(routes) / sizeof(routes[0]), SVC_HTTP_STYLE_ENVELOPE, MAX_BODY,
                  loops, 1);
    snprintf(base, sizeof(base), "http://127.0.0.1:%d" FZ_FAKE_PREFIX, fz_http_port());
    /* chat_setting.OPENAI_BASE_URL.s is read by turn.c: point it at the stand-in upstream */
    {
        static char up[128];
        snprintf(up, sizeof(up), "%s/v1", base);
        chat_setting.OPENAI_BASE_URL.s = up;
    }
    worker.models = models;
    if (svc_fetch_multi_create(&worker.upstream, worker.loop, 0) != SVC_OK ||
        svc_fetch_multi_create(&worker.rpc, worker.loop, 8) != SVC_OK ||
        svc_redis_async_create(&worker.redis, worker.loop, "redis://127.0.0.1:1/0", 500, NULL, 0) !=
            SVC_OK ||
        svc_rpc_client_create(&worker.auth, base, 3000, NULL, 0) != SVC_OK ||
        svc_rpc_client_create(&worker.billing, base, 3000, NULL, 0) != SVC_OK)
        abort();
    if (billing_client_create(&worker.bill, worker.loop, worker.billing, worker.rpc, 5,
                              &chat_stats.chat_settles_pending) != SVC_OK ||
        meter_loop_create(&worker.meters, worker.loop, worker.upstream, worker.redis, worker.bill, NULL,
                          0) != SVC_OK)
        abort();
    if (worker.upstream == NULL || worker.rpc == NULL || worker.redis == NULL || worker.auth == NULL ||
        worker.billing == NULL || worker.bill == NULL || worker.meters == NULL ||
        pthread_create(&t, NULL, run_loop, worker.loop) != 0 || pthread_detach(t) != 0) {
        fprintf(stderr, "fuzz_chat_http: cannot set up the chat worker\n");
        abort();
    }
}

/* 1 when the body is a chat stream: lines of JSON objects with a string "text" and "id". */
static int chat_stream(const struct fz_resp *r)
{
    const char *p = r->body.data, *end = p + r->body.len;

    if (r->body.len == 0)
        return 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
        json_t *j = json_loadb(p, n, 0, NULL);
        int ok =
            json_is_string(json_object_get(j, "text")) && json_is_string(json_object_get(j, "id"));
        json_decref(j);
        if (!ok)
            return 0;
        p += n + 1;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    const uint8_t *f[4];
    size_t fl[4];
    char hdrs[8192], v[2048];
    const char *method, *path;
    struct fz_resp r;
    uint8_t flags;
    size_t o = 0;

    if (!ready) {
        setup();
        ready = 1;
    }
    if (size < 2)
        return 0;
    path = paths[data[0] % NPATHS];
    flags = data[1];
    fz_split(data + 2, size - 2, 0xff, f, fl, 4);
    method = (flags & F_GET) ? "GET" : "POST";
    hdrs[0] = '\0';
#define ADD(...) o += (size_t)snprintf(hdrs + o, sizeof(hdrs) - o, __VA_ARGS__)
    if (flags & F_GOOD)
        ADD("Authorization: Basic ZnV6ejpmdXp6LXBhc3N3b3Jk\r\n"); /* fuzz:fuzz-password */
    else if (flags & F_AUTHZ)
        ADD("Authorization: %s\r\n", fz_header_value(f[0], fl[0], v, sizeof(v)));
    if (flags & F_COOKIE)
        ADD("Cookie: %s\r\n", fz_header_value(f[1], fl[1], v, sizeof(v)));
    if (flags & F_LANG)
        ADD("Accept-Language: %s\r\n", fz_header_value(f[2], fl[2], v, sizeof(v)));
    if (flags & F_RID)
        ADD("X-Request-Id: %s\r\n", fz_header_value(f[2], fl[2], v, sizeof(v)));
    if (flags & F_ORIGIN)
        ADD("Origin: %s\r\n", fz_header_value(f[2], fl[2], v, sizeof(v)));
    if (flags & F_CTYPE)
        ADD("Content-Type: application/json\r\n");
#undef ADD
    fz_http_do(method, path, hdrs, f[3], fl[3], &r);
    if (r.reset && fl[3] <= MAX_BODY)
        fz_fail("connection closed without a reply", method, path, &r);
    if (r.status != 0) {
        if (r.status >= 500 && r.status != 503)
            fz_fail("server error", method, path, &r);
        if (r.status == 401) {
            if (!r.www_authenticate && !fz_is_envelope(&r))
                fz_fail("401 without the Basic challenge or the envelope", method, path, &r);
        } else if (strncmp(r.content_type, "application/octet-stream", 24) == 0) {
            if (r.status != 200 || !chat_stream(&r))
                fz_fail("not a chat stream", method, path, &r);
        } else if (!fz_is_envelope(&r)) {
            fz_fail("not the {status, message} envelope", method, path, &r);
        }
    }
    fz_resp_deinit(&r);
    return 0;
}
