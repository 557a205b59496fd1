/* Per-model price ratios in exact integer milli-units (see price.h). */
#include "price.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/cfg.h"

struct billing_prices {
    size_t n;
    int has_default;
    struct billing_ratio def;
    struct billing_price_row e[];
};

/* "2.5" -> 2500: digits, optionally '.' and 1..3 digits; range [0, BILLING_PRICE_MILLI_MAX]. */
static int parse_milli(const char *s, size_t len, int64_t *out)
{
    int64_t whole = 0, frac = 0;
    size_t i = 0, nd = 0, nf = 0;

    for (; i < len && s[i] >= '0' && s[i] <= '9'; i++, nd++) {
        if (whole > BILLING_PRICE_MILLI_MAX)
            return SVC_EINVAL;
        whole = whole * 10 + (s[i] - '0');
    }
    if (i < len && s[i] == '.') {
        for (i++; i < len && s[i] >= '0' && s[i] <= '9'; i++, nf++) {
            if (nf >= 3)
                return SVC_EINVAL;
            frac = frac * 10 + (s[i] - '0');
        }
        if (nf == 0)
            return SVC_EINVAL;
    }
    if (i != len || nd == 0)
        return SVC_EINVAL;
    for (; nf < 3; nf++)
        frac *= 10;
    if (whole > BILLING_PRICE_MILLI_MAX / 1000)
        return SVC_EINVAL;
    *out = whole * 1000 + frac;
    return *out <= BILLING_PRICE_MILLI_MAX ? SVC_OK : SVC_EINVAL;
}

static int parse_entry(const char *s, size_t len, struct billing_price_row *e, char *err,
                       size_t errlen)
{
    const char *eq = memchr(s, '=', len), *colon;
    size_t mlen;

    if (eq == NULL)
        goto bad;
    mlen = (size_t)(eq - s);
    if (mlen == 0 || mlen >= sizeof(e->model))
        goto bad;
    colon = memchr(eq + 1, ':', len - mlen - 1);
    if (colon == NULL)
        goto bad;
    memcpy(e->model, s, mlen);
    e->model[mlen] = '\0';
    if (parse_milli(eq + 1, (size_t)(colon - eq - 1), &e->r.in_milli) != SVC_OK ||
        parse_milli(colon + 1, (size_t)(s + len - colon - 1), &e->r.out_milli) != SVC_OK)
        goto bad;
    return SVC_OK;
bad:
    snprintf(err, errlen,
             "BILLING_PRICES: bad entry \"%.*s\" (want model=IN:OUT, units per token with at most "
             "3 decimals, each at most %d)",
             (int)(len > 200 ? 200 : len), s, BILLING_PRICE_MILLI_MAX / 1000);
    return SVC_EINVAL;
}

int billing_prices_create(struct billing_prices **out, const char *spec, char *err, size_t errlen)
{
    struct billing_prices *p = NULL;
    size_t cap = 0;
    const char *s;
    size_t len;
    int rc = SVC_OK;

    *out = NULL;
    if (spec == NULL)
        spec = "";
    for (s = spec; *s; s++)
        cap += *s == ',';
    cap++;
    if (cap > BILLING_PRICE_ENTRIES_MAX) {
        snprintf(err, errlen, "BILLING_PRICES: more than %d entries", BILLING_PRICE_ENTRIES_MAX);
        return SVC_EINVAL;
    }
    p = calloc(1, sizeof(*p) + cap * sizeof(p->e[0]));
    if (p == NULL)
        return SVC_ENOMEM;
    p->def.in_milli = p->def.out_milli = 1000;
    for (const char *list = spec; svc_cfg_list_next(&list, &s, &len);) {
        struct billing_price_row e;

        if ((rc = parse_entry(s, len, &e, err, errlen)) != SVC_OK)
            goto out;
        if (strcmp(e.model, "*") == 0) {
            if (p->has_default)
                goto dup;
            p->has_default = 1;
            p->def = e.r;
            continue;
        }
        for (size_t i = 0; i < p->n; i++)
            if (strcmp(p->e[i].model, e.model) == 0)
                goto dup;
        p->e[p->n++] = e;
        continue;
    dup:
        snprintf(err, errlen, "BILLING_PRICES: model \"%s\" appears twice", e.model);
        rc = SVC_EINVAL;
        goto out;
    }
out:
    if (rc != SVC_OK) {
        free(p);
        return rc;
    }
    *out = p;
    return SVC_OK;
}

void billing_prices_destroy(struct billing_prices **p)
{
    if (p == NULL || *p == NULL)
        return;
    free(*p);
    *p = NULL;
}

size_t billing_prices_count(const struct billing_prices *p)
{
    return p ? p->n + (size_t)p->has_default : 0;
}

const char *billing_prices_match(const struct billing_prices *p, const char *model,
                                 struct billing_ratio *r)
{
    const struct billing_price_row *best = NULL;
    size_t bestlen = 0;

    r->in_milli = r->out_milli = 1000;
    if (p == NULL)
        return NULL;
    if (model != NULL && model[0] != '\0') {
        for (size_t i = 0; i < p->n; i++) {
            size_t len = strlen(p->e[i].model);
            if (strcmp(p->e[i].model, model) == 0) {
                *r = p->e[i].r;
                return p->e[i].model;
            }
            if (len > bestlen && strncmp(p->e[i].model, model, len) == 0 && model[len] == '-') {
                best = &p->e[i];
                bestlen = len;
            }
        }
        if (best != NULL) {
            *r = best->r;
            return best->model;
        }
    }
    *r = p->def;
    return p->has_default ? "*" : NULL;
}

struct billing_ratio billing_prices_lookup(const struct billing_prices *p, const char *model)
{
    struct billing_ratio r;

    (void)billing_prices_match(p, model, &r);
    return r;
}

int64_t billing_units_for(int64_t tokens, int64_t milli)
{
    if (tokens < 0 || tokens > BILLING_TOKENS_MAX || milli < 0 || milli > BILLING_PRICE_MILLI_MAX)
        return -1;
    /* <= 1e9 * 1e6 = 1e15: no overflow. */
    return (tokens * milli + 999) / 1000;
}

int64_t billing_tokens_within(int64_t units, int64_t milli)
{
    int64_t n;

    if (units <= 0)
        return 0;
    if (milli <= 0)
        return BILLING_TOKENS_MAX;
    if (units > BILLING_TOKENS_MAX * 1000)
        return BILLING_TOKENS_MAX;
    /* ceil(n*m/1000) <= u  <=>  n*m <= 1000*u  <=>  n <= floor(1000*u / m) */
    n = units * 1000 / milli;
    return n > BILLING_TOKENS_MAX ? BILLING_TOKENS_MAX : n;
}

int billing_price_parse(const char *s, int64_t *milli)
{
    if (s == NULL)
        return SVC_EINVAL;
    return parse_milli(s, strlen(s), milli);
}

void billing_price_format(int64_t milli, char *out, size_t outlen)
{
    int64_t whole = milli / 1000, frac = milli % 1000;
    int digits = 3;

    if (frac == 0) {
        snprintf(out, outlen, "%lld", (long long)whole);
        return;
    }
    while (frac % 10 == 0)
        frac /= 10, digits--;
    snprintf(out, outlen, "%lld.%0*lld", (long long)whole, digits, (long long)frac);
}

int billing_price_model_ok(const char *name)
{
    size_t n = name ? strlen(name) : 0;

    if (n == 1 && name[0] == '*')
        return 1;
    if (n == 0 || n >= BILLING_PRICE_MODEL_MAX || name[0] == '-' || name[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("._-:/@+", c) != NULL))
            return 0;
    }
    return 1;
}

size_t billing_prices_rows(const struct billing_prices *p, struct billing_price_row *rows,
                           size_t max)
{
    size_t k = 0;

    if (p == NULL)
        return 0;
    for (size_t i = 0; i < p->n; i++, k++)
        if (k < max)
            rows[k] = p->e[i];
    if (p->has_default) {
        if (k < max) {
            snprintf(rows[k].model, sizeof(rows[k].model), "*");
            rows[k].r = p->def;
        }
        k++;
    }
    return k;
}

int billing_prices_merge(struct billing_prices **out, const struct billing_prices *base,
                         const struct billing_price_row *rows, size_t n)
{
    size_t cap = (base ? base->n : 0) + n + 1;
    struct billing_prices *p = calloc(1, sizeof(*p) + cap * sizeof(p->e[0]));

    *out = NULL;
    if (p == NULL)
        return SVC_ENOMEM;
    p->def.in_milli = p->def.out_milli = 1000;
    if (base != NULL) {
        p->has_default = base->has_default;
        p->def = base->def;
        memcpy(p->e, base->e, base->n * sizeof(p->e[0]));
        p->n = base->n;
    }
    for (size_t j = 0; j < n; j++) {
        size_t i;

        if (strcmp(rows[j].model, "*") == 0) {
            p->has_default = 1;
            p->def = rows[j].r;
            continue;
        }
        for (i = 0; i < p->n; i++)
            if (strcmp(p->e[i].model, rows[j].model) == 0)
                break;
        p->e[i] = rows[j];
        if (i == p->n)
            p->n++;
    }
    *out = p;
    return SVC_OK;
}
