#ifndef SVC_CFG_H
#define SVC_CFG_H

#include <stddef.h>
#include <stdint.h>

#include "svc/err.h"

/* The longest URL option accepted: URLs are formatted into request buffers with a path appended
 * (an RPC method, /chat/completions), so a longer one is refused at start instead of cut. */
#define SVC_CFG_URL_MAX 400

/*
 * Configuration from the environment only (pelikan's option tables).
 *
 * Each service declares its options once as an X-macro list
 *     #define CHAT_OPTIONS(ACTION) \
 *         ACTION(CHAT_SESSION_TTL, SVC_OPT_INT, "30", 1, 525600, "context TTL in minutes")
 * and builds a struct of `struct svc_cfg_option` from it with SVC_OPTION_DECLARE / SVC_OPTION_INIT.
 * svc_cfg_load_env() then reads every variable once at start-up, parses it by type, checks ranges
 * and reports the first bad one in a one-line message naming it. An empty variable counts as unset
 * (the seed's rule). Handlers read the parsed values, never the environment.
 */

enum svc_cfg_opt_type {
    SVC_OPT_BOOL,   /* Go's strconv.ParseBool: 1 t T TRUE true True / 0 f F FALSE false False */
    SVC_OPT_INT,    /* base-10 int64 within [min, max] */
    SVC_OPT_STR,    /* any text */
    SVC_OPT_SECRET, /* any text, never printed (shown as "(set)" or "(unset)") */
    SVC_OPT_ADDR,   /* host:port with a port in 0..65535 */
    SVC_OPT_URL,    /* http:// or https:// URL of at most SVC_CFG_URL_MAX bytes */
};

struct svc_cfg_option {
    const char *name; /* the environment variable */
    enum svc_cfg_opt_type type;
    const char *def;  /* default as text; NULL = no default (unset) */
    int64_t min, max; /* range, for SVC_OPT_INT */
    const char *desc;
    /* filled in by svc_cfg_load_env */
    int is_set;       /* 1 when the value came from the environment */
    int64_t i;        /* SVC_OPT_INT and SVC_OPT_BOOL */
    const char *s;    /* every type: the text (default or environment); "" when unset */
};

#define SVC_OPTION_DECLARE(name, type, def, min, max, desc) struct svc_cfg_option name;
#define SVC_OPTION_INIT(name, type, def, min, max, desc) .name = {#name, type, def, min, max, desc},
#define SVC_OPTION_COUNT(setting) (sizeof(setting) / sizeof(struct svc_cfg_option))

/* Options every service has; include them in the service's own table. */
#define SVC_COMMON_OPTIONS(ACTION)                                                                 \
    ACTION(HTTP_ADDR, SVC_OPT_ADDR, "127.0.0.1:8080", 0, 0,                                        \
           "data-plane listener host:port (0.0.0.0:8080 to serve other hosts)")                    \
    ACTION(ADMIN_ADDR, SVC_OPT_ADDR, "127.0.0.1:9090", 0, 0,                                       \
           "admin listener (/healthz /readyz /metrics)")                                           \
    ACTION(RPC_SECRET, SVC_OPT_SECRET, NULL, 0, 0,                                                 \
           "shared secret signing internal RPC (HMAC-SHA256), the same on every service; at "      \
           "least 32 characters, e.g. openssl rand -hex 32")                                       \
    ACTION(RPC_INSECURE, SVC_OPT_BOOL, "false", 0, 0,                                              \
           "true: run without RPC_SECRET, internal RPC unauthenticated (trusted networks only)")   \
    ACTION(LOG_LEVEL, SVC_OPT_STR, "info", 0, 0, "error|warn|notice|info|debug")                   \
    ACTION(WORKERS, SVC_OPT_INT, "0", 0, 64, "worker threads or event loops; 0 = one per core")    \
    ACTION(HTTP_MAX_BODY, SVC_OPT_INT, "1048576", 1024, 67108864, "largest request body in bytes") \
    ACTION(                                                                                        \
        HTTP_MAX_HEADER, SVC_OPT_INT, "16384", 4096, 1048576,                                      \
        "largest request line + headers in bytes (431 beyond); also memory held per connection")   \
    ACTION(HTTP_IDLE_TIMEOUT, SVC_OPT_INT, "60", 1, 3600,                                          \
           "seconds before an idle client connection is closed")                                   \
    ACTION(HTTP_MAX_CONNECTIONS, SVC_OPT_INT, "20000", 16, 1000000,                                \
           "client connections per service")                                                       \
    ACTION(DRAIN_TIMEOUT, SVC_OPT_INT, "25", 0, 3600,                                              \
           "seconds to finish in-flight requests on SIGTERM")                                      \
    ACTION(TRUSTED_PROXIES, SVC_OPT_STR, "127.0.0.0/8,::1", 0, 0,                                  \
           "comma-separated networks (CIDR, IPv4 or IPv6) of the proxies whose X-Real-IP names "   \
           "the client; a request from any other peer is from that peer's address")                \
    ACTION(INGRESS_TOKEN, SVC_OPT_SECRET, NULL, 0, 0,                                              \
           "when set (at least 32 characters), X-Real-IP is believed only from a TRUSTED_PROXIES " \
           "peer that also sends this secret as X-Ingress-Token: another process on the "          \
           "ingress's host cannot name its address (make run sets it)")

/* The SQL options of the services that own SQL data (auth, billing). */
#define SVC_DB_OPTIONS(ACTION)                                                                \
    ACTION(DB, SVC_OPT_SECRET, "", 0, 0,                                                      \
           "SQL: mysql://user:pass@host:port/db or user:pass@tcp(host:port)/db; unset = SQLite") \
    ACTION(DATA_DIR, SVC_OPT_STR, "./data", 0, 0, "directory of the SQLite file")

/*
 * Loads every option from the environment. On a bad value writes one line into err
 * ("CHAT_SESSION_TTL: not an integer: \"30m\"") and returns SVC_EINVAL. Not thread-safe: call
 * once in main before threads start. The option strings point into the environment or defaults
 * and stay valid for the life of the process.
 */
int svc_cfg_load_env(struct svc_cfg_option *opts, size_t n, char *err,
                     size_t errlen) SVC_MUST_CHECK;

/* Logs the effective configuration, one option per line: secrets as "(set)", credentials inside
 * URLs masked. */
void svc_cfg_log_all(const struct svc_cfg_option *opts, size_t n);

/* Prints the option table (name, type, default, description) to stdout for --describe-config. */
void svc_cfg_describe_all(const struct svc_cfg_option *opts, size_t n);

/* Parses a Go-style boolean; returns 0 or 1, or -1 when the text is not one. */
int svc_cfg_parse_bool(const char *text);

/* Parses a whole base-10 int64 within [min, max]; SVC_EINVAL otherwise. */
int svc_cfg_parse_int(const char *text, int64_t min, int64_t max, int64_t *out) SVC_MUST_CHECK;

/*
 * The next item of a comma-separated setting (CHAT_MODELS, BILLING_PRICES, HEALTH_URLS, ...):
 * 1 with *item and *len set to it, spaces around it trimmed and not NUL-terminated (it points
 * into the list), and *list moved past it; 0 at the end. Empty items are skipped. *list may be
 * NULL (an empty list). Thread-safe.
 */
int svc_cfg_list_next(const char **list, const char **item, size_t *len);

/* Splits "host:port" ("[v6]:port" too) into host (copied into host[hostlen]) and port. */
int svc_cfg_parse_addr(const char *text, char *host, size_t hostlen, int *port) SVC_MUST_CHECK;

#endif
