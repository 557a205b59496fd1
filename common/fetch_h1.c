/*
 * The HTTP/1.1 client of svc_fetch (fetch_h1.h, docs/decisions.md 60 and 62): the chat and
 * proxy upstream over http://, every RPC between services, and an https:// upstream that speaks
 * HTTP/1.1 only (ALPN, or OPENAI_HTTP2=off), over TLS (fetch_tls.h).
 *
 * On the loop like the server of common/http.c, and shaped like nginx's upstream module: one
 * transfer per connection, kept-alive connections per origin, a response read straight into a
 * small buffer of the connection and decoded in place (common/http_parse.c, the server's own
 * head scanner and chunked decoder). What libcurl did around each transfer and this does not:
 * no poll() to ask whether a kept connection is still alive before reusing it (an idle
 * connection is watched for its close instead, and a reused one that fails before answering is
 * retried once on a new connection, as curl and nginx do), no poll() after each read, no
 * getsockname/getpeername, and a few hundred bytes of state instead of ~11 KB
 * (docs/benchmarks.md, "System calls per stream").
 *
 * Lifetimes: a transfer (struct h1_fetch) waits in its origin's queue, then owns a connection
 * (struct h1_conn) until it ends, when the connection goes back to the origin's idle list or is
 * closed. Callbacks run from I/O and timer events of the loop, never inside svc__h1_start. A
 * transfer cancelled inside its own on_data is freed when on_data returns (in_cb).
 *
 * Names are resolved off the loop and cached (fetch_addr.h).
 */
#include "fetch_h1.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fetch_addr.h"
#include "fetch_deadline.h"
#include "fetch_tls.h"
#include "http_parse.h"
#include "svc/buf.h"
#include "svc/loop.h"
#include "svc/util.h"

/* A connection's read buffer: a stream's events are 150-250 bytes and a response head a few
 * hundred, so 1 KiB holds either; it grows (doubling) only for a longer head. */
#define H1_BUF_MIN 1024u
#define H1_HEAD_MAX (64u * 1024u)
#define H1_MAX_HEADERS 128
#define H1_IDLE_PER_ORIGIN 1024 /* kept-alive connections per origin; more are closed */

enum h1_state {
    ST_QUEUED, /* waiting for a connection (per-host cap, name resolution, the pump) */
    ST_SEND,   /* connecting or writing the request */
    ST_HEAD,   /* reading the response head */
    ST_BODY,   /* reading the body */
};

enum h1_body {
    B_NONE,    /* no body (HEAD, 204, 304, Content-Length: 0) */
    B_LENGTH,  /* Content-Length bytes, `left` of them to come */
    B_CHUNKED, /* Transfer-Encoding: chunked */
    B_CLOSE,   /* until the server closes */
};

struct h1_origin;
struct h1_fetch;

struct h1_conn {
    struct h1_conn *prev, *next; /* in its origin's idle list, while idle */
    struct h1_origin *o;
    struct h1_fetch *f; /* the transfer on it; NULL while idle */
    struct svc_io *io;  /* NULL once it is no longer watched (broken while paused) */
    int fd;
    SSL *ssl;                /* https:// only */
    uint32_t events;         /* what io watches */
    unsigned connecting : 1; /* connect() has not finished */
    unsigned handshake : 1;  /* the TLS handshake has not finished */
    unsigned reused : 1;     /* it carried a response before the current one */
    unsigned broken : 1;     /* reset while its transfer was paused: never reused */
    char *buf;               /* bytes read; [start, end) not parsed yet */
    size_t cap, start, end;
};

struct h1_origin {
    struct h1_origin *next;
    struct svc__h1 *h;
    struct h1_conn *idle; /* kept-alive connections, most recent first */
    long nidle;
    long busy;                    /* connections that carry (or connect for) a transfer */
    struct h1_fetch *head, *tail; /* waiting for a connection, oldest first */
    struct svc__addr addr;
    unsigned tls : 1;        /* https:// */
    struct svc__tls tls_ctx; /* https:// only */
    char *ca_file;           /* NULL: the system's CAs */
    char authority[];        /* "host[:port]" as in the URL (the Host header) */
};

struct h1_fetch {
    struct svc_fetch base; /* first: the public handle */
    struct svc__h1 *h;
    struct h1_origin *o;
    struct h1_conn *c;              /* from ST_SEND on */
    struct h1_fetch *prev, *next;   /* every transfer, for svc__h1_destroy */
    struct h1_fetch *qprev, *qnext; /* in o's queue while ST_QUEUED */
    struct svc_fetch_callbacks cb;
    void *ud;
    char *req; /* the request, head and body; wiped and freed at the first byte of the answer */
    size_t req_len, req_sent;
    struct svc_timer *timer;        /* the deadlines, and kick */
    struct svc__deadlines dl;       /* connect, whole transfer, idle */
    struct svc_buf resp;            /* buffered mode: the body */
    struct svc__http_scan scan;     /* ST_HEAD */
    struct svc__http_chunked chunk; /* B_CHUNKED */
    uint64_t left;                  /* B_LENGTH */
    struct svc__http_field *fields; /* the response's headers, one block with their text */
    unsigned nfields;
    size_t hold_off, hold_len; /* decoded body bytes in c->buf not yet delivered */
    long status;
    unsigned char state, body;
    unsigned queued : 1, stream : 1, head_req : 1, keepalive : 1, fresh : 1, retried : 1,
        paused : 1, cancelled : 1, in_cb : 1, kick : 1, got_bytes : 1, complete : 1;
};

struct svc__h1 {
    struct svc_loop *loop;
    long max_host;
    long active;
    struct h1_origin *origins; /* a handful: the upstream and the peer services */
    struct h1_fetch *all;
    struct svc_timer *pump; /* hands waiting transfers connections, outside any callback */
};

static int process(struct h1_fetch *f);
static void read_response(struct h1_fetch *f);
static void origin_pump(struct h1_origin *o);

/* ---- connections ---- */

static void pump_soon(struct svc__h1 *h)
{
    if (svc_timer_start(h->pump, 0) != SVC_OK)
        svc_timer_stop(h->pump); /* a transfer's own timeout ends its wait */
}

static void idle_unlink(struct h1_conn *c)
{
    struct h1_origin *o = c->o;

    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        o->idle = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    o->nidle--;
}

static void conn_close(struct h1_conn *c)
{
    svc__tls_free(c->ssl);
    if (c->io != NULL)
        svc_io_close(&c->io);
    else
        close(c->fd);
    free(c->buf);
    free(c);
}

/* Whether TLS holds bytes of c that the socket no longer signals. */
static int conn_has_pending(struct h1_conn *c)
{
    return c->ssl != NULL && svc__tls_pending(c->ssl);
}

static int conn_watch(struct h1_conn *c, uint32_t events)
{
    if (c->io == NULL || c->events == events)
        return SVC_OK;
    if (svc_io_modify(c->io, events) != SVC_OK)
        return SVC_EIO;
    c->events = events;
    return SVC_OK;
}

/* Takes f's connection from it. keep: the connection ended a response cleanly and may carry
 * another; it goes to the idle list (watched for the server's close), else it is closed. */
static void conn_release(struct h1_fetch *f, int keep)
{
    struct h1_conn *c = f->c;
    struct h1_origin *o = f->o;

    if (c == NULL)
        return;
    f->c = NULL;
    c->f = NULL;
    o->busy--;
    if (o->head != NULL)
        pump_soon(o->h);
    if (!keep || c->broken || c->start != c->end || o->nidle >= H1_IDLE_PER_ORIGIN ||
        conn_watch(c, EPOLLIN) != SVC_OK) {
        conn_close(c);
        return;
    }
    c->reused = 1;
    c->start = c->end = 0;
    c->next = o->idle;
    if (o->idle != NULL)
        o->idle->prev = c;
    o->idle = c;
    o->nidle++;
}

static void on_conn_io(void *ctx, struct svc_io *io, int fd, uint32_t events);

/* A new connection to o's address; connect() may still be in progress. NULL with errno set. */
static struct h1_conn *conn_open(struct h1_origin *o)
{
    struct h1_conn *c = calloc(1, sizeof(*c));
    int one = 1, err;

    if (c == NULL)
        return NULL;
    c->o = o;
    c->cap = H1_BUF_MIN;
    if ((c->buf = malloc(c->cap)) == NULL) {
        free(c);
        errno = ENOMEM;
        return NULL;
    }
    c->fd = socket(o->addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        err = errno;
        free(c->buf);
        free(c);
        errno = err;
        return NULL;
    }
    (void)setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&o->addr.ss, o->addr.len) != 0) {
        if (errno != EINPROGRESS)
            goto fail;
        c->connecting = 1;
    }
    if (o->tls) {
        c->ssl = svc__tls_conn(&o->tls_ctx, c->fd, o->addr.host, svc__addr_numeric(&o->addr));
        if (c->ssl == NULL) {
            errno = ENOMEM;
            goto fail;
        }
        c->handshake = 1;
    }
    /* Connected (loopback usually is at once): the request is written now and the answer
     * awaited; connecting: writable says when it is up. */
    c->events = c->connecting ? EPOLLOUT : EPOLLIN;
    if (svc_io_add(&c->io, o->h->loop, c->fd, c->events, on_conn_io, c) != SVC_OK)
        goto fail;
    return c;
fail:
    err = errno;
    svc__tls_free(c->ssl);
    close(c->fd);
    free(c->buf);
    free(c);
    errno = err;
    return NULL;
}

/* ---- transfers: ends ---- */

static void queue_remove(struct h1_fetch *f)
{
    struct h1_origin *o = f->o;

    if (f->qprev != NULL)
        f->qprev->qnext = f->qnext;
    else
        o->head = f->qnext;
    if (f->qnext != NULL)
        f->qnext->qprev = f->qprev;
    else
        o->tail = f->qprev;
    f->qprev = f->qnext = NULL;
    f->queued = 0;
}

static void req_free(struct h1_fetch *f)
{
    if (f->req == NULL)
        return;
    svc_util_wipe(f->req, f->req_len); /* it holds the API key or the RPC signature */
    free(f->req);
    f->req = NULL;
}

static void fetch_free(struct h1_fetch *f)
{
    struct svc__h1 *h = f->h;

    svc_timer_destroy(&f->timer);
    if (f->queued)
        queue_remove(f);
    conn_release(f, 0);
    req_free(f);
    free(f->fields);
    svc_buf_deinit(&f->resp);
    if (f->prev != NULL)
        f->prev->next = f->next;
    else
        h->all = f->next;
    if (f->next != NULL)
        f->next->prev = f->prev;
    h->active--;
    free(f);
}

/* Ends f with err (not SVC_OK) and frees it. Returns 0, for process()'s callers. */
static int fail(struct h1_fetch *f, int err, const char *msg)
{
    if (f->queued)
        queue_remove(f);
    conn_release(f, 0);
    if (!f->cancelled && f->cb.on_done != NULL) {
        f->in_cb = 1;
        f->cb.on_done(f->ud, err, &f->base, f->status, f->stream ? NULL : "", 0, msg);
    }
    fetch_free(f);
    return 0;
}

/* The whole response arrived: the connection goes back, on_done runs, f is freed. */
static void finish(struct h1_fetch *f)
{
    conn_release(f, f->keepalive && !f->fresh);
    if (!f->cancelled && f->cb.on_done != NULL) {
        f->in_cb = 1;
        f->cb.on_done(f->ud, SVC_OK, &f->base, f->status,
                      f->stream ? NULL : (f->resp.data != NULL ? f->resp.data : ""),
                      f->stream ? 0 : f->resp.len, NULL);
    }
    fetch_free(f);
}

/* A kept-alive connection the server had closed (or reset) before this request reached it
 * fails without a byte of answer; the request goes again, once, on a new connection. */
static int may_retry(const struct h1_fetch *f)
{
    return f->c->reused && !f->got_bytes && !f->retried && f->req != NULL;
}

static int retry(struct h1_fetch *f)
{
    struct h1_origin *o = f->o;

    conn_release(f, 0);
    f->retried = 1;
    f->req_sent = 0;
    f->state = ST_QUEUED;
    f->queued = 1;
    memset(&f->scan, 0, sizeof(f->scan));
    f->qprev = NULL; /* first in line: it was served already */
    f->qnext = o->head;
    if (o->head != NULL)
        o->head->qprev = f;
    else
        o->tail = f;
    o->head = f;
    pump_soon(f->h);
    return 0;
}

/* A send or receive failed with errno err (0: the server closed the connection; EPROTO over
 * TLS: svc__tls_why says why). */
static int transport_error(struct h1_fetch *f, int err)
{
    char msg[256], why[160];

    if (err == EPROTO && f->c->ssl != NULL)
        svc__tls_why(f->c->ssl, why, sizeof(why));
    else
        snprintf(why, sizeof(why), "%s", err ? strerror(err) : "connection closed");
    if (may_retry(f))
        return retry(f);
    if (f->state == ST_SEND && f->req_sent == 0 && !f->c->reused)
        snprintf(msg, sizeof(msg), "cannot connect to %s: %s", f->o->authority, why);
    else if (err == 0)
        snprintf(msg, sizeof(msg), "%s closed the connection before the response ended",
                 f->o->authority);
    else
        snprintf(msg, sizeof(msg), "connection to %s: %s", f->o->authority, why);
    return fail(f, SVC_EUNAVAIL, msg);
}

/* ---- deadlines ---- */

static void timer_arm(struct h1_fetch *f)
{
    svc__deadlines_arm(&f->dl, f->timer, svc_loop_now(f->h->loop), f->kick);
}

static void on_fetch_timer(void *ctx, struct svc_timer *t)
{
    struct h1_fetch *f = ctx;
    uint64_t now = svc_loop_now(f->h->loop);
    char msg[160];

    (void)t;
    if (f->kick) { /* resumed: deliver what was held and read on */
        f->kick = 0;
        if (f->c != NULL && f->state != ST_SEND && !f->paused) {
            if (conn_watch(f->c, EPOLLIN) != SVC_OK) {
                fail(f, SVC_EIO, "cannot watch the upstream connection");
                return;
            }
            if (!process(f))
                return;
            /* reset while paused, or TLS holds a record's rest: no event will come */
            if (f->c->io == NULL || conn_has_pending(f->c)) {
                read_response(f);
                return;
            }
        }
    }
    if (svc__deadlines_passed(&f->dl, now, f->o->authority, msg, sizeof(msg)) == SVC_OK) {
        timer_arm(f);
        return;
    }
    fail(f, SVC_ETIMEDOUT, msg);
}

/* ---- the request ---- */

/* One step of c's TLS handshake. Returns 1 when it is done, 0 when it waits or f failed. */
static int handshake(struct h1_fetch *f)
{
    struct h1_conn *c = f->c;
    uint32_t events = 0;
    char why[160], msg[256];
    int rc = svc__tls_handshake(c->ssl, &events);

    if (rc == 0) {
        if (conn_watch(c, events) != SVC_OK)
            fail(f, SVC_EIO, "cannot watch the upstream connection");
        else
            timer_arm(f);
        return 0;
    }
    if (rc < 0) {
        svc__tls_why(c->ssl, why, sizeof(why));
        snprintf(msg, sizeof(msg), "TLS handshake with %s: %s", f->o->authority, why);
        fail(f, SVC_EUNAVAIL, msg);
        return 0;
    }
    c->handshake = 0;
    return 1;
}

static void send_request(struct h1_fetch *f)
{
    struct h1_conn *c = f->c;

    if (c->connecting) {
        c->connecting = 0;
        if (c->ssl != NULL) { /* TLS would report a refused connection as its own failure */
            int err = 0;
            socklen_t len = sizeof(err);

            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
                err = errno;
            if (err != 0) {
                transport_error(f, err);
                return;
            }
        }
    }
    if (c->handshake && !handshake(f))
        return;
    f->dl.connect_due = 0; /* connected, and the handshake done: the connect deadline is met */
    while (f->req_sent < f->req_len) {
        int other = 0;
        ssize_t n =
            c->ssl != NULL
                ? svc__tls_send(c->ssl, f->req + f->req_sent, f->req_len - f->req_sent, &other)
                : send(c->fd, f->req + f->req_sent, f->req_len - f->req_sent, MSG_NOSIGNAL);

        if (n > 0) {
            f->req_sent += (size_t)n;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (conn_watch(c, other ? EPOLLIN : EPOLLOUT) != SVC_OK)
                fail(f, SVC_EIO, "cannot watch the upstream connection");
            else
                timer_arm(f);
            return;
        } else if (errno != EINTR) {
            transport_error(f, errno);
            return;
        }
    }
    f->state = ST_HEAD;
    if (conn_watch(c, f->paused ? 0 : EPOLLIN) != SVC_OK) {
        fail(f, SVC_EIO, "cannot watch the upstream connection");
        return;
    }
    timer_arm(f);
}

/* ---- the response ---- */

/* Interprets the head in p[0..len). Returns 1 for a final response (f->body and friends set),
 * 0 for an interim one (1xx: skipped), -1 when f failed. */
static int take_head(struct h1_fetch *f, char *p, size_t len)
{
    struct svc__http_field fields[H1_MAX_HEADERS];
    struct svc__http_response r;
    const char *cl = NULL, *te = NULL, *conn = NULL;
    size_t bytes = 0;
    char *text;
    int rc = svc__http_parse_response_head(p, len, &r, fields, H1_MAX_HEADERS);

    if (rc != 0)
        return fail(f, SVC_EUNAVAIL,
                    rc == 431 ? "the response has more than 128 header lines"
                              : "the response head is malformed") -
               1;
    if (r.status < 200) /* 100 Continue, 103 Early Hints: the answer follows */
        return r.status == 101 ? fail(f, SVC_EUNAVAIL, "unexpected 101 Switching Protocols") - 1
                               : 0;
    f->status = r.status;
    for (unsigned i = 0; i < r.nheaders; i++) {
        const char *n = fields[i].name, *v = fields[i].value;

        if (strcasecmp(n, "Content-Length") == 0) {
            if (cl != NULL && strcmp(cl, v) != 0)
                return fail(f, SVC_EUNAVAIL, "conflicting Content-Length headers") - 1;
            cl = v;
        } else if (strcasecmp(n, "Transfer-Encoding") == 0) {
            te = v;
        } else if (strcasecmp(n, "Connection") == 0) {
            conn = v;
        }
        bytes += strlen(n) + strlen(v) + 2;
    }
    f->keepalive = svc__http_keeps_alive(r.minor, conn);
    if (f->head_req || f->status == 204 || f->status == 304) {
        f->body = B_NONE;
    } else if (te != NULL) {
        /* chunked must be the last coding; anything before it we cannot undo */
        if (strcasecmp(te, "chunked") != 0)
            return fail(f, SVC_EUNAVAIL, "unsupported Transfer-Encoding") - 1;
        f->body = B_CHUNKED;
        memset(&f->chunk, 0, sizeof(f->chunk));
        if (cl != NULL) /* RFC 9112 6.3: chunked wins, and the connection is not reused */
            f->keepalive = 0;
    } else if (cl != NULL) {
        char *end;

        errno = 0;
        f->left = strtoull(cl, &end, 10);
        if (cl[0] < '0' || cl[0] > '9' || *end != '\0' || errno != 0)
            return fail(f, SVC_EUNAVAIL, "invalid Content-Length") - 1;
        f->body = f->left > 0 ? B_LENGTH : B_NONE;
    } else {
        f->body = B_CLOSE;
        f->keepalive = 0;
    }
    f->complete = f->body == B_NONE;
    /* The headers outlive the buffer they were read into: svc_fetch_headers_each may ask during
     * every on_data and on_done. One block: the array, then the text. */
    free(f->fields);
    f->nfields = 0;
    f->fields = malloc(r.nheaders * sizeof(*f->fields) + bytes + 1);
    if (f->fields == NULL)
        return fail(f, SVC_ENOMEM, "out of memory for the response headers") - 1;
    text = (char *)(f->fields + r.nheaders);
    for (unsigned i = 0; i < r.nheaders; i++) {
        size_t nl = strlen(fields[i].name) + 1, vl = strlen(fields[i].value) + 1;

        f->fields[i].name = memcpy(text, fields[i].name, nl);
        f->fields[i].value = memcpy(text + nl, fields[i].value, vl);
        text += nl + vl;
    }
    f->nfields = r.nheaders;
    return 1;
}

/* Hands the held bytes to the reader. Returns 1 when they were taken, 0 when f is paused or
 * gone. */
static int deliver(struct h1_fetch *f)
{
    const char *data = f->c->buf + f->hold_off;
    int rc;

    if (!f->stream) {
        if (svc_buf_append(&f->resp, data, f->hold_len) != SVC_OK) {
            char msg[96];
            snprintf(msg, sizeof(msg), "the response is larger than %zu bytes", f->resp.max);
            return fail(f, SVC_ETOOLARGE, msg);
        }
        f->hold_len = 0;
        return 1;
    }
    f->in_cb = 1;
    rc = f->cb.on_data != NULL ? f->cb.on_data(f->ud, &f->base, f->status, data, f->hold_len) : 0;
    f->in_cb = 0;
    if (f->cancelled) {
        fetch_free(f);
        return 0;
    }
    if (rc == SVC_FETCH_PAUSE) {
        svc__h1_pause(&f->base, 1);
        return 0;
    }
    if (rc != 0)
        return fail(f, rc, "the reader refused the response");
    f->hold_len = 0;
    return 1;
}

/*
 * Parses and delivers what the connection's buffer holds. Returns 1 when f waits for more
 * bytes, 0 when it is paused or gone (ended, failed, cancelled).
 */
static int process(struct h1_fetch *f)
{
    struct h1_conn *c = f->c;

    for (;;) {
        char *raw = c->buf + c->start;
        size_t n = c->end - c->start;

        if (f->state == ST_HEAD) {
            size_t hl = svc__http_head_len(raw, n, &f->scan);
            int rc;

            if (hl == 0) {
                if (n >= H1_HEAD_MAX)
                    return fail(f, SVC_EUNAVAIL, "the response head is larger than 64 KiB");
                return 1;
            }
            rc = take_head(f, raw, hl);
            if (rc < 0)
                return 0;
            c->start += hl;
            memset(&f->scan, 0, sizeof(f->scan));
            if (rc == 1)
                f->state = ST_BODY;
            continue;
        }
        if (f->hold_len > 0 && !deliver(f))
            return 0;
        if (f->complete) {
            finish(f);
            return 0;
        }
        if (n == 0) {
            c->start = c->end = 0;
            return 1;
        }
        f->hold_off = c->start; /* decoded data goes here; the loop's top delivers it */
        if (f->body == B_LENGTH) {
            size_t take = n < f->left ? n : (size_t)f->left;
            f->hold_len = take;
            c->start += take;
            f->left -= take;
            f->complete = f->left == 0;
        } else if (f->body == B_CHUNKED) {
            size_t used = 0;
            int done = 0;
            long got = svc__http_chunked_decode(&f->chunk, raw, n, &used, &done);

            if (got < 0)
                return fail(f, SVC_EUNAVAIL, "the response's chunked coding is malformed");
            f->hold_len = (size_t)got;
            c->start += used;
            f->complete = done;
        } else { /* B_CLOSE */
            f->hold_len = n;
            c->start = c->end;
        }
    }
}

/* Room in the buffer for the next read: parsed bytes dropped, or (a long head) more space. */
static int make_room(struct h1_conn *c)
{
    char *p;

    if (c->start > 0) {
        memmove(c->buf, c->buf + c->start, c->end - c->start);
        c->end -= c->start;
        c->start = 0;
        return SVC_OK;
    }
    if (c->cap >= H1_HEAD_MAX + H1_BUF_MIN || (p = realloc(c->buf, c->cap * 2)) == NULL)
        return SVC_ENOMEM;
    c->buf = p;
    c->cap *= 2;
    return SVC_OK;
}

/* An idle TLS connection got readable: a message after the handshake (TLS 1.3 session tickets)
 * leaves it usable; anything else (the server's close, data) ends it. */
static int idle_tls_quiet(struct h1_conn *c)
{
    char b[256];
    int other = 0;
    ssize_t n;

    do
        n = svc__tls_recv(c->ssl, b, sizeof(b), &other);
    while (n < 0 && errno == EINTR);
    return n < 0 && errno == EAGAIN && !other;
}

static void read_response(struct h1_fetch *f)
{
    struct h1_conn *c = f->c;

    while (!f->paused) {
        ssize_t n;
        int other = 0;

        if (c->end == c->cap && make_room(c) != SVC_OK) {
            fail(f, SVC_EUNAVAIL, "the response head is larger than 64 KiB");
            return;
        }
        n = c->ssl != NULL ? svc__tls_recv(c->ssl, c->buf + c->end, c->cap - c->end, &other)
                           : recv(c->fd, c->buf + c->end, c->cap - c->end, 0);
        if (n > 0) {
            int full = c->end + (size_t)n == c->cap;

            c->end += (size_t)n;
            if (!f->got_bytes) {
                f->got_bytes = 1;
                req_free(f); /* nothing is retried after the first byte */
            }
            if (f->dl.idle_ms > 0) {
                f->dl.idle_due = svc_loop_now(f->h->loop) + f->dl.idle_ms;
                timer_arm(f);
            }
            /* Watched (level-triggered), a read that did not fill the buffer drained the socket
             * and the next event says when there is more; TLS may still hold bytes of a record
             * it read. Unwatched (reset while paused), no event will come: read on until the
             * end or the error. */
            if (!process(f) || (!full && c->io != NULL && !conn_has_pending(c)))
                return; /* gone or paused, or the socket is drained */
        } else if (n == 0) {
            if (f->state == ST_BODY && f->body == B_CLOSE) {
                f->complete = 1;
                process(f);
            } else {
                transport_error(f, 0);
            }
            return;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            /* TLS that must send a record before it reads on waits for writable too */
            if (conn_watch(c, other ? EPOLLIN | EPOLLOUT : EPOLLIN) != SVC_OK)
                fail(f, SVC_EIO, "cannot watch the upstream connection");
            return;
        } else if (errno != EINTR) {
            transport_error(f, errno);
            return;
        }
    }
}

static void on_conn_io(void *ctx, struct svc_io *io, int fd, uint32_t events)
{
    struct h1_conn *c = ctx;
    struct h1_fetch *f = c->f;

    (void)io;
    (void)fd;
    if (f == NULL) { /* idle: readable means closed by the server (or garbage) */
        if (c->ssl != NULL && idle_tls_quiet(c))
            return;
        idle_unlink(c);
        conn_close(c);
        return;
    }
    if (f->state == ST_SEND) {
        send_request(f);
    } else if (!f->paused) {
        read_response(f);
    } else if (events & (EPOLLERR | EPOLLHUP)) {
        /* Paused, so not reading: an error or hang-up would be reported on every pass. What
         * was read already is still delivered; past it the transfer fails. */
        c->broken = 1;
        svc_io_del(&c->io);
        if (!f->complete && f->body != B_CLOSE)
            transport_error(f, ECONNRESET);
    }
}

/* ---- origins and names ---- */

static void fail_queue(struct h1_origin *o, const char *msg)
{
    while (o->head != NULL)
        fail(o->head, SVC_EUNAVAIL, msg);
}

/* The end of a resolution of o's name (fetch_addr.h). */
static void on_addr(void *ctx, const char *errmsg)
{
    struct h1_origin *o = ctx;

    if (errmsg != NULL)
        fail_queue(o, errmsg);
    else
        origin_pump(o);
}

/* The cap counts idle connections too (svc/fetch.h): a transfer that must have a new connection
 * (fresh_connection, a retry) when the cap is reached closes the least recently used idle one.
 * Returns 0 when there is none. */
static int close_oldest_idle(struct h1_origin *o)
{
    struct h1_conn *c = o->idle;

    if (c == NULL)
        return 0;
    while (c->next != NULL) /* a capped origin keeps at most max_host idle connections */
        c = c->next;
    idle_unlink(c);
    conn_close(c);
    return 1;
}

/* Gives waiting transfers of o connections: idle ones first, new ones up to the cap. */
static void origin_pump(struct h1_origin *o)
{
    struct svc__h1 *h = o->h;
    char msg[192];

    while (o->head != NULL && (h->max_host == 0 || o->busy < h->max_host)) {
        struct h1_fetch *f = o->head;
        uint64_t now = svc_loop_now(h->loop);
        struct h1_conn *c;

        if (!f->fresh && !f->retried && o->idle != NULL) {
            c = o->idle;
            idle_unlink(c);
        } else if (!svc__addr_ready(&o->addr)) {
            return; /* on_addr pumps again */
        } else if (h->max_host > 0 && o->busy + o->nidle >= h->max_host && !close_oldest_idle(o)) {
            return; /* cannot happen: busy < max_host, so an idle one is there to close */
        } else if ((c = conn_open(o)) == NULL) {
            snprintf(msg, sizeof(msg), "cannot connect to %s: %s", o->authority, strerror(errno));
            fail(f, SVC_EUNAVAIL, msg);
            continue;
        }
        queue_remove(f);
        f->state = ST_SEND;
        f->c = c;
        c->f = f;
        o->busy++;
        if (f->dl.total_ms > 0 && f->dl.total_due == 0) /* from leaving the queue, as curl's */
            f->dl.total_due = now + f->dl.total_ms;
        if (c->connecting || c->handshake)
            f->dl.connect_due = now + f->dl.connect_ms; /* to connected and the handshake done */
        if (c->connecting)
            timer_arm(f);
        else
            send_request(f);
    }
}

static void on_pump(void *ctx, struct svc_timer *t)
{
    struct svc__h1 *h = ctx;

    (void)t;
    for (struct h1_origin *o = h->origins; o != NULL; o = o->next)
        if (o->head != NULL)
            origin_pump(o);
}

static void origin_free(struct h1_origin *o)
{
    while (o->idle != NULL) {
        struct h1_conn *c = o->idle;
        idle_unlink(c);
        conn_close(c);
    }
    svc__addr_deinit(&o->addr); /* a resolving thread's answer then goes nowhere */
    svc__tls_deinit(&o->tls_ctx);
    free(o->ca_file);
    free(o);
}

/* Sets *out to the origin of authority[0..len) ("host[:port]") over TLS or not, with the CA
 * file ca (NULL: the system's), made on first use. Returns SVC_OK, SVC_EINVAL (not a valid
 * authority, or a CA file that cannot be loaded) or SVC_ENOMEM. */
static int origin_get(struct svc__h1 *h, int tls, const char *authority, size_t len, const char *ca,
                      struct h1_origin **out)
{
    static const unsigned char alpn[] = "\x08http/1.1";
    struct h1_origin *o;
    int rc = SVC_ENOMEM;

    if (!tls)
        ca = NULL; /* no certificate to check */
    for (o = h->origins; o != NULL; o = o->next)
        if (o->tls == (unsigned)tls && strncasecmp(o->authority, authority, len) == 0 &&
            o->authority[len] == '\0' &&
            (o->ca_file == NULL ? ca == NULL : ca != NULL && strcmp(o->ca_file, ca) == 0)) {
            *out = o;
            return SVC_OK;
        }
    if ((o = calloc(1, sizeof(*o) + len + 1)) == NULL)
        return SVC_ENOMEM;
    o->h = h;
    o->tls = tls != 0;
    memcpy(o->authority, authority, len);
    if (svc__addr_init(&o->addr, h->loop, authority, len, tls ? 443 : 80, on_addr, o) != SVC_OK) {
        free(o);
        return SVC_EINVAL;
    }
    if ((ca != NULL && (o->ca_file = strdup(ca)) == NULL) ||
        (tls &&
         (rc = svc__tls_init(&o->tls_ctx, o->authority, ca, alpn, sizeof(alpn) - 1)) != SVC_OK)) {
        origin_free(o);
        return rc;
    }
    o->next = h->origins;
    h->origins = o;
    *out = o;
    return SVC_OK;
}

/* ---- the public side (fetch_h1.h) ---- */

/* The length of url's scheme and "://" when this client can serve it (http:// or https://),
 * else 0. */
static size_t scheme_len(const char *url)
{
    if (strncasecmp(url, "http://", 7) == 0)
        return 7;
    if (strncasecmp(url, "https://", 8) == 0)
        return 8;
    return 0;
}

int svc__h1_takes(const struct svc_fetch_req *req)
{
    size_t sl = req->url != NULL ? scheme_len(req->url) : 0;

    if (sl == 0 || (req->proxy != NULL && req->proxy[0] != '\0'))
        return 0;
    /* http:// unless HTTP/2 is asked for; https:// when HTTP/2 is refused (else fetch_h2.c
     * learns from ALPN whether the origin speaks it, and sends it here if not) */
    if (sl == 7 ? req->http == SVC_FETCH_HTTP_2_PRIOR : req->http != SVC_FETCH_HTTP_1)
        return 0;
    return svc__addr_authority_len(req->url + sl) > 0;
}

/* Whether the header line s is one the caller may send: no line break (it would split the
 * head), and not a framing header (this client writes Content-Length itself). An empty value
 * drops the line, as in curl. */
static int header_wanted(const char *s, int *bad)
{
    const char *colon = strchr(s, ':'), *v;

    if (strpbrk(s, "\r\n") != NULL || colon == NULL || colon == s) {
        *bad = 1;
        return 0;
    }
    for (v = colon + 1; *v == ' ' || *v == '\t'; v++)
        ;
    if (*v == '\0')
        return 0;
    return strncasecmp(s, "Content-Length:", 15) != 0 &&
           strncasecmp(s, "Transfer-Encoding:", 18) != 0;
}

/* Appends the n bytes of s at *p. */
static void put(char **p, const char *s, size_t n)
{
    memcpy(*p, s, n);
    *p += n;
}

/* The request's bytes: request line, Host (unless the caller gives one, as in curl), the
 * caller's headers, Content-Length, body. */
static int build_request(struct h1_fetch *f, const struct svc_fetch_req *req, const char *target,
                         size_t target_len)
{
    const char *method = req->method != NULL ? req->method : req->body != NULL ? "POST" : "GET";
    const char *auth = f->o->authority;
    char cl[48] = "";
    size_t n;
    int bad = 0, own_host = 1;
    char *p;

    if (strpbrk(method, " \r\n") != NULL || method[0] == '\0')
        return SVC_EINVAL;
    for (size_t i = 0; i < target_len; i++)
        if ((unsigned char)target[i] <= 0x20 || target[i] == 0x7f)
            return SVC_EINVAL;
    if (req->body != NULL)
        snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n", req->body_len);
    for (const char *const *h = req->headers; h != NULL && *h != NULL; h++)
        if (strncasecmp(*h, "Host:", 5) == 0 && header_wanted(*h, &bad))
            own_host = 0;
    /* "M T HTTP/1.1\r\n" ["Host: A\r\n"] headers cl "\r\n" body */
    n = strlen(method) + 1 + target_len + 11 + (own_host ? 6 + strlen(auth) + 2 : 0) + strlen(cl) +
        2 + (req->body != NULL ? req->body_len : 0);
    for (const char *const *h = req->headers; h != NULL && *h != NULL; h++)
        if (header_wanted(*h, &bad))
            n += strlen(*h) + 2;
    if (bad)
        return SVC_EINVAL;
    if ((p = f->req = malloc(n)) == NULL)
        return SVC_ENOMEM;
    put(&p, method, strlen(method));
    put(&p, " ", 1);
    put(&p, target, target_len);
    put(&p, " HTTP/1.1\r\n", 11);
    if (own_host) {
        put(&p, "Host: ", 6);
        put(&p, auth, strlen(auth));
        put(&p, "\r\n", 2);
    }
    for (const char *const *h = req->headers; h != NULL && *h != NULL; h++) {
        if (header_wanted(*h, &bad)) {
            put(&p, *h, strlen(*h));
            put(&p, "\r\n", 2);
        }
    }
    put(&p, cl, strlen(cl));
    put(&p, "\r\n", 2);
    if (req->body != NULL)
        put(&p, req->body, req->body_len);
    f->req_len = n;
    f->head_req = strcmp(method, "HEAD") == 0;
    return SVC_OK;
}

int svc__h1_start(struct svc_fetch **out, struct svc__h1 *h, const struct svc_fetch_req *req,
                  const struct svc_fetch_callbacks *cb, void *ctx)
{
    size_t sl = scheme_len(req->url);
    const char *auth = req->url + sl;
    size_t alen = sl > 0 ? svc__addr_authority_len(auth) : 0;
    const char *target = auth + alen;
    size_t tlen = strcspn(target, "#");
    struct h1_fetch *f;
    uint64_t now = svc_loop_now(h->loop);
    int rc;

    *out = NULL;
    if (alen == 0)
        return SVC_EINVAL;
    if ((f = calloc(1, sizeof(*f))) == NULL)
        return SVC_ENOMEM;
    f->base.kind = SVC__FETCH_H1;
    f->h = h;
    f->cb = *cb;
    f->ud = ctx;
    f->stream = req->stream != 0;
    f->fresh = req->fresh_connection != 0;
    svc__deadlines_init(&f->dl, req);
    svc_buf_init(&f->resp, req->max_response ? req->max_response : SVC__FETCH_DEFAULT_MAX_RESPONSE);
    if ((rc = origin_get(h, sl == 8, auth, alen,
                         req->ca_file != NULL && req->ca_file[0] != '\0' ? req->ca_file : NULL,
                         &f->o)) != SVC_OK) {
        free(f);
        return rc;
    }
    if (tlen == 0 || target[0] != '/') { /* "http://host" or "http://host?q" */
        static const char slash[] = "/";
        if (tlen > 0) {
            free(f);
            return SVC_EINVAL; /* a query without a path: not worth a copy to fix */
        }
        target = slash;
        tlen = 1;
    }
    if ((rc = build_request(f, req, target, tlen)) != SVC_OK ||
        (rc = svc_timer_create(&f->timer, h->loop, on_fetch_timer, f)) != SVC_OK) {
        req_free(f);
        free(f);
        return rc;
    }
    if (f->dl.idle_ms > 0) { /* it runs all along, queued too (svc/fetch.h) */
        f->dl.idle_due = now + f->dl.idle_ms;
        timer_arm(f);
    }
    f->state = ST_QUEUED;
    f->queued = 1;
    f->qprev = f->o->tail;
    if (f->o->tail != NULL)
        f->o->tail->qnext = f;
    else
        f->o->head = f;
    f->o->tail = f;
    pump_soon(h);
    h->active++;
    f->next = h->all;
    if (h->all != NULL)
        h->all->prev = f;
    h->all = f;
    *out = &f->base;
    return SVC_OK;
}

void svc__h1_cancel(struct svc_fetch *base)
{
    struct h1_fetch *f = (struct h1_fetch *)base;

    f->cancelled = 1;
    if (f->cb.on_cancel != NULL)
        f->cb.on_cancel(f->ud);
    if (!f->in_cb) /* else freed when its callback returns */
        fetch_free(f);
}

void svc__h1_pause(struct svc_fetch *base, int paused)
{
    struct h1_fetch *f = (struct h1_fetch *)base;

    if (paused) {
        if (f->paused)
            return;
        f->paused = 1;
        f->dl.idle_due = 0; /* our silence, not the upstream's */
        /* Not watched while paused. EPOLL_CTL_MOD on a registered descriptor fails only for
         * want of kernel memory; then the readable events go on and on_conn_io, which does not
         * read while paused, ignores them until the resume. */
        if (f->c != NULL && f->state != ST_SEND)
            (void)conn_watch(f->c, 0);
    } else {
        if (!f->paused)
            return;
        f->paused = 0;
        if (f->dl.idle_ms > 0)
            f->dl.idle_due = svc_loop_now(f->h->loop) + f->dl.idle_ms;
        /* The held bytes and any read behind them are delivered from the timer, outside the
         * caller's stack (svc/fetch.h allows either). */
        f->kick = f->c != NULL && f->state != ST_SEND;
    }
    timer_arm(f);
}

void svc__h1_headers_each(struct svc_fetch *base, svc_fetch_header_cb cb, void *ctx)
{
    struct h1_fetch *f = (struct h1_fetch *)base;

    for (unsigned i = 0; i < f->nfields; i++)
        cb(ctx, f->fields[i].name, f->fields[i].value);
}

long svc__h1_active(const struct svc__h1 *h)
{
    return h != NULL ? h->active : 0;
}

int svc__h1_create(struct svc__h1 **out, struct svc_loop *loop, long max_host)
{
    struct svc__h1 *h = calloc(1, sizeof(*h));

    *out = NULL;
    if (h == NULL)
        return SVC_ENOMEM;
    h->loop = loop;
    h->max_host = max_host > 0 ? max_host : 0;
    if (svc_timer_create(&h->pump, loop, on_pump, h) != SVC_OK) {
        free(h);
        return SVC_ENOMEM;
    }
    *out = h;
    return SVC_OK;
}

void svc__h1_destroy(struct svc__h1 **hp)
{
    struct svc__h1 *h = hp != NULL ? *hp : NULL;

    if (h == NULL)
        return;
    while (h->all != NULL) {
        struct h1_fetch *f = h->all;
        if (!f->cancelled && f->cb.on_cancel != NULL)
            f->cb.on_cancel(f->ud);
        fetch_free(f);
    }
    while (h->origins != NULL) {
        struct h1_origin *o = h->origins;

        h->origins = o->next;
        origin_free(o);
    }
    svc_timer_destroy(&h->pump);
    free(h);
    *hp = NULL;
}
