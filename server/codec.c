/*
 * codec: one label map <-> the bytes of one store record (contract in
 * codec.h, byte layout in docs/STORE_FORMAT.md). The only module that
 * includes zstd.h and zdict.h.
 *
 * A record is a version byte followed by one zstd frame (content size and
 * content checksum present) whose content, the "body", is the map after a
 * domain transform that turns what neighbouring cells share into small
 * numbers:
 *   - class indices become move-to-front positions in a short list of the
 *     image's recent classes, walked in snake order so that the previous
 *     cell is always a spatial neighbour: an unchanged cell codes as a run
 *     of the same small byte; classes past position 254 are escaped into a
 *     separate list of plain indices;
 *   - scores are rounded to the encoding, predicted from the left and upper
 *     cells' scores of the same rank (and capped by the cell's previous
 *     rank, since ranks are sorted), and stored as zigzagged residuals
 *     split into byte planes, most significant plane first.
 * Each variant was kept because it measured smaller on synthetic ImageNet
 * shaped maps (see docs/STORE_FORMAT.md, "Why this transform").
 *
 * Invariants: every valid map has exactly one body of codec_raw_size()
 * bytes, and decoding it gives the map back bit for bit (f16: the rounded
 * map); every prediction is computed from values the
 * decoder has already reconstructed, in IEEE binary32 arithmetic, so
 * encoder and decoder agree bit for bit. codec_transform/untransform use
 * no memory but the caller's. Decoding never trusts the record: sizes,
 * version, checksum and every decoded class and score are checked.
 */
#include "codec.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <zdict.h>
#include <zstd.h>

#include "f16.h"

/* Score predictions must round identically on every machine that reads a
 * store; x87 excess precision (FLT_EVAL_METHOD 2) would change them. */
#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "codec.c needs FLT_EVAL_METHOD == 0 (SSE2 or another IEEE FPU)"
#endif

#define RECORD_VERSION 1u
/* Records above this size get a second attempt at LEVEL_RETRY. A store
 * keeps a value of up to about 2,015 bytes (with an ImageNet-length id)
 * inside a shared 4 KiB LMDB leaf page and moves a larger one to a page
 * of its own, which doubles its cost on disk. Measured on synthetic
 * ImageNet-shaped maps: 20% of level-1 records exceed 2,000 bytes, 6%
 * after the retry, for about 50 us more per record on average. Records
 * far above the goal (f32 ones) are not retried. */
#define RECORD_GOAL 2000u
#define LEVEL_RETRY 12
#define MTF_CAP 64u      /* classes remembered by the move-to-front list */
#define CODE_ESCAPE 255u /* class byte meaning "next escape entry" */

/* ---- shape ---- */

int codec_shape_check(const codec_shape *s, diag *d) {
  if (s->k == 0 || s->k > LABELMAP_MAX_K)
    return diag_field(d, LMAP_EINVAL, "topk", "topk %u is outside 1..%u",
                      s->k, LABELMAP_MAX_K);
  if (s->h == 0 || s->h > LABELMAP_MAX_SIDE)
    return diag_field(d, LMAP_EINVAL, "grid_h", "grid_h %u is outside 1..%u",
                      s->h, LABELMAP_MAX_SIDE);
  if (s->w == 0 || s->w > LABELMAP_MAX_SIDE)
    return diag_field(d, LMAP_EINVAL, "grid_w", "grid_w %u is outside 1..%u",
                      s->w, LABELMAP_MAX_SIDE);
  if ((uint64_t)s->k * s->h * s->w > LABELMAP_MAX_ENTRIES)
    return diag_field(d, LMAP_EINVAL, "topk",
                      "topk*grid_h*grid_w = %u*%u*%u exceeds %u entries",
                      s->k, s->h, s->w, LABELMAP_MAX_ENTRIES);
  if (s->num_classes == 0 || s->num_classes > LABELMAP_MAX_CLASSES)
    return diag_field(d, LMAP_EINVAL, "num_classes",
                      "num_classes %u is outside 1..%u", s->num_classes,
                      LABELMAP_MAX_CLASSES);
  if (s->encoding != CODEC_F16 && s->encoding != CODEC_F32)
    return diag_field(d, LMAP_EINVAL, "encoding",
                      "encoding %d is neither f16 nor f32", (int)s->encoding);
  return 0;
}

/* Body geometry: n entries; one class-code plane, `wc` escape planes,
 * `ws` score planes, each plane n bytes. */
typedef struct geom {
  size_t n, hw;
  unsigned wc, ws;
} geom;

static geom geom_of(const codec_shape *s) {
  geom g;
  g.hw = (size_t)s->h * s->w;
  g.n = g.hw * s->k;
  g.wc = s->num_classes <= 65536u ? 2 : 4;
  g.ws = s->encoding == CODEC_F16 ? 2 : 4;
  return g;
}

size_t codec_raw_size(const codec_shape *s) {
  geom g = geom_of(s);
  return g.n * (1 + g.wc + g.ws);
}

/* ---- plane access ---- */

static inline void put_planes(uint8_t *base, size_t n, unsigned width,
                              size_t j, uint32_t v) {
  if (width == 2) {
    base[j] = (uint8_t)(v >> 8);
    base[n + j] = (uint8_t)v;
    return;
  }
  for (unsigned p = 0; p < width; p++)
    base[p * n + j] = (uint8_t)(v >> (8 * (width - 1 - p)));
}

static inline uint32_t get_planes(const uint8_t *base, size_t n,
                                  unsigned width, size_t j) {
  if (width == 2)
    return (uint32_t)base[j] << 8 | base[n + j];
  uint32_t v = 0;
  for (unsigned p = 0; p < width; p++)
    v = (v << 8) | base[p * n + j];
  return v;
}

/* ---- scores: ordered integers, prediction, zigzag ---- */

/* Maps IEEE bits to an unsigned integer with the same order as the values
 * (negative values reversed below positive ones), so that "close in value"
 * becomes "close as integers" and the rank order becomes integer order. */
static inline uint32_t ord_bits(uint32_t b, unsigned bits) {
  uint32_t sign = 1u << (bits - 1);
  uint32_t mask = bits == 32 ? 0xFFFFFFFFu : (1u << bits) - 1;
  return (b & sign) ? (~b & mask) : (b | sign);
}

static inline uint32_t unord_bits(uint32_t o, unsigned bits) {
  uint32_t sign = 1u << (bits - 1);
  uint32_t mask = bits == 32 ? 0xFFFFFFFFu : (1u << bits) - 1;
  return (o & sign) ? (o & ~sign) : (~o & mask);
}

static uint32_t f32_bits(float f) {
  uint32_t b;
  memcpy(&b, &f, sizeof b);
  return b;
}

static float bits_f32(uint32_t b) {
  float f;
  memcpy(&f, &b, sizeof f);
  return f;
}

/* f32_to_f16 (round to nearest, ties to even) without a data-dependent
 * branch for values that become normal halves: the rounding decision of
 * f16.h's version is a coin flip the CPU mispredicts, and the decoder does
 * one conversion per entry. Same results; other values go to f16.h. */
static inline uint16_t f16_round(float v) {
  uint32_t x = f32_bits(v), a = x & 0x7FFFFFFFu;
  if (a < 0x38800000u || a >= 0x477FF000u) /* below 2^-14, or rounds to inf */
    return f32_to_f16(v);
  uint32_t h = (a - 0x38000000u) >> 13, rem = a & 0x1FFFu;
  h += (uint32_t)(rem > 0x1000u) | ((uint32_t)(rem == 0x1000u) & h);
  return (uint16_t)((x >> 16 & 0x8000u) | h);
}

/* Stored bits of a value the encoding can represent exactly. */
static inline uint32_t enc_bits(codec_encoding e, float v) {
  return e == CODEC_F16 ? f16_round(v) : f32_bits(v);
}

static inline float dec_bits(codec_encoding e, uint32_t b) {
  if (e != CODEC_F16)
    return bits_f32(b);
  uint32_t x = b & 0x7FFFu;
  /* Normal halves rebias their exponent by a single add; zeros, subnormals
   * and non-finite values take f16.h's general path. */
  if (x >= 0x0400u && x < 0x7C00u)
    return bits_f32((b & 0x8000u) << 16 | (x + ((127u - 15u) << 10)) << 13);
  return f16_to_f32((uint16_t)b);
}

/* The predicted ordered value of entry (r, q, k) given the stored values of
 * its left and upper neighbours at the same rank (`left`, `up`; `has_*`
 * says whether they exist) and the ordered value of rank k-1 of the same
 * cell (`prev`, used when k > 0). Both sides of the codec call this with
 * identical inputs. */
static inline uint32_t predict(codec_encoding e, unsigned bits, int has_left,
                        float left, int has_up, float up, int has_prev,
                        uint32_t prev) {
  float pf;
  if (has_left && has_up)
    pf = (left + up) * 0.5f;
  else if (has_left)
    pf = left;
  else if (has_up)
    pf = up;
  else
    pf = 0.0f;
  uint32_t po = ord_bits(enc_bits(e, pf), bits);
  /* Scores are sorted within a cell: rank k cannot exceed rank k-1. */
  if (has_prev && po > prev)
    po = prev;
  return po;
}

static inline uint32_t zigzag(uint32_t o, uint32_t po, unsigned bits) {
  uint32_t mask = bits == 32 ? 0xFFFFFFFFu : (1u << bits) - 1;
  uint32_t d = (o - po) & mask; /* residual modulo 2^bits */
  uint32_t neg = (d >> (bits - 1)) & 1u;
  return ((d << 1) ^ (neg ? mask : 0)) & mask;
}

static inline uint32_t unzigzag(uint32_t z, uint32_t po, unsigned bits) {
  uint32_t mask = bits == 32 ? 0xFFFFFFFFu : (1u << bits) - 1;
  uint32_t d = (z >> 1) ^ ((z & 1u) ? mask : 0);
  return (po + d) & mask;
}

static inline int is_finite_bits(codec_encoding e, uint32_t b) {
  if (e == CODEC_F16)
    return (b & 0x7C00u) != 0x7C00u;
  return (b & 0x7F800000u) != 0x7F800000u;
}

/* ---- classes: move-to-front list ---- */

typedef struct mtf {
  uint32_t cls[MTF_CAP];
  uint32_t len;
} mtf;

/* Index of class c in the list, or len if absent. */
static inline uint32_t mtf_find(const mtf *m, uint32_t c) {
  uint32_t i = 0;
  while (i < m->len && m->cls[i] != c)
    i++;
  return i;
}

/* Position of an absent class c in the virtual list "recent classes, then
 * every other class in increasing order". Always < num_classes. */
static uint32_t mtf_virtual_pos(const mtf *m, uint32_t c) {
  uint32_t less = 0;
  for (uint32_t i = 0; i < m->len; i++)
    less += m->cls[i] < c;
  return m->len + (c - less);
}

/* Inverse of mtf_virtual_pos for a position p >= len: the (p-len)-th
 * class, in increasing order, among those not in the list. The iteration
 * c <- t + #{list entries <= c} only grows and stops at the answer. */
static uint32_t mtf_class_at(const mtf *m, uint32_t p) {
  uint32_t t = p - m->len, c = t;
  for (;;) {
    uint32_t le = 0;
    for (uint32_t i = 0; i < m->len; i++)
      le += m->cls[i] <= c;
    if (t + le == c)
      return c;
    c = t + le;
  }
}

/* Moves class c, found at index i (i == len: absent), to the front; an
 * absent class grows the list or replaces the least recent one. */
static inline void mtf_move(mtf *m, uint32_t i, uint32_t c) {
  if (i == m->len) {
    if (m->len < MTF_CAP)
      m->len++;
    i = m->len - 1;
  }
  /* A rotation rather than a shifting loop, which the compiler would turn
   * into a memmove call: i is usually tiny, and a call costs more than the
   * few moves. */
  uint32_t carry = c;
  for (uint32_t j = 0; j <= i; j++) {
    uint32_t t = m->cls[j];
    m->cls[j] = carry;
    carry = t;
  }
}

/* ---- the transform ---- */

int codec_transform(const codec_shape *s, const labelmap *m, uint8_t *raw,
                    diag *d) {
  if (m->k != s->k || m->h != s->h || m->w != s->w)
    return diag_set(d, LMAP_EINVAL,
                    "map is k=%u %ux%u but the store holds k=%u %ux%u", m->k,
                    m->h, m->w, s->k, s->h, s->w);
  const geom g = geom_of(s);
  const uint32_t K = s->k, W = s->w, H = s->h;
  const codec_encoding e = s->encoding;
  const unsigned bits = g.ws * 8;
  uint8_t *codes = raw, *esc = raw + g.n, *sp = raw + g.n * (1 + g.wc);

  /* Pass 1: check and round every entry; keep the stored bits in the score
   * planes, where pass 3 turns them into residuals in place. */
  for (uint32_t r = 0; r < H; r++)
    for (uint32_t q = 0; q < W; q++)
      for (uint32_t k = 0; k < K; k++) {
        size_t i = ((size_t)r * W + q) * K + k;
        float v = m->scores[i];
        if (m->classes[i] >= s->num_classes)
          return diag_set(d, LMAP_ERANGE,
                          "class %u at row %u, column %u, rank %u is not "
                          "below num_classes %u",
                          m->classes[i], r, q, k, s->num_classes);
        if (!isfinite(v))
          return diag_set(d, LMAP_ERANGE,
                          "score at row %u, column %u, rank %u is not finite",
                          r, q, k);
        uint32_t b = enc_bits(e, v);
        if (!is_finite_bits(e, b)) /* only f16 overflow gets here */
          return diag_set(d, LMAP_ERANGE,
                          "score %g at row %u, column %u, rank %u exceeds the "
                          "f16 range (largest 65504); use the f32 encoding",
                          (double)v, r, q, k);
        put_planes(sp, g.n, g.ws, (size_t)k * g.hw + (size_t)r * W + q, b);
      }

  /* Pass 2: class codes, in snake order so consecutive cells touch. */
  mtf list = {{0}, 0};
  size_t nesc = 0;
  memset(esc, 0, g.n * g.wc);
  for (uint32_t r = 0; r < H; r++)
    for (uint32_t qi = 0; qi < W; qi++) {
      uint32_t q = (r & 1u) ? W - 1 - qi : qi;
      size_t cell = (size_t)r * W + q;
      for (uint32_t k = 0; k < K; k++) {
        uint32_t c = m->classes[cell * K + k];
        uint32_t i = mtf_find(&list, c);
        uint32_t p = i < list.len ? i : mtf_virtual_pos(&list, c);
        if (p >= CODE_ESCAPE) {
          p = CODE_ESCAPE;
          put_planes(esc, g.n, g.wc, nesc++, c);
        }
        codes[(size_t)k * g.hw + cell] = (uint8_t)p;
        mtf_move(&list, i, c);
      }
    }

  /* Pass 3: residuals, last entry first, so that the left, upper and
   * previous-rank entries each residual is predicted from still hold their
   * stored bits. */
  for (uint32_t r = H; r-- > 0;)
    for (uint32_t q = W; q-- > 0;)
      for (uint32_t k = K; k-- > 0;) {
        size_t cell = (size_t)r * W + q, j = (size_t)k * g.hw + cell;
        uint32_t b = get_planes(sp, g.n, g.ws, j);
        float left = 0.0f, up = 0.0f;
        uint32_t prev = 0;
        if (q > 0)
          left = dec_bits(e, get_planes(sp, g.n, g.ws, j - 1));
        if (r > 0)
          up = dec_bits(e, get_planes(sp, g.n, g.ws, j - W));
        if (k > 0)
          prev = ord_bits(get_planes(sp, g.n, g.ws, j - g.hw), bits);
        uint32_t po = predict(e, bits, q > 0, left, r > 0, up, k > 0, prev);
        put_planes(sp, g.n, g.ws, j, zigzag(ord_bits(b, bits), po, bits));
      }
  return 0;
}

int codec_untransform(const codec_shape *s, const uint8_t *raw,
                      labelmap *out, diag *d) {
  const geom g = geom_of(s);
  const uint32_t K = s->k, W = s->w, H = s->h, C = s->num_classes;
  const codec_encoding e = s->encoding;
  const unsigned bits = g.ws * 8;
  const uint8_t *codes = raw, *esc = raw + g.n, *sp = raw + g.n * (1 + g.wc);
  out->k = K;
  out->h = H;
  out->w = W;

  mtf list = {{0}, 0};
  size_t nesc = 0;
  for (uint32_t r = 0; r < H; r++)
    for (uint32_t qi = 0; qi < W; qi++) {
      uint32_t q = (r & 1u) ? W - 1 - qi : qi;
      size_t cell = (size_t)r * W + q;
      for (uint32_t k = 0; k < K; k++) {
        uint32_t p = codes[(size_t)k * g.hw + cell], c, i;
        if (p < list.len) {
          c = list.cls[p];
          i = p;
        } else {
          c = p == CODE_ESCAPE ? get_planes(esc, g.n, g.wc, nesc++)
                               : mtf_class_at(&list, p);
          i = mtf_find(&list, c);
        }
        if (c >= C)
          return diag_set(d, LMAP_ECORRUPT,
                          "record decodes to class %u at row %u, column %u, "
                          "rank %u, not below num_classes %u",
                          c, r, q, k, C);
        out->classes[cell * K + k] = c;
        mtf_move(&list, i, c);
      }
    }

  for (uint32_t r = 0; r < H; r++)
    for (uint32_t q = 0; q < W; q++) {
      size_t cell = (size_t)r * W + q;
      uint32_t prev = 0;
      for (uint32_t k = 0; k < K; k++) {
        size_t i = cell * K + k;
        float left = q > 0 ? out->scores[i - K] : 0.0f;
        float up = r > 0 ? out->scores[i - (size_t)W * K] : 0.0f;
        uint32_t po = predict(e, bits, q > 0, left, r > 0, up, k > 0, prev);
        uint32_t z = get_planes(sp, g.n, g.ws, (size_t)k * g.hw + cell);
        uint32_t o = unzigzag(z, po, bits);
        uint32_t b = unord_bits(o, bits);
        if (!is_finite_bits(e, b))
          return diag_set(d, LMAP_ECORRUPT,
                          "record decodes to a non-finite score at row %u, "
                          "column %u, rank %u",
                          r, q, k);
        out->scores[i] = dec_bits(e, b);
        prev = o;
      }
    }
  return 0;
}

void codec_round_scores(const codec_shape *s, labelmap *m) {
  if (s->encoding != CODEC_F16)
    return;
  size_t n = labelmap_entries(m);
  for (size_t i = 0; i < n; i++)
    m->scores[i] = f16_to_f32(f32_to_f16(m->scores[i]));
}

/* ---- zstd frames ---- */

/* The body is compressed as a few zstd blocks so that each gets entropy
 * tables fitted to bytes of one kind: block 1 holds the class codes, the
 * escapes and the most significant score plane (all small, skewed values);
 * every further score plane (close to uniform) gets a block of its own.
 * Measured smaller than one block or one block per plane. Sets `len[i]` for
 * up to 4 segments and returns their number. */
static int body_segments(const codec_shape *s, size_t len[4]) {
  geom g = geom_of(s);
  int nseg = 0;
  len[nseg++] = g.n * (1 + g.wc + 1);
  for (unsigned p = 1; p < g.ws; p++)
    len[nseg++] = g.n;
  return nseg;
}

static int compress_body(ZSTD_CCtx *cc, const codec_shape *s,
                         const uint8_t *raw, uint8_t *dst, size_t cap,
                         size_t *len, diag *d) {
  size_t seg[4];
  int nseg = body_segments(s, seg);
  size_t zr = ZSTD_CCtx_reset(cc, ZSTD_reset_session_only);
  if (!ZSTD_isError(zr))
    zr = ZSTD_CCtx_setPledgedSrcSize(cc, codec_raw_size(s));
  if (ZSTD_isError(zr))
    return diag_set(d, LMAP_EINTERNAL, "zstd: cannot start a frame: %s",
                    ZSTD_getErrorName(zr));
  ZSTD_outBuffer out = {dst, cap, 0};
  const uint8_t *p = raw;
  for (int i = 0; i < nseg; i++) {
    ZSTD_inBuffer in = {p, seg[i], 0};
    ZSTD_EndDirective mode = i + 1 == nseg ? ZSTD_e_end : ZSTD_e_flush;
    for (;;) {
      size_t rem = ZSTD_compressStream2(cc, &out, &in, mode);
      if (ZSTD_isError(rem))
        return diag_set(d, LMAP_EINTERNAL, "zstd: compression failed: %s",
                        ZSTD_getErrorName(rem));
      if (rem == 0 && in.pos == in.size)
        break;
      if (out.pos == out.size)
        return diag_set(d, LMAP_EINTERNAL,
                        "zstd: record does not fit in %zu bytes", cap);
    }
    p += seg[i];
  }
  *len = out.pos;
  return 0;
}

/* ---- dictionary training ---- */

/* Total compressed size of `count` bodies with dictionary `dict` (which may
 * be NULL), or 0 on failure. */
static size_t measure(const codec_shape *s, const uint8_t *raws, size_t count,
                      const void *dict, size_t dict_len, uint8_t *dst,
                      size_t cap) {
  size_t raw_size = codec_raw_size(s), total = 0;
  ZSTD_CCtx *cc = ZSTD_createCCtx();
  ZSTD_CDict *cd = NULL;
  if (cc == NULL)
    return 0;
  ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, CODEC_LEVEL_DEFAULT);
  ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 1);
  ZSTD_CCtx_setParameter(cc, ZSTD_c_dictIDFlag, 0);
  if (dict_len > 0) {
    cd = ZSTD_createCDict(dict, dict_len, CODEC_LEVEL_DEFAULT);
    if (cd == NULL || ZSTD_isError(ZSTD_CCtx_refCDict(cc, cd))) {
      total = 0;
      goto done;
    }
  }
  for (size_t i = 0; i < count; i++) {
    size_t len;
    if (compress_body(cc, s, raws + i * raw_size, dst, cap, &len, NULL) != 0) {
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
                     void *dict, size_t cap, size_t *dict_len, diag *d) {
  int rc = codec_shape_check(s, d);
  if (rc != 0)
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
  const size_t raw_size = codec_raw_size(s);
  const unsigned planes = 1 + g.wc + g.ws;
  /* Train on the first 4/5 and judge on the rest, so a dictionary that only
   * remembers its own samples cannot win. */
  size_t ntrain = count >= 5 * TRAIN_MIN_SAMPLES ? count - count / 5 : count;
  size_t ntest = count - ntrain;
  if (ntrain * planes > 0xFFFFFFFFu)
    ntrain = 0xFFFFFFFFu / planes;

  size_t *sizes = malloc(ntrain * planes * sizeof *sizes);
  uint8_t *cand = malloc(cap), *best = malloc(cap);
  size_t zcap = ZSTD_compressBound(raw_size) + 64;
  uint8_t *zbuf = malloc(zcap);
  if (sizes == NULL || cand == NULL || best == NULL || zbuf == NULL) {
    rc = diag_set(d, LMAP_ENOMEM, "out of memory training a dictionary");
    goto fail;
  }
  /* One sample per plane: the dictionary's entropy tables then describe
   * planes, which is what zstd's blocks hold. */
  for (size_t i = 0; i < ntrain * planes; i++)
    sizes[i] = g.n;

  /* Candidate 1: entropy tables only. Every record pays a few dozen bytes
   * per block to describe its own Huffman and FSE tables; a dictionary's
   * tables remove that. Measured: content trained by ZDICT_trainFromBuffer
   * (4-64 KiB) made synthetic records larger, because class codes and score
   * residuals share no long strings across images. */
  ZDICT_params_t zp;
  memset(&zp, 0, sizeof zp);
  zp.compressionLevel = CODEC_LEVEL_DEFAULT;
  size_t best_len = 0, best_cost = (size_t)-1;
  const char *why = "no candidate dictionary could be built";
  size_t r = ZDICT_finalizeDictionary(cand, cap, cand, 0, raws, sizes,
                                      (unsigned)(ntrain * planes), zp);
  if (!ZDICT_isError(r)) {
    size_t cost = ntest ? measure(s, raws + ntrain * raw_size, ntest, cand, r,
                                  zbuf, zcap)
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
    r = ZDICT_trainFromBuffer(cand, csize, raws, sizes,
                              (unsigned)(ntrain * planes));
    if (!ZDICT_isError(r)) {
      size_t cost =
          measure(s, raws + ntrain * raw_size, ntest, cand, r, zbuf, zcap);
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
  free(cand);
  free(best);
  free(zbuf);
  return rc;
}

/* ---- contexts ---- */

struct codec_ctx {
  codec_shape shape;
  size_t raw_size;
  int level;
  void *dict; /* owned copy, NULL when dict_len == 0 */
  size_t dict_len;
  ZSTD_CCtx *cctx; /* created on the first encode: readers never pay */
  ZSTD_CDict *cdict, *cdict_retry;
  uint8_t *spare; /* the retry's output, codec_record_bound bytes */
  ZSTD_DCtx *dctx;
  ZSTD_DDict *ddict;
  uint8_t *raw; /* one body */
};

void codec_ctx_free(codec_ctx *c) {
  if (c == NULL)
    return;
  ZSTD_freeCDict(c->cdict);
  ZSTD_freeCDict(c->cdict_retry);
  ZSTD_freeCCtx(c->cctx);
  free(c->spare);
  ZSTD_freeDDict(c->ddict);
  ZSTD_freeDCtx(c->dctx);
  free(c->dict);
  free(c->raw);
  free(c);
}

int codec_ctx_new(const codec_shape *s, const void *dict, size_t dict_len,
                  int level, codec_ctx **out, diag *d) {
  *out = NULL;
  int rc = codec_shape_check(s, d);
  if (rc != 0)
    return rc;
  if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel())
    return diag_set(d, LMAP_EINVAL, "zstd level %d is outside %d..%d", level,
                    ZSTD_minCLevel(), ZSTD_maxCLevel());
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
  c->raw_size = codec_raw_size(s);
  c->level = level;
  c->raw = malloc(c->raw_size);
  c->dctx = ZSTD_createDCtx();
  if (c->raw == NULL || c->dctx == NULL) {
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
    if (c->ddict == NULL) {
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
  /* Each flushed block may add a block header beyond compressBound. */
  return 1 + ZSTD_compressBound(c->raw_size) + 64;
}

static int ensure_cctx(codec_ctx *c, diag *d) {
  if (c->cctx != NULL)
    return 0;
  c->cctx = ZSTD_createCCtx();
  c->spare = malloc(codec_record_bound(c));
  if (c->cctx == NULL || c->spare == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory for a zstd context");
  /* The checksum is the record's integrity check; the content size lets
   * the decoder reject a wrong-shape record before decompressing; the
   * dictionary is the store's, so its id would only cost 4 bytes. */
  size_t r = ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_checksumFlag, 1);
  if (!ZSTD_isError(r))
    r = ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_contentSizeFlag, 1);
  if (!ZSTD_isError(r))
    r = ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_dictIDFlag, 0);
  if (ZSTD_isError(r))
    return diag_set(d, LMAP_EINTERNAL, "zstd: %s", ZSTD_getErrorName(r));
  if (c->dict_len > 0) {
    c->cdict = ZSTD_createCDict(c->dict, c->dict_len, c->level);
    if (c->level < LEVEL_RETRY)
      c->cdict_retry = ZSTD_createCDict(c->dict, c->dict_len, LEVEL_RETRY);
    if (c->cdict == NULL || (c->level < LEVEL_RETRY && c->cdict_retry == NULL))
      return diag_set(d, LMAP_EINTERNAL,
                      "zstd cannot build a compression dictionary");
  }
  return 0;
}

/* Selects the level (and the dictionary prepared for it: a referenced
 * dictionary's level overrides the parameter) for the next frame. */
static int use_level(codec_ctx *c, int retry, diag *d) {
  size_t r = ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_compressionLevel,
                                    retry ? LEVEL_RETRY : c->level);
  if (!ZSTD_isError(r) && c->dict_len > 0)
    r = ZSTD_CCtx_refCDict(c->cctx, retry ? c->cdict_retry : c->cdict);
  if (ZSTD_isError(r))
    return diag_set(d, LMAP_EINTERNAL, "zstd: %s", ZSTD_getErrorName(r));
  return 0;
}

int codec_compress_raw(codec_ctx *c, const uint8_t *raw, uint8_t *dst,
                       size_t cap, size_t *len, diag *d) {
  int rc = ensure_cctx(c, d);
  if (rc != 0)
    return rc;
  if (cap < 2)
    return diag_set(d, LMAP_EINTERNAL, "record buffer of %zu bytes", cap);
  size_t zlen, zlen2;
  if ((rc = use_level(c, 0, d)) != 0 ||
      (rc = compress_body(c->cctx, &c->shape, raw, dst + 1, cap - 1, &zlen,
                          d)) != 0)
    return rc;
  /* Only records a retry can bring under the goal (it saves 2-5%). */
  if (zlen + 1 > RECORD_GOAL && zlen + 1 <= RECORD_GOAL + RECORD_GOAL / 8 &&
      c->level < LEVEL_RETRY) {
    if ((rc = use_level(c, 1, d)) != 0 ||
        (rc = compress_body(c->cctx, &c->shape, raw, c->spare,
                            codec_record_bound(c), &zlen2, d)) != 0)
      return rc;
    if (zlen2 < zlen) {
      memcpy(dst + 1, c->spare, zlen2);
      zlen = zlen2;
    }
  }
  dst[0] = RECORD_VERSION;
  *len = zlen + 1;
  return 0;
}

int codec_encode(codec_ctx *c, const labelmap *m, uint8_t *dst, size_t cap,
                 size_t *len, diag *d) {
  int rc = codec_transform(&c->shape, m, c->raw, d);
  if (rc != 0)
    return rc;
  return codec_compress_raw(c, c->raw, dst, cap, len, d);
}

int codec_decode(codec_ctx *c, const uint8_t *rec, size_t len, labelmap *out,
                 diag *d) {
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
  size_t flen = len - 1;
  unsigned long long content = ZSTD_getFrameContentSize(f, flen);
  if (content == ZSTD_CONTENTSIZE_ERROR)
    return diag_set(d, LMAP_ECORRUPT,
                    "record does not hold a zstd frame (bad magic or header, "
                    "or truncated)");
  if (content == ZSTD_CONTENTSIZE_UNKNOWN)
    return diag_set(d, LMAP_ECORRUPT,
                    "record's zstd frame does not state its content size");
  if (content != c->raw_size)
    return diag_set(d, LMAP_ECORRUPT,
                    "record holds %llu bytes; this store's shape needs %zu",
                    content, c->raw_size);
  /* Frame header descriptor, bit 2: Content_Checksum_flag (RFC 8878). */
  if ((f[4] & 0x04u) == 0)
    return diag_set(d, LMAP_ECORRUPT, "record's zstd frame has no checksum");
  size_t fsize = ZSTD_findFrameCompressedSize(f, flen);
  if (ZSTD_isError(fsize))
    return diag_set(d, LMAP_ECORRUPT, "record is truncated or malformed: %s",
                    ZSTD_getErrorName(fsize));
  if (fsize != flen)
    return diag_set(d, LMAP_ECORRUPT,
                    "record has %zu bytes after its zstd frame", flen - fsize);
  size_t r = c->ddict != NULL
                 ? ZSTD_decompress_usingDDict(c->dctx, c->raw, c->raw_size, f,
                                              flen, c->ddict)
                 : ZSTD_decompressDCtx(c->dctx, c->raw, c->raw_size, f, flen);
  if (ZSTD_isError(r))
    return diag_set(d, LMAP_ECORRUPT, "record does not decompress: %s",
                    ZSTD_getErrorName(r));
  if (r != c->raw_size)
    return diag_set(d, LMAP_ECORRUPT,
                    "record decompresses to %zu bytes, expected %zu", r,
                    c->raw_size);
  return codec_untransform(&c->shape, c->raw, out, d);
}
