#ifndef FUZZ_FAKE_SERVICES_H
#define FUZZ_FAKE_SERVICES_H

/*
 * Stand-ins for the auth and billing RPC methods, so a fuzzed handler that calls them (the ops
 * API calls billing; a chat turn calls Authenticate, Reserve, Settle, Release) gets a plausible
 * answer and goes on into its own code instead of stopping at "service unavailable". Every
 * method is served under FZ_FAKE_PREFIX (a client's base URL ends with it), from the same
 * in-process server as the handler under test: mount FZ_FAKE_ROUTE in its route table.
 *
 * Authenticate answers AUTH_OK for user FZ_FAKE_USER_ID "fuzz" when an Authorization or Cookie is
 * given, AUTH_MISSING otherwise. Reserve grants what was asked. Accounts have a balance of
 * FZ_FAKE_BALANCE. Nothing is remembered between calls.
 */

#include "svc/rpc.h"

#define FZ_FAKE_PREFIX "/fake"
#define FZ_FAKE_USER_ID 42
#define FZ_FAKE_BALANCE 1000000
/* Authorization "Bearer <FZ_FAKE_KEY...>" is a chatweb API key (key_id "k1"); the _LIMITED one
 * may use only the models gpt-4o-mini and alt-one. */
#define FZ_FAKE_KEY "fuzz-key"
#define FZ_FAKE_KEY_LIMITED "fuzz-key-limited"

extern struct svc_rpc_registry fz_fake_registry;

#define FZ_FAKE_ROUTE                                                                              \
    {                                                                                              \
        "POST", FZ_FAKE_PREFIX "/rpc/*", svc_rpc_dispatch, &fz_fake_registry, SVC_HTTP_STYLE_TEXT  \
    }

#endif
