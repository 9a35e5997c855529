/*
 * dynbuf: a growable byte buffer with a hard maximum size, for output built
 * from input (JSON answers, .npy files, HTTP requests and answers). Appends
 * fail with LMAP_ETOOBIG instead of growing past the cap, and LMAP_ENOMEM
 * when allocation fails; after a failure the buffer keeps its previous
 * contents. Shared by lmap_core and liblmap (client/shared/README.md;
 * hence the prefix: liblmap.a defines no global symbol outside lmap_*).
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

void lmap_dynbuf_init(dynbuf *b, size_t max);
void lmap_dynbuf_free(dynbuf *b);  /* back to the empty state; keeps max */
void lmap_dynbuf_reset(dynbuf *b); /* len = 0, keeps the memory */
/* Gives the memory back when more than `keep` bytes are allocated, so that
 * one large answer does not pin its size in a buffer that is reused.
 * `len` keeps its value (a caller may still report how long the contents
 * were) but the contents are gone: reset the buffer before using it again
 * (an append to a dropped buffer starts from empty). */
void lmap_dynbuf_drop(dynbuf *b, size_t keep);
int lmap_dynbuf_reserve(dynbuf *b, size_t extra);
int lmap_dynbuf_add(dynbuf *b, const void *p, size_t n);
/* Appends `n` bytes for the caller to write at *at (uninitialised), so
 * results can be produced in place instead of copied in. */
int lmap_dynbuf_extend(dynbuf *b, size_t n, void **at);
int lmap_dynbuf_addstr(dynbuf *b, const char *s);
int lmap_dynbuf_printf(dynbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif /* LMAP_DYNBUF_H */
