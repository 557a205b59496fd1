/*
 * Fuzz target: the server side of common/rpc.c. Arbitrary bytes are posted as the request
 * message of every Auth and Billing method (and of a method that does not exist) to
 * svc_rpc_dispatch, served by the real svc_http server in this process. The handlers here stand
 * in for the services' own (billing's are static in services/billing/main.c; auth's real ones
 * are fuzzed by fuzz_auth_http).
 *
 * Input: byte 0 picks the method, the rest is the body.
 *
 * Checked: dispatch agrees with protobuf-c on the same bytes: what protobuf_c_message_unpack
 * refuses is answered 400 with RpcError EINVAL, what it accepts reaches the handler with a
 * message that passes protobuf_c_message_check and packs, unpacks and packs again to the same
 * bytes; the handler's answer comes back whole (200 with the response message, or the RpcError
 * with the handler's code and text and the HTTP status of that code); an unknown method is 404.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.pb-c.h"
#include "billing.pb-c.h"
#include "http_harness.h"
#include "rpc.pb-c.h"
#include "svc/log.h"
#include "svc/rpc.h"

#define MAX_BODY 65536
#define FAIL_TEXT "odd-sized message refused by the fuzz handler"

/* 1 when msg or a message inside it kept fields it does not know. */
static int has_unknown(const ProtobufCMessage *msg)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;

    if (msg->n_unknown_fields > 0)
        return 1;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *p = (const char *)msg + f->offset;
        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)((const char *)msg + f->quantifier_offset);
            ProtobufCMessage *const *v = *(ProtobufCMessage *const *const *)p;
            for (size_t j = 0; j < n; j++)
                if (has_unknown(v[j]))
                    return 1;
        } else if (*(ProtobufCMessage *const *)p != NULL &&
                   has_unknown(*(ProtobufCMessage *const *)p)) {
            return 1;
        }
    }
    return 0;
}

/*
 * Packs, unpacks and packs again: the same bytes. Not for messages with unknown fields:
 * protobuf-c 1.4.1 keeps an unknown field numbered 0 written in two bytes ("80 00") and packs it
 * back as the one-byte tag "00", which it refuses to unpack (tests/fuzz/README.md). We never
 * forward unknown fields, so that is not ours to check.
 */
static void repack_check(const ProtobufCMessage *in)
{
    size_t n = protobuf_c_message_get_packed_size(in), n2;
    uint8_t *a = malloc(n + 1), *b;
    ProtobufCMessage *again;

    if (a == NULL)
        abort();
    if (protobuf_c_message_pack(in, a) != n)
        abort();
    again = protobuf_c_message_unpack(in->descriptor, NULL, n, a);
    if (again == NULL) {
        fprintf(stderr, "fuzz_rpc: %s packs to bytes it cannot unpack\n", in->descriptor->name);
        abort();
    }
    n2 = protobuf_c_message_get_packed_size(again);
    b = malloc(n2 + 1);
    if (b == NULL || protobuf_c_message_pack(again, b) != n2 || n2 != n || memcmp(a, b, n) != 0) {
        fprintf(stderr, "fuzz_rpc: %s does not repack to the same bytes\n", in->descriptor->name);
        abort();
    }
    protobuf_c_message_free_unpacked(again, NULL);
    free(a);
    free(b);
}

/* Every method: checks what dispatch decoded; refuses messages of odd packed size, so both
 * reply paths run. */
static int handler(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in,
                   ProtobufCMessage *out)
{
    (void)ctx;
    if (!protobuf_c_message_check(in)) {
        fprintf(stderr, "fuzz_rpc: dispatch passed an invalid %s\n", in->descriptor->name);
        abort();
    }
    if (out->descriptor == NULL)
        abort();
    if (!has_unknown(in))
        repack_check(in);
    if (protobuf_c_message_get_packed_size(in) % 2 == 1) {
        svc_rpc_set_error(call, "%s", FAIL_TEXT);
        return SVC_ECONFLICT;
    }
    return SVC_OK;
}

#define M(svc, name, lower, pkg)                                                                   \
    {                                                                                              \
        "/rpc/" svc "/" name, &chatweb__##pkg##__##lower##_request__descriptor,                    \
            &chatweb__##pkg##__##lower##_response__descriptor, handler, NULL                       \
    }

static const struct svc_rpc_method methods[] = {
    M("Auth", "Authenticate", authenticate, auth),
    M("Auth", "ChangeCredentials", change_credentials, auth),
    M("Auth", "SetModel", set_model, auth),
    M("Billing", "CreateAccount", create_account, billing),
    M("Billing", "GetAccount", get_account, billing),
    M("Billing", "DeleteAccount", delete_account, billing),
    M("Billing", "Reserve", reserve, billing),
    M("Billing", "Settle", settle, billing),
    M("Billing", "Release", release, billing),
    M("Billing", "Recharge", recharge, billing),
    M("Billing", "Adjust", adjust, billing),
    M("Billing", "Usage", usage, billing),
};
#define NMETHODS (sizeof(methods) / sizeof(methods[0]))

static struct svc_rpc_registry registry = {methods, NMETHODS};

static const struct svc_http_route routes[] = {
    {"POST", "/rpc/*", svc_rpc_dispatch, &registry, SVC_HTTP_STYLE_TEXT},
};

static Chatweb__Rpc__RpcError *rpc_error(const struct fz_resp *r, const char *path)
{
    ProtobufCMessage *m;

    if (strcmp(r->content_type, "application/x-protobuf") != 0)
        fz_fail("an error that is not an RpcError", "POST", path, r);
    m = protobuf_c_message_unpack(&chatweb__rpc__rpc_error__descriptor, NULL, r->body.len,
                                  (uint8_t *)r->body.data);
    if (m == NULL)
        fz_fail("undecodable RpcError", "POST", path, r);
    return (Chatweb__Rpc__RpcError *)m;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    const struct svc_rpc_method *m;
    const char *path;
    ProtobufCMessage *want, *got;
    Chatweb__Rpc__RpcError *e;
    struct fz_resp r;

    if (!ready) {
        svc_log_setup("fuzz_rpc", SVC_LOG_LVL_ERR);
        fz_http_start(routes, 1, SVC_HTTP_STYLE_TEXT, MAX_BODY, NULL, 0);
        ready = 1;
    }
    if (size < 1)
        return 0;
    m = data[0] % (NMETHODS + 1) < NMETHODS ? &methods[data[0] % (NMETHODS + 1)] : NULL;
    path = m != NULL ? m->path : "/rpc/Billing/NoSuchMethod";
    fz_http_do("POST", path, "Content-Type: application/x-protobuf\r\n", data + 1, size - 1, &r);
    if (r.reset) {
        if (size - 1 <= MAX_BODY)
            fz_fail("connection closed without a reply", "POST", path, &r);
        fz_resp_deinit(&r);
        return 0;
    }
    if (size - 1 > MAX_BODY) {
        if (r.status != 413)
            fz_fail("a body over the limit is not 413", "POST", path, &r);
        fz_resp_deinit(&r);
        return 0;
    }
    if (m == NULL) {
        e = rpc_error(&r, path);
        if (r.status != 404 || e->code != SVC_ENOTFOUND)
            fz_fail("an unknown method is not 404 NOT_FOUND", "POST", path, &r);
        protobuf_c_message_free_unpacked(&e->base, NULL);
        fz_resp_deinit(&r);
        return 0;
    }
    want = protobuf_c_message_unpack(m->in_desc, NULL, size - 1, data + 1);
    if (want == NULL) {
        e = rpc_error(&r, path);
        if (r.status != 400 || e->code != SVC_EINVAL)
            fz_fail("bytes protobuf-c refuses are not 400 EINVAL", "POST", path, &r);
        protobuf_c_message_free_unpacked(&e->base, NULL);
    } else if (protobuf_c_message_get_packed_size(want) % 2 == 1) {
        e = rpc_error(&r, path);
        if (r.status != 409 || e->code != SVC_ECONFLICT || strcmp(e->message, FAIL_TEXT) != 0)
            fz_fail("the handler's error did not come back whole", "POST", path, &r);
        protobuf_c_message_free_unpacked(&e->base, NULL);
    } else {
        if (r.status != 200)
            fz_fail("a message protobuf-c accepts is not 200", "POST", path, &r);
        got = protobuf_c_message_unpack(m->out_desc, NULL, r.body.len, (uint8_t *)r.body.data);
        if (got == NULL)
            fz_fail("200 without the method's response message", "POST", path, &r);
        protobuf_c_message_free_unpacked(got, NULL);
    }
    protobuf_c_message_free_unpacked(want, NULL);
    fz_resp_deinit(&r);
    return 0;
}
