/*
 * chatweb-loadgen: an HTTP/1.1 load generator for long streamed responses and for keep-alive
 * request/response load. See `chatweb-loadgen --help` and docs/benchmarks.md.
 *
 * This file parses the flags, builds the request bytes, raises RLIMIT_NOFILE, runs the engine
 * (lg_run.c) and prints the report (text, or JSON with --json).
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "lg_run.h"

#define EX_OK 0
#define EX_FAILURES 1 /* the run completed, but some requests failed */
#define EX_USAGE 64
#define EX_SOFTWARE 70

#define HEADERS_MAX 64
#define HEADER_LEN_MAX 8192u
#define BODY_MAX (64u << 20)
#define URL_MAX 4096u

struct opts {
    const char *url;
    const char *method;
    const char *headers[HEADERS_MAX];
    unsigned nheaders;
    const char *body;
    const char *body_file;
    const char *basic;
    unsigned concurrency;
    uint64_t requests;
    int hold;
    unsigned threads;
    double timeout_s, connect_timeout_s, rate;
    const char *expect;
    int json;
    int progress;
};

static void usage(FILE *f)
{
    fputs("usage: chatweb-loadgen [options] http://HOST[:PORT]/PATH\n"
          "\n"
          "Opens --concurrency HTTP/1.1 connections (epoll, 1-2 threads, no thread per\n"
          "connection), sends one request on each and reads every response to its end.\n"
          "\n"
          "mode:\n"
          "  -c, --concurrency N      connections (default 1)\n"
          "  -n, --requests M         requests in all; N are kept in flight, connections\n"
          "                           are reused (keep-alive) (default: N)\n"
          "      --hold               open N connections at once, one request each, and hold\n"
          "                           each until its response ends (long streams)\n"
          "request:\n"
          "  -X, --method M           request method (default POST)\n"
          "  -H, --header 'K: V'      an extra header (repeatable)\n"
          "  -d, --body TEXT          request body (Content-Type defaults to application/json)\n"
          "      --body-file FILE     request body from a file\n"
          "  -u, --basic USER:PASS    Authorization: Basic base64(USER:PASS)\n"
          "checks and pacing:\n"
          "      --expect TEXT        a 200 body must contain TEXT, else it counts as invalid\n"
          "      --timeout SEC        per request, start to last byte (default 120)\n"
          "      --connect-timeout SEC  (default 10)\n"
          "      --rate R             open at most R new connections per second (default:\n"
          "                           as fast as possible)\n"
          "  -t, --threads T          event-loop threads (default 1; 2 for more than one core)\n"
          "output:\n"
          "      --json               the report as one JSON object on stdout\n"
          "      --progress           a progress line on stderr every second\n"
          "  -h, --help\n"
          "\n"
          "Failures are counted by reason: connect (socket/connect error or timeout), status\n"
          "(not 200), short (closed before the response ended), invalid (malformed HTTP or\n"
          "--expect not met), timeout. Latencies are of successful requests: ttfb is from the\n"
          "request start (connect() for a new connection) to the first response byte, total\n"
          "to the last byte.\n"
          "Exit status: 0 all succeeded, 1 some failed, 64 bad usage, 70 could not run.\n",
          f);
}

static int parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (s == NULL || *s == '\0' || *s == '-')
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double min, double max, double *out)
{
    char *end;
    double v;

    if (s == NULL || *s == '\0')
        return -1;
    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || *end != '\0' || !isfinite(v) || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static void base64(const unsigned char *in, size_t len, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i, o = 0;

    for (i = 0; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = tab[v >> 18 & 63];
        out[o++] = tab[v >> 12 & 63];
        out[o++] = tab[v >> 6 & 63];
        out[o++] = tab[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = tab[v >> 18 & 63];
        out[o++] = tab[v >> 12 & 63];
        out[o++] = i + 1 < len ? tab[v >> 6 & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
}

struct target {
    char host[256];   /* as written, without brackets */
    char port[8];
    char hostport[300]; /* for the Host header */
    const char *path;
};

/* http://host[:port][/path]; [v6] hosts. Returns 0 or -1 with a message on stderr. */
static int parse_url(const char *url, struct target *t)
{
    const char *p, *hend, *slash;
    size_t hl;

    if (strlen(url) > URL_MAX || strncasecmp(url, "http://", 7) != 0) {
        fprintf(stderr, "chatweb-loadgen: the URL must start with http:// (no TLS): %s\n", url);
        return -1;
    }
    p = url + 7;
    slash = strchr(p, '/');
    t->path = slash != NULL ? slash : "/";
    hend = slash != NULL ? slash : p + strlen(p);
    snprintf(t->hostport, sizeof(t->hostport), "%.*s", (int)(hend - p), p);
    snprintf(t->port, sizeof(t->port), "80");
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(hend - p));
        if (rb == NULL)
            goto bad;
        hl = (size_t)(rb - p - 1);
        if (hl == 0 || hl >= sizeof(t->host))
            goto bad;
        memcpy(t->host, p + 1, hl);
        t->host[hl] = '\0';
        p = rb + 1;
    } else {
        const char *colon = memchr(p, ':', (size_t)(hend - p));
        const char *e = colon != NULL ? colon : hend;
        hl = (size_t)(e - p);
        if (hl == 0 || hl >= sizeof(t->host))
            goto bad;
        memcpy(t->host, p, hl);
        t->host[hl] = '\0';
        p = e;
    }
    if (p < hend) {
        uint64_t port;
        char buf[8];
        if (*p != ':' || hend - p - 1 <= 0 || hend - p - 1 >= (long)sizeof(buf))
            goto bad;
        memcpy(buf, p + 1, (size_t)(hend - p - 1));
        buf[hend - p - 1] = '\0';
        if (parse_uint(buf, 1, 65535, &port) != 0)
            goto bad;
        snprintf(t->port, sizeof(t->port), "%u", (unsigned)port);
    }
    return 0;
bad:
    fprintf(stderr, "chatweb-loadgen: bad URL: %s\n", url);
    return -1;
}

static int resolve(const struct target *t, struct lg_config *cfg)
{
    struct addrinfo hints = {0}, *ai = NULL;
    int rc;

    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    rc = getaddrinfo(t->host, t->port, &hints, &ai);
    if (rc != 0 || ai == NULL) {
        fprintf(stderr, "chatweb-loadgen: cannot resolve %s: %s\n", t->host, gai_strerror(rc));
        return -1;
    }
    memcpy(&cfg->addr, ai->ai_addr, ai->ai_addrlen);
    cfg->addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0;

    if (f == NULL) {
        fprintf(stderr, "chatweb-loadgen: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    for (;;) {
        size_t got;
        if (n == cap) {
            char *nb;
            if (cap >= BODY_MAX) {
                fprintf(stderr, "chatweb-loadgen: %s: larger than %u bytes\n", path, BODY_MAX);
                goto fail;
            }
            cap = cap != 0 ? cap * 2 : 4096;
            nb = realloc(buf, cap);
            if (nb == NULL)
                goto fail;
            buf = nb;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        fprintf(stderr, "chatweb-loadgen: %s: read error\n", path);
        goto fail;
    }
    fclose(f);
    *len = n;
    return buf;
fail:
    fclose(f);
    free(buf);
    return NULL;
}

static int has_header(const struct opts *o, const char *name)
{
    size_t nl = strlen(name);

    for (unsigned i = 0; i < o->nheaders; i++)
        if (strncasecmp(o->headers[i], name, nl) == 0 && o->headers[i][nl] == ':')
            return 1;
    return 0;
}

/* The request bytes; caller frees. NULL with a message on stderr. */
static char *build_request(const struct opts *o, const struct target *t, const char *body,
                           size_t body_len, size_t *out_len)
{
    size_t cap = 1024 + body_len, len = 0;
    char *r, auth[1024];
    int n;

    for (unsigned i = 0; i < o->nheaders; i++)
        cap += strlen(o->headers[i]) + 2;
    cap += strlen(t->path) + strlen(t->hostport) + strlen(o->method);
    if (o->basic != NULL) {
        size_t bl = strlen(o->basic);
        if (bl > 700) {
            fprintf(stderr, "chatweb-loadgen: --basic is too long\n");
            return NULL;
        }
        memcpy(auth, "Basic ", 6);
        base64((const unsigned char *)o->basic, bl, auth + 6);
        cap += strlen(auth) + 32;
    }
    r = malloc(cap);
    if (r == NULL)
        return NULL;
#define ADD(...)                                                                               \
    do {                                                                                       \
        n = snprintf(r + len, cap - len, __VA_ARGS__);                                         \
        if (n < 0 || (size_t)n >= cap - len)                                                   \
            goto toolong;                                                                      \
        len += (size_t)n;                                                                      \
    } while (0)
    ADD("%s %s HTTP/1.1\r\nHost: %s\r\n", o->method, t->path, t->hostport);
    if (!has_header(o, "User-Agent"))
        ADD("User-Agent: chatweb-loadgen\r\n");
    if (!has_header(o, "Accept"))
        ADD("Accept: */*\r\n");
    if (o->basic != NULL)
        ADD("Authorization: %s\r\n", auth);
    for (unsigned i = 0; i < o->nheaders; i++)
        ADD("%s\r\n", o->headers[i]);
    if (body != NULL && !has_header(o, "Content-Type"))
        ADD("Content-Type: application/json\r\n");
    if (body != NULL || strcasecmp(o->method, "POST") == 0 || strcasecmp(o->method, "PUT") == 0 ||
        strcasecmp(o->method, "PATCH") == 0)
        ADD("Content-Length: %zu\r\n", body_len);
    ADD("\r\n");
#undef ADD
    if (body_len > 0) {
        if (cap - len < body_len)
            goto toolong;
        memcpy(r + len, body, body_len);
        len += body_len;
    }
    *out_len = len;
    return r;
toolong:
    fprintf(stderr, "chatweb-loadgen: internal error: request buffer too small\n");
    free(r);
    return NULL;
}

/* Raises the soft RLIMIT_NOFILE to the hard limit; warns when `need` descriptors won't fit. */
static void raise_nofile(unsigned need)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)need + 16 > rl.rlim_cur)
        fprintf(stderr,
                "chatweb-loadgen: warning: %u connections need about %u descriptors, but "
                "RLIMIT_NOFILE is %llu (raise it with ulimit -n / prlimit)\n",
                need, need + 16, (unsigned long long)rl.rlim_cur);
}

static void on_signal(int sig)
{
    (void)sig;
    lg_stop = 1;
}

/* Writes s as a JSON string. */
static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static double ms(uint64_t us)
{
    return (double)us / 1000.0;
}

static void json_lat(FILE *f, const char *name, const struct lg_hist *h, int last)
{
    fprintf(f,
            "\"%s\":{\"count\":%llu,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f,"
            "\"mean\":%.3f}%s",
            name, (unsigned long long)h->count, ms(lg_hist_quantile(h, 0.50)),
            ms(lg_hist_quantile(h, 0.90)), ms(lg_hist_quantile(h, 0.99)), ms(h->max),
            lg_hist_mean(h) / 1000.0, last ? "" : ",");
}

static uint64_t failed_total(const struct lg_result *r)
{
    uint64_t n = 0;

    for (unsigned k = 0; k < LG_FAIL_COUNT; k++)
        n += r->failed[k];
    return n;
}

/* CPU seconds (user + system) this process has used, all threads. */
static double self_cpu_seconds(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void report_json(const struct opts *o, const struct lg_result *r)
{
    double secs = (double)r->duration_ns / 1e9;
    int first = 1;

    printf("{\"url\":");
    json_str(stdout, o->url);
    printf(",\"mode\":\"%s\",\"concurrency\":%u,\"requests\":%llu,\"threads\":%u,",
           o->hold ? "hold" : "requests", o->concurrency, (unsigned long long)o->requests,
           o->threads);
    printf("\"completed\":%llu,\"failed\":{\"total\":%llu", (unsigned long long)r->completed,
           (unsigned long long)failed_total(r));
    for (unsigned k = 0; k < LG_FAIL_COUNT; k++)
        printf(",\"%s\":%llu", lg_fail_name((lg_fail_e)k), (unsigned long long)r->failed[k]);
    printf("},\"errors\":{");
    for (unsigned k = 0; k < LG_FAIL_COUNT; k++) {
        if (r->first_error[k][0] == '\0')
            continue;
        printf("%s\"%s\":", first ? "" : ",", lg_fail_name((lg_fail_e)k));
        json_str(stdout, r->first_error[k]);
        first = 0;
    }
    printf("},\"statuses\":{");
    first = 1;
    for (unsigned s = 0; s < 600; s++) {
        if (r->status[s] == 0)
            continue;
        printf("%s\"%u\":%llu", first ? "" : ",", s, (unsigned long long)r->status[s]);
        first = 0;
    }
    printf("},\"unfinished\":%llu,\"interrupted\":%s,\"duration_s\":%.3f,\"rps\":%.1f,",
           (unsigned long long)r->unfinished, r->interrupted ? "true" : "false", secs,
           secs > 0 ? (double)r->completed / secs : 0.0);
    printf("\"cpu_s\":%.3f,", self_cpu_seconds());
    printf("\"connections\":%llu,\"retries\":%llu,\"peak_streaming\":%llu,",
           (unsigned long long)r->connections, (unsigned long long)r->retries,
           (unsigned long long)r->peak_streaming);
    printf("\"bytes_in\":%llu,\"bytes_out\":%llu,\"body_bytes\":%llu,\"latency_ms\":{",
           (unsigned long long)r->bytes_in, (unsigned long long)r->bytes_out,
           (unsigned long long)r->body_bytes);
    json_lat(stdout, "connect", &r->connect_us, 0);
    json_lat(stdout, "ttfb", &r->ttfb_us, 0);
    json_lat(stdout, "total", &r->total_us, 1);
    printf("}}\n");
}

static void text_lat(const char *name, const struct lg_hist *h)
{
    if (h->count == 0) {
        printf("  %-8s %10s\n", name, "-");
        return;
    }
    printf("  %-8s %10.3f %10.3f %10.3f %10.3f %10.3f\n", name, ms(lg_hist_quantile(h, 0.50)),
           ms(lg_hist_quantile(h, 0.90)), ms(lg_hist_quantile(h, 0.99)), ms(h->max),
           lg_hist_mean(h) / 1000.0);
}

static void human_bytes(char *buf, size_t n, double b)
{
    const char *units[] = {"B", "KB", "MB", "GB", "TB"};
    unsigned u = 0;

    while (b >= 1000.0 && u < 4) {
        b /= 1000.0;
        u++;
    }
    snprintf(buf, n, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
}

static void report_text(const struct opts *o, const struct lg_result *r)
{
    double secs = (double)r->duration_ns / 1e9;
    uint64_t total = r->completed + failed_total(r);
    char in[32], out[32], per[32];

    printf("target      %s %s\n", o->method, o->url);
    printf("mode        %s, %u connection(s), %llu request(s), %u thread(s)\n",
           o->hold ? "hold" : "requests", o->concurrency, (unsigned long long)o->requests,
           o->threads);
    printf("completed   %llu of %llu in %.3f s (%.1f req/s)%s\n",
           (unsigned long long)r->completed, (unsigned long long)o->requests, secs,
           secs > 0 ? (double)r->completed / secs : 0.0, r->interrupted ? "  [interrupted]" : "");
    printf("failed      %llu", (unsigned long long)failed_total(r));
    for (unsigned k = 0; k < LG_FAIL_COUNT; k++)
        printf("%s%s %llu", k == 0 ? " (" : ", ", lg_fail_name((lg_fail_e)k),
               (unsigned long long)r->failed[k]);
    printf(")\n");
    for (unsigned k = 0; k < LG_FAIL_COUNT; k++)
        if (r->first_error[k][0] != '\0')
            printf("  first %-8s %s\n", lg_fail_name((lg_fail_e)k), r->first_error[k]);
    if (r->unfinished > 0)
        printf("unfinished  %llu\n", (unsigned long long)r->unfinished);
    printf("statuses   ");
    for (unsigned s = 0; s < 600; s++)
        if (r->status[s] != 0)
            printf(" %u:%llu", s, (unsigned long long)r->status[s]);
    printf("\n");
    printf("connections %llu opened, %llu retried request(s), peak %llu responses streaming "
           "at once\n",
           (unsigned long long)r->connections, (unsigned long long)r->retries,
           (unsigned long long)r->peak_streaming);
    human_bytes(in, sizeof(in), (double)r->bytes_in);
    human_bytes(out, sizeof(out), (double)r->bytes_out);
    human_bytes(per, sizeof(per), total > 0 ? (double)r->body_bytes / (double)total : 0);
    printf("bytes       in %s, out %s, %s of body per response\n", in, out, per);
    printf("loadgen cpu %.3f s (user + system)\n", self_cpu_seconds());
    printf("latency ms        p50        p90        p99        max       mean\n");
    text_lat("connect", &r->connect_us);
    text_lat("ttfb", &r->ttfb_us);
    text_lat("total", &r->total_us);
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
    static const struct option longs[] = {
        {"concurrency", required_argument, NULL, 'c'},
        {"requests", required_argument, NULL, 'n'},
        {"hold", no_argument, NULL, 'L'},
        {"method", required_argument, NULL, 'X'},
        {"header", required_argument, NULL, 'H'},
        {"body", required_argument, NULL, 'd'},
        {"body-file", required_argument, NULL, 'F'},
        {"basic", required_argument, NULL, 'u'},
        {"expect", required_argument, NULL, 'E'},
        {"timeout", required_argument, NULL, 'T'},
        {"connect-timeout", required_argument, NULL, 'C'},
        {"rate", required_argument, NULL, 'R'},
        {"threads", required_argument, NULL, 't'},
        {"json", no_argument, NULL, 'J'},
        {"progress", no_argument, NULL, 'P'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    uint64_t v;
    int c, have_requests = 0;

    o->method = "POST";
    o->concurrency = 1;
    o->threads = 1;
    o->timeout_s = 120;
    o->connect_timeout_s = 10;
    while ((c = getopt_long(argc, argv, "c:n:X:H:d:u:t:h", longs, NULL)) != -1) {
        switch (c) {
        case 'c':
            if (parse_uint(optarg, 1, 1000000, &v) != 0)
                goto bad;
            o->concurrency = (unsigned)v;
            break;
        case 'n':
            if (parse_uint(optarg, 1, UINT64_MAX / 2, &o->requests) != 0)
                goto bad;
            have_requests = 1;
            break;
        case 'L':
            o->hold = 1;
            break;
        case 'X':
            if (optarg[0] == '\0' || strpbrk(optarg, " \r\n") != NULL || strlen(optarg) > 32)
                goto bad;
            o->method = optarg;
            break;
        case 'H':
            if (o->nheaders == HEADERS_MAX || strchr(optarg, ':') == NULL ||
                strpbrk(optarg, "\r\n") != NULL || strlen(optarg) > HEADER_LEN_MAX)
                goto bad;
            o->headers[o->nheaders++] = optarg;
            break;
        case 'd':
            o->body = optarg;
            break;
        case 'F':
            o->body_file = optarg;
            break;
        case 'u':
            if (strchr(optarg, ':') == NULL)
                goto bad;
            o->basic = optarg;
            break;
        case 'E':
            if (optarg[0] == '\0' || strlen(optarg) > LG_EXPECT_MAX)
                goto bad;
            o->expect = optarg;
            break;
        case 'T':
            if (parse_double(optarg, 0.001, 86400, &o->timeout_s) != 0)
                goto bad;
            break;
        case 'C':
            if (parse_double(optarg, 0.001, 3600, &o->connect_timeout_s) != 0)
                goto bad;
            break;
        case 'R':
            if (parse_double(optarg, 0, 1e9, &o->rate) != 0)
                goto bad;
            break;
        case 't':
            if (parse_uint(optarg, 1, 16, &v) != 0)
                goto bad;
            o->threads = (unsigned)v;
            break;
        case 'J':
            o->json = 1;
            break;
        case 'P':
            o->progress = 1;
            break;
        case 'h':
            usage(stdout);
            exit(EX_OK);
        default:
            usage(stderr);
            return -1;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "chatweb-loadgen: exactly one URL is needed\n");
        usage(stderr);
        return -1;
    }
    o->url = argv[optind];
    if (o->body != NULL && o->body_file != NULL) {
        fprintf(stderr, "chatweb-loadgen: --body and --body-file exclude each other\n");
        return -1;
    }
    if (o->hold) {
        if (have_requests && o->requests != o->concurrency) {
            fprintf(stderr, "chatweb-loadgen: --hold sends one request per connection; "
                            "leave out --requests\n");
            return -1;
        }
        o->requests = o->concurrency;
    } else if (!have_requests) {
        o->requests = o->concurrency;
    }
    return 0;
bad:
    for (const struct option *lo = longs; lo->name != NULL; lo++)
        if (lo->val == c)
            fprintf(stderr, "chatweb-loadgen: bad value for --%s: '%s'\n", lo->name,
                    optarg != NULL ? optarg : "");
    return -1;
}

int main(int argc, char **argv)
{
    struct opts o = {0};
    struct target t;
    struct lg_config cfg = {0};
    struct lg_result *res = NULL;
    struct sigaction sa = {0};
    char *file_body = NULL, *req = NULL;
    const char *body;
    size_t body_len = 0, req_len = 0;
    int rc = EX_SOFTWARE, e;

    if (parse_opts(argc, argv, &o) != 0)
        return EX_USAGE;
    if (parse_url(o.url, &t) != 0)
        return EX_USAGE;
    if (resolve(&t, &cfg) != 0)
        return EX_USAGE;
    body = o.body;
    if (body != NULL)
        body_len = strlen(body);
    if (o.body_file != NULL) {
        file_body = read_file(o.body_file, &body_len);
        if (file_body == NULL)
            return EX_USAGE;
        body = file_body;
    }
    if (body_len > BODY_MAX) {
        fprintf(stderr, "chatweb-loadgen: the body is larger than %u bytes\n", BODY_MAX);
        rc = EX_USAGE;
        goto out;
    }
    req = build_request(&o, &t, body, body_len, &req_len);
    if (req == NULL)
        goto out;

    cfg.request = req;
    cfg.request_len = req_len;
    cfg.no_body = strcasecmp(o.method, "HEAD") == 0;
    cfg.concurrency = o.concurrency;
    cfg.requests = o.requests;
    cfg.hold = o.hold;
    cfg.threads = o.threads;
    cfg.timeout_ns = (uint64_t)(o.timeout_s * 1e9);
    cfg.connect_timeout_ns = (uint64_t)(o.connect_timeout_s * 1e9);
    cfg.rate = o.rate;
    cfg.expect = o.expect;
    cfg.expect_len = o.expect != NULL ? strlen(o.expect) : 0;
    cfg.progress = o.progress;

    raise_nofile(o.concurrency);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    res = malloc(sizeof(*res));
    if (res == NULL) {
        fprintf(stderr, "chatweb-loadgen: out of memory\n");
        goto out;
    }
    e = lg_run(&cfg, res);
    if (e != 0) {
        fprintf(stderr, "chatweb-loadgen: the run failed: %s\n", strerror(-e));
        goto out;
    }
    if (o.json)
        report_json(&o, res);
    else
        report_text(&o, res);
    fflush(stdout);
    rc = failed_total(res) > 0 || res->unfinished > 0 ? EX_FAILURES : EX_OK;
out:
    free(res);
    free(req);
    free(file_body);
    return rc;
}
