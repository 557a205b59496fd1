/*
 * The HTTP/1.1 server, on our event loop (svc/loop.h). See svc/http.h for the model and
 * docs/http.md for the why. One connection, from accept to close:
 *
 *   C_HEAD  reading the request head (at most max_header bytes), parsed by http_parse.c
 *   C_BODY  reading its body (Content-Length or chunked, at most max_body bytes kept)
 *   C_BUSY  the handler runs or answers later; the reply's bytes are written as they come
 *   C_LINGER the last reply sent, the socket shut for writing: the client's unread bytes are
 *           read and dropped for a moment, so that closing does not reset the reply away
 *
 * Every connection lives on one loop and is touched only by that loop's thread. The calls a
 * handler or a producer makes (svc_req_reply, svc_req_stream_*) only write or queue bytes; the
 * callbacks a request has (abort, drain, cleanup) run from the loop itself (an I/O event or the
 * connection's timer), never from inside those calls, so a producer is not re-entered.
 *
 * POOL mode is the same server on threads of its own, one loop each, whose handlers may block.
 */
#include "svc/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "http_parse.h"
#include "svc/buf.h"
#include "svc/cfg.h"
#include "svc/json.h"
#include "svc/log.h"
#include "svc/loop.h"
#include "svc/util.h"

#define REQ_ID_MAX 64
/* The read buffer starts this small and doubles up to max_header (a head) or IN_BODY_MAX (a
 * body, moved into the request's own buffer as it comes). It is freed whenever it is empty:
 * an open stream keeps no read buffer at all. */
#define IN_MIN 1024
#define IN_BODY_MAX (16 * 1024)
/* After the last reply of a connection that closes, unread client bytes are dropped this long. */
#define LINGER_MS 2000
#define LINGER_MAX_BYTES (1u << 20)
/* Connections accepted per wake-up of a loop, so that one loop does not take a whole burst. */
#define ACCEPT_BATCH 64
/* Out of descriptors, a loop stops watching the listening socket this long: it stays readable,
 * and retrying at once would spin (and log) until a descriptor frees. */
#define ACCEPT_PAUSE_MS 100
/* svc_http_server_quiesce waits this long at most for the loops to stop accepting. */
#define QUIESCE_WAIT_MS 2000

enum conn_state { C_HEAD, C_BODY, C_BUSY, C_LINGER };

struct conn;

/* One loop's part of a server: its accept watcher and its connections. */
struct srv_loop {
    struct svc_http_server *srv;
    struct svc_loop *loop;
    pthread_t thread; /* POOL mode: the thread running loop */
    int thread_started;
    struct svc_io *accept_io;       /* the shared listening socket, EPOLLEXCLUSIVE */
    struct svc_timer *accept_pause; /* out of descriptors: accepting resumes when it fires */
    int stopped;                    /* quiesced: accepting never resumes */
    struct conn *conns;             /* every open connection of this loop */
    atomic_long nconns;             /* their number (read by the other loops' acceptors) */
    time_t date_sec;                /* the second date[] was written for */
    char date[40];                  /* "Date: ...\r\n" */
};

struct svc_http_server {
    struct svc_http_opts opts;
    const struct svc_http_route *routes;
    size_t nroutes;
    int listen_fd;
    int port;
    int pool; /* POOL mode: the loops are ours, one thread each */
    struct srv_loop *loops;
    unsigned nloops;
    atomic_long inflight;
    atomic_ulong started; /* requests begun since start: a drain watches it stand still */
    atomic_int quiesced;
    atomic_int listener_shut; /* quiesced, the backlog taken, the socket shut down */
    atomic_uint loops_quiesced; /* loops that stopped accepting */
    pthread_mutex_t handoff_lock; /* POOL mode: connections on their way to another loop */
    struct handoff *handoffs;
};

struct conn {
    struct srv_loop *sl;
    struct conn *prev, *next; /* in sl->conns */
    int fd;
    struct svc_io *io;
    uint32_t events; /* watched now */
    struct svc_timer *timer; /* idle timeout, linger, and "run soon" (kick) */
    enum conn_state state;
    char *in; /* bytes read and not yet used */
    size_t in_len, in_cap;
    struct svc_req *req; /* the request being read or answered */
    struct svc_buf out; /* reply bytes the socket has not taken */
    size_t out_off;
    size_t queued; /* of out, counted in stream_queued */
    uint64_t wrote_pass; /* the loop pass (svc_loop_iteration) of the last chunk written at once */
    struct svc__http_scan scan; /* how far the head being read was searched for its end */
    uint64_t body_left; /* Content-Length body: bytes still to come */
    struct svc__http_chunked chunk;
    size_t lingered; /* bytes dropped while lingering */
    unsigned chunked : 1, keepalive : 1, kick : 1, dead : 1, trusted : 1, http10 : 1,
        eof : 1, /* the client closed its side: what it sent is served, then the connection ends */
        drain_due : 1, /* the reply's waiting bytes fell to the drain watermark */
        head_timed : 1; /* the timer runs for the head being read (not restarted by its bytes) */
    char peer[INET6_ADDRSTRLEN];
};

struct resp_header {
    struct resp_header *next;
    char *value; /* in name[], after the name's NUL */
    char name[]; /* one allocation for the node and both strings */
};

struct svc_req {
    struct conn *c;
    const struct svc_http_route *route;
    const char *method;
    const char *url;
    char id[REQ_ID_MAX + 1];
    char ip[INET6_ADDRSTRLEN];
    struct svc__http_field *hdrs; /* in the allocation, after this struct */
    unsigned nhdrs;
    struct svc__http_field *args;
    unsigned nargs;
    struct svc_buf body;
    struct resp_header *headers;
    char *stream_ctype; /* a stream's Content-Type until its head is written */
    struct svc_buf early; /* a stream's bytes written before its head (unframed) */
    unsigned status;

    unsigned body_too_big : 1, query_too_big : 1, in_handler : 1, handled : 1, replied : 1,
        aborted : 1, finished : 1, streaming : 1, stream_ended : 1, head_pending : 1,
        head_only : 1;

    svc_req_abort_cb abort_fn;
    void *abort_data;
    svc_req_drain_cb drain_fn;
    void *drain_data;
    size_t drain_low;
    svc_req_cleanup_cb cleanup_fn;
    void *cleanup_data;
    /* the head's bytes and the arrays hdrs and args point into follow */
};

static void conn_process(struct conn *c);
static void conn_kick(struct conn *c);

/* ---- small accessors ---- */

const char *svc_req_method(const struct svc_req *req) { return req->method; }
const char *svc_req_path(const struct svc_req *req) { return req->url; }
const char *svc_req_id(const struct svc_req *req) { return req->id; }
const char *svc_req_client_ip(const struct svc_req *req) { return req->ip; }
const char *svc_req_peer_ip(const struct svc_req *req) { return req->c->peer; }
int svc_req_is_done(const struct svc_req *req) { return req->aborted || req->finished; }
int svc_req_status(const struct svc_req *req) { return req->replied ? (int)req->status : 0; }

struct svc_loop *svc_req_loop(const struct svc_req *req)
{
    return req->c->sl->srv->pool ? NULL : req->c->sl->loop;
}

static const char *field_find(const struct svc__http_field *f, unsigned n, const char *name,
                              int nocase)
{
    for (unsigned i = 0; i < n; i++)
        if ((nocase ? strcasecmp(f[i].name, name) : strcmp(f[i].name, name)) == 0)
            return f[i].value != NULL ? f[i].value : "";
    return NULL;
}

const char *svc_req_header(const struct svc_req *req, const char *name)
{
    return field_find(req->hdrs, req->nhdrs, name, 1);
}

const char *svc_req_query(const struct svc_req *req, const char *name)
{
    return field_find(req->args, req->nargs, name, 0);
}

struct query_out {
    char *buf;
    size_t len, used;
    int full;
};

static void query_put(struct query_out *q, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";

    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;
        int plain = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                    (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.' || ch == '~';
        size_t need = plain ? 1 : 3;
        if (q->used + need >= q->len) {
            q->full = 1;
            return;
        }
        if (plain) {
            q->buf[q->used++] = (char)ch;
        } else {
            q->buf[q->used++] = '%';
            q->buf[q->used++] = hex[ch >> 4];
            q->buf[q->used++] = hex[ch & 15];
        }
    }
}

static void query_sep(struct query_out *q, char sep)
{
    if (q->used + 1 >= q->len)
        q->full = 1;
    else
        q->buf[q->used++] = sep;
}

int svc_req_query_string(const struct svc_req *req, char *buf, size_t len)
{
    struct query_out q = {buf, len, 0, 0};

    if (len == 0)
        return SVC_ETOOLARGE;
    for (unsigned i = 0; i < req->nargs && !q.full; i++) {
        query_sep(&q, q.used == 0 ? '?' : '&');
        query_put(&q, req->args[i].name);
        if (req->args[i].value != NULL) {
            query_sep(&q, '=');
            query_put(&q, req->args[i].value);
        }
    }
    buf[q.used] = '\0';
    return q.full ? SVC_ETOOLARGE : SVC_OK;
}

const char *svc_req_body(const struct svc_req *req, size_t *len)
{
    if (len != NULL)
        *len = req->body.len;
    return req->body.data != NULL ? req->body.data : "";
}

void svc_req_on_abort(struct svc_req *req, svc_req_abort_cb cb, void *ctx)
{
    req->abort_fn = cb;
    req->abort_data = ctx;
}

void svc_req_on_drain(struct svc_req *req, svc_req_drain_cb cb, void *ctx, size_t low_watermark)
{
    req->drain_fn = cb;
    req->drain_data = ctx;
    req->drain_low = low_watermark;
}

void svc_req_set_cleanup(struct svc_req *req, svc_req_cleanup_cb cb, void *ctx)
{
    req->cleanup_fn = cb;
    req->cleanup_data = ctx;
}

int svc_req_add_header(struct svc_req *req, const char *name, const char *value)
{
    size_t nlen = strlen(name) + 1, vlen = strlen(value) + 1;
    struct resp_header *h;

    /* written as they are into the reply's head: a CR or LF would split it (a header value the
     * proxy passes on from an upstream, say) */
    if (nlen == 1 || strpbrk(name, "\r\n:; \t") != NULL || strpbrk(value, "\r\n") != NULL)
        return SVC_EINVAL;
    h = malloc(sizeof(*h) + nlen + vlen);
    if (h == NULL)
        return SVC_ENOMEM;
    memcpy(h->name, name, nlen);
    h->value = memcpy(h->name + nlen, value, vlen);
    h->next = req->headers;
    req->headers = h;
    return SVC_OK;
}

/* ---- request ids and peers ---- */

static int id_is_sane(const char *s)
{
    size_t n = 0;

    for (; s[n] != '\0'; n++) {
        char c = s[n];
        if (n >= REQ_ID_MAX || !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                                 (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return 0;
    }
    return n > 0;
}

/* inet_ntop(AF_INET) without its sprintf (1,700 instructions per request under callgrind):
 * dotted decimal into out (16 bytes or more). */
static void ipv4_text(const struct in_addr *a, char *out)
{
    const unsigned char *b = (const unsigned char *)&a->s_addr;

    for (int i = 0; i < 4; i++) {
        unsigned v = b[i];

        if (i > 0)
            *out++ = '.';
        if (v >= 100)
            *out++ = (char)('0' + v / 100);
        if (v >= 10)
            *out++ = (char)('0' + v / 10 % 10);
        *out++ = (char)('0' + v % 10);
    }
    *out = '\0';
}

/* The connection's peer, as text, and whether it is one of the trusted proxies (at accept). */
static void conn_set_peer(struct conn *c, const struct sockaddr *sa)
{
    snprintf(c->peer, sizeof(c->peer), "?");
    if (sa->sa_family == AF_INET)
        ipv4_text(&((const struct sockaddr_in *)(const void *)sa)->sin_addr, c->peer);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, c->peer,
                  sizeof(c->peer));
    c->trusted = svc_util_cidrs_match(c->sl->srv->opts.trusted_proxies, sa) ? 1 : 0;
}

/* The request carries the ingress's token (svc_http_opts.ingress_token), or none is required. */
static int from_ingress(struct svc_req *req)
{
    const char *want = req->c->sl->srv->opts.ingress_token;
    const char *got;

    if (want == NULL || want[0] == '\0')
        return 1;
    got = svc_req_header(req, "X-Ingress-Token");
    return got != NULL && svc_util_secure_equal(got, strlen(got), want, strlen(want));
}

static void req_fill_identity(struct svc_req *req)
{
    const char *rid = svc_req_header(req, "X-Request-Id");
    const char *real_ip = svc_req_header(req, "X-Real-IP");

    if (rid != NULL && id_is_sane(rid))
        svc_util_str_copy(req->id, sizeof(req->id), rid);
    else
        svc_util_id_hex(req->id, 16);
    /* X-Real-IP only from the ingress: any other peer could name any address, and so
     * escape the per-client throttles (login, ops keys) keyed on it. */
    if (real_ip != NULL && strlen(real_ip) < sizeof(req->ip) && req->c->trusted &&
        from_ingress(req))
        svc_util_str_copy(req->ip, sizeof(req->ip), real_ip);
    else
        svc_util_str_copy(req->ip, sizeof(req->ip), req->c->peer[0] != '?' ? req->c->peer : "");
}

/* ---- output ---- */

/* Bytes queued for slow clients by every streaming request of the process (svc_http_queued). */
static atomic_size_t stream_queued;

/* Once the queued bytes passed TRIM_QUEUED_BELOW (a crowd of slow clients), the first stream to
 * end with less than that queued gives the freed heap memory back (svc_util_heap_trim); streams
 * that come and go under it never do. */
#define TRIM_QUEUED_BELOW (1u << 20)
static atomic_int trim_due;

size_t svc_http_queued(void)
{
    return atomic_load_explicit(&stream_queued, memory_order_relaxed);
}

static size_t out_pending(const struct conn *c)
{
    return c->out.len - c->out_off;
}

/* A stream's bytes not yet sent: the connection's output and what waits for its head. */
static size_t stream_waiting(const struct svc_req *req)
{
    return out_pending(req->c) + req->early.len;
}

size_t svc_req_stream_pending(const struct svc_req *req)
{
    /* A connection found broken is closed, and its request aborted, when the loop pass ends;
     * until then its producer is told that the client is full, so that it stops making what
     * nobody will read (chat would turn all the upstream's buffered bytes into objects). */
    if (req->c->dead)
        return SVC_HTTP_STREAM_MAX_PENDING;
    return stream_waiting(req);
}

/* Keeps stream_queued equal to the sum of the streaming requests' waiting bytes. */
static void queued_sync(struct conn *c)
{
    size_t now = c->req != NULL && c->req->streaming ? stream_waiting(c->req) : 0;

    if (now > c->queued) {
        if (atomic_fetch_add_explicit(&stream_queued, now - c->queued, memory_order_relaxed) +
                    (now - c->queued) >=
                TRIM_QUEUED_BELOW &&
            !atomic_load_explicit(&trim_due, memory_order_relaxed))
            atomic_store_explicit(&trim_due, 1, memory_order_relaxed);
    } else if (now < c->queued) {
        atomic_fetch_sub_explicit(&stream_queued, c->queued - now, memory_order_relaxed);
    }
    c->queued = now;
}

static void conn_want(struct conn *c, uint32_t events)
{
    if (events != c->events && c->io != NULL && svc_io_modify(c->io, events) == SVC_OK)
        c->events = events;
}

static int out_put(struct conn *c, const void *data, size_t len)
{
    return svc_buf_append(&c->out, data, len);
}

static int out_str(struct conn *c, const char *s)
{
    return svc_buf_append(&c->out, s, strlen(s));
}

/*
 * Writes what out holds. Returns SVC_OK (all, or as much as the socket took: EPOLLOUT is then
 * watched), or SVC_EIO when the connection broke (c->dead: the loop closes it). The buffer is
 * freed once empty, so a stream between two chunks holds none.
 */
static int conn_flush(struct conn *c)
{
    size_t before = out_pending(c);
    struct svc_req *req = c->req;

    while (out_pending(c) > 0 && !c->dead) {
        ssize_t n = send(c->fd, c->out.data + c->out_off, out_pending(c), MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            c->dead = 1;
        }
    }
    if (c->dead) {
        queued_sync(c);
        return SVC_EIO;
    }
    if (out_pending(c) == 0) {
        svc_buf_deinit(&c->out);
        c->out_off = 0;
        conn_want(c, c->events & ~(uint32_t)EPOLLOUT);
    } else {
        if (c->out_off * 2 >= c->out.len) {
            svc_buf_consume(&c->out, c->out_off);
            c->out_off = 0;
        }
        conn_want(c, c->events | EPOLLOUT);
    }
    /* The producer that paused for this client hears of it from the loop (conn_process). */
    if (req != NULL && req->drain_fn != NULL && before > req->drain_low &&
        out_pending(c) <= req->drain_low)
        c->drain_due = 1;
    queued_sync(c);
    return SVC_OK;
}

static const char *reason(unsigned status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "";
    }
}

static const char *date_line(struct srv_loop *sl)
{
    time_t now = time(NULL);
    struct tm tm;

    if (now != sl->date_sec && gmtime_r(&now, &tm) != NULL) {
        strftime(sl->date, sizeof(sl->date), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        sl->date_sec = now;
    }
    return sl->date;
}

/*
 * Appends a reply's head to out. len: the body's length, or -1 for a stream (chunked, or for an
 * HTTP/1.0 client ended by closing the connection). Decides whether the connection stays open.
 */
static int head_put(struct conn *c, struct svc_req *req, unsigned status, const char *ctype,
                    long long len)
{
    char line[96];
    int rc;

    if (atomic_load_explicit(&c->sl->srv->quiesced, memory_order_relaxed) ||
        (len < 0 && c->http10))
        c->keepalive = 0; /* draining: the ingress must not send another request here */
    snprintf(line, sizeof(line), "HTTP/1.1 %u %s\r\n", status, reason(status));
    rc = out_str(c, line);
    rc = rc != SVC_OK ? rc : out_str(c, date_line(c->sl));
    if (ctype != NULL) {
        rc = rc != SVC_OK ? rc : out_str(c, "Content-Type: ");
        rc = rc != SVC_OK ? rc : out_str(c, ctype);
        rc = rc != SVC_OK ? rc : out_str(c, "\r\n");
    }
    rc = rc != SVC_OK ? rc : out_str(c, "X-Request-Id: ");
    rc = rc != SVC_OK ? rc : out_str(c, req->id);
    rc = rc != SVC_OK ? rc : out_str(c, "\r\n");
    for (struct resp_header *h = req->headers; h != NULL && rc == SVC_OK; h = h->next) {
        rc = out_str(c, h->name);
        rc = rc != SVC_OK ? rc : out_str(c, ": ");
        rc = rc != SVC_OK ? rc : out_str(c, h->value);
        rc = rc != SVC_OK ? rc : out_str(c, "\r\n");
    }
    if (req->streaming)
        rc = rc != SVC_OK ? rc : out_str(c, "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n");
    if (len >= 0) {
        snprintf(line, sizeof(line), "Content-Length: %lld\r\n", len);
        rc = rc != SVC_OK ? rc : out_str(c, line);
    } else if (!c->http10) {
        rc = rc != SVC_OK ? rc : out_str(c, "Transfer-Encoding: chunked\r\n");
    }
    if (!c->keepalive)
        rc = rc != SVC_OK ? rc : out_str(c, "Connection: close\r\n");
    else if (c->http10)
        rc = rc != SVC_OK ? rc : out_str(c, "Connection: keep-alive\r\n");
    return rc != SVC_OK ? rc : out_str(c, "\r\n");
}

/* After a reply call made outside the handler: writes what can go now, and has the loop finish
 * the request (cleanup) or close a broken connection. */
static void reply_written(struct svc_req *req)
{
    struct conn *c = req->c;

    if (req->in_handler)
        return; /* dispatch() goes on from here */
    if (!req->head_pending)
        conn_flush(c);
    if (c->dead || req->finished || req->head_pending || c->drain_due)
        conn_kick(c);
}

int svc_req_reply(struct svc_req *req, int status, const char *content_type, const void *body,
                  size_t len)
{
    struct conn *c = req->c;
    int rc;

    if (req->replied || req->aborted)
        return SVC_ECANCELED;
    req->replied = 1;
    req->finished = 1;
    req->status = (unsigned)status;
    rc = head_put(c, req, req->status, content_type, (long long)len);
    if (rc == SVC_OK && !req->head_only)
        rc = out_put(c, body, len);
    if (rc != SVC_OK)
        c->dead = 1; /* a reply cut short: the client sees the connection close */
    reply_written(req);
    return rc;
}

int svc_req_reply_json(struct svc_req *req, int status, struct svc_json *body)
{
    char *text = body != NULL ? svc_json_dump(body, 0) : NULL;
    int rc;

    svc_json_destroy(&body);
    if (text == NULL)
        return svc_req_reply(req, 500, "text/plain", "out of memory", 13);
    rc = svc_req_reply(req, status, "application/json; charset=utf-8", text, strlen(text));
    free(text);
    return rc;
}

int svc_req_reply_envelope(struct svc_req *req, int http_status, const char *status,
                           const char *message, struct svc_json *data)
{
    return svc_req_reply_json(req, http_status,
                              svc_json_pack("{s:s, s:s, s:o}", "status", status, "message", message,
                                            "data", data != NULL ? data : svc_json_null()));
}

static enum svc_http_style req_style(const struct svc_req *req)
{
    return req->route != NULL ? req->route->style : req->c->sl->srv->opts.default_style;
}

int svc_req_error(struct svc_req *req, int status, const char *message)
{
    switch (req_style(req)) {
    case SVC_HTTP_STYLE_ENVELOPE:
        return svc_req_reply_envelope(req, status, "Fail", message, NULL);
    case SVC_HTTP_STYLE_OPENAI:
        return svc_req_reply_json(req, status,
                                  svc_json_pack("{s:{s:s, s:s, s:n, s:n}}", "error", "message",
                                                message, "type",
                                                status == 401   ? "invalid_request_error"
                                                : status == 429 ? "rate_limit_exceeded"
                                                : status >= 500 ? "server_error"
                                                                : "invalid_request_error",
                                                "param", "code"));
    case SVC_HTTP_STYLE_TEXT:
        break;
    }
    return svc_req_reply(req, status, "text/plain; charset=utf-8", message, strlen(message));
}

/* ---- streaming ---- */

/* Writes a chunk's size line ("1a2\r\n") into out (20 bytes or more); returns its length. Once
 * per chunk, so not snprintf. */
static size_t chunk_size_line(char *out, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[16];
    size_t n = 0, i = 0;

    do
        tmp[n++] = hex[len & 15];
    while ((len >>= 4) != 0);
    while (n > 0)
        out[i++] = tmp[--n];
    out[i++] = '\r';
    out[i++] = '\n';
    return i;
}

/*
 * A stream's head is written when the loop next runs (or when its handler returns), not by
 * svc_req_stream_start: the bytes written in between go out with it, and a stream that has
 * already ended by then (the upstream answered everything at once) goes out as one reply of
 * known length, without the chunked framing (test_http_loops test_stream_sent_whole).
 * Until then the stream's bytes wait unframed in req->early; out may still hold the end of
 * what went before (a 100 Continue), which the head follows.
 */
static int stream_head_write(struct conn *c, struct svc_req *req)
{
    struct svc_buf early = req->early;
    char size[24];
    int rc;

    svc_buf_init(&req->early, SVC_HTTP_STREAM_MAX_PENDING);
    req->head_pending = 0;
    rc = head_put(c, req, req->status, req->stream_ctype,
                  req->stream_ended ? (long long)early.len : -1);
    if (rc == SVC_OK && early.len > 0 && !req->head_only) {
        if (!req->stream_ended && !c->http10) {
            rc = out_put(c, size, chunk_size_line(size, early.len));
        }
        rc = rc != SVC_OK ? rc : out_put(c, early.data, early.len);
        if (!req->stream_ended && !c->http10)
            rc = rc != SVC_OK ? rc : out_str(c, "\r\n");
    }
    svc_buf_deinit(&early);
    free(req->stream_ctype);
    req->stream_ctype = NULL;
    if (rc != SVC_OK)
        c->dead = 1;
    queued_sync(c);
    return rc;
}

int svc_req_stream_start(struct svc_req *req, int status, const char *content_type)
{
    if (req->replied || req->aborted)
        return SVC_ECANCELED;
    if (req->c->sl->srv->pool)
        return SVC_EINVAL;
    if (content_type != NULL && (req->stream_ctype = strdup(content_type)) == NULL)
        return SVC_ENOMEM;
    req->replied = 1;
    req->streaming = 1;
    req->head_pending = 1;
    req->status = (unsigned)status;
    reply_written(req);
    return SVC_OK;
}

/* Writes one chunk (the pieces given, as one) straight to the socket when nothing waits before
 * it (the common case: one writev per chunk, nothing copied); what the socket does not take is
 * queued, and so is the whole chunk when bytes wait before it. */
static int chunk_write(struct conn *c, const struct iovec *parts, int nparts, size_t len,
                       int direct)
{
    char size[24];
    struct iovec iov[SVC_HTTP_STREAM_PIECES_MAX + 2];
    int n = 0;
    size_t sent = 0;
    ssize_t w;
    int tried = 0; /* written at once, as much as the socket took */

    if (!c->http10) {
        iov[n].iov_base = size;
        iov[n++].iov_len = chunk_size_line(size, len);
    }
    for (int i = 0; i < nparts; i++)
        iov[n++] = parts[i];
    if (!c->http10) {
        iov[n].iov_base = (void *)"\r\n";
        iov[n++].iov_len = 2;
    }
    /* The first chunk of a loop pass goes at once; the ones a producer writes after it in the
     * same pass (chat turns one upstream read into many objects) are gathered and written
     * together when the pass ends (conn_kick): one system call, not one per object. */
    if (direct && out_pending(c) == 0 && c->wrote_pass != svc_loop_iteration(c->sl->loop)) {
        size_t total = 0;
        c->wrote_pass = svc_loop_iteration(c->sl->loop);
        tried = 1;
        for (int i = 0; i < n; i++)
            total += iov[i].iov_len;
        do
            w = writev(c->fd, iov, n);
        while (w < 0 && errno == EINTR);
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            c->dead = 1;
            return SVC_OK; /* the loop closes the connection and aborts the request */
        }
        sent = w > 0 ? (size_t)w : 0;
        if (sent == total)
            return SVC_OK;
    }
    /* queue the rest, in order */
    for (int i = 0; i < n; i++) {
        size_t l = iov[i].iov_len, skip = sent < l ? sent : l;
        sent -= skip;
        if (skip < l && out_put(c, (const char *)iov[i].iov_base + skip, l - skip) != SVC_OK) {
            c->dead = 1;
            return SVC_ENOMEM;
        }
    }
    if (tried)
        conn_want(c, c->events | EPOLLOUT); /* the socket is full: written when it drains */
    else if (direct)
        conn_kick(c); /* gathered: written when the pass ends */
    return SVC_OK;
}

int svc_req_stream_writev(struct svc_req *req, const struct iovec *parts, int nparts)
{
    struct conn *c = req->c;
    size_t len = 0;
    int rc;

    if (req->aborted || req->stream_ended || !req->streaming)
        return SVC_ECANCELED;
    if (nparts < 0 || nparts > SVC_HTTP_STREAM_PIECES_MAX)
        return SVC_EINVAL;
    for (int i = 0; i < nparts; i++)
        len += parts[i].iov_len;
    if (c->dead || req->head_only || len == 0)
        return SVC_OK; /* a broken connection: the loop aborts the request soon */
    if (stream_waiting(req) + len > SVC_HTTP_STREAM_MAX_PENDING)
        return SVC_ETOOLARGE;
    if (req->head_pending) { /* unframed until the head is written (stream_head_write) */
        rc = SVC_OK;
        for (int i = 0; i < nparts && rc == SVC_OK; i++)
            rc = svc_buf_append(&req->early, parts[i].iov_base, parts[i].iov_len);
        if (rc != SVC_OK)
            return rc;
    } else {
        int was_waiting = out_pending(c) > 0;
        rc = chunk_write(c, parts, nparts, len, !req->in_handler);
        /* A client that stopped reading: the idle timeout runs from the first byte it left
         * (conn_process restarts it as it reads). */
        if (!was_waiting && out_pending(c) > 0 && !req->in_handler && !c->kick &&
            svc_timer_start(c->timer, (uint64_t)c->sl->srv->opts.idle_timeout * 1000) != SVC_OK)
            SVC_LOG_ERR(req->id, "http", "cannot arm a connection's timeout");
    }
    queued_sync(c);
    if (c->dead)
        conn_kick(c);
    return rc;
}

int svc_req_stream_write(struct svc_req *req, const void *data, size_t len)
{
    struct iovec one = {(void *)data, len};

    return svc_req_stream_writev(req, &one, 1);
}

int svc_req_stream_end(struct svc_req *req)
{
    struct conn *c = req->c;

    if (req->aborted || req->stream_ended || !req->streaming)
        return SVC_ECANCELED;
    req->stream_ended = 1;
    req->finished = 1;
    if (!req->head_pending && !c->http10 && !req->head_only && out_str(c, "0\r\n\r\n") != SVC_OK)
        c->dead = 1;
    reply_written(req);
    return SVC_OK;
}

/* ---- requests ---- */

/* The route for method + url, or NULL. *path_route is the first route whose path matched (its
 * error style answers a 405). */
static const struct svc_http_route *route_find(const struct svc_http_server *srv,
                                               const char *method, const char *url,
                                               const struct svc_http_route **path_route)
{
    *path_route = NULL;
    for (size_t i = 0; i < srv->nroutes; i++) {
        const struct svc_http_route *r = &srv->routes[i];
        size_t n = strlen(r->path);
        int match = n > 0 && r->path[n - 1] == '*' ? strncmp(url, r->path, n - 1) == 0
                                                   : strcmp(url, r->path) == 0;
        if (!match)
            continue;
        if (*path_route == NULL)
            *path_route = r;
        if (r->method == NULL || strcmp(r->method, method) == 0)
            return r;
    }
    return NULL;
}

/* 1 when a browser sent this request from another site (see svc_http_route.same_origin). Requests
 * without Origin (curl, SDKs, same-site GETs) are not cross-site. */
static int cross_origin(const struct svc_req *req)
{
    const char *origin = svc_req_header(req, "Origin");
    const char *host = svc_req_header(req, "Host");
    const char *p;

    if (origin == NULL)
        return 0;
    if (host == NULL)
        return 1;
    p = strstr(origin, "://");
    if (p == NULL)
        return 1; /* "null" (sandboxed frames, file://) or garbage */
    return strcasecmp(p + 3, host) != 0;
}

/* A request without a usable head (too large, malformed): answered with status in the style of
 * the route its request line names, when it names one, and the connection closed after it. */
static struct svc_req *req_new(struct conn *c, size_t extra)
{
    struct svc_req *req = calloc(1, sizeof(*req) + extra);

    if (req == NULL)
        return NULL;
    req->c = c;
    req->method = "";
    req->url = "";
    svc_buf_init(&req->body, c->sl->srv->opts.max_body);
    svc_buf_init(&req->early, SVC_HTTP_STREAM_MAX_PENDING);
    atomic_fetch_add(&c->sl->srv->inflight, 1);
    atomic_fetch_add_explicit(&c->sl->srv->started, 1, memory_order_relaxed);
    return req;
}

/* The route whose error style answers a request whose head could not be used: the one its
 * request line names, read loosely (method, a space, the path up to '?' or a space). */
static const struct svc_http_route *route_of_line(const struct svc_http_server *srv,
                                                  const char *in, size_t len)
{
    char method[16], path[256];
    const char *sp = memchr(in, ' ', len < 16 ? len : 16), *p, *e;
    const struct svc_http_route *route, *path_route;

    if (sp == NULL)
        return NULL;
    memcpy(method, in, (size_t)(sp - in));
    method[sp - in] = '\0';
    p = sp + 1;
    for (e = p; e < in + len && (size_t)(e - p) < sizeof(path) - 1 && *e != ' ' && *e != '?' &&
                *e != '\r' && *e != '\n';
         e++)
        ;
    memcpy(path, p, (size_t)(e - p));
    path[e - p] = '\0';
    route = route_find(srv, method, path, &path_route);
    return route != NULL ? route : path_route;
}

static void reject(struct conn *c, unsigned status, const char *message)
{
    struct svc_req *req = c->req != NULL ? c->req : req_new(c, 0);

    if (req == NULL) {
        c->dead = 1;
        return;
    }
    c->req = req;
    if (req->method[0] != '\0') { /* a parsed head */
        const struct svc_http_route *path_route;
        req->route = route_find(c->sl->srv, req->method, req->url, &path_route);
        req->route = req->route != NULL ? req->route : path_route;
    } else {
        req->route = c->in != NULL ? route_of_line(c->sl->srv, c->in, c->in_len) : NULL;
    }
    if (req->id[0] == '\0')
        svc_util_id_hex(req->id, 16);
    if (req->ip[0] == '\0')
        svc_util_str_copy(req->ip, sizeof(req->ip), c->peer);
    SVC_LOG_INFO(req->id, "http", "request from %s refused: %u %s", c->peer, status, message);
    c->keepalive = 0;
    c->state = C_BUSY;
    req->handled = 1;
    req->in_handler = 1; /* conn_process writes it */
    svc_req_error(req, (int)status, message);
    req->in_handler = 0;
}

static unsigned query_args_max(const struct svc_http_server *srv)
{
    return srv->opts.max_header / 256 > 16 ? (unsigned)(srv->opts.max_header / 256) : 16;
}

/* Takes the head of len bytes at the start of c->in: the request is created and its body's
 * framing set up, or the request refused. */
static void head_take(struct conn *c, size_t len)
{
    struct svc_http_server *srv = c->sl->srv;
    unsigned nlines = svc__http_count_lines(c->in, len);
    unsigned nargs = svc__http_count_args(c->in, len), max_args = query_args_max(srv);
    size_t arrays = ((size_t)nlines + (nargs < max_args ? nargs : max_args)) *
                    sizeof(struct svc__http_field);
    struct svc__http_head h;
    struct svc_req *req = req_new(c, arrays + len + 1);
    const char *cl = NULL, *te = NULL, *conn_hdr, *expect;
    char *copy;
    int rc, hosts = 0;

    if (req == NULL) {
        c->dead = 1;
        return;
    }
    c->req = req;
    req->hdrs = (struct svc__http_field *)(void *)(req + 1);
    req->args = req->hdrs + nlines;
    copy = (char *)(req->args + (nargs < max_args ? nargs : max_args));
    memcpy(copy, c->in, len);
    copy[len] = '\0';
    rc = svc__http_parse_head(copy, len, &h, req->hdrs, nlines, req->args,
                              nargs < max_args ? nargs : max_args);
    if (rc == 414) {
        req->query_too_big = 1; /* answered in the route's style; the rest of the head is read */
        rc = 0;
    }
    if (rc != 0) {
        reject(c, (unsigned)rc,
               rc == 505 ? "HTTP version not supported" : "malformed request head");
        return;
    }
    req->method = h.method;
    req->url = h.path;
    req->nhdrs = h.nheaders;
    req->nargs = h.nargs;
    req->head_only = strcmp(h.method, "HEAD") == 0;
    c->http10 = h.minor == 0;
    req_fill_identity(req);
    for (unsigned i = 0; i < h.nheaders; i++) {
        const char *n = h.headers[i].name, *v = h.headers[i].value;
        if (strcasecmp(n, "Content-Length") == 0) {
            if (cl != NULL && strcmp(cl, v) != 0) {
                reject(c, 400, "conflicting Content-Length headers");
                return;
            }
            cl = v;
        } else if (strcasecmp(n, "Transfer-Encoding") == 0) {
            if (te != NULL) {
                reject(c, 501, "unsupported Transfer-Encoding");
                return;
            }
            te = v;
        } else if (strcasecmp(n, "Host") == 0) {
            hosts++;
        }
    }
    if (hosts > 1 || (hosts == 0 && !c->http10)) {
        reject(c, 400, hosts ? "more than one Host header" : "missing Host header");
        return;
    }
    conn_hdr = svc_req_header(req, "Connection");
    c->keepalive = svc__http_keeps_alive(!c->http10, conn_hdr);
    c->chunked = 0;
    c->body_left = 0;
    if (te != NULL) {
        if (cl != NULL || c->http10) {
            reject(c, 400, "Transfer-Encoding with Content-Length or HTTP/1.0");
            return;
        }
        if (strcasecmp(te, "chunked") != 0) {
            reject(c, 501, "unsupported Transfer-Encoding");
            return;
        }
        c->chunked = 1;
        memset(&c->chunk, 0, sizeof(c->chunk));
    } else if (cl != NULL) {
        int64_t n;
        if (svc_cfg_parse_int(cl, 0, INT64_MAX, &n) != SVC_OK || cl[0] < '0' || cl[0] > '9') {
            reject(c, 400, "invalid Content-Length");
            return;
        }
        c->body_left = (uint64_t)n;
        if (c->body_left > srv->opts.max_body)
            req->body_too_big = 1; /* read and dropped, then answered 413 */
    }
    /* The client waits for our word before sending a body (curl does, past 1 KiB). */
    expect = svc_req_header(req, "Expect");
    if (expect != NULL && strcasecmp(expect, "100-continue") == 0 && !c->http10 &&
        (c->chunked || c->body_left > 0) && c->in_len == len) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (out_put(c, cont, sizeof(cont) - 1) != SVC_OK || conn_flush(c) != SVC_OK)
            c->dead = 1;
    }
    c->state = C_BODY;
}

/* Drops the first n bytes of c->in; an empty buffer is freed. */
static void in_consume(struct conn *c, size_t n)
{
    if (n >= c->in_len) {
        free(c->in);
        c->in = NULL;
        c->in_len = c->in_cap = 0;
        return;
    }
    memmove(c->in, c->in + n, c->in_len - n);
    c->in_len -= n;
}

static void body_append(struct svc_req *req, const char *data, size_t len)
{
    if (!req->body_too_big && svc_buf_append(&req->body, data, len) != SVC_OK)
        req->body_too_big = 1; /* the rest is read and dropped, then answered 413 */
}

/* Moves body bytes from c->in into the request. Returns 1 once the body is complete. */
static int body_take(struct conn *c)
{
    struct svc_req *req = c->req;

    if (c->chunked) {
        size_t used;
        int done;
        long n = svc__http_chunked_decode(&c->chunk, c->in, c->in_len, &used, &done);
        if (n < 0) {
            reject(c, 400, "malformed chunked body");
            return 0;
        }
        body_append(req, c->in, (size_t)n);
        in_consume(c, used);
        return done;
    }
    if (c->body_left > 0 && c->in_len > 0) {
        size_t n = c->in_len < c->body_left ? c->in_len : (size_t)c->body_left;
        body_append(req, c->in, n);
        in_consume(c, n);
        c->body_left -= n;
    }
    return c->body_left == 0;
}

/* Runs the route's handler for a complete request (or answers it without one). */
static void dispatch(struct conn *c)
{
    struct svc_req *req = c->req;
    struct svc_http_server *srv = c->sl->srv;
    const struct svc_http_route *path_route;
    int rc;

    c->state = C_BUSY;
    req->handled = 1;
    req->route = route_find(srv, req->method, req->url, &path_route);
    req->in_handler = 1;
    if (req->query_too_big) {
        char msg[96];
        snprintf(msg, sizeof(msg), "the query has more than %u arguments", query_args_max(srv));
        req->route = req->route != NULL ? req->route : path_route;
        svc_req_error(req, 414, msg);
    } else if (req->body_too_big) {
        char msg[96];
        snprintf(msg, sizeof(msg), "request body larger than %zu bytes", srv->opts.max_body);
        req->route = req->route != NULL ? req->route : path_route;
        svc_req_error(req, 413, msg);
    } else if (req->route == NULL) {
        req->route = path_route; /* for its error style only; never run */
        svc_req_error(req, path_route != NULL ? 405 : 404,
                      path_route != NULL ? "method not allowed" : "404 page not found");
        req->route = NULL;
    } else if (req->route->same_origin && cross_origin(req)) {
        SVC_LOG_NOTICE(req->id, "http", "cross-site %s %s refused (Origin %s)", req->method,
                       req->url, svc_req_header(req, "Origin"));
        svc_req_error(req, 403, "cross-site request refused");
    } else {
        rc = req->route->fn(req->route->ctx, req);
        if (!req->replied && (rc != SVC_HTTP_ASYNC || srv->pool)) {
            SVC_LOG_ERR(req->id, "http", "handler for %s %s gave no reply", req->method,
                        req->url);
            svc_req_error(req, 500, "internal error");
        }
    }
    req->in_handler = 0;
}

static void req_abort(struct svc_req *req)
{
    if (req->aborted || req->finished)
        return;
    req->aborted = 1;
    if (req->abort_fn != NULL)
        req->abort_fn(req->abort_data, req);
}

/* The request is over (answered, or its client gone): its owner's cleanup, then it is freed. */
static void req_end(struct conn *c)
{
    struct svc_req *req = c->req;
    int streamed;

    if (req == NULL)
        return;
    if (!req->finished && req->handled)
        req_abort(req);
    if (req->cleanup_fn != NULL)
        req->cleanup_fn(req->cleanup_data);
    streamed = req->streaming;
    while (req->headers != NULL) {
        struct resp_header *h = req->headers;
        req->headers = h->next;
        free(h);
    }
    svc_buf_deinit(&req->body);
    svc_buf_deinit(&req->early);
    free(req->stream_ctype);
    c->req = NULL;
    c->drain_due = 0;
    queued_sync(c); /* what a client never took is no longer queued */
    if (streamed && svc_http_queued() < TRIM_QUEUED_BELOW &&
        atomic_load_explicit(&trim_due, memory_order_relaxed) && svc_util_heap_trim())
        atomic_store_explicit(&trim_due, 0, memory_order_relaxed);
    atomic_fetch_sub(&c->sl->srv->inflight, 1);
    free(req);
}

/* ---- connections ---- */

static void conn_close(struct conn *c)
{
    struct srv_loop *sl = c->sl;

    req_end(c);
    if (c->io != NULL)
        svc_io_close(&c->io); /* accepted here, never shared: the close leaves the epoll set */
    else
        close(c->fd);
    svc_timer_destroy(&c->timer);
    free(c->in);
    svc_buf_deinit(&c->out);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        sl->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    atomic_fetch_sub(&sl->nconns, 1);
    free(c);
}

/* Has the loop run conn_process soon (this iteration's timers): from the calls a handler or a
 * producer makes, which must not end the request under their feet. */
static void conn_kick(struct conn *c)
{
    if (c->kick)
        return;
    c->kick = 1;
    c->head_timed = 0; /* the kick takes the timer: conn_arm starts the head's again */
    if (svc_timer_start(c->timer, 0) != SVC_OK)
        SVC_LOG_ERR(NULL, "http", "cannot schedule a connection");
}

/* The events to watch and the timer for the connection's state. A connection waiting for its
 * client (a head, a body, the client to read) has the idle timeout; one waiting for its handler
 * or producer has none. */
static void conn_arm(struct conn *c)
{
    const struct svc_http_opts *o = &c->sl->srv->opts;
    uint32_t ev = EPOLLRDHUP;
    size_t limit = c->state == C_BODY ? IN_BODY_MAX : o->max_header;

    if (c->in_len < limit || c->state == C_LINGER)
        ev |= EPOLLIN;
    if (c->eof)
        ev = 0; /* the client's side is closed: reading would report it again and again */
    if (out_pending(c) > 0)
        ev |= EPOLLOUT;
    conn_want(c, ev);
    if (c->kick || c->state == C_LINGER)
        return; /* a lingering connection has its timer from conn_linger */
    if (c->state == C_HEAD && c->in_len > 0) {
        /* A head that has begun must end within the timeout however slowly its bytes trickle
         * in (slowloris): they do not restart the timer. */
        if (!c->head_timed && svc_timer_start(c->timer, (uint64_t)o->idle_timeout * 1000) ==
                                  SVC_OK)
            c->head_timed = 1;
        return;
    }
    c->head_timed = 0;
    if (c->state != C_BUSY || out_pending(c) > 0) {
        if (svc_timer_start(c->timer, (uint64_t)o->idle_timeout * 1000) != SVC_OK)
            SVC_LOG_ERR(NULL, "http", "cannot arm a connection's timeout");
    } else {
        svc_timer_stop(c->timer);
    }
}

/* The last reply is out: no more requests on this connection. */
static void conn_linger(struct conn *c)
{
    c->state = C_LINGER;
    free(c->in);
    c->in = NULL;
    c->in_len = c->in_cap = 0;
    c->kick = 0;
    if (shutdown(c->fd, SHUT_WR) != 0 || svc_timer_start(c->timer, LINGER_MS) != SVC_OK)
        c->dead = 1;
}

/*
 * Moves the connection on as far as it can go: writes a stream's head and whatever is queued,
 * ends a request whose reply is out, reads the next request from the bytes already read and
 * dispatches it. Runs from the loop only (I/O events, the timer); may free c.
 */
static void conn_process(struct conn *c)
{
    const struct svc_http_opts *o = &c->sl->srv->opts;

    for (;;) {
        struct svc_req *req = c->req;

        if (c->dead) {
            conn_close(c);
            return;
        }
        if (c->state == C_LINGER)
            break;
        if (req != NULL && c->state == C_BUSY) {
            if (req->head_pending)
                stream_head_write(c, req);
            if (out_pending(c) > 0 && conn_flush(c) != SVC_OK)
                continue; /* dead */
            if (c->drain_due) {
                c->drain_due = 0;
                if (req->drain_fn != NULL && !req->aborted)
                    req->drain_fn(req->drain_data, req); /* may write more, or end the stream */
                continue;
            }
            if (!req->finished || out_pending(c) > 0)
                break; /* the producer or the client has the next move */
            req_end(c);
            if (!c->keepalive) {
                conn_linger(c);
                continue;
            }
            c->state = C_HEAD;
            continue;
        }
        if (c->state == C_HEAD) {
            size_t len = svc__http_head_len(c->in, c->in_len, &c->scan);
            if (len == 0) {
                if (c->in_len >= o->max_header) {
                    char msg[96];
                    snprintf(msg, sizeof(msg), "request head larger than %zu bytes",
                             o->max_header);
                    reject(c, 431, msg);
                    continue;
                }
                break; /* more to read */
            }
            memset(&c->scan, 0, sizeof(c->scan)); /* for the next head */
            head_take(c, len);
            if (c->state != C_BODY)
                continue; /* refused, or dead */
            in_consume(c, len);
        }
        if (c->state == C_BODY) {
            if (!body_take(c))
                break;
            if (c->state == C_BUSY)
                continue; /* refused (a malformed chunk) */
            dispatch(c);
        }
    }
    if (c->eof && !(c->req != NULL && c->req->finished && out_pending(c) > 0)) {
        /* Nothing more will come: what could be answered was (a finished reply is written out
         * first, only EPOLLOUT watched meanwhile). A request still waiting for its producer is
         * aborted: its client is gone. */
        if (c->req != NULL && !c->req->finished)
            SVC_LOG_DEBUG(c->req->id, "http",
                          "client closed the connection while the reply was pending");
        conn_close(c);
        return;
    }
    conn_arm(c);
}

enum read_result { READ_OK, READ_FULL, READ_EOF };

/* Reads what the socket holds into c->in, up to limit bytes buffered. */
static enum read_result conn_read(struct conn *c, size_t limit)
{
    for (;;) {
        ssize_t n;

        if (c->in_len >= limit)
            return READ_FULL;
        if (c->in_len == c->in_cap) {
            size_t cap = c->in_cap ? c->in_cap * 2 : IN_MIN;
            char *p;
            if (cap > limit)
                cap = limit;
            p = realloc(c->in, cap);
            if (p == NULL)
                return READ_EOF;
            c->in = p;
            c->in_cap = cap;
        }
        n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (n > 0) {
            c->in_len += (size_t)n;
            if (c->in_len < c->in_cap)
                return READ_OK; /* the socket had less than the room: it is empty */
        } else if (n == 0) {
            return READ_EOF;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return READ_OK;
        } else if (errno != EINTR) {
            return READ_EOF;
        }
    }
}

/* A lingering connection: the client's bytes are dropped until it closes, or enough came. */
static void linger_read(struct conn *c)
{
    char sink[4096];
    ssize_t n;

    while ((n = recv(c->fd, sink, sizeof(sink), 0)) > 0)
        if ((c->lingered += (size_t)n) > LINGER_MAX_BYTES)
            break;
    if (n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        c->dead = 1;
}

static void on_conn_io(void *data, struct svc_io *io, int fd, uint32_t events)
{
    struct conn *c = data;
    const struct svc_http_opts *o = &c->sl->srv->opts;

    (void)io;
    (void)fd;
    if (events & (EPOLLHUP | EPOLLERR)) {
        c->dead = 1; /* both directions closed, or reset: nothing can be written any more */
    } else if (c->state == C_LINGER) {
        linger_read(c);
    } else {
        if (events & EPOLLOUT)
            conn_flush(c); /* conn_process tells a paused producer */
        if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
            enum read_result r =
                conn_read(c, c->state == C_BODY ? IN_BODY_MAX : o->max_header);
            /* The client closed its side (or stays silent past its buffer while its socket
             * reports a hang-up): what it sent before is still parsed and answered, then the
             * connection ends, and a request still in flight is aborted: its producer stops at
             * once. */
            if (r == READ_EOF ||
                (r == READ_FULL && (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))))
                c->eof = 1;
        }
    }
    conn_process(c);
}

static void on_conn_timer(void *data, struct svc_timer *t)
{
    struct conn *c = data;

    (void)t;
    if (c->state == C_LINGER) {
        c->dead = 1; /* lingered long enough */
    } else if (c->kick) {
        c->kick = 0;
    } else {
        SVC_LOG_DEBUG(c->req != NULL ? c->req->id : NULL, "http",
                      "connection from %s idle for %u s: closed", c->peer,
                      c->sl->srv->opts.idle_timeout);
        c->dead = 1;
    }
    conn_process(c);
}

/* A new client connection on this loop. Closes fd when it cannot be taken. */
static void conn_new(struct srv_loop *sl, int fd, const struct sockaddr *sa)
{
    struct conn *c = calloc(1, sizeof(*c));
    int one = 1;

    if (c == NULL) {
        close(fd);
        return;
    }
    c->sl = sl;
    c->fd = fd;
    c->keepalive = 1;
    /* a reply of any size is written from here; a stream's waiting bytes are bounded in
     * svc_req_stream_writev */
    svc_buf_init(&c->out, SIZE_MAX);
    conn_set_peer(c, sa);
    atomic_fetch_add(&sl->nconns, 1);
    /* replies and chunks go out as they are written, not held for Nagle's algorithm */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (svc_timer_create(&c->timer, sl->loop, on_conn_timer, c) != SVC_OK ||
        svc_io_add(&c->io, sl->loop, fd, EPOLLIN | EPOLLRDHUP, on_conn_io, c) != SVC_OK) {
        svc_timer_destroy(&c->timer);
        atomic_fetch_sub(&sl->nconns, 1);
        close(fd);
        free(c);
        return;
    }
    c->events = EPOLLIN | EPOLLRDHUP;
    c->next = sl->conns;
    if (sl->conns != NULL)
        sl->conns->prev = c;
    sl->conns = c;
    conn_arm(c);
}

/* ---- accepting ---- */

/*
 * POOL mode: a connection goes to the loop (thread) with the fewest. The loop that accepted it
 * may be any (EPOLLEXCLUSIVE wakes one, often the same), and its handlers block: had it kept
 * what it accepted, the keep-alive connections of a caller's burst (chat's 32 to billing) would
 * all wait on one thread, and billing's group commit would see one transaction at a time.
 */
struct handoff {
    struct srv_loop *to;
    int fd;
    struct sockaddr_storage ss;
    struct handoff *prev, *next; /* in srv->handoffs until taken: a server destroyed first
                                  * closes what its stopped loops never took */
};

static void handoff_unlink(struct svc_http_server *srv, struct handoff *h)
{
    pthread_mutex_lock(&srv->handoff_lock);
    if (h->prev != NULL)
        h->prev->next = h->next;
    else
        srv->handoffs = h->next;
    if (h->next != NULL)
        h->next->prev = h->prev;
    pthread_mutex_unlock(&srv->handoff_lock);
}

static void on_handoff(void *data, struct svc_loop *loop)
{
    struct handoff *h = data;

    (void)loop;
    handoff_unlink(h->to->srv, h);
    atomic_fetch_sub(&h->to->nconns, 1); /* conn_new counts it again */
    conn_new(h->to, h->fd, (const struct sockaddr *)&h->ss);
    free(h);
}

static void conn_place(struct srv_loop *sl, int fd, const struct sockaddr_storage *ss)
{
    struct svc_http_server *srv = sl->srv;
    struct srv_loop *to = sl;
    struct handoff *h;

    for (unsigned i = 0; srv->pool && i < srv->nloops; i++)
        if (atomic_load(&srv->loops[i].nconns) < atomic_load(&to->nconns))
            to = &srv->loops[i];
    if (to == sl || (h = malloc(sizeof(*h))) == NULL) {
        conn_new(sl, fd, (const struct sockaddr *)ss);
        return;
    }
    h->to = to;
    h->fd = fd;
    h->ss = *ss;
    h->prev = NULL;
    pthread_mutex_lock(&srv->handoff_lock);
    h->next = srv->handoffs;
    if (srv->handoffs != NULL)
        srv->handoffs->prev = h;
    srv->handoffs = h;
    pthread_mutex_unlock(&srv->handoff_lock);
    atomic_fetch_add(&to->nconns, 1); /* counted now, so that a burst spreads */
    if (svc_loop_post(to->loop, on_handoff, h) != SVC_OK) {
        handoff_unlink(srv, h);
        atomic_fetch_sub(&to->nconns, 1);
        free(h);
        conn_new(sl, fd, (const struct sockaddr *)ss);
    }
}

static void on_accept(void *data, struct svc_io *io, int fd, uint32_t events);

static void on_accept_pause(void *data, struct svc_timer *t)
{
    struct srv_loop *sl = data;

    (void)t;
    if (sl->stopped || sl->accept_io != NULL)
        return;
    if (svc_io_add(&sl->accept_io, sl->loop, sl->srv->listen_fd, EPOLLIN | EPOLLEXCLUSIVE,
                   on_accept, sl) != SVC_OK &&
        svc_timer_start(sl->accept_pause, ACCEPT_PAUSE_MS) != SVC_OK)
        SVC_LOG_ERR(NULL, "http", "cannot watch the listening socket again");
}

/* Accepts up to ACCEPT_BATCH connections into this loop. Returns 1 when the batch was full (more
 * may be waiting), 0 when the backlog is empty or accepting failed. */
static int accept_batch(struct srv_loop *sl)
{
    struct svc_http_server *srv = sl->srv;

    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t slen = sizeof(ss);
        int cfd =
            accept4(srv->listen_fd, (struct sockaddr *)&ss, &slen, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (cfd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                SVC_LOG_WARN(NULL, "http", "cannot accept a connection (%s): pausing for %d ms",
                             strerror(errno), ACCEPT_PAUSE_MS);
                svc_io_del(&sl->accept_io);
                if (svc_timer_start(sl->accept_pause, ACCEPT_PAUSE_MS) != SVC_OK)
                    SVC_LOG_ERR(NULL, "http", "cannot schedule accepting again");
            }
            return 0; /* EAGAIN: another loop took it */
        }
        long open = svc_http_server_connections(srv);
        if (open >= (long)srv->opts.max_connections) {
            SVC_LOG_WARN(NULL, "http", "connection refused: %ld open (HTTP_MAX_CONNECTIONS %u)",
                         open, srv->opts.max_connections);
            close(cfd);
            continue;
        }
        conn_place(sl, cfd, &ss);
    }
    return 1;
}

static void on_accept(void *data, struct svc_io *io, int fd, uint32_t events)
{
    (void)io;
    (void)fd;
    (void)events;
    accept_batch(data);
}

/* ---- listening socket ---- */

static int listen_on(const char *addr, int *fd_out, int *port_out, char *err, size_t errlen)
{
    char host[256], portstr[8];
    struct addrinfo hints = {0}, *res = NULL;
    int port, fd = -1, one = 1, rc;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);

    if (svc_cfg_parse_addr(addr, host, sizeof(host), &port) != SVC_OK) {
        snprintf(err, errlen, "not host:port: \"%s\"", addr);
        return SVC_EINVAL;
    }
    snprintf(portstr, sizeof(portstr), "%d", port);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve \"%s\": %s", host, gai_strerror(rc));
        return SVC_EINVAL;
    }
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        freeaddrinfo(res);
        return SVC_EIO;
    }
    /* SO_REUSEADDR only skips TIME_WAIT; it never lets two live listeners share a port. */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 4096) != 0) {
        int e = errno;
        snprintf(err, errlen, "%s %s", addr,
                 e == EADDRINUSE ? "is already in use" : strerror(e));
        close(fd);
        freeaddrinfo(res);
        return e == EADDRINUSE ? SVC_EEXIST : SVC_EIO;
    }
    freeaddrinfo(res);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                              : ((struct sockaddr_in *)&ss)->sin_port);
    *fd_out = fd;
    *port_out = port;
    return SVC_OK;
}

/* ---- server lifecycle ---- */

static void *pool_thread(void *arg)
{
    struct srv_loop *sl = arg;

    svc_loop_run(sl->loop);
    return NULL;
}

int svc_http_server_create(struct svc_http_server **out, const struct svc_http_opts *opts,
                           const struct svc_http_route *routes, size_t nroutes, char *err,
                           size_t errlen)
{
    struct svc_http_server *srv = calloc(1, sizeof(*srv));
    int rc;

    *out = NULL;
    if (srv == NULL)
        return SVC_ENOMEM;
    srv->opts = *opts;
    if (srv->opts.max_header == 0)
        srv->opts.max_header = 16 * 1024;
    if (srv->opts.idle_timeout == 0)
        srv->opts.idle_timeout = 60;
    if (srv->opts.max_connections == 0)
        srv->opts.max_connections = 20000;
    srv->routes = routes;
    srv->nroutes = nroutes;
    srv->listen_fd = -1;
    srv->pool = opts->mode == SVC_HTTP_POOL;
    pthread_mutex_init(&srv->handoff_lock, NULL);
    rc = listen_on(opts->addr, &srv->listen_fd, &srv->port, err, errlen);
    if (rc != SVC_OK)
        goto fail;
    srv->nloops = srv->pool ? (opts->threads ? opts->threads : 2) : opts->nloops;
    srv->loops = calloc(srv->nloops, sizeof(*srv->loops));
    if (srv->loops == NULL) {
        rc = SVC_ENOMEM;
        goto fail;
    }
    for (unsigned i = 0; i < srv->nloops; i++) {
        struct srv_loop *sl = &srv->loops[i];
        sl->srv = srv;
        if (srv->pool ? svc_loop_create(&sl->loop) != SVC_OK : (sl->loop = opts->loops[i]) == NULL)
            goto fail_loop;
        /* Every loop accepts; EPOLLEXCLUSIVE wakes one of them per new connection. */
        if (svc_timer_create(&sl->accept_pause, sl->loop, on_accept_pause, sl) != SVC_OK ||
            svc_io_add(&sl->accept_io, sl->loop, srv->listen_fd, EPOLLIN | EPOLLEXCLUSIVE,
                       on_accept, sl) != SVC_OK)
            goto fail_loop;
    }
    for (unsigned i = 0; srv->pool && i < srv->nloops; i++) {
        struct srv_loop *sl = &srv->loops[i];
        if (pthread_create(&sl->thread, NULL, pool_thread, sl) != 0)
            goto fail_loop;
        sl->thread_started = 1;
    }
    *out = srv;
    return SVC_OK;
fail_loop:
    snprintf(err, errlen, "cannot start serving HTTP on %s", opts->addr);
    rc = SVC_EIO;
fail:
    svc_http_server_destroy(&srv);
    return rc;
}

int svc_http_server_port(const struct svc_http_server *srv)
{
    return srv->port;
}

long svc_http_server_inflight(const struct svc_http_server *srv)
{
    return atomic_load(&srv->inflight);
}

unsigned long svc_http_server_started(const struct svc_http_server *srv)
{
    return atomic_load_explicit(&srv->started, memory_order_relaxed);
}

long svc_http_server_connections(const struct svc_http_server *srv)
{
    long n = 0;

    for (unsigned i = 0; i < srv->nloops; i++)
        n += atomic_load(&srv->loops[i].nconns);
    return n;
}

/*
 * Stopping to listen. A connection the kernel has completed but nobody accepted is reset when
 * the socket closes, after the client (the ingress) sent its request on it, and a request cut
 * that way cannot be retried elsewhere (it may have had effects). A refused connect can: so the
 * backlog is taken first (those requests are answered), then the socket is shut down at once,
 * which refuses every later connect (Linux: shutdown(SHUT_RD) of a listening socket stops it).
 */
static void shut_listener(struct svc_http_server *srv)
{
    if (shutdown(srv->listen_fd, SHUT_RD) != 0)
        SVC_LOG_WARN(NULL, "http", "cannot shut the listening socket down: %s", strerror(errno));
}

/* Stops accepting on one loop (on that loop's thread: the watcher is its); the first loop to
 * get here takes the backlog and shuts the listener. */
static void quiesce_loop(void *data, struct svc_loop *loop)
{
    struct srv_loop *sl = data;

    (void)loop;
    sl->stopped = 1;
    svc_timer_stop(sl->accept_pause);
    svc_io_del(&sl->accept_io);
    if (!atomic_exchange(&sl->srv->listener_shut, 1)) {
        while (accept_batch(sl))
            ;
        shut_listener(sl->srv);
    }
    atomic_fetch_add(&sl->srv->loops_quiesced, 1);
}

/* Ends every request of one loop as if its client had left (on that loop's thread). */
static void abort_loop(void *data, struct svc_loop *loop)
{
    struct srv_loop *sl = data;
    struct conn *c = sl->conns, *next;

    (void)loop;
    for (; c != NULL; c = next) {
        next = c->next;
        if (c->req != NULL && c->state == C_BUSY && !c->req->finished)
            conn_close(c);
    }
}

void svc_http_server_abort_all(struct svc_http_server *srv)
{
    for (unsigned i = 0; !srv->pool && i < srv->nloops; i++)
        if (svc_loop_post(srv->loops[i].loop, abort_loop, &srv->loops[i]) != SVC_OK)
            SVC_LOG_ERR(NULL, "http", "cannot end the requests of loop %u", i);
}

void svc_http_server_quiesce(struct svc_http_server *srv)
{
    unsigned posted = 0;

    if (atomic_exchange(&srv->quiesced, 1))
        return;
    for (unsigned i = 0; i < srv->nloops; i++) {
        if (svc_loop_post(srv->loops[i].loop, quiesce_loop, &srv->loops[i]) != SVC_OK)
            SVC_LOG_ERR(NULL, "http", "cannot stop accepting on loop %u", i);
        else
            posted++;
    }
    /* The caller (the drain) counts on no connection being accepted from here on: wait for the
     * loops to take it, for at most QUIESCE_WAIT_MS (a loop busy in a slow handler). */
    for (unsigned ms = 0; ms < QUIESCE_WAIT_MS && atomic_load(&srv->loops_quiesced) < posted;
         ms++)
        usleep(1000);
}

void svc_http_server_destroy(struct svc_http_server **srvp)
{
    struct svc_http_server *srv = srvp != NULL ? *srvp : NULL;

    if (srv == NULL)
        return;
    for (unsigned i = 0; srv->loops != NULL && i < srv->nloops; i++)
        if (srv->loops[i].thread_started)
            svc_loop_stop(srv->loops[i].loop);
    for (unsigned i = 0; srv->loops != NULL && i < srv->nloops; i++)
        if (srv->loops[i].thread_started)
            pthread_join(srv->loops[i].thread, NULL);
    /* The loops no longer run: what is still open is closed here, its requests ended as if
     * their clients had left. */
    for (unsigned i = 0; srv->loops != NULL && i < srv->nloops; i++) {
        struct srv_loop *sl = &srv->loops[i];
        while (sl->conns != NULL)
            conn_close(sl->conns);
        svc_io_del(&sl->accept_io);
        svc_timer_destroy(&sl->accept_pause);
        if (srv->pool)
            svc_loop_destroy(&sl->loop);
    }
    free(srv->loops);
    while (srv->handoffs != NULL) { /* accepted, never taken by the stopped loop */
        struct handoff *h = srv->handoffs;
        srv->handoffs = h->next;
        close(h->fd);
        free(h);
    }
    pthread_mutex_destroy(&srv->handoff_lock);
    if (srv->listen_fd >= 0)
        close(srv->listen_fd);
    free(srv);
    *srvp = NULL;
}
