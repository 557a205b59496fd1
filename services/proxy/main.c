/*
 * chatweb-proxy: the metered OpenAI-compatible API under /v1 (v1.c, docs/proxy.md). One event
 * loop per core (WORKERS), each with its own MHD daemon on the shared listening socket, libcurl
 * multis, Redis connection and meter loop; see proxy.h.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth/client.h"
#include "billing/client.h"
#include "meter/meter.h"
#include "proxy.h"
#include "svc/fetch.h"
#include "svc/http.h"
#include "svc/log.h"
#include "svc/loop.h"
#include "svc/modelmap.h"
#include "svc/redis.h"
#include "svc/rpc.h"
#include "svc/service.h"
#include "svc/tokenizer.h"

struct proxy_setting proxy_setting = {PROXY_OPTIONS(SVC_OPTION_INIT)};
struct proxy_stats proxy_stats = {PROXY_METRICS(SVC_METRIC_INIT)};

#define REDIS_TIMEOUT_MS 2000
#define AUTH_TIMEOUT_MS 3000
/* A Reserve or Settle waits in this loop's queue (RPC_CONNECTIONS_PER_PEER connections) during
 * a burst, and the deadline counts that wait: failing a request that billing would have served a
 * moment later gains nothing. A billing that refuses connections still fails at once. */
#define BILLING_TIMEOUT_MS 10000
#define RPC_CONNECTIONS_PER_PEER 32
#define SETTLE_GRACE_MS 5000
#define AUTH_MEMO_SLOTS 4096

static struct proxy_worker *workers;
static unsigned nworkers;

static const struct svc_route routes[] = {
    {NULL, "/v1/*", proxy_v1, NULL, SVC_HTTP_STYLE_OPENAI, 1},
};

static void *worker_main(void *arg)
{
    struct proxy_worker *w = arg;

    svc_loop_run(w->loop);
    return NULL;
}

/* Ready when every loop has its Redis connection (the rate limits need it). */
static int redis_ready(void *data)
{
    (void)data;
    for (unsigned i = 0; i < nworkers; i++)
        if (!svc_redis_async_connected(workers[i].redis))
            return -1;
    return 0;
}

static void stop_loop(struct svc_loop *loop, void *data)
{
    (void)data;
    svc_loop_stop(loop);
}

int main(int argc, char **argv)
{
    struct svc_http_server *srv = NULL;
    struct svc_http_opts ho = {0};
    struct svc_modelmap *models = NULL;
    struct svc_loop **loops;
    pthread_t *threads;
    char err[512];

    svc_service_setup("proxy", argc, argv, (struct svc_option *)&proxy_setting,
                      SVC_OPTION_COUNT(proxy_setting));
    if (!proxy_setting.OPENAI_PROXY.i) {
        /* Off (the default, as in the seed): every /v1 path is an OpenAI-style 404. */
        svc_service_start();
        svc_service_serve_pool(NULL, 0, SVC_HTTP_STYLE_OPENAI);
        svc_service_teardown();
        return SVC_EX_OK;
    }
    if (strcmp(proxy_setting.PROXY_CLIENT_KEYS.s, "off") != 0 &&
        strcmp(proxy_setting.PROXY_CLIENT_KEYS.s, "relay") != 0)
        svc_service_die(SVC_EX_CONFIG, "PROXY_CLIENT_KEYS: must be off or relay, got \"%s\"",
                        proxy_setting.PROXY_CLIENT_KEYS.s);
    if (proxy_setting.AUTH_URL.s[0] == '\0')
        svc_service_die(SVC_EX_CONFIG, "AUTH_URL: required (the auth service's base URL)");
    if (proxy_setting.BILLING_URL.s[0] == '\0')
        svc_service_die(SVC_EX_CONFIG, "BILLING_URL: required (the billing service's base URL)");
    if (svc_redis_url_check(proxy_setting.REDIS_URL.s, err, sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "REDIS_URL: %s", err);
    if (strlen(proxy_setting.OPENAI_KEY.s) > 1000)
        svc_service_die(SVC_EX_CONFIG, "OPENAI_KEY: longer than 1000 characters");
    if (proxy_setting.OPENAI_CA_FILE.s[0] != '\0' &&
        access(proxy_setting.OPENAI_CA_FILE.s, R_OK) != 0)
        svc_service_die(SVC_EX_CONFIG, "OPENAI_CA_FILE: cannot read \"%s\"",
                        proxy_setting.OPENAI_CA_FILE.s);
    if (proxy_upstreams_setup(err, sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "UPSTREAMS: %s", err);
    meter_set_output_budget((size_t)proxy_setting.STREAM_OUTPUT_BUDGET_MB.i << 20);
    {
        svc_fetch_http_e http;
        if (svc_fetch_http_parse(proxy_setting.OPENAI_HTTP2.s, &http) != SVC_OK)
            svc_service_die(SVC_EX_CONFIG,
                            "OPENAI_HTTP2: \"%s\" is not auto, prior-knowledge or off",
                            proxy_setting.OPENAI_HTTP2.s);
    }
    if (svc_modelmap_create(&models, proxy_setting.MODEL_WINDOWS.s, err, sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "MODEL_WINDOWS: %s", err);
    svc_service_start();
    svc_metrics_register((struct svc_metric *)&proxy_stats, SVC_METRIC_COUNT(proxy_stats));
    proxy_metrics_setup();
    if (auth_client_setup(AUTH_MEMO_SLOTS, (long)proxy_setting.PROXY_AUTH_CACHE_MS.i) != SVC_OK)
        svc_service_die(SVC_EX_SOFTWARE, "cannot set up the authentication memory");

    nworkers = svc_service_workers();
    workers = calloc(nworkers, sizeof(*workers));
    loops = calloc(nworkers, sizeof(*loops));
    threads = calloc(nworkers, sizeof(*threads));
    if (workers == NULL || loops == NULL || threads == NULL)
        svc_service_die(SVC_EX_SOFTWARE, "out of memory");
    for (unsigned i = 0; i < nworkers; i++) {
        struct proxy_worker *w = &workers[i];
        w->loop = loops[i] = svc_loop_create();
        if (w->loop == NULL)
            svc_service_die(SVC_EX_SOFTWARE, "cannot create event loop %u", i);
        svc_loop_set_data(w->loop, w);
        w->models = models;
        w->upstream = svc_fetch_multi_create(w->loop, 0);
        w->rpc = svc_fetch_multi_create(w->loop, RPC_CONNECTIONS_PER_PEER);
        w->redis = svc_redis_async_create(w->loop, proxy_setting.REDIS_URL.s, REDIS_TIMEOUT_MS);
        w->auth = svc_rpc_client_create(proxy_setting.AUTH_URL.s, AUTH_TIMEOUT_MS);
        w->billing = svc_rpc_client_create(proxy_setting.BILLING_URL.s, BILLING_TIMEOUT_MS);
        if (w->billing != NULL && w->rpc != NULL)
            w->bill = billing_client_create(w->loop, w->billing, w->rpc,
                                            (long)proxy_setting.PROXY_SETTLE_RETRY_FOR.i,
                                            &proxy_stats.proxy_settles_pending);
        if (w->bill != NULL && w->upstream != NULL && w->redis != NULL)
            w->meters = meter_loop_create(w->loop, w->upstream, w->redis, w->bill,
                                          (long)proxy_setting.PROXY_ABORT_DRAIN_MS.i);
        if (w->upstream == NULL || w->rpc == NULL || w->redis == NULL || w->auth == NULL ||
            w->billing == NULL || w->bill == NULL || w->meters == NULL)
            svc_service_die(SVC_EX_SOFTWARE, "cannot set up worker %u", i);
    }

    ho.service = "proxy";
    ho.addr = proxy_setting.HTTP_ADDR.s;
    ho.mode = SVC_HTTP_LOOPS;
    ho.loops = loops;
    ho.nloops = nworkers;
    ho.max_body = (size_t)proxy_setting.HTTP_MAX_BODY.i;
    ho.max_header = (size_t)proxy_setting.HTTP_MAX_HEADER.i;
    ho.idle_timeout = (unsigned)proxy_setting.HTTP_IDLE_TIMEOUT.i;
    ho.max_connections = (unsigned)proxy_setting.HTTP_MAX_CONNECTIONS.i;
    ho.default_style = SVC_HTTP_STYLE_OPENAI;
    if (svc_http_server_create(&srv, &ho, routes, sizeof(routes) / sizeof(routes[0]), err,
                               sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "HTTP_ADDR: %s", err);
    svc_tokenizer_warm(); /* the first request need not wait for them */
    for (unsigned i = 0; i < nworkers; i++)
        if (pthread_create(&threads[i], NULL, worker_main, &workers[i]) != 0)
            svc_service_die(SVC_EX_SOFTWARE, "cannot start loop thread %u", i);
    SVC_LOG_NOTICE(NULL, "startup", "serving /v1 on port %d with %u event loop(s)",
                   svc_http_server_port(srv), nworkers);
    svc_service_set_ready_check(redis_ready, NULL);
    svc_service_serve(srv);
    /* Requests are drained; give the settles they left a moment to reach billing. */
    for (int i = 0; i < SETTLE_GRACE_MS / 20 &&
                    atomic_load(&proxy_stats.proxy_settles_pending.value) > 0;
         i++)
        usleep(20 * 1000);
    for (unsigned i = 0; i < nworkers; i++) {
        if (svc_loop_post(workers[i].loop, stop_loop, NULL) != SVC_OK)
            svc_loop_stop(workers[i].loop);
        pthread_join(threads[i], NULL);
    }
    svc_http_server_destroy(&srv);
    for (unsigned i = 0; i < nworkers; i++) {
        struct proxy_worker *w = &workers[i];
        meter_loop_destroy(&w->meters);
        billing_client_destroy(&w->bill);
        svc_fetch_multi_destroy(&w->upstream);
        svc_fetch_multi_destroy(&w->rpc);
        svc_redis_async_destroy(&w->redis);
        svc_rpc_client_destroy(&w->auth);
        svc_rpc_client_destroy(&w->billing);
        svc_loop_destroy(&w->loop);
    }
    auth_client_teardown();
    svc_modelmap_destroy(&models);
    free(workers);
    free(loops);
    free(threads);
    svc_service_teardown();
    return SVC_EX_OK;
}
