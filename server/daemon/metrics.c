/* metrics: Prometheus counters and histograms on atomics (see metrics.h). */
#include "metrics.h"

#include <stdatomic.h>
#include <stdlib.h>

static const char *const route_names[ROUTE_COUNT] = {"/livez",
                                                     "/readyz",
                                                     "/metrics",
                                                     "/v1/info",
                                                     "/v1/classes",
                                                     "GET /v1/labels/{id}",
                                                     "POST /v1/labels",
                                                     "/v1/maps/{id}",
                                                     "/v1/store",
                                                     "/v1/ids",
                                                     "/",
                                                     "other"};

/* The statuses lmapd answers with; anything else counts as "other". */
static const int statuses[] = {200, 206, 400, 401, 404, 405,
                               411, 413, 416, 431, 500, 503};
#define NSTATUS (sizeof statuses / sizeof statuses[0] + 1)

/* Latency buckets in milliseconds: sub-millisecond resolution first. */
static const double latency_ms[] = {0.05, 0.1, 0.25, 0.5, 1,   2.5,
                                    5,    10,  25,   50,  100, 1000};
#define NLAT (sizeof latency_ms / sizeof latency_ms[0])

static const unsigned batch_sizes[] = {1, 4, 16, 64, 256, 1024, 4096, 16384};
#define NBATCH (sizeof batch_sizes / sizeof batch_sizes[0])

static const char *const store_error_names[STORE_ERR_COUNT] = {
    "corrupt", "io", "file_changed", "truncated_read"};

struct metrics {
  atomic_ullong requests[ROUTE_COUNT][NSTATUS];
  atomic_ullong latency[NLAT + 1]; /* last: +Inf */
  atomic_ullong latency_sum_us;
  atomic_ullong batch[NBATCH + 1];
  atomic_ullong batch_sum;
  atomic_ullong labels;
  atomic_ullong store_errors[STORE_ERR_COUNT];
};

metrics *metrics_new(void) {
  return calloc(1, sizeof(metrics));
}

void metrics_free(metrics *m) {
  free(m);
}

static void add(atomic_ullong *a, unsigned long long v) {
  atomic_fetch_add_explicit(a, v, memory_order_relaxed);
}

static unsigned long long get(const atomic_ullong *a) {
  return atomic_load_explicit((atomic_ullong *)a, memory_order_relaxed);
}

void metrics_observe(metrics *m, metrics_route route, int status, double ms,
                     uint32_t batch, uint32_t labels) {
  size_t s = NSTATUS - 1;
  for (size_t i = 0; i + 1 < NSTATUS; i++)
    if (statuses[i] == status)
      s = i;
  if ((unsigned)route >= ROUTE_COUNT)
    route = ROUTE_OTHER;
  add(&m->requests[route][s], 1);
  size_t b = 0;
  while (b < NLAT && ms > latency_ms[b])
    b++;
  add(&m->latency[b], 1);
  add(&m->latency_sum_us, (unsigned long long)(ms * 1000.0));
  if (batch) {
    size_t k = 0;
    while (k < NBATCH && batch > batch_sizes[k])
      k++;
    add(&m->batch[k], 1);
    add(&m->batch_sum, batch);
  }
  add(&m->labels, labels);
}

unsigned long long metrics_store_error_add(metrics *m,
                                           metrics_store_error kind) {
  if ((unsigned)kind >= STORE_ERR_COUNT)
    kind = STORE_ERR_IO;
  return atomic_fetch_add_explicit(&m->store_errors[kind], 1,
                                   memory_order_relaxed) +
         1;
}

int metrics_render(const metrics *m, dynbuf *b) {
  int rc = lmap_dynbuf_addstr(
      b, "# HELP lmap_requests_total Requests answered, by route and status.\n"
         "# TYPE lmap_requests_total counter\n");
  for (size_t r = 0; rc == 0 && r < ROUTE_COUNT; r++)
    for (size_t s = 0; rc == 0 && s < NSTATUS; s++) {
      unsigned long long v = get(&m->requests[r][s]);
      if (v == 0)
        continue;
      if (s + 1 < NSTATUS)
        rc = lmap_dynbuf_printf(
            b,
            "lmap_requests_total{route=\"%s\",status=\"%d\"} "
            "%llu\n",
            route_names[r], statuses[s], v);
      else
        rc = lmap_dynbuf_printf(
            b,
            "lmap_requests_total{route=\"%s\",status=\"other\"}"
            " %llu\n",
            route_names[r], v);
    }
  if (rc == 0)
    rc = lmap_dynbuf_addstr(b,
                            "# HELP lmap_request_duration_seconds Time from "
                            "the request's headers to its answer.\n"
                            "# TYPE lmap_request_duration_seconds histogram\n");
  unsigned long long cum = 0;
  for (size_t i = 0; rc == 0 && i <= NLAT; i++) {
    cum += get(&m->latency[i]);
    if (i < NLAT)
      rc = lmap_dynbuf_printf(b,
                              "lmap_request_duration_seconds_bucket{le=\"%g\"} "
                              "%llu\n",
                              latency_ms[i] / 1000.0, cum);
    else
      rc = lmap_dynbuf_printf(
          b,
          "lmap_request_duration_seconds_bucket{le=\"+Inf\"} "
          "%llu\nlmap_request_duration_seconds_sum %.6f\n"
          "lmap_request_duration_seconds_count %llu\n",
          cum, (double)get(&m->latency_sum_us) / 1e6, cum);
  }
  if (rc == 0)
    rc = lmap_dynbuf_addstr(b, "# HELP lmap_batch_size Queries per labels "
                               "request.\n# TYPE lmap_batch_size histogram\n");
  cum = 0;
  for (size_t i = 0; rc == 0 && i <= NBATCH; i++) {
    cum += get(&m->batch[i]);
    if (i < NBATCH)
      rc = lmap_dynbuf_printf(b, "lmap_batch_size_bucket{le=\"%u\"} %llu\n",
                              batch_sizes[i], cum);
    else
      rc = lmap_dynbuf_printf(b,
                              "lmap_batch_size_bucket{le=\"+Inf\"} %llu\n"
                              "lmap_batch_size_sum %llu\nlmap_batch_size_count "
                              "%llu\n",
                              cum, get(&m->batch_sum), cum);
  }
  if (rc == 0)
    rc = lmap_dynbuf_printf(b,
                            "# HELP lmap_labels_served_total Soft labels "
                            "answered (one per query).\n"
                            "# TYPE lmap_labels_served_total counter\n"
                            "lmap_labels_served_total %llu\n",
                            get(&m->labels));
  /* Every kind is listed, zeros included, so that an alert on a rate has
   * a series to start from. */
  if (rc == 0)
    rc = lmap_dynbuf_addstr(b, "# HELP lmap_store_errors_total Store "
                               "trouble met while serving, by kind.\n"
                               "# TYPE lmap_store_errors_total counter\n");
  for (size_t k = 0; rc == 0 && k < STORE_ERR_COUNT; k++)
    rc = lmap_dynbuf_printf(b, "lmap_store_errors_total{kind=\"%s\"} %llu\n",
                            store_error_names[k], get(&m->store_errors[k]));
  return rc;
}
