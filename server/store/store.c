/*
 * store: opening and reading a store, the LMDB file that holds one
 * label-map dataset (contract in store.h, layout in docs/STORE_FORMAT.md).
 * The store layer (server/store) is the only one that includes lmdb.h;
 * its writer is writer.c, the chunk format chunk.c, the checks made with
 * pread() before LMDB maps a file pagecheck.c.
 *
 * A store is opened read-only with MDB_NOLOCK (no lock file, no reader
 * table: the file never changes while served) and MDB_NORDAHEAD (lookups
 * are random). LMDB maps the file and trusts it: a page past the end of a
 * truncated file raises SIGBUS when touched, and LMDB has no checksums. So
 * store_open proves, before LMDB touches anything, that the file is a
 * regular file, an LMDB file at least as long as its newest meta page
 * says, and that every page matches its checksum (pagecheck.h); then it
 * checks the lmap metadata and the chunk count against the maps database
 * (without reading any chunk). A lookup finds the chunk whose first id is
 * the greatest not above the id (one cursor positioning), parses it
 * (chunk.h: header, region sizes, directory checksum) and binary-searches
 * the directory in place. Every directory field is checked against the
 * value's length before it is used, so a damaged chunk is LMAP_ECORRUPT and
 * never a read outside the value. Records carry their own checksum
 * (codec).
 */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <jansson.h>
#include <lmdb.h>
#include <xxhash.h>

#include "chunk.h"
#include "common.h"
#include "pagecheck.h"

/* ---- helpers ---- */

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

/* ---- metadata ---- */

struct store {
  char *path;
  MDB_env *env;
  MDB_dbi maps;
  store_meta meta;
  char *meta_json;          /* NUL-terminated copy of "lmap.meta" */
  char *classes_json;       /* NUL-terminated copy of "lmap.classes", or NULL */
  json_t *class_doc;        /* classes_json parsed, or NULL */
  const char **class_names; /* [num_classes] into class_doc, or NULL */
  void *dict;               /* copy of "lmap.dict", NULL when empty */
  size_t dict_len;
  uint64_t file_size;
  struct timespec mtime; /* at open, for store_file_check */
  uint64_t trailer_sum;  /* the checksum trailer's own checksum, 0 if none */
  char id[20];           /* store_id */
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
/* Checks the class names and, when they pass, keeps them parsed in
 * s->class_doc and s->class_names. */
static int check_classes(store *s, const char *text, size_t len, uint32_t n,
                         diag *d) {
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
  if (rc == 0 && (s->class_names = malloc(n * sizeof *s->class_names)) == NULL)
    rc = diag_set(d, LMAP_ENOMEM, "out of memory for the class names");
  if (rc != 0) {
    json_decref(root);
    return rc;
  }
  for (size_t i = 0; i < n; i++)
    s->class_names[i] = json_string_value(json_array_get(root, i));
  s->class_doc = root;
  return 0;
}

/* An LMDB error while reading the tree: a damaged tree is the store's
 * corruption, anything else an I/O error. */
static int lmdb_read_fail(diag *d, const char *what, int err) {
  int code = err == MDB_CORRUPTED || err == MDB_PAGE_NOTFOUND ? LMAP_ECORRUPT
                                                              : LMAP_EIO;
  return store_lmdb_fail(d, code, what, err);
}
/* Reads "lmap.layout" (written by the store writer, never by its caller)
 * and checks it against the metadata and the maps database. Counting
 * chunks is one mdb_stat; counting records would read every chunk, so the
 * writer's own record count stands in for it here and `lmap verify`, which
 * walks every chunk, compares the real count. */
static int load_layout(store *s, MDB_txn *txn, MDB_dbi meta, diag *d) {
  MDB_val key = {strlen(STORE_LAYOUT_KEY), (void *)STORE_LAYOUT_KEY}, val;
  MDB_stat st;
  json_error_t err;
  uint64_t chunks, records;
  int rc, e = mdb_get(txn, meta, &key, &val);
  if (e == MDB_NOTFOUND)
    return diag_set(d, LMAP_EBADSTORE,
                    "no chunk layout entry \"" STORE_LAYOUT_KEY "\" (corrupt)");
  if (e != 0)
    return store_lmdb_fail(d, LMAP_EIO, "cannot read the chunk layout", e);
  if (val.mv_size > STORE_LAYOUT_MAX)
    return diag_set(d, LMAP_EBADSTORE,
                    "chunk layout is %zu bytes, more than the %u allowed",
                    val.mv_size, STORE_LAYOUT_MAX);
  json_t *root =
      json_loadb(val.mv_data, val.mv_size, JSON_REJECT_DUPLICATES, &err);
  if (root == NULL || !json_is_object(root)) {
    json_decref(root);
    return diag_set(d, LMAP_EBADSTORE,
                    "chunk layout \"" STORE_LAYOUT_KEY
                    "\" is not a JSON object");
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
    return store_lmdb_fail(d, LMAP_EIO, "cannot count the chunks", e);
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
  int e = mdb_dbi_open(txn, STORE_DB_META, 0, &meta);
  if (e == MDB_NOTFOUND)
    return diag_set(d, LMAP_EBADSTORE, "no lmap metadata (not an lmap store)");
  if (e != 0)
    return store_lmdb_fail(d, LMAP_EBADSTORE, "cannot open the meta database",
                           e);
  key.mv_data = (void *)STORE_META_KEY;
  key.mv_size = strlen(STORE_META_KEY);
  e = mdb_get(txn, meta, &key, &val);
  if (e == MDB_NOTFOUND)
    return diag_set(d, LMAP_EBADSTORE, "no lmap metadata (not an lmap store)");
  if (e != 0)
    return store_lmdb_fail(d, LMAP_EIO, "cannot read the metadata", e);
  if (val.mv_size > STORE_META_MAX)
    return diag_set(d, LMAP_EBADSTORE,
                    "metadata is %zu bytes, more than the %u allowed",
                    val.mv_size, STORE_META_MAX);
  if ((s->meta_json = dup_bytes(val.mv_data, val.mv_size)) == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory for the metadata");
  int rc =
      parse_meta(s->meta_json, val.mv_size, &s->meta, &class_names_flag, d);
  if (rc != 0)
    return rc;

  e = mdb_dbi_open(txn, STORE_DB_MAPS, 0, &s->maps);
  if (e == MDB_NOTFOUND)
    return diag_set(d, LMAP_EBADSTORE, "no \"maps\" database");
  if (e != 0)
    return store_lmdb_fail(d, LMAP_EBADSTORE, "cannot open the maps database",
                           e);
  if ((rc = load_layout(s, txn, meta, d)) != 0)
    return rc;

  key.mv_data = (void *)STORE_DICT_KEY;
  key.mv_size = strlen(STORE_DICT_KEY);
  e = mdb_get(txn, meta, &key, &val);
  if (e != 0 && e != MDB_NOTFOUND)
    return store_lmdb_fail(d, LMAP_EIO, "cannot read the dictionary", e);
  if (e == 0 && val.mv_size > 0) {
    if (val.mv_size > STORE_DICT_MAX)
      return diag_set(d, LMAP_EBADSTORE,
                      "dictionary is %zu bytes, more than the %u allowed",
                      val.mv_size, STORE_DICT_MAX);
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

  key.mv_data = (void *)STORE_CLASSES_KEY;
  key.mv_size = strlen(STORE_CLASSES_KEY);
  e = mdb_get(txn, meta, &key, &val);
  if (e != 0 && e != MDB_NOTFOUND)
    return store_lmdb_fail(d, LMAP_EIO, "cannot read the class names", e);
  if (e == 0) {
    if (val.mv_size > STORE_CLASSES_MAX)
      return diag_set(d, LMAP_EBADSTORE,
                      "class names are %zu bytes, more than the %u allowed",
                      val.mv_size, STORE_CLASSES_MAX);
    if ((s->classes_json = dup_bytes(val.mv_data, val.mv_size)) == NULL)
      return diag_set(d, LMAP_ENOMEM, "out of memory for the class names");
    if ((rc = check_classes(s, s->classes_json, val.mv_size,
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
  free(s->class_names);
  json_decref(s->class_doc);
  free(s->dict);
  free(s);
}

/* Opens the environment read-only and repeats the size check against the
 * meta page LMDB itself picked, on LMDB's own descriptor. */
static int open_env(store *s, const struct stat *checked, diag *d) {
  uint64_t size = (uint64_t)checked->st_size;
  int e = mdb_env_create(&s->env);
  if (e != 0)
    return store_lmdb_fail(d, LMAP_ENOMEM, "cannot create an LMDB environment",
                           e);
  if ((e = mdb_env_set_maxdbs(s->env, 2)) != 0)
    return store_lmdb_fail(d, LMAP_EIO, "cannot configure LMDB", e);
  /* Map the file, not the writer's 1 TiB: LMDB grows the mapping to what
   * the header needs, which pagecheck_file proved the file holds. */
  if (size <= SIZE_MAX && (e = mdb_env_set_mapsize(s->env, (size_t)size)) != 0)
    return store_lmdb_fail(d, LMAP_EIO, "cannot configure LMDB", e);
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
    return store_lmdb_fail(d, LMAP_EIO, "LMDB cannot open it", e);

  mdb_filehandle_t fd;
  struct stat st;
  MDB_envinfo info;
  MDB_stat ms;
  if ((e = mdb_env_get_fd(s->env, &fd)) != 0 ||
      (e = mdb_env_info(s->env, &info)) != 0 ||
      (e = mdb_env_stat(s->env, &ms)) != 0)
    return store_lmdb_fail(d, LMAP_EIO, "cannot inspect the LMDB environment",
                           e);
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
  return pagecheck_size(s->file_size, (uint64_t)info.me_last_pgno, ms.ms_psize,
                        d);
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
    return store_lmdb_fail(a->d, LMAP_EIO, "cannot begin a read transaction",
                           e);
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
  if ((rc = pagecheck_file(fd, (uint64_t)st.st_size, flags, &s->meta.page_check,
                           &s->trailer_sum, d)) != 0)
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
  /* The trailer's checksum covers every page: equal ids, equal bytes. A
   * store without one gets a name of its metadata and size instead. */
  if (s->trailer_sum != 0)
    snprintf(s->id, sizeof s->id, "%016llx",
             (unsigned long long)s->trailer_sum);
  else
    snprintf(s->id, sizeof s->id, "m%015llx",
             (unsigned long long)(XXH3_64bits_withSeed(s->meta_json,
                                                       strlen(s->meta_json),
                                                       s->file_size) >>
                                  4));
  /* Committing, not aborting, keeps the database handles opened in this
   * transaction valid for the readers' transactions. */
  e = mdb_txn_commit(txn);
  txn = NULL;
  if (e != 0) {
    rc = store_lmdb_fail(d, LMAP_EIO, "cannot end the read transaction", e);
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

const char *const *store_class_names(const store *s) {
  return s->class_names;
}

const char *store_id(const store *s) {
  return s->id;
}

int store_dup_fd(const store *s) {
  mdb_filehandle_t fd;
  if (mdb_env_get_fd(s->env, &fd) != 0)
    return -1;
  return fcntl(fd, F_DUPFD_CLOEXEC, 0);
}

uint64_t store_file_size(const store *s) {
  return s->file_size;
}

/* LMDB does not say where it mapped the file (mdb_env_info's me_mapaddr is
 * only the address asked for with MDB_FIXEDMAP), so the mappings of this
 * file are found in /proc/self/maps by device and inode. */
void store_release_pages(store *s) {
  mdb_filehandle_t fd;
  struct stat st;
  if (mdb_env_get_fd(s->env, &fd) != 0 || fstat(fd, &st) != 0)
    return;
  FILE *f = fopen("/proc/self/maps", "re");
  if (f == NULL)
    return;
  char line[4352];
  while (fgets(line, sizeof line, f)) {
    unsigned long long lo, hi, ino;
    unsigned maj, mnr;
    if (sscanf(line, "%llx-%llx %*s %*s %x:%x %llu", &lo, &hi, &maj, &mnr,
               &ino) == 5 &&
        ino == (unsigned long long)st.st_ino && makedev(maj, mnr) == st.st_dev)
      madvise((void *)(uintptr_t)lo, (size_t)(hi - lo), MADV_DONTNEED);
  }
  fclose(f);
}

int store_file_check(const store *s, diag *d) {
  mdb_filehandle_t fd;
  struct stat st;
  int e = mdb_env_get_fd(s->env, &fd);
  if (e != 0)
    return store_lmdb_fail(d, LMAP_EBADSTORE, "cannot check the store file", e);
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
    return store_lmdb_fail(a->d, LMAP_EIO, "cannot begin a read transaction",
                           e);
  }
  if ((e = mdb_cursor_open(r->txn, r->s->maps, &r->cur)) != 0) {
    r->cur = NULL;
    return store_lmdb_fail(a->d, LMAP_EIO, "cannot open a cursor", e);
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
  labelmap m = {.k = sh->k,
                .h = sh->h,
                .w = sh->w,
                .scores = r->scores,
                .classes = r->classes};
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
  char t[STORE_ID_TEXT], t2[STORE_ID_TEXT], pre[700];
  MDB_val key, val;
  int exact, rc;
  int e = seek_chunk(r->cur, id, id_len, &key, &val, &exact);
  if (e == MDB_NOTFOUND)
    return diag_set(d, LMAP_ENOTFOUND, "no map for id '%s'",
                    store_id_text(t, id, id_len));
  if (e != 0) {
    /* LMDB has flagged the transaction in error: every later call on it
     * would answer MDB_BAD_TXN. Begin a new one before the next lookup. */
    r->stale = STALE_TXN;
    rc = lmdb_read_fail(d, "cannot read a chunk", e);
    snprintf(pre, sizeof pre, "record '%s'", store_id_text(t, id, id_len));
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
                    store_id_text(t, id, id_len));
  if (rc != 0) {
    snprintf(pre, sizeof pre, "record '%s' (chunk '%s')",
             store_id_text(t, id, id_len),
             store_id_text(t2, key.mv_data, key.mv_size));
    diag_prefix(d, pre);
    return rc;
  }
  *a->out = reader_map(r);
  rc = codec_decode(r->codec, rec, rec_len, a->out, d);
  if (rc != 0) {
    snprintf(pre, sizeof pre, "record '%s'", store_id_text(t, id, id_len));
    diag_prefix(d, pre);
  }
  return rc;
}

int store_reader_get(store_reader *r, const char *id, size_t id_len,
                     labelmap *out, diag *d) {
  char t[STORE_ID_TEXT], pre[340];
  int rc = store_check_id(id, id_len, d);
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
  snprintf(pre, sizeof pre, "record '%s'", store_id_text(t, id, id_len));
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

typedef struct ids_args {
  store_reader *r;
  const char *prefix, *after;
  size_t prefix_len, after_len, limit;
  store_id_fn fn;
  void *ctx;
  int *more;
  diag *d;
} ids_args;

/* Whether `id` is one store_reader_ids gives: after `after`, from
 * `prefix` on. Sets *past when `id` sorts after every id that starts with
 * the prefix (then every later one does too). */
static int id_wanted(const ids_args *a, const char *id, size_t len, int *past) {
  *past = 0;
  if (a->after_len && store_key_cmp(id, len, a->after, a->after_len) <= 0)
    return 0;
  if (store_key_cmp(id, len, a->prefix, a->prefix_len) < 0)
    return 0;
  if (len < a->prefix_len || memcmp(id, a->prefix, a->prefix_len) != 0) {
    *past = 1;
    return 0;
  }
  return 1;
}

/* The walk of store_reader_ids; reads only chunk directories. */
static int reader_ids(void *p) {
  ids_args *a = p;
  store_reader *r = a->r;
  diag *d = a->d;
  MDB_val key, val;
  char id[LABELMAP_MAX_ID_LEN], t[STORE_ID_TEXT], pre[340];
  size_t id_len = 0, rec_len = 0, given = 0;
  const uint8_t *rec;
  int exact, e = MDB_NOTFOUND, past = 0;
  /* The first chunk that can hold a wanted id: the one that would hold the
   * greater of `after` and the prefix. */
  const char *from = a->prefix;
  size_t from_len = a->prefix_len;
  if (a->after_len &&
      store_key_cmp(a->after, a->after_len, from, from_len) > 0) {
    from = a->after;
    from_len = a->after_len;
  }
  if (from_len)
    e = seek_chunk(r->cur, from, from_len, &key, &val, &exact);
  if (e == MDB_NOTFOUND) /* below every chunk: from the first */
    e = mdb_cursor_get(r->cur, &key, &val, MDB_FIRST);
  for (; e == 0 && !past; e = mdb_cursor_get(r->cur, &key, &val, MDB_NEXT)) {
    store_chunk c;
    int rc = store_chunk_parse(val.mv_data, val.mv_size, &c, d);
    for (uint32_t i = 0; rc == 0 && i < c.n && !past; i++) {
      rc = store_chunk_entry(&c, i, id, &id_len, &rec, &rec_len, d);
      if (rc != 0 || !id_wanted(a, id, id_len, &past))
        continue;
      if (given == a->limit) {
        *a->more = 1;
        return 0;
      }
      given++;
      rc = a->fn(a->ctx, id, id_len);
      if (rc != 0)
        return rc;
    }
    if (rc != 0) {
      snprintf(pre, sizeof pre, "chunk '%s'",
               store_id_text(t, key.mv_data, key.mv_size));
      diag_prefix(d, pre);
      return rc;
    }
  }
  if (e != 0 && e != MDB_NOTFOUND) {
    r->stale = STALE_TXN;
    return lmdb_read_fail(d, "cannot walk the chunks", e);
  }
  return 0;
}

int store_reader_ids(store_reader *r, const char *prefix, size_t prefix_len,
                     const char *after, size_t after_len, size_t limit,
                     store_id_fn fn, void *ctx, int *more, diag *d) {
  int rc;
  *more = 0;
  if (r->stale && (rc = reader_renew(r, d)) != 0)
    return rc;
  ids_args a = {r,     prefix, after, prefix_len, after_len,
                limit, fn,     ctx,   more,       d};
  rc = guarded(reader_ids, &a);
  if (rc != GUARD_FAULT)
    return rc;
  r->stale = STALE_ALL;
  return fault_diag(r->s, 1, d);
}

/* A walk over the chunks in key order (store_foreach, store_iter). */
typedef struct chunk_walk {
  MDB_cursor *cur;
  int started;
  uint64_t chunks;
  char last[LABELMAP_MAX_ID_LEN]; /* the previous chunk's last id */
  size_t last_len;
} chunk_walk;

/* The walk's next chunk into *c, checked in full before any of its
 * records is read (structure, directory checksum, ids valid and strictly
 * increasing across the store, first id equal to the key). Returns 1, 0 at
 * the end (after checking the chunk count), or an error naming the chunk.
 * Reads the mapping: call it under the guard. */
static int next_chunk(const store *s, chunk_walk *w, store_chunk *c, diag *d) {
  char t[STORE_ID_TEXT], pre[340];
  MDB_val key, val;
  int e = mdb_cursor_get(w->cur, &key, &val, w->started ? MDB_NEXT : MDB_FIRST);
  w->started = 1;
  if (e == MDB_NOTFOUND) {
    if (w->chunks != s->meta.chunk_count)
      return diag_set(d, LMAP_ECORRUPT,
                      "walked %llu chunks but the store holds %llu (corrupt "
                      "tree)",
                      (unsigned long long)w->chunks,
                      (unsigned long long)s->meta.chunk_count);
    return 0;
  }
  if (e != 0)
    return lmdb_read_fail(d, "cannot walk the chunks", e);
  int rc = store_chunk_parse(val.mv_data, val.mv_size, c, d);
  if (rc == 0)
    rc = store_chunk_check(c, key.mv_data, key.mv_size, w->last, &w->last_len,
                           d);
  if (rc != 0) {
    snprintf(pre, sizeof pre, "chunk '%s'",
             store_id_text(t, key.mv_data, key.mv_size));
    diag_prefix(d, pre);
    return rc;
  }
  w->chunks++;
  return 1;
}

/* A pull-style walk (store_iter_next), with the checks of store_foreach. */
struct store_iter {
  store *s;
  MDB_txn *txn;
  chunk_walk walk;
  store_chunk chunk; /* the chunk being read; i entries of it given */
  uint32_t i;
  int ended;
  /* the record being handed out, copied out of the mapping */
  char id[LABELMAP_MAX_ID_LEN + 1];
  size_t id_len;
  uint8_t *rec;
  size_t rec_len, rec_cap;
  diag *d;
};

int store_iter_new(store *s, store_iter **out, diag *d) {
  *out = NULL;
  if (file_shrank(s))
    return fault_diag(s, 1, d);
  store_iter *it = calloc(1, sizeof *it);
  if (it == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory");
  it->s = s;
  int e = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &it->txn);
  if (e != 0) {
    free(it);
    return store_lmdb_fail(d, LMAP_EIO, "cannot begin a read transaction", e);
  }
  if ((e = mdb_cursor_open(it->txn, s->maps, &it->walk.cur)) != 0) {
    mdb_txn_abort(it->txn);
    free(it);
    return store_lmdb_fail(d, LMAP_EIO, "cannot open a cursor", e);
  }
  *out = it;
  return 0;
}

void store_iter_free(store_iter *it) {
  if (it == NULL)
    return;
  mdb_cursor_close(it->walk.cur);
  mdb_txn_abort(it->txn);
  free(it->rec);
  free(it);
}

/* The step of store_iter_next; every read of the mapping is in here. */
static int iter_step(void *p) {
  store_iter *it = p;
  diag *d = it->d;
  while (!it->walk.started || it->i == it->chunk.n) {
    int rc = next_chunk(it->s, &it->walk, &it->chunk, d);
    if (rc <= 0) {
      it->ended = 1;
      return rc;
    }
    it->i = 0;
  }
  /* Checked with its chunk: cannot fail. */
  const uint8_t *rec;
  size_t len;
  int rc = store_chunk_entry(&it->chunk, it->i++, it->id, &it->id_len, &rec,
                             &len, d);
  if (rc != 0)
    return rc;
  it->id[it->id_len] = '\0';
  /* Copied here, under the guard: the caller may read it after a cut. */
  if (len > it->rec_cap) {
    uint8_t *grown = realloc(it->rec, len);
    if (grown == NULL)
      return diag_set(d, LMAP_ENOMEM, "out of memory");
    it->rec = grown;
    it->rec_cap = len;
  }
  memcpy(it->rec, rec, len);
  it->rec_len = len;
  return 1;
}

int store_iter_next(store_iter *it, const char **id, const uint8_t **rec,
                    size_t *rec_len, diag *d) {
  if (it->ended)
    return 0;
  it->d = d;
  int rc = guarded(iter_step, it);
  if (rc == GUARD_FAULT) {
    it->ended = 1;
    return fault_diag(it->s, 1, d);
  }
  if (rc < 0)
    it->ended = 1;
  if (rc == 1) {
    *id = it->id;
    *rec = it->rec;
    *rec_len = it->rec_len;
  }
  return rc;
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
  char id[LABELMAP_MAX_ID_LEN];
  size_t id_len = 0, rec_len = 0;
  const uint8_t *rec;
  int e = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &a->txn);
  if (e != 0) {
    a->txn = NULL;
    return store_lmdb_fail(d, LMAP_EIO, "cannot begin a read transaction", e);
  }
  chunk_walk w = {0};
  if ((e = mdb_cursor_open(a->txn, s->maps, &a->cur)) != 0) {
    a->cur = NULL;
    return store_lmdb_fail(d, LMAP_EIO, "cannot open a cursor", e);
  }
  w.cur = a->cur;
  store_chunk c;
  int rc;
  while ((rc = next_chunk(s, &w, &c, d)) == 1)
    for (uint32_t i = 0; i < c.n; i++) {
      /* Checked with its chunk: cannot fail. */
      if ((rc = store_chunk_entry(&c, i, id, &id_len, &rec, &rec_len, d)) !=
              0 ||
          (rc = a->fn(a->ctx, id, id_len, rec, rec_len)) != 0)
        return rc;
    }
  return rc;
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
