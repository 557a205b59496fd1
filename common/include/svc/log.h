#ifndef SVC_LOG_H
#define SVC_LOG_H

/*
 * Structured logging: one logfmt line per event on stderr, e.g.
 *   ts=2026-11-27T19:50:00.123Z svc=chat lvl=info rid=3f0c.. action=upstream msg="connected"
 *
 * The level is checked before any formatting (the macros below), so a disabled DEBUG line costs
 * one integer compare. Secrets must never be passed to these functions: log names and ids, never
 * passwords, keys or tokens. Thread-safe: each line is written with one write(2).
 */

enum svc_log_level {
    SVC_LOG_LVL_ERR = 0,
    SVC_LOG_LVL_WARN = 1,
    SVC_LOG_LVL_NOTICE = 2,
    SVC_LOG_LVL_INFO = 3,
    SVC_LOG_LVL_DEBUG = 4,
};

extern int svc__log_level;

/* Sets the service name and level printed on every line. Call once in main before threads. */
void svc_log_setup(const char *service, int level);

/* Parses "error|warn|notice|info|debug"; returns the level or -1 when the text is not one. */
int svc_log_level_parse(const char *text);

/*
 * Writes one line. rid is the request id (NULL or "" when there is none); action says what was
 * going on ("startup", "upstream", "rpc auth.Authenticate"). The message is escaped for logfmt.
 */
void svc_log_write(int level, const char *rid, const char *action, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define SVC_LOG(lvl, rid, action, ...)                                                   \
    do {                                                                                 \
        if ((lvl) <= svc__log_level)                                                     \
            svc_log_write((lvl), (rid), (action), __VA_ARGS__);                          \
    } while (0)

#define SVC_LOG_ERR(rid, action, ...) SVC_LOG(SVC_LOG_LVL_ERR, rid, action, __VA_ARGS__)
#define SVC_LOG_WARN(rid, action, ...) SVC_LOG(SVC_LOG_LVL_WARN, rid, action, __VA_ARGS__)
#define SVC_LOG_NOTICE(rid, action, ...) SVC_LOG(SVC_LOG_LVL_NOTICE, rid, action, __VA_ARGS__)
#define SVC_LOG_INFO(rid, action, ...) SVC_LOG(SVC_LOG_LVL_INFO, rid, action, __VA_ARGS__)
#define SVC_LOG_DEBUG(rid, action, ...) SVC_LOG(SVC_LOG_LVL_DEBUG, rid, action, __VA_ARGS__)

#endif
