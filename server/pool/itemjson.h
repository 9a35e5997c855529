/*
 * itemjson: the JSON item of one pooled query, exactly as `lmap get` prints
 * it, the server answers it and `lmap query` prints liblmap's answers (one
 * code path for the three).
 *
 *   G == 1, dense:  {"id": ID, "probs": [C numbers]}
 *   G == 1, sparse: {"id": ID, "classes": [...], "probs": [...], "rest": r}
 *   G > 1: the same keys, each array a list of G*G per-cell arrays (cells
 *   row-major, mirrored left-right when flipped) and "rest" a list of G*G.
 *   With softmax off the key "logits" replaces "probs" (and rest is 0).
 * Numbers carry 9 significant digits, enough to round-trip a float32.
 */
#ifndef LMAP_ITEMJSON_H
#define LMAP_ITEMJSON_H

#include <stdbool.h>

#include "core/labelmap.h"
#include "pool.h"
#include "shared/dynbuf.h"

typedef enum itemjson_format {
  ITEM_DENSE = 0,
  ITEM_SPARSE = 1
} itemjson_format;

/* Pools query `q` (already checked) over `m` and appends the item for `id`
 * to `b`. `dense` is caller scratch of G*G*num_classes floats (unused for
 * sparse). Returns 0, LMAP_ETOOBIG (the dynbuf's cap), LMAP_ENOMEM or
 * LMAP_EINVAL. On failure `b` may hold a partial item: reset it. */
int itemjson_write(dynbuf *b, const char *id, const labelmap *m,
                   uint32_t num_classes, const pool_query *q,
                   itemjson_format format, pool_ws *ws, float *dense);

/* The same layout for values pooled elsewhere (lmap query writes liblmap's
 * answers with these). Dense: the value of class c in cell j (row-major in
 * the G x G grid, `cells` = G*G) is v[j * cell_stride + c * class_stride].
 * Returns 0, LMAP_ETOOBIG or LMAP_ENOMEM. */
int itemjson_write_dense(dynbuf *b, const char *id, const float *v,
                         uint32_t num_classes, uint32_t cells,
                         size_t cell_stride, size_t class_stride, bool softmax);

/* Sparse: `cell_of` gives cell j (0 <= j < cells; its arrays need to live
 * only until the next call) or returns an error, which is returned. */
typedef int (*itemjson_cell_fn)(void *ctx, uint32_t j, pool_cell *out);
int itemjson_write_sparse(dynbuf *b, const char *id, uint32_t cells,
                          bool softmax, itemjson_cell_fn cell_of, void *ctx);

/* The longest text of one number: "%.9g" of a float32 is at most
 * "-1.23456789e-38" or "-0.000123456789" (15 bytes); "null" is 4. */
#define ITEMJSON_NUMBER_MAX 15u

/* An upper bound on the bytes itemjson_write appends for an id of `id_len`
 * bytes over a map of k entries per cell on an h x w grid with
 * `num_classes` classes, for any box of query `q` (its output_size is
 * used) in `format`. Computed before any pooling, so that lmapd can refuse
 * an answer over its cap without building it:
 *   - every number takes at most ITEMJSON_NUMBER_MAX bytes and a comma;
 *   - a dense cell lists num_classes numbers;
 *   - a sparse cell lists at most pool_cell_max_entries classes, whose
 *     indices take as many digits as num_classes - 1.
 * Saturates at SIZE_MAX. Pure. */
size_t itemjson_max_len(size_t id_len, uint32_t num_classes, uint32_t k,
                        uint32_t h, uint32_t w, const pool_query *q,
                        itemjson_format format);

/* Appends one float in the item's number format. */
int itemjson_number(dynbuf *b, float v);

#endif /* LMAP_ITEMJSON_H */
