#ifndef SVC_FETCH_H2_H
#define SVC_FETCH_H2_H

/*
 * The HTTP/2 client of svc_fetch (common/fetch_h2.c): an https:// upstream that offers h2 by
 * ALPN, and a cleartext one with prior knowledge (h2c). Many transfers share a connection as
 * streams. An https:// origin that answers ALPN with HTTP/1.1 goes to the HTTP/1.1 client
 * (fetch_h1.c; libcurl's with CHATWEB_HTTP1_CLIENT=libcurl), its waiting transfers handed over
 * through struct svc__h2_fallback; libcurl keeps proxies. Internal to common/;
 * why it exists: docs/decisions.md 61. OpenSSL writes with write(2), so the process must ignore
 * SIGPIPE, as svc_service does (a server that goes away would kill it otherwise).
 */

#include "fetch_h1.h"

struct svc_loop;

#define SVC__H2_STREAMS_PER_CONN 100 /* at most, and at most what the server allows */

/* How this client hands a transfer to the HTTP/1.1 client (fetch.c says which), and drives
 * it there. */
struct svc__h2_fallback {
    int (*start)(void *arg, struct svc_fetch **out, const struct svc_fetch_req *req,
                 const struct svc_fetch_callbacks *cb, void *ctx);
    void (*cancel)(struct svc_fetch **f);
    void (*pause)(struct svc_fetch *f, int paused);
    void (*headers_each)(struct svc_fetch *f, svc_fetch_header_cb cb, void *ctx);
    void *arg;
};

struct svc__h2; /* the client's connections and transfers of one svc_fetch_multi */

/* Returns SVC_OK or SVC_ENOMEM; *out is NULL on failure. */
int svc__h2_create(struct svc__h2 **out, struct svc_loop *loop,
                   const struct svc__h2_fallback *fallback) SVC_MUST_CHECK;

/* Cancels every transfer (their on_cancel runs), closes every connection, frees. Accepts NULL;
 * sets *h to NULL. */
void svc__h2_destroy(struct svc__h2 **h);

/* Transfers started and not yet ended (queued and handed-over ones included). */
long svc__h2_active(const struct svc__h2 *h);

/* What svc__h2_takes says of a request. */
enum svc__h2_takes {
    SVC__H2_NOT_MINE = 0, /* not https:// nor h2c, or with user info or a proxy */
    SVC__H2_MINE,         /* https:// (HTTP/2 allowed) or http:// with prior knowledge */
    SVC__H2_HTTP1,        /* https:// to an origin that answered ALPN with HTTP/1.1 lately */
};

/* Who serves req (enum svc__h2_takes). */
int svc__h2_takes(const struct svc__h2 *h, const struct svc_fetch_req *req);

/* svc_fetch_start, svc_fetch_cancel, svc_fetch_pause and svc_fetch_headers_each for transfers
 * of this client; the same contracts (svc/fetch.h). */
int svc__h2_start(struct svc_fetch **out, struct svc__h2 *h, const struct svc_fetch_req *req,
                  const struct svc_fetch_callbacks *cb, void *ctx) SVC_MUST_CHECK;
void svc__h2_cancel(struct svc_fetch *f);
void svc__h2_pause(struct svc_fetch *f, int paused);
void svc__h2_headers_each(struct svc_fetch *f, svc_fetch_header_cb cb, void *ctx);

#endif
