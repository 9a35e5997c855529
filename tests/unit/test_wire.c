/* Unit tests of liblmap's wire module: the labels request body, the .npy
 * and sparse binary stream readers fed in every split, and the JSON answer
 * readers on good and malformed documents. The references are numpy's header
 * layout and the answers lmapd writes (docs/API.md). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "shared/sparsebin.h"
#include "test.h"
#include "wire.h"

/* A .npy file as numpy.save writes it: magic, version, header padded with
 * spaces to a 64-byte boundary, then the floats. */
static size_t make_npy(char *buf, size_t cap, const char *shape, const float *v,
                       size_t n, int version) {
  char dict[256];
  int dlen = snprintf(dict, sizeof dict,
                      "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }",
                      shape);
  size_t pre = version == 1 ? 10 : 12;
  size_t total = pre + (size_t)dlen + 1;
  size_t pad = (64 - total % 64) % 64;
  size_t hlen = (size_t)dlen + pad + 1;
  size_t at = 0;
  memcpy(buf, "\x93NUMPY", 6);
  buf[6] = (char)version;
  buf[7] = 0;
  if (version == 1) {
    buf[8] = (char)(hlen & 255);
    buf[9] = (char)(hlen >> 8);
  } else {
    buf[8] = (char)(hlen & 255);
    buf[9] = (char)(hlen >> 8);
    buf[10] = buf[11] = 0;
  }
  at = pre;
  memcpy(buf + at, dict, (size_t)dlen);
  at += (size_t)dlen;
  memset(buf + at, ' ', pad);
  at += pad;
  buf[at++] = '\n';
  ASSERT(at + n * 4 <= cap);
  memcpy(buf + at, v, n * 4);
  return at + n * 4;
}

static void test_npy_every_split(void) {
  float v[6] = {1, 2.5f, -3, 4e-8f, 5, 6};
  char file[512];
  for (int version = 1; version <= 2; version++) {
    size_t len = make_npy(file, sizeof file, "(2, 3)", v, 6, version);
    /* One byte at a time, and every split in two. */
    for (size_t cut = 0; cut <= len; cut++) {
      float out[6] = {0};
      size_t expect[2] = {2, 3};
      lmap_npy_sink s;
      lmap_npy_sink_init(&s, out, 6, expect, 2);
      int rc = lmap_npy_feed(&s, file, cut);
      if (rc == 0)
        rc = lmap_npy_feed(&s, file + cut, len - cut);
      ASSERT_EQ(rc, 0);
      ASSERT_EQ(lmap_npy_finish(&s), 0);
      ASSERT(memcmp(out, v, sizeof v) == 0);
      ASSERT_EQ(s.ndim, 2);
      lmap_npy_sink_free(&s);
    }
    float out[6];
    lmap_npy_sink s;
    size_t expect[2] = {2, 0};
    lmap_npy_sink_init(&s, out, 6, expect, 2);
    for (size_t i = 0; i < len; i++)
      ASSERT_EQ(lmap_npy_feed(&s, file + i, 1), 0);
    ASSERT_EQ(lmap_npy_finish(&s), 0);
    ASSERT(memcmp(out, v, sizeof v) == 0);
    lmap_npy_sink_free(&s);
  }
}

/* The first `needle` in the header of a .npy file (which holds NULs). */
static char *find(char *hay, size_t len, const char *needle) {
  size_t n = strlen(needle);
  for (size_t i = 0; i + n <= len; i++)
    if (memcmp(hay + i, needle, n) == 0)
      return hay + i;
  ASSERT(0);
  return NULL;
}

/* Feeds a whole file; returns the first error. */
static int feed_all(const char *file, size_t len, float *out, size_t out_len,
                    const size_t *expect, int ndim, char *err) {
  lmap_npy_sink s;
  lmap_npy_sink_init(&s, out, out_len, expect, ndim);
  int rc = lmap_npy_feed(&s, file, len);
  if (rc == 0)
    rc = lmap_npy_finish(&s);
  snprintf(err, LMAP_WIRE_ERRLEN, "%s", s.err);
  lmap_npy_sink_free(&s);
  return rc;
}

static void test_npy_refusals(void) {
  float v[8] = {0}, out[8];
  char file[512], err[LMAP_WIRE_ERRLEN];
  size_t e2[2] = {2, 3}, e4[4] = {2, 0, 0, 0};
  size_t len = make_npy(file, sizeof file, "(2, 3)", v, 6, 1);
  /* The buffer is not the answer's size: the caller's mistake. */
  ASSERT_EQ(feed_all(file, len, out, 8, e2, 2, err), LMAP_ERANGE);
  ASSERT(strstr(err, "6 floats") != NULL);
  /* Cut short, one byte too many, another shape, another dtype, order. */
  ASSERT_EQ(feed_all(file, len - 1, out, 6, e2, 2, err), LMAP_EPROTOCOL);
  ASSERT(strstr(err, "cut short") != NULL);
  ASSERT_EQ(feed_all(file, 9, out, 6, e2, 2, err), LMAP_EPROTOCOL);
  char longer[600];
  memcpy(longer, file, len);
  longer[len] = 0;
  ASSERT_EQ(feed_all(longer, len + 1, out, 6, e2, 2, err), LMAP_EPROTOCOL);
  ASSERT_EQ(feed_all(file, len, out, 6, e4, 4, err), LMAP_EPROTOCOL);
  ASSERT(strstr(err, "shape is (2, 3)") != NULL);
  size_t e3[2] = {3, 2};
  ASSERT_EQ(feed_all(file, len, out, 6, e3, 2, err), LMAP_EPROTOCOL);
  char *d = find(file, len, "<f4");
  d[2] = '8';
  ASSERT_EQ(feed_all(file, len, out, 6, e2, 2, err), LMAP_EPROTOCOL);
  ASSERT(strstr(err, "float32") != NULL);
  d[2] = '4';
  memcpy(find(file, len, "False"), "True ", 5);
  ASSERT_EQ(feed_all(file, len, out, 6, e2, 2, err), LMAP_EPROTOCOL);
  ASSERT_EQ(feed_all("<html>bad gateway</html>", 24, out, 6, e2, 2, err),
            LMAP_EPROTOCOL);
  ASSERT(strstr(err, "not a .npy") != NULL);
  /* A header length past the cap, and a huge shape. */
  len = make_npy(file, sizeof file, "(2, 3)", v, 6, 1);
  file[9] = 0x7f;
  ASSERT_EQ(feed_all(file, len, out, 6, e2, 2, err), LMAP_EPROTOCOL);
  len = make_npy(file, sizeof file, "(99999999999999999999, 3)", v, 0, 1);
  size_t any[2] = {0, 0};
  ASSERT_EQ(feed_all(file, len, out, 6, any, 2, err), LMAP_EPROTOCOL);
}

/* Feeds `file` in two pieces split at `cut` to a sink checking values in
 * `mode`; `want` is NULL for an answer that must pass, else a fragment of
 * the message it must be refused with (LMAP_EPROTOCOL). */
static void check_values(const char *file, size_t len, size_t cut, float *out,
                         size_t n, const size_t *dims, size_t ndims,
                         lmap_npy_values mode, size_t classes, const char *want,
                         const char *label, size_t k) {
  lmap_npy_sink s;
  lmap_npy_sink_init(&s, out, n, dims, ndims);
  lmap_npy_sink_values(&s, mode, classes);
  int rc = lmap_npy_feed(&s, file, cut);
  if (rc == 0)
    rc = lmap_npy_feed(&s, file + cut, len - cut);
  if (rc == 0)
    rc = lmap_npy_finish(&s);
  ASSERT_EQ(rc, want ? LMAP_EPROTOCOL : 0);
  if (want && strstr(s.err, want) == NULL) {
    fprintf(stderr, "%s %zu: '%s' lacks '%s'\n", label, k, s.err, want);
    ASSERT(0);
  }
  lmap_npy_sink_free(&s);
}

/* Values checked as they arrive, whatever the split: NaN and infinities
 * always refused, probabilities outside [0, 1] (beyond the slack) with
 * LMAP_NPY_PROB, class indices that are not whole numbers below C with
 * LMAP_NPY_MAP; the message names the index in the answer's shape. */
static void test_npy_values(void) {
  float v[6] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f}, out[6];
  char file[512];
  size_t e2[2] = {2, 3};
  static const struct {
    float value;
    lmap_npy_values mode;
    int ok;
    const char *want;
  } cases[] = {
      {NAN, LMAP_NPY_FINITE, 0, "[1, 1] is nan, not a finite number"},
      {INFINITY, LMAP_NPY_PROB, 0, "[1, 1] is inf, not a finite number"},
      {-INFINITY, LMAP_NPY_FINITE, 0, "is -inf"},
      {NAN, LMAP_NPY_ANY, 1, NULL},
      {7.0f, LMAP_NPY_FINITE, 1, NULL},
      {7.0f, LMAP_NPY_PROB, 0, "[1, 1] is 7, not a probability in [0, 1]"},
      {-1e-3f, LMAP_NPY_PROB, 0, "not a probability"},
      {-1e-7f, LMAP_NPY_PROB, 1, NULL},
      {1.0000001f, LMAP_NPY_PROB, 1, NULL},
      {1.00001f, LMAP_NPY_PROB, 0, "not a probability"},
  };
  for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
    v[4] = cases[k].value;
    size_t len = make_npy(file, sizeof file, "(2, 3)", v, 6, 1);
    for (size_t cut = 0; cut <= len; cut += 3)
      check_values(file, len, cut, out, 6, e2, 2, cases[k].mode, 0,
                   cases[k].ok ? NULL : cases[k].want, "case", k);
  }
  /* Maps: plane 0 scores, plane 1 class indices below `classes`. */
  float m[8] = {1.5f, -2e30f, 0.25f, 4, 0, 9, 3, 2};
  size_t e4[4] = {2, 1, 2, 2};
  static const struct {
    size_t at;
    float value;
    int ok;
    const char *want;
  } mc[] = {
      {1, -2e30f, 1, NULL},
      {1, NAN, 0, "[0, 0, 0, 1] is nan"},
      {5, 9, 1, NULL},
      {5, 10, 0, "[1, 0, 0, 1] is 10, not a class index"},
      {6, 2.5f, 0, "[1, 0, 1, 0] is 2.5, not a class index"},
      {7, -1, 0, "[1, 0, 1, 1] is -1, not a class index"},
      {7, INFINITY, 0, "not a finite number"},
  };
  for (size_t k = 0; k < sizeof mc / sizeof *mc; k++) {
    float w[8];
    memcpy(w, m, sizeof w);
    w[mc[k].at] = mc[k].value;
    size_t len = make_npy(file, sizeof file, "(2, 1, 2, 2)", w, 8, 1);
    float o8[8];
    check_values(file, len, len, o8, 8, e4, 4, LMAP_NPY_MAP, 10,
                 mc[k].ok ? NULL : mc[k].want, "map case", k);
  }
}

/* A declared Content-Length: more than the array asked for plus the
 * largest header is refused before any byte; otherwise it must be exactly
 * the header plus the array once the header is read. */
static void test_npy_declared(void) {
  float v[6] = {0}, out[6];
  char file[512];
  size_t e2[2] = {2, 3};
  size_t len = make_npy(file, sizeof file, "(2, 3)", v, 6, 1);
  long long declared[] = {-1,
                          (long long)len,
                          (long long)len + 1,
                          (long long)len - 1,
                          4096 + 24 + 1,
                          900000000};
  int want[] = {
      0, 0, LMAP_EPROTOCOL, LMAP_EPROTOCOL, LMAP_EPROTOCOL, LMAP_EPROTOCOL};
  int at_once[] = {0, 0, 0, 0, 1, 1};
  for (size_t k = 0; k < sizeof declared / sizeof *declared; k++) {
    lmap_npy_sink s;
    lmap_npy_sink_init(&s, out, 6, e2, 2);
    int rc = lmap_npy_sink_declare(&s, declared[k]);
    ASSERT_EQ(rc != 0, at_once[k]);
    if (rc == 0)
      rc = lmap_npy_feed(&s, file, len);
    if (rc == 0)
      rc = lmap_npy_finish(&s);
    ASSERT_EQ(rc, want[k]);
    if (rc)
      ASSERT(strstr(s.err, "Content-Length") != NULL);
    lmap_npy_sink_free(&s);
  }
}

static void test_labels_body(void) {
  dynbuf b;
  lmap_dynbuf_init(&b, 1 << 20);
  lmap_query q[2] = {{"n01_1", {0.1, 0.2, 0.7, 0.9}, 0},
                     {"a\"b\\c\n", {0, 0, 1, 1}, 1}};
  lmap_label_options o = {2, LMAP_BOX_RELABEL, 0};
  char field[64], err[LMAP_WIRE_ERRLEN];
  ASSERT_EQ(lmap_wire_labels_body(&b, q, 2, &o, 1, field, err), 0);
  json_error_t je;
  json_t *doc = json_loadb(b.data, b.len, JSON_REJECT_DUPLICATES, &je);
  ASSERT(doc != NULL);
  json_t *qs = json_object_get(doc, "queries");
  ASSERT_EQ(json_array_size(qs), 2);
  ASSERT(strcmp(json_string_value(json_object_get(json_array_get(qs, 1), "id")),
                "a\"b\\c\n") == 0);
  /* relabel: 17 digits, the server reads the very double sent. */
  ASSERT(json_real_value(json_array_get(
             json_object_get(json_array_get(qs, 0), "box"), 0)) == 0.1);
  ASSERT(json_is_true(json_object_get(json_array_get(qs, 1), "flip")));
  ASSERT_EQ(json_integer_value(json_object_get(doc, "output_size")), 2);
  ASSERT(strcmp(json_string_value(json_object_get(doc, "format")), "sparse") ==
         0);
  ASSERT(strcmp(json_string_value(json_object_get(doc, "box_format")),
                "relabel") == 0);
  ASSERT(json_is_false(json_object_get(doc, "softmax")));
  json_decref(doc);
  /* xyxy: the float the server's geometry uses, in 9 digits. */
  lmap_dynbuf_reset(&b);
  o.box_format = LMAP_BOX_XYXY;
  ASSERT_EQ(lmap_wire_labels_body(&b, q, 2, &o, 0, field, err), 0);
  doc = json_loadb(b.data, b.len, JSON_REJECT_DUPLICATES, &je);
  qs = json_object_get(doc, "queries");
  for (int k = 0; k < 4; k++) {
    double sent = json_number_value(
        json_array_get(json_object_get(json_array_get(qs, 0), "box"), k));
    ASSERT((float)sent == (float)q[0].box[k]);
  }
  ASSERT(strstr(b.data, "0.100000001") != NULL);
  json_decref(doc);
  o.box_format = LMAP_BOX_RELABEL;
  /* What JSON cannot carry is refused here, naming the query. */
  lmap_dynbuf_reset(&b);
  q[1].box[2] = NAN;
  ASSERT_EQ(lmap_wire_labels_body(&b, q, 2, &o, 0, field, err), LMAP_EBADBOX);
  ASSERT(strcmp(field, "queries[1].box") == 0);
  q[1].box[2] = 1;
  q[1].id = NULL;
  ASSERT_EQ(lmap_wire_labels_body(&b, q, 2, &o, 0, field, err), LMAP_EBADID);
  q[1].id = "x";
  o.box_format = (lmap_box_format)7;
  ASSERT_EQ(lmap_wire_labels_body(&b, q, 2, &o, 0, field, err), LMAP_EINVAL);
  ASSERT(strcmp(field, "box_format") == 0);
  /* The buffer's cap holds. */
  dynbuf small;
  lmap_dynbuf_init(&small, 40);
  o.box_format = LMAP_BOX_XYXY;
  ASSERT_EQ(lmap_wire_labels_body(&small, q, 2, &o, 0, field, err),
            LMAP_ETOOBIG);
  lmap_dynbuf_free(&small);
  lmap_dynbuf_free(&b);
  lmap_dynbuf_init(&b, 256);
  ASSERT_EQ(lmap_wire_path_escape(&b, "n01+a:b/c d"), 0);
  ASSERT(strcmp(b.data, "n01%2Ba%3Ab%2Fc%20d") == 0);
  lmap_dynbuf_free(&b);
}

static void test_sparse(void) {
  const char *g1 =
      "{\"results\":[{\"id\":\"a\",\"classes\":[3,1],\"probs\":[0.5,0.25],"
      "\"rest\":0.001},{\"id\":\"b\",\"classes\":[],\"probs\":[],\"rest\":0.1}]}";
  char err[LMAP_WIRE_ERRLEN];
  lmap_sparse *s;
  ASSERT_EQ(lmap_wire_sparse(g1, strlen(g1), 2, 1, &s, err), 0);
  ASSERT_EQ(s->n, 2);
  ASSERT_EQ(s->cells, 1);
  ASSERT_EQ(s->offsets[0], 0);
  ASSERT_EQ(s->offsets[1], 2);
  ASSERT_EQ(s->offsets[2], 2);
  ASSERT_EQ(s->classes[0], 3);
  ASSERT(s->values[1] == 0.25f);
  ASSERT(s->rest[0] == 0.001f && s->rest[1] == 0.1f);
  lmap_sparse_free(s);
  const char *g2 = "{\"results\":[{\"id\":\"a\",\"classes\":[[1],[2,3],[],[4]],"
                   "\"logits\":[[1],[2,3],[],[4]],\"rest\":[0,0,0,0]}]}";
  ASSERT_EQ(lmap_wire_sparse(g2, strlen(g2), 1, 4, &s, err), 0);
  ASSERT_EQ(s->offsets[4], 4);
  ASSERT_EQ(s->classes[2], 3);
  ASSERT(s->values[3] == 4.0f);
  lmap_sparse_free(s);
  const char *bad[] = {
      "not json",
      "{\"results\":[]}",
      "{\"results\":[{\"classes\":[1],\"probs\":[1,2],\"rest\":0}]}",
      "{\"results\":[{\"classes\":[-1],\"probs\":[1],\"rest\":0}]}",
      "{\"results\":[{\"classes\":[1],\"probs\":[\"x\"],\"rest\":0}]}",
      "{\"results\":[{\"classes\":[1],\"probs\":[1]}]}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    s = (lmap_sparse *)1;
    ASSERT_EQ(lmap_wire_sparse(bad[i], strlen(bad[i]), 1, 1, &s, err),
              LMAP_EPROTOCOL);
    ASSERT(s == NULL && err[0] != '\0');
  }
  ASSERT_EQ(lmap_wire_sparse(g2, strlen(g2), 1, 9, &s, err), LMAP_EPROTOCOL);

  /* With what the request and the store say: the key softmax implies,
   * finite values (a JSON number beyond float's range is infinite as a
   * float), probabilities and rest in [0, 1], rest 0 for logits, class
   * indices below C and at most C of them. */
  lmap_sparse_expect probs = {.n = 1, .cells = 1, .classes = 10, .softmax = 1};
  lmap_sparse_expect logits = {.n = 1, .cells = 1, .classes = 10, .softmax = 0};
  static const struct {
    const char *body;
    int softmax;
    const char *want; /* NULL: accepted */
  } cases[] = {
      {"{\"results\":[{\"classes\":[9,0],\"probs\":[0.5,0.25],\"rest\":0.03125}]}",
       1, NULL},
      {"{\"results\":[{\"classes\":[9,0],\"probs\":[1,0],\"rest\":0}]}", 1,
       NULL},
      {"{\"results\":[{\"classes\":[9,0],\"logits\":[5,-3e38],\"rest\":0}]}", 0,
       NULL},
      {"{\"results\":[{\"classes\":[9,0],\"probs\":[0.5,4e38],\"rest\":0}]}", 1,
       "probs[1] is 4e+38, not a finite number"},
      {"{\"results\":[{\"classes\":[9,0],\"logits\":[-1e39,1],\"rest\":0}]}", 0,
       "logits[0] is -1e+39, not a finite number"},
      {"{\"results\":[{\"classes\":[9,0],\"probs\":[0.5,0.25],\"rest\":1e39}]}",
       1, "rest is 1e+39, not a finite number"},
      {"{\"results\":[{\"classes\":[9,0],\"probs\":[0.5,1.001],\"rest\":0}]}",
       1, "probs[1] is 1.001, not a probability"},
      {"{\"results\":[{\"classes\":[9,0],\"probs\":[0.5,0.25],\"rest\":-0.01}]}",
       1, "rest is -0.01, not a probability"},
      {"{\"results\":[{\"classes\":[9,0],\"logits\":[0.5,0.25],\"rest\":1}]}",
       0, "rest is 1, not 0"},
      {"{\"results\":[{\"classes\":[10,0],\"probs\":[0.5,0.25],\"rest\":0}]}",
       1, "classes[0] is not a class index (an integer below 10)"},
      {"{\"results\":[{\"classes\":[1,2,3,4,5,6,7,8,9,0,1],\"probs\":[0,0,0,0,0,0,0,0,0,0,0],"
       "\"rest\":0}]}",
       1, "11 classes listed, the store has 10"},
      {"{\"results\":[{\"classes\":[9,0],\"logits\":[0.5,0.25],\"rest\":0}]}",
       1, "not classes, probs and rest"},
      {"{\"results\":[{\"classes\":[9,0],\"probs\":[0.5,0.25],\"rest\":0}]}", 0,
       "not classes, logits and rest"},
      {"{\"results\":[{\"classes\":[9,0],\"probs\":[0.5,0.25],\"logits\":[1,2],\"rest\":0}]}",
       1, "not classes, probs and rest"},
  };
  for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
    s = (lmap_sparse *)1;
    int rc =
        lmap_wire_sparse_check(cases[k].body, strlen(cases[k].body),
                               cases[k].softmax ? &probs : &logits, &s, err);
    if (cases[k].want == NULL) {
      ASSERT_EQ(rc, 0);
      ASSERT(s != NULL && s->offsets[1] == 2 && s->classes[0] == 9);
      lmap_sparse_free(s);
      continue;
    }
    ASSERT_EQ(rc, LMAP_EPROTOCOL);
    ASSERT(s == NULL);
    if (strstr(err, cases[k].want) == NULL ||
        strstr(err, "results[0]") == NULL) {
      fprintf(stderr, "sparse case %zu: '%s' lacks '%s'\n", k, err,
              cases[k].want);
      ASSERT(0);
    }
  }
  /* Cells are named when there are several. */
  const char *g2bad = "{\"results\":[{\"classes\":[[1],[2],[3],[4]],"
                      "\"logits\":[[1],[2],[1e40],[4]],\"rest\":[0,0,0,0]}]}";
  lmap_sparse_expect x4 = {.n = 1, .cells = 4, .classes = 10, .softmax = 0};
  ASSERT_EQ(lmap_wire_sparse_check(g2bad, strlen(g2bad), &x4, &s, err),
            LMAP_EPROTOCOL);
  ASSERT(strstr(err, "results[0] cell 2: logits[0] is 1e+40") != NULL);
}

/* The bound on a sparse answer holds lmapd's longest answer (every class
 * listed, every number at its longest) and is not absurdly above it. */
static void test_sparse_max(void) {
  for (uint32_t C = 1; C <= 100000; C *= 10) {
    for (size_t cells = 1; cells <= 4; cells *= 4) {
      size_t n = 3;
      /* The longest answer lmapd writes: every class in every cell, with
       * the longest number text. */
      dynbuf b;
      lmap_dynbuf_init(&b, (size_t)1 << 30);
      ASSERT_EQ(lmap_dynbuf_addstr(&b, "{\"results\":["), 0);
      for (size_t i = 0; i < n; i++) {
        ASSERT_EQ(lmap_dynbuf_printf(
                      &b, "%s{\"id\":\"n01440764_10026\",\"classes\":%s",
                      i ? "," : "", cells > 1 ? "[" : ""),
                  0);
        for (int part = 0; part < 3; part++) {
          if (part)
            ASSERT_EQ(lmap_dynbuf_addstr(&b, part == 1 ? ",\"logits\":"
                                                       : ",\"rest\":"),
                      0);
          if (cells > 1)
            ASSERT_EQ(lmap_dynbuf_addstr(&b, "["), 0);
          for (size_t c = 0; c < cells; c++) {
            if (c)
              ASSERT_EQ(lmap_dynbuf_addstr(&b, ","), 0);
            if (part == 2) {
              ASSERT_EQ(lmap_dynbuf_addstr(&b, "-1.23456789e-38"), 0);
              continue;
            }
            ASSERT_EQ(lmap_dynbuf_addstr(&b, "["), 0);
            for (uint32_t k = 0; k < C; k++)
              ASSERT_EQ(
                  part ? lmap_dynbuf_printf(&b, "%s-1.23456789e-38",
                                            k ? "," : "")
                       : lmap_dynbuf_printf(&b, "%s%u", k ? "," : "", C - 1),
                  0);
            ASSERT_EQ(lmap_dynbuf_addstr(&b, "]"), 0);
          }
          if (cells > 1)
            ASSERT_EQ(lmap_dynbuf_addstr(&b, "]"), 0);
        }
        ASSERT_EQ(lmap_dynbuf_addstr(&b, "}"), 0);
      }
      ASSERT_EQ(lmap_dynbuf_addstr(&b, "]}"), 0);
      size_t max =
          lmap_wire_sparse_max(n, n * strlen("n01440764_10026"), cells, C, 0);
      ASSERT(b.len <= max);
      ASSERT(max <= 3 * b.len + (64 << 10) + 1024);
      /* K * H * W below C bounds the entries of a cell. */
      ASSERT(lmap_wire_sparse_max(n, 45, cells, C, 5) <= max);
      lmap_dynbuf_free(&b);
    }
  }
  ASSERT_EQ(lmap_wire_sparse_max((size_t)1 << 40, 0, (size_t)1 << 30, 1000, 0),
            SIZE_MAX);
  ASSERT(lmap_wire_sparse_max(1, 1, 1, 0, 0) >
         0); /* C unknown: the most classes */
}

static void test_error_and_info(void) {
  char code[64], msg[LMAP_WIRE_ERRLEN], field[64];
  const char *e =
      "{\"error\":{\"code\":\"bad_box\",\"message\":\"box[2] < box[0]\","
      "\"field\":\"queries[3].box\"}}";
  ASSERT_EQ(lmap_wire_error(e, strlen(e), code, msg, field), 0);
  ASSERT(strcmp(code, "bad_box") == 0 && strcmp(field, "queries[3].box") == 0);
  ASSERT_EQ(lmap_err_from_code(code), LMAP_EBADBOX);
  ASSERT_EQ(lmap_wire_error("<html>", 6, code, msg, field), LMAP_EPROTOCOL);
  ASSERT_EQ(lmap_wire_error("", 0, code, msg, field), LMAP_EPROTOCOL);
  const char *info =
      "{\"num_classes\":1000,\"topk\":5,\"grid_h\":15,\"grid_w\":14,"
      "\"record_count\":1281167}";
  lmap_info i;
  char err[LMAP_WIRE_ERRLEN];
  ASSERT_EQ(lmap_wire_info(info, strlen(info), &i, err), 0);
  ASSERT(i.num_classes == 1000 && i.top_k == 5 && i.height == 15 &&
         i.width == 14 && i.records == 1281167);
  ASSERT_EQ(lmap_wire_info("{\"num_classes\":-1}", 18, &i, err),
            LMAP_EPROTOCOL);
  ASSERT(strstr(err, "num_classes") != NULL);
  /* Every table code round-trips through its string. */
  for (int c = -1; c >= -21; c--)
    ASSERT_EQ(lmap_err_from_code(lmap_err_code(c)), c);
  ASSERT_EQ(lmap_err_from_code("no_such_code"), 0);
}

/* ---- sparse binary answers ---------------------------------------------- */

/* A sparse answer of N items of G x G cells over C classes, written by
 * lmapd's writer, and the dense array it stands for, built here from the
 * same cells: cell (i, j) lists classes j, j + 3, j + 6... (up to C) with
 * values (i + 1) / 100 + class / 1000, and rest 1e-4 * (j + 1). */
enum { SB_N = 3, SB_C = 20, SB_G = 2 };

static size_t make_sparse(dynbuf *b, size_t n, size_t g, float *dense) {
  size_t cells = g * g, entries = 0;
  lmap_dynbuf_reset(b);
  ASSERT_EQ(lmap_sparsebin_begin(b, (uint32_t)n, SB_C, (uint32_t)g), 0);
  for (size_t i = 0; i < n; i++)
    for (size_t j = 0; j < cells; j++) {
      uint32_t cls[SB_C];
      float val[SB_C];
      uint32_t k = 0;
      /* Listed in decreasing class order: the reader must not care. */
      for (int c = SB_C - 1; c >= 0; c--)
        if ((size_t)c % 3 == j % 3) {
          cls[k] = (uint32_t)c;
          val[k++] = (float)(i + 1) / 100 + (float)c / 1000;
        }
      float rest = 1e-4f * (float)(j + 1);
      ASSERT_EQ(lmap_sparsebin_cell(b, k, rest, cls, val), 0);
      entries += k;
      for (size_t c = 0; c < SB_C; c++)
        dense[(i * SB_C + c) * cells + j] = rest;
      for (uint32_t e = 0; e < k; e++)
        dense[(i * SB_C + cls[e]) * cells + j] = val[e];
    }
  return entries;
}

/* Feeds `len` bytes in pieces of `piece`; returns the first error or
 * finish's answer. */
static int feed_sparse(lmap_sparsebin_sink *s, const char *body, size_t len,
                       size_t piece) {
  for (size_t at = 0; at < len; at += piece) {
    size_t k = len - at < piece ? len - at : piece;
    int rc = lmap_sparsebin_feed(s, body + at, k);
    if (rc)
      return rc;
  }
  return lmap_sparsebin_finish(s);
}

static void test_sparsebin_every_split(void) {
  dynbuf b;
  lmap_dynbuf_init(&b, 1 << 20);
  for (size_t g = 1; g <= SB_G; g++) {
    size_t floats = SB_N * SB_C * g * g;
    float want[SB_N * SB_C * SB_G * SB_G], got[SB_N * SB_C * SB_G * SB_G];
    size_t entries = make_sparse(&b, SB_N, g, want);
    size_t expect[4] = {SB_N, SB_C, g, g};
    ASSERT_EQ(b.len, lmap_sparsebin_size(SB_N, g * g, entries));
    for (size_t piece = 1; piece <= b.len; piece++) {
      memset(got, 0xff, sizeof got);
      lmap_sparsebin_sink s;
      lmap_sparsebin_sink_init(&s, got, floats, expect, LMAP_NPY_PROB);
      ASSERT_EQ(lmap_sparsebin_sink_declare(&s, (long long)b.len), 0);
      ASSERT_EQ(feed_sparse(&s, b.data, b.len, piece), 0);
      ASSERT_EQ(s.ndim, g == 1 ? 2 : 4);
      ASSERT(memcmp(got, want, floats * sizeof(float)) == 0);
    }
  }
  lmap_dynbuf_free(&b);
}

/* One refusal: the answer `body` (`len` bytes) for the shape N x C x G x G
 * is refused with `code` and a message holding `needle`. */
static void sparse_refused(const char *body, size_t len, size_t g,
                           long long declared, lmap_npy_values values, int code,
                           const char *needle) {
  float out[SB_N * SB_C * SB_G * SB_G];
  size_t expect[4] = {SB_N, SB_C, g, g};
  lmap_sparsebin_sink s;
  lmap_sparsebin_sink_init(&s, out, SB_N * SB_C * g * g, expect, values);
  int rc = lmap_sparsebin_sink_declare(&s, declared);
  if (rc == 0)
    rc = feed_sparse(&s, body, len, 5);
  ASSERT_EQ(rc, code);
  ASSERT_CONTAINS(s.err, needle);
}

static void put32(dynbuf *b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; i++)
    b->data[at + (size_t)i] = (char)(v >> (8 * i));
}

static void test_sparsebin_refusals(void) {
  dynbuf b;
  lmap_dynbuf_init(&b, 1 << 20);
  float dense[SB_N * SB_C * SB_G * SB_G];
  make_sparse(&b, SB_N, 1, dense);
  size_t len = b.len;
  /* The first cell: its count at byte 16, rest at 20, entries from 24. */
  sparse_refused(b.data, len - 8, 1, -1, LMAP_NPY_PROB, LMAP_EPROTOCOL,
                 "cut short");
  sparse_refused(b.data, len - 3, 1, -1, LMAP_NPY_PROB, LMAP_EPROTOCOL,
                 "cut short");
  sparse_refused(b.data, 7, 1, -1, LMAP_NPY_PROB, LMAP_EPROTOCOL,
                 "cut short (0 of 3 cells)");
  sparse_refused(b.data, len, 1, (long long)len - 8, LMAP_NPY_PROB,
                 LMAP_EPROTOCOL, "longer than its Content-Length");
  sparse_refused(b.data, len, 1, 15, LMAP_NPY_PROB, LMAP_EPROTOCOL,
                 "Content-Length is 15 bytes");
  sparse_refused(b.data, len, 1, (long long)len + 4, LMAP_NPY_PROB,
                 LMAP_EPROTOCOL, "16 + 8 * k");
  /* Over the most the shape can take: refused once the header says the
   * shape (an answer of another shape says that first). */
  sparse_refused(b.data, len, 1, 1LL << 40, LMAP_NPY_PROB, LMAP_EPROTOCOL,
                 "more than the 520 an answer of 3 item(s) of 1 cell(s) of "
                 "20 classes can take");
  sparse_refused(b.data, len, 2, 1LL << 40, LMAP_NPY_PROB, LMAP_EPROTOCOL,
                 "asked for");
  /* Another shape: refused, and said to differ (client.c then asks
   * whether the store was replaced). */
  sparse_refused(b.data, len, 2, -1, LMAP_NPY_PROB, LMAP_EPROTOCOL,
                 "not the 3 of 20 classes on 2 x 2 asked for");
  {
    float out[SB_N * SB_C * 4];
    size_t expect[4] = {SB_N, SB_C, 2, 2};
    lmap_sparsebin_sink s;
    lmap_sparsebin_sink_init(&s, out, SB_N * SB_C * 4, expect, LMAP_NPY_ANY);
    ASSERT(feed_sparse(&s, b.data, len, len) != 0);
    ASSERT_EQ(s.shape_differs, 1);
    ASSERT_EQ(s.shape[1], SB_C);
  }
  /* A body that goes on after its cells. */
  ASSERT_EQ(lmap_dynbuf_add(&b, "\0\0\0\0\0\0\0\0", 8), 0);
  sparse_refused(b.data, b.len, 1, -1, LMAP_NPY_PROB, LMAP_EPROTOCOL,
                 "goes on after its 3 cell(s)");
  b.len = len;

  dynbuf bad;
  lmap_dynbuf_init(&bad, 1 << 20);
  struct {
    size_t at;
    uint32_t v;
    lmap_npy_values values;
    const char *needle;
  } cases[] = {
      {0, 0x3153454e, LMAP_NPY_ANY, "does not start with \"LMS1\""},
      {16, SB_C + 1, LMAP_NPY_ANY, "item 0, cell 0 lists 21 classes"},
      {24, SB_C, LMAP_NPY_ANY,
       "item 0, cell 0, entry 0: class 20 is not below the store's 20"},
      {20, 0x7fc00000, LMAP_NPY_FINITE, "rest nan, not a finite number"},
      {20, 0x3f800100, LMAP_NPY_PROB, "not a probability in [0, 1]"},
      {36, 0xff800000, LMAP_NPY_FINITE,
       "item 0, cell 0, entry 1 (class 15) is -inf"},
      {36, 0xbf800000, LMAP_NPY_PROB, "entry 1 (class 15) is -1"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    lmap_dynbuf_reset(&bad);
    ASSERT_EQ(lmap_dynbuf_add(&bad, b.data, len), 0);
    put32(&bad, cases[i].at, cases[i].v);
    sparse_refused(bad.data, bad.len, 1, -1, cases[i].values, LMAP_EPROTOCOL,
                   cases[i].needle);
  }
  /* Logits may be any finite number: -1 passes as one. */
  lmap_dynbuf_reset(&bad);
  ASSERT_EQ(lmap_dynbuf_add(&bad, b.data, len), 0);
  put32(&bad, 36, 0xbf800000);
  {
    float out[SB_N * SB_C];
    size_t expect[4] = {SB_N, SB_C, 1, 1};
    lmap_sparsebin_sink s;
    lmap_sparsebin_sink_init(&s, out, SB_N * SB_C, expect, LMAP_NPY_FINITE);
    ASSERT_EQ(feed_sparse(&s, bad.data, bad.len, 3), 0);
    ASSERT_EQ(out[15], -1.0f);
  }
  lmap_dynbuf_free(&bad);
  lmap_dynbuf_free(&b);
}

int main(void) {
  test_npy_every_split();
  test_npy_refusals();
  test_npy_values();
  test_npy_declared();
  test_labels_body();
  test_sparse();
  test_sparse_max();
  test_sparsebin_every_split();
  test_sparsebin_refusals();
  test_error_and_info();
  TEST_DONE();
}
