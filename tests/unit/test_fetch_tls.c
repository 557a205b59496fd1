/*
 * The HTTP/1.1 client of svc_fetch over TLS (common/fetch_h1.c with common/fetch_tls.c): an
 * https:// URL with req.http = SVC_FETCH_HTTP_1, through the public API only (svc/fetch.h,
 * svc/loop.h), against a TLS server on 127.0.0.1 built here with OpenSSL, in threads of its own
 * (one per connection, blocking sockets), that answers by request path with canned bytes.
 *
 * At start the process makes, in memory, a private CA (EC P-256) and two server certificates
 * it signs, one naming IP:127.0.0.1 and DNS:localhost, one naming only DNS:other.example; and
 * an unrelated CA. Both CAs go to temporary PEM files for req.ca_file, removed at exit. The
 * server counts the connections it accepted, the handshakes done and failed, the resumed
 * sessions, notes the ALPN list and the SNI the client sent and when each connection ended,
 * and keeps the raw bytes of every request. All of it is under the server's mutex (the
 * ThreadSanitizer build runs these tests too).
 *
 * Covered (the numbers in the cases' comments): 1. keep-alive over TLS, ALPN "http/1.1", the
 * Host line, no SNI for an address; 2. session resumption on a second connection; 3. a TLS 1.3
 * session ticket that arrives while a kept-alive connection is idle; 4. stream mode with pauses
 * over 16 KiB records read through the connection's 1 KiB buffer (bytes held inside OpenSSL);
 * 5. verification: an unrelated CA, a certificate that names neither the address nor the name,
 * a CA file that does not exist, and the name check and SNI for a name that matches; 6. a
 * kept-alive connection closed by the server (with close_notify, or without) while idle, and
 * on the next request (the retry); 7. the connect timeout during the handshake; 8. a
 * close-delimited body ended by close_notify, and without it; 9. request bodies of many TLS
 * records, whose writes block on a full socket.
 *
 * Each case waits for events with a hang guard (WAIT_MS), never for a fixed time that a slow
 * machine could miss: no case asserts an upper bound on time. A wait of fixed length (run_for)
 * only lets the case reach the state it aims at; the checks hold whether it did or not.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include "svc/err.h"
#include "svc/fetch.h"
#include "svc/loop.h"
#include "test.h"
#include "loop_wait.h"
#include "srv_request.h"

/* How long a case waits for what it expects before it fails: a guard against hangs only. */
#define WAIT_MS 5000

/* /big's body (case 4): 200 KiB, in SSL_write calls of one full record each. */
#define BIG_LEN (200u * 1024u)
#define RECORD 16384u

/* Byte i of /big's body: a multiplicative hash of i, so a piece delivered twice, lost or out of
 * order shows at its first byte. */
static unsigned char pattern(uint64_t i)
{
    return (unsigned char)(((uint32_t)i * 2654435761u) >> 24);
}

/* --- certificates -------------------------------------------------------------------------- */

/* A key and its certificate. */
struct tls_id {
    EVP_PKEY *key;
    X509 *cert;
};

static struct tls_id ca, ca_other;          /* the server's CA, and one unrelated to it */
static struct tls_id cert_ok, cert_other;   /* IP:127.0.0.1 and DNS:localhost; DNS:other.example */
static char ca_file[64], ca_other_file[64]; /* the CAs as PEM files, for req.ca_file */

static void ext_add(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509_EXTENSION *e;

    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
    e = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    T_ASSERT(e != NULL);
    T_EQ_INT(X509_add_ext(x, e, -1), 1);
    X509_EXTENSION_free(e);
}

/* A new P-256 key and a certificate for cn: a CA's (self-signed) when issuer is NULL, else a
 * server's for the names san, signed by issuer. */
static void id_make(struct tls_id *id, const char *cn, const struct tls_id *issuer, const char *san)
{
    static long serial;
    const unsigned char *ucn = (const unsigned char *)cn;
    X509 *x;
    X509_NAME *name;

    T_ASSERT((id->key = EVP_EC_gen("P-256")) != NULL);
    T_ASSERT((x = id->cert = X509_new()) != NULL);
    T_EQ_INT(X509_set_version(x, 2), 1);
    T_EQ_INT(ASN1_INTEGER_set(X509_get_serialNumber(x), ++serial), 1);
    T_ASSERT(X509_gmtime_adj(X509_getm_notBefore(x), -3600) != NULL);
    T_ASSERT(X509_gmtime_adj(X509_getm_notAfter(x), 86400) != NULL);
    name = X509_get_subject_name(x);
    T_EQ_INT(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, ucn, -1, -1, 0), 1);
    T_EQ_INT(X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer->cert) : name),
             1);
    T_EQ_INT(X509_set_pubkey(x, id->key), 1);
    if (issuer == NULL) {
        ext_add(x, x, NID_basic_constraints, "critical,CA:TRUE");
        ext_add(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
        ext_add(x, x, NID_subject_key_identifier, "hash");
    } else {
        ext_add(x, issuer->cert, NID_basic_constraints, "critical,CA:FALSE");
        ext_add(x, issuer->cert, NID_key_usage, "critical,digitalSignature");
        ext_add(x, issuer->cert, NID_ext_key_usage, "serverAuth");
        ext_add(x, issuer->cert, NID_authority_key_identifier, "keyid:always");
        ext_add(x, issuer->cert, NID_subject_alt_name, san);
    }
    T_ASSERT(X509_sign(x, issuer != NULL ? issuer->key : id->key, EVP_sha256()) > 0);
}

/* Writes cert to a new temporary file, its path in path. */
static void pem_file(char *path, size_t len, X509 *cert)
{
    int fd;
    FILE *fp;

    snprintf(path, len, "/tmp/test_fetch_tls_XXXXXX");
    T_ASSERT((fd = mkstemp(path)) >= 0);
    T_ASSERT((fp = fdopen(fd, "w")) != NULL);
    T_EQ_INT(PEM_write_X509(fp, cert), 1);
    T_EQ_INT(fclose(fp), 0);
}

static void files_remove(void)
{
    if (ca_file[0] != '\0')
        unlink(ca_file);
    if (ca_other_file[0] != '\0')
        unlink(ca_other_file);
}

static void certs_make(void)
{
    id_make(&ca, "chatweb test CA", NULL, NULL);
    id_make(&ca_other, "unrelated test CA", NULL, NULL);
    id_make(&cert_ok, "127.0.0.1", &ca, "IP:127.0.0.1,DNS:localhost");
    id_make(&cert_other, "other.example", &ca, "DNS:other.example");
    T_EQ_INT(atexit(files_remove), 0);
    pem_file(ca_file, sizeof(ca_file), ca.cert);
    pem_file(ca_other_file, sizeof(ca_other_file), ca_other.cert);
}

/* --- the server ---------------------------------------------------------------------------- */

#define SRV_CONNS 16 /* connections one case may open */
#define SRV_REQS 32  /* requests one case may send */
#define SRV_MAX 32   /* servers one process may start (all cases in one process: no T_CASE) */

enum srv_kind {
    SRV_CERT_OK,    /* TLS with cert_ok */
    SRV_CERT_OTHER, /* TLS with cert_other */
    SRV_MUTE,       /* accepts, reads, and never says a word (no TLS) */
};

/* What the server knows of one accepted connection. */
struct srv_conn_info {
    int offered;  /* the client offered a session to resume (pre_shared_key, TLS 1.3) */
    int resumed;  /* the handshake resumed a session (SSL_session_reused) */
    int ended;    /* the server's thread for it has ended (closed by either side) */
    char sni[64]; /* the name the client sent (SNI), "" for none */
};

/* One server per case. Everything in it is shared with the server's threads: read and written
 * under mu only, but ctx, port and lfd, set before its threads start. */
struct server {
    pthread_mutex_t mu;
    SSL_CTX *ctx; /* NULL for SRV_MUTE */
    int port;
    int lfd;
    int accepts;           /* TCP connections accepted */
    int handshakes;        /* TLS handshakes done */
    int failed_handshakes; /* ... and failed */
    int live;              /* connection threads still running */
    struct srv_conn_info conn[SRV_CONNS];
    unsigned char alpn[64]; /* the ALPN list the client offered last (wire format) */
    unsigned alpn_len;
    int tickets; /* session tickets /ticket sent on an idle connection */
    int nreqs;
    struct srv_req reqs[SRV_REQS];
};

/* Static, not malloc'ed: the server's threads outlive the case when all cases share a process. */
static struct server servers[SRV_MAX];
static int nservers;
static struct server *srv; /* the current case's */

/* The server thread's own state for one connection. */
struct srv_conn {
    struct srv_in in; /* first: fill finds the connection from it */
    struct server *s;
    int id, fd;
    SSL *ssl;
    int drop_next; /* 0, or how to close instead of answering the next request */
};

/* What a connection does after an answer: read the next request, or close with close_notify
 * (SSL_shutdown) or without it (the socket only). */
enum { KEEP, CLOSE_NOTIFY, CLOSE_RAW };

static void nap(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void srv_lock(void)
{
    T_EQ_INT(pthread_mutex_lock(&srv->mu), 0);
}

static void srv_unlock(void)
{
    T_EQ_INT(pthread_mutex_unlock(&srv->mu), 0);
}

/* The client's ALPN offer is noted; the server picks http/1.1 from it. */
static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned inlen, void *arg)
{
    static const unsigned char ours[] = "\x08http/1.1";
    struct server *s = arg;

    (void)ssl;
    pthread_mutex_lock(&s->mu);
    s->alpn_len = inlen < sizeof(s->alpn) ? inlen : sizeof(s->alpn);
    memcpy(s->alpn, in, s->alpn_len);
    pthread_mutex_unlock(&s->mu);
    if (SSL_select_next_proto((unsigned char **)out, outlen, ours, sizeof(ours) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    return SSL_TLSEXT_ERR_OK;
}

/* Notes whether the ClientHello offers a session (the pre_shared_key extension). */
static int on_client_hello(SSL *ssl, int *alert, void *arg)
{
    struct srv_conn *c = SSL_get_app_data(ssl);
    const unsigned char *ext;
    size_t len;
    int offered = SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_psk, &ext, &len);

    (void)alert;
    (void)arg;
    pthread_mutex_lock(&c->s->mu);
    c->s->conn[c->id].offered = offered;
    pthread_mutex_unlock(&c->s->mu);
    return SSL_CLIENT_HELLO_SUCCESS;
}

/* TLS 1.2 or later (1.3 is what both sides pick), id's certificate, session tickets on (the
 * default: two after each full handshake). */
static SSL_CTX *server_ctx(struct server *s, const struct tls_id *id)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    T_ASSERT(ctx != NULL);
    T_EQ_INT(SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION), 1);
    T_EQ_INT(SSL_CTX_use_certificate(ctx, id->cert), 1);
    T_EQ_INT(SSL_CTX_use_PrivateKey(ctx, id->key), 1);
    T_EQ_INT(SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"test", 4), 1);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, s);
    SSL_CTX_set_client_hello_cb(ctx, on_client_hello, NULL);
    return ctx;
}

static void srv_write(struct srv_conn *c, const void *p, size_t len)
{
    while (len > 0) {
        int n = SSL_write(c->ssl, p, (int)len);
        if (n <= 0)
            return; /* the client went away: what it did not read does not matter */
        p = (const char *)p + n;
        len -= (size_t)n;
    }
}

static void srv_write_str(struct srv_conn *c, const char *s)
{
    srv_write(c, s, strlen(s));
}

/* More bytes into c's buffer (struct srv_in). */
static int fill(struct srv_in *in)
{
    struct srv_conn *c = (struct srv_conn *)in;
    int n;

    if (in->have == sizeof(in->buf))
        return -1;
    n = SSL_read(c->ssl, in->buf + in->have, (int)(sizeof(in->buf) - in->have));
    if (n <= 0)
        return -1;
    in->have += (size_t)n;
    return 0;
}

/* Reads one request (head and Content-Length body) into r. Returns 0, or -1 when the client
 * closed the connection first. A query with "slow=1" waits 50 ms between the head and the
 * body, so that the client's writes of a long body find the socket full. */
static int read_request(struct srv_conn *c, struct srv_req *r)
{
    uint64_t left;

    if (srv_read_head(&c->in, r, &left) != 0)
        return -1;
    if (strstr(r->query, "slow=1") != NULL)
        nap(50);
    return srv_read_body(&c->in, r, left);
}

/* A Content-Length response with body. */
static void answer_body(struct srv_conn *c, const char *body)
{
    char head[128];

    snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", strlen(body));
    srv_write_str(c, head);
    srv_write_str(c, body);
}

/* How a path that closes closes: "notify=0" in the query, without close_notify. */
static int close_way(const struct srv_req *r)
{
    return strstr(r->query, "notify=0") != NULL ? CLOSE_RAW : CLOSE_NOTIFY;
}

/* /big: BIG_LEN bytes of pattern() after a head of their own, one full record per SSL_write. */
static void answer_big(struct srv_conn *c)
{
    char head[96], rec[RECORD];

    snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nContent-Length: %u\r\n\r\n", BIG_LEN);
    srv_write_str(c, head);
    for (uint64_t off = 0; off < BIG_LEN; off += RECORD) {
        size_t n = BIG_LEN - off < RECORD ? BIG_LEN - off : RECORD;
        for (size_t i = 0; i < n; i++)
            rec[i] = (char)pattern(off + i);
        srv_write(c, rec, n);
    }
}

/* /ticket: the answer, then, once the client has it and the connection is idle, a new TLS 1.3
 * session ticket (SSL_new_session_ticket queues it; SSL_do_handshake sends it). Counted in
 * tickets when bytes left for it. */
static void answer_ticket(struct srv_conn *c)
{
    BIO *wbio = SSL_get_wbio(c->ssl);
    uint64_t before;

    answer_body(c, "hello");
    nap(20);
    before = BIO_number_written(wbio);
    if (SSL_new_session_ticket(c->ssl) == 1 && SSL_do_handshake(c->ssl) == 1 &&
        BIO_number_written(wbio) > before) {
        pthread_mutex_lock(&c->s->mu);
        c->s->tickets++;
        pthread_mutex_unlock(&c->s->mu);
    }
}

/* The script: answers r by its path on connection c. Returns KEEP (read the next request),
 * CLOSE_NOTIFY or CLOSE_RAW. */
static int answer(struct srv_conn *c, const struct srv_req *r)
{
    const char *p = r->path;

    if (strcmp(p, "/count") == 0) { /* the request body's length and byte sum */
        char body[96];
        snprintf(body, sizeof(body), "len=%llu sum=%llu", (unsigned long long)r->body_len,
                 (unsigned long long)r->body_sum);
        answer_body(c, body);
    } else if (strcmp(p, "/big") == 0) {
        answer_big(c);
    } else if (strcmp(p, "/ticket") == 0) {
        answer_ticket(c);
    } else if (strcmp(p, "/close-idle") == 0) { /* kept alive, said, then closed while idle */
        answer_body(c, "first");
        nap(30);
        return close_way(r);
    } else if (strcmp(p, "/drop-next") == 0) { /* the next request on it meets the close */
        answer_body(c, "first");
        c->drop_next = close_way(r);
    } else if (strcmp(p, "/close-body") == 0) { /* no length: the body ends at the close */
        srv_write_str(c, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the ");
        nap(5);
        srv_write_str(c, "server closes");
        return close_way(r);
    } else if (strncmp(r->query, "i=", 2) == 0) { /* /ok?i=N: "ok N" */
        char body[64];
        snprintf(body, sizeof(body), "ok %s", r->query + 2);
        answer_body(c, body);
    } else { /* /ok and any other path */
        answer_body(c, "hello");
    }
    return KEEP;
}

/* The TLS side of a connection: the handshake, then requests until a close. */
static void serve_tls(struct srv_conn *c, struct srv_req *r)
{
    struct server *s = c->s;
    const char *sni;
    int end = KEEP;

    T_ASSERT((c->ssl = SSL_new(s->ctx)) != NULL);
    SSL_set_app_data(c->ssl, c);
    T_EQ_INT(SSL_set_fd(c->ssl, c->fd), 1);
    if (SSL_accept(c->ssl) != 1) {
        pthread_mutex_lock(&s->mu);
        s->failed_handshakes++;
        pthread_mutex_unlock(&s->mu);
        return;
    }
    sni = SSL_get_servername(c->ssl, TLSEXT_NAMETYPE_host_name);
    pthread_mutex_lock(&s->mu);
    s->handshakes++;
    s->conn[c->id].resumed = SSL_session_reused(c->ssl);
    snprintf(s->conn[c->id].sni, sizeof(s->conn[c->id].sni), "%s", sni != NULL ? sni : "");
    pthread_mutex_unlock(&s->mu);
    while (end == KEEP) {
        if (read_request(c, r) != 0)
            return;
        r->conn = c->id;
        pthread_mutex_lock(&s->mu);
        if (s->nreqs < SRV_REQS)
            s->reqs[s->nreqs++] = *r;
        pthread_mutex_unlock(&s->mu);
        end = c->drop_next != 0 ? c->drop_next : answer(c, r);
    }
    if (end == CLOSE_NOTIFY)
        (void)SSL_shutdown(c->ssl);
}

static void *conn_main(void *arg)
{
    struct srv_conn *c = arg;
    struct server *s = c->s;
    struct srv_req *r = calloc(1, sizeof(*r));

    T_ASSERT(r != NULL);
    if (s->ctx != NULL)
        serve_tls(c, r);
    else /* SRV_MUTE */
        while (recv(c->fd, c->in.buf, sizeof(c->in.buf), 0) > 0)
            ;
    SSL_free(c->ssl); /* without SSL_shutdown: sends nothing */
    ERR_clear_error();
    close(c->fd);
    pthread_mutex_lock(&s->mu);
    s->conn[c->id].ended = 1;
    s->live--;
    pthread_mutex_unlock(&s->mu);
    free(r);
    free(c);
    return NULL;
}

static void *accept_main(void *arg)
{
    struct server *s = arg;

    for (;;) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC), id;
        struct srv_conn *c;
        pthread_t th;

        if (fd < 0)
            continue;
        pthread_mutex_lock(&s->mu);
        id = s->accepts < SRV_CONNS ? s->accepts++ : -1;
        s->live += id >= 0;
        pthread_mutex_unlock(&s->mu);
        if (id < 0) {
            close(fd);
            continue;
        }
        T_ASSERT((c = calloc(1, sizeof(*c))) != NULL);
        c->s = s;
        c->id = id;
        c->fd = fd;
        c->in.fill = fill;
        T_EQ_INT(pthread_create(&th, NULL, conn_main, c), 0);
        T_EQ_INT(pthread_detach(th), 0);
    }
    return NULL;
}

/* A new server of kind on 127.0.0.1 (port in srv->port), becoming the current one. Its
 * listener runs until the process ends (each case is a process of its own). */
static void server_start(enum srv_kind kind)
{
    struct sockaddr_in sa = {0};
    socklen_t sl = sizeof(sa);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), rcvbuf = 16384;
    pthread_t th;

    T_ASSERT(nservers < SRV_MAX);
    srv = &servers[nservers++];
    T_EQ_INT(pthread_mutex_init(&srv->mu, NULL), 0);
    if (kind != SRV_MUTE)
        srv->ctx = server_ctx(srv, kind == SRV_CERT_OK ? &cert_ok : &cert_other);
    T_ASSERT(lfd >= 0);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* a small receive buffer (the accepted sockets inherit it): a long request body fills it
     * while the server waits, and the client's writes would block (case 9) */
    T_EQ_INT(setsockopt(lfd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)), 0);
    T_EQ_INT(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    T_EQ_INT(listen(lfd, 64), 0);
    T_EQ_INT(getsockname(lfd, (struct sockaddr *)&sa, &sl), 0);
    srv->port = ntohs(sa.sin_port);
    srv->lfd = lfd;
    T_EQ_INT(pthread_create(&th, NULL, accept_main, srv), 0);
    T_EQ_INT(pthread_detach(th), 0);
}

/* A field of the server, read under its lock. */
static int srv_int(const int *field)
{
    int v;

    srv_lock();
    v = *field;
    srv_unlock();
    return v;
}

static struct srv_conn_info srv_conn_info(int id)
{
    struct srv_conn_info v;

    srv_lock();
    v = srv->conn[id];
    srv_unlock();
    return v;
}

/* A copy of request i (0-based, in the order the server read them), raw NUL-terminated. */
static struct srv_req srv_request(int i)
{
    struct srv_req r;

    srv_lock();
    T_ASSERT(i < srv->nreqs);
    r = srv->reqs[i];
    srv_unlock();
    r.raw[r.len] = '\0';
    return r;
}

/* How many requests for path arrived on connection conn (-1: on any). */
static int srv_count(const char *path, int conn)
{
    int n = 0;

    srv_lock();
    for (int i = 0; i < srv->nreqs; i++)
        n += strcmp(srv->reqs[i].path, path) == 0 && (conn < 0 || srv->reqs[i].conn == conn);
    srv_unlock();
    return n;
}

/* For run_until: *(int *)arg (a field of srv) is at least 1. */
static int srv_field_set(void *arg)
{
    return srv_int(arg) > 0;
}

/* For run_until: the server's thread for connection *(int *)arg has ended. */
static int srv_conn_ended(void *arg)
{
    return srv_conn_info(*(int *)arg).ended;
}

/* For run_until: every connection thread of the server has ended. */
static int srv_quiet(void *arg)
{
    (void)arg;
    return srv_int(&srv->live) == 0;
}

/* --- the client ---------------------------------------------------------------------------- */

/* One transfer of a case and everything its callbacks saw. */
struct xfer {
    struct svc_fetch *f;
    int id;
    char url[256];
    int pause_every;          /* stream: on_data pauses on every pause_every-th call (0: never) */
    struct svc_timer *resume; /* ... and this resumes it 2 ms later */
    int pattern;              /* stream: the body is /big's, checked against pattern(), not kept */
    int data_calls, pauses, done;
    uint64_t got;   /* stream: body bytes taken by on_data */
    int64_t bad_at; /* pattern: the offset of the first wrong byte, or -1 */
    int err;
    long status;
    char body[1024]; /* the buffered body, or the stream's bytes put together */
    size_t len;
    char errmsg[256];
};

#define NXF 8
static struct xfer xf[NXF];
static struct svc_fetch_multi *multi;

static int on_data(void *ctx, struct svc_fetch *f, long status, const char *data, size_t len)
{
    struct xfer *x = ctx;

    (void)f;
    (void)status;
    x->data_calls++;
    if (x->pause_every > 0 && x->data_calls % x->pause_every == 0) {
        x->pauses++;
        T_EQ_INT(svc_timer_start(x->resume, 2), SVC_OK);
        return SVC_FETCH_PAUSE; /* not taken: the same bytes come again after the resume */
    }
    if (x->pattern) {
        for (size_t i = 0; i < len && x->bad_at < 0; i++)
            if ((unsigned char)data[i] != pattern(x->got + i))
                x->bad_at = (int64_t)(x->got + i);
    } else {
        T_ASSERT(x->len + len < sizeof(x->body));
        memcpy(x->body + x->len, data, len);
        x->len += len;
    }
    x->got += len;
    return 0;
}

static void on_done(void *ctx, int err, struct svc_fetch *f, long status, const char *body,
                    size_t len, const char *errmsg)
{
    struct xfer *x = ctx;

    (void)f;
    x->done++;
    x->err = err;
    x->status = status;
    if (body != NULL) {
        T_ASSERT(len < sizeof(x->body));
        memcpy(x->body, body, len);
        x->len = len;
    }
    if (errmsg != NULL)
        snprintf(x->errmsg, sizeof(x->errmsg), "%s", errmsg);
}

static const struct svc_fetch_callbacks callbacks = {on_data, on_done, NULL};

/* A buffered GET of https://host:port/path on the current server over HTTP/1.1, trusting the
 * server's CA; the caller may change the fields before start(). x->url holds the URL. */
static struct svc_fetch_req req_to(struct xfer *x, const char *host, const char *path)
{
    struct svc_fetch_req req = {0};

    snprintf(x->url, sizeof(x->url), "https://%s:%d%s", host, srv->port, path);
    req.method = "GET";
    req.url = x->url;
    req.http = SVC_FETCH_HTTP_1;
    req.ca_file = ca_file;
    return req;
}

static struct svc_fetch_req get_req(struct xfer *x, const char *path)
{
    return req_to(x, "127.0.0.1", path);
}

static void start(struct xfer *x, const struct svc_fetch_req *req)
{
    T_EQ_INT(svc_fetch_start(&x->f, multi, req, &callbacks, x), SVC_OK);
    T_ASSERT(x->f != NULL);
}

static int xfer_done(void *arg)
{
    return ((struct xfer *)arg)->done > 0;
}

/* Waits for x's on_done; fails the case on the hang guard. */
static void wait_done(struct xfer *x)
{
    if (!run_until(xfer_done, x, WAIT_MS))
        T_FAIL("transfer %d (%s) did not end (%d on_data calls, %llu bytes, %d pauses)", x->id,
               x->url, x->data_calls, (unsigned long long)x->got, x->pauses);
}

/* Waits for the server's field *field to be set. */
static void wait_srv(int *field, const char *what)
{
    if (!run_until(srv_field_set, field, WAIT_MS))
        T_FAIL("the server never saw %s", what);
}

/* Waits for the server's thread of connection id to end. */
static void wait_conn_ended(int id)
{
    if (!run_until(srv_conn_ended, &id, WAIT_MS))
        T_FAIL("connection %d did not end", id);
}

/* x ended with SVC_OK, 200, and exactly body. */
static void expect_ok(const struct xfer *x, const char *body)
{
    if (x->err != SVC_OK)
        T_FAIL("transfer %d (%s): err %d (%s)", x->id, x->url, x->err, x->errmsg);
    T_EQ_INT(x->done, 1);
    T_EQ_INT(x->status, 200);
    T_EQ_INT(x->len, strlen(body));
    T_ASSERT(memcmp(x->body, body, x->len) == 0);
}

/* x failed with err, and errmsg holds words. */
static void expect_err(const struct xfer *x, int err, const char *words)
{
    T_EQ_INT(x->done, 1);
    if (x->err != err)
        T_FAIL("transfer %d (%s): err %d (%s), wanted %d", x->id, x->url, x->err, x->errmsg, err);
    if (strstr(x->errmsg, words) == NULL)
        T_FAIL("errmsg \"%s\" does not say \"%s\"", x->errmsg, words);
}

/* A GET of path on the current server by address, that must answer 200 with body. */
static void get_ok(struct xfer *x, const char *path, const char *body)
{
    struct svc_fetch_req req = get_req(x, path);

    start(x, &req);
    wait_done(x);
    expect_ok(x, body);
}

/* A fresh server of kind, loop and multi. */
static void setup(enum srv_kind kind)
{
    server_start(kind);
    memset(xf, 0, sizeof(xf));
    for (int i = 0; i < NXF; i++) {
        xf[i].id = i;
        xf[i].bad_at = -1;
    }
    T_EQ_INT(svc_loop_create(&loop), SVC_OK);
    T_EQ_INT(svc_fetch_multi_create(&multi, loop, 0), SVC_OK);
}

/* Ends the case: the multi closes its connections, and the server's threads, which see those
 * ends, are waited for (none may be left inside OpenSSL when the process exits). */
static void teardown(void)
{
    T_EQ_INT(svc_fetch_multi_active(multi), 0);
    svc_fetch_multi_destroy(&multi);
    if (!run_until(srv_quiet, NULL, WAIT_MS))
        T_FAIL("%d server connections still open after svc_fetch_multi_destroy",
               srv_int(&srv->live));
    svc_loop_destroy(&loop);
}

/* --- cases --------------------------------------------------------------------------------- */

/*
 * 1. Three sequential GETs by address: each its own answer, all over ONE TLS connection (a
 * client that did not keep TLS connections alive would open three); ALPN offered exactly
 * "http/1.1" (a client offering h2 here could be answered in HTTP/2, which it cannot read);
 * Host names the address and port; no SNI (RFC 6066 forbids an address there).
 */
static void test_keepalive_reuse(void)
{
    char want[64];

    setup(SRV_CERT_OK);
    for (int i = 0; i < 3; i++) {
        char path[16], body[16];
        snprintf(path, sizeof(path), "/ok?i=%d", i);
        snprintf(body, sizeof(body), "ok %d", i);
        get_ok(&xf[i], path, body);
    }
    T_EQ_INT(srv_int(&srv->accepts), 1);
    T_EQ_INT(srv_int(&srv->handshakes), 1);
    T_EQ_INT(srv_int(&srv->nreqs), 3);
    T_EQ_INT(srv_count("/ok", 0), 3);
    srv_lock();
    T_EQ_INT(srv->alpn_len, 9);
    T_ASSERT(memcmp(srv->alpn, "\x08http/1.1", 9) == 0);
    srv_unlock();
    T_EQ_STR(srv_conn_info(0).sni, "");
    snprintf(want, sizeof(want), "GET /ok?i=0 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", srv->port);
    T_EQ_STR(srv_request(0).raw, want);
    teardown();
}

/*
 * 2. A second connection to the origin (fresh_connection) resumes the session of the first: a
 * client that did not keep the server's session (the new-session callback), or did not offer
 * it on the next connection, makes the server do a full handshake again.
 */
static void test_session_resumption(void)
{
    struct svc_fetch_req req;

    setup(SRV_CERT_OK);
    get_ok(&xf[0], "/ok", "hello");
    req = get_req(&xf[1], "/ok?i=1");
    req.fresh_connection = 1;
    start(&xf[1], &req);
    wait_done(&xf[1]);
    expect_ok(&xf[1], "ok 1");
    T_EQ_INT(srv_int(&srv->accepts), 2);
    T_EQ_INT(srv_conn_info(0).resumed, 0);
    T_EQ_INT(srv_conn_info(1).resumed, 1);
    T_EQ_INT(srv_count("/ok", 1), 1);
    wait_conn_ended(1); /* fresh: not kept */
    /* A connection closed by the client (without close_notify) leaves the session resumable:
     * OpenSSL marks the session of a connection freed without a shutdown not resumable, and
     * that was the origin's, which the next connection offers. */
    req = get_req(&xf[2], "/ok?i=2");
    req.fresh_connection = 1;
    start(&xf[2], &req);
    wait_done(&xf[2]);
    expect_ok(&xf[2], "ok 2");
    T_EQ_INT(srv_int(&srv->accepts), 3);
    T_EQ_INT(srv_conn_info(2).resumed, 1);
    teardown();
}

/* 2. The same with a burst: after one request, seven at once on new connections all offer
 * the origin's session and resume it. OpenSSL's client marks a TLS 1.3 session not resumable
 * once a handshake resumed it: connections whose ClientHello came after the first resumed
 * handshake offered nothing (1 to 5 of the 7, 1 run in 10) until each got a copy. */
static void test_session_resumption_burst(void)
{
    struct svc_fetch_req req;
    char path[32];

    setup(SRV_CERT_OK);
    get_ok(&xf[0], "/ok", "hello");
    for (int i = 1; i < NXF; i++) {
        snprintf(path, sizeof(path), "/ok?i=%d", i);
        req = get_req(&xf[i], path);
        req.fresh_connection = 1;
        start(&xf[i], &req);
    }
    for (int i = 1; i < NXF; i++)
        wait_done(&xf[i]);
    T_EQ_INT(srv_int(&srv->accepts), NXF);
    for (int i = 1; i < NXF; i++) {
        if (!srv_conn_info(i).offered)
            T_FAIL("connection %d of the burst did not offer the session", i);
        if (!srv_conn_info(i).resumed)
            T_FAIL("connection %d of the burst did not resume the session", i);
    }
    teardown();
}

/* 2. Another multi (another loop of the same service) meeting the origin for the first time
 * resumes the session the first one got: sessions are shared by the process. */
static void test_session_shared_between_multis(void)
{
    struct svc_fetch_multi *first = NULL;
    struct svc_fetch_req req;

    setup(SRV_CERT_OK);
    get_ok(&xf[0], "/ok", "hello"); /* on the case's multi: its session */
    first = multi;
    T_EQ_INT(svc_fetch_multi_create(&multi, loop, 0), SVC_OK);
    req = get_req(&xf[1], "/ok?i=1");
    start(&xf[1], &req);
    wait_done(&xf[1]);
    expect_ok(&xf[1], "ok 1");
    T_EQ_INT(srv_int(&srv->accepts), 2);
    T_EQ_INT(srv_conn_info(1).resumed, 1);
    T_EQ_INT(svc_fetch_multi_active(first), 0);
    svc_fetch_multi_destroy(&first);
    teardown();
}

/*
 * 3. A TLS 1.3 NewSessionTicket sent while the kept-alive connection is idle makes it readable
 * without any HTTP bytes: the client must read the ticket and keep the connection. A client
 * that took "readable while idle" for the server's close (right for cleartext) would close it,
 * and the next request would need a second connection.
 */
static void test_ticket_while_idle(void)
{
    setup(SRV_CERT_OK);
    get_ok(&xf[0], "/ticket", "hello");
    wait_srv(&srv->tickets, "its session ticket sent");
    run_for(50); /* the client's loop meets the ticket on its idle connection */
    get_ok(&xf[1], "/ok", "hello");
    T_EQ_INT(srv_int(&srv->accepts), 1);
    T_EQ_INT(srv_count("/ok", 0), 1);
    teardown();
}

static void on_resume(void *ctx, struct svc_timer *t)
{
    struct xfer *x = ctx;

    (void)t;
    svc_fetch_pause(x->f, 0);
}

/*
 * 4. 200 KiB in full 16 KiB records, read in stream mode through the connection's 1 KiB buffer,
 * so most of each record waits inside OpenSSL (SSL_has_pending) where epoll cannot see it;
 * on_data pauses on every third call and a timer resumes it 2 ms later. Once the server has
 * sent the last record the socket stays silent: a client that, on resume, delivered the held
 * bytes and then waited for the socket instead of reading what OpenSSL holds would hang (the
 * hang guard fails the case). Every byte must come once and in order (pattern()), the transfer
 * ends with SVC_OK, and the connection is reused after it.
 */
static void test_stream_large_records_paused(void)
{
    struct xfer *x = &xf[0];
    struct svc_fetch_req req;

    setup(SRV_CERT_OK);
    T_EQ_INT(svc_timer_create(&x->resume, loop, on_resume, x), SVC_OK);
    x->pause_every = 3;
    x->pattern = 1;
    req = get_req(x, "/big");
    req.stream = 1;
    start(x, &req);
    wait_done(x);
    svc_timer_destroy(&x->resume);
    if (x->err != SVC_OK)
        T_FAIL("err %d (%s) after %llu bytes", x->err, x->errmsg, (unsigned long long)x->got);
    T_EQ_INT(x->status, 200);
    T_EQ_INT(x->bad_at, -1);
    T_EQ_INT(x->got, BIG_LEN);
    T_ASSERT(x->pauses >= 10); /* it did pause, many times */
    get_ok(&xf[1], "/ok", "hello");
    T_EQ_INT(srv_int(&srv->accepts), 1);
    teardown();
}

/* 5. A GET of /ok from host, trusting the CA file ca, that must fail in the handshake with
 * SVC_EUNAVAIL and "certificate verify failed", the request never reaching the server. */
static void get_refused(const char *host, const char *ca)
{
    struct svc_fetch_req req = req_to(&xf[0], host, "/ok");

    req.ca_file = ca;
    start(&xf[0], &req);
    wait_done(&xf[0]);
    expect_err(&xf[0], SVC_EUNAVAIL, "certificate verify failed");
    wait_srv(&srv->failed_handshakes, "the handshake fail");
    T_EQ_INT(srv_int(&srv->handshakes), 0);
    T_EQ_INT(srv_int(&srv->nreqs), 0);
}

/* 5a. A CA file of an unrelated CA: the server's chain does not verify. A client that did not
 * verify (SSL_VERIFY_NONE), or took the system's CAs plus the file, would get "hello". */
static void test_verify_wrong_ca(void)
{
    setup(SRV_CERT_OK);
    get_refused("127.0.0.1", ca_other_file);
    teardown();
}

/* 5b. A certificate of the right CA that names only other.example: refused for 127.0.0.1 (a
 * client without the IP check would accept any certificate of the CA) and for localhost (the
 * host name check). */
static void test_verify_name_mismatch(void)
{
    setup(SRV_CERT_OTHER);
    get_refused("127.0.0.1", ca_file);
    teardown();
    setup(SRV_CERT_OTHER);
    get_refused("localhost", ca_file);
    teardown();
}

/* 5c. A CA file that does not exist: svc_fetch_start refuses the transfer (SVC_EINVAL, no
 * handle, no callback, no connection), rather than trusting the system's CAs or failing
 * later. */
static void test_verify_ca_file_missing(void)
{
    struct svc_fetch_req req;
    struct svc_fetch *f;

    setup(SRV_CERT_OK);
    req = get_req(&xf[0], "/ok");
    req.ca_file = "/nonexistent/test_fetch_tls/ca.pem";
    f = (struct svc_fetch *)&f; /* not NULL: the call must set it */
    T_EQ_INT(svc_fetch_start(&f, multi, &req, &callbacks, &xf[0]), SVC_EINVAL);
    T_ASSERT(f == NULL);
    run_for(50);
    T_EQ_INT(xf[0].done, 0);
    T_EQ_INT(srv_int(&srv->accepts), 0);
    teardown();
}

/* 5d. A name that the certificate holds: verified, sent as SNI, and in Host. A client that
 * checked the name as if it were an address, or sent no SNI, fails here. */
static void test_verify_name_ok(void)
{
    struct svc_fetch_req req;
    char want[64];

    setup(SRV_CERT_OK);
    req = req_to(&xf[0], "localhost", "/ok");
    start(&xf[0], &req);
    wait_done(&xf[0]);
    expect_ok(&xf[0], "hello");
    T_EQ_STR(srv_conn_info(0).sni, "localhost");
    snprintf(want, sizeof(want), "\r\nHost: localhost:%d\r\n", srv->port);
    T_ASSERT(strstr(srv_request(0).raw, want) != NULL);
    teardown();
}

/*
 * 6. The server closes the kept-alive connection while it is idle, with close_notify and
 * without: the next request still succeeds, on a second connection. The client sees the close
 * on its idle connection (the TLS end read by the idle watch) and drops it; were it to miss it,
 * the retry below would still save the request, so this fails only when both are broken, or
 * when the idle watch mishandles the close (a crash, a leak, an error surfacing).
 */
static void test_stale_closed_while_idle(void)
{
    for (int notify = 1; notify >= 0; notify--) {
        char path[32];

        setup(SRV_CERT_OK);
        snprintf(path, sizeof(path), "/close-idle?notify=%d", notify);
        get_ok(&xf[0], path, "first");
        wait_conn_ended(0);
        run_for(20); /* the client's loop sees the close of its idle connection */
        get_ok(&xf[1], "/ok", "hello");
        T_EQ_INT(srv_int(&srv->accepts), 2);
        T_EQ_INT(srv_count("/ok", 1), 1);
        teardown();
    }
}

/*
 * 6. ... and the close meets the next request: the server reads it and closes (with
 * close_notify and without) before a byte of answer. The client retries once on a new
 * connection: the request is seen twice, the transfer succeeds. A client that did not retry a
 * reused connection's end before any answer would fail the transfer ("closed the connection
 * before the response ended").
 */
static void test_stale_closed_on_next_request(void)
{
    for (int notify = 1; notify >= 0; notify--) {
        char path[32];

        setup(SRV_CERT_OK);
        snprintf(path, sizeof(path), "/drop-next?notify=%d", notify);
        get_ok(&xf[0], path, "first");
        get_ok(&xf[1], "/ok", "hello");
        T_EQ_INT(srv_int(&srv->accepts), 2);
        T_EQ_INT(srv_count("/ok", 0), 1); /* met the close */
        T_EQ_INT(srv_count("/ok", 1), 1); /* the retry */
        teardown();
    }
}

/*
 * 7. connect_timeout_ms covers the handshake: a server that accepts the TCP connection and never
 * speaks TLS ends the transfer with SVC_ETIMEDOUT, and the connection is closed. A client that
 * stopped the connect deadline when TCP connected would wait forever (no timeout_ms is set).
 */
static void test_err_handshake_timeout(void)
{
    struct svc_fetch_req req;

    setup(SRV_MUTE);
    req = get_req(&xf[0], "/ok");
    req.connect_timeout_ms = 200;
    start(&xf[0], &req);
    wait_done(&xf[0]);
    expect_err(&xf[0], SVC_ETIMEDOUT, "connecting to");
    wait_conn_ended(0);
    teardown();
}

/*
 * 8. No length and Connection: close: the body ends at the server's close_notify, whole, with
 * SVC_OK; the next request takes a new connection. A client that treated the TLS end as an
 * error, or lost the bytes read before it, fails here.
 */
static void test_body_close_delimited(void)
{
    setup(SRV_CERT_OK);
    get_ok(&xf[0], "/close-body?notify=1", "until the server closes");
    get_ok(&xf[1], "/ok", "hello");
    T_EQ_INT(srv_int(&srv->accepts), 2);
    teardown();
}

/*
 * 8. ... and without close_notify (the socket just closes): fetch_tls.c takes such an end for
 * the end of the body too, on purpose ("many servers end so"; OpenSSL 3 reports it as
 * SSL_R_UNEXPECTED_EOF_WHILE_READING). This pins that choice: a truncation of a close-delimited
 * body cannot be told from its end.
 */
static void test_body_close_delimited_no_notify(void)
{
    setup(SRV_CERT_OK);
    get_ok(&xf[0], "/close-body?notify=0", "until the server closes");
    teardown();
}

/* 9. A POST of n bytes of pattern() to /count, whose server waits 50 ms before it reads the
 * body: it must get every byte once. */
static void post_count(struct xfer *x, size_t n)
{
    char *body = malloc(n);
    unsigned long long sum = 0;
    char want[96];
    struct svc_fetch_req req;

    T_ASSERT(body != NULL);
    for (size_t i = 0; i < n; i++) {
        body[i] = (char)pattern(i);
        sum += (unsigned char)body[i];
    }
    req = get_req(x, "/count?slow=1");
    req.method = "POST";
    req.body = body;
    req.body_len = n;
    start(x, &req);
    free(body); /* svc_fetch_start copied it */
    wait_done(x);
    snprintf(want, sizeof(want), "len=%zu sum=%llu", n, sum);
    expect_ok(x, want);
}

/*
 * 9. Request bodies of many TLS records: 300 KiB, which SSL_write takes a record at a time
 * (partial-write mode) and the socket takes whole; then 6 MiB, more than the client's socket
 * buffer grows to on loopback (4 MiB, tcp_wmem) and the server's small receive buffer hold
 * while the server waits, so writes block (SSL_ERROR_WANT_WRITE) and resume on writable. A
 * client that lost the rest of a partial write would leave the server waiting for bytes that
 * never come (the hang guard); one that wrote a piece twice, or retried a blocked SSL_write
 * with other bytes, gives another sum or a TLS error.
 */
static void test_post_large_body(void)
{
    setup(SRV_CERT_OK);
    post_count(&xf[0], 300u * 1024u);
    post_count(&xf[1], 6u << 20);
    T_EQ_INT(srv_int(&srv->accepts), 1);
    teardown();
}

int main(void)
{
    /* OpenSSL writes with write(2): a closed peer must not kill the process (svc_service ignores
     * SIGPIPE the same way). */
    signal(SIGPIPE, SIG_IGN);
    /* the variable would send every case to libcurl: these cases are about our client */
    T_EQ_INT(unsetenv("CHATWEB_HTTP1_CLIENT"), 0);
    /* no OpenSSL clean-up at exit: a failing case exits with server threads inside OpenSSL */
    T_EQ_INT(OPENSSL_init_ssl(OPENSSL_INIT_NO_ATEXIT, NULL), 1);
    certs_make();
    T_RUN(test_keepalive_reuse);
    T_RUN(test_session_resumption);
    T_RUN(test_session_resumption_burst);
    T_RUN(test_session_shared_between_multis);
    T_RUN(test_ticket_while_idle);
    T_RUN(test_stream_large_records_paused);
    T_RUN(test_verify_wrong_ca);
    T_RUN(test_verify_name_mismatch);
    T_RUN(test_verify_ca_file_missing);
    T_RUN(test_verify_name_ok);
    T_RUN(test_stale_closed_while_idle);
    T_RUN(test_stale_closed_on_next_request);
    T_RUN(test_err_handshake_timeout);
    T_RUN(test_body_close_delimited);
    T_RUN(test_body_close_delimited_no_notify);
    T_RUN(test_post_large_body);
    return 0;
}
