#include "svc/crypto.h"

#include <sodium.h>

/* The header's sizes are libsodium's, and its states hold libsodium's (size and alignment). */
_Static_assert(SVC_CRYPTO_SHA256_BYTES == crypto_hash_sha256_BYTES, "SHA-256 size");
_Static_assert(SVC_CRYPTO_BLAKE2B_BYTES == crypto_generichash_BYTES, "BLAKE2b size");
_Static_assert(SVC_CRYPTO_BLAKE2B_KEYBYTES == crypto_generichash_KEYBYTES, "BLAKE2b key size");
_Static_assert(SVC_CRYPTO_PWHASH_STRBYTES == crypto_pwhash_STRBYTES, "password hash size");
_Static_assert(sizeof(struct svc_crypto_sha256_state) >= sizeof(crypto_hash_sha256_state),
               "SHA-256 state too small");
_Static_assert(_Alignof(struct svc_crypto_sha256_state) >= _Alignof(crypto_hash_sha256_state),
               "SHA-256 state under-aligned");
_Static_assert(sizeof(struct svc_crypto_blake2b_state) >= sizeof(crypto_generichash_state),
               "BLAKE2b state too small");
_Static_assert(_Alignof(struct svc_crypto_blake2b_state) >= _Alignof(crypto_generichash_state),
               "BLAKE2b state under-aligned");

#define SHA256_ST(st) ((crypto_hash_sha256_state *)(void *)(st)->opaque)
#define BLAKE2B_ST(st) ((crypto_generichash_state *)(void *)(st)->opaque)

/* libsodium reads nothing when a length is 0, but wants a valid pointer all the same. */
static const unsigned char *bytes(const void *in)
{
    static const unsigned char empty[1];

    return in != NULL ? in : empty;
}

int svc_crypto_setup(void)
{
    /* 0 the first time, 1 when it had run already, -1 on failure */
    return sodium_init() < 0 ? SVC_EINTERNAL : SVC_OK;
}

void svc_crypto_random(void *buf, size_t n)
{
    randombytes_buf(buf, n);
}

void svc_crypto_hex(char *out, const void *bin, size_t n)
{
    sodium_bin2hex(out, 2 * n + 1, bytes(bin), n);
}

int svc_crypto_equal(const void *a, const void *b, size_t n)
{
    return sodium_memcmp(bytes(a), bytes(b), n) == 0;
}

void svc_crypto_sha256(unsigned char out[SVC_CRYPTO_SHA256_BYTES], const void *in, size_t len)
{
    crypto_hash_sha256(out, bytes(in), (unsigned long long)len);
}

void svc_crypto_sha256_init(struct svc_crypto_sha256_state *st)
{
    crypto_hash_sha256_init(SHA256_ST(st));
}

void svc_crypto_sha256_update(struct svc_crypto_sha256_state *st, const void *in, size_t len)
{
    crypto_hash_sha256_update(SHA256_ST(st), bytes(in), (unsigned long long)len);
}

void svc_crypto_sha256_final(struct svc_crypto_sha256_state *st,
                             unsigned char out[SVC_CRYPTO_SHA256_BYTES])
{
    crypto_hash_sha256_final(SHA256_ST(st), out);
}

/* crypto_generichash fails only on sizes outside BLAKE2b's, and ours are fixed inside them. */
void svc_crypto_blake2b(unsigned char out[SVC_CRYPTO_BLAKE2B_BYTES], const void *in, size_t len,
                        const unsigned char key[SVC_CRYPTO_BLAKE2B_KEYBYTES])
{
    (void)crypto_generichash(out, SVC_CRYPTO_BLAKE2B_BYTES, bytes(in), (unsigned long long)len, key,
                             key != NULL ? SVC_CRYPTO_BLAKE2B_KEYBYTES : 0);
}

void svc_crypto_blake2b_init(struct svc_crypto_blake2b_state *st,
                             const unsigned char key[SVC_CRYPTO_BLAKE2B_KEYBYTES])
{
    (void)crypto_generichash_init(BLAKE2B_ST(st), key,
                                  key != NULL ? SVC_CRYPTO_BLAKE2B_KEYBYTES : 0,
                                  SVC_CRYPTO_BLAKE2B_BYTES);
}

void svc_crypto_blake2b_update(struct svc_crypto_blake2b_state *st, const void *in, size_t len)
{
    (void)crypto_generichash_update(BLAKE2B_ST(st), bytes(in), (unsigned long long)len);
}

void svc_crypto_blake2b_final(struct svc_crypto_blake2b_state *st,
                              unsigned char out[SVC_CRYPTO_BLAKE2B_BYTES])
{
    (void)crypto_generichash_final(BLAKE2B_ST(st), out, SVC_CRYPTO_BLAKE2B_BYTES);
}

int svc_crypto_pwhash(char out[SVC_CRYPTO_PWHASH_STRBYTES], const char *password, size_t len,
                      unsigned long long ops, size_t mem)
{
    out[0] = '\0';
    if (ops < crypto_pwhash_OPSLIMIT_MIN || ops > crypto_pwhash_OPSLIMIT_MAX ||
        mem < crypto_pwhash_MEMLIMIT_MIN || mem > crypto_pwhash_MEMLIMIT_MAX ||
        len > crypto_pwhash_PASSWD_MAX)
        return SVC_EINVAL;
    /* crypto_pwhash_str is argon2id (crypto_pwhash_ALG_DEFAULT since libsodium 1.0.15): the
     * strings stored before this module existed came from the same call */
    if (crypto_pwhash_str(out, password, (unsigned long long)len, ops, mem) != 0) {
        out[0] = '\0';
        return SVC_ENOMEM;
    }
    return SVC_OK;
}

int svc_crypto_pwhash_verify(const char *stored, const char *password, size_t len)
{
    return crypto_pwhash_str_verify(stored, password, (unsigned long long)len) == 0;
}
