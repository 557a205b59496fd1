/*
 * POST /api/chat-process: the ChatGPT Web request, from its body to the metered upstream call.
 *
 *   parse + validate ─> (a seed command: commands.c) ─> Authenticate (auth's client library)
 *        ─> rate limit ─> walk the context chain in Redis, counting it exactly
 *        ─> the meter (services/meter): tokens per minute, Reserve (charge.c) ─> turn.c streams.
 *
 * The turn itself (its lifetime, its answers, the stream to the client, the stored context) is
 * turn.c's; this file decides what the request asks for and admits it. Calls go down only: to
 * commands.c, charge.c, turn.c, context.c and model.c, never back. Everything runs on the
 * request's event loop; nothing blocks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth.pb-c.h"
#include "auth/client.h"
#include "meter/meter.h"
#include "turn.h"
#include "svc/buf.h"
#include "svc/http.h"
#include "svc/json.h"
#include "svc/log.h"
#include "svc/loop.h"
#include "svc/modelmap.h"
#include "svc/ratelimit.h"
#include "svc/redis.h"
#include "svc/util.h"

#define PROMPT_MAX (256u << 10) /* bytes of one prompt */
#define SYSTEM_MAX (32u << 10)  /* bytes of the system message */

/* The context is collected: admit the turn through a meter (its tokens per key and user, then
 * the Reserve), then go upstream (charge.c). */
static void context_collected(struct chat_turn *t)
{
    struct svc_ratelimit_scope sc[2];

    if (chat_turn_meter_create(t) != SVC_OK) {
        chat_turn_reply(t, 500, "Fail", "out of memory");
        return;
    }
    for (int i = 0; i < t->tpm_scopes; i++) {
        sc[i].name = t->tpm_names[i];
        sc[i].limit = t->tpm_limits[i];
    }
    meter_set_tpm(t->meter, t->tpm_tag, sc, t->tpm_scopes);
    chat_charge_reserve(t);
}

/* ---- the context walk ---- */

static void walk_next(struct chat_turn *t);

static long message_cost(struct chat_turn *t, const char *role, const char *content, size_t len)
{
    return (long)svc_modelmap_message_tokens(&t->mi, role, content, len, NULL);
}

/*
 * The newest earlier message does not fit whole: keep the longest tail of its content that does
 * (cut at a UTF-8 character boundary, counted exactly). This is the case of a continuation: a
 * reply cut for length used the whole budget, so without its tail the model would continue
 * blind (docs/tokens.md). A binary search over the start offset; each candidate is counted, so
 * what is sent always fits even where the count of a tail is not monotonic in its start.
 * Returns the shortened message's cost (its content replaced), or -1 when no non-empty tail fits.
 */
static long fit_tail(struct chat_turn *t, struct svc_json *msg, long room)
{
    const char *role = svc_json_str(svc_json_member(msg, "role"));
    struct svc_json *content = svc_json_member(msg, "content");
    const char *s = svc_json_str(content);
    size_t len = svc_json_strlen(content), lo = 0, hi, best;
    long best_cost = -1, c;

    if (s == NULL || role == NULL || room <= 0)
        return -1;
    best = len;
    hi = len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2, m = mid;

        while (m < hi && ((unsigned char)s[m] & 0xC0) == 0x80)
            m++;
        if (m == hi) { /* no character starts in [mid, hi) */
            hi = mid;
            continue;
        }
        if ((c = message_cost(t, role, s + m, len - m)) < 0)
            return -1;
        if (c <= room) {
            best = m;
            best_cost = c;
            hi = mid; /* an earlier start may fit too */
        } else {
            lo = m + 1;
        }
    }
    if (best >= len || best_cost < 0)
        return -1;
    if (svc_json_set(msg, "content", svc_json_stringn(s + best, len - best)) != 0)
        return -1;
    return best_cost;
}

static void on_history(void *ctx, int err, const struct svc_redis_reply *reply)
{
    struct chat_turn *t = ctx;
    struct svc_json *msg = NULL;
    char parent[CHAT_ID_MAX + 1];
    const char *v;
    size_t vlen;

    if (t->req == NULL)
        goto out;
    if (err != SVC_OK || svc_redis_reply_type(reply) == SVC_REDIS_ERROR) {
        svc_metric_add(&t->stats->chat_context_errors_total, 1);
        chat_turn_reply(t, 503, "Fail", "会话存储不可用，请稍后再试 | Conversation store unavailable, "
                                       "please try again later");
        goto out;
    }
    if (svc_redis_reply_type(reply) != SVC_REDIS_STRING) { /* expired or unknown: chain ends */
        context_collected(t);
        goto out;
    }
    v = svc_redis_reply_str(reply, &vlen);
    if (chat_ctx_decode(v, vlen, &msg, parent) != SVC_OK) {
        SVC_LOG_WARN(t->rid, "context", "ignoring a malformed stored message %s", t->walk_id);
        context_collected(t);
        goto out;
    }
    {
        struct svc_json *content = svc_json_member(msg, "content");
        long cost = (long)svc_modelmap_message_tokens(
            &t->mi, svc_json_str(svc_json_member(msg, "role")), svc_json_str(content),
            svc_json_strlen(content), NULL);
        long limit = t->budget - (long)t->setting->CHAT_MIN_RESPONSE_TOKENS.i;
        if (cost >= 0 && t->budget_used + cost > limit && svc_json_array_len(t->history) == 0 &&
            strcmp(svc_json_str(svc_json_member(msg, "role")) ?: "", "assistant") == 0) {
            /* the parent reply alone is too long (a continuation): its tail, then stop */
            cost = fit_tail(t, msg, limit - t->budget_used);
            if (cost >= 0) {
                t->budget_used += cost;
                svc_json_append(t->history, msg);
                SVC_LOG_INFO(t->rid, "context", "parent reply cut to its last %zu bytes to fit",
                             svc_json_strlen(svc_json_member(msg, "content")));
                context_collected(t);
                goto out;
            }
        }
        if (cost < 0 || t->budget_used + cost > limit) { /* older messages would not fit */
            svc_json_destroy(&msg);
            context_collected(t);
            goto out;
        }
        t->budget_used += cost;
    }
    svc_json_append(t->history, msg);
    snprintf(t->walk_id, sizeof(t->walk_id), "%s", parent);
    walk_next(t);
out:
    chat_turn_unref(t);
}

static void walk_next(struct chat_turn *t)
{
    char key[CHAT_KEY_MAX], ttl[24];
    int rc;

    if (t->walk_id[0] == '\0' ||
        svc_json_array_len(t->history) >= (size_t)t->setting->CHAT_MAX_HISTORY.i ||
        chat_ctx_key(key, sizeof(key), t->user_id, t->walk_id) != SVC_OK) {
        context_collected(t);
        return;
    }
    const char *argv[] = {"GET", key};
    size_t lens[] = {3, strlen(key)};
    rc = svc_redis_async_cmd(t->w->redis, on_history, t, 2, argv, lens);
    if (rc != SVC_OK) {
        svc_metric_add(&t->stats->chat_context_errors_total, 1);
        chat_turn_reply(t, 503, "Fail", "会话存储不可用，请稍后再试 | Conversation store unavailable, "
                                       "please try again later");
        return;
    }
    t->refs++;
    /* A conversation in use stays alive: each message read gets a fresh TTL. */
    snprintf(ttl, sizeof(ttl), "%lld", (long long)t->setting->CHAT_SESSION_TTL.i * 60);
    const char *exargv[] = {"EXPIRE", key, ttl};
    size_t exlens[] = {6, strlen(key), strlen(ttl)};
    if (svc_redis_async_cmd(t->w->redis, NULL, NULL, 3, exargv, exlens) != SVC_OK)
        SVC_LOG_DEBUG(t->rid, "context", "cannot refresh a TTL");
}

/* ---- authentication ---- */

/* ---- rate limits ---- */

static void on_rate_checked(void *ctx, int err, int allowed, long long count)
{
    struct chat_turn *t = ctx;

    (void)count;
    if (t->req == NULL)
        goto out;
    if (err != SVC_OK) /* a limiter that cannot count must not stop the chat */
        SVC_LOG_WARN(t->rid, "ratelimit", "cannot count this request: %s", svc_strerror(err));
    if (err == SVC_OK && !allowed) {
        svc_metric_add(&t->stats->chat_rate_limited_total, 1);
        if (svc_req_add_header(t->req, "Retry-After", "60") != SVC_OK)
            SVC_LOG_ERR(t->rid, "ratelimit", "cannot add Retry-After");
        chat_turn_reply(t, 429, "Fail", "Too many requests, please try again later");
        goto out;
    }
    walk_next(t);
out:
    chat_turn_unref(t);
}

/* A key's own RPM when it has one, else CHAT_RATE_LIMIT per user; then the context walk. */
static void rate_limit_then_walk(struct chat_turn *t, const Chatweb__Auth__Identity *id)
{
    char scope[160];
    long long limit = 0;

    if (id != NULL && id->rpm_limit > 0 && id->key_id != NULL && id->key_id[0] != '\0') {
        limit = id->rpm_limit;
        snprintf(scope, sizeof(scope), "key:%s", id->key_id);
    } else if (t->setting->CHAT_RATE_LIMIT.i > 0) {
        limit = t->setting->CHAT_RATE_LIMIT.i;
        snprintf(scope, sizeof(scope), "chat:%lld", t->user_id);
    }
    if (limit == 0 || svc_ratelimit_hit(t->w->redis, scope, limit, 60, on_rate_checked, t) != SVC_OK) {
        walk_next(t);
        return;
    }
    t->refs++;
}

/* The exact prompt of this turn in chat format, before any history: the reply priming, the
 * system message and the user's message. >= 0, or -1 when out of memory. */
static long count_prompt(struct chat_turn *t)
{
    long long n = svc_modelmap_reply_priming(&t->mi), m;

    if (t->system_message != NULL && t->system_message[0] != '\0') {
        m = svc_modelmap_message_tokens(&t->mi, "system", t->system_message,
                                        strlen(t->system_message), NULL);
        if (m < 0)
            return -1;
        n += m;
    }
    if (t->prompt_len > 0) {
        m = svc_modelmap_message_tokens(&t->mi, "user", t->prompt, t->prompt_len, NULL);
        if (m < 0)
            return -1;
        n += m;
    }
    return (long)n;
}

/* The token-per-minute scopes of this turn: the API key's own limit, and CHAT_TPM_LIMIT for the
 * user; both under the user's hash tag, so one atomic script checks them together. */
static void tpm_scopes_setup(struct chat_turn *t, const Chatweb__Auth__Identity *id)
{
    t->tpm_scopes = 0;
    snprintf(t->tpm_tag, sizeof(t->tpm_tag), "u%lld", t->user_id);
    if (id != NULL && id->tpm_limit > 0 && id->key_id != NULL && id->key_id[0] != '\0') {
        snprintf(t->tpm_names[t->tpm_scopes], sizeof(t->tpm_names[0]), "key:%s", id->key_id);
        t->tpm_limits[t->tpm_scopes++] = id->tpm_limit;
    }
    if (t->setting->CHAT_TPM_LIMIT.i > 0) {
        snprintf(t->tpm_names[t->tpm_scopes], sizeof(t->tpm_names[0]), "user");
        t->tpm_limits[t->tpm_scopes++] = t->setting->CHAT_TPM_LIMIT.i;
    }
}

/* Who the client is (from auth, or remembered): commands, refusals, or on with the chat. */
static void on_identity(struct chat_turn *t, int result, const char *scheme,
                        const Chatweb__Auth__Identity *id)
{
    long budget, limit;
    char msg[256];

    if (id != NULL) {
        t->user_id = id->user_id;
        t->is_static = id->is_static;
        t->via_key = id->key_id != NULL && id->key_id[0] != '\0';
        snprintf(t->username, sizeof(t->username), "%s", id->username ? id->username : "");
        snprintf(t->model_setting, sizeof(t->model_setting), "%s", id->model ? id->model : "");
        chat_model_parse(id->model, t->setting->OPENAI_MODEL.s, &t->params);
    }
    if (t->cmd != CHAT_CMD_NONE) {
        chat_command_run(t, result);
        return;
    }
    switch (result) {
    case CHATWEB__AUTH__AUTH_RESULT__AUTH_OK:
        break;
    case CHATWEB__AUTH__AUTH_RESULT__AUTH_UNKNOWN_USER:
    case CHATWEB__AUTH__AUTH_RESULT__AUTH_WRONG_PASSWORD:
    case CHATWEB__AUTH__AUTH_RESULT__AUTH_BLOCKED:
        if (scheme != NULL && strcmp(scheme, "basic") == 0) {
            chat_turn_fail(t, "账号未授权,请输入/login登录其他账户");
            return;
        }
        /* a bearer token the frontend must drop */
        __attribute__((fallthrough));
    default:
        chat_turn_reply(t, 200, "Unauthorized", "Error: 无访问权限 | No access rights");
        return;
    }
    /* The seed's budget rule (§6.3): the user's max_tokens override, else OPENAI_MAX_TOKENS;
     * never more than the model's own context window. */
    svc_modelmap_lookup(t->w->models, t->params.model, &t->mi);
    budget = t->params.max_tokens > 0 ? t->params.max_tokens
                                      : (long)t->setting->OPENAI_MAX_TOKENS.i;
    if (budget > t->mi.context_window)
        budget = (long)t->mi.context_window;
    limit = budget - (long)t->setting->CHAT_MIN_RESPONSE_TOKENS.i;
    t->budget_used = count_prompt(t);
    if (t->budget_used < 0) {
        chat_turn_reply(t, 500, "Fail", "内部错误 | internal error");
        return;
    }
    if (t->budget_used > limit) {
        long over = t->budget_used - limit;
        snprintf(msg, sizeof(msg),
                 "消息过长：%ld tokens，超出 %ld tokens（上下文 %ld，回复保留 %lld） | The message is "
                 "too long: %ld tokens, %ld more than fit (context %ld tokens, %lld kept for the "
                 "reply)",
                 t->budget_used, over, budget, (long long)t->setting->CHAT_MIN_RESPONSE_TOKENS.i,
                 t->budget_used, over, budget, (long long)t->setting->CHAT_MIN_RESPONSE_TOKENS.i);
        chat_turn_fail(t, msg);
        return;
    }
    t->budget = budget;
    /* An API key may be limited to some models (accounts.md). */
    if (id != NULL && id->n_allowed_models > 0) {
        size_t i;
        for (i = 0; i < id->n_allowed_models; i++)
            if (strcmp(id->allowed_models[i], t->params.model) == 0)
                break;
        if (i == id->n_allowed_models) {
            snprintf(msg, sizeof(msg), "此密钥不能使用模型 %.64s | this key may not use model %.64s",
                     t->params.model, t->params.model);
            chat_turn_fail(t, msg);
            return;
        }
    }
    tpm_scopes_setup(t, id);
    snprintf(t->walk_id, sizeof(t->walk_id), "%s", t->parent_id);
    rate_limit_then_walk(t, id);
}

static void on_authenticated(void *ctx, int err, int result, const char *scheme,
                             const Chatweb__Auth__Identity *id, long long retry_after_ms,
                             const char *errmsg)
{
    struct chat_turn *t = ctx;

    t->auth_call = NULL;
    if (err != SVC_OK) {
        svc_metric_add(&t->stats->chat_auth_errors_total, 1);
        SVC_LOG_ERR(t->rid, "auth", "Authenticate failed: %s", errmsg ? errmsg : "");
        chat_turn_reply(t, 503, "Fail", "认证服务不可用，请稍后再试 | Authentication service "
                                        "unavailable, please try again later");
        return;
    }
    if (result == CHATWEB__AUTH__AUTH_RESULT__AUTH_THROTTLED && t->cmd == CHAT_CMD_NONE) {
        /* Throttled is not "wrong": never the Unauthorized envelope, which makes the frontend
         * drop a token that may well be right. */
        char ra[24], msg[200];
        snprintf(ra, sizeof(ra), "%lld", (retry_after_ms + 999) / 1000);
        if (t->req != NULL && svc_req_add_header(t->req, "Retry-After", ra) != SVC_OK)
            SVC_LOG_ERR(t->rid, "auth", "cannot add Retry-After");
        snprintf(msg, sizeof(msg), "登录失败次数过多，请 %s 秒后再试 | Too many failed logins, retry "
                                   "after %s s",
                 ra, ra);
        chat_turn_reply(t, 429, "Fail", msg);
        return;
    }
    on_identity(t, result, scheme, id);
}

/* ---- request parsing ---- */

static int parse_turn(struct chat_turn *t, const char *body, size_t len, char *err, size_t errlen)
{
    struct svc_json *j, *prompt, *options, *parent, *sys, *temp, *topp;
    char jerr[160];
    int rc = SVC_EINVAL;

    j = svc_json_parse(body, len, SVC_JSON_STRICT, jerr, sizeof(jerr));
    if (j == NULL) {
        snprintf(err, errlen, "invalid JSON: %s", jerr);
        return SVC_EINVAL;
    }
    if (!svc_json_is_object(j)) {
        snprintf(err, errlen, "the body must be a JSON object");
        goto out;
    }
    prompt = svc_json_member(j, "prompt");
    options = svc_json_member(j, "options");
    sys = svc_json_member(j, "systemMessage");
    temp = svc_json_member(j, "temperature");
    topp = svc_json_member(j, "top_p");
    if (prompt != NULL && !svc_json_is_string(prompt)) {
        snprintf(err, errlen, "prompt must be a string");
        goto out;
    }
    if (prompt != NULL && svc_json_strlen(prompt) > PROMPT_MAX) {
        snprintf(err, errlen, "prompt is longer than %u bytes", PROMPT_MAX);
        goto out;
    }
    if (options != NULL && !svc_json_is_object(options) && !svc_json_is_null(options)) {
        snprintf(err, errlen, "options must be an object");
        goto out;
    }
    parent = svc_json_member(options, "parentMessageId");
    if (parent != NULL && !svc_json_is_string(parent) && !svc_json_is_null(parent)) {
        snprintf(err, errlen, "options.parentMessageId must be a string");
        goto out;
    }
    if (sys != NULL && !svc_json_is_null(sys) &&
        (!svc_json_is_string(sys) || svc_json_strlen(sys) > SYSTEM_MAX)) {
        snprintf(err, errlen, "systemMessage must be a string of at most %u bytes", SYSTEM_MAX);
        goto out;
    }
    if (temp != NULL && !svc_json_is_null(temp) &&
        (!svc_json_is_number(temp) || svc_json_number(temp) < 0 || svc_json_number(temp) > 2)) {
        snprintf(err, errlen, "temperature must be a number from 0 to 2");
        goto out;
    }
    if (topp != NULL && !svc_json_is_null(topp) &&
        (!svc_json_is_number(topp) || svc_json_number(topp) < 0 || svc_json_number(topp) > 1)) {
        snprintf(err, errlen, "top_p must be a number from 0 to 1");
        goto out;
    }
    t->prompt_len = prompt != NULL ? svc_json_strlen(prompt) : 0;
    t->prompt = malloc(t->prompt_len + 1);
    if (t->prompt == NULL) {
        rc = SVC_ENOMEM;
        goto out;
    }
    memcpy(t->prompt, prompt != NULL ? svc_json_str(prompt) : "", t->prompt_len);
    t->prompt[t->prompt_len] = '\0';
    if (svc_json_is_string(sys) && (t->system_message = strdup(svc_json_str(sys))) == NULL) {
        rc = SVC_ENOMEM;
        goto out;
    }
    if (svc_json_is_string(parent)) {
        /* An id we never minted cannot have context: degrade to "no history", not an error. */
        if (chat_id_valid(svc_json_str(parent)))
            snprintf(t->parent_id, sizeof(t->parent_id), "%s", svc_json_str(parent));
    }
    if (t->prompt_len == 0 && t->parent_id[0] == '\0') {
        snprintf(err, errlen, "prompt is empty");
        goto out;
    }
    if (svc_json_is_number(temp)) {
        t->has_temperature = 1;
        t->temperature = svc_json_number(temp);
    }
    if (svc_json_is_number(topp)) {
        t->has_top_p = 1;
        t->top_p = svc_json_number(topp);
    }
    rc = SVC_OK;
out:
    svc_json_destroy(&j);
    return rc;
}

int chat_process(void *ctx, struct svc_req *req)
{
    const struct chat_ctx *c = ctx;
    struct chat_turn *t = NULL;
    const char *authz = svc_req_header(req, "Authorization");
    const char *cookie;
    const char *body;
    size_t len;
    char err[256];
    int rc;

    svc_metric_add(&c->stats->chat_requests_total, 1);
    if (chat_turn_create(&t, req, c->setting, c->stats) != SVC_OK) {
        svc_req_error(req, 500, "out of memory");
        return SVC_HTTP_DONE;
    }

    body = svc_req_body(req, &len);
    rc = parse_turn(t, body, len, err, sizeof(err));
    if (rc != SVC_OK) {
        chat_turn_reply(t, rc == SVC_EINVAL ? 400 : 500, "Fail", err);
        return SVC_HTTP_DONE;
    }
    {
        const char *lang = svc_req_header(req, "Accept-Language");
        t->lang_en = lang != NULL && strncasecmp(lang, "en", 2) == 0;
    }
    t->cmd = chat_command_parse(t->prompt, &t->cmd_arg);
    if (chat_command_early(t))
        return SVC_HTTP_DONE;

    cookie = svc_req_header(req, "Cookie");
    if ((authz == NULL || authz[0] == '\0') && (cookie == NULL || strstr(cookie, "chatweb_session=") == NULL)) {
        if (t->cmd != CHAT_CMD_NONE) { /* the seed: commands without credentials */
            chat_turn_fail(t, t->lang_en ? "Not logged in" : "未登录");
            return SVC_HTTP_DONE;
        }
        /* The seed's browser-native login: the XHR gets a Basic challenge. */
        if (svc_req_add_header(req, "WWW-Authenticate", "Basic realm=\"Restricted\"") != SVC_OK)
            SVC_LOG_ERR(t->rid, "auth", "cannot add the challenge header");
        svc_req_reply(req, 401, NULL, "", 0);
        return SVC_HTTP_DONE;
    }
    {
        int remembered = 0;
        if (auth_client_authenticate(t->w->auth, t->w->rpc, authz, cookie, svc_req_client_ip(req),
                                     t->rid, on_authenticated, t, &t->auth_call,
                                     &remembered) != SVC_OK) {
            chat_turn_reply(t, 503, "Fail", "认证服务不可用 | Authentication service unavailable");
            return SVC_HTTP_DONE;
        }
        if (remembered) {
            svc_metric_add(&t->stats->chat_auth_memo_hits_total, 1);
            return SVC_HTTP_ASYNC; /* a reply given meanwhile is sent; otherwise we answer later */
        }
    }
    return SVC_HTTP_ASYNC;
}

/* ---- POST /api/config ---- */

/* /api/config never shows a secret (the seed's S5): only whether a proxy is in use. `models`
 * (what the /model command accepts: CHAT_MODELS, else OPENAI_MODEL) and `model` (the default)
 * are for the web UI's model picker, `testUpstream` (CHAT_TEST_UPSTREAM, which the local stack
 * sets when it starts the fake upstream) for its notice that replies are not a model's
 * (docs/web.md). Fields added to the ChatGPT Web contract's; none of its fields changed. */
int chat_web_setup(struct chat_ctx *c)
{
    const struct chat_setting *setting = c->setting;
    const char *list =
        setting->CHAT_MODELS.s[0] ? setting->CHAT_MODELS.s : setting->OPENAI_MODEL.s;
    struct svc_json *models = svc_json_array(), *o = NULL;
    const char *item;
    size_t len;

    while (models != NULL && svc_cfg_list_next(&list, &item, &len))
        if (svc_json_append(models, svc_json_stringn(item, len)) != 0) {
            svc_json_destroy(&models);
            return SVC_ENOMEM;
        }
    if (models != NULL)
        o = svc_json_pack(
            "{s:s,s:s,s:{s:s,s:s,s:I,s:s,s:s,s:s,s:o,s:s,s:b}}", "status", "Success", "message", "",
            "data", "apiModel", "ChatGPTAPI", "reverseProxy", "-", "timeoutMs",
            (long long)setting->CHAT_UPSTREAM_IDLE_TIMEOUT.i * 1000, "socksProxy",
            setting->SOCKS_PROXY.s[0] != '\0' ? "(configured)" : "-", "httpsProxy", "-",
            "usage", "-", "models", models, "model", setting->OPENAI_MODEL.s, "testUpstream",
            setting->CHAT_TEST_UPSTREAM.i != 0);
    c->config_reply = o != NULL ? svc_json_dump(o, 0) : NULL;
    svc_json_destroy(&o);
    return c->config_reply != NULL ? SVC_OK : SVC_ENOMEM;
}

void chat_web_teardown(struct chat_ctx *c)
{
    free(c->config_reply);
    c->config_reply = NULL;
}

int chat_config(void *ctx, struct svc_req *req)
{
    const struct chat_ctx *c = ctx;

    svc_req_reply(req, 200, "application/json; charset=utf-8", c->config_reply,
                  strlen(c->config_reply));
    return SVC_HTTP_DONE;
}
