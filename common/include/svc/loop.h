#ifndef SVC_LOOP_H
#define SVC_LOOP_H

#include <stdint.h>

#include "svc/err.h"

/*
 * The event loop: one epoll instance and one thread (libuv's loop, much smaller).
 *
 * The streaming services run one loop per core. Everything a stream touches lives on its loop:
 * the HTTP connections of that loop's libmicrohttpd daemon, the libcurl multi handle for upstream
 * and RPC calls, the async Redis connection. So the streaming path needs no locks; only
 * svc_loop_post() and svc_loop_stop() may be called from other threads.
 *
 * Callbacks run on the loop thread. A handle deleted inside a callback is freed at the end of the
 * loop iteration, so events already fetched for it in the same epoll batch are dropped safely.
 */

struct svc_loop;
struct svc_io;
struct svc_timer;

/* events: EPOLLIN/EPOLLOUT/EPOLLRDHUP/... as returned by epoll_wait. */
typedef void (*svc_io_fn)(struct svc_io *io, int fd, uint32_t events, void *data);
typedef void (*svc_timer_fn)(struct svc_timer *t, void *data);
typedef void (*svc_post_fn)(struct svc_loop *loop, void *data);

/* Creates a loop. Returns NULL on failure (errno set). */
struct svc_loop *svc_loop_create(void);

/* Frees the loop; every io and timer must have been deleted. Accepts NULL; sets *loop to NULL. */
void svc_loop_destroy(struct svc_loop **loop);

/* Runs until svc_loop_stop(). Returns 0. Must be called from the thread that owns the loop. */
int svc_loop_run(struct svc_loop *loop);

/* Asks the loop to return from svc_loop_run after the current iteration. Thread-safe. */
void svc_loop_stop(struct svc_loop *loop);

/*
 * Runs fn(loop, data) on the loop thread soon. Thread-safe. Returns SVC_ENOMEM when the
 * message cannot be queued (fn is then never called).
 */
int svc_loop_post(struct svc_loop *loop, svc_post_fn fn, void *data) SVC_MUST_CHECK;

/* Milliseconds of CLOCK_MONOTONIC, cached once per loop iteration. */
uint64_t svc_loop_now(struct svc_loop *loop);

/* Milliseconds of CLOCK_MONOTONIC, read now. */
uint64_t svc_clock_ms(void);
/* Microseconds of CLOCK_MONOTONIC, read now. */
uint64_t svc_clock_us(void);

/*
 * Watches fd for `events` (EPOLLIN, EPOLLOUT, EPOLLRDHUP; level-triggered). The loop never closes
 * fd. Returns the handle, or NULL on failure (errno set; fn is never called).
 */
struct svc_io *svc_io_add(struct svc_loop *loop, int fd, uint32_t events, svc_io_fn fn, void *data);

/* Changes the events watched. */
int svc_io_modify(struct svc_io *io, uint32_t events) SVC_MUST_CHECK;

/* Stops watching and frees the handle (deferred to the end of the iteration). Accepts NULL;
 * sets *io to NULL. Call it before closing the fd. */
void svc_io_del(struct svc_io **io);

/* Creates a stopped timer. Returns NULL on allocation failure. */
struct svc_timer *svc_timer_create(struct svc_loop *loop, svc_timer_fn fn, void *data);

/* (Re)arms the timer to fire once after ms milliseconds. */
int svc_timer_start(struct svc_timer *t, uint64_t ms) SVC_MUST_CHECK;

/* Disarms the timer; it can be started again. */
void svc_timer_stop(struct svc_timer *t);

/* Disarms and frees the timer (deferred). Accepts NULL; sets *t to NULL. */
void svc_timer_destroy(struct svc_timer **t);

/* One pointer of user data per loop (the service's per-loop state). Loop thread only. */
void svc_loop_set_data(struct svc_loop *loop, void *data);
void *svc_loop_data(const struct svc_loop *loop);

/* The loop a handle belongs to. */
struct svc_loop *svc_io_loop(const struct svc_io *io);
struct svc_loop *svc_timer_loop(const struct svc_timer *t);

#endif
