/*
 * fuzz_wire_sparse: liblmap's streaming reader of sparse binary answers
 * (application/x-lmap-sparse, client/wire.c) on any bytes, fed in pieces as
 * libcurl hands them over, with or without a declared length.
 *
 * Input: three bytes, then the answer body.
 *   byte 0: bits 1-2: n = 1..4; bit 3: the body's length is declared (as
 *           a Content-Length); bits 4-5: the values checked (any, finite,
 *           probabilities)
 *   byte 1: G = 1 + byte % 8
 *   byte 2: the size of the pieces, 1 + byte % 64, or the whole body at
 *           once when it is 0
 * C is 50, the classes of the store the seeds were answered from. Every
 * write lands inside the caller's buffer (AddressSanitizer checks); an
 * accepted answer must have read every cell of the shape asked for, with
 * every value of the kind asked for.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "wire.h"

#define C 50

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 3)
    return 0;
  size_t n = 1 + (data[0] >> 1 & 3), g = 1 + data[1] % 8;
  int declared = data[0] >> 3 & 1;
  lmap_npy_values values = (lmap_npy_values)((data[0] >> 4 & 3) % 3);
  size_t piece = data[2] ? 1 + (size_t)data[2] % 64 : size;
  size_t expect[4] = {n, C, g, g};
  size_t floats = n * C * g * g;
  float *dest = malloc(floats * sizeof *dest);
  size_t len = size - 3;
  if (dest == NULL)
    return 0;
  /* NaN everywhere first: a cell the reader never wrote shows. */
  for (size_t i = 0; i < floats; i++)
    dest[i] = NAN;
  lmap_sparsebin_sink s;
  lmap_sparsebin_sink_init(&s, dest, floats, expect, values);
  int rc = declared ? lmap_sparsebin_sink_declare(&s, (long long)len) : 0;
  for (size_t at = 0; rc == 0 && at < len; at += piece) {
    /* Each piece in a buffer of its own size: a read past it is caught. */
    size_t k = len - at < piece ? len - at : piece;
    char *p = malloc(k);
    if (p == NULL)
      break;
    memcpy(p, data + 3 + at, k);
    rc = lmap_sparsebin_feed(&s, p, k);
    free(p);
  }
  if (rc == 0)
    rc = lmap_sparsebin_finish(&s);
  if (rc == 0) {
    if (s.cells_in != n * g * g || s.shape_differs)
      abort();
    for (size_t i = 0; i < floats; i++)
      if ((values != LMAP_NPY_ANY && !isfinite(dest[i])) ||
          (values == LMAP_NPY_PROB && (dest[i] < -1e-6f || dest[i] > 1.001f)))
        abort();
  } else if (rc != LMAP_EPROTOCOL || s.err[0] == '\0') {
    abort();
  }
  free(dest);
  return 0;
}
