/*
 * arena: a store decoded into memory (see arena.h).
 *
 * The walk (store_foreach, one thread) copies the ids and keeps a pointer
 * to each record's bytes in the mapping. Those pointers are read after the
 * walk has returned: the store is open read-only with MDB_NOLOCK, so its
 * mapping is fixed for the life of the store and its pages never change
 * under it; a file changed in place meanwhile is caught where it is read,
 * by store_reader_decode's SIGBUS guard and zstd's checksums. The decode
 * threads take blocks of records from a shared counter, so a slow thread
 * never holds the others up; the calling thread builds the hash table
 * meanwhile.
 */
#include "arena.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "core/f16.h"
#include "core/meminfo.h"

#define ARENA_ID_ESTIMATE 32u /* bytes per id in arena_need's estimate */
#define DECODE_BLOCK 256u     /* records a decode thread takes at a time */
#define MAX_THREADS 256u

struct arena {
  uint32_t k, h, w;
  size_t entries; /* k * h * w */
  int scores16, classes16;
  uint64_t n;
  uint8_t *map; /* the records: scores, then classes */
  size_t map_len;
  uint8_t *scores, *classes;
  char *ids;        /* every id, in id order, end to end */
  uint64_t *id_off; /* [n + 1]: id i is ids[id_off[i] .. id_off[i + 1]) */
  /* Open addressing, linear probing, at most half full: a slot holds the
   * high 32 bits of the id's hash and 1 + its index, 0 when empty. */
  uint64_t *slots;
  uint64_t mask;
  uint64_t bytes;
  double seconds, walk_seconds;
  unsigned threads;
};

static size_t score_size(const codec_shape *sh) {
  return sh->encoding == CODEC_F16 ? 2 : 4;
}

static size_t class_size(const codec_shape *sh) {
  return sh->num_classes <= 65536u ? 2 : 4;
}

static uint64_t slot_count(uint64_t n) {
  uint64_t c = 16;
  while (c < 2 * n)
    c <<= 1;
  return c;
}

uint64_t arena_need(const store *s) {
  const store_meta *m = store_get_meta(s);
  const codec_shape *sh = &m->shape;
  uint64_t n = m->record_count;
  uint64_t entries = (uint64_t)sh->k * sh->h * sh->w;
  return n * entries * (score_size(sh) + class_size(sh)) +
         n * (ARENA_ID_ESTIMATE + sizeof(uint64_t)) +
         slot_count(n) * sizeof(uint64_t);
}

/* ---- the walk ---- */

typedef struct walk {
  arena *a;
  const uint8_t **recs; /* [n] each record's bytes in the store's mapping */
  uint32_t *lens;
  uint64_t seen;
  size_t ids_len, ids_cap;
  diag *d;
} walk;

static int visit(void *ctx, const char *id, size_t id_len, const uint8_t *rec,
                 size_t rec_len) {
  walk *w = ctx;
  arena *a = w->a;
  if (w->seen == a->n)
    return diag_set(w->d, LMAP_ECORRUPT,
                    "the store holds more records than the %llu its metadata "
                    "counts",
                    (unsigned long long)a->n);
  if (w->ids_len + id_len > w->ids_cap) {
    size_t cap = w->ids_cap ? w->ids_cap * 2 : 1u << 20;
    while (cap < w->ids_len + id_len)
      cap *= 2;
    char *p = realloc(a->ids, cap);
    if (p == NULL)
      return diag_set(w->d, LMAP_ENOMEM, "out of memory for the arena's ids");
    a->ids = p;
    w->ids_cap = cap;
  }
  memcpy(a->ids + w->ids_len, id, id_len);
  w->ids_len += id_len;
  a->id_off[w->seen + 1] = w->ids_len;
  w->recs[w->seen] = rec;
  w->lens[w->seen] = (uint32_t)rec_len;
  w->seen++;
  return 0;
}

/* ---- decoding ---- */

typedef struct decode_job {
  arena *a;
  store *s;
  const walk *wk;
  arena_progress *progress;
  _Atomic uint64_t next; /* the first record of the next block to take */
  atomic_int failed;
  pthread_mutex_t mu; /* guards err and d */
  int err;
  diag d;
} decode_job;

static void job_fail(decode_job *j, int rc, const diag *d, uint64_t i) {
  pthread_mutex_lock(&j->mu);
  if (j->err == 0) {
    j->err = rc;
    j->d = *d;
    if (i != UINT64_MAX) {
      const arena *a = j->a;
      char pre[300];
      snprintf(pre, sizeof pre, "record '%.*s'",
               (int)(a->id_off[i + 1] - a->id_off[i]), a->ids + a->id_off[i]);
      diag_prefix(&j->d, pre);
    }
  }
  pthread_mutex_unlock(&j->mu);
  atomic_store(&j->failed, 1);
}

/* Copies decoded map `m` into record slot `i`, in the arena's form. */
static void put_record(arena *a, uint64_t i, const labelmap *m) {
  size_t e = a->entries;
  if (a->scores16) {
    uint16_t *dst = (uint16_t *)a->scores + i * e;
    for (size_t x = 0; x < e; x++)
      dst[x] = f16_exact_from_f32(m->scores[x]); /* an f16 store's values */
  } else {
    memcpy((float *)a->scores + i * e, m->scores, e * sizeof(float));
  }
  if (a->classes16) {
    uint16_t *dst = (uint16_t *)a->classes + i * e;
    for (size_t x = 0; x < e; x++)
      dst[x] = (uint16_t)m->classes[x];
  } else {
    memcpy((uint32_t *)a->classes + i * e, m->classes, e * sizeof(uint32_t));
  }
}

static void *decode_thread(void *p) {
  decode_job *j = p;
  arena *a = j->a;
  diag d;
  diag_clear(&d);
  store_reader *r = NULL;
  int rc = store_reader_new(j->s, &r, &d);
  if (rc != 0) {
    job_fail(j, rc, &d, UINT64_MAX);
    return NULL;
  }
  while (!atomic_load(&j->failed)) {
    if (j->progress && atomic_load(&j->progress->cancel)) {
      diag_set(&d, LMAP_EUNAVAILABLE, "the resident arena's build was stopped");
      job_fail(j, LMAP_EUNAVAILABLE, &d, UINT64_MAX);
      break;
    }
    uint64_t first = atomic_fetch_add(&j->next, DECODE_BLOCK);
    if (first >= a->n)
      break;
    uint64_t end = first + DECODE_BLOCK < a->n ? first + DECODE_BLOCK : a->n;
    for (uint64_t i = first; i < end; i++) {
      labelmap m;
      rc = store_reader_decode(r, j->wk->recs[i], j->wk->lens[i], &m, &d);
      if (rc == 0 && (m.k != a->k || m.h != a->h || m.w != a->w))
        rc = diag_set(&d, LMAP_ECORRUPT,
                      "decoded to a %ux%ux%u map, not the "
                      "store's %ux%ux%u",
                      m.k, m.h, m.w, a->k, a->h, a->w);
      if (rc != 0) {
        job_fail(j, rc, &d, i);
        break;
      }
      put_record(a, i, &m);
    }
    if (j->progress)
      atomic_fetch_add(&j->progress->done, end - first);
  }
  store_reader_free(r);
  return NULL;
}

/* ---- the index ---- */

static const char *id_at(const arena *a, uint64_t i, size_t *len) {
  *len = (size_t)(a->id_off[i + 1] - a->id_off[i]);
  return a->ids + a->id_off[i];
}

static void index_build(arena *a) {
  for (uint64_t i = 0; i < a->n; i++) {
    size_t len;
    const char *id = id_at(a, i, &len);
    uint64_t h = XXH3_64bits(id, len), pos = h & a->mask;
    while (a->slots[pos] != 0)
      pos = (pos + 1) & a->mask;
    a->slots[pos] = (h >> 32 << 32) | (i + 1);
  }
}

int arena_find(const arena *a, const char *id, size_t len, labelmap *out) {
  uint64_t h = XXH3_64bits(id, len), pos = h & a->mask;
  for (uint64_t v; (v = a->slots[pos]) != 0; pos = (pos + 1) & a->mask) {
    if (v >> 32 != h >> 32)
      continue;
    uint64_t i = (uint32_t)v - 1;
    size_t got_len;
    const char *got = id_at(a, i, &got_len);
    if (got_len != len || memcmp(got, id, len) != 0)
      continue;
    size_t at = (size_t)i * a->entries;
    *out = (labelmap){.k = a->k, .h = a->h, .w = a->w};
    /* The arena is immutable: the non-const pointers of the f32 form are
     * never written through (labelmap is shared with the decoders). */
    if (a->scores16)
      out->scores16 = (const uint16_t *)a->scores + at;
    else
      out->scores = (float *)a->scores + at;
    if (a->classes16)
      out->classes16 = (const uint16_t *)a->classes + at;
    else
      out->classes = (uint32_t *)a->classes + at;
    return 0;
  }
  return LMAP_ENOTFOUND;
}

/* ---- building ---- */

static double now_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double gigabytes(uint64_t bytes) {
  return (double)bytes / 1e9;
}

int arena_check_memory(const store *s, diag *d) {
  uint64_t need = arena_need(s), avail;
  char source[96];
  if (mem_available(&avail, source, sizeof source) == 0 && need > avail)
    return diag_set(d, LMAP_ENOMEM,
                    "the resident arena needs %.2f GB for %llu records, more "
                    "than the %.2f GB available (%s)",
                    gigabytes(need),
                    (unsigned long long)store_get_meta(s)->record_count,
                    gigabytes(avail), source);
  return 0;
}

static int alloc_arena(arena *a, const codec_shape *sh, diag *d) {
  size_t sb = score_size(sh), cb = class_size(sh);
  if (a->n > UINT32_MAX - 1 || a->entries > SIZE_MAX / (sb + cb) / (a->n + 1))
    return diag_set(d, LMAP_ETOOBIG,
                    "a store of %llu records is too large "
                    "for a resident arena",
                    (unsigned long long)a->n);
  size_t scores_len = a->n * a->entries * sb;
  scores_len = (scores_len + 63) & ~(size_t)63; /* classes start aligned */
  a->map_len = scores_len + a->n * a->entries * cb;
  if (a->map_len > 0) {
    void *p = mmap(NULL, a->map_len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
      return diag_set(d, LMAP_ENOMEM,
                      "cannot map %.2f GB for the resident arena: %s",
                      gigabytes(a->map_len), strerror(errno));
    a->map = p;
    /* Lookups land anywhere in gigabytes: huge pages save TLB misses. */
    madvise(p, a->map_len, MADV_HUGEPAGE);
  }
  a->scores = a->map;
  a->classes = a->map + scores_len;
  uint64_t slots = slot_count(a->n);
  a->slots = calloc(slots, sizeof *a->slots);
  a->id_off = calloc(a->n + 1, sizeof *a->id_off);
  if (a->slots == NULL || a->id_off == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory for the arena's index");
  a->mask = slots - 1;
  return 0;
}

int arena_build(store *s, unsigned threads, arena_progress *progress,
                arena **out, diag *d) {
  *out = NULL;
  double t0 = now_seconds();
  const store_meta *meta = store_get_meta(s);
  if (progress) {
    atomic_store(&progress->done, 0);
    atomic_store(&progress->total, meta->record_count);
  }
  const codec_shape *sh = &meta->shape;
  if (threads == 0) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    threads = cpus > 0 ? (unsigned)cpus : 1;
  }
  if (threads > MAX_THREADS)
    threads = MAX_THREADS;
  int rc = arena_check_memory(s, d);
  if (rc)
    return rc;
  arena *a = calloc(1, sizeof *a);
  walk wk = {.a = a, .d = d};
  if (a == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory");
  a->k = sh->k;
  a->h = sh->h;
  a->w = sh->w;
  a->entries = (size_t)sh->k * sh->h * sh->w;
  a->scores16 = score_size(sh) == 2;
  a->classes16 = class_size(sh) == 2;
  a->n = meta->record_count;
  a->threads = threads;
  if ((rc = alloc_arena(a, sh, d)) != 0)
    goto fail;
  wk.recs = malloc((a->n ? a->n : 1) * sizeof *wk.recs);
  wk.lens = malloc((a->n ? a->n : 1) * sizeof *wk.lens);
  if (wk.recs == NULL || wk.lens == NULL) {
    rc = diag_set(d, LMAP_ENOMEM, "out of memory for the arena's walk");
    goto fail;
  }
  if ((rc = store_foreach(s, visit, &wk, d)) != 0)
    goto fail;
  if (wk.seen != a->n) {
    rc = diag_set(d, LMAP_ECORRUPT,
                  "the store holds %llu records, not the %llu its metadata "
                  "counts",
                  (unsigned long long)wk.seen, (unsigned long long)a->n);
    goto fail;
  }

  a->walk_seconds = now_seconds() - t0;
  decode_job job = {.a = a, .s = s, .wk = &wk, .progress = progress};
  pthread_mutex_init(&job.mu, NULL);
  pthread_t tid[MAX_THREADS];
  unsigned started = 0;
  for (; started < threads; started++)
    if (pthread_create(&tid[started], NULL, decode_thread, &job) != 0)
      break;
  if (started == 0) /* no thread at all: decode here */
    decode_thread(&job);
  index_build(a);
  for (unsigned i = 0; i < started; i++)
    pthread_join(tid[i], NULL);
  pthread_mutex_destroy(&job.mu);
  if (job.err != 0) {
    *d = job.d;
    rc = job.err;
    goto fail;
  }
  free(wk.recs);
  free(wk.lens);
  store_release_pages(s);
  a->bytes = a->map_len + wk.ids_len + (a->n + 1) * sizeof *a->id_off +
             (a->mask + 1) * sizeof *a->slots;
  a->seconds = now_seconds() - t0;
  *out = a;
  return 0;
fail:
  free(wk.recs);
  free(wk.lens);
  arena_free(a);
  store_release_pages(s);
  return rc;
}

uint64_t arena_records(const arena *a) {
  return a->n;
}

uint64_t arena_bytes(const arena *a) {
  return a->bytes;
}

double arena_build_seconds(const arena *a) {
  return a->seconds;
}

double arena_walk_seconds(const arena *a) {
  return a->walk_seconds;
}

unsigned arena_build_threads(const arena *a) {
  return a->threads;
}

void arena_free(arena *a) {
  if (a == NULL)
    return;
  if (a->map != NULL)
    munmap(a->map, a->map_len);
  free(a->ids);
  free(a->id_off);
  free(a->slots);
  free(a);
}
