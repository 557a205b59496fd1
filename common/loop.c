#include "svc/loop.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define LOOP_MAX_EVENTS 256
#define TIMER_HEAP_INIT 16

struct svc_io {
    struct svc_loop *loop;
    int fd;
    int dead;
    svc_io_cb fn;
    void *data;
    struct svc_io *next_dead;
};

struct svc_timer {
    struct svc_loop *loop;
    uint64_t due;      /* its place in the heap: when run_timers looks at it */
    uint64_t deadline; /* when it fires: due, or later when restarted since (svc_timer_start) */
    size_t heap_idx; /* SIZE_MAX when not armed */
    int dead;
    svc_timer_cb fn;
    void *data;
    struct svc_timer *next_dead;
};

struct post_msg {
    svc_loop_post_cb fn;
    void *data;
    struct post_msg *next;
};

struct svc_loop {
    int epfd;
    int wakefd;          /* eventfd: svc_loop_post and svc_loop_stop write it */
    uint64_t now;
    uint64_t iteration; /* svc_loop_iteration */
    atomic_int stop; /* written by svc_loop_stop from any thread */

    struct svc_timer **heap; /* min-heap on due */
    size_t nheap, capheap;

    pthread_mutex_t post_lock;
    struct post_msg *post_head, *post_tail;

    struct svc_io *dead_ios;
    struct svc_timer *dead_timers;
    void *data;
};

uint64_t svc_loop_iteration(const struct svc_loop *loop)
{
    return loop->iteration;
}

void svc_loop_set_data(struct svc_loop *loop, void *data)
{
    loop->data = data;
}

void *svc_loop_data(const struct svc_loop *loop)
{
    return loop->data;
}

uint64_t svc_loop_clock_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t svc_loop_clock_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t svc_loop_now(struct svc_loop *loop)
{
    return loop->now;
}

int svc_loop_create(struct svc_loop **out)
{
    struct svc_loop *loop = calloc(1, sizeof(*loop));
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};

    *out = NULL;
    if (loop == NULL)
        return SVC_ENOMEM;
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    loop->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (loop->epfd < 0 || loop->wakefd < 0 ||
        epoll_ctl(loop->epfd, EPOLL_CTL_ADD, loop->wakefd, &ev) != 0) {
        int saved = errno;
        if (loop->epfd >= 0)
            close(loop->epfd);
        if (loop->wakefd >= 0)
            close(loop->wakefd);
        free(loop);
        errno = saved;
        return saved == ENOMEM ? SVC_ENOMEM : SVC_EIO;
    }
    pthread_mutex_init(&loop->post_lock, NULL);
    loop->now = svc_loop_clock_ms();
    *out = loop;
    return SVC_OK;
}

static void free_dead(struct svc_loop *loop)
{
    while (loop->dead_ios != NULL) {
        struct svc_io *io = loop->dead_ios;
        loop->dead_ios = io->next_dead;
        free(io);
    }
    while (loop->dead_timers != NULL) {
        struct svc_timer *t = loop->dead_timers;
        loop->dead_timers = t->next_dead;
        free(t);
    }
}

void svc_loop_destroy(struct svc_loop **loopp)
{
    struct svc_loop *loop = loopp != NULL ? *loopp : NULL;

    if (loop == NULL)
        return;
    free_dead(loop);
    while (loop->post_head != NULL) {
        struct post_msg *m = loop->post_head;
        loop->post_head = m->next;
        free(m);
    }
    free(loop->heap);
    close(loop->epfd);
    close(loop->wakefd);
    pthread_mutex_destroy(&loop->post_lock);
    free(loop);
    *loopp = NULL;
}

static void wake(struct svc_loop *loop)
{
    uint64_t one = 1;

    /* EAGAIN means the counter is already non-zero: the loop will wake anyway. */
    if (write(loop->wakefd, &one, sizeof(one)) < 0) {
    }
}

void svc_loop_stop(struct svc_loop *loop)
{
    atomic_store(&loop->stop, 1);
    wake(loop);
}

int svc_loop_post(struct svc_loop *loop, svc_loop_post_cb cb, void *ctx)
{
    struct post_msg *m = malloc(sizeof(*m));

    if (m == NULL)
        return SVC_ENOMEM;
    m->fn = cb;
    m->data = ctx;
    m->next = NULL;
    pthread_mutex_lock(&loop->post_lock);
    if (loop->post_tail != NULL)
        loop->post_tail->next = m;
    else
        loop->post_head = m;
    loop->post_tail = m;
    pthread_mutex_unlock(&loop->post_lock);
    wake(loop);
    return SVC_OK;
}

static void run_posted(struct svc_loop *loop)
{
    struct post_msg *m;
    uint64_t cnt;

    if (read(loop->wakefd, &cnt, sizeof(cnt)) < 0) {
        /* EAGAIN: nothing pending */
    }
    pthread_mutex_lock(&loop->post_lock);
    m = loop->post_head;
    loop->post_head = loop->post_tail = NULL;
    pthread_mutex_unlock(&loop->post_lock);
    while (m != NULL) {
        struct post_msg *next = m->next;
        m->fn(m->data, loop);
        free(m);
        m = next;
    }
}

/* ---- io ---- */

int svc_io_add(struct svc_io **out, struct svc_loop *loop, int fd, uint32_t events, svc_io_cb cb,
               void *ctx)
{
    struct svc_io *io = calloc(1, sizeof(*io));
    struct epoll_event ev;

    *out = NULL;
    if (io == NULL)
        return SVC_ENOMEM;
    io->loop = loop;
    io->fd = fd;
    io->fn = cb;
    io->data = ctx;
    ev.events = events;
    ev.data.ptr = io;
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        int saved = errno;
        free(io);
        errno = saved;
        return SVC_EIO;
    }
    *out = io;
    return SVC_OK;
}

int svc_io_modify(struct svc_io *io, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = io};

    return epoll_ctl(io->loop->epfd, EPOLL_CTL_MOD, io->fd, &ev) == 0 ? SVC_OK : SVC_EIO;
}

/* The handle is freed when the iteration ends: an event already returned for it this iteration
 * must still find it (marked dead) rather than freed memory. */
static void io_forget(struct svc_io **iop)
{
    struct svc_io *io = *iop;

    io->dead = 1;
    io->next_dead = io->loop->dead_ios;
    io->loop->dead_ios = io;
    *iop = NULL;
}

void svc_io_del(struct svc_io **iop)
{
    struct svc_io *io = iop != NULL ? *iop : NULL;

    if (io == NULL)
        return;
    /* ENOENT/EBADF: the fd was closed already, which removed it from the set. */
    epoll_ctl(io->loop->epfd, EPOLL_CTL_DEL, io->fd, NULL);
    io_forget(iop);
}

void svc_io_close(struct svc_io **iop)
{
    struct svc_io *io = iop != NULL ? *iop : NULL;

    if (io == NULL)
        return;
    close(io->fd);
    io_forget(iop);
}

struct svc_loop *svc_io_loop(const struct svc_io *io)
{
    return io->loop;
}

/* ---- timers: a binary min-heap on `due` ---- */

static void heap_swap(struct svc_loop *loop, size_t a, size_t b)
{
    struct svc_timer *t = loop->heap[a];

    loop->heap[a] = loop->heap[b];
    loop->heap[b] = t;
    loop->heap[a]->heap_idx = a;
    loop->heap[b]->heap_idx = b;
}

static void heap_up(struct svc_loop *loop, size_t i)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (loop->heap[parent]->due <= loop->heap[i]->due)
            break;
        heap_swap(loop, i, parent);
        i = parent;
    }
}

static void heap_down(struct svc_loop *loop, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < loop->nheap && loop->heap[l]->due < loop->heap[m]->due)
            m = l;
        if (r < loop->nheap && loop->heap[r]->due < loop->heap[m]->due)
            m = r;
        if (m == i)
            break;
        heap_swap(loop, i, m);
        i = m;
    }
}

static void heap_remove(struct svc_loop *loop, struct svc_timer *t)
{
    size_t i = t->heap_idx, last = loop->nheap - 1;

    if (i != last) {
        heap_swap(loop, i, last);
        loop->nheap--;
        heap_down(loop, i);
        heap_up(loop, i);
    } else {
        loop->nheap--;
    }
    t->heap_idx = SIZE_MAX;
}

int svc_timer_create(struct svc_timer **out, struct svc_loop *loop, svc_timer_cb cb, void *ctx)
{
    struct svc_timer *t = calloc(1, sizeof(*t));

    *out = NULL;
    if (t == NULL)
        return SVC_ENOMEM;
    t->loop = loop;
    t->fn = cb;
    t->data = ctx;
    t->heap_idx = SIZE_MAX;
    *out = t;
    return SVC_OK;
}

int svc_timer_start(struct svc_timer *t, uint64_t ms)
{
    struct svc_loop *loop = t->loop;
    uint64_t deadline = svc_loop_clock_ms() + ms;

    if (t->heap_idx != SIZE_MAX) {
        /* Armed already: a later deadline is only noted, and run_timers puts the entry back in
         * its place when the old due time comes. A stream's idle timer restarts on every write;
         * a heap update each time was 8 % of the proxy's CPU at 1,000 open streams. */
        t->deadline = deadline;
        if (deadline < t->due) {
            t->due = deadline;
            heap_up(loop, t->heap_idx);
        }
        return SVC_OK;
    }
    if (loop->nheap == loop->capheap) {
        size_t cap = loop->capheap ? loop->capheap * 2 : TIMER_HEAP_INIT;
        struct svc_timer **h = realloc(loop->heap, cap * sizeof(*h));
        if (h == NULL)
            return SVC_ENOMEM;
        loop->heap = h;
        loop->capheap = cap;
    }
    t->due = t->deadline = deadline;
    t->heap_idx = loop->nheap;
    loop->heap[loop->nheap++] = t;
    heap_up(loop, t->heap_idx);
    return SVC_OK;
}

void svc_timer_stop(struct svc_timer *t)
{
    if (t != NULL && t->heap_idx != SIZE_MAX)
        heap_remove(t->loop, t);
}

void svc_timer_destroy(struct svc_timer **tp)
{
    struct svc_timer *t = tp != NULL ? *tp : NULL;

    if (t == NULL)
        return;
    svc_timer_stop(t);
    t->dead = 1;
    t->next_dead = t->loop->dead_timers;
    t->loop->dead_timers = t;
    *tp = NULL;
}

struct svc_loop *svc_timer_loop(const struct svc_timer *t)
{
    return t->loop;
}

static void run_timers(struct svc_loop *loop)
{
    while (loop->nheap > 0 && loop->heap[0]->due <= loop->now) {
        struct svc_timer *t = loop->heap[0];
        if (t->deadline > loop->now) { /* restarted later since: back in its place */
            t->due = t->deadline;
            heap_down(loop, 0);
            continue;
        }
        heap_remove(loop, t);
        t->fn(t->data, t);
    }
}

static int next_timeout(struct svc_loop *loop)
{
    uint64_t due;

    if (loop->nheap == 0)
        return -1;
    due = loop->heap[0]->due;
    if (due <= loop->now)
        return 0;
    return due - loop->now > 60000 ? 60000 : (int)(due - loop->now);
}

int svc_loop_run(struct svc_loop *loop)
{
    struct epoll_event events[LOOP_MAX_EVENTS];

    while (!atomic_load(&loop->stop)) {
        int n;

        loop->now = svc_loop_clock_ms();
        n = epoll_wait(loop->epfd, events, LOOP_MAX_EVENTS, next_timeout(loop));
        loop->now = svc_loop_clock_ms();
        loop->iteration++;
        for (int i = 0; i < n; i++) {
            struct svc_io *io = events[i].data.ptr;
            if (io == NULL) {
                run_posted(loop);
                continue;
            }
            if (!io->dead)
                io->fn(io->data, io, io->fd, events[i].events);
        }
        run_timers(loop);
        free_dead(loop);
    }
    atomic_store(&loop->stop, 0);
    return 0;
}
