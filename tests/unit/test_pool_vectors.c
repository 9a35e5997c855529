/*
 * test_pool_vectors: replays the torchvision golden vectors against pool.c.
 *
 * tests/vectors/pool/vectors.json (written by
 * tests/vectors/gen_pool_vectors.py) holds small sparse maps, queries over
 * them, and torchvision's roi_align (+ softmax) answer for each, in sparse
 * form per output cell. For every query, with softmax on and off, this test
 * checks:
 *   - pool_dense against the reference: max abs diff <= 1e-4 on
 *     probabilities, <= 5e-4 on pooled logits;
 *   - pool_cell_sparse against pool_dense: the listed classes are distinct,
 *     below C, sorted by decreasing value (ties by increasing class), their
 *     values equal the dense ones, every unlisted class equals `rest` (0 for
 *     logits), listed = exactly the classes with a non-zero pooled logit
 *     (both lmap's own and torchvision's), and the probabilities sum to 1;
 *   - the sparse answer, expanded with `rest`, against the reference;
 *   - pool_cell_touched against pool_dense: a row rebuilt from its `rest`
 *     and listed values equals the dense row bit for bit, its classes are
 *     distinct and below C, and there are at most pool_cell_max_entries.
 * It also checks that pool_check_query refuses malformed queries and that a
 * workspace of the wrong class count is refused. The max errors are printed.
 * Working directory: tests/ (as ctest runs unit tests).
 */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "pool/pool.h"
#include "test.h"

#define VECTORS_PATH "vectors/pool/vectors.json"
#define TOL_PROB 1e-4
#define TOL_LOGIT 5e-4
#define MAX_REPORTS 20

static int failures;
static double max_err_prob_dense, max_err_logit_dense;
static double max_err_prob_sparse, max_err_logit_sparse;
static double max_sparse_vs_dense;
static long checked_values;

/* Context of the current comparison, for failure messages. */
static const char *cur_map;
static size_t cur_query;
static const char *cur_note;
static bool cur_softmax;

static void report(const char *what, uint32_t cell, long cls, double want,
                   double got) {
  failures++;
  if (failures <= MAX_REPORTS)
    fprintf(stderr,
            "FAIL map %s query %zu (%s, softmax %s) cell %u class %ld: %s: "
            "expected %.9g got %.9g\n",
            cur_map, cur_query, cur_note, cur_softmax ? "on" : "off", cell, cls,
            what, want, got);
}

static const json_t *get(const json_t *obj, const char *key) {
  const json_t *v = json_object_get(obj, key);
  if (v == NULL) {
    fprintf(stderr, "%s: missing key \"%s\"\n", VECTORS_PATH, key);
    exit(1);
  }
  return v;
}

static long get_int(const json_t *obj, const char *key) {
  const json_t *v = get(obj, key);
  ASSERT(json_is_integer(v));
  return (long)json_integer_value(v);
}

/* Fills the G*G x C reference (probabilities or logits) from the sparse
 * cells of one query. */
static void expand_reference(const json_t *cells, uint32_t c, bool softmax,
                             double *ref) {
  size_t i;
  const json_t *cell;
  json_array_foreach(cells, i, cell) {
    const json_t *cls = get(cell, "classes");
    const json_t *vals = get(cell, softmax ? "probs" : "logits");
    const json_t *rest = get(cell, "rest");
    double fill = 0.0;
    if (softmax && !json_is_null(rest))
      fill = json_number_value(rest);
    ASSERT_EQ(json_array_size(cls), json_array_size(vals));
    for (uint32_t k = 0; k < c; k++)
      ref[i * c + k] = fill;
    for (size_t j = 0; j < json_array_size(cls); j++) {
      long k = (long)json_integer_value(json_array_get(cls, j));
      ASSERT(k >= 0 && k < (long)c);
      ref[i * c + (size_t)k] = json_number_value(json_array_get(vals, j));
    }
  }
}

static double fmax_(double a, double b) {
  return a > b ? a : b;
}

/* Sparse answer of one cell against the dense answer of the same query, the
 * set of classes torchvision gives a non-zero logit, and the reference. */
static void check_sparse_cell(const pool_cell *pc, const float *dense_row,
                              const double *ref_row, const bool *ref_listed,
                              const bool *lmap_listed, uint32_t c,
                              uint32_t cell, bool *seen) {
  double tol_same = 0.0;
  memset(seen, 0, c * sizeof *seen);
  if (pc->n > c) {
    report("listed more classes than exist", cell, -1, c, pc->n);
    return;
  }
  double sum = 0.0;
  for (uint32_t j = 0; j < pc->n; j++) {
    uint32_t k = pc->classes[j];
    double v = pc->values[j];
    if (k >= c) {
      report("class index out of range", cell, k, c, k);
      return;
    }
    if (seen[k])
      report("class listed twice", cell, k, 0, 1);
    seen[k] = true;
    if (j > 0) {
      double prev = pc->values[j - 1];
      if (prev < v || (prev == v && pc->classes[j - 1] > k)) {
        char what[96];
        snprintf(what, sizeof what,
                 "not sorted by decreasing value, ties by increasing class "
                 "(previous: class %u)",
                 pc->classes[j - 1]);
        report(what, cell, k, prev, v);
      }
    }
    tol_same = 1e-6 * fmax_(1.0, fabs(dense_row[k]));
    double dd = fabs(v - dense_row[k]);
    max_sparse_vs_dense = fmax_(max_sparse_vs_dense, dd);
    if (dd > tol_same)
      report("sparse value != dense value", cell, k, dense_row[k], v);
    if (!ref_listed[k])
      report("listed, but torchvision's pooled logit is 0", cell, k, 0, v);
    if (!lmap_listed[k])
      report("listed, but lmap's dense pooled logit is 0", cell, k, 0, v);
    double e = fabs(v - ref_row[k]);
    if (cur_softmax)
      max_err_prob_sparse = fmax_(max_err_prob_sparse, e);
    else
      max_err_logit_sparse = fmax_(max_err_logit_sparse, e);
    if (e > (cur_softmax ? TOL_PROB : TOL_LOGIT))
      report("sparse value vs torchvision", cell, k, ref_row[k], v);
    sum += v;
  }
  if (!cur_softmax && pc->rest != 0.0f)
    report("rest must be 0 for logits", cell, -1, 0, pc->rest);
  for (uint32_t k = 0; k < c; k++) {
    if (seen[k])
      continue;
    if (ref_listed[k])
      report("not listed, but torchvision's pooled logit is non-zero", cell, k,
             ref_row[k], pc->rest);
    if (lmap_listed[k])
      report("not listed, but lmap's dense pooled logit is non-zero", cell, k,
             dense_row[k], pc->rest);
    tol_same = 1e-6 * fmax_(1.0, fabs(dense_row[k]));
    double dd = fabs((double)pc->rest - dense_row[k]);
    max_sparse_vs_dense = fmax_(max_sparse_vs_dense, dd);
    if (dd > tol_same)
      report("rest != dense value of unlisted class", cell, k, dense_row[k],
             pc->rest);
    double e = fabs((double)pc->rest - ref_row[k]);
    if (cur_softmax)
      max_err_prob_sparse = fmax_(max_err_prob_sparse, e);
    else
      max_err_logit_sparse = fmax_(max_err_logit_sparse, e);
    if (e > (cur_softmax ? TOL_PROB : TOL_LOGIT))
      report("sparse rest vs torchvision", cell, k, ref_row[k], pc->rest);
    sum += pc->rest;
  }
  if (cur_softmax && fabs(sum - 1.0) > 1e-4)
    report("probabilities do not sum to 1", cell, -1, 1.0, sum);
}

/* Cell `cell` of pool_cell_touched, rebuilt into a dense row, against
 * pool_dense's row. */
static void check_touched_cell(const labelmap *m, uint32_t c,
                               const pool_query *q, pool_ws *ws, uint32_t cell,
                               const float *dense_row, bool *seen) {
  pool_cell pc;
  ASSERT_EQ(pool_cell_touched(m, c, q, cell, ws, &pc), 0);
  ASSERT(pc.n <= pool_cell_max_entries(c, m->k, m->h, m->w, q->output_size));
  memset(seen, 0, c * sizeof *seen);
  float *row = malloc(c * sizeof *row);
  ASSERT(row != NULL);
  for (uint32_t k = 0; k < c; k++)
    row[k] = pc.rest;
  for (uint32_t i = 0; i < pc.n; i++) {
    ASSERT(pc.classes[i] < c);
    ASSERT(!seen[pc.classes[i]]);
    seen[pc.classes[i]] = true;
    row[pc.classes[i]] = pc.values[i];
  }
  for (uint32_t k = 0; k < c; k++)
    if (memcmp(&row[k], &dense_row[k], sizeof row[k]) != 0)
      report("touched cell rebuilt vs dense (bitwise)", cell, k, dense_row[k],
             row[k]);
  free(row);
}

static void run_query(const labelmap *m, uint32_t c, pool_ws *ws,
                      const json_t *jq, float *dense, float *dense_logits,
                      double *ref, double *ref_logits, bool *ref_listed,
                      bool *lmap_listed, bool *seen) {
  pool_query q;
  memset(&q, 0, sizeof q);
  const json_t *box = get(jq, "box");
  ASSERT_EQ(json_array_size(box), 4);
  for (size_t i = 0; i < 4; i++) {
    ASSERT(json_is_number(json_array_get(box, i)));
    q.box[i] = json_number_value(json_array_get(box, i));
  }
  const char *fmt = json_string_value(get(jq, "box_format"));
  ASSERT(fmt != NULL);
  if (strcmp(fmt, "xyxy") == 0)
    q.box_format = POOL_BOX_XYXY;
  else {
    ASSERT_STR(fmt, "relabel");
    q.box_format = POOL_BOX_RELABEL;
  }
  long g = get_int(jq, "output_size");
  ASSERT(g >= 1 && g <= (long)POOL_MAX_OUTPUT_SIZE);
  q.output_size = (uint32_t)g;
  q.flip = json_is_true(get(jq, "flip"));
  const json_t *cells = get(jq, "cells");
  uint32_t ncell = (uint32_t)(g * g);
  ASSERT_EQ(json_array_size(cells), ncell);

  /* The reference's listed set: classes with a non-zero torchvision logit. */
  expand_reference(cells, c, false, ref_logits);
  for (size_t i = 0; i < (size_t)ncell * c; i++)
    ref_listed[i] = ref_logits[i] != 0.0;

  /* Logits first: lmap's own listed set comes from its dense logits. */
  for (int pass = 0; pass < 2; pass++) {
    bool sm = pass == 1;
    q.softmax = sm;
    cur_softmax = sm;
    diag d;
    diag_clear(&d);
    int rc = pool_check_query(&q, &d);
    if (rc != 0) {
      fprintf(stderr,
              "map %s query %zu (%s): pool_check_query refused a "
              "valid query: %d %s\n",
              cur_map, cur_query, cur_note, rc, diag_text(&d));
      failures++;
      return;
    }
    float *out = sm ? dense : dense_logits;
    double *r = sm ? ref : ref_logits;
    if (sm)
      expand_reference(cells, c, true, ref);
    ASSERT_EQ(pool_dense(m, c, &q, ws, out), 0);
    if (!sm)
      for (size_t i = 0; i < (size_t)ncell * c; i++)
        lmap_listed[i] = dense_logits[i] != 0.0f;
    for (uint32_t cell = 0; cell < ncell; cell++) {
      for (uint32_t k = 0; k < c; k++) {
        size_t i = (size_t)cell * c + k;
        double e = fabs((double)out[i] - r[i]);
        checked_values++;
        if (sm) {
          max_err_prob_dense = fmax_(max_err_prob_dense, e);
          if (e > TOL_PROB)
            report("dense prob vs torchvision", cell, k, r[i], out[i]);
        } else {
          max_err_logit_dense = fmax_(max_err_logit_dense, e);
          if (e > TOL_LOGIT)
            report("dense logit vs torchvision", cell, k, r[i], out[i]);
        }
      }
    }
    for (uint32_t cell = 0; cell < ncell; cell++) {
      pool_cell pc;
      memset(&pc, 0, sizeof pc);
      ASSERT_EQ(pool_cell_sparse(m, c, &q, cell, ws, &pc), 0);
      check_sparse_cell(&pc, out + (size_t)cell * c, r + (size_t)cell * c,
                        ref_listed + (size_t)cell * c,
                        lmap_listed + (size_t)cell * c, c, cell, seen);
      check_touched_cell(m, c, &q, ws, cell, out + (size_t)cell * c, seen);
    }
  }
}

static size_t run_map(const json_t *jm) {
  cur_map = json_string_value(get(jm, "name"));
  long k = get_int(jm, "k"), h = get_int(jm, "h"), w = get_int(jm, "w");
  long c = get_int(jm, "num_classes");
  ASSERT(k >= 1 && h >= 1 && w >= 1 && c >= 1);
  size_t n = (size_t)(k * h * w);
  const json_t *js = get(jm, "scores"), *jc = get(jm, "classes");
  ASSERT_EQ(json_array_size(js), n);
  ASSERT_EQ(json_array_size(jc), n);

  labelmap m = {.k = (uint32_t)k, .h = (uint32_t)h, .w = (uint32_t)w};
  m.scores = malloc(n * sizeof *m.scores);
  m.classes = malloc(n * sizeof *m.classes);
  ASSERT(m.scores != NULL && m.classes != NULL);
  /* The file is [K, H, W]; labelmap is cell-major. */
  for (long kk = 0; kk < k; kk++)
    for (long r = 0; r < h; r++)
      for (long q = 0; q < w; q++) {
        size_t src = (size_t)((kk * h + r) * w + q);
        size_t dst = (size_t)((r * w + q) * k + kk);
        m.scores[dst] = (float)json_number_value(json_array_get(js, src));
        long cls = (long)json_integer_value(json_array_get(jc, src));
        ASSERT(cls >= 0 && cls < c);
        m.classes[dst] = (uint32_t)cls;
      }

  size_t most = 49u * (size_t)c; /* largest G in the file is 7; checked */
  float *dense = malloc(most * sizeof *dense);
  float *dense_logits = malloc(most * sizeof *dense_logits);
  double *ref = malloc(most * sizeof *ref);
  double *ref_logits = malloc(most * sizeof *ref_logits);
  bool *ref_listed = malloc(most * sizeof *ref_listed);
  bool *lmap_listed = malloc(most * sizeof *lmap_listed);
  bool *seen = malloc((size_t)c * sizeof *seen);
  pool_ws *ws = pool_ws_new((uint32_t)c);
  ASSERT(dense && dense_logits && ref && ref_logits && ref_listed &&
         lmap_listed && seen && ws);

  /* A workspace made for another class count is refused. */
  {
    pool_query q = {.box = {0, 0, 1, 1}, .output_size = 1, .softmax = true};
    pool_cell pc;
    ASSERT_EQ(pool_check_query(&q, NULL), 0);
    ASSERT_EQ(pool_dense(&m, (uint32_t)c + 1, &q, ws, dense), LMAP_EINVAL);
    ASSERT_EQ(pool_cell_sparse(&m, (uint32_t)c + 1, &q, 0, ws, &pc),
              LMAP_EINVAL);
  }

  const json_t *qs = get(jm, "queries");
  size_t i;
  const json_t *jq;
  json_array_foreach(qs, i, jq) {
    cur_query = i;
    cur_note = json_string_value(get(jq, "note"));
    ASSERT(get_int(jq, "output_size") <= 7);
    run_query(&m, (uint32_t)c, ws, jq, dense, dense_logits, ref, ref_logits,
              ref_listed, lmap_listed, seen);
  }
  pool_ws_free(ws);
  free(seen);
  free(lmap_listed);
  free(ref_listed);
  free(ref_logits);
  free(ref);
  free(dense_logits);
  free(dense);
  free(m.classes);
  free(m.scores);
  return json_array_size(qs);
}

/* pool_check_query refuses malformed queries with LMAP_EBADBOX/EINVAL and a
 * message, and accepts the limits. */
static void check_query_validation(void) {
  struct {
    double box[4];
    pool_box_format fmt;
    uint32_t g;
    bool ok;
  } cases[] = {
      {{0, 0, 1, 1}, POOL_BOX_XYXY, 1, true},
      {{0, 0, 1, 1}, POOL_BOX_XYXY, POOL_MAX_OUTPUT_SIZE, true},
      {{0.5, 0.5, 0.5, 0.5}, POOL_BOX_XYXY, 1, true},
      {{0, 0, 1, 1}, POOL_BOX_XYXY, 0, false},
      {{0, 0, 1, 1}, POOL_BOX_XYXY, POOL_MAX_OUTPUT_SIZE + 1, false},
      {{0.6, 0, 0.5, 1}, POOL_BOX_XYXY, 1, false}, /* x0 > x1 */
      {{0, 0.6, 1, 0.5}, POOL_BOX_XYXY, 1, false}, /* y0 > y1 */
      {{-0.1, 0, 1, 1}, POOL_BOX_XYXY, 1, false},  /* outside */
      {{0, 0, 1.1, 1}, POOL_BOX_XYXY, 1, false},   /* outside */
      {{0, 0, 1, NAN}, POOL_BOX_XYXY, 1, false},   /* not finite */
      {{0, 0, INFINITY, 1}, POOL_BOX_XYXY, 1, false},
      {{0, 0, 1, 1}, POOL_BOX_RELABEL, 1, true},
      {{0.25, 0.5, 0.75, 0.5}, POOL_BOX_RELABEL, 1, true},
      {{0.5, 0, 0.6, 1}, POOL_BOX_RELABEL, 1, false},      /* a + c > 1 */
      {{0, 0.5, 1, 0.6}, POOL_BOX_RELABEL, 1, false},      /* b + d > 1 */
      {{0.2, 0.2, -0.1, 0.5}, POOL_BOX_RELABEL, 1, false}, /* negative size */
      {{0.2, NAN, 0.1, 0.5}, POOL_BOX_RELABEL, 1, false},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    pool_query q;
    memset(&q, 0, sizeof q);
    memcpy(q.box, cases[i].box, sizeof q.box);
    q.box_format = cases[i].fmt;
    q.output_size = cases[i].g;
    q.softmax = true;
    diag d;
    diag_clear(&d);
    int rc = pool_check_query(&q, &d);
    if (cases[i].ok) {
      if (rc != 0) {
        fprintf(stderr, "FAIL validation case %zu: refused a valid query: %s\n",
                i, diag_text(&d));
        failures++;
      }
    } else if (!(rc == LMAP_EBADBOX || rc == LMAP_EINVAL) || d.msg[0] == 0) {
      fprintf(stderr,
              "FAIL validation case %zu: expected LMAP_EBADBOX or "
              "LMAP_EINVAL with a message, got %d \"%s\"\n",
              i, rc, d.msg);
      failures++;
    }
    test__checks++;
  }
}

int main(void) {
  json_error_t err;
  json_t *doc = json_load_file(VECTORS_PATH, 0, &err);
  if (doc == NULL) {
    fprintf(stderr, "%s:%d: %s (run from tests/)\n", VECTORS_PATH, err.line,
            err.text);
    return 1;
  }
  ASSERT_EQ(get_int(doc, "version"), 1);
  const json_t *maps = get(doc, "maps");
  ASSERT(json_array_size(maps) >= 10);
  size_t nq = 0;
  size_t i;
  const json_t *jm;
  size_t nmaps = json_array_size(maps);
  json_array_foreach(maps, i, jm) nq += run_map(jm);
  check_query_validation();
  json_decref(doc);

  printf("pool vectors: %zu maps, %zu queries x softmax on/off, %ld values\n",
         nmaps, nq, checked_values);
  printf("max abs error vs torchvision: dense probs %.3g, dense logits %.3g, "
         "sparse probs %.3g, sparse logits %.3g (tolerances %g, %g)\n",
         max_err_prob_dense, max_err_logit_dense, max_err_prob_sparse,
         max_err_logit_sparse, TOL_PROB, TOL_LOGIT);
  printf("max |sparse - dense| %.3g\n", max_sparse_vs_dense);
  if (failures > 0) {
    fprintf(stderr, "%d failures (first %d shown)\n", failures, MAX_REPORTS);
    return 1;
  }
  ASSERT(nq > 300);
  TEST_DONE();
}
