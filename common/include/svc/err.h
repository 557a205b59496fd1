#ifndef SVC_ERR_H
#define SVC_ERR_H

/*
 * Error codes of the common library and the services.
 *
 * 0 is success; every failure is a negative SVC_E* value (nginx and libuv style).
 * Functions that return a status carry SVC_MUST_CHECK so a dropped error is a compile error.
 */

#define SVC_MUST_CHECK __attribute__((warn_unused_result))

enum svc_err {
    SVC_OK = 0,
    SVC_EINVAL = -1,     /* bad argument or malformed input */
    SVC_ENOMEM = -2,     /* allocation failed */
    SVC_ETIMEDOUT = -3,  /* a deadline passed */
    SVC_EUNAVAIL = -4,   /* a dependency (Redis, SQL, a peer service) cannot be reached */
    SVC_ETOOLARGE = -5,  /* a size limit was hit */
    SVC_ENOTFOUND = -6,  /* the thing asked for does not exist */
    SVC_EEXIST = -7,     /* the thing to create exists already */
    SVC_EIO = -8,        /* an I/O or protocol error */
    SVC_EDENIED = -9,    /* authentication or permission refused */
    SVC_ECONFLICT = -10, /* a concurrent change won, or a precondition failed */
    SVC_ECANCELED = -11, /* the operation was cancelled (client went away) */
    SVC_EINTERNAL = -12, /* a bug or an unexpected state */
};

/* A short static English text for an error code; never NULL. Thread-safe. */
const char *svc_strerror(int err);

/* The HTTP status that best reports an error code to a client (400, 404, 413, 503, ...). */
int svc_err_http_status(int err);

#endif
