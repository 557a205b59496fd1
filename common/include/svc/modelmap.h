#ifndef SVC_MODELMAP_H
#define SVC_MODELMAP_H

#include <stddef.h>

#include "svc/err.h"
#include "svc/tokenizer.h"

/*
 * Model name -> encoding, context window and request shape, for current OpenAI models
 * (gpt-3.5*, gpt-4, gpt-4-32k, gpt-4-turbo, gpt-4o*, gpt-4.1*, gpt-5*, o1/o3/o4*, embeddings).
 * The longest matching prefix wins; a fine-tuned name ("ft:gpt-4o-mini:org::id") is looked up by
 * its base model. A name nothing matches gets the default entry (never a window of 0).
 *
 * Operators extend or override the table with MODEL_WINDOWS, a comma-separated list of
 *     <prefix>=<window>[:<encoding>]        e.g. "my-llama=8192:cl100k_base,gpt-4o=64000"
 * where "*" as the prefix replaces the default for unknown names. An override wins over a
 * built-in entry with the same prefix; without an encoding an override keeps the encoding of the
 * built-in entry it shadows (or the default's). docs/tokens.md.
 *
 * Chat-format counting follows OpenAI's published rule (openai-cookbook "How to count tokens with
 * tiktoken"): every message costs tokens_per_message + the tokens of each of its values (role,
 * content, name) + tokens_per_name when it has a name; every reply is primed with 3 tokens.
 */

struct svc_modelmap_info {
    enum svc_tokenizer_encoding_e encoding;
    long long context_window; /* prompt + completion tokens the model accepts, > 0 */
    int reasoning;          /* o-series and gpt-5: max_completion_tokens, no sampling options */
    int tokens_per_message; /* 3 (4 for gpt-3.5-turbo-0301) */
    int tokens_per_name;    /* 1 (-1 for gpt-3.5-turbo-0301) */
    int known;              /* 1 when an entry matched, 0 when this is the default */
};

struct svc_modelmap;

/*
 * Builds the map: the built-in table plus overrides (MODEL_WINDOWS syntax above; NULL or "" for
 * none). On success *out is the map (free with svc_modelmap_destroy). SVC_EINVAL with a reason in
 * err (naming the bad entry) when overrides cannot be parsed; SVC_ENOMEM. Immutable afterwards:
 * lookups are thread-safe.
 */
int svc_modelmap_create(struct svc_modelmap **out, const char *overrides, char *err,
                        size_t errlen) SVC_MUST_CHECK;
void svc_modelmap_destroy(struct svc_modelmap **m);

/* Fills *out for model (NULL or "" gets the default). Never fails. */
void svc_modelmap_lookup(const struct svc_modelmap *m, const char *model,
                         struct svc_modelmap_info *out);

/*
 * Tokens one chat message costs in a prompt: tokens_per_message + tokens(role) + tokens(content)
 * (+ tokens(name) + tokens_per_name when name is not NULL). Texts are raw bytes (content may hold
 * NUL). >= 0, or SVC_ENOMEM.
 */
long long svc_modelmap_message_tokens(const struct svc_modelmap_info *mi, const char *role,
                                      const char *content, size_t content_len, const char *name);

/* Tokens every reply is primed with (<|start|>assistant<|message|>): 3. */
long long svc_modelmap_reply_priming(const struct svc_modelmap_info *mi);

#endif
