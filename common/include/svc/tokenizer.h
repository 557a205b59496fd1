#ifndef SVC_TOKENIZER_H
#define SVC_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "svc/err.h"

/*
 * OpenAI's byte-pair encodings (cl100k_base, o200k_base): the same token ids as tiktoken's
 * encode_ordinary on any input. Special-token text ("<|endoftext|>") is plain text here, as in
 * encode_ordinary. Input is raw bytes: invalid UTF-8 is first replaced by U+FFFD the way a
 * WHATWG/Unicode "maximal subpart" decoder does (what tiktoken sees when a client decodes bytes
 * lossily), then split by the encoding's published pattern and merged by rank.
 *
 * The rank tables are compiled into the library (data/tokenizer/, checked against OpenAI's
 * published SHA-256 at build time) and turned into lookup tables once per process, on first use.
 * A tokenizer is immutable after that: every function here is thread-safe. docs/tokens.md.
 */

enum svc_tokenizer_encoding_e {
    SVC_TOK_CL100K_BASE = 0,
    SVC_TOK_O200K_BASE = 1,
};
#define SVC_TOK_ENCODINGS 2

struct svc_tokenizer;

/* The tokenizer of enc, built on the first call in this process (later calls return the same
 * pointer at no cost). Borrowed: never freed. NULL when out of memory (logged); the next call
 * tries again. Thread-safe. */
const struct svc_tokenizer *svc_tokenizer_get(enum svc_tokenizer_encoding_e enc);

/* Builds every encoding on a detached thread, so a service's first request does not wait for
 * it (tens of ms). Failures are logged; svc_tokenizer_get() still tries again on use. */
void svc_tokenizer_warm(void);

/* "cl100k_base" / "o200k_base" -> *out. SVC_EINVAL for any other name. */
int svc_tokenizer_encoding_from_name(const char *name,
                                     enum svc_tokenizer_encoding_e *out) SVC_MUST_CHECK;

/* The encoding's name ("cl100k_base"); "unknown" for a value out of range. */
const char *svc_tokenizer_encoding_name(enum svc_tokenizer_encoding_e enc);

/*
 * Encodes text[0..len) into a new array of token ids: *ids (caller frees with free()) and *n.
 * len 0 gives *ids == NULL and *n == 0. SVC_ENOMEM on allocation failure (nothing to free).
 * (SVC_EINTERNAL, logged, would mean PCRE2 failed a match: the patterns give it no reason to.)
 * Cost: O(len) for the split, O(n log n) for a piece of n bytes that is not one token; memory
 * for a long piece is about 24 bytes per byte of that piece, freed before returning.
 */
int svc_tokenizer_encode(const struct svc_tokenizer *tk, const char *text, size_t len,
                         uint32_t **ids, size_t *n) SVC_MUST_CHECK;

/* The number of tokens encode would produce, without keeping the ids: >= 0, or SVC_ENOMEM. */
long long svc_tokenizer_count(const struct svc_tokenizer *tk, const char *text, size_t len);

/* The bytes of token id (borrowed from the tokenizer, not NUL-terminated). SVC_ENOTFOUND for an
 * id outside the encoding. */
int svc_tokenizer_token_bytes(const struct svc_tokenizer *tk, uint32_t id, const char **bytes,
                              size_t *len) SVC_MUST_CHECK;

/* The number of ordinary (non-special) tokens of the encoding: 100256 or 199998. */
size_t svc_tokenizer_vocab_size(const struct svc_tokenizer *tk);

#endif
