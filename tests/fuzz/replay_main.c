/*
 * A tiny stand-in for libFuzzer's driver: runs LLVMFuzzerTestOneInput once over every regular
 * file of the corpus directories (or single files) named on the command line, in name order.
 * ctest uses it to replay the committed seed corpora in the ordinary gcc and ASan builds, so a
 * regression found by fuzzing stays fixed without clang.
 *
 * Each input is copied into a malloc'd block of exactly its size, so ASan sees reads past the
 * end. Exits 1 when nothing was replayed (a missing corpus should not pass silently).
 */

#include <dirent.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REPLAY_MAX_INPUT (16u << 20) /* seeds are small; refuse anything absurd */

static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    uint8_t *buf;
    size_t n;

    if (f == NULL || fstat(fileno(f), &st) != 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        if (f != NULL)
            fclose(f);
        return -1;
    }
    if ((uint64_t)st.st_size > REPLAY_MAX_INPUT) {
        fprintf(stderr, "replay: %s: larger than %u bytes\n", path, REPLAY_MAX_INPUT);
        fclose(f);
        return -1;
    }
    n = (size_t)st.st_size;
    buf = malloc(n > 0 ? n : 1);
    if (buf == NULL || fread(buf, 1, n, f) != n) {
        fprintf(stderr, "replay: %s: cannot read\n", path);
        free(buf);
        fclose(f);
        return -1;
    }
    fclose(f);
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return 0;
}

static int is_dir(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int replay_dir(const char *dir, long *count)
{
    struct dirent **names = NULL;
    int n = scandir(dir, &names, NULL, alphasort);
    int rc = 0;

    if (n < 0) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    for (int i = 0; i < n; i++) {
        char path[4096];
        struct stat st;

        if (names[i]->d_name[0] == '.') /* ., .., and dotfiles such as .gitkeep */
            goto next;
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            goto next;
        fprintf(stderr, "replay: %s (%lld bytes)\n", path, (long long)st.st_size);
        if (replay_file(path) != 0)
            rc = -1;
        else
            (*count)++;
    next:
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv)
{
    long count = 0;
    int rc = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        if (is_dir(argv[i])) {
            if (replay_dir(argv[i], &count) != 0)
                rc = 1;
        } else if (replay_file(argv[i]) == 0) {
            count++;
        } else {
            rc = 1;
        }
    }
    fprintf(stderr, "replay: %ld inputs\n", count);
    if (count == 0)
        return 1;
    return rc;
}
