/*
 * chatweb-proxy: will serve the metered OpenAI-compatible API under /v1 (see the proxy issue).
 * Until then it runs the common service frame: admin listener (/healthz, /readyz, /metrics) and
 * a data listener that answers every path with an OpenAI-style 404 error object, as the seed
 * does when OPENAI_PROXY is off.
 */
#include "svc/http.h"
#include "svc/service.h"

static struct {
    SVC_COMMON_OPTIONS(SVC_OPTION_DECLARE)
} setting = {SVC_COMMON_OPTIONS(SVC_OPTION_INIT)};

int main(int argc, char **argv)
{
    svc_service_setup("proxy", argc, argv, (struct svc_option *)&setting,
                      SVC_OPTION_COUNT(setting));
    svc_service_start();
    svc_service_serve_pool(NULL, 0, SVC_HTTP_STYLE_OPENAI);
    svc_service_teardown();
    return SVC_EX_OK;
}
