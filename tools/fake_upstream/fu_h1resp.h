/*
 * fu_h1resp: an incremental parser of HTTP/1.1 responses, for the fake's TLS/HTTP/2 front
 * (fu_front.c), which relays each HTTP/2 stream to the fake's own HTTP/1.1 port and turns the
 * answer back into HEADERS and DATA frames.
 *
 * It reads a status line, up to FU_H1RESP_MAX_HEADERS headers (at most FU_H1RESP_HEAD_MAX
 * bytes), then a body delimited by Content-Length, by chunked encoding (extensions and
 * trailers are skipped) or by the end of the connection. Pure: no I/O, no allocation; the body
 * is handed to a callback as it is decoded. Not thread-safe (one parser per stream).
 * Fuzzed by tests/fuzz/fuzz_h1resp.c.
 */
#ifndef FU_H1RESP_H
#define FU_H1RESP_H

#include <stddef.h>

#define FU_H1RESP_HEAD_MAX (16u * 1024u)
#define FU_H1RESP_MAX_HEADERS 48
#define FU_H1RESP_LINE_MAX 256 /* a chunk-size line or a trailer line */

enum fu_h1resp_state {
    FU_H1R_HEAD,
    FU_H1R_BODY_LENGTH, /* Content-Length bytes left in `remaining` */
    FU_H1R_CHUNK_SIZE,
    FU_H1R_CHUNK_DATA,
    FU_H1R_CHUNK_CRLF,
    FU_H1R_TRAILERS,
    FU_H1R_BODY_CLOSE, /* until the connection ends */
    FU_H1R_DONE,
    FU_H1R_ERROR,
};

struct fu_h1resp_header {
    const char *name; /* lower-cased, NUL-terminated, inside the parser's head buffer */
    const char *value; /* blanks trimmed, NUL-terminated */
};

struct fu_h1resp {
    enum fu_h1resp_state state;
    int status;                 /* valid once head_done */
    int head_done;              /* the head was parsed; headers[] are valid */
    size_t n_headers;
    struct fu_h1resp_header headers[FU_H1RESP_MAX_HEADERS];
    unsigned long long remaining; /* body bytes left (BODY_LENGTH, CHUNK_DATA) */
    size_t head_len;
    char head[FU_H1RESP_HEAD_MAX + 1];
    size_t line_len;
    char line[FU_H1RESP_LINE_MAX];
};

/* Called with decoded body bytes; returns 0 to go on, anything else stops the feed with
 * FU_H1RESP_ESTOP. */
typedef int (*fu_h1resp_body_fn)(void *ud, const char *p, size_t n);

#define FU_H1RESP_EINVAL (-1) /* malformed or over a bound: the parser stays in FU_H1R_ERROR */
#define FU_H1RESP_ESTOP (-2)  /* the callback asked to stop */

/* Start (or restart) a parser. `no_body`: the request was HEAD (no body whatever the head says). */
void fu_h1resp_init(struct fu_h1resp *p, int no_body);

/* Feed the next bytes. Returns 0 or a negative FU_H1RESP_E*. Bytes after the end of the
 * message (FU_H1R_DONE) are ignored. */
int fu_h1resp_feed(struct fu_h1resp *p, const char *in, size_t len, fu_h1resp_body_fn on_body,
                   void *ud);

/* The connection ended: returns 0 when the message is complete (DONE, or a body delimited by
 * the close), FU_H1RESP_EINVAL when it was cut short. */
int fu_h1resp_eof(struct fu_h1resp *p);

#endif /* FU_H1RESP_H */
