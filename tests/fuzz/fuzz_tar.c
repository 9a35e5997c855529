/*
 * fuzz_tar: `lmap import` of a tar (any flavour libarchive reads, plain or
 * compressed), from the bytes of the archive to the store: the importer's
 * archive path (members, links, sizes, names -> ids), each member's .pt
 * parse, and the build pipeline behind it.
 *
 * The bytes go to a file, since importer_run reads a path, as `lmap
 * import` does. An import either fails with a code and a message, or
 * leaves a store that opens and holds as many records as it reported; a
 * failed one leaves no file behind (no store, no temporary file).
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"
#include "import/importer.h"
#include "store/store.h"

static char in[600], out[600];

/* Whether the scratch directory holds anything besides the input: a
 * store, or a temporary file of one. */
static int leftovers(void) {
  DIR *dh = opendir(fuzz_tmpdir());
  struct dirent *e;
  int found = 0;
  while (dh && (e = readdir(dh)) != NULL)
    found |= e->d_name[0] != '.' && strcmp(e->d_name, "in.tar") != 0;
  if (dh)
    closedir(dh);
  return found;
}

static int count(void *ctx, const char *id, size_t id_len, const uint8_t *rec,
                 size_t rec_len) {
  (void)id;
  (void)id_len;
  (void)rec;
  (void)rec_len;
  ++*(uint64_t *)ctx;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (in[0] == '\0') {
    fuzz_path(in, sizeof in, "in.tar");
    fuzz_path(out, sizeof out, "tar.lmap");
  }
  fuzz_write_file(in, data, size);
  build_opts o = {.cmd = "import",
                  .input = in,
                  .out = out,
                  .overwrite = 1,
                  .num_classes = 1000,
                  .encoding = CODEC_F16,
                  .level = CODEC_LEVEL_FAST,
                  .threads = 1,
                  .source_desc = in,
                  .extent = "full"};
  build_stats st;
  diag d;
  diag_clear(&d);
  const char *srcs[] = {in};
  int rc = importer_run(srcs, 1, &o, &st, &d);
  if (rc != 0) {
    if (d.msg[0] == '\0' || rc == LMAP_EINTERNAL)
      abort();
    /* Nothing is left behind by a failed import. */
    if (leftovers()) {
      fprintf(stderr, "fuzz_tar: a failed import left files in %s\n",
              fuzz_tmpdir());
      abort();
    }
    return 0;
  }
  store *s;
  uint64_t records = 0;
  if (store_open(out, &s, &d) != 0 || store_foreach(s, count, &records, &d) ||
      records != st.records) {
    fprintf(stderr, "fuzz_tar: the imported store: %s\n", diag_text(&d));
    abort();
  }
  store_close(s);
  unlink(out);
  if (leftovers())
    abort();
  return 0;
}
