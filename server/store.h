/*
 * store: the LMDB file that holds one label-map dataset. The only module
 * that includes lmdb.h.
 *
 * A store is a single LMDB file (MDB_NOSUBDIR) with two named databases:
 * "meta" (the metadata JSON, the zstd dictionary, optional class names) and
 * "maps" (image id -> codec record). Stores are written once by a
 * store_writer into a temporary file that is renamed into place on commit,
 * and opened read-only (MDB_NOLOCK, so the reader table never limits
 * concurrency) for serving. See docs/STORE_FORMAT.md.
 *
 * Opening checks, before any page of the map is touched, that the file is
 * an LMDB file at least as long as its own header claims: LMDB maps the
 * file, and reading past the end of a truncated file would raise SIGBUS.
 */
#ifndef LMAP_STORE_H
#define LMAP_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "diag.h"
#include "labelmap.h"

#define STORE_FORMAT_VERSION 1
#define STORE_MAX_ID_LEN 255

/* The metadata fields lmap itself relies on, parsed from the meta JSON. */
typedef struct store_meta {
  uint32_t format_version;
  codec_shape shape; /* k, h, w, num_classes, encoding */
  uint64_t record_count;
  int has_class_names;
} store_meta;

typedef struct store store;

/* Opens the store at `path` read-only. On failure *out is NULL and `d` names
 * the file and the reason (missing, not an LMDB file, truncated, no lmap
 * metadata, unsupported version, inconsistent counts).
 * Returns 0, LMAP_EIO, LMAP_EBADSTORE, LMAP_EVERSION or LMAP_ENOMEM. */
int store_open(const char *path, store **out, diag *d);

/* Accepts NULL. Every reader of the store must have been freed. */
void store_close(store *s);

/* Borrowed, valid until store_close. */
const store_meta *store_get_meta(const store *s);

/* The metadata document as JSON text (NUL-terminated), borrowed, valid
 * until store_close. */
const char *store_meta_json(const store *s);

/* Class names as a JSON array text, or NULL when the store has none.
 * Borrowed, valid until store_close. */
const char *store_class_names_json(const store *s);

/* Size of the store file in bytes. */
uint64_t store_file_size(const store *s);

/* A reader owns one read transaction, a codec context and the decode
 * buffers. Not thread-safe: one per thread. */
typedef struct store_reader store_reader;

int store_reader_new(store *s, store_reader **out, diag *d);
void store_reader_free(store_reader *r); /* accepts NULL */

/* Looks up `id` and decodes it. `*out` points into reader-owned arrays,
 * valid until the next call on this reader or its free.
 * Returns 0, LMAP_ENOTFOUND, LMAP_EBADID (empty, too long, or holding a
 * NUL), LMAP_ECORRUPT or LMAP_EIO. */
int store_reader_get(store_reader *r, const char *id, size_t id_len,
                     labelmap *out, diag *d);

/* Calls `fn` for every record in key order inside one read transaction.
 * `id` and `rec` are borrowed for the duration of the call. A non-zero
 * return from `fn` stops the walk and is returned. */
typedef int (*store_visit_fn)(void *ctx, const char *id, size_t id_len,
                              const uint8_t *rec, size_t rec_len);
int store_foreach(store *s, store_visit_fn fn, void *ctx, diag *d);

/* Decodes one record with the store's shape and dictionary using the
 * reader's codec context (for verify). */
int store_reader_decode(store_reader *r, const uint8_t *rec, size_t len,
                        labelmap *out, diag *d);

/* ---- writing ---- */

typedef struct store_writer store_writer;

/* Starts a new store that will appear at `path` only on commit (it is built
 * in a temporary file beside it). Fails with LMAP_EEXIST if `path` exists
 * and `overwrite` is 0. */
int store_writer_open(const char *path, int overwrite, store_writer **out,
                      diag *d);

/* Adds one record. Returns 0, LMAP_EEXIST (duplicate id; the writer stays
 * usable), LMAP_EBADID (empty, longer than STORE_MAX_ID_LEN, or holding a
 * NUL), LMAP_EINVAL (empty record), LMAP_EIO (the writer is then failed:
 * every later call fails and commit removes the file). Ids in increasing
 * order load fastest; any order is fine. */
int store_writer_put(store_writer *w, const char *id, size_t id_len,
                     const uint8_t *rec, size_t rec_len, diag *d);

/* Sets a metadata entry ("lmap.meta", "lmap.dict", "lmap.classes"). */
int store_writer_put_meta(store_writer *w, const char *key, const void *val,
                          size_t len, diag *d);

/* Number of records put so far. */
uint64_t store_writer_count(const store_writer *w);

/* Commits, syncs and renames the file into place, then frees `w`. If ids
 * arrived out of order the records are first rewritten in key order (into
 * a second temporary file: budget twice the store's size on that disk).
 * Returns LMAP_EEXIST if the path appeared meanwhile and `overwrite` was 0.
 * On failure the temporary file is removed and `w` freed too. */
int store_writer_commit(store_writer *w, diag *d);

/* Removes the temporary file and frees `w`. Accepts NULL. */
void store_writer_abort(store_writer *w);

#endif /* LMAP_STORE_H */
