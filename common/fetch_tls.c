/*
 * TLS for the upstream clients (fetch_tls.h): the origin's context, a connection's set-up,
 * handshake, reads and writes on a non-blocking socket, and the reason of a failure.
 */
#include "fetch_tls.h"

#include <errno.h>
#include <pthread.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>

/*
 * The process's sessions, one per origin (authority and CA file), shared by the clients of
 * every loop. A few origins (the upstreams), so a small table: past TLS_SHARED origins, a new
 * one takes the slot of the least recently stored. OpenSSL sessions may be used by many
 * connections and threads at once; the table's own reference is taken under shared_mu.
 */
#define TLS_SHARED 32

static struct {
    char key[sizeof(((struct svc__tls *)0)->key)];
    SSL_SESSION *session;
    uint64_t stored; /* the order of the last store, for the eviction */
} shared[TLS_SHARED];
static uint64_t shared_stores;
static pthread_mutex_t shared_mu = PTHREAD_MUTEX_INITIALIZER;

/* Keeps sess as the origin's session of the process. */
static void shared_put(const char *key, SSL_SESSION *sess)
{
    int slot = 0;

    if (key[0] == '\0')
        return;
    pthread_mutex_lock(&shared_mu);
    for (int i = 0; i < TLS_SHARED; i++) {
        if (strcmp(shared[i].key, key) == 0) {
            slot = i;
            break;
        }
        if (shared[i].stored < shared[slot].stored)
            slot = i; /* free slots have 0: taken first */
    }
    if (shared[slot].session != NULL)
        SSL_SESSION_free(shared[slot].session);
    SSL_SESSION_up_ref(sess);
    shared[slot].session = sess;
    shared[slot].stored = ++shared_stores;
    memcpy(shared[slot].key, key, sizeof(shared[slot].key));
    pthread_mutex_unlock(&shared_mu);
}

/* The origin's session of the process, with a reference for the caller; NULL if none. */
static SSL_SESSION *shared_get(const char *key)
{
    SSL_SESSION *sess = NULL;

    if (key[0] == '\0')
        return NULL;
    pthread_mutex_lock(&shared_mu);
    for (int i = 0; i < TLS_SHARED; i++)
        if (shared[i].session != NULL && strcmp(shared[i].key, key) == 0) {
            sess = shared[i].session;
            SSL_SESSION_up_ref(sess);
            break;
        }
    pthread_mutex_unlock(&shared_mu);
    return sess;
}

/* The context's new-session callback: keeps the server's latest session for the next
 * connection of the origin (struct svc__tls, found through the context), and shares it. */
static int on_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct svc__tls *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));

    if (t == NULL)
        return 0;
    if (t->session != NULL)
        SSL_SESSION_free(t->session);
    t->session = sess;
    shared_put(t->key, sess);
    return 1; /* we hold the reference */
}

int svc__tls_init(struct svc__tls *t, const char *authority, const char *ca_file,
                  const unsigned char *alpn, size_t alpn_len)
{
    size_t n;

    memset(t, 0, sizeof(*t));
    n = (size_t)snprintf(t->key, sizeof(t->key), "%s %s", authority, ca_file ? ca_file : "");
    if (n >= sizeof(t->key))
        t->key[0] = '\0'; /* not shared: a cut key could name another origin */
    if ((t->ctx = SSL_CTX_new(TLS_client_method())) == NULL)
        return SVC_ENOMEM;
    SSL_CTX_set_app_data(t->ctx, t);
    SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(t->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                 SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(t->ctx,
                                   SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(t->ctx, on_new_session);
    if ((ca_file != NULL ? SSL_CTX_load_verify_locations(t->ctx, ca_file, NULL)
                         : SSL_CTX_set_default_verify_paths(t->ctx)) != 1) {
        ERR_clear_error();
        svc__tls_deinit(t);
        return SVC_EINVAL;
    }
    if (SSL_CTX_set_alpn_protos(t->ctx, alpn, (unsigned)alpn_len) != 0) {
        svc__tls_deinit(t);
        return SVC_ENOMEM;
    }
    return SVC_OK;
}

void svc__tls_deinit(struct svc__tls *t)
{
    if (t->session != NULL)
        SSL_SESSION_free(t->session);
    if (t->ctx != NULL)
        SSL_CTX_free(t->ctx);
    t->session = NULL;
    t->ctx = NULL;
}

SSL *svc__tls_conn(struct svc__tls *t, int fd, const char *host, int numeric)
{
    SSL *ssl = SSL_new(t->ctx);

    if (ssl == NULL)
        return NULL;
    if (SSL_set_fd(ssl, fd) != 1)
        goto fail;
    if (numeric) { /* an address: no SNI, checked against the certificate's IP addresses */
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) != 1)
            goto fail;
    } else if (SSL_set_tlsext_host_name(ssl, host) != 1 || SSL_set1_host(ssl, host) != 1) {
        goto fail;
    }
    if (t->session == NULL)
        t->session = shared_get(t->key); /* this loop's first connection to the origin */
    if (t->session != NULL) {
        /* A copy for each connection: OpenSSL's client takes a TLS 1.3 ticket for one use and
         * marks the session it resumed not resumable once the handshake is done, so the
         * connections a burst opens after the first resumption did full handshakes until the
         * server's next ticket came. Servers take a ticket more than once (without early
         * data, which we do not send), as nginx's upstream connections rely on. */
        SSL_SESSION *copy = SSL_SESSION_dup(t->session);

        if (copy != NULL) {
            (void)SSL_set_session(ssl, copy);
            SSL_SESSION_free(copy); /* ssl holds its own reference */
        }
    }
    SSL_set_connect_state(ssl);
    return ssl;
fail:
    SSL_free(ssl);
    ERR_clear_error();
    return NULL;
}

void svc__tls_free(SSL *ssl)
{
    if (ssl == NULL)
        return;
    SSL_set_quiet_shutdown(ssl, 1);
    SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(ssl);
}

int svc__tls_handshake(SSL *ssl, uint32_t *events)
{
    int rc, e;

    ERR_clear_error();
    errno = 0;
    rc = SSL_connect(ssl);
    if (rc == 1)
        return 1;
    e = SSL_get_error(ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        *events = e == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT;
        return 0;
    }
    return -1;
}

/* Maps a failed SSL_read/SSL_write (rc <= 0) to recv/send's answer; other_way: the want that
 * is not the call's own (SSL_ERROR_WANT_WRITE for a read). */
static ssize_t io_result(SSL *ssl, int rc, int other_way, int *other)
{
    int e = SSL_get_error(ssl, rc);

    switch (e) {
    case SSL_ERROR_WANT_WRITE:
    case SSL_ERROR_WANT_READ:
        *other = e == other_way;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0 && errno == 0)
            return 0; /* the peer closed without close_notify (OpenSSL < 3) */
        if (ERR_peek_error() == 0)
            return -1; /* errno says it: ECONNRESET, EPIPE, ... */
        break;
    case SSL_ERROR_SSL:
        /* OpenSSL 3 reports an end without close_notify this way. Many servers end so; the
         * framing (Content-Length, chunked) says whether the response was whole. */
        if (ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
            ERR_clear_error();
            return 0;
        }
        break;
    }
    errno = EPROTO;
    return -1;
}

/* Readies a read or write of len bytes: clears what an earlier call left (OpenSSL's error
 * queue, errno, *other) and returns len as OpenSSL's int. */
static int io_begin(size_t len, int *other)
{
    *other = 0;
    ERR_clear_error();
    errno = 0;
    return len > INT32_MAX ? INT32_MAX : (int)len;
}

ssize_t svc__tls_recv(SSL *ssl, void *buf, size_t len, int *other)
{
    int rc = SSL_read(ssl, buf, io_begin(len, other));

    return rc > 0 ? rc : io_result(ssl, rc, SSL_ERROR_WANT_WRITE, other);
}

ssize_t svc__tls_send(SSL *ssl, const void *buf, size_t len, int *other)
{
    int rc = SSL_write(ssl, buf, io_begin(len, other));

    return rc > 0 ? rc : io_result(ssl, rc, SSL_ERROR_WANT_READ, other);
}

int svc__tls_pending(SSL *ssl)
{
    return SSL_has_pending(ssl);
}

void svc__tls_why(SSL *ssl, char *buf, size_t len)
{
    unsigned long e = ERR_get_error();
    long v = ssl != NULL ? SSL_get_verify_result(ssl) : X509_V_OK;

    if (v != X509_V_OK)
        snprintf(buf, len, "certificate verify failed: %s", X509_verify_cert_error_string(v));
    else if (e != 0)
        ERR_error_string_n(e, buf, len);
    else
        snprintf(buf, len, "%s", errno != 0 ? strerror(errno) : "connection closed");
    ERR_clear_error();
}
