/*
 * Fuzz target for the parsers of operators' settings that had no target of their own. Byte 0
 * picks one (byte % 4); the rest, cut at its first NUL, is the setting's text:
 *   0  DB, the SQL DSN (svc__db_dsn_parse in common/db.c); byte 1 picks the data directory
 *      (NULL, "", absolute, relative with a slash, "/", one of 1000 bytes), the DSN follows;
 *   1  TRUSTED_PROXIES (svc_util_cidrs_parse and svc_util_cidrs_match in common/util.c);
 *   2  UPSTREAMS (proxy_upstreams_setup in services/proxy/upstreams.c), with OPENAI_BASE_URL and
 *      OPENAI_KEY fixed and three variables for key_env set (FZ_KEY, FZ_KEY_CRLF, FZ_KEY_EMPTY);
 *   3  MODEL_WINDOWS (svc_modelmap_create and svc_modelmap_lookup in common/modelmap.c).
 *
 * Properties checked:
 *  - DSN: a reference reading of the grammar of docs/db.md (the URL form %-decodes user,
 *    password, database and option values, '+' as a space only in option values; the
 *    go-sql-driver form takes user and password verbatim, ends the password at the last '@'
 *    before the last '/', and takes tcp(), like Go, as 127.0.0.1:3306; the options and their
 *    values; the length limits of db_int.h) accepts the same DSNs and gives the same fields. A
 *    duration within 1e-6 of a rounding or range boundary may go either way (the parser adds
 *    doubles). An accepted DSN: ":memory:" is the path exactly when the database is in memory;
 *    a socket is absolute and then there is no host; a host has a port in 1..65535; the database
 *    name is 1..64 bytes without / \ . ` ' " or a blank; the error text is empty; the described
 *    form is the fields with the password as "***". A MySQL DSN re-encoded as a canonical
 *    mysql:// URL (every byte but [A-Za-z0-9._~-] %-encoded) parses to the same fields, and so
 *    does sqlite://<path>. A refusal has a reason that never holds the password.
 *  - TRUSTED_PROXIES: the same verdict and networks as a reference reading (items split at
 *    commas, blanks trimmed, empty ones skipped; an address as inet_pton reads it; bits an
 *    optional sign and digits, 0..32 or 0..128; no bit set past the prefix; at most 32; an
 *    item of 54 bytes or more refused); a refused list leaves an empty set and a one-line reason;
 *    every accepted network has its bits in range and none set past the prefix; the list
 *    written back with inet_ntop parses to the same set; svc_util_cidrs_match agrees with a
 *    bit-by-bit reference (an IPv4-mapped IPv6 peer is its IPv4 address) for each network's
 *    first and last address, the addresses one bit outside its prefix, and addresses made of the
 *    input's bytes, as IPv4, IPv4-mapped and IPv6 peers; NULL and other families never match.
 *  - UPSTREAMS: the same verdict and upstreams as a reference reading of docs/proxy.md
 *    ("Upstreams": an array of objects with only the six fields, each of its documented type;
 *    names of 1..32 [A-Za-z0-9._-] and unique, "default" included and given at most once, and
 *    then with weight and models only; a base_url of at most 400 bytes that is http:// or
 *    https:// with a host and no blank or control byte, kept without its trailing slashes; key
 *    and key_env exclusive, key_env set, a key of at most 1000 bytes without a line break;
 *    weight 0..1000; at most 32 models of 1..127 bytes; at most 16 upstreams in all): names,
 *    base URLs and Authorization lines equal, and for every model the input names (exact, as a
 *    prefix and cut short) the pick agrees with the reference: each upstream is picked when it
 *    is the only untried one and serves the model with a weight > 0, an untried pick goes to one
 *    of those, and "no model" is said exactly when no upstream serves it. A refusal has a reason
 *    that holds no key.
 *  - MODEL_WINDOWS: the same verdict as a reference reading of docs/tokens.md (entries split at
 *    commas, blanks and tabs trimmed, none empty; a prefix of 1..200 bytes without a blank or
 *    control byte; a window of digits only, 1..1e9 (at most 23 digits); cl100k_base or
 *    o200k_base; each prefix at most once but "*", whose last window and encoding count; at most
 *    256 entries); every lookup of
 *    names made from the prefixes (exact, longer, cut short, as "ft:" names) and of the built-in
 *    names gives what the documented rules give: the longest prefix across built-ins and
 *    overrides wins, an override over the built-in with the same prefix, a fine-tuned name by
 *    its base unless an override is longer, an override keeps the encoding (unless it names
 *    one) and request shape of the built-in it shadows, or the default's (with "*"'s encoding
 *    wherever "*" stands), and "*" sets the default's window and encoding. The overrides written
 *    back canonically ("prefix=window[:encoding]", blanks and leading zeros gone) give the same
 *    lookups. A refusal names the entry.
 */

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "db_int.h"
#include "proxy.h"
#include "svc/json.h"
#include "svc/modelmap.h"
#include "svc/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_config: %s:%d: %s\n", __FILE__, __LINE__, #c);                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define INPUT_MAX 65536

/* ================================================================================================
 * DB: the SQL DSN
 * ============================================================================================= */

/* %-decoding: "%" and two hex digits is that byte (not NUL); '+' is a space when plus. */
static int ref_pct(char *dst, size_t cap, const char *s, size_t n, int plus)
{
    size_t o = 0, i = 0;

    while (i < n) {
        unsigned c = (unsigned char)s[i];
        if (c == '%') {
            char hex[3];
            if (n - i < 3 || !isxdigit((unsigned char)s[i + 1]) ||
                !isxdigit((unsigned char)s[i + 2]))
                return 0;
            hex[0] = s[i + 1];
            hex[1] = s[i + 2];
            hex[2] = '\0';
            c = (unsigned)strtoul(hex, NULL, 16);
            if (c == 0)
                return 0;
            i += 3;
        } else {
            if (c == '+' && plus)
                c = ' ';
            i++;
        }
        if (o + 1 >= cap)
            return 0;
        dst[o++] = (char)c;
    }
    dst[o] = '\0';
    return 1;
}

static int ref_copy(char *dst, size_t cap, const char *s, size_t n)
{
    if (n >= cap)
        return 0;
    memcpy(dst, s, n);
    dst[n] = '\0';
    return 1;
}

/* "host", "host:port", "[h]" or "[h]:port"; port 1..65535 in 1..5 digits, 3306 by default */
static int ref_hostport(struct svc__db_dsn *r, const char *s, size_t n)
{
    const char *h = s, *port = NULL, *e = s + n;
    size_t hl = n;

    r->port = 3306;
    if (n > 0 && s[0] == '[') {
        const char *rb = memchr(s, ']', n);
        if (rb == NULL)
            return 0;
        h = s + 1;
        hl = (size_t)(rb - h);
        if (rb + 1 < e) {
            if (rb[1] != ':')
                return 0;
            port = rb + 2;
        }
    } else {
        for (size_t i = 0; i < n; i++)
            if (s[i] == ':') {
                hl = i;
                port = s + i + 1;
                break;
            }
    }
    if (hl == 0)
        return 0;
    for (size_t i = 0; i < hl; i++)
        if ((unsigned char)h[i] <= ' ' || strchr("/@?()", h[i]) != NULL)
            return 0;
    if (!ref_copy(r->host, sizeof(r->host), h, hl))
        return 0;
    if (port != NULL) {
        size_t pl = (size_t)(e - port);
        unsigned v = 0;
        if (pl < 1 || pl > 5)
            return 0;
        for (size_t i = 0; i < pl; i++) {
            if (port[i] < '0' || port[i] > '9')
                return 0;
            v = v * 10 + (unsigned)(port[i] - '0');
        }
        if (v < 1 || v > 65535)
            return 0;
        r->port = v;
    }
    return 1;
}

static int ref_socket(struct svc__db_dsn *r, const char *path, size_t n)
{
    if (n == 0 || path[0] != '/' || !ref_copy(r->socket, sizeof(r->socket), path, n))
        return 0;
    r->host[0] = '\0';
    return 1;
}

/* A Go duration in ms (1 ms .. 1 h): 1 accepted, 0 refused, 2 too near a boundary to say (the
 * parser adds doubles; this reference long doubles). */
static int ref_duration(const char *v, unsigned *ms)
{
    static const char *const units[] = {"ns", "us", "\xc2\xb5s", "ms", "s", "m", "h"};
    static const long double mult[] = {1e-6L, 1e-3L, 1e-3L, 1.0L, 1000.0L, 60000.0L, 3600000.0L};
    long double total = 0, r;

    if (*v == '\0')
        return 0;
    while (*v != '\0') {
        uint64_t ip = 0;
        long double num, scale = 1;
        int digits = 0, best = -1;
        size_t bl = 0;
        for (; *v >= '0' && *v <= '9'; v++, digits++)
            if ((ip = ip * 10 + (uint64_t)(*v - '0')) > 1000000000000ULL)
                return 0; /* an integer part above 1e12 */
        num = (long double)ip;
        if (*v == '.')
            for (v++; *v >= '0' && *v <= '9'; v++, digits++)
                num += (scale /= 10) * (*v - '0');
        if (digits == 0)
            return 0;
        for (int u = 0; u < 7; u++)
            if (strncmp(v, units[u], strlen(units[u])) == 0 && strlen(units[u]) > bl) {
                bl = strlen(units[u]);
                best = u;
            }
        if (best < 0)
            return 0;
        v += bl;
        total += num * mult[best];
        if (total > 3600000.0L + 1e-3L)
            return 0;
    }
    /* total >= 0: a cast to an integer is its floor */
    r = total + 0.5L - (long double)(unsigned long long)(total + 0.5L);
    if ((total > 1 - 1e-6L && total < 1 + 1e-6L) || total > 3600000.0L - 1e-3L || r < 1e-6L ||
        r > 1 - 1e-6L)
        return total > 3600000.0L + 1e-3L ? 0 : 2;
    if (total < 1)
        return 0;
    *ms = (unsigned)(unsigned long long)(total + 0.5L);
    return 1;
}

static int ref_bool(const char *v, int *b)
{
    if (strcasecmp(v, "true") == 0 || strcmp(v, "1") == 0)
        return *b = 1, 1;
    if (strcasecmp(v, "false") == 0 || strcmp(v, "0") == 0)
        return *b = 0, 1;
    return 0;
}

/* One option (docs/db.md, "Options"): 1, 0, or 2 (a duration too near a boundary). */
static int ref_option(struct svc__db_dsn *r, const char *k, const char *v)
{
    int b;

    if (strcasecmp(k, "charset") == 0) {
        char list[128], *save = NULL;
        if (strlen(v) >= sizeof(list))
            return 0;
        memcpy(list, v, strlen(v) + 1);
        /* strtok_r would skip empty items, which never match anyway */
        for (char *t = strtok_r(list, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save))
            if (strcasecmp(t, "utf8mb4") == 0 || strcasecmp(t, "utf8") == 0 ||
                strcasecmp(t, "utf8mb3") == 0)
                return 1;
        return 0;
    }
    if (strcasecmp(k, "collation") == 0)
        return strncasecmp(v, "utf8mb4_", 8) == 0 || strncasecmp(v, "utf8_", 5) == 0;
    if (strcasecmp(k, "parseTime") == 0 || strcasecmp(k, "allowNativePasswords") == 0 ||
        strcasecmp(k, "interpolateParams") == 0)
        return ref_bool(v, &b);
    if (strcasecmp(k, "clientFoundRows") == 0)
        return ref_bool(v, &b) && b;
    if (strcasecmp(k, "loc") == 0)
        return 1;
    if (strcasecmp(k, "timeout") == 0 || strcasecmp(k, "readTimeout") == 0 ||
        strcasecmp(k, "writeTimeout") == 0) {
        unsigned ms = 0;
        int rc = ref_duration(v, &ms);
        if (rc != 1)
            return rc;
        if (strcasecmp(k, "timeout") == 0)
            r->connect_timeout_ms = ms;
        else if (strcasecmp(k, "readTimeout") == 0)
            r->read_timeout_ms = ms;
        else
            r->write_timeout_ms = ms;
        return 1;
    }
    if (strcasecmp(k, "tls") == 0) {
        if (strcasecmp(v, "skip-verify") == 0)
            r->tls = SVC__DB_TLS_SKIP_VERIFY;
        else if (ref_bool(v, &b))
            r->tls = b ? SVC__DB_TLS_VERIFY : SVC__DB_TLS_OFF;
        else
            return 0;
        return 1;
    }
    if (strcasecmp(k, "socket") == 0)
        return ref_socket(r, v, strlen(v));
    return 0;
}

/* "k=v&k2=v2": empty items skipped, a key of at most 63 bytes taken verbatim, the value
 * %-decoded with '+' as a space (at most 1023 bytes). */
static int ref_query(struct svc__db_dsn *r, const char *q)
{
    int fuzzy = 0;

    for (;;) {
        const char *amp = strchr(q, '&');
        size_t n = amp != NULL ? (size_t)(amp - q) : strlen(q);
        const char *eq = memchr(q, '=', n);
        char key[64], val[SVC__DB_PATH_MAX];
        int rc;

        if (n > 0) {
            if (eq == NULL || !ref_copy(key, sizeof(key), q, (size_t)(eq - q)) ||
                !ref_pct(val, sizeof(val), eq + 1, n - (size_t)(eq + 1 - q), 1))
                return 0;
            if ((rc = ref_option(r, key, val)) == 0)
                return 0;
            fuzzy |= rc == 2;
        }
        if (amp == NULL)
            return fuzzy ? 2 : 1;
        q = amp + 1;
    }
}

static int ref_dbname_user(const struct svc__db_dsn *r)
{
    size_t n = strlen(r->dbname);

    return n >= 1 && n <= 64 && strpbrk(r->dbname, "/\\.`'\" ") == NULL && r->user[0] != '\0';
}

/* The part after "mysql://": 1, 0 or 2. *pass_at / *pass_len: the password's text, once read. */
static int ref_url(struct svc__db_dsn *r, const char *s, const char **pass_at, size_t *pass_len)
{
    const char *at = strrchr(s, '@'), *rest = s, *slash, *q;
    int rc = 1;

    if (at != NULL) {
        const char *colon = memchr(s, ':', (size_t)(at - s));
        if (!ref_pct(r->user, sizeof(r->user), s,
                     colon != NULL ? (size_t)(colon - s) : (size_t)(at - s), 0))
            return 0;
        if (colon != NULL) {
            *pass_at = colon + 1;
            *pass_len = (size_t)(at - colon - 1);
            if (!ref_pct(r->pass, sizeof(r->pass), colon + 1, *pass_len, 0))
                return 0;
        }
        rest = at + 1;
    }
    if (strncmp(rest, "unix(", 5) == 0) {
        const char *rp = strchr(rest, ')');
        if (rp == NULL || !ref_socket(r, rest + 5, (size_t)(rp - rest - 5)) || rp[1] != '/')
            return 0;
        slash = rp + 1;
    } else if ((slash = strchr(rest, '/')) == NULL ||
               !ref_hostport(r, rest, (size_t)(slash - rest))) {
        return 0;
    }
    q = strchr(slash + 1, '?');
    if (!ref_pct(r->dbname, sizeof(r->dbname), slash + 1,
                 q != NULL ? (size_t)(q - slash - 1) : strlen(slash + 1), 0))
        return 0;
    if (q != NULL && (rc = ref_query(r, q + 1)) == 0)
        return 0;
    return ref_dbname_user(r) ? rc : 0;
}

/* go-sql-driver: [user[:password]@][net[(addr)]]/dbname[?params] */
static int ref_go(struct svc__db_dsn *r, const char *s, const char **pass_at, size_t *pass_len)
{
    const char *slash = strrchr(s, '/'), *at = NULL, *net = s, *q;
    size_t nl;
    int rc = 1;

    if (slash == NULL)
        return 0;
    for (const char *p = s; p < slash; p++)
        if (*p == '@')
            at = p;
    if (at != NULL) {
        const char *colon = memchr(s, ':', (size_t)(at - s));
        if (!ref_copy(r->user, sizeof(r->user), s,
                      colon != NULL ? (size_t)(colon - s) : (size_t)(at - s)))
            return 0;
        if (colon != NULL) {
            *pass_at = colon + 1;
            *pass_len = (size_t)(at - colon - 1);
            if (!ref_copy(r->pass, sizeof(r->pass), colon + 1, *pass_len))
                return 0;
        }
        net = at + 1;
    }
    nl = (size_t)(slash - net);
    if (nl == 0 || (nl == 3 && memcmp(net, "tcp", 3) == 0) ||
        (nl == 5 && memcmp(net, "tcp()", 5) == 0)) {
        snprintf(r->host, sizeof(r->host), "127.0.0.1");
        r->port = 3306;
    } else if (nl > 5 && memcmp(net, "tcp(", 4) == 0 && net[nl - 1] == ')') {
        if (!ref_hostport(r, net + 4, nl - 5))
            return 0;
    } else if (nl > 5 && memcmp(net, "unix(", 5) == 0 && net[nl - 1] == ')') {
        if (!ref_socket(r, net + 5, nl - 6))
            return 0;
    } else {
        return 0;
    }
    q = strchr(slash + 1, '?');
    if (!ref_copy(r->dbname, sizeof(r->dbname), slash + 1,
                  q != NULL ? (size_t)(q - slash - 1) : strlen(slash + 1)))
        return 0;
    if (q != NULL && (rc = ref_query(r, q + 1)) == 0)
        return 0;
    return ref_dbname_user(r) ? rc : 0;
}

static int ref_join(struct svc__db_dsn *r, const char *dir, const char *file)
{
    size_t dl = strlen(dir);

    while (dl > 1 && dir[dl - 1] == '/')
        dl--;
    if (dl + 1 + strlen(file) >= sizeof(r->path) || strlen(dir) >= sizeof(r->data_dir))
        return 0;
    snprintf(r->path, sizeof(r->path), "%.*s/%s", (int)dl, dir, file);
    snprintf(r->data_dir, sizeof(r->data_dir), "%s", dir);
    r->use_data_dir = 1;
    return 1;
}

/* The whole DSN, as docs/db.md ("DSN forms") reads it: 1, 0 or 2. */
static int ref_dsn(struct svc__db_dsn *r, const char *dsn, const char *dir, const char **pass_at,
                   size_t *pass_len)
{
    size_t sl = 0;
    int has_dir = dir != NULL && dir[0] != '\0';

    memset(r, 0, sizeof(*r));
    if (dsn[0] == '\0') {
        r->dialect = SVC_DB_SQLITE;
        return has_dir && ref_join(r, dir, "chatweb.db");
    }
    if (strlen(dsn) >= 4096)
        return 0;
    if (strncmp(dsn, "sqlite:", 7) == 0) {
        const char *p = dsn + 7;
        r->dialect = SVC_DB_SQLITE;
        if (strncmp(p, "//", 2) == 0)
            p += 2; /* sqlite:///abs, sqlite://rel */
        if (strcmp(p, ":memory:") == 0) {
            r->memory = 1;
            snprintf(r->path, sizeof(r->path), ":memory:");
            return 1;
        }
        if (*p == '\0' || strchr(p, '?') != NULL)
            return 0;
        if (p[0] == '/' || !has_dir)
            return ref_copy(r->path, sizeof(r->path), p, strlen(p));
        return ref_join(r, dir, p);
    }
    r->dialect = SVC_DB_MYSQL;
    if (strncmp(dsn, "mysql://", 8) == 0)
        return ref_url(r, dsn + 8, pass_at, pass_len);
    if (strncmp(dsn, "mariadb://", 10) == 0)
        return ref_url(r, dsn + 10, pass_at, pass_len);
    while (isalnum((unsigned char)dsn[sl]) || strchr("+-.", dsn[sl]) != NULL) {
        if (dsn[sl] == '\0')
            break;
        sl++;
    }
    if (sl > 0 && strncmp(dsn + sl, "://", 3) == 0)
        return 0; /* another URL scheme */
    return ref_go(r, dsn, pass_at, pass_len);
}

static int same_dsn(const struct svc__db_dsn *a, const struct svc__db_dsn *b, int port)
{
    return a->dialect == b->dialect && strcmp(a->path, b->path) == 0 && a->memory == b->memory &&
           a->use_data_dir == b->use_data_dir && strcmp(a->data_dir, b->data_dir) == 0 &&
           strcmp(a->user, b->user) == 0 && strcmp(a->pass, b->pass) == 0 &&
           strcmp(a->host, b->host) == 0 && (!port || a->port == b->port) &&
           strcmp(a->socket, b->socket) == 0 && strcmp(a->dbname, b->dbname) == 0 &&
           a->connect_timeout_ms == b->connect_timeout_ms &&
           a->read_timeout_ms == b->read_timeout_ms && a->write_timeout_ms == b->write_timeout_ms &&
           a->tls == b->tls;
}

/* Appends s %-encoded (all but [A-Za-z0-9._~-]); 0 when it does not fit. */
static int put_enc(char *buf, size_t cap, size_t *o, const char *s)
{
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        int n = isalnum(c) || strchr("._~-", c) != NULL ? snprintf(buf + *o, cap - *o, "%c", c)
                                                        : snprintf(buf + *o, cap - *o, "%%%02X", c);
        if (n < 0 || (size_t)n >= cap - *o)
            return 0;
        *o += (size_t)n;
    }
    return 1;
}

static int put(char *buf, size_t cap, size_t *o, const char *fmt, const char *s, unsigned u)
{
    int n = snprintf(buf + *o, cap - *o, fmt, s, u);

    if (n < 0 || (size_t)n >= cap - *o)
        return 0;
    *o += (size_t)n;
    return 1;
}

/* A MySQL DSN as a canonical mysql:// URL; 0 when longer than the parser takes. */
static int canonical_url(const struct svc__db_dsn *d, char *buf, size_t cap)
{
    static const char *const tls[] = {"false", "true", "skip-verify"};
    size_t o = 0;
    int ok = put(buf, cap, &o, "%smysql://", "", 0) && put_enc(buf, cap, &o, d->user);

    if (d->pass[0] != '\0')
        ok = ok && put(buf, cap, &o, "%s:", "", 0) && put_enc(buf, cap, &o, d->pass);
    if (d->socket[0] != '\0')
        ok = ok && put(buf, cap, &o, "%s@localhost/", "", 0);
    else if (strchr(d->host, ':') != NULL || d->host[0] == '[')
        ok = ok && put(buf, cap, &o, "@[%s]:%u/", d->host, d->port);
    else
        ok = ok && put(buf, cap, &o, "@%s:%u/", d->host, d->port);
    ok = ok && put_enc(buf, cap, &o, d->dbname) && put(buf, cap, &o, "?tls=%s", tls[d->tls], 0);
    if (d->connect_timeout_ms != 0)
        ok = ok && put(buf, cap, &o, "%s&timeout=%ums", "", d->connect_timeout_ms);
    if (d->read_timeout_ms != 0)
        ok = ok && put(buf, cap, &o, "%s&readTimeout=%ums", "", d->read_timeout_ms);
    if (d->write_timeout_ms != 0)
        ok = ok && put(buf, cap, &o, "%s&writeTimeout=%ums", "", d->write_timeout_ms);
    if (d->socket[0] != '\0')
        ok = ok && put(buf, cap, &o, "%s&socket=", "", 0) && put_enc(buf, cap, &o, d->socket);
    return ok && o < 4096;
}

/* s with every valid %XX decoded (and '+' as a space when plus), the rest kept: what a message
 * quoting any part of s, decoded or not, may show. */
static void lenient_decode(char *dst, const char *s, int plus)
{
    while (*s != '\0') {
        if (s[0] == '%' && isxdigit((unsigned char)s[1]) && isxdigit((unsigned char)s[2])) {
            char hex[3] = {s[1], s[2], '\0'};
            *dst++ = (char)strtoul(hex, NULL, 16);
            s += 3;
        } else {
            *dst++ = plus && *s == '+' ? ' ' : *s;
            s++;
        }
    }
    *dst = '\0';
}

/* Whether err holds the password, as written or decoded, which the rest of the DSN does not
 * hold in any form, nor the message the parser gives when the password is all 'Q's (so that a
 * password such as "ser:pass" is not taken for a leak in "no user name (user:password@...)"). */
static int leaks(const char *err, const char *dsn, const char *dir, const char *pass_at,
                 size_t pass_len, const char *pass)
{
    char rest[4096], dec[4096], dplus[4096], raw[4096], qdsn[4096], qerr[SVC__DB_ERR_MAX];
    const char *texts[2] = {pass, raw};
    struct svc__db_dsn *q;
    int leak = 0;

    if (pass_len < 6 || strlen(pass) < 6 || strlen(dsn) >= sizeof(rest))
        return 0;
    memcpy(rest, dsn, strlen(dsn) + 1);
    memset(rest + (pass_at - dsn), '\n', pass_len); /* the DSN without its password */
    lenient_decode(dec, rest, 0);
    lenient_decode(dplus, rest, 1);
    memcpy(raw, pass_at, pass_len);
    raw[pass_len] = '\0';
    memcpy(qdsn, dsn, strlen(dsn) + 1);
    memset(qdsn + (pass_at - dsn), 'Q', pass_len);
    q = malloc(sizeof(*q));
    CHECK(q != NULL);
    qerr[0] = '\0';
    if (svc__db_dsn_parse(q, qdsn, dir, qerr, sizeof(qerr)) == SVC_OK)
        qerr[0] = '\0';
    free(q);
    for (int i = 0; i < 2; i++)
        if (strstr(err, texts[i]) != NULL && strstr(rest, texts[i]) == NULL &&
            strstr(dec, texts[i]) == NULL && strstr(dplus, texts[i]) == NULL &&
            strstr(qerr, texts[i]) == NULL)
            leak = 1;
    return leak;
}

static void fuzz_dsn(const uint8_t *data, size_t size)
{
    static char long_dir[1001];
    const char *dirs[] = {NULL, "", "/var/lib/chatweb", "data/", "/", long_dir};
    const char *dir, *pass_at = NULL;
    struct svc__db_dsn *d = malloc(sizeof(*d)), *r = malloc(sizeof(*r)),
                       *again = malloc(sizeof(*again));
    char err[SVC__DB_ERR_MAX], desc[4200], want[4200], *dsn, *canon = malloc(8192);
    size_t pass_len = 0;
    int rc, ref;

    CHECK(d != NULL && r != NULL && again != NULL && canon != NULL);
    if (long_dir[0] == '\0')
        memset(long_dir, 'd', sizeof(long_dir) - 1);
    dir = dirs[size > 0 ? data[0] % 6 : 0];
    dsn = strndup(size > 0 ? (const char *)data + 1 : "", size > 0 ? size - 1 : 0);
    CHECK(dsn != NULL);

    memset(err, 'x', sizeof(err));
    rc = svc__db_dsn_parse(d, dsn, dir, err, sizeof(err));
    ref = ref_dsn(r, dsn, dir, &pass_at, &pass_len);
    CHECK(rc == SVC_OK || rc == SVC_EINVAL);
    CHECK(memchr(err, '\0', sizeof(err)) != NULL);
    if (ref != 2) {
        if ((rc == SVC_OK) != (ref == 1))
            fprintf(stderr, "DSN \"%s\" (dir %s): parser %d (%s), reference %d\n", dsn,
                    dir != NULL ? dir : "NULL", rc, err, ref);
        CHECK((rc == SVC_OK) == (ref == 1));
        CHECK(rc != SVC_OK || same_dsn(d, r, 1));
    }
    if (rc != SVC_OK) {
        CHECK(err[0] != '\0');
        CHECK(pass_at == NULL || !leaks(err, dsn, dir, pass_at, pass_len, r->pass));
        goto out;
    }
    CHECK(err[0] == '\0');
    svc__db_dsn_describe(d, desc, sizeof(desc));
    if (d->dialect == SVC_DB_SQLITE) {
        CHECK(d->memory == (strcmp(d->path, ":memory:") == 0));
        CHECK(strchr(d->path, '?') == NULL && d->path[0] != '\0');
        CHECK(d->user[0] == '\0' && d->pass[0] == '\0' && d->host[0] == '\0');
        if (d->use_data_dir)
            CHECK(dir != NULL && strcmp(d->data_dir, dir) == 0 &&
                  strncmp(d->path, dir, strlen(dir) > 1 ? strlen(dir) - 1 : 1) == 0);
        snprintf(want, sizeof(want), "sqlite:%s", d->path);
        CHECK(strcmp(desc, want) == 0);
        if (!d->use_data_dir) {
            snprintf(canon, 8192, "sqlite://%s", d->path);
            CHECK(svc__db_dsn_parse(again, canon, NULL, err, sizeof(err)) == SVC_OK);
            CHECK(same_dsn(d, again, 1));
        }
        goto out;
    }
    CHECK(d->dialect == SVC_DB_MYSQL);
    CHECK(d->user[0] != '\0' && strlen(d->dbname) >= 1 && strlen(d->dbname) <= 64 &&
          strpbrk(d->dbname, "/\\.`'\" ") == NULL);
    CHECK(d->tls >= SVC__DB_TLS_OFF && d->tls <= SVC__DB_TLS_SKIP_VERIFY);
    CHECK(d->connect_timeout_ms <= 3600000 && d->read_timeout_ms <= 3600000 &&
          d->write_timeout_ms <= 3600000);
    if (d->socket[0] != '\0') {
        CHECK(d->socket[0] == '/' && d->host[0] == '\0');
        snprintf(want, sizeof(want), "mysql://%s%s@unix(%s)/%s", d->user,
                 d->pass[0] != '\0' ? ":***" : "", d->socket, d->dbname);
    } else {
        CHECK(d->host[0] != '\0' && d->port >= 1 && d->port <= 65535);
        CHECK(strpbrk(d->host, " /@?()") == NULL);
        snprintf(want, sizeof(want),
                 strchr(d->host, ':') != NULL ? "mysql://%s%s@[%s]:%u/%s" : "mysql://%s%s@%s:%u/%s",
                 d->user, d->pass[0] != '\0' ? ":***" : "", d->host, d->port, d->dbname);
    }
    /* desc is cut at 4199 bytes, want too: the fields are shorter than that together */
    CHECK(strcmp(desc, want) == 0);
    if (canonical_url(d, canon, 8192)) {
        rc = svc__db_dsn_parse(again, canon, NULL, err, sizeof(err));
        if (rc != SVC_OK)
            fprintf(stderr, "canonical \"%s\" refused: %s\n", canon, err);
        CHECK(rc == SVC_OK && same_dsn(d, again, d->socket[0] == '\0'));
    }
out:
    free(dsn);
    free(canon);
    free(again);
    free(r);
    free(d);
}

/* ================================================================================================
 * TRUSTED_PROXIES
 * ============================================================================================= */

/* svc_cfg_parse_int's grammar: an optional sign, then digits only; value in 0..max */
static int ref_prefix_bits(const char *s, unsigned max, unsigned *bits)
{
    int neg = 0;
    unsigned long v = 0;

    if (*s == '+' || *s == '-')
        neg = *s++ == '-';
    if (*s == '\0')
        return 0;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return 0;
        v = v > 1000 ? v : v * 10 + (unsigned long)(*s - '0');
    }
    if ((neg && v != 0) || v > max)
        return 0;
    *bits = (unsigned)v;
    return 1;
}

static int bit(const unsigned char *a, unsigned i)
{
    return (a[i / 8] >> (7 - i % 8)) & 1;
}

static int ref_cidr(struct svc_util_cidr *c, const char *item, size_t len)
{
    char text[64], *slash;
    unsigned max;

    if (len >= 54) /* INET6_ADDRSTRLEN + 8: no address with a prefix is that long */
        return 0;
    memcpy(text, item, len);
    text[len] = '\0';
    memset(c, 0, sizeof(*c));
    if ((slash = strchr(text, '/')) != NULL)
        *slash++ = '\0';
    if (inet_pton(AF_INET, text, c->addr) == 1) {
        c->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, text, c->addr) == 1) {
        c->family = AF_INET6;
        max = 128;
    } else {
        return 0;
    }
    c->bits = max;
    if (slash != NULL && !ref_prefix_bits(slash, max, &c->bits))
        return 0;
    for (unsigned i = c->bits; i < max; i++)
        if (bit(c->addr, i))
            return 0;
    return 1;
}

static int ref_cidrs(struct svc_util_cidrs *set, const char *s)
{
    set->n = 0;
    for (;;) {
        const char *end = strchr(s, ','), *a = s, *z;
        if (end == NULL)
            end = s + strlen(s);
        for (z = end; a < z && *a == ' '; a++)
            ;
        while (z > a && z[-1] == ' ')
            z--;
        if (z > a) {
            if (set->n == SVC_UTIL_CIDRS_MAX || !ref_cidr(&set->net[set->n], a, (size_t)(z - a)))
                return set->n = 0, 0;
            set->n++;
        }
        if (*end == '\0')
            return 1;
        s = end + 1;
    }
}

static int ref_match(const struct svc_util_cidrs *set, int family, const unsigned char *a)
{
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

    if (family == AF_INET6 && memcmp(a, mapped, 12) == 0) {
        family = AF_INET;
        a += 12;
    }
    for (size_t k = 0; k < set->n; k++) {
        unsigned i = 0;
        if (set->net[k].family != family)
            continue;
        while (i < set->net[k].bits && bit(set->net[k].addr, i) == bit(a, i))
            i++;
        if (i == set->net[k].bits)
            return 1;
    }
    return 0;
}

static int same_cidrs(const struct svc_util_cidrs *a, const struct svc_util_cidrs *b)
{
    if (a->n != b->n)
        return 0;
    for (size_t k = 0; k < a->n; k++)
        if (a->net[k].family != b->net[k].family || a->net[k].bits != b->net[k].bits ||
            memcmp(a->net[k].addr, b->net[k].addr, 16) != 0)
            return 0;
    return 1;
}

/* The match of a as an IPv4 peer, an IPv4-mapped IPv6 peer and an IPv6 peer, against the
 * reference. */
static void check_match(const struct svc_util_cidrs *set, const unsigned char *a)
{
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;

    memset(&in4, 0, sizeof(in4));
    in4.sin_family = AF_INET;
    memcpy(&in4.sin_addr, a, 4);
    CHECK(svc_util_cidrs_match(set, (struct sockaddr *)&in4) == ref_match(set, AF_INET, a));
    memset(&in6, 0, sizeof(in6));
    in6.sin6_family = AF_INET6;
    in6.sin6_addr.s6_addr[10] = in6.sin6_addr.s6_addr[11] = 0xff;
    memcpy(in6.sin6_addr.s6_addr + 12, a, 4);
    CHECK(svc_util_cidrs_match(set, (struct sockaddr *)&in6) ==
          ref_match(set, AF_INET6, in6.sin6_addr.s6_addr));
    CHECK(ref_match(set, AF_INET6, in6.sin6_addr.s6_addr) == ref_match(set, AF_INET, a));
    memcpy(in6.sin6_addr.s6_addr, a, 16);
    CHECK(svc_util_cidrs_match(set, (struct sockaddr *)&in6) == ref_match(set, AF_INET6, a));
}

static void fuzz_cidrs(const uint8_t *data, size_t size)
{
    struct svc_util_cidrs set, ref, again;
    struct sockaddr_un un;
    char *list = strndup((const char *)data, size), err[256], *text;
    size_t o = 0;
    int rc, want, n;

    CHECK(list != NULL);
    memset(err, 0, sizeof(err));
    set.n = 99;
    rc = svc_util_cidrs_parse(&set, list, err, sizeof(err));
    want = ref_cidrs(&ref, list);
    CHECK(rc == SVC_OK || rc == SVC_EINVAL);
    if ((rc == SVC_OK) != want)
        fprintf(stderr, "TRUSTED_PROXIES \"%s\": parser %d (%s), reference %d\n", list, rc, err,
                want);
    CHECK((rc == SVC_OK) == want);
    if (rc != SVC_OK) {
        /* one line, unless the item it names has a line break */
        CHECK(set.n == 0 && err[0] != '\0' &&
              (strchr(err, '\n') == NULL || strchr(list, '\n') != NULL));
        free(list);
        return;
    }
    CHECK(set.n <= SVC_UTIL_CIDRS_MAX && same_cidrs(&set, &ref));
    text = malloc(SVC_UTIL_CIDRS_MAX * 64 + 1);
    CHECK(text != NULL);
    text[0] = '\0';
    for (size_t k = 0; k < set.n; k++) {
        const struct svc_util_cidr *c = &set.net[k];
        unsigned max = c->family == AF_INET ? 32 : 128;
        char a[INET6_ADDRSTRLEN];
        CHECK(c->family == AF_INET || c->family == AF_INET6);
        CHECK(c->bits <= max);
        for (unsigned i = c->bits; i < 128; i++)
            CHECK(!bit(c->addr, i)); /* nothing past the prefix, nor past an IPv4 address */
        CHECK(inet_ntop(c->family, c->addr, a, sizeof(a)) != NULL);
        n = snprintf(text + o, SVC_UTIL_CIDRS_MAX * 64 + 1 - o, "%s%s/%u", k > 0 ? ", " : "", a,
                     c->bits);
        CHECK(n > 0 && (size_t)n < SVC_UTIL_CIDRS_MAX * 64 + 1 - o);
        o += (size_t)n;
    }
    CHECK(svc_util_cidrs_parse(&again, text, err, sizeof(err)) == SVC_OK);
    CHECK(same_cidrs(&set, &again));
    free(text);

    /* each network's first and last address, and one bit outside its prefix on either side */
    for (size_t k = 0; k < set.n; k++) {
        const struct svc_util_cidr *c = &set.net[k];
        unsigned max = c->family == AF_INET ? 32 : 128;
        unsigned char a[16];
        memcpy(a, c->addr, 16);
        check_match(&set, a);
        for (unsigned i = c->bits; i < max; i++)
            a[i / 8] |= (unsigned char)(0x80u >> (i % 8));
        check_match(&set, a);
        if (c->bits > 0) {
            a[(c->bits - 1) / 8] ^= (unsigned char)(0x80u >> ((c->bits - 1) % 8));
            check_match(&set, a);
        }
        if (c->bits < max) {
            memcpy(a, c->addr, 16);
            a[c->bits / 8] ^= (unsigned char)(0x80u >> (c->bits % 8));
            check_match(&set, a);
        }
    }
    /* addresses made of the input's bytes */
    for (size_t i = 0; i + 16 <= size && i < 256; i += 5)
        check_match(&set, data + i);
    CHECK(svc_util_cidrs_match(NULL, NULL) == 0);
    CHECK(svc_util_cidrs_match(&set, NULL) == 0);
    memset(&un, 0, sizeof(un));
    un.sun_family = AF_UNIX;
    CHECK(svc_util_cidrs_match(&set, (struct sockaddr *)&un) == 0);
    free(list);
}

/* ================================================================================================
 * UPSTREAMS
 * ============================================================================================= */

struct ref_up {
    const char *name, *url;
    char base[SVC_CFG_URL_MAX + 1];
    char auth[1100];
    long long weight;
    struct svc_json *models; /* NULL: every model */
};

static const char *const up_fields[] = {"name", "base_url", "key", "key_env", "weight", "models"};

/* A member that, when present, must be a string: 1 with *s (NULL when absent), 0 otherwise. */
static int ref_str_member(struct svc_json *e, const char *k, const char **s)
{
    struct svc_json *v = svc_json_member(e, k);

    *s = NULL;
    if (v == NULL)
        return 1;
    if (!svc_json_is_string(v))
        return 0;
    *s = svc_json_str(v);
    return 1;
}

static int ref_url_ok(const char *u)
{
    size_t n = strlen(u), s;

    if (strncmp(u, "http://", 7) == 0)
        s = 7;
    else if (strncmp(u, "https://", 8) == 0)
        s = 8;
    else
        return 0;
    if (n > SVC_CFG_URL_MAX || u[s] == '\0' || strchr("/?#", u[s]) != NULL)
        return 0; /* no host */
    for (const char *p = u; *p != '\0'; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            return 0;
    return 1;
}

static int ref_routing(struct ref_up *u, struct svc_json *e)
{
    struct svc_json *w = svc_json_member(e, "weight"), *models = svc_json_member(e, "models");

    if (w != NULL) {
        if (!svc_json_is_integer(w) || svc_json_int(w) < 0 || svc_json_int(w) > 1000)
            return 0;
        u->weight = svc_json_int(w);
    }
    if (models == NULL)
        return 1;
    if (!svc_json_is_array(models) || svc_json_array_len(models) > PROXY_UPSTREAM_MODELS_MAX)
        return 0;
    for (size_t i = 0; i < svc_json_array_len(models); i++) {
        struct svc_json *m = svc_json_array_at(models, i);
        if (!svc_json_is_string(m) || svc_json_strlen(m) < 1 || svc_json_strlen(m) > 127)
            return 0;
    }
    u->models = models;
    return 1;
}

/* docs/proxy.md, "Upstreams": the number of upstreams (default first), or 0 when refused. */
static size_t ref_upstreams(struct svc_json *list, struct ref_up *ups)
{
    size_t n = 1;
    int default_seen = 0;

    memset(ups, 0, sizeof(*ups) * PROXY_UPSTREAMS_MAX);
    ups[0].name = "default";
    snprintf(ups[0].base, sizeof(ups[0].base), "https://api.example.test/v1");
    snprintf(ups[0].auth, sizeof(ups[0].auth), "Authorization: Bearer sk-default-secret");
    ups[0].weight = 1;
    if (list == NULL)
        return 1;
    if (!svc_json_is_array(list))
        return 0;
    for (size_t i = 0; i < svc_json_array_len(list); i++) {
        struct svc_json *e = svc_json_array_at(list, i), *v;
        const char *name, *url, *key, *key_env, *field;
        struct ref_up *u;
        void *it;

        if (!svc_json_is_object(e))
            return 0;
        SVC_JSON_OBJECT_EACH(e, it, field, v) {
            size_t k = 0;
            while (k < 6 && strcmp(field, up_fields[k]) != 0)
                k++;
            if (k == 6)
                return 0;
        }
        if (!ref_str_member(e, "name", &name) || !ref_str_member(e, "base_url", &url) ||
            !ref_str_member(e, "key", &key) || !ref_str_member(e, "key_env", &key_env))
            return 0;
        if (name == NULL || strlen(name) < 1 || strlen(name) > PROXY_UPSTREAM_NAME_MAX ||
            strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
                strlen(name))
            return 0;
        if (strcmp(name, "default") == 0) {
            if (default_seen || url != NULL || key != NULL || key_env != NULL ||
                !ref_routing(&ups[0], e))
                return 0;
            default_seen = 1;
            continue;
        }
        for (size_t k = 1; k < n; k++)
            if (strcmp(ups[k].name, name) == 0)
                return 0;
        if (n == PROXY_UPSTREAMS_MAX || url == NULL || !ref_url_ok(url) ||
            (key != NULL && key_env != NULL))
            return 0;
        if (key_env != NULL && (key = getenv(key_env)) == NULL)
            return 0;
        if (key != NULL && (strlen(key) > 1000 || strpbrk(key, "\r\n") != NULL))
            return 0;
        u = &ups[n];
        u->name = name;
        u->url = url;
        u->weight = 1;
        snprintf(u->base, sizeof(u->base), "%s", url);
        for (size_t l = strlen(u->base); l > 0 && u->base[l - 1] == '/'; l--)
            u->base[l - 1] = '\0';
        if (key != NULL && key[0] != '\0')
            snprintf(u->auth, sizeof(u->auth), "Authorization: Bearer %s", key);
        if (!ref_routing(u, e))
            return 0;
        n++;
    }
    return n;
}

static int ref_serves(const struct ref_up *u, const char *model)
{
    if (u->models == NULL || svc_json_array_len(u->models) == 0)
        return 1;
    for (size_t i = 0; i < svc_json_array_len(u->models); i++) {
        const char *m = svc_json_str(svc_json_array_at(u->models, i));
        size_t l = strlen(m);
        if (m[l - 1] == '*' ? strncmp(model, m, l - 1) == 0 : strcmp(model, m) == 0)
            return 1;
    }
    return 0;
}

static void check_pick(const struct ref_up *ups, size_t n, const char *model)
{
    int any_serves = 0, any_takes = 0, no_model = -1, r;

    for (size_t i = 0; i < n; i++) {
        any_serves |= ref_serves(&ups[i], model);
        any_takes |= ref_serves(&ups[i], model) && ups[i].weight > 0;
    }
    for (size_t i = 0; i < n; i++) {
        int takes = ref_serves(&ups[i], model) && ups[i].weight > 0;
        /* every other upstream tried: this one when it takes the model, else another that does */
        r = proxy_upstream_pick(model, ~(1u << i), &no_model);
        CHECK(no_model == !any_serves);
        if (takes)
            CHECK(r == (int)i);
        else
            CHECK(any_takes ? r >= 0 && (size_t)r < n && r != (int)i &&
                                  ref_serves(&ups[r], model) && ups[r].weight > 0
                            : r == -1);
    }
    r = proxy_upstream_pick(model, 0, &no_model);
    CHECK(no_model == !any_serves);
    CHECK(any_takes ? r >= 0 && (size_t)r < n && ref_serves(&ups[r], model) && ups[r].weight > 0
                    : r == -1);
}

/* Whether err holds a key that the spec does not also hold as another string. */
static int key_leaks(const char *err, struct svc_json *list)
{
    for (size_t i = 0; i < svc_json_array_len(list); i++) {
        const char *key = svc_json_str(svc_json_member(svc_json_array_at(list, i), "key"));
        int elsewhere = 0;
        if (key == NULL || strlen(key) < 8 || strstr(err, key) == NULL)
            continue;
        for (size_t j = 0; j < svc_json_array_len(list) && !elsewhere; j++) {
            struct svc_json *e = svc_json_array_at(list, j), *v;
            const char *field;
            void *it;
            SVC_JSON_OBJECT_EACH(e, it, field, v) {
                if (strstr(field, key) != NULL ||
                    (strcmp(field, "key") != 0 && svc_json_is_string(v) &&
                     strstr(svc_json_str(v), key) != NULL))
                    elsewhere = 1;
            }
        }
        if (!elsewhere)
            return 1;
    }
    return 0;
}

static void fuzz_upstreams(const uint8_t *data, size_t size)
{
    static struct proxy_setting s;
    struct ref_up ups[PROXY_UPSTREAMS_MAX];
    struct svc_json *list = NULL;
    char *spec = strndup((const char *)data, size), err[512];
    size_t n = 0;
    int rc;

    CHECK(spec != NULL);
    if (s.OPENAI_BASE_URL.s == NULL) {
        setenv("FZ_KEY", "sk-env-secret", 1);
        setenv("FZ_KEY_CRLF", "sk-a\r\nX-Evil: 1", 1);
        setenv("FZ_KEY_EMPTY", "", 1);
    }
    s.OPENAI_BASE_URL.s = "https://api.example.test/v1/";
    s.OPENAI_KEY.s = "sk-default-secret";
    s.UPSTREAMS.s = spec;
    s.UPSTREAM_BREAKER_FAILURES.i = 5;
    s.UPSTREAM_BREAKER_OPEN_MS.i = 30000;
    memset(err, 0, sizeof(err));
    rc = proxy_upstreams_setup(&s, err, sizeof(err));
    CHECK(rc == SVC_OK || rc == SVC_EINVAL);
    if (spec[0] != '\0') {
        list = svc_json_parse(spec, strlen(spec), SVC_JSON_STRICT, NULL, 0);
        n = list != NULL ? ref_upstreams(list, ups) : 0;
    } else {
        n = ref_upstreams(NULL, ups);
    }
    if ((rc == SVC_OK) != (n > 0))
        fprintf(stderr, "UPSTREAMS %s: parser %d (%s), reference %zu upstreams\n", spec, rc, err,
                n);
    CHECK((rc == SVC_OK) == (n > 0));
    if (rc != SVC_OK) {
        CHECK(err[0] != '\0');
        CHECK(strstr(spec, "sk-default-secret") != NULL ||
              strstr(err, "sk-default-secret") == NULL);
        CHECK(strstr(spec, "sk-env-secret") != NULL || strstr(err, "sk-env-secret") == NULL);
        CHECK(list == NULL || !key_leaks(err, list));
        goto out;
    }
    CHECK(proxy_upstreams_count() == n && n <= PROXY_UPSTREAMS_MAX);
    for (size_t i = 0; i < n; i++) {
        const char *base = proxy_upstream_base((int)i);
        CHECK(strcmp(proxy_upstream_name((int)i), ups[i].name) == 0);
        CHECK(strcmp(base, ups[i].base) == 0);
        CHECK(strcmp(proxy_upstream_auth((int)i), ups[i].auth) == 0);
        CHECK(ref_url_ok(base) && base[strlen(base) - 1] != '/');
        for (size_t j = 0; j < i; j++)
            CHECK(strcmp(ups[i].name, ups[j].name) != 0);
    }
    check_pick(ups, n, "");
    check_pick(ups, n, "gpt-4o");
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; ups[i].models != NULL && k < svc_json_array_len(ups[i].models); k++) {
            char m[160];
            size_t l;
            snprintf(m, sizeof(m), "%s", svc_json_str(svc_json_array_at(ups[i].models, k)));
            check_pick(ups, n, m);
            l = strlen(m);
            if (m[l - 1] == '*') {
                m[l - 1] = '\0';
                check_pick(ups, n, m);
                snprintf(m + strlen(m), sizeof(m) - strlen(m), "-x");
                check_pick(ups, n, m);
            } else if (l > 1) {
                m[l - 1] = '\0';
                check_pick(ups, n, m);
            }
        }
    }
out:
    svc_json_destroy(&list);
    free(spec);
}

/* ================================================================================================
 * MODEL_WINDOWS
 * ============================================================================================= */

/* The built-in prefixes of common/modelmap.c (their lengths decide which entry is the longest
 * match; their values come from a map without overrides). Keep in step with mm_builtin: a
 * missing one makes this target expect an override where a longer built-in wins. */
static const char *const builtin_prefixes[] = {
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-0301",
    "gpt-3.5-turbo-0613",
    "gpt-3.5-turbo-16k",
    "gpt-3.5-turbo-instruct",
    "gpt-35-turbo",
    "gpt-35-turbo-0301",
    "gpt-35-turbo-0613",
    "gpt-35-turbo-16k",
    "gpt-35-turbo-instruct",
    "gpt-4",
    "gpt-4-32k",
    "gpt-4-turbo",
    "gpt-4-1106",
    "gpt-4-0125",
    "gpt-4-vision",
    "gpt-4o",
    "chatgpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "gpt-5-chat",
    "o1",
    "o1-mini",
    "o1-preview",
    "o3",
    "o4-mini",
    "codex-mini",
    "gpt-oss",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
    "davinci-002",
    "babbage-002",
};
#define NBUILTIN (sizeof(builtin_prefixes) / sizeof(builtin_prefixes[0]))

struct ref_override {
    const char *prefix; /* into the reference's copy of the text */
    size_t len;
    long long window;
    int enc; /* -1: none given */
};

struct ref_map {
    struct ref_override o[256];
    size_t n;
    long long star_window; /* 0: no "*" */
    int star_enc;
};

/* docs/tokens.md, "Rules and errors"; text is changed (entries cut out in place). */
static int ref_overrides(struct ref_map *m, char *text)
{
    size_t count = 0;

    memset(m, 0, sizeof(*m));
    m->star_enc = -1;
    if (text[0] == '\0')
        return 1;
    for (char *p = text;;) {
        char *end = strchr(p, ','), *a = p, *z, *eq, *colon, *w;
        int last = end == NULL, enc = -1;
        long long window = 0;
        size_t digits = 0;

        if (last)
            end = p + strlen(p);
        *end = '\0';
        while (*a == ' ' || *a == '\t')
            a++;
        for (z = end; z > a && (z[-1] == ' ' || z[-1] == '\t'); z--)
            ;
        *z = '\0';
        if (a == z || ++count > 256 || (eq = strchr(a, '=')) == NULL || eq == a || eq - a > 200)
            return 0;
        for (char *c = a; c < eq; c++)
            if ((unsigned char)*c <= ' ' || *c == 0x7f)
                return 0;
        *eq = '\0';
        w = eq + 1;
        if ((colon = strchr(w, ':')) != NULL) {
            *colon = '\0';
            if (strcmp(colon + 1, "cl100k_base") == 0)
                enc = SVC_TOK_CL100K_BASE;
            else if (strcmp(colon + 1, "o200k_base") == 0)
                enc = SVC_TOK_O200K_BASE;
            else
                return 0;
        }
        for (; w[digits] != '\0'; digits++) {
            if (w[digits] < '0' || w[digits] > '9')
                return 0;
            if (window <= 1000000000)
                window = window * 10 + (w[digits] - '0');
        }
        if (digits == 0 || digits > 23 || window < 1 || window > 1000000000)
            return 0;
        if (strcmp(a, "*") == 0) {
            m->star_window = window; /* a later "*" wins (test_modelmap.c) */
            m->star_enc = enc;
        } else {
            for (size_t k = 0; k < m->n; k++)
                if (strcmp(m->o[k].prefix, a) == 0)
                    return 0;
            m->o[m->n++] = (struct ref_override){a, (size_t)(eq - a), window, enc};
        }
        if (last)
            return 1;
        p = end + 1;
    }
}

/* The longest entry whose prefix starts name: its length, or -1; *ov the override's index or
 * -1 for a built-in (an override wins a tie, having the same prefix). */
static long longest(const struct ref_map *m, const char *name, int *ov)
{
    size_t nl = strlen(name);
    long best = -1;

    *ov = -1;
    for (size_t i = 0; i < NBUILTIN; i++) {
        size_t l = strlen(builtin_prefixes[i]);
        if (l <= nl && memcmp(name, builtin_prefixes[i], l) == 0 && (long)l > best)
            best = (long)l;
    }
    for (size_t i = 0; i < m->n; i++)
        if (m->o[i].len <= nl && memcmp(name, m->o[i].prefix, m->o[i].len) == 0 &&
            (long)m->o[i].len >= best) {
            best = (long)m->o[i].len;
            *ov = (int)i;
        }
    return best;
}

static struct svc_modelmap *map0; /* the built-ins alone */

static void ref_lookup(const struct ref_map *m, const char *name, struct svc_modelmap_info *out)
{
    struct svc_modelmap_info dflt;
    int ova = -1, ovb = -1, ov;
    long a = -1, b = -1;

    svc_modelmap_lookup(map0, "", &dflt);
    if (m->star_window != 0) {
        dflt.context_window = m->star_window;
        if (m->star_enc >= 0)
            dflt.encoding = (enum svc_tokenizer_encoding_e)m->star_enc;
    }
    if (name[0] != '\0') {
        a = longest(m, name, &ova);
        if (strncmp(name, "ft:", 3) == 0 && name[3] != '\0')
            b = longest(m, name + 3, &ovb);
    }
    ov = b >= 0 && b > a ? ovb : ova;
    if (a < 0 && b < 0) {
        *out = dflt;
    } else if (ov < 0) {
        svc_modelmap_lookup(map0, name, out); /* a built-in wins: the same as without overrides */
    } else {
        char prefix[201];
        memcpy(prefix, m->o[ov].prefix, m->o[ov].len);
        prefix[m->o[ov].len] = '\0';
        svc_modelmap_lookup(map0, prefix, out); /* the entry it shadows, or the default */
        if (m->o[ov].enc >= 0)
            out->encoding = (enum svc_tokenizer_encoding_e)m->o[ov].enc;
        else if (!out->known)
            out->encoding = dflt.encoding;
        out->context_window = m->o[ov].window;
        out->known = 1;
    }
}

static int same_info(const struct svc_modelmap_info *a, const struct svc_modelmap_info *b)
{
    return a->encoding == b->encoding && a->context_window == b->context_window &&
           a->reasoning == b->reasoning && a->tokens_per_message == b->tokens_per_message &&
           a->tokens_per_name == b->tokens_per_name && a->known == b->known;
}

static void check_name(const struct svc_modelmap *map, const struct svc_modelmap *canon,
                       const struct ref_map *m, const char *name)
{
    struct svc_modelmap_info got, want, again;

    svc_modelmap_lookup(map, name, &got);
    ref_lookup(m, name, &want);
    if (!same_info(&got, &want))
        fprintf(stderr,
                "lookup \"%s\": window %lld enc %d known %d, reference window %lld enc %d known "
                "%d (or this target's copy of the built-in prefixes is stale)\n",
                name, got.context_window, got.encoding, got.known, want.context_window,
                want.encoding, want.known);
    CHECK(same_info(&got, &want));
    CHECK(got.context_window >= 1);
    svc_modelmap_lookup(canon, name, &again);
    CHECK(same_info(&got, &again));
}

static void fuzz_modelmap(const uint8_t *data, size_t size)
{
    static const char *const names[] = {"gpt-4o-mini",
                                        "gpt-4-turbo-2024",
                                        "ft:gpt-4o-mini:acme::1",
                                        "o3-pro",
                                        "unknown-model",
                                        "ft:",
                                        "ft:x",
                                        "x",
                                        ""};
    static const char *const enc_names[] = {"cl100k_base", "o200k_base"};
    struct ref_map *m = malloc(sizeof(*m));
    struct svc_modelmap *map = NULL, *canon = NULL;
    char *text = strndup((const char *)data, size), *copy = strdup(text), err[256], *ct;
    size_t o = 0;
    int rc, want, n;

    CHECK(m != NULL && text != NULL && copy != NULL);
    if (map0 == NULL) {
        CHECK(svc_modelmap_create(&map0, NULL, NULL, 0) == SVC_OK);
        for (size_t i = 0; i < NBUILTIN; i++) {
            struct svc_modelmap_info info;
            svc_modelmap_lookup(map0, builtin_prefixes[i], &info);
            CHECK(info.known); /* the copy names no prefix the table lacks */
        }
    }
    memset(err, 0, sizeof(err));
    rc = svc_modelmap_create(&map, text, err, sizeof(err));
    want = ref_overrides(m, copy);
    CHECK(rc == SVC_OK || rc == SVC_EINVAL);
    if ((rc == SVC_OK) != want)
        fprintf(stderr, "MODEL_WINDOWS \"%s\": parser %d (%s), reference %d\n", text, rc, err,
                want);
    CHECK((rc == SVC_OK) == want);
    if (rc != SVC_OK) {
        CHECK(map == NULL && strncmp(err, "MODEL_WINDOWS entry \"", 21) == 0);
        goto out;
    }
    CHECK(map != NULL && err[0] == '\0');
    /* canonical text: every entry as prefix=window[:encoding], "*" last */
    ct = malloc(size + 64);
    CHECK(ct != NULL);
    ct[0] = '\0';
    /* never longer than the input: blanks, leading zeros and repeated "*"s go */
    for (size_t k = 0; k < m->n; k++) {
        n = snprintf(ct + o, size + 64 - o, "%s%.*s=%lld%s%s", k > 0 ? "," : "", (int)m->o[k].len,
                     m->o[k].prefix, m->o[k].window, m->o[k].enc >= 0 ? ":" : "",
                     m->o[k].enc >= 0 ? enc_names[m->o[k].enc] : "");
        CHECK(n > 0 && (size_t)n < size + 64 - o);
        o += (size_t)n;
    }
    if (m->star_window != 0) {
        n = snprintf(ct + o, size + 64 - o, "%s*=%lld%s%s", m->n > 0 ? "," : "", m->star_window,
                     m->star_enc >= 0 ? ":" : "", m->star_enc >= 0 ? enc_names[m->star_enc] : "");
        CHECK(n > 0 && (size_t)n < size + 64 - o);
    }
    CHECK(svc_modelmap_create(&canon, ct, err, sizeof(err)) == SVC_OK);
    free(ct);

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        check_name(map, canon, m, names[i]);
    for (size_t i = 0; i < NBUILTIN; i++)
        check_name(map, canon, m, builtin_prefixes[i]);
    for (size_t k = 0; k < m->n && k < 64; k++) {
        char name[260];
        int l = (int)m->o[k].len;
        const char *p = m->o[k].prefix;
        snprintf(name, sizeof(name), "%.*s", l, p);
        check_name(map, canon, m, name);
        snprintf(name, sizeof(name), "%.*s-x", l, p);
        check_name(map, canon, m, name);
        snprintf(name, sizeof(name), "%.*s", l - 1, p);
        check_name(map, canon, m, name);
        snprintf(name, sizeof(name), "ft:%.*s:org", l, p);
        check_name(map, canon, m, name);
        snprintf(name, sizeof(name), "ft:%.*s", l - 1, p);
        check_name(map, canon, m, name);
    }
out:
    svc_modelmap_destroy(&canon);
    svc_modelmap_destroy(&map);
    free(copy);
    free(text);
    free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > INPUT_MAX)
        return 0;
    switch (data[0] % 4) {
    case 0:
        fuzz_dsn(data + 1, size - 1);
        break;
    case 1:
        fuzz_cidrs(data + 1, size - 1);
        break;
    case 2:
        fuzz_upstreams(data + 1, size - 1);
        break;
    default:
        fuzz_modelmap(data + 1, size - 1);
        break;
    }
    return 0;
}
