/*
 * writer: writes a new store (contract in store.h, layout in
 * docs/STORE_FORMAT.md). Linked by the import layer, not by lmapd.
 *
 * Why chunks. LMDB stores one value per B-tree node. A 2 KB record fits
 * only twice in a 4 KiB leaf page, a record above about 2,015 bytes takes
 * a 4 KiB overflow page of its own, and ids arriving in random order leave
 * leaves half empty: 4,164 file bytes for a 1,990-byte record. So each
 * "maps" value is a chunk of consecutive records (in id order) behind a
 * directory (chunk.h), keyed by its first id; a chunk spans overflow pages
 * that it fills, and only its last page is partly empty. The writer picks
 * each chunk's length among CHUNK_MIN..CHUNK_MAX records to leave that last
 * page as full as it can.
 *
 * How. store_writer_put appends each record to a spill file beside the
 * target and keeps (id, offset, length) in memory with a hash set of the
 * ids, so a duplicate is refused at once. Commit sorts that index, packs
 * the chunks straight into LMDB's reserved space (MDB_APPEND | MDB_RESERVE:
 * appending in key order fills every branch and leaf page), syncs the new
 * file, pads it to the length its header claims, appends the page
 * checksums (pagecheck.h) and renames it into place, so a store path only
 * ever names a complete store. Every failure path removes both temporary
 * files.
 */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <lmdb.h>

#include "chunk.h"
#include "common.h"
#include "core/fileio.h"
#include "pagecheck.h"

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
_Static_assert(CHUNK_MIN >= 1 && CHUNK_MIN <= CHUNK_MAX &&
                   CHUNK_MAX <= STORE_CHUNK_MAX_RECORDS,
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
} meta_keys[] = {{STORE_META_KEY, STORE_META_MAX},
                 {STORE_DICT_KEY, STORE_DICT_MAX},
                 {STORE_CLASSES_KEY, STORE_CLASSES_MAX}};
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

/* Removes the writer's temporary files and frees it. */
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
      return store_lmdb_fail(d, LMAP_ENOMEM,
                             "cannot create an LMDB environment", e);
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
      return store_lmdb_fail(d, LMAP_EIO, "LMDB cannot open the temporary file",
                             e);
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

static int spill_error(store_writer *w, diag *d) {
  w->failed = LMAP_EIO;
  return diag_set(d, LMAP_EIO, "%s: cannot write the spill file %s: %s",
                  w->path, w->spill, strerror(errno));
}

static int spill_flush(store_writer *w, diag *d) {
  if (w->buf_len > 0 && file_write_all(w->fd, w->buf, w->buf_len) != 0)
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
    if (file_write_all(w->fd, rec, len) != 0)
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
  char t[STORE_ID_TEXT];
  int found, rc;
  if (w->failed)
    return diag_set(d, w->failed, "%s: the writer failed earlier", w->path);
  if ((rc = store_check_id(id, id_len, d)) != 0)
    return rc;
  if (rec_len == 0)
    return diag_set(d, LMAP_EINVAL, "record for id '%s' is empty",
                    store_id_text(t, id, id_len));
  if (rec_len > STORE_MAX_RECORD_LEN)
    return diag_set(
        d, LMAP_ETOOBIG, "record for id '%s' is %zu bytes; the limit is %u",
        store_id_text(t, id, id_len), rec_len, STORE_MAX_RECORD_LEN);
  if (w->nslots == 0 && (rc = grow_slots(w, d)) != 0)
    return rc;
  size_t nslots = w->nslots, slot = find_slot(w, id, id_len, &found);
  if (found)
    return diag_set(d, LMAP_EEXIST, "duplicate id '%s'",
                    store_id_text(t, id, id_len));
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
                    STORE_META_KEY, STORE_DICT_KEY, STORE_CLASSES_KEY);
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
  return store_key_cmp(x + 1, x[0], y + 1, y[0]);
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
    size_t size = store_chunk_size((uint32_t)n, prefix, suffixes, recs);
    if (n > 1 &&
        (size > CHUNK_MAX_BYTES || suffixes > STORE_CHUNK_MAX_SUFFIXES))
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
  if (k >= 0 && ftruncate(fd, st.st_size) != 0) {
    /* The probe's zeros stay past LMDB's end: harmless, as the file is
     * removed when the commit fails. */
  }
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
  MDB_val key = {r[0].id[0], (void *)(r[0].id + 1)},
          val = {store_chunk_size(n, p, ids, recs), NULL};
  int e = mdb_put(w->txn, maps, &key, &val, MDB_APPEND | MDB_RESERVE);
  if (e == MDB_MAP_FULL)
    return diag_set(d, LMAP_EIO, "%s: the store outgrew its LMDB map", w->path);
  if (e != 0)
    return lmdb_write_fail(w, d, "cannot write a chunk", e);
  store_chunk_out c;
  store_chunk_begin(&c, val.mv_data, n, r[0].id + 1, p, ids);
  size_t so = 0, ro = 0;
  for (uint32_t i = 0; i < n; i++) {
    size_t sl = r[i].id[0] - p;
    memcpy(c.suffixes + so, r[i].id + 1 + p, sl);
    so += sl;
    if (store_pread_full(w->fd, c.records + ro, r[i].len, r[i].off) != 0)
      return diag_set(d, LMAP_EIO, "%s: cannot read back the spill file: %s",
                      w->spill, errno ? strerror(errno) : "it ends early");
    ro += r[i].len;
    store_chunk_set_ends(&c, i, so, ro);
  }
  store_chunk_seal(&c);
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
  if ((e = mdb_dbi_open(w->txn, STORE_DB_META, MDB_CREATE, &meta)) != 0 ||
      (e = mdb_dbi_open(w->txn, STORE_DB_MAPS, MDB_CREATE, &maps)) != 0 ||
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
  MDB_val k = {strlen(STORE_LAYOUT_KEY), (void *)STORE_LAYOUT_KEY}, v;
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
  } else if ((rc = pagecheck_append_trailer(w->tmp, fd, needed, psize, d)) !=
             0) {
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
  file_sync_dir(w->path);
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
  rc = pagecheck_file(in, (uint64_t)st.st_size, STORE_OPEN_NO_PAGE_CHECK,
                      &state, NULL, d);
  if (rc == 0 && state != STORE_PAGES_NONE)
    rc = diag_set(d, LMAP_EINVAL, "already has page checksums");
  if (rc == 0)
    rc = pagecheck_lmdb_header(in, (uint64_t)st.st_size, &psize, &npages, d);
  if (rc != 0) {
    diag_prefix(d, src);
    goto done;
  }
  if (!overwrite && lstat(dst, &st) == 0) {
    rc = diag_set(d, LMAP_EEXIST, "%s: already exists (use --force)", dst);
    goto done;
  }
  if ((buf = malloc(STORE_IO_BUF)) == NULL) {
    rc = diag_set(d, LMAP_ENOMEM, "out of memory to copy the store");
    goto done;
  }
  if ((rc = make_tmp(dst, &tmp, &out, d)) != 0) {
    diag_prefix(d, dst);
    goto done;
  }
  for (uint64_t off = 0, end = npages * psize; off < end;) {
    size_t n = end - off < STORE_IO_BUF ? (size_t)(end - off) : STORE_IO_BUF;
    if (store_pread_full(in, buf, n, off) != 0) {
      rc = store_read_fail(d, "the pages");
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
  if ((rc = pagecheck_append_trailer(tmp, out, npages * psize, psize, d)) != 0)
    goto done;
  if (fsync(out) != 0) {
    rc = diag_set(d, LMAP_EIO, "%s: cannot sync: %s", tmp, strerror(errno));
    goto done;
  }
  if ((rc = place_file(tmp, dst, overwrite, d)) != 0)
    goto done;
  file_sync_dir(dst);
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
