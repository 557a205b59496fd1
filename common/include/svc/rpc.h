#ifndef SVC_RPC_H
#define SVC_RPC_H

#include <stddef.h>
#include <stdint.h>

#include "svc/err.h"

/*
 * Internal RPC: protobuf-c messages over HTTP/1.1 (design brief §3.2).
 *   POST /rpc/<Service>/<Method>   Content-Type: application/x-protobuf
 *   X-Request-Id: <id>             carried across every hop, for logs
 *   X-Deadline-Ms: <ms left>       how long the caller waits (its timeout); informational for
 *                                  the callee, not enforced by this layer
 *   X-Rpc-Timestamp: <unix s>      when the call was signed
 *   X-Rpc-Signature: <64 hex>      HMAC-SHA256 under the shared RPC_SECRET (svc_rpc_sign)
 * 200 carries the response message; any other status carries chatweb.rpc.RpcError.
 * Messages (the .proto files in proto/) are compiled by protoc-c at build time.
 *
 * Authentication (docs/decisions.md, docs/security.md): once svc_rpc_set_secret() was given a
 * secret, every call this process makes is signed and every call it serves must carry a valid
 * signature made within SVC_RPC_MAX_SKEW_S seconds of its clock, checked before the body is
 * decoded: no signature headers is 401, a wrong or stale one is 403 (RpcError SVC_EDENIED), both
 * logged at warning with the peer address. Without a secret nothing is signed or checked; the
 * services only run that way with RPC_INSECURE=true (common/service.c).
 */

struct svc_req;
struct svc_fetch_multi;
struct svc_fetch;

/* protobuf-c's message types, declared here so this header does not include protobuf-c.h (the
 * generated *.pb-c.h headers of proto/ do). Identical typedefs may be repeated in C11. */
typedef struct ProtobufCMessage ProtobufCMessage;
typedef struct ProtobufCMessageDescriptor ProtobufCMessageDescriptor;

/* ---- authentication ---- */

#define SVC_RPC_SECRET_MIN 32 /* characters */
#define SVC_RPC_MAX_SKEW_S 60 /* a signature older or newer than this is refused */
#define SVC_RPC_SIG_HEX 64

/*
 * Sets the shared secret used to sign and check calls (copied; at least SVC_RPC_SECRET_MIN
 * characters, else SVC_EINVAL); NULL or "" turns authentication off. Not thread-safe: call once
 * at start-up, before any call is made or served.
 */
int svc_rpc_set_secret(const char *secret) SVC_MUST_CHECK;

/* 1 when calls are signed and checked (a secret is set). */
int svc_rpc_auth_enabled(void);

/*
 * The signature of one call: lowercase hex of HMAC-SHA256(secret, "chatweb-rpc-1\n" method "\n"
 * path "\n" hex(SHA-256(body)) "\n" timestamp) into out[SVC_RPC_SIG_HEX + 1]. path is the
 * request path as the server sees it ("/rpc/Billing/Recharge"). SVC_EINVAL without a secret.
 * Thread-safe once the secret is set.
 */
int svc_rpc_sign(const char *method, const char *path, const void *body, size_t len,
                 long long timestamp, char *out) SVC_MUST_CHECK;

/* ---- server ---- */

struct svc_rpc_call;

/*
 * A method handler, with the method's ctx first. `in` is the unpacked request; `out` is a
 * zero-initialised response message of the method's type, owned by the framework: strings and
 * sub-messages put into it must come from svc_rpc_alloc/svc_rpc_strdup (freed after the reply is
 * sent). Returns SVC_OK, or a negative SVC_E* which becomes the RpcError (with svc_rpc_set_error's
 * text when given). Runs on a worker thread (POOL mode); may block.
 */
typedef int (*svc_rpc_handler_cb)(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in,
                                  ProtobufCMessage *out);

struct svc_rpc_method {
    const char *path; /* "/rpc/Auth/Authenticate" */
    const ProtobufCMessageDescriptor *in_desc;
    const ProtobufCMessageDescriptor *out_desc;
    svc_rpc_handler_cb fn;
    void *ctx;
};

struct svc_rpc_registry {
    const struct svc_rpc_method *methods;
    size_t n;
};

/* The HTTP route handler for the "/rpc/" prefix (POST); ctx is a struct svc_rpc_registry. */
int svc_rpc_dispatch(void *ctx, struct svc_req *req);

/* Memory that lives until the reply is sent. NULL on allocation failure. */
void *svc_rpc_alloc(struct svc_rpc_call *call, size_t size);
char *svc_rpc_strdup(struct svc_rpc_call *call, const char *s);

const char *svc_rpc_request_id(const struct svc_rpc_call *call);
const char *svc_rpc_client_ip(const struct svc_rpc_call *call);

/* The error text sent with a failing return code (copied). */
void svc_rpc_set_error(struct svc_rpc_call *call, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- client ---- */

struct svc_rpc_client;

/*
 * base_url: "http://auth:8080". timeout_ms: the default deadline of a call. On success *out owns
 * the client (svc_rpc_client_destroy); on failure *out is NULL. Returns SVC_OK, SVC_EINVAL (a
 * bad base_url: the reason in err, which may be NULL) or SVC_ENOMEM.
 */
SVC_MUST_CHECK int svc_rpc_client_create(struct svc_rpc_client **out, const char *base_url,
                                         long timeout_ms, char *err, size_t errlen);
void svc_rpc_client_destroy(struct svc_rpc_client **c);

/* Frees a message a call unpacked (svc_rpc_call's *out, an async call's reply); *m may be NULL;
 * sets *m to NULL. */
void svc_rpc_message_destroy(struct ProtobufCMessage **m);

/*
 * Blocking call, for worker threads. Uses one keep-alive connection per thread. On success
 * *out is the unpacked response (free with svc_rpc_message_destroy).
 * On failure returns the remote error code (or SVC_EUNAVAIL / SVC_ETIMEDOUT for transport
 * problems) with a text in err. Thread-safe.
 */
int svc_rpc_call(struct svc_rpc_client *c, const char *method, const ProtobufCMessage *in,
                 const ProtobufCMessageDescriptor *out_desc, ProtobufCMessage **out,
                 const char *request_id, char *err, size_t errlen) SVC_MUST_CHECK;

/*
 * Blocking GET of an absolute http:// or https:// URL, for worker threads (auth's health action
 * reading the admin ports' /readyz). *status receives the HTTP status; the body's first
 * bodylen - 1 bytes are copied to body, NUL-terminated (the rest is read and dropped). Returns 0,
 * or SVC_EUNAVAIL / SVC_ETIMEDOUT (connect and total bounded by timeout_ms) with the reason in
 * err. Thread-safe (the thread's own curl handle, as svc_rpc_call).
 */
int svc_rpc_get(const char *url, long timeout_ms, long *status, char *body, size_t bodylen,
                char *err, size_t errlen) SVC_MUST_CHECK;

/*
 * Result of an async call, with its ctx. err is SVC_OK, the remote error code, or SVC_EUNAVAIL /
 * SVC_ETIMEDOUT for transport problems (errmsg says more). out is owned by the callee (free it
 * as above) and NULL on error.
 */
typedef void (*svc_rpc_done_cb)(void *ctx, int err, ProtobufCMessage *out, const char *errmsg);
/* Releases a call's ctx when the call is cancelled (svc_rpc_call_async_release). */
typedef void (*svc_rpc_release_cb)(void *ctx);

/*
 * Non-blocking call on an event loop (chat, proxy). done runs on the loop thread exactly once,
 * unless the handle is cancelled with svc_fetch_cancel(). On success *fetch is the handle
 * (borrowed, as svc_fetch_start's); on failure *fetch is NULL, done never runs, and the status
 * is returned (SVC_EINVAL, SVC_ENOMEM, SVC_ETOOLARGE, SVC_EINTERNAL).
 */
SVC_MUST_CHECK int svc_rpc_call_async(struct svc_fetch **fetch, struct svc_rpc_client *c,
                                      struct svc_fetch_multi *m, const char *method,
                                      const ProtobufCMessage *in,
                                      const ProtobufCMessageDescriptor *out_desc,
                                      const char *request_id, svc_rpc_done_cb done, void *ctx);

/* As svc_rpc_call_async, for a ctx that belongs to the call: release (may be NULL) runs with ctx
 * when the call is cancelled, since done then never runs. When this fails neither runs. */
SVC_MUST_CHECK int svc_rpc_call_async_release(struct svc_fetch **fetch, struct svc_rpc_client *c,
                                              struct svc_fetch_multi *m, const char *method,
                                              const ProtobufCMessage *in,
                                              const ProtobufCMessageDescriptor *out_desc,
                                              const char *request_id, svc_rpc_done_cb done,
                                              svc_rpc_release_cb release, void *ctx);

#endif
