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

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "svc/err.h"
#include "svc/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_decoded(json_t *msg, const char *parent)
{
    const char *role = json_string_value(json_object_get(msg, "role"));

    if (json_object_size(msg) != 2 || role == NULL ||
        (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0) ||
        !json_is_string(json_object_get(msg, "content")))
        abort();
    if (parent[0] != '\0' && !chat_id_valid(parent))
        abort();
}

static void roundtrip(json_t *msg, const char *parent)
{
    json_t *content = json_object_get(msg, "content");
    const char *role = json_string_value(json_object_get(msg, "role"));
    char *enc =
        chat_ctx_encode(role, json_string_value(content), json_string_length(content), parent);
    char par2[CHAT_ID_MAX + 1];
    json_t *msg2 = NULL;

    if (enc == NULL)
        abort();
    if (chat_ctx_decode(enc, strlen(enc), &msg2, par2) != SVC_OK)
        abort();
    if (!json_equal(msg, msg2) || strcmp(parent, par2) != 0)
        abort();
    json_decref(msg2);
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
    json_t *msg = (json_t *)1;
    char *str;
    int rc;

    rc = chat_ctx_decode((const char *)data, size, &msg, parent);
    if (rc == SVC_OK) {
        check_decoded(msg, parent);
        roundtrip(msg, parent);
        json_decref(msg);
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
        json_t *m = NULL;
        if (enc == NULL || chat_ctx_decode(enc, strlen(enc), &m, parent) != SVC_OK ||
            json_string_length(json_object_get(m, "content")) != size ||
            memcmp(json_string_value(json_object_get(m, "content")), str, size) != 0 ||
            parent[0] != '\0')
            abort();
        json_decref(m);
        free(enc);
    }
    free(str);
    return 0;
}
