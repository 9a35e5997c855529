/*
 * pagecheck: LMDB's header and the page-checksum trailer, read and written
 * with pread() / pwrite() (contract in pagecheck.h).
 */
#include "pagecheck.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "common.h"
#include "store.h"

/* ---- the LMDB header, read before LMDB maps the file ---- */

/*
 * LMDB 0.9's meta page as mdb.c lays it out (MDB_page header, then
 * MDB_meta; size_t-sized fields, data format version 1). lmdb.h does not
 * export it. It is read here for one reason: LMDB itself reports a file
 * that stops inside its second meta page as merely "invalid", and a file
 * cut further on is not noticed at all until a page is touched. Reading
 * the header first names the problem ("truncated") and its size.
 */
typedef struct lmdb_meta_page {
  size_t pgno;
  uint16_t pad, flags, lower, upper;
  uint32_t magic, version;
  void *address;
  size_t mapsize;
  struct {
    uint32_t pad; /* page size, in the free-list DB's record */
    uint16_t flags, depth;
    size_t branch, leaf, overflow, entries, root;
  } dbs[2];
  size_t last_pg;
  size_t txnid;
} lmdb_meta_page;

#define LMDB_P_META 0x08u
#define LMDB_MAGIC 0xBEEFC0DEu
#define LMDB_DATA_VERSION 1u

/* Reads the meta page at `off`; returns 1 if it is a valid one. */
static int read_meta(int fd, off_t off, lmdb_meta_page *m) {
  memset(m, 0, sizeof *m);
  ssize_t r = pread(fd, m, sizeof *m, off);
  return r == (ssize_t)sizeof *m && (m->flags & LMDB_P_META) &&
         m->magic == LMDB_MAGIC;
}

int pagecheck_size(uint64_t size, uint64_t last_pg, uint64_t psize, diag *d) {
  if (psize == 0 || last_pg >= size / psize) {
    /* A header claiming more pages than 64-bit sizes can count is corrupt,
     * whatever the file's length. */
    if (psize == 0 || last_pg >= UINT64_MAX / psize)
      return diag_set(d, LMAP_EBADSTORE,
                      "its LMDB header claims %llu pages of %llu bytes "
                      "(corrupt)",
                      (unsigned long long)last_pg, (unsigned long long)psize);
    return diag_set(d, LMAP_EBADSTORE,
                    "file is %llu bytes but its LMDB header needs %llu "
                    "(truncated?)",
                    (unsigned long long)size,
                    (unsigned long long)((last_pg + 1) * psize));
  }
  return 0;
}

int pagecheck_lmdb_header(int fd, uint64_t size, uint32_t *psize_out,
                          uint64_t *npages_out, diag *d) {
  lmdb_meta_page m0, m1;
  if (size == 0)
    return diag_set(d, LMAP_EBADSTORE, "file is empty, not an LMDB file");
  if (!read_meta(fd, 0, &m0)) {
    /* A file cut inside its first meta page still shows LMDB's magic. */
    if (size < sizeof m0 && size >= 24 && (m0.flags & LMDB_P_META) &&
        m0.magic == LMDB_MAGIC)
      return diag_set(d, LMAP_EBADSTORE,
                      "file is %llu bytes, shorter than its LMDB header "
                      "(truncated?)",
                      (unsigned long long)size);
    return diag_set(d, LMAP_EBADSTORE, "not an LMDB file");
  }
  if (m0.version != LMDB_DATA_VERSION)
    return diag_set(d, LMAP_EBADSTORE,
                    "LMDB data format version %u is not supported (this "
                    "build reads %u)",
                    m0.version, LMDB_DATA_VERSION);
  uint32_t psize = m0.dbs[0].pad;
  if (psize < 256 || psize > 65536 || (psize & (psize - 1)) != 0)
    return diag_set(d, LMAP_EBADSTORE,
                    "not an LMDB file (page size %u in its header)", psize);
  const lmdb_meta_page *m = &m0;
  if (read_meta(fd, (off_t)psize, &m1) && m1.version == LMDB_DATA_VERSION &&
      m1.txnid > m0.txnid) {
    /* LMDB would take the newer page's page size as it stands. */
    if (m1.dbs[0].pad != psize)
      return diag_set(d, LMAP_EBADSTORE,
                      "its LMDB meta pages disagree on the page size (%u, "
                      "%u): corrupt",
                      psize, m1.dbs[0].pad);
    m = &m1;
  }
  /* A file that stops inside the second meta page is checked against the
   * first one alone: it is still too short for it. Both meta pages are
   * always needed. */
  uint64_t last = m->last_pg < 1 ? 1 : (uint64_t)m->last_pg;
  *psize_out = psize;
  *npages_out = last + 1;
  return pagecheck_size(size, last, psize, d);
}

/* ---- page checksums: the trailer ----
 *
 * LMDB trusts its file: a damaged branch or leaf page makes it follow a
 * garbage pointer (SIGSEGV), and it keeps no checksums. So the writer
 * appends, past LMDB's last page, a trailer holding an XXH3-64 checksum of
 * every block of STORE_PAGES_PER_BLOCK pages and a checksum of the trailer
 * itself (docs/STORE_FORMAT.md §7.1), and store_open checks every block
 * with pread() before LMDB maps a byte: page damage anywhere (meta, branch,
 * leaf, overflow pages) is refused, named by block, pages and byte offsets,
 * before it can crash anything. LMDB never reads past its last page, and a
 * read-only environment neither writes nor truncates the file, so the
 * trailer is invisible to it. pread() of a file cut meanwhile returns
 * short, never SIGBUS.
 */

#define TRAILER_MAGIC "LMAPSUMS"
#define TRAILER_END_MAGIC "LMAPEND1"
#define TRAILER_VERSION 1u
#define TRAILER_HASH_XXH3 1u
#define TRAILER_HEAD 40u  /* fields before the block checksums */
#define TRAILER_FIXED 64u /* head + trailer checksum + length + end magic */
#define TRAILER_MAX (64u << 20)
#define BLOCK_MAX (64u << 20) /* the largest block a reader checks */

typedef struct trailer {
  uint32_t psize, ppb;
  uint64_t npages, nblocks;
  uint64_t start; /* file offset of the trailer: npages * psize */
  uint8_t *sums;  /* nblocks little-endian u64, owned */
  uint64_t sum;   /* the trailer's own checksum */
} trailer;

/*
 * Finds and checks the trailer of the open file `fd` of `size` bytes: the
 * end magic in the last 8 bytes, the length before it, then the whole
 * trailer against its own checksum and every field against the others and
 * the file's size. Sets *found to 0 (and returns 0) when the file does not
 * end with the end magic: a store written before page checksums, or one
 * cut in its trailer, which the caller tells apart by the LMDB header.
 * On success `t` owns its checksums (trailer_free).
 */
static int trailer_load(int fd, uint64_t size, trailer *t, int *found,
                        diag *d) {
  uint8_t foot[16];
  memset(t, 0, sizeof *t);
  *found = 0;
  if (size < TRAILER_FIXED)
    return 0;
  if (store_pread_full(fd, foot, sizeof foot, size - sizeof foot) != 0)
    return store_read_fail(d, "the checksum trailer");
  if (memcmp(foot + 8, TRAILER_END_MAGIC, 8) != 0)
    return 0;
  *found = 1;
  uint64_t len = store_le64(foot);
  if (len < TRAILER_FIXED || len > size || len > TRAILER_MAX ||
      (len - TRAILER_FIXED) % 8 != 0)
    return diag_set(d, LMAP_EBADSTORE,
                    "its checksum trailer claims %llu bytes (corrupt)",
                    (unsigned long long)len);
  uint8_t *b = malloc((size_t)len);
  if (b == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory for the checksum trailer");
  int rc = 0;
  uint64_t start = size - len, nb = (len - TRAILER_FIXED) / 8;
  size_t body = TRAILER_HEAD + (size_t)nb * 8;
  if (store_pread_full(fd, b, (size_t)len, start) != 0) {
    rc = store_read_fail(d, "the checksum trailer");
    goto done;
  }
  if (memcmp(b, TRAILER_MAGIC, 8) != 0 ||
      XXH3_64bits(b, body) != store_le64(b + body)) {
    rc = diag_set(d, LMAP_EBADSTORE,
                  "its checksum trailer (bytes %llu..%llu) fails its own "
                  "checksum (damaged trailer)",
                  (unsigned long long)start, (unsigned long long)size - 1);
    goto done;
  }
  uint32_t version = store_le32(b + 8), psize = store_le32(b + 12),
           ppb = store_le32(b + 24), hash = store_le32(b + 28);
  uint64_t npages = store_le64(b + 16), nblocks = store_le64(b + 32);
  if (version != TRAILER_VERSION) {
    rc = diag_set(d, LMAP_EBADSTORE,
                  "checksum trailer version %u is not supported (this lmap "
                  "reads %u)",
                  version, TRAILER_VERSION);
    goto done;
  }
  if (hash != TRAILER_HASH_XXH3 || psize < 256 || psize > 65536 ||
      (psize & (psize - 1)) != 0 || ppb == 0 ||
      (uint64_t)ppb * psize > BLOCK_MAX || nblocks != nb || npages < 2 ||
      npages > start / psize || nblocks != (npages + ppb - 1) / ppb ||
      npages * psize != start) {
    rc = diag_set(d, LMAP_EBADSTORE,
                  "its checksum trailer is inconsistent (%llu pages of %u "
                  "bytes in blocks of %u, %llu checksums, trailer at byte "
                  "%llu): corrupt",
                  (unsigned long long)npages, psize, ppb,
                  (unsigned long long)nblocks, (unsigned long long)start);
    goto done;
  }
  t->psize = psize;
  t->ppb = ppb;
  t->npages = npages;
  t->nblocks = nblocks;
  t->start = start;
  t->sum = store_le64(b + body);
  t->sums = malloc(nblocks ? (size_t)nblocks * 8 : 1);
  if (t->sums == NULL) {
    rc = diag_set(d, LMAP_ENOMEM, "out of memory for the checksum trailer");
    goto done;
  }
  memcpy(t->sums, b + TRAILER_HEAD, (size_t)nblocks * 8);
done:
  free(b);
  return rc;
}

static void trailer_free(trailer *t) {
  free(t->sums);
  t->sums = NULL;
}

/* Checks every block of pages of `fd` against `t`. Calls `bad` (when not
 * NULL) for each damaged block; stops at the first unless `all`. Returns 0,
 * LMAP_EBADSTORE naming the first damaged block and how many there are, or
 * LMAP_EIO / LMAP_ENOMEM. */
static int check_blocks(int fd, const trailer *t, int all,
                        store_bad_block_fn bad, void *ctx, diag *d) {
  uint64_t bsize = (uint64_t)t->ppb * t->psize, nbad = 0, first = 0;
  size_t cap = bsize > STORE_IO_BUF ? (size_t)bsize : STORE_IO_BUF;
  uint8_t *buf = malloc(cap);
  if (buf == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory to check the pages");
  /* The whole file is read once, in order: tell the kernel to read ahead. */
  (void)posix_fadvise(fd, 0, (off_t)t->start, POSIX_FADV_SEQUENTIAL);
  uint64_t per = cap / bsize, blk = 0;
  int rc = 0;
  while (blk < t->nblocks) {
    uint64_t n = t->nblocks - blk < per ? t->nblocks - blk : per;
    uint64_t off = blk * bsize, end = off + n * bsize;
    if (end > t->start)
      end = t->start; /* the last block may hold fewer pages */
    if (store_pread_full(fd, buf, (size_t)(end - off), off) != 0) {
      rc = store_read_fail(d, "the pages");
      goto done;
    }
    for (uint64_t i = 0; i < n; i++, blk++) {
      uint64_t bo = blk * bsize, bl = bo + bsize > end ? end - bo : bsize;
      if (XXH3_64bits(buf + (bo - off), (size_t)bl) ==
          store_le64(t->sums + 8 * blk))
        continue;
      if (nbad++ == 0)
        first = blk;
      if (bad != NULL)
        bad(ctx, blk, blk * t->ppb, bl / t->psize, bo, bl);
      if (!all)
        break;
    }
    if (nbad > 0 && !all)
      break;
  }
  if (nbad > 0) {
    uint64_t bo = first * bsize,
             bl = bo + bsize > t->start ? t->start - bo : bsize;
    char more[64] = "";
    if (nbad > 1)
      snprintf(more, sizeof more, " (%llu damaged blocks in all)",
               (unsigned long long)nbad);
    rc = diag_set(d, LMAP_EBADSTORE,
                  "page damage: block %llu of %llu (pages %llu..%llu, bytes "
                  "%llu..%llu) fails its checksum%s",
                  (unsigned long long)first, (unsigned long long)t->nblocks,
                  (unsigned long long)(first * t->ppb),
                  (unsigned long long)(first * t->ppb + bl / t->psize - 1),
                  (unsigned long long)bo, (unsigned long long)(bo + bl - 1),
                  more);
  }
done:
  free(buf);
  return rc;
}

/* See pagecheck.h. */
int pagecheck_file(int fd, uint64_t size, unsigned flags, int *state,
                   uint64_t *trailer_sum, diag *d) {
  trailer t;
  int found;
  uint32_t psize = 0;
  uint64_t npages = 0;
  int rc = trailer_load(fd, size, &t, &found, d);
  if (rc != 0)
    return rc;
  if (trailer_sum != NULL)
    *trailer_sum = found ? t.sum : 0;
  if (found && !(flags & STORE_OPEN_NO_PAGE_CHECK) &&
      (rc = check_blocks(fd, &t, 0, NULL, NULL, d)) != 0)
    goto done;
  if ((rc = pagecheck_lmdb_header(fd, size, &psize, &npages, d)) != 0)
    goto done;
  if (found) {
    if (psize != t.psize || npages != t.npages)
      rc = diag_set(d, LMAP_EBADSTORE,
                    "its LMDB header says %llu pages of %u bytes but its "
                    "checksum trailer covers %llu pages of %u (corrupt)",
                    (unsigned long long)npages, psize,
                    (unsigned long long)t.npages, t.psize);
    *state = flags & STORE_OPEN_NO_PAGE_CHECK ? STORE_PAGES_TRAILER_ONLY
                                              : STORE_PAGES_CHECKED;
  } else if (size != npages * psize) {
    rc = diag_set(d, LMAP_EBADSTORE,
                  "file is %llu bytes: its LMDB pages end at byte %llu and "
                  "what follows is not a complete checksum trailer "
                  "(truncated? damaged?)",
                  (unsigned long long)size,
                  (unsigned long long)(npages * psize));
  } else if (!(flags & STORE_OPEN_NO_PAGE_CHECK)) {
    rc = diag_set(d, LMAP_EBADSTORE,
                  "has no checksum trailer (written by an lmap before page "
                  "checksums, or truncated?): its pages cannot be checked "
                  "and a damaged one could crash its readers; add them with "
                  "`lmap verify STORE --add-checksums NEW`, rebuild it with "
                  "this lmap, or open it with page checks off");
  } else {
    *state = STORE_PAGES_NONE;
  }
done:
  trailer_free(&t);
  return rc;
}

int store_check_file(const char *path, store_bad_block_fn bad, void *ctx,
                     diag *d) {
  struct stat st;
  trailer t;
  int found = 0, state, rc;
  memset(&t, 0, sizeof t);
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0 || fstat(fd, &st) != 0) {
    rc = diag_set(d, LMAP_EIO, "cannot open: %s", strerror(errno));
    goto done;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = diag_set(d, LMAP_EBADSTORE, "not a regular file");
    goto done;
  }
  uint64_t size = (uint64_t)st.st_size;
  if ((rc = trailer_load(fd, size, &t, &found, d)) != 0)
    goto done;
  if (!found) {
    /* pagecheck_file says why there is none: not an LMDB file, a store cut in
     * its trailer, or one written before page checksums. */
    rc = pagecheck_file(fd, size, 0, &state, NULL, d);
    goto done;
  }
  if ((rc = check_blocks(fd, &t, 1, bad, ctx, d)) != 0)
    goto done;
  rc = pagecheck_file(fd, size, STORE_OPEN_NO_PAGE_CHECK, &state, NULL, d);
done:
  if (fd >= 0)
    close(fd);
  trailer_free(&t);
  if (rc != 0)
    diag_prefix(d, path);
  return rc;
}

/* Appends the checksum trailer (docs/STORE_FORMAT.md §7.1) to `fd`, whose
 * LMDB pages end at `pages_end`: reads the pages back (they are in the page
 * cache: the file was just written) and checksums each block. */
int pagecheck_append_trailer(const char *name, int fd, uint64_t pages_end,
                             uint32_t psize, diag *d) {
  uint64_t npages = pages_end / psize,
           bsize = (uint64_t)STORE_PAGES_PER_BLOCK * psize;
  uint64_t nblocks =
      (npages + STORE_PAGES_PER_BLOCK - 1) / STORE_PAGES_PER_BLOCK;
  size_t len = TRAILER_FIXED + (size_t)nblocks * 8,
         body = TRAILER_HEAD + (size_t)nblocks * 8;
  size_t cap = bsize > STORE_IO_BUF ? (size_t)bsize : STORE_IO_BUF;
  uint8_t *t = calloc(1, len), *buf = malloc(cap);
  int rc = 0;
  if (t == NULL || buf == NULL || len > TRAILER_MAX) {
    rc = diag_set(d, LMAP_ENOMEM, "out of memory for the checksum trailer");
    goto done;
  }
  memcpy(t, TRAILER_MAGIC, 8);
  store_put_le32(t + 8, TRAILER_VERSION);
  store_put_le32(t + 12, psize);
  store_put_le64(t + 16, npages);
  store_put_le32(t + 24, STORE_PAGES_PER_BLOCK);
  store_put_le32(t + 28, TRAILER_HASH_XXH3);
  store_put_le64(t + 32, nblocks);
  uint64_t per = cap / bsize;
  for (uint64_t blk = 0; blk < nblocks;) {
    uint64_t off = blk * bsize, end = off + per * bsize;
    if (end > pages_end)
      end = pages_end;
    if (store_pread_full(fd, buf, (size_t)(end - off), off) != 0) {
      rc = diag_set(d, LMAP_EIO, "%s: cannot read back its pages: %s", name,
                    errno ? strerror(errno) : "it ends early");
      goto done;
    }
    for (uint64_t o = off; o < end; o += bsize, blk++) {
      uint64_t bl = end - o < bsize ? end - o : bsize;
      store_put_le64(t + TRAILER_HEAD + 8 * blk,
                     XXH3_64bits(buf + (o - off), bl));
    }
  }
  store_put_le64(t + body, XXH3_64bits(t, body));
  store_put_le64(t + body + 8, len);
  memcpy(t + body + 16, TRAILER_END_MAGIC, 8);
  for (size_t o = 0; o < len;) {
    ssize_t k = pwrite(fd, t + o, len - o, (off_t)(pages_end + o));
    if (k < 0 && errno == EINTR)
      continue;
    if (k < 0) {
      rc = diag_set(d, LMAP_EIO, "%s: cannot write the checksum trailer: %s",
                    name, strerror(errno));
      goto done;
    }
    o += (size_t)k;
  }
done:
  free(t);
  free(buf);
  return rc;
}
