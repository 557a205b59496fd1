#include "svc/fetch.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "svc/buf.h"
#include "svc/log.h"
#include "svc/loop.h"

#include "fetch_h1.h"
#include "fetch_h2.h"

/*
 * The libcurl side of svc_fetch, and the dispatch between the three clients (svc/fetch.h):
 * HTTP/1.1 goes to fetch_h1.c (cleartext, and TLS to an origin that speaks nothing else),
 * HTTP/2 to fetch_h2.c, the rest (proxies) stays here. CHATWEB_HTTP1_CLIENT=libcurl and
 * CHATWEB_HTTP2_CLIENT=libcurl give either part back to libcurl; what follows about HTTP/2 (the
 * gate, streams per connection) applies only then.
 */

/* Streams per HTTP/2 connection we open at most; the server's SETTINGS_MAX_CONCURRENT_STREAMS
 * lowers it, and past it curl opens another connection. Not more: libcurl 7.88 runs every
 * transfer of a multiplexed connection when it turns readable, so the cost of an event grows
 * with the streams on it. With the gate below filling connections to the brim, 10,000 proxy
 * streams opened in a second over TLS had TTFB p99 6.1 s and 1.55 ms of CPU per stream at 100
 * per connection, 2.6 s and 1.39 ms at 50, 1.9 s and 1.22 ms at 32; 1,000 streams cost 32.0,
 * 33.1 and 34.5 KiB each (decisions 28 and 57). */
#define FETCH_H2_MAX_STREAMS 32L
/* Connection cache sizes (CURLMOPT_MAXCONNECTS), see svc_fetch_multi_create. */
#define FETCH_CAPPED_CACHE 1024L
#define FETCH_UNCAPPED_CACHE (1L << 20)
/* Easy handles kept per multi for the next transfers. curl_easy_init and curl_easy_cleanup cost
 * a few KiB of allocations and curl's receive buffer per transfer; a reset handle keeps them
 * (measured on the proxy's relay path, docs/http.md). Bounded so that a burst's handles are
 * given back after it. */
#define FETCH_EASY_POOL 32

/*
 * Transfers past a multi's per-host connection cap wait in our own FIFO per host, not in curl's
 * pending list: libcurl 7.88's curl_multi_remove_handle walks that whole list for every transfer
 * that ends, so a burst of 10,000 RPCs queued behind 32 connections cost O(queued) per answer
 * (12.7 % of chat's CPU in a 10,000-stream run, docs/benchmarks.md). Here a transfer is handed
 * to curl only when its host has a free connection, and an ending one lets the next in. As in
 * curl's list, the wait does not count against timeout_ms (measured: a burst's billing
 * Reserves waited up to 30 s there and went through; failing them at 10 s instead refused a
 * third of a 10,000-stream burst): the timeout starts when curl gets the transfer.
 */
struct host_q {
    struct host_q *next;
    long in_curl;                   /* transfers of this host inside curl */
    long connecting;                /* gated ones among them still without a connection */
    struct curl_fetch *head, *tail; /* waiting, oldest first */
    long nqueued;                   /* how many wait */
    curl_socket_t *ready;           /* gate: sockets of its connections that carry requests */
    int nready, ready_cap;
    unsigned h1 : 1;   /* gate: the origin answered over HTTP/1.x, no gate */
    unsigned open : 1; /* gate: a transfer failed to connect, none held for now */
    char origin[];     /* scheme://host:port of the URL */
};

/*
 * The HTTP/2 gate (multis without a per-host cap: upstream streams). CURLOPT_PIPEWAIT makes a
 * transfer wait for a connection that curl is setting up only while curl does not know yet
 * whether the host multiplexes; once it does, every transfer that finds the connections full
 * opens one more, and so does the next while that one is in its TLS handshake. A proxy burst
 * of 1,000 streams opened 399-495 HTTP/2 connections that way (docs/benchmarks.md). So here a
 * transfer that may use HTTP/2 goes to curl only
 *  - while the connections of its origin that carry requests have room by count
 *    (FETCH_H2_MAX_STREAMS each, against the transfers in curl), or
 *  - while fewer of its transfers are still getting a connection (CURLOPT_PREREQFUNCTION says
 *    when one has it, new or shared) than the connections the waiting ones need: one, or one
 *    per FETCH_H2_MAX_STREAMS waiting.
 * So a burst fills the ready connections at once and opens as many new ones as it needs, each
 * by one transfer, the rest waiting until those are ready. An origin that answers over
 * HTTP/1.1 needs a connection per transfer and is not gated, and after a transfer fails to
 * connect the waiting ones go at once (an upstream that is down fails them all in one connect
 * timeout, not one after another).
 */

struct svc_fetch_multi {
    struct svc_loop *loop;
    long max_host;          /* the per-host cap; 0 = none, and no queues */
    struct host_q *hosts;   /* a handful: one per peer */
    struct svc_timer *pump; /* hands waiting transfers to curl, outside any callback */
    CURLM *multi;
    CURLSH *share; /* TLS sessions and DNS, for every transfer of this multi (one thread) */
    struct svc_timer *timer;
    long active;
    struct curl_fetch *all; /* every transfer not yet freed, for destroy */
    int in_action;          /* inside curl_multi_socket_action: transfers must not be freed */
    int h2c_reuse_broken;   /* see h2c_reuse_broken() */
    CURL *easy_pool[FETCH_EASY_POOL]; /* reset handles for the next transfers */
    int neasy;
    struct svc__h1 *h1; /* cleartext HTTP/1.1 transfers: our own client (fetch_h1.c) */
    int h1_off;         /* CHATWEB_HTTP1_CLIENT=libcurl: libcurl takes those too */
    struct svc__h2 *h2; /* HTTP/2 upstreams: our own client (fetch_h2.c) */
    int h2_off;         /* CHATWEB_HTTP2_CLIENT=libcurl: libcurl takes those too */
};

struct curl_fetch {
    struct svc_fetch base; /* first: the public handle (kind SVC__FETCH_CURL) */
    struct svc_fetch_multi *m;
    struct curl_fetch *prev, *next;
    CURL *easy;
    struct curl_slist *headers;
    char *body;
    struct svc_buf resp;
    struct svc_fetch_callbacks cb;
    void *ud;
    int stream;
    int cancelled;
    struct svc_timer *idle; /* no byte for idle_ms: the transfer is abandoned */
    uint64_t idle_ms;
    int data_err;
    long status;
    struct host_q *hq;                /* NULL without a per-host cap or the HTTP/2 gate */
    struct curl_fetch *qprev, *qnext; /* in hq's queue while queued */
    unsigned queued : 1, added : 1;   /* waiting in hq / handed to curl */
    unsigned h1_only : 1;             /* HTTP/1.1 only: its handle may be kept for another */
    unsigned gated : 1;               /* under the HTTP/2 gate (see struct host_q) */
    unsigned connecting : 1;          /* gated, in curl, no connection yet */
    unsigned version_seen : 1;        /* gated: the HTTP version of its answer was noted */
    char errbuf[CURL_ERROR_SIZE];
};

/* A handle for a new transfer: a kept one (reset: no option of its last transfer remains) or a
 * new one. */
static CURL *easy_get(struct svc_fetch_multi *m)
{
    return m->neasy > 0 ? m->easy_pool[--m->neasy] : curl_easy_init();
}

/* Gives back a handle that is in no multi. */
static void easy_put(struct svc_fetch_multi *m, CURL *e)
{
    if (e == NULL)
        return;
    if (m->neasy < FETCH_EASY_POOL) {
        curl_easy_reset(e);
        m->easy_pool[m->neasy++] = e;
    } else {
        curl_easy_cleanup(e);
    }
}

/* on_pump hands waiting transfers to curl once the current loop pass is over. */
static void pump_soon(struct svc_fetch_multi *m)
{
    if (svc_timer_start(m->pump, 0) != SVC_OK)
        SVC_LOG_ERR(NULL, "fetch", "cannot schedule the transfers waiting for a connection");
}

static void fetch_free(struct curl_fetch *f)
{
    svc_timer_destroy(&f->idle);
    if (f->queued) {
        f->hq->nqueued--;
        if (f->qprev != NULL)
            f->qprev->qnext = f->qnext;
        else
            f->hq->head = f->qnext;
        if (f->qnext != NULL)
            f->qnext->qprev = f->qprev;
        else
            f->hq->tail = f->qprev;
    } else if (f->added) {
        curl_multi_remove_handle(f->m->multi, f->easy);
        if (f->hq != NULL)
            f->hq->in_curl--;
        if (f->connecting) {
            f->hq->connecting--;
            if (!f->cancelled)
                f->hq->open = 1; /* it ended without a connection: the upstream may be down */
        }
        if (f->hq != NULL && f->hq->head != NULL && (f->gated || f->hq->in_curl < f->m->max_host))
            pump_soon(f->m);
    }
    /* A handle that may have carried an HTTP/2 stream is not reused: libcurl 7.88.1 crashed
     * ("double free or corruption" in curl_multi_remove_handle) in 5 of 11 bursts of streams
     * over TLS/HTTP/2 while such handles were reset and reused, in none of 12 without
     * (docs/http.md, "Easy handles are kept"). */
    if (f->h1_only)
        easy_put(f->m, f->easy);
    else
        curl_easy_cleanup(f->easy);
    free(f->headers); /* header_list */
    free(f->body);
    svc_buf_deinit(&f->resp);
    if (f->prev != NULL)
        f->prev->next = f->next;
    else
        f->m->all = f->next;
    if (f->next != NULL)
        f->next->prev = f->prev;
    f->m->active--;
    free(f);
}

static void check_done(struct svc_fetch_multi *m)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(m->multi, &left)) != NULL) {
        struct curl_fetch *f;
        int err = SVC_OK;

        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&f);
        curl_easy_getinfo(f->easy, CURLINFO_RESPONSE_CODE, &f->status);
        if (!f->cancelled && f->cb.on_done != NULL) {
            CURLcode cc = msg->data.result;
            const char *why = f->errbuf[0] ? f->errbuf : curl_easy_strerror(cc);
            if (f->data_err != 0)
                err = f->data_err;
            else if (cc == CURLE_OPERATION_TIMEDOUT)
                err = SVC_ETIMEDOUT;
            else if (cc == CURLE_WRITE_ERROR && f->resp.len >= f->resp.max)
                err = SVC_ETOOLARGE;
            else if (cc != CURLE_OK)
                err = SVC_EUNAVAIL;
            f->cb.on_done(f->ud, err, &f->base, f->status,
                          f->stream ? NULL : (f->resp.data ? f->resp.data : ""),
                          f->stream ? 0 : f->resp.len, err == SVC_OK ? NULL : why);
        }
        fetch_free(f);
    }
}

static void socket_action(struct svc_fetch_multi *m, curl_socket_t fd, int ev)
{
    int running;

    m->in_action++;
    curl_multi_socket_action(m->multi, fd, ev, &running);
    m->in_action--;
    check_done(m);
}

static void on_sock_io(void *data, struct svc_io *io, int fd, uint32_t events)
{
    struct svc_fetch_multi *m = data;
    int ev = 0;

    (void)io;
    if (events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP))
        ev |= CURL_CSELECT_IN;
    if (events & EPOLLOUT)
        ev |= CURL_CSELECT_OUT;
    if (events & EPOLLERR)
        ev |= CURL_CSELECT_ERR;
    socket_action(m, fd, ev);
}

static void on_timer(void *data, struct svc_timer *t)
{
    (void)t;
    socket_action(data, CURL_SOCKET_TIMEOUT, 0);
}

static int sock_cb(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    struct svc_fetch_multi *m = userp;
    struct svc_io *io = socketp;
    uint32_t events = 0;

    (void)e;
    if (what == CURL_POLL_REMOVE) {
        svc_io_del(&io);
        curl_multi_assign(m->multi, s, NULL);
        return 0;
    }
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        events |= EPOLLIN;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        events |= EPOLLOUT;
    if (io == NULL) {
        if (svc_io_add(&io, m->loop, s, events, on_sock_io, m) != SVC_OK) {
            SVC_LOG_ERR(NULL, "fetch", "cannot watch an upstream socket");
            return -1;
        }
        curl_multi_assign(m->multi, s, io);
    } else if (svc_io_modify(io, events) != SVC_OK) {
        return -1;
    }
    return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct svc_fetch_multi *m = userp;

    (void)multi;
    if (timeout_ms < 0) {
        svc_timer_stop(m->timer);
        return 0;
    }
    return svc_timer_start(m->timer, (uint64_t)timeout_ms) == SVC_OK ? 0 : -1;
}

/* Whether the gate lets one more transfer of hq go to curl now (see struct host_q): when the
 * ready connections have room, or when fewer transfers are getting a connection than the
 * connections the waiting ones need (one, or one per FETCH_H2_MAX_STREAMS of them). */
static int gate_open(const struct host_q *hq)
{
    long openers = (hq->nqueued + FETCH_H2_MAX_STREAMS - 1) / FETCH_H2_MAX_STREAMS;

    return hq->h1 || hq->open || hq->connecting < (openers > 1 ? openers : 1) ||
           hq->in_curl < (long)hq->nready * FETCH_H2_MAX_STREAMS;
}

/* Whether a new transfer for hq waits in its queue instead of going to curl now. */
static int must_wait(const struct svc_fetch_multi *m, const struct host_q *hq, int gated)
{
    if (hq == NULL)
        return 0;
    if (hq->head != NULL)
        return 1;
    return gated ? !gate_open(hq) : hq->in_curl >= m->max_host;
}

/* A connection of hq now carries requests: its socket joins hq->ready (counted by the transfer
 * that opened it; once, should curl report a transfer sent again on it as its opener too). */
static void ready_add(struct host_q *hq, curl_socket_t fd)
{
    for (int i = 0; i < hq->nready; i++)
        if (hq->ready[i] == fd)
            return;
    if (hq->nready == hq->ready_cap) {
        int cap = hq->ready_cap > 0 ? hq->ready_cap * 2 : 8;
        curl_socket_t *r = realloc(hq->ready, (size_t)cap * sizeof(*r));
        if (r == NULL)
            return; /* uncounted: the gate only lets fewer transfers through at once */
        hq->ready = r;
        hq->ready_cap = cap;
    }
    hq->ready[hq->nready++] = fd;
}

/* CURLOPT_CLOSESOCKETFUNCTION of gated transfers; curl calls the one of the transfer that
 * opened the connection, with its origin's queue. */
static int on_close_socket(void *clientp, curl_socket_t fd)
{
    struct host_q *hq = clientp;

    for (int i = 0; i < hq->nready; i++) {
        if (hq->ready[i] == fd) {
            hq->ready[i] = hq->ready[--hq->nready];
            break;
        }
    }
    return close(fd);
}

/* CURLOPT_PREREQFUNCTION: the transfer has its connection (new or shared) and its request is
 * about to go; the next gated transfer of its origin may go to curl. */
static int on_prereq(void *clientp, char *conn_primary_ip, char *conn_local_ip,
                     int conn_primary_port, int conn_local_port)
{
    struct curl_fetch *f = clientp;
    long fresh = 0;
    curl_socket_t fd = CURL_SOCKET_BAD;

    (void)conn_primary_ip;
    (void)conn_local_ip;
    (void)conn_primary_port;
    (void)conn_local_port;
    if (curl_easy_getinfo(f->easy, CURLINFO_NUM_CONNECTS, &fresh) == CURLE_OK && fresh > 0 &&
        curl_easy_getinfo(f->easy, CURLINFO_ACTIVESOCKET, &fd) == CURLE_OK && fd != CURL_SOCKET_BAD)
        ready_add(f->hq, fd);
    if (f->connecting) {
        f->connecting = 0;
        f->hq->connecting--;
        f->hq->open = 0;
    }
    if (f->hq->head != NULL)
        pump_soon(f->m);
    return CURL_PREREQFUNC_OK;
}

/* A gated transfer's first bytes: HTTP/1.x answers lift the gate of its origin for good (each
 * of its transfers needs a connection of its own), HTTP/2 ones keep it. */
static void note_version(struct curl_fetch *f)
{
    long v = 0;

    f->version_seen = 1;
    curl_easy_getinfo(f->easy, CURLINFO_HTTP_VERSION, &v);
    if (v == CURL_HTTP_VERSION_1_0 || v == CURL_HTTP_VERSION_1_1) {
        f->hq->h1 = 1;
        if (f->hq->head != NULL)
            pump_soon(f->m);
    } else if (v != 0) {
        f->hq->h1 = 0;
    }
}

/* Hands f, taken from its queue or new, to curl. */
static int hand_to_curl(struct curl_fetch *f)
{
    if (curl_multi_add_handle(f->m->multi, f->easy) != CURLM_OK)
        return SVC_EINTERNAL;
    f->added = 1;
    if (f->hq == NULL)
        return SVC_OK;
    f->hq->in_curl++;
    if (f->gated && !f->hq->h1) {
        f->connecting = 1;
        f->hq->connecting++;
    }
    return SVC_OK;
}

/* The waiting queue of the URL's origin, made on first use. NULL when out of memory. */
static struct host_q *host_get(struct svc_fetch_multi *m, const char *url)
{
    const char *p = strstr(url, "://");
    size_t n = p != NULL ? (size_t)(p + 3 - url) + strcspn(p + 3, "/?#") : strlen(url);
    struct host_q *hq;

    for (hq = m->hosts; hq != NULL; hq = hq->next)
        if (strncmp(hq->origin, url, n) == 0 && hq->origin[n] == '\0')
            return hq;
    hq = calloc(1, sizeof(*hq) + n + 1);
    if (hq == NULL)
        return NULL;
    memcpy(hq->origin, url, n);
    hq->next = m->hosts;
    m->hosts = hq;
    return hq;
}

static void on_pump(void *data, struct svc_timer *t)
{
    struct svc_fetch_multi *m = data;

    (void)t;
    for (struct host_q *hq = m->hosts; hq != NULL; hq = hq->next) {
        while (hq->head != NULL && (hq->head->gated ? gate_open(hq) : hq->in_curl < m->max_host)) {
            struct curl_fetch *f = hq->head;

            hq->head = f->qnext;
            if (hq->head != NULL)
                hq->head->qprev = NULL;
            else
                hq->tail = NULL;
            f->queued = 0;
            f->qnext = NULL;
            hq->nqueued--;
            if (hand_to_curl(f) == SVC_OK)
                continue;
            if (f->cb.on_done != NULL)
                f->cb.on_done(f->ud, SVC_ENOMEM, &f->base, 0, f->stream ? NULL : "", 0,
                              "cannot start the transfer");
            fetch_free(f);
        }
    }
}

static int http1_start(void *arg, struct svc_fetch **out, const struct svc_fetch_req *req,
                       const struct svc_fetch_callbacks *cb, void *ctx);

int svc_fetch_multi_create(struct svc_fetch_multi **out, struct svc_loop *loop,
                           long max_host_connections)
{
    struct svc_fetch_multi *m = calloc(1, sizeof(*m));
    const char *client = getenv("CHATWEB_HTTP1_CLIENT"); /* svc/fetch.h */
    const char *client2 = getenv("CHATWEB_HTTP2_CLIENT");
    struct svc__h2_fallback fb = {http1_start, svc_fetch_cancel, svc_fetch_pause,
                                  svc_fetch_headers_each, NULL};

    *out = NULL;
    if (m == NULL)
        return SVC_ENOMEM;
    m->loop = loop;
    m->h1_off = client != NULL && strcmp(client, "libcurl") == 0;
    m->h2_off = client2 != NULL && strcmp(client2, "libcurl") == 0;
    fb.arg = m;
    m->h2c_reuse_broken = curl_version_info(CURLVERSION_NOW)->version_num < 0x075900;
    m->multi = curl_multi_init();
    m->share = curl_share_init();
    m->max_host = max_host_connections > 0 ? max_host_connections : 0;
    if (m->multi == NULL || m->share == NULL ||
        svc_timer_create(&m->timer, loop, on_timer, m) != SVC_OK ||
        svc_timer_create(&m->pump, loop, on_pump, m) != SVC_OK ||
        svc__h1_create(&m->h1, loop, m->max_host) != SVC_OK ||
        svc__h2_create(&m->h2, loop, &fb) != SVC_OK) {
        svc_fetch_multi_destroy(&m);
        return SVC_ENOMEM;
    }
    if (curl_share_setopt(m->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) != CURLSHE_OK ||
        curl_share_setopt(m->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS) != CURLSHE_OK) {
        svc_fetch_multi_destroy(&m);
        return SVC_EINTERNAL;
    }
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
    curl_multi_setopt(m->multi, CURLMOPT_MAX_HOST_CONNECTIONS, max_host_connections);
    /* The connection cache counts busy connections too, and once it holds more than its size
     * each connection given back runs Curl_conncache_extract_oldest, which walks every connection
     * of the multi (9.4 % of chat's CPU at 10,000 streams with 1,024 here). A capped multi never
     * holds more than FETCH_CAPPED_CACHE; an uncapped one (upstream streams) gets a size it
     * never reaches: its idle connections are bounded anyway, since transfers started past
     * 1,024 open use fresh_connection and are not cached. Not curl's default (4 per transfer in
     * progress): it closes keep-alive RPC connections whenever the load dips, and a burst then
     * reconnects. */
    curl_multi_setopt(m->multi, CURLMOPT_MAXCONNECTS,
                      m->max_host > 0 ? FETCH_CAPPED_CACHE : FETCH_UNCAPPED_CACHE);
    /* HTTP/2: many transfers per connection (curl's default since 7.62, stated here because the
     * upstream's shared connections rest on it), up to FETCH_H2_MAX_STREAMS each. */
    curl_multi_setopt(m->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    curl_multi_setopt(m->multi, CURLMOPT_MAX_CONCURRENT_STREAMS, FETCH_H2_MAX_STREAMS);
    *out = m;
    return SVC_OK;
}

void svc_fetch_multi_destroy(struct svc_fetch_multi **mp)
{
    struct svc_fetch_multi *m = mp != NULL ? *mp : NULL;

    if (m == NULL)
        return;
    svc__h2_destroy(&m->h2); /* first: it may hold libcurl transfers (struct svc__h2_fallback) */
    svc__h1_destroy(&m->h1);
    while (m->all != NULL) {
        struct curl_fetch *f = m->all;
        if (!f->cancelled && f->cb.on_cancel != NULL)
            f->cb.on_cancel(f->ud);
        fetch_free(f);
    }
    while (m->neasy > 0)
        curl_easy_cleanup(m->easy_pool[--m->neasy]);
    if (m->multi != NULL)
        curl_multi_cleanup(m->multi);
    if (m->share != NULL) /* after every easy handle that used it is gone */
        curl_share_cleanup(m->share);
    svc_timer_destroy(&m->timer);
    svc_timer_destroy(&m->pump);
    while (m->hosts != NULL) {
        struct host_q *hq = m->hosts;
        m->hosts = hq->next;
        free(hq->ready);
        free(hq);
    }
    free(m);
    *mp = NULL;
}

long svc_fetch_multi_active(const struct svc_fetch_multi *m)
{
    return m->active + svc__h1_active(m->h1) + svc__h2_active(m->h2);
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *userp)
{
    struct curl_fetch *f = userp;
    size_t len = size * nmemb;

    if (f->cancelled)
        return 0; /* makes curl fail the transfer; check_done then frees it quietly */
    if (f->idle != NULL && svc_timer_start(f->idle, f->idle_ms) != SVC_OK)
        return 0;
    if (f->gated && !f->version_seen)
        note_version(f);
    if (f->stream) {
        int rc;
        if (f->status == 0)
            curl_easy_getinfo(f->easy, CURLINFO_RESPONSE_CODE, &f->status);
        rc = f->cb.on_data != NULL ? f->cb.on_data(f->ud, &f->base, f->status, ptr, len) : 0;
        if (rc == SVC_FETCH_PAUSE) {
            /* Paused by us (a slow client): silence from the upstream is not its fault. */
            svc_timer_stop(f->idle);
            return CURL_WRITEFUNC_PAUSE;
        }
        if (rc != 0) {
            f->data_err = rc;
            return 0;
        }
        return f->cancelled ? 0 : len;
    }
    if (svc_buf_append(&f->resp, ptr, len) != SVC_OK) {
        f->resp.len = f->resp.max; /* remembered as "too large" */
        return 0;
    }
    return len;
}

/* curl's own low-speed check only runs when curl is woken; a loop timer is exact. */
static void on_idle(void *data, struct svc_timer *t)
{
    struct curl_fetch *f = data;
    char msg[96];

    (void)t;
    /* Cancelled inside curl's callbacks, the fetch waits for curl to report the end, and its
     * user data may be gone already: no callback may run. */
    if (f->cancelled) {
        fetch_free(f);
        return;
    }
    curl_easy_getinfo(f->easy, CURLINFO_RESPONSE_CODE, &f->status);
    snprintf(msg, sizeof(msg), "no data for %llu ms", (unsigned long long)f->idle_ms);
    if (f->cb.on_done != NULL)
        f->cb.on_done(f->ud, SVC_ETIMEDOUT, &f->base, f->status, f->stream ? NULL : "", 0, msg);
    fetch_free(f);
}

int svc_fetch_http_parse(const char *s, svc_fetch_http_e *out)
{
    if (strcmp(s, "auto") == 0)
        *out = SVC_FETCH_HTTP_AUTO;
    else if (strcmp(s, "off") == 0)
        *out = SVC_FETCH_HTTP_1;
    else if (strcmp(s, "prior-knowledge") == 0)
        *out = SVC_FETCH_HTTP_2_PRIOR;
    else
        return SVC_EINVAL;
    return SVC_OK;
}

/* Whether the transfer may end up on an HTTP/2 connection. */
static int may_h2(const struct svc_fetch_req *req)
{
    if (req->http == SVC_FETCH_HTTP_2_PRIOR)
        return 1;
    return req->http == SVC_FETCH_HTTP_AUTO && strncasecmp(req->url, "https://", 8) == 0;
}

/* libcurl before 7.89.0 fails every transfer that reuses a cleartext prior-knowledge HTTP/2
 * connection ("Error in the HTTP2 framing layer", curl issue 10634, fixed by PR 10643); Debian
 * 12 ships 7.88.1. There, h2c gets one connection per transfer. */
static int h2c_reuse_broken(const struct svc_fetch_multi *m, const struct svc_fetch_req *req)
{
    return m->h2c_reuse_broken && req->http == SVC_FETCH_HTTP_2_PRIOR &&
           strncasecmp(req->url, "https://", 8) != 0;
}

/*
 * The request's header lines and "Expect:" (without it curl sends "Expect: 100-continue" on
 * larger bodies and waits a round trip) as a curl_slist in one allocation, nodes then strings:
 * curl only reads the list, and curl_slist_append costs two allocations a line. Free with free().
 */
static struct curl_slist *header_list(const char *const *headers)
{
    static const char expect[] = "Expect:";
    size_t n = 1, bytes = sizeof(expect);
    struct curl_slist *list;
    char *p;

    for (const char *const *h = headers; h != NULL && *h != NULL; h++, n++)
        bytes += strlen(*h) + 1;
    if ((list = malloc(n * sizeof(*list) + bytes)) == NULL)
        return NULL;
    p = (char *)(list + n);
    for (size_t i = 0; i < n; i++) {
        const char *line = i + 1 < n ? headers[i] : expect;
        size_t len = strlen(line) + 1;

        list[i].data = memcpy(p, line, len);
        list[i].next = i + 1 < n ? &list[i + 1] : NULL;
        p += len;
    }
    return list;
}

static int curl_start(struct svc_fetch_multi *m, struct svc_fetch **out,
                      const struct svc_fetch_req *req, const struct svc_fetch_callbacks *cb,
                      void *ctx);

int svc_fetch_start(struct svc_fetch **out, struct svc_fetch_multi *m,
                    const struct svc_fetch_req *req, const struct svc_fetch_callbacks *cb,
                    void *ctx)
{
    *out = NULL;
    if (m == NULL || req == NULL || cb == NULL || req->url == NULL)
        return SVC_EINVAL;
    if (!m->h1_off && svc__h1_takes(req))
        return svc__h1_start(out, m->h1, req, cb, ctx);
    switch (m->h2_off ? SVC__H2_NOT_MINE : svc__h2_takes(m->h2, req)) {
    case SVC__H2_MINE:
        return svc__h2_start(out, m->h2, req, cb, ctx);
    case SVC__H2_HTTP1: /* ALPN said HTTP/1.1 lately */
        return http1_start(m, out, req, cb, ctx);
    default:
        return curl_start(m, out, req, cb, ctx);
    }
}

/* Where a transfer to an https:// origin that answered ALPN with HTTP/1.1 goes, new ones and
 * those fetch_h2.c hands over (struct svc__h2_fallback): our HTTP/1.1 client, or libcurl with
 * CHATWEB_HTTP1_CLIENT=libcurl. */
static int http1_start(void *arg, struct svc_fetch **out, const struct svc_fetch_req *req,
                       const struct svc_fetch_callbacks *cb, void *ctx)
{
    struct svc_fetch_multi *m = arg;

    return m->h1_off ? curl_start(m, out, req, cb, ctx) : svc__h1_start(out, m->h1, req, cb, ctx);
}

static int curl_start(struct svc_fetch_multi *m, struct svc_fetch **out,
                      const struct svc_fetch_req *req, const struct svc_fetch_callbacks *cb,
                      void *ctx)
{
    struct curl_fetch *f;
    CURL *e;
    int rc = SVC_ENOMEM;

    if ((f = calloc(1, sizeof(*f))) == NULL)
        return SVC_ENOMEM;
    f->m = m;
    f->cb = *cb;
    f->ud = ctx;
    f->stream = req->stream;
    svc_buf_init(&f->resp, req->max_response ? req->max_response : SVC__FETCH_DEFAULT_MAX_RESPONSE);
    e = f->easy = easy_get(m);
    if (e == NULL)
        goto fail;
    if ((f->headers = header_list(req->headers)) == NULL)
        goto fail;
    curl_easy_setopt(e, CURLOPT_URL, req->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, f);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, f->headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, f);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, f->errbuf);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     req->connect_timeout_ms > 0 ? req->connect_timeout_ms
                                                 : (long)SVC__FETCH_DEFAULT_CONNECT_MS);
    if (req->timeout_ms > 0)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, req->timeout_ms);
    if (req->idle_timeout_ms > 0) {
        f->idle_ms = (uint64_t)req->idle_timeout_ms;
        if (svc_timer_create(&f->idle, m->loop, on_idle, f) != SVC_OK ||
            svc_timer_start(f->idle, f->idle_ms) != SVC_OK)
            goto fail;
    }
    curl_easy_setopt(e, CURLOPT_SHARE, m->share);
    if (h2c_reuse_broken(m, req)) {
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
        curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
        curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    } else if (may_h2(req)) {
        /* While a connection to the host is being set up (any burst), wait to learn whether it
         * multiplexes instead of opening one more: without this a burst of 10,000 streams
         * opened 2,225 connections (docs/decisions.md). Past that, the gate (struct host_q). */
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
        f->gated = m->max_host == 0;
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                         req->http == SVC_FETCH_HTTP_2_PRIOR
                             ? (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE
                             : (long)CURL_HTTP_VERSION_2TLS);
    } else {
        f->h1_only = 1;
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
        if (req->fresh_connection) {
            curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
            curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
        }
    }
    if (req->proxy != NULL && req->proxy[0] != '\0')
        curl_easy_setopt(e, CURLOPT_PROXY, req->proxy);
    if (req->ca_file != NULL && req->ca_file[0] != '\0')
        curl_easy_setopt(e, CURLOPT_CAINFO, req->ca_file);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    /* A streamed body arrives in small events (150-250 bytes of SSE each); curl's 16 KiB
     * default receive buffer would be resident for every open stream. Over HTTP/1.1 1 KiB,
     * curl's minimum, is enough (docs/benchmarks.md, "Where a stream's memory goes"). A transfer
     * that may be HTTP/2 keeps curl's default: libcurl 7.88's HTTP/2 corrupted its heap with 1
     * KiB when a GOAWAY refused streams, and with 4 KiB a reply that came faster than the buffer
     * took it was left in curl's buffers, its stream hanging until the connection's next byte
     * (upstream_h2.test, "larger than a receive buffer"). */
    if (req->stream && f->h1_only)
        curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 1024L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    if (req->body != NULL) {
        f->body = malloc(req->body_len ? req->body_len : 1);
        if (f->body == NULL)
            goto fail;
        memcpy(f->body, req->body, req->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, f->body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
    }
    if (req->method != NULL && strcmp(req->method, req->body != NULL ? "POST" : "GET") != 0)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
    if ((m->max_host > 0 || f->gated) && (f->hq = host_get(m, req->url)) == NULL)
        goto fail;
    if (f->gated) { /* how the gate learns of a connection had and of one closed */
        curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
        curl_easy_setopt(e, CURLOPT_PREREQDATA, f);
        curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
        curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, f->hq);
    }
    if (must_wait(m, f->hq, f->gated)) {
        f->queued = 1; /* on_pump hands it to curl when a connection is free */
        f->hq->nqueued++;
        f->qprev = f->hq->tail;
        if (f->hq->tail != NULL)
            f->hq->tail->qnext = f;
        else
            f->hq->head = f;
        f->hq->tail = f;
    } else if ((rc = hand_to_curl(f)) != SVC_OK) {
        goto fail;
    }
    m->active++;
    f->next = m->all;
    if (m->all != NULL)
        m->all->prev = f;
    m->all = f;
    *out = &f->base;
    return SVC_OK;
fail:
    svc_timer_destroy(&f->idle);
    easy_put(m, f->easy);
    free(f->headers); /* header_list */
    free(f->body);
    svc_buf_deinit(&f->resp);
    free(f);
    return rc;
}

static void curl_pause(struct curl_fetch *f, int paused);

void svc_fetch_cancel(struct svc_fetch **fp)
{
    struct svc_fetch *base = fp != NULL ? *fp : NULL;
    struct curl_fetch *f = (struct curl_fetch *)base;

    if (base == NULL)
        return;
    *fp = NULL;
    if (base->kind == SVC__FETCH_H1) {
        svc__h1_cancel(base);
        return;
    }
    if (base->kind == SVC__FETCH_H2) {
        svc__h2_cancel(base);
        return;
    }
    f->cancelled = 1;
    if (f->cb.on_cancel != NULL)
        f->cb.on_cancel(f->ud);
    /* Inside curl's own callbacks the handle cannot be removed; on_write returns 0 instead and
     * check_done frees it when curl reports the transfer finished. A silent upstream would keep
     * curl from ever reporting it (and the connection open): the idle timer, fired at once,
     * frees it as soon as the loop is out of curl's callbacks (on_idle runs no callback for a
     * cancelled fetch). */
    if (f->m->in_action == 0 || f->queued) { /* a queued one is not curl's yet */
        fetch_free(f);
    } else {
        if (f->idle != NULL && svc_timer_start(f->idle, 0) != SVC_OK)
            svc_timer_stop(f->idle); /* then curl's own end or timeout frees it */
        curl_pause(f, 0);
    }
}

static void curl_pause(struct curl_fetch *f, int paused)
{
    struct svc_fetch_multi *m = f->m;

    /* The idle timeout measures the upstream's silence, not ours: it stops while we hold the
     * transfer and starts afresh when we take bytes again. */
    if (paused)
        svc_timer_stop(f->idle);
    else if (f->idle != NULL && !f->cancelled && svc_timer_start(f->idle, f->idle_ms) != SVC_OK)
        svc_timer_stop(f->idle);
    /* Resuming delivers the held bytes to on_data inside curl_easy_pause, and on_data may cancel
     * the fetch there: that is inside curl's callbacks too, so svc_fetch_cancel must leave the
     * handle alone, and the fetch is freed here once curl has returned (test_fetch). */
    m->in_action++;
    curl_easy_pause(f->easy, paused ? CURLPAUSE_RECV : CURLPAUSE_CONT);
    m->in_action--;
    if (f->cancelled && m->in_action == 0)
        fetch_free(f);
}

void svc_fetch_pause(struct svc_fetch *base, int paused)
{
    if (base->kind == SVC__FETCH_H1)
        svc__h1_pause(base, paused);
    else if (base->kind == SVC__FETCH_H2)
        svc__h2_pause(base, paused);
    else
        curl_pause((struct curl_fetch *)base, paused);
}

void svc_fetch_headers_each(struct svc_fetch *base, svc_fetch_header_cb cb, void *ctx)
{
    struct curl_fetch *f = (struct curl_fetch *)base;
    struct curl_header *h = NULL;

    if (base == NULL)
        return;
    if (base->kind == SVC__FETCH_H1) {
        svc__h1_headers_each(base, cb, ctx);
        return;
    }
    if (base->kind == SVC__FETCH_H2) {
        svc__h2_headers_each(base, cb, ctx);
        return;
    }
    if (f->easy == NULL)
        return;
    /* CURLH_HEADER: the response's own headers (not trailers, not a CONNECT's); request -1: the
     * last response of the transfer (an interim 100 Continue's headers are not included). */
    while ((h = curl_easy_nextheader(f->easy, CURLH_HEADER, -1, h)) != NULL)
        cb(ctx, h->name, h->value);
}
