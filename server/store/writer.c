/*
 * store: the LMDB file that holds one label-map dataset (contract in
 * store.h, layout in docs/STORE_FORMAT.md). The only module that includes
 * lmdb.h.
 *
 * Why chunks. LMDB stores one value per B-tree node. A 2 KB record fits
 * only twice in a 4 KiB leaf page, a record above about 2,015 bytes takes
 * a 4 KiB overflow page of its own, and ids arriving in random order leave
 * leaves half empty: 4,164 file bytes for a 1,990-byte record. So each
 * "maps" value is a chunk of consecutive records (in id order) behind a
 * directory, keyed by its first id; a chunk spans overflow pages that it
 * fills, and only its last page is partly empty. The writer picks each
 * chunk's length among CHUNK_MIN..CHUNK_MAX records to leave that last page
 * as full as it can.
 *
 * Reading. A store is opened read-only with MDB_NOLOCK (no lock file, no
 * reader table: the file never changes while served) and MDB_NORDAHEAD
 * (lookups are random). LMDB maps the file and trusts it: a page past the
 * end of a truncated file raises SIGBUS when touched, and LMDB has no
 * checksums. So store_open proves, before LMDB touches anything but the
 * two meta pages it reads with pread(), that the file is a regular file,
 * an LMDB file, and at least as long as its newest meta page says; then it
 * checks the lmap metadata and the chunk count against the maps database
 * (without reading any chunk). A lookup finds the chunk whose first id is
 * the greatest not above the id (one cursor positioning), checks the
 * chunk's header, region sizes and directory checksum, and binary-searches
 * the directory in place. Every directory field is checked against the
 * value's length before it is used, so a damaged chunk is LMAP_ECORRUPT and
 * never a read outside the value. Records carry their own checksum
 * (codec).
 *
 * Writing. store_writer_put appends each record to a spill file beside the
 * target and keeps (id, offset, length) in memory with a hash set of the
 * ids, so a duplicate is refused at once. Commit sorts that index, packs
 * the chunks straight into LMDB's reserved space (MDB_APPEND | MDB_RESERVE:
 * appending in key order fills every branch and leaf page), syncs the new
 * file, pads it to the length its header claims and renames it into place,
 * so a store path only ever names a complete store. Every failure path
 * removes both temporary files.
 */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <jansson.h>
#include <lmdb.h>
#include <xxhash.h>

#define META_KEY "lmap.meta"
#define DICT_KEY "lmap.dict"
#define CLASSES_KEY "lmap.classes"
#define LAYOUT_KEY "lmap.layout"
#define DB_META "meta"
#define DB_MAPS "maps"

/* Caps on metadata values, checked before copying them out of the map (and
 * by the writer before accepting them). */
#define META_MAX (1u << 20)
#define DICT_MAX (16u << 20)
#define CLASSES_MAX (512u << 20)
#define LAYOUT_MAX 4096u

/* Chunk format (docs/STORE_FORMAT.md §4). */
#define CHUNK_VERSION 1u
#define CHUNK_HEADER 8u
#define CHUNK_MAX_SUFFIXES 65535u /* id_end entries are 16-bit */

/* Chunk sizes the writer packs (measured in docs/STORE_FORMAT.md §4.4): up
 * to CHUNK_MAX records, the length among CHUNK_MIN..CHUNK_MAX that leaves
 * the least of the last overflow page empty, and no more than
 * CHUNK_MAX_BYTES unless a single record is larger. Readers accept any
 * chunk length; -DCHUNK_MAX=.. -DCHUNK_MIN=.. builds a writer that packs
 * others, to measure them. */
#ifndef CHUNK_MAX
#define CHUNK_MAX 128u
#endif
#ifndef CHUNK_MIN
#define CHUNK_MIN 32u
#endif
_Static_assert(CHUNK_MIN >= 1 && CHUNK_MIN <= CHUNK_MAX && CHUNK_MAX <= 65535,
               "chunk lengths must fit the 16-bit record count");
#define CHUNK_MAX_BYTES (4u << 20)

/* Writer: spill buffer, id arena blocks, the most records a writer
 * indexes (the hash set holds 32-bit record numbers), and how much chunk
 * data one write transaction carries before it commits (far below LMDB's
 * dirty-page limit). */
#define SPILL_BUF (1u << 20)
#define ARENA_BLOCK (1u << 20)
#define WRITER_MAX_RECORDS 0x7FFFFFFFu
#define WRITE_BATCH_BYTES (16u << 20)

/* ---- helpers ---- */

/* Renders an id for a message: printable ASCII as is, other bytes as \xHH,
 * cut after 64 input bytes. */
static const char *id_text(char out[300], const char *id, size_t len) {
  size_t o = 0;
  for (size_t i = 0; i < len && i < 64; i++) {
    unsigned char ch = (unsigned char)id[i];
    if (ch >= 0x20 && ch < 0x7F && ch != '\\' && ch != '\'')
      out[o++] = (char)ch;
    else
      o += (size_t)snprintf(out + o, 5, "\\x%02x", ch);
  }
  if (len > 64) {
    memcpy(out + o, "...", 3);
    o += 3;
  }
  out[o] = '\0';
  return out;
}

/* What the store itself needs of a key: 1 to LABELMAP_MAX_ID_LEN bytes,
 * no NUL. The pattern of an image id (labelmap_id_check) is checked where
 * ids come in (import, the API, the CLI): the store is a map of byte
 * keys and does not depend on it. */
static int check_id(const char *id, size_t len, diag *d) {
  char t[300];
  if (len == 0)
    return diag_set(d, LMAP_EBADID, "id is empty");
  if (len > LABELMAP_MAX_ID_LEN)
    return diag_set(d, LMAP_EBADID, "id '%s' is %zu bytes; the limit is %u",
                    id_text(t, id, len), len, LABELMAP_MAX_ID_LEN);
  if (memchr(id, '\0', len) != NULL)
    return diag_set(d, LMAP_EBADID, "id '%s' contains a NUL byte",
                    id_text(t, id, len));
  return 0;
}

/* Keeps the message in `d` and changes its code (a lower layer's error
 * becomes a property of the store). */
static int recode(diag *d, int code) {
  if (d != NULL)
    d->code = code;
  return code;
}

static char *dup_bytes(const void *p, size_t n) {
  char *s = malloc(n + 1);
  if (s != NULL) {
    memcpy(s, p, n);
    s[n] = '\0';
  }
  return s;
}

/* LMDB's default key order: bytewise, a prefix before its extensions. The
 * writer sorts with it so that chunks append in the order LMDB keeps. */
static int id_cmp(const void *a, size_t alen, const void *b, size_t blen) {
  size_t m = alen < blen ? alen : blen;
  int c = m ? memcmp(a, b, m) : 0;
  if (c != 0)
    return c;
  return alen < blen ? -1 : alen > blen;
}

/* Chunk integers are little-endian whatever the host, read bytewise so
 * that no directory field needs alignment (compilers make these single
 * loads on little-endian hosts). */
static uint32_t le16(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}

static uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

static void put_le16(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static void put_le32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

/* ---- the SIGBUS guard ----
 *
 * A store is read through LMDB's shared read-only mapping of the file. If
 * the file shrinks while mapped (a truncation, a `cp` over the served
 * path), touching a page past its new end raises SIGBUS, whose default
 * action kills the whole process, every worker with it. So every access
 * to the mapping runs inside a guarded region: `guarded()` sets a
 * per-thread recovery point, and a process-wide SIGBUS handler, installed
 * once by store_open, jumps back to it. The read then fails with
 * LMAP_EBADSTORE and the caller's state is rebuilt (see reader_renew).
 *
 * Why this is safe here. SIGBUS from a memory access is delivered to the
 * faulting thread, and the recovery point is thread-local (initial-exec
 * TLS: reading it is a plain load, async-signal-safe). Inside a guarded
 * region the only code that touches the mapping is LMDB's read path
 * (mdb_txn_begin reading the meta pages, mdb_cursor_get walking pages),
 * the chunk parser and codec_decode; none of them allocates or takes a
 * lock there (MDB_NOLOCK read-only transactions hold no lock and no
 * reader slot; zstd decompresses a whole frame into a caller buffer), so
 * the jump abandons no lock and no heap state, only the transaction's,
 * the cursor's and the decoder's own progress, which the caller throws
 * away: the reader's transaction and cursor are begun anew and its codec
 * context is rebuilt. The handler runs with SA_NODEFER, so SIGBUS is not
 * left blocked after the jump, and sigsetjmp need not save the signal
 * mask (no system call per lookup). A SIGBUS outside any guarded region
 * is not ours: the previous action is put back and the signal delivered
 * to it (the fault repeats on return; a SIGBUS sent by kill() is raised
 * again), so a real bug still dumps core where it happened.
 */

#define GUARD_FAULT INT_MIN /* guarded()'s result when a SIGBUS hit */

static _Thread_local sigjmp_buf *volatile guard_point;
static struct sigaction guard_prev;
static pthread_once_t guard_once = PTHREAD_ONCE_INIT;

static void on_sigbus(int sig, siginfo_t *si, void *uc) {
  sigjmp_buf *j = guard_point;
  if (j != NULL) {
    guard_point = NULL;
    siglongjmp(*j, 1);
  }
  if ((guard_prev.sa_flags & SA_SIGINFO) && guard_prev.sa_sigaction != NULL) {
    guard_prev.sa_sigaction(sig, si, uc);
    return;
  }
  if (guard_prev.sa_handler != SIG_DFL && guard_prev.sa_handler != SIG_IGN) {
    guard_prev.sa_handler(sig);
    return;
  }
  /* Default action: a SIGBUS from the hardware repeats when the faulting
   * instruction runs again; one sent by a process would not. */
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGBUS, &dfl, NULL);
  if (si == NULL || si->si_code <= 0)
    raise(SIGBUS);
}

static void guard_install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_sigbus;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGBUS, &sa, &guard_prev);
}

/* Runs fn(arg) with a recovery point for SIGBUS. Returns fn's result, or
 * GUARD_FAULT if fn was abandoned because the mapping faulted. Regions
 * nest (store_foreach's visitor may decode): the innermost catches. */
static int guarded(int (*fn)(void *), void *arg) {
  sigjmp_buf jb;
  sigjmp_buf *prev = guard_point;
  if (sigsetjmp(jb, 0) != 0) {
    guard_point = prev;
    return GUARD_FAULT;
  }
  guard_point = &jb;
  int rc = fn(arg);
  guard_point = prev;
  return rc;
}

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

/* Refuses a file of `size` bytes shorter than pages 0..last_pg of `psize`
 * bytes each. */
static int check_size(uint64_t size, uint64_t last_pg, uint64_t psize,
                      diag *d) {
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

/* Checks, with pread() only, that the open file `fd` of `size` bytes is an
 * LMDB file whose newest meta page fits in it. */
static int precheck_lmdb(int fd, uint64_t size, uint32_t *psize_out,
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
  return check_size(size, last, psize, d);
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
#define CHECK_BUF (1u << 20)
#define BLOCK_MAX (64u << 20) /* the largest block a reader checks */

typedef struct trailer {
  uint32_t psize, ppb;
  uint64_t npages, nblocks;
  uint64_t start; /* file offset of the trailer: npages * psize */
  uint8_t *sums;  /* nblocks little-endian u64, owned */
} trailer;

static uint64_t le64(const uint8_t *p) {
  return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static void put_le64(uint8_t *p, uint64_t v) {
  put_le32(p, (uint32_t)v);
  put_le32(p + 4, (uint32_t)(v >> 32));
}

/* Reads exactly `n` bytes at `off` of `fd`; 0, or -1 with errno set (0 when
 * the file ends first). */
static int pread_exact(int fd, void *buf, size_t n, uint64_t off) {
  uint8_t *p = buf;
  while (n > 0) {
    ssize_t k = pread(fd, p, n, (off_t)off);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0) {
      if (k == 0)
        errno = 0;
      return -1;
    }
    p += k;
    n -= (size_t)k;
    off += (uint64_t)k;
  }
  return 0;
}

static int read_fail(diag *d, const char *what) {
  if (errno == 0)
    return diag_set(d, LMAP_EBADSTORE,
                    "the file ended while reading %s (truncated meanwhile?)",
                    what);
  return diag_set(d, LMAP_EIO, "cannot read %s: %s", what, strerror(errno));
}

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
  if (pread_exact(fd, foot, sizeof foot, size - sizeof foot) != 0)
    return read_fail(d, "the checksum trailer");
  if (memcmp(foot + 8, TRAILER_END_MAGIC, 8) != 0)
    return 0;
  *found = 1;
  uint64_t len = le64(foot);
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
  if (pread_exact(fd, b, (size_t)len, start) != 0) {
    rc = read_fail(d, "the checksum trailer");
    goto done;
  }
  if (memcmp(b, TRAILER_MAGIC, 8) != 0 ||
      XXH3_64bits(b, body) != le64(b + body)) {
    rc = diag_set(d, LMAP_EBADSTORE,
                  "its checksum trailer (bytes %llu..%llu) fails its own "
                  "checksum (damaged trailer)",
                  (unsigned long long)start, (unsigned long long)size - 1);
    goto done;
  }
  uint32_t version = le32(b + 8), psize = le32(b + 12), ppb = le32(b + 24),
           hash = le32(b + 28);
  uint64_t npages = le64(b + 16), nblocks = le64(b + 32);
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
  size_t cap = bsize > CHECK_BUF ? (size_t)bsize : CHECK_BUF;
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
    if (pread_exact(fd, buf, (size_t)(end - off), off) != 0) {
      rc = read_fail(d, "the pages");
      goto done;
    }
    for (uint64_t i = 0; i < n; i++, blk++) {
      uint64_t bo = blk * bsize, bl = bo + bsize > end ? end - bo : bsize;
      if (XXH3_64bits(buf + (bo - off), (size_t)bl) == le64(t->sums + 8 * blk))
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

/*
 * Everything store_open proves with pread() before LMDB maps the file of
 * `size` bytes: the trailer and its own checksum, every block of pages
 * (unless STORE_OPEN_NO_PAGE_CHECK), LMDB's meta pages and the file's
 * length, and that the trailer covers exactly LMDB's pages. A file with
 * no trailer is a store written before page checksums if it ends where
 * LMDB's pages end (opened only with STORE_OPEN_NO_PAGE_CHECK), and a
 * store cut in its trailer otherwise. Sets *state (STORE_PAGES_*).
 */
static int precheck(int fd, uint64_t size, unsigned flags, int *state,
                    diag *d) {
  trailer t;
  int found;
  uint32_t psize = 0;
  uint64_t npages = 0;
  int rc = trailer_load(fd, size, &t, &found, d);
  if (rc != 0)
    return rc;
  if (found && !(flags & STORE_OPEN_NO_PAGE_CHECK) &&
      (rc = check_blocks(fd, &t, 0, NULL, NULL, d)) != 0)
    goto done;
  if ((rc = precheck_lmdb(fd, size, &psize, &npages, d)) != 0)
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
    /* precheck says why there is none: not an LMDB file, a store cut in
     * its trailer, or one written before page checksums. */
    rc = precheck(fd, size, 0, &state, d);
    goto done;
  }
  if ((rc = check_blocks(fd, &t, 1, bad, ctx, d)) != 0)
    goto done;
  rc = precheck(fd, size, STORE_OPEN_NO_PAGE_CHECK, &state, d);
done:
  if (fd >= 0)
    close(fd);
  trailer_free(&t);
  if (rc != 0)
    diag_prefix(d, path);
  return rc;
}

/* ---- metadata ---- */

struct store {
  char *path;
  MDB_env *env;
  MDB_dbi maps;
  store_meta meta;
  char *meta_json;    /* NUL-terminated copy of "lmap.meta" */
  char *classes_json; /* NUL-terminated copy of "lmap.classes", or NULL */
  void *dict;         /* copy of "lmap.dict", NULL when empty */
  size_t dict_len;
  uint64_t file_size;
  struct timespec mtime; /* at open, for store_file_check */
};

/* Reads integer field `key` of `root` (the document called `doc` in
 * messages) into *out, within lo..hi. */
static int meta_uint(json_t *root, const char *doc, const char *key,
                     uint64_t lo, uint64_t hi, uint64_t *out, diag *d) {
  json_t *v = json_object_get(root, key);
  if (v == NULL)
    return diag_field(d, LMAP_EBADSTORE, key, "%s has no \"%s\" field", doc,
                      key);
  if (!json_is_integer(v))
    return diag_field(d, LMAP_EBADSTORE, key,
                      "%s field \"%s\" is not an integer", doc, key);
  json_int_t x = json_integer_value(v);
  if (x < 0 || (uint64_t)x < lo || (uint64_t)x > hi)
    return diag_field(
        d, LMAP_EBADSTORE, key, "%s field \"%s\" is %lld, outside %llu..%llu",
        doc, key, (long long)x, (unsigned long long)lo, (unsigned long long)hi);
  *out = (uint64_t)x;
  return 0;
}

static int meta_string(json_t *root, const char *key, const char **out,
                       diag *d) {
  json_t *v = json_object_get(root, key);
  if (v == NULL)
    return diag_field(d, LMAP_EBADSTORE, key, "metadata has no \"%s\" field",
                      key);
  if (!json_is_string(v))
    return diag_field(d, LMAP_EBADSTORE, key,
                      "metadata field \"%s\" is not a string", key);
  *out = json_string_value(v);
  return 0;
}

/* Parses the metadata document into `m`. The format and its version come
 * first, so that a store of another version is reported as such rather
 * than by whichever field its version renamed. */
static int parse_meta(const char *text, size_t len, store_meta *m,
                      int *class_names_flag, diag *d) {
  json_error_t err;
  json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
  if (root == NULL)
    return diag_set(d, LMAP_EBADSTORE,
                    "metadata is not valid JSON: %s (line %d, column %d)",
                    err.text, err.line, err.column);
  int rc;
  const char *s = NULL;
  uint64_t v, k, h, w, c;
  json_t *cn;
  if (!json_is_object(root)) {
    rc = diag_set(d, LMAP_EBADSTORE, "metadata is not a JSON object");
    goto done;
  }
  if ((rc = meta_string(root, "format", &s, d)) != 0)
    goto done;
  if (strcmp(s, "lmap-store") != 0) {
    rc = diag_field(d, LMAP_EBADSTORE, "format",
                    "metadata format is \"%s\", not \"lmap-store\"", s);
    goto done;
  }
  if ((rc = meta_uint(root, "metadata", "format_version", 0, UINT32_MAX, &v,
                      d)) != 0)
    goto done;
  if (v != STORE_FORMAT_VERSION) {
    rc = diag_field(d, LMAP_EVERSION, "format_version",
                    "store format_version %llu is not supported (this lmap "
                    "reads %d)",
                    (unsigned long long)v, STORE_FORMAT_VERSION);
    goto done;
  }
  m->format_version = (uint32_t)v;
  if ((rc = meta_uint(root, "metadata", "grid_h", 1, UINT32_MAX, &h, d)) != 0 ||
      (rc = meta_uint(root, "metadata", "grid_w", 1, UINT32_MAX, &w, d)) != 0 ||
      (rc = meta_uint(root, "metadata", "topk", 1, UINT32_MAX, &k, d)) != 0 ||
      (rc = meta_uint(root, "metadata", "num_classes", 1, UINT32_MAX, &c, d)) !=
          0)
    goto done;
  if ((rc = meta_string(root, "encoding", &s, d)) != 0)
    goto done;
  if (codec_encoding_from_name(s, &m->shape.encoding)) {
    rc = diag_field(d, LMAP_EBADSTORE, "encoding",
                    "metadata encoding is \"%s\", neither \"f16\" nor \"f32\"",
                    s);
    goto done;
  }
  m->shape.k = (uint32_t)k;
  m->shape.h = (uint32_t)h;
  m->shape.w = (uint32_t)w;
  m->shape.num_classes = (uint32_t)c;
  if (codec_shape_check(&m->shape, d) != 0) {
    diag_prefix(d, "metadata");
    rc = recode(d, LMAP_EBADSTORE);
    goto done;
  }
  if ((rc = meta_uint(root, "metadata", "record_count", 0, UINT64_MAX >> 1,
                      &m->record_count, d)) != 0)
    goto done;
  cn = json_object_get(root, "class_names");
  *class_names_flag = -1;
  if (cn != NULL) {
    if (!json_is_boolean(cn)) {
      rc = diag_field(d, LMAP_EBADSTORE, "class_names",
                      "metadata field \"class_names\" is not a boolean");
      goto done;
    }
    *class_names_flag = json_is_true(cn);
  }
  rc = 0;
done:
  json_decref(root);
  return rc;
}

/* Checks "lmap.classes": a JSON array of `n` strings. */
static int check_classes(const char *text, size_t len, uint32_t n, diag *d) {
  json_error_t err;
  json_t *root = json_loadb(text, len, 0, &err);
  int rc = 0;
  if (root == NULL)
    return diag_set(d, LMAP_EBADSTORE,
                    "class names are not valid JSON: %s (line %d, column %d)",
                    err.text, err.line, err.column);
  if (!json_is_array(root)) {
    rc = diag_set(d, LMAP_EBADSTORE, "class names are not a JSON array");
  } else if (json_array_size(root) != n) {
    rc = diag_set(d, LMAP_EBADSTORE, "store has %zu class names for %u classes",
                  json_array_size(root), n);
  } else {
    for (size_t i = 0; i < n; i++)
      if (!json_is_string(json_array_get(root, i))) {
        rc = diag_set(d, LMAP_EBADSTORE, "class name %zu is not a string", i);
        break;
      }
  }
  json_decref(root);
  return rc;
}

static int lmdb_fail(diag *d, int code, const char *what, int err) {
  return diag_set(d, code, "%s: %s", what, mdb_strerror(err));
}

/* An LMDB error while reading the tree: a damaged tree is the store's
 * corruption, anything else an I/O error. */
static int lmdb_read_fail(diag *d, const char *what, int err) {
  int code = err == MDB_CORRUPTED || err == MDB_PAGE_NOTFOUND ? LMAP_ECORRUPT
                                                              : LMAP_EIO;
  return lmdb_fail(d, code, what, err);
}
/* Reads "lmap.layout" (written by the store writer, never by its caller)
 * and checks it against the metadata and the maps database. Counting
 * chunks is one mdb_stat; counting records would read every chunk, so the
 * writer's own record count stands in for it here and `lmap verify`, which
 * walks every chunk, compares the real count. */
static int load_layout(store *s, MDB_txn *txn, MDB_dbi meta, diag *d) {
  MDB_val key = {strlen(LAYOUT_KEY), (void *)LAYOUT_KEY}, val;
  MDB_stat st;
  json_error_t err;
  uint64_t chunks, records;
  int rc, e = mdb_get(txn, meta, &key, &val);
  if (e == MDB_NOTFOUND)
    return diag_set(d, LMAP_EBADSTORE,
                    "no chunk layout entry \"" LAYOUT_KEY "\" (corrupt)");
  if (e != 0)
    return lmdb_fail(d, LMAP_EIO, "cannot read the chunk layout", e);
  if (val.mv_size > LAYOUT_MAX)
    return diag_set(d, LMAP_EBADSTORE,
                    "chunk layout is %zu bytes, more than the %u allowed",
                    val.mv_size, LAYOUT_MAX);
  json_t *root =
      json_loadb(val.mv_data, val.mv_size, JSON_REJECT_DUPLICATES, &err);
  if (root == NULL || !json_is_object(root)) {
    json_decref(root);
    return diag_set(d, LMAP_EBADSTORE,
                    "chunk layout \"" LAYOUT_KEY "\" is not a JSON object");
  }
  rc = meta_uint(root, "chunk layout", "chunk_count", 0, UINT64_MAX >> 1,
                 &chunks, d);
  if (rc == 0)
    rc = meta_uint(root, "chunk layout", "record_count", 0, UINT64_MAX >> 1,
                   &records, d);
  json_decref(root);
  if (rc != 0)
    return rc;
  if (records != s->meta.record_count)
    return diag_set(d, LMAP_EBADSTORE,
                    "metadata says %llu records but the store's chunks hold "
                    "%llu",
                    (unsigned long long)s->meta.record_count,
                    (unsigned long long)records);
  if (chunks > records || (records > 0 && chunks == 0))
    return diag_set(d, LMAP_EBADSTORE,
                    "chunk layout says %llu chunks for %llu records "
                    "(corrupt)",
                    (unsigned long long)chunks, (unsigned long long)records);
  if ((e = mdb_stat(txn, s->maps, &st)) != 0)
    return lmdb_fail(d, LMAP_EIO, "cannot count the chunks", e);
  if ((uint64_t)st.ms_entries != chunks)
    return diag_set(d, LMAP_EBADSTORE,
                    "chunk layout says %llu chunks but the maps database "
                    "holds %llu",
                    (unsigned long long)chunks,
                    (unsigned long long)st.ms_entries);
  s->meta.chunk_count = chunks;
  return 0;
}

/* Reads and checks everything store_open promises, inside `txn`. */
static int load_meta(store *s, MDB_txn *txn, diag *d) {
  MDB_dbi meta;
  MDB_val key, val;
  int class_names_flag = -1;
  int e = mdb_dbi_open(txn, DB_META, 0, &meta);
  if (e == MDB_NOTFOUND)
    return diag_set(d, LMAP_EBADSTORE, "no lmap metadata (not an lmap store)");
  if (e != 0)
    return lmdb_fail(d, LMAP_EBADSTORE, "cannot open the meta database", e);
  key.mv_data = (void *)META_KEY;
  key.mv_size = strlen(META_KEY);
  e = mdb_get(txn, meta, &key, &val);
  if (e == MDB_NOTFOUND)
    return diag_set(d, LMAP_EBADSTORE, "no lmap metadata (not an lmap store)");
  if (e != 0)
    return lmdb_fail(d, LMAP_EIO, "cannot read the metadata", e);
  if (val.mv_size > META_MAX)
    return diag_set(d, LMAP_EBADSTORE,
                    "metadata is %zu bytes, more than the %u allowed",
                    val.mv_size, META_MAX);
  if ((s->meta_json = dup_bytes(val.mv_data, val.mv_size)) == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory for the metadata");
  int rc =
      parse_meta(s->meta_json, val.mv_size, &s->meta, &class_names_flag, d);
  if (rc != 0)
    return rc;

  e = mdb_dbi_open(txn, DB_MAPS, 0, &s->maps);
  if (e == MDB_NOTFOUND)
    return diag_set(d, LMAP_EBADSTORE, "no \"maps\" database");
  if (e != 0)
    return lmdb_fail(d, LMAP_EBADSTORE, "cannot open the maps database", e);
  if ((rc = load_layout(s, txn, meta, d)) != 0)
    return rc;

  key.mv_data = (void *)DICT_KEY;
  key.mv_size = strlen(DICT_KEY);
  e = mdb_get(txn, meta, &key, &val);
  if (e != 0 && e != MDB_NOTFOUND)
    return lmdb_fail(d, LMAP_EIO, "cannot read the dictionary", e);
  if (e == 0 && val.mv_size > 0) {
    if (val.mv_size > DICT_MAX)
      return diag_set(d, LMAP_EBADSTORE,
                      "dictionary is %zu bytes, more than the %u allowed",
                      val.mv_size, DICT_MAX);
    if ((s->dict = dup_bytes(val.mv_data, val.mv_size)) == NULL)
      return diag_set(d, LMAP_ENOMEM, "out of memory for the dictionary");
    s->dict_len = val.mv_size;
  }
  /* Proves the dictionary loads, once, rather than in every reader. */
  codec_ctx *probe;
  if ((rc = codec_ctx_new(&s->meta.shape, s->dict, s->dict_len,
                          CODEC_LEVEL_DEFAULT, &probe, d)) != 0) {
    if (rc == LMAP_ENOMEM)
      return rc;
    diag_prefix(d, "dictionary does not load");
    return recode(d, LMAP_EBADSTORE);
  }
  codec_ctx_free(probe);

  key.mv_data = (void *)CLASSES_KEY;
  key.mv_size = strlen(CLASSES_KEY);
  e = mdb_get(txn, meta, &key, &val);
  if (e != 0 && e != MDB_NOTFOUND)
    return lmdb_fail(d, LMAP_EIO, "cannot read the class names", e);
  if (e == 0) {
    if (val.mv_size > CLASSES_MAX)
      return diag_set(d, LMAP_EBADSTORE,
                      "class names are %zu bytes, more than the %u allowed",
                      val.mv_size, CLASSES_MAX);
    if ((s->classes_json = dup_bytes(val.mv_data, val.mv_size)) == NULL)
      return diag_set(d, LMAP_ENOMEM, "out of memory for the class names");
    if ((rc = check_classes(s->classes_json, val.mv_size,
                            s->meta.shape.num_classes, d)) != 0)
      return rc;
  }
  s->meta.has_class_names = s->classes_json != NULL;
  if (class_names_flag >= 0 && class_names_flag != s->meta.has_class_names)
    return diag_set(d, LMAP_EBADSTORE,
                    "metadata says class_names is %s but the store %s them",
                    class_names_flag ? "true" : "false",
                    s->meta.has_class_names ? "has" : "lacks");
  return 0;
}
/* ---- opening ---- */

void store_close(store *s) {
  if (s == NULL)
    return;
  if (s->env != NULL)
    mdb_env_close(s->env);
  free(s->path);
  free(s->meta_json);
  free(s->classes_json);
  free(s->dict);
  free(s);
}

/* Opens the environment read-only and repeats the size check against the
 * meta page LMDB itself picked, on LMDB's own descriptor. */
static int open_env(store *s, const struct stat *checked, diag *d) {
  uint64_t size = (uint64_t)checked->st_size;
  int e = mdb_env_create(&s->env);
  if (e != 0)
    return lmdb_fail(d, LMAP_ENOMEM, "cannot create an LMDB environment", e);
  if ((e = mdb_env_set_maxdbs(s->env, 2)) != 0)
    return lmdb_fail(d, LMAP_EIO, "cannot configure LMDB", e);
  /* Map the file, not the writer's 1 TiB: LMDB grows the mapping to what
   * the header needs, which the precheck proved the file holds. */
  if (size <= SIZE_MAX && (e = mdb_env_set_mapsize(s->env, (size_t)size)) != 0)
    return lmdb_fail(d, LMAP_EIO, "cannot configure LMDB", e);
  e = mdb_env_open(s->env, s->path,
                   MDB_RDONLY | MDB_NOSUBDIR | MDB_NOLOCK | MDB_NORDAHEAD,
                   0444);
  if (e == MDB_INVALID)
    return diag_set(d, LMAP_EBADSTORE, "not an LMDB file (%s)",
                    mdb_strerror(e));
  if (e == MDB_VERSION_MISMATCH)
    return diag_set(d, LMAP_EBADSTORE,
                    "written by an incompatible LMDB version (%s)",
                    mdb_strerror(e));
  if (e != 0)
    return lmdb_fail(d, LMAP_EIO, "LMDB cannot open it", e);

  mdb_filehandle_t fd;
  struct stat st;
  MDB_envinfo info;
  MDB_stat ms;
  if ((e = mdb_env_get_fd(s->env, &fd)) != 0 ||
      (e = mdb_env_info(s->env, &info)) != 0 ||
      (e = mdb_env_stat(s->env, &ms)) != 0)
    return lmdb_fail(d, LMAP_EIO, "cannot inspect the LMDB environment", e);
  if (fstat(fd, &st) != 0)
    return diag_set(d, LMAP_EIO, "cannot stat: %s", strerror(errno));
  if (!S_ISREG(st.st_mode))
    return diag_set(d, LMAP_EBADSTORE, "not a regular file");
  /* LMDB opened the path again: it must be the file whose pages were
   * checked, unchanged since. */
  if (st.st_dev != checked->st_dev || st.st_ino != checked->st_ino ||
      st.st_size != checked->st_size)
    return diag_set(d, LMAP_EBADSTORE,
                    "the file was replaced or changed while it was being "
                    "opened");
  s->file_size = (uint64_t)st.st_size;
  s->mtime = st.st_mtim;
  return check_size(s->file_size, (uint64_t)info.me_last_pgno, ms.ms_psize, d);
}

typedef struct meta_args {
  store *s;
  MDB_txn *txn;
  diag *d;
} meta_args;

/* load_meta reads the mapping, and the file may shrink after the size
 * check: guarded like every other read. */
static int load_meta_guarded(void *p) {
  meta_args *a = p;
  int e = mdb_txn_begin(a->s->env, NULL, MDB_RDONLY, &a->txn);
  if (e != 0) {
    a->txn = NULL;
    return lmdb_fail(a->d, LMAP_EIO, "cannot begin a read transaction", e);
  }
  return load_meta(a->s, a->txn, a->d);
}

static int fault_diag(const store *s, int name_path, diag *d);

int store_open(const char *path, store **out, diag *d) {
  return store_open_flags(path, 0, out, d);
}

int store_open_flags(const char *path, unsigned flags, store **out, diag *d) {
  *out = NULL;
  pthread_once(&guard_once, guard_install);
  int rc, e, fd = -1;
  MDB_txn *txn = NULL;
  store *s = calloc(1, sizeof *s);
  if (s == NULL || (s->path = strdup(path)) == NULL) {
    free(s);
    diag_set(d, LMAP_ENOMEM, "out of memory opening a store");
    diag_prefix(d, path);
    return LMAP_ENOMEM;
  }
  struct stat st;
  /* O_NONBLOCK: opening a FIFO must not wait for a writer; the fstat()
   * below then refuses it. */
  if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)) < 0 ||
      fstat(fd, &st) != 0) {
    rc = diag_set(d, LMAP_EIO, "cannot open: %s", strerror(errno));
    goto fail;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = diag_set(d, LMAP_EBADSTORE, "not a regular file");
    goto fail;
  }
  if ((rc = precheck(fd, (uint64_t)st.st_size, flags, &s->meta.page_check,
                     d)) != 0)
    goto fail;
  if ((rc = open_env(s, &st, d)) != 0)
    goto fail;
  close(fd);
  fd = -1;
  meta_args ma = {s, NULL, d};
  rc = guarded(load_meta_guarded, &ma);
  txn = ma.txn;
  if (rc != 0) {
    if (rc == GUARD_FAULT)
      rc = fault_diag(s, 0, d);
    goto fail;
  }
  /* Committing, not aborting, keeps the database handles opened in this
   * transaction valid for the readers' transactions. */
  e = mdb_txn_commit(txn);
  txn = NULL;
  if (e != 0) {
    rc = lmdb_fail(d, LMAP_EIO, "cannot end the read transaction", e);
    goto fail;
  }
  *out = s;
  return 0;
fail:
  if (txn != NULL)
    mdb_txn_abort(txn);
  if (fd >= 0)
    close(fd);
  store_close(s);
  diag_prefix(d, path);
  return rc;
}

const store_meta *store_get_meta(const store *s) {
  return &s->meta;
}

const char *store_meta_json(const store *s) {
  return s->meta_json;
}

json_t *store_meta_document(const codec_shape *shape, uint64_t records,
                            int class_names) {
  return json_pack(
      "{s:s, s:i, s:i, s:i, s:i, s:i, s:s, s:I, s:b}", "format", "lmap-store",
      "format_version", STORE_FORMAT_VERSION, "grid_h", (int)shape->h, "grid_w",
      (int)shape->w, "topk", (int)shape->k, "num_classes",
      (int)shape->num_classes, "encoding", codec_encoding_name(shape->encoding),
      "record_count", (json_int_t)records, "class_names", class_names);
}

json_t *store_info(const store *s) {
  /* The document parsed at open, so only memory can fail here. */
  json_t *info = json_loads(s->meta_json, 0, NULL);
  if (info != NULL &&
      json_object_set_new(info, "file_bytes",
                          json_integer((json_int_t)store_file_size(s))) != 0) {
    json_decref(info);
    info = NULL;
  }
  return info;
}

const char *store_class_names_json(const store *s) {
  return s->classes_json;
}

uint64_t store_file_size(const store *s) {
  return s->file_size;
}

int store_file_check(const store *s, diag *d) {
  mdb_filehandle_t fd;
  struct stat st;
  int e = mdb_env_get_fd(s->env, &fd);
  if (e != 0)
    return lmdb_fail(d, LMAP_EBADSTORE, "cannot check the store file", e);
  if (fstat(fd, &st) != 0)
    return diag_set(d, LMAP_EBADSTORE, "%s: cannot stat the store file: %s",
                    s->path, strerror(errno));
  if ((uint64_t)st.st_size != s->file_size)
    return diag_set(d, LMAP_EBADSTORE,
                    "%s: the store file changed size while served (%llu "
                    "bytes at open, %llu now): truncated or overwritten in "
                    "place",
                    s->path, (unsigned long long)s->file_size,
                    (unsigned long long)st.st_size);
  if (st.st_mtim.tv_sec != s->mtime.tv_sec ||
      st.st_mtim.tv_nsec != s->mtime.tv_nsec)
    return diag_set(d, LMAP_EBADSTORE,
                    "%s: the store file was modified in place while served",
                    s->path);
  return 0;
}

/* ---- chunks ---- */

/*
 * A chunk value (docs/STORE_FORMAT.md §4.1), n records, all integers
 * little-endian:
 *
 *   0        u32     checksum of bytes [4, R) (the directory)
 *   4        u8      chunk version, 1
 *   5        u8      P: length of the prefix every id of the chunk shares
 *   6        u16     n >= 1
 *   8        u32[n]  rec_end[i]: end of record i in the record area
 *   8+4n     u16[n]  id_end[i]: end of id i's suffix in the suffix area
 *   8+6n     P       the prefix
 *   8+6n+P   S       the suffixes, S = id_end[n-1]
 *   R        ...     the records, rec_end[n-1] bytes; R = 8+6n+P+S
 *
 * Id i is prefix + suffix bytes [id_end[i-1], id_end[i]) (0 for i = 0);
 * record i is bytes [rec_end[i-1], rec_end[i]) of the record area. The
 * value ends exactly where the record area does.
 */

static uint64_t checksum_step(uint64_t h, const uint8_t *w) {
  h = (h ^ ((uint64_t)le32(w) | (uint64_t)le32(w + 4) << 32)) *
      0xBF58476D1CE4E5B9ull;
  return h ^ (h >> 29);
}

uint32_t store_chunk_checksum(const uint8_t *p, size_t len) {
  /* Eight bytes per step through a bijective mix (xor, multiply by an odd
   * constant, xorshift): any single damaged word changes the 64-bit state
   * for good, and the loop runs at a few cycles per word, a third of a
   * microsecond for a 128-record directory. */
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)len;
  size_t i = 0;
  for (; len - i >= 8; i += 8)
    h = checksum_step(h, p + i);
  if (i < len) { /* the last word, padded with zeros */
    uint8_t b[8] = {0};
    memcpy(b, p + i, len - i);
    h = checksum_step(h, b);
  }
  return (uint32_t)(h ^ (h >> 32));
}

/* Sets LMAP_ECORRUPT with a message (formatted only when wanted: the
 * reader's hot path passes a diag, fuzzers may not). */
static int corrupt(diag *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int corrupt(diag *d, const char *fmt, ...) {
  if (d == NULL)
    return LMAP_ECORRUPT;
  char m[sizeof d->msg];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m, sizeof m, fmt, ap);
  va_end(ap);
  return diag_set(d, LMAP_ECORRUPT, "%s", m);
}

int store_chunk_parse(const uint8_t *v, size_t len, store_chunk *c, diag *d) {
  memset(c, 0, sizeof *c);
  if (len < CHUNK_HEADER)
    return corrupt(d, "chunk is %zu bytes, shorter than its header", len);
  if (v[4] != CHUNK_VERSION)
    return corrupt(d,
                   "chunk version %u is not supported (this lmap reads "
                   "%u)",
                   v[4], CHUNK_VERSION);
  uint32_t n = le16(v + 6), p = v[5];
  if (n == 0)
    return corrupt(d, "chunk holds no records");
  /* n < 2^16 and P < 2^8: these sums cannot overflow. */
  size_t dir = CHUNK_HEADER + (size_t)6 * n + p;
  if (dir > len)
    return corrupt(d,
                   "directory of %u records runs past the end of the "
                   "%zu-byte chunk",
                   n, len);
  c->rec_end = v + CHUNK_HEADER;
  c->id_end = c->rec_end + (size_t)4 * n;
  c->prefix = c->id_end + (size_t)2 * n;
  c->suffixes = c->prefix + p;
  c->suffix_len = le16(c->id_end + (size_t)2 * (n - 1));
  if (c->suffix_len > len - dir)
    return corrupt(d, "ids run past the end of the %zu-byte chunk", len);
  size_t r = dir + c->suffix_len;
  if (store_chunk_checksum(v + 4, r - 4) != le32(v))
    return corrupt(d, "chunk directory fails its checksum");
  c->records = v + r;
  c->records_len = len - r;
  uint32_t last = le32(c->rec_end + (size_t)4 * (n - 1));
  if (last != c->records_len)
    return corrupt(d,
                   "chunk records end at %u but its record area holds %zu "
                   "bytes",
                   last, c->records_len);
  c->v = v;
  c->len = len;
  c->n = n;
  c->prefix_len = p;
  return 0;
}

/* The suffix of id `i` of a parsed chunk, bounds-checked. */
static int suffix_at(const store_chunk *c, uint32_t i, const uint8_t **s,
                     size_t *len, diag *d) {
  size_t a = i ? le16(c->id_end + (size_t)2 * (i - 1)) : 0;
  size_t b = le16(c->id_end + (size_t)2 * i);
  if (a > b || b > c->suffix_len)
    return corrupt(d, "chunk id %u has bounds %zu..%zu in %zu bytes of ids", i,
                   a, b, c->suffix_len);
  *s = c->suffixes + a;
  *len = b - a;
  return 0;
}

/* Record `i` of a parsed chunk, bounds-checked (records are never empty). */
static int record_at(const store_chunk *c, uint32_t i, const uint8_t **rec,
                     size_t *len, diag *d) {
  size_t a = i ? le32(c->rec_end + (size_t)4 * (i - 1)) : 0;
  size_t b = le32(c->rec_end + (size_t)4 * i);
  if (a >= b || b > c->records_len)
    return corrupt(d,
                   "chunk record %u has bounds %zu..%zu in %zu bytes of "
                   "records",
                   i, a, b, c->records_len);
  *rec = c->records + a;
  *len = b - a;
  return 0;
}

int store_chunk_find(const store_chunk *c, const char *id, size_t id_len,
                     const uint8_t **rec, size_t *rec_len, diag *d) {
  size_t p = c->prefix_len;
  if (id_len < p || memcmp(id, c->prefix, p) != 0)
    return LMAP_ENOTFOUND;
  const char *key = id + p;
  size_t klen = id_len - p;
  uint32_t lo = 0, hi = c->n;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    const uint8_t *s = NULL;
    size_t slen = 0;
    int rc = suffix_at(c, mid, &s, &slen, d);
    if (rc != 0)
      return rc;
    int cmp = id_cmp(key, klen, s, slen);
    if (cmp == 0)
      return record_at(c, mid, rec, rec_len, d);
    if (cmp < 0)
      hi = mid;
    else
      lo = mid + 1;
  }
  return LMAP_ENOTFOUND;
}

int store_chunk_entry(const store_chunk *c, uint32_t i, char *id,
                      size_t *id_len, const uint8_t **rec, size_t *rec_len,
                      diag *d) {
  const uint8_t *s = NULL;
  size_t slen = 0;
  if (i >= c->n)
    return corrupt(d, "entry %u of a chunk of %u", i, c->n);
  int rc = suffix_at(c, i, &s, &slen, d);
  if (rc != 0)
    return rc;
  if (c->prefix_len + slen == 0 || c->prefix_len + slen > LABELMAP_MAX_ID_LEN)
    return corrupt(d, "chunk id %u is %zu bytes long", i, c->prefix_len + slen);
  memcpy(id, c->prefix, c->prefix_len);
  memcpy(id + c->prefix_len, s, slen);
  *id_len = c->prefix_len + slen;
  return record_at(c, i, rec, rec_len, d);
}

/* ---- readers ---- */

/* store_reader.stale: after an LMDB error the transaction and cursor are
 * rebuilt; after a SIGBUS the codec context too (abandoned mid-frame). */
#define STALE_TXN 1
#define STALE_ALL 2

struct store_reader {
  store *s;
  MDB_txn *txn;    /* one read transaction for the reader's life */
  MDB_cursor *cur; /* on txn, repositioned by every lookup */
  codec_ctx *codec;
  int stale; /* STALE_*: what must be rebuilt before the next use */
  float *scores;
  uint32_t *classes;
};

/* Fills `d` for a SIGBUS caught while reading the mapping: the file was
 * cut under it (one fstat() tells by how much, when it can). The message
 * names the file unless the caller prefixes it anyway. */
static int fault_diag(const store *s, int name_path, diag *d) {
  mdb_filehandle_t fd;
  struct stat st;
  const char *p = name_path ? s->path : "", *sep = name_path ? ": " : "";
  if (mdb_env_get_fd(s->env, &fd) == 0 && fstat(fd, &st) == 0 &&
      (uint64_t)st.st_size < s->file_size)
    return diag_set(d, LMAP_EBADSTORE,
                    "%s%sthe store file was truncated while being read "
                    "(%llu bytes at open, %llu now)",
                    p, sep, (unsigned long long)s->file_size,
                    (unsigned long long)st.st_size);
  return diag_set(d, LMAP_EBADSTORE,
                  "%s%sthe store file was truncated while being read "
                  "(SIGBUS touching its mapping)",
                  p, sep);
}

/* 1 if the open file is now shorter than at open. Beginning a transaction
 * on such a file would fault inside mdb_txn_begin, after it allocated the
 * transaction (which the jump would leak), so renewals ask first. */
static int file_shrank(const store *s) {
  mdb_filehandle_t fd;
  struct stat st;
  return mdb_env_get_fd(s->env, &fd) == 0 && fstat(fd, &st) == 0 &&
         (uint64_t)st.st_size < s->file_size;
}

static void reader_drop_txn(store_reader *r) {
  if (r->cur != NULL)
    mdb_cursor_close(r->cur);
  if (r->txn != NULL)
    mdb_txn_abort(r->txn);
  r->cur = NULL;
  r->txn = NULL;
}

void store_reader_free(store_reader *r) {
  if (r == NULL)
    return;
  reader_drop_txn(r);
  codec_ctx_free(r->codec);
  free(r->scores);
  free(r->classes);
  free(r);
}

typedef struct begin_args {
  store_reader *r;
  diag *d;
} begin_args;

/* Begins the reader's transaction and cursor (mdb_txn_begin reads the meta
 * pages from the mapping: guarded by the caller). */
static int reader_begin(void *p) {
  begin_args *a = p;
  store_reader *r = a->r;
  int e = mdb_txn_begin(r->s->env, NULL, MDB_RDONLY, &r->txn);
  if (e != 0) {
    r->txn = NULL;
    return lmdb_fail(a->d, LMAP_EIO, "cannot begin a read transaction", e);
  }
  if ((e = mdb_cursor_open(r->txn, r->s->maps, &r->cur)) != 0) {
    r->cur = NULL;
    return lmdb_fail(a->d, LMAP_EIO, "cannot open a cursor", e);
  }
  return 0;
}

/*
 * Rebuilds what a failed lookup may have left unusable. After an LMDB error
 * the transaction is flagged in error (every later call would answer
 * MDB_BAD_TXN); after a SIGBUS, the cursor and the decoder were abandoned
 * halfway. A read-only MDB_NOLOCK transaction holds nothing, so it is
 * simply aborted and begun anew, and the codec context is replaced. Until
 * this succeeds the reader stays stale and every call retries it.
 */
static int reader_renew(store_reader *r, diag *d) {
  int rc;
  reader_drop_txn(r);
  if (r->stale == STALE_ALL) {
    codec_ctx *c = NULL;
    if ((rc = codec_ctx_new(&r->s->meta.shape, r->s->dict, r->s->dict_len,
                            CODEC_LEVEL_DEFAULT, &c, d)) != 0)
      return rc;
    codec_ctx_free(r->codec);
    r->codec = c;
    r->stale = STALE_TXN;
  }
  if (file_shrank(r->s))
    return fault_diag(r->s, 1, d);
  begin_args a = {r, d};
  rc = guarded(reader_begin, &a);
  if (rc == GUARD_FAULT)
    rc = fault_diag(r->s, 1, d);
  if (rc != 0) {
    reader_drop_txn(r);
    return rc;
  }
  r->stale = 0;
  return 0;
}

int store_reader_new(store *s, store_reader **out, diag *d) {
  *out = NULL;
  int rc;
  store_reader *r = calloc(1, sizeof *r);
  if (r == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory for a store reader");
  r->s = s;
  const codec_shape *sh = &s->meta.shape;
  size_t n = (size_t)sh->k * sh->h * sh->w;
  r->scores = malloc(n * sizeof *r->scores);
  r->classes = malloc(n * sizeof *r->classes);
  if (r->scores == NULL || r->classes == NULL) {
    rc = diag_set(d, LMAP_ENOMEM, "out of memory for a store reader");
    goto fail;
  }
  /* With MDB_NOLOCK a read transaction takes no reader slot and the file
   * never changes, so holding one (and its cursor) for the reader's life
   * costs nothing and saves a begin and a cursor open per lookup. */
  r->stale = STALE_ALL; /* nothing built yet */
  if ((rc = reader_renew(r, d)) != 0)
    goto fail;
  *out = r;
  return 0;
fail:
  store_reader_free(r);
  return rc;
}

static labelmap reader_map(store_reader *r) {
  const codec_shape *sh = &r->s->meta.shape;
  labelmap m = {sh->k, sh->h, sh->w, r->scores, r->classes};
  return m;
}

/* Positions `cur` on the chunk that would hold `id`: the one whose first id
 * (its key) is the greatest not above `id`. *exact tells whether that key
 * is `id` itself. Returns 0, MDB_NOTFOUND (`id` sorts below every chunk, or
 * there is none) or another LMDB error. */
static int seek_chunk(MDB_cursor *cur, const char *id, size_t id_len,
                      MDB_val *key, MDB_val *val, int *exact) {
  key->mv_size = id_len;
  key->mv_data = (void *)id;
  *exact = 0;
  int e = mdb_cursor_get(cur, key, val, MDB_SET_RANGE);
  if (e == MDB_NOTFOUND) /* above every key: the last chunk, if any */
    return mdb_cursor_get(cur, key, val, MDB_LAST);
  if (e != 0)
    return e;
  if (key->mv_size == id_len && memcmp(key->mv_data, id, id_len) == 0) {
    *exact = 1;
    return 0;
  }
  return mdb_cursor_get(cur, key, val, MDB_PREV);
}

typedef struct get_args {
  store_reader *r;
  const char *id;
  size_t id_len;
  labelmap *out;
  diag *d;
} get_args;

/* The lookup proper; every read of the mapping happens in here (guarded by
 * store_reader_get). */
static int reader_get(void *p) {
  get_args *a = p;
  store_reader *r = a->r;
  const char *id = a->id;
  size_t id_len = a->id_len;
  diag *d = a->d;
  char t[300], t2[300], pre[700];
  MDB_val key, val;
  int exact, rc;
  int e = seek_chunk(r->cur, id, id_len, &key, &val, &exact);
  if (e == MDB_NOTFOUND)
    return diag_set(d, LMAP_ENOTFOUND, "no map for id '%s'",
                    id_text(t, id, id_len));
  if (e != 0) {
    /* LMDB has flagged the transaction in error: every later call on it
     * would answer MDB_BAD_TXN. Begin a new one before the next lookup. */
    r->stale = STALE_TXN;
    rc = lmdb_read_fail(d, "cannot read a chunk", e);
    snprintf(pre, sizeof pre, "record '%s'", id_text(t, id, id_len));
    diag_prefix(d, pre);
    return rc;
  }
  store_chunk c;
  const uint8_t *rec = NULL;
  size_t rec_len = 0;
  rc = store_chunk_parse(val.mv_data, val.mv_size, &c, d);
  if (rc == 0) {
    rc = store_chunk_find(&c, id, id_len, &rec, &rec_len, d);
    /* A chunk is keyed by its first id: a damaged key or directory. */
    if (rc == LMAP_ENOTFOUND && exact)
      rc = diag_set(d, LMAP_ECORRUPT,
                    "the chunk's key is not among its ids (corrupt chunk)");
  }
  if (rc == LMAP_ENOTFOUND)
    return diag_set(d, LMAP_ENOTFOUND, "no map for id '%s'",
                    id_text(t, id, id_len));
  if (rc != 0) {
    snprintf(pre, sizeof pre, "record '%s' (chunk '%s')",
             id_text(t, id, id_len), id_text(t2, key.mv_data, key.mv_size));
    diag_prefix(d, pre);
    return rc;
  }
  *a->out = reader_map(r);
  rc = codec_decode(r->codec, rec, rec_len, a->out, d);
  if (rc != 0) {
    snprintf(pre, sizeof pre, "record '%s'", id_text(t, id, id_len));
    diag_prefix(d, pre);
  }
  return rc;
}

int store_reader_get(store_reader *r, const char *id, size_t id_len,
                     labelmap *out, diag *d) {
  char t[300], pre[340];
  int rc = check_id(id, id_len, d);
  if (rc != 0)
    return rc;
  if (r->stale && (rc = reader_renew(r, d)) != 0)
    goto fail;
  get_args a = {r, id, id_len, out, d};
  rc = guarded(reader_get, &a);
  if (rc != GUARD_FAULT)
    return rc;
  r->stale = STALE_ALL;
  rc = fault_diag(r->s, 1, d);
fail:
  snprintf(pre, sizeof pre, "record '%s'", id_text(t, id, id_len));
  diag_prefix(d, pre);
  return rc;
}

typedef struct decode_args {
  store_reader *r;
  const uint8_t *rec;
  size_t len;
  labelmap *out;
  diag *d;
} decode_args;

static int reader_decode(void *p) {
  decode_args *a = p;
  return codec_decode(a->r->codec, a->rec, a->len, a->out, a->d);
}

int store_reader_decode(store_reader *r, const uint8_t *rec, size_t len,
                        labelmap *out, diag *d) {
  int rc;
  if (r->stale && (rc = reader_renew(r, d)) != 0)
    return rc;
  *out = reader_map(r);
  decode_args a = {r, rec, len, out, d};
  rc = guarded(reader_decode, &a);
  if (rc != GUARD_FAULT)
    return rc;
  r->stale = STALE_ALL;
  return fault_diag(r->s, 1, d);
}

/* Checks what a lookup does not need but a walk promises: every entry in
 * bounds, every id valid, the first id equal to the chunk's key, and ids
 * strictly increasing from the previous chunk's last one (`last`, `*last_len`
 * bytes, none when *last_len is 0), which is updated to this chunk's last. */
static int check_chunk(const store_chunk *c, const MDB_val *key, char *last,
                       size_t *last_len, diag *d) {
  char id[LABELMAP_MAX_ID_LEN];
  size_t len, rec_len;
  const uint8_t *rec;
  for (uint32_t i = 0; i < c->n; i++) {
    int rc = store_chunk_entry(c, i, id, &len, &rec, &rec_len, d);
    if (rc != 0)
      return rc;
    if (memchr(id, '\0', len) != NULL)
      return corrupt(d, "chunk id %u holds a NUL byte", i);
    if (i == 0 && (key->mv_size != len || memcmp(key->mv_data, id, len) != 0))
      return corrupt(d, "the chunk's first id differs from its key");
    if (*last_len > 0 && id_cmp(last, *last_len, id, len) >= 0)
      return corrupt(d, "chunk id %u is not above the id before it", i);
    memcpy(last, id, len);
    *last_len = len;
  }
  return 0;
}

/* store_foreach's state, outside the guarded walk so that a SIGBUS does not
 * lose the transaction and cursor it has to release. */
typedef struct walk_args {
  store *s;
  store_visit_fn fn;
  void *ctx;
  diag *d;
  MDB_txn *txn;
  MDB_cursor *cur;
} walk_args;

static int walk_chunks(void *p) {
  walk_args *a = p;
  store *s = a->s;
  diag *d = a->d;
  MDB_val key, val;
  char id[LABELMAP_MAX_ID_LEN], last[LABELMAP_MAX_ID_LEN], t[300], pre[340];
  size_t id_len = 0, last_len = 0, rec_len = 0;
  const uint8_t *rec;
  uint64_t chunks = 0;
  int rc = 0;
  int e = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &a->txn);
  if (e != 0) {
    a->txn = NULL;
    return lmdb_fail(d, LMAP_EIO, "cannot begin a read transaction", e);
  }
  if ((e = mdb_cursor_open(a->txn, s->maps, &a->cur)) != 0) {
    a->cur = NULL;
    return lmdb_fail(d, LMAP_EIO, "cannot open a cursor", e);
  }
  for (e = mdb_cursor_get(a->cur, &key, &val, MDB_FIRST); e == 0;
       e = mdb_cursor_get(a->cur, &key, &val, MDB_NEXT)) {
    store_chunk c;
    /* The whole chunk is checked before any of its records is visited. */
    if ((rc = store_chunk_parse(val.mv_data, val.mv_size, &c, d)) != 0 ||
        (rc = check_chunk(&c, &key, last, &last_len, d)) != 0) {
      snprintf(pre, sizeof pre, "chunk '%s'",
               id_text(t, key.mv_data, key.mv_size));
      diag_prefix(d, pre);
      return rc;
    }
    chunks++;
    for (uint32_t i = 0; i < c.n; i++) {
      /* Checked above: cannot fail. */
      if ((rc = store_chunk_entry(&c, i, id, &id_len, &rec, &rec_len, d)) !=
              0 ||
          (rc = a->fn(a->ctx, id, id_len, rec, rec_len)) != 0)
        return rc;
    }
  }
  if (e != MDB_NOTFOUND)
    return lmdb_read_fail(d, "cannot walk the chunks", e);
  if (chunks != s->meta.chunk_count)
    return diag_set(d, LMAP_ECORRUPT,
                    "walked %llu chunks but the store holds %llu (corrupt "
                    "tree)",
                    (unsigned long long)chunks,
                    (unsigned long long)s->meta.chunk_count);
  return 0;
}

int store_foreach(store *s, store_visit_fn fn, void *ctx, diag *d) {
  walk_args a = {s, fn, ctx, d, NULL, NULL};
  if (file_shrank(s))
    return fault_diag(s, 1, d);
  int rc = guarded(walk_chunks, &a);
  if (rc == GUARD_FAULT)
    rc = fault_diag(s, 1, d);
  if (a.cur != NULL)
    mdb_cursor_close(a.cur);
  if (a.txn != NULL)
    mdb_txn_abort(a.txn);
  return rc;
}

/* ---- writing ---- */

/* One record in the writer's index. `id` points at a length byte followed
 * by the id bytes, in the id arena (blocks that never move). */
typedef struct wrec {
  const uint8_t *id;
  uint64_t off; /* in the spill file */
  uint32_t len;
} wrec;

/* The metadata keys a caller may set, and the most each may hold: what a
 * reader accepts, so the writer never makes a store that store_open
 * refuses for its size. */
static const struct {
  const char *key;
  size_t max;
} meta_keys[] = {
    {META_KEY, META_MAX}, {DICT_KEY, DICT_MAX}, {CLASSES_KEY, CLASSES_MAX}};
#define NMETA (sizeof meta_keys / sizeof meta_keys[0])

struct store_writer {
  char *path;
  char *spill; /* the spill file's name; NULL once removed */
  char *tmp;   /* the LMDB file commit writes; NULL otherwise */
  int overwrite;
  int fd;       /* the spill file, appended to, read back by commit */
  int failed;   /* LMAP_EIO once the spill file could not be written */
  uint8_t *buf; /* records not yet written to the spill file */
  size_t buf_len;
  uint64_t spill_size; /* bytes written + buffered */

  wrec *recs; /* in arrival order until commit sorts them */
  size_t count, cap;
  uint32_t *slots;  /* hash set of record numbers + 1 (0: empty) */
  size_t nslots;    /* a power of two, more than twice count */
  uint8_t **blocks; /* the id arena */
  size_t nblocks, cap_blocks, block_used;

  uint8_t *meta[NMETA]; /* copies of the metadata values, NULL if unset */
  size_t meta_len[NMETA];

  MDB_env *env; /* commit only */
  MDB_txn *txn;
};

/* Frees the writer after removing its temporary files. */
/* Temporary files this process has on disk, so that a signal handler can
 * remove them (store_remove_temp_files): fixed storage, no allocation. */
#define TMP_SLOTS 8
#define TMP_PATH_MAX 4096
static char tmp_paths[TMP_SLOTS][TMP_PATH_MAX];
static volatile sig_atomic_t tmp_live[TMP_SLOTS];

static void tmp_register(const char *t) {
  for (int i = 0; i < TMP_SLOTS; i++)
    if (!tmp_live[i] && strlen(t) < TMP_PATH_MAX) {
      strcpy(tmp_paths[i], t);
      tmp_live[i] = 1;
      return;
    }
}

static void tmp_forget(const char *t) {
  for (int i = 0; i < TMP_SLOTS; i++)
    if (tmp_live[i] && strcmp(tmp_paths[i], t) == 0)
      tmp_live[i] = 0;
}

void store_remove_temp_files(void) {
  for (int i = 0; i < TMP_SLOTS; i++)
    if (tmp_live[i]) {
      unlink(tmp_paths[i]);
      tmp_live[i] = 0;
    }
}

static void writer_discard(store_writer *w) {
  if (w->txn != NULL)
    mdb_txn_abort(w->txn);
  if (w->env != NULL)
    mdb_env_close(w->env);
  if (w->tmp != NULL) {
    unlink(w->tmp);
    tmp_forget(w->tmp);
  }
  if (w->fd >= 0)
    close(w->fd); /* the spill file was unlinked at creation */
  for (size_t i = 0; i < w->nblocks; i++)
    free(w->blocks[i]);
  for (size_t i = 0; i < NMETA; i++)
    free(w->meta[i]);
  free(w->blocks);
  free(w->slots);
  free(w->recs);
  free(w->buf);
  free(w->path);
  free(w->spill);
  free(w->tmp);
  free(w);
}

void store_writer_abort(store_writer *w) {
  if (w != NULL)
    writer_discard(w);
}

/* This host's name as it appears in temporary file names: at most 32
 * bytes of [A-Za-z0-9_-], other bytes as '_' ("localhost" if unknown). */
static void tmp_host(char out[33]) {
  char h[256];
  if (gethostname(h, sizeof h) != 0 || h[0] == '\0')
    snprintf(h, sizeof h, "localhost");
  h[sizeof h - 1] = '\0';
  size_t i = 0;
  for (; h[i] != '\0' && i < 32; i++) {
    unsigned char c = (unsigned char)h[i];
    out[i] = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                     (c >= '0' && c <= '9') || c == '-'
                 ? (char)c
                 : '_';
  }
  out[i] = '\0';
}

/* Creates a temporary file beside `path`, exclusively, as
 * "<path>.tmp.<host>.<pid>.<n>"; *tmp is its name (owned). With `fd`
 * non-NULL the file stays open for reading and writing in *fd. The host
 * and pid say who owns it, for remove_stale_tmp. */
static int make_tmp(const char *path, char **tmp, int *fd, diag *d) {
  char host[33];
  tmp_host(host);
  size_t len = strlen(path) + 80;
  char *t = malloc(len);
  *tmp = NULL;
  if (t == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory");
  for (unsigned n = 0; n < 1000; n++) {
    snprintf(t, len, "%s.tmp.%s.%ld.%u", path, host, (long)getpid(), n);
    int f = open(t, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (f >= 0) {
      if (fd != NULL)
        *fd = f;
      else
        close(f);
      *tmp = t;
      tmp_register(t);
      return 0;
    }
    if (errno != EEXIST) {
      int err = errno;
      free(t);
      return diag_set(d, LMAP_EIO,
                      "cannot create a temporary file beside it: %s",
                      strerror(err));
    }
  }
  free(t);
  return diag_set(d, LMAP_EIO, "cannot find a free temporary file name");
}

/* Parses "<pid>.<n>" (decimal, nothing else); returns the pid or 0. */
static long tmp_owner(const char *s) {
  char *end;
  if (*s < '0' || *s > '9')
    return 0;
  errno = 0;
  long pid = strtol(s, &end, 10);
  if (errno != 0 || pid <= 0 || *end != '.' || end[1] < '0' || end[1] > '9')
    return 0;
  for (end++; *end >= '0' && *end <= '9'; end++)
    ;
  return *end == '\0' ? pid : 0;
}

/*
 * Removes the temporary files that writers of the same target left behind
 * when they were killed (SIGKILL during commit leaves the LMDB file being
 * written, as large as the store; a signal the CLI catches, or any failure,
 * removes it already). Only a file that is named exactly
 * "<target>.tmp.<this host>.<pid>.<n>", is a regular file owned by this
 * user, and whose pid is not a live process on this host (kill(pid, 0)
 * fails with ESRCH) is removed: a writer alive here, a file of another
 * host sharing the directory (a network file system), or of another user
 * is never touched. A pid reused by an unrelated process keeps its file
 * until a later import. Best effort: errors are ignored. Returns the number
 * of files removed.
 */
static int remove_stale_tmp(const char *path) {
  char host[33], *dir = strdup(path);
  if (dir == NULL)
    return 0;
  tmp_host(host);
  char *slash = strrchr(dir, '/');
  const char *base = path, *dname = ".";
  if (slash != NULL) {
    *slash = '\0';
    dname = slash == dir ? "/" : dir;
    base = path + (slash - dir) + 1;
  }
  size_t plen = strlen(base) + strlen(host) + 6;
  char *prefix = malloc(plen + 1);
  DIR *dh = prefix != NULL ? opendir(dname) : NULL;
  int removed = 0;
  if (dh != NULL) {
    snprintf(prefix, plen + 1, "%s.tmp.%s.", base, host);
    struct dirent *e;
    struct stat st;
    while ((e = readdir(dh)) != NULL) {
      if (strncmp(e->d_name, prefix, plen) != 0)
        continue;
      long pid = tmp_owner(e->d_name + plen);
      if (pid == 0 || pid == (long)getpid() || pid > INT_MAX ||
          kill((pid_t)pid, 0) == 0 || errno != ESRCH)
        continue;
      if (fstatat(dirfd(dh), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
          S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
          unlinkat(dirfd(dh), e->d_name, 0) == 0)
        removed++;
    }
    closedir(dh);
  }
  free(prefix);
  free(dir);
  return removed;
}

/* Opens a write environment on `file`. The map is 1 TiB of address space
 * (nothing is allocated); a process limited below that gets smaller maps,
 * down to 256 MiB. */
static int open_write_env(const char *file, MDB_env **out, diag *d) {
  size_t size = sizeof(size_t) >= 8 ? (size_t)1 << 40 : (size_t)1 << 30;
  MDB_env *env;
  for (;;) {
    int e = mdb_env_create(&env);
    if (e != 0)
      return lmdb_fail(d, LMAP_ENOMEM, "cannot create an LMDB environment", e);
    if ((e = mdb_env_set_maxdbs(env, 2)) == 0 &&
        (e = mdb_env_set_mapsize(env, size)) == 0)
      /* No lock file (the temporary file is private) and no sync per
       * commit: commit syncs once at the end. */
      e = mdb_env_open(env, file, MDB_NOSUBDIR | MDB_NOLOCK | MDB_NOSYNC, 0644);
    if (e == 0) {
      *out = env;
      return 0;
    }
    mdb_env_close(env);
    if (e != ENOMEM || size <= ((size_t)256 << 20))
      return lmdb_fail(d, LMAP_EIO, "LMDB cannot open the temporary file", e);
    size /= 4;
  }
}

int store_writer_open(const char *path, int overwrite, store_writer **out,
                      diag *d) {
  *out = NULL;
  int rc;
  struct stat st;
  if (path == NULL || path[0] == '\0')
    return diag_set(d, LMAP_EINVAL, "store path is empty");
  if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
    diag_set(d, LMAP_EEXIST, "is a directory");
    diag_prefix(d, path);
    return LMAP_EEXIST;
  }
  if (!overwrite && lstat(path, &st) == 0) {
    diag_set(d, LMAP_EEXIST, "already exists (use --force to replace it)");
    diag_prefix(d, path);
    return LMAP_EEXIST;
  }
  store_writer *w = calloc(1, sizeof *w);
  if (w == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory");
  w->fd = -1;
  w->overwrite = overwrite;
  if ((w->path = strdup(path)) == NULL ||
      (w->buf = malloc(SPILL_BUF)) == NULL) {
    rc = diag_set(d, LMAP_ENOMEM, "out of memory");
    goto fail;
  }
  remove_stale_tmp(path);
  if ((rc = make_tmp(path, &w->spill, &w->fd, d)) != 0)
    goto fail;
  /* The spill file is only ever used through w->fd: unlinking it now means
   * an import killed by a signal leaves no spill file behind. */
  unlink(w->spill);
  tmp_forget(w->spill);
  *out = w;
  return 0;
fail:
  diag_prefix(d, path);
  writer_discard(w);
  return rc;
}

/* ---- the spill file ---- */

static int write_all(int fd, const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t k = write(fd, p, n < ((size_t)1 << 30) ? n : (size_t)1 << 30);
    if (k < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    p += k;
    n -= (size_t)k;
  }
  return 0;
}

/* Reads exactly `n` bytes at `off`; -1 with errno set (0 for a file that
 * ends early). */
static int pread_all(int fd, uint8_t *p, size_t n, uint64_t off) {
  while (n > 0) {
    ssize_t k =
        pread(fd, p, n < ((size_t)1 << 30) ? n : (size_t)1 << 30, (off_t)off);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0) {
      if (k == 0)
        errno = 0;
      return -1;
    }
    p += k;
    n -= (size_t)k;
    off += (uint64_t)k;
  }
  return 0;
}

static int spill_error(store_writer *w, diag *d) {
  w->failed = LMAP_EIO;
  return diag_set(d, LMAP_EIO, "%s: cannot write the spill file %s: %s",
                  w->path, w->spill, strerror(errno));
}

static int spill_flush(store_writer *w, diag *d) {
  if (w->buf_len > 0 && write_all(w->fd, w->buf, w->buf_len) != 0)
    return spill_error(w, d);
  w->buf_len = 0;
  return 0;
}

/* Appends a record to the spill file (through the buffer). On failure the
 * writer is failed: how much reached the file is unknown. */
static int spill_append(store_writer *w, const uint8_t *rec, size_t len,
                        diag *d) {
  int rc;
  if (w->buf_len + len > SPILL_BUF && (rc = spill_flush(w, d)) != 0)
    return rc;
  if (len >= SPILL_BUF) {
    if (write_all(w->fd, rec, len) != 0)
      return spill_error(w, d);
  } else {
    memcpy(w->buf + w->buf_len, rec, len);
    w->buf_len += len;
  }
  w->spill_size += len;
  return 0;
}

/* ---- the writer's index ---- */

/* FNV-1a; ids are short, and a hash set needs no more. */
static uint64_t id_hash(const void *id, size_t len) {
  const unsigned char *p = id;
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h ^ (h >> 32);
}

/* The slot of `id` in the hash set: the one holding it (*found = 1) or the
 * empty one where it would go. The set is never full (nslots > 2 count). */
static size_t find_slot(const store_writer *w, const char *id, size_t len,
                        int *found) {
  size_t mask = w->nslots - 1;
  for (size_t i = (size_t)id_hash(id, len) & mask;; i = (i + 1) & mask) {
    uint32_t v = w->slots[i];
    if (v == 0) {
      *found = 0;
      return i;
    }
    const uint8_t *e = w->recs[v - 1].id;
    if (e[0] == len && memcmp(e + 1, id, len) == 0) {
      *found = 1;
      return i;
    }
  }
}

/* Doubles the hash set (or creates it). Returns 0 or LMAP_ENOMEM, leaving
 * the old set in place. */
static int grow_slots(store_writer *w, diag *d) {
  size_t n = w->nslots ? w->nslots * 2 : 1024;
  uint32_t *s = calloc(n, sizeof *s);
  if (s == NULL)
    return diag_set(d, LMAP_ENOMEM,
                    "out of memory for the id index (%zu records)", w->count);
  free(w->slots);
  w->slots = s;
  w->nslots = n;
  for (size_t r = 0; r < w->count; r++) {
    const uint8_t *id = w->recs[r].id;
    size_t i = (size_t)id_hash(id + 1, id[0]) & (n - 1);
    while (s[i] != 0)
      i = (i + 1) & (n - 1);
    s[i] = (uint32_t)(r + 1);
  }
  return 0;
}

/* Makes room for one more record (index entry, hash slot, id bytes);
 * changes nothing the writer relies on when it fails. */
static int reserve_record(store_writer *w, size_t id_len, diag *d) {
  if (w->count >= WRITER_MAX_RECORDS)
    return diag_set(d, LMAP_ETOOBIG, "%s: more than %u records", w->path,
                    WRITER_MAX_RECORDS);
  if (w->count == w->cap) {
    size_t cap = w->cap ? w->cap * 2 : 1024;
    wrec *r = realloc(w->recs, cap * sizeof *r);
    if (r == NULL)
      return diag_set(d, LMAP_ENOMEM,
                      "out of memory for the id index (%zu records)", w->count);
    w->recs = r;
    w->cap = cap;
  }
  int rc;
  if ((w->count + 1) * 2 >= w->nslots && (rc = grow_slots(w, d)) != 0)
    return rc;
  if (w->nblocks == 0 || w->block_used + 1 + id_len > ARENA_BLOCK) {
    if (w->nblocks == w->cap_blocks) {
      size_t cap = w->cap_blocks ? w->cap_blocks * 2 : 64;
      uint8_t **b = realloc(w->blocks, cap * sizeof *b);
      if (b == NULL)
        return diag_set(d, LMAP_ENOMEM, "out of memory for the ids");
      w->blocks = b;
      w->cap_blocks = cap;
    }
    if ((w->blocks[w->nblocks] = malloc(ARENA_BLOCK)) == NULL)
      return diag_set(d, LMAP_ENOMEM, "out of memory for the ids");
    w->nblocks++;
    w->block_used = 0;
  }
  return 0;
}

int store_writer_put(store_writer *w, const char *id, size_t id_len,
                     const uint8_t *rec, size_t rec_len, diag *d) {
  char t[300];
  int found, rc;
  if (w->failed)
    return diag_set(d, w->failed, "%s: the writer failed earlier", w->path);
  if ((rc = check_id(id, id_len, d)) != 0)
    return rc;
  if (rec_len == 0)
    return diag_set(d, LMAP_EINVAL, "record for id '%s' is empty",
                    id_text(t, id, id_len));
  if (rec_len > STORE_MAX_RECORD_LEN)
    return diag_set(d, LMAP_ETOOBIG,
                    "record for id '%s' is %zu bytes; the limit is %u",
                    id_text(t, id, id_len), rec_len, STORE_MAX_RECORD_LEN);
  if (w->nslots == 0 && (rc = grow_slots(w, d)) != 0)
    return rc;
  size_t nslots = w->nslots, slot = find_slot(w, id, id_len, &found);
  if (found)
    return diag_set(d, LMAP_EEXIST, "duplicate id '%s'",
                    id_text(t, id, id_len));
  if ((rc = reserve_record(w, id_len, d)) != 0 ||
      (rc = spill_append(w, rec, rec_len, d)) != 0)
    return rc;
  uint8_t *copy = w->blocks[w->nblocks - 1] + w->block_used;
  copy[0] = (uint8_t)id_len;
  memcpy(copy + 1, id, id_len);
  w->block_used += 1 + id_len;
  w->recs[w->count] = (wrec){copy, w->spill_size - rec_len, (uint32_t)rec_len};
  if (w->nslots != nslots) /* the set grew since the lookup above */
    slot = find_slot(w, id, id_len, &found);
  w->slots[slot] = (uint32_t)(w->count + 1);
  w->count++;
  return 0;
}

int store_writer_put_meta(store_writer *w, const char *key, const void *val,
                          size_t len, diag *d) {
  if (w->failed)
    return diag_set(d, w->failed, "%s: the writer failed earlier", w->path);
  size_t i = 0;
  while (i < NMETA && strcmp(key, meta_keys[i].key) != 0)
    i++;
  if (i == NMETA)
    return diag_set(d, LMAP_EINVAL,
                    "unknown metadata key \"%s\" (expected %s, %s or %s)", key,
                    META_KEY, DICT_KEY, CLASSES_KEY);
  if (len > meta_keys[i].max)
    return diag_set(d, LMAP_ETOOBIG,
                    "metadata \"%s\" is %zu bytes, more than the %zu a "
                    "reader accepts",
                    key, len, meta_keys[i].max);
  uint8_t *copy = malloc(len ? len : 1);
  if (copy == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory for metadata \"%s\"", key);
  if (len > 0)
    memcpy(copy, val, len);
  free(w->meta[i]);
  w->meta[i] = copy;
  w->meta_len[i] = len;
  return 0;
}

uint64_t store_writer_count(const store_writer *w) {
  return w->count;
}

/* ---- packing chunks ---- */

static int by_id(const void *a, const void *b) {
  const uint8_t *x = ((const wrec *)a)->id, *y = ((const wrec *)b)->id;
  return id_cmp(x + 1, x[0], y + 1, y[0]);
}

/* Length of the common prefix of two arena ids. */
static size_t common_prefix(const uint8_t *a, const uint8_t *b) {
  size_t m = a[0] < b[0] ? a[0] : b[0], i = 0;
  while (i < m && a[1 + i] == b[1 + i])
    i++;
  return i;
}

/*
 * How many records, from sorted record `s` on, make the next chunk. A
 * chunk above LMDB's node size lives on `pages(16 + size)` overflow pages
 * of `psize` bytes (16: LMDB's page header on 64-bit hosts), so only its
 * last page is partly empty. Records vary in size, so among the lengths
 * CHUNK_MIN..CHUNK_MAX the one that leaves the least of that page empty
 * wastes a few dozen bytes per chunk instead of half a page on average
 * (measured in docs/STORE_FORMAT.md §4.4). The remaining records go in one
 * chunk when they fit; no chunk passes CHUNK_MAX_BYTES unless it holds one
 * record, nor 64 KiB of id suffixes (16-bit offsets).
 */
static uint32_t chunk_length(const store_writer *w, size_t s, size_t psize) {
  const size_t page_header = sizeof(size_t) + 8;
  size_t left = w->count - s, fit = 0, best = 0, best_slack = SIZE_MAX;
  size_t prefix = w->recs[s].id[0], ids = 0, recs = 0;
  for (size_t n = 1; n <= left && n <= CHUNK_MAX; n++) {
    const wrec *r = &w->recs[s + n - 1];
    if (n > 1) {
      /* Sorted ids: the prefix shared by the first and the n-th is the
       * smallest of the neighbours' common prefixes. */
      size_t p = common_prefix(r[-1].id, r->id);
      prefix = p < prefix ? p : prefix;
    }
    ids += r->id[0];
    recs += r->len;
    size_t suffixes = ids - n * prefix;
    size_t size = CHUNK_HEADER + 6 * n + prefix + suffixes + recs;
    if (n > 1 && (size > CHUNK_MAX_BYTES || suffixes > CHUNK_MAX_SUFFIXES))
      break;
    fit = n;
    if (n == left)
      return (uint32_t)n;
    if (n >= CHUNK_MIN) {
      size_t slack = (psize - (page_header + size) % psize) % psize;
      if (slack <= best_slack) {
        best = n;
        best_slack = slack;
      }
    }
  }
  return (uint32_t)(best ? best : fit);
}

/*
 * The real reason of a failed LMDB write. LMDB turns a short write (what a
 * full file system gives first) into EIO, so a full disk read "Input/output
 * error". On EIO, one page of zeros written past the end of the file (about
 * to be removed anyway) asks the file system again: its errno (ENOSPC,
 * EDQUOT, EFBIG) is the cause; a short probe, or a file system with no
 * blocks left for this user, is ENOSPC. Otherwise EIO stands.
 */
static int write_errno(store_writer *w, int e) {
  mdb_filehandle_t fd;
  struct stat st;
  struct statvfs vs;
  static const uint8_t zeros[4096];
  if (e != EIO || w->env == NULL || mdb_env_get_fd(w->env, &fd) != 0 ||
      fstat(fd, &st) != 0)
    return e;
  ssize_t k = pwrite(fd, zeros, sizeof zeros, st.st_size);
  int err = errno;
  if (k >= 0)
    (void)ftruncate(fd, st.st_size);
  if (k < 0 && err != EIO && err != EINTR)
    return err;
  if ((k >= 0 && (size_t)k < sizeof zeros) ||
      (fstatvfs(fd, &vs) == 0 && vs.f_bavail == 0))
    return ENOSPC;
  return e;
}

/* An LMDB error while writing the store, with its real cause, naming the
 * temporary file. */
static int lmdb_write_fail(store_writer *w, diag *d, const char *what, int e) {
  e = write_errno(w, e);
  return diag_set(d, LMAP_EIO, "%s (writing %s): %s", what, w->tmp,
                  mdb_strerror(e));
}

/* Packs sorted records s..s+n-1 into one chunk, written straight into the
 * space LMDB reserves for it (appended: keys arrive in increasing order),
 * the records read from the spill file into place. *size is the value's
 * size. */
static int put_chunk(store_writer *w, MDB_dbi maps, size_t s, uint32_t n,
                     size_t *size, diag *d) {
  const wrec *r = w->recs + s;
  size_t p = common_prefix(r[0].id, r[n - 1].id), ids = 0, recs = 0;
  for (uint32_t i = 0; i < n; i++) {
    ids += r[i].id[0] - p;
    recs += r[i].len;
  }
  size_t dir = CHUNK_HEADER + (size_t)6 * n + p, start = dir + ids;
  MDB_val key = {r[0].id[0], (void *)(r[0].id + 1)}, val = {start + recs, NULL};
  int e = mdb_put(w->txn, maps, &key, &val, MDB_APPEND | MDB_RESERVE);
  if (e == MDB_MAP_FULL)
    return diag_set(d, LMAP_EIO, "%s: the store outgrew its LMDB map", w->path);
  if (e != 0)
    return lmdb_write_fail(w, d, "cannot write a chunk", e);
  uint8_t *v = val.mv_data, *rec_end = v + CHUNK_HEADER,
          *id_end = rec_end + (size_t)4 * n, *suffix = v + dir;
  v[4] = CHUNK_VERSION;
  v[5] = (uint8_t)p;
  put_le16(v + 6, n);
  memcpy(v + dir - p, r[0].id + 1, p);
  size_t so = 0, ro = 0;
  for (uint32_t i = 0; i < n; i++) {
    size_t sl = r[i].id[0] - p;
    memcpy(suffix + so, r[i].id + 1 + p, sl);
    so += sl;
    put_le16(id_end + (size_t)2 * i, (uint32_t)so);
    if (pread_all(w->fd, v + start + ro, r[i].len, r[i].off) != 0)
      return diag_set(d, LMAP_EIO, "%s: cannot read back the spill file: %s",
                      w->spill, errno ? strerror(errno) : "it ends early");
    ro += r[i].len;
    put_le32(rec_end + (size_t)4 * i, (uint32_t)ro);
  }
  put_le32(v, store_chunk_checksum(v + 4, start - 4));
  *size = val.mv_size;
  return 0;
}

/* Writes the whole store into the open environment w->env: chunks, then
 * the metadata the caller set, then the layout entry. Commits as it goes;
 * on return the last transaction is committed too. */
static int write_store(store_writer *w, diag *d) {
  MDB_dbi meta, maps;
  MDB_stat ms;
  uint64_t chunks = 0;
  size_t batch = 0, size = 0;
  char layout[128];
  int rc, e;
  if ((e = mdb_txn_begin(w->env, NULL, 0, &w->txn)) != 0) {
    w->txn = NULL;
    return lmdb_write_fail(w, d, "cannot begin a write transaction", e);
  }
  if ((e = mdb_dbi_open(w->txn, DB_META, MDB_CREATE, &meta)) != 0 ||
      (e = mdb_dbi_open(w->txn, DB_MAPS, MDB_CREATE, &maps)) != 0 ||
      (e = mdb_env_stat(w->env, &ms)) != 0)
    return lmdb_write_fail(w, d, "cannot create the databases", e);
  for (size_t s = 0; s < w->count; chunks++) {
    uint32_t n = chunk_length(w, s, ms.ms_psize);
    if ((rc = put_chunk(w, maps, s, n, &size, d)) != 0)
      return rc;
    s += n;
    /* Commit every so often: a transaction's dirty pages are bounded. */
    if ((batch += size) >= WRITE_BATCH_BYTES) {
      batch = 0;
      e = mdb_txn_commit(w->txn);
      w->txn = NULL;
      if (e == 0)
        e = mdb_txn_begin(w->env, NULL, 0, &w->txn);
      if (e != 0) {
        w->txn = NULL;
        return lmdb_write_fail(w, d, "cannot commit a batch of chunks", e);
      }
    }
  }
  for (size_t i = 0; i < NMETA; i++) {
    if (w->meta[i] == NULL)
      continue;
    MDB_val k = {strlen(meta_keys[i].key), (void *)meta_keys[i].key},
            v = {w->meta_len[i], w->meta[i]};
    if ((e = mdb_put(w->txn, meta, &k, &v, 0)) != 0)
      return lmdb_write_fail(w, d, "cannot write the metadata", e);
  }
  MDB_val k = {strlen(LAYOUT_KEY), (void *)LAYOUT_KEY}, v;
  v.mv_size = (size_t)snprintf(layout, sizeof layout,
                               "{\"chunk_count\": %llu, \"record_count\": "
                               "%llu}",
                               (unsigned long long)chunks,
                               (unsigned long long)w->count);
  v.mv_data = layout;
  if ((e = mdb_put(w->txn, meta, &k, &v, 0)) != 0)
    return lmdb_write_fail(w, d, "cannot write the chunk layout", e);
  e = mdb_txn_commit(w->txn);
  w->txn = NULL;
  if (e != 0)
    return lmdb_write_fail(w, d, "cannot commit", e);
  return 0;
}

/* Appends the checksum trailer (docs/STORE_FORMAT.md §7.1) to `fd`, whose
 * LMDB pages end at `pages_end`: reads the pages back (they are in the page
 * cache: the file was just written) and checksums each block. */
static int append_trailer(const char *tmp, int fd, uint64_t pages_end,
                          uint32_t psize, diag *d) {
  uint64_t npages = pages_end / psize,
           bsize = (uint64_t)STORE_PAGES_PER_BLOCK * psize;
  uint64_t nblocks =
      (npages + STORE_PAGES_PER_BLOCK - 1) / STORE_PAGES_PER_BLOCK;
  size_t len = TRAILER_FIXED + (size_t)nblocks * 8,
         body = TRAILER_HEAD + (size_t)nblocks * 8;
  size_t cap = bsize > CHECK_BUF ? (size_t)bsize : CHECK_BUF;
  uint8_t *t = calloc(1, len), *buf = malloc(cap);
  int rc = 0;
  if (t == NULL || buf == NULL || len > TRAILER_MAX) {
    rc = diag_set(d, LMAP_ENOMEM, "out of memory for the checksum trailer");
    goto done;
  }
  memcpy(t, TRAILER_MAGIC, 8);
  put_le32(t + 8, TRAILER_VERSION);
  put_le32(t + 12, psize);
  put_le64(t + 16, npages);
  put_le32(t + 24, STORE_PAGES_PER_BLOCK);
  put_le32(t + 28, TRAILER_HASH_XXH3);
  put_le64(t + 32, nblocks);
  uint64_t per = cap / bsize;
  for (uint64_t blk = 0; blk < nblocks;) {
    uint64_t off = blk * bsize, end = off + per * bsize;
    if (end > pages_end)
      end = pages_end;
    if (pread_exact(fd, buf, (size_t)(end - off), off) != 0) {
      rc = diag_set(d, LMAP_EIO, "%s: cannot read back its pages: %s", tmp,
                    errno ? strerror(errno) : "it ends early");
      goto done;
    }
    for (uint64_t o = off; o < end; o += bsize, blk++) {
      uint64_t bl = end - o < bsize ? end - o : bsize;
      put_le64(t + TRAILER_HEAD + 8 * blk, XXH3_64bits(buf + (o - off), bl));
    }
  }
  put_le64(t + body, XXH3_64bits(t, body));
  put_le64(t + body + 8, len);
  memcpy(t + body + 16, TRAILER_END_MAGIC, 8);
  for (size_t o = 0; o < len;) {
    ssize_t k = pwrite(fd, t + o, len - o, (off_t)(pages_end + o));
    if (k < 0 && errno == EINTR)
      continue;
    if (k < 0) {
      rc = diag_set(d, LMAP_EIO, "%s: cannot write the checksum trailer: %s",
                    tmp, strerror(errno));
      goto done;
    }
    o += (size_t)k;
  }
done:
  free(t);
  free(buf);
  return rc;
}

/* Pads the temporary file to the length its LMDB header claims, appends
 * the checksum trailer and flushes it to disk. LMDB does not write pages
 * that were allocated and freed within one transaction, so its file can
 * end before its last page number; readers refuse such a file (they
 * cannot tell it from a truncated one), and zeros in unreferenced free
 * pages are harmless. */
static int finish_file(store_writer *w, uint64_t needed, uint32_t psize,
                       diag *d) {
  int fd = open(w->tmp, O_RDWR | O_CLOEXEC);
  struct stat st;
  int rc = 0;
  if (fd < 0 || fstat(fd, &st) != 0) {
    rc =
        diag_set(d, LMAP_EIO, "%s: cannot reopen: %s", w->tmp, strerror(errno));
  } else if ((uint64_t)st.st_size != needed &&
             ftruncate(fd, (off_t)needed) != 0) {
    rc = diag_set(d, LMAP_EIO, "%s: cannot extend to %llu bytes: %s", w->tmp,
                  (unsigned long long)needed, strerror(errno));
  } else if ((rc = append_trailer(w->tmp, fd, needed, psize, d)) != 0) {
    /* named */
  } else if (fsync(fd) != 0) {
    rc = diag_set(d, LMAP_EIO, "%s: cannot sync: %s", w->tmp, strerror(errno));
  }
  if (fd >= 0)
    close(fd);
  return rc;
}

/* Puts the finished file in place: rename() when replacing is allowed;
 * otherwise link() + unlink(), which fails rather than replace a file that
 * appeared meanwhile (with a stat()+rename() fallback on filesystems
 * without hard links). */
static int place_file(const char *tmp, const char *path, int overwrite,
                      diag *d) {
  if (overwrite) {
    if (rename(tmp, path) != 0)
      return diag_set(d, LMAP_EIO, "%s: cannot rename into place: %s", path,
                      strerror(errno));
    return 0;
  }
  if (link(tmp, path) == 0) {
    unlink(tmp);
    return 0;
  }
  if (errno == EEXIST)
    return diag_set(d, LMAP_EEXIST,
                    "%s: appeared while the store was written; not replaced",
                    path);
  struct stat st;
  if (lstat(path, &st) == 0)
    return diag_set(d, LMAP_EEXIST,
                    "%s: appeared while the store was written; not replaced",
                    path);
  if (rename(tmp, path) != 0)
    return diag_set(d, LMAP_EIO, "%s: cannot rename into place: %s", path,
                    strerror(errno));
  return 0;
}

/* Syncs the directory holding `path`, so the rename survives a crash.
 * Best effort: some filesystems refuse fsync on directories. */
static void sync_dir(const char *path) {
  char *dir = strdup(path);
  if (dir == NULL)
    return;
  char *slash = strrchr(dir, '/');
  const char *name = ".";
  if (slash == dir)
    name = "/";
  else if (slash != NULL) {
    *slash = '\0';
    name = dir;
  }
  int fd = open(name, O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    (void)fsync(fd);
    close(fd);
  }
  free(dir);
}

int store_writer_commit(store_writer *w, diag *d) {
  int rc, e;
  MDB_envinfo info;
  MDB_stat ms;
  uint64_t needed;
  if (w->failed) {
    rc = diag_set(d, w->failed, "%s: the writer failed earlier", w->path);
    goto fail;
  }
  if ((rc = spill_flush(w, d)) != 0)
    goto fail;
  /* The hash set is not needed any more, and the LMDB file will take the
   * memory's place in the page cache. */
  free(w->slots);
  w->slots = NULL;
  w->nslots = 0;
  if (w->count > 1)
    qsort(w->recs, w->count, sizeof *w->recs, by_id);
  if ((rc = make_tmp(w->path, &w->tmp, NULL, d)) != 0 ||
      (rc = open_write_env(w->tmp, &w->env, d)) != 0 ||
      (rc = write_store(w, d)) != 0) {
    diag_prefix(d, w->path);
    goto fail;
  }
  if ((e = mdb_env_sync(w->env, 1)) != 0 ||
      (e = mdb_env_info(w->env, &info)) != 0 ||
      (e = mdb_env_stat(w->env, &ms)) != 0) {
    rc = lmdb_write_fail(w, d, "cannot sync", e);
    diag_prefix(d, w->path);
    goto fail;
  }
  needed = ((uint64_t)info.me_last_pgno + 1) * ms.ms_psize;
  mdb_env_close(w->env);
  w->env = NULL;
  if ((rc = finish_file(w, needed, ms.ms_psize, d)) != 0 ||
      (rc = place_file(w->tmp, w->path, w->overwrite, d)) != 0)
    goto fail;
  sync_dir(w->path);
  tmp_forget(w->tmp);
  free(w->tmp);
  w->tmp = NULL; /* placed: nothing left to remove */
  writer_discard(w);
  return 0;
fail:
  writer_discard(w);
  return rc;
}

/* ---- adding page checksums to an older store ---- */

int store_add_checksums(const char *src, const char *dst, int overwrite,
                        diag *d) {
  struct stat st;
  char *tmp = NULL;
  uint8_t *buf = NULL;
  uint32_t psize;
  uint64_t npages;
  int rc, state, out = -1, in = open(src, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (in < 0 || fstat(in, &st) != 0) {
    rc = diag_set(d, LMAP_EIO, "%s: cannot open: %s", src, strerror(errno));
    goto done;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = diag_set(d, LMAP_EBADSTORE, "%s: not a regular file", src);
    goto done;
  }
  /* Only a store without a trailer (one with a damaged or cut trailer is
   * not blessed here: it is refused as it is at open). */
  rc = precheck(in, (uint64_t)st.st_size, STORE_OPEN_NO_PAGE_CHECK, &state, d);
  if (rc == 0 && state != STORE_PAGES_NONE)
    rc = diag_set(d, LMAP_EINVAL, "already has page checksums");
  if (rc == 0)
    rc = precheck_lmdb(in, (uint64_t)st.st_size, &psize, &npages, d);
  if (rc != 0) {
    diag_prefix(d, src);
    goto done;
  }
  if (!overwrite && lstat(dst, &st) == 0) {
    rc = diag_set(d, LMAP_EEXIST, "%s: already exists (use --force)", dst);
    goto done;
  }
  if ((buf = malloc(CHECK_BUF)) == NULL) {
    rc = diag_set(d, LMAP_ENOMEM, "out of memory to copy the store");
    goto done;
  }
  if ((rc = make_tmp(dst, &tmp, &out, d)) != 0) {
    diag_prefix(d, dst);
    goto done;
  }
  for (uint64_t off = 0, end = npages * psize; off < end;) {
    size_t n = end - off < CHECK_BUF ? (size_t)(end - off) : CHECK_BUF;
    if (pread_exact(in, buf, n, off) != 0) {
      rc = read_fail(d, "the pages");
      diag_prefix(d, src);
      goto done;
    }
    for (size_t o = 0; o < n;) {
      ssize_t k = pwrite(out, buf + o, n - o, (off_t)(off + o));
      if (k < 0 && errno == EINTR)
        continue;
      if (k < 0) {
        rc =
            diag_set(d, LMAP_EIO, "%s: cannot write: %s", tmp, strerror(errno));
        goto done;
      }
      o += (size_t)k;
    }
    off += n;
  }
  if ((rc = append_trailer(tmp, out, npages * psize, psize, d)) != 0)
    goto done;
  if (fsync(out) != 0) {
    rc = diag_set(d, LMAP_EIO, "%s: cannot sync: %s", tmp, strerror(errno));
    goto done;
  }
  if ((rc = place_file(tmp, dst, overwrite, d)) != 0)
    goto done;
  sync_dir(dst);
  tmp_forget(tmp);
  free(tmp);
  tmp = NULL;
done:
  if (tmp != NULL) {
    unlink(tmp);
    tmp_forget(tmp);
    free(tmp);
  }
  if (out >= 0)
    close(out);
  if (in >= 0)
    close(in);
  free(buf);
  return rc;
}
