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
  if (d == NULL)
    return;
  char old[sizeof d->msg];
  const char *body = d->msg[0] ? d->msg : lmap_strerror(d->code);
  size_t n = strlen(body);
  if (n >= sizeof old)
    n = sizeof old - 1;
  memcpy(old, body, n);
  old[n] = '\0';
  /* Truncation is acceptable here: the message stays a valid string. */
  /* A long path must not push the reason out of the message. */
  size_t p = strlen(prefix);
  if (p > 240)
    p = 240;
  memcpy(d->msg, prefix, p);
  memcpy(d->msg + p, ": ", 2);
  size_t room = sizeof d->msg - p - 3;
  if (n > room)
    n = room;
  memcpy(d->msg + p + 2, old, n);
  d->msg[p + 2 + n] = '\0';
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
