/*
 * chatweb-fake-upstream: a deterministic OpenAI-compatible server for tests, benchmarks and the
 * one-machine stack. See docs/fake-upstream.md.
 *
 * Start-up order: configuration (environment, then --listen), file-descriptor limit, request
 * log, listening socket, worker threads, then the one stdout line harnesses wait for. The main
 * thread then only waits for SIGTERM/SIGINT (blocked everywhere and taken with sigwaitinfo, so
 * there is no signal handler at all) and tears down in reverse order.
 */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "fu_api.h"
#include "fu_config.h"
#include "fu_front.h"
#include "fu_http.h"
#include "fu_record.h"

/* Exit codes: 2 for anything the operator must fix (bad option, port taken), 1 otherwise. */
#define FU_EXIT_CONFIG 2
#define FU_EXIT_FAIL 1
#define FU_MAX_AUTO_THREADS 8

static void usage(FILE *out)
{
    fprintf(out, "usage: chatweb-fake-upstream [--listen HOST:PORT] [--describe-config]\n"
                 "A deterministic OpenAI-compatible upstream for tests. Settings come from the\n"
                 "environment (see --describe-config); --listen overrides FAKE_LISTEN.\n");
}

/* 10,000 concurrent streams need more descriptors than the usual soft limit of 1024. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == rl.rlim_max)
        return;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        perror("fake-upstream: setrlimit(RLIMIT_NOFILE)");
}

int main(int argc, char **argv)
{
    const char *listen_arg = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            listen_arg = argv[++i];
        } else if (strncmp(argv[i], "--listen=", 9) == 0) {
            listen_arg = argv[i] + 9;
        } else if (strcmp(argv[i], "--describe-config") == 0) {
            fu_config_describe(stdout);
            return 0;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "fake-upstream: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return FU_EXIT_CONFIG;
        }
    }
    if (fu_config_load(listen_arg) != 0)
        return FU_EXIT_CONFIG;
    fu_config_print(stderr);
    raise_nofile();

    unsigned threads = (unsigned)fu_cfg.threads;
    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n < 1 ? 1 : n > FU_MAX_AUTO_THREADS ? FU_MAX_AUTO_THREADS : (unsigned)n;
    }

    /* Block the stop signals before any thread exists so every worker inherits the mask and
     * only sigwaitinfo() below ever takes them. SIGPIPE is moot (MSG_NOSIGNAL) but ignored in
     * case a library writes to a closed socket. */
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGTERM);
    sigaddset(&stop_set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_set, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* Seed jansson's hash function here, on one thread, rather than racing to do it on the
     * first json_object() call of each worker. */
    json_object_seed(0);
    if (fu_record_setup(fu_cfg.request_log) != 0)
        return FU_EXIT_CONFIG;
    fu_api_setup((uint32_t)time(NULL) ^ ((uint32_t)getpid() << 16));

    int rc = 0;
    char bound[300], front_bound[300];
    struct fu_front *front = NULL;
    bool in_use = false;
    struct fu_server *srv = fu_server_create(fu_cfg.listen, bound, sizeof(bound), &in_use);
    if (srv == NULL) {
        if (in_use)
            fprintf(stderr,
                    "fake-upstream: the address %s is already in use; pick another port "
                    "or 0 for any free one\n",
                    fu_cfg.listen);
        rc = FU_EXIT_CONFIG;
        goto out;
    }
    if (fu_server_start(srv, threads) != 0) {
        rc = FU_EXIT_FAIL;
        goto out;
    }
    if (fu_cfg.front_listen[0] != '\0') {
        const struct fu_front_opts fo = {
            .listen = fu_cfg.front_listen,
            .backend = bound,
            .cert_file = fu_cfg.tls_cert,
            .key_file = fu_cfg.tls_key,
            .h2 = fu_cfg.h2 != 0,
            .max_streams = (unsigned)fu_cfg.h2_max_streams,
        };
        if ((fu_cfg.tls_cert[0] != '\0') != (fu_cfg.tls_key[0] != '\0')) {
            fprintf(stderr, "fake-upstream: FAKE_TLS_CERT and FAKE_TLS_KEY go together\n");
            rc = FU_EXIT_CONFIG;
            goto out;
        }
        front = fu_front_create(&fo, front_bound, sizeof(front_bound));
        if (front == NULL) {
            rc = FU_EXIT_CONFIG;
            goto out;
        }
    }
    /* One write: harnesses read the first "listening on" line as the plain port. */
    if (front != NULL)
        printf("fake-upstream listening on http://%s\nfake-upstream front listening on %s://%s "
               "(%s)\n",
               bound, fu_cfg.tls_cert[0] ? "https" : "http", front_bound,
               fu_cfg.h2 == 0 ? "http/1.1" : fu_cfg.tls_cert[0] ? "h2,http/1.1" : "h2c,http/1.1");
    else
        printf("fake-upstream listening on http://%s\n", bound);
    fflush(stdout);

    int sig;
    do {
        sig = sigwaitinfo(&stop_set, NULL);
    } while (sig < 0);
    fprintf(stderr, "fake-upstream: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
out:
    fu_server_destroy(&srv); /* its workers may ask the front for a GOAWAY: stopped first */
    fu_front_destroy(&front);
    fu_record_teardown();
    return rc;
}
