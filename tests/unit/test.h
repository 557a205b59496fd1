#ifndef SVC_TEST_H
#define SVC_TEST_H

/*
 * A tiny assert header for the C unit tests (libuv's task.h in spirit): each check prints both
 * values and the line on failure and exits non-zero. Every test file is its own executable, and
 * ctest runs every case of it (each T_RUN line) in a process of its own with a timeout (house
 * rule 17, tests/CMakeLists.txt): the environment variable T_CASE names the case, the others are
 * passed over, so a crash, a hang or a leak is laid at that case. Without T_CASE every case runs.
 */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define T_FAIL(...)                                                                  \
    do {                                                                             \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                              \
        fprintf(stderr, __VA_ARGS__);                                                \
        fputc('\n', stderr);                                                         \
        exit(1);                                                                     \
    } while (0)

#define T_ASSERT(cond)                                                               \
    do {                                                                             \
        if (!(cond))                                                                 \
            T_FAIL("assertion failed: %s", #cond);                                   \
    } while (0)

#define T_EQ_INT(a, b)                                                               \
    do {                                                                             \
        long long _a = (long long)(a), _b = (long long)(b);                          \
        if (_a != _b)                                                                \
            T_FAIL("%s == %s: %lld != %lld", #a, #b, _a, _b);                        \
    } while (0)

#define T_EQ_STR(a, b)                                                               \
    do {                                                                             \
        const char *_a = (a), *_b = (b);                                             \
        if (_a == NULL || _b == NULL || strcmp(_a, _b) != 0)                         \
            T_FAIL("%s == %s: \"%s\" != \"%s\"", #a, #b, _a ? _a : "(null)",         \
                   _b ? _b : "(null)");                                              \
    } while (0)

/* 1 once the case T_CASE names has run. A process asked for a case it never reached fails at
 * exit (t_case_check), unless it exits with another status of its own (77: skipped). */
static int t_case_ran __attribute__((unused));

static __attribute__((unused)) void t_case_check(int status, void *arg)
{
    (void)arg;
    if (status == 0 && !t_case_ran) {
        fprintf(stderr, "T_CASE=%s: no such case ran\n", getenv("T_CASE"));
        _exit(1);
    }
}

/* 1 when fn is to run: no T_CASE, or T_CASE names it. */
static __attribute__((unused)) int t_case_wanted(const char *fn)
{
    static int registered;
    const char *only = getenv("T_CASE");

    if (only == NULL || only[0] == '\0')
        return 1;
    if (!registered) {
        registered = 1;
        on_exit(t_case_check, NULL);
    }
    if (strcmp(only, fn) != 0)
        return 0;
    t_case_ran = 1;
    return 1;
}

/* The same for a test function that takes one argument (a server's URL, say). */
#define T_RUN_ARG(fn, arg)                                                           \
    do {                                                                             \
        if (t_case_wanted(#fn)) {                                                    \
            fprintf(stderr, "-- %s\n", #fn);                                         \
            fn(arg);                                                                 \
        }                                                                            \
    } while (0)

/* Runs one test function and prints its name, so a failing file says which case broke. */
#define T_RUN(fn)                                                                    \
    do {                                                                             \
        if (t_case_wanted(#fn)) {                                                    \
            fprintf(stderr, "-- %s\n", #fn);                                         \
            fn();                                                                    \
        }                                                                            \
    } while (0)

#endif
