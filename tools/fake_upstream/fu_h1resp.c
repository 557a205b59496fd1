#include "fu_h1resp.h"

#include <string.h>

void fu_h1resp_init(struct fu_h1resp *p, int no_body)
{
    /* everything but the two buffers, whose lengths are reset here */
    memset(p, 0, offsetof(struct fu_h1resp, head));
    p->line_len = 0;
    p->state = FU_H1R_HEAD;
    /* remaining doubles as the "no body" flag until the head is parsed */
    p->remaining = no_body ? 1 : 0;
}

static int fail(struct fu_h1resp *p)
{
    p->state = FU_H1R_ERROR;
    return FU_H1RESP_EINVAL;
}

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static int is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* Parses "digits" (all of s) into *out; 0 or -1. */
static int parse_dec(const char *s, unsigned long long *out)
{
    unsigned long long v = 0;

    if (*s == '\0')
        return -1;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9' || v > (~0ull - 9) / 10)
            return -1;
        v = v * 10 + (unsigned)(*s - '0');
    }
    *out = v;
    return 0;
}

/* head[0..head_len) holds the head up to and including the blank line. */
static int parse_head(struct fu_h1resp *p)
{
    char *s = p->head, *end = p->head + p->head_len;
    int chunked = 0, have_len = 0, no_body = p->remaining != 0;
    unsigned long long clen = 0;
    char *eol = memchr(s, '\n', (size_t)(end - s));

    /* status line: HTTP/1.x SSS[ reason] */
    if (eol == NULL || eol - s < 12 || memcmp(s, "HTTP/1.", 7) != 0 || (s[7] != '0' && s[7] != '1') ||
        s[8] != ' ')
        return fail(p);
    for (int i = 9; i < 12; i++)
        if (s[i] < '0' || s[i] > '9')
            return fail(p);
    p->status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    if (p->status < 100 || (s[12] != ' ' && s[12] != '\r' && s[12] != '\n'))
        return fail(p);
    s = eol + 1;
    while (s < end) {
        char *colon, *v, *ve;

        eol = memchr(s, '\n', (size_t)(end - s));
        if (eol == NULL)
            return fail(p);
        ve = eol;
        if (ve > s && ve[-1] == '\r')
            ve--;
        if (ve == s) /* the blank line */
            break;
        if (is_blank(*s) || p->n_headers == FU_H1RESP_MAX_HEADERS)
            return fail(p); /* obsolete folding, or too many */
        colon = memchr(s, ':', (size_t)(ve - s));
        if (colon == NULL || colon == s)
            return fail(p);
        for (char *c = s; c < colon; c++) {
            if (is_blank(*c) || (unsigned char)*c < 0x21 || (unsigned char)*c > 0x7e)
                return fail(p);
            *c = lower(*c);
        }
        *colon = '\0';
        v = colon + 1;
        while (v < ve && is_blank(*v))
            v++;
        while (ve > v && is_blank(ve[-1]))
            ve--;
        *ve = '\0';
        for (char *c = v; c < ve; c++) /* no NUL, CR or other controls but tab */
            if (((unsigned char)*c < 0x20 && *c != '\t') || *c == 0x7f)
                return fail(p);
        p->headers[p->n_headers].name = s;
        p->headers[p->n_headers].value = v;
        p->n_headers++;
        if (strcmp(s, "transfer-encoding") == 0) {
            if (strcmp(v, "chunked") != 0)
                return fail(p);
            chunked = 1;
        } else if (strcmp(s, "content-length") == 0) {
            unsigned long long n;
            if (parse_dec(v, &n) != 0 || (have_len && n != clen))
                return fail(p);
            have_len = 1;
            clen = n;
        }
        s = eol + 1;
    }
    if (chunked && have_len)
        return fail(p);
    p->head_done = 1;
    p->remaining = 0;
    if (no_body || p->status < 200 || p->status == 204 || p->status == 304) {
        p->state = FU_H1R_DONE;
    } else if (chunked) {
        p->state = FU_H1R_CHUNK_SIZE;
    } else if (have_len) {
        p->remaining = clen;
        p->state = clen > 0 ? FU_H1R_BODY_LENGTH : FU_H1R_DONE;
    } else {
        p->state = FU_H1R_BODY_CLOSE;
    }
    return 0;
}

/* Takes bytes into p->line until '\n'; returns 1 when a line is complete (without its CRLF,
 * NUL-terminated), 0 when more is needed, -1 when too long. *used counts the bytes taken. */
static int take_line(struct fu_h1resp *p, const char *in, size_t len, size_t *used)
{
    const char *nl = memchr(in, '\n', len);
    size_t n = nl != NULL ? (size_t)(nl - in) : len;

    if (p->line_len + n >= FU_H1RESP_LINE_MAX)
        return -1;
    memcpy(p->line + p->line_len, in, n);
    p->line_len += n;
    if (nl == NULL) {
        *used = len;
        return 0;
    }
    *used = n + 1;
    if (p->line_len > 0 && p->line[p->line_len - 1] == '\r')
        p->line_len--;
    p->line[p->line_len] = '\0';
    return 1;
}

static int chunk_size(struct fu_h1resp *p)
{
    unsigned long long v = 0;
    const char *s = p->line;
    int digits = 0;

    for (; *s != '\0'; s++, digits++) {
        int d;
        if (*s >= '0' && *s <= '9')
            d = *s - '0';
        else if (lower(*s) >= 'a' && lower(*s) <= 'f')
            d = lower(*s) - 'a' + 10;
        else
            break;
        if (v >> 60)
            return -1;
        v = v * 16 + (unsigned)d;
    }
    while (is_blank(*s))
        s++;
    if (digits == 0 || (*s != '\0' && *s != ';'))
        return -1;
    p->remaining = v;
    return 0;
}

int fu_h1resp_feed(struct fu_h1resp *p, const char *in, size_t len, fu_h1resp_body_fn on_body,
                   void *ud)
{
    while (len > 0) {
        size_t used = 0;
        int r;

        switch (p->state) {
        case FU_H1R_HEAD: {
            /* copy byte by byte up to the blank line; the head is small and this runs once */
            size_t room = FU_H1RESP_HEAD_MAX - p->head_len;
            size_t n = 0;
            int end = 0;
            while (n < len && n < room) {
                char c = in[n++];
                p->head[p->head_len++] = c;
                if (c == '\n' && p->head_len >= 2 &&
                    (p->head[p->head_len - 2] == '\n' ||
                     (p->head_len >= 3 && p->head[p->head_len - 2] == '\r' &&
                      p->head[p->head_len - 3] == '\n'))) {
                    end = 1;
                    break;
                }
            }
            if (!end && p->head_len == FU_H1RESP_HEAD_MAX)
                return fail(p);
            used = n;
            if (end) {
                p->head[p->head_len] = '\0';
                if (parse_head(p) != 0)
                    return FU_H1RESP_EINVAL;
            }
            break;
        }
        case FU_H1R_BODY_LENGTH:
        case FU_H1R_CHUNK_DATA:
        case FU_H1R_BODY_CLOSE:
            used = len;
            if (p->state != FU_H1R_BODY_CLOSE && used > p->remaining)
                used = (size_t)p->remaining;
            if (on_body != NULL && on_body(ud, in, used) != 0)
                return FU_H1RESP_ESTOP;
            if (p->state != FU_H1R_BODY_CLOSE) {
                p->remaining -= used;
                if (p->remaining == 0)
                    p->state = p->state == FU_H1R_BODY_LENGTH ? FU_H1R_DONE : FU_H1R_CHUNK_CRLF;
            }
            break;
        case FU_H1R_CHUNK_SIZE:
        case FU_H1R_CHUNK_CRLF:
        case FU_H1R_TRAILERS:
            r = take_line(p, in, len, &used);
            if (r < 0)
                return fail(p);
            if (r == 1) {
                p->line_len = 0;
                if (p->state == FU_H1R_CHUNK_CRLF) {
                    if (p->line[0] != '\0')
                        return fail(p);
                    p->state = FU_H1R_CHUNK_SIZE;
                } else if (p->state == FU_H1R_TRAILERS) {
                    if (p->line[0] == '\0')
                        p->state = FU_H1R_DONE;
                } else if (chunk_size(p) != 0) {
                    return fail(p);
                } else {
                    p->state = p->remaining == 0 ? FU_H1R_TRAILERS : FU_H1R_CHUNK_DATA;
                }
            }
            break;
        case FU_H1R_DONE:
            return 0;
        case FU_H1R_ERROR:
            return FU_H1RESP_EINVAL;
        }
        in += used;
        len -= used;
    }
    return 0;
}

int fu_h1resp_eof(struct fu_h1resp *p)
{
    if (p->state == FU_H1R_DONE || p->state == FU_H1R_BODY_CLOSE) {
        p->state = FU_H1R_DONE;
        return 0;
    }
    return fail(p);
}
