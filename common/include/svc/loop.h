#ifndef SVC_LOOP_H
#define SVC_LOOP_H

#include <stdint.h>

#include "svc/err.h"

/*
 * The event loop: one epoll instance and one thread (libuv's loop, much smaller).
 *
 * The streaming services run one loop per core. Everything a stream touches lives on its loop:
 * the HTTP connections that loop accepted, the libcurl multi handle for upstream
 * and RPC calls, the async Redis connection. So the streaming path needs no locks; only
 * svc_loop_post() and svc_loop_stop() may be called from other threads.
 *
 * Callbacks run on the loop thread. A handle deleted inside a callback is freed at the end of the
 * loop iteration, so events already fetched for it in the same epoll batch are dropped safely.
 */

struct svc_loop;
struct svc_io;
struct svc_timer;

/*
 * Callbacks get the ctx given when they were registered first (docs/decisions.md 44).
 * events: EPOLLIN/EPOLLOUT/EPOLLRDHUP/... as returned by epoll_wait.
 */
typedef void (*svc_io_cb)(void *ctx, struct svc_io *io, int fd, uint32_t events);
typedef void (*svc_timer_cb)(void *ctx, struct svc_timer *t);
typedef void (*svc_loop_post_cb)(void *ctx, struct svc_loop *loop);

/*
 * Creates a loop. On success *out owns it (destroy with svc_loop_destroy); on failure *out is
 * NULL. Returns SVC_OK, SVC_ENOMEM, or SVC_EIO (epoll or eventfd could not be made).
 */
SVC_MUST_CHECK int svc_loop_create(struct svc_loop **out);

/* Frees the loop; every io and timer must have been deleted. Accepts NULL; sets *loop to NULL. */
void svc_loop_destroy(struct svc_loop **loop);

/* Runs until svc_loop_stop(). Returns 0. Must be called from the thread that owns the loop. */
int svc_loop_run(struct svc_loop *loop);

/* Asks the loop to return from svc_loop_run after the current iteration. Thread-safe. */
void svc_loop_stop(struct svc_loop *loop);

/*
 * Runs cb(ctx, loop) on the loop thread soon. Thread-safe. Returns SVC_ENOMEM when the
 * message cannot be queued (cb is then never called).
 */
int svc_loop_post(struct svc_loop *loop, svc_loop_post_cb cb, void *ctx) SVC_MUST_CHECK;

/* Milliseconds of CLOCK_MONOTONIC, cached once per loop iteration. */
uint64_t svc_loop_now(struct svc_loop *loop);

/* A number that changes with every pass of the loop (one epoll_wait, its events, the timers
 * due). The HTTP server writes a connection's first chunk of a pass at once and gathers the
 * rest into one write at the end of the pass. Loop thread only. */
uint64_t svc_loop_iteration(const struct svc_loop *loop);
/* Milliseconds of CLOCK_MONOTONIC, read now. */
uint64_t svc_loop_clock_ms(void);
/* Microseconds of CLOCK_MONOTONIC, read now. */
uint64_t svc_loop_clock_us(void);

/*
 * Watches fd for `events` (EPOLLIN, EPOLLOUT, EPOLLRDHUP; level-triggered). The loop never closes
 * fd. On success *out is the handle (free with svc_io_del); on failure *out is NULL and cb is
 * never called. Returns SVC_OK, SVC_ENOMEM or SVC_EIO (epoll_ctl failed; errno set).
 */
SVC_MUST_CHECK int svc_io_add(struct svc_io **out, struct svc_loop *loop, int fd, uint32_t events,
                              svc_io_cb cb, void *ctx);

/* Changes the events watched. */
int svc_io_modify(struct svc_io *io, uint32_t events) SVC_MUST_CHECK;

/* Stops watching and frees the handle (deferred to the end of the iteration). Accepts NULL;
 * sets *io to NULL. Call it before closing the fd. */
void svc_io_del(struct svc_io **io);

/* svc_io_del, then close(fd), in one system call instead of two: closing removes the fd from the
 * epoll set. Only for a descriptor no other process or dup() shares (the set watches the open
 * file, which would outlive the close). Accepts NULL (then closes nothing); sets *io to NULL. */
void svc_io_close(struct svc_io **io);

/* Creates a stopped timer. On success *out owns it (svc_timer_destroy); on failure *out is NULL.
 * Returns SVC_OK or SVC_ENOMEM. */
SVC_MUST_CHECK int svc_timer_create(struct svc_timer **out, struct svc_loop *loop, svc_timer_cb cb,
                                    void *ctx);

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
