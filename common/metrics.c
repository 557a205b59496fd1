#include "svc/metrics.h"

#define METRIC_BLOCKS_MAX 16

static struct {
    struct svc_metric *m;
    size_t n;
} blocks[METRIC_BLOCKS_MAX];
static size_t nblocks;

void svc_metrics_register(struct svc_metric *m, size_t n)
{
    if (nblocks < METRIC_BLOCKS_MAX) {
        blocks[nblocks].m = m;
        blocks[nblocks].n = n;
        nblocks++;
    }
}

int svc_metrics_render(struct svc_buf *out)
{
    int rc = SVC_OK;

    for (size_t b = 0; b < nblocks && rc == SVC_OK; b++) {
        for (size_t i = 0; i < blocks[b].n && rc == SVC_OK; i++) {
            const struct svc_metric *m = &blocks[b].m[i];
            rc = svc_buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n%s %lld\n", m->name, m->help,
                                 m->name, m->type == SVC_METRIC_COUNTER ? "counter" : "gauge",
                                 m->name, (long long)atomic_load(&m->value));
        }
    }
    return rc;
}
