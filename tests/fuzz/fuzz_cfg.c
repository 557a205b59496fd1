/*
 * Fuzz target for the svc/cfg.h value parsers: svc_cfg_parse_bool, svc_cfg_parse_int and
 * svc_cfg_parse_addr. The input (as a C string, cut at the first NUL) is parsed with several
 * ranges and host buffer sizes; byte 0 also picks a host buffer size.
 *
 * Properties checked:
 *  - parse_bool returns -1, 0 or 1, and 0/1 only for the twelve spellings Go accepts;
 *  - parse_int agrees with an independent reference (strtoll's grammar: optional leading
 *    whitespace, optional sign, one or more decimal digits, nothing after; no overflow) and,
 *    when it succeeds, the value is within [min, max]; on failure *out is untouched;
 *  - parse_addr never writes past hostlen, gives a non-empty NUL-terminated host and a port in
 *    0..65535, and agrees with a reference splitter.
 */

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/cfg.h"
#include "svc/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Go ParseInt's base-10 grammar (an optional sign, then digits only; no blanks), computed
 * independently; 1 with *v on success. */
static int ref_int(const char *s, int64_t *v)
{
    int neg = 0, digits = 0;
    uint64_t acc = 0, limit;

    if (*s == '+' || *s == '-')
        neg = *s++ == '-';
    limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; *s >= '0' && *s <= '9'; s++, digits++) {
        unsigned d = (unsigned)(*s - '0');
        if (acc > (limit - d) / 10)
            return 0; /* overflow */
        acc = acc * 10 + d;
    }
    if (digits == 0 || *s != '\0')
        return 0;
    *v = neg ? (acc == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)acc) : (int64_t)acc;
    return 1;
}

static void check_int(const char *s, int64_t min, int64_t max)
{
    int64_t v = 0x5a5a5a5a, rv = 0;
    int rc = svc_cfg_parse_int(s, min, max, &v);
    int want = ref_int(s, &rv) && rv >= min && rv <= max;

    if (rc != SVC_OK && rc != SVC_EINVAL)
        abort();
    if ((rc == SVC_OK) != want) {
        fprintf(stderr, "parse_int(\"%s\", %lld, %lld) = %d, reference %d\n", s, (long long)min,
                (long long)max, rc, want);
        abort();
    }
    if (rc == SVC_OK && v != rv)
        abort();
    if (rc != SVC_OK && v != 0x5a5a5a5a)
        abort();
}

static void check_bool(const char *s)
{
    static const char *go[] = {"1", "t", "T", "TRUE",  "true",  "True",
                               "0", "f", "F", "FALSE", "false", "False"};
    int b = svc_cfg_parse_bool(s), want = -1;

    for (int i = 0; i < 12; i++)
        if (strcmp(s, go[i]) == 0)
            want = i < 6;
    if (b != want)
        abort();
}

/* Reference split: "[h]:p" or "h:p" at the last ':'; 1 with host and port on success. */
static int ref_addr(const char *s, size_t hostlen, char *host, int *port)
{
    const char *colon, *h = s;
    size_t hl;
    int64_t p;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':')
            return 0;
        h = s + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return 0;
        hl = (size_t)(colon - s);
    }
    if (hl == 0 || hl >= hostlen || !ref_int(colon + 1, &p) || p < 0 || p > 65535)
        return 0;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (int)p;
    return 1;
}

static void check_addr(const char *s, size_t hostlen)
{
    char host[300], rhost[300];
    int port = -1, rport = -1;
    int rc, want;

    memset(host, 0x5a, sizeof(host));
    rc = svc_cfg_parse_addr(s, host, hostlen, &port);
    want = ref_addr(s, hostlen, rhost, &rport);
    for (size_t k = hostlen; k < sizeof(host); k++)
        if ((unsigned char)host[k] != 0x5a)
            abort(); /* wrote past hostlen */
    if (rc != SVC_OK && rc != SVC_EINVAL)
        abort();
    if ((rc == SVC_OK) != want) {
        fprintf(stderr, "parse_addr(\"%s\", %zu) = %d, reference %d\n", s, hostlen, rc, want);
        abort();
    }
    if (rc != SVC_OK)
        return;
    if (port < 0 || port > 65535 || port != rport || host[0] == '\0' || strlen(host) >= hostlen ||
        strcmp(host, rhost) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s;
    size_t hostlen;

    if (size > 4096)
        return 0;
    s = malloc(size + 1);
    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';

    check_bool(s);
    check_int(s, INT64_MIN, INT64_MAX);
    check_int(s, 0, 65535);
    check_int(s, -100, 100);
    check_int(s, 1024, 67108864);
    hostlen = size > 0 ? 1 + data[0] % 260 : 1;
    check_addr(s, hostlen);
    check_addr(s, 256);
    free(s);
    return 0;
}
