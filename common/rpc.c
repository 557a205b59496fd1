#include "svc/rpc.h"

#include <curl/curl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rpc.pb-c.h"
#include "svc/buf.h"
#include "svc/cfg.h"
#include "svc/fetch.h"
#include "svc/http.h"
#include "svc/log.h"

#define RPC_MAX_RESPONSE (4u << 20)
#define RPC_CTYPE "application/x-protobuf"
#define RPC_SIG_CONTEXT "chatweb-rpc-1\n"
#define RPC_HDR_TS "X-Rpc-Timestamp"
#define RPC_HDR_SIG "X-Rpc-Signature"
#define RPC_SECRET_MAX 1024

/* ---- authentication ---- */

/* Set once at start-up (svc_rpc_set_secret) and only read afterwards, by every thread: the
 * HMAC state after the key and RPC_SIG_CONTEXT. Every signature starts from a copy, which spares
 * it the key's two SHA-256 blocks (a third of a signature's work). */
static crypto_auth_hmacsha256_state rpc_key_state;
static size_t rpc_secret_len;

int svc_rpc_set_secret(const char *secret)
{
    size_t n = secret != NULL ? strlen(secret) : 0;

    if (n == 0) {
        sodium_memzero(&rpc_key_state, sizeof(rpc_key_state));
        rpc_secret_len = 0;
        return SVC_OK;
    }
    if (n < SVC_RPC_SECRET_MIN || n > RPC_SECRET_MAX)
        return SVC_EINVAL;
    if (sodium_init() < 0)
        return SVC_EINTERNAL;
    crypto_auth_hmacsha256_init(&rpc_key_state, (const unsigned char *)secret, n);
    rpc_secret_len = n;
    crypto_auth_hmacsha256_update(&rpc_key_state, (const unsigned char *)RPC_SIG_CONTEXT,
                                  sizeof(RPC_SIG_CONTEXT) - 1);
    return SVC_OK;
}

int svc_rpc_auth_enabled(void)
{
    return rpc_secret_len > 0;
}

int svc_rpc_sign(const char *method, const char *path, const void *body, size_t len,
                 long long timestamp, char *out)
{
    unsigned char digest[crypto_hash_sha256_BYTES], mac[crypto_auth_hmacsha256_BYTES];
    char digest_hex[2 * crypto_hash_sha256_BYTES + 1], ts[24];
    crypto_auth_hmacsha256_state st;

    if (rpc_secret_len == 0)
        return SVC_EINVAL;
    /* The body enters as its hash, so the MAC input is small and its fields unambiguous: none of
     * them can hold a newline (method and path are checked by the HTTP parser, the rest is hex or digits). */
    crypto_hash_sha256(digest, body != NULL ? body : (const void *)"", len);
    sodium_bin2hex(digest_hex, sizeof(digest_hex), digest, sizeof(digest));
    snprintf(ts, sizeof(ts), "%lld", timestamp);
    st = rpc_key_state;
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)method, strlen(method));
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)"\n", 1);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)path, strlen(path));
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)"\n", 1);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)digest_hex, strlen(digest_hex));
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)"\n", 1);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)ts, strlen(ts));
    crypto_auth_hmacsha256_final(&st, mac);
    sodium_bin2hex(out, SVC_RPC_SIG_HEX + 1, mac, sizeof(mac));
    sodium_memzero(&st, sizeof(st));
    return SVC_OK;
}

/* The two signature header lines of a call to path with body, for the client side. */
static int sign_headers(const char *path, const void *body, size_t len, char *ts_line,
                        size_t ts_len, char *sig_line, size_t sig_len)
{
    char sig[SVC_RPC_SIG_HEX + 1];
    long long now = (long long)time(NULL);

    if (svc_rpc_sign("POST", path, body, len, now, sig) != SVC_OK)
        return SVC_EINVAL;
    snprintf(ts_line, ts_len, RPC_HDR_TS ": %lld", now);
    snprintf(sig_line, sig_len, RPC_HDR_SIG ": %s", sig);
    return SVC_OK;
}

/* ---- server ---- */

struct call_alloc {
    struct call_alloc *next;
    /* the memory follows */
};

struct svc_rpc_call {
    struct svc_req *req;
    struct call_alloc *allocs;
    char error[256];
};

void *svc_rpc_alloc(struct svc_rpc_call *call, size_t size)
{
    struct call_alloc *a = calloc(1, sizeof(*a) + size);

    if (a == NULL)
        return NULL;
    a->next = call->allocs;
    call->allocs = a;
    return a + 1;
}

char *svc_rpc_strdup(struct svc_rpc_call *call, const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = svc_rpc_alloc(call, n);

    if (p != NULL)
        memcpy(p, s, n);
    return p;
}

const char *svc_rpc_request_id(const struct svc_rpc_call *call)
{
    return svc_req_id(call->req);
}

const char *svc_rpc_client_ip(const struct svc_rpc_call *call)
{
    return svc_req_client_ip(call->req);
}

void svc_rpc_set_error(struct svc_rpc_call *call, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(call->error, sizeof(call->error), fmt, ap);
    va_end(ap);
}

static void reply_message(struct svc_req *req, int status, const ProtobufCMessage *msg)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(n ? n : 1);

    if (buf == NULL) {
        svc_req_reply(req, 500, "text/plain", "out of memory", 13);
        return;
    }
    protobuf_c_message_pack(msg, buf);
    svc_req_reply(req, status, RPC_CTYPE, buf, n);
    free(buf);
}

static void reply_error_status(struct svc_req *req, int status, int code, const char *message)
{
    Chatweb__Rpc__RpcError e = CHATWEB__RPC__RPC_ERROR__INIT;

    e.code = code;
    e.message = (char *)message;
    reply_message(req, status, &e.base);
}

static void reply_error(struct svc_req *req, int code, const char *message)
{
    reply_error_status(req, svc_err_http_status(code), code, message);
}

/*
 * Checks the caller's signature (see svc/rpc.h). Returns 0 when the call may proceed, otherwise
 * the HTTP status it was refused with (the reply is sent here). The refusal names no reason the
 * caller could use to refine a forgery; the log line does, with the socket peer (not X-Real-IP,
 * which the caller chooses).
 */
static int check_signature(struct svc_req *req)
{
    const char *ts = svc_req_header(req, RPC_HDR_TS), *sig = svc_req_header(req, RPC_HDR_SIG);
    const char *body, *why = NULL;
    char want[SVC_RPC_SIG_HEX + 1];
    long long now = (long long)time(NULL);
    int64_t t;
    size_t len;
    int status = 403;

    if (!svc_rpc_auth_enabled())
        return 0;
    if (ts == NULL || sig == NULL) {
        why = "no signature";
        status = 401;
    } else if (svc_cfg_parse_int(ts, 0, INT64_MAX / 2, &t) != SVC_OK) {
        why = "malformed timestamp";
    } else if (t < now - SVC_RPC_MAX_SKEW_S || t > now + SVC_RPC_MAX_SKEW_S) {
        why = "timestamp outside the allowed window";
    } else {
        body = svc_req_body(req, &len);
        if (svc_rpc_sign(svc_req_method(req), svc_req_path(req), body, len, t, want) != SVC_OK ||
            strlen(sig) != SVC_RPC_SIG_HEX || sodium_memcmp(want, sig, SVC_RPC_SIG_HEX) != 0)
            why = "wrong signature";
    }
    if (why == NULL)
        return 0;
    SVC_LOG_WARN(svc_req_id(req), svc_req_path(req), "rpc refused from peer %s: %s",
                 svc_req_peer_ip(req), why);
    reply_error_status(req, status, SVC_EDENIED,
                       status == 401 ? "authentication required" : "authentication failed");
    return status;
}

int svc_rpc_dispatch(void *ctx, struct svc_req *req)
{
    const struct svc_rpc_registry *reg = ctx;
    const struct svc_rpc_method *m = NULL;
    struct svc_rpc_call call = {.req = req};
    ProtobufCMessage *in = NULL, *out = NULL;
    const char *body;
    size_t len;
    int rc;

    /* Before anything else: an unauthenticated caller learns not even which methods exist. */
    if (check_signature(req) != 0)
        return SVC_HTTP_DONE;
    for (size_t i = 0; i < reg->n; i++)
        if (strcmp(reg->methods[i].path, svc_req_path(req)) == 0)
            m = &reg->methods[i];
    if (m == NULL) {
        reply_error(req, SVC_ENOTFOUND, "no such method");
        return SVC_HTTP_DONE;
    }
    body = svc_req_body(req, &len);
    in = protobuf_c_message_unpack(m->in_desc, NULL, len, (const uint8_t *)body);
    if (in == NULL) {
        reply_error(req, SVC_EINVAL, "malformed request message");
        return SVC_HTTP_DONE;
    }
    out = calloc(1, m->out_desc->sizeof_message);
    if (out == NULL) {
        rc = SVC_ENOMEM;
    } else {
        protobuf_c_message_init(m->out_desc, out);
        rc = m->fn(m->ctx, &call, in, out);
    }
    if (rc == SVC_OK) {
        reply_message(req, 200, out);
    } else {
        if (rc > 0 || rc < SVC_EINTERNAL)
            rc = SVC_EINTERNAL;
        SVC_LOG_INFO(svc_req_id(req), svc_req_path(req), "rpc failed: %s%s%s", svc_strerror(rc),
                     call.error[0] ? ": " : "", call.error);
        reply_error(req, rc, call.error[0] ? call.error : svc_strerror(rc));
    }
    /* out's fields point into call.allocs (or are static defaults): free only the shell. */
    free(out);
    protobuf_c_message_free_unpacked(in, NULL);
    while (call.allocs != NULL) {
        struct call_alloc *a = call.allocs;
        call.allocs = a->next;
        free(a);
    }
    return SVC_HTTP_DONE;
}

/* ---- client ---- */

struct svc_rpc_client {
    char *base_url;
    const char *path_prefix; /* the path part of base_url ("" for "http://host:port") */
    long timeout_ms;
};

int svc_rpc_client_create(struct svc_rpc_client **out, const char *base_url, long timeout_ms,
                          char *err, size_t errlen)
{
    struct svc_rpc_client *c;
    size_t n;

    *out = NULL;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (base_url == NULL || strstr(base_url, "://") == NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "not a URL: %s", base_url != NULL ? base_url : "(null)");
        return SVC_EINVAL;
    }
    if ((c = calloc(1, sizeof(*c))) == NULL)
        return SVC_ENOMEM;
    c->base_url = strdup(base_url);
    if (c->base_url == NULL) {
        free(c);
        return SVC_ENOMEM;
    }
    n = strlen(c->base_url);
    while (n > 0 && c->base_url[n - 1] == '/')
        c->base_url[--n] = '\0';
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : 5000;
    /* The server checks the signature over the path it sees, which includes any prefix. */
    {
        const char *p = strstr(c->base_url, "://");
        p = p != NULL ? strchr(p + 3, '/') : NULL;
        c->path_prefix = p != NULL ? p : "";
    }
    *out = c;
    return SVC_OK;
}

/* Fills the signature header lines of a call (empty lines when authentication is off). */
static int call_sign(const struct svc_rpc_client *c, const char *method, const void *body,
                     size_t len, char *ts_line, size_t ts_len, char *sig_line, size_t sig_len)
{
    char path[512];

    ts_line[0] = sig_line[0] = '\0';
    if (!svc_rpc_auth_enabled())
        return SVC_OK;
    if ((size_t)snprintf(path, sizeof(path), "%s%s", c->path_prefix, method) >= sizeof(path))
        return SVC_ETOOLARGE;
    return sign_headers(path, body, len, ts_line, ts_len, sig_line, sig_len);
}

void svc_rpc_client_destroy(struct svc_rpc_client **cp)
{
    if (cp == NULL || *cp == NULL)
        return;
    free((*cp)->base_url);
    free(*cp);
    *cp = NULL;
}

void svc_rpc_message_destroy(struct ProtobufCMessage **m)
{
    if (m == NULL || *m == NULL)
        return;
    protobuf_c_message_free_unpacked(*m, NULL);
    *m = NULL;
}

/* Turns a finished HTTP exchange into the call's result. */
static int decode_reply(long status, const uint8_t *body, size_t len,
                        const ProtobufCMessageDescriptor *out_desc, ProtobufCMessage **out,
                        char *err, size_t errlen)
{
    Chatweb__Rpc__RpcError *e;
    int code;

    if (status == 200) {
        *out = protobuf_c_message_unpack(out_desc, NULL, len, body);
        if (*out == NULL) {
            snprintf(err, errlen, "malformed response message");
            return SVC_EIO;
        }
        return SVC_OK;
    }
    e = chatweb__rpc__rpc_error__unpack(NULL, len, body);
    if (e == NULL) {
        snprintf(err, errlen, "HTTP %ld without an RPC error", status);
        return status == 404 ? SVC_ENOTFOUND : SVC_EUNAVAIL;
    }
    code = e->code < 0 && e->code >= SVC_EINTERNAL ? e->code : SVC_EINTERNAL;
    snprintf(err, errlen, "%s", e->message);
    chatweb__rpc__rpc_error__free_unpacked(e, NULL);
    return code;
}

static uint8_t *pack(const ProtobufCMessage *in, size_t *len)
{
    uint8_t *buf;

    *len = protobuf_c_message_get_packed_size(in);
    buf = malloc(*len ? *len : 1);
    if (buf != NULL)
        protobuf_c_message_pack(in, buf);
    return buf;
}

/* One keep-alive easy handle per thread for blocking calls, freed when the thread exits. */
static __thread CURL *tl_easy;
static pthread_key_t tl_easy_key;
static pthread_once_t tl_easy_once = PTHREAD_ONCE_INIT;

static void tl_easy_free(void *easy)
{
    curl_easy_cleanup(easy);
}

static void tl_easy_key_create(void)
{
    if (pthread_key_create(&tl_easy_key, tl_easy_free) != 0)
        SVC_LOG_ERR(NULL, "rpc", "pthread_key_create failed: thread-exit cleanup is off");
}

static CURL *thread_easy(void)
{
    if (tl_easy == NULL) {
        pthread_once(&tl_easy_once, tl_easy_key_create);
        tl_easy = curl_easy_init();
        if (tl_easy != NULL)
            pthread_setspecific(tl_easy_key, tl_easy);
    }
    return tl_easy;
}

static size_t sync_write(char *ptr, size_t size, size_t nmemb, void *userp)
{
    return svc_buf_append(userp, ptr, size * nmemb) == SVC_OK ? size * nmemb : 0;
}

int svc_rpc_call(struct svc_rpc_client *c, const char *method, const ProtobufCMessage *in,
                 const ProtobufCMessageDescriptor *out_desc, ProtobufCMessage **out,
                 const char *request_id, char *err, size_t errlen)
{
    char url[512], hid[128], hdl[64], hts[64], hsig[96];
    struct curl_slist *hdrs = NULL, *tmp;
    struct svc_buf resp;
    uint8_t *body = NULL;
    size_t len;
    long status = 0;
    CURLcode cc;
    int rc;

    *out = NULL;
    svc_buf_init(&resp, RPC_MAX_RESPONSE);
    if (thread_easy() == NULL) {
        snprintf(err, errlen, "curl_easy_init failed");
        return SVC_ENOMEM;
    }
    body = pack(in, &len);
    if (body == NULL) {
        rc = SVC_ENOMEM;
        goto out;
    }
    rc = call_sign(c, method, body, len, hts, sizeof(hts), hsig, sizeof(hsig));
    if (rc != SVC_OK) {
        snprintf(err, errlen, "cannot sign the call to %s%s", c->base_url, method);
        goto out;
    }
    snprintf(url, sizeof(url), "%s%s", c->base_url, method);
    snprintf(hid, sizeof(hid), "X-Request-Id: %s", request_id ? request_id : "");
    snprintf(hdl, sizeof(hdl), "X-Deadline-Ms: %ld", c->timeout_ms);
    const char *lines[] = {"Content-Type: " RPC_CTYPE, "Expect:", hid, hdl, hts, hsig};
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        if (lines[i][0] == '\0')
            continue;
        tmp = curl_slist_append(hdrs, lines[i]);
        if (tmp == NULL) {
            rc = SVC_ENOMEM;
            goto out;
        }
        hdrs = tmp;
    }
    curl_easy_reset(tl_easy);
    curl_easy_setopt(tl_easy, CURLOPT_URL, url);
    curl_easy_setopt(tl_easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(tl_easy, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(tl_easy, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(tl_easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(tl_easy, CURLOPT_TIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(tl_easy, CURLOPT_CONNECTTIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(tl_easy, CURLOPT_WRITEFUNCTION, sync_write);
    curl_easy_setopt(tl_easy, CURLOPT_WRITEDATA, &resp);
    cc = curl_easy_perform(tl_easy);
    if (cc != CURLE_OK) {
        snprintf(err, errlen, "%s%s: %s", c->base_url, method, curl_easy_strerror(cc));
        rc = cc == CURLE_OPERATION_TIMEDOUT ? SVC_ETIMEDOUT : SVC_EUNAVAIL;
        goto out;
    }
    curl_easy_getinfo(tl_easy, CURLINFO_RESPONSE_CODE, &status);
    rc = decode_reply(status, (const uint8_t *)(resp.data ? resp.data : ""), resp.len, out_desc,
                      out, err, errlen);
out:
    curl_slist_free_all(hdrs);
    free(body);
    svc_buf_deinit(&resp);
    return rc;
}

struct get_sink {
    char *body;
    size_t cap, len;
};

static size_t get_write(char *ptr, size_t size, size_t nmemb, void *userp)
{
    struct get_sink *g = userp;
    size_t n = size * nmemb;

    if (g->cap > 0 && g->len + 1 < g->cap) {
        size_t k = n < g->cap - 1 - g->len ? n : g->cap - 1 - g->len;
        memcpy(g->body + g->len, ptr, k);
        g->len += k;
        g->body[g->len] = '\0';
    }
    return n;
}

int svc_rpc_get(const char *url, long timeout_ms, long *status, char *body, size_t bodylen,
                char *err, size_t errlen)
{
    struct get_sink g = {body, bodylen, 0};
    CURLcode cc;

    *status = 0;
    if (bodylen > 0)
        body[0] = '\0';
    if (thread_easy() == NULL) {
        snprintf(err, errlen, "curl_easy_init failed");
        return SVC_ENOMEM;
    }
    curl_easy_reset(tl_easy);
    curl_easy_setopt(tl_easy, CURLOPT_URL, url);
    curl_easy_setopt(tl_easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(tl_easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(tl_easy, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(tl_easy, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    curl_easy_setopt(tl_easy, CURLOPT_WRITEFUNCTION, get_write);
    curl_easy_setopt(tl_easy, CURLOPT_WRITEDATA, &g);
    cc = curl_easy_perform(tl_easy);
    if (cc != CURLE_OK) {
        snprintf(err, errlen, "%s", curl_easy_strerror(cc));
        return cc == CURLE_OPERATION_TIMEDOUT ? SVC_ETIMEDOUT : SVC_EUNAVAIL;
    }
    curl_easy_getinfo(tl_easy, CURLINFO_RESPONSE_CODE, status);
    return SVC_OK;
}

struct async_call {
    const ProtobufCMessageDescriptor *out_desc;
    svc_rpc_done_cb done;
    svc_rpc_release_cb release;
    void *data;
};

static void async_cancelled(void *ud)
{
    struct async_call *ac = ud;

    if (ac->release != NULL)
        ac->release(ac->data);
    free(ac);
}

static void async_done(void *ud, int err, struct svc_fetch *f, long status, const char *body,
                       size_t len, const char *errmsg)
{
    struct async_call *ac = ud;
    ProtobufCMessage *out = NULL;
    char msg[256];
    int rc = err;

    (void)f;
    if (err == SVC_OK)
        rc = decode_reply(status, (const uint8_t *)body, len, ac->out_desc, &out, msg,
                          sizeof(msg));
    else
        snprintf(msg, sizeof(msg), "%s", errmsg ? errmsg : svc_strerror(err));
    ac->done(ac->data, rc, out, rc == SVC_OK ? NULL : msg);
    free(ac);
}

int svc_rpc_call_async(struct svc_fetch **fetch, struct svc_rpc_client *c,
                       struct svc_fetch_multi *m, const char *method, const ProtobufCMessage *in,
                       const ProtobufCMessageDescriptor *out_desc, const char *request_id,
                       svc_rpc_done_cb done, void *ctx)
{
    return svc_rpc_call_async_release(fetch, c, m, method, in, out_desc, request_id, done, NULL,
                                      ctx);
}

int svc_rpc_call_async_release(struct svc_fetch **fetch, struct svc_rpc_client *c,
                               struct svc_fetch_multi *m, const char *method,
                               const ProtobufCMessage *in,
                               const ProtobufCMessageDescriptor *out_desc, const char *request_id,
                               svc_rpc_done_cb done, svc_rpc_release_cb release, void *ctx)
{
    static const struct svc_fetch_callbacks cb = {.on_done = async_done,
                                                  .on_cancel = async_cancelled};
    char url[512], hid[128], hdl[64], hts[64], hsig[96];
    struct svc_fetch_req fr = {0};
    struct async_call *ac = calloc(1, sizeof(*ac));
    uint8_t *body = NULL;
    size_t len;
    int rc;

    *fetch = NULL;
    if (ac == NULL)
        return SVC_ENOMEM;
    body = pack(in, &len);
    if (body == NULL) {
        free(ac);
        return SVC_ENOMEM;
    }
    if ((rc = call_sign(c, method, body, len, hts, sizeof(hts), hsig, sizeof(hsig))) != SVC_OK) {
        free(body);
        free(ac);
        return rc;
    }
    ac->out_desc = out_desc;
    ac->done = done;
    ac->release = release;
    ac->data = ctx;
    snprintf(url, sizeof(url), "%s%s", c->base_url, method);
    snprintf(hid, sizeof(hid), "X-Request-Id: %s", request_id ? request_id : "");
    snprintf(hdl, sizeof(hdl), "X-Deadline-Ms: %ld", c->timeout_ms);
    /* hts and hsig are empty when authentication is off: the list ends there. */
    const char *headers[] = {"Content-Type: " RPC_CTYPE, hid, hdl, hts[0] ? hts : NULL, hsig, NULL};
    fr.method = "POST";
    fr.url = url;
    fr.headers = headers;
    fr.body = body;
    fr.body_len = len;
    fr.connect_timeout_ms = c->timeout_ms;
    fr.timeout_ms = c->timeout_ms;
    fr.max_response = RPC_MAX_RESPONSE;
    rc = svc_fetch_start(fetch, m, &fr, &cb, ac);
    free(body);
    if (rc != SVC_OK)
        free(ac);
    return rc;
}
