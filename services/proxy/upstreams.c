/*
 * The proxy's upstreams (docs/proxy.md, "Upstreams"): OPENAI_BASE_URL with OPENAI_KEY, named
 * "default", plus the ones UPSTREAMS lists, each with a weight and the models it serves; a
 * request goes to one of those that serve its model, drawn by weight, and a retry before the
 * first byte goes to another one when there is one.
 *
 * Each upstream has a circuit breaker shared by the process's loops: after
 * UPSTREAM_BREAKER_FAILURES failed attempts in a row (no connection, 429, 5xx) it opens for
 * UPSTREAM_BREAKER_OPEN_MS and gets no traffic while another upstream of the model can take it;
 * then one request at a time probes it (half-open) until one succeeds (closed again) or fails
 * (open again). The state is in atomics: the loops pick and report without a lock.
 */
#include "proxy.h"

#include <ctype.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/json.h"
#include "svc/log.h"
#include "svc/loop.h"
#include "svc/util.h"

struct proxy_upstream {
    char name[PROXY_UPSTREAM_NAME_MAX + 1];
    char base[SVC_CFG_URL_MAX + 1]; /* without a trailing slash */
    char auth[1100];                /* "Authorization: Bearer <key>", or "" for none */
    int weight;
    char models[PROXY_UPSTREAM_MODELS_MAX][128]; /* none: every model; "x*": a prefix */
    size_t nmodels;
    atomic_int fails;               /* failed attempts in a row */
    atomic_llong open_until_ms;     /* 0: closed; else open until then, half-open after */
    atomic_llong probe_since_ms;    /* half-open: when the current probe started (0: none) */
};

static struct proxy_upstream ups[PROXY_UPSTREAMS_MAX];
static size_t nups;
static int default_routed; /* UPSTREAMS had its "default" entry */
static int breaker_failures;
static long long breaker_open_ms;

static int name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > PROXY_UPSTREAM_NAME_MAX)
        return 0;
    for (; *s != '\0'; s++)
        if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_' && *s != '.')
            return 0;
    return 1;
}

static int set_base(struct proxy_upstream *u, const char *url, char *err, size_t errlen)
{
    size_t n = strlen(url), host = strncmp(url, "https://", 8) == 0 ? 8 : 7;
    int ok = (strncmp(url, "http://", 7) == 0 || host == 8) && n <= SVC_CFG_URL_MAX &&
             url[host] != '\0' && strchr("/?#", url[host]) == NULL;

    /* a host after the scheme ("http://" alone lost its "//" below and was kept as "http:"),
     * and no blank or control byte (libcurl refuses them, request by request) */
    for (const char *p = url; ok && *p != '\0'; p++)
        ok = (unsigned char)*p > ' ' && *p != 0x7f;
    if (!ok) {
        snprintf(err, errlen,
                 "upstream %s: base_url must be an http(s) URL with a host, without blanks, of "
                 "at most %d bytes",
                 u->name, SVC_CFG_URL_MAX);
        return SVC_EINVAL;
    }
    while (n > 0 && url[n - 1] == '/')
        n--;
    snprintf(u->base, sizeof(u->base), "%.*s", (int)n, url);
    return SVC_OK;
}

static int set_key(struct proxy_upstream *u, const char *key, char *err, size_t errlen)
{
    if (strlen(key) > 1000 || strpbrk(key, "\r\n") != NULL) {
        snprintf(err, errlen, "upstream %s: key longer than 1000 bytes or with a line break",
                 u->name);
        return SVC_EINVAL;
    }
    if (key[0] != '\0')
        snprintf(u->auth, sizeof(u->auth), "Authorization: Bearer %s", key);
    return SVC_OK;
}

/* weight and models of one UPSTREAMS entry (also allowed on the "default" entry). */
static int set_routing(struct proxy_upstream *u, struct svc_json *e, char *err, size_t errlen)
{
    struct svc_json *w = svc_json_member(e, "weight"), *models = svc_json_member(e, "models"), *m;
    size_t i;

    if (w != NULL) {
        if (!svc_json_is_integer(w) || svc_json_int(w) < 0 || svc_json_int(w) > 1000) {
            snprintf(err, errlen, "upstream %s: weight must be an integer 0..1000", u->name);
            return SVC_EINVAL;
        }
        u->weight = (int)svc_json_int(w);
    }
    if (models == NULL)
        return SVC_OK;
    if (!svc_json_is_array(models) || svc_json_array_len(models) > PROXY_UPSTREAM_MODELS_MAX) {
        snprintf(err, errlen, "upstream %s: models must be an array of at most %d names",
                 u->name, PROXY_UPSTREAM_MODELS_MAX);
        return SVC_EINVAL;
    }
    u->nmodels = 0;
    SVC_JSON_ARRAY_EACH(models, i, m) {
        const char *s = svc_json_str(m);
        if (s == NULL || s[0] == '\0' || strlen(s) >= sizeof(u->models[0])) {
            snprintf(err, errlen, "upstream %s: models[%zu] must be a name of 1..127 bytes",
                     u->name, i);
            return SVC_EINVAL;
        }
        snprintf(u->models[u->nmodels++], sizeof(u->models[0]), "%s", s);
    }
    return SVC_OK;
}

static int parse_entry(struct svc_json *e, size_t index, char *err, size_t errlen)
{
    static const char *const fields[] = {"name", "base_url", "key", "key_env", "weight", "models"};
    const char *name = svc_json_str(svc_json_member(e, "name"));
    const char *url = svc_json_str(svc_json_member(e, "base_url"));
    const char *key = svc_json_str(svc_json_member(e, "key"));
    const char *key_env = svc_json_str(svc_json_member(e, "key_env"));
    struct proxy_upstream *u;
    const char *field;
    struct svc_json *v;
    void *it;
    int rc;

    if (!svc_json_is_object(e)) {
        snprintf(err, errlen, "entry %zu is not an object", index);
        return SVC_EINVAL;
    }
    SVC_JSON_OBJECT_EACH(e, it, field, v) {
        size_t k = 0;
        while (k < sizeof(fields) / sizeof(fields[0]) && strcmp(field, fields[k]) != 0)
            k++;
        if (k == sizeof(fields) / sizeof(fields[0])) {
            snprintf(err, errlen, "entry %zu: unknown field \"%.40s\"", index, field);
            return SVC_EINVAL;
        }
        /* the first four are texts: another type (a number, null) was read as absent, so a
         * "key": 123 left the upstream without its key */
        if (k < 4 && !svc_json_is_string(v)) {
            snprintf(err, errlen, "entry %zu: %s must be a string", index, field);
            return SVC_EINVAL;
        }
    }
    if (name == NULL || !name_ok(name)) {
        snprintf(err, errlen, "entry %zu: name must be 1..%d of [A-Za-z0-9._-]", index,
                 PROXY_UPSTREAM_NAME_MAX);
        return SVC_EINVAL;
    }
    for (size_t i = 0; i < nups; i++)
        if (strcmp(ups[i].name, name) == 0) {
            if (i != 0 || url != NULL || key != NULL || key_env != NULL || default_routed) {
                snprintf(err, errlen,
                         "entry %zu: upstream %s given twice (\"default\" takes only weight and "
                         "models: its URL and key are OPENAI_BASE_URL and OPENAI_KEY)",
                         index, name);
                return SVC_EINVAL;
            }
            default_routed = 1;
            return set_routing(&ups[0], e, err, errlen);
        }
    if (nups == PROXY_UPSTREAMS_MAX) {
        snprintf(err, errlen, "more than %d upstreams", PROXY_UPSTREAMS_MAX);
        return SVC_EINVAL;
    }
    u = &ups[nups];
    memset(u, 0, sizeof(*u));
    snprintf(u->name, sizeof(u->name), "%s", name);
    u->weight = 1;
    if (url == NULL) {
        snprintf(err, errlen, "upstream %s: base_url is required", name);
        return SVC_EINVAL;
    }
    if (key != NULL && key_env != NULL) {
        snprintf(err, errlen, "upstream %s: key and key_env are exclusive", name);
        return SVC_EINVAL;
    }
    if (key_env != NULL && (key = getenv(key_env)) == NULL) {
        snprintf(err, errlen, "upstream %s: key_env %.64s is not set", name, key_env);
        return SVC_EINVAL;
    }
    if ((rc = set_base(u, url, err, errlen)) != SVC_OK ||
        (rc = set_key(u, key != NULL ? key : "", err, errlen)) != SVC_OK ||
        (rc = set_routing(u, e, err, errlen)) != SVC_OK)
        return rc;
    nups++;
    return SVC_OK;
}

int proxy_upstreams_setup(const struct proxy_setting *s, char *err, size_t errlen)
{
    const char *spec = s->UPSTREAMS.s;
    char jerr[160];
    int line = -1, column = -1;
    struct svc_json *list, *e;
    size_t i;
    int rc = SVC_OK;

    nups = 1;
    default_routed = 0;
    memset(&ups[0], 0, sizeof(ups[0]));
    snprintf(ups[0].name, sizeof(ups[0].name), "default");
    ups[0].weight = 1;
    if ((rc = set_base(&ups[0], s->OPENAI_BASE_URL.s, err, errlen)) != SVC_OK ||
        (rc = set_key(&ups[0], s->OPENAI_KEY.s, err, errlen)) != SVC_OK)
        return rc;
    breaker_failures = (int)s->UPSTREAM_BREAKER_FAILURES.i;
    breaker_open_ms = s->UPSTREAM_BREAKER_OPEN_MS.i;
    if (spec[0] == '\0')
        return SVC_OK;
    if ((list = svc_json_parse_at(spec, strlen(spec), SVC_JSON_STRICT, jerr, sizeof(jerr), &line,
                                  &column)) == NULL) {
        snprintf(err, errlen, "not JSON: %s (line %d, column %d)", jerr, line, column);
        return SVC_EINVAL;
    }
    if (!svc_json_is_array(list)) {
        snprintf(err, errlen, "must be a JSON array of upstream objects");
        rc = SVC_EINVAL;
    }
    SVC_JSON_ARRAY_EACH(list, i, e) {
        if (rc == SVC_OK)
            rc = parse_entry(e, i, err, errlen);
    }
    svc_json_destroy(&list);
    return rc;
}

size_t proxy_upstreams_count(void)
{
    return nups;
}

const char *proxy_upstream_name(int i)
{
    return i >= 0 && (size_t)i < nups ? ups[i].name : "";
}

const char *proxy_upstream_base(int i)
{
    return ups[i >= 0 && (size_t)i < nups ? i : 0].base;
}

const char *proxy_upstream_auth(int i)
{
    return ups[i >= 0 && (size_t)i < nups ? i : 0].auth;
}

static int serves(const struct proxy_upstream *u, const char *model)
{
    if (u->nmodels == 0)
        return 1;
    for (size_t i = 0; i < u->nmodels; i++) {
        size_t n = strlen(u->models[i]);
        if (u->models[i][n - 1] == '*' ? strncmp(model, u->models[i], n - 1) == 0
                                       : strcmp(model, u->models[i]) == 0)
            return 1;
    }
    return 0;
}

/* Closed, or open past its time with no probe running (then this caller is the probe). */
static int breaker_allows(struct proxy_upstream *u, long long now)
{
    long long until = atomic_load(&u->open_until_ms), probe;

    if (until == 0 || breaker_failures == 0)
        return 1;
    if (now < until)
        return 0;
    probe = atomic_load(&u->probe_since_ms);
    /* one probe at a time; a probe that never reported (its request was cancelled) is
     * replaced after another open period */
    if (probe != 0 && now - probe < breaker_open_ms)
        return 0;
    return atomic_compare_exchange_strong(&u->probe_since_ms, &probe, now);
}

/* Index into cand[] drawn with probability weight / total. */
static size_t draw(const int *cand, long long total)
{
    long long r = (long long)(svc_util_random_u32() % (uint32_t)total);
    size_t k = 0;

    while (r >= ups[cand[k]].weight) {
        r -= ups[cand[k]].weight;
        k++;
    }
    return k;
}

int proxy_upstream_pick(const char *model, unsigned tried, int *no_model)
{
    int cand[PROXY_UPSTREAMS_MAX], swap;
    long long now = (long long)svc_loop_clock_ms(), total = 0, all_total;
    size_t n = 0, all, k;
    int served = 0;

    for (int pass = 0; pass < 2 && n == 0; pass++) {
        for (size_t i = 0; i < nups; i++) {
            if (!serves(&ups[i], model != NULL ? model : ""))
                continue;
            served = 1;
            /* first pass: upstreams not tried yet for this request; then any */
            if ((pass == 0 && (tried & (1u << i)) != 0) || ups[i].weight == 0)
                continue;
            cand[n++] = (int)i;
            total += ups[i].weight;
        }
    }
    *no_model = !served;
    if (n == 0)
        return -1;
    /* a weighted draw among the candidates whose circuit lets them have this request */
    all = n;
    all_total = total;
    while (n > 0) {
        k = draw(cand, total);
        if (breaker_allows(&ups[cand[k]], now))
            return cand[k];
        total -= ups[cand[k]].weight;
        swap = cand[k];
        cand[k] = cand[--n];
        cand[n] = swap;
    }
    /* Every circuit is open: "panic" (Envoy's word), a draw among them all. A breaker only steers
     * traffic towards upstreams that answer; with none, failing fast would only hide their
     * own answer (a 429 with its headers, a 503) behind ours. */
    return cand[draw(cand, all_total) % all];
}

void proxy_upstream_report(int i, int ok)
{
    struct proxy_upstream *u;
    int fails;

    if (i < 0 || (size_t)i >= nups || breaker_failures == 0)
        return;
    u = &ups[i];
    if (ok) {
        if (atomic_exchange(&u->open_until_ms, 0) != 0)
            SVC_LOG_NOTICE(NULL, "upstream", "%s answers again: circuit closed", u->name);
        atomic_store(&u->fails, 0);
        atomic_store(&u->probe_since_ms, 0);
        return;
    }
    fails = atomic_fetch_add(&u->fails, 1) + 1;
    if (fails >= breaker_failures) {
        long long until = (long long)svc_loop_clock_ms() + breaker_open_ms;
        if (atomic_exchange(&u->open_until_ms, until) == 0)
            SVC_LOG_WARN(NULL, "upstream", "%s failed %d times in a row: circuit open for %lld ms",
                         u->name, fails, breaker_open_ms);
        atomic_store(&u->probe_since_ms, 0);
    }
}
