/*
 * querybin: the binary body of POST /v1/labels (Content-Type
 * application/x-lmap-queries), written by liblmap and read by lmapd: one
 * owner of the layout for both sides. See docs/API.md, "Binary queries".
 *
 *   "LMQ1"                      4 bytes, the magic and version
 *   count                       u32, little-endian, >= 1
 *   count times:
 *     id_len                    u8, 1..255
 *     flags                     u8: bit 0 flip; the other bits 0
 *     box                       4 x f64, little-endian IEEE 754
 *     id                        id_len bytes
 *
 * The batch's options (output_size, format, box_format, softmax) travel in
 * the query string, as for GET /v1/labels/{id}. Why binary: jansson spends
 * about 2 us a query building and walking the tree of a JSON body, while
 * this layout is read in place (tests/bench/bench_body.c measures both).
 * Boxes are f64 so that a box arrives exactly as the client computed it,
 * as the JSON form's 17 digits do.
 *
 * Pure: no allocation, no I/O; the reader returns views into the body.
 */
#ifndef LMAP_QUERYBIN_H
#define LMAP_QUERYBIN_H

#include <stddef.h>
#include <stdint.h>

#include "dynbuf.h"

#define LMAP_QUERYBIN_TYPE "application/x-lmap-queries"
#define LMAP_QUERYBIN_MAGIC "LMQ1"
#define LMAP_QUERYBIN_HEADER 8u /* magic and count */
#define LMAP_QUERYBIN_FIXED 34u /* id_len, flags, box: before the id */
#define LMAP_QUERYBIN_FLIP 1u
#define LMAP_QUERYBIN_ERRLEN 160

/* Starts a body of `count` queries in `b` (appended). Returns 0 or a
 * dynbuf error (LMAP_ETOOBIG, LMAP_ENOMEM). */
int lmap_querybin_begin(dynbuf *b, uint32_t count);

/* Appends one query. `id_len` must be 1..255 and the box finite (the
 * caller checks; lmapd refuses otherwise). Returns 0 or a dynbuf error. */
int lmap_querybin_put(dynbuf *b, const char *id, size_t id_len,
                      const double box[4], int flip);

typedef struct lmap_querybin_reader {
  const uint8_t *p, *end;
  uint32_t count, index;
} lmap_querybin_reader;

typedef struct lmap_querybin_query {
  const char *id; /* a view into the body: not NUL-terminated */
  size_t id_len;
  double box[4];
  int flip;
} lmap_querybin_query;

/* Checks the header of `body` (`len` bytes) and readies `r`; *count is the
 * number of queries. Returns 0, or -1 with `err` saying what is wrong (no
 * magic, a count of 0, a body too short for its count). */
int lmap_querybin_open(lmap_querybin_reader *r, const void *body, size_t len,
                       uint32_t *count, char err[LMAP_QUERYBIN_ERRLEN]);

/* Reads the next query into `q`. Returns 1, 0 after the last one (then it
 * also checks that no byte follows), or -1 with `err` naming the query
 * ("queries[3]: ...": cut short, an empty id, unknown flags). Boxes are not
 * checked here (non-finite values arrive as they are). */
int lmap_querybin_next(lmap_querybin_reader *r, lmap_querybin_query *q,
                       char err[LMAP_QUERYBIN_ERRLEN]);

#endif /* LMAP_QUERYBIN_H */
