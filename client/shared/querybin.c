/* querybin: the binary query body of POST /v1/labels (see querybin.h). */
#include "querybin.h"

#include <stdio.h>
#include <string.h>

static void put_le32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

static void put_f64(uint8_t *p, double v) {
  uint64_t bits;
  memcpy(&bits, &v, sizeof bits);
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(bits >> (8 * i));
}

static double get_f64(const uint8_t *p) {
  uint64_t bits = 0;
  for (int i = 7; i >= 0; i--)
    bits = bits << 8 | p[i];
  double v;
  memcpy(&v, &bits, sizeof v);
  return v;
}

int lmap_querybin_begin(dynbuf *b, uint32_t count) {
  uint8_t head[LMAP_QUERYBIN_HEADER];
  memcpy(head, LMAP_QUERYBIN_MAGIC, 4);
  put_le32(head + 4, count);
  return lmap_dynbuf_add(b, head, sizeof head);
}

int lmap_querybin_put(dynbuf *b, const char *id, size_t id_len,
                      const double box[4], int flip) {
  void *at;
  int rc = lmap_dynbuf_extend(b, LMAP_QUERYBIN_FIXED + id_len, &at);
  if (rc)
    return rc;
  uint8_t *p = at;
  p[0] = (uint8_t)id_len;
  p[1] = flip ? LMAP_QUERYBIN_FLIP : 0;
  for (int i = 0; i < 4; i++)
    put_f64(p + 2 + 8 * i, box[i]);
  memcpy(p + LMAP_QUERYBIN_FIXED, id, id_len);
  return 0;
}

int lmap_querybin_open(lmap_querybin_reader *r, const void *body, size_t len,
                       uint32_t *count, char err[LMAP_QUERYBIN_ERRLEN]) {
  const uint8_t *p = body;
  if (len < LMAP_QUERYBIN_HEADER || memcmp(p, LMAP_QUERYBIN_MAGIC, 4) != 0) {
    snprintf(err, LMAP_QUERYBIN_ERRLEN,
             "the body does not start with \"%s\" and a query count",
             LMAP_QUERYBIN_MAGIC);
    return -1;
  }
  uint32_t n = get_le32(p + 4);
  if (n == 0) {
    snprintf(err, LMAP_QUERYBIN_ERRLEN, "the query count is 0");
    return -1;
  }
  size_t rest = len - LMAP_QUERYBIN_HEADER;
  if (rest / (LMAP_QUERYBIN_FIXED + 1) < n) {
    snprintf(err, LMAP_QUERYBIN_ERRLEN,
             "%zu bytes cannot hold the %u queries the header counts", len, n);
    return -1;
  }
  r->p = p + LMAP_QUERYBIN_HEADER;
  r->end = p + len;
  r->count = n;
  r->index = 0;
  *count = n;
  return 0;
}

int lmap_querybin_next(lmap_querybin_reader *r, lmap_querybin_query *q,
                       char err[LMAP_QUERYBIN_ERRLEN]) {
  if (r->index == r->count) {
    if (r->p != r->end) {
      snprintf(err, LMAP_QUERYBIN_ERRLEN,
               "%zu bytes follow the last of the %u queries",
               (size_t)(r->end - r->p), r->count);
      return -1;
    }
    return 0;
  }
  size_t left = (size_t)(r->end - r->p);
  const uint8_t *p = r->p;
  if (left < LMAP_QUERYBIN_FIXED || left < LMAP_QUERYBIN_FIXED + p[0]) {
    snprintf(err, LMAP_QUERYBIN_ERRLEN,
             "queries[%u]: the body ends inside the query", r->index);
    return -1;
  }
  if (p[0] == 0) {
    snprintf(err, LMAP_QUERYBIN_ERRLEN, "queries[%u]: the id is empty",
             r->index);
    return -1;
  }
  if (p[1] & ~LMAP_QUERYBIN_FLIP) {
    snprintf(err, LMAP_QUERYBIN_ERRLEN,
             "queries[%u]: unknown flags 0x%02x (only bit 0, flip, is defined)",
             r->index, p[1]);
    return -1;
  }
  q->id_len = p[0];
  q->flip = p[1] & LMAP_QUERYBIN_FLIP;
  for (int i = 0; i < 4; i++)
    q->box[i] = get_f64(p + 2 + 8 * i);
  q->id = (const char *)p + LMAP_QUERYBIN_FIXED;
  r->p = p + LMAP_QUERYBIN_FIXED + q->id_len;
  r->index++;
  return 1;
}
