/*
 * The load generator's engine: see lg_run.h.
 *
 * Each worker has an epoll set and an array of connections. A connection is registered once,
 * edge-triggered, for EPOLLIN | EPOLLOUT | EPOLLRDHUP, and is always read and written until
 * EAGAIN. Opening connections goes through a FIFO so that --rate can pace it. Deadlines are
 * checked by a sweep every SWEEP_NS, which costs O(connections) ten times a second and keeps
 * the connection struct free of timer bookkeeping.
 *
 * Requests are handed out by one shared atomic counter, so several workers never issue more
 * than cfg->requests in all.
 */
#include "lg_run.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "lg_resp.h"

#define SWEEP_NS (100u * 1000u * 1000u)
#define PROGRESS_NS (1000u * 1000u * 1000u)
#define READ_BUF (64u << 10)
#define MAX_EVENTS 512

volatile sig_atomic_t lg_stop;

typedef enum {
    C_FREE,       /* no socket, no request */
    C_QUEUED,     /* has a request, waits for its turn to connect */
    C_CONNECTING, /* connect() in progress */
    C_SENDING,    /* writing the request */
    C_RECEIVING   /* request sent, reading the response */
} conn_state_e;

struct worker;

struct conn {
    struct worker *w;
    int fd;
    conn_state_e state;
    int reused;    /* the current request went out on a kept-alive connection */
    int head_seen; /* counted in `streaming` */
    int matched;   /* the expected text was found */
    size_t sent;
    uint64_t t_req;     /* request start: connect() for a new connection, else first write */
    uint64_t t_connect; /* connect() called */
    uint64_t t_first;   /* first response byte; 0 = none yet */
    struct lg_resp resp;
    size_t tail_len;
    char tail[LG_EXPECT_MAX]; /* last expect_len - 1 body bytes, for matches across reads */
};

/* Shared between workers. */
struct shared {
    const struct lg_config *cfg;
    atomic_uint_fast64_t issued;
    atomic_uint_fast64_t inflight, streaming, completed, failed, peak_streaming;
    uint64_t t0;
};

struct worker {
    unsigned id;
    struct shared *sh;
    const struct lg_config *cfg;
    int epfd;
    struct conn *conns;
    unsigned nconns;
    unsigned busy; /* connections not C_FREE */
    struct conn **queue; /* FIFO of C_QUEUED connections */
    unsigned qhead, qlen;
    double interval_ns; /* between two opens; 0 = no pacing */
    double next_open;
    char *buf;
    struct lg_result res;
    pthread_t thread;
    int rc;
};

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

const char *lg_fail_name(lg_fail_e kind)
{
    static const char *const names[LG_FAIL_COUNT] = {"connect", "status", "short", "invalid",
                                                     "timeout"};

    return (unsigned)kind < LG_FAIL_COUNT ? names[kind] : "?";
}

static int claim(struct shared *sh)
{
    return atomic_fetch_add(&sh->issued, 1) < sh->cfg->requests;
}

static void note_error(struct worker *w, lg_fail_e kind, const char *what, int err)
{
    char *slot = w->res.first_error[kind];

    if (slot[0] != '\0')
        return;
    if (err != 0)
        snprintf(slot, sizeof(w->res.first_error[kind]), "%s: %s", what, strerror(err));
    else
        snprintf(slot, sizeof(w->res.first_error[kind]), "%s", what);
}

static void close_fd(struct conn *c)
{
    if (c->fd >= 0) {
        close(c->fd); /* also removes it from the epoll set */
        c->fd = -1;
    }
}

static void enqueue(struct conn *c)
{
    struct worker *w = c->w;

    c->state = C_QUEUED;
    w->queue[(w->qhead + w->qlen) % w->nconns] = c;
    w->qlen++;
}

/* Starts a new request on c (which holds no request). Returns 1 when one was claimed. */
static int start_next(struct conn *c, int keep_socket);

static void set_free(struct conn *c)
{
    close_fd(c);
    c->state = C_FREE;
    c->w->busy--;
}

/* Drops the per-request state of c. */
static void request_end(struct conn *c)
{
    struct shared *sh = c->w->sh;

    if (c->head_seen)
        atomic_fetch_sub(&sh->streaming, 1);
    c->head_seen = 0;
    atomic_fetch_sub(&sh->inflight, 1);
}

/*
 * The request on c has ended: ok, or failed with kind (then `what`/err describe it).
 * can_reuse: the connection is in a state where another request may follow.
 */
static void finish(struct conn *c, int ok, lg_fail_e kind, const char *what, int err,
                   int can_reuse)
{
    struct worker *w = c->w;
    struct shared *sh = w->sh;
    uint64_t t = now_ns();

    if (ok) {
        w->res.completed++;
        lg_hist_add(&w->res.ttfb_us, (c->t_first - c->t_req) / 1000);
        lg_hist_add(&w->res.total_us, (t - c->t_req) / 1000);
        atomic_fetch_add(&sh->completed, 1);
    } else {
        w->res.failed[kind]++;
        note_error(w, kind, what, err);
        atomic_fetch_add(&sh->failed, 1);
    }
    w->res.body_bytes += c->resp.body_bytes;
    request_end(c);
    if (lg_stop || w->cfg->hold || !start_next(c, can_reuse && !w->cfg->hold))
        set_free(c);
}

static void conn_send(struct conn *c);

static int start_next(struct conn *c, int keep_socket)
{
    struct worker *w = c->w;

    if (!claim(w->sh))
        return 0;
    atomic_fetch_add(&w->sh->inflight, 1);
    c->t_first = 0;
    c->matched = 0;
    c->tail_len = 0;
    c->sent = 0;
    lg_resp_init(&c->resp, w->cfg->no_body);
    if (keep_socket && c->fd >= 0) {
        c->reused = 1;
        c->state = C_SENDING;
        c->t_req = now_ns();
        conn_send(c);
    } else {
        close_fd(c);
        c->reused = 0;
        enqueue(c);
    }
    return 1;
}

/* An idle keep-alive connection was closed under a request that got no byte back: the request
 * never reached the server, so it is sent again on a new connection, as browsers do. */
static void retry(struct conn *c)
{
    c->w->res.retries++;
    close_fd(c);
    c->reused = 0;
    c->t_first = 0;
    c->sent = 0;
    lg_resp_init(&c->resp, c->w->cfg->no_body);
    enqueue(c);
}

static void on_connected(struct conn *c)
{
    uint64_t t = now_ns();

    lg_hist_add(&c->w->res.connect_us, (t - c->t_connect) / 1000);
    c->state = C_SENDING;
    conn_send(c);
}

static void open_conn(struct conn *c)
{
    struct worker *w = c->w;
    const struct lg_config *cfg = w->cfg;
    struct epoll_event ev = {0};
    int one = 1, fd;

    c->t_connect = c->t_req = now_ns();
    fd = socket(cfg->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        finish(c, 0, LG_FAIL_CONNECT, "socket", errno, 0);
        return;
    }
    c->fd = fd;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = c;
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        finish(c, 0, LG_FAIL_CONNECT, "epoll_ctl", errno, 0);
        return;
    }
    w->res.connections++;
    if (connect(fd, (const struct sockaddr *)&cfg->addr, cfg->addrlen) == 0) {
        on_connected(c);
        return;
    }
    if (errno != EINPROGRESS) {
        finish(c, 0, LG_FAIL_CONNECT, "connect", errno, 0);
        return;
    }
    c->state = C_CONNECTING;
}

static void conn_send(struct conn *c)
{
    struct worker *w = c->w;
    const struct lg_config *cfg = w->cfg;

    while (c->sent < cfg->request_len) {
        ssize_t n = send(c->fd, cfg->request + c->sent, cfg->request_len - c->sent,
                         MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (size_t)n;
            w->res.bytes_out += (uint64_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (c->reused && c->t_first == 0)
            retry(c);
        else
            finish(c, 0, LG_FAIL_SHORT, "send", errno, 0);
        return;
    }
    c->state = C_RECEIVING;
}

static void on_body(void *ud, const char *data, size_t len)
{
    struct conn *c = ud;
    const struct lg_config *cfg = c->w->cfg;
    size_t k;

    if (cfg->expect == NULL || c->matched)
        return;
    k = cfg->expect_len - 1; /* bytes of context kept between reads */
    if (c->tail_len > 0) {
        /* a match that straddles the previous read and this one */
        char tmp[2 * LG_EXPECT_MAX];
        size_t take = len < k ? len : k;
        memcpy(tmp, c->tail, c->tail_len);
        memcpy(tmp + c->tail_len, data, take);
        if (memmem(tmp, c->tail_len + take, cfg->expect, cfg->expect_len) != NULL) {
            c->matched = 1;
            return;
        }
    }
    if (memmem(data, len, cfg->expect, cfg->expect_len) != NULL) {
        c->matched = 1;
        return;
    }
    if (k == 0)
        return;
    if (len >= k) {
        memcpy(c->tail, data + len - k, k);
        c->tail_len = k;
    } else {
        size_t keep = c->tail_len + len > k ? k - len : c->tail_len;
        memmove(c->tail, c->tail + c->tail_len - keep, keep);
        memcpy(c->tail + keep, data, len);
        c->tail_len = keep + len;
    }
}

/* The response on c is complete; extra: bytes arrived after it (the connection can't be reused). */
static void response_done(struct conn *c, int extra)
{
    const struct lg_config *cfg = c->w->cfg;
    int reuse = c->resp.keep_alive && !extra;

    if (c->resp.status != 200) {
        char what[48];
        snprintf(what, sizeof(what), "HTTP status %d", c->resp.status);
        finish(c, 0, LG_FAIL_STATUS, what, 0, reuse);
    } else if (cfg->expect != NULL && !c->matched) {
        finish(c, 0, LG_FAIL_INVALID, "the body lacks the --expect text", 0, reuse);
    } else {
        finish(c, 1, LG_FAIL_COUNT, NULL, 0, reuse);
    }
}

/* The connection ended (err = 0 for a FIN, else the errno of the failed read). */
static void conn_ended(struct conn *c, int err)
{
    if (c->t_first == 0 && c->reused) {
        retry(c);
        return;
    }
    if (lg_resp_eof(&c->resp) == 0) {
        response_done(c, 0);
        return;
    }
    if (lg_resp_has_head(&c->resp) && c->resp.status != 200) {
        char what[64];
        snprintf(what, sizeof(what), "HTTP status %d (body cut short)", c->resp.status);
        finish(c, 0, LG_FAIL_STATUS, what, 0, 0);
        return;
    }
    finish(c, 0, LG_FAIL_SHORT,
           c->t_first == 0 ? "closed before any response byte"
                           : lg_resp_has_head(&c->resp) ? "closed in the middle of the body"
                                                        : "closed in the middle of the head",
           err, 0);
}

static void conn_read(struct conn *c)
{
    struct worker *w = c->w;

    for (;;) {
        ssize_t n = recv(c->fd, w->buf, READ_BUF, 0);
        long used;
        int had_head;

        if (n == 0) {
            conn_ended(c, 0);
            return;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn_ended(c, errno);
            return;
        }
        w->res.bytes_in += (uint64_t)n;
        if (c->t_first == 0)
            c->t_first = now_ns();
        had_head = lg_resp_has_head(&c->resp);
        used = lg_resp_feed(&c->resp, w->buf, (size_t)n, on_body, c);
        if (used < 0) {
            finish(c, 0, LG_FAIL_INVALID, c->resp.error, 0, 0);
            return;
        }
        if (!had_head && lg_resp_has_head(&c->resp)) {
            uint64_t s = atomic_fetch_add(&w->sh->streaming, 1) + 1;
            uint64_t peak = atomic_load(&w->sh->peak_streaming);
            c->head_seen = 1;
            if (c->resp.status >= 0 && c->resp.status < 600)
                w->res.status[c->resp.status]++;
            while (s > peak && !atomic_compare_exchange_weak(&w->sh->peak_streaming, &peak, s))
                ;
        }
        if (c->resp.state == LG_RESP_DONE) {
            response_done(c, used < n);
            return;
        }
    }
}

static void on_event(struct conn *c, uint32_t ev)
{
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err != 0) {
            finish(c, 0, LG_FAIL_CONNECT, "connect", err, 0);
            return;
        }
        if (!(ev & (EPOLLOUT | EPOLLIN | EPOLLHUP | EPOLLERR)))
            return;
        on_connected(c);
        if (c->state != C_RECEIVING && c->state != C_SENDING)
            return;
    }
    if (c->state == C_SENDING && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
        conn_send(c);
    /* Read whenever something may be there: also while still sending (an early answer). */
    if ((c->state == C_SENDING || c->state == C_RECEIVING) &&
        (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
        conn_read(c);
}

static void sweep(struct worker *w, uint64_t t)
{
    const struct lg_config *cfg = w->cfg;

    for (unsigned i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];
        if (c->state == C_CONNECTING && t - c->t_connect > cfg->connect_timeout_ns)
            finish(c, 0, LG_FAIL_CONNECT, "connect timed out", 0, 0);
        else if ((c->state == C_SENDING || c->state == C_RECEIVING) &&
                 t - c->t_req > cfg->timeout_ns)
            finish(c, 0, LG_FAIL_TIMEOUT, "request timed out", 0, 0);
    }
}

static void progress(struct shared *sh, uint64_t t)
{
    fprintf(stderr,
            "progress t=%.1f inflight=%llu streaming=%llu completed=%llu failed=%llu\n",
            (double)(t - sh->t0) / 1e9, (unsigned long long)atomic_load(&sh->inflight),
            (unsigned long long)atomic_load(&sh->streaming),
            (unsigned long long)atomic_load(&sh->completed),
            (unsigned long long)atomic_load(&sh->failed));
}

/* Opens queued connections, as many as the pacing allows. */
static void open_queued(struct worker *w, uint64_t t)
{
    if (w->interval_ns > 0 && w->next_open < (double)t - w->interval_ns)
        w->next_open = (double)t; /* no burst after an idle spell */
    while (w->qlen > 0 && !lg_stop) {
        struct conn *c;
        if (w->interval_ns > 0) {
            if ((double)t < w->next_open)
                break;
            w->next_open += w->interval_ns;
        }
        c = w->queue[w->qhead];
        w->qhead = (w->qhead + 1) % w->nconns;
        w->qlen--;
        open_conn(c);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct epoll_event events[MAX_EVENTS];
    uint64_t t = now_ns(), next_sweep = t + SWEEP_NS, next_progress = t + PROGRESS_NS;

    w->next_open = (double)t;
    for (unsigned i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];
        if (!start_next(c, 0))
            break;
        w->busy++;
    }
    while (w->busy > 0 && !lg_stop) {
        int timeout_ms, n;
        uint64_t wake = next_sweep;

        open_queued(w, t);
        if (w->qlen > 0 && w->interval_ns > 0 && (uint64_t)w->next_open < wake)
            wake = (uint64_t)w->next_open;
        t = now_ns();
        timeout_ms = wake > t ? (int)((wake - t + 999999) / 1000000) : 0;
        n = epoll_wait(w->epfd, events, MAX_EVENTS, timeout_ms);
        if (n < 0 && errno != EINTR) {
            perror("chatweb-loadgen: epoll_wait");
            w->rc = -errno;
            break;
        }
        for (int i = 0; i < n; i++)
            on_event(events[i].data.ptr, events[i].events);
        t = now_ns();
        if (t >= next_sweep) {
            sweep(w, t);
            next_sweep = t + SWEEP_NS;
        }
        if (w->id == 0 && w->sh->cfg->progress && t >= next_progress) {
            progress(w->sh, t);
            next_progress += PROGRESS_NS;
        }
    }
    /* interrupted: whatever is still open did not finish */
    for (unsigned i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];
        if (c->state != C_FREE) {
            w->res.unfinished++;
            close_fd(c);
            c->state = C_FREE;
        }
    }
    return NULL;
}

static void worker_deinit(struct worker *w)
{
    if (w->conns != NULL)
        for (unsigned i = 0; i < w->nconns; i++)
            lg_resp_deinit(&w->conns[i].resp);
    free(w->conns);
    free(w->queue);
    free(w->buf);
    if (w->epfd >= 0)
        close(w->epfd);
}

static int worker_init(struct worker *w, unsigned id, unsigned nconns, unsigned nworkers,
                       struct shared *sh)
{
    const struct lg_config *cfg = sh->cfg;

    memset(w, 0, sizeof(*w));
    w->id = id;
    w->sh = sh;
    w->cfg = cfg;
    w->nconns = nconns;
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->conns = calloc(nconns ? nconns : 1, sizeof(*w->conns));
    w->queue = calloc(nconns ? nconns : 1, sizeof(*w->queue));
    w->buf = malloc(READ_BUF);
    if (w->epfd < 0 || w->conns == NULL || w->queue == NULL || w->buf == NULL)
        return -ENOMEM;
    for (unsigned i = 0; i < nconns; i++) {
        w->conns[i].w = w;
        w->conns[i].fd = -1;
        w->conns[i].state = C_FREE;
    }
    if (cfg->rate > 0)
        w->interval_ns = 1e9 * (double)nworkers / cfg->rate;
    lg_hist_init(&w->res.connect_us);
    lg_hist_init(&w->res.ttfb_us);
    lg_hist_init(&w->res.total_us);
    return 0;
}

static void merge(struct lg_result *dst, const struct lg_result *src)
{
    dst->completed += src->completed;
    for (unsigned k = 0; k < LG_FAIL_COUNT; k++) {
        dst->failed[k] += src->failed[k];
        if (dst->first_error[k][0] == '\0')
            memcpy(dst->first_error[k], src->first_error[k], sizeof(dst->first_error[k]));
    }
    dst->unfinished += src->unfinished;
    for (unsigned s = 0; s < 600; s++)
        dst->status[s] += src->status[s];
    dst->connections += src->connections;
    dst->retries += src->retries;
    dst->bytes_in += src->bytes_in;
    dst->bytes_out += src->bytes_out;
    dst->body_bytes += src->body_bytes;
    lg_hist_merge(&dst->connect_us, &src->connect_us);
    lg_hist_merge(&dst->ttfb_us, &src->ttfb_us);
    lg_hist_merge(&dst->total_us, &src->total_us);
}

int lg_run(const struct lg_config *cfg, struct lg_result *res)
{
    struct shared sh;
    struct worker *ws;
    unsigned nw = cfg->threads > 0 ? cfg->threads : 1, started;
    int rc = 0;

    if (cfg->concurrency == 0)
        return -EINVAL;
    if (nw > cfg->concurrency)
        nw = cfg->concurrency;
    memset(res, 0, sizeof(*res));
    lg_hist_init(&res->connect_us);
    lg_hist_init(&res->ttfb_us);
    lg_hist_init(&res->total_us);
    memset(&sh, 0, sizeof(sh));
    sh.cfg = cfg;
    ws = calloc(nw, sizeof(*ws));
    if (ws == NULL)
        return -ENOMEM;
    for (unsigned i = 0; i < nw; i++) {
        unsigned share = cfg->concurrency / nw + (i < cfg->concurrency % nw ? 1 : 0);
        rc = worker_init(&ws[i], i, share, nw, &sh);
        if (rc != 0) {
            fprintf(stderr, "chatweb-loadgen: cannot set up worker %u: %s\n", i, strerror(-rc));
            for (unsigned j = 0; j <= i; j++)
                worker_deinit(&ws[j]);
            free(ws);
            return rc;
        }
    }
    sh.t0 = now_ns();
    for (started = 1; started < nw; started++) {
        int e = pthread_create(&ws[started].thread, NULL, worker_main, &ws[started]);
        if (e != 0) {
            fprintf(stderr, "chatweb-loadgen: cannot start thread %u: %s\n", started,
                    strerror(e));
            lg_stop = 1; /* the threads already running stop at once */
            rc = -e;
            break;
        }
    }
    if (rc == 0)
        worker_main(&ws[0]);
    for (unsigned i = 1; i < started; i++)
        pthread_join(ws[i].thread, NULL);
    res->duration_ns = now_ns() - sh.t0;
    res->interrupted = lg_stop != 0;
    res->peak_streaming = atomic_load(&sh.peak_streaming);
    for (unsigned i = 0; i < nw; i++) {
        if (ws[i].rc != 0 && rc == 0)
            rc = ws[i].rc;
        merge(res, &ws[i].res);
        worker_deinit(&ws[i]);
    }
    free(ws);
    return rc;
}
