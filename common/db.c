/*
 * svc/db.h, the part common to both back ends: DSN parsing, the connection pool, the per-connection
 * statement cache, buffered results, transactions with retry, and migrations.
 * See docs/db.md for the decisions taken here.
 */

#include "db_int.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include "svc/log.h"
#include "svc/util.h"

#define DB_DEFAULT_FILE "chatweb.db"
#define DB_DEFAULT_POOL_MYSQL 8
#define DB_DEFAULT_POOL_SQLITE 4
#define DB_DEFAULT_ACQUIRE_MS 5000
#define DB_DEFAULT_CONNECT_MS 5000
#define DB_DEFAULT_IO_MS 60000
#define DB_DEFAULT_BUSY_MS 5000
#define DB_DEFAULT_LOCK_WAIT_MS 10000
#define DB_TIMEOUT_MAX_MS (3600u * 1000u) /* no timeout option may exceed one hour */
#define DB_PING_WAIT_MS 1000
#define DB_OPEN_ERR_MAX 256
#define DB_LOG_SQL_MAX 80 /* bytes of SQL text quoted in the log line of a failing statement */
#define DB_MIGRATIONS_MAX 10000
#define DB_MIGRATE_LOCK "chatweb_migrate"
#define DB_MIGRATE_LOCK_WAIT_S 30

/* ================================================================================================
 * DSN parsing
 * ============================================================================================= */

/* snprintf into err, ignoring truncation (messages are short and only for people). */
static void errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Copies n bytes of src into dst[cap] as a C string; SVC_ETOOLARGE when it does not fit. */
static int copy_str(char *dst, size_t cap, const char *src, size_t n)
{
    if (n >= cap)
        return SVC_ETOOLARGE;
    memcpy(dst, src, n);
    dst[n] = '\0';
    return SVC_OK;
}

/*
 * %-decodes n bytes of src into dst[cap]. plus_space turns '+' into ' ' (query values, like Go's
 * url.QueryUnescape). Decoded NULs are refused: nothing here may contain one.
 */
static int pct_decode(char *dst, size_t cap, const char *src, size_t n, int plus_space)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)src[i];
        if (c == '%') {
            if (i + 2 >= n)
                return SVC_EINVAL;
            int hi = svc_util_hex_value(src[i + 1]);
            int lo = svc_util_hex_value(src[i + 2]);
            if (hi < 0 || lo < 0)
                return SVC_EINVAL;
            c = hi * 16 + lo;
            if (c == 0)
                return SVC_EINVAL;
            i += 2;
        } else if (c == '+' && plus_space) {
            c = ' ';
        }
        if (o + 1 >= cap)
            return SVC_ETOOLARGE;
        dst[o++] = (char)c;
    }
    dst[o] = '\0';
    return SVC_OK;
}

static int parse_bool(const char *v, int *out)
{
    if (strcasecmp(v, "true") == 0 || strcmp(v, "1") == 0) {
        *out = 1;
        return SVC_OK;
    }
    if (strcasecmp(v, "false") == 0 || strcmp(v, "0") == 0) {
        *out = 0;
        return SVC_OK;
    }
    return SVC_EINVAL;
}

/* A Go duration ("5s", "500ms", "1m30s", "1.5s") in milliseconds, 1 ms .. 1 h. */
static int parse_duration_ms(const char *v, unsigned *out)
{
    static const struct {
        const char *unit;
        double ms;
    } units[] = {{"ns", 1e-6},  {"us", 1e-3},   {"\xc2\xb5s", 1e-3}, {"ms", 1.0},
                 {"s", 1000.0}, {"m", 60000.0}, {"h", 3600000.0}};
    double total = 0;
    const char *p = v;

    if (*p == '\0')
        return SVC_EINVAL;
    while (*p != '\0') {
        double num = 0, scale = 1;
        int digits = 0;
        while (isdigit((unsigned char)*p)) {
            num = num * 10 + (*p++ - '0');
            digits++;
            if (num > 1e12)
                return SVC_EINVAL;
        }
        if (*p == '.') {
            p++;
            while (isdigit((unsigned char)*p)) {
                scale /= 10;
                num += scale * (*p++ - '0');
                digits++;
            }
        }
        if (digits == 0)
            return SVC_EINVAL;
        size_t best = 0;
        double mult = 0;
        for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
            size_t ul = strlen(units[i].unit);
            if (strncmp(p, units[i].unit, ul) == 0 && ul > best) {
                best = ul;
                mult = units[i].ms;
            }
        }
        if (best == 0)
            return SVC_EINVAL; /* Go requires a unit */
        p += best;
        total += num * mult;
        if (total > (double)DB_TIMEOUT_MAX_MS)
            return SVC_EINVAL;
    }
    if (total < 1)
        return SVC_EINVAL;
    *out = (unsigned)(total + 0.5);
    return SVC_OK;
}

/* Applies one ?key=value option of a MySQL DSN (value already decoded). */
static int apply_option(struct svc__db_dsn *d, const char *key, const char *val, char *err,
                        size_t errlen)
{
    int b = 0;

    if (strcasecmp(key, "charset") == 0) {
        /* Go accepts a list ("utf8mb4,utf8") and uses the first the server knows. */
        char tmp[128];
        if (copy_str(tmp, sizeof(tmp), val, strlen(val)) == SVC_OK) {
            for (char *s = tmp, *e; s != NULL; s = e) {
                e = strchr(s, ',');
                if (e != NULL)
                    *e++ = '\0';
                if (strcasecmp(s, "utf8mb4") == 0 || strcasecmp(s, "utf8") == 0 ||
                    strcasecmp(s, "utf8mb3") == 0)
                    return SVC_OK;
            }
        }
        errf(err, errlen, "DSN option charset=%.40s: only utf8mb4 is supported", val);
        return SVC_EINVAL;
    }
    if (strcasecmp(key, "collation") == 0) {
        if (strncasecmp(val, "utf8mb4_", 8) == 0 || strncasecmp(val, "utf8_", 5) == 0)
            return SVC_OK;
        errf(err, errlen, "DSN option collation=%.40s: only utf8mb4 collations are supported", val);
        return SVC_EINVAL;
    }
    if (strcasecmp(key, "parseTime") == 0 || strcasecmp(key, "allowNativePasswords") == 0 ||
        strcasecmp(key, "interpolateParams") == 0) {
        if (parse_bool(val, &b) != SVC_OK) {
            errf(err, errlen, "DSN option %.40s: want true or false", key);
            return SVC_EINVAL;
        }
        return SVC_OK; /* go-sql-driver knobs with no meaning here */
    }
    if (strcasecmp(key, "clientFoundRows") == 0) {
        if (parse_bool(val, &b) != SVC_OK || b == 0) {
            errf(err, errlen,
                 "DSN option clientFoundRows: only true is supported (affected rows "
                 "always count matched rows)");
            return SVC_EINVAL;
        }
        return SVC_OK;
    }
    if (strcasecmp(key, "loc") == 0)
        return SVC_OK; /* sessions always run with time_zone '+00:00' */
    if (strcasecmp(key, "timeout") == 0 || strcasecmp(key, "readTimeout") == 0 ||
        strcasecmp(key, "writeTimeout") == 0) {
        unsigned ms = 0;
        if (parse_duration_ms(val, &ms) != SVC_OK) {
            errf(err, errlen, "DSN option %.40s=%.40s: want a duration from 1ms to 1h, e.g. 5s",
                 key, val);
            return SVC_EINVAL;
        }
        if (strcasecmp(key, "timeout") == 0)
            d->connect_timeout_ms = ms;
        else if (strcasecmp(key, "readTimeout") == 0)
            d->read_timeout_ms = ms;
        else
            d->write_timeout_ms = ms;
        return SVC_OK;
    }
    if (strcasecmp(key, "tls") == 0) {
        if (strcasecmp(val, "skip-verify") == 0)
            d->tls = SVC__DB_TLS_SKIP_VERIFY;
        else if (parse_bool(val, &b) == SVC_OK)
            d->tls = b ? SVC__DB_TLS_VERIFY : SVC__DB_TLS_OFF;
        else {
            errf(err, errlen, "DSN option tls=%.40s: want false, true or skip-verify", val);
            return SVC_EINVAL;
        }
        return SVC_OK;
    }
    if (strcasecmp(key, "socket") == 0) {
        if (val[0] != '/' || copy_str(d->socket, sizeof(d->socket), val, strlen(val)) != SVC_OK) {
            errf(err, errlen, "DSN option socket: want an absolute path shorter than %d bytes",
                 SVC__DB_PATH_MAX);
            return SVC_EINVAL;
        }
        d->host[0] = '\0';
        return SVC_OK;
    }
    errf(err, errlen, "unknown DSN option '%.40s'", key);
    return SVC_EINVAL;
}

/* Parses "k=v&k2=v2" (values %-decoded, '+' as space). */
static int parse_query(struct svc__db_dsn *d, const char *q, char *err, size_t errlen)
{
    while (*q != '\0') {
        const char *amp = strchr(q, '&');
        size_t n = amp != NULL ? (size_t)(amp - q) : strlen(q);
        const char *eq = memchr(q, '=', n);
        char key[64], val[SVC__DB_PATH_MAX];
        int rc;

        if (n == 0) {
            q = amp + 1;
            continue;
        }
        if (eq == NULL) {
            errf(err, errlen, "DSN option '%.*s' has no '=value'", (int)(n > 40 ? 40 : n), q);
            return SVC_EINVAL;
        }
        if (copy_str(key, sizeof(key), q, (size_t)(eq - q)) != SVC_OK) {
            errf(err, errlen, "DSN option name too long");
            return SVC_EINVAL;
        }
        if (pct_decode(val, sizeof(val), eq + 1, n - (size_t)(eq + 1 - q), 1) != SVC_OK) {
            errf(err, errlen, "DSN option '%.40s' has a bad or too long value", key);
            return SVC_EINVAL;
        }
        if ((rc = apply_option(d, key, val, err, errlen)) != SVC_OK)
            return rc;
        if (amp == NULL)
            break;
        q = amp + 1;
    }
    return SVC_OK;
}

static int parse_port(const char *s, size_t n, unsigned *out)
{
    unsigned v = 0;

    if (n == 0 || n > 5)
        return SVC_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return SVC_EINVAL;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v == 0 || v > 65535)
        return SVC_EINVAL;
    *out = v;
    return SVC_OK;
}

/*
 * "host", "host:port", "[v6]", "[v6]:port" (n bytes) into d->host/d->port; port defaults to
 * 3306.
 */
static int parse_hostport(struct svc__db_dsn *d, const char *s, size_t n, char *err, size_t errlen)
{
    const char *host = s, *port = NULL;
    size_t hostlen = n, portlen = 0;

    d->port = 3306;
    if (n > 0 && s[0] == '[') {
        const char *rb = memchr(s, ']', n);
        if (rb == NULL) {
            errf(err, errlen, "DSN host: missing ']' after an IPv6 address");
            return SVC_EINVAL;
        }
        host = s + 1;
        hostlen = (size_t)(rb - host);
        if ((size_t)(rb + 1 - s) < n) {
            if (rb[1] != ':') {
                errf(err, errlen, "DSN host: junk after ']'");
                return SVC_EINVAL;
            }
            port = rb + 2;
            portlen = n - (size_t)(port - s);
        }
    } else {
        const char *colon = memchr(s, ':', n);
        if (colon != NULL) {
            hostlen = (size_t)(colon - s);
            port = colon + 1;
            portlen = n - hostlen - 1;
        }
    }
    if (hostlen == 0) {
        errf(err, errlen, "DSN has an empty host name");
        return SVC_EINVAL;
    }
    for (size_t i = 0; i < hostlen; i++) {
        unsigned char c = (unsigned char)host[i];
        if (c <= ' ' || c == '/' || c == '@' || c == '?' || c == '(' || c == ')') {
            errf(err, errlen, "DSN host name contains a bad character");
            return SVC_EINVAL;
        }
    }
    if (copy_str(d->host, sizeof(d->host), host, hostlen) != SVC_OK) {
        errf(err, errlen, "DSN host name too long");
        return SVC_EINVAL;
    }
    if (port != NULL && parse_port(port, portlen, &d->port) != SVC_OK) {
        errf(err, errlen, "DSN port must be a number from 1 to 65535");
        return SVC_EINVAL;
    }
    return SVC_OK;
}

/* "unix(/path)" of n bytes into d->socket. */
static int parse_unix(struct svc__db_dsn *d, const char *s, size_t n, char *err, size_t errlen)
{
    /* caller checked the "unix(" prefix and the ')' at s[n-1] */
    const char *path = s + 5;
    size_t len = n - 6;

    if (len == 0 || path[0] != '/') {
        errf(err, errlen, "DSN unix() needs an absolute socket path");
        return SVC_EINVAL;
    }
    if (copy_str(d->socket, sizeof(d->socket), path, len) != SVC_OK) {
        errf(err, errlen, "DSN socket path too long");
        return SVC_EINVAL;
    }
    d->host[0] = '\0';
    return SVC_OK;
}

static int check_dbname(struct svc__db_dsn *d, char *err, size_t errlen)
{
    if (d->dbname[0] == '\0') {
        errf(err, errlen, "DSN has no database name (.../dbname)");
        return SVC_EINVAL;
    }
    if (strlen(d->dbname) > 64 || strpbrk(d->dbname, "/\\.`'\" ") != NULL) {
        errf(err, errlen, "DSN database name is too long or has a bad character");
        return SVC_EINVAL;
    }
    if (d->user[0] == '\0') {
        errf(err, errlen, "DSN has no user name (user:password@...)");
        return SVC_EINVAL;
    }
    return SVC_OK;
}

/* mysql://user:pass@host[:port]/db[?opts] (s points after "://"). */
static int parse_mysql_url(struct svc__db_dsn *d, const char *s, char *err, size_t errlen)
{
    const char *at = strrchr(s, '@');
    const char *rest = s, *slash, *q;
    int rc;

    if (at != NULL) {
        const char *colon = memchr(s, ':', (size_t)(at - s));
        size_t ulen = colon != NULL ? (size_t)(colon - s) : (size_t)(at - s);
        if (pct_decode(d->user, sizeof(d->user), s, ulen, 0) != SVC_OK) {
            errf(err, errlen, "DSN user name has a bad %%-escape or is too long");
            return SVC_EINVAL;
        }
        if (colon != NULL && pct_decode(d->pass, sizeof(d->pass), colon + 1,
                                        (size_t)(at - colon - 1), 0) != SVC_OK) {
            errf(err, errlen, "DSN password has a bad %%-escape or is too long");
            return SVC_EINVAL;
        }
        rest = at + 1;
    }
    if (strncmp(rest, "unix(", 5) == 0) {
        const char *rp = strchr(rest, ')');
        if (rp == NULL) {
            errf(err, errlen, "DSN unix( has no closing ')'");
            return SVC_EINVAL;
        }
        if ((rc = parse_unix(d, rest, (size_t)(rp + 1 - rest), err, errlen)) != SVC_OK)
            return rc;
        slash = rp + 1;
        if (*slash != '/') {
            errf(err, errlen, "DSN needs '/dbname' after unix(...)");
            return SVC_EINVAL;
        }
    } else {
        slash = strchr(rest, '/');
        if (slash == NULL) {
            errf(err, errlen, "DSN has no database name (.../dbname)");
            return SVC_EINVAL;
        }
        if ((rc = parse_hostport(d, rest, (size_t)(slash - rest), err, errlen)) != SVC_OK)
            return rc;
    }
    q = strchr(slash + 1, '?');
    if (pct_decode(d->dbname, sizeof(d->dbname), slash + 1,
                   q != NULL ? (size_t)(q - slash - 1) : strlen(slash + 1), 0) != SVC_OK) {
        errf(err, errlen, "DSN database name has a bad %%-escape or is too long");
        return SVC_EINVAL;
    }
    if (q != NULL && (rc = parse_query(d, q + 1, err, errlen)) != SVC_OK)
        return rc;
    return check_dbname(d, err, errlen);
}

/*
 * go-sql-driver form [user[:password]@][net[(addr)]]/dbname[?params], split the way that driver
 * does it: the last '/' starts the database name, the last '@' before it ends the password, the
 * first ':' ends the user. user and password are taken verbatim (no %-decoding), so a DSN that
 * works for a Go service works here unchanged.
 */
static int parse_mysql_go(struct svc__db_dsn *d, const char *s, char *err, size_t errlen)
{
    const char *slash = strrchr(s, '/');
    const char *at = NULL, *net, *q;
    int rc;

    if (slash == NULL) {
        errf(err, errlen,
             "unrecognised DSN: expected mysql://user:pass@host:port/db, "
             "user:pass@tcp(host:port)/db or sqlite:path");
        return SVC_EINVAL;
    }
    for (const char *p = slash; p >= s; p--)
        if (*p == '@') {
            at = p;
            break;
        }
    if (at != NULL) {
        const char *colon = memchr(s, ':', (size_t)(at - s));
        size_t ulen = colon != NULL ? (size_t)(colon - s) : (size_t)(at - s);
        if (copy_str(d->user, sizeof(d->user), s, ulen) != SVC_OK) {
            errf(err, errlen, "DSN user name too long");
            return SVC_EINVAL;
        }
        if (colon != NULL &&
            copy_str(d->pass, sizeof(d->pass), colon + 1, (size_t)(at - colon - 1)) != SVC_OK) {
            errf(err, errlen, "DSN password too long");
            return SVC_EINVAL;
        }
        net = at + 1;
    } else {
        net = s;
    }
    size_t netlen = (size_t)(slash - net);
    if (netlen == 0 || (netlen == 3 && strncmp(net, "tcp", 3) == 0)) {
        if ((rc = parse_hostport(d, "127.0.0.1", 9, err, errlen)) != SVC_OK)
            return rc;
    } else if (netlen >= 5 && strncmp(net, "tcp(", 4) == 0 && net[netlen - 1] == ')') {
        if (netlen == 5) {
            if ((rc = parse_hostport(d, "127.0.0.1", 9, err, errlen)) != SVC_OK)
                return rc;
        } else if ((rc = parse_hostport(d, net + 4, netlen - 5, err, errlen)) != SVC_OK) {
            return rc;
        }
    } else if (netlen > 5 && strncmp(net, "unix(", 5) == 0 && net[netlen - 1] == ')') {
        if ((rc = parse_unix(d, net, netlen, err, errlen)) != SVC_OK)
            return rc;
    } else {
        errf(err, errlen, "DSN address must be tcp(host:port) or unix(/path)");
        return SVC_EINVAL;
    }
    q = strchr(slash + 1, '?');
    if (copy_str(d->dbname, sizeof(d->dbname), slash + 1,
                 q != NULL ? (size_t)(q - slash - 1) : strlen(slash + 1)) != SVC_OK) {
        errf(err, errlen, "DSN database name too long");
        return SVC_EINVAL;
    }
    if (q != NULL && (rc = parse_query(d, q + 1, err, errlen)) != SVC_OK)
        return rc;
    return check_dbname(d, err, errlen);
}

static int join_path(char *dst, size_t cap, const char *dir, const char *file)
{
    size_t dl = strlen(dir);
    int n;

    while (dl > 1 && dir[dl - 1] == '/')
        dl--;
    n = snprintf(dst, cap, "%.*s/%s", (int)dl, dir, file);
    return n < 0 || (size_t)n >= cap ? SVC_ETOOLARGE : SVC_OK;
}

static int parse_sqlite(struct svc__db_dsn *d, const char *s, const char *data_dir, char *err,
                        size_t errlen)
{
    d->dialect = SVC_DB_SQLITE;
    if (strncmp(s, "//", 2) == 0)
        s += 2; /* sqlite:///abs -> /abs; sqlite://rel -> rel */
    /* after the "//": SQLite opens a path of ":memory:" in memory, so sqlite://:memory: must
     * be known as such too (a pool of separate databases, refused WAL, a stray file otherwise) */
    if (strcmp(s, ":memory:") == 0) {
        d->memory = 1;
        snprintf(d->path, sizeof(d->path), ":memory:");
        return SVC_OK;
    }
    if (*s == '\0') {
        errf(err, errlen, "sqlite DSN has no file name");
        return SVC_EINVAL;
    }
    if (strchr(s, '?') != NULL) {
        errf(err, errlen, "sqlite DSN options are not supported");
        return SVC_EINVAL;
    }
    if (s[0] == '/' || data_dir == NULL || data_dir[0] == '\0') {
        if (copy_str(d->path, sizeof(d->path), s, strlen(s)) != SVC_OK) {
            errf(err, errlen, "sqlite path too long");
            return SVC_EINVAL;
        }
        return SVC_OK;
    }
    if (join_path(d->path, sizeof(d->path), data_dir, s) != SVC_OK ||
        copy_str(d->data_dir, sizeof(d->data_dir), data_dir, strlen(data_dir)) != SVC_OK) {
        errf(err, errlen, "sqlite path too long");
        return SVC_EINVAL;
    }
    d->use_data_dir = 1;
    return SVC_OK;
}

int svc__db_dsn_parse(struct svc__db_dsn *out, const char *dsn, const char *data_dir, char *err,
                      size_t errlen)
{
    size_t scheme_len = 0;

    memset(out, 0, sizeof(*out));
    errf(err, errlen, "%s", "");
    if (dsn == NULL || dsn[0] == '\0') {
        if (data_dir == NULL || data_dir[0] == '\0') {
            errf(err, errlen, "no DSN given and no data directory to keep " DB_DEFAULT_FILE " in");
            return SVC_EINVAL;
        }
        out->dialect = SVC_DB_SQLITE;
        if (join_path(out->path, sizeof(out->path), data_dir, DB_DEFAULT_FILE) != SVC_OK ||
            copy_str(out->data_dir, sizeof(out->data_dir), data_dir, strlen(data_dir)) != SVC_OK) {
            errf(err, errlen, "data directory path too long");
            return SVC_EINVAL;
        }
        out->use_data_dir = 1;
        return SVC_OK;
    }
    if (strlen(dsn) >= 4096) {
        errf(err, errlen, "DSN too long");
        return SVC_EINVAL;
    }
    if (strncmp(dsn, "sqlite:", 7) == 0)
        return parse_sqlite(out, dsn + 7, data_dir, err, errlen);

    out->dialect = SVC_DB_MYSQL;
    if (strncmp(dsn, "mysql://", 8) == 0)
        return parse_mysql_url(out, dsn + 8, err, errlen);
    if (strncmp(dsn, "mariadb://", 10) == 0)
        return parse_mysql_url(out, dsn + 10, err, errlen);

    /* Some other URL scheme? Only letters, digits, '+', '-', '.' before "://" make one; a Go DSN
     * whose password contains "://" has a ':' or '@' there and falls through. */
    while (isalnum((unsigned char)dsn[scheme_len]) || dsn[scheme_len] == '+' ||
           dsn[scheme_len] == '-' || dsn[scheme_len] == '.')
        scheme_len++;
    if (scheme_len > 0 && strncmp(dsn + scheme_len, "://", 3) == 0) {
        errf(err, errlen,
             "unsupported DSN scheme '%.*s' (use mysql://, mariadb://, sqlite: or "
             "user:pass@tcp(host:port)/db)",
             (int)(scheme_len > 32 ? 32 : scheme_len), dsn);
        return SVC_EINVAL;
    }
    return parse_mysql_go(out, dsn, err, errlen);
}

void svc__db_dsn_describe(const struct svc__db_dsn *d, char *buf, size_t len)
{
    char addr[SVC__DB_PATH_MAX + 16];

    if (buf == NULL || len == 0)
        return;
    if (d->dialect == SVC_DB_SQLITE) {
        snprintf(buf, len, "sqlite:%s", d->path);
        return;
    }
    if (d->socket[0] != '\0')
        snprintf(addr, sizeof(addr), "unix(%s)", d->socket);
    else if (strchr(d->host, ':') != NULL)
        snprintf(addr, sizeof(addr), "[%s]:%u", d->host, d->port);
    else
        snprintf(addr, sizeof(addr), "%s:%u", d->host, d->port);
    snprintf(buf, len, "mysql://%s%s@%s/%s", d->user, d->pass[0] != '\0' ? ":***" : "", addr,
             d->dbname);
}

/* ================================================================================================
 * small helpers
 * ============================================================================================= */

void svc__db_set_err(struct svc_db_conn *conn, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(conn->err, sizeof(conn->err), fmt, ap);
    va_end(ap);
}

int svc__db_sql_is_blank(const char *sql, size_t len)
{
    size_t i = 0;

    while (i < len) {
        char c = sql[i];
        if (isspace((unsigned char)c) || c == ';') {
            i++;
        } else if (c == '-' && i + 1 < len && sql[i + 1] == '-') {
            while (i < len && sql[i] != '\n')
                i++;
        } else if (c == '/' && i + 1 < len && sql[i + 1] == '*') {
            i += 2;
            while (i + 1 < len && !(sql[i] == '*' && sql[i + 1] == '/'))
                i++;
            if (i + 1 >= len)
                return 0; /* unterminated comment: let the engine complain */
            i += 2;
        } else {
            return 0;
        }
    }
    return 1;
}

/* mkdir -p with mode 0750 for the directories it creates. */
static int mkdir_p(const char *dir)
{
    char tmp[SVC__DB_PATH_MAX];
    size_t n = strlen(dir);

    if (n == 0 || n >= sizeof(tmp))
        return SVC_EINVAL;
    memcpy(tmp, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (tmp[i] != '/' && tmp[i] != '\0')
            continue;
        char saved = tmp[i];
        tmp[i] = '\0';
        if (mkdir(tmp, 0750) != 0 && errno != EEXIST)
            return SVC_EIO;
        tmp[i] = saved;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return SVC_EIO;
    return SVC_OK;
}

/* ================================================================================================
 * statement cache
 * ============================================================================================= */

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 14695981039346656037ull;

    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

void *svc__db_stmt_cache_find(struct svc_db_conn *conn, const char *sql, size_t len)
{
    uint64_t h = fnv1a(sql, len);

    for (unsigned i = 0; i < conn->nstmt; i++) {
        struct svc__db_stmt_slot *s = &conn->stmts[i];
        if (s->hash == h && s->len == len && memcmp(s->sql, sql, len) == 0) {
            s->used = ++conn->tick;
            return s->stmt;
        }
    }
    return NULL;
}

int svc__db_stmt_cache_add(struct svc_db_conn *conn, const char *sql, size_t len, void *stmt)
{
    struct svc__db_stmt_slot *slot;
    char *copy = malloc(len + 1);

    if (copy == NULL) {
        conn->db->vt->stmt_finalize(conn, stmt);
        return SVC_ENOMEM;
    }
    memcpy(copy, sql, len);
    copy[len] = '\0';
    if (conn->nstmt < SVC_DB_STMT_CACHE_MAX) {
        slot = &conn->stmts[conn->nstmt++];
    } else {
        slot = &conn->stmts[0];
        for (unsigned i = 1; i < conn->nstmt; i++)
            if (conn->stmts[i].used < slot->used)
                slot = &conn->stmts[i];
        conn->db->vt->stmt_finalize(conn, slot->stmt);
        free(slot->sql);
    }
    slot->sql = copy;
    slot->len = len;
    slot->hash = fnv1a(sql, len);
    slot->used = ++conn->tick;
    slot->stmt = stmt;
    return SVC_OK;
}

void svc__db_stmt_cache_forget(struct svc_db_conn *conn, void *stmt)
{
    for (unsigned i = 0; i < conn->nstmt; i++) {
        if (conn->stmts[i].stmt != stmt)
            continue;
        free(conn->stmts[i].sql);
        conn->stmts[i] = conn->stmts[--conn->nstmt];
        memset(&conn->stmts[conn->nstmt], 0, sizeof(conn->stmts[0]));
        return;
    }
}

void svc__db_stmt_cache_clear(struct svc_db_conn *conn)
{
    for (unsigned i = 0; i < conn->nstmt; i++) {
        conn->db->vt->stmt_finalize(conn, conn->stmts[i].stmt);
        free(conn->stmts[i].sql);
        memset(&conn->stmts[i], 0, sizeof(conn->stmts[i]));
    }
    conn->nstmt = 0;
}

/* ================================================================================================
 * buffered results
 * ============================================================================================= */

enum { CELL_NULL = 0, CELL_INT = 1, CELL_BYTES = 2 };

struct cell {
    int64_t i64;
    uint32_t off; /* into data; the bytes are followed by a NUL */
    uint32_t len;
    uint32_t kind;
};

struct svc_db_rows {
    size_t ncols, nrows;
    size_t max_rows, max_bytes;
    struct cell *cells; /* nrows * ncols */
    size_t cells_cap;   /* in rows */
    char *data;
    size_t dlen, dcap;
    uint32_t *name_off; /* ncols offsets into data */
};

static size_t rows_bytes(const struct svc_db_rows *r)
{
    return r->dlen + r->cells_cap * r->ncols * sizeof(struct cell);
}

/* Makes room for n more data bytes. */
static int rows_grow_data(struct svc_db_rows *r, size_t n)
{
    size_t need = r->dlen + n, cap = r->dcap;
    char *p;

    if (need > r->max_bytes || need > UINT32_MAX || rows_bytes(r) + n > r->max_bytes)
        return SVC_ETOOLARGE;
    if (need <= cap)
        return SVC_OK;
    if (cap == 0)
        cap = 1024;
    while (cap < need)
        cap *= 2;
    if (cap > r->max_bytes)
        cap = need > r->max_bytes ? need : r->max_bytes;
    if ((p = realloc(r->data, cap)) == NULL)
        return SVC_ENOMEM;
    r->data = p;
    r->dcap = cap;
    return SVC_OK;
}

int svc__db_rows_create(struct svc_db_rows **out, size_t ncols, size_t max_rows, size_t max_bytes)
{
    struct svc_db_rows *r;

    *out = NULL;
    if (ncols > SVC_DB_COLS_MAX)
        return SVC_ETOOLARGE;
    if ((r = calloc(1, sizeof(*r))) == NULL)
        return SVC_ENOMEM;
    r->ncols = ncols;
    r->max_rows = max_rows;
    r->max_bytes = max_bytes;
    if (ncols > 0 && (r->name_off = calloc(ncols, sizeof(*r->name_off))) == NULL) {
        free(r);
        return SVC_ENOMEM;
    }
    *out = r;
    return SVC_OK;
}

int svc__db_rows_reserve(struct svc_db_rows *r, size_t c, size_t len, char **dst)
{
    struct cell *cell;
    int rc;

    if (r->nrows == 0 || c >= r->ncols)
        return SVC_EINTERNAL;
    if (len >= UINT32_MAX || (rc = rows_grow_data(r, len + 1)) != SVC_OK)
        return len >= UINT32_MAX ? SVC_ETOOLARGE : rc;
    cell = &r->cells[(r->nrows - 1) * r->ncols + c];
    cell->kind = CELL_BYTES;
    cell->off = (uint32_t)r->dlen;
    cell->len = (uint32_t)len;
    r->data[r->dlen + len] = '\0';
    *dst = r->data + r->dlen;
    r->dlen += len + 1;
    return SVC_OK;
}

int svc__db_rows_set_bytes(struct svc_db_rows *r, size_t c, const void *p, size_t len)
{
    char *dst = NULL;
    int rc = svc__db_rows_reserve(r, c, len, &dst);

    if (rc == SVC_OK && len > 0)
        memcpy(dst, p, len);
    return rc;
}

int svc__db_rows_set_i64(struct svc_db_rows *r, size_t c, int64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof(tmp), "%" PRId64, v);
    int rc = svc__db_rows_set_bytes(r, c, tmp, (size_t)n);

    if (rc == SVC_OK) {
        struct cell *cell = &r->cells[(r->nrows - 1) * r->ncols + c];
        cell->kind = CELL_INT;
        cell->i64 = v;
    }
    return rc;
}

int svc__db_rows_set_name(struct svc_db_rows *r, size_t c, const char *name, size_t len)
{
    int rc;

    if (c >= r->ncols)
        return SVC_EINTERNAL;
    if (len > 1024)
        len = 1024;
    if ((rc = rows_grow_data(r, len + 1)) != SVC_OK)
        return rc;
    memcpy(r->data + r->dlen, name, len);
    r->data[r->dlen + len] = '\0';
    r->name_off[c] = (uint32_t)r->dlen;
    r->dlen += len + 1;
    return SVC_OK;
}

int svc__db_rows_add_row(struct svc_db_rows *r)
{
    if (r->nrows >= r->max_rows)
        return SVC_ETOOLARGE;
    if (r->ncols == 0) {
        r->nrows++;
        return SVC_OK;
    }
    if (r->nrows == r->cells_cap) {
        size_t cap = r->cells_cap == 0 ? 16 : r->cells_cap * 2;
        struct cell *p;
        if (cap > r->max_rows)
            cap = r->max_rows;
        if (r->dlen + cap * r->ncols * sizeof(struct cell) > r->max_bytes) {
            /* grow only as far as the byte budget allows */
            size_t fit = (r->max_bytes - r->dlen) / (r->ncols * sizeof(struct cell));
            if (fit <= r->cells_cap)
                return SVC_ETOOLARGE;
            cap = fit;
        }
        if ((p = realloc(r->cells, cap * r->ncols * sizeof(struct cell))) == NULL)
            return SVC_ENOMEM;
        r->cells = p;
        r->cells_cap = cap;
    }
    memset(&r->cells[r->nrows * r->ncols], 0, r->ncols * sizeof(struct cell));
    r->nrows++;
    return SVC_OK;
}

static const struct cell *cell_at(const struct svc_db_rows *r, size_t row, size_t c)
{
    if (r == NULL || row >= r->nrows || c >= r->ncols)
        return NULL;
    return &r->cells[row * r->ncols + c];
}

size_t svc_db_rows_count(const struct svc_db_rows *rows)
{
    return rows != NULL ? rows->nrows : 0;
}

size_t svc_db_rows_columns(const struct svc_db_rows *rows)
{
    return rows != NULL ? rows->ncols : 0;
}

const char *svc_db_rows_name(const struct svc_db_rows *rows, size_t c)
{
    if (rows == NULL || c >= rows->ncols)
        return NULL;
    return rows->data + rows->name_off[c];
}

int svc_db_rows_is_null(const struct svc_db_rows *rows, size_t r, size_t c)
{
    const struct cell *cell = cell_at(rows, r, c);

    return cell == NULL || cell->kind == CELL_NULL;
}

int64_t svc_db_rows_i64(const struct svc_db_rows *rows, size_t r, size_t c)
{
    const struct cell *cell = cell_at(rows, r, c);
    const char *s, *end;
    long long v;

    if (cell == NULL || cell->kind == CELL_NULL)
        return 0;
    if (cell->kind == CELL_INT)
        return cell->i64;
    s = rows->data + cell->off;
    if (cell->len == 0 || cell->len > 20 || isspace((unsigned char)s[0]))
        return 0;
    errno = 0;
    v = strtoll(s, (char **)&end, 10);
    if (errno != 0 || end != s + cell->len)
        return 0;
    return (int64_t)v;
}

const char *svc_db_rows_text(const struct svc_db_rows *rows, size_t r, size_t c)
{
    const struct cell *cell = cell_at(rows, r, c);

    if (cell == NULL || cell->kind == CELL_NULL)
        return NULL;
    return rows->data + cell->off;
}

size_t svc_db_rows_len(const struct svc_db_rows *rows, size_t r, size_t c)
{
    const struct cell *cell = cell_at(rows, r, c);

    return cell == NULL || cell->kind == CELL_NULL ? 0 : cell->len;
}

const void *svc_db_rows_blob(const struct svc_db_rows *rows, size_t r, size_t c, size_t *len)
{
    const struct cell *cell = cell_at(rows, r, c);

    if (cell == NULL || cell->kind == CELL_NULL) {
        if (len != NULL)
            *len = 0;
        return NULL;
    }
    if (len != NULL)
        *len = cell->len;
    return rows->data + cell->off;
}

void svc_db_rows_destroy(struct svc_db_rows **rows)
{
    if (rows == NULL || *rows == NULL)
        return;
    free((*rows)->cells);
    free((*rows)->data);
    free((*rows)->name_off);
    free(*rows);
    *rows = NULL;
}

/* ================================================================================================
 * opening, the pool
 * ============================================================================================= */

static unsigned clamp_ms(unsigned v, unsigned dflt)
{
    if (v == 0)
        return dflt;
    return v > DB_TIMEOUT_MAX_MS ? DB_TIMEOUT_MAX_MS : v;
}

static void fill_opts(struct svc_db *db, const struct svc_db_opts *in)
{
    struct svc_db_opts o = {0};

    if (in != NULL)
        o = *in;
    if (o.pool_size == 0)
        o.pool_size =
            db->dsn.dialect == SVC_DB_MYSQL ? DB_DEFAULT_POOL_MYSQL : DB_DEFAULT_POOL_SQLITE;
    if (db->dsn.memory)
        o.pool_size = 1; /* every connection to :memory: would be a different database */
    o.acquire_timeout_ms = clamp_ms(o.acquire_timeout_ms, DB_DEFAULT_ACQUIRE_MS);
    o.connect_timeout_ms = clamp_ms(db->dsn.connect_timeout_ms != 0 ? db->dsn.connect_timeout_ms
                                                                    : o.connect_timeout_ms,
                                    DB_DEFAULT_CONNECT_MS);
    o.io_timeout_ms = clamp_ms(o.io_timeout_ms, DB_DEFAULT_IO_MS);
    o.busy_timeout_ms = clamp_ms(o.busy_timeout_ms, DB_DEFAULT_BUSY_MS);
    o.lock_wait_ms = clamp_ms(o.lock_wait_ms, DB_DEFAULT_LOCK_WAIT_MS);
    if (o.max_result_rows == 0 || o.max_result_rows > SVC_DB_ROWS_MAX)
        o.max_result_rows = SVC_DB_ROWS_MAX;
    if (o.max_result_bytes == 0 || o.max_result_bytes > SVC_DB_RESULT_BYTES_MAX)
        o.max_result_bytes = SVC_DB_RESULT_BYTES_MAX;
    /* The per-direction DSN timeouts go to the back end through dsn; io is their default. */
    if (db->dsn.read_timeout_ms == 0)
        db->dsn.read_timeout_ms = o.io_timeout_ms;
    if (db->dsn.write_timeout_ms == 0)
        db->dsn.write_timeout_ms = o.io_timeout_ms;
    db->opts = o;
}

static void db_free(struct svc_db *db, int sync_init)
{
    if (db == NULL)
        return;
    for (unsigned i = 0; i < db->nidle; i++)
        db->vt->conn_destroy(db->idle[i]);
    if (sync_init) {
        pthread_mutex_destroy(&db->mu);
        pthread_cond_destroy(&db->cv);
        pthread_mutex_destroy(&db->group_mu);
        pthread_cond_destroy(&db->group_cv);
    }
    /* scrub the password before the memory goes back to the allocator */
    memset(&db->dsn, 0, sizeof(db->dsn));
    free(db);
}

int svc_db_create(struct svc_db **out, const char *dsn, const char *data_dir,
                  const struct svc_db_opts *opts, char *err, size_t errlen)
{
    struct svc_db *db = NULL;
    struct svc_db_conn *conn = NULL;
    char msg[DB_OPEN_ERR_MAX] = "";
    pthread_condattr_t ca;
    int sync_init = 0;
    int rc;

    if (out == NULL) {
        snprintf(msg, sizeof(msg), "svc_db_create: out is NULL");
        rc = SVC_EINVAL;
        goto out;
    }
    *out = NULL;
    if (opts != NULL && opts->pool_size > SVC_DB_POOL_MAX) {
        snprintf(msg, sizeof(msg), "pool size %u is above the maximum %d", opts->pool_size,
                 SVC_DB_POOL_MAX);
        rc = SVC_EINVAL;
        goto out;
    }
    if ((db = calloc(1, sizeof(*db))) == NULL) {
        snprintf(msg, sizeof(msg), "out of memory");
        rc = SVC_ENOMEM;
        goto out;
    }
    if ((rc = svc__db_dsn_parse(&db->dsn, dsn, data_dir, msg, sizeof(msg))) != SVC_OK)
        goto out;
    fill_opts(db, opts);

    if (db->dsn.dialect == SVC_DB_MYSQL) {
        db->vt = &svc__db_mysql_vtable;
        if ((rc = svc__db_mysql_library_init()) != SVC_OK) {
            snprintf(msg, sizeof(msg), "mysql_library_init failed");
            goto out;
        }
    } else {
        db->vt = &svc__db_sqlite_vtable;
        if (db->dsn.use_data_dir && mkdir_p(db->dsn.data_dir) != SVC_OK) {
            snprintf(msg, sizeof(msg), "cannot create data directory %.200s: %s", db->dsn.data_dir,
                     strerror(errno));
            rc = SVC_EUNAVAIL;
            goto out;
        }
    }

    if (pthread_condattr_init(&ca) != 0) {
        rc = SVC_ENOMEM;
        goto out;
    }
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (pthread_mutex_init(&db->mu, NULL) != 0) {
        pthread_condattr_destroy(&ca);
        rc = SVC_ENOMEM;
        goto out;
    }
    if (pthread_cond_init(&db->cv, &ca) != 0) {
        pthread_mutex_destroy(&db->mu);
        pthread_condattr_destroy(&ca);
        rc = SVC_ENOMEM;
        goto out;
    }
    pthread_condattr_destroy(&ca);
    if (pthread_mutex_init(&db->group_mu, NULL) != 0) {
        pthread_mutex_destroy(&db->mu);
        pthread_cond_destroy(&db->cv);
        rc = SVC_ENOMEM;
        goto out;
    }
    if (pthread_cond_init(&db->group_cv, NULL) != 0) {
        pthread_mutex_destroy(&db->mu);
        pthread_cond_destroy(&db->cv);
        pthread_mutex_destroy(&db->group_mu);
        rc = SVC_ENOMEM;
        goto out;
    }
    sync_init = 1;

    /* One connection now, so a wrong host, password or path fails at start-up, not at the
     * first request. */
    if ((rc = db->vt->conn_create(db, &conn, msg, sizeof(msg))) != SVC_OK)
        goto out;
    db->idle[db->nidle++] = conn;
    db->nopen = 1;
    conn = NULL;
    rc = SVC_OK;

out:
    if (rc != SVC_OK) {
        if (msg[0] == '\0')
            snprintf(msg, sizeof(msg), "%s", svc_strerror(rc));
        db_free(db, sync_init);
        db = NULL;
    }
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s", msg);
    if (out != NULL)
        *out = db;
    return rc;
}

void svc_db_destroy(struct svc_db **dbp)
{
    struct svc_db *db;

    if (dbp == NULL || *dbp == NULL)
        return;
    db = *dbp;
    *dbp = NULL;
    pthread_mutex_lock(&db->mu);
    if (db->nopen != db->nidle)
        SVC_LOG_ERR(NULL, "db destroy", "%u connection(s) still borrowed: leaked",
                    db->nopen - db->nidle);
    pthread_mutex_unlock(&db->mu);
    db_free(db, 1);
}

void svc_db_describe(const struct svc_db *db, char *buf, size_t len)
{
    char d[SVC__DB_PATH_MAX + 512];

    if (buf == NULL || len == 0)
        return;
    if (db == NULL) {
        snprintf(buf, len, "(no database)");
        return;
    }
    svc__db_dsn_describe(&db->dsn, d, sizeof(d));
    snprintf(buf, len, "%s (pool %u%s)", d, db->opts.pool_size,
             db->dsn.dialect == SVC_DB_SQLITE && !db->dsn.memory ? ", wal" : "");
}

enum svc_db_dialect svc_db_dialect(const struct svc_db *db)
{
    return (enum svc_db_dialect)db->dsn.dialect;
}

enum svc_db_dialect svc_db_conn_dialect(const struct svc_db_conn *conn)
{
    return (enum svc_db_dialect)conn->db->dsn.dialect;
}

void svc_db_thread_end(void)
{
    svc__db_mysql_thread_end();
}

void svc_db_teardown(void)
{
    svc__db_mysql_library_end();
}

int svc_db_conn_get(struct svc_db *db, struct svc_db_conn **connp, int timeout_ms)
{
    struct svc_db_conn *conn = NULL;
    struct timespec deadline;
    char msg[SVC__DB_ERR_MAX];
    uint64_t wait_ms;
    int rc = SVC_OK;

    if (connp == NULL)
        return SVC_EINVAL;
    *connp = NULL;
    if (db == NULL)
        return SVC_EINVAL;
    wait_ms = timeout_ms < 0 ? db->opts.acquire_timeout_ms : (unsigned)timeout_ms;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += (time_t)(wait_ms / 1000);
    deadline.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }

    pthread_mutex_lock(&db->mu);
    for (;;) {
        if (db->nidle > 0) {
            conn = db->idle[--db->nidle]; /* LIFO: the warmest connection */
            break;
        }
        if (db->nopen < db->opts.pool_size) {
            db->nopen++;
            pthread_mutex_unlock(&db->mu);
            rc = db->vt->conn_create(db, &conn, msg, sizeof(msg));
            pthread_mutex_lock(&db->mu);
            if (rc != SVC_OK) {
                db->nopen--;
                pthread_cond_signal(&db->cv); /* let a waiter try in our place */
                pthread_mutex_unlock(&db->mu);
                SVC_LOG_WARN(NULL, "db connect", "%s", msg);
                return rc;
            }
            break;
        }
        if (wait_ms == 0) {
            rc = SVC_ETIMEDOUT;
            break;
        }
        int w = pthread_cond_timedwait(&db->cv, &db->mu, &deadline);
        if (w == ETIMEDOUT && db->nidle == 0 && db->nopen >= db->opts.pool_size) {
            rc = SVC_ETIMEDOUT;
            break;
        }
    }
    pthread_mutex_unlock(&db->mu);
    if (rc != SVC_OK)
        return rc;
    conn->borrowed = 1;
    conn->err[0] = '\0';
    *connp = conn;
    return SVC_OK;
}

void svc_db_conn_put(struct svc_db *db, struct svc_db_conn **connp)
{
    struct svc_db_conn *conn;

    if (connp == NULL || *connp == NULL)
        return;
    conn = *connp;
    *connp = NULL;
    if (db != conn->db) {
        SVC_LOG_ERR(NULL, "db put", "connection put back into another pool");
        db = conn->db;
    }
    if (!conn->borrowed) {
        SVC_LOG_ERR(NULL, "db put", "connection put back twice: ignored");
        return;
    }
    /* The back end's own word counts too: a transaction our bookkeeping does not know of (begun
     * as plain SQL, or left by a COMMIT and ROLLBACK that both failed) would, pooled, hide every
     * later write of this connection from the others and show it an old snapshot. */
    if (!conn->in_tx && db->vt->in_tx != NULL && db->vt->in_tx(conn)) {
        SVC_LOG_ERR(NULL, "db put",
                    "connection put back inside a transaction it did not begin "
                    "with svc_db_begin: rolled back");
        conn->in_tx = 1;
    } else if (conn->in_tx) {
        SVC_LOG_ERR(NULL, "db put", "connection put back inside a transaction: rolled back");
    }
    if (conn->in_tx)
        (void)svc_db_rollback(conn);
    conn->borrowed = 0;
    if (db->vt->in_tx != NULL && db->vt->in_tx(conn)) { /* the rollback failed: not pooled */
        SVC_LOG_ERR(NULL, "db put", "connection still inside a transaction after ROLLBACK: closed");
        db->vt->conn_destroy(conn);
        pthread_mutex_lock(&db->mu);
        db->nopen--;
        pthread_cond_signal(&db->cv);
        pthread_mutex_unlock(&db->mu);
        return;
    }
    pthread_mutex_lock(&db->mu);
    db->idle[db->nidle++] = conn;
    pthread_cond_signal(&db->cv);
    pthread_mutex_unlock(&db->mu);
}

const char *svc__db_last_error(const struct svc_db_conn *conn)
{
    return conn != NULL ? conn->err : "";
}

int svc_db_in_tx(const struct svc_db_conn *conn)
{
    return conn != NULL && conn->in_tx;
}

/* ================================================================================================
 * statements
 * ============================================================================================= */

static int check_args(struct svc_db_conn *conn, const char *sql, const struct svc_db_param *params,
                      size_t nparams, size_t *len)
{
    if (sql == NULL) {
        svc__db_set_err(conn, "sql is NULL");
        return SVC_EINVAL;
    }
    *len = strnlen(sql, SVC_DB_SQL_MAX + 1);
    if (*len > SVC_DB_SQL_MAX) {
        svc__db_set_err(conn, "SQL text longer than %d bytes", SVC_DB_SQL_MAX);
        return SVC_EINVAL;
    }
    if (nparams > SVC_DB_PARAMS_MAX || (nparams > 0 && params == NULL)) {
        svc__db_set_err(conn, "bad parameter array (%zu parameters)", nparams);
        return SVC_EINVAL;
    }
    for (size_t i = 0; i < nparams; i++) {
        const struct svc_db_param *p = &params[i];
        switch (p->type) {
        case SVC_DB_T_NULL:
        case SVC_DB_T_I64:
            break;
        case SVC_DB_T_TEXT:
        case SVC_DB_T_BLOB:
            if (p->len > SVC_DB_PARAM_BYTES_MAX) {
                svc__db_set_err(conn, "parameter %zu is longer than %d bytes", i + 1,
                                SVC_DB_PARAM_BYTES_MAX);
                return SVC_ETOOLARGE;
            }
            if (p->ptr == NULL && p->len > 0) {
                svc__db_set_err(conn, "parameter %zu has a NULL pointer", i + 1);
                return SVC_EINVAL;
            }
            break;
        default:
            svc__db_set_err(conn, "parameter %zu has unknown type %d", i + 1, p->type);
            return SVC_EINVAL;
        }
    }
    return SVC_OK;
}

/*
 * The one place a failing statement's driver text goes (svc/db.h, decision 44): debug for the
 * outcomes callers handle (a unique key taken, a conflict that svc_db_tx_run replays), warning
 * for the rest. The SQL is constant text with placeholders, never values. Returns rc.
 */
static int stmt_failed(struct svc_db_conn *conn, const char *sql, int rc)
{
    int lvl = rc == SVC_EEXIST || rc == SVC_ECONFLICT ? SVC_LOG_LVL_DEBUG : SVC_LOG_LVL_WARN;

    SVC_LOG(lvl, NULL, "sql", "%s: %.*s: %s", svc_strerror(rc), DB_LOG_SQL_MAX,
            sql != NULL ? sql : "(null)", conn->err);
    return rc;
}

int svc_db_exec(struct svc_db_conn *conn, const char *sql, const struct svc_db_param *params,
                size_t nparams, uint64_t *affected_rows, int64_t *last_insert_id)
{
    struct svc__db_result res = {0};
    size_t len = 0;
    int rc;

    if (affected_rows != NULL)
        *affected_rows = 0;
    if (last_insert_id != NULL)
        *last_insert_id = 0;
    if (conn == NULL)
        return SVC_EINVAL;
    conn->err[0] = '\0';
    if ((rc = check_args(conn, sql, params, nparams, &len)) != SVC_OK)
        return stmt_failed(conn, sql, rc);
    rc = conn->db->vt->run(conn, sql, len, params, nparams, 0, &res);
    if (rc != SVC_OK)
        return stmt_failed(conn, sql, rc);
    if (affected_rows != NULL)
        *affected_rows = res.affected;
    if (last_insert_id != NULL)
        *last_insert_id = res.last_id;
    return SVC_OK;
}

int svc_db_query(struct svc_db_conn *conn, const char *sql, const struct svc_db_param *params,
                 size_t nparams, struct svc_db_rows **rows)
{
    struct svc__db_result res = {0};
    size_t len = 0;
    int rc;

    if (rows == NULL)
        return SVC_EINVAL;
    *rows = NULL;
    if (conn == NULL)
        return SVC_EINVAL;
    conn->err[0] = '\0';
    if ((rc = check_args(conn, sql, params, nparams, &len)) != SVC_OK)
        return stmt_failed(conn, sql, rc);
    rc = conn->db->vt->run(conn, sql, len, params, nparams, SVC__DB_RUN_ROWS, &res);
    if (rc != SVC_OK) {
        svc_db_rows_destroy(&res.rows);
        return stmt_failed(conn, sql, rc);
    }
    *rows = res.rows;
    return SVC_OK;
}

/* Runs one internal statement without caching it (DDL, one-off). */
static int exec_nocache(struct svc_db_conn *conn, const char *sql, size_t len)
{
    struct svc__db_result res = {0};

    conn->err[0] = '\0';
    return conn->db->vt->run(conn, sql, len, NULL, 0, SVC__DB_RUN_NOCACHE, &res);
}

/* ================================================================================================
 * transactions
 * ============================================================================================= */

int svc_db_begin(struct svc_db_conn *conn)
{
    int rc;

    if (conn == NULL)
        return SVC_EINVAL;
    conn->err[0] = '\0';
    if (conn->in_tx) {
        svc__db_set_err(conn, "a transaction is already open (they do not nest)");
        return stmt_failed(conn, "BEGIN", SVC_EINVAL);
    }
    conn->tx_lost = 0;
    if ((rc = conn->db->vt->begin(conn)) == SVC_OK)
        conn->in_tx = 1;
    else
        stmt_failed(conn, "BEGIN", rc);
    return rc;
}

int svc_db_commit(struct svc_db_conn *conn)
{
    int rc;

    if (conn == NULL)
        return SVC_EINVAL;
    conn->err[0] = '\0';
    if (!conn->in_tx) {
        svc__db_set_err(conn, "commit without a transaction");
        return stmt_failed(conn, "COMMIT", SVC_EINVAL);
    }
    rc = conn->db->vt->commit(conn);
    conn->in_tx = 0;
    if (rc != SVC_OK)
        stmt_failed(conn, "COMMIT", rc);
    return rc;
}

int svc_db_rollback(struct svc_db_conn *conn)
{
    int rc;

    if (conn == NULL)
        return SVC_EINVAL;
    if (!conn->in_tx) {
        svc__db_set_err(conn, "rollback without a transaction");
        return SVC_EINVAL;
    }
    rc = conn->db->vt->rollback(conn);
    conn->in_tx = 0;
    return rc;
}

/* A small per-thread xorshift for back-off jitter (no locking, no global rand state). */
static unsigned jitter(unsigned range)
{
    static __thread uint64_t s;

    if (s == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        s = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)(uintptr_t)&s ^ (uint64_t)ts.tv_sec;
        if (s == 0)
            s = 88172645463325252ull;
    }
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return range == 0 ? 0 : (unsigned)(s % range);
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int svc_db_tx_run(struct svc_db_conn *conn, svc_db_tx_cb fn, void *ctx)
{
    int rc = SVC_EINVAL;

    if (conn == NULL || fn == NULL)
        return SVC_EINVAL;
    if (conn->in_tx) {
        svc__db_set_err(conn, "svc_db_tx_run inside an open transaction");
        return SVC_EINVAL;
    }
    for (int attempt = 0; attempt < SVC_DB_TX_ATTEMPTS; attempt++) {
        if (attempt > 0) /* 2, 4, 8, 16 ms times a random factor in [0.5, 1.5) */
            sleep_ms((1u << attempt) / 2 + jitter(1u << attempt));
        rc = svc_db_begin(conn);
        if (rc != SVC_OK) {
            if (rc == SVC_ECONFLICT || rc == SVC_EUNAVAIL)
                continue;
            return rc;
        }
        rc = fn(ctx, conn);
        if (rc == SVC_OK) {
            if (!conn->in_tx) {
                svc__db_set_err(conn, "transaction body ended the transaction itself");
                return SVC_EINTERNAL;
            }
            rc = svc_db_commit(conn);
            if (rc == SVC_ECONFLICT || (rc == SVC_EUNAVAIL && conn->tx_lost))
                continue; /* tx_lost: the connection died before COMMIT was sent */
            return rc;    /* 0, or an error that must not be replayed (EUNAVAIL: outcome unknown) */
        }
        if (conn->in_tx) {
            char saved[SVC__DB_ERR_MAX];
            memcpy(saved, conn->err, sizeof(saved)); /* keep the cause, not the rollback's text */
            (void)svc_db_rollback(conn);
            memcpy(conn->err, saved, sizeof(saved));
        }
        if (rc != SVC_ECONFLICT && rc != SVC_EUNAVAIL)
            return rc;
    }
    return rc;
}

/* ================================================================================================
 * migrations
 * ============================================================================================= */

static int migrations_check(const struct svc_db_migration *m, size_t n)
{
    if (n > DB_MIGRATIONS_MAX || (n > 0 && m == NULL))
        return SVC_EINVAL;
    for (size_t i = 0; i < n; i++) {
        size_t cl = m[i].component != NULL ? strnlen(m[i].component, SVC_DB_COMPONENT_MAX + 1) : 0;
        if (cl == 0 || cl > SVC_DB_COMPONENT_MAX || m[i].version <= 0) {
            SVC_LOG_ERR(NULL, "db migrate",
                        "migration #%zu: empty or too long component, or "
                        "version <= 0",
                        i);
            return SVC_EINVAL;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(m[j].component, m[i].component) == 0 && m[j].version >= m[i].version) {
                SVC_LOG_ERR(NULL, "db migrate", "migrations of %s: version %d listed after %d",
                            m[i].component, m[i].version, m[j].version);
                return SVC_EINVAL;
            }
        }
    }
    return SVC_OK;
}

static int migration_applied(struct svc_db_conn *conn, const struct svc_db_migration *m, int *yes)
{
    struct svc_db_param p[] = {SVC_DB_TEXT(m->component), SVC_DB_I64(m->version)};
    struct svc_db_rows *rows = NULL;
    int rc = svc_db_query(
        conn, "SELECT 1 FROM schema_migrations WHERE component = ? AND version = ?", p, 2, &rows);

    if (rc == SVC_OK)
        *yes = svc_db_rows_count(rows) > 0;
    svc_db_rows_destroy(&rows);
    return rc;
}

/* Runs the statements of one migration's SQL, split at ';' that end a line. */
static int run_script(struct svc_db_conn *conn, const struct svc_db_migration *m, const char *sql)
{
    const char *p = sql, *start = sql;
    int nstmt = 0, rc;

    for (;;) {
        int end = 0;
        const char *stop = p;
        if (*p == '\0') {
            end = 1;
        } else if (*p == ';') {
            const char *q = p + 1;
            while (*q == ' ' || *q == '\t' || *q == '\r')
                q++;
            if (*q == '\n' || *q == '\0')
                end = 1;
        }
        if (end) {
            size_t len = (size_t)(stop - start);
            if (!svc__db_sql_is_blank(start, len)) {
                nstmt++;
                if (len > SVC_DB_SQL_MAX) {
                    SVC_LOG_ERR(NULL, "db migrate", "%s/%d statement %d is too long", m->component,
                                m->version, nstmt);
                    return SVC_EINVAL;
                }
                if ((rc = exec_nocache(conn, start, len)) != SVC_OK) {
                    SVC_LOG_ERR(NULL, "db migrate", "%s/%d statement %d failed: %s", m->component,
                                m->version, nstmt, svc__db_last_error(conn));
                    return rc;
                }
            }
            if (*p == '\0')
                return SVC_OK;
            start = p + 1;
        }
        p++;
    }
}

static int migrate_one(struct svc_db_conn *conn, const struct svc_db_migration *m)
{
    const char *sql = svc_db_conn_dialect(conn) == SVC_DB_MYSQL ? m->sql_mysql : m->sql_sqlite;
    int applied = 0, rc;

    if ((rc = migration_applied(conn, m, &applied)) != SVC_OK || applied)
        return rc;
    if ((rc = svc_db_begin(conn)) != SVC_OK) {
        SVC_LOG_ERR(NULL, "db migrate", "%s/%d: begin: %s", m->component, m->version,
                    svc__db_last_error(conn));
        return rc;
    }
    /* Again inside the transaction: another process may have applied it meanwhile (SQLite; on
     * MariaDB the GET_LOCK already excludes that). */
    if ((rc = migration_applied(conn, m, &applied)) != SVC_OK || applied)
        goto out;
    if (sql != NULL && (rc = run_script(conn, m, sql)) != SVC_OK)
        goto out;
    {
        struct svc_db_param p[] = {SVC_DB_TEXT(m->component), SVC_DB_I64(m->version),
                                   SVC_DB_I64(time(NULL))};
        rc = svc_db_exec(conn,
                         "INSERT INTO schema_migrations (component, version, applied_at) "
                         "VALUES (?, ?, ?)",
                         p, 3, NULL, NULL);
        if (rc != SVC_OK) {
            SVC_LOG_ERR(NULL, "db migrate", "%s/%d: recording it: %s", m->component, m->version,
                        svc__db_last_error(conn));
            goto out;
        }
    }
    if ((rc = svc_db_commit(conn)) != SVC_OK) {
        SVC_LOG_ERR(NULL, "db migrate", "%s/%d: commit: %s", m->component, m->version,
                    svc__db_last_error(conn));
        return rc;
    }
    SVC_LOG_NOTICE(NULL, "db migrate", "applied %s version %d", m->component, m->version);
    return SVC_OK;
out:
    if (conn->in_tx)
        (void)svc_db_rollback(conn);
    return rc;
}

/*
 * Refuses a database that holds a newer version of a component than this binary knows: a newer
 * release migrated it, and this binary's queries may no longer fit its tables (a rollback, or an
 * old replica restarting during an upgrade). Checked before anything is applied.
 */
static int migrate_check_newer(struct svc_db_conn *conn, const struct svc_db_migration *m, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int last = 1, rc;
        for (size_t j = i + 1; j < n && last; j++)
            if (strcmp(m[j].component, m[i].component) == 0)
                last = 0;
        if (!last)
            continue;
        struct svc_db_param p[] = {SVC_DB_TEXT(m[i].component)};
        struct svc_db_rows *rows = NULL;
        rc = svc_db_query(conn, "SELECT MAX(version) FROM schema_migrations WHERE component = ?", p,
                          1, &rows);
        if (rc != SVC_OK) {
            SVC_LOG_ERR(NULL, "db migrate", "reading the %s version: %s", m[i].component,
                        svc__db_last_error(conn));
            return rc;
        }
        int64_t have = svc_db_rows_i64(rows, 0, 0);
        svc_db_rows_destroy(&rows);
        if (have > m[i].version) {
            SVC_LOG_ERR(NULL, "db migrate",
                        "database has %s schema version %" PRId64 ", this binary knows up to %d: "
                        "a newer release migrated it; refusing to run on it (deploy that release "
                        "or restore the database)",
                        m[i].component, have, m[i].version);
            return SVC_ECONFLICT;
        }
    }
    return SVC_OK;
}

static const char create_sqlite[] = "CREATE TABLE IF NOT EXISTS schema_migrations ("
                                    "component TEXT NOT NULL, "
                                    "version INTEGER NOT NULL, "
                                    "applied_at INTEGER NOT NULL, "
                                    "PRIMARY KEY (component, version))";
static const char create_mysql[] = "CREATE TABLE IF NOT EXISTS schema_migrations ("
                                   "component VARCHAR(64) NOT NULL, "
                                   "version INT NOT NULL, "
                                   "applied_at BIGINT NOT NULL, "
                                   "PRIMARY KEY (component, version)"
                                   ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 "
                                   "COLLATE=utf8mb4_bin";

int svc_db_migrate(struct svc_db *db, const struct svc_db_migration *m, size_t n)
{
    struct svc_db_conn *conn = NULL;
    struct svc_db_rows *rows = NULL;
    int locked = 0, rc;

    if (db == NULL || (rc = migrations_check(m, n)) != SVC_OK)
        return SVC_EINVAL;
    if ((rc = svc_db_conn_get(db, &conn, -1)) != SVC_OK) {
        SVC_LOG_ERR(NULL, "db migrate", "no connection: %s", svc_strerror(rc));
        return rc;
    }
    if (db->dsn.dialect == SVC_DB_MYSQL) {
        /* GET_LOCK waits on the server; keep it under the read timeout. */
        unsigned wait = DB_MIGRATE_LOCK_WAIT_S;
        unsigned io_s = db->dsn.read_timeout_ms / 1000;
        if (io_s <= wait)
            wait = io_s > 1 ? io_s - 1 : 1;
        struct svc_db_param p[] = {SVC_DB_TEXT(DB_MIGRATE_LOCK), SVC_DB_I64(wait)};
        rc = svc_db_query(conn, "SELECT GET_LOCK(?, ?)", p, 2, &rows);
        if (rc != SVC_OK) {
            SVC_LOG_ERR(NULL, "db migrate", "GET_LOCK: %s", svc__db_last_error(conn));
            goto out;
        }
        if (svc_db_rows_i64(rows, 0, 0) != 1) {
            SVC_LOG_ERR(NULL, "db migrate", "lock %s not obtained within %u s", DB_MIGRATE_LOCK,
                        wait);
            rc = SVC_ETIMEDOUT;
            goto out;
        }
        locked = 1;
        rc = exec_nocache(conn, create_mysql, sizeof(create_mysql) - 1);
    } else {
        rc = exec_nocache(conn, create_sqlite, sizeof(create_sqlite) - 1);
    }
    if (rc != SVC_OK) {
        SVC_LOG_ERR(NULL, "db migrate", "creating schema_migrations: %s", svc__db_last_error(conn));
        goto out;
    }
    if ((rc = migrate_check_newer(conn, m, n)) != SVC_OK)
        goto out;
    for (size_t i = 0; i < n; i++)
        if ((rc = migrate_one(conn, &m[i])) != SVC_OK)
            goto out;
    rc = SVC_OK;

out:
    svc_db_rows_destroy(&rows);
    if (locked) {
        struct svc_db_param p[] = {SVC_DB_TEXT(DB_MIGRATE_LOCK)};
        if (svc_db_query(conn, "SELECT RELEASE_LOCK(?)", p, 1, &rows) != SVC_OK)
            SVC_LOG_WARN(NULL, "db migrate",
                         "RELEASE_LOCK: %s (the lock goes with the "
                         "session)",
                         svc__db_last_error(conn));
        svc_db_rows_destroy(&rows);
    }
    svc_db_conn_put(db, &conn);
    return rc;
}

/* ================================================================================================
 * ping
 * ============================================================================================= */

int svc_db_ping(struct svc_db *db)
{
    struct svc_db_conn *conn = NULL;
    struct svc_db_rows *rows = NULL;
    int rc;

    if (db == NULL)
        return SVC_EINVAL;
    if ((rc = svc_db_conn_get(db, &conn, DB_PING_WAIT_MS)) != SVC_OK)
        return rc;
    rc = svc_db_query(conn, "SELECT 1", NULL, 0, &rows);
    if (rc == SVC_OK && svc_db_rows_i64(rows, 0, 0) != 1)
        rc = SVC_EIO;
    svc_db_rows_destroy(&rows);
    svc_db_conn_put(db, &conn);
    return rc;
}
