/*
 * The HTTP API without HTTP: api_handle on a real store made by `lmap
 * synth`, as http.c drives it (an api_request in, an api_response out).
 * Routes and methods, the answers against `lmap get` (the same item through
 * the CLI's front end) and against each other (.npy against JSON), every
 * kind of refusal with its status, code and field, the bearer token, the
 * answer cap, draining, and a swap to another store.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "daemon/api.h"
#include "store/store.h"
#include "test.h"

/* Query arguments of one request, as MHD would hand them over. */
typedef struct args {
  const char *name[8], *value[8];
  int n;
} args;

static const char *get_arg(void *ctx, const char *name) {
  const args *a = ctx;
  for (int i = 0; i < a->n; i++)
    if (strcmp(a->name[i], name) == 0)
      return a->value[i];
  return NULL;
}

/* "path?a=1&b=2" split into the path and its arguments (no escapes). */
static api_response *call(api_worker *w, const char *method, const char *url,
                          const char *body, const char *accept,
                          const char *authorization) {
  static char path[512];
  static args a;
  snprintf(path, sizeof path, "%s", url);
  a.n = 0;
  char *q = strchr(path, '?');
  if (q) {
    *q++ = '\0';
    for (char *tok = strtok(q, "&"); tok && a.n < 8; tok = strtok(NULL, "&")) {
      char *eq = strchr(tok, '=');
      if (eq)
        *eq++ = '\0';
      a.name[a.n] = tok;
      a.value[a.n++] = eq;
    }
  }
  api_request req = {.method = method,
                     .path = path,
                     .arg = get_arg,
                     .arg_ctx = &a,
                     .accept = accept,
                     .authorization = authorization,
                     .body = (const uint8_t *)body,
                     .body_len = body ? strlen(body) : 0};
  return api_handle(w, &req);
}

static json_t *parse(const api_response *r) {
  json_error_t e;
  json_t *j = json_loadb(r->body.data, r->body.len, 0, &e);
  if (j == NULL) {
    fprintf(stderr, "not JSON (%s): %.*s\n", e.text, (int)r->body.len,
            r->body.data);
    exit(1);
  }
  return j;
}

/* Status, error code and (when `field` is not NULL) the error's field;
 * on a difference, the caller's line and the whole answer. */
#define expect_error(r, status, code, field)                                   \
  expect_error_at(__LINE__, r, status, code, field)

static void expect_error_at(int line, const api_response *r, int status,
                            const char *code, const char *field) {
  json_t *j = parse(r);
  json_t *e = json_object_get(j, "error");
  const char *got_code = json_string_value(json_object_get(e, "code"));
  const char *got_field = json_string_value(json_object_get(e, "field"));
  const char *message = json_string_value(json_object_get(e, "message"));
  test__checks++;
  if (r->status != status || got_code == NULL || strcmp(got_code, code) ||
      message == NULL || message[0] == '\0' ||
      (field && (got_field == NULL || strcmp(got_field, field)))) {
    fprintf(stderr, "line %d: expected %d %s (field %s), got %d %.*s\n", line,
            status, code, field ? field : "-", r->status, (int)r->body.len,
            r->body.data);
    exit(1);
  }
  json_decref(j);
}

static void run(const char *cmd) {
  if (system(cmd) != 0) {
    fprintf(stderr, "failed: %s\n", cmd);
    exit(1);
  }
}

/* The output of `cmd` (its first 1 MiB). */
static char *output_of(const char *cmd) {
  FILE *p = popen(cmd, "r");
  ASSERT(p != NULL);
  size_t cap = 1 << 20, n = 0;
  char *out = malloc(cap);
  ASSERT(out != NULL);
  n = fread(out, 1, cap - 1, p);
  out[n] = '\0';
  ASSERT_EQ(pclose(p), 0);
  return out;
}

static store *open_store(const char *path) {
  store *s = NULL;
  diag d;
  diag_clear(&d);
  ASSERT_EQ(store_open(path, &s, &d), 0);
  return s;
}

int main(void) {
  const char *tmp = getenv("LMAP_TEST_TMP"), *lmap = getenv("LMAP_BIN");
  if (tmp == NULL || lmap == NULL) {
    fprintf(stderr, "LMAP_TEST_TMP and LMAP_BIN are required (ctest sets "
                    "them)\n");
    return 1;
  }
  mkdir(tmp, 0755);
  char a_path[512], b_path[512], cmd[2048];
  snprintf(a_path, sizeof a_path, "%s/api-a.lmap", tmp);
  snprintf(b_path, sizeof b_path, "%s/api-b.lmap", tmp);
  snprintf(cmd, sizeof cmd,
           "'%s' synth -o '%s' --images 30 --seed 5 --force --no-progress "
           ">/dev/null 2>&1 && '%s' synth -o '%s' --images 40 --seed 6 "
           "--force --no-progress >/dev/null 2>&1",
           lmap, a_path, lmap, b_path);
  run(cmd);
  snprintf(cmd, sizeof cmd, "'%s' ids '%s'", lmap, a_path);
  char *ids = output_of(cmd);
  char id[256];
  ASSERT(sscanf(ids, "%255s", id) == 1);

  api *a = NULL;
  diag d;
  diag_clear(&d);
  store *s = open_store(a_path);
  ASSERT_EQ(api_new(s, 8, &a, &d), 0);
  api_worker *w = api_worker_new(a);
  ASSERT(w != NULL);
  char url[512];

  /* Health, info, classes. */
  ASSERT_EQ(call(w, "GET", "/livez", NULL, NULL, NULL)->status, 200);
  ASSERT_EQ(call(w, "GET", "/readyz", NULL, NULL, NULL)->status, 200);
  api_response *r = call(w, "GET", "/v1/info", NULL, NULL, NULL);
  ASSERT_EQ(r->status, 200);
  json_t *info = parse(r);
  ASSERT_EQ(json_integer_value(json_object_get(info, "record_count")), 30);
  json_int_t classes = json_integer_value(json_object_get(info, "num_classes"));
  ASSERT(classes > 0);
  json_decref(info);
  /* `lmap synth` stores have no class names. */
  expect_error(call(w, "GET", "/v1/classes", NULL, NULL, NULL), 404,
               "not_found", NULL);
  r = call(w, "GET", "/metrics", NULL, NULL, NULL);
  ASSERT_EQ(r->status, 200);
  ASSERT(strstr(r->body.data, "lmap_store_records 30\n") != NULL);

  /* A GET is the item `lmap get` prints for the same query, byte for
   * byte (the CLI's front end, the same pooling). */
  snprintf(url, sizeof url, "/v1/labels/%s?box=0.1,0.2,0.7,0.9&format=sparse",
           id);
  r = call(w, "GET", url, NULL, NULL, NULL);
  ASSERT_EQ(r->status, 200);
  snprintf(cmd, sizeof cmd,
           "'%s' get '%s' '%s' --box 0.1,0.2,0.7,0.9 --format sparse", lmap,
           a_path, id);
  char *cli = output_of(cmd);
  size_t cli_len = strlen(cli);
  while (cli_len && cli[cli_len - 1] == '\n')
    cli[--cli_len] = '\0';
  ASSERT_EQ(r->body.len, cli_len);
  ASSERT(memcmp(r->body.data, cli, cli_len) == 0);
  free(cli);

  /* Dense JSON and .npy of the same batch agree value by value. */
  char batch[1024];
  snprintf(batch, sizeof batch,
           "{\"queries\": [{\"id\": \"%s\", \"box\": [0, 0, 1, 1]}, "
           "{\"id\": \"%s\", \"box\": [0.25, 0.25, 0.5, 0.75], "
           "\"flip\": true}]}",
           id, id);
  r = call(w, "POST", "/v1/labels", batch, NULL, NULL);
  ASSERT_EQ(r->status, 200);
  json_t *dense = parse(r);
  json_t *results = json_object_get(dense, "results");
  ASSERT_EQ(json_array_size(results), 2);
  r = call(w, "POST", "/v1/labels", batch, "application/x-npy", NULL);
  ASSERT_EQ(r->status, 200);
  ASSERT(strncmp(r->content_type, "application/x-npy", 17) == 0);
  ASSERT(memcmp(r->body.data, "\x93NUMPY", 6) == 0);
  size_t header = 10 + (size_t)((unsigned char)r->body.data[8] |
                                (unsigned char)r->body.data[9] << 8);
  ASSERT_EQ(r->body.len, header + 2 * (size_t)classes * sizeof(float));
  const float *npy = (const float *)(r->body.data + header);
  for (size_t q = 0; q < 2; q++) {
    json_t *probs = json_object_get(json_array_get(results, q), "probs");
    ASSERT_EQ(json_array_size(probs), (size_t)classes);
    double sum = 0;
    for (size_t c = 0; c < (size_t)classes; c++) {
      double v = json_real_value(json_array_get(probs, c));
      ASSERT_NEAR(npy[q * (size_t)classes + c], v, 1e-7);
      sum += v;
    }
    ASSERT_NEAR(sum, 1.0, 1e-4);
  }
  json_decref(dense);

  /* Refusals: status, code and field. */
  expect_error(call(w, "DELETE", "/v1/info", NULL, NULL, NULL), 405,
               "method_not_allowed", NULL);
  r = call(w, "PUT", "/v1/labels", "{}", NULL, NULL);
  ASSERT_EQ(r->status, 405);
  ASSERT(r->allow != NULL && strstr(r->allow, "POST") != NULL);
  expect_error(call(w, "GET", "/v1/nothing", NULL, NULL, NULL), 404,
               "not_found", NULL);
  expect_error(
      call(w, "GET", "/v1/labels/no_such_id?box=0,0,1,1", NULL, NULL, NULL),
      404, "not_found", NULL);
  expect_error(
      call(w, "GET", "/v1/labels/bad%2Fid?box=0,0,1,1", NULL, NULL, NULL), 400,
      "bad_id", "id");
  snprintf(url, sizeof url, "/v1/labels/%s?box=0.5,0,0.2,1", id);
  expect_error(call(w, "GET", url, NULL, NULL, NULL), 400, "bad_box", "box");
  snprintf(url, sizeof url, "/v1/labels/%s", id);
  expect_error(call(w, "GET", url, NULL, NULL, NULL), 400, "bad_box", "box");
  snprintf(url, sizeof url, "/v1/labels/%s?box=0,0,1,1&output_size=0", id);
  expect_error(call(w, "GET", url, NULL, NULL, NULL), 400, "invalid_argument",
               "output_size");
  snprintf(url, sizeof url, "/v1/labels/%s?box=0,0,1,1&format=xml", id);
  expect_error(call(w, "GET", url, NULL, NULL, NULL), 400, "invalid_argument",
               "format");
  expect_error(call(w, "POST", "/v1/labels", "{\"queries\": [", NULL, NULL),
               400, "bad_format", NULL);
  expect_error(call(w, "POST", "/v1/labels", "{\"queries\": []}", NULL, NULL),
               400, "invalid_argument", "queries");
  char nine[2048];
  size_t at = (size_t)snprintf(nine, sizeof nine, "{\"queries\": [");
  for (int i = 0; i < 9; i++)
    at += (size_t)snprintf(nine + at, sizeof nine - at,
                           "%s{\"id\": \"%s\", \"box\": [0, 0, 1, 1]}",
                           i ? ", " : "", id);
  snprintf(nine + at, sizeof nine - at, "]}");
  expect_error(call(w, "POST", "/v1/labels", nine, NULL, NULL), 413,
               "too_large", "queries");

  /* The answer cap: an output_size whose answer could pass it is refused
   * before pooling, its sparse form is not. */
  api_set_max_answer(a, 64 * 1024);
  snprintf(url, sizeof url, "/v1/labels/%s?box=0,0,1,1&output_size=16", id);
  expect_error(call(w, "GET", url, NULL, NULL, NULL), 413, "too_large",
               "output_size");
  api_set_max_answer(a, 0);
  ASSERT_EQ(call(w, "GET", url, NULL, NULL, NULL)->status, 200);

  /* The token: /v1/ only, with a challenge. */
  ASSERT_EQ(api_set_token(a, "s3cret", 6), 0);
  r = call(w, "GET", "/v1/info", NULL, NULL, NULL);
  expect_error(r, 401, "unauthorized", NULL);
  ASSERT(r->auth_challenge);
  expect_error(call(w, "GET", "/v1/info", NULL, NULL, "Bearer s3cre"), 401,
               "unauthorized", NULL);
  ASSERT_EQ(call(w, "GET", "/v1/info", NULL, NULL, "Bearer s3cret")->status,
            200);
  ASSERT_EQ(call(w, "GET", "/livez", NULL, NULL, NULL)->status, 200);

  /* A swap: the next request reads the other store. */
  ASSERT_EQ(api_swap(a, open_store(b_path), NULL), 2);
  r = call(w, "GET", "/v1/info", NULL, NULL, "Bearer s3cret");
  info = parse(r);
  ASSERT_EQ(json_integer_value(json_object_get(info, "record_count")), 40);
  json_decref(info);
  r = call(w, "GET", "/metrics", NULL, NULL, NULL);
  ASSERT(strstr(r->body.data, "lmap_store_generation 2\n") != NULL);

  /* Draining: /readyz turns 503, the rest is still served. */
  api_set_draining(a);
  r = call(w, "GET", "/readyz", NULL, NULL, NULL);
  ASSERT_EQ(r->status, 503);
  ASSERT(strstr(r->body.data, "draining") != NULL);
  {
    json_t *ready = parse(r), *e = json_object_get(ready, "error");
    ASSERT_STR(json_string_value(json_object_get(ready, "status")), "draining");
    ASSERT_STR(json_string_value(json_object_get(e, "code")), "unavailable");
    ASSERT(strncmp(json_string_value(json_object_get(e, "message")),
                   "not ready (draining): ", 22) == 0);
    json_decref(ready);
  }
  ASSERT_EQ(call(w, "GET", "/livez", NULL, NULL, NULL)->status, 200);

  api_worker_free(w);
  api_free(a);
  free(ids);
  printf("test_api: %d checks passed\n", test__checks);
  return 0;
}
