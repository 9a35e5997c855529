/*
 * store: the LMDB file that holds one label-map dataset, the contract of the
 * store layer (server/store/README.md) to the layers above it. The layer is
 * the only one that includes lmdb.h.
 *
 * A store is a single LMDB file (MDB_NOSUBDIR) with two named databases:
 * "meta" (the metadata JSON, the zstd dictionary, optional class names, the
 * chunk layout) and "maps", which holds the records in chunks: each value
 * packs up to a few hundred consecutive records (in id order) behind a small
 * directory, keyed by its first id (chunk.h). LMDB stores one value per
 * B-tree node, and a 2 KB record alone would leave half of every 4 KiB page
 * empty; a chunk fills its pages. Stores are written once by a store_writer
 * (writer.c) into a temporary file that is renamed into place on commit, and
 * opened read-only (store.c; MDB_NOLOCK, so the reader table never limits
 * concurrency) for serving. See docs/STORE_FORMAT.md.
 *
 * Opening checks, before any page of the map is touched, that the file is
 * an LMDB file at least as long as its own header claims and that every
 * page matches the checksum trailer (pagecheck.h): LMDB maps the file, and
 * reading past the end of a truncated file would raise SIGBUS. Chunks are
 * checked when read: every directory field is bounds-checked and the
 * directory carries a checksum, so a damaged chunk is LMAP_ECORRUPT, never
 * a read outside the value.
 *
 * A file cut while open (truncated, or overwritten in place by `cp`) raises
 * SIGBUS where a read touches a page past its new end. store_open installs
 * a process-wide SIGBUS handler (once); every read of the mapping here
 * (store_open's metadata, store_reader_get, store_reader_decode,
 * store_foreach and its visitor) runs under a per-thread recovery point,
 * so such a read fails with LMAP_EBADSTORE ("the store file was truncated
 * while being read") instead of killing the process. A SIGBUS anywhere else
 * goes to the action installed before (by default: the process dies).
 */
#ifndef LMAP_STORE_H
#define LMAP_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "core/diag.h"
#include "core/labelmap.h"

#include <jansson.h>

#define STORE_FORMAT_VERSION 2
/* Pages per checksummed block in the trailers this lmap writes (readers
 * take the number from the trailer). */
#define STORE_PAGES_PER_BLOCK 16u
/* The largest record store_writer_put accepts (the largest codec record,
 * 2^22 entries of f32, is about 40 MB). */
#define STORE_MAX_RECORD_LEN (1u << 30)

/* The metadata fields lmap itself relies on, parsed from the meta JSON,
 * plus the chunk count from the layout entry. */
typedef struct store_meta {
  uint32_t format_version;
  codec_shape shape; /* k, h, w, num_classes, encoding */
  uint64_t record_count;
  int has_class_names;
  uint64_t chunk_count; /* values in the "maps" database */
  int page_check;       /* STORE_PAGES_*: what store_open checked */
} store_meta;

/* store_meta.page_check */
#define STORE_PAGES_CHECKED 0      /* every page against its checksum */
#define STORE_PAGES_TRAILER_ONLY 1 /* STORE_OPEN_NO_PAGE_CHECK: the trailer */
#define STORE_PAGES_NONE 2 /* no trailer (an older store), opened unchecked */

typedef struct store store;

/* Opens the store at `path` read-only. Before LMDB maps anything, checks
 * with pread() the checksum trailer and every page against it
 * (docs/STORE_FORMAT.md §7.1): reads the whole file once (about 0.5 s per
 * GB in the page cache, at disk speed otherwise), so that no damaged page
 * ever reaches LMDB. On failure *out is NULL and `d` names the file and the
 * reason (missing, not an LMDB file, truncated, page damage naming the
 * block, its pages and byte offsets, damaged trailer, no page checksums,
 * no lmap metadata, unsupported version, inconsistent counts). Reads no
 * chunk through LMDB. Returns 0, LMAP_EIO, LMAP_EBADSTORE, LMAP_EVERSION or
 * LMAP_ENOMEM. */
int store_open(const char *path, store **out, diag *d);

/* Flags of store_open_flags. */
/* Skips the check of every page against its checksum (the trailer's own
 * checksum and its agreement with LMDB's header are still checked), and
 * accepts a store without a trailer (written before page checksums). LMDB
 * then trusts the pages: a damaged branch or leaf page can crash the
 * process. For stores too large to read at every open, checked otherwise
 * (store_check_file, `lmap verify`). */
#define STORE_OPEN_NO_PAGE_CHECK 1u

/* store_open with flags (store_open is store_open_flags(path, 0, ...)). */
int store_open_flags(const char *path, unsigned flags, store **out, diag *d);

/* Called by store_check_file for each damaged block: its number, its first
 * page and page count, its byte offset and length in the file. */
typedef void (*store_bad_block_fn)(void *ctx, uint64_t block,
                                   uint64_t first_page, uint64_t pages,
                                   uint64_t offset, uint64_t len);

/* Checks the store file at `path` without opening it with LMDB (for `lmap
 * verify`, and for a download before it is renamed into place): the
 * trailer, every block of pages (all of them: `bad`, when not NULL, hears
 * of each damaged one), LMDB's header and that the trailer covers exactly
 * its pages. Returns 0, LMAP_EBADSTORE (`d` names the file, the first
 * damaged block with its pages and byte offsets, and the number of damaged
 * blocks; or no/damaged/truncated trailer, or a store without page
 * checksums), LMAP_EIO or LMAP_ENOMEM. Never maps the file: a file cut
 * meanwhile is an error, not SIGBUS. Thread-safe. */
int store_check_file(const char *path, store_bad_block_fn bad, void *ctx,
                     diag *d);

/* Accepts NULL. Every reader of the store must have been freed. */
void store_close(store *s);

/* Borrowed, valid until store_close. */
const store_meta *store_get_meta(const store *s);

/* The metadata document as JSON text (NUL-terminated), borrowed, valid
 * until store_close. */
const char *store_meta_json(const store *s);

/* The metadata document ("lmap.meta", docs/STORE_FORMAT.md), owned here:
 * a new object with the keys a store needs to be read (format,
 * format_version, grid_h, grid_w, topk, num_classes, encoding,
 * record_count, class_names), to which the writer adds its provenance
 * keys. NULL when out of memory. */
json_t *store_meta_document(const codec_shape *shape, uint64_t records,
                            int class_names);

/* What `lmap info --json` and GET /v1/info show: the metadata document and
 * "file_bytes", the file's size now. A new object, or NULL when out of
 * memory. */
json_t *store_info(const store *s);

/* Class names as a JSON array text, or NULL when the store has none.
 * Borrowed, valid until store_close. */
const char *store_class_names_json(const store *s);

/* The class names as num_classes strings, or NULL when the store has none.
 * Borrowed, valid until store_close. */
const char *const *store_class_names(const store *s);

/* A short name of the store's bytes, borrowed until store_close: 16 hex
 * digits of the checksum of its checksum trailer, which covers every page,
 * so every copy of the same file has the same id and any other file another
 * (lmapd's ETag for GET /v1/store and its X-Lmap-Store header). A store
 * without a trailer (opened with STORE_OPEN_NO_PAGE_CHECK) gets "m" and 15
 * hex digits of its metadata and size instead, which names it less
 * surely. */
const char *store_id(const store *s);

/* A new descriptor of the open store file (close-on-exec; the caller
 * closes it), for sending the file itself: it stays the file that was
 * opened even after another is renamed over its path. -1 with errno set
 * when none can be had. */
int store_dup_fd(const store *s);

/* Lets go of the pages of the mapping that this process has touched (they
 * stay in the page cache): after a walk of every record (the resident
 * arena's build) they would otherwise count in lmapd's resident memory. A
 * later read maps its pages again. Thread-safe. */
void store_release_pages(store *s);

/* Size of the store file in bytes. */
uint64_t store_file_size(const store *s);

/* Checks that the open store file is still the file that was opened: the
 * same size and modification time (a `cp` over the served file, or a
 * truncation, changes them; installing a new store by rename() does not
 * touch the open file). One fstat(), cheap enough for a timer.
 * Returns 0, or LMAP_EBADSTORE with `d` naming the change. Thread-safe. */
int store_file_check(const store *s, diag *d);

/* A reader owns one read transaction and cursor (kept for its life), a
 * codec context and the decode buffers. Not thread-safe: one per thread. */
typedef struct store_reader store_reader;

int store_reader_new(store *s, store_reader **out, diag *d);
void store_reader_free(store_reader *r); /* accepts NULL */

/* Looks up `id` and decodes it. `*out` points into reader-owned arrays,
 * valid until the next call on this reader or its free.
 * Returns 0, LMAP_ENOTFOUND, LMAP_EBADID (empty, too long, or holding a
 * NUL), LMAP_ECORRUPT (the record or its chunk is damaged), LMAP_EBADSTORE
 * (the file was truncated under the reader: the message names the file and
 * both sizes) or LMAP_EIO. After any failure the reader stays usable: a
 * later call first rebuilds its transaction, cursor and codec context, and
 * serves again once the file is whole. */
int store_reader_get(store_reader *r, const char *id, size_t id_len,
                     labelmap *out, diag *d);

/* Calls `fn` with the store's ids in id order (store_key_cmp) that start
 * with `prefix` and sort after `after` (all of them when after_len is 0),
 * at most `limit` of them; *more is set when another such id follows the
 * last one given (a page of ids: the next page is after that id). Reads
 * chunk directories, never a record: one seek, then the chunks in order
 * until the prefix is passed. `id` is borrowed for the call; a non-zero
 * return from `fn` stops the walk and is returned. Otherwise returns 0,
 * LMAP_ECORRUPT (a damaged chunk, named), LMAP_EBADSTORE (the file was
 * cut) or LMAP_EIO; the reader stays usable as after store_reader_get. */
typedef int (*store_id_fn)(void *ctx, const char *id, size_t id_len);
int store_reader_ids(store_reader *r, const char *prefix, size_t prefix_len,
                     const char *after, size_t after_len, size_t limit,
                     store_id_fn fn, void *ctx, int *more, diag *d);

/* Calls `fn` for every record in id order inside one read transaction,
 * checking each chunk in full first (structure, directory checksum, ids
 * valid and strictly increasing across the whole store, first id equal to
 * the chunk's key). `id` and `rec` are borrowed for the duration of the
 * call. A non-zero return from `fn` stops the walk and is returned; a
 * damaged chunk stops it with LMAP_ECORRUPT naming the chunk, a file
 * truncated during the walk with LMAP_EBADSTORE (`fn` is then abandoned
 * where it touched the cut region: it must hold no lock or allocation it
 * cannot lose). Records are not decoded (see store_reader_decode). */
typedef int (*store_visit_fn)(void *ctx, const char *id, size_t id_len,
                              const uint8_t *rec, size_t rec_len);
int store_foreach(store *s, store_visit_fn fn, void *ctx, diag *d);

/* A walk of every record in id order, pulled one at a time (an importer
 * reading a store as a source), with store_foreach's checks: each chunk in
 * full before its first record, ids strictly increasing, the chunk count.
 * One read transaction for the iterator's life; not thread-safe. */
typedef struct store_iter store_iter;
int store_iter_new(store *s, store_iter **out, diag *d);
/* The next record: 1 with *id (NUL-terminated) and *rec (a copy, not the
 * mapping) valid until the next call or store_iter_free; 0 at the end; or
 * LMAP_ECORRUPT (a damaged chunk, named), LMAP_EBADSTORE (the file was cut)
 * or LMAP_EIO, after which it stays ended. */
int store_iter_next(store_iter *it, const char **id, const uint8_t **rec,
                    size_t *rec_len, diag *d);
void store_iter_free(store_iter *it); /* accepts NULL */

/* Decodes one record with the store's shape and dictionary using the
 * reader's codec context (for verify). `rec` may point into the store's
 * mapping (store_foreach): a SIGBUS while reading it is LMAP_EBADSTORE. */
int store_reader_decode(store_reader *r, const uint8_t *rec, size_t len,
                        labelmap *out, diag *d);

/* ---- writing (writer.c: linked by the import layer, not by lmapd) ---- */

/* Writes a copy of the store `src`, which has no checksum trailer (written
 * by an lmap before page checksums), to `dst` with one: LMDB's pages byte
 * for byte, then the trailer (docs/STORE_FORMAT.md §7.1). It checksums the
 * pages as they are: check the store first (open it with
 * STORE_OPEN_NO_PAGE_CHECK and walk and decode it, as `lmap verify
 * --add-checksums` does). `dst` appears only when complete (a temporary
 * file beside it, renamed or linked into place); with `overwrite` it may
 * be `src` itself, and readers of `src` keep the old file. Returns 0,
 * LMAP_EINVAL (`src` already has a trailer), LMAP_EBADSTORE (not an LMDB
 * file, cut, or a damaged trailer), LMAP_EEXIST (`dst` exists and not
 * `overwrite`), LMAP_EIO (naming the file and the cause) or LMAP_ENOMEM. */
int store_add_checksums(const char *src, const char *dst, int overwrite,
                        diag *d);

typedef struct store_writer store_writer;

/* Starts a new store that will appear at `path` only on commit. Records go
 * to an append-only spill file beside it, `<path>.tmp.<host>.<pid>.<n>`
 * (unlinked at once, used through its descriptor), created here (so an
 * unwritable directory fails now). First removes the temporary files of
 * `path` that writers on this host left when they were killed: only files
 * named exactly `<path>.tmp.<this host>.<pid>.<n>`, regular, owned by this
 * user, whose pid is no live process here. Fails with LMAP_EEXIST if
 * `path` exists and `overwrite` is 0. Not thread-safe: one thread uses a
 * writer. */
int store_writer_open(const char *path, int overwrite, store_writer **out,
                      diag *d);

/* Adds one record (copied to the spill file; the writer keeps the id, the
 * offset and the length in memory, about 60 bytes per record for
 * ImageNet-length ids). Ids may arrive in any order. Returns 0, LMAP_EEXIST
 * (duplicate id, named; the writer stays usable), LMAP_EBADID (empty,
 * longer than LABELMAP_MAX_ID_LEN, or holding a NUL), LMAP_EINVAL (empty
 * record), LMAP_ETOOBIG (record above STORE_MAX_RECORD_LEN, or more records
 * than a writer indexes: about 2^31), LMAP_ENOMEM (the writer stays usable)
 * or LMAP_EIO (the spill file could not be written: the writer is then
 * failed, every later call fails and commit removes the files). */
int store_writer_put(store_writer *w, const char *id, size_t id_len,
                     const uint8_t *rec, size_t rec_len, diag *d);

/* Sets a metadata entry ("lmap.meta", "lmap.dict", "lmap.classes"; the
 * bytes are copied; a later call for the same key replaces the value).
 * Returns 0, LMAP_EINVAL (unknown key), LMAP_ETOOBIG (above what readers
 * accept: 1 MiB, 16 MiB, 512 MiB) or LMAP_ENOMEM. "lmap.layout" is the
 * writer's own. */
int store_writer_put_meta(store_writer *w, const char *key, const void *val,
                          size_t len, diag *d);

/* Number of records put so far. */
uint64_t store_writer_count(const store_writer *w);

/* Sorts the records by id, packs them into chunks in a fresh LMDB file
 * beside the target (appended in key order, so every page is full), writes
 * the metadata and the layout entry, appends the page checksums, syncs,
 * and renames the file into place; removes the spill file and frees `w`.
 * Budget disk space for the spill file plus the store (about twice the
 * store's size) until it returns. Returns LMAP_EEXIST if the path appeared
 * meanwhile and `overwrite` was 0, LMAP_EIO naming the file and the cause
 * (a full disk is "No space left on device", though LMDB reports its short
 * write as EIO). On failure every temporary file is removed and `w` freed
 * too. */
int store_writer_commit(store_writer *w, diag *d);

/* Removes the temporary files and frees `w`. Accepts NULL. */
void store_writer_abort(store_writer *w);

/* Removes the temporary files of every store this process is writing.
 * Async-signal-safe: meant for a SIGINT/SIGTERM handler, after which the
 * process exits (the writers are left unusable). */
void store_remove_temp_files(void);

#endif /* LMAP_STORE_H */
