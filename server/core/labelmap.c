/* labelmap: validation of a decoded or parsed map (see labelmap.h). */
#include "labelmap.h"

#include <math.h>

int labelmap_validate(const labelmap *m, uint32_t num_classes, diag *d) {
  uint32_t k = m->k;
  for (uint32_t r = 0; r < m->h; r++) {
    for (uint32_t q = 0; q < m->w; q++) {
      size_t base = ((size_t)r * m->w + q) * k;
      for (uint32_t e = 0; e < k; e++) {
        float s = m->scores[base + e];
        uint32_t c = m->classes[base + e];
        if (!isfinite(s))
          return diag_set(d, LMAP_ERANGE, "score at [0,%u,%u,%u] is %s", e, r,
                          q, isnan(s) ? "NaN" : "infinite");
        if (s > LABELMAP_MAX_ABS_SCORE || s < -LABELMAP_MAX_ABS_SCORE)
          return diag_set(d, LMAP_ERANGE,
                          "score %g at [0,%u,%u,%u] is beyond +-1e30 (not a "
                          "classifier score)",
                          (double)s, e, r, q);
        if (c >= num_classes)
          return diag_set(d, LMAP_ERANGE,
                          "class index %u at [1,%u,%u,%u] is not below the "
                          "number of classes (%u)",
                          c, e, r, q, num_classes);
        /* K is small (5 in ReLabel): a quadratic scan beats any set. */
        for (uint32_t f = 0; f < e; f++)
          if (m->classes[base + f] == c)
            return diag_set(d, LMAP_ERANGE,
                            "class index %u appears twice in cell (%u,%u) "
                            "(at k=%u and k=%u)",
                            c, r, q, f, e);
      }
    }
  }
  return 0;
}

static int id_byte_ok(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '+' ||
         c == ':' || c == '-';
}

int labelmap_id_check(const char *id, size_t len, diag *d) {
  if (len == 0)
    return diag_field(d, LMAP_EBADID, "id", "id is empty");
  if (len > LABELMAP_MAX_ID_LEN)
    return diag_field(d, LMAP_EBADID, "id", "id is %zu bytes long (at most %u)",
                      len, LABELMAP_MAX_ID_LEN);
  if (id[0] == '.' || id[0] == '-')
    return diag_field(d, LMAP_EBADID, "id", "id may not start with '%c'",
                      id[0]);
  for (size_t i = 0; i < len; i++)
    if (!id_byte_ok((unsigned char)id[i]))
      return diag_field(d, LMAP_EBADID, "id",
                        "id has byte 0x%02x at offset %zu (allowed: "
                        "A-Z a-z 0-9 _ . + : -)",
                        (unsigned char)id[i], i);
  return 0;
}
