/* range: one HTTP byte range (contract in range.h). */
#include "range.h"

#include <stdbool.h>
#include <stddef.h>
#include <strings.h>

/* Reads the digits at *p into *v (at least one, no overflow); advances *p. */
static bool digits(const char **p, uint64_t *v) {
  const char *s = *p;
  uint64_t x = 0;
  if (*s < '0' || *s > '9')
    return false;
  for (; *s >= '0' && *s <= '9'; s++) {
    uint64_t digit = (uint64_t)(*s - '0');
    if (x > UINT64_MAX / 10 ||
        (x == UINT64_MAX / 10 && digit > UINT64_MAX % 10))
      return false;
    x = x * 10 + digit;
  }
  *v = x;
  *p = s;
  return true;
}

range_result range_parse(const char *header, uint64_t size, uint64_t *first,
                         uint64_t *len) {
  if (header == NULL || strncasecmp(header, "bytes=", 6) != 0)
    return RANGE_WHOLE;
  const char *p = header + 6;
  uint64_t a = 0, b = 0;
  bool has_first = digits(&p, &a);
  if (*p++ != '-')
    return RANGE_WHOLE;
  bool has_last = digits(&p, &b);
  if (*p != '\0' || (!has_first && !has_last) ||
      (has_first && has_last && b < a))
    return RANGE_WHOLE; /* malformed, or several ranges */
  if (!has_first) {     /* the last b bytes */
    if (b == 0 || size == 0)
      return RANGE_UNSATISFIABLE;
    *first = b >= size ? 0 : size - b;
    *len = size - *first;
    return RANGE_PART;
  }
  if (a >= size)
    return RANGE_UNSATISFIABLE;
  if (!has_last || b >= size)
    b = size - 1;
  *first = a;
  *len = b - a + 1;
  return RANGE_PART;
}
