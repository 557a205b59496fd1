/*
 * chatweb-billing: owns every token balance (docs/billing.md).
 *
 * Routes on HTTP_ADDR (worker-thread pool; handlers block on SQL; rpc.c):
 *   POST /rpc/Billing/<Method>   protobuf (proto/billing.proto), internal only
 * Background threads (relay.h): outbox -> Redis Stream relay, hold-expiry sweeper, price poll.
 * /readyz on ADMIN_ADDR answers 503 while SQL does not answer.
 */
#include <stdio.h>
#include <stdlib.h>

#include "price.h"
#include "relay.h"
#include "rpc.h"
#include "store.h"
#include "svc/db.h"
#include "svc/http.h"
#include "svc/log.h"
#include "svc/metrics.h"
#include "svc/redis.h"
#include "svc/rpc.h"
#include "svc/service.h"

#define BILLING_OPTIONS(ACTION)                                                                    \
    SVC_COMMON_OPTIONS(ACTION)                                                                     \
    SVC_DB_OPTIONS(ACTION)                                                                         \
    ACTION(REDIS_URL, SVC_OPT_STR, "redis://127.0.0.1:6379/0", 0, 0,                               \
           "Redis of the billing event stream (unreachable: events wait in the outbox)")           \
    ACTION(BILLING_PRICES, SVC_OPT_STR, "", 0, 0,                                                  \
           "model=IN:OUT units per token (<= 3 decimals), comma-separated; default 1:1")           \
    ACTION(BILLING_PRICES_REFRESH_MS, SVC_OPT_INT, "1000", 50, 60000,                              \
           "how often each replica checks the SQL prices' version (ops set_price) and reloads")    \
    ACTION(BILLING_HOLD_TTL_MS, SVC_OPT_INT, "600000", 100, 86400000,                              \
           "an unsettled hold is expired (charged in full) this long after Reserve")               \
    ACTION(BILLING_LEASE_TTL_MS, SVC_OPT_INT, "30000", 1000, 3600000,                              \
           "an unreported lease is expired (its inflight charged, the rest freed) this long "      \
           "after its last LeaseSync")                                                             \
    ACTION(BILLING_MIN_REPLY_TOKENS, SVC_OPT_INT, "600", 0, 1000000000,                            \
           "smallest completion a capped Reserve still grants (the seed's reserved reply)")        \
    ACTION(BILLING_SWEEP_INTERVAL_MS, SVC_OPT_INT, "1000", 20, 600000,                             \
           "how often each replica looks for expired holds")                                       \
    ACTION(BILLING_EVENTS_STREAM, SVC_OPT_STR, "chatweb:billing:events", 0, 0,                     \
           "Redis Stream that receives one entry per ledger row")                                  \
    ACTION(BILLING_EVENTS_MAXLEN, SVC_OPT_INT, "1000000", 100, 10000000000LL,                      \
           "approximate retention of the stream (XADD MAXLEN ~)")                                  \
    ACTION(BILLING_EVENTS_REPLICAS, SVC_OPT_INT, "0", 0, 16,                                       \
           "replicas that must confirm each event (WAIT) before its outbox row is dropped; set it "  \
           "to 1+ on Sentinel or Cluster so a failover cannot lose an event (docs/redis.md)")      \
    ACTION(BILLING_RELAY_POLL_MS, SVC_OPT_INT, "100", 5, 60000,                                    \
           "outbox poll interval when idle (commits on this replica wake it at once)")             \
    ACTION(BILLING_RELAY_LEASE_MS, SVC_OPT_INT, "5000", 200, 600000,                               \
           "relay lease: a dead relaying replica is replaced after this long")                     \
    ACTION(BILLING_HOLD_RETENTION_MS, SVC_OPT_INT, "604800000", 60000, 31622400000LL,              \
           "closed holds are kept this long for Settle/Release replays, then deleted")             \
    ACTION(BILLING_DB_POOL, SVC_OPT_INT, "0", 0, 256, "SQL connections; 0 = worker threads + 3")

static struct {
    BILLING_OPTIONS(SVC_OPTION_DECLARE)
} setting = {BILLING_OPTIONS(SVC_OPTION_INIT)};

/* the relay's and the sweeper's; the RPC handlers count their own (rpc.c) */
#define BILLING_METRICS(ACTION)                                                                    \
    ACTION(billing_holds_expired_total, SVC_METRIC_COUNTER, "holds expired unsettled")             \
    ACTION(billing_events_relayed_total, SVC_METRIC_COUNTER, "outbox rows sent to the stream")     \
    ACTION(billing_relay_errors_total, SVC_METRIC_COUNTER, "relay passes that failed")             \
    ACTION(billing_outbox_pending, SVC_METRIC_GAUGE, "events waiting in the outbox")               \
    ACTION(billing_relay_leader, SVC_METRIC_GAUGE, "1 while this replica holds the relay lease")

static struct {
    BILLING_METRICS(SVC_METRIC_DECLARE)
} stats = {BILLING_METRICS(SVC_METRIC_INIT)};

static struct svc_db *db;
static struct billing_prices *prices;
static struct billing_store *store;
static struct billing_relay *relay;

static const struct svc_http_route routes[] = {
    {"POST", "/rpc/*", svc_rpc_dispatch, &billing_rpc_registry, SVC_HTTP_STYLE_TEXT},
};

static int ready_check(void *ctx)
{
    (void)ctx;
    return svc_db_ping(db);
}

int main(int argc, char **argv)
{
    struct billing_store_opts so;
    struct billing_relay_opts ro;
    struct billing_relay_stats rs = {&stats.billing_events_relayed_total,
                                     &stats.billing_relay_errors_total,
                                     &stats.billing_holds_expired_total,
                                     &stats.billing_outbox_pending, &stats.billing_relay_leader};
    struct svc_db_opts dbo = {0};
    char err[512], desc[256];
    int rc;

    svc_service_setup("billing", argc, argv, (struct svc_cfg_option *)&setting,
                      SVC_OPTION_COUNT(setting));
    svc_metrics_register((struct svc_metric *)&stats, SVC_METRIC_COUNT(stats));
    if (billing_prices_create(&prices, setting.BILLING_PRICES.s, err, sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "%s", err);
    if (setting.REDIS_URL.s[0] != '\0' &&
        svc_redis_url_check(setting.REDIS_URL.s, err, sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "REDIS_URL: %s", err);
    if (setting.BILLING_EVENTS_STREAM.s[0] == '\0')
        svc_service_die(SVC_EX_CONFIG, "BILLING_EVENTS_STREAM: must not be empty");
    if (!billing_relay_stream_name_ok(setting.BILLING_EVENTS_STREAM.s))
        svc_service_die(SVC_EX_CONFIG,
                        "BILLING_EVENTS_STREAM: a { or } must make a Redis hash tag with a name "
                        "in it, as in {events}:billing");
    if (svc_service_migrate_only()) { /* the Helm migration Job: apply the schema and exit */
        if (svc_db_create(&db, setting.DB.s, setting.DATA_DIR.s, NULL, err, sizeof(err)) != SVC_OK)
            svc_service_die(SVC_EX_UNAVAILABLE, "DB: %s", err);
        if ((rc = billing_store_migrate(db)) != SVC_OK)
            svc_service_die(SVC_EX_UNAVAILABLE, "DB: billing migrations failed: %s",
                            svc_strerror(rc));
        SVC_LOG_NOTICE(NULL, "migrate", "billing schema is current");
        svc_db_destroy(&db);
        svc_db_teardown();
        billing_prices_destroy(&prices);
        return SVC_EX_OK;
    }
    svc_service_start();

    dbo.pool_size = setting.BILLING_DB_POOL.i > 0 ? (unsigned)setting.BILLING_DB_POOL.i
                                                  : svc_service_workers() * 2 + 3;
    dbo.io_timeout_ms = 15000;
    dbo.connect_timeout_ms = 3000;
    if (svc_db_create(&db, setting.DB.s, setting.DATA_DIR.s, &dbo, err, sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_UNAVAILABLE, "DB: %s", err);
    if ((rc = billing_store_migrate(db)) != SVC_OK)
        svc_service_die(SVC_EX_UNAVAILABLE, "DB: billing migrations failed: %s", svc_strerror(rc));
    so.hold_ttl_ms = setting.BILLING_HOLD_TTL_MS.i;
    so.min_reply_tokens = setting.BILLING_MIN_REPLY_TOKENS.i;
    so.lease_ttl_ms = setting.BILLING_LEASE_TTL_MS.i;
    if (billing_store_create(&store, db, prices, &so) != SVC_OK)
        svc_service_die(SVC_EX_SOFTWARE, "out of memory");
    ro.redis_url = setting.REDIS_URL.s;
    ro.stream = setting.BILLING_EVENTS_STREAM.s;
    ro.maxlen = setting.BILLING_EVENTS_MAXLEN.i;
    ro.min_replicas = (int)setting.BILLING_EVENTS_REPLICAS.i;
    ro.poll_ms = setting.BILLING_RELAY_POLL_MS.i;
    ro.lease_ms = setting.BILLING_RELAY_LEASE_MS.i;
    ro.sweep_ms = setting.BILLING_SWEEP_INTERVAL_MS.i;
    ro.batch = 100;
    ro.hold_retention_ms = setting.BILLING_HOLD_RETENTION_MS.i;
    ro.prices_refresh_ms = setting.BILLING_PRICES_REFRESH_MS.i;
    so.hold_retention_ms = ro.hold_retention_ms;
    /* SQL prices apply from the first request (BILLING_PRICES alone while this fails: the poll
     * thread retries) */
    if ((rc = billing_store_prices_refresh(store)) != SVC_OK)
        SVC_LOG_WARN(NULL, "prices", "cannot load SQL prices yet: %s", svc_strerror(rc));
    if ((rc = billing_relay_create(&relay, db, store, &ro, &rs)) != SVC_OK)
        svc_service_die(SVC_EX_SOFTWARE, "relay: %s", svc_strerror(rc));
    svc_db_describe(db, desc, sizeof(desc));
    SVC_LOG_INFO(NULL, "startup", "db %s, %zu price entr%s, hold ttl %lld ms", desc,
                 billing_prices_count(prices), billing_prices_count(prices) == 1 ? "y" : "ies",
                 (long long)so.hold_ttl_ms);
    billing_rpc_setup(store, relay);
    svc_service_set_ready_check(ready_check, NULL);

    svc_service_serve_pool(routes, sizeof(routes) / sizeof(routes[0]), SVC_HTTP_STYLE_TEXT);

    svc_service_set_ready_check(NULL, NULL);
    billing_relay_destroy(&relay);
    billing_store_destroy(&store);
    svc_db_destroy(&db);
    svc_db_teardown();
    billing_prices_destroy(&prices);
    svc_service_teardown();
    return SVC_EX_OK;
}
