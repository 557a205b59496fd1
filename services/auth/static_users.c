#include "static_users.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/util.h"

#define STATIC_USERS_MAX 1024
#define NAME_MAX_LEN 64

struct static_user {
    char name[NAME_MAX_LEN + 1];
    unsigned char digest[crypto_generichash_BYTES];
};

struct auth_static_users {
    unsigned char key[crypto_generichash_KEYBYTES];
    struct static_user *users;
    size_t n;
};

static void digest(const struct auth_static_users *u, const char *password,
                   unsigned char out[crypto_generichash_BYTES])
{
    crypto_generichash(out, crypto_generichash_BYTES, (const unsigned char *)password,
                       strlen(password), u->key, sizeof(u->key));
}

/* Returns the next comma-separated field of *list (copied into out), or -1 when too long. */
static int next_field(const char **list, char *out, size_t outlen)
{
    const char *comma = strchr(*list, ',');
    size_t n = comma != NULL ? (size_t)(comma - *list) : strlen(*list);

    if (n >= outlen)
        return -1;
    memcpy(out, *list, n);
    out[n] = '\0';
    *list = comma != NULL ? comma + 1 : NULL;
    return 0;
}

static size_t count_fields(const char *s)
{
    size_t n = 1;

    if (s[0] == '\0')
        return 0;
    for (; *s; s++)
        n += *s == ',';
    return n;
}

int auth_static_users_create(struct auth_static_users **out, const char *users,
                             const char *passwords, char *err, size_t errlen)
{
    struct auth_static_users *u = NULL;
    size_t nu = count_fields(users), np = count_fields(passwords);
    char name[NAME_MAX_LEN + 2], pw[1024];
    int rc = SVC_EINVAL;

    *out = NULL;
    if (nu != np) {
        snprintf(err, errlen, "BASIC_AUTH_USER has %zu names but BASIC_AUTH_PASSWORD has %zu "
                              "passwords", nu, np);
        return SVC_EINVAL;
    }
    if (nu > STATIC_USERS_MAX) {
        snprintf(err, errlen, "BASIC_AUTH_USER: more than %d users", STATIC_USERS_MAX);
        return SVC_EINVAL;
    }
    if (sodium_init() < 0) {
        snprintf(err, errlen, "libsodium cannot start");
        return SVC_EINTERNAL;
    }
    u = calloc(1, sizeof(*u));
    if (u == NULL || (nu > 0 && (u->users = calloc(nu, sizeof(*u->users))) == NULL)) {
        rc = SVC_ENOMEM;
        goto fail;
    }
    randombytes_buf(u->key, sizeof(u->key));
    for (size_t i = 0; i < nu; i++) {
        if (next_field(&users, name, sizeof(name)) != 0 || strlen(name) > NAME_MAX_LEN) {
            snprintf(err, errlen, "BASIC_AUTH_USER: name %zu is longer than %d bytes", i + 1,
                     NAME_MAX_LEN);
            goto fail;
        }
        if (next_field(&passwords, pw, sizeof(pw)) != 0) {
            snprintf(err, errlen, "BASIC_AUTH_PASSWORD: password %zu is too long", i + 1);
            goto fail;
        }
        if (name[0] == '\0') /* the seed skips empty names */
            continue;
        if (pw[0] == '\0' || strchr(name, ':') != NULL) {
            snprintf(err, errlen, "%s %zu (\"%s\") is not usable: %s", "BASIC_AUTH_USER", i + 1,
                     name, pw[0] == '\0' ? "its password is empty" : "names cannot contain ':'");
            goto fail;
        }
        for (size_t k = 0; k < u->n; k++)
            if (strcmp(u->users[k].name, name) == 0) {
                snprintf(err, errlen, "BASIC_AUTH_USER: \"%s\" is listed twice", name);
                goto fail;
            }
        memcpy(u->users[u->n].name, name, strlen(name) + 1); /* length checked above */
        digest(u, pw, u->users[u->n].digest);
        u->n++;
    }
    sodium_memzero(pw, sizeof(pw));
    *out = u;
    return SVC_OK;
fail:
    sodium_memzero(pw, sizeof(pw));
    auth_static_users_destroy(&u);
    return rc;
}

void auth_static_users_destroy(struct auth_static_users **up)
{
    struct auth_static_users *u = up != NULL ? *up : NULL;

    if (u == NULL)
        return;
    free(u->users);
    sodium_memzero(u, sizeof(*u));
    free(u);
    *up = NULL;
}

size_t auth_static_users_count(const struct auth_static_users *u)
{
    return u->n;
}

long auth_static_users_check(const struct auth_static_users *u, const char *name,
                             const char *password)
{
    unsigned char d[crypto_generichash_BYTES];

    if (name[0] == '\0' || password[0] == '\0')
        return 0;
    for (size_t i = 0; i < u->n; i++) {
        if (strcmp(u->users[i].name, name) != 0)
            continue;
        digest(u, password, d);
        return sodium_memcmp(d, u->users[i].digest, sizeof(d)) == 0 ? (long)i + 1 : -1;
    }
    return 0;
}

const char *auth_static_users_name(const struct auth_static_users *u, long id)
{
    return id >= 1 && (size_t)id <= u->n ? u->users[id - 1].name : "";
}
