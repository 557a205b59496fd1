/*
 * The seed's chat commands inside /api/chat-process (seed-behaviour §4.4.1). Every answer is
 * HTTP 200 {"status":"Fail", message, data:null}: the frontend then shows the message as the
 * reply. Messages keep the seed's Chinese text; Accept-Language: en... picks English.
 *
 *   /help           no identity needed
 *   /login          the dologin cookie toggle that makes the browser ask for new credentials
 *   /me             account, balance, usage, model (auth + billing GetAccount)
 *   /user a:b       rename / new password of the caller's own account (auth ChangeCredentials)
 *   /model x        the caller's model setting, only models on CHAT_MODELS (auth SetModel)
 *
 * Unlike the seed, a blocked user gets nothing but /help (C17), /model is validated (S8), and
 * /user needs the current password and changes only the caller's own account (S1).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth.pb-c.h"
#include "billing.pb-c.h"
#include "svc/fetch.h"
#include "svc/http.h"
#include "svc/log.h"
#include "svc/rpc.h"
#include "svc/util.h"
#include "auth/client.h"
#include "turn.h"

#define HELP_ZH                                                                                    \
    "#### 帮助命令\n- /help 获取帮助信息\n- /me 获取用户信息、Token余额\n- /model 设置使用模型: "      \
    "model_name,temperature,presence,frequency,max_tokens\n- /user 新账户:新密码 更改账户、密码\n"  \
    "- /login 登录、重新登录\n\n[自助中心](%s)\n"
#define HELP_EN                                                                                    \
    "#### Commands\n- /help show this help\n- /me your account and token balance\n- /model set "  \
    "the model: model_name,temperature,presence,frequency,max_tokens\n- /user new_name:new_password " \
    "change your name and password\n- /login log in again\n\n[Self-service centre](%s)\n"

enum chat_command chat_command_parse(const char *prompt, const char **arg)
{
    *arg = "";
    if (prompt[0] != '/')
        return CHAT_CMD_NONE;
    if (strcmp(prompt, "/help") == 0)
        return CHAT_CMD_HELP;
    if (strcmp(prompt, "/login") == 0)
        return CHAT_CMD_LOGIN;
    if (strcmp(prompt, "/me") == 0)
        return CHAT_CMD_ME;
    if (strncmp(prompt, "/user", 5) == 0) {
        *arg = prompt + 5;
        return CHAT_CMD_USER;
    }
    if (strncmp(prompt, "/model", 6) == 0) {
        *arg = prompt + 6;
        return CHAT_CMD_MODEL;
    }
    return CHAT_CMD_NONE;
}

static const char *msg(const struct chat_turn *t, const char *zh, const char *en)
{
    return t->lang_en ? en : zh;
}

int chat_command_early(struct chat_turn *t)
{
    char text[1024];
    const char *cookie;

    switch (t->cmd) {
    case CHAT_CMD_HELP:
        snprintf(text, sizeof(text), t->lang_en ? HELP_EN : HELP_ZH, t->setting->OPS_LINK.s);
        chat_turn_fail(t, text);
        return 1;
    case CHAT_CMD_LOGIN:
        cookie = svc_req_header(t->req, "Cookie");
        if (cookie != NULL && strstr(cookie, "dologin=yes") != NULL) {
            if (svc_req_add_header(t->req, "Set-Cookie", "dologin=yes; Path=/; Max-Age=0") !=
                SVC_OK)
                SVC_LOG_ERR(t->rid, "command", "cannot set a cookie");
            chat_turn_fail(t, msg(t, "登录成功", "Logged in"));
        } else {
            /* Makes the browser forget its cached Basic credentials and ask again. */
            if (svc_req_add_header(t->req, "Set-Cookie", "dologin=yes; Path=/; Max-Age=86400") !=
                    SVC_OK ||
                svc_req_add_header(t->req, "WWW-Authenticate", "Basic realm=\"Restricted\"") !=
                    SVC_OK)
                SVC_LOG_ERR(t->rid, "command", "cannot set headers");
            svc_req_reply(t->req, 401, NULL, "", 0);
        }
        return 1;
    default:
        return 0;
    }
}

/* ---- /me ---- */

static void on_account(void *ctx, int err, ProtobufCMessage *out_msg, const char *errmsg)
{
    struct chat_turn *t = ctx;
    Chatweb__Billing__GetAccountResponse *out = (void *)out_msg;
    const Chatweb__Billing__Account *a = out != NULL ? out->account : NULL;
    char text[1024], balance[64];
    size_t n;

    t->billing_call = NULL;
    if (err != SVC_OK && err != SVC_ENOTFOUND) {
        SVC_LOG_WARN(t->rid, "command", "GetAccount failed: %s", errmsg ? errmsg : "");
        chat_turn_reply(t, 503, "Fail", "计费服务不可用 | Billing service unavailable");
        goto out;
    }
    if (a != NULL && a->unlimited)
        snprintf(balance, sizeof(balance), "%s", msg(t, "无限制", "unlimited"));
    else
        snprintf(balance, sizeof(balance), "%lld", a != NULL ? (long long)a->balance : 0LL);
    n = (size_t)snprintf(text, sizeof(text), t->lang_en ? "Account: %s\nToken balance: %s\nTokens used: %lld"
                                                        : "账户: %s\nToken余额: %s\n已用Token: %lld",
                         t->username, balance, a != NULL ? (long long)a->used : 0LL);
    if (t->model_setting[0] != '\0' && n < sizeof(text))
        snprintf(text + n, sizeof(text) - n, "%s%s", msg(t, "\n模型配置: ", "\nModel: "),
                 t->model_setting);
    chat_turn_fail(t, text);
out:
    if (out_msg != NULL)
        svc_rpc_message_destroy(&out_msg);
    chat_turn_unref(t);
}

static void run_me(struct chat_turn *t)
{
    Chatweb__Billing__GetAccountRequest in = CHATWEB__BILLING__GET_ACCOUNT_REQUEST__INIT;

    in.user_id = t->user_id;
    if (svc_rpc_call_async(&t->billing_call, t->w->billing, t->w->rpc, "/rpc/Billing/GetAccount",
                           &in.base, &chatweb__billing__get_account_response__descriptor, t->rid,
                           on_account, t) != SVC_OK) {
        chat_turn_reply(t, 503, "Fail", "计费服务不可用 | Billing service unavailable");
        return;
    }
    t->refs++;
}

/* ---- /user name:password ---- */

static int alnum_run(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9')))
            return 0;
    return 1;
}

/* The seed's rule: ^/user ([a-zA-Z][a-zA-Z0-9]{3,11}):([a-zA-Z0-9]{6,12})$ */
static int parse_user_arg(const char *arg, char *name, size_t nlen, char *pass, size_t plen)
{
    const char *colon;
    size_t un, pn;

    if (arg[0] != ' ')
        return -1;
    arg++;
    colon = strchr(arg, ':');
    if (colon == NULL)
        return -1;
    un = (size_t)(colon - arg);
    pn = strlen(colon + 1);
    if (un < 4 || un > 12 || pn < 6 || pn > 12 || !alnum_run(arg, un) ||
        !alnum_run(colon + 1, pn) || !((arg[0] >= 'a' && arg[0] <= 'z') ||
                                       (arg[0] >= 'A' && arg[0] <= 'Z')))
        return -1;
    snprintf(name, nlen, "%.*s", (int)un, arg);
    snprintf(pass, plen, "%s", colon + 1);
    return 0;
}

/* The caller's Basic credentials: /user needs the current password. */
static int basic_password(struct chat_turn *t, char *out, size_t outlen)
{
    const char *h = svc_req_header(t->req, "Authorization");
    char decoded[512];
    const char *colon;

    if (h == NULL || strncasecmp(h, "Basic ", 6) != 0 ||
        svc_util_base64_decode(h + 6, strlen(h + 6), decoded, sizeof(decoded)) < 0 ||
        (colon = strchr(decoded, ':')) == NULL) {
        svc_util_wipe(decoded, sizeof(decoded));
        return -1;
    }
    snprintf(out, outlen, "%s", colon + 1);
    svc_util_wipe(decoded, sizeof(decoded));
    return 0;
}

static void on_changed(void *ctx, int err, ProtobufCMessage *out_msg, const char *errmsg)
{
    struct chat_turn *t = ctx;
    Chatweb__Auth__ChangeCredentialsResponse *out = (void *)out_msg;
    char text[512];

    t->billing_call = NULL;
    if (err != SVC_OK) {
        SVC_LOG_WARN(t->rid, "command", "ChangeCredentials failed: %s", errmsg ? errmsg : "");
        chat_turn_reply(t, 503, "Fail", "认证服务不可用 | Authentication service unavailable");
        goto out;
    }
    switch (out->result) {
    case CHATWEB__AUTH__CHANGE_RESULT__CHANGE_OK:
        auth_client_forget_user(t->user_id); /* the old credentials must stop working here now */
        chat_turn_fail(t, msg(t, "更新成功,请输入/login重新登录",
                              "Updated. Type /login to log in again"));
        break;
    case CHATWEB__AUTH__CHANGE_RESULT__CHANGE_NAME_TAKEN:
        chat_turn_fail(t, msg(t, "更新失败:账户名存在", "Update failed: the name is taken"));
        break;
    default:
        snprintf(text, sizeof(text), "%s%s", msg(t, "更新失败:", "Update failed: "),
                 out->message != NULL && out->message[0] ? out->message : "denied");
        chat_turn_fail(t, text);
        break;
    }
out:
    if (out_msg != NULL)
        svc_rpc_message_destroy(&out_msg);
    chat_turn_unref(t);
}

static void run_user(struct chat_turn *t)
{
    Chatweb__Auth__ChangeCredentialsRequest in = CHATWEB__AUTH__CHANGE_CREDENTIALS_REQUEST__INIT;
    char name[16], pass[16], current[256];
    int rc;

    if (parse_user_arg(t->cmd_arg, name, sizeof(name), pass, sizeof(pass)) != 0) {
        chat_turn_fail(t, msg(t, "账户密码格式不正确\n\n账户格式:大小写字母和数字4-12位,必须字母开头\n"
                                 "密码格式:大小写字母和数字6-12位",
                              "Wrong format\n\nname: 4-12 letters and digits, starting with a "
                              "letter\npassword: 6-12 letters and digits"));
        return;
    }
    if (basic_password(t, current, sizeof(current)) != 0) {
        chat_turn_fail(t, msg(t, "请先用账号密码登录(/login)再修改 | log in with your password first",
                              "Log in with your name and password (/login) first"));
        return;
    }
    in.username = t->username;
    in.current_password = current;
    in.new_username = name;
    in.new_password = pass;
    in.client_ip = (char *)svc_req_client_ip(t->req);
    rc = svc_rpc_call_async(&t->billing_call, t->w->auth, t->w->rpc, "/rpc/Auth/ChangeCredentials",
                            &in.base, &chatweb__auth__change_credentials_response__descriptor,
                            t->rid, on_changed, t);
    svc_util_wipe(current, sizeof(current));
    svc_util_wipe(pass, sizeof(pass));
    if (rc != SVC_OK) {
        chat_turn_reply(t, 503, "Fail", "认证服务不可用 | Authentication service unavailable");
        return;
    }
    t->refs++;
}

/* ---- /model ---- */

static void on_model_set(void *ctx, int err, ProtobufCMessage *out_msg, const char *errmsg)
{
    struct chat_turn *t = ctx;
    Chatweb__Auth__SetModelResponse *out = (void *)out_msg;

    t->billing_call = NULL;
    if (err != SVC_OK || !out->ok) {
        SVC_LOG_WARN(t->rid, "command", "SetModel failed: %s", errmsg ? errmsg : "refused");
        chat_turn_fail(t, msg(t, "更新失败:服务不可用", "Update failed: service unavailable"));
    } else {
        auth_client_forget_user(t->user_id); /* the next request sees the new model */
        chat_turn_fail(t, msg(t, "更新成功", "Updated"));
    }
    if (out_msg != NULL)
        svc_rpc_message_destroy(&out_msg);
    chat_turn_unref(t);
}

static void run_model(struct chat_turn *t)
{
    Chatweb__Auth__SetModelRequest in = CHATWEB__AUTH__SET_MODEL_REQUEST__INIT;
    char value[512], why[400], text[512];
    const char *p = t->cmd_arg;
    size_t n;

    while (*p == ' ')
        p++;
    snprintf(value, sizeof(value), "%s", p);
    n = strlen(value);
    while (n > 0 && value[n - 1] == ' ')
        value[--n] = '\0';
    if (chat_model_validate(value, t->setting->CHAT_MODELS.s[0] ? t->setting->CHAT_MODELS.s
                                                                  : t->setting->OPENAI_MODEL.s,
                            (long)t->setting->CHAT_MIN_RESPONSE_TOKENS.i + 1,
                            (long)t->setting->OPENAI_MAX_TOKENS.i, why, sizeof(why)) != SVC_OK) {
        snprintf(text, sizeof(text), "%s%s", msg(t, "更新失败:", "Update failed: "), why);
        chat_turn_fail(t, text);
        return;
    }
    in.user_id = t->user_id;
    in.model = strcmp(value, "-") == 0 ? "" : value;
    if (svc_rpc_call_async(&t->billing_call, t->w->auth, t->w->rpc, "/rpc/Auth/SetModel", &in.base,
                           &chatweb__auth__set_model_response__descriptor, t->rid, on_model_set,
                           t) != SVC_OK) {
        chat_turn_reply(t, 503, "Fail", "认证服务不可用 | Authentication service unavailable");
        return;
    }
    t->refs++;
}

void chat_command_run(struct chat_turn *t, int auth_result)
{
    if (auth_result != CHATWEB__AUTH__AUTH_RESULT__AUTH_OK) {
        /* Unknown, wrong or blocked: only /help (answered earlier) is left. */
        chat_turn_fail(t, t->cmd == CHAT_CMD_ME
                              ? msg(t, "用户信息错误", "Unknown user")
                              : msg(t, "当前用户信息错误,请输入/login登录其他账户",
                                    "Unknown user. Type /login to use another account"));
        return;
    }
    /* An API key is for calling the service, not for managing the account it belongs to: a
     * leaked key must not be able to rename the account or change its model settings. */
    if (t->via_key && (t->cmd == CHAT_CMD_USER || t->cmd == CHAT_CMD_MODEL)) {
        chat_turn_fail(t, msg(t, "API 密钥不能修改账户设置，请用账户密码登录",
                              "An API key cannot change account settings; sign in with the "
                              "account's password"));
        return;
    }
    switch (t->cmd) {
    case CHAT_CMD_ME:
        run_me(t);
        break;
    case CHAT_CMD_USER:
        run_user(t);
        break;
    case CHAT_CMD_MODEL:
        run_model(t);
        break;
    default:
        chat_turn_fail(t, "内部错误");
        break;
    }
}
