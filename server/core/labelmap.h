/*
 * labelmap: one image's dense label map in its sparse top-K form.
 *
 * The official tensor is [2, K, H, W] (plane 0 scores, plane 1 class
 * indices). In memory lmap keeps it cell-major, because pooling walks the
 * cells a box touches and then the K entries of each: entry `k` of the cell
 * at row `r`, column `q` is at index `(r * w + q) * k_count + k`.
 * The struct does not own its arrays: whoever fills it says where they live.
 */
#ifndef LMAP_LABELMAP_H
#define LMAP_LABELMAP_H

#include <stddef.h>
#include <stdint.h>

#include "diag.h"
#include "f16.h"

typedef struct labelmap {
  uint32_t k;        /* entries per cell (top-K) */
  uint32_t h, w;     /* grid rows and columns */
  float *scores;     /* [h * w * k], cell-major */
  uint32_t *classes; /* [h * w * k], cell-major, each < num_classes */
  /* The compact form the resident arena keeps (store/arena.h), read only:
   * when `scores16` is set, the scores are binary16 bits there (finite) and
   * `scores` is NULL; when `classes16` is set, the classes are there and
   * `classes` is NULL. Readers of a served map use labelmap_score and
   * labelmap_class, which read either form. */
  const uint16_t *scores16;
  const uint16_t *classes16;
} labelmap;

/* Entry `i` (cell-major, as above) of a map in either form. */
static inline float labelmap_score(const labelmap *m, size_t i) {
  return m->scores16 ? f16_finite_to_f32(m->scores16[i]) : m->scores[i];
}
static inline uint32_t labelmap_class(const labelmap *m, size_t i) {
  return m->classes16 ? m->classes16[i] : m->classes[i];
}

static inline size_t labelmap_entries(const labelmap *m) {
  return (size_t)m->k * m->h * m->w;
}

/* Upper bounds that every parser and decoder enforces before allocating. */
#define LABELMAP_MAX_K 1024u
#define LABELMAP_MAX_SIDE 1024u
#define LABELMAP_MAX_ENTRIES (1u << 22) /* k * h * w */
#define LABELMAP_MAX_CLASSES (1u << 24)

/* Scores beyond this magnitude are refused: no classifier produces them,
 * and bounding them keeps every sum the codec's predictor and the pooling
 * form finite (a sum of two 1.7e38 floats overflows to inf, and inf - inf
 * is a NaN whose bits differ between machines). */
#define LABELMAP_MAX_ABS_SCORE 1e30f

/* Checks what pooling relies on: every score finite and within
 * +-LABELMAP_MAX_ABS_SCORE, every class index
 * below `num_classes`, and no class twice in one cell (the official dense
 * scatter would keep only one of them). Returns 0 or LMAP_ERANGE with a
 * message naming the entry as [plane, k, row, col] of the [2, K, H, W]
 * tensor. */
int labelmap_validate(const labelmap *m, uint32_t num_classes, diag *d);

/* Image ids: 1 to LABELMAP_MAX_ID_LEN bytes of [A-Za-z0-9_.+:-], not
 * starting with '.' or '-'. ImageNet stems ("n04355338_22023") qualify;
 * the pattern keeps ids safe in URLs, file names and JSON without
 * escaping. Returns 0 or LMAP_EBADID naming the offending byte. */
#define LABELMAP_MAX_ID_LEN 255u
int labelmap_id_check(const char *id, size_t len, diag *d);

#endif /* LMAP_LABELMAP_H */
