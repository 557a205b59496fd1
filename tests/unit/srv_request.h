#ifndef TEST_SRV_REQUEST_H
#define TEST_SRV_REQUEST_H

/*
 * The scripted servers of the HTTP client tests (test_fetch_h1.c over TCP, test_fetch_tls.c
 * over TLS) read requests the same way: from a connection's buffer, the head up to its blank
 * line (path and query kept apart), then a Content-Length body, counted and summed, the first
 * SRV_KEEP bytes of both kept raw for the checks. The transport is the connection's fill
 * function. Header-only: each test is one .c file.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SRV_KEEP 2048 /* bytes of each request kept for the checks (head and body start) */

struct srv_req {
    int conn;        /* the accepted connection (0-based, in accept order) that carried it */
    char path[128];  /* the target up to '?' */
    char query[128]; /* after '?' */
    size_t len;      /* bytes in raw */
    size_t head_len; /* of them, the head's */
    char raw[SRV_KEEP + 1];
    uint64_t body_len; /* the whole body, though raw keeps only its start */
    uint64_t body_sum; /* the sum of its bytes */
};

/* A connection's input: buf[0..have) read and not consumed yet. fill reads more after have;
 * it returns 0, or -1 at the connection's end (or error) and when buf is full. */
struct srv_in {
    int (*fill)(struct srv_in *in);
    size_t have;
    char buf[16384];
};

/* Drops the first n bytes of in's buffer. */
static void srv_consume(struct srv_in *in, size_t n)
{
    memmove(in->buf, in->buf + n, in->have - n);
    in->have -= n;
}

/* The value of the request's Content-Length, or 0. */
static uint64_t srv_content_length(const char *head, size_t len)
{
    static const char name[] = "\ncontent-length:";
    size_t nl = sizeof(name) - 1;

    for (size_t i = 0; i + nl <= len; i++)
        if (strncasecmp(head + i, name, nl) == 0)
            return strtoull(head + i + nl, NULL, 10);
    return 0;
}

/* Reads one request's head into r (cleared first) and consumes it; *left is then the length
 * of its body. Returns 0, or -1 when the connection ended first. */
static int srv_read_head(struct srv_in *in, struct srv_req *r, uint64_t *left)
{
    const char *blank;
    size_t head, i, k;

    memset(r, 0, sizeof(*r));
    while ((blank = memmem(in->buf, in->have, "\r\n\r\n", 4)) == NULL)
        if (in->fill(in) != 0)
            return -1;
    head = (size_t)(blank + 4 - in->buf);
    *left = srv_content_length(in->buf, head);
    r->len = r->head_len = head < SRV_KEEP ? head : SRV_KEEP;
    memcpy(r->raw, in->buf, r->len);
    /* "METHOD /path?query HTTP/1.1" */
    for (i = 0; i < head && in->buf[i] != ' '; i++)
        ;
    for (i++, k = 0; i < head && in->buf[i] != ' ' && in->buf[i] != '?'; i++)
        if (k + 1 < sizeof(r->path))
            r->path[k++] = in->buf[i];
    if (i < head && in->buf[i] == '?')
        for (i++, k = 0; i < head && in->buf[i] != ' '; i++)
            if (k + 1 < sizeof(r->query))
                r->query[k++] = in->buf[i];
    srv_consume(in, head);
    return 0;
}

/* Reads the left bytes of the body into r's counts (and raw, while it has room). Returns 0,
 * or -1 when the connection ended first. */
static int srv_read_body(struct srv_in *in, struct srv_req *r, uint64_t left)
{
    while (left > 0) {
        size_t take;

        if (in->have == 0 && in->fill(in) != 0)
            return -1;
        take = in->have < left ? in->have : (size_t)left;
        for (size_t i = 0; i < take; i++) {
            r->body_sum += (unsigned char)in->buf[i];
            if (r->len < SRV_KEEP)
                r->raw[r->len++] = in->buf[i];
        }
        r->body_len += take;
        left -= take;
        srv_consume(in, take);
    }
    return 0;
}

#endif
