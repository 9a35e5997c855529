/*
 * api: the HTTP API of lmapd, independent of the HTTP library.
 *
 * http.c turns each request into an api_request (method, decoded path,
 * query arguments, body) and sends back the api_response this module fills:
 * routing, validation of every field (errors name it), pooling through the
 * same itemjson code as `lmap get`, and the JSON error envelope
 * {"error": {"code", "message", "field"}} with the status from the shared
 * error table. See docs/API.md.
 *
 * Threading: one api (the current store and its metadata) is shared by
 * every HTTP worker thread; each thread owns one api_worker (a reference to
 * the store it reads, a reader with its read transaction, the pooling
 * workspace and the output buffer). The request path takes one lock, the
 * worker's own, uncontended except for the moment the control loop
 * (api_watch) takes a replaced store away from an idle worker. With
 * lmapd --resident a store carries its arena (store/arena.h), set once and
 * then only read: lookups go to it, lock-free, instead of the reader.
 *
 * Store trouble: a read that fails on a damaged store is logged (naming
 * the record), counted (lmap_store_errors_total) and marks the store
 * damaged: /readyz answers 503 until a reload swaps a store in. A served
 * file that changes under lmapd (truncated, rewritten in place), found by
 * api_watch or by a read that meets a page past its end, makes the store
 * unavailable: every store route answers 503 naming the cause, /readyz too,
 * until a reload. A reload that opens a good store clears both.
 */
#ifndef LMAP_API_H
#define LMAP_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/diag.h"
#include "metrics.h"
#include "shared/dynbuf.h"
#include "store/arena.h"
#include "store/store.h"

#define API_DEFAULT_MAX_BATCH 4096u

typedef struct api_request {
  const char *method; /* "GET", "POST", ... */
  const char *path;   /* URL path, already percent-decoded */
  /* Query argument `name`, or NULL when absent. */
  const char *(*arg)(void *ctx, const char *name);
  void *arg_ctx;
  const char *accept;        /* the Accept header, or NULL */
  const char *authorization; /* the Authorization header, or NULL */
  const char *range;         /* the Range header, or NULL */
  const char *if_range;      /* the If-Range header, or NULL */
  const char *content_type;  /* the Content-Type header, or NULL */
  const uint8_t *body;
  size_t body_len;
} api_request;

typedef struct api_response {
  int status;
  const char *content_type; /* static string */
  const char *allow;        /* the Allow header for 405, else NULL */
  int auth_challenge;       /* 401: send WWW-Authenticate: Bearer */
  unsigned retry_after;     /* seconds for a Retry-After header, or 0 */
  metrics_route route;      /* for the metrics */
  uint32_t batch, labels;   /* queries asked and labels answered */
  dynbuf body;              /* owned by the api_worker, reused */
  /* An answer that is a part of a file (GET /v1/store) instead of `body`:
   * with `has_file`, a descriptor that the caller takes over (clearing
   * `has_file`); a zeroed response has none. */
  int has_file;
  int file_fd;
  uint64_t file_offset, file_length;
  char etag[24];          /* the ETag header, or "" */
  char content_range[80]; /* the Content-Range header, or "" */
  int accept_ranges;      /* send Accept-Ranges: bytes */
  int page;          /* a file of the store browser: its security headers */
  char store_id[20]; /* X-Lmap-Store: the store an answer comes from, or "" */
  /* The worker whose buffer `body` is, or NULL for an answer http.c makes
   * itself: api_observe gives a large buffer's memory back. */
  struct api_worker *worker;
} api_response;

typedef struct api api;
typedef struct api_worker api_worker;

/* Creates the shared API over an open store, which it takes over: the store
 * is closed when neither the api nor any worker uses it any more.
 * Returns 0 or LMAP_ENOMEM (the store is then still the caller's). */
int api_new(store *s, uint32_t max_batch, api **out, diag *d);
void api_free(api *a); /* accepts NULL; every worker must be freed first */

/* Serves `s` (taken over) from now on, from its arena `ar` (taken over
 * too; NULL: from the store's mapping): each worker moves to it at its next
 * request; the previous store (and its arena) is freed when its last worker
 * has moved. No request fails or waits for it. Returns the new generation
 * number (2 for the first reload), or 0 when out of memory (then `s` and
 * `ar` are still the caller's). Thread-safe. */
uint64_t api_swap(api *a, store *s, arena *ar);

/* lmapd --resident: from now on the service is ready only while the current
 * store has its arena; `progress` (borrowed for the api's life; may be
 * NULL) is the running build's, shown by /readyz and /metrics. Call before
 * serving. */
void api_set_resident(api *a, const arena_progress *progress);

/* Gives generation `number`'s store, which serves from its mapping, its
 * arena `ar` (taken over on success): requests read it from then on. For
 * the first store, whose arena is built while lmapd already answers.
 * Returns 0, or -1 when `number` is no longer current or already has one
 * (`ar` is then still the caller's). Thread-safe. */
int api_attach_arena(api *a, uint64_t number, arena *ar);

/* Requires "Authorization: Bearer <token>" on every /v1/ route from now
 * on (the token is copied). Returns 0 or LMAP_EINVAL (empty token). */
int api_set_token(api *a, const char *token, size_t len);

/* The default cap on one answer body. */
#define API_DEFAULT_MAX_ANSWER ((size_t)256 << 20)
/* The smallest cap: room for every error answer. */
#define API_MIN_MAX_ANSWER ((size_t)4096)

/* Caps the size of one answer body at `bytes` (lmapd --max-answer): a
 * request whose answer would be larger is refused with 413 before any
 * pooling, from an upper bound of the answer's size (exact for .npy; for
 * JSON see itemjson_max_len). 0 keeps the default; values below
 * API_MIN_MAX_ANSWER are raised to it. Call before serving. */
void api_set_max_answer(api *a, size_t bytes);

/* Serves the store file itself at GET /v1/store (lmapd --serve-store), so
 * that a new replica can copy it from a running one: ETag (the store's id),
 * one byte range, If-Range. Off by default: /v1/store is then 404. Call
 * before serving. */
void api_set_serve_store(api *a, int on);

/* Serves the store browser at / and /ui/ (on by default; lmapd --no-ui
 * turns it off: 404). Call before serving. */
void api_set_ui(api *a, int on);

/* Lines that /metrics adds from the HTTP edge, which the api cannot see
 * (open connections, answers waiting to be read): `render` appends them to
 * `b` and returns 0 or a dynbuf error. Set before serving starts and
 * cleared after it stops (NULL): it is read without a lock. */
typedef int (*api_edge_metrics)(void *ctx, dynbuf *b);
void api_set_edge_metrics(api *a, api_edge_metrics render, void *ctx);

/* Marks the service as draining: /readyz answers 503 from now on. */
void api_set_draining(api *a);

/* The control loop's periodic work, and right after a reload: checks that
 * the served file is still the file that was opened (store_file_check; a
 * change makes the store unavailable, logged once), and takes replaced
 * stores away from idle workers, so that a replaced store is closed (and
 * its disk space freed) without waiting for a request on every worker.
 * Never blocks on a busy worker. Call from one thread. */
void api_watch(api *a);

/* A worker for the calling thread. NULL when out of memory. */
api_worker *api_worker_new(api *a);
void api_worker_free(api_worker *w); /* accepts NULL */

/* Handles one request. `res` is borrowed from the worker and valid until
 * its next request. Never fails: every problem becomes an error response. */
api_response *api_handle(api_worker *w, const api_request *req);

/* Records an answered request in the metrics. Called on the thread that
 * answered, once the body has been handed to the HTTP library: a worker's
 * buffer above a small size is freed here (its `body.len` stays readable,
 * its contents do not). */
void api_observe(api *a, const api_response *res, double ms);

/* Fills `res` with the JSON error envelope for `code` (a LMAP_E* value),
 * with the message and field of `d`. Used by http.c for transport-level
 * errors (413, 411, 400) as well. */
void api_error(api_response *res, int code, const diag *d);

/* A JSON error response for error `err` (status and code from the shared
 * table) with a fixed message and no field. */
void api_error_message(api_response *res, int err, const char *message);

#endif /* LMAP_API_H */
