/*
 * fu_buf: a growable byte buffer with a hard maximum, for the fake upstream.
 *
 * Every buffer is created with a ceiling (`max`); an append that would cross it fails with
 * FU_ETOOBIG and leaves the buffer unchanged, so no peer can make us allocate without bound.
 * Not thread-safe: a buffer belongs to one connection or one call.
 */
#ifndef FU_BUF_H
#define FU_BUF_H

#include <stdarg.h>
#include <stddef.h>

/* Error codes shared by all fake-upstream modules: 0 = OK, negative = failure. */
enum fu_err {
    FU_OK = 0,
    FU_ENOMEM = -1,  /* allocation failed */
    FU_ETOOBIG = -2, /* a bound would be exceeded */
    FU_EINVAL = -3,  /* malformed input */
    FU_EIO = -4,     /* a system call failed; errno says why */
};

struct fu_buf {
    char *data; /* NUL-terminated when non-NULL (the NUL is not counted in len) */
    size_t len;
    size_t cap;
    size_t max; /* hard ceiling for len */
};

/* Set up an empty buffer (no allocation) whose length may never exceed `max`. */
void fu_buf_init(struct fu_buf *b, size_t max);

/* Free the storage; the buffer is empty afterwards and may be reused. Accepts an empty buffer. */
void fu_buf_deinit(struct fu_buf *b);

/* Make room for `extra` more bytes. Returns 0, FU_ETOOBIG or FU_ENOMEM. */
__attribute__((warn_unused_result)) int fu_buf_reserve(struct fu_buf *b, size_t extra);

/* Append bytes / a C string / printf output. Returns 0, FU_ETOOBIG or FU_ENOMEM; on failure the
 * buffer keeps its previous content. */
__attribute__((warn_unused_result)) int fu_buf_append(struct fu_buf *b, const void *p, size_t n);
__attribute__((warn_unused_result)) int fu_buf_appends(struct fu_buf *b, const char *s);
__attribute__((warn_unused_result, format(printf, 2, 3))) int fu_buf_appendf(struct fu_buf *b,
                                                                             const char *fmt, ...);

/* Append `s` (n bytes, valid UTF-8 expected) as a quoted, escaped JSON string. */
__attribute__((warn_unused_result)) int fu_buf_append_json_str(struct fu_buf *b, const char *s,
                                                               size_t n);

/* Drop the first n bytes (n <= len), keeping the rest. */
void fu_buf_consume(struct fu_buf *b, size_t n);

/* Forget the content but keep the storage. */
void fu_buf_clear(struct fu_buf *b);

/* Hand the storage to the caller (free with free()); the buffer is empty afterwards. Returns NULL
 * for a buffer that never allocated. */
char *fu_buf_take(struct fu_buf *b, size_t *len);

#endif /* FU_BUF_H */
