/*
 * mapsvg: one label map, and optionally a crop box over it, drawn as SVG
 * (lmap render). No I/O: appends to the caller's buffer, pools with the
 * caller's workspace, and allocates only a scratch array of one entry per
 * cell.
 *
 * The drawing: the H x W grid, each cell filled with its top-1 class's
 * colour (a hue per class, golden-ratio spaced so that neighbouring class
 * indices differ) and shaded by that class's probability in the cell
 * (softmax over all C classes, the zero-filled ones included, as pooling
 * a box of that one cell gives); row and column numbers; a legend of the
 * top-1 classes present with their names (indices when the store has
 * none); with a box, its outline (and for `relabel` boxes, dashed, the
 * region the official code really pools, the crop mirrored across the
 * diagonal), the G x G token grid for G > 1, and the pooled top-5 of the
 * box (of its first cell for G > 1) as bars. Every cell, box and bar has a
 * <title> for tooltips; the text is text. The same input gives the same
 * bytes.
 */
#ifndef LMAP_MAPSVG_H
#define LMAP_MAPSVG_H

#include <stddef.h>
#include <stdint.h>

#include "core/labelmap.h"
#include "pool.h"
#include "shared/dynbuf.h"

typedef struct mapsvg_input {
  const char *id;
  const labelmap *map;
  uint32_t num_classes;
  /* num_classes names, or NULL: classes are then shown by index. */
  const char *const *class_names;
  /* The box to draw and pool (checked by pool_check_query), or NULL. */
  const pool_query *query;
} mapsvg_input;

/* Appends the SVG document to `out`. Returns 0, LMAP_EINVAL (a class index
 * of the map at or above num_classes, or a workspace for another class
 * count) or a dynbuf error. */
int mapsvg_write(dynbuf *out, const mapsvg_input *in, pool_ws *ws);

#endif /* LMAP_MAPSVG_H */
