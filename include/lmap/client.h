/*
 * liblmap: the thin C client of lmapd.
 *
 * One handle talks to one or more lmapd base URLs that serve the same store
 * (replicas behind no load balancer, or a load balancer and a fallback). Each
 * call is one HTTP request; the handle keeps its connections alive and reuses
 * them. A request that fails on an endpoint (connection refused or reset,
 * timeout, HTTP 5xx, or an answer cut short) is sent again, whole, to the next
 * endpoint; a failed endpoint is skipped for a short while (`down_ms`). An
 * answer is only written to the caller's buffer once it is complete, so a
 * failover never loses or duplicates a query. A 4xx answer is the caller's
 * mistake and is returned at once, with the server's code and message.
 *
 * Threads and fork: a handle has no internal lock. Use one handle per thread
 * (or per data-loader worker); different handles may be used concurrently.
 * Never use a handle across fork(): its sockets would be shared by parent and
 * child. A child creates its own handle and leaves an inherited one alone
 * (freeing it would close connections the parent still uses, and over TLS
 * end the parent's sessions).
 *
 * Ownership: every string passed in is copied or only read during the call.
 * Output buffers belong to the caller. Pointers returned by the library say
 * who frees them: lmap_free() for strings, lmap_sparse_free() for sparse
 * results; strings inside lmap_error_detail belong to the handle and live
 * until its next call.
 *
 * Every fallible function returns 0 or a negative LMAP_E* code from
 * <lmap/error.h>, the table the server uses for its answers. Each function
 * below lists the codes it returns; the message and details of a failure
 * are in lmap_client_last_error().
 *
 * What an answer must be (docs/CLIENT.md, "What liblmap refuses"): a
 * server may be a proxy, another program or a hostile one, so an answer is
 * checked before it is trusted. The handle knows the store's description
 * (lmap_info: asked from /v1/info once, with the first call that needs it,
 * and again when the caller's buffer disagrees with it). An answer of
 * another shape than asked, with a value that cannot be a label (NaN,
 * infinite, a probability outside [0, 1] by more than 1e-6, a class index
 * the store does not have), or larger than the answer asked for can be, is
 * refused with LMAP_EPROTOCOL naming what is wrong (a too-large one as
 * soon as its Content-Length or its bytes show it, without reading the
 * rest), and the next endpoint is tried.
 */
#ifndef LMAP_CLIENT_H
#define LMAP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "lmap/error.h"
#include "lmap/version.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Size of the optional error buffer of lmap_client_new(). */
#define LMAP_ERRBUF_SIZE 256

/** Most server URLs one handle takes. */
#define LMAP_MAX_ENDPOINTS 16

typedef struct lmap_client lmap_client;

/** Client options. Initialise with lmap_client_options_init(), then set
 *  what differs; a zero or negative value means the default. */
typedef struct lmap_client_options {
  long connect_timeout_ms; /**< per TCP connect; default 2000 */
  long timeout_ms;       /**< per HTTP request, whole transfer; default 30000 */
  int retries;           /**< extra passes over all endpoints after the first
                              one fails everywhere; default 1, -1 for none */
  long retry_backoff_ms; /**< sleep before each extra pass, doubled each
                              time; default 50 */
  long down_ms;          /**< how long a failed endpoint is skipped when
                              another is available; default 1000 */
  const char *token;     /**< bearer token (copied); NULL for none */
  const char *ca_file;   /**< CA certificates (a PEM file) that https
                              servers' certificates are verified against
                              (the path is copied; read at each new
                              connection); NULL for the system's */
  int json_queries;      /**< 1: send label batches as JSON, the form every
                              lmapd reads; default 0: as binary queries
                              (application/x-lmap-queries), which lmapd
                              reads about 100x faster (docs/API.md) */
} lmap_client_options;

/** Fills `opts` with the defaults. Cannot fail. */
LMAP_API void lmap_client_options_init(lmap_client_options *opts);

/** The longest bearer token, in bytes. */
#define LMAP_TOKEN_MAX 4095

/** Reads a bearer token from the file at `path` by the one rule that
 *  lmapd, `lmap query` and the Python binding share for --token-file: the
 *  file's first line, without its line break and without trailing spaces,
 *  tabs and carriage returns (leading ones are kept). `buf` receives the
 *  token, NUL-terminated; *len, when `len` is not NULL, its length.
 *  Returns 0, or: LMAP_EIO (the file cannot be opened or read),
 *  LMAP_ETOOBIG (the line is longer than LMAP_TOKEN_MAX bytes: refused,
 *  never cut), LMAP_EINVAL (the line is empty or holds a NUL byte, or
 *  `path` or `buf` is NULL). On failure `buf` holds "" and, when `errbuf`
 *  is not NULL, it receives "PATH: reason", cut to `errcap` bytes.
 *  Ownership: all buffers are the caller's; nothing is kept. */
LMAP_API int lmap_token_read(const char *path, char buf[LMAP_TOKEN_MAX + 1],
                             size_t *len, char *errbuf, size_t errcap);

/** Creates a handle for `urls`, a comma-separated list of base URLs
 *  ("http://host:port", optionally with a path prefix; spaces around commas
 *  are ignored). `opts` may be NULL. Nothing is connected yet.
 *  On failure *out is NULL and, when `errbuf` is not NULL, it receives a
 *  sentence of at most LMAP_ERRBUF_SIZE bytes naming the problem.
 *  Returns 0, LMAP_EINVAL (bad URL or option), LMAP_EIO (`opts->ca_file`
 *  cannot be read), LMAP_ENOMEM, or LMAP_EINTERNAL (libcurl failed to
 *  initialise).
 *  Ownership: *out is the caller's, freed with lmap_client_free(); `urls`,
 *  `opts->token` and `opts->ca_file` are copied. */
LMAP_API int lmap_client_new(const char *urls, const lmap_client_options *opts,
                             lmap_client **out, char *errbuf);

/** The same with the URLs as an array of `n_urls` strings (1 to
 *  LMAP_MAX_ENDPOINTS, none NULL). Returns what lmap_client_new() returns;
 *  LMAP_EINVAL also for `n_urls` 0 or above LMAP_MAX_ENDPOINTS, or a NULL
 *  URL. Ownership as for lmap_client_new(): the strings are copied. */
LMAP_API int lmap_client_new_array(const char *const *urls, size_t n_urls,
                                   const lmap_client_options *opts,
                                   lmap_client **out, char *errbuf);

/** Closes the connections and frees the handle. Accepts NULL. */
LMAP_API void lmap_client_free(lmap_client *c);

/** How a query's box is read; see docs/POOLING.md. */
typedef enum lmap_box_format {
  LMAP_BOX_XYXY = 0,   /**< (x0, y0, x1, y1): fractions of width and height */
  LMAP_BOX_RELABEL = 1 /**< the official ReLabel tuple, official arithmetic */
} lmap_box_format;

/** One query: the image id and the crop box. */
typedef struct lmap_query {
  const char *id; /**< read during the call only */
  double box[4];
  int flip; /**< non-zero: the crop was mirrored left-right */
} lmap_query;

/** Pooling options shared by all the queries of a call. */
typedef struct lmap_label_options {
  int output_size;            /**< G: a G x G grid of labels; default 1 */
  lmap_box_format box_format; /**< default LMAP_BOX_XYXY */
  int softmax; /**< 1 (default): probabilities; 0: pooled logits */
} lmap_label_options;

/** Fills `opts` with the defaults. */
LMAP_API void lmap_label_options_init(lmap_label_options *opts);

/** Dense soft labels of `n` queries (1 <= n <= the server's --max-batch),
 *  written as float32 to `out`: [n, C] when G == 1, [n, C, G, G] otherwise,
 *  C-order. `out_len` is the number of floats `out` holds and must equal the
 *  answer's size exactly (C is lmap_info.num_classes). Transported as
 *  sparse binary cells (see lmap_client_set_answer_form) or .npy, written
 *  into `out` as it arrives and checked value by value: with softmax each
 *  is a probability in [0, 1], without it a finite logit.
 *  `opts` may be NULL. The first call of a handle also asks /v1/info,
 *  unless lmap_client_info() did.
 *  Returns 0, or:
 *  - LMAP_EINVAL: NULL queries or `out`, n == 0, output_size not in 1..1024,
 *    an unknown box_format;
 *  - LMAP_EBADID, LMAP_EBADBOX: a NULL id or a non-finite box (field names
 *    the query), or the server's refusal of one;
 *  - LMAP_ERANGE: `out_len` is not n * C * G * G for the store's C (found
 *    before the labels are asked for, or, when the store was replaced
 *    after the handle last asked /v1/info, from an answer of the new
 *    store's shape, which is then asked again to tell);
 *  - LMAP_EPROTOCOL: no endpoint gave the answer asked for (another shape,
 *    a value that cannot be a label, not .npy: the message says which);
 *  - LMAP_EUNAVAILABLE, LMAP_ETIMEOUT: no endpoint answered;
 *  - any code of the server's answer (LMAP_ENOTFOUND, LMAP_ETOOBIG,
 *    LMAP_EUNAUTHORIZED, a 5xx's code...); LMAP_ENOMEM.
 *  On failure the contents of `out` are unspecified: they may hold part of
 *  a refused answer. `out` stays the caller's; nothing is kept after the
 *  call. */
LMAP_API int lmap_client_labels(lmap_client *c, const lmap_query *queries,
                                size_t n, const lmap_label_options *opts,
                                float *out, size_t out_len);

/** How lmap_client_labels() asks for its dense labels. Both fill `out`
 *  with the same floats, bit for bit. */
typedef enum lmap_answer_form {
  /** Sparse binary cells (application/x-lmap-sparse: each cell's rest and
   *  the classes its crop touched), expanded into `out` by liblmap: about
   *  1/30 of the bytes of .npy for 1,000 classes, and the default. A
   *  server without the form (lmapd 0.2.0) answers .npy, which is read
   *  as well. */
  LMAP_ANSWER_SPARSE = 0,
  /** The dense .npy array, `out` byte for byte. */
  LMAP_ANSWER_NPY = 1
} lmap_answer_form;

/** Sets the answer form of the handle's later lmap_client_labels() calls.
 *  Returns 0, or LMAP_EINVAL for a NULL handle or an unknown form. */
LMAP_API int lmap_client_set_answer_form(lmap_client *c, lmap_answer_form form);

/** Sparse soft labels: for each query and each of its G*G cells, the classes
 *  with a non-zero pooled logit, by decreasing value, and `rest`, the value
 *  each other class has (0 with softmax off). Free with lmap_sparse_free().
 *  Cell j of query i is index i*cells + j; its entries are
 *  [offsets[index], offsets[index + 1]) of `classes` and `values`. */
typedef struct lmap_sparse {
  size_t n;              /**< queries */
  size_t cells;          /**< G * G */
  const size_t *offsets; /**< n * cells + 1 */
  const int32_t *classes;
  const float *values; /**< probabilities, or logits with softmax off */
  const float *rest;   /**< n * cells */
} lmap_sparse;

/** Fetches sparse labels for `n` queries into a new *out (NULL on failure).
 *  Each cell is checked: at most C classes, each an integer below C,
 *  finite values; with softmax "probs" and a `rest` in [0, 1], without it
 *  "logits" and a `rest` of 0. The answer is read whole before it is
 *  parsed, so its size is capped by a bound computed from n, G, C and
 *  K * H * W (docs/CLIENT.md). When an answer is refused and the store's
 *  description was known from an earlier call, it is asked again and, if
 *  the store changed, the call is repeated once.
 *  Returns 0, or the codes of lmap_client_labels() but LMAP_ERANGE.
 *  Ownership: *out is the caller's, one allocation freed with
 *  lmap_sparse_free(); the arrays it points to live as long as it does. */
LMAP_API int lmap_client_sparse(lmap_client *c, const lmap_query *queries,
                                size_t n, const lmap_label_options *opts,
                                lmap_sparse **out);

/** Frees a sparse result and the arrays it points to. Accepts NULL. */
LMAP_API void lmap_sparse_free(lmap_sparse *s);

/** Fetches the raw map of `id` as the official float32 [2, K, H, W] tensor
 *  (plane 0 scores, plane 1 class indices). `out_len` must be 2*K*H*W for
 *  the store's K, H, W. `shape`, when not NULL, receives {2, K, H, W}.
 *  The answer is checked as it arrives: finite scores, class indices whole
 *  numbers below C. The first call of a handle also asks /v1/info, unless
 *  lmap_client_info() did.
 *  Returns 0, or: LMAP_EBADID (a NULL, empty or too long id, or the
 *  server's refusal), LMAP_EINVAL (`out` NULL), LMAP_ERANGE (`out_len` is
 *  not 2*K*H*W, found before the map is asked for or as for labels from a
 *  replaced store's answer), LMAP_ENOTFOUND,
 *  LMAP_EPROTOCOL, LMAP_EUNAVAILABLE, LMAP_ETIMEOUT, another code of the
 *  server's answer, LMAP_ENOMEM. On failure the contents of `out` and
 *  `shape` are unspecified. */
LMAP_API int lmap_client_map(lmap_client *c, const char *id, float *out,
                             size_t out_len, uint32_t shape[4]);

/** What a server's store holds. */
typedef struct lmap_info {
  uint32_t num_classes; /**< C */
  uint32_t top_k;       /**< K */
  uint32_t height;      /**< H */
  uint32_t width;       /**< W */
  uint64_t records;
} lmap_info;

/** Fetches the store's description (and keeps it in the handle: later
 *  calls check their answers against it). `info` and `json` may each be
 *  NULL. A document over 8 MiB is refused unread.
 *  Returns 0, or LMAP_EPROTOCOL (not a description: the message names the
 *  field), LMAP_EUNAVAILABLE, LMAP_ETIMEOUT, a code of the server's answer
 *  (LMAP_EUNAUTHORIZED...), LMAP_ENOMEM. On failure *json is NULL and
 *  *info unchanged.
 *  Ownership: *json is the caller's, freed with lmap_free(). */
LMAP_API int lmap_client_info(lmap_client *c, lmap_info *info, char **json);

/** Asks whether a server is ready to serve (GET /readyz, which needs no
 *  token): the servers in turn, as any call, until one answers 200; that
 *  one becomes the endpoint. A server that is draining, or whose store is
 *  unavailable or damaged, answers 503 and the next is asked.
 *  Returns 0, or LMAP_EUNAVAILABLE (none ready: the message names each
 *  server and its reason, "not ready (draining): ..." for lmapd),
 *  LMAP_ETIMEOUT, LMAP_EPROTOCOL (an answer over 64 KiB), LMAP_ENOMEM.
 *  Ownership: nothing is returned. */
LMAP_API int lmap_client_ready(lmap_client *c);

/** What went wrong in the handle's last call. */
typedef struct lmap_error_detail {
  int code;                /**< the call's return value */
  int http_status;         /**< of the last answer; 0 when none came */
  const char *server_code; /**< the server's JSON "code", or the table's */
  const char *message;     /**< one sentence; with several endpoints it names
                                each endpoint tried and why it failed */
  const char *field;       /**< the request field at fault, or "" */
  const char *endpoint;    /**< base URL of the last endpoint tried, or "" */
  const char *request_id;  /**< X-Request-Id of the last answer, or "" */
} lmap_error_detail;

/** Fills `detail` for the last call (code 0 and empty strings after a
 *  success). Cannot fail; a NULL handle gives LMAP_EINVAL's detail.
 *  Ownership: the strings are the handle's (never NULL) and live until its
 *  next call or lmap_client_free(). */
LMAP_API void lmap_client_last_error(const lmap_client *c,
                                     lmap_error_detail *detail);

/** The last call's message alone ("" after a success). Borrowed: valid
 *  until the handle's next call. */
LMAP_API const char *lmap_client_errmsg(const lmap_client *c);

/** Base URL of the endpoint that answered the last successful call ("" before
 *  the first). Borrowed: valid until lmap_client_free(). */
LMAP_API const char *lmap_client_endpoint(const lmap_client *c);

/** Frees memory the library returned (strings). Accepts NULL. */
LMAP_API void lmap_free(void *p);

/** The library's version, "MAJOR.MINOR.PATCH": a static string, which may
 *  differ from LMAP_VERSION_STRING of the headers a program was built
 *  with. */
LMAP_API const char *lmap_version(void);

#ifdef __cplusplus
}
#endif
#endif /* LMAP_CLIENT_H */
