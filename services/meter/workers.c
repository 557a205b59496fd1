/*
 * The event loops of a metered service and what each owns (workers.h): made, started, stopped
 * and freed the same way for chat and the proxy.
 */
#include "meter/workers.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "billing/client.h"
#include "billing/lease.h"
#include "meter/meter.h"
#include "svc/fetch.h"
#include "svc/log.h"
#include "svc/loop.h"
#include "svc/redis.h"
#include "svc/rpc.h"

#define REDIS_TIMEOUT_MS 2000
#define AUTH_TIMEOUT_MS 3000
/* A Reserve or Settle waits in this loop's queue (RPC_CONNECTIONS_PER_PEER connections) during
 * a burst; the deadline runs from when it has a connection (svc_fetch_multi_create), since
 * failing a request that billing would have served a moment later gains nothing. A billing that
 * refuses connections still fails at once. */
#define BILLING_TIMEOUT_MS 10000
/* Per loop and peer service; a burst of RPCs queues on these instead of opening a connection
 * (and a descriptor) per request. */
#define RPC_CONNECTIONS_PER_PEER 32
#define SETTLE_GRACE_MS 5000

struct meter_workers {
    unsigned n;
    struct meter_worker *w;
    struct svc_loop **loops;
    pthread_t *threads;
    unsigned started;
    struct svc_metric *settles_pending;
    struct svc_metric *leases_open;
};

int meter_upstream_check(const char *key, const char *ca_file, const char *http2,
                         svc_fetch_http_e *http, char *err, size_t errlen)
{
    if (strlen(key) > 1000) {
        snprintf(err, errlen, "OPENAI_KEY: longer than 1000 characters");
        return SVC_EINVAL;
    }
    if (ca_file[0] != '\0' && access(ca_file, R_OK) != 0) {
        snprintf(err, errlen, "OPENAI_CA_FILE: cannot read \"%s\"", ca_file);
        return SVC_EINVAL;
    }
    if (svc_fetch_http_parse(http2, http) != SVC_OK) {
        snprintf(err, errlen, "OPENAI_HTTP2: \"%s\" is not auto, prior-knowledge or off", http2);
        return SVC_EINVAL;
    }
    return SVC_OK;
}

static int worker_setup(struct meter_worker *w, const struct meter_workers_opts *o)
{
    if (svc_loop_create(&w->loop) != SVC_OK)
        return SVC_ENOMEM;
    svc_loop_set_data(w->loop, w);
    w->models = o->models;
    w->upstream_http = o->upstream_http;
    if (svc_fetch_multi_create(&w->upstream, w->loop, 0) != SVC_OK ||
        svc_fetch_multi_create(&w->rpc, w->loop, RPC_CONNECTIONS_PER_PEER) != SVC_OK ||
        svc_redis_async_create(&w->redis, w->loop, o->redis_url, REDIS_TIMEOUT_MS, NULL, 0) !=
            SVC_OK ||
        svc_rpc_client_create(&w->auth, o->auth_url, AUTH_TIMEOUT_MS, NULL, 0) != SVC_OK ||
        svc_rpc_client_create(&w->billing, o->billing_url, BILLING_TIMEOUT_MS, NULL, 0) != SVC_OK)
        return SVC_ENOMEM;
    if (billing_client_create(&w->bill, w->loop, w->billing, w->rpc, o->settle_retry_s,
                              o->settles_pending) != SVC_OK)
        return SVC_ENOMEM;
    if (o->leases) {
        struct billing_leases_opts lo = {
            .source = o->source,
            .flush_ms = o->lease_flush_ms,
            .idle_ms = o->lease_idle_ms,
            .lean_ms = o->lease_lean_ms,
            .retry_for_s = o->settle_retry_s,
            .open = o->leases_open,
            .journal = w->redis,
        };
        if (billing_leases_create(&w->leases, w->loop, w->billing, w->rpc, &lo) != SVC_OK)
            return SVC_ENOMEM;
    }
    if (meter_loop_create(&w->meters, w->loop, w->upstream, w->redis, w->bill, w->leases,
                          o->abort_drain_ms) != SVC_OK)
        return SVC_ENOMEM;
    return SVC_OK;
}

static void worker_free(struct meter_worker *w)
{
    meter_loop_destroy(&w->meters); /* drains still reading end, charged as counted */
    billing_leases_destroy(&w->leases);
    billing_client_destroy(&w->bill);
    svc_fetch_multi_destroy(&w->upstream);
    svc_fetch_multi_destroy(&w->rpc);
    svc_redis_async_destroy(&w->redis);
    svc_rpc_client_destroy(&w->auth);
    svc_rpc_client_destroy(&w->billing);
    svc_loop_destroy(&w->loop);
}

int meter_workers_create(struct meter_workers **out, const struct meter_workers_opts *o)
{
    struct meter_workers *ws = calloc(1, sizeof(*ws));
    int rc = SVC_ENOMEM;

    *out = NULL;
    if (ws == NULL || o->n == 0)
        goto fail;
    ws->n = o->n;
    ws->settles_pending = o->settles_pending;
    ws->leases_open = o->leases_open;
    ws->w = calloc(o->n, sizeof(*ws->w));
    ws->loops = calloc(o->n, sizeof(*ws->loops));
    ws->threads = calloc(o->n, sizeof(*ws->threads));
    if (ws->w == NULL || ws->loops == NULL || ws->threads == NULL)
        goto fail;
    for (unsigned i = 0; i < o->n; i++) {
        if ((rc = worker_setup(&ws->w[i], o)) != SVC_OK)
            goto fail;
        ws->loops[i] = ws->w[i].loop;
    }
    *out = ws;
    return SVC_OK;
fail:
    meter_workers_destroy(&ws);
    return rc;
}

struct svc_loop **meter_workers_loops(struct meter_workers *ws)
{
    return ws->loops;
}

unsigned meter_workers_count(const struct meter_workers *ws)
{
    return ws->n;
}

static void *worker_main(void *ctx)
{
    struct meter_worker *w = ctx;

    svc_loop_run(w->loop);
    return NULL;
}

int meter_workers_start(struct meter_workers *ws)
{
    for (; ws->started < ws->n; ws->started++)
        if (pthread_create(&ws->threads[ws->started], NULL, worker_main, &ws->w[ws->started]) != 0)
            return SVC_ENOMEM;
    return SVC_OK;
}

int meter_workers_redis_connected(const struct meter_workers *ws)
{
    for (unsigned i = 0; i < ws->n; i++)
        if (!svc_redis_async_connected(ws->w[i].redis))
            return 0;
    return 1;
}

static void stop_loop(void *ctx, struct svc_loop *loop)
{
    (void)ctx;
    svc_loop_stop(loop);
}

static void close_leases(void *ctx, struct svc_loop *loop)
{
    struct meter_worker *w = svc_loop_data(loop);

    (void)ctx;
    if (w->leases != NULL)
        billing_leases_close_all(w->leases);
}

static int still_pending(struct svc_metric *gauge)
{
    return gauge != NULL && atomic_load(&gauge->value) > 0;
}

void meter_workers_stop(struct meter_workers *ws)
{
    for (unsigned i = 0; i < ws->started; i++)
        if (svc_loop_post(ws->w[i].loop, close_leases, NULL) != SVC_OK)
            SVC_LOG_WARN(NULL, "shutdown", "cannot close the balance leases of loop %u", i);
    for (int i = 0; i < SETTLE_GRACE_MS / 20 &&
                    (still_pending(ws->settles_pending) || still_pending(ws->leases_open));
         i++)
        usleep(20 * 1000);
    for (unsigned i = 0; i < ws->started; i++) {
        if (svc_loop_post(ws->w[i].loop, stop_loop, NULL) != SVC_OK)
            svc_loop_stop(ws->w[i].loop);
        pthread_join(ws->threads[i], NULL);
    }
    ws->started = 0;
}

void meter_workers_destroy(struct meter_workers **wsp)
{
    struct meter_workers *ws = *wsp;

    if (ws == NULL)
        return;
    meter_workers_stop(ws);
    for (unsigned i = 0; ws->w != NULL && i < ws->n; i++)
        worker_free(&ws->w[i]);
    free(ws->w);
    free(ws->loops);
    free(ws->threads);
    free(ws);
    *wsp = NULL;
}
