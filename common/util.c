#include "svc/util.h"

#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sodium.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

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
    malloc_trim(0);
    return 1;
}
