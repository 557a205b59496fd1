/* The address of an origin of our HTTP clients, resolved off the loop (fetch_addr.h). */
#include "fetch_addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "svc/loop.h"

struct dns_answer {
    int rc; /* getaddrinfo's */
    socklen_t len;
    struct sockaddr_storage addr;
};

struct dns_job {
    int fd; /* the thread's end of the socket pair; it closes it */
    char port[8];
    char host[256];
};

int svc__addr_init(struct svc__addr *a, struct svc_loop *loop, const char *authority, size_t len,
                   unsigned default_port, svc__addr_cb cb, void *ctx)
{
    const char *host = authority, *port = NULL, *e = authority + len;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&a->ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&a->ss;
    unsigned portnum = 0;
    size_t hl;

    memset(a, 0, sizeof(*a));
    if (len > 0 && authority[0] == '[') { /* [IPv6]:port */
        const char *rb = memchr(authority, ']', len);
        if (rb == NULL)
            return SVC_EINVAL;
        host = authority + 1;
        hl = (size_t)(rb - host);
        if (rb + 1 < e) {
            if (rb[1] != ':')
                return SVC_EINVAL;
            port = rb + 2;
        }
    } else {
        const char *colon = memchr(authority, ':', len);
        hl = colon != NULL ? (size_t)(colon - authority) : len;
        if (colon != NULL)
            port = colon + 1;
    }
    if (hl == 0 || hl >= sizeof(a->host) || memchr(host, '\0', hl) != NULL ||
        (port != NULL && (e - port < 1 || e - port > 5)))
        return SVC_EINVAL;
    for (const char *p = port; p != NULL && p < e; p++) {
        if (*p < '0' || *p > '9')
            return SVC_EINVAL;
        portnum = portnum * 10 + (unsigned)(*p - '0');
    }
    if (port == NULL)
        portnum = default_port;
    if (portnum < 1 || portnum > 65535)
        return SVC_EINVAL;
    a->loop = loop;
    a->cb = cb;
    a->ctx = ctx;
    memcpy(a->host, host, hl);
    snprintf(a->port, sizeof(a->port), "%u", portnum);
    if (inet_pton(AF_INET, a->host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)portnum);
        a->len = sizeof(*v4);
        a->until = UINT64_MAX;
    } else if (inet_pton(AF_INET6, a->host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)portnum);
        a->len = sizeof(*v6);
        a->until = UINT64_MAX;
    }
    return SVC_OK;
}

/* The resolving thread: owns the job, shares nothing with the loop but the socket. */
static void *dns_main(void *arg)
{
    struct dns_job *j = arg;
    struct addrinfo hints, *res = NULL, *pick = NULL;
    struct dns_answer ans;

    memset(&hints, 0, sizeof(hints));
    memset(&ans, 0, sizeof(ans));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    ans.rc = getaddrinfo(j->host, j->port, &hints, &res);
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next)
        if (pick == NULL || (ai->ai_family == AF_INET && pick->ai_family != AF_INET))
            pick = ai;
    if (ans.rc == 0 && pick != NULL && pick->ai_addrlen <= sizeof(ans.addr)) {
        memcpy(&ans.addr, pick->ai_addr, pick->ai_addrlen);
        ans.len = pick->ai_addrlen;
    } else if (ans.rc == 0) {
        ans.rc = EAI_FAIL;
    }
    if (res != NULL)
        freeaddrinfo(res);
    if (send(j->fd, &ans, sizeof(ans), MSG_NOSIGNAL) < 0) {
        /* the loop gave up on the answer (its client is gone): nothing to tell */
    }
    close(j->fd);
    free(j);
    return NULL;
}

static void on_dns(void *ctx, struct svc_io *io, int fd, uint32_t events)
{
    struct svc__addr *a = ctx;
    struct dns_answer ans;
    ssize_t n = recv(fd, &ans, sizeof(ans), 0);
    uint64_t now = svc_loop_now(a->loop);
    char msg[320];

    (void)io;
    (void)events;
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    svc_io_close(&a->dns_io);
    if (n == (ssize_t)sizeof(ans) && ans.rc == 0) {
        memcpy(&a->ss, &ans.addr, sizeof(a->ss));
        a->len = ans.len;
        a->until = now + SVC__ADDR_TTL_MS;
    } else if (a->len > 0) { /* a DNS hiccup: the last address serves a little longer */
        a->until = now + SVC__ADDR_STALE_MS;
    } else {
        snprintf(msg, sizeof(msg), "cannot resolve %s: %s", a->host,
                 n == (ssize_t)sizeof(ans) ? gai_strerror(ans.rc) : "the resolver failed");
        a->cb(a->ctx, msg);
        return;
    }
    a->cb(a->ctx, NULL);
}

int svc__addr_ready(struct svc__addr *a)
{
    struct dns_job *j;
    pthread_attr_t attr;
    pthread_t tid;
    int sv[2], rc;

    if (a->len > 0 && svc_loop_now(a->loop) < a->until)
        return 1;
    if (a->dns_io != NULL)
        return 0;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
        a->cb(a->ctx, "cannot resolve the host: no socket pair");
        return 0;
    }
    if ((j = malloc(sizeof(*j))) == NULL) {
        close(sv[0]);
        close(sv[1]);
        a->cb(a->ctx, "cannot resolve the host: out of memory");
        return 0;
    }
    j->fd = sv[1];
    memcpy(j->port, a->port, sizeof(j->port));
    memcpy(j->host, a->host, sizeof(j->host));
    if (svc_io_add(&a->dns_io, a->loop, sv[0], EPOLLIN, on_dns, a) != SVC_OK) {
        close(sv[0]);
        close(sv[1]);
        free(j);
        a->cb(a->ctx, "cannot resolve the host: cannot watch the answer");
        return 0;
    }
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    rc = pthread_create(&tid, &attr, dns_main, j);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        svc_io_close(&a->dns_io);
        close(sv[1]);
        free(j);
        a->cb(a->ctx, "cannot resolve the host: cannot start a thread");
    }
    return 0;
}

void svc__addr_deinit(struct svc__addr *a)
{
    svc_io_close(&a->dns_io);
}

int svc__addr_numeric(const struct svc__addr *a)
{
    return a->until == UINT64_MAX; /* resolved once, for good */
}

size_t svc__addr_authority_len(const char *url_rest)
{
    size_t len = strcspn(url_rest, "/?#");

    return len > 0 && memchr(url_rest, '@', len) == NULL ? len : 0;
}
