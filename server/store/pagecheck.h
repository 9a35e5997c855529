/*
 * pagecheck: what is proved about a store file with pread() before LMDB
 * maps it (private to server/store; docs/STORE_FORMAT.md §7.1). LMDB's
 * header (the meta pages lmdb.h does not export: is it an LMDB file, how
 * long must it be) and the page-checksum trailer the writer appends past
 * LMDB's last page: read, checked against every block of pages, and
 * written. Never maps the file, so a file cut meanwhile is an error, never
 * SIGBUS. Implements store_check_file (store.h).
 */
#ifndef LMAP_STORE_PAGECHECK_H
#define LMAP_STORE_PAGECHECK_H

#include <stdint.h>

#include "core/diag.h"

/* Refuses a file of `size` bytes shorter than pages 0..last_pg of `psize`
 * bytes each (or a header claiming more pages than 64 bits count).
 * Returns 0 or LMAP_EBADSTORE naming both sizes. */
int pagecheck_size(uint64_t size, uint64_t last_pg, uint64_t psize, diag *d);

/* Checks that the open file `fd` of `size` bytes is an LMDB file whose
 * newest meta page fits in it; sets its page size and page count (both
 * meta pages at least). Returns 0 or LMAP_EBADSTORE with the reason (not
 * an LMDB file, unsupported LMDB data version, truncated, corrupt). */
int pagecheck_lmdb_header(int fd, uint64_t size, uint32_t *psize,
                          uint64_t *npages, diag *d);

/* Everything store_open proves with pread() before LMDB maps the file of
 * `size` bytes: the trailer and its own checksum, every block of pages
 * (unless STORE_OPEN_NO_PAGE_CHECK in `flags`), LMDB's meta pages and the
 * file's length, and that the trailer covers exactly LMDB's pages. A file
 * with no trailer is a store written before page checksums if it ends
 * where LMDB's pages end (accepted only with STORE_OPEN_NO_PAGE_CHECK), and
 * a store cut in its trailer otherwise. Sets *state to a STORE_PAGES_*
 * value, and *trailer_sum (when not NULL) to the trailer's own checksum,
 * which covers every page and so names the file's bytes (0 without a
 * trailer). Returns 0, LMAP_EBADSTORE naming the problem, LMAP_EIO or
 * LMAP_ENOMEM. */
int pagecheck_file(int fd, uint64_t size, unsigned flags, int *state,
                   uint64_t *trailer_sum, diag *d);

/* Appends the checksum trailer to `fd` (named `name` in messages), whose
 * LMDB pages of `psize` bytes end at `pages_end`: reads the pages back and
 * checksums each block of STORE_PAGES_PER_BLOCK pages. Returns 0, LMAP_EIO
 * naming the file and the cause, or LMAP_ENOMEM. */
int pagecheck_append_trailer(const char *name, int fd, uint64_t pages_end,
                             uint32_t psize, diag *d);

#endif /* LMAP_STORE_PAGECHECK_H */
