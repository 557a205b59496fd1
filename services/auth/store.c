/*
 * Users, API keys and the audit log in SQL (SQLite or MariaDB through svc/db.h), and password
 * hashing (svc/crypto.h). Passwords are stored as argon2id strings (libsodium's
 * crypto_pwhash_str); API keys as the hex SHA-256 of the key (a key carries 192 random bits, so a
 * fast hash is enough).
 */
#include <stdio.h>
#include <string.h>

#include "auth.h"
#include "svc/crypto.h"
#include "svc/db.h"
#include "svc/log.h"
#include "svc/util.h"

static const struct svc_db_migration auth_migrations[] = {
    {"auth", 1,
     "CREATE TABLE auth_users (id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
     "  username TEXT NOT NULL UNIQUE, pw_hash TEXT NOT NULL,\n"
     "  is_static INTEGER NOT NULL DEFAULT 0, blocked INTEGER NOT NULL DEFAULT 0,\n"
     "  model TEXT NOT NULL DEFAULT '', version INTEGER NOT NULL DEFAULT 1,\n"
     "  pw_epoch INTEGER NOT NULL DEFAULT 1, created_at INTEGER NOT NULL,\n"
     "  updated_at INTEGER NOT NULL)",
     "CREATE TABLE IF NOT EXISTS auth_users (id BIGINT AUTO_INCREMENT PRIMARY KEY,\n"
     "  username VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,\n"
     "  pw_hash VARCHAR(128) COLLATE utf8mb4_bin NOT NULL,\n"
     "  is_static TINYINT NOT NULL DEFAULT 0, blocked TINYINT NOT NULL DEFAULT 0,\n"
     "  model VARCHAR(255) NOT NULL DEFAULT '', version BIGINT NOT NULL DEFAULT 1,\n"
     "  pw_epoch BIGINT NOT NULL DEFAULT 1, created_at BIGINT NOT NULL,\n"
     "  updated_at BIGINT NOT NULL, UNIQUE KEY auth_users_username (username))\n"
     "  ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"},
    {"auth", 2,
     "CREATE TABLE auth_api_keys (id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
     "  user_id INTEGER NOT NULL, prefix TEXT NOT NULL, secret_hash TEXT NOT NULL UNIQUE,\n"
     "  name TEXT NOT NULL DEFAULT '', created_at INTEGER NOT NULL,\n"
     "  last_used_at INTEGER NOT NULL DEFAULT 0, revoked_at INTEGER NOT NULL DEFAULT 0,\n"
     "  models TEXT NOT NULL DEFAULT '', rpm INTEGER NOT NULL DEFAULT 0,\n"
     "  tpm INTEGER NOT NULL DEFAULT 0);\n"
     "CREATE INDEX auth_api_keys_user ON auth_api_keys (user_id, prefix);",
     "CREATE TABLE IF NOT EXISTS auth_api_keys (id BIGINT AUTO_INCREMENT PRIMARY KEY,\n"
     "  user_id BIGINT NOT NULL, prefix VARCHAR(16) COLLATE utf8mb4_bin NOT NULL,\n"
     "  secret_hash CHAR(64) COLLATE utf8mb4_bin NOT NULL,\n"
     "  name VARCHAR(64) NOT NULL DEFAULT '', created_at BIGINT NOT NULL,\n"
     "  last_used_at BIGINT NOT NULL DEFAULT 0, revoked_at BIGINT NOT NULL DEFAULT 0,\n"
     "  models VARCHAR(1024) NOT NULL DEFAULT '', rpm BIGINT NOT NULL DEFAULT 0,\n"
     "  tpm BIGINT NOT NULL DEFAULT 0, UNIQUE KEY auth_api_keys_hash (secret_hash),\n"
     "  KEY auth_api_keys_user (user_id, prefix)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"},
    {"auth", 3,
     "CREATE TABLE auth_audit (id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
     "  at_ms INTEGER NOT NULL, actor TEXT NOT NULL, client_ip TEXT NOT NULL,\n"
     "  request_id TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,\n"
     "  result TEXT NOT NULL, detail TEXT NOT NULL)",
     "CREATE TABLE IF NOT EXISTS auth_audit (id BIGINT AUTO_INCREMENT PRIMARY KEY,\n"
     "  at_ms BIGINT NOT NULL, actor VARCHAR(64) NOT NULL, client_ip VARCHAR(64) NOT NULL,\n"
     "  request_id VARCHAR(128) NOT NULL, action VARCHAR(32) NOT NULL,\n"
     "  target VARCHAR(128) NOT NULL, result VARCHAR(64) NOT NULL,\n"
     "  detail VARCHAR(1024) NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"},
    /* ops Idempotency-Key -> the request it was first used with, and the reply it got */
    {"auth", 4,
     "CREATE TABLE auth_idempotency (idem_key TEXT PRIMARY KEY, action TEXT NOT NULL,\n"
     "  body_hash TEXT NOT NULL, reply TEXT, created_at_ms INTEGER NOT NULL)",
     "CREATE TABLE IF NOT EXISTS auth_idempotency (\n"
     "  idem_key VARCHAR(128) COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,\n"
     "  action VARCHAR(32) NOT NULL, body_hash CHAR(64) NOT NULL, reply TEXT NULL,\n"
     "  created_at_ms BIGINT NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"},
    /* the web UI's conversation history (conv.c) */
    {"auth", 5,
     "CREATE TABLE auth_conversations (user_id INTEGER NOT NULL, conv_id TEXT NOT NULL,\n"
     "  title TEXT NOT NULL, updated_ms INTEGER NOT NULL, messages TEXT NOT NULL,\n"
     "  PRIMARY KEY (user_id, conv_id))",
     "CREATE TABLE IF NOT EXISTS auth_conversations (user_id BIGINT NOT NULL,\n"
     "  conv_id VARCHAR(64) COLLATE utf8mb4_bin NOT NULL, title VARCHAR(255) NOT NULL,\n"
     "  updated_ms BIGINT NOT NULL, messages MEDIUMTEXT NOT NULL,\n"
     "  PRIMARY KEY (user_id, conv_id)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"},
};

int auth_store_migrate(struct svc_db *db)
{
    return svc_db_migrate(db, auth_migrations,
                          sizeof(auth_migrations) / sizeof(auth_migrations[0]));
}

static int64_t now_s(void)
{
    return svc_util_wallclock_ms() / 1000;
}

int auth_username_valid(const char *name)
{
    size_t n = strlen(name), i;

    if (n == 0 || n > AUTH_NAME_MAX || name[0] == '-' || name[0] == '.')
        return 0;
    for (i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '@' || c == '-'))
            return 0;
    }
    return 1;
}

/* ---- passwords ---- */

int auth_pw_hash(const struct auth_ctx *a, const char *password, char *out)
{
    char h[SVC_CRYPTO_PWHASH_STRBYTES];

    if (svc_crypto_pwhash(h, password, strlen(password), a->cfg.pw_ops, a->cfg.pw_mem) != SVC_OK)
        return SVC_ENOMEM;
    snprintf(out, AUTH_HASH_MAX + 1, "%s", h);
    return SVC_OK;
}

int auth_pw_verify(const char *hash, const char *password)
{
    if (hash == NULL || hash[0] == '\0' || password == NULL || password[0] == '\0')
        return 0;
    return svc_crypto_pwhash_verify(hash, password, strlen(password));
}

static char dummy_hash[SVC_CRYPTO_PWHASH_STRBYTES];

void auth_pw_dummy_verify(const char *password)
{
    volatile int r = 0;

    if (dummy_hash[0] != '\0' && password != NULL)
        r = svc_crypto_pwhash_verify(dummy_hash, password, strlen(password));
    (void)r;
}

/* Called once at start-up (main) with the configured cost, so a dummy check costs the same. */
int auth_pw_setup(const struct auth_ctx *a)
{
    char pw[33];

    svc_util_random_hex(pw, 16);
    if (svc_crypto_pwhash(dummy_hash, pw, strlen(pw), a->cfg.pw_ops, a->cfg.pw_mem) != SVC_OK)
        return SVC_ENOMEM;
    svc_util_wipe(pw, sizeof(pw));
    return SVC_OK;
}

/* ---- users ---- */

/* Tells the layer above that user id changed (it publishes the version to every replica). */
static void user_changed(struct auth_ctx *a, int64_t id, int64_t version)
{
    if (a->on_user_changed != NULL)
        a->on_user_changed(a, id, version);
}

#define USER_COLS                                                                                  \
    "id, username, pw_hash, is_static, blocked, model, version, pw_epoch, created_at, "            \
    "updated_at"

static void user_from_row(const struct svc_db_rows *rows, size_t r, struct auth_user *u)
{
    const char *s;

    memset(u, 0, sizeof(*u));
    u->id = svc_db_rows_i64(rows, r, 0);
    s = svc_db_rows_text(rows, r, 1);
    snprintf(u->username, sizeof(u->username), "%s", s ? s : "");
    s = svc_db_rows_text(rows, r, 2);
    snprintf(u->pw_hash, sizeof(u->pw_hash), "%s", s ? s : "");
    u->is_static = svc_db_rows_i64(rows, r, 3) != 0;
    u->blocked = svc_db_rows_i64(rows, r, 4) != 0;
    s = svc_db_rows_text(rows, r, 5);
    snprintf(u->model, sizeof(u->model), "%s", s ? s : "");
    u->version = svc_db_rows_i64(rows, r, 6);
    u->pw_epoch = svc_db_rows_i64(rows, r, 7);
    u->created_at = svc_db_rows_i64(rows, r, 8);
    u->updated_at = svc_db_rows_i64(rows, r, 9);
}

/* Runs a one-row user query. */
static int user_query(struct auth_ctx *a, const char *sql, const struct svc_db_param *p, size_t np,
                      struct auth_user *u)
{
    struct svc_db_conn *conn = NULL;
    struct svc_db_rows *rows = NULL;
    int rc;

    if ((rc = svc_db_conn_get(a->db, &conn, -1)) != SVC_OK)
        goto out;
    rc = svc_db_query(conn, sql, p, np, &rows);
    if (rc != SVC_OK) {
        SVC_LOG_ERR(NULL, "sql", "user lookup: %s", svc_strerror(rc));
        goto out;
    }
    if (svc_db_rows_count(rows) == 0) {
        rc = SVC_ENOTFOUND;
        goto out;
    }
    user_from_row(rows, 0, u);
out:
    svc_db_rows_destroy(&rows);
    svc_db_conn_put(a->db, &conn);
    return rc;
}

int auth_user_by_name(struct auth_ctx *a, const char *name, struct auth_user *u)
{
    struct svc_db_param p[] = {SVC_DB_TEXT(name)};

    if (name == NULL || name[0] == '\0')
        return SVC_ENOTFOUND;
    return user_query(a, "SELECT " USER_COLS " FROM auth_users WHERE username = ?", p, 1, u);
}

int auth_user_by_id(struct auth_ctx *a, int64_t id, struct auth_user *u)
{
    struct svc_db_param p[] = {SVC_DB_I64(id)};

    return user_query(a, "SELECT " USER_COLS " FROM auth_users WHERE id = ?", p, 1, u);
}

int auth_user_version(struct auth_ctx *a, int64_t id, int64_t *version)
{
    struct svc_db_conn *conn = NULL;
    struct svc_db_rows *rows = NULL;
    struct svc_db_param p[] = {SVC_DB_I64(id)};
    int rc;

    if ((rc = svc_db_conn_get(a->db, &conn, -1)) != SVC_OK)
        goto out;
    if ((rc = svc_db_query(conn, "SELECT version FROM auth_users WHERE id = ?", p, 1, &rows)) !=
        SVC_OK)
        goto out;
    if (svc_db_rows_count(rows) == 0) {
        rc = SVC_ENOTFOUND;
        goto out;
    }
    *version = svc_db_rows_i64(rows, 0, 0);
out:
    svc_db_rows_destroy(&rows);
    svc_db_conn_put(a->db, &conn);
    return rc;
}

int auth_user_create(struct auth_ctx *a, const char *name, const char *pw_hash, int is_static,
                     int64_t *id)
{
    struct svc_db_conn *conn = NULL;
    int64_t t = now_s();
    struct svc_db_param p[] = {SVC_DB_TEXT(name), SVC_DB_TEXT(pw_hash), SVC_DB_BOOL(is_static),
                               SVC_DB_I64(t), SVC_DB_I64(t)};
    int rc;

    if ((rc = svc_db_conn_get(a->db, &conn, -1)) != SVC_OK)
        return rc;
    rc = svc_db_exec(conn,
                     "INSERT INTO auth_users (username, pw_hash, is_static, created_at, "
                     "updated_at) VALUES (?, ?, ?, ?, ?)",
                     p, 5, NULL, id);
    if (rc != SVC_OK && rc != SVC_EEXIST)
        SVC_LOG_ERR(NULL, "sql", "create user: %s", svc_strerror(rc));
    svc_db_conn_put(a->db, &conn);
    return rc;
}

/* Runs an UPDATE of one user that bumps its version, then publishes the new version. */
static int user_update(struct auth_ctx *a, int64_t id, const char *sql,
                       const struct svc_db_param *p, size_t np)
{
    struct svc_db_conn *conn = NULL;
    uint64_t affected = 0;
    int64_t version = 0;
    int rc;

    if ((rc = svc_db_conn_get(a->db, &conn, -1)) != SVC_OK)
        return rc;
    rc = svc_db_exec(conn, sql, p, np, &affected, NULL);
    if (rc == SVC_OK && affected == 0)
        rc = SVC_ENOTFOUND;
    if (rc != SVC_OK && rc != SVC_EEXIST && rc != SVC_ENOTFOUND)
        SVC_LOG_ERR(NULL, "sql", "update user: %s", svc_strerror(rc));
    svc_db_conn_put(a->db, &conn);
    if (rc == SVC_OK && auth_user_version(a, id, &version) == SVC_OK)
        user_changed(a, id, version);
    return rc;
}

int auth_user_set_credentials(struct auth_ctx *a, int64_t id, const char *new_name,
                              const char *pw_hash)
{
    int64_t t = now_s();

    if (new_name != NULL && pw_hash != NULL) {
        struct svc_db_param p[] = {SVC_DB_TEXT(new_name), SVC_DB_TEXT(pw_hash), SVC_DB_I64(t),
                                   SVC_DB_I64(id)};
        return user_update(a, id,
                           "UPDATE auth_users SET username = ?, pw_hash = ?, version = version + "
                           "1, pw_epoch = pw_epoch + 1, updated_at = ? WHERE id = ?",
                           p, 4);
    }
    if (pw_hash != NULL) {
        struct svc_db_param p[] = {SVC_DB_TEXT(pw_hash), SVC_DB_I64(t), SVC_DB_I64(id)};
        return user_update(a, id,
                           "UPDATE auth_users SET pw_hash = ?, version = version + 1, pw_epoch "
                           "= pw_epoch + 1, updated_at = ? WHERE id = ?",
                           p, 3);
    }
    if (new_name != NULL) {
        struct svc_db_param p[] = {SVC_DB_TEXT(new_name), SVC_DB_I64(t), SVC_DB_I64(id)};
        return user_update(a, id,
                           "UPDATE auth_users SET username = ?, version = version + 1, pw_epoch "
                           "= pw_epoch + 1, updated_at = ? WHERE id = ?",
                           p, 3);
    }
    return SVC_EINVAL;
}

int auth_user_set_blocked(struct auth_ctx *a, int64_t id, int blocked)
{
    struct svc_db_param p[] = {SVC_DB_BOOL(blocked), SVC_DB_I64(now_s()), SVC_DB_I64(id)};

    return user_update(a, id,
                       "UPDATE auth_users SET blocked = ?, version = version + 1, updated_at = ? "
                       "WHERE id = ?",
                       p, 3);
}

int auth_user_set_model(struct auth_ctx *a, int64_t id, const char *model)
{
    struct svc_db_param p[] = {SVC_DB_TEXT(model), SVC_DB_I64(now_s()), SVC_DB_I64(id)};

    return user_update(a, id,
                       "UPDATE auth_users SET model = ?, version = version + 1, updated_at = ? "
                       "WHERE id = ?",
                       p, 3);
}

int auth_user_touch(struct auth_ctx *a, int64_t id)
{
    struct svc_db_param p[] = {SVC_DB_I64(now_s()), SVC_DB_I64(id)};

    return user_update(
        a, id, "UPDATE auth_users SET version = version + 1, updated_at = ? WHERE id = ?", p, 2);
}

int auth_user_delete(struct auth_ctx *a, int64_t id)
{
    struct svc_db_conn *conn = NULL;
    struct svc_db_param p[] = {SVC_DB_I64(id)};
    uint64_t affected = 0;
    int64_t version = 0;
    int rc;

    if ((rc = auth_user_version(a, id, &version)) != SVC_OK)
        return rc;
    if ((rc = svc_db_conn_get(a->db, &conn, -1)) != SVC_OK)
        return rc;
    rc = svc_db_exec(conn, "DELETE FROM auth_api_keys WHERE user_id = ?", p, 1, NULL, NULL);
    if (rc == SVC_OK) /* the web UI's history goes with the user (conv.c) */
        rc =
            svc_db_exec(conn, "DELETE FROM auth_conversations WHERE user_id = ?", p, 1, NULL, NULL);
    if (rc == SVC_OK)
        rc = svc_db_exec(conn, "DELETE FROM auth_users WHERE id = ?", p, 1, &affected, NULL);
    if (rc != SVC_OK)
        SVC_LOG_ERR(NULL, "sql", "delete user: %s", svc_strerror(rc));
    else if (affected == 0)
        rc = SVC_ENOTFOUND;
    svc_db_conn_put(a->db, &conn);
    /* A version no row will ever have again: every cached entry of the user mismatches. */
    if (rc == SVC_OK)
        user_changed(a, id, version + 1000000);
    return rc;
}

/* ---- static users ---- */

/* The n-th comma-separated field of list into out (no trimming, as in the seed). */
static int list_field(const char *list, size_t idx, char *out, size_t outlen)
{
    const char *p = list, *end;
    size_t i, len;

    for (i = 0; i < idx; i++) {
        p = strchr(p, ',');
        if (p == NULL)
            return SVC_ENOTFOUND;
        p++;
    }
    end = strchr(p, ',');
    len = end != NULL ? (size_t)(end - p) : strlen(p);
    if (len >= outlen)
        return SVC_ETOOLARGE;
    memcpy(out, p, len);
    out[len] = '\0';
    return SVC_OK;
}

static size_t list_count(const char *list)
{
    size_t n = 1;

    if (list == NULL || list[0] == '\0')
        return 0;
    for (; *list; list++)
        n += *list == ',';
    return n;
}

int auth_static_users_validate(const char *users, const char *passwords, char *err, size_t errlen)
{
    size_t nu = list_count(users), np = list_count(passwords), i, j;
    char name[AUTH_NAME_MAX + 1], pw[AUTH_PASSWORD_MAX + 1];
    int rc = SVC_EINVAL;

    if (nu != np) {
        snprintf(err, errlen,
                 "BASIC_AUTH_USER has %zu entries but BASIC_AUTH_PASSWORD has %zu (basic auth "
                 "setting error)",
                 nu, np);
        return SVC_EINVAL;
    }
    for (i = 0; i < nu; i++) {
        if (list_field(users, i, name, sizeof(name)) != SVC_OK) {
            snprintf(err, errlen, "BASIC_AUTH_USER: entry %zu is longer than %d bytes", i + 1,
                     AUTH_NAME_MAX);
            goto out;
        }
        if (name[0] == '\0')
            continue; /* the seed skips empty names */
        if (!auth_username_valid(name)) {
            snprintf(err, errlen,
                     "BASIC_AUTH_USER: \"%s\" is not a valid username (1-64 of A-Z a-z 0-9 _ . "
                     "@ -)",
                     name);
            goto out;
        }
        if (list_field(passwords, i, pw, sizeof(pw)) != SVC_OK || pw[0] == '\0') {
            snprintf(err, errlen,
                     "BASIC_AUTH_PASSWORD: entry %zu (for user %s) is empty or longer than %d "
                     "bytes",
                     i + 1, name, AUTH_PASSWORD_MAX);
            goto out;
        }
        for (j = 0; j < i; j++) {
            char other[AUTH_NAME_MAX + 1];
            if (list_field(users, j, other, sizeof(other)) == SVC_OK && strcmp(other, name) == 0) {
                snprintf(err, errlen, "BASIC_AUTH_USER: \"%s\" is listed twice", name);
                goto out;
            }
        }
    }
    rc = SVC_OK;
out:
    svc_util_wipe(pw, sizeof(pw));
    return rc;
}

int auth_static_users_sync(struct auth_ctx *a, const char *users, const char *passwords,
                           int64_t *ids, size_t max_ids, size_t *n, char *err, size_t errlen)
{
    size_t nu = list_count(users), i;
    char name[AUTH_NAME_MAX + 1], pw[AUTH_PASSWORD_MAX + 1], hash[AUTH_HASH_MAX + 1];
    struct auth_user u;
    int rc = SVC_OK;

    *n = 0;
    pw[0] = '\0';
    if ((rc = auth_static_users_validate(users, passwords, err, errlen)) != SVC_OK)
        return rc;
    for (i = 0; i < nu; i++) {
        if (list_field(users, i, name, sizeof(name)) != SVC_OK || name[0] == '\0')
            continue;
        if (list_field(passwords, i, pw, sizeof(pw)) != SVC_OK)
            continue; /* validated above */
        rc = auth_user_by_name(a, name, &u);
        if (rc == SVC_ENOTFOUND) {
            if ((rc = auth_pw_hash(a, pw, hash)) != SVC_OK)
                goto dberr;
            rc = auth_user_create(a, name, hash, 1, &u.id);
            if (rc == SVC_EEXIST) /* another replica created it just now */
                rc = auth_user_by_name(a, name, &u);
            if (rc != SVC_OK)
                goto dberr;
        } else if (rc == SVC_OK) {
            /* The environment is authoritative (the seed's S13): whatever the stored password,
             * the row becomes this static user with this password, unblocked. */
            if (!auth_pw_verify(u.pw_hash, pw)) {
                if ((rc = auth_pw_hash(a, pw, hash)) != SVC_OK)
                    goto dberr;
                if ((rc = auth_user_set_credentials(a, u.id, NULL, hash)) != SVC_OK)
                    goto dberr;
                SVC_LOG_NOTICE(NULL, "startup",
                               "static user %s: password taken from the "
                               "environment",
                               name);
            }
            if (!u.is_static || u.blocked) {
                struct svc_db_conn *conn = NULL;
                struct svc_db_param p[] = {SVC_DB_I64(now_s()), SVC_DB_I64(u.id)};
                if ((rc = svc_db_conn_get(a->db, &conn, -1)) != SVC_OK)
                    goto dberr;
                rc = svc_db_exec(conn,
                                 "UPDATE auth_users SET is_static = 1, blocked = 0, version = "
                                 "version + 1, updated_at = ? WHERE id = ?",
                                 p, 2, NULL, NULL);
                svc_db_conn_put(a->db, &conn);
                if (rc != SVC_OK)
                    goto dberr;
                if (auth_user_version(a, u.id, &u.version) == SVC_OK)
                    user_changed(a, u.id, u.version);
            }
        } else {
            goto dberr;
        }
        if (*n < max_ids)
            ids[(*n)++] = u.id;
    }
    rc = SVC_OK;
    goto out;
dberr:
    snprintf(err, errlen, "DB: cannot store static user %s: %s", name, svc_strerror(rc));
out:
    svc_util_wipe(pw, sizeof(pw));
    return rc;
}

/* ---- API keys ---- */

static void key_digest(const char *key, char hex[65])
{
    unsigned char h[SVC_CRYPTO_SHA256_BYTES];

    svc_crypto_sha256(h, key, strlen(key));
    svc_crypto_hex(hex, h, sizeof(h));
}

#define KEY_COLS "id, user_id, prefix, name, created_at, last_used_at, revoked_at, models, rpm, tpm"

static void key_from_row(const struct svc_db_rows *rows, size_t r, struct auth_key *k)
{
    const char *s;

    memset(k, 0, sizeof(*k));
    k->id = svc_db_rows_i64(rows, r, 0);
    k->user_id = svc_db_rows_i64(rows, r, 1);
    s = svc_db_rows_text(rows, r, 2);
    snprintf(k->prefix, sizeof(k->prefix), "%s", s ? s : "");
    s = svc_db_rows_text(rows, r, 3);
    snprintf(k->name, sizeof(k->name), "%s", s ? s : "");
    k->created_at = svc_db_rows_i64(rows, r, 4);
    k->last_used_at = svc_db_rows_i64(rows, r, 5);
    k->revoked_at = svc_db_rows_i64(rows, r, 6);
    s = svc_db_rows_text(rows, r, 7);
    snprintf(k->models, sizeof(k->models), "%s", s ? s : "");
    k->rpm = svc_db_rows_i64(rows, r, 8);
    k->tpm = svc_db_rows_i64(rows, r, 9);
}

int auth_key_create(struct auth_ctx *a, int64_t user_id, const char *name, const char *models,
                    int64_t rpm, int64_t tpm, char *key_out, struct auth_key *k)
{
    struct svc_db_conn *conn = NULL;
    char hex[49], digest[65];
    int64_t t = now_s();
    int rc;

    svc_util_random_hex(hex, 24);
    snprintf(key_out, AUTH_KEY_LEN + 1, "sk-%s", hex);
    svc_util_wipe(hex, sizeof(hex));
    key_digest(key_out, digest);
    memset(k, 0, sizeof(*k));
    k->user_id = user_id;
    memcpy(k->prefix, key_out, AUTH_KEY_PREFIX_LEN);
    k->prefix[AUTH_KEY_PREFIX_LEN] = '\0';
    snprintf(k->name, sizeof(k->name), "%s", name ? name : "");
    snprintf(k->models, sizeof(k->models), "%s", models ? models : "");
    k->rpm = rpm;
    k->tpm = tpm;
    k->created_at = t;
    {
        struct svc_db_param p[] = {
            SVC_DB_I64(user_id), SVC_DB_TEXT(k->prefix), SVC_DB_TEXT(digest), SVC_DB_TEXT(k->name),
            SVC_DB_I64(t),       SVC_DB_TEXT(k->models), SVC_DB_I64(rpm),     SVC_DB_I64(tpm)};
        if ((rc = svc_db_conn_get(a->db, &conn, -1)) != SVC_OK)
            return rc;
        rc = svc_db_exec(conn,
                         "INSERT INTO auth_api_keys (user_id, prefix, secret_hash, name, "
                         "created_at, models, rpm, tpm) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         p, 8, NULL, &k->id);
        if (rc != SVC_OK)
            SVC_LOG_ERR(NULL, "sql", "create key: %s", svc_strerror(rc));
        svc_db_conn_put(a->db, &conn);
    }
    return rc;
}

int auth_key_by_secret(struct auth_ctx *a, const char *key, struct auth_key *k)
{
    struct svc_db_conn *conn = NULL;
    struct svc_db_rows *rows = NULL;
    char digest[65];
    int rc;

    key_digest(key, digest);
    {
        struct svc_db_param p[] = {SVC_DB_TEXT(digest)};
        if ((rc = svc_db_conn_get(a->db, &conn, -1)) != SVC_OK)
            goto out;
        rc = svc_db_query(conn, "SELECT " KEY_COLS " FROM auth_api_keys WHERE secret_hash = ?", p,
                          1, &rows);
    }
    if (rc != SVC_OK)
        goto out;
    if (svc_db_rows_count(rows) == 0) {
        rc = SVC_ENOTFOUND;
        goto out;
    }
    key_from_row(rows, 0, k);
out:
    svc_db_rows_destroy(&rows);
    svc_db_conn_put(a->db, &conn);
    return rc;
}

static int key_update(struct auth_ctx *a, int64_t user_id, const char *sql,
                      const struct svc_db_param *p, size_t np)
{
    struct svc_db_conn *conn = NULL;
    uint64_t affected = 0;
    int rc;

    if ((rc = svc_db_conn_get(a->db, &conn, -1)) != SVC_OK)
        return rc;
    rc = svc_db_exec(conn, sql, p, np, &affected, NULL);
    if (rc != SVC_OK)
        SVC_LOG_ERR(NULL, "sql", "update key: %s", svc_strerror(rc));
    svc_db_conn_put(a->db, &conn);
    if (rc == SVC_OK && affected == 0)
        return SVC_ENOTFOUND;
    if (rc == SVC_OK)
        rc = auth_user_touch(a, user_id); /* cached key verifications of this user expire */
    return rc;
}

int auth_key_revoke(struct auth_ctx *a, int64_t user_id, const char *prefix)
{
    struct svc_db_param p[] = {SVC_DB_I64(now_s()), SVC_DB_I64(user_id), SVC_DB_TEXT(prefix)};

    return key_update(a, user_id,
                      "UPDATE auth_api_keys SET revoked_at = ? WHERE user_id = ? AND prefix = ? "
                      "AND revoked_at = 0",
                      p, 3);
}

int auth_key_set_limits(struct auth_ctx *a, int64_t user_id, const char *prefix, const char *models,
                        int64_t rpm, int64_t tpm)
{
    struct svc_db_param p[] = {SVC_DB_TEXT(models), SVC_DB_I64(rpm), SVC_DB_I64(tpm),
                               SVC_DB_I64(user_id), SVC_DB_TEXT(prefix)};

    return key_update(a, user_id,
                      "UPDATE auth_api_keys SET models = ?, rpm = ?, tpm = ? WHERE user_id = ? "
                      "AND prefix = ?",
                      p, 5);
}

int auth_key_mark_used(struct auth_ctx *a, int64_t key_id)
{
    struct svc_db_conn *conn = NULL;
    struct svc_db_param p[] = {SVC_DB_I64(now_s()), SVC_DB_I64(key_id)};
    int rc;

    if ((rc = svc_db_conn_get(a->db, &conn, -1)) != SVC_OK)
        return rc;
    rc = svc_db_exec(conn, "UPDATE auth_api_keys SET last_used_at = ? WHERE id = ?", p, 2, NULL,
                     NULL);
    svc_db_conn_put(a->db, &conn);
    return rc;
}

/* ---- audit ---- */

void auth_audit(struct auth_ctx *a, const char *actor, const char *ip, const char *rid,
                const char *action, const char *target, const char *result, const char *detail)
{
    struct svc_db_conn *conn = NULL;
    char t[129];
    struct svc_db_param p[8];

    snprintf(t, sizeof(t), "%s", target ? target : "");
    p[0] = SVC_DB_I64(svc_util_wallclock_ms());
    p[1] = SVC_DB_TEXT(actor ? actor : "");
    p[2] = SVC_DB_TEXTN(ip ? ip : "", ip ? strnlen(ip, 64) : 0);
    p[3] = SVC_DB_TEXTN(rid ? rid : "", rid ? strnlen(rid, 128) : 0);
    p[4] = SVC_DB_TEXT(action ? action : "");
    p[5] = SVC_DB_TEXTN(t, strnlen(t, 128));
    p[6] = SVC_DB_TEXTN(result ? result : "", result ? strnlen(result, 64) : 0);
    p[7] = SVC_DB_TEXTN(detail ? detail : "", detail ? strnlen(detail, 1024) : 0);
    if (svc_db_conn_get(a->db, &conn, -1) != SVC_OK) {
        SVC_LOG_ERR(rid, "audit", "no DB connection for the audit row of %s", action);
        return;
    }
    if (svc_db_exec(conn,
                    "INSERT INTO auth_audit (at_ms, actor, client_ip, request_id, action, target, "
                    "result, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    p, 8, NULL, NULL) != SVC_OK)
        SVC_LOG_ERR(rid, "audit", "cannot write the audit row (the sql line says why)");
    svc_db_conn_put(a->db, &conn);
    SVC_LOG_INFO(rid, "audit", "actor=%s ip=%s action=%s target=%s result=%s", actor, ip, action, t,
                 result);
}

/* ---- ops idempotency keys ---- */

int auth_idem_begin(struct auth_ctx *a, const char *key, const char *action, const char *hash,
                    char *reply, size_t replylen, enum auth_idem_state *state)
{
    struct svc_db_conn *conn = NULL;
    struct svc_db_rows *rows = NULL;
    int rc;

    *state = AUTH_IDEM_NEW;
    reply[0] = '\0';
    if ((rc = svc_db_conn_get(a->db, &conn, -1)) != SVC_OK)
        return rc;
    {
        struct svc_db_param p[] = {SVC_DB_TEXT(key), SVC_DB_TEXT(action), SVC_DB_TEXT(hash),
                                   SVC_DB_I64(svc_util_wallclock_ms())};
        rc = svc_db_exec(conn,
                         "INSERT INTO auth_idempotency (idem_key, action, body_hash, reply, "
                         "created_at_ms) VALUES (?, ?, ?, NULL, ?)",
                         p, 4, NULL, NULL);
    }
    if (rc == SVC_EEXIST) {
        struct svc_db_param p[] = {SVC_DB_TEXT(key)};
        rc = svc_db_query(conn,
                          "SELECT action, body_hash, reply FROM auth_idempotency "
                          "WHERE idem_key = ?",
                          p, 1, &rows);
        if (rc == SVC_OK && svc_db_rows_count(rows) == 1) {
            const char *act = svc_db_rows_text(rows, 0, 0), *h = svc_db_rows_text(rows, 0, 1);
            const char *r = svc_db_rows_text(rows, 0, 2);
            if (act == NULL || h == NULL || strcmp(act, action) != 0 || strcmp(h, hash) != 0)
                *state = AUTH_IDEM_MISMATCH;
            else if (r != NULL && r[0] != '\0' && strlen(r) < replylen) {
                *state = AUTH_IDEM_DONE;
                snprintf(reply, replylen, "%s", r);
            } else {
                *state = AUTH_IDEM_PENDING;
            }
        } else if (rc == SVC_OK) {
            rc = SVC_ECONFLICT; /* inserted and gone again: cannot happen, rows are kept */
        }
        svc_db_rows_destroy(&rows);
    }
    svc_db_conn_put(a->db, &conn);
    return rc;
}

int auth_idem_finish(struct auth_ctx *a, const char *key, const char *reply)
{
    struct svc_db_conn *conn = NULL;
    struct svc_db_param p[] = {SVC_DB_TEXT(reply), SVC_DB_TEXT(key)};
    int rc;

    if ((rc = svc_db_conn_get(a->db, &conn, -1)) != SVC_OK)
        return rc;
    rc = svc_db_exec(conn, "UPDATE auth_idempotency SET reply = ? WHERE idem_key = ?", p, 2, NULL,
                     NULL);
    svc_db_conn_put(a->db, &conn);
    return rc;
}
