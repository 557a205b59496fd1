/*
 * Fuzz target: the request fields auth parses itself (services/auth/authn.c, store.c):
 * Authorization: Basic credentials (auth_parse_basic), the session cookie in a Cookie header
 * (auth_cookie_token) and the username rules (auth_username_valid).
 *
 * Input: byte 0 picks the output buffer size (1..256; allocated exactly, so ASan sees a write
 * past it), the rest is the header value (NUL-terminated copy).
 *
 * Checked against independent references:
 *  - auth_parse_basic accepts exactly "Basic" (any case) + one space + spaces + standard base64
 *    that libsodium decodes whole, to bytes with no NUL and at least one ':' that fit the buffer
 *    with their NUL; then user is the part before the first ':' and pass the rest.
 *  - auth_cookie_token finds the first "chatweb_session=" cookie (after ';' and spaces), takes
 *    its value up to ';' without trailing spaces, and refuses an empty value or one that does not
 *    fit with its NUL; it writes nothing past the buffer.
 *  - auth_username_valid is 1 exactly for 1..64 of [A-Za-z0-9_.@-] not starting with '-' or '.'.
 */

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth.h"

static void fail(const char *what, const char *in)
{
    fprintf(stderr, "fuzz_auth_fields: %s: \"%s\"\n", what, in);
    abort();
}

static void check_basic(const char *h, size_t outlen)
{
    char *out = malloc(outlen), *user = NULL, *pass = NULL;
    unsigned char *bin;
    const char *b64, *end = NULL;
    size_t binlen = 0, hlen = strlen(h);
    int want = 0, rc;

    if (out == NULL)
        abort();
    /* the reference */
    bin = malloc(hlen + 1);
    if (bin == NULL)
        abort();
    if (strncasecmp(h, "Basic ", 6) == 0) {
        b64 = h + 6;
        while (*b64 == ' ')
            b64++;
        /* libsodium 1.0.18 decodes some bytes >= 0x80 as if they were base64 letters (it maps
         * a signed char): the alphabet is checked here first */
        if (strspn(b64, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") ==
                strlen(b64) &&
            sodium_base642bin(bin, hlen, b64, strlen(b64), NULL, &binlen, &end,
                              sodium_base64_VARIANT_ORIGINAL) == 0 &&
            end == b64 + strlen(b64) && memchr(bin, '\0', binlen) == NULL &&
            memchr(bin, ':', binlen) != NULL && binlen < outlen)
            want = 1;
    }
    rc = auth_parse_basic(h, out, outlen, &user, &pass);
    if (rc != SVC_OK && rc != SVC_EINVAL)
        fail("auth_parse_basic: undocumented return value", h);
    /* libsodium refuses non-zero padding bits where RFC 4648 allows a decoder to accept them: a
     * header only we accept is not a finding, as long as what we return is consistent. */
    if (want && rc != SVC_OK)
        fail("auth_parse_basic refused valid credentials", h);
    if (rc == SVC_OK) {
        size_t ul, pl;
        if (user != out || pass <= user || pass >= out + outlen)
            fail("auth_parse_basic: user/pass outside the buffer", h);
        ul = strlen(user);
        pl = strlen(pass);
        if (pass != user + ul + 1 || ul + 1 + pl >= outlen || memchr(user, ':', ul) != NULL)
            fail("auth_parse_basic: user/pass do not split the credentials at the first ':'", h);
        if (want && (ul + 1 + pl != binlen || memcmp(user, bin, ul) != 0 || bin[ul] != ':' ||
                     memcmp(pass, bin + ul + 1, pl) != 0))
            fail("auth_parse_basic: user/pass differ from the decoded credentials", h);
    }
    free(bin);
    free(out);
}

static int ref_cookie(const char *c, char *out, size_t outlen)
{
    const char *name = AUTH_COOKIE_NAME "=";
    size_t nl = strlen(name);
    const char *seg = c;

    for (;;) {
        const char *semi = strchr(seg, ';');
        const char *s = seg;
        size_t segl = semi != NULL ? (size_t)(semi - seg) : strlen(seg);
        while (segl > 0 && *s == ' ') {
            s++;
            segl--;
        }
        if (segl >= nl && strncmp(s, name, nl) == 0) {
            size_t vl = segl - nl;
            while (vl > 0 && s[nl + vl - 1] == ' ')
                vl--;
            if (vl == 0 || vl >= outlen)
                return SVC_ENOTFOUND;
            memcpy(out, s + nl, vl);
            out[vl] = '\0';
            return SVC_OK;
        }
        if (semi == NULL)
            return SVC_ENOTFOUND;
        seg = semi + 1;
    }
}

static void check_cookie(const char *c, size_t outlen)
{
    char *out = malloc(outlen), *ref = malloc(outlen);
    int rc, want;

    if (out == NULL || ref == NULL)
        abort();
    want = ref_cookie(c, ref, outlen);
    rc = auth_cookie_token(c, out, outlen);
    if (rc != want)
        fail(rc == SVC_OK ? "auth_cookie_token found a token the reference does not"
                          : "auth_cookie_token missed the session cookie",
             c);
    if (rc == SVC_OK && strcmp(out, ref) != 0)
        fail("auth_cookie_token returned another value", c);
    free(out);
    free(ref);
}

static void check_username(const char *s)
{
    size_t n = strlen(s);
    int want = n >= 1 && n <= 64 && s[0] != '-' && s[0] != '.';

    for (size_t i = 0; i < n && want; i++)
        want = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
               (s[i] >= '0' && s[i] <= '9') || strchr("_.@-", s[i]) != NULL;
    if (auth_username_valid(s) != want)
        fail(want ? "auth_username_valid refused a valid name" : "auth_username_valid accepted", s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s;
    size_t outlen;

    if (size < 1)
        return 0;
    if (sodium_init() < 0)
        abort();
    outlen = (size_t)data[0] + 1;
    s = malloc(size);
    if (s == NULL)
        abort();
    memcpy(s, data + 1, size - 1);
    s[size - 1] = '\0';
    check_basic(s, outlen);
    check_cookie(s, outlen);
    check_username(s);
    free(s);
    return 0;
}
