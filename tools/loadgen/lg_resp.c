/*
 * Incremental HTTP/1.x response parser: see lg_resp.h. Lenient where real servers differ
 * harmlessly (a bare LF ends a line; header names are matched case-insensitively) and strict
 * where a benchmark could be fooled (a bad Content-Length, a bad chunk size, a head too large).
 */
#include "lg_resp.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HEAD_INITIAL 1024u

void lg_resp_init(struct lg_resp *r, int no_body)
{
    r->state = LG_RESP_HEAD;
    r->status = 0;
    r->keep_alive = 0;
    r->chunked = 0;
    r->no_body = no_body;
    r->remaining = 0;
    r->body_bytes = 0;
    r->wire_bytes = 0;
    r->error = NULL;
    r->head_len = 0;
    r->line_len = 0;
    /* r->head and head_cap are kept: a reused parser reuses its buffer */
}

void lg_resp_deinit(struct lg_resp *r)
{
    free(r->head);
    r->head = NULL;
    r->head_cap = 0;
    r->head_len = 0;
}

static long fail(struct lg_resp *r, const char *why)
{
    r->state = LG_RESP_ERROR;
    r->error = why;
    return -1;
}

/* Index just past the blank line that ends the head, searching from `from`; 0 when absent. */
static size_t head_end(const char *b, size_t len, size_t from)
{
    for (size_t i = from; i < len; i++) {
        if (b[i] != '\n')
            continue;
        if (i + 1 < len && b[i + 1] == '\n')
            return i + 2;
        if (i + 2 < len && b[i + 1] == '\r' && b[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

/* Trims blanks on both sides of [*s, *s + *n). */
static void trim(const char **s, size_t *n)
{
    while (*n > 0 && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t' || (*s)[*n - 1] == '\r'))
        (*n)--;
}

/* 1 when the comma-separated list [v, v + n) contains token (case-insensitive). */
static int has_token(const char *v, size_t n, const char *token)
{
    size_t tl = strlen(token);

    while (n > 0) {
        const char *comma = memchr(v, ',', n);
        size_t el = comma != NULL ? (size_t)(comma - v) : n;
        const char *e = v;
        size_t en = el;

        trim(&e, &en);
        if (en == tl && strncasecmp(e, token, tl) == 0)
            return 1;
        if (comma == NULL)
            break;
        v = comma + 1;
        n -= el + 1;
    }
    return 0;
}

static int parse_u64(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;

    if (n == 0 || n > 18)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

/*
 * Parses a complete head [0, len). Returns 0 (final head: state set for the body), 1 (an
 * interim 1xx response: read another head) or -1 (malformed).
 */
static int parse_head(struct lg_resp *r, const char *h, size_t len)
{
    const char *p = h, *end = h + len, *eol;
    int minor, status, have_cl = 0, close = 0, ka = 0, chunked = 0;
    uint64_t cl = 0;

    eol = memchr(p, '\n', (size_t)(end - p));
    if (eol == NULL || eol - p < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ')
        return fail(r, "bad status line"), -1;
    if (p[7] != '0' && p[7] != '1')
        return fail(r, "unsupported HTTP version"), -1;
    minor = p[7] - '0';
    if (p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9' ||
        (eol - p > 12 && p[12] != ' ' && p[12] != '\r'))
        return fail(r, "bad status code"), -1;
    status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    p = eol + 1;

    while (p < end) {
        const char *colon, *name, *val;
        size_t nl, vl;

        eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL)
            eol = end;
        if (eol == p || (eol == p + 1 && *p == '\r'))
            break; /* the blank line */
        if (*p == ' ' || *p == '\t')
            return fail(r, "obsolete header line folding"), -1;
        colon = memchr(p, ':', (size_t)(eol - p));
        if (colon == NULL || colon == p)
            return fail(r, "bad header line"), -1;
        name = p;
        nl = (size_t)(colon - p);
        val = colon + 1;
        vl = (size_t)(eol - val);
        trim(&val, &vl);
        if (nl == 14 && strncasecmp(name, "content-length", 14) == 0) {
            uint64_t v;
            if (parse_u64(val, vl, &v) != 0 || (have_cl && v != cl))
                return fail(r, "bad Content-Length"), -1;
            cl = v;
            have_cl = 1;
        } else if (nl == 17 && strncasecmp(name, "transfer-encoding", 17) == 0) {
            if (!has_token(val, vl, "chunked"))
                return fail(r, "unsupported Transfer-Encoding"), -1;
            chunked = 1;
        } else if (nl == 10 && strncasecmp(name, "connection", 10) == 0) {
            close |= has_token(val, vl, "close");
            ka |= has_token(val, vl, "keep-alive");
        }
        p = eol + 1;
    }

    if (status >= 100 && status < 200 && status != 101)
        return 1;
    r->status = status;
    r->chunked = chunked;
    r->keep_alive = !close && (minor == 1 || ka);
    if (r->no_body || status == 204 || status == 304 || status == 101) {
        r->state = LG_RESP_DONE;
        if (status == 101)
            r->keep_alive = 0;
    } else if (chunked) {
        r->state = LG_RESP_CHUNK_SIZE;
    } else if (have_cl) {
        r->remaining = cl;
        r->state = cl > 0 ? LG_RESP_BODY_LEN : LG_RESP_DONE;
    } else {
        r->state = LG_RESP_BODY_EOF;
        r->keep_alive = 0;
    }
    return 0;
}

/* Head bytes: returns how many of data belong to the head, or -1. */
static long feed_head(struct lg_resp *r, const char *data, size_t len)
{
    size_t take, old = r->head_len, end;
    int rc;

    take = len;
    if (take > LG_RESP_HEAD_MAX - old)
        take = LG_RESP_HEAD_MAX - old;
    if (old + take > r->head_cap) {
        size_t cap = r->head_cap != 0 ? r->head_cap : HEAD_INITIAL;
        char *nb;
        while (cap < old + take)
            cap *= 2;
        if (cap > LG_RESP_HEAD_MAX)
            cap = LG_RESP_HEAD_MAX;
        nb = realloc(r->head, cap);
        if (nb == NULL)
            return fail(r, "out of memory");
        r->head = nb;
        r->head_cap = cap;
    }
    memcpy(r->head + old, data, take);
    r->head_len = old + take;
    end = head_end(r->head, r->head_len, old >= 2 ? old - 2 : 0);
    if (end == 0) {
        if (r->head_len >= LG_RESP_HEAD_MAX)
            return fail(r, "response head too large");
        return (long)take;
    }
    rc = parse_head(r, r->head, end);
    if (rc < 0)
        return -1;
    r->head_len = 0; /* the next head (after a 1xx) starts empty */
    return (long)(end - old);
}

/* Chunk-size and trailer lines: returns bytes consumed; *complete set when a line ended. */
static long feed_line(struct lg_resp *r, const char *data, size_t len, int *complete)
{
    const char *nl = memchr(data, '\n', len);
    size_t n = nl != NULL ? (size_t)(nl - data) : len;

    *complete = 0;
    if (r->line_len + n > LG_RESP_LINE_MAX)
        return fail(r, "chunk-size or trailer line too long");
    memcpy(r->line + r->line_len, data, n);
    r->line_len += n;
    if (nl == NULL)
        return (long)len;
    if (r->line_len > 0 && r->line[r->line_len - 1] == '\r')
        r->line_len--;
    *complete = 1;
    return (long)n + 1;
}

static int parse_chunk_size(struct lg_resp *r)
{
    uint64_t v = 0;
    size_t i = 0;

    for (; i < r->line_len; i++) {
        char c = r->line[i];
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            break;
        if (v >> 56)
            return fail(r, "chunk size too large"), -1;
        v = v * 16 + (uint64_t)d;
    }
    if (i == 0 || (i < r->line_len && r->line[i] != ';' && r->line[i] != ' ' &&
                   r->line[i] != '\t'))
        return fail(r, "bad chunk size"), -1;
    r->remaining = v;
    return 0;
}

long lg_resp_feed(struct lg_resp *r, const char *data, size_t len, lg_resp_body_fn on_body,
                  void *ud)
{
    size_t off = 0;

    while (off < len && r->state != LG_RESP_DONE) {
        const char *p = data + off;
        size_t n = len - off;
        long used = 0;
        int complete;

        switch (r->state) {
        case LG_RESP_HEAD:
            used = feed_head(r, p, n);
            break;
        case LG_RESP_BODY_LEN:
        case LG_RESP_CHUNK_DATA:
            used = (long)(n < r->remaining ? n : r->remaining);
            if (on_body != NULL)
                on_body(ud, p, (size_t)used);
            r->body_bytes += (uint64_t)used;
            r->remaining -= (uint64_t)used;
            if (r->remaining == 0)
                r->state = r->state == LG_RESP_BODY_LEN ? LG_RESP_DONE : LG_RESP_CHUNK_CRLF;
            break;
        case LG_RESP_CHUNK_CRLF:
            if (*p == '\r' && r->line_len == 0) {
                r->line_len = 1; /* seen CR */
                used = 1;
            } else if (*p == '\n') {
                r->line_len = 0;
                r->state = LG_RESP_CHUNK_SIZE;
                used = 1;
            } else {
                used = fail(r, "missing CRLF after chunk data");
            }
            break;
        case LG_RESP_CHUNK_SIZE:
            used = feed_line(r, p, n, &complete);
            if (used > 0 && complete) {
                if (parse_chunk_size(r) != 0)
                    return -1;
                r->line_len = 0;
                r->state = r->remaining > 0 ? LG_RESP_CHUNK_DATA : LG_RESP_TRAILER;
            }
            break;
        case LG_RESP_TRAILER:
            used = feed_line(r, p, n, &complete);
            if (used > 0 && complete) {
                if (r->line_len == 0)
                    r->state = LG_RESP_DONE;
                r->line_len = 0;
            }
            break;
        case LG_RESP_BODY_EOF:
            if (on_body != NULL)
                on_body(ud, p, n);
            r->body_bytes += n;
            used = (long)n;
            break;
        case LG_RESP_DONE:
        case LG_RESP_ERROR:
            return r->state == LG_RESP_ERROR ? -1 : (long)off;
        }
        if (used < 0)
            return -1;
        off += (size_t)used;
        r->wire_bytes += (uint64_t)used;
    }
    if (r->state == LG_RESP_DONE && r->head != NULL && r->head_cap > HEAD_INITIAL) {
        /* a rare large head: give the memory back rather than keep it per connection */
        lg_resp_deinit(r);
    }
    return (long)off;
}

int lg_resp_eof(struct lg_resp *r)
{
    if (r->state == LG_RESP_BODY_EOF)
        r->state = LG_RESP_DONE;
    return r->state == LG_RESP_DONE ? 0 : -1;
}
