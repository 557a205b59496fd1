#ifndef SVC_METRICS_H
#define SVC_METRICS_H

#include <stdatomic.h>
#include <stddef.h>

#include "svc/buf.h"

/*
 * Counters and gauges with relaxed atomics, declared once per module as an X-macro list
 * (pelikan's stats) and exported in Prometheus text format on the admin listener.
 *
 *     #define CHAT_METRICS(ACTION) \
 *         ACTION(chat_streams_open, SVC_METRIC_GAUGE, "streams in flight")
 *     static struct { CHAT_METRICS(SVC_METRIC_DECLARE) } stats = { CHAT_METRICS(SVC_METRIC_INIT) };
 *     svc_metrics_register((struct svc_metric *)&stats, SVC_METRIC_COUNT(stats));
 */

enum svc_metric_type { SVC_METRIC_COUNTER, SVC_METRIC_GAUGE };

struct svc_metric {
    const char *name;
    enum svc_metric_type type;
    const char *help;
    atomic_llong value;
};

#define SVC_METRIC_DECLARE(name, type, help) struct svc_metric name;
#define SVC_METRIC_INIT(name, type, help) .name = {#name, type, help, 0},
#define SVC_METRIC_COUNT(stats) (sizeof(stats) / sizeof(struct svc_metric))

/* Adds a block of metrics to the exported set. Call at start-up, before threads. The block must
 * live for the whole process. At most 16 blocks. */
void svc_metrics_register(struct svc_metric *m, size_t n);

static inline void svc_metric_add(struct svc_metric *m, long long by)
{
    atomic_fetch_add_explicit(&m->value, by, memory_order_relaxed);
}

static inline void svc_metric_set(struct svc_metric *m, long long v)
{
    atomic_store_explicit(&m->value, v, memory_order_relaxed);
}

/* Renders every registered metric in Prometheus text format (0.0.4). */
int svc_metrics_render(struct svc_buf *out) SVC_MUST_CHECK;

#endif
