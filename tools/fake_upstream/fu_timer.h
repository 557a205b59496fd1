/*
 * fu_timer: a min-heap of deadlines, one per event loop, for the fake upstream.
 *
 * A `struct fu_timer` is embedded in whatever it times (a plain-port connection, a front
 * stream); the owner finds itself back with offsetof. Each object has at most one deadline:
 * setting an armed timer moves it. The heap is shared by the plain port's workers (fu_http.c)
 * and the TLS/HTTP/2 front (fu_front.c), so both pace their jobs the same way without a
 * descriptor per timer. Not thread-safe: a heap and its timers belong to one loop's thread.
 */
#ifndef FU_TIMER_H
#define FU_TIMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct fu_timer {
    uint64_t deadline; /* fu_now_ns() time; valid while armed */
    size_t idx;        /* position in the heap; SIZE_MAX when not armed */
};

struct fu_timer_heap {
    struct fu_timer **h;
    size_t n, cap;
};

/* An empty heap / an unarmed timer (no allocation). */
void fu_timer_heap_init(struct fu_timer_heap *th);
void fu_timer_init(struct fu_timer *t);

/* Free the heap's storage. The timers it held are left as they are (their owners are gone). */
void fu_timer_heap_deinit(struct fu_timer_heap *th);

/* Arm or move `t` to `deadline`. Returns 0 or FU_ENOMEM (t is then left as it was). */
__attribute__((warn_unused_result)) int fu_timer_set(struct fu_timer_heap *th, struct fu_timer *t,
                                                     uint64_t deadline);

/* Disarm `t`; a no-op when it is not armed. */
void fu_timer_clear(struct fu_timer_heap *th, struct fu_timer *t);

static inline bool fu_timer_armed(const struct fu_timer *t)
{
    return t->idx != SIZE_MAX;
}

/* The earliest armed timer, or NULL when none is. */
static inline struct fu_timer *fu_timer_first(const struct fu_timer_heap *th)
{
    return th->n > 0 ? th->h[0] : NULL;
}

/* Milliseconds until the earliest deadline, rounded up (waking early would only loop back),
 * as an epoll_wait timeout: -1 when no timer is armed, `cap_ms` at most when cap_ms >= 0. */
int fu_timer_wait_ms(const struct fu_timer_heap *th, uint64_t now, int cap_ms);

#endif /* FU_TIMER_H */
