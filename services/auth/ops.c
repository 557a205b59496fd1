/*
 * The operator API: POST /accounts (header Opskey) and /admin/accounts (Basic admin:<OPS_KEY>),
 * with the seed's request shape {action, i_username, i_password, count} and replies
 * ({"message":"success"} or the seed's error text, plus "status" and, where there is data,
 * "data"). Balance work goes to billing by RPC. Every write leaves an audit row.
 * docs/ops-api.md documents every action.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth.h"
#include "billing.pb-c.h"
#include "svc/crypto.h"
#include "svc/cfg.h"
#include "svc/db.h"
#include "svc/http.h"
#include "svc/json.h"
#include "svc/log.h"
#include "svc/rpc.h"
#include "svc/util.h"

#define COUNT_MAX 1000000000000LL /* |count| bound: 10^12 tokens */
#define LIST_MAX 1000             /* rows per list page */
#define MSG_NOT_FOUND "record not found"
#define MSG_EXISTS "账户名存在"
#define MSG_SUCCESS "success"

struct op {
    struct auth_ctx *a;
    struct svc_req *req;
    struct svc_json *in;
    const char *actor; /* "opskey" or "admin" */
    const char *rid;
    const char *ip;
    const char *action;
    const char *username;
    struct auth_user u; /* loaded by need_user */
};

/* ---- replies ---- */

static int ok(struct op *o, struct svc_json *data)
{
    return auth_reply(o->req, 200, "Success", MSG_SUCCESS, data, 0);
}

static int fail(struct op *o, int http, const char *msg)
{
    return auth_reply(o->req, http, "Fail", msg, NULL, 0);
}

static void audit(struct op *o, const char *result, const char *detail)
{
    auth_audit(o->a, o->actor, o->ip, o->rid, o->action, o->username, result, detail);
}

/* A write that failed: audit and reply. */
static int wfail(struct op *o, int http, const char *msg)
{
    audit(o, msg, "");
    return fail(o, http, msg);
}

/* ---- input ---- */

/* An integer field: absent -> def; not an integer or out of [min, max] -> SVC_EINVAL. */
static int int_field(struct op *o, const char *k, int64_t def, int64_t min, int64_t max, int64_t *v)
{
    struct svc_json *j = svc_json_member(o->in, k);

    if (j == NULL || svc_json_is_null(j)) {
        *v = def;
        return SVC_OK;
    }
    if (!svc_json_is_integer(j))
        return SVC_EINVAL;
    *v = svc_json_int(j);
    return *v >= min && *v <= max ? SVC_OK : SVC_EINVAL;
}

static const char *str_field(struct op *o, const char *k)
{
    const char *s = svc_json_str(svc_json_member(o->in, k));
    return s != NULL ? s : "";
}

/* models: an array of strings or a comma-separated string -> "a,b" in out. */
static int models_field(struct op *o, char *out, size_t outlen)
{
    struct svc_json *j = svc_json_member(o->in, "models");
    size_t i, len = 0;

    out[0] = '\0';
    if (j == NULL || svc_json_is_null(j))
        return SVC_OK;
    if (svc_json_is_string(j)) {
        if (svc_json_strlen(j) >= outlen)
            return SVC_EINVAL;
        snprintf(out, outlen, "%s", svc_json_str(j));
    } else if (svc_json_is_array(j)) {
        for (i = 0; i < svc_json_array_len(j); i++) {
            const char *m = svc_json_str(svc_json_array_at(j, i));
            int n;
            if (m == NULL || m[0] == '\0' || strchr(m, ',') != NULL)
                return SVC_EINVAL;
            n = snprintf(out + len, outlen - len, "%s%s", len ? "," : "", m);
            if (n < 0 || (size_t)n >= outlen - len)
                return SVC_EINVAL;
            len += (size_t)n;
        }
    } else {
        return SVC_EINVAL;
    }
    for (i = 0; out[i]; i++)
        if ((unsigned char)out[i] < 0x21 || out[i] == '"')
            return SVC_EINVAL;
    return SVC_OK;
}

/* Loads o->u for i_username; replies (seed text) and returns -1 when there is no such user. */
static int need_user(struct op *o, int *done)
{
    int rc;

    *done = 0;
    if (o->username[0] == '\0' || !auth_username_valid(o->username)) {
        /* The seed matched the first user on an empty name (S1): never here. */
        *done = fail(o, 200, MSG_NOT_FOUND);
        return -1;
    }
    rc = auth_user_by_name(o->a, o->username, &o->u);
    if (rc == SVC_ENOTFOUND) {
        *done = fail(o, 200, MSG_NOT_FOUND);
        return -1;
    }
    if (rc != SVC_OK) {
        *done = fail(o, 503, "database unavailable");
        return -1;
    }
    return 0;
}

static int password_ok(struct op *o, const char *pw)
{
    size_t n = strlen(pw);
    return n >= o->a->cfg.pw_min && n <= AUTH_PASSWORD_MAX;
}

/* ---- billing ---- */

static int billing_call(struct op *o, const char *method, const ProtobufCMessage *in,
                        const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out, char *err,
                        size_t errlen)
{
    int rc;

    *out = NULL;
    if (o->a->billing == NULL) {
        snprintf(err, errlen, "billing service not configured (BILLING_URL)");
        return SVC_EUNAVAIL;
    }
    rc = svc_rpc_call(o->a->billing, method, in, desc, out, o->rid, err, errlen);
    if (rc != SVC_OK)
        SVC_LOG_WARN(o->rid, "billing", "%s: %s (%s)", method, svc_strerror(rc), err);
    return rc;
}

/* The account after a recharge, with the numbers `check` shows: balance and granted are -1 for
 * an unlimited account (static users included), whose billing balance means nothing. */
static struct svc_json *account_json(const Chatweb__Billing__Account *ac, int is_static)
{
    int unlimited;

    if (ac == NULL)
        return svc_json_null();
    unlimited = ac->unlimited || is_static;
    return svc_json_pack("{s:I,s:I,s:I,s:I,s:b}", "granted",
                         (long long)(unlimited ? -1 : ac->granted), "used", (long long)ac->used,
                         "held", (long long)ac->held, "balance",
                         (long long)(unlimited ? -1 : ac->balance), "unlimited", unlimited);
}

/* GetAccount; *acc NULL when billing has none or cannot be reached (*reachable 0). */
static Chatweb__Billing__GetAccountResponse *get_account(struct op *o, int64_t uid)
{
    Chatweb__Billing__GetAccountRequest in = CHATWEB__BILLING__GET_ACCOUNT_REQUEST__INIT;
    ProtobufCMessage *out = NULL;
    char err[256];

    in.user_id = uid;
    if (billing_call(o, "/rpc/Billing/GetAccount", &in.base,
                     &chatweb__billing__get_account_response__descriptor, &out, err,
                     sizeof(err)) != SVC_OK)
        return NULL;
    return (Chatweb__Billing__GetAccountResponse *)out;
}

/* ---- actions ---- */

static int act_register(struct op *o)
{
    Chatweb__Billing__CreateAccountRequest in = CHATWEB__BILLING__CREATE_ACCOUNT_REQUEST__INIT;
    ProtobufCMessage *out = NULL;
    const char *pw = str_field(o, "i_password");
    char hash[AUTH_HASH_MAX + 1], err[256], msg[320], detail[64];
    int64_t count, id = 0;
    int rc;

    if (!auth_username_valid(o->username))
        return wfail(o, 200, "账户不合法 | invalid username (1-64 of A-Z a-z 0-9 _ . @ -)");
    if (!password_ok(o, pw)) {
        snprintf(msg, sizeof(msg), "密码不合法 | invalid password (%zu-%d bytes)", o->a->cfg.pw_min,
                 AUTH_PASSWORD_MAX);
        return wfail(o, 200, msg);
    }
    if (int_field(o, "count", 0, -COUNT_MAX, COUNT_MAX, &count) != SVC_OK)
        return wfail(o, 200, "count must be an integer in [-10^12, 10^12]");
    if (o->a->billing == NULL)
        return wfail(o, 503, "billing service not configured (BILLING_URL)");
    if ((rc = auth_pw_hash(o->a, pw, hash)) != SVC_OK)
        return wfail(o, 500, "internal error");
    rc = auth_user_create(o->a, o->username, hash, 0, &id);
    svc_util_wipe(hash, sizeof(hash));
    if (rc == SVC_EEXIST)
        return wfail(o, 200, MSG_EXISTS);
    if (rc != SVC_OK)
        return wfail(o, 503, "database unavailable");
    in.user_id = id;
    in.username = (char *)o->username;
    in.initial_units = count > 0 ? count : 0;
    in.unlimited = count < 0; /* the seed: a negative count means unlimited */
    in.actor = (char *)o->actor;
    in.request_id = (char *)o->rid;
    rc = billing_call(o, "/rpc/Billing/CreateAccount", &in.base,
                      &chatweb__billing__create_account_response__descriptor, &out, err,
                      sizeof(err));
    if (out != NULL)
        svc_rpc_message_destroy(&out);
    if (rc != SVC_OK) {
        if (auth_user_delete(o->a, id) != SVC_OK)
            SVC_LOG_ERR(o->rid, "ops", "register: cannot undo user %s", o->username);
        snprintf(msg, sizeof(msg), "billing: %s", err);
        return wfail(o, 503, msg);
    }
    snprintf(detail, sizeof(detail), "count=%lld", (long long)count);
    audit(o, MSG_SUCCESS, detail);
    return ok(o, svc_json_pack("{s:I,s:s}", "id", (long long)id, "username", o->username));
}

/* 1 when an Idempotency-Key is 1..AUTH_IDEM_KEY_MAX bytes of visible ASCII. */
static int idem_key_ok(const char *k)
{
    size_t n = strlen(k), i;

    if (n == 0 || n > AUTH_IDEM_KEY_MAX)
        return 0;
    for (i = 0; i < n; i++)
        if ((unsigned char)k[i] < 0x21 || (unsigned char)k[i] > 0x7e)
            return 0;
    return 1;
}

/* The digest a recharge's Idempotency-Key is bound to: what it asks for (the user by id, so a
 * rename in between does not make a replay "different", and the signed count). */
static void recharge_hash(int64_t uid, int64_t count, char out[2 * SVC_CRYPTO_SHA256_BYTES + 1])
{
    unsigned char h[SVC_CRYPTO_SHA256_BYTES];
    char text[96];
    int n = snprintf(text, sizeof(text), "v1\nrecharge\n%lld\n%lld", (long long)uid,
                     (long long)count);

    svc_crypto_sha256(h, text, (size_t)n);
    svc_crypto_hex(out, h, sizeof(h));
}

#define MSG_IDEM_CONFLICT "Idempotency-Key was already used with a different request"
#define IDEM_REPLY_MAX 1024 /* bytes of a stored recharge reply (an account: ~100) */

/* Answers a replay: the stored (or given) data with "replay": true, and a header saying so. */
static int replay_reply(struct op *o, struct svc_json *data, const char *detail)
{
    audit(o, "replay", detail);
    if (data == NULL || svc_json_set(data, "replay", svc_json_bool(1)) != 0 ||
        svc_req_add_header(o->req, "Idempotent-Replayed", "true") != SVC_OK) {
        svc_json_destroy(&data);
        return fail(o, 500, "internal error");
    }
    return ok(o, data);
}

/*
 * recharge: count > 0 is billing Recharge, count < 0 billing Adjust. With an Idempotency-Key the
 * key is first bound to this request in auth_idempotency (so it cannot be reused for another
 * count, user or sign, whose billing keys would live apart), then passed on to billing, whose
 * own key (stored with a digest of the request, in the ledger row's transaction) makes the
 * credit happen once even when two replicas race. An exact replay answers the first reply with
 * "replay": true; another request with the key is 409. The audit row says what happened.
 */
static int act_recharge(struct op *o)
{
    ProtobufCMessage *out = NULL;
    const Chatweb__Billing__Account *ac = NULL;
    const char *idem = svc_req_header(o->req, "Idempotency-Key");
    char err[256], msg[320], detail[256], hash[2 * SVC_CRYPTO_SHA256_BYTES + 1];
    char stored[IDEM_REPLY_MAX];
    enum auth_idem_state st = AUTH_IDEM_NEW;
    int64_t count;
    int done, rc, duplicate = 0;
    struct svc_json *data;

    if (idem != NULL && !idem_key_ok(idem))
        return wfail(o, 200, "Idempotency-Key must be 1-128 printable ASCII characters");
    if (need_user(o, &done) != 0)
        return done;
    if (int_field(o, "count", 0, -COUNT_MAX, COUNT_MAX, &count) != SVC_OK || count == 0)
        return wfail(o, 200, "count must be a non-zero integer in [-10^12, 10^12]");
    if (idem != NULL) {
        recharge_hash(o->u.id, count, hash);
        rc = auth_idem_begin(o->a, idem, "recharge", hash, stored, sizeof(stored), &st);
        if (rc != SVC_OK)
            return wfail(o, 503, "database unavailable");
        if (st == AUTH_IDEM_MISMATCH) {
            snprintf(detail, sizeof(detail), "asked count=%lld key=%.64s (refused)",
                     (long long)count, idem);
            audit(o, MSG_IDEM_CONFLICT, detail);
            return fail(o, 409, MSG_IDEM_CONFLICT);
        }
        if (st == AUTH_IDEM_DONE) {
            snprintf(detail, sizeof(detail), "count=%lld key=%.64s: nothing credited now",
                     (long long)count, idem);
            return replay_reply(o, svc_json_parse(stored, strlen(stored), 0, NULL, 0), detail);
        }
    }
    if (count > 0) {
        Chatweb__Billing__RechargeRequest in = CHATWEB__BILLING__RECHARGE_REQUEST__INIT;
        in.user_id = o->u.id;
        in.units = count;
        in.idempotency_key = (char *)(idem ? idem : "");
        in.actor = (char *)o->actor;
        in.note = "ops recharge";
        in.request_id = (char *)o->rid;
        rc = billing_call(o, "/rpc/Billing/Recharge", &in.base,
                          &chatweb__billing__recharge_response__descriptor, &out, err, sizeof(err));
        if (rc == SVC_OK) {
            ac = ((Chatweb__Billing__RechargeResponse *)out)->account;
            duplicate = ((Chatweb__Billing__RechargeResponse *)out)->duplicate;
        }
    } else {
        Chatweb__Billing__AdjustRequest in = CHATWEB__BILLING__ADJUST_REQUEST__INIT;
        in.user_id = o->u.id;
        in.units = count;
        in.idempotency_key = (char *)(idem ? idem : "");
        in.actor = (char *)o->actor;
        in.note = "ops recharge (negative)";
        in.request_id = (char *)o->rid;
        rc = billing_call(o, "/rpc/Billing/Adjust", &in.base,
                          &chatweb__billing__adjust_response__descriptor, &out, err, sizeof(err));
        if (rc == SVC_OK) {
            ac = ((Chatweb__Billing__AdjustResponse *)out)->account;
            duplicate = ((Chatweb__Billing__AdjustResponse *)out)->duplicate;
        }
    }
    if (rc != SVC_OK) {
        /* billing refuses a key it saw with another request (e.g. used by a direct caller) */
        if (rc == SVC_ECONFLICT && idem != NULL && strstr(err, "idempotency_key") != NULL) {
            snprintf(detail, sizeof(detail), "asked count=%lld key=%.64s (refused by billing)",
                     (long long)count, idem);
            audit(o, MSG_IDEM_CONFLICT, detail);
            return fail(o, 409, MSG_IDEM_CONFLICT);
        }
        if (rc == SVC_ENOTFOUND)
            snprintf(msg, sizeof(msg), "%s", MSG_NOT_FOUND);
        else
            snprintf(msg, sizeof(msg), "billing: %s", err);
        snprintf(detail, sizeof(detail), "asked count=%lld%s%.64s (failed)", (long long)count,
                 idem ? " key=" : "", idem ? idem : "");
        audit(o, msg, detail);
        return fail(o, rc == SVC_EUNAVAIL || rc == SVC_ETIMEDOUT ? 503 : 200, msg);
    }
    data = account_json(ac, o->u.is_static);
    svc_rpc_message_destroy(&out);
    if (duplicate) {
        /* billing had credited this request already (the first reply was lost, or two
         * deliveries raced): nothing was credited now; the account as it is now is the answer */
        snprintf(detail, sizeof(detail), "count=%lld key=%.64s: nothing credited now",
                 (long long)count, idem ? idem : "");
        if (idem != NULL) {
            char *text = svc_json_dump(data, 0);
            if (text == NULL || auth_idem_finish(o->a, idem, text) != SVC_OK)
                SVC_LOG_WARN(o->rid, "ops", "recharge: cannot store the reply of key %.64s", idem);
            free(text);
        }
        return replay_reply(o, data, detail);
    }
    snprintf(detail, sizeof(detail), "count=%lld%s%.64s", (long long)count, idem ? " key=" : "",
             idem ? idem : "");
    audit(o, MSG_SUCCESS, detail);
    if (idem != NULL) {
        char *text = svc_json_dump(data, 0);
        /* a lost reply only costs the exactness of a later replay's numbers: billing still
         * credits once, and the key stays bound to this request */
        if (text == NULL || auth_idem_finish(o->a, idem, text) != SVC_OK)
            SVC_LOG_WARN(o->rid, "ops", "recharge: cannot store the reply of key %.64s", idem);
        free(text);
        if (data != NULL)
            svc_json_set(data, "replay", svc_json_bool(0));
    }
    return ok(o, data);
}

/*
 * A user's data with its billing numbers: `balance` is what can still be spent (billing's
 * balance, the same number /api/me shows), `granted` every credit ever, `usage` every charge
 * ever; -1 for unlimited accounts, null when billing does not answer.
 */
static struct svc_json *user_json(struct op *o, const struct auth_user *u)
{
    Chatweb__Billing__GetAccountResponse *g = get_account(o, u->id);
    const Chatweb__Billing__Account *ac = g != NULL ? g->account : NULL;
    int unlimited = u->is_static || (ac != NULL && ac->unlimited);
    struct svc_json *j;

    j = svc_json_pack("{s:I,s:s,s:o,s:o,s:o,s:o,s:b,s:b,s:b,s:s,s:I}", "id", (long long)u->id,
                      "username", u->username, "balance",
                      unlimited ? svc_json_integer(-1)
                      : ac      ? svc_json_integer(ac->balance)
                                : svc_json_null(),
                      "granted",
                      unlimited ? svc_json_integer(-1)
                      : ac      ? svc_json_integer(ac->granted)
                                : svc_json_null(),
                      "usage", ac ? svc_json_integer(ac->used) : svc_json_null(), "held",
                      ac ? svc_json_integer(ac->held) : svc_json_null(), "unlimited", unlimited,
                      "blocked", u->blocked, "static", u->is_static, "model", u->model,
                      "created_at", (long long)u->created_at);
    if (g != NULL) {
        ProtobufCMessage *m = &g->base;
        svc_rpc_message_destroy(&m);
    }
    return j;
}

static int act_check(struct op *o)
{
    int done;

    if (need_user(o, &done) != 0)
        return done;
    return ok(o, user_json(o, &o->u));
}

static int set_blocked(struct op *o, int blocked)
{
    int done, rc;

    if (need_user(o, &done) != 0)
        return done;
    rc = auth_user_set_blocked(o->a, o->u.id, blocked);
    if (rc == SVC_ENOTFOUND)
        return wfail(o, 200, MSG_NOT_FOUND);
    if (rc != SVC_OK)
        return wfail(o, 503, "database unavailable");
    audit(o, MSG_SUCCESS, blocked ? "blocked=1" : "blocked=0");
    return ok(o, NULL);
}

static int act_grant(struct op *o)
{
    struct svc_json *c = svc_json_member(o->in, "count");
    int64_t count;

    /* A missing count is not the seed's "grant 0" (unblock): say so instead of unblocking. */
    if (c == NULL || svc_json_is_null(c))
        return wfail(o, 200, "count is required (1 blocks, 0 unblocks)");
    if (int_field(o, "count", 0, -COUNT_MAX, COUNT_MAX, &count) != SVC_OK)
        return wfail(o, 200, "count must be an integer");
    return set_blocked(o, count > 0); /* the seed: grant 1 blocks, grant 0 unblocks */
}

static int act_block(struct op *o)
{
    return set_blocked(o, 1);
}
static int act_unblock(struct op *o)
{
    return set_blocked(o, 0);
}

static int act_delete(struct op *o)
{
    Chatweb__Billing__DeleteAccountRequest in = CHATWEB__BILLING__DELETE_ACCOUNT_REQUEST__INIT;
    ProtobufCMessage *out = NULL;
    char err[256], msg[320];
    int done, rc;

    if (need_user(o, &done) != 0)
        return done;
    if (o->u.is_static)
        return wfail(o, 200, "static users are managed by BASIC_AUTH_USER");
    in.user_id = o->u.id;
    in.actor = (char *)o->actor;
    in.request_id = (char *)o->rid;
    rc = billing_call(o, "/rpc/Billing/DeleteAccount", &in.base,
                      &chatweb__billing__delete_account_response__descriptor, &out, err,
                      sizeof(err));
    if (out != NULL)
        svc_rpc_message_destroy(&out);
    if (rc != SVC_OK && rc != SVC_ENOTFOUND) {
        snprintf(msg, sizeof(msg), "billing: %s", err);
        return wfail(o, 503, msg);
    }
    rc = auth_user_delete(o->a, o->u.id);
    if (rc == SVC_ENOTFOUND)
        return wfail(o, 200, MSG_NOT_FOUND);
    if (rc != SVC_OK)
        return wfail(o, 503, "database unavailable");
    audit(o, MSG_SUCCESS, "");
    return ok(o, NULL);
}

static int act_set_password(struct op *o)
{
    const char *pw = str_field(o, "i_password");
    char hash[AUTH_HASH_MAX + 1], msg[128];
    int done, rc;

    if (need_user(o, &done) != 0)
        return done;
    if (o->u.is_static)
        return wfail(o, 200, "static users are managed by BASIC_AUTH_USER");
    if (!password_ok(o, pw)) {
        snprintf(msg, sizeof(msg), "密码不合法 | invalid password (%zu-%d bytes)", o->a->cfg.pw_min,
                 AUTH_PASSWORD_MAX);
        return wfail(o, 200, msg);
    }
    if (auth_pw_hash(o->a, pw, hash) != SVC_OK)
        return wfail(o, 500, "internal error");
    rc = auth_user_set_credentials(o->a, o->u.id, NULL, hash);
    svc_util_wipe(hash, sizeof(hash));
    if (rc != SVC_OK)
        return wfail(o, rc == SVC_ENOTFOUND ? 200 : 503,
                     rc == SVC_ENOTFOUND ? MSG_NOT_FOUND : "database unavailable");
    audit(o, MSG_SUCCESS, "");
    return ok(o, NULL);
}

/*
 * A key's limits from the request: 0 when models, rpm and tpm are all valid. Otherwise the
 * failure is answered, *done is what the action returns, and the result is -1, as need_user: the
 * reply's own return value (SVC_HTTP_DONE) is 0, so it cannot double as "stop here" (it once
 * did, and a refused key was created anyway, with limits never read).
 */
static int limits(struct op *o, char *models, size_t mlen, int64_t *rpm, int64_t *tpm, int *done)
{
    const char *why = NULL;

    if (models_field(o, models, mlen) != SVC_OK)
        why = "models must be an array of model names (or a comma-separated string)";
    else if (int_field(o, "rpm", 0, 0, 1000000, rpm) != SVC_OK)
        why = "rpm must be an integer in [0, 1000000]";
    else if (int_field(o, "tpm", 0, 0, COUNT_MAX, tpm) != SVC_OK)
        why = "tpm must be an integer in [0, 10^12]";
    if (why == NULL)
        return 0;
    *done = wfail(o, 200, why);
    return -1;
}

/*
 * An API key name is shown in lists and on the admin page: at most AUTH_KEY_NAME_MAX bytes of
 * valid UTF-8 with no markup (< >), no control characters (C0, DEL, C1), no line or paragraph
 * separators and no bidirectional overrides (which make a name display as something else).
 */
static int key_name_ok(const char *name)
{
    const unsigned char *p = (const unsigned char *)name;
    size_t n = strlen(name), i;

    if (n > AUTH_KEY_NAME_MAX || !svc_util_utf8_valid(name, n))
        return 0;
    for (i = 0; i < n; i++) {
        if (p[i] < 0x20 || p[i] == 0x7f || p[i] == '<' || p[i] == '>')
            return 0;
        if (p[i] == 0xc2 && i + 1 < n && p[i + 1] >= 0x80 && p[i + 1] <= 0x9f)
            return 0; /* U+0080..U+009F */
        if (p[i] == 0xe2 && i + 2 < n && p[i + 1] == 0x80 && p[i + 2] >= 0xa8 && p[i + 2] <= 0xae)
            return 0; /* U+2028..U+202E */
        if (p[i] == 0xe2 && i + 2 < n && p[i + 1] == 0x81 && p[i + 2] >= 0xa6 && p[i + 2] <= 0xa9)
            return 0; /* U+2066..U+2069 */
    }
    return 1;
}

static int act_create_key(struct op *o)
{
    const char *name = str_field(o, "name");
    char models[AUTH_MODELS_MAX + 1], key[AUTH_KEY_LEN + 1], detail[64];
    struct auth_key k;
    int64_t rpm, tpm;
    int done, rc;

    if (need_user(o, &done) != 0)
        return done;
    if (!key_name_ok(name))
        return wfail(o, 200,
                     "name must be at most 64 bytes of printable UTF-8 without < > or control "
                     "characters");
    if (limits(o, models, sizeof(models), &rpm, &tpm, &done) != 0)
        return done;
    rc = auth_key_create(o->a, o->u.id, name, models, rpm, tpm, key, &k);
    if (rc != SVC_OK)
        return wfail(o, 503, "database unavailable");
    snprintf(detail, sizeof(detail), "prefix=%s", k.prefix);
    audit(o, MSG_SUCCESS, detail);
    rc = ok(o, svc_json_pack("{s:s,s:s,s:s,s:I}", "key", key, "prefix", k.prefix, "name", k.name,
                             "created_at", (long long)k.created_at));
    svc_util_wipe(key, sizeof(key));
    return rc;
}

static int act_revoke_key(struct op *o)
{
    const char *prefix = str_field(o, "prefix");
    char detail[64];
    int done, rc;

    if (need_user(o, &done) != 0)
        return done;
    rc = auth_key_revoke(o->a, o->u.id, prefix);
    if (rc == SVC_ENOTFOUND)
        return wfail(o, 200, MSG_NOT_FOUND);
    if (rc != SVC_OK)
        return wfail(o, 503, "database unavailable");
    snprintf(detail, sizeof(detail), "prefix=%.16s", prefix);
    audit(o, MSG_SUCCESS, detail);
    return ok(o, NULL);
}

static int act_set_limits(struct op *o)
{
    const char *prefix = str_field(o, "prefix");
    char models[AUTH_MODELS_MAX + 1], detail[128];
    int64_t rpm, tpm;
    int done, rc;

    if (need_user(o, &done) != 0)
        return done;
    if (limits(o, models, sizeof(models), &rpm, &tpm, &done) != 0)
        return done;
    rc = auth_key_set_limits(o->a, o->u.id, prefix, models, rpm, tpm);
    if (rc == SVC_ENOTFOUND)
        return wfail(o, 200, MSG_NOT_FOUND);
    if (rc != SVC_OK)
        return wfail(o, 503, "database unavailable");
    snprintf(detail, sizeof(detail), "prefix=%.16s rpm=%lld tpm=%lld", prefix, (long long)rpm,
             (long long)tpm);
    audit(o, MSG_SUCCESS, detail);
    return ok(o, NULL);
}

static int act_list_keys(struct op *o)
{
    struct svc_db_conn *conn = NULL;
    struct svc_db_rows *rows = NULL;
    struct svc_json *arr;
    size_t r;
    int done, rc;

    if (need_user(o, &done) != 0)
        return done;
    {
        struct svc_db_param p[] = {SVC_DB_I64(o->u.id)};
        if ((rc = svc_db_conn_get(o->a->db, &conn, -1)) == SVC_OK)
            rc = svc_db_query(conn,
                              "SELECT prefix, name, created_at, last_used_at, revoked_at, "
                              "models, rpm, tpm FROM auth_api_keys WHERE user_id = ? ORDER BY id",
                              p, 1, &rows);
        svc_db_conn_put(o->a->db, &conn);
    }
    if (rc != SVC_OK)
        return fail(o, 503, "database unavailable");
    arr = svc_json_array();
    for (r = 0; r < svc_db_rows_count(rows); r++) {
        const char *m = svc_db_rows_text(rows, r, 5);
        struct svc_json *models = svc_json_array();
        const char *p = m ? m : "";
        while (*p) {
            size_t n = strcspn(p, ",");
            if (n > 0)
                svc_json_append(models, svc_json_stringn(p, n));
            p += n;
            if (*p == ',')
                p++;
        }
        svc_json_append(arr, svc_json_pack("{s:s,s:s,s:I,s:I,s:b,s:I,s:o,s:I,s:I}", "prefix",
                                           svc_db_rows_text(rows, r, 0), "name",
                                           svc_db_rows_text(rows, r, 1), "created_at",
                                           (long long)svc_db_rows_i64(rows, r, 2), "last_used_at",
                                           (long long)svc_db_rows_i64(rows, r, 3), "revoked",
                                           svc_db_rows_i64(rows, r, 4) != 0, "revoked_at",
                                           (long long)svc_db_rows_i64(rows, r, 4), "models", models,
                                           "rpm", (long long)svc_db_rows_i64(rows, r, 6), "tpm",
                                           (long long)svc_db_rows_i64(rows, r, 7)));
    }
    svc_db_rows_destroy(&rows);
    return ok(o, arr);
}

/* LIKE pattern "%search%" with %, _ and ! escaped by '!' (a backslash is an escape character
 * inside MariaDB string literals, so it cannot portably be the LIKE escape). */
static void like_pattern(const char *s, char *out, size_t outlen)
{
    size_t j = 0;

    out[j++] = '%';
    for (; *s && j + 3 < outlen; s++) {
        if (*s == '%' || *s == '_' || *s == '!')
            out[j++] = '!';
        out[j++] = *s;
    }
    out[j++] = '%';
    out[j] = '\0';
}

static int act_list(struct op *o)
{
    struct svc_db_conn *conn = NULL;
    struct svc_db_rows *rows = NULL, *cnt = NULL;
    const char *search = str_field(o, "search");
    char pat[2 * AUTH_NAME_MAX + 8];
    int64_t page, per_page;
    struct svc_json *arr, *reply;
    char *body;
    size_t r;
    int rc;

    if (search[0] == '\0')
        search = str_field(o, "i_username"); /* the admin page's username filter */
    if (strlen(search) > AUTH_NAME_MAX)
        return fail(o, 200, "search is longer than 64 bytes");
    if (int_field(o, "page", 1, 1, 1000000, &page) != SVC_OK)
        return fail(o, 200, "page must be an integer >= 1");
    if (int_field(o, "per_page", LIST_MAX, 1, LIST_MAX, &per_page) != SVC_OK)
        return fail(o, 200, "per_page must be an integer in [1, 1000]");
    like_pattern(search, pat, sizeof(pat));
    {
        struct svc_db_param p[] = {SVC_DB_TEXT(pat), SVC_DB_I64(per_page),
                                   SVC_DB_I64((page - 1) * per_page)};
        if ((rc = svc_db_conn_get(o->a->db, &conn, -1)) == SVC_OK)
            rc = svc_db_query(conn,
                              "SELECT id, username, pw_hash, is_static, blocked, model, version, "
                              "pw_epoch, created_at, updated_at FROM auth_users WHERE username "
                              "LIKE ? ESCAPE '!' ORDER BY id LIMIT ? OFFSET ?",
                              p, 3, &rows);
        if (rc == SVC_OK)
            rc = svc_db_query(conn,
                              "SELECT COUNT(*) FROM auth_users WHERE username LIKE ? ESCAPE '!'", p,
                              1, &cnt);
        if (rc != SVC_OK)
            SVC_LOG_ERR(o->rid, "ops", "list: %s", svc_strerror(rc));
        svc_db_conn_put(o->a->db, &conn);
    }
    if (rc != SVC_OK) {
        svc_db_rows_destroy(&rows);
        return auth_reply(o->req, 503, "Fail", "database unavailable", NULL, 1);
    }
    arr = svc_json_array();
    for (r = 0; r < svc_db_rows_count(rows); r++) {
        struct auth_user u;
        struct svc_json *uj, *item;
        /* same columns as store.c's USER_COLS */
        memset(&u, 0, sizeof(u));
        u.id = svc_db_rows_i64(rows, r, 0);
        snprintf(u.username, sizeof(u.username), "%s", svc_db_rows_text(rows, r, 1));
        u.is_static = svc_db_rows_i64(rows, r, 3) != 0;
        u.blocked = svc_db_rows_i64(rows, r, 4) != 0;
        snprintf(u.model, sizeof(u.model), "%s",
                 svc_db_rows_text(rows, r, 5) ? svc_db_rows_text(rows, r, 5) : "");
        u.created_at = svc_db_rows_i64(rows, r, 8);
        uj = user_json(o, &u);
        /* The seed's Go field names (never a password), then ours. Balance keeps the seed's
         * meaning here (total granted: the admin page's "total tokens" column); Remaining is
         * what can still be spent. */
        item = svc_json_pack("{s:I,s:s,s:O,s:O,s:s,s:i,s:O,s:b,s:I}", "ID", (long long)u.id,
                             "Username", u.username, "Balance", svc_json_member(uj, "granted"),
                             "Usage", svc_json_member(uj, "usage"), "Model", u.model, "Isblock",
                             u.blocked, "Remaining", svc_json_member(uj, "balance"), "Static",
                             u.is_static, "CreatedAt", (long long)u.created_at);
        svc_json_destroy(&uj);
        svc_json_append(arr, item);
    }
    reply = svc_json_pack("{s:o,s:s,s:s,s:I,s:I,s:I}", "data", arr, "message", MSG_SUCCESS,
                          "status", "Success", "total", (long long)svc_db_rows_i64(cnt, 0, 0),
                          "page", (long long)page, "per_page", (long long)per_page);
    svc_db_rows_destroy(&rows);
    svc_db_rows_destroy(&cnt);
    body = reply ? svc_json_dump(reply, 0) : NULL;
    svc_json_destroy(&reply);
    if (body == NULL)
        return fail(o, 500, "internal error");
    svc_req_reply(o->req, 200, "application/json; charset=utf-8", body, strlen(body));
    free(body);
    return SVC_HTTP_DONE;
}

static struct svc_json *ledger_json(const Chatweb__Billing__LedgerEntry *e)
{
    return svc_json_pack("{s:I,s:s,s:I,s:I,s:I,s:s,s:s,s:I,s:I,s:s}", "id", (long long)e->id,
                         "kind", e->kind ? e->kind : "", "units", (long long)e->units, "tokens_in",
                         (long long)e->tokens_in, "tokens_out", (long long)e->tokens_out, "model",
                         e->model ? e->model : "", "request_id", e->request_id ? e->request_id : "",
                         "balance_after", (long long)e->balance_after, "created_at_ms",
                         (long long)e->created_at_ms, "note", e->note ? e->note : "");
}

static int act_usage(struct op *o)
{
    Chatweb__Billing__UsageRequest in = CHATWEB__BILLING__USAGE_REQUEST__INIT;
    Chatweb__Billing__UsageResponse *u = NULL;
    ProtobufCMessage *out = NULL;
    int64_t limit, before, days;
    char err[256], msg[320];
    struct svc_json *entries, *daily;
    size_t i;
    int done, rc;

    if (need_user(o, &done) != 0)
        return done;
    if (int_field(o, "limit", 50, 1, 500, &limit) != SVC_OK ||
        int_field(o, "before_id", 0, 0, INT64_MAX, &before) != SVC_OK ||
        int_field(o, "days", 0, 0, 366, &days) != SVC_OK)
        return fail(o, 200, "limit must be 1..500, before_id >= 0, days 0..366");
    in.user_id = o->u.id;
    in.limit = (int32_t)limit;
    in.before_id = before;
    in.days = (int32_t)days;
    rc = billing_call(o, "/rpc/Billing/Usage", &in.base,
                      &chatweb__billing__usage_response__descriptor, &out, err, sizeof(err));
    if (rc != SVC_OK) {
        snprintf(msg, sizeof(msg), "billing: %s", err);
        return fail(o, rc == SVC_EUNAVAIL || rc == SVC_ETIMEDOUT ? 503 : 200, msg);
    }
    u = (Chatweb__Billing__UsageResponse *)out;
    entries = svc_json_array();
    daily = svc_json_array();
    for (i = 0; i < u->n_entries; i++)
        svc_json_append(entries, ledger_json(u->entries[i]));
    for (i = 0; i < u->n_daily; i++) {
        const Chatweb__Billing__DailyUsage *d = u->daily[i];
        svc_json_append(daily,
                        svc_json_pack("{s:s,s:I,s:I,s:I,s:I}", "day", d->day ? d->day : "",
                                      "requests", (long long)d->requests, "tokens_in",
                                      (long long)d->tokens_in, "tokens_out",
                                      (long long)d->tokens_out, "units", (long long)d->units));
    }
    rc = ok(o, svc_json_pack("{s:o,s:I,s:o}", "entries", entries, "next_before_id",
                             (long long)u->next_before_id, "daily", daily));
    svc_rpc_message_destroy(&out);
    return rc;
}

/* ---- model prices (billing ListPrices / SetPrice / DeletePrice) ---- */

#define RATIO_TEXT_MAX 32

/* milli-units -> "2.5" (the text BILLING_PRICES and set_price take). */
static void milli_text(int64_t milli, char *out, size_t outlen)
{
    int64_t whole = milli / 1000, frac = milli % 1000;
    int digits = 3;

    if (milli < 0 || frac == 0) {
        snprintf(out, outlen, "%lld", (long long)(milli < 0 ? milli : whole));
        return;
    }
    while (frac % 10 == 0)
        frac /= 10, digits--;
    snprintf(out, outlen, "%lld.%0*lld", (long long)whole, digits, (long long)frac);
}

/* A ratio field: a string ("2.5"), an integer or a JSON number, as text for billing, which
 * applies BILLING_PRICES's rules to it. A number is written with 15 significant digits, so 0.15
 * stays "0.15"; anything with more than 3 decimals is then refused by billing. */
static int ratio_field(struct op *o, const char *k, char *out, size_t outlen)
{
    struct svc_json *j = svc_json_member(o->in, k);
    int n;

    if (svc_json_is_string(j))
        n = snprintf(out, outlen, "%s", svc_json_str(j));
    else if (svc_json_is_integer(j))
        n = snprintf(out, outlen, "%lld", (long long)svc_json_int(j));
    else if (svc_json_is_real(j))
        n = snprintf(out, outlen, "%.15g", svc_json_number(j));
    else
        return SVC_EINVAL;
    return n > 0 && (size_t)n < outlen ? SVC_OK : SVC_EINVAL;
}

static struct svc_json *price_json(const Chatweb__Billing__ModelPrice *p)
{
    char in[RATIO_TEXT_MAX], out[RATIO_TEXT_MAX];
    struct svc_json *j;

    milli_text(p->input_milli, in, sizeof(in));
    milli_text(p->output_milli, out, sizeof(out));
    j = svc_json_pack("{s:s,s:s,s:s,s:I,s:I,s:s}", "model", p->model ? p->model : "", "input", in,
                      "output", out, "input_milli", (long long)p->input_milli, "output_milli",
                      (long long)p->output_milli, "source", p->source ? p->source : "");
    if (j != NULL && p->source != NULL && strcmp(p->source, "sql") == 0) {
        svc_json_set(j, "updated_at_ms", svc_json_integer(p->updated_at_ms));
        svc_json_set(j, "updated_by", svc_json_string(p->updated_by ? p->updated_by : ""));
        svc_json_set(j, "overrides_env", svc_json_bool(p->overrides_env));
    }
    return j;
}

static int billing_fail(struct op *o, int rc, const char *err, int audited, const char *detail)
{
    char msg[320];

    snprintf(msg, sizeof(msg), "billing: %s", err);
    if (audited)
        audit(o, msg, detail);
    return fail(o, rc == SVC_EUNAVAIL || rc == SVC_ETIMEDOUT ? 503 : 200, msg);
}

static int act_list_prices(struct op *o)
{
    Chatweb__Billing__ListPricesRequest in = CHATWEB__BILLING__LIST_PRICES_REQUEST__INIT;
    Chatweb__Billing__ListPricesResponse *r;
    ProtobufCMessage *out = NULL;
    char err[256];
    struct svc_json *arr;
    int rc;

    rc = billing_call(o, "/rpc/Billing/ListPrices", &in.base,
                      &chatweb__billing__list_prices_response__descriptor, &out, err, sizeof(err));
    if (rc != SVC_OK)
        return billing_fail(o, rc, err, 0, "");
    r = (Chatweb__Billing__ListPricesResponse *)out;
    arr = svc_json_array();
    for (size_t i = 0; i < r->n_prices; i++)
        svc_json_append(arr, price_json(r->prices[i]));
    rc = ok(o, svc_json_pack("{s:o,s:I,s:I}", "prices", arr, "version", (long long)r->version,
                             "applied_version", (long long)r->applied_version));
    svc_rpc_message_destroy(&out);
    return rc;
}

/* The model of a price action, also the audit row's target. */
static const char *price_model(struct op *o)
{
    const char *m = str_field(o, "model");

    o->username = strlen(m) < 128 ? m : "";
    return m;
}

static int act_set_price(struct op *o)
{
    Chatweb__Billing__SetPriceRequest in = CHATWEB__BILLING__SET_PRICE_REQUEST__INIT;
    Chatweb__Billing__SetPriceResponse *r;
    ProtobufCMessage *out = NULL;
    char input[RATIO_TEXT_MAX], output[RATIO_TEXT_MAX], err[256], detail[160];
    const char *model = price_model(o);
    struct svc_json *data;
    int rc;

    if (model[0] == '\0')
        return wfail(o, 200, "model is required");
    if (ratio_field(o, "input", input, sizeof(input)) != SVC_OK ||
        ratio_field(o, "output", output, sizeof(output)) != SVC_OK)
        return wfail(o, 200, "input and output are required: units per token, e.g. \"2.5\"");
    snprintf(detail, sizeof(detail), "input=%s output=%s", input, output);
    in.model = (char *)model;
    in.input = input;
    in.output = output;
    in.actor = (char *)o->actor;
    in.request_id = (char *)o->rid;
    rc = billing_call(o, "/rpc/Billing/SetPrice", &in.base,
                      &chatweb__billing__set_price_response__descriptor, &out, err, sizeof(err));
    if (rc != SVC_OK)
        return billing_fail(o, rc, err, 1, detail);
    r = (Chatweb__Billing__SetPriceResponse *)out;
    data = r->price ? price_json(r->price) : svc_json_object();
    svc_json_set(data, "created", svc_json_bool(r->created));
    svc_rpc_message_destroy(&out);
    audit(o, MSG_SUCCESS, detail);
    return ok(o, data);
}

static int act_delete_price(struct op *o)
{
    Chatweb__Billing__DeletePriceRequest in = CHATWEB__BILLING__DELETE_PRICE_REQUEST__INIT;
    ProtobufCMessage *out = NULL;
    const char *model = price_model(o);
    char err[256];
    int rc, deleted;

    if (model[0] == '\0')
        return wfail(o, 200, "model is required");
    in.model = (char *)model;
    in.actor = (char *)o->actor;
    in.request_id = (char *)o->rid;
    rc = billing_call(o, "/rpc/Billing/DeletePrice", &in.base,
                      &chatweb__billing__delete_price_response__descriptor, &out, err, sizeof(err));
    if (rc != SVC_OK)
        return billing_fail(o, rc, err, 1, "");
    deleted = ((Chatweb__Billing__DeletePriceResponse *)out)->deleted;
    svc_rpc_message_destroy(&out);
    if (!deleted)
        return wfail(o, 200, MSG_NOT_FOUND);
    audit(o, MSG_SUCCESS, "");
    return ok(o, NULL);
}

/* ---- the billing events stream (billing EventsInfo: XINFO STREAM / GROUPS) ---- */

static int act_events(struct op *o)
{
    Chatweb__Billing__EventsInfoRequest in = CHATWEB__BILLING__EVENTS_INFO_REQUEST__INIT;
    Chatweb__Billing__EventsInfoResponse *r;
    ProtobufCMessage *out = NULL;
    char err[256];
    struct svc_json *groups, *data;
    int rc;

    rc = billing_call(o, "/rpc/Billing/EventsInfo", &in.base,
                      &chatweb__billing__events_info_response__descriptor, &out, err, sizeof(err));
    if (rc != SVC_OK)
        return billing_fail(o, rc, err, 0, "");
    r = (Chatweb__Billing__EventsInfoResponse *)out;
    groups = svc_json_array();
    for (size_t i = 0; i < r->n_groups; i++) {
        const Chatweb__Billing__EventsGroup *g = r->groups[i];
        svc_json_append(
            groups,
            svc_json_pack("{s:s,s:I,s:I,s:o,s:s}", "name", g->name ? g->name : "", "consumers",
                          (long long)g->consumers, "pending", (long long)g->pending, "lag",
                          g->lag < 0 ? svc_json_null() : svc_json_integer(g->lag),
                          "last_delivered_id", g->last_delivered_id ? g->last_delivered_id : ""));
    }
    data = svc_json_pack("{s:s,s:b,s:I,s:s,s:s,s:o,s:I}", "stream", r->stream ? r->stream : "",
                         "exists", r->exists, "length", (long long)r->length, "first_id",
                         r->first_id ? r->first_id : "", "last_id", r->last_id ? r->last_id : "",
                         "groups", groups, "outbox_pending", (long long)r->outbox_pending);
    if (data != NULL)
        svc_json_set(data, "redis_error",
                     r->redis_error && r->redis_error[0] ? svc_json_string(r->redis_error)
                                                         : svc_json_null());
    svc_rpc_message_destroy(&out);
    return ok(o, data);
}

/* ---- service health (HEALTH_URLS: each admin port's /readyz) ---- */

static int health_name_ok(const char *s, size_t n)
{
    if (n == 0 || n >= AUTH_HEALTH_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '.' || s[i] == '_' || s[i] == '-'))
            return 0;
    return 1;
}

/* Calls fn(name, url, ud) per entry of a checked spec (copies, NUL-terminated). */
static int health_each(const char *spec, char *err, size_t errlen,
                       void (*fn)(const char *name, const char *url, void *ud), void *ud)
{
    const char *list = spec, *s, *eq;
    size_t count = 0, len;

    while (svc_cfg_list_next(&list, &s, &len)) {
        char name[AUTH_HEALTH_NAME_MAX], url[AUTH_HEALTH_URL_MAX];
        size_t nlen, ulen;

        eq = memchr(s, '=', len);
        nlen = eq ? (size_t)(eq - s) : 0;
        ulen = eq ? len - nlen - 1 : 0;
        if (eq == NULL || !health_name_ok(s, nlen) || ulen >= AUTH_HEALTH_URL_MAX ||
            !((ulen > 7 && strncmp(eq + 1, "http://", 7) == 0) ||
              (ulen > 8 && strncmp(eq + 1, "https://", 8) == 0))) {
            snprintf(err, errlen,
                     "bad entry \"%.*s\" (want name=http://host:port, name of A-Z a-z 0-9 . _ -)",
                     (int)(len > 120 ? 120 : len), s);
            return SVC_EINVAL;
        }
        for (size_t i = 0; i < ulen; i++)
            if ((unsigned char)eq[1 + i] <= 0x20 || (unsigned char)eq[1 + i] >= 0x7f) {
                snprintf(err, errlen, "entry \"%.*s\": the URL has a space or control character",
                         (int)(nlen > 60 ? 60 : nlen), s);
                return SVC_EINVAL;
            }
        if (++count > AUTH_HEALTH_MAX) {
            snprintf(err, errlen, "more than %d entries", AUTH_HEALTH_MAX);
            return SVC_EINVAL;
        }
        memcpy(name, s, nlen);
        name[nlen] = '\0';
        memcpy(url, eq + 1, ulen);
        url[ulen] = '\0';
        if (fn != NULL)
            fn(name, url, ud);
    }
    return SVC_OK;
}

int auth_health_urls_check(const char *spec, char *err, size_t errlen)
{
    return health_each(spec, err, errlen, NULL, NULL);
}

struct health_walk {
    struct op *o;
    struct svc_json *list;
    int ready, total;
};

static void health_one(const char *name, const char *url, void *ud)
{
    struct health_walk *w = ud;
    char target[AUTH_HEALTH_URL_MAX + 16], body[256], err[256];
    int64_t t0 = svc_util_wallclock_ms();
    long status = 0;
    int rc, ready;

    snprintf(target, sizeof(target), "%s%sreadyz", url, url[strlen(url) - 1] == '/' ? "" : "/");
    rc = svc_rpc_get(target, (long)w->o->a->cfg.health_timeout_ms, &status, body, sizeof(body),
                     err, sizeof(err));
    ready = rc == SVC_OK && status == 200;
    w->total++;
    w->ready += ready;
    svc_json_append(w->list, svc_json_pack("{s:s,s:s,s:b,s:i,s:I,s:o}", "name", name, "url", url,
                                           "ready", ready, "status", (int)status, "ms",
                                           (long long)(svc_util_wallclock_ms() - t0), "error",
                                           rc == SVC_OK ? svc_json_null() : svc_json_string(err)));
}

static int act_health(struct op *o)
{
    struct health_walk w = {o, svc_json_array(), 0, 0};
    const char *urls = o->a->cfg.health_urls ? o->a->cfg.health_urls : "";
    char err[256];

    if (health_each(urls, err, sizeof(err), health_one, &w) != SVC_OK) {
        svc_json_destroy(&w.list);
        return fail(o, 200, err);
    }
    return ok(o, svc_json_pack("{s:o,s:i,s:i,s:b}", "services", w.list, "ready", w.ready, "total",
                               w.total, "configured", urls[0] != '\0'));
}

static const struct {
    const char *name;
    int (*fn)(struct op *o);
} actions[] = {
    {"register", act_register},
    {"recharge", act_recharge},
    {"check", act_check},
    {"grant", act_grant},
    {"list", act_list},
    {"delete", act_delete},
    {"set_password", act_set_password},
    {"block", act_block},
    {"unblock", act_unblock},
    {"create_key", act_create_key},
    {"revoke_key", act_revoke_key},
    {"list_keys", act_list_keys},
    {"set_limits", act_set_limits},
    {"usage", act_usage},
    {"list_prices", act_list_prices},
    {"set_price", act_set_price},
    {"delete_price", act_delete_price},
    {"events", act_events},
    {"health", act_health},
};

static int dispatch(struct auth_ctx *a, struct svc_req *req, const char *actor)
{
    struct op o;
    size_t i, len = 0;
    const char *body = svc_req_body(req, &len);
    char jerr[160];
    int rc;

    memset(&o, 0, sizeof(o));
    o.a = a;
    o.req = req;
    o.actor = actor;
    o.rid = svc_req_id(req);
    o.ip = svc_req_client_ip(req);
    /* Duplicate keys are refused (as chat does): with "last wins" an operator reading the body
     * sees count 1 where the service credits the 1000 written after it. */
    o.in = len > 0 ? svc_json_parse(body, len, SVC_JSON_STRICT, jerr, sizeof(jerr))
                   : svc_json_object();
    if (o.in == NULL || !svc_json_is_object(o.in)) {
        rc = auth_reply(req, 400, "Fail", o.in == NULL ? jerr : "the body must be a JSON object",
                        NULL, 1);
        svc_json_destroy(&o.in);
        return rc;
    }
    o.action = str_field(&o, "action");
    o.username = str_field(&o, "i_username");
    if (strlen(o.username) > AUTH_NAME_MAX)
        o.username = "";
    for (i = 0; i < sizeof(actions) / sizeof(actions[0]); i++)
        if (strcmp(o.action, actions[i].name) == 0)
            break;
    if (i == sizeof(actions) / sizeof(actions[0])) {
        rc = fail(&o, 200, "unknown action");
    } else {
        rc = actions[i].fn(&o);
    }
    svc_json_destroy(&o.in);
    svc_util_wipe(&o.u, sizeof(o.u));
    return rc;
}

#define OPS_DISABLED "ops API disabled: OPS_KEY is not set"

/*
 * Wrong operator secrets are counted per client IP in Redis (shared by the replicas): after
 * AUTH_OPS_THROTTLE of them within AUTH_OPS_THROTTLE_WINDOW, every request from that address is
 * answered 429 + Retry-After *before* its secret is compared — also the right one, or a 200 among
 * the 429s would still tell a guesser he found it. A correct secret gives its attempt back, so
 * an operator's own traffic never uses up the budget. Without Redis nothing is throttled.
 */
static void ops_throttle_key(const char *ip, char *out, size_t len)
{
    snprintf(out, len, AUTH_REDIS_PREFIX "opsfail:{%s}", ip != NULL && ip[0] ? ip : "-");
}

/* 1 when the request was answered 429 (throttled); 0 to go on and compare the secret. */
static int ops_throttled(struct auth_ctx *a, struct svc_req *req, int *reply)
{
    char key[128], ra[24], msg[160];
    int64_t wait_ms = 0;

    if (a->cfg.ops_throttle_max <= 0)
        return 0;
    ops_throttle_key(svc_req_client_ip(req), key, sizeof(key));
    if (auth_throttle_take(a, key, a->cfg.ops_throttle_max, 0, 0,
                           a->cfg.ops_throttle_window_s * 1000, &wait_ms) != SVC_OK) {
        SVC_LOG_WARN(svc_req_id(req), "ops", "cannot reach Redis: operator secrets unthrottled");
        return 0;
    }
    if (wait_ms <= 0)
        return 0;
    snprintf(ra, sizeof(ra), "%lld", (long long)(wait_ms + 999) / 1000);
    snprintf(msg, sizeof(msg),
             "too many wrong operator credentials from this address, retry after %s s", ra);
    SVC_LOG_WARN(svc_req_id(req), "ops", "throttled %s %s from %s", svc_req_method(req),
                 svc_req_path(req), svc_req_client_ip(req));
    if (svc_req_add_header(req, "Retry-After", ra) != SVC_OK)
        *reply = auth_reply(req, 500, "Fail", "internal error", NULL, 1);
    else
        *reply = auth_reply(req, 429, "Fail", msg, NULL, 1);
    return 1;
}

/* A correct secret: its attempt does not count. */
static void ops_throttle_refund(struct auth_ctx *a, struct svc_req *req)
{
    char key[128];

    if (a->cfg.ops_throttle_max <= 0 || a->redis == NULL)
        return;
    ops_throttle_key(svc_req_client_ip(req), key, sizeof(key));
    auth_throttle_refund(a, key);
}

int auth_ops_accounts(void *ctx, struct svc_req *req)
{
    struct auth_ctx *a = ctx;
    const char *k = svc_req_header(req, "Opskey");
    const char *want = a->cfg.ops_key;
    int reply;

    if (want[0] == '\0')
        return auth_reply(req, 403, "Fail", OPS_DISABLED, NULL, 1);
    if (ops_throttled(a, req, &reply))
        return reply;
    if (k == NULL || !svc_util_secure_equal(k, strlen(k), want, strlen(want))) {
        SVC_LOG_WARN(svc_req_id(req), "ops", "refused: %s Opskey from %s",
                     k == NULL ? "no" : "wrong", svc_req_client_ip(req));
        return auth_reply(req, 401, "Fail", "Header Opskey error", NULL, 1);
    }
    ops_throttle_refund(a, req);
    return dispatch(a, req, "opskey");
}

int auth_ops_admin_accounts(void *ctx, struct svc_req *req)
{
    struct auth_ctx *a = ctx;
    const char *h = svc_req_header(req, "Authorization");
    char decoded[AUTH_CREDENTIALS_MAX + 1];
    char *user = NULL, *pass = NULL;
    const char *want = a->cfg.ops_key;
    int good = 0, reply;

    if (want[0] == '\0')
        return auth_reply(req, 403, "Fail", OPS_DISABLED, NULL, 1);
    /* A browser's first request carries no credentials (it waits for the 401 to ask): that
     * is not a guess, so it is neither throttled nor counted. */
    if (h != NULL && ops_throttled(a, req, &reply))
        return reply;
    if (h != NULL && auth_parse_basic(h, decoded, sizeof(decoded), &user, &pass) == SVC_OK) {
        /* both compares always run: the time does not tell which part was wrong */
        int u_ok = svc_util_secure_equal(user, strlen(user), "admin", 5);
        int p_ok = svc_util_secure_equal(pass, strlen(pass), want, strlen(want));
        good = u_ok & p_ok;
    }
    svc_util_wipe(decoded, sizeof(decoded));
    if (!good) {
        if (h != NULL)
            SVC_LOG_WARN(svc_req_id(req), "ops", "refused admin credentials from %s",
                         svc_req_client_ip(req));
        if (svc_req_add_header(req, "WWW-Authenticate", "Basic realm=\"Authorization Required\"") !=
            SVC_OK)
            return auth_reply(req, 500, "Fail", "internal error", NULL, 1);
        return auth_reply(req, 401, "Fail", "Unauthorized", NULL, 1);
    }
    ops_throttle_refund(a, req);
    return dispatch(a, req, "admin");
}
