/*
 * build: source -> workers -> writer pipeline that makes a store (build.h).
 *
 * Threads: the caller's thread runs the source and the progress line; the
 * workers load, validate, measure and encode; the writer thread owns the
 * store_writer (an LMDB write transaction belongs to one thread). Two
 * bounded queues connect them, so memory stays flat whatever the input size.
 *
 * Dictionary: until DICT_SAMPLES records have arrived, workers send the
 * transformed but uncompressed body; the writer trains the dictionary on
 * that backlog, compresses it, and publishes the dictionary, after which
 * workers compress on their own. Invariant: every record in the store is
 * compressed with the one dictionary stored in "lmap.dict".
 */
#include "build.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lmap/version.h"
#include "pool/pool.h"
#include "store/store.h"

#define DICT_SAMPLES 2000
#define DICT_MAX_BYTES (64 * 1024)
#define QUEUE_DEPTH 16 /* batches */
#define SCORE_SAMPLES_PER_RECORD 8
#define SCORE_RESERVOIR (1u << 20)
/* The encoding error is measured on the first ERROR_FIRST items and on one
 * id in ERROR_ONE_IN (by hash), so the sample is the same on every run and
 * grows with the store at a bounded cost per record. */
#define ERROR_FIRST 64
#define ERROR_ONE_IN 256
#define ERROR_BOXES 16 /* random boxes per measured record */
#define MAX_WORKERS 64
/* At most QUEUE_DEPTH + MAX_WORKERS batches are between producer and
 * writer, so a reorder window of this size never overflows. */
#define PENDING (QUEUE_DEPTH + MAX_WORKERS + 2)
/* The dictionary backlog is also capped in bytes, for large maps. */
#define DICT_MAX_BACKLOG_BYTES ((size_t)128 << 20)

/* ---- a bounded blocking queue of pointers ---- */

/* Items and results travel in batches: one hand-off per record cost more
 * in futex wake-ups and context switches than the parsing itself. */
#define BATCH 32

typedef struct batch {
  uint64_t index; /* position in the input, in batches */
  uint32_t n;
  void *p[BATCH];
} batch;

typedef struct queue {
  void *slot[QUEUE_DEPTH];
  size_t head, count;
  int closed;
  pthread_mutex_t mu;
  pthread_cond_t not_empty, not_full;
} queue;

static void queue_init(queue *q) {
  memset(q, 0, sizeof *q);
  pthread_mutex_init(&q->mu, NULL);
  pthread_cond_init(&q->not_empty, NULL);
  pthread_cond_init(&q->not_full, NULL);
}

static void queue_destroy(queue *q) {
  pthread_mutex_destroy(&q->mu);
  pthread_cond_destroy(&q->not_empty);
  pthread_cond_destroy(&q->not_full);
}

static void queue_push(queue *q, void *p) {
  pthread_mutex_lock(&q->mu);
  while (q->count == QUEUE_DEPTH)
    pthread_cond_wait(&q->not_full, &q->mu);
  q->slot[(q->head + q->count++) % QUEUE_DEPTH] = p;
  pthread_cond_signal(&q->not_empty);
  pthread_mutex_unlock(&q->mu);
}

/* NULL once the queue is closed and drained. */
static void *queue_pop(queue *q) {
  pthread_mutex_lock(&q->mu);
  while (q->count == 0 && !q->closed)
    pthread_cond_wait(&q->not_empty, &q->mu);
  void *p = NULL;
  if (q->count) {
    p = q->slot[q->head];
    q->head = (q->head + 1) % QUEUE_DEPTH;
    q->count--;
    pthread_cond_signal(&q->not_full);
  }
  pthread_mutex_unlock(&q->mu);
  return p;
}

static void queue_close(queue *q) {
  pthread_mutex_lock(&q->mu);
  q->closed = 1;
  pthread_cond_broadcast(&q->not_empty);
  pthread_mutex_unlock(&q->mu);
}

/* ---- shared state ---- */

/* What a worker hands the writer for one item. */
typedef struct result {
  char id[LABELMAP_MAX_ID_LEN + 1];
  char name[BUILD_MAX_NAME];
  int err;
  diag d;
  int raw;          /* body not yet compressed (dictionary pending) */
  uint32_t k, h, w; /* the map's shape; the writer checks it in order */
  uint8_t *bytes;
  size_t len;
  float score_min, score_max;
  double score_sum;
  uint32_t score_count;
  uint32_t nsamples;
  float samples[SCORE_SAMPLES_PER_RECORD];
  double prob_error; /* < 0 when not measured */
} result;

typedef struct build {
  const build_opts *o;
  const build_source *src;
  int level; /* zstd level of the records' heads */
  queue work, results;
  atomic_int failed; /* stop everything: a fatal error was recorded */
  atomic_ullong written;
  atomic_ullong skipped;

  pthread_mutex_t mu; /* guards the fields below */
  int shape_set;
  codec_shape shape;
  char shape_from[BUILD_MAX_NAME];
  int dict_ready;
  uint8_t *dict;
  size_t dict_len;
  diag fatal; /* the first fatal error */
} build;

static void fail(build *b, const diag *d) {
  pthread_mutex_lock(&b->mu);
  if (!atomic_load(&b->failed)) {
    b->fatal = *d;
    atomic_store(&b->failed, 1);
  }
  pthread_mutex_unlock(&b->mu);
}

/* ---- workers ---- */

typedef struct worker {
  build *b;
  pthread_t thread;
  void *wstate;
  pool_ws *ws;
  codec_ctx *codec;
  float *probs_a, *probs_b;
  float *rounded;
  size_t rounded_cap;
} worker;

/* The codec shape of one map: its own grid, the store's classes and
 * encoding. The writer decides, in input order, which shape the store has. */
static codec_shape map_shape(const build *b, const labelmap *m) {
  return (codec_shape){m->k, m->h, m->w, b->o->num_classes, b->o->encoding};
}

static int shape_mismatch(const build *b, uint32_t k, uint32_t h, uint32_t w,
                          diag *d) {
  return diag_set(d, LMAP_EFORMAT,
                  "tensor shape [2,%u,%u,%u] differs from the store's "
                  "[2,%u,%u,%u] (set by %s)",
                  k, h, w, b->shape.k, b->shape.h, b->shape.w, b->shape_from);
}

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static double unit(uint64_t *s) {
  return (double)(splitmix(s) >> 11) * 0x1p-53;
}

/* Maximum absolute probability difference between pooling the exact map
 * and pooling it as the encoding stores it, over random boxes. */
static double encoding_error(worker *w, const labelmap *m, uint64_t seed) {
  codec_shape own = map_shape(w->b, m);
  const codec_shape *s = &own;
  size_t n = labelmap_entries(m);
  memcpy(w->rounded, m->scores, n * sizeof *w->rounded);
  labelmap r = *m;
  r.scores = w->rounded;
  codec_round_scores(s, &r);
  uint64_t rng = seed;
  double worst = 0;
  for (int i = 0; i < ERROR_BOXES; i++) {
    double x0 = unit(&rng), x1 = unit(&rng), y0 = unit(&rng), y1 = unit(&rng);
    pool_query q = {{fmin(x0, x1), fmin(y0, y1), fmax(x0, x1), fmax(y0, y1)},
                    POOL_BOX_XYXY,
                    1,
                    false,
                    true};
    if (i == 0) /* the full image, the box every user tries first */
      q.box[0] = q.box[1] = 0, q.box[2] = q.box[3] = 1;
    pool_dense(m, s->num_classes, &q, w->ws, w->probs_a);
    pool_dense(&r, s->num_classes, &q, w->ws, w->probs_b);
    for (uint32_t c = 0; c < s->num_classes; c++)
      worst = fmax(worst, fabs((double)w->probs_a[c] - w->probs_b[c]));
  }
  return worst;
}

static void measure_scores(result *r, const labelmap *m) {
  size_t n = labelmap_entries(m);
  r->score_min = INFINITY;
  r->score_max = -INFINITY;
  r->score_sum = 0;
  for (size_t i = 0; i < n; i++) {
    float v = m->scores[i];
    /* Scores are finite (validated), so plain comparisons suffice. */
    r->score_min = v < r->score_min ? v : r->score_min;
    r->score_max = v > r->score_max ? v : r->score_max;
    r->score_sum += v;
  }
  r->score_count = (uint32_t)n;
  r->nsamples = 0;
  size_t step = n / SCORE_SAMPLES_PER_RECORD + 1;
  for (size_t i = step / 2; i < n && r->nsamples < SCORE_SAMPLES_PER_RECORD;
       i += step)
    r->samples[r->nsamples++] = m->scores[i];
}

/* Returns 1 while the dictionary is pending (send the body raw), 0 once
 * the worker has its codec, or an error. */
static int ensure_codec(worker *w, diag *d) {
  build *b = w->b;
  if (w->codec)
    return 0;
  pthread_mutex_lock(&b->mu);
  int ready = b->dict_ready;
  pthread_mutex_unlock(&b->mu);
  if (!ready)
    return 1;
  /* The shape and dictionary are immutable once ready: read unlocked. */
  return codec_ctx_new(&b->shape, b->dict, b->dict_len, b->level, &w->codec, d);
}

static int encode(worker *w, const labelmap *m, result *r) {
  build *b = w->b;
  int rc = ensure_codec(w, &r->d);
  if (rc < 0)
    return rc;
  if (rc == 0) {
    if (m->k != b->shape.k || m->h != b->shape.h || m->w != b->shape.w)
      return shape_mismatch(b, m->k, m->h, m->w, &r->d);
    size_t cap = codec_record_bound(w->codec);
    r->bytes = malloc(cap);
    if (r->bytes == NULL)
      return diag_set(&r->d, LMAP_ENOMEM, "out of memory");
    return codec_encode(w->codec, m, r->bytes, cap, &r->len, &r->d);
  }
  codec_shape own = map_shape(b, m);
  rc = codec_shape_check(&own, &r->d);
  if (rc)
    return rc;
  r->raw = 1;
  r->len = codec_raw_size(&own);
  r->bytes = malloc(r->len);
  if (r->bytes == NULL)
    return diag_set(&r->d, LMAP_ENOMEM, "out of memory");
  return codec_transform(&own, m, r->bytes, &r->d);
}

/* FNV-1a: a stable hash of the id for choosing the measured sample. */
static uint64_t id_hash(const char *id) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (; *id; id++)
    h = (h ^ (unsigned char)*id) * 0x100000001b3ull;
  return h;
}

static int process(worker *w, const build_item *it, result *r) {
  build *b = w->b;
  labelmap m = {0}; /* the source fills the float form */
  int rc = b->src->load(b->src->ctx, w->wstate, it, &m, &r->d);
  if (rc == 0)
    rc = labelmap_validate(&m, b->o->num_classes, &r->d);
  if (rc)
    return rc;
  r->k = m.k;
  r->h = m.h;
  r->w = m.w;
  measure_scores(r, &m);
  r->prob_error = -1;
  uint64_t h = id_hash(it->id);
  if (it->seq < ERROR_FIRST || h % ERROR_ONE_IN == 0) {
    size_t n = labelmap_entries(&m);
    if (n > w->rounded_cap) {
      free(w->rounded);
      w->rounded = malloc(n * sizeof *w->rounded);
      if (w->rounded == NULL)
        return diag_set(&r->d, LMAP_ENOMEM, "out of memory");
      w->rounded_cap = n;
    }
    r->prob_error = encoding_error(w, &m, h);
  }
  return encode(w, &m, r);
}

/* Errors that say nothing about the input item: they fail the build even
 * under skip_bad, so that no record is ever dropped silently. */
static int is_internal(int err) {
  return err == LMAP_ENOMEM || err == LMAP_EINTERNAL || err == LMAP_EIO;
}

/* Turns one item into a result; NULL (after failing the build) only when
 * out of memory. */
static result *work_one(worker *w, build_item *it) {
  build *b = w->b;
  result *r = calloc(1, sizeof *r);
  if (r == NULL) {
    diag e;
    diag_set(&e, LMAP_ENOMEM, "%s: out of memory", it->name);
    fail(b, &e);
  } else if (!atomic_load(&b->failed)) {
    memcpy(r->name, it->name, sizeof r->name);
    r->err = process(w, it, r);
    memcpy(r->id, it->id, sizeof r->id); /* a source may set it in load() */
    if (r->err) {
      free(r->bytes);
      r->bytes = NULL;
      if (is_internal(r->err)) {
        diag_prefix(&r->d, r->name);
        fail(b, &r->d);
      }
    }
  }
  free(it->blob);
  free(it);
  return r;
}

/* Each batch of items becomes, in place, the batch of their results, so a
 * hand-off never allocates and the writer can restore input order. */
static void *worker_main(void *arg) {
  worker *w = arg;
  batch *bt;
  while ((bt = queue_pop(&w->b->work)) != NULL) {
    for (uint32_t i = 0; i < bt->n; i++)
      bt->p[i] = work_one(w, bt->p[i]);
    queue_push(&w->b->results, bt);
  }
  return NULL;
}

/* ---- writer ---- */

typedef struct writer {
  build *b;
  pthread_t thread;
  store_writer *sw;
  codec_ctx *codec;
  result **backlog;
  size_t nbacklog;
  /* statistics */
  float score_min, score_max;
  double score_sum;
  uint64_t score_count;
  float *reservoir;
  size_t nreservoir;
  uint64_t seen_samples;
  uint64_t rng;
  double prob_error;
  uint64_t error_records;
  uint64_t record_bytes;
  int err;
  diag d;
  /* Batches that arrived ahead of their turn, by index % PENDING. */
  batch *pending[PENDING];
  uint64_t next_batch;
  size_t backlog_bytes;
} writer;

static void add_stats(writer *wr, const result *r);

static int put(writer *wr, result *r) {
  if (r->raw) {
    size_t cap = codec_record_bound(wr->codec);
    uint8_t *rec = malloc(cap);
    size_t len;
    if (rec == NULL)
      return diag_set(&wr->d, LMAP_ENOMEM, "out of memory");
    int rc = codec_compress_raw(wr->codec, r->bytes, rec, cap, &len, &wr->d);
    if (rc) {
      free(rec);
      return rc;
    }
    free(r->bytes);
    r->bytes = rec;
    r->len = len;
    r->raw = 0;
  }
  int rc =
      store_writer_put(wr->sw, r->id, strlen(r->id), r->bytes, r->len, &wr->d);
  if (rc == 0)
    add_stats(wr, r);
  if (rc) {
    diag_prefix(&wr->d, r->name);
    if (rc == LMAP_EEXIST && wr->b->o->skip_bad) {
      fprintf(stderr, "lmap %s: skipped %s\n", wr->b->o->cmd,
              diag_text(&wr->d));
      atomic_fetch_add(&wr->b->skipped, 1);
      return 0;
    }
    return rc;
  }
  wr->record_bytes += r->len;
  atomic_fetch_add(&wr->b->written, 1);
  return 0;
}

/* Trains the dictionary on the backlog (or goes without when there is too
 * little to train on), publishes it to the workers and writes the backlog. */
static int train_and_flush(writer *wr) {
  build *b = wr->b;
  size_t raw = b->shape_set ? codec_raw_size(&b->shape) : 0;
  uint8_t *samples = NULL, *dict = NULL;
  size_t dict_len = 0;
  if (wr->nbacklog > 0) {
    samples = malloc(wr->nbacklog * raw);
    dict = malloc(DICT_MAX_BYTES);
    if (samples == NULL || dict == NULL) {
      free(samples);
      free(dict);
      return diag_set(&wr->d, LMAP_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < wr->nbacklog; i++)
      memcpy(samples + i * raw, wr->backlog[i]->bytes, raw);
    if (codec_train_dict(&b->shape, samples, wr->nbacklog, b->level, dict,
                         DICT_MAX_BYTES, &dict_len, NULL) != 0)
      dict_len = 0; /* too few or too alike: no dictionary */
    free(samples);
  }
  int rc = 0;
  if (b->shape_set) {
    rc = codec_ctx_new(&b->shape, dict, dict_len, b->level, &wr->codec, &wr->d);
    if (rc == 0 && dict_len)
      rc = store_writer_put_meta(wr->sw, "lmap.dict", dict, dict_len, &wr->d);
  }
  pthread_mutex_lock(&b->mu);
  b->dict = dict;
  b->dict_len = dict_len;
  b->dict_ready = 1;
  pthread_mutex_unlock(&b->mu);
  for (size_t i = 0; i < wr->nbacklog; i++) {
    if (rc == 0)
      rc = put(wr, wr->backlog[i]);
    free(wr->backlog[i]->bytes);
    free(wr->backlog[i]);
  }
  wr->nbacklog = 0;
  wr->backlog_bytes = 0;
  return rc;
}

static void add_stats(writer *wr, const result *r) {
  wr->score_min = fminf(wr->score_min, r->score_min);
  wr->score_max = fmaxf(wr->score_max, r->score_max);
  wr->score_sum += r->score_sum;
  wr->score_count += r->score_count;
  for (uint32_t i = 0; i < r->nsamples; i++) {
    /* Reservoir sampling keeps a uniform sample for the percentiles. */
    uint64_t seen = wr->seen_samples++;
    if (wr->nreservoir < SCORE_RESERVOIR) {
      wr->reservoir[wr->nreservoir++] = r->samples[i];
    } else {
      uint64_t j = splitmix(&wr->rng) % (seen + 1);
      if (j < SCORE_RESERVOIR)
        wr->reservoir[j] = r->samples[i];
    }
  }
  if (r->prob_error >= 0) {
    wr->prob_error = fmax(wr->prob_error, r->prob_error);
    wr->error_records++;
  }
}

/* The first good map in input order sets the store's shape. */
static int take_shape(writer *wr, result *r) {
  build *b = wr->b;
  if (!b->shape_set) {
    codec_shape s = {r->k, r->h, r->w, b->o->num_classes, b->o->encoding};
    pthread_mutex_lock(&b->mu);
    b->shape = s;
    b->shape_set = 1;
    snprintf(b->shape_from, sizeof b->shape_from, "%s", r->name);
    pthread_mutex_unlock(&b->mu);
    return 0;
  }
  if (r->k != b->shape.k || r->h != b->shape.h || r->w != b->shape.w)
    return shape_mismatch(b, r->k, r->h, r->w, &r->d);
  return 0;
}

static void write_one(writer *wr, result *r) {
  build *b = wr->b;
  int keep = 0;
  if (r == NULL)
    return;
  if (!atomic_load(&b->failed) && !wr->err && !r->err)
    r->err = take_shape(wr, r);
  if (atomic_load(&b->failed) || wr->err) {
    /* drain */
  } else if (r->err) {
    diag_prefix(&r->d, r->name);
    if (b->o->skip_bad) {
      fprintf(stderr, "%slmap %s: skipped %s\n", b->o->progress ? "\n" : "",
              b->o->cmd, diag_text(&r->d));
      atomic_fetch_add(&b->skipped, 1);
    } else {
      fail(b, &r->d);
    }
  } else {
    if (!b->dict_ready) {
      wr->backlog[wr->nbacklog++] = r;
      wr->backlog_bytes += r->len;
      keep = 1;
      if (wr->nbacklog == DICT_SAMPLES ||
          wr->backlog_bytes >= DICT_MAX_BACKLOG_BYTES)
        wr->err = train_and_flush(wr);
    } else {
      wr->err = put(wr, r);
    }
    if (wr->err)
      fail(b, &wr->d);
  }
  if (!keep) {
    free(r->bytes);
    free(r);
  }
}

static void write_batch(writer *wr, batch *bt) {
  for (uint32_t i = 0; i < bt->n; i++)
    write_one(wr, bt->p[i]);
  free(bt);
}

/* Batches are written in input order, so that which of two duplicates is
 * kept, and every statistic, is the same on every run. */
static void *writer_main(void *arg) {
  writer *wr = arg;
  build *b = wr->b;
  batch *in;
  while ((in = queue_pop(&b->results)) != NULL) {
    wr->pending[in->index % PENDING] = in;
    batch *bt;
    while ((bt = wr->pending[wr->next_batch % PENDING]) != NULL &&
           bt->index == wr->next_batch) {
      wr->pending[wr->next_batch % PENDING] = NULL;
      wr->next_batch++;
      write_batch(wr, bt);
    }
  }
  /* Only a failed build can leave gaps; free what is left. */
  for (size_t i = 0; i < PENDING; i++)
    if (wr->pending[i])
      write_batch(wr, wr->pending[i]);
  if (!wr->err && !atomic_load(&b->failed) && !b->dict_ready) {
    wr->err = train_and_flush(wr);
    if (wr->err)
      fail(b, &wr->d);
  }
  for (size_t i = 0; i < wr->nbacklog; i++) {
    free(wr->backlog[i]->bytes);
    free(wr->backlog[i]);
  }
  wr->nbacklog = 0;
  return NULL;
}

/* ---- metadata ---- */

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

static double percentile(const float *sorted, size_t n, double p) {
  if (n == 0)
    return 0;
  size_t i = (size_t)(p * (double)(n - 1) + 0.5);
  return sorted[i];
}

/* A JSON string of `s`; bytes that are not valid UTF-8 (a path in another
 * encoding) become '?', so an odd path never fails the import at its end. */
static json_t *utf8_string(const char *s) {
  json_t *j = json_string(s);
  if (j != NULL)
    return j;
  char *copy = strdup(s);
  if (copy == NULL)
    return NULL;
  for (char *p = copy; *p; p++)
    if ((unsigned char)*p >= 0x80)
      *p = '?';
  j = json_string(copy);
  free(copy);
  return j;
}

static json_t *meta_json(const build *b, writer *wr, uint64_t records) {
  const build_opts *o = b->o;
  char created[32];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tm);
  qsort(wr->reservoir, wr->nreservoir, sizeof *wr->reservoir, cmp_float);
  const float *s = wr->reservoir;
  size_t n = wr->nreservoir;
  json_t *stats =
      json_pack("{s:f, s:f, s:f, s:f, s:f, s:f, s:I}", "min",
                (double)wr->score_min, "max", (double)wr->score_max, "mean",
                wr->score_count ? wr->score_sum / (double)wr->score_count : 0.0,
                "p01", percentile(s, n, 0.01), "p50", percentile(s, n, 0.5),
                "p99", percentile(s, n, 0.99), "sampled", (json_int_t)n);
  /* The keys a reader needs are the store's; these say how it was made. */
  json_t *doc =
      store_meta_document(&b->shape, records, o->classes_json != NULL);
  json_t *provenance = json_pack(
      "{s:s, s:o, s:o, s:s, s:s, s:o, s:f, s:{s:I, s:i}, s:f, s:I, s:i}",
      "extent", o->extent ? o->extent : "full", "source",
      utf8_string(o->source_desc ? o->source_desc : ""), "annotator",
      utf8_string(o->annotator ? o->annotator : ""), "build_tool",
      "lmap " LMAP_VERSION_STRING, "created", created, "score_stats", stats,
      "encoding_max_prob_error", wr->prob_error, "encoding_error_sample",
      "records", (json_int_t)wr->error_records, "boxes", ERROR_BOXES,
      "bytes_per_record",
      records ? (double)wr->record_bytes / (double)records : 0.0,
      "dictionary_bytes", (json_int_t)b->dict_len, "zstd_level", b->level);
  if (doc == NULL || provenance == NULL ||
      json_object_update(doc, provenance) != 0) {
    json_decref(doc);
    doc = NULL;
  }
  json_decref(provenance);
  return doc;
}

static int finish_meta(build *b, writer *wr, diag *d) {
  uint64_t records = store_writer_count(wr->sw);
  json_t *meta = meta_json(b, wr, records);
  if (meta == NULL)
    return diag_set(d, LMAP_ENOMEM, "cannot build the metadata document");
  char *text = json_dumps(meta, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
  json_decref(meta);
  if (text == NULL)
    return diag_set(d, LMAP_ENOMEM, "cannot serialise the metadata");
  int rc = store_writer_put_meta(wr->sw, "lmap.meta", text, strlen(text), d);
  free(text);
  if (rc == 0 && b->o->classes_json)
    rc = store_writer_put_meta(wr->sw, "lmap.classes", b->o->classes_json,
                               strlen(b->o->classes_json), d);
  return rc;
}

/* ---- the run ---- */

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void show_progress(const build *b, double t0, int final) {
  double el = now_seconds() - t0;
  unsigned long long done = atomic_load(&b->written);
  double rate = el > 0 ? (double)done / el : 0;
  double frac = b->src->progress ? b->src->progress(b->src->ctx) : -1;
  char eta[32] = "";
  if (!final && frac > 0.01 && frac < 1)
    snprintf(eta, sizeof eta, ", ETA %.0fs", el / frac - el);
  fprintf(stderr, "\rlmap %s: %llu records, %.0f/s%s   %s", b->o->cmd, done,
          rate, eta, final ? "\n" : "");
}

static int worker_setup(build *b, worker *w) {
  w->b = b;
  w->wstate = b->src->worker_new ? b->src->worker_new(b->src->ctx) : NULL;
  w->ws = pool_ws_new(b->o->num_classes);
  w->probs_a = malloc(sizeof(float) * b->o->num_classes);
  w->probs_b = malloc(sizeof(float) * b->o->num_classes);
  if ((b->src->worker_new && !w->wstate) || !w->ws || !w->probs_a ||
      !w->probs_b)
    return LMAP_ENOMEM;
  return 0;
}

static void worker_teardown(build *b, worker *w) {
  if (w->wstate && b->src->worker_free)
    b->src->worker_free(w->wstate);
  pool_ws_free(w->ws);
  codec_ctx_free(w->codec);
  free(w->probs_a);
  free(w->probs_b);
  free(w->rounded);
}

int build_run(const build_opts *o, const build_source *src, build_stats *st,
              diag *d) {
  build b = {
      .o = o, .src = src, .level = o->level ? o->level : CODEC_LEVEL_DEFAULT};
  writer wr = {
      .b = &b, .score_min = INFINITY, .score_max = -INFINITY, .rng = 42};
  worker workers[MAX_WORKERS];
  int nworkers =
      o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (nworkers < 1)
    nworkers = 1;
  if (nworkers > MAX_WORKERS)
    nworkers = MAX_WORKERS;
  memset(workers, 0, sizeof workers);
  memset(st, 0, sizeof *st);
  queue_init(&b.work);
  queue_init(&b.results);
  pthread_mutex_init(&b.mu, NULL);

  double t0 = now_seconds();
  int rc = codec_level_check(b.level, d);
  if (rc == 0)
    rc = store_writer_open(o->out, o->overwrite, &wr.sw, d);
  if (rc)
    goto out;
  wr.backlog = malloc(DICT_SAMPLES * sizeof *wr.backlog);
  wr.reservoir = malloc(SCORE_RESERVOIR * sizeof *wr.reservoir);
  if (!wr.backlog || !wr.reservoir) {
    rc = diag_set(d, LMAP_ENOMEM, "out of memory");
    goto out;
  }
  int started = 0;
  for (; started < nworkers; started++) {
    if (worker_setup(&b, &workers[started]) != 0 ||
        pthread_create(&workers[started].thread, NULL, worker_main,
                       &workers[started]) != 0) {
      worker_teardown(&b, &workers[started]);
      break;
    }
  }
  if (started == 0 || pthread_create(&wr.thread, NULL, writer_main, &wr)) {
    rc = diag_set(d, LMAP_ENOMEM, "cannot start the build threads");
    queue_close(&b.work);
    for (int i = 0; i < started; i++) {
      pthread_join(workers[i].thread, NULL);
      worker_teardown(&b, &workers[i]);
    }
    goto out;
  }

  /* The producer: this thread. */
  double last = t0;
  batch *out = NULL;
  for (uint64_t n = 0; !atomic_load(&b.failed); n++) {
    build_item *it = calloc(1, sizeof *it);
    if (out == NULL)
      out = calloc(1, sizeof *out);
    if (it == NULL || out == NULL) {
      free(it);
      diag e;
      diag_set(&e, LMAP_ENOMEM, "out of memory");
      fail(&b, &e);
      break;
    }
    diag e;
    diag_clear(&e);
    int more = src->next(src->ctx, it, &e);
    if (more <= 0) {
      free(it->blob);
      free(it);
      if (more < 0)
        fail(&b, &e);
      break;
    }
    st->input_bytes += it->len;
    it->seq = n;
    out->index = n / BATCH;
    out->p[out->n++] = it;
    if (out->n == BATCH) {
      queue_push(&b.work, out);
      out = NULL;
    }
    if (o->progress && (n & 255) == 0 && now_seconds() - last > 0.5) {
      last = now_seconds();
      show_progress(&b, t0, 0);
    }
  }
  if (out && out->n)
    queue_push(&b.work, out); /* workers drop it if the build failed */
  else
    free(out);
  queue_close(&b.work);
  for (int i = 0; i < started; i++)
    pthread_join(workers[i].thread, NULL);
  queue_close(&b.results);
  pthread_join(wr.thread, NULL);
  for (int i = 0; i < started; i++)
    worker_teardown(&b, &workers[i]);

  if (atomic_load(&b.failed)) {
    *d = b.fatal;
    rc = b.fatal.code ? b.fatal.code : LMAP_EINTERNAL;
    goto out;
  }
  if (store_writer_count(wr.sw) == 0) {
    rc = diag_set(d, LMAP_EFORMAT, "%s: no label map was imported%s",
                  o->input ? o->input : o->cmd,
                  atomic_load(&b.skipped) ? " (every input was bad)"
                                          : " (the input holds none)");
    goto out;
  }
  rc = finish_meta(&b, &wr, d);
  if (rc)
    goto out;
  st->records = store_writer_count(wr.sw);
  st->store_bytes = wr.record_bytes;
  rc = store_writer_commit(wr.sw, d);
  wr.sw = NULL;
  if (rc)
    goto out;
  if (o->progress)
    show_progress(&b, t0, 1);

out:
  store_writer_abort(wr.sw);
  st->skipped = atomic_load(&b.skipped);
  st->seconds = now_seconds() - t0;
  st->max_prob_error = wr.prob_error;
  codec_ctx_free(wr.codec);
  free(wr.backlog);
  free(wr.reservoir);
  free(b.dict);
  queue_destroy(&b.work);
  queue_destroy(&b.results);
  pthread_mutex_destroy(&b.mu);
  return rc;
}
