/* services/chat/model.h: the seed's /model setting string, parsed and validated. */
#include "model.h"
#include "test.h"

static void test_parse_name_only(void)
{
    struct chat_model_params p;

    chat_model_parse("gpt-4o", "gpt-3.5-turbo", &p);
    T_EQ_STR(p.model, "gpt-4o");
    T_EQ_INT(p.has_temperature, 0);
    T_EQ_INT(p.max_tokens, 0);
    chat_model_parse("", "gpt-3.5-turbo", &p);
    T_EQ_STR(p.model, "gpt-3.5-turbo");
    chat_model_parse(NULL, "gpt-3.5-turbo", &p);
    T_EQ_STR(p.model, "gpt-3.5-turbo");
}

static void test_parse_all_fields(void)
{
    struct chat_model_params p;

    chat_model_parse("gpt-4o,50,-20,30,2048", "d", &p);
    T_EQ_STR(p.model, "gpt-4o");
    T_ASSERT(p.has_temperature && p.temperature == 0.5);
    T_ASSERT(p.has_presence && p.presence == -0.2);
    T_ASSERT(p.has_frequency && p.frequency == 0.3);
    T_EQ_INT(p.max_tokens, 2048);
}

static void test_parse_seed_quirks(void)
{
    struct chat_model_params p;

    /* an empty name with numbers: the default model, numbers still apply */
    chat_model_parse(",70", "dflt", &p);
    T_EQ_STR(p.model, "dflt");
    T_ASSERT(p.has_temperature && p.temperature == 0.7);
    /* unparsable or <= -1000 after /100 means "default" */
    chat_model_parse("m,abc,-100000,7", "d", &p);
    T_EQ_INT(p.has_temperature, 0);
    T_EQ_INT(p.has_presence, 0);
    T_ASSERT(p.has_frequency && p.frequency == 0.07);
    /* six or more fields: only the name */
    chat_model_parse("m,1,2,3,4,5", "d", &p);
    T_EQ_STR(p.model, "m");
    T_EQ_INT(p.has_temperature, 0);
    T_EQ_INT(p.max_tokens, 0);
    /* a bad max_tokens is 0 = the service budget */
    chat_model_parse("m,1,2,3,x", "d", &p);
    T_EQ_INT(p.max_tokens, 0);
}

static void test_allowed(void)
{
    T_ASSERT(chat_model_allowed("gpt-4o", "gpt-3.5-turbo, gpt-4o ,gpt-4o-mini"));
    T_ASSERT(chat_model_allowed("gpt-4o-mini", "gpt-3.5-turbo, gpt-4o ,gpt-4o-mini"));
    T_ASSERT(!chat_model_allowed("gpt-4", "gpt-3.5-turbo, gpt-4o ,gpt-4o-mini"));
    T_ASSERT(!chat_model_allowed("gpt", "gpt-3.5-turbo,gpt-4o"));
    T_ASSERT(!chat_model_allowed("", "gpt-4o"));
    T_ASSERT(!chat_model_allowed("gpt-4o", ""));
}

static void test_validate(void)
{
    char why[256];
    const char *allow = "gpt-3.5-turbo,gpt-4o";

    T_EQ_INT(chat_model_validate("", allow, 1, 4096, why, sizeof(why)), SVC_OK);
    T_EQ_INT(chat_model_validate("-", allow, 1, 4096, why, sizeof(why)), SVC_OK);
    T_EQ_INT(chat_model_validate("gpt-4o", allow, 1, 4096, why, sizeof(why)), SVC_OK);
    T_EQ_INT(chat_model_validate("gpt-4o,80,100,0,4096", allow, 1, 4096, why, sizeof(why)), SVC_OK);
    T_EQ_INT(chat_model_validate("o1-preview", allow, 1, 4096, why, sizeof(why)), SVC_EINVAL);
    T_ASSERT(strstr(why, "o1-preview") != NULL);
    T_EQ_INT(chat_model_validate("gpt-4o,201", allow, 1, 4096, why, sizeof(why)), SVC_EINVAL);
    T_ASSERT(strstr(why, "temperature") != NULL);
    T_EQ_INT(chat_model_validate("gpt-4o,80,-201", allow, 1, 4096, why, sizeof(why)), SVC_EINVAL);
    T_EQ_INT(chat_model_validate("gpt-4o,80,0,0,4097", allow, 1, 4096, why, sizeof(why)), SVC_EINVAL);
    T_EQ_INT(chat_model_validate("gpt-4o,80,0,0,0", allow, 1, 4096, why, sizeof(why)), SVC_EINVAL);
    T_EQ_INT(chat_model_validate("gpt-4o,x", allow, 1, 4096, why, sizeof(why)), SVC_EINVAL);
    T_EQ_INT(chat_model_validate("gpt-4o,1,2,3,4,5", allow, 1, 4096, why, sizeof(why)), SVC_EINVAL);
    /* a budget at or below the reserved reply would refuse every prompt */
    T_EQ_INT(chat_model_validate("gpt-4o,80,0,0,600", allow, 601, 4096, why, sizeof(why)), SVC_EINVAL);
    T_ASSERT(strstr(why, "601..4096") != NULL);
    T_EQ_INT(chat_model_validate("gpt-4o,80,0,0,601", allow, 601, 4096, why, sizeof(why)), SVC_OK);
}

int main(void)
{
    T_RUN(test_parse_name_only);
    T_RUN(test_parse_all_fields);
    T_RUN(test_parse_seed_quirks);
    T_RUN(test_allowed);
    T_RUN(test_validate);
    return 0;
}
