/*
 * ptfile: reads one label map written by torch.save() from memory.
 *
 * Both of torch's serialization formats are read: the zip one (torch >= 1.6
 * default; a stored zip holding data.pkl and data/<key>) and the legacy one
 * (magic-number pickle, protocol pickle, sys-info pickle, the object pickle,
 * the storage-key list, then each storage's raw bytes). The object must be a
 * tensor of shape [2, K, H, W] with dtype float32, float16, bfloat16 or
 * float64 (converted to float32; a score beyond its range is refused), any
 * strides and storage offset inside its storage; plane 0 holds scores and
 * plane 1 class indices stored as floats.
 *
 * Only the small pickle subset torch writes for a tensor is interpreted; any
 * other opcode or global is refused by name, never executed. Every length
 * and index read from the input is bounds-checked against the input.
 */
#ifndef LMAP_PTFILE_H
#define LMAP_PTFILE_H

#include <stddef.h>
#include <stdint.h>

#include "core/diag.h"
#include "core/labelmap.h"

/* Output of a parse: the map (cell-major, see labelmap.h) plus facts about
 * the source tensor. The arrays are owned by the ptfile_out and reused (and
 * grown up to the LABELMAP_MAX_* caps) across parses; free with
 * ptfile_out_free. Zero-initialise before first use. */
typedef struct ptfile_out {
  labelmap map;
  size_t cap;     /* entries the arrays can hold */
  char dtype[16]; /* "float32", "float16", "bfloat16" or "float64" */
  int legacy;     /* 1 if the legacy (non-zip) format was read */
  int contiguous; /* 1 if the source strides were the contiguous ones */
} ptfile_out;

/* Parses `len` bytes at `buf`. Validates the shape ([2, K, H, W] within the
 * LABELMAP_MAX_* bounds), that every score is finite and that every class
 * index is finite, integral and in [0, LABELMAP_MAX_CLASSES); the caller
 * checks it against the store's class count. On failure `out->map` is
 * unspecified and `d` says what is wrong, e.g. "tensor has shape [2,5,15]
 * (expected [2, K, H, W])", "score at [0,1,3,4] is NaN", "class index 2.5
 * at [1,0,0,0] is not an integer", "pickle opcode 0x93 (STACK_GLOBAL) is
 * not supported", "zip entry 'archive/data/0' is truncated".
 * Returns 0, LMAP_EFORMAT (malformed or unsupported input), LMAP_ERANGE
 * (non-finite score, bad class index) or LMAP_ENOMEM. */
int ptfile_parse(const uint8_t *buf, size_t len, ptfile_out *out, diag *d);

void ptfile_out_free(ptfile_out *out);

#endif /* LMAP_PTFILE_H */
