/* fu_http: epoll HTTP/1.1 server for the fake upstream. See fu_http.h for the design. */
#include "fu_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fu_api.h"
#include "fu_job.h"
#include "fu_record.h"
#include "fu_timer.h"

/* Input holds one request (head + body, chunked framing squeezed out as it is decoded) plus
 * whatever the client pipelined behind it, up to one read's worth more. */
#define FU_READ_CHUNK (64u * 1024u)
#define FU_READ_FIRST (4u * 1024u) /* first allocation of a connection's input buffer */
#define FU_READ_MIN 1024u          /* grow the input buffer when less room than this is left */
#define FU_IN_MAX (FU_MAX_HEAD_BYTES + FU_MAX_BODY_BYTES + FU_READ_CHUNK)
/* Output ceiling for one connection: the largest single response is /_fake/requests (bounded by
 * FU_RECORD_MAX_BYTES plus escaping) or a large embeddings batch. */
#define FU_OUT_MAX (256u * 1024u * 1024u)
/* Keep-alive connections with no request in progress are closed after this long. */
#define FU_IDLE_TIMEOUT_NS (300ull * 1000000000ull)
/* After an error response with "Connection: close" we read and discard for this long so the
 * client sees the response instead of a reset caused by its unread body. */
#define FU_LINGER_NS (2ull * 1000000000ull)
/* Longest chunk-size or trailer line accepted in a chunked request body. */
#define FU_MAX_CHUNK_LINE 4096u
#define FU_EPOLL_BATCH 256
#define FU_ACCEPT_BATCH 64
/* On EMFILE and friends, stop accepting for this long instead of spinning on the listener. */
#define FU_ACCEPT_PAUSE_NS (100ull * 1000000ull)
#define FU_LISTEN_BACKLOG 65535
/* Passes through conn_run before a busy connection yields its worker to the others. */
#define FU_RUN_ROUNDS 64u

enum conn_phase {
    PH_HEAD,   /* waiting for (the rest of) a request head */
    PH_BODY,   /* head parsed, waiting for the body */
    PH_JOB,    /* a job is producing the response */
    PH_LINGER, /* final response sent, write side shut, discarding input until EOF or timeout */
};

enum chunk_state { CH_SIZE, CH_DATA, CH_DATA_CRLF, CH_TRAILER, CH_DONE };

enum close_reason {
    CLOSE_NORMAL,   /* we decided to close (Connection: close, cut, linger over) */
    CLOSE_PEER,     /* the client went away (EOF, reset, write error) */
    CLOSE_SHUTDOWN, /* the server is stopping */
};

struct fu_worker;

struct http_conn {
    struct fu_conn base; /* first: fu_api answers through it (keep_alive, http11 of the request) */
    int fd;
    struct fu_worker *w;
    struct http_conn *prev, *next; /* worker's list, for shutdown */
    struct fu_buf in;
    struct fu_buf out;
    size_t out_off;  /* bytes of out already sent */
    struct fu_timer timer; /* the connection's one deadline, in the worker's heap */
    enum conn_phase phase;
    /* framing of the request being received (PH_BODY) */
    size_t scan_pos; /* how far "\r\n\r\n" was searched for */
    size_t head_len;
    size_t content_length;
    bool chunked_body;
    bool continue_sent;
    enum chunk_state ch_state;
    size_t ch_left;
    size_t dec_end; /* end of the decoded chunked body in `in` */
    size_t raw_pos; /* first undecoded byte of the chunked body in `in` */
    /* response state */
    bool close_after_flush;  /* close once `out` is sent */
    bool linger_after_flush; /* ... by way of PH_LINGER */
    bool peer_eof;           /* the client closed its side */
    bool read_blocked;       /* `in` was full: read again after consuming */
    bool broken;             /* a handler failed to queue its response */
    bool cut;                /* closing because the job asked for a cut */
    bool job_waits_output;   /* the job paused on FU_JOB_HIGH_WATER */
    struct fu_job *job;
};

struct fu_worker {
    struct fu_server *srv;
    pthread_t thread;
    bool started;
    int ep;
    struct fu_timer_heap timers; /* one deadline per connection */
    struct http_conn *conns;
    bool accept_paused;
    uint64_t accept_resume_ns;
    struct fu_req req; /* scratch: a request is parsed and handled within one call */
};

struct fu_server {
    int listen_fd;
    int stop_fd;     /* eventfd, readable once stopping; watched by every worker */
    char listen_tag; /* addresses used as epoll data to tell the listener ... */
    char stop_tag;   /* ... and the stop event from connections */
    struct fu_worker *workers;
    unsigned n_workers;
    bool stopped;
};

/* ------------------------------------------------------------------------------------------ */
/* time and small helpers */

uint64_t fu_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double fu_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static bool str_ieq(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    return alen == blen && strncasecmp(a, b, alen) == 0;
}

const struct fu_header *fu_req_header(const struct fu_req *req, const char *name)
{
    for (size_t i = 0; i < req->n_headers; i++) {
        if (str_ieq(req->headers[i].name, req->headers[i].name_len, name))
            return &req->headers[i];
    }
    return NULL;
}

/* Does the comma-separated header value contain `token` (case-insensitive)? */
static bool value_has_token(const char *v, size_t n, const char *token)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t start = i;
        while (i < n && v[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t'))
            end--;
        if (end > start && str_ieq(v + start, end - start, token))
            return true;
    }
    return false;
}

const char *fu_http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return status < 500 ? "Client Error" : "Server Error";
    }
}

int fu_http_append_head(struct fu_buf *out, int status, const char *content_type,
                        long long content_length, bool chunked, bool keep_alive, const char *extra)
{
    int rc = fu_buf_appendf(out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n", status,
                            fu_http_reason(status), content_type);
    if (rc == FU_OK && content_length >= 0)
        rc = fu_buf_appendf(out, "Content-Length: %lld\r\n", content_length);
    else if (rc == FU_OK && chunked)
        rc = fu_buf_appends(out, "Transfer-Encoding: chunked\r\n");
    if (rc == FU_OK)
        rc = fu_buf_appends(out,
                            keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n");
    if (rc == FU_OK && extra)
        rc = fu_buf_appends(out, extra);
    if (rc == FU_OK)
        rc = fu_buf_append(out, "\r\n", 2);
    return rc;
}

int fu_http_frame_chunk(struct fu_buf *out, size_t start, bool chunked)
{
    if (!chunked || start >= out->len)
        return FU_OK;
    char hdr[24];
    size_t payload = out->len - start;
    int n = snprintf(hdr, sizeof(hdr), "%zx\r\n", payload);
    int rc = fu_buf_reserve(out, (size_t)n + 2);
    if (rc != FU_OK)
        return rc;
    /* Slide the payload right to make room for the size line: payloads are one SSE event. */
    memmove(out->data + start + n, out->data + start, payload);
    memcpy(out->data + start, hdr, (size_t)n);
    out->len += (size_t)n;
    return fu_buf_append(out, "\r\n", 2);
}

/* ------------------------------------------------------------------------------------------ */
/* timers (one per connection, in its worker's heap) */

static struct http_conn *timer_conn(struct fu_timer *t)
{
    return (struct http_conn *)((char *)t - offsetof(struct http_conn, timer));
}

static void timer_clear(struct http_conn *c)
{
    fu_timer_clear(&c->w->timers, &c->timer);
}

/* Arm the connection's single timer. Returns 0 or FU_ENOMEM. */
static int timer_set(struct http_conn *c, uint64_t deadline)
{
    return fu_timer_set(&c->w->timers, &c->timer, deadline);
}

/* ------------------------------------------------------------------------------------------ */
/* connections */

static void conn_destroy(struct http_conn *c, enum close_reason why)
{
    struct fu_worker *w = c->w;
    if (c->job) {
        enum fu_job_end how = FU_JOB_END_CLIENT_CLOSED;
        if (why == CLOSE_SHUTDOWN)
            how = FU_JOB_END_SHUTDOWN;
        else if (c->cut && why == CLOSE_NORMAL)
            how = FU_JOB_END_CUT; /* closed once the cut's output was flushed */
        fu_job_end(&c->job, how);
    }
    timer_clear(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    close(c->fd); /* also removes it from the epoll set */
    fu_buf_deinit(&c->in);
    fu_buf_deinit(&c->out);
    free(c);
    atomic_fetch_sub(&fu_stats.open_connections, 1);
}

bool fu_conn_keep_alive(const struct fu_conn *c)
{
    return c->keep_alive;
}

void fu_conn_disable_keep_alive(struct fu_conn *c)
{
    c->keep_alive = false;
}

bool fu_conn_http11(const struct fu_conn *c)
{
    return c->http11;
}

int fu_conn_send(struct fu_conn *c, const char *data, size_t len)
{
    return c->ops->send(c, data, len);
}

void fu_conn_abort(struct fu_conn *c)
{
    c->ops->abort(c);
}

void fu_conn_start_job(struct fu_conn *c, struct fu_job *job)
{
    fu_job_begin(job);
    c->ops->start_job(c, job);
}

/* struct fu_conn_ops of a plain-port connection */

static int http_send(struct fu_conn *base, const char *data, size_t len)
{
    struct http_conn *c = (struct http_conn *)base;
    int rc = fu_buf_append(&c->out, data, len);
    if (rc != FU_OK) {
        c->broken = true;
        return rc;
    }
    if (!c->base.keep_alive)
        c->close_after_flush = true;
    return FU_OK;
}

static void http_abort(struct fu_conn *base)
{
    ((struct http_conn *)base)->broken = true;
}

static void http_start_job(struct fu_conn *base, struct fu_job *job)
{
    struct http_conn *c = (struct http_conn *)base;
    c->job = job;
    c->phase = PH_JOB;
    c->job_waits_output = false;
}

static const struct fu_conn_ops http_conn_ops = {
    .send = http_send,
    .abort = http_abort,
    .start_job = http_start_job,
};

int fu_http_append_reject(struct fu_buf *out, int status)
{
    const char *message, *code;
    switch (status) {
    case 413:
        message = "Request body too large: the fake upstream accepts at most 4194304 bytes.";
        code = "request_too_large";
        break;
    case 431:
        message = "Request header fields too large: at most 32768 bytes and 100 headers.";
        code = "headers_too_large";
        break;
    case 501:
        message = "Unsupported Transfer-Encoding.";
        code = "unsupported_transfer_encoding";
        break;
    case 505:
        message = "HTTP version not supported.";
        code = "http_version_not_supported";
        break;
    default:
        status = 400;
        message = "Malformed HTTP request.";
        code = "bad_http_request";
        break;
    }
    struct fu_buf body;
    fu_buf_init(&body, 4096);
    int rc = fu_buf_appends(&body, "{\"error\":{\"message\":");
    if (rc == FU_OK)
        rc = fu_buf_append_json_str(&body, message, strlen(message));
    if (rc == FU_OK)
        rc = fu_buf_appendf(&body,
                            ",\"type\":\"invalid_request_error\",\"param\":null,"
                            "\"code\":\"%s\"}}\n",
                            code);
    if (rc == FU_OK)
        rc = fu_http_append_head(out, status, "application/json", (long long)body.len, false,
                                 false, NULL);
    if (rc == FU_OK)
        rc = fu_buf_append(out, body.data, body.len);
    fu_buf_deinit(&body);
    return rc;
}

/* Queue an error response produced by the HTTP layer itself (bad framing, too large), then close
 * with lingering so the client can read it. */
static void conn_reject(struct http_conn *c, int status)
{
    c->base.keep_alive = false;
    if (fu_http_append_reject(&c->out, status) != FU_OK)
        c->broken = true;
    c->close_after_flush = true;
    c->linger_after_flush = true;
}

/* Read what the socket has into `in` (or discard it while lingering). Sets peer_eof on EOF.
 * Returns 0, or -1 when the connection failed (reset). */
static int conn_read(struct http_conn *c)
{
    if (c->phase == PH_LINGER) {
        char sink[16384];
        for (;;) {
            ssize_t n = recv(c->fd, sink, sizeof(sink), 0);
            if (n > 0)
                continue;
            if (n == 0) {
                c->peer_eof = true;
                return 0;
            }
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        }
    }
    c->read_blocked = false;
    for (;;) {
        size_t room = c->in.cap > c->in.len + 1 ? c->in.cap - c->in.len - 1 : 0;
        if (room < FU_READ_MIN) {
            /* Start small (most requests are a few hundred bytes, and 10,000 idle streams
             * should not pin 64 KiB each), then double up to one read chunk at a time. */
            size_t want = c->in.cap < FU_READ_FIRST ? FU_READ_FIRST : c->in.cap;
            if (want > FU_READ_CHUNK)
                want = FU_READ_CHUNK;
            if (want > FU_IN_MAX - c->in.len)
                want = FU_IN_MAX - c->in.len;
            if (want > 0 && fu_buf_reserve(&c->in, want) == FU_OK)
                room = c->in.cap - c->in.len - 1;
            if (room == 0) {
                /* Full: the parser reports 413/431 if this is one request; otherwise we read
                 * again once the request ahead of this data has been answered. */
                c->read_blocked = true;
                return 0;
            }
        }
        ssize_t n = recv(c->fd, c->in.data + c->in.len, room, 0);
        if (n > 0) {
            c->in.len += (size_t)n;
            c->in.data[c->in.len] = '\0';
            /* A short read means the socket is drained; the next arrival raises a new edge. */
            if ((size_t)n < room)
                return 0;
            continue;
        }
        if (n == 0) {
            c->peer_eof = true;
            return 0;
        }
        if (errno == EINTR)
            continue;
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
    }
}

/* Send as much of `out` as the socket takes. Returns 0 or -1 on a connection error. */
static int conn_flush(struct http_conn *c)
{
    while (c->out_off < c->out.len) {
        ssize_t n = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        return -1;
    }
    if (c->out_off == c->out.len) {
        fu_buf_clear(&c->out);
        c->out_off = 0;
    } else if (c->out_off > FU_READ_CHUNK && c->out_off > c->out.len / 2) {
        /* Compact now and then, not after every partial send of a big response. */
        fu_buf_consume(&c->out, c->out_off);
        c->out_off = 0;
    }
    return 0;
}

static size_t out_pending(const struct http_conn *c)
{
    return c->out.len - c->out_off;
}

int fu_http_parse_head(const char *buf, size_t len, struct fu_req *r)
{
    const char *end = buf + len - 2; /* drop the final CRLF: every line below ends in CRLF */
    const char *p = buf;
    const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
    if (eol == NULL)
        return 400;
    /* request line: METHOD SP target SP HTTP/1.x */
    const char *sp1 = memchr(p, ' ', (size_t)(eol - p));
    if (sp1 == NULL || sp1 == p)
        return 400;
    const char *sp2 = memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1));
    if (sp2 == NULL || sp2 == sp1 + 1)
        return 400;
    r->method = p;
    r->method_len = (size_t)(sp1 - p);
    r->target = sp1 + 1;
    r->target_len = (size_t)(sp2 - sp1 - 1);
    const char *ver = sp2 + 1;
    size_t ver_len = (size_t)(eol - ver);
    if (ver_len != 8 || memcmp(ver, "HTTP/1.", 7) != 0)
        return ver_len >= 5 && memcmp(ver, "HTTP/", 5) == 0 ? 505 : 400;
    if (ver[7] != '0' && ver[7] != '1')
        return 505;
    r->minor_version = ver[7] - '0';
    for (size_t i = 0; i < r->method_len; i++) {
        if (p[i] < 'A' || p[i] > 'Z')
            return 400;
    }
    /* Origin form "/path?query", or absolute form "http://host/path?query" as sent to a
     * proxy: routing only looks at the path. */
    const char *t = r->target, *te = r->target + r->target_len;
    if (r->target_len > 7 &&
        (strncasecmp(t, "http://", 7) == 0 || strncasecmp(t, "https://", 8) == 0)) {
        t = memchr(t + 7, '/', (size_t)(te - t - 7));
        if (t == NULL)
            return 400;
    }
    if (t == te || t[0] != '/')
        return 400;
    const char *q = memchr(t, '?', (size_t)(te - t));
    r->path = t;
    r->path_len = (size_t)((q ? q : te) - t);
    r->query = q ? q + 1 : NULL;
    r->query_len = q ? (size_t)(te - q - 1) : 0;

    r->n_headers = 0;
    p = eol + 2;
    while (p < end) {
        eol = memmem(p, (size_t)(end - p) + 2, "\r\n", 2);
        if (eol == NULL || eol > end)
            return 400;
        if (*p == ' ' || *p == '\t')
            return 400; /* obsolete line folding */
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon == NULL || colon == p)
            return 400;
        for (const char *n = p; n < colon; n++) {
            if (*n == ' ' || *n == '\t' || (unsigned char)*n < 0x21)
                return 400;
        }
        if (r->n_headers == FU_MAX_HEADERS)
            return 431;
        const char *v = colon + 1, *ve = eol;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        struct fu_header *h = &r->headers[r->n_headers++];
        h->name = p;
        h->name_len = (size_t)(colon - p);
        h->value = v;
        h->value_len = (size_t)(ve - v);
        p = eol + 2;
    }
    r->body = NULL;
    r->body_len = 0;
    return 0;
}

/* Strict decimal Content-Length. Returns 0, or the status to reject with. */
static int parse_content_length(const char *v, size_t n, size_t *out)
{
    if (n == 0 || n > 19)
        return 400;
    unsigned long long x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return 400;
        x = x * 10 + (unsigned)(v[i] - '0');
    }
    if (x > FU_MAX_BODY_BYTES)
        return 413;
    *out = (size_t)x;
    return 0;
}

/* Decide the framing of a parsed head. Returns 0 or the status to reject with. */
static int setup_framing(struct http_conn *c, const struct fu_req *r)
{
    c->content_length = 0;
    c->chunked_body = false;
    bool have_cl = false;
    for (size_t i = 0; i < r->n_headers; i++) {
        const struct fu_header *h = &r->headers[i];
        if (str_ieq(h->name, h->name_len, "content-length")) {
            size_t v = 0;
            int st = parse_content_length(h->value, h->value_len, &v);
            if (st)
                return st;
            if (have_cl && v != c->content_length)
                return 400;
            have_cl = true;
            c->content_length = v;
        } else if (str_ieq(h->name, h->name_len, "transfer-encoding")) {
            if (!str_ieq(h->value, h->value_len, "chunked") || c->chunked_body)
                return 501;
            c->chunked_body = true;
        }
    }
    if (have_cl && c->chunked_body)
        return 400; /* ambiguous framing: a smuggling pattern, refuse it */
    if (c->chunked_body && r->minor_version == 0)
        return 400;
    c->base.http11 = r->minor_version == 1;
    const struct fu_header *conn = fu_req_header(r, "connection");
    if (c->base.http11)
        c->base.keep_alive = !(conn && value_has_token(conn->value, conn->value_len, "close"));
    else
        c->base.keep_alive = conn && value_has_token(conn->value, conn->value_len, "keep-alive");
    return 0;
}

/* Continue decoding a chunked body in place. Returns 1 when complete, 0 when more input is
 * needed, or the HTTP status to reject with. */
static int dechunk(struct http_conn *c)
{
    char *d = c->in.data;
    int result = 0;
    while (result == 0 && c->ch_state != CH_DONE) {
        size_t avail = c->in.len - c->raw_pos;
        if (c->ch_state == CH_SIZE || c->ch_state == CH_TRAILER) {
            const char *line = d + c->raw_pos;
            const char *eol = memmem(line, avail, "\r\n", 2);
            if (eol == NULL) {
                if (avail > FU_MAX_CHUNK_LINE)
                    result = 400;
                break;
            }
            size_t line_len = (size_t)(eol - line);
            if (line_len > FU_MAX_CHUNK_LINE) {
                result = 400;
                break;
            }
            c->raw_pos += line_len + 2;
            if (c->ch_state == CH_TRAILER) {
                if (line_len == 0)
                    c->ch_state = CH_DONE;
                continue;
            }
            size_t size = 0, i = 0;
            for (; i < line_len; i++) {
                char ch = line[i];
                int v = ch >= '0' && ch <= '9'   ? ch - '0'
                        : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                        : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                                 : -1;
                if (v < 0)
                    break;
                if (size > FU_MAX_BODY_BYTES) {
                    result = 413;
                    break;
                }
                size = size * 16 + (size_t)v;
            }
            if (result)
                break;
            if (i == 0 || (i < line_len && line[i] != ';' && line[i] != ' ' && line[i] != '\t')) {
                result = 400;
                break;
            }
            if (size > FU_MAX_BODY_BYTES - (c->dec_end - c->head_len)) {
                result = 413;
                break;
            }
            c->ch_left = size;
            c->ch_state = size == 0 ? CH_TRAILER : CH_DATA;
        } else if (c->ch_state == CH_DATA) {
            if (avail == 0)
                break;
            size_t n = avail < c->ch_left ? avail : c->ch_left;
            memmove(d + c->dec_end, d + c->raw_pos, n);
            c->dec_end += n;
            c->raw_pos += n;
            c->ch_left -= n;
            if (c->ch_left == 0)
                c->ch_state = CH_DATA_CRLF;
        } else { /* CH_DATA_CRLF */
            if (avail < 2)
                break;
            if (d[c->raw_pos] != '\r' || d[c->raw_pos + 1] != '\n') {
                result = 400;
                break;
            }
            c->raw_pos += 2;
            c->ch_state = CH_SIZE;
        }
    }
    /* Squeeze the consumed framing out so the buffer holds head + decoded body + unparsed
     * input, and raw_pos == dec_end again. */
    if (result == 0 && c->raw_pos > c->dec_end) {
        memmove(d + c->dec_end, d + c->raw_pos, c->in.len - c->raw_pos);
        c->in.len -= c->raw_pos - c->dec_end;
        c->in.data[c->in.len] = '\0';
        c->raw_pos = c->dec_end;
    }
    if (result == 0 && c->ch_state == CH_DONE)
        result = 1;
    return result;
}

/*
 * Handle at most one complete request from `in`. Returns 1 if a request was handled (call again
 * for pipelined ones), 0 if more input is needed or the connection is closing.
 */
static int conn_parse(struct http_conn *c)
{
    struct fu_req *r = &c->w->req;
    if (c->phase == PH_HEAD) {
        if (c->in.len == 0)
            return 0;
        size_t from = c->scan_pos > 3 ? c->scan_pos - 3 : 0;
        const char *p = memmem(c->in.data + from, c->in.len - from, "\r\n\r\n", 4);
        if (p == NULL) {
            c->scan_pos = c->in.len;
            if (c->in.len > FU_MAX_HEAD_BYTES)
                conn_reject(c, 431);
            return 0;
        }
        c->head_len = (size_t)(p - c->in.data) + 4;
        if (c->head_len > FU_MAX_HEAD_BYTES) {
            conn_reject(c, 431);
            return 0;
        }
        int st = fu_http_parse_head(c->in.data, c->head_len, r);
        if (st == 0)
            st = setup_framing(c, r);
        if (st) {
            conn_reject(c, st);
            return 0;
        }
        c->phase = PH_BODY;
        c->continue_sent = false;
        c->ch_state = CH_SIZE;
        c->dec_end = c->raw_pos = c->head_len;
        const struct fu_header *exp = fu_req_header(r, "expect");
        if (exp && c->base.http11 && str_ieq(exp->value, exp->value_len, "100-continue")) {
            bool have_all = !c->chunked_body && c->in.len >= c->head_len + c->content_length;
            if (!have_all && (c->chunked_body || c->content_length > 0)) {
                if (fu_buf_appends(&c->out, "HTTP/1.1 100 Continue\r\n\r\n") != FU_OK)
                    c->broken = true;
                c->continue_sent = true;
            }
        }
    }

    /* PH_BODY */
    size_t total;
    if (c->chunked_body) {
        int st = dechunk(c);
        if (st == 0)
            return 0;
        if (st != 1) {
            conn_reject(c, st);
            return 0;
        }
        total = c->raw_pos;
    } else {
        if (c->in.len - c->head_len < c->content_length)
            return 0;
        total = c->head_len + c->content_length;
    }
    /* Parse the head again: `in` may have moved since the first parse. It was valid then. */
    if (fu_http_parse_head(c->in.data, c->head_len, r) != 0) {
        conn_reject(c, 400);
        return 0;
    }
    size_t body_len = c->chunked_body ? c->dec_end - c->head_len : c->content_length;
    r->body = body_len ? c->in.data + c->head_len : NULL;
    r->body_len = body_len;
    c->phase = PH_HEAD;
    timer_clear(c);
    fu_api_handle(&c->base, r, fu_now_ns());
    fu_buf_consume(&c->in, total);
    c->scan_pos = 0;
    /* Give back the room a large body needed; the next request starts small again. */
    if (c->in.len == 0 && c->in.cap > FU_READ_CHUNK)
        fu_buf_deinit(&c->in);
    if (c->broken) {
        c->close_after_flush = true;
        return 0;
    }
    return c->close_after_flush ? 0 : 1;
}

/* Drive the connection after any event or timer: parse requests, step the job, write, close.
 * May destroy `c`. */
static void conn_run(struct http_conn *c)
{
    for (unsigned round = 0;; round++) {
        if (round == FU_RUN_ROUNDS) {
            /* A fast reader of a huge unpaced stream: yield to the other connections and come
             * back through the timer heap on the next loop turn. */
            if (timer_set(c, fu_now_ns() + 1) != FU_OK)
                conn_destroy(c, CLOSE_NORMAL);
            return;
        }
        if (c->peer_eof && c->job) {
            /* The client left while we were still answering: that is the event tests time. */
            conn_destroy(c, CLOSE_PEER);
            return;
        }
        bool progress = false;
        if ((c->phase == PH_HEAD || c->phase == PH_BODY) && !c->close_after_flush &&
            out_pending(c) < FU_JOB_HIGH_WATER) {
            if (c->read_blocked && conn_read(c) < 0) {
                conn_destroy(c, CLOSE_PEER);
                return;
            }
            progress = conn_parse(c) > 0;
        }
        if (c->phase == PH_JOB && !c->close_after_flush) {
            uint64_t next = 0;
            enum fu_job_status st = fu_job_step(c->job, fu_now_ns(), &c->out, &next);
            c->job_waits_output = false;
            switch (st) {
            case FU_JOB_MORE:
                if (next) {
                    if (timer_set(c, next) != FU_OK) {
                        conn_destroy(c, CLOSE_NORMAL);
                        return;
                    }
                } else {
                    timer_clear(c);
                    c->job_waits_output = true;
                }
                break;
            case FU_JOB_DONE:
                fu_job_end(&c->job, FU_JOB_END_DONE);
                c->phase = PH_HEAD;
                timer_clear(c);
                if (!c->base.keep_alive)
                    c->close_after_flush = true;
                progress = true;
                break;
            case FU_JOB_CUT:
                c->cut = true;
                c->close_after_flush = true;
                timer_clear(c);
                break;
            case FU_JOB_STALL: timer_clear(c); break;
            case FU_JOB_ERROR: conn_destroy(c, CLOSE_NORMAL); return;
            }
        }
        if (c->broken) {
            conn_destroy(c, CLOSE_NORMAL);
            return;
        }
        if (conn_flush(c) < 0) {
            conn_destroy(c, CLOSE_PEER);
            return;
        }
        if (out_pending(c) == 0 && c->job_waits_output) {
            continue; /* the pause was for backpressure and the output has drained */
        }
        if (!progress)
            break;
    }

    if (out_pending(c) == 0 && c->close_after_flush) {
        if (c->linger_after_flush && !c->peer_eof) {
            /* Half-close and drain: closing with unread input would reset the connection and
             * could destroy the error response before the client reads it. */
            shutdown(c->fd, SHUT_WR);
            c->phase = PH_LINGER;
            c->close_after_flush = false;
            fu_buf_deinit(&c->in);
            if (conn_read(c) < 0 || c->peer_eof || timer_set(c, fu_now_ns() + FU_LINGER_NS)) {
                conn_destroy(c, CLOSE_NORMAL);
            }
            return;
        }
        conn_destroy(c, CLOSE_NORMAL);
        return;
    }
    if (c->peer_eof && out_pending(c) == 0 && c->phase != PH_JOB) {
        conn_destroy(c, CLOSE_PEER);
        return;
    }
    /* Idle keep-alive connections (and half-received requests) get a timeout. */
    if ((c->phase == PH_HEAD || c->phase == PH_BODY) && !fu_timer_armed(&c->timer) &&
        !c->close_after_flush) {
        if (timer_set(c, fu_now_ns() + FU_IDLE_TIMEOUT_NS) != FU_OK)
            conn_destroy(c, CLOSE_NORMAL);
    }
}

static void conn_event(struct http_conn *c, uint32_t ev)
{
    if (ev & EPOLLERR) {
        conn_destroy(c, CLOSE_PEER);
        return;
    }
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) {
        if (conn_read(c) < 0) {
            conn_destroy(c, CLOSE_PEER);
            return;
        }
        if (ev & (EPOLLRDHUP | EPOLLHUP))
            c->peer_eof = true;
        if (c->phase == PH_LINGER) {
            if (c->peer_eof)
                conn_destroy(c, CLOSE_NORMAL);
            return;
        }
    } else if (c->phase == PH_LINGER) {
        return;
        /* Bytes arrived on an idle connection: restart its idle clock. */
        if ((c->phase == PH_HEAD || c->phase == PH_BODY) && fu_timer_armed(&c->timer))
            timer_clear(c);
    }
    conn_run(c);
}

static void conn_timer(struct http_conn *c)
{
    if (c->phase == PH_JOB) {
        conn_run(c);
        return;
    }
    /* Idle timeout or the end of a linger. */
    conn_destroy(c, CLOSE_NORMAL);
}

static void worker_accept(struct fu_worker *w)
{
    struct fu_server *s = w->srv;
    for (int i = 0; i < FU_ACCEPT_BATCH; i++) {
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: stop listening for a moment rather than spin. */
                fprintf(stderr, "fake-upstream: accept: %s (pausing accepts)\n", strerror(errno));
                epoll_ctl(w->ep, EPOLL_CTL_DEL, s->listen_fd, NULL);
                w->accept_paused = true;
                w->accept_resume_ns = fu_now_ns() + FU_ACCEPT_PAUSE_NS;
            }
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct http_conn *c = calloc(1, sizeof(*c));
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->w = w;
        c->base.ops = &http_conn_ops;
        fu_timer_init(&c->timer);
        c->phase = PH_HEAD;
        c->base.keep_alive = true;
        c->base.http11 = true;
        fu_buf_init(&c->in, FU_IN_MAX);
        fu_buf_init(&c->out, FU_OUT_MAX);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                 .data.ptr = c};
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
            continue;
        }
        c->next = w->conns;
        if (w->conns)
            w->conns->prev = c;
        w->conns = c;
        atomic_fetch_add(&fu_stats.open_connections, 1);
        atomic_fetch_add(&fu_stats.total_connections, 1);
        if (timer_set(c, fu_now_ns() + FU_IDLE_TIMEOUT_NS) != FU_OK)
            conn_destroy(c, CLOSE_NORMAL);
    }
}

static int listen_add(struct fu_worker *w)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = &w->srv->listen_tag};
    return epoll_ctl(w->ep, EPOLL_CTL_ADD, w->srv->listen_fd, &ev);
}

static void *worker_main(void *arg)
{
    struct fu_worker *w = arg;
    struct fu_server *s = w->srv;
    struct epoll_event evs[FU_EPOLL_BATCH];
    bool stop = false;
    while (!stop) {
        uint64_t now = fu_now_ns();
        int timeout = fu_timer_wait_ms(&w->timers, now, -1);
        if (w->accept_paused) {
            uint64_t d = w->accept_resume_ns;
            int t = d <= now ? 0 : (int)((d - now + 999999) / 1000000);
            if (timeout < 0 || t < timeout)
                timeout = t;
        }
        int n = epoll_wait(w->ep, evs, FU_EPOLL_BATCH, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "fake-upstream: epoll_wait: %s\n", strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            void *tag = evs[i].data.ptr;
            if (tag == &s->listen_tag)
                worker_accept(w);
            else if (tag == &s->stop_tag)
                stop = true;
            else
                conn_event(tag, evs[i].events);
        }
        now = fu_now_ns();
        struct fu_timer *t;
        while ((t = fu_timer_first(&w->timers)) != NULL && t->deadline <= now) {
            struct http_conn *c = timer_conn(t);
            timer_clear(c);
            conn_timer(c);
        }
        if (w->accept_paused && now >= w->accept_resume_ns) {
            if (listen_add(w) == 0)
                w->accept_paused = false;
            else
                w->accept_resume_ns = now + FU_ACCEPT_PAUSE_NS;
        }
    }
    while (w->conns)
        conn_destroy(w->conns, CLOSE_SHUTDOWN);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* server */

/* Split "HOST:PORT" / "[V6]:PORT" into host and port strings. Returns 0 or FU_EINVAL. */
static int split_hostport(const char *s, char *host, size_t host_len, char *port, size_t port_len)
{
    const char *colon;
    const char *h = s;
    size_t hl;
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (rb == NULL || rb[1] != ':')
            return FU_EINVAL;
        h = s + 1;
        hl = (size_t)(rb - h);
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return FU_EINVAL;
        hl = (size_t)(colon - s);
    }
    size_t pl = strlen(colon + 1);
    if (hl == 0 || hl >= host_len || pl == 0 || pl >= port_len)
        return FU_EINVAL;
    for (size_t i = 0; i < pl; i++) {
        if (colon[1 + i] < '0' || colon[1 + i] > '9')
            return FU_EINVAL;
    }
    if (strtol(colon + 1, NULL, 10) > 65535)
        return FU_EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    memcpy(port, colon + 1, pl + 1);
    return FU_OK;
}

int fu_http_listen(const char *listen_addr, char *bound, size_t bound_len, bool *addr_in_use)
{
    struct addrinfo *res = NULL;
    int fd = -1;
    char host[256], port[16];
    *addr_in_use = false;

    if (split_hostport(listen_addr, host, sizeof(host), port, sizeof(port)) != FU_OK) {
        fprintf(stderr, "fake-upstream: invalid listen address '%s' (want HOST:PORT)\n",
                listen_addr);
        goto out;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        fprintf(stderr, "fake-upstream: cannot resolve '%s': %s\n", host, gai_strerror(gai));
        goto out;
    }
    int last_err = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last_err = errno;
            continue;
        }
        /* SO_REUSEADDR only lets us rebind over TIME_WAIT leftovers; unlike SO_REUSEPORT it
         * never lets two live listeners share a port, so a taken port still fails below. */
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, FU_LISTEN_BACKLOG) == 0)
            break;
        last_err = errno;
        close(fd);
        fd = -1;
    }
    if (fd < 0) {
        *addr_in_use = last_err == EADDRINUSE;
        fprintf(stderr, "fake-upstream: cannot listen on %s: %s\n", listen_addr,
                strerror(last_err));
        goto out;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char nhost[NI_MAXHOST], nport[NI_MAXSERV];
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0 ||
        getnameinfo((struct sockaddr *)&ss, sl, nhost, sizeof(nhost), nport, sizeof(nport),
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        fprintf(stderr, "fake-upstream: getsockname: %s\n", strerror(errno));
        close(fd);
        fd = -1;
        goto out;
    }
    snprintf(bound, bound_len, ss.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", nhost, nport);
    if (res)
        freeaddrinfo(res);
    return fd;

out:
    if (res)
        freeaddrinfo(res);
    return -1;
}

struct fu_server *fu_server_create(const char *listen_addr, char *bound, size_t bound_len,
                                   bool *addr_in_use)
{
    struct fu_server *s = NULL;
    int fd = fu_http_listen(listen_addr, bound, bound_len, addr_in_use);

    if (fd < 0)
        goto out;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        goto out;
    s->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->stop_fd < 0) {
        fprintf(stderr, "fake-upstream: eventfd: %s\n", strerror(errno));
        free(s);
        s = NULL;
        goto out;
    }
    s->listen_fd = fd;
    fd = -1;
out:
    if (fd >= 0)
        close(fd);
    return s;
}

int fu_server_start(struct fu_server *s, unsigned threads)
{
    s->workers = calloc(threads, sizeof(*s->workers));
    if (s->workers == NULL)
        return FU_ENOMEM;
    s->n_workers = threads;
    for (unsigned i = 0; i < threads; i++) {
        s->workers[i].ep = -1;
    }
    for (unsigned i = 0; i < threads; i++) {
        struct fu_worker *w = &s->workers[i];
        w->srv = s;
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        if (w->ep < 0)
            goto fail;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &s->stop_tag};
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, s->stop_fd, &ev) < 0 || listen_add(w) < 0)
            goto fail;
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
            goto fail;
        w->started = true;
    }
    return FU_OK;
fail:
    fprintf(stderr, "fake-upstream: cannot start worker: %s\n", strerror(errno));
    fu_server_stop(s);
    return FU_EIO;
}

void fu_server_stop(struct fu_server *s)
{
    if (s->stopped)
        return;
    s->stopped = true;
    uint64_t one = 1;
    if (write(s->stop_fd, &one, sizeof(one)) < 0)
        fprintf(stderr, "fake-upstream: eventfd write: %s\n", strerror(errno));
    for (unsigned i = 0; i < s->n_workers; i++) {
        struct fu_worker *w = &s->workers[i];
        if (w->started)
            pthread_join(w->thread, NULL);
        w->started = false;
    }
}

void fu_server_destroy(struct fu_server **sp)
{
    struct fu_server *s = *sp;
    if (s == NULL)
        return;
    fu_server_stop(s);
    for (unsigned i = 0; i < s->n_workers; i++) {
        struct fu_worker *w = &s->workers[i];
        if (w->ep >= 0)
            close(w->ep);
        fu_timer_heap_deinit(&w->timers);
    }
    free(s->workers);
    close(s->listen_fd);
    close(s->stop_fd);
    free(s);
    *sp = NULL;
}
