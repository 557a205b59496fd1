/*
 * fu_record: what tests observe - a ring of the last FU_RECORD_MAX requests, a ring of the last
 * FU_RECORD_MAX stream events, live counters, and an optional JSONL request log.
 * All functions are thread-safe (one mutex for the rings and the log file; atomics for stats).
 */
#ifndef FU_RECORD_H
#define FU_RECORD_H

#include <stdatomic.h>
#include <stdint.h>

#include "fu_buf.h"

struct fu_req;
struct json_t;

#define FU_RECORD_MAX 1000
/* Requests are also evicted when the ring holds more than this many bytes of JSON, so a run of
 * 4 MiB bodies cannot pin gigabytes; the newest request is always kept. */
#define FU_RECORD_MAX_BYTES (64u * 1024u * 1024u)

enum fu_event_type { FU_EV_CLIENT_CLOSED, FU_EV_STREAM_DONE, FU_EV_STREAM_CUT };

struct fu_stats {
    atomic_long open_streams; /* streamed responses in progress (stalled ones included) */
    atomic_long open_connections;
    atomic_ullong total_requests; /* recorded API requests */
    atomic_ullong total_connections;
    atomic_ullong total_streams;
    /* the TLS/HTTP/2 front (fu_front.c). Its HTTP/2 streams count in the streams and requests
     * above, its HTTP/1.1 connections' relays to the plain port in the connections above. */
    atomic_ullong front_connections;    /* accepted by the front */
    atomic_long front_open_connections;
    atomic_ullong front_h1_connections; /* of those, speaking HTTP/1.1 (piped) */
    atomic_ullong tls_handshakes;       /* completed */
    atomic_ullong tls_resumed;          /* of those, resumed sessions */
    atomic_ullong tls_failed_handshakes;
    atomic_ullong h2_connections;
    atomic_ullong h2_streams;           /* HTTP/2 requests received */
    atomic_long h2_open_streams;
    atomic_long h2_max_streams_per_connection; /* most streams open at once on one connection */
    atomic_ullong h2_resets_received;   /* RST_STREAM frames from clients (also on finished streams) */
    atomic_ullong h2_streams_reset;     /* streams reset before their answer was complete */
    atomic_ullong h2_refused_streams;   /* reset with REFUSED_STREAM by a refusing GOAWAY */
    atomic_ullong h2_goaways_sent;
    atomic_ullong h2_connections_dropped; /* closed by POST /_fake/goaway?drop=1 */
};
extern struct fu_stats fu_stats;

/* Open the JSONL log (path may be NULL or ""). Returns 0 or FU_EIO after printing why. */
__attribute__((warn_unused_result)) int fu_record_setup(const char *log_path);
void fu_record_teardown(void);

/* Record a request; `body` (borrowed, may be NULL) is the parsed JSON body, otherwise the raw
 * body is stored as a string. Returns the request's sequence number (1, 2, ...; never reset). */
uint64_t fu_record_request(const struct fu_req *req, const struct json_t *body);

/* Record a stream event, timestamped now (CLOCK_REALTIME). */
void fu_record_event(enum fu_event_type type, uint64_t request_seq, uint64_t chunks_sent);

/* Render {"requests":[...]} / {"events":[...]} with seq > since, or the stats object.
 * Return 0 or a fu_buf error. */
__attribute__((warn_unused_result)) int fu_record_render_requests(struct fu_buf *out,
                                                                  uint64_t since);
__attribute__((warn_unused_result)) int fu_record_render_events(struct fu_buf *out, uint64_t since);
__attribute__((warn_unused_result)) int fu_record_render_stats(struct fu_buf *out);

/* Forget all recorded requests and events (sequence numbers keep counting). */
void fu_record_reset(void);

#endif /* FU_RECORD_H */
