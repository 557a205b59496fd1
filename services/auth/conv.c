/*
 * Conversation history for the web UI (docs/web.md, decision 25): POST /api/conversations with
 * {"action": "list" | "get" | "put" | "delete" | "clear", ...}, answered with the usual envelope.
 * One row per (user, conversation): the title, the client's last-change time and the messages as
 * one JSON document the server stores but does not interpret beyond checking its shape and size.
 * The model's context still comes from Redis (chat); this is what a user sees on another device.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "svc/db.h"
#include "svc/http.h"
#include "svc/json.h"
#include "svc/log.h"

#define UNAUTHORIZED_MSG "Error: 无访问权限 | No access rights"

/* 1 when id is 1..AUTH_CONV_ID_MAX bytes of [A-Za-z0-9_-] (the UI's ids), else 0. */
static int conv_id_valid(const char *id)
{
    size_t n = 0;

    if (id == NULL)
        return 0;
    for (; id[n] != '\0'; n++) {
        char c = id[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return n >= 1 && n <= AUTH_CONV_ID_MAX;
}

static int conv_list(struct auth_ctx *a, struct svc_req *req, int64_t uid)
{
    struct svc_db_conn *conn = NULL;
    struct svc_db_rows *rows = NULL;
    struct svc_db_param p[] = {SVC_DB_I64(uid), SVC_DB_I64(AUTH_CONV_MAX_PER_USER)};
    struct svc_json *list = NULL;
    size_t i;
    int rc;

    if ((rc = svc_db_conn_get(a->db, &conn, -1)) != SVC_OK)
        goto out;
    rc = svc_db_query(conn,
                      "SELECT conv_id, title, updated_ms FROM auth_conversations WHERE user_id = ? "
                      "ORDER BY updated_ms DESC LIMIT ?",
                      p, 2, &rows);
    if (rc != SVC_OK) {
        SVC_LOG_ERR(svc_req_id(req), "sql", "list conversations: %s", svc_strerror(rc));
        goto out;
    }
    if ((list = svc_json_array()) == NULL) {
        rc = SVC_ENOMEM;
        goto out;
    }
    for (i = 0; i < svc_db_rows_count(rows); i++) {
        struct svc_json *o =
            svc_json_pack("{s:s,s:s,s:I}", "id", svc_db_rows_text(rows, i, 0), "title",
                          svc_db_rows_text(rows, i, 1) ? svc_db_rows_text(rows, i, 1) : "",
                          "updated_ms", (long long)svc_db_rows_i64(rows, i, 2));
        if (o == NULL || svc_json_append(list, o) != 0) {
            rc = SVC_ENOMEM;
            goto out;
        }
    }
out:
    svc_db_rows_destroy(&rows);
    svc_db_conn_put(a->db, &conn);
    if (rc != SVC_OK) {
        svc_json_destroy(&list);
        return auth_reply(req, 503, "Fail", "数据库不可用 | Database unavailable", NULL, 1);
    }
    return auth_reply(req, 200, "Success", "", list, 0);
}

static int conv_get(struct auth_ctx *a, struct svc_req *req, int64_t uid, const char *id)
{
    struct svc_db_conn *conn = NULL;
    struct svc_db_rows *rows = NULL;
    struct svc_db_param p[] = {SVC_DB_I64(uid), SVC_DB_TEXT(id)};
    struct svc_json *data = NULL, *messages = NULL;
    int rc, found = 0;

    if ((rc = svc_db_conn_get(a->db, &conn, -1)) != SVC_OK)
        goto out;
    rc = svc_db_query(conn,
                      "SELECT title, updated_ms, messages FROM auth_conversations "
                      "WHERE user_id = ? AND conv_id = ?",
                      p, 2, &rows);
    if (rc != SVC_OK) {
        SVC_LOG_ERR(svc_req_id(req), "sql", "get conversation: %s", svc_strerror(rc));
        goto out;
    }
    if (svc_db_rows_count(rows) == 0)
        goto out;
    found = 1;
    messages = svc_json_parse(svc_db_rows_text(rows, 0, 2) ? svc_db_rows_text(rows, 0, 2) : "",
                              svc_db_rows_len(rows, 0, 2), 0, NULL, 0);
    if (messages == NULL) /* we only store what parsed: a damaged row reads as empty */
        messages = svc_json_array();
    data =
        svc_json_pack("{s:s,s:s,s:I,s:o}", "id", id, "title",
                      svc_db_rows_text(rows, 0, 0) ? svc_db_rows_text(rows, 0, 0) : "",
                      "updated_ms", (long long)svc_db_rows_i64(rows, 0, 1), "messages", messages);
    messages = NULL; /* svc_json_pack's "o" took it, also on failure */
    if (data == NULL)
        rc = SVC_ENOMEM;
out:
    svc_db_rows_destroy(&rows);
    svc_db_conn_put(a->db, &conn);
    if (rc != SVC_OK)
        return auth_reply(req, 503, "Fail", "数据库不可用 | Database unavailable", NULL, 1);
    if (!found)
        return auth_reply(req, 200, "Fail", "record not found", NULL, 1);
    return auth_reply(req, 200, "Success", "", data, 0);
}

static int conv_put(struct auth_ctx *a, struct svc_req *req, int64_t uid, const char *id,
                    struct svc_json *body)
{
    struct svc_json *title = svc_json_member(body, "title");
    struct svc_json *updated = svc_json_member(body, "updated_ms");
    struct svc_json *messages = svc_json_member(body, "messages");
    struct svc_db_conn *conn = NULL;
    struct svc_db_rows *rows = NULL;
    char *doc = NULL;
    uint64_t affected = 0;
    int rc = SVC_OK;

    if (title == NULL || !svc_json_is_string(title) || svc_json_strlen(title) > AUTH_CONV_TITLE_MAX)
        return auth_reply(req, 200, "Fail", "title must be a string of at most 200 bytes", NULL, 1);
    if (updated == NULL || !svc_json_is_integer(updated) || svc_json_int(updated) < 0)
        return auth_reply(req, 200, "Fail", "updated_ms must be a non-negative integer", NULL, 1);
    if (messages == NULL || !svc_json_is_array(messages))
        return auth_reply(req, 200, "Fail", "messages must be an array", NULL, 1);
    if ((doc = svc_json_dump(messages, 0)) == NULL)
        return auth_reply(req, 500, "Fail", "internal error", NULL, 1);
    if (strlen(doc) > AUTH_CONV_BODY_MAX) {
        free(doc);
        return auth_reply(req, 200, "Fail", "conversation is too large (at most 512 KiB)", NULL, 1);
    }
    {
        struct svc_db_param up[] = {SVC_DB_TEXT(svc_json_str(title)),
                                    SVC_DB_I64(svc_json_int(updated)), SVC_DB_TEXT(doc),
                                    SVC_DB_I64(uid), SVC_DB_TEXT(id)};
        struct svc_db_param cnt[] = {SVC_DB_I64(uid)};
        struct svc_db_param ins[] = {SVC_DB_I64(uid), SVC_DB_TEXT(id),
                                     SVC_DB_TEXT(svc_json_str(title)),
                                     SVC_DB_I64(svc_json_int(updated)), SVC_DB_TEXT(doc)};
        const char *update =
            "UPDATE auth_conversations SET title = ?, updated_ms = ?, messages = ? "
            "WHERE user_id = ? AND conv_id = ?";

        if ((rc = svc_db_conn_get(a->db, &conn, -1)) != SVC_OK)
            goto out;
        if ((rc = svc_db_exec(conn, update, up, 5, &affected, NULL)) != SVC_OK || affected > 0)
            goto out;
        /* A new one: bounded per user (checked, then inserted: two racing inserts can pass
         * the bound by one each, which is still a bound). */
        rc = svc_db_query(conn, "SELECT COUNT(*) FROM auth_conversations WHERE user_id = ?", cnt, 1,
                          &rows);
        if (rc != SVC_OK)
            goto out;
        if (svc_db_rows_i64(rows, 0, 0) >= AUTH_CONV_MAX_PER_USER) {
            rc = SVC_ETOOLARGE;
            goto out;
        }
        rc = svc_db_exec(conn,
                         "INSERT INTO auth_conversations (user_id, conv_id, title, updated_ms, "
                         "messages) VALUES (?, ?, ?, ?, ?)",
                         ins, 5, NULL, NULL);
        if (rc == SVC_EEXIST) /* another request made it meanwhile: ours is the newer write */
            rc = svc_db_exec(conn, update, up, 5, NULL, NULL);
    }
out:
    if (rc != SVC_OK && rc != SVC_ETOOLARGE && conn != NULL)
        SVC_LOG_ERR(svc_req_id(req), "sql", "put conversation: %s", svc_strerror(rc));
    svc_db_rows_destroy(&rows);
    svc_db_conn_put(a->db, &conn);
    free(doc);
    if (rc == SVC_ETOOLARGE)
        return auth_reply(req, 200, "Fail", "too many conversations (at most 1000): delete some",
                          NULL, 1);
    if (rc != SVC_OK)
        return auth_reply(req, 503, "Fail", "数据库不可用 | Database unavailable", NULL, 1);
    return auth_reply(req, 200, "Success", "", NULL, 1);
}

static int conv_delete(struct auth_ctx *a, struct svc_req *req, int64_t uid, const char *id)
{
    struct svc_db_conn *conn = NULL;
    struct svc_db_param one[] = {SVC_DB_I64(uid), SVC_DB_TEXT(id)};
    int rc;

    if ((rc = svc_db_conn_get(a->db, &conn, -1)) == SVC_OK) {
        if (id != NULL)
            rc = svc_db_exec(conn,
                             "DELETE FROM auth_conversations WHERE user_id = ? AND conv_id = ?",
                             one, 2, NULL, NULL);
        else
            rc = svc_db_exec(conn, "DELETE FROM auth_conversations WHERE user_id = ?", one, 1, NULL,
                             NULL);
        if (rc != SVC_OK)
            SVC_LOG_ERR(svc_req_id(req), "sql", "delete conversation: %s", svc_strerror(rc));
        svc_db_conn_put(a->db, &conn);
    }
    if (rc != SVC_OK)
        return auth_reply(req, 503, "Fail", "数据库不可用 | Database unavailable", NULL, 1);
    return auth_reply(req, 200, "Success", "", NULL, 1);
}

int auth_api_conversations(void *ctx, struct svc_req *req)
{
    struct auth_ctx *a = ctx;
    enum auth_result res;
    enum auth_scheme scheme;
    struct auth_identity id;
    struct svc_json *j = NULL;
    const char *action, *cid;
    size_t len = 0;
    const char *b;
    int ret;

    if (auth_authenticate(a, svc_req_header(req, "Authorization"), svc_req_header(req, "Cookie"),
                          svc_req_client_ip(req), svc_req_id(req), &res, &scheme, &id) != SVC_OK)
        return auth_reply(req, 503, "Fail", "认证服务不可用 | Authentication unavailable", NULL, 1);
    if (res == AUTH_R_BLOCKED)
        return auth_reply(req, 200, "Fail", "账号已被禁用 | Account blocked", NULL, 1);
    if (res != AUTH_R_OK)
        return auth_reply(req, 200, "Unauthorized", UNAUTHORIZED_MSG, NULL, 1);
    b = svc_req_body(req, &len);
    j = svc_json_parse(b != NULL ? b : "", len, SVC_JSON_STRICT, NULL, 0);
    if (j == NULL || !svc_json_is_object(j)) {
        svc_json_destroy(&j);
        return auth_reply(req, 400, "Fail", "the body must be a JSON object", NULL, 1);
    }
    action = svc_json_str(svc_json_member(j, "action"));
    cid = svc_json_str(svc_json_member(j, "id"));
    if (action == NULL) {
        ret = auth_reply(req, 200, "Fail", "unknown action", NULL, 1);
    } else if (strcmp(action, "list") == 0) {
        ret = conv_list(a, req, id.user_id);
    } else if (strcmp(action, "clear") == 0) {
        ret = conv_delete(a, req, id.user_id, NULL);
    } else if (strcmp(action, "get") != 0 && strcmp(action, "put") != 0 &&
               strcmp(action, "delete") != 0) {
        ret = auth_reply(req, 200, "Fail", "unknown action", NULL, 1);
    } else if (!conv_id_valid(cid)) {
        ret =
            auth_reply(req, 200, "Fail", "id must be 1-64 characters of A-Z a-z 0-9 _ -", NULL, 1);
    } else if (strcmp(action, "get") == 0) {
        ret = conv_get(a, req, id.user_id, cid);
    } else if (strcmp(action, "put") == 0) {
        ret = conv_put(a, req, id.user_id, cid, j);
    } else {
        ret = conv_delete(a, req, id.user_id, cid);
    }
    svc_json_destroy(&j);
    return ret;
}
