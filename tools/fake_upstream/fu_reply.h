/*
 * fu_reply: the fake model. Decides what the reply says, how it splits into tokens, how many
 * prompt tokens a request counts, and which test knobs ([[fake ...]] directives, X-Fake-*
 * headers) apply. Pure functions, no I/O, thread-safe.
 *
 * Token rule: the reply text is a sequence of words separated by single spaces; token 0 is the
 * first word, token k > 0 is one space followed by word k. Concatenating the tokens gives the
 * text back.
 */
#ifndef FU_REPLY_H
#define FU_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fu_buf.h"

#define FU_KNOB_MAX_TOKENS 1000000
#define FU_KNOB_MAX_TTFT_MS 3600000

/* Per-request behaviour. cut/stall are -1 when off, error is 0 when off. */
struct fu_knobs {
    double tps; /* tokens per second; 0 = as fast as possible */
    int64_t ttft_ms;
    int64_t tokens; /* planned reply length */
    int error;      /* HTTP status to fail with */
    int64_t cut;    /* close after this many content chunks */
    int64_t stall;  /* go silent after this many content chunks */
};

/* Knobs as configured by the environment (fu_cfg). */
void fu_knobs_defaults(struct fu_knobs *k);

/*
 * Set one knob by its directive key ("tps", "ttft", "tokens", "error", "cut", "stall") from text.
 * Returns 0, or FU_EINVAL with a message for the client in `err` (NUL-terminated).
 */
__attribute__((warn_unused_result)) int fu_knobs_set(struct fu_knobs *k, const char *key,
                                                     size_t key_len, const char *val,
                                                     size_t val_len, char *err, size_t err_len);

/*
 * Find every "[[fake key=value ...]]" directive in text[0..len), apply it to `k` (later ones win)
 * and append the text without the directives to `clean`. Returns 0, FU_EINVAL (bad directive,
 * message in `err`) or a fu_buf error.
 */
__attribute__((warn_unused_result)) int fu_knobs_from_text(struct fu_knobs *k, const char *text,
                                                           size_t len, struct fu_buf *clean,
                                                           char *err, size_t err_len);

/* Number of whitespace-separated words in s[0..n). */
uint32_t fu_count_words(const char *s, size_t n);

/* A planned reply: "Echo(<n> msgs): <words>" then filler words, `n_tokens` tokens long. */
struct fu_reply {
    char *echo; /* owned; the echo part, words joined by single spaces */
    size_t echo_len;
    uint32_t echo_words;
    uint32_t n_tokens; /* tokens that will be sent: min(planned, max_tokens) */
    bool length_cut;   /* max_tokens was smaller than the planned length */
};

/*
 * Plan a reply for a request with `n_msgs` messages whose last user text is text[0..len) (the
 * directives already removed). planned = tokens knob; max_tokens < 0 means no limit.
 * Returns 0 or FU_ENOMEM. Release with fu_reply_deinit().
 */
__attribute__((warn_unused_result)) int fu_reply_init(struct fu_reply *r, size_t n_msgs,
                                                      const char *text, size_t len, int64_t planned,
                                                      int64_t max_tokens);
void fu_reply_deinit(struct fu_reply *r);

/* Walks the tokens of a reply in order. Start with {0, 0}. */
struct fu_reply_iter {
    size_t pos; /* offset in echo of the next echo token */
    uint32_t k; /* index of the next token */
};

/* Give the next token (borrowed from the reply or static storage). Returns false at the end. */
bool fu_reply_next(const struct fu_reply *r, struct fu_reply_iter *it, const char **tok,
                   size_t *tok_len);

/* Append the whole reply text. Returns 0 or a fu_buf error. */
__attribute__((warn_unused_result)) int fu_reply_render(const struct fu_reply *r,
                                                        struct fu_buf *out);

#endif /* FU_REPLY_H */
