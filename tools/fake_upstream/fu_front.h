/*
 * fu_front: the fake upstream's TLS and HTTP/2 front (OpenSSL + nghttp2), so that tests and
 * benchmarks see real ALPN, real multiplexing, GOAWAY and per-stream resets.
 *
 * One thread with its own epoll loop serves a second listening port (FAKE_FRONT_LISTEN):
 *   - with FAKE_TLS_CERT/FAKE_TLS_KEY: TLS, ALPN "h2" (unless FAKE_H2=0) or "http/1.1";
 *   - without: cleartext, HTTP/2 with prior knowledge (the client preface) or HTTP/1.1.
 * Every HTTP/2 stream is answered in the front's thread by fu_api_handle(), the plain port's
 * handler: its request is written as the HTTP/1.1 head the plain port would get and parsed by
 * the plain port's parser (fu_http_parse_head), and the HTTP/1.1 answer fu_api and its job write
 * is parsed (fu_h1resp) into HEADERS and DATA. So every knob, record and event works as on the
 * plain port, with no connection or descriptor per stream; jobs are paced from the front's own
 * timer heap (fu_timer), and a stream the client resets ends its job as client_closed.
 * HTTP/1.1 connections are still piped byte for byte to one connection each to the plain port
 * (keep-alive, pipelining and the HTTP/1.1 parser's framing are the plain port's).
 * Connections and streams are counted in fu_stats.
 */
#ifndef FU_FRONT_H
#define FU_FRONT_H

#include <stdbool.h>
#include <stddef.h>

struct fu_front;

struct fu_front_opts {
    const char *listen;    /* HOST:PORT of the front */
    const char *backend;   /* HOST:PORT of the fake's plain HTTP/1.1 port (HTTP/1.1 is piped there) */
    const char *cert_file; /* PEM; NULL or "" = cleartext */
    const char *key_file;
    bool h2;               /* offer HTTP/2 (ALPN h2 / accept the h2c preface) */
    unsigned max_streams;  /* SETTINGS_MAX_CONCURRENT_STREAMS */
};

/* Bind, load the certificate and start the front's thread. Writes the bound "HOST:PORT" into
 * `bound`. Returns NULL after printing why to stderr. Caller owns it: fu_front_destroy(). */
struct fu_front *fu_front_create(const struct fu_front_opts *o, char *bound, size_t bound_len);

/* Stop the thread, close every connection, free. NULL-safe; sets *f to NULL. */
void fu_front_destroy(struct fu_front **f);

enum fu_goaway_mode {
    FU_GOAWAY_GRACEFUL, /* last-stream-id = the last stream received: streams in flight complete */
    FU_GOAWAY_REFUSE,   /* the streams whose answer has not started (no HEADERS sent yet) above
                         * the last one that has are reset with REFUSED_STREAM and left out of
                         * last-stream-id, as a server going away before it processed them */
    FU_GOAWAY_DROP,     /* no GOAWAY at all: every HTTP/2 connection is closed at once (a lost
                         * connection; streams in flight fail, whether started or not) */
};

/* Act on every open HTTP/2 connection of the front (from any thread; the front's thread does
 * it). Returns false when no front runs. */
bool fu_front_goaway(enum fu_goaway_mode mode);

#endif /* FU_FRONT_H */
