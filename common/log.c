#include "svc/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096 /* longer messages are cut, never split over two lines */
#define RID_MAX 64

int svc__log_level = SVC_LOG_LVL_INFO;
static char log_service[32] = "svc";

static const char *level_names[] = {"error", "warn", "notice", "info", "debug"};

void svc_log_setup(const char *service, int level)
{
    snprintf(log_service, sizeof(log_service), "%s", service);
    svc__log_level = level;
}

int svc_log_level_parse(const char *text)
{
    for (int i = 0; i < (int)(sizeof(level_names) / sizeof(level_names[0])); i++)
        if (strcmp(text, level_names[i]) == 0)
            return i;
    return -1;
}

/* Appends src to dst[*len..cap) as a logfmt quoted value, escaping quotes, backslashes and
 * control characters so one event is always one line. */
static void append_quoted(char *dst, size_t *len, size_t cap, const char *src)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = *len;

    if (n + 1 < cap)
        dst[n++] = '"';
    for (const unsigned char *p = (const unsigned char *)src; *p && n + 6 < cap; p++) {
        if (*p == '"' || *p == '\\') {
            dst[n++] = '\\';
            dst[n++] = (char)*p;
        } else if (*p == '\n') {
            dst[n++] = '\\';
            dst[n++] = 'n';
        } else if (*p < 0x20 || *p == 0x7f) {
            dst[n++] = '\\';
            dst[n++] = 'x';
            dst[n++] = hex[*p >> 4];
            dst[n++] = hex[*p & 15];
        } else {
            dst[n++] = (char)*p;
        }
    }
    if (n + 1 < cap)
        dst[n++] = '"';
    *len = n;
}

/* len + what snprintf reports, never past the buffer (snprintf reports what it wanted). */
static size_t clamp_add(size_t len, int n, size_t cap)
{
    if (n < 0)
        return len;
    return len + (size_t)n >= cap ? cap - 1 : len + (size_t)n;
}

void svc_log_write(int level, const char *rid, const char *action, const char *fmt, ...)
{
    char msg[LOG_LINE_MAX / 2];
    char line[LOG_LINE_MAX];
    struct timeval tv;
    struct tm tm;
    size_t len;
    va_list ap;

    if (level < 0 || level > SVC_LOG_LVL_DEBUG)
        level = SVC_LOG_LVL_ERR;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    len = strftime(line, sizeof(line), "ts=%Y-%m-%dT%H:%M:%S", &tm);
    len = clamp_add(len, snprintf(line + len, sizeof(line) - len, ".%03dZ svc=%s lvl=%s",
                                  (int)(tv.tv_usec / 1000), log_service, level_names[level]),
                    sizeof(line));
    if (rid != NULL && rid[0] != '\0' && len < sizeof(line) - 8) {
        /* Request ids are tokens (the HTTP layer only accepts [A-Za-z0-9._-]); anything else
         * is masked and long ones are cut, so a rid can never break or overrun the line. */
        memcpy(line + len, " rid=", 5);
        len += 5;
        for (size_t k = 0; rid[k] != '\0' && k < RID_MAX; k++) {
            char c = rid[k];
            int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '_' || c == '.';
            line[len++] = ok ? c : '?';
        }
    }
    if (action != NULL && len < sizeof(line) - 8) {
        memcpy(line + len, " action=", 8);
        len += 8;
        append_quoted(line, &len, sizeof(line) - 1, action);
    }
    if (len < sizeof(line) - 5) {
        memcpy(line + len, " msg=", 5);
        len += 5;
        append_quoted(line, &len, sizeof(line) - 1, msg);
    }
    line[len++] = '\n';
    /* One write per line keeps lines from different threads whole. */
    if (write(STDERR_FILENO, line, len) < 0) {
        /* nothing sensible to do when stderr is gone */
    }
}
