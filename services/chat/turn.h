#ifndef CHAT_TURN_H
#define CHAT_TURN_H

/*
 * One chat turn (internal to the chat service): shared by turn.c (the request, context and
 * upstream stream), commands.c (the seed's chat commands) and charge.c (reserve / settle).
 * Everything runs on the request's event loop.
 */

#include <jansson.h>
#include <stddef.h>

#include "chat.h"
#include "context.h"
#include "model.h"
#include "svc/buf.h"
#include "svc/modelmap.h"
#include "svc/sse.h"

struct svc_req;
struct svc_fetch;
struct svc_timer;

enum chat_command { CHAT_CMD_NONE, CHAT_CMD_HELP, CHAT_CMD_LOGIN, CHAT_CMD_ME, CHAT_CMD_USER,
                    CHAT_CMD_MODEL };

struct chat_turn {
    int refs;
    struct chat_worker *w;
    struct svc_req *req; /* NULL once the request is over */
    char rid[72];

    /* the request */
    char *prompt;
    size_t prompt_len;
    char *system_message;
    char parent_id[CHAT_ID_MAX + 1];
    double temperature, top_p;
    int has_temperature, has_top_p;

    /* who */
    long long user_id;
    int is_static;
    int via_key;                     /* authenticated with an API key (not the account itself) */
    char username[128];
    char model_setting[128];         /* the user's raw /model setting */
    struct chat_model_params params; /* the model and its parameters for this turn */
    struct svc_model_info mi;        /* its encoding, window and request shape */
    enum chat_command cmd;           /* a seed chat command instead of a chat */
    const char *cmd_arg;             /* the text after the command (points into prompt) */
    int lang_en;                     /* Accept-Language asks for English messages */

    /* billing */
    struct svc_fetch *billing_call;  /* Reserve, or a command's RPC; cancelled with the request */
    int reserved;                    /* a hold exists: it must be settled or released */
    long completion_limit;

    /* context, newest first while walking */
    json_t *history;
    char walk_id[CHAT_ID_MAX + 1];
    long budget_used; /* exact prompt tokens in chat format: system + history + prompt */
    long budget;      /* the context budget of this turn: min(window, max tokens) */

    /* tokens per minute (Redis, all replicas): the scopes this turn was admitted under */
    int tpm_scopes;
    char tpm_tag[32];
    char tpm_names[2][96];
    long long tpm_limits[2];
    long long tpm_admitted; /* tokens counted at admission, corrected once at the end */

    /* what the turn consumed, decided once (chat_turn_account) */
    int accounted;
    int counted;       /* 1: our own exact count, the upstream sent no usage */
    long long final_prompt, final_completion;

    /* the reply */
    char user_msg_id[37];
    char reply_id[37];
    struct svc_fetch *auth_call;
    struct svc_fetch *upstream;
    struct svc_sse sse;
    struct svc_buf text;
    struct svc_buf errbody;
    struct svc_buf held; /* the final object, sent once the context is stored */
    int streaming;       /* the response to the client has started */
    int upstream_paused; /* backpressure from a slow client */
    struct svc_buf inbuf; /* upstream bytes not yet turned into objects (pump) */
    size_t in_off;
    int up_done;         /* the upstream ended; objects still wait for the client */
    int up_err;
    int objects_sent;
    int saw_done;
    int saw_finish;
    char upstream_error[512];
    long up_status;    /* HTTP status of the upstream answer, 0 before it */
    long prompt_tokens, completion_tokens; /* the upstream's usage, 0 until it arrives */
    int saves_pending;
    int ended;         /* charged and stored: nothing is left to do when the client leaves */

    /* the client left: what the upstream already sent is still read (and counted, never sent)
     * for up to CHAT_ABORT_DRAIN_MS, then the upstream is cancelled */
    int client_gone;
    int draining;
    struct svc_timer *drain_timer;
    uint64_t drain_started_ms;
    struct chat_turn *drain_prev, *drain_next; /* the worker's draining turns, for shutdown */
};

/* Drops a reference; the last one frees the turn. */
void chat_turn_unref(struct chat_turn *t);

/* Answers with one {status, message, data:null} envelope (ignored once the client left). */
void chat_turn_reply(struct chat_turn *t, int http_status, const char *status, const char *message);

/* 200 {"status":"Fail", message}: what the frontend shows as the reply. */
void chat_turn_fail(struct chat_turn *t, const char *message);

/* The command a prompt is (seed §4.4.1), and where its argument starts. */
enum chat_command chat_command_parse(const char *prompt, const char **arg);

/* Commands that need no identity (/help, /login). Answers and returns 1, or returns 0. */
int chat_command_early(struct chat_turn *t);

/* Runs a command once Authenticate answered (result is an AuthResult value). */
void chat_command_run(struct chat_turn *t, int auth_result);

/*
 * Decides once what the turn consumed (produced = 0: nothing): the upstream's usage when it sent
 * one, else the exact count of the prompt and of the reply text received; and corrects the
 * tokens-per-minute counters to it. Later calls do nothing.
 */
void chat_turn_account(struct chat_turn *t, int produced);

/* Holds the turn's worst case; then calls chat_turn_upstream() or answers the refusal. */
void chat_charge_reserve(struct chat_turn *t);

/* After the upstream: charge the real usage (settle) or give the hold back (release). The call
 * is copied out of the turn, so it outlives the request, and is retried with backoff for up to
 * CHAT_SETTLE_RETRY_FOR seconds. */
void chat_charge_finish(struct chat_turn *t, int produced);


/* Starts the upstream request (turn.c). */
void chat_turn_upstream(struct chat_turn *t);

/* At shutdown: ends the turns still reading an upstream whose client left (charged as counted). */
void chat_turn_abandon_drains(struct chat_worker *w);

#endif
