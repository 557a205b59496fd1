/*
 * Differential fuzz target for meter/event.h: meter_event_scan (the meter's tree-less reading of
 * an upstream event) and meter_answer_scan (the meter's reading of a JSON answer).
 *
 * Input: the event's data. The reference is the jansson reading meter.c had before the scanner
 * replaced it (event_read, event_content, event_usage), kept here on svc/json.h; the two must agree on whether the event is valid, on
 * every field, on the formatted error message and on the content bytes appended (to a bounded
 * buffer, so that SVC_ETOOLARGE is compared too). Any difference aborts.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "meter/event.h"
#include "svc/buf.h"
#include "svc/err.h"
#include "svc/json.h"
#include "svc/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* the content buffer: small enough that long contents hit SVC_ETOOLARGE, prefilled a little */
#define CONTENT_MAX 300
#define PREFILL 37

struct ref {
    int valid, has_error, has_usage, has_choice, has_finish, usage_only;
    const char *msg;
    long long prompt, completion;
    const char *content;
    size_t content_len;
};

/* meter.c's event_content() */
static const char *ref_content(struct svc_json *j, size_t *len)
{
    struct svc_json *choice = svc_json_array_at(svc_json_member(j, "choices"), 0);
    struct svc_json *c = NULL;
    const char *type = svc_json_str(svc_json_member(j, "type"));

    if (choice != NULL) {
        c = svc_json_member(svc_json_member(choice, "delta"), "content");
        if (!svc_json_is_string(c))
            c = svc_json_member(choice, "text");
    } else if (type != NULL && strcmp(type, "response.output_text.delta") == 0) {
        c = svc_json_member(j, "delta");
    }
    if (!svc_json_is_string(c)) {
        *len = 0;
        return NULL;
    }
    *len = svc_json_strlen(c);
    return svc_json_str(c);
}

/* meter.c's event_usage() */
static void ref_usage(struct ref *r, struct svc_json *j)
{
    struct svc_json *u = svc_json_member(j, "usage");
    struct svc_json *resp = svc_json_member(j, "response");

    if (svc_json_is_object(u) && svc_json_member(u, "input_tokens") != NULL) {
        r->has_usage = 1;
        r->prompt = (long long)svc_json_int(svc_json_member(u, "input_tokens"));
        r->completion = (long long)svc_json_int(svc_json_member(u, "output_tokens"));
    } else if (svc_json_is_object(u)) {
        r->has_usage = 1;
        r->prompt = (long long)svc_json_int(svc_json_member(u, "prompt_tokens"));
        r->completion = (long long)svc_json_int(svc_json_member(u, "completion_tokens"));
    } else if (svc_json_is_object(resp) && svc_json_is_object(svc_json_member(resp, "usage"))) {
        r->has_usage = 1;
        u = svc_json_member(resp, "usage");
        r->prompt = (long long)svc_json_int(svc_json_member(u, "input_tokens"));
        r->completion = (long long)svc_json_int(svc_json_member(u, "output_tokens"));
    }
}

/* meter.c's event_read(), minus the meter */
static void ref_read(struct ref *r, struct svc_json *j)
{
    struct svc_json *err, *choice;

    memset(r, 0, sizeof(*r));
    if (j == NULL || !svc_json_is_object(j))
        return;
    r->valid = 1;
    err = svc_json_member(j, "error");
    if (err != NULL) {
        r->has_error = 1;
        r->msg = svc_json_str(svc_json_member(err, "message"));
        return;
    }
    ref_usage(r, j);
    r->content = ref_content(j, &r->content_len);
    choice = svc_json_array_at(svc_json_member(j, "choices"), 0);
    r->has_choice = choice != NULL;
    r->has_finish = svc_json_str(svc_json_member(choice, "finish_reason")) != NULL;
    r->usage_only = choice == NULL && svc_json_is_object(svc_json_member(j, "usage"));
}

/* want and got, bounded content buffers that start with the same PREFILL bytes of c; then the
 * reference's content, when it appends one, into want: what that append returned */
static int buffers_start(struct svc_buf *want, struct svc_buf *got, char c, const struct ref *r,
                         int appends)
{
    char pre[PREFILL];

    memset(pre, c, sizeof(pre));
    svc_buf_init(want, CONTENT_MAX);
    svc_buf_init(got, CONTENT_MAX);
    if (svc_buf_append(want, pre, sizeof(pre)) != SVC_OK ||
        svc_buf_append(got, pre, sizeof(pre)) != SVC_OK)
        abort();
    return appends && r->content_len > 0 ? svc_buf_append(want, r->content, r->content_len) : 0;
}

/* the same bytes in both, NUL-terminated; frees them */
static void buffers_same(struct svc_buf *want, struct svc_buf *got)
{
    if (want->len != got->len || memcmp(want->data, got->data, want->len) != 0 ||
        got->data[got->len] != '\0')
        abort();
    svc_buf_deinit(want);
    svc_buf_deinit(got);
}

/* meter.c's json_answer() as it was on jansson: the usage and the text it appends */
static void ref_answer(struct ref *r, struct svc_json *j)
{
    struct svc_json *choice = svc_json_array_at(svc_json_member(j, "choices"), 0);
    struct svc_json *c = svc_json_member(svc_json_member(choice, "message"), "content");

    memset(r, 0, sizeof(*r));
    if (j == NULL)
        return;
    ref_usage(r, j);
    if (!svc_json_is_string(c))
        c = svc_json_member(choice, "text");
    if (!svc_json_is_string(c))
        c = svc_json_member(j, "output_text");
    if (svc_json_is_string(c)) {
        r->content = svc_json_str(c);
        r->content_len = svc_json_strlen(c);
    }
}

/* the answer's side: the same usage and the same bytes appended (an append that does not fit
 * leaves the buffer as it was, then and now) */
static void check_answer(const char *d, size_t size, struct svc_json *j)
{
    struct meter_answer_fields f;
    struct svc_buf want, got;
    struct ref r;
    int rc, want_rc;

    ref_answer(&r, j);
    want_rc = buffers_start(&want, &got, 'q', &r, 1);
    memset(&f, 0xA5, sizeof(f));
    rc = meter_answer_scan(d, size, &f, &got);
    if (rc == SVC_EINVAL) {
        /* not an object: jansson found nothing in it either (an array, or invalid) */
        if (r.has_usage || r.content_len > 0 || f.has_usage != 0)
            abort();
        if (j != NULL && svc_json_is_object(j))
            abort();
    } else {
        if (j == NULL || !svc_json_is_object(j) || rc != want_rc || f.has_usage != r.has_usage)
            abort();
        if (r.has_usage && (f.usage_prompt != r.prompt || f.usage_completion != r.completion))
            abort();
    }
    buffers_same(&want, &got);
}

/* the meter's error text, as event_read formats it */
static void errmsg(char *out, size_t n, const char *msg)
{
    snprintf(out, n, "[OpenAI] %s", msg != NULL ? msg : "error inside the stream");
    svc_util_utf8_trim_end(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *d = (const char *)data;
    struct svc_json *j = svc_json_parse(d, size, 0, NULL, 0);
    struct meter_event_fields f;
    struct svc_buf want, got;
    struct ref r;
    int rc, want_rc;

    ref_read(&r, j);
    want_rc = buffers_start(&want, &got, 'p', &r, r.valid && !r.has_error);

    memset(&f, 0xA5, sizeof(f)); /* the scanner must write every field */
    rc = meter_event_scan(d, size, &f, &got);
    if (!r.valid) {
        if (rc != SVC_EINVAL)
            abort();
    } else {
        if (rc != want_rc)
            abort();
        if (f.has_error != r.has_error)
            abort();
        if (r.has_error) {
            char a[512], b[512];

            if ((f.error_msg == NULL) != (r.msg == NULL))
                abort();
            if (r.msg != NULL) {
                size_t n = strlen(r.msg);

                if (n > METER_EVENT_MSG_MAX - 1)
                    n = METER_EVENT_MSG_MAX - 1;
                if (f.error_msg_len != n || memcmp(f.error_msg, r.msg, n) != 0 ||
                    f.error_msg[n] != '\0')
                    abort();
            }
            errmsg(a, sizeof(a), r.msg);
            errmsg(b, sizeof(b), f.error_msg);
            if (strcmp(a, b) != 0)
                abort();
        } else {
            if (f.has_usage != r.has_usage || f.has_finish != r.has_finish ||
                f.has_choice != r.has_choice ||
                f.usage_only != r.usage_only)
                abort();
            if (r.has_usage && (f.usage_prompt != r.prompt || f.usage_completion != r.completion))
                abort();
        }
    }
    buffers_same(&want, &got);
    check_answer(d, size, j);
    svc_json_destroy(&j);
    return 0;
}
