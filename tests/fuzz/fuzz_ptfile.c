/*
 * fuzz_ptfile: the .pt reader (ptfile_parse) on any bytes: torch's zip
 * format (read through libarchive) and the legacy pickle stream.
 *
 * Any byte string must parse or fail with a malformed-input, range or
 * out-of-memory code and a message, never crash or read outside the
 * input; a success must leave a map within the LABELMAP_MAX_* bounds with
 * finite scores and integral class indices. One ptfile_out is reused
 * across inputs, as the importer's workers do.
 *
 * A zip input is read a second time with the CRC-32 of every entry
 * recomputed in both of its headers: otherwise almost every mutation of
 * data.pkl or of a storage would stop at the checksum, and the pickle
 * machine behind it would only ever see the legacy format's mutations.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "import/ptfile.h"

static void parse(const uint8_t *data, size_t size) {
  static ptfile_out out;
  diag d;
  diag_clear(&d);
  int rc = ptfile_parse(data, size, &out, &d);
  if (rc == 0) {
    size_t n = labelmap_entries(&out.map);
    if (out.map.k < 1 || out.map.k > LABELMAP_MAX_K || out.map.h < 1 ||
        out.map.h > LABELMAP_MAX_SIDE || out.map.w < 1 ||
        out.map.w > LABELMAP_MAX_SIDE || n > LABELMAP_MAX_ENTRIES ||
        n > out.cap)
      abort();
    for (size_t i = 0; i < n; i++)
      if (out.map.classes[i] >= LABELMAP_MAX_CLASSES ||
          !(out.map.scores[i] == out.map.scores[i]) ||
          out.map.scores[i] - out.map.scores[i] != 0)
        abort();
  } else if ((rc != LMAP_EFORMAT && rc != LMAP_ERANGE && rc != LMAP_ENOMEM) ||
             d.code != rc || d.msg[0] == '\0') {
    abort();
  }
}

static uint32_t crc32(const uint8_t *p, size_t n) {
  static uint32_t table[256];
  if (table[1] == 0)
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++)
        c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; i++)
    c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

static uint32_t rd(const uint8_t *p, int n) {
  uint32_t v = 0;
  for (int i = n - 1; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

static void wr32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

/* Recomputes the CRC-32 of every stored entry (torch writes them stored)
 * in its local header and in the central directory entry that points at
 * it. Returns whether anything was a zip entry. */
static int fix_crcs(uint8_t *z, size_t n) {
  int any = 0;
  for (size_t c = 0; c + 46 <= n; c++) {
    if (memcmp(z + c, "PK\1\2", 4) != 0)
      continue;
    size_t local = rd(z + c + 42, 4);
    if (local > n || n - local < 30 || memcmp(z + local, "PK\3\4", 4) != 0 ||
        rd(z + local + 8, 2) != 0)
      continue;
    size_t at = local + 30 + rd(z + local + 26, 2) + rd(z + local + 28, 2);
    size_t size = rd(z + c + 20, 4);
    if (at > n || size > n - at)
      continue;
    uint32_t crc = crc32(z + at, size);
    wr32(z + local + 14, crc);
    wr32(z + c + 16, crc);
    any = 1;
  }
  return any;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  parse(data, size);
  if (size < 4 || memcmp(data, "PK\3\4", 4) != 0)
    return 0;
  uint8_t *copy = malloc(size);
  if (copy == NULL)
    return 0;
  memcpy(copy, data, size);
  if (fix_crcs(copy, size) && memcmp(copy, data, size) != 0)
    parse(copy, size);
  free(copy);
  return 0;
}
