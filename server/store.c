/*
 * store: the LMDB file that holds one label-map dataset (contract in
 * store.h, layout in docs/STORE_FORMAT.md). The only module that includes
 * lmdb.h.
 *
 * Reading. A store is opened read-only with MDB_NOLOCK (no lock file, no
 * reader table: the file never changes while served) and MDB_NORDAHEAD
 * (lookups are random). LMDB maps the file and trusts it: a page past the
 * end of a truncated file raises SIGBUS when touched, and LMDB has no
 * checksums. So store_open proves, before LMDB touches anything but the
 * two meta pages it reads with pread(), that the file is a regular file,
 * an LMDB file, and at least as long as its newest meta page says; then it
 * checks the lmap metadata against the maps database. Records carry their
 * own checksum (codec), which is what catches damaged data pages.
 *
 * Writing. A store_writer builds the file under a temporary name beside
 * the target, in batched transactions, and on commit syncs it, pads it to
 * the length its header claims (see store_writer_commit) and renames it
 * into place, so a store path only ever names a complete store. Every
 * failure path removes the temporary file.
 */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <lmdb.h>

#define META_KEY "lmap.meta"
#define DICT_KEY "lmap.dict"
#define CLASSES_KEY "lmap.classes"
#define DB_META "meta"
#define DB_MAPS "maps"

/* Caps on metadata values, checked before copying them out of the map. */
#define META_MAX (1u << 20)
#define DICT_MAX (16u << 20)
#define CLASSES_MAX (512u << 20)

/* Puts per write transaction: large enough that commits are rare, small
 * enough that the dirty pages of one batch stay far below LMDB's limit. */
#define WRITE_BATCH 4096u

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

static int check_id(const char *id, size_t len, diag *d) {
  char t[300];
  if (len == 0)
    return diag_set(d, LMAP_EBADID, "id is empty");
  if (len > STORE_MAX_ID_LEN)
    return diag_set(d, LMAP_EBADID, "id '%s' is %zu bytes; the limit is %d",
                    id_text(t, id, len), len, STORE_MAX_ID_LEN);
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
static int precheck_lmdb(int fd, uint64_t size, diag *d) {
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
  return check_size(size, last, psize, d);
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
};

static int meta_uint(json_t *root, const char *key, uint64_t lo, uint64_t hi,
                     uint64_t *out, diag *d) {
  json_t *v = json_object_get(root, key);
  if (v == NULL)
    return diag_field(d, LMAP_EBADSTORE, key,
                      "metadata has no \"%s\" field", key);
  if (!json_is_integer(v))
    return diag_field(d, LMAP_EBADSTORE, key,
                      "metadata field \"%s\" is not an integer", key);
  json_int_t x = json_integer_value(v);
  if (x < 0 || (uint64_t)x < lo || (uint64_t)x > hi)
    return diag_field(d, LMAP_EBADSTORE, key,
                      "metadata field \"%s\" is %lld, outside %llu..%llu",
                      key, (long long)x, (unsigned long long)lo,
                      (unsigned long long)hi);
  *out = (uint64_t)x;
  return 0;
}

static int meta_string(json_t *root, const char *key, const char **out,
                       diag *d) {
  json_t *v = json_object_get(root, key);
  if (v == NULL)
    return diag_field(d, LMAP_EBADSTORE, key,
                      "metadata has no \"%s\" field", key);
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
  const char *s;
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
  if ((rc = meta_uint(root, "format_version", 0, UINT32_MAX, &v, d)) != 0)
    goto done;
  if (v != STORE_FORMAT_VERSION) {
    rc = diag_field(d, LMAP_EVERSION, "format_version",
                    "store format_version %llu is not supported (this lmap "
                    "reads %d)",
                    (unsigned long long)v, STORE_FORMAT_VERSION);
    goto done;
  }
  m->format_version = (uint32_t)v;
  if ((rc = meta_uint(root, "grid_h", 1, UINT32_MAX, &h, d)) != 0 ||
      (rc = meta_uint(root, "grid_w", 1, UINT32_MAX, &w, d)) != 0 ||
      (rc = meta_uint(root, "topk", 1, UINT32_MAX, &k, d)) != 0 ||
      (rc = meta_uint(root, "num_classes", 1, UINT32_MAX, &c, d)) != 0)
    goto done;
  if ((rc = meta_string(root, "encoding", &s, d)) != 0)
    goto done;
  if (strcmp(s, "f16") == 0) {
    m->shape.encoding = CODEC_F16;
  } else if (strcmp(s, "f32") == 0) {
    m->shape.encoding = CODEC_F32;
  } else {
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
  if ((rc = meta_uint(root, "record_count", 0, UINT64_MAX >> 1,
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
    rc = diag_set(d, LMAP_EBADSTORE,
                  "store has %zu class names for %u classes",
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

/* Reads and checks everything store_open promises, inside `txn`. */
static int load_meta(store *s, MDB_txn *txn, diag *d) {
  MDB_dbi meta;
  MDB_val key, val;
  int class_names_flag = -1;
  int e = mdb_dbi_open(txn, DB_META, 0, &meta);
  if (e == MDB_NOTFOUND)
    return diag_set(d, LMAP_EBADSTORE,
                    "no lmap metadata (not an lmap store)");
  if (e != 0)
    return lmdb_fail(d, LMAP_EBADSTORE, "cannot open the meta database", e);
  key.mv_data = (void *)META_KEY;
  key.mv_size = strlen(META_KEY);
  e = mdb_get(txn, meta, &key, &val);
  if (e == MDB_NOTFOUND)
    return diag_set(d, LMAP_EBADSTORE,
                    "no lmap metadata (not an lmap store)");
  if (e != 0)
    return lmdb_fail(d, LMAP_EIO, "cannot read the metadata", e);
  if (val.mv_size > META_MAX)
    return diag_set(d, LMAP_EBADSTORE,
                    "metadata is %zu bytes, more than the %u allowed",
                    val.mv_size, META_MAX);
  if ((s->meta_json = dup_bytes(val.mv_data, val.mv_size)) == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory for the metadata");
  int rc = parse_meta(s->meta_json, val.mv_size, &s->meta, &class_names_flag,
                      d);
  if (rc != 0)
    return rc;

  e = mdb_dbi_open(txn, DB_MAPS, 0, &s->maps);
  if (e == MDB_NOTFOUND)
    return diag_set(d, LMAP_EBADSTORE, "no \"maps\" database");
  if (e != 0)
    return lmdb_fail(d, LMAP_EBADSTORE, "cannot open the maps database", e);
  MDB_stat st;
  if ((e = mdb_stat(txn, s->maps, &st)) != 0)
    return lmdb_fail(d, LMAP_EIO, "cannot count the records", e);
  if ((uint64_t)st.ms_entries != s->meta.record_count)
    return diag_set(d, LMAP_EBADSTORE,
                    "metadata says %llu records but the maps database holds "
                    "%llu",
                    (unsigned long long)s->meta.record_count,
                    (unsigned long long)st.ms_entries);

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
static int open_env(store *s, uint64_t size, diag *d) {
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
  s->file_size = (uint64_t)st.st_size;
  return check_size(s->file_size, (uint64_t)info.me_last_pgno, ms.ms_psize,
                    d);
}

int store_open(const char *path, store **out, diag *d) {
  *out = NULL;
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
  if ((rc = precheck_lmdb(fd, (uint64_t)st.st_size, d)) != 0)
    goto fail;
  close(fd);
  fd = -1;
  if ((rc = open_env(s, (uint64_t)st.st_size, d)) != 0)
    goto fail;
  e = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (e != 0) {
    rc = lmdb_fail(d, LMAP_EIO, "cannot begin a read transaction", e);
    goto fail;
  }
  if ((rc = load_meta(s, txn, d)) != 0)
    goto fail;
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

const store_meta *store_get_meta(const store *s) { return &s->meta; }

const char *store_meta_json(const store *s) { return s->meta_json; }

const char *store_class_names_json(const store *s) { return s->classes_json; }

uint64_t store_file_size(const store *s) { return s->file_size; }

/* ---- readers ---- */

struct store_reader {
  store *s;
  MDB_txn *txn; /* one read transaction for the reader's life */
  codec_ctx *codec;
  float *scores;
  uint32_t *classes;
};

void store_reader_free(store_reader *r) {
  if (r == NULL)
    return;
  if (r->txn != NULL)
    mdb_txn_abort(r->txn);
  codec_ctx_free(r->codec);
  free(r->scores);
  free(r->classes);
  free(r);
}

int store_reader_new(store *s, store_reader **out, diag *d) {
  *out = NULL;
  int rc, e;
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
  if ((rc = codec_ctx_new(sh, s->dict, s->dict_len, CODEC_LEVEL_DEFAULT,
                          &r->codec, d)) != 0)
    goto fail;
  /* With MDB_NOLOCK a read transaction takes no reader slot and the file
   * never changes, so holding one for the reader's life costs nothing. */
  e = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &r->txn);
  if (e != 0) {
    r->txn = NULL;
    rc = lmdb_fail(d, LMAP_EIO, "cannot begin a read transaction", e);
    goto fail;
  }
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

int store_reader_get(store_reader *r, const char *id, size_t id_len,
                     labelmap *out, diag *d) {
  char t[300];
  int rc = check_id(id, id_len, d);
  if (rc != 0)
    return rc;
  MDB_val key = {id_len, (void *)id}, val;
  int e = mdb_get(r->txn, r->s->maps, &key, &val);
  if (e == MDB_NOTFOUND)
    return diag_set(d, LMAP_ENOTFOUND, "no map for id '%s'",
                    id_text(t, id, id_len));
  if (e != 0)
    return lmdb_fail(d, LMAP_EIO, "cannot read a record", e);
  *out = reader_map(r);
  rc = codec_decode(r->codec, val.mv_data, val.mv_size, out, d);
  if (rc != 0) {
    char pre[340];
    snprintf(pre, sizeof pre, "record '%s'", id_text(t, id, id_len));
    diag_prefix(d, pre);
  }
  return rc;
}

int store_reader_decode(store_reader *r, const uint8_t *rec, size_t len,
                        labelmap *out, diag *d) {
  *out = reader_map(r);
  return codec_decode(r->codec, rec, len, out, d);
}

int store_foreach(store *s, store_visit_fn fn, void *ctx, diag *d) {
  MDB_txn *txn = NULL;
  MDB_cursor *cur = NULL;
  MDB_val key, val;
  int rc = 0;
  int e = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (e != 0)
    return lmdb_fail(d, LMAP_EIO, "cannot begin a read transaction", e);
  if ((e = mdb_cursor_open(txn, s->maps, &cur)) != 0) {
    rc = lmdb_fail(d, LMAP_EIO, "cannot open a cursor", e);
    goto done;
  }
  for (e = mdb_cursor_get(cur, &key, &val, MDB_FIRST); e == 0;
       e = mdb_cursor_get(cur, &key, &val, MDB_NEXT)) {
    rc = fn(ctx, key.mv_data, key.mv_size, val.mv_data, val.mv_size);
    if (rc != 0)
      goto done;
  }
  if (e != MDB_NOTFOUND)
    rc = lmdb_fail(d, LMAP_EIO, "cannot walk the records", e);
done:
  if (cur != NULL)
    mdb_cursor_close(cur);
  mdb_txn_abort(txn);
  return rc;
}

/* ---- writing ---- */

struct store_writer {
  char *path, *tmp;
  int overwrite;
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi meta, maps;
  uint64_t count;
  unsigned batch;  /* puts in the open transaction */
  int failed;      /* an LMDB error left no usable transaction */
  size_t mapsize;
  char max_id[STORE_MAX_ID_LEN]; /* the largest id put so far */
  size_t max_len;
  int unsorted; /* some id arrived below max_id: commit rewrites in order */
};

/* Frees the writer after removing its temporary file. */
static void writer_discard(store_writer *w) {
  if (w->txn != NULL)
    mdb_txn_abort(w->txn);
  if (w->env != NULL)
    mdb_env_close(w->env);
  if (w->tmp != NULL)
    unlink(w->tmp);
  free(w->path);
  free(w->tmp);
  free(w);
}

void store_writer_abort(store_writer *w) {
  if (w != NULL)
    writer_discard(w);
}

/* Creates a temporary file beside `path`, exclusively, as
 * "<path>.tmp.<pid>.<n>"; *tmp is its name (owned). */
static int make_tmp(const char *path, char **tmp, diag *d) {
  size_t len = strlen(path) + 48;
  char *t = malloc(len);
  *tmp = NULL;
  if (t == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory");
  for (unsigned n = 0; n < 1000; n++) {
    snprintf(t, len, "%s.tmp.%ld.%u", path, (long)getpid(), n);
    int fd = open(t, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd >= 0) {
      close(fd);
      *tmp = t;
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

/* Opens a write environment on `file`. The map is 1 TiB of address space
 * (nothing is allocated); a process limited below that gets smaller maps,
 * down to 256 MiB. */
static int open_write_env(const char *file, MDB_env **out, size_t *mapsize,
                          diag *d) {
  size_t size = sizeof(size_t) >= 8 ? (size_t)1 << 40 : (size_t)1 << 30;
  MDB_env *env;
  for (;;) {
    int e = mdb_env_create(&env);
    if (e != 0)
      return lmdb_fail(d, LMAP_ENOMEM, "cannot create an LMDB environment",
                       e);
    if ((e = mdb_env_set_maxdbs(env, 2)) == 0 &&
        (e = mdb_env_set_mapsize(env, size)) == 0)
      /* No lock file (the temporary file is private) and no sync per
       * commit: commit syncs once at the end. */
      e = mdb_env_open(env, file, MDB_NOSUBDIR | MDB_NOLOCK | MDB_NOSYNC,
                       0644);
    if (e == 0) {
      *out = env;
      *mapsize = size;
      return 0;
    }
    mdb_env_close(env);
    if (e != ENOMEM || size <= ((size_t)256 << 20))
      return lmdb_fail(d, LMAP_EIO, "LMDB cannot open the temporary file", e);
    size /= 4;
  }
}

static int writer_begin(store_writer *w, diag *d) {
  int e = mdb_txn_begin(w->env, NULL, 0, &w->txn);
  if (e != 0) {
    w->txn = NULL;
    w->failed = LMAP_EIO;
    return lmdb_fail(d, LMAP_EIO, "cannot begin a write transaction", e);
  }
  w->batch = 0;
  return 0;
}

int store_writer_open(const char *path, int overwrite, store_writer **out,
                      diag *d) {
  *out = NULL;
  int rc, e;
  struct stat st;
  if (path == NULL || path[0] == '\0')
    return diag_set(d, LMAP_EINVAL, "store path is empty");
  if (!overwrite && lstat(path, &st) == 0) {
    diag_set(d, LMAP_EEXIST, "already exists (pass overwrite to replace it)");
    diag_prefix(d, path);
    return LMAP_EEXIST;
  }
  store_writer *w = calloc(1, sizeof *w);
  if (w == NULL || (w->path = strdup(path)) == NULL) {
    free(w);
    return diag_set(d, LMAP_ENOMEM, "out of memory");
  }
  w->overwrite = overwrite;
  if ((rc = make_tmp(path, &w->tmp, d)) != 0 ||
      (rc = open_write_env(w->tmp, &w->env, &w->mapsize, d)) != 0 ||
      (rc = writer_begin(w, d)) != 0)
    goto fail;
  e = mdb_dbi_open(w->txn, DB_META, MDB_CREATE, &w->meta);
  if (e == 0)
    e = mdb_dbi_open(w->txn, DB_MAPS, MDB_CREATE, &w->maps);
  if (e != 0) {
    rc = lmdb_fail(d, LMAP_EIO, "cannot create the databases", e);
    goto fail;
  }
  *out = w;
  return 0;
fail:
  diag_prefix(d, path);
  writer_discard(w);
  return rc;
}

/* Maps an LMDB write error; any but a duplicate key leaves the
 * transaction unusable, so the writer fails from then on. */
static int writer_put_error(store_writer *w, int e, diag *d) {
  w->failed = LMAP_EIO;
  mdb_txn_abort(w->txn);
  w->txn = NULL;
  if (e == MDB_MAP_FULL)
    return diag_set(d, LMAP_EIO,
                    "%s: the store outgrew its %zu-byte LMDB map", w->path,
                    w->mapsize);
  return diag_set(d, LMAP_EIO, "%s: cannot write: %s", w->path,
                  mdb_strerror(e));
}

/* LMDB's default key order: bytewise, a prefix before its extensions. */
static int id_cmp(const char *a, size_t alen, const char *b, size_t blen) {
  int c = memcmp(a, b, alen < blen ? alen : blen);
  if (c != 0)
    return c;
  return alen < blen ? -1 : alen > blen;
}

int store_writer_put(store_writer *w, const char *id, size_t id_len,
                     const uint8_t *rec, size_t rec_len, diag *d) {
  char t[300];
  if (w->failed)
    return diag_set(d, w->failed, "%s: the writer failed earlier", w->path);
  int rc = check_id(id, id_len, d);
  if (rc != 0)
    return rc;
  if (rec_len == 0)
    return diag_set(d, LMAP_EINVAL, "record for id '%s' is empty",
                    id_text(t, id, id_len));
  MDB_val key = {id_len, (void *)id}, val = {rec_len, (void *)rec};
  /* An id above every id so far is appended: LMDB then fills each leaf
   * page instead of splitting it in half, which for records of about half
   * a page is the difference between one and two records per page. */
  int above = w->count == 0 || id_cmp(id, id_len, w->max_id, w->max_len) > 0;
  int e = mdb_put(w->txn, w->maps, &key, &val,
                  above ? MDB_APPEND : MDB_NOOVERWRITE);
  if (e == MDB_KEYEXIST)
    return diag_set(d, LMAP_EEXIST, "duplicate id '%s'",
                    id_text(t, id, id_len));
  if (e != 0)
    return writer_put_error(w, e, d);
  if (above) {
    memcpy(w->max_id, id, id_len);
    w->max_len = id_len;
  } else {
    w->unsorted = 1;
  }
  w->count++;
  if (++w->batch >= WRITE_BATCH) {
    e = mdb_txn_commit(w->txn);
    w->txn = NULL;
    if (e != 0) {
      w->failed = LMAP_EIO;
      return diag_set(d, LMAP_EIO, "%s: cannot commit a batch: %s", w->path,
                      mdb_strerror(e));
    }
    if ((rc = writer_begin(w, d)) != 0)
      return rc;
  }
  return 0;
}

int store_writer_put_meta(store_writer *w, const char *key, const void *val,
                          size_t len, diag *d) {
  if (w->failed)
    return diag_set(d, w->failed, "%s: the writer failed earlier", w->path);
  if (strcmp(key, META_KEY) != 0 && strcmp(key, DICT_KEY) != 0 &&
      strcmp(key, CLASSES_KEY) != 0)
    return diag_set(d, LMAP_EINVAL,
                    "unknown metadata key \"%s\" (expected %s, %s or %s)",
                    key, META_KEY, DICT_KEY, CLASSES_KEY);
  MDB_val k = {strlen(key), (void *)key}, v = {len, (void *)val};
  int e = mdb_put(w->txn, w->meta, &k, &v, 0);
  if (e != 0)
    return writer_put_error(w, e, d);
  return 0;
}

uint64_t store_writer_count(const store_writer *w) { return w->count; }

/* Flushes the temporary file to disk and pads it to the length its LMDB
 * header claims. LMDB does not write pages that were allocated and freed
 * within one transaction, so its file can end before its last page number;
 * readers refuse such a file (they cannot tell it from a truncated one),
 * and zeros in unreferenced free pages are harmless. */
static int finish_file(store_writer *w, uint64_t needed, diag *d) {
  int fd = open(w->tmp, O_RDWR | O_CLOEXEC);
  struct stat st;
  int rc = 0;
  if (fd < 0 || fstat(fd, &st) != 0) {
    rc = diag_set(d, LMAP_EIO, "%s: cannot reopen: %s", w->tmp,
                  strerror(errno));
  } else if ((uint64_t)st.st_size < needed &&
             ftruncate(fd, (off_t)needed) != 0) {
    rc = diag_set(d, LMAP_EIO, "%s: cannot extend to %llu bytes: %s",
                  w->tmp, (unsigned long long)needed, strerror(errno));
  } else if (fsync(fd) != 0) {
    rc = diag_set(d, LMAP_EIO, "%s: cannot sync: %s", w->tmp,
                  strerror(errno));
  }
  if (fd >= 0)
    close(fd);
  return rc;
}

/* Puts the finished file in place: rename() when replacing is allowed;
 * otherwise link() + unlink(), which fails rather than replace a file that
 * appeared meanwhile (with a stat()+rename() fallback on filesystems
 * without hard links). */
static int place_file(store_writer *w, diag *d) {
  if (w->overwrite) {
    if (rename(w->tmp, w->path) != 0)
      return diag_set(d, LMAP_EIO, "%s: cannot rename into place: %s",
                      w->path, strerror(errno));
    return 0;
  }
  if (link(w->tmp, w->path) == 0) {
    unlink(w->tmp);
    return 0;
  }
  if (errno == EEXIST)
    return diag_set(d, LMAP_EEXIST,
                    "%s: appeared while the store was written; not replaced",
                    w->path);
  struct stat st;
  if (lstat(w->path, &st) == 0)
    return diag_set(d, LMAP_EEXIST,
                    "%s: appeared while the store was written; not replaced",
                    w->path);
  if (rename(w->tmp, w->path) != 0)
    return diag_set(d, LMAP_EIO, "%s: cannot rename into place: %s", w->path,
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

/* Copies every entry of `src` (in key order, so appended) into `dst`,
 * committing every WRITE_BATCH entries. *wtxn is the open write
 * transaction on `env`, replaced as batches commit. */
static int copy_db(MDB_txn *rtxn, MDB_dbi src, MDB_env *env, MDB_txn **wtxn,
                   MDB_dbi dst, diag *d) {
  MDB_cursor *cur;
  MDB_val k, v;
  unsigned n = 0;
  int e = mdb_cursor_open(rtxn, src, &cur);
  if (e != 0)
    return lmdb_fail(d, LMAP_EIO, "cannot open a cursor", e);
  for (e = mdb_cursor_get(cur, &k, &v, MDB_FIRST); e == 0;
       e = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if ((e = mdb_put(*wtxn, dst, &k, &v, MDB_APPEND)) != 0)
      break;
    if (++n % WRITE_BATCH == 0) {
      e = mdb_txn_commit(*wtxn);
      *wtxn = NULL;
      if (e == 0)
        e = mdb_txn_begin(env, NULL, 0, wtxn);
      if (e != 0) {
        *wtxn = NULL;
        break;
      }
    }
  }
  mdb_cursor_close(cur);
  if (e != MDB_NOTFOUND)
    return lmdb_fail(d, LMAP_EIO, "cannot copy the records in order", e);
  return 0;
}

/* Rewrites the (committed) temporary store into a new temporary file in
 * key order, for writers whose ids did not arrive sorted: LMDB's page
 * splits leave a randomly filled tree about half empty, and with records
 * of half a page that nearly doubles the file. The new file replaces the
 * old one as the writer's temporary file. */
static int rewrite_sorted(store_writer *w, diag *d) {
  char *tmp2 = NULL;
  MDB_env *env2 = NULL;
  MDB_txn *rtxn = NULL, *wtxn = NULL;
  MDB_dbi meta2, maps2;
  size_t map2;
  int rc, e;
  if ((rc = make_tmp(w->path, &tmp2, d)) != 0)
    return rc;
  if ((rc = open_write_env(tmp2, &env2, &map2, d)) != 0)
    goto fail;
  if ((e = mdb_txn_begin(w->env, NULL, MDB_RDONLY, &rtxn)) != 0 ||
      (e = mdb_txn_begin(env2, NULL, 0, &wtxn)) != 0 ||
      (e = mdb_dbi_open(wtxn, DB_META, MDB_CREATE, &meta2)) != 0 ||
      (e = mdb_dbi_open(wtxn, DB_MAPS, MDB_CREATE, &maps2)) != 0) {
    rc = lmdb_fail(d, LMAP_EIO, "cannot start the sorted rewrite", e);
    goto fail;
  }
  if ((rc = copy_db(rtxn, w->meta, env2, &wtxn, meta2, d)) != 0 ||
      (rc = copy_db(rtxn, w->maps, env2, &wtxn, maps2, d)) != 0)
    goto fail;
  e = mdb_txn_commit(wtxn);
  wtxn = NULL;
  if (e != 0) {
    rc = lmdb_fail(d, LMAP_EIO, "cannot commit the sorted rewrite", e);
    goto fail;
  }
  mdb_txn_abort(rtxn);
  mdb_env_close(w->env);
  unlink(w->tmp);
  free(w->tmp);
  w->env = env2;
  w->tmp = tmp2;
  w->mapsize = map2;
  return 0;
fail:
  if (wtxn != NULL)
    mdb_txn_abort(wtxn);
  if (rtxn != NULL)
    mdb_txn_abort(rtxn);
  if (env2 != NULL)
    mdb_env_close(env2);
  unlink(tmp2);
  free(tmp2);
  return rc;
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
  e = mdb_txn_commit(w->txn);
  w->txn = NULL;
  if (e != 0) {
    rc = diag_set(d, LMAP_EIO, "%s: cannot commit: %s", w->path,
                  mdb_strerror(e));
    goto fail;
  }
  if (w->unsorted && (rc = rewrite_sorted(w, d)) != 0) {
    diag_prefix(d, w->path);
    goto fail;
  }
  if ((e = mdb_env_sync(w->env, 1)) != 0 ||
      (e = mdb_env_info(w->env, &info)) != 0 ||
      (e = mdb_env_stat(w->env, &ms)) != 0) {
    rc = diag_set(d, LMAP_EIO, "%s: cannot sync: %s", w->path,
                  mdb_strerror(e));
    goto fail;
  }
  needed = ((uint64_t)info.me_last_pgno + 1) * ms.ms_psize;
  mdb_env_close(w->env);
  w->env = NULL;
  if ((rc = finish_file(w, needed, d)) != 0 || (rc = place_file(w, d)) != 0)
    goto fail;
  sync_dir(w->path);
  free(w->tmp);
  w->tmp = NULL; /* placed: nothing left to remove */
  writer_discard(w);
  return 0;
fail:
  writer_discard(w);
  return rc;
}
