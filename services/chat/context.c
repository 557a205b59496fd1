#include "context.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CTX_MAX_STORED (1u << 20) /* a stored message larger than this is not ours */

int chat_id_valid(const char *id)
{
    size_t n = 0;

    for (; id[n] != '\0'; n++) {
        char c = id[n];
        if (n >= CHAT_ID_MAX || !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                                  (c >= '0' && c <= '9') || c == '-' || c == '_'))
            return 0;
    }
    return n > 0;
}

int chat_ctx_key(char *key, size_t keylen, long long user_id, const char *id)
{
    int n = snprintf(key, keylen, "cw:ctx:{u%lld}:%s", user_id, id);

    if (n < 0 || (size_t)n >= keylen)
        return SVC_ETOOLARGE;
    return SVC_OK;
}

char *chat_ctx_encode(const char *role, const char *content, size_t content_len,
                      const char *parent)
{
    struct svc_json *j = svc_json_pack("{s:s, s:s%, s:s}", "role", role, "content", content,
                                       content_len, "parent", parent);
    char *out;

    if (j == NULL)
        return NULL;
    out = svc_json_dump(j, 0);
    svc_json_destroy(&j);
    return out;
}

int chat_ctx_decode(const char *text, size_t len, struct svc_json **msg,
                    char parent[CHAT_ID_MAX + 1])
{
    struct svc_json *j;
    const char *role = NULL, *content = NULL, *par = NULL;
    size_t clen = 0;

    *msg = NULL;
    if (len > CTX_MAX_STORED)
        return SVC_EINVAL;
    j = svc_json_parse(text, len, SVC_JSON_STRICT | SVC_JSON_ALLOW_NUL, NULL, 0);
    if (j == NULL)
        return SVC_EINVAL;
    if (svc_json_unpack(j, "{s:s, s:s%, s:s}", "role", &role, "content", &content, &clen, "parent",
                        &par) != 0 ||
        (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0) ||
        (par[0] != '\0' && !chat_id_valid(par))) {
        svc_json_destroy(&j);
        return SVC_EINVAL;
    }
    *msg = svc_json_pack("{s:s, s:s%}", "role", role, "content", content, clen);
    snprintf(parent, CHAT_ID_MAX + 1, "%s", par);
    svc_json_destroy(&j);
    return *msg != NULL ? SVC_OK : SVC_ENOMEM;
}
