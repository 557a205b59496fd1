#ifndef SVC_HTTP_PARSE_H
#define SVC_HTTP_PARSE_H

/*
 * The HTTP/1.x parser of the server (common/http.c): the request head and the chunked body
 * coding; and the response head, for the client (common/fetch_h1.c). Pure functions on
 * buffers, no I/O, so they can be fuzzed on their own (tests/fuzz/fuzz_http_request.c,
 * fuzz_http_response.c). Internal to common/; not a public header.
 *
 * Strict where a lax reading could let two parsers disagree about where a request ends (RFC 9112
 * section 11.2): folded header lines, a space before a header's colon, control bytes, a bad
 * Content-Length or two of them, Transfer-Encoding other than "chunked" are refused. Lenient
 * where nothing can be smuggled: a bare LF ends a line, as in nginx.
 */

#include <stddef.h>
#include <stdint.h>

struct svc__http_field {
    const char *name; /* header name as sent (compare without case), or query key (decoded) */
    const char *value; /* value with surrounding spaces removed; NULL for a query key alone */
};

struct svc__http_head {
    const char *method;
    const char *path;  /* percent-decoded, without the query */
    int minor;         /* HTTP/1.<minor>: 0 or 1 */
    struct svc__http_field *headers; /* in the caller's array, in the order sent */
    unsigned nheaders;
    struct svc__http_field *args; /* the query's arguments, decoded ('+' is a space) */
    unsigned nargs;
};

/* Where the search for a head's end resumes as its bytes arrive. Zero-initialise per head. */
struct svc__http_scan {
    size_t line; /* the start of the first line not known to be complete */
    int started; /* the empty lines before the request line are behind */
};

/*
 * The length of the request head at the start of buf (up to and including its blank line), or 0
 * when the blank line has not arrived yet. Empty lines before the request line (RFC 9112 2.2)
 * belong to the head. Called again as more bytes arrive (buf growing, its start unchanged), it
 * resumes from the last incomplete line in scan, so a head that trickles in costs linear time.
 */
size_t svc__http_head_len(const char *buf, size_t len, struct svc__http_scan *scan);

/*
 * Parses the head in buf[0..len) (len from svc__http_head_len), in place: NULs and decoded bytes
 * are written into buf, and h's strings point into it. headers has room for max_headers entries,
 * args for max_args. Returns 0, or the HTTP status to answer: 400 (malformed), 414 (more than
 * max_args query arguments, empty ones counted; returned only once the rest of the head was
 * parsed), 431 (more than max_headers header lines), 505 (not HTTP/1.x).
 */
int svc__http_parse_head(char *buf, size_t len, struct svc__http_head *h,
                         struct svc__http_field *headers, unsigned max_headers,
                         struct svc__http_field *args, unsigned max_args);

/* A response head (the client of common/fetch_h1.c). */
struct svc__http_response {
    int status;                      /* 100-999 */
    int minor;                       /* HTTP/1.<minor>: 0 or 1 */
    struct svc__http_field *headers; /* in the caller's array, in the order received */
    unsigned nheaders;
};

/*
 * Parses the response head in buf[0..len) (len from svc__http_head_len, which finds a
 * response's end as it finds a request's), in place as svc__http_parse_head does. Returns 0,
 * 400 (malformed: a bad status line or header line) or 431 (more than max_headers).
 */
int svc__http_parse_response_head(char *buf, size_t len, struct svc__http_response *r,
                                  struct svc__http_field *headers, unsigned max_headers);

/* The number of query arguments the request line at the start of buf names (after empty lines):
 * 1 + its '&'s, 0 without a query. For sizing the args array before parsing. */
unsigned svc__http_count_args(const char *buf, size_t len);

/* The number of lines in buf[0..len): enough header entries for svc__http_parse_head. */
unsigned svc__http_count_lines(const char *buf, size_t len);

/* Whether the comma-separated list value (a Connection header) names token, in any case. */
int svc__http_has_token(const char *value, const char *token);

/* Whether a message of HTTP/1.<minor> with this Connection header (NULL: none) leaves its
 * connection open (RFC 9112 9.3): 1.1 unless "close", 1.0 only with "keep-alive". */
int svc__http_keeps_alive(int minor, const char *connection);

/* A chunked body being decoded (RFC 9112 section 7.1). Zero-initialise to start. */
struct svc__http_chunked {
    int state;
    uint64_t left;    /* bytes of the current chunk (or of a line's budget) still to come */
    unsigned digits;  /* hex digits of the size line so far */
    unsigned linelen; /* bytes of the current extension or trailer line */
    size_t trailers;  /* bytes of trailer fields so far */
};

/*
 * Decodes buf[0..len) in place: the chunk data found is moved to the start of buf. Returns the
 * number of data bytes placed there (>= 0) and sets *used to the input bytes consumed and *done
 * to 1 once the last chunk and the trailers ended (the bytes after them are not consumed); -1 on
 * a malformed coding (the request is answered 400).
 */
long svc__http_chunked_decode(struct svc__http_chunked *c, char *buf, size_t len, size_t *used,
                              int *done);

#endif
