/*
 * chatweb-auth: owns identities and answers "who is this?" for the other services.
 *
 * Routes on HTTP_ADDR (worker-thread pool; handlers may block):
 *   POST /rpc/Auth/Authenticate   protobuf, internal only (the ingress never routes /rpc/)
 *   POST /api/session             the ChatGPT Web frontend's first call
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.pb-c.h"
#include "static_users.h"
#include "svc/http.h"
#include "svc/log.h"
#include "svc/metrics.h"
#include "svc/rpc.h"
#include "svc/service.h"
#include "svc/util.h"

#define AUTH_OPTIONS(ACTION)                                                                   \
    SVC_COMMON_OPTIONS(ACTION)                                                                 \
    ACTION(BASIC_AUTH_USER, SVC_OPT_STR, "", 0, 0, "static users, comma-separated")           \
    ACTION(BASIC_AUTH_PASSWORD, SVC_OPT_SECRET, "", 0, 0, "their passwords, by position")

static struct {
    AUTH_OPTIONS(SVC_OPTION_DECLARE)
} setting = {AUTH_OPTIONS(SVC_OPTION_INIT)};

#define AUTH_METRICS(ACTION)                                                                   \
    ACTION(auth_requests_total, SVC_METRIC_COUNTER, "Authenticate calls")                     \
    ACTION(auth_ok_total, SVC_METRIC_COUNTER, "Authenticate calls that identified a user")    \
    ACTION(auth_denied_total, SVC_METRIC_COUNTER, "Authenticate calls refused")

static struct {
    AUTH_METRICS(SVC_METRIC_DECLARE)
} stats = {AUTH_METRICS(SVC_METRIC_INIT)};

static struct auth_static_users *static_users;

#define CREDENTIALS_MAX 1024

/*
 * Basic credentials: "Basic base64(user:pass)", split at the first ':' (as browsers send them).
 * Returns 0 and fills user/pass, or -1 when the header is not usable Basic.
 */
static int parse_basic(const char *header, char *decoded, size_t len, char **user, char **pass)
{
    const char *b64;
    char *colon;

    if (strncasecmp(header, "Basic ", 6) != 0)
        return -1;
    b64 = header + 6;
    while (*b64 == ' ')
        b64++;
    if (svc_base64_decode(b64, strlen(b64), decoded, len) < 0)
        return -1;
    colon = strchr(decoded, ':');
    if (colon == NULL)
        return -1;
    *colon = '\0';
    *user = decoded;
    *pass = colon + 1;
    return 0;
}

static int rpc_authenticate(struct svc_rpc_call *call, const ProtobufCMessage *in_msg,
                            ProtobufCMessage *out_msg, void *ctx)
{
    const Chatweb__Auth__AuthenticateRequest *in = (const void *)in_msg;
    Chatweb__Auth__AuthenticateResponse *out = (void *)out_msg;
    Chatweb__Auth__Identity *id;
    char decoded[CREDENTIALS_MAX];
    char *user, *pass;
    long uid;

    (void)ctx;
    svc_metric_add(&stats.auth_requests_total, 1);
    if (in->authorization == NULL || in->authorization[0] == '\0') {
        out->result = CHATWEB__AUTH__AUTH_RESULT__AUTH_MISSING;
        goto denied;
    }
    if (strncasecmp(in->authorization, "Bearer ", 7) == 0) {
        /* Login sessions and API keys arrive with the accounts issue; none exist yet. */
        out->scheme = "bearer";
        out->result = CHATWEB__AUTH__AUTH_RESULT__AUTH_UNKNOWN_USER;
        goto denied;
    }
    if (parse_basic(in->authorization, decoded, sizeof(decoded), &user, &pass) != 0) {
        out->result = CHATWEB__AUTH__AUTH_RESULT__AUTH_MALFORMED;
        goto denied;
    }
    out->scheme = "basic";
    uid = auth_static_users_check(static_users, user, pass);
    if (uid <= 0) {
        out->result = uid == 0 ? CHATWEB__AUTH__AUTH_RESULT__AUTH_UNKNOWN_USER
                               : CHATWEB__AUTH__AUTH_RESULT__AUTH_WRONG_PASSWORD;
        SVC_LOG_INFO(svc_rpc_request_id(call), "authenticate", "refused user=\"%s\" ip=%s: %s",
                     user, svc_rpc_client_ip(call), uid == 0 ? "unknown" : "wrong password");
        goto denied;
    }
    id = svc_rpc_alloc(call, sizeof(*id));
    if (id == NULL)
        return SVC_ENOMEM;
    chatweb__auth__identity__init(id);
    id->user_id = uid;
    id->username = svc_rpc_strdup(call, auth_static_users_name(static_users, uid));
    id->is_static = 1;
    id->model = "";
    if (id->username == NULL)
        return SVC_ENOMEM;
    out->identity = id;
    out->result = CHATWEB__AUTH__AUTH_RESULT__AUTH_OK;
    svc_metric_add(&stats.auth_ok_total, 1);
    memset(decoded, 0, sizeof(decoded));
    return SVC_OK;
denied:
    memset(decoded, 0, sizeof(decoded));
    svc_metric_add(&stats.auth_denied_total, 1);
    return SVC_OK;
}

static const struct svc_rpc_method rpc_methods[] = {
    {"/rpc/Auth/Authenticate", &chatweb__auth__authenticate_request__descriptor,
     &chatweb__auth__authenticate_response__descriptor, rpc_authenticate, NULL},
};
static struct svc_rpc_registry rpc_registry = {rpc_methods,
                                               sizeof(rpc_methods) / sizeof(rpc_methods[0])};

static int api_session(struct svc_req *req, void *ctx)
{
    static const char body[] =
        "{\"status\":\"Success\",\"message\":\"\",\"data\":{\"auth\":false,\"model\":\"ChatGPTAPI\"}}";

    (void)ctx;
    svc_req_reply(req, 200, "application/json; charset=utf-8", body, sizeof(body) - 1);
    return SVC_HTTP_DONE;
}

static const struct svc_route routes[] = {
    {"POST", "/rpc/*", svc_rpc_dispatch, &rpc_registry, SVC_HTTP_STYLE_TEXT},
    {"POST", "/api/session", api_session, NULL, SVC_HTTP_STYLE_ENVELOPE},
};

int main(int argc, char **argv)
{
    char err[512];

    svc_service_setup("auth", argc, argv, (struct svc_option *)&setting,
                      SVC_OPTION_COUNT(setting));
    svc_metrics_register((struct svc_metric *)&stats, SVC_METRIC_COUNT(stats));
    if (auth_static_users_create(&static_users, setting.BASIC_AUTH_USER.s,
                                 setting.BASIC_AUTH_PASSWORD.s, err, sizeof(err)) != SVC_OK)
        svc_service_die(SVC_EX_CONFIG, "%s", err);
    svc_service_start();
    SVC_LOG_INFO(NULL, "startup", "%zu static user(s)", auth_static_users_count(static_users));

    svc_service_serve_pool(routes, sizeof(routes) / sizeof(routes[0]), SVC_HTTP_STYLE_ENVELOPE);

    auth_static_users_destroy(&static_users);
    svc_service_teardown();
    return SVC_EX_OK;
}
