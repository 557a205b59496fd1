#ifndef BILLING_PRICE_H
#define BILLING_PRICE_H

/*
 * Per-model price ratios: how many balance units one input (prompt) and one output (completion)
 * token cost. Ratios are exact integers in thousandths of a unit per token ("milli-units"), so
 * "2.5" is 2500 and "0.15" is 150; at most three decimals are accepted, never a float.
 *
 * Cost of a request = ceil(tokens_in * in_milli / 1000) + ceil(tokens_out * out_milli / 1000):
 * each side is rounded up on its own, so a non-zero usage at a non-zero price never costs 0.
 * Without a configured ratio a token costs one unit (1000 milli-units), as in the seed.
 *
 * BILLING_PRICES="gpt-4o=2.5:10,gpt-4o-mini=0.15:0.6,*=1:1"
 *   model=IN:OUT, comma-separated. Lookup: exact model name, else the longest configured name
 *   that is a prefix of the model followed by '-' (so "gpt-4o" prices "gpt-4o-2024-08-06"),
 *   else the "*" entry, else 1:1.
 *
 * Thread-safety: a table is immutable after billing_prices_create() and may be read by any
 * number of threads.
 */

#include <stddef.h>
#include <stdint.h>

#include "svc/err.h"

#define BILLING_PRICE_MODEL_MAX 128     /* bytes of a model name in the table */
#define BILLING_PRICE_ENTRIES_MAX 256   /* entries in BILLING_PRICES */
#define BILLING_PRICE_MILLI_MAX 1000000 /* 1000 units per token at most */
#define BILLING_TOKENS_MAX 1000000000LL /* tokens of one side of one request (1e9) */

struct billing_prices;

struct billing_ratio {
    int64_t in_milli;  /* milli-units per input token */
    int64_t out_milli; /* milli-units per output token */
};

/*
 * Parses spec (NULL or "" = empty table: everything 1:1). On success *out owns the table (free
 * with billing_prices_destroy). On failure *out is NULL, err holds a one-line reason naming the
 * entry, and SVC_EINVAL (syntax, range, duplicate) or SVC_ENOMEM is returned.
 */
int billing_prices_create(struct billing_prices **out, const char *spec, char *err,
                          size_t errlen) SVC_MUST_CHECK;

/* Frees the table and sets *p to NULL; accepts NULL. */
void billing_prices_destroy(struct billing_prices **p);

/* Number of entries (for the start-up log). */
size_t billing_prices_count(const struct billing_prices *p);

/* The ratio for model (NULL or "" gets the default). p may be NULL (everything 1:1). */
struct billing_ratio billing_prices_lookup(const struct billing_prices *p, const char *model);

/*
 * The same lookup, saying which entry priced model: its name (borrowed from p, valid while p
 * lives), "*" for p's default entry, or NULL when nothing matched (*r is then 1:1).
 */
const char *billing_prices_match(const struct billing_prices *p, const char *model,
                                 struct billing_ratio *r);

/* One entry of a table: a model name (or "*", the default) and its ratio. */
struct billing_price_row {
    char model[BILLING_PRICE_MODEL_MAX];
    struct billing_ratio r;
};

/*
 * A ratio as BILLING_PRICES writes it ("2.5", "0.15", "10": digits, optionally '.' and 1..3
 * digits, at most 1000) -> milli-units in *milli. SVC_EINVAL for anything else (also "", "-1",
 * "1e3", "0.1234").
 */
int billing_price_parse(const char *s, int64_t *milli) SVC_MUST_CHECK;

/* milli-units -> the shortest decimal text ("2500" -> "2.5", "150" -> "0.15"). out >= 24 bytes. */
void billing_price_format(int64_t milli, char *out, size_t outlen);

/*
 * 1 when name may be priced by an operator: "*" (the default), or 1..BILLING_PRICE_MODEL_MAX-1
 * bytes of A-Z a-z 0-9 . _ - : / @ +, not starting with '-' or '.'.
 */
int billing_price_model_ok(const char *name);

/*
 * The rows of p ("*" last when p has a default entry) into rows[0..max); returns how many it
 * has (which may be more than max). p may be NULL (none).
 */
size_t billing_prices_rows(const struct billing_prices *p, struct billing_price_row *rows,
                           size_t max);

/*
 * A new table: base's entries with each of rows[0..n) added, or replacing base's entry of the
 * same name ("*" replaces base's default). base may be NULL; rows must have distinct names. On
 * success *out owns the table (billing_prices_destroy); SVC_ENOMEM otherwise (*out NULL).
 */
int billing_prices_merge(struct billing_prices **out, const struct billing_prices *base,
                         const struct billing_price_row *rows, size_t n) SVC_MUST_CHECK;

/* ceil(tokens * milli / 1000). tokens in [0, BILLING_TOKENS_MAX], milli in [0, MILLI_MAX]:
 * the product stays below 2^63. Returns -1 for arguments out of range. */
int64_t billing_units_for(int64_t tokens, int64_t milli);

/*
 * The largest n in [0, BILLING_TOKENS_MAX] with billing_units_for(n, milli) <= units (for a
 * completion limit that fits a balance). milli == 0 gives BILLING_TOKENS_MAX.
 */
int64_t billing_tokens_within(int64_t units, int64_t milli);

#endif
