/*
 * chunk: the format of a "maps" value (contract in chunk.h, specification
 * in docs/STORE_FORMAT.md §4). n records, all integers little-endian:
 *
 *   0        u32     checksum of bytes [4, R) (the directory)
 *   4        u8      chunk version, 1
 *   5        u8      P: length of the prefix every id of the chunk shares
 *   6        u16     n >= 1
 *   8        u32[n]  rec_end[i]: end of record i in the record area
 *   8+4n     u16[n]  id_end[i]: end of id i's suffix in the suffix area
 *   8+6n     P       the prefix
 *   8+6n+P   S       the suffixes, S = id_end[n-1]
 *   R        ...     the records, rec_end[n-1] bytes; R = 8+6n+P+S
 *
 * Id i is prefix + suffix bytes [id_end[i-1], id_end[i]) (0 for i = 0);
 * record i is bytes [rec_end[i-1], rec_end[i]) of the record area. The
 * value ends exactly where the record area does.
 */
#include "chunk.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "core/labelmap.h"

int store_key_cmp(const void *a, size_t alen, const void *b, size_t blen) {
  size_t m = alen < blen ? alen : blen;
  int c = m ? memcmp(a, b, m) : 0;
  if (c != 0)
    return c;
  return alen < blen ? -1 : alen > blen;
}

static uint64_t checksum_step(uint64_t h, const uint8_t *w) {
  h = (h ^ ((uint64_t)store_le32(w) | (uint64_t)store_le32(w + 4) << 32)) *
      0xBF58476D1CE4E5B9ull;
  return h ^ (h >> 29);
}

uint32_t store_chunk_checksum(const uint8_t *p, size_t len) {
  /* Eight bytes per step through a bijective mix (xor, multiply by an odd
   * constant, xorshift): any single damaged word changes the 64-bit state
   * for good, and the loop runs at a few cycles per word, a third of a
   * microsecond for a 128-record directory. */
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)len;
  size_t i = 0;
  for (; len - i >= 8; i += 8)
    h = checksum_step(h, p + i);
  if (i < len) { /* the last word, padded with zeros */
    uint8_t b[8] = {0};
    memcpy(b, p + i, len - i);
    h = checksum_step(h, b);
  }
  return (uint32_t)(h ^ (h >> 32));
}

/* Sets LMAP_ECORRUPT with a message (formatted only when wanted: the
 * reader's hot path passes a diag, fuzzers may not). */
static int corrupt(diag *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int corrupt(diag *d, const char *fmt, ...) {
  if (d == NULL)
    return LMAP_ECORRUPT;
  char m[sizeof d->msg];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m, sizeof m, fmt, ap);
  va_end(ap);
  return diag_set(d, LMAP_ECORRUPT, "%s", m);
}

int store_chunk_parse(const uint8_t *v, size_t len, store_chunk *c, diag *d) {
  memset(c, 0, sizeof *c);
  if (len < STORE_CHUNK_HEADER)
    return corrupt(d, "chunk is %zu bytes, shorter than its header", len);
  if (v[4] != STORE_CHUNK_VERSION)
    return corrupt(d,
                   "chunk version %u is not supported (this lmap reads "
                   "%u)",
                   v[4], STORE_CHUNK_VERSION);
  uint32_t n = store_le16(v + 6), p = v[5];
  if (n == 0)
    return corrupt(d, "chunk holds no records");
  /* n < 2^16 and P < 2^8: these sums cannot overflow. */
  size_t dir = STORE_CHUNK_HEADER + (size_t)6 * n + p;
  if (dir > len)
    return corrupt(d,
                   "directory of %u records runs past the end of the "
                   "%zu-byte chunk",
                   n, len);
  c->rec_end = v + STORE_CHUNK_HEADER;
  c->id_end = c->rec_end + (size_t)4 * n;
  c->prefix = c->id_end + (size_t)2 * n;
  c->suffixes = c->prefix + p;
  c->suffix_len = store_le16(c->id_end + (size_t)2 * (n - 1));
  if (c->suffix_len > len - dir)
    return corrupt(d, "ids run past the end of the %zu-byte chunk", len);
  size_t r = dir + c->suffix_len;
  if (store_chunk_checksum(v + 4, r - 4) != store_le32(v))
    return corrupt(d, "chunk directory fails its checksum");
  c->records = v + r;
  c->records_len = len - r;
  uint32_t last = store_le32(c->rec_end + (size_t)4 * (n - 1));
  if (last != c->records_len)
    return corrupt(d,
                   "chunk records end at %u but its record area holds %zu "
                   "bytes",
                   last, c->records_len);
  c->v = v;
  c->len = len;
  c->n = n;
  c->prefix_len = p;
  return 0;
}

/* The suffix of id `i` of a parsed chunk, bounds-checked. */
static int suffix_at(const store_chunk *c, uint32_t i, const uint8_t **s,
                     size_t *len, diag *d) {
  size_t a = i ? store_le16(c->id_end + (size_t)2 * (i - 1)) : 0;
  size_t b = store_le16(c->id_end + (size_t)2 * i);
  if (a > b || b > c->suffix_len)
    return corrupt(d, "chunk id %u has bounds %zu..%zu in %zu bytes of ids", i,
                   a, b, c->suffix_len);
  *s = c->suffixes + a;
  *len = b - a;
  return 0;
}

/* Record `i` of a parsed chunk, bounds-checked (records are never empty). */
static int record_at(const store_chunk *c, uint32_t i, const uint8_t **rec,
                     size_t *len, diag *d) {
  size_t a = i ? store_le32(c->rec_end + (size_t)4 * (i - 1)) : 0;
  size_t b = store_le32(c->rec_end + (size_t)4 * i);
  if (a >= b || b > c->records_len)
    return corrupt(d,
                   "chunk record %u has bounds %zu..%zu in %zu bytes of "
                   "records",
                   i, a, b, c->records_len);
  *rec = c->records + a;
  *len = b - a;
  return 0;
}

int store_chunk_find(const store_chunk *c, const char *id, size_t id_len,
                     const uint8_t **rec, size_t *rec_len, diag *d) {
  size_t p = c->prefix_len;
  if (id_len < p || memcmp(id, c->prefix, p) != 0)
    return LMAP_ENOTFOUND;
  const char *key = id + p;
  size_t klen = id_len - p;
  uint32_t lo = 0, hi = c->n;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    const uint8_t *s = NULL;
    size_t slen = 0;
    int rc = suffix_at(c, mid, &s, &slen, d);
    if (rc != 0)
      return rc;
    int cmp = store_key_cmp(key, klen, s, slen);
    if (cmp == 0)
      return record_at(c, mid, rec, rec_len, d);
    if (cmp < 0)
      hi = mid;
    else
      lo = mid + 1;
  }
  return LMAP_ENOTFOUND;
}

int store_chunk_entry(const store_chunk *c, uint32_t i, char *id,
                      size_t *id_len, const uint8_t **rec, size_t *rec_len,
                      diag *d) {
  const uint8_t *s = NULL;
  size_t slen = 0;
  if (i >= c->n)
    return corrupt(d, "entry %u of a chunk of %u", i, c->n);
  int rc = suffix_at(c, i, &s, &slen, d);
  if (rc != 0)
    return rc;
  if (c->prefix_len + slen == 0 || c->prefix_len + slen > LABELMAP_MAX_ID_LEN)
    return corrupt(d, "chunk id %u is %zu bytes long", i, c->prefix_len + slen);
  memcpy(id, c->prefix, c->prefix_len);
  memcpy(id + c->prefix_len, s, slen);
  *id_len = c->prefix_len + slen;
  return record_at(c, i, rec, rec_len, d);
}

int store_chunk_check(const store_chunk *c, const void *key, size_t key_len,
                      char *last, size_t *last_len, diag *d) {
  char id[LABELMAP_MAX_ID_LEN];
  size_t len = 0, rec_len = 0; /* set by store_chunk_entry */
  const uint8_t *rec;
  for (uint32_t i = 0; i < c->n; i++) {
    int rc = store_chunk_entry(c, i, id, &len, &rec, &rec_len, d);
    if (rc != 0)
      return rc;
    if (memchr(id, '\0', len) != NULL)
      return corrupt(d, "chunk id %u holds a NUL byte", i);
    if (i == 0 && (key_len != len || memcmp(key, id, len) != 0))
      return corrupt(d, "the chunk's first id differs from its key");
    if (*last_len > 0 && store_key_cmp(last, *last_len, id, len) >= 0)
      return corrupt(d, "chunk id %u is not above the id before it", i);
    memcpy(last, id, len);
    *last_len = len;
  }
  return 0;
}

/* ---- writing ---- */

size_t store_chunk_size(uint32_t n, size_t prefix_len, size_t suffix_bytes,
                        size_t record_bytes) {
  return STORE_CHUNK_HEADER + (size_t)6 * n + prefix_len + suffix_bytes +
         record_bytes;
}

void store_chunk_begin(store_chunk_out *o, uint8_t *v, uint32_t n,
                       const uint8_t *prefix, size_t prefix_len,
                       size_t suffix_bytes) {
  uint8_t *dir_prefix = v + STORE_CHUNK_HEADER + (size_t)6 * n;
  v[4] = STORE_CHUNK_VERSION;
  v[5] = (uint8_t)prefix_len;
  store_put_le16(v + 6, n);
  memcpy(dir_prefix, prefix, prefix_len);
  o->v = v;
  o->n = n;
  o->suffixes = dir_prefix + prefix_len;
  o->records = o->suffixes + suffix_bytes;
}

void store_chunk_set_ends(const store_chunk_out *o, uint32_t i,
                          size_t suffix_end, size_t record_end) {
  uint8_t *rec_end = o->v + STORE_CHUNK_HEADER;
  store_put_le32(rec_end + (size_t)4 * i, (uint32_t)record_end);
  store_put_le16(rec_end + (size_t)4 * o->n + (size_t)2 * i,
                 (uint32_t)suffix_end);
}

void store_chunk_seal(const store_chunk_out *o) {
  store_put_le32(
      o->v, store_chunk_checksum(o->v + 4, (size_t)(o->records - o->v) - 4));
}
