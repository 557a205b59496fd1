/*
 * Fuzz target: billing's real RPC handlers (services/billing/rpc.c) on the real store
 * (store.c, price.c) on SQLite, served by the real svc_http server in this process: common/rpc.c
 * decodes arbitrary bytes as each method's request message, then the handler runs to its end.
 *
 * Input: byte 0 picks the method; the rest is the request body. Seeds are encoded requests of
 * every method (corpus/billing_rpc), so mutations start from messages that reach the money rules.
 *
 * Checked on every reply: a complete HTTP reply; a 200 carries the method's response message,
 * any other status an RpcError whose code maps to it. And after each of the first 64 inputs,
 * then every 16, the money itself:
 * for every account, granted - used equals the sum of its ledger rows, held equals the sum of
 * its open holds and is never below zero, and every ledger row has its event in the outbox
 * (docs/billing.md's invariants), whatever the fuzzer sent.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "billing.pb-c.h"
#include "http_harness.h"
#include "price.h"
#include "rpc.h"
#include "store.h"
#include "svc/db.h"
#include "svc/log.h"
#include "svc/rpc.h"

#define MAX_BODY 4096

static const struct svc_http_route routes[] = {
    {"POST", "/rpc/*", svc_rpc_dispatch, &billing_rpc_registry, SVC_HTTP_STYLE_TEXT},
};

struct target {
    const char *path;
    const ProtobufCMessageDescriptor *out;
};

#define T(name, lower)                                                                             \
    {                                                                                              \
        "/rpc/Billing/" name, &chatweb__billing__##lower##_response__descriptor                    \
    }
static const struct target targets[] = {
    T("CreateAccount", create_account), T("GetAccount", get_account),
    T("DeleteAccount", delete_account), T("Reserve", reserve),
    T("Settle", settle),                T("Release", release),
    T("Recharge", recharge),            T("Adjust", adjust),
    T("Usage", usage),                  T("NoSuchMethod", usage),
    /* added later: after NoSuchMethod, so the older seeds keep their methods */
    T("ListPrices", list_prices),       T("SetPrice", set_price),
    T("DeletePrice", delete_price),     T("EventsInfo", events_info),
    T("LeaseSync", lease_sync),
};
#undef T
#define NTARGETS (sizeof(targets) / sizeof(targets[0]))

static char dir[] = "/tmp/fuzz-billing-XXXXXX";
static struct svc_db *db;
static struct billing_prices *prices;
static struct billing_store *store;

/* The files only: the server's threads may still be in a handler when the process exits. */
static void cleanup(void)
{
    char p[128];
    const char *sfx[] = {"", "-wal", "-shm"};

    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s/billing.db%s", dir, sfx[i]);
        unlink(p);
    }
    rmdir(dir);
}

static void setup(void)
{
    struct billing_store_opts so = {.hold_ttl_ms = 600000,
                                    .min_reply_tokens = 10,
                                    .hold_retention_ms = 3600000,
                                    .lease_ttl_ms = 30000};
    struct billing_account a;
    char err[256];
    int existed;

    if (mkdtemp(dir) == NULL)
        abort();
    atexit(cleanup);
    svc_log_setup("fuzz_billing_rpc", SVC_LOG_LVL_ERR);
    if (billing_prices_create(&prices, "gpt-4o=2.5:10,gpt-4o-mini=0.15:0.6", err, sizeof(err)) !=
            SVC_OK ||
        svc_db_create(&db, "sqlite:billing.db", dir, NULL, err, sizeof(err)) != SVC_OK ||
        billing_store_migrate(db) != SVC_OK ||
        billing_store_create(&store, db, prices, &so) != SVC_OK) {
        fprintf(stderr, "fuzz_billing_rpc: setup failed: %s\n", err);
        abort();
    }
    /* accounts the seeds' user ids name: a small balance, a large one, an unlimited one */
    if (billing_account_create(store, 1, "small", 100, 0, "fuzz", &a, &existed, NULL, 0) !=
            SVC_OK ||
        billing_account_create(store, 2, "large", 1000000000, 0, "fuzz", &a, &existed, NULL, 0) !=
            SVC_OK ||
        billing_account_create(store, 3, "unlimited", 0, 1, "fuzz", &a, &existed, NULL, 0) !=
            SVC_OK)
        abort();
    billing_rpc_setup(store, NULL);
    fz_http_start(routes, sizeof(routes) / sizeof(routes[0]), SVC_HTTP_STYLE_TEXT, MAX_BODY, NULL,
                  0);
}

/* One number from SQL (a COUNT). */
static int64_t count(const char *sql)
{
    struct svc_db_conn *c = NULL;
    struct svc_db_rows *rows = NULL;
    int64_t n = -1;

    if (svc_db_conn_get(db, &c, -1) != SVC_OK)
        abort();
    if (svc_db_query(c, sql, NULL, 0, &rows) == SVC_OK && svc_db_rows_count(rows) == 1)
        n = svc_db_rows_i64(rows, 0, 0);
    svc_db_rows_destroy(&rows);
    svc_db_conn_put(db, &c);
    return n;
}

/* docs/billing.md's invariants over every account; abort()s with the one that broke. */
static void check_money(void)
{
    static const struct {
        const char *what, *sql;
    } rules[] = {
        {"granted - used differs from the sum of the ledger",
         "SELECT COUNT(*) FROM billing_accounts a WHERE a.granted - a.used != "
         "(SELECT COALESCE(SUM(l.units), 0) FROM billing_ledger l WHERE l.user_id = a.user_id)"},
        {"held differs from the sum of the open holds",
         "SELECT COUNT(*) FROM billing_accounts a WHERE a.held != "
         "(SELECT COALESCE(SUM(h.units), 0) FROM billing_holds h "
         "WHERE h.user_id = a.user_id AND h.state = 0)"},
        {"held below zero", "SELECT COUNT(*) FROM billing_accounts WHERE held < 0"},
        {"a ledger row without its event",
         "SELECT (SELECT COUNT(*) FROM billing_ledger) - "
         "(SELECT COALESCE(SUM(n), 0) FROM billing_outbox)"},
    };

    for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++) {
        if (count(rules[i].sql) != 0) {
            fprintf(stderr, "fuzz_billing_rpc: money invariant broken: %s\n", rules[i].what);
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    static unsigned runs;
    const struct target *t;
    struct fz_resp r;

    if (!ready) {
        setup();
        ready = 1;
    }
    if (size < 1)
        return 0;
    t = &targets[data[0] % NTARGETS];
    fz_http_do("POST", t->path, "Content-Type: application/x-protobuf\r\n", data + 1, size - 1,
               &r);
    if (r.reset && size - 1 <= MAX_BODY)
        fz_fail("connection closed without a reply", "POST", t->path, &r);
    if (r.status != 0) {
        if (r.status >= 500 && r.status != 503)
            fz_fail("server error", "POST", t->path, &r);
        fz_check_rpc(t->path, t->out, &r);
    }
    fz_resp_deinit(&r);
    if (++runs < 64 || runs % 16 == 0) /* every one at first: a corpus replay checks each seed */
        check_money();
    return 0;
}
