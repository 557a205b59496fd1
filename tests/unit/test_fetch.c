/*
 * svc_fetch (common/fetch.c) against a raw HTTP/1.1 server in a thread of its own: cancelling a
 * fetch inside curl's callbacks, and svc_fetch_start's allocation failures. malloc, calloc,
 * realloc and free are wrapped at link time (-Wl,--wrap, tests/CMakeLists.txt) so that the n-th
 * allocation of our code can fail and the blocks it made are tracked; libcurl's own allocations
 * are not ours and are not wrapped.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>

#include "svc/err.h"
#include "svc/fetch.h"
#include "svc/loop.h"
#include "test.h"

/* --- allocation wrappers ------------------------------------------------------------------ */

void *__real_malloc(size_t n);
void *__real_calloc(size_t k, size_t n);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t k, size_t n);
void *__wrap_realloc(void *p, size_t n);
void __wrap_free(void *p);

#define LIVE_MAX 64
/* Armed by the main thread only; the server thread makes no allocations through our code. */
static int alloc_armed;   /* count and track allocations */
static int alloc_fail_at; /* the allocation (1-based, since arming) that fails; 0 = none */
static int alloc_count;
static void *live[LIVE_MAX]; /* blocks made while armed and not freed yet */

static void live_add(void *p)
{
    for (int i = 0; i < LIVE_MAX; i++)
        if (live[i] == NULL) {
            live[i] = p;
            return;
        }
    T_FAIL("more than %d live allocations", LIVE_MAX);
}

static void live_del(void *p)
{
    for (int i = 0; i < LIVE_MAX; i++)
        if (live[i] == p && p != NULL)
            live[i] = NULL;
}

static int live_count(void)
{
    int n = 0;
    for (int i = 0; i < LIVE_MAX; i++)
        n += live[i] != NULL;
    return n;
}

/* 1 when this allocation is to fail. */
static int alloc_fails(void)
{
    return alloc_armed && ++alloc_count == alloc_fail_at;
}

void *__wrap_malloc(size_t n)
{
    void *p;
    if (alloc_fails())
        return NULL;
    p = __real_malloc(n);
    if (alloc_armed && p != NULL)
        live_add(p);
    return p;
}

void *__wrap_calloc(size_t k, size_t n)
{
    void *p;
    if (alloc_fails())
        return NULL;
    p = __real_calloc(k, n);
    if (alloc_armed && p != NULL)
        live_add(p);
    return p;
}

void *__wrap_realloc(void *old, size_t n)
{
    void *p;
    if (alloc_fails())
        return NULL;
    p = __real_realloc(old, n);
    if (alloc_armed && p != NULL) {
        live_del(old);
        live_add(p);
    }
    return p;
}

void __wrap_free(void *p)
{
    live_del(p);
    __real_free(p);
}

/* --- the server ---------------------------------------------------------------------------- */

/*
 * Answers each request by its path, then keeps the connection open and says nothing more:
 *   /talk    a chunked 200 and one chunk
 *   /silent  a chunked 200 and no body byte
 * The connections stay open until the process exits (each case is a process).
 */
static int server_port;

static void *server_main(void *arg)
{
    int lfd = (int)(intptr_t)arg;

    for (;;) {
        char req[4096];
        size_t len = 0;
        int fd = accept(lfd, NULL, NULL);

        if (fd < 0)
            continue;
        while (len < sizeof(req) - 1) {
            ssize_t n = recv(fd, req + len, sizeof(req) - 1 - len, 0);
            if (n <= 0)
                break;
            len += (size_t)n;
            req[len] = '\0';
            if (strstr(req, "\r\n\r\n") != NULL)
                break;
        }
        req[len] = '\0';
        static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                   "Transfer-Encoding: chunked\r\n\r\n";
        static const char chunk[] = "a\r\ndata: hi\n\n\r\n";
        if (send(fd, head, sizeof(head) - 1, MSG_NOSIGNAL) < 0)
            continue;
        if (strncmp(req, "GET /talk ", 10) == 0 &&
            send(fd, chunk, sizeof(chunk) - 1, MSG_NOSIGNAL) < 0)
            continue;
        /* fd stays open: the silence is the point */
    }
    return NULL;
}

static void server_start(void)
{
    struct sockaddr_in sa = {0};
    socklen_t sl = sizeof(sa);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    pthread_t th;

    T_ASSERT(lfd >= 0);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    T_EQ_INT(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    T_EQ_INT(listen(lfd, 16), 0);
    T_EQ_INT(getsockname(lfd, (struct sockaddr *)&sa, &sl), 0);
    server_port = ntohs(sa.sin_port);
    T_EQ_INT(pthread_create(&th, NULL, server_main, (void *)(intptr_t)lfd), 0);
    T_EQ_INT(pthread_detach(th), 0);
}

/* --- the client ---------------------------------------------------------------------------- */

#define IDLE_MS 150

struct client {
    struct svc_fetch *f;
    struct client *victim; /* cancelled by this one's first on_data */
    int pause_first;       /* on_data pauses the first time, cancels itself the second */
    int data_calls;
};

static struct svc_loop *loop;
static struct svc_fetch_multi *multi;
static int n_done, n_cancel;

static int on_data(void *ud, struct svc_fetch *f, long status, const char *data, size_t len)
{
    struct client *c = ud;

    (void)f, (void)status, (void)data, (void)len;
    c->data_calls++;
    if (c->pause_first && c->data_calls == 1)
        return SVC_FETCH_PAUSE;
    if (c->victim != NULL) {
        svc_fetch_cancel(&c->victim->f);
        c->victim = NULL;
        return 0;
    }
    svc_fetch_cancel(&c->f); /* c is freed by on_cancel: nothing of it may be used after */
    return 0;
}

/* A late on_done would read the freed client: ASan reports it, the count catches it without. */
static void on_done(void *ud, int err, struct svc_fetch *f, long status, const char *body,
                    size_t len, const char *errmsg)
{
    struct client *c = ud;

    (void)f, (void)status, (void)body, (void)len;
    fprintf(stderr, "on_done after cancel: err=%d (%s) data_calls=%d\n", err, errmsg ? errmsg : "",
            c->data_calls);
    n_done++;
}

static void on_cancel(void *ud)
{
    n_cancel++;
    free(ud);
}

static const struct svc_fetch_callbacks callbacks = {on_data, on_done, on_cancel};

static struct client *client_start(const char *path)
{
    struct client *c = calloc(1, sizeof(*c));
    struct svc_fetch_req req = {0};
    char url[128];

    T_ASSERT(c != NULL);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", server_port, path);
    req.method = "GET";
    req.url = url;
    req.stream = 1;
    req.http = SVC_FETCH_HTTP_1;
    req.idle_timeout_ms = IDLE_MS;
    T_EQ_INT(svc_fetch_start(&c->f, multi, &req, &callbacks, c), SVC_OK);
    return c;
}

static void on_stop(void *data, struct svc_timer *t)
{
    (void)t;
    svc_loop_stop(data);
}

/* Runs the loop for ms milliseconds. */
static void run_for(uint64_t ms)
{
    struct svc_timer *t = NULL;

    T_EQ_INT(svc_timer_create(&t, loop, on_stop, loop), SVC_OK);
    T_EQ_INT(svc_timer_start(t, ms), SVC_OK);
    T_EQ_INT(svc_loop_run(loop), SVC_OK);
    svc_timer_destroy(&t);
}

static void setup(void)
{
    server_start();
    T_EQ_INT(svc_loop_create(&loop), SVC_OK);
    T_EQ_INT(svc_fetch_multi_create(&multi, loop, 0), SVC_OK);
    n_done = n_cancel = 0;
}

static void teardown(void)
{
    svc_fetch_multi_destroy(&multi);
    svc_loop_destroy(&loop);
}

/* A fetch cancels itself in its own on_data: no callback runs afterwards, not even when its idle
 * timeout would have expired, and the fetch is freed. */
static void test_cancel_self_in_data(void)
{
    setup();
    client_start("/talk");
    run_for(IDLE_MS * 4);
    T_EQ_INT(n_cancel, 1);
    T_EQ_INT(n_done, 0);
    T_EQ_INT(svc_fetch_multi_active(multi), 0);
    teardown();
}

/*
 * A fetch cancelled inside another fetch's on_data (inside curl's callbacks) cannot be taken from
 * curl there, and a silent upstream never makes curl report its end: its idle timer must not
 * fire on_done for it afterwards (its ctx is freed already), and it must still be freed.
 */
static void test_cancel_other_in_data(void)
{
    struct client *victim, *killer;

    setup();
    victim = client_start("/silent");
    run_for(50); /* the victim is connected and has its head: a transfer in progress */
    killer = client_start("/talk");
    killer->victim = victim;
    run_for(IDLE_MS / 2);
    T_EQ_INT(n_cancel, 1); /* the victim */
    T_EQ_INT(killer->data_calls, 1);
    svc_fetch_cancel(&killer->f); /* before its own idle timeout */
    T_EQ_INT(n_cancel, 2);
    run_for(IDLE_MS * 4);
    T_EQ_INT(n_done, 0);
    /* and the victim is freed although its upstream stays silent, not left to the end */
    T_EQ_INT(svc_fetch_multi_active(multi), 0);
    teardown();
    T_EQ_INT(n_done, 0);
    T_EQ_INT(n_cancel, 2);
}

static struct svc_fetch *resume_f;

static void on_resume(void *data, struct svc_timer *t)
{
    (void)data, (void)t;
    svc_fetch_pause(resume_f, 0); /* delivers the held chunk: on_data cancels the fetch */
}

/*
 * A fetch paused by its on_data and resumed from a timer (outside curl_multi_socket_action):
 * curl delivers the held bytes inside curl_easy_pause, and on_data cancels the fetch there.
 * The fetch must not be freed under curl's feet, and no callback may run afterwards.
 */
static void test_cancel_in_data_on_resume(void)
{
    struct client *c;
    struct svc_timer *t = NULL;

    setup();
    c = client_start("/talk");
    c->pause_first = 1;
    run_for(50);
    T_EQ_INT(c->data_calls, 1);
    resume_f = c->f;
    T_EQ_INT(svc_timer_create(&t, loop, on_resume, NULL), SVC_OK);
    T_EQ_INT(svc_timer_start(t, 1), SVC_OK);
    run_for(IDLE_MS * 4);
    svc_timer_destroy(&t);
    T_EQ_INT(n_cancel, 1);
    T_EQ_INT(n_done, 0);
    T_EQ_INT(svc_fetch_multi_active(multi), 0);
    teardown();
}

/*
 * svc_fetch_start with each of its allocations failing in turn (the transfer, its header list,
 * its idle timer, its body copy): SVC_ENOMEM, no handle, no callback, and nothing it allocated
 * is left behind. The header list is one block since fetch.c stopped calling curl_slist_append
 * (test_rpc.c covers the curl_slist_append path that remains, in rpc.c).
 */
static void test_start_enomem(void)
{
    static const char *const headers[] = {"Authorization: Bearer x", "X-Request-Id: r1", NULL};
    static const char body[] = "{\"model\":\"m\"}";
    struct svc_fetch_req req = {0};
    struct svc_fetch *f = NULL;
    char url[128];
    int failures = 0, rc = SVC_ENOMEM;

    setup();
    svc_fetch_multi_destroy(&multi);
    /* capped: the per-host queue is made by the first transfer and kept, so make it first */
    T_EQ_INT(svc_fetch_multi_create(&multi, loop, 2), SVC_OK);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/silent", server_port);
    req.method = "POST";
    req.url = url;
    req.headers = headers;
    req.body = body;
    req.body_len = sizeof(body) - 1;
    req.idle_timeout_ms = IDLE_MS;
    T_EQ_INT(svc_fetch_start(&f, multi, &req, &callbacks, NULL), SVC_OK);
    svc_fetch_cancel(&f);
    n_cancel = 0;
    /* and the loop's timer heap has room: its growth is the loop's block, not the start's */
    {
        struct svc_timer *ts[64] = {0};
        for (int i = 0; i < 64; i++)
            T_EQ_INT(svc_timer_create(&ts[i], loop, on_stop, loop) == SVC_OK &&
                         svc_timer_start(ts[i], 60000) == SVC_OK,
                     1);
        for (int i = 0; i < 64; i++)
            svc_timer_destroy(&ts[i]);
    }

    for (int k = 1; k < 100 && rc != SVC_OK; k++) {
        alloc_count = 0;
        alloc_fail_at = k;
        alloc_armed = 1;
        rc = svc_fetch_start(&f, multi, &req, &callbacks, NULL);
        alloc_armed = 0;
        if (rc == SVC_OK) {
            T_ASSERT(alloc_count < k); /* no allocation failed */
            svc_fetch_cancel(&f);
            break;
        }
        failures++;
        T_EQ_INT(rc, SVC_ENOMEM);
        T_ASSERT(f == NULL);
        run_for(1); /* the loop frees destroyed timers after its iteration */
        if (live_count() != 0)
            T_FAIL("allocation %d failed: %d block(s) of the start left behind", k, live_count());
        T_EQ_INT(svc_fetch_multi_active(multi), 0);
    }
    T_EQ_INT(rc, SVC_OK);
    /* libcurl's path: transfer, headers, timer, body; our HTTP/1.1 client's: transfer,
     * request, timer */
    T_ASSERT(failures >= (getenv("CHATWEB_HTTP1_CLIENT") != NULL ? 4 : 3));
    run_for(IDLE_MS * 2);
    T_EQ_INT(n_done, 0);
    teardown();
}

/* The same cases with libcurl carrying the cleartext HTTP/1.1 transfers too (it still carries
 * TLS and HTTP/2 ones, and takes these back with CHATWEB_HTTP1_CLIENT=libcurl). */
static void use_libcurl(void)
{
    T_EQ_INT(setenv("CHATWEB_HTTP1_CLIENT", "libcurl", 1), 0);
}

static void test_libcurl_cancel_self_in_data(void)
{
    use_libcurl();
    test_cancel_self_in_data();
}

static void test_libcurl_cancel_other_in_data(void)
{
    use_libcurl();
    test_cancel_other_in_data();
}

static void test_libcurl_cancel_in_data_on_resume(void)
{
    use_libcurl();
    test_cancel_in_data_on_resume();
}

static void test_libcurl_start_enomem(void)
{
    use_libcurl();
    test_start_enomem();
}

int main(void)
{
    T_RUN(test_cancel_self_in_data);
    T_RUN(test_cancel_other_in_data);
    T_RUN(test_cancel_in_data_on_resume);
    T_RUN(test_start_enomem);
    T_RUN(test_libcurl_cancel_self_in_data);
    T_RUN(test_libcurl_cancel_other_in_data);
    T_RUN(test_libcurl_cancel_in_data_on_resume);
    T_RUN(test_libcurl_start_enomem);
    return 0;
}
