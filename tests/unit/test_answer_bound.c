/* The answer-size bounds lmapd checks against --max-answer before pooling:
 * itemjson_max_len is never below the length itemjson_write produces
 * (dense and sparse, probabilities and long negative logits, square and
 * oblong maps, every class distinct so sparse cells are as long as they
 * get, xyxy and relabel boxes from tiny to whole, G from 1 to 64), and for
 * dense items within a few percent of the worst case it stands for; and
 * npy_header_len is exactly what npy_header_f32 appends. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool/itemjson.h"
#include "pool/npy.h"
#include "test.h"

static uint64_t rng = 88172645463325252ull;

static double uniform(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (double)(rng >> 11) * 0x1p-53;
}

/* A map whose every entry is a different class where C allows, with
 * scores that print long: tiny negative logits, or ordinary ones. */
static void fill(labelmap *m, uint32_t C, int tiny) {
  size_t n = labelmap_entries(m);
  for (size_t i = 0; i < n; i++) {
    m->classes[i] = (uint32_t)(i % C);
    if (C >= m->k) /* distinct within a cell */
      m->classes[i] = (uint32_t)((i / m->k * m->k + i % m->k) % C);
    double u = uniform();
    m->scores[i] =
        tiny ? (float)(-1.234567e-30 * (1 + u)) : (float)(20 * u - 8);
  }
}

static void random_query(pool_query *q, uint32_t G) {
  q->output_size = G;
  q->flip = uniform() < 0.5;
  q->softmax = uniform() < 0.5;
  double r = uniform();
  if (r < 0.2) { /* the whole image */
    q->box_format = POOL_BOX_XYXY;
    q->box[0] = q->box[1] = 0;
    q->box[2] = q->box[3] = 1;
  } else if (r < 0.6) {
    q->box_format = POOL_BOX_XYXY;
    double a = uniform(), b = uniform(), c = uniform(), d = uniform();
    q->box[0] = a < b ? a : b;
    q->box[2] = a < b ? b : a;
    q->box[1] = c < d ? c : d;
    q->box[3] = c < d ? d : c;
  } else {
    q->box_format = POOL_BOX_RELABEL;
    q->box[0] = uniform() * 0.5;
    q->box[1] = uniform() * 0.5;
    q->box[2] = (1 - q->box[0]) * (r < 0.8 ? 1 : uniform());
    q->box[3] = (1 - q->box[1]) * (r < 0.8 ? 1 : uniform());
  }
}

static void check_shape(uint32_t C, uint32_t k, uint32_t h, uint32_t w,
                        const uint32_t *sizes, size_t nsizes, int rounds) {
  labelmap m = {.k = k,
                .h = h,
                .w = w,
                .scores = malloc(sizeof(float) * k * h * w),
                .classes = malloc(sizeof(uint32_t) * k * h * w)};
  pool_ws *ws = pool_ws_new(C);
  float *dense = malloc(sizeof(float) * 64 * 64 * C);
  dynbuf b;
  lmap_dynbuf_init(&b, (size_t)1 << 30);
  const char *id = "n01440764_10026";
  for (size_t s = 0; s < nsizes; s++)
    for (int r = 0; r < rounds; r++) {
      fill(&m, C, r % 2);
      pool_query q;
      random_query(&q, sizes[s]);
      for (int f = 0; f < 2; f++) {
        itemjson_format format = f ? ITEM_SPARSE : ITEM_DENSE;
        lmap_dynbuf_reset(&b);
        ASSERT_EQ(itemjson_write(&b, id, &m, C, &q, format, ws, dense), 0);
        size_t bound = itemjson_max_len(strlen(id), C, k, h, w, &q, format);
        if (b.len > bound)
          fprintf(stderr, "C=%u k=%u %ux%u G=%u %s softmax=%d: %zu > %zu\n", C,
                  k, h, w, q.output_size, f ? "sparse" : "dense", q.softmax,
                  b.len, bound);
        ASSERT_INT(b.len, <=, bound);
        if (format == ITEM_DENSE) { /* tight: the worst case it stands for */
          size_t worst =
              (size_t)sizes[s] * sizes[s] * C * (ITEMJSON_NUMBER_MAX + 1);
          ASSERT_INT(bound, <=, worst + worst / 50 + 400);
        }
      }
    }
  lmap_dynbuf_free(&b);
  free(dense);
  pool_ws_free(ws);
  free(m.scores);
  free(m.classes);
}

static void test_item_bounds(void) {
  static const uint32_t small[] = {1, 2, 3, 5, 8, 16, 64};
  static const uint32_t big[] = {1, 2, 3, 7};
  check_shape(1000, 5, 15, 15, big, 4, 30);
  check_shape(60, 3, 7, 31, small, 7, 12);
  check_shape(12, 6, 1, 1, small, 7, 12);
  check_shape(50000, 4, 40, 9, big, 4, 6);
  /* Sparse is bounded by what a bin can touch, not by C: an output grid of
   * 64 over a 15 x 15 map lists at most k * 6 * 6 classes per cell. */
  pool_query q = {{0, 0, 1, 1}, POOL_BOX_XYXY, 64, false, true};
  size_t sparse = itemjson_max_len(15, 1000, 5, 15, 15, &q, ITEM_SPARSE);
  size_t dense = itemjson_max_len(15, 1000, 5, 15, 15, &q, ITEM_DENSE);
  ASSERT_INT(sparse * 4, <, dense);
}

static void test_npy_header_len(void) {
  size_t shapes[][4] = {{1, 1000, 1, 1},
                        {4096, 1000, 64, 64},
                        {2, 5, 15, 15},
                        {123456789, 16777216, 64, 64}};
  for (size_t i = 0; i < 4; i++)
    for (int nd = 1; nd <= 4; nd++) {
      dynbuf b;
      lmap_dynbuf_init(&b, 1 << 16);
      ASSERT_EQ(npy_header_f32(&b, shapes[i], nd), 0);
      ASSERT_EQ(npy_header_len(shapes[i], nd), b.len);
      ASSERT_EQ(b.len % 64, 0);
      lmap_dynbuf_free(&b);
    }
  ASSERT_EQ(npy_header_len(shapes[0], 0), 0);
}

int main(void) {
  test_item_bounds();
  test_npy_header_len();
  printf("test_answer_bound: %d checks passed\n", test__checks);
  return 0;
}
