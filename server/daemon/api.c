/*
 * api: routes and handlers of lmapd (see api.h and docs/API.md).
 *
 * Every handler validates at the edge and answers through one of two
 * exits: a success body, or api_error() with the code from the shared
 * error table and a message naming the field. Items are produced by
 * itemjson_write, the code path `lmap get` prints with, so the server and
 * the tool cannot disagree.
 */
#include "api.h"

#include <errno.h>
#include <jansson.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "lmap/version.h"
#include "pool/itemjson.h"
#include "pool/mapsvg.h"
#include "pool/npy.h"
#include "pool/pool.h"
#include "pool/queryjson.h"
#include "pool/queryopt.h"
#include "shared/querybin.h"
#include "shared/sparsebin.h"

#include "log.h"
#include "range.h"
#include "ui.h"

#define MISSING_NAMED 8 /* unknown ids named in a 404 */
/* A worker keeps at most this much answer buffer (and pooling scratch)
 * between requests; more is freed once the answer is handed over. */
#define KEEP_BYTES ((size_t)1 << 20)
/* Store errors logged one by one per kind; after that only at powers of
 * two (the metric counts them all), so a client looping on a damaged
 * record cannot flood the log. */
#define LOG_EVERY_ERROR 16

static const char JSON_TYPE[] = "application/json";
static const char NPY_TYPE[] = "application/x-npy";
static const char SVG_TYPE[] = "image/svg+xml";

/* One opened store and everything derived from it. Workers hold a
 * reference while they use it; the api holds one for the current store.
 * The last release closes the store, so a store swapped out by a reload
 * stays open exactly as long as a worker still reads it. */
typedef struct generation {
  store *s;
  const store_meta *meta;
  /* The store decoded (lmapd --resident), or NULL: set when the generation
   * is made, or once by api_attach_arena for the first store, whose arena
   * is built while it already serves from the mapping. */
  _Atomic(arena *) arena;
  atomic_int refs;
  uint64_t number; /* 1 for the first store, +1 per reload */
} generation;

/* Trouble with the served store. Each fault names the generation it was
 * found in, so a swap (a new generation) clears it without anyone resetting
 * it, and a fault found by a worker still on a replaced store does not
 * touch the new one. */
typedef enum fault_kind {
  FAULT_DAMAGED,
  FAULT_UNAVAILABLE,
  FAULT_KINDS
} fault_kind;

struct api {
  /* Workers compare it without a lock on every request; taking a new
   * reference happens under `mu`, the only place besides api_swap that
   * touches `refs` of the current generation while it is current, so a
   * worker can never take a reference to a generation already released. */
  _Atomic(generation *) current;
  _Atomic uint64_t current_number; /* current->number, readable lock-free */
  pthread_mutex_t mu;
  uint32_t max_batch;
  size_t max_answer;
  int serve_store;
  int no_ui; /* lmapd --no-ui: / and /ui/ are 404 */
  api_edge_metrics edge_metrics;
  void *edge_ctx;
  atomic_int draining;
  char *token; /* required bearer token, or NULL */
  size_t token_len;
  metrics *metrics;
  _Atomic uint64_t fault_gen[FAULT_KINDS]; /* generation number, 0: none */
  char fault_reason[FAULT_KINDS][512];     /* under mu */
  api_worker *workers;                     /* every worker, under mu */
  /* lmapd --resident: the store is not ready until its arena is built;
   * the build's progress, owned by the caller, for /readyz and /metrics. */
  int resident;
  const arena_progress *progress;
};

struct api_worker {
  api *a;
  /* Held while a request runs, and by api_watch while it takes a replaced
   * store away (trylock: the watch never waits for a request). Guards g
   * and reader; the rest is the owner thread's alone. */
  pthread_mutex_t mu;
  generation *g; /* the store this worker reads, referenced */
  store_reader *reader;
  pool_ws *ws;
  uint32_t ws_classes; /* the class count ws was made for */
  float *dense;        /* G*G*C floats, grown on demand */
  size_t dense_cap;
  api_response res;
  api_worker *prev, *next; /* in api.workers, under api.mu */
};

static generation *generation_new(store *s, arena *ar, uint64_t number) {
  generation *g = calloc(1, sizeof *g);
  if (g == NULL)
    return NULL;
  g->s = s;
  g->meta = store_get_meta(s);
  atomic_init(&g->arena, ar);
  atomic_init(&g->refs, 1);
  g->number = number;
  return g;
}

static void generation_release(generation *g) {
  if (g != NULL && atomic_fetch_sub(&g->refs, 1) == 1) {
    arena_free(atomic_load(&g->arena));
    store_close(g->s);
    free(g);
  }
}

/* A reference to the current generation (release it). */
static generation *acquire_current(api *a) {
  pthread_mutex_lock(&a->mu);
  generation *g = atomic_load(&a->current);
  atomic_fetch_add(&g->refs, 1);
  pthread_mutex_unlock(&a->mu);
  return g;
}

int api_new(store *s, uint32_t max_batch, api **out, diag *d) {
  api *a = calloc(1, sizeof *a);
  generation *g = a ? generation_new(s, NULL, 1) : NULL;
  metrics *m = g ? metrics_new() : NULL;
  if (m == NULL) {
    free(g);
    free(a);
    return diag_set(d, LMAP_ENOMEM, "out of memory");
  }
  atomic_init(&a->current, g);
  atomic_init(&a->current_number, 1);
  pthread_mutex_init(&a->mu, NULL);
  a->max_batch = max_batch ? max_batch : API_DEFAULT_MAX_BATCH;
  a->max_answer = API_DEFAULT_MAX_ANSWER;
  a->metrics = m;
  /* Answers, request bodies and the HTTP library's copies of answers come
   * and go in sizes up to hundreds of MiB. glibc serves a block above its
   * mmap threshold by mmap and unmaps it on free, but raises the threshold
   * to the size of every such block freed (up to 32 MiB), after which
   * blocks that size come from the heap and stay in the process once
   * freed: 4 threads of mixed large answers left 133 MB resident when idle
   * (tests/e2e/test_e2e_memory.py). A fixed threshold keeps every block
   * above KEEP_BYTES out of the heap. Fixing it also keeps glibc's trim
   * threshold at 128 KiB, so a freed answer just under KEEP_BYTES (256
   * .npy rows of 1,000 classes: 1,024,128 bytes) gave the heap's top back
   * to the kernel and the next one faulted it in again: lmapd spent up to
   * 8 us of kernel time per label on .npy batches, against under 1.3 us
   * with a trim threshold of 4 MiB (bench_batch --answers npy on the
   * mapped 10,000-record store, alternating runs). */
  mallopt(M_MMAP_THRESHOLD, (int)KEEP_BYTES);
  mallopt(M_TRIM_THRESHOLD, (int)(4 * KEEP_BYTES));
  *out = a;
  return 0;
}

uint64_t api_swap(api *a, store *s, arena *ar) {
  pthread_mutex_lock(&a->mu);
  generation *old = atomic_load(&a->current);
  generation *g = generation_new(s, ar, old->number + 1);
  if (g == NULL) {
    pthread_mutex_unlock(&a->mu);
    return 0;
  }
  atomic_store(&a->current, g);
  atomic_store(&a->current_number, g->number);
  pthread_mutex_unlock(&a->mu);
  generation_release(old);
  return g->number;
}

int api_attach_arena(api *a, uint64_t number, arena *ar) {
  pthread_mutex_lock(&a->mu);
  generation *g = atomic_load(&a->current);
  arena *none = NULL;
  int ok = g->number == number &&
           atomic_compare_exchange_strong(&g->arena, &none, ar);
  pthread_mutex_unlock(&a->mu);
  return ok ? 0 : -1;
}

void api_set_resident(api *a, const arena_progress *progress) {
  a->resident = 1;
  a->progress = progress;
}

void api_free(api *a) {
  if (a == NULL)
    return;
  generation_release(atomic_load(&a->current));
  pthread_mutex_destroy(&a->mu);
  free(a->token);
  metrics_free(a->metrics);
  free(a);
}

void api_observe(api *a, const api_response *res, double ms) {
  metrics_observe(a->metrics, res->route, res->status, ms, res->batch,
                  res->labels);
  /* The body has been copied out: a large buffer goes back to the system
   * now, not at this worker's next request (which may never come). */
  api_worker *w = res->worker;
  if (w != NULL) {
    lmap_dynbuf_drop(&w->res.body, KEEP_BYTES);
    if (w->dense_cap > KEEP_BYTES / sizeof(float)) {
      free(w->dense);
      w->dense = NULL;
      w->dense_cap = 0;
    }
  }
}

int api_set_token(api *a, const char *token, size_t len) {
  if (len == 0)
    return LMAP_EINVAL;
  char *t = malloc(len);
  if (t == NULL)
    return LMAP_ENOMEM;
  memcpy(t, token, len);
  free(a->token);
  a->token = t;
  a->token_len = len;
  return 0;
}

/* Compares in time that depends only on the lengths, not on where the
 * first difference is, so the token cannot be guessed byte by byte. */
static int token_matches(const api *a, const char *header) {
  static const char prefix[] = "Bearer ";
  if (header == NULL || strncmp(header, prefix, sizeof prefix - 1) != 0)
    return 0;
  const char *got = header + sizeof prefix - 1;
  size_t n = strlen(got);
  unsigned char diff = n != a->token_len;
  for (size_t i = 0; i < a->token_len; i++)
    diff |= (unsigned char)(a->token[i] ^ (i < n ? got[i] : 0));
  return diff == 0;
}

void api_set_edge_metrics(api *a, api_edge_metrics render, void *ctx) {
  a->edge_metrics = render;
  a->edge_ctx = ctx;
}

void api_set_max_answer(api *a, size_t bytes) {
  if (bytes == 0)
    bytes = API_DEFAULT_MAX_ANSWER;
  a->max_answer = bytes < API_MIN_MAX_ANSWER ? API_MIN_MAX_ANSWER : bytes;
}

void api_set_serve_store(api *a, int on) {
  a->serve_store = on;
}

void api_set_ui(api *a, int on) {
  a->no_ui = !on;
}

void api_set_draining(api *a) {
  atomic_store(&a->draining, 1);
}

/* ---- store trouble ---- */

static const char *const fault_names[FAULT_KINDS] = {"damaged", "unavailable"};

/* Marks generation `number` with fault `kind` and `reason`, logging the
 * change once. Does nothing if `number` is no longer current (a reload
 * already replaced that store) or already has the fault. */
static void mark_fault(api *a, uint64_t number, fault_kind kind,
                       const char *reason) {
  pthread_mutex_lock(&a->mu);
  int fresh = number == atomic_load(&a->current_number) &&
              atomic_load(&a->fault_gen[kind]) != number;
  if (fresh) {
    snprintf(a->fault_reason[kind], sizeof a->fault_reason[kind], "%s", reason);
    atomic_store(&a->fault_gen[kind], number);
  }
  pthread_mutex_unlock(&a->mu);
  if (fresh) {
    char *q = log_quote(reason);
    log_event(kind == FAULT_DAMAGED ? "store_damaged" : "store_unavailable",
              "\"generation\":%llu,\"reason\":%s", (unsigned long long)number,
              q ? q : "\"?\"");
    free(q);
  }
}

/* Whether the current store has fault `kind`; if so its reason goes to
 * `reason` (`cap` bytes). */
static int has_fault(api *a, fault_kind kind, char *reason, size_t cap) {
  uint64_t n = atomic_load(&a->fault_gen[kind]);
  if (n == 0 || n != atomic_load(&a->current_number))
    return 0;
  pthread_mutex_lock(&a->mu);
  snprintf(reason, cap, "%s", a->fault_reason[kind]);
  pthread_mutex_unlock(&a->mu);
  return 1;
}

/* The answer of every store route while the store is unavailable. */
static int unavailable(diag *d, const char *reason) {
  return diag_set(d, LMAP_EUNAVAILABLE,
                  "the store is not served: %s (install a good store by "
                  "rename and send SIGHUP)",
                  reason);
}

/* Reports an error a read of record `id` met in the worker's store, if it
 * is the store's (not the request's): a log line naming the record, the
 * metric, the fault. The worker's reader is dropped, so that its next
 * request starts a fresh read transaction: LMDB fails every later
 * operation of a transaction that met an error (MDB_BAD_TXN), which used
 * to take the worker down with it. Returns the error to answer: `rc`, or
 * LMAP_EUNAVAILABLE when the store can no longer be read. */
static int store_trouble(api_worker *w, const char *id, int rc, diag *d) {
  metrics_store_error kind;
  if (rc == LMAP_ECORRUPT)
    kind = STORE_ERR_CORRUPT;
  else if (rc == LMAP_EIO)
    kind = STORE_ERR_IO;
  else if (rc == LMAP_EBADSTORE) /* the store's guard: a page past the end */
    kind = STORE_ERR_TRUNCATED;
  else
    return rc;
  /* Every store error names the record it met (LMDB's own do not). */
  if (strstr(diag_text(d), id) == NULL) {
    char pre[300];
    snprintf(pre, sizeof pre, "record '%s'", id);
    diag_prefix(d, pre);
  }
  api *a = w->a;
  unsigned long long n = metrics_store_error_add(a->metrics, kind);
  static const char *const kinds[] = {"corrupt", "io", "file_changed",
                                      "truncated_read"};
  if (n <= LOG_EVERY_ERROR || (n & (n - 1)) == 0) {
    char *rec = log_quote(id), *msg = log_quote(diag_text(d));
    log_event("store_error",
              "\"kind\":\"%s\",\"record\":%s,\"generation\":%llu,"
              "\"count\":%llu,\"message\":%s",
              kinds[kind], rec ? rec : "\"?\"",
              (unsigned long long)w->g->number, n, msg ? msg : "\"?\"");
    free(rec);
    free(msg);
  }
  char reason[600];
  snprintf(reason, sizeof reason, "%s", diag_text(d));
  mark_fault(a, w->g->number,
             kind == STORE_ERR_TRUNCATED ? FAULT_UNAVAILABLE : FAULT_DAMAGED,
             reason);
  store_reader_free(w->reader);
  w->reader = NULL;
  /* The file shrank under the map: this request is answered like every
   * later one, 503 naming the cause. */
  return kind == STORE_ERR_TRUNCATED ? unavailable(d, reason) : rc;
}

/* Takes replaced stores away from idle workers (see api_watch). Stores
 * whose last reference goes are closed after the api's lock is let go. */
static void release_idle(api *a) {
  enum { BATCH = 32 };
  for (int more = 1; more;) {
    generation *drop[BATCH];
    int n = 0;
    more = 0;
    pthread_mutex_lock(&a->mu);
    generation *cur = atomic_load(&a->current);
    for (api_worker *w = a->workers; w != NULL; w = w->next) {
      if (pthread_mutex_trylock(&w->mu) != 0)
        continue; /* serving: it moves to the current store itself */
      if (w->g != NULL && w->g != cur) {
        if (n == BATCH) {
          more = 1;
        } else {
          /* With MDB_NOLOCK a read transaction has no reader slot and no
           * thread-local state, so another thread may end it (LMDB binds
           * a read transaction to its thread only through the slot). */
          store_reader_free(w->reader);
          w->reader = NULL;
          drop[n++] = w->g;
          w->g = NULL;
        }
      }
      pthread_mutex_unlock(&w->mu);
    }
    pthread_mutex_unlock(&a->mu);
    for (int i = 0; i < n; i++)
      generation_release(drop[i]);
  }
}

void api_watch(api *a) {
  if (atomic_load(&a->fault_gen[FAULT_UNAVAILABLE]) !=
      atomic_load(&a->current_number)) {
    generation *g = acquire_current(a);
    diag d;
    diag_clear(&d);
    if (store_file_check(g->s, &d) != 0) {
      metrics_store_error_add(a->metrics, STORE_ERR_CHANGED);
      mark_fault(a, g->number, FAULT_UNAVAILABLE, diag_text(&d));
    }
    generation_release(g);
  }
  release_idle(a);
}

/* Makes the worker read the current store: on the first request, after a
 * reload, and after a store error dropped its reader. The comparison is
 * lock-free; switching is rare. */
static int use_current(api_worker *w, diag *d) {
  api *a = w->a;
  if (atomic_load(&a->current) == w->g && w->reader != NULL)
    return 0;
  generation *g = acquire_current(a);
  store_reader *reader = NULL;
  pool_ws *ws = w->ws;
  uint32_t C = g->meta->shape.num_classes;
  if (ws == NULL || w->ws_classes != C)
    ws = pool_ws_new(C);
  int rc = ws == NULL ? diag_set(d, LMAP_ENOMEM, "out of memory")
                      : store_reader_new(g->s, &reader, d);
  if (rc == LMAP_EBADSTORE) {
    /* The store refuses to begin a read on a file that shrank: the same
     * fault as a read that meets the cut. */
    metrics_store_error_add(a->metrics, STORE_ERR_TRUNCATED);
    char reason[600];
    snprintf(reason, sizeof reason, "%s", diag_text(d));
    mark_fault(a, g->number, FAULT_UNAVAILABLE, reason);
    rc = unavailable(d, reason);
  }
  if (rc != 0) {
    if (ws != w->ws)
      pool_ws_free(ws);
    generation_release(g);
    return rc;
  }
  store_reader_free(w->reader);
  if (ws != w->ws)
    pool_ws_free(w->ws);
  generation_release(w->g);
  w->g = g;
  w->reader = reader;
  w->ws = ws;
  w->ws_classes = C;
  return 0;
}

static void reset(api_response *res);

api_worker *api_worker_new(api *a) {
  api_worker *w = calloc(1, sizeof *w);
  if (w == NULL)
    return NULL;
  w->a = a;
  pthread_mutex_init(&w->mu, NULL);
  lmap_dynbuf_init(&w->res.body, a->max_answer);
  w->res.worker = w;
  pthread_mutex_lock(&a->mu);
  w->next = a->workers;
  if (a->workers)
    a->workers->prev = w;
  a->workers = w;
  pthread_mutex_unlock(&a->mu);
  return w;
}

void api_worker_free(api_worker *w) {
  if (w == NULL)
    return;
  api *a = w->a;
  pthread_mutex_lock(&a->mu);
  if (w->prev)
    w->prev->next = w->next;
  else
    a->workers = w->next;
  if (w->next)
    w->next->prev = w->prev;
  pthread_mutex_unlock(&a->mu);
  store_reader_free(w->reader);
  generation_release(w->g);
  pool_ws_free(w->ws);
  free(w->dense);
  reset(&w->res); /* closes a file answer nobody took */
  lmap_dynbuf_free(&w->res.body);
  pthread_mutex_destroy(&w->mu);
  free(w);
}

/* ---- responses ---- */

static void reset(api_response *res) {
  if (res->has_file) /* a file answer nobody took */
    close(res->file_fd);
  res->has_file = 0;
  res->file_fd = -1;
  res->file_offset = res->file_length = 0;
  res->etag[0] = res->content_range[0] = res->store_id[0] = '\0';
  res->accept_ranges = 0;
  res->status = 200;
  res->content_type = JSON_TYPE;
  res->allow = NULL;
  res->auth_challenge = 0;
  res->retry_after = 0;
  res->batch = res->labels = 0;
  lmap_dynbuf_reset(&res->body);
}

/* The error body when the message cannot be encoded (not UTF-8, or no
 * memory): the same code, and the code's own text as the message. */
static void error_fallback(api_response *res, int err) {
  lmap_dynbuf_reset(&res->body);
  lmap_dynbuf_printf(&res->body,
                     "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}",
                     lmap_err_code(err), lmap_strerror(err));
}

void api_error_message(api_response *res, int err, const char *message) {
  reset(res);
  res->status = lmap_err_http_status(err);
  json_t *e = json_pack("{s:{s:s, s:s}}", "error", "code", lmap_err_code(err),
                        "message", message);
  char *text = e ? json_dumps(e, JSON_COMPACT) : NULL;
  json_decref(e);
  if (text == NULL || lmap_dynbuf_addstr(&res->body, text) != 0)
    error_fallback(res, err);
  free(text);
}

void api_error(api_response *res, int code, const diag *d) {
  reset(res);
  res->status = lmap_err_http_status(code);
  const char *msg = d && d->msg[0] ? d->msg : lmap_strerror(code);
  json_t *err =
      json_pack("{s:s, s:s}", "code", lmap_err_code(code), "message", msg);
  if (err && d && d->field[0])
    json_object_set_new(err, "field", json_string(d->field));
  json_t *e = err ? json_pack("{s:o}", "error", err) : NULL;
  char *text = e ? json_dumps(e, JSON_COMPACT) : NULL;
  json_decref(e);
  if (text == NULL || lmap_dynbuf_addstr(&res->body, text) != 0)
    error_fallback(res, code);
  free(text);
}

static api_response *fail(api_worker *w, int code, const diag *d) {
  api_error(&w->res, code, d);
  return &w->res;
}

static api_response *fail_msg(api_worker *w, int code, const char *field,
                              const char *fmt, const char *arg) {
  diag d;
  diag_field(&d, code, field ? field : "", fmt, arg);
  return fail(w, code, &d);
}

static int wants_npy(const api_request *req) {
  return req->accept && strstr(req->accept, NPY_TYPE) != NULL;
}

/* The forms of a batch answer: JSON items, a dense .npy array, or sparse
 * binary cells (client/shared/sparsebin.h). When Accept names both binary
 * forms, the sparse one is given: liblmap names both so that an lmapd
 * without sparse answers still answers it in a form it reads. */
typedef enum answer_form { ANSWER_JSON, ANSWER_NPY, ANSWER_SPARSE } answer_form;

static answer_form batch_answer_form(const api_request *req) {
  if (req->accept && strstr(req->accept, LMAP_SPARSEBIN_TYPE) != NULL)
    return ANSWER_SPARSE;
  return wants_npy(req) ? ANSWER_NPY : ANSWER_JSON;
}

/* ---- query options ---- */

typedef struct options {
  pool_query q;
  itemjson_format format;
} options;

/* The options every query of a request shares, from the query string
 * (GET /v1/labels/{id}, and POST /v1/labels with binary queries). */
static int shared_options_from_args(const api_request *req, options *o,
                                    diag *d) {
  const char *v;
  if ((v = req->arg(req->arg_ctx, "output_size")) != NULL) {
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (end == v || *end || errno || n < 1 || n > POOL_MAX_OUTPUT_SIZE)
      return diag_field(d, LMAP_EINVAL, "output_size",
                        "output_size must be an integer in [1, %u]",
                        POOL_MAX_OUTPUT_SIZE);
    o->q.output_size = (uint32_t)n;
  }
  if ((v = req->arg(req->arg_ctx, "format")) != NULL &&
      queryopt_format(v, &o->format))
    return diag_field(d, LMAP_EINVAL, "format",
                      "format must be dense or sparse");
  if ((v = req->arg(req->arg_ctx, "box_format")) != NULL &&
      queryopt_box_format(v, &o->q.box_format))
    return diag_field(d, LMAP_EINVAL, "box_format",
                      "box_format must be xyxy or relabel");
  if ((v = req->arg(req->arg_ctx, "flip")) != NULL &&
      queryopt_bool(v, &o->q.flip))
    return diag_field(d, LMAP_EINVAL, "flip", "flip must be true or false");
  if ((v = req->arg(req->arg_ctx, "softmax")) != NULL &&
      queryopt_bool(v, &o->q.softmax))
    return diag_field(d, LMAP_EINVAL, "softmax",
                      "softmax must be true or false");
  return 0;
}

/* The options of GET /v1/labels/{id} from the query string. */
static int options_from_args(const api_request *req, options *o, diag *d) {
  const char *v;
  if ((v = req->arg(req->arg_ctx, "box")) == NULL)
    return diag_field(d, LMAP_EBADBOX, "box",
                      "box is required: ?box=x0,y0,x1,y1");
  if (queryopt_box(v, o->q.box))
    return diag_field(d, LMAP_EBADBOX, "box",
                      "box must be four finite numbers x0,y0,x1,y1");
  int rc = shared_options_from_args(req, o, d);
  return rc ? rc : pool_check_query(&o->q, d);
}

/* ---- pooling ---- */

static int ensure_dense(api_worker *w, uint32_t G, diag *d) {
  size_t need = (size_t)G * G * w->g->meta->shape.num_classes;
  if (need <= w->dense_cap)
    return 0;
  float *p = realloc(w->dense, need * sizeof *p);
  if (p == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory");
  w->dense = p;
  w->dense_cap = need;
  return 0;
}

/* Record `id` of the worker's store: from its arena when it has one, else
 * read and decoded from the store (store_reader_get's errors). */
static int read_map(api_worker *w, const char *id, size_t len, labelmap *m,
                    diag *d) {
  arena *ar = atomic_load_explicit(&w->g->arena, memory_order_acquire);
  if (ar != NULL)
    return arena_find(ar, id, len, m);
  return store_reader_get(w->reader, id, len, m, d);
}

static int lookup(api_worker *w, const char *id, labelmap *m, diag *d) {
  int rc = labelmap_id_check(id, strlen(id), d);
  if (rc == 0)
    rc = read_map(w, id, strlen(id), m, d);
  if (rc == LMAP_ENOTFOUND)
    diag_field(d, rc, "id", "no label map for id '%s'", id);
  else if (rc != 0)
    rc = store_trouble(w, id, rc, d);
  return rc;
}

/* Refuses an answer that would exceed the cap, before building it. */
static int too_big(api_worker *w, size_t bytes, const char *field,
                   const char *what, diag *d) {
  return diag_field(d, LMAP_ETOOBIG, field,
                    "the answer (%s) would take up to %zu bytes, more than "
                    "the %zu that lmapd --max-answer allows: ask for fewer "
                    "queries, a smaller output_size, format=sparse or "
                    "application/x-npy",
                    what, bytes, w->a->max_answer);
}

/* a * b + c, saturating at SIZE_MAX. */
static size_t size_mul_add(size_t a, size_t b, size_t c) {
  if (b && a > (SIZE_MAX - c) / b)
    return SIZE_MAX;
  return a * b + c;
}

/* Appends query results as .npy rows: [C] per item for G = 1, pooled in
 * place, else [C, G, G] (the dense output is cell-major and is transposed
 * here). */
static int npy_item(api_worker *w, const labelmap *m, const pool_query *q) {
  uint32_t C = w->g->meta->shape.num_classes, G = q->output_size;
  size_t cells = (size_t)G * G;
  void *at;
  int rc = lmap_dynbuf_extend(&w->res.body, cells * C * sizeof(float), &at);
  if (rc)
    return rc;
  if (G == 1)
    return pool_dense(m, C, q, w->ws, at);
  rc = pool_dense(m, C, q, w->ws, w->dense);
  float *row = at;
  for (uint32_t c = 0; rc == 0 && c < C; c++)
    for (size_t cell = 0; cell < cells; cell++)
      *row++ = w->dense[cell * C + c];
  return rc;
}

/* Appends one query's cells in the sparse binary answer. */
static int sparse_item(api_worker *w, const labelmap *m, const pool_query *q) {
  uint32_t C = w->g->meta->shape.num_classes, G = q->output_size;
  int rc = 0;
  for (uint32_t cell = 0; rc == 0 && cell < G * G; cell++) {
    pool_cell t;
    rc = pool_cell_touched(m, C, q, cell, w->ws, &t);
    if (rc == 0)
      rc = lmap_sparsebin_cell(&w->res.body, t.n, t.rest, t.classes, t.values);
  }
  return rc;
}

/* Whether `id` is already in the 404's list of names ('a', 'b', ...). Ids
 * cannot hold a quote, so the quoted form is unambiguous. */
static int already_named(const dynbuf *names, const char *id) {
  size_t len = strlen(id);
  const char *open = names->data, *close;
  for (; open && (open = strchr(open, '\'')) != NULL; open = close + 1) {
    close = strchr(open + 1, '\'');
    if (close == NULL)
      return 0;
    if ((size_t)(close - open - 1) == len && strncmp(open + 1, id, len) == 0)
      return 1;
  }
  return 0;
}

/* ---- handlers ---- */

static api_response *get_label(api_worker *w, const api_request *req,
                               const char *id) {
  options o = {{{0, 0, 1, 1}, POOL_BOX_XYXY, 1, false, true}, ITEM_DENSE};
  diag d;
  diag_clear(&d);
  labelmap m;
  int rc = options_from_args(req, &o, &d);
  const store_meta *meta = w->g->meta;
  if (rc == 0) {
    size_t bound =
        itemjson_max_len(strlen(id), meta->shape.num_classes, meta->shape.k,
                         meta->shape.h, meta->shape.w, &o.q, o.format);
    if (bound > w->a->max_answer)
      rc = too_big(w, bound, "output_size", "one item", &d);
  }
  if (rc == 0)
    rc = ensure_dense(w, o.q.output_size, &d);
  if (rc == 0)
    rc = lookup(w, id, &m, &d);
  if (rc)
    return fail(w, rc, &d);
  reset(&w->res);
  rc = itemjson_write(&w->res.body, id, &m, w->g->meta->shape.num_classes, &o.q,
                      o.format, w->ws, w->dense);
  if (rc) {
    diag_set(&d, rc, "cannot build the answer: %s", lmap_strerror(rc));
    return fail(w, rc, &d);
  }
  w->res.batch = w->res.labels = 1;
  return &w->res;
}

/* Checks that `o` has only keys from `known` (NULL-terminated). */
/* The batch-wide options of POST /v1/labels. */
static int batch_options(json_t *root, options *o, diag *d) {
  static const char *const known[] = {"queries",    "output_size", "format",
                                      "box_format", "softmax",     NULL};
  int rc = queryjson_known_keys(root, known, "the request", d);
  return rc ? rc : queryjson_options(root, &o->q, &o->format, d);
}

/* The queries of POST /v1/labels, from a JSON body or a binary one
 * (client/shared/querybin.h), read one after the other. */
typedef struct batch_source {
  json_t *root, *queries;   /* JSON */
  lmap_querybin_reader bin; /* binary, when root is NULL */
  char id[LABELMAP_MAX_ID_LEN + 1];
} batch_source;

static int is_querybin(const char *content_type) {
  size_t n = sizeof LMAP_QUERYBIN_TYPE - 1;
  return content_type &&
         strncasecmp(content_type, LMAP_QUERYBIN_TYPE, n) == 0 &&
         (content_type[n] == '\0' || content_type[n] == ';' ||
          content_type[n] == ' ');
}

/* Reads the body's framing and the batch's options; *n is the number of
 * queries. */
static int batch_open(api_worker *w, const api_request *req, batch_source *src,
                      options *o, size_t *n, diag *d) {
  memset(src, 0, sizeof *src);
  if (is_querybin(req->content_type)) {
    char err[LMAP_QUERYBIN_ERRLEN];
    uint32_t count;
    if (lmap_querybin_open(&src->bin, req->body, req->body_len, &count, err))
      return diag_set(d, LMAP_EFORMAT, "binary queries: %s", err);
    *n = count;
    if (count > w->a->max_batch)
      return diag_field(d, LMAP_ETOOBIG, "queries",
                        "%u queries, more than the %u a batch may hold", count,
                        w->a->max_batch);
    return shared_options_from_args(req, o, d);
  }
  json_error_t jerr;
  src->root = json_loadb((const char *)req->body, req->body_len,
                         JSON_REJECT_DUPLICATES, &jerr);
  if (src->root == NULL)
    return diag_set(d, LMAP_EFORMAT, "invalid JSON at line %d, column %d: %s",
                    jerr.line, jerr.column, jerr.text);
  json_t *queries = json_object_get(src->root, "queries");
  src->queries = queries;
  *n = json_array_size(queries);
  if (!json_is_object(src->root))
    return diag_set(d, LMAP_EFORMAT, "the request must be a JSON object");
  if (!json_is_array(queries) || json_array_size(queries) == 0)
    return diag_field(d, LMAP_EINVAL, "queries",
                      "queries must be a non-empty array");
  if (json_array_size(queries) > w->a->max_batch)
    return diag_field(d, LMAP_ETOOBIG, "queries",
                      "%zu queries, more than the %u a batch may hold",
                      json_array_size(queries), w->a->max_batch);
  return batch_options(src->root, o, d);
}

/* Query `i` (the next one): id, box, flip, checked; names the index in
 * errors. `*id` is valid until the next call. */
static int batch_next(batch_source *src, size_t i, pool_query *pq,
                      const char **id, diag *d) {
  char where[32];
  if (src->root != NULL) {
    snprintf(where, sizeof where, "queries[%zu]", i);
    return queryjson_query(json_array_get(src->queries, i), where, false, pq,
                           NULL, id, d);
  }
  lmap_querybin_query q;
  char err[LMAP_QUERYBIN_ERRLEN];
  if (lmap_querybin_next(&src->bin, &q, err) != 1)
    return diag_set(d, LMAP_EFORMAT, "binary queries: %s", err);
  memcpy(src->id, q.id, q.id_len);
  src->id[q.id_len] = '\0';
  memcpy(pq->box, q.box, sizeof pq->box);
  pq->flip = q.flip != 0;
  *id = src->id;
  int rc = labelmap_id_check(src->id, q.id_len, d);
  if (rc == 0)
    rc = pool_check_query(pq, d);
  if (rc) { /* named as queryjson_query names a JSON query's */
    snprintf(where, sizeof where, "queries[%zu]", i);
    diag_prefix(d, where);
  }
  return rc;
}

/* After the last query: a binary body must end there. */
static int batch_end(batch_source *src, diag *d) {
  lmap_querybin_query q;
  char err[LMAP_QUERYBIN_ERRLEN];
  if (src->root == NULL && lmap_querybin_next(&src->bin, &q, err) != 0)
    return diag_set(d, LMAP_EFORMAT, "binary queries: %s", err);
  return 0;
}

static api_response *post_labels(api_worker *w, const api_request *req) {
  diag d;
  diag_clear(&d);
  options o = {{{0, 0, 1, 1}, POOL_BOX_XYXY, 1, false, true}, ITEM_DENSE};
  batch_source src;
  size_t n = 0;
  int rc = batch_open(w, req, &src, &o, &n, &d);
  json_t *root = src.root;
  const codec_shape *sh = &w->g->meta->shape;
  uint32_t C = sh->num_classes, G = o.q.output_size;
  answer_form form = batch_answer_form(req);
  int npy = form == ANSWER_NPY;
  size_t shape4[4] = {n, C, G, G};
  if (rc == 0) {
    /* The .npy size is exact; the sparse one a bound with every cell
     * listing the most classes a bin can touch; the JSON one a bound with
     * every id of the longest length (a comma between items, 14 bytes
     * around them). */
    size_t cells = (size_t)G * G, bound;
    if (form == ANSWER_NPY)
      bound = size_mul_add(n, cells * C * sizeof(float),
                           npy_header_len(shape4, G == 1 ? 2 : 4));
    else if (form == ANSWER_SPARSE)
      bound = lmap_sparsebin_size(
          n, cells,
          size_mul_add(n * cells,
                       pool_cell_max_entries(C, sh->k, sh->h, sh->w, G), 0));
    else
      bound = size_mul_add(n,
                           itemjson_max_len(LABELMAP_MAX_ID_LEN, C, sh->k,
                                            sh->h, sh->w, &o.q, o.format) +
                               1,
                           14);
    if (bound > w->a->max_answer) {
      char what[96];
      snprintf(what, sizeof what, "%zu %s items of output_size %u", n,
               form == ANSWER_NPY        ? "npy"
               : form == ANSWER_SPARSE   ? "binary sparse"
               : o.format == ITEM_SPARSE ? "sparse"
                                         : "dense",
               G);
      rc = too_big(w, bound, "queries", what, &d);
    } else if (npy) {
      /* Known exactly: one allocation, no copies as it grows. */
      rc = lmap_dynbuf_reserve(&w->res.body, bound);
    }
  }
  if (rc == 0)
    rc = ensure_dense(w, o.q.output_size, &d);
  if (rc) {
    json_decref(root);
    return fail(w, rc, &d);
  }

  dynbuf *out = &w->res.body;
  if (npy) {
    rc = npy_header_f32(out, shape4, G == 1 ? 2 : 4);
    w->res.content_type = NPY_TYPE;
  } else if (form == ANSWER_SPARSE) {
    rc = lmap_sparsebin_begin(out, (uint32_t)n, C, G);
    w->res.content_type = LMAP_SPARSEBIN_TYPE;
  } else {
    rc = lmap_dynbuf_addstr(out, "{\"results\":[");
  }
  /* Unknown ids are collected so that the 404 names them all (up to a
   * few); the answer built so far is then discarded. */
  dynbuf missing;
  lmap_dynbuf_init(&missing, 4096);
  size_t nmissing = 0, named = 0; /* queries with unknown ids, ids named */
  int unnamed = 0;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    pool_query q = o.q;
    const char *id = NULL;
    labelmap m;
    rc = batch_next(&src, i, &q, &id, &d);
    if (rc)
      break;
    int got = read_map(w, id, strlen(id), &m, &d);
    if (got == LMAP_ENOTFOUND) {
      if (already_named(&missing, id))
        ;
      else if (named < MISSING_NAMED)
        lmap_dynbuf_printf(&missing, "%s'%s'", named++ ? ", " : "", id);
      else
        unnamed = 1;
      nmissing++;
      continue;
    }
    if (got) {
      /* The whole batch fails, naming the query and the record: see
       * "Batches" in docs/API.md for why there is no per-item status. */
      got = store_trouble(w, id, got, &d);
      char where[32];
      snprintf(where, sizeof where, "queries[%zu]", i);
      diag_prefix(&d, where);
      if (d.field[0] == '\0')
        snprintf(d.field, sizeof d.field, "%s", where);
      rc = got;
      break;
    }
    if (nmissing)
      continue; /* the answer will be a 404: skip the pooling */
    if (npy) {
      rc = npy_item(w, &m, &q);
    } else if (form == ANSWER_SPARSE) {
      rc = sparse_item(w, &m, &q);
    } else {
      if (i)
        rc = lmap_dynbuf_add(out, ",", 1);
      if (rc == 0)
        rc = itemjson_write(out, id, &m, C, &q, o.format, w->ws, w->dense);
    }
    if (rc && d.msg[0] == '\0')
      diag_set(&d, rc, "cannot build the answer: %s", lmap_strerror(rc));
  }
  if (rc == 0)
    rc = batch_end(&src, &d);
  if (rc == 0 && nmissing) {
    rc = nmissing == 1
             ? diag_field(&d, LMAP_ENOTFOUND, "queries", "unknown id %s",
                          missing.data)
             : diag_field(&d, LMAP_ENOTFOUND, "queries",
                          "%zu of the %zu queries name unknown ids: %s%s",
                          nmissing, n, missing.data, unnamed ? ", ..." : "");
  }
  lmap_dynbuf_free(&missing);
  json_decref(root);
  if (rc == 0 && form == ANSWER_JSON)
    rc = lmap_dynbuf_addstr(out, "]}");
  if (rc)
    return fail(w, rc, &d);
  w->res.batch = w->res.labels = (uint32_t)n;
  return &w->res;
}

/* GET /v1/maps/{id} with Accept: image/svg+xml: the map drawn as `lmap
 * render` draws it (pool/mapsvg), with the box of ?box=... (and its
 * output_size, box_format, flip) when one is given. */
static api_response *get_map_svg(api_worker *w, const api_request *req,
                                 const char *id) {
  diag d;
  diag_clear(&d);
  options o = {{{0, 0, 1, 1}, POOL_BOX_XYXY, 1, false, true}, ITEM_DENSE};
  int has_box = req->arg(req->arg_ctx, "box") != NULL;
  int rc = has_box ? options_from_args(req, &o, &d)
                   : shared_options_from_args(req, &o, &d);
  labelmap m;
  if (rc == 0)
    rc = lookup(w, id, &m, &d);
  if (rc)
    return fail(w, rc, &d);
  reset(&w->res);
  mapsvg_input in = {id, &m, w->g->meta->shape.num_classes,
                     store_class_names(w->g->s), has_box ? &o.q : NULL};
  rc = mapsvg_write(&w->res.body, &in, w->ws);
  if (rc == LMAP_ETOOBIG)
    return fail_msg(w, rc, "id",
                    "the drawing of %s is larger than lmapd --max-answer", id);
  if (rc) {
    diag_set(&d, rc, "cannot draw the map: %s", lmap_strerror(rc));
    return fail(w, rc, &d);
  }
  w->res.content_type = SVG_TYPE;
  return &w->res;
}

static api_response *get_map(api_worker *w, const api_request *req,
                             const char *id) {
  diag d;
  diag_clear(&d);
  if (req->accept && strstr(req->accept, SVG_TYPE) != NULL)
    return get_map_svg(w, req, id);
  labelmap m;
  const codec_shape *sh = &w->g->meta->shape;
  size_t entries = (size_t)sh->k * sh->h * sh->w;
  size_t shape[4] = {2, sh->k, sh->h, sh->w};
  int npy = wants_npy(req);
  /* JSON: a class index of at most 8 digits and a score of at most
   * ITEMJSON_NUMBER_MAX, each with a comma, and under 128 bytes around. */
  size_t bound =
      npy ? size_mul_add(2 * entries, sizeof(float), npy_header_len(shape, 4))
          : size_mul_add(entries, 9 + ITEMJSON_NUMBER_MAX + 1,
                         128 + strlen(id));
  int rc = bound > w->a->max_answer ? too_big(w, bound, "id", "a whole map", &d)
                                    : lookup(w, id, &m, &d);
  if (rc == 0 && npy)
    rc = lmap_dynbuf_reserve(&w->res.body, bound);
  if (rc)
    return fail(w, rc, &d);
  reset(&w->res);
  dynbuf *out = &w->res.body;
  size_t cells = (size_t)m.h * m.w;
  if (npy) {
    /* The official layout: [2, K, H, W], class indices as floats. */
    w->res.content_type = NPY_TYPE;
    rc = npy_header_f32(out, shape, 4);
    for (int plane = 0; rc == 0 && plane < 2; plane++)
      for (uint32_t k = 0; rc == 0 && k < m.k; k++)
        for (size_t cell = 0; rc == 0 && cell < cells; cell++) {
          size_t i = cell * m.k + k;
          float v =
              plane ? (float)labelmap_class(&m, i) : labelmap_score(&m, i);
          rc = lmap_dynbuf_add(out, &v, sizeof v);
        }
  } else {
    /* JSON: the same layout flattened, [K][H][W] row-major per plane. */
    rc = lmap_dynbuf_printf(out,
                            "{\"id\":\"%s\",\"k\":%u,\"h\":%u,\"w\":%u,"
                            "\"classes\":[",
                            id, m.k, m.h, m.w);
    for (uint32_t k = 0; rc == 0 && k < m.k; k++)
      for (size_t cell = 0; rc == 0 && cell < cells; cell++)
        rc = lmap_dynbuf_printf(out, k || cell ? ",%u" : "%u",
                                labelmap_class(&m, cell * m.k + k));
    if (rc == 0)
      rc = lmap_dynbuf_addstr(out, "],\"scores\":[");
    for (uint32_t k = 0; rc == 0 && k < m.k; k++)
      for (size_t cell = 0; rc == 0 && cell < cells; cell++) {
        if (k || cell)
          rc = lmap_dynbuf_add(out, ",", 1);
        if (rc == 0)
          rc = itemjson_number(out, labelmap_score(&m, cell * m.k + k));
      }
    if (rc == 0)
      rc = lmap_dynbuf_addstr(out, "]}");
  }
  if (rc) {
    diag_set(&d, rc, "cannot build the answer: %s", lmap_strerror(rc));
    return fail(w, rc, &d);
  }
  return &w->res;
}

static api_response *json_text(api_worker *w, int status, const char *text) {
  reset(&w->res);
  w->res.status = status;
  if (lmap_dynbuf_addstr(&w->res.body, text))
    api_error_message(&w->res, LMAP_EINTERNAL, "out of memory");
  return &w->res;
}

/* How the store is served: "mapped", or "resident" with its arena (null
 * while the first one is built). */
static json_t *serving_info(const api *a, generation *g) {
  if (!a->resident)
    return json_pack("{s:s}", "mode", "mapped");
  arena *ar = atomic_load(&g->arena);
  if (ar == NULL)
    return json_pack("{s:s, s:n}", "mode", "resident", "arena");
  return json_pack("{s:s, s:{s:I, s:I, s:f, s:i}}", "mode", "resident", "arena",
                   "bytes", (json_int_t)arena_bytes(ar), "records",
                   (json_int_t)arena_records(ar), "build_seconds",
                   arena_build_seconds(ar), "build_threads",
                   (int)arena_build_threads(ar));
}

static api_response *get_info(api_worker *w) {
  json_t *meta = store_info(w->g->s);
  /* The software's version and the API's, apart from the store's format
   * (format_version, from the store). */
  if (meta != NULL &&
      json_object_set_new(meta, "server",
                          json_pack("{s:s, s:i}", "version",
                                    LMAP_VERSION_STRING, "api_version",
                                    LMAP_API_VERSION)) != 0) {
    json_decref(meta);
    meta = NULL;
  }
  if (meta != NULL &&
      json_object_set_new(meta, "serving", serving_info(w->a, w->g)) != 0) {
    json_decref(meta);
    meta = NULL;
  }
  if (meta == NULL) {
    api_error_message(&w->res, LMAP_ENOMEM,
                      "cannot render the store's metadata");
    return &w->res;
  }
  char *text = json_dumps(meta, JSON_COMPACT | JSON_REAL_PRECISION(9));
  json_decref(meta);
  api_response *r = json_text(w, 200, text ? text : "{}");
  free(text);
  return r;
}

/* GET /v1/store: the store file as it is on disk, or one byte range of it,
 * sent by the HTTP layer from a descriptor of the open file (sendfile). A
 * client resuming with If-Range and an older ETag gets the whole current
 * file instead of a part of another. */
static api_response *get_store(api_worker *w, const api_request *req) {
  if (!w->a->serve_store)
    return fail_msg(w, LMAP_ENOTFOUND, NULL, "%s",
                    "this lmapd does not serve its store file (start it with "
                    "--serve-store)");
  store *s = w->g->s;
  uint64_t size = store_file_size(s), first = 0, len = size;
  reset(&w->res);
  w->res.accept_ranges = 1;
  snprintf(w->res.etag, sizeof w->res.etag, "\"%s\"", store_id(s));
  const char *range = req->range;
  if (range != NULL && req->if_range != NULL &&
      strcmp(req->if_range, w->res.etag) != 0)
    range = NULL;
  switch (range_parse(range, size, &first, &len)) {
  case RANGE_UNSATISFIABLE: {
    diag d;
    diag_field(&d, LMAP_ERANGE, "Range",
               "the range '%.64s' is outside the %llu-byte store file", range,
               (unsigned long long)size);
    fail(w, LMAP_ERANGE, &d);
    w->res.status = 416;
    w->res.accept_ranges = 1;
    snprintf(w->res.content_range, sizeof w->res.content_range, "bytes */%llu",
             (unsigned long long)size);
    return &w->res;
  }
  case RANGE_PART:
    w->res.status = 206;
    snprintf(w->res.content_range, sizeof w->res.content_range,
             "bytes %llu-%llu/%llu", (unsigned long long)first,
             (unsigned long long)(first + len - 1), (unsigned long long)size);
    break;
  case RANGE_WHOLE: break;
  }
  int fd = store_dup_fd(s);
  if (fd < 0)
    return fail_msg(w, LMAP_EIO, NULL, "cannot send the store file: %s",
                    strerror(errno));
  w->res.content_type = "application/octet-stream";
  w->res.has_file = 1;
  w->res.file_fd = fd;
  w->res.file_offset = first;
  w->res.file_length = len;
  return &w->res;
}

static api_response *get_classes(api_worker *w) {
  const char *names = store_class_names_json(w->g->s);
  if (names == NULL)
    return fail_msg(w, LMAP_ENOTFOUND, NULL, "%s",
                    "this store has no class names");
  reset(&w->res);
  if (lmap_dynbuf_addstr(&w->res.body, "{\"classes\":") ||
      lmap_dynbuf_addstr(&w->res.body, names) ||
      lmap_dynbuf_addstr(&w->res.body, "}"))
    api_error_message(&w->res, LMAP_EINTERNAL, "out of memory");
  return &w->res;
}

/* GET /v1/ids: a page of the store's ids in id order, for the browser. */
#define IDS_LIMIT_DEFAULT 100
#define IDS_LIMIT_MAX 1000

/* An id-shaped argument: `allow_empty` for a prefix. */
static int id_arg(const char *v, int allow_empty, const char *field, diag *d) {
  if (allow_empty && v[0] == '\0')
    return 0;
  int rc = labelmap_id_check(v, strlen(v), d);
  if (rc) {
    char msg[400];
    snprintf(msg, sizeof msg, "%s: %s", field, diag_text(d));
    diag_field(d, rc, field, "%s", msg);
  }
  return rc;
}

static int add_id(void *ctx, const char *id, size_t len) {
  json_t *ids = ctx, *v = json_stringn(id, len);
  return v == NULL || json_array_append_new(ids, v) ? LMAP_ENOMEM : 0;
}

static api_response *get_ids(api_worker *w, const api_request *req) {
  diag d;
  diag_clear(&d);
  const char *prefix = req->arg(req->arg_ctx, "prefix");
  const char *after_id = req->arg(req->arg_ctx, "after");
  const char *v = req->arg(req->arg_ctx, "limit");
  long long limit = IDS_LIMIT_DEFAULT;
  if (v != NULL) {
    char *end;
    errno = 0;
    limit = strtoll(v, &end, 10);
    if (end == v || *end || errno || limit < 1 || limit > IDS_LIMIT_MAX) {
      diag_field(&d, LMAP_EINVAL, "limit",
                 "limit must be an integer in [1, %d]", IDS_LIMIT_MAX);
      return fail(w, LMAP_EINVAL, &d);
    }
  }
  if ((prefix && id_arg(prefix, 1, "prefix", &d)) ||
      (after_id && id_arg(after_id, 0, "after", &d)))
    return fail(w, d.code, &d);
  json_t *ids = json_array();
  int more = 0;
  int rc = ids == NULL
               ? diag_set(&d, LMAP_ENOMEM, "out of memory")
               : store_reader_ids(w->reader, prefix ? prefix : "",
                                  prefix ? strlen(prefix) : 0,
                                  after_id ? after_id : "",
                                  after_id ? strlen(after_id) : 0,
                                  (size_t)limit, add_id, ids, &more, &d);
  if (rc == LMAP_ENOMEM)
    diag_set(&d, rc, "out of memory");
  else if (rc)
    rc = store_trouble(w, prefix ? prefix : "", rc, &d);
  json_t *page = NULL;
  if (rc == 0) {
    size_t n = json_array_size(ids);
    json_t *next = more ? json_copy(json_array_get(ids, n - 1)) : json_null();
    page = json_pack("{s:O, s:o}", "ids", ids, "next", next);
  }
  json_decref(ids);
  char *text = page ? json_dumps(page, JSON_COMPACT) : NULL;
  json_decref(page);
  if (rc)
    return fail(w, rc, &d);
  api_response *r = text ? json_text(w, 200, text) : NULL;
  if (r == NULL)
    api_error_message(r = &w->res, LMAP_ENOMEM, "out of memory");
  free(text);
  return r;
}

/* The store browser (server/daemon/ui/): its page at / and its files under
 * /ui/, compiled in. */
static api_response *get_ui(api_worker *w, const char *path) {
  const ui_asset *f = w->a->no_ui ? NULL : ui_asset_find(path);
  if (f == NULL) {
    api_error_message(&w->res, LMAP_ENOTFOUND,
                      w->a->no_ui ? "the store browser is off (lmapd --no-ui)"
                                  : "no such route");
    return &w->res;
  }
  reset(&w->res);
  if (lmap_dynbuf_add(&w->res.body, f->data, f->len)) {
    api_error_message(&w->res, LMAP_ENOMEM, "out of memory");
    return &w->res;
  }
  w->res.content_type = f->content_type;
  w->res.page = 1;
  return &w->res;
}

/* ---- routing ---- */

/* Up to 16 bytes of a client's token (a method) as printable ASCII, other
 * bytes as \xHH: the message becomes a JSON string, which must be UTF-8. */
static void printable_token(char out[65], const char *token) {
  size_t n = 0;
  for (size_t i = 0; token[i] && i < 16; i++) {
    unsigned char c = (unsigned char)token[i];
    if (c >= 0x20 && c < 0x7f)
      out[n++] = (char)c;
    else
      n += (size_t)snprintf(out + n, 5, "\\x%02x", c);
  }
  out[n] = '\0';
}

static api_response *method_not_allowed(api_worker *w, const char *method,
                                        const char *allow) {
  char msg[160], shown[65];
  printable_token(shown, method);
  snprintf(msg, sizeof msg, "method %s is not allowed here (allowed: %s)",
           shown, allow);
  api_error_message(&w->res, LMAP_EMETHOD, msg);
  w->res.allow = allow;
  return &w->res;
}

/* The id after `prefix` in `path`, or NULL if `path` is not under it. */
static const char *after(const char *path, const char *prefix) {
  size_t n = strlen(prefix);
  return strncmp(path, prefix, n) == 0 && path[n] ? path + n : NULL;
}

static const char *ready_status(api *a, char *reason, size_t cap);

/* lmapd --resident: the arena of generation `g` and the running build. */
static int resident_metrics(api *a, generation *g, dynbuf *b) {
  arena *ar = atomic_load(&g->arena);
  unsigned long long done = 0, total = 0;
  if (a->progress) {
    done = atomic_load(&a->progress->done);
    total = atomic_load(&a->progress->total);
  }
  return lmap_dynbuf_printf(
      b,
      "# HELP lmap_resident_arena_bytes Memory of the served store's "
      "resident arena (0 while it is built).\n"
      "# TYPE lmap_resident_arena_bytes gauge\n"
      "lmap_resident_arena_bytes %llu\n"
      "# HELP lmap_resident_build_seconds Time the served arena took to "
      "build.\n"
      "# TYPE lmap_resident_build_seconds gauge\n"
      "lmap_resident_build_seconds %.3f\n"
      "# HELP lmap_resident_build_records_decoded Records the latest build "
      "has decoded, of lmap_resident_build_records.\n"
      "# TYPE lmap_resident_build_records_decoded gauge\n"
      "lmap_resident_build_records_decoded %llu\n"
      "# TYPE lmap_resident_build_records gauge\n"
      "lmap_resident_build_records %llu\n",
      ar ? (unsigned long long)arena_bytes(ar) : 0ull,
      ar ? arena_build_seconds(ar) : 0.0, done, total);
}

static api_response *get_metrics(api_worker *w) {
  reset(&w->res);
  w->res.content_type = "text/plain; version=0.0.4";
  generation *g = acquire_current(w->a);
  const store_meta *m = g->meta;
  int rc = metrics_render(w->a->metrics, &w->res.body);
  if (rc == 0)
    rc = lmap_dynbuf_printf(
        &w->res.body,
        "# HELP lmap_store_info The served store (value 1).\n"
        "# TYPE lmap_store_info gauge\n"
        "lmap_store_info{store=\"%s\",format_version=\"%u\",encoding=\"%s\","
        "grid=\"%ux%u\",topk=\"%u\",classes=\"%u\"} 1\n"
        "# HELP lmap_store_records Records in the served store.\n"
        "# TYPE lmap_store_records gauge\n"
        "lmap_store_records %llu\n"
        "# HELP lmap_store_file_bytes Size of the served store file.\n"
        "# TYPE lmap_store_file_bytes gauge\n"
        "lmap_store_file_bytes %llu\n",
        store_id(g->s), m->format_version,
        codec_encoding_name(m->shape.encoding), m->shape.h, m->shape.w,
        m->shape.k, m->shape.num_classes, (unsigned long long)m->record_count,
        (unsigned long long)store_file_size(g->s));
  if (rc == 0)
    rc = lmap_dynbuf_printf(
        &w->res.body,
        "# HELP lmap_store_generation The served store: 1 at start, +1 per "
        "reload.\n# TYPE lmap_store_generation gauge\n"
        "lmap_store_generation %llu\n"
        "# HELP lmap_ready 1 when /readyz answers 200.\n"
        "# TYPE lmap_ready gauge\nlmap_ready %d\n",
        (unsigned long long)g->number, ready_status(w->a, NULL, 0) == NULL);
  if (rc == 0 && w->a->resident)
    rc = resident_metrics(w->a, g, &w->res.body);
  generation_release(g);
  if (rc == 0 && w->a->edge_metrics)
    rc = w->a->edge_metrics(w->a->edge_ctx, &w->res.body);
  if (rc)
    api_error_message(&w->res, LMAP_EINTERNAL, "cannot render the metrics");
  return &w->res;
}

/* The one routing table: the route of a path (the metrics label too) and,
 * for the per-id routes, the id that follows the prefix. */
static metrics_route route_of(const char *path, const char **id) {
  static const struct {
    const char *path;
    metrics_route route;
  } exact[] = {
      {"/livez", ROUTE_LIVEZ},        {"/readyz", ROUTE_READYZ},
      {"/metrics", ROUTE_METRICS},    {"/v1/info", ROUTE_INFO},
      {"/v1/classes", ROUTE_CLASSES}, {"/v1/labels", ROUTE_LABELS_POST},
      {"/v1/store", ROUTE_STORE}};
  for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++)
    if (strcmp(path, exact[i].path) == 0)
      return exact[i].route;
  if ((*id = after(path, "/v1/labels/")) != NULL)
    return ROUTE_LABELS_GET;
  if ((*id = after(path, "/v1/maps/")) != NULL)
    return ROUTE_MAPS;
  if (strcmp(path, "/v1/ids") == 0)
    return ROUTE_IDS;
  if (strcmp(path, "/") == 0 || strncmp(path, "/ui/", 4) == 0)
    return ROUTE_UI;
  return ROUTE_OTHER;
}

/* Why the replica is not ready ("draining", "unavailable", "damaged"),
 * with the reason in `reason`, or NULL when it is. */
static const char *ready_status(api *a, char *reason, size_t cap) {
  char scratch[8];
  if (reason == NULL) {
    reason = scratch;
    cap = sizeof scratch;
  }
  if (atomic_load(&a->draining)) {
    snprintf(reason, cap, "%s", "SIGTERM or SIGINT: draining");
    return "draining";
  }
  for (int k = FAULT_KINDS - 1; k >= 0; k--)
    if (has_fault(a, (fault_kind)k, reason, cap))
      return fault_names[k];
  if (a->resident) {
    generation *g = acquire_current(a);
    int built = atomic_load(&g->arena) != NULL;
    generation_release(g);
    if (!built) {
      unsigned long long done = 0, total = 0;
      if (a->progress) {
        done = atomic_load(&a->progress->done);
        total = atomic_load(&a->progress->total);
      }
      snprintf(reason, cap,
               "building the resident arena: %llu of %llu records decoded",
               done, total);
      return "building";
    }
  }
  return NULL;
}

static api_response *get_readyz(api_worker *w) {
  char reason[512];
  const char *status = ready_status(w->a, reason, sizeof reason);
  if (status == NULL)
    return json_text(w, 200, "{\"status\":\"ready\"}");
  /* The error envelope too, so that a client (liblmap, `lmap query
   * --ready`) reports the reason as it reports any refusal. */
  char message[600];
  snprintf(message, sizeof message, "not ready (%s): %s", status, reason);
  json_t *j = json_pack("{s:s, s:s, s:{s:s, s:s}}", "status", status, "reason",
                        reason, "error", "code",
                        lmap_err_code(LMAP_EUNAVAILABLE), "message", message);
  char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  api_response *r = json_text(w, 503, text ? text : "{\"status\":\"unready\"}");
  free(text);
  return r;
}

static api_response *dispatch(api_worker *w, const api_request *req,
                              metrics_route route, const char *id) {
  const char *m = req->method;
  int get = strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0;
  if (route == ROUTE_OTHER) {
    api_error_message(&w->res, LMAP_ENOTFOUND, "no such route");
    return &w->res;
  }
  if (route == ROUTE_LABELS_POST)
    return strcmp(m, "POST") == 0 ? post_labels(w, req)
                                  : method_not_allowed(w, m, "POST");
  if (!get)
    return method_not_allowed(w, m, "GET, HEAD");
  switch (route) {
  case ROUTE_LIVEZ: return json_text(w, 200, "{\"status\":\"ok\"}");
  case ROUTE_METRICS: return get_metrics(w);
  case ROUTE_READYZ: return get_readyz(w);
  case ROUTE_INFO: return get_info(w);
  case ROUTE_CLASSES: return get_classes(w);
  case ROUTE_LABELS_GET: return get_label(w, req, id);
  case ROUTE_MAPS: return get_map(w, req, id);
  case ROUTE_STORE: return get_store(w, req);
  case ROUTE_IDS: return get_ids(w, req);
  case ROUTE_UI: return get_ui(w, req->path);
  default:
    api_error_message(&w->res, LMAP_ENOTFOUND, "no such route");
    return &w->res;
  }
}

/* Routes that read the store (and so answer 503 while it is unavailable). */
static int reads_store(metrics_route route) {
  return route == ROUTE_INFO || route == ROUTE_CLASSES ||
         route == ROUTE_LABELS_GET || route == ROUTE_LABELS_POST ||
         route == ROUTE_MAPS || route == ROUTE_STORE || route == ROUTE_IDS;
}

api_response *api_handle(api_worker *w, const api_request *req) {
  const char *id = NULL;
  metrics_route route = route_of(req->path, &id);
  diag d;
  diag_clear(&d);
  api_response *r;
  char reason[512];
  pthread_mutex_lock(&w->mu);
  w->res.body.max = w->a->max_answer;
  reset(&w->res);
  if (strncmp(req->path, "/v1/", 4) == 0 && w->a->token &&
      !token_matches(w->a, req->authorization)) {
    api_error_message(&w->res, LMAP_EUNAUTHORIZED,
                      req->authorization ? "the bearer token is not valid"
                                         : "an Authorization: Bearer token is "
                                           "required");
    w->res.auth_challenge = 1;
    r = &w->res;
  } else if (reads_store(route) &&
             has_fault(w->a, FAULT_UNAVAILABLE, reason, sizeof reason)) {
    /* Nothing of that file is read any more: a page past a truncation
     * would raise SIGBUS, a rewritten one hold anything. */
    r = fail(w, unavailable(&d, reason), &d);
  } else if (reads_store(route) && use_current(w, &d) != 0) {
    r = fail(w, d.code ? d.code : LMAP_EINTERNAL, &d);
  } else {
    r = dispatch(w, req, route, id);
  }
  /* Every answer read from the store names it: a client behind a balancer
   * can tell which store (and after a rollout, which version) answered. */
  if (reads_store(route) && w->g != NULL)
    snprintf(r->store_id, sizeof r->store_id, "%s", store_id(w->g->s));
  r->route = route;
  pthread_mutex_unlock(&w->mu);
  return r;
}
