/* itemjson's number arrays against printf("%.9g") of pool_dense's values:
 * dense items (G = 1 and G = 2, probabilities and logits) of synthetic
 * maps over random boxes, where most numbers repeat the one before (the
 * absent classes), and hand-made arrays that alternate, repeat and mix
 * zero signs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "import/synth.h"
#include "pool/itemjson.h"
#include "test.h"

/* The array text printf makes of n values: [v0,v1,...]. */
static void printf_array(dynbuf *b, const float *v, uint32_t n) {
  lmap_dynbuf_add(b, "[", 1);
  for (uint32_t i = 0; i < n; i++) {
    char t[32];
    int len = snprintf(t, sizeof t, "%s%.9g", i ? "," : "", (double)v[i]);
    lmap_dynbuf_add(b, t, (size_t)len);
  }
  lmap_dynbuf_add(b, "]", 1);
}

/* The item's value of `key`, up to the end of the item, as a string. */
static const char *value_of(const dynbuf *b, const char *key) {
  char pat[32];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *at = strstr(b->data, pat);
  ASSERT(at != NULL);
  return at + strlen(pat);
}

static void check_dense(const labelmap *m, uint32_t C, const pool_query *q,
                        pool_ws *ws) {
  uint32_t G = q->output_size;
  float *want = malloc(sizeof(float) * G * G * C);
  float *scratch = malloc(sizeof(float) * G * G * C);
  dynbuf got, ref;
  lmap_dynbuf_init(&got, 1u << 24);
  lmap_dynbuf_init(&ref, 1u << 24);
  ASSERT_EQ(pool_dense(m, C, q, ws, want), 0);
  ASSERT_EQ(itemjson_write(&got, "x", m, C, q, ITEM_DENSE, ws, scratch), 0);
  lmap_dynbuf_add(&got, "", 1); /* NUL */
  if (G > 1)
    lmap_dynbuf_add(&ref, "[", 1);
  for (uint32_t c = 0; c < G * G; c++) {
    if (c)
      lmap_dynbuf_add(&ref, ",", 1);
    printf_array(&ref, want + (size_t)c * C, C);
  }
  if (G > 1)
    lmap_dynbuf_add(&ref, "]", 1);
  const char *v = value_of(&got, q->softmax ? "probs" : "logits");
  ASSERT(strlen(v) == ref.len + 1); /* the item's closing brace */
  ASSERT(memcmp(v, ref.data, ref.len) == 0);
  ASSERT_STR(v + ref.len, "}");
  lmap_dynbuf_free(&got);
  lmap_dynbuf_free(&ref);
  free(want);
  free(scratch);
}

static void test_dense_items(void) {
  const uint32_t C = 1000;
  synth_params p = {C, 15, 15, 5, 9};
  labelmap m = {.k = 5,
                .h = 15,
                .w = 15,
                .scores = malloc(sizeof(float) * 5 * 225),
                .classes = malloc(sizeof(uint32_t) * 5 * 225)};
  pool_ws *ws = pool_ws_new(C);
  uint64_t rng = 12345;
  char id[64];
  for (uint64_t img = 0; img < 40; img++) {
    synth_image(&p, img, id, &m);
    for (int b = 0; b < 4; b++) {
      double r[4];
      for (int i = 0; i < 4; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        r[i] = (double)(rng >> 11) * 0x1p-53;
      }
      pool_query q = {{r[0] < r[1] ? r[0] : r[1], r[2] < r[3] ? r[2] : r[3],
                       r[0] < r[1] ? r[1] : r[0], r[2] < r[3] ? r[3] : r[2]},
                      POOL_BOX_XYXY,
                      b < 2 ? 1 : 2,
                      b == 3,
                      b != 1};
      check_dense(&m, C, &q, ws);
    }
  }
  pool_ws_free(ws);
  free(m.scores);
  free(m.classes);
}

/* Runs, alternations and both zeros: a 1x1 map pooled without softmax
 * gives its scores back at their classes (10..15) and zeros elsewhere. */
static void test_repeats(void) {
  const float scores[][6] = {{3.5f, 3.5f, 3.5f, 2.0f, 2.0f, 1.0f},
                             {0.25f, 0.125f, 0.25f, 0.125f, 0.0f, -0.0f},
                             {1e-30f, 1e-30f, 0.0f, 0.0f, -0.0f, -0.0f}};
  for (size_t t = 0; t < sizeof scores / sizeof scores[0]; t++) {
    float s[6];
    uint32_t cls[6] = {10, 11, 12, 13, 14, 15};
    memcpy(s, scores[t], sizeof s);
    labelmap m = {.k = 6, .h = 1, .w = 1, .scores = s, .classes = cls};
    pool_ws *ws = pool_ws_new(16);
    pool_query q = {{0, 0, 1, 1}, POOL_BOX_XYXY, 1, false, false};
    check_dense(&m, 16, &q, ws);
    pool_ws_free(ws);
  }
}

int main(void) {
  test_dense_items();
  test_repeats();
  TEST_DONE();
}
