/*
 * codec: one label map <-> the bytes of one store record.
 *
 * A record is the map after a domain transform (classes as a stream of
 * move-to-front codes in which an unchanged cell is one byte, scores
 * predicted from their neighbours on a checkerboard, residuals split into
 * byte planes), compressed as two zstd frames: the compressible "head"
 * against the store's trained dictionary, the near-random low score bytes
 * as a raw "tail". zstd's content checksums are the per-record integrity
 * check. The layout is specified in docs/STORE_FORMAT.md; this module is
 * its only implementation.
 *
 * Pure apart from zstd: no I/O. A codec_ctx is not thread-safe: use one per
 * thread (they may share the same dictionary bytes).
 */
#ifndef LMAP_CODEC_H
#define LMAP_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "core/diag.h"
#include "core/labelmap.h"

typedef enum codec_encoding {
  CODEC_F32 = 1, /* scores stored exactly */
  CODEC_F16 = 2  /* scores rounded to IEEE binary16 (default) */
} codec_encoding;

/* The encoding's name in the metadata, flags and answers: "f16", "f32"
 * (NULL for another value). */
const char *codec_encoding_name(codec_encoding e);
/* The encoding named `name`; returns 0, or -1 when it names none. */
int codec_encoding_from_name(const char *name, codec_encoding *out);

/* What every record of one store shares. */
typedef struct codec_shape {
  uint32_t k, h, w;
  uint32_t num_classes;
  codec_encoding encoding;
} codec_shape;

/* Validates a shape (sizes within the LABELMAP_MAX_* bounds, known
 * encoding). Returns 0 or LMAP_EINVAL with a message. */
int codec_shape_check(const codec_shape *s, diag *d);

/* Size in bytes of a transformed body (the buffer codec_transform fills;
 * records hold its used part, compressed). */
size_t codec_raw_size(const codec_shape *s);

/* Applies the domain transform: `m` (which must match `s` and have passed
 * labelmap_validate, so that every score is within +-LABELMAP_MAX_ABS_SCORE
 * and predictor sums stay finite) into `raw`, codec_raw_size(s) bytes.
 * Scores are rounded to the encoding here.
 * Allocates and frees a scratch buffer (codec_encode uses its context's).
 * Returns 0, LMAP_EINVAL (shape), LMAP_ERANGE when a class is >= C or a
 * score does not fit the encoding (non-finite, f16 overflow), naming the
 * entry, or LMAP_ENOMEM. */
int codec_transform(const codec_shape *s, const labelmap *m, uint8_t *raw,
                    diag *d);

/* Inverse of codec_transform: fills `out`, whose arrays the caller sized
 * for k*h*w entries (on failure they hold unspecified values). Allocates
 * and frees a scratch buffer. Returns 0, LMAP_ECORRUPT (a malformed class
 * stream, a class index >= C, a non-finite score), LMAP_EINVAL (shape) or
 * LMAP_ENOMEM. */
int codec_untransform(const codec_shape *s, const uint8_t *raw, labelmap *out,
                      diag *d);

/* Rounds every score of `m` in place to what the encoding stores, so that a
 * caller can compare against exactly what a reader will see. */
void codec_round_scores(const codec_shape *s, labelmap *m);

/* Trains a zstd dictionary from `count` transformed samples laid end to end
 * in `raws` (each codec_raw_size(s) bytes), for records written at zstd
 * level `level` (the candidates are judged at that level: which one wins
 * depends on it). Writes at most `cap` bytes to
 * `dict` and its size to `*dict_len`. Returns 0, or LMAP_EINVAL when the
 * samples are too few or too alike to train on (the caller then stores
 * without a dictionary: *dict_len == 0 is a valid outcome of a caller's
 * fallback, never of a successful return), or LMAP_ENOMEM. The dictionary
 * serves the records' head frames. Up to 16 KiB of `cap` is used: entropy
 * tables alone (about 140 bytes) unless a 16 KiB content dictionary
 * measures smaller on held-out samples. */
int codec_train_dict(const codec_shape *s, const uint8_t *raws, size_t count,
                     int level, void *dict, size_t cap, size_t *dict_len,
                     diag *d);

typedef struct codec_ctx codec_ctx;

/* Whether contexts created from now on may decode scores with AVX2
 * kernels where the CPU has them (default: yes). Both kernels decode
 * alike; tests turn AVX2 off to check the portable kernels on machines
 * that have it. Not thread-safe: call before creating contexts. */
void codec_allow_avx2(int allow);

/* zstd levels of the head frame (the tail's is fixed). Records of any
 * level decode alike and at about the same speed; the level trades
 * encoding time for size. The default writes the smallest stores: from
 * level 14 on, zstd parses optimally, which finds what a content
 * dictionary shares with a record; on 15x15x5 maps that saves about 60
 * bytes a record (3%) for about 15x the encoding time (import: 5x). FAST
 * is for stores written often (tests) or in a hurry. docs/STORE_FORMAT.md
 * §11 has the figures. */
#define CODEC_LEVEL_MIN 1
#define CODEC_LEVEL_MAX 19
#define CODEC_LEVEL_FAST 1
#define CODEC_LEVEL_DEFAULT 15

/* Returns 0 if `level` is within CODEC_LEVEL_MIN..MAX, else LMAP_EINVAL
 * with a message. */
int codec_level_check(int level, diag *d);

/* Creates a context for shape `s`, with an optional dictionary (`dict` may be
 * NULL when `dict_len` is 0; the bytes are copied). `level` is the zstd
 * compression level used by codec_encode. On failure *out is NULL.
 * Returns 0, LMAP_EINVAL (bad shape or dictionary) or LMAP_ENOMEM. */
int codec_ctx_new(const codec_shape *s, const void *dict, size_t dict_len,
                  int level, codec_ctx **out, diag *d);

/* Accepts NULL. */
void codec_ctx_free(codec_ctx *c);

/* The largest record codec_encode can produce for this shape. */
size_t codec_record_bound(const codec_ctx *c);

/* Encodes `m` into `dst` (capacity `cap`, at least codec_record_bound) and
 * sets *len. Returns 0, LMAP_ERANGE (see codec_transform), LMAP_EINVAL
 * (shape mismatch), LMAP_ENOMEM or LMAP_EINTERNAL (zstd failure, named). */
int codec_encode(codec_ctx *c, const labelmap *m, uint8_t *dst, size_t cap,
                 size_t *len, diag *d);

/* Compresses an already transformed body (codec_raw_size bytes, as
 * codec_transform wrote it). Used by the importer for records transformed
 * before the dictionary existed. */
int codec_compress_raw(codec_ctx *c, const uint8_t *raw, uint8_t *dst,
                       size_t cap, size_t *len, diag *d);

/* Decodes one record into `out`, whose arrays hold k*h*w entries (on
 * failure they hold unspecified values). Returns 0, or LMAP_ECORRUPT when
 * the record is truncated, fails a checksum, has the wrong sizes or
 * version, or decodes to a malformed class stream, a class >= C or a
 * non-finite score. */
int codec_decode(codec_ctx *c, const uint8_t *rec, size_t len, labelmap *out,
                 diag *d);

#endif /* LMAP_CODEC_H */
