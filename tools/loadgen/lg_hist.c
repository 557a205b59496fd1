/*
 * Log-linear histogram: see lg_hist.h. Bucket i < 2*SUB holds the value i exactly. Above that,
 * each power of two [2^m, 2^(m+1)) (m >= SUB_BITS + 1) is cut into SUB equal buckets of width
 * 2^(m - SUB_BITS).
 */
#include "lg_hist.h"

#include <string.h>

static unsigned bucket_of(uint64_t v)
{
    unsigned msb, shift;

    if (v < 2 * LG_HIST_SUB)
        return (unsigned)v;
    msb = 63u - (unsigned)__builtin_clzll(v);
    shift = msb - LG_HIST_SUB_BITS;
    return (shift + 1) * LG_HIST_SUB + (unsigned)((v >> shift) - LG_HIST_SUB);
}

/* The middle of bucket i. */
static uint64_t bucket_mid(unsigned i)
{
    unsigned shift;
    uint64_t sub, lo;

    if (i < 2 * LG_HIST_SUB)
        return i;
    shift = i / LG_HIST_SUB - 1;
    sub = i % LG_HIST_SUB + LG_HIST_SUB;
    lo = sub << shift;
    return lo + ((((uint64_t)1) << shift) - 1) / 2;
}

void lg_hist_init(struct lg_hist *h)
{
    memset(h, 0, sizeof(*h));
}

void lg_hist_add(struct lg_hist *h, uint64_t v)
{
    unsigned b = bucket_of(v);

    if (b >= LG_HIST_BUCKETS) /* cannot happen for 64-bit values; kept as a guard */
        b = LG_HIST_BUCKETS - 1;
    h->buckets[b]++;
    if (h->count == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->count++;
    h->sum += v;
}

void lg_hist_merge(struct lg_hist *dst, const struct lg_hist *src)
{
    if (src->count == 0)
        return;
    for (unsigned i = 0; i < LG_HIST_BUCKETS; i++)
        dst->buckets[i] += src->buckets[i];
    if (dst->count == 0 || src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->count += src->count;
    dst->sum += src->sum;
}

uint64_t lg_hist_quantile(const struct lg_hist *h, double q)
{
    uint64_t rank, seen = 0, v;

    if (h->count == 0)
        return 0;
    if (q >= 1.0)
        return h->max;
    rank = (uint64_t)(q * (double)h->count);
    if ((double)rank < q * (double)h->count)
        rank++;
    if (rank == 0)
        rank = 1;
    for (unsigned i = 0; i < LG_HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            v = bucket_mid(i);
            if (v < h->min)
                v = h->min;
            if (v > h->max)
                v = h->max;
            return v;
        }
    }
    return h->max;
}

double lg_hist_mean(const struct lg_hist *h)
{
    return h->count != 0 ? (double)h->sum / (double)h->count : 0.0;
}
