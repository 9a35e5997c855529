/*
 * fuzz_wire_json: liblmap's readers of lmapd's JSON answers (client/wire.c)
 * on any bytes: the error envelope, the sparse label items, /v1/info.
 *
 * Input: three bytes, then the answer body.
 *   byte 0 % 3: 0 = an error body, 1 = sparse items, 2 = an info document
 *   byte 1: n = 1 + byte % 16 queries asked
 *   byte 2: G = 1 + byte % 8 (output_size; G * G cells per item)
 * A sparse answer that is accepted must hold exactly what was asked for,
 * with class indices >= 0 and finite values (liblmap hands them to a
 * trainer as soft labels).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "wire.h"

static void check_sparse(const lmap_sparse *s, size_t n, size_t cells) {
  if (s->n != n || s->cells != cells || s->offsets[0] != 0)
    abort();
  for (size_t i = 0; i < n * cells; i++) {
    if (s->offsets[i + 1] < s->offsets[i] || !isfinite(s->rest[i]))
      abort();
    for (size_t e = s->offsets[i]; e < s->offsets[i + 1]; e++)
      if (s->classes[e] < 0 || !isfinite(s->values[e]))
        abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 3)
    return 0;
  int mode = data[0] % 3;
  size_t n = 1 + data[1] % 16, g = 1 + data[2] % 8, cells = g * g;
  size_t len = size - 3;
  /* An exact-size copy, not NUL-terminated, as liblmap's body buffer may
   * be read only up to its length. */
  char *body = malloc(len ? len : 1);
  if (body == NULL)
    return 0;
  memcpy(body, data + 3, len);
  char err[LMAP_WIRE_ERRLEN] = "";
  int rc;
  if (mode == 0) {
    char code[64], message[LMAP_WIRE_ERRLEN], field[64];
    rc = lmap_wire_error(body, len, code, message, field);
    if (rc == 0 &&
        (strlen(code) >= sizeof code || strlen(field) >= sizeof field))
      abort();
  } else if (mode == 1) {
    lmap_sparse *s = NULL;
    rc = lmap_wire_sparse(body, len, n, cells, &s, err);
    if (rc == 0)
      check_sparse(s, n, cells);
    else if (s != NULL || err[0] == '\0')
      abort();
    free(s); /* one block: see lmap_wire_sparse */
  } else {
    lmap_info info;
    rc = lmap_wire_info(body, len, &info, err);
    if (rc != 0 && err[0] == '\0')
      abort();
  }
  if (rc != 0 && rc != LMAP_EPROTOCOL && rc != LMAP_ENOMEM)
    abort();
  free(body);
  return 0;
}
