/* fu_record: request and event rings, counters, JSONL log. See fu_record.h. */
#include "fu_record.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fu_http.h"

struct fu_stats fu_stats;

struct rec_entry {
    uint64_t seq;
    char *json; /* one request as compact JSON */
    size_t len;
};

struct ev_entry {
    uint64_t seq;
    double t_ms;
    enum fu_event_type type;
    uint64_t request_seq;
    uint64_t chunks_sent;
};

/* Rings are circular: `head` is the oldest entry, `n` the number held. */
static struct {
    pthread_mutex_t lock;
    struct rec_entry req[FU_RECORD_MAX];
    size_t req_head, req_n, req_bytes;
    uint64_t req_seq;
    struct ev_entry ev[FU_RECORD_MAX];
    size_t ev_head, ev_n;
    uint64_t ev_seq;
    int log_fd;
} rec = {.lock = PTHREAD_MUTEX_INITIALIZER, .log_fd = -1};

int fu_record_setup(const char *log_path)
{
    if (log_path == NULL || log_path[0] == '\0')
        return FU_OK;
    rec.log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (rec.log_fd < 0) {
        fprintf(stderr, "fake-upstream: cannot open FAKE_REQUEST_LOG '%s': %s\n", log_path,
                strerror(errno));
        return FU_EIO;
    }
    return FU_OK;
}

static void drop_oldest_request(void)
{
    struct rec_entry *e = &rec.req[rec.req_head];
    rec.req_bytes -= e->len;
    free(e->json);
    e->json = NULL;
    rec.req_head = (rec.req_head + 1) % FU_RECORD_MAX;
    rec.req_n--;
}

void fu_record_teardown(void)
{
    pthread_mutex_lock(&rec.lock);
    while (rec.req_n > 0)
        drop_oldest_request();
    if (rec.log_fd >= 0)
        close(rec.log_fd);
    rec.log_fd = -1;
    pthread_mutex_unlock(&rec.lock);
}

/* Length of the valid UTF-8 sequence at s[0..n), or 0 if it is not valid. */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f; /* no UTF-16 surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++) {
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    }
    return len;
}

/* A JSON string from arbitrary bytes: invalid UTF-8 becomes U+FFFD, since jansson only accepts
 * valid UTF-8 and a test still wants to see what was sent. Returns a new reference or NULL. */
static json_t *lossy_string(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    if (j || n == 0)
        return j;
    struct fu_buf b;
    fu_buf_init(&b, n * 3 + 1);
    for (size_t i = 0; i < n;) {
        size_t l = utf8_seq_len((const unsigned char *)s + i, n - i);
        int rc = l ? fu_buf_append(&b, s + i, l) : fu_buf_append(&b, "\xef\xbf\xbd", 3);
        if (rc != FU_OK) {
            fu_buf_deinit(&b);
            return NULL;
        }
        i += l ? l : 1;
    }
    j = json_stringn(b.data ? b.data : "", b.len);
    fu_buf_deinit(&b);
    return j;
}

uint64_t fu_record_request(const struct fu_req *req, const struct json_t *body)
{
    json_t *o = NULL, *headers = NULL, *jbody = NULL;
    char *text = NULL, *line = NULL;
    size_t len = 0;
    uint64_t seq;
    double t_ms = fu_wall_ms();

    atomic_fetch_add(&fu_stats.total_requests, 1);
    headers = json_object();
    if (headers == NULL)
        goto insert;
    for (size_t i = 0; i < req->n_headers; i++) {
        const struct fu_header *h = &req->headers[i];
        char name[256];
        if (h->name_len >= sizeof(name))
            continue; /* absurd names are dropped rather than truncated into a wrong name */
        for (size_t k = 0; k < h->name_len; k++) {
            char ch = h->name[k];
            name[k] = ch >= 'A' && ch <= 'Z' ? (char)(ch + 32) : ch;
        }
        name[h->name_len] = '\0';
        json_t *v = lossy_string(h->value, h->value_len);
        if (v == NULL)
            goto insert;
        json_t *prev = json_object_get(headers, name);
        if (prev) {
            /* Repeated header: join the values with ", " as HTTP allows. */
            size_t pl = json_string_length(prev), vl = json_string_length(v);
            struct fu_buf j;
            fu_buf_init(&j, pl + vl + 2);
            int rc = fu_buf_append(&j, json_string_value(prev), pl);
            if (rc == FU_OK)
                rc = fu_buf_append(&j, ", ", 2);
            if (rc == FU_OK)
                rc = fu_buf_append(&j, json_string_value(v), vl);
            json_decref(v);
            v = rc == FU_OK ? json_stringn(j.data, j.len) : NULL;
            fu_buf_deinit(&j);
            if (v == NULL)
                goto insert;
        }
        if (json_object_set_new(headers, name, v) != 0)
            goto insert;
    }
    if (body)
        jbody = json_incref((json_t *)body);
    else if (req->body_len > 0)
        jbody = lossy_string(req->body, req->body_len);
    else
        jbody = json_null();
    if (jbody == NULL)
        goto insert;
    /* "seq" is written in front under the lock below, so that ring order is seq order. */
    o = json_pack("{s:f,s:s%,s:s%,s:O,s:O,s:o}", "t_ms", t_ms, "method", req->method,
                  req->method_len, "path", req->target, req->target_len, "headers", headers, "body",
                  jbody, "raw",
                  req->body_len > 0 ? lossy_string(req->body, req->body_len) : json_null());
    if (o == NULL)
        goto insert;
    text = json_dumps(o, JSON_COMPACT);
    if (text == NULL)
        goto insert;
    len = strlen(text);
    line = malloc(len + 32);

insert:
    pthread_mutex_lock(&rec.lock);
    seq = ++rec.req_seq;
    if (line) {
        int n = snprintf(line, 32, "{\"seq\":%llu,", (unsigned long long)seq);
        memcpy(line + n, text + 1, len); /* text without its '{', plus the NUL */
        len += (size_t)n - 1;
        if (rec.req_n == FU_RECORD_MAX)
            drop_oldest_request();
        while (rec.req_n > 0 && rec.req_bytes + len > FU_RECORD_MAX_BYTES)
            drop_oldest_request();
        struct rec_entry *e = &rec.req[(rec.req_head + rec.req_n) % FU_RECORD_MAX];
        e->seq = seq;
        e->json = line;
        e->len = len;
        rec.req_n++;
        rec.req_bytes += len;
        if (rec.log_fd >= 0) {
            struct iovec iov[2] = {{line, len}, {"\n", 1}};
            /* One writev per line under the lock keeps lines whole in the log. */
            if (writev(rec.log_fd, iov, 2) < 0)
                fprintf(stderr, "fake-upstream: FAKE_REQUEST_LOG write: %s\n", strerror(errno));
        }
        line = NULL; /* now owned by the ring */
    }
    pthread_mutex_unlock(&rec.lock);
    free(text);
    json_decref(o);
    json_decref(headers);
    json_decref(jbody);
    return seq;
}

void fu_record_event(enum fu_event_type type, uint64_t request_seq, uint64_t chunks_sent)
{
    double t_ms = fu_wall_ms();
    pthread_mutex_lock(&rec.lock);
    if (rec.ev_n == FU_RECORD_MAX) {
        rec.ev_head = (rec.ev_head + 1) % FU_RECORD_MAX;
        rec.ev_n--;
    }
    struct ev_entry *e = &rec.ev[(rec.ev_head + rec.ev_n) % FU_RECORD_MAX];
    e->seq = ++rec.ev_seq;
    e->t_ms = t_ms;
    e->type = type;
    e->request_seq = request_seq;
    e->chunks_sent = chunks_sent;
    rec.ev_n++;
    pthread_mutex_unlock(&rec.lock);
}

int fu_record_render_requests(struct fu_buf *out, uint64_t since)
{
    pthread_mutex_lock(&rec.lock);
    int rc = fu_buf_appends(out, "{\"requests\":[");
    bool first = true;
    for (size_t i = 0; rc == FU_OK && i < rec.req_n; i++) {
        const struct rec_entry *e = &rec.req[(rec.req_head + i) % FU_RECORD_MAX];
        if (e->seq <= since)
            continue;
        if (!first)
            rc = fu_buf_append(out, ",", 1);
        if (rc == FU_OK)
            rc = fu_buf_append(out, e->json, e->len);
        first = false;
    }
    pthread_mutex_unlock(&rec.lock);
    if (rc == FU_OK)
        rc = fu_buf_appends(out, "]}\n");
    return rc;
}

static const char *event_name(enum fu_event_type t)
{
    switch (t) {
    case FU_EV_CLIENT_CLOSED: return "client_closed";
    case FU_EV_STREAM_DONE: return "stream_done";
    case FU_EV_STREAM_CUT: return "stream_cut";
    }
    return "unknown";
}

int fu_record_render_events(struct fu_buf *out, uint64_t since)
{
    pthread_mutex_lock(&rec.lock);
    int rc = fu_buf_appends(out, "{\"events\":[");
    bool first = true;
    for (size_t i = 0; rc == FU_OK && i < rec.ev_n; i++) {
        const struct ev_entry *e = &rec.ev[(rec.ev_head + i) % FU_RECORD_MAX];
        if (e->seq <= since)
            continue;
        rc = fu_buf_appendf(out,
                            "%s{\"seq\":%llu,\"t_ms\":%.3f,\"type\":\"%s\",\"request_seq\":%llu,"
                            "\"chunks_sent\":%llu}",
                            first ? "" : ",", (unsigned long long)e->seq, e->t_ms,
                            event_name(e->type), (unsigned long long)e->request_seq,
                            (unsigned long long)e->chunks_sent);
        first = false;
    }
    pthread_mutex_unlock(&rec.lock);
    if (rc == FU_OK)
        rc = fu_buf_appends(out, "]}\n");
    return rc;
}

int fu_record_render_stats(struct fu_buf *out)
{
    pthread_mutex_lock(&rec.lock);
    size_t held = rec.req_n, events = rec.ev_n;
    pthread_mutex_unlock(&rec.lock);
    int rc = fu_buf_appendf(
        out,
        "{\"open_streams\":%ld,\"open_connections\":%ld,\"total_requests\":%llu,"
        "\"total_streams\":%llu,\"total_connections\":%llu,\"recorded_requests\":%zu,"
        "\"recorded_events\":%zu,",
        atomic_load(&fu_stats.open_streams), atomic_load(&fu_stats.open_connections),
        (unsigned long long)atomic_load(&fu_stats.total_requests),
        (unsigned long long)atomic_load(&fu_stats.total_streams),
        (unsigned long long)atomic_load(&fu_stats.total_connections), held, events);
    if (rc != 0)
        return rc;
    return fu_buf_appendf(
        out,
        "\"front\":{\"connections\":%llu,\"open_connections\":%ld,\"h1_connections\":%llu,"
        "\"tls_handshakes\":%llu,\"tls_resumed\":%llu,\"tls_failed_handshakes\":%llu,"
        "\"h2_connections\":%llu,\"h2_streams\":%llu,\"h2_open_streams\":%ld,"
        "\"h2_max_streams_per_connection\":%ld,\"h2_resets_received\":%llu,\"h2_streams_reset\":%llu,"
        "\"h2_refused_streams\":%llu,\"h2_goaways_sent\":%llu,\"h2_connections_dropped\":%llu}}\n",
        (unsigned long long)atomic_load(&fu_stats.front_connections),
        atomic_load(&fu_stats.front_open_connections),
        (unsigned long long)atomic_load(&fu_stats.front_h1_connections),
        (unsigned long long)atomic_load(&fu_stats.tls_handshakes),
        (unsigned long long)atomic_load(&fu_stats.tls_resumed),
        (unsigned long long)atomic_load(&fu_stats.tls_failed_handshakes),
        (unsigned long long)atomic_load(&fu_stats.h2_connections),
        (unsigned long long)atomic_load(&fu_stats.h2_streams),
        atomic_load(&fu_stats.h2_open_streams),
        atomic_load(&fu_stats.h2_max_streams_per_connection),
        (unsigned long long)atomic_load(&fu_stats.h2_resets_received),
        (unsigned long long)atomic_load(&fu_stats.h2_streams_reset),
        (unsigned long long)atomic_load(&fu_stats.h2_refused_streams),
        (unsigned long long)atomic_load(&fu_stats.h2_goaways_sent),
        (unsigned long long)atomic_load(&fu_stats.h2_connections_dropped));
}

void fu_record_reset(void)
{
    pthread_mutex_lock(&rec.lock);
    while (rec.req_n > 0)
        drop_oldest_request();
    rec.req_head = 0;
    rec.ev_head = 0;
    rec.ev_n = 0;
    pthread_mutex_unlock(&rec.lock);
}
