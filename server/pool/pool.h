/*
 * pool: RoIAlign + softmax of a sparse top-K label map over one box, exact.
 *
 * The definition (docs/POOLING.md) is
 * torchvision.ops.roi_align(M[None], [[0, x0*W-0.5, y0*H-0.5, x1*W-0.5,
 * y1*H-0.5]], output_size=(G, G), spatial_scale=1, sampling_ratio=-1,
 * aligned=False) of the dense map M[c, r, q] (zero outside each cell's
 * top-K), then softmax over classes per output cell.
 *
 * How it stays exact without the dense [C, H, W] tensor: torchvision's
 * sampling grid of one output bin is a product of a row set and a column
 * set, and a sample outside [-1, size] is dropped whole, so the weight of
 * grid cell (r, q) in bin (ph, pw) factors into wy[ph][r] * wx[pw][q] / n.
 * Pooling is linear, so each bin is a weighted sum over the K entries of the
 * cells with non-zero weight. Softmax needs only the touched classes plus
 * (C - touched) copies of exp(0 - max).
 *
 * The box geometry (region start, bin size, sample positions, bilinear
 * fractions) is computed in float32 with torchvision's exact operation
 * order, so the sampling grid and clamping match it bit for bit; the sums
 * are accumulated in double.
 *
 * Pure: no I/O; the only memory is the caller's pool_ws.
 */
#ifndef LMAP_POOL_H
#define LMAP_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/diag.h"
#include "core/labelmap.h"

#define POOL_MAX_OUTPUT_SIZE 64u

typedef enum pool_box_format {
  /* Normalized [x0, y0, x1, y1], x horizontal: the geometrically correct
   * region. 0 <= x0 <= x1 <= 1, 0 <= y0 <= y1 <= 1. */
  POOL_BOX_XYXY = 0,
  /* The official ReLabel tuple (i/H, j/W, h/H, w/W) as returned by its
   * RandomResizedCropWithCoords, pooled the way the official loader does:
   * box (a, b, a+c, b+d) read as (x1, y1, x2, y2), both axes scaled by the
   * map width W. This pools the crop mirrored across the diagonal, exactly
   * as the official targets do. */
  POOL_BOX_RELABEL = 1
} pool_box_format;

typedef struct pool_query {
  double box[4];
  pool_box_format box_format;
  uint32_t output_size; /* G >= 1 */
  bool flip;            /* mirror the output grid left-right (G > 1) */
  bool softmax;         /* false returns the pooled logits */
} pool_query;

/* Work memory for one thread: per-class accumulators and the touched list.
 * Create with pool_ws_new for a class count; reuse across calls. */
typedef struct pool_ws pool_ws;

pool_ws *pool_ws_new(uint32_t num_classes); /* NULL when out of memory */
void pool_ws_free(pool_ws *ws);             /* accepts NULL */

/* Checks a query: finite box inside the unit square with ordered corners
 * (per box format), 1 <= output_size <= POOL_MAX_OUTPUT_SIZE. Returns 0, or
 * LMAP_EBADBOX / LMAP_EINVAL naming the field ("box", "output_size"). */
int pool_check_query(const pool_query *q, diag *d);

/* One pooled output cell in sparse form. `classes` and `values` are borrowed
 * from the pool_ws and valid until its next use. `values` are probabilities
 * (softmax on) or pooled logits (off), sorted by decreasing value, ties by
 * increasing class. `rest` is the value of every class not listed: the
 * exact probability, or 0 for logits. Listed are exactly the classes whose
 * pooled logit is non-zero. */
typedef struct pool_cell {
  uint32_t n;
  const uint32_t *classes;
  const float *values;
  float rest;
} pool_cell;

/* Pools output cell `cell` (row-major in the G x G grid, after flip) of
 * query `q` over map `m` with `num_classes` classes (every class index in
 * `m` is below it). The query must have passed pool_check_query.
 * Returns 0 or LMAP_EINVAL (num_classes differs from the workspace's). */
int pool_cell_sparse(const labelmap *m, uint32_t num_classes,
                     const pool_query *q, uint32_t cell, pool_ws *ws,
                     pool_cell *out);

/* Pools output cell `cell` as pool_cell_sparse does, but unsorted and
 * with every class the cell's bin touched listed (in the order met, a
 * pooled logit of 0 included): each listed value and `rest` are the very
 * floats pool_dense writes, so a dense row rebuilt from them (`rest`
 * everywhere, then the listed values) equals pool_dense's bit for bit.
 * For answers that carry cells sparsely without sorting them. */
int pool_cell_touched(const labelmap *m, uint32_t num_classes,
                      const pool_query *q, uint32_t cell, pool_ws *ws,
                      pool_cell *out);

/* The most classes one output cell of an output grid of G can list, for
 * any box, over a map of k entries per cell on an h x w grid: at most k per
 * map cell its bin samples. A bin samples a span of at most L / G of the
 * region's length L <= max(h, w) on each axis, and a sample at y touches
 * rows floor(y) and floor(y) + 1: at most ceil(L / G) + 2 rows (and
 * columns); two more cover float32 rounding. Never more than num_classes.
 * Pure; lets lmapd bound an answer before pooling it. */
uint64_t pool_cell_max_entries(uint32_t num_classes, uint32_t k, uint32_t h,
                               uint32_t w, uint32_t G);

/* Pools every output cell densely into `out`: G*G rows of num_classes
 * floats, row-major over the grid. Same contract as pool_cell_sparse. */
int pool_dense(const labelmap *m, uint32_t num_classes, const pool_query *q,
               pool_ws *ws, float *out);

#endif /* LMAP_POOL_H */
