#ifndef CHAT_CHAT_H
#define CHAT_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "meter/workers.h" /* struct meter_worker: a loop's worker */
#include "svc/cfg.h"
#include "svc/metrics.h"

/*
 * The chat service: the ChatGPT Web API (/api/config, /api/chat-process) on one event loop per
 * core. Each loop owns a worker: its libcurl multi (auth RPC and upstream streams) and its async
 * Redis connection (conversation context). Nothing here is shared between loops except the
 * read-only configuration and the atomic metrics.
 */

struct svc_loop;
struct svc_fetch_multi;
struct svc_redis_async;
struct svc_rpc_client;
struct svc_modelmap;
struct billing_client;
struct meter_loop;

#define CHAT_OPTIONS(ACTION)                                                                   \
    SVC_COMMON_OPTIONS(ACTION)                                                                 \
    ACTION(AUTH_URL, SVC_OPT_URL, "", 0, 0, "base URL of the auth service (required)")        \
    ACTION(BILLING_URL, SVC_OPT_URL, "", 0, 0, "base URL of the billing service (required)")  \
    ACTION(REDIS_URL, SVC_OPT_STR, "redis://127.0.0.1:6379/0", 0, 0,                          \
           "Redis for conversation context")                                                   \
    ACTION(OPENAI_KEY, SVC_OPT_SECRET, "", 0, 0, "upstream API key (no header when empty)")   \
    ACTION(OPENAI_BASE_URL, SVC_OPT_URL, "https://api.openai.com/v1", 0, 0,                   \
           "OpenAI-compatible upstream base URL")                                              \
    ACTION(OPENAI_MODEL, SVC_OPT_STR, "gpt-3.5-turbo", 0, 0, "default model")                 \
    ACTION(OPENAI_MAX_TOKENS, SVC_OPT_INT, "4096", 16, 10000000,                               \
           "context budget: prompt + history + reply")                                         \
    ACTION(OPENAI_TEMPERATURE, SVC_OPT_INT, "80", 0, 200, "temperature x 100")                \
    ACTION(OPENAI_PRESENCE_PENALTY, SVC_OPT_INT, "100", -200, 200, "presence penalty x 100")  \
    ACTION(OPENAI_FREQUENCY_PENALTY, SVC_OPT_INT, "0", -200, 200, "frequency penalty x 100")  \
    ACTION(CHAT_SESSION_TTL, SVC_OPT_INT, "30", 1, 525600, "conversation context TTL, minutes") \
    ACTION(CHAT_CONTEXT_REPLICAS, SVC_OPT_INT, "0", 0, 16,                                      \
           "replicas that must confirm a turn's context (WAIT) before its final object; "      \
           "fewer: stored again once the sentinels name a new master")                         \
    ACTION(CHAT_MIN_RESPONSE_TOKENS, SVC_OPT_INT, "600", 1, 1000000,                           \
           "tokens always left for the reply")                                                 \
    ACTION(CHAT_MAX_HISTORY, SVC_OPT_INT, "64", 0, 1000, "most earlier messages sent upstream") \
    ACTION(CHAT_UPSTREAM_IDLE_TIMEOUT, SVC_OPT_INT, "120", 1, 3600,                            \
           "seconds without an upstream byte before a reply is abandoned")                     \
    ACTION(SOCKS_PROXY, SVC_OPT_SECRET, "", 0, 0, "proxy URL for upstream calls")             \
    ACTION(OPENAI_CA_FILE, SVC_OPT_STR, "", 0, 0,                                              \
           "PEM file of the CAs to trust for the upstream (a private CA); empty = the system's") \
    ACTION(OPENAI_HTTP2, SVC_OPT_STR, "auto", 0, 0,                                            \
           "auto: HTTP/2 by ALPN on https, HTTP/1.1 on http; prior-knowledge: h2c; off: 1.1") \
    ACTION(STREAM_OUTPUT_BUDGET_MB, SVC_OPT_INT, "64", 0, 65536,                                \
           "MiB queued for slow clients, all streams together, before their upstreams wait") \
    ACTION(OPS_LINK, SVC_OPT_STR, "/admin", 0, 0, "self-service link shown to users")         \
    ACTION(CHAT_MODELS, SVC_OPT_STR, "", 0, 0,                                                 \
           "models /model may choose, comma-separated (default: OPENAI_MODEL only)")          \
    ACTION(CHAT_TEST_UPSTREAM, SVC_OPT_BOOL, "false", 0, 0,                                    \
           "true: the upstream is a test one (make run's fake); /api/config says testUpstream") \
    ACTION(CHAT_RATE_LIMIT, SVC_OPT_INT, "0", 0, 1000000,                                     \
           "chat requests per minute per user, all replicas together; 0 = no limit")          \
    ACTION(CHAT_BILLING_LEASES, SVC_OPT_BOOL, "false", 0, 0,                                   \
           "admit requests against a per-replica balance lease (no Reserve trip)")             \
    ACTION(CHAT_LEASE_FLUSH_MS, SVC_OPT_INT, "10", 1, 1000,                                    \
           "ms a lease's charges wait to be reported to billing together")                     \
    ACTION(CHAT_LEASE_IDLE_MS, SVC_OPT_INT, "2000", 100, 600000,                               \
           "ms without a request before a lease's units go back")                              \
    ACTION(CHAT_LEASE_LEAN_MS, SVC_OPT_INT, "2000", 0, 600000,                                 \
           "ms of exact-path requests after the balance could not grow a lease")               \
    ACTION(CHAT_SETTLE_RETRY_FOR, SVC_OPT_INT, "600", 0, 86400,                                \
           "seconds a Settle is retried while billing cannot be reached")                     \
    ACTION(CHAT_AUTH_CACHE_MS, SVC_OPT_INT, "100", 0, 1000,                                    \
           "ms a successful Authenticate answer is reused for the same credentials; 0 = off")   \
    ACTION(CHAT_TPM_LIMIT, SVC_OPT_INT, "0", 0, 1000000000000LL,                              \
           "tokens per minute per user, all replicas together; 0 = no limit")                 \
    ACTION(CHAT_ABORT_DRAIN_MS, SVC_OPT_INT, "100", 0, 1000,                                   \
           "ms a reply whose client left still reads what the upstream already sent")         \
    ACTION(MODEL_WINDOWS, SVC_OPT_STR, "", 0, 0,                                               \
           "model context windows: prefix=window[:encoding],... ('*' = unknown models)")

struct chat_setting {
    CHAT_OPTIONS(SVC_OPTION_DECLARE)
};

#define CHAT_METRICS(ACTION)                                                                   \
    ACTION(chat_requests_total, SVC_METRIC_COUNTER, "chat-process requests")                  \
    ACTION(chat_streams_open, SVC_METRIC_GAUGE, "replies streaming now")                      \
    ACTION(chat_replies_completed_total, SVC_METRIC_COUNTER, "replies streamed to the end")   \
    ACTION(chat_client_aborts_total, SVC_METRIC_COUNTER, "clients that left mid-request")     \
    ACTION(chat_upstream_errors_total, SVC_METRIC_COUNTER, "upstream failures")               \
    ACTION(chat_auth_errors_total, SVC_METRIC_COUNTER, "auth service unreachable")            \
    ACTION(chat_auth_memo_hits_total, SVC_METRIC_COUNTER, "requests authenticated from memory") \
    ACTION(chat_context_errors_total, SVC_METRIC_COUNTER, "Redis context failures")           \
    ACTION(chat_rate_limited_total, SVC_METRIC_COUNTER, "requests refused by a rate limit")   \
    ACTION(chat_leases_open, SVC_METRIC_GAUGE, "balance leases this replica holds")            \
    ACTION(chat_settles_pending, SVC_METRIC_GAUGE, "Settle/Release calls waiting for billing") \
    ACTION(chat_prompt_tokens_total, SVC_METRIC_COUNTER, "prompt tokens reported upstream")   \
    ACTION(chat_completion_tokens_total, SVC_METRIC_COUNTER, "completion tokens reported upstream") \
    ACTION(chat_counted_charges_total, SVC_METRIC_COUNTER,                                     \
           "replies charged by our own token count (no usage from the upstream)")

struct chat_stats {
    CHAT_METRICS(SVC_METRIC_DECLARE)
};

/* What the handlers borrow from main.c, as their route's ctx: the settings and the counters
 * (main.c owns both; they live as long as the process). */
struct chat_ctx {
    const struct chat_setting *setting;
    struct chat_stats *stats;
    char *config_reply; /* POST /api/config's answer, built by chat_web_setup */
};

/* Builds what the handlers answer from the settings alone (/api/config), once, at start-up;
 * SVC_ENOMEM. chat_web_teardown frees it (at exit). */
int chat_web_setup(struct chat_ctx *c) SVC_MUST_CHECK;
void chat_web_teardown(struct chat_ctx *c);

/* Per-loop state; svc_loop_data(loop) points at it. */

struct svc_req;

/* POST /api/chat-process (web.c; ctx is a struct chat_ctx). Runs on the request's loop; always
 * async. */
int chat_process(void *ctx, struct svc_req *req);

/* POST /api/config (web.c; ctx is the struct chat_ctx given to chat_web_setup). */
int chat_config(void *ctx, struct svc_req *req);

#endif
