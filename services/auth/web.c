/*
 * The browser-facing routes (/api/session /api/verify /api/login /api/logout /api/me) and the
 * RPC methods (Authenticate, ChangeCredentials, SetModel).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "auth.pb-c.h"
#include "billing.pb-c.h"
#include "svc/http.h"
#include "svc/json.h"
#include "svc/log.h"
#include "svc/rpc.h"
#include "svc/util.h"

#define UNAUTHORIZED_MSG "Error: 无访问权限 | No access rights"

int auth_reply(struct svc_req *req, int http, const char *status, const char *message,
               struct svc_json *data, int data_null)
{
    struct svc_json *o;

    if (status != NULL && (data != NULL || data_null)) {
        svc_req_reply_envelope(req, http, status, message ? message : "", data);
        return SVC_HTTP_DONE;
    }
    /* the seed's bare shapes: {"message":...} or {"data":...,"message":...} */
    o = svc_json_pack("{s:s}", "message", message ? message : "");
    if (o != NULL && (data != NULL || data_null))
        svc_json_set(o, "data", data != NULL ? data : svc_json_null());
    else
        svc_json_destroy(&data);
    if (o != NULL && status != NULL)
        svc_json_set(o, "status", svc_json_string(status));
    svc_req_reply_json(req, http, o);
    return SVC_HTTP_DONE;
}

/*
 * A throttled attempt: 429 with Retry-After and "retry after N s" in the envelope. Never the
 * "wrong password" answer (the credentials may be right) nor the Unauthorized envelope (which
 * makes the ChatGPT Web frontend drop a token that is fine).
 */
static int throttled_reply(struct svc_req *req, int64_t retry_after_ms)
{
    char ra[24], msg[192];
    long long secs = retry_after_ms > 0 ? (retry_after_ms + 999) / 1000 : 1;

    snprintf(ra, sizeof(ra), "%lld", secs);
    snprintf(msg, sizeof(msg), "尝试次数过多,请 %lld 秒后再试 | Too many attempts, retry after %lld s",
             secs, secs);
    if (svc_req_add_header(req, "Retry-After", ra) != SVC_OK)
        return auth_reply(req, 500, "Fail", "internal error", NULL, 1);
    return auth_reply(req, 429, "Fail", msg, NULL, 1);
}

/* Parses the request body as a JSON object; replies 400 and returns NULL when it is not one. */
static struct svc_json *body_object(struct svc_req *req)
{
    size_t len = 0;
    const char *b = svc_req_body(req, &len);
    char jerr[160];
    struct svc_json *j;

    if (len == 0)
        return svc_json_object();
    j = svc_json_parse(b, len, SVC_JSON_STRICT, jerr, sizeof(jerr));
    if (j == NULL || !svc_json_is_object(j)) {
        auth_reply(req, 400, "Fail", j == NULL ? jerr : "the body must be a JSON object", NULL, 1);
        svc_json_destroy(&j);
        return NULL;
    }
    return j;
}

static const char *jstr(struct svc_json *o, const char *k)
{
    const char *s = svc_json_str(svc_json_member(o, k));
    return s != NULL ? s : "";
}

/* ---- /api/session ---- */

int auth_api_session(void *ctx, struct svc_req *req)
{
    struct auth_ctx *a = ctx;
    int on = a->cfg.session_auth >= 0 ? a->cfg.session_auth : a->cfg.ops_key[0] != '\0';

    return auth_reply(req, 200, "Success", "",
                      svc_json_pack("{s:b,s:s}", "auth", on, "model", "ChatGPTAPI"), 0);
}

/* ---- /api/verify {token} ---- */

int auth_api_verify(void *ctx, struct svc_req *req)
{
    struct auth_ctx *a = ctx;
    struct svc_json *in = body_object(req);
    char authz[AUTH_CREDENTIALS_MAX + 16];
    enum auth_result res;
    enum auth_scheme scheme;
    struct auth_identity id;
    const char *token;
    int rc;

    if (in == NULL)
        return SVC_HTTP_DONE;
    token = jstr(in, "token");
    while (*token == ' ')
        token++;
    if (token[0] == '\0') {
        svc_json_destroy(&in);
        return auth_reply(req, 200, "Fail", "Secret key is empty", NULL, 1);
    }
    if (strlen(token) > AUTH_CREDENTIALS_MAX) {
        svc_json_destroy(&in);
        return auth_reply(req, 200, "Fail", "密钥无效 | Secret key is invalid", NULL, 1);
    }
    snprintf(authz, sizeof(authz), "Bearer %s", token);
    svc_json_destroy(&in); /* token points into it */
    rc = auth_authenticate(a, authz, NULL, svc_req_client_ip(req), svc_req_id(req), &res, &scheme,
                           &id);
    svc_util_wipe(authz, sizeof(authz));
    if (rc != SVC_OK)
        return auth_reply(req, 503, "Fail", "认证服务不可用 | Authentication unavailable", NULL, 1);
    if (res == AUTH_R_THROTTLED)
        return throttled_reply(req, id.retry_after_ms);
    if (res != AUTH_R_OK)
        return auth_reply(req, 200, "Fail", "密钥无效 | Secret key is invalid", NULL, 1);
    return auth_reply(req, 200, "Success", "Verify successfully", NULL, 1);
}

/* ---- /api/login {username, password} ---- */

int auth_api_login(void *ctx, struct svc_req *req)
{
    struct auth_ctx *a = ctx;
    struct svc_json *in = body_object(req);
    char token[AUTH_SESSION_TOKEN_LEN + 1], cookie[256];
    enum auth_result res;
    struct auth_user u;
    int64_t wait_ms = 0;
    int rc;

    if (in == NULL)
        return SVC_HTTP_DONE;
    rc = auth_check_password(a, jstr(in, "username"), jstr(in, "password"), svc_req_client_ip(req),
                             svc_req_id(req), &res, &u, &wait_ms);
    svc_json_destroy(&in);
    if (rc != SVC_OK)
        return auth_reply(req, 503, "Fail", "认证服务不可用 | Authentication unavailable", NULL, 1);
    switch (res) {
    case AUTH_R_OK:
        break;
    case AUTH_R_BLOCKED:
        return auth_reply(req, 200, "Fail", "账号已被禁用 | Account blocked", NULL, 1);
    case AUTH_R_THROTTLED:
        return throttled_reply(req, wait_ms);
    default:
        return auth_reply(req, 200, "Fail", "用户名或密码错误 | Wrong username or password", NULL,
                          1);
    }
    if (auth_session_create(a, &u, token) != SVC_OK)
        return auth_reply(req, 503, "Fail", "会话服务不可用 | Sessions unavailable", NULL, 1);
    snprintf(cookie, sizeof(cookie), "%s=%s; Path=/; Max-Age=%lld; HttpOnly; SameSite=Lax%s",
             AUTH_COOKIE_NAME, token, (long long)a->cfg.session_ttl_s,
             a->cfg.cookie_secure ? "; Secure" : "");
    if (svc_req_add_header(req, "Set-Cookie", cookie) != SVC_OK ||
        svc_req_add_header(req, "Cache-Control", "no-store") != SVC_OK) {
        svc_util_wipe(cookie, sizeof(cookie));
        svc_util_wipe(token, sizeof(token));
        return auth_reply(req, 500, "Fail", "internal error", NULL, 1);
    }
    svc_util_wipe(cookie, sizeof(cookie));
    SVC_LOG_INFO(svc_req_id(req), "login", "user=%s ip=%s logged in", u.username,
                 svc_req_client_ip(req));
    rc = auth_reply(req, 200, "Success", "",
                    svc_json_pack("{s:s,s:s,s:I}", "token", token, "username", u.username,
                                  "expires_in", (long long)a->cfg.session_ttl_s),
                    0);
    svc_util_wipe(token, sizeof(token));
    return rc;
}

/* ---- /api/logout ---- */

int auth_api_logout(void *ctx, struct svc_req *req)
{
    struct auth_ctx *a = ctx;
    char cookie[128];

    auth_session_delete(a, svc_req_header(req, "Authorization"), svc_req_header(req, "Cookie"));
    snprintf(cookie, sizeof(cookie), "%s=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax%s",
             AUTH_COOKIE_NAME, a->cfg.cookie_secure ? "; Secure" : "");
    if (svc_req_add_header(req, "Set-Cookie", cookie) != SVC_OK)
        return auth_reply(req, 500, "Fail", "internal error", NULL, 1);
    return auth_reply(req, 200, "Success", "", NULL, 1);
}

/* ---- /api/me ---- */

/* Fills balance/usage of data from billing (nulls when billing cannot say). */
static void add_account(struct auth_ctx *a, int64_t uid, const char *rid, struct svc_json *data,
                        int is_static)
{
    Chatweb__Billing__GetAccountRequest in = CHATWEB__BILLING__GET_ACCOUNT_REQUEST__INIT;
    Chatweb__Billing__GetAccountResponse *out = NULL;
    char err[256];

    in.user_id = uid;
    if (a->billing != NULL &&
        svc_rpc_call(a->billing, "/rpc/Billing/GetAccount", &in.base,
                     &chatweb__billing__get_account_response__descriptor, (ProtobufCMessage **)&out,
                     rid, err, sizeof(err)) == SVC_OK &&
        out->account != NULL) {
        Chatweb__Billing__Account *ac = out->account;
        svc_json_set(data, "balance", svc_json_integer(ac->unlimited ? -1 : ac->balance));
        svc_json_set(data, "granted", svc_json_integer(ac->unlimited ? -1 : ac->granted));
        svc_json_set(data, "usage", svc_json_integer(ac->used));
        /* what replies still in flight (or just ended, not yet settled) hold back */
        svc_json_set(data, "held", svc_json_integer(ac->held));
        svc_json_set(data, "unlimited", svc_json_bool(ac->unlimited || is_static));
    } else {
        svc_json_set(data, "balance", is_static ? svc_json_integer(-1) : svc_json_null());
        svc_json_set(data, "granted", is_static ? svc_json_integer(-1) : svc_json_null());
        svc_json_set(data, "usage", svc_json_null());
        svc_json_set(data, "held", svc_json_null());
        svc_json_set(data, "unlimited", svc_json_bool(is_static));
    }
    if (out != NULL) {
        ProtobufCMessage *m = &out->base;
        svc_rpc_message_destroy(&m);
    }
}

int auth_api_me(void *ctx, struct svc_req *req)
{
    struct auth_ctx *a = ctx;
    enum auth_result res;
    enum auth_scheme scheme;
    struct auth_identity id;
    struct svc_json *data;

    if (auth_authenticate(a, svc_req_header(req, "Authorization"), svc_req_header(req, "Cookie"),
                          svc_req_client_ip(req), svc_req_id(req), &res, &scheme, &id) != SVC_OK)
        return auth_reply(req, 503, "Fail", "认证服务不可用 | Authentication unavailable", NULL, 1);
    if (res == AUTH_R_THROTTLED)
        return throttled_reply(req, id.retry_after_ms);
    if (res != AUTH_R_OK && res != AUTH_R_BLOCKED)
        return auth_reply(req, 200, "Unauthorized", UNAUTHORIZED_MSG, NULL, 1);
    data = svc_json_pack("{s:s,s:s,s:b,s:b}", "name", id.username, "model", id.model, "static",
                         id.is_static, "blocked", id.blocked);
    if (data == NULL)
        return auth_reply(req, 500, "Fail", "internal error", NULL, 1);
    /* The web UI links to it when the balance is low (docs/web.md). */
    if (svc_json_set(data, "ops_link",
                     svc_json_string(a->cfg.ops_link ? a->cfg.ops_link : "")) != 0) {
        svc_json_destroy(&data);
        return auth_reply(req, 500, "Fail", "internal error", NULL, 1);
    }
    add_account(a, id.user_id, svc_req_id(req), data, id.is_static);
    return auth_reply(req, 200, "Success", "", data, 0);
}

/* ---- RPC ---- */

struct auth_ctx *auth_rpc_ctx;

static const char *scheme_name(enum auth_scheme s)
{
    switch (s) {
    case AUTH_SCHEME_BASIC:
        return "basic";
    case AUTH_SCHEME_BEARER:
        return "bearer";
    case AUTH_SCHEME_SESSION:
        return "session";
    case AUTH_SCHEME_APIKEY:
        return "apikey";
    default:
        return "";
    }
}

/* Splits a comma-separated list into a protobuf repeated string (arena memory). */
static int split_models(struct svc_rpc_call *call, const char *models, char ***out, size_t *n)
{
    size_t cnt = 0, i = 0;
    const char *p;
    char *copy, *save = NULL, *tok;

    *out = NULL;
    *n = 0;
    if (models == NULL || models[0] == '\0')
        return SVC_OK;
    for (p = models; *p; p++)
        cnt += *p == ',';
    cnt++;
    *out = svc_rpc_alloc(call, cnt * sizeof(char *));
    copy = svc_rpc_strdup(call, models);
    if (*out == NULL || copy == NULL)
        return SVC_ENOMEM;
    for (tok = strtok_r(copy, ",", &save); tok != NULL && i < cnt; tok = strtok_r(NULL, ",", &save))
        if (tok[0] != '\0')
            (*out)[i++] = tok;
    *n = i;
    return SVC_OK;
}

static int rpc_authenticate(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                            ProtobufCMessage *out_msg)
{
    const Chatweb__Auth__AuthenticateRequest *in = (const void *)in_msg;
    Chatweb__Auth__AuthenticateResponse *out = (void *)out_msg;
    struct auth_ctx *a = auth_rpc_ctx;
    Chatweb__Auth__Identity *pid;
    enum auth_result res;
    enum auth_scheme scheme;
    struct auth_identity id;
    int rc;

    (void)ctx;
    rc = auth_authenticate(a, in->authorization, in->cookie, in->client_ip,
                           svc_rpc_request_id(call), &res, &scheme, &id);
    if (rc != SVC_OK) {
        svc_rpc_set_error(call, "authentication backend unavailable");
        return rc;
    }
    out->result = (Chatweb__Auth__AuthResult)res;
    out->scheme = (char *)scheme_name(scheme);
    if (res == AUTH_R_THROTTLED)
        out->retry_after_ms = id.retry_after_ms;
    if (res != AUTH_R_OK && res != AUTH_R_BLOCKED)
        return SVC_OK;
    pid = svc_rpc_alloc(call, sizeof(*pid));
    if (pid == NULL)
        return SVC_ENOMEM;
    chatweb__auth__identity__init(pid);
    pid->user_id = id.user_id;
    pid->username = svc_rpc_strdup(call, id.username);
    pid->is_static = id.is_static;
    pid->model = svc_rpc_strdup(call, id.model);
    pid->blocked = id.blocked;
    pid->key_id = svc_rpc_strdup(call, id.key_id);
    pid->rpm_limit = (int32_t)id.rpm;
    pid->tpm_limit = id.tpm;
    if (pid->username == NULL || pid->model == NULL || pid->key_id == NULL ||
        split_models(call, id.models, &pid->allowed_models, &pid->n_allowed_models) != SVC_OK)
        return SVC_ENOMEM;
    out->identity = pid;
    return SVC_OK;
}

static int rpc_change_credentials(void *ctx, struct svc_rpc_call *call,
                                  const ProtobufCMessage *in_msg, ProtobufCMessage *out_msg)
{
    const Chatweb__Auth__ChangeCredentialsRequest *in = (const void *)in_msg;
    Chatweb__Auth__ChangeCredentialsResponse *out = (void *)out_msg;
    struct auth_ctx *a = auth_rpc_ctx;
    const char *rid = svc_rpc_request_id(call);
    char hash[AUTH_HASH_MAX + 1], *msg;
    enum auth_result res;
    struct auth_user u;
    int64_t wait_ms = 0;
    const char *nn = in->new_username ? in->new_username : "";
    const char *np = in->new_password ? in->new_password : "";
    size_t npl = strlen(np);
    int rc;

    (void)ctx;
    rc = auth_check_password(a, in->username, in->current_password, in->client_ip, rid, &res, &u,
                             &wait_ms);
    if (rc != SVC_OK) {
        svc_rpc_set_error(call, "authentication backend unavailable");
        return rc;
    }
    if (res == AUTH_R_THROTTLED) {
        long long secs = wait_ms > 0 ? (wait_ms + 999) / 1000 : 1;
        out->result = CHATWEB__AUTH__CHANGE_RESULT__CHANGE_DENIED;
        msg = svc_rpc_alloc(call, 160);
        if (msg == NULL)
            return SVC_ENOMEM;
        snprintf(msg, 160, "尝试次数过多,请 %lld 秒后再试 | too many attempts, retry after %lld s",
                 secs, secs);
        out->message = msg;
        return SVC_OK;
    }
    if (res != AUTH_R_OK) {
        out->result = CHATWEB__AUTH__CHANGE_RESULT__CHANGE_DENIED;
        out->message = res == AUTH_R_BLOCKED ? "账号已被禁用 | account blocked"
                                             : "当前用户信息错误 | current credentials wrong";
        return SVC_OK;
    }
    if (u.is_static) {
        out->result = CHATWEB__AUTH__CHANGE_RESULT__CHANGE_STATIC;
        out->message = "静态账户由环境变量管理 | static accounts are managed by BASIC_AUTH_USER";
        return SVC_OK;
    }
    if (!auth_username_valid(nn)) {
        out->result = CHATWEB__AUTH__CHANGE_RESULT__CHANGE_INVALID;
        out->message = "账户不合法 | invalid username";
        return SVC_OK;
    }
    if (npl < a->cfg.pw_min || npl > AUTH_PASSWORD_MAX) {
        out->result = CHATWEB__AUTH__CHANGE_RESULT__CHANGE_INVALID;
        out->message = "密码不合法 | invalid password";
        return SVC_OK;
    }
    if ((rc = auth_pw_hash(a, np, hash)) != SVC_OK)
        return rc;
    rc = auth_user_set_credentials(a, u.id, strcmp(nn, u.username) == 0 ? NULL : nn, hash);
    svc_util_wipe(hash, sizeof(hash));
    if (rc == SVC_EEXIST) {
        out->result = CHATWEB__AUTH__CHANGE_RESULT__CHANGE_NAME_TAKEN;
        out->message = "账户名存在";
        return SVC_OK;
    }
    if (rc == SVC_ENOTFOUND) {
        out->result = CHATWEB__AUTH__CHANGE_RESULT__CHANGE_DENIED;
        out->message = "当前用户信息错误 | current credentials wrong";
        return SVC_OK;
    }
    if (rc != SVC_OK) {
        svc_rpc_set_error(call, "cannot store the change");
        return rc;
    }
    auth_audit(a, u.username, in->client_ip, rid, "change_credentials", nn, "success",
               strcmp(nn, u.username) == 0 ? "password" : "rename+password");
    out->result = CHATWEB__AUTH__CHANGE_RESULT__CHANGE_OK;
    out->message = "更新成功";
    return SVC_OK;
}

static int rpc_set_model(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                         ProtobufCMessage *out_msg)
{
    const Chatweb__Auth__SetModelRequest *in = (const void *)in_msg;
    Chatweb__Auth__SetModelResponse *out = (void *)out_msg;
    const char *m = in->model ? in->model : "";
    int rc;

    (void)ctx;
    if (strlen(m) > AUTH_MODEL_MAX) {
        svc_rpc_set_error(call, "model setting longer than %d bytes", AUTH_MODEL_MAX);
        return SVC_EINVAL;
    }
    rc = auth_user_set_model(auth_rpc_ctx, in->user_id, m);
    if (rc != SVC_OK && rc != SVC_ENOTFOUND)
        return rc;
    out->ok = rc == SVC_OK;
    return SVC_OK;
}

static const struct svc_rpc_method rpc_methods[] = {
    {"/rpc/Auth/Authenticate", &chatweb__auth__authenticate_request__descriptor,
     &chatweb__auth__authenticate_response__descriptor, rpc_authenticate, NULL},
    {"/rpc/Auth/ChangeCredentials", &chatweb__auth__change_credentials_request__descriptor,
     &chatweb__auth__change_credentials_response__descriptor, rpc_change_credentials, NULL},
    {"/rpc/Auth/SetModel", &chatweb__auth__set_model_request__descriptor,
     &chatweb__auth__set_model_response__descriptor, rpc_set_model, NULL},
};

struct svc_rpc_registry auth_rpc_registry = {rpc_methods,
                                             sizeof(rpc_methods) / sizeof(rpc_methods[0])};
