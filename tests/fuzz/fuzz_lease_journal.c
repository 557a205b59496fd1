/*
 * Fuzz target for the lease charge journal's entry format (services/billing/journal.h), which
 * billing's sweeper reads from Redis to charge a caller that died:
 *  - billing_journal_parse accepts exactly the grammar "a P C MODEL" / "e S P C E ID MODEL"
 *    (decimal numbers of 1 to 18 digits, E 0 or 1, a request id of 1 to 128 bytes with no space
 *    or control byte, a model of 1 to 127 bytes with no control byte), checked against a
 *    reference reading of the same bytes;
 *  - an accepted entry formats (billing_journal_format) and parses back to the same entry, and the
 *    formatted text is the input itself when the input's numbers have no leading zero;
 *  - an input starting with 'b' is the rest as a "_b" value: billing_journal_parse_batch accepts
 *    exactly "<1-18 digits> <1-18 digits>", and the numbers format back to the same text when
 *    they have no leading zero.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "journal.h"
#include "svc/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reference: a number of 1..18 digits, then one space. Returns its end, or NULL. */
static const uint8_t *ref_number(const uint8_t *p, const uint8_t *end, int64_t *v, int *lead0)
{
    const uint8_t *s = p;

    *v = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        if (p - s == 18)
            return NULL;
        *v = *v * 10 + (*p++ - '0');
    }
    if (p == s || p >= end || *p != ' ')
        return NULL;
    if (*s == '0' && p - s > 1)
        *lead0 = 1;
    return p + 1;
}

static int ref_parse(const uint8_t *d, size_t n, struct billing_journal_entry *e, int *lead0)
{
    const uint8_t *p = d + 2, *end = d + n;

    memset(e, 0, sizeof(*e));
    if (n < 2 || (d[0] != 'a' && d[0] != 'e') || d[1] != ' ')
        return 0;
    e->ended = d[0] == 'e';
    if (e->ended && (p = ref_number(p, end, &e->end, lead0)) == NULL)
        return 0;
    if ((p = ref_number(p, end, &e->prompt, lead0)) == NULL ||
        (p = ref_number(p, end, &e->completion, lead0)) == NULL)
        return 0;
    if (e->ended) {
        int64_t est;
        const uint8_t *id;
        if ((p = ref_number(p, end, &est, lead0)) == NULL || est > 1)
            return 0;
        e->estimated = (int)est;
        for (id = p; p<end && * p> 0x20 && *p != 0x7f; p++)
            ;
        if (p == id || p - id > BILLING_JOURNAL_ID_MAX || p >= end || *p != ' ')
            return 0;
        memcpy(e->request_id, id, (size_t)(p - id));
        p++;
    }
    if (end - p < 1 || end - p > BILLING_JOURNAL_MODEL_MAX - 1)
        return 0;
    for (const uint8_t *m = p; m < end; m++)
        if (*m < 0x20 || *m == 0x7f)
            return 0;
    memcpy(e->model, p, (size_t)(end - p));
    return 1;
}

static int same(const struct billing_journal_entry *a, const struct billing_journal_entry *b)
{
    return a->ended == b->ended && a->end == b->end && a->prompt == b->prompt &&
           a->completion == b->completion && a->estimated == b->estimated &&
           strcmp(a->request_id, b->request_id) == 0 && strcmp(a->model, b->model) == 0;
}

static int ref_batch(const uint8_t *d, size_t n, int64_t *seq, int64_t *end, int *lead0)
{
    const uint8_t *p = ref_number(d, d + n, seq, lead0), *s;

    if (p == NULL)
        return 0;
    *end = 0;
    for (s = p; p < d + n && *p >= '0' && *p <= '9'; p++) {
        if (p - s == 18)
            return 0;
        *end = *end * 10 + (*p - '0');
    }
    if (p == s || p != d + n)
        return 0;
    if (*s == '0' && p - s > 1)
        *lead0 = 1;
    return 1;
}

static void batch(const uint8_t *d, size_t n)
{
    int64_t seq = 0, end = 0, rseq = 0, rend = 0;
    int lead0 = 0, ok = billing_journal_parse_batch((const char *)d, n, &seq, &end) == SVC_OK;
    char buf[48];
    int len;

    if (ok != ref_batch(d, n, &rseq, &rend, &lead0))
        abort();
    if (!ok)
        return;
    if (seq != rseq || end != rend)
        abort();
    len = billing_journal_format_batch(buf, seq, end);
    if (!lead0 && ((size_t)len != n || memcmp(buf, d, n) != 0))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct billing_journal_entry e, ref, again;
    char buf[BILLING_JOURNAL_VALUE_MAX];
    int lead0 = 0, ok = billing_journal_parse((const char *)data, size, &e) == SVC_OK;
    int n;

    if (size > 0 && data[0] == 'b') {
        batch(data + 1, size - 1);
        return 0;
    }
    if (ok != ref_parse(data, size, &ref, &lead0))
        abort();
    if (!ok)
        return 0;
    if (!same(&e, &ref))
        abort();
    n = billing_journal_format(buf, sizeof(buf), &e);
    if (n < 0 || billing_journal_parse(buf, (size_t)n, &again) != SVC_OK || !same(&e, &again))
        abort();
    if (!lead0 && ((size_t)n != size || memcmp(buf, data, size) != 0))
        abort();
    return 0;
}
