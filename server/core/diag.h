/*
 * diag: the precise message that travels with an lmap error code.
 *
 * Functions that can fail on bad input take an optional `diag *` and write a
 * sentence naming the problem (the file, field or record and the reason).
 * The numeric code stays the return value; the diag only adds words.
 */
#ifndef LMAP_DIAG_H
#define LMAP_DIAG_H

#include <stddef.h>

#include "lmap/error.h"

typedef struct diag {
  int code;       /* the lmap_errno of the last failure, 0 if none */
  char field[64]; /* the offending field or path component, "" if none */
  char msg[512];  /* a full sentence, "" if none */
} diag;

/* Records `code` and a printf-style message in `d` (which may be NULL) and
 * returns `code`, so a failure site reads `return diag_set(d, ...)`. */
int diag_set(diag *d, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Like diag_set, and also names the offending field. */
int diag_field(diag *d, int code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Prefixes the existing message with "<prefix>: " (for adding a path). */
void diag_prefix(diag *d, const char *prefix);

void diag_clear(diag *d);

/* The message, or the code's generic text when no message was set. */
const char *diag_text(const diag *d);

#endif /* LMAP_DIAG_H */
