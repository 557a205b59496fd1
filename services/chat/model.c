#include "model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/cfg.h"

#define MODEL_FIELDS_MAX 5

/* Splits s (copied into buf) at commas; returns the number of fields. */
static int split_fields(const char *s, char *buf, size_t buflen, char *fields[], int max)
{
    int n = 0;
    char *p;

    snprintf(buf, buflen, "%s", s);
    p = buf;
    for (;;) {
        char *comma = strchr(p, ',');
        if (n < max)
            fields[n] = p;
        n++;
        if (comma == NULL)
            break;
        *comma = '\0';
        p = comma + 1;
    }
    return n;
}

static int hundredths(const char *text, double *out)
{
    int64_t v;

    if (svc_cfg_parse_int(text, INT64_MIN / 2, INT64_MAX / 2, &v) != SVC_OK)
        return 0;
    if ((double)v / 100.0 <= -1000.0)
        return 0;
    *out = (double)v / 100.0;
    return 1;
}

void chat_model_parse(const char *setting, const char *default_model, struct chat_model_params *p)
{
    char buf[512];
    char *f[MODEL_FIELDS_MAX];
    int n;
    int64_t mt;

    memset(p, 0, sizeof(*p));
    n = split_fields(setting != NULL ? setting : "", buf, sizeof(buf), f, MODEL_FIELDS_MAX);
    snprintf(p->model, sizeof(p->model), "%s", f[0][0] != '\0' ? f[0] : default_model);
    if (n > MODEL_FIELDS_MAX)
        return;
    if (n >= 2)
        p->has_temperature = hundredths(f[1], &p->temperature);
    if (n >= 3)
        p->has_presence = hundredths(f[2], &p->presence);
    if (n >= 4)
        p->has_frequency = hundredths(f[3], &p->frequency);
    if (n >= 5 && svc_cfg_parse_int(f[4], 1, 100000000, &mt) == SVC_OK)
        p->max_tokens = (long)mt;
}

int chat_model_allowed(const char *name, const char *allowlist)
{
    size_t n = strlen(name);
    const char *p = allowlist;

    if (n == 0)
        return 0;
    while (p != NULL && *p != '\0') {
        const char *comma = strchr(p, ',');
        size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
        while (len > 0 && *p == ' ') {
            p++;
            len--;
        }
        while (len > 0 && p[len - 1] == ' ')
            len--;
        if (len == n && memcmp(p, name, n) == 0)
            return 1;
        p = comma != NULL ? comma + 1 : NULL;
    }
    return 0;
}

int chat_model_validate(const char *value, const char *allowlist, long min_budget,
                        long max_budget, char *why, size_t whylen)
{
    static const char *names[] = {"temperature", "presence", "frequency", "max_tokens"};
    const int64_t lo[] = {0, -200, -200, min_budget > 1 ? min_budget : 1};
    char buf[512];
    char *f[MODEL_FIELDS_MAX];
    int n;

    if (value[0] == '\0' || strcmp(value, "-") == 0)
        return SVC_OK;
    if (strlen(value) >= sizeof(buf)) {
        snprintf(why, whylen, "设置过长 | setting too long");
        return SVC_EINVAL;
    }
    n = split_fields(value, buf, sizeof(buf), f, MODEL_FIELDS_MAX);
    if (n > MODEL_FIELDS_MAX) {
        snprintf(why, whylen, "格式: model_name,temperature,presence,frequency,max_tokens");
        return SVC_EINVAL;
    }
    if (!chat_model_allowed(f[0], allowlist)) {
        snprintf(why, whylen, "不支持的模型 | model not allowed: %.64s (allowed: %.200s)", f[0],
                 allowlist);
        return SVC_EINVAL;
    }
    for (int i = 1; i < n; i++) {
        int64_t v, hi = i == 1 ? 200 : i < 4 ? 200 : max_budget;
        if (svc_cfg_parse_int(f[i], lo[i - 1], hi, &v) != SVC_OK) {
            snprintf(why, whylen, "%s 必须是 %lld..%lld 的整数 | %s must be an integer in "
                                  "%lld..%lld",
                     names[i - 1], (long long)lo[i - 1], (long long)hi, names[i - 1],
                     (long long)lo[i - 1], (long long)hi);
            return SVC_EINVAL;
        }
    }
    return SVC_OK;
}
