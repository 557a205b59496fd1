/*
 * The event-loop Redis client (common/redis.c) and name lookups: hiredis's redisAsyncConnect
 * resolves a host name synchronously, so svc_redis_async_create resolves a redis:// host once and
 * every (re)connect uses the address. getaddrinfo is interposed by this executable (it is looked
 * up in the executable before libc, for hiredis too) so that one name resolves slowly and every
 * lookup is counted. Needs no server: the client reconnects to a closed port, or talks to a
 * listening socket the test reads itself (svc_redis_async_flush, and clients of different URLs
 * made on several threads at once).
 */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include "svc/err.h"
#include "svc/loop.h"
#include "svc/redis.h"
#include "test.h"

#define SLOW_NAME "redis-slow.test"
#define SLOW_MS 300
#define RUN_MS 1600
/* The off-loop lookups (names_off_loop): slower still, so that the bound on the loop's longest
 * gap (half of it) stays far above what a loaded ThreadSanitizer run stretches a tick to, and far
 * below the lookup a loop would wait for. */
#define SLOWER_NAME "redis-slower.test"
#define SLOWER_MS 1000
#define SLOWER_RUN_MS 3200
#define TICK_MS 10

/* counted on the loop's thread and on the lookup threads of common/redis.c */
static atomic_int slow_lookups, other_lookups;

typedef int (*getaddrinfo_fn)(const char *, const char *, const struct addrinfo *,
                              struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    getaddrinfo_fn real = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");

    if (real == NULL)
        return EAI_SYSTEM;
    if (node != NULL && strcmp(node, SLOWER_NAME) == 0) {
        slow_lookups++;
        usleep(SLOWER_MS * 1000);
        return real("127.0.0.1", service, hints, res);
    }
    if (node != NULL && strcmp(node, SLOW_NAME) == 0) {
        /* a resolver that takes its time (a DNS server far away, a timeout and a retry) */
        slow_lookups++;
        usleep(SLOW_MS * 1000);
        return real("127.0.0.1", service, hints, res);
    }
    other_lookups++;
    return real(node, service, hints, res);
}

static uint64_t last_tick, max_gap;
static int ticks;

static void on_tick(void *data, struct svc_timer *t)
{
    uint64_t now = svc_loop_clock_ms();

    (void)data;
    if (last_tick != 0 && now - last_tick > max_gap)
        max_gap = now - last_tick;
    last_tick = now;
    ticks++;
    T_EQ_INT(svc_timer_start(t, TICK_MS), SVC_OK);
}

static void on_stop(void *data, struct svc_timer *t)
{
    (void)t;
    svc_loop_stop(data);
}

/* A port nothing listens on: every connect is refused, and the client keeps reconnecting. */
static int closed_port(void)
{
    struct sockaddr_in sa = {0};
    socklen_t sl = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    T_ASSERT(fd >= 0);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    T_EQ_INT(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    T_EQ_INT(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

/*
 * A redis:// host name is looked up once, in svc_redis_async_create; the reconnects that follow
 * (a refused connection, backoff 100, 200, 400, 800 ms) connect to the address without another
 * lookup of the name, so a timer on the same loop keeps firing on time while they happen.
 */
static void test_reconnect_does_not_resolve_on_loop(void)
{
    struct svc_loop *loop = NULL;
    struct svc_redis_async *r = NULL;
    struct svc_timer *tick = NULL, *stop = NULL;
    char url[128];

    snprintf(url, sizeof(url), "redis://" SLOW_NAME ":%d/0", closed_port());
    T_EQ_INT(svc_loop_create(&loop), SVC_OK);
    T_EQ_INT(svc_redis_async_create(&r, loop, url, 1000, NULL, 0), SVC_OK);
    T_EQ_INT(atomic_load(&slow_lookups), 1); /* at creation, before the loop serves anything */
    atomic_store(&other_lookups, 0);
    T_EQ_INT(svc_timer_create(&tick, loop, on_tick, NULL), SVC_OK);
    T_EQ_INT(svc_timer_create(&stop, loop, on_stop, loop), SVC_OK);
    T_EQ_INT(svc_timer_start(tick, TICK_MS), SVC_OK);
    T_EQ_INT(svc_timer_start(stop, RUN_MS), SVC_OK);
    T_EQ_INT(svc_loop_run(loop), SVC_OK);
    T_EQ_INT(svc_redis_async_connected(r), 0);
    fprintf(stderr, "lookups of the name %d, of the address %d; ticks %d, longest gap %llu ms\n",
            atomic_load(&slow_lookups), atomic_load(&other_lookups), ticks,
            (unsigned long long)max_gap);
    /* it did reconnect: hiredis looks the numeric address up at each connect */
    T_ASSERT(atomic_load(&other_lookups) >= 3);
    T_EQ_INT(atomic_load(&slow_lookups), 1);
    T_ASSERT(max_gap < SLOW_MS / 2);
    svc_timer_destroy(&tick);
    svc_timer_destroy(&stop);
    svc_redis_async_destroy(&r);
    svc_loop_destroy(&loop);
}

/*
 * Sentinel and Cluster seeds (and hosts they announce) are names looked up at every connect: on
 * a thread of their own, so a timer on the loop keeps firing on time while each slow lookup of
 * the sentinels' name (and the reconnects after it fails to connect) goes on.
 */
static void names_off_loop(const char *scheme, const char *path)
{
    struct svc_loop *loop = NULL;
    struct svc_redis_async *r = NULL;
    struct svc_timer *tick = NULL, *stop = NULL;
    char url[160];

    snprintf(url, sizeof(url), "%s://" SLOWER_NAME ":%d," SLOWER_NAME ":%d%s", scheme,
             closed_port(), closed_port(), path);
    atomic_store(&slow_lookups, 0);
    last_tick = max_gap = 0;
    ticks = 0;
    T_EQ_INT(svc_loop_create(&loop), SVC_OK);
    T_EQ_INT(svc_redis_async_create(&r, loop, url, 1000, NULL, 0), SVC_OK);
    T_EQ_INT(svc_timer_create(&tick, loop, on_tick, NULL), SVC_OK);
    T_EQ_INT(svc_timer_create(&stop, loop, on_stop, loop), SVC_OK);
    T_EQ_INT(svc_timer_start(tick, TICK_MS), SVC_OK);
    T_EQ_INT(svc_timer_start(stop, SLOWER_RUN_MS), SVC_OK);
    T_EQ_INT(svc_loop_run(loop), SVC_OK);
    T_EQ_INT(svc_redis_async_connected(r), 0);
    fprintf(stderr, "%s: lookups of the name %d; ticks %d, longest gap %llu ms\n", scheme,
            atomic_load(&slow_lookups), ticks, (unsigned long long)max_gap);
    T_ASSERT(atomic_load(&slow_lookups) >= 2); /* looked up again for the reconnects */
    T_ASSERT(max_gap < SLOWER_MS / 2);
    svc_timer_destroy(&tick);
    svc_timer_destroy(&stop);
    svc_redis_async_destroy(&r); /* with a lookup still running, maybe: it frees itself */
    svc_loop_destroy(&loop);
}

static void test_sentinel_names_off_loop(void)
{
    names_off_loop("redis-sentinel", "/mymaster");
}

static void test_cluster_names_off_loop(void)
{
    names_off_loop("redis-cluster", "");
}

/* ---- svc_redis_async_flush ---- */

/* A loopback socket listening on a free port: the client's connect completes in its backlog
 * before the test accepts it, and the test then reads what the client sent. */
static int listen_loopback(int *port)
{
    struct sockaddr_in sa = {0};
    socklen_t sl = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    T_ASSERT(fd >= 0);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    T_EQ_INT(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    T_EQ_INT(listen(fd, 4), 0);
    T_EQ_INT(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

/* Reads what arrived on fd within wait_ms (0: only what is there now) into buf; the length. */
static size_t read_arrived(int fd, char *buf, size_t cap, int wait_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    ssize_t n;

    if (poll(&p, 1, wait_ms) != 1)
        return 0;
    n = recv(fd, buf, cap - 1, MSG_DONTWAIT);
    T_ASSERT(n >= 0);
    buf[n] = '\0';
    return (size_t)n;
}

struct flush_case {
    struct svc_loop *loop;
    struct svc_redis_async *r;
    int server; /* the accepted connection, as the Redis server would see it */
    int in_callback_read;
};

static void on_connected_poll(void *data, struct svc_timer *t)
{
    struct flush_case *fc = data;

    if (svc_redis_async_connected(fc->r))
        svc_loop_stop(fc->loop);
    else
        T_EQ_INT(svc_timer_start(t, 5), SVC_OK);
}

static const char *const incr_argv[] = {"INCRBY", "tpm", "-7"};

/* A reply's callback queues a command and flushes it: it is on the wire before the callback
 * returns, as when the meter corrects the token counters from a billing or Redis answer. */
static void on_get_reply(void *ctx, int err, const struct svc_redis_reply *rep)
{
    struct flush_case *fc = ctx;
    char buf[256];

    (void)rep;
    T_EQ_INT(err, SVC_OK);
    T_EQ_INT(svc_redis_async_cmd(fc->r, NULL, NULL, 3, incr_argv, NULL), SVC_OK);
    svc_redis_async_flush(fc->r);
    fc->in_callback_read =
        read_arrived(fc->server, buf, sizeof(buf), 1000) > 0 && strstr(buf, "INCRBY") != NULL;
    svc_loop_stop(fc->loop);
}

/*
 * A command is written when the loop next reports the socket writable, which may be after the
 * caller has answered its client; svc_redis_async_flush writes it at once, outside the loop
 * and inside a reply's callback alike.
 */
static void test_flush_writes_now(void)
{
    struct flush_case fc = {0};
    struct svc_timer *poll_t = NULL, *stop = NULL;
    const char *const get_argv[] = {"GET", "tpm"};
    char url[128], buf[256];
    int port, lfd = listen_loopback(&port);

    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", port);
    T_EQ_INT(svc_loop_create(&fc.loop), SVC_OK);
    T_EQ_INT(svc_redis_async_create(&fc.r, fc.loop, url, 30000, NULL, 0), SVC_OK);
    T_EQ_INT(svc_timer_create(&poll_t, fc.loop, on_connected_poll, &fc), SVC_OK);
    T_EQ_INT(svc_timer_create(&stop, fc.loop, on_stop, fc.loop), SVC_OK);
    T_EQ_INT(svc_timer_start(poll_t, 5), SVC_OK);
    T_EQ_INT(svc_timer_start(stop, 5000), SVC_OK);
    T_EQ_INT(svc_loop_run(fc.loop), SVC_OK);
    T_ASSERT(svc_redis_async_connected(fc.r));
    fc.server = accept(lfd, NULL, NULL);
    T_ASSERT(fc.server >= 0);

    /* queued only: nothing reaches the server until the loop runs, or a flush */
    T_EQ_INT(svc_redis_async_cmd(fc.r, NULL, NULL, 3, incr_argv, NULL), SVC_OK);
    T_EQ_INT((int)read_arrived(fc.server, buf, sizeof(buf), 100), 0);
    svc_redis_async_flush(fc.r);
    T_ASSERT(read_arrived(fc.server, buf, sizeof(buf), 1000) > 0);
    T_ASSERT(strstr(buf, "INCRBY") != NULL);
    T_EQ_INT((int)send(fc.server, ":3\r\n", 4, 0), 4); /* its reply, read with the next one */
    svc_redis_async_flush(fc.r);                       /* nothing queued: writes nothing */
    T_EQ_INT((int)read_arrived(fc.server, buf, sizeof(buf), 50), 0);

    /* from inside a reply's callback */
    T_EQ_INT(svc_redis_async_cmd(fc.r, on_get_reply, &fc, 2, get_argv, NULL), SVC_OK);
    svc_redis_async_flush(fc.r);
    T_ASSERT(read_arrived(fc.server, buf, sizeof(buf), 1000) > 0);
    T_ASSERT(strstr(buf, "GET") != NULL);
    T_EQ_INT((int)send(fc.server, "$2\r\n10\r\n", 8, 0), 8);
    T_EQ_INT(svc_timer_start(stop, 5000), SVC_OK);
    T_EQ_INT(svc_loop_run(fc.loop), SVC_OK);
    T_EQ_INT(fc.in_callback_read, 1);

    svc_timer_destroy(&poll_t);
    svc_timer_destroy(&stop);
    svc_redis_async_destroy(&fc.r);
    svc_loop_destroy(&fc.loop);
    close(fc.server);
    close(lfd);
}

/* ---- clients made on several threads at once ---- */

#define HELLO_THREADS 8

struct hello_thread {
    pthread_t tid;
    pthread_barrier_t *go;
    int db;
    char password[16];
};

/* Reads fd until what arrived starts with want, or 2 s passed. 1 when it does. */
static int arrived_as(int fd, const char *want)
{
    char buf[512];
    size_t len = 0, n = strlen(want);
    uint64_t until = svc_loop_clock_ms() + 2000;

    while (len < n && svc_loop_clock_ms() < until) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ssize_t k;

        if (poll(&p, 1, 100) != 1)
            continue;
        k = recv(fd, buf + len, sizeof(buf) - 1 - len, MSG_DONTWAIT);
        if (k <= 0)
            break;
        len += (size_t)k;
    }
    buf[len] = '\0';
    if (len >= n && memcmp(buf, want, n) == 0)
        return 1;
    fprintf(stderr, "expected \"%s\", the server read \"%s\"\n", want, buf);
    return 0;
}

/* The next connection on the listening socket lfd; fails the test when none comes within 5 s. */
static int accept_within(int lfd)
{
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    int fd;

    T_EQ_INT(poll(&p, 1, 5000), 1);
    fd = accept(lfd, NULL, NULL);
    T_ASSERT(fd >= 0);
    return fd;
}

/*
 * One thread's clients, each on a listening socket of the thread's own that never answers: the
 * event-loop client (AUTH and SELECT formatted in svc_redis_async_create, written once it is
 * connected), then the blocking one (SELECT alone, without a password: it waits for each answer;
 * formatted and sent by svc_redis_cmd, which times out waiting). The server must read this
 * thread's password and database, nobody else's.
 */
static void *hello_thread_main(void *arg)
{
    struct hello_thread *h = arg;
    struct flush_case fc = {0};
    struct svc_timer *poll_t = NULL, *stop = NULL;
    struct svc_redis *b = NULL;
    struct svc_redis_reply *rep = NULL;
    const char *const get_argv[] = {"GET", "k"};
    char url[128], want[160], burl[128], bwant[64];
    int port, lfd = listen_loopback(&port), server;

    snprintf(url, sizeof(url), "redis://:%s@127.0.0.1:%d/%d", h->password, port, h->db);
    snprintf(burl, sizeof(burl), "redis://127.0.0.1:%d/%d", port, h->db);
    snprintf(bwant, sizeof(bwant), "*2\r\n$6\r\nSELECT\r\n$%d\r\n%d\r\n", h->db < 10 ? 1 : 2,
             h->db);
    snprintf(want, sizeof(want),
             "*2\r\n$4\r\nAUTH\r\n$%zu\r\n%s\r\n*2\r\n$6\r\nSELECT\r\n$%d\r\n%d\r\n",
             strlen(h->password), h->password, h->db < 10 ? 1 : 2, h->db);
    T_EQ_INT(svc_loop_create(&fc.loop), SVC_OK);
    T_EQ_INT(svc_timer_create(&poll_t, fc.loop, on_connected_poll, &fc), SVC_OK);
    T_EQ_INT(svc_timer_create(&stop, fc.loop, on_stop, fc.loop), SVC_OK);

    pthread_barrier_wait(h->go);
    T_EQ_INT(svc_redis_async_create(&fc.r, fc.loop, url, 30000, NULL, 0), SVC_OK);
    T_EQ_INT(svc_timer_start(poll_t, 5), SVC_OK);
    T_EQ_INT(svc_timer_start(stop, 5000), SVC_OK);
    T_EQ_INT(svc_loop_run(fc.loop), SVC_OK);
    T_ASSERT(svc_redis_async_connected(fc.r));
    server = accept_within(lfd);
    T_ASSERT(arrived_as(server, want));
    close(server);

    pthread_barrier_wait(h->go);
    T_EQ_INT(svc_redis_create(&b, burl, 200, NULL, 0), SVC_OK);
    T_ASSERT(svc_redis_cmd(b, &rep, 2, get_argv, NULL) != SVC_OK);
    server = accept_within(lfd);
    T_ASSERT(arrived_as(server, bwant));
    close(server);

    svc_redis_reply_destroy(&rep);
    svc_redis_destroy(&b);
    svc_timer_destroy(&poll_t);
    svc_timer_destroy(&stop);
    svc_redis_async_destroy(&fc.r);
    svc_loop_destroy(&fc.loop);
    close(lfd);
    return NULL;
}

/*
 * Clients of different URLs made and connecting on several threads at the same time, as each
 * service's event loops and workers do at start. The SELECT text once lived in a static buffer
 * every thread wrote (e1f9a38): ThreadSanitizer (make tsan-unit) reports that race at every run,
 * and a server may read another thread's database (seldom seen without TSan's slowdown).
 */
static void test_clients_on_many_threads(void)
{
    struct hello_thread th[HELLO_THREADS];
    pthread_barrier_t go;

    T_EQ_INT(pthread_barrier_init(&go, NULL, HELLO_THREADS), 0);
    for (int i = 0; i < HELLO_THREADS; i++) {
        th[i].go = &go;
        th[i].db = 2 * i + 1; /* 1 .. 15: one digit and two */
        snprintf(th[i].password, sizeof(th[i].password), "pw-%d", i);
        T_EQ_INT(pthread_create(&th[i].tid, NULL, hello_thread_main, &th[i]), 0);
    }
    for (int i = 0; i < HELLO_THREADS; i++)
        T_EQ_INT(pthread_join(th[i].tid, NULL), 0);
    pthread_barrier_destroy(&go);
}

int main(void)
{
    T_RUN(test_reconnect_does_not_resolve_on_loop);
    T_RUN(test_flush_writes_now);
    T_RUN(test_sentinel_names_off_loop);
    T_RUN(test_cluster_names_off_loop);
    T_RUN(test_clients_on_many_threads);
    return 0;
}
