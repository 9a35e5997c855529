/*
 * synth: realistic synthetic label maps (contract in synth.h).
 *
 * An image is 1-3 objects over a background "scene". Each object is a
 * rotated elliptic bump (footprint f in [0, 1], flat near the centre, 0
 * outside the ellipse) carrying a main class and 0-4 confusable neighbours
 * (classes within +-10 of the main one, as ImageNet's sibling synsets sit
 * next to each other). The scene is 3-6 classes clustered around 1-2 random
 * centres, whose logits drift linearly across the image and sink inside
 * objects. Every candidate class of the image has one smooth score,
 *
 *   smooth = base + amp * f[slot] + gx * x + gy * y
 *
 * (x, y the normalized cell centre in [-0.5, 0.5], slot the candidate's
 * object, or the max over objects for scene classes), so neighbouring cells
 * share their class lists and vary smoothly. A cell keeps the K candidates
 * with the highest smooth scores, adds per-cell noise (ns * uniform[-1, 1))
 * to them without reordering them, and now and then admits a random stray
 * class. That gives what compression and pooling benchmarks need: strong
 * top-1 logits (8-16) in objects, 2-8 for their siblings, about -3..5 in
 * the background, float32 values with full fractional parts.
 *
 * Invariants: output depends only on (params, index) through a xoshiro256**
 * stream seeded by splitmix64 of (seed, index), so any thread may generate
 * any index; the first draw is the main class, so the id does not depend on
 * the grid shape or K. Within a cell the K classes are distinct and scores
 * are non-increasing. Floats see only IEEE arithmetic and comparisons (no
 * libm), so builds agree bit for bit as long as multiply-adds are not fused
 * (the build passes -ffp-contract=off). Pure: no I/O, no allocation.
 */
#include "synth.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#define MAX_OBJ 3
#define MAX_NB 4
#define MAX_SCENE 6
/* Candidates fixed for the whole image; one per-cell random class is added
 * on top of these. */
#define MAX_FIXED (MAX_OBJ * (1 + MAX_NB) + MAX_SCENE)
/* Footprint slots: one per object, and the max over objects (scene). */
#define SLOT_ANY MAX_OBJ

/* ---- random numbers: splitmix64 for seeding, xoshiro256** for streams. */

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

typedef struct rng {
  uint64_t s[4];
} rng;

static uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

static uint64_t next(rng *g) {
  uint64_t *s = g->s;
  uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return r;
}

/* Seeds the stream of image `index`: the seed and the index each go through
 * a full splitmix64 round before they meet, so nearby (seed, index) pairs
 * get unrelated streams. */
static void rng_seed(rng *g, uint64_t seed, uint64_t index) {
  uint64_t a = seed, b = index ^ 0xD1B54A32D192ED03ull;
  uint64_t x = splitmix64(&a) ^ splitmix64(&b);
  for (int i = 0; i < 4; i++)
    g->s[i] = splitmix64(&x);
}

/* Uniform in [0, 1) with 24 bits, exactly representable as float. */
static float unif(rng *g) {
  return (float)(next(g) >> 40) * (1.0f / 16777216.0f);
}

static float range(rng *g, float lo, float hi) {
  return lo + (hi - lo) * unif(g);
}

/* Uniform integer in [0, n), n <= 2^32 (multiply-shift; the bias of at most
 * n / 2^32 does not matter for synthetic data). */
static uint32_t below(rng *g, uint32_t n) {
  return (uint32_t)(((next(g) >> 32) * (uint64_t)n) >> 32);
}

/* ---- class folder names. */

/* A keyed bijection on 24-bit integers: every step (add, xorshift, multiply
 * by an odd constant, all mod 2^24) is invertible, so distinct classes get
 * distinct numbers. */
static uint32_t perm24(uint32_t x, uint64_t seed) {
  const uint32_t m = 0xFFFFFFu;
  uint64_t s = seed;
  uint64_t k = splitmix64(&s);
  x = (x + (uint32_t)k) & m;
  x ^= x >> 12;
  x = (x * 0x9E3779u) & m; /* odd */
  x = (x + (uint32_t)(k >> 24)) & m;
  x ^= x >> 11;
  x = (x * 0x5BD1E9u) & m; /* odd */
  x ^= x >> 13;
  x ^= (uint32_t)(k >> 48) & m;
  return x;
}

/* Writes the decimal digits of v, zero-padded to at least `width` (<= 20),
 * at p; returns the end. */
static char *put_u64(char *p, uint64_t v, int width) {
  int n = 1;
  for (uint64_t t = v; t >= 10; t /= 10)
    n++;
  if (n < width)
    n = width;
  for (int i = n - 1; i >= 0; i--) {
    p[i] = (char)('0' + v % 10);
    v /= 10;
  }
  return p + n;
}

/* Classes below 2^24 (every class a store allows) map bijectively onto
 * [1000000, 17777215], printed with 8 digits: "n01440764"-like names
 * spread over the same range as ImageNet's (n01440764 .. n15075141). Larger
 * values (outside the store's bounds, still handled) print above that
 * range, so the names stay distinct for every uint32_t. */
static char *put_wnid(char *p, uint64_t seed, uint32_t c) {
  uint64_t v = c < (1u << 24) ? 1000000u + (uint64_t)perm24(c, seed)
                              : 1000000u + (uint64_t)c;
  *p++ = 'n';
  return put_u64(p, v, 8);
}

void synth_class_wnid(uint64_t seed, uint32_t c, char buf[16]) {
  *put_wnid(buf, seed, c) = '\0';
}

/* ---- parameters. */

int synth_check(const synth_params *p, diag *d) {
  if (p->num_classes == 0 || p->num_classes > LABELMAP_MAX_CLASSES)
    return diag_field(d, LMAP_EINVAL, "num_classes",
                      "synth: num_classes %u is outside 1..%u", p->num_classes,
                      LABELMAP_MAX_CLASSES);
  if (p->k == 0 || p->k > LABELMAP_MAX_K)
    return diag_field(d, LMAP_EINVAL, "k", "synth: k %u is outside 1..%u", p->k,
                      LABELMAP_MAX_K);
  if (p->k > p->num_classes)
    return diag_field(d, LMAP_EINVAL, "k",
                      "synth: k %u exceeds num_classes %u (the top-K classes "
                      "of a cell must be distinct)",
                      p->k, p->num_classes);
  if (p->h == 0 || p->h > LABELMAP_MAX_SIDE)
    return diag_field(d, LMAP_EINVAL, "h", "synth: h %u is outside 1..%u", p->h,
                      LABELMAP_MAX_SIDE);
  if (p->w == 0 || p->w > LABELMAP_MAX_SIDE)
    return diag_field(d, LMAP_EINVAL, "w", "synth: w %u is outside 1..%u", p->w,
                      LABELMAP_MAX_SIDE);
  if ((uint64_t)p->k * p->h * p->w > LABELMAP_MAX_ENTRIES)
    return diag_field(d, LMAP_EINVAL, "k",
                      "synth: k*h*w = %u*%u*%u exceeds %u entries", p->k, p->h,
                      p->w, LABELMAP_MAX_ENTRIES);
  return 0;
}

/* ---- the image model. */

/* The image's candidates as a structure of arrays padded to a multiple of
 * four, so the per-cell score loop is straight arithmetic on blocks of
 * four that the compiler turns into vector code. A candidate's footprint
 * weight sits in the row of its slot (amp[slot][i]), zero elsewhere. */
#define NPAD ((MAX_FIXED + 3) / 4 * 4)
typedef struct scene {
  uint32_t n;
  uint32_t cls[NPAD];
  float base[NPAD], amp[MAX_OBJ + 1][NPAD], gx[NPAD], gy[NPAD], ns[NPAD];
} scene;

/* An object's footprint: f = t * (2 - t) with t = 1 - d2, d2 the quadratic
 * form of a rotated ellipse in cell units (d2 = 1 on its rim). */
typedef struct blob {
  float cx, cy, a, b, c;
} blob;

static int has_class(const uint32_t *cls, uint32_t n, uint32_t c) {
  for (uint32_t i = 0; i < n; i++)
    if (cls[i] == c)
      return 1;
  return 0;
}

/* Appends a candidate unless its class is already one of the image's, which
 * happens when C is small or classes cluster; dropping it keeps the
 * distinctness invariant at no per-cell cost. */
static int add(scene *s, uint32_t c, uint32_t slot, float base, float amp,
               float gx, float gy, float ns) {
  if (s->n == MAX_FIXED || has_class(s->cls, s->n, c))
    return 0;
  uint32_t i = s->n++;
  s->cls[i] = c;
  s->base[i] = base;
  s->amp[slot][i] = amp;
  s->gx[i] = gx;
  s->gy[i] = gy;
  s->ns[i] = ns;
  return 1;
}

/* A class within +-spread of `center`, wrapping around [0, C). */
static uint32_t near_class(rng *g, uint32_t center, uint32_t spread,
                           uint32_t C) {
  uint32_t off = 1 + below(g, spread);
  uint64_t c = (uint64_t)center + C; /* keeps the subtraction non-negative */
  c = (next(g) >> 63) ? c + off : c - (off % C);
  return (uint32_t)(c % C);
}

static void make_blob(rng *g, blob *b, int first, uint32_t h, uint32_t w) {
  /* ImageNet's labelled object is usually large and central; extra objects
   * are smaller and anywhere. The minimum radius keeps a 1x1 grid's single
   * cell inside the first object. */
  float lo = first ? 0.30f : 0.12f, hi = first ? 0.60f : 0.35f;
  float cmin = first ? 0.25f : 0.0f, cmax = first ? 0.75f : 1.0f;
  float rx = range(g, lo, hi) * (float)w;
  float ry = range(g, lo, hi) * (float)h;
  if (rx < 0.75f)
    rx = 0.75f;
  if (ry < 0.75f)
    ry = 0.75f;
  b->cx = range(g, cmin, cmax) * (float)w;
  b->cy = range(g, cmin, cmax) * (float)h;
  /* The orientation as (cos, sin) from the half-angle tangent t: plain
   * IEEE arithmetic, so the maps do not depend on the libm in use. */
  float t = range(g, -1.0f, 1.0f), it = 1.0f / (1.0f + t * t);
  float co = (1.0f - t * t) * it, si = 2.0f * t * it;
  float irx = 1.0f / (rx * rx), iry = 1.0f / (ry * ry);
  b->a = co * co * irx + si * si * iry;
  b->b = 2.0f * co * si * (irx - iry);
  b->c = si * si * irx + co * co * iry;
}

/* Draws the image: its objects (with their classes) and its scene classes.
 * Returns the number of objects; *main_class is the first object's class,
 * drawn first so that the id depends only on (seed, index, C). */
static uint32_t make_scene(rng *g, const synth_params *p, scene *s, blob *blobs,
                           uint32_t *main_class) {
  uint32_t C = p->num_classes;
  memset(s, 0, sizeof *s);
  *main_class = below(g, C);
  uint32_t u = below(g, 100);
  uint32_t nobj = u < 55 ? 1 : u < 85 ? 2 : 3;
  for (uint32_t o = 0; o < nobj; o++) {
    make_blob(g, &blobs[o], o == 0, p->h, p->w);
    uint32_t m = o == 0 ? *main_class : below(g, C);
    /* Top-1 logit at the object's centre; secondary objects are seen less
     * confidently. Outside the ellipse the class keeps about 12% of it. */
    float peak = o == 0 ? range(g, 8.5f, 16.0f) : range(g, 6.5f, 13.0f);
    /* Draws go into named variables: the order in which a call's
     * arguments are evaluated is unspecified, and differs between
     * compilers, so draws inside one argument list would make the maps
     * compiler-dependent. */
    float gx = range(g, -1.5f, 1.5f);
    float gy = range(g, -1.5f, 1.5f);
    if (!add(s, m, o, 0.12f * peak, 0.88f * peak, gx, gy, 0.35f))
      continue; /* same class as an earlier object: that one covers it */
    uint32_t nnb = below(g, MAX_NB + 1);
    float top = peak * range(g, 0.35f, 0.65f);
    if (top > 8.0f)
      top = 8.0f;
    for (uint32_t j = 0; j < nnb; j++) {
      /* Sibling peaks start at about half the main logit (at most 8) and
       * each is 0-25% below the previous one; their gradients are steeper
       * than the main class's, so which sibling is the runner-up changes
       * across a large object, as a classifier's second guess does. */
      float pk = top * range(g, 0.75f, 1.0f);
      top = pk;
      for (int tries = 0; tries < 4; tries++) {
        uint32_t c = near_class(g, m, 10, C);
        float ngx = range(g, -4.0f, 4.0f);
        float ngy = range(g, -4.0f, 4.0f);
        if (add(s, c, o, 0.1f * pk, 0.9f * pk, ngx, ngy, 0.45f))
          break;
      }
    }
  }
  /* Scene vocabulary: background classes cluster too (shore, water, sand),
   * and they sink inside objects, where the classifier sees the object. */
  uint32_t nsc = 3 + below(g, MAX_SCENE - 2);
  uint32_t centers[2];
  centers[0] = below(g, C);
  centers[1] = below(g, C);
  uint32_t ncent = 1 + below(g, 2);
  for (uint32_t j = 0; j < nsc; j++) {
    /* The centres themselves first, then classes near a random one. */
    uint32_t c = j < ncent ? centers[j] : centers[below(g, ncent)];
    for (int tries = 0; tries < 4; tries++) {
      uint32_t sc = tries == 0 && j < ncent ? c : near_class(g, c, 15, C);
      float base = range(g, -1.0f, 2.5f);
      float amp = -range(g, 1.0f, 3.0f);
      float sgx = range(g, -3.0f, 3.0f);
      float sgy = range(g, -3.0f, 3.0f);
      if (add(s, sc, SLOT_ANY, base, amp, sgx, sgy, 0.6f))
        break;
    }
  }
  return nobj;
}

/* Completes a cell holding only m < k classes (small C, large K): classes
 * not yet in the cell, walking upwards from a per-image start so the tail
 * is the same across cells, with scores easing down towards a floor a few
 * units below the weakest candidate, like a classifier's long tail. The
 * walk visits each class at most once (C >= k leaves k - m free classes in
 * one turn), so tail classes only need checking against the first m. */
static void fill_tail(rng *g, float *ts, uint32_t *tc, uint32_t m, uint32_t k,
                      uint32_t C, uint32_t start) {
  float prev = ts[m - 1];
  float floor = (prev < -3.0f ? prev : -3.0f) - 4.0f;
  uint32_t c = start;
  for (uint32_t i = m; i < k; i++) {
    while (has_class(tc, m, c))
      c = c + 1 == C ? 0 : c + 1;
    float s = floor + (prev - floor) * (1.0f - 0.08f * unif(g));
    if (s > prev)
      s = prev;
    ts[i] = s;
    tc[i] = c;
    prev = s;
    c = c + 1 == C ? 0 : c + 1;
  }
}

void synth_image(const synth_params *p, uint64_t index, char id[64],
                 labelmap *out) {
  assert(synth_check(p, NULL) == 0);
  rng g;
  rng_seed(&g, p->seed, index);
  scene s;
  blob blobs[MAX_OBJ];
  uint32_t main_class;
  uint32_t nobj = make_scene(&g, p, &s, blobs, &main_class);

  /* The id: the main class's folder and the index itself, which makes ids
   * unique per seed and lets a reader map an id back to its index. */
  char *e = put_wnid(id, p->seed, main_class);
  *e++ = '_';
  *put_u64(e, index, 1) = '\0';

  const uint32_t h = p->h, w = p->w, k = p->k, C = p->num_classes;
  out->k = k;
  out->h = h;
  out->w = w;
  uint32_t tail_start = below(&g, C);
  const uint32_t n = s.n;
  const float ih = 1.0f / (float)h, iw = 1.0f / (float)w;
  float rb[NPAD], sc[NPAD], nz[NPAD], tsc[NPAD];
  /* Candidate order by score, carried from cell to cell: neighbouring
   * cells rank their candidates almost alike, so the insertion sort below
   * mostly compares without moving, in predictable branches. */
  uint8_t ord[MAX_FIXED];
  for (uint32_t i = 0; i < n; i++)
    ord[i] = (uint8_t)i;
  for (uint32_t r = 0; r < h; r++) {
    const float y = ((float)r + 0.5f) * ih - 0.5f, cy = (float)r + 0.5f;
    for (uint32_t i = 0; i < NPAD; i++)
      rb[i] = s.base[i] + s.gy[i] * y;
    /* Rows alternate direction, so consecutive cells are always
     * neighbours and the carried order stays nearly right. */
    for (uint32_t qq = 0; qq < w; qq++) {
      const uint32_t q = r & 1 ? w - 1 - qq : qq;
      const float x = ((float)q + 0.5f) * iw - 0.5f, cx = (float)q + 0.5f;
      float f[MAX_OBJ + 1] = {0.0f, 0.0f, 0.0f, 0.0f};
      for (uint32_t o = 0; o < nobj; o++) {
        const blob *b = &blobs[o];
        float dx = cx - b->cx, dy = cy - b->cy;
        float t = 1.0f - (b->a * dx * dx + b->b * dx * dy + b->c * dy * dy);
        t = t > 0.0f ? t : 0.0f; /* a max, not a branch */
        f[o] = t * (2.0f - t);
        f[SLOT_ANY] = f[o] > f[SLOT_ANY] ? f[o] : f[SLOT_ANY];
      }
      /* Smooth scores first: they decide which classes make the top K.
       * Being smooth, they change little between neighbouring cells, so
       * the selection below rarely moves anything. */
      for (uint32_t i = 0; i < n; i += 4) {
#define SCORE(j)                                                               \
  sc[j] = rb[j] + s.gx[j] * x + s.amp[0][j] * f[0] + s.amp[1][j] * f[1] +      \
          s.amp[2][j] * f[2] + s.amp[3][j] * f[3]
        /* Spelled out so that -O2's straight-line vectorizer sees it. */
        SCORE(i);
        SCORE(i + 1);
        SCORE(i + 2);
        SCORE(i + 3);
#undef SCORE
      }
      /* Top-K: re-sort last cell's top entries under the new scores, then
       * let the others challenge the K-th. Entries below the top never
       * need ordering. */
      const uint32_t m0 = n < k ? n : k;
      for (uint32_t i = 0; i < m0; i++)
        tsc[i] = sc[ord[i]];
      for (uint32_t i = 1; i < m0; i++) {
        const float v = tsc[i];
        if (!(tsc[i - 1] < v))
          continue;
        const uint8_t o = ord[i];
        uint32_t j = i;
        for (; j > 0 && tsc[j - 1] < v; j--) {
          tsc[j] = tsc[j - 1];
          ord[j] = ord[j - 1];
        }
        tsc[j] = v;
        ord[j] = o;
      }
      for (uint32_t i = m0; i < n; i++) {
        const uint8_t o = ord[i];
        const float v = sc[o];
        if (!(v > tsc[m0 - 1]))
          continue;
        ord[i] = ord[m0 - 1];
        uint32_t j = m0 - 1;
        for (; j > 0 && tsc[j - 1] < v; j--) {
          tsc[j] = tsc[j - 1];
          ord[j] = ord[j - 1];
        }
        tsc[j] = v;
        ord[j] = o;
      }
      /* Then per-cell noise on the selected entries (four 16-bit values
       * per draw), which gives the scores non-round fractional parts. It
       * does not reorder them: sorting noisy values would cost a
       * misprediction per swap. A value that would overtake its
       * predecessor lands just below it instead (a branch-free min);
       * classes still swap where their smooth scores cross. */
      for (uint32_t i = 0; i < m0; i += 4) {
        uint64_t bits = next(&g);
#define NOISE(j)                                                               \
  nz[i + j] = (float)((int32_t)((bits >> (16 * j)) & 0xFFFFu) - 32768) *       \
              (1.0f / 32768.0f)
        NOISE(0);
        NOISE(1);
        NOISE(2);
        NOISE(3);
#undef NOISE
      }
      float *restrict ts = out->scores + ((size_t)r * w + q) * k;
      uint32_t *restrict tc = out->classes + ((size_t)r * w + q) * k;
      float prev = INFINITY;
      for (uint32_t j = 0; j < m0; j++) {
        const uint8_t o = ord[j];
        float v = tsc[j] + s.ns[o] * nz[j];
        float lim = prev - 0.01f * (1.25f + nz[j]);
        ts[j] = prev = v < lim ? v : lim;
        tc[j] = s.cls[o];
      }
      uint32_t m = m0;
      /* A rare stray class, as real maps show in textured background. */
      uint64_t bits = next(&g);
      if ((bits & 15u) == 0) {
        uint32_t c = (uint32_t)(((bits >> 32) * (uint64_t)C) >> 32);
        float v = -1.5f + 5.0f * (float)((bits >> 8) & 0xFFFFFFu) *
                              (1.0f / 16777216.0f);
        if (!has_class(s.cls, n, c) && (m < k || v > ts[k - 1])) {
          uint32_t i = m < k ? m++ : k - 1;
          for (; i > 0 && ts[i - 1] < v; i--) {
            ts[i] = ts[i - 1];
            tc[i] = tc[i - 1];
          }
          ts[i] = v;
          tc[i] = c;
        }
      }
      if (m < k)
        fill_tail(&g, ts, tc, m, k, C, tail_start);
    }
  }
}
