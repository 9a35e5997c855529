/*
 * metrics: lmapd's Prometheus counters and histograms. Lock-free: every
 * observation is a few relaxed atomic adds on fixed arrays, so the request
 * path never waits on another thread; rendering reads them without
 * stopping writers (each value is exact, the set is a near-instant view).
 */
#ifndef LMAP_METRICS_H
#define LMAP_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "shared/dynbuf.h"

/* Routes, as labels. */
typedef enum metrics_route {
  ROUTE_LIVEZ,
  ROUTE_READYZ,
  ROUTE_METRICS,
  ROUTE_INFO,
  ROUTE_CLASSES,
  ROUTE_LABELS_GET,
  ROUTE_LABELS_POST,
  ROUTE_MAPS,
  ROUTE_STORE,
  ROUTE_IDS,
  ROUTE_UI,    /* the store browser's page and assets */
  ROUTE_OTHER, /* unknown routes and refused requests */
  ROUTE_COUNT
} metrics_route;

/* Kinds of store trouble met while serving (lmap_store_errors_total). */
typedef enum metrics_store_error {
  STORE_ERR_CORRUPT,   /* a damaged record, chunk or page (LMAP_ECORRUPT) */
  STORE_ERR_IO,        /* LMDB or the disk failed a read (LMAP_EIO) */
  STORE_ERR_CHANGED,   /* the served file changed size or was rewritten */
  STORE_ERR_TRUNCATED, /* a read met a page past the file's end (SIGBUS) */
  STORE_ERR_COUNT
} metrics_store_error;

typedef struct metrics metrics;

metrics *metrics_new(void); /* NULL when out of memory */
void metrics_free(metrics *m);

/* One answered request: its route, status, latency in milliseconds, and
 * for label routes the batch size (queries) and labels served. */
void metrics_observe(metrics *m, metrics_route route, int status, double ms,
                     uint32_t batch, uint32_t labels);

/* Counts one store error of `kind`; returns the count of that kind so far
 * (including this one). */
unsigned long long metrics_store_error_add(metrics *m,
                                           metrics_store_error kind);

/* Appends the Prometheus text exposition (format 0.0.4) to `b`. */
int metrics_render(const metrics *m, dynbuf *b);

#endif /* LMAP_METRICS_H */
