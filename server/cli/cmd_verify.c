/* lmap verify: every record decodes, passes its checksum and is valid. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "store/store.h"

typedef struct verify_ctx {
  const char *cmd;
  store_reader *r;
  uint32_t num_classes;
  uint64_t records, bad;
  uint64_t bytes;
} verify_ctx;

static int check_record(void *p, const char *id, size_t id_len,
                        const uint8_t *rec, size_t rec_len) {
  verify_ctx *v = p;
  diag d;
  diag_clear(&d);
  labelmap m;
  v->records++;
  v->bytes += rec_len;
  int rc = labelmap_id_check(id, id_len, &d);
  if (rc == 0)
    rc = store_reader_decode(v->r, rec, rec_len, &m, &d);
  if (rc == 0)
    rc = labelmap_validate(&m, v->num_classes, &d);
  if (rc) {
    v->bad++;
    if (v->bad <= 20)
      fprintf(stderr, "lmap %s: record '%.*s': %s\n", v->cmd, (int)id_len, id,
              diag_text(&d));
  }
  return 0;
}

/* The damaged blocks of pages seen so far, for messages under `cmd`. */
typedef struct bad_blocks {
  const char *cmd;
  uint64_t n;
} bad_blocks;

/* Prints each damaged block of pages (the first 20). */
static void bad_block(void *ctx, uint64_t block, uint64_t first_page,
                      uint64_t pages, uint64_t offset, uint64_t len) {
  bad_blocks *b = ctx;
  if (++b->n <= 20)
    fprintf(stderr,
            "lmap %s: block %llu: pages %llu..%llu (bytes %llu..%llu) "
            "fail their checksum\n",
            b->cmd, (unsigned long long)block, (unsigned long long)first_page,
            (unsigned long long)(first_page + pages - 1),
            (unsigned long long)offset, (unsigned long long)(offset + len - 1));
}

int cli_verify(const char *cmd, const char *path, int mode) {
  diag d;
  diag_clear(&d);
  store *s;
  bad_blocks blocks = {cmd, 0};
  if (mode == VERIFY_PAGES) {
    /* Every page first, without LMDB: a damaged page must not reach it. */
    if (store_check_file(path, bad_block, &blocks, &d))
      return cli_fail(cmd, &d);
  }
  /* Pages just checked, and read once: no need to read them again (or,
   * for VERIFY_NO_CHECKSUMS, none to check). */
  if (store_open_flags(path, STORE_OPEN_NO_PAGE_CHECK, &s, &d))
    return cli_fail(cmd, &d);
  const store_meta *meta = store_get_meta(s);
  if (mode == VERIFY_NO_CHECKSUMS && meta->page_check != STORE_PAGES_NONE) {
    store_close(s);
    diag_set(&d, LMAP_EINVAL, "%s: already has page checksums", path);
    return cli_fail(cmd, &d);
  }
  verify_ctx v = {.cmd = cmd, .num_classes = meta->shape.num_classes};
  int rc = store_reader_new(s, &v.r, &d);
  if (rc == 0)
    rc = store_foreach(s, check_record, &v, &d);
  store_reader_free(v.r);
  if (rc) {
    store_close(s);
    return cli_fail(cmd, &d);
  }
  int ok = v.bad == 0 && v.records == meta->record_count;
  if (v.records != meta->record_count)
    fprintf(stderr, "lmap %s: %s: %llu records found, metadata says %llu\n",
            cmd, path, (unsigned long long)v.records,
            (unsigned long long)meta->record_count);
  printf("%s: %s: %llu records, %llu bad, %.0f bytes/record, file %llu bytes\n",
         path, ok ? "OK" : "FAILED", (unsigned long long)v.records,
         (unsigned long long)v.bad,
         v.records ? (double)v.bytes / (double)v.records : 0.0,
         (unsigned long long)store_file_size(s));
  store_close(s);
  return ok ? EXIT_OK : EXIT_FAIL;
}

int cmd_verify(int argc, char **argv) {
  const char *path = NULL, *add_to = NULL;
  int force = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      fputs("usage: lmap verify STORE [--add-checksums NEW [--force]]\n\n"
            "Checks every page of the file against its checksum (naming each\n"
            "damaged block, its pages and byte offsets) before LMDB reads it,\n"
            "then decodes every record and checks its checksum, size, values\n"
            "(finite scores, class indices below C, no class twice in a cell)\n"
            "and id, and that the count matches the metadata. A store without\n"
            "page checksums (written by an older lmap) fails. Exit 1 on any\n"
            "problem.\n\n"
            "options:\n"
            "      --add-checksums NEW  for a store without page checksums:\n"
            "                           check it as above (its pages\n"
            "                           trusted: LMDB may crash on a damaged\n"
            "                           one), then write a copy with page\n"
            "                           checksums to NEW (may be STORE\n"
            "                           itself, with --force)\n"
            "  -f, --force              replace NEW if it exists\n",
            stdout);
      return EXIT_OK;
    }
    if (strcmp(argv[i], "--add-checksums") == 0) {
      if (++i == argc)
        return cli_usage("verify", "--add-checksums needs a file name");
      add_to = argv[i];
    } else if (strcmp(argv[i], "--force") == 0 || strcmp(argv[i], "-f") == 0) {
      force = 1;
    } else if (argv[i][0] == '-' || path != NULL) {
      return cli_usage("verify", "unexpected argument '%s'", argv[i]);
    } else {
      path = argv[i];
    }
  }
  if (path == NULL)
    return cli_usage("verify", "expected exactly one STORE");
  if (force && add_to == NULL)
    return cli_usage("verify", "--force goes with --add-checksums");
  int rc = cli_verify("verify", path,
                      add_to == NULL ? VERIFY_PAGES : VERIFY_NO_CHECKSUMS);
  if (rc != EXIT_OK || add_to == NULL)
    return rc;
  diag d;
  diag_clear(&d);
  if (store_add_checksums(path, add_to, force, &d))
    return cli_fail("verify", &d);
  printf("%s: written with page checksums\n", add_to);
  return EXIT_OK;
}
