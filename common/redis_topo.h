#ifndef SVC_REDIS_TOPO_H
#define SVC_REDIS_TOPO_H

/*
 * The parts of the Redis client that know about topologies (docs/redis.md): the REDIS_URL forms
 * (redis://, redis-sentinel://, redis-cluster://), Redis Cluster's key slots, which argument of a
 * command is its key, and the replies that describe a topology (CLUSTER SLOTS, MOVED/ASK,
 * SENTINEL get-master-addr-by-name, ROLE). Pure functions without I/O, so they can be fuzzed
 * (tests/fuzz/fuzz_redis_topo.c). Internal to common/ (redis.c); not a public header.
 */

#include <stddef.h>

struct redisReply;

#define SVC__REDIS_HOST_MAX 256
#define SVC__REDIS_SEEDS_MAX 16   /* host:port pairs in one URL */
#define SVC__REDIS_NODES_MAX 64   /* masters a slot map can hold */
#define SVC__REDIS_SLOTS 16384

enum svc__redis_kind {
    SVC__REDIS_STANDALONE = 0,
    SVC__REDIS_SENTINEL = 1,
    SVC__REDIS_CLUSTER = 2,
};

struct svc__redis_addr {
    char host[SVC__REDIS_HOST_MAX];
    int port;
};

struct svc__redis_url {
    int kind;                                          /* enum svc__redis_kind */
    struct svc__redis_addr seeds[SVC__REDIS_SEEDS_MAX]; /* the server, sentinels or cluster seeds */
    int nseeds;
    char user[128];     /* of the data nodes (AUTH [user] password) */
    char password[256];
    char sentinel_user[128];     /* of the sentinels (?sentinel_password=...); empty: no AUTH */
    char sentinel_password[256];
    char master[128];   /* sentinel: the monitored master's name */
    int db;             /* SELECT; always 0 in a cluster */
    char dbtxt[12];
};

/*
 * Parses a REDIS_URL:
 *   redis://[[user]:password@]host[:port][/db]
 *   redis-sentinel://[[user]:password@]host[:port][,host[:port]...]/master[/db]
 *                    [?sentinel_user=U&sentinel_password=P]            (default port 26379)
 *   redis-cluster://[[user]:password@]host[:port][,host[:port]...][/0]  (default port 6379)
 * The credentials are those of the data nodes, as in redis://. SVC_EINVAL with a reason in err
 * (never the password). Thread-safe.
 */
int svc__redis_url_parse(const char *url, struct svc__redis_url *u, char *err, size_t errlen);

/* Redis Cluster's slot of a key: CRC16 (XMODEM) of the hash tag ({...}, when it is non-empty)
 * or of the whole key, modulo 16384. */
unsigned svc__redis_key_slot(const char *key, size_t len);

/*
 * The key a command is routed by: argv[1] for most commands, the first key of EVAL/EVALSHA/FCALL,
 * the first stream of XREAD/XREADGROUP, the key of XGROUP/XINFO subcommands. Returns 1 with
 * key and keylen set, 0 for commands without a key (PING, TIME, SCRIPT ..., EVAL with 0 keys).
 * argvlen may be NULL (strlen is used).
 */
int svc__redis_cmd_key(int argc, const char *const *argv, const size_t *argvlen, const char **key,
                       size_t *keylen);

/* A slot map: slot -> index in nodes (the slot's master), or -1 when no node serves it. */
struct svc__redis_slotmap {
    struct svc__redis_addr nodes[SVC__REDIS_NODES_MAX];
    int nnodes;
    short slot_node[SVC__REDIS_SLOTS];
};

/*
 * Fills map from a CLUSTER SLOTS reply. A master given with an empty host or "?" takes
 * default_host (the node that was asked). Returns 0, or -1 when the reply is not a well-formed
 * CLUSTER SLOTS reply (map is then unspecified). Slots a reply does not cover stay -1.
 */
int svc__redis_slots_parse(const struct redisReply *rep, const char *default_host,
                           struct svc__redis_slotmap *map);

/* The index of host:port in map->nodes, added when missing; -1 when the map is full. */
int svc__redis_slotmap_node(struct svc__redis_slotmap *map, const char *host, int port);

/*
 * Parses a "MOVED <slot> <host>:<port>" or "ASK <slot> <host>:<port>" error text (len bytes).
 * Returns 1 (MOVED) or 2 (ASK) with *slot and *to set, 0 when the text is neither. An empty host
 * (Redis 7's unknown endpoint) is left empty: the caller substitutes the node it asked.
 */
int svc__redis_redirect_parse(const char *text, size_t len, unsigned *slot,
                              struct svc__redis_addr *to);

/* The master address out of a SENTINEL get-master-addr-by-name reply: 0, or -1 (nil, error,
 * malformed). */
int svc__redis_sentinel_addr(const struct redisReply *rep, struct svc__redis_addr *to);

/* 1 when a ROLE reply says "master", else 0. */
int svc__redis_role_is_master(const struct redisReply *rep);

/*
 * Bounds what one reply can make us allocate. hiredis 0.14 callocs an array's element table as
 * soon as it reads the header, so "*300000000\r\n" from a broken or hostile server asks for
 * gigabytes before a single element arrives (found by fuzz_redis_topo). The reader refuses an
 * array of more than SVC__REDIS_ARRAY_MAX elements with an out-of-memory error instead, which
 * ends that connection like any protocol error. Call on every reader we create. Thread-safe.
 */
#define SVC__REDIS_ARRAY_MAX (1 << 20)
struct redisReader;
void svc__redis_reader_bound(struct redisReader *r);

#endif
