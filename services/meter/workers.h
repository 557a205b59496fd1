#ifndef METER_WORKERS_H
#define METER_WORKERS_H

/*
 * The event loops of a metered service (chat, proxy): one per core, each with its own upstream
 * and RPC connections, async Redis, auth and billing clients and meter loop, shared with nothing
 * else. The service serves HTTP on meter_workers_loops(); a handler finds its worker with
 * svc_loop_data(svc_req_loop(req)).
 *
 *     meter_workers_create(&ws, &opts);        after svc_service_start()
 *     svc_http_server_create(... loops = meter_workers_loops(ws) ...);
 *     meter_workers_start(ws);                 the loop threads
 *     svc_service_serve(srv);                  until SIGTERM
 *     meter_workers_stop(ws);                  settles left a moment, then the loops stop
 *     svc_http_server_destroy(&srv);           requests complete (their cleanups use the workers)
 *     meter_workers_destroy(&ws);
 */

#include "svc/fetch.h"
#include "svc/metrics.h"

struct svc_loop;
struct svc_fetch_multi;
struct svc_redis_async;
struct svc_rpc_client;
struct svc_modelmap;
struct billing_client;
struct billing_leases;
struct meter_loop;

struct meter_worker {
    struct svc_loop *loop;
    struct svc_fetch_multi *upstream; /* upstream calls */
    struct svc_fetch_multi *rpc;      /* auth and billing calls: a few keep-alive connections */
    struct svc_redis_async *redis;
    struct svc_rpc_client *auth;
    struct svc_rpc_client *billing;
    struct billing_client *bill;       /* Reserve; Settle/Release retried until billing answers */
    struct billing_leases *leases;     /* balance leases (NULL when off): admission from memory */
    struct meter_loop *meters;         /* the metered pipeline on this loop */
    const struct svc_modelmap *models; /* shared by all loops, read-only */
    svc_fetch_http_e upstream_http;    /* OPENAI_HTTP2, parsed once (meter_upstream_check) */
};

struct meter_workers_opts {
    unsigned n; /* loops */
    const char *redis_url, *auth_url, *billing_url;
    const struct svc_modelmap *models;
    long settle_retry_s;                /* how long a Settle/Release is retried */
    long abort_drain_ms;                /* after a client left, reading what the upstream sent */
    struct svc_metric *settles_pending; /* gauge of Settles/Releases not yet answered */
    svc_fetch_http_e upstream_http;     /* from meter_upstream_check */
    /* Balance leases (billing/lease.h): on or off, and their timings. */
    int leases;
    const char *source;                 /* "chat" or "proxy" */
    long lease_flush_ms, lease_idle_ms, lease_lean_ms;
    struct svc_metric *leases_open;     /* gauge of leases alive (may be NULL) */
};

/*
 * The upstream settings chat and the proxy share, checked at start-up: OPENAI_KEY (at most 1000
 * bytes: it is formatted into a fixed header buffer), OPENAI_CA_FILE (readable when set),
 * OPENAI_HTTP2 (parsed into *http once, for every request). 0, or SVC_EINVAL with "NAME: why"
 * in err.
 */
int meter_upstream_check(const char *key, const char *ca_file, const char *http2,
                         svc_fetch_http_e *http, char *err, size_t errlen) SVC_MUST_CHECK;

struct meter_workers;

/* Creates the loops and every client on them; SVC_ENOMEM (or another error) when one cannot be
 * made: the service cannot run. */
int meter_workers_create(struct meter_workers **out,
                         const struct meter_workers_opts *o) SVC_MUST_CHECK;

/* The loops, for the HTTP server (LOOPS mode), and their number. */
struct svc_loop **meter_workers_loops(struct meter_workers *ws);
unsigned meter_workers_count(const struct meter_workers *ws);

/* Starts one thread per loop. */
int meter_workers_start(struct meter_workers *ws) SVC_MUST_CHECK;

/* 1 when every loop has its Redis connection (the readiness probe). */
int meter_workers_redis_connected(const struct meter_workers *ws);

/* After the requests drained: closes every balance lease (its charges reported, its units given
 * back), waits up to 5 s for those calls and the Settles/Releases still pending to reach billing,
 * then stops the loops and joins their threads. */
void meter_workers_stop(struct meter_workers *ws);

/* Frees everything (after the HTTP server is gone). Accepts NULL; sets *ws to NULL. */
void meter_workers_destroy(struct meter_workers **ws);

#endif
