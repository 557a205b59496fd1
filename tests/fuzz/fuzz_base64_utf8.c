/*
 * Fuzz target for svc_util_base64_decode and svc_util_utf8_valid (svc/util.h), both differential:
 *  - base64: accept/reject must match a strict RFC 4648 reference predicate; an accepted input
 *    decodes to exactly 3 bytes per quad minus the pads, re-encodes to the same length, and
 *    decodes again to the same bytes; with a short output buffer the result is SVC_ETOOLARGE
 *    exactly when the decoded bytes plus the NUL do not fit, and nothing is written past outlen;
 *  - UTF-8: svc_util_utf8_valid must agree with a reference built from the Unicode well-formed byte
 *    sequence table (Unicode 15, table 3-7), for the whole input and for every prefix length
 *    chosen by the first byte.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/err.h"
#include "svc/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char b64_alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int in_alpha(unsigned char c)
{
    return c != '\0' && strchr(b64_alpha, c) != NULL;
}

/* Strict RFC 4648: quads of the alphabet, with "x=" or "xx==" padding in the last quad only. */
static int ref_b64_valid(const uint8_t *s, size_t n, size_t *declen)
{
    if (n % 4 != 0)
        return 0;
    *declen = 0;
    for (size_t q = 0; q < n; q += 4) {
        int last = q + 4 == n;
        if (!in_alpha(s[q]) || !in_alpha(s[q + 1]))
            return 0;
        if (in_alpha(s[q + 2]) && in_alpha(s[q + 3])) {
            *declen += 3;
        } else if (last && in_alpha(s[q + 2]) && s[q + 3] == '=') {
            *declen += 2;
        } else if (last && s[q + 2] == '=' && s[q + 3] == '=') {
            *declen += 1;
        } else {
            return 0;
        }
    }
    return 1;
}

static size_t ref_b64_encode(const unsigned char *in, size_t n, char *out)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i += 3) {
        size_t left = n - i;
        unsigned v = (unsigned)in[i] << 16;
        if (left > 1)
            v |= (unsigned)in[i + 1] << 8;
        if (left > 2)
            v |= in[i + 2];
        out[o++] = b64_alpha[(v >> 18) & 63];
        out[o++] = b64_alpha[(v >> 12) & 63];
        out[o++] = left > 1 ? b64_alpha[(v >> 6) & 63] : '=';
        out[o++] = left > 2 ? b64_alpha[v & 63] : '=';
    }
    return o;
}

/* Unicode table 3-7, byte ranges of well-formed sequences. */
static int ref_utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        uint8_t c = s[i];
        size_t need;
        uint8_t lo = 0x80, hi = 0xbf;

        if (c <= 0x7f) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
        } else if (c == 0xe0) {
            need = 2;
            lo = 0xa0;
        } else if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef) {
            need = 2;
        } else if (c == 0xed) {
            need = 2;
            hi = 0x9f;
        } else if (c == 0xf0) {
            need = 3;
            lo = 0x90;
        } else if (c >= 0xf1 && c <= 0xf3) {
            need = 3;
        } else if (c == 0xf4) {
            need = 3;
            hi = 0x8f;
        } else {
            return 0;
        }
        if (n - i - 1 < need)
            return 0;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (size_t k = 2; k <= need; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return 0;
        i += need + 1;
    }
    return 1;
}

static void fuzz_base64(const uint8_t *data, size_t size, size_t small)
{
    size_t full = size / 4 * 3 + 1, declen = 0;
    int valid = ref_b64_valid(data, size, &declen);
    char *out = malloc(full), *enc, *again;
    long n, m;

    if (out == NULL)
        return;
    n = svc_util_base64_decode((const char *)data, size, out, full);
    if (valid != (n >= 0)) {
        fprintf(stderr, "base64: decode = %ld, reference says %s\n", n, valid ? "valid" : "bad");
        abort();
    }
    if (!valid) {
        if (n != SVC_EINVAL)
            abort(); /* a full-size buffer is never too small */
        free(out);
        /* a short buffer must not change a rejection into anything but EINVAL/ETOOLARGE */
        out = malloc(small + 1);
        if (out == NULL)
            return;
        n = svc_util_base64_decode((const char *)data, size, out, small);
        if (n != SVC_EINVAL && n != SVC_ETOOLARGE)
            abort();
        free(out);
        return;
    }
    if ((size_t)n != declen || out[n] != '\0')
        abort();

    /* re-encode, compare lengths, decode again: the same bytes */
    enc = malloc(size + 1);
    again = malloc(full);
    if (enc != NULL && again != NULL) {
        size_t el = ref_b64_encode((const unsigned char *)out, (size_t)n, enc);
        if (el != size)
            abort();
        m = svc_util_base64_decode(enc, el, again, full);
        if (m != n || memcmp(again, out, (size_t)n) != 0)
            abort();
    }
    free(enc);
    free(again);

    /* a short output buffer: exact threshold, and no write past outlen */
    {
        char *shortbuf = malloc(small + 8);
        if (shortbuf != NULL) {
            memset(shortbuf, 0x5a, small + 8);
            m = svc_util_base64_decode((const char *)data, size, shortbuf, small);
            if ((size_t)n + 1 <= small) {
                if (m != n || memcmp(shortbuf, out, (size_t)n + 1) != 0)
                    abort();
            } else if (m != SVC_ETOOLARGE) {
                abort();
            }
            for (size_t k = small; k < small + 8; k++)
                if ((unsigned char)shortbuf[k] != 0x5a)
                    abort();
            free(shortbuf);
        }
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t small = size > 0 ? data[0] % 16 : 0;

    fuzz_base64(data, size, small);

    if (svc_util_utf8_valid((const char *)data, size) != ref_utf8_valid(data, size)) {
        fprintf(stderr, "utf8: svc says %d for %zu bytes\n", !ref_utf8_valid(data, size), size);
        abort();
    }
    if (size > 1) {
        size_t cut = data[0] % size;
        if (svc_util_utf8_valid((const char *)data + 1, cut) != ref_utf8_valid(data + 1, cut))
            abort();
    }
    return 0;
}
