/*
 * Fuzz target: our HTTP/2 client (common/fetch_h2.c) against a server that says anything.
 *
 * Three transfers go to an h2c origin (prior knowledge) on a listening socket of this process,
 * served from the same loop: a buffered POST with max_response 4096 (stream 1), a stream that
 * pauses in its first on_data and is resumed a few loop passes later (stream 3), and a stream
 * that cancels itself once it has 64 bytes (stream 5). The server sends an empty SETTINGS, waits
 * for the client's three requests (so the input may answer streams that exist), then sends the
 * input as it is (frames of any kind, in any order, valid or not) and shuts its side down. A
 * transfer sent again on a new connection (a refused stream) meets a server that shuts down at
 * once.
 *
 * Checked: each transfer ends exactly once (on_done, or on_cancel for the one that cancels
 * itself), within the guard, with SVC_OK or an error svc/fetch.h names; a buffered body is never
 * longer than max_response; no stream's bytes come after its end; nothing leaks or reads out of
 * bounds (ASan, UBSan). Seeds: corpus/h2_client (README.md there tells how they were made).
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "svc/err.h"
#include "svc/fetch.h"
#include "svc/loop.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #c);                                \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define NTR 3
#define GUARD_MS 5000
#define MAX_INPUT (128u << 10)

enum { T_BUFFERED, T_PAUSE, T_CANCEL };

struct tr {
    struct svc_fetch *f;
    int kind;
    int ended; /* on_done or on_cancel ran */
    int err;   /* on_done's; 1 for on_cancel */
    long status;
    int paused;    /* T_PAUSE: paused, waiting for the driver's resume */
    int resume_in; /* passes of the check timer until the resume */
    size_t bytes;
};

/* The server side: the first connection gets the input, later ones are shut at once. */
struct conn {
    struct svc_io *io;
    int fd;
    int first;
    size_t seen;    /* bytes of the client's preface and frames read */
    size_t frame;   /* offset in the stream where the current frame header starts */
    uint8_t hdr[9]; /* the current frame header, as far as read */
    size_t hdr_len;
    size_t skip;  /* payload bytes of the current frame still to skip */
    int nheaders; /* HEADERS frames the client sent */
    int sent;     /* the input went out */
    struct conn *next;
};

static struct svc_loop *loop;
static struct svc_fetch_multi *multi;
static struct svc_io *lio;
static int lfd = -1, port;
static struct tr trs[NTR];
static struct conn *conns;
static int nconns;
static const uint8_t *input;
static size_t input_len;
static uint64_t deadline;

static int data_cb(void *ctx, struct svc_fetch *f, long status, const char *d, size_t len)
{
    struct tr *t = ctx;

    (void)status;
    (void)d;
    CHECK(!t->ended);
    t->bytes += len;
    if (t->kind == T_PAUSE && !t->paused && t->resume_in == 0) {
        t->paused = 1;
        t->resume_in = 3;
        return SVC_FETCH_PAUSE;
    }
    if (t->kind == T_CANCEL && t->bytes >= 64) {
        struct svc_fetch *self = f;
        svc_fetch_cancel(&self);
        CHECK(t->ended); /* on_cancel ran */
        t->f = NULL;
    }
    return 0;
}

static void done_cb(void *ctx, int err, struct svc_fetch *f, long status, const char *body,
                    size_t len, const char *errmsg)
{
    struct tr *t = ctx;

    (void)f;
    CHECK(!t->ended);
    t->ended = 1;
    t->err = err;
    t->status = status;
    t->f = NULL;
    CHECK(err == SVC_OK || err == SVC_EUNAVAIL || err == SVC_ETIMEDOUT || err == SVC_ETOOLARGE ||
          err == SVC_EIO || err == SVC_ENOMEM);
    CHECK(err == SVC_OK || errmsg != NULL);
    if (t->kind == T_BUFFERED) {
        CHECK(body != NULL);
        CHECK(len <= 4096);
    } else {
        CHECK(body == NULL);
    }
}

static void cancel_cb(void *ctx)
{
    struct tr *t = ctx;

    CHECK(!t->ended);
    t->ended = 1;
    t->err = 1;
}

static void conn_close(struct conn *c)
{
    struct conn **pp = &conns;

    while (*pp != c)
        pp = &(*pp)->next;
    *pp = c->next;
    svc_io_close(&c->io);
    free(c);
}

/* Writes all of buf (loopback takes it; a client gone early makes the write fail, fine). */
static void put(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;

    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        p += n;
        len -= (size_t)n;
    }
}

/* Counts the client's HEADERS frames in the bytes read (after the 24-byte preface). */
static void scan(struct conn *c, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++, c->seen++) {
        if (c->seen < 24)
            continue;
        if (c->skip > 0) {
            c->skip--;
            continue;
        }
        c->hdr[c->hdr_len++] = p[i];
        if (c->hdr_len == 9) {
            c->skip = (size_t)c->hdr[0] << 16 | (size_t)c->hdr[1] << 8 | c->hdr[2];
            if (c->hdr[3] == 1)
                c->nheaders++;
            c->hdr_len = 0;
        }
    }
}

static void on_conn(void *ctx, struct svc_io *io, int fd, uint32_t events)
{
    struct conn *c = ctx;
    uint8_t buf[4096];
    ssize_t n;

    (void)io;
    (void)events;
    n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        conn_close(c); /* the client closed: done with it */
        return;
    }
    if (n > 0)
        scan(c, buf, (size_t)n);
    if (c->first && !c->sent && c->nheaders >= NTR) {
        c->sent = 1;
        put(fd, input, input_len);
        shutdown(fd, SHUT_WR);
    }
}

static void on_accept(void *ctx, struct svc_io *io, int fd, uint32_t events)
{
    static const uint8_t settings[9] = {0, 0, 0, 4, 0, 0, 0, 0, 0};
    struct conn *c;
    int cfd;

    (void)ctx;
    (void)io;
    (void)events;
    cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0)
        return;
    c = calloc(1, sizeof(*c));
    CHECK(c != NULL);
    c->fd = cfd;
    c->first = nconns++ == 0;
    if (c->first)
        put(cfd, settings, sizeof(settings));
    else
        shutdown(cfd, SHUT_WR);
    CHECK(svc_io_add(&c->io, loop, cfd, EPOLLIN, on_conn, c) == SVC_OK);
    c->next = conns;
    conns = c;
}

static int all_ended(void)
{
    for (int i = 0; i < NTR; i++)
        if (!trs[i].ended)
            return 0;
    return 1;
}

/* Every 1 ms: resumes the paused stream when its turn comes, stops the loop at the end. */
static void on_check(void *ctx, struct svc_timer *t)
{
    (void)ctx;
    for (int i = 0; i < NTR; i++) {
        struct tr *x = &trs[i];
        if (x->paused && !x->ended && --x->resume_in == 0) {
            x->paused = 0;
            x->resume_in = -1; /* once */
            svc_fetch_pause(x->f, 0);
        }
    }
    if (all_ended() || svc_loop_clock_ms() >= deadline || svc_timer_start(t, 1) != SVC_OK)
        svc_loop_stop(loop);
}

static void setup(void)
{
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);

    CHECK(svc_loop_create(&loop) == SVC_OK);
    CHECK(svc_fetch_multi_create(&multi, loop, 0) == SVC_OK);
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(lfd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    CHECK(listen(lfd, 64) == 0);
    CHECK(getsockname(lfd, (struct sockaddr *)&sa, &sl) == 0);
    port = ntohs(sa.sin_port);
    CHECK(svc_io_add(&lio, loop, lfd, EPOLLIN, on_accept, NULL) == SVC_OK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct svc_fetch_callbacks cb = {data_cb, done_cb, cancel_cb};
    static const char *const headers[] = {"Content-Type: application/json", NULL};
    struct svc_timer *t = NULL;
    char url[64];

    if (size > MAX_INPUT)
        return 0;
    if (loop == NULL)
        setup();
    input = data;
    input_len = size;
    nconns = 0;
    memset(trs, 0, sizeof(trs));
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/chat/completions", port);
    for (int i = 0; i < NTR; i++) {
        struct svc_fetch_req req;

        memset(&req, 0, sizeof(req));
        req.method = "POST";
        req.url = url;
        req.headers = headers;
        req.body = "{\"stream\":true}";
        req.body_len = 15;
        req.http = SVC_FETCH_HTTP_2_PRIOR;
        req.stream = i != T_BUFFERED;
        req.max_response = 4096;
        trs[i].kind = i;
        CHECK(svc_fetch_start(&trs[i].f, multi, &req, &cb, &trs[i]) == SVC_OK);
    }
    deadline = svc_loop_clock_ms() + GUARD_MS;
    CHECK(svc_timer_create(&t, loop, on_check, NULL) == SVC_OK);
    CHECK(svc_timer_start(t, 1) == SVC_OK);
    CHECK(svc_loop_run(loop) == SVC_OK);
    svc_timer_destroy(&t);
    if (!all_ended()) {
        fprintf(stderr, "transfers still open after %d ms:", GUARD_MS);
        for (int i = 0; i < NTR; i++)
            fprintf(stderr, " %d(ended %d, bytes %zu)", i, trs[i].ended, trs[i].bytes);
        fprintf(stderr, "\n");
        abort();
    }
    if (getenv("FUZZ_H2_VERBOSE") != NULL) /* what each transfer got, to check the seeds */
        for (int i = 0; i < NTR; i++)
            fprintf(stderr, "  transfer %d: %s, status %ld, %zu bytes, connections %d\n", i,
                    trs[i].err == 1 ? "cancelled" : svc_strerror(trs[i].err), trs[i].status,
                    trs[i].bytes, nconns);
    /* The client's connection is closed or idle; the next input must start from none, so the
     * multi goes (its idle connection with it) and the server's side of every connection too. */
    svc_fetch_multi_destroy(&multi);
    while (conns != NULL)
        conn_close(conns);
    CHECK(svc_fetch_multi_create(&multi, loop, 0) == SVC_OK);
    return 0;
}
