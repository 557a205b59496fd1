#include "svc/buf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUF_MIN_ALLOC 64

void svc_buf_init(struct svc_buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

void svc_buf_deinit(struct svc_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void svc_buf_reset(struct svc_buf *b)
{
    b->len = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

/* Makes room for `extra` more bytes plus the NUL terminator. */
static int buf_reserve(struct svc_buf *b, size_t extra)
{
    size_t need, cap;
    char *p;

    if (extra > b->max || b->len > b->max - extra)
        return SVC_ETOOLARGE;
    need = b->len + extra + 1;
    if (need <= b->cap)
        return SVC_OK;
    cap = b->cap < BUF_MIN_ALLOC ? BUF_MIN_ALLOC : b->cap;
    while (cap < need)
        cap *= 2;
    if (b->max < SIZE_MAX && cap > b->max + 1) /* max + 1 would wrap at SIZE_MAX */
        cap = b->max + 1;
    if (cap < need) /* the doubling overflowed */
        cap = need;
    p = realloc(b->data, cap);
    if (p == NULL)
        return SVC_ENOMEM;
    b->data = p;
    b->cap = cap;
    return SVC_OK;
}

int svc_buf_append(struct svc_buf *b, const void *data, size_t len)
{
    int rc = buf_reserve(b, len);

    if (rc != SVC_OK)
        return rc;
    if (len > 0)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return SVC_OK;
}

int svc_buf_append_str(struct svc_buf *b, const char *s)
{
    return svc_buf_append(b, s, strlen(s));
}

int svc_buf_appendf(struct svc_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n, rc;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return SVC_EINVAL;
    rc = buf_reserve(b, (size_t)n);
    if (rc != SVC_OK)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return SVC_OK;
}

void svc_buf_consume(struct svc_buf *b, size_t n)
{
    if (n >= b->len) {
        svc_buf_reset(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

char *svc_buf_take(struct svc_buf *b)
{
    char *p = b->data;

    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    return p;
}
