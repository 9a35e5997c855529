/*
 * libFuzzer entry point for ptfile_parse (not built by default).
 *
 * Any byte string must parse or fail with a malformed-input, range or
 * out-of-memory code, never crash or read outside the input; a success
 * must leave a map within the LABELMAP_MAX_* bounds. One ptfile_out is
 * reused across inputs, as the importer does. Build and run from the
 * repository root, seeding with the fixtures:
 *
 *   clang -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -g -O1 \
 *     -fsanitize=fuzzer,address,undefined -Iinclude -Iserver \
 *     tests/fuzz/fuzz_ptfile.c server/ptfile.c server/diag.c client/error.c \
 *     $(pkg-config --cflags --libs libarchive) -lm -lpthread -o fuzz_ptfile
 *   mkdir -p corpus && cp tests/vectors/pt/?*.pt corpus/
 *   ./fuzz_ptfile -max_len=65536 corpus
 */
#include <stdint.h>
#include <stdlib.h>

#include "ptfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
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
          !(out.map.scores[i] == out.map.scores[i]))
        abort();
  } else if ((rc != LMAP_EFORMAT && rc != LMAP_ERANGE && rc != LMAP_ENOMEM) ||
             d.code != rc || d.msg[0] == '\0') {
    abort();
  }
  return 0;
}
