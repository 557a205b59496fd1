#include "svc/err.h"

const char *svc_strerror(int err)
{
    switch (err) {
    case SVC_OK: return "ok";
    case SVC_EINVAL: return "invalid argument";
    case SVC_ENOMEM: return "out of memory";
    case SVC_ETIMEDOUT: return "timed out";
    case SVC_EUNAVAIL: return "service unavailable";
    case SVC_ETOOLARGE: return "too large";
    case SVC_ENOTFOUND: return "not found";
    case SVC_EEXIST: return "already exists";
    case SVC_EIO: return "i/o error";
    case SVC_EDENIED: return "denied";
    case SVC_ECONFLICT: return "conflict";
    case SVC_ECANCELED: return "canceled";
    case SVC_EINTERNAL: return "internal error";
    }
    return "unknown error";
}

int svc_err_http_status(int err)
{
    switch (err) {
    case SVC_OK: return 200;
    case SVC_EINVAL: return 400;
    case SVC_EDENIED: return 401;
    case SVC_ENOTFOUND: return 404;
    case SVC_EEXIST:
    case SVC_ECONFLICT: return 409;
    case SVC_ETOOLARGE: return 413;
    case SVC_ECANCELED: return 499;
    case SVC_EUNAVAIL: return 503;
    case SVC_ETIMEDOUT: return 504;
    }
    return 500;
}
