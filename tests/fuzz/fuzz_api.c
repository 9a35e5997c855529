/*
 * fuzz_api: lmapd's HTTP API (routing, query arguments, the JSON body of
 * POST /v1/labels, the options parser) driven through api_handle exactly
 * as http.c drives it, on a small real store made once at start-up.
 *
 * Input: a text request, one field per line, the rest the body:
 *
 *   T             '1' (odd byte): the API requires a bearer token
 *   METHOD        GET, HEAD, POST, anything
 *   URL           path?query, percent-decoded as libmicrohttpd does
 *   ACCEPT        the Accept header ("" = absent)
 *   AUTHORIZATION the Authorization header ("" = absent)
 *   BODY...       the bytes after the fifth newline (a body that starts
 *                 with "LMQ1" is sent as binary queries, Content-Type
 *                 application/x-lmap-queries)
 *
 * Every answer must be a well-formed one: a status the error table knows,
 * a JSON body that parses when the type says JSON, an error envelope
 * whose code maps back to the status, a .npy body with its magic, and
 * never a 5xx from a healthy store.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/api.h"
#include "fuzz.h"

#define MAX_ARGS 64

typedef struct args {
  char *name[MAX_ARGS], *value[MAX_ARGS];
  size_t n;
} args;

static const char *get_arg(void *ctx, const char *name) {
  const args *a = ctx;
  for (size_t i = 0; i < a->n; i++)
    if (strcmp(a->name[i], name) == 0)
      return a->value[i];
  return NULL;
}

static int hex(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Decodes %XX in place, as MHD_http_unescape does (a malformed escape
 * stays as it is). The result is used as a C string, so a decoded NUL
 * ends it, as it does in libmicrohttpd. */
static void unescape(char *s) {
  char *w = s;
  for (char *r = s; *r; r++) {
    int hi, lo;
    if (r[0] == '%' && (hi = hex(r[1])) >= 0 && (lo = hex(r[2])) >= 0) {
      *w++ = (char)(hi << 4 | lo);
      r += 2;
    } else {
      *w++ = *r;
    }
  }
  *w = '\0';
}

/* Splits "a=1&b&c=2" in place; a name without '=' has no value (NULL), as
 * MHD reports it. */
static void parse_query(char *q, args *a) {
  a->n = 0;
  while (q && *q && a->n < MAX_ARGS) {
    char *amp = strchr(q, '&');
    if (amp)
      *amp = '\0';
    char *eq = strchr(q, '=');
    if (eq)
      *eq = '\0';
    unescape(q);
    if (eq)
      unescape(eq + 1);
    a->name[a->n] = q;
    a->value[a->n++] = eq ? eq + 1 : NULL;
    q = amp ? amp + 1 : NULL;
  }
}

static api *apis[2]; /* [0] open, [1] with a token */
static api_worker *workers[2];

static void cleanup(void) {
  for (int i = 0; i < 2; i++) {
    api_worker_free(workers[i]);
    api_free(apis[i]);
  }
}

static void init(void) {
  char path[600];
  fuzz_path(path, sizeof path, "api.lmap");
  fuzz_make_store(path, &FUZZ_STORE_F16);
  for (int i = 0; i < 2; i++) {
    store *s;
    diag d;
    diag_clear(&d);
    /* A small batch cap and answer cap keep each input fast; the code
     * paths are the same as with the defaults. */
    if (store_open(path, &s, &d) != 0 || api_new(s, 16, &apis[i], &d) != 0) {
      fprintf(stderr, "fuzz_api: %s\n", diag_text(&d));
      abort();
    }
    api_set_max_answer(apis[i], 4u << 20);
    if ((workers[i] = api_worker_new(apis[i])) == NULL)
      abort();
  }
  static const char token[] = "fuzz-token";
  if (api_set_token(apis[1], token, sizeof token - 1) != 0)
    abort();
  atexit(cleanup);
}

/* The next line of [*p, end) as a NUL-terminated copy in `out`. */
static char *line(const uint8_t **p, const uint8_t *end, char *out,
                  size_t cap) {
  const uint8_t *nl = memchr(*p, '\n', (size_t)(end - *p));
  size_t n = (size_t)((nl ? nl : end) - *p);
  if (n >= cap)
    n = cap - 1;
  memcpy(out, *p, n);
  out[n] = '\0';
  *p = nl ? nl + 1 : end;
  return out;
}

static void check_answer(const api_response *r) {
  if (r->status < 200 || r->status > 599 || r->content_type == NULL)
    abort();
  if (r->status >= 500) {
    fprintf(stderr, "fuzz_api: %d from a healthy store: %.*s\n", r->status,
            (int)(r->body.len > 300 ? 300 : r->body.len), r->body.data);
    abort();
  }
  if (strcmp(r->content_type, "application/json") == 0) {
    json_error_t e;
    json_t *doc = json_loadb(r->body.data, r->body.len, 0, &e);
    if (doc == NULL) {
      fprintf(stderr, "fuzz_api: the answer is not JSON (%s)\n", e.text);
      abort();
    }
    if (r->status >= 400) {
      json_t *err = json_object_get(doc, "error");
      const char *code = json_string_value(json_object_get(err, "code"));
      if (code == NULL || !json_is_string(json_object_get(err, "message")) ||
          lmap_err_http_status(lmap_err_from_code(code)) != r->status) {
        fprintf(stderr, "fuzz_api: a %d without a matching error body\n",
                r->status);
        abort();
      }
    }
    json_decref(doc);
  } else if (strcmp(r->content_type, "application/x-npy") == 0) {
    if (r->status != 200 || r->body.len < 10 ||
        memcmp(r->body.data, "\x93NUMPY", 6) != 0)
      abort();
  }
}

/* libFuzzer calls this before the first input: making the store (over a
 * second, more on a busy machine) then does not count against the first
 * input's timeout. driver.c does not call it; the first input does. */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  init();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (apis[0] == NULL)
    init();
  if (size == 0)
    return 0;
  const uint8_t *p = data, *end = data + size;
  char tline[8], method[64], url[8192], accept[512], auth[512];
  int protected = line(&p, end, tline, sizeof tline)[0] & 1;
  line(&p, end, method, sizeof method);
  line(&p, end, url, sizeof url);
  line(&p, end, accept, sizeof accept);
  line(&p, end, auth, sizeof auth);
  char *query = strchr(url, '?');
  if (query)
    *query++ = '\0';
  unescape(url);
  args a;
  parse_query(query, &a);
  /* The body in a buffer of its own size, so that a read past it is
   * caught. */
  size_t body_len = (size_t)(end - p);
  uint8_t *body = body_len ? malloc(body_len) : NULL;
  if (body_len && body == NULL)
    return 0;
  if (body_len)
    memcpy(body, p, body_len);
  api_request req = {.method = method,
                     .path = url,
                     .arg = get_arg,
                     .arg_ctx = &a,
                     .accept = accept[0] ? accept : NULL,
                     .authorization = auth[0] ? auth : NULL,
                     .content_type =
                         body_len >= 4 && memcmp(body, "LMQ1", 4) == 0
                             ? "application/x-lmap-queries"
                             : "application/json",
                     .body = body,
                     .body_len = body_len};
  api_response *r = api_handle(workers[protected], &req);
  check_answer(r);
  api_observe(apis[protected], r, 0.1);
  free(body);
  return 0;
}
