/*
 * Group commit (svc_db_tx_group in svc/db.h): many threads' small transactions share one
 * BEGIN ... COMMIT.
 *
 * Why: billing's Reserve and Settle are each a transaction of a few rows. On SQLite every COMMIT
 * appends every page it touched to the WAL (the account, the hold, the ledger and outbox pages
 * and their indexes: tens of KiB per commit) and only one writer runs at a time; on MariaDB every
 * COMMIT is a log write. Under load most of that work is the same pages written again, so one
 * commit for the transactions that arrived together costs little more than one alone.
 *
 * How (the leader/follower pattern of database group commit): a caller queues its item and waits.
 * When no leader is running, the first waiter becomes the leader: it takes up to GROUP_MAX queued
 * items, runs them on one pooled connection inside one transaction, each inside a SAVEPOINT, and
 * commits; then it marks them done and wakes everyone. Items that arrived meanwhile form the next
 * group, led by one of their own callers. Nobody waits on a timer: a lone call runs at once.
 */
#include "db_int.h"

#include <pthread.h>
#include <stddef.h>

#include "svc/log.h"

enum { GROUP_MAX = 64 };

struct svc__db_group_item {
    svc_db_tx_cb fn;
    void *arg;
    int rc;
    int done;
    struct svc__db_group_item *next;
};

/* A fn's own refusals: its work is rolled back to its savepoint and the group goes on. */
static int is_domain_error(int rc)
{
    return rc == SVC_ENOTFOUND || rc == SVC_EEXIST || rc == SVC_EINVAL || rc == SVC_ETOOLARGE;
}

/* Each item alone, with svc_db_tx_run's retries (a group that could not commit as one). */
static void run_each_alone(struct svc_db_conn *conn, struct svc__db_group_item **items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        items[i]->rc = svc_db_tx_run(conn, items[i]->fn, items[i]->arg);
}

/*
 * Runs items[0..n) in one transaction. Returns 0 when committed (each item's rc says whether its
 * own work stayed), 1 when the group must be run again item by item, or the COMMIT's error when
 * its outcome is unknown.
 */
static int run_together(struct svc_db_conn *conn, struct svc__db_group_item **items, size_t n)
{
    int rc;

    if (svc_db_begin(conn) != SVC_OK)
        return 1;
    for (size_t i = 0; i < n; i++) {
        if (svc_db_exec(conn, "SAVEPOINT svc_group", NULL, 0, NULL, NULL) != SVC_OK)
            goto again;
        rc = items[i]->fn(items[i]->arg, conn);
        if (!conn->in_tx)
            goto again; /* the body ended the transaction (or the connection died) */
        if (rc != SVC_OK && !is_domain_error(rc))
            goto again;
        if (rc != SVC_OK &&
            svc_db_exec(conn, "ROLLBACK TO SAVEPOINT svc_group", NULL, 0, NULL, NULL) != SVC_OK)
            goto again;
        if (svc_db_exec(conn, "RELEASE SAVEPOINT svc_group", NULL, 0, NULL, NULL) != SVC_OK)
            goto again;
        items[i]->rc = rc;
    }
    rc = svc_db_commit(conn);
    if (rc == SVC_OK)
        return 0;
    if (rc == SVC_ECONFLICT || (rc == SVC_EUNAVAIL && conn->tx_lost))
        return 1; /* nothing was applied: run again */
    return rc;
again:
    if (conn->in_tx)
        (void)svc_db_rollback(conn);
    return 1;
}

static void run_group(struct svc_db *db, struct svc__db_group_item **items, size_t n)
{
    struct svc_db_conn *conn = NULL;
    int rc;

    if ((rc = svc_db_conn_get(db, &conn, -1)) != SVC_OK) {
        for (size_t i = 0; i < n; i++)
            items[i]->rc = rc;
        return;
    }
    if (n == 1) {
        run_each_alone(conn, items, n); /* no savepoint round trips for a lone call */
    } else {
        rc = run_together(conn, items, n);
        if (rc == 1) {
            SVC_LOG_DEBUG(NULL, "db", "a group of %zu transactions runs again one by one: %s", n,
                          conn->err);
            run_each_alone(conn, items, n);
        } else if (rc != SVC_OK) {
            for (size_t i = 0; i < n; i++)
                items[i]->rc = rc;
        }
    }
    svc_db_conn_put(db, &conn);
}

int svc_db_tx_group(struct svc_db *db, svc_db_tx_cb fn, void *ctx)
{
    struct svc__db_group_item me = {fn, ctx, SVC_EINTERNAL, 0, NULL};
    struct svc__db_group_item *batch[GROUP_MAX];

    if (db == NULL || fn == NULL)
        return SVC_EINVAL;
    pthread_mutex_lock(&db->group_mu);
    if (db->group_tail != NULL)
        db->group_tail->next = &me;
    else
        db->group_head = &me;
    db->group_tail = &me;
    while (!me.done) {
        if (db->group_leader) {
            pthread_cond_wait(&db->group_cv, &db->group_mu);
            continue;
        }
        /* Lead: take the queue's head (which holds our item unless more than GROUP_MAX wait). */
        size_t n = 0;
        db->group_leader = 1;
        while (db->group_head != NULL && n < GROUP_MAX) {
            batch[n++] = db->group_head;
            db->group_head = db->group_head->next;
        }
        if (db->group_head == NULL)
            db->group_tail = NULL;
        db->groups++;
        db->group_txs += n;
        pthread_mutex_unlock(&db->group_mu);
        run_group(db, batch, n);
        pthread_mutex_lock(&db->group_mu);
        for (size_t i = 0; i < n; i++)
            batch[i]->done = 1;
        db->group_leader = 0;
        pthread_cond_broadcast(&db->group_cv);
    }
    pthread_mutex_unlock(&db->group_mu);
    return me.rc;
}

void svc_db_group_stats(struct svc_db *db, uint64_t *groups, uint64_t *txs)
{
    pthread_mutex_lock(&db->group_mu);
    *groups = db->groups;
    *txs = db->group_txs;
    pthread_mutex_unlock(&db->group_mu);
}
