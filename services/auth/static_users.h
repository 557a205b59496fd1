#ifndef AUTH_STATIC_USERS_H
#define AUTH_STATIC_USERS_H

#include <stddef.h>

#include "svc/err.h"

/*
 * The static accounts of BASIC_AUTH_USER / BASIC_AUTH_PASSWORD (comma-separated, matched by
 * position, as in the seed). Passwords are kept only as keyed BLAKE2b digests (the key is random
 * per process), compared in constant time, and never logged.
 */

struct auth_static_users;

/* Parses the two lists. On a mismatch (different lengths, an empty password, a duplicate name)
 * returns SVC_EINVAL with the reason in err (never containing a password). */
int auth_static_users_create(struct auth_static_users **out, const char *users,
                             const char *passwords, char *err, size_t errlen) SVC_MUST_CHECK;
void auth_static_users_destroy(struct auth_static_users **u);

/* Number of accounts. */
size_t auth_static_users_count(const struct auth_static_users *u);

/* 1-based id of the user when name and password match; 0 when the name is unknown; -1 when the
 * password is wrong. Empty names or passwords never match. Thread-safe. */
long auth_static_users_check(const struct auth_static_users *u, const char *name,
                             const char *password);

/* The name of user id (1-based). */
const char *auth_static_users_name(const struct auth_static_users *u, long id);

#endif
