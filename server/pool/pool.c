/*
 * pool: exact sparse RoIAlign + softmax (see pool.h for the derivation).
 *
 * Per output bin, axis_weights() replays torchvision's sampling of one axis
 * in float32 and sums the bilinear fractions each grid row (or column)
 * receives; the bin's weight of cell (r, q) is then wy[r] * wx[q] / count.
 * Accumulation runs over the K entries of the cells with non-zero weight
 * into a per-class double accumulator; a generation stamp marks the classes
 * touched by the current bin, so the accumulator never needs clearing.
 */
#include "pool.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct pool_ws {
  uint32_t num_classes;
  uint32_t generation;
  uint32_t *stamp;   /* [C] generation in which acc[c] was last touched */
  double *acc;       /* [C] pooled logit of class c in the current bin */
  double *ex;        /* [C] exp(logit - max) of the i-th class softmaxed */
  uint32_t *touched; /* [C] classes touched in the current bin */
  struct pool_entry {
    float value; /* the value returned, so ties are ties as the user sees */
    uint32_t cls;
  } * entries;       /* [C] sparse output before sorting */
  uint32_t *classes; /* [C] sparse output: classes */
  float *values;     /* [C] sparse output: values */
  double wy[LABELMAP_MAX_SIDE];
  double wx[LABELMAP_MAX_SIDE];
  float *row;     /* binary16 scores of one map row's span, widened */
  size_t row_cap; /* floats row holds */
};

pool_ws *pool_ws_new(uint32_t num_classes) {
  if (num_classes == 0 || num_classes > LABELMAP_MAX_CLASSES)
    return NULL;
  pool_ws *ws = calloc(1, sizeof *ws);
  if (ws == NULL)
    return NULL;
  ws->num_classes = num_classes;
  ws->stamp = calloc(num_classes, sizeof *ws->stamp);
  ws->acc = calloc(num_classes, sizeof *ws->acc);
  ws->ex = calloc(num_classes, sizeof *ws->ex);
  ws->touched = calloc(num_classes, sizeof *ws->touched);
  ws->entries = calloc(num_classes, sizeof *ws->entries);
  ws->classes = calloc(num_classes, sizeof *ws->classes);
  ws->values = calloc(num_classes, sizeof *ws->values);
  if (!ws->stamp || !ws->acc || !ws->ex || !ws->touched || !ws->entries ||
      !ws->classes || !ws->values) {
    pool_ws_free(ws);
    return NULL;
  }
  return ws;
}

void pool_ws_free(pool_ws *ws) {
  if (ws == NULL)
    return;
  free(ws->stamp);
  free(ws->acc);
  free(ws->ex);
  free(ws->touched);
  free(ws->entries);
  free(ws->classes);
  free(ws->values);
  free(ws->row);
  free(ws);
}

int pool_check_query(const pool_query *q, diag *d) {
  const double *b = q->box;
  for (int i = 0; i < 4; i++)
    if (!isfinite(b[i]))
      return diag_field(d, LMAP_EBADBOX, "box",
                        "box[%d] is not a finite number", i);
  if (q->box_format == POOL_BOX_XYXY) {
    if (b[0] < 0 || b[1] < 0 || b[2] > 1 || b[3] > 1)
      return diag_field(d, LMAP_EBADBOX, "box",
                        "box [%.9g, %.9g, %.9g, %.9g] leaves the unit square "
                        "(need 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1)",
                        b[0], b[1], b[2], b[3]);
    if (b[0] > b[2] || b[1] > b[3])
      return diag_field(d, LMAP_EBADBOX, "box",
                        "box [%.9g, %.9g, %.9g, %.9g] has x0 > x1 or y0 > y1",
                        b[0], b[1], b[2], b[3]);
  } else if (q->box_format == POOL_BOX_RELABEL) {
    /* (top, left, height, width), each a fraction of the image. A small
     * slack admits i/H + h/H rounding just above 1. */
    if (b[0] < 0 || b[1] < 0 || b[2] < 0 || b[3] < 0 ||
        b[0] + b[2] > 1 + 1e-9 || b[1] + b[3] > 1 + 1e-9)
      return diag_field(
          d, LMAP_EBADBOX, "box",
          "relabel box (%.9g, %.9g, %.9g, %.9g) is not a crop inside "
          "the image (need top, left, height, width >= 0 and "
          "top + height <= 1, left + width <= 1)",
          b[0], b[1], b[2], b[3]);
  } else {
    return diag_field(d, LMAP_EINVAL, "box_format", "unknown box format %d",
                      (int)q->box_format);
  }
  if (q->output_size < 1 || q->output_size > POOL_MAX_OUTPUT_SIZE)
    return diag_field(d, LMAP_EINVAL, "output_size",
                      "output_size %u is outside [1, %u]", q->output_size,
                      POOL_MAX_OUTPUT_SIZE);
  return 0;
}

/* The region [start, end] on both axes in grid coordinates, as float32
 * exactly as the reference computes it (see pool.h and docs/POOLING.md). */
typedef struct region {
  float x0, y0, x1, y1;
} region;

static region box_region(const labelmap *m, const pool_query *q) {
  region g;
  const double *b = q->box;
  if (q->box_format == POOL_BOX_RELABEL) {
    /* The official loader: (a, b, a + c, b + d) in float64, then float32,
     * then "* W - 0.5" in float32 with W the map width for both axes. */
    float s = (float)m->w;
    g.x0 = (float)b[0] * s - 0.5f;
    g.y0 = (float)b[1] * s - 0.5f;
    g.x1 = (float)(b[0] + b[2]) * s - 0.5f;
    g.y1 = (float)(b[1] + b[3]) * s - 0.5f;
  } else {
    float sw = (float)m->w, sh = (float)m->h;
    g.x0 = (float)b[0] * sw - 0.5f;
    g.y0 = (float)b[1] * sh - 0.5f;
    g.x1 = (float)b[2] * sw - 0.5f;
    g.y1 = (float)b[3] * sh - 0.5f;
  }
  return g;
}

/* Sampling of one axis of one output bin, replaying torchvision's
 * roi_align (aligned=False, sampling_ratio=-1) in float32: region length at
 * least 1, ceil(length / G) samples per bin, samples outside [-1, size]
 * dropped, clamping at 0 and size - 1, bilinear fractions. Writes the summed
 * fraction per grid line into w[0..size) and returns the sample count, and
 * via lo and hi the range of lines with non-zero weight (lo > hi if none). */
static int axis_weights(float start, float end, uint32_t size, uint32_t g,
                        uint32_t bin, double *w, uint32_t *lo, uint32_t *hi) {
  float len = end - start;
  if (!(len > 1.f))
    len = 1.f;
  float bin_size = len / (float)g;
  int grid = (int)ceilf(len / (float)g);
  *lo = size;
  *hi = 0;
  for (int i = 0; i < grid; i++) {
    float y = start + (float)bin * bin_size +
              (float)((float)i + .5f) * bin_size / (float)grid;
    if (y < -1.0f || y > (float)size)
      continue;
    if (y <= 0)
      y = 0;
    uint32_t low = (uint32_t)y, high;
    if (low >= size - 1) {
      high = low = size - 1;
      y = (float)low;
    } else {
      high = low + 1;
    }
    float l = y - (float)low;
    float h = (float)(1. - l);
    /* Zero lines lazily as the touched range grows. */
    if (*lo > *hi) {
      w[low] = 0;
      w[high] = 0;
      *lo = low;
      *hi = high;
    } else {
      while (*lo > low)
        w[--*lo] = 0;
      while (*hi < high)
        w[++*hi] = 0;
    }
    w[low] += h;
    w[high] += l;
  }
  return grid;
}

/* The forms of map a bin's sum is specialised for (labelmap.h): the
 * float form every decoder fills, the resident arena's compact form
 * (binary16 scores, 16-bit classes), and any other mix through the
 * accessors. */
enum map_form { FORM_F32_U32, FORM_F16_U16, FORM_MIXED };

/* The binary16 scores of cells [qlo, qhi] of row r, widened to float32
 * into ws->row in one pass that the compiler vectorises (exact: every
 * binary16 value is a float32 one), so that the sum reads each as a float
 * widened to double. Converting entry by entry (a shift and a multiply
 * into double) cost about three times the instructions. */
static const float *row_f32(const labelmap *m, uint32_t r, uint32_t qlo,
                            uint32_t qhi, pool_ws *ws) {
  size_t n = (size_t)(qhi - qlo + 1) * m->k;
  const uint16_t *src = m->scores16 + ((size_t)r * m->w + qlo) * m->k;
  float *dst = ws->row;
  for (size_t i = 0; i < n; i++)
    dst[i] = f16_finite_to_f32(src[i]);
  return dst;
}

/* Adds the weighted entries of the cells in [rlo, rhi] x [qlo, qhi] into
 * ws->acc, listing newly touched classes in ws->touched from `n` on;
 * returns the new count. `form` (and `k`, m->k, where it is a constant)
 * is a constant at each call, so the compiler emits one loop per form
 * with no test per entry. */
static inline __attribute__((always_inline)) uint32_t
bin_sum(const labelmap *m, enum map_form form, uint32_t k, uint32_t rlo,
        uint32_t rhi, uint32_t qlo, uint32_t qhi, double inv, pool_ws *ws) {
  uint32_t gen = ws->generation, n = 0;
  uint32_t *stamp = ws->stamp, *touched = ws->touched;
  double *acc = ws->acc;
  for (uint32_t r = rlo; r <= rhi; r++) {
    double wr = ws->wy[r] * inv;
    if (wr == 0)
      continue;
    const float *row =
        form == FORM_F16_U16 ? row_f32(m, r, qlo, qhi, ws) : NULL;
    for (uint32_t q = qlo; q <= qhi; q++) {
      double wgt = wr * ws->wx[q];
      if (wgt == 0)
        continue;
      size_t base = ((size_t)r * m->w + q) * k;
      for (uint32_t e = 0; e < k; e++) {
        size_t i = base + e;
        uint32_t c;
        double v;
        if (form == FORM_F16_U16) {
          c = m->classes16[i];
          v = wgt * (double)row[(size_t)(q - qlo) * k + e];
        } else if (form == FORM_F32_U32) {
          c = m->classes[i];
          v = wgt * (double)m->scores[i];
        } else {
          c = labelmap_class(m, i);
          v = wgt * (double)labelmap_score(m, i);
        }
        if (stamp[c] != gen) {
          stamp[c] = gen;
          acc[c] = v;
          touched[n++] = c;
        } else {
          acc[c] += v;
        }
      }
    }
  }
  return n;
}

/* Whether ws->row can hold `n` floats (grown when it cannot; when memory
 * is short the caller takes the accessors' path instead). */
static bool row_room(pool_ws *ws, size_t n) {
  if (n <= ws->row_cap)
    return true;
  float *p = realloc(ws->row, n * sizeof *p);
  if (p == NULL)
    return false;
  ws->row = p;
  ws->row_cap = n;
  return true;
}

/* Pools bin (ph, pw) of the un-flipped grid into ws->acc for the classes
 * listed in ws->touched; returns how many were touched. */
static uint32_t pool_bin(const labelmap *m, const region *g, uint32_t G,
                         uint32_t ph, uint32_t pw, pool_ws *ws) {
  uint32_t rlo, rhi, qlo, qhi;
  int gy = axis_weights(g->y0, g->y1, m->h, G, ph, ws->wy, &rlo, &rhi);
  int gx = axis_weights(g->x0, g->x1, m->w, G, pw, ws->wx, &qlo, &qhi);
  int count = gy * gx;
  if (count < 1)
    count = 1;
  double inv = 1.0 / (double)count;

  if (++ws->generation == 0) { /* wrapped: restart the stamps */
    memset(ws->stamp, 0, (size_t)ws->num_classes * sizeof *ws->stamp);
    ws->generation = 1;
  }
  if (rlo > rhi || qlo > qhi)
    return 0;
  /* K = 5 (ReLabel's top-5) gets its own copies, whose loop over a
   * cell's entries the compiler unrolls. */
  uint32_t k = m->k;
  if (m->scores16 && m->classes16 && row_room(ws, (size_t)m->w * k))
    return k == 5 ? bin_sum(m, FORM_F16_U16, 5, rlo, rhi, qlo, qhi, inv, ws)
                  : bin_sum(m, FORM_F16_U16, k, rlo, rhi, qlo, qhi, inv, ws);
  if (!m->scores16 && !m->classes16)
    return k == 5 ? bin_sum(m, FORM_F32_U32, 5, rlo, rhi, qlo, qhi, inv, ws)
                  : bin_sum(m, FORM_F32_U32, k, rlo, rhi, qlo, qhi, inv, ws);
  return bin_sum(m, FORM_MIXED, k, rlo, rhi, qlo, qhi, inv, ws);
}

/* Order of the sparse output: decreasing value, then increasing class. */
static int entry_order(const void *pa, const void *pb) {
  const struct pool_entry *a = pa, *b = pb;
  if (a->value != b->value)
    return a->value > b->value ? -1 : 1;
  return a->cls < b->cls ? -1 : a->cls > b->cls;
}

/* Softmax pieces over C classes of which `n` listed ones carry acc[] and
 * the other C - n have logit 0: returns the shift (max) and 1/Z, and
 * leaves exp(acc - shift) of listed class i in ws->ex[i], so that each
 * exponential is computed once. */
static void softmax_norm(pool_ws *ws, const uint32_t *cls, uint32_t n,
                         uint32_t num_classes, double *shift, double *inv_z) {
  double mx = n < num_classes ? 0.0 : -INFINITY;
  for (uint32_t i = 0; i < n; i++)
    if (ws->acc[cls[i]] > mx)
      mx = ws->acc[cls[i]];
  double z = (double)(num_classes - n) * exp(-mx);
  for (uint32_t i = 0; i < n; i++) {
    ws->ex[i] = exp(ws->acc[cls[i]] - mx);
    z += ws->ex[i];
  }
  *shift = mx;
  *inv_z = 1.0 / z;
}

/* Maps an output cell index (after flip) to its bin of the pooled grid. */
static void cell_bin(const pool_query *q, uint32_t cell, uint32_t *ph,
                     uint32_t *pw) {
  uint32_t G = q->output_size;
  *ph = cell / G;
  *pw = cell % G;
  if (q->flip)
    *pw = G - 1 - *pw;
}

/* Pools output cell `cell` of `q` into ws->acc (the classes touched in
 * ws->touched, *n of them), after the checks the cell functions share. */
static int pool_one_cell(const labelmap *m, uint32_t num_classes,
                         const pool_query *q, uint32_t cell, pool_ws *ws,
                         uint32_t *n) {
  if (num_classes != ws->num_classes || cell >= q->output_size * q->output_size)
    return LMAP_EINVAL;
  region g = box_region(m, q);
  uint32_t ph, pw;
  cell_bin(q, cell, &ph, &pw);
  *n = pool_bin(m, &g, q->output_size, ph, pw, ws);
  return 0;
}

int pool_cell_sparse(const labelmap *m, uint32_t num_classes,
                     const pool_query *q, uint32_t cell, pool_ws *ws,
                     pool_cell *out) {
  uint32_t n;
  int rc = pool_one_cell(m, num_classes, q, cell, ws, &n);
  if (rc)
    return rc;

  /* Only classes with a non-zero pooled logit are listed; classes keeps
   * them unsorted while the softmax normaliser is computed. */
  uint32_t listed = 0;
  for (uint32_t i = 0; i < n; i++)
    if (ws->acc[ws->touched[i]] != 0)
      ws->classes[listed++] = ws->touched[i];
  double shift = 0, inv_z = 1;
  if (q->softmax)
    softmax_norm(ws, ws->classes, listed, num_classes, &shift, &inv_z);
  for (uint32_t i = 0; i < listed; i++) {
    uint32_t c = ws->classes[i];
    double v = q->softmax ? ws->ex[i] * inv_z : ws->acc[c];
    ws->entries[i] = (struct pool_entry){(float)v, c};
  }
  qsort(ws->entries, listed, sizeof *ws->entries, entry_order);
  for (uint32_t i = 0; i < listed; i++) {
    ws->classes[i] = ws->entries[i].cls;
    ws->values[i] = ws->entries[i].value;
  }
  out->rest =
      q->softmax && listed < num_classes ? (float)(exp(-shift) * inv_z) : 0.f;
  out->n = listed;
  out->classes = ws->classes;
  out->values = ws->values;
  return 0;
}

/* Rows (or columns) of a side-`size` axis that one bin of G touches (see
 * pool_cell_max_entries). */
static uint64_t axis_span(uint32_t size, uint32_t longest, uint32_t G) {
  uint64_t span = ((uint64_t)longest + G - 1) / G + 4;
  return span < size ? span : size;
}

uint64_t pool_cell_max_entries(uint32_t num_classes, uint32_t k, uint32_t h,
                               uint32_t w, uint32_t G) {
  uint32_t longest = h > w ? h : w;
  if (G == 0)
    G = 1;
  uint64_t touched =
      (uint64_t)k * axis_span(h, longest, G) * axis_span(w, longest, G);
  return touched < num_classes ? touched : num_classes;
}

/* The values of the classes pool_bin touched (`n` of them, in
 * ws->touched), as the dense row holds them, into ws->values; `rest` is
 * every other class's value. */
static void touched_values(pool_ws *ws, uint32_t n, uint32_t num_classes,
                           bool softmax, pool_cell *out) {
  const double *acc = ws->acc;
  const uint32_t *cls = ws->touched;
  float rest = 0.f;
  if (softmax) {
    double shift, inv_z;
    softmax_norm(ws, cls, n, num_classes, &shift, &inv_z);
    rest = (float)(exp(-shift) * inv_z);
    for (uint32_t i = 0; i < n; i++)
      ws->values[i] = (float)(ws->ex[i] * inv_z);
  } else {
    for (uint32_t i = 0; i < n; i++)
      ws->values[i] = (float)acc[cls[i]];
  }
  *out = (pool_cell){n, cls, ws->values, rest};
}

int pool_cell_touched(const labelmap *m, uint32_t num_classes,
                      const pool_query *q, uint32_t cell, pool_ws *ws,
                      pool_cell *out) {
  uint32_t n;
  int rc = pool_one_cell(m, num_classes, q, cell, ws, &n);
  if (rc == 0)
    touched_values(ws, n, num_classes, q->softmax, out);
  return rc;
}

int pool_dense(const labelmap *m, uint32_t num_classes, const pool_query *q,
               pool_ws *ws, float *out) {
  if (num_classes != ws->num_classes)
    return LMAP_EINVAL;
  region g = box_region(m, q);
  uint32_t G = q->output_size;
  for (uint32_t cell = 0; cell < G * G; cell++) {
    uint32_t ph, pw;
    cell_bin(q, cell, &ph, &pw);
    pool_cell t;
    touched_values(ws, pool_bin(m, &g, G, ph, pw, ws), num_classes, q->softmax,
                   &t);
    float *row = out + (size_t)cell * num_classes;
    for (uint32_t c = 0; c < num_classes; c++)
      row[c] = t.rest;
    for (uint32_t i = 0; i < t.n; i++)
      row[t.classes[i]] = t.values[i];
  }
  return 0;
}
