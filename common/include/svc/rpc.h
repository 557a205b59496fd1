#ifndef SVC_RPC_H
#define SVC_RPC_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "svc/err.h"

/*
 * Internal RPC: protobuf-c messages over HTTP/1.1 (design brief §3.2).
 *   POST /rpc/<Service>/<Method>   Content-Type: application/x-protobuf
 *   X-Request-Id: <id>             carried across every hop, for logs
 *   X-Deadline-Ms: <ms left>       how long the caller waits (its timeout); informational for
 *                                  the callee, not enforced by this layer
 * 200 carries the response message; any other status carries chatweb.rpc.RpcError.
 * Messages (the .proto files in proto/) are compiled by protoc-c at build time.
 */

struct svc_req;
struct svc_fetch_multi;
struct svc_fetch;

/* ---- server ---- */

struct svc_rpc_call;

/*
 * A method handler. `in` is the unpacked request; `out` is a zero-initialised response message
 * of the method's type, owned by the framework: strings and sub-messages put into it must come
 * from svc_rpc_alloc/svc_rpc_strdup (freed after the reply is sent). Returns SVC_OK, or a
 * negative SVC_E* which becomes the RpcError (with svc_rpc_set_error's text when given).
 * Runs on a worker thread (POOL mode); may block.
 */
typedef int (*svc_rpc_handler_fn)(struct svc_rpc_call *call, const ProtobufCMessage *in,
                                  ProtobufCMessage *out, void *ctx);

struct svc_rpc_method {
    const char *path; /* "/rpc/Auth/Authenticate" */
    const ProtobufCMessageDescriptor *in_desc;
    const ProtobufCMessageDescriptor *out_desc;
    svc_rpc_handler_fn fn;
    void *ctx;
};

struct svc_rpc_registry {
    const struct svc_rpc_method *methods;
    size_t n;
};

/* The HTTP route handler for the "/rpc/" prefix (POST); ctx is a struct svc_rpc_registry. */
int svc_rpc_dispatch(struct svc_req *req, void *ctx);

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

/* base_url: "http://auth:8080". timeout_ms: the default deadline of a call. NULL on failure. */
struct svc_rpc_client *svc_rpc_client_create(const char *base_url, long timeout_ms);
void svc_rpc_client_destroy(struct svc_rpc_client **c);

/*
 * Blocking call, for worker threads. Uses one keep-alive connection per thread. On success
 * *out is the unpacked response (free with protobuf_c_message_free_unpacked(*out, NULL)).
 * On failure returns the remote error code (or SVC_EUNAVAIL / SVC_ETIMEDOUT for transport
 * problems) with a text in err. Thread-safe.
 */
int svc_rpc_call(struct svc_rpc_client *c, const char *method, const ProtobufCMessage *in,
                 const ProtobufCMessageDescriptor *out_desc, ProtobufCMessage **out,
                 const char *request_id, char *err, size_t errlen) SVC_MUST_CHECK;

/* Result of an async call: out is owned by the callee (free it as above) and NULL on error. */
typedef void (*svc_rpc_done_fn)(int err, ProtobufCMessage *out, const char *errmsg, void *data);

/*
 * Non-blocking call on an event loop (chat, proxy). done runs on the loop thread exactly once,
 * unless the returned handle is cancelled with svc_fetch_cancel(). NULL when it cannot start.
 */
struct svc_fetch *svc_rpc_call_async(struct svc_rpc_client *c, struct svc_fetch_multi *m,
                                     const char *method, const ProtobufCMessage *in,
                                     const ProtobufCMessageDescriptor *out_desc,
                                     const char *request_id, svc_rpc_done_fn done, void *data);

/* As svc_rpc_call_async, for data that belongs to the call: release (may be NULL) runs with data
 * when the call is cancelled, since done then never runs. */
struct svc_fetch *svc_rpc_call_async_release(struct svc_rpc_client *c, struct svc_fetch_multi *m,
                                             const char *method, const ProtobufCMessage *in,
                                             const ProtobufCMessageDescriptor *out_desc,
                                             const char *request_id, svc_rpc_done_fn done,
                                             void (*release)(void *data), void *data);

#endif
