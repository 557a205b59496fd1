/*
 * Fuzz target for svc/sse.h (the upstream event-stream parser).
 *
 * Input: byte 0 picks max_event, byte 1 seeds the chunk sizes, the rest is the stream. The same
 * stream is fed three ways (at once, byte by byte, in pseudo-random chunks); the events delivered
 * before the first error and the final status must be identical, every event must respect
 * max_event, be NUL-terminated and contain no CR. An event whose data is "STOP" makes the callback
 * return 7, which must end the feed with 7.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/buf.h"
#include "svc/err.h"
#include "svc/sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct run {
    struct svc_buf events; /* each event as <len:8 bytes><data> */
    size_t max_event;
    int count;
};

static int on_event(void *ud, const char *d, size_t len)
{
    struct run *r = ud;
    uint64_t l = len;

    if (len > r->max_event || d[len] != '\0' || memchr(d, '\r', len) != NULL)
        abort();
    if (svc_buf_append(&r->events, &l, sizeof(l)) != SVC_OK ||
        svc_buf_append(&r->events, d, len) != SVC_OK)
        abort(); /* the record buffer is unbounded enough for any fuzz input */
    r->count++;
    return len == 4 && memcmp(d, "STOP", 4) == 0 ? 7 : 0;
}

/* Feeds the stream in pieces; mode 0 = at once, 1 = byte by byte, 2 = pseudo-random. */
static int run_mode(const char *s, size_t n, size_t max_event, int mode, uint32_t seed,
                    struct run *r)
{
    struct svc_sse sse;
    size_t off = 0;
    int rc = 0;

    svc_buf_init(&r->events, 64u << 20);
    r->max_event = max_event;
    r->count = 0;
    svc_sse_init(&sse, max_event);
    if (mode == 0)
        rc = svc_sse_feed(&sse, s, n, on_event, r);
    while (mode != 0 && off < n && rc == 0) {
        size_t piece = 1;
        if (mode == 2) {
            seed = seed * 1103515245u + 12345u;
            piece = 1 + (seed >> 16) % 23;
        }
        if (piece > n - off)
            piece = n - off;
        rc = svc_sse_feed(&sse, s + off, piece, on_event, r);
        off += piece;
    }
    svc_sse_deinit(&sse);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t maxes[] = {1, 8, 16, 64, 256, 4096, 65536, 1u << 20};
    struct run a, b, c;
    const char *s;
    size_t n, max_event;
    int ra, rb, rc;

    if (size < 2)
        return 0;
    max_event = maxes[data[0] % (sizeof(maxes) / sizeof(maxes[0]))];
    s = (const char *)data + 2;
    n = size - 2;

    ra = run_mode(s, n, max_event, 0, 0, &a);
    rb = run_mode(s, n, max_event, 1, 0, &b);
    rc = run_mode(s, n, max_event, 2, data[1], &c);

    if (ra != 0 && ra != 7 && ra != SVC_ETOOLARGE)
        abort(); /* only documented results */
    if (ra != rb || ra != rc || a.count != b.count || a.count != c.count ||
        a.events.len != b.events.len || a.events.len != c.events.len ||
        (a.events.len > 0 && (memcmp(a.events.data, b.events.data, a.events.len) != 0 ||
                              memcmp(a.events.data, c.events.data, a.events.len) != 0))) {
        fprintf(stderr, "chunking changed the result: rc %d/%d/%d, events %d/%d/%d\n", ra, rb, rc,
                a.count, b.count, c.count);
        abort();
    }
    svc_buf_deinit(&a.events);
    svc_buf_deinit(&b.events);
    svc_buf_deinit(&c.events);
    return 0;
}
