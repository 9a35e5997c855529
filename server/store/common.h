/*
 * common: what the parts of the store layer share, and nothing outside
 * server/store includes. The names of the LMDB databases and the metadata
 * keys with the most a reader accepts in each, the little-endian integers of
 * the on-disk formats, the store's own check of an id, and the messages for
 * ids, LMDB errors and short reads.
 *
 * The parts: chunk.c (the chunk format, pure), pagecheck.c (LMDB's header
 * and the page-checksum trailer, read with pread()), store.c (opening and
 * reading a store) and writer.c (writing one). lmapd links the first three;
 * the writer comes with the import layer.
 */
#ifndef LMAP_STORE_COMMON_H
#define LMAP_STORE_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "core/diag.h"

#define STORE_DB_META "meta"
#define STORE_DB_MAPS "maps"

#define STORE_META_KEY "lmap.meta"
#define STORE_DICT_KEY "lmap.dict"
#define STORE_CLASSES_KEY "lmap.classes"
#define STORE_LAYOUT_KEY "lmap.layout"

/* Caps on metadata values: readers check them before copying a value out of
 * the map, and the writer refuses a value above them, so it never makes a
 * store that store_open refuses for its size. */
#define STORE_META_MAX (1u << 20)
#define STORE_DICT_MAX (16u << 20)
#define STORE_CLASSES_MAX (512u << 20)
#define STORE_LAYOUT_MAX 4096u

/* The buffer for reading and copying a file in order (page checks, the
 * trailer, copying pages). */
#define STORE_IO_BUF (1u << 20)

/* Room for store_id_text's output: 64 bytes of id, each up to 4 characters,
 * "..." and the NUL. */
#define STORE_ID_TEXT 300

/* The on-disk integers are little-endian whatever the host, read bytewise
 * so that no field needs alignment (compilers make these single loads on
 * little-endian hosts). */
static inline uint32_t store_le16(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}

static inline uint32_t store_le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

static inline uint64_t store_le64(const uint8_t *p) {
  return (uint64_t)store_le32(p) | (uint64_t)store_le32(p + 4) << 32;
}

static inline void store_put_le16(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static inline void store_put_le32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

static inline void store_put_le64(uint8_t *p, uint64_t v) {
  store_put_le32(p, (uint32_t)v);
  store_put_le32(p + 4, (uint32_t)(v >> 32));
}

/* Renders an id for a message into `out` and returns it: printable ASCII
 * as is, other bytes as \xHH, cut after 64 input bytes. */
const char *store_id_text(char out[STORE_ID_TEXT], const char *id, size_t len);

/* What the store itself needs of a key: 1 to LABELMAP_MAX_ID_LEN bytes, no
 * NUL. Returns 0 or LMAP_EBADID naming the id. The pattern of an image id
 * (labelmap_id_check) is checked where ids come in (import, the API, the
 * CLI): the store is a map of byte keys and does not depend on it. */
int store_check_id(const char *id, size_t len, diag *d);

/* Sets `code` with "<what>: <LMDB's message for err>"; returns `code`. */
int store_lmdb_fail(diag *d, int code, const char *what, int err);

/* Reads exactly `n` bytes at `off` of `fd` (retrying short reads and
 * EINTR). Returns 0, or -1 with errno set, errno 0 when the file ends
 * first. */
int store_pread_full(int fd, void *buf, size_t n, uint64_t off);

/* The diag for a failed store_pread_full of `what`: LMAP_EBADSTORE when
 * the file ended first (it was cut meanwhile), LMAP_EIO with the cause
 * otherwise. */
int store_read_fail(diag *d, const char *what);

#endif /* LMAP_STORE_COMMON_H */
