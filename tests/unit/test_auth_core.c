/*
 * Unit tests of auth_core without Redis (SQLite in a temporary directory): username rules,
 * Authorization and Cookie parsing, argon2id hashing, the empty-credential rules (the seed's
 * S1), static-user sync (S13), API keys, the verification cache and its invalidation through
 * the SQL fallback (the path taken when Redis is unavailable).
 */
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "svc/db.h"
#include "svc/log.h"
#include "test.h"

static struct auth_ctx a;
static char dir[] = "/tmp/test-auth-XXXXXX";

static char *basic(const char *user, const char *pw, char *out, size_t len)
{
    char raw[256];

    T_ASSERT(len > 6);
    snprintf(raw, sizeof(raw), "%s:%s", user, pw);
    memcpy(out, "Basic ", 6);
    /* sodium aborts when out is too small: a test bug, loudly */
    sodium_bin2base64(out + 6, len - 6, (const unsigned char *)raw, strlen(raw),
                      sodium_base64_VARIANT_ORIGINAL);
    return out;
}

static enum auth_result authn(const char *authz, const char *cookie, struct auth_identity *id)
{
    enum auth_result r;
    enum auth_scheme s;
    struct auth_identity tmp;

    T_EQ_INT(auth_authenticate(&a, authz, cookie, "10.0.0.1", NULL, &r, &s, id ? id : &tmp),
             SVC_OK);
    return r;
}

static void test_username_rules(void)
{
    T_ASSERT(auth_username_valid("alice"));
    T_ASSERT(auth_username_valid("a.b-c_d@e"));
    T_ASSERT(auth_username_valid("1"));
    T_ASSERT(!auth_username_valid(""));
    T_ASSERT(!auth_username_valid("-x"));
    T_ASSERT(!auth_username_valid(".x"));
    T_ASSERT(!auth_username_valid("a b"));
    T_ASSERT(!auth_username_valid("a:b"));
    T_ASSERT(!auth_username_valid("ä"));
    T_ASSERT(
        auth_username_valid("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
    T_ASSERT(
        !auth_username_valid("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
}

static void test_parsing(void)
{
    char d[64], tok[128], *u, *p;

    T_EQ_INT(auth_parse_basic("Basic dTpw", d, sizeof(d), &u, &p), SVC_OK); /* u:p */
    T_EQ_STR(u, "u");
    T_EQ_STR(p, "p");
    T_EQ_INT(auth_parse_basic("basic   dTpw", d, sizeof(d), &u, &p), SVC_OK);
    T_EQ_INT(auth_parse_basic("Basic dXA=", d, sizeof(d), &u, &p), SVC_EINVAL); /* "up" */
    T_EQ_INT(auth_parse_basic("Basic !!!", d, sizeof(d), &u, &p), SVC_EINVAL);
    T_EQ_INT(auth_parse_basic("Bearer dTpw", d, sizeof(d), &u, &p), SVC_EINVAL);
    T_EQ_INT(auth_parse_basic("Basic dTpwAHg=", d, sizeof(d), &u, &p), SVC_EINVAL); /* NUL */

    T_EQ_INT(auth_cookie_token("a=1; chatweb_session=cws_x; b=2", tok, sizeof(tok)), SVC_OK);
    T_EQ_STR(tok, "cws_x");
    T_EQ_INT(auth_cookie_token("chatweb_session=abc", tok, sizeof(tok)), SVC_OK);
    T_EQ_STR(tok, "abc");
    T_EQ_INT(auth_cookie_token("xchatweb_session=abc", tok, sizeof(tok)), SVC_ENOTFOUND);
    T_EQ_INT(auth_cookie_token("chatweb_session=", tok, sizeof(tok)), SVC_ENOTFOUND);
    T_EQ_INT(auth_cookie_token("", tok, sizeof(tok)), SVC_ENOTFOUND);
}

static void test_hashing(void)
{
    char h1[AUTH_HASH_MAX + 1], h2[AUTH_HASH_MAX + 1];

    T_EQ_INT(auth_pw_hash(&a, "secret-pw", h1), SVC_OK);
    T_EQ_INT(auth_pw_hash(&a, "secret-pw", h2), SVC_OK);
    T_ASSERT(strncmp(h1, "$argon2id$", 10) == 0);
    T_ASSERT(strcmp(h1, h2) != 0); /* salted */
    T_ASSERT(strstr(h1, "secret-pw") == NULL);
    T_ASSERT(auth_pw_verify(h1, "secret-pw"));
    T_ASSERT(!auth_pw_verify(h1, "secret-pw "));
    T_ASSERT(!auth_pw_verify(h1, ""));
    T_ASSERT(!auth_pw_verify("", "secret-pw"));
}

static void test_empty_credentials(void)
{
    char h[256];
    int64_t id;
    char hash[AUTH_HASH_MAX + 1];

    T_EQ_INT(auth_pw_hash(&a, "pw-first", hash), SVC_OK);
    T_EQ_INT(auth_user_create(&a, "first", hash, 0, &id), SVC_OK);
    T_EQ_INT(authn(basic("first", "pw-first", h, sizeof(h)), NULL, NULL), AUTH_R_OK);
    T_EQ_INT(authn(basic("first", "", h, sizeof(h)), NULL, NULL), AUTH_R_WRONG_PASSWORD);
    T_EQ_INT(authn(basic("", "", h, sizeof(h)), NULL, NULL), AUTH_R_UNKNOWN);
    T_EQ_INT(authn(basic("", "pw-first", h, sizeof(h)), NULL, NULL), AUTH_R_UNKNOWN);
    T_EQ_INT(authn("Bearer :", NULL, NULL), AUTH_R_UNKNOWN);
    T_EQ_INT(authn("Bearer first:", NULL, NULL), AUTH_R_WRONG_PASSWORD);
    T_EQ_INT(authn("Bearer ", NULL, NULL), AUTH_R_MALFORMED);
    T_EQ_INT(authn("", NULL, NULL), AUTH_R_MISSING);
    T_EQ_INT(authn(NULL, NULL, NULL), AUTH_R_MISSING);
    T_EQ_INT(authn(NULL, "chatweb_session=", NULL), AUTH_R_MISSING);
    T_EQ_INT(authn("Bearer first:pw-first", NULL, NULL), AUTH_R_OK);
}

static void test_cache_invalidation(void)
{
    char h[256], hash[AUTH_HASH_MAX + 1];
    struct auth_identity id;
    struct auth_user u;

    /* the user of test_empty_credentials, made here when this case runs alone (T_CASE) */
    if (auth_user_by_name(&a, "first", &u) != SVC_OK) {
        int64_t uid;
        T_EQ_INT(auth_pw_hash(&a, "pw-first", hash), SVC_OK);
        T_EQ_INT(auth_user_create(&a, "first", hash, 0, &uid), SVC_OK);
    }
    /* Without Redis, every recheck reads the version from SQL. */
    a.cfg.cache_recheck_ms = 0;
    basic("first", "pw-first", h, sizeof(h));
    T_EQ_INT(authn(h, NULL, &id), AUTH_R_OK);
    T_EQ_STR(id.username, "first");
    T_EQ_INT(auth_user_by_name(&a, "first", &u), SVC_OK);
    T_EQ_INT(auth_user_set_model(&a, u.id, "gpt-4o"), SVC_OK);
    T_EQ_INT(authn(h, NULL, &id), AUTH_R_OK);
    T_EQ_STR(id.model, "gpt-4o");
    T_EQ_INT(auth_user_set_blocked(&a, u.id, 1), SVC_OK);
    T_EQ_INT(authn(h, NULL, &id), AUTH_R_BLOCKED);
    T_ASSERT(id.blocked);
    T_EQ_INT(auth_user_set_blocked(&a, u.id, 0), SVC_OK);
    T_EQ_INT(auth_pw_hash(&a, "pw-second", hash), SVC_OK);
    T_EQ_INT(auth_user_set_credentials(&a, u.id, NULL, hash), SVC_OK);
    T_EQ_INT(authn(h, NULL, NULL), AUTH_R_WRONG_PASSWORD);
    T_EQ_INT(authn(basic("first", "pw-second", h, sizeof(h)), NULL, NULL), AUTH_R_OK);
    T_EQ_INT(auth_user_delete(&a, u.id), SVC_OK);
    T_EQ_INT(authn(h, NULL, NULL), AUTH_R_UNKNOWN);
    a.cfg.cache_recheck_ms = 250;
}

static void test_keys(void)
{
    char key[AUTH_KEY_LEN + 1], authz[128], hash[AUTH_HASH_MAX + 1];
    struct auth_identity id;
    struct auth_key k;
    int64_t uid;

    a.cfg.cache_recheck_ms = 0;
    T_EQ_INT(auth_pw_hash(&a, "pw-keys", hash), SVC_OK);
    T_EQ_INT(auth_user_create(&a, "keyuser", hash, 0, &uid), SVC_OK);
    T_EQ_INT(auth_key_create(&a, uid, "ci", "m1,m2", 10, 1000, key, &k), SVC_OK);
    T_EQ_INT(strlen(key), AUTH_KEY_LEN);
    T_ASSERT(strncmp(key, k.prefix, AUTH_KEY_PREFIX_LEN) == 0);
    snprintf(authz, sizeof(authz), "Bearer %s", key);
    T_EQ_INT(authn(authz, NULL, &id), AUTH_R_OK);
    T_EQ_STR(id.key_id, k.prefix);
    T_EQ_STR(id.models, "m1,m2");
    T_EQ_INT(id.rpm, 10);
    T_EQ_INT(auth_key_set_limits(&a, uid, k.prefix, "", 0, 0), SVC_OK);
    T_EQ_INT(authn(authz, NULL, &id), AUTH_R_OK);
    T_EQ_INT(id.rpm, 0);
    T_EQ_INT(auth_key_revoke(&a, uid, k.prefix), SVC_OK);
    T_EQ_INT(authn(authz, NULL, NULL), AUTH_R_REVOKED);
    T_EQ_INT(auth_key_revoke(&a, uid, k.prefix), SVC_ENOTFOUND);
    authz[strlen(authz) - 1] ^= 1;
    T_EQ_INT(authn(authz, NULL, NULL), AUTH_R_UNKNOWN);
    a.cfg.cache_recheck_ms = 250;
}

static void test_static_sync(void)
{
    char err[256], h[256];
    int64_t ids[4];
    size_t n;

    T_EQ_INT(auth_static_users_sync(&a, "s1,s2", "p1", ids, 4, &n, err, sizeof(err)), SVC_EINVAL);
    T_ASSERT(strstr(err, "basic auth setting error") != NULL);
    T_EQ_INT(auth_static_users_sync(&a, "s1,s2", "p1,", ids, 4, &n, err, sizeof(err)), SVC_EINVAL);
    T_ASSERT(strstr(err, "p1") == NULL); /* passwords never in messages */
    T_EQ_INT(auth_static_users_sync(&a, "s1,s1", "p1,p2", ids, 4, &n, err, sizeof(err)),
             SVC_EINVAL);
    T_EQ_INT(auth_static_users_sync(&a, "s1,,s2", "p1,,p2", ids, 4, &n, err, sizeof(err)), SVC_OK);
    T_EQ_INT(n, 2);
    /* S13: the stored password differs at the next start; the environment wins. */
    T_EQ_INT(auth_static_users_sync(&a, "s1,s2", "p1-new,p2", ids, 4, &n, err, sizeof(err)),
             SVC_OK);
    a.cfg.cache_recheck_ms = 0;
    T_EQ_INT(authn(basic("s1", "p1", h, sizeof(h)), NULL, NULL), AUTH_R_WRONG_PASSWORD);
    T_EQ_INT(authn(basic("s1", "p1-new", h, sizeof(h)), NULL, NULL), AUTH_R_OK);
    a.cfg.cache_recheck_ms = 250;
}

int main(void)
{
    char p[256];

    T_ASSERT(sodium_init() >= 0);
    T_ASSERT(mkdtemp(dir) != NULL);
    svc_log_setup("test_auth_core", SVC_LOG_LVL_ERR);
    pthread_mutex_init(&a.static_lock, NULL);
    a.cfg.ops_key = "";
    a.cfg.session_ttl_s = 60;
    a.cfg.cache_slots = 64;
    a.cfg.cache_ttl_ms = 60000;
    a.cfg.cache_recheck_ms = 250;
    a.cfg.throttle_window_s = 60;
    a.cfg.throttle_user_max = 10;
    a.cfg.throttle_ip_max = 10;
    a.cfg.pw_ops = 1;
    a.cfg.pw_mem = 8192 * 1024;
    a.cfg.pw_min = 6;
    T_EQ_INT(svc_db_create(&a.db, "sqlite:auth.db", dir, NULL, NULL, 0), SVC_OK);
    T_EQ_INT(auth_store_migrate(a.db), SVC_OK);
    T_EQ_INT(auth_store_migrate(a.db), SVC_OK); /* idempotent */
    a.on_user_changed = auth_version_publish;
    T_EQ_INT(auth_cache_create(&a.cache, a.cfg.cache_slots), SVC_OK);
    T_EQ_INT(auth_pw_setup(&a), SVC_OK);

    T_RUN(test_username_rules);
    T_RUN(test_parsing);
    T_RUN(test_hashing);
    T_RUN(test_empty_credentials);
    T_RUN(test_cache_invalidation);
    T_RUN(test_keys);
    T_RUN(test_static_sync);

    auth_cache_destroy(&a.cache);
    auth_cache_destroy(&a.cache); /* accepts NULL */
    svc_db_destroy(&a.db);
    svc_db_teardown();
    snprintf(p, sizeof(p), "%s/auth.db", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/auth.db-wal", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/auth.db-shm", dir);
    unlink(p);
    rmdir(dir);
    return 0;
}
