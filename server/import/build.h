/*
 * build: the pipeline that turns a stream of label maps into a store.
 *
 * A source (the .pt importer, the synthetic generator) hands out items on
 * the calling thread; worker threads turn each item into a label map,
 * validate it, measure it and encode it; one writer thread puts records
 * into a store_writer. The first records are held back until the zstd
 * dictionary has been trained on them, so that a stream (a tar on stdin)
 * is read exactly once. On any failure without skip_bad, nothing is left at
 * the output path.
 */
#ifndef LMAP_BUILD_H
#define LMAP_BUILD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/diag.h"
#include "core/labelmap.h"
#include "store/codec.h"

#define BUILD_MAX_NAME 1024

/* One unit of work. `blob` (when set) is malloc'ed by the source and freed
 * by the pipeline. */
typedef struct build_item {
  char name[BUILD_MAX_NAME]; /* what messages call it: a path or member */
  char id[LABELMAP_MAX_ID_LEN + 1];
  uint8_t *blob;
  size_t len;
  uint64_t index; /* the source's own numbering (synth: image index) */
  uint64_t seq;   /* position in the input, set by the pipeline */
  char bad[320];  /* non-empty: the source already knows the item is bad */
} build_item;

typedef struct build_source {
  void *ctx;
  /* Producer thread: fills `it`; returns 1 (an item), 0 (end) or a
   * negative code with `d` set (the whole build fails: an unreadable
   * directory, a truncated tar). Items that are bad in themselves (a tar
   * member that is not a .pt) are handed out and refused by `load`. */
  int (*next)(void *ctx, build_item *it, diag *d);
  /* Worker threads: per-worker state, created and freed on that worker. */
  void *(*worker_new)(void *ctx);
  void (*worker_free)(void *wstate);
  /* Worker thread: turns `it` into `*out` (arrays owned by wstate, valid
   * until the next call). Returns 0 or a negative code with `d` set; the
   * item is then bad (skipped with skip_bad, fatal otherwise). */
  int (*load)(void *ctx, void *wstate, const build_item *it, labelmap *out,
              diag *d);
  /* Fraction of the input consumed (0..1), or a negative value if unknown.
   * Called from the producer thread. May be NULL. */
  double (*progress)(void *ctx);
} build_source;

typedef struct build_opts {
  const char *cmd;   /* "import" or "synth", for messages */
  const char *input; /* what is read, for messages ("-" = stdin) */
  const char *out;   /* store path */
  int overwrite;
  uint32_t num_classes;
  codec_encoding encoding;
  int level;   /* zstd level, codec.h; 0: CODEC_LEVEL_DEFAULT */
  int threads; /* workers; <= 0 means one per core */
  bool skip_bad;
  bool progress; /* progress line on stderr */
  const char *source_desc;
  const char *annotator;
  const char *extent;       /* "full" or "center_crop" */
  const char *classes_json; /* JSON array text of class names, or NULL */
} build_opts;

typedef struct build_stats {
  uint64_t records;
  uint64_t skipped;
  uint64_t input_bytes;
  uint64_t store_bytes;
  double seconds;
  double max_prob_error; /* of the score encoding, measured */
} build_stats;

/* Runs the pipeline. Returns 0 or a negative code with `d` naming the item
 * and the reason. Bad items under skip_bad are reported on stderr. */
int build_run(const build_opts *o, const build_source *src, build_stats *st,
              diag *d);

#endif /* LMAP_BUILD_H */
