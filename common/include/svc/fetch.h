#ifndef SVC_FETCH_H
#define SVC_FETCH_H

#include <stddef.h>

#include "svc/err.h"

/*
 * Outbound HTTP on an event loop, by three clients behind one API. Cleartext HTTP/1.1 (an http://
 * URL, no proxy, not HTTP/2 prior knowledge: every RPC, a cleartext upstream) goes through our
 * own client (common/fetch_h1.c): keep-alive connections per origin, one transfer each, the
 * response parsed in place. HTTP/2 (an https:// URL without a proxy, where ALPN picks h2, and an
 * http:// one with SVC_FETCH_HTTP_2_PRIOR) goes through our own HTTP/2 client
 * (common/fetch_h2.c, nghttp2 and OpenSSL on the loop): many transfers share a connection as
 * streams, up to 100 or the server's limit, and a new connection opens only for what those being
 * set up cannot take. Everything else goes through libcurl's multi-socket API driven by svc_loop:
 * HTTP/1.1 over TLS (an https:// origin that answered ALPN with HTTP/1.1 is handed to it),
 * proxies. Environment CHATWEB_HTTP1_CLIENT=libcurl and CHATWEB_HTTP2_CLIENT=libcurl, read when a
 * multi is created, give libcurl those transfers too. No client shows through this header.
 *
 * Every callback runs on the loop thread. on_done runs exactly once per started fetch unless the
 * fetch was cancelled; the fetch is freed right after on_done returns.
 */

struct svc_loop;
struct svc_fetch_multi;
struct svc_fetch;

/* Which HTTP version to speak to the server (OPENAI_HTTP2 in chat and proxy). */
typedef enum svc_fetch_http_e {
    SVC_FETCH_HTTP_AUTO = 0, /* https: HTTP/2 when ALPN offers it, else HTTP/1.1; http: HTTP/1.1 */
    SVC_FETCH_HTTP_1,        /* HTTP/1.1 only (keep-alive) */
    SVC_FETCH_HTTP_2_PRIOR,  /* http: HTTP/2 with prior knowledge (h2c); https: ALPN h2 only */
} svc_fetch_http_e;

/* Parses "auto", "off" (HTTP/1.1) or "prior-knowledge" into *out. Returns 0 or SVC_EINVAL. */
int svc_fetch_http_parse(const char *s, svc_fetch_http_e *out) SVC_MUST_CHECK;

struct svc_fetch_req {
    const char *method;           /* "GET", "POST", ... */
    const char *url;
    const char *const *headers;   /* "Name: value" lines, NULL-terminated; may be NULL */
    const void *body;             /* copied */
    size_t body_len;
    long connect_timeout_ms;      /* 0 = 10 s */
    long timeout_ms;              /* whole transfer; 0 = no limit (streams) */
    long idle_timeout_ms;         /* abort when no byte arrives for this long; 0 = no limit */
    const char *proxy;            /* e.g. socks5h://host:port; NULL = none */
    size_t max_response;          /* buffered mode: larger bodies fail with SVC_ETOOLARGE */
    int stream;                   /* 1: deliver bytes to on_data as they arrive */
    int fresh_connection;         /* 1: do not look for an idle connection to reuse, and close
                                   * this one afterwards (see svc_fetch_multi_active); ignored
                                   * when the transfer may use HTTP/2 (shared connections are the
                                   * point there) */
    svc_fetch_http_e http;        /* HTTP version policy; 0 = SVC_FETCH_HTTP_AUTO */
    const char *ca_file;          /* PEM bundle of CAs to trust instead of the system's (an
                                   * upstream with a private CA); NULL or "" = the system's */
};

#define SVC_FETCH_PAUSE 1

/*
 * The callbacks of a fetch; each gets the ctx given to svc_fetch_start first.
 *
 * data: stream mode, a piece of the body. status is the HTTP status. Return 0 to go on (the
 * bytes are consumed), SVC_FETCH_PAUSE to leave them unconsumed and pause receiving (they are
 * delivered again after svc_fetch_pause(f, 0)), or a negative error to abort the transfer
 * (on_done then gets that error).
 *
 * done: the end. err is SVC_OK when a complete HTTP response arrived (whatever its status);
 * otherwise SVC_ETIMEDOUT, SVC_EUNAVAIL (connect), SVC_ETOOLARGE (max_response), SVC_EIO, or the
 * error on_data returned. body/len hold the buffered body in buffered mode (NULL in stream
 * mode); errmsg says what failed when err != SVC_OK. All pointers are valid only during the call.
 *
 * cancel: optional, runs inside svc_fetch_cancel() instead of on_done, to release ctx only.
 */
typedef int (*svc_fetch_data_cb)(void *ctx, struct svc_fetch *f, long status, const char *data,
                                 size_t len);
typedef void (*svc_fetch_done_cb)(void *ctx, int err, struct svc_fetch *f, long status,
                                  const char *body, size_t len, const char *errmsg);
typedef void (*svc_fetch_cancel_cb)(void *ctx);

struct svc_fetch_callbacks {
    svc_fetch_data_cb on_data;
    svc_fetch_done_cb on_done;
    svc_fetch_cancel_cb on_cancel;
};

/*
 * A set of transfers on loop. max_host_connections caps the connections to any one host (0 = no
 * cap): RPC traffic to a peer service wants a cap, so a burst reuses a few keep-alive connections
 * instead of opening one per request. Transfers beyond the cap wait in a FIFO per host (scheme,
 * host and port of the URL) of this module, not in libcurl's pending list (which curl walks
 * whole for every transfer that ends); they are handed to curl as transfers of that host end.
 * As in curl's list, timeout_ms starts when a transfer leaves the queue, not while it waits (an
 * idle_timeout_ms runs all along). On success *out owns the multi (svc_fetch_multi_destroy); on
 * failure *out is NULL. Returns SVC_OK, SVC_ENOMEM or SVC_EINTERNAL (libcurl refused).
 */
SVC_MUST_CHECK int svc_fetch_multi_create(struct svc_fetch_multi **out, struct svc_loop *loop,
                                          long max_host_connections);

/* Cancels what is still running (no callbacks) and frees. Accepts NULL; sets *m to NULL. */
void svc_fetch_multi_destroy(struct svc_fetch_multi **m);

/* Transfers in flight. */
long svc_fetch_multi_active(const struct svc_fetch_multi *m);

/*
 * Starts a transfer. On success *out is its handle (borrowed: it is freed after on_done, or by
 * svc_fetch_cancel); on failure *out is NULL and no callback will run. Returns SVC_OK,
 * SVC_EINVAL, SVC_ENOMEM or SVC_EINTERNAL (libcurl refused the transfer).
 */
SVC_MUST_CHECK int svc_fetch_start(struct svc_fetch **out, struct svc_fetch_multi *m,
                                   const struct svc_fetch_req *req,
                                   const struct svc_fetch_callbacks *cb, void *ctx);

/* Stops a transfer at once; no callback runs afterwards. Over HTTP/1.1 its connection is closed;
 * over HTTP/2 only its stream is reset (RST_STREAM) and the connection's other streams go on.
 * Safe inside this fetch's own callbacks. Accepts NULL; sets *f to NULL. */
void svc_fetch_cancel(struct svc_fetch **f);

/* Pauses (1) or resumes (0) receiving, for backpressure from a slow client. Call it outside this
 * fetch's callbacks (inside on_data, return SVC_FETCH_PAUSE instead). Resuming may deliver the
 * held bytes to on_data before it returns; if on_data cancels the fetch there, f is freed before
 * this returns (the caller's copy of the pointer must not be used after). While paused (either way) idle_timeout_ms does not run:
 * it measures the upstream's silence, and starts afresh on resume. */
void svc_fetch_pause(struct svc_fetch *f, int paused);

typedef void (*svc_fetch_header_cb)(void *ctx, const char *name, const char *value);

/* Calls cb(ctx, ...) for each header of the response, in the order received (names as sent).
 * Valid inside this fetch's on_data and on_done, once the status is known. */
void svc_fetch_headers_each(struct svc_fetch *f, svc_fetch_header_cb cb, void *ctx);

#endif
