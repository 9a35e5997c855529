/* dynbuf: growable buffer with a cap (see dynbuf.h). */
#include "dynbuf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lmap/error.h"

void lmap_dynbuf_init(dynbuf *b, size_t max) {
  b->data = NULL;
  b->len = b->cap = 0;
  b->max = max;
}

void lmap_dynbuf_free(dynbuf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

void lmap_dynbuf_reset(dynbuf *b) {
  b->len = 0;
  if (b->data)
    b->data[0] = '\0';
}

void lmap_dynbuf_drop(dynbuf *b, size_t keep) {
  if (b->cap > keep) {
    free(b->data);
    b->data = NULL;
    b->cap = 0;
  }
}

int lmap_dynbuf_reserve(dynbuf *b, size_t extra) {
  if (b->data == NULL)
    b->len = 0; /* dropped: nothing to keep */
  if (extra > b->max || b->len > b->max - extra)
    return LMAP_ETOOBIG;
  size_t need = b->len + extra + 1; /* room for the NUL */
  if (need <= b->cap)
    return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < need)
    cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  char *p = realloc(b->data, cap);
  if (p == NULL)
    return LMAP_ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

int lmap_dynbuf_extend(dynbuf *b, size_t n, void **at) {
  int rc = lmap_dynbuf_reserve(b, n);
  if (rc)
    return rc;
  *at = b->data + b->len;
  b->len += n;
  b->data[b->len] = '\0';
  return 0;
}

int lmap_dynbuf_add(dynbuf *b, const void *p, size_t n) {
  int rc = lmap_dynbuf_reserve(b, n);
  if (rc)
    return rc;
  memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
  return 0;
}

int lmap_dynbuf_addstr(dynbuf *b, const char *s) {
  return lmap_dynbuf_add(b, s, strlen(s));
}

int lmap_dynbuf_printf(dynbuf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0)
    return LMAP_EINTERNAL;
  int rc = lmap_dynbuf_reserve(b, (size_t)n);
  if (rc)
    return rc;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return 0;
}
