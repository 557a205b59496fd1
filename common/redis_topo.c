#include "redis_topo.h"

#include <hiredis.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "svc/cfg.h"
#include "svc/err.h"

/* ---- URL ---- */

struct scheme {
    const char *prefix;
    int kind;
    int default_port;
};

static const struct scheme schemes[] = {
    {"redis://", SVC__REDIS_STANDALONE, 6379},
    {"redis-sentinel://", SVC__REDIS_SENTINEL, 26379},
    {"redis-cluster://", SVC__REDIS_CLUSTER, 6379},
};

static int copy_part(char *dst, size_t dstlen, const char *src, size_t n)
{
    if (n >= dstlen)
        return -1;
    memcpy(dst, src, n);
    dst[n] = '\0';
    return 0;
}

static int parse_hosts(const char *s, size_t n, int default_port, struct svc__redis_url *u,
                       char *err, size_t errlen)
{
    const char *end = s + n;

    while (s <= end) {
        const char *comma = memchr(s, ',', (size_t)(end - s));
        size_t len = (size_t)((comma != NULL ? comma : end) - s);
        struct svc__redis_addr *a;
        char hp[SVC__REDIS_HOST_MAX + 8];

        if (len == 0 || len >= sizeof(hp)) {
            snprintf(err, errlen, "missing host");
            return SVC_EINVAL;
        }
        if (u->nseeds >= SVC__REDIS_SEEDS_MAX) {
            snprintf(err, errlen, "more than %d hosts", SVC__REDIS_SEEDS_MAX);
            return SVC_EINVAL;
        }
        a = &u->seeds[u->nseeds];
        memcpy(hp, s, len);
        hp[len] = '\0';
        if (strchr(hp, ':') != NULL && hp[0] != ':') {
            if (svc_cfg_parse_addr(hp, a->host, sizeof(a->host), &a->port) != SVC_OK ||
                a->port == 0) {
                snprintf(err, errlen, "bad host:port \"%s\"", hp);
                return SVC_EINVAL;
            }
        } else if (hp[0] == ':' || hp[0] == '[') {
            snprintf(err, errlen, "bad host \"%s\"", hp);
            return SVC_EINVAL;
        } else if (len >= sizeof(a->host)) {
            snprintf(err, errlen, "host name too long");
            return SVC_EINVAL;
        } else {
            memcpy(a->host, hp, len + 1);
            a->port = default_port;
        }
        u->nseeds++;
        if (comma == NULL)
            break;
        s = comma + 1;
    }
    return SVC_OK;
}

static int name_valid(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s != '\0'; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_' || *s == '.'))
            return 0;
    return 1;
}

/* sentinel_user=U&sentinel_password=P (no percent-decoding, like the credentials of redis://). */
static int parse_query(const char *q, size_t n, struct svc__redis_url *u, char *err, size_t errlen)
{
    const char *end = q + n;

    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *stop = amp != NULL ? amp : end;
        const char *eq = memchr(q, '=', (size_t)(stop - q));
        size_t klen = eq != NULL ? (size_t)(eq - q) : 0;
        char *dst = NULL;
        size_t dstlen = 0;

        if (eq != NULL && klen == 13 && memcmp(q, "sentinel_user", 13) == 0) {
            dst = u->sentinel_user;
            dstlen = sizeof(u->sentinel_user);
        } else if (eq != NULL && klen == 17 && memcmp(q, "sentinel_password", 17) == 0) {
            dst = u->sentinel_password;
            dstlen = sizeof(u->sentinel_password);
        }
        if (dst == NULL) {
            snprintf(err, errlen, "unknown option (only sentinel_user and sentinel_password)");
            return SVC_EINVAL;
        }
        if (copy_part(dst, dstlen, eq + 1, (size_t)(stop - eq - 1)) != 0) {
            snprintf(err, errlen, "sentinel credentials too long");
            return SVC_EINVAL;
        }
        q = amp != NULL ? amp + 1 : end;
    }
    return SVC_OK;
}

int svc__redis_url_parse(const char *url, struct svc__redis_url *u, char *err, size_t errlen)
{
    const struct scheme *sc = NULL;
    const char *p, *end, *slash, *at = NULL, *hosts, *query = NULL;
    int64_t db = 0;

    memset(u, 0, sizeof(*u));
    for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++)
        if (strncmp(url, schemes[i].prefix, strlen(schemes[i].prefix)) == 0)
            sc = &schemes[i];
    if (sc == NULL) {
        snprintf(err, errlen, "must start with redis://, redis-sentinel:// or redis-cluster://");
        return SVC_EINVAL;
    }
    u->kind = sc->kind;
    p = url + strlen(sc->prefix);
    end = p + strlen(p);
    slash = memchr(p, '/', (size_t)(end - p));
    for (const char *s = p; s < (slash != NULL ? slash : end); s++)
        if (*s == '@')
            at = s;
    if (u->kind == SVC__REDIS_SENTINEL) {
        query = memchr(at != NULL ? at : p, '?', (size_t)(end - (at != NULL ? at : p)));
        if (query != NULL) {
            end = query;
            if (slash != NULL && slash > query)
                slash = NULL;
        }
    }
    if (at != NULL) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon == NULL) {
            snprintf(err, errlen, "credentials must be [user]:password@");
            return SVC_EINVAL;
        }
        if (copy_part(u->user, sizeof(u->user), p, (size_t)(colon - p)) != 0 ||
            copy_part(u->password, sizeof(u->password), colon + 1, (size_t)(at - colon - 1)) !=
                0) {
            snprintf(err, errlen, "credentials too long");
            return SVC_EINVAL;
        }
        hosts = at + 1;
    } else {
        hosts = p;
    }
    if (parse_hosts(hosts, (size_t)((slash != NULL ? slash : end) - hosts), sc->default_port, u,
                    err, errlen) != SVC_OK)
        return SVC_EINVAL;
    if (u->kind == SVC__REDIS_STANDALONE && u->nseeds != 1) {
        snprintf(err, errlen, "redis:// takes one host (use redis-sentinel:// or "
                              "redis-cluster:// for several)");
        return SVC_EINVAL;
    }
    if (u->kind == SVC__REDIS_SENTINEL) {
        const char *path = slash != NULL ? slash + 1 : end;
        const char *s2 = memchr(path, '/', (size_t)(end - path));
        size_t mlen = (size_t)((s2 != NULL ? s2 : end) - path);
        if (copy_part(u->master, sizeof(u->master), path, mlen) != 0 || !name_valid(u->master)) {
            snprintf(err, errlen, "redis-sentinel:// needs /<master name> after the hosts");
            return SVC_EINVAL;
        }
        slash = s2;
        if (query != NULL && parse_query(query + 1, strlen(query + 1), u, err, errlen) != SVC_OK)
            return SVC_EINVAL;
    }
    if (slash != NULL && slash + 1 < end) {
        char dbs[16];
        if (copy_part(dbs, sizeof(dbs), slash + 1, (size_t)(end - slash - 1)) != 0 ||
            svc_cfg_parse_int(dbs, 0, 15, &db) != SVC_OK) {
            snprintf(err, errlen, "database must be 0..15");
            return SVC_EINVAL;
        }
        if (u->kind == SVC__REDIS_CLUSTER && db != 0) {
            snprintf(err, errlen, "a cluster has database 0 only");
            return SVC_EINVAL;
        }
    }
    u->db = (int)db;
    snprintf(u->dbtxt, sizeof(u->dbtxt), "%d", u->db);
    return SVC_OK;
}

/* ---- key slots ---- */

static uint16_t crc16_xmodem(const unsigned char *s, size_t n)
{
    uint16_t crc = 0;

    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)(s[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

unsigned svc__redis_key_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);

    if (open != NULL) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close != NULL && close > open + 1)
            return crc16_xmodem((const unsigned char *)open + 1, (size_t)(close - open - 1)) &
                   (SVC__REDIS_SLOTS - 1);
    }
    return crc16_xmodem((const unsigned char *)key, len) & (SVC__REDIS_SLOTS - 1);
}

/* ---- which argument is the key ---- */

static size_t arglen(const char *const *argv, const size_t *argvlen, int i)
{
    return argvlen != NULL ? argvlen[i] : strlen(argv[i]);
}

static int is(const char *const *argv, const size_t *argvlen, int i, const char *name)
{
    size_t n = strlen(name);

    return arglen(argv, argvlen, i) == n && strncasecmp(argv[i], name, n) == 0;
}

static const char *const keyless[] = {
    "PING",   "TIME",    "INFO",   "SCRIPT",  "CLUSTER", "COMMAND", "CLIENT", "CONFIG",
    "DBSIZE", "FLUSHDB", "FLUSHALL", "ROLE",  "SENTINEL", "AUTH",   "SELECT", "HELLO",
    "DEBUG",  "ASKING",  "READONLY", "FUNCTION", "ECHO", "LASTSAVE", "SAVE", "BGSAVE",
};

int svc__redis_cmd_key(int argc, const char *const *argv, const size_t *argvlen, const char **key,
                       size_t *keylen)
{
    int k = 1;

    if (argc < 2)
        return 0;
    for (size_t i = 0; i < sizeof(keyless) / sizeof(keyless[0]); i++)
        if (is(argv, argvlen, 0, keyless[i]))
            return 0;
    if (is(argv, argvlen, 0, "EVAL") || is(argv, argvlen, 0, "EVALSHA") ||
        is(argv, argvlen, 0, "EVAL_RO") || is(argv, argvlen, 0, "EVALSHA_RO") ||
        is(argv, argvlen, 0, "FCALL") || is(argv, argvlen, 0, "FCALL_RO")) {
        /* numkeys is argv[2]; a key exists when it is > 0 */
        if (argc < 4 || arglen(argv, argvlen, 2) == 0 || argv[2][0] < '1' || argv[2][0] > '9')
            return 0;
        k = 3;
    } else if (is(argv, argvlen, 0, "XREAD") || is(argv, argvlen, 0, "XREADGROUP")) {
        k = -1;
        for (int i = 1; i + 1 < argc; i++)
            if (is(argv, argvlen, i, "STREAMS")) {
                k = i + 1;
                break;
            }
        if (k < 0)
            return 0;
    } else if (is(argv, argvlen, 0, "XGROUP") || is(argv, argvlen, 0, "XINFO") ||
               is(argv, argvlen, 0, "OBJECT") || is(argv, argvlen, 0, "MEMORY")) {
        if (argc < 3)
            return 0;
        k = 2;
    }
    *key = argv[k];
    *keylen = arglen(argv, argvlen, k);
    return 1;
}

/* ---- topology replies ---- */

static int node_index(struct svc__redis_slotmap *map, const char *host, size_t hlen, int port)
{
    for (int i = 0; i < map->nnodes; i++)
        if (map->nodes[i].port == port && strlen(map->nodes[i].host) == hlen &&
            memcmp(map->nodes[i].host, host, hlen) == 0)
            return i;
    if (map->nnodes >= SVC__REDIS_NODES_MAX || hlen >= SVC__REDIS_HOST_MAX)
        return -1;
    memcpy(map->nodes[map->nnodes].host, host, hlen);
    map->nodes[map->nnodes].host[hlen] = '\0';
    map->nodes[map->nnodes].port = port;
    return map->nnodes++;
}

int svc__redis_slotmap_node(struct svc__redis_slotmap *map, const char *host, int port)
{
    return node_index(map, host, strlen(host), port);
}

int svc__redis_slots_parse(const struct redisReply *rep, const char *default_host,
                           struct svc__redis_slotmap *map)
{
    map->nnodes = 0;
    for (int s = 0; s < SVC__REDIS_SLOTS; s++)
        map->slot_node[s] = -1;
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY)
        return -1;
    for (size_t i = 0; i < rep->elements; i++) {
        const redisReply *e = rep->element[i], *m;
        const char *host;
        size_t hlen;
        int idx;

        if (e == NULL || e->type != REDIS_REPLY_ARRAY || e->elements < 3)
            return -1;
        m = e->element[2];
        if (e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER || m->type != REDIS_REPLY_ARRAY ||
            m->elements < 2 || m->element[0]->type != REDIS_REPLY_STRING ||
            m->element[1]->type != REDIS_REPLY_INTEGER)
            return -1;
        if (e->element[0]->integer < 0 || e->element[1]->integer >= SVC__REDIS_SLOTS ||
            e->element[0]->integer > e->element[1]->integer || m->element[1]->integer < 1 ||
            m->element[1]->integer > 65535)
            return -1;
        host = m->element[0]->str;
        hlen = m->element[0]->len;
        if (hlen == 0 || (hlen == 1 && host[0] == '?')) {
            host = default_host;
            hlen = strlen(default_host);
        }
        if (hlen == 0 || memchr(host, '\0', hlen) != NULL)
            return -1;
        idx = node_index(map, host, hlen, (int)m->element[1]->integer);
        if (idx < 0)
            return -1;
        for (long long s = e->element[0]->integer; s <= e->element[1]->integer; s++)
            map->slot_node[s] = (short)idx;
    }
    return map->nnodes > 0 ? 0 : -1;
}

int svc__redis_redirect_parse(const char *text, size_t len, unsigned *slot,
                              struct svc__redis_addr *to)
{
    int kind;
    size_t i;
    unsigned long s = 0;
    const char *colon = NULL, *host;
    int64_t port;
    char ptxt[8];

    if (len > 6 && memcmp(text, "MOVED ", 6) == 0) {
        kind = 1;
        i = 6;
    } else if (len > 4 && memcmp(text, "ASK ", 4) == 0) {
        kind = 2;
        i = 4;
    } else {
        return 0;
    }
    if (i >= len || text[i] < '0' || text[i] > '9')
        return 0;
    for (; i < len && text[i] >= '0' && text[i] <= '9'; i++) {
        s = s * 10 + (unsigned long)(text[i] - '0');
        if (s >= SVC__REDIS_SLOTS)
            return 0;
    }
    if (i >= len || text[i] != ' ')
        return 0;
    host = text + ++i;
    for (; i < len; i++)
        if (text[i] == ':')
            colon = text + i;
    if (colon == NULL || (size_t)(colon - host) >= sizeof(to->host) ||
        memchr(host, '\0', (size_t)(colon - host)) != NULL ||
        copy_part(ptxt, sizeof(ptxt), colon + 1, (size_t)(text + len - colon - 1)) != 0 ||
        svc_cfg_parse_int(ptxt, 1, 65535, &port) != SVC_OK)
        return 0;
    memcpy(to->host, host, (size_t)(colon - host));
    to->host[colon - host] = '\0';
    to->port = (int)port;
    *slot = (unsigned)s;
    return kind;
}

int svc__redis_sentinel_addr(const struct redisReply *rep, struct svc__redis_addr *to)
{
    char ptxt[8];
    int64_t port;

    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_STRING ||
        rep->element[1]->type != REDIS_REPLY_STRING || rep->element[0]->len == 0 ||
        memchr(rep->element[0]->str, '\0', rep->element[0]->len) != NULL ||
        copy_part(to->host, sizeof(to->host), rep->element[0]->str, rep->element[0]->len) != 0 ||
        copy_part(ptxt, sizeof(ptxt), rep->element[1]->str, rep->element[1]->len) != 0 ||
        svc_cfg_parse_int(ptxt, 1, 65535, &port) != SVC_OK)
        return -1;
    to->port = (int)port;
    return 0;
}

int svc__redis_role_is_master(const struct redisReply *rep)
{
    return rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1 &&
           (rep->element[0]->type == REDIS_REPLY_STRING ||
            rep->element[0]->type == REDIS_REPLY_STATUS) &&
           rep->element[0]->len == 6 && memcmp(rep->element[0]->str, "master", 6) == 0;
}

/* ---- a bound on what one reply may allocate ---- */

static redisReplyObjectFunctions *hiredis_fns; /* the reader's defaults (hiredis's own table) */
static redisReplyObjectFunctions bounded_fns;
static pthread_once_t bounded_once = PTHREAD_ONCE_INIT;

static void *bounded_array(const redisReadTask *task, int elements)
{
    if (elements > SVC__REDIS_ARRAY_MAX)
        return NULL; /* the reader reports "Out of memory" and the connection is dropped */
    return hiredis_fns->createArray(task, elements);
}

static void bounded_setup(void)
{
    redisReader *r = redisReaderCreate();

    if (r == NULL)
        return;
    hiredis_fns = r->fn;
    bounded_fns = *hiredis_fns;
    bounded_fns.createArray = bounded_array;
    redisReaderFree(r);
}

void svc__redis_reader_bound(struct redisReader *r)
{
    pthread_once(&bounded_once, bounded_setup);
    if (r != NULL && hiredis_fns != NULL && r->fn == hiredis_fns)
        r->fn = &bounded_fns;
}
