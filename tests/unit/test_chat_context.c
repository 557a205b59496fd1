/*
 * Unit tests of services/chat/context.h (linked from the chat_core library): message ids, Redis
 * keys (hash-tag escaping, SVC_ETOOLARGE), the stored JSON (round trip with UTF-8 and quotes,
 * rejecting values that are not ours) and the token estimate.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "svc/err.h"
#include "svc/json.h"
#include "test.h"

/* ---- chat_id_valid -------------------------------------------------------------------------- */

static void test_id_valid(void)
{
    char id[CHAT_ID_MAX + 2];

    T_EQ_INT(chat_id_valid("a"), 1);
    T_EQ_INT(chat_id_valid("chatcmpl-AbC_123"), 1);
    T_EQ_INT(chat_id_valid("0"), 1);
    T_EQ_INT(chat_id_valid("-_-"), 1);
    T_EQ_INT(chat_id_valid("3f0c2a1e-9b8d-4c7e-a6f5-0123456789ab"), 1);

    memset(id, 'x', CHAT_ID_MAX);
    id[CHAT_ID_MAX] = '\0';
    T_EQ_INT(chat_id_valid(id), 1); /* 64 is the maximum */
    id[CHAT_ID_MAX] = 'x';
    id[CHAT_ID_MAX + 1] = '\0';
    T_EQ_INT(chat_id_valid(id), 0); /* 65 is not */
}

static void test_id_invalid(void)
{
    static const char *bad[] = {"",     " ",      "a b", "a/b", "a.b",  "a:b",         "a{b",
                                "a}b",  "a%b",    "a*b", "a\n", "\t",   "caf\xc3\xa9", "a\"b",
                                "a\\b", "../etc", "a+b", "a=b", "\x7f", "id\x80"};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (chat_id_valid(bad[i]))
            T_FAIL("chat_id_valid(\"%s\") accepted", bad[i]);
}

/* ---- chat_ctx_key --------------------------------------------------------------------------- */

static void test_key_plain(void)
{
    char key[CHAT_KEY_MAX];

    T_EQ_INT(chat_ctx_key(key, sizeof(key), 1, "m1"), SVC_OK);
    T_EQ_STR(key, "cw:ctx:{u1}:m1");
    T_EQ_INT(chat_ctx_key(key, sizeof(key), 9007199254740991LL, "x"), SVC_OK);
    T_EQ_STR(key, "cw:ctx:{u9007199254740991}:x");
    /* distinct accounts never share a key, whatever their names were */
    {
        char k1[CHAT_KEY_MAX], k2[CHAT_KEY_MAX];
        T_EQ_INT(chat_ctx_key(k1, sizeof(k1), 12, "m"), SVC_OK);
        T_EQ_INT(chat_ctx_key(k2, sizeof(k2), 1, "2}:m"), SVC_OK);
        T_ASSERT(strcmp(k1, k2) != 0);
    }
}

/* Checks exact-fit and one-short buffers, and that nothing is written past keylen. */
static void check_fit(long long user, const char *id, const char *want)
{
    char key[CHAT_KEY_MAX + 16];
    size_t need = strlen(want) + 1;

    memset(key, '#', sizeof(key));
    T_EQ_INT(chat_ctx_key(key, need, user, id), SVC_OK);
    T_EQ_STR(key, want);
    T_EQ_INT(key[need], '#');
    for (size_t len = 0; len < need; len++) {
        memset(key, '#', sizeof(key));
        if (chat_ctx_key(key, len, user, id) != SVC_ETOOLARGE)
            T_FAIL("keylen %zu for \"%s\" should be SVC_ETOOLARGE", len, want);
        for (size_t k = len; k < sizeof(key); k++)
            if (key[k] != '#' && !(len > 0 && k == len - 1 && key[k] == '\0'))
                T_FAIL("keylen %zu: byte %zu written", len, k);
    }
}

static void test_key_sizes(void)
{
    check_fit(7, "m1", "cw:ctx:{u7}:m1");
    check_fit(123456, "id-1234", "cw:ctx:{u123456}:id-1234");
}

static void test_key_longest(void)
{
    char id[CHAT_ID_MAX + 1], key[CHAT_KEY_MAX];

    /* the longest id with the largest account id fits the documented maximum */
    memset(id, 'i', CHAT_ID_MAX);
    id[CHAT_ID_MAX] = '\0';
    T_EQ_INT(chat_ctx_key(key, sizeof(key), -9223372036854775807LL - 1, id), SVC_OK);
    T_EQ_INT(strlen(key), 9 + 20 + 2 + CHAT_ID_MAX);
}

/* ---- encode / decode ------------------------------------------------------------------------ */

static void roundtrip(const char *role, const char *content, size_t clen, const char *parent)
{
    char *enc = chat_ctx_encode(role, content, clen, parent);
    char par[CHAT_ID_MAX + 1];
    struct svc_json *msg = NULL;
    const char *r, *c;
    size_t n;

    T_ASSERT(enc != NULL);
    T_ASSERT(strchr(enc, '\n') == NULL); /* compact: one line */
    memset(par, '#', sizeof(par));
    T_EQ_INT(chat_ctx_decode(enc, strlen(enc), &msg, par), SVC_OK);
    T_ASSERT(msg != NULL);
    T_EQ_INT(svc_json_object_len(msg), 2); /* {"role","content"} only: ready for the upstream */
    r = svc_json_str(svc_json_member(msg, "role"));
    c = svc_json_str(svc_json_member(msg, "content"));
    n = svc_json_strlen(svc_json_member(msg, "content"));
    T_EQ_STR(r, role);
    T_EQ_INT(n, clen);
    T_ASSERT(memcmp(c, content, clen) == 0);
    T_EQ_STR(par, parent);
    svc_json_destroy(&msg);
    free(enc);
}

static void test_roundtrip(void)
{
    const char *nasty = "say \"hi\" \\ back\\slash\n\ttab \xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd "
                        "\xf0\x9f\x98\x80 </script> \x01\x1f {\"role\":\"system\"}";

    roundtrip("user", "hello", 5, "");
    roundtrip("assistant", "hello", 5, "chatcmpl-abc_123");
    roundtrip("user", nasty, strlen(nasty), "p1");
    roundtrip("assistant", "", 0, "");
    roundtrip("user", "prefix-only", 6, ""); /* content_len is honoured */
}

static void test_roundtrip_large(void)
{
    size_t n = 512 * 1024;
    char *big = malloc(n + 1);

    T_ASSERT(big != NULL);
    for (size_t i = 0; i < n; i++)
        big[i] = (char)('a' + i % 26);
    big[n] = '\0';
    roundtrip("assistant", big, n, "x");
    free(big);
}

static void test_encode_rejects(void)
{
    char *e;

    e = chat_ctx_encode("user", "\xc3\x28", 2, ""); /* invalid UTF-8 */
    T_ASSERT(e == NULL);
    e = chat_ctx_encode("user", "\xed\xa0\x80", 3, ""); /* a surrogate */
    T_ASSERT(e == NULL);
    e = chat_ctx_encode(NULL, "x", 1, "");
    T_ASSERT(e == NULL);
    e = chat_ctx_encode("user", "x", 1, NULL);
    T_ASSERT(e == NULL);
}

static int decode_str(const char *text)
{
    char par[CHAT_ID_MAX + 1];
    struct svc_json *msg = (struct svc_json *)1; /* must be reset to NULL on failure */
    int rc = chat_ctx_decode(text, strlen(text), &msg, par);

    if (rc != SVC_OK) {
        T_ASSERT(msg == NULL);
    } else {
        svc_json_destroy(&msg);
    }
    return rc;
}

static void test_decode_rejects(void)
{
    static const char *bad[] = {
        "",
        "not json",
        "null",
        "[]",
        "\"user\"",
        "{}",
        "{\"role\":\"system\",\"content\":\"x\",\"parent\":\"\"}",
        "{\"role\":\"tool\",\"content\":\"x\",\"parent\":\"\"}",
        "{\"role\":\"User\",\"content\":\"x\",\"parent\":\"\"}",
        "{\"role\":5,\"content\":\"x\",\"parent\":\"\"}",
        "{\"role\":null,\"content\":\"x\",\"parent\":\"\"}",
        "{\"content\":\"x\",\"parent\":\"\"}",
        "{\"role\":\"user\",\"parent\":\"\"}",
        "{\"role\":\"user\",\"content\":\"x\"}",
        "{\"role\":\"user\",\"content\":[\"x\"],\"parent\":\"\"}",
        "{\"role\":\"user\",\"content\":null,\"parent\":\"\"}",
        "{\"role\":\"user\",\"content\":\"x\",\"parent\":null}",
        "{\"role\":\"user\",\"content\":\"x\",\"parent\":7}",
        "{\"role\":\"user\",\"content\":\"x\",\"parent\":\"a b\"}",
        "{\"role\":\"user\",\"content\":\"x\",\"parent\":\"../k\"}",
        "{\"role\":\"user\",\"content\":\"x\",\"parent\":\"a}:b\"}",
        ("{\"role\":\"user\",\"content\":\"x\",\"parent\":\""
         "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}"), /* 65 */
        "{\"role\":\"user\",\"role\":\"assistant\",\"content\":\"x\",\"parent\":\"\"}",
        "{\"role\":\"user\",\"content\":\"x\",\"parent\":\"\"} trailing",
        "{\"role\":\"user\",\"content\":\"\xc3\x28\",\"parent\":\"\"}",
        "{\"role\":\"user\",\"content\":\"x\",\"parent\":\"\"",
        "{\"role\":\"user\",\"content\":\"\\ud800\",\"parent\":\"\"}",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (decode_str(bad[i]) != SVC_EINVAL)
            T_FAIL("decode of bad[%zu] (%s) was accepted", i, bad[i]);
}

static void test_decode_len_honoured(void)
{
    const char *text = "{\"role\":\"user\",\"content\":\"x\",\"parent\":\"p\"}GARBAGE";
    size_t len = strlen(text) - strlen("GARBAGE");
    char par[CHAT_ID_MAX + 1];
    struct svc_json *msg = NULL;

    T_EQ_INT(chat_ctx_decode(text, len, &msg, par), SVC_OK);
    T_EQ_STR(par, "p");
    svc_json_destroy(&msg);
    T_EQ_INT(chat_ctx_decode(text, len - 1, &msg, par), SVC_EINVAL);
    T_ASSERT(msg == NULL);
}

static void test_decode_parent_max(void)
{
    char text[200], par[CHAT_ID_MAX + 1];
    char id[CHAT_ID_MAX + 1];
    struct svc_json *msg = NULL;

    memset(id, 'q', CHAT_ID_MAX);
    id[CHAT_ID_MAX] = '\0';
    snprintf(text, sizeof(text), "{\"role\":\"assistant\",\"content\":\"c\",\"parent\":\"%s\"}",
             id);
    T_EQ_INT(chat_ctx_decode(text, strlen(text), &msg, par), SVC_OK);
    T_EQ_STR(par, id);
    svc_json_destroy(&msg);
}

static void test_decode_too_large(void)
{
    /* a syntactically fine value above 1 MiB is still not ours */
    size_t n = (1u << 20) + 64;
    char *text = malloc(n + 1);
    const char *head = "{\"role\":\"user\",\"parent\":\"\",\"content\":\"";
    size_t h = strlen(head);

    T_ASSERT(text != NULL);
    memcpy(text, head, h);
    memset(text + h, 'z', n - h - 2);
    memcpy(text + n - 2, "\"}", 3);
    T_EQ_INT(strlen(text), n);
    T_EQ_INT(decode_str(text), SVC_EINVAL);
    free(text);
}

/*
 * KNOWN BUG (services/chat/context.c): chat_ctx_encode takes an explicit content_len and
 * stores an embedded NUL as "\u0000", but chat_ctx_decode parses without JSON_ALLOW_NUL, so
 * jansson rejects the value it wrote itself: SVC_EINVAL ("not one of ours"). Not reachable from
 * the chat service today (its request and upstream JSON parsers also refuse \u0000).
 */
static void test_bug_nul_roundtrip(void)
{
    roundtrip("user", "a\0b", 3, "");
}

int main(void)
{
    T_RUN(test_id_valid);
    T_RUN(test_id_invalid);
    T_RUN(test_key_plain);
    T_RUN(test_key_sizes);
    T_RUN(test_key_longest);
    T_RUN(test_roundtrip);
    T_RUN(test_roundtrip_large);
    T_RUN(test_encode_rejects);
    T_RUN(test_decode_rejects);
    T_RUN(test_decode_len_honoured);
    T_RUN(test_decode_parent_max);
    T_RUN(test_decode_too_large);
    T_RUN(test_bug_nul_roundtrip);
    return 0;
}
