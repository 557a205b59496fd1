/*
 * The metered pipeline (meter.h): admission, the upstream stream with backpressure, usage, and
 * the one end of the hold.
 *
 * A meter is freed by itself, once the caller detached and nothing it started is still in
 * flight (a token admission, a Reserve, the upstream transfer); every path out of it goes
 * through meter_end_hold(), which decides the charge once.
 */
#include "meter.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "billing/client.h"
#include "billing/lease.h"
#include "meter/event.h"
#include "svc/buf.h"
#include "svc/fetch.h"
#include "svc/http.h"
#include "svc/log.h"
#include "svc/loop.h"
#include "svc/redis.h"
#include "svc/rpc.h"
#include "svc/sse.h"
#include "svc/tokenizer.h"
#include "svc/util.h"

#define REPLY_MAX (4u << 20)     /* bytes of reply text kept */
#define SSE_EVENT_MAX (1u << 20) /* bytes of one upstream event */
#define ERRBODY_MAX (64u << 10)  /* bytes of a non-200 answer kept for the message */
#define UP_HEADERS_MAX (16u << 10)/* bytes of the upstream's response headers kept */
#define BODY_MAX (32u << 20)     /* bytes of a JSON (not streamed) answer */
/* Raw upstream bytes not yet turned into events: past HIGH the upstream is paused, at LOW it
 * resumes; INPUT_MAX only bounds one upstream read on top of HIGH. */
#define INPUT_HIGH (64u << 10)
#define INPUT_LOW (16u << 10)
#define INPUT_MAX (1u << 20)
/* A detached meter reads the upstream while bytes keep coming without a gap this long (or
 * drain_ms / 20 when that is longer, so a slow machine given a long drain is not cut short). */
#define DRAIN_GAP_MS 5
#define TPM_WINDOW_S 60
/* An upstream that fails before its first byte (cannot connect, 429, 5xx) is asked again, the
 * same request, up to RETRIES_MAX more times, after 100 ms then 200 ms: nothing reached the
 * client yet, so a retry is invisible to it, and the hold covers every attempt. */
#define RETRIES_MAX 2
#define RETRY_BACKOFF_MS 100
#define HEADERS_MAX 16

/* Bytes queued for clients across the process above which streams stop producing as soon as
 * their client is behind at all (meter_set_output_budget; 0 = no budget). Set once at start. */
static size_t output_budget;

void meter_set_output_budget(size_t bytes)
{
    output_budget = bytes;
}

static int over_budget(void)
{
    return output_budget > 0 && svc_http_queued() > output_budget;
}

/* Whether no more events may be made for this client now: it is far behind, or the process is
 * over its budget and this client has anything still waiting. */
static int client_behind(size_t pending)
{
    return pending > METER_CLIENT_HIGH || (pending > 0 && over_budget());
}

struct meter_loop {
    struct svc_loop *loop;
    struct svc_fetch_multi *upstream;
    struct svc_redis_async *redis;
    struct billing_client *bill;
    struct billing_leases *leases; /* NULL: the exact path only */
    long drain_ms;
    struct meter *draining; /* detached meters still reading their upstream */
};

/* A meter's error texts, allocated at its first error: most streams have none, and every byte of
 * struct meter is resident for each open stream. */
struct meter_msgs {
    char stream[512];    /* an error in the stream (meter_end.stream_error) */
    char transport[256]; /* what failed in the transfer (meter_end.errmsg) */
};

struct meter {
    struct meter_loop *ml;
    const struct meter_hooks *h;
    void *ud; /* NULL once detached: no hook runs after that */
    char rid[72];
    char request_id[64];
    char model[128];
    struct svc_modelmap_info mi;

    /* admission */
    meter_admit_fn admit_cb;
    int admitting;           /* a token admission is in flight */
    struct svc_fetch *reserve;
    int held;                /* a hold may exist: it must be settled or released */
    struct billing_lease_ticket ticket; /* admitted from a lease (or waiting for one) */
    int lease_waiting;       /* the lease answers the admission later */
    int lease_held;          /* the ticket holds part of a lease: settle or release it */
    int tpm_n;
    char tpm_tag[32];
    char tpm_names[SVC_RATELIMIT_SCOPES_MAX][96];
    long long tpm_limits[SVC_RATELIMIT_SCOPES_MAX];
    long long tpm_admitted;
    long long prompt_counted;
    Chatweb__Billing__ReserveRequest reserve_in;
    char reserve_username[128];
    char reserve_source[16];

    /* the upstream request, kept for a retry before the first byte */
    struct svc_fetch_req req;
    char *req_url, *req_body, *req_proxy, *req_ca;
    char *req_headers[HEADERS_MAX + 1];
    int attempts;
    struct svc_timer *retry_timer;

    /* the upstream */
    struct svc_fetch *up;
    int is_sse;              /* 1: an SSE stream; 0: a JSON answer kept in body */
    struct svc_buf body;
    long status;
    struct svc_sse sse;
    struct svc_buf text;
    struct svc_buf errbody;
    struct svc_buf up_headers; /* the answer's headers: "name\0value\0" pairs */
    int headers_taken;         /* up_headers holds this attempt's */
    int attempt_told;          /* on_attempt ran for this attempt */
    struct svc_buf in;       /* raw bytes not yet turned into events */
    size_t in_off;
    int paused;
    int up_done;             /* the transfer ended; events may still wait for the client */
    int up_err;
    struct meter_msgs *msgs; /* the error texts, from the first error on (NULL: none) */
    int started, complete;
    long long usage_prompt, usage_completion;

    /* the end */
    int ended;               /* the hold was ended (or there was none) */
    struct meter_end end;
    int detached;
    struct svc_timer *drain_timer;
    uint64_t drain_started_ms;
    struct meter *drain_prev, *drain_next;
};

static void maybe_free(struct meter *m);

/* Meters alive in the process. Once they were METER_CROWD or more, the free that leaves fewer
 * than TRIM_LIVE_BELOW gives the freed heap memory back (svc_util_heap_trim); a few meters that
 * come and go never do. */
#define METER_CROWD 64
#define TRIM_LIVE_BELOW 4
static atomic_long meters_live;
static atomic_int meters_crowd;

/* ---- per loop ---- */

int meter_loop_create(struct meter_loop **out, struct svc_loop *loop,
                      struct svc_fetch_multi *upstream, struct svc_redis_async *redis,
                      struct billing_client *bill, struct billing_leases *leases,
                      long drain_ms)
{
    struct meter_loop *ml = calloc(1, sizeof(*ml));

    *out = NULL;
    if (ml == NULL)
        return SVC_ENOMEM;
    ml->loop = loop;
    ml->upstream = upstream;
    ml->redis = redis;
    ml->bill = bill;
    ml->leases = leases;
    ml->drain_ms = drain_ms;
    *out = ml;
    return SVC_OK;
}

static void drain_end(struct meter *m);

void meter_loop_destroy(struct meter_loop **mlp)
{
    struct meter_loop *ml = mlp != NULL ? *mlp : NULL;

    if (ml == NULL)
        return;
    while (ml->draining != NULL)
        drain_end(ml->draining);
    free(ml);
    *mlp = NULL;
}

/* ---- per request ---- */

int meter_create(struct meter **out, struct meter_loop *ml, const struct meter_hooks *hooks,
                 void *ctx, const char *rid, const char *request_id, const char *model,
                 const struct svc_modelmap_info *mi)
{
    struct meter *m = calloc(1, sizeof(*m));

    *out = NULL;
    if (m == NULL)
        return SVC_ENOMEM;
    if (atomic_fetch_add(&meters_live, 1) + 1 >= METER_CROWD && !atomic_load(&meters_crowd))
        atomic_store(&meters_crowd, 1);
    m->ml = ml;
    m->h = hooks;
    m->ud = ctx;
    svc_util_str_copy(m->rid, sizeof(m->rid), rid != NULL ? rid : "");
    svc_util_str_copy(m->request_id, sizeof(m->request_id), request_id);
    svc_util_str_copy(m->model, sizeof(m->model), model != NULL ? model : "");
    m->mi = *mi;
    svc_sse_init(&m->sse, SSE_EVENT_MAX);
    svc_buf_init(&m->text, REPLY_MAX);
    svc_buf_init(&m->errbody, ERRBODY_MAX);
    svc_buf_init(&m->up_headers, UP_HEADERS_MAX);
    svc_buf_init(&m->in, INPUT_MAX);
    svc_buf_init(&m->body, BODY_MAX);
    m->ended = 1; /* nothing to end until a hold may exist */
    *out = m;
    return SVC_OK;
}

void meter_set_tpm(struct meter *m, const char *tag, const struct svc_ratelimit_scope *scopes,
                   int nscopes)
{
    m->tpm_n = 0;
    svc_util_str_copy(m->tpm_tag, sizeof(m->tpm_tag), tag);
    for (int i = 0; i < nscopes && i < SVC_RATELIMIT_SCOPES_MAX; i++) {
        if (scopes[i].limit <= 0)
            continue;
        svc_util_str_copy(m->tpm_names[m->tpm_n], sizeof(m->tpm_names[0]), scopes[i].name);
        m->tpm_limits[m->tpm_n++] = scopes[i].limit;
    }
}

const char *meter_text(const struct meter *m, size_t *len)
{
    *len = m->text.len;
    return m->text.data != NULL ? m->text.data : "";
}

static void tpm_scopes(const struct meter *m, struct svc_ratelimit_scope *sc)
{
    for (int i = 0; i < m->tpm_n; i++) {
        sc[i].name = m->tpm_names[i];
        sc[i].limit = m->tpm_limits[i];
    }
}

/* The hold's one Settle or Release, from the lease or billing's exact path. */
static void end_billing(struct meter *m, int produced, long long prompt, long long completion,
                        int counted)
{
    if (m->lease_held) {
        m->lease_held = 0;
        if (produced)
            billing_lease_settle(&m->ticket, m->rid, m->request_id, m->model, prompt, completion,
                                 counted);
        else
            billing_lease_release(&m->ticket);
        return;
    }
    if (!m->held)
        return;
    m->held = 0;
    if (produced)
        billing_client_settle(m->ml->bill, m->rid, m->request_id, m->model, prompt, completion,
                              counted);
    else
        billing_client_release(m->ml->bill, m->rid, m->request_id, "no output");
}

/*
 * Ends the hold, once: the upstream's usage when it sent one, else the exact count of the prompt
 * and of the text received (produced = 0: nothing was produced, a Release). The token counters
 * are corrected to the same figure.
 */
static void end_hold(struct meter *m, int produced)
{
    struct svc_ratelimit_scope sc[SVC_RATELIMIT_SCOPES_MAX];
    long long prompt = 0, completion = 0;
    int counted = 0;

    if (m->ended)
        return;
    m->ended = 1;
    if (produced && (m->usage_prompt > 0 || m->usage_completion > 0)) {
        prompt = m->usage_prompt;
        completion = m->usage_completion;
    } else if (produced) {
        const struct svc_tokenizer *tk = svc_tokenizer_get(m->mi.encoding);
        completion = tk != NULL && m->text.len > 0
                         ? svc_tokenizer_count(tk, m->text.data, m->text.len)
                         : 0;
        if (completion < 0) { /* out of memory: never below what was certainly received */
            SVC_LOG_ERR(m->rid, "billing", "cannot count the reply; charging by bytes");
            completion = (long long)m->text.len;
        }
        prompt = m->prompt_counted;
        counted = 1;
    }
    m->end.prompt_tokens = prompt;
    m->end.completion_tokens = completion;
    m->end.counted = counted;
    if (m->tpm_n > 0) {
        tpm_scopes(m, sc);
        if (svc_ratelimit_tokens_add(m->ml->redis, m->tpm_tag, sc, m->tpm_n,
                                     prompt + completion - m->tpm_admitted, TPM_WINDOW_S) != SVC_OK)
            SVC_LOG_WARN(m->rid, "ratelimit", "cannot correct the token counters");
    }
    end_billing(m, produced, prompt, completion, counted);
    /* The correction (and the lease journal's entry) on its way before the client has its
     * answer: its next request, on any replica, must be admitted against the corrected count. */
    svc_redis_async_flush(m->ml->redis);
}

/* ---- admission ---- */

static void admit_answer(struct meter *m, const struct meter_admission *a)
{
    if (m->ud != NULL && m->admit_cb != NULL)
        m->admit_cb(m->ud, a);
}

static void on_reserved(void *ctx, int err, ProtobufCMessage *out_msg, const char *errmsg)
{
    struct meter *m = ctx;
    const Chatweb__Billing__ReserveResponse *out = (const void *)out_msg;
    struct meter_admission a = {0};

    m->reserve = NULL;
    /* No answer counts as held: the Release gives back a hold made without our knowing. */
    m->held = billing_client_reserve_held(err, out);
    if (err != SVC_OK) {
        SVC_LOG_ERR(m->rid, "billing", "Reserve failed: %s", errmsg ? errmsg : "");
        a.result = METER_UNAVAILABLE;
        a.errmsg = errmsg;
    } else if (out->result == CHATWEB__BILLING__RESERVE_RESULT__RESERVE_OK) {
        a.result = METER_ADMITTED;
        a.completion_limit = out->completion_limit;
    } else if (out->result == CHATWEB__BILLING__RESERVE_RESULT__RESERVE_INSUFFICIENT) {
        a.result = METER_INSUFFICIENT;
    } else {
        SVC_LOG_WARN(m->rid, "billing", "no billing account for user %lld",
                     (long long)m->reserve_in.user_id);
        a.result = METER_NO_ACCOUNT;
    }
    if (a.result != METER_ADMITTED || m->ud == NULL)
        end_hold(m, 0); /* refused, or the client left while billing answered */
    else
        admit_answer(m, &a);
    if (a.result != METER_ADMITTED)
        admit_answer(m, &a);
    if (out_msg != NULL)
        svc_rpc_message_destroy(&out_msg);
    maybe_free(m);
}

static void reserve_exact(struct meter *m)
{
    struct meter_admission a = {0};

    m->reserve_in.request_id = m->request_id;
    m->reserve = billing_client_reserve(m->ml->bill, &m->reserve_in, m->rid, on_reserved, m);
    if (m->reserve == NULL) {
        end_hold(m, 0);
        a.result = METER_UNAVAILABLE;
        a.errmsg = "cannot start the Reserve call";
        admit_answer(m, &a);
    }
}

/* The whole worst case is held in the lease: the request may ask for its full completion. */
static void lease_admitted(struct meter *m)
{
    struct meter_admission a = {0};

    m->lease_held = 1;
    a.result = METER_ADMITTED;
    a.completion_limit = m->reserve_in.max_completion_tokens;
    admit_answer(m, &a);
}

static void on_lease_admitted(void *ctx, int result)
{
    struct meter *m = ctx;

    m->lease_waiting = 0;
    if (m->ud == NULL) { /* the client left while the lease grew: give back what was admitted */
        m->lease_held = result == BILLING_LEASE_ADMITTED;
        end_hold(m, 0);
        maybe_free(m);
        return;
    }
    if (result == BILLING_LEASE_ADMITTED)
        lease_admitted(m);
    else
        reserve_exact(m);
}

static void reserve(struct meter *m)
{
    m->ended = 0; /* from here on the hold (or its absence) is ended exactly once */
    if (m->ml->leases != NULL) {
        const Chatweb__Billing__ReserveRequest *in = &m->reserve_in;
        switch (billing_lease_admit(m->ml->leases, &m->ticket, in->user_id, in->username,
                                    in->create_unlimited, m->model, in->prompt_tokens,
                                    in->max_completion_tokens, on_lease_admitted, m)) {
        case BILLING_LEASE_ADMITTED:
            lease_admitted(m);
            return;
        case BILLING_LEASE_WAIT:
            m->lease_waiting = 1;
            return;
        default:
            break;
        }
    }
    reserve_exact(m);
}

static void on_tpm_admitted(void *ctx, int err, int allowed, int refused, long long used,
                            int retry_after_s)
{
    struct meter *m = ctx;
    struct meter_admission a = {0};

    m->admitting = 0;
    if (m->ud == NULL) { /* the client left: whatever was admitted is given back */
        if (err == SVC_OK && allowed) {
            m->tpm_admitted = m->prompt_counted;
            m->ended = 0;
            end_hold(m, 0);
        }
        maybe_free(m);
        return;
    }
    if (err != SVC_OK) { /* a limiter that cannot count must not stop the request */
        SVC_LOG_WARN(m->rid, "ratelimit", "cannot count tokens: %s", svc_strerror(err));
        m->tpm_n = 0;
    } else if (!allowed) {
        a.result = METER_TPM_REFUSED;
        a.retry_after_s = retry_after_s;
        a.tpm_scope = refused;
        a.tpm_limit = m->tpm_limits[refused >= 0 && refused < m->tpm_n ? refused : 0];
        a.tpm_used = used;
        m->tpm_n = 0; /* nothing was counted */
        admit_answer(m, &a);
        return;
    } else {
        m->tpm_admitted = m->prompt_counted;
    }
    reserve(m);
}

int meter_admit(struct meter *m, Chatweb__Billing__ReserveRequest *in, meter_admit_fn cb)
{
    struct svc_ratelimit_scope sc[SVC_RATELIMIT_SCOPES_MAX];

    if (m->admit_cb != NULL)
        return SVC_EINVAL;
    m->admit_cb = cb;
    m->reserve_in = *in;
    /* The strings of in are the caller's; keep what billing needs until it is asked. */
    svc_util_str_copy(m->reserve_username, sizeof(m->reserve_username),
                      in->username != NULL ? in->username : "");
    svc_util_str_copy(m->reserve_source, sizeof(m->reserve_source),
                      in->source != NULL ? in->source : "");
    m->reserve_in.username = m->reserve_username;
    m->reserve_in.source = m->reserve_source;
    m->reserve_in.model = m->model;
    m->prompt_counted = in->prompt_tokens;
    if (m->tpm_n > 0) {
        tpm_scopes(m, sc);
        if (svc_ratelimit_tokens_admit(m->ml->redis, m->tpm_tag, sc, m->tpm_n, m->prompt_counted,
                                       TPM_WINDOW_S, on_tpm_admitted, m) == SVC_OK) {
            m->admitting = 1;
            return SVC_OK;
        }
        m->tpm_n = 0; /* not counted (Redis unreachable): nothing to correct later */
    }
    reserve(m);
    return SVC_OK;
}

/* ---- the upstream ---- */

static struct meter_msgs *msgs(struct meter *m)
{
    if (m->msgs == NULL)
        m->msgs = calloc(1, sizeof(*m->msgs));
    return m->msgs; /* NULL out of memory: the error itself still stops the stream */
}

/* Notes the error that stops the stream (meter_end.stream_error), cut to whole characters. */
static void stream_error(struct meter *m, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void stream_error(struct meter *m, const char *fmt, ...)
{
    va_list ap;

    if (msgs(m) == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(m->msgs->stream, sizeof(m->msgs->stream), fmt, ap);
    va_end(ap);
    svc_util_utf8_trim_end(m->msgs->stream); /* JSON needs whole characters */
}

/*
 * Reads one event into ev and the meter (usage, the reply's text, completeness) in one pass,
 * without a tree (meter/event.h): 0, or an error that stops the stream (a malformed event, an
 * error event, a reply over REPLY_MAX), with its text noted (stream_error). ev->content is what
 * the event added to the reply's text.
 */
static int event_scan(struct meter *m, struct meter_event *ev)
{
    struct meter_event_fields f;
    size_t before = m->text.len;
    int rc = meter_event_scan(ev->data, ev->len, &f, &m->text);

    if (rc == SVC_EINVAL) {
        stream_error(m, "malformed upstream event");
        return SVC_EIO;
    }
    if (f.has_error) {
        stream_error(m, "[OpenAI] %s",
                     f.error_msg != NULL ? f.error_msg : "error inside the stream");
        return SVC_EIO;
    }
    if (f.has_usage) {
        m->usage_prompt = f.usage_prompt;
        m->usage_completion = f.usage_completion;
    }
    ev->usage_only = f.usage_only;
    ev->has_choice = f.has_choice;
    ev->has_finish = f.has_finish;
    if (rc == 0 && m->text.len > before) {
        ev->content = m->text.data + before;
        ev->content_len = m->text.len - before;
    }
    if (rc != 0) {
        stream_error(m, "reply longer than %u bytes", REPLY_MAX);
        return SVC_ETOOLARGE;
    }
    if (f.has_finish)
        m->complete = 1;
    return 0;
}

static int on_sse_event(void *ctx, const char *data, size_t len)
{
    struct meter *m = ctx;
    struct meter_event ev = {.data = data, .len = len};
    int rc;

    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        m->complete = 1;
        ev.done = 1;
        return m->ud != NULL ? m->h->on_event(m->ud, &ev) : 0;
    }
    rc = event_scan(m, &ev);
    if (rc == 0 && m->ud != NULL)
        rc = m->h->on_event(m->ud, &ev);
    return rc;
}

static size_t input_waiting(const struct meter *m)
{
    return m->in.len - m->in_off;
}

/*
 * Turns buffered upstream bytes into events one SSE line at a time, and only while the client
 * keeps up (a detached meter only counts: it takes everything). What the client cannot take yet
 * stays here as raw bytes, bounded: the upstream is paused when they pile up.
 */
static int pump(struct meter *m)
{
    while (m->in_off < m->in.len) {
        const char *p = m->in.data + m->in_off;
        size_t avail = m->in.len - m->in_off;
        const char *nl;
        size_t n;
        int rc;

        if (m->ud != NULL && client_behind(m->h->client_pending(m->ud)))
            return 0;
        nl = memchr(p, '\n', avail);
        n = nl != NULL ? (size_t)(nl - p) + 1 : avail;
        m->in_off += n;
        rc = svc_sse_feed(&m->sse, p, n, on_sse_event, m);
        if (rc != 0)
            return rc;
    }
    svc_buf_reset(&m->in);
    m->in_off = 0;
    return 0;
}

/* The upstream is over and its bytes are all events: end the hold, then tell the caller. */
static void finish(struct meter *m)
{
    int produced;

    m->up_done = 0;
    /* Attached, a request produced something once its answer started. Detached, an upstream
     * that refused (an HTTP error) produced nothing; one that answered, or that was cancelled
     * while it thought, was sent the prompt. */
    if (m->detached)
        produced = !(m->status != 0 && m->status != 200);
    else
        produced = m->started;
    end_hold(m, produced);
    m->end.err = m->up_err;
    m->end.status = m->status;
    m->end.errmsg = m->msgs != NULL && m->msgs->transport[0] != '\0' ? m->msgs->transport : NULL;
    m->end.stream_error = m->msgs != NULL && m->msgs->stream[0] != '\0' ? m->msgs->stream : NULL;
    m->end.body = m->status != 200 ? m->errbody.data : NULL;
    m->end.body_len = m->status != 200 ? m->errbody.len : 0;
    m->end.complete = m->complete;
    m->end.started = m->started;
    if (m->ud != NULL)
        m->h->on_end(m->ud, &m->end);
}

/* ---- after the caller detached ---- */

static void drain_unlink(struct meter *m)
{
    if (m->drain_prev != NULL)
        m->drain_prev->drain_next = m->drain_next;
    else if (m->ml->draining == m)
        m->ml->draining = m->drain_next;
    if (m->drain_next != NULL)
        m->drain_next->drain_prev = m->drain_prev;
    m->drain_prev = m->drain_next = NULL;
}

/* Ends a drain (upstream done, quiet for DRAIN_GAP_MS, or out of time): cancel, count, end. */
static void drain_end(struct meter *m)
{
    svc_fetch_cancel(&m->up);
    svc_timer_destroy(&m->drain_timer);
    drain_unlink(m);
    (void)pump(m);
    finish(m);
    maybe_free(m);
}

static void on_drain_timer(void *ctx, struct svc_timer *timer)
{
    (void)timer;
    drain_end(ctx);
}

static uint64_t drain_gap(const struct meter_loop *ml)
{
    uint64_t g = (uint64_t)ml->drain_ms / 20;

    return g > DRAIN_GAP_MS ? g : DRAIN_GAP_MS;
}

/* Bytes that arrived while draining: counted at once. 0, or an error that ends the transfer. */
static int drain_data(struct meter *m, const char *data, size_t len)
{
    uint64_t spent = svc_loop_clock_ms() - m->drain_started_ms;
    uint64_t cap = (uint64_t)m->ml->drain_ms;
    uint64_t gap = drain_gap(m->ml);

    if (svc_buf_append(&m->in, data, len) != SVC_OK || pump(m) != 0)
        return SVC_EIO; /* too much or malformed: what was counted so far is charged */
    if (m->drain_timer != NULL && spent < cap &&
        svc_timer_start(m->drain_timer, cap - spent < gap ? cap - spent : gap) == SVC_OK)
        return 0;
    return spent >= cap ? SVC_ETIMEDOUT : SVC_EIO;
}

/* ---- upstream callbacks ---- */

static void keep_header(void *ctx, const char *name, const char *value)
{
    struct meter *m = ctx;
    size_t nlen = strlen(name) + 1, vlen = strlen(value) + 1, was = m->up_headers.len;

    /* past UP_HEADERS_MAX the rest is dropped: a pair is kept whole or not at all */
    if (svc_buf_append(&m->up_headers, name, nlen) != SVC_OK ||
        svc_buf_append(&m->up_headers, value, vlen) != SVC_OK)
        m->up_headers.len = was;
}

/* Tells the caller how this attempt went, once (for its circuit breaker). */
static void tell_attempt(struct meter *m, int err)
{
    int ok = err == SVC_OK && m->status != 0 && m->status != 429 && m->status < 500;

    if (m->attempt_told)
        return;
    m->attempt_told = 1;
    if (m->ud != NULL && m->h->on_attempt != NULL)
        m->h->on_attempt(m->ud, ok);
}

/* Keeps the answer's headers (once per attempt) for meter_upstream_headers. */
static void take_headers(struct meter *m, struct svc_fetch *f)
{
    if (m->headers_taken)
        return;
    m->headers_taken = 1;
    svc_fetch_headers_each(f, keep_header, m);
}

void meter_upstream_headers(const struct meter *m, svc_fetch_header_cb fn, void *ud)
{
    const char *p = m->up_headers.data, *end = p + m->up_headers.len;

    while (p != NULL && p < end) {
        const char *value = p + strlen(p) + 1;
        fn(ud, p, value);
        p = value + strlen(value) + 1;
    }
}

/* The copy of the upstream request meter_start keeps for a retry, freed (the Authorization line
 * wiped: it holds the upstream's key). */
static void request_copy_free(struct meter *m)
{
    free(m->req_url);
    free(m->req_body);
    free(m->req_proxy);
    free(m->req_ca);
    m->req_url = m->req_body = m->req_proxy = m->req_ca = NULL;
    for (int i = 0; i < HEADERS_MAX && m->req_headers[i] != NULL; i++) {
        svc_util_wipe(m->req_headers[i], strlen(m->req_headers[i]));
        free(m->req_headers[i]);
        m->req_headers[i] = NULL;
    }
    memset(&m->req, 0, sizeof(m->req));
}

/* The answer's first byte is here: nothing is retried from now on (retryable), so the request's
 * copy goes at once rather than when the stream ends. It holds the whole conversation sent to
 * the upstream: with a long context, tens of KB per open stream. */
static void mark_started(struct meter *m)
{
    if (m->started)
        return;
    m->started = 1;
    request_copy_free(m);
}

static int on_up_data(void *ctx, struct svc_fetch *f, long status, const char *data, size_t len)
{
    struct meter *m = ctx;
    int rc;

    m->status = status;
    take_headers(m, f);
    tell_attempt(m, SVC_OK);
    if (status != 200) /* an error body: keep it for the message */
        return svc_buf_append(&m->errbody, data, len) == SVC_OK ? 0 : SVC_ETOOLARGE;
    if (!m->is_sse) { /* a JSON answer: kept whole, read at the end */
        if (!m->started && !m->detached) {
            mark_started(m);
            if ((rc = m->h->on_head(m->ud)) != SVC_OK)
                return rc;
        }
        mark_started(m);
        if (svc_buf_append(&m->body, data, len) != SVC_OK) {
            stream_error(m, "answer longer than %u bytes", BODY_MAX);
            return SVC_ETOOLARGE;
        }
        return 0;
    }
    if (m->detached)
        return drain_data(m, data, len);
    if (!m->started) {
        mark_started(m);
        if ((rc = m->h->on_head(m->ud)) != SVC_OK)
            return rc;
    }
    if (input_waiting(m) > (over_budget() ? 0 : INPUT_HIGH)) {
        /* the client is behind: curl keeps these bytes and we stop reading (at once when the
         * process is over its output budget) */
        m->paused = 1;
        return SVC_FETCH_PAUSE;
    }
    if (m->in_off > 0) {
        /* Drop what was already turned into events: a slow client leaves pump() stopped midway
         * again and again, and the consumed bytes would otherwise pile up to INPUT_MAX and fail
         * the stream as "client too slow" (at most INPUT_HIGH is moved). */
        svc_buf_consume(&m->in, m->in_off);
        m->in_off = 0;
    }
    if (svc_buf_append(&m->in, data, len) != SVC_OK) {
        stream_error(m, "client too slow");
        return SVC_ETOOLARGE;
    }
    return pump(m);
}

/* A complete JSON answer: its usage, and its text for a count when it has no usage. Read in one
 * pass without a tree (meter_answer_scan): the tree was thrown away at once, and building it was
 * the largest part of the proxy's CPU on a JSON request (docs/benchmarks.md). SVC_EINVAL when the
 * body is not JSON at all: a 200 that is not what it claims (an HTML page from a misconfigured
 * gateway) becomes a stream error, so the caller answers with an error, not a success. */
static int json_answer(struct meter *m)
{
    struct meter_answer_fields f;
    int rc = meter_answer_scan(m->body.data != NULL ? m->body.data : "", m->body.len, &f, &m->text);

    m->complete = 1;
    if (rc == SVC_EINVAL) {
        stream_error(m, "the upstream answered %ld with a body that is not JSON", m->status);
        return SVC_EINVAL;
    }
    if (f.has_usage) {
        m->usage_prompt = f.usage_prompt;
        m->usage_completion = f.usage_completion;
    }
    if (rc != SVC_OK)
        SVC_LOG_WARN(m->rid, "upstream", "answer text too long to keep");
    return SVC_OK;
}

/* Nothing reached the client and the upstream failed in a way another attempt may not. */
static int retryable(const struct meter *m, int err)
{
    if (m->detached || m->started || m->attempts > RETRIES_MAX)
        return 0;
    if (err == SVC_EUNAVAIL && m->status == 0) /* could not connect, or the connection broke */
        return 1;
    return err == SVC_OK && (m->status == 429 || m->status == 500 || m->status == 502 ||
                             m->status == 503 || m->status == 504);
}

static int send_upstream(struct meter *m);

/* The caller may send the retry to another upstream: a new URL and Authorization line. */
static int retarget(struct meter *m)
{
    char url[4096], auth[1200] = "";
    int i = 0;

    if (m->ud == NULL || m->h->retarget == NULL ||
        !m->h->retarget(m->ud, url, sizeof(url), auth, sizeof(auth)))
        return SVC_OK;
    free(m->req_url);
    m->req.url = m->req_url = strdup(url);
    while (m->req_headers[i] != NULL && strncasecmp(m->req_headers[i], "Authorization:", 14) != 0)
        i++;
    if (m->req_headers[i] != NULL) { /* the old key goes, wiped */
        svc_util_wipe(m->req_headers[i], strlen(m->req_headers[i]));
        free(m->req_headers[i]);
        while (m->req_headers[i + 1] != NULL) {
            m->req_headers[i] = m->req_headers[i + 1];
            i++;
        }
        m->req_headers[i] = NULL;
    }
    if (auth[0] != '\0' && i < HEADERS_MAX && (m->req_headers[i] = strdup(auth)) == NULL)
        return SVC_ENOMEM;
    svc_util_wipe(auth, sizeof(auth));
    return m->req_url != NULL ? SVC_OK : SVC_ENOMEM;
}

static void on_retry_timer(void *ctx, struct svc_timer *timer)
{
    struct meter *m = ctx;

    (void)timer;
    svc_timer_destroy(&m->retry_timer);
    if (retarget(m) != SVC_OK || send_upstream(m) != SVC_OK) {
        m->up_err = SVC_ENOMEM;
        finish(m);
    }
}

static int retry_schedule(struct meter *m)
{
    uint64_t wait = (uint64_t)RETRY_BACKOFF_MS << (m->attempts - 1);

    if (svc_timer_create(&m->retry_timer, m->ml->loop, on_retry_timer, m) != SVC_OK ||
        svc_timer_start(m->retry_timer, wait) != SVC_OK) {
        svc_timer_destroy(&m->retry_timer);
        return SVC_ENOMEM;
    }
    SVC_LOG_INFO(m->rid, "upstream", "attempt %d failed (HTTP %ld); retrying in %llu ms",
                 m->attempts, m->status, (unsigned long long)wait);
    return SVC_OK;
}

static void on_up_done(void *ctx, int err, struct svc_fetch *f, long status, const char *body,
                       size_t len, const char *errmsg)
{
    struct meter *m = ctx;
    int body_ok = 1; /* a JSON answer's body is JSON (json_answer) */

    (void)body;
    (void)len;
    if (status != 0) {
        m->status = status;
        take_headers(m, f);
    }
    m->up = NULL;
    m->up_err = err;
    tell_attempt(m, err);
    if (err != SVC_OK && errmsg != NULL && msgs(m) != NULL) {
        svc_util_str_copy(m->msgs->transport, sizeof(m->msgs->transport), errmsg);
        svc_util_utf8_trim_end(m->msgs->transport);
    }
    if (retryable(m, err) && retry_schedule(m) == SVC_OK)
        return;
    if (!m->is_sse && m->status == 200 && err == SVC_OK)
        body_ok = json_answer(m) == SVC_OK;
    if (m->detached) {
        drain_end(m);
        return;
    }
    if (!m->is_sse && m->status == 200 && err == SVC_OK && body_ok && m->h->on_body != NULL &&
        m->h->on_body(m->ud, m->body.data != NULL ? m->body.data : "", m->body.len) != SVC_OK)
        m->up_err = SVC_EIO;
    if (err == SVC_OK && input_waiting(m) > 0) {
        m->up_done = 1; /* the rest is turned into events as the client drains */
        return;
    }
    finish(m);
}

static int send_upstream(struct meter *m)
{
    static const struct svc_fetch_callbacks cb = {.on_data = on_up_data, .on_done = on_up_done};

    m->attempts++;
    svc_buf_reset(&m->errbody); /* what an earlier attempt answered */
    svc_buf_reset(&m->up_headers);
    m->headers_taken = 0;
    m->attempt_told = 0;
    m->status = 0;
    m->up_err = SVC_OK;
    if (m->msgs != NULL)
        m->msgs->transport[0] = '\0';
    return svc_fetch_start(&m->up, m->ml->upstream, &m->req, &cb, m) == SVC_OK ? SVC_OK
                                                                               : SVC_ENOMEM;
}

static char *dup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

int meter_start(struct meter *m, const struct svc_fetch_req *fr, int sse)
{
    int n = 0, ok = 1;

    m->is_sse = sse;
    /* A copy of the request, so a retry can send it again after the caller's buffers are gone. */
    m->req = *fr;
    m->req.stream = 1;
    m->req_url = dup_or_null(fr->url);
    m->req_proxy = dup_or_null(fr->proxy);
    m->req_ca = dup_or_null(fr->ca_file);
    if (fr->body != NULL && (m->req_body = malloc(fr->body_len ? fr->body_len : 1)) != NULL)
        memcpy(m->req_body, fr->body, fr->body_len);
    ok = m->req_url != NULL && (fr->body == NULL || m->req_body != NULL) &&
         (fr->proxy == NULL || m->req_proxy != NULL) && (fr->ca_file == NULL || m->req_ca != NULL);
    for (const char *const *h = fr->headers; ok && h != NULL && *h != NULL; h++) {
        if (n == HEADERS_MAX || (m->req_headers[n++] = strdup(*h)) == NULL)
            ok = 0;
    }
    m->req.url = m->req_url;
    m->req.body = m->req_body;
    m->req.proxy = m->req_proxy;
    m->req.ca_file = m->req_ca;
    m->req.headers = (const char *const *)m->req_headers;
    if (!ok || send_upstream(m) != SVC_OK) {
        end_hold(m, 0);
        return SVC_ENOMEM;
    }
    return SVC_OK;
}

void meter_resume(struct meter *m)
{
    int rc = pump(m);

    if (rc != 0) {
        /* a malformed event found late: stop the upstream and report it */
        svc_fetch_cancel(&m->up);
        m->up_err = rc;
        finish(m);
        return;
    }
    if (m->paused && m->up != NULL && input_waiting(m) <= INPUT_LOW) {
        m->paused = 0;
        svc_fetch_pause(m->up, 0);
    }
    if (m->up_done && input_waiting(m) == 0)
        finish(m);
}

/* ---- the end ---- */

static void maybe_free(struct meter *m)
{
    if (!m->detached || m->admitting || m->reserve != NULL || m->lease_waiting || m->up != NULL ||
        m->drain_timer != NULL || m->retry_timer != NULL)
        return;
    end_hold(m, 0); /* admitted, but detached before the upstream started: a Release */
    svc_sse_deinit(&m->sse);
    svc_buf_deinit(&m->text);
    svc_buf_deinit(&m->errbody);
    svc_buf_deinit(&m->up_headers);
    svc_buf_deinit(&m->in);
    svc_buf_deinit(&m->body);
    request_copy_free(m);
    free(m->msgs);
    free(m);
    /* the last of a crowd (a burst of slow clients that left, drained): give its memory back,
     * whether or not a trim ran a moment ago (once per crowd) */
    if (atomic_fetch_sub(&meters_live, 1) <= TRIM_LIVE_BELOW && atomic_exchange(&meters_crowd, 0))
        svc_util_heap_trim_now();
}

void meter_detach(struct meter **mp)
{
    struct meter *m = mp != NULL ? *mp : NULL;

    if (m == NULL)
        return;
    *mp = NULL;
    m->ud = NULL;
    m->detached = 1;
    if (m->retry_timer != NULL) { /* between two attempts: nothing was produced */
        svc_timer_destroy(&m->retry_timer);
        end_hold(m, 0);
        finish(m);
    } else if (m->up != NULL) {
        /* Take what the upstream already sent before closing it (meter.h). */
        if (m->ml->drain_ms > 0 &&
            svc_timer_create(&m->drain_timer, m->ml->loop, on_drain_timer, m) == SVC_OK &&
            svc_timer_start(m->drain_timer, drain_gap(m->ml)) == SVC_OK) {
            m->drain_started_ms = svc_loop_clock_ms();
            m->drain_next = m->ml->draining;
            if (m->drain_next != NULL)
                m->drain_next->drain_prev = m;
            m->ml->draining = m;
            if (m->paused) { /* a paused transfer's held bytes are delivered by resuming */
                m->paused = 0;
                svc_fetch_pause(m->up, 0);
            }
            if (m->drain_timer != NULL && pump(m) != 0)
                drain_end(m);
            return;
        }
        svc_timer_destroy(&m->drain_timer);
        svc_fetch_cancel(&m->up);
        (void)pump(m);
        finish(m);
    } else if (m->up_done) {
        (void)pump(m); /* the upstream finished; its last events were waiting for the client */
        finish(m);
    }
    maybe_free(m);
}
