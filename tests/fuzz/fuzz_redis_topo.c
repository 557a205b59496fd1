/*
 * Fuzz target for the Redis client's topology parsers (common/redis_topo.c). Byte 0 picks one:
 *   0  svc__redis_url_parse on the rest as a C string (cut at the first NUL);
 *   1  the rest as RESP bytes, read by hiredis's reader; every reply goes through
 *      svc__redis_slots_parse, svc__redis_sentinel_addr and svc__redis_role_is_master;
 *   2  svc__redis_redirect_parse on the rest (binary, not NUL-terminated);
 *   3  svc__redis_key_slot and svc__redis_cmd_key on the rest split at NUL bytes into argv.
 *
 * Properties checked:
 *  - an accepted URL has a known kind, 1..16 hosts (exactly 1 for redis://), each non-empty and
 *    NUL-terminated with a port in 1..65535, a master name for Sentinel, db 0..15 (0 for
 *    Cluster); a refused one has a non-empty reason;
 *  - an accepted slot map has 1..64 nodes, every slot -1 or a valid node index, every node a
 *    non-empty NUL-terminated host and a port in 1..65535;
 *  - a parsed redirection has a slot < 16384, a port in 1..65535 and a host that is a copy of the
 *    bytes between the slot and the last colon;
 *  - key slots agree with a bit-by-bit reference CRC16 of the hash tag rule, and are < 16384;
 *    the routing key of a command is one of its arguments, whole.
 */

#include <hiredis.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "redis_topo.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                             \
    do {                                                                                     \
        if (!(c))                                                                            \
            abort();                                                                         \
    } while (0)

static int host_ok(const char *h, size_t cap)
{
    size_t n = strnlen(h, cap);
    return n > 0 && n < cap;
}

static void fuzz_url(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    struct svc__redis_url u;
    char err[96];

    if (s == NULL)
        return;
    memcpy(s, data, size);
    s[size] = '\0';
    memset(err, 0, sizeof(err));
    if (svc__redis_url_parse(s, &u, err, sizeof(err)) == 0) {
        CHECK(u.kind == SVC__REDIS_STANDALONE || u.kind == SVC__REDIS_SENTINEL ||
              u.kind == SVC__REDIS_CLUSTER);
        CHECK(u.nseeds >= 1 && u.nseeds <= SVC__REDIS_SEEDS_MAX);
        CHECK(u.kind != SVC__REDIS_STANDALONE || u.nseeds == 1);
        for (int i = 0; i < u.nseeds; i++) {
            CHECK(host_ok(u.seeds[i].host, sizeof(u.seeds[i].host)));
            CHECK(u.seeds[i].port >= 1 && u.seeds[i].port <= 65535);
        }
        CHECK(u.kind != SVC__REDIS_SENTINEL || host_ok(u.master, sizeof(u.master)));
        CHECK(u.db >= 0 && u.db <= 15);
        CHECK(u.kind != SVC__REDIS_CLUSTER || u.db == 0);
        CHECK(strnlen(u.password, sizeof(u.password)) < sizeof(u.password));
        CHECK(strnlen(u.sentinel_password, sizeof(u.sentinel_password)) <
              sizeof(u.sentinel_password));
    } else {
        CHECK(err[0] != '\0' && strnlen(err, sizeof(err)) < sizeof(err));
    }
    free(s);
}

static void fuzz_replies(const uint8_t *data, size_t size)
{
    redisReader *rd = redisReaderCreate();
    struct svc__redis_slotmap *map = malloc(sizeof(*map));
    void *rep = NULL;

    if (rd == NULL || map == NULL)
        goto out;
    svc__redis_reader_bound(rd); /* as every reader of common/redis.c is */
    if (redisReaderFeed(rd, (const char *)data, size) != REDIS_OK)
        goto out;
    for (int n = 0; n < 16 && redisReaderGetReply(rd, &rep) == REDIS_OK && rep != NULL; n++) {
        struct svc__redis_addr a;
        if (svc__redis_slots_parse(rep, "10.1.2.3", map) == 0) {
            CHECK(map->nnodes >= 1 && map->nnodes <= SVC__REDIS_NODES_MAX);
            for (int s = 0; s < SVC__REDIS_SLOTS; s++)
                CHECK(map->slot_node[s] >= -1 && map->slot_node[s] < map->nnodes);
            for (int i = 0; i < map->nnodes; i++) {
                CHECK(host_ok(map->nodes[i].host, sizeof(map->nodes[i].host)));
                CHECK(map->nodes[i].port >= 1 && map->nodes[i].port <= 65535);
            }
        }
        if (svc__redis_sentinel_addr(rep, &a) == 0) {
            CHECK(host_ok(a.host, sizeof(a.host)));
            CHECK(a.port >= 1 && a.port <= 65535);
        }
        (void)svc__redis_role_is_master(rep);
        freeReplyObject(rep);
        rep = NULL;
    }
out:
    free(map);
    if (rd != NULL)
        redisReaderFree(rd);
}

static void fuzz_redirect(const uint8_t *data, size_t size)
{
    struct svc__redis_addr a;
    unsigned slot = 99999;
    int k = svc__redis_redirect_parse((const char *)data, size, &slot, &a);

    CHECK(k >= 0 && k <= 2);
    if (k != 0) {
        const char *text = (const char *)data;
        const char *sp = memchr(text + (k == 1 ? 6 : 4), ' ', size - (k == 1 ? 6 : 4));
        size_t hl = strnlen(a.host, sizeof(a.host));
        CHECK(slot < SVC__REDIS_SLOTS);
        CHECK(a.port >= 1 && a.port <= 65535);
        CHECK(hl < sizeof(a.host));
        CHECK(sp != NULL && (size_t)(sp + 1 - text) + hl < size);
        CHECK(memcmp(sp + 1, a.host, hl) == 0 && sp[1 + hl] == ':');
    }
}

static unsigned ref_crc16(const unsigned char *p, size_t n)
{
    unsigned crc = 0;

    for (size_t i = 0; i < n; i++)
        for (int b = 7; b >= 0; b--) {
            unsigned bit = ((p[i] >> b) & 1u) ^ ((crc >> 15) & 1u);
            crc = (crc << 1) & 0xffffu;
            if (bit)
                crc ^= 0x1021u;
        }
    return crc;
}

static unsigned ref_slot(const unsigned char *k, size_t n)
{
    size_t s, e;

    for (s = 0; s < n && k[s] != '{'; s++)
        ;
    if (s < n) {
        for (e = s + 1; e < n && k[e] != '}'; e++)
            ;
        if (e < n && e > s + 1)
            return ref_crc16(k + s + 1, e - s - 1) % 16384;
    }
    return ref_crc16(k, n) % 16384;
}

#define ARGS_MAX 12

static void fuzz_keys(const uint8_t *data, size_t size)
{
    const char *argv[ARGS_MAX];
    size_t lens[ARGS_MAX];
    char *copy = malloc(size + 1);
    int argc = 0;
    const char *key;
    size_t keylen;
    size_t start = 0;

    if (copy == NULL)
        return;
    CHECK(svc__redis_key_slot((const char *)data, size) == ref_slot(data, size));
    memcpy(copy, data, size);
    copy[size] = '\0';
    for (size_t i = 0; i <= size && argc < ARGS_MAX; i++)
        if (i == size || copy[i] == '\0') {
            argv[argc] = copy + start;
            lens[argc++] = i - start;
            start = i + 1;
        }
    if (svc__redis_cmd_key(argc, argv, lens, &key, &keylen) == 1) {
        int found = 0;
        for (int i = 1; i < argc; i++)
            found |= key == argv[i] && keylen == lens[i];
        CHECK(found);
    }
    if (svc__redis_cmd_key(argc, argv, NULL, &key, &keylen) == 1)
        CHECK(keylen == strlen(key));
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    switch (data[0] % 4) {
    case 0:
        fuzz_url(data + 1, size - 1);
        break;
    case 1:
        fuzz_replies(data + 1, size - 1);
        break;
    case 2:
        fuzz_redirect(data + 1, size - 1);
        break;
    default:
        fuzz_keys(data + 1, size - 1);
        break;
    }
    return 0;
}
