#ifndef SVC_TEST_H
#define SVC_TEST_H

/*
 * A tiny assert header for the C unit tests (libuv's task.h in spirit): each check prints both
 * values and the line on failure and exits non-zero. Every test file is its own executable, run by
 * ctest with a timeout, so a crash or a hang fails only that file.
 */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* Runs one test function and prints its name, so a failing file says which case broke. */
#define T_RUN(fn)                                                                    \
    do {                                                                             \
        fprintf(stderr, "-- %s\n", #fn);                                             \
        fn();                                                                        \
    } while (0)

#endif
