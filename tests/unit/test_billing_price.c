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

int main(void)
{
    parse_ok();
    parse_bad();
    arithmetic();
    printf("test_billing_price: ok\n");
    return 0;
}
