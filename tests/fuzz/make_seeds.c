/*
 * make_seeds: writes the seed corpora of the fuzz targets from the real
 * writers: stores from the build pipeline, chunks and records read back
 * out of them, requests and the answers lmapd's API gives to them, tars of
 * the .pt fixtures. Run by hand from the repository root after a change of
 * a format, then commit tests/fuzz/corpus:
 *
 *   build/tests/fuzz/fuzz_make_seeds tests/fuzz/corpus
 *
 * The .pt reader's seeds are tests/vectors/pt itself (not copied).
 * Deterministic: the same tree writes the same bytes.
 */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "daemon/api.h"
#include "fuzz.h"
#include "import/synth.h"
#include "store/chunk.h"

static const char *root;

static void put(const char *target, const char *name, const void *data,
                size_t len) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", root, target);
  if (mkdir(path, 0755) != 0 && errno != EEXIST) {
    perror(path);
    exit(1);
  }
  snprintf(path, sizeof path, "%s/%s/%s", root, target, name);
  fuzz_write_file(path, data, len);
}

/* `head` bytes, then `len` bytes. */
static void put2(const char *target, const char *name, const void *head,
                 size_t hl, const void *data, size_t len) {
  uint8_t *b = malloc(hl + len + 1);
  memcpy(b, head, hl);
  memcpy(b + hl, data, len);
  put(target, name, b, hl + len);
  free(b);
}

static uint8_t *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    perror(path);
    exit(1);
  }
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = malloc((size_t)n + 1);
  if (fread(b, 1, (size_t)n, f) != (size_t)n)
    exit(1);
  fclose(f);
  *len = (size_t)n;
  return b;
}

/* ---- chunks and records, read back from a store with LMDB itself ---- */

typedef void (*value_fn)(const char *key, size_t klen, const uint8_t *v,
                         size_t len, void *ctx);

static void each_chunk(const char *path, value_fn fn, void *ctx) {
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi dbi;
  MDB_cursor *cur;
  MDB_val k, v;
  if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 2) ||
      mdb_env_open(env, path, MDB_RDONLY | MDB_NOSUBDIR | MDB_NOLOCK, 0444) ||
      mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) ||
      mdb_dbi_open(txn, "maps", 0, &dbi) || mdb_cursor_open(txn, dbi, &cur)) {
    fprintf(stderr, "%s: cannot read with LMDB\n", path);
    exit(1);
  }
  for (int op = MDB_FIRST; mdb_cursor_get(cur, &k, &v, op) == 0; op = MDB_NEXT)
    fn(k.mv_data, k.mv_size, v.mv_data, v.mv_size, ctx);
  mdb_cursor_close(cur);
  mdb_txn_abort(txn);
  mdb_env_close(env);
}

static void chunk_seed(const char *key, size_t klen, const uint8_t *v,
                       size_t len, void *ctx) {
  (void)key;
  (void)klen;
  int *n = ctx;
  char name[64];
  snprintf(name, sizeof name, "chunk-%d", (*n)++);
  put("chunk", name, v, len);
}

typedef struct recs {
  uint8_t selector;
  int taken;
} recs;

/* Records 0 and 1 of the first chunk, with the codec target's selector. */
static void record_seeds(const char *key, size_t klen, const uint8_t *v,
                         size_t len, void *ctx) {
  (void)key;
  (void)klen;
  recs *r = ctx;
  store_chunk c;
  if (r->taken)
    return;
  if (store_chunk_parse(v, len, &c, NULL) != 0)
    exit(1);
  for (uint32_t i = 0; i < 2 && i < c.n; i++) {
    char id[LABELMAP_MAX_ID_LEN], name[64];
    size_t il, rl;
    const uint8_t *rec;
    if (store_chunk_entry(&c, i, id, &il, &rec, &rl, NULL) != 0)
      exit(1);
    snprintf(name, sizeof name, "record-%s-%u", r->selector & 1 ? "f32" : "f16",
             i);
    put2("codec", name, &r->selector, 1, rec, rl);
  }
  r->taken = 1;
}

/* Transformed bodies of synthetic maps (the untransform half). */
static void body_seeds(const fuzz_store_params *p, uint8_t selector) {
  codec_shape s = {p->k, p->h, p->w, p->num_classes, p->encoding};
  synth_params sp = {p->num_classes, p->h, p->w, p->k, 7};
  size_t n = (size_t)p->k * p->h * p->w, raw = codec_raw_size(&s);
  float *sc = malloc(n * sizeof *sc);
  uint32_t *cl = malloc(n * sizeof *cl);
  uint8_t *body = malloc(raw);
  labelmap m = {.k = p->k, .h = p->h, .w = p->w, .scores = sc, .classes = cl};
  char id[64], name[64];
  for (uint64_t i = 0; i < 2; i++) {
    synth_image(&sp, i, id, &m);
    if (codec_transform(&s, &m, body, NULL) != 0)
      exit(1);
    snprintf(name, sizeof name, "body-%s-%llu", selector & 1 ? "f32" : "f16",
             (unsigned long long)i);
    put2("codec", name, &selector, 1, body, raw);
  }
  free(sc);
  free(cl);
  free(body);
}

/* ---- requests, and lmapd's answers to them ---- */

typedef struct req {
  const char *name;
  const char *text; /* the fuzz_api format; %s is image 3's id */
} req;

static const req requests[] = {
    {"livez", "0\nGET\n/livez\n\n\n"},
    {"readyz", "0\nHEAD\n/readyz\n\n\n"},
    {"metrics", "0\nGET\n/metrics\n\n\n"},
    {"info", "0\nGET\n/v1/info\n\n\n"},
    {"classes", "0\nGET\n/v1/classes\n\n\n"},
    {"get", "0\nGET\n/v1/labels/%s?box=0,0,1,1\n\n\n"},
    {"get-options",
     "0\nGET\n/v1/labels/%s?box=0.1,0.2,0.5,0.9&output_size=3&format=sparse"
     "&box_format=xyxy&flip=true&softmax=false\n\n\n"},
    {"get-relabel",
     "0\nGET\n/v1/labels/%s?box=0.1%%2c0.2,0.3,0.5&box_format=relabel&flip=0"
     "&softmax=1&format=dense&output_size=1\n\n\n"},
    {"get-missing", "0\nGET\n/v1/labels/n0_0?box=0,0,1,1\n\n\n"},
    {"get-nobox", "0\nGET\n/v1/labels/%s?output_size=2\n\n\n"},
    {"map", "0\nGET\n/v1/maps/%s\n\n\n"},
    {"map-npy", "0\nGET\n/v1/maps/%s\napplication/x-npy\n\n"},
    {"post",
     "0\nPOST\n/v1/labels\n\n\n{\"queries\": [{\"id\": \"%s\", \"box\": [0, "
     "0, 1, 1]}, {\"id\": \"%s\", \"box\": [0.25, 0.5, 0.75, 1.0], \"flip\": "
     "true}], \"output_size\": 2, \"format\": \"sparse\", \"box_format\": "
     "\"xyxy\", \"softmax\": false}"},
    {"post-dense",
     "0\nPOST\n/v1/labels\n\n\n{\"queries\":[{\"id\":\"%s\",\"box\":[0.1,0.1,"
     "0.6,0.7],\"flip\":false}],\"output_size\":1,\"format\":\"dense\","
     "\"box_format\":\"relabel\",\"softmax\":true}"},
    {"post-npy",
     "0\nPOST\n/v1/labels\napplication/x-npy\n\n{\"queries\":[{\"id\":\"%s\","
     "\"box\":[0,0,1,1]},{\"id\":\"%s\",\"box\":[0,0,0.5,0.5]}],"
     "\"output_size\":2}"},
    {"post-missing",
     "0\nPOST\n/v1/labels\n\n\n{\"queries\":[{\"id\":\"a\",\"box\":[0,0,1,1]},"
     "{\"id\":\"b\",\"box\":[0,0,1,1]}]}"},
    {"post-bad", "0\nPOST\n/v1/labels\n\n\n{\"queries\": [1, {\"id\": 2}], "
                 "\"extra\": null}"},
    {"post-notjson", "0\nPOST\n/v1/labels\n\n\n{\"queries\": [\n"},
    {"put", "0\nPUT\n/v1/labels\n\n\n"},
    {"route", "0\nGET\n/v2/nothing?x=1\n\n\n"},
    {"token", "1\nGET\n/v1/info\n\nBearer fuzz-token\n"},
    {"token-wrong", "1\nGET\n/v1/labels/%s?box=0,0,1,1\n\nBearer fuzz-tokem\n"},
    {"token-none", "1\nGET\n/v1/maps/%s\n\n\n"},
};

static const char *no_arg(void *ctx, const char *name) {
  (void)ctx;
  (void)name;
  return NULL;
}

static api_response *ask(api_worker *w, const char *text, size_t len,
                         char *url_buf) {
  /* The same decoding as fuzz_api, for the few fields used here. */
  const char *p = strchr(text, '\n') + 1, *e = strchr(p, '\n');
  static char method[16], accept[64], auth[64];
  snprintf(method, sizeof method, "%.*s", (int)(e - p), p);
  p = e + 1;
  e = strchr(p, '\n');
  snprintf(url_buf, 1024, "%.*s", (int)(e - p), p);
  p = e + 1;
  e = strchr(p, '\n');
  snprintf(accept, sizeof accept, "%.*s", (int)(e - p), p);
  p = e + 1;
  e = strchr(p, '\n');
  snprintf(auth, sizeof auth, "%.*s", (int)(e - p), p);
  p = e + 1;
  static api_request r;
  r = (api_request){.method = method,
                    .path = url_buf,
                    .arg = no_arg,
                    .accept = accept[0] ? accept : NULL,
                    .authorization = auth[0] ? auth : NULL,
                    .body = (const uint8_t *)p,
                    .body_len = len - (size_t)(p - text)};
  return api_handle(w, &r);
}

/* The answers to POSTs, as the client reads them. */
static void answer_seeds(api_worker *w, const char *id) {
  static const struct {
    const char *name, *format, *accept;
    int n, g;
  } posts[] = {{"sparse-1x1", "sparse", "", 1, 1},
               {"sparse-2x2", "sparse", "", 2, 2},
               {"sparse-3x3", "sparse", "", 3, 3},
               {"npy-1x1", "dense", "application/x-npy", 2, 1},
               {"npy-3x2", "dense", "application/x-npy", 3, 2},
               {"bin-1x1", "dense", "application/x-lmap-sparse", 2, 1},
               {"bin-3x2", "dense", "application/x-lmap-sparse", 3, 2},
               {"bin-4x3", "dense", "application/x-lmap-sparse", 4, 3}};
  for (size_t i = 0; i < sizeof posts / sizeof posts[0]; i++) {
    char text[4096], url[1024];
    int at =
        snprintf(text, sizeof text, "0\nPOST\n/v1/labels\n%s\n\n{\"queries\":[",
                 posts[i].accept);
    for (int q = 0; q < posts[i].n; q++)
      at += snprintf(text + at, sizeof text - (size_t)at,
                     "%s{\"id\":\"%s\",\"box\":[0.%d,0,1,1]}", q ? "," : "", id,
                     q);
    at += snprintf(text + at, sizeof text - (size_t)at,
                   "],\"output_size\":%d,\"format\":\"%s\"}", posts[i].g,
                   posts[i].format);
    api_response *r = ask(w, text, (size_t)at, url);
    if (r->status != 200)
      exit(1);
    uint8_t head[3] = {1, (uint8_t)(posts[i].n - 1), (uint8_t)(posts[i].g - 1)};
    if (posts[i].accept[0]) {
      /* wire_npy: bit 0 the 4-d shape; wire_sparse: bit 3 a declared
       * length, bits 4-5 probabilities checked. */
      int npy = strstr(posts[i].accept, "npy") != NULL;
      const char *target = npy ? "wire_npy" : "wire_sparse";
      head[0] = (uint8_t)((posts[i].n - 1) << 1 |
                          (npy ? posts[i].g > 1 : 1 << 3 | 2 << 4));
      head[1] = (uint8_t)(posts[i].g - 1);
      head[2] = 0;
      put2(target, posts[i].name, head, 3, r->body.data, r->body.len);
      head[2] = 6; /* pieces of 7 bytes */
      char name[64];
      snprintf(name, sizeof name, "%s-pieces", posts[i].name);
      put2(target, name, head, 3, r->body.data, r->body.len);
    } else {
      put2("wire_json", posts[i].name, head, 3, r->body.data, r->body.len);
    }
  }
}

static void api_seeds(const char *path, const char *id) {
  store *s;
  api *a;
  diag d;
  diag_clear(&d);
  if (store_open(path, &s, &d) || api_new(s, 16, &a, &d)) {
    fprintf(stderr, "%s\n", diag_text(&d));
    exit(1);
  }
  api_worker *w = api_worker_new(a);
  for (size_t i = 0; i < sizeof requests / sizeof requests[0]; i++) {
    char text[2048], url[1024];
    int n = snprintf(text, sizeof text, requests[i].text, id, id);
    put("api", requests[i].name, text, (size_t)n);
    /* The info answer and the error answers, for the client's readers
     * (these requests have no query string, which `ask` does not pass). */
    if (strchr(text, '?') != NULL || text[0] == '1')
      continue;
    api_response *r = ask(w, text, (size_t)n, url);
    uint8_t head[3] = {0, 0, 0};
    if (strcmp(requests[i].name, "info") == 0) {
      head[0] = 2;
      put2("wire_json", "info", head, 3, r->body.data, r->body.len);
    } else if (r->status >= 400) {
      char name[64];
      snprintf(name, sizeof name, "error-%s", requests[i].name);
      put2("wire_json", name, head, 3, r->body.data, r->body.len);
    }
  }
  answer_seeds(w, id);
  api_worker_free(w);
  api_free(a);
}

/* ---- tars of the .pt fixtures ---- */

typedef struct member {
  const char *name;   /* in the tar */
  const char *source; /* a file of tests/vectors/pt, or NULL */
  int type;           /* AE_IFREG, AE_IFDIR, AE_IFLNK */
  const char *link;
} member;

static void tar_seed(const char *name, int format, int filter, const member *m,
                     size_t n) {
  struct archive *a = archive_write_new();
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", fuzz_tmpdir(), name);
  archive_write_set_format(a, format);
  if (filter)
    archive_write_add_filter(a, filter);
  if (archive_write_open_filename(a, path) != ARCHIVE_OK)
    exit(1);
  for (size_t i = 0; i < n; i++) {
    struct archive_entry *e = archive_entry_new();
    uint8_t *data = NULL;
    size_t len = 0;
    if (m[i].source) {
      char src[512];
      snprintf(src, sizeof src, "tests/vectors/pt/%s", m[i].source);
      data = slurp(src, &len);
    }
    archive_entry_set_pathname(e, m[i].name);
    archive_entry_set_filetype(e, (unsigned)m[i].type);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_mtime(e, 1700000000, 0);
    archive_entry_set_size(e, (la_int64_t)len);
    if (m[i].link)
      archive_entry_set_symlink(e, m[i].link);
    if (archive_write_header(a, e) != ARCHIVE_OK ||
        (len && archive_write_data(a, data, len) != (la_ssize_t)len))
      exit(1);
    archive_entry_free(e);
    free(data);
  }
  archive_write_close(a);
  archive_write_free(a);
  size_t len;
  uint8_t *b = slurp(path, &len);
  put("tar", name, b, len);
  free(b);
}

static void tar_seeds(void) {
  static const member two[] = {
      {"set/", NULL, AE_IFDIR, NULL},
      {"set/n01_1.pt", "legacy_f32_contig_3x7x11.pt", AE_IFREG, NULL},
      {"set/n01_2.pt", "zip_f32_slice_3x7x11.pt", AE_IFREG, NULL}};
  static const member mixed[] = {
      {"README", NULL, AE_IFREG, NULL},
      {"a/n02_7.pt", "legacy_f16_slice_3x7x11.pt", AE_IFREG, NULL},
      {"a/link.pt", NULL, AE_IFLNK, "n02_7.pt"}};
  static const member bad[] = {
      {"n03_1.pt", "bad_class_neg.pt", AE_IFREG, NULL}};
  tar_seed("ustar.tar", ARCHIVE_FORMAT_TAR_USTAR, 0, two, 3);
  tar_seed("pax-gzip.tar.gz", ARCHIVE_FORMAT_TAR_PAX_RESTRICTED,
           ARCHIVE_FILTER_GZIP, two, 3);
  tar_seed("gnu-mixed.tar", ARCHIVE_FORMAT_TAR_GNUTAR, 0, mixed, 3);
  tar_seed("bad-member.tar.zst", ARCHIVE_FORMAT_TAR_USTAR, ARCHIVE_FILTER_ZSTD,
           bad, 1);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s CORPUS_DIR (run from the repository root)\n",
            argv[0]);
    return 2;
  }
  root = argv[1];
  char f16[600], f32[600], small[600], id[64];
  fuzz_make_store(fuzz_path(f16, sizeof f16, "f16.lmap"), &FUZZ_STORE_F16);
  fuzz_make_store(fuzz_path(f32, sizeof f32, "f32.lmap"), &FUZZ_STORE_F32);
  /* The store the open target starts from: one small chunk. */
  fuzz_store_params sp = FUZZ_STORE_F16;
  sp.images = 8;
  fuzz_make_store(fuzz_path(small, sizeof small, "small.lmap"), &sp);
  fuzz_store_id(&FUZZ_STORE_F16, 3, id);

  size_t len;
  uint8_t *b = slurp(small, &len);
  put("store_open", "small.lmap", b, len);
  free(b);

  int n = 0;
  each_chunk(small, chunk_seed, &n);
  /* The example chunk of docs/STORE_FORMAT.md §4.1: two ids, a prefix. */
  static const uint8_t example[32] = {
      0x8f, 0xb3, 0x91, 0xc4, 1,   4,   2,   0,   2,   0,   0,
      0,    5,    0,    0,    0,   1,   0,   3,   0,   'n', '0',
      '1',  '_',  '1',  '2',  '3', 'A', 'B', 'C', 'D', 'E'};
  put("chunk", "spec-example", example, sizeof example);
  recs r16 = {0, 0}, r32 = {1, 0};
  each_chunk(f16, record_seeds, &r16);
  each_chunk(f32, record_seeds, &r32);
  body_seeds(&FUZZ_STORE_F16, 2);
  body_seeds(&FUZZ_STORE_F32, 3);

  api_seeds(f16, id);
  tar_seeds();
  printf("seeds written under %s\n", root);
  return 0;
}
