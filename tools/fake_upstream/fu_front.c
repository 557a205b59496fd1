/* fu_front: TLS and HTTP/2 for the fake upstream. See fu_front.h. */
#include "fu_front.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fu_api.h"
#include "fu_buf.h"
#include "fu_h1resp.h"
#include "fu_http.h"
#include "fu_job.h"
#include "fu_record.h"
#include "fu_timer.h"

#define FRONT_READ_CHUNK (16u * 1024u)
#define FRONT_OUT_HIGH (256u * 1024u)       /* stop producing while this much is unsent */
#define FRONT_BUF_MAX (8u * 1024u * 1024u)   /* any one buffer */
#define FRONT_REQ_MAX (FU_MAX_HEAD_BYTES + FU_MAX_BODY_BYTES + 1024u)
#define FRONT_EVENTS 256
#define FRONT_LINGER_NS (2ull * 1000000000ull) /* at most this long half-closed, reading */

enum fio_kind { FIO_LISTEN, FIO_WAKE, FIO_CLIENT, FIO_PIPE };

/* What an epoll event points at: the first member of every watched object. */
struct fio {
    enum fio_kind kind;
    int fd;
    uint32_t events; /* currently registered */
    int registered;
    int dead;        /* closed in this batch: its events are ignored, freed after the batch */
};

enum conn_mode { M_HANDSHAKE, M_SNIFF, M_H1, M_H2 };

struct fstream;

struct fconn {
    struct fio io; /* the client's socket */
    struct fu_front *f;
    struct fconn *prev, *next; /* f->conns */
    SSL *ssl;
    enum conn_mode mode;
    nghttp2_session *h2;
    struct fstream *streams;
    long open_streams;
    struct fu_buf out;      /* bytes for the client not yet written */
    struct fio pipe;        /* M_H1: the relay connection (kind FIO_PIPE) */
    int pipe_connected;
    struct fu_buf to_back;  /* M_H1: client bytes for the relay */
    char sniff[24];
    size_t sniff_len;
    int closing;            /* M_H1: the relay ended; close once out is written */
    int lingering;          /* write side shut after the last answer; input discarded */
    uint64_t linger_until;  /* fu_now_ns() deadline of the lingering */
    struct fconn *grave;
};

/* An HTTP/2 stream. Its request is answered in this thread by fu_api_handle(), through `base`,
 * exactly as the plain port answers: the HTTP/1.1 response fu_api and its job write (`h1`) is
 * parsed by fu_h1resp into HEADERS and the decoded body (`out`) that nghttp2 takes as DATA. */
struct fstream {
    struct fu_conn base;   /* first: fu_api answers through it */
    struct fu_timer timer; /* the job's next step, in the front's heap */
    struct fconn *c;
    struct fstream *prev, *next;
    int32_t id;
    struct fu_buf req;  /* the HTTP/1.1 request head being built from HEADERS */
    struct fu_buf body; /* request body until END_STREAM */
    struct fu_buf path; /* :path */
    char method[16];
    struct fu_job *job; /* a paced or held-back answer, stepped from `timer` */
    int job_waits_output; /* the job paused until `out` drains */
    int aborted;        /* fu_api gave up on the answer (fu_conn_abort) */
    int cut;            /* the job cut the answer: reset the stream at the next step */
    struct fu_buf h1;   /* response bytes from fu_api and the job, not yet parsed */
    int head_sent;      /* HEADERS submitted */
    int eof;            /* the answer is complete */
    int broken;         /* the answer broke off after HEADERS: reset when `out` is drained */
    int deferred;
    int eof_sent;       /* the last DATA frame (END_STREAM) was handed to nghttp2 */
    int refused;        /* reset by a refusing GOAWAY */
    struct fu_buf out;  /* decoded body not yet taken by nghttp2 */
    size_t out_off;
    struct fu_h1resp *resp; /* allocated when the request is complete */
    struct fstream *grave;
};

struct fu_front {
    int epfd;
    struct fio listen, wake;
    SSL_CTX *ctx;
    bool h2;
    unsigned max_streams;
    struct sockaddr_storage backend;
    socklen_t backend_len;
    pthread_t thread;
    int started;
    atomic_int stop;
    atomic_int goaway_mode; /* the strongest mode asked since the last wake-up */
    struct fconn *conns;
    struct fconn *dead_conns;
    long lingering; /* connections lingering: the loop then wakes up for their deadlines */
    struct fstream *dead_streams;
    struct fu_timer_heap timers; /* streams' jobs */
    int stopping;                /* fu_front_destroy: jobs end without an event */
};

static _Atomic(struct fu_front *) the_front; /* set before the thread starts; for fu_front_goaway */

/* ---- epoll helpers ---- */

static int watch(struct fu_front *f, struct fio *io, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = io};
    int op = io->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;

    if (io->registered && io->events == events)
        return 0;
    if (epoll_ctl(f->epfd, op, io->fd, &ev) != 0)
        return -1;
    io->registered = 1;
    io->events = events;
    return 0;
}

static int relay_socket(struct fu_front *f)
{
    int fd = socket(f->backend.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&f->backend, f->backend_len) != 0 &&
        errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

/* ---- client I/O, TLS or not ---- */

/* > 0 bytes, 0 = would block, -1 = closed or failed */
static ssize_t client_read(struct fconn *c, char *buf, size_t n)
{
    if (c->ssl != NULL) {
        int r = SSL_read(c->ssl, buf, (int)n);
        if (r > 0)
            return r;
        int e = SSL_get_error(c->ssl, r);
        return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? 0 : -1;
    }
    ssize_t r = recv(c->io.fd, buf, n, 0);
    if (r > 0)
        return r;
    return r < 0 && (errno == EAGAIN || errno == EINTR) ? 0 : -1;
}

static ssize_t client_write(struct fconn *c, const char *buf, size_t n)
{
    if (c->ssl != NULL) {
        int r = SSL_write(c->ssl, buf, (int)n);
        if (r > 0)
            return r;
        int e = SSL_get_error(c->ssl, r);
        return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? 0 : -1;
    }
    ssize_t r = send(c->io.fd, buf, n, MSG_NOSIGNAL);
    if (r >= 0)
        return r;
    return errno == EAGAIN || errno == EINTR ? 0 : -1;
}

/* ---- lifetime ---- */

/* The stream's answer will not be sent any further: its job, if any, ends as `how` (the plain
 * port's client_closed when the client reset the stream or the connection went). */
static void stream_drop_job(struct fstream *s, enum fu_job_end how)
{
    fu_timer_clear(&s->c->f->timers, &s->timer);
    fu_job_end(&s->job, s->c->f->stopping ? FU_JOB_END_SHUTDOWN : how);
}

static void stream_kill(struct fstream *s)
{
    struct fconn *c = s->c;

    stream_drop_job(s, FU_JOB_END_CLIENT_CLOSED);
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        c->streams = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    c->open_streams--;
    atomic_fetch_sub(&fu_stats.h2_open_streams, 1);
    s->grave = c->f->dead_streams;
    c->f->dead_streams = s;
}

static void stream_free(struct fstream *s)
{
    fu_buf_deinit(&s->req);
    fu_buf_deinit(&s->body);
    fu_buf_deinit(&s->path);
    fu_buf_deinit(&s->h1);
    fu_buf_deinit(&s->out);
    free(s->resp);
    free(s);
}

static void conn_kill(struct fconn *c)
{
    struct fu_front *f = c->f;

    if (c->io.dead)
        return;
    if (c->lingering)
        f->lingering--;
    while (c->streams != NULL)
        stream_kill(c->streams);
    if (c->pipe.fd >= 0)
        close(c->pipe.fd);
    c->pipe.fd = -1;
    c->pipe.dead = 1;
    close(c->io.fd);
    c->io.dead = 1;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        f->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    atomic_fetch_sub(&fu_stats.front_open_connections, 1);
    c->grave = f->dead_conns;
    f->dead_conns = c;
}

static void conn_free(struct fconn *c)
{
    nghttp2_session_del(c->h2);
    SSL_free(c->ssl);
    fu_buf_deinit(&c->out);
    fu_buf_deinit(&c->to_back);
    free(c);
}

static void bury(struct fu_front *f)
{
    while (f->dead_streams != NULL) {
        struct fstream *s = f->dead_streams;
        f->dead_streams = s->grave;
        stream_free(s);
    }
    while (f->dead_conns != NULL) {
        struct fconn *c = f->dead_conns;
        f->dead_conns = c->grave;
        conn_free(c);
    }
}

/* ---- output ---- */

/* Writes what is queued; -1 when the client is gone. */
static int conn_flush_out(struct fconn *c)
{
    size_t off = 0;

    while (off < c->out.len) {
        ssize_t w = client_write(c, c->out.data + off, c->out.len - off);
        if (w < 0)
            return -1;
        if (w == 0)
            break;
        off += (size_t)w;
    }
    fu_buf_consume(&c->out, off);
    return 0;
}

/* The connection is over on our side and everything is written: close the write side (TLS
 * close_notify, then FIN) and read until the client closes too, at most FRONT_LINGER_NS.
 * Closing at once is a race: the client may still be writing (a frame of its own after our
 * last DATA, the next request on HTTP/1.1), and those bytes make our kernel answer with a
 * reset. libcurl then fails its send ("Connection reset by peer", "Broken pipe") and with it the
 * transfers on the connection whose last bytes it had not yet delivered: after a graceful
 * GOAWAY, a stream that had started broke off (upstream_h2.test.mjs, ASan on a loaded machine).
 * Servers linger for this reason; the plain port does the same (PH_LINGER in fu_http.c). */
static void conn_linger(struct fconn *c)
{
    while (c->streams != NULL) /* none after a GOAWAY; a fatal protocol error may leave some */
        stream_kill(c->streams);
    if (c->ssl != NULL) {
        /* sends close_notify; the client's is not awaited. A failure here must not leave an
         * error in this thread's queue for the next connection's SSL_get_error. */
        ERR_clear_error();
        (void)SSL_shutdown(c->ssl);
        ERR_clear_error();
    }
    if (shutdown(c->io.fd, SHUT_WR) != 0 || watch(c->f, &c->io, EPOLLIN | EPOLLRDHUP) != 0) {
        conn_kill(c);
        return;
    }
    c->lingering = 1;
    c->linger_until = fu_now_ns() + FRONT_LINGER_NS;
    c->f->lingering++;
}

/* Lingering: discards what the client sends (TLS records included, unread) until it closes. */
static void conn_linger_read(struct fconn *c, uint32_t events)
{
    char buf[FRONT_READ_CHUNK];

    for (;;) {
        ssize_t r = recv(c->io.fd, buf, sizeof(buf), 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        if (r <= 0) {
            conn_kill(c);
            return;
        }
    }
    if (events & (EPOLLERR | EPOLLHUP))
        conn_kill(c);
}

/* Moves nghttp2's frames to the socket; closes the connection when it is over. Returns -1 when
 * the connection was closed or is lingering (it takes no more frames). */
static int conn_pump(struct fconn *c)
{
    if (c->io.dead || c->lingering)
        return -1;
    if (c->mode == M_H2) {
        while (c->out.len < FRONT_OUT_HIGH) {
            const uint8_t *data;
            ssize_t n = nghttp2_session_mem_send(c->h2, &data);
            if (n < 0) {
                conn_kill(c);
                return -1;
            }
            if (n == 0)
                break;
            if (fu_buf_append(&c->out, data, (size_t)n) != FU_OK) {
                conn_kill(c);
                return -1;
            }
        }
    }
    if (conn_flush_out(c) != 0) {
        conn_kill(c);
        return -1;
    }
    if (c->mode == M_H2 && c->out.len == 0 && !nghttp2_session_want_read(c->h2) &&
        !nghttp2_session_want_write(c->h2)) {
        conn_linger(c); /* after GOAWAY, or a fatal protocol error already sent */
        return -1;
    }
    if (c->mode == M_H1 && c->closing && c->out.len == 0) {
        conn_linger(c);
        return -1;
    }
    uint32_t ev = EPOLLIN | EPOLLRDHUP;
    if (c->out.len > 0 || (c->mode == M_H2 && nghttp2_session_want_write(c->h2)))
        ev |= EPOLLOUT;
    if (c->mode == M_HANDSHAKE && c->ssl != NULL && SSL_want_write(c->ssl))
        ev |= EPOLLOUT;
    if (watch(c->f, &c->io, ev) != 0) {
        conn_kill(c);
        return -1;
    }
    return 0;
}

/* ---- HTTP/2 streams, answered in this thread ---- */

/* Decoded body for nghttp2's DATA frames; defers the stream while the answer has nothing more
 * yet, resets it (INTERNAL_ERROR) once a broken answer's bytes are all sent. */
static ssize_t data_read(nghttp2_session *ses, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    struct fstream *s = src->ptr;
    size_t have = s->out.len - s->out_off;

    (void)ses;
    (void)id;
    (void)ud;
    if (have > 0) {
        size_t n = have < length ? have : length;
        memcpy(buf, s->out.data + s->out_off, n);
        s->out_off += n;
        if (s->out_off == s->out.len) {
            fu_buf_clear(&s->out);
            s->out_off = 0;
        }
        if (s->job_waits_output && s->out.len - s->out_off < FRONT_OUT_HIGH) {
            /* room again: the job goes on at the loop's next timer pass (not from inside
             * nghttp2's callback) */
            s->job_waits_output = 0;
            if (fu_timer_set(&s->c->f->timers, &s->timer, fu_now_ns() + 1) != FU_OK)
                s->broken = 1;
        }
        return (ssize_t)n;
    }
    if (s->eof) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        s->eof_sent = 1;
        return 0;
    }
    if (s->broken)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* RST_STREAM INTERNAL_ERROR */
    s->deferred = 1;
    return NGHTTP2_ERR_DEFERRED;
}

static void stream_wake(struct fstream *s)
{
    if (s->deferred) {
        s->deferred = 0;
        nghttp2_session_resume_data(s->c->h2, s->id);
    }
}

static int on_resp_body(void *ud, const char *p, size_t n)
{
    struct fstream *s = ud;
    return fu_buf_append(&s->out, p, n) == FU_OK ? 0 : -1;
}

static int hop_by_hop(const char *name)
{
    return strcmp(name, "connection") == 0 || strcmp(name, "keep-alive") == 0 ||
           strcmp(name, "transfer-encoding") == 0 || strcmp(name, "content-length") == 0 ||
           strcmp(name, "proxy-connection") == 0 || strcmp(name, "upgrade") == 0 ||
           strcmp(name, "te") == 0;
}

static int stream_submit_head(struct fstream *s)
{
    struct fu_h1resp *r = s->resp;
    nghttp2_nv nva[FU_H1RESP_MAX_HEADERS + 1];
    size_t n = 0;
    char status[4];
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = data_read};

    snprintf(status, sizeof(status), "%03d", r->status);
    nva[n++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, 3, NGHTTP2_NV_FLAG_NONE};
    for (size_t i = 0; i < r->n_headers; i++) {
        const char *name = r->headers[i].name, *v = r->headers[i].value;
        if (hop_by_hop(name))
            continue;
        nva[n++] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)v, strlen(name), strlen(v),
                                NGHTTP2_NV_FLAG_NONE};
    }
    s->head_sent = 1;
    return nghttp2_submit_response(s->c->h2, s->id, nva, n, &prd) == 0 ? 0 : -1;
}

/* The answer broke off (cut on purpose, a job out of memory, fu_api gave up): what the client
 * gets depends on how far it got, as when the plain port closes a connection early. */
static void stream_answer_failed(struct fstream *s)
{
    stream_drop_job(s, FU_JOB_END_CLIENT_CLOSED);
    if (s->broken || s->eof)
        return;
    s->broken = 1;
    fu_buf_clear(&s->h1);
    if (!s->head_sent) {
        nghttp2_submit_rst_stream(s->c->h2, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    stream_wake(s);
}

/* Parse what fu_api and the job wrote: HEADERS once the head is complete, the body into `out`
 * for DATA frames, the end of the stream once the response is complete. */
static void stream_take_h1(struct fstream *s)
{
    if (s->h1.len == 0 || s->broken || s->eof)
        return;
    int rc = fu_h1resp_feed(s->resp, s->h1.data, s->h1.len, on_resp_body, s);
    fu_buf_clear(&s->h1);
    if (rc != 0 || (s->resp->head_done && !s->head_sent && stream_submit_head(s) != 0)) {
        stream_answer_failed(s);
        return;
    }
    if (s->resp->state == FU_H1R_DONE)
        s->eof = 1;
    if (s->eof || s->out.len > s->out_off)
        stream_wake(s);
}

/* Step the stream's job as the plain port steps a connection's (conn_run in fu_http.c): what
 * is due now goes out, then the job waits for its next due time or for `out` to drain. */
static void stream_step(struct fstream *s)
{
    struct fu_front *f = s->c->f;

    fu_timer_clear(&f->timers, &s->timer);
    if (s->cut) {
        stream_answer_failed(s);
        return;
    }
    while (s->job != NULL) {
        if (s->out.len - s->out_off >= FRONT_OUT_HIGH) {
            s->job_waits_output = 1; /* data_read re-arms the timer */
            return;
        }
        if (s->out_off > 0) { /* what nghttp2 took goes, so `out` stays near FRONT_OUT_HIGH */
            fu_buf_consume(&s->out, s->out_off);
            s->out_off = 0;
        }
        uint64_t next = 0;
        enum fu_job_status st = fu_job_step(s->job, fu_now_ns(), &s->h1, &next);
        stream_take_h1(s);
        if (s->job == NULL)
            return; /* the answer failed, and its job ended with it */
        switch (st) {
        case FU_JOB_MORE:
            if (next == 0)
                continue; /* paused on its output, which is in `out` now */
            if (fu_timer_set(&f->timers, &s->timer, next) != FU_OK)
                stream_answer_failed(s);
            return;
        case FU_JOB_DONE: fu_job_end(&s->job, FU_JOB_END_DONE); return;
        case FU_JOB_CUT:
            /* The stream is reset on the loop's next pass, once this pass has written what the
             * job sent, as when the plain port's close came over loopback: a client that reads
             * DATA and RST_STREAM at once may drop the DATA (curl 7.88 does). */
            fu_job_end(&s->job, FU_JOB_END_CUT);
            s->cut = 1;
            if (fu_timer_set(&f->timers, &s->timer, fu_now_ns() + 1) != FU_OK)
                stream_answer_failed(s);
            return;
        case FU_JOB_STALL: return; /* nothing more until the client goes */
        case FU_JOB_ERROR: stream_answer_failed(s); return;
        }
    }
}

static int stream_send(struct fu_conn *base, const char *data, size_t len)
{
    struct fstream *s = (struct fstream *)base;
    int rc = fu_buf_append(&s->h1, data, len);
    if (rc != FU_OK)
        s->aborted = 1;
    return rc;
}

static void stream_abort(struct fu_conn *base)
{
    ((struct fstream *)base)->aborted = 1;
}

static void stream_start_job(struct fu_conn *base, struct fu_job *job)
{
    ((struct fstream *)base)->job = job;
}

static const struct fu_conn_ops stream_conn_ops = {
    .send = stream_send,
    .abort = stream_abort,
    .start_job = stream_start_job,
};

/*
 * The request is complete: answer it. Its head is written as the HTTP/1.1 request the plain port
 * would get for it (host from :authority, content-length, connection: close) and parsed by the
 * plain port's parser, so both ports accept, refuse and record the same requests; the answer is
 * then fu_api's, through `base`. Returns -1 (the stream is reset) only when out of memory.
 */
static int stream_start(struct fstream *s)
{
    struct fu_buf all;
    struct fu_req req;
    size_t head_len;
    int st;

    fu_buf_init(&all, FRONT_REQ_MAX);
    if (fu_buf_appendf(&all, "%s %s HTTP/1.1\r\n", s->method[0] ? s->method : "GET",
                       s->path.data != NULL ? s->path.data : "/") != FU_OK ||
        (s->req.len > 0 && fu_buf_append(&all, s->req.data, s->req.len) != FU_OK) ||
        fu_buf_appendf(&all, "content-length: %zu\r\nconnection: close\r\n\r\n", s->body.len) !=
            FU_OK) {
        fu_buf_deinit(&all);
        return -1;
    }
    head_len = all.len;
    if (s->body.len > 0 && fu_buf_append(&all, s->body.data, s->body.len) != FU_OK) {
        fu_buf_deinit(&all);
        return -1;
    }
    fu_buf_deinit(&s->req);
    fu_buf_deinit(&s->body);
    fu_buf_deinit(&s->path);
    s->resp = malloc(sizeof(*s->resp));
    if (s->resp == NULL) {
        fu_buf_deinit(&all);
        return -1;
    }
    fu_h1resp_init(s->resp, strcmp(s->method, "HEAD") == 0);
    /* as the relay's connection to the plain port was: HTTP/1.1, "connection: close" */
    s->base.http11 = true;
    s->base.keep_alive = false;
    st = head_len > FU_MAX_HEAD_BYTES ? 431 : fu_http_parse_head(all.data, head_len, &req);
    if (st == 0 && all.len - head_len > FU_MAX_BODY_BYTES)
        st = 413;
    if (st != 0) {
        if (fu_http_append_reject(&s->h1, st) != FU_OK)
            s->aborted = 1;
    } else {
        req.body = all.len > head_len ? all.data + head_len : NULL;
        req.body_len = all.len - head_len;
        fu_api_handle(&s->base, &req, fu_now_ns());
    }
    fu_buf_deinit(&all);
    if (s->aborted) {
        stream_answer_failed(s); /* the plain port closes without an answer */
        return 0;
    }
    stream_take_h1(s);
    if (s->job != NULL)
        stream_step(s);
    return 0;
}

static int on_begin_headers(nghttp2_session *ses, const nghttp2_frame *frame, void *ud)
{
    struct fconn *c = ud;
    struct fstream *s;

    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    s->base.ops = &stream_conn_ops;
    fu_timer_init(&s->timer);
    s->c = c;
    s->id = frame->hd.stream_id;
    fu_buf_init(&s->req, FU_MAX_HEAD_BYTES + 1024u);
    fu_buf_init(&s->body, FU_MAX_BODY_BYTES + 1u);
    fu_buf_init(&s->path, FU_MAX_HEAD_BYTES);
    fu_buf_init(&s->h1, FRONT_BUF_MAX);
    fu_buf_init(&s->out, FRONT_BUF_MAX);
    s->next = c->streams;
    if (c->streams != NULL)
        c->streams->prev = s;
    c->streams = s;
    c->open_streams++;
    atomic_fetch_add(&fu_stats.h2_streams, 1);
    atomic_fetch_add(&fu_stats.h2_open_streams, 1);
    long mx = atomic_load(&fu_stats.h2_max_streams_per_connection);
    while (c->open_streams > mx &&
           !atomic_compare_exchange_weak(&fu_stats.h2_max_streams_per_connection, &mx,
                                         c->open_streams))
        ;
    nghttp2_session_set_stream_user_data(ses, s->id, s);
    return 0;
}

static int on_header(nghttp2_session *ses, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *ud)
{
    struct fstream *s;
    int rc = FU_OK;

    (void)flags;
    (void)ud;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    s = nghttp2_session_get_stream_user_data(ses, frame->hd.stream_id);
    if (s == NULL)
        return 0;
    if (namelen == 7 && memcmp(name, ":method", 7) == 0) {
        if (valuelen >= sizeof(s->method))
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        memcpy(s->method, value, valuelen);
        s->method[valuelen] = '\0';
        return 0;
    }
    if (namelen == 5 && memcmp(name, ":path", 5) == 0) {
        for (size_t i = 0; i < valuelen; i++)
            if (value[i] <= 0x20 || value[i] == 0x7f)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        fu_buf_clear(&s->path);
        return fu_buf_append(&s->path, value, valuelen) == FU_OK
                   ? 0
                   : NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (namelen == 10 && memcmp(name, ":authority", 10) == 0)
        rc = fu_buf_appendf(&s->req, "host: %.*s\r\n", (int)valuelen, (const char *)value);
    else if (namelen > 0 && name[0] == ':')
        return 0; /* :scheme */
    else if (!(namelen == 4 && memcmp(name, "host", 4) == 0) &&
             !(namelen == 14 && memcmp(name, "content-length", 14) == 0))
        rc = fu_buf_appendf(&s->req, "%.*s: %.*s\r\n", (int)namelen, (const char *)name,
                            (int)valuelen, (const char *)value);
    return rc == FU_OK ? 0 : NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

static int on_data_chunk(nghttp2_session *ses, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    struct fstream *s = nghttp2_session_get_stream_user_data(ses, id);

    (void)flags;
    (void)ud;
    if (s == NULL)
        return 0;
    if (fu_buf_append(&s->body, data, len) != FU_OK)
        nghttp2_submit_rst_stream(ses, NGHTTP2_FLAG_NONE, id, NGHTTP2_REFUSED_STREAM);
    return 0;
}

static int on_frame_recv(nghttp2_session *ses, const nghttp2_frame *frame, void *ud)
{
    struct fstream *s;

    (void)ud;
    if (frame->hd.type == NGHTTP2_RST_STREAM) {
        atomic_fetch_add(&fu_stats.h2_resets_received, 1);
        return 0;
    }
    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    s = nghttp2_session_get_stream_user_data(ses, frame->hd.stream_id);
    if (s == NULL || s->resp != NULL || s->refused)
        return 0;
    if (stream_start(s) != 0)
        nghttp2_submit_rst_stream(ses, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
    return 0;
}

static int on_stream_close(nghttp2_session *ses, int32_t id, uint32_t error_code, void *ud)
{
    struct fstream *s = nghttp2_session_get_stream_user_data(ses, id);

    (void)ud;
    if (s != NULL) {
        /* reset before its answer was complete, by the client (or by us, on a broken answer) */
        if (error_code != NGHTTP2_NO_ERROR && !s->eof_sent && !s->refused)
            atomic_fetch_add(&fu_stats.h2_streams_reset, 1);
        nghttp2_session_set_stream_user_data(ses, id, NULL);
        stream_kill(s); /* a job still running ends as client_closed, as on the plain port */
    }
    return 0;
}

static int conn_start_h2(struct fconn *c)
{
    nghttp2_session_callbacks *cb;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, c->f->max_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1u << 20},
    };
    int rc;

    if (nghttp2_session_callbacks_new(&cb) != 0)
        return -1;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    rc = nghttp2_session_server_new(&c->h2, cb, c);
    nghttp2_session_callbacks_del(cb);
    if (rc != 0)
        return -1;
    c->mode = M_H2;
    atomic_fetch_add(&fu_stats.h2_connections, 1);
    return nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) ==
                   0
               ? 0
               : -1;
}

static int conn_start_h1(struct fconn *c)
{
    c->mode = M_H1;
    atomic_fetch_add(&fu_stats.front_h1_connections, 1);
    c->pipe.kind = FIO_PIPE;
    c->pipe.fd = relay_socket(c->f);
    if (c->pipe.fd < 0)
        return -1;
    return watch(c->f, &c->pipe, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
}

/* ---- HTTP/1.1 connections: a byte pipe to one relay connection ---- */

static void pipe_on_relay(struct fconn *c)
{
    if (!c->pipe_connected) {
        int err = 0;
        socklen_t el = sizeof(err);
        if (getsockopt(c->pipe.fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0) {
            conn_kill(c);
            return;
        }
        c->pipe_connected = 1;
    }
    while (c->to_back.len > 0) {
        ssize_t w = send(c->pipe.fd, c->to_back.data, c->to_back.len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN)
                break;
            conn_kill(c);
            return;
        }
        fu_buf_consume(&c->to_back, (size_t)w);
    }
    while (c->out.len < FRONT_OUT_HIGH) {
        char buf[FRONT_READ_CHUNK];
        ssize_t r = recv(c->pipe.fd, buf, sizeof(buf), 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        if (r <= 0) { /* the plain port closed: so does the client's connection */
            close(c->pipe.fd);
            c->pipe.fd = -1;
            c->pipe.registered = 0;
            c->closing = 1;
            conn_pump(c);
            return;
        }
        if (fu_buf_append(&c->out, buf, (size_t)r) != FU_OK) {
            conn_kill(c);
            return;
        }
    }
    uint32_t ev = (c->out.len < FRONT_OUT_HIGH ? EPOLLIN | EPOLLRDHUP : 0) |
                  (c->to_back.len > 0 || !c->pipe_connected ? EPOLLOUT : 0);
    if (watch(c->f, &c->pipe, ev) != 0) {
        conn_kill(c);
        return;
    }
    conn_pump(c);
}

/* ---- client events ---- */

static void conn_on_client(struct fconn *c, uint32_t events)
{
    char buf[FRONT_READ_CHUNK];

    if (c->lingering) {
        conn_linger_read(c, events);
        return;
    }
    if (c->mode == M_HANDSHAKE) {
        int r = SSL_accept(c->ssl);
        if (r != 1) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                conn_pump(c);
                return;
            }
            atomic_fetch_add(&fu_stats.tls_failed_handshakes, 1);
            conn_kill(c);
            return;
        }
        const unsigned char *alpn = NULL;
        unsigned alpn_len = 0;
        SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
        atomic_fetch_add(&fu_stats.tls_handshakes, 1);
        if (SSL_session_reused(c->ssl))
            atomic_fetch_add(&fu_stats.tls_resumed, 1);
        if (alpn_len == 2 && memcmp(alpn, "h2", 2) == 0 ? conn_start_h2(c) : conn_start_h1(c)) {
            conn_kill(c);
            return;
        }
    }
    if (events & EPOLLOUT) {
        if (c->mode == M_H1 && conn_flush_out(c) != 0) {
            conn_kill(c);
            return;
        }
        if (c->mode == M_H1 && c->pipe.fd >= 0)
            pipe_on_relay(c); /* room again: read more from the relay */
        if (c->io.dead)
            return;
    }
    for (;;) {
        ssize_t n = client_read(c, buf, sizeof(buf));
        if (n < 0) {
            conn_kill(c);
            return;
        }
        if (n == 0)
            break;
        const char *p = buf;
        size_t len = (size_t)n;
        if (c->mode == M_SNIFF) {
            /* h2c with prior knowledge starts with the 24-byte client preface */
            size_t take = sizeof(c->sniff) - c->sniff_len < len ? sizeof(c->sniff) - c->sniff_len
                                                                : len;
            memcpy(c->sniff + c->sniff_len, p, take);
            c->sniff_len += take;
            p += take;
            len -= take;
            int is_h2 = c->f->h2 &&
                        memcmp(c->sniff, NGHTTP2_CLIENT_MAGIC, c->sniff_len) == 0;
            if (is_h2 && c->sniff_len < sizeof(c->sniff))
                continue;
            if (is_h2 ? conn_start_h2(c) : conn_start_h1(c)) {
                conn_kill(c);
                return;
            }
            if (is_h2 ? nghttp2_session_mem_recv(c->h2, (const uint8_t *)c->sniff,
                                                 c->sniff_len) < 0
                      : fu_buf_append(&c->to_back, c->sniff, c->sniff_len) != FU_OK) {
                conn_kill(c);
                return;
            }
        }
        if (len == 0)
            continue;
        if (c->mode == M_H2) {
            if (nghttp2_session_mem_recv(c->h2, (const uint8_t *)p, len) < 0) {
                conn_kill(c);
                return;
            }
        } else if (fu_buf_append(&c->to_back, p, len) != FU_OK) {
            conn_kill(c);
            return;
        }
        if (c->io.dead)
            return;
    }
    if (c->mode == M_H1 && c->pipe.fd >= 0) {
        pipe_on_relay(c);
        return;
    }
    conn_pump(c);
}

static void on_accept(struct fu_front *f)
{
    for (;;) {
        int fd = accept4(f->listen.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct fconn *c = calloc(1, sizeof(*c));
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->io.kind = FIO_CLIENT;
        c->io.fd = fd;
        c->pipe.fd = -1;
        c->f = f;
        fu_buf_init(&c->out, FRONT_BUF_MAX);
        fu_buf_init(&c->to_back, FRONT_BUF_MAX);
        c->next = f->conns;
        if (f->conns != NULL)
            f->conns->prev = c;
        f->conns = c;
        atomic_fetch_add(&fu_stats.front_connections, 1);
        atomic_fetch_add(&fu_stats.front_open_connections, 1);
        if (f->ctx != NULL) {
            c->mode = M_HANDSHAKE;
            c->ssl = SSL_new(f->ctx);
            if (c->ssl == NULL || SSL_set_fd(c->ssl, fd) != 1) {
                conn_kill(c);
                continue;
            }
        } else {
            c->mode = M_SNIFF;
        }
        if (watch(f, &c->io, EPOLLIN | EPOLLRDHUP) != 0)
            conn_kill(c);
    }
}

/* ---- GOAWAY ---- */

static void goaway_all(struct fu_front *f, int mode)
{
    int refuse = mode == FU_GOAWAY_REFUSE;

    for (struct fconn *c = f->conns, *next; c != NULL; c = next) {
        next = c->next;
        if (c->mode != M_H2 || c->lingering) /* lingering: done, its GOAWAY already sent */
            continue;
        if (mode == FU_GOAWAY_DROP) {
            atomic_fetch_add(&fu_stats.h2_connections_dropped, 1);
            conn_kill(c);
            continue;
        }
        int32_t last = nghttp2_session_get_last_proc_stream_id(c->h2);
        if (refuse) {
            last = 0;
            for (struct fstream *s = c->streams; s != NULL; s = s->next)
                if (s->head_sent && s->id > last)
                    last = s->id;
            for (struct fstream *s = c->streams; s != NULL; s = s->next) {
                if (s->id <= last)
                    continue;
                stream_drop_job(s, FU_JOB_END_CLIENT_CLOSED);
                s->refused = 1;
                nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, s->id,
                                          NGHTTP2_REFUSED_STREAM);
                atomic_fetch_add(&fu_stats.h2_refused_streams, 1);
            }
        }
        nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE, last, NGHTTP2_NO_ERROR, NULL, 0);
        atomic_fetch_add(&fu_stats.h2_goaways_sent, 1);
        conn_pump(c);
    }
}

bool fu_front_goaway(enum fu_goaway_mode mode)
{
    struct fu_front *f = the_front;
    uint64_t one = 1;
    int cur;

    if (f == NULL)
        return false;
    cur = atomic_load(&f->goaway_mode);
    while ((int)mode > cur && !atomic_compare_exchange_weak(&f->goaway_mode, &cur, (int)mode))
        ;
    return write(f->wake.fd, &one, sizeof(one)) == (ssize_t)sizeof(one);
}

/* ---- thread ---- */

/* The epoll_wait timeout: 1 s, or until the first lingering connection's deadline or the first
 * stream's job step. */
static int loop_timeout(const struct fu_front *f)
{
    uint64_t now = fu_now_ns(), first = UINT64_MAX;
    int timers = fu_timer_wait_ms(&f->timers, now, 1000);

    if (f->lingering == 0)
        return timers;
    for (const struct fconn *c = f->conns; c != NULL; c = c->next)
        if (c->lingering && c->linger_until < first)
            first = c->linger_until;
    if (first <= now)
        return 0;
    int ms = first - now >= 1000000000ull ? 1000 : (int)((first - now + 999999u) / 1000000u);
    return ms < timers ? ms : timers;
}

/* Steps the streams whose jobs are due (each stream has at most one deadline). A step re-armed
 * for "now" (data_read) waits for the next pass, so a fast reader cannot hold the loop. */
static void run_timers(struct fu_front *f)
{
    uint64_t now = fu_now_ns();
    struct fu_timer *t;

    while ((t = fu_timer_first(&f->timers)) != NULL && t->deadline <= now) {
        struct fstream *s = (struct fstream *)((char *)t - offsetof(struct fstream, timer));
        fu_timer_clear(&f->timers, t);
        stream_step(s);
        conn_pump(s->c);
    }
}

/* Closes the lingering connections whose client did not close in time. */
static void linger_expire(struct fu_front *f)
{
    uint64_t now;

    if (f->lingering == 0)
        return;
    now = fu_now_ns();
    for (struct fconn *c = f->conns, *next; c != NULL; c = next) {
        next = c->next;
        if (c->lingering && c->linger_until <= now)
            conn_kill(c);
    }
}

static void *front_main(void *arg)
{
    struct fu_front *f = arg;
    struct epoll_event evs[FRONT_EVENTS];

    while (!atomic_load(&f->stop)) {
        int n = epoll_wait(f->epfd, evs, FRONT_EVENTS, loop_timeout(f));
        for (int i = 0; i < n; i++) {
            struct fio *io = evs[i].data.ptr;
            uint32_t e = evs[i].events;
            if (io->dead)
                continue;
            switch (io->kind) {
            case FIO_LISTEN:
                on_accept(f);
                break;
            case FIO_WAKE: {
                uint64_t v;
                if (read(f->wake.fd, &v, sizeof(v)) == (ssize_t)sizeof(v))
                    goaway_all(f, atomic_exchange(&f->goaway_mode, FU_GOAWAY_GRACEFUL));
                break;
            }
            case FIO_CLIENT:
                conn_on_client((struct fconn *)io, e);
                break;
            case FIO_PIPE: {
                struct fconn *c = (struct fconn *)((char *)io - offsetof(struct fconn, pipe));
                if (!c->io.dead)
                    pipe_on_relay(c);
                break;
            }
            }
        }
        run_timers(f);
        linger_expire(f);
        bury(f);
    }
    return NULL;
}

/* ---- set-up ---- */

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    struct fu_front *f = arg;
    static const unsigned char both[] = "\x02h2\x08http/1.1";
    static const unsigned char h1[] = "\x08http/1.1";

    (void)ssl;
    if (SSL_select_next_proto((unsigned char **)out, outlen, f->h2 ? both : h1,
                              f->h2 ? sizeof(both) - 1 : sizeof(h1) - 1, in,
                              inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* no common protocol: HTTP/1.1 without ALPN */
    return SSL_TLSEXT_ERR_OK;
}

static int resolve_backend(struct fu_front *f, const char *backend)
{
    char host[256];
    const char *colon = strrchr(backend, ':');
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST},
                    *res = NULL;
    size_t hl;

    if (colon == NULL)
        return -1;
    hl = (size_t)(colon - backend);
    if (backend[0] == '[' && hl >= 2) { /* [v6]:port */
        backend++;
        hl -= 2;
    }
    if (hl >= sizeof(host))
        return -1;
    memcpy(host, backend, hl);
    host[hl] = '\0';
    if (getaddrinfo(host, colon + 1, &hints, &res) != 0)
        return -1;
    memcpy(&f->backend, res->ai_addr, res->ai_addrlen);
    f->backend_len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

struct fu_front *fu_front_create(const struct fu_front_opts *o, char *bound, size_t bound_len)
{
    struct fu_front *f = calloc(1, sizeof(*f));
    bool in_use = false;

    if (f == NULL)
        return NULL;
    f->epfd = -1;
    fu_timer_heap_init(&f->timers);
    f->listen.fd = -1;
    f->wake.fd = -1;
    f->h2 = o->h2;
    f->max_streams = o->max_streams;
    if (resolve_backend(f, o->backend) != 0) {
        fprintf(stderr, "fake-upstream: front: cannot use the backend address %s\n", o->backend);
        goto fail;
    }
    if (o->cert_file != NULL && o->cert_file[0] != '\0') {
        f->ctx = SSL_CTX_new(TLS_server_method());
        if (f->ctx == NULL ||
            SSL_CTX_use_certificate_chain_file(f->ctx, o->cert_file) != 1 ||
            SSL_CTX_use_PrivateKey_file(f->ctx, o->key_file, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(f->ctx) != 1) {
            char e[256];
            ERR_error_string_n(ERR_get_error(), e, sizeof(e));
            fprintf(stderr,
                    "fake-upstream: FAKE_TLS_CERT/FAKE_TLS_KEY: cannot load '%s' / '%s': %s\n",
                    o->cert_file, o->key_file ? o->key_file : "", e);
            goto fail;
        }
        SSL_CTX_set_min_proto_version(f->ctx, TLS1_2_VERSION);
        SSL_CTX_set_mode(f->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                     SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                     SSL_MODE_RELEASE_BUFFERS);
        SSL_CTX_set_session_cache_mode(f->ctx, SSL_SESS_CACHE_SERVER);
        SSL_CTX_set_session_id_context(f->ctx, (const unsigned char *)"fake", 4);
        SSL_CTX_set_alpn_select_cb(f->ctx, alpn_select, f);
    }
    f->listen.kind = FIO_LISTEN;
    f->listen.fd = fu_http_listen(o->listen, bound, bound_len, &in_use);
    if (f->listen.fd < 0)
        goto fail;
    f->wake.kind = FIO_WAKE;
    f->wake.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    f->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (f->wake.fd < 0 || f->epfd < 0 || watch(f, &f->listen, EPOLLIN) != 0 ||
        watch(f, &f->wake, EPOLLIN) != 0) {
        fprintf(stderr, "fake-upstream: front: %s\n", strerror(errno));
        goto fail;
    }
    the_front = f;
    if (pthread_create(&f->thread, NULL, front_main, f) != 0) {
        the_front = NULL;
        fprintf(stderr, "fake-upstream: front: cannot start its thread\n");
        goto fail;
    }
    f->started = 1;
    return f;
fail:
    fu_front_destroy(&f);
    return NULL;
}

void fu_front_destroy(struct fu_front **fp)
{
    struct fu_front *f = fp != NULL ? *fp : NULL;

    if (f == NULL)
        return;
    if (f->started) {
        uint64_t one = 1;
        atomic_store(&f->stop, 1);
        if (write(f->wake.fd, &one, sizeof(one)) < 0)
            perror("fake-upstream: front: wake");
        pthread_join(f->thread, NULL);
    }
    the_front = NULL;
    f->stopping = 1; /* the fake is stopping: streams' jobs end without an event */
    while (f->conns != NULL)
        conn_kill(f->conns);
    bury(f);
    fu_timer_heap_deinit(&f->timers);
    if (f->listen.fd >= 0)
        close(f->listen.fd);
    if (f->wake.fd >= 0)
        close(f->wake.fd);
    if (f->epfd >= 0)
        close(f->epfd);
    SSL_CTX_free(f->ctx);
    free(f);
    *fp = NULL;
}
