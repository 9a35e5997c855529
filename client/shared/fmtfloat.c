/*
 * fmtfloat: printf("%.9g") for float32, fast (see fmtfloat.h).
 *
 * The value is scaled by a power of ten in double precision to a 9-digit
 * integer. A float has 24 significant bits, so the product carries at most
 * two roundings of 2^-53 relative: an absolute error below 3e-7 on a number
 * under 1e9. The rounding to an integer can only differ from the exact one
 * when the fraction is that close to one half; those rare values go to
 * snprintf, so the output is always exactly what printf writes.
 */
#include "fmtfloat.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* 10^k for k in [-31, 53], each the correctly rounded double. */
static const double pow10_table[] = {
    1e-31, 1e-30, 1e-29, 1e-28, 1e-27, 1e-26, 1e-25, 1e-24, 1e-23, 1e-22, 1e-21,
    1e-20, 1e-19, 1e-18, 1e-17, 1e-16, 1e-15, 1e-14, 1e-13, 1e-12, 1e-11, 1e-10,
    1e-9,  1e-8,  1e-7,  1e-6,  1e-5,  1e-4,  1e-3,  1e-2,  1e-1,  1e0,   1e1,
    1e2,   1e3,   1e4,   1e5,   1e6,   1e7,   1e8,   1e9,   1e10,  1e11,  1e12,
    1e13,  1e14,  1e15,  1e16,  1e17,  1e18,  1e19,  1e20,  1e21,  1e22,  1e23,
    1e24,  1e25,  1e26,  1e27,  1e28,  1e29,  1e30,  1e31,  1e32,  1e33,  1e34,
    1e35,  1e36,  1e37,  1e38,  1e39,  1e40,  1e41,  1e42,  1e43,  1e44,  1e45,
    1e46,  1e47,  1e48,  1e49,  1e50,  1e51,  1e52,  1e53};
#define POW10_MIN (-31)

static const char pairs[] =
    "00010203040506070809101112131415161718192021222324"
    "25262728293031323334353637383940414243444546474849"
    "50515253545556575859606162636465666768697071727374"
    "75767778798081828384858687888990919293949596979899";

static double pow10_of(int k) {
  return pow10_table[k - POW10_MIN];
}

/* |v| * 10^(8 - e), for |v| in [10^e, 10^(e+1)). */
static double scaled(double a, int e) {
  int k = 8 - e;
  return k >= 0 ? a * pow10_of(k) : a / pow10_of(-k);
}

static int slow(char out[FMTFLOAT_MAX], float v) {
  char tmp[32];
  int n = snprintf(tmp, sizeof tmp, "%.9g", (double)v);
  memcpy(out, tmp, (size_t)n);
  return n;
}

int lmap_fmtfloat9(char out[FMTFLOAT_MAX], float v) {
  double a = fabs((double)v);
  if (a == 0 || !isfinite(a))
    return slow(out, v); /* "0", "-0" */
  /* The decimal exponent: estimated from the binary one (exact or one
   * too low), then corrected by the 9-digit range of the scaled value. */
  uint32_t bits;
  memcpy(&bits, &v, sizeof bits);
  int e2 = (int)(bits >> 23 & 0xff) - 126; /* as frexp() gives it */
  if ((bits >> 23 & 0xff) == 0)
    frexp(a, &e2); /* subnormal */
  /* floor((e2 - 1) * log10(2)) in integers, exact for |e2| < 1000. */
  int e = (e2 - 1) * 78913;
  e = e >= 0 ? e >> 18 : -((-e + (1 << 18) - 1) >> 18);
  double p = scaled(a, e);
  if (p >= 1e9)
    p = scaled(a, ++e);
  else if (p < 1e8)
    p = scaled(a, --e);
  if (p < 1e8 || p >= 1e9)
    return slow(out, v);                   /* on a decade's edge */
  unsigned long digits = (unsigned long)p; /* p > 0: truncation is floor */
  double frac = p - (double)digits;
  if (fabs(frac - 0.5) < 1e-6)
    return slow(out, v); /* too close to a tie to trust the rounding */
  digits += frac > 0.5;
  if (digits == 1000000000ul) { /* 999999999.7 rounds up a decade */
    digits = 100000000ul;
    e++;
  }
  /* Nine digits as 1 + 2+2 + 2+2: short, independent dependency chains. */
  char d[9];
  uint32_t x = (uint32_t)digits, hi = x / 10000, lo = x % 10000;
  d[0] = (char)('0' + hi / 10000);
  memcpy(d + 1, pairs + 2 * (hi / 100 % 100), 2);
  memcpy(d + 3, pairs + 2 * (hi % 100), 2);
  memcpy(d + 5, pairs + 2 * (lo / 100), 2);
  memcpy(d + 7, pairs + 2 * (lo % 100), 2);
  int nd = 9; /* %g drops trailing zeros */
  while (nd > 1 && d[nd - 1] == '0')
    nd--;
  int n = 0;
  if (v < 0)
    out[n++] = '-';
  if (e < -4 || e >= 9) { /* d.dddde+XX */
    out[n++] = d[0];
    if (nd > 1) {
      out[n++] = '.';
      memcpy(out + n, d + 1, (size_t)nd - 1);
      n += nd - 1;
    }
    out[n++] = 'e';
    out[n++] = e < 0 ? '-' : '+';
    int mag = e < 0 ? -e : e;
    out[n++] = (char)('0' + mag / 10);
    out[n++] = (char)('0' + mag % 10);
  } else if (e >= 0) { /* ddd.ddd */
    memcpy(out + n, d, (size_t)e + 1);
    n += e + 1;
    if (nd > e + 1) {
      out[n++] = '.';
      memcpy(out + n, d + e + 1, (size_t)(nd - e - 1));
      n += nd - e - 1;
    }
  } else { /* 0.000ddd */
    out[n++] = '0';
    out[n++] = '.';
    for (int i = 0; i < -e - 1; i++)
      out[n++] = '0';
    memcpy(out + n, d, (size_t)nd);
    n += nd;
  }
  return n;
}
