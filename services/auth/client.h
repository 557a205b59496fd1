#ifndef CHAT_AUTHMEMO_H
#define CHAT_AUTHMEMO_H

#include <stddef.h>

#include "auth.pb-c.h"
#include "svc/err.h"

/*
 * A short memory of successful Authenticate answers, so a client sending the same credentials
 * many times a second pays the auth RPC (one loopback round trip) once per CHAT_AUTH_CACHE_MS
 * instead of on every request.
 *
 * Kept per chat process, shared by its loops (striped locks). Keyed by a keyed BLAKE2b digest of
 * the Authorization header (the key is random per process; credentials are never stored). Only
 * AUTH_OK answers for Basic credentials, "Bearer user:pass" and API keys are kept; login-session
 * tokens and cookies always ask auth, so a logout takes effect at once. A change this process
 * makes (/user, /model) drops the user's entries at once; a change made elsewhere (block,
 * password, key revocation) is seen within CHAT_AUTH_CACHE_MS plus auth's own recheck interval.
 */

struct chat_authmemo_identity {
    long long user_id;
    char username[128];
    int is_static;
    char model[128];
    char key_id[64];
    char allowed_models[512]; /* comma-separated, "" = any */
    int rpm_limit;
    long long tpm_limit;
};

/* Sets the memory up; ttl_ms 0 turns it off. Call once before the loops start. */
int chat_authmemo_setup(size_t slots, long ttl_ms) SVC_MUST_CHECK;
void chat_authmemo_teardown(void);

/* 1 when authorization may be remembered at all (see above). */
int chat_authmemo_eligible(const char *authorization);

/* 1 and *out filled when a fresh answer for authorization is remembered. Thread-safe. */
int chat_authmemo_get(const char *authorization, struct chat_authmemo_identity *out);

/* Remembers an AUTH_OK identity for authorization. Thread-safe. */
void chat_authmemo_put(const char *authorization, const Chatweb__Auth__Identity *id);

/* Forgets every answer for user_id (this process changed the account). Thread-safe. */
void chat_authmemo_drop_user(long long user_id);

#endif
