#include "svc/redis.h"

#include <hiredis.h>
#include <async.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include "svc/cfg.h"
#include "svc/log.h"
#include "svc/loop.h"

#define REDIS_POOL_MAX 64
#define RECONNECT_MIN_MS 100
#define RECONNECT_MAX_MS 2000
#define WATCHDOG_MS 250

/* ---- replies: our opaque type is hiredis' redisReply ---- */

int svc_redis_reply_type(const struct svc_redis_reply *r)
{
    return ((const redisReply *)r)->type;
}

const char *svc_redis_reply_str(const struct svc_redis_reply *r, size_t *len)
{
    const redisReply *rr = (const redisReply *)r;

    if (len != NULL)
        *len = rr->str != NULL ? rr->len : 0;
    return rr->str != NULL ? rr->str : "";
}

long long svc_redis_reply_int(const struct svc_redis_reply *r)
{
    return ((const redisReply *)r)->integer;
}

size_t svc_redis_reply_count(const struct svc_redis_reply *r)
{
    const redisReply *rr = (const redisReply *)r;

    return rr->type == REDIS_REPLY_ARRAY ? rr->elements : 0;
}

const struct svc_redis_reply *svc_redis_reply_elem(const struct svc_redis_reply *r, size_t i)
{
    const redisReply *rr = (const redisReply *)r;

    return i < svc_redis_reply_count(r) ? (const struct svc_redis_reply *)rr->element[i] : NULL;
}

void svc_redis_reply_free(struct svc_redis_reply **r)
{
    if (r != NULL && *r != NULL) {
        freeReplyObject(*r);
        *r = NULL;
    }
}

/* ---- URL ---- */

struct redis_url {
    char host[256];
    int port;
    char user[128];
    char password[256];
    int db;
    char dbtxt[12]; /* db as text, for SELECT (built once: no shared buffer between threads) */
};

static int url_parse(const char *url, struct redis_url *u, char *err, size_t errlen)
{
    const char *p, *at, *slash, *hostport;
    char hp[256];
    int64_t db = 0;
    size_t n;

    memset(u, 0, sizeof(*u));
    u->port = 6379;
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen, "must start with redis://");
        return SVC_EINVAL;
    }
    p = url + 8;
    slash = strchr(p, '/');
    at = strrchr(p, '@');
    if (at != NULL && (slash == NULL || at < slash)) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon == NULL) {
            snprintf(err, errlen, "credentials must be [user]:password@");
            return SVC_EINVAL;
        }
        if ((size_t)(colon - p) >= sizeof(u->user) ||
            (size_t)(at - colon - 1) >= sizeof(u->password)) {
            snprintf(err, errlen, "credentials too long");
            return SVC_EINVAL;
        }
        memcpy(u->user, p, (size_t)(colon - p));
        memcpy(u->password, colon + 1, (size_t)(at - colon - 1));
        hostport = at + 1;
    } else {
        hostport = p;
    }
    n = slash != NULL ? (size_t)(slash - hostport) : strlen(hostport);
    if (n == 0 || n >= sizeof(hp)) {
        snprintf(err, errlen, "missing host");
        return SVC_EINVAL;
    }
    memcpy(hp, hostport, n);
    hp[n] = '\0';
    if (strchr(hp, ':') != NULL) {
        if (svc_cfg_parse_addr(hp, u->host, sizeof(u->host), &u->port) != SVC_OK ||
            u->port == 0) {
            snprintf(err, errlen, "bad host:port \"%s\"", hp);
            return SVC_EINVAL;
        }
    } else {
        snprintf(u->host, sizeof(u->host), "%s", hp);
    }
    if (slash != NULL && slash[1] != '\0' &&
        svc_cfg_parse_int(slash + 1, 0, 15, &db) != SVC_OK) {
        snprintf(err, errlen, "database must be 0..15");
        return SVC_EINVAL;
    }
    u->db = (int)db;
    snprintf(u->dbtxt, sizeof(u->dbtxt), "%d", u->db);
    return SVC_OK;
}

int svc_redis_url_check(const char *url, char *err, size_t errlen)
{
    struct redis_url u;

    return url_parse(url, &u, err, errlen);
}

/* The AUTH and SELECT commands a new connection needs, as argv. Returns how many (0..2). */
static int hello_cmds(const struct redis_url *u, const char *argv[2][3], size_t lens[2][3],
                      int argc[2])
{
    int n = 0;

    if (u->password[0] != '\0') {
        int k = 0;
        argv[n][k] = "AUTH";
        lens[n][k++] = 4;
        if (u->user[0] != '\0') {
            argv[n][k] = u->user;
            lens[n][k++] = strlen(u->user);
        }
        argv[n][k] = u->password;
        lens[n][k++] = strlen(u->password);
        argc[n++] = k;
    }
    if (u->db != 0) {
        argv[n][0] = "SELECT";
        lens[n][0] = 6;
        argv[n][1] = u->dbtxt;
        lens[n][1] = strlen(u->dbtxt);
        argc[n++] = 2;
    }
    return n;
}

/* ---- blocking client: a pool of contexts ---- */

struct svc_redis {
    struct redis_url url;
    long timeout_ms;
    pthread_mutex_t lock;
    redisContext *idle[REDIS_POOL_MAX];
    int nidle;
};

int svc_redis_create(struct svc_redis **out, const char *url, long timeout_ms)
{
    struct svc_redis *r = calloc(1, sizeof(*r));
    char err[128];

    *out = NULL;
    if (r == NULL)
        return SVC_ENOMEM;
    if (url_parse(url, &r->url, err, sizeof(err)) != SVC_OK) {
        free(r);
        return SVC_EINVAL;
    }
    r->timeout_ms = timeout_ms > 0 ? timeout_ms : 1000;
    pthread_mutex_init(&r->lock, NULL);
    *out = r;
    return SVC_OK;
}

void svc_redis_destroy(struct svc_redis **rp)
{
    struct svc_redis *r = rp != NULL ? *rp : NULL;

    if (r == NULL)
        return;
    for (int i = 0; i < r->nidle; i++)
        redisFree(r->idle[i]);
    pthread_mutex_destroy(&r->lock);
    free(r);
    *rp = NULL;
}

static redisContext *pool_get(struct svc_redis *r)
{
    struct timeval tv = {r->timeout_ms / 1000, (r->timeout_ms % 1000) * 1000};
    const char *argv[2][3];
    size_t lens[2][3];
    int argc[2], n;
    redisContext *c = NULL;

    pthread_mutex_lock(&r->lock);
    if (r->nidle > 0)
        c = r->idle[--r->nidle];
    pthread_mutex_unlock(&r->lock);
    if (c != NULL)
        return c;
    c = redisConnectWithTimeout(r->url.host, r->url.port, tv);
    if (c == NULL || c->err) {
        if (c != NULL)
            SVC_LOG_WARN(NULL, "redis", "connect %s:%d: %s", r->url.host, r->url.port, c->errstr);
        redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    n = hello_cmds(&r->url, argv, lens, argc);
    for (int i = 0; i < n; i++) {
        redisReply *rep = redisCommandArgv(c, argc[i], argv[i], lens[i]);
        int bad = rep == NULL || rep->type == REDIS_REPLY_ERROR;
        if (rep != NULL && bad)
            SVC_LOG_WARN(NULL, "redis", "%s refused: %s", argv[i][0], rep->str);
        freeReplyObject(rep);
        if (bad) {
            redisFree(c);
            return NULL;
        }
    }
    return c;
}

static void pool_put(struct svc_redis *r, redisContext *c)
{
    pthread_mutex_lock(&r->lock);
    if (c->err == 0 && r->nidle < REDIS_POOL_MAX) {
        r->idle[r->nidle++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&r->lock);
    if (c != NULL)
        redisFree(c); /* broken contexts are discarded, never reused */
}

int svc_redis_cmd(struct svc_redis *r, struct svc_redis_reply **reply, int argc,
                  const char *const *argv, const size_t *argvlen)
{
    redisContext *c = pool_get(r);
    redisReply *rep;
    int rc;

    *reply = NULL;
    if (c == NULL)
        return SVC_EUNAVAIL;
    rep = redisCommandArgv(c, argc, (const char **)argv, argvlen);
    if (rep == NULL) {
        rc = c->err == REDIS_ERR_IO && c->errstr[0] != '\0' &&
                     strstr(c->errstr, "temporarily unavailable") != NULL
                 ? SVC_ETIMEDOUT
                 : SVC_EUNAVAIL;
    } else {
        *reply = (struct svc_redis_reply *)rep;
        rc = SVC_OK;
    }
    pool_put(r, c);
    return rc;
}

/* ---- async client on a loop ---- */

struct pending_cmd {
    svc_redis_cb cb;
    void *data;
};

struct svc_redis_async {
    struct svc_loop *loop;
    struct redis_url url;
    long timeout_ms;
    redisAsyncContext *ac;
    atomic_int connected; /* read by /readyz on the admin thread */
    struct svc_io *io;
    uint32_t events;
    struct svc_timer *reconnect;
    struct svc_timer *watchdog;
    uint64_t backoff;
    long outstanding;
    uint64_t last_progress; /* loop ms of the last reply, or of the first command sent */
    int destroying;
    char addr[INET6_ADDRSTRLEN]; /* the host's numeric address, resolved once (resolve_once) */
};

static void ev_update(struct svc_redis_async *r, uint32_t add, uint32_t del)
{
    uint32_t ev = (r->events | add) & ~del;

    if (ev == r->events)
        return;
    r->events = ev;
    if (r->io != NULL && svc_io_modify(r->io, ev) != SVC_OK)
        SVC_LOG_ERR(NULL, "redis", "cannot change socket events");
}

static void on_ac_io(struct svc_io *io, int fd, uint32_t events, void *data)
{
    struct svc_redis_async *r = data;

    (void)io;
    (void)fd;
    /* One direction per wake-up: the context may be freed inside either call. Level-triggered
     * epoll brings the other direction back on the next iteration. */
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        redisAsyncHandleRead(r->ac);
    else if (events & EPOLLOUT)
        redisAsyncHandleWrite(r->ac);
}

static void ad_add_read(void *p) { ev_update(p, EPOLLIN, 0); }
static void ad_del_read(void *p) { ev_update(p, 0, EPOLLIN); }
static void ad_add_write(void *p) { ev_update(p, EPOLLOUT, 0); }
static void ad_del_write(void *p) { ev_update(p, 0, EPOLLOUT); }

static void ad_cleanup(void *p)
{
    struct svc_redis_async *r = p;

    svc_io_del(&r->io);
    r->events = 0;
}

static void schedule_reconnect(struct svc_redis_async *r)
{
    if (r->destroying)
        return;
    if (svc_timer_start(r->reconnect, r->backoff) != SVC_OK)
        SVC_LOG_ERR(NULL, "redis", "cannot schedule a reconnect");
    r->backoff = r->backoff * 2 > RECONNECT_MAX_MS ? RECONNECT_MAX_MS : r->backoff * 2;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct svc_redis_async *r = ac->data;

    if (status != REDIS_OK) {
        SVC_LOG_WARN(NULL, "redis", "connect %s:%d failed: %s", r->url.host, r->url.port,
                     ac->errstr);
        r->ac = NULL; /* hiredis frees the context after a failed connect */
        schedule_reconnect(r);
        return;
    }
    r->connected = 1;
    r->backoff = RECONNECT_MIN_MS;
    SVC_LOG_INFO(NULL, "redis", "connected to %s:%d", r->url.host, r->url.port);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct svc_redis_async *r = ac->data;

    (void)status;
    r->connected = 0;
    r->ac = NULL;
    r->outstanding = 0;
    if (!r->destroying) {
        SVC_LOG_WARN(NULL, "redis", "connection to %s:%d lost", r->url.host, r->url.port);
        schedule_reconnect(r);
    }
}

static void on_hello_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    redisReply *rep = reply;

    (void)privdata;
    if (rep != NULL && rep->type == REDIS_REPLY_ERROR) {
        SVC_LOG_ERR(NULL, "redis", "AUTH/SELECT refused: %s", rep->str);
        redisAsyncDisconnect(ac);
    }
}

static void do_connect(struct svc_redis_async *r)
{
    const char *argv[2][3];
    size_t lens[2][3];
    int argc[2], n;
    /* hiredis resolves a name synchronously in redisAsyncConnect, which would stall the whole
     * loop at every reconnect: connect to the address resolved when the client was made. */
    redisAsyncContext *ac = redisAsyncConnect(r->addr[0] != '\0' ? r->addr : r->url.host,
                                              r->url.port);

    if (ac == NULL || ac->err) {
        SVC_LOG_WARN(NULL, "redis", "connect %s:%d: %s", r->url.host, r->url.port,
                     ac ? ac->errstr : "out of memory");
        if (ac != NULL)
            redisAsyncFree(ac);
        schedule_reconnect(r);
        return;
    }
    r->ac = ac;
    ac->data = r;
    ac->ev.data = r;
    ac->ev.addRead = ad_add_read;
    ac->ev.delRead = ad_del_read;
    ac->ev.addWrite = ad_add_write;
    ac->ev.delWrite = ad_del_write;
    ac->ev.cleanup = ad_cleanup;
    r->events = 0;
    r->io = svc_io_add(r->loop, ac->c.fd, 0, on_ac_io, r);
    if (r->io == NULL) {
        redisAsyncFree(ac);
        r->ac = NULL;
        schedule_reconnect(r);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* Sent first, so they run before any command queued while connecting. */
    n = hello_cmds(&r->url, argv, lens, argc);
    for (int i = 0; i < n; i++)
        redisAsyncCommandArgv(ac, on_hello_reply, NULL, argc[i], argv[i], lens[i]);
    /* hiredis reports the connect through a write event. */
    ev_update(r, EPOLLOUT, 0);
}

static void on_reconnect(struct svc_timer *t, void *data)
{
    (void)t;
    do_connect(data);
}

/* A Redis that accepts commands but never answers must not hang requests forever. */
static void on_watchdog(struct svc_timer *t, void *data)
{
    struct svc_redis_async *r = data;

    if (r->ac != NULL && r->outstanding > 0 &&
        svc_loop_now(r->loop) - r->last_progress > (uint64_t)r->timeout_ms) {
        SVC_LOG_WARN(NULL, "redis", "no reply for %ld ms; reconnecting", r->timeout_ms);
        redisAsyncDisconnect(r->ac);
    }
    if (svc_timer_start(t, WATCHDOG_MS) != SVC_OK)
        SVC_LOG_ERR(NULL, "redis", "cannot re-arm the watchdog");
}

/*
 * Resolves the host once, when the client is made (at start-up, before the loop serves
 * anything), preferring IPv4 as hiredis tries only the first address. The price: a Redis whose
 * address changes needs a restart of the service (a Kubernetes Service keeps its address). When
 * the name cannot be resolved now, the client falls back to hiredis's own lookup at each connect
 * (logged).
 */
static void resolve_once(struct svc_redis_async *r)
{
    struct addrinfo hints = {0}, *res = NULL, *ai, *pick = NULL;
    int rc;

    hints.ai_socktype = SOCK_STREAM;
    rc = getaddrinfo(r->url.host, NULL, &hints, &res);
    if (rc != 0) {
        SVC_LOG_WARN(NULL, "redis", "cannot resolve %s now (%s): it will be looked up at each "
                     "connect", r->url.host, gai_strerror(rc));
        return;
    }
    for (ai = res; ai != NULL && pick == NULL; ai = ai->ai_next)
        if (ai->ai_family == AF_INET)
            pick = ai;
    if (pick == NULL)
        pick = res;
    if (pick->ai_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)pick->ai_addr)->sin_addr, r->addr,
                  sizeof(r->addr));
    else if (pick->ai_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)(void *)pick->ai_addr)->sin6_addr, r->addr,
                  sizeof(r->addr));
    freeaddrinfo(res);
}

struct svc_redis_async *svc_redis_async_create(struct svc_loop *loop, const char *url,
                                               long timeout_ms)
{
    struct svc_redis_async *r = calloc(1, sizeof(*r));
    char err[128];

    if (r == NULL)
        return NULL;
    if (url_parse(url, &r->url, err, sizeof(err)) != SVC_OK) {
        free(r);
        return NULL;
    }
    r->loop = loop;
    r->timeout_ms = timeout_ms > 0 ? timeout_ms : 1000;
    r->backoff = RECONNECT_MIN_MS;
    resolve_once(r);
    r->reconnect = svc_timer_create(loop, on_reconnect, r);
    r->watchdog = svc_timer_create(loop, on_watchdog, r);
    if (r->reconnect == NULL || r->watchdog == NULL ||
        svc_timer_start(r->watchdog, WATCHDOG_MS) != SVC_OK) {
        svc_redis_async_destroy(&r);
        return NULL;
    }
    do_connect(r);
    return r;
}

void svc_redis_async_destroy(struct svc_redis_async **rp)
{
    struct svc_redis_async *r = rp != NULL ? *rp : NULL;

    if (r == NULL)
        return;
    r->destroying = 1;
    if (r->ac != NULL)
        redisAsyncFree(r->ac); /* runs pending callbacks with NULL replies */
    svc_timer_destroy(&r->reconnect);
    svc_timer_destroy(&r->watchdog);
    svc_io_del(&r->io);
    free(r);
    *rp = NULL;
}

int svc_redis_async_connected(const struct svc_redis_async *r)
{
    return r->connected;
}

static void on_cmd_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct svc_redis_async *r = ac->data;
    struct pending_cmd *pc = privdata;

    if (r->outstanding > 0)
        r->outstanding--;
    r->last_progress = svc_loop_now(r->loop);
    if (pc->cb != NULL) {
        if (reply == NULL)
            pc->cb(r->destroying ? SVC_ECANCELED : SVC_EUNAVAIL, NULL, pc->data);
        else
            pc->cb(SVC_OK, reply, pc->data);
    }
    free(pc);
}

int svc_redis_async_cmd(struct svc_redis_async *r, svc_redis_cb cb, void *data, int argc,
                        const char *const *argv, const size_t *argvlen)
{
    struct pending_cmd *pc;

    if (r->ac == NULL || !r->connected)
        return SVC_EUNAVAIL;
    pc = malloc(sizeof(*pc));
    if (pc == NULL)
        return SVC_ENOMEM;
    pc->cb = cb;
    pc->data = data;
    if (redisAsyncCommandArgv(r->ac, on_cmd_reply, pc, argc, (const char **)argv, argvlen) !=
        REDIS_OK) {
        free(pc);
        return SVC_EUNAVAIL;
    }
    if (r->outstanding++ == 0)
        r->last_progress = svc_loop_now(r->loop);
    return SVC_OK;
}
