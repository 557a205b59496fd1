/*
 * Unit tests of svc/sse.h: events split across arbitrary byte boundaries (one shot, byte by byte
 * and random chunks must give the same events), CRLF/CR/LF, multi-line data joined with '\n',
 * comments and other fields ignored, "data:" without a space, SVC_ETOOLARGE, and a callback that
 * stops the feed.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/buf.h"
#include "svc/err.h"
#include "svc/sse.h"
#include "test.h"

/* Every event is recorded as "<data>" followed by a 0x1e separator, in one buffer. */
struct rec {
    struct svc_buf all;
    int count;
    int stop_at; /* return stop_rc on this event (1-based); 0 = never */
    int stop_rc;
};

static void rec_init(struct rec *r)
{
    svc_buf_init(&r->all, 1u << 22);
    r->count = 0;
    r->stop_at = 0;
    r->stop_rc = 0;
}

static int on_event(void *ud, const char *data, size_t len)
{
    struct rec *r = ud;

    T_ASSERT(data != NULL);
    T_EQ_INT(data[len], '\0');                 /* NUL-terminated */
    T_ASSERT(memchr(data, '\r', len) == NULL); /* CR always ends a line */
    T_EQ_INT(svc_buf_append(&r->all, data, len), SVC_OK);
    T_EQ_INT(svc_buf_append(&r->all, "\x1e", 1), SVC_OK);
    r->count++;
    if (r->stop_at != 0 && r->count == r->stop_at)
        return r->stop_rc;
    return 0;
}

/* Feeds text in pieces of the given sizes (cycled; 0 = all at once) and returns the record. */
static int feed_chunks(const char *text, size_t len, size_t max_event, const size_t *sizes,
                       size_t nsizes, struct rec *r)
{
    struct svc_sse s;
    size_t off = 0, k = 0;
    int rc = 0;

    svc_sse_init(&s, max_event);
    while (off < len && rc == 0) {
        size_t n = nsizes == 0 || sizes[k % nsizes] == 0 ? len - off : sizes[k % nsizes];
        if (n > len - off)
            n = len - off;
        rc = svc_sse_feed(&s, text + off, n, on_event, r);
        off += n;
        k++;
    }
    svc_sse_deinit(&s);
    return rc;
}

/* Feeds text at once and checks the events, given as one string with '|' between events. */
static void expect_events(const char *text, const char *want)
{
    static char empty[1];
    struct rec r;
    char *got;

    rec_init(&r);
    T_EQ_INT(feed_chunks(text, strlen(text), 4096, NULL, 0, &r), 0);
    got = r.all.data != NULL ? r.all.data : empty;
    for (char *p = got; *p; p++)
        if (*p == '\x1e')
            *p = '|';
    if (strcmp(got, want) != 0)
        T_FAIL("events of \"%s\": got \"%s\", want \"%s\"", text, got, want);
    svc_buf_deinit(&r.all);
}

static void test_single_event(void)
{
    expect_events("data: hello\n\n", "hello|");
    expect_events("data: a\n\ndata: b\n\n", "a|b|");
}

static void test_multiline_joined(void)
{
    expect_events("data: a\ndata: b\ndata: c\n\n", "a\nb\nc|");
    expect_events("data: a\ndata:\ndata: c\n\n", "a\n\nc|"); /* empty data line kept */
}

static void test_line_endings(void)
{
    expect_events("data: a\r\n\r\n", "a|");
    expect_events("data: a\r\r", "a|");
    expect_events("data: a\n\n", "a|");
    expect_events("data: a\r\ndata: b\rdata: c\n\r\n", "a\nb\nc|");
    expect_events("data: a\n\r\n", "a|");
    expect_events("data: a\r\n\n", "a|");
    /* CR LF LF: one CRLF then a blank LF line: one event, not two */
    expect_events("data: a\r\n\ndata: b\r\n\r\n", "a|b|");
    /* LF CR: two line ends, so a blank line */
    expect_events("data: a\n\rdata: b\n\n", "a|b|");
}

static void test_no_space_and_extra_spaces(void)
{
    expect_events("data:x\n\n", "x|");
    expect_events("data:  two\n\n", " two|"); /* only one space is stripped */
    expect_events("data: \n\n", "|");
    expect_events("data:\n\n", "|"); /* an empty data field still makes an event */
    expect_events("data:\tx\n\n", "\tx|");
    expect_events("data: trailing  \n\n", "trailing  |");
}

static void test_comments_and_fields_ignored(void)
{
    expect_events(": keep-alive\n\n", "");
    expect_events(":\n\n", "");
    expect_events("data: a\n: comment\ndata: b\n\n", "a\nb|");
    expect_events("event: delta\nid: 7\nretry: 1000\ndata: d\n\n", "d|");
    expect_events("event: ping\n\n", ""); /* no data, no event */
    expect_events("Data: x\n\n", "");     /* field names are case-sensitive */
    expect_events("datax: y\n\n", "");
    expect_events(" data: y\n\n", "");
    expect_events("\n\n\n\r\n\r\r", "");
}

static void test_incomplete_event_held(void)
{
    struct svc_sse s;
    struct rec r;

    rec_init(&r);
    svc_sse_init(&s, 1024);
    T_EQ_INT(svc_sse_feed(&s, "data: hel", 9, on_event, &r), 0);
    T_EQ_INT(r.count, 0);
    T_EQ_INT(svc_sse_feed(&s, "lo\n", 3, on_event, &r), 0);
    T_EQ_INT(r.count, 0); /* not dispatched before the blank line */
    T_EQ_INT(svc_sse_feed(&s, "", 0, on_event, &r), 0);
    T_EQ_INT(svc_sse_feed(&s, "\n", 1, on_event, &r), 0);
    T_EQ_INT(r.count, 1);
    T_EQ_STR(r.all.data, "hello\x1e");
    /* an unterminated event at the end of the stream is never delivered */
    T_EQ_INT(svc_sse_feed(&s, "data: tail\n", 11, on_event, &r), 0);
    T_EQ_INT(r.count, 1);
    svc_sse_deinit(&s);
    svc_buf_deinit(&r.all);
}

static void test_crlf_split_across_feeds(void)
{
    struct svc_sse s;
    struct rec r;

    rec_init(&r);
    svc_sse_init(&s, 1024);
    /* the LF of a CRLF arrives in the next feed: it must not count as a blank line */
    T_EQ_INT(svc_sse_feed(&s, "data: a\r", 8, on_event, &r), 0);
    T_EQ_INT(svc_sse_feed(&s, "\ndata: b\r", 9, on_event, &r), 0);
    T_EQ_INT(svc_sse_feed(&s, "\n", 1, on_event, &r), 0);
    T_EQ_INT(r.count, 0);
    T_EQ_INT(svc_sse_feed(&s, "\r", 1, on_event, &r), 0);
    T_EQ_INT(r.count, 1);
    T_EQ_INT(svc_sse_feed(&s, "\n", 1, on_event, &r), 0); /* LF of that CRLF: nothing */
    T_EQ_INT(r.count, 1);
    T_EQ_STR(r.all.data, "a\nb\x1e");
    svc_sse_deinit(&s);
    svc_buf_deinit(&r.all);
}

static void test_embedded_nul_and_utf8(void)
{
    static const char text[] = "data: a\0b\n\ndata: \xe2\x82\xac\n\n";
    struct rec r;

    rec_init(&r);
    T_EQ_INT(feed_chunks(text, sizeof(text) - 1, 64, NULL, 0, &r), 0);
    T_EQ_INT(r.count, 2);
    T_EQ_INT(r.all.len, 3 + 1 + 3 + 1);
    T_ASSERT(memcmp(r.all.data, "a\0b\x1e\xe2\x82\xac\x1e", 8) == 0);
    svc_buf_deinit(&r.all);
}

/* A stream with every feature; its events must not depend on how it is cut. */
static const char mixed[] =
    ": stream start\r\n"
    "retry: 3000\n"
    "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n"
    "data: {\"choices\":[{\"delta\":{\"content\":\"lo \xe4\xbd\xa0\"}}]}\r\n\r\n"
    "event: x\rdata:no-space\rdata:  two\r\r"
    "data: line1\r\ndata: line2\ndata: line3\r\r\n"
    ":comment only\n\n"
    "\n\n"
    "id: 9\ndata:\n\n"
    "data: [DONE]\n\n"
    "data: unterminated";

static void test_chunking_invariance(void)
{
    static const size_t one[] = {1};
    static const size_t odd[] = {2, 3, 5, 7, 11, 13};
    size_t len = sizeof(mixed) - 1;
    struct rec whole, r;
    size_t sizes[64];

    rec_init(&whole);
    T_EQ_INT(feed_chunks(mixed, len, 4096, NULL, 0, &whole), 0);
    T_EQ_INT(whole.count, 6);
    T_ASSERT(strstr(whole.all.data, "line1\nline2\nline3\x1e") != NULL);
    T_ASSERT(strstr(whole.all.data, "\x1e\x1e[DONE]\x1e") != NULL); /* the empty "data:" event */

    rec_init(&r);
    T_EQ_INT(feed_chunks(mixed, len, 4096, one, 1, &r), 0);
    T_EQ_INT(r.all.len, whole.all.len);
    T_ASSERT(memcmp(r.all.data, whole.all.data, whole.all.len) == 0);
    svc_buf_deinit(&r.all);

    rec_init(&r);
    T_EQ_INT(feed_chunks(mixed, len, 4096, odd, 6, &r), 0);
    T_EQ_INT(r.all.len, whole.all.len);
    T_ASSERT(memcmp(r.all.data, whole.all.data, whole.all.len) == 0);
    svc_buf_deinit(&r.all);

    /* every split point into two pieces */
    for (size_t cut = 0; cut <= len; cut++) {
        size_t two[2] = {cut, len};
        rec_init(&r);
        T_EQ_INT(feed_chunks(mixed, len, 4096, cut == 0 ? NULL : two, cut == 0 ? 0 : 2, &r), 0);
        if (r.all.len != whole.all.len || memcmp(r.all.data, whole.all.data, r.all.len) != 0)
            T_FAIL("split at %zu gives different events", cut);
        svc_buf_deinit(&r.all);
    }

    /* random chunk sizes, fixed seeds so a failure reproduces */
    for (unsigned seed = 1; seed <= 200; seed++) {
        srand(seed);
        for (size_t i = 0; i < 64; i++)
            sizes[i] = 1 + (size_t)rand() % 40;
        rec_init(&r);
        T_EQ_INT(feed_chunks(mixed, len, 4096, sizes, 64, &r), 0);
        if (r.all.len != whole.all.len || memcmp(r.all.data, whole.all.data, r.all.len) != 0)
            T_FAIL("seed %u gives different events", seed);
        svc_buf_deinit(&r.all);
    }
    svc_buf_deinit(&whole.all);
}

static void test_too_large_line(void)
{
    struct rec r;
    const char *ok = "data: 0123456789\n\n";   /* the line is exactly 16 bytes */
    const char *big = "data: 0123456789A\n\n"; /* 17 */
    static const size_t one[] = {1};

    rec_init(&r);
    T_EQ_INT(feed_chunks(ok, strlen(ok), 16, NULL, 0, &r), 0);
    T_EQ_INT(r.count, 1);
    svc_buf_deinit(&r.all);

    rec_init(&r);
    T_EQ_INT(feed_chunks(big, strlen(big), 16, NULL, 0, &r), SVC_ETOOLARGE);
    T_EQ_INT(r.count, 0);
    svc_buf_deinit(&r.all);

    rec_init(&r);
    T_EQ_INT(feed_chunks(big, strlen(big), 16, one, 1, &r), SVC_ETOOLARGE);
    T_EQ_INT(r.count, 0);
    svc_buf_deinit(&r.all);

    /* a long comment is a long line too */
    rec_init(&r);
    T_EQ_INT(feed_chunks(": 0123456789abcdef\n\n", 20, 16, NULL, 0, &r), SVC_ETOOLARGE);
    svc_buf_deinit(&r.all);
}

static void test_too_large_event(void)
{
    struct rec r;
    /* each line fits, the joined data "0123456789\n01234" is exactly 16 */
    const char *ok = "data: 0123456789\ndata: 01234\n\n";
    const char *big = "data: 0123456789\ndata: 012345\n\n";
    const char *two = "data: a\n\ndata: 0123456789\ndata: 012345\n\ndata: b\n\n";

    rec_init(&r);
    T_EQ_INT(feed_chunks(ok, strlen(ok), 16, NULL, 0, &r), 0);
    T_EQ_INT(r.count, 1);
    T_EQ_INT(r.all.len, 17);
    svc_buf_deinit(&r.all);

    rec_init(&r);
    T_EQ_INT(feed_chunks(big, strlen(big), 16, NULL, 0, &r), SVC_ETOOLARGE);
    T_EQ_INT(r.count, 0);
    svc_buf_deinit(&r.all);

    /* events before the oversized one were delivered */
    rec_init(&r);
    T_EQ_INT(feed_chunks(two, strlen(two), 16, NULL, 0, &r), SVC_ETOOLARGE);
    T_EQ_INT(r.count, 1);
    T_EQ_STR(r.all.data, "a\x1e");
    svc_buf_deinit(&r.all);
}

static void test_callback_stops_feed(void)
{
    const char *text = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
    struct svc_sse s;
    struct rec r;

    rec_init(&r);
    r.stop_at = 2;
    r.stop_rc = 7;
    svc_sse_init(&s, 64);
    T_EQ_INT(svc_sse_feed(&s, text, strlen(text), on_event, &r), 7);
    T_EQ_INT(r.count, 2); /* the third event was not delivered */
    T_EQ_STR(r.all.data, "1\x1e"
                         "2\x1e");
    svc_sse_deinit(&s);
    svc_buf_deinit(&r.all);

    /* a negative error code is passed through as well */
    rec_init(&r);
    r.stop_at = 1;
    r.stop_rc = SVC_EIO;
    T_EQ_INT(feed_chunks(text, strlen(text), 64, NULL, 0, &r), SVC_EIO);
    T_EQ_INT(r.count, 1);
    svc_buf_deinit(&r.all);
}

static void test_deinit_twice_and_reuse(void)
{
    struct svc_sse s;
    struct rec r;

    rec_init(&r);
    svc_sse_init(&s, 64);
    T_EQ_INT(svc_sse_feed(&s, "data: x\n", 8, on_event, &r), 0);
    svc_sse_deinit(&s);
    svc_sse_deinit(&s);
    svc_sse_init(&s, 64); /* a fresh parser forgets the half event */
    T_EQ_INT(svc_sse_feed(&s, "\n", 1, on_event, &r), 0);
    T_EQ_INT(r.count, 0);
    svc_sse_deinit(&s);
    svc_buf_deinit(&r.all);
}

/*
 * KNOWN BUG (common/sse.c sse_line): the header promises the WHATWG rules, under which a line
 * with no colon is a field whose name is the whole line and whose value is empty; so a bare
 * "data" line adds an empty data line and "data\n\n" dispatches an event with data "".
 * sse_line only recognises the "data:" prefix and ignores the bare "data" line.
 */
static void test_bug_bare_data_field(void)
{
    expect_events("data\n\n", "|");
    expect_events("data: a\ndata\ndata: b\n\n", "a\n\nb|");
}

/*
 * KNOWN BUG (common/sse.c): WHATWG's stream decoder drops one leading U+FEFF BOM; here it is kept
 * as part of the first line, so "\xEF\xBB\xBFdata: x" is not a data line and the event is lost.
 */
static void test_bug_leading_bom(void)
{
    expect_events("\xef\xbb\xbf"
                  "data: x\n\n",
                  "x|");
}

int main(void)
{
    T_RUN(test_single_event);
    T_RUN(test_multiline_joined);
    T_RUN(test_line_endings);
    T_RUN(test_no_space_and_extra_spaces);
    T_RUN(test_comments_and_fields_ignored);
    T_RUN(test_incomplete_event_held);
    T_RUN(test_crlf_split_across_feeds);
    T_RUN(test_embedded_nul_and_utf8);
    T_RUN(test_chunking_invariance);
    T_RUN(test_too_large_line);
    T_RUN(test_too_large_event);
    T_RUN(test_callback_stops_feed);
    T_RUN(test_deinit_twice_and_reuse);
    T_RUN(test_bug_bare_data_field);
    T_RUN(test_bug_leading_bom);
    return 0;
}
