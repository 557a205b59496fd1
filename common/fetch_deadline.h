#ifndef SVC_FETCH_DEADLINE_H
#define SVC_FETCH_DEADLINE_H

/*
 * The deadlines of one transfer of our HTTP clients (fetch_h1.c, fetch_h2.c): connect, whole
 * transfer and idle (svc_fetch_req's connect_timeout_ms, timeout_ms, idle_timeout_ms), kept on
 * one loop timer per transfer. Internal to common/. Each client decides when a deadline starts
 * and stops (the *_due fields); this says which comes first and which has passed.
 */

#include <stddef.h>
#include <stdint.h>

#include "svc/fetch.h"

struct svc_timer;

struct svc__deadlines {
    uint64_t connect_ms, total_ms, idle_ms;    /* the request's (connect: its default); 0 = none */
    uint64_t connect_due, total_due, idle_due; /* loop ms; 0 = not running */
};

/* Takes the lengths from req; nothing is running yet. */
void svc__deadlines_init(struct svc__deadlines *d, const struct svc_fetch_req *req);

/* Arms t for the earliest due time (at once when kick is set), or stops it when none runs. */
void svc__deadlines_arm(const struct svc__deadlines *d, struct svc_timer *t, uint64_t now,
                        int kick);

/* Whether a deadline has passed at now: SVC_ETIMEDOUT with msg saying which (authority names
 * the server for the connect deadline), or SVC_OK. The connect deadline is looked at first. */
int svc__deadlines_passed(const struct svc__deadlines *d, uint64_t now, const char *authority,
                          char *msg, size_t len);

#endif
