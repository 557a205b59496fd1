#ifndef LG_RESP_H
#define LG_RESP_H

#include <stddef.h>
#include <stdint.h>

/*
 * An incremental HTTP/1.x response parser for the load generator: status line and headers, then
 * a body delimited by Content-Length, by chunked transfer coding (extensions and trailers are
 * skipped) or by the end of the connection. Interim 1xx responses (100 Continue, 103) are skipped.
 * Bytes may arrive split anywhere. Body bytes are handed to a callback after de-chunking and are
 * not kept.
 *
 * Bounds: the head may be at most LG_RESP_HEAD_MAX bytes and a chunk-size or trailer line at most
 * LG_RESP_LINE_MAX bytes; more is a parse error. The head is buffered on the heap only while it is
 * being read (so an idle parser costs no more than the struct).
 *
 * Not thread-safe; one parser per connection.
 */

#define LG_RESP_HEAD_MAX (64u << 10)
#define LG_RESP_LINE_MAX 1024u

typedef enum {
    LG_RESP_HEAD,       /* reading the status line and headers */
    LG_RESP_BODY_LEN,   /* Content-Length body */
    LG_RESP_CHUNK_SIZE, /* a chunk-size line */
    LG_RESP_CHUNK_DATA, /* chunk data */
    LG_RESP_CHUNK_CRLF, /* the CRLF after chunk data */
    LG_RESP_TRAILER,    /* trailer lines after the last chunk */
    LG_RESP_BODY_EOF,   /* body delimited by the end of the connection */
    LG_RESP_DONE,       /* the response is complete */
    LG_RESP_ERROR       /* malformed; see error */
} lg_resp_state_e;

struct lg_resp {
    lg_resp_state_e state;
    int status;          /* the final status code, once the head is parsed */
    int keep_alive;      /* the connection may carry another request after this response */
    int chunked;
    int no_body;         /* answer to HEAD: never a body */
    uint64_t remaining;  /* bytes left of the Content-Length body or of the current chunk */
    uint64_t body_bytes; /* body bytes delivered so far (de-chunked) */
    uint64_t wire_bytes; /* bytes consumed so far, head included */
    const char *error;   /* static text naming what was malformed (state LG_RESP_ERROR) */
    char *head;          /* the head being read; NULL when not reading one */
    size_t head_len, head_cap;
    size_t line_len;
    char line[LG_RESP_LINE_MAX];
};

/* Body bytes, in order. data is borrowed: valid during the call only. */
typedef void (*lg_resp_body_fn)(void *ud, const char *data, size_t len);

/* Prepares r for one response. no_body: the request was HEAD. */
void lg_resp_init(struct lg_resp *r, int no_body);

/* Frees the head buffer, if any. r can be initialised again afterwards. */
void lg_resp_deinit(struct lg_resp *r);

/*
 * Feeds len bytes. Returns how many were consumed: all of them, unless the response ended
 * (state LG_RESP_DONE) before the end of data, in which case the rest belong to whatever the
 * server sent next. Returns -1 when the response is malformed (state LG_RESP_ERROR, error set).
 * on_body (may be NULL) receives the body bytes.
 */
long lg_resp_feed(struct lg_resp *r, const char *data, size_t len, lg_resp_body_fn on_body,
                  void *ud);

/*
 * The server closed the connection. Returns 0 when that completes the response (a body
 * delimited by the close; state becomes LG_RESP_DONE, or it was already done), -1 when the
 * response is cut short.
 */
int lg_resp_eof(struct lg_resp *r);

/* 1 once the final head has been parsed. */
static inline int lg_resp_has_head(const struct lg_resp *r)
{
    return r->state != LG_RESP_HEAD && r->state != LG_RESP_ERROR;
}

#endif
