/*
 * fuzz_chunk: the chunk directory of the maps database (store_chunk_parse,
 * store_chunk_find, store_chunk_entry) on any bytes.
 *
 * Each input is read twice: as it is, and with its directory checksum
 * recomputed, so that mutations get past the checksum to the directory
 * walk behind it (a random mutation fails a 32-bit checksum). Every id of
 * a parsed chunk is read back by position and looked up by name, with
 * near misses; results must be the documented codes and every record
 * returned must lie inside the value. A chunk whose every entry reads back
 * goes through the walk's check (store_chunk_check) and is laid out again
 * with the writer's side of the format (store_chunk_begin .. _seal), which
 * must give the same bytes.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "store/chunk.h"

static const uint8_t *lo, *hi; /* the value being read */

static void check_record(const uint8_t *rec, size_t len) {
  if (rec < lo || len < 1 || len > (size_t)(hi - lo) || rec + len > hi)
    abort();
}

static void find(const store_chunk *c, const char *id, size_t len) {
  const uint8_t *rec;
  size_t rl;
  diag d;
  diag_clear(&d);
  int rc = store_chunk_find(c, id, len, &rec, &rl, &d);
  if (rc == 0)
    check_record(rec, rl);
  else if (rc != LMAP_ENOTFOUND && (rc != LMAP_ECORRUPT || d.code != rc))
    abort();
}

/* Lays out the parsed chunk `c`, every entry of which reads back, with the
 * writer's functions; the result must be the value itself. */
static void reencode(const store_chunk *c) {
  if (store_chunk_size(c->n, c->prefix_len, c->suffix_len, c->records_len) !=
      c->len)
    abort();
  uint8_t *out = malloc(c->len);
  if (out == NULL)
    return;
  store_chunk_out o;
  store_chunk_begin(&o, out, c->n, c->prefix, c->prefix_len, c->suffix_len);
  size_t so = 0, ro = 0;
  for (uint32_t i = 0; i < c->n; i++) {
    char id[LABELMAP_MAX_ID_LEN];
    size_t il, rl;
    const uint8_t *rec;
    if (store_chunk_entry(c, i, id, &il, &rec, &rl, NULL) != 0)
      abort();
    memcpy(o.suffixes + so, id + c->prefix_len, il - c->prefix_len);
    so += il - c->prefix_len;
    memcpy(o.records + ro, rec, rl);
    ro += rl;
    store_chunk_set_ends(&o, i, so, ro);
  }
  store_chunk_seal(&o);
  if (memcmp(out, c->v, c->len) != 0)
    abort();
  free(out);
}

static void probe(const uint8_t *v, size_t len) {
  store_chunk c;
  diag d;
  diag_clear(&d);
  lo = v;
  hi = v + len;
  int rc = store_chunk_parse(v, len, &c, &d);
  if (rc != 0) {
    if (rc != LMAP_ECORRUPT || d.msg[0] == '\0')
      abort();
    return;
  }
  if (c.n < 1)
    abort();
  static const char far[] = "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz";
  find(&c, "", 0);
  find(&c, far, sizeof far - 1);
  uint32_t readable = 0;
  for (uint32_t i = 0; i < c.n; i++) {
    char id[LABELMAP_MAX_ID_LEN + 1];
    size_t il, rl;
    const uint8_t *rec;
    rc = store_chunk_entry(&c, i, id, &il, &rec, &rl, &d);
    if (rc != 0) {
      if (rc != LMAP_ECORRUPT)
        abort();
      continue;
    }
    if (il > LABELMAP_MAX_ID_LEN)
      abort();
    readable++;
    check_record(rec, rl);
    find(&c, id, il);
    if (il > 0) {
      find(&c, id, il - 1);
      id[il - 1]++;
      find(&c, id, il);
      id[il - 1]--;
    }
    if (il < LABELMAP_MAX_ID_LEN) {
      id[il] = '0';
      find(&c, id, il + 1);
    }
  }
  if (readable < c.n)
    return;
  char first[LABELMAP_MAX_ID_LEN], last[LABELMAP_MAX_ID_LEN];
  size_t first_len, last_len = 0, rl;
  const uint8_t *rec;
  if (store_chunk_entry(&c, 0, first, &first_len, &rec, &rl, NULL) != 0)
    abort();
  rc = store_chunk_check(&c, first, first_len, last, &last_len, &d);
  if (rc != 0 && (rc != LMAP_ECORRUPT || d.code != rc))
    abort();
  reencode(&c);
}

static uint32_t rd16(const uint8_t *p) {
  return p[0] | (uint32_t)p[1] << 8;
}

/* Writes the checksum the directory of `v` would need, when the header
 * says where the directory ends and that is inside the value. */
static int fix_checksum(uint8_t *v, size_t len) {
  if (len < 8)
    return 0;
  size_t n = rd16(v + 6), P = v[5];
  if (n == 0 || 8 + 6 * n + P > len)
    return 0;
  size_t R = 8 + 6 * n + P + rd16(v + 8 + 4 * n + 2 * (n - 1));
  if (R > len)
    return 0;
  uint32_t sum = store_chunk_checksum(v + 4, R - 4);
  for (int i = 0; i < 4; i++)
    v[i] = (uint8_t)(sum >> (8 * i));
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  probe(data, size);
  uint8_t *copy = malloc(size ? size : 1);
  if (copy == NULL)
    return 0;
  memcpy(copy, data, size);
  if (fix_checksum(copy, size))
    probe(copy, size);
  free(copy);
  return 0;
}
