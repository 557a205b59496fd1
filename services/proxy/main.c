/*
 * chatweb-proxy: the metered OpenAI-compatible API under /v1 (v1.c, docs/proxy.md). One event
 * loop per core (WORKERS), each accepting on the shared listening socket, with its own libcurl
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
#include "meter/workers.h"
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

static struct proxy_setting setting = {PROXY_OPTIONS(SVC_OPTION_INIT)};
static struct proxy_stats stats = {PROXY_METRICS(SVC_METRIC_INIT)};

#define AUTH_MEMO_SLOTS 4096

static struct meter_workers *workers;

static const struct svc_http_route routes[] = {
    {NULL, "/v1/*", proxy_v1, NULL, SVC_HTTP_STYLE_OPENAI, 1},
};

/* Ready when every loop has its Redis connection (the rate limits need it). */
static int redis_ready(void *ctx)
{
    (void)ctx;
    return meter_workers_redis_connected(workers) ? 0 : -1;
}

int main(int argc, char **argv)
{
    struct svc_http_server *srv = NULL;
    struct svc_http_opts ho = {0};
    struct svc_modelmap *models = NULL;
    struct meter_workers_opts wo = {0};
    char err[512];

    svc_service_setup("proxy", argc, argv, (struct svc_cfg_option *)&setting,
                      SVC_OPTION_COUNT(setting));
    if (!setting.OPENAI_PROXY.i) {
        /* Off (the default, as in the seed): every /v1 path is an OpenAI-style 404. */
        svc_service_start();
        svc_service_serve_pool(NULL, 0, SVC_HTTP_STYLE_OPENAI);
        svc_service_teardown();
        return SVC_EX_OK;
    }
    if (strcmp(setting.PROXY_CLIENT_KEYS.s, "off") != 0 &&
        strcmp(setting.PROXY_CLIENT_KEYS.s, "relay") != 0)
        svc_service_die(SVC_EX_CONFIG, "PROXY_CLIENT_KEYS: must be off or relay, got \"%s\"",
                        setting.PROXY_CLIENT_KEYS.s);
    if (setting.AUTH_URL.s[0] == '\0')
        svc_service_die(SVC_EX_CONFIG, "AUTH_URL: required (the auth service's base URL)");
    if (setting.BILLING_URL.s[0] == '\0')
        svc_service_die(SVC_EX_CONFIG, "BILLING_URL: required (the billing service's base URL)");
    if (svc_redis_url_check(setting.REDIS_URL.s, err, sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "REDIS_URL: %s", err);
    if (meter_upstream_check(setting.OPENAI_KEY.s, setting.OPENAI_CA_FILE.s,
                             setting.OPENAI_HTTP2.s, &wo.upstream_http, err,
                             sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "%s", err);
    if (proxy_upstreams_setup(&setting, err, sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "UPSTREAMS: %s", err);
    meter_set_output_budget((size_t)setting.STREAM_OUTPUT_BUDGET_MB.i << 20);
    if (svc_modelmap_create(&models, setting.MODEL_WINDOWS.s, err, sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "MODEL_WINDOWS: %s", err);
    svc_service_start();
    svc_metrics_register((struct svc_metric *)&stats, SVC_METRIC_COUNT(stats));
    proxy_v1_setup(&setting, &stats);
    if (auth_client_setup(AUTH_MEMO_SLOTS, (long)setting.PROXY_AUTH_CACHE_MS.i) != SVC_OK)
        svc_service_die(SVC_EX_SOFTWARE, "cannot set up the authentication memory");

    wo.n = svc_service_workers();
    wo.redis_url = setting.REDIS_URL.s;
    wo.auth_url = setting.AUTH_URL.s;
    wo.billing_url = setting.BILLING_URL.s;
    wo.models = models;
    wo.settle_retry_s = (long)setting.PROXY_SETTLE_RETRY_FOR.i;
    wo.abort_drain_ms = (long)setting.PROXY_ABORT_DRAIN_MS.i;
    wo.settles_pending = &stats.proxy_settles_pending;
    wo.leases = setting.PROXY_BILLING_LEASES.i;
    wo.source = "proxy";
    wo.lease_flush_ms = (long)setting.PROXY_LEASE_FLUSH_MS.i;
    wo.lease_idle_ms = (long)setting.PROXY_LEASE_IDLE_MS.i;
    wo.lease_lean_ms = (long)setting.PROXY_LEASE_LEAN_MS.i;
    wo.leases_open = &stats.proxy_leases_open;
    if (meter_workers_create(&workers, &wo) != SVC_OK)
        svc_service_die(SVC_EX_SOFTWARE, "cannot set up the event loops");

    ho.service = "proxy";
    ho.addr = setting.HTTP_ADDR.s;
    ho.mode = SVC_HTTP_LOOPS;
    ho.loops = meter_workers_loops(workers);
    ho.nloops = meter_workers_count(workers);
    ho.max_body = (size_t)setting.HTTP_MAX_BODY.i;
    ho.max_header = (size_t)setting.HTTP_MAX_HEADER.i;
    ho.idle_timeout = (unsigned)setting.HTTP_IDLE_TIMEOUT.i;
    ho.max_connections = (unsigned)setting.HTTP_MAX_CONNECTIONS.i;
    ho.trusted_proxies = svc_service_trusted_proxies();
    ho.default_style = SVC_HTTP_STYLE_OPENAI;
    if (svc_http_server_create(&srv, &ho, routes, sizeof(routes) / sizeof(routes[0]), err,
                               sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "HTTP_ADDR: %s", err);
    svc_tokenizer_warm(); /* the first request need not wait for them */
    if (meter_workers_start(workers) != SVC_OK)
        svc_service_die(SVC_EX_SOFTWARE, "cannot start the event loop threads");
    SVC_LOG_NOTICE(NULL, "startup", "serving /v1 on port %d with %u event loop(s)",
                   svc_http_server_port(srv), meter_workers_count(workers));
    svc_service_set_ready_check(redis_ready, NULL);
    svc_service_serve(srv);
    meter_workers_stop(workers); /* the settles left get a moment to reach billing */
    /* The daemons go first: stopping them completes their requests, whose cleanups still use
     * the workers' clients. */
    svc_http_server_destroy(&srv);
    meter_workers_destroy(&workers);
    auth_client_teardown();
    svc_modelmap_destroy(&models);
    svc_service_teardown();
    return SVC_EX_OK;
}
