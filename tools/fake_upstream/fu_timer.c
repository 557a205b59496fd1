/* fu_timer: a min-heap of embedded deadlines. See fu_timer.h. */
#include "fu_timer.h"

#include <stdlib.h>

#include "fu_buf.h"

void fu_timer_heap_init(struct fu_timer_heap *th)
{
    th->h = NULL;
    th->n = th->cap = 0;
}

void fu_timer_init(struct fu_timer *t)
{
    t->deadline = 0;
    t->idx = SIZE_MAX;
}

void fu_timer_heap_deinit(struct fu_timer_heap *th)
{
    free(th->h);
    fu_timer_heap_init(th);
}

static void swap(struct fu_timer_heap *th, size_t a, size_t b)
{
    struct fu_timer *t = th->h[a];
    th->h[a] = th->h[b];
    th->h[b] = t;
    th->h[a]->idx = a;
    th->h[b]->idx = b;
}

static void up(struct fu_timer_heap *th, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (th->h[p]->deadline <= th->h[i]->deadline)
            break;
        swap(th, p, i);
        i = p;
    }
}

static void down(struct fu_timer_heap *th, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < th->n && th->h[l]->deadline < th->h[m]->deadline)
            m = l;
        if (r < th->n && th->h[r]->deadline < th->h[m]->deadline)
            m = r;
        if (m == i)
            break;
        swap(th, i, m);
        i = m;
    }
}

void fu_timer_clear(struct fu_timer_heap *th, struct fu_timer *t)
{
    size_t i = t->idx;
    if (i == SIZE_MAX)
        return;
    t->idx = SIZE_MAX;
    th->n--;
    if (i == th->n)
        return;
    th->h[i] = th->h[th->n];
    th->h[i]->idx = i;
    up(th, i);
    down(th, th->h[i]->idx);
}

int fu_timer_set(struct fu_timer_heap *th, struct fu_timer *t, uint64_t deadline)
{
    if (t->idx != SIZE_MAX) {
        uint64_t old = t->deadline;
        t->deadline = deadline;
        if (deadline < old)
            up(th, t->idx);
        else
            down(th, t->idx);
        return FU_OK;
    }
    if (th->n == th->cap) {
        size_t cap = th->cap ? th->cap * 2 : 1024;
        struct fu_timer **h = realloc(th->h, cap * sizeof(*h));
        if (h == NULL)
            return FU_ENOMEM;
        th->h = h;
        th->cap = cap;
    }
    t->deadline = deadline;
    t->idx = th->n;
    th->h[th->n++] = t;
    up(th, t->idx);
    return FU_OK;
}

int fu_timer_wait_ms(const struct fu_timer_heap *th, uint64_t now, int cap_ms)
{
    if (th->n == 0)
        return cap_ms;
    uint64_t d = th->h[0]->deadline;
    uint64_t ms = d <= now ? 0 : (d - now + 999999) / 1000000;
    if (cap_ms >= 0 && ms > (uint64_t)cap_ms)
        return cap_ms;
    return ms > 0x7fffffff ? 0x7fffffff : (int)ms;
}
