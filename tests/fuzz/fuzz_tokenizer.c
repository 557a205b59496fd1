/*
 * Fuzz target for svc/tokenizer.h, both encodings on every input:
 *  - round trip: the bytes of the ids, concatenated, are the input with each maximal invalid
 *    UTF-8 subpart replaced by U+FFFD, computed here by an independent reference decoder written
 *    from the WHATWG Encoding standard (bytes needed, lower and upper boundary);
 *  - every id is inside the vocabulary, svc_tokenizer_count gives the same number as encode, and
 *    encoding the sanitized text gives the same ids as encoding the raw bytes;
 *  - a prefix cut at a byte chosen by the input encodes without error and round-trips too.
 * Identity with tiktoken itself is tests/integration/tokenizer.test.mjs's job (differential).
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/err.h"
#include "svc/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* WHATWG UTF-8 decode with replacement, re-encoded as UTF-8; out has room for 3 * len bytes. */
static size_t ref_sanitize(const uint8_t *s, size_t len, uint8_t *out)
{
    size_t o = 0, i = 0;
    unsigned cp = 0, needed = 0, seen = 0, lower = 0x80, upper = 0xbf;

    for (;;) {
        unsigned b;
        if (i == len) {
            if (needed != 0) {
                out[o++] = 0xef;
                out[o++] = 0xbf;
                out[o++] = 0xbd;
            }
            return o;
        }
        b = s[i];
        if (needed == 0) {
            i++;
            if (b <= 0x7f) {
                out[o++] = (uint8_t)b;
                continue;
            }
            if (b >= 0xc2 && b <= 0xdf) {
                needed = 1;
                cp = b & 0x1f;
            } else if (b >= 0xe0 && b <= 0xef) {
                lower = b == 0xe0 ? 0xa0 : 0x80;
                upper = b == 0xed ? 0x9f : 0xbf;
                needed = 2;
                cp = b & 0xf;
            } else if (b >= 0xf0 && b <= 0xf4) {
                lower = b == 0xf0 ? 0x90 : 0x80;
                upper = b == 0xf4 ? 0x8f : 0xbf;
                needed = 3;
                cp = b & 0x7;
            } else {
                out[o++] = 0xef;
                out[o++] = 0xbf;
                out[o++] = 0xbd;
            }
            continue;
        }
        if (b < lower || b > upper) { /* the byte is looked at again as a new start */
            cp = needed = seen = 0;
            lower = 0x80;
            upper = 0xbf;
            out[o++] = 0xef;
            out[o++] = 0xbf;
            out[o++] = 0xbd;
            continue;
        }
        i++;
        lower = 0x80;
        upper = 0xbf;
        cp = cp << 6 | (b & 0x3f);
        if (++seen != needed)
            continue;
        if (cp < 0x800) {
            out[o++] = (uint8_t)(0xc0 | cp >> 6);
        } else if (cp < 0x10000) {
            out[o++] = (uint8_t)(0xe0 | cp >> 12);
            out[o++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        } else {
            out[o++] = (uint8_t)(0xf0 | cp >> 18);
            out[o++] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
            out[o++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        }
        out[o++] = (uint8_t)(0x80 | (cp & 0x3f));
        cp = needed = seen = 0;
    }
}

static void check(const struct svc_tokenizer *tk, int enc, const uint8_t *data, size_t size,
                  const uint8_t *want, size_t wantlen)
{
    uint32_t *ids = NULL, *again = NULL;
    size_t n = 0, m = 0, got = 0;

    if (svc_tokenizer_encode(tk, (const char *)data, size, &ids, &n) != SVC_OK)
        abort(); /* inputs here are far too small to run out of memory */
    if (size == 0 && (ids != NULL || n != 0))
        abort();
    if (n > wantlen)
        abort(); /* every token has at least one byte */
    for (size_t i = 0; i < n; i++) {
        const char *b;
        size_t bl;
        if (ids[i] >= svc_tokenizer_vocab_size(tk) ||
            svc_tokenizer_token_bytes(tk, ids[i], &b, &bl) != SVC_OK || bl == 0)
            abort();
        if (got + bl > wantlen || memcmp(want + got, b, bl) != 0) {
            fprintf(stderr, "%s: token %zu (id %u) breaks the round trip at byte %zu\n",
                    svc_tokenizer_encoding_name((enum svc_tokenizer_encoding_e)enc), i, ids[i],
                    got);
            abort();
        }
        got += bl;
    }
    if (got != wantlen)
        abort();
    if (svc_tokenizer_count(tk, (const char *)data, size) != (long long)n)
        abort();
    /* the sanitized text is valid UTF-8: the same ids */
    if (svc_tokenizer_encode(tk, (const char *)want, wantlen, &again, &m) != SVC_OK || m != n ||
        (n > 0 && memcmp(again, ids, n * sizeof(*ids)) != 0))
        abort();
    free(again);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *want = malloc(size * 3 + 1);
    size_t wantlen, cut;

    if (want == NULL)
        return 0;
    wantlen = ref_sanitize(data, size, want);
    for (int e = 0; e < SVC_TOK_ENCODINGS; e++) {
        const struct svc_tokenizer *tk = svc_tokenizer_get((enum svc_tokenizer_encoding_e)e);
        if (tk == NULL)
            abort();
        check(tk, e, data, size, want, wantlen);
        /* a prefix, cut anywhere (inside a character too) */
        cut = size > 0 ? data[0] % (size + 1) : 0;
        wantlen = ref_sanitize(data, cut, want);
        check(tk, e, data, cut, want, wantlen);
        wantlen = ref_sanitize(data, size, want);
    }
    free(want);
    return 0;
}
