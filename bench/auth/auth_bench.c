/*
 * chatweb-auth-bench: what authenticating a request costs with the verification cache warm,
 * printed beside a plain Redis GET measured in the same run (design brief §4: <= 50 us at p50).
 *
 *   REDIS_URL=redis://127.0.0.1:6379 chatweb-auth-bench [iterations]
 *   (bench/auth/run.mjs starts a private redis-server and an auth service and runs it)
 *
 * Measured, each as p50 / p90 / p99 over the iterations:
 *   redis_get          one GET round trip (the reference)
 *   authn_warm         auth_authenticate() in process, cache warm, default recheck (250 ms)
 *   authn_recheck_all  the same with AUTH_CACHE_RECHECK_MS=0: every call re-reads the user's
 *                      version from Redis (the worst case of the hot path)
 *   authn_cold         a full verification (argon2id at the service defaults), for scale
 *   rpc_warm           when AUTH_URL is set: the Authenticate RPC round trip to that service
 *                      (AUTH_BENCH_AUTHORIZATION, the header to send, must be valid there)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "auth.pb-c.h"
#include "svc/crypto.h"
#include "svc/db.h"
#include "svc/log.h"
#include "svc/redis.h"
#include "svc/rpc.h"
#include "svc/util.h"

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *name, int64_t *t, size_t n, double ref_p50_us)
{
    double p50, p90, p99;

    qsort(t, n, sizeof(*t), cmp64);
    p50 = t[n / 2] / 1000.0;
    p90 = t[n * 9 / 10] / 1000.0;
    p99 = t[n * 99 / 100] / 1000.0;
    printf("%-18s n=%-7zu p50=%8.2f us  p90=%8.2f us  p99=%8.2f us", name, n, p50, p90, p99);
    if (ref_p50_us > 0)
        printf("   (%.2fx redis_get p50)", p50 / ref_p50_us);
    printf("\n");
}

int main(int argc, char **argv)
{
    const char *redis_url = getenv("REDIS_URL");
    const char *auth_url = getenv("AUTH_URL");
    size_t n = argc > 1 ? (size_t)strtoul(argv[1], NULL, 10) : 20000, i;
    struct auth_ctx a;
    char dir[] = "/tmp/auth-bench-XXXXXX", hdr[256], b64[128], err[256];
    const char *get_argv[] = {"GET", "chatweb:bench:key"};
    int64_t *t = NULL, id = 0, t0;
    double ref = 0;
    enum auth_result res;
    enum auth_scheme scheme;
    struct auth_identity ident;
    char hash[AUTH_HASH_MAX + 1];
    int rc = 1;

    if (redis_url == NULL || n < 100) {
        fprintf(stderr, "usage: REDIS_URL=redis://host:port %s [iterations >= 100]\n", argv[0]);
        return 2;
    }
    if (svc_crypto_setup() != SVC_OK || mkdtemp(dir) == NULL)
        return 1;
    svc_log_setup("auth-bench", SVC_LOG_LVL_WARN);
    memset(&a, 0, sizeof(a));
    pthread_mutex_init(&a.static_lock, NULL);
    a.cfg.ops_key = "";
    a.cfg.session_auth = -1;
    a.cfg.session_ttl_s = 3600;
    a.cfg.cache_slots = 8192;
    a.cfg.cache_ttl_ms = 300000;
    a.cfg.cache_recheck_ms = 250;
    a.cfg.throttle_window_s = 300;
    a.cfg.throttle_user_max = 10;
    a.cfg.throttle_ip_max = 50;
    a.cfg.pw_ops = 2;
    a.cfg.pw_mem = 19456 * 1024;
    a.cfg.pw_min = 6;
    a.on_user_changed = auth_version_publish;
    t = calloc(n, sizeof(*t));
    if (t == NULL || svc_db_create(&a.db, "sqlite:bench.db", dir, NULL, NULL, 0) != SVC_OK ||
        auth_store_migrate(a.db) != SVC_OK ||
        svc_redis_create(&a.redis, redis_url, 1000, NULL, 0) != SVC_OK ||
        auth_cache_create(&a.cache, a.cfg.cache_slots) != SVC_OK || auth_pw_setup(&a) != SVC_OK ||
        auth_pw_hash(&a, "bench-password", hash) != SVC_OK ||
        auth_user_create(&a, "bench", hash, 0, &id) != SVC_OK) {
        fprintf(stderr, "setup failed (is Redis at REDIS_URL up?)\n");
        goto out;
    }
    snprintf(b64, sizeof(b64), "YmVuY2g6YmVuY2gtcGFzc3dvcmQ="); /* bench:bench-password */
    snprintf(hdr, sizeof(hdr), "Basic %s", b64);

    /* the reference: a plain GET */
    for (i = 0; i < n; i++) {
        struct svc_redis_reply *rep = NULL;
        t0 = now_ns();
        if (svc_redis_cmd(a.redis, &rep, 2, get_argv, NULL) != SVC_OK)
            goto out;
        t[i] = now_ns() - t0;
        svc_redis_reply_destroy(&rep);
    }
    qsort(t, n, sizeof(*t), cmp64);
    ref = t[n / 2] / 1000.0;
    report("redis_get", t, n, 0);

    /* cold: full verification, a few times (each call uses a fresh cache) */
    for (i = 0; i < 20; i++) {
        auth_cache_destroy(&a.cache);
        if (auth_cache_create(&a.cache, a.cfg.cache_slots) != SVC_OK)
            goto out;
        t0 = now_ns();
        if (auth_authenticate(&a, hdr, NULL, "127.0.0.1", NULL, &res, &scheme, &ident) != SVC_OK ||
            res != AUTH_R_OK)
            goto out;
        t[i] = now_ns() - t0;
    }
    report("authn_cold", t, 20, ref);

    for (i = 0; i < n; i++) {
        t0 = now_ns();
        if (auth_authenticate(&a, hdr, NULL, "127.0.0.1", NULL, &res, &scheme, &ident) != SVC_OK ||
            res != AUTH_R_OK)
            goto out;
        t[i] = now_ns() - t0;
    }
    report("authn_warm", t, n, ref);

    a.cfg.cache_recheck_ms = 0;
    for (i = 0; i < n; i++) {
        t0 = now_ns();
        if (auth_authenticate(&a, hdr, NULL, "127.0.0.1", NULL, &res, &scheme, &ident) != SVC_OK ||
            res != AUTH_R_OK)
            goto out;
        t[i] = now_ns() - t0;
    }
    report("authn_recheck_all", t, n, ref);

    if (auth_url != NULL && auth_url[0] != '\0') {
        struct svc_rpc_client *c;
        /* auth only answers signed RPC: the stack's RPC_SECRET (bench/auth/run.mjs). */
        if (getenv("RPC_SECRET") != NULL && svc_rpc_set_secret(getenv("RPC_SECRET")) != 0)
            return 1;
        const char *authz = getenv("AUTH_BENCH_AUTHORIZATION");
        Chatweb__Auth__AuthenticateRequest in = CHATWEB__AUTH__AUTHENTICATE_REQUEST__INIT;

        if (svc_rpc_client_create(&c, auth_url, 3000, NULL, 0) != SVC_OK || authz == NULL)
            goto out;
        in.authorization = (char *)authz;
        in.client_ip = "127.0.0.1";
        for (i = 0; i < n; i++) {
            ProtobufCMessage *out = NULL;
            t0 = now_ns();
            if (svc_rpc_call(c, "/rpc/Auth/Authenticate", &in.base,
                             &chatweb__auth__authenticate_response__descriptor, &out, NULL, err,
                             sizeof(err)) != SVC_OK) {
                fprintf(stderr, "rpc: %s\n", err);
                svc_rpc_client_destroy(&c);
                goto out;
            }
            t[i] = now_ns() - t0;
            if (((Chatweb__Auth__AuthenticateResponse *)out)->result !=
                CHATWEB__AUTH__AUTH_RESULT__AUTH_OK) {
                fprintf(stderr, "rpc: AUTH_BENCH_AUTHORIZATION is not accepted by AUTH_URL\n");
                protobuf_c_message_free_unpacked(out, NULL);
                svc_rpc_client_destroy(&c);
                goto out;
            }
            protobuf_c_message_free_unpacked(out, NULL);
        }
        report("rpc_warm", t, n, ref);
        svc_rpc_client_destroy(&c);
    }
    rc = 0;
out:
    free(t);
    auth_cache_destroy(&a.cache);
    svc_redis_destroy(&a.redis);
    svc_db_destroy(&a.db);
    {
        char p[512];
        snprintf(p, sizeof(p), "%s/bench.db", dir);
        unlink(p);
        snprintf(p, sizeof(p), "%s/bench.db-wal", dir);
        unlink(p);
        snprintf(p, sizeof(p), "%s/bench.db-shm", dir);
        unlink(p);
        rmdir(dir);
    }
    return rc;
}
