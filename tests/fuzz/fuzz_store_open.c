/*
 * fuzz_store_open: store_open on any bytes (written to a file, since LMDB
 * maps a file), then what a server does with an open store: a reader, two
 * lookups (an id the seed stores hold and one they do not), and a walk of
 * every chunk as `lmap verify` does, decoding the first record.
 *
 * The seeds are real stores made by the build pipeline. Until stores carry
 * a checksum over their pages, liblmdb trusts every page it reads, and a
 * damaged branch or leaf page can crash inside it: such inputs are
 * expected findings of this target (docs: issue 10, item 3).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "store/store.h"

static char path[600];
static char ids[2][80];

typedef struct walk {
  store_reader *r;
  uint64_t records;
} walk;

static int visit(void *ctx, const char *id, size_t id_len, const uint8_t *rec,
                 size_t rec_len) {
  walk *w = ctx;
  if (id_len < 1 || id_len > LABELMAP_MAX_ID_LEN || rec_len < 1)
    abort();
  (void)id;
  if (w->records++ == 0) {
    labelmap m;
    diag d;
    diag_clear(&d);
    int rc = store_reader_decode(w->r, rec, rec_len, &m, &d);
    if (rc != 0 && rc != LMAP_ECORRUPT)
      abort();
  }
  return 0;
}

static void expect(int rc, int a, int b, int c, const diag *d) {
  if (rc != 0 && ((rc != a && rc != b && rc != c) || d->msg[0] == '\0'))
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (path[0] == '\0') {
    fuzz_path(path, sizeof path, "open.lmap");
    fuzz_store_id(&FUZZ_STORE_F16, 3, ids[0]);
    snprintf(ids[1], sizeof ids[1], "%.64s0", ids[0]);
  }
  fuzz_write_file(path, data, size);
  store *s = NULL;
  diag d;
  diag_clear(&d);
  int rc = store_open(path, &s, &d);
  expect(rc, LMAP_EBADSTORE, LMAP_EVERSION, LMAP_EIO, &d);
  if (rc != 0)
    return 0;
  store_reader *r = NULL;
  rc = store_reader_new(s, &r, &d);
  expect(rc, LMAP_EIO, LMAP_ECORRUPT, LMAP_ENOMEM, &d);
  if (rc == 0) {
    for (int i = 0; i < 2; i++) {
      labelmap m;
      diag_clear(&d);
      rc = store_reader_get(r, ids[i], strlen(ids[i]), &m, &d);
      expect(rc, LMAP_ENOTFOUND, LMAP_ECORRUPT, LMAP_EIO, &d);
    }
    walk w = {r, 0};
    diag_clear(&d);
    rc = store_foreach(s, visit, &w, &d);
    expect(rc, LMAP_ECORRUPT, LMAP_EIO, LMAP_EBADSTORE, &d);
  }
  store_reader_free(r);
  store_close(s);
  return 0;
}
