/*
 * Unit tests of svc/http.h in LOOPS mode and of svc/fetch.h's per-host queue, with real sockets:
 * a server loop in its own thread, the client (svc_fetch) on a loop in the main thread.
 *
 *  - many streams at once: STREAMS requests are all open and waiting together, then every
 *    stream is written ROUNDS times and ended; a tenth of them are cancelled by the client after
 *    their first piece. Every other stream must receive
 *    exactly its pieces in order, and the server must see every cancelled one end.
 *  - out of descriptors: a connection that arrives while accept4 fails with EMFILE is served once
 *    descriptors free up (the loop pauses accepting instead of spinning on a readable socket).
 *  - a stream ended before its head goes out is sent whole (Content-Length, not chunked); a
 *    stream's chunks are framed for HTTP/1.1 and sent bare to an HTTP/1.0 client.
 *  - a drain: new connects refused, one more request on a keep-alive connection answered with
 *    Connection: close, a connection made before the drain served; a request still waiting
 *    when the server is destroyed is aborted, not a crash.
 *  - the per-host cap: QUEUED buffered calls through a multi capped at CAP connections per host
 *    all complete, the server never has more than CAP requests at once, calls cancelled while
 *    waiting never call back, and the wait for a connection does not count against timeout_ms.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "svc/err.h"
#include "svc/fetch.h"
#include "svc/http.h"
#include "svc/loop.h"
#include "test.h"

#define STREAMS 300 /* 600 descriptors: under a default soft limit of 1,024 */
#define ROUNDS 3
#define QUEUED 60
#define CAP 3

/* ---- the server (its loop thread only, except the atomics) ---- */

struct sstream {
    struct svc_req *req;
    int aborted, keep; /* keep: never ended here, the client cancels it */
};

static struct svc_loop *sloop;
static struct sstream sstreams[STREAMS];
static int nsstreams, round_no;
static struct svc_timer *round_timer;
static atomic_int s_completed, s_aborted, s_inflight, s_inflight_max;

static void on_s_abort(void *data, struct svc_req *req)
{
    struct sstream *s = data;

    (void)req;
    s->aborted = 1;
    atomic_fetch_add(&s_aborted, 1);
}

static void on_s_cleanup(void *data)
{
    (void)data;
    atomic_fetch_add(&s_completed, 1);
}

/* One round: a piece to every stream still there (each write resumes its connection). */
static void on_round(void *data, struct svc_timer *t)
{
    (void)data;
    for (int i = 0; i < nsstreams; i++) {
        struct sstream *s = &sstreams[i];
        char piece[32];
        int n = snprintf(piece, sizeof(piece), "%d.%d\n", i, round_no);

        if (s->req == NULL || s->aborted || svc_req_is_done(s->req))
            continue;
        if (s->keep && round_no > 0)
            continue;
        if (round_no < ROUNDS)
            T_ASSERT(svc_req_stream_write(s->req, piece, (size_t)n) == SVC_OK ||
                     svc_req_is_done(s->req));
        else
            (void)svc_req_stream_end(s->req);
    }
    if (round_no++ < ROUNDS)
        T_EQ_INT(svc_timer_start(t, 30), SVC_OK);
}

/* GET /stream?i=<client's number>&keep=1 */
static int h_stream(void *ctx, struct svc_req *req)
{
    const char *is = svc_req_query(req, "i");
    long i = is != NULL ? strtol(is, NULL, 10) : -1;
    struct sstream *s;

    (void)ctx;
    T_ASSERT(i >= 0 && i < STREAMS && sstreams[i].req == NULL);
    s = &sstreams[i];
    nsstreams++;
    s->req = req;
    s->keep = svc_req_query(req, "keep") != NULL;
    svc_req_on_abort(req, on_s_abort, s);
    svc_req_set_cleanup(req, on_s_cleanup, s);
    T_EQ_INT(svc_req_stream_start(req, 200, "text/plain"), SVC_OK);
    /* every stream is open, with nothing to send (waiting), before the first piece */
    if (nsstreams == STREAMS) {
        nsstreams = STREAMS;
        T_EQ_INT(svc_timer_start(round_timer, 50), SVC_OK);
    }
    return SVC_HTTP_DONE;
}

static void on_slow_reply(void *data, struct svc_timer *t)
{
    struct svc_req *req = data;

    svc_timer_destroy(&t);
    atomic_fetch_sub(&s_inflight, 1);
    T_EQ_INT(svc_req_reply(req, 200, "text/plain", svc_req_path(req), strlen(svc_req_path(req))),
             SVC_OK);
}

/* Answers after 20 ms, counting how many are answered at once. */
static int h_slow(void *ctx, struct svc_req *req)
{
    struct svc_timer *t = NULL;
    T_EQ_INT(svc_timer_create(&t, sloop, on_slow_reply, req), SVC_OK);
    int now = atomic_fetch_add(&s_inflight, 1) + 1, max = atomic_load(&s_inflight_max);

    (void)ctx;
    while (now > max && !atomic_compare_exchange_weak(&s_inflight_max, &max, now)) {
    }
    T_ASSERT(t != NULL);
    T_EQ_INT(svc_timer_start(t, 20), SVC_OK);
    return SVC_HTTP_ASYNC;
}

/* A stream written and ended before its head goes out: sent whole, with a Content-Length. */
static int h_whole(void *ctx, struct svc_req *req)
{
    (void)ctx;
    T_EQ_INT(svc_req_stream_start(req, 200, "text/event-stream"), SVC_OK);
    T_EQ_INT(svc_req_stream_write(req, "data: one\n\n", 11), SVC_OK);
    T_EQ_INT(svc_req_stream_write(req, "data: two\n\n", 11), SVC_OK);
    T_EQ_INT(svc_req_stream_end(req), SVC_OK);
    return SVC_HTTP_DONE;
}

/* GET /tick: a stream whose head goes out first, then "a" and "b" 10 ms apart, then its end. */
struct tick {
    struct svc_req *req;
    int n;
};

static void on_tick(void *data, struct svc_timer *t)
{
    struct tick *k = data;

    if (k->n < 2) {
        T_EQ_INT(svc_req_stream_write(k->req, k->n == 0 ? "a" : "b", 1), SVC_OK);
        k->n++;
        T_EQ_INT(svc_timer_start(t, 10), SVC_OK);
        return;
    }
    T_EQ_INT(svc_req_stream_end(k->req), SVC_OK);
    svc_timer_destroy(&t);
    free(k);
}

static int h_tick(void *ctx, struct svc_req *req)
{
    struct tick *k = calloc(1, sizeof(*k));
    struct svc_timer *t = NULL;

    (void)ctx;
    T_ASSERT(k != NULL);
    k->req = req;
    T_EQ_INT(svc_timer_create(&t, sloop, on_tick, k), SVC_OK);
    T_EQ_INT(svc_req_stream_start(req, 200, "text/plain"), SVC_OK);
    T_EQ_INT(svc_timer_start(t, 10), SVC_OK);
    return SVC_HTTP_DONE;
}

/* GET /flood on the server with a 1 s idle timeout: 32 KiB every 5 ms until the stream's
 * limit refuses more, to a client that reads nothing. */
struct flood {
    struct svc_req *req;
    struct svc_timer *t;
};
static atomic_int flood_aborted, flood_refused;

static void on_flood(void *data, struct svc_timer *t)
{
    static char piece[32 * 1024];
    struct flood *f = data;

    if (svc_req_stream_write(f->req, piece, sizeof(piece)) == SVC_ETOOLARGE) {
        atomic_store(&flood_refused, 1);
        return; /* the queue is full: wait for the client (or its timeout) */
    }
    T_EQ_INT(svc_timer_start(t, 5), SVC_OK);
}

static void on_flood_abort(void *data, struct svc_req *req)
{
    struct flood *f = data;

    (void)req;
    svc_timer_destroy(&f->t);
    atomic_fetch_add(&flood_aborted, 1);
}

static int h_flood(void *ctx, struct svc_req *req)
{
    struct flood *f = calloc(1, sizeof(*f));

    (void)ctx;
    T_ASSERT(f != NULL);
    f->req = req;
    T_EQ_INT(svc_timer_create(&f->t, sloop, on_flood, f), SVC_OK);
    svc_req_on_abort(req, on_flood_abort, f);
    svc_req_set_cleanup(req, free, f);
    T_EQ_INT(svc_req_stream_start(req, 200, "application/octet-stream"), SVC_OK);
    T_EQ_INT(svc_timer_start(f->t, 5), SVC_OK);
    return SVC_HTTP_DONE;
}

/* Never answered: in flight when the server is destroyed (after the drain deadline). */
static int hang_aborted, hang_sent;

static void on_hang_abort(void *data, struct svc_req *req)
{
    (void)data;
    (void)req;
    hang_aborted++;
}

static int h_hang(void *ctx, struct svc_req *req)
{
    (void)ctx;
    svc_req_on_abort(req, on_hang_abort, NULL);
    return SVC_HTTP_ASYNC;
}

static const struct svc_http_route routes[] = {
    {"GET", "/hang", h_hang, NULL, SVC_HTTP_STYLE_TEXT, 0},
    {"GET", "/stream", h_stream, NULL, SVC_HTTP_STYLE_TEXT, 0},
    {"GET", "/whole", h_whole, NULL, SVC_HTTP_STYLE_TEXT, 0},
    {"GET", "/tick", h_tick, NULL, SVC_HTTP_STYLE_TEXT, 0},
    {"GET", "/flood", h_flood, NULL, SVC_HTTP_STYLE_TEXT, 0},
    {"GET", "/slow/*", h_slow, NULL, SVC_HTTP_STYLE_TEXT, 0},
};

static void *server_main(void *arg)
{
    svc_loop_run(arg);
    return NULL;
}

static void stop_loop(void *data, struct svc_loop *loop)
{
    (void)data;
    svc_loop_stop(loop);
}

/* ---- the client (main thread) ---- */

struct cstream {
    struct svc_fetch *f;
    char body[256];
    size_t len;
    int done, err, cancel;
    long status;
};

static struct cstream cstreams[STREAMS];
static struct svc_loop *cloop;
static int c_finished, c_target;

static void c_finish(void)
{
    if (++c_finished == c_target)
        svc_loop_stop(cloop);
}

static int on_c_data(void *ud, struct svc_fetch *f, long status, const char *data, size_t len)
{
    struct cstream *c = ud;

    (void)status;
    T_ASSERT(c->len + len < sizeof(c->body));
    memcpy(c->body + c->len, data, len);
    c->len += len;
    if (c->cancel && !c->done) {
        c->done = 1;
        T_ASSERT(c->f == f);
        svc_fetch_cancel(&c->f); /* inside its own callback: allowed */
        c_finish();
    }
    return 0;
}

static void on_c_done(void *ud, int err, struct svc_fetch *f, long status, const char *body,
                      size_t len, const char *errmsg)
{
    struct cstream *c = ud;

    (void)f;
    (void)errmsg;
    if (body != NULL) { /* buffered calls */
        T_ASSERT(c->len + len < sizeof(c->body));
        memcpy(c->body + c->len, body, len);
        c->len += len;
    }
    T_ASSERT(!c->done);
    c->done = 1;
    c->err = err;
    c->status = status;
    c->f = NULL;
    c_finish();
}

static void on_c_cancel(void *ud)
{
    struct cstream *c = ud;

    c->f = NULL;
}

static void on_c_deadline(void *data, struct svc_timer *t)
{
    (void)t;
    (void)data;
    T_FAIL("the client did not finish in time (%d of %d)", c_finished, c_target);
}

static void run_client(int target)
{
    struct svc_timer *deadline = NULL;
    T_EQ_INT(svc_timer_create(&deadline, cloop, on_c_deadline, NULL), SVC_OK);

    c_finished = 0;
    c_target = target;
    T_EQ_INT(svc_timer_start(deadline, 60000), SVC_OK);
    svc_loop_run(cloop);
    svc_timer_destroy(&deadline);
}

static void wait_for(atomic_int *v, int want)
{
    for (int i = 0; i < 1000 && atomic_load(v) < want; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    T_EQ_INT(atomic_load(v), want);
}

static void test_many_streams(int port)
{
    struct svc_fetch_multi *m = NULL;
    T_EQ_INT(svc_fetch_multi_create(&m, cloop, 0), SVC_OK);
    struct svc_fetch_callbacks cb = {on_c_data, on_c_done, on_c_cancel};
    char url[96];
    int cancelled = 0;

    T_ASSERT(m != NULL);
    for (int i = 0; i < STREAMS; i++) {
        struct svc_fetch_req fr = {0};
        cstreams[i].cancel = i % 10 == 0;
        cancelled += cstreams[i].cancel;
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/stream?i=%d%s", port, i,
                 cstreams[i].cancel ? "&keep=1" : "");
        fr.method = "GET";
        fr.url = url;
        fr.stream = 1;
        fr.fresh_connection = 1; /* one connection per stream, as in production */
        T_EQ_INT(svc_fetch_start(&cstreams[i].f, m, &fr, &cb, &cstreams[i]), SVC_OK);
        T_ASSERT(cstreams[i].f != NULL);
    }
    run_client(STREAMS);

    for (int i = 0; i < STREAMS; i++) {
        struct cstream *c = &cstreams[i];
        char want[256];
        size_t wl = 0;

        T_ASSERT(c->done);
        c->body[c->len] = '\0';
        for (int nr = 0; nr < (c->cancel ? 1 : ROUNDS); nr++)
            wl += (size_t)snprintf(want + wl, sizeof(want) - wl, "%d.%d\n", i, nr);
        T_EQ_STR(c->body, want);
        if (!c->cancel) {
            T_EQ_INT(c->err, SVC_OK);
            T_EQ_INT(c->status, 200);
        }
    }
    svc_fetch_multi_destroy(&m);
    wait_for(&s_completed, STREAMS);
    wait_for(&s_aborted, cancelled);
}

static void test_host_queue(int port)
{
    struct svc_fetch_multi *m = NULL;
    T_EQ_INT(svc_fetch_multi_create(&m, cloop, CAP), SVC_OK);
    struct svc_fetch_callbacks cb = {NULL, on_c_done, on_c_cancel};
    char url[96];
    int live = 0;

    T_ASSERT(m != NULL);
    memset(cstreams, 0, sizeof(cstreams));
    for (int i = 0; i < QUEUED; i++) {
        struct svc_fetch_req fr = {0};
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/slow/%d", port, i);
        fr.method = "GET";
        fr.url = url;
        /* the last one waits longer than its timeout for a connection (57 calls of 20 ms are
         * ahead of it on 3 connections): the timeout starts when curl gets it */
        fr.timeout_ms = i == QUEUED - 1 ? 100 : 30000;
        T_EQ_INT(svc_fetch_start(&cstreams[i].f, m, &fr, &cb, &cstreams[i]), SVC_OK);
        T_ASSERT(cstreams[i].f != NULL);
    }
    T_EQ_INT(svc_fetch_multi_active(m), QUEUED);
    /* cancelled while waiting (and one already handed to curl): no callback, ever */
    for (int i = 0; i < QUEUED; i += 7) {
        cstreams[i].cancel = 1;
        svc_fetch_cancel(&cstreams[i].f);
        T_ASSERT(cstreams[i].f == NULL);
    }
    for (int i = 0; i < QUEUED; i++)
        live += !cstreams[i].cancel;
    run_client(live);
    for (int i = 0; i < QUEUED; i++) {
        struct cstream *c = &cstreams[i];
        char want[32];

        if (c->cancel) {
            T_ASSERT(!c->done);
            continue;
        }
        T_ASSERT(c->done);
        T_EQ_INT(c->err, SVC_OK);
        T_EQ_INT(c->status, 200);
        snprintf(want, sizeof(want), "/slow/%d", i);
        c->body[c->len] = '\0';
        T_EQ_STR(c->body, want);
    }
    T_EQ_INT(svc_fetch_multi_active(m), 0);
    T_ASSERT(atomic_load(&s_inflight_max) <= CAP);
    T_ASSERT(atomic_load(&s_inflight_max) >= 1);
    svc_fetch_multi_destroy(&m);
}

static void test_emfile_recovers(int port)
{
    struct sockaddr_in sa = {0};
    struct timeval tv = {5, 0};
    static int fill[1024];
    struct rlimit saved, low;
    struct timespec ts = {0, 30 * 1000 * 1000};
    int nfill = 0, c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const char rq[] = "GET /slow/emfile HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    char buf[512];
    ssize_t n;

    T_ASSERT(c >= 0);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    T_EQ_INT(setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
    /* Take every free descriptor under a soft limit of 1,024: the server's accept4 then fails
     * with EMFILE, until they are given back. */
    T_EQ_INT(getrlimit(RLIMIT_NOFILE, &saved), 0);
    low = saved;
    if (low.rlim_cur > 1024)
        low.rlim_cur = 1024;
    T_EQ_INT(setrlimit(RLIMIT_NOFILE, &low), 0);
    while (nfill < (int)(sizeof(fill) / sizeof(fill[0])) &&
           (fill[nfill] = fcntl(c, F_DUPFD_CLOEXEC, 0)) >= 0)
        nfill++;
    T_EQ_INT(errno, EMFILE);
    T_EQ_INT(connect(c, (struct sockaddr *)&sa, sizeof(sa)), 0);
    T_EQ_INT(send(c, rq, sizeof(rq) - 1, MSG_NOSIGNAL), (long)(sizeof(rq) - 1));
    nanosleep(&ts, NULL); /* the server tries, fails and pauses */
    while (nfill > 0)
        close(fill[--nfill]);
    T_EQ_INT(setrlimit(RLIMIT_NOFILE, &saved), 0);
    n = recv(c, buf, sizeof(buf) - 1, MSG_WAITALL);
    T_ASSERT(n > 12);
    buf[n] = '\0';
    T_ASSERT(strncmp(buf, "HTTP/1.1 200", 12) == 0);
    T_ASSERT(strstr(buf, "/slow/emfile") != NULL);
    close(c);
}

/* One raw request; the whole answer (the server closes: Connection: close) into buf. */
static size_t raw_get(int port, const char *path, char *buf, size_t cap)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    char req[256];
    size_t got = 0;
    ssize_t n;
    int c = socket(AF_INET, SOCK_STREAM, 0);

    T_ASSERT(c >= 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    T_EQ_INT(connect(c, (struct sockaddr *)&sa, sizeof(sa)), 0);
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
    T_EQ_INT((int)send(c, req, strlen(req), 0), (int)strlen(req));
    while (got < cap - 1 && (n = recv(c, buf + got, cap - 1 - got, 0)) > 0)
        got += (size_t)n;
    buf[got] = '\0';
    close(c);
    return got;
}

/* A stream that ended before its head was sent goes out in one piece, not chunked; a stream
 * still open when its head goes out stays chunked (test_many_streams reads those). */
static void test_stream_sent_whole(int port)
{
    char buf[2048];

    T_ASSERT(raw_get(port, "/whole", buf, sizeof(buf)) > 0);
    T_ASSERT(strncmp(buf, "HTTP/1.1 200", 12) == 0);
    T_ASSERT(strcasestr(buf, "Content-Length: 22\r\n") != NULL);
    T_ASSERT(strcasestr(buf, "Transfer-Encoding") == NULL);
    T_ASSERT(strcasestr(buf, "Content-Type: text/event-stream\r\n") != NULL);
    T_ASSERT(strcasestr(buf, "Cache-Control: no-cache\r\n") != NULL);
    T_ASSERT(strstr(buf, "\r\n\r\ndata: one\n\ndata: two\n\n") != NULL);
    T_EQ_INT((int)svc_http_queued(), 0);
}

static int raw_connect(int port);

/* Reads c until the server closes it. */
static size_t read_all(int c, char *buf, size_t cap)
{
    size_t got = 0;
    ssize_t n;

    while (got < cap - 1 && (n = recv(c, buf + got, cap - 1 - got, 0)) > 0)
        got += (size_t)n;
    buf[got] = '\0';
    return got;
}

/* A stream's chunks go out as they are written, framed for HTTP/1.1; an HTTP/1.0 client gets
 * the bytes as they are, and the connection's end ends the reply. */
static void test_stream_framing(int port)
{
    static const char req11[] = "GET /tick HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    static const char req10[] = "GET /tick HTTP/1.0\r\n\r\n";
    char buf[2048];
    int c = raw_connect(port);

    T_ASSERT(c >= 0);
    T_EQ_INT((int)send(c, req11, sizeof(req11) - 1, MSG_NOSIGNAL), (int)sizeof(req11) - 1);
    read_all(c, buf, sizeof(buf));
    close(c);
    T_ASSERT(strncmp(buf, "HTTP/1.1 200 OK\r\n", 17) == 0);
    T_ASSERT(strcasestr(buf, "Transfer-Encoding: chunked\r\n") != NULL);
    T_ASSERT(strstr(buf, "\r\n\r\n1\r\na\r\n1\r\nb\r\n0\r\n\r\n") != NULL);

    c = raw_connect(port);
    T_ASSERT(c >= 0);
    T_EQ_INT((int)send(c, req10, sizeof(req10) - 1, MSG_NOSIGNAL), (int)sizeof(req10) - 1);
    read_all(c, buf, sizeof(buf));
    close(c);
    T_ASSERT(strncmp(buf, "HTTP/1.1 200 OK\r\n", 17) == 0);
    T_ASSERT(strcasestr(buf, "Transfer-Encoding") == NULL);
    T_ASSERT(strcasestr(buf, "Content-Length") == NULL);
    T_ASSERT(strcasestr(buf, "Connection: close\r\n") != NULL);
    T_ASSERT(strlen(buf) > 4 && strcmp(buf + strlen(buf) - 6, "\r\n\r\nab") == 0);
}

/* A client that stops reading a stream is cut off after the idle timeout (1 s on this server),
 * though the producer is the one waiting: the stream is aborted, its memory freed. */
static void test_stream_reader_gone_quiet(int port)
{
    static const char req[] = "GET /flood HTTP/1.1\r\nHost: x\r\n\r\n";
    int c = raw_connect(port), small = 4096;
    struct timespec t0, t1;
    double secs;

    T_ASSERT(c >= 0);
    setsockopt(c, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    clock_gettime(CLOCK_MONOTONIC, &t0);
    T_EQ_INT((int)send(c, req, sizeof(req) - 1, MSG_NOSIGNAL), (int)sizeof(req) - 1);
    for (int i = 0; i < 1000 && atomic_load(&flood_aborted) == 0; i++)
        usleep(10 * 1000);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    T_EQ_INT(atomic_load(&flood_aborted), 1);
    T_EQ_INT(atomic_load(&flood_refused), 1); /* the queue did fill: it was the client's pace */
    if (secs < 1.0)
        T_FAIL("cut off after %.2f s, before the 1 s idle timeout", secs);
    close(c);
}

static struct svc_http_server *drained_srv;
static int hung_client = -1; /* test_hang_at_exit's connection */

static int raw_connect(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int c = socket(AF_INET, SOCK_STREAM, 0);

    T_ASSERT(c >= 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(c);
        return -1;
    }
    return c;
}

/* Sends GET /whole on c (keep-alive) and reads the reply: its head and its 22-byte body. */
static void whole_on(int c, char *buf, size_t cap)
{
    static const char req[] = "GET /whole HTTP/1.1\r\nHost: x\r\n\r\n";
    size_t got = 0;
    ssize_t n;
    char *end = NULL;

    T_EQ_INT((int)send(c, req, sizeof(req) - 1, MSG_NOSIGNAL), (int)sizeof(req) - 1);
    while (got < cap - 1 && (end == NULL || (size_t)(buf + got - (end + 4)) < 22)) {
        n = recv(c, buf + got, cap - 1 - got, 0);
        T_ASSERT(n > 0);
        got += (size_t)n;
        buf[got] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    T_ASSERT(strncmp(buf, "HTTP/1.1 200", 12) == 0);
}

/* A drain loses no request: after svc_http_server_quiesce a new connect is refused at once (an
 * ingress then tries another replica), a keep-alive connection that brings one more request is
 * answered with Connection: close and ends, and a connection made before the drain is served.
 * Last: it leaves the server quiesced. */
static void test_drain(int port)
{
    char buf[2048];
    unsigned long started0;
    int a, b, c, i;

    a = raw_connect(port);
    T_ASSERT(a >= 0);
    whole_on(a, buf, sizeof(buf));
    T_ASSERT(strcasestr(buf, "Connection: close") == NULL);
    b = raw_connect(port); /* connected, no request yet */
    T_ASSERT(b >= 0);
    hung_client = raw_connect(port); /* for test_hang_at_exit */
    T_ASSERT(hung_client >= 0);
    started0 = svc_http_server_started(drained_srv);
    svc_http_server_quiesce(drained_srv);
    /* the loop shuts the listener when it runs the quiesce it was posted */
    for (i = 0; i < 500 && (c = raw_connect(port)) >= 0; i++) {
        close(c);
        usleep(10 * 1000);
    }
    T_ASSERT(i < 500);
    /* one connect may have raced the shutdown (reset); from now on every one is refused */
    T_ASSERT(raw_connect(port) < 0);
    T_EQ_INT(errno, ECONNREFUSED);
    whole_on(a, buf, sizeof(buf));
    T_ASSERT(strcasestr(buf, "Connection: close\r\n") != NULL);
    T_EQ_INT((int)recv(a, buf, sizeof(buf), 0), 0); /* and the server ended the connection */
    whole_on(b, buf, sizeof(buf));
    T_ASSERT(strcasestr(buf, "Connection: close\r\n") != NULL);
    T_EQ_INT((int)(svc_http_server_started(drained_srv) - started0), 2);
    close(a);
    close(b);
    for (i = 0; i < 500 && svc_http_server_connections(drained_srv) > 1; i++)
        usleep(10 * 1000);
    T_EQ_INT((int)svc_http_server_connections(drained_srv), 1); /* hung_client's */
    T_EQ_INT((int)svc_http_server_inflight(drained_srv), 0);
}

/* A request still in flight when the drain gives up (made before the drain: a connection made
 * now is refused) is left waiting; main() destroys the server with it and checks that its abort
 * callback ran (the request ended as if its client had left, not freed under its owner). */
static void test_hang_at_exit(int port)
{
    static const char req[] = "GET /hang HTTP/1.1\r\nHost: x\r\n\r\n";
    int i;

    if (hung_client < 0) /* run alone: the server still accepts */
        hung_client = raw_connect(port);
    T_ASSERT(hung_client >= 0);
    T_EQ_INT((int)send(hung_client, req, sizeof(req) - 1, MSG_NOSIGNAL), (int)sizeof(req) - 1);
    hang_sent = 1;
    for (i = 0; i < 500 && svc_http_server_inflight(drained_srv) == 0; i++)
        usleep(10 * 1000);
    T_EQ_INT((int)svc_http_server_inflight(drained_srv), 1);
}

int main(void)
{
    struct svc_http_server *srv = NULL, *srv_idle = NULL;
    struct svc_http_opts o = {0};
    pthread_t th;
    char err[256];

    T_EQ_INT(svc_loop_create(&sloop), SVC_OK);
    T_EQ_INT(svc_loop_create(&cloop), SVC_OK);
    T_ASSERT(sloop != NULL && cloop != NULL);
    T_EQ_INT(svc_timer_create(&round_timer, sloop, on_round, NULL), SVC_OK);
    T_ASSERT(round_timer != NULL);
    o.service = "test";
    o.addr = "127.0.0.1:0";
    o.mode = SVC_HTTP_LOOPS;
    o.loops = &sloop;
    o.nloops = 1;
    o.max_body = 1024;
    T_EQ_INT(svc_http_server_create(&srv, &o, routes, sizeof(routes) / sizeof(routes[0]), err,
                                    sizeof(err)),
             SVC_OK);
    o.idle_timeout = 1;
    T_EQ_INT(svc_http_server_create(&srv_idle, &o, routes, sizeof(routes) / sizeof(routes[0]),
                                    err, sizeof(err)),
             SVC_OK);
    T_EQ_INT(pthread_create(&th, NULL, server_main, sloop), 0);

    T_RUN_ARG(test_many_streams, svc_http_server_port(srv));
    T_RUN_ARG(test_host_queue, svc_http_server_port(srv));
    T_RUN_ARG(test_emfile_recovers, svc_http_server_port(srv));
    T_RUN_ARG(test_stream_sent_whole, svc_http_server_port(srv));
    T_RUN_ARG(test_stream_framing, svc_http_server_port(srv));
    T_RUN_ARG(test_stream_reader_gone_quiet, svc_http_server_port(srv_idle));
    drained_srv = srv;
    T_RUN_ARG(test_drain, svc_http_server_port(srv));
    T_RUN_ARG(test_hang_at_exit, svc_http_server_port(srv));

    T_EQ_INT(svc_loop_post(sloop, stop_loop, NULL), SVC_OK);
    T_EQ_INT(pthread_join(th, NULL), 0);
    svc_http_server_destroy(&srv);
    svc_http_server_destroy(&srv_idle);
    T_ASSERT(srv == NULL);
    T_EQ_INT(hang_aborted, hang_sent);
    if (hung_client >= 0)
        close(hung_client);
    svc_timer_destroy(&round_timer);
    svc_loop_destroy(&sloop);
    svc_loop_destroy(&cloop);
    return 0;
}
