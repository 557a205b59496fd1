/*
 * Unit tests of svc/modelmap.h: the built-in table (longest prefix wins, "ft:" names by their
 * base model, the default for unknown names), MODEL_WINDOWS overrides and their errors, and
 * chat-format counting against the figures the OpenAI cookbook prints ("How to count tokens with
 * tiktoken", section 6): 129 prompt tokens for gpt-3.5-turbo / gpt-4, 124 for gpt-4o /
 * gpt-4o-mini, 127 for gpt-3.5-turbo-0301 (4 per message, -1 per name). The same totals come out
 * of the tiktoken npm package with the cookbook's function.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/err.h"
#include "svc/modelmap.h"
#include "svc/tokenizer.h"
#include "test.h"

static struct svc_modelmap *map(const char *overrides)
{
    struct svc_modelmap *m = NULL;
    char err[256];

    if (svc_modelmap_create(&m, overrides, err, sizeof(err)) != SVC_OK)
        T_FAIL("svc_modelmap_create(\"%s\"): %s", overrides ? overrides : "(null)", err);
    T_ASSERT(m != NULL);
    return m;
}

static void expect(const struct svc_modelmap *m, const char *model,
                   enum svc_tokenizer_encoding_e enc, long long window, int reasoning, int known)
{
    struct svc_modelmap_info mi;

    memset(&mi, 0x5a, sizeof(mi));
    svc_modelmap_lookup(m, model, &mi);
    if (mi.encoding != enc || mi.context_window != window || mi.reasoning != reasoning ||
        mi.known != known)
        T_FAIL("%s: got %s/%lld/reasoning %d/known %d, want %s/%lld/%d/%d", model ? model : "NULL",
               svc_tokenizer_encoding_name(mi.encoding), mi.context_window, mi.reasoning, mi.known,
               svc_tokenizer_encoding_name(enc), window, reasoning, known);
}

#define CL SVC_TOK_CL100K_BASE
#define O2 SVC_TOK_O200K_BASE

static void test_builtin_table(void)
{
    struct svc_modelmap *m = map(NULL);

    expect(m, "gpt-3.5-turbo", CL, 16385, 0, 1);
    expect(m, "gpt-3.5-turbo-0125", CL, 16385, 0, 1);
    expect(m, "gpt-3.5-turbo-1106", CL, 16385, 0, 1);
    expect(m, "gpt-3.5-turbo-16k-0613", CL, 16385, 0, 1);
    expect(m, "gpt-3.5-turbo-instruct", CL, 4096, 0, 1);
    expect(m, "gpt-3.5-turbo-instruct-0914", CL, 4096, 0, 1);
    expect(m, "gpt-3.5-turbo-0301", CL, 4096, 0, 1);
    expect(m, "gpt-4", CL, 8192, 0, 1);
    expect(m, "gpt-4-0613", CL, 8192, 0, 1);
    expect(m, "gpt-4-0314", CL, 8192, 0, 1);
    expect(m, "gpt-4-32k", CL, 32768, 0, 1);
    expect(m, "gpt-4-32k-0613", CL, 32768, 0, 1);
    expect(m, "gpt-4-turbo", CL, 128000, 0, 1);
    expect(m, "gpt-4-turbo-2024-04-09", CL, 128000, 0, 1);
    expect(m, "gpt-4-turbo-preview", CL, 128000, 0, 1);
    expect(m, "gpt-4-1106-preview", CL, 128000, 0, 1);
    expect(m, "gpt-4-0125-preview", CL, 128000, 0, 1);
    expect(m, "gpt-4o", O2, 128000, 0, 1);
    expect(m, "gpt-4o-mini", O2, 128000, 0, 1);
    expect(m, "gpt-4o-2024-08-06", O2, 128000, 0, 1);
    expect(m, "chatgpt-4o-latest", O2, 128000, 0, 1);
    expect(m, "gpt-4.1", O2, 1047576, 0, 1);
    expect(m, "gpt-4.1-mini", O2, 1047576, 0, 1);
    expect(m, "gpt-4.1-nano-2025-04-14", O2, 1047576, 0, 1);
    expect(m, "gpt-5", O2, 400000, 1, 1);
    expect(m, "gpt-5-mini", O2, 400000, 1, 1);
    expect(m, "gpt-5-nano-2025-08-07", O2, 400000, 1, 1);
    expect(m, "gpt-5-chat-latest", O2, 128000, 1, 1);
    expect(m, "o1", O2, 200000, 1, 1);
    expect(m, "o1-2024-12-17", O2, 200000, 1, 1);
    expect(m, "o1-mini", O2, 128000, 1, 1);
    expect(m, "o1-preview", O2, 128000, 1, 1);
    expect(m, "o3", O2, 200000, 1, 1);
    expect(m, "o3-mini", O2, 200000, 1, 1);
    expect(m, "o4-mini", O2, 200000, 1, 1);
    expect(m, "text-embedding-3-small", CL, 8191, 0, 1);
    expect(m, "text-embedding-3-large", CL, 8191, 0, 1);
    expect(m, "text-embedding-ada-002", CL, 8191, 0, 1);
    svc_modelmap_destroy(&m);
    T_ASSERT(m == NULL);
    svc_modelmap_destroy(&m); /* NULL is fine */
    svc_modelmap_destroy(NULL);
}

static void test_overheads(void)
{
    struct svc_modelmap *m = map(NULL);
    struct svc_modelmap_info mi;

    svc_modelmap_lookup(m, "gpt-3.5-turbo-0301", &mi);
    T_EQ_INT(mi.tokens_per_message, 4);
    T_EQ_INT(mi.tokens_per_name, -1);
    svc_modelmap_lookup(m, "gpt-3.5-turbo-0613", &mi);
    T_EQ_INT(mi.tokens_per_message, 3);
    T_EQ_INT(mi.tokens_per_name, 1);
    svc_modelmap_lookup(m, "gpt-4o", &mi);
    T_EQ_INT(mi.tokens_per_message, 3);
    T_EQ_INT(mi.tokens_per_name, 1);
    T_EQ_INT(svc_modelmap_reply_priming(&mi), 3);
    svc_modelmap_lookup(m, "no-such-model", &mi);
    T_EQ_INT(mi.tokens_per_message, 3);
    T_EQ_INT(mi.tokens_per_name, 1);
    svc_modelmap_destroy(&m);
}

static void test_fine_tuned_and_default(void)
{
    struct svc_modelmap *m = map("");

    expect(m, "ft:gpt-4o-mini-2024-07-18:my-org::abc123", O2, 128000, 0, 1);
    expect(m, "ft:gpt-3.5-turbo-0125:acme:custom:9xyz", CL, 16385, 0, 1);
    expect(m, "ft:gpt-4.1-2025-04-14:org::id", O2, 1047576, 0, 1);
    expect(m, "ft:o4-mini-2025-04-16:org::id", O2, 200000, 1, 1);
    expect(m, "ft:", CL, 8192, 0, 0);
    expect(m, "ft:unknown-base:x", CL, 8192, 0, 0);
    /* unknown, empty and NULL names: the default, never a window of 0 */
    expect(m, "llama-3-70b", CL, 8192, 0, 0);
    expect(m, "", CL, 8192, 0, 0);
    expect(m, NULL, CL, 8192, 0, 0);
    expect(m, "GPT-4O", CL, 8192, 0, 0); /* names are case-sensitive, as OpenAI's are */
    expect(m, "gpt", CL, 8192, 0, 0);
    svc_modelmap_destroy(&m);
}

static void test_overrides(void)
{
    struct svc_modelmap *m =
        map("my-llama=8192:cl100k_base, gpt-4o=64000 ,*=32000:o200k_base,local-gpt=4096,"
            "ft:gpt-4o-mini:acme=1000,o3=100000,gpt-4o-mini-special=2000:cl100k_base");

    /* a new prefix with an encoding */
    expect(m, "my-llama", CL, 8192, 0, 1);
    expect(m, "my-llama-3-8b", CL, 8192, 0, 1);
    /* overriding a built-in keeps its encoding and request shape */
    expect(m, "gpt-4o", O2, 64000, 0, 1);
    expect(m, "gpt-4o-mini", O2, 64000, 0, 1);
    expect(m, "o3", O2, 100000, 1, 1);
    expect(m, "o3-mini", O2, 100000, 1, 1);
    expect(m, "o1", O2, 200000, 1, 1); /* untouched */
    /* a longer override under a built-in prefix wins, with the encoding it names */
    expect(m, "gpt-4o-mini-special-1", CL, 2000, 0, 1);
    /* "*": the default for unknown names, window and encoding */
    expect(m, "totally-unknown", O2, 32000, 0, 0);
    /* a new prefix without an encoding takes the default's (even when "*" comes earlier) */
    expect(m, "local-gpt-7b", O2, 4096, 0, 1);
    /* an override for a fine-tuned name beats its base model */
    expect(m, "ft:gpt-4o-mini:acme::xyz", O2, 1000, 0, 1);
    expect(m, "ft:gpt-4o-mini:other::xyz", O2, 64000, 0, 1);
    svc_modelmap_destroy(&m);

    /* "*" without an encoding keeps cl100k_base; a later "*" wins */
    m = map("*=1000,*=2000");
    expect(m, "whatever", CL, 2000, 0, 0);
    svc_modelmap_destroy(&m);
    /* whole: without an encoding it is cl100k_base again, not an earlier "*"'s (fuzz_config) */
    m = map("*=1000:o200k_base,*=2000");
    expect(m, "whatever", CL, 2000, 0, 0);
    expect(m, "local-x", CL, 2000, 0, 0);
    svc_modelmap_destroy(&m);
    m = map("*=1000:o200k_base,local-=5,*=2000");
    expect(m, "local-x", CL, 5, 0, 1); /* the default's encoding, where "*" stands last */
    svc_modelmap_destroy(&m);

    /* the window may be large */
    m = map("gpt-4.1=1000000000");
    expect(m, "gpt-4.1-mini", O2, 1000000000, 0, 1);
    svc_modelmap_destroy(&m);
}

static void expect_bad(const char *overrides, const char *needle)
{
    struct svc_modelmap *m = (struct svc_modelmap *)1;
    char err[200] = "untouched";

    T_EQ_INT(svc_modelmap_create(&m, overrides, err, sizeof(err)), SVC_EINVAL);
    T_ASSERT(m == NULL);
    if (strstr(err, needle) == NULL || strstr(err, "MODEL_WINDOWS") == NULL)
        T_FAIL("\"%s\": error \"%s\" does not name \"%s\"", overrides, err, needle);
}

static void test_bad_overrides(void)
{
    expect_bad("gpt-4o", "\"gpt-4o\"");                         /* no '=' */
    expect_bad("gpt-4o=", "\"gpt-4o=\"");                       /* no window */
    expect_bad("=8192", "\"=8192\"");                           /* no prefix */
    expect_bad("gpt-4o=0", "\"gpt-4o=0\"");                     /* window 0 */
    expect_bad("gpt-4o=-5", "\"gpt-4o=-5\"");
    expect_bad("gpt-4o=+5", "\"gpt-4o=+5\"");
    expect_bad("gpt-4o=8k", "\"gpt-4o=8k\"");
    expect_bad("gpt-4o=1000000001", "1000000001");
    expect_bad("gpt-4o=99999999999999999999999", "9999");
    expect_bad("gpt-4o=8192:p50k_base", "p50k_base");           /* unknown encoding */
    expect_bad("gpt-4o=8192:", "\"gpt-4o=8192:\"");
    expect_bad("gpt-4o=8192:o200k_base:x", "o200k_base:x");
    expect_bad("a=1,,b=2", "empty entry");
    expect_bad("a=1,", "empty entry");
    expect_bad(",a=1", "empty entry");
    expect_bad("  ", "empty entry");
    expect_bad("my model=100", "\"my model=100\"");             /* blank inside the prefix */
    expect_bad("a=1,b=2,a=3", "given twice");
    expect_bad("ok=1,bad", "\"bad\"");                          /* names the bad one */

    /* a NULL or too small error buffer is fine */
    {
        struct svc_modelmap *m = NULL;
        char tiny[8];
        T_EQ_INT(svc_modelmap_create(&m, "x", NULL, 0), SVC_EINVAL);
        T_EQ_INT(svc_modelmap_create(&m, "x", tiny, sizeof(tiny)), SVC_EINVAL);
        T_EQ_INT(strlen(tiny), sizeof(tiny) - 1);
    }
    /* at most 256 entries */
    {
        struct svc_modelmap *m256;
        char *big = malloc(300 * 16);
        size_t o = 0;
        T_ASSERT(big != NULL);
        for (int i = 0; i < 257; i++)
            o += (size_t)snprintf(big + o, 300 * 16 - o, "%sm%d=1", i ? "," : "", i);
        expect_bad(big, "more than 256");
        big[o - strlen(",m256=1")] = '\0'; /* 256 entries are fine */
        m256 = map(big);
        expect(m256, "m255-x", SVC_TOK_CL100K_BASE, 1, 0, 1);
        svc_modelmap_destroy(&m256);
        free(big);
    }
}

/* The cookbook's example: six messages, four of them with a name. */
static const struct {
    const char *role, *name, *content;
} cookbook[] = {
    {"system", NULL,
     "You are a helpful, pattern-following assistant that translates corporate jargon into plain "
     "English."},
    {"system", "example_user", "New synergies will help drive top-line growth."},
    {"system", "example_assistant", "Things working well together will increase revenue."},
    {"system", "example_user",
     "Let's circle back when we have more bandwidth to touch base on opportunities for increased "
     "leverage."},
    {"system", "example_assistant", "Let's talk later when we're less busy about how to do better."},
    {"user", NULL,
     "This late pivot means we don't have time to boil the ocean for the client deliverable."},
};

static long long cookbook_count(const struct svc_modelmap *m, const char *model)
{
    struct svc_modelmap_info mi;
    long long total;

    svc_modelmap_lookup(m, model, &mi);
    total = svc_modelmap_reply_priming(&mi);
    for (size_t i = 0; i < sizeof(cookbook) / sizeof(cookbook[0]); i++) {
        long long n = svc_modelmap_message_tokens(&mi, cookbook[i].role, cookbook[i].content,
                                                  strlen(cookbook[i].content), cookbook[i].name);
        T_ASSERT(n > 0);
        total += n;
    }
    return total;
}

static void test_cookbook_example(void)
{
    struct svc_modelmap *m = map(NULL);

    T_EQ_INT(cookbook_count(m, "gpt-3.5-turbo"), 129);
    T_EQ_INT(cookbook_count(m, "gpt-4-0613"), 129);
    T_EQ_INT(cookbook_count(m, "gpt-4"), 129);
    T_EQ_INT(cookbook_count(m, "gpt-4o"), 124);
    T_EQ_INT(cookbook_count(m, "gpt-4o-mini"), 124);
    T_EQ_INT(cookbook_count(m, "gpt-3.5-turbo-0301"), 127);
    svc_modelmap_destroy(&m);
}

static void test_message_tokens(void)
{
    struct svc_modelmap *m = map(NULL);
    struct svc_modelmap_info mi;

    svc_modelmap_lookup(m, "gpt-4o", &mi);
    /* 3 + "user" (1) + "" (0) */
    T_EQ_INT(svc_modelmap_message_tokens(&mi, "user", "", 0, NULL), 4);
    T_EQ_INT(svc_modelmap_message_tokens(&mi, "user", NULL, 0, NULL), 4);
    /* 3 + 1 + "Hello world" (2) + "bob" (1) + 1 */
    T_EQ_INT(svc_modelmap_message_tokens(&mi, "user", "Hello world", 11, "bob"), 8);
    /* content is bytes: NUL inside counts ("a\0b" is 3 tokens in o200k_base) */
    T_EQ_INT(svc_modelmap_message_tokens(&mi, "user", "a\0b", 3, NULL), 3 + 1 + 3);
    svc_modelmap_lookup(m, "gpt-3.5-turbo-0301", &mi);
    /* 4 + 1 + 2 + 1 - 1 */
    T_EQ_INT(svc_modelmap_message_tokens(&mi, "user", "Hello world", 11, "bob"), 7);
    svc_modelmap_destroy(&m);
}

int main(void)
{
    T_RUN(test_builtin_table);
    T_RUN(test_overheads);
    T_RUN(test_fine_tuned_and_default);
    T_RUN(test_overrides);
    T_RUN(test_bad_overrides);
    T_RUN(test_cookbook_example);
    T_RUN(test_message_tokens);
    return 0;
}
