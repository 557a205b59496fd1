/*
 * The HTTP server on libmicrohttpd. See svc/http.h for the model; the MHD call sequence is:
 *   first access-handler call   -> create the request (headers are complete)
 *   calls with upload data      -> append to the body (bounded)
 *   final call (no upload data) -> run the route handler; queue its reply, or suspend
 *   resume + another final call -> queue the reply the handler produced later
 *   completed notification      -> abort callback if unfinished, handler cleanup, free
 */
#include "svc/http.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <fcntl.h>

#include "svc/buf.h"
#include "svc/cfg.h"
#include "svc/json.h"
#include "svc/log.h"
#include "svc/loop.h"
#include "svc/util.h"

#define REQ_ID_MAX 64
/* MHD's per-stream send block. Small on purpose: it is resident for every open stream, and
 * libmicrohttpd 0.9.75 writes a chunked reply into the connection's pool instead; only an
 * HTTP/1.0 client's stream goes through it (docs/benchmarks.md). */
#define STREAM_BLOCK 512

/*
 * LOOPS mode shards each loop's connections over several MHD daemons (docs/http.md "Shards").
 * libmicrohttpd 0.9.75 walks every suspended connection of a daemon in each MHD_run that follows
 * a resume (resume_suspended_connections), and a stream is suspended between its chunks: one
 * daemon per loop made every chunk cost O(open streams). A new connection goes to the loop's
 * daemon with the fewest; another daemon is started once all hold SHARD_CONNS, so a walk is at
 * most about SHARD_CONNS long whatever the number open. Each daemon costs two descriptors (its
 * epoll fd and its eventfd) and about 2 KiB.
 */
#define SHARD_CONNS 128
#define SHARD_MAX_DAEMONS 512 /* per loop; past it connections go to the least loaded */
/* Connections accepted per wake-up of a loop, so that one loop does not take a whole burst. */
#define ACCEPT_BATCH 64
/* Out of descriptors, a loop stops watching the listening socket this long: it stays readable,
 * and retrying at once would spin (and log) until a descriptor frees. */
#define ACCEPT_PAUSE_MS 100
/* A request that waits (async or streaming) has its client socket watched for a hang-up only
 * once it has waited this long: most requests are answered sooner, and watching costs two
 * epoll_ctl calls on the request's path (docs/http.md "Client gone"). A client that leaves is
 * then noticed at most this much later. */
#define WATCH_DELAY_MS 20

struct loop_shard;

struct daemon_slot {
    struct svc_http_server *srv;
    struct loop_shard *shard; /* NULL in POOL mode */
    struct MHD_Daemon *d;
    struct svc_loop *loop; /* NULL in POOL mode */
    struct svc_io *io;     /* MHD's epoll fd inside our loop */
    struct svc_timer *timer;
    unsigned conns; /* LOOPS: connections this daemon holds (its loop's thread only) */
    struct svc_req *live; /* LOOPS: its requests not yet completed (its loop's thread only) */
};

/* The daemons of one loop (LOOPS mode). Touched only by that loop's thread once it runs. */
struct loop_shard {
    struct svc_http_server *srv;
    struct svc_loop *loop;
    struct svc_io *accept_io;       /* the shared listening socket, EPOLLEXCLUSIVE */
    struct svc_timer *accept_pause; /* out of descriptors: accepting resumes when it fires */
    int stopped;                    /* quiesced: accepting never resumes */
    struct daemon_slot **slots;
    unsigned nslots, capslots;
    struct svc_req *watch_head, *watch_tail; /* waiting for their watch, oldest first */
    struct svc_timer *watch_timer;           /* fires when the oldest is due */
};

struct svc_http_server {
    struct svc_http_opts opts;
    const struct svc_http_route *routes;
    size_t nroutes;
    int listen_fd;
    int port;
    struct daemon_slot *pool_slot; /* POOL mode: MHD accepts and runs its own threads */
    struct loop_shard *shards;     /* LOOPS mode: one per loop */
    unsigned nshards;
    atomic_long conns; /* LOOPS: open client connections, every loop */
    atomic_long inflight;
    atomic_ulong started; /* requests begun since start: a drain watches it stand still */
    atomic_int quiesced;
    atomic_int listener_shut; /* quiesced, the backlog taken, the socket shut down */
};

struct resp_header {
    struct resp_header *next;
    char *value; /* in name[], after the name's NUL */
    char name[]; /* one allocation for the node and both strings */
};

struct svc_req {
    struct daemon_slot *slot;
    struct MHD_Connection *conn;
    const struct svc_http_route *route;
    const char *method;
    const char *url;
    char id[REQ_ID_MAX + 1];
    char ip[INET6_ADDRSTRLEN];
    char peer[INET6_ADDRSTRLEN]; /* the socket's peer, whatever X-Real-IP says */
    struct svc_buf body;
    int body_too_big;
    int query_too_big; /* more than query_args_max() query arguments (on_uri) */
    struct resp_header *headers;

    struct MHD_Response *pending; /* reply produced but not yet queued */
    unsigned pending_status;

    unsigned in_handler : 1, handled : 1, suspended : 1, replied : 1, aborted : 1, finished : 1,
        streaming : 1, stream_ended : 1;

    struct svc_buf out; /* stream bytes not yet taken by MHD */
    size_t out_off;
    struct svc_io *watch; /* EPOLLRDHUP on the client socket while async */
    struct svc_req *wprev, *wnext; /* in the shard's watch queue (WATCH_DELAY_MS) */
    uint64_t watch_due_ms;
    unsigned watch_queued : 1;
    struct svc_req *lprev, *lnext; /* in its daemon's live list (LOOPS mode) */

    svc_req_abort_cb abort_fn;
    void *abort_data;
    svc_req_drain_cb drain_fn;
    void *drain_data;
    size_t drain_low;
    svc_req_cleanup_cb cleanup_fn;
    void *cleanup_data;
};

/* ---- small accessors ---- */

const char *svc_req_method(const struct svc_req *req) { return req->method; }
const char *svc_req_path(const struct svc_req *req) { return req->url; }
const char *svc_req_id(const struct svc_req *req) { return req->id; }
const char *svc_req_client_ip(const struct svc_req *req) { return req->ip; }
const char *svc_req_peer_ip(const struct svc_req *req) { return req->peer; }
struct svc_loop *svc_req_loop(const struct svc_req *req) { return req->slot->loop; }
int svc_req_is_done(const struct svc_req *req) { return req->aborted || req->finished; }
int svc_req_status(const struct svc_req *req) { return req->replied ? (int)req->pending_status : 0; }

const char *svc_req_header(const struct svc_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const char *svc_req_query(const struct svc_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
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

static enum MHD_Result query_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
    struct query_out *q = cls;

    (void)kind;
    query_sep(q, q->used == 0 ? '?' : '&');
    query_put(q, key);
    if (value != NULL) {
        query_sep(q, '=');
        query_put(q, value);
    }
    return q->full ? MHD_NO : MHD_YES;
}

int svc_req_query_string(const struct svc_req *req, char *buf, size_t len)
{
    struct query_out q = {buf, len, 0, 0};

    if (len == 0)
        return SVC_ETOOLARGE;
    MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, query_arg, &q);
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
    struct resp_header *h = malloc(sizeof(*h) + nlen + vlen);

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

static void req_fill_identity(struct svc_req *req)
{
    const char *rid = svc_req_header(req, "X-Request-Id");
    const char *real_ip = svc_req_header(req, "X-Real-IP");
    const union MHD_ConnectionInfo *ci;

    if (rid != NULL && id_is_sane(rid))
        svc_util_str_copy(req->id, sizeof(req->id), rid);
    else
        svc_util_id_hex(req->id, 16);

    snprintf(req->peer, sizeof(req->peer), "?");
    ci = MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci != NULL && ci->client_addr != NULL) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            ipv4_text(&((const struct sockaddr_in *)sa)->sin_addr, req->peer);
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, req->peer,
                      sizeof(req->peer));
    }
    /* X-Real-IP only from the ingress: any other peer could name any address, and so
     * escape the per-client throttles (login, ops keys) keyed on it. */
    if (real_ip != NULL && strlen(real_ip) < sizeof(req->ip) && ci != NULL &&
        svc_util_cidrs_match(req->slot->srv->opts.trusted_proxies, ci->client_addr))
        svc_util_str_copy(req->ip, sizeof(req->ip), real_ip);
    else
        svc_util_str_copy(req->ip, sizeof(req->ip), req->peer[0] != '?' ? req->peer : "");
}

/* ---- replies ---- */

static void add_headers(struct svc_req *req, struct MHD_Response *resp, const char *ctype)
{
    if (ctype != NULL)
        MHD_add_response_header(resp, "Content-Type", ctype);
    MHD_add_response_header(resp, "X-Request-Id", req->id);
    for (struct resp_header *h = req->headers; h != NULL; h = h->next)
        MHD_add_response_header(resp, h->name, h->value);
}

static void watch_unqueue(struct svc_req *req)
{
    struct loop_shard *sh = req->slot->shard;

    if (!req->watch_queued)
        return;
    req->watch_queued = 0;
    if (req->wprev != NULL)
        req->wprev->wnext = req->wnext;
    else
        sh->watch_head = req->wnext;
    if (req->wnext != NULL)
        req->wnext->wprev = req->wprev;
    else
        sh->watch_tail = req->wprev;
    req->wprev = req->wnext = NULL;
}

static void watch_stop(struct svc_req *req)
{
    watch_unqueue(req);
    svc_io_del(&req->watch);
}

/* Resumes a suspended connection so MHD calls us again (to queue a reply, feed the stream or
 * notice an abort). Only ever called on the request's loop. */
static void req_resume(struct svc_req *req)
{
    if (req->suspended) {
        req->suspended = 0;
        MHD_resume_connection(req->conn);
        /* In external-epoll mode MHD does not wake itself up for a resume: run it on the next
         * loop iteration. */
        if (req->slot->timer != NULL && svc_timer_start(req->slot->timer, 0) != SVC_OK)
            SVC_LOG_ERR(req->id, "http", "cannot schedule the daemon after a resume");
    }
}

static int req_set_pending(struct svc_req *req, unsigned status, struct MHD_Response *resp)
{
    req->pending = resp;
    req->pending_status = status;
    req->replied = 1;
    if (!req->in_handler)
        req_resume(req);
    return SVC_OK;
}

int svc_req_reply(struct svc_req *req, int status, const char *content_type, const void *body,
                  size_t len)
{
    struct MHD_Response *resp;

    if (req->replied || req->aborted)
        return SVC_ECANCELED;
    resp = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (resp == NULL)
        return SVC_ENOMEM;
    add_headers(req, resp, content_type);
    return req_set_pending(req, (unsigned)status, resp);
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

int svc_req_error(struct svc_req *req, int status, const char *message)
{
    enum svc_http_style style = req->route != NULL ? req->route->style
                                                   : req->slot->srv->opts.default_style;

    switch (style) {
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

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct svc_req *req = cls;
    size_t avail = req->out.len - req->out_off;

    (void)pos;
    if (req->aborted)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    if (avail > 0) {
        size_t n = avail < max ? avail : max;
        memcpy(buf, req->out.data + req->out_off, n);
        req->out_off += n;
        atomic_fetch_sub_explicit(&stream_queued, n, memory_order_relaxed);
        if (req->out_off == req->out.len) {
            svc_buf_reset(&req->out);
            req->out_off = 0;
        }
        /* The producer may append from here (a resumed upstream delivers at once): buf is
         * already filled, so that is safe. */
        if (req->drain_fn != NULL && avail > req->drain_low && avail - n <= req->drain_low)
            req->drain_fn(req->drain_data, req);
        return (ssize_t)n;
    }
    if (req->stream_ended) {
        req->finished = 1;
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
    /* Nothing to send yet: park the connection until the producer writes (no busy loop). */
    MHD_suspend_connection(req->conn);
    req->suspended = 1;
    return 0;
}

int svc_req_stream_start(struct svc_req *req, int status, const char *content_type)
{
    struct MHD_Response *resp;

    if (req->replied || req->aborted)
        return SVC_ECANCELED;
    if (req->slot->loop == NULL)
        return SVC_EINVAL;
    resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, stream_reader, req,
                                             NULL);
    if (resp == NULL)
        return SVC_ENOMEM;
    add_headers(req, resp, content_type);
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    req->streaming = 1;
    return req_set_pending(req, (unsigned)status, resp);
}

int svc_req_stream_write(struct svc_req *req, const void *data, size_t len)
{
    int rc;

    if (req->aborted || req->stream_ended || !req->streaming)
        return SVC_ECANCELED;
    /* Drop what the client already took once it is half the buffer (or in the way), so the
     * limit applies to bytes still waiting, at an amortised O(1) copy per byte. */
    if (req->out_off > 0 &&
        (req->out_off * 2 >= req->out.len || req->out.len + len > req->out.max)) {
        svc_buf_consume(&req->out, req->out_off);
        req->out_off = 0;
    }
    rc = svc_buf_append(&req->out, data, len);
    if (rc != SVC_OK)
        return rc;
    if (atomic_fetch_add_explicit(&stream_queued, len, memory_order_relaxed) + len >=
            TRIM_QUEUED_BELOW &&
        !atomic_load_explicit(&trim_due, memory_order_relaxed))
        atomic_store_explicit(&trim_due, 1, memory_order_relaxed);
    if (req->pending == NULL)
        req_resume(req);
    return SVC_OK;
}

int svc_req_stream_end(struct svc_req *req)
{
    if (req->aborted || req->stream_ended || !req->streaming)
        return SVC_ECANCELED;
    req->stream_ended = 1;
    if (req->pending == NULL)
        req_resume(req);
    return SVC_OK;
}

size_t svc_req_stream_pending(const struct svc_req *req)
{
    return req->out.len - req->out_off;
}

/* ---- client-gone detection while a request is async ---- */

static void req_abort(struct svc_req *req)
{
    if (req->aborted || req->finished)
        return;
    req->aborted = 1;
    if (req->abort_fn != NULL)
        req->abort_fn(req->abort_data, req);
}

static void on_client_hangup(void *data, struct svc_io *io, int fd, uint32_t events)
{
    struct svc_req *req = data;

    (void)io;
    (void)fd;
    (void)events;
    watch_stop(req);
    SVC_LOG_DEBUG(req->id, "http", "client closed the connection while the reply was pending");
    req_abort(req);
    req_resume(req); /* let MHD see the closed socket and finish the request */
}

/* Watches the client socket now. */
static void watch_arm(struct svc_req *req)
{
    const union MHD_ConnectionInfo *ci;

    if (req->watch != NULL)
        return;
    ci = MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci == NULL)
        return;
    if (svc_io_add(&req->watch, req->slot->loop, ci->connect_fd, EPOLLRDHUP, on_client_hangup,
                   req) != SVC_OK)
        req->watch = NULL; /* not watched: a client that leaves is seen when MHD writes */
}

/* Arms the watch of every queued request that has waited WATCH_DELAY_MS, then the timer for the
 * next. The queue is in due order, so this looks only at the requests it arms. */
static void on_watch_due(void *data, struct svc_timer *t)
{
    struct loop_shard *sh = data;
    uint64_t now = svc_loop_now(sh->loop);

    (void)t;
    while (sh->watch_head != NULL && sh->watch_head->watch_due_ms <= now) {
        struct svc_req *req = sh->watch_head;
        watch_unqueue(req);
        watch_arm(req);
    }
    if (sh->watch_head != NULL &&
        svc_timer_start(sh->watch_timer, sh->watch_head->watch_due_ms - now) != SVC_OK)
        SVC_LOG_ERR(NULL, "http", "cannot schedule the client watches");
}

/* The request waits: its client socket is watched from WATCH_DELAY_MS on (LOOPS mode only). */
static void watch_start(struct svc_req *req)
{
    struct loop_shard *sh = req->slot->shard;

    if (req->watch != NULL || req->watch_queued || sh == NULL)
        return;
    req->watch_due_ms = svc_loop_now(sh->loop) + WATCH_DELAY_MS;
    req->watch_queued = 1;
    req->wnext = NULL;
    req->wprev = sh->watch_tail;
    if (sh->watch_tail != NULL)
        sh->watch_tail->wnext = req;
    else
        sh->watch_head = req;
    sh->watch_tail = req;
    /* A non-empty queue has its timer armed for its head already. */
    if (sh->watch_head == req && svc_timer_start(sh->watch_timer, WATCH_DELAY_MS) != SVC_OK) {
        watch_unqueue(req);
        watch_arm(req);
    }
}

/* ---- MHD callbacks ---- */

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

static enum MHD_Result copy_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    (void)kind;
    return MHD_add_response_header(cls, key, value);
}

/*
 * A stream that ended before its head went out (the upstream answered everything at once) is
 * sent as one response of known length: libmicrohttpd sends a callback response's head, each
 * chunk and the last chunk in three system calls, a buffer response in one. The client sees the
 * same bytes, without the chunked framing. Returns the response to queue (resp when it stays).
 */
static struct MHD_Response *stream_whole(struct svc_req *req, struct MHD_Response *resp)
{
    size_t n = req->out.len - req->out_off;
    struct MHD_Response *whole;

    if (!req->streaming || !req->stream_ended || req->aborted)
        return resp;
    whole = MHD_create_response_from_buffer(n, req->out.data != NULL ? req->out.data + req->out_off
                                                                      : (char *)"",
                                            MHD_RESPMEM_MUST_COPY);
    if (whole == NULL)
        return resp; /* sent as a stream, as it was going to be */
    MHD_get_response_headers(resp, copy_header, whole);
    MHD_destroy_response(resp);
    atomic_fetch_sub_explicit(&stream_queued, n, memory_order_relaxed);
    svc_buf_reset(&req->out);
    req->out_off = 0;
    req->finished = 1;
    return whole;
}

static enum MHD_Result queue_pending(struct svc_req *req)
{
    struct MHD_Response *resp = stream_whole(req, req->pending);
    enum MHD_Result r;

    req->pending = NULL;
    /* Draining: the client (the ingress) must not send another request on this connection. A
     * keep-alive connection left open would take one that nobody answers once we exit. */
    if (atomic_load_explicit(&req->slot->srv->quiesced, memory_order_relaxed) &&
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close") != MHD_YES)
        SVC_LOG_WARN(req->id, "http", "cannot mark the reply Connection: close");
    r = MHD_queue_response(req->conn, req->pending_status, resp);
    MHD_destroy_response(resp);
    if (!req->streaming)
        req->finished = 1;
    return r;
}

/*
 * libmicrohttpd 0.9.75 keeps every query argument in the connection's memory pool
 * (HTTP_MAX_HEADER bytes), and a query of a few hundred short arguments (`?&&&...`) exhausts it:
 * the request is then never answered (the connection hangs, or closes without a reply). This runs
 * with the request's URI before MHD splits its query (MHD_OPTION_URI_LOG_CALLBACK): a query of
 * more than query_args_max() arguments (one per 256 bytes of pool: an argument costs MHD about 60)
 * is blanked in MHD's own copy of the request line, so MHD parses none of it, and the request is
 * marked to be answered 414. test_http checks both halves.
 */
static char query_too_big_mark; /* its address is the mark */

static unsigned query_args_max(const struct svc_http_server *srv)
{
    return srv->opts.max_header / 256 > 16 ? (unsigned)(srv->opts.max_header / 256) : 16;
}

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    const unsigned max = query_args_max(cls);
    char *q = strchr(uri, '?');
    unsigned n = 1;

    (void)conn;
    if (q == NULL)
        return NULL;
    for (const char *p = q; *p != '\0' && n <= max; p++)
        n += *p == '&';
    if (n <= max)
        return NULL;
    memset(q, '\0', strlen(q));
    return &query_too_big_mark;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls)
{
    struct daemon_slot *slot = cls;
    struct svc_http_server *srv = slot->srv;
    struct svc_req *req = *con_cls;
    const struct svc_http_route *path_route;
    int rc;

    (void)version;
    if (req == NULL || req == (void *)&query_too_big_mark) {
        const char *cl;
        int64_t clen;
        int query_too_big = req != NULL;

        req = calloc(1, sizeof(*req));
        if (req == NULL)
            return MHD_NO;
        req->query_too_big = query_too_big;
        req->slot = slot;
        req->conn = conn;
        req->method = method;
        req->url = url;
        svc_buf_init(&req->body, srv->opts.max_body);
        svc_buf_init(&req->out, SVC_HTTP_STREAM_MAX_PENDING);
        req_fill_identity(req);
        cl = svc_req_header(req, "Content-Length");
        if (cl != NULL && (svc_cfg_parse_int(cl, 0, INT64_MAX, &clen) != SVC_OK ||
                           (uint64_t)clen > srv->opts.max_body))
            req->body_too_big = 1;
        *con_cls = req;
        if (slot->loop != NULL) { /* one thread per daemon: no lock */
            req->lnext = slot->live;
            if (slot->live != NULL)
                slot->live->lprev = req;
            slot->live = req;
        }
        atomic_fetch_add(&srv->inflight, 1);
        atomic_fetch_add_explicit(&srv->started, 1, memory_order_relaxed);
        return MHD_YES;
    }
    if (*upload_size > 0) {
        if (!req->body_too_big && svc_buf_append(&req->body, upload_data, *upload_size) != SVC_OK)
            req->body_too_big = 1;
        *upload_size = 0;
        return MHD_YES;
    }
    if (req->pending != NULL)
        return queue_pending(req);
    if (req->handled) /* resumed to notice an abort, with nothing to send */
        return req->aborted ? MHD_NO : MHD_YES;

    req->handled = 1;
    req->route = route_find(srv, method, url, &path_route);
    if (req->query_too_big) {
        char msg[96];
        snprintf(msg, sizeof(msg), "the query has more than %u arguments", query_args_max(srv));
        svc_req_error(req, 414, msg);
    } else if (req->body_too_big) {
        char msg[96];
        snprintf(msg, sizeof(msg), "request body larger than %zu bytes", srv->opts.max_body);
        svc_req_error(req, 413, msg);
    } else if (req->route == NULL) {
        req->route = path_route; /* for its error style only; never run */
        svc_req_error(req, path_route != NULL ? 405 : 404,
                      path_route != NULL ? "method not allowed" : "404 page not found");
        req->route = NULL;
    } else if (req->route->same_origin && cross_origin(req)) {
        SVC_LOG_NOTICE(req->id, "http", "cross-site %s %s refused (Origin %s)", method, url,
                       svc_req_header(req, "Origin"));
        svc_req_error(req, 403, "cross-site request refused");
    } else {
        req->in_handler = 1;
        rc = req->route->fn(req->route->ctx, req);
        req->in_handler = 0;
        if (req->pending == NULL && !req->replied) {
            if (rc == SVC_HTTP_ASYNC && slot->loop != NULL) {
                MHD_suspend_connection(conn);
                req->suspended = 1;
                watch_start(req);
                return MHD_YES;
            }
            SVC_LOG_ERR(req->id, "http", "handler for %s %s gave no reply", method, url);
            svc_req_error(req, 500, "internal error");
        }
    }
    if (req->streaming)
        watch_start(req);
    return queue_pending(req);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct daemon_slot *slot = cls;
    struct svc_req *req = *con_cls;

    (void)conn;
    if (req == NULL || req == (void *)&query_too_big_mark) /* never reached on_request */
        return;
    *con_cls = NULL;
    if (slot->loop != NULL) {
        if (req->lprev != NULL)
            req->lprev->lnext = req->lnext;
        else
            slot->live = req->lnext;
        if (req->lnext != NULL)
            req->lnext->lprev = req->lprev;
    }
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        req_abort(req);
    else
        req->finished = 1;
    watch_stop(req);
    if (req->cleanup_fn != NULL)
        req->cleanup_fn(req->cleanup_data);
    if (req->pending != NULL)
        MHD_destroy_response(req->pending);
    while (req->headers != NULL) {
        struct resp_header *h = req->headers;
        req->headers = h->next;
        free(h);
    }
    svc_buf_deinit(&req->body);
    /* what a client never took is no longer queued */
    atomic_fetch_sub_explicit(&stream_queued, req->out.len - req->out_off, memory_order_relaxed);
    svc_buf_deinit(&req->out);
    if (req->streaming && svc_http_queued() < TRIM_QUEUED_BELOW &&
        atomic_load_explicit(&trim_due, memory_order_relaxed) && svc_util_heap_trim())
        atomic_store_explicit(&trim_due, 0, memory_order_relaxed);
    free(req);
    atomic_fetch_sub(&slot->srv->inflight, 1);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];

    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    SVC_LOG_DEBUG(NULL, "http", "libmicrohttpd: %s", msg);
}

/* ---- driving an MHD daemon from our loop (LOOPS mode) ---- */

static void slot_run(struct daemon_slot *slot)
{
    MHD_UNSIGNED_LONG_LONG ms;

    MHD_run(slot->d);
    if (MHD_get_timeout(slot->d, &ms) == MHD_YES) {
        if (svc_timer_start(slot->timer, ms) != SVC_OK)
            SVC_LOG_ERR(NULL, "http", "cannot arm the connection timer");
    } else {
        svc_timer_stop(slot->timer);
    }
}

static void on_slot_io(void *data, struct svc_io *io, int fd, uint32_t events)
{
    (void)io;
    (void)fd;
    (void)events;
    slot_run(data);
}

static void on_slot_timer(void *data, struct svc_timer *t)
{
    (void)t;
    slot_run(data);
}

/* MHD_OPTION_NOTIFY_CONNECTION (LOOPS mode): counts the connections of each daemon. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    struct daemon_slot *slot = cls;

    (void)conn;
    (void)socket_context;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        slot->conns++;
        atomic_fetch_add(&slot->srv->conns, 1);
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        slot->conns--;
        atomic_fetch_sub(&slot->srv->conns, 1);
    }
}

static struct MHD_Daemon *start_daemon(struct daemon_slot *slot, unsigned flags, unsigned threads);

static void slot_free(struct daemon_slot **slotp)
{
    struct daemon_slot *slot = *slotp;

    if (slot == NULL)
        return;
    if (slot->d != NULL) {
        /* A daemon with the listening socket gives it back first: it is closed once, by us. */
        if (slot->shard == NULL)
            MHD_quiesce_daemon(slot->d);
        /* libmicrohttpd 0.9.75 aborts the process when stopped with a suspended connection
         * (requests still in flight at the drain deadline, streams between two chunks): resumed,
         * they are closed like the others and their requests complete as aborted. The loop no
         * longer runs, so nothing else touches them. */
        for (struct svc_req *req = slot->live; req != NULL; req = req->lnext)
            if (req->suspended) {
                req->suspended = 0;
                MHD_resume_connection(req->conn);
            }
        MHD_stop_daemon(slot->d);
    }
    svc_io_del(&slot->io);
    svc_timer_destroy(&slot->timer);
    free(slot);
    *slotp = NULL;
}

/* Starts one more daemon in a loop; NULL when it cannot (the caller uses the others). */
static struct daemon_slot *shard_grow(struct loop_shard *sh)
{
    struct daemon_slot *slot;
    const union MHD_DaemonInfo *di;

    if (sh->nslots == sh->capslots) {
        unsigned cap = sh->capslots ? sh->capslots * 2 : 8;
        struct daemon_slot **v = realloc(sh->slots, cap * sizeof(*v));
        if (v == NULL)
            return NULL;
        sh->slots = v;
        sh->capslots = cap;
    }
    slot = calloc(1, sizeof(*slot));
    if (slot == NULL)
        return NULL;
    slot->srv = sh->srv;
    slot->shard = sh;
    slot->loop = sh->loop;
    slot->d =
        start_daemon(slot, MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_NO_LISTEN_SOCKET, 1);
    di = slot->d != NULL ? MHD_get_daemon_info(slot->d, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
    if (di != NULL) {
        if (svc_timer_create(&slot->timer, slot->loop, on_slot_timer, slot) == SVC_OK &&
            svc_io_add(&slot->io, slot->loop, di->epoll_fd, EPOLLIN, on_slot_io, slot) != SVC_OK)
            slot->io = NULL;
    }
    if (di == NULL || slot->timer == NULL || slot->io == NULL) {
        slot_free(&slot);
        return NULL;
    }
    sh->slots[sh->nslots++] = slot;
    return slot;
}

/* The daemon a new connection goes to: the least loaded, or a new one when all are full. The
 * scan is over daemons (one per SHARD_CONNS connections), not connections. */
static struct daemon_slot *shard_pick(struct loop_shard *sh)
{
    struct daemon_slot *best = NULL, *grown;

    for (unsigned i = 0; i < sh->nslots; i++)
        if (best == NULL || sh->slots[i]->conns < best->conns)
            best = sh->slots[i];
    if ((best == NULL || best->conns >= SHARD_CONNS) && sh->nslots < SHARD_MAX_DAEMONS &&
        (grown = shard_grow(sh)) != NULL)
        return grown;
    return best;
}

static void on_accept(void *data, struct svc_io *io, int fd, uint32_t events);

static void on_accept_pause(void *data, struct svc_timer *t)
{
    struct loop_shard *sh = data;

    (void)t;
    if (sh->stopped || sh->accept_io != NULL)
        return;
    if (svc_io_add(&sh->accept_io, sh->loop, sh->srv->listen_fd, EPOLLIN | EPOLLEXCLUSIVE,
                   on_accept, sh) != SVC_OK &&
        svc_timer_start(sh->accept_pause, ACCEPT_PAUSE_MS) != SVC_OK)
        SVC_LOG_ERR(NULL, "http", "cannot watch the listening socket again");
}

/* Accepts up to ACCEPT_BATCH connections into this loop's daemons. Returns 1 when the batch was
 * full (more may be waiting), 0 when the backlog is empty or accepting failed. */
static int accept_batch(struct loop_shard *sh)
{
    struct svc_http_server *srv = sh->srv;

    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        struct daemon_slot *slot;
        int cfd =
            accept4(srv->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (cfd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                SVC_LOG_WARN(NULL, "http", "cannot accept a connection (%s): pausing for %d ms",
                             strerror(errno), ACCEPT_PAUSE_MS);
                svc_io_del(&sh->accept_io);
                if (svc_timer_start(sh->accept_pause, ACCEPT_PAUSE_MS) != SVC_OK)
                    SVC_LOG_ERR(NULL, "http", "cannot schedule accepting again");
            }
            return 0; /* EAGAIN: another loop took it */
        }
        if (atomic_load(&srv->conns) >= (long)srv->opts.max_connections ||
            (slot = shard_pick(sh)) == NULL) {
            SVC_LOG_WARN(NULL, "http", "connection refused: %ld open (HTTP_MAX_CONNECTIONS %u)",
                         atomic_load(&srv->conns), srv->opts.max_connections);
            close(cfd);
            continue;
        }
        /* MHD closes the socket itself when it cannot take it. */
        if (MHD_add_connection(slot->d, cfd, (struct sockaddr *)&ss, sl) != MHD_YES)
            SVC_LOG_WARN(NULL, "http", "the HTTP daemon refused a connection: %s", strerror(errno));
        else if (svc_timer_start(slot->timer, 0) != SVC_OK)
            SVC_LOG_ERR(NULL, "http", "cannot schedule the daemon for a new connection");
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

static struct MHD_Daemon *start_daemon(struct daemon_slot *slot, unsigned flags, unsigned threads)
{
    struct svc_http_server *srv = slot->srv;
    const struct svc_http_opts *o = &srv->opts;
    struct MHD_OptionItem ops[] = {
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, slot},
        {slot->shard != NULL ? MHD_OPTION_NOTIFY_CONNECTION : MHD_OPTION_LISTEN_SOCKET,
         slot->shard != NULL ? (intptr_t)on_connection : srv->listen_fd,
         slot->shard != NULL ? slot : NULL},
        {MHD_OPTION_URI_LOG_CALLBACK, (intptr_t)on_uri, srv},
        {MHD_OPTION_CONNECTION_TIMEOUT, o->idle_timeout, NULL},
        {MHD_OPTION_CONNECTION_LIMIT, o->max_connections, NULL},
        {MHD_OPTION_CONNECTION_MEMORY_LIMIT, o->max_header, NULL},
        {threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, threads, NULL},
        {MHD_OPTION_END, 0, NULL},
    };

    /* The logger must be the very first option, or MHD logs a complaint with its own logger. */
    return MHD_start_daemon(flags | MHD_USE_ERROR_LOG, 0, NULL, NULL, on_request, slot,
                            MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL, MHD_OPTION_ARRAY, ops,
                            MHD_OPTION_END);
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
        srv->opts.max_header = 16 * 1024; /* also MHD's per-connection pool: resident per stream */
    if (srv->opts.idle_timeout == 0)
        srv->opts.idle_timeout = 60;
    if (srv->opts.max_connections == 0)
        srv->opts.max_connections = 20000;
    srv->routes = routes;
    srv->nroutes = nroutes;
    srv->listen_fd = -1;
    rc = listen_on(opts->addr, &srv->listen_fd, &srv->port, err, errlen);
    if (rc != SVC_OK)
        goto fail;

    if (opts->mode == SVC_HTTP_POOL) {
        srv->pool_slot = calloc(1, sizeof(*srv->pool_slot));
        if (srv->pool_slot == NULL) {
            rc = SVC_ENOMEM;
            goto fail;
        }
        srv->pool_slot->srv = srv;
        /* poll(), not epoll: MHD 0.9.75's MHD_quiesce_daemon() races its own epoll workers for
         * the listening socket (both remove it from the epoll set; the loser aborts the process
         * with "Failed to remove listen FD from epoll set"). With poll() quiescing goes through
         * the ITC and there is no set to race for. These daemons serve few, long-lived
         * connections (admin, auth, billing), where poll() costs nothing measurable. */
        srv->pool_slot->d = start_daemon(srv->pool_slot, MHD_USE_POLL_INTERNAL_THREAD | MHD_USE_ITC,
                                         opts->threads ? opts->threads : 2);
        if (srv->pool_slot->d == NULL) {
            snprintf(err, errlen, "cannot start the HTTP daemon on %s", opts->addr);
            rc = SVC_EIO;
            goto fail;
        }
        *out = srv;
        return SVC_OK;
    }
    srv->shards = calloc(opts->nloops, sizeof(*srv->shards));
    if (srv->shards == NULL) {
        rc = SVC_ENOMEM;
        goto fail;
    }
    srv->nshards = opts->nloops;
    for (unsigned i = 0; i < srv->nshards; i++) {
        struct loop_shard *sh = &srv->shards[i];
        sh->srv = srv;
        sh->loop = opts->loops[i];
        /* Every loop accepts; EPOLLEXCLUSIVE wakes one of them per new connection. The first
         * daemon is started here so that a daemon that cannot start fails the start. */
        if (svc_timer_create(&sh->accept_pause, sh->loop, on_accept_pause, sh) != SVC_OK ||
            svc_timer_create(&sh->watch_timer, sh->loop, on_watch_due, sh) != SVC_OK ||
            shard_grow(sh) == NULL ||
            svc_io_add(&sh->accept_io, sh->loop, srv->listen_fd, EPOLLIN | EPOLLEXCLUSIVE,
                       on_accept, sh) != SVC_OK) {
            snprintf(err, errlen, "cannot start the HTTP daemon on %s", opts->addr);
            rc = SVC_EIO;
            goto fail;
        }
    }
    *out = srv;
    return SVC_OK;
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
    const union MHD_DaemonInfo *di;

    if (srv->pool_slot == NULL)
        return atomic_load(&srv->conns);
    di = MHD_get_daemon_info(srv->pool_slot->d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    return di != NULL ? (long)di->num_connections : -1;
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
static void quiesce_shard(void *data, struct svc_loop *loop)
{
    struct loop_shard *sh = data;

    (void)loop;
    sh->stopped = 1;
    svc_timer_stop(sh->accept_pause);
    svc_io_del(&sh->accept_io);
    if (!atomic_exchange(&sh->srv->listener_shut, 1)) {
        while (accept_batch(sh))
            ;
        shut_listener(sh->srv);
    }
}

/* POOL mode: MHD no longer accepts (quiesced); the backlog goes to it by hand. */
static void quiesce_pool(struct svc_http_server *srv)
{
    struct MHD_Daemon *d = srv->pool_slot->d;

    MHD_quiesce_daemon(d);
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int cfd =
            accept4(srv->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (cfd < 0)
            break;
        if (MHD_add_connection(d, cfd, (struct sockaddr *)&ss, sl) != MHD_YES)
            SVC_LOG_WARN(NULL, "http", "the HTTP daemon refused a connection: %s", strerror(errno));
    }
    atomic_store(&srv->listener_shut, 1);
    shut_listener(srv);
}

/* Ends every request of one loop as if its client had left (on that loop's thread). */
static void abort_shard(void *data, struct svc_loop *loop)
{
    struct loop_shard *sh = data;

    (void)loop;
    for (unsigned i = 0; i < sh->nslots; i++)
        for (struct svc_req *req = sh->slots[i]->live; req != NULL; req = req->lnext) {
            watch_stop(req);
            req_abort(req);
            req_resume(req); /* MHD ends it: the stream reader and on_request see it aborted */
        }
}

void svc_http_server_abort_all(struct svc_http_server *srv)
{
    for (unsigned i = 0; i < srv->nshards; i++)
        if (svc_loop_post(srv->shards[i].loop, abort_shard, &srv->shards[i]) != SVC_OK)
            SVC_LOG_ERR(NULL, "http", "cannot end the requests of loop %u", i);
}

void svc_http_server_quiesce(struct svc_http_server *srv)
{
    if (atomic_exchange(&srv->quiesced, 1))
        return;
    if (srv->pool_slot != NULL && srv->pool_slot->d != NULL)
        quiesce_pool(srv);
    for (unsigned i = 0; i < srv->nshards; i++)
        if (svc_loop_post(srv->shards[i].loop, quiesce_shard, &srv->shards[i]) != SVC_OK)
            SVC_LOG_ERR(NULL, "http", "cannot stop accepting on loop %u", i);
}

void svc_http_server_destroy(struct svc_http_server **srvp)
{
    struct svc_http_server *srv = srvp != NULL ? *srvp : NULL;

    if (srv == NULL)
        return;
    slot_free(&srv->pool_slot);
    for (unsigned i = 0; srv->shards != NULL && i < srv->nshards; i++) {
        struct loop_shard *sh = &srv->shards[i];
        svc_io_del(&sh->accept_io);
        svc_timer_destroy(&sh->accept_pause);
        svc_timer_destroy(&sh->watch_timer);
        for (unsigned j = 0; j < sh->nslots; j++)
            slot_free(&sh->slots[j]);
        free(sh->slots);
    }
    free(srv->shards);
    if (srv->listen_fd >= 0)
        close(srv->listen_fd);
    free(srv);
    *srvp = NULL;
}
