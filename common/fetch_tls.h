#ifndef SVC_FETCH_TLS_H
#define SVC_FETCH_TLS_H

/*
 * TLS for the upstream clients of svc_fetch (common/fetch_h1.c, common/fetch_h2.c): one
 * origin's OpenSSL context and what a connection does with it, on a non-blocking socket.
 * Internal to common/. OpenSSL writes with write(2), so the process must ignore SIGPIPE, as
 * svc_service does.
 *
 * An origin's context verifies the server against its CA file or the system's CAs (TLS 1.2 or
 * later), offers its ALPN list, and keeps the last session the server gave so that the next
 * connection resumes it. A connection sends SNI for a name and checks the certificate against
 * the name, or against the address when the origin is an IP address.
 */

#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "svc/err.h"

struct svc__tls {
    SSL_CTX *ctx;
    SSL_SESSION *session; /* the server's latest, to resume; NULL before the first */
    char key[320];        /* the origin in the process's table of sessions; "" if too long */
};

/* Sets up t for an origin (authority: "host:port"). ca_file: a PEM bundle, or NULL for the
 * system's CAs; alpn: the protocols in wire format ("\x02h2\x08http/1.1"). Returns SVC_OK,
 * SVC_EINVAL (the CA file cannot be loaded) or SVC_ENOMEM; t is then empty (svc__tls_deinit is
 * still safe). t must not move while it is in use: its sessions come back to it through the
 * context. Every client of the process (each loop has its own, and HTTP/1.1 and HTTP/2 theirs)
 * shares the origin's latest session: a loop that meets the origin for the first time resumes
 * the one another got, instead of a full handshake for each connection of its first burst. */
int svc__tls_init(struct svc__tls *t, const char *authority, const char *ca_file,
                  const unsigned char *alpn, size_t alpn_len) SVC_MUST_CHECK;

/* Frees t's context and session. Connections made from it must be gone. */
void svc__tls_deinit(struct svc__tls *t);

/* A client connection over fd to host (a name, or an address when numeric is set), resuming
 * t's last session. NULL when OpenSSL cannot make one. */
SSL *svc__tls_conn(struct svc__tls *t, int fd, const char *host, int numeric);

/* Frees a connection's TLS state, without close_notify (the socket's close tells the server).
 * Marked as shut down first: OpenSSL takes a connection freed otherwise for a failed one and
 * marks its session not resumable, and that session is the origin's, which its next connections
 * offer (nginx frees its upstream connections so too). Accepts NULL. */
void svc__tls_free(SSL *ssl);

/* One step of the handshake, as far as the socket allows. Returns 1 when it is done, 0 when it
 * waits for the socket (*events: EPOLLIN or EPOLLOUT), -1 when it failed (svc__tls_why says
 * why). */
int svc__tls_handshake(SSL *ssl, uint32_t *events);

/*
 * SSL_read and SSL_write shaped like recv and send: the count of bytes, 0 when the server
 * closed the connection (close_notify, or an end without it), or -1 with errno EAGAIN or
 * EPROTO (TLS failed: svc__tls_why says why, at once, before any other OpenSSL call), or
 * another errno of the socket. After EAGAIN the socket must be readable for a recv and
 * writable for a send, unless *other is set to 1: then the other way round (TLS has a record to
 * send before it can read, or to read before it can write).
 */
ssize_t svc__tls_recv(SSL *ssl, void *buf, size_t len, int *other);
ssize_t svc__tls_send(SSL *ssl, const void *buf, size_t len, int *other);

/* Whether ssl holds read bytes the socket no longer signals (a record read in part). */
int svc__tls_pending(SSL *ssl);

/* Why the last handshake, recv or send on ssl failed, for a person: the certificate's fault,
 * OpenSSL's reason, or errno's. Clears OpenSSL's error queue. */
void svc__tls_why(SSL *ssl, char *buf, size_t len);

#endif
