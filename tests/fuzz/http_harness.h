#ifndef FUZZ_HTTP_HARNESS_H
#define FUZZ_HTTP_HARNESS_H

/*
 * For the fuzz targets whose parser sits behind an HTTP handler (the handlers take a struct
 * svc_req, which only the server makes): the real svc_http server in this process on a free
 * loopback port, and a small blocking HTTP/1.1 client that sends one request and reads the whole
 * reply (Content-Length, chunked, or up to the close). One keep-alive connection is reused while
 * the server keeps it open. Not thread-safe: one fuzzing thread.
 *
 * A reply that does not come within FZ_HTTP_TIMEOUT_S, or cannot be parsed as HTTP/1.1, is a
 * finding: the harness prints why and calls abort(), which libFuzzer reports as a crash.
 * With FUZZ_HTTP_TRACE set in the environment every request and its reply are printed.
 */

#include <stddef.h>
#include <stdint.h>

#include "svc/buf.h"
#include "svc/http.h"

#define FZ_HTTP_TIMEOUT_S 15
#define FZ_HTTP_REPLY_MAX (8u << 20) /* bytes of a reply body we accept */

struct fz_resp {
    long status;
    char content_type[128];
    int www_authenticate; /* the reply carried WWW-Authenticate */
    int reset;            /* no reply: the server closed or reset a fresh connection (status 0) */
    struct svc_buf body;  /* NUL-terminated */
    struct svc_buf head;  /* the header lines as received, each ending in "\n"; NUL-terminated */
};

/*
 * Starts the server with routes (valid for the life of the process) on 127.0.0.1:0. POOL mode
 * when nloops is 0 (2 threads), else LOOPS mode on loops[0..nloops) (which the caller runs).
 * max_body is the 413 limit. Aborts on failure (a fuzz target cannot run without it).
 */
void fz_http_start(const struct svc_http_route *routes, size_t nroutes, enum svc_http_style style,
                   size_t max_body, struct svc_loop **loops, unsigned nloops);

/* The server's port (after fz_http_start). */
int fz_http_port(void);

/*
 * Sends "method path" with headers (complete lines, each ending in CRLF; may be "") and body,
 * adding Host and Content-Length. Fills *r (fz_resp_deinit frees it). Aborts on a timeout or a
 * reply that is not HTTP; a connection closed without a reply is r->reset with status 0.
 */
void fz_http_do(const char *method, const char *path, const char *headers, const void *body,
                size_t len, struct fz_resp *r);
void fz_resp_deinit(struct fz_resp *r);

/* The value of the reply's first header called name (any case), blanks before it skipped, cut
 * to fit out[outlen]; NULL when the reply has no such header. */
const char *fz_header(const struct fz_resp *r, const char *name, char *out, size_t outlen);

/* Splits data at every sep byte into at most nf fields (the last takes the rest). Returns the
 * number of fields (>= 1). Fields point into data. */
size_t fz_split(const uint8_t *data, size_t size, uint8_t sep, const uint8_t **f, size_t *fl,
                size_t nf);

/* Copies field f[0..n) into out[outlen] as a header value: CR, LF and NUL are dropped (they would
 * end the header), the rest is kept, cut to fit. Returns out. */
char *fz_header_value(const uint8_t *f, size_t n, char *out, size_t outlen);

/* Prints "fuzz: <what>" with the request and the reply, then abort()s. */
void fz_fail(const char *what, const char *method, const char *path, const struct fz_resp *r)
    __attribute__((noreturn));

/*
 * Checks the /api envelope that the ChatGPT Web frontend and the ops clients read: a JSON object
 * with "status" one of Success, Fail, Unauthorized and a string "message". 1 when it is one.
 */
int fz_is_envelope(const struct fz_resp *r);

struct ProtobufCMessageDescriptor;

/*
 * Checks an RPC answer on path: a 200 carries the method's response message (out), any other
 * status an RpcError whose code maps to that status, or the HTTP layer's own text answer (413,
 * 405, 431). fz_fail()s otherwise.
 */
void fz_check_rpc(const char *path, const struct ProtobufCMessageDescriptor *out,
                  const struct fz_resp *r);

#endif
