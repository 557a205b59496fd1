/*
 * Unit tests of svc/util.h: base64 (RFC 4648 section 10 vectors, bad padding, a small output
 * buffer), UTF-8 validation (multi-byte, overlongs, surrogates, > U+10FFFF, sequences cut at the
 * end), UUIDv4 format and version bits, secure_equal and random_hex.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* RTLD_NEXT */
#endif
#include <arpa/inet.h>
#include <ctype.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "svc/err.h"
#include "svc/util.h"
#include "test.h"

/* ---- base64 ----------------------------------------------------------------------------- */

static long b64(const char *in, char *out, size_t outlen)
{
    return svc_util_base64_decode(in, strlen(in), out, outlen);
}

static void test_base64_rfc4648_vectors(void)
{
    static const struct {
        const char *enc, *dec;
    } v[] = {
        {"", ""},
        {"Zg==", "f"},
        {"Zm8=", "fo"},
        {"Zm9v", "foo"},
        {"Zm9vYg==", "foob"},
        {"Zm9vYmE=", "fooba"},
        {"Zm9vYmFy", "foobar"},
    };
    char out[64];

    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        long n;
        memset(out, 'X', sizeof(out));
        n = b64(v[i].enc, out, sizeof(out));
        if (n != (long)strlen(v[i].dec))
            T_FAIL("decode(\"%s\") = %ld, want %zu", v[i].enc, n, strlen(v[i].dec));
        T_EQ_STR(out, v[i].dec); /* NUL-terminated */
    }
}

static void test_base64_binary(void)
{
    char out[16];
    long n;

    n = b64("AP8A", out, sizeof(out));
    T_EQ_INT(n, 3);
    T_ASSERT(memcmp(out, "\x00\xff\x00", 4) == 0);
    n = b64("+/+/", out, sizeof(out));
    T_EQ_INT(n, 3);
    T_ASSERT(memcmp(out, "\xfb\xff\xbf", 4) == 0);
    /* the Basic-auth shape: "user:pa:ss" */
    n = b64("dXNlcjpwYTpzcw==", out, sizeof(out));
    T_EQ_INT(n, 10);
    T_EQ_STR(out, "user:pa:ss");
    /* inlen is honoured: bytes past it are not read */
    n = svc_util_base64_decode("Zm9v!!!!", 4, out, sizeof(out));
    T_EQ_INT(n, 3);
    T_EQ_STR(out, "foo");
}

static void test_base64_bad_input(void)
{
    static const char *bad[] = {
        "Zg=", /* length not a multiple of 4 */
        "Zg",        "Z",    "Zm9vY",
        "Z===",              /* three pads */
        "====",      "Zg=a", /* data after a pad */
        "Zm9v=Zg=",          /* pad in the middle */
        "Zg==Zg==",          /* padding inside the stream */
        "Zm9v====",  "=Zm9", "Zm=v",
        "Zm9v Zg==",         /* whitespace */
        "Zm9\n",     "Zm9-", /* base64url alphabet */
        "Zm9_",      "Z@==", "Zm9v\x80\x80\x80\x80",
    };
    char out[64];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        long n = b64(bad[i], out, sizeof(out));
        if (n != SVC_EINVAL)
            T_FAIL("decode(\"%s\") = %ld, want SVC_EINVAL", bad[i], n);
    }
    /* an embedded NUL is not base64 either */
    T_EQ_INT(svc_util_base64_decode("Zm\0v", 4, out, sizeof(out)), SVC_EINVAL);
}

static void test_base64_small_out(void)
{
    char out[8];

    /* "foo" needs 3 bytes + NUL */
    memset(out, 'X', sizeof(out));
    T_EQ_INT(b64("Zm9v", out, 4), 3);
    T_EQ_STR(out, "foo");
    memset(out, 'X', sizeof(out));
    T_EQ_INT(b64("Zm9v", out, 3), SVC_ETOOLARGE);
    T_EQ_INT(out[3], 'X'); /* nothing written past outlen */
    T_EQ_INT(b64("Zm9vYmFy", out, 6), SVC_ETOOLARGE);
    T_EQ_INT(out[6], 'X');
    T_EQ_INT(b64("Zm9vYmFy", out, 7), 6);
    T_EQ_INT(b64("Zg==", out, 1), SVC_ETOOLARGE);
    T_EQ_INT(b64("Zg==", out, 2), 1);
    T_EQ_STR(out, "f");
    /* empty input still needs room for the NUL */
    T_EQ_INT(b64("", out, 0), SVC_ETOOLARGE);
    T_EQ_INT(b64("", out, 1), 0);
    T_EQ_STR(out, "");
    /* bad input wins over a small buffer when it is seen first */
    T_EQ_INT(b64("Zg=", out, 0), SVC_EINVAL);
}

static void test_base64_every_byte_roundtrip(void)
{
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned char raw[256];
    char enc[400], dec[300];
    size_t o = 0;
    long n;

    for (int i = 0; i < 256; i++)
        raw[i] = (unsigned char)i;
    for (size_t i = 0; i < sizeof(raw); i += 3) {
        unsigned v = (unsigned)raw[i] << 16;
        size_t left = sizeof(raw) - i;
        if (left > 1)
            v |= (unsigned)raw[i + 1] << 8;
        if (left > 2)
            v |= raw[i + 2];
        enc[o++] = alpha[(v >> 18) & 63];
        enc[o++] = alpha[(v >> 12) & 63];
        enc[o++] = left > 1 ? alpha[(v >> 6) & 63] : '=';
        enc[o++] = left > 2 ? alpha[v & 63] : '=';
    }
    enc[o] = '\0';
    n = svc_util_base64_decode(enc, o, dec, sizeof(dec));
    T_EQ_INT(n, 256);
    T_ASSERT(memcmp(dec, raw, 256) == 0);
}

/* ---- UTF-8 ---------------------------------------------------------------------------------- */

static int u8(const char *s)
{
    return svc_util_utf8_valid(s, strlen(s));
}

/* A string cut by snprintf mid-character is mended to its last whole character. */
static void test_utf8_trim_end(void)
{
    static const struct {
        const char *in;
        const char *out;
    } cases[] = {
        {"", ""},
        {"abc", "abc"},
        {"ab\xe4\xbd\xa0", "ab\xe4\xbd\xa0"},         /* complete 3-byte */
        {"ab\xe4\xbd", "ab"},                         /* 2 of 3 */
        {"ab\xe4", "ab"},                              /* 1 of 3 */
        {"\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80"},     /* complete 4-byte */
        {"x\xf0\x9f\x98", "x"},                       /* 3 of 4 */
        {"x\xc3", "x"},                                /* 1 of 2 */
        {"x\xc3\xa9", "x\xc3\xa9"},                    /* complete 2-byte */
        {"\xe4\xbd", ""},                              /* nothing left */
        {"a\x80\x80\x80\x80", "a\x80\x80\x80\x80"},   /* not UTF-8: left alone */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[32];
        snprintf(buf, sizeof(buf), "%s", cases[i].in);
        T_EQ_INT(svc_util_utf8_trim_end(buf), strlen(cases[i].out));
        T_EQ_STR(buf, cases[i].out);
        T_ASSERT(svc_util_utf8_valid(buf, strlen(buf)) || i == 10);
    }
    /* what the chat service does: snprintf cuts a long message in the middle of a character */
    {
        static const char full[] = "[x] \xe4\xbd\xa0\xe5\xa5\xbd";
        char small[7];
        memcpy(small, full, sizeof(small) - 1); /* what snprintf leaves: 6 bytes and a NUL */
        small[sizeof(small) - 1] = '\0';
        T_ASSERT(!svc_util_utf8_valid(small, strlen(small)));
        svc_util_utf8_trim_end(small);
        T_EQ_STR(small, "[x] ");
    }
}

/* the same bytes as snprintf(dst, size, "%s", src): cut to size - 1, always terminated */
static void test_str_copy(void)
{
    char small[4], big[16];

    T_EQ_INT(svc_util_str_copy(big, sizeof(big), "gpt-4o"), 6);
    T_EQ_STR(big, "gpt-4o");
    memset(small, 'x', sizeof(small));
    T_EQ_INT(svc_util_str_copy(small, sizeof(small), "abcdef"), 3);
    T_EQ_STR(small, "abc");
    T_EQ_INT(svc_util_str_copy(small, sizeof(small), ""), 0);
    T_EQ_STR(small, "");
    T_EQ_INT(svc_util_str_copy(small, 1, "abc"), 0);
    T_EQ_STR(small, "");
}

static void test_wipe(void)
{
    char secret[16] = "sk-secret-value";
    svc_util_wipe(secret, sizeof(secret));
    for (size_t i = 0; i < sizeof(secret); i++)
        T_EQ_INT(secret[i], 0);
}

static void test_utf8_valid(void)
{
    static const char *good[] = {
        "",
        "plain ASCII \x01\x7f",
        "\xc3\xa9",         /* é U+00E9 */
        "\xc2\x80",         /* U+0080, smallest 2-byte */
        "\xdf\xbf",         /* U+07FF */
        "\xe0\xa0\x80",     /* U+0800, smallest 3-byte */
        "\xe2\x82\xac",     /* € */
        "\xed\x9f\xbf",     /* U+D7FF, just below the surrogates */
        "\xee\x80\x80",     /* U+E000, just above */
        "\xef\xbf\xbf",     /* U+FFFF */
        "\xf0\x90\x80\x80", /* U+10000, smallest 4-byte */
        "\xf0\x9f\x98\x80", /* 😀 */
        "\xf4\x8f\xbf\xbf", /* U+10FFFF, the last code point */
        "mix \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 end",
        "\xe4\xbd\xa0\xe5\xa5\xbd", /* 你好 */
    };

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        if (!u8(good[i]))
            T_FAIL("good[%zu] rejected", i);
    /* NUL is a valid code point when it is inside len */
    T_EQ_INT(svc_util_utf8_valid("a\0b", 3), 1);
    T_EQ_INT(svc_util_utf8_valid(NULL, 0), 1);
}

static void test_utf8_invalid(void)
{
    static const char *bad[] = {
        "\x80", /* lone continuation */
        "\xbf",
        "a\x80z",
        "\xc0\x80",                 /* overlong NUL */
        "\xc0\xaf",                 /* overlong '/' */
        "\xc1\xbf",                 /* overlong U+007F */
        "\xe0\x80\x80",             /* overlong 3-byte */
        "\xe0\x9f\xbf",             /* overlong U+07FF */
        "\xf0\x80\x80\x80",         /* overlong 4-byte */
        "\xf0\x8f\xbf\xbf",         /* overlong U+FFFF */
        "\xed\xa0\x80",             /* U+D800 high surrogate */
        "\xed\xaf\xbf",             /* U+DBFF */
        "\xed\xb0\x80",             /* U+DC00 low surrogate */
        "\xed\xbf\xbf",             /* U+DFFF */
        "\xed\xa0\xbd\xed\xb8\x80", /* CESU-8 surrogate pair */
        "\xf4\x90\x80\x80",         /* U+110000 */
        "\xf5\x80\x80\x80",
        "\xf7\xbf\xbf\xbf",         /* U+1FFFFF */
        "\xf8\x88\x80\x80\x80",     /* 5-byte form */
        "\xfc\x84\x80\x80\x80\x80", /* 6-byte form */
        "\xfe",
        "\xff",
        "\xc3\x28", /* bad continuation */
        "\xe2\x28\xa1",
        "\xe2\x82\x28",
        "\xf0\x28\x8c\xbc",
        "\xf0\x90\x28\xbc",
        "\xf0\x90\x8c\x28",
        "\xc3\xa9\xc3", /* truncated at the end */
        "\xe2\x82",
        "\xe2",
        "\xf0\x9f\x98",
        "\xf0\x9f",
        "\xf0",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (u8(bad[i]))
            T_FAIL("bad[%zu] accepted", i);
}

static void test_utf8_len_cuts_sequence(void)
{
    const char *s = "ab\xe2\x82\xac"; /* "ab€" */

    T_EQ_INT(svc_util_utf8_valid(s, 5), 1);
    T_EQ_INT(svc_util_utf8_valid(s, 4), 0); /* € cut by len, even though the byte after is there */
    T_EQ_INT(svc_util_utf8_valid(s, 3), 0);
    T_EQ_INT(svc_util_utf8_valid(s, 2), 1);
    T_EQ_INT(svc_util_utf8_valid("\xf0\x9f\x98\x80", 3), 0);
}

static void test_utf8_all_two_byte(void)
{
    /* every 2-byte pattern: valid exactly for lead C2..DF and a continuation byte */
    for (int a = 0xc0; a <= 0xdf; a++)
        for (int b = 0; b <= 0xff; b++) {
            char s[2] = {(char)a, (char)b};
            int want = a >= 0xc2 && b >= 0x80 && b <= 0xbf;
            if (svc_util_utf8_valid(s, 2) != want)
                T_FAIL("%02x %02x: got %d, want %d", a, b, !want, want);
        }
}

/* ---- uuid4 ---------------------------------------------------------------------------------- */

static void check_uuid(const char *u)
{
    T_EQ_INT(strlen(u), 36);
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (u[i] != '-')
                T_FAIL("%s: no '-' at %d", u, i);
        } else if (!((u[i] >= '0' && u[i] <= '9') || (u[i] >= 'a' && u[i] <= 'f'))) {
            T_FAIL("%s: not lowercase hex at %d", u, i);
        }
    }
    if (u[14] != '4')
        T_FAIL("%s: version nibble is not 4", u);
    if (strchr("89ab", u[19]) == NULL)
        T_FAIL("%s: variant nibble is not 8, 9, a or b", u);
}

static void test_uuid4_format(void)
{
    char u[37];
    int seen_variant[4] = {0};

    for (int i = 0; i < 2000; i++) {
        memset(u, 'X', sizeof(u));
        svc_util_uuid4(u);
        check_uuid(u);
        seen_variant[strchr("89ab", u[19]) - "89ab"]++;
    }
    /* the two random variant bits do vary */
    for (int i = 0; i < 4; i++)
        T_ASSERT(seen_variant[i] > 0);
}

static void test_uuid4_unique(void)
{
    enum { N = 500 };
    static char u[N][37];

    for (int i = 0; i < N; i++)
        svc_util_uuid4(u[i]);
    for (int i = 0; i < N; i++)
        for (int k = i + 1; k < N; k++)
            if (strcmp(u[i], u[k]) == 0)
                T_FAIL("duplicate uuid %s", u[i]);
}

/* ---- secure_equal --------------------------------------------------------------------------- */

static void test_secure_equal(void)
{
    T_EQ_INT(svc_util_secure_equal("secret", 6, "secret", 6), 1);
    T_EQ_INT(svc_util_secure_equal("secret", 6, "secreT", 6), 0);
    T_EQ_INT(svc_util_secure_equal("secret", 6, "Secret", 6), 0);
    T_EQ_INT(svc_util_secure_equal("secret", 6, "secret!", 7), 0); /* prefix is not equal */
    T_EQ_INT(svc_util_secure_equal("secret!", 7, "secret", 6), 0);
    T_EQ_INT(svc_util_secure_equal("", 0, "", 0), 1);
    T_EQ_INT(svc_util_secure_equal(NULL, 0, NULL, 0), 1);
    T_EQ_INT(svc_util_secure_equal("", 0, "a", 1), 0);
    T_EQ_INT(svc_util_secure_equal("\x80", 1, "\x00", 1), 0); /* high bit counts */
    T_EQ_INT(svc_util_secure_equal("a\0b", 3, "a\0c", 3), 0); /* not a C-string compare */
    T_EQ_INT(svc_util_secure_equal("a\0b", 3, "a\0b", 3), 1);
    /* a length difference of 256 must not wrap into "equal" */
    {
        char a[300], b[300];
        memset(a, 'k', sizeof(a));
        memset(b, 'k', sizeof(b));
        T_EQ_INT(svc_util_secure_equal(a, 44, b, 300), 0);
        T_EQ_INT(svc_util_secure_equal(a, 300, b, 44), 0);
        T_EQ_INT(svc_util_secure_equal(a, 256, b, 0), 0);
    }
}

/*
 * svc_util_secure_equal must not reveal the length of the secret it compares with: a byte loop over
 * min(alen, blen) runs as long as the shorter input, so an attacker who varies the length of
 * his guess sees the time stop growing at the secret's length. The fix compares fixed-size keyed
 * BLAKE2b digests of both inputs (libsodium crypto_generichash), so the work is one hash of each
 * input in full and one 32-byte compare, whatever the lengths. This test watches the calls: it
 * interposes crypto_generichash (an executable's definition wins over libsodium's) and forwards
 * to the real one.
 */
static struct {
    int calls;
    unsigned long long inlen[4];
    size_t outlen[4], keylen[4];
    unsigned char key[4][crypto_generichash_KEYBYTES];
} gh;

int crypto_generichash(unsigned char *out, size_t outlen, const unsigned char *in,
                       unsigned long long inlen, const unsigned char *key, size_t keylen)
{
    int (*real)(unsigned char *, size_t, const unsigned char *, unsigned long long,
                const unsigned char *, size_t);
    int i = gh.calls++;

    if (i < 4) {
        gh.inlen[i] = inlen;
        gh.outlen[i] = outlen;
        gh.keylen[i] = keylen;
        if (key != NULL && keylen <= sizeof(gh.key[i]))
            memcpy(gh.key[i], key, keylen);
    }
    *(void **)&real = dlsym(RTLD_NEXT, "crypto_generichash");
    T_ASSERT(real != NULL);
    return real(out, outlen, in, inlen, key, keylen);
}

static void test_secure_equal_digests(void)
{
    static const char secret[] = "a-24-character-ops-key!!";
    char guess[300];

    memset(guess, 'a', sizeof(guess));
    for (size_t len = 1; len < sizeof(guess); len += 37) {
        memset(&gh, 0, sizeof(gh));
        T_EQ_INT(svc_util_secure_equal(guess, len, secret, strlen(secret)), 0);
        /* one keyed digest of each input, in full, of the same fixed size, with the same key */
        T_EQ_INT(gh.calls, 2);
        T_EQ_INT(gh.inlen[0], len);
        T_EQ_INT(gh.inlen[1], strlen(secret));
        T_EQ_INT(gh.outlen[0], crypto_generichash_BYTES);
        T_EQ_INT(gh.outlen[1], crypto_generichash_BYTES);
        T_ASSERT(gh.keylen[0] >= crypto_generichash_KEYBYTES_MIN);
        T_EQ_INT(gh.keylen[1], gh.keylen[0]);
        T_ASSERT(memcmp(gh.key[0], gh.key[1], gh.keylen[0]) == 0);
    }
    T_EQ_INT(svc_util_secure_equal(secret, strlen(secret), secret, strlen(secret)), 1);
}

/* ---- random_hex ----------------------------------------------------------------------------- */

static void check_hex(const char *s, size_t n)
{
    T_EQ_INT(strlen(s), n);
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            T_FAIL("\"%s\": not lowercase hex at %zu", s, i);
}

static void test_random_hex(void)
{
    char out[200], other[200];

    memset(out, 'X', sizeof(out));
    svc_util_random_hex(out, 16);
    check_hex(out, 32);
    T_EQ_INT(out[33], 'X'); /* nothing past the NUL */

    svc_util_random_hex(out, 0);
    T_EQ_STR(out, "");

    svc_util_random_hex(out, 1);
    check_hex(out, 2);

    svc_util_random_hex(out, 64);
    check_hex(out, 128);

    svc_util_random_hex(out, 16);
    svc_util_random_hex(other, 16);
    T_ASSERT(strcmp(out, other) != 0);
}

/*
 * KNOWN BUG (common/util.c svc_util_random_hex): the header promises 2*nbytes hex characters, but
 * nbytes is silently clamped to 64, so asking for 100 bytes returns only 128 characters.
 */
static void test_bug_random_hex_clamped(void)
{
    char out[256];

    svc_util_random_hex(out, 100);
    check_hex(out, 200);
}

static void test_wallclock(void)
{
    int64_t ms = svc_util_wallclock_ms();
    int64_t s = (int64_t)time(NULL);

    T_ASSERT(ms / 1000 >= s - 2 && ms / 1000 <= s + 2);
    T_ASSERT(svc_util_wallclock_ms() >= ms);
}

/* ---- networks (TRUSTED_PROXIES) ---- */

/* 1 when the address text (IPv4 or IPv6) is inside set */
static int in_set(const struct svc_util_cidrs *set, const char *text)
{
    struct sockaddr_in a4 = {0};
    struct sockaddr_in6 a6 = {0};

    if (inet_pton(AF_INET, text, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        return svc_util_cidrs_match(set, (struct sockaddr *)&a4);
    }
    T_EQ_INT(inet_pton(AF_INET6, text, &a6.sin6_addr), 1);
    a6.sin6_family = AF_INET6;
    return svc_util_cidrs_match(set, (struct sockaddr *)&a6);
}

static void test_cidrs_parse_and_match(void)
{
    struct svc_util_cidrs set;
    char err[128] = "";

    T_EQ_INT(svc_util_cidrs_parse(&set, " 127.0.0.0/8, ::1 ,10.2.0.0/15,fd00::/8,192.0.2.7", err,
                                  sizeof(err)),
             SVC_OK);
    T_EQ_INT(set.n, 5);
    T_EQ_INT(in_set(&set, "127.0.0.1"), 1);
    T_EQ_INT(in_set(&set, "127.255.255.255"), 1);
    T_EQ_INT(in_set(&set, "128.0.0.1"), 0);
    T_EQ_INT(in_set(&set, "::1"), 1);
    T_EQ_INT(in_set(&set, "::2"), 0);
    /* /15: 10.2.x and 10.3.x, not 10.1.x nor 10.4.x (a prefix that ends inside a byte) */
    T_EQ_INT(in_set(&set, "10.2.0.1"), 1);
    T_EQ_INT(in_set(&set, "10.3.255.254"), 1);
    T_EQ_INT(in_set(&set, "10.1.255.255"), 0);
    T_EQ_INT(in_set(&set, "10.4.0.0"), 0);
    T_EQ_INT(in_set(&set, "fd12:3456::1"), 1);
    T_EQ_INT(in_set(&set, "fe80::1"), 0);
    /* an address without /bits is one host */
    T_EQ_INT(in_set(&set, "192.0.2.7"), 1);
    T_EQ_INT(in_set(&set, "192.0.2.8"), 0);
    /* a dual-stack listener sees IPv4 peers as IPv4-mapped IPv6 addresses */
    T_EQ_INT(in_set(&set, "::ffff:127.0.0.1"), 1);
    T_EQ_INT(in_set(&set, "::ffff:8.8.8.8"), 0);
    /* the families never mix otherwise: 7f00::/8 is not 127.0.0.0/8 */
    T_EQ_INT(in_set(&set, "7f00::1"), 0);
    T_EQ_INT(svc_util_cidrs_match(NULL, NULL), 0);

    /* /0 is everyone of its family; an empty list is nobody */
    T_EQ_INT(svc_util_cidrs_parse(&set, "0.0.0.0/0", err, sizeof(err)), SVC_OK);
    T_EQ_INT(in_set(&set, "203.0.113.9"), 1);
    T_EQ_INT(in_set(&set, "2001:db8::1"), 0);
    T_EQ_INT(svc_util_cidrs_parse(&set, "", err, sizeof(err)), SVC_OK);
    T_EQ_INT(set.n, 0);
    T_EQ_INT(in_set(&set, "127.0.0.1"), 0);
    T_EQ_INT(svc_util_cidrs_parse(&set, " , ", err, sizeof(err)), SVC_OK);
    T_EQ_INT(set.n, 0);
}

static void test_cidrs_parse_refuses(void)
{
    const char *bad[] = {"10.0.0/8",    "10.0.0.0/33",  "::/129",      "10.0.0.0/",
                         "10.0.0.0/-1", "10.0.0.0/8x",  "localhost",   "10.1.2.3/8",
                         "fd00::1/8",   "127.0.0.1 /8", "1.2.3.4/08a", "127.0.0.0/8,nope",
                         "[::1]"};
    struct svc_util_cidrs set;
    char err[128], many[64 * 16] = "";

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        set.n = 99;
        if (svc_util_cidrs_parse(&set, bad[i], err, sizeof(err)) != SVC_EINVAL)
            T_FAIL("\"%s\" was accepted", bad[i]);
        T_EQ_INT(set.n, 0);
        T_ASSERT(err[0] != '\0');
    }
    /* the message names the item */
    T_EQ_INT(svc_util_cidrs_parse(&set, "127.0.0.0/8,10.0.0/8", err, sizeof(err)), SVC_EINVAL);
    T_ASSERT(strstr(err, "\"10.0.0/8\"") != NULL);
    T_EQ_INT(svc_util_cidrs_parse(&set, "10.1.2.3/8", err, sizeof(err)), SVC_EINVAL);
    T_ASSERT(strstr(err, "after the prefix") != NULL);

    /* bounded: SVC_UTIL_CIDRS_MAX entries, not one more */
    for (int i = 0; i < SVC_UTIL_CIDRS_MAX; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), "10.0.%d.0/24,", i);
    T_EQ_INT(svc_util_cidrs_parse(&set, many, err, sizeof(err)), SVC_OK);
    T_EQ_INT(set.n, SVC_UTIL_CIDRS_MAX);
    snprintf(many + strlen(many), sizeof(many) - strlen(many), "10.1.0.0/24");
    T_EQ_INT(svc_util_cidrs_parse(&set, many, err, sizeof(err)), SVC_EINVAL);
    T_EQ_INT(set.n, 0);
}

int main(void)
{
    T_RUN(test_base64_rfc4648_vectors);
    T_RUN(test_base64_binary);
    T_RUN(test_base64_bad_input);
    T_RUN(test_base64_small_out);
    T_RUN(test_base64_every_byte_roundtrip);
    T_RUN(test_utf8_valid);
    T_RUN(test_utf8_invalid);
    T_RUN(test_utf8_len_cuts_sequence);
    T_RUN(test_utf8_all_two_byte);
    T_RUN(test_uuid4_format);
    T_RUN(test_uuid4_unique);
    T_RUN(test_secure_equal);
    T_RUN(test_secure_equal_digests);
    T_RUN(test_random_hex);
    T_RUN(test_bug_random_hex_clamped);
    T_RUN(test_wallclock);
    T_RUN(test_utf8_trim_end);
    T_RUN(test_wipe);
    T_RUN(test_str_copy);
    T_RUN(test_cidrs_parse_and_match);
    T_RUN(test_cidrs_parse_refuses);
    return 0;
}
