/*
 * Unit tests of svc/metrics.h's labelled families: one series per combination of label values,
 * Prometheus escapes in label values, cumulative histogram buckets, the "other" series past
 * SVC_METRIC_SERIES_MAX, and many threads adding to the same series.
 */

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc/buf.h"
#include "svc/err.h"
#include "svc/metrics.h"
#include "test.h"

static struct svc_metric_vec *counter, *histo, *crowd, *shared;

/* The number after "line " in the rendering, or -1 when the line is absent. */
static long long value_of(const char *text, const char *line)
{
    size_t n = strlen(line);

    for (const char *p = text; p != NULL && *p != '\0'; p = strchr(p, '\n'), p = p ? p + 1 : p)
        if (strncmp(p, line, n) == 0 && p[n] == ' ')
            return strtoll(p + n + 1, NULL, 10);
    return -1;
}

static char *render(struct svc_buf *b)
{
    svc_buf_reset(b);
    T_EQ_INT(svc_metrics_render(b), SVC_OK);
    return b->data;
}

static void test_counter_series(void)
{
    struct svc_buf b;

    svc_buf_init(&b, 64u << 20);
    svc_metric_vec_add(counter, (const char *[]){"gpt-4o", "sk-1"}, 2);
    svc_metric_vec_add(counter, (const char *[]){"gpt-4o", "sk-1"}, 3);
    svc_metric_vec_add(counter, (const char *[]){"gpt-4o", "sk-2"}, 1);
    svc_metric_vec_add(counter, (const char *[]){"a\"b\\c\nd", NULL}, 1);
    render(&b);
    T_EQ_INT(value_of(b.data, "t_req_total{model=\"gpt-4o\",key=\"sk-1\"}"), 5);
    T_EQ_INT(value_of(b.data, "t_req_total{model=\"gpt-4o\",key=\"sk-2\"}"), 1);
    T_EQ_INT(value_of(b.data, "t_req_total{model=\"a\\\"b\\\\c\\nd\",key=\"\"}"), 1);
    T_ASSERT(strstr(b.data, "# TYPE t_req_total counter\n") != NULL);
    svc_buf_deinit(&b);
}

static void test_histogram(void)
{
    struct svc_buf b;

    svc_buf_init(&b, 64u << 20);
    svc_metric_vec_observe(histo, (const char *[]){"m"}, 0.003);
    svc_metric_vec_observe(histo, (const char *[]){"m"}, 0.01); /* on a bound: counted in it */
    svc_metric_vec_observe(histo, (const char *[]){"m"}, 7);
    svc_metric_vec_observe(histo, (const char *[]){"m"}, 1000); /* past the last bound */
    render(&b);
    T_EQ_INT(value_of(b.data, "t_secs_bucket{model=\"m\",le=\"0.005\"}"), 1);
    T_EQ_INT(value_of(b.data, "t_secs_bucket{model=\"m\",le=\"0.01\"}"), 2);
    T_EQ_INT(value_of(b.data, "t_secs_bucket{model=\"m\",le=\"5\"}"), 2);
    T_EQ_INT(value_of(b.data, "t_secs_bucket{model=\"m\",le=\"10\"}"), 3);
    T_EQ_INT(value_of(b.data, "t_secs_bucket{model=\"m\",le=\"300\"}"), 3);
    T_EQ_INT(value_of(b.data, "t_secs_bucket{model=\"m\",le=\"+Inf\"}"), 4);
    T_EQ_INT(value_of(b.data, "t_secs_count{model=\"m\"}"), 4);
    T_EQ_INT(value_of(b.data, "t_secs_sum{model=\"m\"}"), 1007); /* 1007.013 read as an integer */
    T_ASSERT(strstr(b.data, "# TYPE t_secs histogram\n") != NULL);
    svc_buf_deinit(&b);
}

static void test_series_cap(void)
{
    struct svc_buf b;
    char name[32], line[96];

    svc_buf_init(&b, 64u << 20);
    for (int i = 0; i < SVC_METRIC_SERIES_MAX + 50; i++) {
        snprintf(name, sizeof(name), "model-%d", i);
        svc_metric_vec_add(crowd, (const char *[]){name}, 1);
    }
    render(&b);
    snprintf(line, sizeof(line), "t_crowd_total{model=\"model-%d\"}", SVC_METRIC_SERIES_MAX - 1);
    T_EQ_INT(value_of(b.data, line), 1);
    snprintf(line, sizeof(line), "t_crowd_total{model=\"model-%d\"}", SVC_METRIC_SERIES_MAX);
    T_EQ_INT(value_of(b.data, line), -1);
    T_EQ_INT(value_of(b.data, "t_crowd_total{model=\"other\"}"), 50);
    /* a value seen before the cap keeps its own series */
    svc_metric_vec_add(crowd, (const char *[]){"model-0"}, 1);
    render(&b);
    T_EQ_INT(value_of(b.data, "t_crowd_total{model=\"model-0\"}"), 2);
    svc_buf_deinit(&b);
}

#define THREADS 8
#define ADDS 20000

static void *adder(void *arg)
{
    (void)arg;
    for (int i = 0; i < ADDS; i++)
        svc_metric_vec_add(shared, (const char *[]){i % 2 ? "odd" : "even"}, 1);
    return NULL;
}

static void test_threads(void)
{
    pthread_t th[THREADS];
    struct svc_buf b;

    for (int i = 0; i < THREADS; i++)
        T_EQ_INT(pthread_create(&th[i], NULL, adder, NULL), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    svc_buf_init(&b, 64u << 20);
    render(&b);
    T_EQ_INT(value_of(b.data, "t_shared_total{model=\"odd\"}"), THREADS * ADDS / 2);
    T_EQ_INT(value_of(b.data, "t_shared_total{model=\"even\"}"), THREADS * ADDS / 2);
    svc_buf_deinit(&b);
}

int main(void)
{
    static const char *const two[] = {"model", "key"}, *const one[] = {"model"};

    T_EQ_INT(
        svc_metric_vec_create(&counter, "t_req_total", "requests", SVC_METRIC_VEC_COUNTER, two, 2),
        SVC_OK);
    T_EQ_INT(svc_metric_vec_create(&histo, "t_secs", "seconds", SVC_METRIC_VEC_HISTOGRAM, one, 1),
             SVC_OK);
    T_EQ_INT(svc_metric_vec_create(&crowd, "t_crowd_total", "many", SVC_METRIC_VEC_COUNTER, one, 1),
             SVC_OK);
    T_EQ_INT(
        svc_metric_vec_create(&shared, "t_shared_total", "threads", SVC_METRIC_VEC_COUNTER, one, 1),
        SVC_OK);
    T_ASSERT(counter != NULL && histo != NULL && crowd != NULL && shared != NULL);
    struct svc_metric_vec *bad = NULL;
    T_EQ_INT(svc_metric_vec_create(&bad, "t_bad", "no labels", SVC_METRIC_VEC_COUNTER, one, 0),
             SVC_EINVAL);
    T_ASSERT(bad == NULL);
    T_RUN(test_counter_series);
    T_RUN(test_histogram);
    T_RUN(test_series_cap);
    T_RUN(test_threads);
    return 0;
}
