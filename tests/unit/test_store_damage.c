/*
 * Unit tests for what happens to a store that is damaged or changed under
 * its readers, on real stores made by the real `lmap synth` ($LMAP_BIN)
 * under $LMAP_TEST_TMP (or /tmp/store):
 * - truncated while a reader has it open: lookups in the cut region fail
 *   with LMAP_EBADSTORE naming the cause (the process survives its
 *   SIGBUS), lookups elsewhere go on, the walk stops with the same error,
 *   and the same reader serves everything again once the bytes are back; a
 *   SIGBUS outside any store read still kills the process.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "store/store.h"
#include "test.h"

static char dir[512];

static void path_of(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/%s", dir, name);
}

static void make_dirs(void) {
  const char *base = getenv("LMAP_TEST_TMP");
  char cmd[1200];
  snprintf(dir, sizeof dir, "%s/test_store_damage",
           base && base[0] ? base : "/tmp/store");
  snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", dir, dir);
  ASSERT_EQ(system(cmd), 0);
}

static uint8_t *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  ASSERT(f != NULL);
  fseek(f, 0, SEEK_END);
  *len = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = malloc(*len ? *len : 1);
  ASSERT_EQ(fread(b, 1, *len, f), *len);
  fclose(f);
  return b;
}

static void write_all(const char *path, const void *b, size_t len) {
  FILE *f = fopen(path, "wb");
  ASSERT(f != NULL);
  ASSERT_EQ(fwrite(b, 1, len, f), len);
  ASSERT_EQ(fclose(f), 0);
}

/* Makes a synthetic store of `n` images with the real lmap tool. */
static void synth(const char *path, int n) {
  const char *bin = getenv("LMAP_BIN");
  char cmd[1400];
  snprintf(cmd, sizeof cmd,
           "'%s' synth -o '%s' --images %d --level 1 --threads 1 --force "
           ">/dev/null",
           bin && bin[0] ? bin : "lmap", path, n);
  ASSERT_EQ(system(cmd), 0);
}

/* The ids of a store, in key order (NUL-terminated, 63 bytes at most). */
typedef struct idlist {
  char (*id)[64];
  size_t n, cap;
} idlist;

static int collect(void *ctx, const char *id, size_t id_len, const uint8_t *rec,
                   size_t rec_len) {
  (void)rec;
  (void)rec_len;
  idlist *l = ctx;
  if (l->n == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 1024;
    l->id = realloc(l->id, l->cap * sizeof *l->id);
    ASSERT(l->id != NULL);
  }
  ASSERT(id_len < 64);
  memcpy(l->id[l->n], id, id_len);
  l->id[l->n++][id_len] = '\0';
  return 0;
}

static idlist ids_of(const char *path) {
  idlist l = {0};
  store *s = NULL;
  diag d = {0};
  ASSERT_EQ(store_open(path, &s, &d), 0);
  ASSERT_EQ(store_foreach(s, collect, &l, &d), 0);
  store_close(s);
  return l;
}

/* Looks every id up; returns how many were served, asserting each other
 * lookup failed with `code` and a message holding `why` and the id. */
static size_t lookup_all(store_reader *r, const idlist *l, int code,
                         const char *why) {
  size_t ok = 0;
  labelmap m;
  for (size_t i = 0; i < l->n; i++) {
    diag d = {0};
    int rc = store_reader_get(r, l->id[i], strlen(l->id[i]), &m, &d);
    if (rc == 0) {
      ok++;
      continue;
    }
    if (rc != code || strstr(d.msg, why) == NULL)
      fprintf(stderr, "get(%s) = %d (%s), want %d (%s)\n", l->id[i], rc, d.msg,
              code, why);
    ASSERT_EQ(rc, code);
    ASSERT_CONTAINS(d.msg, why);
    ASSERT_CONTAINS(d.msg, l->id[i]);
  }
  return ok;
}

static int count_visit(void *ctx, const char *id, size_t id_len,
                       const uint8_t *rec, size_t rec_len) {
  (void)id;
  (void)id_len;
  /* Touch every byte of the record, as a decoder would. */
  unsigned sum = 0;
  for (size_t i = 0; i < rec_len; i++)
    sum += rec[i];
  *(uint64_t *)ctx += 1 + (sum & 0);
  return 0;
}

/* ---- truncated under a reader (SIGBUS) ---- */

static void test_truncated_under_reader(const char *good, const idlist *l) {
  char p[700];
  diag d = {0};
  size_t len;
  uint8_t *img = read_all(good, &len);
  path_of(p, sizeof p, "cut.lmap");
  write_all(p, img, len);

  store *s = NULL;
  store_reader *r = NULL;
  ASSERT_EQ(store_open(p, &s, &d), 0);
  ASSERT_EQ(store_reader_new(s, &r, &d), 0);
  ASSERT_EQ(lookup_all(r, l, 0, ""), l->n); /* every page faulted in */
  ASSERT_EQ(store_file_check(s, &d), 0);

  /* Cut the file in the middle of its records: the kernel unmaps the
   * pages past the new end, and touching them raises SIGBUS. */
  int fd = open(p, O_RDWR);
  ASSERT(fd >= 0);
  off_t cut = (off_t)(len / 2) & ~(off_t)4095;
  ASSERT_EQ(ftruncate(fd, cut), 0);
  size_t ok = lookup_all(r, l, LMAP_EBADSTORE, "truncated while being read");
  printf("truncated to %lld of %zu bytes: %zu of %zu ids still served\n",
         (long long)cut, len, ok, l->n);
  ASSERT(ok < l->n);
  ASSERT(ok > 0); /* the chunks and tree pages before the cut */
  {
    labelmap m;
    size_t i = l->n - 1;
    while (store_reader_get(r, l->id[i], strlen(l->id[i]), &m, &d) == 0)
      i--;
    ASSERT_CONTAINS(d.msg, p);
    char want[128];
    snprintf(want, sizeof want, "(%zu bytes at open, %lld now)", len,
             (long long)cut);
    ASSERT_CONTAINS(d.msg, want);
  }
  ASSERT_EQ(store_file_check(s, &d), LMAP_EBADSTORE);
  ASSERT_CONTAINS(d.msg, "changed size");
  uint64_t visited = 0;
  ASSERT_EQ(store_foreach(s, count_visit, &visited, &d), LMAP_EBADSTORE);
  ASSERT_CONTAINS(d.msg, "truncated while being read");
  ASSERT(visited < l->n);

  /* The bytes back (the mapping is shared: the same pages reappear): the
   * same reader serves every id again. */
  ASSERT_EQ(pwrite(fd, img + cut, len - (size_t)cut, cut),
            (ssize_t)(len - (size_t)cut));
  ASSERT_EQ(lookup_all(r, l, 0, ""), l->n);
  visited = 0;
  ASSERT_EQ(store_foreach(s, count_visit, &visited, &d), 0);
  ASSERT_EQ(visited, l->n);

  /* Cut to nothing: even beginning a transaction (the meta pages) faults,
   * and a reader that cannot renew reports it each time. */
  ASSERT_EQ(ftruncate(fd, 0), 0);
  ASSERT_EQ(lookup_all(r, l, LMAP_EBADSTORE, "truncated while being read"), 0);
  store_reader *r2 = NULL;
  ASSERT_EQ(store_reader_new(s, &r2, &d), LMAP_EBADSTORE);
  ASSERT_CONTAINS(d.msg, "truncated while being read");
  ASSERT(r2 == NULL);
  ASSERT_EQ(pwrite(fd, img, len, 0), (ssize_t)len);
  ASSERT_EQ(lookup_all(r, l, 0, ""), l->n);
  close(fd);
  store_reader_free(r);
  store_close(s);
  free(img);
}

/* A SIGBUS that is not a store read is not swallowed: the process dies of
 * it as it would without the store module (a fault of its own mapping,
 * and one sent by kill). */
static void test_foreign_sigbus(const char *good) {
  for (int how = 0; how < 2; how++) {
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
      store *s = NULL;
      if (store_open(good, &s, NULL) != 0) /* installs the handler */
        _exit(3);
      if (how == 1)
        kill(getpid(), SIGBUS);
      char p[700];
      path_of(p, sizeof p, "foreign.bin");
      int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
      if (fd < 0 || ftruncate(fd, 8192) != 0)
        _exit(4);
      volatile char *m = mmap(NULL, 8192, PROT_READ, MAP_SHARED, fd, 0);
      if (m == MAP_FAILED || ftruncate(fd, 0) != 0)
        _exit(5);
      char c = m[4096];
      _exit(c == 0 ? 6 : 7);
    }
    int st;
    ASSERT_EQ(waitpid(pid, &st, 0), pid);
#ifdef __SANITIZE_ADDRESS__
    /* AddressSanitizer's handler was there first: it reports the fault
     * and exits 1. */
    if (WIFEXITED(st) && WEXITSTATUS(st) == 1)
      continue;
#endif
    if (!WIFSIGNALED(st))
      fprintf(stderr, "child %d exited %d\n", how, WEXITSTATUS(st));
    ASSERT(WIFSIGNALED(st));
    ASSERT_EQ(WTERMSIG(st), SIGBUS);
  }
}

/* ---- page damage ---- */

/* LMDB 0.9's page layout on 64-bit hosts (mdb.c): a 16-byte header (pgno,
 * pad, flags, lower, upper; an overflow page keeps its page count where
 * lower and upper would be), then `lower - 16` bytes of u16 node offsets.
 * A node: lo, hi, flags, ksize (u16 each), then the key; a branch node's
 * child page number is lo | hi << 16 | flags << 32. */
#define PS 4096u
#define P_BRANCH 0x01u
#define P_LEAF 0x02u
#define P_OVERFLOW 0x04u
#define P_META 0x08u
#define F_BIGDATA 0x01u

static uint16_t u16at(const uint8_t *p) {
  uint16_t v;
  memcpy(&v, p, 2);
  return v;
}

static uint32_t u32at(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

static uint64_t u64at(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

/* Where things are in a store image: LMDB's pages end at `pages_end`. */
typedef struct layout {
  size_t pages_end, npages;
  size_t branch;    /* a branch page of the maps tree */
  size_t leaf_last; /* the maps tree's last leaf page */
  size_t overflow;  /* the first page of a chunk's overflow run */
} layout;

static layout find_pages(const uint8_t *img, size_t len) {
  layout l = {0};
  ASSERT(memcmp(img + len - 8, "LMAPEND1", 8) == 0);
  l.pages_end = len - (size_t)u64at(img + len - 16);
  l.npages = l.pages_end / PS;
  for (size_t i = 2; i < l.npages; i++) {
    const uint8_t *pg = img + i * PS;
    uint16_t flags = u16at(pg + 10);
    if (flags & P_OVERFLOW) {
      if (l.overflow == 0)
        l.overflow = i;
      i += u32at(pg + 12) - 1;
      continue;
    }
    if (!(flags & (P_BRANCH | P_LEAF)))
      continue;
    const uint8_t *node = pg + u16at(pg + 16);
    if ((flags & P_BRANCH) && l.branch == 0)
      l.branch = i;
    if ((flags & P_LEAF) && (u16at(node + 4) & F_BIGDATA) && node[8] == 'n')
      l.leaf_last = i;
  }
  ASSERT(l.branch != 0 && l.leaf_last != 0 && l.overflow != 0);
  return l;
}

typedef struct bad_seen {
  uint64_t n, block, first_page, pages, offset, len;
} bad_seen;

static void on_bad(void *ctx, uint64_t block, uint64_t first_page,
                   uint64_t pages, uint64_t offset, uint64_t len) {
  bad_seen *b = ctx;
  if (b->n++ == 0) {
    b->block = block;
    b->first_page = first_page;
    b->pages = pages;
    b->offset = offset;
    b->len = len;
  }
}

/* Asserts that the store at `p`, damaged in page `page`, is refused by
 * store_open and store_check_file naming the block that holds the page
 * and its byte offsets. */
static void refused_page(const char *p, size_t page, const char *what) {
  store *s = (store *)1;
  diag d = {0};
  char want[160];
  uint64_t blk = page / STORE_PAGES_PER_BLOCK, first = blk * 16;
  snprintf(want, sizeof want, "page damage: block %llu of ",
           (unsigned long long)blk);
  int rc = store_open(p, &s, &d);
  if (rc != LMAP_EBADSTORE || strstr(d.msg, want) == NULL)
    fprintf(stderr, "%s: store_open = %d (%s)\n", what, rc, d.msg);
  ASSERT_EQ(rc, LMAP_EBADSTORE);
  ASSERT(s == NULL);
  ASSERT_CONTAINS(d.msg, p);
  ASSERT_CONTAINS(d.msg, want);
  snprintf(want, sizeof want, "(pages %llu..", (unsigned long long)first);
  ASSERT_CONTAINS(d.msg, want);
  snprintf(want, sizeof want, "bytes %llu..", (unsigned long long)(first * PS));
  ASSERT_CONTAINS(d.msg, want);
  ASSERT_CONTAINS(d.msg, "fails its checksum");
  bad_seen b = {0};
  ASSERT_EQ(store_check_file(p, on_bad, &b, &d), LMAP_EBADSTORE);
  ASSERT_CONTAINS(d.msg, p);
  ASSERT_EQ(b.n, 1);
  ASSERT_EQ(b.block, blk);
  ASSERT_EQ(b.first_page, first);
  ASSERT(page >= b.first_page && page < b.first_page + b.pages);
  ASSERT_EQ(b.offset, first * PS);
  ASSERT_EQ(b.len, b.pages * PS);
  printf("%s (page %zu): %s\n", what, page, d.msg);
}

/* Runs `fn` in a child process and says how it ended (for damage that
 * crashes LMDB itself when the page checks are off). */
static int in_child(void (*fn)(const char *, const idlist *), const char *p,
                    const idlist *l) {
  fflush(NULL);
  pid_t pid = fork();
  ASSERT(pid >= 0);
  if (pid == 0) {
    fn(p, l);
    _exit(0);
  }
  int st;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  return WIFSIGNALED(st) ? -WTERMSIG(st) : WEXITSTATUS(st);
}

static void lookup_unchecked(const char *p, const idlist *l) {
  store *s = NULL;
  store_reader *r = NULL;
  labelmap m;
  if (store_open_flags(p, STORE_OPEN_NO_PAGE_CHECK, &s, NULL) != 0 ||
      store_reader_new(s, &r, NULL) != 0)
    _exit(3);
  for (size_t i = 0; i < l->n; i++)
    store_reader_get(r, l->id[i], strlen(l->id[i]), &m, NULL);
  _exit(4);
}

static void test_page_damage(const char *tiny, const idlist *l) {
  char p[700];
  size_t len;
  uint8_t *img = read_all(tiny, &len);
  layout lo = find_pages(img, len);
  path_of(p, sizeof p, "pages.lmap");
  bad_seen b = {0};
  diag d = {0};
  ASSERT_EQ(store_check_file(tiny, on_bad, &b, &d), 0);
  ASSERT_EQ(b.n, 0);

  /* A leaf node pointer past its page (what crashed lmapd and `lmap
   * verify` with SIGSEGV): the last leaf's first node offset set near
   * 64 KiB, past the end of the map. */
  uint8_t *ptr = img + lo.leaf_last * PS + 16, save[8];
  memcpy(save, ptr, 2);
  ptr[0] = 0xF0;
  ptr[1] = 0xFF;
  write_all(p, img, len);
  memcpy(ptr, save, 2);
  int how = in_child(lookup_unchecked, p, l);
  printf("leaf pointer damage, page checks off: the child %s %d\n",
         how < 0 ? "died of signal" : "exited", how < 0 ? -how : how);
  refused_page(p, lo.leaf_last, "leaf node pointer past its page");

  /* A branch node's child page number raised past the last page. */
  uint8_t *br = img + lo.branch * PS;
  uint8_t *node = br + u16at(br + 16 + 2 * 1);
  memcpy(save, node, 2);
  node[1] ^= 0x7F;
  write_all(p, img, len);
  memcpy(node, save, 2);
  refused_page(p, lo.branch, "branch pointer");

  /* A byte of a chunk on its overflow pages (the chunk's own checks would
   * catch it too, when read). */
  img[lo.overflow * PS + 100] ^= 0x01;
  write_all(p, img, len);
  img[lo.overflow * PS + 100] ^= 0x01;
  refused_page(p, lo.overflow, "overflow page");

  /* Either meta page: the magic, the last page number, the main root. */
  size_t meta_offs[] = {16, 136, PS + 136, PS + 128, PS - 1};
  for (size_t i = 0; i < sizeof meta_offs / sizeof meta_offs[0]; i++) {
    img[meta_offs[i]] ^= 0x04;
    write_all(p, img, len);
    img[meta_offs[i]] ^= 0x04;
    refused_page(p, meta_offs[i] / PS, "meta page");
  }
  free(img);
}

/* Damage to the trailer itself: refused by its own checksum even with the
 * page checks off, and a trailer that disagrees with LMDB's header. */
static void test_trailer_damage(const char *tiny) {
  char p[700];
  size_t len;
  uint8_t *img = read_all(tiny, &len);
  layout lo = find_pages(img, len);
  size_t tlen = len - lo.pages_end;
  path_of(p, sizeof p, "trailer.lmap");
  struct {
    size_t off; /* from the trailer's start */
    const char *why;
  } cases[] = {
      {0, "fails its own checksum"},                 /* start magic */
      {12, "fails its own checksum"},                /* page size */
      {40, "fails its own checksum"},                /* first block checksum */
      {tlen - 24, "fails its own checksum"},         /* trailer checksum */
      {tlen - 16, "checksum trailer"},               /* its length */
      {tlen - 1, "not a complete checksum trailer"}, /* end magic */
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    for (int flags = 0; flags < 2; flags++) {
      uint8_t *at = img + lo.pages_end + cases[k].off;
      *at ^= 0x10;
      write_all(p, img, len);
      *at ^= 0x10;
      store *s = (store *)1;
      diag d = {0};
      int rc =
          store_open_flags(p, flags ? STORE_OPEN_NO_PAGE_CHECK : 0, &s, &d);
      if (rc != LMAP_EBADSTORE || strstr(d.msg, cases[k].why) == NULL)
        fprintf(stderr, "trailer case %zu: %d %s\n", k, rc, d.msg);
      ASSERT_EQ(rc, LMAP_EBADSTORE);
      ASSERT_CONTAINS(d.msg, cases[k].why);
      ASSERT_CONTAINS(d.msg, p);
      ASSERT_EQ(store_check_file(p, NULL, NULL, &d), LMAP_EBADSTORE);
      ASSERT_CONTAINS(d.msg, cases[k].why);
    }
  }
  free(img);
}

/* A store written before page checksums: LMDB's pages alone. Refused by
 * default and by store_check_file, opened and served with the page checks
 * off, and reported as unchecked. */
static void test_no_trailer(const char *tiny, const idlist *l) {
  char p[700];
  size_t len;
  uint8_t *img = read_all(tiny, &len);
  layout lo = find_pages(img, len);
  path_of(p, sizeof p, "old.lmap");
  write_all(p, img, lo.pages_end);
  store *s = (store *)1;
  diag d = {0};
  ASSERT_EQ(store_open(p, &s, &d), LMAP_EBADSTORE);
  ASSERT_CONTAINS(d.msg, "has no checksum trailer");
  ASSERT_EQ(store_check_file(p, NULL, NULL, &d), LMAP_EBADSTORE);
  ASSERT_CONTAINS(d.msg, "has no checksum trailer");
  ASSERT_EQ(store_open_flags(p, STORE_OPEN_NO_PAGE_CHECK, &s, &d), 0);
  ASSERT_EQ(store_get_meta(s)->page_check, STORE_PAGES_NONE);
  store_reader *r = NULL;
  ASSERT_EQ(store_reader_new(s, &r, &d), 0);
  ASSERT_EQ(lookup_all(r, l, 0, ""), l->n);
  store_reader_free(r);
  store_close(s);
  ASSERT_EQ(store_open(tiny, &s, &d), 0);
  ASSERT_EQ(store_get_meta(s)->page_check, STORE_PAGES_CHECKED);
  store_close(s);
  free(img);
}

/* ---- a reader recovers after an LMDB error ---- */

/* A branch node's child page number raised past the last page: LMDB
 * answers MDB_PAGE_NOTFOUND for the ids under that child, and flags its
 * transaction in error, after which every call on it (healthy ids too)
 * answered MDB_BAD_TXN until the reader was rebuilt. Each failed lookup
 * must leave the reader able to serve the next healthy id. Two ways to
 * get there: a store opened with the page checks off, and damage written
 * into the file after it was opened and checked (the mapping is shared). */
static void test_reader_recovers(const char *tiny, const idlist *l) {
  char p[700];
  size_t len;
  uint8_t *img = read_all(tiny, &len);
  layout lo = find_pages(img, len);
  uint8_t *br = img + lo.branch * PS;
  size_t node = lo.branch * PS + u16at(br + 16 + 2 * 1);
  path_of(p, sizeof p, "branch.lmap");
  for (int after_open = 0; after_open < 2; after_open++) {
    uint8_t was = img[node + 1];
    if (!after_open)
      img[node + 1] ^= 0x7F;
    write_all(p, img, len);
    img[node + 1] = was;
    store *s = NULL;
    store_reader *r = NULL;
    diag d = {0};
    ASSERT_EQ(
        store_open_flags(p, after_open ? 0 : STORE_OPEN_NO_PAGE_CHECK, &s, &d),
        0);
    ASSERT_EQ(store_reader_new(s, &r, &d), 0);
    if (after_open) {
      int fd = open(p, O_WRONLY);
      uint8_t bad = was ^ 0x7F;
      ASSERT(fd >= 0);
      ASSERT_EQ(pwrite(fd, &bad, 1, (off_t)node + 1), 1);
      close(fd);
    }
    /* Every id either served or LMAP_ECORRUPT (never LMAP_EIO from a
     * poisoned transaction), interleaved: a damaged one, then the first
     * id of the store, which lies under a healthy child. */
    size_t ok = 0, bad = 0;
    labelmap m;
    for (size_t i = 0; i < l->n; i++) {
      int rc = store_reader_get(r, l->id[i], strlen(l->id[i]), &m, &d);
      if (rc != 0 && rc != LMAP_ECORRUPT)
        fprintf(stderr, "get(%s) after %zu damaged: %d %s\n", l->id[i], bad, rc,
                d.msg);
      ASSERT(rc == 0 || rc == LMAP_ECORRUPT);
      if (rc == 0) {
        ok++;
        continue;
      }
      if (bad++ == 0)
        printf("branch damage (%s): %s\n",
               after_open ? "written after open" : "page checks off", d.msg);
      ASSERT_CONTAINS(d.msg, l->id[i]);
      ASSERT_EQ(store_reader_get(r, l->id[0], strlen(l->id[0]), &m, &d), 0);
    }
    printf("  %zu ids served, %zu under the damaged pointer refused\n", ok,
           bad);
    ASSERT(bad > 0 && ok > 0);
    store_reader_free(r);
    store_close(s);
  }
  free(img);
}

int main(void) {
  make_dirs();
  char good[700];
  path_of(good, sizeof good, "good.lmap");
  synth(good, 3000);
  idlist l = ids_of(good);
  ASSERT_EQ(l.n, 3000);
  test_truncated_under_reader(good, &l);
  test_foreign_sigbus(good);
  free(l.id);

  /* Tiny records (2x2, top-1): 50,000 of them make a maps tree of several
   * leaf pages under a branch page in a 3 MB file. */
  char tiny[700];
  path_of(tiny, sizeof tiny, "tiny.lmap");
  {
    const char *bin = getenv("LMAP_BIN");
    char cmd[1400];
    snprintf(cmd, sizeof cmd,
             "'%s' synth -o '%s' --images 50000 --grid 2 --topk 1 --level 1 "
             "--threads 1 --force >/dev/null",
             bin && bin[0] ? bin : "lmap", tiny);
    ASSERT_EQ(system(cmd), 0);
  }
  l = ids_of(tiny);
  ASSERT_EQ(l.n, 50000);
  test_reader_recovers(tiny, &l);
  test_page_damage(tiny, &l);
  test_trailer_damage(tiny);
  test_no_trailer(tiny, &l);
  free(l.id);
  TEST_DONE();
}
