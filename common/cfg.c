#include "svc/cfg.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/log.h"

int svc_cfg_parse_bool(const char *t)
{
    static const char *yes[] = {"1", "t", "T", "TRUE", "true", "True"};
    static const char *no[] = {"0", "f", "F", "FALSE", "false", "False"};

    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcmp(t, yes[i]) == 0)
            return 1;
        if (strcmp(t, no[i]) == 0)
            return 0;
    }
    return -1;
}

int svc_cfg_parse_int(const char *text, int64_t min, int64_t max, int64_t *out)
{
    char *end;
    long long v;

    /* strtoll would also skip leading blanks; Go's ParseInt (the seed) does not */
    if (text == NULL || !((text[0] >= '0' && text[0] <= '9') || text[0] == '-' || text[0] == '+'))
        return SVC_EINVAL;
    errno = 0;
    v = strtoll(text, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return SVC_EINVAL;
    *out = v;
    return SVC_OK;
}

int svc_cfg_parse_addr(const char *text, char *host, size_t hostlen, int *port)
{
    const char *colon, *h = text;
    size_t hl;
    int64_t p;

    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (close == NULL || close[1] != ':')
            return SVC_EINVAL;
        h = text + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(text, ':');
        if (colon == NULL)
            return SVC_EINVAL;
        hl = (size_t)(colon - text);
    }
    if (hl == 0 || hl >= hostlen)
        return SVC_EINVAL;
    if (svc_cfg_parse_int(colon + 1, 0, 65535, &p) != SVC_OK)
        return SVC_EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (int)p;
    return SVC_OK;
}

static int parse_one(struct svc_cfg_option *o, const char *v, char *err, size_t errlen)
{
    char host[256];
    int port;

    o->s = v;
    switch (o->type) {
    case SVC_OPT_BOOL:
        o->i = svc_cfg_parse_bool(v);
        if (o->i < 0) {
            snprintf(err, errlen, "%s: not a boolean (use true or false): \"%s\"", o->name, v);
            return SVC_EINVAL;
        }
        break;
    case SVC_OPT_INT:
        if (svc_cfg_parse_int(v, o->min, o->max, &o->i) != SVC_OK) {
            snprintf(err, errlen, "%s: not an integer in [%lld, %lld]: \"%s\"", o->name,
                     (long long)o->min, (long long)o->max, v);
            return SVC_EINVAL;
        }
        break;
    case SVC_OPT_ADDR:
        if (svc_cfg_parse_addr(v, host, sizeof(host), &port) != SVC_OK) {
            snprintf(err, errlen, "%s: not host:port: \"%s\"", o->name, v);
            return SVC_EINVAL;
        }
        break;
    case SVC_OPT_URL:
        if (strncmp(v, "http://", 7) != 0 && strncmp(v, "https://", 8) != 0) {
            snprintf(err, errlen, "%s: not an http:// or https:// URL: \"%s\"", o->name, v);
            return SVC_EINVAL;
        }
        if (strlen(v) > SVC_CFG_URL_MAX) {
            snprintf(err, errlen, "%s: longer than %d characters", o->name, SVC_CFG_URL_MAX);
            return SVC_EINVAL;
        }
        break;
    case SVC_OPT_STR:
    case SVC_OPT_SECRET:
        break;
    }
    return SVC_OK;
}

int svc_cfg_load_env(struct svc_cfg_option *opts, size_t n, char *err, size_t errlen)
{
    for (size_t k = 0; k < n; k++) {
        struct svc_cfg_option *o = &opts[k];
        const char *v = getenv(o->name);

        o->is_set = v != NULL && v[0] != '\0';
        o->i = 0;
        o->s = "";
        if (o->is_set) {
            if (parse_one(o, v, err, errlen) != SVC_OK)
                return SVC_EINVAL;
        } else if (o->def != NULL && o->def[0] != '\0') {
            if (parse_one(o, o->def, err, errlen) != SVC_OK)
                return SVC_EINVAL; /* a bad default is a bug, but still named */
        }
    }
    return SVC_OK;
}

/* Copies a value for the log with the credentials of a URL (between the scheme's slashes and
 * the '@') replaced by stars, so a password inside REDIS_URL or a proxy URL never reaches a
 * log. */
static void mask_url_credentials(const char *v, char *out, size_t outlen)
{
    const char *scheme = strstr(v, "://");
    const char *at = scheme != NULL ? strchr(scheme + 3, '@') : NULL;
    const char *slash = scheme != NULL ? strchr(scheme + 3, '/') : NULL;

    if (at == NULL || (slash != NULL && slash < at)) {
        snprintf(out, outlen, "%s", v);
        return;
    }
    snprintf(out, outlen, "%.*s***%s", (int)(scheme + 3 - v), v, at);
}

void svc_cfg_log_all(const struct svc_cfg_option *opts, size_t n)
{
    char shown[512];

    for (size_t k = 0; k < n; k++) {
        const struct svc_cfg_option *o = &opts[k];

        if (o->type == SVC_OPT_SECRET)
            snprintf(shown, sizeof(shown), "%s", o->s[0] != '\0' ? "(set)" : "(unset)");
        else
            mask_url_credentials(o->s, shown, sizeof(shown));
        SVC_LOG_INFO(NULL, "config", "%s=%s%s", o->name, shown, o->is_set ? "" : " (default)");
    }
}

void svc_cfg_describe_all(const struct svc_cfg_option *opts, size_t n)
{
    static const char *types[] = {"bool", "int", "string", "secret", "host:port", "url"};

    for (size_t k = 0; k < n; k++) {
        const struct svc_cfg_option *o = &opts[k];
        printf("%-28s %-9s default=%-16s %s\n", o->name, types[o->type],
               o->def != NULL && o->def[0] != '\0' ? o->def : "(none)", o->desc);
    }
}

int svc_cfg_list_next(const char **list, const char **item, size_t *len)
{
    const char *s = *list, *end;

    while (s != NULL && *s != '\0') {
        end = strchr(s, ',');
        if (end == NULL)
            end = s + strlen(s);
        *list = *end != '\0' ? end + 1 : end;
        while (s < end && *s == ' ')
            s++;
        *len = (size_t)(end - s);
        while (*len > 0 && s[*len - 1] == ' ')
            (*len)--;
        if (*len > 0) {
            *item = s;
            return 1;
        }
        s = *list;
    }
    return 0;
}
