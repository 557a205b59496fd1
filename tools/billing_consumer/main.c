/*
 * chatweb-billing-consumer: a small, copyable consumer of the billing event stream.
 *
 *   REDIS_URL=redis://host:6379/0 BILLING_EVENTS_STREAM=chatweb:billing:events \
 *   chatweb-billing-consumer [--group NAME] [--consumer NAME] [--out FILE] [--idle-exit MS]
 *
 * Joins consumer group NAME (created at the stream's start when missing), first re-reads the
 * entries this consumer was given but never acknowledged (a previous run died), then new ones.
 * Each event's JSON copy is appended as one line to FILE (default stdout) and flushed, and only
 * then acknowledged (XACK): at-least-once. Duplicates are dropped by (user_id, user_seq): the
 * service sends each user's events in user_seq order, so a seq not above the last one seen for
 * that user is a re-delivery (the table lives in memory: after a restart, de-duplicate on
 * event_id downstream). --idle-exit MS exits 0 after MS without new entries (tests, batch jobs).
 * SIGINT/SIGTERM stop it after the current read. Exit codes: 0, 64 usage, 69 Redis unusable.
 */
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "svc/cfg.h"
#include "svc/redis.h"

#define BLOCK_MS "1000"
#define COUNT "100"
#define SEEN_MAX 65536 /* users whose last seq is remembered; the table is cleared when full */

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

struct seen {
    long long user, seq;
};
static struct seen seen_tab[SEEN_MAX];
static size_t seen_n;

/* 1 when (user, seq) was delivered before; else records it and returns 0. */
static int seen_before(long long user, long long seq)
{
    size_t i = (size_t)((unsigned long long)user * 11400714819323198485ull >> 48) % SEEN_MAX;

    for (;; i = (i + 1) % SEEN_MAX) {
        if (seen_tab[i].user == user) {
            if (seq <= seen_tab[i].seq)
                return 1;
            seen_tab[i].seq = seq;
            return 0;
        }
        if (seen_tab[i].user == 0)
            break;
    }
    if (seen_n + 1 >= SEEN_MAX * 3 / 4) {
        memset(seen_tab, 0, sizeof(seen_tab));
        seen_n = 0;
        return seen_before(user, seq);
    }
    seen_tab[i].user = user;
    seen_tab[i].seq = seq;
    seen_n++;
    return 0;
}

static int cmd(struct svc_redis *r, struct svc_redis_reply **reply, int argc, const char **argv)
{
    return svc_redis_cmd(r, reply, argc, argv, NULL);
}

static const char *field(const struct svc_redis_reply *fields, const char *name, size_t *len)
{
    for (size_t k = 0; k + 1 < svc_redis_reply_count(fields); k += 2) {
        const char *f = svc_redis_reply_str(svc_redis_reply_elem(fields, k), NULL);
        if (f && strcmp(f, name) == 0)
            return svc_redis_reply_str(svc_redis_reply_elem(fields, k + 1), len);
    }
    return NULL;
}

/* Handles one XREADGROUP reply. Returns the number of entries in it, or -1 on a write error. */
static int handle(struct svc_redis *r, const struct svc_redis_reply *rep, const char *stream,
                  const char *group, FILE *out, long long *dups)
{
    const struct svc_redis_reply *entries;
    int n = 0;

    if (svc_redis_reply_type(rep) != SVC_REDIS_ARRAY || svc_redis_reply_count(rep) < 1)
        return 0;
    entries = svc_redis_reply_elem(svc_redis_reply_elem(rep, 0), 1);
    for (size_t i = 0; entries && i < svc_redis_reply_count(entries); i++) {
        const struct svc_redis_reply *e = svc_redis_reply_elem(entries, i);
        const char *sid = svc_redis_reply_str(svc_redis_reply_elem(e, 0), NULL);
        const struct svc_redis_reply *fields = svc_redis_reply_elem(e, 1);
        struct svc_redis_reply *ack = NULL;
        size_t jlen = 0;
        const char *json = fields ? field(fields, "json", &jlen) : NULL;

        n++;
        if (json != NULL) {
            json_error_t jerr;
            json_t *o = json_loadb(json, jlen, 0, &jerr);
            long long user = o ? json_integer_value(json_object_get(o, "user_id")) : 0;
            long long seq = o ? json_integer_value(json_object_get(o, "user_seq")) : 0;

            json_decref(o);
            if (user > 0 && seq > 0 && seen_before(user, seq)) {
                (*dups)++;
            } else {
                if (fwrite(json, 1, jlen, out) != jlen || fputc('\n', out) == EOF ||
                    fflush(out) != 0)
                    return -1;
            }
        }
        if (sid != NULL) {
            const char *argv[] = {"XACK", stream, group, sid};
            if (cmd(r, &ack, 4, argv) != SVC_OK)
                fprintf(stderr, "billing-consumer: XACK %s failed (it will be delivered again)\n",
                        sid);
            svc_redis_reply_destroy(&ack);
        }
    }
    return n;
}

int main(int argc, char **argv)
{
    const char *url = getenv("REDIS_URL"), *stream = getenv("BILLING_EVENTS_STREAM");
    const char *group = "billing-consumer", *consumer = NULL, *outpath = NULL;
    int64_t idle_exit = 0, idle = 0;
    long long total = 0, dups = 0;
    char host[128] = "consumer";
    struct svc_redis *r = NULL;
    struct svc_redis_reply *rep = NULL;
    FILE *out = stdout;
    int rc = 0, pending = 1;

    if (url == NULL || url[0] == '\0')
        url = "redis://127.0.0.1:6379/0";
    if (stream == NULL || stream[0] == '\0')
        stream = "chatweb:billing:events";
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && strcmp(argv[i], "--group") == 0)
            group = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--consumer") == 0)
            consumer = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--out") == 0)
            outpath = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--idle-exit") == 0 &&
                 svc_cfg_parse_int(argv[i + 1], 0, 86400000, &idle_exit) == SVC_OK)
            i++;
        else {
            fprintf(stderr, "usage: chatweb-billing-consumer [--group NAME] [--consumer NAME] "
                            "[--out FILE] [--idle-exit MS]\n");
            return 64;
        }
    }
    if (consumer == NULL) {
        gethostname(host, sizeof(host) - 1);
        consumer = host;
    }
    if (outpath != NULL && (out = fopen(outpath, "a")) == NULL) {
        fprintf(stderr, "billing-consumer: %s: %s\n", outpath, strerror(errno));
        return 64;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    if (svc_redis_create(&r, url, 5000, NULL, 0) != SVC_OK) {
        fprintf(stderr, "billing-consumer: REDIS_URL: not a redis:// URL\n");
        rc = 64;
        goto out;
    }
    {
        const char *cargv[] = {"XGROUP", "CREATE", stream, group, "0", "MKSTREAM"};
        if (cmd(r, &rep, 6, cargv) != SVC_OK) {
            fprintf(stderr, "billing-consumer: cannot reach Redis at %s\n", url);
            rc = 69;
            goto out;
        }
        svc_redis_reply_destroy(&rep); /* BUSYGROUP (exists already) is fine */
    }
    while (!stop) {
        /* "0": this consumer's unacknowledged entries first; then ">": new ones. */
        const char *xargv[] = {
            "XREADGROUP", "GROUP",   group,  consumer,           "COUNT", COUNT, "BLOCK",
            BLOCK_MS,     "STREAMS", stream, pending ? "0" : ">"};
        int n;

        if (cmd(r, &rep, 11, xargv) != SVC_OK) {
            fprintf(stderr, "billing-consumer: Redis unavailable, retrying\n");
            sleep(1);
            idle += 1000;
        } else if (svc_redis_reply_type(rep) == SVC_REDIS_ERROR) {
            fprintf(stderr, "billing-consumer: %s\n", svc_redis_reply_str(rep, NULL));
            rc = 69;
            break;
        } else if ((n = handle(r, rep, stream, group, out, &dups)) < 0) {
            fprintf(stderr, "billing-consumer: write failed: %s\n", strerror(errno));
            rc = 74;
            break;
        } else {
            total += n;
            if (n > 0)
                idle = 0;
            else if (pending)
                pending = 0; /* the backlog of unacknowledged entries is done */
            else
                idle += 1000; /* one BLOCK without news */
        }
        svc_redis_reply_destroy(&rep);
        if (idle_exit > 0 && idle >= idle_exit)
            break;
    }
    fprintf(stderr, "billing-consumer: %lld entries, %lld duplicates dropped\n", total, dups);
out:
    svc_redis_reply_destroy(&rep);
    svc_redis_destroy(&r);
    if (out != stdout)
        fclose(out);
    return rc;
}
