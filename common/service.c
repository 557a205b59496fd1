#include "svc/service.h"

#include <curl/curl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "svc/buf.h"
#include "svc/http.h"
#include "svc/log.h"
#include "svc/loop.h"
#include "svc/metrics.h"
#include "svc/rpc.h"
#include "svc/util.h"

#define ADMIN_BODY_MAX (1u << 20)
/* /metrics: labelled families hold up to SVC_METRIC_SERIES_MAX series each */
#define METRICS_BODY_MAX (16u << 20)

static const char *service_name = "svc";
static struct svc_cfg_option *options;
static size_t noptions;
static int migrate_only; /* --migrate: apply the schema and exit (svc_service_migrate_only) */
static atomic_int ready;
static svc_service_ready_cb ready_check;
static void *ready_check_data;
static struct svc_http_server *admin;
static struct svc_util_cidrs trusted_proxies; /* TRUSTED_PROXIES, parsed once in setup */

void svc_service_die(int code, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", service_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(code);
}

const struct svc_cfg_option *svc_service_option(const char *name)
{
    for (size_t i = 0; i < noptions; i++)
        if (strcmp(options[i].name, name) == 0)
            return &options[i];
    svc_service_die(SVC_EX_SOFTWARE, "option %s is not declared", name);
}

void svc_service_set_ready(int r)
{
    atomic_store(&ready, r);
}

void svc_service_set_ready_check(svc_service_ready_cb cb, void *ctx)
{
    ready_check = cb;
    ready_check_data = ctx;
}

unsigned svc_service_workers(void)
{
    long n = svc_service_option("WORKERS")->i;

    if (n <= 0)
        n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

/* ---- admin listener ---- */

static int admin_healthz(void *ctx, struct svc_req *req)
{
    (void)ctx;
    svc_req_reply(req, 200, "text/plain", "ok\n", 3);
    return SVC_HTTP_DONE;
}

static int admin_readyz(void *ctx, struct svc_req *req)
{
    int ok = atomic_load(&ready) && (ready_check == NULL || ready_check(ready_check_data) == 0);

    (void)ctx;
    if (ok)
        svc_req_reply(req, 200, "text/plain", "ready\n", 6);
    else
        svc_req_reply(req, 503, "text/plain", "not ready\n", 10);
    return SVC_HTTP_DONE;
}

static int admin_metrics(void *ctx, struct svc_req *req)
{
    struct svc_buf b;

    (void)ctx;
    svc_buf_init(&b, METRICS_BODY_MAX);
    if (svc_metrics_render(&b) != SVC_OK)
        svc_req_error(req, 500, "metrics too large");
    else
        svc_req_reply(req, 200, "text/plain; version=0.0.4", b.data ? b.data : "", b.len);
    svc_buf_deinit(&b);
    return SVC_HTTP_DONE;
}

static const struct svc_http_route admin_routes[] = {
    {"GET", "/healthz", admin_healthz, NULL, SVC_HTTP_STYLE_TEXT},
    {"GET", "/readyz", admin_readyz, NULL, SVC_HTTP_STYLE_TEXT},
    {"GET", "/metrics", admin_metrics, NULL, SVC_HTTP_STYLE_TEXT},
};

/* ---- setup / teardown ---- */

/*
 * Internal RPC is authenticated unless the operator says otherwise in so many words: a service
 * started without RPC_SECRET would accept a Recharge from any process that reaches its port, so
 * a forgotten secret stops the start instead of running open (docs/decisions.md).
 */
void svc_service_setup_rpc_auth(void)
{
    static int done;
    const struct svc_cfg_option *secret = svc_service_option("RPC_SECRET");
    const struct svc_cfg_option *insecure = svc_service_option("RPC_INSECURE");

    if (done)
        return;
    done = 1;
    if (secret->s[0] != '\0') {
        if (strlen(secret->s) < SVC_RPC_SECRET_MIN)
            svc_service_die(SVC_EX_CONFIG, "RPC_SECRET: shorter than %d characters (use e.g. "
                            "openssl rand -hex 32)", SVC_RPC_SECRET_MIN);
        if (svc_rpc_set_secret(secret->s) != SVC_OK)
            svc_service_die(SVC_EX_CONFIG, "RPC_SECRET: not usable (at most 1024 characters)");
        return;
    }
    if (!insecure->i)
        svc_service_die(SVC_EX_CONFIG, "RPC_SECRET: not set; internal RPC must be authenticated: "
                        "give every service the same RPC_SECRET (at least %d characters, e.g. "
                        "openssl rand -hex 32), or set RPC_INSECURE=true on a trusted network",
                        SVC_RPC_SECRET_MIN);
    SVC_LOG_WARN(NULL, "startup", "RPC_INSECURE=true: internal RPC is not authenticated; any "
                 "process that reaches HTTP_ADDR can call every method");
}

void svc_service_setup(const char *service, int argc, char **argv, struct svc_cfg_option *opts,
                       size_t nopts)
{
    char err[512];
    int level;

    service_name = service;
    options = opts;
    noptions = nopts;
    /* Whatever a service creates (the SQLite database and its WAL, DATA_DIR itself) holds password
     * and key hashes or balances: readable by the service's own user only. */
    umask(077);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--describe-config") == 0) {
            svc_cfg_describe_all(opts, nopts);
            exit(SVC_EX_OK);
        }
        if (strcmp(argv[i], "--migrate") == 0) {
            migrate_only = 1;
            continue;
        }
        svc_service_die(SVC_EX_CONFIG, "unknown argument \"%s\" (configuration is read from "
                                       "the environment; try --describe-config or --migrate)",
                        argv[i]);
    }
    if (svc_cfg_load_env(opts, nopts, err, sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "%s", err);
    level = svc_log_level_parse(svc_service_option("LOG_LEVEL")->s);
    if (level < 0)
        svc_service_die(SVC_EX_CONFIG, "LOG_LEVEL: not one of error|warn|notice|info|debug: "
                                       "\"%s\"", svc_service_option("LOG_LEVEL")->s);
    if (svc_util_cidrs_parse(&trusted_proxies, svc_service_option("TRUSTED_PROXIES")->s, err,
                             sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "TRUSTED_PROXIES: %s", err);
    if (svc_service_option("INGRESS_TOKEN")->s != NULL &&
        svc_service_option("INGRESS_TOKEN")->s[0] != '\0' &&
        strlen(svc_service_option("INGRESS_TOKEN")->s) < SVC_RPC_SECRET_MIN)
        svc_service_die(SVC_EX_CONFIG,
                        "INGRESS_TOKEN: shorter than %d characters (use e.g. "
                        "openssl rand -hex 32)",
                        SVC_RPC_SECRET_MIN);
    svc_log_setup(service, level);
}

const struct svc_util_cidrs *svc_service_trusted_proxies(void)
{
    return &trusted_proxies;
}

int svc_service_migrate_only(void)
{
    return migrate_only;
}

void svc_service_start(void)
{
    char err[512];
    sigset_t set;
    struct svc_http_opts ao = {0};

    /* A service with a schema exits before this in --migrate mode; the others have none. */
    if (migrate_only)
        svc_service_die(SVC_EX_CONFIG, "--migrate: this service has no SQL schema (only auth and "
                                       "billing have one)");

    /* Blocked here, before any thread exists, so every thread inherits the mask. */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* Here, after the service's own checks, so a bad value of theirs is still the one named. */
    svc_service_setup_rpc_auth();
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        svc_service_die(SVC_EX_SOFTWARE, "curl_global_init failed");

    ao.service = service_name;
    ao.addr = svc_service_option("ADMIN_ADDR")->s;
    ao.mode = SVC_HTTP_POOL;
    ao.threads = 1;
    ao.max_body = 4096;
    ao.idle_timeout = 30;
    ao.max_connections = 256;
    ao.default_style = SVC_HTTP_STYLE_TEXT;
    if (svc_http_server_create(&admin, &ao, admin_routes,
                               sizeof(admin_routes) / sizeof(admin_routes[0]), err,
                               sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "ADMIN_ADDR: %s", err);
    svc_cfg_log_all(options, noptions);
}

int svc_service_wait(void)
{
    sigset_t set;
    int sig = 0;

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    while (sigwait(&set, &sig) != 0)
        ;
    return sig;
}

/* A drain ends when no request is in flight and either no client connection is left or none
 * has brought a request for this long. An ingress keeps sending on the keep-alive connections
 * it holds after we stop accepting: each such request is answered (with Connection: close, so
 * the connection ends), and exiting while requests still come would cut the next one. Once the
 * ingress has used up its connections to us and found the port closed, requests stop. */
#define DRAIN_QUIET_MS 250
/* After the deadline, how long the requests ended then get to complete. */
#define ABORT_WAIT_MS 1000

/* The requests in flight, connections and requests begun so far of n listeners, summed. */
static void totals(struct svc_http_server *const *srv, size_t n, long *inflight, long *conns,
                   unsigned long *started)
{
    *inflight = *conns = 0;
    *started = 0;
    for (size_t i = 0; i < n; i++) {
        *inflight += svc_http_server_inflight(srv[i]);
        *conns += svc_http_server_connections(srv[i]);
        *started += svc_http_server_started(srv[i]);
    }
}

/* Drains the n listeners of one service together: one deadline, their counts summed. */
static long drain_all(struct svc_http_server *const *srv, size_t n)
{
    uint64_t t0 = svc_loop_clock_ms(), now = t0;
    uint64_t deadline = t0 + (uint64_t)svc_service_option("DRAIN_TIMEOUT")->i * 1000;
    uint64_t quiet_since = t0;
    unsigned long started = 0, started0 = 0;
    long left = 0, conns = 0;

    svc_service_set_ready(0);
    if (n == 0 || srv[0] == NULL)
        return 0;
    for (size_t i = 0; i < n; i++)
        svc_http_server_quiesce(srv[i]);
    totals(srv, n, &left, &conns, &started0);
    started = started0;
    for (;;) {
        unsigned long now_started;
        totals(srv, n, &left, &conns, &now_started);
        now = svc_loop_clock_ms();
        if (now >= deadline)
            break;
        if (now_started != started) {
            started = now_started;
            quiet_since = now;
        }
        if (left == 0 && (conns == 0 || now - quiet_since >= DRAIN_QUIET_MS))
            break;
        usleep(20 * 1000);
    }
    if (left > 0) {
        /* The deadline: what is still in flight ends as if its client had left, while the
         * loops still run, so that each request's own exit path (a metered stream settles what
         * it counted) runs instead of the process stopping under it. */
        SVC_LOG_WARN(NULL, "shutdown",
                     "%ld request(s) still in flight at the drain deadline: ended as if their "
                     "clients had left",
                     left);
        for (size_t i = 0; i < n; i++)
            svc_http_server_abort_all(srv[i]);
        for (int k = 0; k < ABORT_WAIT_MS / 20 && left > 0; k++) {
            usleep(20 * 1000);
            totals(srv, n, &left, &conns, &started);
        }
    }
    totals(srv, n, &left, &conns, &started);
    SVC_LOG_NOTICE(NULL, "shutdown",
                   "drained in %llu ms: %lu request(s) begun meanwhile, %ld connection(s) left",
                   (unsigned long long)(svc_loop_clock_ms() - t0), started - started0, conns);
    return left;
}

long svc_service_drain(struct svc_http_server *srv)
{
    return drain_all(&srv, 1);
}

void svc_service_teardown(void)
{
    svc_http_server_destroy(&admin);
    curl_global_cleanup();
}

/* Marks the service ready, waits for SIGTERM/SIGINT and drains the n listeners. */
static void serve_all(struct svc_http_server *const *srv, size_t n)
{
    long left;
    int sig;

    svc_service_set_ready(1);
    sig = svc_service_wait();
    SVC_LOG_NOTICE(NULL, "shutdown", "signal %d: draining", sig);
    left = drain_all(srv, n);
    if (left > 0)
        SVC_LOG_WARN(NULL, "shutdown", "%ld request(s) did not end when told to; closed at exit",
                     left);
}

void svc_service_serve(struct svc_http_server *srv)
{
    serve_all(&srv, 1);
}

void svc_service_serve_pools(const struct svc_service_listener *ls, size_t n)
{
    struct svc_http_server *srv[SVC_SERVICE_LISTENERS_MAX] = {0};
    char err[512];

    if (n == 0 || n > SVC_SERVICE_LISTENERS_MAX)
        svc_service_die(SVC_EX_SOFTWARE, "svc_service_serve_pools: %zu listeners", n);
    for (size_t i = 0; i < n; i++) {
        struct svc_http_opts ho = {0};
        ho.service = service_name;
        ho.addr = svc_service_option(ls[i].addr_option)->s;
        ho.mode = SVC_HTTP_POOL;
        ho.threads = svc_service_workers() * 2;
        ho.max_body = (size_t)svc_service_option("HTTP_MAX_BODY")->i;
        ho.max_header = (size_t)svc_service_option("HTTP_MAX_HEADER")->i;
        ho.idle_timeout = (unsigned)svc_service_option("HTTP_IDLE_TIMEOUT")->i;
        ho.max_connections = (unsigned)svc_service_option("HTTP_MAX_CONNECTIONS")->i;
        ho.trusted_proxies = svc_service_trusted_proxies();
        ho.ingress_token = svc_service_option("INGRESS_TOKEN")->s;
        ho.default_style = (enum svc_http_style)ls[i].default_style;
        if (svc_http_server_create(&srv[i], &ho, ls[i].routes, ls[i].nroutes, err, sizeof(err)) !=
            SVC_OK)
            svc_service_die(SVC_EX_CONFIG, "%s: %s", ls[i].addr_option, err);
        SVC_LOG_NOTICE(NULL, "startup", "serving %s on port %d", ls[i].addr_option,
                       svc_http_server_port(srv[i]));
    }
    serve_all(srv, n);
    for (size_t i = 0; i < n; i++)
        svc_http_server_destroy(&srv[i]);
}

void svc_service_serve_pool(const struct svc_http_route *routes, size_t nroutes, int default_style)
{
    const struct svc_service_listener l = {"HTTP_ADDR", routes, nroutes, default_style};

    svc_service_serve_pools(&l, 1);
}
