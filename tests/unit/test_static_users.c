/*
 * Unit tests of services/auth/static_users.h (static_users.c is compiled into this test): the
 * BASIC_AUTH_USER / BASIC_AUTH_PASSWORD lists (length mismatch, empty names skipped, empty
 * passwords, duplicates and ':' rejected, error texts never holding a password) and check()
 * (1-based id, 0 unknown, -1 wrong password, empty name or password never matching).
 */

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "static_users.h"
#include "svc/err.h"
#include "test.h"

static struct auth_static_users *make(const char *users, const char *passwords)
{
    struct auth_static_users *u = NULL;
    char err[256] = "";
    int rc = auth_static_users_create(&u, users, passwords, err, sizeof(err));

    if (rc != SVC_OK)
        T_FAIL("create(\"%s\") = %d: %s", users, rc, err);
    T_ASSERT(u != NULL);
    return u;
}

/* Expects a refusal; the reason must contain `needle` and no text from `secrets`. */
static void expect_refused(const char *users, const char *passwords, const char *needle)
{
    struct auth_static_users *u = (struct auth_static_users *)1;
    char err[512] = "";
    int rc = auth_static_users_create(&u, users, passwords, err, sizeof(err));

    if (rc != SVC_EINVAL)
        T_FAIL("create(\"%s\", ...) = %d, want SVC_EINVAL", users, rc);
    T_ASSERT(u == NULL);
    if (strstr(err, needle) == NULL)
        T_FAIL("create(\"%s\"): reason \"%s\" lacks \"%s\"", users, err, needle);
    /* all test passwords contain "SECRET" */
    if (strstr(err, "SECRET") != NULL)
        T_FAIL("create(\"%s\"): the reason leaks a password: \"%s\"", users, err);
}

static void test_basic(void)
{
    struct auth_static_users *u = make("alice,bob", "SECRET-a,SECRET-b");

    T_EQ_INT(auth_static_users_count(u), 2);
    T_EQ_INT(auth_static_users_check(u, "alice", "SECRET-a"), 1);
    T_EQ_INT(auth_static_users_check(u, "bob", "SECRET-b"), 2);
    T_EQ_INT(auth_static_users_check(u, "alice", "SECRET-b"), -1);
    T_EQ_INT(auth_static_users_check(u, "bob", "SECRET-a"), -1);
    T_EQ_INT(auth_static_users_check(u, "carol", "SECRET-a"), 0);
    T_EQ_STR(auth_static_users_name(u, 1), "alice");
    T_EQ_STR(auth_static_users_name(u, 2), "bob");
    T_EQ_STR(auth_static_users_name(u, 0), "");
    T_EQ_STR(auth_static_users_name(u, 3), "");
    T_EQ_STR(auth_static_users_name(u, -1), "");
    auth_static_users_destroy(&u);
    T_ASSERT(u == NULL);
    auth_static_users_destroy(&u);
    auth_static_users_destroy(NULL);
}

static void test_exact_match_only(void)
{
    struct auth_static_users *u = make("alice, bob", "SECRET-pw,SECRET pw2");

    T_EQ_INT(auth_static_users_check(u, "Alice", "SECRET-pw"), 0); /* case-sensitive names */
    T_EQ_INT(auth_static_users_check(u, "ali", "SECRET-pw"), 0);   /* no prefix match */
    T_EQ_INT(auth_static_users_check(u, "alicex", "SECRET-pw"), 0);
    T_EQ_INT(auth_static_users_check(u, "alice", "SECRET-p"), -1); /* no prefix password */
    T_EQ_INT(auth_static_users_check(u, "alice", "SECRET-pw "), -1);
    T_EQ_INT(auth_static_users_check(u, "alice", "secret-pw"), -1);
    /* no trimming (the seed's rule): " bob" is the name, with a space */
    T_EQ_INT(auth_static_users_check(u, "bob", "SECRET pw2"), 0);
    T_EQ_INT(auth_static_users_check(u, " bob", "SECRET pw2"), 2);
    auth_static_users_destroy(&u);
}

static void test_empty_never_matches(void)
{
    struct auth_static_users *u = make("alice", "SECRET");

    T_EQ_INT(auth_static_users_check(u, "", "SECRET"), 0);
    T_EQ_INT(auth_static_users_check(u, "alice", ""), 0);
    T_EQ_INT(auth_static_users_check(u, "", ""), 0);
    auth_static_users_destroy(&u);
}

static void test_empty_lists(void)
{
    struct auth_static_users *u = make("", "");

    T_EQ_INT(auth_static_users_count(u), 0);
    T_EQ_INT(auth_static_users_check(u, "alice", "x"), 0);
    T_EQ_INT(auth_static_users_check(u, "", ""), 0);
    T_EQ_STR(auth_static_users_name(u, 1), "");
    auth_static_users_destroy(&u);
}

static void test_empty_names_skipped(void)
{
    struct auth_static_users *u = make("alice,,bob,", "SECRET-1,SECRET-2,SECRET-3,SECRET-4");
    long id;

    T_EQ_INT(auth_static_users_count(u), 2);
    id = auth_static_users_check(u, "bob", "SECRET-3"); /* matched by position in the list */
    T_ASSERT(id >= 1);
    T_EQ_STR(auth_static_users_name(u, id), "bob");
    T_EQ_INT(auth_static_users_check(u, "alice", "SECRET-1"), 1);
    T_EQ_INT(auth_static_users_check(u, "bob", "SECRET-2"), -1);
    T_EQ_INT(auth_static_users_check(u, "", "SECRET-2"), 0);
    auth_static_users_destroy(&u);

    /* an empty name may come with an empty password: it is skipped either way */
    u = make("alice,", "SECRET-1,");
    T_EQ_INT(auth_static_users_count(u), 1);
    auth_static_users_destroy(&u);
}

static void test_length_mismatch(void)
{
    struct auth_static_users *u = (struct auth_static_users *)1;
    char err[256] = "";

    T_EQ_INT(auth_static_users_create(&u, "a,b,c", "SECRET-1,SECRET-2", err, sizeof(err)),
             SVC_EINVAL);
    T_ASSERT(u == NULL);
    T_ASSERT(strstr(err, "BASIC_AUTH_USER") != NULL);
    T_ASSERT(strstr(err, "BASIC_AUTH_PASSWORD") != NULL);
    T_ASSERT(strstr(err, "3") != NULL && strstr(err, "2") != NULL);
    T_ASSERT(strstr(err, "SECRET") == NULL);

    expect_refused("a", "SECRET-1,SECRET-2", "BASIC_AUTH_PASSWORD");
    expect_refused("a", "", "BASIC_AUTH_USER");
    expect_refused("", "SECRET-only", "BASIC_AUTH_PASSWORD");
    expect_refused("a,b", "SECRET,with,commas", "BASIC_AUTH_USER"); /* commas split passwords */
}

static void test_empty_password_rejected(void)
{
    expect_refused("alice,bob", "SECRET-1,", "empty");
    expect_refused("alice,bob", "SECRET-1,", "bob");
    expect_refused("alice,bob", ",SECRET-2", "alice");
}

static void test_duplicates_rejected(void)
{
    expect_refused("alice,alice", "SECRET-1,SECRET-2", "twice");
    expect_refused("alice,bob,alice", "SECRET-1,SECRET-2,SECRET-1", "alice");
}

static void test_colon_rejected(void)
{
    expect_refused("al:ice", "SECRET", "':'");
    expect_refused("ok,:x", "SECRET-1,SECRET-2", "':'");
}

static void test_name_length(void)
{
    char names[200], pw[] = "SECRET";
    struct auth_static_users *u;

    memset(names, 'n', 64);
    names[64] = '\0';
    u = make(names, pw);
    T_EQ_INT(auth_static_users_check(u, names, pw), 1);
    auth_static_users_destroy(&u);

    memset(names, 'n', 65);
    names[65] = '\0';
    expect_refused(names, pw, "longer than 64");
    memset(names, 'n', 150);
    names[150] = '\0';
    expect_refused(names, pw, "longer than 64");
}

static void test_password_length(void)
{
    static char pw[2048];
    struct auth_static_users *u;

    memcpy(pw, "SECRET", 6);
    memset(pw + 6, 'p', 1023 - 6);
    pw[1023] = '\0';
    u = make("alice", pw);
    T_EQ_INT(auth_static_users_check(u, "alice", pw), 1);
    auth_static_users_destroy(&u);

    memset(pw + 6, 'p', 1024 - 6);
    pw[1024] = '\0';
    expect_refused("alice", pw, "too long");
}

static void test_too_many_users(void)
{
    size_t n = 1025;
    char *users = malloc(n * 8), *pws = malloc(n * 12);
    size_t ou = 0, op = 0;
    struct auth_static_users *u = NULL;
    char err[256];

    T_ASSERT(users != NULL && pws != NULL);
    for (size_t i = 0; i < n; i++) {
        ou += (size_t)snprintf(users + ou, n * 8 - ou, "%su%zu", i ? "," : "", i);
        op += (size_t)snprintf(pws + op, n * 12 - op, "%sSECRET%zu", i ? "," : "", i);
    }
    expect_refused(users, pws, "more than 1024");

    /* 1024 is fine */
    *strrchr(users, ',') = '\0';
    *strrchr(pws, ',') = '\0';
    T_EQ_INT(auth_static_users_create(&u, users, pws, err, sizeof(err)), SVC_OK);
    T_EQ_INT(auth_static_users_count(u), 1024);
    T_EQ_INT(auth_static_users_check(u, "u1023", "SECRET1023"), 1024);
    T_EQ_INT(auth_static_users_check(u, "u0", "SECRET0"), 1);
    auth_static_users_destroy(&u);
    free(users);
    free(pws);
}

static void test_per_process_key(void)
{
    /* two instances with the same list agree on results (the digest key is per instance) */
    struct auth_static_users *a = make("x", "SECRET"), *b = make("x", "SECRET");

    T_EQ_INT(auth_static_users_check(a, "x", "SECRET"), 1);
    T_EQ_INT(auth_static_users_check(b, "x", "SECRET"), 1);
    T_EQ_INT(auth_static_users_check(b, "x", "SECRET2"), -1);
    auth_static_users_destroy(&a);
    auth_static_users_destroy(&b);
}

static struct auth_static_users *shared;

static void *check_many(void *arg)
{
    long id = (long)(intptr_t)arg;
    char name[16], pw[32];

    snprintf(name, sizeof(name), "u%ld", id);
    snprintf(pw, sizeof(pw), "SECRET%ld", id);
    for (int i = 0; i < 2000; i++) {
        T_EQ_INT(auth_static_users_check(shared, name, pw), id + 1);
        T_EQ_INT(auth_static_users_check(shared, name, "nope"), -1);
    }
    return NULL;
}

static void test_threads(void)
{
    pthread_t th[4];

    shared = make("u0,u1,u2,u3", "SECRET0,SECRET1,SECRET2,SECRET3");
    for (long i = 0; i < 4; i++)
        T_EQ_INT(pthread_create(&th[i], NULL, check_many, (void *)(intptr_t)i), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    auth_static_users_destroy(&shared);
}

int main(void)
{
    T_RUN(test_basic);
    T_RUN(test_exact_match_only);
    T_RUN(test_empty_never_matches);
    T_RUN(test_empty_lists);
    T_RUN(test_empty_names_skipped);
    T_RUN(test_length_mismatch);
    T_RUN(test_empty_password_rejected);
    T_RUN(test_duplicates_rejected);
    T_RUN(test_colon_rejected);
    T_RUN(test_name_length);
    T_RUN(test_password_length);
    T_RUN(test_too_many_users);
    T_RUN(test_per_process_key);
    T_RUN(test_threads);
    return 0;
}
