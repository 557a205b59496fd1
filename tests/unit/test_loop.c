/*
 * Unit tests of svc/loop.h: timers fire in due order, stop/restart, a timer destroyed inside its
 * own callback, svc_loop_post from other threads waking a blocked loop, io callbacks on a pipe,
 * and svc_io_del of a handle whose event is already in the same epoll batch. malloc is wrapped
 * at link time (-Wl,--wrap=malloc) to check svc_loop_post's SVC_ENOMEM contract.
 *
 * Every test arms a watchdog timer, so a loop that never wakes fails instead of hanging.
 */

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "svc/err.h"
#include "svc/loop.h"
#include "test.h"

/* ---- allocator injection ---------------------------------------------------------------- */

void *__real_malloc(size_t n);
void *__wrap_malloc(size_t n);

static atomic_int malloc_fail_next;

void *__wrap_malloc(size_t n)
{
    if (atomic_exchange(&malloc_fail_next, 0))
        return NULL;
    return __real_malloc(n);
}

/* ---- helpers -------------------------------------------------------------------------------- */

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void on_watchdog(void *data, struct svc_timer *t)
{
    (void)t;
    T_FAIL("watchdog: the loop did not finish in time (%s)", (const char *)data);
}

static void on_stop_loop(void *data, struct svc_timer *t)
{
    (void)t;
    svc_loop_stop(data);
}

/* A loop with a watchdog; destroy both with loop_done. */
struct fixture {
    struct svc_loop *loop;
    struct svc_timer *watchdog;
};

static void loop_begin(struct fixture *f, const char *what)
{
    T_EQ_INT(svc_loop_create(&f->loop), SVC_OK);
    T_ASSERT(f->loop != NULL);
    T_EQ_INT(svc_timer_create(&f->watchdog, f->loop, on_watchdog, (void *)what), SVC_OK);
    T_ASSERT(f->watchdog != NULL);
    T_EQ_INT(svc_timer_start(f->watchdog, 5000), SVC_OK);
}

static void loop_done(struct fixture *f)
{
    svc_timer_destroy(&f->watchdog);
    T_ASSERT(f->watchdog == NULL);
    svc_loop_destroy(&f->loop);
    T_ASSERT(f->loop == NULL);
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

static void test_create_destroy(void)
{
    struct svc_loop *loop = NULL;
    T_EQ_INT(svc_loop_create(&loop), SVC_OK);
    int x;

    T_ASSERT(loop != NULL);
    T_ASSERT(svc_loop_data(loop) == NULL);
    svc_loop_set_data(loop, &x);
    T_ASSERT(svc_loop_data(loop) == &x);
    T_ASSERT(svc_loop_now(loop) > 0);
    svc_loop_destroy(&loop);
    T_ASSERT(loop == NULL);
    svc_loop_destroy(&loop); /* NULL is fine */
    svc_loop_destroy(NULL);
}

static void test_clock(void)
{
    uint64_t a = svc_loop_clock_ms(), b;

    sleep_ms(20);
    b = svc_loop_clock_ms();
    T_ASSERT(b >= a + 19);
    T_ASSERT(b < a + 2000);
}

/* ---- timers --------------------------------------------------------------------------------- */

struct order {
    struct svc_loop *loop;
    int seen[16];
    uint64_t at[16];
    int n;
    int stop_after;
};

struct tctx {
    struct order *o;
    int id;
};

static void on_order_timer(void *data, struct svc_timer *t)
{
    struct tctx *c = data;

    T_ASSERT(svc_timer_loop(t) == c->o->loop);
    c->o->at[c->o->n] = svc_loop_now(c->o->loop);
    c->o->seen[c->o->n++] = c->id;
    if (c->o->n == c->o->stop_after)
        svc_loop_stop(c->o->loop);
}

static void test_timers_fire_in_order(void)
{
    static const unsigned delays[] = {60, 10, 40, 0, 25, 80};
    static const int want[] = {3, 1, 4, 2, 0, 5};
    struct fixture f;
    struct order o = {0};
    struct tctx c[6];
    struct svc_timer *t[6];
    uint64_t start;

    loop_begin(&f, "timers in order");
    o.loop = f.loop;
    o.stop_after = 6;
    start = svc_loop_clock_ms();
    for (int i = 0; i < 6; i++) {
        c[i].o = &o;
        c[i].id = i;
        T_EQ_INT(svc_timer_create(&t[i], f.loop, on_order_timer, &c[i]), SVC_OK);
        T_ASSERT(t[i] != NULL);
        T_EQ_INT(svc_timer_start(t[i], delays[i]), SVC_OK);
    }
    T_EQ_INT(svc_loop_run(f.loop), 0);
    T_EQ_INT(o.n, 6);
    for (int i = 0; i < 6; i++) {
        T_EQ_INT(o.seen[i], want[i]);
        /* never early */
        T_ASSERT(o.at[i] >= start + delays[want[i]]);
    }
    for (int i = 0; i < 6; i++)
        svc_timer_destroy(&t[i]);
    loop_done(&f);
}

struct heap_ctx {
    int id;
    unsigned delay;
};

static int heap_fired[200];
static unsigned heap_last_delay;
static int heap_order_ok;
static uint64_t heap_start;
static unsigned heap_skew; /* ms spent arming: due times differ from the delays by up to this */
static struct svc_loop *heap_loop;

static void on_heap_timer(void *data, struct svc_timer *t)
{
    struct heap_ctx *c = data;

    (void)t;
    heap_fired[c->id]++;
    /* fired in the order of their delays, give or take the time the arming took */
    if (c->delay + heap_skew < heap_last_delay)
        heap_order_ok = 0;
    if (c->delay > heap_last_delay)
        heap_last_delay = c->delay;
    T_ASSERT(svc_loop_now(heap_loop) >= heap_start + c->delay); /* never early */
}

static void test_many_timers_heap(void)
{
    enum { N = 200 };
    static struct heap_ctx c[N];
    static struct svc_timer *t[N];
    struct fixture f;
    struct svc_timer *end;

    /* more timers than the initial heap size, armed in a scrambled order, a third stopped, some
     * re-armed: exercises heap_up/heap_down/heap_remove from the middle */
    loop_begin(&f, "many timers");
    heap_loop = f.loop;
    heap_order_ok = 1;
    heap_last_delay = 0;
    for (int i = 0; i < N; i++) {
        c[i].id = i;
        c[i].delay = (unsigned)(i % 50);
        T_EQ_INT(svc_timer_create(&t[i], f.loop, on_heap_timer, &c[i]), SVC_OK);
        T_ASSERT(t[i] != NULL);
    }
    heap_start = svc_loop_clock_ms();
    for (int i = 0; i < N; i++) {
        int k = (i * 73) % N;
        T_EQ_INT(svc_timer_start(t[k], 1000 + (uint64_t)k), SVC_OK); /* far away first */
    }
    for (int i = 0; i < N; i++) {
        int k = (i * 37 + 11) % N;
        T_EQ_INT(svc_timer_start(t[k], c[k].delay), SVC_OK); /* then re-armed */
    }
    for (int i = 0; i < N; i += 3)
        svc_timer_stop(t[i]);
    heap_skew = (unsigned)(svc_loop_clock_ms() - heap_start) + 1;
    T_EQ_INT(svc_timer_create(&end, f.loop, on_stop_loop, f.loop), SVC_OK);
    T_EQ_INT(svc_timer_start(end, 100), SVC_OK);
    T_EQ_INT(svc_loop_run(f.loop), 0);
    for (int i = 0; i < N; i++)
        if (heap_fired[i] != (i % 3 == 0 ? 0 : 1))
            T_FAIL("timer %d fired %d times", i, heap_fired[i]);
    T_EQ_INT(heap_order_ok, 1);
    for (int i = 0; i < N; i++)
        svc_timer_destroy(&t[i]);
    svc_timer_destroy(&end);
    loop_done(&f);
}

struct count_ctx {
    struct svc_loop *loop;
    int fired;
    int stopped_one;
    uint64_t when;
};

static void on_count(void *data, struct svc_timer *t)
{
    struct count_ctx *c = data;

    (void)t;
    c->fired++;
    c->when = svc_loop_clock_ms();
}

static void test_timer_stop_and_restart(void)
{
    struct fixture f;
    struct count_ctx stopped = {0}, moved = {0};
    struct svc_timer *a, *b, *end;
    uint64_t start;

    loop_begin(&f, "stop and restart");
    T_EQ_INT(svc_timer_create(&a, f.loop, on_count, &stopped), SVC_OK);
    T_EQ_INT(svc_timer_create(&b, f.loop, on_count, &moved), SVC_OK);
    T_EQ_INT(svc_timer_create(&end, f.loop, on_stop_loop, f.loop), SVC_OK);
    T_ASSERT(a != NULL && b != NULL && end != NULL);

    start = svc_loop_clock_ms();
    T_EQ_INT(svc_timer_start(a, 10), SVC_OK);
    svc_timer_stop(a);
    svc_timer_stop(a); /* twice is fine */
    T_EQ_INT(svc_timer_start(b, 10), SVC_OK);
    T_EQ_INT(svc_timer_start(b, 60), SVC_OK); /* re-arming replaces the first due time */
    T_EQ_INT(svc_timer_start(end, 120), SVC_OK);
    T_EQ_INT(svc_loop_run(f.loop), 0);
    T_EQ_INT(stopped.fired, 0);
    T_EQ_INT(moved.fired, 1);
    T_ASSERT(moved.when >= start + 60);

    /* a stopped timer can be started again */
    T_EQ_INT(svc_timer_start(a, 5), SVC_OK);
    T_EQ_INT(svc_timer_start(end, 40), SVC_OK);
    T_EQ_INT(svc_loop_run(f.loop), 0);
    T_EQ_INT(stopped.fired, 1);
    T_EQ_INT(moved.fired, 1); /* one-shot: it did not fire again */

    svc_timer_destroy(&a);
    svc_timer_destroy(&b);
    svc_timer_destroy(&end);
    T_ASSERT(a == NULL && b == NULL && end == NULL);
    svc_timer_destroy(&a); /* NULL is fine */
    svc_timer_destroy(NULL);
    svc_timer_stop(NULL);
    loop_done(&f);
}

/* An idle timer restarted by another timer every 5 ms: it must not fire while restarted, and
 * must fire once, 30 ms after the last restart (svc_timer_start notes a later deadline without
 * moving the heap entry; run_timers puts it back in place). */
struct toucher {
    struct svc_timer *self, *idle;
    int left;
};

static void on_touch(void *data, struct svc_timer *t)
{
    struct toucher *k = data;

    (void)t;
    T_EQ_INT(svc_timer_start(k->idle, 30), SVC_OK);
    if (--k->left > 0)
        T_EQ_INT(svc_timer_start(k->self, 5), SVC_OK);
}

static void test_timer_restarted_later_and_earlier(void)
{
    struct fixture f;
    struct count_ctx idle = {0}, early = {0};
    struct toucher k = {0};
    struct svc_timer *e, *end;
    uint64_t start;

    loop_begin(&f, "restarted later and earlier");
    T_EQ_INT(svc_timer_create(&k.idle, f.loop, on_count, &idle), SVC_OK);
    T_EQ_INT(svc_timer_create(&k.self, f.loop, on_touch, &k), SVC_OK);
    T_EQ_INT(svc_timer_create(&e, f.loop, on_count, &early), SVC_OK);
    T_EQ_INT(svc_timer_create(&end, f.loop, on_stop_loop, f.loop), SVC_OK);

    start = svc_loop_clock_ms();
    k.left = 20; /* restarts over about 100 ms, each 30 ms ahead */
    T_EQ_INT(svc_timer_start(k.idle, 30), SVC_OK);
    T_EQ_INT(svc_timer_start(k.self, 5), SVC_OK);
    T_EQ_INT(svc_timer_start(e, 500), SVC_OK);
    T_EQ_INT(svc_timer_start(e, 20), SVC_OK); /* earlier: fires at the new time */
    T_EQ_INT(svc_timer_start(end, 300), SVC_OK);
    T_EQ_INT(svc_loop_run(f.loop), 0);
    T_EQ_INT(k.left, 0);
    T_EQ_INT(idle.fired, 1);
    T_ASSERT(idle.when >= start + 100 + 30); /* after the last of 20 restarts 5 ms apart */
    T_EQ_INT(early.fired, 1);
    T_ASSERT(early.when >= start + 20 && early.when < start + 300);

    svc_timer_destroy(&k.idle);
    svc_timer_destroy(&k.self);
    svc_timer_destroy(&e);
    svc_timer_destroy(&end);
    loop_done(&f);
}

struct periodic {
    struct svc_loop *loop;
    struct svc_timer *self;
    int n;
};

static void on_periodic(void *data, struct svc_timer *t)
{
    struct periodic *p = data;

    T_ASSERT(t == p->self);
    if (++p->n < 5) {
        T_EQ_INT(svc_timer_start(t, 2), SVC_OK); /* restart from its own callback */
        return;
    }
    svc_timer_destroy(&p->self); /* destroy inside its own callback */
    T_ASSERT(p->self == NULL);
    svc_loop_stop(p->loop);
}

static void test_timer_restart_and_destroy_in_callback(void)
{
    struct fixture f;
    struct periodic p = {0};

    loop_begin(&f, "periodic");
    p.loop = f.loop;
    T_EQ_INT(svc_timer_create(&p.self, f.loop, on_periodic, &p), SVC_OK);
    T_ASSERT(p.self != NULL);
    T_EQ_INT(svc_timer_start(p.self, 1), SVC_OK);
    T_EQ_INT(svc_loop_run(f.loop), 0);
    T_EQ_INT(p.n, 5);
    loop_done(&f);
}

struct pair {
    struct svc_timer *other;
    int *fired;
};

static void on_kill_other(void *data, struct svc_timer *t)
{
    struct pair *p = data;

    (void)t;
    (*p->fired)++;
    svc_timer_destroy(&p->other);
}

static void test_timer_destroy_other_due_same_batch(void)
{
    struct fixture f;
    struct svc_timer *a, *b, *end;
    int fired = 0;
    struct pair pa, pb;

    loop_begin(&f, "destroy other timer");
    T_EQ_INT(svc_timer_create(&a, f.loop, on_kill_other, &pa), SVC_OK);
    T_EQ_INT(svc_timer_create(&b, f.loop, on_kill_other, &pb), SVC_OK);
    T_EQ_INT(svc_timer_create(&end, f.loop, on_stop_loop, f.loop), SVC_OK);
    pa.other = b;
    pa.fired = &fired;
    pb.other = a;
    pb.fired = &fired;
    /* both due in the same run_timers pass: whichever runs first destroys the other */
    T_EQ_INT(svc_timer_start(a, 5), SVC_OK);
    T_EQ_INT(svc_timer_start(b, 5), SVC_OK);
    T_EQ_INT(svc_timer_start(end, 40), SVC_OK);
    T_EQ_INT(svc_loop_run(f.loop), 0);
    T_EQ_INT(fired, 1);
    /* the survivor destroyed the dead one; destroy the survivor */
    if (pa.other == NULL)
        svc_timer_destroy(&a);
    else
        svc_timer_destroy(&b);
    svc_timer_destroy(&end);
    loop_done(&f);
}

static void test_timer_destroy_without_run(void)
{
    struct svc_loop *loop = NULL;
    T_EQ_INT(svc_loop_create(&loop), SVC_OK);
    struct svc_timer *t = NULL;
    T_EQ_INT(svc_timer_create(&t, loop, on_count, NULL), SVC_OK);

    T_ASSERT(t != NULL);
    T_EQ_INT(svc_timer_start(t, 1000), SVC_OK);
    svc_timer_destroy(&t); /* armed, never ran: freed by destroy, no leak */
    svc_loop_destroy(&loop);
}

/* ---- svc_loop_stop / svc_loop_post ---------------------------------------------------------- */

static void test_stop_before_run(void)
{
    struct fixture f;
    struct svc_timer *end;

    loop_begin(&f, "stop before run");
    svc_loop_stop(f.loop);
    T_EQ_INT(svc_loop_run(f.loop), 0); /* returns at once */
    /* and the flag is cleared: the next run runs until stopped again */
    T_EQ_INT(svc_timer_create(&end, f.loop, on_stop_loop, f.loop), SVC_OK);
    T_EQ_INT(svc_timer_start(end, 20), SVC_OK);
    {
        uint64_t start = svc_loop_clock_ms();
        T_EQ_INT(svc_loop_run(f.loop), 0);
        T_ASSERT(svc_loop_clock_ms() >= start + 20);
    }
    svc_timer_destroy(&end);
    loop_done(&f);
}

struct poster {
    struct svc_loop *loop;
    pthread_t loop_thread;
    atomic_int count;
    int target;
    int last_seq[8];
    int order_ok;
};

static void *stop_later(void *arg)
{
    sleep_ms(50);
    svc_loop_stop(arg);
    return NULL;
}

static void test_stop_from_other_thread(void)
{
    struct fixture f;
    pthread_t th;
    uint64_t start;

    loop_begin(&f, "stop from thread");
    start = svc_loop_clock_ms();
    T_EQ_INT(pthread_create(&th, NULL, stop_later, f.loop), 0);
    T_EQ_INT(svc_loop_run(f.loop), 0); /* blocked in epoll_wait until the other thread stops it */
    T_ASSERT(svc_loop_clock_ms() >= start + 45);
    pthread_join(th, NULL);
    loop_done(&f);
}

struct post_msg_ctx {
    struct poster *p;
    int thread;
    int seq;
};

static void on_posted(void *data, struct svc_loop *loop)
{
    struct post_msg_ctx *m = data;
    struct poster *p = m->p;

    T_ASSERT(loop == p->loop);
    T_ASSERT(pthread_equal(pthread_self(), p->loop_thread));
    /* messages from one thread arrive in the order they were posted */
    if (m->seq != p->last_seq[m->thread] + 1)
        p->order_ok = 0;
    p->last_seq[m->thread] = m->seq;
    free(m);
    if (atomic_fetch_add(&p->count, 1) + 1 == p->target)
        svc_loop_stop(loop);
}

struct thread_arg {
    struct poster *p;
    int thread;
    int n;
    unsigned delay_ms;
};

static void *post_from_thread(void *arg)
{
    struct thread_arg *a = arg;

    sleep_ms(a->delay_ms);
    for (int i = 1; i <= a->n; i++) {
        struct post_msg_ctx *m = calloc(1, sizeof(*m));
        T_ASSERT(m != NULL);
        m->p = a->p;
        m->thread = a->thread;
        m->seq = i;
        T_EQ_INT(svc_loop_post(a->p->loop, on_posted, m), SVC_OK);
    }
    return NULL;
}

static void test_post_wakes_blocked_loop(void)
{
    struct fixture f;
    struct poster p = {0};
    struct thread_arg a = {&p, 0, 1, 60};
    pthread_t th;
    uint64_t start;

    loop_begin(&f, "post wakes loop");
    p.loop = f.loop;
    p.loop_thread = pthread_self();
    p.target = 1;
    p.order_ok = 1;
    start = svc_loop_clock_ms();
    T_EQ_INT(pthread_create(&th, NULL, post_from_thread, &a), 0);
    T_EQ_INT(svc_loop_run(f.loop), 0);
    T_EQ_INT(atomic_load(&p.count), 1);
    T_ASSERT(svc_loop_clock_ms() >= start + 55); /* it really waited for the post */
    pthread_join(th, NULL);
    loop_done(&f);
}

static void test_post_many_threads(void)
{
    enum { THREADS = 4, EACH = 2000 };
    struct fixture f;
    struct poster p = {0};
    struct thread_arg a[THREADS];
    pthread_t th[THREADS];

    loop_begin(&f, "post from many threads");
    p.loop = f.loop;
    p.loop_thread = pthread_self();
    p.target = THREADS * EACH;
    p.order_ok = 1;
    for (int i = 0; i < THREADS; i++) {
        a[i] = (struct thread_arg){&p, i, EACH, 0};
        T_EQ_INT(pthread_create(&th[i], NULL, post_from_thread, &a[i]), 0);
    }
    T_EQ_INT(svc_loop_run(f.loop), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    T_EQ_INT(atomic_load(&p.count), THREADS * EACH);
    T_EQ_INT(p.order_ok, 1);
    for (int i = 0; i < THREADS; i++)
        T_EQ_INT(p.last_seq[i], EACH);
    loop_done(&f);
}

static int posted_runs;

static void on_simple_post(void *data, struct svc_loop *loop)
{
    (void)data;
    posted_runs++;
    svc_loop_stop(loop);
}

static void on_repost(void *data, struct svc_loop *loop)
{
    int *depth = data;

    /* posting from a posted callback queues for later, it does not recurse */
    if (++*depth < 3)
        T_EQ_INT(svc_loop_post(loop, on_repost, depth), SVC_OK);
    else
        svc_loop_stop(loop);
}

static void test_post_before_run_and_from_callback(void)
{
    struct fixture f;
    int depth = 0;

    loop_begin(&f, "post before run");
    posted_runs = 0;
    T_EQ_INT(svc_loop_post(f.loop, on_simple_post, NULL), SVC_OK);
    T_EQ_INT(posted_runs, 0); /* never inline */
    T_EQ_INT(svc_loop_run(f.loop), 0);
    T_EQ_INT(posted_runs, 1);

    T_EQ_INT(svc_loop_post(f.loop, on_repost, &depth), SVC_OK);
    T_EQ_INT(svc_loop_run(f.loop), 0);
    T_EQ_INT(depth, 3);

    /* a message still queued at destroy is freed without running */
    T_EQ_INT(svc_loop_post(f.loop, on_simple_post, NULL), SVC_OK);
    loop_done(&f);
    T_EQ_INT(posted_runs, 1);
}

static void test_post_enomem(void)
{
    struct fixture f;
    struct svc_timer *end;

    loop_begin(&f, "post enomem");
    posted_runs = 0;
    atomic_store(&malloc_fail_next, 1);
    T_EQ_INT(svc_loop_post(f.loop, on_simple_post, NULL), SVC_ENOMEM);
    T_EQ_INT(atomic_load(&malloc_fail_next), 0);
    T_EQ_INT(svc_timer_create(&end, f.loop, on_stop_loop, f.loop), SVC_OK);
    T_EQ_INT(svc_timer_start(end, 30), SVC_OK);
    T_EQ_INT(svc_loop_run(f.loop), 0);
    T_EQ_INT(posted_runs, 0); /* fn is never called */
    svc_timer_destroy(&end);
    loop_done(&f);
}

/* ---- io ------------------------------------------------------------------------------------- */

struct io_ctx {
    struct svc_loop *loop;
    struct svc_io *io;
    int fd;
    int calls;
    uint32_t events;
    char got[16];
    size_t ngot;
    int read_it; /* 0: leave the byte unread (level-triggered: fires again) */
};

static void on_readable(void *data, struct svc_io *io, int fd, uint32_t events)
{
    struct io_ctx *c = data;

    T_ASSERT(io == c->io);
    T_EQ_INT(fd, c->fd);
    T_ASSERT(svc_io_loop(io) == c->loop);
    c->calls++;
    c->events = events;
    if (c->read_it) {
        ssize_t r = read(fd, c->got + c->ngot, sizeof(c->got) - 1 - c->ngot);
        if (r > 0)
            c->ngot += (size_t)r;
        svc_io_del(&c->io);
        T_ASSERT(c->io == NULL);
        svc_loop_stop(c->loop);
    } else if (c->calls == 3) {
        svc_io_del(&c->io);
        svc_loop_stop(c->loop);
    }
}

static void test_io_pipe(void)
{
    struct fixture f;
    struct io_ctx c = {0};
    int p[2];

    loop_begin(&f, "io pipe");
    T_EQ_INT(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    c.loop = f.loop;
    c.fd = p[0];
    c.read_it = 1;
    T_EQ_INT(svc_io_add(&c.io, f.loop, p[0], EPOLLIN, on_readable, &c), SVC_OK);
    T_ASSERT(c.io != NULL);
    T_EQ_INT(write(p[1], "hi", 2), 2);
    T_EQ_INT(svc_loop_run(f.loop), 0);
    T_EQ_INT(c.calls, 1);
    T_ASSERT(c.events & EPOLLIN);
    c.got[c.ngot] = '\0';
    T_EQ_STR(c.got, "hi");
    close(p[0]);
    close(p[1]);
    loop_done(&f);
}

static void test_io_level_triggered(void)
{
    struct fixture f;
    struct io_ctx c = {0};
    int p[2];

    loop_begin(&f, "io level-triggered");
    T_EQ_INT(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    c.loop = f.loop;
    c.fd = p[0];
    T_EQ_INT(svc_io_add(&c.io, f.loop, p[0], EPOLLIN, on_readable, &c), SVC_OK);
    T_ASSERT(c.io != NULL);
    T_EQ_INT(write(p[1], "x", 1), 1);
    T_EQ_INT(svc_loop_run(f.loop), 0);
    T_EQ_INT(c.calls, 3); /* unread data keeps firing */
    close(p[0]);
    close(p[1]);
    loop_done(&f);
}

static void test_io_hangup(void)
{
    struct fixture f;
    struct io_ctx c = {0};
    int sv[2];

    loop_begin(&f, "io hangup");
    T_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    c.loop = f.loop;
    c.fd = sv[0];
    c.read_it = 1;
    T_EQ_INT(svc_io_add(&c.io, f.loop, sv[0], EPOLLRDHUP, on_readable, &c), SVC_OK);
    T_ASSERT(c.io != NULL);
    close(sv[1]);
    T_EQ_INT(svc_loop_run(f.loop), 0);
    T_EQ_INT(c.calls, 1);
    T_ASSERT(c.events & EPOLLRDHUP);
    close(sv[0]);
    loop_done(&f);
}

static void on_writable(void *data, struct svc_io *io, int fd, uint32_t events)
{
    struct io_ctx *c = data;

    (void)fd;
    T_ASSERT(io == c->io);
    c->calls++;
    c->events = events;
    svc_io_del(&c->io);
    svc_loop_stop(c->loop);
}

static void test_io_modify(void)
{
    struct fixture f;
    struct io_ctx c = {0};
    struct svc_timer *end;
    int sv[2];

    loop_begin(&f, "io modify");
    T_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    c.loop = f.loop;
    c.fd = sv[0];
    T_EQ_INT(svc_io_add(&c.io, f.loop, sv[0], EPOLLIN, on_writable, &c), SVC_OK);
    T_ASSERT(c.io != NULL);
    /* nothing to read: no call within 30 ms */
    T_EQ_INT(svc_timer_create(&end, f.loop, on_stop_loop, f.loop), SVC_OK);
    T_EQ_INT(svc_timer_start(end, 30), SVC_OK);
    T_EQ_INT(svc_loop_run(f.loop), 0);
    T_EQ_INT(c.calls, 0);
    /* a socket is writable at once */
    T_EQ_INT(svc_io_modify(c.io, EPOLLOUT), SVC_OK);
    T_EQ_INT(svc_timer_start(end, 1000), SVC_OK);
    T_EQ_INT(svc_loop_run(f.loop), 0);
    T_EQ_INT(c.calls, 1);
    T_ASSERT(c.events & EPOLLOUT);
    svc_timer_destroy(&end);
    close(sv[0]);
    close(sv[1]);
    loop_done(&f);
}

static void test_io_add_bad_fd(void)
{
    struct fixture f;
    struct io_ctx c = {0};
    struct svc_io *io;

    loop_begin(&f, "io bad fd");
    errno = 0;
    T_EQ_INT(svc_io_add(&io, f.loop, -1, EPOLLIN, on_readable, &c), SVC_EIO);
    T_ASSERT(io == NULL);
    T_EQ_INT(errno, EBADF);
    /* epoll refuses a directory (EPERM) */
    {
        int fd = open(".", O_RDONLY | O_DIRECTORY);
        T_ASSERT(fd >= 0);
        errno = 0;
        T_EQ_INT(svc_io_add(&io, f.loop, fd, EPOLLIN, on_readable, &c), SVC_EIO);
        T_ASSERT(io == NULL);
        T_EQ_INT(errno, EPERM);
        close(fd);
    }
    T_EQ_INT(c.calls, 0);
    svc_io_del(&io); /* NULL is fine */
    svc_io_del(NULL);
    loop_done(&f);
}

struct batch {
    struct svc_loop *loop;
    struct svc_io *io[2];
    int fd[2];
    int calls[2];
};

struct batch_ref {
    struct batch *b;
    int which;
};

static void on_batch(void *data, struct svc_io *io, int fd, uint32_t events)
{
    struct batch_ref *r = data;
    struct batch *b = r->b;

    (void)events;
    T_ASSERT(io == b->io[r->which]);
    T_EQ_INT(fd, b->fd[r->which]);
    b->calls[r->which]++;
    /* delete both handles, and close the other fd too, inside one batch: the other handle's
     * event was already fetched by epoll_wait and must be dropped, not delivered to freed
     * memory */
    svc_io_del(&b->io[0]);
    svc_io_del(&b->io[1]);
    svc_loop_stop(b->loop);
}

static void test_io_del_in_same_batch(void)
{
    struct fixture f;
    struct batch b = {0};
    struct batch_ref r0 = {&b, 0}, r1 = {&b, 1};
    int p0[2], p1[2];

    loop_begin(&f, "io del in batch");
    T_EQ_INT(pipe2(p0, O_NONBLOCK | O_CLOEXEC), 0);
    T_EQ_INT(pipe2(p1, O_NONBLOCK | O_CLOEXEC), 0);
    b.loop = f.loop;
    b.fd[0] = p0[0];
    b.fd[1] = p1[0];
    T_EQ_INT(svc_io_add(&b.io[0], f.loop, p0[0], EPOLLIN, on_batch, &r0), SVC_OK);
    T_EQ_INT(svc_io_add(&b.io[1], f.loop, p1[0], EPOLLIN, on_batch, &r1), SVC_OK);
    T_ASSERT(b.io[0] != NULL && b.io[1] != NULL);
    /* both readable before the loop runs, so one epoll_wait returns both */
    T_EQ_INT(write(p0[1], "a", 1), 1);
    T_EQ_INT(write(p1[1], "b", 1), 1);
    T_EQ_INT(svc_loop_run(f.loop), 0);
    T_EQ_INT(b.calls[0] + b.calls[1], 1);
    close(p0[0]);
    close(p0[1]);
    close(p1[0]);
    close(p1[1]);
    loop_done(&f);
}

static void on_batch_close(void *data, struct svc_io *io, int fd, uint32_t events)
{
    struct batch_ref *r = data;
    struct batch *b = r->b;

    (void)io;
    (void)fd;
    (void)events;
    b->calls[r->which]++;
    /* as above, but svc_io_close: no EPOLL_CTL_DEL, the close takes both fds out of the set */
    svc_io_close(&b->io[0]);
    svc_io_close(&b->io[1]);
    T_ASSERT(b->io[0] == NULL && b->io[1] == NULL);
}

static void on_stop_later(void *data, struct svc_timer *t)
{
    (void)t;
    svc_loop_stop(data);
}

/* svc_io_close closes the fd, and an event fetched for it in the same batch is dropped; the
 * closed fds raise nothing afterwards although their pipes' write ends stay open and written. */
static void test_io_close_in_same_batch(void)
{
    struct fixture f;
    struct batch b = {0};
    struct batch_ref r0 = {&b, 0}, r1 = {&b, 1};
    struct svc_timer *stop = NULL;
    int p0[2], p1[2];

    loop_begin(&f, "io close in batch");
    T_EQ_INT(pipe2(p0, O_NONBLOCK | O_CLOEXEC), 0);
    T_EQ_INT(pipe2(p1, O_NONBLOCK | O_CLOEXEC), 0);
    b.loop = f.loop;
    T_EQ_INT(svc_io_add(&b.io[0], f.loop, p0[0], EPOLLIN, on_batch_close, &r0), SVC_OK);
    T_EQ_INT(svc_io_add(&b.io[1], f.loop, p1[0], EPOLLIN, on_batch_close, &r1), SVC_OK);
    T_EQ_INT(write(p0[1], "a", 1), 1);
    T_EQ_INT(write(p1[1], "b", 1), 1);
    T_EQ_INT(svc_timer_create(&stop, f.loop, on_stop_later, f.loop), SVC_OK);
    T_EQ_INT(svc_timer_start(stop, 50), SVC_OK);
    T_EQ_INT(svc_loop_run(f.loop), 0);
    T_EQ_INT(b.calls[0] + b.calls[1], 1);
    T_ASSERT(fcntl(p0[0], F_GETFD) == -1 && errno == EBADF);
    T_ASSERT(fcntl(p1[0], F_GETFD) == -1 && errno == EBADF);
    svc_io_close(NULL);
    svc_timer_destroy(&stop);
    close(p0[1]);
    close(p1[1]);
    loop_done(&f);
}

struct io_and_timer {
    struct svc_loop *loop;
    struct svc_io *io;
    struct svc_timer *t;
    int timer_fired;
};

static void on_io_kills_timer(void *data, struct svc_io *io, int fd, uint32_t events)
{
    struct io_and_timer *x = data;
    char c;

    (void)io;
    (void)events;
    T_EQ_INT(read(fd, &c, 1), 1);
    svc_timer_destroy(&x->t); /* due in this very iteration: must not fire */
    svc_io_del(&x->io);
    svc_loop_stop(x->loop);
}

static void on_io_timer(void *data, struct svc_timer *t)
{
    struct io_and_timer *x = data;

    (void)t;
    x->timer_fired++;
}

static void test_timer_destroyed_by_io_same_iteration(void)
{
    struct fixture f;
    struct io_and_timer x = {0};
    int p[2];

    loop_begin(&f, "io kills timer");
    T_EQ_INT(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    x.loop = f.loop;
    T_EQ_INT(svc_io_add(&x.io, f.loop, p[0], EPOLLIN, on_io_kills_timer, &x), SVC_OK);
    T_EQ_INT(svc_timer_create(&x.t, f.loop, on_io_timer, &x), SVC_OK);
    T_ASSERT(x.io != NULL && x.t != NULL);
    T_EQ_INT(svc_timer_start(x.t, 0), SVC_OK);
    T_EQ_INT(write(p[1], "z", 1), 1);
    sleep_ms(2); /* the timer is due by the time the loop looks */
    T_EQ_INT(svc_loop_run(f.loop), 0);
    T_EQ_INT(x.timer_fired, 0);
    close(p[0]);
    close(p[1]);
    loop_done(&f);
}

int main(void)
{
    T_RUN(test_create_destroy);
    T_RUN(test_clock);
    T_RUN(test_timers_fire_in_order);
    T_RUN(test_many_timers_heap);
    T_RUN(test_timer_stop_and_restart);
    T_RUN(test_timer_restarted_later_and_earlier);
    T_RUN(test_timer_restart_and_destroy_in_callback);
    T_RUN(test_timer_destroy_other_due_same_batch);
    T_RUN(test_timer_destroy_without_run);
    T_RUN(test_stop_before_run);
    T_RUN(test_stop_from_other_thread);
    T_RUN(test_post_wakes_blocked_loop);
    T_RUN(test_post_many_threads);
    T_RUN(test_post_before_run_and_from_callback);
    T_RUN(test_post_enomem);
    T_RUN(test_io_pipe);
    T_RUN(test_io_level_triggered);
    T_RUN(test_io_hangup);
    T_RUN(test_io_modify);
    T_RUN(test_io_add_bad_fd);
    T_RUN(test_io_del_in_same_batch);
    T_RUN(test_io_close_in_same_batch);
    T_RUN(test_timer_destroyed_by_io_same_iteration);
    return 0;
}
