#ifndef SVC_SERVICE_H
#define SVC_SERVICE_H

#include <stddef.h>

#include "svc/cfg.h"

/*
 * Process lifecycle shared by every service binary:
 *   svc_service_setup()   config from the environment (exit 78 with a one-line error naming the
 *                          variable), logging, signal mask, libcurl global init, admin listener
 *   svc_service_set_ready(1) when the service can take traffic (/readyz answers 200)
 *   svc_service_wait()    blocks the main thread until SIGTERM or SIGINT
 *   svc_service_drain()   not ready, stop accepting, wait for requests in flight (bounded,
 *                          then ended as if their clients had left)
 *
 * SIGTERM and SIGINT are blocked in every thread and taken with sigwait() by the main thread, so
 * no code runs in signal context at all. SIGPIPE is ignored.
 */

struct svc_http_server;

/* Exit codes from sysexits.h. */
#define SVC_EX_OK 0
#define SVC_EX_SOFTWARE 70
#define SVC_EX_UNAVAILABLE 69
#define SVC_EX_CONFIG 78

/*
 * Loads opts and sets up logging. On a bad value prints one line "<service>: <VARIABLE>:
 * <reason>" to stderr and exits SVC_EX_CONFIG. argv handles --describe-config (prints the option
 * table and exits 0) and --migrate (see svc_service_migrate_only). Call first in main; check
 * service-specific rules next (svc_service_die), then call svc_service_start().
 */
void svc_service_setup(const char *service, int argc, char **argv, struct svc_cfg_option *opts,
                       size_t nopts);

/*
 * 1 when the service was started with --migrate: it applies its SQL schema (svc_db_migrate) and
 * exits 0, or exits SVC_EX_UNAVAILABLE when that fails, without serving anything. Services with
 * no schema need not look: svc_service_start() refuses --migrate for them (SVC_EX_CONFIG).
 */
int svc_service_migrate_only(void);

/* Logs the effective configuration (secrets masked), checks RPC_SECRET (svc_service_setup_rpc_auth),
 * sets up signals and libcurl and starts the admin listener on ADMIN_ADDR (exits SVC_EX_CONFIG when
 * it cannot bind). */
void svc_service_start(void);

/*
 * Gives RPC_SECRET to the RPC layer (svc_rpc_set_secret), or, when it is unset, exits
 * SVC_EX_CONFIG unless RPC_INSECURE=true (then logs a warning). Exits SVC_EX_CONFIG for a secret
 * shorter than SVC_RPC_SECRET_MIN. Runs once; svc_service_start() calls it, a service that does
 * slow work before that (a migration) calls it first, after its own checks.
 */
void svc_service_setup_rpc_auth(void);

/* TRUSTED_PROXIES as parsed by svc_service_setup (which exits SVC_EX_CONFIG on a bad entry): the
 * peers whose X-Real-IP the data-plane listener believes (svc_http_opts.trusted_proxies). Valid
 * for the life of the process. */
struct svc_util_cidrs;
const struct svc_util_cidrs *svc_service_trusted_proxies(void);

/* Finds a parsed option by name (for the common ones). Never NULL for a declared option. */
const struct svc_cfg_option *svc_service_option(const char *name);

/* Readiness as seen by /readyz. Thread-safe. */
void svc_service_set_ready(int ready);

/* An extra readiness check run by /readyz (for example "Redis answers"): cb(ctx) returns SVC_OK
 * when ready, else a negative SVC_E*. */
typedef int (*svc_service_ready_cb)(void *ctx);
void svc_service_set_ready_check(svc_service_ready_cb cb, void *ctx);

/* The number of worker threads or loops to run: WORKERS, or the number of cores. */
unsigned svc_service_workers(void);

/* Blocks until SIGTERM or SIGINT. Returns the signal number. */
int svc_service_wait(void);

/* Marks the service not ready, quiesces srv and waits up to DRAIN_TIMEOUT seconds for its
 * requests in flight to finish and for its clients to stop sending (decision 49); at the deadline
 * ends what is left as if its clients had left and gives that a second. Returns the number still
 * in flight at the end. */
long svc_service_drain(struct svc_http_server *srv);

/*
 * Serves until SIGTERM/SIGINT: marks the service ready, waits for the signal, then drains srv
 * (not ready, stop accepting, wait up to DRAIN_TIMEOUT for requests in flight) and logs what was
 * left. The caller destroys srv afterwards.
 */
void svc_service_serve(struct svc_http_server *srv);

/*
 * For request/response services (auth, billing): serves routes on HTTP_ADDR with a worker pool
 * (2 threads per worker), marks the service ready, waits for SIGTERM/SIGINT, drains and stops.
 * Exits SVC_EX_CONFIG when HTTP_ADDR cannot be bound. Returns when the server is stopped.
 */
struct svc_http_route;
void svc_service_serve_pool(const struct svc_http_route *routes, size_t nroutes, int default_style);

/* One listener of svc_service_serve_pools: the option that holds its host:port ("HTTP_ADDR",
 * "RPC_ADDR"), its routes and their default error style. */
struct svc_service_listener {
    const char *addr_option;
    const struct svc_http_route *routes;
    size_t nroutes;
    int default_style;
};
#define SVC_SERVICE_LISTENERS_MAX 4

/* svc_service_serve_pool on several listeners (auth's RPC_ADDR): each with its own worker pool,
 * all drained together at the signal, under one DRAIN_TIMEOUT. */
void svc_service_serve_pools(const struct svc_service_listener *ls, size_t n);

/* Stops the admin listener and frees what setup allocated. */
void svc_service_teardown(void);

/* Prints "<service>: <message>" on stderr and exits with code. For start-up failures only. */
void svc_service_die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));

#endif
