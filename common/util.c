#include "svc/util.h"

#include <arpa/inet.h>
#include <malloc.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/random.h>
#include <time.h>

#include "svc/cfg.h"

static void fill_random(void *buf, size_t n)
{
    size_t got = 0;

    while (got < n) {
        ssize_t r = getrandom((char *)buf + got, n - got, 0);
        if (r > 0)
            got += (size_t)r;
    }
}

/* Random bytes for identifiers (request ids, UUIDs), from a per-thread buffer refilled by
 * getrandom: one system call per ID_POOL bytes instead of one per id, on every request's path.
 * Still the kernel's CSPRNG output, but kept in memory until used: never for secrets. */
#define ID_POOL 512
static void fill_id_random(void *buf, size_t n)
{
    static _Thread_local unsigned char pool[ID_POOL];
    static _Thread_local size_t left;

    if (n > ID_POOL) {
        fill_random(buf, n);
        return;
    }
    if (left < n) {
        fill_random(pool, sizeof(pool));
        left = sizeof(pool);
    }
    memcpy(buf, pool + sizeof(pool) - left, n);
    left -= n; /* each byte is handed out once */
}

static void to_hex(char *out, const unsigned char *raw, size_t n)
{
    static const char hex[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
}

uint32_t svc_util_random_u32(void)
{
    static _Thread_local uint64_t state;
    uint64_t x;

    while (state == 0)
        fill_random(&state, sizeof(state));
    /* xorshift64* (Vigna): fast and good enough to spread requests, not for secrets */
    x = state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    state = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1DULL) >> 32);
}

/* 2*nbytes hex characters plus a NUL of the bytes fill gives; raw is wiped after use. */
static void hex_of(char *out, size_t nbytes, void (*fill)(void *, size_t))
{
    unsigned char raw[64];

    for (size_t done = 0; done < nbytes;) {
        size_t n = nbytes - done < sizeof(raw) ? nbytes - done : sizeof(raw);
        fill(raw, n);
        to_hex(out + 2 * done, raw, n);
        done += n;
    }
    svc_util_wipe(raw, sizeof(raw));
    out[2 * nbytes] = '\0';
}

void svc_util_random_hex(char *out, size_t nbytes)
{
    hex_of(out, nbytes, fill_random);
}

void svc_util_id_hex(char *out, size_t nbytes)
{
    hex_of(out, nbytes, fill_id_random);
}

void svc_util_uuid4(char out[37])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char r[16];
    size_t o = 0;

    fill_id_random(r, sizeof(r));
    r[6] = (unsigned char)((r[6] & 0x0f) | 0x40);
    r[8] = (unsigned char)((r[8] & 0x3f) | 0x80);
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[r[i] >> 4];
        out[o++] = hex[r[i] & 15];
    }
    out[o] = '\0';
}

/* The key of svc_util_secure_equal's digests: random per process, made once. */
static unsigned char eq_key[crypto_generichash_KEYBYTES];
static pthread_once_t eq_once = PTHREAD_ONCE_INIT;

static void eq_key_init(void)
{
    fill_random(eq_key, sizeof(eq_key));
}

int svc_util_secure_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    static const unsigned char empty[1];
    unsigned char da[crypto_generichash_BYTES], db[crypto_generichash_BYTES];
    int eq;

    /*
     * A byte loop would run for min(alen, blen) bytes, so the time of a guess of growing length
     * stops growing at the secret's length. Digests of a fixed size, keyed with a secret the
     * caller never sees, cost one hash of each input in full and one compare of 32 bytes: the
     * time depends on each input's own length only, and the compare on nothing. Two different
     * inputs give equal digests with probability 2^-256.
     */
    pthread_once(&eq_once, eq_key_init);
    crypto_generichash(da, sizeof(da), alen ? a : empty, alen, eq_key, sizeof(eq_key));
    crypto_generichash(db, sizeof(db), blen ? b : empty, blen, eq_key, sizeof(eq_key));
    eq = sodium_memcmp(da, db, sizeof(da)) == 0;
    sodium_memzero(da, sizeof(da));
    sodium_memzero(db, sizeof(db));
    return eq;
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

long svc_util_base64_decode(const char *in, size_t inlen, char *out, size_t outlen)
{
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0, pad = 0;

    if (inlen % 4 != 0)
        return SVC_EINVAL;
    for (size_t i = 0; i < inlen; i++) {
        int v;
        if (in[i] == '=') {
            if (i < inlen - 2)
                return SVC_EINVAL;
            pad++;
            continue;
        }
        if (pad > 0)
            return SVC_EINVAL;
        v = b64_value((unsigned char)in[i]);
        if (v < 0)
            return SVC_EINVAL;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o + 1 >= outlen)
                return SVC_ETOOLARGE;
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    if (outlen == 0)
        return SVC_ETOOLARGE;
    out[o] = '\0';
    return (long)o;
}

size_t svc_util_utf8_trim_end(char *s)
{
    size_t len = strlen(s), i = len, need;
    unsigned char lead;

    /* Back over at most 3 continuation bytes to the lead byte of the last character. */
    while (i > 0 && len - i < 3 && ((unsigned char)s[i - 1] & 0xc0) == 0x80)
        i--;
    if (i == 0)
        return len;
    lead = (unsigned char)s[i - 1];
    need = (lead & 0xe0) == 0xc0 ? 2 : (lead & 0xf0) == 0xe0 ? 3 : (lead & 0xf8) == 0xf0 ? 4 : 0;
    if (need == 0 || len - (i - 1) >= need)
        return len; /* ASCII, complete, or not UTF-8 this function could mend */
    s[i - 1] = '\0';
    return i - 1;
}

size_t svc_util_str_copy(char *dst, size_t size, const char *src)
{
    size_t n = strnlen(src, size - 1);

    memcpy(dst, src, n);
    dst[n] = '\0';
    return n;
}

void svc_util_wipe(void *p, size_t n)
{
    sodium_memzero(p, n);
}

int svc_util_utf8_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;

    while (i < len) {
        unsigned c = s[i];
        size_t n;
        unsigned cp;

        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            n = 1;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + n >= len) /* truncated sequence */
            return 0;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += n + 1;
    }
    return 1;
}

int64_t svc_util_wallclock_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int svc_util_heap_trim(void)
{
    static atomic_ullong last_ms;
    unsigned long long now, last = atomic_load(&last_ms);
    struct timespec ts;

    /* its own clock: util.c stands alone (the fuzz targets link it without loop.c) */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    now = (unsigned long long)ts.tv_sec * 1000 + (unsigned long long)ts.tv_nsec / 1000000;
    if (now - last < SVC_UTIL_HEAP_TRIM_EVERY_MS ||
        !atomic_compare_exchange_strong(&last_ms, &last, now))
        return 0;
    svc_util_heap_trim_now();
    return 1;
}

void svc_util_heap_trim_now(void)
{
    malloc_trim(0);
}

/* ---- networks (TRUSTED_PROXIES) ---- */

/* One item, "addr" or "addr/bits", of len bytes (not NUL-terminated). */
static int cidr_parse_one(struct svc_util_cidr *c, const char *item, size_t len, char *err,
                          size_t errlen)
{
    char text[INET6_ADDRSTRLEN + 8];
    char *slash;
    unsigned max;
    int64_t bits;

    if (len >= sizeof(text)) {
        snprintf(err, errlen, "not an IP address or network: \"%.*s\"", (int)len, item);
        return SVC_EINVAL;
    }
    memcpy(text, item, len);
    text[len] = '\0';
    slash = strchr(text, '/');
    if (slash != NULL)
        *slash = '\0';
    memset(c, 0, sizeof(*c));
    if (inet_pton(AF_INET, text, c->addr) == 1) {
        c->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, text, c->addr) == 1) {
        c->family = AF_INET6;
        max = 128;
    } else {
        snprintf(err, errlen, "not an IP address or network: \"%.*s\"", (int)len, item);
        return SVC_EINVAL;
    }
    bits = max;
    if (slash != NULL && svc_cfg_parse_int(slash + 1, 0, max, &bits) != SVC_OK) {
        snprintf(err, errlen, "prefix length of \"%.*s\" not in 0..%u", (int)len, item, max);
        return SVC_EINVAL;
    }
    c->bits = (unsigned)bits;
    /* 10.1.2.3/8 names a host and a network at once: refused rather than guessed, since this
     * decides whom the services believe. */
    for (unsigned i = c->bits; i < max; i++) {
        if (c->addr[i / 8] & (0x80u >> (i % 8))) {
            snprintf(err, errlen, "\"%.*s\" has bits set after the prefix length", (int)len, item);
            return SVC_EINVAL;
        }
    }
    return SVC_OK;
}

int svc_util_cidrs_parse(struct svc_util_cidrs *out, const char *list, char *err, size_t errlen)
{
    const char *item;
    size_t len;

    out->n = 0;
    while (svc_cfg_list_next(&list, &item, &len)) {
        if (out->n == SVC_UTIL_CIDRS_MAX) {
            snprintf(err, errlen, "more than %d networks", SVC_UTIL_CIDRS_MAX);
            out->n = 0;
            return SVC_EINVAL;
        }
        if (cidr_parse_one(&out->net[out->n], item, len, err, errlen) != SVC_OK) {
            out->n = 0;
            return SVC_EINVAL;
        }
        out->n++;
    }
    return SVC_OK;
}

static int cidr_contains(const struct svc_util_cidr *c, int family, const unsigned char *a)
{
    unsigned full = c->bits / 8, rest = c->bits % 8;

    if (c->family != family || memcmp(c->addr, a, full) != 0)
        return 0;
    return rest == 0 || ((c->addr[full] ^ a[full]) & (0xffu << (8 - rest)) & 0xffu) == 0;
}

int svc_util_cidrs_match(const struct svc_util_cidrs *set, const struct sockaddr *sa)
{
    static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    const unsigned char *a;
    int family;

    if (set == NULL || sa == NULL)
        return 0;
    if (sa->sa_family == AF_INET) {
        family = AF_INET;
        a = (const unsigned char *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
    } else if (sa->sa_family == AF_INET6) {
        family = AF_INET6;
        a = ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr;
        /* A dual-stack listener ([::]:8080) sees IPv4 peers as ::ffff:a.b.c.d: the IPv4 entries
         * must match them too. */
        if (memcmp(a, v4mapped, sizeof(v4mapped)) == 0) {
            family = AF_INET;
            a += sizeof(v4mapped);
        }
    } else {
        return 0;
    }
    for (size_t i = 0; i < set->n; i++)
        if (cidr_contains(&set->net[i], family, a))
            return 1;
    return 0;
}
