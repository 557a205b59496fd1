/*
 * fu_http: a small HTTP/1.1 server on epoll, written for the fake upstream.
 *
 * N worker threads each run one epoll loop; they share one listening socket registered with
 * EPOLLEXCLUSIVE (no SO_REUSEPORT). A connection lives on the worker that accepted it and is
 * only touched by that thread, so connections need no locks. Requests are parsed in place from
 * the connection's input buffer (request line, headers up to FU_MAX_HEAD_BYTES, Content-Length or
 * chunked bodies up to FU_MAX_BODY_BYTES, keep-alive and pipelining) and handed to
 * fu_api_handle(). Responses are written from a per-connection output buffer; slow responses are
 * `struct fu_job`s that the worker steps from its timer heap.
 *
 * Every connection socket is watched with EPOLLRDHUP the whole time, including while a response
 * waits for its next token, so a client that goes away is noticed as soon as its FIN or RST
 * arrives, not at the next write.
 */
#ifndef FU_HTTP_H
#define FU_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fu_buf.h"

#define FU_MAX_HEAD_BYTES (32u * 1024u)        /* request line + headers */
#define FU_MAX_BODY_BYTES (4u * 1024u * 1024u) /* decoded request body */
#define FU_MAX_HEADERS 100

struct fu_job;
struct fu_conn;
struct fu_server;

struct fu_header {
    const char *name;
    size_t name_len;
    const char *value; /* leading and trailing blanks removed */
    size_t value_len;
};

/* One parsed request. Every pointer borrows the connection's input buffer and is valid only
 * during the fu_api_handle() call that receives it. Strings are not NUL-terminated. */
struct fu_req {
    const char *method;
    size_t method_len;
    const char *target; /* as sent: path plus query */
    size_t target_len;
    const char *path; /* target up to '?' */
    size_t path_len;
    const char *query; /* after '?', NULL if none */
    size_t query_len;
    int minor_version; /* HTTP/1.x */
    struct fu_header headers[FU_MAX_HEADERS];
    size_t n_headers;
    const char *body; /* decoded body; NULL when empty */
    size_t body_len;
};

/* Find a header by name (ASCII case-insensitive); the first match, or NULL. */
const struct fu_header *fu_req_header(const struct fu_req *req, const char *name);

/* Monotonic and wall-clock time. fu_now_ns: CLOCK_MONOTONIC in ns (for pacing);
 * fu_wall_ms: CLOCK_REALTIME in ms with fractions (for recorded timestamps). Thread-safe. */
uint64_t fu_now_ns(void);
double fu_wall_ms(void);

/*
 * Append a response head. content_length < 0 means "no Content-Length": the body is then
 * chunked if `chunked`, or delimited by closing the connection. `extra` is NULL or further
 * header lines, each ending in "\r\n". Returns 0 or a negative fu_err.
 */
__attribute__((warn_unused_result)) int fu_http_append_head(struct fu_buf *out, int status,
                                                            const char *content_type,
                                                            long long content_length, bool chunked,
                                                            bool keep_alive, const char *extra);

/* Wrap out[start..] (just appended) as one HTTP chunk when `chunked`; no-op otherwise. */
__attribute__((warn_unused_result)) int fu_http_frame_chunk(struct fu_buf *out, size_t start,
                                                            bool chunked);

/* Reason phrase for a status code ("OK", "Too Many Requests", ...). */
const char *fu_http_reason(int status);

/*
 * Parse a request head: request line and headers in buf[0..len), len including the final blank
 * line; len must be at most FU_MAX_HEAD_BYTES (the caller answers 431 otherwise). Fills `r`,
 * whose pointers borrow `buf`; body and body_len are left empty. Returns 0 or the HTTP status to
 * reject the request with (fu_http_append_reject). Used by the plain port and by the front for
 * the HTTP/1.1 head it writes for each HTTP/2 stream, so both accept and refuse the same
 * requests. Thread-safe.
 */
__attribute__((warn_unused_result)) int fu_http_parse_head(const char *buf, size_t len,
                                                           struct fu_req *r);

/* Append the complete answer (head with "Connection: close", OpenAI error body) the HTTP layer
 * gives a request it refuses with `status` (400, 413, 431, 501 or 505; anything else is 400).
 * Returns 0 or a negative fu_err. */
__attribute__((warn_unused_result)) int fu_http_append_reject(struct fu_buf *out, int status);

/*
 * --- where a request's answer goes ---
 *
 * fu_api_handle() answers through a `struct fu_conn`: a plain-port connection (fu_http.c) or an
 * HTTP/2 stream of the front (fu_front.c), each embedding it as its first member and filling
 * `ops`. Both take the same bytes, an HTTP/1.1 response (head, then a body framed as the head
 * says); the front turns them into HEADERS and DATA. Used by the thread that owns the
 * connection or stream only.
 */
struct fu_conn_ops {
    /* see fu_conn_send / fu_conn_abort / fu_conn_start_job below */
    int (*send)(struct fu_conn *c, const char *data, size_t len);
    void (*abort)(struct fu_conn *c);
    void (*start_job)(struct fu_conn *c, struct fu_job *job);
};

struct fu_conn {
    const struct fu_conn_ops *ops;
    bool keep_alive; /* the answer to the current request may keep the connection */
    bool http11;     /* the client speaks HTTP/1.1: chunked answers are allowed */
};

/* --- what a request handler may do with its connection --- */

/* Whether the response to the current request may keep the connection open. */
bool fu_conn_keep_alive(const struct fu_conn *c);

/* Make the response to the current request close the connection (an HTTP/1.0 stream has no
 * other way to mark its end). */
void fu_conn_disable_keep_alive(struct fu_conn *c);

/* Whether the peer speaks HTTP/1.1 (so chunked responses are allowed). */
bool fu_conn_http11(const struct fu_conn *c);

/* Queue bytes that form a complete response (head and body). Returns 0 or a negative fu_err;
 * on failure the connection is closed once the handler returns. */
__attribute__((warn_unused_result)) int fu_conn_send(struct fu_conn *c, const char *data,
                                                     size_t len);

/* Give up on the connection (the handler could not build its response, e.g. out of memory):
 * it is closed without an answer once the handler returns. */
void fu_conn_abort(struct fu_conn *c);

/* Hand a slow or streaming response to the connection, which owns it from now on (counted by
 * fu_job_begin) and steps it from its loop's timers until it is done, cut, or the client goes
 * away (fu_job_end). If the response must not keep the connection (see fu_conn_keep_alive), it
 * is closed after the job is done. */
void fu_conn_start_job(struct fu_conn *c, struct fu_job *job);

/* --- server --- */

/*
 * A non-blocking listening socket on `listen` ("HOST:PORT", "[V6]:PORT"; port 0 = any free
 * port), as fu_server_create makes it (also used by the TLS/HTTP/2 front, fu_front.c). Writes the
 * bound numeric "HOST:PORT" into `bound`. Returns the descriptor (caller closes it), or -1 after
 * printing why to stderr (*addr_in_use tells whether the port was taken).
 */
int fu_http_listen(const char *listen, char *bound, size_t bound_len, bool *addr_in_use);

/*
 * Bind and listen on `listen` ("HOST:PORT", "[V6]:PORT"; port 0 = any free port). Never sets
 * SO_REUSEPORT. On success writes the bound "HOST:PORT" (numeric) into `bound` and returns the
 * server; on failure prints the reason to stderr and returns NULL (*addr_in_use tells whether
 * the port was taken). Caller owns the result: fu_server_destroy().
 */
struct fu_server *fu_server_create(const char *listen, char *bound, size_t bound_len,
                                   bool *addr_in_use);

/* Start `threads` (>= 1) worker threads. Returns 0 or FU_EIO/FU_ENOMEM (workers already started
 * are stopped again). The calling thread should have SIGTERM/SIGINT blocked so that the workers
 * inherit the mask. */
__attribute__((warn_unused_result)) int fu_server_start(struct fu_server *s, unsigned threads);

/* Ask every worker to stop, wait for them, close all connections. Idempotent. */
void fu_server_stop(struct fu_server *s);

/* Stop if needed and free everything; NULL-safe; sets *s to NULL. */
void fu_server_destroy(struct fu_server **s);

#endif /* FU_HTTP_H */
