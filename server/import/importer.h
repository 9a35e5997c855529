/*
 * importer: `lmap import`'s sources. Reads the official release's layout
 * (a directory tree of .pt files, or a tar of them, or a tar on stdin) and
 * feeds each file through ptfile into the build pipeline; or the records of
 * lmap stores, to merge them. The image id is
 * the file name without ".pt" (the ImageNet stem).
 */
#ifndef LMAP_IMPORTER_H
#define LMAP_IMPORTER_H

#include "build.h"

/* Largest .pt file accepted (a [2,5,15,15] float32 file is about 10 KiB). */
#define IMPORTER_MAX_FILE (64u << 20)

/* Imports the `n` sources `srcs`, one after the other, into the store
 * described by `o`. A source is "-" (a tar on stdin), a directory tree of
 * .pt files, an lmap store (its records decoded and encoded again: every
 * store has its own dictionary), or otherwise a tar file, optionally
 * compressed. An id in two sources fails the import, naming it.
 * Returns 0 or a negative code with `d` naming the file and the reason. */
int importer_run(const char *const *srcs, size_t n, const build_opts *o,
                 build_stats *st, diag *d);

/* Whether `path` is an lmap store (an LMDB file) rather than a tar. */
int importer_is_store(const char *path);

/* The class count and the class names (JSON array text, malloc'ed, or NULL
 * when it has none) of the store at `path`. */
int importer_store_classes(const char *path, uint32_t *num_classes,
                           char **names_json, diag *d);

/* Reads a class-name file: one name per line (e.g. "n01440764 tench"), or a
 * JSON array of strings. Returns the names as JSON array text (malloc'ed,
 * caller frees) and their count. */
int importer_read_classes(const char *path, char **json_out, uint32_t *count,
                          diag *d);

#endif /* LMAP_IMPORTER_H */
