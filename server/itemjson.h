/*
 * itemjson: the JSON item of one pooled query, exactly as `lmap get` prints
 * it and the server answers it (one code path for both).
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

#include "dynbuf.h"
#include "labelmap.h"
#include "pool.h"

typedef enum itemjson_format { ITEM_DENSE = 0, ITEM_SPARSE = 1 } itemjson_format;

/* Pools query `q` (already checked) over `m` and appends the item for `id`
 * to `b`. `dense` is caller scratch of G*G*num_classes floats (unused for
 * sparse). Returns 0, LMAP_ETOOBIG (the dynbuf's cap), LMAP_ENOMEM or
 * LMAP_EINVAL. On failure `b` may hold a partial item: reset it. */
int itemjson_write(dynbuf *b, const char *id, const labelmap *m,
                   uint32_t num_classes, const pool_query *q,
                   itemjson_format format, pool_ws *ws, float *dense);

/* Appends one float in the item's number format. */
int itemjson_number(dynbuf *b, float v);

#endif /* LMAP_ITEMJSON_H */
