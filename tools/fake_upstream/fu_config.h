/*
 * fu_config: the fake upstream's settings, declared once as an X-macro table and read from the
 * environment at start-up (house rule 10). Handlers read the filled `fu_cfg`, never getenv().
 */
#ifndef FU_CONFIG_H
#define FU_CONFIG_H

#include <stdio.h>

/*
 * X(field, ENV_NAME, kind, C type, default, min, max, description)
 * kind FU_OPT_STR keeps the text; FU_OPT_INT accepts integers only, FU_OPT_REAL decimals too;
 * numbers are range-checked against [min, max] and stored as double (exact for the integer
 * ranges used here). An empty string means "not set" for strings.
 */
#define FU_CONFIG_TABLE(X)                                                                         \
    X(listen, "FAKE_LISTEN", FU_OPT_STR, const char *, "127.0.0.1:7099", 0, 0,                     \
      "listen address HOST:PORT; port 0 picks a free port (--listen overrides)")                   \
    X(tokens_per_sec, "FAKE_TOKENS_PER_SEC", FU_OPT_REAL, double, "0", 0, 1e6,                     \
      "default streaming pace in tokens per second; 0 = as fast as possible")                      \
    X(ttft_ms, "FAKE_TTFT_MS", FU_OPT_INT, double, "0", 0, 3600000,                                \
      "default delay before the first token (ms)")                                                 \
    X(reply_tokens, "FAKE_REPLY_TOKENS", FU_OPT_INT, double, "20", 0, 1000000,                     \
      "default reply length in tokens")                                                            \
    X(embedding_dims, "FAKE_EMBEDDING_DIMS", FU_OPT_INT, double, "1536", 1, 8192,                  \
      "default embedding vector length (the request's 'dimensions' overrides)")                    \
    X(threads, "FAKE_THREADS", FU_OPT_INT, double, "0", 0, 64,                                     \
      "event-loop threads; 0 = one per online CPU, at most 8")                                     \
    X(request_log, "FAKE_REQUEST_LOG", FU_OPT_STR, const char *, "", 0, 0,                         \
      "if set, append every recorded request as one JSON line to this file")                       \
    X(api_key, "FAKE_API_KEY", FU_OPT_STR, const char *, "", 0, 0,                                 \
      "if set, /v1/* requires 'Authorization: Bearer <this>' and answers 401 otherwise")          \
    X(front_listen, "FAKE_FRONT_LISTEN", FU_OPT_STR, const char *, "", 0, 0,                       \
      "if set, HOST:PORT of a second port that speaks TLS (with FAKE_TLS_CERT) or h2c and HTTP/1.1") \
    X(tls_cert, "FAKE_TLS_CERT", FU_OPT_STR, const char *, "", 0, 0,                               \
      "PEM certificate chain of the front (makes it TLS, ALPN h2 and http/1.1)")                   \
    X(tls_key, "FAKE_TLS_KEY", FU_OPT_STR, const char *, "", 0, 0,                                 \
      "PEM private key of FAKE_TLS_CERT")                                                          \
    X(h2, "FAKE_H2", FU_OPT_INT, double, "1", 0, 1,                                                \
      "1: the front offers HTTP/2 (ALPN h2, h2c prior knowledge); 0: HTTP/1.1 only")               \
    X(h2_max_streams, "FAKE_H2_MAX_STREAMS", FU_OPT_INT, double, "100", 1, 100000,                 \
      "SETTINGS_MAX_CONCURRENT_STREAMS the front announces")

enum fu_opt_kind { FU_OPT_STR, FU_OPT_INT, FU_OPT_REAL };

struct fu_config {
#define FU_CFG_FIELD(field, env, kind, ctype, def, lo, hi, desc) ctype field;
    FU_CONFIG_TABLE(FU_CFG_FIELD)
#undef FU_CFG_FIELD
};

/* The effective configuration; filled by fu_config_load() before any thread starts, read-only
 * afterwards (so it may be read from every thread without locking). */
extern struct fu_config fu_cfg;

/*
 * Fill fu_cfg from defaults then the environment, and validate. `listen_override` (from
 * --listen, may be NULL) wins over FAKE_LISTEN. Strings point into the environment or into
 * static storage; nothing needs freeing.
 * Returns 0, or FU_EINVAL after printing a message naming the bad variable to stderr.
 */
__attribute__((warn_unused_result)) int fu_config_load(const char *listen_override);

/* Print the option table (name, default, range, description) for --describe-config. */
void fu_config_describe(FILE *out);

/* Print the effective configuration on one line (the API key masked). */
void fu_config_print(FILE *out);

#endif /* FU_CONFIG_H */
