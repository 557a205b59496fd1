#ifndef LG_HIST_H
#define LG_HIST_H

#include <stdint.h>

/*
 * A fixed-size log-linear latency histogram (the HdrHistogram layout with 64 sub-buckets per
 * power of two): values below 128 are exact, larger ones are kept within 1/64 (1.6 %) of their
 * value. Values are unitless (the load generator records microseconds); the largest bucket holds
 * values up to 2^63. Exact count, sum, min and max are kept beside the buckets.
 *
 * The struct is plain storage (about 30 KB): zero it, or call lg_hist_init(). Not thread-safe;
 * each worker thread owns one and the results are merged with lg_hist_merge() at the end.
 */

#define LG_HIST_SUB_BITS 6
#define LG_HIST_SUB (1u << LG_HIST_SUB_BITS)
#define LG_HIST_BUCKETS ((64 - LG_HIST_SUB_BITS + 1) * LG_HIST_SUB)

struct lg_hist {
    uint64_t count;
    uint64_t sum;
    uint64_t min;
    uint64_t max;
    uint64_t buckets[LG_HIST_BUCKETS];
};

/* Empties h. */
void lg_hist_init(struct lg_hist *h);

/* Records one value. */
void lg_hist_add(struct lg_hist *h, uint64_t v);

/* Adds every value of src to dst. */
void lg_hist_merge(struct lg_hist *dst, const struct lg_hist *src);

/*
 * The value at quantile q (0 < q <= 1): the smallest recorded bucket such that at least
 * ceil(q * count) values are at or below it, reported as the middle of that bucket and clamped to
 * [min, max]. q = 1 returns the exact max. 0 for an empty histogram.
 */
uint64_t lg_hist_quantile(const struct lg_hist *h, double q);

/* The mean (sum / count), 0 for an empty histogram. */
double lg_hist_mean(const struct lg_hist *h);

#endif
