/*
 * chatweb-auth: owns identities and answers "who is this?" for the other services.
 *
 * Routes on HTTP_ADDR (worker-thread pool; handlers may block):
 *   POST /rpc/Auth/{Authenticate,ChangeCredentials,SetModel}   protobuf, internal only; on
 *                                                              RPC_ADDR instead when it is set
 *   POST /api/session /api/verify /api/login /api/logout, GET|POST /api/me   the browser
 *   POST /accounts (Opskey), ANY /admin/accounts (Basic admin:OPS_KEY)          operators
 * See docs/accounts.md and docs/ops-api.md.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "svc/cfg.h"
#include "svc/crypto.h"
#include "svc/db.h"
#include "svc/http.h"
#include "svc/log.h"
#include "svc/metrics.h"
#include "svc/redis.h"
#include "svc/rpc.h"
#include "svc/service.h"
#include "svc/util.h"

#define AUTH_OPTIONS(ACTION)                                                                       \
    SVC_COMMON_OPTIONS(ACTION)                                                                     \
    ACTION(BASIC_AUTH_USER, SVC_OPT_STR, "", 0, 0, "static users, comma-separated")                \
    ACTION(BASIC_AUTH_PASSWORD, SVC_OPT_SECRET, "", 0, 0, "their passwords, by position")          \
    ACTION(OPS_KEY, SVC_OPT_SECRET, "", 0, 0,                                                      \
           "ops API key (Opskey header, Basic admin:<key>); unset = ops API disabled")             \
    ACTION(OPS_LINK, SVC_OPT_STR, "/admin", 0, 0, "self-service link shown to users")              \
    SVC_DB_OPTIONS(ACTION)                                                                         \
    ACTION(REDIS_URL, SVC_OPT_SECRET, "", 0, 0,                                                    \
           "redis://... for sessions, throttles and cache invalidation")                           \
    ACTION(BILLING_URL, SVC_OPT_STR, "", 0, 0, "billing service base URL (http://host:port)")      \
    ACTION(AUTH_URL, SVC_OPT_STR, "", 0, 0, "unused by auth itself (set for every service)")       \
    ACTION(RPC_ADDR, SVC_OPT_STR, "", 0, 0,                                                        \
           "host:port of a listener for /rpc/ alone (then not on HTTP_ADDR); unset: on HTTP_ADDR")  \
    ACTION(HEALTH_URLS, SVC_OPT_STR, "", 0, 0,                                                     \
           "name=http://host:adminport,... whose /readyz the ops action `health` reports")         \
    ACTION(HEALTH_TIMEOUT_MS, SVC_OPT_INT, "1000", 50, 30000,                                      \
           "bound of each /readyz read of the ops action `health`")                                \
    ACTION(AUTH_SESSION_AUTH, SVC_OPT_STR, "auto", 0, 0,                                           \
           "/api/session data.auth: auto (true when OPS_KEY is set) | true | false")               \
    ACTION(AUTH_SESSION_TTL, SVC_OPT_INT, "604800", 60, 31536000,                                  \
           "login session lifetime in seconds")                                                    \
    ACTION(AUTH_COOKIE_SECURE, SVC_OPT_BOOL, "false", 0, 0,                                        \
           "mark the session cookie Secure (behind HTTPS)")                                        \
    ACTION(AUTH_CACHE_SIZE, SVC_OPT_INT, "8192", 16, 1048576, "verification cache slots")          \
    ACTION(AUTH_CACHE_TTL, SVC_OPT_INT, "300", 1, 86400,                                           \
           "seconds before a cached verification is redone in full")                               \
    ACTION(AUTH_CACHE_RECHECK_MS, SVC_OPT_INT, "250", 0, 1000,                                     \
           "ms after which a cached entry re-reads the user's version (change propagation)")       \
    ACTION(AUTH_THROTTLE_WINDOW, SVC_OPT_INT, "300", 1, 86400,                                     \
           "seconds failed logins are remembered (per account+IP: after the last attempt)")        \
    ACTION(AUTH_THROTTLE_USER, SVC_OPT_INT, "10", 1, 1000000,                                      \
           "login attempts per account and client IP before growing delays")                       \
    ACTION(AUTH_THROTTLE_IP, SVC_OPT_INT, "100", 1, 1000000,                                       \
           "distinct accounts with failed logins per client IP per window before refusing")        \
    ACTION(AUTH_THROTTLE_DELAY_MS, SVC_OPT_INT, "1000", 1, 3600000,                                \
           "first delay after AUTH_THROTTLE_USER attempts; doubles with each further one")         \
    ACTION(AUTH_THROTTLE_MAX_DELAY, SVC_OPT_INT, "300", 1, 86400,                                  \
           "longest delay between login attempts of one account and client IP, seconds")          \
    ACTION(AUTH_OPS_THROTTLE, SVC_OPT_INT, "20", 0, 1000000,                                    \
           "wrong Opskey / admin credentials per client IP per window before 429 (0 = off)")      \
    ACTION(AUTH_OPS_THROTTLE_WINDOW, SVC_OPT_INT, "600", 1, 86400,                                 \
           "seconds a client IP waits once it used up AUTH_OPS_THROTTLE")                         \
    ACTION(AUTH_PWHASH_OPS, SVC_OPT_INT, "2", 1, 20, "argon2id iterations (opslimit)")             \
    ACTION(AUTH_PWHASH_MEM_KIB, SVC_OPT_INT, "19456", 8, 4194304,                                  \
           "argon2id memory in KiB (memlimit)")                                                    \
    ACTION(AUTH_PASSWORD_MIN, SVC_OPT_INT, "6", 1, 128,                                            \
           "shortest password accepted by the ops API and ChangeCredentials")

static struct {
    AUTH_OPTIONS(SVC_OPTION_DECLARE)
} setting = {AUTH_OPTIONS(SVC_OPTION_INIT)};

static struct auth_ctx auth = {.static_lock = PTHREAD_MUTEX_INITIALIZER};

/* the static users (BASIC_AUTH_USER), as auth_static_users_sync left them */
#define STATIC_MAX 256
static int64_t static_ids[STATIC_MAX];
static size_t n_statics;

static int ready_check(void *ctx)
{
    const struct auth_ctx *a = ctx;

    return svc_db_ping(a->db);
}

/* routes[0] is the RPC; with RPC_ADDR it is served there alone, and the rest on HTTP_ADDR, so
 * that a network policy can let the ingress reach the public routes and not the RPC. */
static const struct svc_http_route routes[] = {
    {"POST", "/rpc/*", svc_rpc_dispatch, &auth_rpc_registry, SVC_HTTP_STYLE_TEXT},
    {"POST", "/api/session", auth_api_session, &auth, SVC_HTTP_STYLE_ENVELOPE},
    {"POST", "/api/verify", auth_api_verify, &auth, SVC_HTTP_STYLE_ENVELOPE},
    {"POST", "/api/login", auth_api_login, &auth, SVC_HTTP_STYLE_ENVELOPE, 1},
    {"POST", "/api/logout", auth_api_logout, &auth, SVC_HTTP_STYLE_ENVELOPE, 1},
    {NULL, "/api/me", auth_api_me, &auth, SVC_HTTP_STYLE_ENVELOPE},
    {"POST", "/api/conversations", auth_api_conversations, &auth, SVC_HTTP_STYLE_ENVELOPE, 1},
    {"POST", "/accounts", auth_ops_accounts, &auth, SVC_HTTP_STYLE_ENVELOPE},
    {NULL, "/admin/accounts", auth_ops_admin_accounts, &auth, SVC_HTTP_STYLE_ENVELOPE, 1},
    /* the ingress also routes these with a trailing slash */
    {"POST", "/api/session/", auth_api_session, &auth, SVC_HTTP_STYLE_ENVELOPE},
    {"POST", "/api/verify/", auth_api_verify, &auth, SVC_HTTP_STYLE_ENVELOPE},
    {"POST", "/api/login/", auth_api_login, &auth, SVC_HTTP_STYLE_ENVELOPE, 1},
    {"POST", "/api/logout/", auth_api_logout, &auth, SVC_HTTP_STYLE_ENVELOPE, 1},
    {NULL, "/api/me/", auth_api_me, &auth, SVC_HTTP_STYLE_ENVELOPE},
    {"POST", "/api/conversations/", auth_api_conversations, &auth, SVC_HTTP_STYLE_ENVELOPE, 1},
};

int main(int argc, char **argv)
{
    char err[512], desc[256];
    const char *sa;

    svc_service_setup("auth", argc, argv, (struct svc_cfg_option *)&setting,
                      SVC_OPTION_COUNT(setting));
    if (svc_crypto_setup() != SVC_OK)
        svc_service_die(SVC_EX_SOFTWARE, "libsodium: initialisation failed");

    sa = setting.AUTH_SESSION_AUTH.s;
    if (strcmp(sa, "auto") == 0)
        auth.cfg.session_auth = -1;
    else if (svc_cfg_parse_bool(sa) >= 0)
        auth.cfg.session_auth = svc_cfg_parse_bool(sa);
    else
        svc_service_die(SVC_EX_CONFIG, "AUTH_SESSION_AUTH: must be auto, true or false, got \"%s\"",
                        sa);
    auth.cfg.ops_key = setting.OPS_KEY.s;
    auth.cfg.ops_link = setting.OPS_LINK.s;
    auth.cfg.health_urls = setting.HEALTH_URLS.s;
    auth.cfg.health_timeout_ms = setting.HEALTH_TIMEOUT_MS.i;
    if (auth_health_urls_check(setting.HEALTH_URLS.s, err, sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "HEALTH_URLS: %s", err);
    auth.cfg.session_ttl_s = setting.AUTH_SESSION_TTL.i;
    auth.cfg.cookie_secure = (int)setting.AUTH_COOKIE_SECURE.i;
    auth.cfg.cache_slots = (size_t)setting.AUTH_CACHE_SIZE.i;
    auth.cfg.cache_ttl_ms = setting.AUTH_CACHE_TTL.i * 1000;
    auth.cfg.cache_recheck_ms = setting.AUTH_CACHE_RECHECK_MS.i;
    auth.cfg.throttle_window_s = setting.AUTH_THROTTLE_WINDOW.i;
    auth.cfg.throttle_user_max = setting.AUTH_THROTTLE_USER.i;
    auth.cfg.throttle_ip_max = setting.AUTH_THROTTLE_IP.i;
    auth.cfg.throttle_delay_ms = setting.AUTH_THROTTLE_DELAY_MS.i;
    auth.cfg.throttle_max_delay_ms = setting.AUTH_THROTTLE_MAX_DELAY.i * 1000;
    auth.cfg.ops_throttle_max = setting.AUTH_OPS_THROTTLE.i;
    auth.cfg.ops_throttle_window_s = setting.AUTH_OPS_THROTTLE_WINDOW.i;
    auth.cfg.pw_ops = (unsigned long long)setting.AUTH_PWHASH_OPS.i;
    auth.cfg.pw_mem = (size_t)setting.AUTH_PWHASH_MEM_KIB.i * 1024;
    auth.cfg.pw_min = (size_t)setting.AUTH_PASSWORD_MIN.i;
    /* The key guards every balance and is guessed over the network: 24 characters of a
     * random string are out of reach even at the throttle's pace. */
    if (setting.OPS_KEY.is_set && strlen(auth.cfg.ops_key) < AUTH_OPS_KEY_MIN)
        svc_service_die(SVC_EX_CONFIG, "OPS_KEY: must be at least %d characters, got %zu",
                        AUTH_OPS_KEY_MIN, strlen(auth.cfg.ops_key));
    if (setting.REDIS_URL.s[0] != '\0' &&
        svc_redis_url_check(setting.REDIS_URL.s, err, sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "REDIS_URL: %s", err);

    if (auth_static_users_validate(setting.BASIC_AUTH_USER.s, setting.BASIC_AUTH_PASSWORD.s, err,
                                   sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "%s", err);
    if (setting.RPC_ADDR.s[0] != '\0') {
        char host[256];
        int port;
        if (svc_cfg_parse_addr(setting.RPC_ADDR.s, host, sizeof(host), &port) != SVC_OK)
            svc_service_die(SVC_EX_CONFIG, "RPC_ADDR: not host:port: \"%s\"", setting.RPC_ADDR.s);
    }
    if (!svc_service_migrate_only())
        svc_service_setup_rpc_auth(); /* a configuration error, before the migrations run */
    if (svc_db_create(&auth.db, setting.DB.s, setting.DATA_DIR.s, NULL, err, sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_UNAVAILABLE, "DB: %s", err);
    if (auth_store_migrate(auth.db) != SVC_OK)
        svc_service_die(SVC_EX_UNAVAILABLE, "DB: the auth migrations failed (see the log)");
    if (svc_service_migrate_only()) { /* the Helm migration Job: schema applied, done */
        SVC_LOG_NOTICE(NULL, "migrate", "auth schema is current");
        svc_db_destroy(&auth.db);
        svc_db_teardown();
        return SVC_EX_OK;
    }
    if (setting.REDIS_URL.s[0] != '\0' &&
        svc_redis_create(&auth.redis, setting.REDIS_URL.s, 1000, err, sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "REDIS_URL: cannot create the client");
    if (setting.BILLING_URL.s[0] != '\0' &&
        svc_rpc_client_create(&auth.billing, setting.BILLING_URL.s, 3000, err, sizeof(err)) !=
            SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "BILLING_URL: cannot create the client");
    auth.on_user_changed = auth_version_publish;
    if (auth_cache_create(&auth.cache, auth.cfg.cache_slots) != SVC_OK)
        svc_service_die(SVC_EX_SOFTWARE, "out of memory for the verification cache");
    if (auth_pw_setup(&auth) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "AUTH_PWHASH_MEM_KIB: cannot allocate that much");
    if (auth_static_users_sync(&auth, setting.BASIC_AUTH_USER.s, setting.BASIC_AUTH_PASSWORD.s,
                               static_ids, STATIC_MAX, &n_statics, err, sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "%s", err);
    auth_rpc_ctx = &auth;

    svc_service_start();
    svc_service_set_ready_check(ready_check, &auth);
    svc_db_describe(auth.db, desc, sizeof(desc));
    SVC_LOG_INFO(NULL, "startup", "db %s; %zu static user(s); redis %s; billing %s; ops API %s",
                 desc, n_statics, auth.redis ? "on" : "off (no REDIS_URL)",
                 auth.billing ? setting.BILLING_URL.s : "off (no BILLING_URL)",
                 auth.cfg.ops_key[0] ? "on" : "off (no OPS_KEY)");
    if (auth_static_accounts_start(&auth, static_ids, n_statics) != SVC_OK)
        SVC_LOG_ERR(NULL, "startup", "cannot start the thread that creates the static users' "
                                     "billing accounts (they are made on first use)");

    if (setting.RPC_ADDR.s[0] != '\0') {
        const struct svc_service_listener ls[] = {
            {"HTTP_ADDR", routes + 1, sizeof(routes) / sizeof(routes[0]) - 1,
             SVC_HTTP_STYLE_ENVELOPE},
            {"RPC_ADDR", routes, 1, SVC_HTTP_STYLE_TEXT},
        };
        svc_service_serve_pools(ls, sizeof(ls) / sizeof(ls[0]));
    } else {
        svc_service_serve_pool(routes, sizeof(routes) / sizeof(routes[0]),
                               SVC_HTTP_STYLE_ENVELOPE);
    }

    auth_static_accounts_stop();
    auth_cache_destroy(&auth.cache);
    svc_rpc_client_destroy(&auth.billing);
    svc_redis_destroy(&auth.redis);
    svc_db_destroy(&auth.db);
    svc_db_thread_end();
    svc_db_teardown();
    svc_service_teardown();
    return SVC_EX_OK;
}
