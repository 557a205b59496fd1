/*
 * Model name -> encoding, context window and request shape (svc/modelmap.h, docs/tokens.md).
 *
 * The map is one array of entries, the built-in table followed by the operator's MODEL_WINDOWS
 * overrides; a lookup takes the longest prefix of the name found in it, an override winning over
 * a built-in entry with the same prefix. The arrays are small (about 50 entries), so a linear
 * scan per lookup costs well under a microsecond and needs no index.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/cfg.h"
#include "svc/modelmap.h"
#include "svc/tokenizer.h"

#define MM_MAX_OVERRIDES 256      /* entries in MODEL_WINDOWS */
#define MM_MAX_PREFIX 200         /* bytes of one override prefix */
#define MM_MAX_WINDOW 1000000000  /* a window beyond 1e9 tokens is a typo */
#define MM_FT "ft:"               /* fine-tuned models: "ft:<base>:<org>:<suffix>:<id>" */

struct mm_entry {
    const char *prefix;
    size_t prefix_len;
    struct svc_modelmap_info info;
    int default_encoding; /* an override with neither encoding nor built-in: the default's */
};

struct svc_modelmap {
    struct mm_entry *entries; /* built-ins first, then overrides */
    size_t n;
    size_t nbuiltin;
    struct svc_modelmap_info dflt;
    char *strings; /* the override prefixes, NUL-separated */
};

#define CL SVC_TOK_CL100K_BASE
#define O2 SVC_TOK_O200K_BASE

/* {prefix, encoding, window, reasoning}; per-message/per-name overheads are 3/1 except where
 * mm_builtin_fixups says otherwise. Windows as OpenAI documents them (prompt + completion). */
static const struct {
    const char *prefix;
    enum svc_tokenizer_encoding_e enc;
    long long window;
    int reasoning;
} mm_builtin[] = {
    /* GPT-3.5 */
    {"gpt-3.5-turbo", CL, 16385, 0},
    {"gpt-3.5-turbo-0301", CL, 4096, 0}, /* 4 tokens per message, -1 per name */
    {"gpt-3.5-turbo-0613", CL, 4096, 0},
    {"gpt-3.5-turbo-16k", CL, 16385, 0},
    {"gpt-3.5-turbo-instruct", CL, 4096, 0},
    {"gpt-35-turbo", CL, 16385, 0}, /* Azure's spelling */
    {"gpt-35-turbo-0301", CL, 4096, 0},
    {"gpt-35-turbo-0613", CL, 4096, 0},
    {"gpt-35-turbo-16k", CL, 16385, 0},
    {"gpt-35-turbo-instruct", CL, 4096, 0},
    /* GPT-4 and GPT-4 Turbo */
    {"gpt-4", CL, 8192, 0},
    {"gpt-4-32k", CL, 32768, 0},
    {"gpt-4-turbo", CL, 128000, 0},
    {"gpt-4-1106", CL, 128000, 0},
    {"gpt-4-0125", CL, 128000, 0},
    {"gpt-4-vision", CL, 128000, 0},
    /* GPT-4o, GPT-4.1, GPT-4.5 */
    {"gpt-4o", O2, 128000, 0},
    {"chatgpt-4o", O2, 128000, 0},
    {"gpt-4.1", O2, 1047576, 0},
    {"gpt-4.5", O2, 128000, 0},
    /* GPT-5: the family takes max_completion_tokens and rejects sampling options; the chat
     * variant's window is 128k */
    {"gpt-5", O2, 400000, 1},
    {"gpt-5-chat", O2, 128000, 1},
    /* o-series reasoning models */
    {"o1", O2, 200000, 1},
    {"o1-mini", O2, 128000, 1},
    {"o1-preview", O2, 128000, 1},
    {"o3", O2, 200000, 1},
    {"o4-mini", O2, 200000, 1},
    {"codex-mini", O2, 200000, 1},
    /* open-weight models (o200k_harmony: o200k_base's ordinary tokens) */
    {"gpt-oss", O2, 131072, 0},
    /* embeddings and base models */
    {"text-embedding-3-small", CL, 8191, 0},
    {"text-embedding-3-large", CL, 8191, 0},
    {"text-embedding-ada-002", CL, 8191, 0},
    {"davinci-002", CL, 16384, 0},
    {"babbage-002", CL, 16384, 0},
};

#undef CL
#undef O2

/* The default for names nothing matches: GPT-4's 8192 tokens in cl100k_base, the smallest window
 * of a current chat model, so an unknown model is never given more room than it may have. */
static const struct svc_modelmap_info mm_default = {
    .encoding = SVC_TOK_CL100K_BASE,
    .context_window = 8192,
    .reasoning = 0,
    .tokens_per_message = 3,
    .tokens_per_name = 1,
    .known = 0,
};

static void mm_fill_builtin(struct mm_entry *e, size_t i)
{
    e->prefix = mm_builtin[i].prefix;
    e->prefix_len = strlen(e->prefix);
    e->info.encoding = mm_builtin[i].enc;
    e->info.context_window = mm_builtin[i].window;
    e->info.reasoning = mm_builtin[i].reasoning;
    e->info.known = 1;
    /* The cookbook's rule: gpt-3.5-turbo-0301 wrote every message as
     * <|start|>{role/name}\n{content}<|end|>\n, so 4 per message and the name replaces the
     * role; every later model costs 3 per message and 1 per name. */
    if (strstr(e->prefix, "-0301") != NULL) {
        e->info.tokens_per_message = 4;
        e->info.tokens_per_name = -1;
    } else {
        e->info.tokens_per_message = 3;
        e->info.tokens_per_name = 1;
    }
}

/* The longest entry whose prefix starts name (among entries [0, n)), or NULL; later entries win
 * over earlier ones of the same length, so an override beats the built-in it repeats. */
static const struct mm_entry *mm_match(const struct mm_entry *entries, size_t n, const char *name,
                                       size_t namelen)
{
    const struct mm_entry *best = NULL;

    for (size_t i = 0; i < n; i++) {
        const struct mm_entry *e = &entries[i];
        if (e->prefix_len <= namelen && memcmp(name, e->prefix, e->prefix_len) == 0 &&
            (best == NULL || e->prefix_len >= best->prefix_len))
            best = e;
    }
    return best;
}

/* Both the name as given and, for "ft:<base>...", the base model; the longer prefix wins (an
 * override written for a fine-tuned name beats its base model's entry). */
static const struct mm_entry *mm_find(const struct mm_entry *entries, size_t n, const char *name)
{
    size_t len = strlen(name), ftl = strlen(MM_FT);
    const struct mm_entry *a = mm_match(entries, n, name, len), *b = NULL;

    if (len > ftl && memcmp(name, MM_FT, ftl) == 0)
        b = mm_match(entries, n, name + ftl, len - ftl);
    if (b != NULL && (a == NULL || b->prefix_len > a->prefix_len))
        return b;
    return a;
}

static int mm_fail(char *err, size_t errlen, const char *entry, size_t entrylen, const char *why)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "MODEL_WINDOWS entry \"%.*s\": %s", (int)(entrylen > 80 ? 80 : entrylen),
                 entry, why);
    return SVC_EINVAL;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t';
}

/*
 * Parses the overrides into m->entries[m->n ...] (room was made for them), their prefixes copied
 * into m->strings. Grammar: entries separated by ',', each "<prefix>=<window>[:<encoding>]" with
 * optional blanks around the entry; "*" as the prefix sets the default.
 */
static int mm_parse(struct svc_modelmap *m, const char *text, char *err, size_t errlen)
{
    const char *p = text;
    char *out = m->strings;
    size_t count = 0;

    for (;;) {
        const char *end = strchr(p, ','), *eq, *colon, *a = p, *z;
        char num[24], encname[32];
        size_t plen, nlen, elen;
        int64_t window;
        enum svc_tokenizer_encoding_e enc = SVC_TOK_CL100K_BASE;
        int has_enc = 0;
        struct svc_modelmap_info info;

        if (end == NULL)
            end = p + strlen(p);
        while (a < end && is_space(*a))
            a++;
        z = end;
        while (z > a && is_space(z[-1]))
            z--;
        if (a == z)
            return mm_fail(err, errlen, p, (size_t)(end - p), "empty entry (stray comma?)");
        if (++count > MM_MAX_OVERRIDES)
            return mm_fail(err, errlen, a, (size_t)(z - a), "more than 256 entries");
        eq = memchr(a, '=', (size_t)(z - a));
        if (eq == NULL)
            return mm_fail(err, errlen, a, (size_t)(z - a),
                           "expected <prefix>=<window>[:<encoding>]");
        plen = (size_t)(eq - a);
        if (plen == 0)
            return mm_fail(err, errlen, a, (size_t)(z - a), "empty model prefix");
        if (plen > MM_MAX_PREFIX)
            return mm_fail(err, errlen, a, (size_t)(z - a), "model prefix longer than 200 bytes");
        for (const char *c = a; c < eq; c++)
            if ((unsigned char)*c <= ' ' || *c == 0x7f)
                return mm_fail(err, errlen, a, (size_t)(z - a),
                               "model prefix contains a blank or control character");
        colon = memchr(eq + 1, ':', (size_t)(z - eq - 1));
        nlen = (size_t)((colon != NULL ? colon : z) - (eq + 1));
        if (nlen == 0 || nlen >= sizeof(num))
            return mm_fail(err, errlen, a, (size_t)(z - a),
                           "window is not a whole number from 1 to 1000000000");
        memcpy(num, eq + 1, nlen);
        num[nlen] = '\0';
        /* svc_cfg_parse_int takes a leading blank or '+': only digits are a window here */
        for (size_t i = 0; i < nlen; i++)
            if (num[i] < '0' || num[i] > '9')
                return mm_fail(err, errlen, a, (size_t)(z - a),
                               "window is not a whole number from 1 to 1000000000");
        if (svc_cfg_parse_int(num, 1, MM_MAX_WINDOW, &window) != SVC_OK)
            return mm_fail(err, errlen, a, (size_t)(z - a),
                           "window is not a whole number from 1 to 1000000000");
        if (colon != NULL) {
            elen = (size_t)(z - colon - 1);
            if (elen == 0 || elen >= sizeof(encname))
                return mm_fail(err, errlen, a, (size_t)(z - a),
                               "unknown encoding (cl100k_base or o200k_base)");
            memcpy(encname, colon + 1, elen);
            encname[elen] = '\0';
            if (svc_tokenizer_encoding_from_name(encname, &enc) != SVC_OK)
                return mm_fail(err, errlen, a, (size_t)(z - a),
                               "unknown encoding (cl100k_base or o200k_base)");
            has_enc = 1;
        }

        if (plen == 1 && a[0] == '*') {
            /* a later "*" wins whole: without an encoding it is cl100k_base again, not the
             * encoding an earlier "*" named */
            m->dflt.context_window = window;
            m->dflt.encoding = has_enc ? enc : mm_default.encoding;
        } else {
            const struct mm_entry *shadow;
            struct mm_entry *e = &m->entries[m->n];

            memcpy(out, a, plen);
            out[plen] = '\0';
            for (size_t i = m->nbuiltin; i < m->n; i++)
                if (m->entries[i].prefix_len == plen && memcmp(m->entries[i].prefix, out, plen) == 0)
                    return mm_fail(err, errlen, a, (size_t)(z - a), "the prefix is given twice");
            /* the entry this one shadows among the built-ins gives what the override leaves out:
             * the encoding (when not given) and the request shape */
            shadow = mm_find(m->entries, m->nbuiltin, out);
            info = shadow != NULL ? shadow->info : mm_default;
            info.context_window = window;
            if (has_enc)
                info.encoding = enc;
            info.known = 1;
            e->prefix = out;
            e->prefix_len = plen;
            e->info = info;
            e->default_encoding = shadow == NULL && !has_enc;
            m->n++;
            out += plen + 1;
        }
        if (*end == '\0')
            break;
        p = end + 1;
    }
    /* "*" may come after the entries that take its encoding */
    for (size_t i = m->nbuiltin; i < m->n; i++)
        if (m->entries[i].default_encoding)
            m->entries[i].info.encoding = m->dflt.encoding;
    return SVC_OK;
}

int svc_modelmap_create(struct svc_modelmap **out, const char *overrides, char *err,
                        size_t errlen)
{
    struct svc_modelmap *m = NULL;
    size_t nb = sizeof(mm_builtin) / sizeof(mm_builtin[0]), no = 0, slen = 0;
    int rc;

    *out = NULL;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (overrides != NULL && overrides[0] != '\0') {
        slen = strlen(overrides) + 1;
        no = 1;
        for (const char *c = overrides; *c != '\0'; c++)
            no += *c == ',';
        if (no > MM_MAX_OVERRIDES + 1)
            no = MM_MAX_OVERRIDES + 1; /* mm_parse stops at the 257th entry */
    }
    m = calloc(1, sizeof(*m));
    if (m == NULL)
        return SVC_ENOMEM;
    m->entries = calloc(nb + no, sizeof(*m->entries));
    m->strings = malloc(slen > 0 ? slen : 1);
    if (m->entries == NULL || m->strings == NULL) {
        rc = SVC_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < nb; i++)
        mm_fill_builtin(&m->entries[i], i);
    m->n = m->nbuiltin = nb;
    m->dflt = mm_default;
    rc = no > 0 ? mm_parse(m, overrides, err, errlen) : SVC_OK;
out:
    if (rc != SVC_OK) {
        svc_modelmap_destroy(&m);
        return rc;
    }
    *out = m;
    return SVC_OK;
}

void svc_modelmap_destroy(struct svc_modelmap **m)
{
    if (m == NULL || *m == NULL)
        return;
    free((*m)->entries);
    free((*m)->strings);
    free(*m);
    *m = NULL;
}

void svc_modelmap_lookup(const struct svc_modelmap *m, const char *model,
                         struct svc_modelmap_info *out)
{
    const struct mm_entry *e = NULL;

    if (model != NULL && model[0] != '\0')
        e = mm_find(m->entries, m->n, model);
    *out = e != NULL ? e->info : m->dflt;
}

static long long mm_count(const struct svc_tokenizer *tk, const char *text, size_t len)
{
    return text != NULL ? svc_tokenizer_count(tk, text, len) : 0;
}

long long svc_modelmap_message_tokens(const struct svc_modelmap_info *mi, const char *role,
                                      const char *content, size_t content_len, const char *name)
{
    const struct svc_tokenizer *tk = svc_tokenizer_get(mi->encoding);
    long long total = mi->tokens_per_message, n;

    if (tk == NULL)
        return SVC_ENOMEM;
    if ((n = mm_count(tk, role, role != NULL ? strlen(role) : 0)) < 0)
        return n;
    total += n;
    if ((n = mm_count(tk, content, content_len)) < 0)
        return n;
    total += n;
    if (name != NULL) {
        if ((n = mm_count(tk, name, strlen(name))) < 0)
            return n;
        total += n + mi->tokens_per_name;
    }
    return total;
}

long long svc_modelmap_reply_priming(const struct svc_modelmap_info *mi)
{
    (void)mi; /* the same 3 tokens for every chat model OpenAI documents */
    return 3;
}
