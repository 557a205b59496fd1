#include "authmemo.h"

#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "svc/loop.h"

#define MEMO_LOCKS 32

struct memo_slot {
    unsigned char digest[crypto_generichash_BYTES];
    uint64_t expires_ms; /* 0 = empty */
    struct chat_authmemo_identity id;
};

static struct {
    struct memo_slot *slots;
    size_t n;
    long ttl_ms;
    unsigned char key[crypto_generichash_KEYBYTES];
    pthread_mutex_t locks[MEMO_LOCKS];
} memo;

int chat_authmemo_setup(size_t slots, long ttl_ms)
{
    memo.ttl_ms = ttl_ms;
    if (ttl_ms <= 0 || slots == 0)
        return SVC_OK;
    if (sodium_init() < 0)
        return SVC_EINTERNAL;
    memo.slots = calloc(slots, sizeof(*memo.slots));
    if (memo.slots == NULL)
        return SVC_ENOMEM;
    memo.n = slots;
    crypto_generichash_keygen(memo.key);
    for (int i = 0; i < MEMO_LOCKS; i++)
        pthread_mutex_init(&memo.locks[i], NULL);
    return SVC_OK;
}

void chat_authmemo_teardown(void)
{
    if (memo.slots == NULL)
        return;
    for (int i = 0; i < MEMO_LOCKS; i++)
        pthread_mutex_destroy(&memo.locks[i]);
    sodium_memzero(memo.slots, memo.n * sizeof(*memo.slots));
    free(memo.slots);
    memo.slots = NULL;
    memo.n = 0;
}

int chat_authmemo_eligible(const char *a)
{
    if (memo.slots == NULL || a == NULL)
        return 0;
    if (strncasecmp(a, "Basic ", 6) == 0)
        return 1;
    /* Bearer sk-... (API key) or Bearer user:pass; not a login session (cws_...) */
    return strncasecmp(a, "Bearer ", 7) == 0 && strncmp(a + 7, "cws_", 4) != 0;
}

static size_t slot_of(const char *authorization, unsigned char d[crypto_generichash_BYTES])
{
    uint64_t v;

    crypto_generichash(d, crypto_generichash_BYTES, (const unsigned char *)authorization,
                       strlen(authorization), memo.key, sizeof(memo.key));
    memcpy(&v, d, sizeof(v));
    return (size_t)(v % memo.n);
}

int chat_authmemo_get(const char *authorization, struct chat_authmemo_identity *out)
{
    unsigned char d[crypto_generichash_BYTES];
    size_t i;
    int hit = 0;

    if (!chat_authmemo_eligible(authorization))
        return 0;
    i = slot_of(authorization, d);
    pthread_mutex_lock(&memo.locks[i % MEMO_LOCKS]);
    if (memo.slots[i].expires_ms > svc_clock_ms() &&
        sodium_memcmp(memo.slots[i].digest, d, sizeof(d)) == 0) {
        *out = memo.slots[i].id;
        hit = 1;
    }
    pthread_mutex_unlock(&memo.locks[i % MEMO_LOCKS]);
    return hit;
}

void chat_authmemo_put(const char *authorization, const Chatweb__Auth__Identity *id)
{
    unsigned char d[crypto_generichash_BYTES];
    struct memo_slot s = {0};
    size_t i, off = 0;

    if (!chat_authmemo_eligible(authorization) || id == NULL)
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
    s.expires_ms = svc_clock_ms() + (uint64_t)memo.ttl_ms;
    pthread_mutex_lock(&memo.locks[i % MEMO_LOCKS]);
    memo.slots[i] = s;
    pthread_mutex_unlock(&memo.locks[i % MEMO_LOCKS]);
}

void chat_authmemo_drop_user(long long user_id)
{
    for (size_t i = 0; i < memo.n; i++) {
        pthread_mutex_lock(&memo.locks[i % MEMO_LOCKS]);
        if (memo.slots[i].expires_ms != 0 && memo.slots[i].id.user_id == user_id)
            memo.slots[i].expires_ms = 0;
        pthread_mutex_unlock(&memo.locks[i % MEMO_LOCKS]);
    }
}
