#ifndef SVC_RATELIMIT_H
#define SVC_RATELIMIT_H

#include "svc/err.h"

/*
 * Request rate limits shared by every replica: a fixed-window counter in Redis per scope,
 *     cw:rl:{<scope>}:<window number>   INCR, then EXPIRE 2 windows
 * so N replicas enforce one limit together (the seed had one in-process bucket for everybody,
 * C5). A fixed window lets through at most 2 x limit across a window edge; that is the price of
 * one round trip and no Lua.
 */

struct svc_redis_async;

/* allowed: 1 when this request fits. err != SVC_OK when Redis could not answer; the caller
 * decides (chat lets the request through: a limiter must not take the service down). */
typedef void (*svc_ratelimit_cb)(int err, int allowed, long long count, void *data);

/*
 * Counts one request for scope against limit per window_s seconds. cb runs exactly once on the
 * loop, unless this returns an error (then it never runs).
 */
int svc_ratelimit_hit(struct svc_redis_async *r, const char *scope, long long limit, int window_s,
                      svc_ratelimit_cb cb, void *data) SVC_MUST_CHECK;

#endif
