/* npy: .npy headers (see npy.h). */
#include "npy.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "lmap/error.h"

int npy_header_f32(dynbuf *b, const size_t *shape, int ndim) {
  if (ndim < 1 || ndim > NPY_MAX_DIMS)
    return LMAP_EINVAL;
  char dict[256];
  int n = snprintf(dict, sizeof dict,
                   "{'descr': '<f4', 'fortran_order': False, 'shape': (");
  for (int i = 0; i < ndim; i++)
    n += snprintf(dict + n, sizeof dict - (size_t)n, "%zu,%s", shape[i],
                  i + 1 < ndim ? " " : "");
  n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
  /* magic(6) + version(2) + header length(2) + dict + padding + '\n' is a
   * multiple of 64. */
  size_t total = 10 + (size_t)n + 1;
  size_t padded = (total + 63) / 64 * 64;
  size_t hlen = padded - 10;
  unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                           (unsigned char)(hlen & 0xff),
                           (unsigned char)(hlen >> 8)};
  int rc = lmap_dynbuf_reserve(b, padded);
  if (rc)
    return rc;
  lmap_dynbuf_add(b, pre, sizeof pre);
  lmap_dynbuf_add(b, dict, (size_t)n);
  for (size_t i = total; i < padded; i++)
    lmap_dynbuf_add(b, " ", 1);
  return lmap_dynbuf_add(b, "\n", 1);
}
