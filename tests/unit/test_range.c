/*
 * Unit tests for server/daemon/range.c against RFC 9110 §14: each header
 * with the range it must give for a file of 1000 bytes (and the edge
 * sizes), written out here by hand.
 */
#include "daemon/range.h"
#include "test.h"

static void expect(const char *h, uint64_t size, range_result want,
                   uint64_t first, uint64_t len) {
  uint64_t f = 777, l = 777;
  range_result got = range_parse(h, size, &f, &l);
  if (got != want || (want == RANGE_PART && (f != first || l != len))) {
    fprintf(stderr, "range_parse(%s, %llu): %d %llu+%llu, want %d %llu+%llu\n",
            h ? h : "NULL", (unsigned long long)size, (int)got,
            (unsigned long long)f, (unsigned long long)l, (int)want,
            (unsigned long long)first, (unsigned long long)len);
    exit(1);
  }
  test__checks++;
}

int main(void) {
  expect(NULL, 1000, RANGE_WHOLE, 0, 0);
  expect("bytes=0-0", 1000, RANGE_PART, 0, 1);
  expect("bytes=0-999", 1000, RANGE_PART, 0, 1000);
  expect("bytes=100-199", 1000, RANGE_PART, 100, 100);
  expect("BYTES=100-199", 1000, RANGE_PART, 100, 100);
  expect("bytes=500-", 1000, RANGE_PART, 500, 500);
  expect("bytes=999-", 1000, RANGE_PART, 999, 1);
  expect("bytes=5-5000", 1000, RANGE_PART, 5, 995); /* cut at the end */
  expect("bytes=-1", 1000, RANGE_PART, 999, 1);
  expect("bytes=-250", 1000, RANGE_PART, 750, 250);
  expect("bytes=-5000", 1000, RANGE_PART, 0, 1000); /* all of it, as 206 */
  expect("bytes=1000-", 1000, RANGE_UNSATISFIABLE, 0, 0);
  expect("bytes=1000-2000", 1000, RANGE_UNSATISFIABLE, 0, 0);
  expect("bytes=-0", 1000, RANGE_UNSATISFIABLE, 0, 0);
  expect("bytes=0-", 0, RANGE_UNSATISFIABLE, 0, 0);
  expect("bytes=-5", 0, RANGE_UNSATISFIABLE, 0, 0);
  /* Ignored: the whole file. */
  expect("bytes=9-3", 1000, RANGE_WHOLE, 0, 0);
  expect("bytes=0-1,5-6", 1000, RANGE_WHOLE, 0, 0);
  expect("bytes=-", 1000, RANGE_WHOLE, 0, 0);
  expect("bytes=", 1000, RANGE_WHOLE, 0, 0);
  expect("bytes=a-b", 1000, RANGE_WHOLE, 0, 0);
  expect("bytes=1-2 ", 1000, RANGE_WHOLE, 0, 0);
  expect("bytes= 1-2", 1000, RANGE_WHOLE, 0, 0);
  expect("items=0-1", 1000, RANGE_WHOLE, 0, 0);
  expect("bytes=18446744073709551616-", 1000, RANGE_WHOLE, 0, 0); /* 2^64 */
  expect("bytes=18446744073709551615-", 1000, RANGE_UNSATISFIABLE, 0, 0);
  expect("bytes=0-18446744073709551615", 1000, RANGE_PART, 0, 1000);
  expect("bytes=10-18446744073709551615", UINT64_MAX, RANGE_PART, 10,
         UINT64_MAX - 10);
  printf("test_range: %d checks passed\n", test__checks);
  return 0;
}
