#include "svc/sse.h"

#include <string.h>

void svc_sse_init(struct svc_sse *s, size_t max_event)
{
    svc_buf_init(&s->line, max_event);
    svc_buf_init(&s->data, max_event);
    s->has_data = 0;
    s->last_was_cr = 0;
    s->bom_checked = 0;
}

void svc_sse_deinit(struct svc_sse *s)
{
    svc_buf_deinit(&s->line);
    svc_buf_deinit(&s->data);
}

/* Handles one complete line l[0..n), without its terminator. */
static int sse_line(struct svc_sse *s, const char *l, size_t n, svc_sse_event_cb fn, void *ud)
{
    int rc = 0;

    if (n == 0) { /* blank line: dispatch */
        if (s->has_data)
            rc = fn(ud, s->data.data != NULL ? s->data.data : "", s->data.len);
        svc_buf_reset(&s->data);
        s->has_data = 0;
        return rc;
    }
    /* "data" alone is the field with an empty value (a line without a colon names a field) */
    if ((n == 4 && memcmp(l, "data", 4) == 0) || (n >= 5 && memcmp(l, "data:", 5) == 0)) {
        const char *v = l + (n == 4 ? 4 : 5);
        size_t vn = n == 4 ? 0 : n - 5;
        if (vn > 0 && v[0] == ' ') {
            v++;
            vn--;
        }
        if (s->has_data && (rc = svc_buf_append(&s->data, "\n", 1)) != 0)
            return rc;
        if ((rc = svc_buf_append(&s->data, v, vn)) != 0)
            return rc;
        s->has_data = 1;
    }
    /* comments and other fields are ignored */
    return 0;
}

/* The index of the first CR or LF in bytes[i..len), or len: two memchr, not a test per byte (an
 * event is a few hundred bytes, read on every upstream chunk). */
static size_t line_end(const char *bytes, size_t i, size_t len)
{
    const char *lf = memchr(bytes + i, '\n', len - i);
    size_t j = lf != NULL ? (size_t)(lf - bytes) : len;
    const char *cr = memchr(bytes + i, '\r', j - i);

    return cr != NULL ? (size_t)(cr - bytes) : j;
}

int svc_sse_feed(struct svc_sse *s, const char *bytes, size_t len, svc_sse_event_cb cb, void *ctx)
{
    size_t i = 0;

    /* A UTF-8 byte-order mark at the very start of the stream is skipped. Bytes that may be its
     * beginning wait in s->line until it is decided; on a mismatch they are ordinary content. */
    while (!s->bom_checked && i < len) {
        static const unsigned char bom[3] = {0xEF, 0xBB, 0xBF};
        size_t have = s->line.len;
        int rc;

        if ((unsigned char)bytes[i] != bom[have]) {
            s->bom_checked = 1;
            break;
        }
        if ((rc = svc_buf_append(&s->line, bytes + i, 1)) != 0)
            return rc;
        i++;
        if (have + 1 == 3) {
            svc_buf_reset(&s->line);
            s->bom_checked = 1;
        }
    }
    while (i < len) {
        char c = bytes[i];
        int rc;

        if (c == '\n' && s->last_was_cr) { /* the LF of a CRLF */
            s->last_was_cr = 0;
            i++;
            continue;
        }
        s->last_was_cr = 0;
        if (c == '\r' || c == '\n') {
            s->last_was_cr = c == '\r';
            rc = sse_line(s, s->line.data != NULL ? s->line.data : "", s->line.len, cb, ctx);
            svc_buf_reset(&s->line);
            if (rc != 0)
                return rc;
            i++;
            continue;
        }
        {
            size_t j = line_end(bytes, i, len);
            if (j < len && s->line.len == 0) {
                /* The whole line is in this piece: read it in place rather than copy it first.
                 * It is bounded as if it had been copied, so that how the stream is cut into
                 * pieces changes nothing (tests/fuzz/fuzz_sse.c). */
                if (j - i > s->line.max)
                    return SVC_ETOOLARGE;
                s->last_was_cr = bytes[j] == '\r';
                if ((rc = sse_line(s, bytes + i, j - i, cb, ctx)) != 0)
                    return rc;
                i = j + 1;
                continue;
            }
            /* the line goes on in the next piece: keep the run of ordinary bytes */
            rc = svc_buf_append(&s->line, bytes + i, j - i);
            if (rc != 0)
                return rc;
            i = j;
        }
    }
    return 0;
}
