#ifndef CHAT_CONTEXT_H
#define CHAT_CONTEXT_H

#include <stddef.h>

#include "svc/err.h"
#include "svc/json.h"

/*
 * Conversation context in Redis (pure helpers; the async walk lives in turn.c).
 *
 * Each message is one key, scoped to its owner's account so nobody can chain onto another
 * user's conversation (the seed's S9):
 *     cw:ctx:{u<account id>}:<message id>
 *         ->  {"role":"user|assistant","content":"...","parent":"<id>"}
 * with a TTL of CHAT_SESSION_TTL minutes, refreshed whenever a later turn reads it. The account id
 * is the immutable SQL id, never the username: a renamed account keeps its history and a new
 * account that takes the old name gets none of it (ids are never reused). The braces are a Redis
 * Cluster hash tag: one user's messages live in one slot.
 */

#define CHAT_ID_MAX 64
#define CHAT_KEY_MAX 512

/* 1 when id is a usable message id: 1..64 of [A-Za-z0-9_-]. */
int chat_id_valid(const char *id);

/* Builds the key of message id for the account user_id. SVC_ETOOLARGE when it does not fit. */
int chat_ctx_key(char *key, size_t keylen, long long user_id, const char *id) SVC_MUST_CHECK;

/* Encodes a message for storage. Caller frees the result with free(). NULL on failure. */
char *chat_ctx_encode(const char *role, const char *content, size_t content_len,
                      const char *parent);

/*
 * Decodes a stored message into *msg (a new {"role","content"} object, caller owns it:
 * svc_json_destroy) and parent (the previous message id, "" at the start of the chain).
 * SVC_EINVAL when the stored value is not one of ours.
 */
int chat_ctx_decode(const char *text, size_t len, struct svc_json **msg,
                    char parent[CHAT_ID_MAX + 1]) SVC_MUST_CHECK;

#endif
