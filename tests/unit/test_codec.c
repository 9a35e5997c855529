/*
 * Unit tests for server/store/codec.c: exact round trips (f32 bit for bit, f16
 * equal to f32_to_f16 rounding) over edge-case values and over many shapes
 * (one row, one column, K past the list's 8-entry window and past 64,
 * every escape width), range errors, dictionary training and use, and
 * hostile input: records (every truncation, every byte flipped, wrong
 * version, size or dictionary) and transformed bodies with every byte
 * flipped and compressed with a valid checksum, which must fail with
 * LMAP_ECORRUPT or decode within the contract, never crash. Prints the
 * measured bytes per record on synthetic ImageNet-shaped maps.
 */
#include <stdint.h>
#include <time.h>

#include "core/f16.h"
#include "import/synth.h"
#include "store/codec.h"
#include "test.h"

static uint64_t rng_state = 0x853c49e6748fea9bull;

static uint32_t rnd(void) {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng_state >> 33);
}

static labelmap map_new(uint32_t k, uint32_t h, uint32_t w) {
  size_t n = (size_t)k * h * w;
  labelmap m = {.k = k,
                .h = h,
                .w = w,
                .scores = calloc(n, sizeof(float)),
                .classes = calloc(n, sizeof(uint32_t))};
  ASSERT(m.scores != NULL && m.classes != NULL);
  return m;
}

static void map_free(labelmap *m) {
  free(m->scores);
  free(m->classes);
}

static uint32_t fbits(float f) {
  uint32_t b;
  memcpy(&b, &f, sizeof b);
  return b;
}

/* Asserts that `got` equals `want` after the encoding's rounding: scores
 * compared as bits (so -0.0 and +0.0 differ), classes exactly. */
static void assert_same(const codec_shape *s, const labelmap *want,
                        const labelmap *got) {
  size_t n = labelmap_entries(want);
  ASSERT_EQ(got->k, want->k);
  ASSERT_EQ(got->h, want->h);
  ASSERT_EQ(got->w, want->w);
  for (size_t i = 0; i < n; i++) {
    float w = want->scores[i];
    if (s->encoding == CODEC_F16)
      w = f16_to_f32(f32_to_f16(w));
    if (fbits(got->scores[i]) != fbits(w)) {
      fprintf(stderr, "entry %zu: score %a, want %a\n", i,
              (double)got->scores[i], (double)w);
      ASSERT(0);
    }
    ASSERT_EQ(got->classes[i], want->classes[i]);
  }
}

/* Encodes and decodes `m` with `c`; returns the record size. */
static size_t round_trip(codec_ctx *c, const codec_shape *s,
                         const labelmap *m) {
  diag d = {0};
  size_t cap = codec_record_bound(c), len = 0;
  uint8_t *rec = malloc(cap);
  labelmap out = map_new(s->k, s->h, s->w);
  int rc = codec_encode(c, m, rec, cap, &len, &d);
  if (rc != 0)
    fprintf(stderr, "encode: %s\n", d.msg);
  ASSERT_EQ(rc, 0);
  rc = codec_decode(c, rec, len, &out, &d);
  if (rc != 0)
    fprintf(stderr, "decode: %s\n", d.msg);
  ASSERT_EQ(rc, 0);
  assert_same(s, m, &out);
  /* The raw transform alone is a bijection too. */
  uint8_t *raw = malloc(codec_raw_size(s));
  ASSERT_EQ(codec_transform(s, m, raw, NULL), 0);
  memset(out.scores, 0xAB, labelmap_entries(m) * sizeof(float));
  ASSERT_EQ(codec_untransform(s, raw, &out, NULL), 0);
  assert_same(s, m, &out);
  free(raw);
  map_free(&out);
  free(rec);
  return len;
}

static codec_ctx *ctx_new(const codec_shape *s, const void *dict,
                          size_t dict_len) {
  codec_ctx *c = NULL;
  diag d = {0};
  int rc = codec_ctx_new(s, dict, dict_len, CODEC_LEVEL_FAST, &c, &d);
  if (rc != 0)
    fprintf(stderr, "codec_ctx_new: %s\n", d.msg);
  ASSERT_EQ(rc, 0);
  return c;
}

/* ---- shapes ---- */

static void test_shape_check(void) {
  diag d = {0};
  codec_shape ok = {5, 15, 15, 1000, CODEC_F16};
  ASSERT_EQ(codec_shape_check(&ok, &d), 0);
  ASSERT_EQ(codec_raw_size(&ok), 1125u * (1 + 2 + 2));
  codec_shape s = ok;
  s.k = 0;
  ASSERT_EQ(codec_shape_check(&s, &d), LMAP_EINVAL);
  ASSERT_STR(d.field, "topk");
  s = ok;
  s.h = LABELMAP_MAX_SIDE + 1;
  ASSERT_EQ(codec_shape_check(&s, &d), LMAP_EINVAL);
  ASSERT_STR(d.field, "grid_h");
  s = ok;
  s.w = 0;
  ASSERT_EQ(codec_shape_check(&s, &d), LMAP_EINVAL);
  ASSERT_STR(d.field, "grid_w");
  s = ok;
  s.k = 1024;
  s.h = 1024;
  s.w = 8;
  ASSERT_EQ(codec_shape_check(&s, &d), LMAP_EINVAL);
  ASSERT_CONTAINS(d.msg, "exceeds");
  s = ok;
  s.num_classes = 0;
  ASSERT_EQ(codec_shape_check(&s, &d), LMAP_EINVAL);
  ASSERT_STR(d.field, "num_classes");
  s = ok;
  s.num_classes = LABELMAP_MAX_CLASSES + 1;
  ASSERT_EQ(codec_shape_check(&s, &d), LMAP_EINVAL);
  s = ok;
  s.encoding = (codec_encoding)7;
  ASSERT_EQ(codec_shape_check(&s, &d), LMAP_EINVAL);
  ASSERT_STR(d.field, "encoding");
  /* Escaped class indices take 1, 2 or 3 bytes as C needs. */
  s = ok;
  s.num_classes = 65537;
  s.encoding = CODEC_F32;
  ASSERT_EQ(codec_raw_size(&s), 1125u * (1 + 3 + 4));
  s.num_classes = 256;
  ASSERT_EQ(codec_raw_size(&s), 1125u * (1 + 1 + 4));
  codec_ctx *c = NULL;
  ASSERT_EQ(codec_ctx_new(&ok, NULL, 0, 99, &c, &d), LMAP_EINVAL);
  ASSERT(c == NULL);
}

/* ---- round trips ---- */

/* Maps with values the transform must not mangle: both zeros, subnormals
 * of both formats, the f16 extremes, huge and tiny f32 values, unsorted
 * ranks, repeated classes, classes at both ends of the range. */
static void fill_edge(labelmap *m, uint32_t C, int f32) {
  static const float f16ish[] = {0.0f,     -0.0f,      65504.0f, -65504.0f,
                                 6.1e-5f,  -5.96e-8f,  5.96e-8f, 1.0f,
                                 -1.0f,    3.14159f,   -2.5e-3f, 1000.5f,
                                 0.33333f, -7.777e-6f, 2.0e-7f,  12.25f};
  static const float f32only[] = {3.0e38f,  -3.4e38f, 1.4e-45f,    -1.0e-40f,
                                  1.0e-30f, 7.0e20f,  -123456.789f};
  size_t n = labelmap_entries(m);
  for (size_t i = 0; i < n; i++) {
    uint32_t r = rnd();
    if (f32 && (r & 3) == 0)
      m->scores[i] = f32only[r % (sizeof f32only / sizeof f32only[0])];
    else if ((r & 1) == 0)
      m->scores[i] = f16ish[r % (sizeof f16ish / sizeof f16ish[0])];
    else
      m->scores[i] = (float)((int32_t)(rnd() % 2000001) - 1000000) / 1024.0f;
    uint32_t pick = rnd() % 5;
    m->classes[i] = pick == 0   ? 0
                    : pick == 1 ? C - 1
                    : pick == 2 ? m->classes[i ? i - 1 : 0]
                                : rnd() % C;
  }
}

static void test_round_trip_edges(void) {
  static const struct {
    uint32_t k, h, w, C;
  } shapes[] = {{5, 15, 15, 1000}, {1, 1, 1, 1},       {3, 1, 7, 2},
                {1, 9, 1, 70000},  {7, 4, 5, 300},     {100, 2, 3, 5000},
                {5, 18, 18, 1000}, {2, 3, 4, 16777216}};
  for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++)
    for (int f32 = 0; f32 <= 1; f32++) {
      codec_shape s = {shapes[t].k, shapes[t].h, shapes[t].w, shapes[t].C,
                       f32 ? CODEC_F32 : CODEC_F16};
      codec_ctx *c = ctx_new(&s, NULL, 0);
      labelmap m = map_new(s.k, s.h, s.w);
      for (int rep = 0; rep < 20; rep++) {
        fill_edge(&m, s.num_classes, f32);
        round_trip(c, &s, &m);
      }
      map_free(&m);
      codec_ctx_free(c);
    }
}

/* Every class of a large C, each appearing once: every code is a virtual
 * move-to-front position or an escape. */
static void test_round_trip_all_classes(void) {
  codec_shape s = {10, 10, 10, 1000, CODEC_F16};
  codec_ctx *c = ctx_new(&s, NULL, 0);
  labelmap m = map_new(s.k, s.h, s.w);
  for (int order = 0; order < 3; order++) {
    for (uint32_t i = 0; i < 1000; i++) {
      m.classes[i] = order == 0 ? i : order == 1 ? 999 - i : (i * 7919) % 1000;
      m.scores[i] = (float)i * 0.01f - 5.0f;
    }
    round_trip(c, &s, &m);
  }
  map_free(&m);
  codec_ctx_free(c);
}

/* Maps like real ones in structure, for any shape: each cell copies the
 * previous one (the common case), swaps two ranks, or takes classes from
 * a pool larger than the move-to-front list (so entries fall off it and
 * come back), with scores that drift smoothly, rarely exact zeros. */
static void fill_smooth(labelmap *m, uint32_t C) {
  uint32_t K = m->k, pool = C < 100 ? C : 100;
  size_t cells = (size_t)m->h * m->w;
  for (size_t cell = 0; cell < cells; cell++) {
    uint32_t *cl = m->classes + cell * K;
    float *sc = m->scores + cell * K;
    uint32_t r = rnd() % 10;
    if (cell > 0 && r < 6) {
      memcpy(cl, cl - K, K * sizeof *cl);
    } else if (cell > 0 && r < 8 && K >= 2) {
      memcpy(cl, cl - K, K * sizeof *cl);
      uint32_t a = rnd() % K, b = rnd() % K, t = cl[a];
      cl[a] = cl[b];
      cl[b] = t;
    } else {
      for (uint32_t k = 0; k < K; k++)
        cl[k] = (rnd() % pool) * (C / pool);
    }
    float base = cell > 0 ? sc[-(long)K] : 10.0f;
    for (uint32_t k = 0; k < K; k++) {
      float v =
          base - (float)k * 0.75f + (float)((int)(rnd() % 201) - 100) / 64.0f;
      sc[k] = rnd() % 500 == 0 ? 0.0f : v;
    }
  }
}

static void test_round_trip_shapes(void) {
  static const struct {
    uint32_t k, h, w, C;
  } shapes[] = {{5, 7, 1, 300},    {5, 1, 9, 300},    {3, 1, 1, 10},
                {2, 2, 1, 40},     {9, 6, 6, 50},     {8, 5, 4, 5000},
                {64, 2, 3, 70},    {65, 2, 2, 200},   {3, 2, 2, 256},
                {5, 18, 18, 1000}, {4, 3, 17, 70000}, {1, 16, 16, 20}};
  for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++)
    for (int f32 = 0; f32 <= 1; f32++) {
      codec_shape s = {shapes[t].k, shapes[t].h, shapes[t].w, shapes[t].C,
                       f32 ? CODEC_F32 : CODEC_F16};
      codec_ctx *c = ctx_new(&s, NULL, 0);
      labelmap m = map_new(s.k, s.h, s.w);
      for (int rep = 0; rep < 30; rep++) {
        fill_smooth(&m, s.num_classes);
        round_trip(c, &s, &m);
      }
      map_free(&m);
      codec_ctx_free(c);
    }
}

/* Bodies that are not what the encoder writes, compressed with a right
 * checksum: every byte of a body flipped three ways. Decoding must fail
 * with LMAP_ECORRUPT or give a map within the contract (classes below C,
 * finite scores), and never touch memory it should not (ASan). */
static void test_hostile_bodies(codec_encoding e) {
  codec_shape s = {5, 6, 7, 300, e};
  codec_ctx *c = ctx_new(&s, NULL, 0);
  labelmap m = map_new(5, 6, 7), out = map_new(5, 6, 7);
  fill_smooth(&m, s.num_classes);
  size_t rs = codec_raw_size(&s), cap = codec_record_bound(c), len;
  size_t n = labelmap_entries(&m);
  uint8_t *raw = malloc(rs), *bad = malloc(rs), *rec = malloc(cap);
  ASSERT_EQ(codec_transform(&s, &m, raw, NULL), 0);
  static const uint8_t flips[] = {0x01, 0x80, 0xFF};
  size_t failed = 0, decoded = 0;
  for (size_t i = 0; i < rs; i++)
    for (size_t f = 0; f < sizeof flips; f++) {
      diag d = {0};
      memcpy(bad, raw, rs);
      bad[i] ^= flips[f];
      int rc = codec_untransform(&s, bad, &out, &d);
      ASSERT(rc == 0 || rc == LMAP_ECORRUPT);
      if (codec_compress_raw(c, bad, rec, cap, &len, &d) != 0)
        continue;
      rc = codec_decode(c, rec, len, &out, &d);
      ASSERT(rc == 0 || rc == LMAP_ECORRUPT);
      if (rc != 0) {
        ASSERT(d.msg[0] != '\0');
        failed++;
        continue;
      }
      decoded++;
      for (size_t j = 0; j < n; j++) {
        ASSERT(out.classes[j] < s.num_classes);
        ASSERT(isfinite(out.scores[j]));
      }
    }
  ASSERT(failed > 0 && decoded > 0);
  free(raw);
  free(bad);
  free(rec);
  map_free(&m);
  map_free(&out);
  codec_ctx_free(c);
}

static void test_synth_round_trip(codec_encoding e) {
  codec_shape s = {5, 15, 15, 1000, e};
  synth_params p = {1000, 15, 15, 5, 7};
  codec_ctx *c = ctx_new(&s, NULL, 0);
  labelmap m = map_new(5, 15, 15);
  char id[64];
  for (uint64_t i = 0; i < 200; i++) {
    synth_image(&p, i, id, &m);
    round_trip(c, &s, &m);
  }
  map_free(&m);
  codec_ctx_free(c);
}

static void test_round_scores(void) {
  codec_shape s = {1, 1, 3, 10, CODEC_F16};
  float sc[3] = {1.0f / 3.0f, 65504.0f, -0.0f};
  uint32_t cl[3] = {0, 1, 2};
  labelmap m = {.k = 1, .h = 1, .w = 3, .scores = sc, .classes = cl};
  codec_round_scores(&s, &m);
  ASSERT(sc[0] != 1.0f / 3.0f);
  ASSERT_EQ(fbits(sc[0]), fbits(f16_to_f32(f32_to_f16(1.0f / 3.0f))));
  ASSERT_EQ(fbits(sc[2]), fbits(-0.0f));
  s.encoding = CODEC_F32;
  sc[0] = 1.0f / 3.0f;
  codec_round_scores(&s, &m);
  ASSERT_EQ(fbits(sc[0]), fbits(1.0f / 3.0f));
}

/* ---- input errors ---- */

static void test_range_errors(void) {
  codec_shape s = {2, 2, 2, 10, CODEC_F16};
  codec_ctx *c = ctx_new(&s, NULL, 0);
  labelmap m = map_new(2, 2, 2);
  size_t cap = codec_record_bound(c), len;
  uint8_t *rec = malloc(cap);
  diag d = {0};
  for (size_t i = 0; i < 8; i++) {
    m.scores[i] = 1.0f;
    m.classes[i] = (uint32_t)i;
  }
  ASSERT_EQ(codec_encode(c, &m, rec, cap, &len, &d), 0);
  m.scores[5] = 70000.0f;
  ASSERT_EQ(codec_encode(c, &m, rec, cap, &len, &d), LMAP_ERANGE);
  ASSERT_CONTAINS(d.msg, "row 1, column 0, rank 1");
  ASSERT_CONTAINS(d.msg, "f16");
  m.scores[5] = 65519.0f; /* still rounds to 65504 */
  ASSERT_EQ(codec_encode(c, &m, rec, cap, &len, &d), 0);
  m.scores[5] = NAN;
  ASSERT_EQ(codec_encode(c, &m, rec, cap, &len, &d), LMAP_ERANGE);
  ASSERT_CONTAINS(d.msg, "not finite");
  m.scores[5] = -INFINITY;
  ASSERT_EQ(codec_encode(c, &m, rec, cap, &len, &d), LMAP_ERANGE);
  m.scores[5] = 1.0f;
  m.classes[3] = 10;
  ASSERT_EQ(codec_encode(c, &m, rec, cap, &len, &d), LMAP_ERANGE);
  ASSERT_CONTAINS(d.msg, "class 10");
  m.classes[3] = 3;
  labelmap wrong = m;
  wrong.k = 1;
  ASSERT_EQ(codec_encode(c, &wrong, rec, cap, &len, &d), LMAP_EINVAL);
  codec_ctx_free(c);
  /* f32 keeps what f16 cannot, but still refuses non-finite values. */
  s.encoding = CODEC_F32;
  c = ctx_new(&s, NULL, 0);
  m.scores[5] = 70000.0f;
  ASSERT_EQ(round_trip(c, &s, &m) > 0, 1);
  m.scores[5] = INFINITY;
  ASSERT_EQ(codec_encode(c, &m, rec, cap, &len, &d), LMAP_ERANGE);
  codec_ctx_free(c);
  free(rec);
  map_free(&m);
}

/* ---- dictionaries ---- */

/* Transformed synthetic samples, end to end. */
static uint8_t *synth_raws(const codec_shape *s, uint64_t first, size_t count,
                           uint64_t seed) {
  synth_params p = {s->num_classes, s->h, s->w, s->k, seed};
  size_t rs = codec_raw_size(s);
  uint8_t *raws = malloc(rs * count);
  labelmap m = map_new(s->k, s->h, s->w);
  char id[64];
  for (size_t i = 0; i < count; i++) {
    synth_image(&p, first + i, id, &m);
    ASSERT_EQ(codec_transform(s, &m, raws + i * rs, NULL), 0);
  }
  map_free(&m);
  return raws;
}

static void test_dictionary(void) {
  codec_shape s = {5, 15, 15, 1000, CODEC_F16};
  diag d = {0};
  size_t cap = 1 << 16, dl = 123;
  uint8_t *dict = malloc(cap);
  uint8_t *raws = synth_raws(&s, 100000, 400, 3);
  ASSERT_EQ(codec_train_dict(&s, raws, 3, CODEC_LEVEL_FAST, dict, cap, &dl, &d),
            LMAP_EINVAL);
  ASSERT_CONTAINS(d.msg, "too few");
  ASSERT_EQ(dl, 0);
  ASSERT_EQ(
      codec_train_dict(&s, raws, 400, CODEC_LEVEL_FAST, dict, 100, &dl, &d),
      LMAP_EINVAL);
  int rc =
      codec_train_dict(&s, raws, 400, CODEC_LEVEL_FAST, dict, cap, &dl, &d);
  if (rc != 0)
    fprintf(stderr, "train: %s\n", d.msg);
  ASSERT_EQ(rc, 0);
  ASSERT(dl > 8 && dl <= cap);

  /* Same maps with and without the dictionary: both exact; the dictionary
   * one smaller. */
  codec_ctx *with = ctx_new(&s, dict, dl), *without = ctx_new(&s, NULL, 0);
  synth_params p = {1000, 15, 15, 5, 3};
  labelmap m = map_new(5, 15, 15);
  char id[64];
  size_t sum_with = 0, sum_without = 0;
  for (uint64_t i = 0; i < 100; i++) {
    synth_image(&p, i, id, &m);
    sum_with += round_trip(with, &s, &m);
    sum_without += round_trip(without, &s, &m);
  }
  ASSERT(sum_with < sum_without);

  /* A record needs its own dictionary: decoding it without, or with
   * another one, fails its checks. */
  size_t rcap = codec_record_bound(with), len;
  uint8_t *rec = malloc(rcap);
  labelmap out = map_new(5, 15, 15);
  ASSERT_EQ(codec_encode(with, &m, rec, rcap, &len, &d), 0);
  ASSERT_EQ(codec_decode(without, rec, len, &out, &d), LMAP_ECORRUPT);
  uint8_t *raws2 = synth_raws(&s, 500000, 200, 99);
  size_t dl2;
  uint8_t *dict2 = malloc(cap);
  ASSERT_EQ(
      codec_train_dict(&s, raws2, 200, CODEC_LEVEL_FAST, dict2, cap, &dl2, &d),
      0);
  if (dl2 != dl || memcmp(dict, dict2, dl) != 0) {
    codec_ctx *other = ctx_new(&s, dict2, dl2);
    ASSERT_EQ(codec_decode(other, rec, len, &out, &d), LMAP_ECORRUPT);
    codec_ctx_free(other);
  }
  /* A record made without a dictionary references nothing in it; a
   * decoder holding one may decode it, but then only to the same map. */
  ASSERT_EQ(codec_encode(without, &m, rec, rcap, &len, &d), 0);
  rc = codec_decode(with, rec, len, &out, &d);
  ASSERT(rc == LMAP_ECORRUPT || rc == 0);
  if (rc == 0)
    assert_same(&s, &m, &out);

  /* Dictionaries that are not zstd dictionaries are refused up front. */
  codec_ctx *bad = NULL;
  uint8_t junk[300];
  for (size_t i = 0; i < sizeof junk; i++)
    junk[i] = (uint8_t)rnd();
  ASSERT_EQ(codec_ctx_new(&s, junk, sizeof junk, 1, &bad, &d), LMAP_EINVAL);
  ASSERT_CONTAINS(d.msg, "magic");
  memcpy(junk, dict, 8); /* magic and id, then garbage tables */
  ASSERT_EQ(codec_ctx_new(&s, junk, sizeof junk, 1, &bad, &d), LMAP_EINVAL);
  ASSERT(bad == NULL);

  free(dict2);
  free(raws2);
  free(rec);
  map_free(&out);
  map_free(&m);
  codec_ctx_free(with);
  codec_ctx_free(without);
  free(raws);
  free(dict);
}

/* ---- hostile records ---- */

static int maps_equal(const labelmap *a, const labelmap *b) {
  size_t n = labelmap_entries(a);
  return memcmp(a->scores, b->scores, n * sizeof(float)) == 0 &&
         memcmp(a->classes, b->classes, n * sizeof(uint32_t)) == 0;
}

/* Every truncation, every byte flipped three ways, an extra byte, another
 * version: each either fails with LMAP_ECORRUPT or (only if the flip was
 * harmless) decodes to exactly the original. */
static void corruption_sweep(codec_ctx *c, const codec_shape *s,
                             const labelmap *m) {
  diag d = {0};
  size_t cap = codec_record_bound(c), len;
  uint8_t *rec = malloc(cap + 1), *bad = malloc(cap + 1);
  labelmap want = map_new(s->k, s->h, s->w), got = map_new(s->k, s->h, s->w);
  ASSERT_EQ(codec_encode(c, m, rec, cap, &len, &d), 0);
  ASSERT_EQ(codec_decode(c, rec, len, &want, &d), 0);

  for (size_t cut = 0; cut < len; cut++) {
    /* A fresh copy of exactly `cut` bytes, so ASan sees any overread. */
    uint8_t *t = malloc(cut ? cut : 1);
    memcpy(t, rec, cut);
    ASSERT_EQ(codec_decode(c, t, cut, &got, &d), LMAP_ECORRUPT);
    free(t);
  }
  memcpy(bad, rec, len);
  bad[len] = 0;
  ASSERT_EQ(codec_decode(c, bad, len + 1, &got, &d), LMAP_ECORRUPT);
  ASSERT_CONTAINS(d.msg, "after its zstd frame");

  static const uint8_t flips[] = {0x01, 0x80, 0xFF};
  size_t harmless = 0;
  for (size_t i = 0; i < len; i++)
    for (size_t f = 0; f < sizeof flips; f++) {
      memcpy(bad, rec, len);
      bad[i] ^= flips[f];
      int rc = codec_decode(c, bad, len, &got, &d);
      if (rc == 0) {
        ASSERT(maps_equal(&got, &want));
        harmless++;
      } else {
        ASSERT_EQ(rc, LMAP_ECORRUPT);
        ASSERT(d.msg[0] != '\0');
      }
    }
  /* Only bits zstd ignores may be harmless (e.g. reserved or window bits
   * of a single-segment frame); nearly every flip must be caught. */
  ASSERT(harmless * 100 < len * sizeof flips);

  memcpy(bad, rec, len);
  bad[0] = 2;
  ASSERT_EQ(codec_decode(c, bad, len, &got, &d), LMAP_ECORRUPT);
  ASSERT_CONTAINS(d.msg, "version 2");
  map_free(&want);
  map_free(&got);
  free(rec);
  free(bad);
}

static void test_corruption(void) {
  codec_shape s = {5, 15, 15, 1000, CODEC_F16};
  uint8_t *raws = synth_raws(&s, 200000, 100, 5);
  size_t dl;
  uint8_t *dict = malloc(1 << 16);
  ASSERT_EQ(codec_train_dict(&s, raws, 100, CODEC_LEVEL_FAST, dict, 1 << 16,
                             &dl, NULL),
            0);
  synth_params p = {1000, 15, 15, 5, 5};
  labelmap m = map_new(5, 15, 15);
  char id[64];
  synth_image(&p, 1, id, &m);
  codec_ctx *c = ctx_new(&s, dict, dl);
  corruption_sweep(c, &s, &m);
  codec_ctx_free(c);
  s.encoding = CODEC_F32;
  c = ctx_new(&s, NULL, 0);
  corruption_sweep(c, &s, &m);

  /* A record of another shape: the frame states a different size. */
  codec_shape s2 = {5, 15, 14, 1000, CODEC_F32};
  codec_ctx *c2 = ctx_new(&s2, NULL, 0);
  labelmap m2 = map_new(5, 15, 14), out = map_new(5, 15, 15);
  for (size_t i = 0; i < labelmap_entries(&m2); i++)
    m2.classes[i] = (uint32_t)i % 1000;
  size_t cap = codec_record_bound(c2), len;
  uint8_t *rec = malloc(cap);
  diag d = {0};
  ASSERT_EQ(codec_encode(c2, &m2, rec, cap, &len, &d), 0);
  ASSERT_EQ(codec_decode(c, rec, len, &out, &d), LMAP_ECORRUPT);
  ASSERT_CONTAINS(d.msg, "shape needs");
  /* A body whose escaped class points past num_classes: the checksum is
   * right (we compress it ourselves), the class check must catch it. The
   * first cell's class 999 is past every list position, so the class
   * stream (after the two f32 head planes) starts 255, 0x03, 0xE7. */
  uint8_t *raw = malloc(codec_raw_size(&s));
  const size_t cs = 2 * labelmap_entries(&m);
  m.classes[0] = 999;
  ASSERT_EQ(codec_transform(&s, &m, raw, NULL), 0);
  ASSERT_EQ(raw[cs], 255);
  ASSERT_EQ(raw[cs + 1], 0x03);
  ASSERT_EQ(raw[cs + 2], 0xE7);
  raw[cs + 1] = 0xFF; /* class 0xFFE7 */
  ASSERT_EQ(codec_untransform(&s, raw, &out, &d), LMAP_ECORRUPT);
  ASSERT_CONTAINS(d.msg, "not below num_classes");
  ASSERT_EQ(codec_compress_raw(c, raw, rec, codec_record_bound(c), &len, &d),
            0);
  ASSERT_EQ(codec_decode(c, rec, len, &out, &d), LMAP_ECORRUPT);
  ASSERT_CONTAINS(d.msg, "not below num_classes");
  /* A class stream that repeats a cell before there is one. */
  ASSERT_EQ(codec_transform(&s, &m, raw, NULL), 0);
  raw[cs] = 0;
  ASSERT_EQ(codec_untransform(&s, raw, &out, &d), LMAP_ECORRUPT);
  ASSERT_CONTAINS(d.msg, "no previous cell");
  free(raw);
  free(rec);
  map_free(&m2);
  map_free(&out);
  codec_ctx_free(c2);
  codec_ctx_free(c);
  map_free(&m);
  free(dict);
  free(raws);
}

/* ---- levels ---- */

/* The level only changes the bytes: both levels decode to the same maps,
 * and the default (optimal parsing against a content dictionary) writes
 * smaller records than the fast level on ImageNet-shaped maps. */
static void test_levels(void) {
  diag d;
  ASSERT_EQ(codec_level_check(CODEC_LEVEL_DEFAULT, &d), 0);
  ASSERT_EQ(codec_level_check(CODEC_LEVEL_FAST, &d), 0);
  ASSERT_EQ(codec_level_check(0, &d), LMAP_EINVAL);
  ASSERT_CONTAINS(d.msg, "zstd level 0 is outside 1..19");
  ASSERT_EQ(codec_level_check(20, &d), LMAP_EINVAL);
  ASSERT_EQ(codec_level_check(-1, &d), LMAP_EINVAL);
  codec_shape s = {5, 15, 15, 1000, CODEC_F16};
  codec_ctx *c = NULL;
  ASSERT_EQ(codec_ctx_new(&s, NULL, 0, 20, &c, &d), LMAP_EINVAL);
  ASSERT(c == NULL);
  const size_t ntrain = 500, nmeas = 200;
  uint8_t *raws = synth_raws(&s, 1000000, ntrain, 42);
  uint8_t *dict = malloc(1 << 17);
  size_t dl;
  ASSERT_EQ(codec_train_dict(&s, raws, ntrain, 0, dict, 1 << 17, &dl, &d),
            LMAP_EINVAL);
  ASSERT_CONTAINS(d.msg, "zstd level 0");
  synth_params p = {1000, 15, 15, 5, 42};
  labelmap m = map_new(5, 15, 15), out = map_new(5, 15, 15);
  double per[2];
  const int levels[2] = {CODEC_LEVEL_FAST, CODEC_LEVEL_DEFAULT};
  for (int i = 0; i < 2; i++) {
    ASSERT_EQ(
        codec_train_dict(&s, raws, ntrain, levels[i], dict, 1 << 17, &dl, &d),
        0);
    ASSERT_EQ(codec_ctx_new(&s, dict, dl, levels[i], &c, &d), 0);
    size_t cap = codec_record_bound(c), len, total = 0;
    uint8_t *rec = malloc(cap);
    char id[64];
    for (uint64_t j = 0; j < nmeas; j++) {
      synth_image(&p, j, id, &m);
      ASSERT_EQ(codec_encode(c, &m, rec, cap, &len, &d), 0);
      ASSERT_EQ(codec_decode(c, rec, len, &out, &d), 0);
      assert_same(&s, &m, &out);
      total += len;
    }
    per[i] = (double)total / (double)nmeas;
    printf("codec f16 level %d: %.1f bytes/record (dictionary %zu bytes)\n",
           levels[i], per[i], dl);
    free(rec);
    codec_ctx_free(c);
  }
  ASSERT(per[1] < per[0]);
  map_free(&m);
  map_free(&out);
  free(dict);
  free(raws);
}

/* ---- figures ---- */

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

/* Bytes per record on synthetic ImageNet-shaped maps (K=5, 15x15,
 * C=1000), dictionary trained on other images of the same generator. The
 * f16 figure is the store's size target. */
static void test_figures(void) {
  for (int f32 = 0; f32 <= 1; f32++) {
    codec_shape s = {5, 15, 15, 1000, f32 ? CODEC_F32 : CODEC_F16};
    const size_t ntrain = 1000, nmeas = 500;
    uint8_t *raws = synth_raws(&s, 1000000, ntrain, 42);
    size_t dl;
    uint8_t *dict = malloc(1 << 17);
    ASSERT_EQ(codec_train_dict(&s, raws, ntrain, CODEC_LEVEL_FAST, dict,
                               1 << 17, &dl, NULL),
              0);
    codec_ctx *c = ctx_new(&s, dict, dl);
    synth_params p = {1000, 15, 15, 5, 42};
    labelmap m = map_new(5, 15, 15), out = map_new(5, 15, 15);
    size_t cap = codec_record_bound(c), len, total = 0;
    uint8_t *rec = malloc(cap);
    char id[64];
    double te = 0, td = 0;
    for (uint64_t i = 0; i < nmeas; i++) {
      synth_image(&p, i, id, &m);
      double t0 = now_us();
      ASSERT_EQ(codec_encode(c, &m, rec, cap, &len, NULL), 0);
      double t1 = now_us();
      ASSERT_EQ(codec_decode(c, rec, len, &out, NULL), 0);
      td += now_us() - t1;
      te += t1 - t0;
      total += len;
      assert_same(&s, &m, &out);
    }
    double per = (double)total / (double)nmeas;
    printf("codec %s: %.1f bytes/record over %zu synth maps (raw %zu, dict "
           "%zu bytes), encode %.1f us, decode %.1f us (this build)\n",
           f32 ? "f32" : "f16", per, nmeas, codec_raw_size(&s), dl,
           te / (double)nmeas, td / (double)nmeas);
    if (!f32)
      ASSERT(per <= 2000.0);
    else
      ASSERT(per < 4500.0); /* f32 scores alone are 4500 raw bytes */
    free(rec);
    map_free(&m);
    map_free(&out);
    codec_ctx_free(c);
    free(dict);
    free(raws);
  }
}

int main(void) {
  test_shape_check();
  test_round_scores();
  test_round_trip_edges();
  test_round_trip_all_classes();
  test_round_trip_shapes();
  test_synth_round_trip(CODEC_F16);
  test_synth_round_trip(CODEC_F32);
  test_range_errors();
  test_dictionary();
  test_corruption();
  test_hostile_bodies(CODEC_F16);
  test_hostile_bodies(CODEC_F32);
  test_levels();
  /* The portable kernels, on machines where the rest ran with AVX2. */
  codec_allow_avx2(0);
  test_round_trip_edges();
  test_synth_round_trip(CODEC_F16);
  test_synth_round_trip(CODEC_F32);
  test_hostile_bodies(CODEC_F16);
  codec_allow_avx2(1);
  test_figures();
  TEST_DONE();
}
