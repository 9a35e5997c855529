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

#include "store.h"
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

static int collect(void *ctx, const char *id, size_t id_len,
                   const uint8_t *rec, size_t rec_len) {
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
  TEST_DONE();
}
