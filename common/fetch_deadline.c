/* The deadlines of one transfer of our HTTP clients (fetch_deadline.h). */
#include "fetch_deadline.h"

#include <stdio.h>

#include "fetch_h1.h"
#include "svc/loop.h"

void svc__deadlines_init(struct svc__deadlines *d, const struct svc_fetch_req *req)
{
    d->connect_ms = (uint64_t)(req->connect_timeout_ms > 0 ? req->connect_timeout_ms
                                                           : SVC__FETCH_DEFAULT_CONNECT_MS);
    d->total_ms = req->timeout_ms > 0 ? (uint64_t)req->timeout_ms : 0;
    d->idle_ms = req->idle_timeout_ms > 0 ? (uint64_t)req->idle_timeout_ms : 0;
    d->connect_due = d->total_due = d->idle_due = 0;
}

void svc__deadlines_arm(const struct svc__deadlines *d, struct svc_timer *t, uint64_t now, int kick)
{
    const uint64_t dues[] = {d->connect_due, d->total_due, d->idle_due};
    uint64_t next = 0;

    for (size_t i = 0; i < sizeof(dues) / sizeof(dues[0]); i++)
        if (dues[i] != 0 && (next == 0 || dues[i] < next))
            next = dues[i];
    if (kick)
        next = now;
    if (next == 0)
        svc_timer_stop(t);
    else if (svc_timer_start(t, next > now ? next - now : 0) != SVC_OK)
        svc_timer_stop(t); /* cannot happen: an armed timer needs no memory */
}

int svc__deadlines_passed(const struct svc__deadlines *d, uint64_t now, const char *authority,
                          char *msg, size_t len)
{
    if (d->connect_due != 0 && now >= d->connect_due)
        snprintf(msg, len, "connecting to %s took longer than %llu ms", authority,
                 (unsigned long long)d->connect_ms);
    else if (d->total_due != 0 && now >= d->total_due)
        snprintf(msg, len, "the transfer took longer than %llu ms",
                 (unsigned long long)d->total_ms);
    else if (d->idle_due != 0 && now >= d->idle_due)
        snprintf(msg, len, "no data for %llu ms", (unsigned long long)d->idle_ms);
    else
        return SVC_OK;
    return SVC_ETIMEDOUT;
}
