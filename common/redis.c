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
#include <time.h>

#include "svc/cfg.h"
#include "svc/log.h"
#include "svc/loop.h"
#include "svc/util.h"

#include "redis_topo.h"

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

void svc_redis_reply_destroy(struct svc_redis_reply **r)
{
    if (r != NULL && *r != NULL) {
        freeReplyObject(*r);
        *r = NULL;
    }
}

/* ---- URL ---- */

int svc_redis_url_check(const char *url, char *err, size_t errlen)
{
    struct svc__redis_url u;

    return svc__redis_url_parse(url, &u, err, errlen);
}

static int addr_eq(const struct svc__redis_addr *a, const struct svc__redis_addr *b)
{
    return a->port == b->port && strcmp(a->host, b->host) == 0;
}

enum hello_kind {
    HELLO_DATA = 0,     /* AUTH and SELECT of the data nodes */
    HELLO_SENTINEL = 1, /* AUTH of the sentinels */
};

/* The AUTH and SELECT commands a new connection needs, as argv. Returns how many (0..2). */
static int hello_cmds(const struct svc__redis_url *u, int kind, const char *argv[2][3],
                      size_t lens[2][3], int argc[2])
{
    const char *user = kind == HELLO_SENTINEL ? u->sentinel_user : u->user;
    const char *password = kind == HELLO_SENTINEL ? u->sentinel_password : u->password;
    int n = 0;

    if (password[0] != '\0') {
        int k = 0;
        argv[n][k] = "AUTH";
        lens[n][k++] = 4;
        if (user[0] != '\0') {
            argv[n][k] = user;
            lens[n][k++] = strlen(user);
        }
        argv[n][k] = password;
        lens[n][k++] = strlen(password);
        argc[n++] = k;
    }
    if (kind == HELLO_DATA && u->db != 0) {
        argv[n][0] = "SELECT";
        lens[n][0] = 6;
        argv[n][1] = u->dbtxt;
        lens[n][1] = strlen(u->dbtxt);
        argc[n++] = 2;
    }
    return n;
}

static int is_error(const redisReply *rep, const char *prefix)
{
    size_t n = strlen(prefix);

    return rep != NULL && rep->type == REDIS_REPLY_ERROR && rep->len >= n &&
           memcmp(rep->str, prefix, n) == 0;
}

/* ---- blocking client: a pool of contexts per node ---- */

struct pooled {
    redisContext *c;
    struct svc__redis_addr addr;
};

struct svc_redis {
    struct svc__redis_url url;
    long timeout_ms;
    pthread_mutex_t lock; /* idle, master, map and the counters */
    struct pooled idle[REDIS_POOL_MAX];
    int nidle;
    /* Sentinel and Cluster: one thread at a time asks the sentinels or refreshes the map; the
     * others wait for it and use its answer (refreshes counts the answers). */
    pthread_mutex_t topo_lock;
    unsigned long refreshes;
    int stale;                       /* a transport error or READONLY: ask again before use */
    struct svc__redis_addr master;   /* sentinel: the verified master */
    int have_master;
    int sentinel_next;               /* sentinel: the one that answered last is asked first */
    struct svc__redis_slotmap *map;  /* cluster: NULL until the first refresh */
};

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

    nanosleep(&ts, NULL);
}

/* Connects to a and says hello. NULL when that fails (logged, without secrets). */
static redisContext *bconnect(const struct svc_redis *r, const struct svc__redis_addr *a, int kind)
{
    struct timeval tv = {r->timeout_ms / 1000, (r->timeout_ms % 1000) * 1000};
    const char *argv[2][3];
    size_t lens[2][3];
    int argc[2], n;
    redisContext *c = redisConnectWithTimeout(a->host, a->port, tv);

    if (c == NULL || c->err) {
        if (c != NULL)
            SVC_LOG_WARN(NULL, "redis", "connect %s:%d: %s", a->host, a->port, c->errstr);
        redisFree(c);
        return NULL;
    }
    svc__redis_reader_bound(c->reader);
    redisSetTimeout(c, tv);
    n = hello_cmds(&r->url, kind, argv, lens, argc);
    for (int i = 0; i < n; i++) {
        redisReply *rep = redisCommandArgv(c, argc[i], argv[i], lens[i]);
        int bad = rep == NULL || rep->type == REDIS_REPLY_ERROR;
        if (rep != NULL && bad)
            SVC_LOG_WARN(NULL, "redis", "%s on %s:%d refused: %s", argv[i][0], a->host, a->port,
                         rep->str);
        freeReplyObject(rep);
        if (bad) {
            redisFree(c);
            return NULL;
        }
    }
    return c;
}

static redisReply *bcommand(redisContext *c, int argc, const char **argv)
{
    return redisCommandArgv(c, argc, argv, NULL);
}

/*
 * Sentinel: asks the sentinels in turn for the master and checks with ROLE that it is one.
 * seen is the refresh count the caller saw before its failure: when another thread has answered
 * since, its answer is used.
 */
static int sentinel_discover(struct svc_redis *r, unsigned long seen)
{
    int rc = SVC_EUNAVAIL, start;

    pthread_mutex_lock(&r->topo_lock);
    pthread_mutex_lock(&r->lock);
    if (r->refreshes != seen && r->have_master && !r->stale)
        rc = SVC_OK;
    start = r->sentinel_next;
    pthread_mutex_unlock(&r->lock);
    for (int i = 0; rc != SVC_OK && i < r->url.nseeds; i++) {
        int idx = (start + i) % r->url.nseeds;
        const char *ask[] = {"SENTINEL", "get-master-addr-by-name", r->url.master};
        const char *role[] = {"ROLE"};
        struct svc__redis_addr m;
        redisContext *c = bconnect(r, &r->url.seeds[idx], HELLO_SENTINEL);
        redisReply *rep = c != NULL ? bcommand(c, 3, ask) : NULL;
        int ok = svc__redis_sentinel_addr(rep, &m) == 0;

        if (c != NULL && !ok)
            SVC_LOG_WARN(NULL, "redis", "sentinel %s:%d does not know master %s",
                         r->url.seeds[idx].host, r->url.seeds[idx].port, r->url.master);
        freeReplyObject(rep);
        redisFree(c);
        if (!ok)
            continue;
        c = bconnect(r, &m, HELLO_DATA);
        rep = c != NULL ? bcommand(c, 1, role) : NULL;
        ok = svc__redis_role_is_master(rep);
        freeReplyObject(rep);
        redisFree(c);
        if (!ok) {
            SVC_LOG_WARN(NULL, "redis", "%s:%d, named master by sentinel %s:%d, is not one (yet)",
                         m.host, m.port, r->url.seeds[idx].host, r->url.seeds[idx].port);
            continue;
        }
        pthread_mutex_lock(&r->lock);
        if (!r->have_master || !addr_eq(&m, &r->master))
            SVC_LOG_NOTICE(NULL, "redis", "master %s is %s:%d (sentinel %s:%d)", r->url.master,
                           m.host, m.port, r->url.seeds[idx].host, r->url.seeds[idx].port);
        r->master = m;
        r->have_master = 1;
        r->stale = 0;
        r->sentinel_next = idx;
        r->refreshes++;
        pthread_mutex_unlock(&r->lock);
        rc = SVC_OK;
    }
    pthread_mutex_unlock(&r->topo_lock);
    return rc;
}

/* Cluster: reads CLUSTER SLOTS from a known node (the map's, then the URL's seeds). */
static int cluster_refresh(struct svc_redis *r, unsigned long seen)
{
    struct svc__redis_addr cand[SVC__REDIS_NODES_MAX + SVC__REDIS_SEEDS_MAX];
    struct svc__redis_slotmap *map = NULL;
    int ncand = 0, rc = SVC_EUNAVAIL;

    pthread_mutex_lock(&r->topo_lock);
    pthread_mutex_lock(&r->lock);
    if (r->refreshes != seen && r->map != NULL && !r->stale)
        rc = SVC_OK;
    for (int i = 0; r->map != NULL && i < r->map->nnodes; i++)
        cand[ncand++] = r->map->nodes[i];
    pthread_mutex_unlock(&r->lock);
    for (int i = 0; i < r->url.nseeds; i++)
        cand[ncand++] = r->url.seeds[i];
    if (rc != SVC_OK)
        map = malloc(sizeof(*map));
    for (int i = 0; map != NULL && rc != SVC_OK && i < ncand; i++) {
        const char *slots[] = {"CLUSTER", "SLOTS"};
        redisContext *c = bconnect(r, &cand[i], HELLO_DATA);
        redisReply *rep = c != NULL ? bcommand(c, 2, slots) : NULL;

        if (svc__redis_slots_parse(rep, cand[i].host, map) == 0) {
            struct svc__redis_slotmap *old;
            redisContext *drop[REDIS_POOL_MAX];
            int ndrop = 0;
            pthread_mutex_lock(&r->lock);
            old = r->map;
            r->map = map;
            r->stale = 0;
            r->refreshes++;
            /* idle connections to nodes that are no masters any more would hold pool places */
            for (int k = r->nidle - 1; k >= 0; k--) {
                int keep = 0;
                for (int n = 0; n < map->nnodes && !keep; n++)
                    keep = addr_eq(&r->idle[k].addr, &map->nodes[n]);
                if (!keep) {
                    drop[ndrop++] = r->idle[k].c;
                    r->idle[k] = r->idle[--r->nidle];
                }
            }
            pthread_mutex_unlock(&r->lock);
            for (int k = 0; k < ndrop; k++)
                redisFree(drop[k]);
            map = old;
            rc = SVC_OK;
        } else if (c != NULL) {
            SVC_LOG_WARN(NULL, "redis", "CLUSTER SLOTS from %s:%d: %s", cand[i].host,
                         cand[i].port, rep != NULL && rep->type == REDIS_REPLY_ERROR
                                           ? rep->str
                                           : "not a slot map");
        }
        freeReplyObject(rep);
        redisFree(c);
    }
    free(map);
    pthread_mutex_unlock(&r->topo_lock);
    return rc;
}

static int topo_refresh(struct svc_redis *r, unsigned long seen)
{
    return r->url.kind == SVC__REDIS_SENTINEL ? sentinel_discover(r, seen)
                                              : cluster_refresh(r, seen);
}

/* Where a command goes. *seen gets the refresh count the choice was made with. */
static int pick_node(struct svc_redis *r, int argc, const char *const *argv,
                     const size_t *argvlen, struct svc__redis_addr *to, unsigned long *seen)
{
    const char *key;
    size_t keylen;
    int slot = -1;

    if (r->url.kind == SVC__REDIS_STANDALONE) {
        *to = r->url.seeds[0];
        *seen = 0;
        return SVC_OK;
    }
    if (r->url.kind == SVC__REDIS_CLUSTER && svc__redis_cmd_key(argc, argv, argvlen, &key, &keylen))
        slot = (int)svc__redis_key_slot(key, keylen);
    for (int tries = 0; tries < 2; tries++) {
        int ok = 0;
        pthread_mutex_lock(&r->lock);
        *seen = r->refreshes;
        if (!r->stale && r->url.kind == SVC__REDIS_SENTINEL && r->have_master) {
            *to = r->master;
            ok = 1;
        } else if (!r->stale && r->url.kind == SVC__REDIS_CLUSTER && r->map != NULL) {
            int n = slot >= 0 ? r->map->slot_node[slot] : 0;
            if (n >= 0) {
                *to = r->map->nodes[n];
                ok = 1;
            }
        }
        pthread_mutex_unlock(&r->lock);
        if (ok)
            return SVC_OK;
        if (topo_refresh(r, *seen) != SVC_OK)
            return SVC_EUNAVAIL;
    }
    return SVC_EUNAVAIL;
}

static void mark_stale(struct svc_redis *r)
{
    if (r->url.kind == SVC__REDIS_STANDALONE)
        return;
    pthread_mutex_lock(&r->lock);
    r->stale = 1;
    pthread_mutex_unlock(&r->lock);
}

int svc_redis_create(struct svc_redis **out, const char *url, long timeout_ms, char *err,
                     size_t errlen)
{
    struct svc_redis *r = calloc(1, sizeof(*r));
    char why[128];

    *out = NULL;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (r == NULL)
        return SVC_ENOMEM;
    if (svc__redis_url_parse(url, &r->url, why, sizeof(why)) != SVC_OK) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s", why);
        free(r);
        return SVC_EINVAL;
    }
    r->timeout_ms = timeout_ms > 0 ? timeout_ms : 1000;
    pthread_mutex_init(&r->lock, NULL);
    pthread_mutex_init(&r->topo_lock, NULL);
    *out = r;
    return SVC_OK;
}

void svc_redis_destroy(struct svc_redis **rp)
{
    struct svc_redis *r = rp != NULL ? *rp : NULL;

    if (r == NULL)
        return;
    for (int i = 0; i < r->nidle; i++)
        redisFree(r->idle[i].c);
    pthread_mutex_destroy(&r->lock);
    pthread_mutex_destroy(&r->topo_lock);
    free(r->map);
    free(r);
    *rp = NULL;
}

/* An idle context to a, or a new one. Idle contexts to nodes that are no longer the master (or
 * no longer in the slot map) are closed on the way. */
static redisContext *pool_get(struct svc_redis *r, const struct svc__redis_addr *a)
{
    redisContext *c = NULL, *drop[REDIS_POOL_MAX];
    int ndrop = 0;

    pthread_mutex_lock(&r->lock);
    for (int i = r->nidle - 1; i >= 0; i--) {
        int keep = 1;
        if (r->url.kind == SVC__REDIS_SENTINEL && r->have_master)
            keep = addr_eq(&r->idle[i].addr, &r->master);
        if (keep && c == NULL && addr_eq(&r->idle[i].addr, a))
            c = r->idle[i].c;
        else if (keep)
            continue;
        else
            drop[ndrop++] = r->idle[i].c;
        r->idle[i] = r->idle[--r->nidle];
    }
    pthread_mutex_unlock(&r->lock);
    for (int i = 0; i < ndrop; i++)
        redisFree(drop[i]);
    return c != NULL ? c : bconnect(r, a, HELLO_DATA);
}

static void pool_put(struct svc_redis *r, redisContext *c, const struct svc__redis_addr *a)
{
    pthread_mutex_lock(&r->lock);
    if (c->err == 0 && r->nidle < REDIS_POOL_MAX) {
        r->idle[r->nidle].c = c;
        r->idle[r->nidle++].addr = *a;
        c = NULL;
    }
    pthread_mutex_unlock(&r->lock);
    if (c != NULL)
        redisFree(c); /* broken contexts are discarded, never reused */
}

static int transport_rc(const redisContext *c)
{
    return c->err == REDIS_ERR_IO && c->errstr[0] != '\0' &&
                   strstr(c->errstr, "temporarily unavailable") != NULL
               ? SVC_ETIMEDOUT
               : SVC_EUNAVAIL;
}

/* Redirections, re-discoveries and retries after which a command gives up. */
#define REDIS_ATTEMPTS_MAX 6

/* WAIT replicas on c after a write; the number that acknowledged it, 0 on any failure. */
static int wait_replicas(struct svc_redis *r, redisContext *c, int replicas, long wait_ms)
{
    char n[16], ms[24];
    const char *argv[] = {"WAIT", n, ms};
    redisReply *rep;
    int acked = 0;

    /* below the command timeout, or the read would time out before WAIT answers */
    if (wait_ms > r->timeout_ms / 2)
        wait_ms = r->timeout_ms / 2;
    snprintf(n, sizeof(n), "%d", replicas);
    snprintf(ms, sizeof(ms), "%ld", wait_ms > 0 ? wait_ms : 1);
    rep = redisCommandArgv(c, 3, argv, NULL);
    if (rep != NULL && rep->type == REDIS_REPLY_INTEGER)
        acked = (int)rep->integer;
    freeReplyObject(rep);
    return acked;
}

static int cmd_run(struct svc_redis *r, struct svc_redis_reply **reply, int argc,
                   const char *const *argv, const size_t *argvlen, int replicas, long wait_ms,
                   int *acked)
{
    struct svc__redis_addr to;
    unsigned long seen = 0;
    int asking = 0, redirected = 0, rc = SVC_EUNAVAIL;

    *reply = NULL;
    for (int attempt = 0; attempt < REDIS_ATTEMPTS_MAX; attempt++) {
        redisContext *c;
        redisReply *rep = NULL;
        struct svc__redis_addr moved;
        unsigned slot;
        int redirect;

        /* after a redirection, `to` is where it pointed (a map just read from a node that has
         * not yet heard of a failover could point back) */
        if (!asking && !redirected && (rc = pick_node(r, argc, argv, argvlen, &to, &seen)) != SVC_OK)
            return rc;
        redirected = 0;
        if ((c = pool_get(r, &to)) == NULL) {
            /* Nothing was sent: safe to ask for the topology again and retry. */
            rc = SVC_EUNAVAIL;
            if (r->url.kind == SVC__REDIS_STANDALONE)
                return rc;
            mark_stale(r);
            asking = 0;
            if (attempt > 0)
                sleep_ms(50L * attempt);
            continue;
        }
        if (asking) {
            /* ASKING and the command in one write; the first reply is ASKING's +OK. */
            void *ok = NULL;
            if (redisAppendCommand(c, "ASKING") == REDIS_OK &&
                redisAppendCommandArgv(c, argc, (const char **)argv, argvlen) == REDIS_OK &&
                redisGetReply(c, &ok) == REDIS_OK && redisGetReply(c, (void **)&rep) != REDIS_OK)
                rep = NULL;
            freeReplyObject(ok);
            asking = 0;
        } else {
            rep = redisCommandArgv(c, argc, (const char **)argv, argvlen);
        }
        if (rep == NULL) {
            /* The command may have run: no retry here (at most once); the next command asks
             * for the topology first. */
            rc = transport_rc(c);
            pool_put(r, c, &to);
            mark_stale(r);
            return rc;
        }
        if (r->url.kind == SVC__REDIS_CLUSTER && rep->type == REDIS_REPLY_ERROR &&
            (redirect = svc__redis_redirect_parse(rep->str, rep->len, &slot, &moved)) != 0) {
            if (moved.host[0] == '\0')
                snprintf(moved.host, sizeof(moved.host), "%s", to.host);
            freeReplyObject(rep);
            pool_put(r, c, &to);
            if (redirect == 2) {
                to = moved; /* ASK: this command only, the map stays */
                asking = 1;
                continue;
            }
            /* the rest of the map is probably out of date too */
            if (cluster_refresh(r, seen) != SVC_OK)
                SVC_LOG_WARN(NULL, "redis", "cannot refresh the slot map after MOVED");
            pthread_mutex_lock(&r->lock);
            if (r->map != NULL) {
                int n = svc__redis_slotmap_node(r->map, moved.host, moved.port);
                if (n >= 0)
                    r->map->slot_node[slot] = (short)n;
            }
            pthread_mutex_unlock(&r->lock);
            to = moved;
            redirected = 1;
            continue;
        }
        if (r->url.kind == SVC__REDIS_CLUSTER &&
            (is_error(rep, "TRYAGAIN") || is_error(rep, "CLUSTERDOWN")) &&
            attempt + 1 < REDIS_ATTEMPTS_MAX) {
            freeReplyObject(rep);
            pool_put(r, c, &to);
            mark_stale(r);
            sleep_ms(100);
            continue;
        }
        if (r->url.kind == SVC__REDIS_SENTINEL && is_error(rep, "READONLY") &&
            attempt + 1 < REDIS_ATTEMPTS_MAX) {
            /* a demoted master: the command did not run; find the new one */
            SVC_LOG_WARN(NULL, "redis", "%s:%d is read-only now: asking the sentinels", to.host,
                         to.port);
            freeReplyObject(rep);
            redisFree(c);
            mark_stale(r);
            continue;
        }
        if (replicas > 0 && rep->type != REDIS_REPLY_ERROR) {
            *acked = wait_replicas(r, c, replicas, wait_ms);
            /* A master whose replica stopped confirming may have been replaced (a forced
             * failover leaves it writable until the sentinels demote it, ~8 s): ask again
             * before the next command instead of waiting for READONLY. */
            if (*acked < replicas && r->url.kind == SVC__REDIS_SENTINEL)
                mark_stale(r);
        }
        pool_put(r, c, &to);
        *reply = (struct svc_redis_reply *)rep;
        return SVC_OK;
    }
    /* redirected, refused or unreachable every time: never SVC_OK without a reply */
    return rc != SVC_OK ? rc : SVC_EUNAVAIL;
}

int svc_redis_cmd(struct svc_redis *r, struct svc_redis_reply **reply, int argc,
                  const char *const *argv, const size_t *argvlen)
{
    return cmd_run(r, reply, argc, argv, argvlen, 0, 0, NULL);
}

int svc_redis_cmd_wait(struct svc_redis *r, struct svc_redis_reply **reply, int argc,
                       const char *const *argv, const size_t *argvlen, int replicas, long wait_ms,
                       int *acked)
{
    *acked = 0;
    return cmd_run(r, reply, argc, argv, argvlen, replicas > 0 ? replicas : 0, wait_ms, acked);
}

int svc_redis_cmd_pipeline(struct svc_redis *r, int n, const int *argc,
                           const char *const *const *argv, const size_t *const *argvlen,
                           struct svc_redis_reply **replies, int *answered, int replicas,
                           long wait_ms, int *acked)
{
    struct svc__redis_addr to;
    unsigned long seen = 0;
    redisContext *c;
    int rc;

    *answered = 0;
    if (acked != NULL)
        *acked = 0;
    if (n <= 0)
        return SVC_OK;
    if ((rc = pick_node(r, argc[0], argv[0], argvlen[0], &to, &seen)) != SVC_OK)
        return rc;
    if ((c = pool_get(r, &to)) == NULL) {
        mark_stale(r);
        return SVC_EUNAVAIL;
    }
    for (int i = 0; i < n; i++)
        if (redisAppendCommandArgv(c, argc[i], (const char **)argv[i], argvlen[i]) != REDIS_OK) {
            rc = transport_rc(c);
            pool_put(r, c, &to);
            mark_stale(r);
            return rc;
        }
    for (int i = 0; i < n; i++) {
        redisReply *rep = NULL;

        if (redisGetReply(c, (void **)&rep) != REDIS_OK || rep == NULL) {
            rc = transport_rc(c); /* the rest may have run: the caller sends it again */
            pool_put(r, c, &to);
            mark_stale(r);
            return rc;
        }
        if (is_error(rep, "MOVED") || is_error(rep, "ASK") || is_error(rep, "READONLY") ||
            is_error(rep, "TRYAGAIN") || is_error(rep, "CLUSTERDOWN"))
            mark_stale(r); /* the map or the master changed: ask again before the next call */
        replies[i] = (struct svc_redis_reply *)rep;
        (*answered)++;
    }
    if (replicas > 0) {
        int got = wait_replicas(r, c, replicas, wait_ms);
        if (acked != NULL)
            *acked = got;
        if (got < replicas && r->url.kind == SVC__REDIS_SENTINEL)
            mark_stale(r); /* as in cmd_run: the master may have been replaced */
    }
    pool_put(r, c, &to);
    return SVC_OK;
}

/* ---- async client on a loop ---- */

/*
 * One connection of the async client: the server (redis://), the master or a sentinel being
 * asked (redis-sentinel://), or one cluster node (redis-cluster://).
 */
struct aconn {
    struct svc_redis_async *r;
    redisAsyncContext *ac;
    struct svc_io *io;
    uint32_t events;
    struct svc__redis_addr addr;
    struct svc_timer *reconnect;
    uint64_t backoff;
    long outstanding;
    uint64_t last_progress; /* loop ms of the last reply, or of the first command sent */
    int in_use;
    int connected; /* usable for commands (sentinel: after ROLE said master) */
    int retired;   /* cluster: left the map; closes once its replies are in */
    int answered;  /* sentinel conn: the master's address came back */
    struct lookup *lookup;      /* a name being looked up off the loop for this connection */
    struct svc_timer *lookup_t; /* polls it */
    int write_due;              /* commands queued: written by flush_due when the pass ends */
};

#define ASYNC_CONNS_MAX (SVC__REDIS_NODES_MAX + 2)
#define DATA 0     /* redis://, redis-sentinel://: the connection commands use */
#define SENTINEL 1 /* redis-sentinel://: the connection that asks a sentinel */
#define REFRESH_MS 500
#define SENTINEL_WATCH_MS 1000 /* how often the sentinel is asked again while all is well */
#define REDIRECTS_MAX 5

struct pending_cmd {
    svc_redis_cb cb;
    void *data;
    char *buf; /* cluster: the command as sent, for a MOVED/ASK re-send */
    size_t len;
    int redirects;
    int wait;                 /* a WAIT: its answer updates replicated_ms */
    unsigned long epoch;      /* master_epoch when it was sent */
};

struct svc_redis_async {
    struct svc_loop *loop;
    struct svc__redis_url url;
    long timeout_ms;
    atomic_int connected; /* read by /readyz on the admin thread */
    struct svc_timer *watchdog;
    int destroying;
    struct aconn conns[ASYNC_CONNS_MAX];
    char addr[INET6_ADDRSTRLEN]; /* redis://: the host's numeric address (resolve_once) */
    /* sentinel */
    int sentinel_idx;
    int sentinel_tries;
    int asking;               /* a question is in flight on conns[SENTINEL] */
    int sentinel_pending;     /* conns[SENTINEL]'s (re)connect timer is armed */
    int moving;               /* conns[DATA] closes because the sentinel named moving_to */
    struct svc__redis_addr moving_to;
    struct svc_timer *watch;  /* asks again every SENTINEL_WATCH_MS */
    unsigned long master_epoch; /* conns[DATA] was pointed at another master this many times */
    uint64_t replicated_ms;     /* a WAIT on this master last counted a replica (0: none yet) */
    /* cluster */
    struct svc__redis_slotmap *map;
    short node_conn[SVC__REDIS_NODES_MAX]; /* map node -> conns index */
    struct svc_timer *refresh;
    int refreshing;
    int dirty; /* the map may be out of date: refresh until every owner is connected */
    struct svc_timer *flush; /* zero-delay: writes the commands of this loop pass (flush_due) */
    int flush_armed;
};

static void conn_lost(struct aconn *c);
static int aconn_connect(struct aconn *c);
static void on_lookup_timer(void *data, struct svc_timer *t);

static void ev_update(struct aconn *c, uint32_t add, uint32_t del)
{
    uint32_t ev = (c->events | add) & ~del;

    if (ev == c->events)
        return;
    c->events = ev;
    if (c->io != NULL && svc_io_modify(c->io, ev) != SVC_OK)
        SVC_LOG_ERR(NULL, "redis", "cannot change socket events");
}

static void on_ac_io(void *data, struct svc_io *io, int fd, uint32_t events)
{
    struct aconn *c = data;

    (void)io;
    (void)fd;
    /* One direction per wake-up: the context may be freed inside either call. Level-triggered
     * epoll brings the other direction back on the next iteration. */
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        redisAsyncHandleRead(c->ac);
    else if (events & EPOLLOUT)
        redisAsyncHandleWrite(c->ac);
}

static void ad_add_read(void *p) { ev_update(p, EPOLLIN, 0); }
static void ad_del_read(void *p) { ev_update(p, 0, EPOLLIN); }
static void ad_del_write(void *p) { ev_update(p, 0, EPOLLOUT); }

/*
 * hiredis asks for the write event after every command it queues. Arming EPOLLOUT for it costs
 * two epoll_ctl calls per command (on, then off once written) and a loop pass before the bytes
 * leave. On a connected socket the commands are instead written when this loop pass ends
 * (flush_due, a zero-delay timer): every command queued in the pass goes out in one write, and
 * EPOLLOUT is armed only when the socket does not take it all. While connecting, the write event
 * is how hiredis learns the connection is up, so it is armed as asked.
 */
static void ad_add_write(void *p)
{
    struct aconn *c = p;
    struct svc_redis_async *r = c->r;

    if (c->events & EPOLLOUT)
        return; /* already waiting for the socket to drain */
    if (c->ac == NULL || !(c->ac->c.flags & REDIS_CONNECTED) || r->flush == NULL) {
        ev_update(c, EPOLLOUT, 0);
        return;
    }
    c->write_due = 1;
    if (!r->flush_armed) {
        if (svc_timer_start(r->flush, 0) != SVC_OK) {
            ev_update(c, EPOLLOUT, 0);
            return;
        }
        r->flush_armed = 1;
    }
}

/*
 * Writes what c has queued, now. redisBufferWrite, not redisAsyncHandleWrite: that frees the
 * context on an error, which must not happen inside one of its callbacks (svc_redis_async_flush
 * runs in them). Bytes left over, a failed write or a connection still connecting arm the write
 * event, whose handler finishes the write or disconnects outside any callback.
 */
static void write_now(struct aconn *c)
{
    int done = 0;

    c->write_due = 0;
    if (c->ac == NULL)
        return;
    if ((c->ac->c.flags & REDIS_CONNECTED) && redisBufferWrite(&c->ac->c, &done) == REDIS_OK &&
        done)
        ev_update(c, 0, EPOLLOUT);
    else
        ev_update(c, EPOLLOUT, 0);
}

/* The timer of ad_add_write: writes what each connection queued in the pass (one armed for the
 * write event is written by its handler). */
static void flush_due(void *data, struct svc_timer *t)
{
    struct svc_redis_async *r = data;

    (void)t;
    r->flush_armed = 0;
    for (int i = 0; i < ASYNC_CONNS_MAX; i++) {
        struct aconn *c = &r->conns[i];

        if (c->write_due && !(c->events & EPOLLOUT))
            write_now(c);
        c->write_due = 0;
    }
}

static void ad_cleanup(void *p)
{
    struct aconn *c = p;

    svc_io_del(&c->io);
    c->events = 0;
    c->write_due = 0;
}

static int is_sentinel_conn(const struct aconn *c)
{
    return c->r->url.kind == SVC__REDIS_SENTINEL && c == &c->r->conns[SENTINEL];
}

static void update_connected(struct svc_redis_async *r)
{
    int ok;

    if (r->url.kind != SVC__REDIS_CLUSTER) {
        ok = r->conns[DATA].connected;
    } else {
        ok = r->map != NULL;
        for (int n = 0; ok && n < r->map->nnodes; n++)
            ok = r->conns[r->node_conn[n]].connected;
    }
    r->connected = ok;
}

static void schedule(struct svc_timer *t, uint64_t ms)
{
    if (t != NULL && svc_timer_start(t, ms) != SVC_OK)
        SVC_LOG_ERR(NULL, "redis", "cannot start a timer");
}

static void schedule_reconnect(struct aconn *c)
{
    if (c->r->destroying)
        return;
    schedule(c->reconnect, c->backoff);
    c->backoff = c->backoff * 2 > RECONNECT_MAX_MS ? RECONNECT_MAX_MS : c->backoff * 2;
}

static void request_refresh(struct svc_redis_async *r, uint64_t ms)
{
    r->dirty = 1;
    if (!r->destroying)
        schedule(r->refresh, ms);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct aconn *c = ac->data;
    struct svc_redis_async *r = c->r;

    if (status != REDIS_OK) {
        SVC_LOG_WARN(NULL, "redis", "connect %s:%d failed: %s", c->addr.host, c->addr.port,
                     ac->errstr);
        c->ac = NULL; /* hiredis frees the context after a failed connect */
        conn_lost(c);
        return;
    }
    if (is_sentinel_conn(c))
        return;
    c->backoff = RECONNECT_MIN_MS;
    if (r->url.kind != SVC__REDIS_SENTINEL) {
        c->connected = 1;
        SVC_LOG_INFO(NULL, "redis", "connected to %s:%d", c->addr.host, c->addr.port);
        update_connected(r);
        if (r->url.kind == SVC__REDIS_CLUSTER && (r->map == NULL || r->dirty))
            request_refresh(r, 0);
    }
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct aconn *c = ac->data;

    (void)status;
    c->connected = 0;
    c->ac = NULL;
    c->outstanding = 0;
    if (!c->r->destroying) {
        if (!c->retired && !is_sentinel_conn(c))
            SVC_LOG_WARN(NULL, "redis", "connection to %s:%d lost", c->addr.host, c->addr.port);
        conn_lost(c);
    }
}

/*
 * Closes c's connection; conn_lost follows. A connected context is closed after its pending
 * replies (the disconnect callback runs); one still connecting is freed at once, and hiredis
 * runs no disconnect callback for it, so its loss is reported here.
 */
static void aconn_close(struct aconn *c)
{
    redisAsyncContext *ac = c->ac;

    if (ac == NULL)
        return;
    if (ac->c.flags & REDIS_CONNECTED) {
        redisAsyncDisconnect(ac);
        return;
    }
    c->ac = NULL;
    c->connected = 0;
    c->outstanding = 0;
    redisAsyncFree(ac); /* pending callbacks get NULL replies */
    conn_lost(c);
}

/* Sentinel: asks the next sentinel (now, or after the backoff once all were asked). */
static void sentinel_next(struct svc_redis_async *r, int advance)
{
    struct aconn *s = &r->conns[SENTINEL];

    if (advance) {
        r->sentinel_idx = (r->sentinel_idx + 1) % r->url.nseeds;
        r->sentinel_tries++;
    }
    s->addr = r->url.seeds[r->sentinel_idx];
    r->sentinel_pending = 1;
    if (r->sentinel_tries >= r->url.nseeds) {
        r->sentinel_tries = 0;
        schedule_reconnect(s);
    } else {
        schedule(s->reconnect, 0);
    }
}

static void conn_lost(struct aconn *c)
{
    struct svc_redis_async *r = c->r;

    update_connected(r);
    if (r->destroying)
        return;
    if (c->retired) {
        c->in_use = 0;
        c->retired = 0;
        svc_timer_stop(c->reconnect);
        return;
    }
    switch (r->url.kind) {
    case SVC__REDIS_STANDALONE:
        schedule_reconnect(c);
        break;
    case SVC__REDIS_SENTINEL:
        if (c == &r->conns[SENTINEL]) {
            /* the next sentinel (after a backoff once every one failed) */
            r->asking = 0;
            sentinel_next(r, 1);
        } else if (r->moving) {
            /* closed for the master the sentinel named: go there at once */
            r->moving = 0;
            c->addr = r->moving_to;
            if (aconn_connect(c) != SVC_OK)
                schedule_reconnect(c);
        } else {
            /* The master is gone or no longer one: ask where it is now, after the backoff (a
             * demoted master the sentinels still name must not make a reconnect spin). */
            schedule_reconnect(c);
        }
        break;
    default:
        schedule_reconnect(c);
        request_refresh(r, 100);
        break;
    }
}

static void on_hello_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    redisReply *rep = reply;
    struct aconn *c = ac->data;

    (void)privdata;
    if (rep != NULL && rep->type == REDIS_REPLY_ERROR) {
        SVC_LOG_ERR(NULL, "redis", "AUTH/SELECT on %s:%d refused: %s", c->addr.host,
                    c->addr.port, rep->str);
        redisAsyncDisconnect(ac);
    }
}

/* Sentinel: the master's ROLE, before the client takes commands. */
static void on_role_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct aconn *c = ac->data;

    (void)privdata;
    if (reply == NULL)
        return;
    if (!svc__redis_role_is_master(reply)) {
        SVC_LOG_WARN(NULL, "redis", "%s:%d is not a master (yet): asking the sentinels again",
                     c->addr.host, c->addr.port);
        redisAsyncDisconnect(ac);
        return;
    }
    c->connected = 1;
    c->backoff = RECONNECT_MIN_MS;
    c->r->sentinel_tries = 0;
    c->r->conns[SENTINEL].backoff = RECONNECT_MIN_MS;
    SVC_LOG_NOTICE(NULL, "redis", "connected to master %s at %s:%d", c->r->url.master,
                   c->addr.host, c->addr.port);
    update_connected(c->r);
}

/*
 * Sentinel: the answer to get-master-addr-by-name. The connection stays open and is asked again
 * every SENTINEL_WATCH_MS, so a master that is replaced while it still answers (a forced
 * failover leaves it writable until the sentinels demote it) is left within about a second.
 */
static void on_sentinel_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct aconn *s = ac->data;
    struct svc_redis_async *r = s->r;
    struct aconn *data = &r->conns[DATA];
    struct svc__redis_addr m;

    (void)privdata;
    r->asking = 0;
    if (reply == NULL || r->destroying)
        return;
    if (svc__redis_sentinel_addr(reply, &m) != 0) {
        SVC_LOG_WARN(NULL, "redis", "sentinel %s:%d does not know master %s", s->addr.host,
                     s->addr.port, r->url.master);
        redisAsyncDisconnect(ac); /* -> conn_lost: the next sentinel */
        return;
    }
    s->answered = 1;
    r->sentinel_tries = 0;
    if (data->ac == NULL) {
        svc_timer_stop(data->reconnect);
        data->addr = m;
        if (aconn_connect(data) != SVC_OK)
            schedule_reconnect(data);
    } else if (!addr_eq(&data->addr, &m)) {
        SVC_LOG_NOTICE(NULL, "redis", "sentinel %s:%d names %s:%d as master %s now (was %s:%d)",
                       s->addr.host, s->addr.port, m.host, m.port, r->url.master,
                       data->addr.host, data->addr.port);
        data->connected = 0;
        update_connected(r);
        r->moving = 1;
        r->moving_to = m;
        r->master_epoch++;
        r->replicated_ms = 0;
        aconn_close(data); /* -> conn_lost -> connects to m */
    }
}

/* Sentinel: asks where the master is (on the open sentinel connection, or a new one). */
static void sentinel_ask(struct svc_redis_async *r)
{
    struct aconn *s = &r->conns[SENTINEL];
    const char *ask[] = {"SENTINEL", "get-master-addr-by-name", r->url.master};

    if (r->destroying)
        return;
    if (s->ac == NULL) {
        if (!r->sentinel_pending)
            sentinel_next(r, 0);
        return;
    }
    if (!s->answered || r->asking)
        return; /* connecting, or a question is in flight: its answer comes */
    if (redisAsyncCommandArgv(s->ac, on_sentinel_reply, NULL, 3, ask, NULL) == REDIS_OK)
        r->asking = 1;
}

static void on_watch(void *data, struct svc_timer *t)
{
    struct svc_redis_async *r = data;

    sentinel_ask(r);
    schedule(t, SENTINEL_WATCH_MS);
}

/* ---- name lookups off the loop ----
 * hiredis resolves a name synchronously in redisAsyncConnect, which would stall every stream of
 * the loop for as long as DNS takes, at every reconnect. A name (a Sentinel or Cluster seed, an
 * announced host name, a redis:// host not resolved at start) is looked up on a thread of its
 * own; the connection polls for the answer with a timer and then connects to the address. The
 * thread touches only its lookup, which it and the connection each hold a reference to, so a
 * client destroyed meanwhile just drops its reference. */

struct lookup {
    atomic_int refs;
    atomic_int done;
    int rc; /* getaddrinfo's, once done */
    char host[SVC__REDIS_HOST_MAX];
    char addr[INET6_ADDRSTRLEN];
};

#define LOOKUP_POLL_MS 5
#define LOOKUP_PENDING 1 /* lookup_poll: the thread has not answered yet */

static int resolve_host(const char *host, char *out, size_t outlen);

static void lookup_unref(struct lookup **lkp)
{
    struct lookup *lk = *lkp;

    *lkp = NULL;
    if (lk != NULL && atomic_fetch_sub(&lk->refs, 1) == 1)
        free(lk);
}

static void *lookup_main(void *arg)
{
    struct lookup *lk = arg;

    lk->rc = resolve_host(lk->host, lk->addr, sizeof(lk->addr));
    atomic_store(&lk->done, 1);
    lookup_unref(&lk);
    return NULL;
}

static int is_numeric(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];

    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/*
 * The address of host for c: SVC_OK with it in out once looked up, LOOKUP_PENDING while the lookup
 * runs (c->lookup_t polls it and connects again), SVC_EUNAVAIL when it failed.
 */
static int lookup_poll(struct aconn *c, const char *host, char *out, size_t outlen)
{
    struct lookup *lk = c->lookup;
    pthread_attr_t attr;
    pthread_t th;
    int rc;

    if (lk != NULL && strcmp(lk->host, host) != 0)
        lookup_unref(&c->lookup); /* the connection was pointed elsewhere meanwhile */
    if ((lk = c->lookup) == NULL) {
        if (c->lookup_t == NULL &&
            svc_timer_create(&c->lookup_t, c->r->loop, on_lookup_timer, c) != SVC_OK)
            return SVC_EUNAVAIL;
        if ((lk = calloc(1, sizeof(*lk))) == NULL)
            return SVC_EUNAVAIL;
        svc_util_str_copy(lk->host, sizeof(lk->host), host);
        atomic_init(&lk->refs, 2);
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        rc = pthread_create(&th, &attr, lookup_main, lk);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            free(lk);
            SVC_LOG_WARN(NULL, "redis", "cannot start a lookup of %s", host);
            return SVC_EUNAVAIL;
        }
        c->lookup = lk;
    }
    if (!atomic_load(&lk->done)) {
        schedule(c->lookup_t, LOOKUP_POLL_MS);
        return LOOKUP_PENDING;
    }
    rc = lk->rc;
    svc_util_str_copy(out, outlen, lk->addr);
    lookup_unref(&c->lookup);
    if (rc != 0) {
        SVC_LOG_WARN(NULL, "redis", "cannot resolve %s: %s", host, gai_strerror(rc));
        return SVC_EUNAVAIL;
    }
    return SVC_OK;
}

/* Opens c's connection and queues its hello (AUTH, SELECT; ROLE or the sentinel question).
 * SVC_OK also while its host's name is still being looked up (the lookup connects it). */
static int aconn_connect(struct aconn *c)
{
    struct svc_redis_async *r = c->r;
    const char *argv[2][3];
    size_t lens[2][3];
    int argc[2], n, sentinel = is_sentinel_conn(c);
    /* hiredis resolves a name synchronously in redisAsyncConnect, which would stall the whole
     * loop at every reconnect: redis:// connects to the address resolved when the client was
     * made; sentinels and cluster nodes announce addresses. */
    const char *host =
        r->url.kind == SVC__REDIS_STANDALONE && r->addr[0] != '\0' ? r->addr : c->addr.host;
    char numeric[INET6_ADDRSTRLEN];
    redisAsyncContext *ac;
    int rc;

    if (!is_numeric(host)) {
        if ((rc = lookup_poll(c, host, numeric, sizeof(numeric))) == LOOKUP_PENDING)
            return SVC_OK;
        if (rc != SVC_OK)
            return rc;
        host = numeric;
    }
    ac = redisAsyncConnect(host, c->addr.port);
    c->answered = 0;
    c->connected = 0;
    if (ac == NULL || ac->err) {
        SVC_LOG_WARN(NULL, "redis", "connect %s:%d: %s", c->addr.host, c->addr.port,
                     ac ? ac->errstr : "out of memory");
        if (ac != NULL)
            redisAsyncFree(ac);
        return SVC_EUNAVAIL;
    }
    svc__redis_reader_bound(ac->c.reader);
    c->ac = ac;
    ac->data = c;
    ac->ev.data = c;
    ac->ev.addRead = ad_add_read;
    ac->ev.delRead = ad_del_read;
    ac->ev.addWrite = ad_add_write;
    ac->ev.delWrite = ad_del_write;
    ac->ev.cleanup = ad_cleanup;
    c->events = 0;
    c->outstanding = 0;
    if (svc_io_add(&c->io, r->loop, ac->c.fd, 0, on_ac_io, c) != SVC_OK) {
        redisAsyncFree(ac);
        c->ac = NULL;
        return SVC_EUNAVAIL;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* Sent first, so they run before any command queued while connecting. */
    n = hello_cmds(&r->url, sentinel ? HELLO_SENTINEL : HELLO_DATA, argv, lens, argc);
    for (int i = 0; i < n; i++)
        redisAsyncCommandArgv(ac, on_hello_reply, NULL, argc[i], argv[i], lens[i]);
    if (sentinel) {
        const char *ask[] = {"SENTINEL", "get-master-addr-by-name", r->url.master};
        if (redisAsyncCommandArgv(ac, on_sentinel_reply, NULL, 3, ask, NULL) == REDIS_OK)
            r->asking = 1;
    } else if (r->url.kind == SVC__REDIS_SENTINEL) {
        const char *role[] = {"ROLE"};
        redisAsyncCommandArgv(ac, on_role_reply, NULL, 1, role, NULL);
    }
    /* hiredis reports the connect through a write event. */
    ev_update(c, EPOLLOUT, 0);
    return SVC_OK;
}

/* Connects c; when that fails at once, a sentinel conn asks the next sentinel, any other is lost
 * (and reconnects after its backoff). */
static void connect_or_move_on(struct aconn *c)
{
    if (aconn_connect(c) != SVC_OK) {
        if (is_sentinel_conn(c))
            sentinel_next(c->r, 1);
        else
            conn_lost(c);
    }
}

static void on_reconnect(void *data, struct svc_timer *t)
{
    struct aconn *c = data;

    (void)t;
    if (is_sentinel_conn(c))
        c->r->sentinel_pending = 0;
    if (c->ac != NULL || c->r->destroying)
        return;
    if (c->r->url.kind == SVC__REDIS_SENTINEL && c == &c->r->conns[DATA]) {
        sentinel_ask(c->r); /* its answer connects this one */
        return;
    }
    connect_or_move_on(c);
}

/* A lookup of c's host may have finished: connect (or fail as a refused connect would). */
static void on_lookup_timer(void *data, struct svc_timer *t)
{
    struct aconn *c = data;

    (void)t;
    if (c->ac != NULL || c->r->destroying || c->lookup == NULL)
        return;
    connect_or_move_on(c);
}

/* Takes a free slot of conns for addr (cluster), or finds the one already there. */
static struct aconn *conn_for(struct svc_redis_async *r, const struct svc__redis_addr *a)
{
    struct aconn *free_slot = NULL;

    for (int i = 0; i < ASYNC_CONNS_MAX; i++) {
        struct aconn *c = &r->conns[i];
        if (c->in_use && addr_eq(&c->addr, a)) {
            c->retired = 0; /* back in the map: it will reconnect when it drops */
            return c;
        }
        if (!c->in_use && free_slot == NULL)
            free_slot = c;
    }
    if (free_slot == NULL)
        return NULL;
    if (free_slot->reconnect == NULL &&
        svc_timer_create(&free_slot->reconnect, r->loop, on_reconnect, free_slot) != SVC_OK)
        return NULL;
    free_slot->in_use = 1;
    free_slot->retired = 0;
    free_slot->addr = *a;
    free_slot->backoff = RECONNECT_MIN_MS;
    if (aconn_connect(free_slot) != SVC_OK)
        schedule_reconnect(free_slot);
    return free_slot;
}

/* Cluster: takes a new slot map; connections to nodes that left it close when drained. */
static void map_apply(struct svc_redis_async *r, struct svc__redis_slotmap *map)
{
    int used[ASYNC_CONNS_MAX] = {0};

    for (int n = 0; n < map->nnodes; n++) {
        struct aconn *c = conn_for(r, &map->nodes[n]);
        if (c == NULL) {
            SVC_LOG_ERR(NULL, "redis", "too many cluster nodes");
            free(map);
            return;
        }
        r->node_conn[n] = (short)(c - r->conns);
        used[c - r->conns] = 1;
    }
    for (int i = 0; i < ASYNC_CONNS_MAX; i++) {
        struct aconn *c = &r->conns[i];
        if (!c->in_use || used[i] || c->retired)
            continue;
        c->retired = 1;
        svc_timer_stop(c->reconnect);
        if (c->ac != NULL)
            aconn_close(c); /* after its pending replies */
        else
            c->in_use = c->retired = 0;
    }
    free(r->map);
    r->map = map;
    update_connected(r);
}

static void on_slots_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct aconn *c = ac->data;
    struct svc_redis_async *r = c->r;
    struct svc__redis_slotmap *map;

    (void)privdata;
    r->refreshing = 0;
    if (reply == NULL || r->destroying)
        return;
    map = malloc(sizeof(*map));
    if (map == NULL || svc__redis_slots_parse(reply, c->addr.host, map) != 0) {
        SVC_LOG_WARN(NULL, "redis", "CLUSTER SLOTS from %s:%d: %s", c->addr.host, c->addr.port,
                     ((redisReply *)reply)->type == REDIS_REPLY_ERROR ? ((redisReply *)reply)->str
                                                                      : "not a slot map");
        free(map);
        return;
    }
    r->dirty = 0;
    map_apply(r, map);
}

/* Cluster: asks a connected node for the slot map; again every REFRESH_MS while some slot's
 * master is not connected. */
static void on_refresh(void *data, struct svc_timer *t)
{
    struct svc_redis_async *r = data;
    const char *slots[] = {"CLUSTER", "SLOTS"};

    (void)t;
    if (r->destroying)
        return;
    if (!r->refreshing && (r->dirty || !r->connected)) {
        for (int i = 0; i < ASYNC_CONNS_MAX; i++) {
            struct aconn *c = &r->conns[i];
            if (c->in_use && !c->retired && c->connected && c->ac != NULL &&
                redisAsyncCommandArgv(c->ac, on_slots_reply, NULL, 2, slots, NULL) == REDIS_OK) {
                r->refreshing = 1;
                break;
            }
        }
    }
    if (r->dirty || !r->connected)
        schedule(r->refresh, REFRESH_MS);
}

/* A Redis that accepts commands but never answers must not hang requests forever. */
static void on_watchdog(void *data, struct svc_timer *t)
{
    struct svc_redis_async *r = data;
    uint64_t now = svc_loop_now(r->loop);

    for (int i = 0; i < ASYNC_CONNS_MAX; i++) {
        struct aconn *c = &r->conns[i];
        if (c->ac != NULL && c->outstanding > 0 &&
            now - c->last_progress > (uint64_t)r->timeout_ms) {
            SVC_LOG_WARN(NULL, "redis", "no reply from %s:%d for %ld ms; reconnecting",
                         c->addr.host, c->addr.port, r->timeout_ms);
            aconn_close(c);
        }
    }
    if (svc_timer_start(t, WATCHDOG_MS) != SVC_OK)
        SVC_LOG_ERR(NULL, "redis", "cannot re-arm the watchdog");
}

/*
 * Looks host up (getaddrinfo, blocking) into out as a numeric address, preferring IPv4 as hiredis
 * tries only the first one. getaddrinfo's result (0 when done).
 */
static int resolve_host(const char *host, char *out, size_t outlen)
{
    struct addrinfo hints = {0}, *res = NULL, *ai, *pick = NULL;
    int rc;

    hints.ai_socktype = SOCK_STREAM;
    if ((rc = getaddrinfo(host, NULL, &hints, &res)) != 0)
        return rc;
    for (ai = res; ai != NULL && pick == NULL; ai = ai->ai_next)
        if (ai->ai_family == AF_INET)
            pick = ai;
    if (pick == NULL)
        pick = res;
    if (pick->ai_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)pick->ai_addr)->sin_addr, out, outlen);
    else if (pick->ai_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)(void *)pick->ai_addr)->sin6_addr, out,
                  outlen);
    else
        rc = EAI_FAMILY;
    freeaddrinfo(res);
    return rc;
}

/*
 * Resolves the host once, when the client is made (at start-up, before the loop serves
 * anything). The price: a Redis whose address changes needs a restart of the service (a
 * Kubernetes Service keeps its address). When the name cannot be resolved now, each connect
 * looks it up off the loop (lookup_poll), as for Sentinel and Cluster names.
 */
static void resolve_once(struct svc_redis_async *r)
{
    const char *host = r->url.seeds[0].host;
    int rc = resolve_host(host, r->addr, sizeof(r->addr));

    if (rc != 0) {
        r->addr[0] = '\0';
        SVC_LOG_WARN(NULL, "redis",
                     "cannot resolve %s now (%s): it will be looked up at each "
                     "connect",
                     host, gai_strerror(rc));
    }
}

static int setup_conns(struct svc_redis_async *r)
{
    switch (r->url.kind) {
    case SVC__REDIS_STANDALONE: {
        struct aconn *c = &r->conns[DATA];
        resolve_once(r);
        c->in_use = 1;
        c->addr = r->url.seeds[0];
        c->backoff = RECONNECT_MIN_MS;
        if (svc_timer_create(&c->reconnect, r->loop, on_reconnect, c) != SVC_OK)
            return SVC_ENOMEM;
        if (aconn_connect(c) != SVC_OK)
            schedule_reconnect(c);
        return SVC_OK;
    }
    case SVC__REDIS_SENTINEL:
        for (int i = DATA; i <= SENTINEL; i++) {
            r->conns[i].in_use = 1;
            r->conns[i].backoff = RECONNECT_MIN_MS;
            if (svc_timer_create(&r->conns[i].reconnect, r->loop, on_reconnect, &r->conns[i]) !=
                SVC_OK)
                return SVC_ENOMEM;
        }
        if (svc_timer_create(&r->watch, r->loop, on_watch, r) != SVC_OK)
            return SVC_ENOMEM;
        schedule(r->watch, SENTINEL_WATCH_MS);
        sentinel_next(r, 0);
        return SVC_OK;
    default:
        /* every seed until the first slot map names the masters */
        if (svc_timer_create(&r->refresh, r->loop, on_refresh, r) != SVC_OK)
            return SVC_ENOMEM;
        for (int i = 0; i < r->url.nseeds; i++)
            if (conn_for(r, &r->url.seeds[i]) == NULL)
                return SVC_ENOMEM;
        r->dirty = 1;
        schedule(r->refresh, REFRESH_MS);
        return SVC_OK;
    }
}

int svc_redis_async_create(struct svc_redis_async **out, struct svc_loop *loop, const char *url,
                           long timeout_ms, char *err, size_t errlen)
{
    struct svc_redis_async *r = calloc(1, sizeof(*r));
    char why[128];
    int rc;

    *out = NULL;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (r == NULL)
        return SVC_ENOMEM;
    if (svc__redis_url_parse(url, &r->url, why, sizeof(why)) != SVC_OK) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s", why);
        free(r);
        return SVC_EINVAL;
    }
    r->loop = loop;
    r->timeout_ms = timeout_ms > 0 ? timeout_ms : 1000;
    for (int i = 0; i < ASYNC_CONNS_MAX; i++)
        r->conns[i].r = r;
    rc = svc_timer_create(&r->flush, loop, flush_due, r);
    if (rc == SVC_OK)
        rc = svc_timer_create(&r->watchdog, loop, on_watchdog, r);
    if (rc == SVC_OK)
        rc = svc_timer_start(r->watchdog, WATCHDOG_MS);
    if (rc == SVC_OK)
        rc = setup_conns(r);
    if (rc != SVC_OK) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "cannot set up the connections: %s", svc_strerror(rc));
        svc_redis_async_destroy(&r);
        return rc;
    }
    *out = r;
    return SVC_OK;
}

void svc_redis_async_destroy(struct svc_redis_async **rp)
{
    struct svc_redis_async *r = rp != NULL ? *rp : NULL;

    if (r == NULL)
        return;
    r->destroying = 1;
    for (int i = 0; i < ASYNC_CONNS_MAX; i++) {
        struct aconn *c = &r->conns[i];
        if (c->ac != NULL)
            redisAsyncFree(c->ac); /* runs pending callbacks with NULL replies */
        svc_timer_destroy(&c->reconnect);
        svc_timer_destroy(&c->lookup_t);
        lookup_unref(&c->lookup); /* a thread still looking it up frees it when done */
        svc_io_del(&c->io);
    }
    svc_timer_destroy(&r->watchdog);
    svc_timer_destroy(&r->flush);
    svc_timer_destroy(&r->refresh);
    svc_timer_destroy(&r->watch);
    free(r->map);
    free(r);
    *rp = NULL;
}

int svc_redis_async_connected(const struct svc_redis_async *r)
{
    return r->connected;
}

static int send_pending(struct aconn *c, struct pending_cmd *pc);

static void on_cmd_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct aconn *c = ac->data;
    struct svc_redis_async *r = c->r;
    struct pending_cmd *pc = privdata;
    redisReply *rep = reply;
    struct svc__redis_addr to;
    unsigned slot;
    int redirect;

    if (c->outstanding > 0)
        c->outstanding--;
    c->last_progress = svc_loop_now(r->loop);
    if (rep != NULL && pc->buf != NULL && rep->type == REDIS_REPLY_ERROR &&
        pc->redirects < REDIRECTS_MAX && !r->destroying &&
        (redirect = svc__redis_redirect_parse(rep->str, rep->len, &slot, &to)) != 0) {
        struct aconn *t;
        if (to.host[0] == '\0')
            snprintf(to.host, sizeof(to.host), "%s", c->addr.host);
        t = conn_for(r, &to);
        pc->redirects++;
        if (t != NULL && redirect == 1 && r->map != NULL) {
            int n = svc__redis_slotmap_node(r->map, to.host, to.port);
            if (n >= 0) {
                r->map->slot_node[slot] = (short)n;
                r->node_conn[n] = (short)(t - r->conns);
            }
            request_refresh(r, 0);
        }
        if (t != NULL && t->ac != NULL &&
            (redirect == 1 || redisAsyncCommand(t->ac, NULL, NULL, "ASKING") == REDIS_OK) &&
            send_pending(t, pc) == SVC_OK)
            return; /* pc now belongs to the new send */
        rep = NULL;
    }
    if (rep != NULL && r->url.kind == SVC__REDIS_SENTINEL && is_error(rep, "READONLY") &&
        c->ac != NULL) {
        SVC_LOG_WARN(NULL, "redis", "%s:%d is read-only now: asking the sentinels",
                     c->addr.host, c->addr.port);
        c->connected = 0;
        update_connected(r);
        redisAsyncDisconnect(c->ac);
    }
    if (pc->wait && rep != NULL && rep->type == REDIS_REPLY_INTEGER && rep->integer > 0 &&
        pc->epoch == r->master_epoch)
        r->replicated_ms = svc_loop_now(r->loop);
    if (pc->cb != NULL) {
        if (reply == NULL || rep == NULL)
            pc->cb(pc->data, r->destroying ? SVC_ECANCELED : SVC_EUNAVAIL, NULL);
        else
            pc->cb(pc->data, SVC_OK, (const struct svc_redis_reply *)rep);
    }
    redisFreeCommand(pc->buf);
    free(pc);
}

static int send_pending(struct aconn *c, struct pending_cmd *pc)
{
    if (redisAsyncFormattedCommand(c->ac, on_cmd_reply, pc, pc->buf, pc->len) != REDIS_OK)
        return SVC_EUNAVAIL;
    if (c->outstanding++ == 0)
        c->last_progress = svc_loop_now(c->r->loop);
    return SVC_OK;
}

/* The connection commands on key go to (key NULL: a command without one), or NULL when it is
 * not connected. */
static struct aconn *route_key(struct svc_redis_async *r, const char *key, size_t keylen)
{
    struct aconn *c = NULL;

    if (r->url.kind != SVC__REDIS_CLUSTER) {
        c = &r->conns[DATA];
    } else if (r->map != NULL) {
        int n = key != NULL ? r->map->slot_node[svc__redis_key_slot(key, keylen)] : 0;
        if (n >= 0)
            c = &r->conns[r->node_conn[n]];
    }
    return c != NULL && c->ac != NULL && c->connected ? c : NULL;
}

/* The connection a command goes to, or NULL when it is not connected. */
static struct aconn *route(struct svc_redis_async *r, int argc, const char *const *argv,
                           const size_t *argvlen)
{
    const char *key = NULL;
    size_t keylen = 0;

    /* only a Cluster routes by key */
    if (r->url.kind == SVC__REDIS_CLUSTER &&
        !svc__redis_cmd_key(argc, argv, argvlen, &key, &keylen))
        key = NULL, keylen = 0;
    return route_key(r, key, keylen);
}

unsigned long svc_redis_async_master_epoch(const struct svc_redis_async *r)
{
    return r->master_epoch;
}

uint64_t svc_redis_async_replicated_ms(const struct svc_redis_async *r)
{
    return r->replicated_ms;
}

void svc_redis_async_flush(struct svc_redis_async *r)
{
    for (int i = 0; i < ASYNC_CONNS_MAX; i++) {
        struct aconn *c = &r->conns[i];

        if (c->in_use && c->ac != NULL && (c->ac->c.flags & REDIS_CONNECTED))
            write_now(c);
    }
}

void svc_redis_async_recheck(struct svc_redis_async *r)
{
    if (r->url.kind == SVC__REDIS_SENTINEL)
        sentinel_ask(r);
}

/*
 * The command as RESP ("*<argc>\r\n" then "$<len>\r\n<arg>\r\n" per argument) in one malloc'd
 * buffer (free() it; what redisFreeCommand does), *len its length; NULL when out of memory.
 * hiredis 0.14's redisFormatCommandArgv builds it with sdscatfmt, several thousand instructions
 * for a six-argument command that the proxy sends twice per request (the lease journal).
 */
static char *format_resp(int argc, const char *const *argv, const size_t *argvlen, size_t *len)
{
    size_t total = 1 + 20 + 2, n = 0;
    char *buf;

    for (int i = 0; i < argc; i++)
        total += 1 + 20 + 2 + (argvlen != NULL ? argvlen[i] : strlen(argv[i])) + 2;
    if ((buf = malloc(total)) == NULL)
        return NULL;
    buf[n++] = '*';
    n += svc_util_put_u64(buf + n, (uint64_t)argc);
    buf[n++] = '\r';
    buf[n++] = '\n';
    for (int i = 0; i < argc; i++) {
        size_t al = argvlen != NULL ? argvlen[i] : strlen(argv[i]);
        buf[n++] = '$';
        n += svc_util_put_u64(buf + n, al);
        buf[n++] = '\r';
        buf[n++] = '\n';
        memcpy(buf + n, argv[i], al);
        n += al;
        buf[n++] = '\r';
        buf[n++] = '\n';
    }
    *len = n;
    return buf;
}

/* Sends a command on c (NULL: not connected). */
static int send_cmd(struct svc_redis_async *r, struct aconn *c, svc_redis_cb cb, void *ctx,
                    int wait, int argc, const char *const *argv, const size_t *argvlen)
{
    struct pending_cmd *pc;
    int len;

    if (c == NULL)
        return SVC_EUNAVAIL;
    pc = calloc(1, sizeof(*pc));
    if (pc == NULL)
        return SVC_ENOMEM;
    pc->cb = cb;
    pc->data = ctx;
    pc->wait = wait;
    pc->epoch = r->master_epoch;
    if ((pc->buf = format_resp(argc, argv, argvlen, &pc->len)) == NULL) {
        free(pc);
        return SVC_ENOMEM;
    }
    if (r->url.kind == SVC__REDIS_CLUSTER) {
        /* kept until the reply, to send it again where MOVED or ASK points */
        if (send_pending(c, pc) != SVC_OK) {
            redisFreeCommand(pc->buf);
            free(pc);
            return SVC_EUNAVAIL;
        }
        return SVC_OK;
    }
    len = redisAsyncFormattedCommand(c->ac, on_cmd_reply, pc, pc->buf, pc->len);
    free(pc->buf); /* copied into the connection's output */
    pc->buf = NULL;
    if (len != REDIS_OK) {
        free(pc);
        return SVC_EUNAVAIL;
    }
    if (c->outstanding++ == 0)
        c->last_progress = svc_loop_now(r->loop);
    return SVC_OK;
}

int svc_redis_async_cmd(struct svc_redis_async *r, svc_redis_cb cb, void *ctx, int argc,
                        const char *const *argv, const size_t *argvlen)
{
    return send_cmd(r, route(r, argc, argv, argvlen), cb, ctx, 0, argc, argv, argvlen);
}

int svc_redis_async_wait(struct svc_redis_async *r, const char *key, int replicas, long wait_ms,
                         svc_redis_cb cb, void *ctx)
{
    char n[16], ms[24];
    const char *argv[] = {"WAIT", n, ms};

    snprintf(n, sizeof(n), "%d", replicas);
    snprintf(ms, sizeof(ms), "%ld", wait_ms > 0 ? wait_ms : 1);
    /* On the connection the key's writes went to, after them: the connection keeps the order. */
    return send_cmd(r, route_key(r, key, strlen(key)), cb, ctx, 1, 3, argv, NULL);
}
