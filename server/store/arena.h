/*
 * arena: every record of a store decoded once into memory, for lmapd
 * --resident. A lookup is then a hash probe and a pointer: no LMDB read,
 * no zstd, no untransform per request.
 *
 * Layout (one anonymous mapping, immutable once built): the scores of all
 * records, then their classes, each record's entries cell-major as in a
 * labelmap, in the compact form labelmap.h describes. Scores are kept as
 * binary16 when the store's encoding is f16 (exactly what it stores; an
 * f32 store keeps float32), classes as 16 bits when the store has at most
 * 65,536 classes. The 1,281,167 ImageNet maps at top-5, 15x15, f16 take
 * 5.8 GB. Beside them: the ids in id order and an open-addressing hash
 * table over them (xxHash), about 40 bytes per record.
 *
 * Building walks the store once on the calling thread (checking every
 * chunk as store_foreach does), then decodes the records on `threads`
 * threads, each with its own reader. Before it asks for the memory it
 * compares the need with what the process can have (core/meminfo.h) and
 * refuses with LMAP_ENOMEM naming both figures, so that an arena too large
 * for the machine is an error, not a process killed halfway.
 *
 * An arena does not refer to its store once built: it may outlive it.
 * Reading one is thread-safe without locks.
 */
#ifndef LMAP_ARENA_H
#define LMAP_ARENA_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/diag.h"
#include "core/labelmap.h"
#include "store.h"

typedef struct arena arena;

/* A build's progress, shared with other threads while it runs; arena_build
 * resets it when it starts. */
typedef struct arena_progress {
  _Atomic uint64_t done;  /* records decoded so far */
  _Atomic uint64_t total; /* records to decode (set when the build starts) */
  atomic_int cancel;      /* set by another thread to stop the build */
} arena_progress;

/* The bytes an arena of store `s` needs (records, ids and index), from its
 * metadata; the ids' share is estimated at 32 bytes each. */
uint64_t arena_need(const store *s);

/* Whether the memory the process can still take holds an arena of `s`
 * (arena_need against core/meminfo.h's mem_available). Returns 0, or
 * LMAP_ENOMEM with `d` naming the need, what is available and by which
 * bound. arena_build checks this first; lmapd checks it before it listens,
 * so that a replica too small refuses to start at once. */
int arena_check_memory(const store *s, diag *d);

/* Decodes every record of `s` into a new arena on `threads` threads (0: one
 * per online CPU). `progress` may be NULL; when given, its `done` counts the
 * decoded records and a non-zero `cancel` stops the build. The store is
 * only read; the pages of its mapping that the walk touched are released
 * at the end (store_release_pages). Returns 0, LMAP_ENOMEM (the memory
 * cannot be had: `d` names the need, what is available and by which bound),
 * LMAP_ECORRUPT or LMAP_EBADSTORE (a damaged chunk or record, named),
 * LMAP_EIO, or LMAP_EUNAVAILABLE (cancelled). *out is NULL on failure. */
int arena_build(store *s, unsigned threads, arena_progress *progress,
                arena **out, diag *d);

/* Looks up `id` (`len` bytes). Fills `out` with views into the arena (valid
 * until arena_free) and returns 0, or returns LMAP_ENOTFOUND. */
int arena_find(const arena *a, const char *id, size_t len, labelmap *out);

uint64_t arena_records(const arena *a);
uint64_t arena_bytes(const arena *a); /* memory held, mapping and index */
double arena_build_seconds(const arena *a);
double arena_walk_seconds(const arena *a); /* of which the walk, one thread */
unsigned arena_build_threads(const arena *a);

void arena_free(arena *a); /* accepts NULL */

#endif /* LMAP_ARENA_H */
