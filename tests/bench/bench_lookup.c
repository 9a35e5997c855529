/*
 * bench_lookup: the cost of serving one label from a store, by stage, on
 * one core: find + decode a record (store_reader_get), then pool one
 * random box (sparse and dense, G = 1, softmax) and format the JSON item.
 * Prints microseconds per operation; figures, never assertions.
 *
 *   bench_lookup STORE [N]        (N random lookups, default 200000)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pool/itemjson.h"
#include "pool/pool.h"
#include "shared/dynbuf.h"
#include "store/store.h"

typedef struct ids {
  char **v;
  size_t n, cap;
} ids;

static int collect(void *ctx, const char *id, size_t len, const uint8_t *rec,
                   size_t rec_len) {
  (void)rec;
  (void)rec_len;
  ids *l = ctx;
  if (l->n == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 4096;
    l->v = realloc(l->v, l->cap * sizeof *l->v);
    if (l->v == NULL)
      return LMAP_ENOMEM;
  }
  l->v[l->n] = malloc(len + 1);
  if (l->v[l->n] == NULL)
    return LMAP_ENOMEM;
  memcpy(l->v[l->n], id, len);
  l->v[l->n++][len] = '\0';
  return 0;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}
static double unit(void) {
  return (double)(next() >> 11) * 0x1p-53;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: bench_lookup STORE [N]\n");
    return 2;
  }
  size_t n = argc > 2 ? strtoul(argv[2], NULL, 10) : 200000;
  diag d;
  store *s;
  store_reader *r;
  ids l = {0};
  if (store_open(argv[1], &s, &d) || store_reader_new(s, &r, &d) ||
      store_foreach(s, collect, &l, &d)) {
    fprintf(stderr, "bench_lookup: %s\n", diag_text(&d));
    return 1;
  }
  uint32_t C = store_get_meta(s)->shape.num_classes;
  pool_ws *ws = pool_ws_new(C);
  float *dense = malloc(sizeof(float) * C);
  dynbuf out;
  lmap_dynbuf_init(&out, 1u << 24);
  size_t *order = malloc(n * sizeof *order);
  pool_query *q = malloc(n * sizeof *q);
  for (size_t i = 0; i < n; i++) {
    order[i] = next() % l.n;
    double x0 = unit(), x1 = unit(), y0 = unit(), y1 = unit();
    q[i] = (pool_query){{x0 < x1 ? x0 : x1, y0 < y1 ? y0 : y1,
                         x0 < x1 ? x1 : x0, y0 < y1 ? y1 : y0},
                        POOL_BOX_XYXY,
                        1,
                        false,
                        true};
  }
  labelmap m;
  double t0 = now();
  for (size_t i = 0; i < n; i++)
    if (store_reader_get(r, l.v[order[i]], strlen(l.v[order[i]]), &m, &d))
      return fprintf(stderr, "%s\n", diag_text(&d)), 1;
  double t_get = now() - t0;

  /* Pooling and formatting on already decoded maps (one map reused). */
  store_reader_get(r, l.v[0], strlen(l.v[0]), &m, &d);
  double t_sparse = 0, t_dense = 0, t_json_sparse = 0, t_json_dense = 0;
  size_t bytes_sparse = 0, bytes_dense = 0;
  pool_cell cell;
  t0 = now();
  for (size_t i = 0; i < n; i++)
    pool_cell_sparse(&m, C, &q[i], 0, ws, &cell);
  t_sparse = now() - t0;
  t0 = now();
  for (size_t i = 0; i < n; i++)
    pool_dense(&m, C, &q[i], ws, dense);
  t_dense = now() - t0;
  t0 = now();
  for (size_t i = 0; i < n; i++) {
    lmap_dynbuf_reset(&out);
    itemjson_write(&out, l.v[0], &m, C, &q[i], ITEM_SPARSE, ws, dense);
    bytes_sparse += out.len;
  }
  t_json_sparse = now() - t0;
  t0 = now();
  for (size_t i = 0; i < n; i++) {
    lmap_dynbuf_reset(&out);
    itemjson_write(&out, l.v[0], &m, C, &q[i], ITEM_DENSE, ws, dense);
    bytes_dense += out.len;
  }
  t_json_dense = now() - t0;

  double us = 1e6 / (double)n;
  printf("store %s: %zu records, C=%u, %zu operations each\n", argv[1], l.n, C,
         n);
  printf("%-34s %8.2f us\n", "find + decode (store_reader_get)", t_get * us);
  printf("%-34s %8.2f us\n", "pool sparse, G=1", t_sparse * us);
  printf("%-34s %8.2f us\n", "pool dense, G=1", t_dense * us);
  printf("%-34s %8.2f us  (%zu bytes)\n", "pool + JSON item, sparse",
         t_json_sparse * us, bytes_sparse / n);
  printf("%-34s %8.2f us  (%zu bytes)\n", "pool + JSON item, dense",
         t_json_dense * us, bytes_dense / n);
  for (size_t i = 0; i < l.n; i++)
    free(l.v[i]);
  free(l.v);
  free(order);
  free(q);
  free(dense);
  lmap_dynbuf_free(&out);
  pool_ws_free(ws);
  store_reader_free(r);
  store_close(s);
  return 0;
}
