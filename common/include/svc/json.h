#ifndef SVC_JSON_H
#define SVC_JSON_H

#include <stddef.h>

/*
 * JSON values for the services, so that no service includes jansson (style.md rule 14). A thin
 * layer: jansson does the work underneath and its semantics hold (see docs/json.md).
 *
 * Ownership: a value is reference counted. Every function that returns a new value (parse, pack,
 * the constructors, svc_json_ref) gives the caller one reference, dropped with svc_json_destroy().
 * Accessors (svc_json_member, svc_json_array_at, the iterators) return borrowed values, valid while
 * their container is. svc_json_set() and svc_json_append() take the caller's reference to the
 * value they store, also when they fail.
 *
 * Thread safety: a value may be read from several threads at once; one that is being changed may
 * be used by that thread only. The reference count is atomic.
 */

struct svc_json;

/* Flags of svc_json_parse(). */
enum {
    SVC_JSON_STRICT = 1 << 0,    /* an object with a key twice is an error (bodies from clients) */
    SVC_JSON_ALLOW_NUL = 1 << 1, /* strings may hold "\u0000" */
};

/* Flags of svc_json_dump(); the output is always compact (no spaces, no newline). */
enum {
    SVC_JSON_SHORT_REALS = 1 << 0, /* reals with 6 significant digits (0.7, not 0.69999999999999996) */
};

/*
 * Parses buf[0..len) (need not be NUL-terminated). Returns the value, or NULL with the reason
 * ("'[' or '{' expected near 'x'") in err[errlen] when err is not NULL.
 */
struct svc_json *svc_json_parse(const char *buf, size_t len, int flags, char *err, size_t errlen);

/*
 * svc_json_parse(), also telling where the error is: on failure *line and *column (either may be
 * NULL) get its 1-based line and column as jansson counts them (-1 when there is no position);
 * on success they are left alone. For inputs people write by hand (configuration).
 */
struct svc_json *svc_json_parse_at(const char *buf, size_t len, int flags, char *err, size_t errlen,
                                   int *line, int *column);

/*
 * The compact text of j, NUL-terminated; caller frees with free(). NULL when j is NULL or not an
 * object or array (jansson dumps only those), or out of memory.
 */
char *svc_json_dump(const struct svc_json *j, int flags);

/*
 * Builds a value from a format (jansson's pack language: "{s:s, s:I, s:o}" and so on; "I" takes
 * a long long, "o" takes the caller's reference to a value, "O" adds one). NULL on a bad format
 * or argument (a NULL string for "s").
 */
struct svc_json *svc_json_pack(const char *fmt, ...);

/*
 * Reads an object's fields by the same format language (jansson's unpack: "{s:s, s?I}"): strings
 * come out borrowed. Returns 0, or SVC_EINVAL when j does not have that shape.
 */
int svc_json_unpack(const struct svc_json *j, const char *fmt, ...);

/* Adds a reference and returns j (NULL passes through). */
struct svc_json *svc_json_ref(struct svc_json *j);

/* Drops the caller's reference; *jp may be NULL; sets *jp to NULL. */
void svc_json_destroy(struct svc_json **jp);

/* ---- types: 1 when j (may be NULL) is of that type, else 0 ---- */
int svc_json_is_object(const struct svc_json *j);
int svc_json_is_array(const struct svc_json *j);
int svc_json_is_string(const struct svc_json *j);
int svc_json_is_integer(const struct svc_json *j);
int svc_json_is_real(const struct svc_json *j);
int svc_json_is_number(const struct svc_json *j); /* integer or real */
int svc_json_is_bool(const struct svc_json *j);
int svc_json_is_true(const struct svc_json *j);
int svc_json_is_null(const struct svc_json *j);

/* ---- reading (borrowed results; NULL or 0 when j is not of the type asked for) ---- */

/* The member named key of an object; NULL when absent or when obj is not an object. */
struct svc_json *svc_json_member(const struct svc_json *obj, const char *key);

/* A string's bytes (NUL-terminated; may hold NULs with SVC_JSON_ALLOW_NUL) and its length. */
const char *svc_json_str(const struct svc_json *j);
size_t svc_json_strlen(const struct svc_json *j);

/* An integer's value; 0 for anything else. */
long long svc_json_int(const struct svc_json *j);

/* A number's value (integer or real) as a double; 0 for anything else. */
double svc_json_number(const struct svc_json *j);

/* The number of members of an object (0 for anything else). */
size_t svc_json_object_len(const struct svc_json *obj);

/* An array's length (0 for anything else) and its element at i (NULL past the end). */
size_t svc_json_array_len(const struct svc_json *arr);
struct svc_json *svc_json_array_at(const struct svc_json *arr, size_t i);

/* Iterates an object in insertion order: it is NULL at the end or when obj is not an object. */
void *svc_json_iter(const struct svc_json *obj);
void *svc_json_iter_next(const struct svc_json *obj, void *it);
const char *svc_json_iter_key(void *it);
struct svc_json *svc_json_iter_value(void *it);

/* for each element v (borrowed) at index i of an array (no iterations when arr is not one) */
#define SVC_JSON_ARRAY_EACH(arr, i, v)                                                             \
    for ((i) = 0; (i) < svc_json_array_len(arr) && ((v) = svc_json_array_at((arr), (i))) != NULL;  \
         (i)++)

/*
 * for each member key/v (borrowed) of an object (no iterations when obj is not one). v is tested
 * (never NULL for a member), like jansson's json_object_foreach, so a loop that only needs the
 * keys does not trip -Wunused-but-set-variable.
 */
#define SVC_JSON_OBJECT_EACH(obj, it, key, v)                                                      \
    for ((it) = svc_json_iter(obj);                                                                \
         (it) != NULL && ((key) = svc_json_iter_key(it), ((v) = svc_json_iter_value(it)) != NULL); \
         (it) = svc_json_iter_next((obj), (it)))

/* ---- building (new values: the caller owns one reference; NULL when out of memory) ---- */
struct svc_json *svc_json_object(void);
struct svc_json *svc_json_array(void);
struct svc_json *svc_json_string(const char *s);             /* NULL unless valid UTF-8 */
struct svc_json *svc_json_stringn(const char *s, size_t len); /* NULL unless valid UTF-8 */
struct svc_json *svc_json_integer(long long v);
struct svc_json *svc_json_real(double v);
struct svc_json *svc_json_bool(int v);
struct svc_json *svc_json_null(void);

/*
 * Stores v under key in obj (replacing any member of that name) / at the end of arr. Takes the
 * caller's reference to v, also on failure. Returns 0, or SVC_EINVAL (obj / arr is not an
 * object / array, v is NULL, key is not UTF-8) or SVC_ENOMEM.
 */
int svc_json_set(struct svc_json *obj, const char *key, struct svc_json *v);
int svc_json_append(struct svc_json *arr, struct svc_json *v);

/* ---- writing without a tree ---- */
struct svc_buf;

/*
 * Appends s[0..len) to b as a JSON string literal, quoted and escaped byte for byte as
 * svc_json_dump() writes it (", \ and control characters escaped, everything else as it is), for
 * a writer that makes many small documents of a known shape. Returns 0; SVC_EINVAL unless s is
 * valid UTF-8, or the buffer's error; b is unchanged on failure.
 */
int svc_json_buf_string(struct svc_buf *b, const char *s, size_t len);

#endif
