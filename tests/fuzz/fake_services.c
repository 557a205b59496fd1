/*
 * The stand-in auth and billing methods of fake_services.h.
 */

#include "fake_services.h"

#include <string.h>

#include "auth.pb-c.h"
#include "billing.pb-c.h"
#include "svc/http.h"

static Chatweb__Billing__Account *account(struct svc_rpc_call *call, int64_t uid)
{
    Chatweb__Billing__Account *ac = svc_rpc_alloc(call, sizeof(*ac));

    if (ac == NULL)
        return NULL;
    chatweb__billing__account__init(ac);
    ac->user_id = uid;
    ac->username = svc_rpc_strdup(call, "fuzz");
    ac->granted = FZ_FAKE_BALANCE;
    ac->balance = FZ_FAKE_BALANCE;
    return ac->username != NULL ? ac : NULL;
}

/* The user_id of a request message, when it has one (0 otherwise). */
static int64_t request_uid(const ProtobufCMessage *in)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(in->descriptor, "user_id");

    if (f == NULL || f->type != PROTOBUF_C_TYPE_INT64 || f->label == PROTOBUF_C_LABEL_REPEATED)
        return 0;
    return *(const int64_t *)((const char *)in + f->offset);
}

/* Any billing method: fills the response's "account" (when it has one) and leaves the rest 0. */
static int fake_billing(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in,
                        ProtobufCMessage *out)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(out->descriptor, "account");

    (void)ctx;
    if (f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE) {
        Chatweb__Billing__Account *ac = account(call, request_uid(in));
        if (ac == NULL)
            return SVC_ENOMEM;
        *(Chatweb__Billing__Account **)((char *)out + f->offset) = ac;
    }
    return SVC_OK;
}

static int fake_reserve(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                        ProtobufCMessage *out_msg)
{
    const Chatweb__Billing__ReserveRequest *in = (const void *)in_msg;
    Chatweb__Billing__ReserveResponse *out = (void *)out_msg;

    (void)call;
    (void)ctx;
    out->result = CHATWEB__BILLING__RESERVE_RESULT__RESERVE_OK;
    out->completion_limit = in->max_completion_tokens;
    out->held_units = in->prompt_tokens + in->max_completion_tokens;
    out->balance = FZ_FAKE_BALANCE;
    return SVC_OK;
}

static int fake_authenticate(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                             ProtobufCMessage *out_msg)
{
    const Chatweb__Auth__AuthenticateRequest *in = (const void *)in_msg;
    Chatweb__Auth__AuthenticateResponse *out = (void *)out_msg;
    Chatweb__Auth__Identity *id;

    (void)ctx;
    if ((in->authorization == NULL || in->authorization[0] == '\0') &&
        (in->cookie == NULL || in->cookie[0] == '\0')) {
        out->result = CHATWEB__AUTH__AUTH_RESULT__AUTH_MISSING;
        return SVC_OK;
    }
    id = svc_rpc_alloc(call, sizeof(*id));
    if (id == NULL)
        return SVC_ENOMEM;
    chatweb__auth__identity__init(id);
    id->user_id = FZ_FAKE_USER_ID;
    id->username = svc_rpc_strdup(call, "fuzz");
    out->scheme = svc_rpc_strdup(call, "basic");
    if (id->username == NULL || out->scheme == NULL)
        return SVC_ENOMEM;
    /* a chatweb API key, which the /v1 proxy wants (FZ_FAKE_KEY*) */
    if (in->authorization != NULL &&
        strncmp(in->authorization, "Bearer " FZ_FAKE_KEY, 7 + strlen(FZ_FAKE_KEY)) == 0) {
        static char *limited[] = {"gpt-4o-mini", "alt-one"};
        id->key_id = svc_rpc_strdup(call, "k1");
        out->scheme = svc_rpc_strdup(call, "key");
        if (id->key_id == NULL || out->scheme == NULL)
            return SVC_ENOMEM;
        if (strcmp(in->authorization, "Bearer " FZ_FAKE_KEY_LIMITED) == 0) {
            id->n_allowed_models = sizeof(limited) / sizeof(limited[0]);
            id->allowed_models = limited;
        }
    }
    out->result = CHATWEB__AUTH__AUTH_RESULT__AUTH_OK;
    out->identity = id;
    return SVC_OK;
}

static int fake_change(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in,
                       ProtobufCMessage *out_msg)
{
    Chatweb__Auth__ChangeCredentialsResponse *out = (void *)out_msg;

    (void)in;
    (void)ctx;
    out->result = CHATWEB__AUTH__CHANGE_RESULT__CHANGE_OK;
    out->message = svc_rpc_strdup(call, "ok");
    return out->message != NULL ? SVC_OK : SVC_ENOMEM;
}

static int fake_set_model(void *ctx, struct svc_rpc_call *call, const ProtobufCMessage *in,
                          ProtobufCMessage *out_msg)
{
    (void)call;
    (void)in;
    (void)ctx;
    ((Chatweb__Auth__SetModelResponse *)(void *)out_msg)->ok = 1;
    return SVC_OK;
}

#define BILLING(name, lower, fn)                                                                   \
    {                                                                                              \
        FZ_FAKE_PREFIX "/rpc/Billing/" name, &chatweb__billing__##lower##_request__descriptor,     \
            &chatweb__billing__##lower##_response__descriptor, fn, NULL                            \
    }

static const struct svc_rpc_method methods[] = {
    {FZ_FAKE_PREFIX "/rpc/Auth/Authenticate", &chatweb__auth__authenticate_request__descriptor,
     &chatweb__auth__authenticate_response__descriptor, fake_authenticate, NULL},
    {FZ_FAKE_PREFIX "/rpc/Auth/ChangeCredentials",
     &chatweb__auth__change_credentials_request__descriptor,
     &chatweb__auth__change_credentials_response__descriptor, fake_change, NULL},
    {FZ_FAKE_PREFIX "/rpc/Auth/SetModel", &chatweb__auth__set_model_request__descriptor,
     &chatweb__auth__set_model_response__descriptor, fake_set_model, NULL},
    BILLING("CreateAccount", create_account, fake_billing),
    BILLING("GetAccount", get_account, fake_billing),
    BILLING("DeleteAccount", delete_account, fake_billing),
    BILLING("Reserve", reserve, fake_reserve),
    BILLING("Settle", settle, fake_billing),
    BILLING("Release", release, fake_billing),
    BILLING("Recharge", recharge, fake_billing),
    BILLING("Adjust", adjust, fake_billing),
    BILLING("ListPrices", list_prices, fake_billing),
    BILLING("SetPrice", set_price, fake_billing),
    BILLING("DeletePrice", delete_price, fake_billing),
    BILLING("EventsInfo", events_info, fake_billing),
    BILLING("Usage", usage, fake_billing),
};

struct svc_rpc_registry fz_fake_registry = {methods, sizeof(methods) / sizeof(methods[0])};
