/* The charge journal's key and entry format (journal.h). */
#include "journal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/err.h"
#include "svc/util.h"

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

/* Numbers are written with svc_util_put_u64: the journal is written twice per request on the
 * proxy's path, where snprintf cost several thousand instructions an entry. */

static size_t put_str(char *p, const char *s, size_t len)
{
    memcpy(p, s, len);
    return len;
}

int billing_journal_format(char *buf, size_t cap, const struct billing_journal_entry *e)
{
    size_t mlen = strlen(e->model), ilen = e->ended ? strlen(e->request_id) : 0, n = 0;

    if (!model_ok(e->model, mlen) || e->end < 0 || e->prompt < 0 || e->completion < 0 ||
        (e->ended && !id_ok(e->request_id, ilen)))
        return -1;
    if (cap < 2 + 4 * 21 + ilen + 1 + mlen + 1)
        return -1;
    buf[n++] = e->ended ? 'e' : 'a';
    buf[n++] = ' ';
    if (e->ended) {
        n += svc_util_put_u64(buf + n, (uint64_t)e->end);
        buf[n++] = ' ';
    }
    n += svc_util_put_u64(buf + n, (uint64_t)e->prompt);
    buf[n++] = ' ';
    n += svc_util_put_u64(buf + n, (uint64_t)e->completion);
    buf[n++] = ' ';
    if (e->ended) {
        buf[n++] = e->estimated ? '1' : '0';
        buf[n++] = ' ';
        n += put_str(buf + n, e->request_id, ilen);
        buf[n++] = ' ';
    }
    n += put_str(buf + n, e->model, mlen);
    buf[n] = '\0';
    return (int)n;
}

int billing_journal_format_batch(char *buf, int64_t seq, int64_t end)
{
    size_t n = svc_util_put_u64(buf, (uint64_t)(seq > 0 ? seq : 0));

    buf[n++] = ' ';
    n += svc_util_put_u64(buf + n, (uint64_t)(end > 0 ? end : 0));
    buf[n] = '\0';
    return (int)n;
}

int billing_journal_field(char *buf, uint64_t jid)
{
    size_t n = 1;

    buf[0] = 't';
    n += svc_util_put_u64(buf + 1, jid);
    buf[n] = '\0';
    return (int)n;
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
    if ((e->ended && !number(&p, end, &e->end)) || !number(&p, end, &e->prompt) ||
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

int billing_journal_parse_batch(const char *value, size_t len, int64_t *seq, int64_t *end)
{
    const char *p = value, *stop = value + len;
    int64_t last = 0;
    size_t digits = 0;

    /* "<seq> <end>": the number reader wants a space after each number */
    if (!number(&p, stop, seq))
        return SVC_EINVAL;
    while (p < stop && *p >= '0' && *p <= '9' && digits < NUMBER_DIGITS_MAX) {
        last = last * 10 + (*p++ - '0');
        digits++;
    }
    if (digits == 0 || p != stop)
        return SVC_EINVAL;
    *end = last;
    return SVC_OK;
}

int billing_journal_applied(const struct billing_journal *j, const struct billing_journal_entry *e,
                            int64_t applied_seq)
{
    return e->ended && j->batch_seq > 0 && j->batch_seq <= applied_seq && e->end <= j->batch_end;
}

void billing_journal_clear(struct billing_journal *j)
{
    free(j->v);
    memset(j, 0, sizeof(*j));
}
