/*
 * dynbuf: a growable byte buffer with a hard maximum size, for output built
 * from input (JSON answers, .npy files). Appends fail with LMAP_ETOOBIG
 * instead of growing past the cap, and LMAP_ENOMEM when allocation fails;
 * after a failure the buffer keeps its previous contents.
 */
#ifndef LMAP_DYNBUF_H
#define LMAP_DYNBUF_H

#include <stddef.h>

typedef struct dynbuf {
  char *data; /* owned; NUL-terminated after every successful append */
  size_t len;
  size_t cap;
  size_t max; /* hard limit on len */
} dynbuf;

void dynbuf_init(dynbuf *b, size_t max);
void dynbuf_free(dynbuf *b); /* back to the empty state; keeps max */
void dynbuf_reset(dynbuf *b); /* len = 0, keeps the memory */
int dynbuf_reserve(dynbuf *b, size_t extra);
int dynbuf_add(dynbuf *b, const void *p, size_t n);
/* Appends `n` bytes for the caller to write at *at (uninitialised), so
 * results can be produced in place instead of copied in. */
int dynbuf_extend(dynbuf *b, size_t n, void **at);
int dynbuf_addstr(dynbuf *b, const char *s);
int dynbuf_printf(dynbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif /* LMAP_DYNBUF_H */
