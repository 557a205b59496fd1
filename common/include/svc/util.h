#ifndef SVC_UTIL_H
#define SVC_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "svc/err.h"

/* Small helpers with no better home. All are thread-safe. */

/* Writes 2*nbytes random hex characters plus a NUL into out (getrandom). For secrets. */
void svc_util_random_hex(char *out, size_t nbytes);

/* The same for identifiers that are not secrets (request ids): the bytes come from a per-thread
 * buffer of getrandom output, one system call per 512 bytes. */
void svc_util_id_hex(char *out, size_t nbytes);

/* A pseudo-random number (a per-thread xorshift seeded by getrandom): for spreading load, never
 * for secrets. */
uint32_t svc_util_random_u32(void);

/*
 * Gives the heap memory freed since to the kernel (malloc_trim), at most once per
 * SVC_UTIL_HEAP_TRIM_EVERY_MS in the process: 1 when it did, 0 when it was too soon. For the end of
 * a burst: a crowd of slow clients' stream queues and meters are freed in many small pieces on the
 * loop threads' arenas, which glibc keeps otherwise (40 MiB after 500 slow clients left, chat.test
 * "500 slow clients").
 */
#define SVC_UTIL_HEAP_TRIM_EVERY_MS 200
int svc_util_heap_trim(void);

/* The same without the rate limit, for the one trim at the very end of a crowd: a trim refused
 * there because another ran a moment earlier, mid-departure, would leave the rest of the crowd's
 * memory with glibc (chat.test "500 slow clients" gave back 50 % instead of 65-80 %). */
void svc_util_heap_trim_now(void);

/* Writes a random UUIDv4 (36 characters plus NUL) into out[37]; an identifier, not a secret
 * (the bytes of svc_util_id_hex). */
void svc_util_uuid4(char out[37]);

/*
 * 1 when the two byte strings are equal, else 0. Compares keyed BLAKE2b digests of both (the key
 * is random per process), so the time depends on each input's own length only: never on where
 * they differ, nor on how the lengths compare (a secret's length does not leak). NULL is allowed
 * with a length of 0. Thread-safe.
 */
int svc_util_secure_equal(const void *a, size_t alen, const void *b, size_t blen);

/*
 * Decodes standard base64 (RFC 4648, with padding) into out[outlen]. Returns the decoded length,
 * or SVC_EINVAL on bad input / SVC_ETOOLARGE when out is too small. out is NUL-terminated.
 */
long svc_util_base64_decode(const char *in, size_t inlen, char *out, size_t outlen);

/* 1 when s[0..len) is valid UTF-8 (no overlongs, no surrogates, max U+10FFFF). */
int svc_util_utf8_valid(const char *s, size_t len);

/*
 * Cuts s (a NUL-terminated string that was valid UTF-8 before a byte-wise truncation, such as
 * snprintf's) back to its last complete character, in place: a text cut in the middle of a
 * character would otherwise be refused by every JSON encoder. Returns the new length.
 */
size_t svc_util_utf8_trim_end(char *s);

/*
 * Copies the string src into dst[size] (size > 0), cut to size - 1 bytes, always NUL-terminated:
 * snprintf(dst, size, "%s", src) without the formatting, which cost about 500 instructions per
 * copy on the proxy's request path. Returns the length written. src must not be NULL.
 */
size_t svc_util_str_copy(char *dst, size_t size, const char *src);

/* The value of a hex digit (either case), or -1 when c is none. Inline: the HTTP parser uses it
 * without linking the rest of this module (its fuzz target is built alone). */
static inline int svc_util_hex_value(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Writes v in decimal at p (room for 20 bytes), no NUL: its length. For hot paths where
 * snprintf's thousands of instructions show (RESP, the lease journal); inline so that a fuzz
 * target built alone has it. */
static inline size_t svc_util_put_u64(char *p, uint64_t v)
{
    char tmp[20];
    size_t n = 0;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        p[i] = tmp[n - 1 - i];
    return n;
}

/* Zeroes n bytes of p in a way the compiler may not drop (secrets leaving scope). */
void svc_util_wipe(void *p, size_t n);

/* Milliseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t svc_util_wallclock_ms(void);

/* A set of IPv4 and IPv6 networks, such as TRUSTED_PROXIES: at most SVC_UTIL_CIDRS_MAX. */
#define SVC_UTIL_CIDRS_MAX 32
struct svc_util_cidr {
    int family;             /* AF_INET or AF_INET6 */
    unsigned bits;          /* prefix length: 0..32 or 0..128 */
    unsigned char addr[16]; /* network byte order; the first 4 bytes for AF_INET */
};
struct svc_util_cidrs {
    size_t n;
    struct svc_util_cidr net[SVC_UTIL_CIDRS_MAX];
};

/*
 * Parses a comma-separated list of networks ("127.0.0.0/8, ::1, 10.1.0.0/16"; an address without
 * "/bits" is one host) into *out, replacing what it held. An empty list is an empty set. On a bad
 * item (not an address, bits out of range, bits set beyond the prefix, more than
 * SVC_UTIL_CIDRS_MAX items) writes one line naming it into err and returns SVC_EINVAL; *out is
 * then empty. Thread-safe.
 */
int svc_util_cidrs_parse(struct svc_util_cidrs *out, const char *list, char *err,
                         size_t errlen) SVC_MUST_CHECK;

struct sockaddr;

/* 1 when the address sa (AF_INET or AF_INET6; an IPv4-mapped IPv6 address counts as its IPv4
 * address) is inside one of the networks of set, else 0 (also for NULL or another family). */
int svc_util_cidrs_match(const struct svc_util_cidrs *set, const struct sockaddr *sa);

#endif
