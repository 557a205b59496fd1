#ifndef SVC_FETCH_ADDR_H
#define SVC_FETCH_ADDR_H

/*
 * The address of one origin of our HTTP clients (fetch_h1.c, fetch_h2.c), resolved off the loop
 * and cached. Internal to common/.
 *
 * getaddrinfo blocks, so a name is resolved on a short-lived thread which writes the answer into
 * a socket pair watched by the loop; the answer is kept for SVC__ADDR_TTL_MS, and when resolving
 * again fails the old address serves SVC__ADDR_STALE_MS more. A numeric address needs no
 * resolving, ever. IPv4 answers are preferred (the services and upstreams of a cluster listen
 * there).
 */

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "svc/err.h"

#define SVC__ADDR_TTL_MS 60000  /* as libcurl's DNS cache */
#define SVC__ADDR_STALE_MS 5000 /* a failed re-resolution keeps the old address this long */

struct svc_loop;
struct svc_io;

/* The end of a resolution: errmsg is NULL when the address is usable, else why not. */
typedef void (*svc__addr_cb)(void *ctx, const char *errmsg);

struct svc__addr {
    struct sockaddr_storage ss;
    socklen_t len;         /* 0: not resolved yet */
    uint64_t until;        /* loop ms when the name is resolved again */
    struct svc_io *dns_io; /* a resolution in progress: its answer arrives here */
    struct svc_loop *loop;
    svc__addr_cb cb;
    void *ctx;
    char host[256]; /* the name or address, without brackets or port */
    char port[8];
};

/*
 * Splits authority[0..len) ("host", "host:port", "[v6]:port") and prepares *a for it: a numeric
 * host is resolved at once. cb(ctx, ...) tells the end of each resolution svc__addr_ready starts.
 * Returns SVC_OK or SVC_EINVAL (not a valid authority). Nothing to free until
 * svc__addr_ready started a resolution; svc__addr_deinit always suffices.
 */
int svc__addr_init(struct svc__addr *a, struct svc_loop *loop, const char *authority, size_t len,
                   unsigned default_port, svc__addr_cb cb, void *ctx) SVC_MUST_CHECK;

/* 1 when a->ss holds a current address; else 0, and a resolution is under way (cb tells its
 * end, possibly failing at once, before this returns). */
int svc__addr_ready(struct svc__addr *a);

/* The length of the authority ("host[:port]") that url_rest (a URL after its "scheme://")
 * starts with, or 0 when it is empty or has user info ("user:pass@host"), which our clients
 * leave to libcurl. */
size_t svc__addr_authority_len(const char *url_rest);

/* 1 when the host is an address (no name to send as SNI, or to check a certificate by). */
int svc__addr_numeric(const struct svc__addr *a);

/* Stops watching a resolution in progress (its thread's answer then goes nowhere). */
void svc__addr_deinit(struct svc__addr *a);

#endif
