/*
 * test_client: liblmap's public API against real lmapd processes.
 *
 * Every value the library returns is compared with what the lmap tool
 * computes on the same store (`lmap get`, `lmap info --json`, `lmap export`),
 * so a client that mangles a box, a layout or an option shows up as a
 * numeric difference, not only as an error code. Failure behaviour (dead,
 * hung, failing and cut-short endpoints, tokens, 4xx answers, kill -9 and
 * SIGTERM in the middle of a run) is driven with real daemons and small TCP
 * fakes from harness.c. The checks continue after a failure so that one run
 * lists every problem; the last line is the summary and the exit code is 1
 * when any check failed. No daemon survives the test (see harness.h).
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "lmap/client.h"

/* ---- checks that record and continue ---- */

static int g_checks, g_failed;
static const char *g_case = "setup";
static char g_failed_cases[2048];

static void mark_failed(void) {
  g_failed++;
  if (strstr(g_failed_cases, g_case) == NULL &&
      strlen(g_failed_cases) + strlen(g_case) + 2 < sizeof g_failed_cases) {
    if (g_failed_cases[0])
      strcat(g_failed_cases, " ");
    strcat(g_failed_cases, g_case);
  }
}

static int check_(int ok, const char *file, int line, const char *expr) {
  g_checks++;
  if (!ok) {
    fprintf(stderr, "FAIL [%s] %s:%d: %s\n", g_case, file, line, expr);
    mark_failed();
  }
  return ok;
}

static int check_rc_(int rc, int want, const lmap_client *c, const char *file,
                     int line, const char *expr) {
  g_checks++;
  if (rc == want)
    return 1;
  fprintf(stderr,
          "FAIL [%s] %s:%d: %s returned %d (%s), want %d (%s); message: %s\n",
          g_case, file, line, expr, rc, lmap_strerror(rc), want,
          lmap_strerror(want), c ? lmap_client_errmsg(c) : "(no handle)");
  mark_failed();
  return 0;
}

static int check_str_(const char *got, const char *want, const char *file,
                      int line, const char *expr) {
  g_checks++;
  if (got && want && strcmp(got, want) == 0)
    return 1;
  fprintf(stderr, "FAIL [%s] %s:%d: %s is \"%s\", want \"%s\"\n", g_case, file,
          line, expr, got ? got : "(null)", want ? want : "(null)");
  mark_failed();
  return 0;
}

static int check_has_(const char *hay, const char *needle, const char *file,
                      int line, const char *expr) {
  g_checks++;
  if (hay && needle && strstr(hay, needle))
    return 1;
  fprintf(stderr, "FAIL [%s] %s:%d: %s (\"%s\") does not contain \"%s\"\n",
          g_case, file, line, expr, hay ? hay : "(null)", needle);
  mark_failed();
  return 0;
}

#define CHECK(cond) check_((cond) != 0, __FILE__, __LINE__, #cond)
#define CHECK_RC(rc, want, c)                                                  \
  check_rc_((rc), (want), (c), __FILE__, __LINE__, #rc)
#define CHECK_STR(got, want) check_str_((got), (want), __FILE__, __LINE__, #got)
#define CHECK_HAS(hay, needle)                                                 \
  check_has_((hay), (needle), __FILE__, __LINE__, #hay)
#define REQUIRE(cond)                                                          \
  do {                                                                         \
    if (!CHECK(cond))                                                          \
      goto out;                                                                \
  } while (0)
#define REQUIRE_RC(rc, want, c)                                                \
  do {                                                                         \
    if (!CHECK_RC(rc, want, c))                                                \
      goto out;                                                                \
  } while (0)

/* ---- shared state ---- */

static char g_store[600];
static char **g_ids;
static size_t g_nids;
static uint32_t g_C, g_K, g_H, g_W;
static th_daemon *g_main; /* the healthy server most cases use */
static unsigned g_file_seq;

static void tmp_path(char *buf, size_t size, const char *what) {
  snprintf(buf, size, "%s/%s-%ld-%u", th_tmp(), what, (long)getpid(),
           g_file_seq++);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static double urand(void) {
  uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

/* A valid random box with full double precision (a client that prints
 * boxes with few digits changes the pooling and is caught). */
static void make_box(double b[4], lmap_box_format f) {
  double w = 0.05 + 0.95 * urand(), h = 0.05 + 0.95 * urand();
  if (f == LMAP_BOX_RELABEL) {
    /* (top, left, height, width) */
    b[0] = (1 - h) * urand();
    b[1] = (1 - w) * urand();
    b[2] = h;
    b[3] = w;
    if (b[0] + b[2] > 1)
      b[2] = 1 - b[0];
    if (b[1] + b[3] > 1)
      b[3] = 1 - b[1];
    return;
  }
  b[0] = (1 - w) * urand();
  b[1] = (1 - h) * urand();
  b[2] = b[0] + w < 1 ? b[0] + w : 1;
  b[3] = b[1] + h < 1 ? b[1] + h : 1;
}

static lmap_query *make_queries(size_t n, lmap_box_format f, size_t first_id) {
  lmap_query *q = calloc(n, sizeof *q);
  if (q == NULL)
    return NULL;
  for (size_t i = 0; i < n; i++) {
    q[i].id = g_ids[(first_id + i * 7) % g_nids];
    make_box(q[i].box, f);
    q[i].flip = urand() < 0.5;
  }
  return q;
}

static lmap_label_options label_opts(int G, lmap_box_format f, int softmax) {
  lmap_label_options o;
  lmap_label_options_init(&o);
  o.output_size = G;
  o.box_format = f;
  o.softmax = softmax;
  return o;
}

static lmap_client *connect_to(const char *urls, const char *token) {
  lmap_client_options o;
  lmap_client_options_init(&o);
  o.token = token;
  lmap_client *c = NULL;
  char err[LMAP_ERRBUF_SIZE] = "";
  int rc = lmap_client_new(urls, &o, &c, err);
  if (rc != 0)
    fprintf(stderr, "lmap_client_new(%s): %d %s\n", urls, rc, err);
  return c;
}

/* ---- references from the lmap tool ---- */

/* `lmap get STORE --queries FILE` for the queries: one JSON item per query,
 * as a JSON array, or NULL (reported) when the tool fails. */
static json_t *reference(const lmap_query *q, size_t n,
                         const lmap_label_options *o, int sparse) {
  char qpath[700], opath[700];
  tmp_path(qpath, sizeof qpath, "queries.jsonl");
  tmp_path(opath, sizeof opath, "items.jsonl");
  FILE *f = fopen(qpath, "w");
  if (f == NULL)
    return NULL;
  for (size_t i = 0; i < n; i++) {
    json_t *line = json_pack(
        "{s:s, s:[f,f,f,f], s:b, s:i, s:s, s:s, s:b}", "id", q[i].id, "box",
        q[i].box[0], q[i].box[1], q[i].box[2], q[i].box[3], "flip", q[i].flip,
        "output_size", o->output_size, "box_format",
        o->box_format == LMAP_BOX_RELABEL ? "relabel" : "xyxy", "format",
        sparse ? "sparse" : "dense", "softmax", o->softmax);
    char *text = json_dumps(line, JSON_COMPACT);
    fprintf(f, "%s\n", text);
    free(text);
    json_decref(line);
  }
  fclose(f);
  const char *argv[] = {th_lmap(), "get", g_store, "--queries", qpath, NULL};
  int rc = th_run(argv, opath);
  char *text = th_read_file(opath, NULL);
  json_t *items = json_array();
  for (char *line = text; rc == 0 && line && *line;) {
    char *nl = strchr(line, '\n');
    if (nl)
      *nl = '\0';
    json_t *item = json_loads(line, 0, NULL);
    if (item == NULL)
      break;
    json_array_append_new(items, item);
    line = nl ? nl + 1 : line + strlen(line);
  }
  free(text);
  remove(qpath);
  remove(opath);
  if (rc != 0 || json_array_size(items) != n) {
    fprintf(stderr, "lmap get --queries: exit %d, %zu items for %zu queries\n",
            rc, json_array_size(items), n);
    json_decref(items);
    return NULL;
  }
  return items;
}

/* The same item from the literal command line form
 * `lmap get STORE ID --box .. [--flip] [-G G] [--box-format relabel]
 * [--no-softmax] [--format sparse]`. */
static json_t *reference_cli(const lmap_query *q, const lmap_label_options *o,
                             int sparse) {
  char box[200], g[16], opath[700];
  snprintf(box, sizeof box, "%.17g,%.17g,%.17g,%.17g", q->box[0], q->box[1],
           q->box[2], q->box[3]);
  snprintf(g, sizeof g, "%d", o->output_size);
  tmp_path(opath, sizeof opath, "item.json");
  const char *argv[20];
  int a = 0;
  argv[a++] = th_lmap();
  argv[a++] = "get";
  argv[a++] = g_store;
  argv[a++] = q->id;
  argv[a++] = "--box";
  argv[a++] = box;
  if (q->flip)
    argv[a++] = "--flip";
  argv[a++] = "--output-size";
  argv[a++] = g;
  if (o->box_format == LMAP_BOX_RELABEL) {
    argv[a++] = "--box-format";
    argv[a++] = "relabel";
  }
  if (!o->softmax)
    argv[a++] = "--no-softmax";
  if (sparse) {
    argv[a++] = "--format";
    argv[a++] = "sparse";
  }
  argv[a] = NULL;
  int rc = th_run(argv, opath);
  json_t *item = rc == 0 ? json_load_file(opath, 0, NULL) : NULL;
  remove(opath);
  return item;
}

/* Largest |out - reference| over every value, or -1 (reported) when the
 * structure differs. `out` is [n, C] or [n, C, G, G]. */
static double dense_diff(const float *out, const lmap_query *q, size_t n, int G,
                         int softmax, json_t *items) {
  const char *key = softmax ? "probs" : "logits";
  size_t cells = (size_t)G * G;
  double worst = 0;
  for (size_t i = 0; i < n; i++) {
    json_t *item = json_array_get(items, i);
    const char *id = json_string_value(json_object_get(item, "id"));
    json_t *v = json_object_get(item, key);
    if (id == NULL || strcmp(id, q[i].id) != 0 || !json_is_array(v)) {
      fprintf(stderr, "reference item %zu: id or \"%s\" missing\n", i, key);
      return -1;
    }
    for (size_t cell = 0; cell < cells; cell++) {
      json_t *row = G == 1 ? v : json_array_get(v, cell);
      if (json_array_size(row) != g_C) {
        fprintf(stderr, "reference item %zu cell %zu: %zu values\n", i, cell,
                json_array_size(row));
        return -1;
      }
      for (size_t c = 0; c < g_C; c++) {
        double want = json_number_value(json_array_get(row, c));
        double got = out[(i * g_C + c) * cells + cell];
        double d = fabs(got - want);
        if (!(d <= worst)) /* also catches NaN */
          worst = isnan(d) ? INFINITY : d;
      }
    }
  }
  return worst;
}

/* Compares a sparse result with reference items: classes exactly, values
 * and rest to `tol`. Returns the number of mismatches (reported). */
static int sparse_mismatches(const lmap_sparse *s, const lmap_query *q,
                             size_t n, int G, int softmax, json_t *items,
                             double tol) {
  const char *key = softmax ? "probs" : "logits";
  size_t cells = (size_t)G * G;
  int bad = 0;
  if (s->n != n || s->cells != cells || s->offsets[0] != 0) {
    fprintf(stderr, "sparse: n %zu cells %zu offsets[0] %zu\n", s->n, s->cells,
            s->offsets[0]);
    return 1;
  }
  for (size_t i = 0; i < n && bad < 5; i++) {
    json_t *item = json_array_get(items, i);
    const char *id = json_string_value(json_object_get(item, "id"));
    if (id == NULL || strcmp(id, q[i].id) != 0) {
      bad++;
      continue;
    }
    json_t *cls = json_object_get(item, "classes"),
           *val = json_object_get(item, key),
           *rest = json_object_get(item, "rest");
    for (size_t cell = 0; cell < cells; cell++) {
      size_t idx = i * cells + cell;
      json_t *rc = G == 1 ? cls : json_array_get(cls, cell);
      json_t *rv = G == 1 ? val : json_array_get(val, cell);
      double rr = json_number_value(G == 1 ? rest : json_array_get(rest, cell));
      size_t lo = s->offsets[idx], hi = s->offsets[idx + 1];
      if (hi < lo || hi - lo != json_array_size(rc) ||
          json_array_size(rv) != json_array_size(rc)) {
        fprintf(stderr, "sparse query %zu cell %zu: %zu entries, want %zu\n", i,
                cell, hi >= lo ? hi - lo : 0, json_array_size(rc));
        bad++;
        continue;
      }
      for (size_t e = lo; e < hi; e++) {
        long long wc = json_integer_value(json_array_get(rc, e - lo));
        double wv = json_number_value(json_array_get(rv, e - lo));
        if (s->classes[e] != wc || !(fabs(s->values[e] - wv) <= tol)) {
          fprintf(stderr,
                  "sparse query %zu cell %zu entry %zu: (%d, %.9g) want "
                  "(%lld, %.9g)\n",
                  i, cell, e - lo, (int)s->classes[e], s->values[e], wc, wv);
          bad++;
          break;
        }
      }
      if (!(fabs(s->rest[idx] - rr) <= tol)) {
        fprintf(stderr, "sparse query %zu cell %zu: rest %.9g want %.9g\n", i,
                cell, s->rest[idx], rr);
        bad++;
      }
    }
  }
  return bad;
}

/* Reads a float32 .npy written by `lmap export`: its shape and data. */
static float *read_npy(const char *path, size_t shape[4], size_t *count) {
  size_t len;
  char *raw = th_read_file(path, &len);
  if (raw == NULL || len < 10 || memcmp(raw, "\x93NUMPY", 6) != 0) {
    free(raw);
    return NULL;
  }
  size_t hl, off;
  if (raw[6] == 1) {
    hl = (unsigned char)raw[8] | (size_t)(unsigned char)raw[9] << 8;
    off = 10;
  } else {
    hl = (unsigned char)raw[8] | (size_t)(unsigned char)raw[9] << 8 |
         (size_t)(unsigned char)raw[10] << 16 |
         (size_t)(unsigned char)raw[11] << 24;
    off = 12;
  }
  char *shp = strstr(raw + off, "'shape': (");
  if (off + hl > len || strstr(raw + off, "'<f4'") == NULL || shp == NULL) {
    free(raw);
    return NULL;
  }
  char *p = shp + 10;
  size_t total = 1;
  for (int i = 0; i < 4; i++) {
    shape[i] = strtoul(p, &p, 10);
    total *= shape[i];
    while (*p == ',' || *p == ' ')
      p++;
  }
  if (off + hl + total * 4 != len) {
    free(raw);
    return NULL;
  }
  float *data = malloc(total * sizeof *data);
  if (data)
    memcpy(data, raw + off + hl, total * sizeof *data);
  free(raw);
  *count = total;
  return data;
}

/* ---- cases ---- */

/* Calls that need no server: versions, defaults, the error table, NULL. */
static void case_basics(void) {
  g_case = "basics";
  CHECK_STR(lmap_version(), LMAP_VERSION_STRING);
  lmap_client_options o;
  memset(&o, 0x5a, sizeof o);
  lmap_client_options_init(&o);
  CHECK(o.connect_timeout_ms == 2000);
  CHECK(o.timeout_ms == 30000);
  CHECK(o.retries == 1);
  CHECK(o.retry_backoff_ms == 50);
  CHECK(o.down_ms == 1000);
  CHECK(o.token == NULL);
  lmap_label_options lo;
  memset(&lo, 0x5a, sizeof lo);
  lmap_label_options_init(&lo);
  CHECK(lo.output_size == 1);
  CHECK(lo.box_format == LMAP_BOX_XYXY);
  CHECK(lo.softmax == 1);

#define CHECK_ERR(name, value, msg, status, code)                              \
  CHECK(LMAP_E##name == (value));                                              \
  CHECK_STR(lmap_strerror(value), msg);                                        \
  CHECK_STR(lmap_err_code(value), code);                                       \
  CHECK(lmap_err_from_code(code) == (value));                                  \
  CHECK(lmap_err_http_status(value) == (status));
  LMAP_ERRNO_MAP(CHECK_ERR)
#undef CHECK_ERR
  CHECK_STR(lmap_strerror(-12345), "unknown error");
  CHECK_STR(lmap_strerror(0) ? "set" : NULL, "set");
  CHECK_STR(lmap_err_code(7), "unknown");
  CHECK(lmap_err_from_code("no_such_code") == 0);
  CHECK(lmap_err_from_code("") == 0);
  CHECK(lmap_err_http_status(-9999) == 500);

  /* Destructors accept NULL. */
  lmap_client_free(NULL);
  lmap_sparse_free(NULL);
  lmap_free(NULL);
  CHECK(1);
}

/* lmap_client_new / _new_array refuse what is not a usable list of base
 * URLs, with a sentence in errbuf and *out set to NULL. */
static void expect_new_fails(const char *urls, const char *needle) {
  char err[LMAP_ERRBUF_SIZE];
  memset(err, 'x', sizeof err);
  lmap_client *c = (lmap_client *)&err; /* must be overwritten with NULL */
  int rc = lmap_client_new(urls, NULL, &c, err);
  CHECK_RC(rc, LMAP_EINVAL, NULL);
  CHECK(c == NULL);
  CHECK(memchr(err, '\0', sizeof err) != NULL);
  if (memchr(err, '\0', sizeof err)) {
    CHECK(strlen(err) > 10);
    if (needle)
      CHECK_HAS(err, needle);
  }
  if (rc == 0 && c != (lmap_client *)&err)
    lmap_client_free(c);
  /* errbuf may be NULL. */
  c = NULL;
  rc = lmap_client_new(urls, NULL, &c, NULL);
  CHECK_RC(rc, LMAP_EINVAL, NULL);
  if (rc == 0)
    lmap_client_free(c);
}

static void case_new(void) {
  g_case = "new";
  char err[LMAP_ERRBUF_SIZE];
  expect_new_fails("", NULL);
  expect_new_fails("   ", NULL);
  expect_new_fails("ftp://x", "ftp://x");
  expect_new_fails("http://", NULL);
  expect_new_fails("127.0.0.1:8080", NULL);
  expect_new_fails("http://127.0.0.1:1,ftp://y", "ftp://y");
  expect_new_fails("http://127.0.0.1:1/?q=1", NULL);
  {
    lmap_client *c = (lmap_client *)&err;
    CHECK_RC(lmap_client_new(NULL, NULL, &c, err), LMAP_EINVAL, NULL);
    CHECK(c == NULL);
  }

  /* LMAP_MAX_ENDPOINTS is accepted, one more is not. */
  char list[2048] = "";
  for (int i = 0; i < LMAP_MAX_ENDPOINTS; i++) {
    char one[64];
    snprintf(one, sizeof one, "%shttp://127.0.0.1:%d", i ? ", " : "",
             40000 + i);
    strcat(list, one);
  }
  lmap_client *c = NULL;
  CHECK_RC(lmap_client_new(list, NULL, &c, err), 0, NULL);
  CHECK(c != NULL);
  lmap_client_free(c);
  strcat(list, ",http://127.0.0.1:50000");
  expect_new_fails(list, NULL);

  /* A token that would break the header block is a bad option. */
  lmap_client_options o;
  lmap_client_options_init(&o);
  o.token = "abc\r\nX-Injected: 1";
  c = (lmap_client *)&err;
  CHECK_RC(lmap_client_new("http://127.0.0.1:1", &o, &c, err), LMAP_EINVAL,
           NULL);
  CHECK(c == NULL);
  if (c && c != (lmap_client *)&err)
    lmap_client_free(c);

  /* Zero and negative options mean the defaults. */
  memset(&o, 0, sizeof o);
  c = NULL;
  CHECK_RC(lmap_client_new("http://127.0.0.1:1", &o, &c, err), 0, NULL);
  lmap_client_free(c);
  o.connect_timeout_ms = -5;
  o.timeout_ms = -1;
  o.retries = -7;
  o.retry_backoff_ms = -1;
  o.down_ms = -1;
  c = NULL;
  CHECK_RC(lmap_client_new("http://127.0.0.1:1", &o, &c, err), 0, NULL);
  lmap_client_free(c);

  /* The array form. */
  const char *good[2] = {"http://127.0.0.1:1", "http://localhost:2/prefix"};
  c = NULL;
  CHECK_RC(lmap_client_new_array(good, 2, NULL, &c, err), 0, NULL);
  CHECK(c != NULL);
  lmap_client_free(c);
  const char *bad1[2] = {"http://127.0.0.1:1", "ftp://y"};
  const char *bad2[2] = {"http://127.0.0.1:1", NULL};
  const char *bad3[1] = {""};
  const char *many[LMAP_MAX_ENDPOINTS + 1];
  for (int i = 0; i <= LMAP_MAX_ENDPOINTS; i++)
    many[i] = "http://127.0.0.1:1";
  struct {
    const char *const *urls;
    size_t n;
  } bads[] = {{bad1, 2},
              {bad2, 2},
              {bad3, 1},
              {good, 0},
              {many, LMAP_MAX_ENDPOINTS + 1},
              {NULL, 1}};
  for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++) {
    c = (lmap_client *)&err;
    err[0] = '\0';
    int rc = lmap_client_new_array(bads[i].urls, bads[i].n, NULL, &c, err);
    CHECK_RC(rc, LMAP_EINVAL, NULL);
    CHECK(c == NULL);
    CHECK(strlen(err) > 10);
    if (rc == 0 && c != (lmap_client *)&err)
      lmap_client_free(c);
  }
  c = NULL;
  CHECK_RC(lmap_client_new_array(many, LMAP_MAX_ENDPOINTS, NULL, &c, err), 0,
           NULL);
  lmap_client_free(c);

  /* A fresh handle: nothing failed yet. */
  c = connect_to("http://127.0.0.1:1", NULL);
  if (c) {
    CHECK_STR(lmap_client_errmsg(c), "");
    const char *ep = lmap_client_endpoint(c);
    CHECK(ep == NULL || ep[0] == '\0');
    lmap_error_detail d;
    lmap_client_last_error(c, &d);
    CHECK(d.code == 0 && d.http_status == 0);
  }
  lmap_client_free(c);
}

/* lmap_client_info against `lmap info --json`. */
static void case_info(void) {
  g_case = "info";
  char opath[700];
  tmp_path(opath, sizeof opath, "info.json");
  const char *argv[] = {th_lmap(), "info", g_store, "--json", NULL};
  json_t *cli =
      th_run(argv, opath) == 0 ? json_load_file(opath, 0, NULL) : NULL;
  remove(opath);
  lmap_client *c = connect_to(g_main->url, NULL);
  char *text = NULL;
  json_t *doc = NULL;
  REQUIRE(cli != NULL && c != NULL);
  lmap_info info;
  memset(&info, 0xff, sizeof info);
  REQUIRE_RC(lmap_client_info(c, &info, &text), 0, c);
  CHECK(info.num_classes ==
        json_integer_value(json_object_get(cli, "num_classes")));
  CHECK(info.top_k == json_integer_value(json_object_get(cli, "topk")));
  CHECK(info.height == json_integer_value(json_object_get(cli, "grid_h")));
  CHECK(info.width == json_integer_value(json_object_get(cli, "grid_w")));
  CHECK(info.records ==
        (uint64_t)json_integer_value(json_object_get(cli, "record_count")));
  CHECK(info.records == 300);
  g_C = info.num_classes;
  g_K = info.top_k;
  g_H = info.height;
  g_W = info.width;
  REQUIRE(text != NULL);
  doc = json_loads(text, 0, NULL);
  REQUIRE(doc != NULL);
  /* Every member of the tool's document is in the server's, equal; the
   * server's has no "path". */
  const char *key;
  json_t *val;
  int members = 0;
  json_object_foreach(cli, key, val) {
    if (strcmp(key, "path") == 0)
      continue;
    members++;
    if (!CHECK(json_equal(val, json_object_get(doc, key))))
      fprintf(stderr, "  /v1/info member \"%s\" differs\n", key);
  }
  CHECK(members > 10);
  /* Both outputs are optional. */
  CHECK_RC(lmap_client_info(c, NULL, NULL), 0, c);
  lmap_info only;
  CHECK_RC(lmap_client_info(c, &only, NULL), 0, c);
  CHECK(only.num_classes == info.num_classes);
  CHECK_STR(lmap_client_endpoint(c), g_main->url);
out:
  lmap_free(text);
  json_decref(doc);
  json_decref(cli);
  lmap_client_free(c);
}

typedef struct config {
  const char *name;
  int G;
  lmap_box_format f;
  int softmax;
} config;

static const config configs[] = {
    {"G1", 1, LMAP_BOX_XYXY, 1},
    {"G2", 2, LMAP_BOX_XYXY, 1},
    {"G3 relabel", 3, LMAP_BOX_RELABEL, 1},
    {"G1 relabel", 1, LMAP_BOX_RELABEL, 1},
    {"G1 no softmax", 1, LMAP_BOX_XYXY, 0},
    {"G2 relabel no softmax", 2, LMAP_BOX_RELABEL, 0},
};
#define N_CONFIGS (sizeof configs / sizeof configs[0])

/* Dense labels against `lmap get` for each option combination (flips mixed
 * in every batch). */
static void case_labels(void) {
  g_case = "labels";
  lmap_client *c = connect_to(g_main->url, NULL);
  REQUIRE(c != NULL && g_C > 0);
  for (size_t k = 0; k < N_CONFIGS; k++) {
    const config *cf = &configs[k];
    size_t n = 24, len = n * g_C * cf->G * cf->G;
    lmap_label_options o = label_opts(cf->G, cf->f, cf->softmax);
    lmap_query *q = make_queries(n, cf->f, k * 31);
    float *out = malloc(len * sizeof *out);
    json_t *ref = reference(q, n, &o, 0);
    json_t *one = reference_cli(&q[0], &o, 0);
    if (CHECK(q && out && ref && one)) {
      if (!CHECK(json_equal(one, json_array_get(ref, 0))))
        fprintf(stderr, "  %s: lmap get --box and --queries differ\n",
                cf->name);
      int rc = lmap_client_labels(c, q, n, &o, out, len);
      if (CHECK_RC(rc, 0, c)) {
        double d = dense_diff(out, q, n, cf->G, cf->softmax, ref);
        if (!CHECK(d >= 0 && d <= 1e-6))
          fprintf(stderr, "  %s: max difference %.3g\n", cf->name, d);
      }
      /* One query at a time gives the same. */
      rc = lmap_client_labels(c, &q[n - 1], 1, &o, out, len / n);
      if (CHECK_RC(rc, 0, c)) {
        json_t *last = json_array();
        json_array_append(last, json_array_get(ref, n - 1));
        double d = dense_diff(out, &q[n - 1], 1, cf->G, cf->softmax, last);
        CHECK(d >= 0 && d <= 1e-6);
        json_decref(last);
      }
    }
    json_decref(ref);
    json_decref(one);
    free(out);
    free(q);
  }
  /* opts NULL is G = 1, xyxy, softmax. */
  {
    size_t n = 8;
    lmap_label_options o = label_opts(1, LMAP_BOX_XYXY, 1);
    lmap_query *q = make_queries(n, LMAP_BOX_XYXY, 5);
    float *out = malloc(n * g_C * sizeof *out);
    json_t *ref = reference(q, n, &o, 0);
    if (CHECK(q && out && ref) &&
        CHECK_RC(lmap_client_labels(c, q, n, NULL, out, n * g_C), 0, c)) {
      double d = dense_diff(out, q, n, 1, 1, ref);
      CHECK(d >= 0 && d <= 1e-6);
      /* Probabilities of a query sum to 1. */
      double sum = 0;
      for (size_t i = 0; i < g_C; i++)
        sum += out[i];
      CHECK(fabs(sum - 1) < 1e-4);
    }
    json_decref(ref);
    free(out);
    free(q);
  }
  /* The box edges: the whole image, and a degenerate (zero-area) box. */
  {
    lmap_query q[2] = {{g_ids[0], {0, 0, 1, 1}, 0},
                       {g_ids[1], {0.5, 0.5, 0.5, 0.5}, 1}};
    lmap_label_options o = label_opts(2, LMAP_BOX_XYXY, 1);
    size_t len = 2 * g_C * 4;
    float *out = malloc(len * sizeof *out);
    json_t *ref = reference(q, 2, &o, 0);
    if (CHECK(out && ref) &&
        CHECK_RC(lmap_client_labels(c, q, 2, &o, out, len), 0, c)) {
      double d = dense_diff(out, q, 2, 2, 1, ref);
      CHECK(d >= 0 && d <= 1e-6);
    }
    json_decref(ref);
    free(out);
  }
out:
  lmap_client_free(c);
}

/* The two answer forms of lmap_client_labels against the real lmapd: the
 * default (sparse binary cells expanded by liblmap) and .npy give the same
 * floats bit for bit, for every option combination. */
static void case_answer_forms(void) {
  g_case = "answer_forms";
  lmap_client *sparse = connect_to(g_main->url, NULL);
  lmap_client *npy = connect_to(g_main->url, NULL);
  REQUIRE(sparse != NULL && npy != NULL);
  CHECK_RC(lmap_client_set_answer_form(npy, LMAP_ANSWER_NPY), 0, npy);
  CHECK_RC(lmap_client_set_answer_form(npy, (lmap_answer_form)7), LMAP_EINVAL,
           NULL);
  CHECK_RC(lmap_client_set_answer_form(NULL, LMAP_ANSWER_NPY), LMAP_EINVAL,
           NULL);
  for (size_t k = 0; k < N_CONFIGS; k++) {
    const config *cf = &configs[k];
    size_t n = 40, len = n * g_C * cf->G * cf->G;
    lmap_label_options o = label_opts(cf->G, cf->f, cf->softmax);
    lmap_query *q = make_queries(n, cf->f, k * 17 + 3);
    float *a = malloc(len * sizeof *a), *b = malloc(len * sizeof *b);
    if (CHECK(q && a && b) &&
        CHECK_RC(lmap_client_labels(sparse, q, n, &o, a, len), 0, sparse) &&
        CHECK_RC(lmap_client_labels(npy, q, n, &o, b, len), 0, npy) &&
        !CHECK(memcmp(a, b, len * sizeof *a) == 0))
      fprintf(stderr, "  %s: sparse and .npy answers differ\n", cf->name);
    free(a);
    free(b);
    free(q);
  }
out:
  lmap_client_free(sparse);
  lmap_client_free(npy);
}

/* Sparse labels against `lmap get --format sparse`. */
static void case_sparse(void) {
  g_case = "sparse";
  lmap_client *c = connect_to(g_main->url, NULL);
  REQUIRE(c != NULL && g_C > 0);
  for (size_t k = 0; k < N_CONFIGS; k++) {
    const config *cf = &configs[k];
    size_t n = 24;
    lmap_label_options o = label_opts(cf->G, cf->f, cf->softmax);
    lmap_query *q = make_queries(n, cf->f, 3 + k * 17);
    json_t *ref = reference(q, n, &o, 1);
    json_t *one = reference_cli(&q[0], &o, 1);
    lmap_sparse *s = (lmap_sparse *)&o;
    if (CHECK(q && ref && one)) {
      CHECK(json_equal(one, json_array_get(ref, 0)));
      int rc = lmap_client_sparse(c, q, n, &o, &s);
      if (CHECK_RC(rc, 0, c) && CHECK(s != NULL)) {
        int bad = sparse_mismatches(s, q, n, cf->G, cf->softmax, ref, 1e-6);
        if (!CHECK(bad == 0))
          fprintf(stderr, "  %s: %d mismatches\n", cf->name, bad);
        size_t total = s->n * s->cells;
        int monotone = 1;
        for (size_t i = 0; i < total; i++)
          monotone &= s->offsets[i] <= s->offsets[i + 1];
        CHECK(monotone);
        if (!cf->softmax) {
          int zero = 1;
          for (size_t i = 0; i < total; i++)
            zero &= s->rest[i] == 0;
          CHECK(zero);
        }
      } else {
        s = NULL;
      }
      lmap_sparse_free(s);
    }
    json_decref(ref);
    json_decref(one);
    free(q);
  }
  /* opts NULL; and *out is NULL after a failure. */
  {
    lmap_query q = {g_ids[3], {0.1, 0.1, 0.9, 0.9}, 0};
    lmap_sparse *s = NULL;
    if (CHECK_RC(lmap_client_sparse(c, &q, 1, NULL, &s), 0, c) && CHECK(s)) {
      CHECK(s->n == 1 && s->cells == 1);
      lmap_sparse_free(s);
    }
    lmap_query bad = {"no_such_id", {0.1, 0.1, 0.9, 0.9}, 0};
    s = (lmap_sparse *)&q;
    CHECK_RC(lmap_client_sparse(c, &bad, 1, NULL, &s), LMAP_ENOTFOUND, c);
    CHECK(s == NULL);
  }
out:
  lmap_client_free(c);
}

/* Raw maps against `lmap export`. */
static void case_map(void) {
  g_case = "map";
  lmap_client *c = connect_to(g_main->url, NULL);
  size_t len = (size_t)2 * g_K * g_H * g_W;
  float *out = malloc((len + 1) * sizeof *out);
  REQUIRE(c != NULL && out != NULL && len > 0);
  for (int k = 0; k < 4; k++) {
    const char *id = g_ids[(size_t)k * 71 % g_nids];
    char npy[700];
    tmp_path(npy, sizeof npy, "map.npy");
    const char *argv[] = {th_lmap(), "export", g_store, id, "-o", npy, NULL};
    size_t shape[4] = {0}, count = 0;
    float *want = th_run(argv, NULL) == 0 ? read_npy(npy, shape, &count) : NULL;
    remove(npy);
    if (!CHECK(want != NULL && count == len))
      continue;
    uint32_t got_shape[4] = {0};
    if (CHECK_RC(lmap_client_map(c, id, out, len, got_shape), 0, c)) {
      CHECK(memcmp(out, want, len * sizeof *out) == 0);
      CHECK(got_shape[0] == 2 && got_shape[1] == g_K && got_shape[2] == g_H &&
            got_shape[3] == g_W);
      for (int i = 0; i < 4; i++)
        CHECK(got_shape[i] == shape[i]);
    }
    memset(out, 0, len * sizeof *out);
    if (CHECK_RC(lmap_client_map(c, id, out, len, NULL), 0, c))
      CHECK(memcmp(out, want, len * sizeof *out) == 0);
    free(want);
  }
  CHECK_RC(lmap_client_map(c, g_ids[0], out, len - 1, NULL), LMAP_ERANGE, c);
  CHECK_RC(lmap_client_map(c, g_ids[0], out, len + 1, NULL), LMAP_ERANGE, c);
  /* An empty buffer: the header says ERANGE; EINVAL ("no buffer") is as
   * good an answer. */
  int rc0 = lmap_client_map(c, g_ids[0], out, 0, NULL);
  CHECK(rc0 == LMAP_ERANGE || rc0 == LMAP_EINVAL);
out:
  free(out);
  lmap_client_free(c);
}

static void check_clean(const lmap_client *c) {
  lmap_error_detail d;
  memset(&d, 0x5a, sizeof d);
  lmap_client_last_error(c, &d);
  CHECK(d.code == 0);
  CHECK_STR(d.message, "");
  CHECK_STR(d.field, "");
  CHECK_STR(d.server_code, "");
  CHECK_STR(lmap_client_errmsg(c), "");
}

/* Error answers: codes, statuses, fields, messages, the detail's life. */
static void case_errors(void) {
  g_case = "errors";
  lmap_client *c = connect_to(g_main->url, NULL);
  size_t n = 4;
  lmap_query *q = make_queries(n, LMAP_BOX_XYXY, 11);
  float *out = malloc(n * g_C * 4 * sizeof *out);
  lmap_error_detail d;
  REQUIRE(c && q && out);
  lmap_label_options o1 = label_opts(1, LMAP_BOX_XYXY, 1);
  lmap_label_options o2 = label_opts(2, LMAP_BOX_XYXY, 1);

  /* out_len must be the answer's size exactly. */
  CHECK_RC(lmap_client_labels(c, q, n, &o1, out, n * g_C - 1), LMAP_ERANGE, c);
  CHECK_RC(lmap_client_labels(c, q, n, &o1, out, n * g_C + 1), LMAP_ERANGE, c);
  CHECK_RC(lmap_client_labels(c, q, n, &o2, out, n * g_C), LMAP_ERANGE, c);
  lmap_client_last_error(c, &d);
  CHECK(d.code == LMAP_ERANGE);
  CHECK(d.message && d.message[0]);
  CHECK_RC(lmap_client_labels(c, q, n, &o2, out, n * g_C * 4), 0, c);
  check_clean(c);
  CHECK_STR(lmap_client_endpoint(c), g_main->url);

  /* Unknown id: 404 naming it, from each call. */
  lmap_query unk[3] = {q[0],
                       {"no_such_id_1234", {0.1, 0.1, 0.5, 0.5}, 0},
                       {"other_missing_id", {0.1, 0.1, 0.5, 0.5}, 0}};
  CHECK_RC(lmap_client_labels(c, &unk[1], 1, &o1, out, g_C), LMAP_ENOTFOUND, c);
  lmap_client_last_error(c, &d);
  CHECK(d.code == LMAP_ENOTFOUND);
  CHECK(d.http_status == 404);
  CHECK_HAS(d.message, "no_such_id_1234");
  CHECK_STR(d.server_code, "not_found");
  CHECK_STR(d.endpoint, g_main->url);
  CHECK(d.request_id && d.request_id[0]);
  CHECK_STR(lmap_client_errmsg(c), d.message);
  /* The strings stay valid across the read-only accessors. */
  (void)lmap_client_endpoint(c);
  (void)lmap_client_errmsg(c);
  lmap_error_detail d2;
  lmap_client_last_error(c, &d2);
  CHECK_STR(d2.message, d.message);
  CHECK_STR(d2.request_id, d.request_id);

  CHECK_RC(lmap_client_labels(c, unk, 3, &o1, out, 3 * g_C), LMAP_ENOTFOUND, c);
  lmap_client_last_error(c, &d);
  CHECK_HAS(d.message, "no_such_id_1234");
  CHECK_HAS(d.message, "other_missing_id");
  CHECK_STR(d.field, "queries");

  uint32_t shape[4];
  size_t mlen = (size_t)2 * g_K * g_H * g_W;
  float *map = malloc(mlen * sizeof *map);
  if (CHECK(map != NULL)) {
    CHECK_RC(lmap_client_map(c, "no_such_id_1234", map, mlen, shape),
             LMAP_ENOTFOUND, c);
    lmap_client_last_error(c, &d);
    CHECK(d.http_status == 404);
    CHECK_HAS(d.message, "no_such_id_1234");
    CHECK_STR(d.field, "id");
    /* Ids travel escaped: a slash or a space is the server's "bad id", not
     * another route. */
    CHECK_RC(lmap_client_map(c, "../info", map, mlen, shape), LMAP_EBADID, c);
    CHECK_RC(lmap_client_map(c, "a/b", map, mlen, shape), LMAP_EBADID, c);
    CHECK_RC(lmap_client_map(c, "a b", map, mlen, shape), LMAP_EBADID, c);
    CHECK_RC(lmap_client_map(c, "a?box=1", map, mlen, shape), LMAP_EBADID, c);
    CHECK_RC(lmap_client_map(c, "", map, mlen, shape), LMAP_EBADID, c);
    int rcn = lmap_client_map(c, NULL, map, mlen, shape);
    CHECK(rcn == LMAP_EINVAL || rcn == LMAP_EBADID);
    free(map);
  }
  lmap_query badid = {"bad id", {0.1, 0.1, 0.5, 0.5}, 0};
  CHECK_RC(lmap_client_labels(c, &badid, 1, &o1, out, g_C), LMAP_EBADID, c);
  lmap_query nullid = {NULL, {0.1, 0.1, 0.5, 0.5}, 0};
  int rc = lmap_client_labels(c, &nullid, 1, &o1, out, g_C);
  CHECK(rc == LMAP_EINVAL || rc == LMAP_EBADID);

  /* Bad boxes: the code and the field. */
  double bad_boxes[][4] = {{0.5, 0.2, 0.1, 0.9},
                           {-0.1, 0, 0.5, 0.5},
                           {0, 0, 1.5, 1},
                           {NAN, 0, 1, 1},
                           {0, 0, INFINITY, 1}};
  for (size_t i = 0; i < sizeof bad_boxes / sizeof bad_boxes[0]; i++) {
    lmap_query bq[2] = {q[0], q[1]};
    memcpy(bq[1].box, bad_boxes[i], sizeof bq[1].box);
    if (!CHECK_RC(lmap_client_labels(c, bq, 2, &o1, out, 2 * g_C), LMAP_EBADBOX,
                  c))
      fprintf(stderr, "  box %zu\n", i);
    lmap_client_last_error(c, &d);
    CHECK_HAS(d.field, "box");
    CHECK(d.http_status == 400 || d.http_status == 0);
    lmap_sparse *s = NULL;
    CHECK_RC(lmap_client_sparse(c, bq, 2, &o1, &s), LMAP_EBADBOX, c);
    CHECK(s == NULL);
    lmap_sparse_free(s);
  }
  {
    lmap_label_options orl = label_opts(1, LMAP_BOX_RELABEL, 1);
    lmap_query bq = {g_ids[0], {0.6, 0.1, 0.5, 0.5}, 0}; /* top + height > 1 */
    CHECK_RC(lmap_client_labels(c, &bq, 1, &orl, out, g_C), LMAP_EBADBOX, c);
    lmap_client_last_error(c, &d);
    CHECK(d.http_status == 400);
    CHECK_HAS(d.field, "box");
  }

  /* Bad options. */
  {
    lmap_label_options ob = label_opts(1, (lmap_box_format)7, 1);
    CHECK_RC(lmap_client_labels(c, q, 1, &ob, out, g_C), LMAP_EINVAL, c);
    ob = label_opts(65, LMAP_BOX_XYXY, 1); /* the server's cap is 64 */
    size_t big = (size_t)g_C * 65 * 65;
    float *buf = malloc(big * sizeof *buf);
    if (CHECK(buf != NULL)) {
      CHECK_RC(lmap_client_labels(c, q, 1, &ob, buf, big), LMAP_EINVAL, c);
      lmap_client_last_error(c, &d);
      CHECK_STR(d.field, "output_size");
      CHECK(d.http_status == 400);
    }
    free(buf);
    CHECK(lmap_client_labels(c, q, 0, &o1, out, 0) < 0);
    CHECK_RC(lmap_client_labels(c, NULL, 1, &o1, out, g_C), LMAP_EINVAL, c);
    CHECK_RC(lmap_client_labels(c, q, 1, &o1, NULL, g_C), LMAP_EINVAL, c);
    CHECK_RC(lmap_client_sparse(c, q, 1, &o1, NULL), LMAP_EINVAL, c);
  }

  /* After errors, a success leaves a clean detail. */
  CHECK_RC(lmap_client_labels(c, q, n, &o1, out, n * g_C), 0, c);
  check_clean(c);
out:
  free(out);
  free(q);
  lmap_client_free(c);
}

/* --max-batch: one more query than allowed is 413 too_large. */
static void case_max_batch(void) {
  g_case = "max_batch";
  const char *extra[] = {"--max-batch", "8", NULL};
  th_daemon *d = th_start(g_store, extra);
  lmap_client *c = NULL;
  lmap_query *q = make_queries(9, LMAP_BOX_XYXY, 0);
  float *out = malloc(9 * g_C * sizeof *out);
  REQUIRE(d && q && out);
  c = connect_to(d->url, NULL);
  REQUIRE(c != NULL);
  CHECK_RC(lmap_client_labels(c, q, 8, NULL, out, 8 * g_C), 0, c);
  CHECK_RC(lmap_client_labels(c, q, 9, NULL, out, 9 * g_C), LMAP_ETOOBIG, c);
  lmap_error_detail det;
  lmap_client_last_error(c, &det);
  CHECK(det.http_status == 413);
  CHECK_STR(det.server_code, "too_large");
out:
  lmap_client_free(c);
  free(q);
  free(out);
  CHECK(th_stop(d, 30) == 0);
}

/* --token-file: 401 without or with a wrong token; the right one works;
 * a 401 is returned at once, not failed over. */
static void case_token(void) {
  g_case = "token";
  char tokpath[700];
  tmp_path(tokpath, sizeof tokpath, "token");
  FILE *f = fopen(tokpath, "w");
  if (f) {
    fputs("s3cret-Token_42\n", f);
    fclose(f);
  }
  const char *extra[] = {"--token-file", tokpath, NULL};
  th_daemon *d = th_start(g_store, extra);
  lmap_client *none = NULL, *wrong = NULL, *right = NULL, *both = NULL;
  size_t n = 6;
  lmap_query *q = make_queries(n, LMAP_BOX_XYXY, 2);
  float *out = malloc(n * g_C * sizeof *out);
  float *ref = malloc(n * g_C * sizeof *ref);
  REQUIRE(d && q && out && ref);
  none = connect_to(d->url, NULL);
  wrong = connect_to(d->url, "s3cret-Token_43");
  right = connect_to(d->url, "s3cret-Token_42");
  REQUIRE(none && wrong && right);
  lmap_error_detail det;
  for (int k = 0; k < 2; k++) {
    lmap_client *c = k ? wrong : none;
    CHECK_RC(lmap_client_labels(c, q, n, NULL, out, n * g_C),
             LMAP_EUNAUTHORIZED, c);
    lmap_client_last_error(c, &det);
    CHECK(det.http_status == 401);
    CHECK_STR(det.server_code, "unauthorized");
    CHECK_RC(lmap_client_info(c, NULL, NULL), LMAP_EUNAUTHORIZED, c);
    lmap_sparse *s = NULL;
    CHECK_RC(lmap_client_sparse(c, q, 1, NULL, &s), LMAP_EUNAUTHORIZED, c);
    lmap_sparse_free(s);
  }
  /* The right token: the same answer as the open server. */
  lmap_client *open = connect_to(g_main->url, NULL);
  REQUIRE(open != NULL);
  int rc = lmap_client_labels(open, q, n, NULL, ref, n * g_C);
  lmap_client_free(open);
  REQUIRE_RC(rc, 0, NULL);
  CHECK_RC(lmap_client_labels(right, q, n, NULL, out, n * g_C), 0, right);
  CHECK(memcmp(out, ref, n * g_C * sizeof *out) == 0);
  CHECK_RC(lmap_client_info(right, NULL, NULL), 0, right);
  /* The token goes to every endpoint of the handle: the open server ignores
   * it. A 401 from the first endpoint is final. */
  char urls[200];
  snprintf(urls, sizeof urls, "%s,%s", d->url, g_main->url);
  both = connect_to(urls, NULL);
  REQUIRE(both != NULL);
  CHECK_RC(lmap_client_labels(both, q, n, NULL, out, n * g_C),
           LMAP_EUNAUTHORIZED, both);
  lmap_client_last_error(both, &det);
  CHECK_STR(det.endpoint, d->url);
out:
  lmap_client_free(none);
  lmap_client_free(wrong);
  lmap_client_free(right);
  lmap_client_free(both);
  free(q);
  free(out);
  free(ref);
  CHECK(th_stop(d, 30) == 0);
  remove(tokpath);
}

/* Reference answers of `n` G = 1 queries from the healthy main server. */
static float *ref_labels(const lmap_query *q, size_t n) {
  lmap_client *c = connect_to(g_main->url, NULL);
  float *ref = malloc(n * g_C * sizeof *ref);
  int rc = c && ref ? lmap_client_labels(c, q, n, NULL, ref, n * g_C) : -1;
  lmap_client_free(c);
  if (rc != 0) {
    free(ref);
    return NULL;
  }
  return ref;
}

/* A whole HTTP/1.1 answer with the right Content-Length (free()). */
static char *http_answer(const char *status, const char *type,
                         const char *body) {
  size_t size = strlen(status) + strlen(type) + strlen(body) + 200;
  char *a = malloc(size);
  if (a)
    snprintf(a, size,
             "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
             "Connection: close\r\n\r\n%s",
             status, type, strlen(body), body);
  return a;
}

/* An .npy answer promising 100000 bytes and sending a few. */
static const char HTTP_200_CUT[] =
    "HTTP/1.1 200 OK\r\nContent-Type: application/x-npy\r\n"
    "Content-Length: 100000\r\n\r\n\x93NUMPY";

/* Dead, failing and cut-short endpoints before a live one. */
static void case_failover(void) {
  g_case = "failover";
  size_t n = 16;
  lmap_query *q = make_queries(n, LMAP_BOX_XYXY, 9);
  float *ref = q ? ref_labels(q, n) : NULL;
  float *out = malloc(n * g_C * sizeof *out);
  char *a503 = http_answer("503 Service Unavailable", "application/json",
                           "{\"error\":{\"code\":\"unavailable\",\"message\":"
                           "\"busy\",\"field\":\"\"}}");
  char *a400 = http_answer("400 Bad Request", "application/json",
                           "{\"error\":{\"code\":\"bad_box\",\"message\":"
                           "\"fake says no\",\"field\":\"box\"}}");
  char *atext = http_answer("200 OK", "text/plain", "hello");
  th_fake *f503 = a503 ? th_fake_canned(a503, 0) : NULL;
  th_fake *f400 = a400 ? th_fake_canned(a400, 0) : NULL;
  th_fake *ftext = atext ? th_fake_canned(atext, 0) : NULL;
  th_fake *fcut = th_fake_canned(HTTP_200_CUT, 0);
  th_fake *pcut = th_fake_proxy(g_main->port, 300);
  th_fake *pcount = th_fake_proxy(g_main->port, 0);
  lmap_error_detail det;
  char urls[1024];
  REQUIRE(q && ref && out && f503 && f400 && ftext && fcut && pcut && pcount);
  int dead = th_dead_port();

  struct {
    const char *what;
    char first[256];
  } before[] = {
      {"port 1", "http://127.0.0.1:1"},
      {"closed port", ""},
      {"503", ""},
      {"cut-short 200", ""},
      {"proxy cutting the answer", ""},
      {"three dead", ""},
  };
  snprintf(before[1].first, sizeof before[1].first, "http://127.0.0.1:%d",
           dead);
  snprintf(before[2].first, sizeof before[2].first, "%s", th_fake_url(f503));
  snprintf(before[3].first, sizeof before[3].first, "%s", th_fake_url(fcut));
  snprintf(before[4].first, sizeof before[4].first, "%s", th_fake_url(pcut));
  snprintf(before[5].first, sizeof before[5].first,
           " http://127.0.0.1:1 ,  http://127.0.0.1:%d,%s", dead,
           th_fake_url(f503));
  for (size_t k = 0; k < sizeof before / sizeof before[0]; k++) {
    snprintf(urls, sizeof urls, "%s, %s ", before[k].first, g_main->url);
    lmap_client *c = connect_to(urls, NULL);
    if (!CHECK(c != NULL))
      continue;
    memset(out, 0, n * g_C * sizeof *out);
    int rc = lmap_client_labels(c, q, n, NULL, out, n * g_C);
    if (!CHECK_RC(rc, 0, c))
      fprintf(stderr, "  after %s\n", before[k].what);
    if (!CHECK(memcmp(out, ref, n * g_C * sizeof *out) == 0))
      fprintf(stderr, "  after %s: wrong answer\n", before[k].what);
    CHECK_STR(lmap_client_endpoint(c), g_main->url);
    check_clean(c);
    /* The next call too (the failed endpoint is now skipped). */
    CHECK_RC(lmap_client_labels(c, q, n, NULL, out, n * g_C), 0, c);
    CHECK(memcmp(out, ref, n * g_C * sizeof *out) == 0);
    lmap_client_free(c);
  }
  CHECK(th_fake_answered(f503) >= 2);
  CHECK(th_fake_answered(fcut) >= 1);
  CHECK(th_fake_accepted(pcut) >= 1);

  /* Every endpoint dead: unavailable, and the message names each. */
  {
    snprintf(urls, sizeof urls, "http://127.0.0.1:1,http://127.0.0.1:%d", dead);
    lmap_client *c = connect_to(urls, NULL);
    if (CHECK(c != NULL)) {
      CHECK_RC(lmap_client_labels(c, q, n, NULL, out, n * g_C),
               LMAP_EUNAVAILABLE, c);
      lmap_client_last_error(c, &det);
      CHECK(det.http_status == 0);
      char one[64];
      snprintf(one, sizeof one, "http://127.0.0.1:%d", dead);
      CHECK_HAS(det.message, "http://127.0.0.1:1");
      CHECK_HAS(det.message, one);
      CHECK_RC(lmap_client_info(c, NULL, NULL), LMAP_EUNAVAILABLE, c);
      CHECK_RC(lmap_client_map(c, g_ids[0], out, 2 * g_K * g_H * g_W, NULL),
               LMAP_EUNAVAILABLE, c);
      lmap_sparse *s = NULL;
      CHECK_RC(lmap_client_sparse(c, q, 1, NULL, &s), LMAP_EUNAVAILABLE, c);
      CHECK(s == NULL);
      CHECK(lmap_client_endpoint(c) == NULL ||
            lmap_client_endpoint(c)[0] == '\0');
    }
    lmap_client_free(c);
  }
  /* Only a 503 server: unavailable with its status. */
  {
    lmap_client *c = connect_to(th_fake_url(f503), NULL);
    if (CHECK(c != NULL)) {
      CHECK_RC(lmap_client_info(c, NULL, NULL), LMAP_EUNAVAILABLE, c);
      lmap_client_last_error(c, &det);
      CHECK(det.http_status == 503);
    }
    lmap_client_free(c);
  }
  /* Only answers cut short: an error, never a success. */
  {
    lmap_client *c = connect_to(th_fake_url(pcut), NULL);
    if (CHECK(c != NULL))
      CHECK(lmap_client_labels(c, q, n, NULL, out, n * g_C) < 0);
    lmap_client_free(c);
  }
  /* Something that is not lmapd answering 200: a protocol error. */
  {
    lmap_client *c = connect_to(th_fake_url(ftext), NULL);
    if (CHECK(c != NULL)) {
      CHECK_RC(lmap_client_labels(c, q, n, NULL, out, n * g_C), LMAP_EPROTOCOL,
               c);
      CHECK_RC(lmap_client_info(c, NULL, NULL), LMAP_EPROTOCOL, c);
    }
    lmap_client_free(c);
  }
  /* A 4xx from the first endpoint is the answer: the second is not asked. */
  {
    snprintf(urls, sizeof urls, "%s,%s", th_fake_url(f400),
             th_fake_url(pcount));
    lmap_client *c = connect_to(urls, NULL);
    if (CHECK(c != NULL)) {
      CHECK_RC(lmap_client_labels(c, q, n, NULL, out, n * g_C), LMAP_EBADBOX,
               c);
      lmap_client_last_error(c, &det);
      CHECK(det.http_status == 400);
      CHECK_STR(det.server_code, "bad_box");
      CHECK_STR(det.field, "box");
      CHECK_HAS(det.message, "fake says no");
      CHECK_STR(det.endpoint, th_fake_url(f400));
      CHECK(th_fake_accepted(pcount) == 0);
    }
    lmap_client_free(c);
  }
out:
  th_fake_free(f503);
  th_fake_free(f400);
  th_fake_free(ftext);
  th_fake_free(fcut);
  th_fake_free(pcut);
  th_fake_free(pcount);
  free(a503);
  free(a400);
  free(atext);
  free(q);
  free(ref);
  free(out);
}

/* ---- a hostile or broken server (issue 10) ---- */

/* The store description the fakes give: the real store's. */
static char *info_answer(void) {
  char body[256];
  snprintf(body, sizeof body,
           "{\"num_classes\":%u,\"topk\":%u,\"grid_h\":%u,\"grid_w\":%u,"
           "\"record_count\":%zu}",
           g_C, g_K, g_H, g_W, g_nids);
  return http_answer("200 OK", "application/json", body);
}

/* A whole HTTP 200 answer holding a .npy float32 array of `shape` with the
 * `n` values `v` (the array's size need not match the shape: a lying
 * server). `declared`, when not 0, replaces the Content-Length; when -1
 * there is none (Connection: close ends the body). */
static char *npy_answer(const size_t *shape, int ndim, const float *v, size_t n,
                        long long declared, size_t *len) {
  char dict[200];
  int dl = snprintf(dict, sizeof dict,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (");
  for (int i = 0; i < ndim; i++)
    dl += snprintf(dict + dl, sizeof dict - (size_t)dl, "%zu, ", shape[i]);
  dl += snprintf(dict + dl, sizeof dict - (size_t)dl, "), }");
  size_t hlen = (size_t)dl + 1, pad = (64 - (10 + hlen) % 64) % 64;
  hlen += pad;
  size_t body = 10 + hlen + n * sizeof *v;
  char head[200];
  char cl[48] = "";
  if (declared >= 0)
    snprintf(cl, sizeof cl, "Content-Length: %lld\r\n",
             declared ? declared : (long long)body);
  int hl = snprintf(head, sizeof head,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/x-npy\r\n"
                    "%sConnection: close\r\n\r\n",
                    cl);
  char *a = malloc((size_t)hl + body);
  if (a == NULL)
    return NULL;
  char *p = a;
  memcpy(p, head, (size_t)hl);
  p += hl;
  memcpy(p, "\x93NUMPY\x01\x00", 8);
  p[8] = (char)(hlen & 255);
  p[9] = (char)(hlen >> 8);
  p += 10;
  memcpy(p, dict, (size_t)dl);
  memset(p + dl, ' ', pad);
  p[dl + pad] = '\n';
  p += hlen;
  if (n)
    memcpy(p, v, n * sizeof *v);
  *len = (size_t)hl + body;
  return a;
}

/* A client of one endpoint that tries it once. */
static lmap_client *connect_once(const char *url) {
  lmap_client_options o;
  lmap_client_options_init(&o);
  o.retries = -1;
  o.timeout_ms = 20000;
  lmap_client *c = NULL;
  char err[LMAP_ERRBUF_SIZE] = "";
  if (lmap_client_new(url, &o, &c, err) != 0)
    fprintf(stderr, "lmap_client_new(%s): %s\n", url, err);
  return c;
}

/* Labels from a fake answering `answer`: the call's code, message in msg. */
static int labels_from(const char *info, const char *answer, size_t len,
                       size_t n, const lmap_label_options *o, float *out,
                       size_t out_len, char msg[600]) {
  th_fake *f = th_fake_routed(info, answer, len);
  lmap_client *c = f ? connect_once(th_fake_url(f)) : NULL;
  lmap_query *q = make_queries(n, LMAP_BOX_XYXY, 5);
  int rc = c && q ? lmap_client_labels(c, q, n, o, out, out_len) : -9999;
  snprintf(msg, 600, "%s", c ? lmap_client_errmsg(c) : "(no client)");
  lmap_client_free(c);
  th_fake_free(f);
  free(q);
  return rc;
}

/* Dense .npy answers holding NaN, infinities, probabilities outside [0, 1],
 * or of another shape than asked: LMAP_EPROTOCOL naming what is wrong,
 * never labels; values that can be labels pass. */
static void case_hostile_dense(void) {
  g_case = "hostile_dense";
  char *info = info_answer();
  size_t n = 2, C = g_C, len = 0;
  float *v = calloc(4 * n * (C + 1), sizeof *v);
  float *out = malloc(4 * n * (C + 1) * sizeof *out);
  char msg[600];
  REQUIRE(info && v && out);
  lmap_label_options o1 = label_opts(1, LMAP_BOX_XYXY, 1);
  lmap_label_options raw = label_opts(1, LMAP_BOX_XYXY, 0);
  lmap_label_options o2 = label_opts(2, LMAP_BOX_XYXY, 1);
  size_t shape2[2] = {n, C}, shape4[4] = {n, C, 2, 2};
  for (size_t i = 0; i < n * C; i++)
    v[i] = 1.0f / (float)C;
  static const struct {
    float value;
    int softmax_ok, logits_ok;
    const char *why;
  } bad[] = {
      {NAN, 0, 0, "not a finite number"},
      {INFINITY, 0, 0, "not a finite number"},
      {-INFINITY, 0, 0, "not a finite number"},
      {1.5f, 0, 1, "not a probability in [0, 1]"},
      {-0.25f, 0, 1, "not a probability in [0, 1]"},
      {1.0f + 1e-7f, 1, 1, ""}, /* one ulp over 1: float rounding */
      {0.0f, 1, 1, ""},
      {1.0f, 1, 1, ""},
  };
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
    float keep = v[C + 7];
    v[C + 7] = bad[k].value; /* row 1, class 7 */
    char *a = npy_answer(shape2, 2, v, n * C, 0, &len);
    for (int softmax = 1; a && softmax >= 0; softmax--) {
      int ok = softmax ? bad[k].softmax_ok : bad[k].logits_ok;
      int rc =
          labels_from(info, a, len, n, softmax ? &o1 : &raw, out, n * C, msg);
      if (!CHECK_RC(rc, ok ? 0 : LMAP_EPROTOCOL, NULL))
        fprintf(stderr, "  value %g, softmax %d: %s\n", (double)bad[k].value,
                softmax, msg);
      if (!ok) {
        CHECK_HAS(msg, "[1, 7]");
        CHECK_HAS(msg, bad[k].why);
      } else {
        CHECK(memcmp(out, v, n * C * sizeof *v) == 0);
      }
    }
    free(a);
    v[C + 7] = keep;
  }
  /* A G x G grid: the index names the cell. */
  for (size_t i = 0; i < n * C * 4; i++)
    v[i] = 0.001f;
  v[((size_t)1 * C + 3) * 4 + 2] = NAN; /* [1, 3, 1, 0] */
  char *a = npy_answer(shape4, 4, v, n * C * 4, 0, &len);
  CHECK_RC(a ? labels_from(info, a, len, n, &o2, out, n * C * 4, msg) : -1,
           LMAP_EPROTOCOL, NULL);
  CHECK_HAS(msg, "[1, 3, 1, 0] is nan");
  free(a);

  /* Another width than asked: the server's error, naming both shapes (it
   * was LMAP_ERANGE, the caller's, before). */
  for (size_t i = 0; i < n * (C + 1); i++)
    v[i] = 0.001f;
  size_t wide[2] = {n, C + 1}, longer[2] = {n + 1, C}, flat[1] = {n * C};
  char want[64], got[64];
  snprintf(want, sizeof want, "(%zu, %zu)", n, C);
  struct {
    const size_t *shape;
    int ndim;
  } shapes[] = {{wide, 2}, {longer, 2}, {flat, 1}};
  for (size_t k = 0; k < 3; k++) {
    size_t count = 1;
    for (int d = 0; d < shapes[k].ndim; d++)
      count *= shapes[k].shape[d];
    a = npy_answer(shapes[k].shape, shapes[k].ndim, v, count, 0, &len);
    CHECK_RC(a ? labels_from(info, a, len, n, &o1, out, n * C, msg) : -1,
             LMAP_EPROTOCOL, NULL);
    CHECK_HAS(msg, want);
    free(a);
  }
  snprintf(got, sizeof got, "(%zu, %zu)", n, C + 1);
  a = npy_answer(wide, 2, v, n * (C + 1), 0, &len);
  CHECK_RC(a ? labels_from(info, a, len, n, &o1, out, n * C, msg) : -1,
           LMAP_EPROTOCOL, NULL);
  CHECK_HAS(msg, got);
  free(a);
  /* The caller's own error stays LMAP_ERANGE, found before any request:
   * a buffer for another number of classes than the store has. */
  {
    th_fake *f = th_fake_routed(info, "x", 1);
    lmap_client *c = f ? connect_once(th_fake_url(f)) : NULL;
    lmap_query *q = make_queries(n, LMAP_BOX_XYXY, 5);
    if (CHECK(c && q)) {
      CHECK_RC(lmap_client_labels(c, q, n, &o1, out, n * (C + 1)), LMAP_ERANGE,
               c);
      CHECK_HAS(lmap_client_errmsg(c), "the store has");
      CHECK(th_fake_answered(f) == 0); /* only /v1/info was asked */
    }
    lmap_client_free(c);
    th_fake_free(f);
    free(q);
  }
out:
  free(info);
  free(v);
  free(out);
}

/* A whole HTTP 200 answer of Content-Type application/x-lmap-sparse for N
 * items of one cell over C classes: a header of `classes` and G = 1, then
 * per item `count` entries (classes 0, 1, ...) of value `value` and rest
 * `rest`, written here byte by byte from the layout in docs/API.md. */
static char *binsparse_answer(size_t n, uint32_t classes, uint32_t count,
                              float value, float rest, const char *magic,
                              size_t *len) {
  size_t body = 16 + n * 8 * ((size_t)count + 1);
  char head[200];
  int hl = snprintf(head, sizeof head,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/x-lmap-sparse"
                    "\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                    body);
  unsigned char *a = malloc((size_t)hl + body);
  if (a == NULL)
    return NULL;
  memcpy(a, head, (size_t)hl);
  unsigned char *p = a + hl;
  uint32_t words[3] = {(uint32_t)n, classes, 1};
  memcpy(p, magic, 4);
  for (int w = 0; w < 3; w++)
    for (int i = 0; i < 4; i++)
      p[4 + 4 * w + i] = (unsigned char)(words[w] >> (8 * i));
  p += 16;
  uint32_t rbits, vbits;
  memcpy(&rbits, &rest, 4);
  memcpy(&vbits, &value, 4);
  for (size_t item = 0; item < n; item++) {
    uint32_t unit[2] = {count, rbits};
    for (uint32_t e = 0; e <= count; e++) {
      if (e) {
        unit[0] = e - 1;
        unit[1] = vbits;
      }
      for (int w = 0; w < 2; w++)
        for (int i = 0; i < 4; i++)
          p[4 * w + i] = (unsigned char)(unit[w] >> (8 * i));
      p += 8;
    }
  }
  *len = (size_t)hl + body;
  return (char *)a;
}

/* Sparse binary answers that cannot be labels: LMAP_EPROTOCOL naming what
 * is wrong; a good one expands to rest everywhere and its listed values. */
static void case_hostile_binsparse(void) {
  g_case = "hostile_binsparse";
  char *info = info_answer();
  size_t n = 2, C = g_C, len = 0;
  float *out = malloc(n * C * sizeof *out);
  char msg[600];
  REQUIRE(info && out && C > 4);
  lmap_label_options o1 = label_opts(1, LMAP_BOX_XYXY, 1);
  lmap_label_options raw = label_opts(1, LMAP_BOX_XYXY, 0);
  static const struct {
    int classes_delta; /* the header's C against the store's */
    int count_over;    /* item 0's cell claims C + 1 entries */
    int entries;       /* entries per item (classes 0..entries-1) */
    float value, rest;
    const char *magic;
    int softmax, ok;
    const char *needle;
  } cases[] = {
      {0, 0, 3, 0.25f, 0.125f, "LMS1", 1, 1, ""},
      {0, 0, 3, 0.25f, 0.125f, "LMS2", 1, 0, "does not start with \"LMS1\""},
      {1, 0, 3, 0.25f, 0.125f, "LMS1", 1, 0, "asked for"},
      {0, 1, 0, 0.25f, 0.125f, "LMS1", 1, 0, "more than the store's"},
      {0, 0, 3, 1.5f, 0.125f, "LMS1", 1, 0,
       "item 0, cell 0, entry 0 (class 0) is 1.5, not a probability"},
      {0, 0, 3, 1.5f, 0.125f, "LMS1", 0, 1, ""},
      {0, 0, 3, NAN, 0.125f, "LMS1", 0, 0, "is nan, not a finite number"},
      {0, 0, 3, 0.25f, -INFINITY, "LMS1", 0, 0, "rest -inf"},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    char *a = binsparse_answer(n, (uint32_t)((long)C + cases[k].classes_delta),
                               (uint32_t)cases[k].entries, cases[k].value,
                               cases[k].rest, cases[k].magic, &len);
    if (a && cases[k].count_over) {
      /* Item 0's cell claims C + 1 entries: refused at its count. */
      char *p = a + len - 8 * n * ((size_t)cases[k].entries + 1);
      uint32_t over = (uint32_t)C + 1;
      for (int i = 0; i < 4; i++)
        p[i] = (char)(over >> (8 * i));
    }
    int rc = a ? labels_from(info, a, len, n, cases[k].softmax ? &o1 : &raw,
                             out, n * C, msg)
               : -1;
    if (!CHECK_RC(rc, cases[k].ok ? 0 : LMAP_EPROTOCOL, NULL))
      fprintf(stderr, "  case %zu: %s\n", k, msg);
    if (cases[k].ok) {
      for (size_t i = 0; i < n; i++)
        for (size_t c = 0; c < C; c++)
          CHECK(
              out[i * C + c] ==
              (c < (size_t)cases[k].entries ? cases[k].value : cases[k].rest));
    } else {
      CHECK_HAS(msg, cases[k].needle);
    }
    free(a);
  }
  /* A client that asked for .npy refuses a sparse answer by its type. */
  {
    char *a = binsparse_answer(n, (uint32_t)C, 1, 0.5f, 0.0f, "LMS1", &len);
    th_fake *f = a ? th_fake_routed(info, a, len) : NULL;
    lmap_client *c = f ? connect_once(th_fake_url(f)) : NULL;
    lmap_query *q = make_queries(n, LMAP_BOX_XYXY, 5);
    if (CHECK(c && q)) {
      lmap_client_set_answer_form(c, LMAP_ANSWER_NPY);
      CHECK_RC(lmap_client_labels(c, q, n, &o1, out, n * C), LMAP_EPROTOCOL,
               NULL);
      CHECK_HAS(lmap_client_errmsg(c), "the answer is not .npy");
    }
    lmap_client_free(c);
    th_fake_free(f);
    free(q);
    free(a);
  }
out:
  free(info);
  free(out);
}

/* Raw maps holding NaN or infinite scores, or class indices that are not
 * classes of the store. */
static void case_hostile_map(void) {
  g_case = "hostile_map";
  char *info = info_answer();
  size_t len = (size_t)2 * g_K * g_H * g_W, half = len / 2, alen = 0;
  float *v = malloc(len * sizeof *v), *out = malloc(len * sizeof *out);
  size_t shape[4] = {2, g_K, g_H, g_W};
  REQUIRE(info && v && out);
  static const struct {
    int plane;
    float value;
    const char *why;
  } bad[] = {
      {0, NAN, "not a finite number"},
      {0, -INFINITY, "not a finite number"},
      {1, NAN, "not a finite number"},
      {1, 2.5f, "not a class index"},
      {1, -1.0f, "not a class index"},
      {1, 0.0f, NULL},
      {0, -3e30f, NULL},
  };
  for (size_t k = 0; k < sizeof bad / sizeof bad[0] + 1; k++) {
    for (size_t i = 0; i < half; i++) {
      v[i] = 0.5f;
      v[half + i] = (float)(i % g_K);
    }
    const char *why = "not a class index";
    char where[64];
    size_t at = half + g_W + 1; /* [1, 0, 1, 1] */
    snprintf(where, sizeof where, "[1, 0, 1, 1]");
    if (k < sizeof bad / sizeof bad[0]) {
      at = bad[k].plane ? at : at - half;
      where[1] = bad[k].plane ? '1' : '0';
      v[at] = bad[k].value;
      why = bad[k].why;
    } else {
      v[at] = (float)g_C; /* one past the store's last class */
    }
    char *a = npy_answer(shape, 4, v, len, 0, &alen);
    th_fake *f = a ? th_fake_routed(info, a, alen) : NULL;
    lmap_client *c = f ? connect_once(th_fake_url(f)) : NULL;
    if (CHECK(c != NULL)) {
      int rc = lmap_client_map(c, "x", out, len, NULL);
      if (!CHECK_RC(rc, why ? LMAP_EPROTOCOL : 0, c))
        fprintf(stderr, "  case %zu\n", k);
      if (why) {
        CHECK_HAS(lmap_client_errmsg(c), where);
        CHECK_HAS(lmap_client_errmsg(c), why);
      }
    }
    lmap_client_free(c);
    th_fake_free(f);
    free(a);
  }
  /* Another K than the store's: a protocol error naming both shapes. */
  size_t other[4] = {2, g_K + 1, g_H, g_W};
  float *w = calloc(len + 2 * g_H * g_W, sizeof *w);
  char *a = w ? npy_answer(other, 4, w, len + 2 * g_H * g_W, 0, &alen) : NULL;
  th_fake *f = a ? th_fake_routed(info, a, alen) : NULL;
  lmap_client *c = f ? connect_once(th_fake_url(f)) : NULL;
  if (CHECK(c != NULL)) {
    CHECK_RC(lmap_client_map(c, "x", out, len, NULL), LMAP_EPROTOCOL, c);
    char want[64];
    snprintf(want, sizeof want, "not the (2, %u, %u, %u) asked for", g_K, g_H,
             g_W);
    CHECK_HAS(lmap_client_errmsg(c), want);
    /* A buffer of another size is still the caller's error. */
    CHECK_RC(lmap_client_map(c, "x", out, len - 1, NULL), LMAP_ERANGE, c);
  }
  lmap_client_free(c);
  th_fake_free(f);
  free(a);
  free(w);
out:
  free(info);
  free(v);
  free(out);
}

/* Sparse answers: values that are not finite (a JSON number beyond float's
 * range becomes infinity), probabilities outside [0, 1], a rest that is not
 * what softmax implies, class indices that are not the store's. */
static void case_hostile_sparse(void) {
  g_case = "hostile_sparse";
  char *info = info_answer();
  REQUIRE(info != NULL);
  char big[32], top[32];
  snprintf(big, sizeof big, "%u", g_C);
  snprintf(top, sizeof top, "%u", g_C - 1);
  static const struct {
    int softmax;
    const char *classes, *key, *values, *rest, *want;
  } cases[] = {
      {1, "[3,1]", "probs", "[0.5,0.25]", "0.001", NULL},
      {1, "[3,1]", "probs", "[1e39,0.25]", "0.001",
       "probs[0] is 1e+39, not a finite number"},
      {1, "[3,1]", "probs", "[0.5,-1e39]", "0.001",
       "probs[1] is -1e+39, not a finite number"},
      {1, "[3,1]", "probs", "[0.5,0.25]", "1e39",
       "rest is 1e+39, not a finite number"},
      {1, "[3,1]", "probs", "[1.5,0.25]", "0.001",
       "probs[0] is 1.5, not a probability"},
      {1, "[3,1]", "probs", "[0.5,0.25]", "-0.5",
       "rest is -0.5, not a probability"},
      {1, "[3,1]", "logits", "[0.5,0.25]", "0.001",
       "not classes, probs and rest"},
      {0, "[3,1]", "logits", "[7.5,-2]", "0", NULL},
      {0, "[3,1]", "logits", "[7.5,1e300]", "0",
       "logits[1] is 1e+300, not a finite number"},
      {0, "[3,1]", "logits", "[7.5,-2]", "0.5", "rest is 0.5, not 0"},
      {0, "[3,1]", "probs", "[0.5,0.25]", "0", "not classes, logits and rest"},
      {1, "[3,TOP]", "probs", "[0.5,0.25]", "0", NULL},
      {1, "[3,BIG]", "probs", "[0.5,0.25]", "0",
       "classes[1] is not a class index"},
  };
  lmap_query q = {"a", {0, 0, 1, 1}, 0};
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    char cls[64], body[512];
    snprintf(cls, sizeof cls, "%s", cases[k].classes);
    char *t = strstr(cls, "TOP");
    if (t)
      snprintf(t, sizeof cls - (size_t)(t - cls), "%s]", top);
    t = strstr(cls, "BIG");
    if (t)
      snprintf(t, sizeof cls - (size_t)(t - cls), "%s]", big);
    snprintf(
        body, sizeof body,
        "{\"results\":[{\"id\":\"a\",\"classes\":%s,\"%s\":%s,\"rest\":%s}]}",
        cls, cases[k].key, cases[k].values, cases[k].rest);
    char *a = http_answer("200 OK", "application/json", body);
    th_fake *f = a ? th_fake_routed(info, a, strlen(a)) : NULL;
    lmap_client *c = f ? connect_once(th_fake_url(f)) : NULL;
    if (CHECK(c != NULL)) {
      lmap_label_options o = label_opts(1, LMAP_BOX_XYXY, cases[k].softmax);
      lmap_sparse *s = NULL;
      int rc = lmap_client_sparse(c, &q, 1, &o, &s);
      if (!CHECK_RC(rc, cases[k].want ? LMAP_EPROTOCOL : 0, c))
        fprintf(stderr, "  answer %s\n", body);
      if (cases[k].want) {
        CHECK(s == NULL);
        CHECK_HAS(lmap_client_errmsg(c), cases[k].want);
        CHECK_HAS(lmap_client_errmsg(c), "results[0]");
      }
      lmap_sparse_free(s);
    }
    lmap_client_free(c);
    th_fake_free(f);
    free(a);
  }
  /* G x G: the message names the cell. */
  const char *g2 =
      "{\"results\":[{\"id\":\"a\",\"classes\":[[1],[2],[3],[4]],"
      "\"probs\":[[0.5],[0.5],[0.5],[0.5]],\"rest\":[0,0,1e39,0]}]}";
  char *a = http_answer("200 OK", "application/json", g2);
  th_fake *f = a ? th_fake_routed(info, a, strlen(a)) : NULL;
  lmap_client *c = f ? connect_once(th_fake_url(f)) : NULL;
  if (CHECK(c != NULL)) {
    lmap_label_options o = label_opts(2, LMAP_BOX_XYXY, 1);
    lmap_sparse *s = NULL;
    CHECK_RC(lmap_client_sparse(c, &q, 1, &o, &s), LMAP_EPROTOCOL, c);
    CHECK_HAS(lmap_client_errmsg(c), "results[0] cell 2: rest is 1e+39");
  }
  lmap_client_free(c);
  th_fake_free(f);
  free(a);
out:
  free(info);
}

/* Answers larger than what was asked for can be: refused when the
 * Content-Length says so, before the body is read, or as soon as the bytes
 * pass the bound; either way the transfer is abandoned (the fake sees the
 * connection close after a few socket buffers, not 1 GiB). */
static void case_hostile_size(void) {
  g_case = "hostile_size";
  char *info = info_answer();
  size_t n = 2;
  lmap_query *q = make_queries(n, LMAP_BOX_XYXY, 5);
  float *out = malloc(n * g_C * sizeof *out);
  size_t mlen = (size_t)2 * g_K * g_H * g_W;
  float *map = malloc(mlen * sizeof *map);
  REQUIRE(info && q && out && map);
  /* What the fake may send after the client stopped reading: socket
   * buffers, nowhere near the 1 GiB the library once took. */
  const unsigned long long slack = 32ull << 20;
  const size_t endless = (size_t)1200 << 20;
  static const char *heads[] = {
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 900000000\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"results\":[",
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
      "40000000\r\n",
      "HTTP/1.1 200 OK\r\nContent-Type: application/x-npy\r\nContent-Length: 900000000\r\n\r\n",
      "NPY", /* an .npy header of the shape asked for, then data without end */
      "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n",
      "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 900000000\r\n\r\n",
  };
  enum { SPARSE, LABELS, MAP, INFO };
  for (size_t h = 0; h < sizeof heads / sizeof heads[0]; h++) {
    int npy = strstr(heads[h], "x-npy") != NULL || strcmp(heads[h], "NPY") == 0;
    for (int call = SPARSE; call <= INFO; call++) {
      if (npy != (call == LABELS || call == MAP))
        continue;
      /* For /v1/info the flood answers the description itself. */
      size_t shape2[2] = {n, g_C}, shape4[4] = {2, g_K, g_H, g_W},
             hlen = strlen(heads[h]);
      char *head = strcmp(heads[h], "NPY") != 0 ? NULL
                   : call == LABELS ? npy_answer(shape2, 2, NULL, 0, -1, &hlen)
                                    : npy_answer(shape4, 4, NULL, 0, -1, &hlen);
      th_fake *f = th_fake_flood(call == INFO ? NULL : info,
                                 head ? head : heads[h], hlen, endless);
      free(head);
      lmap_client *c = f ? connect_once(th_fake_url(f)) : NULL;
      if (!CHECK(c != NULL)) {
        th_fake_free(f);
        continue;
      }
      lmap_sparse *s = NULL;
      int rc = call == SPARSE ? lmap_client_sparse(c, q, n, NULL, &s)
               : call == LABELS
                   ? lmap_client_labels(c, q, n, NULL, out, n * g_C)
               : call == MAP ? lmap_client_map(c, "x", map, mlen, NULL)
                             : lmap_client_info(c, NULL, NULL);
      unsigned long long sent = th_fake_sent(f);
      if (!CHECK_RC(rc, LMAP_EPROTOCOL, c) || !CHECK(sent < slack))
        fprintf(stderr, "  answer %zu, call %d: %llu bytes sent\n", h, call,
                sent);
      const char *msg = lmap_client_errmsg(c);
      CHECK(strstr(msg, "over the") || strstr(msg, "longer than its shape") ||
            strstr(msg, "Content-Length is 900000000"));
      lmap_sparse_free(s);
      lmap_client_free(c);
      th_fake_free(f);
    }
  }
out:
  free(info);
  free(q);
  free(out);
  free(map);
}

/* The first id of `store` (lmap ids) into `id`; 0 or -1. */
static int first_id(const char *store, char id[300]) {
  char opath[700];
  tmp_path(opath, sizeof opath, "ids1.txt");
  const char *argv[] = {th_lmap(), "ids", store, NULL};
  char *text = th_run(argv, opath) == 0 ? th_read_file(opath, NULL) : NULL;
  remove(opath);
  int rc = text && text[0] ? 0 : -1;
  if (rc == 0)
    snprintf(id, 300, "%.*s", (int)strcspn(text, "\n"), text);
  free(text);
  return rc;
}

/* A store replaced (SIGHUP) by one of another shape while handles hold
 * the old description. A sparse answer naming classes past the old C is
 * not refused for good: the description is asked again and the call
 * repeated. A labels or map buffer sized for the old store is the caller's
 * LMAP_ERANGE, whether the handle finds out before asking (the caller's
 * buffer disagrees with what it holds) or from the answer (it agreed with
 * the old description: the answer's shape is then the new store's). */
static void case_store_change(void) {
  g_case = "store_change";
  char path[700], id[300];
  tmp_path(path, sizeof path, "swap.lmap");
  const char *small[] = {th_lmap(), "synth", "-o", path, "-n", "20",
                         "-C",      "10",    "-k", "3",  "-f", "--no-progress",
                         NULL};
  const char *large[] = {th_lmap(), "synth",         "-o", path, "-n", "20",
                         "-f",      "--no-progress", NULL};
  th_daemon *d = NULL;
  lmap_client *c = NULL, *dense = NULL, *map = NULL, *poll = NULL;
  float *out = malloc((size_t)1000 * 2 * 5 * 15 * 15 * sizeof *out);
  REQUIRE(out && th_run(small, NULL) == 0 && first_id(path, id) == 0);
  REQUIRE((d = th_start(path, NULL)) != NULL);
  c = connect_to(d->url, NULL);
  dense = connect_to(d->url, NULL);
  map = connect_to(d->url, NULL);
  poll = connect_to(d->url, NULL);
  REQUIRE(c && dense && map && poll);
  lmap_info before, after = {0};
  REQUIRE_RC(lmap_client_info(c, &before, NULL), 0, c);
  REQUIRE_RC(lmap_client_info(dense, NULL, NULL), 0, dense);
  REQUIRE_RC(lmap_client_info(map, NULL, NULL), 0, map);
  REQUIRE(before.num_classes == 10 && before.top_k == 3);
  REQUIRE(th_run(large, NULL) == 0); /* renamed over the served path */
  th_signal(d, SIGHUP);
  for (int i = 0; i < 400 && after.num_classes != 1000; i++) {
    if (lmap_client_info(poll, &after, NULL) != 0 || after.num_classes != 1000)
      nanosleep(&(struct timespec){0, 25000000}, NULL);
  }
  REQUIRE(after.num_classes == 1000);
  REQUIRE(first_id(path, id) == 0);

  lmap_query q = {id, {0, 0, 1, 1}, 0};
  lmap_sparse *s = NULL;
  if (CHECK_RC(lmap_client_sparse(c, &q, 1, NULL, &s), 0, c)) {
    int past = 0; /* the old description would have refused these */
    for (size_t e = 0; e < s->offsets[1]; e++)
      past |= s->classes[e] >= 10;
    CHECK(past);
  }
  lmap_sparse_free(s);
  /* The old C, the handle's old description: found from the answer. */
  CHECK_RC(lmap_client_labels(dense, &q, 1, NULL, out, 10), LMAP_ERANGE, dense);
  CHECK_HAS(lmap_client_errmsg(dense), "the store was replaced");
  CHECK_RC(lmap_client_labels(dense, &q, 1, NULL, out, 1000), 0, dense);
  /* The old C again, the handle's new description: found before asking. */
  CHECK_RC(lmap_client_labels(dense, &q, 1, NULL, out, 10), LMAP_ERANGE, dense);
  CHECK_HAS(lmap_client_errmsg(dense), "the store has 1000 classes");
  CHECK_RC(lmap_client_map(map, id, out, (size_t)2 * 3 * 15 * 15, NULL),
           LMAP_ERANGE, map);
  CHECK_HAS(lmap_client_errmsg(map), "the store was replaced");
  CHECK_RC(lmap_client_map(map, id, out, (size_t)2 * 5 * 15 * 15, NULL), 0,
           map);
out:
  lmap_client_free(c);
  lmap_client_free(dense);
  lmap_client_free(map);
  lmap_client_free(poll);
  if (d)
    CHECK(th_stop(d, 30) == 0);
  remove(path);
  free(out);
}

/* Attempt counts: retries passes over the endpoints, down_ms skipping. */
static void case_retries(void) {
  g_case = "retries";
  char *a503 = http_answer("503 Service Unavailable", "application/json",
                           "{\"error\":{\"code\":\"unavailable\",\"message\":"
                           "\"busy\",\"field\":\"\"}}");
  th_fake *f = a503 ? th_fake_canned(a503, 0) : NULL;
  lmap_client *c = NULL;
  char err[LMAP_ERRBUF_SIZE], urls[256];
  REQUIRE(f != NULL);
  static const struct {
    int retries;
    unsigned attempts;
  } cases[] = {{-1, 1}, {0, 2}, {1, 2}, {3, 4}};
  unsigned before = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    lmap_client_options o;
    lmap_client_options_init(&o);
    o.retries = cases[i].retries;
    o.retry_backoff_ms = 40;
    REQUIRE_RC(lmap_client_new(th_fake_url(f), &o, &c, err), 0, NULL);
    double t0 = th_now();
    CHECK_RC(lmap_client_info(c, NULL, NULL), LMAP_EUNAVAILABLE, c);
    double dt = th_now() - t0;
    unsigned now = th_fake_answered(f);
    if (!CHECK(now - before == cases[i].attempts))
      fprintf(stderr, "  retries %d: %u attempts, want %u\n", cases[i].retries,
              now - before, cases[i].attempts);
    /* Backoff 40 ms, doubled each pass: 40 + 80 + 160 before pass 4. */
    if (cases[i].attempts == 4 && !CHECK(dt >= 0.27))
      fprintf(stderr, "  3 retries took %.3f s (backoff 40 ms doubling)\n", dt);
    before = now;
    lmap_client_free(c);
    c = NULL;
  }

  /* down_ms: a failed endpoint is skipped while another is available.
   * (Whether it is asked first again after down_ms is the library's choice:
   * it may stay with the endpoint that answered.) */
  lmap_client_options o;
  lmap_client_options_init(&o);
  o.down_ms = 10000; /* far longer than the three calls */
  snprintf(urls, sizeof urls, "%s,%s", th_fake_url(f), g_main->url);
  REQUIRE_RC(lmap_client_new(urls, &o, &c, err), 0, NULL);
  before = th_fake_answered(f);
  CHECK_RC(lmap_client_info(c, NULL, NULL), 0, c);
  CHECK(th_fake_answered(f) == before + 1);
  CHECK_RC(lmap_client_info(c, NULL, NULL), 0, c);
  CHECK_RC(lmap_client_info(c, NULL, NULL), 0, c);
  CHECK(th_fake_answered(f) == before + 1);
  CHECK_STR(lmap_client_endpoint(c), g_main->url);

  /* Fifteen dead endpoints, then a live one. */
  lmap_client_free(c);
  c = NULL;
  char list[2048] = "";
  for (int i = 0; i < LMAP_MAX_ENDPOINTS - 1; i++) {
    char one[64];
    snprintf(one, sizeof one, "http://127.0.0.1:%d,", th_dead_port());
    strcat(list, one);
  }
  strcat(list, g_main->url);
  REQUIRE_RC(lmap_client_new(list, NULL, &c, err), 0, NULL);
  CHECK_RC(lmap_client_info(c, NULL, NULL), 0, c);
  CHECK_STR(lmap_client_endpoint(c), g_main->url);
out:
  lmap_client_free(c);
  th_fake_free(f);
  free(a503);
}

/* The largest batch the server takes, in one call, equals the same queries
 * in small calls; one more query is too large. The largest grid gives
 * probabilities that sum to 1 per cell. Ids with every allowed character
 * reach the server intact. */
static void case_large(void) {
  g_case = "large";
  size_t n = 4096, chunk = 256;
  lmap_query *q = make_queries(n + 1, LMAP_BOX_XYXY, 17);
  float *big = malloc((n + 1) * g_C * sizeof *big);
  float *small = malloc(chunk * g_C * sizeof *small);
  lmap_client *c = connect_to(g_main->url, NULL);
  REQUIRE(q && big && small && c);
  REQUIRE_RC(lmap_client_labels(c, q, n, NULL, big, n * g_C), 0, c);
  int same = 1;
  for (size_t b = 0; b < n; b += chunk) {
    if (!CHECK_RC(lmap_client_labels(c, q + b, chunk, NULL, small, chunk * g_C),
                  0, c))
      break;
    same &= memcmp(small, big + b * g_C, chunk * g_C * sizeof *small) == 0;
  }
  CHECK(same);
  CHECK_RC(lmap_client_labels(c, q, n + 1, NULL, big, (n + 1) * g_C),
           LMAP_ETOOBIG, c);

  size_t G = 64, cells = G * G, len = g_C * cells;
  float *grid = malloc(len * sizeof *grid);
  lmap_label_options o = label_opts((int)G, LMAP_BOX_XYXY, 1);
  if (CHECK(grid != NULL) &&
      CHECK_RC(lmap_client_labels(c, q, 1, &o, grid, len), 0, c)) {
    double worst = 0;
    for (size_t cell = 0; cell < cells; cell++) {
      double sum = 0;
      for (size_t k = 0; k < g_C; k++)
        sum += grid[k * cells + cell];
      if (fabs(sum - 1) > worst)
        worst = fabs(sum - 1);
    }
    CHECK(worst < 1e-4);
  }
  free(grid);

  const char *odd[] = {"a+b:c", "x.y-z_1", "A:9+", "n0_1.JPEG"};
  float *map = malloc((size_t)2 * g_K * g_H * g_W * sizeof *map);
  for (size_t i = 0; map && i < sizeof odd / sizeof odd[0]; i++) {
    char quoted[64];
    snprintf(quoted, sizeof quoted, "'%s'", odd[i]);
    CHECK_RC(lmap_client_map(c, odd[i], map, (size_t)2 * g_K * g_H * g_W, NULL),
             LMAP_ENOTFOUND, c);
    CHECK_HAS(lmap_client_errmsg(c), quoted);
    lmap_query one = {odd[i], {0, 0, 1, 1}, 0};
    CHECK_RC(lmap_client_labels(c, &one, 1, NULL, big, g_C), LMAP_ENOTFOUND, c);
    CHECK_HAS(lmap_client_errmsg(c), quoted);
  }
  free(map);
out:
  lmap_client_free(c);
  free(q);
  free(big);
  free(small);
}

/* A server that accepts and never answers: LMAP_ETIMEOUT within about the
 * timeout; with a live endpoint after it, success. */
static void case_timeout(void) {
  g_case = "timeout";
  th_fake *hung = th_fake_silent();
  lmap_client *c = NULL;
  size_t n = 4;
  lmap_query *q = make_queries(n, LMAP_BOX_XYXY, 1);
  float *out = malloc(n * g_C * sizeof *out);
  float *ref = q ? ref_labels(q, n) : NULL;
  REQUIRE(hung && q && out && ref);
  lmap_client_options o;
  lmap_client_options_init(&o);
  o.timeout_ms = 300;
  o.retries = -1;
  char err[LMAP_ERRBUF_SIZE];
  REQUIRE_RC(lmap_client_new(th_fake_url(hung), &o, &c, err), 0, NULL);
  double t0 = th_now();
  CHECK_RC(lmap_client_info(c, NULL, NULL), LMAP_ETIMEOUT, c);
  double t1 = th_now();
  if (!CHECK(t1 - t0 >= 0.25 && t1 - t0 < 3.0))
    fprintf(stderr, "  one pass took %.3f s\n", t1 - t0);
  CHECK_RC(lmap_client_labels(c, q, n, NULL, out, n * g_C), LMAP_ETIMEOUT, c);
  lmap_error_detail det;
  lmap_client_last_error(c, &det);
  CHECK(det.http_status == 0);
  CHECK_HAS(det.message, th_fake_url(hung));
  lmap_client_free(c);
  c = NULL;

  /* The default retries: one more pass after a short backoff. */
  o.retries = 0;
  REQUIRE_RC(lmap_client_new(th_fake_url(hung), &o, &c, err), 0, NULL);
  t0 = th_now();
  CHECK_RC(lmap_client_info(c, NULL, NULL), LMAP_ETIMEOUT, c);
  t1 = th_now();
  if (!CHECK(t1 - t0 >= 0.55 && t1 - t0 < 4.0))
    fprintf(stderr, "  two passes took %.3f s\n", t1 - t0);
  lmap_client_free(c);
  c = NULL;

  /* Hung first, live second. A 2 s timeout here makes the skip below
   * unmistakable on a loaded machine: waiting for the hung endpoint would
   * take 2 s, skipping it a few milliseconds. */
  o.timeout_ms = 2000;
  char urls[256];
  snprintf(urls, sizeof urls, "%s,%s", th_fake_url(hung), g_main->url);
  REQUIRE_RC(lmap_client_new(urls, &o, &c, err), 0, NULL);
  t0 = th_now();
  CHECK_RC(lmap_client_labels(c, q, n, NULL, out, n * g_C), 0, c);
  t1 = th_now();
  CHECK(memcmp(out, ref, n * g_C * sizeof *out) == 0);
  CHECK_STR(lmap_client_endpoint(c), g_main->url);
  CHECK(t1 - t0 < 6.0);
  /* The hung endpoint is skipped for down_ms: the next call does not wait
   * for it (it would take 2 s). */
  t0 = th_now();
  CHECK_RC(lmap_client_labels(c, q, n, NULL, out, n * g_C), 0, c);
  t1 = th_now();
  if (!CHECK(t1 - t0 < 1.5))
    fprintf(stderr, "  the call after the timeout took %.3f s\n", t1 - t0);
  CHECK(memcmp(out, ref, n * g_C * sizeof *out) == 0);
out:
  lmap_client_free(c);
  th_fake_free(hung);
  free(q);
  free(out);
  free(ref);
}

/* Many calls on one handle use one connection (counted by a proxy). */
static void case_keepalive(void) {
  g_case = "keepalive";
  th_fake *p = th_fake_proxy(g_main->port, 0);
  lmap_client *c = NULL;
  size_t n = 4, mlen = (size_t)2 * g_K * g_H * g_W;
  lmap_query *q = make_queries(n, LMAP_BOX_XYXY, 4);
  float *out = malloc((n * g_C + mlen) * sizeof *out);
  REQUIRE(p && q && out);
  c = connect_to(th_fake_url(p), NULL);
  REQUIRE(c != NULL);
  int failures = 0;
  double t0 = th_now();
  for (int i = 0; i < 1000; i++) {
    int rc;
    if (i % 10 == 7) {
      lmap_sparse *s = NULL;
      rc = lmap_client_sparse(c, q, n, NULL, &s);
      lmap_sparse_free(s);
    } else if (i % 10 == 8) {
      rc = lmap_client_map(c, q[0].id, out, mlen, NULL);
    } else if (i % 10 == 9) {
      rc = lmap_client_info(c, NULL, NULL);
    } else {
      q[0].flip = i & 1;
      rc = lmap_client_labels(c, q, n, NULL, out, n * g_C);
    }
    failures += rc != 0;
  }
  double dt = th_now() - t0;
  CHECK(failures == 0);
  unsigned conns = th_fake_accepted(p);
  if (!CHECK(conns == 1))
    fprintf(stderr, "  1000 calls used %u connections\n", conns);
  printf("keepalive: 1000 calls in %.3f s over %u connection(s)\n", dt, conns);
  /* Error answers keep the connection too. */
  lmap_query unk = {"no_such_id", {0, 0, 1, 1}, 0};
  for (int i = 0; i < 20; i++) {
    CHECK_RC(lmap_client_labels(c, &unk, 1, NULL, out, g_C), LMAP_ENOTFOUND, c);
    CHECK_RC(lmap_client_labels(c, q, 1, NULL, out, g_C), 0, c);
  }
  printf("keepalive: with 20 error answers: %u connection(s)\n",
         th_fake_accepted(p));
out:
  lmap_client_free(c);
  th_fake_free(p);
  free(q);
  free(out);
}

/* ---- kill -9 and SIGTERM in the middle of a run ---- */

#define RUN_BATCHES 200
#define RUN_BATCH 64

typedef struct killer {
  pthread_t thread;
  atomic_int go; /* 1: kill now */
  atomic_int done;
  th_daemon *target;
  int sig;
  long delay_us;
} killer;

static void *killer_main(void *arg) {
  killer *k = arg;
  while (!atomic_load(&k->go))
    nanosleep(&(struct timespec){0, 100000}, NULL);
  nanosleep(&(struct timespec){0, k->delay_us * 1000}, NULL);
  if (k->sig == SIGKILL)
    th_kill9(k->target);
  else
    th_signal(k->target, k->sig);
  atomic_store(&k->done, 1);
  return NULL;
}

/* The run's queries and their answers from a healthy server. */
typedef struct run_data {
  lmap_query *q;
  float *ref;
} run_data;

static int run_data_make(run_data *r) {
  size_t total = (size_t)RUN_BATCHES * RUN_BATCH;
  r->q = make_queries(total, LMAP_BOX_XYXY, 13);
  r->ref = malloc(total * g_C * sizeof *r->ref);
  lmap_client *c = connect_to(g_main->url, NULL);
  int rc = r->q && r->ref && c ? 0 : -1;
  for (size_t b = 0; rc == 0 && b < RUN_BATCHES; b++)
    rc = lmap_client_labels(c, r->q + b * RUN_BATCH, RUN_BATCH, NULL,
                            r->ref + b * RUN_BATCH * g_C, RUN_BATCH * g_C);
  lmap_client_free(c);
  return rc;
}

/* Runs every batch on `c`, firing `k` before batch `at`; sleeps `pace_ms`
 * between batches. Returns the number of failed or wrong batches. */
static int run_batches(lmap_client *c, const run_data *r, killer *k, int at,
                       long pace_ms, const char **first_ep) {
  float *out = malloc((size_t)RUN_BATCH * g_C * sizeof *out);
  int bad = 0;
  for (int b = 0; out && b < RUN_BATCHES; b++) {
    if (b == at && k)
      atomic_store(&k->go, 1);
    memset(out, 0, (size_t)RUN_BATCH * g_C * sizeof *out);
    int rc = lmap_client_labels(c, r->q + (size_t)b * RUN_BATCH, RUN_BATCH,
                                NULL, out, (size_t)RUN_BATCH * g_C);
    if (rc != 0) {
      if (bad++ < 5)
        fprintf(stderr, "  batch %d: %s (%s)\n", b, lmap_strerror(rc),
                lmap_client_errmsg(c));
    } else if (memcmp(out, r->ref + (size_t)b * RUN_BATCH * g_C,
                      (size_t)RUN_BATCH * g_C * sizeof *out) != 0) {
      if (bad++ < 5)
        fprintf(stderr, "  batch %d: answer differs from the reference\n", b);
    }
    if (b == 0 && first_ep)
      *first_ep = lmap_client_endpoint(c);
    if (pace_ms)
      nanosleep(&(struct timespec){0, pace_ms * 1000000L}, NULL);
  }
  free(out);
  return out ? bad : -1;
}

static void case_kill9(const run_data *r) {
  g_case = "kill9";
  th_daemon *a = th_start(g_store, NULL), *b = th_start(g_store, NULL);
  lmap_client *c = NULL;
  killer k;
  memset(&k, 0, sizeof k);
  REQUIRE(a && b);
  char urls[256];
  snprintf(urls, sizeof urls, "%s,%s", a->url, b->url);
  c = connect_to(urls, NULL);
  REQUIRE(c != NULL);
  k.target = a; /* the first endpoint answers while it lives */
  k.sig = SIGKILL;
  k.delay_us = 700;
  REQUIRE(pthread_create(&k.thread, NULL, killer_main, &k) == 0);
  const char *ep0 = NULL;
  char first[64] = "";
  double t0 = th_now();
  int bad = run_batches(c, r, &k, RUN_BATCHES / 2, 0, &ep0);
  double dt = th_now() - t0;
  if (ep0)
    snprintf(first, sizeof first, "%s", ep0);
  atomic_store(&k.go, 1);
  pthread_join(k.thread, NULL);
  CHECK_STR(first, a->url);
  if (!CHECK(bad == 0))
    fprintf(stderr, "  %d of %d batches failed or differ\n", bad, RUN_BATCHES);
  CHECK_STR(lmap_client_endpoint(c), b->url);
  CHECK(a->pid == 0); /* killed and reaped */
  printf(
      "kill9: %d batches of %d in %.3f s, first endpoint killed at batch %d\n",
      RUN_BATCHES, RUN_BATCH, dt, RUN_BATCHES / 2);
out:
  lmap_client_free(c);
  th_kill9(a);
  CHECK(th_stop(b, 30) == 0);
}

/* SIGTERM: the draining server finishes what it has; the client keeps
 * every batch right. With the default grace the server exits 0 once the
 * client lets go; with --grace 1 it leaves in the middle of the run and the
 * client moves to the other server. */
static void case_drain(const run_data *r) {
  g_case = "drain";
  th_daemon *a = th_start(g_store, NULL), *b = th_start(g_store, NULL);
  const char *short_grace[] = {"--grace", "1", NULL};
  th_daemon *a2 = th_start(g_store, short_grace);
  lmap_client *c = NULL;
  killer k;
  memset(&k, 0, sizeof k);
  REQUIRE(a && b && a2);
  char urls[256];
  snprintf(urls, sizeof urls, "%s,%s", a->url, b->url);
  c = connect_to(urls, NULL);
  REQUIRE(c != NULL);
  k.target = a;
  k.sig = SIGTERM;
  k.delay_us = 500;
  REQUIRE(pthread_create(&k.thread, NULL, killer_main, &k) == 0);
  int bad = run_batches(c, r, &k, RUN_BATCHES / 2, 0, NULL);
  atomic_store(&k.go, 1);
  pthread_join(k.thread, NULL);
  if (!CHECK(bad == 0))
    fprintf(stderr, "  %d of %d batches failed or differ\n", bad, RUN_BATCHES);
  printf("drain: endpoint after SIGTERM of the first: %s\n",
         lmap_client_endpoint(c) == NULL ? "(null)"
         : strcmp(lmap_client_endpoint(c), a->url) == 0
             ? "the draining one (kept alive)"
             : "the other one");
  lmap_client_free(c);
  c = NULL;
  CHECK(th_stop(a, 30) == 0); /* already draining: exits 0 once idle */

  /* --grace 1, a paced run of ~2 s, SIGTERM at a quarter. */
  snprintf(urls, sizeof urls, "%s,%s", a2->url, b->url);
  c = connect_to(urls, NULL);
  REQUIRE(c != NULL);
  memset(&k, 0, sizeof k);
  k.target = a2;
  k.sig = SIGTERM;
  k.delay_us = 300;
  REQUIRE(pthread_create(&k.thread, NULL, killer_main, &k) == 0);
  const char *ep0 = NULL;
  char first[64] = "";
  bad = run_batches(c, r, &k, RUN_BATCHES / 4, 10, &ep0);
  if (ep0)
    snprintf(first, sizeof first, "%s", ep0);
  atomic_store(&k.go, 1);
  pthread_join(k.thread, NULL);
  CHECK_STR(first, a2->url);
  if (!CHECK(bad == 0))
    fprintf(stderr, "  %d of %d batches failed or differ\n", bad, RUN_BATCHES);
  CHECK_STR(lmap_client_endpoint(c), b->url);
out:
  lmap_client_free(c);
  th_stop(a, 30);
  th_stop(a2, 30);
  CHECK(th_stop(b, 30) == 0);
}

/* Handles used concurrently, one per thread, created at the same time. */
typedef struct worker {
  pthread_t thread;
  const run_data *r;
  int index;
  int bad;
  pthread_barrier_t *start;
} worker;

static void *worker_main(void *arg) {
  worker *w = arg;
  pthread_barrier_wait(w->start);
  lmap_client *c = connect_to(g_main->url, NULL);
  float *out = malloc((size_t)RUN_BATCH * g_C * sizeof *out);
  if (c == NULL || out == NULL) {
    w->bad = -1;
  } else {
    for (int b = w->index; b < RUN_BATCHES; b += 8) {
      int rc = lmap_client_labels(c, w->r->q + (size_t)b * RUN_BATCH, RUN_BATCH,
                                  NULL, out, (size_t)RUN_BATCH * g_C);
      if (rc != 0 || memcmp(out, w->r->ref + (size_t)b * RUN_BATCH * g_C,
                            (size_t)RUN_BATCH * g_C * sizeof *out) != 0)
        w->bad++;
    }
  }
  free(out);
  lmap_client_free(c);
  return NULL;
}

static void case_threads(const run_data *r) {
  g_case = "threads";
  enum { NT = 4 };
  worker w[NT];
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, NT);
  int started = 0;
  for (int i = 0; i < NT; i++) {
    w[i] = (worker){.r = r, .index = i, .start = &start};
    if (pthread_create(&w[i].thread, NULL, worker_main, &w[i]) == 0)
      started++;
  }
  CHECK(started == NT);
  for (int i = 0; i < started; i++) {
    pthread_join(w[i].thread, NULL);
    CHECK(w[i].bad == 0);
  }
  pthread_barrier_destroy(&start);
}

/* fork(): the child frees the inherited handle and makes its own; the
 * parent's handle keeps working. */
static void case_fork(void) {
  g_case = "fork";
  size_t n = 4;
  lmap_query *q = make_queries(n, LMAP_BOX_XYXY, 21);
  float *ref = q ? ref_labels(q, n) : NULL;
  float *out = malloc(n * g_C * sizeof *out);
  lmap_client *c = connect_to(g_main->url, NULL);
  REQUIRE(q && ref && out && c);
  REQUIRE_RC(lmap_client_labels(c, q, n, NULL, out, n * g_C), 0, c);
  fflush(NULL);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    lmap_client_free(c);
    lmap_client *mine = connect_to(g_main->url, NULL);
    int ok = mine && lmap_client_labels(mine, q, n, NULL, out, n * g_C) == 0 &&
             memcmp(out, ref, n * g_C * sizeof *out) == 0;
    lmap_client_free(mine);
    _exit(ok ? 0 : 1);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  memset(out, 0, n * g_C * sizeof *out);
  CHECK_RC(lmap_client_labels(c, q, n, NULL, out, n * g_C), 0, c);
  CHECK(memcmp(out, ref, n * g_C * sizeof *out) == 0);
out:
  lmap_client_free(c);
  free(q);
  free(ref);
  free(out);
}

/* A base URL with a trailing slash or a path prefix reaching lmapd through
 * a proxy: the prefix "/" must not become "//v1/...". */
static void case_url_forms(void) {
  g_case = "url_forms";
  char urls[256];
  snprintf(urls, sizeof urls, "%s/", g_main->url);
  lmap_client *c = connect_to(urls, NULL);
  if (CHECK(c != NULL))
    CHECK_RC(lmap_client_info(c, NULL, NULL), 0, c);
  lmap_client_free(c);
  snprintf(urls, sizeof urls, "http://localhost:%d", g_main->port);
  c = connect_to(urls, NULL);
  if (CHECK(c != NULL))
    CHECK_RC(lmap_client_info(c, NULL, NULL), 0, c);
  lmap_client_free(c);
}

static int load_ids(void) {
  char opath[700];
  tmp_path(opath, sizeof opath, "ids.txt");
  const char *argv[] = {th_lmap(), "ids", g_store, NULL};
  if (th_run(argv, opath) != 0)
    return -1;
  char *text = th_read_file(opath, NULL);
  remove(opath);
  if (text == NULL)
    return -1;
  size_t cap = 512;
  g_ids = malloc(cap * sizeof *g_ids);
  for (char *line = strtok(text, "\n"); line && g_ids;
       line = strtok(NULL, "\n")) {
    if (g_nids == cap)
      break;
    g_ids[g_nids++] = strdup(line);
  }
  free(text);
  return g_nids > 0 ? 0 : -1;
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  th_init();
  double t0 = th_now();
  snprintf(g_store, sizeof g_store, "%s/store-%ld.lmap", th_tmp(),
           (long)getpid());
  const char *synth[] = {th_lmap(), "synth",         "-o", g_store, "-n", "300",
                         "-f",      "--no-progress", NULL};
  if (th_run(synth, NULL) != 0 || load_ids() != 0) {
    fprintf(stderr, "test_client: cannot make the store %s\n", g_store);
    return 1;
  }
  case_basics();
  case_new();
  g_main = th_start(g_store, NULL);
  if (g_main == NULL) {
    fprintf(stderr, "test_client: lmapd does not start\n");
    return 1;
  }
  case_info();
  if (g_C == 0) {
    fprintf(stderr, "test_client: no store description; stopping\n");
    return 1;
  }
  case_labels();
  case_answer_forms();
  case_sparse();
  case_map();
  case_errors();
  case_max_batch();
  case_token();
  case_url_forms();
  case_failover();
  case_hostile_dense();
  case_hostile_binsparse();
  case_hostile_map();
  case_hostile_sparse();
  case_hostile_size();
  case_store_change();
  case_retries();
  case_timeout();
  case_keepalive();
  case_large();
  case_fork();
  run_data r = {0};
  g_case = "run_data";
  if (CHECK(run_data_make(&r) == 0)) {
    case_threads(&r);
    case_kill9(&r);
    case_drain(&r);
  }
  free(r.q);
  free(r.ref);
  g_case = "teardown";
  CHECK(th_stop(g_main, 30) == 0);
  remove(g_store);
  for (size_t i = 0; i < g_nids; i++)
    free(g_ids[i]);
  free(g_ids);
  if (g_failed == 0)
    th_remove_logs();
  printf("test_client: %d checks, %d failed%s%s (%.1f s)\n", g_checks, g_failed,
         g_failed ? " in: " : "", g_failed_cases, th_now() - t0);
  return g_failed ? 1 : 0;
}
