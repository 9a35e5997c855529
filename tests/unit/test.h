/*
 * Minimal assertion macros for the unit tests: each failure prints the
 * expression, both operands and the location, then exits non-zero.
 */
#ifndef LMAP_TEST_H
#define LMAP_TEST_H

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test__checks;

#define ASSERT(expr)                                                           \
  do {                                                                         \
    test__checks++;                                                            \
    if (!(expr)) {                                                             \
      fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__,     \
              #expr);                                                          \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

#define ASSERT_INT(a, op, b)                                                   \
  do {                                                                         \
    long long test__a = (long long)(a), test__b = (long long)(b);              \
    test__checks++;                                                            \
    if (!(test__a op test__b)) {                                               \
      fprintf(stderr, "%s:%d: assertion failed: %s %s %s (%lld %s %lld)\n",    \
              __FILE__, __LINE__, #a, #op, #b, test__a, #op, test__b);         \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

#define ASSERT_EQ(a, b) ASSERT_INT(a, ==, b)

#define ASSERT_NEAR(a, b, tol)                                                 \
  do {                                                                         \
    double test__a = (double)(a), test__b = (double)(b);                       \
    test__checks++;                                                            \
    if (!(fabs(test__a - test__b) <= (tol))) {                                 \
      fprintf(stderr,                                                          \
              "%s:%d: assertion failed: %s ~= %s (%.9g vs %.9g, tol %g)\n",    \
              __FILE__, __LINE__, #a, #b, test__a, test__b, (double)(tol));    \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

#define ASSERT_STR(a, b)                                                       \
  do {                                                                         \
    const char *test__a = (a), *test__b = (b);                                 \
    test__checks++;                                                            \
    if (strcmp(test__a, test__b) != 0) {                                       \
      fprintf(stderr,                                                          \
              "%s:%d: assertion failed: %s == %s (\"%s\" vs \"%s\")\n",        \
              __FILE__, __LINE__, #a, #b, test__a, test__b);                   \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

/* Asserts that `hay` contains `needle` (for error messages). */
#define ASSERT_CONTAINS(hay, needle)                                           \
  do {                                                                         \
    const char *test__h = (hay), *test__n = (needle);                          \
    test__checks++;                                                            \
    if (strstr(test__h, test__n) == NULL) {                                    \
      fprintf(stderr, "%s:%d: \"%s\" does not contain \"%s\"\n", __FILE__,     \
              __LINE__, test__h, test__n);                                     \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

#define TEST_DONE()                                                            \
  do {                                                                         \
    printf("%s: %d checks passed\n", __FILE__, test__checks);                  \
    return 0;                                                                  \
  } while (0)

#endif /* LMAP_TEST_H */
