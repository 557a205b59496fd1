/*
 * Per-replica balance leases, the caller's side (lease.h): per user, a slice of the balance held
 * by billing, requests admitted from memory against it, their charges reported in LeaseSync calls.
 */
#include "lease.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "billing.pb-c.h"
#include "journal.h"
#include "svc/crypto.h"
#include "svc/fetch.h"
#include "svc/log.h"
#include "svc/loop.h"
#include "svc/metrics.h"
#include "svc/redis.h"
#include "svc/rpc.h"
#include "svc/util.h"

#define BUCKETS 256           /* users per loop are spread over this many lists */
#define SYNC_CHARGES_MAX 4096 /* charges in one LeaseSync (billing's bound) */
#define RETRY_MS 100          /* x4 each attempt ... */
#define RETRY_MAX_MS 30000    /* ... up to one try every 30 s */
#define WANT_REQUESTS 4 /* a lease covers at least this many of its largest request */
#define LEAN_FACTOR 4 /* leases only while the free balance is 4x the size one asks for */
#define REQUEST_ID_MAX 128

struct lease_charge {
    char request_id[REQUEST_ID_MAX + 1];
    char model[BILLING_LEASE_MODEL_MAX];
    long long prompt, completion;
    long long cost; /* our estimate, at the ratio the lease knows */
    int estimated;
    uint64_t jid; /* its entry in the lease's journal */
    int64_t end;  /* its place among the lease's ended requests (journal.h) */
};

struct lease_ratio {
    char model[BILLING_LEASE_MODEL_MAX];
    int64_t in_milli, out_milli;
};

/* A growing array of charges: the queue (not yet sent) and the batch of the call in flight. */
struct charge_list {
    struct lease_charge *v;
    size_t n, cap;
};

struct billing_lease {
    struct billing_leases *ls;
    struct billing_lease *next; /* in its bucket */
    int64_t user_id;
    char username[128];
    int create_unlimited;
    char id[96];
    int64_t seq; /* of the last LeaseSync built */
    int known;   /* billing answered at least once */
    int unlimited;
    int retired;             /* closed by billing, or by us: no new admission */
    int closing;             /* the next LeaseSync closes it */
    long long units;         /* held by billing after its last answer */
    long long reserved;      /* worst case of the admitted requests not yet ended */
    long long unacked;       /* our cost of the charges queued or in the call in flight */
    long long largest;       /* the largest worst case seen: sizes the lease */
    long long tickets;       /* admitted requests not yet ended (a ticket points here) */
    uint64_t valid_until_ms; /* admissions stop then without a newer answer (half the TTL) */
    uint64_t renew_at_ms;    /* a quarter of the TTL after the last answer: renew it */
    uint64_t lean_until_ms;  /* the balance could not grow it: exact path until then */
    uint64_t last_use_ms;
    uint64_t flush_at_ms;      /* charges or new requests to report: the call goes then (0: none) */
    struct lease_ratio ratios[BILLING_LEASE_MODELS];
    int nratios;
    struct charge_list queue; /* ended requests not yet sent */
    struct charge_list batch; /* the charges of the call in flight (or to be repeated) */
    /* the call in flight, repeated unchanged until answered */
    struct svc_fetch *call;
    int has_batch; /* seq/batch/sent_* describe a call not yet answered */
    long long sent_inflight, sent_want;
    long long told_inflight;   /* inflight_units of the last call answered */
    int sent_close;
    int attempts;
    uint64_t first_try_ms;
    struct svc_timer *timer;
    struct billing_lease_ticket *waiters, **waiters_tail;
    char jkey[BILLING_JOURNAL_KEY_MAX]; /* its journal's key ("": none) */
    int journal_lost;                   /* Redis refused an entry: the journal says "lost" */
    int journal_ttl;                    /* the journal's expiry was set */
    int64_t ends;                       /* requests ended on it, numbered from 1 */
};

struct billing_leases {
    struct svc_loop *loop;
    struct svc_rpc_client *rpc;
    struct svc_fetch_multi *multi;
    struct billing_leases_opts o;
    char source[16];
    char prefix[40]; /* "lease:<random>:" unique to this loop */
    uint64_t made;
    uint64_t jids; /* journal entries made on this loop */
    size_t count;
    int closing_all;
    struct billing_lease *buckets[BUCKETS];
};

static void lease_schedule(struct billing_lease *l);
static void lease_send(struct billing_lease *l);

/* ---- small helpers ---- */

static int list_push(struct charge_list *cl, const struct lease_charge *c)
{
    if (cl->n == cl->cap) {
        size_t cap = cl->cap ? cl->cap * 2 : 16;
        struct lease_charge *v = realloc(cl->v, cap * sizeof(*v));
        if (v == NULL)
            return SVC_ENOMEM;
        cl->v = v;
        cl->cap = cap;
    }
    cl->v[cl->n++] = *c;
    return SVC_OK;
}

static long long ceil_milli(long long tokens, int64_t milli)
{
    return (tokens * milli + 999) / 1000;
}

/* The ratio the lease knows for model, or NULL (it must be asked from billing). */
static const struct lease_ratio *ratio_of(const struct billing_lease *l, const char *model)
{
    for (int i = 0; i < l->nratios; i++)
        if (strcmp(l->ratios[i].model, model) == 0)
            return &l->ratios[i];
    return NULL;
}

/* What billing would charge, as price.h computes it (each side rounded up on its own). */
static long long cost_of(const struct lease_ratio *r, long long prompt, long long completion)
{
    return ceil_milli(prompt, r->in_milli) + ceil_milli(completion, r->out_milli);
}

static void gauge(struct billing_leases *ls, int delta)
{
    ls->count += delta;
    if (ls->o.open != NULL)
        svc_metric_add(ls->o.open, delta);
}

static struct billing_lease **bucket_of(struct billing_leases *ls, int64_t user_id)
{
    return &ls->buckets[(uint64_t)user_id % BUCKETS];
}

/* ---- lifetime ---- */

int billing_leases_create(struct billing_leases **out, struct svc_loop *loop,
                          struct svc_rpc_client *rpc, struct svc_fetch_multi *multi,
                          const struct billing_leases_opts *o)
{
    struct billing_leases *ls = calloc(1, sizeof(*ls));
    unsigned char rnd[6];
    char hex[13];

    *out = NULL;
    if (ls == NULL)
        return SVC_ENOMEM;
    ls->loop = loop;
    ls->rpc = rpc;
    ls->multi = multi;
    ls->o = *o;
    snprintf(ls->source, sizeof(ls->source), "%s", o->source != NULL ? o->source : "");
    ls->o.source = ls->source;
    svc_crypto_random(rnd, sizeof(rnd));
    svc_crypto_hex(hex, rnd, sizeof(rnd));
    snprintf(ls->prefix, sizeof(ls->prefix), "lease:%s:%s:", ls->source, hex);
    *out = ls;
    return SVC_OK;
}

static void lease_free(struct billing_lease *l)
{
    struct billing_leases *ls = l->ls;
    struct billing_lease **pp = bucket_of(ls, l->user_id);

    while (*pp != NULL && *pp != l)
        pp = &(*pp)->next;
    if (*pp == l)
        *pp = l->next;
    svc_fetch_cancel(&l->call);
    svc_timer_destroy(&l->timer);
    free(l->queue.v);
    free(l->batch.v);
    free(l);
    gauge(ls, -1);
}

/* A retired lease with nothing left to report or to answer is freed. 1 when it was. */
static int lease_maybe_free(struct billing_lease *l)
{
    if (!l->retired || l->tickets > 0 || l->queue.n > 0 || l->has_batch || l->call != NULL ||
        l->waiters != NULL)
        return 0;
    lease_free(l);
    return 1;
}

static void on_lease_timer(void *ctx, struct svc_timer *t)
{
    struct billing_lease *l = ctx;

    (void)t;
    if (l->has_batch && l->call == NULL)
        lease_send(l); /* a call that failed: repeat it unchanged */
    else
        lease_schedule(l);
}

/* The user's lease that still admits (neither retired nor closing), made when there is none. */
static struct billing_lease *lease_get(struct billing_leases *ls, int64_t user_id,
                                       const char *username, int create_unlimited)
{
    struct billing_lease **b = bucket_of(ls, user_id), *l;

    for (l = *b; l != NULL; l = l->next)
        if (l->user_id == user_id && !l->retired && !l->closing)
            return l;
    l = calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    if (svc_timer_create(&l->timer, ls->loop, on_lease_timer, l) != SVC_OK) {
        free(l);
        return NULL;
    }
    l->ls = ls;
    l->user_id = user_id;
    snprintf(l->username, sizeof(l->username), "%s", username != NULL ? username : "");
    l->create_unlimited = create_unlimited;
    snprintf(l->id, sizeof(l->id), "%s%" PRId64 ":%" PRIu64, ls->prefix, user_id, ++ls->made);
    if (ls->o.journal == NULL || billing_journal_key(l->jkey, sizeof(l->jkey), l->id) != SVC_OK)
        l->jkey[0] = '\0';
    l->waiters_tail = &l->waiters;
    l->last_use_ms = svc_loop_clock_ms();
    l->next = *b;
    *b = l;
    gauge(ls, 1);
    return l;
}

/* ---- the charge journal (journal.h) ---- */

/* Hands a command on the lease's journal to Redis. One Redis cannot take leaves the journal
 * incomplete: it is marked "lost" with the next entry, and billing will not trust it. */
static void journal_cmd(struct billing_lease *l, int argc, const char **argv, const size_t *lens)
{
    if (svc_redis_async_cmd(l->ls->o.journal, NULL, NULL, argc, argv, lens) != SVC_OK &&
        !l->journal_lost) {
        l->journal_lost = 1;
        SVC_LOG_WARN(NULL, "billing",
                     "lease %s: Redis refused a journal entry; should this "
                     "replica die, its unreported charges are not billed",
                     l->id);
    }
}

static int journal_on(const struct billing_lease *l)
{
    return l->jkey[0] != '\0' && !l->retired;
}

/* Sets (renews) the journal's expiry: one nobody reads does not stay in Redis. */
static void journal_expire(struct billing_lease *l)
{
    char ttl[24];
    const char *argv[] = {"PEXPIRE", l->jkey, ttl};

    snprintf(ttl, sizeof(ttl), "%d", BILLING_JOURNAL_TTL_MS);
    journal_cmd(l, 3, argv, NULL);
    l->journal_ttl = 1;
}

/* Writes one entry (the mark with it). */
static void journal_put(struct billing_lease *l, uint64_t jid,
                        const struct billing_journal_entry *e)
{
    char field[24], value[BILLING_JOURNAL_VALUE_MAX];
    int vlen = billing_journal_format(value, sizeof(value), e);
    const char *argv[] = {"HSET", l->jkey, BILLING_JOURNAL_MARK, "ok", field, value};
    size_t lens[6];

    if (!journal_on(l))
        return;
    if (vlen < 0)
        l->journal_lost = 1; /* a model name the journal cannot hold */
    if (l->journal_lost)
        argv[3] = "lost";
    for (int i = 0; i < 4; i++)
        lens[i] = strlen(argv[i]);
    lens[4] = (size_t)billing_journal_field(field, jid);
    lens[5] = vlen < 0 ? 0 : (size_t)vlen;
    journal_cmd(l, vlen < 0 ? 4 : 6, argv, lens);
    if (!l->journal_ttl)
        journal_expire(l);
}

/* Deletes the entries of the n charges (a released request: n = 1, a NULL list and jid). */
static void journal_forget(struct billing_lease *l, const struct lease_charge *v, size_t n,
                           uint64_t jid)
{
    const char **argv;
    size_t *lens;
    char(*fields)[24];

    if (!journal_on(l) || n == 0)
        return;
    argv = calloc(n + 2, sizeof(*argv));
    lens = calloc(n + 2, sizeof(*lens));
    fields = calloc(n, sizeof(*fields));
    if (argv != NULL && lens != NULL && fields != NULL) {
        argv[0] = "HDEL";
        argv[1] = l->jkey;
        lens[0] = 4;
        lens[1] = strlen(l->jkey);
        for (size_t i = 0; i < n; i++) {
            lens[i + 2] = (size_t)billing_journal_field(fields[i], v != NULL ? v[i].jid : jid);
            argv[i + 2] = fields[i];
        }
        journal_cmd(l, (int)n + 2, argv, lens);
    } /* out of memory: the entries stay; a LeaseSync's seq tells billing they were applied */
    free(argv);
    free(lens);
    free(fields);
}

/* The batch a new LeaseSync carries, a prefix of the queue: "_b" says this seq carries the ended
 * requests up to the batch's last, so that billing can tell which it has applied should this
 * replica die before the answer (journal.h). The journal's expiry is renewed with it. */
static void journal_mark_batch(struct billing_lease *l)
{
    char value[48];
    const char *argv[] = {"HSET",
                          l->jkey,
                          BILLING_JOURNAL_MARK,
                          l->journal_lost ? "lost" : "ok",
                          BILLING_JOURNAL_BATCH,
                          value};
    size_t lens[6];

    if (!journal_on(l) || l->batch.n == 0)
        return;
    for (int i = 0; i < 5; i++)
        lens[i] = strlen(argv[i]);
    lens[5] = (size_t)billing_journal_format_batch(value, l->seq, l->batch.v[l->batch.n - 1].end);
    journal_cmd(l, 6, argv, lens);
    journal_expire(l);
}

/* The lease is closed: billing will never expire it, its journal is done with. */
static void journal_drop(struct billing_lease *l)
{
    const char *argv[] = {"DEL", l->jkey};

    if (l->jkey[0] != '\0')
        journal_cmd(l, 2, argv, NULL);
    l->jkey[0] = '\0';
}

/* ---- admission ---- */

/* Takes t's worst case from the lease when it fits. 1 when admitted. */
static int lease_take(struct billing_lease *l, struct billing_lease_ticket *t)
{
    const struct lease_ratio *r = ratio_of(l, t->model);
    uint64_t now = svc_loop_clock_ms();
    long long w;

    if (!l->known || l->retired || l->closing || r == NULL || now >= l->valid_until_ms)
        return 0;
    w = cost_of(r, t->prompt, t->max_completion);
    if (w > l->largest)
        l->largest = w;
    if (!l->unlimited && l->units - l->reserved - l->unacked < w)
        return 0;
    l->reserved += w;
    l->tickets++;
    t->lease = l;
    t->units = w;
    t->jid = ++l->ls->jids;
    l->last_use_ms = now;
    {
        struct billing_journal_entry e = {.prompt = t->prompt, .completion = t->max_completion};
        svc_util_str_copy(e.model, sizeof(e.model), t->model);
        journal_put(l, t->jid, &e);
    }
    return 1;
}

/* The lease size to ask for: what is in flight and waiting, twice, and at least WANT_REQUESTS
 * of its largest request. 0 while lean (shrink to what is in flight). */
static long long lease_want(const struct billing_lease *l)
{
    long long waiting = 0, want, largest = l->largest;

    if (l->closing || svc_loop_clock_ms() < l->lean_until_ms)
        return 0;
    for (const struct billing_lease_ticket *t = l->waiters; t != NULL; t = t->wnext) {
        const struct lease_ratio *r = ratio_of(l, t->model);
        const struct lease_ratio one = {.in_milli = 1000, .out_milli = 1000};
        /* A model not priced yet is guessed at 1:1; the answer brings its ratio, and the
         * request waits for another call if the guess was short (lease_send). */
        long long w = cost_of(r != NULL ? r : &one, t->prompt, t->max_completion);
        waiting += w;
        if (w > largest)
            largest = w;
    }
    want = 2 * (l->reserved + l->unacked + waiting);
    if (want < WANT_REQUESTS * largest)
        want = WANT_REQUESTS * largest;
    return want;
}

int billing_lease_admit(struct billing_leases *ls, struct billing_lease_ticket *t, int64_t user_id,
                        const char *username, int create_unlimited, const char *model,
                        long long prompt, long long max_completion, billing_lease_admit_cb cb,
                        void *ctx)
{
    struct billing_lease *l;

    memset(t, 0, sizeof(*t));
    if (ls == NULL || ls->closing_all || user_id <= 0 || prompt < 0 || max_completion < 0)
        return BILLING_LEASE_FALLBACK;
    snprintf(t->model, sizeof(t->model), "%s", model != NULL ? model : "");
    t->prompt = prompt;
    t->max_completion = max_completion;
    l = lease_get(ls, user_id, username, create_unlimited);
    /* Lean, or billing did not answer the last call (it is being repeated): the exact path
     * decides at once rather than waiting for billing to come back. */
    if (l == NULL || svc_loop_clock_ms() < l->lean_until_ms || (l->has_batch && l->call == NULL))
        return BILLING_LEASE_FALLBACK;
    if (lease_take(l, t)) {
        lease_schedule(l); /* a refill may be due */
        return BILLING_LEASE_ADMITTED;
    }
    /* Wait for a LeaseSync that knows of this request (its ratio, a larger lease). */
    t->lease = l;
    t->waiting = 1;
    t->cb = cb;
    t->ctx = ctx;
    t->asked_seq = l->seq + 1;
    *l->waiters_tail = t;
    l->waiters_tail = &t->wnext;
    l->last_use_ms = svc_loop_clock_ms();
    lease_schedule(l);
    return BILLING_LEASE_WAIT;
}

static void waiter_unlink(struct billing_lease_ticket *t)
{
    struct billing_lease *l = t->lease;
    struct billing_lease_ticket **pp = &l->waiters;

    while (*pp != NULL && *pp != t)
        pp = &(*pp)->wnext;
    if (*pp == t)
        *pp = t->wnext;
    l->waiters_tail = &l->waiters;
    while (*l->waiters_tail != NULL)
        l->waiters_tail = &(*l->waiters_tail)->wnext;
    t->wnext = NULL;
    t->waiting = 0;
}

void billing_lease_cancel(struct billing_lease_ticket *t)
{
    struct billing_lease *l = t->lease;

    if (l == NULL || !t->waiting)
        return;
    waiter_unlink(t);
    t->lease = NULL;
    (void)lease_maybe_free(l);
}

/* Answers a waiting admission (cb may start the request, or end it). */
static void waiter_answer(struct billing_lease_ticket *t, int result)
{
    billing_lease_admit_cb cb = t->cb;
    void *ctx = t->ctx;

    waiter_unlink(t);
    if (result != BILLING_LEASE_ADMITTED)
        t->lease = NULL;
    cb(ctx, result);
}

/*
 * After a LeaseSync was answered (or failed: failed = 1): admits the waiters that fit now; those
 * the answered call already knew of and that still do not fit make the lease lean (shrink it,
 * then the exact path); on failure they take the exact path at once.
 */
static void waiters_run(struct billing_lease *l, int failed, int64_t answered_seq, int shrunk)
{
    struct billing_lease_ticket *t = l->waiters, *next;

    for (; t != NULL; t = next) {
        next = t->wnext;
        if (!failed && lease_take(l, t)) {
            waiter_answer(t, BILLING_LEASE_ADMITTED);
        } else if (failed || l->retired || shrunk) {
            waiter_answer(t, BILLING_LEASE_FALLBACK);
        } else if (t->asked_seq <= answered_seq) {
            /* The balance could not grow the lease enough: give back what no request uses,
             * then let billing's Reserve decide (it caps the hold or refuses). */
            if (l->lean_until_ms <= svc_loop_clock_ms())
                l->lean_until_ms = svc_loop_clock_ms() + (uint64_t)l->ls->o.lean_ms;
        }
    }
}

/* ---- ending a request ---- */

void billing_lease_settle(struct billing_lease_ticket *t, const char *rid, const char *request_id,
                          const char *model, long long prompt_tokens, long long completion_tokens,
                          int estimated)
{
    struct billing_lease *l = t->lease;
    struct lease_charge c = {0};
    const struct lease_ratio *r;

    if (l == NULL || t->waiting)
        return;
    t->lease = NULL;
    l->reserved -= t->units;
    l->tickets--;
    snprintf(c.request_id, sizeof(c.request_id), "%s", request_id);
    snprintf(c.model, sizeof(c.model), "%s", model != NULL ? model : "");
    c.prompt = prompt_tokens;
    c.completion = completion_tokens;
    c.estimated = estimated;
    c.jid = t->jid;
    c.end = ++l->ends;
    {
        struct billing_journal_entry e = {.ended = 1,
                                          .end = c.end,
                                          .prompt = prompt_tokens,
                                          .completion = completion_tokens,
                                          .estimated = estimated};
        svc_util_str_copy(e.model, sizeof(e.model), c.model);
        svc_util_str_copy(e.request_id, sizeof(e.request_id), c.request_id);
        journal_put(l, c.jid, &e);
        if (journal_on(l)) /* in Redis before the caller answers its client */
            svc_redis_async_flush(l->ls->o.journal);
    }
    r = ratio_of(l, c.model);
    c.cost = r != NULL ? cost_of(r, prompt_tokens, completion_tokens) : t->units;
    if (list_push(&l->queue, &c) != SVC_OK) {
        SVC_LOG_ERR(rid, "billing", "out of memory: the charge of %s (%lld + %lld tokens) is lost",
                    request_id, prompt_tokens, completion_tokens);
        (void)lease_maybe_free(l);
        return;
    }
    l->unacked += c.cost;
    lease_schedule(l);
}

void billing_lease_release(struct billing_lease_ticket *t)
{
    struct billing_lease *l = t->lease;

    if (l == NULL || t->waiting)
        return;
    t->lease = NULL;
    l->reserved -= t->units;
    l->tickets--;
    journal_forget(l, NULL, 1, t->jid);
    if (!lease_maybe_free(l))
        lease_schedule(l);
}

/* ---- LeaseSync ---- */

/*
 * Decides whether the lease needs a call now, later (the timer), or never again (freed):
 * waiters, a refill below half its size, a renewal past a quarter of its validity, a close
 * (draining, idle) go now; charges wait for flush_ms so that one call carries many.
 */
static void lease_schedule(struct billing_lease *l)
{
    struct billing_leases *ls = l->ls;
    uint64_t now = svc_loop_clock_ms(), due = UINT64_MAX;

    if (l->call != NULL || l->has_batch)
        return; /* its answer (or its retry timer) schedules again */
    if (lease_maybe_free(l))
        return;
    if ((l->queue.n > 0 || l->reserved > l->told_inflight) && l->flush_at_ms == 0)
        l->flush_at_ms = now + (uint64_t)ls->o.flush_ms; /* the first waits the longest */
    if (l->retired) { /* closed: only its charges are still reported */
        if (l->queue.n > 0)
            due = l->flush_at_ms;
    } else if (l->waiters != NULL || l->closing || !l->known || now >= l->renew_at_ms) {
        due = now;
    } else {
        long long want = lease_want(l), left = l->units - l->reserved - l->unacked;
        if (!l->unlimited && (left < want / 2 || l->units > 4 * want + 1))
            due = now; /* refill, or give back what the traffic no longer needs */
        else if (l->flush_at_ms > 0)
            due = l->flush_at_ms; /* charges, or requests billing must know of */
        if (l->tickets == 0 && l->queue.n == 0) {
            if (now >= l->last_use_ms + (uint64_t)ls->o.idle_ms) {
                l->closing = 1; /* idle: give the units back */
                due = now;
            } else if (l->last_use_ms + (uint64_t)ls->o.idle_ms < due) {
                due = l->last_use_ms + (uint64_t)ls->o.idle_ms;
            }
        }
        if (l->renew_at_ms < due)
            due = l->renew_at_ms;
    }
    if (due == UINT64_MAX)
        return;
    if (due <= now) {
        lease_send(l);
        return;
    }
    if (svc_timer_start(l->timer, due - now) != SVC_OK)
        lease_send(l);
}

static void lease_answered(struct billing_lease *l, const Chatweb__Billing__LeaseSyncResponse *out)
{
    int64_t seq = l->seq;
    int shrunk = l->sent_want == 0 && !l->sent_close;
    uint64_t now = svc_loop_clock_ms();
    long long acked = 0;

    for (size_t i = 0; i < l->batch.n; i++)
        acked += l->batch.v[i].cost;
    l->unacked -= acked;
    journal_forget(l, l->batch.v, l->batch.n, 0); /* billing has them */
    l->batch.n = 0;
    l->has_batch = 0;
    l->attempts = 0;
    l->known = 1;
    l->units = out->units;
    l->told_inflight = l->sent_inflight;
    l->unlimited = out->unlimited;
    for (size_t i = 0; i < out->n_prices; i++) {
        const Chatweb__Billing__ModelPrice *p = out->prices[i];
        struct lease_ratio *r = (struct lease_ratio *)ratio_of(l, p->model);
        if (r == NULL && l->nratios < BILLING_LEASE_MODELS)
            r = &l->ratios[l->nratios++];
        if (r == NULL)
            r = &l->ratios[(unsigned)seq % BILLING_LEASE_MODELS]; /* replace one */
        snprintf(r->model, sizeof(r->model), "%s", p->model);
        r->in_milli = p->input_milli;
        r->out_milli = p->output_milli;
    }
    if (out->closed || out->result != CHATWEB__BILLING__RESERVE_RESULT__RESERVE_OK ||
        l->sent_close) {
        l->retired = 1;
        l->units = 0;
        journal_drop(l);
    } else {
        int64_t ttl = out->expires_at_ms - svc_util_wallclock_ms();
        /* A balance that is small beside the lease it would feed is served exactly: the lease
         * shrinks to its requests in flight and the next ones take the Reserve path, so no
         * replica's lease keeps the end of a balance from a request another replica gets. */
        if (!out->unlimited && l->sent_want > 0 && out->balance < LEAN_FACTOR * l->sent_want &&
            now >= l->lean_until_ms)
            l->lean_until_ms = now + (uint64_t)l->ls->o.lean_ms;
        l->valid_until_ms = ttl > 0 ? now + (uint64_t)ttl / 2 : 0;
        l->renew_at_ms = ttl > 0 ? now + (uint64_t)ttl / 4 : now;
    }
    waiters_run(l, 0, seq, shrunk && now < l->lean_until_ms);
}

static void on_synced(void *ctx, int err, ProtobufCMessage *out_msg, const char *errmsg)
{
    struct billing_lease *l = ctx;
    struct billing_leases *ls = l->ls;
    uint64_t waited = svc_loop_clock_ms() - l->first_try_ms;

    l->call = NULL;
    if (err == SVC_OK) {
        if (l->attempts > 1)
            SVC_LOG_NOTICE(NULL, "billing", "LeaseSync %s/%" PRId64 " went through at attempt %d",
                           l->id, l->seq, l->attempts);
        lease_answered(l, (const void *)out_msg);
        svc_rpc_message_destroy(&out_msg);
        lease_schedule(l);
        return;
    }
    if (out_msg != NULL)
        svc_rpc_message_destroy(&out_msg);
    waiters_run(l, 1, l->seq, 0); /* nobody waits for billing to come back */
    if ((err == SVC_EUNAVAIL || err == SVC_ETIMEDOUT) &&
        waited < (uint64_t)ls->o.retry_for_s * 1000) {
        uint64_t wait = RETRY_MS;
        for (int i = 1; i < l->attempts && wait < RETRY_MAX_MS; i++)
            wait *= 4;
        if (wait > RETRY_MAX_MS)
            wait = RETRY_MAX_MS;
        if (l->attempts == 1)
            SVC_LOG_WARN(NULL, "billing",
                         "LeaseSync %s/%" PRId64 " failed (%s); retrying for up "
                         "to %ld s",
                         l->id, l->seq, errmsg ? errmsg : svc_strerror(err), ls->o.retry_for_s);
        l->known = 0; /* no admission from a lease billing may have expired */
        if (svc_timer_start(l->timer, wait) == SVC_OK)
            return;
    }
    SVC_LOG_ERR(NULL, "billing",
                "LeaseSync %s/%" PRId64 " failed after %d attempt(s): %s; its "
                "%zu charge(s) are lost and the lease is left to billing's expiry",
                l->id, l->seq, l->attempts, errmsg ? errmsg : svc_strerror(err), l->batch.n);
    for (size_t i = 0; i < l->batch.n; i++)
        l->unacked -= l->batch.v[i].cost;
    l->batch.n = 0;
    l->has_batch = 0;
    l->retired = 1;
    lease_schedule(l);
}

/* Sends the lease's call: the one not yet answered again, else a new one with what is queued. */
static void lease_send(struct billing_lease *l)
{
    struct billing_leases *ls = l->ls;
    Chatweb__Billing__LeaseSyncRequest in = CHATWEB__BILLING__LEASE_SYNC_REQUEST__INIT;
    Chatweb__Billing__LeaseCharge *cv = NULL, **cp = NULL;
    char *models[BILLING_LEASE_MODELS];
    size_t nmodels = 0;

    svc_timer_stop(l->timer);
    if (l->call != NULL)
        return;
    if (!l->has_batch) { /* a new call: take the queue (up to billing's bound) */
        size_t n = l->queue.n < SYNC_CHARGES_MAX ? l->queue.n : SYNC_CHARGES_MAX;
        struct charge_list tmp = l->batch;
        l->batch = l->queue;
        l->queue = tmp;
        l->queue.n = 0;
        if (l->batch.n > n) { /* the rest waits for the next call */
            for (size_t i = n; i < l->batch.n; i++)
                (void)list_push(&l->queue, &l->batch.v[i]);
            l->batch.n = n;
        }
        l->seq++;
        l->has_batch = 1;
        l->flush_at_ms = 0; /* what is queued from now on starts its own wait */
        l->attempts = 0;
        l->first_try_ms = svc_loop_clock_ms();
        l->sent_close = l->closing || l->retired;
        l->sent_want = l->sent_close ? 0 : lease_want(l);
        l->sent_inflight = l->reserved;
        journal_mark_batch(l);
    }
    /* The batch's seq in Redis before billing can apply it: a replica that dies once billing has
     * applied it must not leave entries that still say no LeaseSync carried them. */
    if (journal_on(l) && l->batch.n > 0)
        svc_redis_async_flush(ls->o.journal);
    if (l->batch.n > 0) {
        cv = calloc(l->batch.n, sizeof(*cv));
        cp = calloc(l->batch.n, sizeof(*cp));
        if (cv == NULL || cp == NULL) {
            free(cv);
            free(cp);
            on_synced(l, SVC_EUNAVAIL, NULL, "out of memory");
            return;
        }
        for (size_t i = 0; i < l->batch.n; i++) {
            chatweb__billing__lease_charge__init(&cv[i]);
            cv[i].request_id = l->batch.v[i].request_id;
            cv[i].model = l->batch.v[i].model;
            cv[i].prompt_tokens = l->batch.v[i].prompt;
            cv[i].completion_tokens = l->batch.v[i].completion;
            cv[i].estimated = l->batch.v[i].estimated;
            cp[i] = &cv[i];
        }
    }
    for (int i = 0; i < l->nratios; i++)
        models[nmodels++] = l->ratios[i].model;
    /* A waiter whose model this call prices for the first time was sized on a guess: only the
     * call after it can say the balance is short for it. */
    for (struct billing_lease_ticket *t = l->waiters; t != NULL; t = t->wnext)
        if (ratio_of(l, t->model) == NULL && t->asked_seq <= l->seq)
            t->asked_seq = l->seq + 1;
    for (struct billing_lease_ticket *t = l->waiters; t != NULL && nmodels < BILLING_LEASE_MODELS;
         t = t->wnext) {
        int seen = 0;
        for (size_t i = 0; i < nmodels && !seen; i++)
            seen = strcmp(models[i], t->model) == 0;
        if (!seen)
            models[nmodels++] = t->model;
    }
    in.lease_id = l->id;
    in.user_id = l->user_id;
    in.seq = l->seq;
    in.n_charges = l->batch.n;
    in.charges = cp;
    in.inflight_units = l->sent_inflight;
    in.want_units = l->sent_want;
    in.close = l->sent_close;
    in.n_models = nmodels;
    in.models = models;
    in.source = ls->source;
    in.create_unlimited = l->create_unlimited;
    in.username = l->username;
    l->attempts++;
    if (svc_rpc_call_async(&l->call, ls->rpc, ls->multi, "/rpc/Billing/LeaseSync", &in.base,
                           &chatweb__billing__lease_sync_response__descriptor, NULL, on_synced,
                           l) != SVC_OK) {
        l->call = NULL;
        free(cv);
        free(cp);
        on_synced(l, SVC_EUNAVAIL, NULL, "cannot start the call");
        return;
    }
    free(cv); /* the request was serialised by the call */
    free(cp);
}

/* ---- draining, teardown ---- */

void billing_leases_close_all(struct billing_leases *ls)
{
    ls->closing_all = 1;
    for (int b = 0; b < BUCKETS; b++) {
        struct billing_lease *l = ls->buckets[b], *next;
        for (; l != NULL; l = next) {
            next = l->next;
            l->closing = 1;
            while (l->waiters != NULL)
                waiter_answer(l->waiters, BILLING_LEASE_FALLBACK);
            lease_schedule(l);
        }
    }
}

size_t billing_leases_count(const struct billing_leases *ls)
{
    return ls != NULL ? ls->count : 0;
}

void billing_leases_destroy(struct billing_leases **lsp)
{
    struct billing_leases *ls = lsp != NULL ? *lsp : NULL;

    if (ls == NULL)
        return;
    ls->closing_all = 1;
    for (int b = 0; b < BUCKETS; b++) {
        while (ls->buckets[b] != NULL) {
            struct billing_lease *l = ls->buckets[b];
            while (l->waiters != NULL)
                waiter_answer(l->waiters, BILLING_LEASE_FALLBACK);
            if (l->queue.n + l->batch.n > 0 || l->reserved > 0)
                SVC_LOG_ERR(NULL, "shutdown",
                            "lease %s: %zu charge(s) unreported and %lld units "
                            "in flight are left to billing's expiry",
                            l->id, l->queue.n + l->batch.n, l->reserved);
            lease_free(l);
        }
    }
    free(ls);
    *lsp = NULL;
}
