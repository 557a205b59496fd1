/*
 * services/billing/store.c: the money rules on a real SQL back end, without the RPC layer.
 * Runs on SQLite in a temporary directory, and on MariaDB too when TEST_MYSQL_DSN is set
 * (like test_db). The modules are compiled into this test directly.
 */
#include "../../services/billing/price.c"
#include "../../services/billing/store.c"

#include <unistd.h>

#include "test.h"

static int64_t next_user = 0;

static int64_t ledger_sum(struct svc_db *db, int64_t uid, int64_t *rows_out)
{
    struct svc_db_conn *c = NULL;
    struct svc_db_rows *rows = NULL;
    struct svc_db_param p[] = {SVC_DB_I64(uid)};
    int64_t sum;

    T_EQ_INT(svc_db_conn_get(db, &c, -1), SVC_OK);
    T_EQ_INT(svc_db_query(c,
                          "SELECT COALESCE(SUM(units), 0), COUNT(*), "
                          "(SELECT COUNT(*) FROM billing_outbox WHERE user_id = ?) "
                          "FROM billing_ledger WHERE user_id = ?",
                          (struct svc_db_param[]){p[0], p[0]}, 2, &rows),
             SVC_OK);
    sum = svc_db_rows_i64(rows, 0, 0);
    if (rows_out)
        *rows_out = svc_db_rows_i64(rows, 0, 1);
    T_EQ_INT(svc_db_rows_i64(rows, 0, 1), svc_db_rows_i64(rows, 0, 2)); /* one outbox row each */
    svc_db_rows_destroy(&rows);
    svc_db_conn_put(db, &c);
    return sum;
}

static void check_consistent(struct svc_db *db, struct billing_store *s, int64_t uid)
{
    struct billing_account a;

    T_EQ_INT(billing_account_get(s, uid, &a, NULL, 0), SVC_OK);
    T_EQ_INT(ledger_sum(db, uid, NULL), a.granted - a.used);
    T_EQ_INT(a.balance, a.granted - a.used - a.held);
}

static int64_t new_user(struct billing_store *s, int64_t units)
{
    struct billing_account a;
    int existed = -1;
    int64_t uid = 100000 + (int64_t)getpid() * 100 + ++next_user;

    T_EQ_INT(billing_account_create(s, uid, "u", units, 0, "test", &a, &existed, NULL, 0), SVC_OK);
    T_EQ_INT(existed, 0);
    T_EQ_INT(a.balance, units);
    return uid;
}

static void reserve_rules(struct svc_db *db, struct billing_store *s)
{
    char why[BILLING_WHY_MAX];
    int64_t uid = new_user(s, 100);
    struct billing_reserve_in in = {.request_id = NULL,
                                    .user_id = uid,
                                    .model = "p",
                                    .prompt_tokens = 10,
                                    .max_completion_tokens = 1000};
    struct billing_reserve_out out;
    struct billing_settle_in si = {0};
    struct billing_settle_out so;
    char rid[64];

    /* p=2:3 prices: prompt 10 -> 20 units; the rest (80) buys floor(80/3) = 26 tokens */
    snprintf(rid, sizeof(rid), "cap-%lld", (long long)uid);
    in.request_id = rid;
    T_EQ_INT(billing_reserve(s, &in, &out, NULL, 0), SVC_OK);
    T_EQ_INT(out.result, BILLING_RESERVE_OK);
    T_EQ_INT(out.completion_limit, 26);
    T_EQ_INT(out.held_units, 20 + 78);
    T_EQ_INT(out.balance, 2);
    /* the real usage is larger than the hold: charged up to hold + balance, never below zero */
    si.request_id = rid;
    si.prompt_tokens = 10;
    si.completion_tokens = 500;
    T_EQ_INT(billing_settle(s, &si, &so, NULL, 0), SVC_OK);
    T_EQ_INT(so.charged, 100);
    T_EQ_INT(so.balance, 0);
    T_EQ_INT(billing_settle(s, &si, &so, NULL, 0), SVC_OK);
    T_EQ_INT(so.already_settled, 1);
    T_EQ_INT(so.charged, 100);
    check_consistent(db, s, uid);
    /* nothing left: refused, nothing changes */
    snprintf(rid, sizeof(rid), "none-%lld", (long long)uid);
    T_EQ_INT(billing_reserve(s, &in, &out, NULL, 0), SVC_OK);
    T_EQ_INT(out.result, BILLING_RESERVE_INSUFFICIENT);
    T_EQ_INT(billing_settle(s, &si, &so, NULL, 0), SVC_ENOTFOUND);
    /* overflowing and negative inputs */
    in.prompt_tokens = -1;
    T_EQ_INT(billing_reserve(s, &in, &out, NULL, 0), SVC_EINVAL);
    in.prompt_tokens = INT64_MAX;
    T_EQ_INT(billing_reserve(s, &in, &out, why, sizeof(why)), SVC_EINVAL);
    T_ASSERT(strstr(why, "prompt_tokens") != NULL);
    in.user_id = 0;
    in.prompt_tokens = 1;
    T_EQ_INT(billing_reserve(s, &in, &out, NULL, 0), SVC_EINVAL);
}

static void expiry_rules(struct svc_db *db, struct billing_store *s)
{
    int64_t uid = new_user(s, 1000);
    struct billing_reserve_in in = {
        .user_id = uid, .prompt_tokens = 100, .max_completion_tokens = 100};
    struct billing_reserve_out out;
    struct billing_settle_in si = {0};
    struct billing_settle_out so;
    struct billing_release_out ro;
    struct billing_account a;
    char r1[64], r2[64], r3[64];
    int n = 0;

    snprintf(r1, sizeof(r1), "exp1-%lld", (long long)uid);
    snprintf(r2, sizeof(r2), "exp2-%lld", (long long)uid);
    snprintf(r3, sizeof(r3), "exp3-%lld", (long long)uid);
    in.request_id = r1;
    T_EQ_INT(billing_reserve(s, &in, &out, NULL, 0), SVC_OK);
    in.request_id = r2;
    T_EQ_INT(billing_reserve(s, &in, &out, NULL, 0), SVC_OK);
    in.request_id = r3;
    T_EQ_INT(billing_reserve(s, &in, &out, NULL, 0), SVC_OK);
    T_EQ_INT(billing_release(s, r3, "upstream failed", &ro, NULL, 0), SVC_OK);
    T_EQ_INT(ro.refunded, 200);
    usleep(30 * 1000); /* ttl is 20 ms */
    T_EQ_INT(billing_expire_due(s, 100, &n), SVC_OK);
    T_ASSERT(n >= 2);
    T_EQ_INT(billing_expire_due(s, 100, &n), SVC_OK);
    T_EQ_INT(n, 0); /* each hold expires once */
    T_EQ_INT(billing_account_get(s, uid, &a, NULL, 0), SVC_OK);
    T_EQ_INT(a.held, 0);
    T_EQ_INT(a.balance, 600);
    check_consistent(db, s, uid);
    /* late settle corrects the expiry charge; late release refunds it */
    si.request_id = r1;
    si.prompt_tokens = 100;
    si.completion_tokens = 5;
    T_EQ_INT(billing_settle(s, &si, &so, NULL, 0), SVC_OK);
    T_EQ_INT(so.charged, 105);
    T_EQ_INT(so.refunded, 95);
    T_EQ_INT(billing_settle(s, &si, &so, NULL, 0), SVC_OK);
    T_EQ_INT(so.already_settled, 1);
    T_EQ_INT(billing_release(s, r2, "late", &ro, NULL, 0), SVC_OK);
    T_EQ_INT(ro.refunded, 200);
    T_EQ_INT(billing_release(s, r2, "late", &ro, NULL, 0), SVC_OK);
    T_EQ_INT(ro.already_closed, 1);
    si.request_id = r3;
    T_EQ_INT(billing_settle(s, &si, &so, NULL, 0),
             SVC_ECONFLICT); /* released holds are not settled */
    T_EQ_INT(billing_account_get(s, uid, &a, NULL, 0), SVC_OK);
    T_EQ_INT(a.balance, 1000 - 105);
    check_consistent(db, s, uid);
}

static void credit_rules(struct svc_db *db, struct billing_store *s)
{
    char why[BILLING_WHY_MAX];
    int64_t uid = new_user(s, 10);
    struct billing_credit_in ci = {.user_id = uid, .units = 5, .idempotency_key = "evt-1"};
    struct billing_credit_out co;
    struct billing_account a;
    int64_t first;

    T_EQ_INT(billing_recharge(s, &ci, &co, NULL, 0), SVC_OK);
    T_EQ_INT(co.duplicate, 0);
    first = co.ledger_id;
    T_EQ_INT(billing_recharge(s, &ci, &co, NULL, 0), SVC_OK);
    T_EQ_INT(co.duplicate, 1);
    T_EQ_INT(co.ledger_id, first);
    T_EQ_INT(co.account.balance, 15);
    /* the same key with another request is refused, never answered as if it were done */
    ci.units = 6;
    T_EQ_INT(billing_recharge(s, &ci, &co, why, sizeof(why)), SVC_ECONFLICT);
    T_ASSERT(strstr(why, "different request") != NULL);
    T_EQ_INT(billing_account_get(s, uid, &a, NULL, 0), SVC_OK);
    T_EQ_INT(a.balance, 15);
    ci.units = -16;
    T_EQ_INT(billing_adjust(s, &ci, &co, NULL, 0),
             SVC_ECONFLICT); /* the adjust key space is separate */
    ci.force = 1;
    T_EQ_INT(billing_adjust(s, &ci, &co, NULL, 0), SVC_OK);
    T_EQ_INT(co.account.balance, -1);
    ci.force = 0; /* force is part of the request: a replay without it is another request */
    T_EQ_INT(billing_adjust(s, &ci, &co, why, sizeof(why)), SVC_ECONFLICT);
    T_ASSERT(strstr(why, "different request") != NULL);
    ci.force = 1;
    T_EQ_INT(billing_adjust(s, &ci, &co, NULL, 0), SVC_OK);
    T_EQ_INT(co.duplicate, 1);
    T_EQ_INT(co.account.balance, -1);
    ci.units = BILLING_UNITS_OP_MAX + 1;
    T_EQ_INT(billing_recharge(s, &ci, &co, NULL, 0), SVC_EINVAL);
    ci.units = 0;
    T_EQ_INT(billing_adjust(s, &ci, &co, NULL, 0), SVC_EINVAL);
    ci.user_id = 999999999999LL;
    ci.units = 1;
    T_EQ_INT(billing_recharge(s, &ci, &co, NULL, 0), SVC_ENOTFOUND);
    check_consistent(db, s, uid);
}

/* Every account value stays within +-(2^53 - 1), so JavaScript clients read it exactly. */
static void safe_range_rules(struct svc_db *db, struct billing_store *s)
{
    char why[BILLING_WHY_MAX];
    int64_t uid = new_user(s, BILLING_UNITS_OP_MAX), neg = new_user(s, 0);
    struct billing_credit_in ci = {.user_id = uid, .units = BILLING_UNITS_OP_MAX};
    struct billing_credit_out co;
    struct billing_account a;

    for (int i = 0; i < 8; i++)
        T_EQ_INT(billing_recharge(s, &ci, &co, NULL, 0), SVC_OK);
    T_EQ_INT(co.account.balance, 9 * BILLING_UNITS_OP_MAX);
    T_EQ_INT(billing_recharge(s, &ci, &co, why, sizeof(why)), SVC_ETOOLARGE);
    T_ASSERT(strstr(why, "9007199254740991") != NULL);
    T_EQ_INT(billing_account_get(s, uid, &a, NULL, 0), SVC_OK);
    T_EQ_INT(a.balance, 9 * BILLING_UNITS_OP_MAX); /* nothing credited */
    ci.units = BILLING_SAFE_MAX - 9 * BILLING_UNITS_OP_MAX;
    T_EQ_INT(billing_recharge(s, &ci, &co, NULL, 0), SVC_OK);
    T_EQ_INT(co.account.balance, BILLING_SAFE_MAX);
    ci.units = 1;
    T_EQ_INT(billing_adjust(s, &ci, &co, NULL, 0), SVC_ETOOLARGE);
    check_consistent(db, s, uid);

    ci.user_id = neg;
    ci.units = -BILLING_UNITS_OP_MAX;
    ci.force = 1;
    for (int i = 0; i < 9; i++)
        T_EQ_INT(billing_adjust(s, &ci, &co, NULL, 0), SVC_OK);
    T_EQ_INT(billing_adjust(s, &ci, &co, NULL, 0), SVC_ETOOLARGE);
    T_EQ_INT(billing_account_get(s, neg, &a, NULL, 0), SVC_OK);
    T_EQ_INT(a.balance, -9 * BILLING_UNITS_OP_MAX);
    check_consistent(db, s, neg);
}

static void purge_rules(struct billing_store *s)
{
    int64_t uid = new_user(s, 100);
    struct billing_reserve_in in = {.user_id = uid, .prompt_tokens = 1, .max_completion_tokens = 1};
    struct billing_reserve_out out;
    struct billing_release_out ro;
    char closed[64], open_[64];
    int n = 0;

    snprintf(closed, sizeof(closed), "purge-c-%lld", (long long)uid);
    snprintf(open_, sizeof(open_), "purge-o-%lld", (long long)uid);
    in.request_id = closed;
    T_EQ_INT(billing_reserve(s, &in, &out, NULL, 0), SVC_OK);
    T_EQ_INT(billing_release(s, closed, "", &ro, NULL, 0), SVC_OK);
    in.request_id = open_;
    T_EQ_INT(billing_reserve(s, &in, &out, NULL, 0), SVC_OK);
    T_EQ_INT(billing_purge_closed(s, svc_util_wallclock_ms() + 1000, 1000, &n), SVC_OK);
    T_ASSERT(n >= 1);
    T_EQ_INT(billing_release(s, closed, "", &ro, NULL, 0), SVC_ENOTFOUND); /* past retention */
    T_EQ_INT(billing_release(s, open_, "", &ro, NULL, 0), SVC_OK);         /* open holds are kept */
    T_EQ_INT(ro.refunded, 2);
}

/* Prices set by operators: stored, versioned, applied by the store at once, over BILLING_PRICES. */
static void price_rules(struct billing_store *s)
{
    int64_t uid = new_user(s, 1000000), v0;
    struct billing_reserve_in in = {
        .user_id = uid, .model = "p-2024", .prompt_tokens = 100, .max_completion_tokens = 100};
    struct billing_reserve_out out;
    struct svc_db_rows *rows = NULL;
    struct billing_ratio r;
    int created = -1, deleted = -1, found = 0;
    char rid[64];

    T_EQ_INT(billing_price_delete(s, "p", "t", &deleted, NULL, 0), SVC_OK); /* a MariaDB reused */
    T_EQ_INT(billing_store_prices_refresh(s), SVC_OK);
    v0 = billing_store_prices_version(s);
    T_ASSERT(v0 >= 0);
    T_EQ_INT(billing_price_set(s, "a b", "1", "1", "t", &r, &created, NULL, 0), SVC_EINVAL);
    T_EQ_INT(billing_price_set(s, "p", "1.2345", "1", "t", &r, &created, NULL, 0), SVC_EINVAL);
    T_EQ_INT(billing_price_set(s, "p", "1", "-1", "t", &r, &created, NULL, 0), SVC_EINVAL);
    T_EQ_INT(billing_price_set(s, "", "1", "1", "t", &r, &created, NULL, 0), SVC_EINVAL);
    T_EQ_INT(billing_store_prices_version(s), v0);

    /* SQL p=5:7 over the env's p=2:3, applied at once, by prefix too */
    T_EQ_INT(billing_price_set(s, "p", "5", "7", "t", &r, &created, NULL, 0), SVC_OK);
    T_EQ_INT(created, 1);
    T_EQ_INT(r.in_milli, 5000);
    T_EQ_INT(billing_store_prices_version(s), v0 + 1);
    snprintf(rid, sizeof(rid), "price-a-%lld", (long long)uid);
    in.request_id = rid;
    T_EQ_INT(billing_reserve(s, &in, &out, NULL, 0), SVC_OK);
    T_EQ_INT(out.held_units, 500 + 700);

    T_EQ_INT(billing_price_set(s, "p", "0.5", "0.25", "t", &r, &created, NULL, 0), SVC_OK);
    T_EQ_INT(created, 0);
    T_EQ_INT(billing_store_prices_version(s), v0 + 2);
    snprintf(rid, sizeof(rid), "price-b-%lld", (long long)uid);
    T_EQ_INT(billing_reserve(s, &in, &out, NULL, 0), SVC_OK);
    T_EQ_INT(out.held_units, 50 + 25);
    T_EQ_INT(billing_price_rows(s, &rows, &v0), SVC_OK);
    for (size_t i = 0; i < svc_db_rows_count(rows); i++)
        if (strcmp(svc_db_rows_text(rows, i, 0), "p") == 0) {
            found = 1;
            T_EQ_INT(svc_db_rows_i64(rows, i, 1), 500);
            T_EQ_INT(svc_db_rows_i64(rows, i, 2), 250);
            T_EQ_STR(svc_db_rows_text(rows, i, 4), "t");
        }
    svc_db_rows_destroy(&rows);
    T_ASSERT(found);

    /* deleted: the env price again; a second delete changes nothing */
    T_EQ_INT(billing_price_delete(s, "p", "t", &deleted, NULL, 0), SVC_OK);
    T_EQ_INT(deleted, 1);
    T_EQ_INT(billing_store_prices_version(s), v0 + 1);
    snprintf(rid, sizeof(rid), "price-c-%lld", (long long)uid);
    T_EQ_INT(billing_reserve(s, &in, &out, NULL, 0), SVC_OK);
    T_EQ_INT(out.held_units, 200 + 300);
    T_EQ_INT(billing_price_delete(s, "p", "t", &deleted, NULL, 0), SVC_OK);
    T_EQ_INT(deleted, 0);
    T_EQ_INT(billing_store_prices_version(s), v0 + 1);
}

static void suite(const char *dsn, const char *dir)
{
    struct svc_db *db = NULL;
    struct billing_prices *prices = NULL;
    struct billing_store *s = NULL;
    struct billing_store_opts so = {20, 10};
    char err[256];

    if (svc_db_create(&db, dsn, dir, NULL, err, sizeof(err)) != SVC_OK)
        T_FAIL("open %s: %s", dsn ? "mysql" : "sqlite", err);
    T_EQ_INT(billing_store_migrate(db), SVC_OK);
    T_EQ_INT(billing_store_migrate(db), SVC_OK); /* idempotent */
    T_EQ_INT(billing_prices_create(&prices, "p=2:3", err, sizeof(err)), SVC_OK);
    T_EQ_INT(billing_store_create(&s, db, prices, &so), SVC_OK);
    reserve_rules(db, s);
    expiry_rules(db, s);
    credit_rules(db, s);
    safe_range_rules(db, s);
    purge_rules(s);
    price_rules(s);
    billing_store_destroy(&s);
    billing_prices_destroy(&prices);
    svc_db_destroy(&db);
}

int main(void)
{
    char dir[] = "/tmp/test_billing_store-XXXXXX";
    const char *mysql = getenv("TEST_MYSQL_DSN");
    char cmd[128];

    T_ASSERT(mkdtemp(dir) != NULL);
    suite(NULL, dir);
    printf("sqlite: ok\n");
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    T_EQ_INT(system(cmd), 0);
    if (mysql != NULL && mysql[0] != '\0') {
        suite(mysql, NULL);
        printf("mysql: ok\n");
    } else {
        const char *req = getenv("TEST_REQUIRE_MYSQL");
        svc_db_teardown();
        /* As test_db: with-servers --mariadb (make unit, CI) asks for MariaDB, so a missing DSN
         * there fails; elsewhere ctest reports the file as skipped (77), never as passed. */
        if (req != NULL && strcmp(req, "1") == 0) {
            fprintf(stderr, "mysql: TEST_MYSQL_DSN unset but TEST_REQUIRE_MYSQL=1: failing\n");
            return 1;
        }
        fprintf(stderr, "mysql: skipped (TEST_MYSQL_DSN unset): exit 77\n");
        return 77;
    }
    svc_db_teardown();
    return 0;
}
