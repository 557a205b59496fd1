#ifndef SVC_REDIS_H
#define SVC_REDIS_H

#include <stddef.h>
#include <stdint.h>

#include "svc/err.h"

/*
 * Redis, on hiredis 0.14 (hidden behind this header).
 *
 * Commands are always argv arrays (binary safe, never format strings built from user input).
 * Transport problems (cannot connect, connection lost, no reply in time) are SVC_EUNAVAIL or
 * SVC_ETIMEDOUT; a Redis error reply is SVC_EIO with the reply's text available.
 *
 * URL (docs/redis.md):
 *   redis://[[user]:password@]host[:port][/db]                       one server (port 6379, db 0)
 *   redis-sentinel://[[user]:password@]host[:port],.../master[/db]    the master of a Sentinel set
 *   redis-cluster://[[user]:password@]host[:port],...                 a Redis Cluster (seeds)
 * Both clients find the master or a key's slot owner themselves and follow failovers and
 * MOVED/ASK redirections; callers do not change (multi-key commands must share a hash tag).
 */

struct svc_loop;
struct svc_redis;        /* blocking client, a pool of connections shared by worker threads */
struct svc_redis_async;  /* non-blocking client bound to one event loop */
struct svc_redis_reply;  /* a reply; borrowed in callbacks, owned after svc_redis_cmd */

enum svc_redis_type {
    SVC_REDIS_STRING = 1,
    SVC_REDIS_ARRAY = 2,
    SVC_REDIS_INTEGER = 3,
    SVC_REDIS_NIL = 4,
    SVC_REDIS_STATUS = 5,
    SVC_REDIS_ERROR = 6,
};

int svc_redis_reply_type(const struct svc_redis_reply *r);
const char *svc_redis_reply_str(const struct svc_redis_reply *r, size_t *len); /* STRING/STATUS/ERROR */
long long svc_redis_reply_int(const struct svc_redis_reply *r);
size_t svc_redis_reply_count(const struct svc_redis_reply *r);                 /* ARRAY */
const struct svc_redis_reply *svc_redis_reply_elem(const struct svc_redis_reply *r, size_t i);
void svc_redis_reply_destroy(struct svc_redis_reply **r);

/* Parses a redis:// URL; SVC_EINVAL with a reason in err. */
int svc_redis_url_check(const char *url, char *err, size_t errlen) SVC_MUST_CHECK;

/* ---- blocking ---- */

/*
 * Creates the client; connects lazily. timeout_ms bounds connect and every command. On success
 * *out owns it (svc_redis_destroy); on failure *out is NULL. Returns SVC_OK, SVC_EINVAL (a bad
 * URL: the reason in err, which may be NULL) or SVC_ENOMEM.
 */
SVC_MUST_CHECK int svc_redis_create(struct svc_redis **out, const char *url, long timeout_ms,
                                    char *err, size_t errlen);
void svc_redis_destroy(struct svc_redis **r);

/* Runs one command. On SVC_OK *reply is set (it may be an ERROR reply: check the type; see
 * svc_redis_cmd_ok for the common case). Thread-safe. */
int svc_redis_cmd(struct svc_redis *r, struct svc_redis_reply **reply, int argc,
                  const char *const *argv, const size_t *argvlen) SVC_MUST_CHECK;

/*
 * svc_redis_cmd, then WAIT on the same connection: *acked gets how many replicas confirmed the
 * write within wait_ms (clamped below the client's timeout). For writes that must survive a
 * failover (billing's relay, docs/redis.md): Redis replicates asynchronously, so a write that
 * fewer replicas acknowledged may vanish when a replica is promoted (or was taken by a master that
 * the sentinels already replaced); treat it as not done and repeat it (idempotently) later.
 * *acked is 0 when WAIT itself failed; the return value and *reply are svc_redis_cmd's.
 * Thread-safe.
 */
int svc_redis_cmd_wait(struct svc_redis *r, struct svc_redis_reply **reply, int argc,
                       const char *const *argv, const size_t *argvlen, int replicas, long wait_ms,
                       int *acked) SVC_MUST_CHECK;

/*
 * Runs n commands in one round trip on one connection (a pipeline), for commands bound to one
 * node: on a Cluster, the node of the first command's key (give commands of one slot). replies
 * [i] is set for each of the first *answered commands (each may be an ERROR reply; a MOVED,
 * ASK, READONLY, TRYAGAIN or CLUSTERDOWN is returned as it is, not followed: send that command
 * and the ones after it again, e.g. with svc_redis_cmd, which follows them; the next call asks
 * for the topology first). With replicas > 0, one WAIT after the last command: *acked is how
 * many replicas confirmed all of them within wait_ms (0 when WAIT failed; acked may be NULL
 * otherwise). SVC_OK when every reply arrived; SVC_EUNAVAIL / SVC_ETIMEDOUT when the connection
 * failed (*answered tells how far it got; the commands after it may or may not have run).
 * The caller frees each reply. Thread-safe.
 */
int svc_redis_cmd_pipeline(struct svc_redis *r, int n, const int *argc,
                           const char *const *const *argv, const size_t *const *argvlen,
                           struct svc_redis_reply **replies, int *answered, int replicas,
                           long wait_ms, int *acked) SVC_MUST_CHECK;

/* ---- non-blocking, on a loop ---- */

/*
 * Callback of an async command, with the ctx given to svc_redis_async_cmd. err is SVC_OK with a
 * reply (which may be an ERROR reply), or SVC_EUNAVAIL / SVC_ETIMEDOUT / SVC_ECANCELED (the
 * client is being destroyed) with reply NULL. The reply is borrowed for the call only.
 */
typedef void (*svc_redis_cb)(void *ctx, int err, const struct svc_redis_reply *reply);

/*
 * Creates a client on loop that connects at once and reconnects with backoff whenever the
 * connection is lost. Commands stuck longer than timeout_ms fail with SVC_ETIMEDOUT. The host is
 * resolved here, once (so no reconnect blocks the loop on a name lookup): call it at start-up.
 * On success *out owns it (svc_redis_async_destroy); on failure *out is NULL. Returns SVC_OK,
 * SVC_EINVAL (a bad URL: the reason in err, which may be NULL), SVC_ENOMEM or SVC_EUNAVAIL.
 */
SVC_MUST_CHECK int svc_redis_async_create(struct svc_redis_async **out, struct svc_loop *loop,
                                          const char *url, long timeout_ms, char *err,
                                          size_t errlen);
void svc_redis_async_destroy(struct svc_redis_async **r);

/* 1 while connected. */
int svc_redis_async_connected(const struct svc_redis_async *r);

/*
 * Sends a command. cb(ctx, ...) runs exactly once on the loop (cb may be NULL for
 * fire-and-forget). Returns SVC_EUNAVAIL without calling cb when not connected.
 */
int svc_redis_async_cmd(struct svc_redis_async *r, svc_redis_cb cb, void *ctx, int argc,
                        const char *const *argv, const size_t *argvlen) SVC_MUST_CHECK;

/*
 * WAIT replicas wait_ms on the connection that commands on key go to, after the commands sent
 * there before it: cb's integer reply is the number of replicas that acknowledged them. As
 * svc_redis_async_cmd otherwise. (Cluster: the node that owns key's slot in the client's map.)
 */
int svc_redis_async_wait(struct svc_redis_async *r, const char *key, int replicas, long wait_ms,
                         svc_redis_cb cb, void *ctx) SVC_MUST_CHECK;

/*
 * Writes the commands queued on the connections now, instead of at the loop's next write event:
 * for a command that another replica must find done once this one has answered its client (the
 * meter's token correction). Safe inside a command's callback. What the socket does not take
 * now goes at the next write event, as without it.
 */
void svc_redis_async_flush(struct svc_redis_async *r);

/* Sentinel: how many times the client has been pointed at another master (0 otherwise). */
unsigned long svc_redis_async_master_epoch(const struct svc_redis_async *r);

/* When (svc_loop_now) a WAIT on the current master last counted at least one replica; 0 when
 * none has since the client was pointed at it. */
uint64_t svc_redis_async_replicated_ms(const struct svc_redis_async *r);

/* Sentinel: asks the sentinels now where the master is (a new answer moves the client, which
 * bumps the epoch); otherwise nothing. */
void svc_redis_async_recheck(struct svc_redis_async *r);

#endif
