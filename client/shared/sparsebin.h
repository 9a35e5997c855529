/*
 * sparsebin: the binary sparse answer of POST /v1/labels (Content-Type
 * application/x-lmap-sparse), written by lmapd and read by liblmap (the
 * reader is the stream sink in client/wire.c): one owner of the layout. See
 * docs/API.md, "Sparse answers". Every field is 4 bytes, little-endian, and
 * everything after the magic comes in 8-byte units:
 *
 *   "LMS1"                      4 bytes, the magic and version
 *   count                       u32, the number of items (the queries)
 *   classes                     u32, C
 *   output_size                 u32, G
 *   count * G * G times, item-major, each item's cells row-major over the
 *   G x G output grid (the order of .npy's [N, C, G, G] last two axes):
 *     n                         u32, entries listed, at most C
 *     rest                      f32, the value of every class not listed
 *     n times:
 *       class                   u32, below C, each at most once per cell
 *       value                   f32
 *
 * A cell lists the classes its bin touched, unsorted, with the very
 * float32 values the dense .npy answer holds (pool_cell_touched), so the
 * dense row rebuilt from it (`rest` everywhere, then each listed value)
 * equals the .npy answer's row bit for bit. Why: a soft label of 1,000
 * classes is 4,000 bytes dense and a few hundred sparse (a crop of a
 * top-5 map touches tens of classes), and those bytes were most of what
 * the kernel and the client spent per label (README, "Where a label's
 * work goes").
 */
#ifndef LMAP_SPARSEBIN_H
#define LMAP_SPARSEBIN_H

#include <stddef.h>
#include <stdint.h>

#include "dynbuf.h"

#define LMAP_SPARSEBIN_TYPE "application/x-lmap-sparse"
#define LMAP_SPARSEBIN_MAGIC "LMS1"
#define LMAP_SPARSEBIN_HEADER 16u /* magic, count, classes, output_size */
#define LMAP_SPARSEBIN_UNIT 8u    /* a cell's (n, rest); an entry */

/* Starts an answer in `b` (appended). Returns 0 or a dynbuf error. */
int lmap_sparsebin_begin(dynbuf *b, uint32_t count, uint32_t classes,
                         uint32_t output_size);

/* Appends one cell of `n` entries. Returns 0 or a dynbuf error. */
int lmap_sparsebin_cell(dynbuf *b, uint32_t n, float rest,
                        const uint32_t *classes, const float *values);

/* The bytes of an answer of `count` items of `cells` cells holding
 * `entries` entries in all, saturating at SIZE_MAX. */
size_t lmap_sparsebin_size(size_t count, size_t cells, size_t entries);

#endif /* LMAP_SPARSEBIN_H */
