/*
 * svc/json.h: JSON values for the services, on top of jansson. struct svc_json is jansson's
 * json_t under another name: the casts below are the whole translation, so the services never
 * see a jansson type and jansson's semantics (reference counts, UTF-8 checks) hold unchanged.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "svc/buf.h"
#include "svc/err.h"
#include "svc/json.h"
#include "svc/util.h"

#define J(v) ((json_t *)(v))
#define CJ(v) ((const json_t *)(v))
#define S(v) ((struct svc_json *)(v))

struct svc_json *svc_json_parse_at(const char *buf, size_t len, int flags, char *err, size_t errlen,
                                   int *line, int *column)
{
    size_t jflags = 0;
    json_error_t e;
    json_t *j;

    if (flags & SVC_JSON_STRICT)
        jflags |= JSON_REJECT_DUPLICATES;
    if (flags & SVC_JSON_ALLOW_NUL)
        jflags |= JSON_ALLOW_NUL;
    j = json_loadb(buf != NULL ? buf : "", buf != NULL ? len : 0, jflags, &e);
    if (j == NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s", e.text);
        if (line != NULL)
            *line = e.line;
        if (column != NULL)
            *column = e.column;
    }
    return S(j);
}

struct svc_json *svc_json_parse(const char *buf, size_t len, int flags, char *err, size_t errlen)
{
    return svc_json_parse_at(buf, len, flags, err, errlen, NULL, NULL);
}

char *svc_json_dump(const struct svc_json *j, int flags)
{
    size_t jflags = JSON_COMPACT;

    if (flags & SVC_JSON_SHORT_REALS)
        jflags |= JSON_REAL_PRECISION(6);
    return j != NULL ? json_dumps(CJ(j), jflags) : NULL;
}

struct svc_json *svc_json_pack(const char *fmt, ...)
{
    va_list ap;
    json_t *j;

    va_start(ap, fmt);
    j = json_vpack_ex(NULL, 0, fmt, ap);
    va_end(ap);
    return S(j);
}

int svc_json_unpack(const struct svc_json *j, const char *fmt, ...)
{
    va_list ap;
    int rc;

    if (j == NULL)
        return SVC_EINVAL;
    va_start(ap, fmt);
    /* jansson's unpack does not change the value; its prototype is not const. */
    rc = json_vunpack_ex((json_t *)CJ(j), NULL, 0, fmt, ap);
    va_end(ap);
    return rc == 0 ? SVC_OK : SVC_EINVAL;
}

struct svc_json *svc_json_ref(struct svc_json *j)
{
    return S(json_incref(J(j)));
}

void svc_json_destroy(struct svc_json **jp)
{
    if (jp == NULL || *jp == NULL)
        return;
    json_decref(J(*jp));
    *jp = NULL;
}

int svc_json_is_object(const struct svc_json *j) { return j != NULL && json_is_object(CJ(j)); }
int svc_json_is_array(const struct svc_json *j) { return j != NULL && json_is_array(CJ(j)); }
int svc_json_is_string(const struct svc_json *j) { return j != NULL && json_is_string(CJ(j)); }
int svc_json_is_integer(const struct svc_json *j) { return j != NULL && json_is_integer(CJ(j)); }
int svc_json_is_real(const struct svc_json *j) { return j != NULL && json_is_real(CJ(j)); }
int svc_json_is_number(const struct svc_json *j) { return j != NULL && json_is_number(CJ(j)); }
int svc_json_is_bool(const struct svc_json *j) { return j != NULL && json_is_boolean(CJ(j)); }
int svc_json_is_true(const struct svc_json *j) { return j != NULL && json_is_true(CJ(j)); }
int svc_json_is_null(const struct svc_json *j) { return j != NULL && json_is_null(CJ(j)); }

struct svc_json *svc_json_member(const struct svc_json *obj, const char *key)
{
    return obj != NULL ? S(json_object_get(CJ(obj), key)) : NULL;
}

const char *svc_json_str(const struct svc_json *j)
{
    return j != NULL ? json_string_value(CJ(j)) : NULL;
}

size_t svc_json_strlen(const struct svc_json *j)
{
    return j != NULL ? json_string_length(CJ(j)) : 0;
}

long long svc_json_int(const struct svc_json *j)
{
    return j != NULL ? (long long)json_integer_value(CJ(j)) : 0;
}

double svc_json_number(const struct svc_json *j)
{
    return j != NULL ? json_number_value(CJ(j)) : 0;
}

size_t svc_json_object_len(const struct svc_json *obj)
{
    return obj != NULL ? json_object_size(CJ(obj)) : 0;
}

size_t svc_json_array_len(const struct svc_json *arr)
{
    return arr != NULL ? json_array_size(CJ(arr)) : 0;
}

struct svc_json *svc_json_array_at(const struct svc_json *arr, size_t i)
{
    return arr != NULL ? S(json_array_get(CJ(arr), i)) : NULL;
}

void *svc_json_iter(const struct svc_json *obj)
{
    /* jansson's iterator does not change the object; its prototype is not const. */
    return svc_json_is_object(obj) ? json_object_iter((json_t *)CJ(obj)) : NULL;
}

void *svc_json_iter_next(const struct svc_json *obj, void *it)
{
    return it != NULL ? json_object_iter_next((json_t *)CJ(obj), it) : NULL;
}

const char *svc_json_iter_key(void *it)
{
    return json_object_iter_key(it);
}

struct svc_json *svc_json_iter_value(void *it)
{
    return S(json_object_iter_value(it));
}

struct svc_json *svc_json_object(void) { return S(json_object()); }
struct svc_json *svc_json_array(void) { return S(json_array()); }
struct svc_json *svc_json_string(const char *s) { return s != NULL ? S(json_string(s)) : NULL; }
struct svc_json *svc_json_stringn(const char *s, size_t len) { return S(json_stringn(s, len)); }
struct svc_json *svc_json_integer(long long v) { return S(json_integer((json_int_t)v)); }
struct svc_json *svc_json_real(double v) { return S(json_real(v)); }
struct svc_json *svc_json_bool(int v) { return S(json_boolean(v)); }
struct svc_json *svc_json_null(void) { return S(json_null()); }

int svc_json_set(struct svc_json *obj, const char *key, struct svc_json *v)
{
    if (v == NULL)
        return SVC_EINVAL;
    if (!svc_json_is_object(obj) || key == NULL) {
        json_decref(J(v));
        return SVC_EINVAL;
    }
    /* json_object_set_new drops v itself when it fails: for a key that is not UTF-8, or out of
     * memory (the only cause left when the key is UTF-8) */
    if (json_object_set_new(J(obj), key, J(v)) == 0)
        return SVC_OK;
    return svc_util_utf8_valid(key, strlen(key)) ? SVC_ENOMEM : SVC_EINVAL;
}

int svc_json_append(struct svc_json *arr, struct svc_json *v)
{
    if (v == NULL)
        return SVC_EINVAL;
    if (!svc_json_is_array(arr)) {
        json_decref(J(v));
        return SVC_EINVAL;
    }
    return json_array_append_new(J(arr), J(v)) == 0 ? SVC_OK : SVC_ENOMEM;
}

/* The escape of byte c inside a JSON string, as jansson writes it (\n, or \u001F in u). */
static const char *json_escape(unsigned char c, char u[7])
{
    static const char hex[] = "0123456789ABCDEF";

    switch (c) {
    case '"': return "\\\"";
    case '\\': return "\\\\";
    case '\b': return "\\b";
    case '\f': return "\\f";
    case '\n': return "\\n";
    case '\r': return "\\r";
    case '\t': return "\\t";
    default:
        memcpy(u, "\\u00", 4);
        u[4] = hex[c >> 4];
        u[5] = hex[c & 15];
        u[6] = '\0';
        return u;
    }
}

int svc_json_buf_string(struct svc_buf *b, const char *s, size_t len)
{
    size_t before = b->len, run = 0; /* s[run..i) is copied as it is */
    int rc;

    if (!svc_util_utf8_valid(s, len))
        return SVC_EINVAL;
    rc = svc_buf_append(b, "\"", 1);
    for (size_t i = 0; rc == SVC_OK && i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char u[7];

        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        if ((rc = svc_buf_append(b, s + run, i - run)) == SVC_OK)
            rc = svc_buf_append_str(b, json_escape(c, u));
        run = i + 1;
    }
    if (rc == SVC_OK && (rc = svc_buf_append(b, s + run, len - run)) == SVC_OK)
        rc = svc_buf_append(b, "\"", 1);
    if (rc != SVC_OK && b->data != NULL) {
        b->len = before; /* as it was */
        b->data[before] = '\0';
    }
    return rc;
}
