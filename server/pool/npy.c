/* npy: .npy headers (see npy.h). */
#include "npy.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "lmap/error.h"

#define DICT_MAX 256

/* The header's dictionary text into `dict`; returns its length. */
static int header_dict(char dict[DICT_MAX], const size_t *shape, int ndim) {
  int n = snprintf(dict, DICT_MAX,
                   "{'descr': '<f4', 'fortran_order': False, 'shape': (");
  for (int i = 0; i < ndim; i++)
    n += snprintf(dict + n, DICT_MAX - (size_t)n, "%zu,%s", shape[i],
                  i + 1 < ndim ? " " : "");
  n += snprintf(dict + n, DICT_MAX - (size_t)n, "), }");
  return n;
}

/* magic(6) + version(2) + header length(2) + dict + padding + '\n' is a
 * multiple of 64. */
static size_t padded_len(int dict_len) {
  return (10 + (size_t)dict_len + 1 + 63) / 64 * 64;
}

size_t npy_header_len(const size_t *shape, int ndim) {
  char dict[DICT_MAX];
  if (ndim < 1 || ndim > NPY_MAX_DIMS)
    return 0;
  return padded_len(header_dict(dict, shape, ndim));
}

int npy_header_f32(dynbuf *b, const size_t *shape, int ndim) {
  if (ndim < 1 || ndim > NPY_MAX_DIMS)
    return LMAP_EINVAL;
  char dict[DICT_MAX];
  int n = header_dict(dict, shape, ndim);
  size_t total = 10 + (size_t)n + 1;
  size_t padded = padded_len(n);
  size_t hlen = padded - 10;
  unsigned char pre[10] = {0x93,
                           'N',
                           'U',
                           'M',
                           'P',
                           'Y',
                           1,
                           0,
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
