#ifndef SVC_CRYPTO_H
#define SVC_CRYPTO_H

#include <stddef.h>

#include "svc/err.h"

/*
 * Hashes, password hashes, hex and random bytes for the services, over libsodium, which only
 * the common library's sources include (docs/crypto.md). To compare a secret with a guess, use
 * svc_util_secure_equal, and to wipe one, svc_util_wipe (svc/util.h).
 *
 * Every function here is thread-safe: the streaming states belong to their caller, and none
 * keeps anything between calls. None allocates, except password hashing (the memory its cost
 * asks for, freed before it returns).
 */

#define SVC_CRYPTO_SHA256_BYTES 32     /* a SHA-256 digest */
#define SVC_CRYPTO_BLAKE2B_BYTES 32    /* a svc_crypto_blake2b digest */
#define SVC_CRYPTO_BLAKE2B_KEYBYTES 32 /* its key */
#define SVC_CRYPTO_PWHASH_STRBYTES 128 /* a password hash string, NUL included */

/*
 * A streaming SHA-256 or BLAKE2b computation. Storage the caller owns (a local, a field):
 * opaque bytes sized and aligned for libsodium's state, which common/crypto.c checks at compile
 * time. Nothing to free; svc_util_wipe it afterwards when what it hashed was secret.
 */
struct svc_crypto_sha256_state {
    _Alignas(16) unsigned char opaque[128];
};
struct svc_crypto_blake2b_state {
    _Alignas(64) unsigned char opaque[384];
};

/*
 * Initialises libsodium (it picks the fastest code for this CPU). Call it once in main before
 * the other functions; calling it again does nothing. SVC_OK, or SVC_EINTERNAL when libsodium
 * cannot start (no random source). There is no teardown.
 */
SVC_MUST_CHECK int svc_crypto_setup(void);

/* Writes n random bytes into buf (the kernel's CSPRNG): for keys, tokens and salts. */
void svc_crypto_random(void *buf, size_t n);

/*
 * Writes the 2*n lowercase hex characters of bin[0..n) plus a NUL into out, which must hold
 * 2*n + 1 bytes. The time does not depend on the bytes (fit for secrets).
 */
void svc_crypto_hex(char *out, const void *bin, size_t n);

/*
 * 1 when a[0..n) and b[0..n) are equal, else 0, in a time that depends on n only. For two values
 * of the same public size, such as digests; to check a secret against a guess whose length may
 * differ, use svc_util_secure_equal (svc/util.h).
 */
int svc_crypto_equal(const void *a, const void *b, size_t n);

/* SHA-256 of in[0..len) into out. in may be NULL when len is 0. */
void svc_crypto_sha256(unsigned char out[SVC_CRYPTO_SHA256_BYTES], const void *in, size_t len);

/*
 * SHA-256 in pieces: init, then update with each piece (in may be NULL when len is 0), then
 * final writes the digest of all the pieces. The same digest as svc_crypto_sha256 of them put
 * together. After final the state must be initialised again before another use.
 */
void svc_crypto_sha256_init(struct svc_crypto_sha256_state *st);
void svc_crypto_sha256_update(struct svc_crypto_sha256_state *st, const void *in, size_t len);
void svc_crypto_sha256_final(struct svc_crypto_sha256_state *st,
                             unsigned char out[SVC_CRYPTO_SHA256_BYTES]);

/*
 * BLAKE2b of in[0..len) with a SVC_CRYPTO_BLAKE2B_BYTES output, keyed with key (a MAC, or a hash
 * an outsider cannot predict), or unkeyed when key is NULL. libsodium's crypto_generichash.
 * in may be NULL when len is 0.
 */
void svc_crypto_blake2b(unsigned char out[SVC_CRYPTO_BLAKE2B_BYTES], const void *in, size_t len,
                        const unsigned char key[SVC_CRYPTO_BLAKE2B_KEYBYTES]);

/* svc_crypto_blake2b in pieces, with the same rules as the SHA-256 ones. */
void svc_crypto_blake2b_init(struct svc_crypto_blake2b_state *st,
                             const unsigned char key[SVC_CRYPTO_BLAKE2B_KEYBYTES]);
void svc_crypto_blake2b_update(struct svc_crypto_blake2b_state *st, const void *in, size_t len);
void svc_crypto_blake2b_final(struct svc_crypto_blake2b_state *st,
                              unsigned char out[SVC_CRYPTO_BLAKE2B_BYTES]);

/*
 * Hashes a password for storage: an argon2id string ("$argon2id$v=19$m=...,t=...,p=1$salt$hash",
 * libsodium's crypto_pwhash_str, random salt) with ops passes over mem bytes, written with its
 * NUL into out. It takes the CPU time and memory that cost asks for, on the calling thread.
 * SVC_OK; SVC_EINVAL when ops or mem is outside argon2id's limits (ops >= 1, mem >= 8 KiB) or the
 * password is too long; SVC_ENOMEM when mem cannot be allocated (out is then "").
 */
SVC_MUST_CHECK int svc_crypto_pwhash(char out[SVC_CRYPTO_PWHASH_STRBYTES], const char *password,
                                     size_t len, unsigned long long ops, size_t mem);

/*
 * 1 when password[0..len) is the one stored (a NUL-terminated string from svc_crypto_pwhash, or
 * an argon2i/argon2id string of another cost), else 0: a wrong password, a stored string that is
 * not such a hash, or no memory for its cost. Costs what the stored hash's cost says.
 */
SVC_MUST_CHECK int svc_crypto_pwhash_verify(const char *stored, const char *password, size_t len);

#endif
