/*
 * wire: what liblmap sends and reads, without any I/O. Writes the JSON body
 * of POST /v1/labels, reads .npy answers as a stream straight into the
 * caller's float buffer, and reads the JSON answers (errors, sparse labels,
 * store info). Every reader checks the shape of what it gets and names what
 * is wrong in `err`, since a proxy or another server may answer instead of
 * lmapd.
 */
#ifndef LMAP_CLIENT_WIRE_H
#define LMAP_CLIENT_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "dynbuf.h"
#include "lmap/client.h"

#define LMAP_WIRE_ERRLEN 512

/* Appends the POST /v1/labels body for `n` queries to `b`. Checks what the
 * JSON cannot carry or the client alone knows is wrong (NULL ids, non-finite
 * numbers, unknown enum values). Returns 0, LMAP_EINVAL / LMAP_EBADBOX
 * (`field` and `err` name the query), or a buffer error. */
int lmap_wire_labels_body(dynbuf *b, const lmap_query *queries, size_t n,
                          const lmap_label_options *opts, int sparse,
                          char field[64], char err[LMAP_WIRE_ERRLEN]);

/* Appends `id` percent-encoded for a URL path segment. */
int lmap_wire_path_escape(dynbuf *b, const char *id);

/* A .npy answer (format 1.0 or 2.0, '<f4', C order) read as it arrives:
 * the header is collected, its shape checked against `expect`, and the data
 * copied straight into `dest`. */
typedef struct lmap_npy_sink {
  float *dest;
  size_t dest_len;      /* floats */
  size_t expect[4];     /* expected shape; 0 in a dim accepts any size */
  int expect_ndim;
  size_t shape[4];      /* the answer's shape, once the header is read */
  int ndim;
  dynbuf head;        /* header bytes until it is complete */
  size_t header_len;    /* 0 until known */
  size_t data_off;      /* bytes of data written to dest */
  int failed;
  char err[LMAP_WIRE_ERRLEN];
} lmap_npy_sink;

/* Arms `s` (any contents) for one answer; lmap_npy_sink_free() after. */
void lmap_npy_sink_init(lmap_npy_sink *s, float *dest, size_t dest_len,
                        const size_t *expect, int expect_ndim);
void lmap_npy_sink_free(lmap_npy_sink *s);
/* Feeds bytes. Returns 0 or an error (LMAP_EPROTOCOL, LMAP_ERANGE) with
 * s->err set; after an error the rest is ignored. */
int lmap_npy_feed(lmap_npy_sink *s, const char *p, size_t n);
/* After the last byte: 0 when the whole array arrived. */
int lmap_npy_finish(lmap_npy_sink *s);

/* Reads an lmapd error body {"error": {"code", "message", "field"}}.
 * Returns 0 and fills the strings (truncated to their sizes), or
 * LMAP_EPROTOCOL when the body is not such a document. */
int lmap_wire_error(const char *body, size_t len, char code[64],
                    char message[LMAP_WIRE_ERRLEN], char field[64]);

/* Reads {"results": [...]} of `n` sparse items with `cells` cells each into
 * one allocation (*out, freed by lmap_sparse_free). */
int lmap_wire_sparse(const char *body, size_t len, size_t n, size_t cells,
                     lmap_sparse **out, char err[LMAP_WIRE_ERRLEN]);

/* Reads the /v1/info document's shape fields. */
int lmap_wire_info(const char *body, size_t len, lmap_info *info,
                   char err[LMAP_WIRE_ERRLEN]);

#endif /* LMAP_CLIENT_WIRE_H */
