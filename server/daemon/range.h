/*
 * range: the one byte range of a Range header (RFC 9110 §14.2) that lmapd
 * honours when it sends its store file (GET /v1/store). Pure.
 *
 * One range only: "bytes=FIRST-LAST", "bytes=FIRST-" or "bytes=-SUFFIX".
 * A header this server does not honour (another unit, several ranges,
 * anything malformed) is ignored, as the RFC allows: the whole file is
 * sent with 200.
 */
#ifndef LMAP_RANGE_H
#define LMAP_RANGE_H

#include <stdint.h>

typedef enum range_result {
  RANGE_WHOLE,        /* no header, or one that is ignored: 200, all bytes */
  RANGE_PART,         /* 206: *first and *len (>= 1) are set */
  RANGE_UNSATISFIABLE /* 416: the range starts at or past the end */
} range_result;

/* The range `header` (NULL when absent) asks of a file of `size` bytes.
 * LAST past the end is cut to the end; a SUFFIX longer than the file is
 * the whole file (as 206). */
range_result range_parse(const char *header, uint64_t size, uint64_t *first,
                         uint64_t *len);

#endif /* LMAP_RANGE_H */
