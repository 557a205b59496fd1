#include "svc/ratelimit.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/redis.h"
#include "svc/util.h"

#define RL_KEY_MAX 256

struct rl_call {
    svc_ratelimit_cb cb;
    void *data;
    long long limit;
};

static void on_incr(void *data, int err, const struct svc_redis_reply *reply)
{
    struct rl_call *c = data;
    long long n = 0;

    if (err == SVC_OK && svc_redis_reply_type(reply) != SVC_REDIS_INTEGER)
        err = SVC_EIO;
    if (err == SVC_OK)
        n = svc_redis_reply_int(reply);
    c->cb(c->data, err, err == SVC_OK ? n <= c->limit : 1, n);
    free(c);
}

int svc_ratelimit_hit(struct svc_redis_async *r, const char *scope, long long limit, int window_s,
                      svc_ratelimit_cb cb, void *ctx)
{
    char key[RL_KEY_MAX], ttl[16];
    long long window = svc_util_wallclock_ms() / 1000 / (window_s > 0 ? window_s : 1);
    struct rl_call *c;
    int n, rc;

    n = snprintf(key, sizeof(key), "cw:rl:{%s}:%lld", scope, window);
    if (n < 0 || (size_t)n >= sizeof(key))
        return SVC_ETOOLARGE;
    snprintf(ttl, sizeof(ttl), "%d", 2 * (window_s > 0 ? window_s : 1));
    c = malloc(sizeof(*c));
    if (c == NULL)
        return SVC_ENOMEM;
    c->cb = cb;
    c->data = ctx;
    c->limit = limit;
    {
        const char *argv[] = {"INCR", key};
        size_t lens[] = {4, (size_t)n};
        rc = svc_redis_async_cmd(r, on_incr, c, 2, argv, lens);
    }
    if (rc != SVC_OK) {
        free(c);
        return rc;
    }
    {
        const char *argv[] = {"EXPIRE", key, ttl};
        size_t lens[] = {6, (size_t)n, strlen(ttl)};
        /* best effort: a key without TTL only lingers until its window is long gone */
        if (svc_redis_async_cmd(r, NULL, NULL, 3, argv, lens) != SVC_OK) {
        }
    }
    return SVC_OK;
}

/* ---- tokens per window ---- */

/*
 * Checks every scope before charging any, so a request refused by one scope costs the others
 * nothing. KEYS: one counter per scope. ARGV: tokens, TTL, then one limit per key.
 * Returns {1, 0, 0} when admitted, {0, i, used} when scope i (1-based) has no room.
 */
static const char TOKENS_ADMIT_LUA[] =
    "local t = tonumber(ARGV[1])\n"
    "for i, k in ipairs(KEYS) do\n"
    "  local used = tonumber(redis.call('GET', k) or '0')\n"
    "  if used + t > tonumber(ARGV[i + 2]) then return {0, i, used} end\n"
    "end\n"
    "for _, k in ipairs(KEYS) do\n"
    "  redis.call('INCRBY', k, t)\n"
    "  redis.call('EXPIRE', k, ARGV[2])\n"
    "end\n"
    "return {1, 0, 0}\n";

/* KEYS: one counter per scope. ARGV: delta, TTL. */
static const char TOKENS_ADD_LUA[] = "for _, k in ipairs(KEYS) do\n"
                                     "  redis.call('INCRBY', k, ARGV[1])\n"
                                     "  redis.call('EXPIRE', k, ARGV[2])\n"
                                     "end\n"
                                     "return 0\n";

struct tokens_call {
    svc_ratelimit_tokens_cb cb;
    void *data;
    int retry_after_s;
};

static int scope_name_valid(const char *s)
{
    if (s == NULL || s[0] == '\0')
        return 0;
    for (; *s != '\0'; s++)
        if (!(isalnum((unsigned char)*s) || *s == ':' || *s == '_' || *s == '.' ||
              *s == '-'))
            return 0;
    return 1;
}

/*
 * Builds the EVAL argument vector for a token script: EVAL script nkeys key... tokens ttl
 * [limit...]. Keys and numbers live in store (RL_KEY_MAX bytes per slot). Returns argc, or a
 * negative SVC_E* code.
 */
#define TOKENS_ARGV_MAX (3 + 2 * SVC_RATELIMIT_SCOPES_MAX + 2)

static int tokens_argv(const char *script, const char *tag,
                       const struct svc_ratelimit_scope *scopes, int nscopes, long long tokens,
                       int window_s, int with_limits, char store[][RL_KEY_MAX],
                       const char *argv[TOKENS_ARGV_MAX], size_t lens[TOKENS_ARGV_MAX])
{
    long long window = svc_util_wallclock_ms() / 1000 / window_s;
    int argc = 0, slot = 0, n;

    if (nscopes < 1 || nscopes > SVC_RATELIMIT_SCOPES_MAX || window_s < 1 ||
        !scope_name_valid(tag))
        return SVC_EINVAL;
    argv[argc] = "EVAL";
    lens[argc++] = 4;
    argv[argc] = script;
    lens[argc++] = strlen(script);
    n = snprintf(store[slot], RL_KEY_MAX, "%d", nscopes);
    argv[argc] = store[slot++];
    lens[argc++] = (size_t)n;
    for (int i = 0; i < nscopes; i++) {
        if (!scope_name_valid(scopes[i].name))
            return SVC_EINVAL;
        n = snprintf(store[slot], RL_KEY_MAX, "cw:tpm:{%s}:%s:%lld", tag, scopes[i].name, window);
        if (n < 0 || n >= RL_KEY_MAX)
            return SVC_ETOOLARGE;
        argv[argc] = store[slot++];
        lens[argc++] = (size_t)n;
    }
    n = snprintf(store[slot], RL_KEY_MAX, "%lld", tokens);
    argv[argc] = store[slot++];
    lens[argc++] = (size_t)n;
    n = snprintf(store[slot], RL_KEY_MAX, "%d", 2 * window_s);
    argv[argc] = store[slot++];
    lens[argc++] = (size_t)n;
    for (int i = 0; with_limits && i < nscopes; i++) {
        n = snprintf(store[slot], RL_KEY_MAX, "%lld", scopes[i].limit);
        argv[argc] = store[slot++];
        lens[argc++] = (size_t)n;
    }
    return argc;
}

static void on_tokens_admit(void *data, int err, const struct svc_redis_reply *reply)
{
    struct tokens_call *c = data;
    int allowed = 1, refused = -1;
    long long used = 0;

    if (err == SVC_OK && (svc_redis_reply_type(reply) != SVC_REDIS_ARRAY ||
                          svc_redis_reply_count(reply) != 3))
        err = SVC_EIO;
    if (err == SVC_OK) {
        allowed = svc_redis_reply_int(svc_redis_reply_elem(reply, 0)) == 1;
        refused = allowed ? -1 : (int)svc_redis_reply_int(svc_redis_reply_elem(reply, 1)) - 1;
        used = svc_redis_reply_int(svc_redis_reply_elem(reply, 2));
    }
    c->cb(c->data, err, allowed, refused, used, c->retry_after_s);
    free(c);
}

int svc_ratelimit_tokens_admit(struct svc_redis_async *r, const char *tag,
                               const struct svc_ratelimit_scope *scopes, int nscopes,
                               long long tokens, int window_s, svc_ratelimit_tokens_cb cb,
                               void *ctx)
{
    char store[TOKENS_ARGV_MAX][RL_KEY_MAX];
    const char *argv[TOKENS_ARGV_MAX];
    size_t lens[TOKENS_ARGV_MAX];
    struct tokens_call *c;
    int argc, rc;

    if (tokens < 0 || cb == NULL)
        return SVC_EINVAL;
    for (int i = 0; i < nscopes && i < SVC_RATELIMIT_SCOPES_MAX; i++)
        if (scopes[i].limit <= 0)
            return SVC_EINVAL;
    argc = tokens_argv(TOKENS_ADMIT_LUA, tag, scopes, nscopes, tokens, window_s, 1, store, argv,
                       lens);
    if (argc < 0)
        return argc;
    c = malloc(sizeof(*c));
    if (c == NULL)
        return SVC_ENOMEM;
    c->cb = cb;
    c->data = ctx;
    c->retry_after_s = window_s - (int)(svc_util_wallclock_ms() / 1000 % window_s);
    rc = svc_redis_async_cmd(r, on_tokens_admit, c, argc, argv, lens);
    if (rc != SVC_OK)
        free(c);
    return rc;
}

int svc_ratelimit_tokens_add(struct svc_redis_async *r, const char *tag,
                             const struct svc_ratelimit_scope *scopes, int nscopes,
                             long long delta, int window_s)
{
    char store[TOKENS_ARGV_MAX][RL_KEY_MAX];
    const char *argv[TOKENS_ARGV_MAX];
    size_t lens[TOKENS_ARGV_MAX];
    int argc;

    if (delta == 0)
        return SVC_OK;
    argc = tokens_argv(TOKENS_ADD_LUA, tag, scopes, nscopes, delta, window_s, 0, store, argv,
                       lens);
    if (argc < 0)
        return argc;
    return svc_redis_async_cmd(r, NULL, NULL, argc, argv, lens);
}
