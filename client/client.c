/*
 * client: liblmap's public API (include/lmap/client.h): the handle, its
 * endpoints, failover, and the last call's error.
 *
 * Every call is one request sent to one endpoint at a time. The order is
 * sticky: the endpoint that answered last goes first, endpoints that failed
 * within `down_ms` go last (they are still tried, so a call never fails
 * without trying every endpoint). An endpoint fails when no complete answer
 * comes (refused, reset, timeout, cut short) or the answer is a 5xx; the
 * same request then goes to the next endpoint. Nothing reaches the caller's
 * buffers before a complete answer, so a failover cannot lose or duplicate a
 * query. 4xx answers describe the request and are returned at once.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "lmap/client.h"
#include "shared/dynbuf.h"
#include "shared/sparsebin.h"
#include "transport.h"
#include "wire.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 2000
#define DEFAULT_TIMEOUT_MS 30000
#define DEFAULT_RETRIES 1
#define DEFAULT_BACKOFF_MS 50
#define DEFAULT_DOWN_MS 1000
#define MAX_RETRIES 10
#define MAX_URL_LEN 2048
#define MESSAGE_MAX 4096
#define REQUEST_MAX ((size_t)256 << 20)

typedef struct endpoint {
  char *base;            /* without a trailing '/' */
  int64_t down_until_ms; /* tried last until then */
} endpoint;

struct lmap_client {
  lmap_http *http;
  endpoint endpoints[LMAP_MAX_ENDPOINTS];
  size_t n_endpoints;
  size_t current; /* answered last */
  int retries;
  long backoff_ms, down_ms;
  dynbuf url, request, body;
  int json_queries;         /* lmap_client_options.json_queries */
  lmap_answer_form answers; /* lmap_client_set_answer_form */
  char labels_path[160];    /* POST /v1/labels with the batch's options */
  /* The last call. */
  const char *answered; /* base of the endpoint that answered, or "" */
  int err;
  long status;
  char server_code[64];
  char field[64];
  char request_id[64];
  const char *tried; /* base of the last endpoint tried, or "" */
  dynbuf message;
  size_t npy_shape[4]; /* of the last array answer (.npy or sparse) */
  int npy_differs;     /* the last array answer was refused for its shape,
                          which npy_shape then holds */
  /* The store's description, from the last /v1/info answer: what labels,
   * maps and sparse answers are checked against. */
  lmap_info info;
  int have_info;
};

/* ---- time --------------------------------------------------------------- */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* ---- the last call's error --------------------------------------------- */

static void clear_error(lmap_client *c) {
  c->err = 0;
  c->status = 0;
  c->server_code[0] = c->field[0] = c->request_id[0] = '\0';
  c->tried = "";
  lmap_dynbuf_reset(&c->message);
}

/* Appends to the message (silently cut at MESSAGE_MAX). */
static void add_message(lmap_client *c, const char *fmt, ...) {
  char text[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  size_t room = c->message.max - c->message.len;
  size_t len = strlen(text);
  lmap_dynbuf_add(&c->message, text, len < room ? len : room);
}

/* Sets the call's error: `code`, the table's code string, `field`, and a
 * message replacing any before it. Returns `code`. */
static int fail(lmap_client *c, int code, const char *field, const char *fmt,
                ...) {
  char text[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  c->err = code;
  snprintf(c->server_code, sizeof c->server_code, "%s", lmap_err_code(code));
  snprintf(c->field, sizeof c->field, "%s", field ? field : "");
  lmap_dynbuf_reset(&c->message);
  add_message(c, "%s", text);
  return code;
}

/* The table's first error with HTTP status `status`, for error answers
 * without a readable body (a proxy's page, say). */
static int error_of_status(long status) {
  if (status == 500)
    return LMAP_EINTERNAL; /* the table's first 500 is "out of memory" */
#define XX(name, value, msg, http, code)                                       \
  if (status == http)                                                          \
    return value;
  LMAP_ERRNO_MAP(XX)
#undef XX
  return status >= 500 ? LMAP_EUNAVAILABLE : LMAP_EPROTOCOL;
}

/* ---- handle ------------------------------------------------------------- */

void lmap_client_options_init(lmap_client_options *opts) {
  *opts =
      (lmap_client_options){.connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT_MS,
                            .timeout_ms = DEFAULT_TIMEOUT_MS,
                            .retries = DEFAULT_RETRIES,
                            .retry_backoff_ms = DEFAULT_BACKOFF_MS,
                            .down_ms = DEFAULT_DOWN_MS};
}

void lmap_label_options_init(lmap_label_options *opts) {
  *opts = (lmap_label_options){
      .output_size = 1, .box_format = LMAP_BOX_XYXY, .softmax = 1};
}

static int new_fail(char *errbuf, int code, const char *text) {
  if (errbuf)
    snprintf(errbuf, LMAP_ERRBUF_SIZE, "%s", text);
  return code;
}

int lmap_client_new_array(const char *const *urls, size_t n_urls,
                          const lmap_client_options *opts, lmap_client **out,
                          char *errbuf) {
  char err[256];
  if (out == NULL)
    return new_fail(errbuf, LMAP_EINVAL, "the output handle pointer is NULL");
  *out = NULL;
  if (urls == NULL || n_urls == 0)
    return new_fail(errbuf, LMAP_EINVAL, "no server URL given");
  if (n_urls > LMAP_MAX_ENDPOINTS) {
    snprintf(err, sizeof err, "%zu server URLs given, at most %d are allowed",
             n_urls, LMAP_MAX_ENDPOINTS);
    return new_fail(errbuf, LMAP_EINVAL, err);
  }
  lmap_client_options o;
  lmap_client_options_init(&o);
  if (opts) {
    if (opts->connect_timeout_ms > 0)
      o.connect_timeout_ms = opts->connect_timeout_ms;
    if (opts->timeout_ms > 0)
      o.timeout_ms = opts->timeout_ms;
    if (opts->retries != 0)
      o.retries = opts->retries < 0 ? 0 : opts->retries;
    if (opts->retry_backoff_ms > 0)
      o.retry_backoff_ms = opts->retry_backoff_ms;
    if (opts->down_ms > 0)
      o.down_ms = opts->down_ms;
    o.token = opts->token;
    o.ca_file = opts->ca_file;
    o.json_queries = opts->json_queries != 0;
  }
  if (o.retries > MAX_RETRIES) {
    snprintf(err, sizeof err, "retries %d is over the limit of %d", o.retries,
             MAX_RETRIES);
    return new_fail(errbuf, LMAP_EINVAL, err);
  }
  if (o.token && (o.token[0] == '\0' || strpbrk(o.token, "\r\n") != NULL))
    return new_fail(errbuf, LMAP_EINVAL,
                    "the token is empty or holds a line break");
  if (o.ca_file && access(o.ca_file, R_OK) != 0) {
    snprintf(err, sizeof err, "ca_file %.200s: %s", o.ca_file, strerror(errno));
    return new_fail(errbuf, LMAP_EIO, err);
  }
  for (size_t i = 0; i < n_urls; i++) {
    if (urls[i] == NULL)
      return new_fail(errbuf, LMAP_EINVAL, "a server URL is NULL");
    if (strlen(urls[i]) > MAX_URL_LEN)
      return new_fail(errbuf, LMAP_EINVAL,
                      "a server URL is longer than 2048 bytes");
    int rc = lmap_http_check_url(urls[i], err);
    if (rc)
      return new_fail(errbuf, rc, err);
  }
  lmap_client *c = calloc(1, sizeof *c);
  if (c == NULL)
    return new_fail(errbuf, LMAP_ENOMEM, "out of memory");
  c->retries = o.retries;
  c->json_queries = o.json_queries;
  c->backoff_ms = o.retry_backoff_ms;
  c->down_ms = o.down_ms;
  c->answered = c->tried = "";
  lmap_dynbuf_init(&c->url, MAX_URL_LEN + 1024);
  lmap_dynbuf_init(&c->request, REQUEST_MAX);
  lmap_dynbuf_init(&c->body, LMAP_HTTP_MAX_ANSWER);
  lmap_dynbuf_init(&c->message, MESSAGE_MAX);
  for (size_t i = 0; i < n_urls; i++) {
    size_t len = strlen(urls[i]);
    while (len && urls[i][len - 1] == '/')
      len--;
    c->endpoints[i].base = strndup(urls[i], len);
    if (c->endpoints[i].base == NULL) {
      lmap_client_free(c);
      return new_fail(errbuf, LMAP_ENOMEM, "out of memory");
    }
    c->n_endpoints++;
  }
  lmap_http_config cfg = {o.connect_timeout_ms, o.timeout_ms, o.token,
                          o.ca_file};
  int rc = lmap_http_new(&cfg, &c->http, err);
  if (rc) {
    lmap_client_free(c);
    return new_fail(errbuf, rc, err);
  }
  *out = c;
  return 0;
}

int lmap_client_new(const char *urls, const lmap_client_options *opts,
                    lmap_client **out, char *errbuf) {
  if (out)
    *out = NULL;
  if (urls == NULL)
    return new_fail(errbuf, LMAP_EINVAL, "no server URL given");
  char *copy = strdup(urls);
  if (copy == NULL)
    return new_fail(errbuf, LMAP_ENOMEM, "out of memory");
  const char *list[LMAP_MAX_ENDPOINTS];
  size_t n = 0; /* URLs seen; only the first LMAP_MAX_ENDPOINTS are kept */
  char *save = NULL;
  for (char *tok = strtok_r(copy, ",", &save); tok;
       tok = strtok_r(NULL, ",", &save)) {
    while (*tok == ' ' || *tok == '\t')
      tok++;
    char *end = tok + strlen(tok);
    while (end > tok && (end[-1] == ' ' || end[-1] == '\t'))
      *--end = '\0';
    if (*tok == '\0')
      continue; /* "a,,b" and a trailing comma */
    if (n < LMAP_MAX_ENDPOINTS)
      list[n] = tok;
    n++;
  }
  int rc;
  if (n > LMAP_MAX_ENDPOINTS) {
    char err[128];
    snprintf(err, sizeof err, "%zu server URLs given, at most %d are allowed",
             n, LMAP_MAX_ENDPOINTS);
    rc = new_fail(errbuf, LMAP_EINVAL, err);
  } else {
    rc = lmap_client_new_array(list, n, opts, out, errbuf);
  }
  free(copy);
  return rc;
}

void lmap_client_free(lmap_client *c) {
  if (c == NULL)
    return;
  lmap_http_free(c->http);
  for (size_t i = 0; i < c->n_endpoints; i++)
    free(c->endpoints[i].base);
  lmap_dynbuf_free(&c->url);
  lmap_dynbuf_free(&c->request);
  lmap_dynbuf_free(&c->body);
  lmap_dynbuf_free(&c->message);
  free(c);
}

/* ---- one call with failover --------------------------------------------- */

/* What a call sends and where an array answer goes (dest NULL: JSON,
 * which lands in c->body). */
typedef struct call {
  const char *path;
  const dynbuf *post;
  int binary_post;  /* `post` holds binary queries */
  size_t max_ok;    /* cap of a JSON 200 answer */
  const char *what; /* why that cap, for the message when it is passed */
  float *dest;
  size_t dest_len;
  size_t expect[4];
  int ndim;
  lmap_npy_values values;
  uint32_t classes;
  int sparse_ok; /* a sparse binary answer may fill dest */
} call;

/* The order of a pass: from the endpoint that answered last, those not
 * marked down first. */
static void pass_order(const lmap_client *c, size_t order[LMAP_MAX_ENDPOINTS]) {
  int64_t now = now_ms();
  size_t k = 0;
  for (int down = 0; down < 2; down++)
    for (size_t j = 0; j < c->n_endpoints; j++) {
      size_t i = (c->current + j) % c->n_endpoints;
      if ((c->endpoints[i].down_until_ms > now) == down)
        order[k++] = i;
    }
}

/* Reads an error answer into the call's error fields. */
static int answer_error(lmap_client *c, long status) {
  char code[64], message[LMAP_WIRE_ERRLEN], field[64];
  int err;
  if (lmap_wire_error(c->body.data, c->body.len, code, message, field) == 0) {
    err = lmap_err_from_code(code);
    if (err == 0)
      err = error_of_status(status);
    c->err = err;
    snprintf(c->server_code, sizeof c->server_code, "%s", code);
    snprintf(c->field, sizeof c->field, "%s", field);
    lmap_dynbuf_reset(&c->message);
    add_message(c, "%s", message);
    return err;
  }
  err = error_of_status(status);
  return fail(c, err, NULL, "HTTP %ld from %s without an lmap error body",
              status, c->tried);
}

/* How an endpoint failed, for the call's final code. */
typedef enum failure {
  FAIL_NONE,
  FAIL_TRANSPORT,
  FAIL_TIMEOUT,
  FAIL_HTTP,
  FAIL_ANSWER
} failure;

/* The success of an attempt: the endpoint goes first from now on and the
 * failures of earlier attempts are forgotten. */
static int succeeded(lmap_client *c, size_t i, const call *k,
                     const size_t shape[4]) {
  if (k->dest)
    memcpy(c->npy_shape, shape, sizeof c->npy_shape);
  c->endpoints[i].down_until_ms = 0;
  c->current = i;
  c->answered = c->endpoints[i].base;
  c->err = 0;
  c->server_code[0] = c->field[0] = '\0';
  lmap_dynbuf_reset(&c->message);
  return 0;
}

/* One attempt on endpoint `i`. Returns 0 on success, 1 when the endpoint
 * failed (*how says how; the reason is appended to `reasons`), or a final
 * error. */
static int attempt(lmap_client *c, size_t i, const call *k, dynbuf *reasons,
                   failure *how) {
  endpoint *ep = &c->endpoints[i];
  c->tried = ep->base;
  lmap_dynbuf_reset(&c->url);
  if (lmap_dynbuf_addstr(&c->url, ep->base) ||
      lmap_dynbuf_addstr(&c->url, k->path))
    return fail(c, LMAP_EINVAL, NULL,
                "the request URL is longer than %zu bytes", c->url.max);
  c->npy_differs = 0;
  lmap_npy_sink sink;
  lmap_sparsebin_sink sparse;
  lmap_http_sinks sinks = {k->dest ? &sink : NULL,
                           k->dest && k->sparse_ok ? &sparse : NULL};
  if (k->dest) {
    lmap_npy_sink_init(&sink, k->dest, k->dest_len, k->expect, k->ndim);
    lmap_npy_sink_values(&sink, k->values, k->classes);
  }
  if (sinks.sparse)
    lmap_sparsebin_sink_init(&sparse, k->dest, k->dest_len, k->expect,
                             k->values);
  lmap_http_outcome o;
  int rc = lmap_http_perform(c->http, c->url.data, k->post, k->binary_post,
                             k->max_ok, &c->body, k->dest ? &sinks : NULL, &o);
  c->status = o.status;
  snprintf(c->request_id, sizeof c->request_id, "%s", o.request_id);
  char reason[600] = "";
  *how = FAIL_NONE;
  size_t shape[4] = {0};
  int npy = strncasecmp(o.content_type, "application/x-npy", 17) == 0;
  int binsparse =
      sinks.sparse && strncasecmp(o.content_type, LMAP_SPARSEBIN_TYPE,
                                  strlen(LMAP_SPARSEBIN_TYPE)) == 0;
  if (rc == 0 && o.too_large &&
      !(k->dest && o.status == 200 && !npy && !binsparse)) {
    /* Not what was asked for, whatever its status: abandoned unread. */
    snprintf(reason, sizeof reason, "%s (%s)", o.error,
             o.status != 200 ? "the cap on error answers"
             : k->what       ? k->what
                             : "the cap on this answer");
    *how = FAIL_ANSWER;
  } else if (rc == 0 && !o.transport_failed && o.status == 200 && k->dest) {
    const char *sink_err = binsparse ? sparse.err : sink.err;
    int differs = binsparse ? sparse.shape_differs : sink.shape_differs;
    const size_t *got = binsparse ? sparse.shape : sink.shape;
    if (!npy && !binsparse) {
      snprintf(reason, sizeof reason,
               "the answer is not %s (Content-Type: %.60s)",
               sinks.sparse ? ".npy or sparse binary" : ".npy",
               o.content_type[0] ? o.content_type : "none");
      *how = FAIL_ANSWER;
    } else if ((rc = binsparse ? lmap_sparsebin_finish(&sparse)
                               : lmap_npy_finish(&sink)) == LMAP_ERANGE) {
      fail(c, rc, NULL, "%s", sink_err); /* the caller's buffer, not the
                                            answer */
    } else if (rc) {
      snprintf(reason, sizeof reason, "%s", sink_err);
      *how = FAIL_ANSWER;
      rc = 0;
    }
    memcpy(shape, got, sizeof shape);
    if (differs) {
      c->npy_differs = 1;
      memcpy(c->npy_shape, got, sizeof c->npy_shape);
    }
  }
  if (k->dest)
    lmap_npy_sink_free(&sink);
  if (rc)
    return rc == LMAP_ENOMEM ? fail(c, rc, NULL, "out of memory") : rc;
  if (o.transport_failed) {
    snprintf(reason, sizeof reason, "%s", o.error);
    *how = o.timed_out ? FAIL_TIMEOUT : FAIL_TRANSPORT;
  } else if (*how == FAIL_NONE && o.status == 200) {
    return succeeded(c, i, k, shape);
  } else if (*how == FAIL_NONE && o.status >= 400 && o.status < 500) {
    return answer_error(c, o.status);
  } else if (*how == FAIL_NONE) {
    /* 5xx (or a status lmapd never sends): keep the server's words. */
    *how = FAIL_HTTP;
    answer_error(c, o.status);
    snprintf(reason, sizeof reason, "HTTP %ld %s: %.400s", o.status,
             c->server_code, c->message.data ? c->message.data : "");
  }
  ep->down_until_ms = now_ms() + c->down_ms;
  if (reasons->len)
    lmap_dynbuf_addstr(reasons, "; ");
  lmap_dynbuf_addstr(reasons, ep->base);
  lmap_dynbuf_addstr(reasons, ": ");
  lmap_dynbuf_addstr(reasons, reason);
  return 1;
}

/* Sends `k` until an endpoint answers it: a pass over every endpoint, then
 * `retries` more after growing pauses. When all fail, the code says how the
 * last one failed: its server's code for a 5xx, LMAP_EPROTOCOL for an
 * answer that was not what was asked, LMAP_ETIMEOUT when every attempt
 * timed out, LMAP_EUNAVAILABLE otherwise. */
static int perform(lmap_client *c, const call *k) {
  dynbuf reasons;
  lmap_dynbuf_init(&reasons, MESSAGE_MAX);
  int all_timeouts = 1, attempts = 0, rc = 1;
  failure how = FAIL_NONE;
  long pause = c->backoff_ms;
  for (int pass = 0; pass <= c->retries && rc == 1; pass++) {
    if (pass) {
      sleep_ms(pause);
      pause *= 2;
    }
    size_t order[LMAP_MAX_ENDPOINTS];
    pass_order(c, order);
    for (size_t j = 0; j < c->n_endpoints && rc == 1; j++) {
      rc = attempt(c, order[j], k, &reasons, &how);
      all_timeouts &= how == FAIL_TIMEOUT;
      attempts++;
    }
  }
  if (rc == 1) {
    if (how == FAIL_HTTP) {
      rc = c->err;
      lmap_dynbuf_reset(&c->message);
    } else {
      rc = fail(c,
                how == FAIL_ANSWER ? LMAP_EPROTOCOL
                : all_timeouts     ? LMAP_ETIMEOUT
                                   : LMAP_EUNAVAILABLE,
                NULL, "%s", "");
    }
    if (attempts == 1)
      add_message(c, "%s", reasons.data);
    else
      add_message(c, "every endpoint failed (%d attempts): %s", attempts,
                  reasons.data);
  }
  lmap_dynbuf_free(&reasons);
  return rc;
}

/* ---- the store's description -------------------------------------------- */

/* GET /v1/info into c->body; on success c->info is the store's. */
static int fetch_info(lmap_client *c) {
  call k = {.path = "/v1/info",
            .max_ok = LMAP_WIRE_INFO_MAX,
            .what = "the cap on /v1/info documents"};
  int rc = perform(c, &k);
  if (rc)
    return rc;
  char err[LMAP_WIRE_ERRLEN];
  lmap_info info;
  rc = lmap_wire_info(c->body.data, c->body.len, &info, err);
  if (rc)
    return fail(c, rc, NULL, "%s: %s", c->answered, err);
  c->info = info;
  c->have_info = 1;
  return 0;
}

/* Makes sure c->info describes the store: fetched when the handle has none
 * yet, or again when `refresh` (the caller's idea of the store disagrees
 * with it: the store may have been replaced). */
static int store_info(lmap_client *c, int refresh) {
  return c->have_info && !refresh ? 0 : fetch_info(c);
}

/* The shape a labels call (`n` queries, G = `G`) or, with n == 0, a map
 * call expects of the store `info`. Returns the number of dims. */
static int expected_shape(const lmap_info *info, size_t n, size_t G,
                          size_t shape[4]) {
  if (n == 0) {
    size_t map[4] = {2, info->top_k, info->height, info->width};
    memcpy(shape, map, sizeof map);
    return 4;
  }
  size_t labels[4] = {n, info->num_classes, G, G};
  memcpy(shape, labels, sizeof labels);
  return G == 1 ? 2 : 4;
}

/* After .npy answers were refused for their shape (rc LMAP_EPROTOCOL):
 * if the store's description, asked again, gives that very shape, the
 * store was replaced since the handle last asked and the caller's buffer
 * is for the old one, which is the caller's LMAP_ERANGE. Otherwise the
 * refusal stands. */
static int shape_refused(lmap_client *c, int rc, const call *k, size_t n,
                         size_t G) {
  if (rc != LMAP_EPROTOCOL || !c->npy_differs)
    return rc;
  size_t got[4], want[4] = {0};
  memcpy(got, c->npy_shape, sizeof got);
  dynbuf saved;
  lmap_dynbuf_init(&saved, MESSAGE_MAX);
  lmap_dynbuf_addstr(&saved, c->message.data ? c->message.data : "");
  int ndim = store_info(c, 1) == 0 ? expected_shape(&c->info, n, G, want) : 0;
  int same = ndim == k->ndim;
  for (int i = 0; same && i < ndim; i++)
    same = want[i] == got[i];
  if (same)
    rc = fail(c, LMAP_ERANGE, NULL,
              "the store was replaced: it now has %" PRIu32
              " classes, K = %" PRIu32 ", H = %" PRIu32 ", W = %" PRIu32
              ", and out_len %zu is for the one before",
              c->info.num_classes, c->info.top_k, c->info.height, c->info.width,
              k->dest_len);
  else
    fail(c, rc, NULL, "%s", saved.data ? saved.data : "");
  lmap_dynbuf_free(&saved);
  return rc;
}

/* ---- the calls ---------------------------------------------------------- */

/* Checks the queries and resolves the options (NULL: the defaults). */
static int label_call(lmap_client *c, const lmap_query *queries, size_t n,
                      const lmap_label_options *opts, lmap_label_options *o) {
  if (opts == NULL)
    lmap_label_options_init(o);
  else
    *o = *opts;
  if (queries == NULL || n == 0)
    return fail(c, LMAP_EINVAL, "queries", "no queries given");
  if (o->output_size < 1 || o->output_size > 1024)
    return fail(c, LMAP_EINVAL, "output_size",
                "output_size %d is not in 1..1024", o->output_size);
  return 0;
}

/* The request of a batch into c->request and c->labels_path: binary
 * queries unless the client was made with json_queries. */
static int build_body(lmap_client *c, const lmap_query *queries, size_t n,
                      const lmap_label_options *opts, int sparse) {
  char field[64] = "", err[LMAP_WIRE_ERRLEN] = "";
  lmap_dynbuf_reset(&c->request);
  int rc;
  if (c->json_queries) {
    snprintf(c->labels_path, sizeof c->labels_path, "/v1/labels");
    rc = lmap_wire_labels_body(&c->request, queries, n, opts, sparse, field,
                               err);
  } else {
    rc = lmap_wire_labels_binary(&c->request, c->labels_path,
                                 sizeof c->labels_path, queries, n, opts,
                                 sparse, field, err);
  }
  if (rc == LMAP_ETOOBIG)
    return fail(c, rc, "queries", "the request is over %zu bytes",
                c->request.max);
  if (rc == LMAP_ENOMEM)
    return fail(c, rc, NULL, "out of memory");
  return rc ? fail(c, rc, field, "%s", err) : 0;
}

int lmap_client_labels(lmap_client *c, const lmap_query *queries, size_t n,
                       const lmap_label_options *opts, float *out,
                       size_t out_len) {
  if (c == NULL)
    return LMAP_EINVAL;
  clear_error(c);
  lmap_label_options o;
  int rc = label_call(c, queries, n, opts, &o);
  if (rc)
    return rc;
  size_t G = (size_t)o.output_size, cells = G * G;
  if (out == NULL)
    return fail(c, LMAP_EINVAL, NULL, "the output buffer is NULL");
  if (n > SIZE_MAX / cells || out_len == 0 || out_len % (n * cells) != 0)
    return fail(
        c, LMAP_ERANGE, NULL,
        "out_len %zu is not n * num_classes * G * G for n = %zu, G = %zu",
        out_len, n, G);
  /* The caller's buffer says how many classes it expects: the store must
   * agree (asked again once when it does not: it may have been replaced). */
  size_t classes = out_len / (n * cells);
  if ((rc = store_info(c, 0)) != 0 ||
      (classes != c->info.num_classes && (rc = store_info(c, 1)) != 0))
    return rc;
  if (classes != c->info.num_classes)
    return fail(
        c, LMAP_ERANGE, NULL,
        "out_len %zu is n * %zu * G * G (n = %zu, G = %zu), but the store has %" PRIu32
        " classes: out_len must be %zu",
        out_len, classes, n, G, c->info.num_classes,
        n * cells * (size_t)c->info.num_classes);
  if ((rc = build_body(c, queries, n, &o, 0)) != 0)
    return rc;
  /* Exactly the shape asked for: any other is the server's error. */
  call k = {.path = c->labels_path,
            .post = &c->request,
            .binary_post = !c->json_queries,
            .max_ok = LMAP_WIRE_ERROR_MAX,
            .dest = out,
            .dest_len = out_len,
            .expect = {n, classes, G, G},
            .ndim = G == 1 ? 2 : 4,
            .values = o.softmax ? LMAP_NPY_PROB : LMAP_NPY_FINITE,
            .sparse_ok = c->answers == LMAP_ANSWER_SPARSE};
  return shape_refused(c, perform(c, &k), &k, n, G);
}

int lmap_client_set_answer_form(lmap_client *c, lmap_answer_form form) {
  if (c == NULL || (form != LMAP_ANSWER_SPARSE && form != LMAP_ANSWER_NPY))
    return LMAP_EINVAL;
  c->answers = form;
  return 0;
}

int lmap_client_sparse(lmap_client *c, const lmap_query *queries, size_t n,
                       const lmap_label_options *opts, lmap_sparse **out) {
  if (c == NULL)
    return LMAP_EINVAL;
  clear_error(c);
  if (out == NULL)
    return fail(c, LMAP_EINVAL, NULL, "the output pointer is NULL");
  *out = NULL;
  lmap_label_options o;
  int rc = label_call(c, queries, n, opts, &o);
  if (rc == 0)
    rc = build_body(c, queries, n, &o, 1);
  if (rc)
    return rc;
  size_t cells = (size_t)o.output_size * (size_t)o.output_size, id_bytes = 0;
  for (size_t i = 0; i < n; i++)
    id_bytes += strlen(queries[i].id); /* checked non-NULL by build_body */
  /* Twice at most: when an answer is refused with a store description
   * known from before this call, the store may have been replaced since;
   * the description is asked again and, if it changed, the call repeated. */
  int had_info = c->have_info;
  if ((rc = store_info(c, 0)) != 0)
    return rc;
  for (int round = 0;; round++) {
    lmap_info info = c->info;
    char what[200];
    size_t max =
        lmap_wire_sparse_max(n, id_bytes, cells, info.num_classes,
                             (uint64_t)info.top_k * info.height * info.width);
    snprintf(
        what, sizeof what,
        "the most a sparse answer to %zu queries of %zu cell(s) of %" PRIu32
        " classes can take",
        n, cells, info.num_classes);
    call k = {.path = c->labels_path,
              .post = &c->request,
              .binary_post = !c->json_queries,
              .max_ok = max,
              .what = what};
    rc = perform(c, &k);
    if (rc == 0) {
      char err[LMAP_WIRE_ERRLEN];
      lmap_sparse_expect x = {.n = n,
                              .cells = cells,
                              .classes = info.num_classes,
                              .softmax = o.softmax ? 1 : 0};
      rc = lmap_wire_sparse_check(c->body.data, c->body.len, &x, out, err);
      if (rc)
        fail(c, rc, NULL, "%s: %s", c->answered, err);
    }
    if (rc != LMAP_EPROTOCOL || !had_info || round > 0)
      return rc;
    /* This call's error stands unless the store did change. */
    dynbuf saved;
    lmap_dynbuf_init(&saved, MESSAGE_MAX);
    lmap_dynbuf_addstr(&saved, c->message.data ? c->message.data : "");
    int changed =
        store_info(c, 1) == 0 &&
        (c->info.num_classes != info.num_classes ||
         c->info.top_k != info.top_k || c->info.height != info.height ||
         c->info.width != info.width);
    if (!changed)
      fail(c, LMAP_EPROTOCOL, NULL, "%s", saved.data ? saved.data : "");
    lmap_dynbuf_free(&saved);
    if (!changed)
      return LMAP_EPROTOCOL;
  }
}

void lmap_sparse_free(lmap_sparse *s) {
  free(s); /* one block: see lmap_wire_sparse */
}

int lmap_client_map(lmap_client *c, const char *id, float *out, size_t out_len,
                    uint32_t shape[4]) {
  if (c == NULL)
    return LMAP_EINVAL;
  clear_error(c);
  if (id == NULL || id[0] == '\0')
    return fail(c, LMAP_EBADID, "id", "the id is NULL or empty");
  if (out == NULL)
    return fail(c, LMAP_EINVAL, NULL, "the output buffer is NULL");
  if (out_len == 0)
    return fail(c, LMAP_ERANGE, NULL, "out_len is 0, not 2 * K * H * W");
  /* As for labels: the store's K, H, W must give out_len. */
  int rc = store_info(c, 0);
  size_t want = 0;
  for (int round = 0; rc == 0 && round < 2; round++) {
    want = (size_t)2 * c->info.top_k * c->info.height * c->info.width;
    if (want == out_len || round)
      break;
    rc = store_info(c, 1);
  }
  if (rc)
    return rc;
  if (want != out_len)
    return fail(
        c, LMAP_ERANGE, NULL,
        "out_len %zu is not 2 * K * H * W = %zu for the store's K = %" PRIu32
        ", H = %" PRIu32 ", W = %" PRIu32,
        out_len, want, c->info.top_k, c->info.height, c->info.width);
  dynbuf path;
  lmap_dynbuf_init(&path, MAX_URL_LEN);
  rc = lmap_dynbuf_addstr(&path, "/v1/maps/");
  if (rc == 0)
    rc = lmap_wire_path_escape(&path, id);
  if (rc) {
    lmap_dynbuf_free(&path);
    return fail(c, rc == LMAP_ENOMEM ? rc : LMAP_EBADID, "id",
                "the id is too long");
  }
  call k = {.path = path.data,
            .max_ok = LMAP_WIRE_ERROR_MAX,
            .dest = out,
            .dest_len = out_len,
            .expect = {2, c->info.top_k, c->info.height, c->info.width},
            .ndim = 4,
            .values = LMAP_NPY_MAP,
            .classes = c->info.num_classes};
  rc = shape_refused(c, perform(c, &k), &k, 0, 0);
  lmap_dynbuf_free(&path);
  if (rc == 0 && shape)
    for (int i = 0; i < 4; i++)
      shape[i] = (uint32_t)c->npy_shape[i];
  return rc;
}

int lmap_client_info(lmap_client *c, lmap_info *info, char **json) {
  if (c == NULL)
    return LMAP_EINVAL;
  clear_error(c);
  if (json)
    *json = NULL;
  int rc = fetch_info(c);
  if (rc)
    return rc;
  if (info)
    *info = c->info;
  if (json && (*json = strdup(c->body.data)) == NULL)
    return fail(c, LMAP_ENOMEM, NULL, "out of memory");
  return 0;
}

int lmap_client_ready(lmap_client *c) {
  if (c == NULL)
    return LMAP_EINVAL;
  clear_error(c);
  call k = {.path = "/readyz",
            .max_ok = (size_t)64 << 10,
            .what = "the cap on /readyz answers"};
  return perform(c, &k);
}

/* ---- errors and odds ---------------------------------------------------- */

void lmap_client_last_error(const lmap_client *c, lmap_error_detail *d) {
  if (c == NULL) {
    *d = (lmap_error_detail){
        LMAP_EINVAL, 0, "invalid_argument", "the handle is NULL", "", "", ""};
    return;
  }
  *d = (lmap_error_detail){
      .code = c->err,
      .http_status = (int)c->status,
      .server_code = c->err ? c->server_code : "",
      .message = c->err && c->message.data ? c->message.data : "",
      .field = c->field,
      .endpoint = c->tried,
      .request_id = c->request_id,
  };
}

const char *lmap_client_errmsg(const lmap_client *c) {
  if (c == NULL)
    return "the handle is NULL";
  return c->err && c->message.data ? c->message.data : "";
}

const char *lmap_client_endpoint(const lmap_client *c) {
  return c ? c->answered : "";
}

void lmap_free(void *p) {
  free(p);
}

const char *lmap_version(void) {
  return LMAP_VERSION_STRING;
}
