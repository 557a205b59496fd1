/*
 * The HTTP/2 client of svc_fetch (common/fetch_h2.c), through the public API only (svc/fetch.h,
 * svc/loop.h), over h2c with prior knowledge (an http:// URL with SVC_FETCH_HTTP_2_PRIOR). The
 * server is the project's fake OpenAI upstream (tools/fake_upstream, docs/fake-upstream.md) in a
 * process of its own, one per case, with its HTTP/2 front (FAKE_FRONT_LISTEN, cleartext: h2c with
 * prior knowledge): the cases send chat completions to the front and read, from the fake's plain
 * port over HTTP/1.1 (svc_fetch on a multi of its own), what the front counted (GET /_fake/stats:
 * connections, streams, streams reset, streams refused, the most streams open at once on one
 * connection) and the requests it recorded (GET /_fake/requests). Its path comes from
 * tests/CMakeLists.txt (FAKE_UPSTREAM_BIN).
 *
 * Covered: 1. multiplexing: 20 buffered requests at once over one connection, all 20 streams
 * open at once, each answer its own; 2. stream mode and svc_fetch_headers_each; 3. pause and
 * resume: the paused stream's bytes come again after the resume, none lost or repeated, while
 * paused the server sends no more than one stream window (flow control), and a second stream on
 * the same connection completes meanwhile; 4. a stream that cancels itself inside on_data resets
 * only itself; 5. the errors: idle_timeout_ms, max_response, a port with nothing listening;
 * 6. a GOAWAY that refuses the streams that had not started: they are sent again, and all 8
 * complete; 7. svc_fetch_multi_destroy with streams in flight; 8. the server's
 * SETTINGS_MAX_CONCURRENT_STREAMS (5): 12 streams over 3 connections, none refused.
 *
 * Each case waits for events with a hang guard (WAIT_MS), never for a fixed time that a slow
 * machine could miss: no case asserts an upper bound on time. A wait of fixed length (run_for)
 * only lets a wrong event show; the checks hold whether it did or not.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "svc/err.h"
#include "svc/fetch.h"
#include "svc/json.h"
#include "svc/loop.h"
#include "test.h"
#include "loop_wait.h"

#ifndef FAKE_UPSTREAM_BIN
#error "FAKE_UPSTREAM_BIN: the path of chatweb-fake-upstream (tests/CMakeLists.txt)"
#endif

/* How long a case waits for what it expects before it fails: a guard against hangs only. */
#define WAIT_MS 10000

extern char **environ;

static struct svc_fetch_multi *multi;     /* the cases' transfers (HTTP/2) */
static struct svc_fetch_multi *ctl_multi; /* the fake's /_fake/ endpoints (HTTP/1.1) */

/* --- the fake upstream, in a process of its own ---------------------------------------------- */

static pid_t fake_pid = -1;
static int fake_out = -1; /* the read end of its stdout */
static int fake_port;     /* the plain port: /_fake/... */
static int front_port;    /* the HTTP/2 front */

/* Stops the fake (SIGTERM, then waits for it). Also at exit, so a failed case takes it along. */
static void fake_stop(void)
{
    int status;

    if (fake_pid > 0) {
        (void)kill(fake_pid, SIGTERM);
        while (waitpid(fake_pid, &status, 0) < 0 && errno == EINTR)
            ;
        fake_pid = -1;
    }
    if (fake_out >= 0) {
        close(fake_out);
        fake_out = -1;
    }
}

/* The port of "<prefix>PORT" in text once its line is complete, or 0. */
static int port_after(const char *text, const char *prefix)
{
    const char *p = strstr(text, prefix);
    int port = 0;

    if (p == NULL)
        return 0;
    for (p += strlen(prefix); *p >= '0' && *p <= '9'; p++)
        port = port * 10 + (*p - '0');
    return *p == '\n' || *p == ' ' ? port : 0;
}

/*
 * Starts the fake with its front (FAKE_FRONT_LISTEN=127.0.0.1:0, cleartext: h2c) and reads both
 * ports from its stdout: "fake-upstream listening on http://127.0.0.1:PORT", then "... front
 * listening on http://127.0.0.1:PORT2 (...)". max_streams: FAKE_H2_MAX_STREAMS, or NULL for its
 * default (100). Our own FAKE_* variables are not passed on.
 */
static void fake_start(const char *max_streams)
{
    static int registered;
    static char front_env[] = "FAKE_FRONT_LISTEN=127.0.0.1:0";
    static char bin[] = FAKE_UPSTREAM_BIN, listen_opt[] = "--listen", listen_addr[] = "127.0.0.1:0";
    char *argv[] = {bin, listen_opt, listen_addr, NULL};
    char streams_env[64], buf[1024];
    char **envp;
    size_t n = 0, k = 0, have = 0;
    uint64_t deadline;
    pid_t parent = getpid();
    int pfd[2];

    if (!registered) {
        registered = 1;
        T_EQ_INT(atexit(fake_stop), 0);
    }
    while (environ[n] != NULL)
        n++;
    T_ASSERT((envp = calloc(n + 3, sizeof(*envp))) != NULL);
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "FAKE_", 5) != 0)
            envp[k++] = environ[i];
    envp[k++] = front_env;
    if (max_streams != NULL) {
        snprintf(streams_env, sizeof(streams_env), "FAKE_H2_MAX_STREAMS=%s", max_streams);
        envp[k++] = streams_env;
    }
    envp[k] = NULL;
    T_EQ_INT(pipe2(pfd, O_CLOEXEC), 0);
    fake_pid = fork();
    T_ASSERT(fake_pid >= 0);
    if (fake_pid == 0) { /* the child: nothing but async-signal-safe calls until the exec */
        (void)prctl(PR_SET_PDEATHSIG, SIGTERM); /* a test killed by its timeout takes it along */
        if (getppid() != parent || dup2(pfd[1], STDOUT_FILENO) < 0)
            _exit(127);
        execve(bin, argv, envp);
        _exit(127);
    }
    free(envp);
    close(pfd[1]);
    fake_out = pfd[0];
    fake_port = front_port = 0;
    buf[0] = '\0';
    deadline = svc_loop_clock_ms() + WAIT_MS;
    while (fake_port == 0 || front_port == 0) {
        struct pollfd p = {fake_out, POLLIN, 0};
        uint64_t now = svc_loop_clock_ms();
        ssize_t got;
        int rc;

        if (now >= deadline)
            T_FAIL("%s printed no listening lines within %d ms: \"%s\"", bin, WAIT_MS, buf);
        rc = poll(&p, 1, (int)(deadline - now));
        if (rc <= 0)
            continue;
        got = read(fake_out, buf + have, sizeof(buf) - 1 - have);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            T_FAIL("%s exited before its listening lines: \"%s\"", bin, buf);
        have += (size_t)got;
        buf[have] = '\0';
        fake_port = port_after(buf, "fake-upstream listening on http://127.0.0.1:");
        front_port = port_after(buf, "front listening on http://127.0.0.1:");
    }
}

/* One call to the fake's plain port and its answer. */
struct ctl {
    int done, err;
    long status;
    char *body;
    size_t len;
    char errmsg[256];
};

static void ctl_done(void *ctx, int err, struct svc_fetch *f, long status, const char *body,
                     size_t len, const char *errmsg)
{
    struct ctl *c = ctx;

    (void)f;
    c->done = 1;
    c->err = err;
    c->status = status;
    if (errmsg != NULL)
        snprintf(c->errmsg, sizeof(c->errmsg), "%s", errmsg);
    if (body != NULL) {
        T_ASSERT((c->body = malloc(len + 1)) != NULL);
        memcpy(c->body, body, len);
        c->body[len] = '\0';
        c->len = len;
    }
}

static int ctl_ended(void *arg)
{
    return ((struct ctl *)arg)->done;
}

/* method path on the fake's plain port (HTTP/1.1): its JSON answer (the caller destroys it). */
static struct svc_json *fake_call(const char *method, const char *path)
{
    static const struct svc_fetch_callbacks cb = {NULL, ctl_done, NULL};
    struct svc_fetch_req req = {0};
    struct svc_fetch *f = NULL;
    struct ctl c = {0};
    struct svc_json *j;
    char url[128];

    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", fake_port, path);
    req.method = method;
    req.url = url;
    if (strcmp(method, "POST") == 0) {
        req.body = "{}";
        req.body_len = 2;
    }
    T_EQ_INT(svc_fetch_start(&f, ctl_multi, &req, &cb, &c), SVC_OK);
    if (!run_until(ctl_ended, &c, WAIT_MS))
        T_FAIL("%s %s: no answer from the fake", method, path);
    if (c.err != SVC_OK || c.status != 200)
        T_FAIL("%s %s: err %d (%s), status %ld", method, path, c.err, c.errmsg, c.status);
    j = svc_json_parse(c.body, c.len, 0, NULL, 0);
    if (j == NULL)
        T_FAIL("%s %s: not JSON: %s", method, path, c.body);
    free(c.body);
    return j;
}

/* The front's counters (GET /_fake/stats, "front"). They only grow, but each case has a fake of
 * its own, so they count that case's traffic. */
struct front_stats {
    long long connections, open_connections, h2_connections, h2_streams, h2_open_streams,
        h2_max_streams_per_connection, h2_streams_reset, h2_refused_streams, h2_goaways_sent;
};

static long long member_int(const struct svc_json *obj, const char *name)
{
    const struct svc_json *v = svc_json_member(obj, name);

    if (!svc_json_is_integer(v))
        T_FAIL("no integer front.%s in /_fake/stats", name);
    return svc_json_int(v);
}

static struct front_stats stats(void)
{
    struct svc_json *j = fake_call("GET", "/_fake/stats");
    const struct svc_json *fr = svc_json_member(j, "front");
    struct front_stats s;

#define STAT(name) s.name = member_int(fr, #name)
    STAT(connections);
    STAT(open_connections);
    STAT(h2_connections);
    STAT(h2_streams);
    STAT(h2_open_streams);
    STAT(h2_max_streams_per_connection);
    STAT(h2_streams_reset);
    STAT(h2_refused_streams);
    STAT(h2_goaways_sent);
#undef STAT
    svc_json_destroy(&j);
    return s;
}

/* Waits (running the loop) until front.<name> is want. */
static void wait_front(const char *name, long long want)
{
    uint64_t until = svc_loop_clock_ms() + WAIT_MS;

    for (;;) {
        struct svc_json *j = fake_call("GET", "/_fake/stats");
        long long v = member_int(svc_json_member(j, "front"), name);

        svc_json_destroy(&j);
        if (v == want)
            return;
        if (svc_loop_clock_ms() >= until)
            T_FAIL("front.%s is %lld, not %lld", name, v, want);
        run_for(20);
    }
}

/* Waits (running the loop) until the fake has recorded n requests after seq since (seq starts
 * at 1 in a new fake, and /_fake/ calls are not recorded). */
static void wait_requests(long long since, size_t n)
{
    uint64_t until = svc_loop_clock_ms() + WAIT_MS;
    char path[64];

    snprintf(path, sizeof(path), "/_fake/requests?since=%lld", since);
    for (;;) {
        struct svc_json *j = fake_call("GET", path);
        size_t have = svc_json_array_len(svc_json_member(j, "requests"));

        svc_json_destroy(&j);
        if (have >= n)
            return;
        if (svc_loop_clock_ms() >= until)
            T_FAIL("the fake recorded %zu requests, not %zu", have, n);
        run_for(20);
    }
}

/* --- the client ---------------------------------------------------------------------------- */

/* One transfer of a case and everything its callbacks saw. */
struct xfer {
    struct svc_fetch *f;
    int id;
    char url[128];
    char reqbody[512];
    int pause_first;  /* on_data returns SVC_FETCH_PAUSE the first time */
    int cancel_first; /* on_data cancels the transfer the first time */
    int data_calls, done, cancels;
    long data_status;    /* the status the first on_data got */
    int status_mismatch; /* a later on_data got another */
    char *first;         /* the bytes of the first on_data call */
    size_t first_len;
    size_t second_len;       /* the length of the second on_data call */
    int redelivered;         /* the second on_data call began with the first one's bytes */
    char headers[2048];      /* svc_fetch_headers_each in the first on_data */
    char done_headers[2048]; /* ... and in on_done */
    int err;
    long status;
    int body_null; /* on_done's body was NULL */
    char *body;    /* the buffered body, or the stream's bytes put together */
    size_t len, cap;
    char errmsg[256];
    uint64_t started, ended; /* svc_loop_now(): the loop's time, which the deadlines count in */
};

#define NXF 24
static struct xfer xf[NXF];
static int n_done; /* transfers ended (on_done) */

static void body_append(struct xfer *x, const char *data, size_t len)
{
    if (x->len + len + 1 > x->cap) {
        size_t cap = x->cap ? x->cap : 4096;
        while (cap < x->len + len + 1)
            cap *= 2;
        T_ASSERT((x->body = realloc(x->body, cap)) != NULL);
        x->cap = cap;
    }
    memcpy(x->body + x->len, data, len);
    x->len += len;
    x->body[x->len] = '\0';
}

static void add_header(void *ctx, const char *name, const char *value)
{
    char *h = ctx;
    size_t n = strlen(h);

    snprintf(h + n, sizeof(xf[0].headers) - n, "%s: %s\n", name, value);
}

static int on_data(void *ctx, struct svc_fetch *f, long status, const char *data, size_t len)
{
    struct xfer *x = ctx;

    x->data_calls++;
    if (x->data_calls == 1) {
        x->data_status = status;
        svc_fetch_headers_each(f, add_header, x->headers);
        T_ASSERT((x->first = malloc(len ? len : 1)) != NULL);
        memcpy(x->first, data, len);
        x->first_len = len;
    } else {
        x->status_mismatch |= status != x->data_status;
    }
    if (x->data_calls == 2) {
        x->second_len = len;
        x->redelivered = len >= x->first_len && memcmp(data, x->first, x->first_len) == 0;
    }
    if (x->cancel_first && x->data_calls == 1) {
        svc_fetch_cancel(&x->f);
        T_ASSERT(x->f == NULL);
        return 0;
    }
    if (x->pause_first && x->data_calls == 1)
        return SVC_FETCH_PAUSE; /* these bytes are not taken: they must come again */
    body_append(x, data, len);
    return 0;
}

static void on_done(void *ctx, int err, struct svc_fetch *f, long status, const char *body,
                    size_t len, const char *errmsg)
{
    struct xfer *x = ctx;

    x->done++;
    x->ended = svc_loop_now(loop);
    x->err = err;
    x->status = status;
    x->body_null = body == NULL;
    if (body != NULL)
        body_append(x, body, len);
    if (errmsg != NULL)
        snprintf(x->errmsg, sizeof(x->errmsg), "%s", errmsg);
    if (err == SVC_OK)
        svc_fetch_headers_each(f, add_header, x->done_headers);
    x->f = NULL; /* freed after this returns */
    n_done++;
}

static void on_cancel(void *ctx)
{
    struct xfer *x = ctx;
    x->cancels++;
}

static const struct svc_fetch_callbacks callbacks = {on_data, on_done, on_cancel};
static const char *const json_headers[] = {"Content-Type: application/json", NULL};

/* A chat completion to the front over h2c with prior knowledge: one user message, prompt (with
 * its [[fake ...]] directive), streamed or buffered; the other fields 0 (the caller may change
 * them before start()). */
static struct svc_fetch_req chat_req(struct xfer *x, const char *prompt, int stream)
{
    struct svc_fetch_req req = {0};

    snprintf(x->url, sizeof(x->url), "http://127.0.0.1:%d/v1/chat/completions", front_port);
    snprintf(x->reqbody, sizeof(x->reqbody),
             "{\"model\":\"gpt-3.5-turbo\",\"stream\":%s,"
             "\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}",
             stream ? "true" : "false", prompt);
    req.method = "POST";
    req.url = x->url;
    req.headers = json_headers;
    req.body = x->reqbody;
    req.body_len = strlen(x->reqbody);
    req.stream = stream;
    req.http = SVC_FETCH_HTTP_2_PRIOR;
    return req;
}

static void start(struct xfer *x, const struct svc_fetch_req *req)
{
    x->started = svc_loop_now(loop);
    T_EQ_INT(svc_fetch_start(&x->f, multi, req, &callbacks, x), SVC_OK);
    T_ASSERT(x->f != NULL);
}

static void chat(struct xfer *x, const char *prompt, int stream)
{
    struct svc_fetch_req req = chat_req(x, prompt, stream);
    start(x, &req);
}

static int xfer_done(void *arg)
{
    return ((struct xfer *)arg)->done > 0;
}

static int got_data(void *arg)
{
    return ((struct xfer *)arg)->data_calls > 0;
}

static int all_done(void *arg)
{
    return n_done >= *(int *)arg;
}

/* Waits for x's on_done; fails the case on the hang guard. */
static void wait_done(struct xfer *x)
{
    if (!run_until(xfer_done, x, WAIT_MS))
        T_FAIL("transfer %d did not end", x->id);
}

/* Waits for n on_done calls in all. */
static void wait_all(int n)
{
    if (!run_until(all_done, &n, WAIT_MS))
        T_FAIL("%d of %d transfers ended", n_done, n);
}

static void wait_data(struct xfer *x)
{
    if (!run_until(got_data, x, WAIT_MS))
        T_FAIL("transfer %d got no data", x->id);
}

/* x ended with SVC_OK and status 200. */
static void expect_ok(const struct xfer *x)
{
    if (x->err != SVC_OK)
        T_FAIL("transfer %d: err %d (%s)", x->id, x->err, x->errmsg);
    T_EQ_INT(x->done, 1);
    T_EQ_INT(x->cancels, 0);
    T_EQ_INT(x->status, 200);
}

/* x failed with err and said why. */
static void expect_err(const struct xfer *x, int err)
{
    T_EQ_INT(x->done, 1);
    if (x->err != err)
        T_FAIL("transfer %d: err %d (%s), wanted %d", x->id, x->err, x->errmsg, err);
    T_ASSERT(x->errmsg[0] != '\0');
}

/* The assistant's text of a buffered chat answer (malloc'ed). */
static char *buffered_content(const struct xfer *x)
{
    struct svc_json *j = svc_json_parse(x->body, x->len, 0, NULL, 0);
    const struct svc_json *choice = svc_json_array_at(svc_json_member(j, "choices"), 0);
    const struct svc_json *content = svc_json_member(svc_json_member(choice, "message"), "content");
    char *s;

    if (j == NULL || !svc_json_is_string(content))
        T_FAIL("transfer %d: not a chat.completion: %.300s", x->id, x->body ? x->body : "");
    T_EQ_STR(svc_json_str(svc_json_member(j, "object")), "chat.completion");
    T_ASSERT((s = strdup(svc_json_str(content))) != NULL);
    svc_json_destroy(&j);
    return s;
}

/* A stream's bytes read as SSE: "data: ...\n\n" events, the last one "data: [DONE]". */
struct sse {
    int events;    /* [DONE] included */
    int contents;  /* content chunks (one per token): a delta with content and no role */
    int done;      /* the last event was [DONE] */
    int malformed; /* bytes that are not such an event, or JSON that does not parse */
    char *text;    /* the chunks' content put together (malloc'ed) */
};

static struct sse sse_read(const char *b, size_t n)
{
    struct sse s = {0};
    const char *p = b, *end = b + n;
    size_t len = 0;

    T_ASSERT((s.text = malloc(n + 1)) != NULL);
    while (p < end) {
        const char *e = memmem(p, (size_t)(end - p), "\n\n", 2);
        struct svc_json *j;
        const struct svc_json *delta, *content;

        if (s.done || e == NULL || e - p < 6 || memcmp(p, "data: ", 6) != 0) {
            s.malformed++;
            break;
        }
        s.events++;
        if (e - p == 12 && memcmp(p, "data: [DONE]", 12) == 0) {
            s.done = 1;
            p = e + 2;
            continue;
        }
        j = svc_json_parse(p + 6, (size_t)(e - p - 6), 0, NULL, 0);
        delta = svc_json_member(svc_json_array_at(svc_json_member(j, "choices"), 0), "delta");
        content = svc_json_member(delta, "content");
        if (j == NULL || delta == NULL)
            s.malformed++;
        if (svc_json_is_string(content) && svc_json_member(delta, "role") == NULL) {
            s.contents++;
            memcpy(s.text + len, svc_json_str(content), svc_json_strlen(content));
            len += svc_json_strlen(content);
        }
        svc_json_destroy(&j);
        p = e + 2;
    }
    s.text[len] = '\0';
    return s;
}

/* x was a complete stream of tokens tokens: status 200, no body in on_done, a role chunk, the
 * content chunks, a finish chunk and [DONE], nothing else. Returns its text (malloc'ed). */
static char *expect_stream(const struct xfer *x, int tokens)
{
    struct sse s;

    expect_ok(x);
    T_ASSERT(x->body_null);
    T_EQ_INT(x->data_status, 200);
    T_EQ_INT(x->status_mismatch, 0);
    T_ASSERT(x->len >= 14 && memcmp(x->body + x->len - 14, "data: [DONE]\n\n", 14) == 0);
    s = sse_read(x->body, x->len);
    T_EQ_INT(s.malformed, 0);
    T_EQ_INT(s.done, 1);
    T_EQ_INT(s.contents, tokens);
    T_EQ_INT(s.events, tokens + 3);
    return s.text;
}

/* The words of s (the fake's tokens: one word each, separated by single spaces). */
static int words(const char *s)
{
    int n = s[0] != '\0';

    for (; *s != '\0'; s++)
        n += *s == ' ';
    return n;
}

/* Whether headers ("name: value" lines, as add_header wrote them) has the header name (as sent:
 * lower case in HTTP/2) with a value that begins with value. */
static int has_header(const char *headers, const char *name, const char *value)
{
    char line[256];

    snprintf(line, sizeof(line), "%s: %s", name, value);
    for (const char *p = headers; p != NULL && *p != '\0'; p = strchr(p, '\n')) {
        if (*p == '\n')
            p++;
        if (strncmp(p, line, strlen(line)) == 0)
            return 1;
    }
    return 0;
}

/* A fresh fake (max_streams: FAKE_H2_MAX_STREAMS, NULL for its default), loop and multis. */
static void setup(const char *max_streams)
{
    fake_start(max_streams);
    memset(xf, 0, sizeof(xf));
    for (int i = 0; i < NXF; i++)
        xf[i].id = i;
    n_done = 0;
    T_EQ_INT(svc_loop_create(&loop), SVC_OK);
    T_EQ_INT(svc_fetch_multi_create(&multi, loop, 0), SVC_OK);
    T_EQ_INT(svc_fetch_multi_create(&ctl_multi, loop, 0), SVC_OK);
}

static void teardown(void)
{
    svc_fetch_multi_destroy(&multi);
    svc_fetch_multi_destroy(&ctl_multi);
    svc_loop_destroy(&loop);
    fake_stop();
    for (int i = 0; i < NXF; i++) {
        free(xf[i].body);
        free(xf[i].first);
    }
    memset(xf, 0, sizeof(xf));
}

/* --- cases --------------------------------------------------------------------------------- */

/* 1. 20 buffered requests started at once: one connection carries them as 20 streams, all open
 * at once (each answer is held 1 s), and each transfer gets its own answer. */
static void test_multiplex_buffered(void)
{
    struct front_stats s;

    setup(NULL);
    for (int i = 0; i < 20; i++) {
        char prompt[64];
        snprintf(prompt, sizeof(prompt), "r%d [[fake ttft=1000 tokens=5]]", i);
        chat(&xf[i], prompt, 0);
    }
    T_EQ_INT(svc_fetch_multi_active(multi), 20);
    wait_all(20);
    for (int i = 0; i < 20; i++) {
        char want[64], *got;

        expect_ok(&xf[i]);
        T_ASSERT(!xf[i].body_null);
        T_EQ_INT(xf[i].data_calls, 0); /* buffered: no on_data */
        got = buffered_content(&xf[i]);
        snprintf(want, sizeof(want), "Echo(1 msgs): r%d lorem ipsum", i);
        T_EQ_STR(got, want);
        free(got);
    }
    T_EQ_INT(svc_fetch_multi_active(multi), 0);
    s = stats();
    T_EQ_INT(s.connections, 1);
    T_EQ_INT(s.h2_connections, 1);
    T_EQ_INT(s.h2_streams, 20);
    T_EQ_INT(s.h2_max_streams_per_connection, 20);
    T_EQ_INT(s.h2_streams_reset, 0);
    teardown();
}

/* 2. Stream mode: on_data gets the SSE bytes and status 200; svc_fetch_headers_each lists the
 * response's headers in on_data and the same in on_done (content-type text/event-stream); the
 * bytes end with "data: [DONE]"; on_done has no body. */
static void test_stream_headers(void)
{
    struct xfer *x = &xf[0];
    char *text;

    setup(NULL);
    chat(x, "s [[fake tps=200 tokens=20]]", 1);
    wait_done(x);
    text = expect_stream(x, 20);
    T_EQ_INT(words(text), 20);
    T_ASSERT(strncmp(text, "Echo(1 msgs): s lorem ipsum", 27) == 0);
    free(text);
    T_ASSERT(x->data_calls >= 1);
    if (!has_header(x->headers, "content-type", "text/event-stream"))
        T_FAIL("no content-type text/event-stream in:\n%s", x->headers);
    T_ASSERT(has_header(x->headers, "x-fake-request-seq", "1"));
    T_EQ_STR(x->done_headers, x->headers);
    T_EQ_INT(stats().h2_streams, 1);
    teardown();
}

/*
 * 3. Pause and resume: a large fast reply (5000 tokens, about 1.2 MB) whose first on_data pauses
 * it. While paused: no more on_data, and a second stream started on the same connection
 * completes (one paused stream does not stall the connection). After svc_fetch_pause(f, 0): the
 * held bytes come first (the first chunk's again), then the rest, each byte once (the chunks'
 * text is exactly the buffered answer's), [DONE], SVC_OK. The bytes held at the resume are at
 * most one stream window (64 KiB): the server stopped sending while the reader took nothing.
 */
static void test_pause_resume(void)
{
    struct xfer *x = &xf[0];
    struct front_stats s;
    char *want, *text;

    setup(NULL);
    chat(&xf[2], "p [[fake tps=0 tokens=5000]]", 0); /* the same answer, buffered */
    wait_done(&xf[2]);
    expect_ok(&xf[2]);
    want = buffered_content(&xf[2]);
    T_EQ_INT(words(want), 5000);

    x->pause_first = 1;
    chat(x, "p [[fake tps=0 tokens=5000]]", 1);
    wait_data(x);
    T_EQ_INT(x->data_calls, 1);
    chat(&xf[1], "q [[fake tps=0 tokens=2000]]", 1);
    wait_done(&xf[1]);
    text = expect_stream(&xf[1], 2000);
    T_EQ_INT(words(text), 2000);
    free(text);
    run_for(300);
    T_EQ_INT(x->data_calls, 1); /* paused all this while */
    T_EQ_INT(x->done, 0);

    svc_fetch_pause(x->f, 0);
    wait_done(x);
    text = expect_stream(x, 5000);
    T_EQ_STR(text, want);
    free(text);
    free(want);
    T_ASSERT(x->len > 1000000); /* well over one window */
    T_ASSERT(x->data_calls >= 2);
    T_EQ_INT(x->redelivered, 1);
    if (x->second_len > 65535)
        T_FAIL("%zu bytes held while paused: more than the stream's window", x->second_len);
    s = stats();
    T_EQ_INT(s.connections, 1);
    T_EQ_INT(s.h2_streams, 3);
    T_EQ_INT(s.h2_streams_reset, 0);
    T_EQ_INT(svc_fetch_multi_active(multi), 0);
    teardown();
}

/* 4. Of 5 concurrent streams on one connection, one cancels itself in its first on_data: its
 * on_cancel runs, no more callbacks; the other 4 complete; the server sees that one stream
 * reset (RST_STREAM) and no new connection. */
static void test_cancel_in_on_data(void)
{
    struct front_stats s;

    setup(NULL);
    xf[2].cancel_first = 1;
    for (int i = 0; i < 5; i++) {
        char prompt[64];
        snprintf(prompt, sizeof(prompt), "c%d [[fake tps=10 tokens=10]]", i);
        chat(&xf[i], prompt, 1);
    }
    wait_all(4);
    for (int i = 0; i < 5; i++) {
        if (i == 2)
            continue;
        free(expect_stream(&xf[i], 10));
    }
    T_EQ_INT(xf[2].cancels, 1);
    T_EQ_INT(xf[2].done, 0);
    T_EQ_INT(xf[2].data_calls, 1);
    T_ASSERT(xf[2].f == NULL);
    wait_front("h2_streams_reset", 1);
    s = stats();
    T_EQ_INT(s.connections, 1);
    T_EQ_INT(s.h2_streams, 5);
    T_EQ_INT(s.h2_streams_reset, 1);
    T_EQ_INT(xf[2].done, 0);
    T_EQ_INT(svc_fetch_multi_active(multi), 0);
    teardown();
}

/* 5. The errors: no byte for idle_timeout_ms (300 ms, the answer waits 3 s): SVC_ETIMEDOUT and
 * the stream reset; a buffered answer over max_response: SVC_ETOOLARGE, and the connection
 * carries the next request; a port with nothing listening: SVC_EUNAVAIL. */
static void test_errors(void)
{
    struct svc_fetch_req req;
    struct sockaddr_in sa = {0};
    socklen_t sl = sizeof(sa);
    struct front_stats s;
    char *got;
    int fd;

    setup(NULL);
    req = chat_req(&xf[0], "i [[fake ttft=3000 tokens=5]]", 1);
    req.idle_timeout_ms = 300;
    start(&xf[0], &req);
    wait_done(&xf[0]);
    expect_err(&xf[0], SVC_ETIMEDOUT);
    T_EQ_INT(xf[0].data_calls, 0);
    T_ASSERT(xf[0].ended - xf[0].started >= 300); /* not before: a lower bound only */
    wait_front("h2_streams_reset", 1);            /* the server was told */

    req = chat_req(&xf[1], "l [[fake tps=0 tokens=50]]", 0);
    req.max_response = 100;
    start(&xf[1], &req);
    wait_done(&xf[1]);
    expect_err(&xf[1], SVC_ETOOLARGE);

    chat(&xf[2], "n [[fake tokens=5]]", 0);
    wait_done(&xf[2]);
    expect_ok(&xf[2]);
    got = buffered_content(&xf[2]);
    T_EQ_STR(got, "Echo(1 msgs): n lorem ipsum");
    free(got);
    s = stats();
    T_EQ_INT(s.connections, 1);
    T_EQ_INT(s.h2_streams, 3);

    /* a port bound but not listening: the connection is refused */
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    T_ASSERT(fd >= 0);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    T_EQ_INT(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    T_EQ_INT(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    req = chat_req(&xf[3], "u", 1);
    snprintf(xf[3].url, sizeof(xf[3].url), "http://127.0.0.1:%d/v1/chat/completions",
             ntohs(sa.sin_port));
    start(&xf[3], &req);
    wait_done(&xf[3]);
    expect_err(&xf[3], SVC_EUNAVAIL);
    T_EQ_INT(xf[3].data_calls, 0);
    close(fd);
    T_EQ_INT(svc_fetch_multi_active(multi), 0);
    teardown();
}

/*
 * 6. GOAWAY mid-traffic: 4 streams answering (4 tokens/s, 8 tokens) and 4 held before their
 * first byte (ttft 1.5 s), all 8 in flight (the fake recorded them) when the fake sends GOAWAY
 * refusing the streams whose answer had not started (POST /_fake/goaway?refuse=1). The 4
 * answering complete on their connection; the 4 refused are sent again (on a new connection:
 * the old one takes no new stream) and complete too, each answer whole and once.
 */
static void test_goaway_refuse(void)
{
    struct front_stats s;
    struct svc_json *j;

    setup(NULL);
    for (int i = 0; i < 4; i++) {
        char prompt[64];
        snprintf(prompt, sizeof(prompt), "a%d [[fake tps=4 tokens=8]]", i);
        chat(&xf[i], prompt, 1);
    }
    for (int i = 0; i < 4; i++)
        wait_data(&xf[i]); /* their answers have started: their ids are below the GOAWAY's */
    for (int i = 4; i < 8; i++) {
        char prompt[64];
        snprintf(prompt, sizeof(prompt), "w%d [[fake ttft=1500 tokens=5]]", i);
        chat(&xf[i], prompt, 1);
    }
    wait_requests(0, 8);
    j = fake_call("POST", "/_fake/goaway?refuse=1");
    T_ASSERT(svc_json_is_true(svc_json_member(j, "ok")));
    svc_json_destroy(&j);
    wait_all(8);
    for (int i = 0; i < 8; i++)
        free(expect_stream(&xf[i], i < 4 ? 8 : 5));
    s = stats();
    T_EQ_INT(s.h2_goaways_sent, 1);
    T_EQ_INT(s.h2_refused_streams, 4);
    T_EQ_INT(s.h2_streams, 12);
    if (s.connections < 2)
        T_FAIL("the refused streams went again on %lld connection(s) in all", s.connections);
    T_EQ_INT(svc_fetch_multi_active(multi), 0);
    teardown();
}

/* 7. svc_fetch_multi_destroy with streams in flight (3 mid-answer, 1 awaiting its head, 1
 * queued): on_cancel once for each, on_done for none; the connection is closed (the server
 * sees no connection or stream open); no leak (LeakSanitizer in the ASan build). */
static void test_destroy_in_flight(void)
{
    setup(NULL);
    for (int i = 0; i < 3; i++) {
        char prompt[64];
        snprintf(prompt, sizeof(prompt), "d%d [[fake tps=2 tokens=20]]", i);
        chat(&xf[i], prompt, 1);
    }
    chat(&xf[3], "h [[fake ttft=5000 tokens=5]]", 1);
    for (int i = 0; i < 3; i++)
        wait_data(&xf[i]);
    wait_requests(0, 4);
    chat(&xf[4], "q [[fake tokens=5]]", 1); /* queued: the loop has not run since */
    T_EQ_INT(svc_fetch_multi_active(multi), 5);
    svc_fetch_multi_destroy(&multi);
    T_ASSERT(multi == NULL);
    for (int i = 0; i < 5; i++) {
        T_EQ_INT(xf[i].cancels, 1);
        T_EQ_INT(xf[i].done, 0);
    }
    wait_front("open_connections", 0);
    wait_front("h2_open_streams", 0);
    run_for(50);
    T_EQ_INT(n_done, 0);
    for (int i = 0; i < 5; i++)
        T_EQ_INT(xf[i].cancels, 1);
    teardown();
}

/* 8. The server allows 5 streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS): 12 streams
 * at once all complete, none is refused, none goes past 5 on a connection, and they take 3
 * connections (5 + 5 + 2). */
static void test_server_max_streams(void)
{
    struct front_stats s;

    setup("5");
    for (int i = 0; i < 12; i++) {
        char prompt[64];
        snprintf(prompt, sizeof(prompt), "m%d [[fake tps=5 tokens=10]]", i);
        chat(&xf[i], prompt, 1);
    }
    wait_all(12);
    for (int i = 0; i < 12; i++)
        free(expect_stream(&xf[i], 10));
    s = stats();
    T_EQ_INT(s.h2_streams, 12);
    T_EQ_INT(s.h2_refused_streams, 0);
    if (s.h2_max_streams_per_connection > 5)
        T_FAIL("%lld streams open at once on one connection", s.h2_max_streams_per_connection);
    T_EQ_INT(s.connections, 3);
    T_EQ_INT(s.h2_connections, 3);
    teardown();
}

int main(void)
{
    /* the variables would send transfers to libcurl: these cases are about our client */
    T_EQ_INT(unsetenv("CHATWEB_HTTP2_CLIENT"), 0);
    T_EQ_INT(unsetenv("CHATWEB_HTTP1_CLIENT"), 0);
    T_RUN(test_multiplex_buffered);
    T_RUN(test_stream_headers);
    T_RUN(test_pause_resume);
    T_RUN(test_cancel_in_on_data);
    T_RUN(test_errors);
    T_RUN(test_goaway_refuse);
    T_RUN(test_destroy_in_flight);
    T_RUN(test_server_max_streams);
    return 0;
}
