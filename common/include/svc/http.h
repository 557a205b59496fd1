#ifndef SVC_HTTP_H
#define SVC_HTTP_H

#include <stddef.h>

#include "svc/err.h"

/*
 * The HTTP/1.1 server, on our own event loop (common/http.c; the request parser is
 * common/http_parse.c). Two modes, one code:
 *  - SVC_HTTP_LOOPS, for the streaming services (chat, proxy): every event loop accepts on one
 *    shared listening socket and serves the connections it accepted. Handlers run on the loop
 *    thread, must never block, and may answer later (SVC_HTTP_ASYNC): the connection then costs
 *    no thread and no CPU, and its socket stays watched, so a client that goes away is seen at
 *    once and the handler's abort callback runs. A stream's chunks are written to the socket as
 *    they come; nothing walks the open connections.
 *  - SVC_HTTP_POOL, for request/response services (auth, billing): the same server on threads of
 *    its own (one loop each); handlers may block (SQL, password hashing) and must answer before
 *    returning.
 *
 * Limits: request body (413), request head (431), idle connection timeout, connection count.
 * Malformed or ambiguous heads are refused (400, 501, 505) and the connection closed. Every
 * request gets an id (X-Request-Id from the ingress when it is sane, otherwise a fresh one),
 * echoed in the response.
 */

struct svc_loop;
struct svc_http_server;
struct svc_req;
struct svc_util_cidrs;

enum svc_http_mode { SVC_HTTP_POOL, SVC_HTTP_LOOPS };

/* How a route reports errors that the server itself produces (404, 405, 413, bad JSON ...). */
enum svc_http_style {
    SVC_HTTP_STYLE_TEXT,     /* text/plain */
    SVC_HTTP_STYLE_ENVELOPE, /* {"status":"Fail","message":...,"data":null} (the /api clients) */
    SVC_HTTP_STYLE_OPENAI,   /* {"error":{"message","type","param","code"}} (the /v1 clients) */
};

/* What a handler returns. */
enum svc_http_result {
    SVC_HTTP_DONE = 0,  /* a reply was given with svc_req_reply* / svc_req_stream_start */
    SVC_HTTP_ASYNC = 1, /* the handler answers later, on the request's loop (LOOPS mode only) */
};

/* A route's handler: ctx is the route's ctx. Returns an enum svc_http_result. */
typedef int (*svc_http_handler_cb)(void *ctx, struct svc_req *req);
/* Request events (svc_req_on_abort, svc_req_on_drain): ctx is the one given there. */
typedef void (*svc_req_abort_cb)(void *ctx, struct svc_req *req);
typedef void (*svc_req_drain_cb)(void *ctx, struct svc_req *req);
/* The end of a request (svc_req_set_cleanup). */
typedef void (*svc_req_cleanup_cb)(void *ctx);

struct svc_http_route {
    const char *method; /* "POST", "GET", ...; NULL = any */
    const char *path;   /* exact path, or a prefix when it ends with '*' */
    svc_http_handler_cb fn;
    void *ctx;
    enum svc_http_style style;
    /* 1: refuse (403) a browser request sent from another site: an Origin header whose host
     * differs from Host. For routes a browser authenticates with cached Basic credentials or a
     * cookie, where a cross-site form could otherwise act for the user (the seed's S7). */
    int same_origin;
};

struct svc_http_opts {
    const char *service;       /* for logs */
    const char *addr;          /* host:port; port 0 picks a free port */
    enum svc_http_mode mode;
    unsigned threads;          /* POOL: worker threads */
    struct svc_loop **loops;   /* LOOPS: the loops, one daemon each */
    unsigned nloops;
    size_t max_body;           /* bytes */
    size_t max_header;         /* bytes of request line + headers */
    unsigned idle_timeout;     /* seconds */
    unsigned max_connections;
    enum svc_http_style default_style; /* for paths that match no route */
    /* The peers (the ingress) whose X-Real-IP header is believed as the client's address;
     * borrowed, must outlive the server. NULL or empty: every client is its socket peer. */
    const struct svc_util_cidrs *trusted_proxies;
    /* When not NULL or "": such a peer's X-Real-IP is believed only with X-Ingress-Token equal to
     * it (INGRESS_TOKEN), so that another process on the ingress's host cannot name an address. */
    const char *ingress_token;
};

/*
 * Binds opts->addr (never with SO_REUSEPORT: a taken port is an error, SVC_EEXIST, with the
 * reason in err) and starts serving the routes. routes must stay valid while the server runs.
 * Caller owns *out; destroy with svc_http_server_destroy. In LOOPS mode call it before the loops
 * start running, from the thread that will run... any thread: the daemons are only touched by
 * their loops afterwards.
 */
int svc_http_server_create(struct svc_http_server **out, const struct svc_http_opts *opts,
                           const struct svc_http_route *routes, size_t nroutes, char *err,
                           size_t errlen) SVC_MUST_CHECK;

/* The bound port (useful with port 0). */
int svc_http_server_port(const struct svc_http_server *srv);

/* Stops accepting new connections; requests in flight continue, and every reply from now on
 * says `Connection: close`, so that keep-alive connections end after their next request.
 * Thread-safe, idempotent. */
void svc_http_server_quiesce(struct svc_http_server *srv);

/* LOOPS mode: ends every request in flight as if its client had left (their abort callbacks
 * run on their loops, so a metered stream settles what it counted). For the drain deadline.
 * Thread-safe. POOL mode has no request that outlives its handler: nothing to do. */
void svc_http_server_abort_all(struct svc_http_server *srv);

/* Requests currently in flight (all threads). */
long svc_http_server_inflight(const struct svc_http_server *srv);

/* Requests begun since the server started (all threads). */
unsigned long svc_http_server_started(const struct svc_http_server *srv);

/* Client connections open now (all threads). */
long svc_http_server_connections(const struct svc_http_server *srv);

/* Stops the server. In LOOPS mode the loops must no longer be running. Accepts NULL. */
void svc_http_server_destroy(struct svc_http_server **srv);

/* ---- the request; every pointer returned is borrowed, valid until the request completes ---- */

const char *svc_req_method(const struct svc_req *req);
const char *svc_req_path(const struct svc_req *req);
const char *svc_req_id(const struct svc_req *req);
/* Client IP: X-Real-IP set by the ingress, when present and the socket peer is one of
 * opts.trusted_proxies; else the socket peer. What per-client throttles are keyed on. */
const char *svc_req_client_ip(const struct svc_req *req);
/* The socket peer's address ("?" when unknown), never taken from a header: for security logs. */
const char *svc_req_peer_ip(const struct svc_req *req);
const char *svc_req_header(const struct svc_req *req, const char *name); /* NULL when absent */
const char *svc_req_query(const struct svc_req *req, const char *name);  /* NULL when absent */
/* The query arguments again as a query string ("?a=1&b=x%20y", or "" without any), in their
 * order, percent-encoding all but RFC 3986's unreserved characters (the server keeps only the
 * decoded arguments, so the client's own encoding is not kept byte for byte). Returns
 * SVC_OK or SVC_ETOOLARGE when it does not fit in len bytes with its NUL. */
int svc_req_query_string(const struct svc_req *req, char *buf, size_t len) SVC_MUST_CHECK;
const char *svc_req_body(const struct svc_req *req, size_t *len);        /* NUL-terminated */
struct svc_loop *svc_req_loop(const struct svc_req *req);                /* NULL in POOL mode */

/* Adds a response header; call before the reply. Copies both strings. */
int svc_req_add_header(struct svc_req *req, const char *name, const char *value) SVC_MUST_CHECK;

/* Answers with a complete body (copied). In LOOPS mode may be called after SVC_HTTP_ASYNC, on the
 * request's loop. Calling it twice, or after the client left, is harmless (SVC_ECANCELED). */
int svc_req_reply(struct svc_req *req, int status, const char *content_type, const void *body,
                  size_t len);

struct svc_json;

/* Answers with a JSON body (application/json; charset=utf-8). Takes ownership of body (a
 * svc/json.h value, destroyed here; NULL answers 500). */
int svc_req_reply_json(struct svc_req *req, int status, struct svc_json *body);

/*
 * Answers with the /api envelope {"status", "message", "data"} that the ChatGPT Web frontend and
 * the seed's clients read. Takes ownership of data; NULL data is sent as null.
 */
int svc_req_reply_envelope(struct svc_req *req, int http_status, const char *status,
                           const char *message, struct svc_json *data);

/* Answers with an error in the route's style. */
int svc_req_error(struct svc_req *req, int status, const char *message);

/*
 * Streaming (LOOPS mode): starts a chunked response; then svc_req_stream_write() queues bytes
 * (copied) and svc_req_stream_end() finishes it. Writes are flushed as soon as the socket takes
 * them. svc_req_stream_pending() tells how many bytes wait for a slow client, so producers can
 * apply backpressure; writes beyond SVC_HTTP_STREAM_MAX_PENDING fail with SVC_ETOOLARGE.
 */
#define SVC_HTTP_STREAM_MAX_PENDING (4u << 20)
int svc_req_stream_start(struct svc_req *req, int status, const char *content_type);
int svc_req_stream_write(struct svc_req *req, const void *data, size_t len);
int svc_req_stream_end(struct svc_req *req);
size_t svc_req_stream_pending(const struct svc_req *req);

/* svc_req_stream_write of several pieces as one chunk, in one system call when the client keeps
 * up (an SSE event's "data: ", its JSON and its blank line without copying them together). At
 * most SVC_HTTP_STREAM_PIECES_MAX pieces (SVC_EINVAL beyond). */
#define SVC_HTTP_STREAM_PIECES_MAX 8
struct iovec;
int svc_req_stream_writev(struct svc_req *req, const struct iovec *parts, int nparts);

/* Bytes queued by svc_req_stream_write() and not yet taken by their clients, summed over every
 * streaming request of the process (all loops and servers). For a global memory budget over
 * slow clients (services/meter). Thread-safe (a relaxed atomic: a snapshot, not a fence). */
size_t svc_http_queued(void);

/*
 * Backpressure: registers cb(ctx, req) to run on the request's loop whenever the bytes waiting
 * for the client fall to low_watermark or below after having been above it. A producer that
 * paused itself because svc_req_stream_pending() grew resumes from cb.
 */
void svc_req_on_drain(struct svc_req *req, svc_req_drain_cb cb, void *ctx, size_t low_watermark);

/*
 * Registers cb(ctx, req) to run once, on the request's loop, when the client goes away before
 * the reply is complete (LOOPS mode). After it runs, replies are ignored and the request is
 * freed when the handler's cleanup (svc_req_set_cleanup) has run.
 */
void svc_req_on_abort(struct svc_req *req, svc_req_abort_cb cb, void *ctx);

/* Registers cb(ctx) to run exactly once when the request is finished, whatever the outcome.
 * This is where the handler frees its per-request state. */
void svc_req_set_cleanup(struct svc_req *req, svc_req_cleanup_cb cb, void *ctx);

/* 1 once the client went away or the reply was completed. */
int svc_req_is_done(const struct svc_req *req);

/* The status of the reply or stream produced (0 while none was). */
int svc_req_status(const struct svc_req *req);

#endif
