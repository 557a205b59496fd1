/*
 * The event-loop Redis client (common/redis.c) and name lookups: hiredis's redisAsyncConnect
 * resolves a host name synchronously, so svc_redis_async_create resolves a redis:// host once and
 * every (re)connect uses the address. getaddrinfo is interposed by this executable (it is looked
 * up in the executable before libc, for hiredis too) so that one name resolves slowly and every
 * lookup is counted. Needs no server: the client reconnects to a closed port.
 */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "svc/err.h"
#include "svc/loop.h"
#include "svc/redis.h"
#include "test.h"

#define SLOW_NAME "redis-slow.test"
#define SLOW_MS 300
#define RUN_MS 1600
#define TICK_MS 10

static int slow_lookups, other_lookups; /* main thread only: the loop runs there */

typedef int (*getaddrinfo_fn)(const char *, const char *, const struct addrinfo *,
                              struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    getaddrinfo_fn real = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");

    if (real == NULL)
        return EAI_SYSTEM;
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
    T_EQ_INT(slow_lookups, 1); /* at creation, before the loop serves anything */
    other_lookups = 0;
    T_EQ_INT(svc_timer_create(&tick, loop, on_tick, NULL), SVC_OK);
    T_EQ_INT(svc_timer_create(&stop, loop, on_stop, loop), SVC_OK);
    T_EQ_INT(svc_timer_start(tick, TICK_MS), SVC_OK);
    T_EQ_INT(svc_timer_start(stop, RUN_MS), SVC_OK);
    T_EQ_INT(svc_loop_run(loop), SVC_OK);
    T_EQ_INT(svc_redis_async_connected(r), 0);
    fprintf(stderr, "lookups of the name %d, of the address %d; ticks %d, longest gap %llu ms\n",
            slow_lookups, other_lookups, ticks, (unsigned long long)max_gap);
    /* it did reconnect: hiredis looks the numeric address up at each connect */
    T_ASSERT(other_lookups >= 3);
    T_EQ_INT(slow_lookups, 1);
    T_ASSERT(max_gap < SLOW_MS / 2);
    svc_timer_destroy(&tick);
    svc_timer_destroy(&stop);
    svc_redis_async_destroy(&r);
    svc_loop_destroy(&loop);
}

int main(void)
{
    T_RUN(test_reconnect_does_not_resolve_on_loop);
    return 0;
}
