/*
 * The HTTP/2 client of svc_fetch (fetch_h2.h, docs/decisions.md 61): the chat and proxy
 * upstream over https:// (ALPN h2) and over http:// with prior knowledge (h2c).
 *
 * On the loop like fetch_h1.c. nghttp2 does the framing, HPACK and flow control; OpenSSL the
 * TLS, on a non-blocking socket. Per origin (scheme, authority, CA file, version policy) a list
 * of connections, each carrying up to SVC__H2_STREAMS_PER_CONN streams (fewer if the server
 * says so), and one FIFO of transfers waiting for a stream. The pump fills the ready
 * connections first and opens a new one only for what the connections being set up cannot take:
 * a burst of 10,000 streams opens about 100 connections, not one per stream.
 *
 * Lifetimes: a transfer (struct h2_fetch) waits in its origin's queue, then owns a stream on a
 * connection (struct h2_conn) until it ends. Nothing is freed inside nghttp2's callbacks but
 * transfers: a connection that fails is marked dead and closed by reap() once the call into
 * nghttp2 returned, and output is written after it (nghttp2 forbids sending from its callbacks).
 * Callbacks run from I/O and timer events, never inside svc__h2_start.
 *
 * Flow control: a stream's window is taken back (WINDOW_UPDATE) only as the reader takes the
 * bytes, so a paused stream holds at most one window (64 KiB) and its server stops sending; the
 * connection's window is taken back at once, so one slow reader never stalls the others.
 *
 * A stream refused before the server processed it (REFUSED_STREAM, or above the last stream id
 * of a GOAWAY) is sent again, on this or a new connection. A stream lost with its connection
 * fails: the request may have reached the server, and the caller knows whether to send it again
 * (the meter does, for a stream that had not started).
 */
#include "fetch_h2.h"

#include <errno.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
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
#include "svc/buf.h"
#include "svc/loop.h"
#include "svc/util.h"

#define H2_READ_CHUNK 16384             /* one TLS record */
#define H2_CONN_WINDOW (16u << 20)      /* the connection's receive window */
#define H2_MAX_RETRIES 3                /* sends of a refused stream, after the first */
#define H2_IDLE_CONNS 4                 /* connections without a stream kept per origin */
#define H2_H1_ORIGIN_MS (10 * 60000)    /* an origin that chose HTTP/1.1 is left this long */
#define H2_MAX_HEADER_BYTES (64u << 10) /* the response's headers, as the HTTP/1.1 client */

enum h2_conn_state {
    C_CONNECTING, /* connect() in progress */
    C_TLS,        /* TLS handshake */
    C_READY,      /* HTTP/2: streams may be opened */
    C_DEAD,       /* failed or finished: reap() closes it */
};

struct h2_origin;
struct h2_fetch;

struct h2_conn {
    struct h2_conn *prev, *next; /* in its origin's list */
    struct h2_origin *o;
    struct svc_io *io;
    int fd;
    uint32_t events;  /* what io watches */
    uint64_t started; /* loop ms of the connect() */
    SSL *ssl;         /* NULL for h2c */
    nghttp2_session *ng;
    struct h2_fetch *streams; /* the transfers with a stream here */
    long nstreams;
    const uint8_t *out; /* from nghttp2_session_mem_send, not written yet */
    size_t out_len;
    unsigned char state;
    unsigned goaway : 1;    /* no new streams (GOAWAY received, ids exhausted) */
    unsigned settings : 1;  /* the server's SETTINGS arrived: its stream limit is known */
    unsigned in_recv : 1;   /* inside nghttp2_session_mem_recv: no sending, no freeing */
    unsigned tls_write : 1; /* TLS wants the socket writable to go on reading */
    char why[256];          /* why it died, for the transfers it takes along */
};

struct h2_origin {
    struct h2_origin *next;
    struct svc__h2 *h;
    struct h2_conn *conns;
    long nconnecting;             /* connections being set up (conn_pending) */
    struct h2_fetch *head, *tail; /* waiting for a stream, oldest first */
    long nqueued;
    struct svc__tls tls_ctx; /* TLS only */
    uint64_t h1_until; /* loop ms: ALPN chose HTTP/1.1, the HTTP/1.1 client has it until then */
    struct svc__addr addr;
    unsigned tls : 1;
    unsigned char http; /* svc_fetch_http_e */
    char *ca_file;      /* NULL: the system's CAs */
    char authority[];   /* "host[:port]" as in the URL */
};

struct h2_fetch {
    struct svc_fetch base; /* first: the public handle */
    struct svc__h2 *h;
    struct h2_origin *o;
    struct h2_conn *c;              /* while it has a stream */
    struct h2_fetch *prev, *next;   /* every transfer, for svc__h2_destroy */
    struct h2_fetch *qprev, *qnext; /* in o's queue */
    struct h2_fetch *sprev, *snext; /* in c's streams */
    int32_t id;
    struct svc_fetch_callbacks cb;
    void *ud;
    struct svc_fetch *inner; /* handed to the HTTP/1.1 client (the origin answered HTTP/1.1) */
    /* The request, kept until the first byte of the answer (a refused stream goes again). */
    char *url; /* also the :path, from path_off */
    size_t path_off;
    char *method;
    const char **lines; /* the caller's header lines, NULL-terminated, one block with their text */
    size_t nlines;
    char *body;
    size_t body_len, body_off;
    int has_body;
    size_t max_response;
    struct svc_timer *timer;  /* the deadlines, and kick */
    struct svc__deadlines dl; /* connect (until the stream opens), whole transfer, idle */
    struct svc_buf resp;      /* buffered mode: the body */
    struct svc_buf hold;      /* stream mode: bytes the reader has not taken (paused) */
    struct svc_buf fields;    /* the response's headers: name NUL value NUL ... */
    long status;
    int retries;
    unsigned queued : 1, stream : 1, head_req : 1, got_head : 1, paused : 1, cancelled : 1,
        in_cb : 1, kick : 1, complete : 1;
};

struct svc__h2 {
    struct svc_loop *loop;
    struct svc__h2_fallback fb;
    long active;
    struct h2_origin *origins; /* a handful: the upstreams */
    struct h2_fetch *all;
    struct svc_timer *pump; /* streams for waiting transfers and dead connections reaped, outside
                             * any callback */
    nghttp2_session_callbacks *cbs;
    nghttp2_option *opt;
};

static void origin_pump(struct h2_origin *o);
static void conn_flush(struct h2_conn *c);
static void conn_dead(struct h2_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void on_conn_io(void *ctx, struct svc_io *io, int fd, uint32_t events);

/* Whether c is still being set up: connecting, in the TLS handshake, or waiting for the
 * server's SETTINGS. */
static int conn_pending(const struct h2_conn *c)
{
    return c->state == C_CONNECTING || c->state == C_TLS || (c->state == C_READY && !c->settings);
}

static void pump_soon(struct svc__h2 *h)
{
    if (svc_timer_start(h->pump, 0) != SVC_OK)
        svc_timer_stop(h->pump); /* a transfer's own timeout ends its wait */
}

/* ---- transfers: ends ---- */

static void queue_remove(struct h2_fetch *f)
{
    struct h2_origin *o = f->o;

    if (!f->queued)
        return;
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
    o->nqueued--;
}

static void queue_add(struct h2_fetch *f, int first)
{
    struct h2_origin *o = f->o;

    f->queued = 1;
    o->nqueued++;
    if (first) {
        f->qprev = NULL;
        f->qnext = o->head;
        if (o->head != NULL)
            o->head->qprev = f;
        else
            o->tail = f;
        o->head = f;
    } else {
        f->qnext = NULL;
        f->qprev = o->tail;
        if (o->tail != NULL)
            o->tail->qnext = f;
        else
            o->head = f;
        o->tail = f;
    }
    pump_soon(f->h);
}

/* Takes f off its stream; rst: reset the stream if it is still open (the server stops). */
static void detach(struct h2_fetch *f, int rst)
{
    struct h2_conn *c = f->c;

    if (c == NULL)
        return;
    if (c->ng != NULL && f->id > 0) {
        nghttp2_session_set_stream_user_data(c->ng, f->id, NULL);
        if (rst && nghttp2_session_find_stream(c->ng, f->id) != NULL &&
            nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, f->id, NGHTTP2_CANCEL) == 0)
            conn_flush(c);
    }
    if (f->sprev != NULL)
        f->sprev->snext = f->snext;
    else
        c->streams = f->snext;
    if (f->snext != NULL)
        f->snext->sprev = f->sprev;
    f->sprev = f->snext = NULL;
    c->nstreams--;
    f->c = NULL;
    f->id = 0;
    pump_soon(f->h); /* room for a waiting transfer, or an idle connection to close */
}

static void req_free(struct h2_fetch *f)
{
    if (f->lines != NULL) { /* they hold the API key */
        for (size_t i = 0; i < f->nlines; i++)
            svc_util_wipe((char *)f->lines[i], strlen(f->lines[i]));
        free(f->lines);
        f->lines = NULL;
    }
    free(f->body);
    f->body = NULL;
}

static void fetch_free(struct h2_fetch *f)
{
    struct svc__h2 *h = f->h;

    svc_timer_destroy(&f->timer);
    queue_remove(f);
    detach(f, 1);
    if (f->inner != NULL)
        h->fb.cancel(&f->inner);
    req_free(f);
    free(f->url);
    free(f->method);
    svc_buf_deinit(&f->resp);
    svc_buf_deinit(&f->hold);
    svc_buf_deinit(&f->fields);
    if (f->prev != NULL)
        f->prev->next = f->next;
    else
        h->all = f->next;
    if (f->next != NULL)
        f->next->prev = f->prev;
    h->active--;
    free(f);
}

/* Ends f with err (not SVC_OK) and frees it. */
static void fail(struct h2_fetch *f, int err, const char *msg)
{
    queue_remove(f);
    detach(f, 1);
    if (!f->cancelled && f->cb.on_done != NULL) {
        f->in_cb = 1;
        f->cb.on_done(f->ud, err, &f->base, f->status, f->stream ? NULL : "", 0, msg);
    }
    fetch_free(f);
}

/* The whole response arrived and the reader has it: on_done runs, f is freed. */
static void finish(struct h2_fetch *f)
{
    detach(f, 0);
    if (!f->cancelled && f->cb.on_done != NULL) {
        f->in_cb = 1;
        f->cb.on_done(f->ud, SVC_OK, &f->base, f->status,
                      f->stream ? NULL : (f->resp.data != NULL ? f->resp.data : ""),
                      f->stream ? 0 : f->resp.len, NULL);
    }
    fetch_free(f);
}

/* A stream the server did not process goes again, first in line. */
static int retry(struct h2_fetch *f)
{
    if (f->got_head || f->retries >= H2_MAX_RETRIES || f->lines == NULL)
        return 0;
    detach(f, 0);
    f->retries++;
    svc_buf_reset(&f->fields);
    f->status = 0;
    f->body_off = 0;
    queue_add(f, 1);
    return 1;
}

/* ---- deadlines ---- */

static void timer_arm(struct h2_fetch *f)
{
    svc__deadlines_arm(&f->dl, f->timer, svc_loop_now(f->h->loop), f->kick);
}

static int deliver_held(struct h2_fetch *f);

static void on_fetch_timer(void *ctx, struct svc_timer *t)
{
    struct h2_fetch *f = ctx;
    uint64_t now = svc_loop_now(f->h->loop);
    char msg[200];

    (void)t;
    if (f->kick) { /* resumed: deliver what was held */
        f->kick = 0;
        if (!f->paused && !deliver_held(f))
            return;
    }
    if (svc__deadlines_passed(&f->dl, now, f->o->authority, msg, sizeof(msg)) == SVC_OK) {
        timer_arm(f);
        return;
    }
    if (f->dl.connect_due != 0 && now >= f->dl.connect_due)
        /* the connections being set up as long are given up too: waiting ones would wait on */
        for (struct h2_conn *c = f->o->conns; c != NULL; c = c->next)
            if ((c->state == C_CONNECTING || c->state == C_TLS) &&
                now - c->started >= f->dl.connect_ms)
                conn_dead(c, "%s", msg);
    fail(f, SVC_ETIMEDOUT, msg);
}

/* ---- the response ---- */

/* Gives the reader n bytes of f's stream. Returns 1 when taken (the stream's window grows back
 * by n), 0 when they are held (paused) or f is gone. */
static int deliver(struct h2_fetch *f, const uint8_t *data, size_t n)
{
    int rc;

    if (!f->stream) {
        if (svc_buf_append(&f->resp, data, n) != SVC_OK) {
            char msg[96];
            snprintf(msg, sizeof(msg), "the response is larger than %zu bytes", f->resp.max);
            fail(f, SVC_ETOOLARGE, msg);
            return 0;
        }
        return 1;
    }
    if (f->paused || f->hold.len > 0) {
        if (svc_buf_append(&f->hold, data, n) != SVC_OK) { /* beyond one window: cannot be */
            fail(f, SVC_EUNAVAIL, "the upstream sent past its flow-control window");
            return 0;
        }
        return 0;
    }
    f->in_cb = 1;
    rc = f->cb.on_data != NULL ? f->cb.on_data(f->ud, &f->base, f->status, (const char *)data, n)
                               : 0;
    f->in_cb = 0;
    if (f->cancelled) {
        fetch_free(f);
        return 0;
    }
    if (rc == SVC_FETCH_PAUSE) {
        if (svc_buf_append(&f->hold, data, n) != SVC_OK) {
            fail(f, SVC_ENOMEM, "out of memory for the held response");
            return 0;
        }
        svc__h2_pause(&f->base, 1);
        return 0;
    }
    if (rc != 0) {
        fail(f, rc, "the reader refused the response");
        return 0;
    }
    return 1;
}

/* Resumed: hands the held bytes over. Returns 1 when f goes on, 0 when it is paused or gone. */
static int deliver_held(struct h2_fetch *f)
{
    size_t n = f->hold.len;
    int rc;

    if (n > 0) {
        f->in_cb = 1;
        rc = f->cb.on_data != NULL ? f->cb.on_data(f->ud, &f->base, f->status, f->hold.data, n) : 0;
        f->in_cb = 0;
        if (f->cancelled) {
            fetch_free(f);
            return 0;
        }
        if (rc == SVC_FETCH_PAUSE) {
            svc__h2_pause(&f->base, 1);
            return 0;
        }
        if (rc != 0) {
            fail(f, rc, "the reader refused the response");
            return 0;
        }
        svc_buf_reset(&f->hold);
        if (f->c != NULL && f->c->ng != NULL &&
            nghttp2_session_consume_stream(f->c->ng, f->id, n) == 0)
            conn_flush(f->c);
    }
    if (f->complete) {
        finish(f);
        return 0;
    }
    return 1;
}

static struct h2_fetch *stream_fetch(nghttp2_session *ng, int32_t id)
{
    return nghttp2_session_get_stream_user_data(ng, id);
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data)
{
    struct h2_fetch *f = stream_fetch(ng, frame->hd.stream_id);

    (void)flags;
    (void)user_data;
    if (f == NULL || frame->hd.type != NGHTTP2_HEADERS || f->got_head)
        return 0; /* trailers: not kept (svc/fetch.h: the response's own headers) */
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        long st = 0;
        for (size_t i = 0; i < valuelen && i < 3; i++)
            st = st * 10 + (value[i] - '0');
        f->status = st;
        svc_buf_reset(&f->fields); /* a 1xx's headers are not the answer's */
        return 0;
    }
    if (namelen > 0 && name[0] == ':')
        return 0;
    if (svc_buf_append(&f->fields, name, namelen) != SVC_OK ||
        svc_buf_append(&f->fields, "", 1) != SVC_OK ||
        svc_buf_append(&f->fields, value, valuelen) != SVC_OK ||
        svc_buf_append(&f->fields, "", 1) != SVC_OK)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets this stream only */
    return 0;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data)
{
    struct h2_conn *c = user_data;
    struct h2_fetch *f;

    if (frame->hd.type == NGHTTP2_SETTINGS && !(frame->hd.flags & NGHTTP2_FLAG_ACK)) {
        if (conn_pending(c))
            c->o->nconnecting--;
        c->settings = 1; /* streams may open now, as many as it allows */
        pump_soon(c->o->h);
        return 0;
    }
    if (frame->hd.type == NGHTTP2_GOAWAY) {
        /* nghttp2 closes the streams past last_stream_id (REFUSED_STREAM: on_stream_close sends
         * them again); the others end here; no new one starts on this connection */
        c->goaway = 1;
        pump_soon(c->o->h);
        return 0;
    }
    if (frame->hd.type != NGHTTP2_HEADERS || (f = stream_fetch(ng, frame->hd.stream_id)) == NULL ||
        f->got_head)
        return 0;
    if (f->status >= 200) {
        f->got_head = 1;
        req_free(f); /* nothing is sent again after the answer's first byte */
        if (f->dl.idle_ms > 0 && !f->paused) {
            f->dl.idle_due = svc_loop_now(f->h->loop) + f->dl.idle_ms;
            timer_arm(f);
        }
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *user_data)
{
    struct h2_fetch *f = stream_fetch(ng, id);

    (void)flags;
    (void)user_data;
    (void)nghttp2_session_consume_connection(ng, len); /* the others' window stays open */
    if (f == NULL)
        return 0; /* cancelled: its reset is on the way */
    if (f->dl.idle_ms > 0 && !f->paused) {
        f->dl.idle_due = svc_loop_now(f->h->loop) + f->dl.idle_ms;
        timer_arm(f);
    }
    if (deliver(f, data, len))
        (void)nghttp2_session_consume_stream(ng, id, len);
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *user_data)
{
    struct h2_conn *c = user_data;
    struct h2_fetch *f = stream_fetch(ng, id);
    char msg[200];

    if (f == NULL)
        return 0;
    if (code == NGHTTP2_NO_ERROR && f->got_head) {
        detach(f, 0);
        f->complete = 1;
        if (f->hold.len == 0 && !f->paused)
            finish(f);
        /* else held bytes (paused): the end follows them at the resume */
        return 0;
    }
    /* Not processed by the server (RFC 9113 8.7: REFUSED_STREAM, which nghttp2 also gives the
     * streams past a GOAWAY's last id): safe to send again. Any other reset may come after the
     * server acted on the request, so the caller decides. */
    if (code == NGHTTP2_REFUSED_STREAM && retry(f))
        return 0;
    snprintf(msg, sizeof(msg), "%s reset the stream (%s)", c->o->authority,
             nghttp2_http2_strerror(code));
    fail(f, SVC_EUNAVAIL, msg);
    return 0;
}

static ssize_t read_body(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *user_data)
{
    struct h2_fetch *f = stream_fetch(ng, id); /* NULL once cancelled (detach) */
    size_t n;

    (void)source;
    (void)user_data;
    if (f == NULL || f->body == NULL) { /* gone, or answered before its body was sent */
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        return 0;
    }
    n = f->body_len - f->body_off;
    if (n > length)
        n = length;
    memcpy(buf, f->body + f->body_off, n);
    f->body_off += n;
    if (f->body_off == f->body_len)
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

/* ---- connections ---- */

static int conn_watch(struct h2_conn *c, uint32_t events)
{
    if (c->io == NULL || c->events == events)
        return SVC_OK;
    if (svc_io_modify(c->io, events) != SVC_OK)
        return SVC_EIO;
    c->events = events;
    return SVC_OK;
}

/* Marks c failed (the printf-style message says why); reap() closes it and fails its
 * transfers. */
static void conn_dead(struct h2_conn *c, const char *fmt, ...)
{
    va_list ap;

    if (c->state == C_DEAD)
        return;
    if (conn_pending(c))
        c->o->nconnecting--;
    c->state = C_DEAD;
    va_start(ap, fmt);
    vsnprintf(c->why, sizeof(c->why), fmt, ap);
    va_end(ap);
    (void)conn_watch(c, 0); /* level-triggered events would come until reap() closes it */
    pump_soon(c->o->h);
}

static void conn_free(struct h2_conn *c)
{
    struct h2_origin *o = c->o;

    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        o->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    if (conn_pending(c))
        o->nconnecting--;
    if (c->ng != NULL)
        nghttp2_session_del(c->ng);
    svc__tls_free(c->ssl);
    if (c->io != NULL)
        svc_io_close(&c->io);
    else if (c->fd >= 0)
        close(c->fd);
    free(c);
}

/* Marks c failed by a read or write error err (errno; EPROTO: TLS, svc__tls_why says why). */
static void io_error(struct h2_conn *c, int err)
{
    char buf[160];

    if (err == EPROTO && c->ssl != NULL)
        svc__tls_why(c->ssl, buf, sizeof(buf));
    else
        snprintf(buf, sizeof(buf), "%s", strerror(err));
    conn_dead(c, "connection to %s: %s", c->o->authority, buf);
}

/* Reads what the socket has into nghttp2. Sets c dead on an error or the server's close. */
static void conn_read(struct h2_conn *c)
{
    uint8_t buf[H2_READ_CHUNK];

    c->tls_write = 0;
    while (c->state == C_READY) {
        ssize_t n, used;
        int want_write = 0;

        n = c->ssl != NULL ? svc__tls_recv(c->ssl, buf, sizeof(buf), &want_write)
                           : recv(c->fd, buf, sizeof(buf), 0);
        if (n == 0) {
            conn_dead(c, "%s closed the connection", c->o->authority);
            return;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                c->tls_write = want_write != 0;
                return;
            }
            if (errno == EINTR)
                continue;
            io_error(c, errno);
            return;
        }
        c->in_recv = 1;
        used = nghttp2_session_mem_recv(c->ng, buf, (size_t)n);
        c->in_recv = 0;
        if (used < 0) {
            conn_dead(c, "HTTP/2 with %s: %s", c->o->authority, nghttp2_strerror((int)used));
            return;
        }
    }
}

/* Writes what nghttp2 has to send. Inside nghttp2's callbacks it only notes that (reap). */
static void conn_flush(struct h2_conn *c)
{
    int want_read = 0; /* TLS must read a record before it writes: readable, not writable */

    if (c->state != C_READY || c->in_recv) {
        if (c->in_recv)
            pump_soon(c->o->h); /* reap() flushes every ready connection */
        return;
    }
    for (;;) {
        ssize_t n;

        if (c->out_len == 0) {
            n = nghttp2_session_mem_send(c->ng, &c->out);
            if (n < 0) {
                conn_dead(c, "HTTP/2 with %s: %s", c->o->authority, nghttp2_strerror((int)n));
                return;
            }
            if (n == 0)
                break;
            c->out_len = (size_t)n;
        }
        n = c->ssl != NULL ? svc__tls_send(c->ssl, c->out, c->out_len, &want_read)
                           : send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno == EINTR)
                continue;
            io_error(c, errno);
            return;
        }
        c->out += n;
        c->out_len -= (size_t)n;
    }
    if (conn_watch(c, EPOLLIN | ((c->out_len > 0 && !want_read) || c->tls_write ? EPOLLOUT : 0)) !=
        SVC_OK)
        conn_dead(c, "cannot watch the upstream connection");
    else if (!nghttp2_session_want_read(c->ng) && !nghttp2_session_want_write(c->ng) &&
             c->out_len == 0)
        conn_dead(c, "the connection ended"); /* GOAWAY done: nothing more to come */
}

/* The connection speaks HTTP/2 now: a session, our SETTINGS, the waiting transfers. */
static void conn_ready(struct h2_conn *c)
{
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 0}, /* the server opens none */
    };
    struct svc__h2 *h = c->o->h;

    if (nghttp2_session_client_new2(&c->ng, h->cbs, c, h->opt) != 0) {
        conn_dead(c, "out of memory for an HTTP/2 session");
        return;
    }
    if (nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) != 0 ||
        nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW) != 0) {
        conn_dead(c, "cannot set up the HTTP/2 session");
        return;
    }
    c->state = C_READY; /* still pending until the server's SETTINGS */
    conn_flush(c);
    origin_pump(c->o);
}

static void fall_back_queue(struct h2_origin *o);

/* The TLS handshake, a step as far as the socket allows. */
static void conn_handshake(struct h2_conn *c)
{
    const unsigned char *alpn = NULL;
    unsigned alpn_len = 0;
    uint32_t events = 0;
    char why[160];
    int rc = svc__tls_handshake(c->ssl, &events);

    if (rc == 0) {
        if (conn_watch(c, events) != SVC_OK)
            conn_dead(c, "cannot watch the upstream connection");
        return;
    }
    if (rc < 0) {
        svc__tls_why(c->ssl, why, sizeof(why));
        conn_dead(c, "TLS handshake with %s: %s", c->o->authority, why);
        return;
    }
    SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
    if (alpn_len == 2 && memcmp(alpn, "h2", 2) == 0) {
        conn_ready(c);
        return;
    }
    if (c->o->http == SVC_FETCH_HTTP_2_PRIOR) {
        conn_dead(c, "%s does not offer HTTP/2 (ALPN)", c->o->authority);
        return;
    }
    /* HTTP/1.1 it is: the HTTP/1.1 client serves this origin (keep-alive, TLS) for a while */
    c->o->h1_until = svc_loop_now(c->o->h->loop) + H2_H1_ORIGIN_MS;
    conn_dead(c, "the server chose HTTP/1.1");
    fall_back_queue(c->o);
}

static void on_conn_io(void *ctx, struct svc_io *io, int fd, uint32_t events)
{
    struct h2_conn *c = ctx;
    int err = 0;
    socklen_t el = sizeof(err);

    (void)io;
    (void)fd;
    switch (c->state) {
    case C_CONNECTING:
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
            err = errno;
        if (err != 0) {
            conn_dead(c, "cannot connect to %s: %s", c->o->authority, strerror(err));
            break;
        }
        if (c->ssl == NULL) {
            conn_ready(c);
            break;
        }
        c->state = C_TLS;
        conn_handshake(c);
        break;
    case C_TLS:
        conn_handshake(c);
        break;
    case C_READY:
        if (events & (EPOLLIN | EPOLLERR | EPOLLHUP) || c->tls_write)
            conn_read(c);
        conn_flush(c);
        break;
    default:
        break;
    }
    if (c->state == C_DEAD || c->goaway)
        pump_soon(c->o->h);
}

/* A new connection to o; NULL with msg set when it cannot even start. */
static struct h2_conn *conn_open(struct h2_origin *o, char *msg, size_t msglen)
{
    struct h2_conn *c = calloc(1, sizeof(*c));
    int one = 1;

    if (c == NULL) {
        snprintf(msg, msglen, "out of memory for a connection to %s", o->authority);
        return NULL;
    }
    c->o = o;
    c->state = C_CONNECTING;
    c->started = svc_loop_now(o->h->loop);
    c->fd = socket(o->addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        snprintf(msg, msglen, "cannot connect to %s: %s", o->authority, strerror(errno));
        goto fail;
    }
    (void)setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&o->addr.ss, o->addr.len) != 0 && errno != EINPROGRESS) {
        snprintf(msg, msglen, "cannot connect to %s: %s", o->authority, strerror(errno));
        goto fail;
    }
    if (o->tls && (c->ssl = svc__tls_conn(&o->tls_ctx, c->fd, o->addr.host,
                                          svc__addr_numeric(&o->addr))) == NULL) {
        snprintf(msg, msglen, "cannot set up TLS for %s", o->authority);
        goto fail;
    }
    c->events = EPOLLOUT; /* writable: connected (or failed) */
    if (svc_io_add(&c->io, o->h->loop, c->fd, c->events, on_conn_io, c) != SVC_OK) {
        snprintf(msg, msglen, "cannot watch a connection to %s", o->authority);
        goto fail;
    }
    c->next = o->conns;
    if (o->conns != NULL)
        o->conns->prev = c;
    o->conns = c;
    o->nconnecting++;
    return c;
fail:
    svc__tls_free(c->ssl);
    if (c->fd >= 0)
        close(c->fd);
    free(c);
    return NULL;
}

/* ---- streams ---- */

/* Streams c may still open. */
static long conn_room(const struct h2_conn *c)
{
    long max = SVC__H2_STREAMS_PER_CONN;
    uint32_t srv;

    if (c->state != C_READY || c->goaway || !c->settings)
        return 0; /* waiting for the server's SETTINGS costs half a round trip once, and no
                   * stream is refused for going past a limit not known yet */
    srv = nghttp2_session_get_remote_settings(c->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    if (srv < (uint32_t)max)
        max = (long)srv;
    return max > c->nstreams ? max - c->nstreams : 0;
}

/* Opens f's stream on c. Returns 1, or 0 when c cannot take one more (f stays queued). */
static int stream_open(struct h2_fetch *f, struct h2_conn *c)
{
    struct h2_origin *o = f->o;
    const char *auth = o->authority, *path = f->url + f->path_off;
    nghttp2_nv *nv;
    nghttp2_data_provider prd;
    size_t n = 0;
    char cl[24];
    int32_t id;

#define NV(nm, nl, vl, vll)                                                                        \
    do {                                                                                           \
        nv[n].name = (uint8_t *)(nm);                                                              \
        nv[n].namelen = (nl);                                                                      \
        nv[n].value = (uint8_t *)(vl);                                                             \
        nv[n].valuelen = (vll);                                                                    \
        nv[n].flags = NGHTTP2_NV_FLAG_NONE;                                                        \
        n++;                                                                                       \
    } while (0)

    if ((nv = malloc((f->nlines + 6) * sizeof(*nv))) == NULL)
        return 0;
    for (size_t i = 0; i < f->nlines; i++) /* a Host line names the authority, as in HTTP/1.1 */
        if (strncasecmp(f->lines[i], "Host:", 5) == 0) {
            auth = f->lines[i] + 5;
            while (*auth == ' ' || *auth == '\t')
                auth++;
        }
    NV(":method", 7, f->method, strlen(f->method));
    NV(":scheme", 7, o->tls ? "https" : "http", o->tls ? 5u : 4u);
    NV(":authority", 10, auth, strlen(auth));
    NV(":path", 5, path, strlen(path));
    for (size_t i = 0; i < f->nlines; i++) {
        const char *line = f->lines[i], *colon = strchr(line, ':'), *v = colon + 1;
        size_t nl = (size_t)(colon - line);

        while (*v == ' ' || *v == '\t')
            v++;
        if (strncasecmp(line, "Host:", 5) == 0)
            continue;
        NV(line, nl, v, strlen(v));
    }
    if (f->has_body) {
        snprintf(cl, sizeof(cl), "%zu", f->body_len);
        NV("content-length", 14, cl, strlen(cl));
    }
#undef NV
    prd.source.ptr = NULL; /* read_body finds f by the stream */
    prd.read_callback = read_body;
    id = nghttp2_submit_request(c->ng, NULL, nv, n, f->has_body ? &prd : NULL, f);
    free(nv);
    if (id < 0) {
        if (id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE)
            c->goaway = 1; /* ids used up: a new connection takes the rest */
        return 0;
    }
    queue_remove(f);
    f->id = id;
    f->c = c;
    f->snext = c->streams;
    if (c->streams != NULL)
        c->streams->sprev = f;
    c->streams = f;
    c->nstreams++;
    f->dl.connect_due = 0;
    timer_arm(f);
    return 1;
}

/* Fails (or, once the origin chose HTTP/1.1, hands over) every transfer waiting in o. */
static void fail_queue(struct h2_origin *o, const char *msg)
{
    if (o->h1_until != 0 && svc_loop_now(o->h->loop) < o->h1_until) {
        fall_back_queue(o);
        return;
    }
    while (o->head != NULL)
        fail(o->head, SVC_EUNAVAIL, msg);
}

/* Streams for the waiting transfers of o: the ready connections first, then as many new ones
 * as the connections being set up cannot take. */
static void origin_pump(struct h2_origin *o)
{
    char msg[200];

    for (struct h2_conn *c = o->conns; c != NULL && o->head != NULL; c = c->next) {
        long room = conn_room(c);
        int opened = 0;

        while (room-- > 0 && o->head != NULL && stream_open(o->head, c))
            opened = 1;
        if (opened)
            conn_flush(c);
    }
    if (o->head == NULL || !svc__addr_ready(&o->addr))
        return; /* done, or on_addr pumps again */
    while (o->nqueued > o->nconnecting * SVC__H2_STREAMS_PER_CONN) {
        if (conn_open(o, msg, sizeof(msg)) == NULL) {
            if (o->nconnecting == 0)
                fail_queue(o, msg);
            return;
        }
    }
}

static void on_addr(void *ctx, const char *errmsg)
{
    struct h2_origin *o = ctx;

    if (errmsg != NULL)
        fail_queue(o, errmsg);
    else
        origin_pump(o);
}

/* Closes what is dead (its transfers fail; when it died before it could carry a stream, the
 * waiting ones too, unless another is being set up), flushes the rest, gives the waiting
 * transfers streams, and then closes the connections that carry none: past H2_IDLE_CONNS, or
 * after a GOAWAY. */
static void origin_reap(struct h2_origin *o)
{
    struct h2_conn *c, *next;
    long idle = 0;
    char msg[256];

    for (c = o->conns; c != NULL; c = next) {
        int never_ready;

        next = c->next;
        if (c->state == C_READY)
            conn_flush(c);
        if (c->state != C_DEAD)
            continue;
        snprintf(msg, sizeof(msg), "%s", c->why);
        while (c->streams != NULL) {
            struct h2_fetch *f = c->streams;
            detach(f, 0);
            fail(f, SVC_EUNAVAIL, msg);
        }
        never_ready = !c->settings;
        conn_free(c);
        if (never_ready && o->nconnecting == 0)
            fail_queue(o, msg); /* the waiting ones would meet the same */
    }
    if (o->head != NULL) {
        origin_pump(o);
        return;
    }
    for (c = o->conns; c != NULL; c = next) {
        next = c->next;
        if (c->state == C_READY && c->settings && c->nstreams == 0 &&
            (c->goaway || ++idle > H2_IDLE_CONNS)) {
            conn_dead(c, "idle");
            conn_free(c);
        }
    }
}

static void on_pump(void *ctx, struct svc_timer *t)
{
    struct svc__h2 *h = ctx;

    (void)t;
    for (struct h2_origin *o = h->origins; o != NULL; o = o->next)
        origin_reap(o);
}

/* ---- handing over to the HTTP/1.1 client ---- */

static int fb_data(void *ctx, struct svc_fetch *inner, long status, const char *data, size_t len)
{
    struct h2_fetch *f = ctx;

    (void)inner;
    return f->cb.on_data != NULL ? f->cb.on_data(f->ud, &f->base, status, data, len) : 0;
}

static void fb_done(void *ctx, int err, struct svc_fetch *inner, long status, const char *body,
                    size_t len, const char *errmsg)
{
    struct h2_fetch *f = ctx;

    (void)inner;
    f->inner = NULL; /* its client frees it after this */
    if (f->cb.on_done != NULL)
        f->cb.on_done(f->ud, err, &f->base, status, body, len, errmsg);
    fetch_free(f);
}

/* Hands f to the HTTP/1.1 client (struct svc__h2_fallback) with the request it was given. */
static void fall_back(struct h2_fetch *f)
{
    static const struct svc_fetch_callbacks cb = {fb_data, fb_done, NULL};
    struct svc_fetch_req req;
    char ca[1] = "";
    int rc;

    memset(&req, 0, sizeof(req));
    req.method = f->method;
    req.url = f->url;
    req.headers = f->lines;
    req.body = f->has_body ? f->body : NULL;
    req.body_len = f->body_len;
    req.connect_timeout_ms = (long)f->dl.connect_ms; /* the request's, or the default */
    req.timeout_ms = (long)f->dl.total_ms;
    req.idle_timeout_ms = (long)f->dl.idle_ms;
    req.max_response = f->max_response;
    req.stream = f->stream;
    req.http = SVC_FETCH_HTTP_AUTO;
    req.ca_file = f->o->ca_file != NULL ? f->o->ca_file : ca;
    queue_remove(f);
    svc_timer_destroy(&f->timer); /* the other client keeps the deadlines now */
    rc = f->h->fb.start(f->h->fb.arg, &f->inner, &req, &cb, f);
    req_free(f);
    if (rc != SVC_OK)
        fail(f, rc, "cannot hand the transfer to the HTTP/1.1 client");
    else if (f->paused)
        f->h->fb.pause(f->inner, 1);
}

static void fall_back_queue(struct h2_origin *o)
{
    while (o->head != NULL)
        fall_back(o->head);
}

/* ---- origins ---- */

/* TLS for o: ALPN h2, and HTTP/1.1 unless HTTP/2 is required. */
static int origin_tls(struct h2_origin *o)
{
    static const unsigned char alpn_auto[] = "\x02h2\x08http/1.1", alpn_h2[] = "\x02h2";

    return o->http == SVC_FETCH_HTTP_2_PRIOR
               ? svc__tls_init(&o->tls_ctx, o->authority, o->ca_file, alpn_h2, sizeof(alpn_h2) - 1)
               : svc__tls_init(&o->tls_ctx, o->authority, o->ca_file, alpn_auto,
                               sizeof(alpn_auto) - 1);
}

static void origin_free(struct h2_origin *o)
{
    while (o->conns != NULL)
        conn_free(o->conns);
    svc__addr_deinit(&o->addr);
    svc__tls_deinit(&o->tls_ctx);
    free(o->ca_file);
    free(o);
}

/* The origin of req ("scheme://authority", CA file, version policy); made on first use when
 * make is set. Returns NULL for none (or SVC_EINVAL/SVC_ENOMEM in *rc). */
static struct h2_origin *origin_find(struct svc__h2 *h, const struct svc_fetch_req *req, int make,
                                     int *rc)
{
    int tls = strncasecmp(req->url, "https://", 8) == 0;
    const char *auth = req->url + (tls ? 8 : 7);
    size_t len = strcspn(auth, "/?#");
    const char *ca = req->ca_file != NULL && req->ca_file[0] != '\0' ? req->ca_file : NULL;
    unsigned char http =
        req->http == SVC_FETCH_HTTP_2_PRIOR ? SVC_FETCH_HTTP_2_PRIOR : SVC_FETCH_HTTP_AUTO;
    struct h2_origin *o;

    *rc = SVC_OK;
    for (o = h->origins; o != NULL; o = o->next)
        if (o->tls == (unsigned)tls && o->http == http &&
            strncasecmp(o->authority, auth, len) == 0 && o->authority[len] == '\0' &&
            (o->ca_file == NULL ? ca == NULL : ca != NULL && strcmp(o->ca_file, ca) == 0))
            return o;
    if (!make)
        return NULL;
    if ((o = calloc(1, sizeof(*o) + len + 1)) == NULL) {
        *rc = SVC_ENOMEM;
        return NULL;
    }
    o->h = h;
    o->tls = tls;
    o->http = http;
    memcpy(o->authority, auth, len);
    if (svc__addr_init(&o->addr, h->loop, auth, len, tls ? 443 : 80, on_addr, o) != SVC_OK) {
        free(o);
        *rc = SVC_EINVAL;
        return NULL;
    }
    if ((ca != NULL && (o->ca_file = strdup(ca)) == NULL) ||
        (tls && (*rc = origin_tls(o)) != SVC_OK)) {
        if (*rc == SVC_OK)
            *rc = SVC_ENOMEM;
        origin_free(o);
        return NULL;
    }
    o->next = h->origins;
    h->origins = o;
    return o;
}

/* ---- the public side (fetch_h2.h) ---- */

int svc__h2_takes(const struct svc__h2 *h, const struct svc_fetch_req *req)
{
    struct h2_origin *o;
    int tls, rc;

    if (h == NULL || req->url == NULL || req->http == SVC_FETCH_HTTP_1 ||
        (req->proxy != NULL && req->proxy[0] != '\0'))
        return SVC__H2_NOT_MINE;
    tls = strncasecmp(req->url, "https://", 8) == 0;
    if (!tls && (req->http != SVC_FETCH_HTTP_2_PRIOR || strncasecmp(req->url, "http://", 7) != 0))
        return SVC__H2_NOT_MINE;
    if (svc__addr_authority_len(req->url + (tls ? 8 : 7)) == 0)
        return SVC__H2_NOT_MINE;
    o = origin_find((struct svc__h2 *)h, req, 0, &rc);
    return o == NULL || o->h1_until == 0 || svc_loop_now(h->loop) >= o->h1_until ? SVC__H2_MINE
                                                                                 : SVC__H2_HTTP1;
}

/* Copies the caller's header lines: no line break, a name, not a framing or connection header
 * (HTTP/2 has none); an empty value drops the line, as in curl. */
static int copy_lines(struct h2_fetch *f, const char *const *headers)
{
    static const char *const drop[] = {
        "Content-Length:",   "Transfer-Encoding:", "Connection:", "Keep-Alive:",
        "Proxy-Connection:", "Upgrade:",           "TE:"};
    size_t n = 0, bytes = 0;
    char *p;

    for (const char *const *hp = headers; hp != NULL && *hp != NULL; hp++) {
        const char *s = *hp, *colon = strchr(s, ':'), *v;
        int skip = 0;

        if (strpbrk(s, "\r\n") != NULL || colon == NULL || colon == s)
            return SVC_EINVAL;
        for (v = colon + 1; *v == ' ' || *v == '\t'; v++)
            ;
        for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
            if (strncasecmp(s, drop[i], strlen(drop[i])) == 0)
                skip = 1;
        if (*v == '\0' || skip)
            continue;
        n++;
        bytes += strlen(s) + 1;
    }
    if ((f->lines = malloc((n + 1) * sizeof(*f->lines) + bytes)) == NULL)
        return SVC_ENOMEM;
    p = (char *)(f->lines + n + 1);
    n = 0;
    for (const char *const *hp = headers; hp != NULL && *hp != NULL; hp++) {
        const char *s = *hp, *v = strchr(s, ':') + 1;
        int skip = 0;

        while (*v == ' ' || *v == '\t')
            v++;
        for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
            if (strncasecmp(s, drop[i], strlen(drop[i])) == 0)
                skip = 1;
        if (*v == '\0' || skip)
            continue;
        f->lines[n++] = memcpy(p, s, strlen(s) + 1);
        p += strlen(s) + 1;
    }
    f->lines[n] = NULL;
    f->nlines = n;
    return SVC_OK;
}

int svc__h2_start(struct svc_fetch **out, struct svc__h2 *h, const struct svc_fetch_req *req,
                  const struct svc_fetch_callbacks *cb, void *ctx)
{
    const char *method = req->method != NULL ? req->method : req->body != NULL ? "POST" : "GET";
    int tls = strncasecmp(req->url, "https://", 8) == 0;
    const char *auth = req->url + (tls ? 8 : 7);
    size_t alen = strcspn(auth, "/?#"), off = (size_t)(auth + alen - req->url);
    uint64_t now = svc_loop_now(h->loop);
    struct h2_fetch *f;
    int rc;

    *out = NULL;
    if (method[0] == '\0' || strpbrk(method, " \r\n") != NULL)
        return SVC_EINVAL;
    for (const char *p = req->url + off; *p != '\0' && *p != '#'; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return SVC_EINVAL;
    if ((f = calloc(1, sizeof(*f))) == NULL)
        return SVC_ENOMEM;
    f->base.kind = SVC__FETCH_H2;
    f->h = h;
    f->cb = *cb;
    f->ud = ctx;
    f->stream = req->stream != 0;
    f->head_req = strcmp(method, "HEAD") == 0;
    f->max_response = req->max_response;
    svc__deadlines_init(&f->dl, req);
    svc_buf_init(&f->resp, req->max_response ? req->max_response : SVC__FETCH_DEFAULT_MAX_RESPONSE);
    svc_buf_init(&f->hold, 4u << 20);
    svc_buf_init(&f->fields, H2_MAX_HEADER_BYTES);
    f->o = origin_find(h, req, 1, &rc);
    /* the URL, its path ("/" when it has none) and its fragment cut off */
    if (f->o == NULL || (f->url = malloc(off + 1 + strcspn(req->url + off, "#") + 1)) == NULL ||
        (f->method = strdup(method)) == NULL || (rc = copy_lines(f, req->headers)) != SVC_OK) {
        if (f->o != NULL && rc == SVC_OK)
            rc = SVC_ENOMEM;
        goto fail;
    }
    memcpy(f->url, req->url, off);
    f->path_off = off;
    snprintf(f->url + off, 1 + strcspn(req->url + off, "#") + 1, "%s%.*s",
             req->url[off] == '/' ? "" : "/", (int)strcspn(req->url + off, "#"), req->url + off);
    if (req->body != NULL) {
        f->has_body = 1;
        f->body_len = req->body_len;
        if ((f->body = malloc(req->body_len ? req->body_len : 1)) == NULL) {
            rc = SVC_ENOMEM;
            goto fail;
        }
        memcpy(f->body, req->body, req->body_len);
    }
    if ((rc = svc_timer_create(&f->timer, h->loop, on_fetch_timer, f)) != SVC_OK)
        goto fail;
    f->dl.connect_due = now + f->dl.connect_ms; /* until its stream opens */
    if (f->dl.total_ms > 0)
        f->dl.total_due = now + f->dl.total_ms;
    if (f->dl.idle_ms > 0)
        f->dl.idle_due = now + f->dl.idle_ms;
    timer_arm(f);
    h->active++;
    f->next = h->all;
    if (h->all != NULL)
        h->all->prev = f;
    h->all = f;
    queue_add(f, 0);
    *out = &f->base;
    return SVC_OK;
fail:
    svc_timer_destroy(&f->timer);
    req_free(f);
    free(f->url);
    free(f->method);
    free(f);
    return rc;
}

void svc__h2_cancel(struct svc_fetch *base)
{
    struct h2_fetch *f = (struct h2_fetch *)base;

    f->cancelled = 1;
    if (f->cb.on_cancel != NULL)
        f->cb.on_cancel(f->ud);
    if (!f->in_cb) /* else freed when its callback returns */
        fetch_free(f);
}

void svc__h2_pause(struct svc_fetch *base, int paused)
{
    struct h2_fetch *f = (struct h2_fetch *)base;

    if (f->inner != NULL) {
        f->paused = paused != 0;
        f->h->fb.pause(f->inner, paused);
        return;
    }
    if (paused) {
        if (f->paused)
            return;
        f->paused = 1;
        f->dl.idle_due = 0; /* our silence, not the upstream's */
    } else {
        if (!f->paused)
            return;
        f->paused = 0;
        if (f->dl.idle_ms > 0)
            f->dl.idle_due = svc_loop_now(f->h->loop) + f->dl.idle_ms;
        /* the held bytes are delivered from the timer, outside the caller's stack */
        f->kick = f->hold.len > 0 || f->complete;
    }
    timer_arm(f);
}

void svc__h2_headers_each(struct svc_fetch *base, svc_fetch_header_cb cb, void *ctx)
{
    struct h2_fetch *f = (struct h2_fetch *)base;
    const char *p, *end;

    if (f->inner != NULL) {
        f->h->fb.headers_each(f->inner, cb, ctx);
        return;
    }
    p = f->fields.data;
    end = p != NULL ? p + f->fields.len : NULL;
    while (p != NULL && p < end) {
        const char *v = p + strlen(p) + 1;
        cb(ctx, p, v);
        p = v + strlen(v) + 1;
    }
}

long svc__h2_active(const struct svc__h2 *h)
{
    return h != NULL ? h->active : 0;
}

int svc__h2_create(struct svc__h2 **out, struct svc_loop *loop,
                   const struct svc__h2_fallback *fallback)
{
    struct svc__h2 *h = calloc(1, sizeof(*h));

    *out = NULL;
    if (h == NULL)
        return SVC_ENOMEM;
    h->loop = loop;
    h->fb = *fallback;
    if (svc_timer_create(&h->pump, loop, on_pump, h) != SVC_OK ||
        nghttp2_session_callbacks_new(&h->cbs) != 0 || nghttp2_option_new(&h->opt) != 0) {
        svc__h2_destroy(&h);
        return SVC_ENOMEM;
    }
    nghttp2_session_callbacks_set_on_header_callback(h->cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(h->cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(h->cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(h->cbs, on_stream_close);
    nghttp2_option_set_no_auto_window_update(h->opt, 1);
    *out = h;
    return SVC_OK;
}

void svc__h2_destroy(struct svc__h2 **hp)
{
    struct svc__h2 *h = hp != NULL ? *hp : NULL;

    if (h == NULL)
        return;
    while (h->all != NULL) {
        struct h2_fetch *f = h->all;
        if (!f->cancelled && f->cb.on_cancel != NULL)
            f->cb.on_cancel(f->ud);
        f->cancelled = 1;
        fetch_free(f);
    }
    while (h->origins != NULL) {
        struct h2_origin *o = h->origins;
        h->origins = o->next;
        origin_free(o);
    }
    svc_timer_destroy(&h->pump);
    if (h->cbs != NULL)
        nghttp2_session_callbacks_del(h->cbs);
    if (h->opt != NULL)
        nghttp2_option_del(h->opt);
    free(h);
    *hp = NULL;
}
