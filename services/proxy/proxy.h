#ifndef PROXY_PROXY_H
#define PROXY_PROXY_H

#include "meter/workers.h" /* struct meter_worker: a loop's worker */
#include "svc/cfg.h"
#include "svc/metrics.h"

/*
 * The proxy service: the OpenAI-compatible API under /v1 for internal services and SDKs, with a
 * chatweb API key, metered, rate-limited and billed like the chat (docs/proxy.md). One event loop
 * per core; each loop owns a worker: its libcurl multis (upstream, RPC), its async Redis (rate
 * counters) and its meter loop (services/meter), shared with nothing else.
 */

struct svc_loop;
struct svc_fetch_multi;
struct svc_redis_async;
struct svc_rpc_client;
struct svc_modelmap;
struct billing_client;
struct meter_loop;

/* The query string passed upstream (re-encoded), and the whole upstream URL: base (at most
 * SVC_CFG_URL_MAX) + path + query. Longer: 414. */
#define PROXY_QUERY_MAX 2048
#define PROXY_URL_MAX 3072

/* UPSTREAMS (upstreams.c): at most this many upstreams, "default" included. */
#define PROXY_UPSTREAMS_MAX 16
#define PROXY_UPSTREAM_NAME_MAX 32
#define PROXY_UPSTREAM_MODELS_MAX 32

#define PROXY_OPTIONS(ACTION)                                                                  \
    SVC_COMMON_OPTIONS(ACTION)                                                                 \
    ACTION(OPENAI_PROXY, SVC_OPT_BOOL, "false", 0, 0,                                          \
           "true: serve /v1 (off: every /v1 path answers 404)")                               \
    ACTION(AUTH_URL, SVC_OPT_URL, "", 0, 0, "base URL of the auth service (required)")        \
    ACTION(BILLING_URL, SVC_OPT_URL, "", 0, 0, "base URL of the billing service (required)")  \
    ACTION(REDIS_URL, SVC_OPT_STR, "redis://127.0.0.1:6379/0", 0, 0, "Redis for rate counters") \
    ACTION(OPENAI_KEY, SVC_OPT_SECRET, "", 0, 0, "upstream API key (no header when empty)")   \
    ACTION(OPENAI_BASE_URL, SVC_OPT_URL, "https://api.openai.com/v1", 0, 0,                   \
           "OpenAI-compatible upstream base URL")                                              \
    ACTION(SOCKS_PROXY, SVC_OPT_SECRET, "", 0, 0, "proxy URL for upstream calls")             \
    ACTION(UPSTREAMS, SVC_OPT_SECRET, "", 0, 0,                                                \
           "more upstreams: JSON [{name, base_url, key | key_env, weight, models}]")          \
    ACTION(UPSTREAM_BREAKER_FAILURES, SVC_OPT_INT, "5", 0, 1000,                               \
           "failed attempts in a row that open an upstream's circuit; 0 = no breaker")        \
    ACTION(UPSTREAM_BREAKER_OPEN_MS, SVC_OPT_INT, "30000", 100, 3600000,                       \
           "ms an open circuit keeps traffic off its upstream before one request probes it")  \
    ACTION(OPENAI_CA_FILE, SVC_OPT_STR, "", 0, 0,                                              \
           "PEM file of the CAs to trust for the upstream (a private CA); empty = the system's") \
    ACTION(OPENAI_HTTP2, SVC_OPT_STR, "auto", 0, 0,                                            \
           "auto: HTTP/2 by ALPN on https, HTTP/1.1 on http; prior-knowledge: h2c; off: 1.1") \
    ACTION(STREAM_OUTPUT_BUDGET_MB, SVC_OPT_INT, "64", 0, 65536,                                \
           "MiB queued for slow clients, all streams together, before their upstreams wait") \
    ACTION(MODEL_WINDOWS, SVC_OPT_STR, "", 0, 0,                                               \
           "model context windows: prefix=window[:encoding],... ('*' = unknown models)")      \
    ACTION(PROXY_RPM_LIMIT, SVC_OPT_INT, "0", 0, 1000000,                                      \
           "requests per minute per user when the key has no rpm; 0 = no limit")             \
    ACTION(PROXY_TPM_LIMIT, SVC_OPT_INT, "0", 0, 1000000000000LL,                              \
           "tokens per minute per user (the key's tpm applies as well); 0 = no limit")        \
    ACTION(PROXY_RATELIMIT_FAIL_OPEN, SVC_OPT_BOOL, "false", 0, 0,                             \
           "true: serve when Redis cannot count (default: refuse with 503)")                  \
    ACTION(PROXY_CLIENT_KEYS, SVC_OPT_STR, "off", 0, 0,                                        \
           "relay: a Bearer that is not a chatweb key goes upstream as is, unmetered (off)")  \
    ACTION(PROXY_PASSTHROUGH, SVC_OPT_STR, "", 0, 0,                                           \
           "other /v1 paths relayed unmetered for authenticated keys, comma-separated")       \
    ACTION(PROXY_UPSTREAM_IDLE_TIMEOUT, SVC_OPT_INT, "120", 1, 3600,                           \
           "seconds without an upstream byte before a request is abandoned")                  \
    ACTION(PROXY_ABORT_DRAIN_MS, SVC_OPT_INT, "100", 0, 1000,                                  \
           "ms a request whose client left still reads what the upstream already sent")       \
    ACTION(PROXY_BILLING_LEASES, SVC_OPT_BOOL, "true", 0, 0,                                   \
           "admit requests against a per-replica balance lease (no Reserve trip)")             \
    ACTION(PROXY_LEASE_FLUSH_MS, SVC_OPT_INT, "10", 1, 1000,                                   \
           "ms a lease's charges wait to be reported to billing together")                     \
    ACTION(PROXY_LEASE_IDLE_MS, SVC_OPT_INT, "2000", 100, 600000,                              \
           "ms without a request before a lease's units go back")                              \
    ACTION(PROXY_LEASE_LEAN_MS, SVC_OPT_INT, "2000", 0, 600000,                                \
           "ms of exact-path requests after the balance could not grow a lease")               \
    ACTION(PROXY_SETTLE_RETRY_FOR, SVC_OPT_INT, "600", 0, 86400,                               \
           "seconds a Settle is retried while billing cannot be reached")                     \
    ACTION(PROXY_AUTH_CACHE_MS, SVC_OPT_INT, "100", 0, 1000,                                   \
           "ms a successful Authenticate answer is reused for the same key; 0 = off")

struct proxy_setting {
    PROXY_OPTIONS(SVC_OPTION_DECLARE)
};

#define PROXY_METRICS(ACTION)                                                                  \
    ACTION(proxy_requests_total, SVC_METRIC_COUNTER, "/v1 requests")                          \
    ACTION(proxy_streams_open, SVC_METRIC_GAUGE, "answers streaming now")                     \
    ACTION(proxy_auth_errors_total, SVC_METRIC_COUNTER, "requests refused for their key")     \
    ACTION(proxy_rate_limited_total, SVC_METRIC_COUNTER, "requests refused by a rate limit")  \
    ACTION(proxy_upstream_errors_total, SVC_METRIC_COUNTER, "upstream failures")              \
    ACTION(proxy_client_aborts_total, SVC_METRIC_COUNTER, "clients that left mid-request")    \
    ACTION(proxy_prompt_tokens_total, SVC_METRIC_COUNTER, "prompt tokens charged")            \
    ACTION(proxy_completion_tokens_total, SVC_METRIC_COUNTER, "completion tokens charged")    \
    ACTION(proxy_leases_open, SVC_METRIC_GAUGE, "balance leases this replica holds")           \
    ACTION(proxy_settles_pending, SVC_METRIC_GAUGE, "Settle/Release calls waiting for billing")

struct proxy_stats {
    PROXY_METRICS(SVC_METRIC_DECLARE)
};


/* Per-loop state; svc_loop_data(loop) points at it. */

struct svc_req;

/* Every /v1 path (v1.c). Runs on the request's loop; always async once authenticated. */
int proxy_v1(void *ctx, struct svc_req *req);
/* Builds the upstream list from s's OPENAI_BASE_URL, OPENAI_KEY and UPSTREAMS (at start-up). */
int proxy_upstreams_setup(const struct proxy_setting *s, char *err, size_t errlen);
size_t proxy_upstreams_count(void);
const char *proxy_upstream_name(int i);
const char *proxy_upstream_base(int i); /* no trailing slash */
const char *proxy_upstream_auth(int i); /* "Authorization: Bearer ..." or "" */
/*
 * An upstream for a request of model (index), preferring those whose bit is not set in tried,
 * drawn by weight among those that serve the model and whose circuit lets them (among all of
 * them when every circuit is open); -1 when none serves it (*no_model = 1) or all that do have
 * weight 0.
 */
int proxy_upstream_pick(const char *model, unsigned tried, int *no_model);
/* The outcome of an attempt at upstream i, for its circuit breaker (ok: it answered, not 429
 * or 5xx). */
void proxy_upstream_report(int i, int ok);

/* Once, at start-up, before the first request: keeps the service's settings and counters (main.c
 * owns them; borrowed for the life of the process) and creates the labelled metrics of /v1 (per
 * model, key, upstream). */
void proxy_v1_setup(const struct proxy_setting *s, struct proxy_stats *st);

#endif
