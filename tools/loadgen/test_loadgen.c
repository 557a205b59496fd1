/*
 * Unit tests of chatweb-loadgen: the response parser (every byte split), the histogram, and the
 * engine against a small blocking toy server on 127.0.0.1 (a thread per connection; the test is
 * the only client).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lg_hist.h"
#include "lg_resp.h"
#include "lg_run.h"

static int failures;

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);           \
            failures++;                                                                        \
        }                                                                                      \
    } while (0)

#define CHECK_EQ(a, b)                                                                         \
    do {                                                                                       \
        long long a_ = (long long)(a), b_ = (long long)(b);                                    \
        if (a_ != b_) {                                                                        \
            fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %lld, %s == %lld\n", __FILE__,      \
                    __LINE__, #a, a_, #b, b_);                                                 \
            failures++;                                                                        \
        }                                                                                      \
    } while (0)

/* ---- parser ---- */

struct sink {
    char buf[4096];
    size_t len;
};

static void collect(void *ud, const char *data, size_t len)
{
    struct sink *s = ud;

    if (s->len + len < sizeof(s->buf)) {
        memcpy(s->buf + s->len, data, len);
        s->len += len;
    }
}

/*
 * Feeds `wire` in pieces of `step` bytes (0 = all at once). Returns the final state; *body gets
 * the de-chunked body, *left the bytes not consumed after the response ended.
 */
static lg_resp_state_e parse(const char *wire, size_t step, struct lg_resp *r, struct sink *body,
                             size_t *left, int eof)
{
    size_t len = strlen(wire), off = 0;

    memset(r, 0, sizeof(*r));
    lg_resp_init(r, 0);
    memset(body, 0, sizeof(*body));
    *left = 0;
    while (off < len) {
        size_t n = step == 0 || len - off < step ? len - off : step;
        long used = lg_resp_feed(r, wire + off, n, collect, body);
        if (used < 0)
            return r->state;
        off += (size_t)used;
        if (r->state == LG_RESP_DONE) {
            *left = len - off;
            break;
        }
    }
    if (eof)
        lg_resp_eof(r);
    return r->state;
}

static void test_parser_one(const char *wire, int eof, lg_resp_state_e want, int status,
                            const char *want_body, int keep_alive, size_t want_left)
{
    size_t steps[] = {0, 1, 2, 3, 7};

    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        struct lg_resp r;
        struct sink body;
        size_t left;
        lg_resp_state_e st = parse(wire, steps[i], &r, &body, &left, eof);
        CHECK_EQ(st, want);
        if (st == LG_RESP_DONE) {
            CHECK_EQ(r.status, status);
            CHECK_EQ(body.len, strlen(want_body));
            CHECK(memcmp(body.buf, want_body, body.len) == 0);
            CHECK_EQ(r.keep_alive, keep_alive);
            CHECK_EQ(left, want_left);
        }
        lg_resp_deinit(&r);
    }
}

static void test_parser(void)
{
    /* Content-Length, keep-alive by default in 1.1 */
    test_parser_one("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 0, LG_RESP_DONE, 200,
                    "hello", 1, 0);
    /* bytes after the response are not consumed */
    test_parser_one("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhiHTTP/1.1", 0, LG_RESP_DONE,
                    200, "hi", 1, 8);
    /* chunked, with an extension and a trailer */
    test_parser_one("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "5;x=y\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-T: 1\r\n\r\n",
                    0, LG_RESP_DONE, 200, "hello world", 1, 0);
    /* Connection: close */
    test_parser_one("HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", 0,
                    LG_RESP_DONE, 503, "", 0, 0);
    /* 100 Continue is skipped */
    test_parser_one("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx",
                    0, LG_RESP_DONE, 201, "x", 1, 0);
    /* body delimited by the close; HTTP/1.0 */
    test_parser_one("HTTP/1.0 200 OK\r\n\r\nuntil the end", 1, LG_RESP_DONE, 200, "until the end",
                    0, 0);
    /* bare LF line ends */
    test_parser_one("HTTP/1.1 200 OK\nContent-Length: 3\n\nabc", 0, LG_RESP_DONE, 200, "abc", 1,
                    0);
    /* 204 has no body */
    test_parser_one("HTTP/1.1 204 No Content\r\n\r\n", 0, LG_RESP_DONE, 204, "", 1, 0);
    /* cut short: the chunked body never ends */
    test_parser_one("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", 1,
                    LG_RESP_CHUNK_DATA, 200, "", 1, 0);
    /* malformed */
    test_parser_one("HTTP/2 200 OK\r\n\r\n", 0, LG_RESP_ERROR, 0, "", 0, 0);
    test_parser_one("HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n", 0, LG_RESP_ERROR, 0, "", 0,
                    0);
    test_parser_one("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 0,
                    LG_RESP_ERROR, 0, "", 0, 0);
    test_parser_one("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 0,
                    LG_RESP_ERROR, 0, "", 0, 0);
    test_parser_one("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", 0,
                    LG_RESP_ERROR, 0, "", 0, 0);
    test_parser_one("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", 0, LG_RESP_ERROR, 0, "",
                    0, 0);

    /* a head larger than the bound is an error, not unbounded growth */
    {
        size_t n = LG_RESP_HEAD_MAX + 100;
        char *big = malloc(n + 1);
        struct lg_resp r;
        struct sink body;
        size_t left;
        memcpy(big, "HTTP/1.1 200 OK\r\nX: ", 20);
        memset(big + 20, 'a', n - 20);
        big[n] = '\0';
        CHECK_EQ(parse(big, 4096, &r, &body, &left, 0), LG_RESP_ERROR);
        lg_resp_deinit(&r);
        free(big);
    }
}

/* ---- histogram ---- */

static void test_hist(void)
{
    static struct lg_hist h, h2;

    lg_hist_init(&h);
    CHECK_EQ(lg_hist_quantile(&h, 0.5), 0);
    for (uint64_t v = 1; v <= 100000; v++)
        lg_hist_add(&h, v);
    CHECK_EQ(h.count, 100000);
    CHECK_EQ(h.min, 1);
    CHECK_EQ(h.max, 100000);
    CHECK_EQ(lg_hist_quantile(&h, 1.0), 100000);
    {
        uint64_t p50 = lg_hist_quantile(&h, 0.5), p99 = lg_hist_quantile(&h, 0.99);
        CHECK(p50 > 50000 * 0.98 && p50 < 50000 * 1.02);
        CHECK(p99 > 99000 * 0.98 && p99 < 99000 * 1.02);
    }
    lg_hist_init(&h2);
    lg_hist_add(&h2, 7);
    CHECK_EQ(lg_hist_quantile(&h2, 0.5), 7);
    lg_hist_add(&h2, UINT64_MAX);
    CHECK_EQ(lg_hist_quantile(&h2, 1.0), UINT64_MAX);
    lg_hist_merge(&h, &h2);
    CHECK_EQ(h.count, 100002);
    CHECK_EQ(h.max, UINT64_MAX);
}

/* ---- engine against a toy server ---- */

typedef enum {
    SRV_KEEPALIVE,  /* Content-Length answers, keeps the connection */
    SRV_CHUNKED,    /* a chunked answer written in small pieces, then keeps the connection */
    SRV_CUT,        /* head and half the body, then close */
    SRV_503,        /* 503 with a body */
    SRV_ONE_SHOT,   /* answers once without Connection: close, then closes (stale keep-alive) */
} srv_mode_e;

struct server {
    int lfd;
    int port;
    srv_mode_e mode;
    atomic_int stop;
    atomic_int requests;
    pthread_t thread;
};

struct conn_arg {
    struct server *s;
    int fd;
};

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads one request (head + Content-Length body). 0, or -1 at EOF/error/stop. */
static int read_request(struct server *s, int fd)
{
    char buf[8192];
    size_t len = 0;
    char *end;
    long cl = 0;

    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ssize_t n;
        if (atomic_load(&s->stop))
            return -1;
        if (poll(&p, 1, 50) <= 0)
            continue;
        n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
        if (n <= 0)
            return -1;
        len += (size_t)n;
        buf[len] = '\0';
        end = strstr(buf, "\r\n\r\n");
        if (end != NULL) {
            char *h = strstr(buf, "Content-Length: ");
            if (h != NULL && h < end)
                cl = strtol(h + 16, NULL, 10);
            if ((long)(len - (size_t)(end + 4 - buf)) >= cl)
                return 0;
        }
        if (len >= sizeof(buf) - 1)
            return -1;
    }
}

static void *conn_main(void *arg)
{
    struct conn_arg *a = arg;
    struct server *s = a->s;
    int fd = a->fd;

    free(a);
    while (read_request(s, fd) == 0) {
        atomic_fetch_add(&s->requests, 1);
        switch (s->mode) {
        case SRV_KEEPALIVE: {
            static const char r[] = "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world";
            if (write_all(fd, r, sizeof(r) - 1) != 0)
                goto out;
            break;
        }
        case SRV_CHUNKED: {
            static const char *const parts[] = {
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "3\r\nwor\r\n",
                "2\r\nld\r\n", "0\r\n\r\n"};
            for (unsigned i = 0; i < 4; i++) {
                if (write_all(fd, parts[i], strlen(parts[i])) != 0)
                    goto out;
                usleep(2000);
            }
            break;
        }
        case SRV_CUT: {
            static const char r[] = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf";
            write_all(fd, r, sizeof(r) - 1);
            goto out;
        }
        case SRV_503: {
            static const char r[] = "HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy";
            if (write_all(fd, r, sizeof(r) - 1) != 0)
                goto out;
            break;
        }
        case SRV_ONE_SHOT: {
            static const char r[] = "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world";
            write_all(fd, r, sizeof(r) - 1);
            usleep(20000); /* the client has time to send its next request first */
            goto out;
        }
        }
    }
out:
    close(fd);
    return NULL;
}

#define MAX_CONN_THREADS 4096

static pthread_t conn_threads[MAX_CONN_THREADS];
static atomic_int nconn_threads;

static void *server_main(void *arg)
{
    struct server *s = arg;

    while (!atomic_load(&s->stop)) {
        struct pollfd p = {.fd = s->lfd, .events = POLLIN};
        struct conn_arg *a;
        int fd, i;
        if (poll(&p, 1, 50) <= 0)
            continue;
        fd = accept(s->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        i = atomic_fetch_add(&nconn_threads, 1);
        a = malloc(sizeof(*a));
        if (i >= MAX_CONN_THREADS || a == NULL) {
            free(a);
            close(fd);
            continue;
        }
        a->s = s;
        a->fd = fd;
        if (pthread_create(&conn_threads[i], NULL, conn_main, a) != 0) {
            free(a);
            close(fd);
            conn_threads[i] = 0;
        }
    }
    return NULL;
}

static void server_start(struct server *s, srv_mode_e mode)
{
    struct sockaddr_in sin = {0};
    socklen_t sl = sizeof(sin);
    int one = 1;

    memset(s, 0, sizeof(*s));
    s->mode = mode;
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s->lfd, (struct sockaddr *)&sin, sizeof(sin)) != 0 || listen(s->lfd, 1024) != 0) {
        perror("toy server");
        exit(1);
    }
    getsockname(s->lfd, (struct sockaddr *)&sin, &sl);
    s->port = ntohs(sin.sin_port);
    atomic_store(&nconn_threads, 0);
    pthread_create(&s->thread, NULL, server_main, s);
}

static void server_stop(struct server *s)
{
    int n;

    atomic_store(&s->stop, 1);
    pthread_join(s->thread, NULL);
    n = atomic_load(&nconn_threads);
    for (int i = 0; i < n && i < MAX_CONN_THREADS; i++)
        if (conn_threads[i] != 0)
            pthread_join(conn_threads[i], NULL);
    memset(conn_threads, 0, sizeof(conn_threads));
    close(s->lfd);
}

static const char REQUEST[] = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";

static void config(struct lg_config *cfg, int port, unsigned conc, uint64_t reqs, int hold)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)&cfg->addr;

    memset(cfg, 0, sizeof(*cfg));
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cfg->addrlen = sizeof(*sin);
    cfg->request = REQUEST;
    cfg->request_len = sizeof(REQUEST) - 1;
    cfg->concurrency = conc;
    cfg->requests = reqs;
    cfg->hold = hold;
    cfg->threads = 1;
    cfg->timeout_ns = 5000000000ull;
    cfg->connect_timeout_ns = 2000000000ull;
}

static struct lg_result res;

static void test_engine(void)
{
    struct server s;
    struct lg_config cfg;

    /* keep-alive: 4 connections carry 200 requests; the text spans no boundary */
    server_start(&s, SRV_KEEPALIVE);
    config(&cfg, s.port, 4, 200, 0);
    cfg.expect = "o w";
    cfg.expect_len = 3;
    CHECK_EQ(lg_run(&cfg, &res), 0);
    CHECK_EQ(res.completed, 200);
    CHECK_EQ(res.connections, 4);
    CHECK_EQ(res.status[200], 200);
    CHECK_EQ(res.ttfb_us.count, 200);
    CHECK_EQ(res.body_bytes, 200 * 11);
    server_stop(&s);

    /* two threads share the work and never issue more than asked */
    server_start(&s, SRV_KEEPALIVE);
    config(&cfg, s.port, 8, 101, 0);
    cfg.threads = 2;
    CHECK_EQ(lg_run(&cfg, &res), 0);
    CHECK_EQ(res.completed, 101);
    CHECK_EQ(atomic_load(&s.requests), 101);
    server_stop(&s);

    /* hold: chunked answers in pieces; the expected text straddles two chunks */
    server_start(&s, SRV_CHUNKED);
    config(&cfg, s.port, 20, 20, 1);
    cfg.expect = "world";
    cfg.expect_len = 5;
    CHECK_EQ(lg_run(&cfg, &res), 0);
    CHECK_EQ(res.completed, 20);
    CHECK_EQ(res.peak_streaming >= 1, 1);
    cfg.expect = "worlds";
    cfg.expect_len = 6;
    CHECK_EQ(lg_run(&cfg, &res), 0);
    CHECK_EQ(res.completed, 0);
    CHECK_EQ(res.failed[LG_FAIL_INVALID], 20);
    server_stop(&s);

    /* paced opening: 10 connections at 200/s take about 45 ms */
    server_start(&s, SRV_CHUNKED);
    config(&cfg, s.port, 10, 10, 1);
    cfg.rate = 200;
    CHECK_EQ(lg_run(&cfg, &res), 0);
    CHECK_EQ(res.completed, 10);
    CHECK(res.duration_ns >= 40000000ull);
    server_stop(&s);

    /* a body cut short */
    server_start(&s, SRV_CUT);
    config(&cfg, s.port, 5, 10, 0);
    CHECK_EQ(lg_run(&cfg, &res), 0);
    CHECK_EQ(res.completed, 0);
    CHECK_EQ(res.failed[LG_FAIL_SHORT], 10);
    server_stop(&s);

    /* a status other than 200; the connection stays usable */
    server_start(&s, SRV_503);
    config(&cfg, s.port, 2, 10, 0);
    CHECK_EQ(lg_run(&cfg, &res), 0);
    CHECK_EQ(res.failed[LG_FAIL_STATUS], 10);
    CHECK_EQ(res.status[503], 10);
    CHECK_EQ(res.connections, 2);
    server_stop(&s);

    /* keep-alive connections closed by the server after each answer: resent, not failed */
    server_start(&s, SRV_ONE_SHOT);
    config(&cfg, s.port, 2, 20, 0);
    CHECK_EQ(lg_run(&cfg, &res), 0);
    CHECK_EQ(res.completed, 20);
    CHECK_EQ(res.failed[LG_FAIL_SHORT], 0);
    CHECK(res.retries > 0);
    server_stop(&s);

    /* nobody listening: connect failures */
    {
        int port;
        server_start(&s, SRV_KEEPALIVE);
        port = s.port;
        server_stop(&s);
        config(&cfg, port, 3, 3, 1);
        CHECK_EQ(lg_run(&cfg, &res), 0);
        CHECK_EQ(res.failed[LG_FAIL_CONNECT], 3);
        CHECK(res.first_error[LG_FAIL_CONNECT][0] != '\0');
    }

    /* a stream that never ends: timeout */
    {
        int lfd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sin = {0};
        socklen_t sl = sizeof(sin);
        sin.sin_family = AF_INET;
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        bind(lfd, (struct sockaddr *)&sin, sizeof(sin));
        listen(lfd, 16); /* the kernel completes the handshake; nobody answers */
        getsockname(lfd, (struct sockaddr *)&sin, &sl);
        config(&cfg, ntohs(sin.sin_port), 2, 2, 1);
        cfg.timeout_ns = 300000000ull;
        CHECK_EQ(lg_run(&cfg, &res), 0);
        CHECK_EQ(res.failed[LG_FAIL_TIMEOUT], 2);
        close(lfd);
    }
}

int main(void)
{
    test_parser();
    test_hist();
    test_engine();
    if (failures > 0) {
        fprintf(stderr, "test_loadgen: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_loadgen: ok\n");
    return 0;
}
