/*
 * fuzz_wire_npy: liblmap's streaming .npy reader (client/wire.c) on any
 * bytes, fed in pieces as libcurl hands them over.
 *
 * Input: three bytes, then the answer body.
 *   byte 0: bit 0 = the shape asked for is [n, C] (output_size 1) or
 *           [n, C, G, G]; bits 1-2: n = 1..4
 *   byte 1: G = 1 + byte % 8
 *   byte 2: the size of the pieces, 1 + byte % 64, or the whole body at
 *           once when it is 0
 * C is 50, the classes of the store the seeds were answered from. An
 * accepted answer must have filled the caller's buffer exactly, with the
 * shape that was asked for.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "wire.h"

#define C 50

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 3)
    return 0;
  int four = data[0] & 1;
  size_t n = 1 + (data[0] >> 1 & 3), g = 1 + data[1] % 8;
  size_t piece = data[2] ? 1 + (size_t)data[2] % 64 : size;
  size_t expect[4] = {n, C, g, g};
  size_t floats = n * C * (four ? g * g : 1);
  float *dest = malloc(floats * sizeof *dest);
  char *body = malloc(size - 3 ? size - 3 : 1);
  if (dest == NULL || body == NULL) {
    free(dest);
    free(body);
    return 0;
  }
  size_t len = size - 3;
  memcpy(body, data + 3, len);
  lmap_npy_sink s;
  lmap_npy_sink_init(&s, dest, floats, expect, four ? 4 : 2);
  int rc = 0;
  for (size_t at = 0; rc == 0 && at < len; at += piece) {
    /* Each piece in a buffer of its own size: a read past it is caught. */
    size_t k = len - at < piece ? len - at : piece;
    char *p = malloc(k);
    if (p == NULL)
      break;
    memcpy(p, body + at, k);
    rc = lmap_npy_feed(&s, p, k);
    free(p);
  }
  if (rc == 0)
    rc = lmap_npy_finish(&s);
  if (rc == 0) {
    if (s.data_off != floats * sizeof(float) || s.ndim != (four ? 4 : 2))
      abort();
    for (int i = 0; i < s.ndim; i++)
      if (s.shape[i] != expect[i])
        abort();
  } else if ((rc != LMAP_EPROTOCOL && rc != LMAP_ERANGE && rc != LMAP_ENOMEM) ||
             s.err[0] == '\0') {
    abort();
  }
  lmap_npy_sink_free(&s);
  free(dest);
  free(body);
  return 0;
}
