/* itemjson: one pooled query as a JSON item (see itemjson.h). */
#include "itemjson.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/fmtfloat.h"

#include "lmap/error.h"

/* One number's text: 9 significant digits. Pooled values are finite by
 * construction; the guard keeps the output valid JSON regardless. */
static int number_text(char out[FMTFLOAT_MAX], float v) {
  if (isfinite(v))
    return lmap_fmtfloat9(out, v);
  memcpy(out, "null", 4);
  return 4;
}

int itemjson_number(dynbuf *b, float v) {
  char tmp[FMTFLOAT_MAX];
  return lmap_dynbuf_add(b, tmp, (size_t)number_text(tmp, v));
}

/* Arrays are built in a stack block and appended a block at a time: a
 * dense item is 1,000 numbers. */
#define BLOCK 4096

/* Most of a dense item is one number: every class absent from the pooled
 * cells has the same probability. A number equal (bit for bit) to the one
 * before reuses its text, comma included, copied whole at a fixed size
 * (inline moves, not a call): pooling and writing a dense item of 1,000
 * classes takes 2.6 us instead of 18 (tests/bench/bench_lookup.c). */
static int floats(dynbuf *b, const float *v, uint32_t n) {
  char block[BLOCK], last[1 + FMTFLOAT_MAX];
  size_t len = 0, last_len = 0;
  uint32_t last_bits = 0;
  int rc = 0;
  block[len++] = '[';
  last[0] = ',';
  for (uint32_t i = 0; i < n && rc == 0; i++) {
    if (len > BLOCK - sizeof last - 1) {
      rc = lmap_dynbuf_add(b, block, len);
      len = 0;
    }
    uint32_t bits;
    memcpy(&bits, &v[i], sizeof bits);
    if (i == 0 || bits != last_bits) {
      last_len = 1 + (size_t)number_text(last + 1, v[i]);
      last_bits = bits;
    }
    size_t skip = i == 0; /* no comma before the first */
    memcpy(block + len, last + skip, sizeof last - 1);
    len += last_len - skip;
  }
  block[len++] = ']';
  return rc ? rc : lmap_dynbuf_add(b, block, len);
}

static int uints(dynbuf *b, const uint32_t *v, uint32_t n) {
  char block[BLOCK];
  size_t len = 0;
  int rc = 0;
  block[len++] = '[';
  for (uint32_t i = 0; i < n && rc == 0; i++) {
    if (len > BLOCK - 16) {
      rc = lmap_dynbuf_add(b, block, len);
      len = 0;
    }
    if (i)
      block[len++] = ',';
    char digits[10];
    int nd = 0;
    uint32_t x = v[i];
    do {
      digits[nd++] = (char)('0' + x % 10);
      x /= 10;
    } while (x);
    while (nd)
      block[len++] = digits[--nd];
  }
  block[len++] = ']';
  return rc ? rc : lmap_dynbuf_add(b, block, len);
}

/* The dense keys of an item: one array of num_classes values, or G*G of
 * them (see itemjson_write_dense for the strides). Values that are not
 * contiguous (lmap query's class-major arrays) are gathered into `row`
 * first, so that the server's path stays the plain loop of floats(). */
static int dense_body(dynbuf *b, const float *v, uint32_t num_classes,
                      uint32_t cells, size_t cell_stride, size_t class_stride,
                      bool softmax, float *row) {
  int rc = lmap_dynbuf_addstr(b, softmax ? ",\"probs\":" : ",\"logits\":");
  if (cells == 1 && class_stride == 1) /* the server's G = 1 */
    return rc ? rc : floats(b, v, num_classes);
  if (rc == 0 && cells > 1)
    rc = lmap_dynbuf_add(b, "[", 1);
  for (uint32_t c = 0; c < cells && rc == 0; c++) {
    const float *cell = v + (size_t)c * cell_stride;
    if (class_stride != 1) {
      for (uint32_t k = 0; k < num_classes; k++)
        row[k] = cell[k * class_stride];
      cell = row;
    }
    if (c)
      rc = lmap_dynbuf_add(b, ",", 1);
    if (rc == 0)
      rc = floats(b, cell, num_classes);
  }
  if (rc == 0 && cells > 1)
    rc = lmap_dynbuf_add(b, "]", 1);
  return rc;
}

/* The sparse keys of an item: every cell's classes, then values, then
 * rest; each cell is asked for once and buffered as text in three parts. */
static int sparse_body(dynbuf *b, uint32_t cells, bool softmax,
                       itemjson_cell_fn cell_of, void *ctx) {
  if (cells == 1) {
    pool_cell cell;
    int rc = cell_of(ctx, 0, &cell);
    if (rc == 0)
      rc = lmap_dynbuf_addstr(b, ",\"classes\":");
    if (rc == 0)
      rc = uints(b, cell.classes, cell.n);
    if (rc == 0)
      rc = lmap_dynbuf_addstr(b, softmax ? ",\"probs\":" : ",\"logits\":");
    if (rc == 0)
      rc = floats(b, cell.values, cell.n);
    if (rc == 0)
      rc = lmap_dynbuf_addstr(b, ",\"rest\":");
    return rc ? rc : itemjson_number(b, cell.rest);
  }
  dynbuf vals, rest;
  lmap_dynbuf_init(&vals, b->max);
  lmap_dynbuf_init(&rest, b->max);
  int rc = lmap_dynbuf_addstr(b, ",\"classes\":[");
  for (uint32_t c = 0; c < cells && rc == 0; c++) {
    pool_cell cell;
    const char *sep = c ? "," : "";
    rc = cell_of(ctx, c, &cell);
    if (rc == 0)
      rc = lmap_dynbuf_addstr(b, sep);
    if (rc == 0)
      rc = uints(b, cell.classes, cell.n);
    if (rc == 0)
      rc = lmap_dynbuf_addstr(&vals, sep);
    if (rc == 0)
      rc = floats(&vals, cell.values, cell.n);
    if (rc == 0)
      rc = lmap_dynbuf_addstr(&rest, sep);
    if (rc == 0)
      rc = itemjson_number(&rest, cell.rest);
  }
  if (rc == 0)
    rc = lmap_dynbuf_addstr(b, softmax ? "],\"probs\":[" : "],\"logits\":[");
  if (rc == 0 && vals.len)
    rc = lmap_dynbuf_add(b, vals.data, vals.len);
  if (rc == 0)
    rc = lmap_dynbuf_addstr(b, "],\"rest\":[");
  if (rc == 0 && rest.len)
    rc = lmap_dynbuf_add(b, rest.data, rest.len);
  if (rc == 0)
    rc = lmap_dynbuf_add(b, "]", 1);
  lmap_dynbuf_free(&vals);
  lmap_dynbuf_free(&rest);
  return rc;
}

/* Ids passed labelmap_id_check, so they need no JSON escaping. */
static int open_item(dynbuf *b, const char *id) {
  return lmap_dynbuf_printf(b, "{\"id\":\"%s\"", id);
}

int itemjson_write_dense(dynbuf *b, const char *id, const float *v,
                         uint32_t num_classes, uint32_t cells,
                         size_t cell_stride, size_t class_stride,
                         bool softmax) {
  float *row = NULL;
  if (class_stride != 1 && (row = malloc(num_classes * sizeof *row)) == NULL)
    return LMAP_ENOMEM;
  int rc = open_item(b, id);
  rc = rc ? rc
          : dense_body(b, v, num_classes, cells, cell_stride, class_stride,
                       softmax, row);
  free(row);
  return rc ? rc : lmap_dynbuf_add(b, "}", 1);
}

int itemjson_write_sparse(dynbuf *b, const char *id, uint32_t cells,
                          bool softmax, itemjson_cell_fn cell_of, void *ctx) {
  int rc = open_item(b, id);
  rc = rc ? rc : sparse_body(b, cells, softmax, cell_of, ctx);
  return rc ? rc : lmap_dynbuf_add(b, "}", 1);
}

/* Pooling as the cell source of a sparse item. */
typedef struct pooled {
  const labelmap *m;
  uint32_t num_classes;
  const pool_query *q;
  pool_ws *ws;
} pooled;

static int pooled_cell(void *ctx, uint32_t j, pool_cell *out) {
  const pooled *p = ctx;
  return pool_cell_sparse(p->m, p->num_classes, p->q, j, p->ws, out);
}

int itemjson_write(dynbuf *b, const char *id, const labelmap *m,
                   uint32_t num_classes, const pool_query *q,
                   itemjson_format format, pool_ws *ws, float *dense) {
  uint32_t cells = q->output_size * q->output_size;
  if (format == ITEM_SPARSE) {
    pooled p = {m, num_classes, q, ws};
    return itemjson_write_sparse(b, id, cells, q->softmax, pooled_cell, &p);
  }
  int rc = pool_dense(m, num_classes, q, ws, dense);
  return rc ? rc
            : itemjson_write_dense(b, id, dense, num_classes, cells,
                                   num_classes, 1, q->softmax);
}

/* a * b + c, saturating at UINT64_MAX. */
static uint64_t mul_add(uint64_t a, uint64_t b, uint64_t c) {
  if (b && a > (UINT64_MAX - c) / b)
    return UINT64_MAX;
  return a * b + c;
}

static uint32_t digits(uint32_t v) {
  uint32_t n = 1;
  while (v >= 10) {
    v /= 10;
    n++;
  }
  return n;
}

size_t itemjson_max_len(size_t id_len, uint32_t num_classes, uint32_t k,
                        uint32_t h, uint32_t w, const pool_query *q,
                        itemjson_format format) {
  const uint64_t num = ITEMJSON_NUMBER_MAX + 1; /* a number and its comma */
  uint64_t G = q->output_size ? q->output_size : 1, cells = G * G;
  uint64_t per_cell;
  if (format == ITEM_SPARSE) {
    uint64_t n = pool_cell_max_entries(num_classes, k, h, w, (uint32_t)G);
    uint32_t top = num_classes ? num_classes - 1 : 0;
    /* Per cell: its classes, its values and its rest, each array with its
     * brackets and a comma before it. */
    per_cell = mul_add(n, digits(top) + 1 + num, 3 + 3 + num);
  } else {
    per_cell = mul_add(num_classes, num, 3);
  }
  /* {"id":"ID", up to three keys with their punctuation (under 64), }. */
  uint64_t total = mul_add(cells, per_cell, 64 + (uint64_t)id_len);
  return total > SIZE_MAX ? SIZE_MAX : (size_t)total;
}
