#ifndef CHAT_MODEL_H
#define CHAT_MODEL_H

#include <stddef.h>

#include "svc/err.h"

/*
 * A user's model setting, the seed's "/model" string (seed-behaviour §6.5):
 *     model_name[,temperature[,presence_penalty[,frequency_penalty[,max_tokens]]]]
 * numbers are integers divided by 100 (max_tokens is a plain integer). Six or more fields: only
 * the name counts. An unparsable number, or one <= -1000 after the division, means "use the
 * service default"; an empty name means OPENAI_MODEL.
 */

struct chat_model_params {
    char model[128];
    int has_temperature, has_presence, has_frequency;
    double temperature, presence, frequency;
    long max_tokens; /* 0 = the service budget */
};

/* Fills p from a stored setting; default_model when the name is empty. Never fails. */
void chat_model_parse(const char *setting, const char *default_model, struct chat_model_params *p);

/*
 * Validates a value given to the /model command before it is stored (the seed stored anything,
 * S8): the name must be on the allow-list (comma-separated), each number an integer in range
 * (temperature 0..200, penalties -200..200, max_tokens min_budget..max_budget: a budget at or
 * below the reserved reply size would refuse every prompt). "" and "-" clear the setting and are
 * valid. On error writes a user-facing reason into why.
 */
int chat_model_validate(const char *value, const char *allowlist, long min_budget,
                        long max_budget, char *why, size_t whylen) SVC_MUST_CHECK;

/* 1 when name is in the comma-separated list. */
int chat_model_allowed(const char *name, const char *allowlist);

#endif
