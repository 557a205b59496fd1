#ifndef SVC_BUF_H
#define SVC_BUF_H

#include <stddef.h>

#include "svc/err.h"

/*
 * A growable byte buffer with a hard maximum (curl's dynbuf). The content is always kept
 * NUL-terminated so it can be used as a C string when it holds text. Not thread-safe.
 */
struct svc_buf {
    char *data;  /* NULL until the first append */
    size_t len;  /* bytes used, not counting the terminating NUL */
    size_t cap;  /* bytes allocated */
    size_t max;  /* appends that would go past this length fail with SVC_ETOOLARGE */
};

/* Prepares an empty buffer that may grow up to max bytes. Allocates nothing. */
void svc_buf_init(struct svc_buf *b, size_t max);

/* Frees the storage; the buffer is empty and reusable afterwards. Accepts a zeroed buffer. */
void svc_buf_deinit(struct svc_buf *b);

/* Empties the buffer but keeps its storage. */
void svc_buf_reset(struct svc_buf *b);

/* Appends len bytes. On error the buffer is unchanged. */
int svc_buf_append(struct svc_buf *b, const void *data, size_t len) SVC_MUST_CHECK;

/* Appends a NUL-terminated string. */
int svc_buf_append_str(struct svc_buf *b, const char *s) SVC_MUST_CHECK;

/* Appends printf-formatted text. On error the buffer is unchanged. */
int svc_buf_appendf(struct svc_buf *b, const char *fmt, ...) SVC_MUST_CHECK
    __attribute__((format(printf, 2, 3)));

/* Removes the first n bytes (n <= len), moving the rest to the front. */
void svc_buf_consume(struct svc_buf *b, size_t n);

/* Hands the storage to the caller (free() it) and leaves the buffer empty. May return NULL when
 * nothing was ever appended. */
char *svc_buf_take(struct svc_buf *b);

#endif
