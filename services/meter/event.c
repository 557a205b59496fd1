/*
 * A single-pass reader of one upstream event's JSON (event.h). It validates the whole document
 * exactly as jansson's json_loadb with flags 0 does, and remembers, for the few members the meter
 * reads, where their last value is: strings as raw spans of data, decoded only for the one that
 * is used in the end. The reference is meter.c's jansson reading; tests/fuzz/fuzz_meter_event.c
 * compares the two.
 */

#include "meter/event.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "svc/err.h"

/* jansson_config.h's JSON_PARSER_MAX_DEPTH: each value, scalars too, is one level deeper than
 * its container, the top one is level 1, and a value deeper than this is an error */
#define DEPTH_MAX 2048

/* a number token longer than this is copied to the heap for strtod */
#define NUMBER_STACK 128

enum { JV_NONE, JV_OBJECT, JV_ARRAY, JV_STRING, JV_INTEGER, JV_OTHER };

struct jval {
    int type;
    long long i;   /* JV_INTEGER */
    const char *s; /* JV_STRING: the raw bytes between the quotes */
    size_t slen;
    int esc; /* the raw bytes hold escapes */
};

/* What a value is to the meter, so what to remember of its members. */
enum role {
    R_SKIP,
    R_ROOT,
    R_ERROR,      /* error */
    R_USAGE,      /* usage */
    R_RESP,       /* response */
    R_RESP_USAGE, /* response.usage */
    R_CHOICES,    /* choices */
    R_CHOICE0,    /* choices[0] */
    R_DELTA,      /* choices[0].delta */
    R_MESSAGE,    /* choices[0].message (a JSON answer) */
};

struct scan {
    const char *p, *end;
    struct jval error, error_msg;
    struct jval usage, u_in, u_out, u_prompt, u_compl;
    struct jval resp, ru, ru_in, ru_out;
    struct jval choices, choice0, delta, delta_content, text, finish;
    struct jval message, message_content; /* a JSON answer's choices[0].message.content */
    struct jval type, tdelta, output_text;
};

static int parse_value(struct scan *s, int depth, enum role role, struct jval *out);

static void skip_ws(struct scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int hex4(const char *p, const char *end)
{
    int v = 0;

    if (end - p < 4)
        return -1;
    for (int k = 0; k < 4; k++) {
        int c = (unsigned char)p[k], d;

        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* One UTF-8 character at p (its first byte >= 0x80): its length, or 0 when invalid (jansson's
 * utf8_check_first / utf8_check_full: no overlong form, no surrogate, nothing above U+10FFFF). */
static size_t utf8_char(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t n;
    unsigned long v;

    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        v = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        v = c & 0x07;
    } else {
        return 0;
    }
    if ((size_t)(end - p) < n)
        return 0;
    for (size_t k = 1; k < n; k++) {
        if ((p[k] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (p[k] & 0x3F);
    }
    if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF) || (n == 3 && v < 0x800) ||
        (n == 4 && v < 0x10000))
        return 0;
    return n;
}

/* The bytes a string holds as they are (plain ASCII): not a control byte, '"' (0x22), '\\'
 * (0x5C) or above 0x7F. One look-up per byte in lex_string's common case instead of five tests. */
static const unsigned char plain_byte[256] = {
    [0x20 ... 0x21] = 1,
    [0x23 ... 0x5B] = 1,
    [0x5D ... 0x7F] = 1,
};

/* A string token at s->p (on its '"'): its raw span into out. 0, or -1 when jansson rejects it
 * (a control byte, a bad escape, a lone or unpaired surrogate, "\u0000", invalid UTF-8). */
static int lex_string(struct scan *s, struct jval *out)
{
    const char *p = s->p + 1, *end = s->end;
    int esc = 0;

    out->s = p;
    for (;;) {
        unsigned char c;

        /* the common case: plain ASCII */
        while (p < end && plain_byte[(unsigned char)*p])
            p++;
        if (p >= end)
            return -1;
        c = (unsigned char)*p;
        if (c == '"')
            break;
        if (c < 0x20)
            return -1;
        if (c == '\\') {
            esc = 1;
            if (++p >= end)
                return -1;
            switch (*p) {
            case '"':
            case '\\':
            case '/':
            case 'b':
            case 'f':
            case 'n':
            case 'r':
            case 't':
                p++;
                break;
            case 'u': {
                int v = hex4(p + 1, end), v2;

                if (v <= 0) /* invalid, or "\u0000" (no JSON_ALLOW_NUL) */
                    return -1;
                p += 5;
                if (v >= 0xDC00 && v <= 0xDFFF)
                    return -1;
                if (v >= 0xD800 && v <= 0xDBFF) {
                    if (end - p < 2 || p[0] != '\\' || p[1] != 'u')
                        return -1;
                    v2 = hex4(p + 2, end);
                    if (v2 < 0xDC00 || v2 > 0xDFFF)
                        return -1;
                    p += 6;
                }
                break;
            }
            default:
                return -1;
            }
        } else {
            size_t n = utf8_char((const unsigned char *)p, (const unsigned char *)end);

            if (n == 0)
                return -1;
            p += n;
        }
    }
    out->type = JV_STRING;
    out->slen = (size_t)(p - out->s);
    out->esc = esc;
    s->p = p + 1;
    return 0;
}

static size_t utf8_put(char *o, unsigned long v)
{
    if (v < 0x80) {
        o[0] = (char)v;
        return 1;
    }
    if (v < 0x800) {
        o[0] = (char)(0xC0 | (v >> 6));
        o[1] = (char)(0x80 | (v & 0x3F));
        return 2;
    }
    if (v < 0x10000) {
        o[0] = (char)(0xE0 | (v >> 12));
        o[1] = (char)(0x80 | ((v >> 6) & 0x3F));
        o[2] = (char)(0x80 | (v & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (v >> 18));
    o[1] = (char)(0x80 | ((v >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((v >> 6) & 0x3F));
    o[3] = (char)(0x80 | (v & 0x3F));
    return 4;
}

/* The byte a one-letter escape lex_string accepted stands for. */
static char unescape(char c)
{
    switch (c) {
    case 'b':
        return '\b';
    case 'f':
        return '\f';
    case 'n':
        return '\n';
    case 'r':
        return '\r';
    case 't':
        return '\t';
    default:
        return c; /* " \ / */
    }
}

/* Decodes a string lex_string accepted into o (room for v->slen bytes: decoding never grows):
 * its length. At most max bytes are written; the full decoded length is returned. */
static size_t decode(const struct jval *v, char *o, size_t max)
{
    const char *p = v->s, *end = v->s + v->slen;
    size_t n = 0;

    while (p < end) {
        char tmp[4];
        size_t k;

        if (*p != '\\') {
            if (n < max)
                o[n] = *p;
            n++;
            p++;
            continue;
        }
        p++;
        if (*p == 'u') {
            unsigned long c = (unsigned long)hex4(p + 1, end);

            p += 5;
            if (c >= 0xD800 && c <= 0xDBFF) { /* lex_string checked the low half follows */
                c = ((c - 0xD800) << 10) + ((unsigned long)hex4(p + 2, end) - 0xDC00) + 0x10000;
                p += 6;
            }
            k = utf8_put(tmp, c);
        } else {
            tmp[0] = unescape(*p++);
            k = 1;
        }
        for (size_t i = 0; i < k; i++, n++)
            if (n < max)
                o[n] = tmp[i];
    }
    return n;
}

/* 1 when the string v, decoded, is name[0..nl). */
static inline int str_is_n(const struct jval *v, const char *name, size_t nl)
{
    char buf[32];

    if (!v->esc)
        return v->slen == nl && memcmp(v->s, name, nl) == 0;
    if (nl > sizeof(buf))
        return 0;
    return decode(v, buf, sizeof(buf)) == nl && memcmp(buf, name, nl) == 0;
}

/* str_is(v, "name"): the length of a literal is known, so most keys are told apart by their
 * length alone (a strlen per test was a third of the scan of an event). */
#define str_is(v, lit) str_is_n((v), "" lit, sizeof(lit) - 1)

/* A number token (JSON's grammar, as jansson lexes it): an integer must fit a long long, a real
 * must not overflow strtod. */
static int lex_number(struct scan *s, struct jval *out)
{
    const char *start = s->p, *p = s->p, *end = s->end;
    int neg = 0;

    if (*p == '-') {
        neg = 1;
        p++;
    }
    if (p >= end)
        return -1;
    if (*p == '0') {
        p++;
        if (p < end && *p >= '0' && *p <= '9')
            return -1;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    } else {
        return -1;
    }
    if (p >= end || (*p != '.' && *p != 'e' && *p != 'E')) {
        /* an integer: strtoll's range, as jansson's json_strtoint */
        unsigned long long v = 0, lim = neg ? 9223372036854775808ULL : 9223372036854775807ULL;

        for (const char *q = start + neg; q < p; q++) {
            unsigned d = (unsigned)(*q - '0');

            if (v > (lim - d) / 10)
                return -1; /* "too big integer" */
            v = v * 10 + d;
        }
        out->type = JV_INTEGER;
        out->i = neg ? (v == 9223372036854775808ULL ? (-9223372036854775807LL - 1) : -(long long)v)
                     : (long long)v;
        s->p = p;
        return 0;
    }
    if (*p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9')
            return -1;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || *p < '0' || *p > '9')
            return -1;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    {
        /* a real: only its overflow matters (jansson's jsonp_strtod); strtod needs a NUL */
        size_t n = (size_t)(p - start);
        char stack[NUMBER_STACK], *b = n < sizeof(stack) ? stack : malloc(n + 1);
        double d;
        int over;

        if (b == NULL)
            return -1;
        memcpy(b, start, n);
        b[n] = '\0';
        errno = 0;
        d = strtod(b, NULL);
        over = (d == HUGE_VAL || d == -HUGE_VAL) && errno == ERANGE;
        if (b != stack)
            free(b);
        if (over)
            return -1;
    }
    out->type = JV_OTHER;
    s->p = p;
    return 0;
}

/* Where the member key of an object of role role goes: its role, and the slot that keeps its
 * value (NULL: not kept). A member seen again replaces all that an earlier one left (the last
 * one wins, as in jansson), so the slots below it are cleared here. */
static enum role member(struct scan *s, enum role role, const struct jval *key, struct jval **slot)
{
    static const struct jval none;

    *slot = NULL;
    switch (role) {
    case R_ROOT:
        if (str_is(key, "error")) {
            s->error_msg = none;
            *slot = &s->error;
            return R_ERROR;
        }
        if (str_is(key, "usage")) {
            s->u_in = s->u_out = s->u_prompt = s->u_compl = none;
            *slot = &s->usage;
            return R_USAGE;
        }
        if (str_is(key, "response")) {
            s->ru = s->ru_in = s->ru_out = none;
            *slot = &s->resp;
            return R_RESP;
        }
        if (str_is(key, "choices")) {
            s->choice0 = s->delta = s->delta_content = s->text = s->finish = none;
            s->message = s->message_content = none;
            *slot = &s->choices;
            return R_CHOICES;
        }
        if (str_is(key, "type"))
            *slot = &s->type;
        else if (str_is(key, "delta"))
            *slot = &s->tdelta;
        else if (str_is(key, "output_text"))
            *slot = &s->output_text;
        return R_SKIP;
    case R_ERROR:
        if (str_is(key, "message"))
            *slot = &s->error_msg;
        return R_SKIP;
    case R_USAGE:
        if (str_is(key, "input_tokens"))
            *slot = &s->u_in;
        else if (str_is(key, "output_tokens"))
            *slot = &s->u_out;
        else if (str_is(key, "prompt_tokens"))
            *slot = &s->u_prompt;
        else if (str_is(key, "completion_tokens"))
            *slot = &s->u_compl;
        return R_SKIP;
    case R_RESP:
        if (str_is(key, "usage")) {
            s->ru_in = s->ru_out = none;
            *slot = &s->ru;
            return R_RESP_USAGE;
        }
        return R_SKIP;
    case R_RESP_USAGE:
        if (str_is(key, "input_tokens"))
            *slot = &s->ru_in;
        else if (str_is(key, "output_tokens"))
            *slot = &s->ru_out;
        return R_SKIP;
    case R_CHOICE0:
        if (str_is(key, "delta")) {
            s->delta_content = none;
            *slot = &s->delta;
            return R_DELTA;
        }
        if (str_is(key, "message")) {
            s->message_content = none;
            *slot = &s->message;
            return R_MESSAGE;
        }
        if (str_is(key, "text"))
            *slot = &s->text;
        else if (str_is(key, "finish_reason"))
            *slot = &s->finish;
        return R_SKIP;
    case R_DELTA:
        if (str_is(key, "content"))
            *slot = &s->delta_content;
        return R_SKIP;
    case R_MESSAGE:
        if (str_is(key, "content"))
            *slot = &s->message_content;
        return R_SKIP;
    default:
        return R_SKIP;
    }
}

/* After a member or an element of a container that ends with close: 0 when that was the last
 * (s->p past close), 1 when another follows (s->p on it), -1 when neither follows. */
static int next_item(struct scan *s, char close)
{
    skip_ws(s);
    if (s->p >= s->end)
        return -1;
    if (*s->p == close) {
        s->p++;
        return 0;
    }
    if (*s->p != ',')
        return -1;
    s->p++;
    skip_ws(s);
    return 1;
}

/* s->p is past the '{' */
static int parse_object(struct scan *s, int depth, enum role role)
{
    int rc;

    skip_ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return 0;
    }
    for (;;) {
        struct jval key = {0}, scratch, *slot;
        enum role child;

        if (s->p >= s->end || *s->p != '"' || lex_string(s, &key) != 0)
            return -1;
        skip_ws(s);
        if (s->p >= s->end || *s->p != ':')
            return -1;
        s->p++;
        skip_ws(s);
        child = role == R_SKIP ? R_SKIP : member(s, role, &key, &slot);
        if (role == R_SKIP)
            slot = NULL;
        if (parse_value(s, depth + 1, child, slot != NULL ? slot : &scratch) != 0)
            return -1;
        if ((rc = next_item(s, '}')) <= 0)
            return rc;
    }
}

/* s->p is past the '[' */
static int parse_array(struct scan *s, int depth, enum role role)
{
    int rc;

    skip_ws(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        return 0;
    }
    for (int i = 0;; i++) {
        struct jval scratch;
        int first = role == R_CHOICES && i == 0;

        if (parse_value(s, depth + 1, first ? R_CHOICE0 : R_SKIP, first ? &s->choice0 : &scratch) !=
            0)
            return -1;
        if ((rc = next_item(s, ']')) <= 0)
            return rc;
    }
}

static int literal(struct scan *s, const char *word)
{
    size_t n = strlen(word);

    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
        return -1;
    s->p += n;
    return 0;
}

/*
 * jansson's quirk after a token it ends by looking one byte ahead (a number, true, false, null):
 * putting that byte back is a no-op when it is a NUL (its stream buffer is NUL-terminated), so
 * one NUL there is skipped. Returns rc.
 */
static int lookahead_nul(struct scan *s, int rc)
{
    if (rc == 0 && s->p < s->end && *s->p == '\0')
        s->p++;
    return rc;
}

/* A value at s->p (no whitespace before it) into *out; role says which members to keep. */
static int parse_value(struct scan *s, int depth, enum role role, struct jval *out)
{
    if (depth > DEPTH_MAX || s->p >= s->end)
        return -1;
    out->type = JV_OTHER;
    switch (*s->p) {
    case '{':
        out->type = JV_OBJECT;
        s->p++;
        return parse_object(s, depth, role);
    case '[':
        out->type = JV_ARRAY;
        s->p++;
        return parse_array(s, depth, role);
    case '"':
        return lex_string(s, out);
    case 't':
        return lookahead_nul(s, literal(s, "true"));
    case 'f':
        return lookahead_nul(s, literal(s, "false"));
    case 'n':
        return lookahead_nul(s, literal(s, "null"));
    default:
        return lookahead_nul(s, lex_number(s, out));
    }
}

static long long int_of(const struct jval *v)
{
    return v->type == JV_INTEGER ? v->i : 0;
}

/* Appends the decoded string v to b: one append, so that a failure leaves b unchanged. */
static int append_string(struct svc_buf *b, const struct jval *v)
{
    char stack[512], *tmp;
    size_t n;
    int rc;

    if (!v->esc)
        return svc_buf_append(b, v->s, v->slen);
    tmp = v->slen <= sizeof(stack) ? stack : malloc(v->slen);
    if (tmp == NULL)
        return SVC_ENOMEM;
    n = decode(v, tmp, v->slen);
    rc = svc_buf_append(b, tmp, n);
    if (tmp != stack)
        free(tmp);
    return rc;
}

/* Reads the whole document into s: 0, or -1 when it is not a valid JSON object. */
static int scan_document(struct scan *s, const char *data, size_t len)
{
    struct jval root = {0};

    memset(s, 0, sizeof(*s));
    s->p = data;
    s->end = data + len;
    skip_ws(s);
    /* jansson wants an object or an array at the top; the meter, an object */
    if (s->p >= s->end || *s->p != '{' || parse_value(s, 1, R_ROOT, &root) != 0)
        return -1;
    skip_ws(s);
    return s->p == s->end ? 0 : -1;
}

/* meter.c's event_usage(): usage (Responses' names first), else response.usage. */
static void usage_of(const struct scan *s, int *has, long long *prompt, long long *completion)
{
    *has = 1;
    if (s->usage.type == JV_OBJECT && s->u_in.type != JV_NONE) {
        *prompt = int_of(&s->u_in);
        *completion = int_of(&s->u_out);
    } else if (s->usage.type == JV_OBJECT) {
        *prompt = int_of(&s->u_prompt);
        *completion = int_of(&s->u_compl);
    } else if (s->resp.type == JV_OBJECT && s->ru.type == JV_OBJECT) {
        *prompt = int_of(&s->ru_in);
        *completion = int_of(&s->ru_out);
    } else {
        *has = 0;
        *prompt = *completion = 0;
    }
}

int meter_event_scan(const char *data, size_t len, struct meter_event_fields *f,
                     struct svc_buf *content)
{
    struct scan s;
    const struct jval *c = NULL;
    int has_choice;

    memset(f, 0, offsetof(struct meter_event_fields, msg_buf));
    if (scan_document(&s, data, len) != 0)
        return SVC_EINVAL;

    if (s.error.type != JV_NONE) {
        f->has_error = 1;
        if (s.error.type == JV_OBJECT && s.error_msg.type == JV_STRING) {
            size_t n = decode(&s.error_msg, f->msg_buf, sizeof(f->msg_buf) - 1);

            f->error_msg_len = n < sizeof(f->msg_buf) - 1 ? n : sizeof(f->msg_buf) - 1;
            f->msg_buf[f->error_msg_len] = '\0';
            f->error_msg = f->msg_buf;
        }
        return 0;
    }
    usage_of(&s, &f->has_usage, &f->usage_prompt, &f->usage_completion);
    /* choices[0] exists, whatever its type (a null element too) */
    has_choice = s.choices.type == JV_ARRAY && s.choice0.type != JV_NONE;
    f->has_choice = has_choice;
    if (has_choice && s.choice0.type == JV_OBJECT) {
        if (s.delta.type == JV_OBJECT && s.delta_content.type == JV_STRING)
            c = &s.delta_content;
        else if (s.text.type == JV_STRING)
            c = &s.text;
        f->has_finish = s.finish.type == JV_STRING;
    } else if (!has_choice && s.type.type == JV_STRING &&
               str_is(&s.type, "response.output_text.delta") && s.tdelta.type == JV_STRING) {
        c = &s.tdelta;
    }
    f->usage_only = !has_choice && s.usage.type == JV_OBJECT;
    if (c != NULL && c->slen > 0)
        return append_string(content, c);
    return 0;
}

int meter_answer_scan(const char *data, size_t len, struct meter_answer_fields *f,
                      struct svc_buf *text)
{
    struct scan s;
    const struct jval *c = NULL;

    memset(f, 0, sizeof(*f));
    if (scan_document(&s, data, len) != 0)
        return SVC_EINVAL;
    usage_of(&s, &f->has_usage, &f->usage_prompt, &f->usage_completion);
    if (s.choices.type == JV_ARRAY && s.choice0.type == JV_OBJECT) {
        if (s.message.type == JV_OBJECT && s.message_content.type == JV_STRING)
            c = &s.message_content;
        else if (s.text.type == JV_STRING)
            c = &s.text;
    }
    if (c == NULL && s.output_text.type == JV_STRING)
        c = &s.output_text;
    if (c != NULL && c->slen > 0)
        return append_string(text, c);
    return 0;
}
