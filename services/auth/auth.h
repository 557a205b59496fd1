#ifndef AUTH_AUTH_H
#define AUTH_AUTH_H

/*
 * chatweb-auth internals shared by its modules (see docs/accounts.md for the design):
 *
 *   store.c   users, API keys and the audit log in SQL; password hashing (argon2id)
 *   authn.c   "who is this?": Basic, login sessions, API keys; the verification cache,
 *             failed-login throttling, session tokens
 *   ops.c     the operator API (/accounts, /admin/accounts)
 *   web.c     /api/session /api/verify /api/login /api/logout /api/me and the RPC methods
 *
 * Nothing here is thread-unsafe unless said: every function may be called from any HTTP pool
 * thread.
 * Secrets (passwords, API keys, session tokens) are never logged, never stored in clear, and
 * wiped from stack buffers after use.
 */

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "svc/err.h"

struct svc_db;
struct svc_db_conn;
struct svc_redis;
struct svc_rpc_client;
struct auth_cache;

#define AUTH_NAME_MAX 64       /* bytes of a username */
#define AUTH_PASSWORD_MAX 128  /* bytes of a password */
#define AUTH_MODEL_MAX 255     /* bytes of a /model setting */
#define AUTH_HASH_MAX 128      /* SVC_CRYPTO_PWHASH_STRBYTES */
#define AUTH_KEY_PREFIX_LEN 11 /* "sk-" + 8 hex: the visible part of an API key */
#define AUTH_KEY_LEN 51        /* "sk-" + 48 hex */
#define AUTH_KEY_NAME_MAX 64
#define AUTH_MODELS_MAX 1024      /* bytes of a key's comma-separated model allow-list */
#define AUTH_SESSION_TOKEN_LEN 68 /* "cws_" + 64 hex */
#define AUTH_CREDENTIALS_MAX 1024 /* bytes of a decoded Authorization value */
#define AUTH_REDIS_PREFIX "chatweb:auth:"
#define AUTH_OPS_KEY_MIN 24 /* shortest OPS_KEY accepted at start-up */

/* ---- configuration (parsed once in main.c) ---- */

struct auth_cfg {
    const char *ops_key;       /* "" = ops API disabled */
    int session_auth;          /* /api/session auth: -1 auto, 0 false, 1 true */
    int64_t session_ttl_s;     /* login session lifetime */
    int cookie_secure;         /* add "Secure" to the session cookie */
    int64_t cache_ttl_ms;      /* a cached verification is redone after this */
    int64_t cache_recheck_ms;  /* a cached entry re-reads the user's version after this */
    size_t cache_slots;        /* verification cache size */
    int64_t throttle_window_s;    /* failed-login memory (docs/accounts.md) */
    int64_t throttle_user_max;    /* attempts per (account, client IP) before delays */
    int64_t throttle_ip_max;      /* distinct failed accounts per client IP per window */
    int64_t throttle_delay_ms;    /* first delay; doubles with each further attempt */
    int64_t throttle_max_delay_ms; /* the longest delay */
    int64_t ops_throttle_max;  /* wrong operator secrets per client IP per window (0 = off) */
    int64_t ops_throttle_window_s;
    unsigned long long pw_ops; /* argon2id opslimit */
    size_t pw_mem;             /* argon2id memlimit in bytes */
    size_t pw_min;             /* shortest password accepted from ops / ChangeCredentials */
    const char *ops_link;      /* OPS_LINK, for messages */
    const char *health_urls;   /* HEALTH_URLS: name=url,... (ops `health`) */
    int64_t health_timeout_ms; /* bound of each /readyz read */
};

#define AUTH_STATIC_MAX 256 /* static users whose billing account is known to exist */

struct auth_ctx {
    struct auth_cfg cfg;
    struct svc_db *db;
    struct svc_redis *redis;        /* NULL when REDIS_URL is unset (local cache only) */
    struct svc_rpc_client *billing; /* NULL when BILLING_URL is unset */
    struct auth_cache *cache;
    /* Told after store.c changed user id (its new version): auth_version_publish, set by whoever
     * builds the context. A pointer so that the store, below the domain logic, never calls up. */
    void (*on_user_changed)(struct auth_ctx *a, int64_t id, int64_t version);
    /* static users with a billing account in place (authn.c auth_billing_ensure_static) */
    pthread_mutex_t static_lock;
    int64_t static_ready[AUTH_STATIC_MAX];
    size_t n_static_ready;
};

/* ---- records ---- */

struct auth_user {
    int64_t id;
    char username[AUTH_NAME_MAX + 1];
    char pw_hash[AUTH_HASH_MAX + 1];
    int is_static;
    int blocked;
    char model[AUTH_MODEL_MAX + 1];
    int64_t version;  /* bumped by every change that affects authentication or the identity */
    int64_t pw_epoch; /* bumped by password changes and renames: ends login sessions */
    int64_t created_at;
    int64_t updated_at;
};

struct auth_key {
    int64_t id;
    int64_t user_id;
    char prefix[AUTH_KEY_PREFIX_LEN + 1];
    char name[AUTH_KEY_NAME_MAX + 1];
    int64_t created_at;
    int64_t last_used_at;
    int64_t revoked_at; /* 0 = active */
    char models[AUTH_MODELS_MAX + 1];
    int64_t rpm;
    int64_t tpm;
};

/* ---- store.c ---- */

/* Applies the "auth" migrations. */
int auth_store_migrate(struct svc_db *db) SVC_MUST_CHECK;

/* 1 when name satisfies the username rules (1..64 of [A-Za-z0-9_.@-], not starting with
 * '-' or '.'), else 0. */
int auth_username_valid(const char *name);

/* Hashes a password with argon2id into out[AUTH_HASH_MAX + 1]. SVC_ENOMEM when the memory
 * limit cannot be allocated. */
int auth_pw_hash(const struct auth_ctx *a, const char *password, char *out) SVC_MUST_CHECK;

/* Prepares the dummy hash used by auth_pw_dummy_verify (once, at start-up). */
int auth_pw_setup(const struct auth_ctx *a) SVC_MUST_CHECK;

/* 1 when password matches the stored hash (constant-time in the hash), else 0. */
int auth_pw_verify(const char *hash, const char *password);

/* Burns the time of one verification (unknown users must not answer faster). */
void auth_pw_dummy_verify(const char *password);

/* The user by name / id. 0, SVC_ENOTFOUND, or a DB error. */
int auth_user_by_name(struct auth_ctx *a, const char *name, struct auth_user *u) SVC_MUST_CHECK;
int auth_user_by_id(struct auth_ctx *a, int64_t id, struct auth_user *u) SVC_MUST_CHECK;

/* The current version of user id (SVC_ENOTFOUND when deleted). */
int auth_user_version(struct auth_ctx *a, int64_t id, int64_t *version) SVC_MUST_CHECK;

/* Creates a user. SVC_EEXIST when the name is taken. */
int auth_user_create(struct auth_ctx *a, const char *name, const char *pw_hash, int is_static,
                     int64_t *id) SVC_MUST_CHECK;

/* Changes; each bumps the version (and publishes it, see auth_version_publish).
 * new_name NULL keeps the name; pw_hash NULL keeps the password. SVC_EEXIST on a name clash,
 * SVC_ENOTFOUND when the user is gone. */
int auth_user_set_credentials(struct auth_ctx *a, int64_t id, const char *new_name,
                              const char *pw_hash) SVC_MUST_CHECK;
int auth_user_set_blocked(struct auth_ctx *a, int64_t id, int blocked) SVC_MUST_CHECK;
int auth_user_set_model(struct auth_ctx *a, int64_t id, const char *model) SVC_MUST_CHECK;
int auth_user_delete(struct auth_ctx *a, int64_t id) SVC_MUST_CHECK;
/* Bumps the version only (after a key change). */
int auth_user_touch(struct auth_ctx *a, int64_t id) SVC_MUST_CHECK;

/* Upserts the BASIC_AUTH_USER accounts: the environment is authoritative (a row with the same
 * name becomes static with the configured password). ids[] receives the user ids (n entries).
 * On an invalid list returns SVC_EINVAL with the reason in err (never containing a password). */
int auth_static_users_validate(const char *users, const char *passwords, char *err,
                               size_t errlen) SVC_MUST_CHECK;
/* The same checks run first by auth_static_users_sync; this one needs no database. */
int auth_static_users_sync(struct auth_ctx *a, const char *users, const char *passwords,
                           int64_t *ids, size_t max_ids, size_t *n, char *err,
                           size_t errlen) SVC_MUST_CHECK;

/* API keys. auth_key_create writes the full key (shown once) into key_out[AUTH_KEY_LEN + 1]. */
int auth_key_create(struct auth_ctx *a, int64_t user_id, const char *name, const char *models,
                    int64_t rpm, int64_t tpm, char *key_out, struct auth_key *k) SVC_MUST_CHECK;
int auth_key_by_secret(struct auth_ctx *a, const char *key, struct auth_key *k) SVC_MUST_CHECK;
int auth_key_revoke(struct auth_ctx *a, int64_t user_id, const char *prefix) SVC_MUST_CHECK;
int auth_key_set_limits(struct auth_ctx *a, int64_t user_id, const char *prefix, const char *models,
                        int64_t rpm, int64_t tpm) SVC_MUST_CHECK;
int auth_key_mark_used(struct auth_ctx *a, int64_t key_id) SVC_MUST_CHECK;

/*
 * Ops idempotency keys (auth_idempotency): a key is bound to the first request it came with
 * (action + a digest of what that request asks for) and, once done, to the reply it got.
 * auth_idem_begin binds key to (action, hash) when it is new (AUTH_IDEM_NEW), or reports what
 * it is bound to: another request (AUTH_IDEM_MISMATCH), this request with its reply copied into
 * reply[replylen] (AUTH_IDEM_DONE), or this request not finished (AUTH_IDEM_PENDING: in flight
 * elsewhere, or it failed; the caller goes on, and billing's own key makes that safe).
 * auth_idem_finish stores the reply. 0 or a DB error.
 */
enum auth_idem_state {
    AUTH_IDEM_NEW = 0,
    AUTH_IDEM_PENDING,
    AUTH_IDEM_DONE,
    AUTH_IDEM_MISMATCH,
};
#define AUTH_IDEM_KEY_MAX 128 /* bytes of an Idempotency-Key (billing's own limit) */
int auth_idem_begin(struct auth_ctx *a, const char *key, const char *action, const char *hash,
                    char *reply, size_t replylen, enum auth_idem_state *state) SVC_MUST_CHECK;
int auth_idem_finish(struct auth_ctx *a, const char *key, const char *reply) SVC_MUST_CHECK;

/* One audit row. detail must never hold a secret. Failures are logged, not returned. */
void auth_audit(struct auth_ctx *a, const char *actor, const char *ip, const char *rid,
                const char *action, const char *target, const char *result, const char *detail);

/* ---- authn.c ---- */

enum auth_scheme {
    AUTH_SCHEME_NONE = 0,
    AUTH_SCHEME_BASIC,   /* Authorization: Basic */
    AUTH_SCHEME_BEARER,  /* Authorization: Bearer user:password (the ChatGPT Web token) */
    AUTH_SCHEME_SESSION, /* login session token, as Bearer or cookie */
    AUTH_SCHEME_APIKEY,  /* Bearer sk-... */
};

/* Mirrors chatweb.auth.AuthResult. */
enum auth_result {
    AUTH_R_OK = 1,
    AUTH_R_MISSING = 2,
    AUTH_R_UNKNOWN = 3,
    AUTH_R_WRONG_PASSWORD = 4,
    AUTH_R_BLOCKED = 5,
    AUTH_R_MALFORMED = 6,
    AUTH_R_THROTTLED = 7,
    AUTH_R_REVOKED = 8,
};

/* What a successful verification yields (also cached). */
struct auth_identity {
    int64_t user_id;
    char username[AUTH_NAME_MAX + 1];
    int is_static;
    int blocked;
    char model[AUTH_MODEL_MAX + 1];
    char key_id[AUTH_KEY_PREFIX_LEN + 1];
    char models[AUTH_MODELS_MAX + 1];
    int64_t rpm;
    int64_t tpm;
    int64_t retry_after_ms; /* AUTH_R_THROTTLED only: how long the client must wait */
};

/* Creates/destroys the verification cache (slots entries). */
int auth_cache_create(struct auth_cache **out, size_t slots) SVC_MUST_CHECK;
void auth_cache_destroy(struct auth_cache **c);

/*
 * Authenticates an Authorization header value and/or a Cookie header (either may be NULL).
 * On AUTH_R_OK and AUTH_R_BLOCKED, *id is filled in; on AUTH_R_THROTTLED, id->retry_after_ms. *scheme tells which scheme was seen.
 * client_ip (may be NULL) is used for throttling. Never returns a DB/Redis error as a result:
 * those give SVC_EUNAVAIL as the function value (the result is then undefined).
 */
int auth_authenticate(struct auth_ctx *a, const char *authorization, const char *cookie,
                      const char *client_ip, const char *rid, enum auth_result *result,
                      enum auth_scheme *scheme, struct auth_identity *id) SVC_MUST_CHECK;

/* Checks username + password with throttling (login, verify, ChangeCredentials). Fills *u on
 * AUTH_R_OK / AUTH_R_BLOCKED, *retry_after_ms (> 0) on AUTH_R_THROTTLED. */
int auth_check_password(struct auth_ctx *a, const char *name, const char *password,
                        const char *client_ip, const char *rid, enum auth_result *result,
                        struct auth_user *u, int64_t *retry_after_ms) SVC_MUST_CHECK;

/*
 * Attempt throttles in Redis (authn.c has the rules): takes one attempt of the counter `key`
 * before a credential is checked. 0 with *retry_after_ms 0: go on (the attempt is counted);
 * 0 with *retry_after_ms > 0: refuse without checking, retry after that long. SVC_EUNAVAIL when
 * Redis is not configured or does not answer (the caller decides; it logs). Atomic across
 * replicas. auth_throttle_refund gives one attempt back (best effort).
 */
int auth_throttle_take(struct auth_ctx *a, const char *key, int64_t free_n, int64_t base_ms,
                       int64_t max_ms, int64_t window_ms, int64_t *retry_after_ms) SVC_MUST_CHECK;
void auth_throttle_refund(struct auth_ctx *a, const char *key);

/* Tells every replica that user id changed (version from SQL). Best effort. */
void auth_version_publish(struct auth_ctx *a, int64_t id, int64_t version);

/* Login sessions. token_out[AUTH_SESSION_TOKEN_LEN + 1]. */
int auth_session_create(struct auth_ctx *a, const struct auth_user *u,
                        char *token_out) SVC_MUST_CHECK;
/* Ends the session of a token (from "Bearer cws_..." or the cookie). Unknown tokens are fine. */
void auth_session_delete(struct auth_ctx *a, const char *authorization, const char *cookie);

/* The session cookie's name. */
#define AUTH_COOKIE_NAME "chatweb_session"

/* Finds AUTH_COOKIE_NAME in a Cookie header; copies the value into out. 0 or SVC_ENOTFOUND. */
int auth_cookie_token(const char *cookie, char *out, size_t outlen) SVC_MUST_CHECK;

/* Splits "Basic base64(user:pass)" into decoded[]; 0 or SVC_EINVAL. */
int auth_parse_basic(const char *header, char *decoded, size_t len, char **user,
                     char **pass) SVC_MUST_CHECK;

/* ---- ops.c / web.c: HTTP handlers (ctx = struct auth_ctx *) ---- */

struct svc_req;
int auth_ops_accounts(void *ctx, struct svc_req *req); /* POST /accounts */

#define AUTH_HEALTH_MAX 64      /* entries of HEALTH_URLS */
#define AUTH_HEALTH_NAME_MAX 64 /* bytes of an entry's name */
#define AUTH_HEALTH_URL_MAX 256 /* bytes of an entry's URL */

/*
 * Checks HEALTH_URLS: "" or comma-separated name=URL entries, name 1..AUTH_HEALTH_NAME_MAX - 1
 * bytes of A-Z a-z 0-9 . _ -, URL http:// or https:// and shorter than AUTH_HEALTH_URL_MAX, at
 * most AUTH_HEALTH_MAX entries. SVC_EINVAL with a one-line reason in err.
 */
int auth_health_urls_check(const char *spec, char *err, size_t errlen) SVC_MUST_CHECK;
int auth_ops_admin_accounts(void *ctx, struct svc_req *req); /* ANY /admin/accounts */
int auth_api_session(void *ctx, struct svc_req *req);
int auth_api_verify(void *ctx, struct svc_req *req);
int auth_api_login(void *ctx, struct svc_req *req);
int auth_api_logout(void *ctx, struct svc_req *req);
int auth_api_me(void *ctx, struct svc_req *req);

/* ---- conversation history of the web UI (conv.c, docs/web.md) ---- */

#define AUTH_CONV_ID_MAX 64             /* conversation ids: [A-Za-z0-9_-], the UI's */
#define AUTH_CONV_TITLE_MAX 200         /* bytes */
#define AUTH_CONV_BODY_MAX (512 * 1024) /* the messages of one conversation, as compact JSON */
#define AUTH_CONV_MAX_PER_USER 1000

/*
 * POST /api/conversations {"action": "list"|"get"|"put"|"delete"|"clear", "id", "title",
 * "updated_ms", "messages"}: the signed-in user's conversations (any scheme Authenticate
 * accepts). Envelope replies; the Unauthorized envelope without valid credentials, 503 when SQL
 * is down. Thread-safe (borrows a pooled SQL connection).
 */
int auth_api_conversations(void *ctx, struct svc_req *req);

/* The RPC registry (web.c). */
struct svc_rpc_registry;
extern struct svc_rpc_registry auth_rpc_registry;
/* Set once in main before serving; used as the RPC handlers' context. */
extern struct auth_ctx *auth_rpc_ctx;

/* ---- replies (web.c) ---- */

/*
 * Replies JSON {"data":data,"message":message,"status":status} with HTTP code http. status NULL
 * omits "status"; data NULL omits "data" unless data_null is set ("data":null). Steals the
 * reference to data. Returns SVC_HTTP_DONE.
 */
struct svc_json;
int auth_reply(struct svc_req *req, int http, const char *status, const char *message,
               struct svc_json *data, int data_null);

/* ---- billing (authn.c) ---- */

/* Creates the billing account of a static user (unlimited) unless this process already did.
 * Idempotent (billing's CreateAccount is). 0 or an RPC error. Thread-safe. */
int auth_billing_ensure_static(struct auth_ctx *a, int64_t id, const char *name) SVC_MUST_CHECK;

/*
 * Starts one thread that makes sure each of the n static users (ids, from
 * auth_static_users_sync) has its billing account, retrying with a growing delay (1 s to 30 s)
 * until billing answers: billing may start after auth. Nothing to do (n == 0, no BILLING_URL):
 * SVC_OK without a thread. SVC_EINVAL past AUTH_STATIC_MAX, SVC_ENOMEM when the thread cannot
 * start (then the accounts are made on first use, auth_billing_ensure_static). Once per process.
 */
int auth_static_accounts_start(struct auth_ctx *a, const int64_t *ids, size_t n) SVC_MUST_CHECK;
/* Stops and joins that thread; nothing when none runs. */
void auth_static_accounts_stop(void);

#endif
