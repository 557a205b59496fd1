#ifndef METER_EVENT_H
#define METER_EVENT_H

#include <stddef.h>

#include "svc/buf.h"

/*
 * The fields the meter reads from one upstream SSE event, in a single pass over its JSON that
 * builds no tree (the proxy passes events on as they came, chat copies them into its objects).
 * The results are exactly those of the jansson reading the meter had before (kept as the
 * reference in tests/fuzz/fuzz_meter_event.c): the same documents are accepted (jansson's json_loadb with flags 0: UTF-8 checked,
 * no "\u0000", integers within long long, reals that do not overflow, depth at most 2048), a key
 * given twice keeps its last value, keys are compared after unescaping.
 */

/* error.message is kept up to this many bytes, minus the NUL: more than meter's errmsg holds */
#define METER_EVENT_MSG_MAX 512

struct meter_event_fields {
    int has_error;         /* a top-level "error" member, of any type */
    const char *error_msg; /* error.message when it is a string, decoded and NUL-terminated,
                            * cut to METER_EVENT_MSG_MAX - 1 bytes (maybe inside a character);
                            * points into msg_buf; NULL otherwise */
    size_t error_msg_len;  /* bytes at error_msg */
    int has_usage;         /* usage or response.usage (meter's rules): the two counts below */
    long long usage_prompt, usage_completion; /* integers, 0 for any other type */
    int has_choice;                           /* choices[0] exists, of any type */
    int has_finish;                           /* choices[0].finish_reason is a string */
    int usage_only;                           /* no choices[0] and a top-level "usage" object */
    char msg_buf[METER_EVENT_MSG_MAX];
};

/*
 * Reads the event data[0..len) into *f (all of it written). Returns 0; SVC_EINVAL when the data is
 * not a valid JSON object (*f is then zeroed); or the error of svc_buf_append (SVC_ETOOLARGE,
 * SVC_ENOMEM) when the content did not fit, with *f filled and content unchanged.
 * The content (choices[0].delta.content, else choices[0].text; without choices[0], the "delta" of
 * a "response.output_text.delta" event), decoded, is appended to content when it is a non-empty
 * string and the event has no "error". Nothing is appended on an error. Thread-safe (no state).
 */
int meter_event_scan(const char *data, size_t len, struct meter_event_fields *f,
                     struct svc_buf *content) __attribute__((warn_unused_result));

/* What the meter reads from a complete JSON answer (a reply that was not streamed). */
struct meter_answer_fields {
    int has_usage;                            /* usage or response.usage, as in an event */
    long long usage_prompt, usage_completion; /* integers, 0 for any other type */
};

/*
 * Reads the JSON answer data[0..len) into *f (all of it written) with the same single pass as
 * meter_event_scan, and appends its text to text: choices[0].message.content, else
 * choices[0].text, else the top-level output_text, when it is a non-empty string. The reference
 * is meter.c's former jansson reading of an answer (tests/fuzz/fuzz_meter_event.c keeps it).
 * Returns 0; SVC_EINVAL when the data is not a valid JSON object (*f zeroed, nothing appended);
 * or svc_buf_append's error when the text did not fit (*f filled, text unchanged).
 */
int meter_answer_scan(const char *data, size_t len, struct meter_answer_fields *f,
                      struct svc_buf *text) __attribute__((warn_unused_result));

#endif
