#ifndef SVC_FETCH_H1_H
#define SVC_FETCH_H1_H

/*
 * The HTTP/1.1 client of svc_fetch (common/fetch_h1.c): cleartext origins, and TLS ones that
 * speak HTTP/1.1 only; beside our HTTP/2 client (fetch_h2.c) and libcurl (common/fetch.c),
 * which keeps proxies. Internal to common/: fetch.c sends a transfer here when svc__h1_takes()
 * says so or when fetch_h2.c learnt that the origin speaks HTTP/1.1 only, and every public
 * svc_fetch_* call on it comes here. Why it exists: docs/decisions.md 60 and 62. TLS writes
 * with write(2), so the process must ignore SIGPIPE, as svc_service does.
 */

#include "svc/fetch.h"

struct svc_loop;

/* The defaults of svc_fetch_req (svc/fetch.h), for both clients. */
#define SVC__FETCH_DEFAULT_CONNECT_MS 10000
#define SVC__FETCH_DEFAULT_MAX_RESPONSE (8u << 20) /* buffered mode */

/* Which client a transfer belongs to. */
enum svc__fetch_kind {
    SVC__FETCH_CURL = 0, /* libcurl's (struct curl_fetch, fetch.c) */
    SVC__FETCH_H1,       /* this client's (struct h1_fetch) */
    SVC__FETCH_H2,       /* the HTTP/2 client's (struct h2_fetch, fetch_h2.c) */
};

/* The head of every transfer, of any client: the public handle. */
struct svc_fetch {
    unsigned char kind; /* enum svc__fetch_kind */
};

struct svc__h1; /* the client's connections and transfers of one svc_fetch_multi */

/* max_host: as svc_fetch_multi_create's max_host_connections (0 = no cap). Returns SVC_OK or
 * SVC_ENOMEM; *out is NULL on failure. */
int svc__h1_create(struct svc__h1 **out, struct svc_loop *loop, long max_host) SVC_MUST_CHECK;

/* Cancels every transfer (their on_cancel runs), closes every connection, frees. Accepts NULL;
 * sets *h to NULL. */
void svc__h1_destroy(struct svc__h1 **h);

/* Transfers started and not yet ended (queued ones included). */
long svc__h1_active(const struct svc__h1 *h);

/* Whether this client serves req at once: no user info in the URL, no proxy, and an http://
 * URL without prior-knowledge HTTP/2 or an https:// one with HTTP/2 refused
 * (SVC_FETCH_HTTP_1). svc__h1_start also takes any other https:// request. */
int svc__h1_takes(const struct svc_fetch_req *req);

/* svc_fetch_start, svc_fetch_cancel, svc_fetch_pause and svc_fetch_headers_each for transfers
 * of this client; the same contracts (svc/fetch.h). */
int svc__h1_start(struct svc_fetch **out, struct svc__h1 *h, const struct svc_fetch_req *req,
                  const struct svc_fetch_callbacks *cb, void *ctx) SVC_MUST_CHECK;
void svc__h1_cancel(struct svc_fetch *f);
void svc__h1_pause(struct svc_fetch *f, int paused);
void svc__h1_headers_each(struct svc_fetch *f, svc_fetch_header_cb cb, void *ctx);

#endif
