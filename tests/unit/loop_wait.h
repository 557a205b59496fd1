#ifndef TEST_LOOP_WAIT_H
#define TEST_LOOP_WAIT_H

/*
 * The loop of a test of svc_fetch (test_fetch_h1.c, test_fetch_h2.c, test_fetch_tls.c) and
 * waiting on it: the test creates `loop` and runs it only through run_until and run_for, which
 * check a condition every 2 ms on a timer of the loop, so the loop thread never sleeps. Waits
 * are hang guards, never timings: a case fails when its condition did not come, not when it
 * came late. Header-only: each test is one .c file, and includes it after test.h.
 */

#include <stdint.h>

#include "svc/err.h"
#include "svc/loop.h"

static struct svc_loop *loop;

static int (*until_cond)(void *);
static void *until_arg;
static uint64_t until_deadline;

static void on_check(void *ctx, struct svc_timer *t)
{
    (void)ctx;
    if (until_cond(until_arg) || svc_loop_clock_ms() >= until_deadline ||
        svc_timer_start(t, 2) != SVC_OK)
        svc_loop_stop(loop);
}

/* Runs the loop until cond(arg) holds or max_ms passed. Returns cond(arg). */
static int run_until(int (*cond)(void *), void *arg, uint64_t max_ms)
{
    struct svc_timer *t = NULL;

    until_cond = cond;
    until_arg = arg;
    until_deadline = svc_loop_clock_ms() + max_ms;
    T_EQ_INT(svc_timer_create(&t, loop, on_check, NULL), SVC_OK);
    T_EQ_INT(svc_timer_start(t, 0), SVC_OK);
    T_EQ_INT(svc_loop_run(loop), SVC_OK);
    svc_timer_destroy(&t);
    return cond(arg);
}

static int never(void *arg)
{
    (void)arg;
    return 0;
}

/* Runs the loop for ms milliseconds: to let something happen, or to see that nothing more
 * does. The checks after it must hold whichever it was. */
static void run_for(uint64_t ms)
{
    run_until(never, NULL, ms);
}

#endif
