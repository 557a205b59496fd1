/*
 * fu_api: the routes of the fake upstream - the OpenAI-compatible /v1 endpoints, the /_fake
 * inspection endpoints and /healthz. Called on a worker thread for every complete request.
 */
#ifndef FU_API_H
#define FU_API_H

#include <stdint.h>

struct fu_conn;
struct fu_req;

/* Process a nonce once at start-up (makes completion ids differ between runs). */
void fu_api_setup(uint32_t nonce);

/*
 * Answer `req` on `c`: either queue a complete response with fu_conn_send() or hand a job to
 * fu_conn_start_job(). `req` is borrowed for the duration of the call; t0_ns is the monotonic
 * time at which the request was complete.
 */
void fu_api_handle(struct fu_conn *c, const struct fu_req *req, uint64_t t0_ns);

#endif /* FU_API_H */
