/*
 * OpenAI's byte-pair encodings, token for token the same as tiktoken's encode_ordinary
 * (svc/tokenizer.h, docs/tokens.md).
 *
 * Three steps per call:
 *  1. sanitize: invalid UTF-8 becomes U+FFFD, one per maximal subpart (WHATWG / Unicode 3.9),
 *     which is what tiktoken sees when a client decodes bytes lossily. Valid input is not copied.
 *  2. split: the encoding's pre-tokenizer pattern (tokenizer_pat.h: tiktoken's pattern with
 *     Unicode 16.0 classes) with PCRE2, JIT-compiled, from one match to the next. The subject is
 *     validated once by step 1, so every match runs with PCRE2_NO_UTF_CHECK (with the check, each
 *     call re-validates the rest of the subject and the split is quadratic).
 *  3. merge: each piece is one token when it is in the vocabulary; otherwise tiktoken's rule:
 *     repeatedly merge the adjacent pair whose concatenation has the lowest rank, leftmost on
 *     ties. Short pieces use tiktoken's own array scan (O(n^2), cache-friendly for n <= 32);
 *     longer ones a linked list of parts plus an indexed min-heap keyed by (rank, start), which
 *     picks the same pair in O(log n): O(n log n) per piece instead of tiktoken's O(n^2).
 *
 * The rank tables are the embedded data/tokenizer/<name>.tiktoken files (tokenizer_data.c, generated
 * by CMake), parsed once per process into a byte-string -> rank hash table on the first
 * svc_tokenizer_get of each encoding. After that a tokenizer is read-only; per-call state (PCRE2
 * match data, merge scratch, the sanitized copy) lives on the caller's stack or heap.
 */

#define PCRE2_CODE_UNIT_WIDTH 8

#include <pcre2.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "svc/log.h"
#include "svc/tokenizer.h"
#include "tokenizer_pat.h"

/* The embedded rank files (tokenizer_data.c); each _end points at a NUL after the file. */
extern const char svc__tok_data_cl100k_base[], svc__tok_data_cl100k_base_end[];
extern const char svc__tok_data_o200k_base[], svc__tok_data_o200k_base_end[];

#define TOK_NONE UINT32_MAX /* "no rank": not in the vocabulary */
#define TOK_RANK_BITS 18    /* a hash slot holds rank + 1 in 18 bits (< 262,144 ranks) ... */
#define TOK_TAG_BITS 14     /* ... and 14 bits of the hash, so most misses skip the memcmp */
#define TOK_RANK_MASK ((1u << TOK_RANK_BITS) - 1)
#define TOK_SHORT_PIECE 32  /* pieces up to this many bytes use the array scan */
#define TOK_FILTER_BITS 21  /* 2^21 bits: 9.5 % false positives with o200k's 200k tokens */
#define TOK_MAX_TOKEN 1024  /* longest token accepted from the data (the longest is 128 bytes) */

static const struct tok_spec {
    const char *name;
    const char *data;
    const char *data_end;
    const char *pattern;
    size_t ranks; /* ordinary tokens the file must hold */
} tok_specs[SVC_TOK_ENCODINGS] = {
    [SVC_TOK_CL100K_BASE] = {"cl100k_base", svc__tok_data_cl100k_base,
                             svc__tok_data_cl100k_base_end, svc__tok_pat_cl100k, 100256},
    [SVC_TOK_O200K_BASE] = {"o200k_base", svc__tok_data_o200k_base, svc__tok_data_o200k_base_end,
                            svc__tok_pat_o200k, 199998},
};

struct svc_tokenizer {
    enum svc_tokenizer_encoding_e enc;
    uint32_t nranks;
    uint32_t maxlen;         /* longest token, in bytes: longer strings are never looked up */
    uint8_t *bytes;          /* every token's bytes, concatenated in rank order */
    uint32_t *off;           /* token r is bytes[off[r] .. off[r + 1]) */
    uint32_t *slots;         /* open addressing: (tag << TOK_RANK_BITS) | (rank + 1); 0 = empty */
    uint32_t mask;           /* slots - 1 (a power of two) */
    uint64_t *filter;        /* one bit per TOK_FILTER_BITS-bit hash of every token of 3+ bytes:
                              * most strings a merge asks about are not tokens, and this 256 KiB
                              * bitmap answers "no" for 9 in 10 of them without touching the
                              * 1-2 MiB table, whose misses cost a cache miss each */
    uint32_t byte_rank[256]; /* the rank of each single byte (all 256 are tokens) */
    uint32_t *pair_rank;     /* [b0 << 8 | b1]: the rank of each 2-byte token, or TOK_NONE. A
                              * 256 KiB array beside the 1-2 MiB hash table: the first lookups of
                              * every merge are pairs, and this keeps them in cache. */
    pcre2_code *re;
    pcre2_match_context *mctx; /* only limits; shared read-only by every thread */
    int jit;                   /* re is JIT-compiled: match with pcre2_jit_match */
};

/* ---- loading ------------------------------------------------------------------------------ */

/*
 * Built tokenizers, published with release ordering once complete. A plain mutex (not
 * pthread_once) guards building so that a build that failed for lack of memory is tried again
 * by the next call, as the header promises; a build that can never succeed (the PCRE2 below is
 * unusable) is remembered in tok_broken and not retried.
 */
static pthread_mutex_t tok_lock = PTHREAD_MUTEX_INITIALIZER;
static struct svc_tokenizer *_Atomic tok_built[SVC_TOK_ENCODINGS];
static int tok_broken[SVC_TOK_ENCODINGS]; /* under tok_lock */

/* 64-bit hash of a short byte string: 8 bytes at a time, multiply-xorshift mixing. */
static inline uint64_t tok_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ull ^ ((uint64_t)n * 0xff51afd7ed558ccdull);
    uint64_t w;

    while (n >= 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        p += 8;
        n -= 8;
    }
    if (n > 0) {
        w = 0;
        memcpy(&w, p, n);
        h = (h ^ w) * 0x94d049bb133111ebull;
        h ^= h >> 31;
    }
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
}

/* The rank of bytes p[0..n), or TOK_NONE. */
static inline uint32_t tok_rank(const struct svc_tokenizer *tk, const uint8_t *p, size_t n)
{
    uint64_t h;
    uint32_t i, tag, s, r;

    if (n == 1)
        return tk->byte_rank[p[0]];
    if (n == 2)
        return tk->pair_rank[p[0] << 8 | p[1]];
    if (n > tk->maxlen)
        return TOK_NONE;
    h = tok_hash(p, n);
    if (!(tk->filter[(h >> 20) & ((1u << (TOK_FILTER_BITS - 6)) - 1)] >> ((h >> 14) & 63) & 1))
        return TOK_NONE;
    i = (uint32_t)h & tk->mask;
    tag = (uint32_t)(h >> (64 - TOK_TAG_BITS));
    while ((s = tk->slots[i]) != 0) {
        if (s >> TOK_RANK_BITS == tag) {
            r = (s & TOK_RANK_MASK) - 1;
            if (tk->off[r + 1] - tk->off[r] == n && memcmp(tk->bytes + tk->off[r], p, n) == 0)
                return r;
        }
        i = (i + 1) & tk->mask;
    }
    return TOK_NONE;
}

static signed char b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return (signed char)(c - 'A');
    if (c >= 'a' && c <= 'z')
        return (signed char)(c - 'a' + 26);
    if (c >= '0' && c <= '9')
        return (signed char)(c - '0' + 52);
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Decodes padded base64 text[0..n) into out; the byte count, or -1 when malformed. */
static long b64_decode(const char *text, size_t n, uint8_t *out)
{
    size_t o = 0;

    if (n == 0 || n % 4 != 0)
        return -1;
    for (size_t i = 0; i < n; i += 4) {
        int last = i + 4 == n;
        signed char a = b64_value((unsigned char)text[i]);
        signed char b = b64_value((unsigned char)text[i + 1]);
        signed char c = b64_value((unsigned char)text[i + 2]);
        signed char d = b64_value((unsigned char)text[i + 3]);
        if (a < 0 || b < 0)
            return -1;
        out[o++] = (uint8_t)(a << 2 | b >> 4);
        if (c < 0) {
            if (!last || text[i + 2] != '=' || text[i + 3] != '=')
                return -1;
            break;
        }
        out[o++] = (uint8_t)((b & 15) << 4 | c >> 2);
        if (d < 0) {
            if (!last || text[i + 3] != '=')
                return -1;
            break;
        }
        out[o++] = (uint8_t)((c & 3) << 6 | d);
    }
    return (long)o;
}

static void tok_free(struct svc_tokenizer *tk)
{
    if (tk == NULL)
        return;
    pcre2_match_context_free(tk->mctx);
    pcre2_code_free(tk->re);
    free(tk->pair_rank);
    free(tk->filter);
    free(tk->slots);
    free(tk->off);
    free(tk->bytes);
    free(tk);
}

/*
 * Parses a .tiktoken file ("<base64> <rank>\n" per token, ranks 0..n-1 in order, as OpenAI
 * publishes them) into tk's tables. SVC_ENOMEM, or SVC_EINTERNAL when the data is not what it
 * must be (it is checked by hash at build time, so that means a broken build).
 */
static int tok_load_ranks(struct svc_tokenizer *tk, const struct tok_spec *sp)
{
    const char *p = sp->data, *end = sp->data_end;
    size_t nslots = 1, used = 0;
    uint32_t r = 0;

    tk->bytes = malloc((size_t)(end - p) / 4 * 3 + 4);
    tk->off = malloc((sp->ranks + 1) * sizeof(*tk->off));
    while (nslots < sp->ranks * 2)
        nslots <<= 1;
    tk->slots = calloc(nslots, sizeof(*tk->slots));
    tk->pair_rank = malloc(65536 * sizeof(*tk->pair_rank));
    tk->filter = calloc((size_t)1 << (TOK_FILTER_BITS - 6), sizeof(*tk->filter));
    if (tk->bytes == NULL || tk->off == NULL || tk->slots == NULL || tk->pair_rank == NULL ||
        tk->filter == NULL)
        return SVC_ENOMEM;
    tk->mask = (uint32_t)(nslots - 1);
    for (int b = 0; b < 256; b++)
        tk->byte_rank[b] = TOK_NONE;
    for (int b = 0; b < 65536; b++)
        tk->pair_rank[b] = TOK_NONE;
    tk->off[0] = 0;

    while (p < end) {
        const char *sp_at = memchr(p, ' ', (size_t)(end - p));
        const char *nl = sp_at != NULL ? memchr(sp_at, '\n', (size_t)(end - sp_at)) : NULL;
        uint64_t v = 0;
        long n;

        if (nl == NULL || r >= sp->ranks)
            goto bad;
        for (const char *d = sp_at + 1; d < nl; d++) {
            if (*d < '0' || *d > '9' || v > UINT32_MAX)
                goto bad;
            v = v * 10 + (uint64_t)(*d - '0');
        }
        if (nl == sp_at + 1 || v != r)
            goto bad;
        n = b64_decode(p, (size_t)(sp_at - p), tk->bytes + used);
        if (n <= 0 || n > TOK_MAX_TOKEN)
            goto bad;
        used += (size_t)n;
        tk->off[r + 1] = (uint32_t)used;
        if ((uint32_t)n > tk->maxlen)
            tk->maxlen = (uint32_t)n;
        if (n == 1) {
            tk->byte_rank[tk->bytes[used - 1]] = r;
        } else if (n == 2) {
            tk->pair_rank[tk->bytes[used - 2] << 8 | tk->bytes[used - 1]] = r;
        } else {
            const uint8_t *tb = tk->bytes + used - n;
            uint64_t h = tok_hash(tb, (size_t)n);
            uint32_t i = (uint32_t)h & tk->mask, tag = (uint32_t)(h >> (64 - TOK_TAG_BITS));
            while (tk->slots[i] != 0)
                i = (i + 1) & tk->mask;
            tk->slots[i] = tag << TOK_RANK_BITS | (r + 1);
            tk->filter[(h >> 20) & ((1u << (TOK_FILTER_BITS - 6)) - 1)] |= 1ull << ((h >> 14) & 63);
        }
        r++;
        p = nl + 1;
    }
    if (r != sp->ranks)
        goto bad;
    for (int b = 0; b < 256; b++)
        if (tk->byte_rank[b] == TOK_NONE)
            goto bad; /* merging relies on every single byte being a token */
    tk->nranks = r;
    return SVC_OK;
bad:
    SVC_LOG_ERR(NULL, "tokenizer", "%s: embedded rank data is malformed at rank %u", sp->name, r);
    return SVC_EINTERNAL;
}

/* Unicode version of the linked PCRE2, as major * 1000 + minor ("14.0.0" -> 14000). */
static int pcre2_unicode_version(char *text, size_t len)
{
    long major = 0, minor = 0;
    char *e;

    if (len < 24 || pcre2_config(PCRE2_CONFIG_UNICODE_VERSION, text) < 0)
        return -1;
    major = strtol(text, &e, 10);
    if (*e == '.')
        minor = strtol(e + 1, NULL, 10);
    return (int)(major * 1000 + minor);
}

static int tok_compile(struct svc_tokenizer *tk, const struct tok_spec *sp)
{
    char ver[64] = "";
    int uv = pcre2_unicode_version(ver, sizeof(ver)), ec;
    PCRE2_SIZE eo;

    /* The patterns add to PCRE2's own \p tables what Unicode gained up to 16.0 (tiktoken's
     * version); newer tables would add letters tiktoken does not know. */
    if (uv < SVC_TOK_PAT_UNICODE_MIN * 1000 || uv > SVC_TOK_PAT_UNICODE_MAX * 1000 + 999) {
        SVC_LOG_ERR(NULL, "tokenizer",
                    "%s: PCRE2's Unicode tables are version %s; the patterns are exact for "
                    "%d.0 to %d.x only (tokenizer_pat.h)",
                    sp->name, ver, SVC_TOK_PAT_UNICODE_MIN, SVC_TOK_PAT_UNICODE_MAX);
        return SVC_EINTERNAL;
    }
    tk->re = pcre2_compile((PCRE2_SPTR)sp->pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                           &ec, &eo, NULL);
    if (tk->re == NULL) {
        PCRE2_UCHAR msg[160];
        if (ec == PCRE2_ERROR_NOMEMORY)
            return SVC_ENOMEM;
        pcre2_get_error_message(ec, msg, sizeof(msg));
        SVC_LOG_ERR(NULL, "tokenizer", "%s: pattern does not compile at offset %zu: %s",
                    sp->name, (size_t)eo, (const char *)msg);
        return SVC_EINTERNAL;
    }
    /* Without JIT (a PCRE2 built without it, or executable memory refused) the interpreter gives
     * the same matches, only slower. */
    tk->jit = pcre2_jit_compile(tk->re, PCRE2_JIT_COMPLETE) == 0;
    tk->mctx = pcre2_match_context_create(NULL);
    if (tk->mctx == NULL)
        return SVC_ENOMEM;
    /* One piece can be the whole input (64 MiB of spaces is one \s+ match after backtracking
     * through \s*[\r\n]+): PCRE2's default limit of 10 million steps would end such a match
     * with an error. Every alternative is linear, so no limit is needed. */
    pcre2_set_match_limit(tk->mctx, UINT32_MAX);
    pcre2_set_depth_limit(tk->mctx, UINT32_MAX);
    return SVC_OK;
}

static struct svc_tokenizer *tok_build(enum svc_tokenizer_encoding_e enc, int *permanent)
{
    const struct tok_spec *sp = &tok_specs[enc];
    struct svc_tokenizer *tk = calloc(1, sizeof(*tk));
    int rc;

    *permanent = 0;
    if (tk == NULL)
        return NULL;
    tk->enc = enc;
    rc = tok_load_ranks(tk, sp);
    if (rc == SVC_OK)
        rc = tok_compile(tk, sp);
    if (rc != SVC_OK) {
        if (rc == SVC_ENOMEM)
            SVC_LOG_ERR(NULL, "tokenizer", "%s: out of memory while loading", sp->name);
        *permanent = rc != SVC_ENOMEM;
        tok_free(tk);
        return NULL;
    }
    return tk;
}

static void *warm_main(void *arg)
{
    (void)arg;
    for (int e = 0; e < SVC_TOK_ENCODINGS; e++)
        if (svc_tokenizer_get((enum svc_tokenizer_encoding_e)e) == NULL)
            SVC_LOG_ERR(NULL, "tokenizer", "cannot load %s",
                        svc_tokenizer_encoding_name((enum svc_tokenizer_encoding_e)e));
    return NULL;
}

void svc_tokenizer_warm(void)
{
    pthread_t th;

    if (pthread_create(&th, NULL, warm_main, NULL) != 0 || pthread_detach(th) != 0)
        SVC_LOG_WARN(NULL, "tokenizer", "cannot warm up: encodings load on first use");
}

const struct svc_tokenizer *svc_tokenizer_get(enum svc_tokenizer_encoding_e enc)
{
    struct svc_tokenizer *tk;
    int permanent;

    if ((unsigned)enc >= SVC_TOK_ENCODINGS)
        return NULL;
    tk = atomic_load_explicit(&tok_built[enc], memory_order_acquire);
    if (tk != NULL)
        return tk;
    pthread_mutex_lock(&tok_lock);
    tk = atomic_load_explicit(&tok_built[enc], memory_order_relaxed);
    if (tk == NULL && !tok_broken[enc]) {
        tk = tok_build(enc, &permanent);
        if (tk != NULL)
            atomic_store_explicit(&tok_built[enc], tk, memory_order_release);
        else if (permanent)
            tok_broken[enc] = 1;
    }
    pthread_mutex_unlock(&tok_lock);
    return tk;
}

int svc_tokenizer_encoding_from_name(const char *name, enum svc_tokenizer_encoding_e *out)
{
    if (name == NULL)
        return SVC_EINVAL;
    for (int e = 0; e < SVC_TOK_ENCODINGS; e++) {
        if (strcmp(name, tok_specs[e].name) == 0) {
            *out = (enum svc_tokenizer_encoding_e)e;
            return SVC_OK;
        }
    }
    return SVC_EINVAL;
}

const char *svc_tokenizer_encoding_name(enum svc_tokenizer_encoding_e enc)
{
    return (unsigned)enc < SVC_TOK_ENCODINGS ? tok_specs[enc].name : "unknown";
}

int svc_tokenizer_token_bytes(const struct svc_tokenizer *tk, uint32_t id, const char **bytes,
                              size_t *len)
{
    if (id >= tk->nranks)
        return SVC_ENOTFOUND;
    *bytes = (const char *)tk->bytes + tk->off[id];
    *len = tk->off[id + 1] - tk->off[id];
    return SVC_OK;
}

size_t svc_tokenizer_vocab_size(const struct svc_tokenizer *tk)
{
    return tk->nranks;
}

/* ---- step 1: invalid UTF-8 -> U+FFFD ------------------------------------------------------- */

/*
 * The sequence at s[0..n) (n >= 1): its length when it is a well-formed UTF-8 character, or
 * minus the length of its maximal subpart (Unicode 3.9, table 3-7) when it is not: the longest
 * prefix of a well-formed sequence, at least 1 byte. A decoder replaces each maximal subpart by
 * one U+FFFD and goes on at the byte after it.
 */
static inline int utf8_seq(const uint8_t *s, size_t n)
{
    uint8_t c = s[0], lo = 0x80, hi = 0xbf;
    int need, k;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        need = 1;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 2;
        if (c == 0xe0)
            lo = 0xa0; /* overlong below U+0800 */
        else if (c == 0xed)
            hi = 0x9f; /* surrogates U+D800..DFFF */
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 3;
        if (c == 0xf0)
            lo = 0x90; /* overlong below U+10000 */
        else if (c == 0xf4)
            hi = 0x8f; /* above U+10FFFF */
    } else {
        return -1; /* continuation byte, C0, C1, F5..FF */
    }
    if (n < 2 || s[1] < lo || s[1] > hi)
        return -1;
    for (k = 2; k <= need; k++)
        if ((size_t)k >= n || s[k] < 0x80 || s[k] > 0xbf)
            return -k;
    return need + 1;
}

/* The length of the longest valid UTF-8 prefix of s[0..n). */
static size_t utf8_valid_prefix(const uint8_t *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        uint64_t w;
        int k;

        if (n - i >= 8) {
            memcpy(&w, s + i, 8);
            if ((w & 0x8080808080808080ull) == 0) {
                i += 8;
                continue;
            }
        }
        k = utf8_seq(s + i, n - i);
        if (k < 0)
            return i;
        i += (size_t)k;
    }
    return n;
}

/*
 * Valid UTF-8 for text[0..len): text itself (*copy = NULL) when it is valid, else a new buffer
 * (*copy, free it) with each maximal invalid subpart replaced by EF BF BD. SVC_ENOMEM.
 */
static int utf8_sanitize(const uint8_t *text, size_t len, const uint8_t **out, size_t *outlen,
                         uint8_t **copy)
{
    size_t good = utf8_valid_prefix(text, len), n = good, o;
    uint8_t *buf;

    *copy = NULL;
    *out = text;
    *outlen = len;
    if (good == len)
        return SVC_OK;
    /* first pass: the exact size, so 64 MiB of bad bytes does not reserve 192 MiB up front */
    for (size_t i = good; i < len;) {
        int k = utf8_seq(text + i, len - i);
        n += k > 0 ? (size_t)k : 3;
        i += (size_t)(k > 0 ? k : -k);
    }
    buf = malloc(n);
    if (buf == NULL)
        return SVC_ENOMEM;
    memcpy(buf, text, good);
    o = good;
    for (size_t i = good; i < len;) {
        int k = utf8_seq(text + i, len - i);
        if (k > 0) {
            memcpy(buf + o, text + i, (size_t)k);
            o += (size_t)k;
            i += (size_t)k;
        } else {
            buf[o++] = 0xef;
            buf[o++] = 0xbf;
            buf[o++] = 0xbd;
            i += (size_t)-k;
        }
    }
    *copy = buf;
    *out = buf;
    *outlen = o;
    return SVC_OK;
}

/* ---- step 3: byte-pair merge ---------------------------------------------------------------- */

/* Where token ids go: an array that grows, or only a count. */
struct tok_out {
    int counting; /* only n is kept */
    uint32_t *ids;
    size_t n;
    size_t cap;
};

static inline int out_push(struct tok_out *o, uint32_t id)
{
    if (o->counting) {
        o->n++;
        return SVC_OK;
    }
    if (o->n == o->cap) {
        uint32_t *ids = realloc(o->ids, o->cap * 2 * sizeof(*ids));
        if (ids == NULL)
            return SVC_ENOMEM;
        o->ids = ids;
        o->cap *= 2;
    }
    o->ids[o->n++] = id;
    return SVC_OK;
}

/* Scratch memory of the heap merge, reused across the pieces of one call. */
struct tok_scratch {
    uint32_t *mem;
    size_t cap; /* pieces of up to cap bytes fit */
};

/* tiktoken's _byte_pair_merge as written, for n <= TOK_SHORT_PIECE; also keeps each part's own
 * token (a merged part is the pair just chosen, whose rank is known), so no lookups at the end. */
static int bpe_small(const struct svc_tokenizer *tk, const uint8_t *p, size_t n,
                     struct tok_out *o)
{
    uint32_t start[TOK_SHORT_PIECE + 1], rank[TOK_SHORT_PIECE + 1], tok[TOK_SHORT_PIECE + 1];
    size_t np = n + 1; /* parts, counting the end sentinel */
    int rc;

    for (size_t i = 0; i + 1 < n; i++) {
        start[i] = (uint32_t)i;
        rank[i] = tk->pair_rank[p[i] << 8 | p[i + 1]];
        tok[i] = tk->byte_rank[p[i]];
    }
    start[n - 1] = (uint32_t)(n - 1);
    rank[n - 1] = TOK_NONE;
    tok[n - 1] = tk->byte_rank[p[n - 1]];
    start[n] = (uint32_t)n;
    rank[n] = TOK_NONE;
    for (;;) {
        uint32_t best = TOK_NONE;
        size_t m = 0;
        for (size_t i = 0; i + 1 < np; i++) {
            if (rank[i] < best) {
                best = rank[i];
                m = i;
            }
        }
        if (best == TOK_NONE)
            break;
        /* parts m and m + 1 merge: the pairs starting at m - 1 and m get new ranks (the pair at
         * m spans to the part after m + 2's start, read before m + 1 is removed) */
        if (m > 0)
            rank[m - 1] = m + 2 < np ? tok_rank(tk, p + start[m - 1], start[m + 2] - start[m - 1])
                                     : TOK_NONE;
        rank[m] = m + 3 < np ? tok_rank(tk, p + start[m], start[m + 3] - start[m]) : TOK_NONE;
        tok[m] = best;
        memmove(start + m + 1, start + m + 2, (np - m - 2) * sizeof(*start));
        memmove(rank + m + 1, rank + m + 2, (np - m - 2) * sizeof(*rank));
        memmove(tok + m + 1, tok + m + 2, (np - m - 2) * sizeof(*tok));
        np--;
    }
    for (size_t i = 0; i + 1 < np; i++)
        if ((rc = out_push(o, tok[i])) != SVC_OK)
            return rc;
    return SVC_OK;
}

/*
 * The same merges for a piece of any length. Parts are named by the offset of their first byte;
 * nxt/prv link them (n is the end sentinel); rank[i] is the rank of part i joined with the part
 * after it. The heap holds every part whose rank is not TOK_NONE, keyed by (rank << 32 | offset):
 * its top is the lowest-ranked pair, the leftmost among equals, exactly the pair tiktoken's scan
 * finds. A merge changes only the ranks of the merged part and of the part before it. Keys live
 * in the heap array itself, four children per node (half the levels of a binary heap, and the
 * four keys share a cache line), so sifting compares neighbouring memory.
 */
struct bpe_heap {
    uint64_t *key;                /* the heap: (rank << 32) | part */
    uint32_t *rank, *nxt, *prv, *pos; /* pos[i]: index of part i in key[], or TOK_NONE */
    uint32_t len;
};

static inline void heap_set(struct bpe_heap *h, uint32_t at, uint64_t key)
{
    h->key[at] = key;
    h->pos[(uint32_t)key] = at;
}

static void heap_up(struct bpe_heap *h, uint32_t at)
{
    uint64_t key = h->key[at];

    while (at > 0) {
        uint32_t parent = (at - 1) / 4;
        if (h->key[parent] <= key)
            break;
        heap_set(h, at, h->key[parent]);
        at = parent;
    }
    heap_set(h, at, key);
}

static void heap_down(struct bpe_heap *h, uint32_t at)
{
    uint64_t key = h->key[at];

    for (;;) {
        uint32_t first = 4 * at + 1, c = first, end = first + 4 < h->len ? first + 4 : h->len;
        if (first >= h->len)
            break;
        for (uint32_t k = first + 1; k < end; k++)
            if (h->key[k] < h->key[c])
                c = k;
        if (h->key[c] >= key)
            break;
        heap_set(h, at, h->key[c]);
        at = c;
    }
    heap_set(h, at, key);
}

/* Gives part i the rank r, adding it to, moving it in or removing it from the heap. */
static void heap_rank(struct bpe_heap *h, uint32_t i, uint32_t r)
{
    uint32_t at = h->pos[i];
    uint64_t key = (uint64_t)r << 32 | i;

    h->rank[i] = r;
    if (at == TOK_NONE) {
        if (r == TOK_NONE)
            return;
        heap_set(h, h->len, key);
        heap_up(h, h->len++);
        return;
    }
    if (r == TOK_NONE) {
        uint64_t last = h->key[--h->len];
        h->pos[i] = TOK_NONE;
        if (at == h->len)
            return;
        heap_set(h, at, last);
        heap_up(h, at);
        heap_down(h, h->pos[(uint32_t)last]);
        return;
    }
    h->key[at] = key;
    heap_up(h, at);
    heap_down(h, h->pos[i]);
}

static int bpe_large(const struct svc_tokenizer *tk, const uint8_t *p, size_t n,
                     struct tok_out *o, struct tok_scratch *sc)
{
    struct bpe_heap h;
    uint32_t i;
    int rc;

    if (n > UINT32_MAX - 1)
        return SVC_ENOMEM; /* offsets are 32-bit; the public bounds keep inputs far below */
    if (sc->cap < n) {
        /* 2 words of heap key and 4 arrays of one word, n + 1 entries each */
        uint32_t *mem = realloc(sc->mem, 6 * (n + 1) * sizeof(*mem));
        if (mem == NULL)
            return SVC_ENOMEM;
        sc->mem = mem;
        sc->cap = n;
    }
    h.key = (uint64_t *)(void *)sc->mem; /* first: malloc's alignment suits uint64_t */
    h.rank = sc->mem + 2 * (n + 1);
    h.nxt = h.rank + (n + 1);
    h.prv = h.nxt + (n + 1);
    h.pos = h.prv + (n + 1);
    h.len = 0;
    for (i = 0; i <= n; i++) {
        h.nxt[i] = i + 1;
        h.prv[i] = i - 1; /* prv[0] is never read */
        h.pos[i] = TOK_NONE;
        h.rank[i] = TOK_NONE;
    }
    /* every pair that is a token, then one bottom-up heapify: O(n) */
    for (i = 0; i + 1 < n; i++) {
        uint32_t r = tok_rank(tk, p + i, 2);
        if (r != TOK_NONE) {
            h.rank[i] = r;
            heap_set(&h, h.len++, (uint64_t)r << 32 | i);
        }
    }
    for (i = h.len / 4 + 1; i-- > 0;)
        if (i < h.len)
            heap_down(&h, i);

    while (h.len > 0) {
        uint32_t a = (uint32_t)h.key[0], b = h.nxt[a], c = h.nxt[b];
        /* part b joins part a: a now ends where c starts */
        heap_rank(&h, b, TOK_NONE);
        h.nxt[a] = c;
        h.prv[c] = a;
        heap_rank(&h, a, c < n ? tok_rank(tk, p + a, h.nxt[c] - a) : TOK_NONE);
        if (a > 0) {
            uint32_t z = h.prv[a];
            heap_rank(&h, z, tok_rank(tk, p + z, c - z));
        }
    }
    for (i = 0; i < n; i = h.nxt[i])
        if ((rc = out_push(o, tok_rank(tk, p + i, h.nxt[i] - i))) != SVC_OK)
            return rc;
    return SVC_OK;
}

static int bpe_piece(const struct svc_tokenizer *tk, const uint8_t *p, size_t n,
                     struct tok_out *o, struct tok_scratch *sc)
{
    uint32_t r = tok_rank(tk, p, n);

    if (r != TOK_NONE) /* most pieces: a whole word that is one token */
        return out_push(o, r);
    if (n <= TOK_SHORT_PIECE)
        return bpe_small(tk, p, n, o);
    return bpe_large(tk, p, n, o, sc);
}

/* ---- step 2: split, and the whole call ------------------------------------------------------ */

static int tok_run(const struct svc_tokenizer *tk, const char *text, size_t len, struct tok_out *o)
{
    const uint8_t *s = NULL;
    uint8_t *copy = NULL;
    pcre2_match_data *md = NULL;
    struct tok_scratch sc = {NULL, 0};
    size_t slen = 0, at = 0;
    int rc;

    rc = utf8_sanitize((const uint8_t *)text, len, &s, &slen, &copy);
    if (rc != SVC_OK)
        goto out;
    /* per call, never shared: match data is written by every match */
    md = pcre2_match_data_create(1, NULL);
    if (md == NULL) {
        rc = SVC_ENOMEM;
        goto out;
    }
    while (at < slen) {
        PCRE2_SIZE *ov;
        int m;

        if (tk->jit)
            m = pcre2_jit_match(tk->re, s, slen, at, 0, md, tk->mctx);
        else
            m = pcre2_match(tk->re, s, slen, at, PCRE2_NO_UTF_CHECK, md, tk->mctx);
        if (m == PCRE2_ERROR_JIT_STACKLIMIT) /* the interpreter keeps its frames on the heap */
            m = pcre2_match(tk->re, s, slen, at, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md,
                            tk->mctx);
        if (m == PCRE2_ERROR_NOMATCH)
            break; /* every character starts a match; tiktoken would drop the rest too */
        if (m < 0) {
            SVC_LOG_ERR(NULL, "tokenizer", "%s: PCRE2 match error %d at offset %zu",
                        tok_specs[tk->enc].name, m, at);
            rc = m == PCRE2_ERROR_NOMEMORY || m == PCRE2_ERROR_HEAPLIMIT ? SVC_ENOMEM
                                                                          : SVC_EINTERNAL;
            goto out;
        }
        ov = pcre2_get_ovector_pointer(md);
        if (ov[1] <= ov[0]) { /* no alternative matches empty; guard the loop anyway */
            at = ov[0] + 1;
            continue;
        }
        rc = bpe_piece(tk, s + ov[0], ov[1] - ov[0], o, &sc);
        if (rc != SVC_OK)
            goto out;
        at = ov[1];
    }
    rc = SVC_OK;
out:
    free(sc.mem);
    pcre2_match_data_free(md);
    free(copy);
    return rc;
}

int svc_tokenizer_encode(const struct svc_tokenizer *tk, const char *text, size_t len,
                         uint32_t **ids, size_t *n)
{
    struct tok_out o = {0, NULL, 0, 0};
    int rc;

    *ids = NULL;
    *n = 0;
    if (len == 0)
        return SVC_OK;
    /* English prose has about 4 bytes per token; the array doubles from there when needed */
    o.cap = len / 4 + 16;
    o.ids = malloc(o.cap * sizeof(*o.ids));
    if (o.ids == NULL)
        return SVC_ENOMEM;
    rc = tok_run(tk, text, len, &o);
    if (rc != SVC_OK) {
        free(o.ids);
        return rc;
    }
    *ids = o.ids;
    *n = o.n;
    return SVC_OK;
}

long long svc_tokenizer_count(const struct svc_tokenizer *tk, const char *text, size_t len)
{
    struct tok_out o = {1, NULL, 0, 0};
    int rc;

    if (len == 0)
        return 0;
    rc = tok_run(tk, text, len, &o);
    return rc == SVC_OK ? (long long)o.n : rc;
}
