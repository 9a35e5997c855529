/*
 * Unit tests for server/store.c on real LMDB files under $LMAP_TEST_TMP
 * (or /tmp/store): write, read back, walk; every store store_open must
 * refuse (missing, empty, text, directory, truncated copies of a real
 * store, LMDB without lmap metadata, wrong version, missing or mistyped
 * fields, count mismatch, bad dictionary, bad class names), each with a
 * message naming the path and the reason; duplicate and invalid ids;
 * abort and failed commits leave no file behind; a damaged record inside
 * the file is caught by its checksum.
 */
#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "codec.h"
#include "f16.h"
#include "store.h"
#include "synth.h"
#include "test.h"

static char dir[512];

static void path_of(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/%s", dir, name);
}

static void make_dirs(void) {
  const char *base = getenv("LMAP_TEST_TMP");
  char cmd[1200];
  snprintf(dir, sizeof dir, "%s/test_store",
           base && base[0] ? base : "/tmp/store");
  snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", dir, dir);
  ASSERT_EQ(system(cmd), 0);
}

/* Number of directory entries whose name starts with `prefix`. */
static int count_files(const char *prefix) {
  DIR *d = opendir(dir);
  ASSERT(d != NULL);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
  closedir(d);
  return n;
}

static int exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static uint64_t file_size(const char *path) {
  struct stat st;
  ASSERT_EQ(stat(path, &st), 0);
  return (uint64_t)st.st_size;
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

/* ---- building stores ---- */

static const codec_shape shape = {5, 15, 15, 1000, CODEC_F16};
static const synth_params params = {1000, 15, 15, 5, 11};

static char *meta_text(uint64_t count, const char *override) {
  char *t = malloc(1024);
  if (override != NULL)
    snprintf(t, 1024, "%s", override);
  else
    snprintf(t, 1024,
             "{\"format\": \"lmap-store\", \"format_version\": 1, "
             "\"grid_h\": 15, \"grid_w\": 15, \"topk\": 5, "
             "\"num_classes\": 1000, \"encoding\": \"f16\", "
             "\"record_count\": %llu, \"extent\": \"full\", "
             "\"source\": \"synth\", \"class_names\": true}",
             (unsigned long long)count);
  return t;
}

static char *class_names(uint32_t n) {
  char *t = malloc((size_t)n * 16 + 8), *p = t;
  *p++ = '[';
  for (uint32_t c = 0; c < n; c++) {
    char w[16];
    synth_class_wnid(params.seed, c, w);
    p += sprintf(p, "%s\"%s\"", c ? "," : "", w);
  }
  *p++ = ']';
  *p = '\0';
  return t;
}

/* Options for a test store; every field's zero value means "normal". */
typedef struct build_opts {
  const char *meta;      /* replaces the metadata JSON */
  int no_meta;           /* writes no "lmap.meta" */
  int count_delta;       /* added to record_count in the metadata */
  const void *dict;      /* replaces the trained dictionary */
  size_t dict_len;
  const char *classes;   /* replaces the class names */
  int sorted;            /* puts the records in increasing id order */
} build_opts;

static uint8_t *train(size_t *dl) {
  size_t n = 300, rs = codec_raw_size(&shape);
  uint8_t *raws = malloc(rs * n), *dict = malloc(1 << 16);
  float sc[1125];
  uint32_t cl[1125];
  labelmap m = {5, 15, 15, sc, cl};
  char id[64];
  for (size_t i = 0; i < n; i++) {
    synth_image(&params, 900000 + i, id, &m);
    ASSERT_EQ(codec_transform(&shape, &m, raws + i * rs, NULL), 0);
  }
  ASSERT_EQ(codec_train_dict(&shape, raws, n, dict, 1 << 16, dl, NULL), 0);
  free(raws);
  return dict;
}

typedef struct id_entry {
  char id[64];
  uint64_t index;
} id_entry;

static int by_id(const void *a, const void *b) {
  return strcmp(((const id_entry *)a)->id, ((const id_entry *)b)->id);
}

/* Reorders image indices 0..n-1 by their ids. */
static void sort_by_id(uint64_t *order, uint64_t n) {
  id_entry *e = malloc(n * sizeof *e);
  float sc[1125];
  uint32_t cl[1125];
  labelmap m = {5, 15, 15, sc, cl};
  for (uint64_t i = 0; i < n; i++) {
    synth_image(&params, order[i], e[i].id, &m);
    e[i].index = order[i];
  }
  qsort(e, n, sizeof *e, by_id);
  for (uint64_t i = 0; i < n; i++)
    order[i] = e[i].index;
  free(e);
}

static uint8_t *g_dict;
static size_t g_dict_len;

/* Writes `count` synthetic maps (images 0..count-1) to `path`. */
static void build(const char *path, uint64_t count, const build_opts *o) {
  store_writer *w = NULL;
  diag d = {0};
  codec_ctx *c = NULL;
  int rc = store_writer_open(path, 1, &w, &d);
  if (rc != 0)
    fprintf(stderr, "writer_open: %s\n", d.msg);
  ASSERT_EQ(rc, 0);
  ASSERT_EQ(codec_ctx_new(&shape, g_dict, g_dict_len, CODEC_LEVEL_DEFAULT, &c,
                          &d),
            0);
  size_t cap = codec_record_bound(c), len;
  uint8_t *rec = malloc(cap);
  float sc[1125];
  uint32_t cl[1125];
  labelmap m = {5, 15, 15, sc, cl};
  char id[64];
  uint64_t *order = malloc(count * sizeof *order);
  for (uint64_t i = 0; i < count; i++)
    order[i] = i;
  if (o->sorted)
    sort_by_id(order, count);
  for (uint64_t j = 0; j < count; j++) {
    uint64_t i = order[j];
    synth_image(&params, i, id, &m);
    ASSERT_EQ(codec_encode(c, &m, rec, cap, &len, &d), 0);
    rc = store_writer_put(w, id, strlen(id), rec, len, &d);
    if (rc != 0)
      fprintf(stderr, "put: %s\n", d.msg);
    ASSERT_EQ(rc, 0);
  }
  ASSERT_EQ(store_writer_count(w), count);
  if (!o->no_meta) {
    char *t = meta_text(count + (uint64_t)(int64_t)o->count_delta, o->meta);
    ASSERT_EQ(store_writer_put_meta(w, "lmap.meta", t, strlen(t), &d), 0);
    free(t);
    if (o->dict != NULL)
      ASSERT_EQ(store_writer_put_meta(w, "lmap.dict", o->dict, o->dict_len, &d),
                0);
    else
      ASSERT_EQ(store_writer_put_meta(w, "lmap.dict", g_dict, g_dict_len, &d),
                0);
    char *names = o->classes ? NULL : class_names(1000);
    const char *cn = o->classes ? o->classes : names;
    ASSERT_EQ(store_writer_put_meta(w, "lmap.classes", cn, strlen(cn), &d), 0);
    free(names);
  }
  rc = store_writer_commit(w, &d);
  if (rc != 0)
    fprintf(stderr, "commit: %s\n", d.msg);
  ASSERT_EQ(rc, 0);
  free(order);
  free(rec);
  codec_ctx_free(c);
}

/* Asserts that store_open refuses `path` with `code` and a message that
 * names the path and contains `why`. */
static void refused(const char *path, int code, const char *why) {
  store *s = (store *)1;
  diag d = {0};
  int rc = store_open(path, &s, &d);
  if (rc != code)
    fprintf(stderr, "store_open(%s) = %d (%s), want %d\n", path, rc, d.msg,
            code);
  ASSERT_EQ(rc, code);
  ASSERT(s == NULL);
  ASSERT_CONTAINS(d.msg, path);
  ASSERT_CONTAINS(d.msg, why);
}

/* ---- round trip ---- */

typedef struct walk {
  uint64_t n;
  char last[256];
  size_t last_len;
  store_reader *r;
  int stop_at;
} walk;

static int visit(void *ctx, const char *id, size_t id_len, const uint8_t *rec,
                 size_t rec_len) {
  walk *w = ctx;
  /* Keys come in LMDB's order: bytewise, shorter first on a tie. */
  if (w->n > 0) {
    size_t m = id_len < w->last_len ? id_len : w->last_len;
    int c = memcmp(w->last, id, m);
    ASSERT(c < 0 || (c == 0 && w->last_len < id_len));
  }
  memcpy(w->last, id, id_len);
  w->last_len = id_len;
  labelmap m;
  ASSERT_EQ(store_reader_decode(w->r, rec, rec_len, &m, NULL), 0);
  w->n++;
  if (w->stop_at && (int)w->n == w->stop_at)
    return 42;
  return 0;
}

static void test_write_read(const char *path, uint64_t count, int sorted) {
  build_opts o = {0};
  o.sorted = sorted;
  build(path, count, &o);
  ASSERT_EQ(count_files("good.lmap.tmp"), 0);
  ASSERT_EQ(count_files("sorted.lmap.tmp"), 0);

  store *s = NULL;
  diag d = {0};
  int rc = store_open(path, &s, &d);
  if (rc != 0)
    fprintf(stderr, "open: %s\n", d.msg);
  ASSERT_EQ(rc, 0);
  const store_meta *m = store_get_meta(s);
  ASSERT_EQ(m->format_version, 1);
  ASSERT_EQ(m->shape.k, 5);
  ASSERT_EQ(m->shape.h, 15);
  ASSERT_EQ(m->shape.w, 15);
  ASSERT_EQ(m->shape.num_classes, 1000);
  ASSERT_EQ(m->shape.encoding, CODEC_F16);
  ASSERT_EQ(m->record_count, count);
  ASSERT_EQ(m->has_class_names, 1);
  ASSERT_CONTAINS(store_meta_json(s), "\"source\": \"synth\"");
  ASSERT(store_class_names_json(s) != NULL);
  char wn[16];
  synth_class_wnid(params.seed, 999, wn);
  ASSERT_CONTAINS(store_class_names_json(s), wn);
  ASSERT_EQ(store_file_size(s), file_size(path));
  double per = (double)file_size(path) / (double)count;
  printf("store (%s ids): %llu records in %llu bytes (%.1f per record)\n",
         sorted ? "sorted" : "unsorted", (unsigned long long)count,
         (unsigned long long)file_size(path), per);
  /* Records of about 2,000 bytes, two per 4 KiB page, a few on pages of
   * their own: packed pages whatever the order the ids came in. */
  ASSERT(per < 2400.0);

  store_reader *r = NULL, *r2 = NULL;
  ASSERT_EQ(store_reader_new(s, &r, &d), 0);
  ASSERT_EQ(store_reader_new(s, &r2, &d), 0);
  float sc[1125];
  uint32_t cl[1125];
  labelmap want = {5, 15, 15, sc, cl}, got;
  char id[64];
  for (uint64_t i = 0; i < count; i += (i < 50 ? 1 : 37)) {
    synth_image(&params, i, id, &want);
    codec_round_scores(&shape, &want);
    store_reader *rr = (i & 1) ? r2 : r;
    rc = store_reader_get(rr, id, strlen(id), &got, &d);
    if (rc != 0)
      fprintf(stderr, "get %s: %s\n", id, d.msg);
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(got.k, 5);
    ASSERT(memcmp(got.scores, sc, sizeof sc) == 0);
    ASSERT(memcmp(got.classes, cl, sizeof cl) == 0);
  }
  ASSERT_EQ(store_reader_get(r, "n00000000_1", 11, &got, &d), LMAP_ENOTFOUND);
  ASSERT_CONTAINS(d.msg, "n00000000_1");
  ASSERT_EQ(store_reader_get(r, "", 0, &got, &d), LMAP_EBADID);
  char big[300];
  memset(big, 'a', sizeof big);
  ASSERT_EQ(store_reader_get(r, big, 256, &got, &d), LMAP_EBADID);
  ASSERT_EQ(store_reader_get(r, "a\0b", 3, &got, &d), LMAP_EBADID);

  walk wk = {0};
  wk.r = r;
  ASSERT_EQ(store_foreach(s, visit, &wk, &d), 0);
  ASSERT_EQ(wk.n, count);
  walk stop = {0};
  stop.r = r;
  stop.stop_at = 3;
  ASSERT_EQ(store_foreach(s, visit, &stop, &d), 42);
  ASSERT_EQ(stop.n, 3);

  store_reader_free(r);
  store_reader_free(r2);
  store_reader_free(NULL);
  store_close(s);
  store_close(NULL);
}

/* ---- refusals ---- */

static void test_refusals(const char *good) {
  char p[700];
  build_opts o;

  path_of(p, sizeof p, "missing.lmap");
  refused(p, LMAP_EIO, "cannot open");

  path_of(p, sizeof p, "empty.lmap");
  write_all(p, "", 0);
  refused(p, LMAP_EBADSTORE, "empty");

  path_of(p, sizeof p, "text.lmap");
  const char *txt = "this is a text file, not a label map store\n";
  for (int i = 0; i < 200; i++) {
    FILE *f = fopen(p, i ? "ab" : "wb");
    fputs(txt, f);
    fclose(f);
  }
  refused(p, LMAP_EBADSTORE, "not an LMDB file");
  path_of(p, sizeof p, "short-text.lmap");
  write_all(p, "hello\n", 6);
  refused(p, LMAP_EBADSTORE, "not an LMDB file");

  path_of(p, sizeof p, "a-directory");
  ASSERT_EQ(mkdir(p, 0755), 0);
  refused(p, LMAP_EBADSTORE, "not a regular file");
  path_of(p, sizeof p, "a-fifo");
  ASSERT_EQ(mkfifo(p, 0644), 0);
  refused(p, LMAP_EBADSTORE, "not a regular file");

  /* Truncated copies of the real store, cut at many points: before the
   * header ends, inside either meta page, in the data, one byte short. */
  size_t len;
  uint8_t *img = read_all(good, &len);
  ASSERT(len > 3 * 4096);
  size_t cuts[] = {24,   100,      2000,         4096,    4096 + 100,
                   8192, len / 2, len - 4096, len - 1};
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
    path_of(p, sizeof p, "truncated.lmap");
    write_all(p, img, cuts[i]);
    refused(p, LMAP_EBADSTORE, "truncated?");
    if (cuts[i] >= 4096 + 100) {
      char want[64];
      snprintf(want, sizeof want, "file is %zu bytes but its LMDB header needs",
               cuts[i]);
      refused(p, LMAP_EBADSTORE, want);
    }
  }
  /* A few bytes: too little even for LMDB's magic. */
  path_of(p, sizeof p, "tiny.lmap");
  write_all(p, img, 10);
  refused(p, LMAP_EBADSTORE, "not an LMDB file");
  /* The magic damaged. */
  path_of(p, sizeof p, "nomagic.lmap");
  img[16] ^= 0xFF;
  write_all(p, img, len);
  img[16] ^= 0xFF;
  refused(p, LMAP_EBADSTORE, "not an LMDB file");
  /* Both meta pages claiming absurd or merely too many pages (64-bit
   * layout: last_pg at offset 136 of each 4 KiB meta page). */
  if (sizeof(size_t) == 8 && len >= 8192) {
    uint64_t huge = UINT64_MAX - 5, many = 1000000;
    path_of(p, sizeof p, "badlast.lmap");
    memcpy(img + 136, &huge, 8);
    memcpy(img + 4096 + 136, &huge, 8);
    write_all(p, img, len);
    refused(p, LMAP_EBADSTORE, "(corrupt)");
    memcpy(img + 136, &many, 8);
    memcpy(img + 4096 + 136, &many, 8);
    write_all(p, img, len);
    refused(p, LMAP_EBADSTORE, "needs 4096004096 (truncated?)");
  }
  free(img);

  /* An LMDB file made by the writer without lmap.meta. */
  path_of(p, sizeof p, "nometa.lmap");
  memset(&o, 0, sizeof o);
  o.no_meta = 1;
  build(p, 10, &o);
  refused(p, LMAP_EBADSTORE, "no lmap metadata (not an lmap store)");

  static const struct {
    const char *name, *meta, *why;
    int code;
  } bad_meta[] = {
      {"v2.lmap",
       "{\"format\": \"lmap-store\", \"format_version\": 2, \"grid_h\": 15}",
       "format_version 2 is not supported", LMAP_EVERSION},
      {"notjson.lmap", "{\"format\": ", "not valid JSON", LMAP_EBADSTORE},
      {"array.lmap", "[1, 2]", "not a JSON object", LMAP_EBADSTORE},
      {"otherformat.lmap", "{\"format\": \"zarr\", \"format_version\": 1}",
       "not \"lmap-store\"", LMAP_EBADSTORE},
      {"noformat.lmap", "{\"format_version\": 1}", "no \"format\" field",
       LMAP_EBADSTORE},
      {"nogridh.lmap",
       "{\"format\": \"lmap-store\", \"format_version\": 1, \"grid_w\": 15, "
       "\"topk\": 5, \"num_classes\": 1000, \"encoding\": \"f16\", "
       "\"record_count\": 10}",
       "no \"grid_h\" field", LMAP_EBADSTORE},
      {"strtopk.lmap",
       "{\"format\": \"lmap-store\", \"format_version\": 1, \"grid_h\": 15, "
       "\"grid_w\": 15, \"topk\": \"5\", \"num_classes\": 1000, "
       "\"encoding\": \"f16\", \"record_count\": 10}",
       "\"topk\" is not an integer", LMAP_EBADSTORE},
      {"realversion.lmap",
       "{\"format\": \"lmap-store\", \"format_version\": 1.0}",
       "\"format_version\" is not an integer", LMAP_EBADSTORE},
      {"encoding.lmap",
       "{\"format\": \"lmap-store\", \"format_version\": 1, \"grid_h\": 15, "
       "\"grid_w\": 15, \"topk\": 5, \"num_classes\": 1000, "
       "\"encoding\": \"bf16\", \"record_count\": 10}",
       "neither \"f16\" nor \"f32\"", LMAP_EBADSTORE},
      {"hugeshape.lmap",
       "{\"format\": \"lmap-store\", \"format_version\": 1, \"grid_h\": 4000, "
       "\"grid_w\": 15, \"topk\": 5, \"num_classes\": 1000, "
       "\"encoding\": \"f16\", \"record_count\": 10}",
       "grid_h 4000 is outside", LMAP_EBADSTORE},
      {"negcount.lmap",
       "{\"format\": \"lmap-store\", \"format_version\": 1, \"grid_h\": 15, "
       "\"grid_w\": 15, \"topk\": 5, \"num_classes\": 1000, "
       "\"encoding\": \"f16\", \"record_count\": -1}",
       "\"record_count\" is -1", LMAP_EBADSTORE},
      {"dupkey.lmap",
       "{\"format\": \"lmap-store\", \"format\": \"lmap-store\"}",
       "not valid JSON", LMAP_EBADSTORE},
      {"cnflag.lmap",
       "{\"format\": \"lmap-store\", \"format_version\": 1, \"grid_h\": 15, "
       "\"grid_w\": 15, \"topk\": 5, \"num_classes\": 1000, "
       "\"encoding\": \"f16\", \"record_count\": 10, \"class_names\": 1}",
       "\"class_names\" is not a boolean", LMAP_EBADSTORE},
  };
  for (size_t i = 0; i < sizeof bad_meta / sizeof bad_meta[0]; i++) {
    path_of(p, sizeof p, bad_meta[i].name);
    memset(&o, 0, sizeof o);
    o.meta = bad_meta[i].meta;
    build(p, 10, &o);
    refused(p, bad_meta[i].code, bad_meta[i].why);
  }

  path_of(p, sizeof p, "count.lmap");
  memset(&o, 0, sizeof o);
  o.count_delta = 1;
  build(p, 10, &o);
  refused(p, LMAP_EBADSTORE, "metadata says 11 records but the maps database "
                             "holds 10");

  path_of(p, sizeof p, "baddict.lmap");
  memset(&o, 0, sizeof o);
  uint8_t junk[256];
  memset(junk, 0x5A, sizeof junk);
  o.dict = junk;
  o.dict_len = sizeof junk;
  build(p, 10, &o);
  refused(p, LMAP_EBADSTORE, "dictionary does not load");

  path_of(p, sizeof p, "classes.lmap");
  memset(&o, 0, sizeof o);
  o.classes = "[\"a\", \"b\"]";
  build(p, 10, &o);
  refused(p, LMAP_EBADSTORE, "2 class names for 1000 classes");
  o.classes = "{}";
  build(p, 10, &o);
  refused(p, LMAP_EBADSTORE, "not a JSON array");
}

/* ---- writer behaviour ---- */

static void test_writer(void) {
  char p[700], p2[700];
  diag d = {0};
  store_writer *w = NULL;
  const uint8_t rec[3] = {1, 2, 3};

  /* Abort leaves nothing, with or without records. */
  path_of(p, sizeof p, "aborted.lmap");
  ASSERT_EQ(store_writer_open(p, 0, &w, &d), 0);
  ASSERT_EQ(count_files("aborted.lmap.tmp."), 1);
  ASSERT_EQ(store_writer_put(w, "x", 1, rec, 3, &d), 0);
  store_writer_abort(w);
  store_writer_abort(NULL);
  ASSERT(!exists(p));
  ASSERT_EQ(count_files("aborted.lmap"), 0);

  /* Ids: duplicates name the id and do not spoil the writer; empty, long
   * and NUL-carrying ids are refused; binary and 255-byte ids are fine. */
  path_of(p, sizeof p, "ids.lmap");
  ASSERT_EQ(store_writer_open(p, 0, &w, &d), 0);
  ASSERT_EQ(store_writer_put(w, "n01_1", 5, rec, 3, &d), 0);
  ASSERT_EQ(store_writer_put(w, "n01_1", 5, rec, 3, &d), LMAP_EEXIST);
  ASSERT_CONTAINS(d.msg, "duplicate id 'n01_1'");
  ASSERT_EQ(store_writer_put(w, "", 0, rec, 3, &d), LMAP_EBADID);
  char big[256];
  memset(big, 'z', sizeof big);
  ASSERT_EQ(store_writer_put(w, big, 256, rec, 3, &d), LMAP_EBADID);
  ASSERT_CONTAINS(d.msg, "256 bytes");
  ASSERT_EQ(store_writer_put(w, big, 255, rec, 3, &d), 0);
  ASSERT_EQ(store_writer_put(w, "a\0b", 3, rec, 3, &d), LMAP_EBADID);
  ASSERT_CONTAINS(d.msg, "NUL");
  ASSERT_EQ(store_writer_put(w, "\xff\x01", 2, rec, 3, &d), 0);
  ASSERT_EQ(store_writer_put(w, "\xff\x01", 2, rec, 3, &d), LMAP_EEXIST);
  ASSERT_CONTAINS(d.msg, "\\xff\\x01");
  ASSERT_EQ(store_writer_put(w, "empty", 5, rec, 0, &d), LMAP_EINVAL);
  ASSERT_EQ(store_writer_put_meta(w, "lmap.other", "x", 1, &d), LMAP_EINVAL);
  ASSERT_EQ(store_writer_put_meta(w, "lmap.dict", "", 0, &d), 0);
  ASSERT_EQ(store_writer_count(w), 3);
  char *meta = meta_text(3, NULL);
  /* Written twice: the last value wins. */
  ASSERT_EQ(store_writer_put_meta(w, "lmap.meta", "{}", 2, &d), 0);
  ASSERT_EQ(store_writer_put_meta(w, "lmap.meta", meta, strlen(meta), &d), 0);
  free(meta);
  char *names = class_names(1000);
  ASSERT_EQ(store_writer_put_meta(w, "lmap.classes", names, strlen(names), &d),
            0);
  free(names);
  ASSERT_EQ(store_writer_commit(w, &d), 0);
  ASSERT_EQ(count_files("ids.lmap.tmp"), 0);
  store *s = NULL;
  ASSERT_EQ(store_open(p, &s, &d), 0);
  ASSERT_EQ(store_get_meta(s)->record_count, 3);
  /* Empty dictionary: decoding uses none; these records are not codec
   * records, so the reader reports them corrupt, naming the id. */
  store_reader *r = NULL;
  labelmap m;
  ASSERT_EQ(store_reader_new(s, &r, &d), 0);
  ASSERT_EQ(store_reader_get(r, "n01_1", 5, &m, &d), LMAP_ECORRUPT);
  ASSERT_CONTAINS(d.msg, "record 'n01_1'");
  ASSERT_EQ(store_reader_get(r, big, 255, &m, &d), LMAP_ECORRUPT);
  store_reader_free(r);
  store_close(s);

  /* An existing path: refused without overwrite, replaced with it. */
  ASSERT_EQ(store_writer_open(p, 0, &w, &d), LMAP_EEXIST);
  ASSERT_CONTAINS(d.msg, p);
  ASSERT(w == NULL);
  uint64_t before = file_size(p);
  ASSERT_EQ(store_writer_open(p, 1, &w, &d), 0);
  ASSERT_EQ(store_writer_put(w, "only", 4, rec, 3, &d), 0);
  ASSERT_EQ(store_writer_commit(w, &d), 0);
  ASSERT(exists(p));
  ASSERT_EQ(count_files("ids.lmap.tmp"), 0);
  (void)before;
  ASSERT_EQ(store_open(p, &s, &d), LMAP_EBADSTORE); /* replaced: no meta */

  /* A file that appears at the target while a non-overwriting writer
   * works is not replaced, and the temporary file goes away. */
  path_of(p2, sizeof p2, "raced.lmap");
  ASSERT_EQ(store_writer_open(p2, 0, &w, &d), 0);
  ASSERT_EQ(store_writer_put(w, "a", 1, rec, 3, &d), 0);
  write_all(p2, "precious", 8);
  ASSERT_EQ(store_writer_commit(w, &d), LMAP_EEXIST);
  ASSERT_CONTAINS(d.msg, "not replaced");
  ASSERT_EQ(file_size(p2), 8);
  ASSERT_EQ(count_files("raced.lmap.tmp"), 0);

  /* A writer whose directory vanished cannot place its file; nothing is
   * left (the directory is gone with the temporary file). */
  path_of(p, sizeof p, "sub");
  ASSERT_EQ(mkdir(p, 0755), 0);
  path_of(p2, sizeof p2, "sub/x.lmap");
  ASSERT_EQ(store_writer_open(p2, 0, &w, &d), 0);
  ASSERT_EQ(store_writer_put(w, "a", 1, rec, 3, &d), 0);
  char cmd[800];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", p);
  ASSERT_EQ(system(cmd), 0);
  ASSERT(store_writer_commit(w, &d) != 0);
  ASSERT(!exists(p));

  /* Writer paths that cannot work fail at open. */
  path_of(p, sizeof p, "no/such/dir/x.lmap");
  ASSERT_EQ(store_writer_open(p, 0, &w, &d), LMAP_EIO);
  ASSERT(w == NULL);
  ASSERT_EQ(store_writer_open("", 0, &w, &d), LMAP_EINVAL);
}

/* Readers in several threads at once, one reader each. */
typedef struct thread_job {
  store *s;
  uint64_t count;
  int failures;
} thread_job;

static void *reader_thread(void *arg) {
  thread_job *j = arg;
  store_reader *r = NULL;
  if (store_reader_new(j->s, &r, NULL) != 0) {
    j->failures++;
    return NULL;
  }
  float sc[1125];
  uint32_t cl[1125];
  labelmap want = {5, 15, 15, sc, cl}, got;
  char id[64];
  for (int pass = 0; pass < 2; pass++)
    for (uint64_t i = 0; i < j->count; i += 7) {
      synth_image(&params, i, id, &want);
      codec_round_scores(&shape, &want);
      if (store_reader_get(r, id, strlen(id), &got, NULL) != 0 ||
          memcmp(got.scores, sc, sizeof sc) != 0 ||
          memcmp(got.classes, cl, sizeof cl) != 0)
        j->failures++;
    }
  store_reader_free(r);
  return NULL;
}

static void test_threads(const char *path, uint64_t count) {
  store *s = NULL;
  ASSERT_EQ(store_open(path, &s, NULL), 0);
  pthread_t t[4];
  thread_job jobs[4];
  for (int i = 0; i < 4; i++) {
    jobs[i].s = s;
    jobs[i].count = count;
    jobs[i].failures = 0;
    ASSERT_EQ(pthread_create(&t[i], NULL, reader_thread, &jobs[i]), 0);
  }
  for (int i = 0; i < 4; i++) {
    ASSERT_EQ(pthread_join(t[i], NULL), 0);
    ASSERT_EQ(jobs[i].failures, 0);
  }
  store_close(s);
}

/* A record damaged inside the LMDB file (LMDB keeps no checksums) is
 * caught by the record's own checksum, and the store still opens. */
static void test_damaged_record(const char *good) {
  char p[700];
  diag d = {0};
  path_of(p, sizeof p, "damaged.lmap");
  size_t len;
  uint8_t *img = read_all(good, &len);
  store *s = NULL;
  ASSERT_EQ(store_open(good, &s, &d), 0);
  store_reader *r = NULL;
  ASSERT_EQ(store_reader_new(s, &r, &d), 0);
  /* Find image 7's record in the file and flip a byte in its middle. */
  float sc[1125];
  uint32_t cl[1125];
  labelmap m = {5, 15, 15, sc, cl};
  char id[64];
  synth_image(&params, 7, id, &m);
  codec_ctx *c = NULL;
  ASSERT_EQ(codec_ctx_new(&shape, g_dict, g_dict_len, CODEC_LEVEL_DEFAULT, &c,
                          &d),
            0);
  size_t cap = codec_record_bound(c), rl;
  uint8_t *rec = malloc(cap);
  ASSERT_EQ(codec_encode(c, &m, rec, cap, &rl, &d), 0);
  uint8_t *hit = NULL;
  for (size_t i = 0; i + rl <= len && hit == NULL; i++)
    if (memcmp(img + i, rec, rl) == 0)
      hit = img + i;
  ASSERT(hit != NULL);
  hit[rl / 2] ^= 0x10;
  write_all(p, img, len);
  store_reader_free(r);
  store_close(s);
  ASSERT_EQ(store_open(p, &s, &d), 0);
  ASSERT_EQ(store_reader_new(s, &r, &d), 0);
  labelmap got;
  ASSERT_EQ(store_reader_get(r, id, strlen(id), &got, &d), LMAP_ECORRUPT);
  ASSERT_CONTAINS(d.msg, id);
  synth_image(&params, 8, id, &m);
  ASSERT_EQ(store_reader_get(r, id, strlen(id), &got, &d), 0);
  store_reader_free(r);
  store_close(s);
  codec_ctx_free(c);
  free(rec);
  free(img);
}

int main(void) {
  make_dirs();
  g_dict = train(&g_dict_len);
  char good[700];
  path_of(good, sizeof good, "good.lmap");
  /* More records than one write batch, so batches commit. */
  test_write_read(good, 5000, 0);
  char sorted[700];
  path_of(sorted, sizeof sorted, "sorted.lmap");
  test_write_read(sorted, 3000, 1);
  test_threads(sorted, 3000);
  test_refusals(good);
  test_writer();
  test_damaged_record(good);
  free(g_dict);
  TEST_DONE();
}
