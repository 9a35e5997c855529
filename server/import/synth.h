/*
 * synth: realistic synthetic label maps, for demos, tests and benchmarks.
 *
 * Each image holds 1-3 objects drawn as spatial blobs of a main class with
 * confusable neighbouring classes (classes close in index, as ImageNet's
 * sibling synsets are), over low background noise, with logits on the scale
 * of a real classifier's (top-1 around 8-16, tail around -2..3). Ids look
 * like ImageNet's ("n01440764_10026": a synset-style folder id of the main
 * class and an image number). Output is deterministic in (seed, index), so
 * threads can generate disjoint index ranges independently.
 * Pure: no I/O, no allocation.
 */
#ifndef LMAP_SYNTH_H
#define LMAP_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "core/diag.h"
#include "core/labelmap.h"

typedef struct synth_params {
  uint32_t num_classes; /* C, >= k */
  uint32_t h, w, k;
  uint64_t seed;
} synth_params;

/* Checks the parameters (k <= num_classes, sizes within LABELMAP_MAX_*).
 * Returns 0 or LMAP_EINVAL naming the parameter. */
int synth_check(const synth_params *p, diag *d);

/* Generates image `index`: writes its NUL-terminated id (at most 64 bytes
 * including the NUL) to `id` and its map to `out`, whose k/h/w the function
 * sets and whose arrays the caller sized for k*h*w entries. Within a cell
 * the K entries are distinct classes in decreasing score order. */
void synth_image(const synth_params *p, uint64_t index, char id[64],
                 labelmap *out);

/* A synset-style folder name for class `c` ("n%08u"-like, distinct for
 * distinct classes), NUL-terminated into `buf` (>= 16 bytes). */
void synth_class_wnid(uint64_t seed, uint32_t c, char buf[16]);

#endif /* LMAP_SYNTH_H */
