/*
 * bench_body: what reading the body of POST /v1/labels costs lmapd per
 * query, for the request forms issue 13 weighed, each read as far as the
 * server needs (every query's id and box checked, ready to pool):
 *   json       today's {"queries": [{"id", "box", "flip"}...]} through
 *              jansson and queryjson_query, as api.c reads it;
 *   json-dup   the same without JSON_REJECT_DUPLICATES (jansson's cheaper
 *              mode: duplicate keys are then silently kept, last wins);
 *   columnar   {"ids": [...], "boxes": [[4 numbers]...], "flips": [...]}
 *              through jansson;
 *   binary     application/x-lmap-queries (client/shared/querybin.h).
 * Prints ns per query and body bytes per query for batches of 256
 * ImageNet-style ids with RandomResizedCrop-like boxes; figures, never
 * assertions.
 *
 *   bench_body [ROUNDS]            (default 2000 batches per form)
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/labelmap.h"
#include "pool/pool.h"
#include "pool/queryjson.h"
#include "shared/dynbuf.h"
#include "shared/querybin.h"

#define BATCH 256

typedef struct query {
  char id[32];
  double box[4];
  int flip;
} query;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static uint64_t rng = 88172645463325252ull;
static double uniform(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (double)(rng >> 11) / 9007199254740992.0;
}

static void make_queries(query *q) {
  for (int i = 0; i < BATCH; i++) {
    snprintf(q[i].id, sizeof q[i].id, "n%08u_%u",
             1440000u + (unsigned)(uniform() * 1000) * 7,
             (unsigned)(uniform() * 40000));
    double w = 0.3 + 0.7 * uniform(), h = 0.3 + 0.7 * uniform();
    double x = (1 - w) * uniform(), y = (1 - h) * uniform();
    /* Through float32, as liblmap sends xyxy boxes. */
    q[i].box[0] = (float)x;
    q[i].box[1] = (float)y;
    q[i].box[2] = (float)(x + w);
    q[i].box[3] = (float)(y + h);
    q[i].flip = uniform() < 0.5;
  }
}

static void rows_json(const query *q, dynbuf *b) {
  lmap_dynbuf_addstr(b, "{\"queries\":[");
  for (int i = 0; i < BATCH; i++)
    lmap_dynbuf_printf(b,
                       "%s{\"id\":\"%s\",\"box\":[%.9g,%.9g,%.9g,%.9g],"
                       "\"flip\":%s}",
                       i ? "," : "", q[i].id, q[i].box[0], q[i].box[1],
                       q[i].box[2], q[i].box[3], q[i].flip ? "true" : "false");
  lmap_dynbuf_addstr(b, "],\"output_size\":1,\"format\":\"dense\"}");
}

static void columnar_json(const query *q, dynbuf *b) {
  lmap_dynbuf_addstr(b, "{\"ids\":[");
  for (int i = 0; i < BATCH; i++)
    lmap_dynbuf_printf(b, "%s\"%s\"", i ? "," : "", q[i].id);
  lmap_dynbuf_addstr(b, "],\"boxes\":[");
  for (int i = 0; i < BATCH; i++)
    lmap_dynbuf_printf(b, "%s[%.9g,%.9g,%.9g,%.9g]", i ? "," : "", q[i].box[0],
                       q[i].box[1], q[i].box[2], q[i].box[3]);
  lmap_dynbuf_addstr(b, "],\"flips\":[");
  for (int i = 0; i < BATCH; i++)
    lmap_dynbuf_printf(b, "%s%s", i ? "," : "", q[i].flip ? "true" : "false");
  lmap_dynbuf_addstr(b, "]}");
}

static void binary(const query *q, dynbuf *b) {
  lmap_querybin_begin(b, BATCH);
  for (int i = 0; i < BATCH; i++)
    lmap_querybin_put(b, q[i].id, strlen(q[i].id), q[i].box, q[i].flip);
}

/* Each reader fills `out` and returns the number of queries read. */
static int read_rows(const dynbuf *b, size_t flags, pool_query *out) {
  json_t *root = json_loadb(b->data, b->len, flags, NULL);
  json_t *qs = json_object_get(root, "queries");
  int n = 0;
  for (size_t i = 0; i < json_array_size(qs); i++) {
    const char *id;
    char where[32];
    snprintf(where, sizeof where, "queries[%zu]", i);
    out[i] = (pool_query){{0}, POOL_BOX_XYXY, 1, false, true};
    if (queryjson_query(json_array_get(qs, i), where, false, &out[i], NULL, &id,
                        NULL) == 0)
      n++;
  }
  json_decref(root);
  return n;
}

static int read_json(const dynbuf *b, pool_query *out) {
  return read_rows(b, JSON_REJECT_DUPLICATES, out);
}

static int read_json_dup(const dynbuf *b, pool_query *out) {
  return read_rows(b, 0, out);
}

static int read_columnar(const dynbuf *b, pool_query *out) {
  json_t *root = json_loadb(b->data, b->len, JSON_REJECT_DUPLICATES, NULL);
  json_t *ids = json_object_get(root, "ids"),
         *boxes = json_object_get(root, "boxes"),
         *flips = json_object_get(root, "flips");
  int n = 0;
  for (size_t i = 0; i < json_array_size(ids); i++) {
    const char *id = json_string_value(json_array_get(ids, i));
    json_t *box = json_array_get(boxes, i);
    out[i] = (pool_query){{0}, POOL_BOX_XYXY, 1, false, true};
    for (size_t k = 0; k < 4; k++)
      out[i].box[k] = json_number_value(json_array_get(box, k));
    out[i].flip = json_is_true(json_array_get(flips, i));
    if (id && labelmap_id_check(id, strlen(id), NULL) == 0 &&
        pool_check_query(&out[i], NULL) == 0)
      n++;
  }
  json_decref(root);
  return n;
}

static int read_binary(const dynbuf *b, pool_query *out) {
  lmap_querybin_reader r;
  lmap_querybin_query q;
  char err[LMAP_QUERYBIN_ERRLEN];
  uint32_t count;
  if (lmap_querybin_open(&r, b->data, b->len, &count, err))
    return 0;
  int n = 0;
  char id[LABELMAP_MAX_ID_LEN + 1];
  for (uint32_t i = 0; lmap_querybin_next(&r, &q, err) == 1; i++) {
    memcpy(id, q.id, q.id_len);
    id[q.id_len] = '\0';
    out[i] = (pool_query){{0}, POOL_BOX_XYXY, 1, q.flip != 0, true};
    memcpy(out[i].box, q.box, sizeof q.box);
    if (labelmap_id_check(id, q.id_len, NULL) == 0 &&
        pool_check_query(&out[i], NULL) == 0)
      n++;
  }
  return n;
}

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 2000;
  query q[BATCH];
  make_queries(q);
  struct {
    const char *name;
    void (*write)(const query *, dynbuf *);
    int (*read)(const dynbuf *, pool_query *);
  } forms[] = {{"json", rows_json, read_json},
               {"json-dup", rows_json, read_json_dup},
               {"columnar", columnar_json, read_columnar},
               {"binary", binary, read_binary}};
  pool_query out[BATCH];
  double base = 0;
  printf("%-10s %12s %14s %10s\n", "form", "ns/query", "bytes/query",
         "vs json");
  for (size_t f = 0; f < sizeof forms / sizeof forms[0]; f++) {
    dynbuf b;
    lmap_dynbuf_init(&b, 1 << 24);
    forms[f].write(q, &b);
    if (forms[f].read(&b, out) != BATCH) {
      fprintf(stderr, "bench_body: %s read back wrong\n", forms[f].name);
      return 1;
    }
    /* JSON's 9 digits give back the float32 the box went through. */
    for (int i = 0; i < BATCH; i++)
      if ((float)out[i].box[0] != (float)q[i].box[0] ||
          (float)out[i].box[3] != (float)q[i].box[3] ||
          out[i].flip != (q[i].flip != 0)) {
        fprintf(stderr, "bench_body: %s changed query %d\n", forms[f].name, i);
        return 1;
      }
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) { /* best of 5: the machine is shared */
      double t = now();
      for (int r = 0; r < rounds / 5; r++)
        forms[f].read(&b, out);
      double ns = (now() - t) / ((double)(rounds / 5) * BATCH) * 1e9;
      best = ns < best ? ns : best;
    }
    if (f == 0)
      base = best;
    printf("%-10s %12.1f %14.1f %9.2fx\n", forms[f].name, best,
           (double)b.len / BATCH, base / best);
    lmap_dynbuf_free(&b);
  }
  return 0;
}
