/*
 * chatweb-tokenizer-bench: times svc/tokenizer.h in process, so start-up, reading the file and
 * printing ids are not in the figures (bench/tokenizer/run.mjs runs it beside the tiktoken npm
 * package on the same text).
 *
 *   chatweb-tokenizer-bench --encoding NAME [--repeat N] [--min-seconds S] FILE
 *
 * Prints one JSON object: the load time of the encoding (the first svc_tokenizer_get in this
 * process: parsing the embedded ranks and compiling the pattern), then the file's size, its token
 * count, and the best and median wall time of svc_tokenizer_encode over the repetitions (at least
 * N, and more until S seconds have been spent). Exit 64 on bad flags, 1 when it cannot measure.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "svc/err.h"
#include "svc/tokenizer.h"

#define BENCH_MAX_RUNS 1000

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long size;

    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 ||
        fseek(f, 0, SEEK_SET) != 0)
        goto fail;
    buf = malloc((size_t)size + 1);
    if (buf == NULL || fread(buf, 1, (size_t)size, f) != (size_t)size)
        goto fail;
    fclose(f);
    *len = (size_t)size;
    return buf;
fail:
    if (f != NULL)
        fclose(f);
    free(buf);
    return NULL;
}

int main(int argc, char **argv)
{
    const char *encname = NULL, *path = NULL;
    long repeat = 5;
    double min_s = 1.0, t0, load_ms, times[BENCH_MAX_RUNS];
    enum svc_tokenizer_encoding_e enc;
    const struct svc_tokenizer *tk;
    size_t len = 0, ntok = 0;
    int runs = 0;
    char *text;
    char *end;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--encoding") == 0 && i + 1 < argc) {
            encname = argv[++i];
        } else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) {
            repeat = strtol(argv[++i], &end, 10);
            if (*end != '\0' || repeat < 1 || repeat > BENCH_MAX_RUNS)
                goto usage;
        } else if (strcmp(argv[i], "--min-seconds") == 0 && i + 1 < argc) {
            min_s = strtod(argv[++i], &end);
            if (*end != '\0' || !(min_s >= 0 && min_s <= 600))
                goto usage;
        } else if (argv[i][0] != '-' && path == NULL) {
            path = argv[i];
        } else {
            goto usage;
        }
    }
    if (encname == NULL || path == NULL || svc_tokenizer_encoding_from_name(encname, &enc) != 0)
        goto usage;

    t0 = now_s();
    tk = svc_tokenizer_get(enc);
    load_ms = (now_s() - t0) * 1e3;
    if (tk == NULL) {
        fprintf(stderr, "chatweb-tokenizer-bench: cannot load %s\n", encname);
        return 1;
    }
    text = slurp(path, &len);
    if (text == NULL) {
        fprintf(stderr, "chatweb-tokenizer-bench: cannot read %s\n", path);
        return 1;
    }
    t0 = now_s();
    while (runs < BENCH_MAX_RUNS && (runs < repeat || now_s() - t0 < min_s)) {
        uint32_t *ids;
        double t = now_s();
        if (svc_tokenizer_encode(tk, text, len, &ids, &ntok) != SVC_OK) {
            fprintf(stderr, "chatweb-tokenizer-bench: encode failed\n");
            free(text);
            return 1;
        }
        times[runs++] = now_s() - t;
        free(ids);
    }
    free(text);
    qsort(times, (size_t)runs, sizeof(times[0]), cmp_double);
    printf("{\"encoding\":\"%s\",\"load_ms\":%.2f,\"bytes\":%zu,\"tokens\":%zu,\"runs\":%d,"
           "\"best_s\":%.6f,\"median_s\":%.6f}\n",
           encname, load_ms, len, ntok, runs, times[0], times[runs / 2]);
    return 0;
usage:
    fprintf(stderr, "usage: chatweb-tokenizer-bench --encoding cl100k_base|o200k_base "
                    "[--repeat N] [--min-seconds S] FILE\n");
    return 64;
}
