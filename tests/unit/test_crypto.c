/*
 * Unit tests of svc/crypto.h: SHA-256 against FIPS 180-2's vectors (one-shot and in pieces),
 * BLAKE2b-256 keyed and unkeyed against Python's hashlib (an implementation apart from libsodium's:
 * hashlib.blake2b(m, key=bytes(range(32)), digest_size=32)), argon2id strings from the reference
 * implementation's tests (P-H-C/phc-winner-argon2 src/test.c) and our own hash -> verify, hex,
 * the fixed-size compare and random bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/crypto.h"
#include "svc/err.h"
#include "test.h"

static void hex_of(char *out, const unsigned char *d, size_t n)
{
    svc_crypto_hex(out, d, n);
}

/* ---- SHA-256 ---------------------------------------------------------------------------- */

static const struct {
    const char *msg;
    const char *hex;
} sha256_vectors[] = {
    {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
    {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
     "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
};
#define MILLION_A_SHA256 "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"

static void test_sha256_vectors(void)
{
    unsigned char d[SVC_CRYPTO_SHA256_BYTES];
    char hex[2 * SVC_CRYPTO_SHA256_BYTES + 1];
    char *a;

    for (size_t i = 0; i < sizeof(sha256_vectors) / sizeof(sha256_vectors[0]); i++) {
        svc_crypto_sha256(d, sha256_vectors[i].msg, strlen(sha256_vectors[i].msg));
        hex_of(hex, d, sizeof(d));
        T_EQ_STR(hex, sha256_vectors[i].hex);
    }
    svc_crypto_sha256(d, NULL, 0); /* NULL is allowed with a length of 0 */
    hex_of(hex, d, sizeof(d));
    T_EQ_STR(hex, sha256_vectors[0].hex);

    a = malloc(1000000);
    T_ASSERT(a != NULL);
    memset(a, 'a', 1000000);
    svc_crypto_sha256(d, a, 1000000);
    hex_of(hex, d, sizeof(d));
    T_EQ_STR(hex, MILLION_A_SHA256);
    free(a);
}

/* The same digests fed in pieces of every awkward size around the 64-byte block. */
static void test_sha256_streaming(void)
{
    static const size_t sizes[] = {1, 0, 63, 64, 65, 127, 128, 129, 1000, 4096, 7};
    struct svc_crypto_sha256_state st;
    unsigned char d[SVC_CRYPTO_SHA256_BYTES];
    char hex[2 * SVC_CRYPTO_SHA256_BYTES + 1];
    char chunk[4096];
    size_t left = 1000000, k = 0;

    for (size_t i = 0; i < sizeof(sha256_vectors) / sizeof(sha256_vectors[0]); i++) {
        const char *m = sha256_vectors[i].msg;
        size_t len = strlen(m);
        svc_crypto_sha256_init(&st);
        for (size_t j = 0; j < len; j++)
            svc_crypto_sha256_update(&st, m + j, 1);
        svc_crypto_sha256_update(&st, NULL, 0);
        svc_crypto_sha256_final(&st, d);
        hex_of(hex, d, sizeof(d));
        T_EQ_STR(hex, sha256_vectors[i].hex);
    }

    memset(chunk, 'a', sizeof(chunk));
    svc_crypto_sha256_init(&st);
    while (left > 0) {
        size_t n = sizes[k++ % (sizeof(sizes) / sizeof(sizes[0]))];
        if (n > left)
            n = left;
        svc_crypto_sha256_update(&st, chunk, n);
        left -= n;
    }
    svc_crypto_sha256_final(&st, d);
    hex_of(hex, d, sizeof(d));
    T_EQ_STR(hex, MILLION_A_SHA256);

    /* a state can be initialised again and reused */
    svc_crypto_sha256_init(&st);
    svc_crypto_sha256_update(&st, "ab", 2);
    svc_crypto_sha256_update(&st, "c", 1);
    svc_crypto_sha256_final(&st, d);
    hex_of(hex, d, sizeof(d));
    T_EQ_STR(hex, sha256_vectors[1].hex);
}

/* ---- BLAKE2b ---------------------------------------------------------------------------- */

static const struct {
    size_t len; /* of the message: the first len bytes of 0, 1, 2, ... ("abc" when len is 3) */
    const char *keyed, *unkeyed;
} blake2b_vectors[] = {
    {0, "4e51e7a913fc80137da52880fecca175bf81e117d5c68126dc2774033517ea0d",
     "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8"},
    {3, "d63a32d3e44738d7907f964316c241adaba0abfeabc32349677578a15a203f7f",
     "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319"},
    {256, "b42be36ea26392f67d1d3706ffa72b6c61c2ff38e1fabd9a49e154d54b967d83",
     "39a7eb9fedc19aabc83425c6755dd90e6f9d0c804964a1f4aaeea3b9fb599835"},
};

static void blake2b_msg(unsigned char *m, size_t len)
{
    if (len == 3) {
        memcpy(m, "abc", 3);
        return;
    }
    for (size_t i = 0; i < len; i++)
        m[i] = (unsigned char)i;
}

static void blake2b_key(unsigned char key[SVC_CRYPTO_BLAKE2B_KEYBYTES])
{
    for (size_t i = 0; i < SVC_CRYPTO_BLAKE2B_KEYBYTES; i++)
        key[i] = (unsigned char)i;
}

static void test_blake2b_vectors(void)
{
    unsigned char key[SVC_CRYPTO_BLAKE2B_KEYBYTES], m[256], d[SVC_CRYPTO_BLAKE2B_BYTES];
    char hex[2 * SVC_CRYPTO_BLAKE2B_BYTES + 1];

    blake2b_key(key);
    for (size_t i = 0; i < sizeof(blake2b_vectors) / sizeof(blake2b_vectors[0]); i++) {
        size_t len = blake2b_vectors[i].len;
        blake2b_msg(m, len);
        svc_crypto_blake2b(d, m, len, key);
        hex_of(hex, d, sizeof(d));
        T_EQ_STR(hex, blake2b_vectors[i].keyed);
        svc_crypto_blake2b(d, m, len, NULL);
        hex_of(hex, d, sizeof(d));
        T_EQ_STR(hex, blake2b_vectors[i].unkeyed);
    }
    svc_crypto_blake2b(d, NULL, 0, key);
    hex_of(hex, d, sizeof(d));
    T_EQ_STR(hex, blake2b_vectors[0].keyed);
}

/* In pieces (auth's credential digest: a one-byte tag, then the text), across the 128-byte
 * block, equals the one-shot digest of the pieces put together. */
static void test_blake2b_streaming(void)
{
    struct svc_crypto_blake2b_state st;
    unsigned char key[SVC_CRYPTO_BLAKE2B_KEYBYTES], m[256], d[SVC_CRYPTO_BLAKE2B_BYTES];
    unsigned char whole[SVC_CRYPTO_BLAKE2B_BYTES];
    char hex[2 * SVC_CRYPTO_BLAKE2B_BYTES + 1];

    blake2b_key(key);
    blake2b_msg(m, 256);
    for (size_t cut = 0; cut <= 256; cut += 1) {
        svc_crypto_blake2b_init(&st, key);
        svc_crypto_blake2b_update(&st, m, cut);
        svc_crypto_blake2b_update(&st, NULL, 0);
        svc_crypto_blake2b_update(&st, m + cut, 256 - cut);
        svc_crypto_blake2b_final(&st, d);
        hex_of(hex, d, sizeof(d));
        T_EQ_STR(hex, blake2b_vectors[2].keyed);
    }
    svc_crypto_blake2b_init(&st, NULL);
    svc_crypto_blake2b_update(&st, "a", 1);
    svc_crypto_blake2b_update(&st, "bc", 2);
    svc_crypto_blake2b_final(&st, d);
    hex_of(hex, d, sizeof(d));
    T_EQ_STR(hex, blake2b_vectors[1].unkeyed);

    {
        const unsigned char tag = 3;
        const char *cred = "alice:correct horse battery staple";
        unsigned char cat[64];
        svc_crypto_blake2b_init(&st, key);
        svc_crypto_blake2b_update(&st, &tag, 1);
        svc_crypto_blake2b_update(&st, cred, strlen(cred));
        svc_crypto_blake2b_final(&st, d);
        cat[0] = tag;
        memcpy(cat + 1, cred, strlen(cred));
        svc_crypto_blake2b(whole, cat, 1 + strlen(cred), key);
        T_ASSERT(memcmp(d, whole, sizeof(d)) == 0);
    }
}

/* ---- passwords -------------------------------------------------------------------------- */

/* The reference implementation's argon2id v=19 strings for "password" (src/test.c). */
static const char *const ref_hashes[] = {
    "$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
    "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
};

static int verify(const char *stored, const char *pw)
{
    return svc_crypto_pwhash_verify(stored, pw, strlen(pw));
}

static void test_pwhash_reference_strings(void)
{
    for (size_t i = 0; i < sizeof(ref_hashes) / sizeof(ref_hashes[0]); i++) {
        T_EQ_INT(verify(ref_hashes[i], "password"), 1);
        T_EQ_INT(verify(ref_hashes[i], "passwore"), 0);
        T_EQ_INT(verify(ref_hashes[i], "password "), 0);
        T_EQ_INT(verify(ref_hashes[i], ""), 0);
    }
}

/* What auth stores: argon2id with the configured passes and memory in the string (auth's
 * defaults, AUTH_PWHASH_OPS=2 and AUTH_PWHASH_MEM_KIB=19456), a new salt each time. */
static void test_pwhash_roundtrip(void)
{
    static const char pw[] = "correct horse battery staple";
    static const char prefix[] = "$argon2id$v=19$m=19456,t=2,p=1$";
    char h[SVC_CRYPTO_PWHASH_STRBYTES], h2[SVC_CRYPTO_PWHASH_STRBYTES];

    T_EQ_INT(svc_crypto_pwhash(h, pw, strlen(pw), 2, 19456 * 1024), SVC_OK);
    if (strncmp(h, prefix, strlen(prefix)) != 0)
        T_FAIL("hash \"%s\" does not start with \"%s\"", h, prefix);
    T_ASSERT(strlen(h) < sizeof(h));
    T_EQ_INT(verify(h, pw), 1);
    T_EQ_INT(verify(h, "correct horse battery stapl"), 0);
    T_EQ_INT(verify(h, "Correct horse battery staple"), 0);
    T_EQ_INT(svc_crypto_pwhash_verify(h, pw, strlen(pw) - 1), 0);

    T_EQ_INT(svc_crypto_pwhash(h2, pw, strlen(pw), 1, 8192), SVC_OK);
    T_ASSERT(strncmp(h2, "$argon2id$v=19$m=8,t=1,p=1$", 27) == 0);
    T_EQ_INT(verify(h2, pw), 1);
    T_ASSERT(strcmp(h, h2) != 0);
    T_EQ_INT(svc_crypto_pwhash(h2, pw, strlen(pw), 2, 19456 * 1024), SVC_OK);
    T_ASSERT(strcmp(h, h2) != 0); /* another salt */
    T_EQ_INT(verify(h2, pw), 1);

    /* the length is the password's, not strlen's */
    T_EQ_INT(svc_crypto_pwhash(h2, "a\0b", 3, 1, 8192), SVC_OK);
    T_EQ_INT(svc_crypto_pwhash_verify(h2, "a\0b", 3), 1);
    T_EQ_INT(svc_crypto_pwhash_verify(h2, "a\0c", 3), 0);
    T_EQ_INT(verify(h2, "a"), 0);
}

static void test_pwhash_bad_cost(void)
{
    char h[SVC_CRYPTO_PWHASH_STRBYTES];

    memset(h, 'X', sizeof(h));
    T_EQ_INT(svc_crypto_pwhash(h, "pw", 2, 0, 8192), SVC_EINVAL);
    T_EQ_STR(h, "");
    T_EQ_INT(svc_crypto_pwhash(h, "pw", 2, 1, 8191), SVC_EINVAL);
    T_EQ_STR(h, "");
}

static void test_pwhash_malformed_refused(void)
{
    char h[SVC_CRYPTO_PWHASH_STRBYTES];
    const char *good = ref_hashes[0];
    size_t n = strlen(good);
    const char *bad[] = {
        "",
        "password",
        "$argon2id$",
        "$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$",
        "$argon2id$v=19$m=256,t=2,p=1$$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
        "$argon2id$v=19$m=256,t=2,p=0$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
        "$argon2x$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
        "$2b$12$KIXQJKu1bVp5p0V5r7Z8NeQ2Y1yK1ZJ3kq1bP8hX9fV8r0m1fN7iG", /* bcrypt-shaped */
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (verify(bad[i], "password") != 0)
            T_FAIL("stored \"%s\" accepted", bad[i]);
    /* the reference string cut short, or with one character of its hash changed */
    memcpy(h, good, n + 1);
    h[n - 1] = '\0';
    T_EQ_INT(verify(h, "password"), 0);
    memcpy(h, good, n + 1);
    h[n - 1] = h[n - 1] == 'A' ? 'B' : 'A';
    T_EQ_INT(verify(h, "password"), 0);
    memcpy(h, good, n + 1);
    T_EQ_INT(verify(h, "password"), 1);
}

/* ---- hex, compare, random --------------------------------------------------------------- */

static void test_hex(void)
{
    static const unsigned char bin[] = {0x00, 0x01, 0x7f, 0x80, 0xab, 0xcd, 0xef, 0xff};
    char out[2 * sizeof(bin) + 4];

    memset(out, 'X', sizeof(out));
    svc_crypto_hex(out, bin, sizeof(bin));
    T_EQ_STR(out, "00017f80abcdefff");
    T_EQ_INT(out[2 * sizeof(bin) + 1], 'X'); /* nothing past the NUL */

    memset(out, 'X', sizeof(out));
    svc_crypto_hex(out, bin, 0);
    T_EQ_STR(out, "");
    T_EQ_INT(out[1], 'X');
    svc_crypto_hex(out, NULL, 0);
    T_EQ_STR(out, "");

    for (int b = 0; b < 256; b++) {
        unsigned char c = (unsigned char)b;
        char want[3];
        snprintf(want, sizeof(want), "%02x", b);
        svc_crypto_hex(out, &c, 1);
        T_EQ_STR(out, want);
    }
}

static void test_equal(void)
{
    unsigned char a[SVC_CRYPTO_SHA256_BYTES], b[SVC_CRYPTO_SHA256_BYTES];

    svc_crypto_sha256(a, "x", 1);
    memcpy(b, a, sizeof(a));
    T_EQ_INT(svc_crypto_equal(a, b, sizeof(a)), 1);
    b[0] ^= 1;
    T_EQ_INT(svc_crypto_equal(a, b, sizeof(a)), 0);
    b[0] ^= 1;
    b[sizeof(b) - 1] ^= 0x80;
    T_EQ_INT(svc_crypto_equal(a, b, sizeof(a)), 0);
    T_EQ_INT(svc_crypto_equal(a, b, sizeof(a) - 1), 1); /* only n bytes are compared */
    T_EQ_INT(svc_crypto_equal(a, b, 0), 1);
    T_EQ_INT(svc_crypto_equal(NULL, NULL, 0), 1);
}

static void test_random(void)
{
    unsigned char a[32], b[32], zero[32] = {0};
    unsigned char big[4096];
    int seen[256] = {0}, distinct = 0;

    T_EQ_INT(svc_crypto_setup(), SVC_OK);
    T_EQ_INT(svc_crypto_setup(), SVC_OK); /* again: nothing */
    memset(a, 0, sizeof(a));
    memset(b, 0, sizeof(b));
    svc_crypto_random(a, sizeof(a));
    svc_crypto_random(b, sizeof(b));
    T_ASSERT(memcmp(a, b, sizeof(a)) != 0);
    T_ASSERT(memcmp(a, zero, sizeof(a)) != 0);
    svc_crypto_random(a, 0);

    /* 4096 random bytes take nearly every value (a missing one: p < 256 * e^-16) */
    svc_crypto_random(big, sizeof(big));
    for (size_t i = 0; i < sizeof(big); i++)
        if (!seen[big[i]]++)
            distinct++;
    T_ASSERT(distinct >= 250);
}

int main(void)
{
    if (svc_crypto_setup() != SVC_OK) {
        fprintf(stderr, "svc_crypto_setup failed\n");
        return 1;
    }
    T_RUN(test_sha256_vectors);
    T_RUN(test_sha256_streaming);
    T_RUN(test_blake2b_vectors);
    T_RUN(test_blake2b_streaming);
    T_RUN(test_pwhash_reference_strings);
    T_RUN(test_pwhash_roundtrip);
    T_RUN(test_pwhash_bad_cost);
    T_RUN(test_pwhash_malformed_refused);
    T_RUN(test_hex);
    T_RUN(test_equal);
    T_RUN(test_random);
    return 0;
}
