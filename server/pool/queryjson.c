/* queryjson: a pooling query in JSON (see queryjson.h). */
#include "queryjson.h"

#include <stdio.h>
#include <string.h>

#include "core/labelmap.h"
#include "queryopt.h"

int queryjson_known_keys(json_t *o, const char *const *known, const char *where,
                         diag *d) {
  const char *key;
  json_t *v;
  json_object_foreach(o, key, v) {
    int ok = 0;
    for (const char *const *k = known; *k; k++)
      ok |= strcmp(key, *k) == 0;
    if (!ok)
      return diag_field(d, LMAP_EINVAL, key, "unknown key \"%s\" in %s", key,
                        where);
  }
  return 0;
}

int queryjson_options(json_t *o, pool_query *q, itemjson_format *fmt, diag *d) {
  json_t *v;
  if ((v = json_object_get(o, "output_size")) != NULL) {
    json_int_t n = json_is_integer(v) ? json_integer_value(v) : 0;
    if (n < 1 || n > POOL_MAX_OUTPUT_SIZE)
      return diag_field(d, LMAP_EINVAL, "output_size",
                        "output_size must be an integer in [1, %u]",
                        POOL_MAX_OUTPUT_SIZE);
    q->output_size = (uint32_t)n;
  }
  if ((v = json_object_get(o, "format")) != NULL &&
      (!json_is_string(v) || queryopt_format(json_string_value(v), fmt)))
    return diag_field(d, LMAP_EINVAL, "format",
                      "format must be \"dense\" or \"sparse\"");
  if ((v = json_object_get(o, "box_format")) != NULL &&
      (!json_is_string(v) ||
       queryopt_box_format(json_string_value(v), &q->box_format)))
    return diag_field(d, LMAP_EINVAL, "box_format",
                      "box_format must be \"xyxy\" or \"relabel\"");
  if ((v = json_object_get(o, "softmax")) != NULL) {
    if (!json_is_boolean(v))
      return diag_field(d, LMAP_EINVAL, "softmax",
                        "softmax must be true or false");
    q->softmax = json_is_true(v);
  }
  return 0;
}

int queryjson_query(json_t *o, const char *where, bool options, pool_query *q,
                    itemjson_format *fmt, const char **id, diag *d) {
  static const char *const query_keys[] = {"id", "box", "flip", NULL};
  static const char *const line_keys[] = {
      "id",         "box",     "flip",   "output_size",
      "box_format", "softmax", "format", NULL};
  char field[64];
  const char *dot = where[0] ? "." : "";
  if (!json_is_object(o))
    return diag_field(d, LMAP_EINVAL, where[0] ? "queries" : "",
                      "%s must be an object", where[0] ? where : "a query");
  if (queryjson_known_keys(o, options ? line_keys : query_keys, "a query", d))
    return LMAP_EINVAL;
  json_t *jid = json_object_get(o, "id"), *box = json_object_get(o, "box"),
         *flip = json_object_get(o, "flip");
  snprintf(field, sizeof field, "%s%sid", where, dot);
  if (!json_is_string(jid))
    return diag_field(d, LMAP_EBADID, field, "%s must be a string", field);
  *id = json_string_value(jid);
  snprintf(field, sizeof field, "%s%sbox", where, dot);
  if (!json_is_array(box) || json_array_size(box) != 4)
    return diag_field(d, LMAP_EBADBOX, field,
                      "%s must be an array of 4 numbers", field);
  for (size_t k = 0; k < 4; k++) {
    json_t *v = json_array_get(box, k);
    if (!json_is_number(v))
      return diag_field(d, LMAP_EBADBOX, field, "%s[%zu] is not a number",
                        field, k);
    q->box[k] = json_number_value(v);
  }
  if (flip != NULL) {
    snprintf(field, sizeof field, "%s%sflip", where, dot);
    if (!json_is_boolean(flip))
      return diag_field(d, LMAP_EINVAL, field, "%s must be true or false",
                        field);
    q->flip = json_is_true(flip);
  }
  int rc = options ? queryjson_options(o, q, fmt, d) : 0;
  if (rc == 0)
    rc = labelmap_id_check(*id, strlen(*id), d);
  if (rc == 0)
    rc = pool_check_query(q, d);
  if (rc && where[0])
    diag_prefix(d, where);
  return rc;
}
