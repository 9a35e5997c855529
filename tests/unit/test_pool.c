/*
 * Hand-checked pooling cases: each expected value is worked out in the
 * comment above it from torchvision's roi_align definition (aligned=False,
 * sampling_ratio=-1, region = box * size - 0.5, length at least 1,
 * ceil(length / G) samples per bin, clamping at 0 and size - 1).
 */
#include <math.h>

#include "pool/pool.h"
#include "test.h"

#define C4 4

static float scores22[4] = {1, 2, 3, 4}; /* K=1, 2x2: rows (1 2) (3 4) */
static uint32_t classes22[4] = {0, 0, 0, 0};
static labelmap map22 = {
    .k = 1, .h = 2, .w = 2, .scores = scores22, .classes = classes22};

static float pooled(const labelmap *m, uint32_t C, pool_query q, pool_ws *ws,
                    uint32_t cell, uint32_t cls) {
  static float out[64 * 64 * C4];
  q.softmax = false;
  ASSERT_EQ(pool_check_query(&q, NULL), 0);
  ASSERT_EQ(pool_dense(m, C, &q, ws, out), 0);
  return out[cell * C + cls];
}

static pool_query box(double a, double b, double c, double d) {
  pool_query q = {{a, b, c, d}, POOL_BOX_XYXY, 1, false, true};
  return q;
}

int main(void) {
  pool_ws *ws = pool_ws_new(C4);
  ASSERT(ws != NULL);

  /* Full image on 2x2: x from -0.5 to 1.5, length 2, two samples at 0 and
   * 1 per axis: the mean of all four cells, 2.5. */
  ASSERT_NEAR(pooled(&map22, C4, box(0, 0, 1, 1), ws, 0, 0), 2.5, 1e-6);
  /* Classes outside the top-K pool to exactly 0. */
  ASSERT_NEAR(pooled(&map22, C4, box(0, 0, 1, 1), ws, 0, 3), 0.0, 0);

  /* Left half: x -0.5..0.5, length 1, one sample at 0 (column 0); rows
   * both: (1 + 3) / 2. */
  ASSERT_NEAR(pooled(&map22, C4, box(0, 0, 0.5, 1), ws, 0, 0), 2.0, 1e-6);

  /* x 0..1 (box 0.25..0.75): one sample at 0.5, half of each column; y
   * -0.5..0.5: row 0. 0.5 * 1 + 0.5 * 2 = 1.5. */
  ASSERT_NEAR(pooled(&map22, C4, box(0.25, 0, 0.75, 0.5), ws, 0, 0), 1.5, 1e-6);

  /* Zero-area box at the bottom-right corner: region 1.5..1.5 grows to
   * length 1, sample at 2.0 (== size, still inside), clamped to cell 1. */
  ASSERT_NEAR(pooled(&map22, C4, box(1, 1, 1, 1), ws, 0, 0), 4.0, 1e-6);

  /* Zero-area box at the top-left corner: sample at 0 exactly: cell 0. */
  ASSERT_NEAR(pooled(&map22, C4, box(0, 0, 0, 0), ws, 0, 0), 1.0, 1e-6);

  /* G = 2 over the full image: bins of 1 cell, one sample each at the
   * cell centres: the map itself; flipped: columns mirrored. */
  pool_query g2 = box(0, 0, 1, 1);
  g2.output_size = 2;
  float expect[4] = {1, 2, 3, 4}, flipped[4] = {2, 1, 4, 3};
  for (uint32_t cell = 0; cell < 4; cell++)
    ASSERT_NEAR(pooled(&map22, C4, g2, ws, cell, 0), expect[cell], 1e-6);
  g2.flip = true;
  for (uint32_t cell = 0; cell < 4; cell++)
    ASSERT_NEAR(pooled(&map22, C4, g2, ws, cell, 0), flipped[cell], 1e-6);

  /* relabel (top, left, height, width) = (0, 0, 0.5, 1) becomes the box
   * (0, 0, 0.5, 1) read as (x1, y1, x2, y2): column 0, both rows = 2, the
   * diagonal mirror of the crop it describes (the top row, 1.5). */
  pool_query rl = {{0, 0, 0.5, 1}, POOL_BOX_RELABEL, 1, false, true};
  ASSERT_NEAR(pooled(&map22, C4, rl, ws, 0, 0), 2.0, 1e-6);
  ASSERT_NEAR(pooled(&map22, C4, box(0, 0, 1, 0.5), ws, 0, 0), 1.5, 1e-6);

  /* Softmax over C = 4 with one class at 2.5 and three at 0. */
  float probs[C4];
  pool_query full = box(0, 0, 1, 1);
  ASSERT_EQ(pool_dense(&map22, C4, &full, ws, probs), 0);
  double z = exp(2.5) + 3;
  ASSERT_NEAR(probs[0], exp(2.5) / z, 1e-7);
  ASSERT_NEAR(probs[1], 1 / z, 1e-7);
  ASSERT_NEAR(probs[0] + probs[1] + probs[2] + probs[3], 1.0, 1e-6);

  /* Sparse: only class 0 is listed; rest is every other class's share. */
  pool_cell cell;
  ASSERT_EQ(pool_cell_sparse(&map22, C4, &full, 0, ws, &cell), 0);
  ASSERT_EQ(cell.n, 1);
  ASSERT_EQ(cell.classes[0], 0);
  ASSERT_NEAR(cell.values[0], exp(2.5) / z, 1e-7);
  ASSERT_NEAR(cell.rest, 1 / z, 1e-7);

  /* A 1x1 map with two classes: softmax of (2, 1, 0, 0), sparse sorted by
   * decreasing probability. */
  float s11[2] = {1, 2};
  uint32_t c11[2] = {3, 1};
  labelmap m11 = {.k = 2, .h = 1, .w = 1, .scores = s11, .classes = c11};
  ASSERT_EQ(pool_cell_sparse(&m11, C4, &full, 0, ws, &cell), 0);
  z = exp(2) + exp(1) + 2;
  ASSERT_EQ(cell.n, 2);
  ASSERT_EQ(cell.classes[0], 1);
  ASSERT_EQ(cell.classes[1], 3);
  ASSERT_NEAR(cell.values[0], exp(2) / z, 1e-7);
  ASSERT_NEAR(cell.values[1], exp(1) / z, 1e-7);
  ASSERT_NEAR(cell.rest, 1 / z, 1e-7);

  /* Every class listed: rest is 0 and the listed probabilities sum to 1. */
  float sall[4] = {0.5f, 1, 1.5f, 2};
  uint32_t call[4] = {0, 1, 2, 3};
  labelmap mall = {.k = 4, .h = 1, .w = 1, .scores = sall, .classes = call};
  ASSERT_EQ(pool_cell_sparse(&mall, C4, &full, 0, ws, &cell), 0);
  ASSERT_EQ(cell.n, 4);
  ASSERT_NEAR(cell.rest, 0, 0);
  ASSERT_NEAR(cell.values[0] + cell.values[1] + cell.values[2] + cell.values[3],
              1.0, 1e-6);

  /* Query validation names the problem. */
  diag d;
  pool_query bad = box(0.5, 0, 0.2, 1);
  ASSERT_EQ(pool_check_query(&bad, &d), LMAP_EBADBOX);
  ASSERT_CONTAINS(d.msg, "x0 > x1");
  ASSERT_STR(d.field, "box");
  bad = box(0, 0, 1.5, 1);
  ASSERT_EQ(pool_check_query(&bad, &d), LMAP_EBADBOX);
  ASSERT_CONTAINS(d.msg, "unit square");
  bad = box(NAN, 0, 1, 1);
  ASSERT_EQ(pool_check_query(&bad, &d), LMAP_EBADBOX);
  ASSERT_CONTAINS(d.msg, "finite");
  bad = box(0, 0, 1, 1);
  bad.output_size = 0;
  ASSERT_EQ(pool_check_query(&bad, &d), LMAP_EINVAL);
  ASSERT_STR(d.field, "output_size");
  pool_query rbad = {{0.5, 0, 0.6, 1}, POOL_BOX_RELABEL, 1, false, true};
  ASSERT_EQ(pool_check_query(&rbad, &d), LMAP_EBADBOX);
  ASSERT_CONTAINS(d.msg, "relabel");

  /* A workspace for another class count is refused, not overrun. */
  ASSERT_EQ(pool_dense(&map22, 3, &full, ws, probs), LMAP_EINVAL);

  pool_ws_free(ws);
  TEST_DONE();
}
