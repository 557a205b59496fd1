/*
 * bench/chat_auth: what authenticating a request adds to the chat path when chat remembers a
 * recent Authenticate answer (services/chat/authmemo.c), printed beside a plain Redis GET round
 * trip measured in the same run (the reference of issue 3's target: <= 50 us at p50).
 *
 *   REDIS_URL=redis://127.0.0.1:6379/0 chatweb-chat-authmemo-bench [iterations]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/client.h"
#include "svc/redis.h"

static double now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p)
{
    return v[(size_t)(p * (double)(n - 1))];
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? (size_t)strtoul(argv[1], NULL, 10) : 20000;
    const char *url = getenv("REDIS_URL");
    const char *authz = "Basic YmVuY2g6YmVuY2gtcGFzc3dvcmQ=";
    Chatweb__Auth__Identity id = CHATWEB__AUTH__IDENTITY__INIT;
    struct auth_client_identity out;
    struct svc_redis *r = NULL;
    double *t = calloc(n ? n : 1, sizeof(*t)), ref = 0;

    if (t == NULL || n == 0 || url == NULL || svc_redis_create(&r, url, 1000, NULL, 0) != SVC_OK) {
        fprintf(stderr, "usage: REDIS_URL=redis://... %s [iterations]\n", argv[0]);
        return 2;
    }
    for (size_t i = 0; i < n; i++) { /* the reference: one GET round trip */
        const char *av[] = {"GET", "bench:authmemo"};
        struct svc_redis_reply *rep = NULL;
        double t0 = now_us();
        if (svc_redis_cmd(r, &rep, 2, av, NULL) != SVC_OK) {
            fprintf(stderr, "redis GET failed\n");
            return 1;
        }
        t[i] = now_us() - t0;
        svc_redis_reply_destroy(&rep);
    }
    qsort(t, n, sizeof(*t), cmp);
    ref = pct(t, n, 0.5);
    printf("redis_get          n=%-7zu p50=%8.2f us  p90=%8.2f us  p99=%8.2f us\n", n, ref,
           pct(t, n, 0.9), pct(t, n, 0.99));

    if (auth_client_setup(4096, 3600 * 1000) != SVC_OK)
        return 1;
    id.user_id = 1;
    id.username = "bench";
    id.model = "";
    id.key_id = "";
    auth_client_memo_put(authz, &id);
    for (size_t i = 0; i < n; i++) {
        double t0 = now_us();
        if (!auth_client_memo_get(authz, &out)) {
            fprintf(stderr, "memo miss\n");
            return 1;
        }
        t[i] = now_us() - t0;
    }
    qsort(t, n, sizeof(*t), cmp);
    printf("chat_auth_memo_hit n=%-7zu p50=%8.2f us  p90=%8.2f us  p99=%8.2f us   (%.3fx redis_get "
           "p50; target <= 50 us)\n",
           n, pct(t, n, 0.5), pct(t, n, 0.9), pct(t, n, 0.99), pct(t, n, 0.5) / ref);
    auth_client_teardown();
    svc_redis_destroy(&r);
    free(t);
    return 0;
}
