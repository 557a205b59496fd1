/*
 * "Who is this?": HTTP Basic, "Bearer user:password" (the ChatGPT Web token), login sessions
 * and API keys, with a verification cache and failed-login throttling.
 *
 * The verification cache (docs/accounts.md, "Verification cache"):
 *   - a fixed array of slots in this process, indexed by a keyed BLAKE2b digest of the
 *     credentials (the key is random per process; credentials themselves are never kept);
 *   - a slot holds the identity and the user's *version* when it was verified. Every change that
 *     matters (password, rename, block, delete, model, API keys) bumps the version in SQL and
 *     publishes it in Redis (chatweb:auth:uver:{<id>}, "set if greater");
 *   - a hit younger than AUTH_CACHE_RECHECK_MS is answered from memory; an older one re-reads
 *     the version from Redis (one GET; SQL when Redis is unavailable) and is dropped when it
 *     differs, so a change reaches every replica within that interval;
 *   - entries older than AUTH_CACHE_TTL are verified again in full.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth.h"
#include "billing.pb-c.h"
#include "svc/crypto.h"
#include "svc/db.h"
#include "svc/log.h"
#include "svc/redis.h"
#include "svc/rpc.h"
#include "svc/util.h"

#define CACHE_LOCKS 64

struct cache_slot {
    unsigned char digest[SVC_CRYPTO_BLAKE2B_BYTES];
    int used;
    int scheme;
    struct auth_identity id;
    int64_t version;
    int64_t key_row; /* API key row id, for last_used_at */
    int64_t created_ms;
    int64_t checked_ms;
    int64_t used_write_ms;
};

struct auth_cache {
    size_t n;
    struct cache_slot *slots;
    pthread_mutex_t locks[CACHE_LOCKS];
    unsigned char key[SVC_CRYPTO_BLAKE2B_KEYBYTES];
};

int auth_cache_create(struct auth_cache **out, size_t slots)
{
    struct auth_cache *c;
    size_t i;

    *out = NULL;
    if (slots == 0)
        return SVC_EINVAL;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return SVC_ENOMEM;
    c->slots = calloc(slots, sizeof(*c->slots));
    if (c->slots == NULL) {
        free(c);
        return SVC_ENOMEM;
    }
    c->n = slots;
    for (i = 0; i < CACHE_LOCKS; i++)
        pthread_mutex_init(&c->locks[i], NULL);
    svc_crypto_random(c->key, sizeof(c->key));
    *out = c;
    return SVC_OK;
}

void auth_cache_destroy(struct auth_cache **cp)
{
    struct auth_cache *c = cp != NULL ? *cp : NULL;
    size_t i;

    if (c == NULL)
        return;
    for (i = 0; i < CACHE_LOCKS; i++)
        pthread_mutex_destroy(&c->locks[i]);
    svc_util_wipe(c->key, sizeof(c->key));
    free(c->slots);
    free(c);
    *cp = NULL;
}

static size_t slot_index(const struct auth_cache *c, const unsigned char *d)
{
    uint64_t v;

    memcpy(&v, d, sizeof(v));
    return (size_t)(v % c->n);
}

/* Copies a live slot for digest d into *out. 1 on a hit. */
static int cache_get(struct auth_cache *c, const unsigned char *d, struct cache_slot *out,
                     int64_t now, int64_t ttl_ms)
{
    size_t i = slot_index(c, d);
    pthread_mutex_t *l = &c->locks[i % CACHE_LOCKS];
    int hit = 0;

    pthread_mutex_lock(l);
    if (c->slots[i].used && svc_crypto_equal(c->slots[i].digest, d, sizeof(c->slots[i].digest))) {
        if (now - c->slots[i].created_ms < ttl_ms) {
            *out = c->slots[i];
            hit = 1;
        } else {
            c->slots[i].used = 0;
        }
    }
    pthread_mutex_unlock(l);
    return hit;
}

static void cache_put(struct auth_cache *c, const struct cache_slot *s)
{
    size_t i = slot_index(c, s->digest);
    pthread_mutex_t *l = &c->locks[i % CACHE_LOCKS];

    pthread_mutex_lock(l);
    c->slots[i] = *s;
    c->slots[i].used = 1;
    pthread_mutex_unlock(l);
}

/* Marks a slot confirmed (checked) or drops it (drop = 1). */
static void cache_touch(struct auth_cache *c, const unsigned char *d, int64_t now, int drop,
                        int64_t used_write_ms)
{
    size_t i = slot_index(c, d);
    pthread_mutex_t *l = &c->locks[i % CACHE_LOCKS];

    pthread_mutex_lock(l);
    if (c->slots[i].used && svc_crypto_equal(c->slots[i].digest, d, sizeof(c->slots[i].digest))) {
        if (drop) {
            c->slots[i].used = 0;
        } else {
            c->slots[i].checked_ms = now;
            if (used_write_ms)
                c->slots[i].used_write_ms = used_write_ms;
        }
    }
    pthread_mutex_unlock(l);
}

/* Drops this replica's slots of user id verified at a version older than version, so a change
 * made here (password, block, model...) takes effect here at once; other replicas notice it
 * through the published version within the recheck interval. O(slots); changes are rare. */
static void cache_drop_user(struct auth_cache *c, int64_t id, int64_t version)
{
    for (size_t i = 0; i < c->n; i++) {
        pthread_mutex_t *l = &c->locks[i % CACHE_LOCKS];
        pthread_mutex_lock(l);
        if (c->slots[i].used && c->slots[i].id.user_id == id && c->slots[i].version < version)
            c->slots[i].used = 0;
        pthread_mutex_unlock(l);
    }
}

/* The cache key of a credential: a keyed BLAKE2b of the scheme and the credential text. */
static void cred_digest(const struct auth_cache *c, int scheme, const char *cred,
                        unsigned char digest[SVC_CRYPTO_BLAKE2B_BYTES])
{
    struct svc_crypto_blake2b_state st;
    unsigned char tag = (unsigned char)scheme;

    svc_crypto_blake2b_init(&st, c->key);
    svc_crypto_blake2b_update(&st, &tag, 1);
    svc_crypto_blake2b_update(&st, cred, strlen(cred));
    svc_crypto_blake2b_final(&st, digest);
}

/* ---- Redis helpers ---- */

static void version_key(int64_t id, char *out, size_t len)
{
    snprintf(out, len, AUTH_REDIS_PREFIX "uver:{%lld}", (long long)id);
}

/* Publishes "version of id is now >= v"; keys expire after a day (a missing key reads SQL). */
static const char publish_lua[] =
    "local c = tonumber(redis.call('GET', KEYS[1]) or '0') "
    "if tonumber(ARGV[1]) > c then redis.call('SET', KEYS[1], ARGV[1], 'EX', 86400) end "
    "return 0";

void auth_version_publish(struct auth_ctx *a, int64_t id, int64_t version)
{
    char key[96], v[32];
    const char *argv[] = {"EVAL", publish_lua, "1", key, v};
    struct svc_redis_reply *rep = NULL;

    if (a->cache != NULL)
        cache_drop_user(a->cache, id, version);
    if (a->redis == NULL)
        return;
    version_key(id, key, sizeof(key));
    snprintf(v, sizeof(v), "%lld", (long long)version);
    if (svc_redis_cmd(a->redis, &rep, 5, argv, NULL) != SVC_OK ||
        svc_redis_reply_type(rep) == SVC_REDIS_ERROR)
        SVC_LOG_WARN(NULL, "cache",
                     "cannot publish the version of user %lld (replicas notice "
                     "within the recheck interval through SQL)",
                     (long long)id);
    svc_redis_reply_destroy(&rep);
}

/*
 * The current version of user id: Redis first, SQL when Redis has no value or fails.
 * SVC_ENOTFOUND when the user is gone.
 */
static int current_version(struct auth_ctx *a, int64_t id, int64_t *version)
{
    char key[96];
    const char *argv[] = {"GET", key};
    struct svc_redis_reply *rep = NULL;
    int rc;

    if (a->redis != NULL) {
        version_key(id, key, sizeof(key));
        if (svc_redis_cmd(a->redis, &rep, 2, argv, NULL) == SVC_OK &&
            svc_redis_reply_type(rep) == SVC_REDIS_STRING) {
            const char *s = svc_redis_reply_str(rep, NULL);
            *version = strtoll(s, NULL, 10);
            svc_redis_reply_destroy(&rep);
            return SVC_OK;
        }
        svc_redis_reply_destroy(&rep);
    }
    rc = auth_user_version(a, id, version);
    if (rc == SVC_OK)
        auth_version_publish(a, id, *version);
    return rc;
}

/* ---- attempt throttles (failed logins, operator secrets) ---- */

/*
 * One attempt counter in a Redis hash {n, next}, taken atomically *before* the credential is
 * checked, so concurrent attempts can never get more checks than the budget (a read-then-count
 * let 13 of 60 concurrent tries through a limit of 10). ARGV: free attempts, base delay (ms),
 * max delay (ms), window (ms). With base 0 the budget is a fixed window: after `free` attempts
 * everything waits until the key expires (window from the first attempt). With base > 0 the
 * attempts after `free` are spaced by growing delays (base, 2 base, 4 base, ... up to max), and
 * the key is forgotten window + delay after the last attempt. Returns 0 (go on; the attempt is
 * counted) or the ms to wait. Time comes from Redis (TIME), so replicas' clocks do not matter.
 */
static const char take_lua[] =
    "local t = redis.call('TIME') "
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
    "local free, base = tonumber(ARGV[1]), tonumber(ARGV[2]) "
    "local maxd, win = tonumber(ARGV[3]), tonumber(ARGV[4]) "
    "local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0') "
    "local nxt = tonumber(redis.call('HGET', KEYS[1], 'next') or '0') "
    "if n >= free then "
    "  if base == 0 then "
    "    local ttl = redis.call('PTTL', KEYS[1]) "
    "    if ttl < 1 then redis.call('PEXPIRE', KEYS[1], win) ttl = win end "
    "    return ttl "
    "  end "
    "  if now < nxt then return nxt - now end "
    "end "
    "n = n + 1 "
    "local d = 0 "
    "if base > 0 and n >= free then "
    "  d = base * math.pow(2, math.min(n - free, 40)) "
    "  if d > maxd then d = maxd end "
    "  nxt = now + d "
    "end "
    "redis.call('HSET', KEYS[1], 'n', n, 'next', nxt) "
    "if base == 0 then "
    "  if redis.call('PTTL', KEYS[1]) < 1 then redis.call('PEXPIRE', KEYS[1], win) end "
    "else "
    "  redis.call('PEXPIRE', KEYS[1], win + d) "
    "end "
    "return 0";

/* Gives one counted attempt back (a correct operator key must not use up the budget). */
static const char refund_lua[] = "local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0') "
                                 "if n > 0 then redis.call('HINCRBY', KEYS[1], 'n', -1) end "
                                 "return 0";

int auth_throttle_take(struct auth_ctx *a, const char *key, int64_t free_n, int64_t base_ms,
                       int64_t max_ms, int64_t window_ms, int64_t *retry_after_ms)
{
    char f[24], b[24], m[24], w[24];
    const char *argv[] = {"EVAL", take_lua, "1", key, f, b, m, w};
    struct svc_redis_reply *rep = NULL;
    int rc = SVC_OK;

    *retry_after_ms = 0;
    if (a->redis == NULL)
        return SVC_EUNAVAIL;
    snprintf(f, sizeof(f), "%lld", (long long)free_n);
    snprintf(b, sizeof(b), "%lld", (long long)base_ms);
    snprintf(m, sizeof(m), "%lld", (long long)max_ms);
    snprintf(w, sizeof(w), "%lld", (long long)window_ms);
    if (svc_redis_cmd(a->redis, &rep, 8, argv, NULL) != SVC_OK ||
        svc_redis_reply_type(rep) != SVC_REDIS_INTEGER)
        rc = SVC_EUNAVAIL;
    else
        *retry_after_ms = svc_redis_reply_int(rep);
    svc_redis_reply_destroy(&rep);
    return rc;
}

void auth_throttle_refund(struct auth_ctx *a, const char *key)
{
    const char *argv[] = {"EVAL", refund_lua, "1", key};
    struct svc_redis_reply *rep = NULL;

    if (a->redis == NULL)
        return;
    if (svc_redis_cmd(a->redis, &rep, 4, argv, NULL) != SVC_OK)
        SVC_LOG_WARN(NULL, "throttle", "cannot give an attempt back");
    svc_redis_reply_destroy(&rep);
}

/*
 * Failed-login throttling (docs/accounts.md). Two rules, both in Redis so every replica shares
 * them, both checked before any hashing:
 *
 *   - per (account, client IP): AUTH_THROTTLE_USER attempts, then each further attempt from that
 *     address waits a growing delay (AUTH_THROTTLE_DELAY_MS, doubling, at most
 *     AUTH_THROTTLE_MAX_DELAY s). The attempt is taken atomically before the check, so
 *     concurrent tries cannot overshoot; a success forgets the counter. A stranger elsewhere
 *     therefore never delays the owner, and login sessions and cached verifications are not
 *     throttled at all;
 *   - per client IP: once failures for AUTH_THROTTLE_IP *distinct* accounts were seen from an
 *     address within AUTH_THROTTLE_WINDOW, attempts from it on any further account wait for the
 *     window to end. Counting accounts instead of failures keeps a NAT'd office whose users
 *     mistype working, and still stops one address spraying a password over many accounts.
 *
 * Without Redis nothing is throttled.
 */
static void ua_key(const char *name, const char *ip, char *out, size_t len)
{
    snprintf(out, len, AUTH_REDIS_PREFIX "fail:ua:{%s}:%s", name, ip != NULL && ip[0] ? ip : "-");
}

static void ip_key(const char *ip, char *out, size_t len)
{
    snprintf(out, len, AUTH_REDIS_PREFIX "fail:ip:{%s}", ip != NULL && ip[0] ? ip : "-");
}

/* ms to wait when the address has failed on too many other accounts, else 0. */
static const char ip_check_lua[] =
    "if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[1]) and "
    "   redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 0 then "
    "  local t = redis.call('PTTL', KEYS[1]) "
    "  if t < 1 then t = 1000 end "
    "  return t "
    "end "
    "return 0";

/* Records a failed account for an address; the set lives a window from its first failure. */
static const char ip_fail_lua[] = "redis.call('SADD', KEYS[1], ARGV[1]) "
                                  "if redis.call('PTTL', KEYS[1]) < 0 then "
                                  "  redis.call('PEXPIRE', KEYS[1], ARGV[2]) "
                                  "end "
                                  "return 0";

/* 0 (go on) or the ms the caller must wait. Redis trouble is logged and lets the check run. */
static int64_t login_throttle(struct auth_ctx *a, const char *name, const char *ip,
                              const char *rid)
{
    char key[192], max[24];
    const char *argv[] = {"EVAL", ip_check_lua, "1", key, max, name};
    struct svc_redis_reply *rep = NULL;
    int64_t wait = 0;

    if (a->redis == NULL)
        return 0;
    ip_key(ip, key, sizeof(key));
    snprintf(max, sizeof(max), "%lld", (long long)a->cfg.throttle_ip_max);
    if (svc_redis_cmd(a->redis, &rep, 6, argv, NULL) == SVC_OK &&
        svc_redis_reply_type(rep) == SVC_REDIS_INTEGER)
        wait = svc_redis_reply_int(rep);
    else
        SVC_LOG_WARN(rid, "throttle", "cannot read the address's failures (not throttled)");
    svc_redis_reply_destroy(&rep);
    if (wait > 0)
        return wait;
    ua_key(name, ip, key, sizeof(key));
    if (auth_throttle_take(a, key, a->cfg.throttle_user_max, a->cfg.throttle_delay_ms,
                           a->cfg.throttle_max_delay_ms, a->cfg.throttle_window_s * 1000,
                           &wait) != SVC_OK) {
        SVC_LOG_WARN(rid, "throttle", "cannot count a login attempt (not throttled)");
        return 0;
    }
    return wait;
}

static void login_failed(struct auth_ctx *a, const char *name, const char *ip)
{
    char key[192], win[24];
    const char *argv[] = {"EVAL", ip_fail_lua, "1", key, name, win};
    struct svc_redis_reply *rep = NULL;

    if (a->redis == NULL)
        return;
    ip_key(ip, key, sizeof(key));
    snprintf(win, sizeof(win), "%lld", (long long)a->cfg.throttle_window_s * 1000);
    if (svc_redis_cmd(a->redis, &rep, 6, argv, NULL) != SVC_OK)
        SVC_LOG_WARN(NULL, "throttle", "cannot record a failed login");
    svc_redis_reply_destroy(&rep);
}

static void login_succeeded(struct auth_ctx *a, const char *name, const char *ip)
{
    char key[192];
    const char *argv[] = {"DEL", key};
    struct svc_redis_reply *rep = NULL;

    if (a->redis == NULL)
        return;
    ua_key(name, ip, key, sizeof(key));
    if (svc_redis_cmd(a->redis, &rep, 2, argv, NULL) != SVC_OK)
        SVC_LOG_DEBUG(NULL, "throttle", "cannot reset a counter");
    svc_redis_reply_destroy(&rep);
}

/* ---- identities ---- */

static void identity_from_user(const struct auth_user *u, struct auth_identity *id)
{
    memset(id, 0, sizeof(*id));
    id->user_id = u->id;
    snprintf(id->username, sizeof(id->username), "%s", u->username);
    id->is_static = u->is_static;
    id->blocked = u->blocked;
    snprintf(id->model, sizeof(id->model), "%s", u->model);
}

int auth_check_password(struct auth_ctx *a, const char *name, const char *password,
                        const char *client_ip, const char *rid, enum auth_result *result,
                        struct auth_user *u, int64_t *retry_after_ms)
{
    int64_t wait;
    int rc;

    *retry_after_ms = 0;
    if (name == NULL || name[0] == '\0' || password == NULL || password[0] == '\0') {
        *result = name == NULL || name[0] == '\0' ? AUTH_R_UNKNOWN : AUTH_R_WRONG_PASSWORD;
        return SVC_OK;
    }
    if (!auth_username_valid(name) || strlen(password) > AUTH_PASSWORD_MAX) {
        *result = AUTH_R_UNKNOWN;
        return SVC_OK;
    }
    if ((wait = login_throttle(a, name, client_ip, rid)) > 0) {
        *result = AUTH_R_THROTTLED;
        *retry_after_ms = wait;
        SVC_LOG_NOTICE(rid, "login", "throttled user=%s ip=%s for %lld ms", name,
                       client_ip ? client_ip : "-", (long long)wait);
        return SVC_OK;
    }
    rc = auth_user_by_name(a, name, u);
    if (rc == SVC_ENOTFOUND) {
        auth_pw_dummy_verify(password);
        login_failed(a, name, client_ip);
        *result = AUTH_R_UNKNOWN;
        SVC_LOG_INFO(rid, "login", "refused user=%s ip=%s: unknown user", name,
                     client_ip ? client_ip : "-");
        return SVC_OK;
    }
    if (rc != SVC_OK)
        return SVC_EUNAVAIL;
    if (!auth_pw_verify(u->pw_hash, password)) {
        login_failed(a, name, client_ip);
        *result = AUTH_R_WRONG_PASSWORD;
        SVC_LOG_INFO(rid, "login", "refused user=%s ip=%s: wrong password", name,
                     client_ip ? client_ip : "-");
        return SVC_OK;
    }
    login_succeeded(a, name, client_ip);
    *result = u->blocked ? AUTH_R_BLOCKED : AUTH_R_OK;
    return SVC_OK;
}

/* ---- sessions ---- */

static void session_key(const char *token, char *out, size_t len)
{
    unsigned char h[SVC_CRYPTO_SHA256_BYTES];
    char hex[65];

    svc_crypto_sha256(h, token, strlen(token));
    svc_crypto_hex(hex, h, sizeof(h));
    snprintf(out, len, AUTH_REDIS_PREFIX "sess:{%s}", hex);
}

static int session_token_valid(const char *t)
{
    size_t i;

    if (strncmp(t, "cws_", 4) != 0 || strlen(t) != AUTH_SESSION_TOKEN_LEN)
        return 0;
    for (i = 4; i < AUTH_SESSION_TOKEN_LEN; i++)
        if (!((t[i] >= '0' && t[i] <= '9') || (t[i] >= 'a' && t[i] <= 'f')))
            return 0;
    return 1;
}

int auth_session_create(struct auth_ctx *a, const struct auth_user *u, char *token_out)
{
    char hex[65], key[128], val[64], ttl[32];
    const char *argv[] = {"SET", key, val, "EX", ttl};
    struct svc_redis_reply *rep = NULL;
    int rc = SVC_OK;

    if (a->redis == NULL)
        return SVC_EUNAVAIL;
    svc_util_random_hex(hex, 32);
    snprintf(token_out, AUTH_SESSION_TOKEN_LEN + 1, "cws_%s", hex);
    svc_util_wipe(hex, sizeof(hex));
    session_key(token_out, key, sizeof(key));
    snprintf(val, sizeof(val), "%lld:%lld", (long long)u->id, (long long)u->pw_epoch);
    snprintf(ttl, sizeof(ttl), "%lld", (long long)a->cfg.session_ttl_s);
    if (svc_redis_cmd(a->redis, &rep, 5, argv, NULL) != SVC_OK ||
        svc_redis_reply_type(rep) != SVC_REDIS_STATUS)
        rc = SVC_EUNAVAIL;
    svc_redis_reply_destroy(&rep);
    if (rc != SVC_OK)
        svc_util_wipe(token_out, AUTH_SESSION_TOKEN_LEN + 1);
    return rc;
}

int auth_cookie_token(const char *cookie, char *out, size_t outlen)
{
    const char *p = cookie;
    size_t nl = strlen(AUTH_COOKIE_NAME);

    while (p != NULL && *p) {
        while (*p == ' ' || *p == ';')
            p++;
        if (strncmp(p, AUTH_COOKIE_NAME, nl) == 0 && p[nl] == '=') {
            const char *v = p + nl + 1;
            size_t len = strcspn(v, ";");
            while (len > 0 && v[len - 1] == ' ')
                len--;
            if (len == 0 || len >= outlen)
                return SVC_ENOTFOUND;
            memcpy(out, v, len);
            out[len] = '\0';
            return SVC_OK;
        }
        p = strchr(p, ';');
    }
    return SVC_ENOTFOUND;
}

/* The session token of a request: "Bearer cws_..." first, then the cookie. */
static int request_session_token(const char *authorization, const char *cookie, char *out,
                                 size_t outlen)
{
    if (authorization != NULL && strncasecmp(authorization, "Bearer ", 7) == 0) {
        const char *t = authorization + 7;
        while (*t == ' ')
            t++;
        if (session_token_valid(t) && strlen(t) < outlen) {
            snprintf(out, outlen, "%s", t);
            return SVC_OK;
        }
    }
    if (cookie != NULL && auth_cookie_token(cookie, out, outlen) == SVC_OK &&
        session_token_valid(out))
        return SVC_OK;
    return SVC_ENOTFOUND;
}

void auth_session_delete(struct auth_ctx *a, const char *authorization, const char *cookie)
{
    char token[AUTH_SESSION_TOKEN_LEN + 8], key[128];
    unsigned char digest[SVC_CRYPTO_BLAKE2B_BYTES];
    const char *argv[] = {"DEL", key};
    struct svc_redis_reply *rep = NULL;

    if (request_session_token(authorization, cookie, token, sizeof(token)) != SVC_OK)
        return;
    /* This replica forgets the session at once; others within the recheck interval, when
     * they find the Redis key gone. */
    cred_digest(a->cache, AUTH_SCHEME_SESSION, token, digest);
    cache_touch(a->cache, digest, 0, 1, 0);
    if (a->redis == NULL) {
        svc_util_wipe(token, sizeof(token));
        return;
    }
    session_key(token, key, sizeof(key));
    svc_util_wipe(token, sizeof(token));
    if (svc_redis_cmd(a->redis, &rep, 2, argv, NULL) != SVC_OK)
        SVC_LOG_WARN(NULL, "logout", "cannot delete a session");
    svc_redis_reply_destroy(&rep);
}

/* 1 when the session key still exists, 0 when not, -1 on a Redis failure. */
static int session_exists(struct auth_ctx *a, const char *token)
{
    char key[128];
    const char *argv[] = {"EXISTS", key};
    struct svc_redis_reply *rep = NULL;
    int r = -1;

    if (a->redis == NULL)
        return -1;
    session_key(token, key, sizeof(key));
    if (svc_redis_cmd(a->redis, &rep, 2, argv, NULL) == SVC_OK &&
        svc_redis_reply_type(rep) == SVC_REDIS_INTEGER)
        r = svc_redis_reply_int(rep) > 0;
    svc_redis_reply_destroy(&rep);
    return r;
}

static int session_verify(struct auth_ctx *a, const char *token, enum auth_result *result,
                          struct auth_user *u)
{
    char key[128];
    const char *argv[] = {"GET", key};
    struct svc_redis_reply *rep = NULL;
    long long uid = 0, epoch = 0;
    char *end;
    int rc;

    if (a->redis == NULL)
        return SVC_EUNAVAIL;
    session_key(token, key, sizeof(key));
    if (svc_redis_cmd(a->redis, &rep, 2, argv, NULL) != SVC_OK) {
        svc_redis_reply_destroy(&rep);
        return SVC_EUNAVAIL;
    }
    if (svc_redis_reply_type(rep) == SVC_REDIS_STRING) {
        const char *s = svc_redis_reply_str(rep, NULL);
        uid = strtoll(s, &end, 10);
        if (*end == ':')
            epoch = strtoll(end + 1, NULL, 10);
    }
    svc_redis_reply_destroy(&rep);
    if (uid <= 0) {
        *result = AUTH_R_REVOKED; /* expired or logged out */
        return SVC_OK;
    }
    rc = auth_user_by_id(a, uid, u);
    if (rc == SVC_ENOTFOUND || (rc == SVC_OK && u->pw_epoch != epoch)) {
        *result = AUTH_R_REVOKED; /* user deleted, renamed or password changed */
        return SVC_OK;
    }
    if (rc != SVC_OK)
        return SVC_EUNAVAIL;
    *result = u->blocked ? AUTH_R_BLOCKED : AUTH_R_OK;
    return SVC_OK;
}

/* ---- Authorization parsing ---- */

int auth_parse_basic(const char *header, char *decoded, size_t len, char **user, char **pass)
{
    const char *b64;
    char *colon;
    long n;

    if (strncasecmp(header, "Basic ", 6) != 0)
        return SVC_EINVAL;
    b64 = header + 6;
    while (*b64 == ' ')
        b64++;
    n = svc_util_base64_decode(b64, strlen(b64), decoded, len);
    if (n < 0 || memchr(decoded, '\0', (size_t)n) != NULL)
        return SVC_EINVAL;
    colon = strchr(decoded, ':');
    if (colon == NULL)
        return SVC_EINVAL;
    *colon = '\0';
    *user = decoded;
    *pass = colon + 1;
    return SVC_OK;
}

/* ---- the whole check ---- */

int auth_authenticate(struct auth_ctx *a, const char *authorization, const char *cookie,
                      const char *client_ip, const char *rid, enum auth_result *result,
                      enum auth_scheme *scheme, struct auth_identity *id)
{
    char decoded[AUTH_CREDENTIALS_MAX + 1];
    char token[AUTH_SESSION_TOKEN_LEN + 8];
    const char *cred = NULL, *bearer = NULL;
    char *user = NULL, *pass = NULL;
    struct cache_slot slot;
    struct auth_user u;
    struct auth_key k;
    unsigned char digest[SVC_CRYPTO_BLAKE2B_BYTES];
    int64_t now = svc_util_wallclock_ms(), version;
    int rc = SVC_OK;

    *result = AUTH_R_MISSING;
    *scheme = AUTH_SCHEME_NONE;
    id->retry_after_ms = 0;
    memset(&k, 0, sizeof(k));
    decoded[0] = token[0] = '\0';

    /* 1. Which credentials, which scheme. */
    if (authorization != NULL && authorization[0] != '\0') {
        if (strncasecmp(authorization, "Basic ", 6) == 0) {
            *scheme = AUTH_SCHEME_BASIC;
            if (auth_parse_basic(authorization, decoded, sizeof(decoded), &user, &pass) != SVC_OK) {
                *result = AUTH_R_MALFORMED;
                goto out;
            }
            cred = authorization;
        } else if (strncasecmp(authorization, "Bearer ", 7) == 0) {
            bearer = authorization + 7;
            while (*bearer == ' ')
                bearer++;
            *scheme = AUTH_SCHEME_BEARER;
            if (bearer[0] == '\0' || strlen(bearer) > AUTH_CREDENTIALS_MAX) {
                *result = AUTH_R_MALFORMED;
                goto out;
            }
            cred = bearer;
            if (strncmp(bearer, "sk-", 3) == 0) {
                *scheme = AUTH_SCHEME_APIKEY;
            } else if (strncmp(bearer, "cws_", 4) == 0) {
                *scheme = AUTH_SCHEME_SESSION;
                if (!session_token_valid(bearer)) {
                    *result = AUTH_R_UNKNOWN;
                    goto out;
                }
                snprintf(token, sizeof(token), "%s", bearer);
            } else if (strchr(bearer, ':') != NULL) {
                char *colon;
                snprintf(decoded, sizeof(decoded), "%s", bearer);
                colon = strchr(decoded, ':');
                *colon = '\0';
                user = decoded;
                pass = colon + 1;
            } else {
                *result = AUTH_R_UNKNOWN;
                goto out;
            }
        } else {
            *result = AUTH_R_MALFORMED;
            goto out;
        }
    } else if (cookie != NULL && auth_cookie_token(cookie, token, sizeof(token)) == SVC_OK) {
        *scheme = AUTH_SCHEME_SESSION;
        if (!session_token_valid(token)) {
            *result = AUTH_R_UNKNOWN;
            goto out;
        }
        cred = token;
    } else {
        goto out; /* AUTH_R_MISSING */
    }
    /* Empty user names or passwords never authenticate (the seed's S1): an empty name is an
     * unknown user, an empty password a wrong one (so chat answers with the seed's text). */
    if (user != NULL && (user[0] == '\0' || pass[0] == '\0')) {
        *result = user[0] == '\0' ? AUTH_R_UNKNOWN : AUTH_R_WRONG_PASSWORD;
        goto out;
    }

    /* 2. The cache. */
    cred_digest(a->cache, *scheme, cred, digest);
    if (cache_get(a->cache, digest, &slot, now, a->cfg.cache_ttl_ms)) {
        int fresh = now - slot.checked_ms < a->cfg.cache_recheck_ms;
        int64_t used_write = 0;
        if (!fresh) {
            rc = current_version(a, slot.id.user_id, &version);
            if (rc == SVC_OK && version == slot.version && *scheme == AUTH_SCHEME_SESSION &&
                session_exists(a, token) == 0)
                rc = SVC_ENOTFOUND;
            if (rc == SVC_OK && version == slot.version) {
                fresh = 1;
                if (slot.key_row > 0 && now - slot.used_write_ms > 60000 &&
                    auth_key_mark_used(a, slot.key_row) == SVC_OK)
                    used_write = now;
            }
            cache_touch(a->cache, digest, now, !fresh, used_write);
        }
        if (fresh) {
            *id = slot.id;
            *result = slot.id.blocked ? AUTH_R_BLOCKED : AUTH_R_OK;
            rc = SVC_OK;
            goto out;
        }
    }

    /* 3. Full verification. */
    rc = SVC_OK;
    switch (*scheme) {
    case AUTH_SCHEME_BASIC:
    case AUTH_SCHEME_BEARER:
        rc = auth_check_password(a, user, pass, client_ip, rid, result, &u,
                                 &id->retry_after_ms);
        break;
    case AUTH_SCHEME_SESSION:
        rc = session_verify(a, token, result, &u);
        break;
    case AUTH_SCHEME_APIKEY:
        rc = auth_key_by_secret(a, bearer, &k);
        if (rc == SVC_ENOTFOUND) {
            *result = AUTH_R_UNKNOWN;
            rc = SVC_OK;
            break;
        }
        if (rc != SVC_OK)
            break;
        if (k.revoked_at != 0) {
            *result = AUTH_R_REVOKED;
            break;
        }
        rc = auth_user_by_id(a, k.user_id, &u);
        if (rc == SVC_ENOTFOUND) {
            *result = AUTH_R_REVOKED;
            rc = SVC_OK;
            break;
        }
        if (rc == SVC_OK) {
            *result = u.blocked ? AUTH_R_BLOCKED : AUTH_R_OK;
            if (auth_key_mark_used(a, k.id) != SVC_OK)
                SVC_LOG_WARN(rid, "authenticate", "cannot record the use of key %s", k.prefix);
        }
        break;
    default:
        *result = AUTH_R_MALFORMED;
        break;
    }
    if (rc != SVC_OK) {
        rc = SVC_EUNAVAIL;
        goto out;
    }
    if (*result != AUTH_R_OK && *result != AUTH_R_BLOCKED)
        goto out;
    identity_from_user(&u, id);
    /* A static user's unlimited billing account is made at start-up in the background; the
     * first verification in this process makes sure of it before chat reserves. */
    if (u.is_static && a->billing != NULL &&
        auth_billing_ensure_static(a, u.id, u.username) != SVC_OK)
        SVC_LOG_WARN(rid, "billing", "cannot create the account of static user %s yet", u.username);
    if (*scheme == AUTH_SCHEME_APIKEY) {
        snprintf(id->key_id, sizeof(id->key_id), "%s", k.prefix);
        snprintf(id->models, sizeof(id->models), "%s", k.models);
        id->rpm = k.rpm;
        id->tpm = k.tpm;
    }
    memset(&slot, 0, sizeof(slot));
    memcpy(slot.digest, digest, sizeof(digest));
    slot.scheme = *scheme;
    slot.id = *id;
    slot.version = u.version;
    slot.key_row = k.id;
    slot.created_ms = slot.checked_ms = slot.used_write_ms = now;
    cache_put(a->cache, &slot);
    auth_version_publish(a, u.id, u.version);
out:
    svc_util_wipe(decoded, sizeof(decoded));
    svc_util_wipe(token, sizeof(token));
    return rc;
}

/* ---- billing accounts of static users ---- */

int auth_billing_ensure_static(struct auth_ctx *a, int64_t id, const char *name)
{
    Chatweb__Billing__CreateAccountRequest in = CHATWEB__BILLING__CREATE_ACCOUNT_REQUEST__INIT;
    ProtobufCMessage *out = NULL;
    char err[256];
    size_t i;
    int rc, known = 0;

    if (a->billing == NULL)
        return SVC_EUNAVAIL;
    pthread_mutex_lock(&a->static_lock);
    for (i = 0; i < a->n_static_ready && !known; i++)
        known = a->static_ready[i] == id;
    pthread_mutex_unlock(&a->static_lock);
    if (known)
        return SVC_OK;
    in.user_id = id;
    in.username = (char *)name;
    in.unlimited = 1;
    in.actor = "auth:static";
    rc = svc_rpc_call(a->billing, "/rpc/Billing/CreateAccount", &in.base,
                      &chatweb__billing__create_account_response__descriptor, &out, NULL, err,
                      sizeof(err));
    if (out != NULL)
        svc_rpc_message_destroy(&out);
    if (rc != SVC_OK)
        return rc;
    pthread_mutex_lock(&a->static_lock);
    for (i = 0; i < a->n_static_ready && a->static_ready[i] != id; i++)
        ;
    if (i == a->n_static_ready && a->n_static_ready < AUTH_STATIC_MAX)
        a->static_ready[a->n_static_ready++] = id;
    pthread_mutex_unlock(&a->static_lock);
    return SVC_OK;
}

/* ---- static users' billing accounts: billing may start after us, so retry in background ---- */

static struct {
    struct auth_ctx *a;
    pthread_t thread;
    int running;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stop;
    int64_t ids[AUTH_STATIC_MAX];
    char names[AUTH_STATIC_MAX][AUTH_NAME_MAX + 1];
    size_t n;
} statics = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

/* Sleeps ms unless asked to stop; 1 when asked to stop. */
static int statics_wait(long ms)
{
    struct timespec ts;
    int stop;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (ms % 1000) * 1000000L;
    ts.tv_sec += ms / 1000 + ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&statics.lock);
    if (!statics.stop)
        pthread_cond_timedwait(&statics.cond, &statics.lock, &ts);
    stop = statics.stop;
    pthread_mutex_unlock(&statics.lock);
    return stop;
}

static void *static_accounts_main(void *ctx)
{
    size_t done = 0;
    long delay_ms = 1000;

    (void)ctx;
    /* The first try waits: auth starts before billing, and a refused connect through a
     * balancer (nginx max_fails) can mark billing down for every caller for a while. */
    if (statics_wait(3000))
        goto out;
    for (;;) {
        while (done < statics.n &&
               auth_billing_ensure_static(statics.a, statics.ids[done], statics.names[done]) == SVC_OK)
            done++;
        if (done == statics.n) {
            SVC_LOG_INFO(NULL, "startup", "billing accounts of %zu static user(s) are in place",
                         statics.n);
            break;
        }
        if (statics_wait(delay_ms))
            break;
        if (delay_ms < 30000)
            delay_ms *= 2;
    }
out:
    svc_db_thread_end();
    return NULL;
}

int auth_static_accounts_start(struct auth_ctx *a, const int64_t *ids, size_t n)
{
    size_t i;

    if (n > AUTH_STATIC_MAX)
        return SVC_EINVAL;
    if (n == 0 || a->billing == NULL)
        return SVC_OK;
    statics.a = a;
    statics.n = n;
    for (i = 0; i < n; i++) {
        struct auth_user u;
        statics.ids[i] = ids[i];
        statics.names[i][0] = '\0';
        if (auth_user_by_id(a, ids[i], &u) == SVC_OK)
            snprintf(statics.names[i], sizeof(statics.names[i]), "%s", u.username);
        svc_util_wipe(&u, sizeof(u));
    }
    if (pthread_create(&statics.thread, NULL, static_accounts_main, NULL) != 0)
        return SVC_ENOMEM;
    statics.running = 1;
    return SVC_OK;
}

void auth_static_accounts_stop(void)
{
    if (!statics.running)
        return;
    pthread_mutex_lock(&statics.lock);
    statics.stop = 1;
    pthread_cond_signal(&statics.cond);
    pthread_mutex_unlock(&statics.lock);
    pthread_join(statics.thread, NULL);
    statics.running = 0;
}
