/*
 * billing's RPC handlers (docs/billing.md, proto/billing.proto): each decodes nothing itself
 * (common/rpc.c hands it the request message), calls the store, counts, wakes the event relay
 * after a change of money, and fills the response message.
 */
#include "rpc.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "billing.pb-c.h"
#include "relay.h"
#include "store.h"
#include "svc/db.h"
#include "svc/log.h"
#include "svc/metrics.h"
#include "svc/rpc.h"
#include "svc/util.h"

#define BILLING_RPC_METRICS(ACTION)                                                                \
    ACTION(billing_reserve_total, SVC_METRIC_COUNTER, "Reserve calls that held units")             \
    ACTION(billing_reserve_capped_total, SVC_METRIC_COUNTER, "Reserves capped to the balance")     \
    ACTION(billing_reserve_refused_total, SVC_METRIC_COUNTER, "Reserves refused (balance)")        \
    ACTION(billing_settle_total, SVC_METRIC_COUNTER, "Settle calls that charged")                  \
    ACTION(billing_settle_duplicate_total, SVC_METRIC_COUNTER, "Settle calls already settled")     \
    ACTION(billing_release_total, SVC_METRIC_COUNTER, "Release calls that freed a hold")           \
    ACTION(billing_units_charged_total, SVC_METRIC_COUNTER, "units charged (Settle, LeaseSync)")   \
    ACTION(billing_lease_sync_total, SVC_METRIC_COUNTER, "LeaseSync calls answered")               \
    ACTION(billing_lease_charges_total, SVC_METRIC_COUNTER, "charges reported by LeaseSync")       \
    ACTION(billing_recharge_total, SVC_METRIC_COUNTER, "recharges credited")                       \
    ACTION(billing_rpc_errors_total, SVC_METRIC_COUNTER, "RPC calls answered with an error")

static struct {
    BILLING_RPC_METRICS(SVC_METRIC_DECLARE)
} rpc_stats = {BILLING_RPC_METRICS(SVC_METRIC_INIT)};

static struct billing_store *store;
static struct billing_relay *relay; /* NULL: no relay to wake (tests, fuzzing) */

/* Maps a store error to the RPC reply (the store's reason in why when it gave one). */
static int fail(struct svc_rpc_call *call, int rc, const char *why)
{
    svc_metric_add(&rpc_stats.billing_rpc_errors_total, 1);
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

static int rpc_create_account(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                              ProtobufCMessage *out_msg)
{
    char why[BILLING_WHY_MAX] = "";
    const Chatweb__Billing__CreateAccountRequest *in = (const void *)in_msg;
    Chatweb__Billing__CreateAccountResponse *out = (void *)out_msg;
    struct billing_account a;
    int existed = 0, rc;

    (void)ctx;
    rc = billing_account_create(store, in->user_id, in->username, in->initial_units, in->unlimited,
                                in->actor, &a, &existed, why, sizeof(why));
    if (rc != SVC_OK)
        return fail(call, rc, why);
    if (!existed && in->initial_units > 0)
        billing_relay_kick(relay);
    out->existed = existed;
    out->account = account_msg(call, &a);
    return out->account ? SVC_OK : SVC_ENOMEM;
}

static int rpc_get_account(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                           ProtobufCMessage *out_msg)
{
    char why[BILLING_WHY_MAX] = "";
    const Chatweb__Billing__GetAccountRequest *in = (const void *)in_msg;
    Chatweb__Billing__GetAccountResponse *out = (void *)out_msg;
    struct billing_account a;
    int rc;

    (void)ctx;
    if ((rc = billing_account_get(store, in->user_id, &a, why, sizeof(why))) != SVC_OK)
        return fail(call, rc, why);
    out->account = account_msg(call, &a);
    return out->account ? SVC_OK : SVC_ENOMEM;
}

static int rpc_delete_account(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                              ProtobufCMessage *out_msg)
{
    char why[BILLING_WHY_MAX] = "";
    const Chatweb__Billing__DeleteAccountRequest *in = (const void *)in_msg;
    Chatweb__Billing__DeleteAccountResponse *out = (void *)out_msg;
    int deleted = 0, rc;

    (void)ctx;
    if ((rc = billing_account_delete(store, in->user_id, &deleted, why, sizeof(why))) != SVC_OK)
        return fail(call, rc, why);
    out->deleted = deleted;
    SVC_LOG_NOTICE(svc_rpc_request_id(call), "delete-account", "user_id=%lld actor=\"%s\" %s",
                   (long long)in->user_id, in->actor, deleted ? "deleted" : "no account");
    return SVC_OK;
}

static int rpc_reserve(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                       ProtobufCMessage *out_msg)
{
    char why[BILLING_WHY_MAX] = "";
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
    if ((rc = billing_reserve(store, &ri, &ro, why, sizeof(why))) != SVC_OK)
        return fail(call, rc, why);
    out->result = (Chatweb__Billing__ReserveResult)ro.result;
    out->held_units = ro.held_units;
    out->completion_limit = ro.completion_limit;
    out->balance = ro.balance;
    out->expires_at_ms = ro.expires_at_ms;
    out->duplicate = ro.duplicate;
    out->unlimited = ro.unlimited;
    if (ro.result == BILLING_RESERVE_OK) {
        svc_metric_add(&rpc_stats.billing_reserve_total, 1);
        if (!ro.duplicate && ro.completion_limit < in->max_completion_tokens)
            svc_metric_add(&rpc_stats.billing_reserve_capped_total, 1);
    } else {
        svc_metric_add(&rpc_stats.billing_reserve_refused_total, 1);
    }
    return SVC_OK;
}

static int rpc_settle(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                      ProtobufCMessage *out_msg)
{
    char why[BILLING_WHY_MAX] = "";
    const Chatweb__Billing__SettleRequest *in = (const void *)in_msg;
    Chatweb__Billing__SettleResponse *out = (void *)out_msg;
    struct billing_settle_in si = {in->request_id, in->prompt_tokens, in->completion_tokens,
                                   in->model, in->estimated};
    struct billing_settle_out so;
    int rc;

    (void)ctx;
    if ((rc = billing_settle(store, &si, &so, why, sizeof(why))) != SVC_OK)
        return fail(call, rc, why);
    out->charged_units = so.charged;
    out->refunded_units = so.refunded;
    out->balance = so.balance;
    out->already_settled = so.already_settled;
    if (so.already_settled) {
        svc_metric_add(&rpc_stats.billing_settle_duplicate_total, 1);
    } else {
        svc_metric_add(&rpc_stats.billing_settle_total, 1);
        svc_metric_add(&rpc_stats.billing_units_charged_total, so.charged);
        billing_relay_kick(relay);
    }
    return SVC_OK;
}

static int rpc_release(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                       ProtobufCMessage *out_msg)
{
    char why[BILLING_WHY_MAX] = "";
    const Chatweb__Billing__ReleaseRequest *in = (const void *)in_msg;
    Chatweb__Billing__ReleaseResponse *out = (void *)out_msg;
    struct billing_release_out ro;
    int rc;

    (void)ctx;
    if ((rc = billing_release(store, in->request_id, in->reason, &ro, why, sizeof(why))) != SVC_OK)
        return fail(call, rc, why);
    out->refunded_units = ro.refunded;
    out->balance = ro.balance;
    out->already_closed = ro.already_closed;
    if (!ro.already_closed) {
        svc_metric_add(&rpc_stats.billing_release_total, 1);
        billing_relay_kick(relay);
    }
    return SVC_OK;
}

static int rpc_recharge(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                        ProtobufCMessage *out_msg)
{
    char why[BILLING_WHY_MAX] = "";
    const Chatweb__Billing__RechargeRequest *in = (const void *)in_msg;
    Chatweb__Billing__RechargeResponse *out = (void *)out_msg;
    struct billing_credit_in ci = {in->user_id,         in->units, 0,
                                   in->idempotency_key, in->actor, in->note};
    struct billing_credit_out co;
    int rc;

    (void)ctx;
    if ((rc = billing_recharge(store, &ci, &co, why, sizeof(why))) != SVC_OK)
        return fail(call, rc, why);
    out->duplicate = co.duplicate;
    out->ledger_id = co.ledger_id;
    out->account = account_msg(call, &co.account);
    if (!co.duplicate) {
        svc_metric_add(&rpc_stats.billing_recharge_total, 1);
        billing_relay_kick(relay);
    }
    SVC_LOG_NOTICE(svc_rpc_request_id(call), "recharge", "user_id=%lld units=%lld actor=\"%s\"%s",
                   (long long)in->user_id, (long long)in->units, in->actor,
                   co.duplicate ? " duplicate key: nothing credited" : "");
    return out->account ? SVC_OK : SVC_ENOMEM;
}

static int rpc_adjust(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                      ProtobufCMessage *out_msg)
{
    char why[BILLING_WHY_MAX] = "";
    const Chatweb__Billing__AdjustRequest *in = (const void *)in_msg;
    Chatweb__Billing__AdjustResponse *out = (void *)out_msg;
    struct billing_credit_in ci = {in->user_id,         in->units, in->force,
                                   in->idempotency_key, in->actor, in->note};
    struct billing_credit_out co;
    int rc;

    (void)ctx;
    if ((rc = billing_adjust(store, &ci, &co, why, sizeof(why))) != SVC_OK)
        return fail(call, rc, why);
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

static int rpc_usage(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                     ProtobufCMessage *out_msg)
{
    char why[BILLING_WHY_MAX] = "";
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
    if ((rc = billing_account_get(store, in->user_id, &a, why, sizeof(why))) != SVC_OK)
        return fail(call, rc, why);
    if ((rc = billing_usage_ledger(store, in->user_id, in->before_id, limit + 1, &rows)) != SVC_OK)
        return fail(call, rc, why);
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
            return fail(call, rc, why);
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

/* ---- prices ---- */

static Chatweb__Billing__ModelPrice *price_msg(struct svc_rpc_call *call, const char *model,
                                               struct billing_ratio r, const char *source)
{
    Chatweb__Billing__ModelPrice *m = svc_rpc_alloc(call, sizeof(*m));

    if (m == NULL)
        return NULL;
    chatweb__billing__model_price__init(m);
    m->model = svc_rpc_strdup(call, model);
    m->source = (char *)source;
    m->input_milli = r.in_milli;
    m->output_milli = r.out_milli;
    return m->model ? m : NULL;
}

static int rpc_list_prices(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                           ProtobufCMessage *out_msg)
{
    char why[BILLING_WHY_MAX] = "";
    Chatweb__Billing__ListPricesResponse *out = (void *)out_msg;
    struct billing_price_row env[BILLING_PRICE_ENTRIES_MAX + 1];
    struct svc_db_rows *rows = NULL;
    size_t n_env, n_sql, cap, i, j;
    int has_default = 0, rc;

    (void)in_msg;
    (void)ctx;
    if ((rc = billing_price_rows(store, &rows, &out->version)) != SVC_OK)
        return fail(call, rc, why);
    out->applied_version = billing_store_prices_version(store);
    n_env =
        billing_prices_rows(billing_store_env_prices(store), env, BILLING_PRICE_ENTRIES_MAX + 1);
    n_sql = svc_db_rows_count(rows);
    cap = n_env + n_sql + 1;
    out->prices = svc_rpc_alloc(call, cap * sizeof(*out->prices));
    if (out->prices == NULL)
        goto nomem;
    for (i = 0; i < n_sql; i++) {
        const char *model = svc_db_rows_text(rows, i, 0);
        const char *by = svc_db_rows_text(rows, i, 4);
        struct billing_ratio r = {svc_db_rows_i64(rows, i, 1), svc_db_rows_i64(rows, i, 2)};
        Chatweb__Billing__ModelPrice *m = price_msg(call, model ? model : "", r, "sql");

        if (m == NULL || (m->updated_by = svc_rpc_strdup(call, by ? by : "")) == NULL)
            goto nomem;
        m->updated_at_ms = svc_db_rows_i64(rows, i, 3);
        for (j = 0; j < n_env; j++)
            if (strcmp(env[j].model, m->model) == 0)
                m->overrides_env = 1;
        has_default |= strcmp(m->model, "*") == 0;
        out->prices[out->n_prices++] = m;
    }
    for (j = 0; j < n_env; j++) {
        int hidden = 0;
        for (i = 0; i < n_sql && !hidden; i++)
            hidden = strcmp(env[j].model, out->prices[i]->model) == 0;
        if (hidden)
            continue;
        has_default |= strcmp(env[j].model, "*") == 0;
        if ((out->prices[out->n_prices++] = price_msg(call, env[j].model, env[j].r, "env")) == NULL)
            goto nomem;
    }
    if (!has_default) {
        struct billing_ratio one = {1000, 1000};
        if ((out->prices[out->n_prices++] = price_msg(call, "*", one, "default")) == NULL)
            goto nomem;
    }
    svc_db_rows_destroy(&rows);
    return SVC_OK;
nomem:
    svc_db_rows_destroy(&rows);
    return SVC_ENOMEM;
}

static int rpc_set_price(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                         ProtobufCMessage *out_msg)
{
    char why[BILLING_WHY_MAX] = "";
    const Chatweb__Billing__SetPriceRequest *in = (const void *)in_msg;
    Chatweb__Billing__SetPriceResponse *out = (void *)out_msg;
    struct billing_ratio r;
    int created = 0, rc;

    (void)ctx;
    if ((rc = billing_price_set(store, in->model, in->input, in->output, in->actor, &r, &created,
                                why, sizeof(why))) != SVC_OK)
        return fail(call, rc, why);
    out->created = created;
    out->price = price_msg(call, in->model, r, "sql");
    if (out->price != NULL) {
        struct billing_price_row env[BILLING_PRICE_ENTRIES_MAX + 1];
        size_t n = billing_prices_rows(billing_store_env_prices(store), env,
                                       BILLING_PRICE_ENTRIES_MAX + 1);
        for (size_t i = 0; i < n; i++)
            if (strcmp(env[i].model, in->model) == 0)
                out->price->overrides_env = 1;
        out->price->updated_by = in->actor;
        out->price->updated_at_ms = svc_util_wallclock_ms();
    }
    SVC_LOG_NOTICE(svc_rpc_request_id(call), "set-price",
                   "model=\"%s\" in_milli=%lld out_milli=%lld actor=\"%s\"", in->model,
                   (long long)r.in_milli, (long long)r.out_milli, in->actor);
    return out->price ? SVC_OK : SVC_ENOMEM;
}

static int rpc_delete_price(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                            ProtobufCMessage *out_msg)
{
    char why[BILLING_WHY_MAX] = "";
    const Chatweb__Billing__DeletePriceRequest *in = (const void *)in_msg;
    Chatweb__Billing__DeletePriceResponse *out = (void *)out_msg;
    int deleted = 0, rc;

    (void)ctx;
    if ((rc = billing_price_delete(store, in->model, in->actor, &deleted, why, sizeof(why))) !=
        SVC_OK)
        return fail(call, rc, why);
    out->deleted = deleted;
    SVC_LOG_NOTICE(svc_rpc_request_id(call), "delete-price", "model=\"%s\" actor=\"%s\" %s",
                   in->model, in->actor, deleted ? "deleted" : "had no SQL price");
    return SVC_OK;
}

static int rpc_lease_sync(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                          ProtobufCMessage *out_msg)
{
    char why[BILLING_WHY_MAX] = "";
    const Chatweb__Billing__LeaseSyncRequest *in = (const void *)in_msg;
    Chatweb__Billing__LeaseSyncResponse *out = (void *)out_msg;
    struct billing_lease_in li = {
        .lease_id = in->lease_id,
        .user_id = in->user_id,
        .seq = in->seq,
        .n_charges = in->n_charges,
        .inflight_units = in->inflight_units,
        .want_units = in->want_units,
        .close = in->close,
        .models = (const char *const *)in->models,
        .n_models = in->n_models,
        .source = in->source,
        .create_unlimited = in->create_unlimited,
        .username = in->username,
    };
    struct billing_lease_charge *ch = NULL;
    struct billing_lease_out *lo = svc_rpc_alloc(call, sizeof(*lo));
    int rc;

    (void)ctx;
    if (lo == NULL)
        return SVC_ENOMEM;
    /* the store refuses more than BILLING_LEASE_CHARGES_MAX; copy no more than that */
    if (in->n_charges > 0 && in->n_charges <= BILLING_LEASE_CHARGES_MAX) {
        if ((ch = svc_rpc_alloc(call, in->n_charges * sizeof(*ch))) == NULL)
            return SVC_ENOMEM;
        for (size_t i = 0; i < in->n_charges; i++) {
            ch[i].request_id = in->charges[i]->request_id;
            ch[i].model = in->charges[i]->model;
            ch[i].prompt_tokens = in->charges[i]->prompt_tokens;
            ch[i].completion_tokens = in->charges[i]->completion_tokens;
            ch[i].estimated = in->charges[i]->estimated;
        }
    }
    li.charges = ch;
    if ((rc = billing_lease_sync(store, &li, lo, why, sizeof(why))) != SVC_OK)
        return fail(call, rc, why);
    out->result = (Chatweb__Billing__ReserveResult)lo->result;
    out->units = lo->units;
    out->balance = lo->balance;
    out->expires_at_ms = lo->expires_at_ms;
    out->unlimited = lo->unlimited;
    out->closed = lo->closed;
    out->duplicate = lo->duplicate;
    out->charged_units = lo->charged_units;
    if (lo->result == BILLING_RESERVE_OK && in->n_models > 0) {
        out->prices = svc_rpc_alloc(call, in->n_models * sizeof(*out->prices));
        if (out->prices == NULL)
            return SVC_ENOMEM;
        for (size_t i = 0; i < in->n_models; i++) {
            out->prices[i] = price_msg(call, in->models[i], lo->prices[i].r, lo->prices[i].source);
            if (out->prices[i] == NULL)
                return SVC_ENOMEM;
        }
        out->n_prices = in->n_models;
    }
    svc_metric_add(&rpc_stats.billing_lease_sync_total, 1);
    if (!lo->duplicate && in->n_charges > 0) { /* charge rows (and perhaps a refund) to relay */
        svc_metric_add(&rpc_stats.billing_lease_charges_total, in->n_charges);
        svc_metric_add(&rpc_stats.billing_units_charged_total, lo->charged_units);
        billing_relay_kick(relay);
    }
    return SVC_OK;
}

/* ---- the events stream ---- */

static int rpc_events_info(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                           ProtobufCMessage *out_msg)
{
    Chatweb__Billing__EventsInfoResponse *out = (void *)out_msg;
    struct billing_events_info *info = svc_rpc_alloc(call, sizeof(*info));
    int rc;

    (void)in_msg;
    (void)ctx;
    if (info == NULL)
        return SVC_ENOMEM;
    if ((rc = billing_relay_events_info(relay, info)) != SVC_OK) {
        svc_rpc_set_error(call, "%s",
                          relay == NULL ? "no events relay" : "billing database unavailable");
        return rc;
    }
    out->stream = (char *)billing_relay_stream(relay);
    out->exists = info->exists;
    out->length = info->length;
    out->first_id = info->first_id;
    out->last_id = info->last_id;
    out->outbox_pending = info->outbox_pending;
    out->redis_error = info->redis_error;
    out->groups = svc_rpc_alloc(call, (info->n_groups ? info->n_groups : 1) * sizeof(*out->groups));
    if (out->groups == NULL)
        return SVC_ENOMEM;
    for (size_t i = 0; i < info->n_groups; i++) {
        Chatweb__Billing__EventsGroup *g = svc_rpc_alloc(call, sizeof(*g));
        if (g == NULL)
            return SVC_ENOMEM;
        chatweb__billing__events_group__init(g);
        g->name = info->groups[i].name;
        g->consumers = info->groups[i].consumers;
        g->pending = info->groups[i].pending;
        g->lag = info->groups[i].lag;
        g->last_delivered_id = info->groups[i].last_delivered_id;
        out->groups[out->n_groups++] = g;
    }
    return SVC_OK;
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
    METHOD("LeaseSync", lease_sync, rpc_lease_sync),
    METHOD("Recharge", recharge, rpc_recharge),
    METHOD("Adjust", adjust, rpc_adjust),
    METHOD("Usage", usage, rpc_usage),
    METHOD("ListPrices", list_prices, rpc_list_prices),
    METHOD("SetPrice", set_price, rpc_set_price),
    METHOD("DeletePrice", delete_price, rpc_delete_price),
    METHOD("EventsInfo", events_info, rpc_events_info),
};
struct svc_rpc_registry billing_rpc_registry = {rpc_methods,
                                                sizeof(rpc_methods) / sizeof(rpc_methods[0])};

void billing_rpc_setup(struct billing_store *s, struct billing_relay *r)
{
    store = s;
    relay = r;
    svc_metrics_register((struct svc_metric *)&rpc_stats, SVC_METRIC_COUNT(rpc_stats));
}
