/*
 * Fuzz target for services/chat/context.h: chat_ctx_decode reads whatever is stored in Redis
 * under a context key, so it must reject anything that is not ours without crashing.
 *
 * Properties checked:
 *  - decode either fails with SVC_EINVAL (and *msg == NULL) or gives a {"role","content"} object
 *    with role user|assistant and a parent that is "" or a valid id;
 *  - what decode accepted re-encodes, and decoding that gives the same message and parent;
 *  - chat_id_valid on the input as a C string, and chat_ctx_key on an account id taken from the
 *    input's first bytes: the key always starts with the hash tag, holds exactly one '{' and one
 *    '}', and fits keylen;
 *  - when the input is valid UTF-8 without NUL bytes, encode(content = input) round-trips.
 *    (Content with NUL bytes does not round-trip: a known bug, see tests/fuzz/README.md.)
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "svc/err.h"
#include "svc/json.h"
#include "svc/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* 1 when two checked messages are equal: the same members, role and content bytes. */
static int same_message(const struct svc_json *a, const struct svc_json *b)
{
    const char *ra = svc_json_str(svc_json_member(a, "role"));
    const char *rb = svc_json_str(svc_json_member(b, "role"));
    const struct svc_json *ca = svc_json_member(a, "content"), *cb = svc_json_member(b, "content");

    return svc_json_object_len(a) == svc_json_object_len(b) && ra != NULL && rb != NULL && strcmp(ra, rb) == 0 &&
           svc_json_is_string(ca) && svc_json_is_string(cb) &&
           svc_json_strlen(ca) == svc_json_strlen(cb) &&
           memcmp(svc_json_str(ca), svc_json_str(cb), svc_json_strlen(ca)) == 0;
}

static void check_decoded(struct svc_json *msg, const char *parent)
{
    const char *role = svc_json_str(svc_json_member(msg, "role"));

    if (svc_json_object_len(msg) != 2 || role == NULL ||
        (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0) ||
        !svc_json_is_string(svc_json_member(msg, "content")))
        abort();
    if (parent[0] != '\0' && !chat_id_valid(parent))
        abort();
}

static void roundtrip(struct svc_json *msg, const char *parent)
{
    struct svc_json *content = svc_json_member(msg, "content");
    const char *role = svc_json_str(svc_json_member(msg, "role"));
    char *enc = chat_ctx_encode(role, svc_json_str(content), svc_json_strlen(content), parent);
    char par2[CHAT_ID_MAX + 1];
    struct svc_json *msg2 = NULL;

    if (enc == NULL)
        abort();
    if (chat_ctx_decode(enc, strlen(enc), &msg2, par2) != SVC_OK)
        abort();
    if (!same_message(msg, msg2) || strcmp(parent, par2) != 0)
        abort();
    svc_json_destroy(&msg2);
    free(enc);
}

static void check_key(long long user, size_t keylen)
{
    char key[CHAT_KEY_MAX];
    int opens = 0, closes = 0;
    size_t n;

    if (chat_ctx_key(key, keylen, user, "m1") != SVC_OK)
        return;
    n = strlen(key);
    if (n >= keylen || strncmp(key, "cw:ctx:{u", 9) != 0 || strcmp(key + n - 4, "}:m1") != 0)
        abort();
    for (size_t i = 0; i < n; i++) {
        opens += key[i] == '{';
        closes += key[i] == '}';
    }
    if (opens != 1 || closes != 1)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char parent[CHAT_ID_MAX + 1];
    struct svc_json *msg = (struct svc_json *)1;
    char *str;
    int rc;

    rc = chat_ctx_decode((const char *)data, size, &msg, parent);
    if (rc == SVC_OK) {
        check_decoded(msg, parent);
        roundtrip(msg, parent);
        svc_json_destroy(&msg);
    } else if (rc != SVC_EINVAL || msg != NULL) {
        abort();
    }

    /* the same bytes as a C string: an id and message content; the first 8 as an account id */
    if (size > 4096)
        return 0;
    str = malloc(size + 1);
    if (str == NULL)
        return 0;
    memcpy(str, data, size);
    str[size] = '\0';
    (void)chat_id_valid(str);
    {
        long long user = 0;
        memcpy(&user, data, size < sizeof(user) ? size : sizeof(user));
        check_key(user, CHAT_KEY_MAX);
        check_key(user, size % CHAT_KEY_MAX);
    }
    if (memchr(data, '\0', size) == NULL && svc_util_utf8_valid(str, size)) {
        char *enc = chat_ctx_encode(size % 2 ? "user" : "assistant", str, size, "");
        struct svc_json *m = NULL;
        if (enc == NULL || chat_ctx_decode(enc, strlen(enc), &m, parent) != SVC_OK ||
            svc_json_strlen(svc_json_member(m, "content")) != size ||
            memcmp(svc_json_str(svc_json_member(m, "content")), str, size) != 0 ||
            parent[0] != '\0')
            abort();
        svc_json_destroy(&m);
        free(enc);
    }
    free(str);
    return 0;
}
