/*
 * queryjson: a pooling query written in JSON, read one way by lmapd (the
 * body of POST /v1/labels) and by `lmap get --queries` / `lmap query
 * --batch` (one query a line): the same keys, checks, error codes,
 * fields and messages.
 *
 *   a query:  {"id": string, "box": [4 numbers], "flip": bool}
 *   options:  "output_size": 1..POOL_MAX_OUTPUT_SIZE, "format": "dense" |
 *             "sparse", "box_format": "xyxy" | "relabel", "softmax": bool
 *
 * lmapd takes the options once for the whole batch, a query file on every
 * line. A key that is neither is refused, so a misspelt option is never
 * silently ignored.
 */
#ifndef LMAP_QUERYJSON_H
#define LMAP_QUERYJSON_H

#include <jansson.h>
#include <stdbool.h>

#include "core/diag.h"
#include "itemjson.h"
#include "pool.h"

/* Refuses a key of object `o` that is not in `known` (NULL-terminated):
 * LMAP_EINVAL with the key as the field, naming `where` ("a query"). */
int queryjson_known_keys(json_t *o, const char *const *known, const char *where,
                         diag *d);

/* Applies the option keys present in object `o` to `q` and `fmt`.
 * Returns 0 or LMAP_EINVAL with the key as the field. */
int queryjson_options(json_t *o, pool_query *q, itemjson_format *fmt, diag *d);

/* Reads one query from `o` into `q` (its box and flip; with `options`, the
 * option keys too, into `q` and `fmt`) and *id (pointing into `o`), then
 * checks the id's pattern and the box (labelmap_id_check,
 * pool_check_query). `where` names the query in fields and messages:
 * "queries[3]" gives the field "queries[3].box", "" gives "box".
 * Returns 0, LMAP_EINVAL, LMAP_EBADID or LMAP_EBADBOX. */
int queryjson_query(json_t *o, const char *where, bool options, pool_query *q,
                    itemjson_format *fmt, const char **id, diag *d);

#endif /* LMAP_QUERYJSON_H */
