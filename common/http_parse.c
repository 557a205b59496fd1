/*
 * The HTTP/1.x request parser (see http_parse.h). The head is parsed in place, like h2o's
 * picohttpparser: pointers into the caller's copy of the bytes, NULs written over the
 * separators, nothing allocated.
 */
#include "http_parse.h"

#include "svc/util.h"

#include <string.h>
#include <strings.h>

/* RFC 9110 5.6.2 tchar. */
static int is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* A byte a header value may hold: any but NUL (CR and LF end the line). RFC 9110 5.5 wants
 * visible ASCII, space, tab and obs-text, but other control bytes cannot split a message, and
 * refusing them here would answer 400 in plain text where the route's own checks answer in its
 * shape (abuse_battery.test sends such values through the ingress, which passes them). */
static int is_vchar(unsigned char c)
{
    return c != '\0';
}


size_t svc__http_head_len(const char *buf, size_t len, struct svc__http_scan *scan)
{
    if (!scan->started) { /* empty lines before the request line */
        while (scan->line < len && (buf[scan->line] == '\r' || buf[scan->line] == '\n'))
            scan->line++;
        if (scan->line == len)
            return 0;
        scan->started = 1;
    }
    for (;;) {
        const char *nl = memchr(buf + scan->line, '\n', len - scan->line);
        size_t next;

        if (nl == NULL)
            return 0; /* the line is not complete: resumed from its start */
        next = (size_t)(nl - buf) + 1;
        if (next < len && buf[next] == '\n')
            return next + 1;
        if (next + 1 < len && buf[next] == '\r' && buf[next + 1] == '\n')
            return next + 2;
        if (next == len || (next + 1 == len && buf[next] == '\r'))
            return 0; /* whether the next line is the blank one is not known yet */
        scan->line = next;
    }
}

unsigned svc__http_count_lines(const char *buf, size_t len)
{
    unsigned n = 0;

    for (const char *p = buf, *end = buf + len; (p = memchr(p, '\n', (size_t)(end - p))) != NULL;
         p++)
        n++;
    return n;
}

unsigned svc__http_count_args(const char *buf, size_t len)
{
    const char *nl;

    while (len > 0 && (*buf == '\r' || *buf == '\n')) { /* empty lines before the request */
        buf++;
        len--;
    }
    nl = memchr(buf, '\n', len);
    const char *end = nl != NULL ? nl : buf + len;
    const char *q = memchr(buf, '?', (size_t)(end - buf));
    unsigned n = 1;

    if (q == NULL)
        return 0;
    for (const char *p = q; p < end && *p != ' '; p++)
        n += *p == '&';
    return n;
}

/* Decodes %XX (and '+' as a space when plus) in the NUL-terminated s, in place. Returns 0, or -1
 * when the result would hold a NUL. A '%' not followed by two hex digits stays as it is. */
static int decode(char *s, int plus)
{
    char *w = s;

    for (char *r = s; *r != '\0'; r++) {
        int hi, lo;
        if (*r == '%' && (hi = svc_util_hex_value((unsigned char)r[1])) >= 0 &&
            (lo = svc_util_hex_value((unsigned char)r[2])) >= 0) {
            if (hi == 0 && lo == 0)
                return -1;
            *w++ = (char)(hi * 16 + lo);
            r += 2;
        } else {
            *w++ = plus && *r == '+' ? ' ' : *r;
        }
    }
    *w = '\0';
    return 0;
}

/* Splits the query q (NUL-terminated, without '?') into h->args. */
static int parse_query(char *q, struct svc__http_head *h, struct svc__http_field *args,
                       unsigned max_args)
{
    unsigned segments = 0;

    while (*q != '\0') {
        char *amp = strchr(q, '&');
        char *eq;

        if (amp != NULL)
            *amp = '\0';
        /* every segment counts against the limit, an empty one too ("a&&b"), as
         * svc__http_count_args counts them */
        if (++segments > max_args)
            return 414;
        if (*q != '\0') { /* the empty argument is skipped */
            eq = strchr(q, '=');
            if (eq != NULL)
                *eq = '\0';
            if (decode(q, 1) != 0 || (eq != NULL && decode(eq + 1, 1) != 0))
                return 400;
            args[h->nargs].name = q;
            args[h->nargs].value = eq != NULL ? eq + 1 : NULL;
            h->nargs++;
        }
        if (amp == NULL)
            break;
        q = amp + 1;
    }
    return 0;
}

/* The end of the line starting at p (the '\n', or the '\r' before it) within end; sets *next to
 * the next line. NULL when the line holds a bare CR. */
static char *line_end(char *p, char *end, char **next)
{
    char *nl = memchr(p, '\n', (size_t)(end - p));
    char *e;

    if (nl == NULL)
        return NULL;
    *next = nl + 1;
    e = nl > p && nl[-1] == '\r' ? nl - 1 : nl;
    return memchr(p, '\r', (size_t)(e - p)) == NULL ? e : NULL;
}

static int parse_request_line(char *p, char *e, struct svc__http_head *h, char **query)
{
    char *sp1, *sp2;

    sp1 = memchr(p, ' ', (size_t)(e - p));
    if (sp1 == NULL || sp1 == p)
        return 400;
    for (char *m = p; m < sp1; m++)
        if (!is_tchar((unsigned char)*m))
            return 400;
    sp2 = memchr(sp1 + 1, ' ', (size_t)(e - sp1 - 1));
    if (sp2 == NULL || sp2 == sp1 + 1 || sp1[1] != '/')
        return 400;
    for (char *t = sp1 + 1; t < sp2; t++)
        if ((unsigned char)*t <= 0x20 || *t == 0x7f)
            return 400;
    if (e - sp2 - 1 != 8 || memcmp(sp2 + 1, "HTTP/", 5) != 0 || sp2[6] < '0' || sp2[6] > '9' ||
        sp2[7] != '.' || sp2[8] < '0' || sp2[8] > '9')
        return 400;
    if (sp2[6] != '1' || (sp2[8] != '0' && sp2[8] != '1'))
        return 505;
    h->minor = sp2[8] - '0';
    *sp1 = '\0';
    *sp2 = '\0';
    h->method = p;
    *query = strchr(sp1 + 1, '?');
    if (*query != NULL)
        *(*query)++ = '\0';
    if (decode(sp1 + 1, 0) != 0)
        return 400;
    h->path = sp1 + 1;
    return 0;
}

/* Parses the header lines from p up to the blank line (or end) into headers[], max_headers of
 * them at most. Returns 0, 400 (malformed) or 431 (too many). */
static int parse_fields(char *p, char *end, struct svc__http_field *headers, unsigned max_headers,
                        unsigned *nheaders)
{
    char *next, *e;

    for (; p < end; p = next) {
        char *colon, *v, *ve;

        e = line_end(p, end, &next);
        if (e == NULL)
            return 400;
        if (e == p) /* the blank line */
            break;
        if (*p == ' ' || *p == '\t') /* obs-fold */
            return 400;
        colon = memchr(p, ':', (size_t)(e - p));
        if (colon == NULL || colon == p)
            return 400;
        for (char *n = p; n < colon; n++)
            if (!is_tchar((unsigned char)*n))
                return 400;
        for (v = colon + 1; v < e && (*v == ' ' || *v == '\t'); v++)
            ;
        for (ve = e; ve > v && (ve[-1] == ' ' || ve[-1] == '\t'); ve--)
            ;
        for (char *c = v; c < ve; c++)
            if (!is_vchar((unsigned char)*c))
                return 400;
        if (*nheaders == max_headers)
            return 431;
        *colon = '\0';
        *ve = '\0';
        headers[*nheaders].name = p;
        headers[*nheaders].value = v;
        (*nheaders)++;
    }
    return 0;
}

int svc__http_parse_head(char *buf, size_t len, struct svc__http_head *h,
                         struct svc__http_field *headers, unsigned max_headers,
                         struct svc__http_field *args, unsigned max_args)
{
    char *p = buf, *end = buf + len, *next, *e, *query = NULL;
    int rc;

    memset(h, 0, sizeof(*h));
    h->headers = headers;
    h->args = args;
    while (p < end && (*p == '\r' || *p == '\n'))
        p++;
    e = line_end(p, end, &next);
    if (e == NULL)
        return 400;
    rc = parse_request_line(p, e, h, &query);
    if (rc == 0)
        rc = parse_fields(next, end, headers, max_headers, &h->nheaders);
    if (rc != 0)
        return rc;
    return query != NULL ? parse_query(query, h, args, max_args) : 0;
}

/* "HTTP/1.x SP 3DIGIT [SP reason]" (RFC 9112 4; the reason may be empty, and its space too, as
 * curl and nginx accept). */
static int parse_status_line(const char *p, const char *e, struct svc__http_response *r)
{
    if (e - p < 12 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') || p[8] != ' ')
        return 400;
    for (int i = 9; i < 12; i++)
        if (p[i] < '0' || p[i] > '9')
            return 400;
    if (e - p > 12 && p[12] != ' ')
        return 400;
    r->minor = p[7] - '0';
    r->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    return r->status >= 100 ? 0 : 400;
}

int svc__http_parse_response_head(char *buf, size_t len, struct svc__http_response *r,
                                  struct svc__http_field *headers, unsigned max_headers)
{
    char *p = buf, *end = buf + len, *next, *e;
    int rc;

    memset(r, 0, sizeof(*r));
    r->headers = headers;
    while (p < end && (*p == '\r' || *p == '\n'))
        p++;
    e = line_end(p, end, &next);
    if (e == NULL)
        return 400;
    rc = parse_status_line(p, e, r);
    return rc != 0 ? rc : parse_fields(next, end, headers, max_headers, &r->nheaders);
}

/* Whether the comma-separated list value (a Connection header) names token, in any case. */
int svc__http_has_token(const char *value, const char *token)
{
    size_t n = strlen(token);

    for (const char *p = value; p != NULL && *p != '\0';) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (strncasecmp(p, token, n) == 0) {
            const char *e = p + n;
            while (*e == ' ' || *e == '\t')
                e++;
            if (*e == ',' || *e == '\0')
                return 1;
        }
        p = strchr(p, ',');
    }
    return 0;
}

int svc__http_keeps_alive(int minor, const char *connection)
{
    if (minor >= 1)
        return connection == NULL || !svc__http_has_token(connection, "close");
    return connection != NULL && svc__http_has_token(connection, "keep-alive");
}

/* ---- chunked bodies ---- */

enum {
    CH_SIZE = 0, /* hex digits of a chunk's size */
    CH_EXT,      /* after the size: extensions up to the end of the line */
    CH_DATA,     /* left bytes of data */
    CH_DATA_END, /* the CRLF after the data */
    CH_DATA_LF,  /* its LF after a CR */
    CH_TRAILER,  /* a trailer line, or the blank line that ends the body */
    CH_TRAILER_LINE,
    CH_END_LF,   /* the LF of the final blank line after a CR */
    CH_DONE,
};

#define CH_SIZE_DIGITS 15        /* a chunk below 2^60 bytes */
#define CH_LINE_MAX 4096         /* an extension or trailer line */
#define CH_TRAILERS_MAX 16384    /* all trailer lines */

long svc__http_chunked_decode(struct svc__http_chunked *c, char *buf, size_t len, size_t *used,
                              int *done)
{
    size_t r = 0, w = 0;

    *done = 0;
    while (r < len && c->state != CH_DONE) {
        unsigned char ch = (unsigned char)buf[r];

        switch (c->state) {
        case CH_SIZE: {
            int v = svc_util_hex_value(ch);
            if (v >= 0) {
                if (++c->digits > CH_SIZE_DIGITS)
                    return -1;
                c->left = c->left * 16 + (unsigned)v;
                r++;
                break;
            }
            if (c->digits == 0)
                return -1;
            if (ch != ';' && ch != '\r' && ch != '\n' && ch != ' ' && ch != '\t')
                return -1;
            c->state = CH_EXT;
            c->linelen = 0;
            break;
        }
        case CH_EXT:
            r++;
            if (ch == '\n') {
                c->digits = 0;
                c->state = c->left > 0 ? CH_DATA : CH_TRAILER;
            } else if (++c->linelen > CH_LINE_MAX || (ch < 0x20 && ch != '\t' && ch != '\r')) {
                return -1;
            }
            break;
        case CH_DATA: {
            size_t n = len - r < c->left ? len - r : (size_t)c->left;
            memmove(buf + w, buf + r, n);
            w += n;
            r += n;
            c->left -= n;
            if (c->left == 0)
                c->state = CH_DATA_END;
            break;
        }
        case CH_DATA_END:
            r++;
            if (ch == '\r')
                c->state = CH_DATA_LF;
            else if (ch == '\n')
                c->state = CH_SIZE;
            else
                return -1;
            break;
        case CH_DATA_LF:
            r++;
            if (ch != '\n')
                return -1;
            c->state = CH_SIZE;
            break;
        case CH_TRAILER:
            r++;
            if (ch == '\n') {
                c->state = CH_DONE;
            } else if (ch == '\r') {
                c->state = CH_END_LF;
            } else {
                c->linelen = 1;
                c->trailers++;
                c->state = CH_TRAILER_LINE;
            }
            break;
        case CH_TRAILER_LINE:
            r++;
            if (++c->trailers > CH_TRAILERS_MAX || ++c->linelen > CH_LINE_MAX)
                return -1;
            if (ch == '\n')
                c->state = CH_TRAILER;
            break;
        case CH_END_LF:
            r++;
            if (ch != '\n')
                return -1;
            c->state = CH_DONE;
            break;
        default:
            return -1;
        }
    }
    *used = r;
    *done = c->state == CH_DONE;
    return (long)w;
}
