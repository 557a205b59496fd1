#ifndef BILLING_JOURNAL_H
#define BILLING_JOURNAL_H

/*
 * The charge journal of a lease (docs/billing.md "The charge journal", decision 58): what a
 * caller admits from a lease and what each request ended up costing, written to Redis as it
 * happens, so that billing can charge a caller that died before its next LeaseSync exactly.
 *
 * One Redis hash per lease, key "cw:lj:{<lease id>}" (the lease id is its Cluster hash tag):
 *   "_"       "ok" while every entry was handed to Redis; "lost" (for good) once one was not
 *   "t<n>"    one per admitted request:
 *             "a <prompt> <largest completion> <model>"   in flight: its worst case
 *             "e <end> <prompt> <completion> <estimated> <request id> <model>"
 *                       ended: its usage (estimated 1: our own count); end numbers the lease's
 *                       ended requests in the order they are queued for LeaseSyncs (from 1)
 *   "_b"      "<seq> <end>": the LeaseSync seq in flight carries the ended requests up to <end>
 * A released request's entry is deleted; the entries a LeaseSync carried are deleted once billing
 * answered it, and the whole hash when the lease is closed. A LeaseSync carries a prefix of the
 * queue and one is in flight at a time, so the entries still there up to "_b"'s end are those of
 * the call in flight (or of the last answered one, until their deletion lands). Billing's sweeper
 * reads the hash of a lease that expired unreported and charges, instead of the inflight last
 * reported, the worst case of what is in flight (one "expiry" row) and the usage of each request
 * that ended and that no applied LeaseSync carried (not covered by a "_b" whose seq billing
 * applied): its own "charge" row, as its LeaseSync would have written.
 *
 * Written here once for both sides: the caller formats (lease.c), billing parses (relay.c).
 */

#include <stddef.h>
#include <stdint.h>

#define BILLING_JOURNAL_KEY_MAX 160
#define BILLING_JOURNAL_VALUE_MAX 360 /* an entry's value: numbers, a request id, a model */
#define BILLING_JOURNAL_MODEL_MAX 128
#define BILLING_JOURNAL_ID_MAX 128 /* a request id: no space, no control byte */
#define BILLING_JOURNAL_MARK "_"
#define BILLING_JOURNAL_BATCH "_b"
#define BILLING_JOURNAL_TTL_MS 86400000 /* a journal nobody read is gone after a day */

struct billing_journal_entry {
    int ended;
    int64_t end;                /* ended: its place in the lease's queue of ended requests */
    int64_t prompt, completion; /* in flight: the prompt and the largest completion */
    int estimated;              /* ended: the usage is our own count */
    char request_id[BILLING_JOURNAL_ID_MAX + 1]; /* ended only */
    char model[BILLING_JOURNAL_MODEL_MAX];
};

/* What the sweeper read of a lease's journal. usable = 0: none, "lost", or unreadable. */
struct billing_journal {
    int usable;
    int64_t batch_seq, batch_end; /* "_b" (0 0: none) */
    struct billing_journal_entry *v;
    size_t n;
};

/* The hash's key for lease_id into key. SVC_OK, or SVC_EINVAL when it does not fit. */
int billing_journal_key(char *key, size_t cap, const char *lease_id);

/* Formats an entry's value into buf (BILLING_JOURNAL_VALUE_MAX); its length, or -1 when the
 * model or the request id does not fit the grammar above. */
int billing_journal_format(char *buf, size_t cap, const struct billing_journal_entry *e);

/* Parses an entry's value (len bytes, not terminated). SVC_OK or SVC_EINVAL. */
int billing_journal_parse(const char *value, size_t len, struct billing_journal_entry *e);

/* "_b"'s value into buf (at least 40 bytes): its length. */
int billing_journal_format_batch(char *buf, int64_t seq, int64_t end);

/* Parses "_b"'s value. SVC_OK or SVC_EINVAL. */
int billing_journal_parse_batch(const char *value, size_t len, int64_t *seq, int64_t *end);

/* Writes "t<jid>" into buf (at least 24 bytes): its length. */
int billing_journal_field(char *buf, uint64_t jid);

/* 1 when billing applied e: ended, and carried by a LeaseSync of seq <= applied_seq. */
int billing_journal_applied(const struct billing_journal *j, const struct billing_journal_entry *e,
                            int64_t applied_seq);

void billing_journal_clear(struct billing_journal *j);

#endif
