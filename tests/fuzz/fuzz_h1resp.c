/*
 * Fuzz target for tools/fake_upstream/fu_h1resp.c (the HTTP/1.1 response parser of the fake's
 * TLS/HTTP/2 front).
 *
 * Input: byte 0 (bit 0: a HEAD request; the rest seeds the chunk sizes), then the bytes of the
 * response. The same bytes are fed three ways (at once, byte by byte, in pseudo-random chunks);
 * the decoded body, the head (status, headers) and the result of the feed and of the end of the
 * connection must be identical. Header names must be lower-case tokens, values free of CR, LF
 * and NUL with no blank at either end; the decoded body is never longer than the input.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fu_h1resp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct run {
    struct fu_h1resp p;
    char *body;
    size_t body_len, body_cap;
    int feed_rc, eof_rc;
};

static int on_body(void *ud, const char *p, size_t n)
{
    struct run *r = ud;

    if (r->body_len + n > r->body_cap)
        abort(); /* the body can never be longer than the input */
    memcpy(r->body + r->body_len, p, n);
    r->body_len += n;
    return 0;
}

static void check_head(const struct fu_h1resp *p)
{
    if (!p->head_done)
        return;
    if (p->status < 100 || p->status > 999 || p->n_headers > FU_H1RESP_MAX_HEADERS)
        abort();
    for (size_t i = 0; i < p->n_headers; i++) {
        const char *n = p->headers[i].name, *v = p->headers[i].value;
        size_t vl = strlen(v);
        if (*n == '\0')
            abort();
        for (; *n != '\0'; n++)
            if ((*n >= 'A' && *n <= 'Z') || *n <= 0x20 || *n == 0x7f || *n == ':')
                abort();
        if (strpbrk(v, "\r\n") != NULL || (vl > 0 && (v[0] == ' ' || v[0] == '\t' ||
                                                      v[vl - 1] == ' ' || v[vl - 1] == '\t')))
            abort();
    }
}

static void run(struct run *r, const uint8_t *d, size_t n, int no_body, int mode, uint8_t seed)
{
    uint32_t x = seed * 2654435761u + 1;

    fu_h1resp_init(&r->p, no_body);
    r->body_len = 0;
    r->feed_rc = 0;
    for (size_t off = 0; off < n && r->feed_rc == 0;) {
        size_t step = n - off;
        if (mode == 1) {
            step = 1;
        } else if (mode == 2) {
            x = x * 1103515245u + 12345u;
            step = 1 + (x >> 16) % 97;
            if (step > n - off)
                step = n - off;
        }
        r->feed_rc = fu_h1resp_feed(&r->p, (const char *)d + off, step, on_body, r);
        off += step;
    }
    r->eof_rc = r->feed_rc == 0 ? fu_h1resp_eof(&r->p) : r->feed_rc;
    check_head(&r->p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct run r[3];
    const uint8_t *d = data + 1;
    size_t n;

    if (size < 1)
        return 0;
    n = size - 1;
    for (int i = 0; i < 3; i++) {
        r[i].body = malloc(n + 1);
        r[i].body_cap = n;
        if (r[i].body == NULL)
            abort();
        run(&r[i], d, n, data[0] & 1, i, data[0]);
    }
    for (int i = 1; i < 3; i++) {
        if (r[i].feed_rc != r[0].feed_rc || r[i].eof_rc != r[0].eof_rc ||
            r[i].p.head_done != r[0].p.head_done)
            abort();
        /* the body decoded before an error may differ in how far it got; after success, not */
        if (r[0].eof_rc == 0 && (r[i].body_len != r[0].body_len ||
                                 memcmp(r[i].body, r[0].body, r[0].body_len) != 0))
            abort();
        if (r[0].p.head_done && (r[i].p.status != r[0].p.status ||
                                 r[i].p.n_headers != r[0].p.n_headers))
            abort();
        for (size_t h = 0; r[0].p.head_done && h < r[0].p.n_headers; h++)
            if (strcmp(r[i].p.headers[h].name, r[0].p.headers[h].name) != 0 ||
                strcmp(r[i].p.headers[h].value, r[0].p.headers[h].value) != 0)
                abort();
    }
    for (int i = 0; i < 3; i++)
        free(r[i].body);
    return 0;
}
