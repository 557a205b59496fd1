#ifndef BILLING_RPC_H
#define BILLING_RPC_H

/*
 * billing's RPC methods (/rpc/Billing/<Method>, proto/billing.proto) on a store: main.c serves
 * billing_rpc_registry with svc_rpc_dispatch; the fuzz target does the same on SQLite.
 */

#include "svc/rpc.h"

struct billing_store;
struct billing_relay;

extern struct svc_rpc_registry billing_rpc_registry;

/* Points the handlers at the store (and the relay they wake after each change of money; NULL
 * for none) and registers their metrics. Once, before serving. */
void billing_rpc_setup(struct billing_store *store, struct billing_relay *relay);

#endif
