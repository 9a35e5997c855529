/*
 * codec: one label map <-> the bytes of one store record (contract in
 * codec.h, byte layout in docs/STORE_FORMAT.md §5-6). The only module that
 * includes zstd.h and zdict.h.
 *
 * A record is a version byte and two zstd frames. The map first goes
 * through a domain transform into a "body" that turns what neighbouring
 * cells share into small numbers:
 *   - classes become a byte stream walked in snake order, so that the
 *     previous cell is always a spatial neighbour: a cell equal to the
 *     previous one is one byte 0; any other cell is K move-to-front
 *     positions in a short list of the image's recent classes (escaped to
 *     plain indices past 253);
 *   - scores are rounded to the encoding and predicted on a checkerboard:
 *     "black" cells (row + column even) from the two black cells
 *     diagonally above, then "white" cells from their four black
 *     neighbours, capped by the cell's previous rank (ranks are sorted);
 *     the zigzagged residuals are split into byte planes.
 * The "head" (the high score planes and the class stream) compresses well
 * and is one frame, with the store's dictionary; the "tail" (the low score
 * planes: 8 of an f16 score's 16 bits, 16 of an f32's 32) is close to
 * random and is a second frame at zstd's fastest level, which stores it as
 * a raw block. Each frame is one ZSTD_compress2 call on a contiguous part
 * of the body.
 *
 * Speed: scores are coded in "lanes", the cells of one colour of one row,
 * gathered with all their ranks into padded rows so that the per-entry
 * arithmetic runs in fixed blocks of BLOCK lanes, which the compiler
 * vectorizes; no prediction depends on a value decoded in the same row,
 * except in row 0. Values outside the normal f16 range (zeros, subnormals;
 * and, when decoding, non-finite values, which are corruption) are flagged
 * by the blocks and redone exactly by a scalar pass. The move-to-front
 * list keeps its first entries in one 64-bit word, so that moving a class
 * to the front is a few register operations. The lane rows live in a
 * `work` buffer that a context allocates once.
 *
 * Invariants: every valid map has exactly one body, and decoding it gives
 * the map back bit for bit (f16: the map rounded by f32_to_f16); every
 * prediction is computed from values the decoder has already
 * reconstructed, in IEEE binary32 arithmetic and integer operations, so
 * encoder and decoder agree bit for bit. Decoding never trusts the record:
 * sizes, version, checksums, the class stream's structure and every
 * decoded class and score are checked.
 */
#include "codec.h"

#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zdict.h>
#include <zstd.h>

#include "core/f16.h"

/* Score predictions must round identically on every machine that reads a
 * store; x87 excess precision (FLT_EVAL_METHOD 2) would change them. */
#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "codec.c needs FLT_EVAL_METHOD == 0 (SSE2 or another IEEE FPU)"
#endif

#define RECORD_VERSION 1u
#define MTF_CAP 64u      /* classes the list remembers (at most 256) */
#define CODE_ESCAPE 255u /* class code: the class index follows */
/* The tail frame's level. Negative levels store literals without entropy
 * coding: the tail bytes are close to random (7.97 bits of entropy per
 * byte on synthetic maps), so zstd emits a raw block either way, and this
 * level gets there in 0.8 us instead of 4.6 us at level 1. */
#define TAIL_LEVEL (-1000)
#define BLOCK                                                                  \
  4u /* lanes per vectorized block (one SSE2 vector; 8 measured                \
         slower for odd lane counts, e.g. 9 lanes of W=18) */
/* x86-64 with GCC or Clang: AVX2 decoding kernels beside the SSE2 ones. */
#if defined(__x86_64__) && defined(__GNUC__)
#define CODEC_AVX2 1
#else
#define CODEC_AVX2 0
#endif
#define BLOCK_AVX2 8u
#define BLOCK_MAX 8u /* the widest kernel: padding of lane rows and z */

/* ---- shape ---- */

const char *codec_encoding_name(codec_encoding e) {
  return e == CODEC_F16 ? "f16" : e == CODEC_F32 ? "f32" : NULL;
}

int codec_encoding_from_name(const char *name, codec_encoding *out) {
  if (strcmp(name, "f16") == 0)
    *out = CODEC_F16;
  else if (strcmp(name, "f32") == 0)
    *out = CODEC_F32;
  else
    return -1;
  return 0;
}

int codec_shape_check(const codec_shape *s, diag *d) {
  if (s->k == 0 || s->k > LABELMAP_MAX_K)
    return diag_field(d, LMAP_EINVAL, "topk", "topk %u is outside 1..%u", s->k,
                      LABELMAP_MAX_K);
  if (s->h == 0 || s->h > LABELMAP_MAX_SIDE)
    return diag_field(d, LMAP_EINVAL, "grid_h", "grid_h %u is outside 1..%u",
                      s->h, LABELMAP_MAX_SIDE);
  if (s->w == 0 || s->w > LABELMAP_MAX_SIDE)
    return diag_field(d, LMAP_EINVAL, "grid_w", "grid_w %u is outside 1..%u",
                      s->w, LABELMAP_MAX_SIDE);
  if ((uint64_t)s->k * s->h * s->w > LABELMAP_MAX_ENTRIES)
    return diag_field(d, LMAP_EINVAL, "topk",
                      "topk*grid_h*grid_w = %u*%u*%u exceeds %u entries", s->k,
                      s->h, s->w, LABELMAP_MAX_ENTRIES);
  if (s->num_classes == 0 || s->num_classes > LABELMAP_MAX_CLASSES)
    return diag_field(d, LMAP_EINVAL, "num_classes",
                      "num_classes %u is outside 1..%u", s->num_classes,
                      LABELMAP_MAX_CLASSES);
  if (s->encoding != CODEC_F16 && s->encoding != CODEC_F32)
    return diag_field(d, LMAP_EINVAL, "encoding",
                      "encoding %d is neither f16 nor f32", (int)s->encoding);
  return 0;
}

/* Body geometry (docs/STORE_FORMAT.md §6):
 *   [0, cs)           the head score planes (wh planes of n bytes)
 *   [cs, tail)        the class stream (at most n * (1 + wc) bytes), then
 *                     zeros
 *   [tail, size)      the tail score planes (ws - wh planes of n bytes)
 * The head frame holds [0, cs + the stream's length), the tail frame
 * [tail, size). */
typedef struct geom {
  size_t n, hw;
  unsigned wc; /* bytes per escaped class index: 1, 2 or 3 */
  unsigned ws; /* bytes per score: 2 (f16) or 4 (f32) */
  unsigned wh; /* score planes in the head: 1 (f16) or 2 (f32) */
  size_t cs, tail, size;
} geom;

static geom geom_of(const codec_shape *s) {
  geom g;
  g.hw = (size_t)s->h * s->w;
  g.n = g.hw * s->k;
  g.wc = s->num_classes <= 256u ? 1 : s->num_classes <= 65536u ? 2 : 3;
  g.ws = s->encoding == CODEC_F16 ? 2 : 4;
  g.wh = g.ws / 2;
  g.cs = g.n * g.wh;
  g.tail = g.cs + g.n * (1 + g.wc);
  g.size = g.tail + g.n * (g.ws - g.wh);
  return g;
}

size_t codec_raw_size(const codec_shape *s) {
  return geom_of(s).size;
}

/* ---- numbers ---- */

static inline uint32_t f32_bits(float f) {
  uint32_t b;
  memcpy(&b, &f, sizeof b);
  return b;
}

static inline float bits_f32(uint32_t b) {
  float f;
  memcpy(&f, &b, sizeof f);
  return f;
}

/* Ordered integers (§6.1): IEEE bits mapped to an unsigned integer with
 * the same order as the values (-0.0 just below +0.0), so that "close in
 * value" becomes "close as integers" and rank order becomes integer order.
 * For f16 the arguments are the magnitude bits h and a sign mask. */
static inline uint32_t ord16(uint32_t h, uint32_t sign_mask) {
  return ((h ^ sign_mask) + 0x8000u) & 0xFFFFu;
}

static inline uint32_t ord32(uint32_t b) {
  return b ^ ((0u - (b >> 31)) | 0x80000000u);
}

static inline uint32_t unord32(uint32_t o) {
  return o ^ (((o >> 31) - 1u) | 0x80000000u);
}

/* f32 bits `b` rounded to 11 significant bits, ties to even, as f32 bits.
 * Where the result lies in the normal f16 range [2^-14, 65504] it is
 * exactly the value f32_to_f16 gives (a value just below 2^-14 only
 * rounds up to 2^-14 where f16's subnormal rounding does too). */
static inline uint32_t rne16(uint32_t b) {
  return (b + 0xFFFu + ((b >> 13) & 1u)) & ~0x1FFFu;
}

/* 1 unless `a`, f32 magnitude bits, is a normal f16 value. */
static inline uint32_t f16_abnormal(uint32_t a) {
  return a - 0x38800000u > 0x477FE000u - 0x38800000u;
}

/* The f16 prediction (§6.3): the ordered value of pf rounded to an f16
 * magnitude, half away from zero, magnitudes below 2^-15 predicting zero.
 * pf averages f16 values, so it never exceeds 65504. */
static inline uint32_t pred16(float pf) {
  uint32_t b = f32_bits(pf);
  /* Signed comparisons from here on: every value is below 2^31, and SSE2
   * has no unsigned ones. */
  int32_t a = (int32_t)(b & 0x7FFFFFFFu);
  a = a < 0x38000000 ? 0x38000000 : a;
  return ord16(((uint32_t)a - 0x37FFF000u) >> 13, 0u - (b >> 31));
}

/* min(p, cap) for f16 ordered values (below 2^17). */
static inline uint32_t cap16(uint32_t p, uint32_t cap) {
  return (int32_t)p < (int32_t)cap ? p : cap;
}

/* The cap of rank 0: above every ordered value of the encoding. */
#define NOCAP16 0x10000u
#define NOCAP32 0xFFFFFFFFu

static inline uint32_t zigzag(uint32_t d, unsigned bits) {
  uint32_t mask = bits == 32 ? 0xFFFFFFFFu : (1u << bits) - 1;
  d &= mask;
  return ((d << 1) ^ (0u - (d >> (bits - 1)))) & mask;
}

static inline uint32_t unzigzag(uint32_t z) {
  return (z >> 1) ^ (0u - (z & 1u));
}

/* ---- scores: one entry ---- */

/* Each function codes one lane; the cap `oprev` is the ordered value of
 * the same cell's previous rank (NOCAP16 or NOCAP32 for rank 0). */

/* Stored f16 value and ordered value of input x, assuming the result is a
 * normal f16 value; returns 1 when it is not (the lane is redone). */
static inline uint32_t stored16(float x, float *v, uint32_t *o) {
  uint32_t r = rne16(f32_bits(x)), a = r & 0x7FFFFFFFu;
  *v = bits_f32(r);
  *o = ord16((a - 0x38000000u) >> 13, 0u - (r >> 31));
  return f16_abnormal(a);
}

/* The same, exactly, for any input; returns 1 if f16 cannot hold x. */
static uint32_t stored16_exact(float x, float *v, uint32_t *o) {
  uint16_t h = f32_to_f16(x);
  *v = f16_to_f32(h);
  *o = ord16(h & 0x7FFFu, 0u - (uint32_t)(h >> 15));
  return (h & 0x7C00u) == 0x7C00u;
}

static inline uint32_t stored32(float x, float *v, uint32_t *o) {
  uint32_t b = f32_bits(x);
  *v = x;
  *o = ord32(b);
  return (b & 0x7F800000u) == 0x7F800000u;
}

static inline uint32_t residual16(float pf, uint32_t oprev, uint32_t o) {
  return zigzag(o - cap16(pred16(pf), oprev), 16);
}

static inline uint32_t residual32(float pf, uint32_t oprev, uint32_t o) {
  uint32_t p = ord32(f32_bits(pf));
  p = p < oprev ? p : oprev;
  return zigzag(o - p, 32);
}

/* Decodes an f16 entry, assuming a normal value; returns 1 when it is not
 * (the lane is redone by decode16_exact). */
static inline uint32_t decode16(float pf, uint32_t oprev, uint32_t z, float *v,
                                uint32_t *o) {
  uint32_t u = (cap16(pred16(pf), oprev) + unzigzag(z)) & 0xFFFFu;
  uint32_t neg = (u >> 15) - 1u, h = ((u - 0x8000u) ^ neg) & 0x7FFFu;
  *o = u;
  *v = bits_f32(((h << 13) + 0x38000000u) | (neg << 31));
  return h - 0x400u >= 0x7C00u - 0x400u;
}

/* The value of ordered f16 value u, exactly; 1 if it is not finite. */
static uint32_t decode16_exact(uint32_t u, float *v) {
  uint32_t neg = (u >> 15) - 1u, h = ((u - 0x8000u) ^ neg) & 0x7FFFu;
  *v = f16_to_f32((uint16_t)(h | (neg & 0x8000u)));
  return h >= 0x7C00u;
}

static inline uint32_t decode32(float pf, uint32_t oprev, uint32_t z, float *v,
                                uint32_t *o) {
  uint32_t p = ord32(f32_bits(pf));
  p = p < oprev ? p : oprev;
  uint32_t u = p + unzigzag(z), b = unord32(u);
  *o = u;
  *v = bits_f32(b);
  return (b & 0x7F800000u) == 0x7F800000u;
}

/* ---- scores: lanes ---- */

/* Every cell averages four predictors, pf = ((A + B) + (C + D)) * 0.25
 * (§6.3). Lane m of colour c (0 black, 1 white) in row r is the cell at
 * column (r + c) % 2 + 2m. Rows are coded in the order black rows, then
 * white rows, all K ranks of a row at once. The residual of rank k of a
 * lane is at plane index k*H*W + (the lanes of the rows before it, black
 * rows first) + m: rank-major, which compresses better than keeping a
 * row's ranks together (residuals of one rank look alike). A lane row in
 * the scratch holds all K ranks, ls entries per rank: lanes start at
 * index 1, and index 0 and index 1 + nl hold copies of the first and last
 * lanes, so that a missing neighbour reads the one on the other side. */

/* The kernels run fixed blocks of BLOCK lanes over restrict-qualified
 * rows, which the compiler vectorizes. Lanes from nl to the end of the
 * last block compute junk into padding (from earlier values, which the
 * zeroed allocation keeps initialized); a flag they raise only costs a
 * needless exact pass over the row. They are called through pointers
 * chosen once per shape, which also keeps the compiler from inlining them
 * into callers where `restrict` no longer holds. */

typedef struct nb4 {
  const float *a, *b, *c, *d; /* rank 0 of the four predictor rows */
} nb4;

#define PF(a, b, c, d, i) (((a)[i] + (b)[i]) + ((c)[i] + (d)[i])) * 0.25f

/* Stored and ordered values of K ranks of input x; returns a flag for
 * values outside the fast path (f16: outside the normal range). Defined
 * once per entry function, as are the kernels below. */
#define KERN_STORED(NAME, ENTRY)                                               \
  static uint32_t NAME(const float *restrict x, float *restrict v,             \
                       uint32_t *restrict o, uint32_t K, size_t ls,            \
                       uint32_t nl) {                                          \
    uint32_t ab = 0;                                                           \
    for (size_t k = 0; k < K; k++)                                             \
      for (size_t b = k * ls + 1; b < k * ls + 1 + nl; b += BLOCK)             \
        for (size_t l = 0; l < BLOCK; l++)                                     \
          ab |= ENTRY(x[b + l], &v[b + l], &o[b + l]);                         \
    return ab;                                                                 \
  }

KERN_STORED(kern_stored16, stored16)
KERN_STORED(kern_stored32, stored32)

/* Residuals of K ranks into the lane row z; the cap of rank k is the
 * ordered value of rank k-1, and `nocap` for rank 0. */
#define KERN_RESIDUAL(NAME, ENTRY)                                             \
  static void NAME(const float *restrict pa, const float *restrict pb,         \
                   const float *restrict pc, const float *restrict pd,         \
                   const uint32_t *restrict o, const uint32_t *restrict nocap, \
                   uint32_t *restrict z, uint32_t K, size_t ls, uint32_t nl) { \
    for (size_t k = 0; k < K; k++) {                                           \
      const uint32_t *op = k > 0 ? o + (k - 1) * ls : nocap;                   \
      for (size_t b = 1; b < 1 + nl; b += BLOCK)                               \
        for (size_t l = 0; l < BLOCK; l++)                                     \
          z[k * ls + b + l] = ENTRY(PF(pa, pb, pc, pd, k * ls + b + l),        \
                                    op[b + l], o[k * ls + b + l]);             \
    }                                                                          \
  }

KERN_RESIDUAL(kern_residual16, residual16)
KERN_RESIDUAL(kern_residual32, residual32)

/* Decodes K ranks of a row from z (rank stride zs) into v; the cap of
 * each rank stays in a block-sized array. Returns a flag for values
 * outside the fast path. (Reading the byte planes here instead of z would
 * save a pass, but mixed widths keep the compiler from vectorizing.)
 * Defined once per entry decoder and block width: the SSE2 kernels every
 * x86-64 has, and AVX2 kernels of 8 lanes (one 256-bit vector) chosen at
 * run time where the CPU has AVX2; a row of 15 cells has 7 or 8 lanes of
 * a colour, one AVX2 block instead of two SSE2 ones, and decoding a
 * 15x15x5 record takes 10% less time. Both compute the same IEEE binary32
 * operations (no FMA: ISO C mode does not contract), so they decode alike. */
#define KERN_DECODE(NAME, ENTRY, NOCAP, WIDTH, ATTR)                           \
  ATTR static uint32_t NAME(                                                   \
      const float *restrict pa, const float *restrict pb,                      \
      const float *restrict pc, const float *restrict pd,                      \
      const uint32_t *restrict z, size_t zs, float *restrict v, uint32_t K,    \
      size_t ls, uint32_t nl) {                                                \
    uint32_t ab = 0;                                                           \
    for (size_t b = 1; b < 1 + nl; b += (WIDTH)) {                             \
      uint32_t cap[WIDTH];                                                     \
      for (size_t l = 0; l < (WIDTH); l++)                                     \
        cap[l] = (NOCAP);                                                      \
      for (size_t k = 0; k < K; k++)                                           \
        for (size_t l = 0; l < (WIDTH); l++)                                   \
          ab |= ENTRY(PF(pa, pb, pc, pd, k * ls + b + l), cap[l],              \
                      z[k * zs + b + l - 1], &v[k * ls + b + l], &cap[l]);     \
    }                                                                          \
    return ab;                                                                 \
  }

KERN_DECODE(kern_decode16, decode16, NOCAP16, BLOCK, )
KERN_DECODE(kern_decode32, decode32, NOCAP32, BLOCK, )
#if CODEC_AVX2
KERN_DECODE(kern_decode16_avx2, decode16, NOCAP16, BLOCK_AVX2,
            __attribute__((target("avx2"))))
KERN_DECODE(kern_decode32_avx2, decode32, NOCAP32, BLOCK_AVX2,
            __attribute__((target("avx2"))))
#endif

static int avx2_allowed = 1;

void codec_allow_avx2(int allow) {
  avx2_allowed = allow;
}

typedef struct work {
  uint32_t K, H, W;
  int f16;
  size_t ls;       /* entries per rank in a lane row */
  size_t rs;       /* entries per lane row: K * ls */
  float *s;        /* H rows: stored values of the black cells */
  float *x;        /* one row: the row being coded (input, or white values) */
  float *v;        /* one row: stored values of a white row */
  uint32_t *o;     /* one row: ordered values */
  uint32_t *zr;    /* one row: residuals */
  uint32_t *nocap; /* ls entries: the cap of rank 0 (NOCAP16 or NOCAP32) */
  uint32_t *z;     /* every residual, in coding order, and BLOCK_MAX more */
  uint8_t *raw;    /* a body, for a context */
  uint32_t (*stored)(const float *restrict, float *restrict, uint32_t *restrict,
                     uint32_t, size_t, uint32_t);
  void (*residual)(const float *restrict, const float *restrict,
                   const float *restrict, const float *restrict,
                   const uint32_t *restrict, const uint32_t *restrict,
                   uint32_t *restrict, uint32_t, size_t, uint32_t);
  uint32_t (*decode)(const float *restrict, const float *restrict,
                     const float *restrict, const float *restrict,
                     const uint32_t *restrict, size_t, float *restrict,
                     uint32_t, size_t, uint32_t);
} work;

/* The decoding kernels of a new context. */
static void pick_decode(work *w) {
  w->decode = w->f16 ? kern_decode16 : kern_decode32;
#if CODEC_AVX2
  if (avx2_allowed && __builtin_cpu_supports("avx2"))
    w->decode = w->f16 ? kern_decode16_avx2 : kern_decode32_avx2;
#endif
}

static void work_free(work *w) {
  if (w == NULL)
    return;
  free(w->s);
  free(w->z);
  free(w->raw);
  free(w);
}

static work *work_new(const codec_shape *s) {
  work *w = calloc(1, sizeof *w);
  if (w == NULL)
    return NULL;
  w->K = s->k;
  w->H = s->h;
  w->W = s->w;
  w->f16 = s->encoding == CODEC_F16;
  w->stored = w->f16 ? kern_stored16 : kern_stored32;
  w->residual = w->f16 ? kern_residual16 : kern_residual32;
  pick_decode(w);
  size_t lanes = (s->w + 1u) / 2;
  w->ls = (lanes + BLOCK_MAX - 1) / BLOCK_MAX * BLOCK_MAX + 2;
  w->rs = (size_t)s->k * w->ls;
  geom g = geom_of(s);
  /* Zeroed, so that lanes past the last one read initialized values. The
   * float rows and the integer rows share one block (both 4 bytes). */
  w->s = calloc(((size_t)s->h + 5) * w->rs + w->ls, sizeof(float));
  w->z = calloc(g.n + BLOCK_MAX, sizeof *w->z);
  w->raw = malloc(g.size);
  if (w->s == NULL || w->z == NULL || w->raw == NULL) {
    work_free(w);
    return NULL;
  }
  w->x = w->s + (size_t)s->h * w->rs;
  w->v = w->x + w->rs;
  w->o = (uint32_t *)(void *)(w->v + w->rs);
  w->zr = w->o + 2 * w->rs;
  w->nocap = w->zr + w->rs;
  for (size_t i = 0; i < w->ls; i++)
    w->nocap[i] = w->f16 ? NOCAP16 : NOCAP32;
  return w;
}

static inline float *srow(const work *w, uint32_t r) {
  return w->s + (size_t)r * w->rs;
}

static inline uint32_t lane_q0(uint32_t r, int white) {
  return (r + (uint32_t)white) & 1u;
}

static inline uint32_t lane_count(const work *w, uint32_t r, int white) {
  uint32_t q0 = lane_q0(r, white);
  return q0 < w->W ? (w->W - q0 + 1) / 2 : 0;
}

/* The predictor rows of row r (§6.3): n->a[1 + m] (rank 0) is predictor A
 * of lane m. A black cell's predictors are its upper-left and upper-right
 * black neighbours (with one column, the black cell two rows up), each
 * counted twice; a white cell's are its left, right, upper and lower
 * black neighbours. A missing neighbour is replaced by the one opposite
 * (padding does that within a row); with one column the horizontal pair
 * is the vertical one, with one row the vertical pair the horizontal
 * one. Black row 0 is predicted from itself, lane m from lane m-1, lane 0
 * from zeros: its padding is zeroed first and the decoder goes lane by
 * lane. */
static nb4 predictors(const work *w, uint32_t r, int white) {
  nb4 n;
  if (!white) {
    if (r == 0) {
      n.a = srow(w, 0) - 1;
    } else if (w->W == 1) {
      n.a = srow(w, r - 2);
    } else if ((r & 1u) == 0) { /* upper-left is lane m-1 of row r-1 */
      n.a = srow(w, r - 1) - 1;
      n.b = srow(w, r - 1);
    } else { /* upper-left is lane m */
      n.a = srow(w, r - 1);
      n.b = srow(w, r - 1) + 1;
    }
    if (r == 0 || w->W == 1)
      n.b = n.a;
    n.c = n.a;
    n.d = n.b;
    return n;
  }
  const float *u = r > 0 ? srow(w, r - 1) : NULL;
  const float *dn = r + 1 < w->H ? srow(w, r + 1) : NULL;
  if (u == NULL)
    u = dn;
  if (dn == NULL)
    dn = u;
  if (w->W == 1) {
    n.a = n.c = u;
    n.b = n.d = dn;
    return n;
  }
  if ((r & 1u) == 0) { /* left is black lane m, right lane m+1 */
    n.a = srow(w, r);
    n.b = srow(w, r) + 1;
  } else { /* left is lane m-1, right lane m */
    n.a = srow(w, r) - 1;
    n.b = srow(w, r);
  }
  n.c = u ? u : n.a;
  n.d = dn ? dn : n.b;
  return n;
}

/* Sets the padding of every rank of a lane row: copies of the first and
 * last lanes, or (zero_front, black row 0 before its predictions) a zero
 * in front. */
static void set_pads(const work *w, float *row, uint32_t nl, int zero_front) {
  for (uint32_t k = 0; k < w->K; k++) {
    float *p = row + (size_t)k * w->ls;
    p[0] = zero_front ? 0.0f : p[1];
    p[1 + nl] = p[nl];
  }
}

/* Moves between lane rows and maps (cell-major, K entries per cell). */
static void gather(const work *w, float *row, const float *map, uint32_t r,
                   uint32_t q0, uint32_t nl) {
  const float *in = map + ((size_t)r * w->W + q0) * w->K;
  for (uint32_t k = 0; k < w->K; k++)
    for (uint32_t j = 0; j < nl; j++)
      row[k * w->ls + 1 + j] = in[(size_t)2 * j * w->K + k];
}

static void scatter(const work *w, const float *row, float *map, uint32_t r,
                    uint32_t q0, uint32_t nl) {
  float *out = map + ((size_t)r * w->W + q0) * w->K;
  for (uint32_t j = 0; j < nl; j++)
    for (uint32_t k = 0; k < w->K; k++)
      out[(size_t)2 * j * w->K + k] = row[k * w->ls + 1 + j];
}

/* Redoes exactly the lanes of w->x that the stored-value kernel flagged
 * (f16: zeros and subnormals; they are rare). Returns -1 if a value cannot
 * be stored: not finite, or beyond f16. */
static int stored_exact_row(work *w, float *v, uint32_t nl) {
  for (uint32_t k = 0; k < w->K; k++)
    for (uint32_t j = 1; j <= nl; j++) {
      size_t i = k * w->ls + j;
      float tv;
      uint32_t to;
      if (!w->f16) {
        if (stored32(w->x[i], &tv, &to))
          return -1;
      } else if (stored16(w->x[i], &tv, &to) &&
                 stored16_exact(w->x[i], &v[i], &w->o[i])) {
        return -1;
      }
    }
  return 0;
}

/* Between f16 residuals and their two byte planes, in blocks the compiler
 * vectorizes (the 16-bit step is what lets it). */
static void split16(const uint32_t *restrict z, uint8_t *restrict hi,
                    uint8_t *restrict lo, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (size_t l = 0; l < 16; l++) {
      uint16_t v = (uint16_t)z[i + l];
      hi[i + l] = (uint8_t)(v >> 8);
      lo[i + l] = (uint8_t)v;
    }
  for (; i < n; i++) {
    hi[i] = (uint8_t)(z[i] >> 8);
    lo[i] = (uint8_t)z[i];
  }
}

static void join16(const uint8_t *restrict hi, const uint8_t *restrict lo,
                   uint32_t *restrict z, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (size_t l = 0; l < 16; l++)
      z[i + l] = (uint16_t)(hi[i + l] << 8 | lo[i + l]);
  for (; i < n; i++)
    z[i] = (uint32_t)hi[i] << 8 | lo[i];
}

/* Residuals of every score into the planes of `raw` (§6.3). Returns 0, or
 * -1 if a score cannot be stored. */
static int encode_scores(work *w, const geom *g, const labelmap *m,
                         uint8_t *raw) {
  const uint32_t K = w->K, H = w->H;
  size_t t = 0;
  for (int white = 0; white <= 1; white++)
    for (uint32_t r = 0; r < H; r++) {
      uint32_t nl = lane_count(w, r, white), q0 = lane_q0(r, white);
      if (nl == 0)
        continue;
      float *v = white ? w->v : srow(w, r);
      gather(w, w->x, m->scores, r, q0, nl);
      if (w->stored(w->x, v, w->o, K, w->ls, nl) &&
          stored_exact_row(w, v, nl) != 0)
        return -1;
      if (!white)
        set_pads(w, v, nl, r == 0);
      nb4 n = predictors(w, r, white);
      w->residual(n.a, n.b, n.c, n.d, w->o, w->nocap, w->zr, K, w->ls, nl);
      for (uint32_t k = 0; k < K; k++)
        for (uint32_t j = 0; j < nl; j++)
          w->z[k * g->hw + t + j] = w->zr[k * w->ls + 1 + j];
      if (!white && r == 0)
        set_pads(w, v, nl, 0);
      t += nl;
    }
  /* Split into byte planes. */
  const size_t n = g->n;
  uint8_t *p0 = raw, *p2 = raw + g->tail;
  const uint32_t *z = w->z;
  if (w->f16)
    split16(z, p0, p2, n);
  else
    for (size_t i = 0; i < n; i++) {
      p0[i] = (uint8_t)(z[i] >> 24);
      p0[n + i] = (uint8_t)(z[i] >> 16);
      p2[i] = (uint8_t)(z[i] >> 8);
      p2[n + i] = (uint8_t)z[i];
    }
  return 0;
}

/* Decodes lane row r exactly, one lane at a time: black row 0 (each lane
 * predicted from the one before), and any row the kernel flagged. Returns
 * 0 or LMAP_ECORRUPT for a non-finite value. */
static int decode_row_exact(const work *w, nb4 n, const uint32_t *z, size_t zs,
                            float *v, uint32_t r, uint32_t q0, uint32_t nl,
                            diag *d) {
  for (uint32_t j = 1; j <= nl; j++) {
    uint32_t cap = w->f16 ? NOCAP16 : NOCAP32;
    for (uint32_t k = 0; k < w->K; k++) {
      size_t i = k * w->ls + j;
      float pf = PF(n.a, n.b, n.c, n.d, i);
      uint32_t zz = z[k * zs + j - 1], bad;
      if (w->f16) {
        cap = (cap16(pred16(pf), cap) + unzigzag(zz)) & 0xFFFFu;
        bad = decode16_exact(cap, &v[i]);
      } else {
        bad = decode32(pf, cap, zz, &v[i], &cap);
      }
      if (bad)
        return diag_set(d, LMAP_ECORRUPT,
                        "record decodes to a non-finite score at row %u, "
                        "column %u, rank %u",
                        r, q0 + 2 * (j - 1), k);
    }
  }
  return 0;
}

static int decode_scores(work *w, const geom *g, const uint8_t *raw,
                         labelmap *out, diag *d) {
  const uint32_t K = w->K, H = w->H;
  const size_t n = g->n;
  const uint8_t *p0 = raw, *p2 = raw + g->tail;
  uint32_t *z = w->z;
  if (w->f16)
    join16(p0, p2, z, n);
  else
    for (size_t i = 0; i < n; i++)
      z[i] = (uint32_t)p0[i] << 24 | (uint32_t)p0[n + i] << 16 |
             (uint32_t)p2[i] << 8 | p2[n + i];
  size_t t = 0;
  for (int white = 0; white <= 1; white++)
    for (uint32_t r = 0; r < H; r++) {
      uint32_t nl = lane_count(w, r, white), q0 = lane_q0(r, white);
      if (nl == 0)
        continue;
      float *v = white ? w->v : srow(w, r);
      nb4 nb = predictors(w, r, white);
      int rc = 0;
      if (!white && r == 0) {
        set_pads(w, v, nl, 1);
        rc = decode_row_exact(w, nb, z + t, g->hw, v, r, q0, nl, d);
      } else if (w->decode(nb.a, nb.b, nb.c, nb.d, z + t, g->hw, v, K, w->ls,
                           nl)) {
        rc = decode_row_exact(w, nb, z + t, g->hw, v, r, q0, nl, d);
      }
      if (rc != 0)
        return rc;
      if (!white)
        set_pads(w, v, nl, 0);
      scatter(w, v, out->scores, r, q0, nl);
      t += nl;
    }
  return 0;
}

/* ---- classes: move-to-front list ---- */

/* The list keeps each class in a slot that does not move (slots are handed
 * out in order and, once the list is full, taken from the entry that
 * falls off its end); the order is a sequence of slot ids. The first
 * WINDOW entries' ids are the bytes of one 64-bit word, so that taking a
 * class from there and moving it to the front (nearly every class) is a
 * few register operations with no loop and no branch on the data: a
 * move-to-front list in memory costs a store-to-load round trip and a
 * mispredicted loop exit per class. The other ids are a byte array. */
#define WINDOW 8u

typedef struct mtf {
  uint32_t cls[MTF_CAP]; /* class of each slot */
  uint64_t win;          /* byte j: slot of entry j < WINDOW */
  uint8_t cold[MTF_CAP]; /* slot of entry j >= WINDOW at j - WINDOW */
  uint8_t bucket[256];   /* encoder: a likely slot of a class */
  uint32_t len;
} mtf;

/* Bytes 0..j of a word. */
static const uint64_t upto[WINDOW] = {0xFFull,
                                      0xFFFFull,
                                      0xFFFFFFull,
                                      0xFFFFFFFFull,
                                      0xFFFFFFFFFFull,
                                      0xFFFFFFFFFFFFull,
                                      0xFFFFFFFFFFFFFFull,
                                      0xFFFFFFFFFFFFFFFFull};

static void mtf_init(mtf *m) {
  memset(m, 0, sizeof *m);
}

static inline uint32_t mtf_slot(const mtf *m, uint32_t j) {
  return j < WINDOW ? (uint32_t)(m->win >> (8 * j)) & 0xFFu
                    : m->cold[j - WINDOW];
}

static inline uint32_t mtf_get(const mtf *m, uint32_t j) {
  return m->cls[mtf_slot(m, j)];
}

/* Bucket of class c in the encoder's index of slots (a guess that is
 * checked: a bucket holds the last class hashed to it). */
static inline uint32_t mtf_bucket(uint32_t c) {
  return (c * 0x9E3779B1u) >> 24;
}

/* Number of list entries below c (the slots in use are 0..len-1). */
static uint32_t mtf_less(const mtf *m, uint32_t c) {
  uint32_t less = 0;
  for (uint32_t i = 0; i < m->len; i++)
    less += m->cls[i] < c;
  return less;
}

/* The t-th class, in increasing order, among those not in the list. The
 * iteration c <- t + #{list entries <= c} only grows and stops at the
 * answer. */
static uint32_t mtf_absent(const mtf *m, uint32_t t) {
  uint32_t c = t;
  for (;;) {
    uint32_t le = 0;
    for (uint32_t i = 0; i < m->len; i++)
      le += m->cls[i] <= c;
    if (t + le == c)
      return c;
    c = t + le;
  }
}

/* The window's slot j, and the window after its entry i moves to the
 * front (bytes 0..i-1 move up one, byte i becomes byte 0). The coders
 * keep the window in a local variable, a register, and store it back to
 * the list only around the rare moves that need the rest of the list. */
static inline uint32_t win_slot(uint64_t w, uint32_t j) {
  return (uint32_t)(w >> (8 * j)) & 0xFFu;
}

static inline uint64_t win_take(uint64_t w, uint32_t i) {
  return (w & ~upto[i]) | ((w << 8) & upto[i] & ~(uint64_t)0xFF) |
         win_slot(w, i);
}

static inline void mtf_take_window(mtf *m, uint32_t i) {
  m->win = win_take(m->win, i);
}

/* Pushes slot `slot` in at the front; the window's last entry becomes the
 * first cold one, and cold entries [0, shift) move up one. */
static inline void mtf_push(mtf *m, uint32_t slot, uint32_t shift) {
  if (m->len > WINDOW) {
    memmove(m->cold + 1, m->cold, shift);
    m->cold[0] = (uint8_t)(m->win >> 56);
  }
  m->win = m->win << 8 | slot;
}

/* Index of class c in the list, or len if absent, and (when present) the
 * move of that entry to the front. The slot comes from the index (or,
 * when the bucket holds another class, a scan of the slots); in the
 * window, the slot's byte is found for all 8 bytes at once, and the move
 * is computed from that match without its index, so that one class's
 * move waits on the previous one only for a few register operations. */
static uint32_t mtf_find_move(mtf *m, uint32_t c) {
  uint32_t slot = m->bucket[mtf_bucket(c)];
  if (slot >= m->len || m->cls[slot] != c) {
    for (slot = 0; slot < m->len && m->cls[slot] != c; slot++)
      ;
    if (slot == m->len)
      return m->len;
  }
  const uint64_t ones = 0x0101010101010101ull;
  uint64_t x = m->win ^ (slot * ones);
  uint64_t zero = (x - ones) & ~x & (ones << 7);
  if (m->len < WINDOW)
    zero &= upto[m->len - 1];
  if (zero != 0) {
    /* The lowest flagged byte is the match (flags above it may be
     * false); `below` covers it and the bytes before it. */
    uint64_t hit = zero & (0 - zero), below = (hit << 1) - 1;
    m->win =
        (m->win & ~below) | ((m->win << 8) & below & ~(uint64_t)0xFF) | slot;
    return (uint32_t)(((hit >> 7) * 0x0001020304050607ull) >> 56);
  }
  /* Every slot in use is at exactly one place of the list: not in the
   * window, so among the cold bytes. */
  const uint8_t *at = memchr(m->cold, (int)slot, m->len - WINDOW);
  uint32_t i = WINDOW + (uint32_t)(at - m->cold);
  mtf_push(m, slot, i - WINDOW);
  return i;
}

/* Moves class c, found at index i (i >= len: absent), to the front; an
 * absent class grows the list or, when it is full, takes the slot of the
 * least recent entry, which falls off. */
static inline void mtf_move(mtf *m, uint32_t i, uint32_t c) {
  if (i < m->len) {
    if (i < WINDOW)
      mtf_take_window(m, i);
    else /* a cold entry: its gap closes */
      mtf_push(m, m->cold[i - WINDOW], i - WINDOW);
  } else {
    uint32_t slot;
    if (m->len < MTF_CAP) {
      slot = m->len++;
    } else {
      slot = m->cold[MTF_CAP - 1 - WINDOW];
    }
    m->cls[slot] = c;
    m->bucket[mtf_bucket(c)] = (uint8_t)slot;
    mtf_push(m, slot, m->len > WINDOW ? m->len - 1 - WINDOW : 0);
  }
}

/* A cell whose K classes, in rank order, are list entries K-1, ..., 0
 * codes as K bytes K-1 and leaves the list as it was: moving entry K-1 to
 * the front K times rotates the first K entries back into place. That is
 * a cell equal to the previous one (whose classes the list holds in
 * reverse), so the encoder checks for it first. */
static inline int mtf_same_cell(const mtf *m, const uint32_t *cls, uint32_t K) {
  if (m->len < K)
    return 0;
  uint32_t diff = 0;
  for (uint32_t k = 0; k < K; k++)
    diff |= cls[k] ^ mtf_get(m, K - 1 - k);
  return diff == 0;
}

/* The class stream (§6.2), cell by cell in snake order: a cell equal to
 * the previous one is the byte 0; any other cell is K codes, code p + 1
 * for list index (or virtual position) p below 254, or 255 followed by
 * the class index in wc bytes, most significant first. Returns the
 * stream's length. */
static size_t encode_classes(const codec_shape *s, const geom *g,
                             const labelmap *m, uint8_t *raw) {
  const uint32_t K = s->k, W = s->w, H = s->h;
  const uint64_t ones = 0x0101010101010101ull;
  uint8_t *start = raw + g->cs, *out = start;
  mtf list;
  mtf_init(&list);
  uint64_t win = 0; /* list.win, kept in a register */
  for (uint32_t r = 0; r < H; r++)
    for (uint32_t qi = 0; qi < W; qi++) {
      uint32_t q = (r & 1u) ? W - 1 - qi : qi;
      const uint32_t *cls = m->classes + ((size_t)r * W + q) * K;
      if (K <= WINDOW && list.len >= K) {
        uint32_t diff = 0;
        for (uint32_t k = 0; k < K; k++)
          diff |= cls[k] ^ list.cls[win_slot(win, K - 1 - k)];
        if (diff == 0) {
          *out++ = 0;
          continue;
        }
      } else {
        list.win = win;
        if (mtf_same_cell(&list, cls, K)) {
          *out++ = 0;
          continue;
        }
      }
      for (uint32_t k = 0; k < K; k++) {
        uint32_t c = cls[k], p, slot = list.bucket[mtf_bucket(c)];
        uint64_t zero = 0;
        if (slot < list.len && list.cls[slot] == c) {
          uint64_t x = win ^ (slot * ones);
          zero = (x - ones) & ~x & (ones << 7);
          if (list.len < WINDOW)
            zero &= upto[list.len - 1];
        }
        if (zero != 0) { /* the common case: see mtf_find_move */
          uint64_t hit = zero & (0 - zero), below = (hit << 1) - 1;
          win = (win & ~below) | ((win << 8) & below & ~(uint64_t)0xFF) | slot;
          p = (uint32_t)(((hit >> 7) * 0x0001020304050607ull) >> 56);
        } else {
          list.win = win;
          p = mtf_find_move(&list, c);
          if (p == list.len) { /* absent: its virtual position, then in */
            p = list.len + c - mtf_less(&list, c);
            mtf_move(&list, list.len, c);
          }
          win = list.win;
        }
        if (p < CODE_ESCAPE - 1) {
          *out++ = (uint8_t)(p + 1);
        } else {
          *out++ = CODE_ESCAPE;
          for (unsigned b = g->wc; b-- > 0;)
            *out++ = (uint8_t)(c >> (8 * b));
        }
      }
    }
  size_t len = (size_t)(out - start);
  memset(out, 0, g->tail - g->cs - len);
  return len;
}

/* Length of the class stream of a body, by walking it (no more than its
 * area: a body that is not one lmap wrote gets the whole area). */
static size_t stream_length(const codec_shape *s, const geom *g,
                            const uint8_t *raw) {
  const uint8_t *p = raw + g->cs, *end = raw + g->tail;
  for (size_t cell = 0; cell < g->hw && p < end; cell++) {
    if (*p == 0) {
      p++;
      continue;
    }
    for (uint32_t k = 0; k < s->k && p < end; k++)
      p += *p == CODE_ESCAPE ? 1 + g->wc : 1;
  }
  return p < end ? (size_t)(p - (raw + g->cs)) : g->tail - g->cs;
}

static int stream_short(diag *d) {
  return diag_set(d, LMAP_ECORRUPT, "record's class stream ends early");
}

/* Decodes a class stream of `len` bytes, which it must use exactly. */
static int decode_classes(const codec_shape *s, const geom *g,
                          const uint8_t *raw, size_t len, labelmap *out,
                          diag *d) {
  const uint32_t K = s->k, W = s->w, H = s->h, C = s->num_classes;
  const uint8_t *in = raw + g->cs, *end = in + len;
  mtf list;
  mtf_init(&list);
  uint64_t win = 0; /* list.win, kept in a register */
  for (uint32_t r = 0; r < H; r++)
    for (uint32_t qi = 0; qi < W; qi++) {
      uint32_t q = (r & 1u) ? W - 1 - qi : qi;
      uint32_t *cls = out->classes + ((size_t)r * W + q) * K;
      if (in == end)
        return stream_short(d);
      if (*in == 0) { /* the list stays as it is */
        if (list.len < K)
          return diag_set(d, LMAP_ECORRUPT,
                          "record repeats a cell at row %u, column %u "
                          "with no previous cell to repeat",
                          r, q);
        in++;
        if (K <= WINDOW) {
          for (uint32_t k = 0; k < K; k++)
            cls[k] = list.cls[win_slot(win, K - 1 - k)];
        } else {
          list.win = win;
          for (uint32_t k = 0; k < K; k++)
            cls[k] = mtf_get(&list, K - 1 - k);
        }
        continue;
      }
      if ((size_t)(end - in) < K)
        return stream_short(d);
      for (uint32_t k = 0; k < K; k++) {
        uint32_t p = *in++, c;
        if (p - 1 < WINDOW && p - 1 < list.len) { /* nearly every class */
          c = list.cls[win_slot(win, p - 1)];
          win = win_take(win, p - 1);
          cls[k] = c;
          continue;
        }
        list.win = win;
        if (p != 0 && p - 1 < list.len) {
          c = mtf_get(&list, p - 1);
          mtf_move(&list, p - 1, c);
        } else {
          if (p == CODE_ESCAPE) {
            if ((size_t)(end - in) < g->wc + (K - 1 - k))
              return stream_short(d);
            c = 0;
            for (unsigned b = 0; b < g->wc; b++)
              c = c << 8 | *in++;
            /* The encoder escapes only classes absent from the list; a
             * record that escapes a listed one could be read two ways. */
            for (uint32_t i = 0; i < list.len; i++)
              if (list.cls[i] == c)
                return diag_set(d, LMAP_ECORRUPT,
                                "record escapes class %u, already in the "
                                "class list, at row %u, column %u",
                                c, r, q);
          } else if (p != 0) {
            c = mtf_absent(&list, p - 1 - list.len);
          } else {
            return diag_set(d, LMAP_ECORRUPT,
                            "record has a repeat code inside the cell at "
                            "row %u, column %u",
                            r, q);
          }
          if (c >= C)
            return diag_set(d, LMAP_ECORRUPT,
                            "record decodes to class %u at row %u, column "
                            "%u, rank %u, not below num_classes %u",
                            c, r, q, k, C);
          mtf_move(&list, list.len, c);
        }
        win = list.win;
        cls[k] = c;
      }
    }
  if (in != end)
    return diag_set(d, LMAP_ECORRUPT,
                    "record has %zu bytes after its class stream",
                    (size_t)(end - in));
  return 0;
}

/* ---- the transform ---- */

/* Names the first entry of `m` that the encoding cannot store. */
static int range_error(const codec_shape *s, const labelmap *m, diag *d) {
  size_t n = labelmap_entries(m);
  for (size_t i = 0; i < n; i++) {
    uint32_t k = (uint32_t)(i % s->k), cell = (uint32_t)(i / s->k);
    uint32_t r = cell / s->w, q = cell % s->w;
    float v = m->scores[i];
    if (m->classes[i] >= s->num_classes)
      return diag_set(d, LMAP_ERANGE,
                      "class %u at row %u, column %u, rank %u is not "
                      "below num_classes %u",
                      m->classes[i], r, q, k, s->num_classes);
    if ((f32_bits(v) & 0x7F800000u) == 0x7F800000u)
      return diag_set(d, LMAP_ERANGE,
                      "score at row %u, column %u, rank %u is not finite", r, q,
                      k);
    if (s->encoding == CODEC_F16 && (f32_to_f16(v) & 0x7C00u) == 0x7C00u)
      return diag_set(d, LMAP_ERANGE,
                      "score %g at row %u, column %u, rank %u exceeds the "
                      "f16 range (largest 65504); use the f32 encoding",
                      (double)v, r, q, k);
  }
  return diag_set(d, LMAP_EINTERNAL, "codec: range error not found");
}

/* The transform into `raw`; also returns the class stream's length, on
 * which the head's length depends. */
static int transform(const codec_shape *s, const geom *g, work *w,
                     const labelmap *m, uint8_t *raw, size_t *clen, diag *d) {
  if (m->k != s->k || m->h != s->h || m->w != s->w)
    return diag_set(d, LMAP_EINVAL,
                    "map is k=%u %ux%u but the store holds k=%u %ux%u", m->k,
                    m->h, m->w, s->k, s->h, s->w);
  uint32_t worst = 0;
  for (size_t i = 0; i < g->n; i++)
    worst = m->classes[i] > worst ? m->classes[i] : worst;
  if (worst >= s->num_classes || encode_scores(w, g, m, raw) != 0)
    return range_error(s, m, d);
  *clen = encode_classes(s, g, m, raw);
  return 0;
}

static int untransform(const codec_shape *s, const geom *g, work *w,
                       const uint8_t *raw, size_t clen, labelmap *out,
                       diag *d) {
  out->k = s->k;
  out->h = s->h;
  out->w = s->w;
  int rc = decode_classes(s, g, raw, clen, out, d);
  if (rc != 0)
    return rc;
  return decode_scores(w, g, raw, out, d);
}

int codec_transform(const codec_shape *s, const labelmap *m, uint8_t *raw,
                    diag *d) {
  int rc = codec_shape_check(s, d);
  if (rc != 0)
    return rc;
  geom g = geom_of(s);
  work *w = work_new(s);
  if (w == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory for the codec's lanes");
  size_t e;
  rc = transform(s, &g, w, m, raw, &e, d);
  work_free(w);
  return rc;
}

int codec_untransform(const codec_shape *s, const uint8_t *raw, labelmap *out,
                      diag *d) {
  int rc = codec_shape_check(s, d);
  if (rc != 0)
    return rc;
  geom g = geom_of(s);
  work *w = work_new(s);
  if (w == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory for the codec's lanes");
  rc = untransform(s, &g, w, raw, stream_length(s, &g, raw), out, d);
  work_free(w);
  return rc;
}

void codec_round_scores(const codec_shape *s, labelmap *m) {
  if (s->encoding != CODEC_F16)
    return;
  size_t n = labelmap_entries(m);
  for (size_t i = 0; i < n; i++)
    m->scores[i] = f16_to_f32(f32_to_f16(m->scores[i]));
}

/* ---- dictionary training ---- */

/* Total compressed size of the heads of `count` bodies with dictionary
 * `dict` (which may be NULL), or 0 on failure. */
static size_t measure(const codec_shape *s, const uint8_t *raws, size_t count,
                      int level, const void *dict, size_t dict_len,
                      uint8_t *dst, size_t cap) {
  const geom g = geom_of(s);
  size_t total = 0;
  ZSTD_CCtx *cc = ZSTD_createCCtx();
  ZSTD_CDict *cd = NULL;
  if (cc == NULL)
    return 0;
  ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, level);
  ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 1);
  ZSTD_CCtx_setParameter(cc, ZSTD_c_dictIDFlag, 0);
  if (dict_len > 0) {
    cd = ZSTD_createCDict(dict, dict_len, level);
    if (cd == NULL || ZSTD_isError(ZSTD_CCtx_refCDict(cc, cd)))
      goto done;
  }
  for (size_t i = 0; i < count; i++) {
    const uint8_t *raw = raws + i * g.size;
    size_t len =
        ZSTD_compress2(cc, dst, cap, raw, g.cs + stream_length(s, &g, raw));
    if (ZSTD_isError(len)) {
      total = 0;
      goto done;
    }
    total += len;
  }
done:
  ZSTD_freeCDict(cd);
  ZSTD_freeCCtx(cc);
  return total;
}

#define TRAIN_MIN_SAMPLES 8
#define DICT_CAP_MIN 256 /* zstd's smallest dictionary buffer */
#define CONTENT_DICT_MAX (16u << 10)

int codec_train_dict(const codec_shape *s, const uint8_t *raws, size_t count,
                     int level, void *dict, size_t cap, size_t *dict_len,
                     diag *d) {
  int rc = codec_shape_check(s, d);
  if (rc != 0)
    return rc;
  if ((rc = codec_level_check(level, d)) != 0)
    return rc;
  *dict_len = 0;
  if (count < TRAIN_MIN_SAMPLES)
    return diag_set(d, LMAP_EINVAL,
                    "%zu samples are too few to train a dictionary (need %d)",
                    count, TRAIN_MIN_SAMPLES);
  if (cap < DICT_CAP_MIN)
    return diag_set(d, LMAP_EINVAL,
                    "dictionary capacity %zu is below zstd's minimum %d", cap,
                    DICT_CAP_MIN);
  const geom g = geom_of(s);
  /* Train on the first 4/5 and judge on the rest, so a dictionary that only
   * remembers its own samples cannot win. */
  size_t ntrain = count >= 5 * TRAIN_MIN_SAMPLES ? count - count / 5 : count;
  size_t ntest = count - ntrain;
  if (ntrain > 0xFFFFFFFFu)
    ntrain = 0xFFFFFFFFu;

  /* The samples are the heads (the dictionary only serves the head
   * frame), packed end to end as zstd wants them. */
  if (ntrain > SIZE_MAX / g.tail)
    return diag_set(d, LMAP_ENOMEM, "%zu samples are too many to train on",
                    count);
  size_t *sizes = malloc(ntrain * sizeof *sizes);
  uint8_t *heads = malloc(ntrain * g.tail);
  uint8_t *cand = malloc(cap), *best = malloc(cap);
  size_t zcap = ZSTD_compressBound(g.tail);
  uint8_t *zbuf = malloc(zcap);
  if (sizes == NULL || heads == NULL || cand == NULL || best == NULL ||
      zbuf == NULL) {
    rc = diag_set(d, LMAP_ENOMEM, "out of memory training a dictionary");
    goto fail;
  }
  size_t packed = 0;
  for (size_t i = 0; i < ntrain; i++) {
    const uint8_t *raw = raws + i * g.size;
    sizes[i] = g.cs + stream_length(s, &g, raw);
    memcpy(heads + packed, raw, sizes[i]);
    packed += sizes[i];
  }

  /* Candidate 1: entropy tables only. Every record pays a few dozen bytes
   * to describe its own Huffman and FSE tables, and the decoder time to
   * build them; a dictionary's tables, used as they are, remove both.
   * At level 1 this wins on synthetic f16 maps: level 1's match finder
   * gets little from trained content (class codes and score residuals
   * share no long strings across images). From level 14 on, zstd's
   * optimal parser exploits the content dictionary, which then wins. */
  ZDICT_params_t zp;
  memset(&zp, 0, sizeof zp);
  zp.compressionLevel = level;
  size_t best_len = 0, best_cost = (size_t)-1;
  const char *why = "no candidate dictionary could be built";
  size_t r = ZDICT_finalizeDictionary(cand, cap, cand, 0, heads, sizes,
                                      (unsigned)ntrain, zp);
  if (!ZDICT_isError(r)) {
    size_t cost = ntest ? measure(s, raws + ntrain * g.size, ntest, level, cand,
                                  r, zbuf, zcap)
                        : 1;
    if (cost != 0) {
      memcpy(best, cand, r);
      best_len = r;
      best_cost = cost;
    }
  } else {
    why = ZDICT_getErrorName(r);
  }
  /* Candidate 2: a content dictionary, kept only if it measures smaller on
   * the held-out samples (real maps might share more than synthetic ones). */
  if (ntest > 0) {
    size_t csize = cap < CONTENT_DICT_MAX ? cap : CONTENT_DICT_MAX;
    r = ZDICT_trainFromBuffer(cand, csize, heads, sizes, (unsigned)ntrain);
    if (!ZDICT_isError(r)) {
      size_t cost =
          measure(s, raws + ntrain * g.size, ntest, level, cand, r, zbuf, zcap);
      if (cost != 0 && cost < best_cost) {
        memcpy(best, cand, r);
        best_len = r;
        best_cost = cost;
      }
    } else if (best_len == 0) {
      why = ZDICT_getErrorName(r);
    }
  }
  if (best_len == 0) {
    rc = diag_set(d, LMAP_EINVAL,
                  "zstd could not train a dictionary from %zu samples: %s",
                  count, why);
    goto fail;
  }
  memcpy(dict, best, best_len);
  *dict_len = best_len;
  rc = 0;
fail:
  free(sizes);
  free(heads);
  free(cand);
  free(best);
  free(zbuf);
  return rc;
}

/* ---- contexts ---- */

/* Levels below 1 turn off Huffman coding of literals (+470 to +1,000
 * bytes a record, §11); above 19, zstd only allows larger windows, which
 * records of a few KB never use. */
int codec_level_check(int level, diag *d) {
  if (level < CODEC_LEVEL_MIN || level > CODEC_LEVEL_MAX)
    return diag_set(d, LMAP_EINVAL, "zstd level %d is outside %d..%d", level,
                    CODEC_LEVEL_MIN, CODEC_LEVEL_MAX);
  return 0;
}

struct codec_ctx {
  codec_shape shape;
  geom g;
  int level;
  void *dict; /* owned copy, NULL when dict_len == 0 */
  size_t dict_len;
  /* Created on the first encode: readers never pay for them. */
  ZSTD_CCtx *head_cctx, *tail_cctx;
  ZSTD_CDict *cdict;
  ZSTD_DCtx *dctx;
  ZSTD_DDict *ddict;
  work *work; /* lanes and one body */
};

void codec_ctx_free(codec_ctx *c) {
  if (c == NULL)
    return;
  ZSTD_freeCDict(c->cdict);
  ZSTD_freeCCtx(c->head_cctx);
  ZSTD_freeCCtx(c->tail_cctx);
  ZSTD_freeDDict(c->ddict);
  ZSTD_freeDCtx(c->dctx);
  free(c->dict);
  work_free(c->work);
  free(c);
}

int codec_ctx_new(const codec_shape *s, const void *dict, size_t dict_len,
                  int level, codec_ctx **out, diag *d) {
  *out = NULL;
  int rc = codec_shape_check(s, d);
  if (rc != 0)
    return rc;
  if ((rc = codec_level_check(level, d)) != 0)
    return rc;
  if (dict_len > 0) {
    const uint8_t *b = dict;
    /* Only full zstd dictionaries (magic, entropy tables): without the
     * magic zstd would silently take any bytes as raw content. */
    if (dict == NULL || dict_len < 8 || b[0] != 0x37 || b[1] != 0xA4 ||
        b[2] != 0x30 || b[3] != 0xEC)
      return diag_set(d, LMAP_EINVAL,
                      "dictionary (%zu bytes) does not start with the zstd "
                      "dictionary magic",
                      dict_len);
  }
  codec_ctx *c = calloc(1, sizeof *c);
  if (c == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory for a codec context");
  c->shape = *s;
  c->g = geom_of(s);
  c->level = level;
  c->work = work_new(s);
  c->dctx = ZSTD_createDCtx();
  if (c->work == NULL || c->dctx == NULL) {
    rc = diag_set(d, LMAP_ENOMEM, "out of memory for a codec context");
    goto fail;
  }
  if (dict_len > 0) {
    c->dict = malloc(dict_len);
    if (c->dict == NULL) {
      rc = diag_set(d, LMAP_ENOMEM, "out of memory for the dictionary");
      goto fail;
    }
    memcpy(c->dict, dict, dict_len);
    c->dict_len = dict_len;
    c->ddict = ZSTD_createDDict(c->dict, c->dict_len);
    /* Referenced for both frames: the tail was compressed without it, but
     * a frame that never asks for the dictionary's tables or content
     * decodes the same either way, and a dictionary that stays referenced
     * stays warm (zstd switches to a slower prefetching decoder for a
     * dictionary it sees as newly loaded, which alternating would cause). */
    if (c->ddict == NULL ||
        ZSTD_isError(ZSTD_DCtx_refDDict(c->dctx, c->ddict))) {
      rc = diag_set(d, LMAP_EINVAL,
                    "zstd rejects the dictionary (%zu bytes): its entropy "
                    "tables are corrupt",
                    dict_len);
      goto fail;
    }
  }
  *out = c;
  return 0;
fail:
  codec_ctx_free(c);
  return rc;
}

size_t codec_record_bound(const codec_ctx *c) {
  return 1 + ZSTD_compressBound(c->g.tail) +
         ZSTD_compressBound(c->g.size - c->g.tail);
}

/* Sets the frame parameters every record's frames carry: the checksum is
 * the integrity check, the content size lets the decoder reject a
 * wrong-shape record before decompressing, and the dictionary is the
 * store's, so its id would only cost 4 bytes. */
static size_t frame_params(ZSTD_CCtx *cc, int level) {
  size_t r = ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, level);
  if (!ZSTD_isError(r))
    r = ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 1);
  if (!ZSTD_isError(r))
    r = ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 1);
  if (!ZSTD_isError(r))
    r = ZSTD_CCtx_setParameter(cc, ZSTD_c_dictIDFlag, 0);
  return r;
}

static int ensure_cctx(codec_ctx *c, diag *d) {
  if (c->head_cctx != NULL && c->tail_cctx != NULL)
    return 0;
  if (c->head_cctx == NULL)
    c->head_cctx = ZSTD_createCCtx();
  if (c->tail_cctx == NULL)
    c->tail_cctx = ZSTD_createCCtx();
  if (c->head_cctx == NULL || c->tail_cctx == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory for a zstd context");
  size_t r = frame_params(c->head_cctx, c->level);
  if (!ZSTD_isError(r))
    r = frame_params(c->tail_cctx, TAIL_LEVEL);
  if (!ZSTD_isError(r) && c->dict_len > 0) {
    /* Prepared once: a referenced dictionary stays for every frame. */
    if (c->cdict == NULL)
      c->cdict = ZSTD_createCDict(c->dict, c->dict_len, c->level);
    if (c->cdict == NULL)
      return diag_set(d, LMAP_EINTERNAL,
                      "zstd cannot build a compression dictionary");
    r = ZSTD_CCtx_refCDict(c->head_cctx, c->cdict);
  }
  if (ZSTD_isError(r)) {
    ZSTD_freeCCtx(c->head_cctx);
    c->head_cctx = NULL; /* so that the next call starts over */
    return diag_set(d, LMAP_EINTERNAL, "zstd: %s", ZSTD_getErrorName(r));
  }
  return 0;
}

/* Compresses a body whose class stream is `clen` bytes into a record. */
static int compress(codec_ctx *c, const uint8_t *raw, size_t clen, uint8_t *dst,
                    size_t cap, size_t *len, diag *d) {
  int rc = ensure_cctx(c, d);
  if (rc != 0)
    return rc;
  const geom *g = &c->g;
  if (cap < 1)
    return diag_set(d, LMAP_EINTERNAL, "record buffer of %zu bytes", cap);
  size_t zh = ZSTD_compress2(c->head_cctx, dst + 1, cap - 1, raw, g->cs + clen);
  if (ZSTD_isError(zh))
    return diag_set(d, LMAP_EINTERNAL, "zstd: compression failed: %s",
                    ZSTD_getErrorName(zh));
  size_t zt = ZSTD_compress2(c->tail_cctx, dst + 1 + zh, cap - 1 - zh,
                             raw + g->tail, g->size - g->tail);
  if (ZSTD_isError(zt))
    return diag_set(d, LMAP_EINTERNAL, "zstd: compression failed: %s",
                    ZSTD_getErrorName(zt));
  dst[0] = RECORD_VERSION;
  *len = 1 + zh + zt;
  return 0;
}

int codec_compress_raw(codec_ctx *c, const uint8_t *raw, uint8_t *dst,
                       size_t cap, size_t *len, diag *d) {
  return compress(c, raw, stream_length(&c->shape, &c->g, raw), dst, cap, len,
                  d);
}

int codec_encode(codec_ctx *c, const labelmap *m, uint8_t *dst, size_t cap,
                 size_t *len, diag *d) {
  size_t e;
  int rc = transform(&c->shape, &c->g, c->work, m, c->work->raw, &e, d);
  if (rc != 0)
    return rc;
  return compress(c, c->work->raw, e, dst, cap, len, d);
}

/* Checks one frame's header: it states its content size, which is
 * returned in *content, and has a checksum; and finds its end. */
static int frame_check(const uint8_t *f, size_t flen, const char *which,
                       unsigned long long *content, size_t *fsize, diag *d) {
  unsigned long long cs = ZSTD_getFrameContentSize(f, flen);
  if (cs == ZSTD_CONTENTSIZE_ERROR)
    return diag_set(d, LMAP_ECORRUPT,
                    "record's %s is not a zstd frame (bad magic or header, "
                    "or truncated)",
                    which);
  if (cs == ZSTD_CONTENTSIZE_UNKNOWN)
    return diag_set(d, LMAP_ECORRUPT,
                    "record's %s frame does not state its content size", which);
  /* Frame header descriptor, bit 2: Content_Checksum_flag (RFC 8878); a
   * header that stated its content size is at least 6 bytes long. */
  if ((f[4] & 0x04u) == 0)
    return diag_set(d, LMAP_ECORRUPT, "record's %s frame has no checksum",
                    which);
  size_t fs = ZSTD_findFrameCompressedSize(f, flen);
  if (ZSTD_isError(fs))
    return diag_set(d, LMAP_ECORRUPT,
                    "record's %s frame is truncated or malformed: %s", which,
                    ZSTD_getErrorName(fs));
  *content = cs;
  *fsize = fs;
  return 0;
}

int codec_decode(codec_ctx *c, const uint8_t *rec, size_t len, labelmap *out,
                 diag *d) {
  const geom *g = &c->g;
  if (len < 2)
    return diag_set(d, LMAP_ECORRUPT, "record is %zu bytes, too short", len);
  if (rec[0] != RECORD_VERSION)
    return diag_set(d, LMAP_ECORRUPT,
                    "record format version %u is not supported (this lmap "
                    "reads %u)",
                    rec[0], RECORD_VERSION);
  if (len > codec_record_bound(c))
    return diag_set(d, LMAP_ECORRUPT,
                    "record is %zu bytes, more than any record of this shape "
                    "(%zu)",
                    len, codec_record_bound(c));
  const uint8_t *f = rec + 1;
  size_t flen = len - 1, hsize, tsize;
  unsigned long long hc, tc;
  int rc = frame_check(f, flen, "head", &hc, &hsize, d);
  if (rc != 0)
    return rc;
  if (hc < g->cs + g->hw || hc > g->tail)
    return diag_set(d, LMAP_ECORRUPT,
                    "record's head holds %llu bytes; this store's shape "
                    "needs %zu to %zu",
                    hc, g->cs + g->hw, g->tail);
  if ((rc = frame_check(f + hsize, flen - hsize, "tail", &tc, &tsize, d)) != 0)
    return rc;
  if (tc != g->size - g->tail)
    return diag_set(d, LMAP_ECORRUPT,
                    "record's tail holds %llu bytes; this store's shape "
                    "needs %zu",
                    tc, g->size - g->tail);
  if (hsize + tsize != flen)
    return diag_set(d, LMAP_ECORRUPT,
                    "record has %zu bytes after its zstd frames",
                    flen - hsize - tsize);
  uint8_t *raw = c->work->raw;
  size_t r = ZSTD_decompressDCtx(c->dctx, raw, hc, f, hsize);
  if (!ZSTD_isError(r) && r != hc)
    return diag_set(d, LMAP_ECORRUPT,
                    "record's head decompresses to %zu bytes, expected %llu", r,
                    hc);
  if (!ZSTD_isError(r))
    r = ZSTD_decompressDCtx(c->dctx, raw + g->tail, tc, f + hsize, tsize);
  if (ZSTD_isError(r))
    return diag_set(d, LMAP_ECORRUPT, "record does not decompress: %s",
                    ZSTD_getErrorName(r));
  if (r != tc)
    return diag_set(d, LMAP_ECORRUPT,
                    "record's tail decompresses to %zu bytes, expected %llu", r,
                    tc);
  return untransform(&c->shape, g, c->work, raw, (size_t)hc - g->cs, out, d);
}
