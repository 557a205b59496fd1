/* The charge journal's key and entry format (journal.h). */
#include "journal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/err.h"

#define NUMBER_DIGITS_MAX 18 /* below 2^63: no overflow to check */

int billing_journal_key(char *key, size_t cap, const char *lease_id)
{
    int n = snprintf(key, cap, "cw:lj:{%s}", lease_id);

    return n > 0 && (size_t)n < cap && lease_id[0] != '\0' ? SVC_OK : SVC_EINVAL;
}

/* A model name as the ledger takes it: 1 to 127 bytes, no control byte. */
static int model_ok(const char *m, size_t len)
{
    if (len == 0 || len >= BILLING_JOURNAL_MODEL_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)m[i] < 0x20 || m[i] == 0x7f)
            return 0;
    return 1;
}

/* A request id: 1 to BILLING_JOURNAL_ID_MAX bytes, no space, no control byte. */
static int id_ok(const char *id, size_t len)
{
    if (len == 0 || len > BILLING_JOURNAL_ID_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)id[i] <= 0x20 || id[i] == 0x7f)
            return 0;
    return 1;
}

int billing_journal_format(char *buf, size_t cap, const struct billing_journal_entry *e)
{
    int n;

    if (!model_ok(e->model, strlen(e->model)) || e->seq < 0 || e->prompt < 0 || e->completion < 0 ||
        (e->ended && !id_ok(e->request_id, strlen(e->request_id))))
        return -1;
    if (e->ended)
        n = snprintf(buf, cap, "e %lld %lld %lld %d %s %s", (long long)e->seq, (long long)e->prompt,
                     (long long)e->completion, e->estimated ? 1 : 0, e->request_id, e->model);
    else
        n = snprintf(buf, cap, "a %lld %lld %s", (long long)e->prompt, (long long)e->completion,
                     e->model);
    return n > 0 && (size_t)n < cap ? n : -1;
}

/* Reads a decimal number and the space after it from *p (before end). 1 when there was one. */
static int number(const char **p, const char *end, int64_t *out)
{
    const char *s = *p;
    int64_t v = 0;
    int digits = 0;

    while (s < end && *s >= '0' && *s <= '9' && digits < NUMBER_DIGITS_MAX) {
        v = v * 10 + (*s++ - '0');
        digits++;
    }
    if (digits == 0 || s >= end || *s != ' ')
        return 0;
    *out = v;
    *p = s + 1;
    return 1;
}

/* Reads a request id and the space after it from *p (before end) into e. 1 when there was one. */
static int request_id(const char **p, const char *end, struct billing_journal_entry *e)
{
    const char *sp = memchr(*p, ' ', (size_t)(end - *p));

    if (sp == NULL || !id_ok(*p, (size_t)(sp - *p)))
        return 0;
    memcpy(e->request_id, *p, (size_t)(sp - *p));
    e->request_id[sp - *p] = '\0';
    *p = sp + 1;
    return 1;
}

int billing_journal_parse(const char *value, size_t len, struct billing_journal_entry *e)
{
    const char *p = value + 2, *end = value + len;
    int64_t estimated = 0;

    memset(e, 0, sizeof(*e));
    if (len < 2 || (value[0] != 'a' && value[0] != 'e') || value[1] != ' ')
        return SVC_EINVAL;
    e->ended = value[0] == 'e';
    if ((e->ended && !number(&p, end, &e->seq)) || !number(&p, end, &e->prompt) ||
        !number(&p, end, &e->completion))
        return SVC_EINVAL;
    if (e->ended && (!number(&p, end, &estimated) || estimated > 1 || !request_id(&p, end, e)))
        return SVC_EINVAL;
    e->estimated = (int)estimated;
    if (!model_ok(p, (size_t)(end - p)))
        return SVC_EINVAL;
    memcpy(e->model, p, (size_t)(end - p));
    e->model[end - p] = '\0';
    return SVC_OK;
}

void billing_journal_clear(struct billing_journal *j)
{
    free(j->v);
    memset(j, 0, sizeof(*j));
}
