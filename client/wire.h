/*
 * wire: what liblmap sends and reads, without any I/O. Writes the JSON body
 * of POST /v1/labels, reads .npy and sparse binary answers as a stream
 * straight into the caller's float buffer, and reads the JSON answers (errors,
 * sparse labels, store info). Every reader checks the shape of what it gets and
 * every value (finite; probabilities in [0, 1]; class indices below C) and
 * names what is wrong in `err`, since a proxy or another, maybe hostile, server
 * may answer instead of lmapd. The readers work on byte buffers alone (no
 * handle, no I/O), so they can be fuzzed as they are.
 */
#ifndef LMAP_CLIENT_WIRE_H
#define LMAP_CLIENT_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "lmap/client.h"
#include "shared/dynbuf.h"

#define LMAP_WIRE_ERRLEN 512

/* Appends the POST /v1/labels body for `n` queries to `b`. Checks what the
 * JSON cannot carry or the client alone knows is wrong (NULL ids, non-finite
 * numbers, unknown enum values). Returns 0, LMAP_EINVAL / LMAP_EBADBOX
 * (`field` and `err` name the query), or a buffer error. */
int lmap_wire_labels_body(dynbuf *b, const lmap_query *queries, size_t n,
                          const lmap_label_options *opts, int sparse,
                          char field[64], char err[LMAP_WIRE_ERRLEN]);

/* Appends the binary queries of POST /v1/labels (Content-Type
 * LMAP_QUERYBIN_TYPE, client/shared/querybin.h) for `n` queries to `b`, and
 * writes to `path` (`cap` bytes) the request's path with the batch's
 * options in its query string. Checks what the JSON body checks, and ids
 * of 1 to 255 bytes (the longest id a store holds). An xyxy box travels as
 * the float32 values lmapd pools with, as in the JSON body, so both forms
 * are judged and answered alike. Returns 0, LMAP_EINVAL / LMAP_EBADID /
 * LMAP_EBADBOX (`field` and `err` name the query), or a buffer error. */
int lmap_wire_labels_binary(dynbuf *b, char *path, size_t cap,
                            const lmap_query *queries, size_t n,
                            const lmap_label_options *opts, int sparse,
                            char field[64], char err[LMAP_WIRE_ERRLEN]);

/* Appends `id` percent-encoded for a URL path segment. */
int lmap_wire_path_escape(dynbuf *b, const char *id);

/* The caps on answer bodies that liblmap buffers (a .npy answer is never
 * buffered: its exact size is known, see lmap_npy_sink). lmapd's error
 * bodies are under 1 KiB and a proxy's error page a few KiB; the /v1/info
 * document is the store's metadata (at most 1 MiB, docs/STORE_FORMAT.md)
 * re-encoded compactly, where a number can at most quadruple ("1E9" becomes
 * "1000000000.0"). */
#define LMAP_WIRE_ERROR_MAX ((size_t)64 << 10)
#define LMAP_WIRE_INFO_MAX ((size_t)8 << 20)

/* Probabilities may exceed [0, 1] by this much before they are refused.
 * lmapd's cannot exceed it at all (exp(x - max) / sum rounded to float32
 * is at most 1 and never negative); the slack, about 8 float32 ulps at 1,
 * admits a server that divides in another order. */
#define LMAP_WIRE_PROB_SLACK 1e-6

/* The most classes a store may have (LABELMAP_MAX_CLASSES of the server):
 * the bound on class indices when the store's C is not known. */
#define LMAP_WIRE_MAX_CLASSES (1u << 24)

/* What the values of a .npy answer may be. Each float is checked as it
 * arrives; the first that is not what was asked for refuses the answer
 * (LMAP_EPROTOCOL naming its index and value), so NaN or infinity never
 * reaches a trainer as a label. */
typedef enum lmap_npy_values {
  LMAP_NPY_ANY = 0, /* unchecked: lmap_npy_sink_init's default */
  LMAP_NPY_FINITE,  /* finite numbers: pooled logits */
  LMAP_NPY_PROB,    /* probabilities: finite, in [0, 1] within the slack */
  LMAP_NPY_MAP      /* a [2, K, H, W] map: plane 0 finite scores, plane 1
                       class indices, whole numbers below `classes` */
} lmap_npy_values;

/* A .npy answer (format 1.0 or 2.0, '<f4', C order) read as it arrives:
 * the header is collected, its shape checked against `expect`, and the data
 * copied straight into `dest`. */
typedef struct lmap_npy_sink {
  float *dest;
  size_t dest_len;  /* floats */
  size_t expect[4]; /* expected shape; 0 in a dim accepts any size */
  int expect_ndim;
  lmap_npy_values values;
  uint32_t classes;   /* LMAP_NPY_MAP: class indices are below this */
  long long declared; /* the answer's Content-Length, -1 when none */
  size_t shape[4];    /* the answer's shape, once the header is read */
  int ndim;
  int shape_differs; /* the header was read and its shape is not `expect` */
  dynbuf head;       /* header bytes until it is complete */
  size_t header_len; /* 0 until known */
  size_t data_off;   /* bytes of data written to dest */
  size_t checked;    /* floats of dest whose values were checked */
  int failed;
  char err[LMAP_WIRE_ERRLEN];
} lmap_npy_sink;

/* Arms `s` (any contents) for one answer, values unchecked and no declared
 * length; lmap_npy_sink_free() after. */
void lmap_npy_sink_init(lmap_npy_sink *s, float *dest, size_t dest_len,
                        const size_t *expect, int expect_ndim);
/* Sets what the values may be (`classes`: for LMAP_NPY_MAP, 0 for
 * LMAP_WIRE_MAX_CLASSES). Call before the first byte. */
void lmap_npy_sink_values(lmap_npy_sink *s, lmap_npy_values values,
                          uint32_t classes);
void lmap_npy_sink_free(lmap_npy_sink *s);
/* Declares the answer's Content-Length (-1: none), before the first byte.
 * Returns 0, or LMAP_EPROTOCOL when it is more than any header plus the
 * array asked for (the transfer is then abandoned at once). */
int lmap_npy_sink_declare(lmap_npy_sink *s, long long length);
/* Feeds bytes. Returns 0 or an error (LMAP_EPROTOCOL, LMAP_ERANGE) with
 * s->err set; after an error the rest is ignored. When s->declared is set
 * (before the first byte), a header whose array does not fill exactly that
 * many bytes is refused at once. */
int lmap_npy_feed(lmap_npy_sink *s, const char *p, size_t n);
/* After the last byte: 0 when the whole array arrived. */
int lmap_npy_finish(lmap_npy_sink *s);

/* A sparse binary answer (application/x-lmap-sparse, the layout of
 * client/shared/sparsebin.h) read as it arrives and expanded straight into
 * `dest`, the dense float32 [N, C] or [N, C, G, G] array the .npy answer
 * would have filled: each cell's `rest` in all its classes, then its
 * listed values. The header must give the N, C and G asked for (else
 * `shape_differs`, as for .npy), every class must be below C, at most C
 * per cell, and every value (`rest` included) what `values` allows. */
typedef struct lmap_sparsebin_sink {
  float *dest;
  size_t dest_len;  /* floats: N * C * G * G */
  size_t expect[4]; /* N, C, G, G */
  lmap_npy_values values;
  long long declared;    /* the answer's Content-Length, -1 when none */
  size_t shape[4];       /* the answer's [N, C, G, G], once read */
  int ndim;              /* 2 (G = 1) or 4, once read */
  int shape_differs;     /* the header was read and is not `expect` */
  unsigned char part[8]; /* a unit split across feeds */
  size_t part_len;
  size_t units;     /* 8-byte units read, the 2 of the header included */
  size_t cells;     /* G * G, once read */
  size_t cells_in;  /* cells begun */
  uint32_t left;    /* entries of the current cell still to come */
  uint32_t entry;   /* entries of the current cell read */
  float *cell_base; /* dest + the current cell's class 0 */
  size_t stride;    /* floats between one class and the next of a cell */
  int failed;
  char err[LMAP_WIRE_ERRLEN];
} lmap_sparsebin_sink;

/* Arms `s` for one answer into `dest` (`dest_len` floats) for the shape
 * `expect` ({N, C, G, G}), its values checked as `values` says. */
void lmap_sparsebin_sink_init(lmap_sparsebin_sink *s, float *dest,
                              size_t dest_len, const size_t expect[4],
                              lmap_npy_values values);
/* Declares the answer's Content-Length (-1: none), before the first byte.
 * Returns 0, or LMAP_EPROTOCOL when no sparse answer can be that long (the
 * transfer is then abandoned at once); once the header is read, a length
 * over the most an answer of its shape can take is refused too. */
int lmap_sparsebin_sink_declare(lmap_sparsebin_sink *s, long long length);
/* Feeds bytes. Returns 0 or LMAP_EPROTOCOL with s->err naming the item,
 * cell and entry at fault; after an error the rest is ignored. */
int lmap_sparsebin_feed(lmap_sparsebin_sink *s, const char *p, size_t n);
/* After the last byte: 0 when every cell arrived whole. */
int lmap_sparsebin_finish(lmap_sparsebin_sink *s);

/* Reads an lmapd error body {"error": {"code", "message", "field"}}.
 * Returns 0 and fills the strings (truncated to their sizes), or
 * LMAP_EPROTOCOL when the body is not such a document. */
int lmap_wire_error(const char *body, size_t len, char code[64],
                    char message[LMAP_WIRE_ERRLEN], char field[64]);

/* What a sparse answer must hold: `n` items of `cells` cells, class
 * indices below `classes` (0: below LMAP_WIRE_MAX_CLASSES) and at most
 * that many per cell, finite values, and with `softmax` 1 "probs" and a
 * "rest" in [0, 1], with 0 "logits" and a "rest" of 0, with -1 either. */
typedef struct lmap_sparse_expect {
  size_t n, cells;
  uint32_t classes;
  int softmax;
} lmap_sparse_expect;

/* Reads {"results": [...]} as `x` says into one allocation (*out, freed
 * by lmap_sparse_free; NULL on failure). Returns 0, LMAP_EPROTOCOL naming
 * the item, cell and entry at fault in `err`, or LMAP_ENOMEM. */
int lmap_wire_sparse_check(const char *body, size_t len,
                           const lmap_sparse_expect *x, lmap_sparse **out,
                           char err[LMAP_WIRE_ERRLEN]);

/* The same with only the counts known (classes 0, softmax -1). */
int lmap_wire_sparse(const char *body, size_t len, size_t n, size_t cells,
                     lmap_sparse **out, char err[LMAP_WIRE_ERRLEN]);

/* An upper bound on the bytes of a sparse answer to `n` queries whose ids
 * total `id_bytes` bytes, `cells` cells each, of a store with `classes`
 * classes of which a cell lists at most `per_cell` (K * H * W bounds it:
 * a cell's classes are those of the map entries its box touches). It is
 * twice what lmapd's compact JSON can take with every number at its
 * longest, plus 64 KiB: room for a server that spaces its JSON. Saturates
 * at SIZE_MAX. */
size_t lmap_wire_sparse_max(size_t n, size_t id_bytes, size_t cells,
                            uint32_t classes, uint64_t per_cell);

/* Reads the /v1/info document's shape fields. */
int lmap_wire_info(const char *body, size_t len, lmap_info *info,
                   char err[LMAP_WIRE_ERRLEN]);

#endif /* LMAP_CLIENT_WIRE_H */
