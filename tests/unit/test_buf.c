/*
 * Unit tests of svc/buf.h: the hard maximum (SVC_ETOOLARGE leaves the buffer unchanged), appendf,
 * consume, take, and NUL termination after every operation. realloc is wrapped at link time
 * (-Wl,--wrap=realloc, see tests/CMakeLists.txt) so allocation failure can be injected: the
 * buffer must then report SVC_ENOMEM and stay unchanged too.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/buf.h"
#include "svc/err.h"
#include "test.h"

/* ---- allocator injection ---------------------------------------------------------------- */

void *__real_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n);

static int realloc_fail_in = -1; /* -1: never; 0: the next call fails; k: after k successes */
static int realloc_calls;

void *__wrap_realloc(void *p, size_t n)
{
    realloc_calls++;
    if (realloc_fail_in == 0) {
        realloc_fail_in = -1;
        return NULL;
    }
    if (realloc_fail_in > 0)
        realloc_fail_in--;
    return __real_realloc(p, n);
}

/* Checks the invariants every operation must keep. */
static void check_invariants(const struct svc_buf *b)
{
    T_ASSERT(b->len <= b->max);
    if (b->data != NULL) {
        T_ASSERT(b->len < b->cap);
        T_EQ_INT(b->data[b->len], '\0');
    } else {
        T_EQ_INT(b->len, 0);
        T_EQ_INT(b->cap, 0);
    }
}

/* ---- cases ---------------------------------------------------------------------------------- */

static void test_init_allocates_nothing(void)
{
    struct svc_buf b;

    svc_buf_init(&b, 100);
    T_ASSERT(b.data == NULL);
    T_EQ_INT(b.len, 0);
    T_EQ_INT(b.max, 100);
    check_invariants(&b);
    T_ASSERT(svc_buf_take(&b) == NULL); /* "may return NULL when nothing was ever appended" */
    svc_buf_deinit(&b);
    svc_buf_deinit(&b); /* twice is fine */
}

static void test_deinit_zeroed(void)
{
    struct svc_buf b;

    memset(&b, 0, sizeof(b));
    svc_buf_deinit(&b);
    T_ASSERT(b.data == NULL);
}

static void test_append_and_nul(void)
{
    struct svc_buf b;

    svc_buf_init(&b, 1000);
    T_EQ_INT(svc_buf_append(&b, "abc", 3), SVC_OK);
    check_invariants(&b);
    T_EQ_STR(b.data, "abc");
    T_EQ_INT(svc_buf_append_str(&b, "def"), SVC_OK);
    T_EQ_STR(b.data, "abcdef");
    T_EQ_INT(b.len, 6);
    /* embedded NULs are data, len counts them */
    T_EQ_INT(svc_buf_append(&b, "x\0y", 3), SVC_OK);
    T_EQ_INT(b.len, 9);
    T_ASSERT(memcmp(b.data, "abcdefx\0y", 10) == 0);
    check_invariants(&b);
    svc_buf_deinit(&b);
    check_invariants(&b);
}

static void test_append_empty(void)
{
    struct svc_buf b;

    svc_buf_init(&b, 10);
    T_EQ_INT(svc_buf_append(&b, "", 0), SVC_OK);
    T_EQ_INT(b.len, 0);
    check_invariants(&b);
    if (b.data != NULL)
        T_EQ_STR(b.data, "");
    T_EQ_INT(svc_buf_append_str(&b, ""), SVC_OK);
    T_EQ_INT(b.len, 0);
    svc_buf_deinit(&b);
}

static void test_growth_keeps_content(void)
{
    struct svc_buf b;
    char chunk[37];

    svc_buf_init(&b, 1u << 20);
    for (int i = 0; i < 2000; i++) {
        snprintf(chunk, sizeof(chunk), "%05d", i);
        T_EQ_INT(svc_buf_append(&b, chunk, 5), SVC_OK);
        check_invariants(&b);
    }
    T_EQ_INT(b.len, 10000);
    for (int i = 0; i < 2000; i++) {
        snprintf(chunk, sizeof(chunk), "%05d", i);
        T_ASSERT(memcmp(b.data + 5 * i, chunk, 5) == 0);
    }
    svc_buf_deinit(&b);
}

static void test_max_exact_fits(void)
{
    struct svc_buf b;

    svc_buf_init(&b, 10);
    T_EQ_INT(svc_buf_append(&b, "0123456789", 10), SVC_OK);
    T_EQ_INT(b.len, 10);
    T_EQ_STR(b.data, "0123456789");
    T_ASSERT(b.cap <= 11); /* never allocates beyond max + NUL */
    check_invariants(&b);
    svc_buf_deinit(&b);
}

static void test_max_toolarge_unchanged(void)
{
    struct svc_buf b;
    char *before;
    size_t cap;

    svc_buf_init(&b, 10);
    /* too large from empty: nothing allocated */
    T_EQ_INT(svc_buf_append(&b, "0123456789A", 11), SVC_ETOOLARGE);
    T_ASSERT(b.data == NULL);
    T_EQ_INT(b.len, 0);

    T_EQ_INT(svc_buf_append(&b, "0123456", 7), SVC_OK);
    before = b.data;
    cap = b.cap;
    T_EQ_INT(svc_buf_append(&b, "abcd", 4), SVC_ETOOLARGE);
    T_ASSERT(b.data == before);
    T_EQ_INT(b.cap, cap);
    T_EQ_INT(b.len, 7);
    T_EQ_STR(b.data, "0123456");
    T_EQ_INT(svc_buf_append_str(&b, "abcd"), SVC_ETOOLARGE);
    T_EQ_STR(b.data, "0123456");
    /* what still fits is accepted */
    T_EQ_INT(svc_buf_append(&b, "abc", 3), SVC_OK);
    T_EQ_STR(b.data, "0123456abc");
    T_EQ_INT(svc_buf_append(&b, "x", 1), SVC_ETOOLARGE);
    T_EQ_INT(svc_buf_append(&b, "", 0), SVC_OK); /* zero bytes always fit */
    check_invariants(&b);
    svc_buf_deinit(&b);
}

static void test_max_huge_len_no_wrap(void)
{
    struct svc_buf b;

    svc_buf_init(&b, 100);
    T_EQ_INT(svc_buf_append(&b, "abc", 3), SVC_OK);
    /* lengths that would wrap len + extra + 1 must be refused, not allocated */
    T_EQ_INT(svc_buf_append(&b, "x", SIZE_MAX), SVC_ETOOLARGE);
    T_EQ_INT(svc_buf_append(&b, "x", SIZE_MAX - 2), SVC_ETOOLARGE);
    T_EQ_INT(svc_buf_append(&b, "x", SIZE_MAX - 3), SVC_ETOOLARGE);
    T_EQ_STR(b.data, "abc");
    svc_buf_deinit(&b);
}

static void test_max_zero(void)
{
    struct svc_buf b;

    svc_buf_init(&b, 0);
    T_EQ_INT(svc_buf_append(&b, "a", 1), SVC_ETOOLARGE);
    T_EQ_INT(svc_buf_appendf(&b, "%d", 1), SVC_ETOOLARGE);
    T_EQ_INT(b.len, 0);
    check_invariants(&b);
    svc_buf_deinit(&b);
}

static void test_appendf(void)
{
    struct svc_buf b;

    svc_buf_init(&b, 64);
    T_EQ_INT(svc_buf_appendf(&b, "%s=%d", "n", 42), SVC_OK);
    T_EQ_STR(b.data, "n=42");
    T_EQ_INT(svc_buf_appendf(&b, " %05.1f|%x", 3.14159, 255u), SVC_OK);
    T_EQ_STR(b.data, "n=42 003.1|ff");
    T_EQ_INT(b.len, strlen("n=42 003.1|ff"));
    T_EQ_INT(svc_buf_appendf(&b, "%s", ""), SVC_OK);
    T_EQ_INT(b.len, strlen("n=42 003.1|ff"));
    check_invariants(&b);
    svc_buf_deinit(&b);
}

static void test_appendf_max(void)
{
    struct svc_buf b;
    char *before;

    svc_buf_init(&b, 8);
    T_EQ_INT(svc_buf_appendf(&b, "%s", "12345"), SVC_OK);
    before = b.data;
    /* would end at 9 > 8: refused, unchanged (no partial, truncated text) */
    T_EQ_INT(svc_buf_appendf(&b, "%d", 6789), SVC_ETOOLARGE);
    T_ASSERT(b.data == before);
    T_EQ_INT(b.len, 5);
    T_EQ_STR(b.data, "12345");
    /* exactly up to max */
    T_EQ_INT(svc_buf_appendf(&b, "%d", 678), SVC_OK);
    T_EQ_STR(b.data, "12345678");
    T_EQ_INT(svc_buf_appendf(&b, "%c", 'x'), SVC_ETOOLARGE);
    T_EQ_STR(b.data, "12345678");
    check_invariants(&b);
    svc_buf_deinit(&b);
}

static void test_appendf_large(void)
{
    struct svc_buf b;

    svc_buf_init(&b, 100000);
    T_EQ_INT(svc_buf_appendf(&b, "%5000d|%s", 7, "end"), SVC_OK);
    T_EQ_INT(b.len, 5004);
    T_EQ_INT(b.data[4999], '7');
    T_EQ_STR(b.data + 5000, "|end");
    check_invariants(&b);
    svc_buf_deinit(&b);
}

static void test_reset_keeps_storage(void)
{
    struct svc_buf b;
    char *p;

    svc_buf_init(&b, 100);
    svc_buf_reset(&b); /* on an unallocated buffer */
    T_ASSERT(b.data == NULL);
    T_EQ_INT(svc_buf_append_str(&b, "hello"), SVC_OK);
    p = b.data;
    svc_buf_reset(&b);
    T_EQ_INT(b.len, 0);
    T_ASSERT(b.data == p);
    T_EQ_STR(b.data, "");
    T_EQ_INT(svc_buf_append_str(&b, "x"), SVC_OK);
    T_EQ_STR(b.data, "x");
    check_invariants(&b);
    svc_buf_deinit(&b);
}

static void test_consume(void)
{
    struct svc_buf b;

    svc_buf_init(&b, 100);
    svc_buf_consume(&b, 0); /* empty, unallocated */
    svc_buf_consume(&b, 5);
    T_EQ_INT(b.len, 0);
    T_EQ_INT(svc_buf_append_str(&b, "abcdef"), SVC_OK);
    svc_buf_consume(&b, 0);
    T_EQ_STR(b.data, "abcdef");
    svc_buf_consume(&b, 2);
    T_EQ_STR(b.data, "cdef");
    T_EQ_INT(b.len, 4);
    check_invariants(&b);
    svc_buf_consume(&b, 3);
    T_EQ_STR(b.data, "f");
    svc_buf_consume(&b, 1); /* n == len */
    T_EQ_INT(b.len, 0);
    T_EQ_STR(b.data, "");
    T_EQ_INT(svc_buf_append_str(&b, "xyz"), SVC_OK);
    svc_buf_consume(&b, 99); /* n > len: empties, no underflow */
    T_EQ_INT(b.len, 0);
    T_EQ_STR(b.data, "");
    check_invariants(&b);
    svc_buf_deinit(&b);
}

static void test_consume_frees_room_under_max(void)
{
    struct svc_buf b;

    svc_buf_init(&b, 6);
    T_EQ_INT(svc_buf_append_str(&b, "abcdef"), SVC_OK);
    T_EQ_INT(svc_buf_append_str(&b, "g"), SVC_ETOOLARGE);
    svc_buf_consume(&b, 3);
    T_EQ_INT(svc_buf_append_str(&b, "ghi"), SVC_OK);
    T_EQ_STR(b.data, "defghi");
    check_invariants(&b);
    svc_buf_deinit(&b);
}

static void test_take(void)
{
    struct svc_buf b;
    char *s;

    svc_buf_init(&b, 50);
    T_EQ_INT(svc_buf_appendf(&b, "id=%d", 7), SVC_OK);
    s = svc_buf_take(&b);
    T_ASSERT(s != NULL);
    T_EQ_STR(s, "id=7");
    T_ASSERT(b.data == NULL);
    T_EQ_INT(b.len, 0);
    T_EQ_INT(b.cap, 0);
    T_EQ_INT(b.max, 50); /* the limit survives: the buffer is reusable */
    free(s);
    T_EQ_INT(svc_buf_append_str(&b, "again"), SVC_OK);
    T_EQ_STR(b.data, "again");
    T_EQ_INT(svc_buf_append(&b, "x", 46), SVC_ETOOLARGE);
    s = svc_buf_take(&b);
    T_EQ_STR(s, "again");
    free(s);
    T_ASSERT(svc_buf_take(&b) == NULL);
    svc_buf_deinit(&b);
}

static void test_take_after_reset(void)
{
    struct svc_buf b;
    char *s;

    svc_buf_init(&b, 50);
    T_EQ_INT(svc_buf_append_str(&b, "abc"), SVC_OK);
    svc_buf_reset(&b);
    s = svc_buf_take(&b);
    T_ASSERT(s != NULL);
    T_EQ_STR(s, ""); /* storage is handed over, still a valid C string */
    free(s);
    svc_buf_deinit(&b);
}

static void test_enomem_unchanged(void)
{
    struct svc_buf b;
    char big[200];

    memset(big, 'z', sizeof(big));
    svc_buf_init(&b, 10000);

    /* first allocation fails */
    realloc_fail_in = 0;
    T_EQ_INT(svc_buf_append_str(&b, "abc"), SVC_ENOMEM);
    T_ASSERT(b.data == NULL);
    T_EQ_INT(b.len, 0);
    T_EQ_INT(svc_buf_append_str(&b, "abc"), SVC_OK);

    /* growth fails: old content intact */
    realloc_fail_in = 0;
    T_EQ_INT(svc_buf_append(&b, big, sizeof(big)), SVC_ENOMEM);
    T_EQ_INT(b.len, 3);
    T_EQ_STR(b.data, "abc");
    check_invariants(&b);

    realloc_fail_in = 0;
    T_EQ_INT(svc_buf_appendf(&b, "%0500d", 1), SVC_ENOMEM);
    T_EQ_STR(b.data, "abc");
    check_invariants(&b);

    /* and it recovers */
    T_EQ_INT(svc_buf_append(&b, big, sizeof(big)), SVC_OK);
    T_EQ_INT(b.len, 203);
    check_invariants(&b);
    svc_buf_deinit(&b);
}

static void test_no_realloc_within_capacity(void)
{
    struct svc_buf b;
    int calls;

    svc_buf_init(&b, 1000);
    T_EQ_INT(svc_buf_append_str(&b, "a"), SVC_OK);
    calls = realloc_calls;
    /* the first allocation is at least BUF_MIN_ALLOC (64): small appends reuse it */
    for (int i = 0; i < 10; i++)
        T_EQ_INT(svc_buf_append_str(&b, "b"), SVC_OK);
    T_EQ_INT(realloc_calls, calls);
    svc_buf_deinit(&b);
}

/*
 * KNOWN BUG (common/buf.c buf_reserve): with max == SIZE_MAX, `b->max + 1` wraps to 0, so the
 * capacity is clamped to 0: realloc(NULL, 0) gives a zero-sized block (the first append writes past
 * it) and the next growth calls realloc(p, 0), which frees p and returns NULL (SVC_ENOMEM with a
 * dangling b->data; deinit then frees it twice).
 */
static void test_bug_max_size_max(void)
{
    struct svc_buf b;

    svc_buf_init(&b, SIZE_MAX);
    T_EQ_INT(svc_buf_append_str(&b, "x"), SVC_OK);
    T_EQ_INT(svc_buf_append_str(&b, "y"), SVC_OK);
    T_EQ_STR(b.data, "xy");
    svc_buf_deinit(&b);
}

int main(void)
{
    T_RUN(test_init_allocates_nothing);
    T_RUN(test_deinit_zeroed);
    T_RUN(test_append_and_nul);
    T_RUN(test_append_empty);
    T_RUN(test_growth_keeps_content);
    T_RUN(test_max_exact_fits);
    T_RUN(test_max_toolarge_unchanged);
    T_RUN(test_max_huge_len_no_wrap);
    T_RUN(test_max_zero);
    T_RUN(test_appendf);
    T_RUN(test_appendf_max);
    T_RUN(test_appendf_large);
    T_RUN(test_reset_keeps_storage);
    T_RUN(test_consume);
    T_RUN(test_consume_frees_room_under_max);
    T_RUN(test_take);
    T_RUN(test_take_after_reset);
    T_RUN(test_enomem_unchanged);
    T_RUN(test_no_realloc_within_capacity);
    T_RUN(test_bug_max_size_max);
    return 0;
}
