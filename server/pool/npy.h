/*
 * npy: NumPy .npy (format 1.0) headers for little-endian float32 arrays,
 * so answers and exports load with numpy.load() unchanged.
 */
#ifndef LMAP_NPY_H
#define LMAP_NPY_H

#include <stddef.h>

#include "shared/dynbuf.h"

#define NPY_MAX_DIMS 8

/* Appends the header of a C-order '<f4' array of `ndim` dims to `b`; the
 * caller appends prod(shape) floats after it. The header is padded so the
 * data starts 64-byte aligned. Returns 0, LMAP_EINVAL or a dynbuf error. */
int npy_header_f32(dynbuf *b, const size_t *shape, int ndim);

/* The length of the header npy_header_f32 appends for `shape` (a multiple
 * of 64), or 0 when ndim is out of range. */
size_t npy_header_len(const size_t *shape, int ndim);

#endif /* LMAP_NPY_H */
