#ifndef LG_RUN_H
#define LG_RUN_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "lg_hist.h"

/*
 * The load generator's engine: T event-loop threads (epoll, edge-triggered, non-blocking
 * sockets), each owning a share of the connections. No thread per connection.
 *
 * Two modes:
 *   requests  keep `concurrency` requests in flight until `requests` have been issued; a
 *             connection is reused (HTTP/1.1 keep-alive) unless the server closes it.
 *   hold      open `concurrency` connections at once, send one request on each and keep each
 *             open until its response ends (for long streamed responses).
 *
 * Every request is one pre-built byte string (request line, headers, body), sent as is.
 */

#define LG_EXPECT_MAX 256u

typedef enum {
    LG_FAIL_CONNECT, /* socket/connect failed or timed out */
    LG_FAIL_STATUS,  /* a response head with a status other than 200 */
    LG_FAIL_SHORT,   /* the connection ended (FIN or RST) before the response did */
    LG_FAIL_INVALID, /* malformed HTTP, or a 200 body without the expected text */
    LG_FAIL_TIMEOUT, /* the request ran longer than the timeout */
    LG_FAIL_COUNT
} lg_fail_e;

struct lg_config {
    struct sockaddr_storage addr; /* where to connect */
    socklen_t addrlen;
    const char *request; /* borrowed: the whole request, sent on every request */
    size_t request_len;
    int no_body;           /* the method is HEAD */
    unsigned concurrency;  /* connections */
    uint64_t requests;     /* requests in all (hold: = concurrency) */
    int hold;              /* hold mode: one request per connection, no reuse */
    unsigned threads;      /* event-loop threads, >= 1 */
    uint64_t timeout_ns;   /* per request, from its start (connect or send) to its last byte */
    uint64_t connect_timeout_ns;
    double rate;           /* new connections per second in all; 0 = as fast as possible */
    const char *expect;    /* borrowed; a 200 body must contain it (NULL: no check) */
    size_t expect_len;     /* <= LG_EXPECT_MAX */
    int progress;          /* print a progress line on stderr every second */
};

struct lg_result {
    uint64_t completed;               /* 200, complete, and the expected text when asked */
    uint64_t failed[LG_FAIL_COUNT];
    char first_error[LG_FAIL_COUNT][160]; /* the first failure of each kind, for diagnosis */
    uint64_t unfinished;              /* in flight when the run was interrupted */
    uint64_t status[600];             /* final status of every response head seen */
    uint64_t connections;             /* connections opened */
    uint64_t retries;                 /* requests resent because an idle keep-alive
                                         connection was closed before any byte came back */
    uint64_t bytes_in, bytes_out, body_bytes;
    uint64_t peak_streaming;          /* most responses that had their head at the same time */
    struct lg_hist connect_us;        /* TCP connect, new connections only */
    struct lg_hist ttfb_us;           /* request start -> first response byte (successes) */
    struct lg_hist total_us;          /* request start -> last response byte (successes) */
    uint64_t duration_ns;
    int interrupted;
};

/* Set by a signal handler to stop the run early; lg_run() returns what it has. */
extern volatile sig_atomic_t lg_stop;

/* Human-readable name of a failure kind ("connect", "status", ...). */
const char *lg_fail_name(lg_fail_e kind);

/*
 * Runs the load described by cfg (borrowed for the duration) and fills res (caller-owned,
 * zeroed here). Blocks until done. Returns 0, or a negative errno when the engine could not
 * start (out of memory, epoll or thread creation failed); the message is on stderr.
 */
int lg_run(const struct lg_config *cfg, struct lg_result *res);

#endif
