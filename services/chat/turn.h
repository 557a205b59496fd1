#ifndef CHAT_TURN_H
#define CHAT_TURN_H

/*
 * One chat turn (internal to the chat service): shared by turn.c (the request, context and the
 * ChatGPT Web framing of the metered stream), commands.c (the seed's chat commands) and charge.c
 * (admission and its refusals).
 * Everything runs on the request's event loop.
 */

#include <stddef.h>

#include "chat.h"
#include "context.h"
#include "model.h"
#include "svc/buf.h"
#include "svc/json.h"
#include "svc/modelmap.h"

struct svc_req;
struct svc_fetch;
struct meter;

enum chat_command { CHAT_CMD_NONE, CHAT_CMD_HELP, CHAT_CMD_LOGIN, CHAT_CMD_ME, CHAT_CMD_USER,
                    CHAT_CMD_MODEL };

struct chat_turn {
    int refs;
    struct meter_worker *w;
    struct svc_req *req; /* NULL once the request is over */
    char rid[72];
    const struct chat_setting *setting; /* main.c's, borrowed (struct chat_ctx) */
    struct chat_stats *stats;

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
    struct svc_modelmap_info mi;     /* its encoding, window and request shape */
    enum chat_command cmd;           /* a seed chat command instead of a chat */
    const char *cmd_arg;             /* the text after the command (points into prompt) */
    int lang_en;                     /* Accept-Language asks for English messages */

    /* the metered upstream request (services/meter): admission, stream, the end of the hold */
    struct meter *meter;
    struct svc_fetch *billing_call;  /* a command's RPC; cancelled with the request */
    long completion_limit;

    /* context, newest first while walking */
    struct svc_json *history;
    char walk_id[CHAT_ID_MAX + 1];
    long budget_used; /* exact prompt tokens in chat format: system + history + prompt */
    long budget;      /* the context budget of this turn: min(window, max tokens) */

    /* tokens per minute (Redis, all replicas): the key's tpm and CHAT_TPM_LIMIT */
    int tpm_scopes;
    char tpm_tag[32];
    char tpm_names[2][96];
    long long tpm_limits[2];

    /* the reply */
    char user_msg_id[37];
    char reply_id[37];
    struct svc_fetch *auth_call;
    struct svc_buf held;  /* the final object, sent once the context is stored */
    int streaming;        /* the response to the client has started */
    int objects_sent;
    int saves_pending;
    int saves_failed;            /* a SET of this round got an error or no answer */
    int save_rounds;             /* rounds of storing/confirming (CHAT_CONTEXT_REPLICAS) */
    unsigned long save_epoch;    /* the Redis client's master epoch when the round was sent */
    struct svc_timer *save_timer; /* waits for the sentinels to name a new master */
    int ended;            /* the upstream is over and the turn stored: nothing is left to do
                           * when the client leaves */
};

/*
 * A turn for req, with one reference that the request's cleanup drops (registered here, so it is
 * freed with the request even when this fails). SVC_OK, or SVC_ENOMEM with *out NULL: the caller
 * answers 500. setting and stats are borrowed for the turn's life.
 */
int chat_turn_create(struct chat_turn **out, struct svc_req *req,
                     const struct chat_setting *setting, struct chat_stats *stats) SVC_MUST_CHECK;

/* Gives the turn its meter (t->meter), whose hooks stream the answer (turn.c). SVC_ENOMEM. */
int chat_turn_meter_create(struct chat_turn *t) SVC_MUST_CHECK;

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

/* Admits the turn through its meter (tokens per minute, then the Reserve); then calls
 * chat_turn_upstream() or answers the refusal (charge.c). */
void chat_charge_reserve(struct chat_turn *t);

/* Starts the upstream request (turn.c). */
void chat_turn_upstream(struct chat_turn *t);


#endif
