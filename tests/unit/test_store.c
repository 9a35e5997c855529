/*
 * Unit tests for the store layer (server/store: reader, writer, chunk format,
 * page checks) on real LMDB files under $LMAP_TEST_TMP
 * (or /tmp/store):
 * - round trip of thousands of records put in random order: every id looks
 *   up to its map, absent ids (before the first chunk, between any two ids,
 *   inside and across chunks, after the last) are not found, the walk is in
 *   id order and complete, and the chunks found in the file from outside
 *   have the header docs/STORE_FORMAT.md specifies;
 * - the chunk parser against chunks this file packs from the specification
 *   (its own checksum), placed against a guard page: every truncation and
 *   every byte flip of the directory is LMAP_ECORRUPT, hostile directories
 *   with a valid checksum never read outside the value;
 * - a damaged chunk inside a store: LMAP_ECORRUPT for its ids and the walk,
 *   the rest of the store still served;
 * - every store store_open must refuse (missing, empty, text, directory,
 *   truncated copies of a real store, LMDB without lmap metadata, wrong
 *   version, missing or mistyped fields, record and chunk count mismatches,
 *   missing chunk layout, bad dictionary, bad class names), each with a
 *   message naming the path and the reason;
 * - the writer: duplicate and invalid ids, odd record sizes and binary ids,
 *   an empty store, metadata caps, abort and failed commits leave no file.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/f16.h"
#include "import/synth.h"
#include "store/chunk.h"
#include "store/codec.h"
#include "store/store.h"
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

static uint8_t *find_bytes(uint8_t *hay, size_t n, const void *needle,
                           size_t m) {
  const uint8_t *nd = needle;
  uint8_t *end = hay + n, *p = hay;
  if (m == 0 || m > n)
    return NULL;
  while ((p = memchr(p, nd[0], (size_t)(end - p) - m + 1)) != NULL) {
    if (memcmp(p, nd, m) == 0)
      return p;
    if (++p > end - m)
      break;
  }
  return NULL;
}

/* Replaces the only occurrence of `from` in the file with `to` (same
 * length): a surgical edit of a value LMDB stores verbatim. */
static void patch_file(const char *src, const char *dst, const char *from,
                       const char *to) {
  size_t len;
  uint8_t *img = read_all(src, &len);
  size_t m = strlen(from);
  ASSERT_EQ(strlen(to), m);
  uint8_t *hit = find_bytes(img, len, from, m);
  ASSERT(hit != NULL);
  ASSERT(find_bytes(hit + 1, len - (size_t)(hit + 1 - img), from, m) == NULL);
  memcpy(hit, to, m);
  write_all(dst, img, len);
  free(img);
}

static uint64_t rng_state = 12345;
static uint64_t rnd(void) {
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* LMDB's key order, written out independently of chunk.c. */
static int key_cmp(const void *a, size_t alen, const void *b, size_t blen) {
  int c = memcmp(a, b, alen < blen ? alen : blen);
  return c ? c : (alen > blen) - (alen < blen);
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
             "{\"format\": \"lmap-store\", \"format_version\": 2, "
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
  const char *meta; /* replaces the metadata JSON */
  int no_meta;      /* writes no "lmap.meta" */
  int count_delta;  /* added to record_count in the metadata */
  const void *dict; /* replaces the trained dictionary */
  size_t dict_len;
  const char *classes; /* replaces the class names */
  int sorted;          /* puts the records in increasing id order */
} build_opts;

static uint8_t *train(size_t *dl) {
  size_t n = 300, rs = codec_raw_size(&shape);
  uint8_t *raws = malloc(rs * n), *dict = malloc(1 << 16);
  float sc[1125];
  uint32_t cl[1125];
  labelmap m = {.k = 5, .h = 15, .w = 15, .scores = sc, .classes = cl};
  char id[64];
  for (size_t i = 0; i < n; i++) {
    synth_image(&params, 900000 + i, id, &m);
    ASSERT_EQ(codec_transform(&shape, &m, raws + i * rs, NULL), 0);
  }
  ASSERT_EQ(codec_train_dict(&shape, raws, n, CODEC_LEVEL_FAST, dict, 1 << 16,
                             dl, NULL),
            0);
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
  labelmap m = {.k = 5, .h = 15, .w = 15, .scores = sc, .classes = cl};
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

/* Writes `count` synthetic maps (images 0..count-1) to `path`, in a random
 * order unless o->sorted. */
static void build(const char *path, uint64_t count, const build_opts *o) {
  store_writer *w = NULL;
  diag d = {0};
  codec_ctx *c = NULL;
  int rc = store_writer_open(path, 1, &w, &d);
  if (rc != 0)
    fprintf(stderr, "writer_open: %s\n", d.msg);
  ASSERT_EQ(rc, 0);
  ASSERT_EQ(codec_ctx_new(&shape, g_dict, g_dict_len, CODEC_LEVEL_FAST, &c, &d),
            0);
  size_t cap = codec_record_bound(c), len;
  uint8_t *rec = malloc(cap);
  float sc[1125];
  uint32_t cl[1125];
  labelmap m = {.k = 5, .h = 15, .w = 15, .scores = sc, .classes = cl};
  char id[64];
  uint64_t *order = malloc((count ? count : 1) * sizeof *order);
  for (uint64_t i = 0; i < count; i++)
    order[i] = i;
  if (o->sorted) {
    sort_by_id(order, count);
  } else {
    for (uint64_t i = count; i > 1; i--) {
      uint64_t j = rnd() % i, t = order[i - 1];
      order[i - 1] = order[j];
      order[j] = t;
    }
  }
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

/* Asserts that store_open_flags refuses `path` with `code` and a message
 * that names the path and contains `why`. */
static void refused_flags(const char *path, unsigned flags, int code,
                          const char *why) {
  store *s = (store *)1;
  diag d = {0};
  int rc = store_open_flags(path, flags, &s, &d);
  if (rc != code || strstr(d.msg, why) == NULL)
    fprintf(stderr, "store_open(%s) = %d (%s), want %d\n", path, rc, d.msg,
            code);
  ASSERT_EQ(rc, code);
  ASSERT(s == NULL);
  ASSERT_CONTAINS(d.msg, path);
  ASSERT_CONTAINS(d.msg, why);
}

static void refused(const char *path, int code, const char *why) {
  refused_flags(path, 0, code, why);
}

/* A store whose bytes this file patched in place: refused for its page
 * checksums, and, with them off, for the reason the patch is about. */
static void refused_damaged(const char *path, int code, const char *why) {
  refused(path, LMAP_EBADSTORE, "fails its checksum");
  refused_flags(path, STORE_OPEN_NO_PAGE_CHECK, code, why);
}

/* Opens a store whose bytes this file damaged in place: store_open refuses
 * it for its page checksums, so the defences behind them (chunk and record
 * checks) are reached with STORE_OPEN_NO_PAGE_CHECK, as a store opened
 * that way, or damaged after it was opened, would reach them. */
static void open_damaged(const char *path, store **s) {
  diag d = {0};
  ASSERT_EQ(store_open(path, s, &d), LMAP_EBADSTORE);
  ASSERT_CONTAINS(d.msg, "fails its checksum");
  ASSERT_EQ(store_open_flags(path, STORE_OPEN_NO_PAGE_CHECK, s, &d), 0);
  ASSERT_EQ(store_get_meta(*s)->page_check, STORE_PAGES_TRAILER_ONLY);
}

/* ---- the chunk format, from the specification ---- */

static uint32_t get16(const uint8_t *p) {
  return p[0] | (uint32_t)p[1] << 8;
}

static void set16(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static void set32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

/* docs/STORE_FORMAT.md §4.2, written out again. */
static uint32_t spec_checksum(const uint8_t *p, size_t len) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)len;
  for (size_t i = 0; i < len; i += 8) {
    uint64_t w = 0;
    for (size_t j = 0; j < 8 && i + j < len; j++)
      w |= (uint64_t)p[i + j] << (8 * j);
    h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29;
  }
  return (uint32_t)(h ^ (h >> 32));
}

typedef struct tentry {
  const char *id;
  size_t id_len;
  const uint8_t *rec;
  size_t len;
} tentry;

/* Offset of the record area of a chunk of these (sorted) ids. */
static size_t spec_records_at(const tentry *e, uint32_t n, size_t *prefix) {
  size_t p = 0, s = 0;
  while (p < e[0].id_len && p < e[n - 1].id_len && e[0].id[p] == e[n - 1].id[p])
    p++;
  for (uint32_t i = 0; i < n; i++)
    s += e[i].id_len - p;
  *prefix = p;
  return 8 + 6 * (size_t)n + p + s;
}

/* Packs sorted entries into `out` as §4.1 lays a chunk out; returns its
 * length. */
static size_t spec_pack(uint8_t *out, const tentry *e, uint32_t n) {
  size_t p, r = spec_records_at(e, n, &p), so = 0, ro = 0;
  out[4] = 1;
  out[5] = (uint8_t)p;
  set16(out + 6, n);
  memcpy(out + 8 + 6 * (size_t)n, e[0].id, p);
  for (uint32_t i = 0; i < n; i++) {
    memcpy(out + 8 + 6 * (size_t)n + p + so, e[i].id + p, e[i].id_len - p);
    so += e[i].id_len - p;
    set16(out + 8 + 4 * (size_t)n + 2 * i, (uint32_t)so);
    memcpy(out + r + ro, e[i].rec, e[i].len);
    ro += e[i].len;
    set32(out + 8 + 4 * (size_t)i, (uint32_t)ro);
  }
  set32(out, spec_checksum(out + 4, r - 4));
  return r + ro;
}

/* Recomputes the checksum of a (damaged) chunk over the directory its own
 * header describes, as a reader will, when that lies inside the value. */
static void reseal(uint8_t *v, size_t len) {
  size_t n = get16(v + 6), p = v[5];
  if (n == 0 || 8 + 6 * n + p > len)
    return;
  size_t r = 8 + 6 * n + p + get16(v + 8 + 4 * n + 2 * (n - 1));
  if (r <= len)
    set32(v, spec_checksum(v + 4, r - 4));
}

/* A buffer whose last byte sits just before an inaccessible page, so any
 * read past the end faults even without ASan. */
typedef struct guarded {
  uint8_t *base, *p;
  size_t map;
} guarded;

static guarded guard_new(size_t len) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  guarded g;
  g.map = (len + page - 1) / page * page + page;
  g.base = mmap(NULL, g.map, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT(g.base != MAP_FAILED);
  ASSERT_EQ(mprotect(g.base + g.map - page, page, PROT_NONE), 0);
  g.p = g.base + g.map - page - len;
  return g;
}

static void guard_free(guarded *g) {
  munmap(g->base, g->map);
}

/* Every way of reading a (possibly damaged) chunk: parse, find each id and
 * some absent ones, read each entry. Results must be among the documented
 * codes and every returned pointer inside the value. Returns the parse
 * result. */
static int probe_chunk(const uint8_t *v, size_t len, const tentry *e,
                       uint32_t n) {
  store_chunk c;
  diag d = {0};
  int rc = store_chunk_parse(v, len, &c, &d);
  ASSERT(rc == 0 || rc == LMAP_ECORRUPT);
  if (rc != 0) {
    ASSERT(d.msg[0] != '\0');
    return rc;
  }
  for (uint32_t i = 0; i < n + 2; i++) {
    const uint8_t *rec = NULL;
    size_t rl = 0;
    char absent[300];
    const char *id = i < n ? e[i].id : i == n ? "" : absent;
    size_t il = i < n ? e[i].id_len : 0;
    if (i == n + 1) {
      memcpy(absent, e[n - 1].id, e[n - 1].id_len);
      absent[e[n - 1].id_len] = '!';
      il = e[n - 1].id_len + 1;
    }
    int f = store_chunk_find(&c, id, il, &rec, &rl, &d);
    ASSERT(f == 0 || f == LMAP_ENOTFOUND || f == LMAP_ECORRUPT);
    if (f == 0)
      ASSERT(rec >= v && rl >= 1 && rl <= len && rec + rl <= v + len);
  }
  for (uint32_t i = 0; i < c.n; i++) {
    char id[LABELMAP_MAX_ID_LEN];
    size_t il, rl;
    const uint8_t *rec;
    int f = store_chunk_entry(&c, i, id, &il, &rec, &rl, &d);
    ASSERT(f == 0 || f == LMAP_ECORRUPT);
    if (f == 0)
      ASSERT(il >= 1 && il <= LABELMAP_MAX_ID_LEN && rec >= v &&
             rec + rl <= v + len);
  }
  return 0;
}

static int tentry_cmp(const void *a, const void *b) {
  const tentry *x = a, *y = b;
  return key_cmp(x->id, x->id_len, y->id, y->id_len);
}

static void test_chunk_parser(void) {
  /* The checksum is the one the specification defines. */
  uint8_t buf[200];
  for (size_t i = 0; i < sizeof buf; i++)
    buf[i] = (uint8_t)rnd();
  for (size_t n = 0; n <= sizeof buf; n++)
    ASSERT_EQ(store_chunk_checksum(buf, n), spec_checksum(buf, n));

  /* The example of docs/STORE_FORMAT.md §4.1, byte for byte. */
  static const uint8_t example[32] = {
      0x8f, 0xb3, 0x91, 0xc4, 1,   4,   2,   0,   2,   0,   0,
      0,    5,    0,    0,    0,   1,   0,   3,   0,   'n', '0',
      '1',  '_',  '1',  '2',  '3', 'A', 'B', 'C', 'D', 'E'};
  {
    store_chunk c;
    const uint8_t *rec;
    size_t rl;
    ASSERT_EQ(store_chunk_parse(example, sizeof example, &c, NULL), 0);
    ASSERT_EQ(c.n, 2);
    ASSERT_EQ(store_chunk_find(&c, "n01_23", 6, &rec, &rl, NULL), 0);
    ASSERT(rl == 3 && memcmp(rec, "CDE", 3) == 0);
    ASSERT_EQ(store_chunk_find(&c, "n01_1", 5, &rec, &rl, NULL), 0);
    ASSERT(rl == 2 && memcmp(rec, "AB", 2) == 0);
    ASSERT_EQ(store_chunk_find(&c, "n01_2", 5, &rec, &rl, NULL),
              LMAP_ENOTFOUND);
    tentry ex[2] = {{"n01_1", 5, (const uint8_t *)"AB", 2},
                    {"n01_23", 6, (const uint8_t *)"CDE", 3}};
    uint8_t out[64];
    ASSERT_EQ(spec_pack(out, ex, 2), sizeof example);
    ASSERT(memcmp(out, example, sizeof example) == 0);
  }

  /* A chunk of ids with a common prefix, one id that is the prefix itself,
   * records of 1 to 40 bytes. */
  enum { N = 40 };
  tentry e[N];
  char ids[N][32];
  uint8_t recs[N][40];
  for (int i = 0; i < N; i++) {
    int l = i == 0 ? snprintf(ids[i], sizeof ids[i], "n0144")
                   : snprintf(ids[i], sizeof ids[i], "n0144%d_%d", i % 7, i);
    e[i].id = ids[i];
    e[i].id_len = (size_t)l;
    e[i].len = 1 + (size_t)(rnd() % 40);
    for (size_t j = 0; j < e[i].len; j++)
      recs[i][j] = (uint8_t)rnd();
    e[i].rec = recs[i];
  }
  qsort(e, N, sizeof e[0], tentry_cmp);
  uint8_t packed[8192];
  size_t len = spec_pack(packed, e, N), prefix;
  size_t r = spec_records_at(e, N, &prefix);
  ASSERT_EQ(prefix, 5);
  guarded g = guard_new(len);
  memcpy(g.p, packed, len);

  store_chunk c;
  diag d = {0};
  ASSERT_EQ(store_chunk_parse(g.p, len, &c, &d), 0);
  ASSERT_EQ(c.n, N);
  ASSERT_EQ(c.prefix_len, 5);
  for (uint32_t i = 0; i < N; i++) {
    const uint8_t *rec;
    size_t rl, il;
    char id[LABELMAP_MAX_ID_LEN];
    ASSERT_EQ(store_chunk_find(&c, e[i].id, e[i].id_len, &rec, &rl, &d), 0);
    ASSERT_EQ(rl, e[i].len);
    ASSERT(memcmp(rec, e[i].rec, rl) == 0);
    ASSERT_EQ(store_chunk_entry(&c, i, id, &il, &rec, &rl, &d), 0);
    ASSERT_EQ(il, e[i].id_len);
    ASSERT(memcmp(id, e[i].id, il) == 0);
    ASSERT(memcmp(rec, e[i].rec, rl) == 0);
    /* Just above this id, and a prefix of it: absent. */
    char up[40];
    memcpy(up, e[i].id, e[i].id_len);
    up[e[i].id_len] = '!';
    ASSERT_EQ(store_chunk_find(&c, up, e[i].id_len + 1, &rec, &rl, &d),
              LMAP_ENOTFOUND);
    ASSERT_EQ(store_chunk_find(&c, e[i].id, 4, &rec, &rl, &d), LMAP_ENOTFOUND);
  }
  ASSERT_EQ(store_chunk_find(&c, "a", 1, NULL, NULL, &d), LMAP_ENOTFOUND);
  ASSERT_EQ(store_chunk_find(&c, "n0145", 5, NULL, NULL, &d), LMAP_ENOTFOUND);
  guard_free(&g);

  /* Every truncation is refused by the parser. */
  for (size_t cut = 0; cut < len; cut++) {
    guarded t = guard_new(cut);
    memcpy(t.p, packed, cut);
    diag dd = {0};
    ASSERT_EQ(store_chunk_parse(t.p, cut, &c, &dd), LMAP_ECORRUPT);
    guard_free(&t);
  }

  /* Every byte changed three ways: a damaged directory (checksum, header,
   * offsets, ids) is refused at parse; damage in the records is left to
   * the records' own checksums. Nothing reads out of bounds. */
  g = guard_new(len);
  for (size_t i = 0; i < len; i++) {
    static const uint8_t flips[] = {0x01, 0x80, 0xFF};
    for (int k = 0; k < 3; k++) {
      memcpy(g.p, packed, len);
      g.p[i] ^= flips[k];
      int rc = probe_chunk(g.p, len, e, N);
      if (i < r)
        ASSERT_EQ(rc, LMAP_ECORRUPT);
      else
        ASSERT_EQ(rc, 0);
    }
  }

  /* Hostile directories that carry a valid checksum: the bounds checks,
   * not the checksum, must hold. */
  struct {
    size_t off;
    int width;
    uint32_t val;
    int parse_ok;
  } hostile[] = {
      {6, 2, 0, 0},      /* no records */
      {6, 2, 0xFFFF, 0}, /* directory past the end */
      {6, 2, N - 1, 0},  /* one record fewer: sizes disagree */
      {5, 1, 0xFF, 0},   /* prefix past what is there */
      {5, 1, 0, 0},      /* no prefix: sizes disagree */
      {8 + 4 * N + 2 * (N - 1), 2, 0xFFFF, 0}, /* suffixes past the end */
      {8 + 4 * (N - 1), 4, 0xFFFFFFFFu, 0},    /* records past the end */
      {8 + 4 * 3, 4, 0, 1},                    /* record 3 ends at 0 */
      {8 + 4 * 3, 4, 0xFFFFFFF0u, 1},          /* record 3 ends far out */
      {8 + 4 * N + 2 * 3, 2, 0, 1},            /* suffix 3 ends at 0 */
      {8 + 4 * N + 2 * 3, 2, 0xFFF0, 1},       /* suffix 3 ends far out */
      {8 + 4 * N + 2 * 3, 2, 1000, 1},
  };
  for (size_t h = 0; h < sizeof hostile / sizeof hostile[0]; h++) {
    memcpy(g.p, packed, len);
    uint8_t *f = g.p + hostile[h].off;
    if (hostile[h].width == 1)
      f[0] = (uint8_t)hostile[h].val;
    else if (hostile[h].width == 2)
      set16(f, hostile[h].val);
    else
      set32(f, hostile[h].val);
    reseal(g.p, len);
    int rc = probe_chunk(g.p, len, e, N);
    if (!hostile[h].parse_ok && rc == 0)
      fprintf(stderr, "hostile case %zu parsed\n", h);
    if (!hostile[h].parse_ok)
      ASSERT_EQ(rc, LMAP_ECORRUPT);
  }
  /* Reading the entries of those parsed cases reports them. */
  memcpy(g.p, packed, len);
  set32(g.p + 8 + 4 * 3, 0);
  reseal(g.p, len);
  ASSERT_EQ(store_chunk_parse(g.p, len, &c, &d), 0);
  {
    char id[LABELMAP_MAX_ID_LEN];
    size_t il, rl;
    const uint8_t *rec;
    ASSERT_EQ(store_chunk_entry(&c, 3, id, &il, &rec, &rl, &d), LMAP_ECORRUPT);
    ASSERT_CONTAINS(d.msg, "record 3");
    ASSERT_EQ(store_chunk_find(&c, e[3].id, e[3].id_len, &rec, &rl, &d),
              LMAP_ECORRUPT);
    ASSERT_EQ(store_chunk_entry(&c, N, id, &il, &rec, &rl, &d), LMAP_ECORRUPT);
  }
  guard_free(&g);

  /* Random directories with valid checksums, against the guard page. */
  for (int t = 0; t < 3000; t++) {
    size_t n = 1 + rnd() % 6, p = rnd() % 4, vlen = 8 + 6 * n + p + rnd() % 60;
    guarded rg = guard_new(vlen);
    for (size_t i = 0; i < vlen; i++)
      rg.p[i] = (uint8_t)rnd();
    rg.p[4] = 1;
    rg.p[5] = (uint8_t)p;
    set16(rg.p + 6, (uint32_t)n);
    for (size_t i = 0; i < n; i++) { /* small offsets, often plausible */
      set32(rg.p + 8 + 4 * i, (uint32_t)(rnd() % 64));
      set16(rg.p + 8 + 4 * n + 2 * i, (uint32_t)(rnd() % 16));
    }
    size_t s = get16(rg.p + 8 + 4 * n + 2 * (n - 1));
    size_t rr = 8 + 6 * n + p + s;
    if (rr <= vlen && rnd() % 4 != 0) /* mostly a consistent record area */
      set32(rg.p + 8 + 4 * (n - 1), (uint32_t)(vlen - rr));
    reseal(rg.p, vlen);
    tentry probe[2] = {{"ab", 2, NULL, 0}, {"zz", 2, NULL, 0}};
    probe_chunk(rg.p, vlen, probe, 2);
    guard_free(&rg);
  }
}

/* ---- round trip ---- */

typedef struct walk {
  uint64_t n;
  char last[256];
  size_t last_len;
  store_reader *r;
  int stop_at;
  uint64_t bytes;
  /* Chunks seen from outside: a record not adjacent to the previous one
   * starts a new chunk. */
  const uint8_t *prev_end;
  uint64_t chunks;
  char (*ids)[64];
  uint32_t *chunk_of; /* per record, in walk order */
  const uint8_t **recs;
  size_t *lens;
} walk;

static int visit(void *ctx, const char *id, size_t id_len, const uint8_t *rec,
                 size_t rec_len) {
  walk *w = ctx;
  /* Ids come in LMDB's order: bytewise, shorter first on a tie. */
  if (w->n > 0)
    ASSERT(key_cmp(w->last, w->last_len, id, id_len) < 0);
  memcpy(w->last, id, id_len);
  w->last_len = id_len;
  if (w->r != NULL) {
    labelmap m;
    ASSERT_EQ(store_reader_decode(w->r, rec, rec_len, &m, NULL), 0);
  }
  if (rec != w->prev_end)
    w->chunks++;
  w->prev_end = rec + rec_len;
  if (w->ids != NULL) {
    ASSERT(id_len < 64);
    memcpy(w->ids[w->n], id, id_len);
    w->ids[w->n][id_len] = '\0';
    w->chunk_of[w->n] = (uint32_t)(w->chunks - 1);
    w->recs[w->n] = rec;
    w->lens[w->n] = rec_len;
  }
  w->bytes += rec_len;
  w->n++;
  if (w->stop_at && (int)w->n == w->stop_at)
    return 42;
  return 0;
}

/* Finds, in the file image, the chunks the walk saw, and checks their
 * headers byte by byte against the specification. */
static void check_chunks_in_file(const char *path, const walk *w) {
  size_t len;
  uint8_t *img = read_all(path, &len);
  uint64_t first = 0;
  uint64_t found = 0;
  for (uint64_t i = 1; i <= w->n; i++) {
    if (i < w->n && w->chunk_of[i] == w->chunk_of[first])
      continue;
    uint32_t n = (uint32_t)(i - first);
    tentry *e = malloc(n * sizeof *e);
    for (uint32_t k = 0; k < n; k++) {
      e[k].id = w->ids[first + k];
      e[k].id_len = strlen(w->ids[first + k]);
    }
    size_t prefix, r = spec_records_at(e, n, &prefix);
    uint8_t *rec = find_bytes(img, len, w->recs[first], w->lens[first]);
    ASSERT(rec != NULL);
    uint8_t *v = rec - r;
    ASSERT(v >= img);
    ASSERT_EQ(v[4], 1);
    ASSERT_EQ(v[5], prefix);
    ASSERT_EQ(get16(v + 6), n);
    uint32_t c = (uint32_t)v[0] | (uint32_t)v[1] << 8 | (uint32_t)v[2] << 16 |
                 (uint32_t)v[3] << 24;
    ASSERT_EQ(c, spec_checksum(v + 4, r - 4));
    free(e);
    found++;
    first = i;
  }
  ASSERT_EQ(found, w->chunks);
  free(img);
}

/* Whether `id` is one of the n sorted ids. */
static int is_id(char (*ids)[64], uint64_t n, const char *id, size_t len) {
  uint64_t lo = 0, hi = n;
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    int c = key_cmp(id, len, ids[mid], strlen(ids[mid]));
    if (c == 0)
      return 1;
    if (c < 0)
      hi = mid;
    else
      lo = mid + 1;
  }
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
  ASSERT_EQ(m->format_version, 2);
  ASSERT_EQ(m->shape.k, 5);
  ASSERT_EQ(m->shape.h, 15);
  ASSERT_EQ(m->shape.w, 15);
  ASSERT_EQ(m->shape.num_classes, 1000);
  ASSERT_EQ(m->shape.encoding, CODEC_F16);
  ASSERT_EQ(m->record_count, count);
  ASSERT_EQ(m->has_class_names, 1);
  /* Chunks of tens of records, never one per record. */
  ASSERT(m->chunk_count >= count / 256 && m->chunk_count <= count / 16 + 1);
  ASSERT_CONTAINS(store_meta_json(s), "\"source\": \"synth\"");
  ASSERT(store_class_names_json(s) != NULL);
  char wn[16];
  synth_class_wnid(params.seed, 999, wn);
  ASSERT_CONTAINS(store_class_names_json(s), wn);
  ASSERT_EQ(store_file_size(s), file_size(path));

  store_reader *r = NULL, *r2 = NULL;
  ASSERT_EQ(store_reader_new(s, &r, &d), 0);
  ASSERT_EQ(store_reader_new(s, &r2, &d), 0);

  /* The walk: every record once, in id order, each decodes; the chunks
   * it crosses are those the metadata counts, and the file holds them as
   * the specification lays them out. */
  walk wk = {0};
  wk.r = r;
  wk.ids = malloc(count * sizeof *wk.ids);
  wk.chunk_of = malloc(count * sizeof *wk.chunk_of);
  wk.recs = malloc(count * sizeof *wk.recs);
  wk.lens = malloc(count * sizeof *wk.lens);
  ASSERT_EQ(store_foreach(s, visit, &wk, &d), 0);
  ASSERT_EQ(wk.n, count);
  ASSERT_EQ(wk.chunks, m->chunk_count);
  check_chunks_in_file(path, &wk);
  double per = (double)file_size(path) / (double)count;
  double payload = (double)wk.bytes / (double)count;
  printf("store (%s ids): %llu records in %llu chunks, %llu bytes: %.1f per "
         "record for %.1f of payload\n",
         sorted ? "sorted" : "random", (unsigned long long)count,
         (unsigned long long)m->chunk_count,
         (unsigned long long)file_size(path), per, payload);
  /* About 2,000-byte records: full pages whatever the order the ids came
   * in; the directory, the last page of each chunk and LMDB's tree and
   * metadata (20 KB here) cost tens of bytes per record. */
  ASSERT(per < payload + 50.0);

  /* Every id, looked up in a random order by two readers, decodes to the
   * map it was written with. */
  float sc[1125];
  uint32_t cl[1125];
  labelmap want = {.k = 5, .h = 15, .w = 15, .scores = sc, .classes = cl}, got;
  char id[64];
  for (uint64_t k = 0; k < count; k++) {
    uint64_t i = (k * 7919) % count; /* count is not a multiple of 7919 */
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

  /* Absent ids: below the first chunk's key, just above every id (so
   * between any two neighbours, inside a chunk or across a boundary, and
   * above the last), and every id cut by one byte that is not itself an
   * id. */
  ASSERT_EQ(store_reader_get(r, "A", 1, &got, &d), LMAP_ENOTFOUND);
  ASSERT_CONTAINS(d.msg, "no map for id 'A'");
  ASSERT_EQ(store_reader_get(r, "n00000000_1", 11, &got, &d), LMAP_ENOTFOUND);
  ASSERT_CONTAINS(d.msg, "n00000000_1");
  ASSERT_EQ(store_reader_get(r, "zzz", 3, &got, &d), LMAP_ENOTFOUND);
  ASSERT_EQ(store_reader_get(r, "\x01", 1, &got, &d), LMAP_ENOTFOUND);
  ASSERT_EQ(store_reader_get(r, "\xff\xff", 2, &got, &d), LMAP_ENOTFOUND);
  uint64_t boundaries = 0;
  for (uint64_t i = 0; i < count; i++) {
    char a[70];
    size_t l = strlen(wk.ids[i]);
    memcpy(a, wk.ids[i], l);
    a[l] = '!';
    ASSERT_EQ(store_reader_get(r, a, l + 1, &got, &d), LMAP_ENOTFOUND);
    ASSERT(i + 1 == count ||
           key_cmp(a, l + 1, wk.ids[i + 1], strlen(wk.ids[i + 1])) < 0);
    boundaries += i + 1 < count && wk.chunk_of[i] != wk.chunk_of[i + 1];
    if (!is_id(wk.ids, count, a, l - 1))
      ASSERT_EQ(store_reader_get(r2, a, l - 1, &got, &d), LMAP_ENOTFOUND);
  }
  ASSERT_EQ(boundaries, m->chunk_count - 1);

  ASSERT_EQ(store_reader_get(r, "", 0, &got, &d), LMAP_EBADID);
  char big[300];
  memset(big, 'a', sizeof big);
  ASSERT_EQ(store_reader_get(r, big, 256, &got, &d), LMAP_EBADID);
  ASSERT_EQ(store_reader_get(r, "a\0b", 3, &got, &d), LMAP_EBADID);
  /* The reader keeps working after misses and refusals. */
  synth_image(&params, 0, id, &want);
  ASSERT_EQ(store_reader_get(r, id, strlen(id), &got, &d), 0);

  walk stop = {0};
  stop.stop_at = 3;
  ASSERT_EQ(store_foreach(s, visit, &stop, &d), 42);
  ASSERT_EQ(stop.n, 3);

  free(wk.ids);
  free(wk.chunk_of);
  free(wk.recs);
  free(wk.lens);
  store_reader_free(r);
  store_reader_free(r2);
  store_reader_free(NULL);
  store_close(s);
  store_close(NULL);
}

/* ---- a damaged chunk inside a store ---- */

/* Walk state for locating one chunk: the ids and records of chunk `want`
 * (counted from 0 in walk order). */
typedef struct chunk_grab {
  uint64_t want, chunk;
  const uint8_t *prev_end;
  int started;
  uint32_t n;
  char ids[256][64];
  uint8_t *first_rec;
  size_t first_len;
} chunk_grab;

static int grab(void *ctx, const char *id, size_t id_len, const uint8_t *rec,
                size_t rec_len) {
  chunk_grab *g = ctx;
  if (g->started && rec != g->prev_end)
    g->chunk++;
  g->started = 1;
  g->prev_end = rec + rec_len;
  if (g->chunk == g->want) {
    ASSERT(g->n < 256 && id_len < 64);
    memcpy(g->ids[g->n], id, id_len);
    g->ids[g->n][id_len] = '\0';
    if (g->n++ == 0) {
      g->first_rec = malloc(rec_len);
      memcpy(g->first_rec, rec, rec_len);
      g->first_len = rec_len;
    }
  }
  return 0;
}

static void test_damaged_chunk(const char *good) {
  char p[700];
  diag d = {0};
  store *s = NULL;
  ASSERT_EQ(store_open(good, &s, &d), 0);
  chunk_grab *g = calloc(1, sizeof *g);
  g->want = 3;
  ASSERT_EQ(store_foreach(s, grab, g, &d), 0);
  store_close(s);
  ASSERT(g->n > 1);
  tentry *e = calloc(g->n, sizeof *e);
  for (uint32_t i = 0; i < g->n; i++) {
    e[i].id = g->ids[i];
    e[i].id_len = strlen(g->ids[i]);
  }
  size_t prefix, r = spec_records_at(e, g->n, &prefix);
  free(e);
  size_t len;
  uint8_t *img = read_all(good, &len);
  uint8_t *rec = find_bytes(img, len, g->first_rec, g->first_len);
  ASSERT(rec != NULL);
  size_t at = (size_t)(rec - img) - r; /* the chunk's first byte */
  ASSERT_EQ(img[at + 4], 1);
  ASSERT_EQ(get16(img + at + 6), g->n);

  /* Damage: one byte of an id, the record count, the version, an
   * offset. Each makes the chunk's ids corrupt, and only them. */
  struct {
    size_t off;
    uint8_t x;
    const char *why;
  } cases[] = {
      {r - 1, 0x01, "checksum"},
      {6, 0x01, ""},
      {7, 0x80, ""},
      {4, 0x03, "version"},
      {8 + 4, 0x40, "checksum"},
      {0, 0xFF, "checksum"},
  };
  char other[64];
  {
    /* An id of another chunk, still served. */
    chunk_grab *g0 = calloc(1, sizeof *g0);
    g0->want = 1;
    ASSERT_EQ(store_open(good, &s, &d), 0);
    ASSERT_EQ(store_foreach(s, grab, g0, &d), 0);
    store_close(s);
    snprintf(other, sizeof other, "%s", g0->ids[0]);
    free(g0->first_rec);
    free(g0);
  }
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    img[at + cases[k].off] ^= cases[k].x;
    path_of(p, sizeof p, "damaged-chunk.lmap");
    write_all(p, img, len);
    img[at + cases[k].off] ^= cases[k].x;
    open_damaged(p, &s); /* open reads no chunk */
    store_reader *rd = NULL;
    labelmap got;
    ASSERT_EQ(store_reader_new(s, &rd, &d), 0);
    for (uint32_t i = 0; i < g->n; i++) {
      int rc = store_reader_get(rd, g->ids[i], strlen(g->ids[i]), &got, &d);
      if (rc != LMAP_ECORRUPT)
        fprintf(stderr, "case %zu id %s: %d %s\n", k, g->ids[i], rc, d.msg);
      ASSERT_EQ(rc, LMAP_ECORRUPT);
      ASSERT_CONTAINS(d.msg, g->ids[i]);
      ASSERT_CONTAINS(d.msg, "(chunk '");
      ASSERT_CONTAINS(d.msg, cases[k].why);
    }
    ASSERT_EQ(store_reader_get(rd, other, strlen(other), &got, &d), 0);
    walk wk = {0};
    ASSERT_EQ(store_foreach(s, visit, &wk, &d), LMAP_ECORRUPT);
    ASSERT_CONTAINS(d.msg, "chunk '");
    ASSERT_CONTAINS(d.msg, g->ids[0]);
    ASSERT_CONTAINS(d.msg, cases[k].why);
    store_reader_free(rd);
    store_close(s);
  }

  /* The chunk's key damaged in its leaf page (the id's other copy lies in
   * the directory): the key, one above its first id, still sorts between
   * its neighbours, so LMDB's order holds. A lookup of the damaged key
   * lands on the chunk and does not find it there; the walk sees the key
   * differ from the first id. */
  size_t kl = strlen(g->ids[0]);
  uint8_t *key = NULL;
  for (uint8_t *h = img;
       (h = find_bytes(h, len - (size_t)(h - img), g->ids[0], kl)) != NULL; h++)
    if (h < img + at || h >= img + at + r)
      key = h;
  ASSERT(key != NULL);
  char damaged[64];
  memcpy(damaged, g->ids[0], kl + 1);
  damaged[kl - 1]++;
  ASSERT(strcmp(damaged, g->ids[1]) < 0);
  key[kl - 1]++;
  write_all(p, img, len);
  key[kl - 1]--;
  {
    store_reader *rd = NULL;
    labelmap got;
    open_damaged(p, &s);
    ASSERT_EQ(store_reader_new(s, &rd, &d), 0);
    ASSERT_EQ(store_reader_get(rd, damaged, kl, &got, &d), LMAP_ECORRUPT);
    ASSERT_CONTAINS(d.msg, "key is not among its ids");
    ASSERT_EQ(store_reader_get(rd, g->ids[1], strlen(g->ids[1]), &got, &d), 0);
    walk wk = {0};
    ASSERT_EQ(store_foreach(s, visit, &wk, &d), LMAP_ECORRUPT);
    ASSERT_CONTAINS(d.msg, "first id differs from its key");
    store_reader_free(rd);
    store_close(s);
  }

  /* Ids out of order under a valid checksum (what a faulty writer would
   * make): two neighbours swapped, and the last id raised above the next
   * chunk's key. Lookups cannot tell; the walk refuses both. */
  uint8_t *sfx = img + at + 8 + 6 * (size_t)g->n + prefix;
  size_t off[257];
  off[0] = 0;
  for (uint32_t i = 0; i < g->n; i++)
    off[i + 1] = off[i] + strlen(g->ids[i]) - prefix;
  uint32_t sw = 1; /* not the first id: that one is the key */
  while (sw + 1 < g->n && off[sw + 1] - off[sw] != off[sw + 2] - off[sw + 1])
    sw++;
  ASSERT(sw + 1 < g->n);
  for (int k = 0; k < 2; k++) {
    uint8_t *copy = malloc(len);
    memcpy(copy, img, len);
    uint8_t *cs = copy + (sfx - img);
    if (k == 0) {
      size_t l = off[sw + 1] - off[sw];
      uint8_t tmp[256];
      memcpy(tmp, cs + off[sw], l);
      memcpy(cs + off[sw], cs + off[sw + 1], l);
      memcpy(cs + off[sw + 1], tmp, l);
    } else {
      ASSERT(off[g->n] > off[g->n - 1]);
      cs[off[g->n - 1]] = 'z';
    }
    set32(copy + at, spec_checksum(copy + at + 4, r - 4));
    write_all(p, copy, len);
    free(copy);
    open_damaged(p, &s);
    walk wk = {0};
    ASSERT_EQ(store_foreach(s, visit, &wk, &d), LMAP_ECORRUPT);
    ASSERT_CONTAINS(d.msg, "is not above the id before it");
    store_close(s);
  }
  free(img);
  free(g->first_rec);
  free(g);
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
  /* The checksum trailer's length, in the 8 bytes before its end magic:
   * LMDB's pages end where it starts. */
  uint64_t tlen;
  memcpy(&tlen, img + len - 16, 8);
  size_t pages_end = len - (size_t)tlen;
  size_t cuts[] = {
      24,      100,        2000,          4096,      4096 + 100,    8192,
      len / 2, len - 4096, pages_end - 1, pages_end, pages_end + 1, len - 1};
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
    path_of(p, sizeof p, "truncated.lmap");
    write_all(p, img, cuts[i]);
    refused(p, LMAP_EBADSTORE, "truncated?");
    if (cuts[i] > pages_end) {
      refused(p, LMAP_EBADSTORE, "not a complete checksum trailer");
    } else if (cuts[i] == pages_end) {
      /* Exactly LMDB's pages: what an older lmap wrote, but cut. */
    } else if (cuts[i] >= 4096 + 100) {
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
  refused_damaged(p, LMAP_EBADSTORE, "not an LMDB file");
  /* Both meta pages claiming absurd or merely too many pages (64-bit
   * layout: last_pg at offset 136 of each 4 KiB meta page). */
  if (sizeof(size_t) == 8 && len >= 8192) {
    uint64_t huge = UINT64_MAX - 5, many = 1000000;
    path_of(p, sizeof p, "badlast.lmap");
    memcpy(img + 136, &huge, 8);
    memcpy(img + 4096 + 136, &huge, 8);
    write_all(p, img, len);
    refused_damaged(p, LMAP_EBADSTORE, "(corrupt)");
    memcpy(img + 136, &many, 8);
    memcpy(img + 4096 + 136, &many, 8);
    write_all(p, img, len);
    refused_damaged(p, LMAP_EBADSTORE, "needs 4096004096 (truncated?)");
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
      {"v3.lmap",
       "{\"format\": \"lmap-store\", \"format_version\": 3, \"grid_h\": 15}",
       "format_version 3 is not supported (this lmap reads 2)", LMAP_EVERSION},
      /* A store of the one-record-per-value layout. */
      {"v1.lmap",
       "{\"format\": \"lmap-store\", \"format_version\": 1, \"grid_h\": 15, "
       "\"grid_w\": 15, \"topk\": 5, \"num_classes\": 1000, "
       "\"encoding\": \"f16\", \"record_count\": 10}",
       "format_version 1 is not supported (this lmap reads 2)", LMAP_EVERSION},
      {"notjson.lmap", "{\"format\": ", "not valid JSON", LMAP_EBADSTORE},
      {"array.lmap", "[1, 2]", "not a JSON object", LMAP_EBADSTORE},
      {"otherformat.lmap", "{\"format\": \"zarr\", \"format_version\": 2}",
       "not \"lmap-store\"", LMAP_EBADSTORE},
      {"noformat.lmap", "{\"format_version\": 2}", "no \"format\" field",
       LMAP_EBADSTORE},
      {"nogridh.lmap",
       "{\"format\": \"lmap-store\", \"format_version\": 2, \"grid_w\": 15, "
       "\"topk\": 5, \"num_classes\": 1000, \"encoding\": \"f16\", "
       "\"record_count\": 10}",
       "no \"grid_h\" field", LMAP_EBADSTORE},
      {"strtopk.lmap",
       "{\"format\": \"lmap-store\", \"format_version\": 2, \"grid_h\": 15, "
       "\"grid_w\": 15, \"topk\": \"5\", \"num_classes\": 1000, "
       "\"encoding\": \"f16\", \"record_count\": 10}",
       "\"topk\" is not an integer", LMAP_EBADSTORE},
      {"realversion.lmap",
       "{\"format\": \"lmap-store\", \"format_version\": 2.0}",
       "\"format_version\" is not an integer", LMAP_EBADSTORE},
      {"encoding.lmap",
       "{\"format\": \"lmap-store\", \"format_version\": 2, \"grid_h\": 15, "
       "\"grid_w\": 15, \"topk\": 5, \"num_classes\": 1000, "
       "\"encoding\": \"bf16\", \"record_count\": 10}",
       "neither \"f16\" nor \"f32\"", LMAP_EBADSTORE},
      {"hugeshape.lmap",
       "{\"format\": \"lmap-store\", \"format_version\": 2, \"grid_h\": 4000, "
       "\"grid_w\": 15, \"topk\": 5, \"num_classes\": 1000, "
       "\"encoding\": \"f16\", \"record_count\": 10}",
       "grid_h 4000 is outside", LMAP_EBADSTORE},
      {"negcount.lmap",
       "{\"format\": \"lmap-store\", \"format_version\": 2, \"grid_h\": 15, "
       "\"grid_w\": 15, \"topk\": 5, \"num_classes\": 1000, "
       "\"encoding\": \"f16\", \"record_count\": -1}",
       "\"record_count\" is -1", LMAP_EBADSTORE},
      {"dupkey.lmap",
       "{\"format\": \"lmap-store\", \"format\": \"lmap-store\"}",
       "not valid JSON", LMAP_EBADSTORE},
      {"cnflag.lmap",
       "{\"format\": \"lmap-store\", \"format_version\": 2, \"grid_h\": 15, "
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

  /* Counts: the metadata's record count against the writer's, the
   * layout's chunk count against the maps database. */
  path_of(p, sizeof p, "count.lmap");
  memset(&o, 0, sizeof o);
  o.count_delta = 1;
  build(p, 10, &o);
  refused(p, LMAP_EBADSTORE,
          "metadata says 11 records but the store's chunks hold 10");

  char q[700];
  path_of(p, sizeof p, "layout.lmap");
  memset(&o, 0, sizeof o);
  build(p, 300, &o);
  store *s = NULL;
  ASSERT_EQ(store_open(p, &s, NULL), 0);
  uint64_t chunks = store_get_meta(s)->chunk_count;
  store_close(s);
  ASSERT(chunks >= 2 && chunks <= 8); /* one digit, either way */
  char from[64], to[64];
  snprintf(from, sizeof from, "{\"chunk_count\": %llu,",
           (unsigned long long)chunks);
  snprintf(to, sizeof to, "{\"chunk_count\": %llu,",
           (unsigned long long)chunks + 1);
  path_of(q, sizeof q, "layout-chunks.lmap");
  patch_file(p, q, from, to);
  snprintf(to, sizeof to,
           "chunk layout says %llu chunks but the maps "
           "database holds %llu",
           (unsigned long long)chunks + 1, (unsigned long long)chunks);
  refused_damaged(q, LMAP_EBADSTORE, to);
  snprintf(to, sizeof to, "{\"chunk_count\": %llu,",
           (unsigned long long)chunks - 1);
  patch_file(p, q, from, to);
  refused_damaged(q, LMAP_EBADSTORE, "chunks but the maps database holds");
  patch_file(p, q, "\"record_count\": 300}", "\"record_count\": 301}");
  refused_damaged(q, LMAP_EBADSTORE,
                  "metadata says 300 records but the store's chunks hold 301");
  patch_file(p, q, "\"record_count\": 300}", "\"record_count\": 3e2}");
  refused_damaged(q, LMAP_EBADSTORE,
                  "chunk layout field \"record_count\" is not an "
                  "integer");
  patch_file(p, q, "{\"chunk_count\": ", "[\"chunk_count\": ");
  refused_damaged(q, LMAP_EBADSTORE,
                  "chunk layout \"lmap.layout\" is not a JSON "
                  "object");
  /* The key renamed: "lmap.layouT" sorts where "lmap.layout" did. */
  patch_file(p, q, "lmap.layout", "lmap.layouT");
  refused_damaged(q, LMAP_EBADSTORE, "no chunk layout entry \"lmap.layout\"");

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

/* Puts the metadata a raw-record store needs to open (no dictionary). */
static void put_plain_meta(store_writer *w, uint64_t count) {
  diag d = {0};
  char *meta = meta_text(count, NULL);
  ASSERT_EQ(store_writer_put_meta(w, "lmap.meta", meta, strlen(meta), &d), 0);
  free(meta);
  char *names = class_names(1000);
  ASSERT_EQ(store_writer_put_meta(w, "lmap.classes", names, strlen(names), &d),
            0);
  free(names);
}

typedef struct raw_rec {
  char id[256];
  size_t id_len;
  uint8_t *rec;
  size_t len;
} raw_rec;

static int raw_cmp(const void *a, const void *b) {
  const raw_rec *x = a, *y = b;
  return key_cmp(x->id, x->id_len, y->id, y->id_len);
}

typedef struct raw_walk {
  raw_rec *want;
  size_t n, i;
} raw_walk;

static int raw_visit(void *ctx, const char *id, size_t id_len,
                     const uint8_t *rec, size_t rec_len) {
  raw_walk *w = ctx;
  ASSERT(w->i < w->n);
  raw_rec *e = &w->want[w->i++];
  ASSERT_EQ(id_len, e->id_len);
  ASSERT(memcmp(id, e->id, id_len) == 0);
  ASSERT_EQ(rec_len, e->len);
  ASSERT(memcmp(rec, e->rec, rec_len) == 0);
  return 0;
}

/* Records that are not codec records (the store keeps bytes), of sizes
 * from 1 byte to past the spill buffer and the chunk byte budget, under
 * binary ids, ids that are prefixes of others, ids sharing 254 bytes, and
 * a 255-byte id: every one comes back, in key order. */
static void test_raw_records(void) {
  char p[700];
  diag d = {0};
  enum { N = 600 };
  raw_rec *r = calloc(N, sizeof *r);
  size_t n = 0;
  for (; n < 300; n++) { /* short binary ids, no NUL */
    r[n].id_len = 1 + rnd() % 4;
    r[n].id[0] = (char)(0x80 + rnd() % 128); /* apart from the ASCII ids */
    for (size_t j = 1; j < r[n].id_len; j++)
      r[n].id[j] = (char)(1 + rnd() % 255);
  }
  for (size_t k = 1; k <= 40; k++, n++) { /* "p", "pp", ... */
    memset(r[n].id, 'p', k);
    r[n].id_len = k;
  }
  for (size_t k = 0; k < 60; k++, n++) { /* 254 shared bytes */
    memset(r[n].id, 'q', 254);
    r[n].id[254] = (char)(1 + k);
    r[n].id_len = k == 0 ? 254 : 255;
  }
  for (; n < N; n++)
    r[n].id_len = (size_t)snprintf(r[n].id, sizeof r[n].id, "n%08llu_%llu",
                                   (unsigned long long)(rnd() % 3),
                                   (unsigned long long)n);
  size_t big = 0;
  for (size_t i = 0; i < N; i++) {
    uint64_t kind = rnd() % 100;
    r[i].len = kind < 1    ? (1u << 20) + rnd() % 3  /* about the buffer */
               : kind < 2  ? (3u << 20) + rnd() % 99 /* past the chunk cap */
               : kind < 40 ? 1 + rnd() % 8
                           : 1000 + rnd() % 3000;
    big += r[i].len >= (1u << 20);
    r[i].rec = malloc(r[i].len);
    for (size_t j = 0; j < r[i].len; j += 1 + j / 64)
      r[i].rec[j] = (uint8_t)rnd();
  }
  /* The binary ids may repeat: drop the later copies. */
  store_writer *w = NULL;
  path_of(p, sizeof p, "raw.lmap");
  ASSERT_EQ(store_writer_open(p, 0, &w, &d), 0);
  size_t kept = 0;
  for (size_t i = 0; i < N; i++) {
    int rc = store_writer_put(w, r[i].id, r[i].id_len, r[i].rec, r[i].len, &d);
    ASSERT(rc == 0 || rc == LMAP_EEXIST);
    if (rc == 0) {
      r[kept] = r[i];
      kept++;
    } else {
      ASSERT_CONTAINS(d.msg, "duplicate id");
      free(r[i].rec);
    }
  }
  ASSERT(kept > N - 20);
  ASSERT_EQ(store_writer_count(w), kept);
  put_plain_meta(w, kept);
  ASSERT_EQ(store_writer_commit(w, &d), 0);
  ASSERT_EQ(count_files("raw.lmap.tmp"), 0);
  qsort(r, kept, sizeof *r, raw_cmp);

  store *s = NULL;
  ASSERT_EQ(store_open(p, &s, &d), 0);
  ASSERT_EQ(store_get_meta(s)->record_count, kept);
  raw_walk rw = {r, kept, 0};
  ASSERT_EQ(store_foreach(s, raw_visit, &rw, &d), 0);
  ASSERT_EQ(rw.i, kept);
  /* Lookups find every id: these records are not codec records, so the
   * reader reports them corrupt, naming the id and not the chunk. */
  store_reader *rd = NULL;
  labelmap m;
  ASSERT_EQ(store_reader_new(s, &rd, &d), 0);
  for (size_t i = 0; i < kept; i++) {
    ASSERT_EQ(store_reader_get(rd, r[i].id, r[i].id_len, &m, &d),
              LMAP_ECORRUPT);
    ASSERT_CONTAINS(d.msg, "record '");
    ASSERT(strstr(d.msg, "(chunk") == NULL);
  }
  ASSERT_EQ(store_reader_get(rd, "p", 1, &m, &d), LMAP_ECORRUPT);
  ASSERT_EQ(store_reader_get(rd, "pq", 2, &m, &d), LMAP_ENOTFOUND);
  char q255[256];
  memset(q255, 'q', 255);
  ASSERT_EQ(store_reader_get(rd, q255, 255, &m, &d), LMAP_ENOTFOUND);
  ASSERT_EQ(store_reader_get(rd, q255, 254, &m, &d), LMAP_ECORRUPT);
  store_reader_free(rd);
  store_close(s);
  printf("raw records: %zu (%zu of 1 MiB or more) round-tripped\n", kept, big);
  for (size_t i = 0; i < kept; i++)
    free(r[i].rec);
  free(r);
}

static void test_writer(void) {
  char p[700], p2[700];
  diag d = {0};
  store_writer *w = NULL;
  const uint8_t rec[3] = {1, 2, 3};

  /* Abort leaves nothing, with or without records. */
  path_of(p, sizeof p, "aborted.lmap");
  ASSERT_EQ(store_writer_open(p, 0, &w, &d), 0);
  ASSERT_EQ(count_files("aborted.lmap.tmp."), 0); /* spill unlinked at once */
  store_writer_abort(w);
  ASSERT_EQ(count_files("aborted.lmap"), 0);
  ASSERT_EQ(store_writer_open(p, 0, &w, &d), 0);
  uint8_t *chunk = calloc(1, 300000);
  for (int i = 0; i < 2000; i++) {
    char id[32];
    snprintf(id, sizeof id, "img_%d", (i * 37) % 2000);
    ASSERT_EQ(store_writer_put(w, id, strlen(id), chunk, 1 + i * 150, &d), 0);
  }
  store_writer_abort(w);
  store_writer_abort(NULL);
  free(chunk);
  ASSERT(!exists(p));
  ASSERT_EQ(count_files("aborted.lmap"), 0);

  /* Ids: duplicates name the id and do not spoil the writer, however many
   * ids came before; empty, long and NUL-carrying ids are refused; binary
   * and 255-byte ids are fine. */
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
  ASSERT_EQ(store_writer_put(w, "huge", 4, rec, STORE_MAX_RECORD_LEN + 1u, &d),
            LMAP_ETOOBIG);
  for (int i = 0; i < 5000; i++) { /* the id set grows several times */
    char id[32];
    snprintf(id, sizeof id, "x%d", i);
    ASSERT_EQ(store_writer_put(w, id, strlen(id), rec, 3, &d), 0);
  }
  for (int i = 4999; i >= 0; i -= 7) {
    char id[32];
    snprintf(id, sizeof id, "x%d", i);
    ASSERT_EQ(store_writer_put(w, id, strlen(id), rec, 3, &d), LMAP_EEXIST);
    ASSERT_CONTAINS(d.msg, id);
  }
  ASSERT_EQ(store_writer_put(w, "n01_1", 5, rec, 3, &d), LMAP_EEXIST);
  ASSERT_EQ(store_writer_put_meta(w, "lmap.other", "x", 1, &d), LMAP_EINVAL);
  ASSERT_EQ(store_writer_put_meta(w, "lmap.layout", "{}", 2, &d), LMAP_EINVAL);
  char *huge_meta = calloc(1, (1u << 20) + 1);
  ASSERT_EQ(
      store_writer_put_meta(w, "lmap.meta", huge_meta, (1u << 20) + 1, &d),
      LMAP_ETOOBIG);
  free(huge_meta);
  ASSERT_EQ(store_writer_put_meta(w, "lmap.dict", "", 0, &d), 0);
  ASSERT_EQ(store_writer_count(w), 5003);
  /* Written twice: the last value wins. */
  ASSERT_EQ(store_writer_put_meta(w, "lmap.meta", "{}", 2, &d), 0);
  put_plain_meta(w, 5003);
  ASSERT_EQ(store_writer_commit(w, &d), 0);
  ASSERT_EQ(count_files("ids.lmap.tmp"), 0);
  store *s = NULL;
  ASSERT_EQ(store_open(p, &s, &d), 0);
  ASSERT_EQ(store_get_meta(s)->record_count, 5003);
  walk wk = {0};
  ASSERT_EQ(store_foreach(s, visit, &wk, &d), 0);
  ASSERT_EQ(wk.n, 5003);
  /* Empty dictionary: decoding uses none; these records are not codec
   * records, so the reader reports them corrupt, naming the id. */
  store_reader *r = NULL;
  labelmap m;
  ASSERT_EQ(store_reader_new(s, &r, &d), 0);
  ASSERT_EQ(store_reader_get(r, "n01_1", 5, &m, &d), LMAP_ECORRUPT);
  ASSERT_CONTAINS(d.msg, "record 'n01_1'");
  ASSERT_EQ(store_reader_get(r, big, 255, &m, &d), LMAP_ECORRUPT);
  ASSERT_EQ(store_reader_get(r, "x4999", 5, &m, &d), LMAP_ECORRUPT);
  ASSERT_EQ(store_reader_get(r, "x5000", 5, &m, &d), LMAP_ENOTFOUND);
  store_reader_free(r);
  store_close(s);

  /* An existing path: refused without overwrite, replaced with it. */
  ASSERT_EQ(store_writer_open(p, 0, &w, &d), LMAP_EEXIST);
  ASSERT_CONTAINS(d.msg, p);
  ASSERT(w == NULL);
  ASSERT_EQ(store_writer_open(p, 1, &w, &d), 0);
  ASSERT_EQ(store_writer_put(w, "only", 4, rec, 3, &d), 0);
  ASSERT_EQ(store_writer_commit(w, &d), 0);
  ASSERT(exists(p));
  ASSERT_EQ(count_files("ids.lmap.tmp"), 0);
  ASSERT_EQ(store_open(p, &s, &d), LMAP_EBADSTORE); /* replaced: no meta */

  /* An empty store: no chunk, nothing found, an empty walk. */
  path_of(p, sizeof p, "none.lmap");
  ASSERT_EQ(store_writer_open(p, 0, &w, &d), 0);
  put_plain_meta(w, 0);
  ASSERT_EQ(store_writer_commit(w, &d), 0);
  ASSERT_EQ(store_open(p, &s, &d), 0);
  ASSERT_EQ(store_get_meta(s)->record_count, 0);
  ASSERT_EQ(store_get_meta(s)->chunk_count, 0);
  ASSERT_EQ(store_reader_new(s, &r, &d), 0);
  ASSERT_EQ(store_reader_get(r, "a", 1, &m, &d), LMAP_ENOTFOUND);
  walk none = {0};
  ASSERT_EQ(store_foreach(s, visit, &none, &d), 0);
  ASSERT_EQ(none.n, 0);
  store_reader_free(r);
  store_close(s);

  /* A file that appears at the target while a non-overwriting writer
   * works is not replaced, and the temporary files go away. */
  path_of(p2, sizeof p2, "raced.lmap");
  ASSERT_EQ(store_writer_open(p2, 0, &w, &d), 0);
  ASSERT_EQ(store_writer_put(w, "a", 1, rec, 3, &d), 0);
  write_all(p2, "precious", 8);
  ASSERT_EQ(store_writer_commit(w, &d), LMAP_EEXIST);
  ASSERT_CONTAINS(d.msg, "not replaced");
  ASSERT_EQ(file_size(p2), 8);
  ASSERT_EQ(count_files("raced.lmap.tmp"), 0);

  /* A writer whose directory vanished cannot place its file; nothing is
   * left (the directory is gone with the temporary files). */
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

/* A writer that cannot write: the spill file or the store file hits the
 * file size limit (EFBIG). The writer fails, says so, and leaves no file
 * behind. */
static void test_writer_failures(void) {
  char p[700];
  diag d = {0};
  store_writer *w = NULL;
  struct rlimit old, lim;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  signal(SIGXFSZ, SIG_IGN);
  lim = old;
  lim.rlim_cur = 2u << 20;
  size_t big = (3u << 20) / 2;
  uint8_t *rec = calloc(1, big);

  /* The spill file. */
  path_of(p, sizeof p, "full.lmap");
  ASSERT_EQ(store_writer_open(p, 0, &w, &d), 0);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
  int rc = 0, i;
  for (i = 0; i < 2000 && rc == 0; i++) {
    char id[32];
    snprintf(id, sizeof id, "r%d", i);
    rc = store_writer_put(w, id, strlen(id), rec, 3000, &d);
  }
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);
  ASSERT_EQ(rc, LMAP_EIO);
  ASSERT_CONTAINS(d.msg, "cannot write the spill file");
  ASSERT_EQ(store_writer_put(w, "late", 4, rec, 3, &d), LMAP_EIO);
  ASSERT_CONTAINS(d.msg, "failed earlier");
  ASSERT_EQ(store_writer_put_meta(w, "lmap.dict", "", 0, &d), LMAP_EIO);
  ASSERT_EQ(store_writer_commit(w, &d), LMAP_EIO);
  ASSERT_EQ(count_files("full.lmap"), 0);

  /* The store file, during commit (records above the spill buffer go
   * straight to the spill file, so it is complete before the limit). */
  path_of(p, sizeof p, "full2.lmap");
  ASSERT_EQ(store_writer_open(p, 0, &w, &d), 0);
  for (i = 0; i < 3; i++) {
    char id[32];
    snprintf(id, sizeof id, "r%d", i);
    ASSERT_EQ(store_writer_put(w, id, strlen(id), rec, big, &d), 0);
  }
  put_plain_meta(w, 3);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
  rc = store_writer_commit(w, &d);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);
  ASSERT_EQ(rc, LMAP_EIO);
  ASSERT_CONTAINS(d.msg, p);
  ASSERT_EQ(count_files("full2.lmap"), 0);
  signal(SIGXFSZ, SIG_DFL);
  free(rec);
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
  labelmap want = {.k = 5, .h = 15, .w = 15, .scores = sc, .classes = cl}, got;
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

/* A record damaged inside the file is caught by the record's own
 * checksum; its neighbours in the chunk are still served, and the store
 * still opens and walks. */
static void test_damaged_record(const char *good) {
  char p[700];
  diag d = {0};
  path_of(p, sizeof p, "damaged.lmap");
  size_t len;
  uint8_t *img = read_all(good, &len);
  /* Find image 7's record in the file and flip a byte in its middle. */
  float sc[1125];
  uint32_t cl[1125];
  labelmap m = {.k = 5, .h = 15, .w = 15, .scores = sc, .classes = cl};
  char id[64];
  synth_image(&params, 7, id, &m);
  codec_ctx *c = NULL;
  ASSERT_EQ(codec_ctx_new(&shape, g_dict, g_dict_len, CODEC_LEVEL_FAST, &c, &d),
            0);
  size_t cap = codec_record_bound(c), rl;
  uint8_t *rec = malloc(cap);
  ASSERT_EQ(codec_encode(c, &m, rec, cap, &rl, &d), 0);
  uint8_t *hit = find_bytes(img, len, rec, rl);
  ASSERT(hit != NULL);
  hit[rl / 2] ^= 0x10;
  write_all(p, img, len);
  store *s = NULL;
  store_reader *r = NULL;
  open_damaged(p, &s);
  ASSERT_EQ(store_reader_new(s, &r, &d), 0);
  labelmap got;
  ASSERT_EQ(store_reader_get(r, id, strlen(id), &got, &d), LMAP_ECORRUPT);
  ASSERT_CONTAINS(d.msg, id);
  synth_image(&params, 8, id, &m);
  ASSERT_EQ(store_reader_get(r, id, strlen(id), &got, &d), 0);
  walk wk = {0};
  ASSERT_EQ(store_foreach(s, visit, &wk, &d), 0); /* the walk decodes not */
  store_reader_free(r);
  store_close(s);
  codec_ctx_free(c);
  free(rec);
  free(img);
}

int main(void) {
  make_dirs();
  g_dict = train(&g_dict_len);
  test_chunk_parser();
  char good[700];
  path_of(good, sizeof good, "good.lmap");
  test_write_read(good, 5000, 0);
  char sorted[700];
  path_of(sorted, sizeof sorted, "sorted.lmap");
  test_write_read(sorted, 3001, 1);
  test_threads(sorted, 3001);
  test_damaged_chunk(good);
  test_refusals(good);
  test_raw_records();
  test_writer();
  test_writer_failures();
  test_damaged_record(good);
  free(g_dict);
  TEST_DONE();
}
