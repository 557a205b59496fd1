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

/*
 * Labelled families: counters, or histograms of seconds, one series per combination of label
 * values (per model, API key, upstream, status). Series are made on first use, up to
 * SVC_METRIC_SERIES_MAX per family; past that, new combinations are counted in one series whose
 * label values are all "other", so a flood of names cannot grow the process without bound.
 * Thread-safe (a mutex per family for the look-up, relaxed atomics for the values).
 *
 *     static const char *const labels[] = {"model", "key"};
 *     rc = svc_metric_vec_create(&v, "proxy_requests_total", "requests", SVC_METRIC_VEC_COUNTER,
 *                                labels, 2);
 *     svc_metric_vec_add(v, (const char *[]){"gpt-4o", "17"}, 1);
 */
#define SVC_METRIC_LABELS_MAX 4
#define SVC_METRIC_SERIES_MAX 1000
#define SVC_METRIC_LABEL_VALUE_MAX 64 /* bytes of a label value kept (longer ones are cut) */

enum svc_metric_vec_type { SVC_METRIC_VEC_COUNTER, SVC_METRIC_VEC_HISTOGRAM };

struct svc_metric_vec;

/* Creates and registers a family (at start-up, before threads; it lives for the whole process,
 * so it has no destructor). Histograms use SVC_METRIC_SECONDS_BUCKETS. On failure *out is NULL.
 * Returns SVC_OK, SVC_EINVAL (no label, or more than SVC_METRIC_LABELS_MAX), SVC_ENOMEM, or
 * SVC_ETOOLARGE (past 16 families). */
SVC_MUST_CHECK int svc_metric_vec_create(struct svc_metric_vec **out, const char *name,
                                         const char *help, enum svc_metric_vec_type type,
                                         const char *const *labels, size_t nlabels);

/* Adds by to the counter series of these label values (one per label; NULL counts as ""). */
void svc_metric_vec_add(struct svc_metric_vec *v, const char *const *values, long long by);

/* Records one observation of seconds in the histogram series of these label values. */
void svc_metric_vec_observe(struct svc_metric_vec *v, const char *const *values, double seconds);

/* The upper bounds of the histogram buckets, in seconds: time to first token and whole requests
 * of a model API, from 5 ms to 5 minutes. */
#define SVC_METRIC_SECONDS_BUCKETS                                                              \
    {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}

#endif
