/*
 * chatweb-billing-bench: the cost of a reserve+settle cycle next to a bare UPDATE on the same
 * database, measured in the same run (bench/billing/run.mjs starts the servers and calls this).
 *
 *   chatweb-billing-bench --db DSN|"" --data-dir DIR [--rpc http://billing:port] [--seconds S]
 *                         [--threads T]
 *
 * Rows printed (latency at 1 thread: p50 / p99 in microseconds; throughput with T threads, each on
 * its own user / row, in operations per second):
 *   bare-update     UPDATE bench_bare SET n = n + 1 WHERE id = ? (autocommit, one statement)
 *   store-reserve   billing_reserve alone in process (the part on the request's critical path)
 *   store-cycle     billing_reserve + billing_settle in process (2 transactions: the SQL cost)
 *   rpc-cycle       Reserve + Settle over the protobuf RPC against a running chatweb-billing
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "billing.pb-c.h"
#include "price.h"
#include "store.h"
#include "svc/cfg.h"
#include "svc/db.h"
#include "svc/rpc.h"

#define SAMPLES_MAX 2000000

enum kind { BARE, RESERVE, STORE, RPC };

struct ctx {
    enum kind kind;
    struct svc_db *db;
    struct billing_store *store;
    struct svc_rpc_client *rpc;
    int64_t user;
    double seconds;
    long ops;
    double *lat; /* microseconds, NULL = do not record */
    long nlat;
    int failed;
    int thread;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int one_bare(struct ctx *c)
{
    struct svc_db_conn *conn = NULL;
    struct svc_db_param p[] = {SVC_DB_I64(c->user)};
    int rc;

    if ((rc = svc_db_conn_get(c->db, &conn, -1)) != SVC_OK)
        return rc;
    rc = svc_db_exec(conn, "UPDATE bench_bare SET n = n + 1 WHERE id = ?", p, 1, NULL, NULL);
    svc_db_conn_put(c->db, &conn);
    return rc;
}

static int one_store(struct ctx *c, long i, int settle)
{
    char rid[64];
    struct billing_reserve_in ri = {0};
    struct billing_reserve_out ro;
    struct billing_settle_in si = {0};
    struct billing_settle_out so;
    int rc;

    snprintf(rid, sizeof(rid), "bench-s%d-%d-%lld-%ld-%ld", settle, c->thread, (long long)c->user,
             i, (long)time(NULL));
    ri.request_id = rid;
    ri.user_id = c->user;
    ri.model = "gpt-4o";
    ri.prompt_tokens = 120;
    ri.max_completion_tokens = 500;
    ri.source = "bench";
    if ((rc = billing_reserve(c->store, &ri, &ro, NULL, 0)) != SVC_OK)
        return rc;
    if (ro.result != BILLING_RESERVE_OK)
        return SVC_ECONFLICT;
    if (!settle)
        return SVC_OK;
    si.request_id = rid;
    si.prompt_tokens = 120;
    si.completion_tokens = 80;
    return billing_settle(c->store, &si, &so, NULL, 0);
}

static int one_rpc(struct ctx *c, long i)
{
    Chatweb__Billing__ReserveRequest rq = CHATWEB__BILLING__RESERVE_REQUEST__INIT;
    Chatweb__Billing__SettleRequest sq = CHATWEB__BILLING__SETTLE_REQUEST__INIT;
    ProtobufCMessage *out = NULL;
    char rid[64], err[256];
    int rc;

    snprintf(rid, sizeof(rid), "bench-r-%d-%lld-%ld-%ld", c->thread, (long long)c->user, i,
             (long)time(NULL));
    rq.request_id = rid;
    rq.user_id = c->user;
    rq.model = "gpt-4o";
    rq.prompt_tokens = 120;
    rq.max_completion_tokens = 500;
    rq.source = "bench";
    rc = svc_rpc_call(c->rpc, "/rpc/Billing/Reserve", &rq.base,
                      &chatweb__billing__reserve_response__descriptor, &out, rid, err, sizeof(err));
    if (rc != SVC_OK)
        return rc;
    if (((Chatweb__Billing__ReserveResponse *)out)->result !=
        CHATWEB__BILLING__RESERVE_RESULT__RESERVE_OK)
        rc = SVC_ECONFLICT;
    protobuf_c_message_free_unpacked(out, NULL);
    if (rc != SVC_OK)
        return rc;
    sq.request_id = rid;
    sq.prompt_tokens = 120;
    sq.completion_tokens = 80;
    rc = svc_rpc_call(c->rpc, "/rpc/Billing/Settle", &sq.base,
                      &chatweb__billing__settle_response__descriptor, &out, rid, err, sizeof(err));
    if (rc == SVC_OK)
        protobuf_c_message_free_unpacked(out, NULL);
    return rc;
}

static void *run(void *arg)
{
    struct ctx *c = arg;
    double t0 = now_s(), end = t0 + c->seconds;
    long i = 0;

    for (;;) {
        double a = now_s();
        int rc;

        if (a >= end)
            break;
        rc = c->kind == BARE      ? one_bare(c)
             : c->kind == RESERVE ? one_store(c, i, 0)
             : c->kind == STORE   ? one_store(c, i, 1)
                                  : one_rpc(c, i);
        if (rc != SVC_OK) {
            fprintf(stderr, "bench: %s failed: %s\n",
                    c->kind == BARE  ? "bare"
                    : c->kind == RPC ? "rpc"
                                     : "store",
                    svc_strerror(rc));
            c->failed = 1;
            break;
        }
        if (c->lat != NULL && c->nlat < SAMPLES_MAX)
            c->lat[c->nlat++] = (now_s() - a) * 1e6;
        i++;
    }
    c->ops = i;
    svc_db_thread_end();
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int measure(const char *name, const char *dialect, enum kind kind, struct svc_db *db,
                   struct billing_store *store, const char *rpc_url, int64_t user_base, int threads,
                   double seconds)
{
    struct ctx one = {0};
    struct ctx *many = calloc((size_t)threads, sizeof(*many));
    pthread_t *th = calloc((size_t)threads, sizeof(*th));
    long total = 0;
    int rc = 0;

    if (many == NULL || th == NULL)
        goto nomem;
    one.kind = kind, one.db = db, one.store = store, one.user = user_base, one.seconds = seconds;
    one.lat = malloc(sizeof(double) * SAMPLES_MAX);
    if (one.lat == NULL)
        goto nomem;
    /* Billing only answers signed RPC: the stack's RPC_SECRET (bench/billing/run.mjs). */
    if (kind == RPC && getenv("RPC_SECRET") != NULL &&
        svc_rpc_set_secret(getenv("RPC_SECRET")) != 0)
        goto nomem;
    if (kind == RPC && svc_rpc_client_create(&one.rpc, rpc_url, 10000, NULL, 0) != SVC_OK)
        goto nomem;
    run(&one);
    if (one.failed || one.nlat == 0) {
        rc = 1;
        goto out;
    }
    qsort(one.lat, (size_t)one.nlat, sizeof(double), cmp);
    for (int t = 0; t < threads; t++) {
        many[t] = one;
        many[t].lat = NULL;
        many[t].nlat = 0;
        many[t].user = user_base + 1 + t;
        many[t].thread = t + 1;
        pthread_create(&th[t], NULL, run, &many[t]);
    }
    for (int t = 0; t < threads; t++) {
        pthread_join(th[t], NULL);
        total += many[t].ops;
        rc |= many[t].failed;
    }
    printf("%-8s %-13s p50 %8.1f us   p99 %8.1f us   1 thread %8.0f/s   %d threads %8.0f/s\n",
           dialect, name, one.lat[one.nlat / 2], one.lat[(long)(one.nlat * 0.99)],
           (double)one.ops / seconds, threads, (double)total / seconds);
    fflush(stdout);
out:
    svc_rpc_client_destroy(&one.rpc);
    free(one.lat);
    free(many);
    free(th);
    return rc;
nomem:
    fprintf(stderr, "bench: out of memory\n");
    rc = 1;
    goto out;
}

int main(int argc, char **argv)
{
    const char *dsn = "", *data_dir = "./bench-data", *rpc = NULL;
    int64_t seconds = 3, threads = 8;
    struct svc_db *db = NULL;
    struct billing_prices *prices = NULL;
    struct billing_store *store = NULL;
    struct billing_store_opts so = {600000, 16};
    struct svc_db_opts dbo = {0};
    struct svc_db_conn *c = NULL;
    char err[512];
    const char *dialect;
    int rc = 1;

    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--db") == 0)
            dsn = argv[i + 1];
        else if (strcmp(argv[i], "--data-dir") == 0)
            data_dir = argv[i + 1];
        else if (strcmp(argv[i], "--rpc") == 0)
            rpc = argv[i + 1];
        else if (strcmp(argv[i], "--seconds") == 0 &&
                 svc_cfg_parse_int(argv[i + 1], 1, 600, &seconds) == SVC_OK)
            ;
        else if (strcmp(argv[i], "--threads") == 0 &&
                 svc_cfg_parse_int(argv[i + 1], 1, 256, &threads) == SVC_OK)
            ;
        else {
            fprintf(stderr, "usage: chatweb-billing-bench --db DSN --data-dir DIR [--rpc URL] "
                            "[--seconds 1..600] [--threads 1..256]\n");
            return 64;
        }
    }
    dbo.pool_size = (unsigned)threads + 2;
    if (svc_db_create(&db, dsn, data_dir, &dbo, err, sizeof(err)) != SVC_OK) {
        fprintf(stderr, "bench: DB: %s\n", err);
        return 69;
    }
    dialect = svc_db_dialect(db) == SVC_DB_MYSQL ? "mariadb" : "sqlite";
    if (billing_store_migrate(db) != SVC_OK ||
        billing_prices_create(&prices, "gpt-4o=2.5:10", err, sizeof(err)) != SVC_OK ||
        billing_store_create(&store, db, prices, &so) != SVC_OK ||
        svc_db_conn_get(db, &c, -1) != SVC_OK) {
        fprintf(stderr, "bench: setup failed\n");
        goto out;
    }
    if (svc_db_exec(c,
                    "CREATE TABLE IF NOT EXISTS bench_bare (id BIGINT PRIMARY KEY, "
                    "n BIGINT NOT NULL)",
                    NULL, 0, NULL, NULL) != SVC_OK) {
        fprintf(stderr, "bench: cannot create bench_bare (the sql line says why)\n");
        goto out;
    }
    for (int64_t u = 0; u <= threads; u++) {
        struct svc_db_param p[] = {SVC_DB_I64(u)};
        struct billing_account a;
        int existed;

        if (svc_db_exec(c, "DELETE FROM bench_bare WHERE id = ?", p, 1, NULL, NULL) != SVC_OK ||
            svc_db_exec(c, "INSERT INTO bench_bare (id, n) VALUES (?, 0)", p, 1, NULL, NULL) !=
                SVC_OK)
            goto out;
        for (int64_t base = 900000000; base <= 900000200; base += 100)
            if (billing_account_create(store, base + u, "bench", 1000000000000000LL, 0, "bench", &a,
                                       &existed, NULL, 0) != SVC_OK)
                goto out;
    }
    svc_db_conn_put(db, &c);
    rc = measure("bare-update", dialect, BARE, db, store, NULL, 0, (int)threads, (double)seconds);
    rc |= measure("store-reserve", dialect, RESERVE, db, store, NULL, 900000200, (int)threads,
                  (double)seconds);
    rc |= measure("store-cycle", dialect, STORE, db, store, NULL, 900000000, (int)threads,
                  (double)seconds);
    if (rpc != NULL)
        rc |= measure("rpc-cycle", dialect, RPC, db, store, rpc, 900000100, (int)threads,
                      (double)seconds);
out:
    svc_db_conn_put(db, &c);
    billing_store_destroy(&store);
    billing_prices_destroy(&prices);
    svc_db_destroy(&db);
    return rc;
}
