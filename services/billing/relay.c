/* Outbox relay and hold-expiry sweeper (see relay.h and docs/billing.md). */
#include "relay.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "billing.pb-c.h"
#include "store.h"
#include "svc/buf.h"
#include "svc/db.h"
#include "svc/json.h"
#include "svc/log.h"
#include "svc/metrics.h"
#include "svc/redis.h"
#include "svc/util.h"

#define RELAY_BATCH_MAX 1000
/* The most an event's JSON may take: its texts are ledger columns of a few hundred bytes. */
#define EVENT_JSON_MAX 16384
/* Outbox rows deleted by one statement (one text, so one prepared statement for every count). */
#define DELETE_IDS 32
#define DELETE_SQL                                                                                 \
    "DELETE FROM billing_outbox WHERE id IN (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?," \
    "?,?,?,?,?)"
#define RELAY_BACKOFF_MAX_MS 2000
/* After a pass that moved events, the relay lets this long pass before the next one, kicked or
 * not: under load every LeaseSync kicks it, and a pass per kick moved a handful of rows at the
 * cost of a whole pass (the lease renewal, the read, the deletes, the commit). An event waits at
 * most this much longer (docs/billing.md "Relay"). */
#define RELAY_GATHER_MS 5
#define REDIS_TIMEOUT_MS 2000

struct billing_relay {
    struct svc_db *db;
    struct billing_store *store;
    struct billing_relay_opts o;
    struct billing_relay_stats st;
    struct svc_redis *redis;
    char owner[64];
    int64_t renewed_ms; /* when the relay thread last renewed its lease (0: not the holder) */
    /* Rows at the head of the outbox that may be in the stream already: a pass XADDed them and
     * could not take them out (too few replicas confirmed, a lost connection), or another
     * replica held the lease before. The next pass looks for them in the stream's tail before
     * it sends anything (relay_pass). 0: none. */
    int unsure;
    char confirm_key[300]; /* a key in the stream's slot, written when nothing else is */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    int kicked;
    int relay_started, sweep_started, prices_started;
    pthread_t relay_th, sweep_th, prices_th;
};

/* Waits up to ms or until stop, or a kick when kicks (which it then takes). Returns 1 when
 * stopping. */
static int nap(struct billing_relay *r, int64_t ms, int kicks)
{
    struct timespec ts;
    int stop;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L)
        ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&r->mu);
    while (!r->stop && !(kicks && r->kicked))
        if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) != 0)
            break;
    if (kicks)
        r->kicked = 0;
    stop = r->stop;
    pthread_mutex_unlock(&r->mu);
    return stop;
}

void billing_relay_kick(struct billing_relay *r)
{
    if (r == NULL)
        return;
    pthread_mutex_lock(&r->mu);
    r->kicked = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* ---- sweeper ---- */

/* Polls the price table's version and reloads it when another replica changed it. */
static void *prices_main(void *ctx)
{
    struct billing_relay *r = ctx;
    int failing = 0;

    while (!nap(r, r->o.prices_refresh_ms, 0)) {
        int rc = billing_store_prices_refresh(r->store);
        if (rc != SVC_OK && !failing)
            SVC_LOG_WARN(NULL, "prices", "cannot reload prices: %s (the last loaded apply)",
                         svc_strerror(rc));
        failing = rc != SVC_OK;
    }
    return NULL;
}

/* ---- lease journals (journal.h) ---- */

/* The lease's journal as Redis has it: usable when its mark is "ok" and every entry parses. */
static void journal_read(void *ctx, const char *lease_id, struct billing_journal *j)
{
    struct billing_relay *r = ctx;
    struct svc_redis_reply *rep = NULL;
    char key[BILLING_JOURNAL_KEY_MAX];
    const char *argv[] = {"HGETALL", key};
    const char *why = NULL;
    size_t pairs = 0;
    int marked = 0, rc;

    memset(j, 0, sizeof(*j));
    if (billing_journal_key(key, sizeof(key), lease_id) != SVC_OK)
        return;
    if ((rc = svc_redis_cmd(r->redis, &rep, 2, argv, NULL)) != SVC_OK) {
        SVC_LOG_WARN(lease_id, "expire",
                     "cannot read the lease's journal: %s; its last reported "
                     "inflight is charged",
                     svc_strerror(rc));
        return;
    }
    if (svc_redis_reply_type(rep) == SVC_REDIS_ARRAY)
        pairs = svc_redis_reply_count(rep) / 2;
    else
        why = "not a hash";
    if (pairs > 0 && (j->v = calloc(pairs, sizeof(*j->v))) == NULL)
        why = "out of memory";
    for (size_t i = 0; why == NULL && i < pairs; i++) {
        size_t flen = 0, vlen = 0;
        const char *f = svc_redis_reply_str(svc_redis_reply_elem(rep, 2 * i), &flen);
        const char *v = svc_redis_reply_str(svc_redis_reply_elem(rep, 2 * i + 1), &vlen);

        if (f == NULL || v == NULL)
            why = "an entry is not a string";
        else if (flen == 1 && f[0] == BILLING_JOURNAL_MARK[0])
            marked = vlen == 2 && memcmp(v, "ok", 2) == 0;
        else if (flen == 2 && memcmp(f, BILLING_JOURNAL_BATCH, 2) == 0) {
            if (billing_journal_parse_batch(v, vlen, &j->batch_seq, &j->batch_end) != SVC_OK)
                why = "its \"_b\" does not parse";
        } else if (billing_journal_parse(v, vlen, &j->v[j->n++]) != SVC_OK)
            why = "an entry does not parse";
    }
    if (why == NULL && pairs > 0 && !marked)
        why = "its caller could not write every entry";
    if (why != NULL)
        SVC_LOG_WARN(lease_id, "expire",
                     "the lease's journal is not usable (%s); its last "
                     "reported inflight is charged",
                     why);
    j->usable = why == NULL && marked;
    if (!j->usable)
        billing_journal_clear(j);
    svc_redis_reply_destroy(&rep);
}

static void journal_drop(void *ctx, const char *lease_id)
{
    struct billing_relay *r = ctx;
    struct svc_redis_reply *rep = NULL;
    char key[BILLING_JOURNAL_KEY_MAX];
    const char *argv[] = {"DEL", key};

    /* best effort: a journal left behind expires (BILLING_JOURNAL_TTL_MS) and is never read
     * again, the lease being closed */
    if (billing_journal_key(key, sizeof(key), lease_id) == SVC_OK &&
        svc_redis_cmd(r->redis, &rep, 2, argv, NULL) == SVC_OK)
        svc_redis_reply_destroy(&rep);
}

static void *sweep_main(void *ctx)
{
    struct billing_relay *r = ctx;
    const struct billing_journal_io io = {journal_read, journal_drop, r};

    /* Not woken by kicks: they are the relay's (a commit makes no hold due), and a sweeper that
     * took them ran two statements per commit and left the relay waiting for its poll. */
    while (!nap(r, r->o.sweep_ms, 0)) {
        int n = 0, rc;

        do {
            rc = billing_expire_due(r->store, 100, r->redis != NULL ? &io : NULL, &n);
            if (rc != SVC_OK)
                SVC_LOG_WARN(NULL, "expire", "sweep failed: %s", svc_strerror(rc));
            else if (n > 0)
                svc_metric_add(r->st.expired, n);
        } while (rc == SVC_OK && n == 100);
        if (n > 0)
            billing_relay_kick(r);
        if (r->o.hold_retention_ms > 0 &&
            billing_purge_closed(r->store, svc_util_wallclock_ms() - r->o.hold_retention_ms, 1000,
                                 &n) == SVC_OK &&
            n > 0)
            SVC_LOG_INFO(NULL, "purge", "deleted %d closed hold(s) past retention", n);
    }
    svc_db_thread_end();
    return NULL;
}

/* ---- relay ---- */

/*
 * Takes or renews the lease. Returns 1 when this replica holds it. A holder renews it once half
 * of lease_ms has passed, not on every pass (under load a pass runs every few milliseconds, and
 * each renewal is a commit): it stays the only relay, since another replica takes the lease only
 * after until_ms, lease_ms after the last renewal, and this one renews or stops by half of that.
 */
static int lease(struct billing_relay *r, struct svc_db_conn *c)
{
    int64_t now = svc_util_wallclock_ms();
    struct svc_db_param p[] = {SVC_DB_TEXT(r->owner), SVC_DB_I64(now + r->o.lease_ms),
                               SVC_DB_TEXT(r->owner), SVC_DB_I64(now)};
    uint64_t n = 0;

    if (r->renewed_ms > 0 && now >= r->renewed_ms && now - r->renewed_ms < r->o.lease_ms / 2)
        return 1;
    r->renewed_ms = 0;
    if (svc_db_exec(c,
                    "UPDATE billing_relay_lease SET owner = ?, until_ms = ? "
                    "WHERE name = 'relay-runs' "
                    "AND (owner = ? OR until_ms < ?)",
                    p, 4, &n, NULL) != SVC_OK || n != 1)
        return 0;
    r->renewed_ms = now;
    return 1;
}

static void lease_drop(struct billing_relay *r, struct svc_db_conn *c)
{
    struct svc_db_param p[] = {SVC_DB_TEXT(r->owner)};

    if (svc_db_exec(c,
                    "UPDATE billing_relay_lease SET until_ms = 0 WHERE name = 'relay-runs' "
                    "AND owner = ?",
                    p, 1, NULL, NULL) != SVC_OK)
        SVC_LOG_INFO(NULL, "relay", "could not hand the lease back (the sql line says why)");
}

/*
 * The event as JSON (the stream entry's "json" field): BillingEvent's fields in its order, written
 * straight into a buffer (one document per ledger row: a tree and its dump cost the relay a
 * quarter of its time). NULL when out of memory or a text is not UTF-8 (SQL holds only UTF-8).
 */
static char *event_json(const Chatweb__Billing__BillingEvent *e)
{
    const struct {
        const char *name;
        const char *text; /* NULL: the number */
        long long number;
    } m[] = {
        {"event_id", e->event_id, 0},
        {"schema_version", NULL, e->schema_version},
        {"type", e->type, 0},
        {"ledger_id", NULL, e->ledger_id},
        {"user_id", NULL, e->user_id},
        {"username", e->username, 0},
        {"units", NULL, e->units},
        {"tokens_in", NULL, e->tokens_in},
        {"tokens_out", NULL, e->tokens_out},
        {"model", e->model, 0},
        {"request_id", e->request_id, 0},
        {"balance_after", NULL, e->balance_after},
        {"occurred_at_ms", NULL, e->occurred_at_ms},
        {"source", e->source, 0},
        {"note", e->note, 0},
        {"user_seq", NULL, (long long)e->user_seq},
    };
    struct svc_buf b;
    int rc = SVC_OK;

    svc_buf_init(&b, EVENT_JSON_MAX);
    for (size_t i = 0; rc == SVC_OK && i < sizeof(m) / sizeof(m[0]); i++) {
        rc = svc_buf_appendf(&b, "%c\"%s\":", i ? ',' : '{', m[i].name);
        if (rc == SVC_OK)
            rc = m[i].text ? svc_json_buf_string(&b, m[i].text, strlen(m[i].text))
                           : svc_buf_appendf(&b, "%lld", m[i].number);
    }
    if (rc == SVC_OK)
        rc = svc_buf_append(&b, "}", 1);
    if (rc != SVC_OK) {
        svc_buf_deinit(&b);
        return NULL;
    }
    return svc_buf_take(&b);
}

static const char *cell(struct svc_db_rows *rows, size_t i, size_t c)
{
    const char *s = svc_db_rows_text(rows, i, c);
    return s ? s : "";
}

/* The XADD of one outbox row: its arguments, and the buffers they point into (with the row's
 * cells, which must outlive it). */
struct event_cmd {
    const char *argv[16];
    size_t argvlen[16];
    char id[32], maxlen[32];
    uint8_t *pb;
    char *json;
};

static int event_cmd_make(struct billing_relay *r, struct svc_db_rows *rows, size_t i,
                          struct event_cmd *ec)
{
    Chatweb__Billing__BillingEvent e = CHATWEB__BILLING__BILLING_EVENT__INIT;
    size_t pblen;

    snprintf(ec->id, sizeof(ec->id), "bl-%lld", (long long)svc_db_rows_i64(rows, i, 1));
    snprintf(ec->maxlen, sizeof(ec->maxlen), "%lld", (long long)r->o.maxlen);
    e.event_id = ec->id;
    e.schema_version = 1;
    e.type = (char *)cell(rows, i, 4);
    e.ledger_id = svc_db_rows_i64(rows, i, 1);
    e.user_id = svc_db_rows_i64(rows, i, 2);
    e.username = (char *)cell(rows, i, 3);
    e.units = svc_db_rows_i64(rows, i, 5);
    e.tokens_in = svc_db_rows_i64(rows, i, 6);
    e.tokens_out = svc_db_rows_i64(rows, i, 7);
    e.model = (char *)cell(rows, i, 8);
    e.request_id = (char *)cell(rows, i, 9);
    e.balance_after = svc_db_rows_i64(rows, i, 10);
    e.occurred_at_ms = svc_db_rows_i64(rows, i, 11);
    e.source = (char *)cell(rows, i, 12);
    e.note = (char *)cell(rows, i, 13);
    e.user_seq = (uint64_t)svc_db_rows_i64(rows, i, 14);
    pblen = chatweb__billing__billing_event__get_packed_size(&e);
    ec->pb = malloc(pblen ? pblen : 1);
    ec->json = event_json(&e);
    if (ec->pb == NULL || ec->json == NULL)
        return SVC_ENOMEM;
    chatweb__billing__billing_event__pack(&e, ec->pb);
    {
        const char *argv[] = {"XADD", r->o.stream, "MAXLEN",          "~",  ec->maxlen, "*",
                              "id",   ec->id,      "type",            e.type, "v",        "1",
                              "pb",   (const char *)ec->pb, "json", ec->json};
        for (size_t k = 0; k < 16; k++) {
            ec->argv[k] = argv[k];
            ec->argvlen[k] = k == 13 ? pblen : strlen(argv[k]); /* pb is binary */
        }
    }
    return SVC_OK;
}

static void event_cmd_free(struct event_cmd *ec)
{
    free(ec->pb);
    free(ec->json);
    ec->pb = NULL;
    ec->json = NULL;
}

/* XADDs row i alone (following redirections). Returns 0 when Redis took it. */
static int send_row(struct billing_relay *r, struct svc_db_rows *rows, size_t i)
{
    struct svc_redis_reply *reply = NULL;
    struct event_cmd ec = {0};
    int rc = event_cmd_make(r, rows, i, &ec), acked = 0;

    if (rc == SVC_OK) {
        if (r->o.min_replicas > 0)
            rc = svc_redis_cmd_wait(r->redis, &reply, 16, ec.argv, ec.argvlen, r->o.min_replicas,
                                    REDIS_TIMEOUT_MS / 2, &acked);
        else
            rc = svc_redis_cmd(r->redis, &reply, 16, ec.argv, ec.argvlen);
        if (rc == SVC_OK && svc_redis_reply_type(reply) != SVC_REDIS_STRING) {
            const char *msg = svc_redis_reply_str(reply, NULL);
            SVC_LOG_WARN(NULL, "relay", "XADD refused: %s", msg ? msg : "(no text)");
            rc = SVC_EIO;
        } else if (rc == SVC_OK && acked < r->o.min_replicas) {
            /* Only the master has it: a failover now would lose it. The row stays in the
             * outbox and is sent again (consumers de-duplicate by id). */
            SVC_LOG_WARN(NULL, "relay", "event %s reached %d of %d replicas: sent again later",
                         ec.id, acked, r->o.min_replicas);
            rc = SVC_EUNAVAIL;
        }
    }
    svc_redis_reply_destroy(&reply);
    event_cmd_free(&ec);
    return rc;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The ledger id of a stream entry ([entry id, [field, value, ...]]) from its "id" field
 * ("bl-<ledger id>"); 0 when it has none. */
static int64_t entry_ledger_id(const struct svc_redis_reply *entry)
{
    const struct svc_redis_reply *f = svc_redis_reply_elem(entry, 1);

    for (size_t k = 0; f != NULL && k + 1 < svc_redis_reply_count(f); k += 2) {
        size_t len;
        const char *name = svc_redis_reply_str(svc_redis_reply_elem(f, k), &len);
        const char *v = svc_redis_reply_str(svc_redis_reply_elem(f, k + 1), NULL);
        if (name != NULL && len == 2 && memcmp(name, "id", 2) == 0 && v != NULL &&
            strncmp(v, "bl-", 3) == 0)
            return strtoll(v + 3, NULL, 10);
    }
    return 0;
}

/* How many of rows [0, n) are, in order, among the entries of tail (an XREVRANGE reply);
 * -1 when tail is not one or memory is short. */
static int rows_in_tail(struct svc_db_rows *rows, int n, const struct svc_redis_reply *tail)
{
    size_t found = 0, count;
    int64_t *ids;
    int have = 0;

    if (tail == NULL || svc_redis_reply_type(tail) != SVC_REDIS_ARRAY)
        return -1;
    count = svc_redis_reply_count(tail);
    if ((ids = calloc(count + 1, sizeof(*ids))) == NULL)
        return -1;
    for (size_t k = 0; k < count; k++) {
        int64_t id = entry_ledger_id(svc_redis_reply_elem(tail, k));
        if (id > 0)
            ids[found++] = id;
    }
    qsort(ids, found, sizeof(*ids), cmp_i64);
    while (have < n) {
        int64_t id = svc_db_rows_i64(rows, (size_t)have, 1);
        if (bsearch(&id, ids, found, sizeof(*ids), cmp_i64) == NULL)
            break;
        have++;
    }
    free(ids);
    return have;
}

/* XREVRANGE <stream> + - COUNT <count>: the stream's last count entries, newest first. */
#define TAIL_ARGC 6
static void tail_cmd(const struct billing_relay *r, int count, char buf[24],
                     const char *argv[TAIL_ARGC])
{
    snprintf(buf, 24, "%d", count);
    argv[0] = "XREVRANGE", argv[1] = r->o.stream, argv[2] = "+", argv[3] = "-";
    argv[4] = "COUNT", argv[5] = buf;
}

/*
 * How many leading rows are in the stream already (*have): the last r->unsure entries of the
 * stream, matched by event id. Only the relay's lease holder writes the stream, so what an
 * unconfirmed pass (or the holder before) added is in that tail, and a failover keeps a prefix
 * of it (replication is in order): the rows found are a prefix of the outbox's head, and the
 * first one missing and all after it are sent (again). Not sending a row that is there is what
 * keeps the stream free of duplicates across failovers and lease changes.
 */
static int stream_has(struct billing_relay *r, struct svc_db_rows *rows, int n, int *have)
{
    char count[24];
    const char *argv[TAIL_ARGC];
    struct svc_redis_reply *reply = NULL;
    int rc;

    tail_cmd(r, r->unsure, count, argv);
    rc = svc_redis_cmd(r->redis, &reply, TAIL_ARGC, argv, NULL);
    *have = rc == SVC_OK ? rows_in_tail(rows, n, reply) : 0;
    if (rc == SVC_OK && *have < 0)
        rc = SVC_EIO, *have = 0;
    if (*have > 0)
        SVC_LOG_INFO(NULL, "relay", "%d event(s) found in the stream already: not sent again",
                     *have);
    svc_redis_reply_destroy(&reply);
    return rc;
}

/*
 * XADDs rows [from, n) in one pipeline (one round trip, one WAIT). Rows [0, from) were found in
 * the stream (stream_has): the pipeline reads the stream's tail again after its writes, and they
 * count only if they are still there (the connection may be on a master the sentinels promoted
 * since, which lacks them); with nothing to add, a write of confirm_key gives WAIT something to
 * confirm. *ok receives how many leading rows are done: Redis took them and, with
 * BILLING_EVENTS_REPLICAS, enough replicas confirmed them (all or none then). SVC_OK when the
 * rest (a refusal or a redirection, which send_row follows) may be sent one by one; an error
 * when the pass must stop (Redis unreachable, too few replicas).
 */
static int send_rows(struct billing_relay *r, struct svc_db_rows *rows, int from, int n, int *ok)
{
    struct event_cmd *ec;
    struct svc_redis_reply **replies;
    const char *const **argv;
    const size_t **argvlen;
    int *argc;
    int answered = 0, acked = 0, made = 0, writes, cmds, rc = SVC_ENOMEM;
    char count[24];
    const char *confirm[] = {"SET", r->confirm_key, r->owner, "PX", "86400000"};
    const char *tail[TAIL_ARGC];

    *ok = 0;
    if (from >= n && (from == 0 || r->o.min_replicas == 0)) {
        *ok = from;
        return SVC_OK;
    }
    writes = from < n ? n - from : 1;
    cmds = writes + (from > 0);
    ec = calloc((size_t)cmds, sizeof(*ec));
    replies = calloc((size_t)cmds, sizeof(*replies));
    argv = calloc((size_t)cmds, sizeof(*argv));
    argvlen = calloc((size_t)cmds, sizeof(*argvlen));
    argc = calloc((size_t)cmds, sizeof(*argc));
    if (ec == NULL || replies == NULL || argv == NULL || argvlen == NULL || argc == NULL)
        goto out;
    if (from >= n) {
        argc[0] = 5;
        argv[0] = confirm;
        made = 1;
    }
    for (; from + made < n; made++) {
        if (event_cmd_make(r, rows, (size_t)(from + made), &ec[made]) != SVC_OK)
            break;
        argc[made] = 16;
        argv[made] = ec[made].argv;
        argvlen[made] = ec[made].argvlen;
    }
    writes = made;
    if (from > 0) {
        tail_cmd(r, r->unsure + made, count, tail);
        argc[made] = TAIL_ARGC;
        argv[made++] = tail;
    }
    rc = svc_redis_cmd_pipeline(r->redis, made, argc, argv, argvlen, replies, &answered,
                                r->o.min_replicas, REDIS_TIMEOUT_MS / 2, &acked);
    if (from >= n)
        *ok = answered > 0 && svc_redis_reply_type(replies[0]) == SVC_REDIS_STATUS ? n : 0;
    else
        for (*ok = from; *ok - from < writes && *ok - from < answered &&
                         svc_redis_reply_type(replies[*ok - from]) == SVC_REDIS_STRING;)
            (*ok)++;
    if (*ok > 0 && from > 0 &&
        (answered < made || rows_in_tail(rows, from, replies[made - 1]) != from)) {
        SVC_LOG_WARN(NULL, "relay", "events found in the stream are not on this master: "
                                    "looked for again");
        *ok = 0;
        if (rc == SVC_OK)
            rc = SVC_EUNAVAIL;
    }
    if (*ok > 0 && r->o.min_replicas > 0 && (rc != SVC_OK || acked < r->o.min_replicas)) {
        SVC_LOG_WARN(NULL, "relay", "%d event(s) reached %d of %d replicas: confirmed later",
                     *ok, rc == SVC_OK ? acked : 0, r->o.min_replicas);
        *ok = 0;
        if (rc == SVC_OK)
            rc = SVC_EUNAVAIL;
    }
out:
    for (int i = 0; replies != NULL && i < answered; i++)
        svc_redis_reply_destroy(&replies[i]);
    for (int i = 0; ec != NULL && i < cmds; i++)
        event_cmd_free(&ec[i]);
    free(ec);
    free(replies);
    free(argv);
    free(argvlen);
    free(argc);
    return rc;
}

/*
 * What a pass takes out of the outbox: the outbox rows whose events were all sent, and the one
 * it cut (its LIMIT, or a refusal from Redis), if any, which keeps the events not sent yet.
 */
struct outbox_done {
    int64_t ids[RELAY_BATCH_MAX];
    size_t n;
    int64_t cut_id, cut_from, cut_n; /* cut_id 0: none */
};

/*
 * Rows [0, sent) of a pass, ordered by outbox row and ledger id: an outbox row (column 0) stands
 * for ledger rows ledger_id .. ledger_id + n - 1 (columns 15, 16).
 */
static void outbox_done_of(struct svc_db_rows *rows, size_t sent, struct outbox_done *d)
{
    d->n = 0;
    d->cut_id = d->cut_from = d->cut_n = 0;
    for (size_t i = 0; i < sent; i++) {
        int64_t oid = svc_db_rows_i64(rows, i, 0);
        int64_t last = svc_db_rows_i64(rows, i, 15) + svc_db_rows_i64(rows, i, 16) - 1;
        int64_t upto;

        while (i + 1 < sent && svc_db_rows_i64(rows, i + 1, 0) == oid)
            i++;
        upto = svc_db_rows_i64(rows, i, 1); /* the last ledger row of oid that was sent */
        if (upto < last) {
            d->cut_id = oid; /* only the last one can be cut */
            d->cut_from = upto + 1;
            d->cut_n = last - upto;
        } else {
            d->ids[d->n++] = oid;
        }
    }
}

/* The statements that apply d: DELETE_IDS ids per DELETE (the unused places are 0, which no row
 * has), and the UPDATE of the cut row. */
static int outbox_forget(struct svc_db_conn *c, const struct outbox_done *d)
{
    int rc = SVC_OK;

    for (size_t i = 0; rc == SVC_OK && i < d->n; i += DELETE_IDS) {
        struct svc_db_param p[DELETE_IDS];
        for (size_t k = 0; k < DELETE_IDS; k++)
            p[k] = svc_db_param_i64(i + k < d->n ? d->ids[i + k] : 0);
        rc = svc_db_exec(c, DELETE_SQL, p, DELETE_IDS, NULL, NULL);
    }
    if (rc == SVC_OK && d->cut_id != 0) {
        struct svc_db_param p[] = {SVC_DB_I64(d->cut_from), SVC_DB_I64(d->cut_n),
                                   SVC_DB_I64(d->cut_id)};
        rc = svc_db_exec(c, "UPDATE billing_outbox SET ledger_id = ?, n = ? WHERE id = ?", p, 3,
                         NULL, NULL);
    }
    return rc;
}

/* One pass: relays up to batch events. Returns events sent, or a negative error. */
static int relay_pass(struct billing_relay *r, struct svc_db_conn *c)
{
    struct svc_db_rows *rows = NULL;
    struct svc_db_param p[] = {SVC_DB_I64(r->o.batch), SVC_DB_I64(r->o.batch)};
    size_t count;
    int sent = 0, have = 0, rc;

    /* The oldest outbox rows first (at most batch of them, each one or more ledger rows), then
     * their ledger rows in order, at most batch in all. */
    rc = svc_db_query(c,
                      "SELECT o.id, l.id, l.user_id, COALESCE(a.username, ''), l.kind, l.units, "
                      "l.tokens_in, l.tokens_out, l.model, l.request_id, l.balance_after, "
                      "l.created_at_ms, l.source, l.note, l.user_seq, o.ledger_id, o.n "
                      "FROM (SELECT id, ledger_id, n FROM billing_outbox ORDER BY id LIMIT ?) o "
                      "JOIN billing_ledger l ON l.id BETWEEN o.ledger_id AND o.ledger_id + o.n - 1 "
                      "LEFT JOIN billing_accounts a ON a.user_id = l.user_id "
                      "ORDER BY o.id, l.id LIMIT ?",
                      p, 2, &rows);
    if (rc != SVC_OK)
        return rc;
    /* Stop at the first failure: a later event of the same user must not overtake it. The
     * batch goes in one pipeline; what it could not place (a refusal, a redirection) is sent
     * row by row, where redirections are followed. */
    count = svc_db_rows_count(rows);
    if (r->unsure > 0 && count > 0 && (rc = stream_has(r, rows, (int)count, &have)) != SVC_OK) {
        svc_db_rows_destroy(&rows);
        return rc;
    }
    rc = send_rows(r, rows, have, (int)count, &sent);
    for (size_t i = (size_t)sent; rc == SVC_OK && i < count; i++) {
        if ((rc = send_row(r, rows, i)) != SVC_OK)
            break;
        sent++;
    }
    /* What was sent leaves the outbox at once, in one transaction (one commit, not one per row).
     * Events sent but not taken out are sent again later (at-least-once; consumers de-duplicate
     * by id). */
    if (sent > 0) {
        struct outbox_done d;
        int drc, tx;

        outbox_done_of(rows, (size_t)sent, &d);
        /* one statement needs no transaction of its own (two round trips less per pass) */
        tx = (d.n + DELETE_IDS - 1) / DELETE_IDS + (d.cut_id != 0) > 1;
        drc = tx ? svc_db_begin(c) : SVC_OK;
        if (drc == SVC_OK)
            drc = outbox_forget(c, &d);
        if (drc == SVC_OK && tx)
            drc = svc_db_commit(c);
        else if (drc != SVC_OK && svc_db_in_tx(c))
            (void)svc_db_rollback(c);
        if (drc != SVC_OK) {
            sent = 0;
            if (rc == SVC_OK)
                rc = drc;
        }
    }
    /* every row that may have reached the stream is out of the outbox, or looked for first */
    r->unsure = rc == SVC_OK ? 0 : (int)count;
    svc_db_rows_destroy(&rows);
    if (sent > 0)
        svc_metric_add(r->st.relayed, sent);
    return rc == SVC_OK ? sent : rc;
}

static void pending_gauge(struct billing_relay *r, struct svc_db_conn *c)
{
    struct svc_db_rows *rows = NULL;

    if (svc_db_query(c, "SELECT COALESCE(SUM(n), 0) FROM billing_outbox", NULL, 0, &rows) == SVC_OK)
        svc_metric_set(r->st.outbox_pending, svc_db_rows_i64(rows, 0, 0));
    svc_db_rows_destroy(&rows);
}

static void *relay_main(void *ctx)
{
    struct billing_relay *r = ctx;
    int64_t backoff = 0, last_gauge = 0;
    int leader = 0;

    for (;;) {
        struct svc_db_conn *c = NULL;
        int64_t wait = r->o.poll_ms;
        int n = 0;

        if (svc_db_conn_get(r->db, &c, 1000) == SVC_OK) {
            int now_leader = lease(r, c);
            if (now_leader != leader)
                SVC_LOG_NOTICE(NULL, "relay", "%s the relay lease as %s",
                               now_leader ? "took" : "lost", r->owner);
            if (now_leader && !leader)
                r->unsure = (int)r->o.batch; /* what the last holder sent may still be here */
            leader = now_leader;
            svc_metric_set(r->st.leader, leader);
            if (leader) {
                n = relay_pass(r, c);
                if (n < 0) {
                    svc_metric_add(r->st.relay_errors, 1);
                    backoff = backoff ? backoff * 2 : 100;
                    if (backoff > RELAY_BACKOFF_MAX_MS)
                        backoff = RELAY_BACKOFF_MAX_MS;
                    if (backoff == 100 || backoff == RELAY_BACKOFF_MAX_MS)
                        SVC_LOG_WARN(NULL, "relay", "events wait in the outbox: %s",
                                     svc_strerror(n));
                    wait = backoff;
                } else {
                    backoff = 0;
                    if (n >= r->o.batch)
                        wait = 0; /* more to send */
                }
                if (svc_util_wallclock_ms() - last_gauge > 1000) {
                    pending_gauge(r, c);
                    last_gauge = svc_util_wallclock_ms();
                }
            }
            svc_db_conn_put(r->db, &c);
        }
        if (wait > 0 && n > 0 && nap(r, RELAY_GATHER_MS, 0))
            break; /* a kick meanwhile stays pending: the nap below returns at once */
        if (wait > 0 ? nap(r, wait, 1) : r->stop)
            break;
    }
    if (leader) {
        struct svc_db_conn *c = NULL;
        if (svc_db_conn_get(r->db, &c, 1000) == SVC_OK) {
            lease_drop(r, c);
            svc_db_conn_put(r->db, &c);
        }
    }
    svc_db_thread_end();
    return NULL;
}

int billing_relay_stream_name_ok(const char *name)
{
    const char *open = strchr(name, '{');
    const char *close = open != NULL ? strchr(open + 1, '}') : NULL;

    /* Redis hashes what lies between the first { and the first } after it, when not empty;
     * confirm_key keeps that tag, or makes the whole name one (which a } inside would cut) */
    if (open != NULL)
        return close != NULL && close > open + 1;
    return strchr(name, '}') == NULL;
}

int billing_relay_create(struct billing_relay **out, struct svc_db *db, struct billing_store *store,
                         const struct billing_relay_opts *opts,
                         const struct billing_relay_stats *stats)
{
    struct billing_relay *r = NULL;
    char host[256] = "";
    int rc;

    *out = NULL;
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return SVC_ENOMEM;
    r->db = db;
    r->store = store;
    r->o = *opts;
    r->st = *stats;
    if (r->o.batch <= 0 || r->o.batch > RELAY_BATCH_MAX)
        r->o.batch = 100;
    gethostname(host, sizeof(host) - 1);
    {
        char rnd[9];
        svc_util_random_hex(rnd, 4);
        snprintf(r->owner, sizeof(r->owner), "%.40s-%d-%s", host, (int)getpid(), rnd);
    }
    pthread_mutex_init(&r->mu, NULL);
    {
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&r->cv, &ca);
        pthread_condattr_destroy(&ca);
    }
    /* the stream's hash tag, or the stream's name as one: the same Cluster slot */
    snprintf(r->confirm_key, sizeof(r->confirm_key),
             strchr(r->o.stream, '{') != NULL ? "%s:relay-confirm" : "{%s}:relay-confirm",
             r->o.stream);
    if (r->o.redis_url && r->o.redis_url[0]) {
        if ((rc = svc_redis_create(&r->redis, r->o.redis_url, REDIS_TIMEOUT_MS, NULL, 0)) != SVC_OK)
            goto fail;
        if (pthread_create(&r->relay_th, NULL, relay_main, r) != 0) {
            rc = SVC_EINTERNAL;
            goto fail;
        }
        r->relay_started = 1;
    } else {
        SVC_LOG_WARN(NULL, "relay", "REDIS_URL unset: billing events stay in the outbox");
    }
    if (pthread_create(&r->sweep_th, NULL, sweep_main, r) != 0) {
        rc = SVC_EINTERNAL;
        goto fail;
    }
    r->sweep_started = 1;
    if (r->o.prices_refresh_ms <= 0)
        r->o.prices_refresh_ms = 1000;
    if (pthread_create(&r->prices_th, NULL, prices_main, r) != 0) {
        rc = SVC_EINTERNAL;
        goto fail;
    }
    r->prices_started = 1;
    *out = r;
    return SVC_OK;
fail:
    billing_relay_destroy(&r);
    return rc;
}

void billing_relay_destroy(struct billing_relay **rp)
{
    struct billing_relay *r;

    if (rp == NULL || *rp == NULL)
        return;
    r = *rp;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (r->relay_started)
        pthread_join(r->relay_th, NULL);
    if (r->sweep_started)
        pthread_join(r->sweep_th, NULL);
    if (r->prices_started)
        pthread_join(r->prices_th, NULL);
    svc_redis_destroy(&r->redis);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
    *rp = NULL;
}

/* ---- the stream as Redis sees it (ops API) ---- */

/* The value after `key` in a flat key/value reply (XINFO's RESP2 shape); NULL when absent. */
static const struct svc_redis_reply *kv_get(const struct svc_redis_reply *a, const char *key)
{
    size_t n = svc_redis_reply_count(a);

    for (size_t i = 0; i + 1 < n; i += 2) {
        const char *k = svc_redis_reply_str(svc_redis_reply_elem(a, i), NULL);
        if (k != NULL && strcmp(k, key) == 0)
            return svc_redis_reply_elem(a, i + 1);
    }
    return NULL;
}

static void kv_str(const struct svc_redis_reply *v, char *out, size_t outlen)
{
    const char *s = NULL;
    size_t len = 0;

    if (v != NULL && svc_redis_reply_type(v) == SVC_REDIS_ARRAY) /* first-entry: [id, fields] */
        v = svc_redis_reply_elem(v, 0);
    if (v != NULL && (svc_redis_reply_type(v) == SVC_REDIS_STRING ||
                      svc_redis_reply_type(v) == SVC_REDIS_STATUS))
        s = svc_redis_reply_str(v, &len);
    snprintf(out, outlen, "%.*s", s ? (int)(len < outlen ? len : outlen - 1) : 0, s ? s : "");
}

static int64_t kv_int(const struct svc_redis_reply *v, int64_t absent)
{
    if (v == NULL || svc_redis_reply_type(v) != SVC_REDIS_INTEGER)
        return absent;
    return svc_redis_reply_int(v);
}

static void events_redis(struct billing_relay *r, struct billing_events_info *info)
{
    struct svc_redis_reply *rep = NULL;
    const char *argv[3] = {"XINFO", "STREAM", r->o.stream};
    size_t argvlen[3] = {5, 6, strlen(r->o.stream)};
    int rc;

    if (r->redis == NULL) {
        snprintf(info->redis_error, sizeof(info->redis_error), "REDIS_URL is not set");
        return;
    }
    rc = svc_redis_cmd(r->redis, &rep, 3, argv, argvlen);
    if (rc != SVC_OK) {
        snprintf(info->redis_error, sizeof(info->redis_error), "redis: %s", svc_strerror(rc));
        return;
    }
    if (svc_redis_reply_type(rep) == SVC_REDIS_ERROR) {
        const char *e = svc_redis_reply_str(rep, NULL);
        if (e == NULL || strstr(e, "no such key") == NULL)
            snprintf(info->redis_error, sizeof(info->redis_error), "redis: %.120s",
                     e ? e : "error");
        svc_redis_reply_destroy(&rep); /* no such key: nothing relayed yet */
        return;
    }
    info->exists = 1;
    info->length = kv_int(kv_get(rep, "length"), 0);
    kv_str(kv_get(rep, "first-entry"), info->first_id, sizeof(info->first_id));
    kv_str(kv_get(rep, "last-generated-id"), info->last_id, sizeof(info->last_id));
    svc_redis_reply_destroy(&rep);

    argv[1] = "GROUPS";
    argvlen[1] = 6;
    if ((rc = svc_redis_cmd(r->redis, &rep, 3, argv, argvlen)) != SVC_OK) {
        snprintf(info->redis_error, sizeof(info->redis_error), "redis: %s", svc_strerror(rc));
        return;
    }
    if (svc_redis_reply_type(rep) == SVC_REDIS_ARRAY) {
        size_t n = svc_redis_reply_count(rep);
        for (size_t i = 0; i < n; i++) {
            const struct svc_redis_reply *g = svc_redis_reply_elem(rep, i);
            if (info->n_groups == BILLING_EVENTS_GROUPS_MAX) {
                info->more = 1;
                break;
            }
            kv_str(kv_get(g, "name"), info->groups[info->n_groups].name,
                   sizeof(info->groups[0].name));
            info->groups[info->n_groups].consumers = kv_int(kv_get(g, "consumers"), 0);
            info->groups[info->n_groups].pending = kv_int(kv_get(g, "pending"), 0);
            /* lag: Redis 7+; nil when it cannot tell (entries deleted in between) */
            info->groups[info->n_groups].lag = kv_int(kv_get(g, "lag"), -1);
            kv_str(kv_get(g, "last-delivered-id"), info->groups[info->n_groups].last_delivered_id,
                   sizeof(info->groups[0].last_delivered_id));
            info->n_groups++;
        }
    }
    svc_redis_reply_destroy(&rep);
}

int billing_relay_events_info(struct billing_relay *r, struct billing_events_info *info)
{
    struct svc_db_conn *c = NULL;
    struct svc_db_rows *rows = NULL;
    int rc;

    memset(info, 0, sizeof(*info));
    if (r == NULL)
        return SVC_EUNAVAIL;
    events_redis(r, info);
    if ((rc = svc_db_conn_get(r->db, &c, -1)) != SVC_OK)
        return rc;
    rc = svc_db_query(c, "SELECT COALESCE(SUM(n), 0) FROM billing_outbox", NULL, 0, &rows);
    if (rc == SVC_OK)
        info->outbox_pending = svc_db_rows_i64(rows, 0, 0);
    svc_db_rows_destroy(&rows);
    svc_db_conn_put(r->db, &c);
    return rc;
}

const char *billing_relay_stream(const struct billing_relay *r)
{
    return r != NULL && r->o.stream != NULL ? r->o.stream : "";
}
