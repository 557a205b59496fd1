/*
 * The in-process server and blocking client of http_harness.h.
 */

#include "http_harness.h"

#include <protobuf-c/protobuf-c.h>

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "rpc.pb-c.h"
#include "svc/err.h"

#define HDR_MAX 16384 /* bytes of a reply's header block */

static struct svc_http_server *srv;
static int port;
static int fd = -1;
static int last_timeout; /* the last read_reply failed by timing out */

void fz_http_start(const struct svc_http_route *routes, size_t nroutes, enum svc_http_style style,
                   size_t max_body, struct svc_loop **loops, unsigned nloops)
{
    struct svc_http_opts o = {0};
    char err[256] = "";

    o.service = "fuzz";
    o.addr = "127.0.0.1:0";
    o.mode = nloops > 0 ? SVC_HTTP_LOOPS : SVC_HTTP_POOL;
    o.threads = 4; /* a handler may call a stand-in service on this same server */
    o.loops = loops;
    o.nloops = nloops;
    o.max_body = max_body;
    o.max_header = 8192;
    o.idle_timeout = 30;
    o.max_connections = 64;
    o.default_style = style;
    if (svc_http_server_create(&srv, &o, routes, nroutes, err, sizeof(err)) != SVC_OK) {
        fprintf(stderr, "fuzz: cannot start the HTTP server: %s\n", err);
        abort();
    }
    port = svc_http_server_port(srv);
}

int fz_http_port(void)
{
    return port;
}

static void disconnect(void)
{
    if (fd >= 0)
        close(fd);
    fd = -1;
}

static int connect_server(void)
{
    struct sockaddr_in sa;
    struct timeval tv = {FZ_HTTP_TIMEOUT_S, 0};
    struct linger lg = {1, 0};
    int one = 1;

    disconnect();
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* A reset on close leaves no TIME_WAIT behind: millions of requests must not run the
     * machine out of ephemeral ports. */
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0 ||
        connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        disconnect();
        return -1;
    }
    return 0;
}

static int send_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Buffered reads from fd. */
struct rd {
    char buf[65536];
    size_t off, len;
    int timeout; /* a read timed out */
};

static int rd_fill(struct rd *r)
{
    ssize_t n;

    if (r->off > 0 && r->off == r->len)
        r->off = r->len = 0;
    if (r->len == sizeof(r->buf))
        return -1;
    do
        n = recv(fd, r->buf + r->len, sizeof(r->buf) - r->len, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        r->timeout = 1;
    if (n <= 0)
        return -1;
    r->len += (size_t)n;
    return 0;
}

/* One line (CRLF stripped) into out; -1 at EOF or on a line over outlen. */
static int rd_line(struct rd *r, char *out, size_t outlen)
{
    for (;;) {
        char *nl = memchr(r->buf + r->off, '\n', r->len - r->off);
        if (nl != NULL) {
            size_t n = (size_t)(nl - (r->buf + r->off));
            if (n >= outlen)
                return -1;
            memcpy(out, r->buf + r->off, n);
            if (n > 0 && out[n - 1] == '\r')
                n--;
            out[n] = '\0';
            r->off += (size_t)(nl - (r->buf + r->off)) + 1;
            return 0;
        }
        if (r->off > 0) {
            memmove(r->buf, r->buf + r->off, r->len - r->off);
            r->len -= r->off;
            r->off = 0;
        }
        if (rd_fill(r) != 0)
            return -1;
    }
}

static int rd_bytes(struct rd *r, struct svc_buf *b, size_t n)
{
    while (n > 0) {
        size_t have = r->len - r->off, take;
        if (have == 0) {
            if (rd_fill(r) != 0)
                return -1;
            continue;
        }
        take = have < n ? have : n;
        if (b != NULL && svc_buf_append(b, r->buf + r->off, take) != SVC_OK)
            return -1;
        r->off += take;
        n -= take;
    }
    return 0;
}

static int rd_to_eof(struct rd *r, struct svc_buf *b)
{
    for (;;) {
        if (r->len > r->off && svc_buf_append(b, r->buf + r->off, r->len - r->off) != SVC_OK)
            return -1;
        r->off = r->len = 0;
        if (rd_fill(r) != 0)
            return r->timeout ? -1 : 0;
    }
}

/* Reads one reply. 0, or -1 with why in *what. */
static struct rd rdbuf;

static int read_reply(struct fz_resp *resp, int *keep, const char **what)
{
    char line[HDR_MAX];
    long long clen = -1;
    int chunked = 0, hdr_bytes = 0;
    char *end;

    rdbuf.off = rdbuf.len = 0;
    rdbuf.timeout = 0;
    *keep = 1;
    if (rd_line(&rdbuf, line, sizeof(line)) != 0) {
        *what = rdbuf.timeout ? "no reply in time" : "no status line";
        return -1;
    }
    if (strncmp(line, "HTTP/1.1 ", 9) != 0 && strncmp(line, "HTTP/1.0 ", 9) != 0) {
        *what = "not an HTTP/1.x status line";
        return -1;
    }
    resp->status = strtol(line + 9, &end, 10);
    if (end == line + 9 || resp->status < 100 || resp->status > 599) {
        *what = "bad status code";
        return -1;
    }
    for (;;) {
        if (rd_line(&rdbuf, line, sizeof(line)) != 0) {
            *what = rdbuf.timeout ? "headers not finished in time" : "headers cut";
            return -1;
        }
        hdr_bytes += (int)strlen(line) + 2;
        if (hdr_bytes > HDR_MAX) {
            *what = "header block too large";
            return -1;
        }
        if (line[0] == '\0')
            break;
        if (svc_buf_appendf(&resp->head, "%s\n", line) != SVC_OK) {
            *what = "out of memory";
            return -1;
        }
        if (strncasecmp(line, "Content-Length:", 15) == 0) {
            clen = strtoll(line + 15, &end, 10);
            if (clen < 0 || clen > (long long)FZ_HTTP_REPLY_MAX) {
                *what = "bad Content-Length";
                return -1;
            }
        } else if (strncasecmp(line, "Transfer-Encoding:", 18) == 0 &&
                   strstr(line + 18, "chunked") != NULL) {
            chunked = 1;
        } else if (strncasecmp(line, "Connection:", 11) == 0 &&
                   strstr(line + 11, "close") != NULL) {
            *keep = 0;
        } else if (strncasecmp(line, "Content-Type:", 13) == 0) {
            const char *v = line + 13;
            while (*v == ' ')
                v++;
            size_t n = strlen(v);
            if (n >= sizeof(resp->content_type))
                n = sizeof(resp->content_type) - 1;
            memcpy(resp->content_type, v, n);
            resp->content_type[n] = '\0';
        } else if (strncasecmp(line, "WWW-Authenticate:", 17) == 0) {
            resp->www_authenticate = 1;
        }
    }
    if (chunked) {
        for (;;) {
            long long n;
            if (rd_line(&rdbuf, line, sizeof(line)) != 0) {
                *what = "chunk size line cut";
                return -1;
            }
            n = strtoll(line, &end, 16);
            if (end == line || n < 0 || n > (long long)FZ_HTTP_REPLY_MAX) {
                *what = "bad chunk size";
                return -1;
            }
            if (n == 0)
                break;
            if (rd_bytes(&rdbuf, &resp->body, (size_t)n) != 0 ||
                rd_line(&rdbuf, line, sizeof(line)) != 0 || line[0] != '\0') {
                *what = "chunk cut";
                return -1;
            }
        }
        do { /* trailers, up to the empty line */
            if (rd_line(&rdbuf, line, sizeof(line)) != 0) {
                *what = "chunked reply not finished";
                return -1;
            }
        } while (line[0] != '\0');
    } else if (clen >= 0) {
        if (rd_bytes(&rdbuf, &resp->body, (size_t)clen) != 0) {
            *what = rdbuf.timeout ? "body not complete in time" : "body cut";
            return -1;
        }
    } else {
        *keep = 0;
        if (rd_to_eof(&rdbuf, &resp->body) != 0) {
            *what = "body until close not finished in time";
            return -1;
        }
    }
    if (svc_buf_append(&resp->body, "", 0) != SVC_OK) { /* data is never NULL afterwards */
        *what = "out of memory";
        return -1;
    }
    return 0;
}

void fz_http_do(const char *method, const char *path, const char *headers, const void *body,
                size_t len, struct fz_resp *resp)
{
    struct svc_buf req;
    const char *what = NULL;
    int keep = 0;

    memset(resp, 0, sizeof(*resp));
    svc_buf_init(&resp->body, FZ_HTTP_REPLY_MAX);
    svc_buf_init(&resp->head, HDR_MAX + 1);
    svc_buf_init(&req, FZ_HTTP_REPLY_MAX);
    if (svc_buf_appendf(&req,
                        "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: %zu\r\n%s\r\n",
                        method, path, port, len, headers) != SVC_OK ||
        svc_buf_append(&req, body, len) != SVC_OK) {
        fprintf(stderr, "fuzz: request too large to build\n");
        abort();
    }
    /* A kept connection the server closed meanwhile fails on first use: retry once on a new
     * one. On a fresh connection, no reply in time is a finding (abort); a connection closed or
     * reset without a reply is reported to the target (resp->reset), which knows whether that
     * may happen (a body over the limit: the server may answer 413 and close without reading
     * it, and TCP then drops the reply the client had not read yet). */
    for (int attempt = 0; attempt < 2; attempt++) {
        int fresh = fd < 0;
        what = NULL;
        if (fd < 0 && connect_server() != 0) {
            fprintf(stderr, "fuzz: cannot connect to the server: %s\n", strerror(errno));
            abort();
        }
        rdbuf.timeout = 0;
        if (send_all(req.data, req.len) == 0 && read_reply(resp, &keep, &what) == 0)
            break;
        last_timeout = rdbuf.timeout;
        disconnect();
        svc_buf_reset(&resp->body);
        svc_buf_reset(&resp->head);
        if (!fresh && !last_timeout)
            continue;
        if (last_timeout) {
            svc_buf_deinit(&req);
            fz_fail(what != NULL ? what : "no reply in time", method, path, resp);
        }
        resp->status = 0;
        resp->reset = 1;
        break;
    }
    svc_buf_deinit(&req);
    if (!keep)
        disconnect();
    if (getenv("FUZZ_HTTP_TRACE") != NULL)
        fprintf(stderr, "fuzz: %s %s (%zu bytes) -> %ld %s %.200s\n", method, path, len,
                resp->status, resp->content_type, resp->body.data);
}

void fz_resp_deinit(struct fz_resp *r)
{
    svc_buf_deinit(&r->body);
    svc_buf_deinit(&r->head);
}

const char *fz_header(const struct fz_resp *r, const char *name, char *out, size_t outlen)
{
    const char *p = r->head.data, *end = p != NULL ? p + r->head.len : NULL;
    size_t n = strlen(name);

    while (p != NULL && p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
        if (len > n && p[n] == ':' && strncasecmp(p, name, n) == 0) {
            size_t o = 0;
            const char *v = p + n + 1;
            while (v < p + len && (*v == ' ' || *v == '\t'))
                v++;
            while (v < p + len && o + 1 < outlen)
                out[o++] = *v++;
            out[o] = '\0';
            return out;
        }
        p += len + 1;
    }
    return NULL;
}

size_t fz_split(const uint8_t *data, size_t size, uint8_t sep, const uint8_t **f, size_t *fl,
                size_t nf)
{
    size_t n = 0, start = 0;

    for (size_t i = 0; i < size && n + 1 < nf; i++) {
        if (data[i] == sep) {
            f[n] = data + start;
            fl[n++] = i - start;
            start = i + 1;
        }
    }
    f[n] = data + start;
    fl[n++] = size - start;
    for (size_t i = n; i < nf; i++) {
        f[i] = data + size;
        fl[i] = 0;
    }
    return n;
}

char *fz_header_value(const uint8_t *f, size_t n, char *out, size_t outlen)
{
    size_t o = 0;

    for (size_t i = 0; i < n && o + 1 < outlen; i++)
        if (f[i] != '\r' && f[i] != '\n' && f[i] != '\0')
            out[o++] = (char)f[i];
    out[o] = '\0';
    return out;
}

void fz_fail(const char *what, const char *method, const char *path, const struct fz_resp *r)
{
    fprintf(stderr, "fuzz: %s: %s %s -> %ld %s\n%.2000s\n", what, method, path,
            r != NULL ? r->status : 0L, r != NULL ? r->content_type : "",
            r != NULL && r->body.data != NULL ? r->body.data : "");
    abort();
}

int fz_is_envelope(const struct fz_resp *r)
{
    json_t *j, *st, *msg;
    const char *s;
    int ok = 0;

    if (strncmp(r->content_type, "application/json", 16) != 0 || r->body.data == NULL)
        return 0;
    j = json_loadb(r->body.data, r->body.len, 0, NULL);
    st = json_object_get(j, "status");
    msg = json_object_get(j, "message");
    s = json_string_value(st);
    if (json_is_object(j) && s != NULL && json_is_string(msg) &&
        (strcmp(s, "Success") == 0 || strcmp(s, "Fail") == 0 || strcmp(s, "Unauthorized") == 0))
        ok = 1;
    json_decref(j);
    return ok;
}

void fz_check_rpc(const char *path, const ProtobufCMessageDescriptor *out, const struct fz_resp *r)
{
    ProtobufCMessage *m;

    if (r->status == 200) {
        m = protobuf_c_message_unpack(out, NULL, r->body.len, (uint8_t *)r->body.data);
        if (m == NULL)
            fz_fail("200 without the method's response message", "POST", path, r);
        protobuf_c_message_free_unpacked(m, NULL);
        return;
    }
    if (strcmp(r->content_type, "application/x-protobuf") != 0) {
        /* the HTTP layer's own answers (too large, wrong method) are text on this route */
        if (r->status != 413 && r->status != 405 && r->status != 431)
            fz_fail("RPC error that is not an RpcError", "POST", path, r);
        return;
    }
    m = protobuf_c_message_unpack(&chatweb__rpc__rpc_error__descriptor, NULL, r->body.len,
                                  (uint8_t *)r->body.data);
    if (m == NULL)
        fz_fail("undecodable RpcError", "POST", path, r);
    if (((Chatweb__Rpc__RpcError *)m)->code >= 0 ||
        svc_err_http_status(((Chatweb__Rpc__RpcError *)m)->code) != r->status)
        fz_fail("RpcError code does not match the HTTP status", "POST", path, r);
    protobuf_c_message_free_unpacked(m, NULL);
}
