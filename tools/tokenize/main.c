/*
 * chatweb-tokenize: token ids (or their count) of stdin, exactly as tiktoken's encode_ordinary
 * gives them, for operators, tests and benchmarks (docs/tokens.md).
 *
 *   chatweb-tokenize --encoding cl100k_base|o200k_base [--count] < text
 *   chatweb-tokenize --model NAME [--count] < text     (encoding from the model map and the
 *                                                       MODEL_WINDOWS environment variable)
 *
 * Prints the ids space-separated on one line, or the count. stdin is read whole, at most
 * TOK_MAX_INPUT bytes. Exit codes (sysexits): 0; 64 bad or missing flags (usage on stderr);
 * 65 input too large; 70 the tokenizer could not be loaded; 74 read or write error; 78 a bad
 * MODEL_WINDOWS.
 */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>

#include "svc/err.h"
#include "svc/modelmap.h"
#include "svc/tokenizer.h"

#define TOK_MAX_INPUT ((size_t)64 << 20) /* 64 MiB of stdin */
#define TOK_OUT_BUF (1u << 16)

static const char usage_line[] =
    "usage: chatweb-tokenize (--encoding cl100k_base|o200k_base | --model NAME) [--count] "
    "< text\n";

static int usage_error(const char *why, const char *arg)
{
    if (arg != NULL)
        fprintf(stderr, "chatweb-tokenize: %s: %s\n", why, arg);
    else
        fprintf(stderr, "chatweb-tokenize: %s\n", why);
    fputs(usage_line, stderr);
    return EX_USAGE;
}

static void help(void)
{
    fputs(usage_line, stdout);
    fputs("\n"
          "Reads all of stdin (at most 64 MiB) and prints its token ids, space-separated on one\n"
          "line, as tiktoken's encode_ordinary gives them: special-token text is plain text and\n"
          "invalid UTF-8 counts as U+FFFD.\n"
          "\n"
          "  --encoding NAME  cl100k_base or o200k_base\n"
          "  --model NAME     the encoding of model NAME in the model map (gpt-4o: o200k_base);\n"
          "                   MODEL_WINDOWS=<prefix>=<window>[:<encoding>],... extends the map\n"
          "  --count          print the number of tokens instead of the ids\n"
          "  --help           this text\n"
          "\n"
          "Exit codes: 0 ok, 64 bad flags, 65 input over 64 MiB, 70 tokenizer not loaded,\n"
          "74 read/write error, 78 bad MODEL_WINDOWS. See docs/tokens.md.\n",
          stdout);
}

/* All of stdin into *buf (caller frees) and *len; 0, EX_DATAERR (too large) or EX_IOERR. */
static int read_all(char **buf, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);

    *buf = NULL;
    *len = 0;
    if (b == NULL)
        return EX_OSERR;
    for (;;) {
        ssize_t r;
        if (n == cap) {
            char *nb;
            if (cap > TOK_MAX_INPUT) {
                free(b);
                fprintf(stderr, "chatweb-tokenize: input is larger than 64 MiB (%zu bytes)\n",
                        TOK_MAX_INPUT);
                return EX_DATAERR;
            }
            cap = cap * 2 > TOK_MAX_INPUT + 1 ? TOK_MAX_INPUT + 1 : cap * 2;
            nb = realloc(b, cap);
            if (nb == NULL) {
                free(b);
                fprintf(stderr, "chatweb-tokenize: out of memory reading stdin\n");
                return EX_OSERR;
            }
            b = nb;
        }
        r = read(STDIN_FILENO, b + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            fprintf(stderr, "chatweb-tokenize: reading stdin: %s\n", strerror(errno));
            free(b);
            return EX_IOERR;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > TOK_MAX_INPUT) {
            free(b);
            fprintf(stderr, "chatweb-tokenize: input is larger than 64 MiB (%zu bytes)\n",
                    TOK_MAX_INPUT);
            return EX_DATAERR;
        }
    }
    *buf = b;
    *len = n;
    return 0;
}

/* stdout through one buffer; write errors are reported once at the end. */
struct out {
    char buf[TOK_OUT_BUF];
    size_t n;
    int failed;
};

static void out_flush(struct out *o)
{
    size_t at = 0;

    while (at < o->n && !o->failed) {
        ssize_t w = write(STDOUT_FILENO, o->buf + at, o->n - at);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            o->failed = errno != 0 ? errno : EIO;
        else
            at += (size_t)w;
    }
    o->n = 0;
}

static void out_u64(struct out *o, unsigned long long v, char sep)
{
    char tmp[24];
    int k = 0;

    if (o->n + sizeof(tmp) > sizeof(o->buf))
        out_flush(o);
    if (sep != 0)
        o->buf[o->n++] = sep;
    do {
        tmp[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (k > 0)
        o->buf[o->n++] = tmp[--k];
}

static int arg_value(int argc, char **argv, int *i, const char *flag, const char **val)
{
    size_t fl = strlen(flag);

    if (strncmp(argv[*i], flag, fl) != 0)
        return 0;
    if (argv[*i][fl] == '=') {
        *val = argv[*i] + fl + 1;
        return 1;
    }
    if (argv[*i][fl] != '\0')
        return 0;
    if (*i + 1 >= argc) {
        *val = NULL;
        return 1;
    }
    *val = argv[++*i];
    return 1;
}

int main(int argc, char **argv)
{
    const char *encname = NULL, *model = NULL, *val;
    int count = 0, rc;
    enum svc_tokenizer_encoding_e enc = SVC_TOK_CL100K_BASE;
    const struct svc_tokenizer *tk;
    static struct out o;
    char *text = NULL;
    size_t len = 0, n = 0;
    uint32_t *ids = NULL;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            help();
            return 0;
        } else if (strcmp(argv[i], "--count") == 0) {
            count = 1;
        } else if (arg_value(argc, argv, &i, "--encoding", &val)) {
            if (val == NULL || val[0] == '\0')
                return usage_error("--encoding needs a value", NULL);
            if (encname != NULL)
                return usage_error("--encoding given twice", NULL);
            encname = val;
        } else if (arg_value(argc, argv, &i, "--model", &val)) {
            if (val == NULL || val[0] == '\0')
                return usage_error("--model needs a value", NULL);
            if (model != NULL)
                return usage_error("--model given twice", NULL);
            model = val;
        } else {
            return usage_error("unknown argument", argv[i]);
        }
    }
    if ((encname == NULL) == (model == NULL))
        return usage_error("give exactly one of --encoding and --model", NULL);
    if (encname != NULL && svc_tokenizer_encoding_from_name(encname, &enc) != SVC_OK)
        return usage_error("unknown encoding (cl100k_base or o200k_base)", encname);
    if (model != NULL) {
        struct svc_modelmap *map = NULL;
        struct svc_modelmap_info mi;
        char err[256];
        rc = svc_modelmap_create(&map, getenv("MODEL_WINDOWS"), err, sizeof(err));
        if (rc == SVC_EINVAL) {
            fprintf(stderr, "chatweb-tokenize: %s\n", err);
            return EX_CONFIG;
        }
        if (rc != SVC_OK) {
            fprintf(stderr, "chatweb-tokenize: model map: %s\n", svc_strerror(rc));
            return EX_OSERR;
        }
        svc_modelmap_lookup(map, model, &mi);
        enc = mi.encoding;
        svc_modelmap_destroy(&map);
    }

    tk = svc_tokenizer_get(enc);
    if (tk == NULL) {
        fprintf(stderr, "chatweb-tokenize: cannot load %s\n", svc_tokenizer_encoding_name(enc));
        return EX_SOFTWARE;
    }
    if ((rc = read_all(&text, &len)) != 0)
        return rc;

    if (count) {
        long long c = svc_tokenizer_count(tk, text, len);
        if (c < 0) {
            fprintf(stderr, "chatweb-tokenize: %s\n", svc_strerror((int)c));
            free(text);
            return EX_SOFTWARE;
        }
        out_u64(&o, (unsigned long long)c, 0);
    } else {
        rc = svc_tokenizer_encode(tk, text, len, &ids, &n);
        if (rc != SVC_OK) {
            fprintf(stderr, "chatweb-tokenize: %s\n", svc_strerror(rc));
            free(text);
            return EX_SOFTWARE;
        }
        for (size_t i = 0; i < n; i++)
            out_u64(&o, ids[i], i > 0 ? ' ' : 0);
    }
    o.buf[o.n++] = '\n';
    out_flush(&o);
    free(ids);
    free(text);
    if (o.failed) {
        fprintf(stderr, "chatweb-tokenize: writing stdout: %s\n", strerror(o.failed));
        return EX_IOERR;
    }
    return 0;
}
