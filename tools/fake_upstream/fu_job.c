/* fu_job: paced SSE streams and held-back responses. See fu_job.h. */
#include "fu_job.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fu_http.h"
#include "fu_record.h"

struct fu_job {
    bool stream;
    uint64_t request_seq;
    int64_t cut;   /* -1 = off */
    int64_t stall; /* -1 = off */
    uint64_t chunks_sent;

    /* held-back response */
    char *resp;
    size_t resp_len;
    uint64_t due_ns;

    /* stream */
    bool legacy, chunked, keep_alive, include_usage;
    bool started; /* head and role chunk sent */
    char *extra_headers;
    char *pfx; /* every chunk's JSON up to the inside of "choices":[ */
    size_t pfx_len;
    struct fu_reply reply;
    struct fu_reply_iter it;
    uint32_t prompt_tokens;
    uint64_t first_ns;  /* due time of token 0: t0 + ttft */
    double interval_ns; /* between tokens; 0 = no pacing */
};

int fu_render_usage(struct fu_buf *out, uint32_t prompt, uint32_t completion, bool details)
{
    int rc = fu_buf_appendf(out,
                            "{\"prompt_tokens\":%u,\"completion_tokens\":%u,"
                            "\"total_tokens\":%llu",
                            prompt, completion, (unsigned long long)prompt + completion);
    if (rc == FU_OK && details)
        rc = fu_buf_appends(out, ",\"prompt_tokens_details\":{\"cached_tokens\":0,"
                                 "\"audio_tokens\":0},\"completion_tokens_details\":"
                                 "{\"reasoning_tokens\":0,\"audio_tokens\":0,"
                                 "\"accepted_prediction_tokens\":0,"
                                 "\"rejected_prediction_tokens\":0}");
    if (rc == FU_OK)
        rc = fu_buf_append(out, "}", 1);
    return rc;
}

struct fu_job *fu_job_create_stream(const struct fu_stream_opts *o, struct fu_reply *reply)
{
    struct fu_job *j = calloc(1, sizeof(*j));
    struct fu_buf pfx;
    fu_buf_init(&pfx, 64 * 1024);
    if (j == NULL)
        goto fail;
    j->reply = *reply;
    memset(reply, 0, sizeof(*reply));
    j->stream = true;
    j->request_seq = o->request_seq;
    j->cut = o->knobs.cut;
    j->stall = o->knobs.stall;
    j->legacy = o->legacy;
    j->chunked = o->chunked;
    j->keep_alive = o->keep_alive;
    j->include_usage = o->include_usage;
    j->prompt_tokens = o->prompt_tokens;
    j->first_ns = o->t0_ns + (uint64_t)o->knobs.ttft_ms * 1000000ull;
    j->interval_ns = o->knobs.tps > 0 ? 1e9 / o->knobs.tps : 0;
    if (o->extra_headers && (j->extra_headers = strdup(o->extra_headers)) == NULL)
        goto fail;
    int rc = fu_buf_appends(&pfx, "{\"id\":");
    if (rc == FU_OK)
        rc = fu_buf_append_json_str(&pfx, o->id, strlen(o->id));
    if (rc == FU_OK)
        rc = fu_buf_appendf(&pfx, ",\"object\":\"%s\",\"created\":%lld,\"model\":",
                            o->legacy ? "text_completion" : "chat.completion.chunk",
                            (long long)o->created);
    if (rc == FU_OK)
        rc = fu_buf_append_json_str(&pfx, o->model, strlen(o->model));
    if (rc == FU_OK)
        rc = fu_buf_appends(&pfx, ",\"system_fingerprint\":\"fp_fake\",\"choices\":[");
    if (rc != FU_OK)
        goto fail;
    j->pfx = fu_buf_take(&pfx, &j->pfx_len);
    return j;
fail:
    fu_buf_deinit(&pfx);
    if (j == NULL)
        fu_reply_deinit(reply);
    fu_job_destroy(&j);
    return NULL;
}

struct fu_job *fu_job_create_oneshot(uint64_t request_seq, uint64_t due_ns, struct fu_buf *resp,
                                     int64_t cut, int64_t stall)
{
    struct fu_job *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        fu_buf_deinit(resp);
        return NULL;
    }
    j->request_seq = request_seq;
    j->due_ns = due_ns;
    j->cut = cut;
    j->stall = stall;
    j->resp = fu_buf_take(resp, &j->resp_len);
    return j;
}

void fu_job_destroy(struct fu_job **jp)
{
    struct fu_job *j = *jp;
    if (j == NULL)
        return;
    free(j->resp);
    free(j->extra_headers);
    free(j->pfx);
    fu_reply_deinit(&j->reply);
    free(j);
    *jp = NULL;
}

void fu_job_begin(const struct fu_job *j)
{
    if (j->stream) {
        atomic_fetch_add(&fu_stats.open_streams, 1);
        atomic_fetch_add(&fu_stats.total_streams, 1);
    }
}

void fu_job_end(struct fu_job **jp, enum fu_job_end how)
{
    struct fu_job *j = *jp;
    if (j == NULL)
        return;
    switch (how) {
    case FU_JOB_END_DONE:
        if (j->stream)
            fu_record_event(FU_EV_STREAM_DONE, j->request_seq, j->chunks_sent);
        break;
    case FU_JOB_END_CUT:
        fu_record_event(FU_EV_STREAM_CUT, j->request_seq, j->chunks_sent);
        break;
    case FU_JOB_END_CLIENT_CLOSED:
        fu_record_event(FU_EV_CLIENT_CLOSED, j->request_seq, j->chunks_sent);
        break;
    case FU_JOB_END_SHUTDOWN:
        break;
    }
    if (j->stream)
        atomic_fetch_sub(&fu_stats.open_streams, 1);
    fu_job_destroy(jp);
}

/* When content token k is due. */
static uint64_t due_at(const struct fu_job *j, uint64_t k)
{
    return j->first_ns + (uint64_t)((double)k * j->interval_ns);
}

/* Append one SSE event: pfx + middle + suffix ("usage":null when include_usage). */
static int append_event(struct fu_job *j, struct fu_buf *out, const char *tok, size_t tok_len,
                        const char *middle)
{
    size_t start = out->len;
    int rc = fu_buf_appends(out, "data: ");
    if (rc == FU_OK)
        rc = fu_buf_append(out, j->pfx, j->pfx_len);
    if (tok) {
        if (rc == FU_OK)
            rc = fu_buf_appends(out,
                                j->legacy ? "{\"text\":" : "{\"index\":0,\"delta\":{\"content\":");
        if (rc == FU_OK)
            rc = fu_buf_append_json_str(out, tok, tok_len);
    }
    if (rc == FU_OK)
        rc = fu_buf_appends(out, middle);
    if (rc == FU_OK)
        rc = fu_buf_appends(out, j->include_usage ? ",\"usage\":null}\n\n" : "}\n\n");
    if (rc == FU_OK)
        rc = fu_http_frame_chunk(out, start, j->chunked);
    return rc;
}

/* The end of a stream: finish chunk, usage chunk if asked for, [DONE], end of chunked body. */
static int append_finish(struct fu_job *j, struct fu_buf *out)
{
    const char *reason = j->reply.length_cut ? "length" : "stop";
    char middle[128];
    if (j->legacy)
        snprintf(middle, sizeof(middle),
                 "{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"%s\"}]", reason);
    else
        snprintf(middle, sizeof(middle),
                 "{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"%s\"}]", reason);
    int rc = append_event(j, out, NULL, 0, middle);
    if (rc == FU_OK && j->include_usage) {
        size_t start = out->len;
        rc = fu_buf_appends(out, "data: ");
        if (rc == FU_OK)
            rc = fu_buf_append(out, j->pfx, j->pfx_len);
        if (rc == FU_OK)
            rc = fu_buf_appends(out, "],\"usage\":");
        if (rc == FU_OK)
            rc = fu_render_usage(out, j->prompt_tokens, (uint32_t)j->chunks_sent, !j->legacy);
        if (rc == FU_OK)
            rc = fu_buf_appends(out, "}\n\n");
        if (rc == FU_OK)
            rc = fu_http_frame_chunk(out, start, j->chunked);
    }
    if (rc == FU_OK) {
        size_t start = out->len;
        rc = fu_buf_appends(out, "data: [DONE]\n\n");
        if (rc == FU_OK)
            rc = fu_http_frame_chunk(out, start, j->chunked);
    }
    if (rc == FU_OK && j->chunked)
        rc = fu_buf_appends(out, "0\r\n\r\n");
    return rc;
}

static enum fu_job_status step_oneshot(struct fu_job *j, uint64_t now, struct fu_buf *out,
                                       uint64_t *next_ns)
{
    if (now < j->due_ns) {
        *next_ns = j->due_ns;
        return FU_JOB_MORE;
    }
    if (j->cut >= 0)
        return FU_JOB_CUT;
    if (j->stall >= 0)
        return FU_JOB_STALL;
    if (fu_buf_append(out, j->resp, j->resp_len) != FU_OK)
        return FU_JOB_ERROR;
    return FU_JOB_DONE;
}

enum fu_job_status fu_job_step(struct fu_job *j, uint64_t now, struct fu_buf *out,
                               uint64_t *next_ns)
{
    *next_ns = 0;
    if (!j->stream)
        return step_oneshot(j, now, out, next_ns);
    uint64_t n = j->reply.n_tokens;
    for (;;) {
        uint64_t k = j->chunks_sent;
        if (j->started) {
            if (j->cut >= 0 && k >= (uint64_t)j->cut)
                return FU_JOB_CUT;
            if (j->stall >= 0 && k >= (uint64_t)j->stall)
                return FU_JOB_STALL;
        }
        /* The finish chunk follows the last token at once, as the real API does. */
        uint64_t due = due_at(j, k < n ? k : (n > 0 ? n - 1 : 0));
        if (now < due) {
            *next_ns = due;
            return FU_JOB_MORE;
        }
        if (out->len >= FU_JOB_HIGH_WATER)
            return FU_JOB_MORE; /* *next_ns == 0: resume when the output drains */
        int rc = FU_OK;
        if (!j->started) {
            rc = fu_http_append_head(out, 200, "text/event-stream; charset=utf-8", -1, j->chunked,
                                     j->keep_alive, j->extra_headers);
            if (rc == FU_OK && !j->legacy)
                rc = append_event(j, out, NULL, 0,
                                  "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\","
                                  "\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}]");
            j->started = true;
        } else if (k < n) {
            const char *tok = NULL;
            size_t tok_len = 0;
            if (fu_reply_next(&j->reply, &j->it, &tok, &tok_len)) {
                rc = append_event(j, out, tok, tok_len,
                                  j->legacy ? ",\"index\":0,\"logprobs\":null,"
                                              "\"finish_reason\":null}]"
                                            : "},\"logprobs\":null,\"finish_reason\":null}]");
            }
            j->chunks_sent++;
        } else {
            rc = append_finish(j, out);
            if (rc == FU_OK)
                return FU_JOB_DONE;
        }
        if (rc != FU_OK)
            return FU_JOB_ERROR;
    }
}
