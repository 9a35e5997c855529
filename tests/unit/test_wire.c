/* Unit tests of liblmap's wire module: the labels request body, the .npy
 * stream reader fed in every split, and the JSON answer readers on good and
 * malformed documents. The references are numpy's header layout and the
 * answers lmapd writes (docs/API.md). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "test.h"
#include "wire.h"

/* A .npy file as numpy.save writes it: magic, version, header padded with
 * spaces to a 64-byte boundary, then the floats. */
static size_t make_npy(char *buf, size_t cap, const char *shape, const float *v, size_t n,
                       int version) {
  char dict[256];
  int dlen = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }",
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
  ASSERT_EQ(feed_all("<html>bad gateway</html>", 24, out, 6, e2, 2, err), LMAP_EPROTOCOL);
  ASSERT(strstr(err, "not a .npy") != NULL);
  /* A header length past the cap, and a huge shape. */
  len = make_npy(file, sizeof file, "(2, 3)", v, 6, 1);
  file[9] = 0x7f;
  ASSERT_EQ(feed_all(file, len, out, 6, e2, 2, err), LMAP_EPROTOCOL);
  len = make_npy(file, sizeof file, "(99999999999999999999, 3)", v, 0, 1);
  size_t any[2] = {0, 0};
  ASSERT_EQ(feed_all(file, len, out, 6, any, 2, err), LMAP_EPROTOCOL);
}

static void test_labels_body(void) {
  dynbuf b;
  lmap_dynbuf_init(&b, 1 << 20);
  lmap_query q[2] = {{"n01_1", {0.1, 0.2, 0.7, 0.9}, 0}, {"a\"b\\c\n", {0, 0, 1, 1}, 1}};
  lmap_label_options o = {2, LMAP_BOX_RELABEL, 0};
  char field[64], err[LMAP_WIRE_ERRLEN];
  ASSERT_EQ(lmap_wire_labels_body(&b, q, 2, &o, 1, field, err), 0);
  json_error_t je;
  json_t *doc = json_loadb(b.data, b.len, JSON_REJECT_DUPLICATES, &je);
  ASSERT(doc != NULL);
  json_t *qs = json_object_get(doc, "queries");
  ASSERT_EQ(json_array_size(qs), 2);
  ASSERT(strcmp(json_string_value(json_object_get(json_array_get(qs, 1), "id")), "a\"b\\c\n") ==
        0);
  /* relabel: 17 digits, the server reads the very double sent. */
  ASSERT(json_real_value(json_array_get(json_object_get(json_array_get(qs, 0), "box"), 0)) ==
        0.1);
  ASSERT(json_is_true(json_object_get(json_array_get(qs, 1), "flip")));
  ASSERT_EQ(json_integer_value(json_object_get(doc, "output_size")), 2);
  ASSERT(strcmp(json_string_value(json_object_get(doc, "format")), "sparse") == 0);
  ASSERT(strcmp(json_string_value(json_object_get(doc, "box_format")), "relabel") == 0);
  ASSERT(json_is_false(json_object_get(doc, "softmax")));
  json_decref(doc);
  /* xyxy: the float the server's geometry uses, in 9 digits. */
  lmap_dynbuf_reset(&b);
  o.box_format = LMAP_BOX_XYXY;
  ASSERT_EQ(lmap_wire_labels_body(&b, q, 2, &o, 0, field, err), 0);
  doc = json_loadb(b.data, b.len, JSON_REJECT_DUPLICATES, &je);
  qs = json_object_get(doc, "queries");
  for (int k = 0; k < 4; k++) {
    double sent = json_number_value(json_array_get(json_object_get(json_array_get(qs, 0), "box"), k));
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
  ASSERT_EQ(lmap_wire_labels_body(&small, q, 2, &o, 0, field, err), LMAP_ETOOBIG);
  lmap_dynbuf_free(&small);
  lmap_dynbuf_free(&b);
  lmap_dynbuf_init(&b, 256);
  ASSERT_EQ(lmap_wire_path_escape(&b, "n01+a:b/c d"), 0);
  ASSERT(strcmp(b.data, "n01%2Ba%3Ab%2Fc%20d") == 0);
  lmap_dynbuf_free(&b);
}

static void test_sparse(void) {
  const char *g1 = "{\"results\":[{\"id\":\"a\",\"classes\":[3,1],\"probs\":[0.5,0.25],"
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
    ASSERT_EQ(lmap_wire_sparse(bad[i], strlen(bad[i]), 1, 1, &s, err), LMAP_EPROTOCOL);
    ASSERT(s == NULL && err[0] != '\0');
  }
  ASSERT_EQ(lmap_wire_sparse(g2, strlen(g2), 1, 9, &s, err), LMAP_EPROTOCOL);
}

static void test_error_and_info(void) {
  char code[64], msg[LMAP_WIRE_ERRLEN], field[64];
  const char *e = "{\"error\":{\"code\":\"bad_box\",\"message\":\"box[2] < box[0]\","
                  "\"field\":\"queries[3].box\"}}";
  ASSERT_EQ(lmap_wire_error(e, strlen(e), code, msg, field), 0);
  ASSERT(strcmp(code, "bad_box") == 0 && strcmp(field, "queries[3].box") == 0);
  ASSERT_EQ(lmap_err_from_code(code), LMAP_EBADBOX);
  ASSERT_EQ(lmap_wire_error("<html>", 6, code, msg, field), LMAP_EPROTOCOL);
  ASSERT_EQ(lmap_wire_error("", 0, code, msg, field), LMAP_EPROTOCOL);
  const char *info = "{\"num_classes\":1000,\"topk\":5,\"grid_h\":15,\"grid_w\":14,"
                     "\"record_count\":1281167}";
  lmap_info i;
  char err[LMAP_WIRE_ERRLEN];
  ASSERT_EQ(lmap_wire_info(info, strlen(info), &i, err), 0);
  ASSERT(i.num_classes == 1000 && i.top_k == 5 && i.height == 15 && i.width == 14 &&
        i.records == 1281167);
  ASSERT_EQ(lmap_wire_info("{\"num_classes\":-1}", 18, &i, err), LMAP_EPROTOCOL);
  ASSERT(strstr(err, "num_classes") != NULL);
  /* Every table code round-trips through its string. */
  for (int c = -1; c >= -21; c--)
    ASSERT_EQ(lmap_err_from_code(lmap_err_code(c)), c);
  ASSERT_EQ(lmap_err_from_code("no_such_code"), 0);
}

int main(void) {
  test_npy_every_split();
  test_npy_refusals();
  test_labels_body();
  test_sparse();
  test_error_and_info();
  TEST_DONE();
}
