/*
 * Unit tests of svc/cfg.h: Go-style booleans, ranged base-10 integers, host:port parsing and
 * svc_cfg_load_env (empty = unset, defaults, a bad value is SVC_EINVAL with a message naming the
 * variable). Variables are named TCFG_* so nothing else in the environment interferes.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/cfg.h"
#include "svc/err.h"
#include "test.h"

#include <unistd.h>

/* ---- svc_cfg_parse_bool ------------------------------------------------------------------- */

static void test_bool_go_rules(void)
{
    static const char *yes[] = {"1", "t", "T", "TRUE", "true", "True"};
    static const char *no[] = {"0", "f", "F", "FALSE", "false", "False"};

    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        T_EQ_INT(svc_cfg_parse_bool(yes[i]), 1);
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        T_EQ_INT(svc_cfg_parse_bool(no[i]), 0);
}

static void test_bool_rejects(void)
{
    /* Go's strconv.ParseBool rejects all of these */
    static const char *bad[] = {"",      "yes", "no",    "on",     "off",   "tRUE",  "TrUe",
                                "FaLsE", "2",   "-1",    "01",     " true", "true ", "true\n",
                                "y",     "n",   "truee", "falsey", "1.0",   "tt"};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int v = svc_cfg_parse_bool(bad[i]);
        if (v != -1)
            T_FAIL("parse_bool(\"%s\") = %d, want -1", bad[i], v);
    }
}

/* ---- svc_cfg_parse_int -------------------------------------------------------------------- */

static void test_int_ok(void)
{
    int64_t v = -7;

    T_EQ_INT(svc_cfg_parse_int("0", 0, 10, &v), SVC_OK);
    T_EQ_INT(v, 0);
    T_EQ_INT(svc_cfg_parse_int("10", 0, 10, &v), SVC_OK); /* max inclusive */
    T_EQ_INT(v, 10);
    T_EQ_INT(svc_cfg_parse_int("-5", -5, 5, &v), SVC_OK); /* min inclusive */
    T_EQ_INT(v, -5);
    T_EQ_INT(svc_cfg_parse_int("+7", 0, 10, &v), SVC_OK); /* Go's ParseInt takes a '+' too */
    T_EQ_INT(v, 7);
    T_EQ_INT(svc_cfg_parse_int(" 4", 0, 10, &v), SVC_EINVAL); /* no blanks, as in Go */
    T_EQ_INT(svc_cfg_parse_int("\t4", 0, 10, &v), SVC_EINVAL);
    T_EQ_INT(svc_cfg_parse_int("0042", 0, 100, &v), SVC_OK); /* base 10, not octal */
    T_EQ_INT(v, 42);
    T_EQ_INT(svc_cfg_parse_int("010", 0, 100, &v), SVC_OK);
    T_EQ_INT(v, 10);
    T_EQ_INT(svc_cfg_parse_int("9223372036854775807", INT64_MIN, INT64_MAX, &v), SVC_OK);
    T_ASSERT(v == INT64_MAX);
    T_EQ_INT(svc_cfg_parse_int("-9223372036854775808", INT64_MIN, INT64_MAX, &v), SVC_OK);
    T_ASSERT(v == INT64_MIN);
}

static void test_int_range(void)
{
    int64_t v = 123;

    T_EQ_INT(svc_cfg_parse_int("11", 0, 10, &v), SVC_EINVAL);
    T_EQ_INT(svc_cfg_parse_int("-1", 0, 10, &v), SVC_EINVAL);
    T_EQ_INT(svc_cfg_parse_int("1023", 1024, 67108864, &v), SVC_EINVAL);
    T_EQ_INT(svc_cfg_parse_int("67108865", 1024, 67108864, &v), SVC_EINVAL);
    T_EQ_INT(v, 123); /* out untouched on error */
}

static void test_int_garbage(void)
{
    static const char *bad[] = {"",     "-",     "+",   "abc", "12abc", "1.5", "1e3",
                                "0x10", "30m",   "1 2", "5 ",  "5\n",   "--5", "+-5",
                                "٣",    "1,000", "NaN", "inf", "0b1",   "5\t"};
    int64_t v = 99;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = svc_cfg_parse_int(bad[i], INT64_MIN, INT64_MAX, &v);
        if (rc != SVC_EINVAL)
            T_FAIL("parse_int(\"%s\") = %d, want SVC_EINVAL", bad[i], rc);
    }
    T_EQ_INT(v, 99);
    T_EQ_INT(svc_cfg_parse_int(NULL, 0, 10, &v), SVC_EINVAL);
}

static void test_int_overflow(void)
{
    int64_t v = 5;

    T_EQ_INT(svc_cfg_parse_int("9223372036854775808", INT64_MIN, INT64_MAX, &v), SVC_EINVAL);
    T_EQ_INT(svc_cfg_parse_int("-9223372036854775809", INT64_MIN, INT64_MAX, &v), SVC_EINVAL);
    T_EQ_INT(svc_cfg_parse_int("99999999999999999999999999", INT64_MIN, INT64_MAX, &v), SVC_EINVAL);
    T_EQ_INT(svc_cfg_parse_int("18446744073709551616", 0, INT64_MAX, &v), SVC_EINVAL);
    T_EQ_INT(v, 5);
}

/* ---- svc_cfg_parse_addr ------------------------------------------------------------------- */

static void test_addr_v4_and_names(void)
{
    char host[256];
    int port = -1;

    T_EQ_INT(svc_cfg_parse_addr("0.0.0.0:8080", host, sizeof(host), &port), SVC_OK);
    T_EQ_STR(host, "0.0.0.0");
    T_EQ_INT(port, 8080);
    T_EQ_INT(svc_cfg_parse_addr("127.0.0.1:0", host, sizeof(host), &port), SVC_OK);
    T_EQ_STR(host, "127.0.0.1");
    T_EQ_INT(port, 0);
    T_EQ_INT(svc_cfg_parse_addr("redis.svc.cluster.local:65535", host, sizeof(host), &port),
             SVC_OK);
    T_EQ_STR(host, "redis.svc.cluster.local");
    T_EQ_INT(port, 65535);
}

static void test_addr_v6(void)
{
    char host[256];
    int port = -1;

    T_EQ_INT(svc_cfg_parse_addr("[::1]:9090", host, sizeof(host), &port), SVC_OK);
    T_EQ_STR(host, "::1");
    T_EQ_INT(port, 9090);
    T_EQ_INT(svc_cfg_parse_addr("[::]:80", host, sizeof(host), &port), SVC_OK);
    T_EQ_STR(host, "::");
    T_EQ_INT(port, 80);
    T_EQ_INT(svc_cfg_parse_addr("[fe80::1%eth0]:443", host, sizeof(host), &port), SVC_OK);
    T_EQ_STR(host, "fe80::1%eth0");
    T_EQ_INT(port, 443);
}

static void test_addr_bad(void)
{
    static const char *bad[] = {
        "",           "localhost", ":8080",    "host:",     "host:65536",
        "host:-1",    "host:http", "host:80x", "[::1]",     "[::1]:",
        "[::1]8080",  "[::1:8080", "[]:80",    "[::1]:abc", "1.2.3.4:9999999999999999999",
        "host:8080 ",
    };
    char host[256];
    int port = 4242;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = svc_cfg_parse_addr(bad[i], host, sizeof(host), &port);
        if (rc != SVC_EINVAL)
            T_FAIL("parse_addr(\"%s\") = %d, want SVC_EINVAL", bad[i], rc);
    }
    T_EQ_INT(port, 4242);
}

static void test_addr_hostlen(void)
{
    char host[8];
    int port = 0;

    memset(host, 'Z', sizeof(host));
    /* 7 bytes + NUL fit exactly */
    T_EQ_INT(svc_cfg_parse_addr("abcdefg:1", host, sizeof(host), &port), SVC_OK);
    T_EQ_STR(host, "abcdefg");
    /* 8 do not, and nothing is written past the buffer */
    T_EQ_INT(svc_cfg_parse_addr("abcdefgh:1", host, sizeof(host), &port), SVC_EINVAL);
    T_EQ_INT(svc_cfg_parse_addr("[abcdefgh]:1", host, sizeof(host), &port), SVC_EINVAL);
    T_EQ_INT(svc_cfg_parse_addr("[abcdefg]:2", host, sizeof(host), &port), SVC_OK);
    T_EQ_STR(host, "abcdefg");
    T_EQ_INT(port, 2);
    T_EQ_INT(svc_cfg_parse_addr("a:1", host, 1, &port), SVC_EINVAL); /* no room for "a" */
}

/* ---- svc_cfg_load_env ---------------------------------------------------------------------- */

#define TEST_OPTIONS(ACTION)                                                                       \
    ACTION(TCFG_FLAG, SVC_OPT_BOOL, "false", 0, 0, "a flag")                                       \
    ACTION(TCFG_COUNT, SVC_OPT_INT, "30", 1, 100, "a count")                                       \
    ACTION(TCFG_NAME, SVC_OPT_STR, "anon", 0, 0, "a name")                                         \
    ACTION(TCFG_KEY, SVC_OPT_SECRET, NULL, 0, 0, "a secret")                                       \
    ACTION(TCFG_ADDR, SVC_OPT_ADDR, "127.0.0.1:6379", 0, 0, "an address")                          \
    ACTION(TCFG_URL, SVC_OPT_URL, "", 0, 0, "an upstream")

struct test_setting {
    TEST_OPTIONS(SVC_OPTION_DECLARE)
};

static void unset_all(void)
{
    unsetenv("TCFG_FLAG");
    unsetenv("TCFG_COUNT");
    unsetenv("TCFG_NAME");
    unsetenv("TCFG_KEY");
    unsetenv("TCFG_ADDR");
    unsetenv("TCFG_URL");
}

static int load(struct test_setting *s, char *err, size_t errlen)
{
    struct test_setting fresh = {TEST_OPTIONS(SVC_OPTION_INIT)};

    *s = fresh;
    err[0] = '\0';
    return svc_cfg_load_env((struct svc_cfg_option *)s, SVC_OPTION_COUNT(*s), err, errlen);
}

static void test_env_defaults(void)
{
    struct test_setting s;
    char err[256];

    unset_all();
    T_EQ_INT(SVC_OPTION_COUNT(s), 6);
    T_EQ_INT(load(&s, err, sizeof(err)), SVC_OK);
    T_EQ_INT(s.TCFG_FLAG.is_set, 0);
    T_EQ_INT(s.TCFG_FLAG.i, 0);
    T_EQ_STR(s.TCFG_FLAG.s, "false");
    T_EQ_INT(s.TCFG_COUNT.i, 30);
    T_EQ_STR(s.TCFG_COUNT.s, "30");
    T_EQ_STR(s.TCFG_NAME.s, "anon");
    T_EQ_STR(s.TCFG_KEY.s, ""); /* no default: "" */
    T_EQ_INT(s.TCFG_KEY.is_set, 0);
    T_EQ_STR(s.TCFG_ADDR.s, "127.0.0.1:6379");
    T_EQ_STR(s.TCFG_URL.s, ""); /* an empty default is not validated as a URL */
}

static void test_env_values(void)
{
    struct test_setting s;
    char err[256];

    unset_all();
    setenv("TCFG_FLAG", "True", 1);
    setenv("TCFG_COUNT", "100", 1);
    setenv("TCFG_NAME", "bob", 1);
    setenv("TCFG_KEY", "s3cret", 1);
    setenv("TCFG_ADDR", "[::1]:7000", 1);
    setenv("TCFG_URL", "https://api.example.com/v1", 1);
    T_EQ_INT(load(&s, err, sizeof(err)), SVC_OK);
    T_EQ_INT(s.TCFG_FLAG.is_set, 1);
    T_EQ_INT(s.TCFG_FLAG.i, 1);
    T_EQ_INT(s.TCFG_COUNT.i, 100);
    T_EQ_INT(s.TCFG_COUNT.is_set, 1);
    T_EQ_STR(s.TCFG_NAME.s, "bob");
    T_EQ_STR(s.TCFG_KEY.s, "s3cret");
    T_EQ_STR(s.TCFG_ADDR.s, "[::1]:7000");
    T_EQ_STR(s.TCFG_URL.s, "https://api.example.com/v1");
    unset_all();
}

static void test_env_empty_is_unset(void)
{
    struct test_setting s;
    char err[256];

    unset_all();
    setenv("TCFG_COUNT", "", 1);
    setenv("TCFG_FLAG", "", 1);
    setenv("TCFG_NAME", "", 1);
    T_EQ_INT(load(&s, err, sizeof(err)), SVC_OK);
    T_EQ_INT(s.TCFG_COUNT.is_set, 0);
    T_EQ_INT(s.TCFG_COUNT.i, 30);
    T_EQ_INT(s.TCFG_FLAG.is_set, 0);
    T_EQ_STR(s.TCFG_NAME.s, "anon");
    unset_all();
}

/* Loads with one variable set to a bad value; the message must name that variable. */
static void expect_bad(const char *name, const char *value, const char *needle)
{
    struct test_setting s;
    char err[256];

    unset_all();
    setenv(name, value, 1);
    T_EQ_INT(load(&s, err, sizeof(err)), SVC_EINVAL);
    if (strncmp(err, name, strlen(name)) != 0 || strstr(err, needle) == NULL)
        T_FAIL("%s=\"%s\": message \"%s\" should start with the name and contain \"%s\"", name,
               value, err, needle);
    T_ASSERT(strchr(err, '\n') == NULL); /* one line */
    unset_all();
}

static void test_env_bad_values(void)
{
    expect_bad("TCFG_FLAG", "yes", "boolean");
    expect_bad("TCFG_COUNT", "30m", "\"30m\"");
    expect_bad("TCFG_COUNT", "0", "[1, 100]");
    expect_bad("TCFG_COUNT", "101", "integer");
    expect_bad("TCFG_COUNT", "99999999999999999999", "integer");
    expect_bad("TCFG_ADDR", "localhost", "host:port");
    expect_bad("TCFG_ADDR", "[::1]", "host:port");
    expect_bad("TCFG_URL", "ftp://x", "URL");
    expect_bad("TCFG_URL", "api.example.com", "URL");
    {
        /* longer than the request buffers it is formatted into: refused, never cut */
        char url[SVC_CFG_URL_MAX + 2];
        memset(url, 'a', sizeof(url) - 1);
        memcpy(url, "https://", 8);
        url[sizeof(url) - 1] = '\0';
        expect_bad("TCFG_URL", url, "longer than");
    }
}

static void test_env_err_truncated_safely(void)
{
    struct test_setting s;
    char err[8];

    unset_all();
    setenv("TCFG_COUNT", "garbage-garbage-garbage", 1);
    memset(err, 'X', sizeof(err));
    T_EQ_INT(load(&s, err, sizeof(err)), SVC_EINVAL);
    T_EQ_INT(strlen(err), sizeof(err) - 1);
    T_EQ_STR(err, "TCFG_CO");
    unset_all();
}

static void test_env_first_bad_reported(void)
{
    struct test_setting s;
    char err[256];

    unset_all();
    setenv("TCFG_COUNT", "x", 1);
    setenv("TCFG_ADDR", "y", 1);
    T_EQ_INT(load(&s, err, sizeof(err)), SVC_EINVAL);
    T_ASSERT(strncmp(err, "TCFG_COUNT", 10) == 0);
    unset_all();
}

static void test_env_bad_default_named(void)
{
    struct svc_cfg_option opts[] = {
        {"TCFG_BADDEF", SVC_OPT_INT, "many", 0, 10, "broken default"},
    };
    char err[256] = "";

    unsetenv("TCFG_BADDEF");
    T_EQ_INT(svc_cfg_load_env(opts, 1, err, sizeof(err)), SVC_EINVAL);
    T_ASSERT(strstr(err, "TCFG_BADDEF") != NULL);
    /* a good environment value hides the bad default */
    setenv("TCFG_BADDEF", "3", 1);
    T_EQ_INT(svc_cfg_load_env(opts, 1, err, sizeof(err)), SVC_OK);
    T_EQ_INT(opts[0].i, 3);
    unsetenv("TCFG_BADDEF");
}

static void test_env_reload_resets(void)
{
    struct svc_cfg_option opts[] = {
        {"TCFG_R", SVC_OPT_INT, NULL, 0, 10, "no default"},
    };
    char err[64];

    setenv("TCFG_R", "7", 1);
    T_EQ_INT(svc_cfg_load_env(opts, 1, err, sizeof(err)), SVC_OK);
    T_EQ_INT(opts[0].i, 7);
    T_EQ_INT(opts[0].is_set, 1);
    unsetenv("TCFG_R");
    T_EQ_INT(svc_cfg_load_env(opts, 1, err, sizeof(err)), SVC_OK);
    T_EQ_INT(opts[0].i, 0);
    T_EQ_INT(opts[0].is_set, 0);
    T_EQ_STR(opts[0].s, "");
}

static void test_common_options_defaults_valid(void)
{
    /* The defaults shipped in SVC_COMMON_OPTIONS must load cleanly. */
    struct {
        SVC_COMMON_OPTIONS(SVC_OPTION_DECLARE)
    } s = {SVC_COMMON_OPTIONS(SVC_OPTION_INIT)};
    char err[256] = "";
    const char *names[] = {
        "HTTP_ADDR",         "ADMIN_ADDR",           "LOG_LEVEL",    "WORKERS", "HTTP_MAX_BODY",
        "HTTP_IDLE_TIMEOUT", "HTTP_MAX_CONNECTIONS", "DRAIN_TIMEOUT"};

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        unsetenv(names[i]);
    T_EQ_INT(svc_cfg_load_env((struct svc_cfg_option *)&s, SVC_OPTION_COUNT(s), err, sizeof(err)),
             SVC_OK);
    T_EQ_INT(s.HTTP_MAX_BODY.i, 1048576);
    T_EQ_INT(s.WORKERS.i, 0);
    T_EQ_STR(s.HTTP_ADDR.s, "127.0.0.1:8080"); /* loopback unless configured */
}

/* svc_cfg_log_all never prints a secret: SECRET options show "(set)", URL credentials stars. */
static void test_log_masks_secrets(void)
{
    struct svc_cfg_option opts[] = {
        {"TCFG_URL", SVC_OPT_STR, "redis://user:hunter2@db:6379/1", 0, 0, "", 0, 0, NULL},
        {"TCFG_KEY", SVC_OPT_SECRET, "sk-hunter2", 0, 0, "", 0, 0, NULL},
        {"TCFG_PLAIN", SVC_OPT_STR, "http://host/path@x", 0, 0, "", 0, 0, NULL},
    };
    char err[128], out[4096];
    int p[2], saved;
    ssize_t n;

    unsetenv("TCFG_URL");
    unsetenv("TCFG_KEY");
    unsetenv("TCFG_PLAIN");
    T_EQ_INT(svc_cfg_load_env(opts, 3, err, sizeof(err)), SVC_OK);
    T_ASSERT(pipe(p) == 0);
    saved = dup(STDERR_FILENO);
    T_ASSERT(dup2(p[1], STDERR_FILENO) >= 0);
    svc_cfg_log_all(opts, 3);
    T_ASSERT(dup2(saved, STDERR_FILENO) >= 0);
    close(p[1]);
    n = read(p[0], out, sizeof(out) - 1);
    close(p[0]);
    close(saved);
    T_ASSERT(n > 0);
    out[n] = '\0';
    T_ASSERT(strstr(out, "hunter2") == NULL);
    T_ASSERT(strstr(out, "TCFG_URL=redis://***@db:6379/1") != NULL);
    T_ASSERT(strstr(out, "TCFG_KEY=(set)") != NULL);
    T_ASSERT(strstr(out, "TCFG_PLAIN=http://host/path@x") != NULL); /* '@' after the path */
}

/* Comma lists: items trimmed, empty ones skipped, nothing past the end. */
static void test_list_next(void)
{
    const char *list = " a, bb ,,  ,c d,", *item = NULL;
    size_t len = 0;

    T_ASSERT(svc_cfg_list_next(&list, &item, &len) == 1 && len == 1 && item[0] == 'a');
    T_ASSERT(svc_cfg_list_next(&list, &item, &len) == 1 && len == 2 && strncmp(item, "bb", 2) == 0);
    T_ASSERT(svc_cfg_list_next(&list, &item, &len) == 1 && len == 3 && strncmp(item, "c d", 3) == 0);
    T_EQ_INT(svc_cfg_list_next(&list, &item, &len), 0);
    T_EQ_INT(svc_cfg_list_next(&list, &item, &len), 0);
    list = NULL;
    T_EQ_INT(svc_cfg_list_next(&list, &item, &len), 0);
    list = " , ";
    T_EQ_INT(svc_cfg_list_next(&list, &item, &len), 0);
}

int main(void)
{
    T_RUN(test_log_masks_secrets);
    T_RUN(test_bool_go_rules);
    T_RUN(test_bool_rejects);
    T_RUN(test_int_ok);
    T_RUN(test_int_range);
    T_RUN(test_int_garbage);
    T_RUN(test_int_overflow);
    T_RUN(test_addr_v4_and_names);
    T_RUN(test_addr_v6);
    T_RUN(test_addr_bad);
    T_RUN(test_addr_hostlen);
    T_RUN(test_env_defaults);
    T_RUN(test_env_values);
    T_RUN(test_env_empty_is_unset);
    T_RUN(test_env_bad_values);
    T_RUN(test_env_err_truncated_safely);
    T_RUN(test_env_first_bad_reported);
    T_RUN(test_env_bad_default_named);
    T_RUN(test_env_reload_resets);
    T_RUN(test_common_options_defaults_valid);
    T_RUN(test_list_next);
    return 0;
}
