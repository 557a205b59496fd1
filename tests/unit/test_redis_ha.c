/*
 * The Redis client beyond one server (docs/redis.md), against real servers:
 *   TEST_REDIS_CLUSTER_URL   a 3-master Redis Cluster (redis-cluster://...)
 *   TEST_REDIS_SENTINEL_URL  1 master, 1 replica, 3 sentinels (redis-sentinel://.../mymaster)
 * both started by `scripts/with-servers --redis-ha` (deploy/local/redis-topo.mjs). Without them
 * only the server-less cases run and the file exits 77 (skipped), unless TEST_REQUIRE_REDIS_HA=1
 * (set by with-servers) makes that a failure.
 *
 * Cluster: every command of the code base routed by its key (stream, EVAL with hash-tagged keys,
 * the rate limiter), then a slot migrated from one master to another while both clients work:
 * ASK during the migration, MOVED after it. Sentinel: a forced SENTINEL FAILOVER that the blocking
 * and the async client both follow without being made again.
 */

#include <hiredis.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "redis_topo.h"
#include "svc/loop.h"
#include "svc/ratelimit.h"
#include "svc/redis.h"
#include "test.h"

/* ---- helpers ---- */

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Runs argv (NULL-terminated) on the blocking client; the reply must not be NULL. */
static struct svc_redis_reply *cmdv(struct svc_redis *r, const char **argv)
{
    struct svc_redis_reply *rep = NULL;
    int argc = 0;

    while (argv[argc] != NULL)
        argc++;
    int rc = svc_redis_cmd(r, &rep, argc, argv, NULL);
    if (rc != SVC_OK)
        T_FAIL("%s %s: %s", argv[0], argc > 1 ? argv[1] : "", svc_strerror(rc));
    return rep;
}

#define CMD(r, ...) cmdv((r), (const char *[]){__VA_ARGS__, NULL})

static void expect_status(struct svc_redis *r, const char **argv, const char *want)
{
    struct svc_redis_reply *rep = cmdv(r, argv);
    const char *s = svc_redis_reply_str(rep, NULL);
    if (svc_redis_reply_type(rep) == SVC_REDIS_ERROR || strcmp(s, want) != 0)
        T_FAIL("%s %s: got \"%s\", want \"%s\"", argv[0], argv[1], s, want);
    svc_redis_reply_destroy(&rep);
}

/* A pipeline of n SETs of keys[i] to "v<i>": the replies, answered count and status. */
static int pipeline_sets(struct svc_redis *r, int n, const char **keys, struct svc_redis_reply **reps,
                         int *answered, int replicas, int *acked)
{
    const char *argv[8][3];
    char vals[8][16];
    const char *const *av[8];
    int ac[8];
    size_t lens[8][3];
    const size_t *lv[8];

    for (int i = 0; i < n; i++) {
        snprintf(vals[i], sizeof(vals[i]), "v%d", i);
        argv[i][0] = "SET";
        argv[i][1] = keys[i];
        argv[i][2] = vals[i];
        for (int k = 0; k < 3; k++)
            lens[i][k] = strlen(argv[i][k]);
        av[i] = argv[i];
        lv[i] = lens[i];
        ac[i] = 3;
    }
    return svc_redis_cmd_pipeline(r, n, ac, av, lv, reps, answered, replicas, 1000, acked);
}

static struct svc_redis *node_client(const struct svc__redis_url *u, const struct svc__redis_addr *a)
{
    char url[700];
    struct svc_redis *r = NULL;

    snprintf(url, sizeof(url), "redis://%s:%s@%s:%d/0", u->user, u->password, a->host, a->port);
    T_EQ_INT(svc_redis_create(&r, url, 2000, NULL, 0), SVC_OK);
    return r;
}

static redisReply *parse_resp(const char *resp)
{
    redisReader *rd = redisReaderCreate();
    void *rep = NULL;

    T_ASSERT(rd != NULL);
    T_EQ_INT(redisReaderFeed(rd, resp, strlen(resp)), REDIS_OK);
    T_EQ_INT(redisReaderGetReply(rd, &rep), REDIS_OK);
    T_ASSERT(rep != NULL);
    redisReaderFree(rd);
    return rep;
}

/* ---- without servers ---- */

static void test_url_forms(void)
{
    struct svc__redis_url u;
    char err[160];

    T_EQ_INT(svc__redis_url_parse("redis://:pw@h:7/3", &u, err, sizeof(err)), SVC_OK);
    T_EQ_INT(u.kind, SVC__REDIS_STANDALONE);
    T_EQ_STR(u.password, "pw");
    T_EQ_INT(u.db, 3);
    T_EQ_INT(u.seeds[0].port, 7);
    T_EQ_INT(svc__redis_url_parse("redis-sentinel://u:p@s1,s2:26380,[::1]:5/mymaster/2"
                                  "?sentinel_password=sp&sentinel_user=su",
                                  &u, err, sizeof(err)),
             SVC_OK);
    T_EQ_INT(u.kind, SVC__REDIS_SENTINEL);
    T_EQ_INT(u.nseeds, 3);
    T_EQ_STR(u.seeds[0].host, "s1");
    T_EQ_INT(u.seeds[0].port, 26379);
    T_EQ_INT(u.seeds[1].port, 26380);
    T_EQ_STR(u.seeds[2].host, "::1");
    T_EQ_STR(u.master, "mymaster");
    T_EQ_INT(u.db, 2);
    T_EQ_STR(u.user, "u");
    T_EQ_STR(u.password, "p");
    T_EQ_STR(u.sentinel_user, "su");
    T_EQ_STR(u.sentinel_password, "sp");
    T_EQ_INT(svc__redis_url_parse("redis-cluster://a:7000,b:7001,c", &u, err, sizeof(err)),
             SVC_OK);
    T_EQ_INT(u.kind, SVC__REDIS_CLUSTER);
    T_EQ_INT(u.nseeds, 3);
    T_EQ_INT(u.seeds[2].port, 6379);
    T_EQ_INT(svc__redis_url_parse("redis-cluster://a:7000/0", &u, err, sizeof(err)), SVC_OK);
    /* refused, each with a reason that never holds the password */
    const char *bad[] = {
        "redis://a,b",                      /* one host only */
        "redis-cluster://a:7000/1",         /* db 0 only */
        "redis-sentinel://a:1",             /* no master name */
        "redis-sentinel://a:1/",            /* empty master name */
        "redis-sentinel://a:1/m?x=1",       /* unknown option */
        "redis-cluster://a:1,,b",           /* empty host */
        "redis-cluster://a:0",              /* port 0 */
        "redis-cluster://secret@a:1",       /* credentials without a colon */
        "rediss://a",                       /* TLS is not supported */
        "redis-sentinel://:secretpw@a:1/m/16",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        if (svc_redis_url_check(bad[i], err, sizeof(err)) != SVC_EINVAL)
            T_FAIL("accepted %s", bad[i]);
        T_ASSERT(err[0] != '\0');
        T_ASSERT(strstr(err, "secret") == NULL);
    }
}

static void test_key_slots(void)
{
    /* values from the Redis Cluster specification and CLUSTER KEYSLOT */
    T_EQ_INT(svc__redis_key_slot("123456789", 9), 0x31C3);
    T_EQ_INT(svc__redis_key_slot("foo", 3), 12182);
    T_EQ_INT(svc__redis_key_slot("{user1000}.following", 20),
             svc__redis_key_slot("{user1000}.followers", 20));
    T_EQ_INT(svc__redis_key_slot("{}foo", 5), svc__redis_key_slot("{}foo", 5));
    T_ASSERT(svc__redis_key_slot("{}foo", 5) != svc__redis_key_slot("", 0));
    T_EQ_INT(svc__redis_key_slot("a{b}c", 5), svc__redis_key_slot("b", 1));
    T_EQ_INT(svc__redis_key_slot("a{}{b}", 6), svc__redis_key_slot("a{}{b}", 6));
    /* the keys the code builds: every multi-key command stays in one slot */
    T_EQ_INT(svc__redis_key_slot("cw:tpm:{u42}:user:123", 21),
             svc__redis_key_slot("cw:tpm:{u42}:key:sk-1:123", 25));
    T_EQ_INT(svc__redis_key_slot("cw:ctx:{u7}:abc", 15), svc__redis_key_slot("u7", 2));
}

static void test_cmd_keys(void)
{
    const char *key;
    size_t len;
    const char *xrg[] = {"XREADGROUP", "GROUP", "g", "c", "COUNT", "10", "STREAMS", "s1", ">"};
    const char *eval[] = {"EVAL", "return 1", "2", "{t}a", "{t}b", "x"};
    const char *eval0[] = {"eval", "return 1", "0"};
    const char *xgroup[] = {"XGROUP", "CREATE", "s2", "g", "$", "MKSTREAM"};
    const char *ping[] = {"PING"};
    const char *set[] = {"set", "k", "v"};

    T_EQ_INT(svc__redis_cmd_key(9, xrg, NULL, &key, &len), 1);
    T_EQ_INT(len, 2);
    T_ASSERT(memcmp(key, "s1", 2) == 0);
    T_EQ_INT(svc__redis_cmd_key(6, eval, NULL, &key, &len), 1);
    T_ASSERT(memcmp(key, "{t}a", 4) == 0);
    T_EQ_INT(svc__redis_cmd_key(3, eval0, NULL, &key, &len), 0);
    T_EQ_INT(svc__redis_cmd_key(6, xgroup, NULL, &key, &len), 1);
    T_ASSERT(memcmp(key, "s2", 2) == 0);
    T_EQ_INT(svc__redis_cmd_key(1, ping, NULL, &key, &len), 0);
    T_EQ_INT(svc__redis_cmd_key(3, set, NULL, &key, &len), 1);
    T_ASSERT(memcmp(key, "k", 1) == 0);
}

/* A reply announcing a huge array is refused before its table is allocated; normal ones pass. */
static void test_reader_bound(void)
{
    redisReader *rd = redisReaderCreate();
    void *rep = NULL;

    T_ASSERT(rd != NULL);
    svc__redis_reader_bound(rd);
    T_EQ_INT(redisReaderFeed(rd, "*3\r\n:1\r\n:2\r\n:3\r\n", 16), REDIS_OK);
    T_EQ_INT(redisReaderGetReply(rd, &rep), REDIS_OK);
    T_ASSERT(rep != NULL && ((redisReply *)rep)->elements == 3);
    freeReplyObject(rep);
    rep = NULL;
    T_EQ_INT(redisReaderFeed(rd, "*300000000\r\n", 13), REDIS_OK);
    T_EQ_INT(redisReaderGetReply(rd, &rep), REDIS_ERR);
    T_ASSERT(rep == NULL);
    redisReaderFree(rd);
}

static void test_topology_replies(void)
{
    struct svc__redis_slotmap *map = malloc(sizeof(*map));
    struct svc__redis_addr a;
    unsigned slot;
    redisReply *rep;

    T_ASSERT(map != NULL);
    rep = parse_resp("*2\r\n"
                     "*3\r\n:0\r\n:8000\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n"
                     "*4\r\n:8001\r\n:16383\r\n*2\r\n$0\r\n\r\n:7001\r\n*2\r\n$1\r\nr\r\n:7002\r\n");
    T_EQ_INT(svc__redis_slots_parse(rep, "10.0.0.9", map), 0);
    T_EQ_INT(map->nnodes, 2);
    T_EQ_INT(map->slot_node[0], 0);
    T_EQ_INT(map->slot_node[8000], 0);
    T_EQ_INT(map->slot_node[8001], 1);
    T_EQ_STR(map->nodes[1].host, "10.0.0.9"); /* empty host: the node asked */
    T_EQ_INT(map->nodes[1].port, 7001);
    freeReplyObject(rep);
    rep = parse_resp("*1\r\n*3\r\n:9\r\n:3\r\n*2\r\n$1\r\na\r\n:1\r\n"); /* start > end */
    T_EQ_INT(svc__redis_slots_parse(rep, "h", map), -1);
    freeReplyObject(rep);
    rep = parse_resp("-ERR This instance has cluster support disabled\r\n");
    T_EQ_INT(svc__redis_slots_parse(rep, "h", map), -1);
    freeReplyObject(rep);
    free(map);

    T_EQ_INT(svc__redis_redirect_parse("MOVED 3999 127.0.0.1:6381", 25, &slot, &a), 1);
    T_EQ_INT(slot, 3999);
    T_EQ_STR(a.host, "127.0.0.1");
    T_EQ_INT(a.port, 6381);
    T_EQ_INT(svc__redis_redirect_parse("ASK 12 :7000", 12, &slot, &a), 2);
    T_EQ_STR(a.host, "");
    T_EQ_INT(svc__redis_redirect_parse("MOVED 16384 h:1", 15, &slot, &a), 0);
    T_EQ_INT(svc__redis_redirect_parse("ERR wrong", 9, &slot, &a), 0);

    rep = parse_resp("*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n");
    T_EQ_INT(svc__redis_sentinel_addr(rep, &a), 0);
    T_EQ_INT(a.port, 6380);
    freeReplyObject(rep);
    rep = parse_resp("*-1\r\n");
    T_EQ_INT(svc__redis_sentinel_addr(rep, &a), -1);
    freeReplyObject(rep);
    rep = parse_resp("*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n");
    T_EQ_INT(svc__redis_role_is_master(rep), 1);
    freeReplyObject(rep);
    rep = parse_resp("*5\r\n$5\r\nslave\r\n$1\r\nh\r\n:1\r\n$9\r\nconnected\r\n:1\r\n");
    T_EQ_INT(svc__redis_role_is_master(rep), 0);
    freeReplyObject(rep);
}

/* ---- async helpers ---- */

struct ares {
    int done, err, type;
    long long i;
    char s[128];
};

static void on_ares(void *data, int err, const struct svc_redis_reply *reply)
{
    struct ares *a = data;

    a->done = 1;
    a->err = err;
    if (err == SVC_OK) {
        a->type = svc_redis_reply_type(reply);
        a->i = a->type == SVC_REDIS_INTEGER ? svc_redis_reply_int(reply) : 0;
        snprintf(a->s, sizeof(a->s), "%s", svc_redis_reply_str(reply, NULL));
    }
}

struct waiter {
    struct svc_loop *loop;
    int (*cond)(void *);
    void *arg;
    uint64_t deadline;
    void (*tick)(void *);
};

static void on_wait_tick(void *data, struct svc_timer *t)
{
    struct waiter *w = data;

    if (w->tick != NULL)
        w->tick(w->arg);
    if (w->cond(w->arg) || svc_loop_clock_ms() > w->deadline) {
        svc_loop_stop(w->loop);
        return;
    }
    T_EQ_INT(svc_timer_start(t, 20), SVC_OK);
}

/* Runs the loop until cond(arg) or ms have passed; tick(arg) runs every 20 ms. */
static int run_until(struct svc_loop *loop, int (*cond)(void *), void (*tick)(void *), void *arg,
                     long ms)
{
    struct waiter w = {loop, cond, arg, svc_loop_clock_ms() + (uint64_t)ms, tick};
    struct svc_timer *t = NULL;
    T_EQ_INT(svc_timer_create(&t, loop, on_wait_tick, &w), SVC_OK);

    T_ASSERT(t != NULL);
    T_EQ_INT(svc_timer_start(t, 0), SVC_OK);
    svc_loop_run(loop);
    svc_timer_destroy(&t);
    return cond(arg);
}

static int is_connected(void *arg) { return svc_redis_async_connected(arg); }
static int is_done(void *arg) { return ((struct ares *)arg)->done; }

/* One async command, run to its reply. */
static struct ares acmd(struct svc_loop *loop, struct svc_redis_async *ra, int argc,
                        const char **argv)
{
    struct ares a = {0};

    int rc = svc_redis_async_cmd(ra, on_ares, &a, argc, argv, NULL);
    if (rc != SVC_OK)
        T_FAIL("async %s: %s", argv[0], svc_strerror(rc));
    if (!run_until(loop, is_done, NULL, &a, 5000))
        T_FAIL("async %s: no reply in 5 s", argv[0]);
    return a;
}

#define ACMD(loop, ra, ...)                                                                  \
    acmd((loop), (ra), (int)(sizeof((const char *[]){__VA_ARGS__}) / sizeof(const char *)),   \
         (const char *[]){__VA_ARGS__})

struct tokres {
    int done, err, allowed, refused;
    long long used;
};

static void on_tokens(void *data, int err, int allowed, int refused, long long used, int retry)
{
    struct tokres *t = data;

    (void)retry;
    t->done = 1;
    t->err = err;
    t->allowed = allowed;
    t->refused = refused;
    t->used = used;
}

static int tok_done(void *arg) { return ((struct tokres *)arg)->done; }

/* ---- cluster ---- */

/* The master serving slot, as an index into the URL's seeds (the 3 masters). */
static int slot_owner(struct svc_redis *any, const struct svc__redis_url *u, unsigned slot)
{
    struct svc_redis_reply *rep = CMD(any, "CLUSTER", "SLOTS");
    int owner = -1;

    for (size_t i = 0; i < svc_redis_reply_count(rep); i++) {
        const struct svc_redis_reply *e = svc_redis_reply_elem(rep, i);
        const struct svc_redis_reply *m = svc_redis_reply_elem(e, 2);
        if ((long long)slot >= svc_redis_reply_int(svc_redis_reply_elem(e, 0)) &&
            (long long)slot <= svc_redis_reply_int(svc_redis_reply_elem(e, 1)))
            for (int k = 0; k < u->nseeds; k++)
                if (svc_redis_reply_int(svc_redis_reply_elem(m, 1)) == u->seeds[k].port)
                    owner = k;
    }
    svc_redis_reply_destroy(&rep);
    return owner;
}

static void node_id(struct svc_redis *node, char *out, size_t len)
{
    struct svc_redis_reply *rep = CMD(node, "CLUSTER", "MYID");
    snprintf(out, len, "%s", svc_redis_reply_str(rep, NULL));
    svc_redis_reply_destroy(&rep);
}

static void test_cluster(const char *url)
{
    struct svc__redis_url u;
    struct svc_redis *r = NULL, *nodes[3] = {NULL, NULL, NULL};
    struct svc_loop *loop = NULL;
    T_EQ_INT(svc_loop_create(&loop), SVC_OK);
    struct svc_redis_async *ra;
    struct svc_redis_reply *rep;
    char err[128], key[64], ids[3][64], slottxt[8];
    int owners[3] = {0, 0, 0};
    struct ares a;

    T_EQ_INT(svc__redis_url_parse(url, &u, err, sizeof(err)), SVC_OK);
    T_EQ_INT(u.nseeds, 3);
    for (int i = 0; i < 3; i++) {
        nodes[i] = node_client(&u, &u.seeds[i]);
        node_id(nodes[i], ids[i], sizeof(ids[i]));
    }
    T_EQ_INT(svc_redis_create(&r, url, 2000, NULL, 0), SVC_OK);

    /* keys everywhere: each SET lands on its slot's master (a wrong one would answer MOVED) */
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "t:{k%d}", i);
        expect_status(r, (const char *[]){"SET", key, key, NULL}, "OK");
        owners[slot_owner(nodes[0], &u, svc__redis_key_slot(key, strlen(key)))]++;
    }
    for (int k = 0; k < 3; k++)
        T_ASSERT(owners[k] > 50); /* all three masters were used */
    rep = CMD(r, "GET", "t:{k299}");
    T_EQ_STR(svc_redis_reply_str(rep, NULL), "t:{k299}");
    svc_redis_reply_destroy(&rep);

    /* a pipeline goes to the node of its first key: the same slot's keys are taken, a key of
     * another master's slot answers MOVED (returned, not followed) */
    {
        const char *same[] = {"{pipe}a", "{pipe}b", "{pipe}c"};
        struct svc_redis_reply *reps[3] = {NULL, NULL, NULL};
        int answered = 0, home = slot_owner(nodes[0], &u, svc__redis_key_slot("{pipe}", 6));
        char other[32];

        T_EQ_INT(pipeline_sets(r, 3, same, reps, &answered, 0, NULL), SVC_OK);
        T_EQ_INT(answered, 3);
        for (int i = 0; i < 3; i++) {
            T_EQ_STR(svc_redis_reply_str(reps[i], NULL), "OK");
            svc_redis_reply_destroy(&reps[i]);
        }
        rep = CMD(r, "GET", "{pipe}c");
        T_EQ_STR(svc_redis_reply_str(rep, NULL), "v2");
        svc_redis_reply_destroy(&rep);
        for (int i = 0;; i++) { /* a key whose slot another master serves */
            snprintf(other, sizeof(other), "{away%d}", i);
            if (slot_owner(nodes[0], &u, svc__redis_key_slot(other, strlen(other))) != home)
                break;
        }
        {
            const char *mixed[] = {"{pipe}d", other, "{pipe}e"};
            T_EQ_INT(pipeline_sets(r, 3, mixed, reps, &answered, 0, NULL), SVC_OK);
            T_EQ_INT(answered, 3);
            T_EQ_STR(svc_redis_reply_str(reps[0], NULL), "OK");
            T_EQ_INT(svc_redis_reply_type(reps[1]), SVC_REDIS_ERROR);
            T_ASSERT(strncmp(svc_redis_reply_str(reps[1], NULL), "MOVED", 5) == 0);
            T_EQ_STR(svc_redis_reply_str(reps[2], NULL), "OK");
            for (int i = 0; i < 3; i++)
                svc_redis_reply_destroy(&reps[i]);
        }
    }

    /* a multi-key script within one hash tag; keys of two tags would be CROSSSLOT */
    rep = CMD(r, "EVAL", "redis.call('SET', KEYS[1], 1) return redis.call('INCR', KEYS[2])", "2",
              "{tag}a", "{tag}b");
    T_EQ_INT(svc_redis_reply_type(rep), SVC_REDIS_INTEGER);
    svc_redis_reply_destroy(&rep);

    /* the billing events stream, as billing's relay and tools/billing_consumer use it */
    rep = CMD(r, "DEL", "chatweb:billing:events");
    svc_redis_reply_destroy(&rep);
    rep = CMD(r, "XGROUP", "CREATE", "chatweb:billing:events", "g", "0", "MKSTREAM");
    T_EQ_INT(svc_redis_reply_type(rep), SVC_REDIS_STATUS);
    svc_redis_reply_destroy(&rep);
    for (int i = 0; i < 5; i++) {
        rep = CMD(r, "XADD", "chatweb:billing:events", "MAXLEN", "~", "1000", "*", "id", "bl-1");
        T_EQ_INT(svc_redis_reply_type(rep), SVC_REDIS_STRING);
        svc_redis_reply_destroy(&rep);
    }
    rep = CMD(r, "XREADGROUP", "GROUP", "g", "c1", "COUNT", "10", "STREAMS",
              "chatweb:billing:events", ">");
    T_EQ_INT(svc_redis_reply_type(rep), SVC_REDIS_ARRAY);
    T_EQ_INT(svc_redis_reply_count(svc_redis_reply_elem(svc_redis_reply_elem(rep, 0), 1)), 5);
    {
        const struct svc_redis_reply *e =
            svc_redis_reply_elem(svc_redis_reply_elem(svc_redis_reply_elem(rep, 0), 1), 0);
        char id[64];
        snprintf(id, sizeof(id), "%s", svc_redis_reply_str(svc_redis_reply_elem(e, 0), NULL));
        svc_redis_reply_destroy(&rep);
        rep = CMD(r, "XACK", "chatweb:billing:events", "g", id);
        T_EQ_INT(svc_redis_reply_int(rep), 1);
        svc_redis_reply_destroy(&rep);
    }

    /* async: the same routing, and the rate limiter's INCR and multi-key EVAL */
    T_ASSERT(loop != NULL);
    T_EQ_INT(svc_redis_async_create(&ra, loop, url, 2000, NULL, 0), SVC_OK);
    T_ASSERT(ra != NULL);
    T_ASSERT(run_until(loop, is_connected, NULL, ra, 5000));
    for (int i = 0; i < 300; i += 7) {
        snprintf(key, sizeof(key), "t:{k%d}", i);
        a = ACMD(loop, ra, "GET", key);
        T_EQ_INT(a.err, SVC_OK);
        T_EQ_STR(a.s, key);
    }
    {
        struct svc_ratelimit_scope scopes[2] = {{"user", 100}, {"key:sk-1", 1000}};
        struct tokres t = {0};
        char tag[32];
        /* a tag of this run: a second run within the same minute finds fresh counters */
        snprintf(tag, sizeof(tag), "u%ld", (long)getpid());
        T_EQ_INT(svc_ratelimit_tokens_admit(ra, tag, scopes, 2, 60, 60, on_tokens, &t), SVC_OK);
        T_ASSERT(run_until(loop, tok_done, NULL, &t, 5000));
        T_EQ_INT(t.err, SVC_OK);
        T_EQ_INT(t.allowed, 1);
        memset(&t, 0, sizeof(t));
        T_EQ_INT(svc_ratelimit_tokens_admit(ra, tag, scopes, 2, 60, 60, on_tokens, &t), SVC_OK);
        T_ASSERT(run_until(loop, tok_done, NULL, &t, 5000));
        T_EQ_INT(t.err, SVC_OK);
        T_EQ_INT(t.allowed, 0); /* 60 + 60 > 100 */
        T_EQ_INT(t.refused, 0);
        T_EQ_INT(t.used, 60);
    }

    /*
     * Move the slot of {mig} from its master to another one, the way redis-cli --cluster reshard
     * does: IMPORTING/MIGRATING (new keys answer ASK), MIGRATE the keys, then SETSLOT NODE
     * everywhere (the clients' maps are stale: MOVED).
     */
    {
        unsigned slot = svc__redis_key_slot("{mig}", 5);
        int src = slot_owner(nodes[0], &u, slot), dst = (src + 1) % 3;
        char portbuf[8];
        snprintf(slottxt, sizeof(slottxt), "%u", slot);
        snprintf(portbuf, sizeof(portbuf), "%d", u.seeds[dst].port);

        expect_status(r, (const char *[]){"SET", "{mig}old", "1", NULL}, "OK");
        expect_status(nodes[dst],
                      (const char *[]){"CLUSTER", "SETSLOT", slottxt, "IMPORTING", ids[src], NULL},
                      "OK");
        expect_status(nodes[src],
                      (const char *[]){"CLUSTER", "SETSLOT", slottxt, "MIGRATING", ids[dst], NULL},
                      "OK");
        /* a new key of a migrating slot goes to the target: ASK, for both clients */
        expect_status(r, (const char *[]){"SET", "{mig}new", "2", NULL}, "OK");
        a = ACMD(loop, ra, "SET", "{mig}anew", "3");
        T_EQ_INT(a.err, SVC_OK);
        T_EQ_STR(a.s, "OK");
        rep = CMD(r, "GET", "{mig}old");
        T_EQ_STR(svc_redis_reply_str(rep, NULL), "1");
        svc_redis_reply_destroy(&rep);
        rep = CMD(nodes[src], "MIGRATE", "127.0.0.1", portbuf, "", "0", "5000", "AUTH2", u.user,
                  u.password, "KEYS", "{mig}old");
        T_EQ_STR(svc_redis_reply_str(rep, NULL), "OK");
        svc_redis_reply_destroy(&rep);
        /* the moved key itself: the source answers ASK now */
        rep = CMD(r, "GET", "{mig}old");
        T_EQ_STR(svc_redis_reply_str(rep, NULL), "1");
        svc_redis_reply_destroy(&rep);
        for (int k = 0; k < 3; k++)
            expect_status(nodes[k],
                          (const char *[]){"CLUSTER", "SETSLOT", slottxt, "NODE", ids[dst], NULL},
                          "OK");
        /* MOVED: both clients follow and keep the new owner */
        rep = CMD(r, "GET", "{mig}new");
        T_EQ_STR(svc_redis_reply_str(rep, NULL), "2");
        svc_redis_reply_destroy(&rep);
        a = ACMD(loop, ra, "GET", "{mig}anew");
        T_EQ_INT(a.err, SVC_OK);
        T_EQ_STR(a.s, "3");
        a = ACMD(loop, ra, "INCR", "{mig}n");
        T_EQ_INT(a.err, SVC_OK);
        T_EQ_INT(a.i, 1);
        rep = CMD(r, "INCR", "{mig}n");
        T_EQ_INT(svc_redis_reply_int(rep), 2);
        svc_redis_reply_destroy(&rep);
        T_EQ_INT(slot_owner(nodes[0], &u, slot), dst);
        /* and back, so a second run finds the cluster as it was made */
        expect_status(r, (const char *[]){"SET", "{mig}x", "1", NULL}, "OK");
        rep = CMD(r, "DEL", "{mig}old", "{mig}new", "{mig}anew", "{mig}n", "{mig}x");
        svc_redis_reply_destroy(&rep);
        /* the way it came (IMPORTING first, so the owner's config epoch goes up and the
         * cluster bus cannot hand the slot back to dst), the new owner first; then until every
         * node agrees, so the clients meet no MOVED back and forth */
        expect_status(nodes[src],
                      (const char *[]){"CLUSTER", "SETSLOT", slottxt, "IMPORTING", ids[dst], NULL},
                      "OK");
        expect_status(nodes[dst],
                      (const char *[]){"CLUSTER", "SETSLOT", slottxt, "MIGRATING", ids[src], NULL},
                      "OK");
        for (int i = 0; i < 3; i++) {
            int k = (src + i) % 3;
            expect_status(nodes[k],
                          (const char *[]){"CLUSTER", "SETSLOT", slottxt, "NODE", ids[src], NULL},
                          "OK");
        }
        for (int i = 0; i < 50 && (slot_owner(nodes[0], &u, slot) != src ||
                                   slot_owner(nodes[1], &u, slot) != src ||
                                   slot_owner(nodes[2], &u, slot) != src);
             i++)
            sleep_ms(100);
        a = ACMD(loop, ra, "SET", "{mig}back", "1");
        T_EQ_STR(a.s, "OK");
        rep = CMD(r, "GET", "{mig}back");
        T_EQ_STR(svc_redis_reply_str(rep, NULL), "1");
        svc_redis_reply_destroy(&rep);
        rep = CMD(r, "DEL", "{mig}back");
        svc_redis_reply_destroy(&rep);
    }
    T_ASSERT(svc_redis_async_connected(ra));

    svc_redis_async_destroy(&ra);
    svc_loop_destroy(&loop);
    svc_redis_destroy(&r);
    for (int i = 0; i < 3; i++)
        svc_redis_destroy(&nodes[i]);
}

/* ---- sentinel ---- */

struct failover_state {
    struct svc_redis *r;
    struct svc_redis_async *ra;
    struct svc_redis *old_master; /* a plain redis:// client to the first master */
    int demoted;                  /* the old master said ROLE slave */
    int block_ok_after, async_ok_after; /* successful writes after the demotion */
    int async_inflight;
    long long async_errors, block_errors;
    long long seq;        /* the blocking client's last value written */
    long long last_block; /* ... that Redis took */
    long long last_incr;  /* the async client's last INCR reply */
    uint64_t t0;          /* when SENTINEL FAILOVER was sent */
    uint64_t demoted_at;  /* ms after t0 */
    long long old_incrs;  /* INCR calls the old master has served (only the async client sends INCR) */
    uint64_t last_old_incr; /* ms after t0 when that number last grew */
};

static void on_async_incr(void *data, int err, const struct svc_redis_reply *reply)
{
    struct failover_state *s = data;

    s->async_inflight = 0;
    if (err == SVC_OK && svc_redis_reply_type(reply) == SVC_REDIS_INTEGER) {
        s->last_incr = svc_redis_reply_int(reply);
        if (s->demoted)
            s->async_ok_after++;
    } else {
        s->async_errors++;
    }
}

static int master_port(struct svc_redis *sentinel)
{
    struct svc_redis_reply *rep = CMD(sentinel, "SENTINEL", "get-master-addr-by-name", "mymaster");
    int port = (int)strtol(svc_redis_reply_str(svc_redis_reply_elem(rep, 1), NULL), NULL, 10);
    svc_redis_reply_destroy(&rep);
    return port;
}

static void failover_tick(void *arg)
{
    struct failover_state *s = arg;
    struct svc_redis_reply *rep = NULL;
    char v[32];
    const char *set[] = {"SET", "ha:x", v};
    const char *incr[] = {"INCR", "ha:n"};
    const char *role[] = {"ROLE"};

    if (!s->demoted && svc_redis_cmd(s->old_master, &rep, 1, role, NULL) == SVC_OK &&
        strcmp(svc_redis_reply_str(svc_redis_reply_elem(rep, 0), NULL), "slave") == 0) {
        s->demoted = 1;
        s->demoted_at = svc_loop_clock_ms() - s->t0;
    }
    svc_redis_reply_destroy(&rep);
    /* when did the async client stop sending its INCRs to the old master? */
    {
        const char *info[] = {"INFO", "commandstats"};
        if (svc_redis_cmd(s->old_master, &rep, 2, info, NULL) == SVC_OK &&
            svc_redis_reply_type(rep) == SVC_REDIS_STRING) {
            const char *p = strstr(svc_redis_reply_str(rep, NULL), "cmdstat_incr:calls=");
            long long n = p != NULL ? strtoll(p + 19, NULL, 10) : 0;
            if (n > s->old_incrs) {
                s->old_incrs = n;
                s->last_old_incr = svc_loop_clock_ms() - s->t0;
            }
        }
        svc_redis_reply_destroy(&rep);
    }
    snprintf(v, sizeof(v), "%lld", ++s->seq);
    if (svc_redis_cmd(s->r, &rep, 3, set, NULL) == SVC_OK &&
        svc_redis_reply_type(rep) == SVC_REDIS_STATUS) {
        s->last_block = s->seq;
        if (s->demoted)
            s->block_ok_after++;
    } else {
        s->block_errors++;
    }
    svc_redis_reply_destroy(&rep);
    if (!s->async_inflight && svc_redis_async_connected(s->ra) &&
        svc_redis_async_cmd(s->ra, on_async_incr, s, 2, incr, NULL) == SVC_OK)
        s->async_inflight = 1;
}

static int failover_done(void *arg)
{
    struct failover_state *s = arg;
    return s->block_ok_after >= 10 && s->async_ok_after >= 10;
}

static int async_answered(void *arg)
{
    return !((struct failover_state *)arg)->async_inflight;
}

/* url with every 127.0.0.1 written as localhost: its seeds become names to look up. */
static void by_name(const char *url, char *out, size_t cap)
{
    const char *p = url, *hit;
    size_t n = 0;

    while ((hit = strstr(p, "127.0.0.1")) != NULL && n + (size_t)(hit - p) + 10 < cap) {
        memcpy(out + n, p, (size_t)(hit - p));
        n += (size_t)(hit - p);
        memcpy(out + n, "localhost", 9);
        n += 9;
        p = hit + 9;
    }
    T_ASSERT(n + strlen(p) < cap);
    memcpy(out + n, p, strlen(p) + 1);
}

/* Seeds named, not numbered: the async client looks them up off its loop (common/redis.c) and
 * connects; the blocking one resolves them itself. Both then work. */
static void names_connect(const char *url)
{
    struct svc_loop *loop = NULL;
    struct svc_redis_async *ra = NULL;
    struct svc_redis *rb = NULL;
    struct svc_redis_reply *rep;
    char named[512];

    by_name(url, named, sizeof(named));
    T_ASSERT(strstr(named, "localhost") != NULL);
    T_EQ_INT(svc_loop_create(&loop), SVC_OK);
    T_EQ_INT(svc_redis_async_create(&ra, loop, named, 1000, NULL, 0), SVC_OK);
    T_ASSERT(run_until(loop, is_connected, NULL, ra, 5000));
    T_EQ_INT(svc_redis_create(&rb, named, 1000, NULL, 0), SVC_OK);
    rep = CMD(rb, "SET", "{names}:k", "v");
    svc_redis_reply_destroy(&rep);
    svc_redis_destroy(&rb);
    svc_redis_async_destroy(&ra);
    svc_loop_destroy(&loop);
}

static void test_cluster_by_name(const char *url)
{
    names_connect(url);
}

static void test_sentinel_by_name(const char *url)
{
    names_connect(url);
}

static void test_sentinel(const char *url)
{
    struct svc__redis_url u;
    struct svc_loop *loop = NULL;
    T_EQ_INT(svc_loop_create(&loop), SVC_OK);
    struct failover_state s = {0};
    struct svc_redis_reply *rep;
    struct svc_redis *sentinel = NULL;
    char err[128], surl[320];
    int old_port, new_port;
    uint64_t t0;

    T_EQ_INT(svc__redis_url_parse(url, &u, err, sizeof(err)), SVC_OK);
    snprintf(surl, sizeof(surl), "redis://%s:%d/0", u.seeds[0].host, u.seeds[0].port);
    T_EQ_INT(svc_redis_create(&sentinel, surl, 2000, NULL, 0), SVC_OK);
    T_EQ_INT(svc_redis_create(&s.r, url, 1000, NULL, 0), SVC_OK);
    T_ASSERT(loop != NULL);
    T_EQ_INT(svc_redis_async_create(&s.ra, loop, url, 1000, NULL, 0), SVC_OK);
    T_ASSERT(s.ra != NULL);
    T_ASSERT(run_until(loop, is_connected, NULL, s.ra, 5000));
    old_port = master_port(sentinel);
    {
        struct svc__redis_addr m = {"127.0.0.1", old_port};
        s.old_master = node_client(&u, &m);
    }
    expect_status(s.r, (const char *[]){"SET", "ha:x", "before", NULL}, "OK");
    {
        /* a pipeline with one WAIT for all of it: the replica confirms both writes */
        const char *keys[] = {"ha:p1", "ha:p2"};
        struct svc_redis_reply *reps[2] = {NULL, NULL};
        int answered = 0, acked = 0;
        T_EQ_INT(pipeline_sets(s.r, 2, keys, reps, &answered, 1, &acked), SVC_OK);
        T_EQ_INT(answered, 2);
        T_ASSERT(acked >= 1);
        for (int i = 0; i < 2; i++) {
            T_EQ_STR(svc_redis_reply_str(reps[i], NULL), "OK");
            svc_redis_reply_destroy(&reps[i]);
        }
    }
    rep = CMD(s.r, "ROLE");
    T_EQ_STR(svc_redis_reply_str(svc_redis_reply_elem(rep, 0), NULL), "master");
    svc_redis_reply_destroy(&rep);

    /* The sentinels promote the replica; the clients are never told: they must notice. */
    t0 = svc_loop_clock_ms();
    s.t0 = t0;
    for (int tries = 0;; tries++) {
        rep = CMD(sentinel, "SENTINEL", "FAILOVER", "mymaster");
        int ok = svc_redis_reply_type(rep) == SVC_REDIS_STATUS;
        if (!ok && tries > 50)
            T_FAIL("SENTINEL FAILOVER: %s", svc_redis_reply_str(rep, NULL));
        svc_redis_reply_destroy(&rep);
        if (ok)
            break;
        sleep_ms(200); /* -NOGOODSLAVE while the sentinels still learn the replica's state */
    }
    run_until(loop, failover_done, failover_tick, &s, 30000);
    new_port = master_port(sentinel);
    fprintf(stderr,
            "failover %d -> %d: both clients writing to the new master %llu ms after SENTINEL "
            "FAILOVER (after the demotion: blocking %d ok, async %d ok; failed meanwhile: "
            "blocking %lld, async %lld)\n",
            old_port, new_port, (unsigned long long)(svc_loop_clock_ms() - t0), s.block_ok_after,
            s.async_ok_after, s.block_errors, s.async_errors);
    fprintf(stderr, "async client: its last INCR on the old master %llu ms after SENTINEL "
                    "FAILOVER; the old master was demoted after %llu ms\n",
            (unsigned long long)s.last_old_incr, (unsigned long long)s.demoted_at);
    T_ASSERT(s.demoted);
    T_ASSERT(new_port != old_port);
    /* it followed the sentinels' answer, not the demotion */
    T_ASSERT(s.last_old_incr + 2000 < s.demoted_at);
    T_ASSERT(failover_done(&s));
    /* the INCR of the last tick left with it (written when the loop pass ends): its answer */
    T_ASSERT(run_until(loop, async_answered, NULL, &s, 5000));
    /* the last writes of both clients are on the new master */
    {
        struct svc__redis_addr m = {"127.0.0.1", new_port};
        struct svc_redis *direct = node_client(&u, &m);
        char v[32];
        snprintf(v, sizeof(v), "%lld", s.last_block);
        rep = CMD(direct, "GET", "ha:x");
        T_EQ_STR(svc_redis_reply_str(rep, NULL), v);
        svc_redis_reply_destroy(&rep);
        rep = CMD(direct, "GET", "ha:n");
        T_EQ_INT(strtoll(svc_redis_reply_str(rep, NULL), NULL, 10), s.last_incr);
        svc_redis_reply_destroy(&rep);
        rep = CMD(direct, "ROLE");
        T_EQ_STR(svc_redis_reply_str(svc_redis_reply_elem(rep, 0), NULL), "master");
        svc_redis_reply_destroy(&rep);
        svc_redis_destroy(&direct);
    }
    svc_redis_async_destroy(&s.ra);
    svc_loop_destroy(&loop);
    svc_redis_destroy(&s.r);
    svc_redis_destroy(&s.old_master);
    svc_redis_destroy(&sentinel);
}

int main(void)
{
    const char *cluster = getenv("TEST_REDIS_CLUSTER_URL");
    const char *sentinel = getenv("TEST_REDIS_SENTINEL_URL");
    const char *require = getenv("TEST_REQUIRE_REDIS_HA");
    const char *only;

    T_RUN(test_url_forms);
    T_RUN(test_key_slots);
    T_RUN(test_cmd_keys);
    T_RUN(test_topology_replies);
    T_RUN(test_reader_bound);
    only = getenv("T_CASE");
    if (only != NULL && strncmp(only, "test_cluster", 12) != 0 &&
        strncmp(only, "test_sentinel", 13) != 0)
        return 0; /* one of the cases above, which need no servers */
    if (cluster == NULL || sentinel == NULL) {
        if (require != NULL && strcmp(require, "1") == 0)
            T_FAIL("TEST_REQUIRE_REDIS_HA=1 but TEST_REDIS_CLUSTER_URL or "
                   "TEST_REDIS_SENTINEL_URL is unset");
        fprintf(stderr, "no cluster or sentinel set (run under scripts/with-servers "
                        "--redis-ha): skipped\n");
        return 77;
    }
    T_RUN_ARG(test_cluster, cluster);
    T_RUN_ARG(test_cluster_by_name, cluster);
    T_RUN_ARG(test_sentinel_by_name, sentinel);
    T_RUN_ARG(test_sentinel, sentinel);
    return 0;
}
