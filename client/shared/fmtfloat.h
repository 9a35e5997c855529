/*
 * fmtfloat: float32 to text, exactly as printf("%.9g") writes it (9
 * significant digits: enough for every float32 to read back bit for bit),
 * about ten times faster. A dense JSON item prints C = 1000 numbers, and
 * glibc's exact multi-precision printf made that 150 us per item; liblmap
 * writes every box of a request with it. Shared by lmap_core and liblmap
 * (client/shared/README.md).
 */
#ifndef LMAP_FMTFLOAT_H
#define LMAP_FMTFLOAT_H

#define FMTFLOAT_MAX 24 /* "-1.23456789e-45" and room to spare */

/* Writes `v` (finite) as "%.9g" would, without a terminating NUL, and
 * returns the length. */
int lmap_fmtfloat9(char out[FMTFLOAT_MAX], float v);

#endif /* LMAP_FMTFLOAT_H */
