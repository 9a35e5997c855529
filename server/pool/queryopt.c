/* queryopt: text forms of query options (see queryopt.h). */
#include "queryopt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int queryopt_box_format(const char *s, pool_box_format *out) {
  if (strcmp(s, "xyxy") == 0)
    *out = POOL_BOX_XYXY;
  else if (strcmp(s, "relabel") == 0)
    *out = POOL_BOX_RELABEL;
  else
    return -1;
  return 0;
}

int queryopt_format(const char *s, itemjson_format *out) {
  if (strcmp(s, "dense") == 0)
    *out = ITEM_DENSE;
  else if (strcmp(s, "sparse") == 0)
    *out = ITEM_SPARSE;
  else
    return -1;
  return 0;
}

int queryopt_bool(const char *s, bool *out) {
  if (strcmp(s, "true") == 0 || strcmp(s, "1") == 0)
    *out = true;
  else if (strcmp(s, "false") == 0 || strcmp(s, "0") == 0)
    *out = false;
  else
    return -1;
  return 0;
}

int queryopt_box(const char *s, double box[4]) {
  const char *p = s;
  for (int i = 0; i < 4; i++) {
    char *end;
    /* Underflow (ERANGE with a tiny result) is fine; overflow gives inf,
     * which isfinite refuses. */
    box[i] = strtod(p, &end);
    if (end == p || !isfinite(box[i]))
      return -1;
    p = end;
    if (i < 3 && *p++ != ',')
      return -1;
  }
  return *p == '\0' ? 0 : -1;
}
