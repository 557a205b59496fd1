/*
 * The blocking RPC client (common/rpc.c svc_rpc_call) when libcurl runs out of memory while it
 * builds the request's header list with curl_slist_append. libcurl's allocators are replaced
 * with curl_global_init_mem by counting ones that fail the n-th allocation on demand, so the test
 * sees every block libcurl holds. The RPC server itself is test_http's (test_rpc_*).
 */
#include <curl/curl.h>
#include <stdlib.h>

#include "rpc.pb-c.h"
#include "svc/err.h"
#include "svc/rpc.h"
#include "test.h"

/* libcurl's allocations since arming, and the one that fails (1-based; 0 = none). Only the main
 * thread calls libcurl here. */
static int fail_armed, fail_at, n_allocs;
static long live_blocks; /* blocks libcurl holds, counted from the start */

static int fails(void)
{
    return fail_armed && ++n_allocs == fail_at;
}

static void *t_malloc(size_t n)
{
    void *p = fails() ? NULL : malloc(n);
    live_blocks += p != NULL;
    return p;
}

static void t_free(void *p)
{
    live_blocks -= p != NULL;
    free(p);
}

static void *t_realloc(void *p, size_t n)
{
    void *q;
    if (fails())
        return NULL;
    q = realloc(p, n);
    live_blocks += q != NULL && p == NULL;
    return q;
}

static char *t_strdup(const char *s)
{
    char *p = fails() ? NULL : strdup(s);
    live_blocks += p != NULL;
    return p;
}

static void *t_calloc(size_t k, size_t n)
{
    void *p = fails() ? NULL : calloc(k, n);
    live_blocks += p != NULL;
    return p;
}

/*
 * curl_slist_append returns NULL when it cannot allocate and leaves the list it was given alone:
 * svc_rpc_call keeps its own pointer to the list, so a failure at any of its allocations frees
 * every node made so far (a `hdrs = curl_slist_append(hdrs, ...)` would lose and leak them).
 * The call is made to a closed port: every allocation failure happens before any connection.
 */
static void test_call_header_list_enomem(void)
{
    Chatweb__Rpc__RpcError q = CHATWEB__RPC__RPC_ERROR__INIT;
    struct svc_rpc_client *cl = NULL;
    ProtobufCMessage *out = NULL;
    char err[256];
    int enomem = 0, rc;

    q.message = "ping";
    T_EQ_INT(svc_rpc_client_create(&cl, "http://127.0.0.1:9", 2000, NULL, 0), SVC_OK);
    /* the first call makes the thread's easy handle, kept afterwards */
    rc = svc_rpc_call(cl, "/rpc/Test/Echo", &q.base, &chatweb__rpc__rpc_error__descriptor, &out,
                      "rid", err, sizeof(err));
    T_EQ_INT(rc, SVC_EUNAVAIL);
    /* the header lines: Content-Type, Expect, X-Request-Id, X-Deadline-Ms (no signing secret,
     * so no X-Rpc-* lines), two allocations each (the copy, the node) */
    for (int k = 1; k <= 8; k++) {
        long before = live_blocks;

        n_allocs = 0;
        fail_at = k;
        fail_armed = 1;
        rc = svc_rpc_call(cl, "/rpc/Test/Echo", &q.base, &chatweb__rpc__rpc_error__descriptor, &out,
                          "rid", err, sizeof(err));
        fail_armed = 0;
        T_ASSERT(out == NULL);
        T_ASSERT(n_allocs >= k); /* the k-th allocation was libcurl's and failed */
        T_EQ_INT(rc, SVC_ENOMEM);
        enomem++;
        if (live_blocks != before)
            T_FAIL("allocation %d failed: libcurl holds %ld block(s) more than before", k,
                   live_blocks - before);
    }
    T_EQ_INT(enomem, 8);
    svc_rpc_client_destroy(&cl);
}

int main(void)
{
    T_EQ_INT(
        curl_global_init_mem(CURL_GLOBAL_DEFAULT, t_malloc, t_free, t_realloc, t_strdup, t_calloc),
        CURLE_OK);
    T_RUN(test_call_header_list_enomem);
    curl_global_cleanup();
    return 0;
}
