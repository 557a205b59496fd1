/* fu_api: OpenAI-compatible routes and the /_fake inspection routes. See fu_api.h. */
#include "fu_api.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "fu_buf.h"
#include "fu_front.h"
#include "fu_config.h"
#include "fu_http.h"
#include "fu_job.h"
#include "fu_record.h"
#include "fu_reply.h"

/* A response body is never larger than this (the biggest are embeddings batches and
 * /_fake/requests, whose ring is capped at FU_RECORD_MAX_BYTES). */
#define FU_RESP_MAX (200u * 1024u * 1024u)
/* Embeddings: at most this many inputs (the real API's limit) and this many numbers in all. */
#define FU_EMBED_MAX_INPUTS 2048
#define FU_EMBED_MAX_VALUES (4u * 1024u * 1024u)
#define FU_EMBED_MAX_DIMS 8192

static uint32_t api_nonce;

struct model_info {
    const char *id;
    long long created;
    const char *owned_by;
};

static const struct model_info models[] = {
    {"gpt-3.5-turbo", 1677610602, "openai"},
    {"gpt-3.5-turbo-instruct", 1692901427, "system"},
    {"gpt-4", 1687882411, "openai"},
    {"gpt-4-turbo", 1712361441, "system"},
    {"gpt-4o", 1715367049, "system"},
    {"gpt-4o-mini", 1721172741, "system"},
    {"text-embedding-3-small", 1705948997, "system"},
    {"text-embedding-3-large", 1705953180, "system"},
    {"text-embedding-ada-002", 1671217299, "openai-internal"},
};
#define N_MODELS (sizeof(models) / sizeof(models[0]))

/* Everything about the request being answered. */
struct api_req {
    struct fu_conn *c;
    const struct fu_req *req;
    uint64_t t0;  /* monotonic ns when the request was complete */
    uint64_t seq; /* recorded request number */
    struct fu_knobs knobs;
    json_t *body;    /* parsed JSON body or NULL; owned */
    char extra[160]; /* response headers every /v1 answer carries */
};

void fu_api_setup(uint32_t nonce)
{
    api_nonce = nonce;
}

static bool span_eq(const char *s, size_t n, const char *lit)
{
    return strlen(lit) == n && memcmp(s, lit, n) == 0;
}

static bool method_is(const struct fu_req *r, const char *m)
{
    return span_eq(r->method, r->method_len, m);
}

/* ------------------------------------------------------------------------------------------ */
/* sending */

/*
 * Send `body` (taken over and freed) as a complete response: now, or at `due` through a
 * held-back job. `knobs` (may be NULL) supplies cut/stall for successful answers.
 */
static void send_body(struct api_req *x, int status, const char *ctype, struct fu_buf *body,
                      uint64_t due, const struct fu_knobs *knobs, const char *more_headers)
{
    struct fu_buf resp;
    fu_buf_init(&resp, FU_RESP_MAX + 4096);
    char extra[512];
    snprintf(extra, sizeof(extra), "%s%s", x->extra, more_headers ? more_headers : "");
    int rc = fu_http_append_head(&resp, status, ctype, (long long)body->len, false,
                                 fu_conn_keep_alive(x->c), extra);
    if (rc == FU_OK)
        rc = fu_buf_append(&resp, body->data ? body->data : "", body->len);
    fu_buf_deinit(body);
    if (rc != FU_OK)
        goto fail;
    int64_t cut = knobs ? knobs->cut : -1, stall = knobs ? knobs->stall : -1;
    if (due <= fu_now_ns() && cut < 0 && stall < 0) {
        rc = fu_conn_send(x->c, resp.data, resp.len);
        fu_buf_deinit(&resp);
        if (rc != FU_OK)
            goto fail;
        return;
    }
    struct fu_job *job = fu_job_create_oneshot(x->seq, due, &resp, cut, stall);
    if (job == NULL)
        goto fail;
    fu_conn_start_job(x->c, job);
    return;
fail:
    fu_buf_deinit(&resp);
    fu_conn_abort(x->c);
}

/* Send an OpenAI error object. `param` and `code` may be NULL (JSON null). */
static void send_error_at(struct api_req *x, int status, uint64_t due, const char *message,
                          const char *type, const char *param, const char *code,
                          const char *more_headers)
{
    struct fu_buf b;
    fu_buf_init(&b, 64 * 1024);
    int rc = fu_buf_appends(&b, "{\"error\":{\"message\":");
    if (rc == FU_OK)
        rc = fu_buf_append_json_str(&b, message, strlen(message));
    if (rc == FU_OK)
        rc = fu_buf_appendf(&b, ",\"type\":\"%s\",\"param\":", type);
    if (rc == FU_OK)
        rc = param ? fu_buf_append_json_str(&b, param, strlen(param)) : fu_buf_appends(&b, "null");
    if (rc == FU_OK)
        rc = fu_buf_appends(&b, ",\"code\":");
    if (rc == FU_OK)
        rc = code ? fu_buf_append_json_str(&b, code, strlen(code)) : fu_buf_appends(&b, "null");
    if (rc == FU_OK)
        rc = fu_buf_appends(&b, "}}\n");
    if (rc != FU_OK) {
        fu_buf_deinit(&b);
        fu_conn_abort(x->c);
        return;
    }
    send_body(x, status, "application/json", &b, due, NULL, more_headers);
}

static void send_invalid(struct api_req *x, int status, const char *message, const char *param,
                         const char *code)
{
    send_error_at(x, status, 0, message, "invalid_request_error", param, code, NULL);
}

static const char *const parse_error_msg =
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent "
    "was not valid JSON. If you have trouble figuring out how to fix this, please contact us "
    "through our help center at help.openai.com.)";

/* The body OpenAI sends for the status a test asked for, after the ttft delay. */
static void send_fake_error(struct api_req *x, int status, const char *model)
{
    uint64_t due = x->t0 + (uint64_t)x->knobs.ttft_ms * 1000000ull;
    char msg[512];
    switch (status) {
    case 401:
        send_error_at(x, 401, due,
                      "Incorrect API key provided: sk-fake***********************key. You can "
                      "find your API key at https://platform.openai.com/account/api-keys.",
                      "invalid_request_error", NULL, "invalid_api_key", NULL);
        return;
    case 429:
        snprintf(msg, sizeof(msg),
                 "Rate limit reached for %.100s in organization org-fake on requests per min "
                 "(RPM): Limit 3, Used 3, Requested 1. Please try again in 20s. Visit "
                 "https://platform.openai.com/account/rate-limits to learn more.",
                 model ? model : "gpt-3.5-turbo");
        send_error_at(x, 429, due, msg, "requests", NULL, "rate_limit_exceeded",
                      "x-ratelimit-limit-requests: 3\r\nx-ratelimit-remaining-requests: 0\r\n"
                      "x-ratelimit-reset-requests: 20s\r\n");
        return;
    case 500:
        send_error_at(x, 500, due,
                      "The server had an error while processing your request. Sorry about that!",
                      "server_error", NULL, NULL, NULL);
        return;
    case 503:
        send_error_at(x, 503, due, "The engine is currently overloaded, please try again later",
                      "server_error", NULL, NULL, NULL);
        return;
    default:
        snprintf(msg, sizeof(msg), "Fake upstream error %d (requested by a test knob).", status);
        send_error_at(x, status, due, msg, status < 500 ? "invalid_request_error" : "server_error",
                      NULL, NULL, NULL);
        return;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* request validation helpers */

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a decimal";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value";
}

static void invalid_type(struct api_req *x, const char *param, const char *expected,
                         const json_t *got)
{
    char msg[256];
    snprintf(msg, sizeof(msg), "Invalid type for '%s': expected %s, but got %s instead.", param,
             expected, json_type_name(got));
    send_invalid(x, 400, msg, param, "invalid_type");
}

static void missing_param(struct api_req *x, const char *param)
{
    char msg[256];
    snprintf(msg, sizeof(msg), "Missing required parameter: '%s'.", param);
    send_invalid(x, 400, msg, param, "missing_required_parameter");
}

/* The body must be a JSON object with a non-empty string "model". Returns the model or NULL
 * after answering 400. */
static const char *require_model(struct api_req *x)
{
    if (!json_is_object(x->body)) {
        send_invalid(x, 400, parse_error_msg, NULL, NULL);
        return NULL;
    }
    json_t *m = json_object_get(x->body, "model");
    if (!json_is_string(m) || json_string_length(m) == 0) {
        send_invalid(x, 400, "you must provide a model parameter", NULL, NULL);
        return NULL;
    }
    return json_string_value(m);
}

/* Optional integer >= 1 (max_tokens and friends). *out = -1 when absent or null.
 * Returns false after answering 400. */
static bool opt_positive_int(struct api_req *x, const char *name, int64_t *out)
{
    json_t *v = json_object_get(x->body, name);
    *out = -1;
    if (v == NULL || json_is_null(v))
        return true;
    if (!json_is_integer(v)) {
        invalid_type(x, name, "an integer", v);
        return false;
    }
    json_int_t n = json_integer_value(v);
    if (n < 1) {
        char msg[256];
        snprintf(msg, sizeof(msg),
                 "Invalid '%s': integer below minimum value. Expected a value >= 1, but got %lld "
                 "instead.",
                 name, (long long)n);
        send_invalid(x, 400, msg, name, "integer_below_min_value");
        return false;
    }
    *out = n;
    return true;
}

/* Append the text of a message content (string, or the "text" of its parts) to `out`. */
static int content_text(const json_t *content, struct fu_buf *out)
{
    if (json_is_string(content))
        return fu_buf_append(out, json_string_value(content), json_string_length(content));
    if (!json_is_array(content))
        return FU_OK;
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part)
    {
        json_t *t = json_object_get(part, "text");
        if (!json_is_string(t))
            continue;
        int rc = FU_OK;
        if (out->len > 0)
            rc = fu_buf_append(out, " ", 1);
        if (rc == FU_OK)
            rc = fu_buf_append(out, json_string_value(t), json_string_length(t));
        if (rc != FU_OK)
            return rc;
    }
    return FU_OK;
}

/* stream and stream_options.include_usage. Returns false after answering 400. */
static bool stream_flags(struct api_req *x, bool *stream, bool *include_usage)
{
    json_t *s = json_object_get(x->body, "stream");
    *stream = false;
    *include_usage = false;
    if (s && !json_is_null(s)) {
        if (!json_is_boolean(s)) {
            invalid_type(x, "stream", "a boolean", s);
            return false;
        }
        *stream = json_is_true(s);
    }
    json_t *so = json_object_get(x->body, "stream_options");
    if (so == NULL || json_is_null(so))
        return true;
    if (!json_is_object(so)) {
        invalid_type(x, "stream_options", "an object", so);
        return false;
    }
    if (!*stream) {
        send_invalid(x, 400,
                     "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                     "stream_options", NULL);
        return false;
    }
    json_t *iu = json_object_get(so, "include_usage");
    if (iu && !json_is_null(iu)) {
        if (!json_is_boolean(iu)) {
            invalid_type(x, "stream_options.include_usage", "a boolean", iu);
            return false;
        }
        *include_usage = json_is_true(iu);
    }
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* completions (chat and legacy) */

/* What the two completion endpoints share once their request is read. */
struct completion {
    bool legacy;
    const char *model;
    bool stream, include_usage;
    int64_t max_tokens;
    size_t n_msgs;
    uint32_t prompt_tokens;
    struct fu_buf text; /* the last user message (or prompt) as sent */
};

static void answer_completion(struct api_req *x, struct completion *cp)
{
    struct fu_buf clean, body;
    struct fu_reply reply;
    char err[256];
    fu_buf_init(&clean, FU_MAX_BODY_BYTES);
    fu_buf_init(&body, FU_RESP_MAX);
    memset(&reply, 0, sizeof(reply));

    int rc = fu_knobs_from_text(&x->knobs, cp->text.data ? cp->text.data : "", cp->text.len, &clean,
                                err, sizeof(err));
    if (rc == FU_EINVAL) {
        send_invalid(x, 400, err, cp->legacy ? "prompt" : "messages", "fake_invalid_directive");
        goto out;
    }
    if (rc != FU_OK)
        goto oom;
    if (x->knobs.error) {
        send_fake_error(x, x->knobs.error, cp->model);
        goto out;
    }
    if (fu_reply_init(&reply, cp->n_msgs, clean.data ? clean.data : "", clean.len, x->knobs.tokens,
                      cp->max_tokens) != FU_OK)
        goto oom;

    char id[64];
    snprintf(id, sizeof(id), "%s-fake%08x%010llu", cp->legacy ? "cmpl" : "chatcmpl", api_nonce,
             (unsigned long long)x->seq);
    long long created = (long long)time(NULL);

    if (cp->stream) {
        if (!fu_conn_http11(x->c))
            fu_conn_disable_keep_alive(x->c);
        char extra[512];
        snprintf(extra, sizeof(extra), "%sCache-Control: no-cache\r\n", x->extra);
        struct fu_stream_opts o = {
            .legacy = cp->legacy,
            .chunked = fu_conn_http11(x->c),
            .keep_alive = fu_conn_keep_alive(x->c),
            .include_usage = cp->include_usage,
            .id = id,
            .model = cp->model,
            .created = created,
            .prompt_tokens = cp->prompt_tokens,
            .extra_headers = extra,
            .request_seq = x->seq,
            .t0_ns = x->t0,
            .knobs = x->knobs,
        };
        struct fu_job *job = fu_job_create_stream(&o, &reply);
        if (job == NULL)
            goto oom;
        fu_conn_start_job(x->c, job);
        goto out;
    }

    /* Not streamed: the whole answer leaves when its last token would have. */
    rc = fu_buf_appends(&body, "{\"id\":");
    if (rc == FU_OK)
        rc = fu_buf_append_json_str(&body, id, strlen(id));
    if (rc == FU_OK)
        rc = fu_buf_appendf(&body, ",\"object\":\"%s\",\"created\":%lld,\"model\":",
                            cp->legacy ? "text_completion" : "chat.completion", created);
    if (rc == FU_OK)
        rc = fu_buf_append_json_str(&body, cp->model, strlen(cp->model));
    if (rc == FU_OK)
        rc = fu_buf_appends(&body, cp->legacy ? ",\"choices\":[{\"text\":"
                                              : ",\"choices\":[{\"index\":0,\"message\":{"
                                                "\"role\":\"assistant\",\"content\":");
    if (rc == FU_OK) {
        struct fu_buf text;
        fu_buf_init(&text, FU_RESP_MAX / 8);
        rc = fu_reply_render(&reply, &text);
        if (rc == FU_OK)
            rc = fu_buf_append_json_str(&body, text.data ? text.data : "", text.len);
        fu_buf_deinit(&text);
    }
    const char *reason = reply.length_cut ? "length" : "stop";
    if (rc == FU_OK)
        rc = cp->legacy ? fu_buf_appendf(&body,
                                         ",\"index\":0,\"logprobs\":null,"
                                         "\"finish_reason\":\"%s\"}]",
                                         reason)
                        : fu_buf_appendf(&body,
                                         ",\"refusal\":null},\"logprobs\":null,"
                                         "\"finish_reason\":\"%s\"}]",
                                         reason);
    if (rc == FU_OK)
        rc = fu_buf_appends(&body, ",\"usage\":");
    if (rc == FU_OK)
        rc = fu_render_usage(&body, cp->prompt_tokens, reply.n_tokens, !cp->legacy);
    if (rc == FU_OK)
        rc = fu_buf_appends(&body, ",\"system_fingerprint\":\"fp_fake\"}\n");
    if (rc != FU_OK)
        goto oom;
    double interval = x->knobs.tps > 0 ? 1e9 / x->knobs.tps : 0;
    uint64_t due = x->t0 + (uint64_t)x->knobs.ttft_ms * 1000000ull;
    if (reply.n_tokens > 1)
        due += (uint64_t)((double)(reply.n_tokens - 1) * interval);
    send_body(x, 200, "application/json", &body, due, &x->knobs, NULL);
    goto out;
oom:
    send_error_at(x, 500, 0, "The fake upstream ran out of memory.", "server_error", NULL, NULL,
                  NULL);
out:
    fu_reply_deinit(&reply);
    fu_buf_deinit(&clean);
    fu_buf_deinit(&body);
}

static void handle_chat(struct api_req *x)
{
    struct completion cp = {.legacy = false};
    fu_buf_init(&cp.text, FU_MAX_BODY_BYTES);
    struct fu_buf words;
    fu_buf_init(&words, FU_MAX_BODY_BYTES);

    if ((cp.model = require_model(x)) == NULL)
        goto out;
    json_t *msgs = json_object_get(x->body, "messages");
    if (msgs == NULL) {
        missing_param(x, "messages");
        goto out;
    }
    if (!json_is_array(msgs)) {
        invalid_type(x, "messages", "an array of objects", msgs);
        goto out;
    }
    if (json_array_size(msgs) == 0) {
        send_invalid(x, 400,
                     "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                     "but got an empty array instead.",
                     "messages", "empty_array");
        goto out;
    }
    /* Prompt tokens: 3 for the reply primer, then per message 4 plus its words. */
    uint64_t prompt = 3;
    size_t last_user = SIZE_MAX, i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        char param[64];
        json_t *role = json_object_get(m, "role");
        if (!json_is_object(m)) {
            snprintf(param, sizeof(param), "messages[%zu]", i);
            invalid_type(x, param, "an object", m);
            goto out;
        }
        if (!json_is_string(role)) {
            snprintf(param, sizeof(param), "messages[%zu].role", i);
            missing_param(x, param);
            goto out;
        }
        json_t *content = json_object_get(m, "content");
        if (content && !json_is_null(content) && !json_is_string(content) &&
            !json_is_array(content)) {
            snprintf(param, sizeof(param), "messages[%zu].content", i);
            invalid_type(x, param, "a string or an array of content parts", content);
            goto out;
        }
        fu_buf_clear(&words);
        if (content_text(content, &words) != FU_OK)
            goto out;
        prompt += 4 + fu_count_words(words.data ? words.data : "", words.len);
        if (strcmp(json_string_value(role), "user") == 0)
            last_user = i;
    }
    cp.n_msgs = json_array_size(msgs);
    cp.prompt_tokens = prompt > UINT32_MAX ? UINT32_MAX : (uint32_t)prompt;
    if (last_user != SIZE_MAX &&
        content_text(json_object_get(json_array_get(msgs, last_user), "content"), &cp.text) !=
            FU_OK)
        goto out;
    if (!stream_flags(x, &cp.stream, &cp.include_usage))
        goto out;
    /* max_completion_tokens is the newer name; it wins when both are given. */
    int64_t mct, mt;
    if (!opt_positive_int(x, "max_completion_tokens", &mct) ||
        !opt_positive_int(x, "max_tokens", &mt))
        goto out;
    cp.max_tokens = mct >= 0 ? mct : mt;
    answer_completion(x, &cp);
out:
    fu_buf_deinit(&words);
    fu_buf_deinit(&cp.text);
}

static void handle_legacy(struct api_req *x)
{
    struct completion cp = {.legacy = true};
    fu_buf_init(&cp.text, FU_MAX_BODY_BYTES);

    if ((cp.model = require_model(x)) == NULL)
        goto out;
    json_t *p = json_object_get(x->body, "prompt");
    if (p == NULL) {
        missing_param(x, "prompt");
        goto out;
    }
    uint64_t prompt = 0;
    if (json_is_string(p)) {
        cp.n_msgs = 1;
        prompt = fu_count_words(json_string_value(p), json_string_length(p));
        if (fu_buf_append(&cp.text, json_string_value(p), json_string_length(p)) != FU_OK)
            goto out;
    } else if (json_is_array(p) && json_array_size(p) > 0) {
        size_t i;
        json_t *s;
        json_array_foreach(p, i, s)
        {
            if (!json_is_string(s)) {
                invalid_type(x, "prompt", "a string or an array of strings", p);
                goto out;
            }
            prompt += fu_count_words(json_string_value(s), json_string_length(s));
        }
        /* Only one choice is produced; it answers the last prompt. */
        json_t *last = json_array_get(p, json_array_size(p) - 1);
        cp.n_msgs = json_array_size(p);
        if (fu_buf_append(&cp.text, json_string_value(last), json_string_length(last)) != FU_OK)
            goto out;
    } else {
        invalid_type(x, "prompt", "a string or an array of strings", p);
        goto out;
    }
    cp.prompt_tokens = prompt == 0 ? 1 : prompt > UINT32_MAX ? UINT32_MAX : (uint32_t)prompt;
    if (!stream_flags(x, &cp.stream, &cp.include_usage))
        goto out;
    if (!opt_positive_int(x, "max_tokens", &cp.max_tokens))
        goto out;
    answer_completion(x, &cp);
out:
    fu_buf_deinit(&cp.text);
}

/* ------------------------------------------------------------------------------------------ */
/* embeddings */

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Deterministic unit vector for an input identified by `seed`. */
static void embed_vector(uint64_t seed, float *v, size_t dims)
{
    uint64_t st = seed;
    double norm = 0;
    for (size_t i = 0; i < dims; i++) {
        double u = (double)(splitmix64(&st) >> 11) / 9007199254740992.0; /* [0, 1) */
        v[i] = (float)(u * 2.0 - 1.0);
        norm += (double)v[i] * v[i];
    }
    norm = sqrt(norm);
    for (size_t i = 0; i < dims && norm > 0; i++)
        v[i] = (float)(v[i] / norm);
}

static int append_base64(struct fu_buf *out, const unsigned char *p, size_t n)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    int rc = fu_buf_reserve(out, (n + 2) / 3 * 4);
    if (rc != FU_OK)
        return rc;
    char *o = out->data + out->len;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t t = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = tbl[t >> 18];
        *o++ = tbl[(t >> 12) & 63];
        *o++ = tbl[(t >> 6) & 63];
        *o++ = tbl[t & 63];
    }
    if (i < n) {
        uint32_t t = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        *o++ = tbl[t >> 18];
        *o++ = tbl[(t >> 12) & 63];
        *o++ = i + 1 < n ? tbl[(t >> 6) & 63] : '=';
        *o++ = '=';
    }
    out->len = (size_t)(o - out->data);
    out->data[out->len] = '\0';
    return FU_OK;
}

static const char *const input_invalid_msg =
    "'$.input' is invalid. Please check the API reference: "
    "https://platform.openai.com/docs/api-reference.";

/* Seed and token count of one embeddings input (string or token array). Returns false if the
 * item is not a valid input. */
static bool embed_item(const json_t *it, uint64_t *seed, uint64_t *tokens)
{
    uint64_t h = 1469598103934665603ull;
    if (json_is_string(it)) {
        if (json_string_length(it) == 0)
            return false;
        *seed = fnv1a(h, json_string_value(it), json_string_length(it));
        *tokens = fu_count_words(json_string_value(it), json_string_length(it));
        return true;
    }
    if (!json_is_array(it) || json_array_size(it) == 0)
        return false;
    size_t i;
    json_t *t;
    json_array_foreach(it, i, t)
    {
        if (!json_is_integer(t))
            return false;
        json_int_t v = json_integer_value(t);
        h = fnv1a(h, &v, sizeof(v));
    }
    *seed = h;
    *tokens = json_array_size(it);
    return true;
}

static void handle_embeddings(struct api_req *x)
{
    struct fu_buf body;
    fu_buf_init(&body, FU_RESP_MAX);
    float *vec = NULL;
    const char *model = require_model(x);
    if (model == NULL)
        goto out;
    json_t *input = json_object_get(x->body, "input");
    if (input == NULL) {
        missing_param(x, "input");
        goto out;
    }
    /* Normalise to a list of items: a string, a token array, or an array of either. */
    bool single = json_is_string(input) || (json_is_array(input) && json_array_size(input) > 0 &&
                                            json_is_integer(json_array_get(input, 0)));
    size_t n_items = single ? 1 : json_is_array(input) ? json_array_size(input) : 0;
    if (n_items == 0 || n_items > FU_EMBED_MAX_INPUTS) {
        send_invalid(x, 400, input_invalid_msg, NULL, NULL);
        goto out;
    }
    int64_t dims = (int64_t)fu_cfg.embedding_dims;
    json_t *d = json_object_get(x->body, "dimensions");
    if (d && !json_is_null(d)) {
        if (!json_is_integer(d) || json_integer_value(d) < 1 ||
            json_integer_value(d) > FU_EMBED_MAX_DIMS) {
            send_invalid(x, 400, "Invalid 'dimensions': expected an integer in [1, 8192].",
                         "dimensions", "invalid_value");
            goto out;
        }
        dims = json_integer_value(d);
    }
    if ((uint64_t)dims * n_items > FU_EMBED_MAX_VALUES) {
        send_invalid(x, 400, "The fake upstream returns at most 4194304 numbers per request.",
                     "input", "fake_too_large");
        goto out;
    }
    bool base64 = false;
    json_t *ef = json_object_get(x->body, "encoding_format");
    if (ef && !json_is_null(ef)) {
        const char *f = json_string_value(ef);
        if (f == NULL || (strcmp(f, "float") != 0 && strcmp(f, "base64") != 0)) {
            send_invalid(x, 400,
                         "Invalid value for 'encoding_format': expected 'float' or "
                         "'base64'.",
                         "encoding_format", "invalid_value");
            goto out;
        }
        base64 = strcmp(f, "base64") == 0;
    }
    vec = malloc((size_t)dims * sizeof(*vec));
    if (vec == NULL)
        goto oom;
    uint64_t prompt = 0;
    int rc = fu_buf_appends(&body, "{\"object\":\"list\",\"data\":[");
    for (size_t i = 0; rc == FU_OK && i < n_items; i++) {
        const json_t *it = single ? input : json_array_get(input, i);
        uint64_t seed = 0, toks = 0;
        if (!embed_item(it, &seed, &toks)) {
            send_invalid(x, 400, input_invalid_msg, NULL, NULL);
            goto out;
        }
        prompt += toks;
        /* Mixing in dims keeps vectors of different lengths unrelated, as real ones are. */
        embed_vector(seed ^ ((uint64_t)dims * 0x9e3779b97f4a7c15ull), vec, (size_t)dims);
        rc = fu_buf_appendf(
            &body, "%s{\"object\":\"embedding\",\"index\":%zu,\"embedding\":", i ? "," : "", i);
        if (rc == FU_OK && base64) {
            rc = fu_buf_append(&body, "\"", 1);
            if (rc == FU_OK)
                rc = append_base64(&body, (const unsigned char *)vec, (size_t)dims * 4);
            if (rc == FU_OK)
                rc = fu_buf_append(&body, "\"", 1);
        } else if (rc == FU_OK) {
            rc = fu_buf_append(&body, "[", 1);
            for (int64_t k = 0; rc == FU_OK && k < dims; k++)
                rc = fu_buf_appendf(&body, k ? ",%.9g" : "%.9g", (double)vec[k]);
            if (rc == FU_OK)
                rc = fu_buf_append(&body, "]", 1);
        }
        if (rc == FU_OK)
            rc = fu_buf_append(&body, "}", 1);
    }
    if (rc == FU_OK)
        rc = fu_buf_appends(&body, "],\"model\":");
    if (rc == FU_OK)
        rc = fu_buf_append_json_str(&body, model, strlen(model));
    if (rc == FU_OK)
        rc = fu_buf_appendf(&body, ",\"usage\":{\"prompt_tokens\":%llu,\"total_tokens\":%llu}}\n",
                            (unsigned long long)prompt, (unsigned long long)prompt);
    if (rc != FU_OK)
        goto oom;
    send_body(x, 200, "application/json", &body, x->t0 + (uint64_t)x->knobs.ttft_ms * 1000000ull,
              &x->knobs, NULL);
    goto out;
oom:
    send_error_at(x, 500, 0, "The fake upstream ran out of memory.", "server_error", NULL, NULL,
                  NULL);
out:
    free(vec);
    fu_buf_deinit(&body);
}

/* ------------------------------------------------------------------------------------------ */
/* models */

static int append_model(struct fu_buf *b, const struct model_info *m)
{
    return fu_buf_appendf(b,
                          "{\"id\":\"%s\",\"object\":\"model\",\"created\":%lld,"
                          "\"owned_by\":\"%s\"}",
                          m->id, m->created, m->owned_by);
}

static void handle_models(struct api_req *x, const char *id, size_t id_len)
{
    struct fu_buf b;
    fu_buf_init(&b, 64 * 1024);
    int rc = FU_OK;
    if (id == NULL) {
        rc = fu_buf_appends(&b, "{\"object\":\"list\",\"data\":[");
        for (size_t i = 0; rc == FU_OK && i < N_MODELS; i++) {
            if (i)
                rc = fu_buf_append(&b, ",", 1);
            if (rc == FU_OK)
                rc = append_model(&b, &models[i]);
        }
        if (rc == FU_OK)
            rc = fu_buf_appends(&b, "]}\n");
    } else {
        size_t i = 0;
        while (i < N_MODELS && !span_eq(id, id_len, models[i].id))
            i++;
        if (i == N_MODELS) {
            char msg[256];
            snprintf(msg, sizeof(msg), "The model '%.*s' does not exist",
                     (int)(id_len > 100 ? 100 : id_len), id);
            fu_buf_deinit(&b);
            send_invalid(x, 404, msg, "model", "model_not_found");
            return;
        }
        rc = append_model(&b, &models[i]);
        if (rc == FU_OK)
            rc = fu_buf_append(&b, "\n", 1);
    }
    if (rc != FU_OK) {
        fu_buf_deinit(&b);
        fu_conn_abort(x->c);
        return;
    }
    send_body(x, 200, "application/json", &b, x->t0 + (uint64_t)x->knobs.ttft_ms * 1000000ull, NULL,
              NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* /_fake and /healthz (not recorded, no knobs) */

/* Value of the "since" query parameter, 0 when absent or invalid. */
static uint64_t query_since(const struct fu_req *r)
{
    const char *q = r->query;
    size_t n = r->query_len;
    while (q && n > 0) {
        const char *amp = memchr(q, '&', n);
        size_t len = amp ? (size_t)(amp - q) : n;
        if (len > 6 && memcmp(q, "since=", 6) == 0) {
            uint64_t v = 0;
            for (size_t i = 6; i < len && q[i] >= '0' && q[i] <= '9' && v < UINT64_MAX / 10; i++)
                v = v * 10 + (uint64_t)(q[i] - '0');
            return v;
        }
        if (amp == NULL)
            break;
        n -= len + 1;
        q = amp + 1;
    }
    return 0;
}

static void handle_fake(struct api_req *x)
{
    const struct fu_req *r = x->req;
    struct fu_buf b;
    fu_buf_init(&b, FU_RESP_MAX);
    int rc;
    const char *p = r->path + 7; /* after "/_fake/" */
    size_t n = r->path_len - 7;
    bool get = method_is(r, "GET"), post = method_is(r, "POST");
    if (get && span_eq(p, n, "requests")) {
        rc = fu_record_render_requests(&b, query_since(r));
    } else if (get && span_eq(p, n, "events")) {
        rc = fu_record_render_events(&b, query_since(r));
    } else if (get && span_eq(p, n, "stats")) {
        rc = fu_record_render_stats(&b);
    } else if (post && span_eq(p, n, "reset")) {
        fu_record_reset();
        rc = fu_buf_appends(&b, "{\"ok\":true}\n");
    } else if (post && span_eq(p, n, "goaway")) {
        bool q = r->query != NULL;
        enum fu_goaway_mode mode = q && span_eq(r->query, r->query_len, "refuse=1") ? FU_GOAWAY_REFUSE
                                   : q && span_eq(r->query, r->query_len, "drop=1") ? FU_GOAWAY_DROP
                                                                                    : FU_GOAWAY_GRACEFUL;
        rc = fu_buf_appends(&b, fu_front_goaway(mode) ? "{\"ok\":true}\n"
                                                      : "{\"ok\":false,\"error\":\"no front\"}\n");
    } else {
        fu_buf_deinit(&b);
        send_invalid(x, 404, "Unknown /_fake endpoint (GET requests, events, stats; POST reset, goaway).",
                     NULL, NULL);
        return;
    }
    if (rc != FU_OK) {
        fu_buf_deinit(&b);
        send_error_at(x, 500, 0, "The fake upstream ran out of memory.", "server_error", NULL, NULL,
                      NULL);
        return;
    }
    send_body(x, 200, "application/json", &b, 0, NULL, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* dispatch */

/* Apply X-Fake-* headers. Returns false after answering 400. */
static bool apply_knob_headers(struct api_req *x)
{
    static const struct {
        const char *header, *key;
    } map[] = {
        {"x-fake-tps", "tps"},     {"x-fake-ttft-ms", "ttft"},  {"x-fake-tokens", "tokens"},
        {"x-fake-error", "error"}, {"x-fake-cut-after", "cut"}, {"x-fake-stall-after", "stall"},
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        const struct fu_header *h = fu_req_header(x->req, map[i].header);
        if (h == NULL)
            continue;
        char err[256];
        if (fu_knobs_set(&x->knobs, map[i].key, strlen(map[i].key), h->value, h->value_len, err,
                         sizeof(err)) != FU_OK) {
            send_invalid(x, 400, err, map[i].header, "fake_invalid_knob");
            return false;
        }
    }
    return true;
}

/* FAKE_API_KEY: answer 401 like OpenAI when the bearer token is missing or wrong. */
static bool check_auth(struct api_req *x)
{
    const char *key = fu_cfg.api_key;
    if (key[0] == '\0')
        return true;
    const struct fu_header *h = fu_req_header(x->req, "authorization");
    if (h == NULL || h->value_len < 7 || strncasecmp(h->value, "Bearer ", 7) != 0) {
        send_invalid(x, 401,
                     "You didn't provide an API key. You need to provide your API key in an "
                     "Authorization header using Bearer auth (i.e. Authorization: Bearer "
                     "YOUR_KEY), or as the password field (with blank username) if you're "
                     "accessing the API from your browser and are prompted for a username and "
                     "password. You can obtain an API key from "
                     "https://platform.openai.com/account/api-keys.",
                     NULL, NULL);
        return false;
    }
    const char *got = h->value + 7;
    size_t got_len = h->value_len - 7;
    if (span_eq(got, got_len, key))
        return true;
    char msg[256];
    if (got_len > 8)
        snprintf(msg, sizeof(msg),
                 "Incorrect API key provided: %.3s****%.4s. You can find your API key at "
                 "https://platform.openai.com/account/api-keys.",
                 got, got + got_len - 4);
    else
        snprintf(msg, sizeof(msg),
                 "Incorrect API key provided: ****. You can find your API key "
                 "at https://platform.openai.com/account/api-keys.");
    send_invalid(x, 401, msg, NULL, "invalid_api_key");
    return false;
}

void fu_api_handle(struct fu_conn *c, const struct fu_req *req, uint64_t t0_ns)
{
    struct api_req x = {.c = c, .req = req, .t0 = t0_ns};
    const char *path = req->path;
    size_t plen = req->path_len;
    fu_knobs_defaults(&x.knobs);

    if (span_eq(path, plen, "/healthz") && method_is(req, "GET")) {
        struct fu_buf b;
        fu_buf_init(&b, 16);
        if (fu_buf_appends(&b, "ok\n") != FU_OK) {
            fu_buf_deinit(&b);
            fu_conn_abort(c);
            return;
        }
        send_body(&x, 200, "text/plain", &b, 0, NULL, NULL);
        return;
    }
    if (plen > 7 && memcmp(path, "/_fake/", 7) == 0) {
        handle_fake(&x);
        return;
    }

    if (req->body_len > 0)
        x.body = json_loadb(req->body, req->body_len, 0, NULL);
    x.seq = fu_record_request(req, x.body);
    snprintf(x.extra, sizeof(x.extra),
             "x-request-id: req_fake%08x%010llu\r\nx-fake-request-seq: %llu\r\n"
             "openai-version: 2020-10-01\r\n",
             api_nonce, (unsigned long long)x.seq, (unsigned long long)x.seq);

    if (!check_auth(&x) || !apply_knob_headers(&x))
        goto out;
    if (x.knobs.error) {
        json_t *m = json_object_get(x.body, "model");
        send_fake_error(&x, x.knobs.error, json_string_value(m));
        goto out;
    }

    static const char *const post_routes[] = {"/v1/chat/completions", "/v1/completions",
                                              "/v1/embeddings"};
    bool post = method_is(req, "POST"), get = method_is(req, "GET");
    if (post && span_eq(path, plen, post_routes[0])) {
        handle_chat(&x);
    } else if (post && span_eq(path, plen, post_routes[1])) {
        handle_legacy(&x);
    } else if (post && span_eq(path, plen, post_routes[2])) {
        handle_embeddings(&x);
    } else if (get && span_eq(path, plen, "/v1/models")) {
        handle_models(&x, NULL, 0);
    } else if (get && plen > 11 && memcmp(path, "/v1/models/", 11) == 0) {
        handle_models(&x, path + 11, plen - 11);
    } else {
        bool known = span_eq(path, plen, "/v1/models");
        for (size_t i = 0; i < 3; i++)
            known = known || span_eq(path, plen, post_routes[i]);
        char msg[512];
        snprintf(msg, sizeof(msg), "%s (%.*s %.*s)",
                 known ? "Invalid method for URL" : "Invalid URL",
                 (int)(req->method_len > 16 ? 16 : req->method_len), req->method,
                 (int)(plen > 200 ? 200 : plen), path);
        send_invalid(&x, known ? 405 : 404, msg, NULL, NULL);
    }
out:
    json_decref(x.body);
}
