/*
 * buf: the client's growable byte buffer with a hard maximum, so no answer
 * or request can grow memory without bound. Header-only (static inline) to
 * keep liblmap's symbol table to the public API.
 */
#ifndef LMAP_CLIENT_BUF_H
#define LMAP_CLIENT_BUF_H

#include <stdlib.h>
#include <string.h>

#include "lmap/error.h"

typedef struct lmap_buf {
  char *data; /* NUL-terminated whenever len > 0 */
  size_t len;
  size_t cap;
  size_t max; /* most bytes it may hold */
} lmap_buf;

static inline void lmap_buf_init(lmap_buf *b, size_t max) {
  b->data = NULL;
  b->len = b->cap = 0;
  b->max = max;
}

static inline void lmap_buf_free(lmap_buf *b) {
  free(b->data);
  lmap_buf_init(b, b->max);
}

static inline void lmap_buf_reset(lmap_buf *b) {
  b->len = 0;
  if (b->data)
    b->data[0] = '\0';
}

/* Appends `n` bytes. Returns 0, LMAP_ETOOBIG (over `max`) or LMAP_ENOMEM. */
static inline int lmap_buf_add(lmap_buf *b, const void *p, size_t n) {
  if (n > b->max - b->len)
    return LMAP_ETOOBIG;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1)
      cap *= 2;
    if (cap > b->max + 1)
      cap = b->max + 1;
    char *d = realloc(b->data, cap);
    if (d == NULL)
      return LMAP_ENOMEM;
    b->data = d;
    b->cap = cap;
  }
  if (n)
    memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
  return 0;
}

static inline int lmap_buf_addstr(lmap_buf *b, const char *s) {
  return lmap_buf_add(b, s, strlen(s));
}

#endif /* LMAP_CLIENT_BUF_H */
