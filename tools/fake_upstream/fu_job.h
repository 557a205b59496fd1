/*
 * fu_job: a response that is not written at once - a streamed (SSE) completion paced by
 * ttft/tps, or a complete response held back until its due time. The owning connection calls
 * fu_job_step() whenever the job's timer fires or its output drains; the job appends whatever
 * is due to the output buffer. Owned and used by one worker thread.
 */
#ifndef FU_JOB_H
#define FU_JOB_H

#include <stdbool.h>
#include <stdint.h>

#include "fu_buf.h"
#include "fu_reply.h"

/* A job stops producing while this much output is still unsent (backpressure: a slow reader
 * costs at most this much memory per stream). */
#define FU_JOB_HIGH_WATER (256u * 1024u)

enum fu_job_status {
    FU_JOB_MORE,  /* call again at *next_ns, or when output drained if *next_ns == 0 */
    FU_JOB_DONE,  /* the response is complete in the output buffer */
    FU_JOB_CUT,   /* close the connection once the output is flushed, without finishing */
    FU_JOB_STALL, /* nothing more will ever be sent; keep the connection open */
    FU_JOB_ERROR, /* out of memory: drop the connection */
};

struct fu_job;

/* What a streamed completion needs; strings are copied. */
struct fu_stream_opts {
    bool legacy;  /* /v1/completions shape instead of chat.completion.chunk */
    bool chunked; /* HTTP/1.1 chunked framing; else the body ends when the connection closes */
    bool keep_alive;
    bool include_usage; /* stream_options.include_usage */
    const char *id;
    const char *model;
    int64_t created;
    uint32_t prompt_tokens;
    const char *extra_headers; /* NULL or "Name: value\r\n" lines */
    uint64_t request_seq;
    uint64_t t0_ns; /* when the request was complete */
    struct fu_knobs knobs;
};

/* Create a streamed completion. Takes ownership of `reply` (its storage is moved; the caller's
 * copy is cleared) also on failure. Returns NULL on ENOMEM. */
struct fu_job *fu_job_create_stream(const struct fu_stream_opts *o, struct fu_reply *reply);

/* Create a held-back complete response: `resp` (head and body, taken over from the buffer, also
 * on failure) is sent at due_ns; cut >= 0 closes instead of sending, stall >= 0 never sends.
 * Returns NULL on ENOMEM. */
struct fu_job *fu_job_create_oneshot(uint64_t request_seq, uint64_t due_ns, struct fu_buf *resp,
                                     int64_t cut, int64_t stall);

/* Append what is due at now_ns to `out`. See enum fu_job_status. */
enum fu_job_status fu_job_step(struct fu_job *j, uint64_t now_ns, struct fu_buf *out,
                               uint64_t *next_ns);


/* Append an OpenAI usage object {"prompt_tokens","completion_tokens","total_tokens"}, plus the
 * zeroed *_tokens_details objects of chat completions when `details`. Returns 0 or a fu_buf
 * error. Shared with the non-streamed responses so both report usage identically. */
__attribute__((warn_unused_result)) int fu_render_usage(struct fu_buf *out, uint32_t prompt,
                                                        uint32_t completion, bool details);

/* Free a job; NULL-safe; sets *j to NULL. */
void fu_job_destroy(struct fu_job **j);

/* How the answer of a job handed to a connection or stream ended. */
enum fu_job_end {
    FU_JOB_END_DONE,          /* complete (fu_job_step said FU_JOB_DONE) */
    FU_JOB_END_CUT,           /* closed on purpose: FU_JOB_CUT, once its output was flushed */
    FU_JOB_END_CLIENT_CLOSED, /* the client went away first (or the answer broke off) */
    FU_JOB_END_SHUTDOWN,      /* the fake is stopping: nothing is recorded */
};

/* A job was handed to a connection or stream (fu_conn_start_job): a stream counts in
 * fu_stats.open_streams and total_streams until fu_job_end. */
void fu_job_begin(const struct fu_job *j);

/* The job's answer is over: record the event tests read (stream_done for a completed stream,
 * stream_cut or client_closed for any job; fu_record), uncount it and free it (*j = NULL).
 * NULL-safe. The plain port and the front both end their jobs here, so both report the same. */
void fu_job_end(struct fu_job **j, enum fu_job_end how);

#endif /* FU_JOB_H */
