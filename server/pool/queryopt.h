/*
 * queryopt: the text forms of a pooling query's options, parsed the same
 * way by `lmap get` (flags, JSON lines) and lmapd (URL arguments, JSON).
 * Each function returns 0, or -1 when the text is not one of the forms.
 */
#ifndef LMAP_QUERYOPT_H
#define LMAP_QUERYOPT_H

#include <stdbool.h>

#include "itemjson.h"
#include "pool.h"

/* "xyxy" or "relabel". */
int queryopt_box_format(const char *s, pool_box_format *out);

/* "dense" or "sparse". */
int queryopt_format(const char *s, itemjson_format *out);

/* "true"/"1" or "false"/"0". */
int queryopt_bool(const char *s, bool *out);

/* "a,b,c,d": four finite numbers (subnormals included). */
int queryopt_box(const char *s, double box[4]);

#endif /* LMAP_QUERYOPT_H */
