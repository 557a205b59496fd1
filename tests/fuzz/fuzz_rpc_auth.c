/*
 * Fuzz target: the authentication of internal RPC calls (common/rpc.c check_signature: the
 * X-Rpc-Timestamp and X-Rpc-Signature headers, HMAC-SHA256 under RPC_SECRET), through
 * svc_rpc_dispatch behind the real svc_http server in this process, with a secret set.
 *
 * Input: byte 0 picks the method (or an unknown one), byte 1 the case; the rest is split at 0xff
 * into a timestamp text, a signature text and the body.
 *   0  a valid signature made now                 -> never refused (no 401/403)
 *   1  the timestamp text as sent (with bit 7 of   -> accepted exactly when it is a decimal number
 *      byte 0: text 1, now, text 2), signed          (svc_cfg_parse_int's grammar)
 *      rightly for the number it holds              within SVC_RPC_MAX_SKEW_S of now (an
 *                                                    optional sign, digits, nothing else)
 *   2  the signature text as sent, timestamp now  -> accepted only when it is the right one
 *   3  a signature of other bytes than the body   -> 403
 *   4  one or both headers missing                -> 401
 * Every refusal is an RpcError SVC_EDENIED with the status the header documents, and it comes
 * before the method is looked up (an unknown method is not revealed to an unsigned caller).
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth.pb-c.h"
#include "billing.pb-c.h"
#include "http_harness.h"
#include "rpc.pb-c.h"
#include "svc/log.h"
#include "svc/rpc.h"

#define MAX_BODY 65536
#define SECRET "fuzz-rpc-secret-0123456789abcdef-0123456789"

static int handler(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in,
                   ProtobufCMessage *out)
{
    (void)call;
    (void)in;
    (void)out;
    (void)ctx;
    return SVC_OK;
}

static const struct svc_rpc_method methods[] = {
    {"/rpc/Billing/Recharge", &chatweb__billing__recharge_request__descriptor,
     &chatweb__billing__recharge_response__descriptor, handler, NULL},
    {"/rpc/Auth/Authenticate", &chatweb__auth__authenticate_request__descriptor,
     &chatweb__auth__authenticate_response__descriptor, handler, NULL},
};
#define NMETHODS (sizeof(methods) / sizeof(methods[0]))

static struct svc_rpc_registry registry = {methods, NMETHODS};

static const struct svc_http_route routes[] = {
    {"POST", "/rpc/*", svc_rpc_dispatch, &registry, SVC_HTTP_STYLE_TEXT},
};

/* The reference timestamp grammar: an optional sign, decimal digits, nothing before or after;
 * 1 and *t when it is one within [0, INT64_MAX / 2]. */
static int ref_timestamp(const char *s, long long *t)
{
    char *end;

    /* svc_cfg_parse_int takes strtoll's grammar without its leading white space */
    if (*s == '\0' || strchr(" \t\n\v\f\r", *s) != NULL)
        return 0;
    errno = 0;
    *t = strtoll(s, &end, 10);
    return end != s && *end == '\0' && errno == 0 && *t >= 0 && *t <= INT64_MAX / 2 &&
           strpbrk(s, "0123456789") != NULL;
}

/* The RpcError of a refusal; aborts when r is not one with SVC_EDENIED and status want. */
static void expect_denied(const struct fz_resp *r, const char *path, long want, const char *what)
{
    ProtobufCMessage *m;

    if (r->status != want)
        fz_fail(what, "POST", path, r);
    m = protobuf_c_message_unpack(&chatweb__rpc__rpc_error__descriptor, NULL, r->body.len,
                                  (uint8_t *)r->body.data);
    if (m == NULL || ((Chatweb__Rpc__RpcError *)m)->code != SVC_EDENIED)
        fz_fail("a refusal that is not RpcError EDENIED", "POST", path, r);
    protobuf_c_message_free_unpacked(m, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    const uint8_t *f[3];
    size_t fl[3];
    char ts[256], sig[256], want[SVC_RPC_SIG_HEX + 1], hdrs[1024];
    const char *path;
    long long now, t = 0;
    struct fz_resp r;
    int mode, accepted_expected = -1; /* -1: do not judge (timestamp on the window's edge) */

    if (!ready) {
        svc_log_setup("fuzz_rpc_auth", SVC_LOG_LVL_ERR);
        if (svc_rpc_set_secret(SECRET) != SVC_OK)
            abort();
        fz_http_start(routes, 1, SVC_HTTP_STYLE_TEXT, MAX_BODY, NULL, 0);
        ready = 1;
    }
    if (size < 2)
        return 0;
    path = data[0] % (NMETHODS + 1) < NMETHODS ? methods[data[0] % (NMETHODS + 1)].path
                                               : "/rpc/Billing/NoSuchMethod";
    mode = data[1] % 5;
    fz_split(data + 2, size - 2, 0xff, f, fl, 3);
    fz_header_value(f[0], fl[0], ts, sizeof(ts));
    fz_header_value(f[1], fl[1], sig, sizeof(sig));
    now = (long long)time(NULL);
    hdrs[0] = '\0';
    switch (mode) {
    case 0:
        if (svc_rpc_sign("POST", path, f[2], fl[2], now, want) != SVC_OK)
            abort();
        snprintf(hdrs, sizeof(hdrs), "X-Rpc-Timestamp: %lld\r\nX-Rpc-Signature: %s\r\n", now, want);
        accepted_expected = 1;
        break;
    case 1:
        /* with bit 7 of byte 0, the current time with the two texts around it ("00" now, now
         * "5", "+" now ...), so the window is reached too */
        if (data[0] & 0x80) {
            char tmp[256];
            snprintf(tmp, sizeof(tmp), "%.100s%lld%.100s", ts, now, sig);
            memcpy(ts, tmp, sizeof(ts));
        }
        /* HTTP trims blanks around a header value: the reference sees what the server sees */
        while (ts[0] == ' ' || ts[0] == '\t')
            memmove(ts, ts + 1, strlen(ts));
        for (size_t n = strlen(ts); n > 0 && (ts[n - 1] == ' ' || ts[n - 1] == '\t'); n--)
            ts[n - 1] = '\0';
        if (ref_timestamp(ts, &t)) {
            if (svc_rpc_sign("POST", path, f[2], fl[2], t, want) != SVC_OK)
                abort();
            if (t < now - SVC_RPC_MAX_SKEW_S - 1 || t > now + SVC_RPC_MAX_SKEW_S + 1)
                accepted_expected = 0;
            else if (t > now - SVC_RPC_MAX_SKEW_S + 1 && t < now + SVC_RPC_MAX_SKEW_S - 1)
                accepted_expected = 1;
        } else {
            memset(want, 'a', SVC_RPC_SIG_HEX);
            want[SVC_RPC_SIG_HEX] = '\0';
            accepted_expected = 0;
        }
        snprintf(hdrs, sizeof(hdrs), "X-Rpc-Timestamp: %s\r\nX-Rpc-Signature: %s\r\n", ts, want);
        break;
    case 2:
        if (svc_rpc_sign("POST", path, f[2], fl[2], now, want) != SVC_OK)
            abort();
        snprintf(hdrs, sizeof(hdrs), "X-Rpc-Timestamp: %lld\r\nX-Rpc-Signature: %s\r\n", now, sig);
        accepted_expected = strcmp(sig, want) == 0;
        break;
    case 3: /* signed for the body with one more byte */
    {
        uint8_t *other = malloc(fl[2] + 1);
        if (other == NULL)
            abort();
        memcpy(other, f[2], fl[2]);
        other[fl[2]] = data[0];
        if (svc_rpc_sign("POST", path, other, fl[2] + 1, now, want) != SVC_OK)
            abort();
        free(other);
        snprintf(hdrs, sizeof(hdrs), "X-Rpc-Timestamp: %lld\r\nX-Rpc-Signature: %s\r\n", now, want);
        accepted_expected = 0;
        break;
    }
    default:
        if (data[0] & 1)
            snprintf(hdrs, sizeof(hdrs), "X-Rpc-Timestamp: %lld\r\n", now);
        else if (data[0] & 2)
            snprintf(hdrs, sizeof(hdrs), "X-Rpc-Signature: %s\r\n", sig);
        break;
    }
    fz_http_do("POST", path, hdrs, f[2], fl[2], &r);
    if (r.reset) {
        if (fl[2] <= MAX_BODY)
            fz_fail("connection closed without a reply", "POST", path, &r);
    } else if (mode == 4) {
        expect_denied(&r, path, 401, "a call without its signature headers is not 401");
    } else if (accepted_expected == 0) {
        expect_denied(&r, path, 403, "a forged, stale or malformed signature is not 403");
    } else if (accepted_expected == 1 && (r.status == 401 || r.status == 403)) {
        fz_fail("a rightly signed call was refused", "POST", path, &r);
    }
    fz_resp_deinit(&r);
    return 0;
}
