/*
 * Fuzz target for the HTTP/1.x parser of common/http_parse.c: the request head (the server), the
 * response head (the client of common/fetch_h1.c), and the chunked body coding (both).
 *
 * Input: byte 0 seeds the piece sizes; the rest is what a client sends. Checked:
 *  - svc__http_head_len is 0 for every prefix shorter than the head and the head's length for
 *    every longer one (a head found early or late would split requests differently as the
 *    bytes arrive in other pieces), whether each prefix is scanned afresh or the scan resumes
 *    from where the shorter prefix left it;
 *  - svc__http_parse_head answers 0 or one of 400, 414, 431, 505; on 0 the method is a token,
 *    the path starts with '/', every header name is a non-empty token, no value has a NUL or a
 *    line end or leading or trailing blanks, and every string lies inside the buffer;
 *  - svc__http_parse_response_head on the same head answers 0, 400 or 431; on 0 the status is
 *    100-999, the minor version 0 or 1, and the headers are as above;
 *  - the bytes after the head, decoded as a chunked body at once, byte by byte and in
 *    pseudo-random pieces, give the same data, the same end and the same error (the decoder
 *    keeps its state between pieces as the server feeds it).
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_INPUT 8192

static int is_token(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("!#$%&'*+-.^_`|~", c) != NULL))
            return 0;
    }
    return 1;
}

static void check_inside(const char *s, const char *buf, size_t len)
{
    if (s < buf || s > buf + len || memchr(s, '\0', (size_t)(buf + len + 1 - s)) == NULL)
        abort();
}

/* The header fields h[0..n) of a parse of buf[0..len): names tokens, values without NUL, line
 * end or surrounding blanks, every string inside the buffer. */
static void check_fields(const struct svc__http_field *h, unsigned n, const char *buf, size_t len)
{
    for (unsigned i = 0; i < n; i++) {
        const char *v = h[i].value;
        size_t vl;
        check_inside(h[i].name, buf, len);
        check_inside(v, buf, len);
        vl = strlen(v);
        if (!is_token(h[i].name) || strpbrk(v, "\r\n") != NULL ||
            (vl > 0 && (v[0] == ' ' || v[0] == '\t' || v[vl - 1] == ' ' || v[vl - 1] == '\t')))
            abort();
    }
}

static void check_head(const char *in, size_t len)
{
    char *copy = malloc(len + 1);
    unsigned nlines = svc__http_count_lines(in, len), nargs = svc__http_count_args(in, len);
    struct svc__http_field *hdrs = malloc((nlines + 1) * sizeof(*hdrs));
    struct svc__http_field *args = malloc((nargs + 1) * sizeof(*args));
    struct svc__http_head h;
    int rc;

    if (copy == NULL || hdrs == NULL || args == NULL)
        abort();
    memcpy(copy, in, len);
    copy[len] = '\0';
    rc = svc__http_parse_head(copy, len, &h, hdrs, nlines, args, nargs);
    if (rc != 0 && rc != 400 && rc != 414 && rc != 431 && rc != 505)
        abort();
    if (rc == 0) {
        check_inside(h.method, copy, len);
        check_inside(h.path, copy, len);
        if (!is_token(h.method) || h.path[0] != '/' || (h.minor != 0 && h.minor != 1) ||
            h.nheaders > nlines || h.nargs > nargs)
            abort();
        check_fields(h.headers, h.nheaders, copy, len);
        for (unsigned i = 0; i < h.nargs; i++) {
            check_inside(h.args[i].name, copy, len);
            if (h.args[i].name[0] == '\0' && h.args[i].value == NULL)
                abort(); /* "a&&b": an empty argument is skipped, "=v" has an empty key */
            if (h.args[i].value != NULL)
                check_inside(h.args[i].value, copy, len);
        }
    }
    free(copy);
    free(hdrs);
    free(args);
}

static void check_response_head(const char *in, size_t len)
{
    char *copy = malloc(len + 1);
    unsigned nlines = svc__http_count_lines(in, len);
    struct svc__http_field *hdrs = malloc((nlines + 1) * sizeof(*hdrs));
    struct svc__http_response r;
    int rc;

    if (copy == NULL || hdrs == NULL)
        abort();
    memcpy(copy, in, len);
    copy[len] = '\0';
    rc = svc__http_parse_response_head(copy, len, &r, hdrs, nlines);
    if (rc != 0 && rc != 400 && rc != 431)
        abort();
    if (rc == 0) {
        if (r.status < 100 || r.status > 999 || (r.minor != 0 && r.minor != 1) ||
            r.nheaders > nlines)
            abort();
        check_fields(r.headers, r.nheaders, copy, len);
    }
    free(copy);
    free(hdrs);
}

struct decoded {
    char out[MAX_INPUT];
    size_t out_len, used;
    int done, error;
};

/* Feeds body to a fresh decoder in pieces: mode 0 at once, 1 byte by byte, 2 pseudo-random. As
 * the server does, the bytes a call did not consume are kept and given again with the next. */
static void decode(const char *body, size_t len, int mode, uint32_t seed, struct decoded *d)
{
    struct svc__http_chunked c;
    char pending[MAX_INPUT];
    size_t have = 0, off = 0;

    memset(&c, 0, sizeof(c));
    memset(d, 0, sizeof(*d));
    while (off < len && !d->done && !d->error) {
        size_t piece = len - off, used;
        long n;
        if (mode == 1) {
            piece = 1;
        } else if (mode == 2) {
            seed = seed * 1103515245u + 12345u;
            piece = 1 + (seed >> 16) % 17;
            if (piece > len - off)
                piece = len - off;
        }
        memcpy(pending + have, body + off, piece);
        have += piece;
        off += piece;
        n = svc__http_chunked_decode(&c, pending, have, &used, &d->done);
        if (n < 0) {
            d->error = 1;
            break;
        }
        if ((size_t)n > used || used > have)
            abort();
        memcpy(d->out + d->out_len, pending, (size_t)n);
        d->out_len += (size_t)n;
        memmove(pending, pending + used, have - used);
        have -= used;
        d->used += used;
    }
    if (!d->error && !d->done && have > 0)
        abort(); /* an unfinished body leaves nothing unconsumed */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in;
    size_t len, head;
    uint32_t seed;
    static struct decoded a, b, c;

    if (size < 1 || size > MAX_INPUT)
        return 0;
    seed = data[0];
    in = (const char *)data + 1;
    len = size - 1;

    {
        struct svc__http_scan fresh = {0}, grown = {0};
        head = svc__http_head_len(in, len, &fresh);
        if (head > len)
            abort();
        /* each prefix scanned afresh, and the same prefixes one after the other with the scan
         * resumed as the server does when bytes arrive (stopping at the first head found) */
        for (size_t k = 0; k <= len; k++) {
            struct svc__http_scan once = {0};
            size_t h = svc__http_head_len(in, k, &once);
            size_t g = svc__http_head_len(in, k, &grown);
            if (head == 0 ? h != 0 : (k < head ? h != 0 : h != head))
                abort();
            if (g != h)
                abort();
            if (g != 0)
                break;
        }
    }
    check_head(in, head > 0 ? head : len);
    check_response_head(in, head > 0 ? head : len);

    decode(in + head, len - head, 0, seed, &a);
    decode(in + head, len - head, 1, seed, &b);
    decode(in + head, len - head, 2, seed, &c);
    if (a.error != b.error || a.error != c.error || a.done != b.done || a.done != c.done)
        abort();
    if (!a.error && (a.out_len != b.out_len || a.out_len != c.out_len ||
                     memcmp(a.out, b.out, a.out_len) != 0 ||
                     memcmp(a.out, c.out, a.out_len) != 0 || a.used != b.used || a.used != c.used))
        abort();
    return 0;
}
