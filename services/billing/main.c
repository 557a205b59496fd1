/*
 * chatweb-billing: owns every token balance (docs/billing.md).
 *
 * Routes on HTTP_ADDR (worker-thread pool; handlers block on SQL):
 *   POST /rpc/Billing/<Method>   protobuf (proto/billing.proto), internal only
 * Background threads (relay.h): outbox -> Redis Stream relay, hold-expiry sweeper.
 * /readyz on ADMIN_ADDR answers 503 while SQL does not answer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "billing.pb-c.h"
#include "price.h"
#include "relay.h"
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
    ACTION(BILLING_HOLD_TTL_MS, SVC_OPT_INT, "600000", 100, 86400000,                              \
           "an unsettled hold is expired (charged in full) this long after Reserve")               \
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

#define BILLING_METRICS(ACTION)                                                                    \
    ACTION(billing_reserve_total, SVC_METRIC_COUNTER, "Reserve calls that held units")             \
    ACTION(billing_reserve_capped_total, SVC_METRIC_COUNTER, "Reserves capped to the balance")     \
    ACTION(billing_reserve_refused_total, SVC_METRIC_COUNTER, "Reserves refused (balance)")        \
    ACTION(billing_settle_total, SVC_METRIC_COUNTER, "Settle calls that charged")                  \
    ACTION(billing_settle_duplicate_total, SVC_METRIC_COUNTER, "Settle calls already settled")     \
    ACTION(billing_release_total, SVC_METRIC_COUNTER, "Release calls that freed a hold")           \
    ACTION(billing_units_charged_total, SVC_METRIC_COUNTER, "units charged by Settle")             \
    ACTION(billing_holds_expired_total, SVC_METRIC_COUNTER, "holds expired unsettled")             \
    ACTION(billing_recharge_total, SVC_METRIC_COUNTER, "recharges credited")                       \
    ACTION(billing_events_relayed_total, SVC_METRIC_COUNTER, "outbox rows sent to the stream")     \
    ACTION(billing_relay_errors_total, SVC_METRIC_COUNTER, "relay passes that failed")             \
    ACTION(billing_outbox_pending, SVC_METRIC_GAUGE, "events waiting in the outbox")               \
    ACTION(billing_relay_leader, SVC_METRIC_GAUGE, "1 while this replica holds the relay lease")   \
    ACTION(billing_rpc_errors_total, SVC_METRIC_COUNTER, "RPC calls answered with an error")

static struct {
    BILLING_METRICS(SVC_METRIC_DECLARE)
} stats = {BILLING_METRICS(SVC_METRIC_INIT)};

static struct svc_db *db;
static struct billing_prices *prices;
static struct billing_store *store;
static struct billing_relay *relay;

/* Maps a store error to the RPC reply (text from the store when it gave one). */
static int fail(struct svc_rpc_call *call, int rc)
{
    const char *why = billing_store_why();

    svc_metric_add(&stats.billing_rpc_errors_total, 1);
    if (why[0] != '\0')
        svc_rpc_set_error(call, "%s", why);
    else if (rc == SVC_EUNAVAIL || rc == SVC_ETIMEDOUT)
        svc_rpc_set_error(call, "billing database unavailable");
    return rc;
}

static Chatweb__Billing__Account *account_msg(struct svc_rpc_call *call,
                                              const struct billing_account *a)
{
    Chatweb__Billing__Account *m = svc_rpc_alloc(call, sizeof(*m));

    if (m == NULL)
        return NULL;
    chatweb__billing__account__init(m);
    m->user_id = a->user_id;
    m->username = svc_rpc_strdup(call, a->username);
    if (m->username == NULL)
        return NULL;
    m->granted = a->granted;
    m->used = a->used;
    m->held = a->held;
    m->balance = a->balance;
    m->unlimited = a->unlimited;
    m->updated_at_ms = a->updated_at_ms;
    return m;
}

/* ---- handlers ---- */

static int rpc_create_account(struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                              ProtobufCMessage *out_msg, void *ctx)
{
    const Chatweb__Billing__CreateAccountRequest *in = (const void *)in_msg;
    Chatweb__Billing__CreateAccountResponse *out = (void *)out_msg;
    struct billing_account a;
    int existed = 0, rc;

    (void)ctx;
    rc = billing_account_create(store, in->user_id, in->username, in->initial_units, in->unlimited,
                                in->actor, &a, &existed);
    if (rc != SVC_OK)
        return fail(call, rc);
    if (!existed && in->initial_units > 0)
        billing_relay_kick(relay);
    out->existed = existed;
    out->account = account_msg(call, &a);
    return out->account ? SVC_OK : SVC_ENOMEM;
}

static int rpc_get_account(struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                           ProtobufCMessage *out_msg, void *ctx)
{
    const Chatweb__Billing__GetAccountRequest *in = (const void *)in_msg;
    Chatweb__Billing__GetAccountResponse *out = (void *)out_msg;
    struct billing_account a;
    int rc;

    (void)ctx;
    if ((rc = billing_account_get(store, in->user_id, &a)) != SVC_OK)
        return fail(call, rc);
    out->account = account_msg(call, &a);
    return out->account ? SVC_OK : SVC_ENOMEM;
}

static int rpc_delete_account(struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                              ProtobufCMessage *out_msg, void *ctx)
{
    const Chatweb__Billing__DeleteAccountRequest *in = (const void *)in_msg;
    Chatweb__Billing__DeleteAccountResponse *out = (void *)out_msg;
    int deleted = 0, rc;

    (void)ctx;
    if ((rc = billing_account_delete(store, in->user_id, &deleted)) != SVC_OK)
        return fail(call, rc);
    out->deleted = deleted;
    SVC_LOG_NOTICE(svc_rpc_request_id(call), "delete-account", "user_id=%lld actor=\"%s\" %s",
                   (long long)in->user_id, in->actor, deleted ? "deleted" : "no account");
    return SVC_OK;
}

static int rpc_reserve(struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                       ProtobufCMessage *out_msg, void *ctx)
{
    const Chatweb__Billing__ReserveRequest *in = (const void *)in_msg;
    Chatweb__Billing__ReserveResponse *out = (void *)out_msg;
    struct billing_reserve_in ri = {
        .request_id = in->request_id,
        .user_id = in->user_id,
        .model = in->model,
        .prompt_tokens = in->prompt_tokens,
        .max_completion_tokens = in->max_completion_tokens,
        .min_completion_tokens = in->min_completion_tokens,
        .completion_limit_fixed = in->completion_limit_fixed,
        .source = in->source,
        .create_unlimited = in->create_unlimited,
        .username = in->username,
    };
    struct billing_reserve_out ro;
    int rc;

    (void)ctx;
    if ((rc = billing_reserve(store, &ri, &ro)) != SVC_OK)
        return fail(call, rc);
    out->result = (Chatweb__Billing__ReserveResult)ro.result;
    out->held_units = ro.held_units;
    out->completion_limit = ro.completion_limit;
    out->balance = ro.balance;
    out->expires_at_ms = ro.expires_at_ms;
    out->duplicate = ro.duplicate;
    out->unlimited = ro.unlimited;
    if (ro.result == BILLING_RESERVE_OK) {
        svc_metric_add(&stats.billing_reserve_total, 1);
        if (!ro.duplicate && ro.completion_limit < in->max_completion_tokens)
            svc_metric_add(&stats.billing_reserve_capped_total, 1);
    } else {
        svc_metric_add(&stats.billing_reserve_refused_total, 1);
    }
    return SVC_OK;
}

static int rpc_settle(struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                      ProtobufCMessage *out_msg, void *ctx)
{
    const Chatweb__Billing__SettleRequest *in = (const void *)in_msg;
    Chatweb__Billing__SettleResponse *out = (void *)out_msg;
    struct billing_settle_in si = {in->request_id, in->prompt_tokens, in->completion_tokens,
                                   in->model, in->estimated};
    struct billing_settle_out so;
    int rc;

    (void)ctx;
    if ((rc = billing_settle(store, &si, &so)) != SVC_OK)
        return fail(call, rc);
    out->charged_units = so.charged;
    out->refunded_units = so.refunded;
    out->balance = so.balance;
    out->already_settled = so.already_settled;
    if (so.already_settled) {
        svc_metric_add(&stats.billing_settle_duplicate_total, 1);
    } else {
        svc_metric_add(&stats.billing_settle_total, 1);
        svc_metric_add(&stats.billing_units_charged_total, so.charged);
        billing_relay_kick(relay);
    }
    return SVC_OK;
}

static int rpc_release(struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                       ProtobufCMessage *out_msg, void *ctx)
{
    const Chatweb__Billing__ReleaseRequest *in = (const void *)in_msg;
    Chatweb__Billing__ReleaseResponse *out = (void *)out_msg;
    struct billing_release_out ro;
    int rc;

    (void)ctx;
    if ((rc = billing_release(store, in->request_id, in->reason, &ro)) != SVC_OK)
        return fail(call, rc);
    out->refunded_units = ro.refunded;
    out->balance = ro.balance;
    out->already_closed = ro.already_closed;
    if (!ro.already_closed) {
        svc_metric_add(&stats.billing_release_total, 1);
        billing_relay_kick(relay);
    }
    return SVC_OK;
}

static int rpc_recharge(struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                        ProtobufCMessage *out_msg, void *ctx)
{
    const Chatweb__Billing__RechargeRequest *in = (const void *)in_msg;
    Chatweb__Billing__RechargeResponse *out = (void *)out_msg;
    struct billing_credit_in ci = {in->user_id,         in->units, 0,
                                   in->idempotency_key, in->actor, in->note};
    struct billing_credit_out co;
    int rc;

    (void)ctx;
    if ((rc = billing_recharge(store, &ci, &co)) != SVC_OK)
        return fail(call, rc);
    out->duplicate = co.duplicate;
    out->ledger_id = co.ledger_id;
    out->account = account_msg(call, &co.account);
    if (!co.duplicate) {
        svc_metric_add(&stats.billing_recharge_total, 1);
        billing_relay_kick(relay);
    }
    SVC_LOG_NOTICE(svc_rpc_request_id(call), "recharge", "user_id=%lld units=%lld actor=\"%s\"%s",
                   (long long)in->user_id, (long long)in->units, in->actor,
                   co.duplicate ? " duplicate key: nothing credited" : "");
    return out->account ? SVC_OK : SVC_ENOMEM;
}

static int rpc_adjust(struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                      ProtobufCMessage *out_msg, void *ctx)
{
    const Chatweb__Billing__AdjustRequest *in = (const void *)in_msg;
    Chatweb__Billing__AdjustResponse *out = (void *)out_msg;
    struct billing_credit_in ci = {in->user_id,         in->units, in->force,
                                   in->idempotency_key, in->actor, in->note};
    struct billing_credit_out co;
    int rc;

    (void)ctx;
    if ((rc = billing_adjust(store, &ci, &co)) != SVC_OK)
        return fail(call, rc);
    out->duplicate = co.duplicate;
    out->ledger_id = co.ledger_id;
    out->account = account_msg(call, &co.account);
    if (!co.duplicate)
        billing_relay_kick(relay);
    SVC_LOG_NOTICE(svc_rpc_request_id(call), "adjust",
                   "user_id=%lld units=%lld force=%d "
                   "actor=\"%s\"%s",
                   (long long)in->user_id, (long long)in->units, in->force, in->actor,
                   co.duplicate ? " duplicate key: nothing changed" : "");
    return out->account ? SVC_OK : SVC_ENOMEM;
}

#define USAGE_LIMIT_MAX 500
#define USAGE_DAYS_MAX 366

static char *rows_str(struct svc_rpc_call *call, struct svc_db_rows *rows, size_t r, size_t c)
{
    const char *s = svc_db_rows_text(rows, r, c);
    return svc_rpc_strdup(call, s ? s : "");
}

static int rpc_usage(struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                     ProtobufCMessage *out_msg, void *ctx)
{
    const Chatweb__Billing__UsageRequest *in = (const void *)in_msg;
    Chatweb__Billing__UsageResponse *out = (void *)out_msg;
    struct svc_db_rows *rows = NULL;
    struct billing_account a;
    int limit = in->limit == 0 ? 50 : in->limit;
    int rc = SVC_OK;
    size_t n;

    (void)ctx;
    if (limit < 1 || limit > USAGE_LIMIT_MAX || in->days < 0 || in->days > USAGE_DAYS_MAX ||
        in->before_id < 0) {
        svc_rpc_set_error(call, "limit must be 1..%d, days 0..%d, before_id >= 0", USAGE_LIMIT_MAX,
                          USAGE_DAYS_MAX);
        return SVC_EINVAL;
    }
    if ((rc = billing_account_get(store, in->user_id, &a)) != SVC_OK)
        return fail(call, rc);
    if ((rc = billing_usage_ledger(store, in->user_id, in->before_id, limit + 1, &rows)) != SVC_OK)
        return fail(call, rc);
    n = svc_db_rows_count(rows);
    if (n > (size_t)limit) {
        n = (size_t)limit;
        out->next_before_id = svc_db_rows_i64(rows, n - 1, 0);
    }
    out->entries = svc_rpc_alloc(call, (n ? n : 1) * sizeof(*out->entries));
    if (out->entries == NULL)
        goto nomem;
    for (size_t i = 0; i < n; i++) {
        Chatweb__Billing__LedgerEntry *e = svc_rpc_alloc(call, sizeof(*e));
        if (e == NULL)
            goto nomem;
        chatweb__billing__ledger_entry__init(e);
        e->id = svc_db_rows_i64(rows, i, 0);
        e->user_id = svc_db_rows_i64(rows, i, 1);
        e->kind = rows_str(call, rows, i, 2);
        e->units = svc_db_rows_i64(rows, i, 3);
        e->tokens_in = svc_db_rows_i64(rows, i, 4);
        e->tokens_out = svc_db_rows_i64(rows, i, 5);
        e->model = rows_str(call, rows, i, 6);
        e->request_id = rows_str(call, rows, i, 7);
        e->balance_after = svc_db_rows_i64(rows, i, 8);
        e->created_at_ms = svc_db_rows_i64(rows, i, 9);
        e->note = rows_str(call, rows, i, 10);
        if (!e->kind || !e->model || !e->request_id || !e->note)
            goto nomem;
        out->entries[out->n_entries++] = e;
    }
    svc_db_rows_destroy(&rows);
    if (in->days > 0) {
        if ((rc = billing_usage_daily(store, in->user_id, in->days, &rows)) != SVC_OK)
            return fail(call, rc);
        n = svc_db_rows_count(rows);
        out->daily = svc_rpc_alloc(call, (n ? n : 1) * sizeof(*out->daily));
        if (out->daily == NULL)
            goto nomem;
        for (size_t i = 0; i < n; i++) {
            Chatweb__Billing__DailyUsage *d = svc_rpc_alloc(call, sizeof(*d));
            time_t t = (time_t)svc_db_rows_i64(rows, i, 0) * 86400;
            char day[16];
            struct tm tm;

            if (d == NULL)
                goto nomem;
            chatweb__billing__daily_usage__init(d);
            gmtime_r(&t, &tm);
            strftime(day, sizeof(day), "%Y-%m-%d", &tm);
            d->day = svc_rpc_strdup(call, day);
            d->requests = svc_db_rows_i64(rows, i, 1);
            d->tokens_in = svc_db_rows_i64(rows, i, 2);
            d->tokens_out = svc_db_rows_i64(rows, i, 3);
            d->units = svc_db_rows_i64(rows, i, 4);
            if (d->day == NULL)
                goto nomem;
            out->daily[out->n_daily++] = d;
        }
        svc_db_rows_destroy(&rows);
    }
    return SVC_OK;
nomem:
    svc_db_rows_destroy(&rows);
    return SVC_ENOMEM;
}

#define METHOD(name, lower, fn)                                                                    \
    {                                                                                              \
        "/rpc/Billing/" name, &chatweb__billing__##lower##_request__descriptor,                    \
            &chatweb__billing__##lower##_response__descriptor, fn, NULL                            \
    }

static const struct svc_rpc_method rpc_methods[] = {
    METHOD("CreateAccount", create_account, rpc_create_account),
    METHOD("GetAccount", get_account, rpc_get_account),
    METHOD("DeleteAccount", delete_account, rpc_delete_account),
    METHOD("Reserve", reserve, rpc_reserve),
    METHOD("Settle", settle, rpc_settle),
    METHOD("Release", release, rpc_release),
    METHOD("Recharge", recharge, rpc_recharge),
    METHOD("Adjust", adjust, rpc_adjust),
    METHOD("Usage", usage, rpc_usage),
};
static struct svc_rpc_registry rpc_registry = {rpc_methods,
                                               sizeof(rpc_methods) / sizeof(rpc_methods[0])};

static const struct svc_route routes[] = {
    {"POST", "/rpc/*", svc_rpc_dispatch, &rpc_registry, SVC_HTTP_STYLE_TEXT},
};

static int ready_check(void *data)
{
    (void)data;
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

    svc_service_setup("billing", argc, argv, (struct svc_option *)&setting,
                      SVC_OPTION_COUNT(setting));
    svc_metrics_register((struct svc_metric *)&stats, SVC_METRIC_COUNT(stats));
    if (billing_prices_create(&prices, setting.BILLING_PRICES.s, err, sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "%s", err);
    if (setting.REDIS_URL.s[0] != '\0' &&
        svc_redis_url_check(setting.REDIS_URL.s, err, sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "REDIS_URL: %s", err);
    if (setting.BILLING_EVENTS_STREAM.s[0] == '\0')
        svc_service_die(SVC_EX_CONFIG, "BILLING_EVENTS_STREAM: must not be empty");
    svc_service_start();

    dbo.pool_size = setting.BILLING_DB_POOL.i > 0 ? (unsigned)setting.BILLING_DB_POOL.i
                                                  : svc_service_workers() * 2 + 3;
    dbo.io_timeout_ms = 15000;
    dbo.connect_timeout_ms = 3000;
    if (svc_db_open_opts(&db, setting.DB.s, setting.DATA_DIR.s, &dbo, err, sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_UNAVAILABLE, "DB: %s", err);
    if ((rc = billing_store_migrate(db)) != SVC_OK)
        svc_service_die(SVC_EX_UNAVAILABLE, "DB: billing migrations failed: %s", svc_strerror(rc));
    so.hold_ttl_ms = setting.BILLING_HOLD_TTL_MS.i;
    so.min_reply_tokens = setting.BILLING_MIN_REPLY_TOKENS.i;
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
    so.hold_retention_ms = ro.hold_retention_ms;
    if ((rc = billing_relay_create(&relay, db, store, &ro, &rs)) != SVC_OK)
        svc_service_die(SVC_EX_SOFTWARE, "relay: %s", svc_strerror(rc));
    svc_db_describe(db, desc, sizeof(desc));
    SVC_LOG_INFO(NULL, "startup", "db %s, %zu price entr%s, hold ttl %lld ms", desc,
                 billing_prices_count(prices), billing_prices_count(prices) == 1 ? "y" : "ies",
                 (long long)so.hold_ttl_ms);
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
