/*
 * Fuzz target: every request field and JSON body the auth service reads, through its real
 * handlers (services/auth/web.c, ops.c, authn.c and store.c on SQLite, no Redis) served by the
 * real svc_http server in this process: /api/session, /api/verify, /api/login, /api/logout,
 * /api/me, /api/conversations, /accounts, /admin/accounts, and auth's RPC methods (common/rpc.c
 * decoding arbitrary bytes as each method's request message, then auth's handler). Billing is the
 * stand-in of fake_services.c, so the ops actions run to their end.
 *
 * Input: byte 0 picks the route, byte 1 the headers (see the F_* flags); the rest is split at
 * 0xff into the Authorization value, the Cookie value, one more header value (Opskey,
 * X-Request-Id or Origin), and the body.
 *
 * Checked on every reply: a complete HTTP reply within the harness's timeout; never a 5xx but
 * 503 (billing unavailable cannot happen here); /api and /accounts answers are the
 * {status, message} envelope with a known status; an RPC answer is the method's response message
 * (200) or an RpcError whose code maps to the HTTP status.
 */

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "auth.pb-c.h"
#include "fake_services.h"
#include "http_harness.h"
#include "rpc.pb-c.h"
#include "svc/db.h"
#include "svc/log.h"
#include "svc/rpc.h"
#include "svc/util.h"

#define OPS_KEY "fuzz-ops-key-0123456789abcdef"
#define USER "alice"
#define USER_PW "alice-password"
#define MAX_BODY 2048

enum {
    F_AUTHZ = 1 << 0,  /* Authorization: field 0 */
    F_GOOD = 1 << 1,   /* Authorization: valid credentials for the route instead */
    F_COOKIE = 1 << 2, /* Cookie: field 1 */
    F_OPSKEY = 1 << 3, /* Opskey: the right key */
    F_OPSRAW = 1 << 4, /* Opskey: field 2 */
    F_RID = 1 << 5,    /* X-Request-Id: field 2 */
    F_ORIGIN = 1 << 6, /* Origin: field 2 */
    F_GET = 1 << 7,    /* GET instead of POST */
};

static struct auth_ctx a;

static const struct svc_http_route routes[] = {
    {"POST", "/rpc/*", svc_rpc_dispatch, &auth_rpc_registry, SVC_HTTP_STYLE_TEXT},
    {"POST", "/api/session", auth_api_session, &a, SVC_HTTP_STYLE_ENVELOPE},
    {"POST", "/api/verify", auth_api_verify, &a, SVC_HTTP_STYLE_ENVELOPE},
    {"POST", "/api/login", auth_api_login, &a, SVC_HTTP_STYLE_ENVELOPE, 1},
    {"POST", "/api/logout", auth_api_logout, &a, SVC_HTTP_STYLE_ENVELOPE, 1},
    {NULL, "/api/me", auth_api_me, &a, SVC_HTTP_STYLE_ENVELOPE},
    {"POST", "/accounts", auth_ops_accounts, &a, SVC_HTTP_STYLE_ENVELOPE},
    {NULL, "/admin/accounts", auth_ops_admin_accounts, &a, SVC_HTTP_STYLE_ENVELOPE, 1},
    {"POST", "/api/conversations", auth_api_conversations, &a, SVC_HTTP_STYLE_ENVELOPE, 1},
    FZ_FAKE_ROUTE,
};

struct target {
    const char *path;
    const ProtobufCMessageDescriptor *rpc_out; /* RPC: the response type; NULL for /api */
};

static const struct target targets[] = {
    {"/api/session", NULL},
    {"/api/verify", NULL},
    {"/api/login", NULL},
    {"/api/logout", NULL},
    {"/api/me", NULL},
    {"/accounts", NULL},
    {"/admin/accounts", NULL},
    {"/api/nothing-here", NULL},
    {"/rpc/Auth/Authenticate", &chatweb__auth__authenticate_response__descriptor},
    {"/rpc/Auth/ChangeCredentials", &chatweb__auth__change_credentials_response__descriptor},
    {"/rpc/Auth/SetModel", &chatweb__auth__set_model_response__descriptor},
    {"/rpc/Auth/NoSuchMethod", &chatweb__auth__set_model_response__descriptor},
    /* last, so the corpus's earlier byte-0 values keep naming the same routes */
    {"/api/conversations", NULL},
};
#define NTARGETS (sizeof(targets) / sizeof(targets[0]))

static char dir[] = "/tmp/fuzz-auth-XXXXXX";

static void cleanup(void)
{
    char p[128];
    const char *sfx[] = {"", "-wal", "-shm"};

    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s/auth.db%s", dir, sfx[i]);
        unlink(p);
    }
    rmdir(dir);
}

static void setup(void)
{
    char hash[AUTH_HASH_MAX + 1], err[256], base[64];
    int64_t id;

    if (sodium_init() < 0 || mkdtemp(dir) == NULL)
        abort();
    atexit(cleanup);
    svc_log_setup("fuzz_auth_http", SVC_LOG_LVL_ERR);
    pthread_mutex_init(&a.static_lock, NULL);
    a.cfg.ops_key = OPS_KEY;
    a.cfg.health_urls = "closed=http://127.0.0.1:1"; /* the ops action health: refused at once */
    a.cfg.health_timeout_ms = 100;
    a.cfg.session_auth = -1;
    a.cfg.session_ttl_s = 60;
    a.cfg.cache_slots = 64;
    a.cfg.cache_ttl_ms = 60000;
    a.cfg.cache_recheck_ms = 250;
    a.cfg.throttle_window_s = 60;
    a.cfg.throttle_user_max = 10;
    a.cfg.throttle_ip_max = 100;
    a.cfg.throttle_delay_ms = 1000;
    a.cfg.throttle_max_delay_ms = 300000;
    a.cfg.ops_throttle_max = 20;
    a.cfg.ops_throttle_window_s = 600;
    a.cfg.pw_ops = 1; /* argon2id at its cheapest: the parsers are under test, not it */
    a.cfg.pw_mem = 64 * 1024;
    a.cfg.pw_min = 6;
    a.cfg.ops_link = "/admin";
    a.on_user_changed = auth_version_publish;
    if (svc_db_create(&a.db, "sqlite:auth.db", dir, NULL, err, sizeof(err)) != SVC_OK ||
        auth_store_migrate(a.db) != SVC_OK || auth_cache_create(&a.cache, 64) != SVC_OK ||
        auth_pw_setup(&a) != SVC_OK || auth_pw_hash(&a, USER_PW, hash) != SVC_OK ||
        auth_user_create(&a, USER, hash, 0, &id) != SVC_OK) {
        fprintf(stderr, "fuzz_auth_http: setup failed: %s\n", err);
        abort();
    }
    auth_rpc_ctx = &a;
    fz_http_start(routes, sizeof(routes) / sizeof(routes[0]), SVC_HTTP_STYLE_ENVELOPE, MAX_BODY,
                  NULL, 0);
    /* billing: the stand-in, on the same server */
    snprintf(base, sizeof(base), "http://127.0.0.1:%d" FZ_FAKE_PREFIX, fz_http_port());
    if (svc_rpc_client_create(&a.billing, base, 5000, NULL, 0) != SVC_OK)
        abort();
}

static void basic(const char *user, const char *pw, char *out, size_t outlen)
{
    char raw[128];
    int n = snprintf(raw, sizeof(raw), "%s:%s", user, pw);

    memcpy(out, "Basic ", 6);
    sodium_bin2base64(out + 6, outlen - 6, (const unsigned char *)raw, (size_t)n,
                      sodium_base64_VARIANT_ORIGINAL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    const uint8_t *f[4];
    size_t fl[4];
    const struct target *t;
    char hdrs[8192], v[2048], cred[256];
    const char *method;
    struct fz_resp r;
    uint8_t flags;
    size_t o = 0;

    if (!ready) {
        setup();
        ready = 1;
    }
    if (size < 2)
        return 0;
    t = &targets[data[0] % NTARGETS];
    flags = data[1];
    fz_split(data + 2, size - 2, 0xff, f, fl, 4);
    method = (flags & F_GET) && t->rpc_out == NULL ? "GET" : "POST";
    hdrs[0] = '\0';
#define ADD(...) o += (size_t)snprintf(hdrs + o, sizeof(hdrs) - o, __VA_ARGS__)
    if (flags & F_GOOD) {
        if (strcmp(t->path, "/admin/accounts") == 0)
            basic("admin", OPS_KEY, cred, sizeof(cred));
        else
            basic(USER, USER_PW, cred, sizeof(cred));
        ADD("Authorization: %s\r\n", cred);
    } else if (flags & F_AUTHZ) {
        ADD("Authorization: %s\r\n", fz_header_value(f[0], fl[0], v, sizeof(v)));
    }
    if (flags & F_COOKIE)
        ADD("Cookie: %s\r\n", fz_header_value(f[1], fl[1], v, sizeof(v)));
    if (flags & F_OPSKEY)
        ADD("Opskey: %s\r\n", OPS_KEY);
    else if (flags & F_OPSRAW)
        ADD("Opskey: %s\r\n", fz_header_value(f[2], fl[2], v, sizeof(v)));
    if (flags & F_RID)
        ADD("X-Request-Id: %s\r\n", fz_header_value(f[2], fl[2], v, sizeof(v)));
    if (flags & F_ORIGIN)
        ADD("Origin: %s\r\n", fz_header_value(f[2], fl[2], v, sizeof(v)));
#undef ADD
    fz_http_do(method, t->path, hdrs, f[3], fl[3], &r);
    if (r.reset && fl[3] <= MAX_BODY)
        fz_fail("connection closed without a reply", method, t->path, &r);
    if (r.status != 0) {
        if (t->rpc_out != NULL) {
            fz_check_rpc(t->path, t->rpc_out, &r);
        } else {
            if (r.status >= 500 && r.status != 503)
                fz_fail("server error", method, t->path, &r);
            if (!fz_is_envelope(&r))
                fz_fail("not the {status, message} envelope", method, t->path, &r);
        }
    }
    fz_resp_deinit(&r);
    return 0;
}
