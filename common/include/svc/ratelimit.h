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

/* ctx: the one given to svc_ratelimit_hit. err is SVC_OK, or SVC_EUNAVAIL / SVC_ETIMEDOUT /
 * SVC_ECANCELED / SVC_EIO when Redis could not answer (allowed is then 1; the caller decides:
 * chat lets the request through, a limiter must not take the service down). allowed: 1 when
 * this request fits. */
typedef void (*svc_ratelimit_cb)(void *ctx, int err, int allowed, long long count);

/*
 * Counts one request for scope against limit per window_s seconds. cb runs exactly once on the
 * loop, unless this returns an error (then it never runs).
 */
int svc_ratelimit_hit(struct svc_redis_async *r, const char *scope, long long limit, int window_s,
                      svc_ratelimit_cb cb, void *ctx) SVC_MUST_CHECK;

/*
 * Token limits (tokens per minute) shared by every replica: one fixed-window counter per scope,
 *     cw:tpm:{<tag>}:<scope>:<window number>
 * A request is admitted with its exact prompt tokens when every scope still has room for them
 * (used + tokens <= limit), and all its scopes are charged in the same atomic step (one Lua
 * script; the scopes share the hash tag, so the keys live in one Redis Cluster slot). When the
 * reply is over, svc_ratelimit_tokens_add() corrects the counters to the real usage. A request
 * larger than a limit on its own is never admitted.
 */

#define SVC_RATELIMIT_SCOPES_MAX 4

struct svc_ratelimit_scope {
    const char *name;  /* e.g. "user" or "key:sk-1a2b3c4d"; [A-Za-z0-9:_.-] */
    long long limit;   /* tokens per window, > 0 */
};

/*
 * The answer of svc_ratelimit_tokens_admit, with its ctx. err != SVC_OK (SVC_EUNAVAIL,
 * SVC_ETIMEDOUT, SVC_ECANCELED, SVC_EIO): Redis could not answer (allowed is 1, the caller
 * decides). Otherwise allowed is 1, or 0 with refused = the index of the first scope without
 * room, used = its count in this window, retry_after_s = seconds until the window ends.
 */
typedef void (*svc_ratelimit_tokens_cb)(void *ctx, int err, int allowed, int refused,
                                        long long used, int retry_after_s);

/*
 * Admits tokens against nscopes scopes (1..SVC_RATELIMIT_SCOPES_MAX) under one hash tag (e.g.
 * "u42": all the scopes of one user). cb runs exactly once on the loop unless this returns an
 * error (SVC_EINVAL, SVC_ETOOLARGE, SVC_ENOMEM, SVC_EUNAVAIL); then it never runs.
 */
int svc_ratelimit_tokens_admit(struct svc_redis_async *r, const char *tag,
                               const struct svc_ratelimit_scope *scopes, int nscopes,
                               long long tokens, int window_s, svc_ratelimit_tokens_cb cb,
                               void *ctx) SVC_MUST_CHECK;

/* Adds delta tokens (may be negative) to every scope's current window. Fire and forget. */
int svc_ratelimit_tokens_add(struct svc_redis_async *r, const char *tag,
                             const struct svc_ratelimit_scope *scopes, int nscopes,
                             long long delta, int window_s) SVC_MUST_CHECK;

#endif
