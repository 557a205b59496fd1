/* fu_reply: the deterministic fake model and the test knobs. See fu_reply.h. */
#include "fu_reply.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fu_config.h"

/* Filler after the echo; token k > 0 of the filler is " <word>". */
static const char *const filler[] = {
    " lorem",  " ipsum", " dolor",  " sit",     " amet",   " consectetur", " adipiscing",
    " elit",   " sed",   " do",     " eiusmod", " tempor", " incididunt",  " ut",
    " labore", " et",    " dolore", " magna",   " aliqua",
};
#define N_FILLER (sizeof(filler) / sizeof(filler[0]))

/* Bounds on a directive, so a pathological prompt cannot make parsing expensive. */
#define FU_DIRECTIVE_MAX_LEN 512

static bool is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

void fu_knobs_defaults(struct fu_knobs *k)
{
    k->tps = fu_cfg.tokens_per_sec;
    k->ttft_ms = (int64_t)fu_cfg.ttft_ms;
    k->tokens = (int64_t)fu_cfg.reply_tokens;
    k->error = 0;
    k->cut = -1;
    k->stall = -1;
}

static bool key_is(const char *key, size_t len, const char *name)
{
    return strlen(name) == len && memcmp(key, name, len) == 0;
}

/* Parse v[0..n) as a number in [lo, hi]; integers only unless `real`. */
static int parse_knob_num(const char *v, size_t n, double lo, double hi, bool real, double *out)
{
    char tmp[32];
    if (n == 0 || n >= sizeof(tmp))
        return FU_EINVAL;
    memcpy(tmp, v, n);
    tmp[n] = '\0';
    char *end = NULL;
    errno = 0;
    double x = strtod(tmp, &end);
    if (end == tmp || *end != '\0' || errno != 0 || !isfinite(x) || x < lo || x > hi)
        return FU_EINVAL;
    if (!real && x != floor(x))
        return FU_EINVAL;
    *out = x;
    return FU_OK;
}

int fu_knobs_set(struct fu_knobs *k, const char *key, size_t key_len, const char *val,
                 size_t val_len, char *err, size_t err_len)
{
    double x = 0;
    int rc = FU_EINVAL;
    const char *want = "";
    if (key_is(key, key_len, "tps")) {
        want = "a number of tokens per second in [0, 1000000]";
        rc = parse_knob_num(val, val_len, 0, 1e6, true, &x);
        if (rc == FU_OK)
            k->tps = x;
    } else if (key_is(key, key_len, "ttft")) {
        want = "an integer number of ms in [0, 3600000]";
        rc = parse_knob_num(val, val_len, 0, FU_KNOB_MAX_TTFT_MS, false, &x);
        if (rc == FU_OK)
            k->ttft_ms = (int64_t)x;
    } else if (key_is(key, key_len, "tokens")) {
        want = "an integer in [0, 1000000]";
        rc = parse_knob_num(val, val_len, 0, FU_KNOB_MAX_TOKENS, false, &x);
        if (rc == FU_OK)
            k->tokens = (int64_t)x;
    } else if (key_is(key, key_len, "error")) {
        want = "0 (none) or an HTTP status in [400, 599]";
        rc = parse_knob_num(val, val_len, 0, 599, false, &x);
        if (rc == FU_OK && x != 0 && x < 400)
            rc = FU_EINVAL;
        if (rc == FU_OK)
            k->error = (int)x;
    } else if (key_is(key, key_len, "cut")) {
        want = "an integer number of chunks in [0, 1000000]";
        rc = parse_knob_num(val, val_len, 0, FU_KNOB_MAX_TOKENS, false, &x);
        if (rc == FU_OK)
            k->cut = (int64_t)x;
    } else if (key_is(key, key_len, "stall")) {
        want = "an integer number of chunks in [0, 1000000]";
        rc = parse_knob_num(val, val_len, 0, FU_KNOB_MAX_TOKENS, false, &x);
        if (rc == FU_OK)
            k->stall = (int64_t)x;
    } else {
        snprintf(err, err_len,
                 "unknown fake knob '%.*s' (known: tps, ttft, tokens, error, cut, stall)",
                 (int)(key_len > 64 ? 64 : key_len), key);
        return FU_EINVAL;
    }
    if (rc != FU_OK)
        snprintf(err, err_len, "invalid fake knob %.*s='%.*s': expected %s", (int)key_len, key,
                 (int)(val_len > 64 ? 64 : val_len), val, want);
    return rc;
}

/* Apply the inside of one directive: blank-separated key=value pairs. */
static int apply_directive(struct fu_knobs *k, const char *s, size_t n, char *err, size_t err_len)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && is_space(s[i]))
            i++;
        size_t start = i;
        while (i < n && !is_space(s[i]))
            i++;
        if (i == start)
            break;
        const char *eq = memchr(s + start, '=', i - start);
        if (eq == NULL) {
            snprintf(err, err_len, "invalid fake directive item '%.*s': expected key=value",
                     (int)(i - start > 64 ? 64 : i - start), s + start);
            return FU_EINVAL;
        }
        size_t klen = (size_t)(eq - (s + start));
        int rc = fu_knobs_set(k, s + start, klen, eq + 1, i - start - klen - 1, err, err_len);
        if (rc != FU_OK)
            return rc;
    }
    return FU_OK;
}

int fu_knobs_from_text(struct fu_knobs *k, const char *text, size_t len, struct fu_buf *clean,
                       char *err, size_t err_len)
{
    static const char open[] = "[[fake";
    const size_t open_len = sizeof(open) - 1;
    size_t i = 0;
    while (i < len) {
        const char *p = len - i >= open_len ? memmem(text + i, len - i, open, open_len) : NULL;
        /* "[[fake" must be followed by a blank or the closing "]]" to count as a directive. */
        while (p) {
            size_t after = (size_t)(p - text) + open_len;
            if (after < len && (is_space(text[after]) || text[after] == ']'))
                break;
            p = after < len ? memmem(text + after, len - after, open, open_len) : NULL;
        }
        size_t copy_end = p ? (size_t)(p - text) : len;
        int rc = fu_buf_append(clean, text + i, copy_end - i);
        if (rc != FU_OK)
            return rc;
        if (p == NULL)
            break;
        size_t body = copy_end + open_len;
        const char *close = memmem(text + body, len - body, "]]", 2);
        if (close == NULL || (size_t)(close - (text + body)) > FU_DIRECTIVE_MAX_LEN) {
            snprintf(err, err_len,
                     "unterminated fake directive: '[[fake ...' needs a closing "
                     "']]' within %d bytes",
                     FU_DIRECTIVE_MAX_LEN);
            return FU_EINVAL;
        }
        rc = apply_directive(k, text + body, (size_t)(close - (text + body)), err, err_len);
        if (rc != FU_OK)
            return rc;
        i = (size_t)(close - text) + 2;
    }
    return FU_OK;
}

uint32_t fu_count_words(const char *s, size_t n)
{
    uint32_t words = 0;
    bool in_word = false;
    for (size_t i = 0; i < n; i++) {
        bool sp = is_space(s[i]);
        if (!sp && !in_word && words < UINT32_MAX)
            words++;
        in_word = !sp;
    }
    return words;
}

int fu_reply_init(struct fu_reply *r, size_t n_msgs, const char *text, size_t len, int64_t planned,
                  int64_t max_tokens)
{
    struct fu_buf b;
    fu_buf_init(&b, len + 64);
    memset(r, 0, sizeof(*r));
    int rc = fu_buf_appendf(&b, "Echo(%zu msgs):", n_msgs);
    uint32_t words = 2;
    /* Collapse every run of whitespace to one space so that words and tokens line up. */
    for (size_t i = 0; rc == FU_OK && i < len;) {
        while (i < len && is_space(text[i]))
            i++;
        size_t start = i;
        while (i < len && !is_space(text[i]))
            i++;
        if (i > start) {
            rc = fu_buf_append(&b, " ", 1);
            if (rc == FU_OK)
                rc = fu_buf_append(&b, text + start, i - start);
            words++;
        }
    }
    if (rc != FU_OK) {
        fu_buf_deinit(&b);
        return rc;
    }
    r->echo = fu_buf_take(&b, &r->echo_len);
    r->echo_words = words;
    if (planned < 0)
        planned = 0;
    if (max_tokens >= 0 && max_tokens < planned) {
        r->n_tokens = (uint32_t)max_tokens;
        r->length_cut = true;
    } else {
        r->n_tokens = (uint32_t)planned;
    }
    return FU_OK;
}

void fu_reply_deinit(struct fu_reply *r)
{
    free(r->echo);
    memset(r, 0, sizeof(*r));
}

bool fu_reply_next(const struct fu_reply *r, struct fu_reply_iter *it, const char **tok,
                   size_t *tok_len)
{
    if (it->k >= r->n_tokens)
        return false;
    if (it->k < r->echo_words) {
        /* Echo tokens are slices of the echo: "Echo(2", " msgs):", " hello", ... */
        size_t start = it->pos;
        size_t end = start + (it->k > 0 ? 1 : 0);
        while (end < r->echo_len && r->echo[end] != ' ')
            end++;
        *tok = r->echo + start;
        *tok_len = end - start;
        it->pos = end;
    } else {
        const char *w = filler[(it->k - r->echo_words) % N_FILLER];
        *tok = w;
        *tok_len = strlen(w);
    }
    it->k++;
    return true;
}

int fu_reply_render(const struct fu_reply *r, struct fu_buf *out)
{
    struct fu_reply_iter it = {0, 0};
    const char *tok;
    size_t n;
    while (fu_reply_next(r, &it, &tok, &n)) {
        int rc = fu_buf_append(out, tok, n);
        if (rc != FU_OK)
            return rc;
    }
    return FU_OK;
}
