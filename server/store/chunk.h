/*
 * chunk: the format of one value of the "maps" database
 * (docs/STORE_FORMAT.md §4), read and written here and nowhere else. Pure:
 * no I/O, no LMDB, no allocation, so that it can be fuzzed on its own
 * (tests/fuzz/fuzz_chunk.c links only this part of the store).
 *
 * A chunk packs n consecutive records (in id order) behind a directory that
 * carries its own checksum: the ids as a shared prefix and n suffixes, and
 * where each record ends. LMDB keys it by its first id. The reader
 * (store.c) parses a value and binary-searches it in place; the writer
 * (writer.c) lays one out in the space LMDB reserves for it.
 */
#ifndef LMAP_STORE_CHUNK_H
#define LMAP_STORE_CHUNK_H

#include <stddef.h>
#include <stdint.h>

#include "core/diag.h"

#define STORE_CHUNK_VERSION 1u
#define STORE_CHUNK_HEADER 8u           /* bytes before the directory arrays */
#define STORE_CHUNK_MAX_RECORDS 65535u  /* the record count is 16-bit */
#define STORE_CHUNK_MAX_PREFIX 255u     /* the prefix length is 8-bit */
#define STORE_CHUNK_MAX_SUFFIXES 65535u /* suffix offsets are 16-bit */

/* LMDB's default key order, which the ids of a store follow within and
 * across chunks: bytewise, a prefix before its extensions. Returns <0, 0 or
 * >0 as memcmp. */
int store_key_cmp(const void *a, size_t alen, const void *b, size_t blen);

/* The directory checksum of `len` bytes (docs/STORE_FORMAT.md §4.2). */
uint32_t store_chunk_checksum(const uint8_t *p, size_t len);

/* ---- reading ----
 *
 * A view of one chunk value: pointers borrowed from the value, which must
 * outlive the view. No function here copies the directory or reads outside
 * [v, v + len). Every function that takes a `diag` accepts NULL (fuzzers),
 * and then formats no message. */
typedef struct store_chunk {
  const uint8_t *v;
  size_t len;
  uint32_t n;              /* records, >= 1 */
  uint32_t prefix_len;     /* bytes every id of the chunk starts with */
  const uint8_t *rec_end;  /* n little-endian u32 */
  const uint8_t *id_end;   /* n little-endian u16 */
  const uint8_t *prefix;   /* prefix_len bytes */
  const uint8_t *suffixes; /* suffix_len bytes */
  size_t suffix_len;
  const uint8_t *records; /* records_len bytes */
  size_t records_len;
} store_chunk;

/* Checks the header, that the regions fit the value exactly, and the
 * directory checksum; fills `c`. Costs one pass over the directory (not the
 * records). Returns 0 or LMAP_ECORRUPT with the reason. */
int store_chunk_parse(const uint8_t *v, size_t len, store_chunk *c, diag *d);

/* Binary-searches a parsed chunk for `id`, bounds-checking every entry it
 * touches, and sets *rec / *rec_len to the record (borrowed from the
 * value). Returns 0, LMAP_ENOTFOUND or LMAP_ECORRUPT. */
int store_chunk_find(const store_chunk *c, const char *id, size_t id_len,
                     const uint8_t **rec, size_t *rec_len, diag *d);

/* Entry `i` (< c->n) of a parsed chunk, bounds-checked: its id assembled
 * into `id` (LABELMAP_MAX_ID_LEN bytes; not NUL-terminated) and its record.
 * Does not check order or id validity (store_chunk_check does). Returns 0
 * or LMAP_ECORRUPT. */
int store_chunk_entry(const store_chunk *c, uint32_t i, char *id,
                      size_t *id_len, const uint8_t **rec, size_t *rec_len,
                      diag *d);

/* Checks what a lookup does not need but a walk of the whole store
 * promises: every entry in bounds, every id free of NUL bytes, the first id
 * equal to the chunk's key (`key`, `key_len` bytes), and ids strictly
 * increasing from the previous chunk's last one (`last`, *last_len bytes,
 * none when *last_len is 0; LABELMAP_MAX_ID_LEN bytes of room), which is
 * updated to this chunk's last. Returns 0 or LMAP_ECORRUPT. */
int store_chunk_check(const store_chunk *c, const void *key, size_t key_len,
                      char *last, size_t *last_len, diag *d);

/* ---- writing ---- */

/* The size of a chunk of `n` records whose ids share `prefix_len` bytes,
 * with `suffix_bytes` of id suffixes and `record_bytes` of records. */
size_t store_chunk_size(uint32_t n, size_t prefix_len, size_t suffix_bytes,
                        size_t record_bytes);

/* A chunk being laid out in place, in a buffer of store_chunk_size() bytes:
 * store_chunk_begin writes the header and the prefix and points `suffixes`
 * and `records` at their regions; the caller copies each entry's suffix and
 * record there, in id order, and records where they end with
 * store_chunk_set_ends; store_chunk_seal then writes the checksum. */
typedef struct store_chunk_out {
  uint8_t *v;
  uint32_t n;
  uint8_t *suffixes;
  uint8_t *records;
} store_chunk_out;

/* `n` is 1..STORE_CHUNK_MAX_RECORDS, `prefix_len` at most
 * STORE_CHUNK_MAX_PREFIX, `suffix_bytes` at most STORE_CHUNK_MAX_SUFFIXES
 * (the caller picks chunks that fit). */
void store_chunk_begin(store_chunk_out *o, uint8_t *v, uint32_t n,
                       const uint8_t *prefix, size_t prefix_len,
                       size_t suffix_bytes);

/* Entry `i` ends at `suffix_end` in the suffix region and at `record_end`
 * in the record region. */
void store_chunk_set_ends(const store_chunk_out *o, uint32_t i,
                          size_t suffix_end, size_t record_end);

/* Writes the directory checksum, once every entry is in place. */
void store_chunk_seal(const store_chunk_out *o);

#endif /* LMAP_STORE_CHUNK_H */
