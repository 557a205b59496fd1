/* fu_config: environment-only configuration for the fake upstream. See fu_config.h. */
#include "fu_config.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "fu_buf.h"

struct fu_config fu_cfg;

struct fu_opt {
    size_t offset; /* of the field in struct fu_config: const char * for STR, double otherwise */
    const char *env;
    enum fu_opt_kind kind;
    const char *def;
    double lo;
    double hi;
    const char *desc;
};

static const struct fu_opt fu_opts[] = {
#define FU_OPT_ROW(field, env, kind, ctype, def, lo, hi, desc)                                     \
    {offsetof(struct fu_config, field), env, kind, def, lo, hi, desc},
    FU_CONFIG_TABLE(FU_OPT_ROW)
#undef FU_OPT_ROW
};

/* Parse a number for option `o`; the whole string must be consumed and within range. */
static int parse_num(const struct fu_opt *o, const char *s, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (*s == '\0' || end == s || *end != '\0' || errno != 0 || !isfinite(v))
        return FU_EINVAL;
    if (o->kind == FU_OPT_INT && v != floor(v))
        return FU_EINVAL;
    if (v < o->lo || v > o->hi)
        return FU_EINVAL;
    *out = v;
    return FU_OK;
}

/* Set one field from text, after parsing and range-checking numbers. */
static int set_field(const struct fu_opt *o, const char *text)
{
    char *field = (char *)&fu_cfg + o->offset;
    if (o->kind == FU_OPT_STR) {
        memcpy(field, &text, sizeof(text));
        return FU_OK;
    }
    double num = 0;
    if (parse_num(o, text, &num) != FU_OK)
        return FU_EINVAL;
    memcpy(field, &num, sizeof(num));
    return FU_OK;
}

int fu_config_load(const char *listen_override)
{
    size_t n = sizeof(fu_opts) / sizeof(fu_opts[0]);
    for (size_t i = 0; i < n; i++) {
        const char *env = getenv(fu_opts[i].env);
        const char *text = env ? env : fu_opts[i].def;
        if (set_field(&fu_opts[i], text) != FU_OK) {
            if (fu_opts[i].kind == FU_OPT_STR)
                fprintf(stderr, "fake-upstream: invalid %s='%s'\n", fu_opts[i].env, text);
            else
                fprintf(stderr, "fake-upstream: invalid %s='%s': expected %s in [%g, %g]\n",
                        fu_opts[i].env, text,
                        fu_opts[i].kind == FU_OPT_INT ? "an integer" : "a number", fu_opts[i].lo,
                        fu_opts[i].hi);
            return FU_EINVAL;
        }
    }
    if (listen_override)
        fu_cfg.listen = listen_override;
    if (fu_cfg.listen[0] == '\0') {
        fprintf(stderr, "fake-upstream: invalid FAKE_LISTEN: empty\n");
        return FU_EINVAL;
    }
    return FU_OK;
}

void fu_config_describe(FILE *out)
{
    size_t n = sizeof(fu_opts) / sizeof(fu_opts[0]);
    for (size_t i = 0; i < n; i++) {
        const struct fu_opt *o = &fu_opts[i];
        if (o->kind == FU_OPT_STR)
            fprintf(out, "%-22s default '%s'\n    %s\n", o->env, o->def, o->desc);
        else
            fprintf(out, "%-22s default %s, range [%g, %g]\n    %s\n", o->env, o->def, o->lo, o->hi,
                    o->desc);
    }
}

void fu_config_print(FILE *out)
{
    fprintf(out,
            "fake-upstream: config listen=%s tokens_per_sec=%g ttft_ms=%g reply_tokens=%g "
            "embedding_dims=%g threads=%g request_log='%s' api_key=%s\n",
            fu_cfg.listen, fu_cfg.tokens_per_sec, fu_cfg.ttft_ms, fu_cfg.reply_tokens,
            fu_cfg.embedding_dims, fu_cfg.threads, fu_cfg.request_log,
            fu_cfg.api_key[0] ? "(set)" : "(unset)");
}
