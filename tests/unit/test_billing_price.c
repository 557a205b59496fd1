/*
 * services/billing/price.c: BILLING_PRICES parsing, lookup and exact ceiling arithmetic.
 * (The module is compiled into this test directly, so tests/CMakeLists.txt needs no entry.)
 */
#include "../../services/billing/price.c"

#include "test.h"

static void parse_ok(void)
{
    struct billing_prices *p = NULL;
    char err[256] = "";
    struct billing_ratio r;

    T_EQ_INT(billing_prices_create(&p, " gpt-4o=2.5:10, gpt-4o-mini=0.15:0.6 ,*=1:2,x=0:0", err,
                                   sizeof(err)),
             SVC_OK);
    T_EQ_INT(billing_prices_count(p), 4);
    r = billing_prices_lookup(p, "gpt-4o");
    T_EQ_INT(r.in_milli, 2500);
    T_EQ_INT(r.out_milli, 10000);
    r = billing_prices_lookup(p, "gpt-4o-mini");
    T_EQ_INT(r.in_milli, 150);
    T_EQ_INT(r.out_milli, 600);
    r = billing_prices_lookup(p, "gpt-4o-2024-08-06"); /* longest prefix + '-' */
    T_EQ_INT(r.in_milli, 2500);
    r = billing_prices_lookup(p, "gpt-4o-mini-2024-07-18");
    T_EQ_INT(r.in_milli, 150);
    r = billing_prices_lookup(p, "gpt-4oo"); /* not a '-' boundary: default */
    T_EQ_INT(r.in_milli, 1000);
    T_EQ_INT(r.out_milli, 2000);
    r = billing_prices_lookup(p, "");
    T_EQ_INT(r.out_milli, 2000);
    r = billing_prices_lookup(p, "x");
    T_EQ_INT(r.in_milli, 0);
    billing_prices_destroy(&p);
    T_ASSERT(p == NULL);
    billing_prices_destroy(&p);

    T_EQ_INT(billing_prices_create(&p, "", err, sizeof(err)), SVC_OK);
    r = billing_prices_lookup(p, "anything");
    T_EQ_INT(r.in_milli, 1000);
    T_EQ_INT(r.out_milli, 1000);
    billing_prices_destroy(&p);
    r = billing_prices_lookup(NULL, "m");
    T_EQ_INT(r.in_milli, 1000);
}

static void parse_bad(void)
{
    static const char *bad[] = {
        "gpt",         "=1:1",        "m=1",      "m=1:",    "m=:1",
        "m=1.:1",      "m=1.2345:1",  "m=-1:1",   "m=1:1e3", "m=1001:1",
        "m=1:2,m=3:4", "*=1:1,*=2:2", "m=0x10:1", "m=1:1:1", "m= 1:1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct billing_prices *p = NULL;
        char err[256] = "";

        if (billing_prices_create(&p, bad[i], err, sizeof(err)) != SVC_EINVAL)
            T_FAIL("accepted \"%s\"", bad[i]);
        T_ASSERT(p == NULL);
        T_ASSERT(strstr(err, "BILLING_PRICES") != NULL);
    }
}

static void arithmetic(void)
{
    T_EQ_INT(billing_units_for(0, 2500), 0);
    T_EQ_INT(billing_units_for(1, 2500), 3); /* 2.5 -> 3 */
    T_EQ_INT(billing_units_for(2, 2500), 5);
    T_EQ_INT(billing_units_for(3, 2500), 8); /* 7.5 -> 8 */
    T_EQ_INT(billing_units_for(1, 1), 1);    /* never rounds a non-zero cost to 0 */
    T_EQ_INT(billing_units_for(1000, 1), 1);
    T_EQ_INT(billing_units_for(1001, 1), 2);
    T_EQ_INT(billing_units_for(7, 0), 0);
    T_EQ_INT(billing_units_for(BILLING_TOKENS_MAX, BILLING_PRICE_MILLI_MAX), 1000000000000LL);
    T_EQ_INT(billing_units_for(-1, 1000), -1);
    T_EQ_INT(billing_units_for(BILLING_TOKENS_MAX + 1, 1000), -1);
    T_EQ_INT(billing_units_for(1, BILLING_PRICE_MILLI_MAX + 1), -1);

    /* tokens_within is the inverse: the largest n whose cost fits */
    for (int64_t milli = 1; milli <= 20000; milli += 337)
        for (int64_t units = 0; units < 200; units++) {
            int64_t n = billing_tokens_within(units, milli);
            T_ASSERT(billing_units_for(n, milli) <= units);
            if (n < BILLING_TOKENS_MAX)
                T_ASSERT(billing_units_for(n + 1, milli) > units);
        }
    T_EQ_INT(billing_tokens_within(5, 0), BILLING_TOKENS_MAX);
    T_EQ_INT(billing_tokens_within(0, 1000), 0);
    T_EQ_INT(billing_tokens_within(-3, 1000), 0);
    T_EQ_INT(billing_tokens_within(INT64_MAX, 1), BILLING_TOKENS_MAX);
}

/* Ratios from the ops API (same rules as BILLING_PRICES) and SQL rows merged over the env table. */
static void sql_prices(void)
{
    struct billing_prices *env = NULL, *m = NULL;
    struct billing_price_row rows[3], out[8];
    struct billing_ratio r;
    char err[256], text[24];
    int64_t v;
    const char *bad[] = {"", "-1", "1e3", "0.1234", ".5", "5.", "1000.001", "1001", " 1", "0x1"};

    T_EQ_INT(billing_price_parse("0.15", &v), SVC_OK);
    T_EQ_INT(v, 150);
    T_EQ_INT(billing_price_parse("1000", &v), SVC_OK);
    T_EQ_INT(v, 1000000);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        T_EQ_INT(billing_price_parse(bad[i], &v), SVC_EINVAL);
    T_EQ_INT(billing_price_parse(NULL, &v), SVC_EINVAL);
    billing_price_format(2500, text, sizeof(text));
    T_EQ_STR(text, "2.5");
    billing_price_format(150, text, sizeof(text));
    T_EQ_STR(text, "0.15");
    billing_price_format(12125, text, sizeof(text));
    T_EQ_STR(text, "12.125");
    billing_price_format(7, text, sizeof(text));
    T_EQ_STR(text, "0.007");
    billing_price_format(3000, text, sizeof(text));
    T_EQ_STR(text, "3");

    T_ASSERT(billing_price_model_ok("*"));
    T_ASSERT(billing_price_model_ok("gpt-4o-mini"));
    T_ASSERT(billing_price_model_ok("org/model:v1@x+y"));
    T_ASSERT(!billing_price_model_ok(""));
    T_ASSERT(!billing_price_model_ok("-x"));
    T_ASSERT(!billing_price_model_ok(".x"));
    T_ASSERT(!billing_price_model_ok("a b"));
    T_ASSERT(!billing_price_model_ok("a=b"));
    T_ASSERT(!billing_price_model_ok("**"));

    T_EQ_INT(billing_prices_create(&env, "gpt-4o=2.5:10,*=1:2", err, sizeof(err)), SVC_OK);
    snprintf(rows[0].model, sizeof(rows[0].model), "gpt-4o");
    rows[0].r = (struct billing_ratio){3000, 12000};
    snprintf(rows[1].model, sizeof(rows[1].model), "gpt-4o-mini");
    rows[1].r = (struct billing_ratio){150, 600};
    snprintf(rows[2].model, sizeof(rows[2].model), "*");
    rows[2].r = (struct billing_ratio){0, 3000};
    T_EQ_INT(billing_prices_merge(&m, env, rows, 3), SVC_OK);
    r = billing_prices_lookup(m, "gpt-4o-2024-08-06"); /* SQL replaced the env entry */
    T_EQ_INT(r.in_milli, 3000);
    r = billing_prices_lookup(m, "gpt-4o-mini-2024-07-18");
    T_EQ_INT(r.out_milli, 600);
    r = billing_prices_lookup(m, "other"); /* SQL "*" replaced the env default */
    T_EQ_INT(r.out_milli, 3000);
    T_EQ_INT(billing_prices_rows(m, out, 8), 3); /* gpt-4o, gpt-4o-mini, "*" */
    T_EQ_STR(out[2].model, "*");
    T_EQ_INT(billing_prices_rows(env, out, 1), 2); /* counts beyond max */
    billing_prices_destroy(&m);
    /* no SQL rows: the env table as it is; no env: SQL rows over 1:1 */
    T_EQ_INT(billing_prices_merge(&m, env, NULL, 0), SVC_OK);
    r = billing_prices_lookup(m, "gpt-4o-mini"); /* env gpt-4o by the prefix rule */
    T_EQ_INT(r.in_milli, 2500);
    billing_prices_destroy(&m);
    T_EQ_INT(billing_prices_merge(&m, NULL, rows + 1, 1), SVC_OK);
    r = billing_prices_lookup(m, "x");
    T_EQ_INT(r.in_milli, 1000);
    billing_prices_destroy(&m);
    billing_prices_destroy(&env);
}

int main(void)
{
    parse_ok();
    parse_bad();
    arithmetic();
    sql_prices();
    printf("test_billing_price: ok\n");
    return 0;
}
