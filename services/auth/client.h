#ifndef AUTH_CLIENT_H
#define AUTH_CLIENT_H

#include <stddef.h>

#include "auth.pb-c.h"
#include "svc/err.h"

struct svc_fetch;
struct svc_fetch_multi;
struct svc_rpc_client;

/*
 * The auth service's client library, for its callers (chat, proxy): "who is this?" for a
 * request's credentials (the Authenticate RPC), with a short memory of successful answers, so a
 * client sending the same credentials many times a second pays the RPC (one loopback round trip)
 * once per ttl (CHAT_AUTH_CACHE_MS in chat) instead of on every request.
 *
 * The memory is kept per process, shared by its loops (striped locks). Keyed by a keyed BLAKE2b
 * digest of the Authorization header (the key is random per process; credentials are never
 * stored). Only AUTH_OK answers for Basic credentials, "Bearer user:pass" and API keys are kept;
 * login-session tokens and cookies always ask auth, so a logout takes effect at once. A change
 * this process makes (/user, /model) drops the user's entries at once; a change made elsewhere
 * (block, password, key revocation) is seen within the ttl plus auth's own recheck interval.
 */

struct auth_client_identity {
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
int auth_client_setup(size_t slots, long ttl_ms) SVC_MUST_CHECK;
void auth_client_teardown(void);

/* 1 when authorization may be remembered at all (see above). */
int auth_client_memo_eligible(const char *authorization);

/* 1 and *out filled when a fresh answer for authorization is remembered. Thread-safe. */
int auth_client_memo_get(const char *authorization, struct auth_client_identity *out);

/* Remembers an AUTH_OK identity for authorization. Thread-safe. */
void auth_client_memo_put(const char *authorization, const Chatweb__Auth__Identity *id);

/* Forgets every answer for user_id (this process changed the account). Thread-safe. */
void auth_client_forget_user(long long user_id);

/*
 * The answer to auth_client_authenticate. err != SVC_OK: auth could not be asked or did not
 * answer (errmsg says why; result is 0, id NULL). Otherwise result is an AuthResult, scheme the
 * credential kind auth recognised ("basic", "bearer", "apikey", "session"; may be NULL), id
 * the identity when there is one (AUTH_OK, AUTH_BLOCKED) and retry_after_ms how long a throttled
 * client must wait (AUTH_THROTTLED). Everything is borrowed for the call.
 */
typedef void (*auth_client_fn)(void *ctx, int err, int result, const char *scheme,
                               const Chatweb__Auth__Identity *id, long long retry_after_ms,
                               const char *errmsg);

/*
 * Authenticates a request's Authorization and Cookie headers (either may be NULL). Answers from
 * the memory when it can: cb has then run before this returns, *call is NULL and *remembered is
 * 1. Otherwise asks auth on rpc/multi (borrowed) and *call is the pending call (cancel with
 * svc_fetch_cancel: cb then never runs); a successful answer is remembered. SVC_EUNAVAIL when
 * the call could not be started (cb never runs). Runs on the caller's loop.
 */
int auth_client_authenticate(struct svc_rpc_client *rpc, struct svc_fetch_multi *multi,
                             const char *authorization, const char *cookie,
                             const char *client_ip, const char *rid, auth_client_fn cb,
                             void *ctx, struct svc_fetch **call, int *remembered) SVC_MUST_CHECK;

#endif
