/*
 * importer: directory and tar sources for the build pipeline (importer.h).
 *
 * Tars are read with libarchive as a stream (any tar flavour, optionally
 * gzip/zstd/xz compressed), so a 12 GB release is never extracted to disk
 * and '-' reads it from a pipe. Directories are walked once up front and
 * sorted, so the order (and any "first bad file") is deterministic and the
 * progress line can show an ETA.
 */
#include "importer.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ptfile.h"
#include "store/store.h"

/* ---- shared: a file name -> id, and the worker's parse ---- */

static const char *base_name(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash ? slash + 1 : path;
}

static int has_pt_suffix(const char *name) {
  size_t n = strlen(name);
  return n > 3 && strcmp(name + n - 3, ".pt") == 0;
}

/* The id is the base name without ".pt"; an invalid one is left empty and
 * reported by load(), which knows the reason. */
static void id_from_name(const char *name, build_item *it) {
  const char *base = base_name(name);
  size_t n = strlen(base);
  if (has_pt_suffix(base))
    n -= 3;
  if (n < sizeof it->id) {
    memcpy(it->id, base, n);
    it->id[n] = '\0';
  }
}

static void *parser_new(void *ctx) {
  (void)ctx;
  return calloc(1, sizeof(ptfile_out));
}

static void parser_free(void *wstate) {
  ptfile_out_free(wstate);
  free(wstate);
}

static int parse_item(void *ctx, void *wstate, const build_item *it,
                      labelmap *out, diag *d) {
  (void)ctx;
  if (it->bad[0])
    return diag_set(d, LMAP_EFORMAT, "%s", it->bad);
  if (!has_pt_suffix(it->name))
    return diag_set(d, LMAP_EFORMAT, "not a .pt file");
  const char *base = base_name(it->name);
  int rc = labelmap_id_check(base, strlen(base) - 3, d);
  if (rc)
    return rc;
  ptfile_out *po = wstate;
  rc = ptfile_parse(it->blob, it->len, po, d);
  if (rc == 0)
    *out = po->map;
  return rc;
}

/* ---- directory source ---- */

typedef struct dir_source {
  char **paths;
  size_t count, cap, next;
} dir_source;

static int add_path(dir_source *s, const char *path, diag *d) {
  if (s->count == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 1024;
    char **p = realloc(s->paths, cap * sizeof *p);
    if (p == NULL)
      return diag_set(d, LMAP_ENOMEM, "out of memory listing files");
    s->paths = p;
    s->cap = cap;
  }
  s->paths[s->count] = strdup(path);
  if (s->paths[s->count] == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory listing files");
  s->count++;
  return 0;
}

/* Collects every regular *.pt file under `dir`; symlinks are not followed,
 * so a link cycle cannot trap the walk. */
static int walk(dir_source *s, const char *dir, int depth, diag *d) {
  if (depth > 64)
    return diag_set(d, LMAP_EFORMAT, "%s: directories nested too deep", dir);
  DIR *dh = opendir(dir);
  if (dh == NULL)
    return diag_set(d, LMAP_EIO, "%s: cannot open directory: %s", dir,
                    strerror(errno));
  int rc = 0;
  struct dirent *e;
  char path[BUILD_MAX_NAME];
  while (rc == 0 && (e = readdir(dh)) != NULL) {
    if (e->d_name[0] == '.' &&
        (e->d_name[1] == '\0' || (e->d_name[1] == '.' && !e->d_name[2])))
      continue;
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >=
        sizeof path) {
      rc = diag_set(d, LMAP_EFORMAT, "%s/%s: path too long", dir, e->d_name);
      break;
    }
    struct stat sb;
    if (lstat(path, &sb) != 0) {
      rc = diag_set(d, LMAP_EIO, "%s: %s", path, strerror(errno));
    } else if (S_ISDIR(sb.st_mode)) {
      rc = walk(s, path, depth + 1, d);
    } else if (S_ISREG(sb.st_mode) && has_pt_suffix(e->d_name)) {
      rc = add_path(s, path, d);
    }
  }
  closedir(dh);
  return rc;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads a whole file, NUL-terminated, refusing more than `cap` bytes with
 * LMAP_ETOOBIG. A regular file is sized up front and read in one call (the
 * import's hot path); anything else (a pipe for --classes) grows as read. */
static int read_file(const char *path, size_t cap, uint8_t **out, size_t *len,
                     diag *d) {
  FILE *f = fopen(path, "rb");
  if (f == NULL)
    return diag_set(d, LMAP_EIO, "%s: cannot open: %s", path, strerror(errno));
  struct stat sb;
  int regular = 0, rc = 0;
  if (fstat(fileno(f), &sb) != 0)
    rc = diag_set(d, LMAP_EIO, "%s: %s", path, strerror(errno));
  else if (S_ISDIR(sb.st_mode))
    rc = diag_set(d, LMAP_EIO, "%s: is a directory", path);
  else if ((regular = S_ISREG(sb.st_mode)) && (uint64_t)sb.st_size > cap)
    rc = diag_set(d, LMAP_ETOOBIG, "%s: file is %lld bytes, more than %zu",
                  path, (long long)sb.st_size, cap);
  size_t n = 0, size = regular ? (size_t)sb.st_size : 4096;
  uint8_t *buf = rc ? NULL : malloc(size + 1);
  if (rc == 0 && buf == NULL)
    rc = diag_set(d, LMAP_ENOMEM, "%s: out of memory", path);
  while (rc == 0) {
    n += fread(buf + n, 1, size - n, f);
    if (n < size || regular)
      break;
    if (size >= cap) {
      rc = diag_set(d, LMAP_ETOOBIG, "%s: more than %zu bytes", path, cap);
      break;
    }
    size = size * 2 > cap ? cap : size * 2;
    uint8_t *p = realloc(buf, size + 1);
    if (p == NULL)
      rc = diag_set(d, LMAP_ENOMEM, "%s: out of memory", path);
    else
      buf = p;
  }
  if (rc == 0 && (ferror(f) || (regular && n != size)))
    rc = diag_set(d, LMAP_EIO, "%s: short read", path);
  fclose(f);
  if (rc) {
    free(buf);
    return rc;
  }
  buf[n] = '\0';
  *out = buf;
  *len = n;
  return 0;
}

static int dir_next(void *ctx, build_item *it, diag *d) {
  dir_source *s = ctx;
  if (s->next == s->count)
    return 0;
  const char *path = s->paths[s->next++];
  snprintf(it->name, sizeof it->name, "%s", path);
  id_from_name(path, it);
  diag e;
  int rc = read_file(path, IMPORTER_MAX_FILE, &it->blob, &it->len, &e);
  if (rc == LMAP_ETOOBIG) { /* bad in itself: skippable */
    snprintf(it->bad, sizeof it->bad,
             "file is larger than the %u bytes a label map may take",
             IMPORTER_MAX_FILE);
    return 1;
  }
  if (rc)
    *d = e;
  return rc ? rc : 1;
}

static double dir_progress(void *ctx) {
  dir_source *s = ctx;
  return s->count ? (double)s->next / (double)s->count : -1;
}

/* ---- tar source ---- */

typedef struct tar_source {
  struct archive *a;
  const char *path; /* for messages; "-" is stdin */
  uint64_t size;    /* of the tar file, 0 if unknown */
} tar_source;

/* Hands out the next member. Members that are bad in themselves (not a
 * .pt, a link, too large) are handed out unread with their reason, so that
 * --skip-bad skips them and the import otherwise fails naming them. */
static int tar_next(void *ctx, build_item *it, diag *d) {
  tar_source *s = ctx;
  const char *tar = strcmp(s->path, "-") ? s->path : "<stdin>";
  struct archive_entry *e;
  for (;;) {
    int r = archive_read_next_header(s->a, &e);
    if (r == ARCHIVE_EOF)
      return 0;
    if (r < ARCHIVE_WARN)
      return diag_set(d, LMAP_EFORMAT, "%s: %s", tar,
                      archive_error_string(s->a));
    const char *name = archive_entry_pathname(e);
    int regular = archive_entry_filetype(e) == AE_IFREG;
    /* Directories and other non-files that are not .pt are skipped, as a
     * directory walk would; a .pt that is a link is not. */
    if (regular || archive_entry_hardlink(e) || (name && has_pt_suffix(name)))
      break;
  }
  const char *name = archive_entry_pathname(e);
  snprintf(it->name, sizeof it->name, "%s", name ? name : "?");
  id_from_name(it->name, it);
  int64_t size = archive_entry_size(e);
  const char *link = archive_entry_hardlink(e);
  if (link) {
    snprintf(it->bad, sizeof it->bad,
             "hard link to %.200s: the tar holds one copy for both names; "
             "re-create it with tar --hard-dereference",
             link);
    return 1;
  }
  if (archive_entry_filetype(e) != AE_IFREG) {
    snprintf(it->bad, sizeof it->bad, "not a regular file (a link?)");
    return 1;
  }
  if (!has_pt_suffix(it->name)) {
    snprintf(it->bad, sizeof it->bad, "not a .pt file");
    return 1;
  }
  if (size < 0 || (uint64_t)size > IMPORTER_MAX_FILE) {
    snprintf(it->bad, sizeof it->bad,
             "member is %lld bytes, more than the %u a label map may take",
             (long long)size, IMPORTER_MAX_FILE);
    return 1;
  }
  it->blob = malloc((size_t)size + 1);
  if (it->blob == NULL)
    return diag_set(d, LMAP_ENOMEM, "%s: out of memory", it->name);
  la_ssize_t got = archive_read_data(s->a, it->blob, (size_t)size);
  if (got != size)
    return diag_set(d, LMAP_EFORMAT, "%s: %s: member truncated (%s)", tar,
                    it->name,
                    got < 0 ? archive_error_string(s->a) : "short read");
  it->len = (size_t)size;
  return 1;
}

static double tar_progress(void *ctx) {
  tar_source *s = ctx;
  if (s->size == 0)
    return -1;
  return (double)archive_filter_bytes(s->a, -1) / (double)s->size;
}

static int tar_open(tar_source *s, const char *path, diag *d) {
  s->path = path;
  s->a = archive_read_new();
  if (s->a == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory");
  archive_read_support_format_tar(s->a);
  archive_read_support_filter_all(s->a);
  int r;
  if (strcmp(path, "-") == 0) {
    r = archive_read_open_fd(s->a, 0, 1 << 20);
  } else {
    struct stat sb;
    if (stat(path, &sb) == 0)
      s->size = (uint64_t)sb.st_size;
    r = archive_read_open_filename(s->a, path, 1 << 20);
  }
  if (r != ARCHIVE_OK)
    return diag_set(d, LMAP_EFORMAT, "%s: not a readable tar: %s",
                    strcmp(path, "-") ? path : "<stdin>",
                    archive_error_string(s->a));
  return 0;
}

/* ---- store source: the records of an lmap store, decoded ---- */

typedef struct store_source {
  const char *path;
  store *s;
  store_iter *it;
  uint64_t given;
} store_source;

int importer_is_store(const char *path) {
  /* LMDB's meta page: a 16-byte page header, then its magic. */
  unsigned char head[20];
  FILE *f = strcmp(path, "-") ? fopen(path, "rb") : NULL;
  size_t n = f ? fread(head, 1, sizeof head, f) : 0;
  if (f)
    fclose(f);
  return n == sizeof head && head[16] == 0xDE && head[17] == 0xC0 &&
         head[18] == 0xEF && head[19] == 0xBE;
}

static int store_next(void *ctx, build_item *it, diag *d) {
  store_source *s = ctx;
  const char *id;
  const uint8_t *rec;
  size_t len;
  int rc = store_iter_next(s->it, &id, &rec, &len, d);
  if (rc < 0)
    diag_prefix(d, s->path);
  if (rc <= 0)
    return rc;
  snprintf(it->name, sizeof it->name, "%s: record '%s'", s->path, id);
  snprintf(it->id, sizeof it->id, "%s", id);
  it->blob = malloc(len ? len : 1);
  if (it->blob == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory");
  memcpy(it->blob, rec, len);
  it->len = len;
  s->given++;
  return 1;
}

/* A reader per worker, for its codec context and buffers; NULL when it
 * cannot be had (the pipeline then fails the build). */
static void *store_worker_new(void *ctx) {
  store_source *s = ctx;
  store_reader *r = NULL;
  diag d;
  return store_reader_new(s->s, &r, &d) == 0 ? r : NULL;
}

static void store_worker_free(void *wstate) {
  store_reader_free(wstate);
}

static int store_load(void *ctx, void *wstate, const build_item *it,
                      labelmap *out, diag *d) {
  (void)ctx;
  int rc = labelmap_id_check(it->id, strlen(it->id), d);
  return rc ? rc : store_reader_decode(wstate, it->blob, it->len, out, d);
}

static double store_progress(void *ctx) {
  store_source *s = ctx;
  uint64_t n = store_get_meta(s->s)->record_count;
  return n ? (double)s->given / (double)n : -1;
}

/* ---- the sources of one import, read one after the other ---- */

typedef struct source {
  build_source bs;
  dir_source dir;
  tar_source tar;
  store_source st;
} source;

static int source_open(source *src, const char *path, diag *d) {
  struct stat sb;
  if (strcmp(path, "-") != 0 && access(path, R_OK) != 0)
    return diag_set(d, LMAP_EIO, "%s: %s", path, strerror(errno));
  build_source pt = {
      .worker_new = parser_new, .worker_free = parser_free, .load = parse_item};
  src->bs = pt;
  if (strcmp(path, "-") != 0 && stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
    int rc = walk(&src->dir, path, 0, d);
    if (rc == 0 && src->dir.count == 0)
      rc = diag_set(d, LMAP_EFORMAT, "%s: no .pt files found", path);
    if (rc)
      return rc;
    qsort(src->dir.paths, src->dir.count, sizeof *src->dir.paths, cmp_str);
    src->bs.ctx = &src->dir;
    src->bs.next = dir_next;
    src->bs.progress = dir_progress;
    return 0;
  }
  if (importer_is_store(path)) {
    src->st.path = path;
    int rc = store_open(path, &src->st.s, d);
    if (rc == 0)
      rc = store_iter_new(src->st.s, &src->st.it, d);
    if (rc)
      return rc;
    build_source bs = {.ctx = &src->st,
                       .next = store_next,
                       .worker_new = store_worker_new,
                       .worker_free = store_worker_free,
                       .load = store_load,
                       .progress = store_progress};
    src->bs = bs;
    return 0;
  }
  int rc = tar_open(&src->tar, path, d);
  src->bs.ctx = &src->tar;
  src->bs.next = tar_next;
  src->bs.progress = tar_progress;
  return rc;
}

static void source_close(source *src) {
  for (size_t i = 0; i < src->dir.count; i++)
    free(src->dir.paths[i]);
  free(src->dir.paths);
  if (src->tar.a)
    archive_read_free(src->tar.a);
  store_iter_free(src->st.it);
  store_close(src->st.s);
}

typedef struct chain {
  source *srcs;
  size_t n, cur;
} chain;

/* Items carry their source's number in `index` (no source here uses it). */
static int chain_next(void *ctx, build_item *it, diag *d) {
  chain *c = ctx;
  for (; c->cur < c->n; c->cur++) {
    build_source *bs = &c->srcs[c->cur].bs;
    int rc = bs->next(bs->ctx, it, d);
    if (rc > 0)
      it->index = c->cur;
    if (rc != 0)
      return rc;
  }
  return 0;
}

static void chain_worker_free(void *wstate) {
  void **ws = wstate;
  if (ws == NULL)
    return;
  chain *c = ws[0];
  for (size_t i = 0; i < c->n && ws[i + 1]; i++)
    c->srcs[i].bs.worker_free(ws[i + 1]);
  free(ws);
}

/* A worker's state: the chain, then one state per source. */
static void *chain_worker_new(void *ctx) {
  chain *c = ctx;
  void **ws = calloc(c->n + 1, sizeof *ws);
  if (ws == NULL)
    return NULL;
  ws[0] = c;
  for (size_t i = 0; i < c->n; i++) {
    ws[i + 1] = c->srcs[i].bs.worker_new(c->srcs[i].bs.ctx);
    if (ws[i + 1] == NULL) { /* the pipeline fails the build */
      chain_worker_free(ws);
      return NULL;
    }
  }
  return ws;
}

static int chain_load(void *ctx, void *wstate, const build_item *it,
                      labelmap *out, diag *d) {
  chain *c = ctx;
  void **ws = wstate;
  if (ws == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory");
  build_source *bs = &c->srcs[it->index].bs;
  return bs->load(bs->ctx, ws[it->index + 1], it, out, d);
}

/* Fraction done: the sources done, plus the current one's fraction. */
static double chain_progress(void *ctx) {
  chain *c = ctx;
  if (c->cur >= c->n)
    return 1;
  build_source *bs = &c->srcs[c->cur].bs;
  double f = bs->progress ? bs->progress(bs->ctx) : -1;
  return f < 0 ? -1 : ((double)c->cur + f) / (double)c->n;
}

int importer_run(const char *const *srcs, size_t n, const build_opts *o,
                 build_stats *st, diag *d) {
  source *s = calloc(n ? n : 1, sizeof *s);
  if (s == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory");
  int rc = 0;
  size_t opened = 0;
  for (; rc == 0 && opened < n; opened++)
    rc = source_open(&s[opened], srcs[opened], d);
  if (rc == 0) {
    chain c = {s, n, 0};
    build_source bs = {.ctx = &c,
                       .next = chain_next,
                       .worker_new = chain_worker_new,
                       .worker_free = chain_worker_free,
                       .load = chain_load,
                       .progress = chain_progress};
    rc = build_run(o, &bs, st, d);
  }
  for (size_t i = 0; i < opened; i++)
    source_close(&s[i]);
  free(s);
  return rc;
}

int importer_store_classes(const char *path, uint32_t *num_classes,
                           char **names_json, diag *d) {
  store *s;
  int rc = store_open(path, &s, d);
  if (rc)
    return rc;
  *num_classes = store_get_meta(s)->shape.num_classes;
  const char *names = store_class_names_json(s);
  *names_json = names ? strdup(names) : NULL;
  store_close(s);
  return names && *names_json == NULL
             ? diag_set(d, LMAP_ENOMEM, "out of memory")
             : 0;
}

/* ---- class names ---- */

#define CLASSES_MAX_BYTES (64u << 20)

int importer_read_classes(const char *path, char **json_out, uint32_t *count,
                          diag *d) {
  uint8_t *buf = NULL;
  size_t len = 0;
  int rc = read_file(path, CLASSES_MAX_BYTES, &buf, &len, d);
  if (rc)
    return rc;
  if (memchr(buf, '\0', len) != NULL) {
    free(buf);
    return diag_set(d, LMAP_EFORMAT, "%s: holds a NUL byte (not text)", path);
  }
  json_t *arr = NULL;
  size_t i = 0;
  while (i < len && (buf[i] == ' ' || buf[i] == '\n' || buf[i] == '\t'))
    i++;
  if (i < len && buf[i] == '[') {
    json_error_t err;
    arr = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &err);
    if (arr == NULL || !json_is_array(arr)) {
      free(buf);
      json_decref(arr);
      return diag_set(d, LMAP_EFORMAT, "%s: line %d: %s", path, err.line,
                      arr ? "not a JSON array" : err.text);
    }
    for (size_t k = 0; k < json_array_size(arr); k++)
      if (!json_is_string(json_array_get(arr, k))) {
        free(buf);
        json_decref(arr);
        return diag_set(d, LMAP_EFORMAT, "%s: entry %zu is not a string", path,
                        k);
      }
  } else {
    arr = json_array();
    char *line = (char *)buf, *end;
    int lineno = 1;
    for (; *line; line = end, lineno++) {
      end = strchr(line, '\n');
      char *next = end ? end + 1 : line + strlen(line);
      size_t n = (size_t)((end ? end : next) - line);
      if (n && line[n - 1] == '\r')
        n--;
      end = next;
      if (n == 0 && *next == '\0')
        break; /* a final empty line */
      json_t *s = json_stringn(line, n);
      if (s == NULL) {
        free(buf);
        json_decref(arr);
        return diag_set(d, LMAP_EFORMAT, "%s: line %d is not valid UTF-8", path,
                        lineno);
      }
      json_array_append_new(arr, s);
    }
  }
  free(buf);
  *count = (uint32_t)json_array_size(arr);
  *json_out = json_dumps(arr, JSON_COMPACT);
  json_decref(arr);
  if (*count == 0) {
    free(*json_out);
    return diag_set(d, LMAP_EFORMAT, "%s: no class names", path);
  }
  return *json_out ? 0 : diag_set(d, LMAP_ENOMEM, "out of memory");
}
