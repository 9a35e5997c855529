/*
 * f16: IEEE 754 binary16 and bfloat16 conversions (round to nearest even),
 * used by the .pt reader and the f16 score encoding. Pure, header-only.
 */
#ifndef LMAP_F16_H
#define LMAP_F16_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else { /* subnormal: normalise */
      exp = 127 - 15 + 1;
      while ((man & 0x400u) == 0) {
        man <<= 1;
        exp--;
      }
      man &= 0x3ffu;
      bits = sign | (exp << 23) | (man << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* f16_to_f32 for a finite value, without branches: the binary16 bits
 * shifted into a float32's exponent and mantissa fields give the value
 * times 2^-112 (normal and subnormal alike, since binary16's subnormals
 * are float32 normals), and the power-of-two product is exact. For the
 * resident arena's scores, which are finite by the store's checks. */
static inline float f16_finite_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)(h & 0x7fffu) << 13;
  float f;
  memcpy(&f, &bits, sizeof f);
  f *= 0x1p112f;
  memcpy(&bits, &f, sizeof bits);
  bits |= (uint32_t)(h & 0x8000u) << 16;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* The binary16 bits of `f`, which must be a finite value that binary16
 * holds exactly (an f16 store's decoded score): the inverse of
 * f16_finite_to_f32, without rounding or branches. */
static inline uint16_t f16_exact_from_f32(float f) {
  uint32_t bits;
  memcpy(&bits, &f, sizeof bits);
  uint32_t sign = (bits >> 16) & 0x8000u;
  float mag = fabsf(f) * 0x1p-112f;
  memcpy(&bits, &mag, sizeof bits);
  return (uint16_t)(sign | (bits >> 13));
}

static inline uint16_t f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t exp = (x >> 23) & 0xffu;
  uint32_t man = x & 0x7fffffu;
  if (exp == 0xff) /* inf or nan */
    return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0));
  int e = (int)exp - 127 + 15;
  if (e >= 0x1f)
    return (uint16_t)(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10)
      return (uint16_t)sign;
    man |= 0x800000u;
    uint32_t shift = (uint32_t)(14 - e);
    uint32_t half = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u)))
      half++;
    return (uint16_t)(sign | half);
  }
  uint32_t half = sign | ((uint32_t)e << 10) | (man >> 13);
  uint32_t rem = man & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u)))
    half++; /* may carry into the exponent, which is still correct */
  return (uint16_t)half;
}

static inline float bf16_to_f32(uint16_t b) {
  uint32_t bits = (uint32_t)b << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

#endif /* LMAP_F16_H */
