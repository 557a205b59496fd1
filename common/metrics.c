#include "svc/metrics.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/util.h"

#define METRIC_BLOCKS_MAX 16
#define METRIC_VECS_MAX 16
#define VEC_BUCKETS_HASH 256

static struct {
    struct svc_metric *m;
    size_t n;
} blocks[METRIC_BLOCKS_MAX];
static size_t nblocks;

void svc_metrics_register(struct svc_metric *m, size_t n)
{
    if (nblocks < METRIC_BLOCKS_MAX) {
        blocks[nblocks].m = m;
        blocks[nblocks].n = n;
        nblocks++;
    }
}

/* ---- labelled families ---- */

static const double seconds_buckets[] = SVC_METRIC_SECONDS_BUCKETS;
#define NBUCKETS (sizeof(seconds_buckets) / sizeof(seconds_buckets[0]))

struct series {
    char values[SVC_METRIC_LABELS_MAX][SVC_METRIC_LABEL_VALUE_MAX];
    uint64_t hash;
    struct series *next;        /* in its hash chain */
    atomic_llong count;         /* the counter, or the histogram's observations */
    atomic_llong sum_us;        /* histogram: the sum, in microseconds */
    atomic_llong le[NBUCKETS];  /* histogram: observations per bucket (not cumulative) */
};

struct svc_metric_vec {
    const char *name, *help;
    enum svc_metric_vec_type type;
    const char *labels[SVC_METRIC_LABELS_MAX];
    size_t nlabels;
    pthread_mutex_t mu;
    struct series *hash[VEC_BUCKETS_HASH];
    struct series *all[SVC_METRIC_SERIES_MAX + 1]; /* in order of creation; the last: "other" */
    size_t nall;
    struct series *other;
};

static struct svc_metric_vec *vecs[METRIC_VECS_MAX];
static size_t nvecs;

int svc_metric_vec_create(struct svc_metric_vec **out, const char *name, const char *help,
                          enum svc_metric_vec_type type, const char *const *labels, size_t nlabels)
{
    struct svc_metric_vec *v;

    *out = NULL;
    if (nlabels == 0 || nlabels > SVC_METRIC_LABELS_MAX)
        return SVC_EINVAL;
    if (nvecs >= METRIC_VECS_MAX)
        return SVC_ETOOLARGE;
    if ((v = calloc(1, sizeof(*v))) == NULL)
        return SVC_ENOMEM;
    v->name = name;
    v->help = help;
    v->type = type;
    v->nlabels = nlabels;
    for (size_t i = 0; i < nlabels; i++)
        v->labels[i] = labels[i];
    pthread_mutex_init(&v->mu, NULL);
    vecs[nvecs++] = v;
    *out = v;
    return SVC_OK;
}

/* The label value as kept: at most SVC_METRIC_LABEL_VALUE_MAX - 1 bytes, cut on a character. */
static void value_copy(char *dst, const char *src)
{
    /* not snprintf: five label sets per proxy request, and its formatting cost more than the
     * rest of the look-up */
    svc_util_str_copy(dst, SVC_METRIC_LABEL_VALUE_MAX, src != NULL ? src : "");
    svc_util_utf8_trim_end(dst);
}

static uint64_t values_hash(char values[][SVC_METRIC_LABEL_VALUE_MAX], size_t n)
{
    uint64_t h = 14695981039346656037ULL; /* FNV-1a, values separated by their NUL */

    for (size_t i = 0; i < n; i++)
        for (const unsigned char *p = (const unsigned char *)values[i];; p++) {
            h = (h ^ *p) * 1099511628211ULL;
            if (*p == '\0')
                break;
        }
    return h;
}

/* The series of these values, made on first use; "other" past SVC_METRIC_SERIES_MAX; NULL only
 * when out of memory. */
static struct series *series_get(struct svc_metric_vec *v, const char *const *values)
{
    char key[SVC_METRIC_LABELS_MAX][SVC_METRIC_LABEL_VALUE_MAX];
    struct series *s;
    uint64_t h;

    memset(key, 0, sizeof(key)); /* compared whole, past each value's NUL */
    for (size_t i = 0; i < v->nlabels; i++)
        value_copy(key[i], values[i]);
    h = values_hash(key, v->nlabels);
    pthread_mutex_lock(&v->mu);
    for (s = v->hash[h % VEC_BUCKETS_HASH]; s != NULL; s = s->next)
        if (s->hash == h && memcmp(s->values, key, sizeof(key[0]) * v->nlabels) == 0)
            goto out;
    if (v->nall >= SVC_METRIC_SERIES_MAX) {
        if (v->other == NULL && (v->other = calloc(1, sizeof(*v->other))) != NULL) {
            for (size_t i = 0; i < v->nlabels; i++)
                value_copy(v->other->values[i], "other");
            v->all[v->nall++] = v->other;
        }
        s = v->other;
        goto out;
    }
    if ((s = calloc(1, sizeof(*s))) == NULL)
        goto out;
    memcpy(s->values, key, sizeof(key[0]) * v->nlabels);
    s->hash = h;
    s->next = v->hash[h % VEC_BUCKETS_HASH];
    v->hash[h % VEC_BUCKETS_HASH] = s;
    v->all[v->nall++] = s;
out:
    pthread_mutex_unlock(&v->mu);
    return s;
}

void svc_metric_vec_add(struct svc_metric_vec *v, const char *const *values, long long by)
{
    struct series *s = v != NULL ? series_get(v, values) : NULL;

    if (s != NULL)
        atomic_fetch_add_explicit(&s->count, by, memory_order_relaxed);
}

void svc_metric_vec_observe(struct svc_metric_vec *v, const char *const *values, double seconds)
{
    struct series *s = v != NULL ? series_get(v, values) : NULL;
    size_t b = 0;

    if (s == NULL)
        return;
    if (seconds < 0)
        seconds = 0;
    while (b < NBUCKETS && seconds > seconds_buckets[b])
        b++;
    if (b < NBUCKETS)
        atomic_fetch_add_explicit(&s->le[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->sum_us, (long long)(seconds * 1e6), memory_order_relaxed);
    atomic_fetch_add_explicit(&s->count, 1, memory_order_relaxed);
}

/* ---- rendering ---- */

/* name{l1="v1",l2="v2"[,le="x"]} with Prometheus's escapes in the values. */
static int render_labels(struct svc_buf *out, const struct svc_metric_vec *v,
                         const struct series *s, const char *le)
{
    int rc = svc_buf_append_str(out, "{");

    for (size_t i = 0; i < v->nlabels && rc == SVC_OK; i++) {
        rc = svc_buf_appendf(out, "%s%s=\"", i > 0 ? "," : "", v->labels[i]);
        for (const char *p = s->values[i]; *p != '\0' && rc == SVC_OK; p++) {
            if (*p == '\\' || *p == '"')
                rc = svc_buf_appendf(out, "\\%c", *p);
            else if (*p == '\n')
                rc = svc_buf_append_str(out, "\\n");
            else
                rc = svc_buf_append(out, p, 1);
        }
        if (rc == SVC_OK)
            rc = svc_buf_append_str(out, "\"");
    }
    if (rc == SVC_OK && le != NULL)
        rc = svc_buf_appendf(out, ",le=\"%s\"", le);
    return rc == SVC_OK ? svc_buf_append_str(out, "}") : rc;
}

static int render_vec(struct svc_buf *out, struct svc_metric_vec *v)
{
    struct series *all[SVC_METRIC_SERIES_MAX + 1];
    size_t n;
    int rc;

    pthread_mutex_lock(&v->mu);
    n = v->nall;
    memcpy(all, v->all, n * sizeof(all[0]));
    pthread_mutex_unlock(&v->mu);
    rc = svc_buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", v->name, v->help, v->name,
                         v->type == SVC_METRIC_VEC_COUNTER ? "counter" : "histogram");
    for (size_t i = 0; i < n && rc == SVC_OK; i++) {
        const struct series *s = all[i];
        long long count = atomic_load(&s->count), cum = 0;
        char le[32];

        if (v->type == SVC_METRIC_VEC_COUNTER) {
            if ((rc = svc_buf_append_str(out, v->name)) == SVC_OK &&
                (rc = render_labels(out, v, s, NULL)) == SVC_OK)
                rc = svc_buf_appendf(out, " %lld\n", count);
            continue;
        }
        for (size_t b = 0; b <= NBUCKETS && rc == SVC_OK; b++) {
            if (b < NBUCKETS) {
                cum += atomic_load(&s->le[b]);
                snprintf(le, sizeof(le), "%g", seconds_buckets[b]);
            } else {
                cum = count; /* +Inf: every observation */
                snprintf(le, sizeof(le), "+Inf");
            }
            if ((rc = svc_buf_appendf(out, "%s_bucket", v->name)) == SVC_OK &&
                (rc = render_labels(out, v, s, le)) == SVC_OK)
                rc = svc_buf_appendf(out, " %lld\n", cum);
        }
        if (rc == SVC_OK && (rc = svc_buf_appendf(out, "%s_sum", v->name)) == SVC_OK &&
            (rc = render_labels(out, v, s, NULL)) == SVC_OK)
            rc = svc_buf_appendf(out, " %.6f\n", (double)atomic_load(&s->sum_us) / 1e6);
        if (rc == SVC_OK && (rc = svc_buf_appendf(out, "%s_count", v->name)) == SVC_OK &&
            (rc = render_labels(out, v, s, NULL)) == SVC_OK)
            rc = svc_buf_appendf(out, " %lld\n", count);
    }
    return rc;
}

int svc_metrics_render(struct svc_buf *out)
{
    int rc = SVC_OK;

    for (size_t b = 0; b < nblocks && rc == SVC_OK; b++) {
        for (size_t i = 0; i < blocks[b].n && rc == SVC_OK; i++) {
            const struct svc_metric *m = &blocks[b].m[i];
            rc = svc_buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n%s %lld\n", m->name, m->help,
                                 m->name, m->type == SVC_METRIC_COUNTER ? "counter" : "gauge",
                                 m->name, (long long)atomic_load(&m->value));
        }
    }
    for (size_t i = 0; i < nvecs && rc == SVC_OK; i++)
        rc = render_vec(out, vecs[i]);
    return rc;
}
