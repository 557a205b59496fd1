/*
 * Unit tests of svc/json.h: parsing (strict duplicate keys refused with a reason, NUL only with
 * SVC_JSON_ALLOW_NUL, invalid UTF-8 refused, NULL and empty buffers, the length honoured, the
 * error's line and column), dumping (compact, SVC_JSON_SHORT_REALS), pack/unpack, accessors and
 * iteration on values of the wrong type (NULL / 0, no iterations), and set/append taking the
 * caller's reference also when they fail (the ASan build proves nothing leaks).
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/err.h"
#include "svc/buf.h"
#include "svc/json.h"
#include "test.h"

static struct svc_json *parse(const char *text, int flags)
{
    return svc_json_parse(text, strlen(text), flags, NULL, 0);
}

/* The compact text of j as a string the test owns (freed by the caller). */
static char *dump(const struct svc_json *j, int flags)
{
    char *s = svc_json_dump(j, flags);

    T_ASSERT(s != NULL);
    return s;
}

static void test_parse_object(void)
{
    struct svc_json *j = parse("{\"a\": 1, \"b\": \"x\", \"c\": [true, null, 2.5]}", 0);
    struct svc_json *c;

    T_ASSERT(svc_json_is_object(j));
    T_EQ_INT(svc_json_int(svc_json_member(j, "a")), 1);
    T_EQ_STR(svc_json_str(svc_json_member(j, "b")), "x");
    c = svc_json_member(j, "c");
    T_ASSERT(svc_json_is_array(c));
    T_EQ_INT(svc_json_array_len(c), 3);
    T_ASSERT(svc_json_is_true(svc_json_array_at(c, 0)));
    T_ASSERT(svc_json_is_null(svc_json_array_at(c, 1)));
    T_ASSERT(svc_json_number(svc_json_array_at(c, 2)) == 2.5);
    T_ASSERT(svc_json_member(j, "missing") == NULL);
    svc_json_destroy(&j);
    T_ASSERT(j == NULL);
}

static void test_parse_strict_duplicates(void)
{
    const char *text = "{\"count\": 1, \"count\": 1000}";
    char err[160];
    struct svc_json *j;

    memset(err, 0, sizeof(err));
    j = svc_json_parse(text, strlen(text), SVC_JSON_STRICT, err, sizeof(err));
    T_ASSERT(j == NULL);
    T_EQ_STR(err, "duplicate object key near '\"count\"'");
    /* without the flag the last one wins (jansson's rule) */
    j = parse(text, 0);
    T_EQ_INT(svc_json_int(svc_json_member(j, "count")), 1000);
    svc_json_destroy(&j);
    /* the same key in two objects is no duplicate */
    j = parse("{\"a\": {\"k\": 1}, \"b\": {\"k\": 2}}", SVC_JSON_STRICT);
    T_ASSERT(j != NULL);
    svc_json_destroy(&j);
}

static void test_parse_allow_nul(void)
{
    const char *text = "{\"s\": \"a\\u0000b\"}";
    char err[160] = "";
    struct svc_json *j, *s;

    j = svc_json_parse(text, strlen(text), 0, err, sizeof(err));
    T_ASSERT(j == NULL);
    T_ASSERT(strstr(err, "\\u0000 is not allowed") != NULL);
    j = svc_json_parse(text, strlen(text), SVC_JSON_ALLOW_NUL | SVC_JSON_STRICT, err, sizeof(err));
    T_ASSERT(j != NULL);
    s = svc_json_member(j, "s");
    T_EQ_INT(svc_json_strlen(s), 3);
    T_ASSERT(memcmp(svc_json_str(s), "a\0b", 4) == 0); /* and NUL-terminated */
    svc_json_destroy(&j);
}

static void test_parse_invalid_utf8(void)
{
    static const char *const bad[] = {
        "[\"\xff\"]",         /* never valid */
        "[\"\xc3\"]",         /* truncated sequence */
        "[\"\xc0\xaf\"]",     /* overlong '/' */
        "[\"\xed\xa0\x80\"]", /* a UTF-16 surrogate */
        "{\"\xfe\": 1}",      /* in a key */
    };
    char err[160];
    struct svc_json *j;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        T_ASSERT(svc_json_parse(bad[i], strlen(bad[i]), 0, err, sizeof(err)) == NULL);
        T_ASSERT(err[0] != '\0');
    }
    j = parse("[\"\xc3\xa9\"]", 0); /* and valid UTF-8 is kept as is */
    T_EQ_STR(svc_json_str(svc_json_array_at(j, 0)), "\xc3\xa9");
    svc_json_destroy(&j);
}

static void test_parse_null_and_empty(void)
{
    char err[160];
    int line = 0, column = 0;
    struct svc_json *j;

    err[0] = '\0';
    T_ASSERT(svc_json_parse(NULL, 0, 0, err, sizeof(err)) == NULL);
    T_ASSERT(err[0] != '\0');
    err[0] = '\0';
    T_ASSERT(svc_json_parse(NULL, 10, 0, err, sizeof(err)) == NULL); /* len ignored: no bytes */
    T_ASSERT(err[0] != '\0');
    err[0] = '\0';
    T_ASSERT(svc_json_parse("", 0, SVC_JSON_STRICT, err, sizeof(err)) == NULL);
    T_ASSERT(err[0] != '\0');
    T_ASSERT(svc_json_parse("   ", 3, 0, NULL, 0) == NULL); /* no error buffer: fine */
    /* errlen 0: nothing is written */
    err[0] = 'x';
    T_ASSERT(svc_json_parse("{", 1, 0, err, 0) == NULL);
    T_EQ_INT(err[0], 'x');
    /* a small buffer gets a truncated, terminated reason */
    T_ASSERT(svc_json_parse("{", 1, 0, err, 4) == NULL);
    T_EQ_INT(strlen(err), 3);
    /* only an object or an array at the top */
    T_ASSERT(svc_json_parse("1", 1, 0, err, sizeof(err)) == NULL);
    T_EQ_STR(err, "'[' or '{' expected near '1'");
    /* len is honoured: the bytes after it are not read */
    j = svc_json_parse("[1]garbage", 3, 0, NULL, 0);
    T_EQ_INT(svc_json_array_len(j), 1);
    svc_json_destroy(&j);
    T_ASSERT(svc_json_parse("[1]garbage", 10, 0, NULL, 0) == NULL);
    /* where the error is; left alone on success */
    T_ASSERT(svc_json_parse_at("[1,\n 2,,]", 9, 0, err, sizeof(err), &line, &column) == NULL);
    T_EQ_INT(line, 2);
    T_EQ_INT(column, 4);
    line = column = 7;
    j = svc_json_parse_at("[1]", 3, 0, NULL, 0, &line, &column);
    T_ASSERT(j != NULL);
    T_EQ_INT(line, 7);
    T_EQ_INT(column, 7);
    svc_json_destroy(&j);
    T_ASSERT(svc_json_parse_at("{", 1, 0, NULL, 0, NULL, NULL) == NULL);
}

static void test_dump_compact(void)
{
    struct svc_json *j = parse("{ \"b\" : [ 1 , 2 ] ,\n \"a\" : \"x\\\"y\\u00e9\\u0000\" }",
                               SVC_JSON_ALLOW_NUL);
    struct svc_json *s;
    char *text;

    text = dump(j, 0);
    /* no spaces, no newline, insertion order, UTF-8 as is, NUL escaped */
    T_EQ_STR(text, "{\"b\":[1,2],\"a\":\"x\\\"y\xc3\xa9\\u0000\"}");
    free(text);
    svc_json_destroy(&j);
    /* only an object or an array is dumped; NULL gives NULL */
    s = svc_json_string("x");
    T_ASSERT(svc_json_dump(s, 0) == NULL);
    svc_json_destroy(&s);
    T_ASSERT(svc_json_dump(NULL, 0) == NULL);
    j = svc_json_array();
    text = dump(j, SVC_JSON_SHORT_REALS);
    T_EQ_STR(text, "[]");
    free(text);
    svc_json_destroy(&j);
}

static void test_dump_short_reals(void)
{
    struct svc_json *j = svc_json_pack("{s:f, s:f, s:I}", "t", 0.7, "p", 1.0 / 3, "n", 5LL);
    char *text;

    T_ASSERT(j != NULL);
    text = dump(j, 0);
    T_EQ_STR(text, "{\"t\":0.69999999999999996,\"p\":0.33333333333333331,\"n\":5}");
    free(text);
    text = dump(j, SVC_JSON_SHORT_REALS);
    T_EQ_STR(text, "{\"t\":0.7,\"p\":0.333333,\"n\":5}");
    free(text);
    svc_json_destroy(&j);
}

static void test_pack_unpack(void)
{
    struct svc_json *inner = svc_json_pack("[i, i]", 1, 2);
    struct svc_json *j, *got = NULL;
    const char *s = NULL, *bytes = NULL;
    long long big = 0;
    int b = -1, opt = 42;
    size_t blen = 0;
    double f = 0;

    T_ASSERT(inner != NULL);
    j = svc_json_pack("{s:s, s:I, s:b, s:n, s:f, s:s%, s:O, s:o}", "s", "text", "big",
                      (long long)9007199254740993LL, "b", 1, "nothing", "f", 0.5, "bytes",
                      "ab\0cd", (size_t)5, "copy", inner, "own", inner);
    T_ASSERT(j != NULL);
    /* "O" added a reference, "o" took ours: inner lives on in j only */
    T_EQ_INT(svc_json_unpack(j, "{s:s, s:I, s:b, s:n, s:f, s:s%, s:o, s?i}", "s", &s, "big", &big,
                             "b", &b, "nothing", "f", &f, "bytes", &bytes, &blen, "copy", &got,
                             "absent", &opt),
             SVC_OK);
    T_EQ_STR(s, "text");
    T_EQ_INT(big, 9007199254740993LL);
    T_EQ_INT(b, 1);
    T_ASSERT(f == 0.5);
    T_EQ_INT(blen, 5);
    T_ASSERT(memcmp(bytes, "ab\0cd", 5) == 0);
    T_ASSERT(got == svc_json_member(j, "own")); /* the same value, borrowed */
    T_EQ_INT(opt, 42);                          /* an optional key that is absent: untouched */
    /* the wrong shape: a missing key, a wrong type, not an object, NULL */
    T_EQ_INT(svc_json_unpack(j, "{s:s}", "absent", &s), SVC_EINVAL);
    T_EQ_INT(svc_json_unpack(j, "{s:i}", "s", &b), SVC_EINVAL);
    T_EQ_INT(svc_json_unpack(svc_json_member(j, "copy"), "{s:i}", "a", &b), SVC_EINVAL);
    T_EQ_INT(svc_json_unpack(NULL, "{s:i}", "a", &b), SVC_EINVAL);
    svc_json_destroy(&j);
    /* bad formats and arguments give NULL */
    T_ASSERT(svc_json_pack("{s:s}", "k", (const char *)NULL) == NULL);
    T_ASSERT(svc_json_pack("{s:q}", "k", 1) == NULL);
    T_ASSERT(svc_json_pack("[i", 1) == NULL);
    /* "o" takes the reference also when packing fails (ASan: no leak) */
    T_ASSERT(svc_json_pack("{s:o, s:s}", "a", svc_json_object(), "b", (const char *)NULL) == NULL);
    /* a string with a NUL is accepted with "s%" and dumps escaped */
    j = svc_json_pack("[s%]", "x\0y", (size_t)3);
    s = svc_json_dump(j, 0);
    T_EQ_STR(s, "[\"x\\u0000y\"]");
    free((char *)s);
    svc_json_destroy(&j);
}

static void test_accessors_wrong_types(void)
{
    struct svc_json *j = parse("{\"s\": \"x\", \"i\": 7, \"r\": 1.5, \"a\": [1], \"t\": true, "
                               "\"f\": false, \"n\": null}",
                               0);
    struct svc_json *s = svc_json_member(j, "s"), *i = svc_json_member(j, "i");
    struct svc_json *r = svc_json_member(j, "r"), *a = svc_json_member(j, "a");
    struct svc_json *t = svc_json_member(j, "t"), *f = svc_json_member(j, "f");
    struct svc_json *n = svc_json_member(j, "n");

    T_ASSERT(j != NULL);
    /* member: only of an object */
    T_ASSERT(svc_json_member(a, "s") == NULL);
    T_ASSERT(svc_json_member(s, "s") == NULL);
    T_ASSERT(svc_json_member(NULL, "s") == NULL);
    /* str / strlen: only of a string */
    T_ASSERT(svc_json_str(i) == NULL);
    T_ASSERT(svc_json_str(j) == NULL);
    T_ASSERT(svc_json_str(NULL) == NULL);
    T_EQ_INT(svc_json_strlen(i), 0);
    T_EQ_INT(svc_json_strlen(NULL), 0);
    T_EQ_INT(svc_json_strlen(s), 1);
    /* int: only of an integer (a real is not one); number: of either */
    T_EQ_INT(svc_json_int(s), 0);
    T_EQ_INT(svc_json_int(r), 0);
    T_EQ_INT(svc_json_int(t), 0);
    T_EQ_INT(svc_json_int(NULL), 0);
    T_ASSERT(svc_json_number(i) == 7.0);
    T_ASSERT(svc_json_number(r) == 1.5);
    T_ASSERT(svc_json_number(s) == 0);
    T_ASSERT(svc_json_number(NULL) == 0);
    /* arrays */
    T_EQ_INT(svc_json_array_len(j), 0);
    T_EQ_INT(svc_json_array_len(s), 0);
    T_EQ_INT(svc_json_array_len(NULL), 0);
    T_EQ_INT(svc_json_object_len(j), 7);
    T_EQ_INT(svc_json_object_len(a), 0); /* an array is not an object */
    T_EQ_INT(svc_json_object_len(NULL), 0);
    T_ASSERT(svc_json_array_at(j, 0) == NULL);
    T_ASSERT(svc_json_array_at(NULL, 0) == NULL);
    T_ASSERT(svc_json_array_at(a, 1) == NULL); /* past the end */
    T_EQ_INT(svc_json_int(svc_json_array_at(a, 0)), 1);
    /* types */
    T_ASSERT(svc_json_is_string(s) && !svc_json_is_string(i) && !svc_json_is_string(NULL));
    T_ASSERT(svc_json_is_integer(i) && !svc_json_is_integer(r));
    T_ASSERT(svc_json_is_real(r) && !svc_json_is_real(i));
    T_ASSERT(svc_json_is_number(i) && svc_json_is_number(r) && !svc_json_is_number(s));
    T_ASSERT(svc_json_is_bool(t) && svc_json_is_bool(f) && !svc_json_is_bool(n));
    T_ASSERT(svc_json_is_true(t) && !svc_json_is_true(f) && !svc_json_is_true(i));
    T_ASSERT(svc_json_is_null(n) && !svc_json_is_null(NULL) && !svc_json_is_null(f));
    T_ASSERT(svc_json_is_object(j) && !svc_json_is_object(a) && !svc_json_is_object(NULL));
    T_ASSERT(svc_json_is_array(a) && !svc_json_is_array(j) && !svc_json_is_array(NULL));
    svc_json_destroy(&j);
}

static void test_constructors(void)
{
    struct svc_json *v;

    T_ASSERT(svc_json_string("\xff") == NULL); /* not UTF-8 */
    T_ASSERT(svc_json_string(NULL) == NULL);
    T_ASSERT(svc_json_stringn("\xc3", 1) == NULL);
    v = svc_json_stringn("a\0b", 3);
    T_EQ_INT(svc_json_strlen(v), 3);
    svc_json_destroy(&v);
    v = svc_json_integer(-5);
    T_EQ_INT(svc_json_int(v), -5);
    svc_json_destroy(&v);
    v = svc_json_real(0.25);
    T_ASSERT(svc_json_is_real(v) && svc_json_number(v) == 0.25);
    svc_json_destroy(&v);
    v = svc_json_bool(7);
    T_ASSERT(svc_json_is_true(v));
    svc_json_destroy(&v);
    v = svc_json_bool(0);
    T_ASSERT(svc_json_is_bool(v) && !svc_json_is_true(v));
    svc_json_destroy(&v);
    v = svc_json_null();
    T_ASSERT(svc_json_is_null(v));
    svc_json_destroy(&v);
    /* destroy: NULL and a NULL value are fine; the pointer is NULLed */
    svc_json_destroy(NULL);
    svc_json_destroy(&v);
    T_ASSERT(v == NULL);
    T_ASSERT(svc_json_ref(NULL) == NULL);
}

static void test_set_takes_reference(void)
{
    struct svc_json *o = svc_json_object(), *a = svc_json_array(), *v;
    char *text;

    T_ASSERT(o != NULL && a != NULL);
    T_EQ_INT(svc_json_set(o, "k", svc_json_integer(1)), SVC_OK);
    T_EQ_INT(svc_json_set(o, "k", svc_json_string("again")), SVC_OK); /* replaces */
    T_EQ_STR(svc_json_str(svc_json_member(o, "k")), "again");
    /* every failure drops the value it was given (ASan: no leak) */
    T_EQ_INT(svc_json_set(a, "k", svc_json_string("lost")), SVC_EINVAL); /* not an object */
    T_EQ_INT(svc_json_set(NULL, "k", svc_json_string("lost")), SVC_EINVAL);
    T_EQ_INT(svc_json_set(o, NULL, svc_json_string("lost")), SVC_EINVAL);
    T_EQ_INT(svc_json_set(o, "\xff", svc_json_string("lost")), SVC_EINVAL); /* key not UTF-8 */
    T_EQ_INT(svc_json_set(o, "k", NULL), SVC_EINVAL);
    T_ASSERT(svc_json_member(o, "\xff") == NULL);
    /* a value kept elsewhere: ref it first */
    v = svc_json_pack("{s:i}", "x", 1);
    T_EQ_INT(svc_json_set(o, "v", svc_json_ref(v)), SVC_OK);
    svc_json_destroy(&v); /* o holds the last reference */
    text = dump(o, 0);
    T_EQ_STR(text, "{\"k\":\"again\",\"v\":{\"x\":1}}");
    free(text);
    svc_json_destroy(&o);
    svc_json_destroy(&a);
}

static void test_append_takes_reference(void)
{
    struct svc_json *a = svc_json_array(), *o = svc_json_object(), *v;
    char *text;

    T_ASSERT(a != NULL && o != NULL);
    T_EQ_INT(svc_json_append(a, svc_json_integer(1)), SVC_OK);
    T_EQ_INT(svc_json_append(a, svc_json_string("two")), SVC_OK);
    /* every failure drops the value it was given (ASan: no leak) */
    T_EQ_INT(svc_json_append(o, svc_json_string("lost")), SVC_EINVAL); /* not an array */
    T_EQ_INT(svc_json_append(NULL, svc_json_string("lost")), SVC_EINVAL);
    T_EQ_INT(svc_json_append(a, NULL), SVC_EINVAL);
    T_EQ_INT(svc_json_array_len(a), 2);
    /* the same value in two containers: one reference each */
    v = svc_json_pack("[i]", 3);
    T_EQ_INT(svc_json_append(a, svc_json_ref(v)), SVC_OK);
    T_EQ_INT(svc_json_set(o, "v", v), SVC_OK);
    svc_json_destroy(&o);
    text = dump(a, 0);
    T_EQ_STR(text, "[1,\"two\",[3]]");
    free(text);
    svc_json_destroy(&a);
}

static void test_iterate_non_containers(void)
{
    struct svc_json *j = parse("{\"b\": 1, \"a\": [10, 20], \"c\": {}}", 0);
    struct svc_json *v, *s = svc_json_string("x");
    const char *key;
    char keys[8] = "";
    void *it;
    size_t i, n = 0, nk = 0;
    long long sum = 0;

    T_ASSERT(j != NULL && s != NULL);
    /* an object in insertion order */
    SVC_JSON_OBJECT_EACH(j, it, key, v) {
        T_ASSERT(v != NULL && nk + 1 < sizeof(keys));
        keys[nk++] = key[0];
    }
    T_EQ_STR(keys, "bac");
    SVC_JSON_ARRAY_EACH(svc_json_member(j, "a"), i, v)
        sum += svc_json_int(v) * (long long)(i + 1);
    T_EQ_INT(sum, 50);
    /* no iterations over what is not the container asked for */
    SVC_JSON_ARRAY_EACH(j, i, v)
        n++;
    SVC_JSON_ARRAY_EACH(s, i, v)
        n++;
    SVC_JSON_ARRAY_EACH((struct svc_json *)NULL, i, v)
        n++;
    SVC_JSON_OBJECT_EACH(svc_json_member(j, "a"), it, key, v)
        n++;
    SVC_JSON_OBJECT_EACH(s, it, key, v)
        n++;
    SVC_JSON_OBJECT_EACH((struct svc_json *)NULL, it, key, v)
        n++;
    SVC_JSON_OBJECT_EACH(svc_json_member(j, "c"), it, key, v) /* empty */
        n++;
    T_EQ_INT(n, 0);
    T_ASSERT(svc_json_iter_next(j, NULL) == NULL);
    svc_json_destroy(&s);
    svc_json_destroy(&j);
}

/* svc_json_buf_string writes what svc_json_dump writes for the same string, byte for byte. */
static void test_buf_string_as_dump(void)
{
    static const char *const cases[] = {
        "", "plain", "quote \" and backslash \\", "\b\f\n\r\t", "\x01\x1f\x7f /slash",
        "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "\\u0041 stays as text", "\"\"",
    };
    struct svc_buf b;

    svc_buf_init(&b, 1024);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct svc_json *arr = svc_json_pack("[s]", cases[i]);
        char *dump = svc_json_dump(arr, 0);

        T_ASSERT(dump != NULL);
        svc_buf_reset(&b);
        T_EQ_INT(svc_buf_append(&b, "[", 1), SVC_OK);
        T_EQ_INT(svc_json_buf_string(&b, cases[i], strlen(cases[i])), SVC_OK);
        T_EQ_INT(svc_buf_append(&b, "]", 1), SVC_OK);
        T_EQ_STR(b.data, dump);
        free(dump);
        svc_json_destroy(&arr);
    }
    /* a NUL inside: escaped, not an end */
    svc_buf_reset(&b);
    T_EQ_INT(svc_json_buf_string(&b, "a\0b", 3), SVC_OK);
    T_EQ_STR(b.data, "\"a\\u0000b\"");
    /* invalid UTF-8, or no room: an error and the buffer as it was */
    svc_buf_reset(&b);
    T_EQ_INT(svc_buf_append(&b, "x", 1), SVC_OK);
    T_EQ_INT(svc_json_buf_string(&b, "bad \xc3(", 6), SVC_EINVAL);
    T_EQ_STR(b.data, "x");
    svc_buf_deinit(&b);
    svc_buf_init(&b, 8);
    T_EQ_INT(svc_buf_append(&b, "x", 1), SVC_OK);
    T_EQ_INT(svc_json_buf_string(&b, "\n\n\n\n", 4), SVC_ETOOLARGE);
    T_EQ_INT((int)b.len, 1);
    T_EQ_STR(b.data, "x");
    svc_buf_deinit(&b);
}

int main(void)
{
    T_RUN(test_parse_object);
    T_RUN(test_parse_strict_duplicates);
    T_RUN(test_parse_allow_nul);
    T_RUN(test_parse_invalid_utf8);
    T_RUN(test_parse_null_and_empty);
    T_RUN(test_dump_compact);
    T_RUN(test_dump_short_reals);
    T_RUN(test_pack_unpack);
    T_RUN(test_accessors_wrong_types);
    T_RUN(test_constructors);
    T_RUN(test_set_takes_reference);
    T_RUN(test_append_takes_reference);
    T_RUN(test_iterate_non_containers);
    T_RUN(test_buf_string_as_dump);
    return 0;
}
