#include "client.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "svc/crypto.h"
#include "svc/fetch.h"
#include "svc/loop.h"
#include "svc/rpc.h"
#include "svc/util.h"

#define MEMO_LOCKS 32

struct memo_slot {
    unsigned char digest[SVC_CRYPTO_BLAKE2B_BYTES];
    uint64_t expires_ms; /* 0 = empty */
    struct auth_client_identity id;
};

static struct {
    struct memo_slot *slots;
    size_t n;
    long ttl_ms;
    unsigned char key[SVC_CRYPTO_BLAKE2B_KEYBYTES];
    pthread_mutex_t locks[MEMO_LOCKS];
} memo;

int auth_client_setup(size_t slots, long ttl_ms)
{
    memo.ttl_ms = ttl_ms;
    if (ttl_ms <= 0 || slots == 0)
        return SVC_OK;
    if (svc_crypto_setup() != SVC_OK)
        return SVC_EINTERNAL;
    memo.slots = calloc(slots, sizeof(*memo.slots));
    if (memo.slots == NULL)
        return SVC_ENOMEM;
    memo.n = slots;
    svc_crypto_random(memo.key, sizeof(memo.key));
    for (int i = 0; i < MEMO_LOCKS; i++)
        pthread_mutex_init(&memo.locks[i], NULL);
    return SVC_OK;
}

void auth_client_teardown(void)
{
    if (memo.slots == NULL)
        return;
    for (int i = 0; i < MEMO_LOCKS; i++)
        pthread_mutex_destroy(&memo.locks[i]);
    svc_util_wipe(memo.slots, memo.n * sizeof(*memo.slots));
    free(memo.slots);
    memo.slots = NULL;
    memo.n = 0;
}

int auth_client_memo_eligible(const char *a)
{
    if (memo.slots == NULL || a == NULL)
        return 0;
    if (strncasecmp(a, "Basic ", 6) == 0)
        return 1;
    /* Bearer sk-... (API key) or Bearer user:pass; not a login session (cws_...) */
    return strncasecmp(a, "Bearer ", 7) == 0 && strncmp(a + 7, "cws_", 4) != 0;
}

static size_t slot_of(const char *authorization, unsigned char d[SVC_CRYPTO_BLAKE2B_BYTES])
{
    uint64_t v;

    svc_crypto_blake2b(d, authorization, strlen(authorization), memo.key);
    memcpy(&v, d, sizeof(v));
    return (size_t)(v % memo.n);
}

int auth_client_memo_get(const char *authorization, struct auth_client_identity *out)
{
    unsigned char d[SVC_CRYPTO_BLAKE2B_BYTES];
    size_t i;
    int hit = 0;

    if (!auth_client_memo_eligible(authorization))
        return 0;
    i = slot_of(authorization, d);
    pthread_mutex_lock(&memo.locks[i % MEMO_LOCKS]);
    if (memo.slots[i].expires_ms > svc_loop_clock_ms() &&
        svc_crypto_equal(memo.slots[i].digest, d, sizeof(d))) {
        *out = memo.slots[i].id;
        hit = 1;
    }
    pthread_mutex_unlock(&memo.locks[i % MEMO_LOCKS]);
    return hit;
}

void auth_client_memo_put(const char *authorization, const Chatweb__Auth__Identity *id)
{
    unsigned char d[SVC_CRYPTO_BLAKE2B_BYTES];
    struct memo_slot s = {0};
    size_t i, off = 0;

    if (!auth_client_memo_eligible(authorization) || id == NULL)
        return;
    s.id.user_id = id->user_id;
    s.id.is_static = id->is_static;
    s.id.rpm_limit = id->rpm_limit;
    s.id.tpm_limit = id->tpm_limit;
    snprintf(s.id.username, sizeof(s.id.username), "%s", id->username ? id->username : "");
    snprintf(s.id.model, sizeof(s.id.model), "%s", id->model ? id->model : "");
    snprintf(s.id.key_id, sizeof(s.id.key_id), "%s", id->key_id ? id->key_id : "");
    for (size_t k = 0; k < id->n_allowed_models; k++) {
        int n = snprintf(s.id.allowed_models + off, sizeof(s.id.allowed_models) - off, "%s%s",
                         k > 0 ? "," : "", id->allowed_models[k]);
        if (n < 0 || (size_t)n >= sizeof(s.id.allowed_models) - off)
            return; /* too long to remember: ask auth every time */
        off += (size_t)n;
    }
    i = slot_of(authorization, d);
    memcpy(s.digest, d, sizeof(d));
    s.expires_ms = svc_loop_clock_ms() + (uint64_t)memo.ttl_ms;
    pthread_mutex_lock(&memo.locks[i % MEMO_LOCKS]);
    memo.slots[i] = s;
    pthread_mutex_unlock(&memo.locks[i % MEMO_LOCKS]);
}

void auth_client_forget_user(long long user_id)
{
    for (size_t i = 0; i < memo.n; i++) {
        pthread_mutex_lock(&memo.locks[i % MEMO_LOCKS]);
        if (memo.slots[i].expires_ms != 0 && memo.slots[i].id.user_id == user_id)
            memo.slots[i].expires_ms = 0;
        pthread_mutex_unlock(&memo.locks[i % MEMO_LOCKS]);
    }
}

/* ---- authenticate ---- */

struct auth_call {
    auth_client_fn cb;
    void *ctx;
    char *authorization; /* to remember a successful answer by */
};

static void auth_call_free(void *ctx)
{
    struct auth_call *ac = ctx;

    if (ac->authorization != NULL) {
        svc_util_wipe(ac->authorization, strlen(ac->authorization));
        free(ac->authorization);
    }
    free(ac);
}

static void on_authenticated(void *ctx, int err, ProtobufCMessage *out_msg, const char *errmsg)
{
    struct auth_call *ac = ctx;
    Chatweb__Auth__AuthenticateResponse *out = (void *)out_msg;

    if (err != SVC_OK) {
        ac->cb(ac->ctx, err, 0, NULL, NULL, 0, errmsg);
    } else {
        if (out->result == CHATWEB__AUTH__AUTH_RESULT__AUTH_OK && ac->authorization != NULL)
            auth_client_memo_put(ac->authorization, out->identity);
        ac->cb(ac->ctx, SVC_OK, out->result, out->scheme, out->identity,
               (long long)out->retry_after_ms, NULL);
    }
    if (out_msg != NULL)
        svc_rpc_message_destroy(&out_msg);
    auth_call_free(ac);
}

/* Answers from the memory; 1 when it did. */
static int answer_from_memo(const char *authz, auth_client_fn cb, void *ctx)
{
    struct auth_client_identity m;
    Chatweb__Auth__Identity id = CHATWEB__AUTH__IDENTITY__INIT;
    char *models[16];
    char *save = NULL;
    size_t n = 0;

    if (authz == NULL || !auth_client_memo_get(authz, &m))
        return 0;
    id.user_id = m.user_id;
    id.username = m.username;
    id.is_static = m.is_static;
    id.model = m.model;
    id.key_id = m.key_id;
    id.rpm_limit = m.rpm_limit;
    id.tpm_limit = m.tpm_limit;
    for (char *p = strtok_r(m.allowed_models, ",", &save); p != NULL && n < 16;
         p = strtok_r(NULL, ",", &save))
        models[n++] = p;
    id.n_allowed_models = n;
    id.allowed_models = models;
    cb(ctx, SVC_OK, CHATWEB__AUTH__AUTH_RESULT__AUTH_OK,
       strncasecmp(authz, "Basic ", 6) == 0 ? "basic" : "bearer", &id, 0, NULL);
    return 1;
}

int auth_client_authenticate(struct svc_rpc_client *rpc, struct svc_fetch_multi *multi,
                             const char *authorization, const char *cookie,
                             const char *client_ip, const char *rid, auth_client_fn cb,
                             void *ctx, struct svc_fetch **call, int *remembered)
{
    Chatweb__Auth__AuthenticateRequest in = CHATWEB__AUTH__AUTHENTICATE_REQUEST__INIT;
    struct auth_call *ac;

    *call = NULL;
    *remembered = 0;
    if (answer_from_memo(authorization, cb, ctx)) {
        *remembered = 1;
        return SVC_OK;
    }
    ac = calloc(1, sizeof(*ac));
    if (ac == NULL)
        return SVC_EUNAVAIL;
    ac->cb = cb;
    ac->ctx = ctx;
    if (auth_client_memo_eligible(authorization) &&
        (ac->authorization = strdup(authorization)) == NULL) {
        free(ac);
        return SVC_EUNAVAIL;
    }
    in.authorization = (char *)(authorization != NULL ? authorization : "");
    in.cookie = (char *)(cookie != NULL ? cookie : "");
    in.client_ip = (char *)(client_ip != NULL ? client_ip : "");
    if (svc_rpc_call_async_release(call, rpc, multi, "/rpc/Auth/Authenticate", &in.base,
                                   &chatweb__auth__authenticate_response__descriptor, rid,
                                   on_authenticated, auth_call_free, ac) != SVC_OK) {
        auth_call_free(ac);
        return SVC_EUNAVAIL;
    }
    return SVC_OK;
}
