/*
 * Fuzz target for the lease charge journal's entry format (services/billing/journal.h), which
 * billing's sweeper reads from Redis to charge a caller that died:
 *  - billing_journal_parse accepts exactly the grammar "a P C MODEL" / "e S P C E ID MODEL"
 *    (decimal numbers of 1 to 18 digits, E 0 or 1, a request id of 1 to 128 bytes with no space
 *    or control byte, a model of 1 to 127 bytes with no control byte), checked against a
 *    reference reading of the same bytes;
 *  - an accepted entry formats (billing_journal_format) and parses back to the same entry, and the
 *    formatted text is the input itself when the input's numbers have no leading zero.
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
    if (e->ended && (p = ref_number(p, end, &e->seq, lead0)) == NULL)
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
    return a->ended == b->ended && a->seq == b->seq && a->prompt == b->prompt &&
           a->completion == b->completion && a->estimated == b->estimated &&
           strcmp(a->request_id, b->request_id) == 0 && strcmp(a->model, b->model) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct billing_journal_entry e, ref, again;
    char buf[BILLING_JOURNAL_VALUE_MAX];
    int lead0 = 0, ok = billing_journal_parse((const char *)data, size, &e) == SVC_OK;
    int n;

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
