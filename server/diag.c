/* diag: error messages that name the problem. */
#include "diag.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int vset(diag *d, int code, const char *field, const char *fmt,
                va_list ap) {
  if (d == NULL)
    return code;
  d->code = code;
  snprintf(d->field, sizeof d->field, "%s", field ? field : "");
  vsnprintf(d->msg, sizeof d->msg, fmt, ap);
  return code;
}

int diag_set(diag *d, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vset(d, code, NULL, fmt, ap);
  va_end(ap);
  return code;
}

int diag_field(diag *d, int code, const char *field, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vset(d, code, field, fmt, ap);
  va_end(ap);
  return code;
}

void diag_prefix(diag *d, const char *prefix) {
  char old[sizeof d->msg];
  if (d == NULL)
    return;
  memcpy(old, d->msg, sizeof old);
  snprintf(d->msg, sizeof d->msg, "%s: %s", prefix,
           old[0] ? old : lmap_strerror(d->code));
}

void diag_clear(diag *d) {
  if (d == NULL)
    return;
  d->code = 0;
  d->field[0] = '\0';
  d->msg[0] = '\0';
}

const char *diag_text(const diag *d) {
  if (d->msg[0])
    return d->msg;
  return lmap_strerror(d->code);
}
