/*
 * Unit tests of meter/event.h (meter_event_scan, and meter_answer_scan for JSON answers): the
 * fields meter.c reads from chat chunks,
 * usage chunks, Responses API events and error events, and jansson's exact acceptance (flags 0):
 * duplicate keys (the last wins), escapes and surrogates, invalid UTF-8, "\u0000", the depth
 * limit, integer overflow, trailing bytes, a non-object at the top. The differential fuzz target
 * tests/fuzz/fuzz_meter_event.c checks the same against jansson itself.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "meter/event.h"
#include "svc/buf.h"
#include "svc/err.h"
#include "test.h"

/* Scans data[0..len) into *f; the content appended lands in c (reset first). */
static int scan_n(const char *data, size_t len, struct meter_event_fields *f, struct svc_buf *c)
{
    svc_buf_reset(c);
    return meter_event_scan(data, len, f, c);
}

static int scan(const char *data, struct meter_event_fields *f, struct svc_buf *c)
{
    return scan_n(data, strlen(data), f, c);
}

/* 1 when data is accepted */
static int valid_n(const char *data, size_t len)
{
    struct meter_event_fields f;
    struct svc_buf c;
    int rc;

    svc_buf_init(&c, 1 << 20);
    rc = scan_n(data, len, &f, &c);
    svc_buf_deinit(&c);
    T_ASSERT(rc == 0 || rc == SVC_EINVAL);
    return rc == 0;
}

static int valid(const char *data)
{
    return valid_n(data, strlen(data));
}

static const char *content(struct svc_buf *c)
{
    return c->data != NULL ? c->data : "";
}

static void test_chat_chunk(void)
{
    struct meter_event_fields f;
    struct svc_buf c;

    svc_buf_init(&c, 1024);
    T_EQ_INT(
        scan("{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\""
             ":0,\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}],\"usage\":null}",
             &f, &c),
        0);
    T_EQ_STR(content(&c), "Hello");
    T_EQ_INT(f.has_error, 0);
    T_EQ_INT(f.has_usage, 0);
    T_EQ_INT(f.has_finish, 0);
    T_EQ_INT(f.usage_only, 0);
    /* the finish chunk: no content, a finish_reason */
    T_EQ_INT(scan("{\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}", &f, &c), 0);
    T_EQ_INT(c.len, 0);
    T_EQ_INT(f.has_finish, 1);
    /* legacy completions: text when delta.content is not a string */
    T_EQ_INT(scan("{\"choices\":[{\"delta\":{\"content\":null},\"text\":\" t\"}]}", &f, &c), 0);
    T_EQ_STR(content(&c), " t");
    /* appended to what the buffer holds */
    svc_buf_reset(&c);
    T_EQ_INT(svc_buf_append(&c, "ab", 2), SVC_OK);
    T_EQ_INT(meter_event_scan("{\"choices\":[{\"text\":\"cd\"}]}", 27, &f, &c), 0);
    T_EQ_STR(content(&c), "abcd");
    svc_buf_deinit(&c);
}

static void test_usage_chunk(void)
{
    struct meter_event_fields f;
    struct svc_buf c;

    svc_buf_init(&c, 1024);
    T_EQ_INT(scan("{\"choices\":[],\"usage\":{\"prompt_tokens\":17,\"completion_tokens\":42,"
                  "\"total_tokens\":59}}",
                  &f, &c),
             0);
    T_EQ_INT(f.has_usage, 1);
    T_EQ_INT(f.usage_prompt, 17);
    T_EQ_INT(f.usage_completion, 42);
    T_EQ_INT(f.usage_only, 1);
    /* choices[0] exists (even null): not usage-only */
    T_EQ_INT(scan("{\"choices\":[null],\"usage\":{\"prompt_tokens\":1}}", &f, &c), 0);
    T_EQ_INT(f.usage_only, 0);
    T_EQ_INT(f.usage_prompt, 1);
    T_EQ_INT(f.usage_completion, 0);
    /* input_tokens present (any type) selects the Responses names */
    T_EQ_INT(
        scan("{\"usage\":{\"input_tokens\":null,\"output_tokens\":3,\"prompt_tokens\":9}}", &f, &c),
        0);
    T_EQ_INT(f.usage_prompt, 0);
    T_EQ_INT(f.usage_completion, 3);
    /* a real for a token count gives 0, as svc_json_int */
    T_EQ_INT(scan("{\"usage\":{\"prompt_tokens\":12.0,\"completion_tokens\":1e2}}", &f, &c), 0);
    T_EQ_INT(f.has_usage, 1);
    T_EQ_INT(f.usage_prompt, 0);
    T_EQ_INT(f.usage_completion, 0);
    /* usage that is not an object */
    T_EQ_INT(scan("{\"usage\":[1]}", &f, &c), 0);
    T_EQ_INT(f.has_usage, 0);
    T_EQ_INT(f.usage_only, 0);
    svc_buf_deinit(&c);
}

static void test_responses_events(void)
{
    struct meter_event_fields f;
    struct svc_buf c;

    svc_buf_init(&c, 1024);
    T_EQ_INT(
        scan("{\"delta\":\"Hi\",\"item_id\":\"msg_1\",\"type\":\"response.output_text.delta\"}", &f,
             &c),
        0);
    T_EQ_STR(content(&c), "Hi");
    /* another type: no content */
    T_EQ_INT(scan("{\"type\":\"response.refusal.delta\",\"delta\":\"no\"}", &f, &c), 0);
    T_EQ_INT(c.len, 0);
    /* with a choices[0], the type is not looked at */
    T_EQ_INT(
        scan("{\"type\":\"response.output_text.delta\",\"delta\":\"x\",\"choices\":[1]}", &f, &c),
        0);
    T_EQ_INT(c.len, 0);
    T_EQ_INT(scan("{\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":{"
                  "\"input_tokens\":12,\"output_tokens\":3,\"total_tokens\":15}}}",
                  &f, &c),
             0);
    T_EQ_INT(f.has_usage, 1);
    T_EQ_INT(f.usage_prompt, 12);
    T_EQ_INT(f.usage_completion, 3);
    T_EQ_INT(f.usage_only, 0);
    svc_buf_deinit(&c);
}

static void test_error_event(void)
{
    struct meter_event_fields f;
    struct svc_buf c;

    svc_buf_init(&c, 1024);
    T_EQ_INT(scan("{\"choices\":[{\"text\":\"x\"}],\"error\":{\"message\":\"Rate limit \\u00e9\","
                  "\"type\":\"server_error\"}}",
                  &f, &c),
             0);
    T_EQ_INT(f.has_error, 1);
    T_EQ_STR(f.error_msg, "Rate limit \xc3\xa9");
    T_EQ_INT(f.error_msg_len, 13);
    T_EQ_INT(c.len, 0); /* no content with an error */
    /* an error of any type, even null; no message */
    T_EQ_INT(scan("{\"error\":null}", &f, &c), 0);
    T_EQ_INT(f.has_error, 1);
    T_ASSERT(f.error_msg == NULL);
    T_EQ_INT(scan("{\"error\":{\"message\":5}}", &f, &c), 0);
    T_ASSERT(f.error_msg == NULL);
    svc_buf_deinit(&c);
}

static void test_long_error_cut(void)
{
    struct meter_event_fields f;
    struct svc_buf c, in;

    svc_buf_init(&c, 1024);
    svc_buf_init(&in, 1 << 16);
    T_EQ_INT(svc_buf_append_str(&in, "{\"error\":{\"message\":\""), SVC_OK);
    for (int i = 0; i < 1000; i++)
        T_EQ_INT(svc_buf_append_str(&in, "ab"), SVC_OK);
    T_EQ_INT(svc_buf_append_str(&in, "\"}}"), SVC_OK);
    T_EQ_INT(scan(in.data, &f, &c), 0);
    T_EQ_INT(f.error_msg_len, METER_EVENT_MSG_MAX - 1);
    T_EQ_INT(strlen(f.error_msg), METER_EVENT_MSG_MAX - 1);
    svc_buf_deinit(&in);
    svc_buf_deinit(&c);
}

static void test_duplicates_last_wins(void)
{
    struct meter_event_fields f;
    struct svc_buf c;

    svc_buf_init(&c, 1024);
    /* a later "choices" replaces the earlier one, nested fields included */
    T_EQ_INT(scan("{\"choices\":[{\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\"}],"
                  "\"choices\":[{\"text\":\"b\"}]}",
                  &f, &c),
             0);
    T_EQ_STR(content(&c), "b");
    T_EQ_INT(f.has_finish, 0);
    T_EQ_INT(scan("{\"choices\":[{\"delta\":{\"content\":\"a\",\"content\":7}}]}", &f, &c), 0);
    T_EQ_INT(c.len, 0);
    T_EQ_INT(scan("{\"usage\":{\"prompt_tokens\":5},\"usage\":{\"completion_tokens\":6}}", &f, &c),
             0);
    T_EQ_INT(f.usage_prompt, 0);
    T_EQ_INT(f.usage_completion, 6);
    T_EQ_INT(scan("{\"usage\":{\"input_tokens\":5},\"usage\":3}", &f, &c), 0);
    T_EQ_INT(f.has_usage, 0);
    T_EQ_INT(scan("{\"error\":{\"message\":\"m\"},\"error\":{}}", &f, &c), 0);
    T_EQ_INT(f.has_error, 1);
    T_ASSERT(f.error_msg == NULL);
    /* keys compare after unescaping */
    T_EQ_INT(scan("{\"choices\":[{\"delta\":{\"\\u0063ontent\":\"u\"}}]}", &f, &c), 0);
    T_EQ_STR(content(&c), "u");
    svc_buf_deinit(&c);
}

static void test_escapes_and_surrogates(void)
{
    struct meter_event_fields f;
    struct svc_buf c;

    svc_buf_init(&c, 1024);
    T_EQ_INT(scan("{\"choices\":[{\"text\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00E9\\u20ac"
                  "\\ud83d\\ude00\"}]}",
                  &f, &c),
             0);
    T_EQ_STR(content(&c), "\"\\/\b\f\n\r\t\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    T_EQ_INT(valid("{\"a\":\"\\ud83d\"}"), 0); /* high surrogate alone */
    T_EQ_INT(valid("{\"a\":\"\\ud83dx\"}"), 0);
    T_EQ_INT(valid("{\"a\":\"\\ud83d\\u0041\"}"), 0); /* not followed by a low one */
    T_EQ_INT(valid("{\"a\":\"\\ude00\"}"), 0);        /* low surrogate alone */
    T_EQ_INT(valid("{\"a\":\"\\u12\"}"), 0);
    T_EQ_INT(valid("{\"a\":\"\\x\"}"), 0);
    T_EQ_INT(valid("{\"a\":\"\\u0000\"}"), 0); /* no JSON_ALLOW_NUL */
    T_EQ_INT(valid("{\"\\u0000\":1}"), 0);
    T_EQ_INT(valid("{\"a\":\"\t\"}"), 0); /* a raw control byte */
    T_EQ_INT(valid_n("{\"a\":\"\0\"}", 8), 0);
    svc_buf_deinit(&c);
}

static void test_invalid_utf8(void)
{
    T_EQ_INT(valid("{\"a\":\"caf\xc3\xa9 \xf4\x8f\xbf\xbf\"}"), 1);
    T_EQ_INT(valid("{\"a\":\"\xc3\"}"), 0);             /* truncated */
    T_EQ_INT(valid("{\"a\":\"\xc0\xaf\"}"), 0);         /* overlong */
    T_EQ_INT(valid("{\"a\":\"\xe0\x80\xaf\"}"), 0);     /* overlong */
    T_EQ_INT(valid("{\"a\":\"\xed\xa0\x80\"}"), 0);     /* a surrogate */
    T_EQ_INT(valid("{\"a\":\"\xf4\x90\x80\x80\"}"), 0); /* above U+10FFFF */
    T_EQ_INT(valid("{\"a\":\"\x80\"}"), 0);             /* a lone continuation byte */
    T_EQ_INT(valid("{\"a\":\"\xe2\x82\"}"), 0);
    T_EQ_INT(valid("{\"a\":1}\xc3\xa9"), 0);
}

/* n nested arrays around inner, in an object member */
static int nested(int n, const char *inner)
{
    struct svc_buf b;
    int ok;

    svc_buf_init(&b, 1 << 20);
    T_EQ_INT(svc_buf_append_str(&b, "{\"a\":"), SVC_OK);
    for (int i = 0; i < n; i++)
        T_EQ_INT(svc_buf_append_str(&b, "["), SVC_OK);
    T_EQ_INT(svc_buf_append_str(&b, inner), SVC_OK);
    for (int i = 0; i < n; i++)
        T_EQ_INT(svc_buf_append_str(&b, "]"), SVC_OK);
    T_EQ_INT(svc_buf_append_str(&b, "}"), SVC_OK);
    ok = valid_n(b.data, b.len);
    svc_buf_deinit(&b);
    return ok;
}

static void test_depth_limit(void)
{
    /* jansson counts every value, scalars too; the top object is level 1, 2048 is the most */
    T_EQ_INT(nested(2047, ""), 1); /* the innermost array at 2048 */
    T_EQ_INT(nested(2048, ""), 0);
    T_EQ_INT(nested(2046, "1"), 1); /* the number at 2048 */
    T_EQ_INT(nested(2047, "1"), 0);
    T_EQ_INT(nested(2047, "\"s\""), 0);
}

static void test_integers(void)
{
    struct meter_event_fields f;
    struct svc_buf c;

    svc_buf_init(&c, 1024);
    T_EQ_INT(scan("{\"usage\":{\"prompt_tokens\":9223372036854775807,"
                  "\"completion_tokens\":-9223372036854775808}}",
                  &f, &c),
             0);
    T_ASSERT(f.usage_prompt == 9223372036854775807LL);
    T_ASSERT(f.usage_completion == -9223372036854775807LL - 1);
    T_EQ_INT(valid("{\"a\":9223372036854775808}"), 0); /* too big integer */
    T_EQ_INT(valid("{\"a\":-9223372036854775809}"), 0);
    T_EQ_INT(valid("{\"a\":99999999999999999999999}"), 0);
    T_EQ_INT(valid("{\"a\":99999999999999999999999.0}"), 1); /* a real is fine */
    T_EQ_INT(valid("{\"a\":1e308}"), 1);
    T_EQ_INT(valid("{\"a\":1e309}"), 0); /* overflows to inf */
    T_EQ_INT(valid("{\"a\":-1e999}"), 0);
    T_EQ_INT(valid("{\"a\":1e-999}"), 1); /* underflow is fine */
    T_EQ_INT(valid("{\"a\":01}"), 0);
    T_EQ_INT(valid("{\"a\":+1}"), 0);
    T_EQ_INT(valid("{\"a\":1.}"), 0);
    T_EQ_INT(valid("{\"a\":.5}"), 0);
    T_EQ_INT(valid("{\"a\":1e}"), 0);
    T_EQ_INT(valid("{\"a\":-}"), 0);
    T_EQ_INT(valid("{\"a\":-0.0e+5}"), 1);
    svc_buf_deinit(&c);
}

static void test_trailing_and_top_level(void)
{
    T_EQ_INT(valid(" \t\r\n{} \n"), 1);
    T_EQ_INT(valid("{}x"), 0);
    T_EQ_INT(valid("{} {}"), 0);
    T_EQ_INT(valid_n("{}\0", 3), 0);
    T_EQ_INT(valid("{\"a\":1,}"), 0);
    T_EQ_INT(valid("{\"a\" 1}"), 0);
    T_EQ_INT(valid("{\"a\":tru}"), 0);
    T_EQ_INT(valid("{\"a\":[true,false,null]}"), 1);
    T_EQ_INT(valid("[]"), 0); /* valid JSON, not an object */
    T_EQ_INT(valid("\"s\""), 0);
    T_EQ_INT(valid("1"), 0);
    T_EQ_INT(valid(""), 0);
    T_EQ_INT(valid("\f{}"), 0); /* not JSON whitespace */
    /* jansson's quirk: one NUL right after a number or a literal is skipped */
    T_EQ_INT(valid_n("{\"a\":1\0}", 8), 1);
    T_EQ_INT(valid_n("{\"a\":true\0}", 11), 1);
    T_EQ_INT(valid_n("{\"a\":1\0\0}", 9), 0);
    T_EQ_INT(valid_n("{\"a\":\"s\"\0}", 10), 0);
}

static void test_content_too_large(void)
{
    struct meter_event_fields f;
    struct svc_buf c;

    svc_buf_init(&c, 7);
    T_EQ_INT(svc_buf_append(&c, "abcde", 5), SVC_OK);
    T_EQ_INT(meter_event_scan("{\"usage\":{\"prompt_tokens\":3},\"choices\":[{\"text\":\"\\n12\","
                              "\"finish_reason\":\"stop\"}]}",
                              80, &f, &c),
             SVC_ETOOLARGE);
    T_EQ_STR(content(&c), "abcde"); /* unchanged */
    T_EQ_INT(f.has_usage, 1);
    T_EQ_INT(f.usage_prompt, 3);
    T_EQ_INT(f.has_finish, 1);
    svc_buf_deinit(&c);
}

/* meter_answer_scan: a whole JSON answer of each API */
static int answer(const char *data, struct meter_answer_fields *f, struct svc_buf *t)
{
    svc_buf_reset(t);
    return meter_answer_scan(data, strlen(data), f, t);
}

static void test_answers(void)
{
    struct meter_answer_fields f;
    struct svc_buf t;

    svc_buf_init(&t, 1 << 20);
    /* chat completion: message.content and the usage */
    T_EQ_INT(answer("{\"id\":\"c\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                    "\"content\":\"Hi \\u00e9\"},\"finish_reason\":\"stop\"}],"
                    "\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12}}",
                    &f, &t),
             SVC_OK);
    T_EQ_INT(f.has_usage, 1);
    T_EQ_INT(f.usage_prompt, 9);
    T_EQ_INT(f.usage_completion, 12);
    T_EQ_STR(content(&t), "Hi \xc3\xa9");
    /* legacy completion: choices[0].text; no usage */
    T_EQ_INT(answer("{\"choices\":[{\"text\":\"abc\"}]}", &f, &t), SVC_OK);
    T_EQ_INT(f.has_usage, 0);
    T_EQ_INT(f.usage_prompt, 0);
    T_EQ_STR(content(&t), "abc");
    /* message.content that is not a string falls back to text */
    T_EQ_INT(answer("{\"choices\":[{\"message\":{\"content\":null},\"text\":\"t\"}]}", &f, &t),
             SVC_OK);
    T_EQ_STR(content(&t), "t");
    /* Responses API: output_text and input/output_tokens */
    T_EQ_INT(answer("{\"object\":\"response\",\"output_text\":\"o\",\"usage\":{\"input_tokens\":7,"
                    "\"output_tokens\":4,\"prompt_tokens\":99}}",
                    &f, &t),
             SVC_OK);
    T_EQ_INT(f.usage_prompt, 7);
    T_EQ_INT(f.usage_completion, 4);
    T_EQ_STR(content(&t), "o");
    /* a choice that is not an object: output_text is the text */
    T_EQ_INT(answer("{\"choices\":[null],\"output_text\":\"x\"}", &f, &t), SVC_OK);
    T_EQ_STR(content(&t), "x");
    /* the last "message" wins, as in jansson */
    T_EQ_INT(answer("{\"choices\":[{\"message\":{\"content\":\"first\"},\"message\":{}}],"
                    "\"output_text\":\"y\"}",
                    &f, &t),
             SVC_OK);
    T_EQ_STR(content(&t), "y");
    /* an "error" member changes nothing for an answer */
    T_EQ_INT(answer("{\"error\":{\"message\":\"m\"},\"usage\":{\"prompt_tokens\":1}}", &f, &t),
             SVC_OK);
    T_EQ_INT(f.has_usage, 1);
    T_EQ_INT(f.usage_prompt, 1);
    /* not an object, or not JSON: nothing */
    T_EQ_INT(answer("[{\"usage\":{\"prompt_tokens\":1}}]", &f, &t), SVC_EINVAL);
    T_EQ_INT(f.has_usage, 0);
    T_EQ_INT(answer("{\"choices\":[{\"text\":\"abc\"}]", &f, &t), SVC_EINVAL);
    T_EQ_INT((int)t.len, 0);
    svc_buf_deinit(&t);
    /* a text that does not fit: the usage is read, the buffer is unchanged */
    svc_buf_init(&t, 4);
    T_EQ_INT(answer("{\"choices\":[{\"text\":\"too long\"}],\"usage\":{\"completion_tokens\":2}}",
                    &f, &t),
             SVC_ETOOLARGE);
    T_EQ_INT(f.usage_completion, 2);
    T_EQ_INT((int)t.len, 0);
    svc_buf_deinit(&t);
}

int main(void)
{
    T_RUN(test_chat_chunk);
    T_RUN(test_usage_chunk);
    T_RUN(test_responses_events);
    T_RUN(test_error_event);
    T_RUN(test_long_error_cut);
    T_RUN(test_duplicates_last_wins);
    T_RUN(test_escapes_and_surrogates);
    T_RUN(test_invalid_utf8);
    T_RUN(test_depth_limit);
    T_RUN(test_integers);
    T_RUN(test_trailing_and_top_level);
    T_RUN(test_content_too_large);
    T_RUN(test_answers);
    return 0;
}
