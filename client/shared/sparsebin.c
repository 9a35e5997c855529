/* sparsebin: the binary sparse answer of POST /v1/labels (see
 * sparsebin.h). */
#include "sparsebin.h"

#include <string.h>

static void put_le32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static void put_f32(uint8_t *p, float v) {
  uint32_t bits;
  memcpy(&bits, &v, sizeof bits);
  put_le32(p, bits);
}

int lmap_sparsebin_begin(dynbuf *b, uint32_t count, uint32_t classes,
                         uint32_t output_size) {
  uint8_t head[LMAP_SPARSEBIN_HEADER];
  memcpy(head, LMAP_SPARSEBIN_MAGIC, 4);
  put_le32(head + 4, count);
  put_le32(head + 8, classes);
  put_le32(head + 12, output_size);
  return lmap_dynbuf_add(b, head, sizeof head);
}

int lmap_sparsebin_cell(dynbuf *b, uint32_t n, float rest,
                        const uint32_t *classes, const float *values) {
  void *at;
  int rc = lmap_dynbuf_extend(b, LMAP_SPARSEBIN_UNIT * ((size_t)n + 1), &at);
  if (rc)
    return rc;
  uint8_t *p = at;
  put_le32(p, n);
  put_f32(p + 4, rest);
  for (uint32_t i = 0; i < n; i++) {
    p += LMAP_SPARSEBIN_UNIT;
    put_le32(p, classes[i]);
    put_f32(p + 4, values[i]);
  }
  return 0;
}

size_t lmap_sparsebin_size(size_t count, size_t cells, size_t entries) {
  if (cells && count > SIZE_MAX / cells)
    return SIZE_MAX;
  size_t units = count * cells;
  if (entries > SIZE_MAX - units)
    return SIZE_MAX;
  units += entries;
  if (units > (SIZE_MAX - LMAP_SPARSEBIN_HEADER) / LMAP_SPARSEBIN_UNIT)
    return SIZE_MAX;
  return LMAP_SPARSEBIN_HEADER + units * LMAP_SPARSEBIN_UNIT;
}
