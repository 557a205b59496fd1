#include "svc/ratelimit.h"

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

static void on_incr(int err, const struct svc_redis_reply *reply, void *data)
{
    struct rl_call *c = data;
    long long n = 0;

    if (err == SVC_OK && svc_redis_reply_type(reply) != SVC_REDIS_INTEGER)
        err = SVC_EIO;
    if (err == SVC_OK)
        n = svc_redis_reply_int(reply);
    c->cb(err, err == SVC_OK ? n <= c->limit : 1, n, c->data);
    free(c);
}

int svc_ratelimit_hit(struct svc_redis_async *r, const char *scope, long long limit, int window_s,
                      svc_ratelimit_cb cb, void *data)
{
    char key[RL_KEY_MAX], ttl[16];
    long long window = svc_wallclock_ms() / 1000 / (window_s > 0 ? window_s : 1);
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
    c->data = data;
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
