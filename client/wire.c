/*
 * wire: request bodies and answer readers of liblmap (see wire.h).
 *
 * Box coordinates go out as precise as the server's arithmetic needs them
 * (see add_coordinate). The .npy reader writes into the caller's buffer
 * as bytes arrive, so a batch answer is never held twice in memory; the
 * caller treats the buffer as valid only after lmap_npy_finish() says the
 * whole array came.
 */
#include "wire.h"

#include "shared/querybin.h"
#include "shared/sparsebin.h"

#include "shared/fmtfloat.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAX_HEADER 4096

static void shape_text(char out[96], const size_t *shape, int ndim,
                       const char *zero);
static int npy_fail(struct lmap_npy_sink *s, int code, const char *msg);

/* ---- request body ------------------------------------------------------ */

/* Appends `s` as a JSON string. */
static int add_json_string(dynbuf *b, const char *s) {
  int rc = lmap_dynbuf_add(b, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; rc == 0 && *p; p++) {
    char esc[8];
    if (*p == '"' || *p == '\\') {
      esc[0] = '\\';
      esc[1] = (char)*p;
      rc = lmap_dynbuf_add(b, esc, 2);
    } else if (*p < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", *p);
      rc = lmap_dynbuf_add(b, esc, 6);
    } else {
      rc = lmap_dynbuf_add(b, p, 1);
    }
  }
  return rc ? rc : lmap_dynbuf_add(b, "\"", 1);
}

/* A box coordinate. The server reads an xyxy box as float32 (its
 * geometry replays torchvision's float32 roi_align), so 9 digits give the
 * identical result in half the bytes and a fraction of the time; a relabel
 * box is summed in double first (the official a + c), so it travels
 * whole, with 17 digits. */
static int add_coordinate(dynbuf *b, double v, lmap_box_format format) {
  char num[32];
  int len = format == LMAP_BOX_XYXY ? lmap_fmtfloat9(num, (float)v)
                                    : snprintf(num, sizeof num, "%.17g", v);
  return lmap_dynbuf_add(b, num, (size_t)len);
}

/* What both request forms refuse before sending: an unknown box format. */
static int check_box_format(const lmap_label_options *opts, char field[64],
                            char err[LMAP_WIRE_ERRLEN]) {
  if (opts->box_format == LMAP_BOX_XYXY || opts->box_format == LMAP_BOX_RELABEL)
    return 0;
  snprintf(field, 64, "box_format");
  snprintf(err, LMAP_WIRE_ERRLEN,
           "box_format %d is not LMAP_BOX_XYXY or LMAP_BOX_RELABEL",
           (int)opts->box_format);
  return LMAP_EINVAL;
}

/* ... and query `i` with a NULL id (or, when `max_id` is not 0, an empty
 * one or one longer than `max_id` bytes) or a non-finite box. */
static int check_query(const lmap_query *q, size_t i, size_t max_id,
                       char field[64], char err[LMAP_WIRE_ERRLEN]) {
  size_t len = q->id ? strlen(q->id) : 0;
  if (q->id == NULL || (max_id && (len == 0 || len > max_id))) {
    snprintf(field, 64, "queries[%zu].id", i);
    snprintf(err, LMAP_WIRE_ERRLEN, "queries[%zu].id is %s", i,
             q->id == NULL ? "NULL"
             : len == 0    ? "empty"
                           : "longer than 255 bytes");
    return LMAP_EBADID;
  }
  for (int j = 0; j < 4; j++)
    if (!isfinite(q->box[j])) {
      snprintf(field, 64, "queries[%zu].box", i);
      snprintf(err, LMAP_WIRE_ERRLEN,
               "queries[%zu].box[%d] is not a finite number", i, j);
      return LMAP_EBADBOX;
    }
  return 0;
}

int lmap_wire_labels_body(dynbuf *b, const lmap_query *queries, size_t n,
                          const lmap_label_options *opts, int sparse,
                          char field[64], char err[LMAP_WIRE_ERRLEN]) {
  int rc = check_box_format(opts, field, err);
  if (rc == 0)
    rc = lmap_dynbuf_addstr(b, "{\"queries\":[");
  for (size_t i = 0; rc == 0 && i < n; i++) {
    const lmap_query *q = &queries[i];
    if ((rc = check_query(q, i, 0, field, err)) != 0)
      return rc;
    rc = lmap_dynbuf_addstr(b, i ? ",{\"id\":" : "{\"id\":");
    if (rc == 0)
      rc = add_json_string(b, q->id);
    if (rc == 0)
      rc = lmap_dynbuf_addstr(b, ",\"box\":[");
    for (int j = 0; rc == 0 && j < 4; j++) {
      if (j)
        rc = lmap_dynbuf_add(b, ",", 1);
      if (rc == 0)
        rc = add_coordinate(b, q->box[j], opts->box_format);
    }
    if (rc == 0)
      rc = lmap_dynbuf_addstr(b, q->flip ? "],\"flip\":true}"
                                         : "],\"flip\":false}");
  }
  char tail[160];
  snprintf(
      tail, sizeof tail,
      "],\"output_size\":%d,\"format\":\"%s\",\"box_format\":\"%s\",\"softmax\":%s}",
      opts->output_size, sparse ? "sparse" : "dense",
      opts->box_format == LMAP_BOX_RELABEL ? "relabel" : "xyxy",
      opts->softmax ? "true" : "false");
  return rc ? rc : lmap_dynbuf_addstr(b, tail);
}

int lmap_wire_labels_binary(dynbuf *b, char *path, size_t cap,
                            const lmap_query *queries, size_t n,
                            const lmap_label_options *opts, int sparse,
                            char field[64], char err[LMAP_WIRE_ERRLEN]) {
  int rc = check_box_format(opts, field, err);
  if (rc)
    return rc;
  if (n > UINT32_MAX) {
    snprintf(field, 64, "queries");
    snprintf(err, LMAP_WIRE_ERRLEN, "%zu queries are more than a request holds",
             n);
    return LMAP_ETOOBIG;
  }
  int xyxy = opts->box_format == LMAP_BOX_XYXY;
  rc = lmap_querybin_begin(b, (uint32_t)n);
  for (size_t i = 0; rc == 0 && i < n; i++) {
    const lmap_query *q = &queries[i];
    if ((rc = check_query(q, i, 255, field, err)) != 0)
      return rc;
    double box[4];
    for (int j = 0; j < 4; j++)
      box[j] = xyxy ? (double)(float)q->box[j] : q->box[j];
    rc = lmap_querybin_put(b, q->id, strlen(q->id), box, q->flip);
  }
  snprintf(path, cap,
           "/v1/labels?output_size=%d&format=%s&box_format=%s&softmax=%s",
           opts->output_size, sparse ? "sparse" : "dense",
           xyxy ? "xyxy" : "relabel", opts->softmax ? "true" : "false");
  return rc;
}

int lmap_wire_path_escape(dynbuf *b, const char *id) {
  static const char hex[] = "0123456789ABCDEF";
  int rc = 0;
  for (const unsigned char *p = (const unsigned char *)id; rc == 0 && *p; p++) {
    if (isalnum(*p) || *p == '-' || *p == '_' || *p == '.' || *p == '~') {
      rc = lmap_dynbuf_add(b, p, 1);
    } else {
      char esc[3] = {'%', hex[*p >> 4], hex[*p & 15]};
      rc = lmap_dynbuf_add(b, esc, 3);
    }
  }
  return rc;
}

/* ---- .npy answers ------------------------------------------------------- */

void lmap_npy_sink_init(lmap_npy_sink *s, float *dest, size_t dest_len,
                        const size_t *expect, int expect_ndim) {
  memset(s, 0, sizeof *s);
  lmap_dynbuf_init(&s->head, NPY_MAX_HEADER);
  s->dest = dest;
  s->dest_len = dest_len;
  s->expect_ndim = expect_ndim;
  for (int i = 0; i < expect_ndim && i < 4; i++)
    s->expect[i] = expect[i];
  s->declared = -1;
}

void lmap_npy_sink_values(lmap_npy_sink *s, lmap_npy_values values,
                          uint32_t classes) {
  s->values = values;
  s->classes = classes ? classes : LMAP_WIRE_MAX_CLASSES;
}

int lmap_npy_sink_declare(lmap_npy_sink *s, long long length) {
  s->declared = length;
  size_t most = s->dest_len > (SIZE_MAX - NPY_MAX_HEADER) / sizeof(float)
                    ? SIZE_MAX
                    : NPY_MAX_HEADER + s->dest_len * sizeof(float);
  if (length < 0 || (unsigned long long)length <= most)
    return 0;
  char want[96], msg[300];
  shape_text(want, s->expect, s->expect_ndim, "any");
  snprintf(
      msg, sizeof msg,
      "the .npy answer's Content-Length is %lld bytes, more than the %zu a %s float32 "
      "array of %zu values and its header can take",
      length, most, want, s->dest_len);
  return npy_fail(s, LMAP_EPROTOCOL, msg);
}

void lmap_npy_sink_free(lmap_npy_sink *s) {
  lmap_dynbuf_free(&s->head);
}

static int npy_fail(lmap_npy_sink *s, int code, const char *msg) {
  s->failed = code;
  snprintf(s->err, sizeof s->err, "%s", msg);
  return code;
}

/* Finds `key` in the header dict and returns the text after its colon. */
static const char *npy_value(const char *dict, const char *key) {
  const char *p = strstr(dict, key);
  if (p == NULL)
    return NULL;
  p += strlen(key);
  while (*p == ' ')
    p++;
  if (*p != ':')
    return NULL;
  p++;
  while (*p == ' ')
    p++;
  return p;
}

/* "(2, 3)" into out[96]; a 0 dim prints as `zero` when it is not NULL. */
static void shape_text(char out[96], const size_t *shape, int ndim,
                       const char *zero) {
  int len = snprintf(out, 96, "(");
  for (int i = 0; i < ndim && len < 80; i++) {
    const char *sep = i ? ", " : "";
    len += shape[i] == 0 && zero
               ? snprintf(out + len, 96 - (size_t)len, "%s%s", sep, zero)
               : snprintf(out + len, 96 - (size_t)len, "%s%zu", sep, shape[i]);
  }
  snprintf(out + len, 96 - (size_t)len, ndim == 1 ? ",)" : ")");
}

/* Checks the values of dest[s->checked, upto) as the sink's `values` says.
 * The index of a refused value is printed in the answer's shape. */
static int npy_check_values(lmap_npy_sink *s, size_t upto) {
  size_t half = s->dest_len / 2; /* LMAP_NPY_MAP: plane 1 starts here */
  if (s->values != LMAP_NPY_MAP) {
    /* The common case, a batch of labels: one tight pass (NaN fails both
     * comparisons, infinities the bounds); the loop below then only finds
     * and names the first bad value. */
    float lo =
        s->values == LMAP_NPY_PROB ? (float)-LMAP_WIRE_PROB_SLACK : -FLT_MAX;
    float hi = s->values == LMAP_NPY_PROB ? (float)(1 + LMAP_WIRE_PROB_SLACK)
                                          : FLT_MAX;
    int bad = 0;
    for (size_t i = s->checked; i < upto; i++)
      bad |= !(s->dest[i] >= lo && s->dest[i] <= hi);
    if (!bad) {
      s->checked = upto;
      return 0;
    }
  }
  for (size_t i = s->checked; i < upto; i++) {
    float v = s->dest[i];
    const char *why = NULL;
    if (!isfinite(v))
      why = "not a finite number";
    else if (s->values == LMAP_NPY_PROB &&
             (v < -LMAP_WIRE_PROB_SLACK || v > 1 + LMAP_WIRE_PROB_SLACK))
      why = "not a probability in [0, 1]";
    /* The cast is reached only for 0 <= v < classes <= 2^24: exact for a
     * whole number, and no libm needed to tell. */
    else if (s->values == LMAP_NPY_MAP && i >= half &&
             (v < 0 || v >= (float)s->classes || (float)(uint32_t)v != v))
      why =
          "not a class index (a whole number below the store's number of classes)";
    if (why) {
      char at[96], msg[300];
      int len = snprintf(at, sizeof at, "[");
      size_t rest = i, idx[4] = {0};
      for (int d = s->ndim - 1; d >= 0; d--) {
        idx[d] = s->shape[d] ? rest % s->shape[d] : 0;
        rest = s->shape[d] ? rest / s->shape[d] : 0;
      }
      for (int d = 0; d < s->ndim; d++)
        len += snprintf(at + len, sizeof at - (size_t)len, d ? ", %zu" : "%zu",
                        idx[d]);
      snprintf(at + len, sizeof at - (size_t)len, "]");
      snprintf(msg, sizeof msg, "the .npy answer's value at %s is %g, %s", at,
               (double)v, why);
      s->checked = i;
      return npy_fail(s, LMAP_EPROTOCOL, msg);
    }
  }
  s->checked = upto;
  return 0;
}

/* Reads the header dict: '<f4', C order, and a shape of at most 4 dims that
 * matches what the request asked for and fills dest exactly. */
static int npy_parse_header(lmap_npy_sink *s, const char *dict) {
  const char *v = npy_value(dict, "'descr'");
  if (v == NULL || strncmp(v, "'<f4'", 5) != 0)
    return npy_fail(s, LMAP_EPROTOCOL,
                    "the .npy answer is not little-endian float32");
  v = npy_value(dict, "'fortran_order'");
  if (v == NULL || strncmp(v, "False", 5) != 0)
    return npy_fail(s, LMAP_EPROTOCOL, "the .npy answer is not in C order");
  v = npy_value(dict, "'shape'");
  if (v == NULL || *v != '(')
    return npy_fail(s, LMAP_EPROTOCOL, "the .npy answer has no shape");
  v++;
  size_t total = 1;
  s->ndim = 0;
  for (;;) {
    while (*v == ' ')
      v++;
    if (*v == ')')
      break;
    if (!isdigit((unsigned char)*v) || s->ndim == 4)
      return npy_fail(s, LMAP_EPROTOCOL,
                      "the .npy answer's shape is malformed");
    errno = 0;
    char *end;
    unsigned long long d = strtoull(v, &end, 10);
    if (errno || d > SIZE_MAX / 4 || (d && total > SIZE_MAX / 4 / d))
      return npy_fail(s, LMAP_EPROTOCOL,
                      "the .npy answer's shape is too large");
    s->shape[s->ndim++] = (size_t)d;
    total *= (size_t)d;
    v = end;
    while (*v == ' ')
      v++;
    if (*v == ',')
      v++;
  }
  int match = s->ndim == s->expect_ndim;
  for (int i = 0; match && i < s->ndim; i++)
    match = s->expect[i] == 0 || s->expect[i] == s->shape[i];
  if (!match) {
    char got[96], want[96];
    shape_text(got, s->shape, s->ndim, NULL);
    shape_text(want, s->expect, s->expect_ndim, "any");
    char msg[240];
    snprintf(msg, sizeof msg,
             "the .npy answer's shape is %s, not the %s asked for", got, want);
    s->shape_differs = 1;
    return npy_fail(s, LMAP_EPROTOCOL, msg);
  }
  if (total != s->dest_len) {
    char msg[200];
    snprintf(
        msg, sizeof msg,
        "the answer holds %zu floats but the output buffer %zu (out_len must be "
        "n * num_classes * G * G)",
        total, s->dest_len);
    return npy_fail(s, LMAP_ERANGE, msg);
  }
  /* The header has been read whole: header_len bytes. */
  if (s->declared >= 0 &&
      (unsigned long long)s->declared !=
          (unsigned long long)s->header_len + total * sizeof(float)) {
    char got[96], msg[240];
    shape_text(got, s->shape, s->ndim, NULL);
    snprintf(
        msg, sizeof msg,
        "the .npy answer's Content-Length is %lld bytes, but a %s float32 array with "
        "its %zu-byte header is %zu",
        s->declared, got, s->header_len, s->header_len + total * sizeof(float));
    return npy_fail(s, LMAP_EPROTOCOL, msg);
  }
  return 0;
}

/* Reads the preamble: the magic, the version and the header length (2
 * bytes in format 1.0, 4 in 2.0 and 3.0). Returns 0 with s->header_len set,
 * or 0 with it still 0 when more bytes are needed, or an error. */
static int npy_preamble(lmap_npy_sink *s) {
  const unsigned char *h = (const unsigned char *)s->head.data;
  if (memcmp(h, NPY_MAGIC, 6) != 0)
    return npy_fail(s, LMAP_EPROTOCOL, "the answer is not a .npy array");
  size_t len;
  if (h[6] == 1) {
    len = 10 + (size_t)(h[8] | h[9] << 8);
  } else if (h[6] == 2 || h[6] == 3) {
    if (s->head.len < 12)
      return 0;
    len = 12 + ((size_t)h[8] | (size_t)h[9] << 8 | (size_t)h[10] << 16 |
                (size_t)h[11] << 24);
  } else {
    return npy_fail(s, LMAP_EPROTOCOL, "unsupported .npy format version");
  }
  if (len > NPY_MAX_HEADER)
    return npy_fail(s, LMAP_EPROTOCOL, "the .npy header is too large");
  s->header_len = len;
  return 0;
}

int lmap_npy_feed(lmap_npy_sink *s, const char *p, size_t n) {
  if (s->failed)
    return s->failed;
  while (s->header_len == 0 || s->head.len < s->header_len) {
    if (n == 0)
      return 0;
    size_t target = s->header_len ? s->header_len : s->head.len < 10 ? 10 : 12;
    size_t take = target - s->head.len < n ? target - s->head.len : n;
    if (lmap_dynbuf_add(&s->head, p, take) != 0)
      return npy_fail(s, LMAP_ENOMEM, "out of memory for the .npy header");
    p += take;
    n -= take;
    int rc = 0;
    if (s->header_len == 0 && s->head.len >= 10)
      rc = npy_preamble(s);
    if (rc == 0 && s->header_len && s->head.len == s->header_len)
      rc = npy_parse_header(s, s->head.data + (s->head.data[6] == 1 ? 10 : 12));
    if (rc)
      return rc;
  }
  size_t room = s->dest_len * sizeof(float) - s->data_off;
  if (n > room)
    return npy_fail(s, LMAP_EPROTOCOL,
                    "the .npy answer is longer than its shape");
  if (n)
    memcpy((char *)s->dest + s->data_off, p, n);
  s->data_off += n;
  /* Checked as they arrive (a float split across two feeds waits for its
   * last byte), while they are still in cache. */
  return s->values == LMAP_NPY_ANY
             ? 0
             : npy_check_values(s, s->data_off / sizeof(float));
}

int lmap_npy_finish(lmap_npy_sink *s) {
  if (s->failed)
    return s->failed;
  if (s->header_len == 0 || s->head.len < s->header_len ||
      s->data_off != s->dest_len * sizeof(float))
    return npy_fail(s, LMAP_EPROTOCOL, "the .npy answer was cut short");
  return 0;
}

/* ---- sparse binary answers --------------------------------------------- */

static int sb_fail(lmap_sparsebin_sink *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int sb_fail(lmap_sparsebin_sink *s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->err, sizeof s->err, fmt, ap);
  va_end(ap);
  s->failed = LMAP_EPROTOCOL;
  return s->failed;
}

static uint32_t sb_le32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

static float sb_f32(const unsigned char *p) {
  uint32_t bits = sb_le32(p);
  float v;
  memcpy(&v, &bits, sizeof v);
  return v;
}

/* The most bytes an answer of the expected shape can take: every cell
 * listing every class. Saturates at SIZE_MAX. */
static size_t sb_most(const lmap_sparsebin_sink *s) {
  size_t cells = s->expect[2] * s->expect[3], C = s->expect[1];
  if (cells && s->expect[0] > SIZE_MAX / cells)
    return SIZE_MAX;
  size_t all = s->expect[0] * cells;
  if (C && all > SIZE_MAX / C)
    return SIZE_MAX;
  return lmap_sparsebin_size(s->expect[0], cells, all * C);
}

void lmap_sparsebin_sink_init(lmap_sparsebin_sink *s, float *dest,
                              size_t dest_len, const size_t expect[4],
                              lmap_npy_values values) {
  memset(s, 0, sizeof *s);
  s->dest = dest;
  s->dest_len = dest_len;
  memcpy(s->expect, expect, sizeof s->expect);
  s->values = values;
  s->declared = -1;
}

int lmap_sparsebin_sink_declare(lmap_sparsebin_sink *s, long long length) {
  s->declared = length;
  /* The upper bound waits for the header: an answer of another shape
   * (the store was replaced) must get as far as saying so. */
  if (length < 0 ||
      ((unsigned long long)length >= LMAP_SPARSEBIN_HEADER &&
       (length - LMAP_SPARSEBIN_HEADER) % LMAP_SPARSEBIN_UNIT == 0))
    return 0;
  return sb_fail(s,
                 "the sparse answer's Content-Length is %lld bytes, which no "
                 "sparse answer takes (16 + 8 * k)",
                 length);
}

/* After the header: the declared length against the most an answer of
 * this shape can take. */
static int sb_declared_fits(lmap_sparsebin_sink *s) {
  size_t most = sb_most(s);
  if (s->declared < 0 || (unsigned long long)s->declared <= most)
    return 0;
  return sb_fail(s,
                 "the sparse answer's Content-Length is %lld bytes, more "
                 "than the %zu an answer of %zu item(s) of %zu cell(s) of "
                 "%zu classes can take",
                 s->declared, most, s->expect[0], s->expect[2] * s->expect[3],
                 s->expect[1]);
}

/* Whether `v` is a value the sink accepts. */
static int sb_value_ok(const lmap_sparsebin_sink *s, float v) {
  if (s->values == LMAP_NPY_PROB)
    return v >= (float)-LMAP_WIRE_PROB_SLACK &&
           v <= (float)(1 + LMAP_WIRE_PROB_SLACK);
  if (s->values == LMAP_NPY_FINITE)
    return isfinite(v);
  return 1;
}

static const char *sb_value_why(const lmap_sparsebin_sink *s) {
  return s->values == LMAP_NPY_PROB ? "not a probability in [0, 1]"
                                    : "not a finite number";
}

/* The two header units: magic and count, then classes and G. */
static int sb_header(lmap_sparsebin_sink *s, const unsigned char *u) {
  if (s->units == 0) {
    if (memcmp(u, LMAP_SPARSEBIN_MAGIC, 4) != 0)
      return sb_fail(s,
                     "the answer does not start with \"%s\": not a sparse "
                     "binary answer (or another version of it)",
                     LMAP_SPARSEBIN_MAGIC);
    s->shape[0] = sb_le32(u + 4);
    return 0;
  }
  size_t G = sb_le32(u + 4);
  s->shape[1] = sb_le32(u);
  s->shape[2] = s->shape[3] = G;
  s->ndim = G == 1 ? 2 : 4;
  if (memcmp(s->shape, s->expect, sizeof s->shape) != 0) {
    s->shape_differs = 1;
    return sb_fail(s,
                   "the sparse answer holds %zu item(s) of %zu classes on a "
                   "%zu x %zu grid, not the %zu of %zu classes on %zu x %zu "
                   "asked for",
                   s->shape[0], s->shape[1], G, G, s->expect[0], s->expect[1],
                   s->expect[2], s->expect[3]);
  }
  s->cells = G * G;
  s->stride = s->cells;
  return sb_declared_fits(s);
}

/* Names where the sink is, for errors: "item 3, cell 0". */
static void sb_where(const lmap_sparsebin_sink *s, char out[64]) {
  size_t cell = s->cells_in - 1;
  snprintf(out, 64, "item %zu, cell %zu", cell / s->cells, cell % s->cells);
}

/* A cell's first unit: its entry count and its rest, written to every
 * class of the cell. */
static int sb_cell(lmap_sparsebin_sink *s, const unsigned char *u) {
  size_t total = s->shape[0] * s->cells, C = s->shape[1];
  if (s->cells_in == total)
    return sb_fail(s, "the sparse answer goes on after its %zu cell(s)", total);
  s->cells_in++;
  uint32_t n = sb_le32(u);
  float rest = sb_f32(u + 4);
  char at[64];
  if (n > C) {
    sb_where(s, at);
    return sb_fail(s,
                   "the sparse answer's %s lists %" PRIu32
                   " classes, more than the store's %zu",
                   at, n, C);
  }
  if (!sb_value_ok(s, rest)) {
    sb_where(s, at);
    return sb_fail(s, "the sparse answer's %s has rest %g, %s", at,
                   (double)rest, sb_value_why(s));
  }
  size_t cell = s->cells_in - 1, item = cell / s->cells;
  s->cell_base = s->dest + item * C * s->cells + cell % s->cells;
  if (s->stride == 1) {
    for (size_t c = 0; c < C; c++)
      s->cell_base[c] = rest;
  } else {
    for (size_t c = 0; c < C; c++)
      s->cell_base[c * s->stride] = rest;
  }
  s->left = n;
  s->entry = 0;
  return 0;
}

/* One entry of the current cell: a class and its value. */
static int sb_entry(lmap_sparsebin_sink *s, const unsigned char *u) {
  uint32_t cls = sb_le32(u);
  float v = sb_f32(u + 4);
  if (cls >= s->shape[1] || !sb_value_ok(s, v)) {
    char at[64];
    sb_where(s, at);
    if (cls >= s->shape[1])
      return sb_fail(s,
                     "the sparse answer's %s, entry %" PRIu32 ": class %" PRIu32
                     " is not below the store's %zu",
                     at, s->entry, cls, s->shape[1]);
    return sb_fail(s,
                   "the sparse answer's %s, entry %" PRIu32 " (class %" PRIu32
                   ") is %g, %s",
                   at, s->entry, cls, (double)v, sb_value_why(s));
  }
  s->cell_base[(size_t)cls * s->stride] = v;
  s->left--;
  s->entry++;
  return 0;
}

static int sb_unit(lmap_sparsebin_sink *s, const unsigned char *u) {
  int rc = s->units < 2   ? sb_header(s, u)
           : s->left == 0 ? sb_cell(s, u)
                          : sb_entry(s, u);
  s->units++;
  return rc;
}

int lmap_sparsebin_feed(lmap_sparsebin_sink *s, const char *p, size_t n) {
  if (s->failed)
    return s->failed;
  const unsigned char *b = (const unsigned char *)p;
  if (s->declared >= 0 && s->units * LMAP_SPARSEBIN_UNIT + s->part_len + n >
                              (unsigned long long)s->declared)
    return sb_fail(s, "the sparse answer is longer than its Content-Length");
  /* A unit split across feeds is completed first; whole units are then
   * read in place. */
  if (s->part_len) {
    size_t take = LMAP_SPARSEBIN_UNIT - s->part_len;
    if (take > n)
      take = n;
    memcpy(s->part + s->part_len, b, take);
    s->part_len += take;
    b += take;
    n -= take;
    if (s->part_len < LMAP_SPARSEBIN_UNIT)
      return 0;
    s->part_len = 0;
    if (sb_unit(s, s->part))
      return s->failed;
  }
  for (; n >= LMAP_SPARSEBIN_UNIT;
       b += LMAP_SPARSEBIN_UNIT, n -= LMAP_SPARSEBIN_UNIT)
    if (sb_unit(s, b))
      return s->failed;
  memcpy(s->part, b, n);
  s->part_len = n;
  return 0;
}

int lmap_sparsebin_finish(lmap_sparsebin_sink *s) {
  if (s->failed)
    return s->failed;
  if (s->units < 2 || s->part_len || s->left ||
      s->cells_in != s->shape[0] * s->cells)
    return sb_fail(s, "the sparse answer was cut short (%zu of %zu cells)",
                   s->cells_in,
                   s->units < 2 ? s->expect[0] * s->expect[2] * s->expect[3]
                                : s->shape[0] * s->cells);
  return 0;
}

/* ---- JSON answers ------------------------------------------------------- */

static json_t *load(const char *body, size_t len, char err[LMAP_WIRE_ERRLEN]) {
  json_error_t je;
  json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
  if (doc == NULL)
    snprintf(err, LMAP_WIRE_ERRLEN,
             "the answer is not valid JSON (%s at byte %d)", je.text,
             je.position);
  return doc;
}

int lmap_wire_error(const char *body, size_t len, char code[64],
                    char message[LMAP_WIRE_ERRLEN], char field[64]) {
  char err[LMAP_WIRE_ERRLEN];
  json_t *doc = len ? load(body, len, err) : NULL;
  json_t *e = json_object_get(doc, "error");
  const char *c = json_string_value(json_object_get(e, "code"));
  const char *m = json_string_value(json_object_get(e, "message"));
  const char *f = json_string_value(json_object_get(e, "field"));
  int rc = LMAP_EPROTOCOL;
  if (c && m) {
    snprintf(code, 64, "%s", c);
    snprintf(message, LMAP_WIRE_ERRLEN, "%s", m);
    snprintf(field, 64, "%s", f ? f : "");
    rc = 0;
  }
  json_decref(doc);
  return rc;
}

/* The per-cell arrays of an item: for one cell the item's arrays
 * themselves, for G x G a list of `cells` arrays. */
static json_t *cell_of(json_t *v, size_t cells, size_t j) {
  return cells == 1 ? v : json_array_get(v, j);
}

/* Names item `i` (and cell `j` when there are several) in `err`. */
static int sparse_fail(char err[LMAP_WIRE_ERRLEN], size_t i, size_t cells,
                       size_t j, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int sparse_fail(char err[LMAP_WIRE_ERRLEN], size_t i, size_t cells,
                       size_t j, const char *fmt, ...) {
  char what[300];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  if (cells > 1)
    snprintf(err, LMAP_WIRE_ERRLEN, "sparse answer, results[%zu] cell %zu: %s",
             i, j, what);
  else
    snprintf(err, LMAP_WIRE_ERRLEN, "sparse answer, results[%zu]: %s", i, what);
  return LMAP_EPROTOCOL;
}

/* Why `v` (a value of key `key`) cannot be one, or NULL when it can. */
static const char *bad_value(float v, int probability, int must_be_zero) {
  if (!isfinite(v))
    return "not a finite number";
  if (probability &&
      (v < -LMAP_WIRE_PROB_SLACK || v > 1 + LMAP_WIRE_PROB_SLACK))
    return "not a probability in [0, 1]";
  if (must_be_zero && v != 0)
    return "not 0 (softmax is off: every class not listed has logit 0)";
  return NULL;
}

/* The item's values array: "probs" or "logits" as `softmax` asks. */
static json_t *sparse_values(json_t *item, int softmax, const char **key) {
  json_t *probs = json_object_get(item, "probs"),
         *logits = json_object_get(item, "logits");
  if (softmax == 1 || (softmax < 0 && probs)) {
    *key = "probs";
    return logits ? NULL : probs;
  }
  *key = "logits";
  return probs ? NULL : logits;
}

int lmap_wire_sparse_check(const char *body, size_t len,
                           const lmap_sparse_expect *x, lmap_sparse **out,
                           char err[LMAP_WIRE_ERRLEN]) {
  *out = NULL;
  size_t n = x->n, cells = x->cells;
  uint32_t classes = x->classes ? x->classes : LMAP_WIRE_MAX_CLASSES;
  json_t *doc = load(body, len, err);
  if (doc == NULL)
    return LMAP_EPROTOCOL;
  json_t *results = json_object_get(doc, "results");
  int rc = 0;
  char *block = NULL;
  if (json_array_size(results) != n) {
    snprintf(err, LMAP_WIRE_ERRLEN,
             "the sparse answer holds %zu results for %zu queries",
             json_array_size(results), n);
    rc = LMAP_EPROTOCOL;
    goto done;
  }
  /* First pass: check the shape and count the entries. */
  size_t entries = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    json_t *item = json_array_get(results, i);
    const char *key;
    json_t *classes_v = json_object_get(item, "classes");
    json_t *values = sparse_values(item, x->softmax, &key);
    json_t *rest = json_object_get(item, "rest");
    if (!json_is_array(classes_v) || !json_is_array(values) || rest == NULL) {
      rc = sparse_fail(err, i, 1, 0,
                       x->softmax == 1   ? "not classes, probs and rest"
                       : x->softmax == 0 ? "not classes, logits and rest"
                                         : "missing classes, probs or rest");
      break;
    }
    if (cells > 1 &&
        (json_array_size(classes_v) != cells ||
         json_array_size(values) != cells || json_array_size(rest) != cells)) {
      rc = sparse_fail(err, i, 1, 0,
                       "the number of cells differs from output_size squared");
      break;
    }
    for (size_t j = 0; j < cells && rc == 0; j++) {
      json_t *cc = cell_of(classes_v, cells, j),
             *cv = cell_of(values, cells, j);
      if (!json_is_array(cc) || !json_is_array(cv) ||
          json_array_size(cc) != json_array_size(cv))
        rc = sparse_fail(err, i, cells, j, "classes and %s differ in length",
                         key);
      else if (json_array_size(cc) > classes)
        rc = sparse_fail(err, i, cells, j,
                         "%zu classes listed, the store has %" PRIu32,
                         json_array_size(cc), classes);
      entries += json_array_size(cc);
    }
  }
  if (rc)
    goto done;
  /* One block: the struct, offsets, classes, values, rest. Its size cannot
   * overflow: every entry is a parsed JSON number in memory already. */
  size_t slots = n * cells;
  size_t size = sizeof(lmap_sparse) + (slots + 1) * sizeof(size_t) +
                entries * (sizeof(int32_t) + sizeof(float)) +
                slots * sizeof(float);
  block = malloc(size);
  if (block == NULL) {
    snprintf(err, LMAP_WIRE_ERRLEN,
             "out of memory for a sparse answer of %zu entries", entries);
    rc = LMAP_ENOMEM;
    goto done;
  }
  lmap_sparse *s = (lmap_sparse *)block;
  size_t *offsets = (size_t *)(block + sizeof *s);
  int32_t *cls = (int32_t *)(offsets + slots + 1);
  float *val = (float *)(cls + entries);
  float *rest = val + entries;
  size_t at = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    json_t *item = json_array_get(results, i);
    const char *key;
    json_t *classes_v = json_object_get(item, "classes");
    json_t *values = sparse_values(item, x->softmax, &key);
    int probability = strcmp(key, "probs") == 0;
    json_t *rests = json_object_get(item, "rest");
    for (size_t j = 0; j < cells && rc == 0; j++) {
      json_t *cc = cell_of(classes_v, cells, j),
             *cv = cell_of(values, cells, j);
      json_t *r = cells == 1 ? rests : json_array_get(rests, j);
      offsets[i * cells + j] = at;
      const char *why;
      if (!json_is_number(r)) {
        rc = sparse_fail(err, i, cells, j, "rest is not a number");
        break;
      }
      rest[i * cells + j] = (float)json_number_value(r);
      if ((why = bad_value(rest[i * cells + j], probability, !probability)) !=
          NULL) {
        rc = sparse_fail(err, i, cells, j, "rest is %g, %s",
                         json_number_value(r), why);
        break;
      }
      for (size_t e = 0; e < json_array_size(cc) && rc == 0; e++, at++) {
        json_t *c = json_array_get(cc, e), *v = json_array_get(cv, e);
        if (!json_is_integer(c) || json_integer_value(c) < 0 ||
            json_integer_value(c) >= (json_int_t)classes) {
          rc = sparse_fail(
              err, i, cells, j,
              "classes[%zu] is not a class index (an integer below %" PRIu32
              ")",
              e, classes);
          break;
        }
        if (!json_is_number(v)) {
          rc = sparse_fail(err, i, cells, j, "%s[%zu] is not a number", key, e);
          break;
        }
        cls[at] = (int32_t)json_integer_value(c);
        val[at] = (float)json_number_value(v);
        if ((why = bad_value(val[at], probability, 0)) != NULL)
          rc = sparse_fail(err, i, cells, j, "%s[%zu] is %g, %s", key, e,
                           json_number_value(v), why);
      }
    }
  }
  if (rc)
    goto done;
  offsets[slots] = at;
  *s = (lmap_sparse){.n = n,
                     .cells = cells,
                     .offsets = offsets,
                     .classes = cls,
                     .values = val,
                     .rest = rest};
  *out = s;
  block = NULL;
done:
  free(block);
  json_decref(doc);
  return rc;
}

int lmap_wire_sparse(const char *body, size_t len, size_t n, size_t cells,
                     lmap_sparse **out, char err[LMAP_WIRE_ERRLEN]) {
  lmap_sparse_expect x = {.n = n, .cells = cells, .classes = 0, .softmax = -1};
  return lmap_wire_sparse_check(body, len, &x, out, err);
}

/* a * b + c, or SIZE_MAX when it does not fit. */
static size_t mul_add(size_t a, size_t b, size_t c) {
  if (b && a > (SIZE_MAX - c) / b)
    return SIZE_MAX;
  return a * b + c;
}

size_t lmap_wire_sparse_max(size_t n, size_t id_bytes, size_t cells,
                            uint32_t classes, uint64_t per_cell) {
  if (classes == 0 || classes > LMAP_WIRE_MAX_CLASSES)
    classes = LMAP_WIRE_MAX_CLASSES;
  if (per_cell == 0 || per_cell > classes)
    per_cell = classes;
  size_t digits = 1;
  for (uint32_t c = classes - 1; c >= 10; c /= 10)
    digits++;
  /* One entry: a class index and a value, each with its comma. A cell: its
   * entries, its rest, and the brackets and commas of three arrays. An
   * item: its cells, the id (escaped, at most 6 bytes a byte: \u00XX) and
   * the keys ({"id":"","classes":[],"logits":[],"rest":[]},: 46 bytes). */
  size_t entry = digits + 1 + FMTFLOAT_MAX + 1;
  size_t cell = mul_add((size_t)per_cell, entry, FMTFLOAT_MAX + 1 + 6 + 3);
  size_t items = mul_add(n, mul_add(cells, cell, 64), 0);
  size_t ids = mul_add(id_bytes, 6, 32);
  if (items == SIZE_MAX || ids == SIZE_MAX || items > SIZE_MAX / 2 - ids)
    return SIZE_MAX;
  size_t compact = items + ids;
  return compact > (SIZE_MAX - (64 << 10)) / 2 ? SIZE_MAX
                                               : 2 * compact + (64 << 10);
}

static int get_u64(json_t *doc, const char *key, uint64_t max, uint64_t *v,
                   char err[LMAP_WIRE_ERRLEN]) {
  json_t *x = json_object_get(doc, key);
  if (!json_is_integer(x) || json_integer_value(x) < 0 ||
      (uint64_t)json_integer_value(x) > max) {
    snprintf(err, LMAP_WIRE_ERRLEN, "the info answer has no valid \"%s\"", key);
    return LMAP_EPROTOCOL;
  }
  *v = (uint64_t)json_integer_value(x);
  return 0;
}

int lmap_wire_info(const char *body, size_t len, lmap_info *info,
                   char err[LMAP_WIRE_ERRLEN]) {
  json_t *doc = load(body, len, err);
  if (doc == NULL)
    return LMAP_EPROTOCOL;
  uint64_t c = 0, k = 0, h = 0, w = 0, records = 0;
  int rc = get_u64(doc, "num_classes", UINT32_MAX, &c, err);
  if (rc == 0)
    rc = get_u64(doc, "topk", UINT32_MAX, &k, err);
  if (rc == 0)
    rc = get_u64(doc, "grid_h", UINT32_MAX, &h, err);
  if (rc == 0)
    rc = get_u64(doc, "grid_w", UINT32_MAX, &w, err);
  if (rc == 0)
    rc = get_u64(doc, "record_count", UINT64_MAX, &records, err);
  if (rc == 0 && info)
    *info = (lmap_info){.num_classes = (uint32_t)c,
                        .top_k = (uint32_t)k,
                        .height = (uint32_t)h,
                        .width = (uint32_t)w,
                        .records = records};
  json_decref(doc);
  return rc;
}
