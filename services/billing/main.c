/*
 * chatweb-billing: will own every token balance (reserve / settle / ledger / events, see the
 * billing issue). Until then it runs the common service frame only: admin listener with
 * /healthz, /readyz and /metrics, and a data listener that knows no routes yet.
 */
#include "svc/http.h"
#include "svc/service.h"

static struct {
    SVC_COMMON_OPTIONS(SVC_OPTION_DECLARE)
} setting = {SVC_COMMON_OPTIONS(SVC_OPTION_INIT)};

int main(int argc, char **argv)
{
    svc_service_setup("billing", argc, argv, (struct svc_option *)&setting,
                      SVC_OPTION_COUNT(setting));
    svc_service_start();
    svc_service_serve_pool(NULL, 0, SVC_HTTP_STYLE_TEXT);
    svc_service_teardown();
    return SVC_EX_OK;
}
