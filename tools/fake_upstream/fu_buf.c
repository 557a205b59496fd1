/* fu_buf: bounded growable byte buffer. See fu_buf.h. */
#include "fu_buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Smallest allocation; most buffers hold one HTTP head or one SSE event. */
#define FU_BUF_MIN_CAP 256

void fu_buf_init(struct fu_buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

void fu_buf_deinit(struct fu_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

int fu_buf_reserve(struct fu_buf *b, size_t extra)
{
    if (extra > b->max || b->len > b->max - extra)
        return FU_ETOOBIG;
    size_t need = b->len + extra + 1; /* +1 keeps room for the terminating NUL */
    if (need <= b->cap)
        return FU_OK;
    size_t cap = b->cap ? b->cap : FU_BUF_MIN_CAP;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    /* Do not round far past the ceiling: a 4 MiB body must not cost 8 MiB. */
    if (cap > b->max + 1 && need <= b->max + 1)
        cap = b->max + 1;
    char *p = realloc(b->data, cap);
    if (p == NULL)
        return FU_ENOMEM;
    b->data = p;
    b->cap = cap;
    return FU_OK;
}

int fu_buf_append(struct fu_buf *b, const void *p, size_t n)
{
    int rc = fu_buf_reserve(b, n);
    if (rc != FU_OK)
        return rc;
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return FU_OK;
}

int fu_buf_appends(struct fu_buf *b, const char *s)
{
    return fu_buf_append(b, s, strlen(s));
}

int fu_buf_appendf(struct fu_buf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return FU_EINVAL;
    if ((size_t)n < sizeof(small))
        return fu_buf_append(b, small, (size_t)n);
    int rc = fu_buf_reserve(b, (size_t)n);
    if (rc != FU_OK)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return FU_OK;
}

/* Bytes that byte `ch` takes once escaped inside a JSON string. */
static size_t json_esc_len(unsigned char ch)
{
    switch (ch) {
    case '"':
    case '\\':
    case '\n':
    case '\r':
    case '\t': return 2;
    default: return (ch < 0x20 || ch == 0x7f) ? 6 : 1;
    }
}

int fu_buf_append_json_str(struct fu_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    /* Measure first, so one reservation covers the loop and the bound is checked exactly. */
    size_t need = 2;
    for (size_t i = 0; i < n; i++)
        need += json_esc_len((unsigned char)s[i]);
    int rc = fu_buf_reserve(b, need);
    if (rc != FU_OK)
        return rc;
    char *o = b->data + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        switch (ch) {
        case '"':
            *o++ = '\\';
            *o++ = '"';
            break;
        case '\\':
            *o++ = '\\';
            *o++ = '\\';
            break;
        case '\n':
            *o++ = '\\';
            *o++ = 'n';
            break;
        case '\r':
            *o++ = '\\';
            *o++ = 'r';
            break;
        case '\t':
            *o++ = '\\';
            *o++ = 't';
            break;
        default:
            if (ch < 0x20 || ch == 0x7f) {
                *o++ = '\\';
                *o++ = 'u';
                *o++ = '0';
                *o++ = '0';
                *o++ = hex[ch >> 4];
                *o++ = hex[ch & 15];
            } else {
                *o++ = (char)ch;
            }
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    b->data[b->len] = '\0';
    return FU_OK;
}

void fu_buf_consume(struct fu_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data)
        b->data[b->len] = '\0';
}

void fu_buf_clear(struct fu_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

char *fu_buf_take(struct fu_buf *b, size_t *len)
{
    char *p = b->data;
    if (len)
        *len = b->len;
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    return p;
}
