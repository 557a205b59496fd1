#ifndef SVC_SSE_H
#define SVC_SSE_H

#include <stddef.h>

#include "svc/buf.h"

/*
 * An incremental parser for text/event-stream (the WHATWG server-sent events rules) as spoken by
 * OpenAI-compatible upstreams: bytes arrive in arbitrary pieces; each event's `data:` lines are
 * joined with '\n' and handed to the callback when the blank line that ends the event arrives.
 * Comments (':' lines), `event:`, `id:` and `retry:` fields are ignored. CR, LF and CRLF all end
 * a line. Not thread-safe; one parser per stream.
 */

struct svc_sse {
    struct svc_buf line; /* the line being read */
    struct svc_buf data; /* data of the event being read */
    int has_data;
    int last_was_cr;
    int bom_checked; /* a UTF-8 byte-order mark at the very start is skipped */
};

/* Called once per complete event with the ctx given to svc_sse_feed and the event's data
 * (NUL-terminated). Return 0 to go on; anything else stops svc_sse_feed, which returns that value.
 */
typedef int (*svc_sse_event_cb)(void *ctx, const char *data, size_t len);

/* max_event bounds one line and one event's data (SVC_ETOOLARGE beyond). */
void svc_sse_init(struct svc_sse *s, size_t max_event);
void svc_sse_deinit(struct svc_sse *s);

/* Feeds bytes. Returns 0, a callback's non-zero value, or SVC_ETOOLARGE. */
int svc_sse_feed(struct svc_sse *s, const char *bytes, size_t len, svc_sse_event_cb cb, void *ctx);

#endif
