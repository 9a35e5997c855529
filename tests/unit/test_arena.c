/*
 * Unit tests for the resident arena (server/store/arena.c) on real store
 * files under $LMAP_TEST_TMP (or /tmp/arena), against the store's own
 * reader as the reference:
 * - every record of f16 and f32 stores, with 16- and 32-bit classes, reads
 *   back from the arena entry for entry as store_reader_get decodes it, and
 *   pools to bit-identical answers (sparse and dense, G = 1 and 3, both box
 *   formats): the compact form changes nothing a client can see;
 * - ids not in the store (prefixes, extensions, neighbours) are not found;
 *   an empty store gives an empty arena;
 * - 1 and 4 decoding threads build the same arena; progress counts every
 *   record; a cancelled build fails with LMAP_EUNAVAILABLE;
 * - an arena larger than the address space allows (RLIMIT_AS, in a child
 *   process) is refused with LMAP_ENOMEM naming the need and the bound;
 * - f16_finite_to_f32 equals f16_to_f32 on every finite binary16 value,
 *   and f16_exact_from_f32 takes each back to its bits.
 */
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/f16.h"
#include "pool/pool.h"
#include "store/arena.h"
#include "store/codec.h"
#include "store/store.h"
#include "test.h"

static char dir[512];
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static double unit(void) {
  return (double)(rnd() >> 11) / 9007199254740992.0;
}

static void make_dirs(void) {
  const char *base = getenv("LMAP_TEST_TMP");
  char cmd[1200];
  snprintf(dir, sizeof dir, "%s/test_arena",
           base && base[0] ? base : "/tmp/arena");
  snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", dir, dir);
  ASSERT_EQ(system(cmd), 0);
}

static void id_of(uint64_t i, char id[32]) {
  snprintf(id, 32, "img_%06llu", (unsigned long long)(i * 7));
}

/* A random map of shape `s`: distinct classes per cell, scores in
 * [-8, 24). */
static void random_map(const codec_shape *s, labelmap *m) {
  size_t cells = (size_t)s->h * s->w;
  for (size_t c = 0; c < cells; c++)
    for (uint32_t k = 0; k < s->k; k++) {
      size_t i = c * s->k + k;
      uint32_t cls;
      int again;
      do {
        cls = (uint32_t)(rnd() % s->num_classes);
        again = 0;
        for (uint32_t j = 0; j < k; j++)
          again |= m->classes[c * s->k + j] == cls;
      } while (again);
      m->classes[i] = cls;
      m->scores[i] = (float)(unit() * 32 - 8);
    }
}

/* Writes `count` random maps of shape `s` to dir/name (no dictionary). */
static void write_store(const char *path, const codec_shape *s,
                        uint64_t count) {
  diag d = {0};
  store_writer *w = NULL;
  codec_ctx *c = NULL;
  ASSERT_EQ(store_writer_open(path, 1, &w, &d), 0);
  ASSERT_EQ(codec_ctx_new(s, NULL, 0, CODEC_LEVEL_FAST, &c, &d), 0);
  size_t n = (size_t)s->k * s->h * s->w, cap = codec_record_bound(c), len;
  uint8_t *rec = malloc(cap);
  labelmap m = {.k = s->k,
                .h = s->h,
                .w = s->w,
                .scores = malloc(n * sizeof(float)),
                .classes = malloc(n * sizeof(uint32_t))};
  for (uint64_t i = 0; i < count; i++) {
    char id[32];
    id_of(i, id);
    random_map(s, &m);
    ASSERT_EQ(codec_encode(c, &m, rec, cap, &len, &d), 0);
    ASSERT_EQ(store_writer_put(w, id, strlen(id), rec, len, &d), 0);
  }
  json_t *meta = store_meta_document(s, count, 0);
  char *text = json_dumps(meta, JSON_COMPACT);
  ASSERT_EQ(store_writer_put_meta(w, "lmap.meta", text, strlen(text), &d), 0);
  ASSERT_EQ(store_writer_commit(w, &d), 0);
  free(text);
  json_decref(meta);
  free(m.scores);
  free(m.classes);
  free(rec);
  codec_ctx_free(c);
}

static store *open_store(const char *path) {
  store *s = NULL;
  diag d = {0};
  int rc = store_open(path, &s, &d);
  if (rc != 0)
    fprintf(stderr, "store_open: %s\n", d.msg);
  ASSERT_EQ(rc, 0);
  return s;
}

static arena *build(store *s, unsigned threads, arena_progress *p) {
  arena *a = NULL;
  diag d = {0};
  int rc = arena_build(s, threads, p, &a, &d);
  if (rc != 0)
    fprintf(stderr, "arena_build: %s\n", d.msg);
  ASSERT_EQ(rc, 0);
  return a;
}

static void random_query(pool_query *q) {
  double x0 = unit() * 0.8, y0 = unit() * 0.8;
  double x1 = x0 + 0.05 + unit() * (0.95 - x0);
  double y1 = y0 + 0.05 + unit() * (0.95 - y0);
  q->box_format = rnd() % 4 == 0 ? POOL_BOX_RELABEL : POOL_BOX_XYXY;
  if (q->box_format == POOL_BOX_RELABEL) {
    q->box[0] = y0;
    q->box[1] = x0;
    q->box[2] = (y1 - y0) * 0.9;
    q->box[3] = (x1 - x0) * 0.9;
  } else {
    q->box[0] = x0;
    q->box[1] = y0;
    q->box[2] = x1;
    q->box[3] = y1;
  }
  q->output_size = rnd() % 3 == 0 ? 3 : 1;
  q->flip = rnd() % 2;
  q->softmax = rnd() % 5 != 0;
  ASSERT_EQ(pool_check_query(q, NULL), 0);
}

/* The arena holds exactly what the reader decodes, and pools the same. */
static void check_against_reader(store *s, const arena *a, uint64_t count,
                                 int pool_every) {
  const codec_shape *sh = &store_get_meta(s)->shape;
  store_reader *r = NULL;
  diag d = {0};
  ASSERT_EQ(store_reader_new(s, &r, &d), 0);
  ASSERT_EQ(arena_records(a), count);
  size_t n = (size_t)sh->k * sh->h * sh->w;
  pool_ws *ws = pool_ws_new(sh->num_classes);
  float *dense_a = malloc(9 * sizeof(float) * sh->num_classes);
  float *dense_r = malloc(9 * sizeof(float) * sh->num_classes);
  for (uint64_t i = 0; i < count; i++) {
    char id[32];
    id_of(i, id);
    labelmap want, got;
    ASSERT_EQ(store_reader_get(r, id, strlen(id), &want, &d), 0);
    ASSERT_EQ(arena_find(a, id, strlen(id), &got), 0);
    ASSERT(got.k == want.k && got.h == want.h && got.w == want.w);
    ASSERT_EQ(got.scores16 != NULL, sh->encoding == CODEC_F16);
    ASSERT_EQ(got.classes16 != NULL, sh->num_classes <= 65536);
    for (size_t e = 0; e < n; e++) {
      float gs = labelmap_score(&got, e), ws_ = want.scores[e];
      ASSERT(memcmp(&gs, &ws_, sizeof gs) == 0);
      ASSERT_EQ(labelmap_class(&got, e), want.classes[e]);
    }
    if (i % (uint64_t)pool_every != 0)
      continue;
    pool_query q;
    random_query(&q);
    size_t out = (size_t)q.output_size * q.output_size * sh->num_classes;
    ASSERT_EQ(pool_dense(&got, sh->num_classes, &q, ws, dense_a), 0);
    /* `want` is the reader's buffer: pool it after the arena's. */
    ASSERT_EQ(pool_dense(&want, sh->num_classes, &q, ws, dense_r), 0);
    ASSERT(memcmp(dense_a, dense_r, out * sizeof(float)) == 0);
    pool_cell ca, cr;
    ASSERT_EQ(pool_cell_sparse(&got, sh->num_classes, &q, 0, ws, &ca), 0);
    uint32_t na = ca.n;
    uint32_t *cls = malloc((na + 1) * sizeof *cls);
    float *val = malloc((na + 1) * sizeof *val);
    memcpy(cls, ca.classes, na * sizeof *cls);
    memcpy(val, ca.values, na * sizeof *val);
    ASSERT_EQ(pool_cell_sparse(&want, sh->num_classes, &q, 0, ws, &cr), 0);
    ASSERT_EQ(cr.n, na);
    ASSERT(memcmp(cls, cr.classes, na * sizeof *cls) == 0);
    ASSERT(memcmp(val, cr.values, na * sizeof *val) == 0);
    ASSERT(ca.rest == cr.rest);
    free(cls);
    free(val);
  }
  /* Ids near the stored ones: prefixes, extensions, neighbours. */
  const char *absent[] = {"img_",       "img_00000",   "img_0000000",
                          "img_000001", "img_000000x", "IMG_000000",
                          "",           "zzz"};
  for (size_t i = 0; i < sizeof absent / sizeof absent[0]; i++) {
    labelmap m;
    ASSERT_EQ(arena_find(a, absent[i], strlen(absent[i]), &m), LMAP_ENOTFOUND);
  }
  free(dense_a);
  free(dense_r);
  pool_ws_free(ws);
  store_reader_free(r);
}

static void test_shape(const char *name, codec_shape sh, uint64_t count) {
  char path[600];
  snprintf(path, sizeof path, "%s/%s.lmap", dir, name);
  write_store(path, &sh, count);
  store *s = open_store(path);
  arena_progress p = {0};
  arena *a = build(s, 2, &p);
  ASSERT_EQ(atomic_load(&p.done), count);
  ASSERT_EQ(atomic_load(&p.total), count);
  ASSERT(arena_bytes(a) >=
         count *
             labelmap_entries(&(labelmap){.k = sh.k, .h = sh.h, .w = sh.w}) *
             4);
  ASSERT(arena_build_seconds(a) >= 0);
  ASSERT_EQ(arena_build_threads(a), 2);
  check_against_reader(s, a, count, 7);
  arena_free(a);
  store_close(s);
  printf("  %s: %llu records\n", name, (unsigned long long)count);
}

static void test_threads_and_cancel(void) {
  char path[600];
  snprintf(path, sizeof path, "%s/threads.lmap", dir);
  codec_shape sh = {5, 15, 15, 1000, CODEC_F16};
  write_store(path, &sh, 3000);
  store *s = open_store(path);
  arena *one = build(s, 1, NULL), *four = build(s, 4, NULL),
        *any = build(s, 0, NULL);
  ASSERT_EQ(arena_build_threads(one), 1);
  ASSERT_EQ(arena_build_threads(four), 4);
  ASSERT(arena_build_threads(any) >= 1);
  check_against_reader(s, four, 3000, 50);
  for (uint64_t i = 0; i < 3000; i += 13) {
    char id[32];
    id_of(i, id);
    labelmap a, b;
    ASSERT_EQ(arena_find(one, id, strlen(id), &a), 0);
    ASSERT_EQ(arena_find(four, id, strlen(id), &b), 0);
    ASSERT(memcmp(a.scores16, b.scores16, 1125 * 2) == 0);
    ASSERT(memcmp(a.classes16, b.classes16, 1125 * 2) == 0);
  }
  arena_free(one);
  arena_free(four);
  arena_free(any);

  arena_progress p = {0};
  atomic_store(&p.cancel, 1);
  arena *a = NULL;
  diag d = {0};
  ASSERT_EQ(arena_build(s, 2, &p, &a, &d), LMAP_EUNAVAILABLE);
  ASSERT(a == NULL);
  ASSERT(strstr(d.msg, "stopped") != NULL);
  store_close(s);
}

static void test_empty(void) {
  char path[600];
  snprintf(path, sizeof path, "%s/empty.lmap", dir);
  codec_shape sh = {5, 15, 15, 1000, CODEC_F16};
  write_store(path, &sh, 0);
  store *s = open_store(path);
  arena *a = build(s, 2, NULL);
  labelmap m;
  ASSERT_EQ(arena_records(a), 0);
  ASSERT_EQ(arena_find(a, "img_000000", 10, &m), LMAP_ENOTFOUND);
  arena_free(a);
  store_close(s);
}

/* The process's address space now (VmSize), in bytes. */
static uint64_t vm_size(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  unsigned long long kb = 0;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "VmSize: %llu", &kb) == 1)
      break;
  if (f)
    fclose(f);
  return kb * 1024;
}

/* In a child: an address space 32 MB above what it uses cannot hold an
 * arena of 1,000 64x64 maps at top-5 (about 82 MB), and the refusal says
 * why. */
static void test_memory_refused(void) {
  char path[600];
  snprintf(path, sizeof path, "%s/big.lmap", dir);
  codec_shape sh = {5, 64, 64, 1000, CODEC_F16};
  write_store(path, &sh, 1000);
  fflush(NULL);
  pid_t pid = fork();
  ASSERT(pid >= 0);
  if (pid == 0) {
    store *s = open_store(path);
    uint64_t limit = vm_size() + (32u << 20);
    struct rlimit rl = {limit, limit};
    ASSERT_EQ(setrlimit(RLIMIT_AS, &rl), 0);
    arena *a = NULL;
    diag d = {0};
    int rc = arena_build(s, 2, NULL, &a, &d);
    fprintf(stderr, "  refused: %s\n", d.msg);
    ASSERT_EQ(rc, LMAP_ENOMEM);
    ASSERT(a == NULL);
    ASSERT(strstr(d.msg, "resident arena needs") != NULL);
    ASSERT(strstr(d.msg, "RLIMIT_AS") != NULL);
    ASSERT_EQ(arena_check_memory(s, &d), LMAP_ENOMEM);
    store_close(s);
    _exit(0);
  }
  int status;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void test_f16_fast(void) {
  for (uint32_t h = 0; h < 65536; h++) {
    if (((h >> 10) & 0x1f) == 0x1f)
      continue; /* inf and NaN: never in an arena */
    float a = f16_finite_to_f32((uint16_t)h), b = f16_to_f32((uint16_t)h);
    ASSERT(memcmp(&a, &b, sizeof a) == 0);
    ASSERT_EQ(f16_exact_from_f32(b), h);
  }
}

int main(void) {
  make_dirs();
  test_f16_fast();
  test_shape("f16_u16", (codec_shape){5, 15, 15, 1000, CODEC_F16}, 1500);
  test_shape("f32_u16", (codec_shape){5, 15, 15, 1000, CODEC_F32}, 700);
  test_shape("f16_u32", (codec_shape){3, 7, 9, 70000, CODEC_F16}, 600);
  test_shape("f32_u32_odd", (codec_shape){3, 5, 3, 100000, CODEC_F32}, 401);
  test_threads_and_cancel();
  test_empty();
  test_memory_refused();
  printf("test_arena: %d checks passed\n", test__checks);
  return 0;
}
