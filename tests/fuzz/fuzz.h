/*
 * fuzz: what the fuzz targets of tests/fuzz share.
 *
 * Each fuzz_<name>.c defines LLVMFuzzerTestOneInput. Built with clang and
 * -fsanitize=fuzzer (cmake -DLMAP_FUZZ=ON, tests/fuzz/run.sh) it is a
 * libFuzzer binary; built with driver.c by any compiler it is a plain
 * program that runs the target once on every file of its corpus and
 * regression folders (the ctest tests unit.fuzz_<name>), so that every
 * input that ever crashed stays fixed.
 *
 * A target that needs a store (the API, the record codec) makes a small
 * one through the real build pipeline once, in LLVMFuzzerInitialize under
 * libFuzzer (at the first input under driver.c), in a directory of its own
 * under $TMPDIR that is removed at exit.
 */
#ifndef LMAP_FUZZ_H
#define LMAP_FUZZ_H

#include <stddef.h>
#include <stdint.h>

#include "store/codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* This process's scratch directory (created on the first call, removed
 * with its files at exit). Aborts when it cannot be made: a fuzz target
 * without its fixtures must not run as if it had them. */
const char *fuzz_tmpdir(void);

/* `name` inside fuzz_tmpdir(), in a static buffer per call site's choice:
 * writes at most `cap` bytes to `out` and returns it. */
char *fuzz_path(char *out, size_t cap, const char *name);

/* Writes `len` bytes to `path` (replacing it). Aborts on failure. */
void fuzz_write_file(const char *path, const void *data, size_t len);

/* The stores the targets serve and decode: a deterministic synthetic
 * dataset (synth.h) written by the build pipeline with one thread, so the
 * same parameters give the same bytes, dictionary included. */
typedef struct fuzz_store_params {
  uint64_t images;
  uint32_t num_classes, h, w, k;
  codec_encoding encoding;
  int class_names; /* store class names "c0", "c1", ... */
} fuzz_store_params;

/* The parameters every target uses (the committed seeds match them). */
extern const fuzz_store_params FUZZ_STORE_F16, FUZZ_STORE_F32;

/* Writes a store at `path`. Aborts on failure. */
void fuzz_make_store(const char *path, const fuzz_store_params *p);

/* Image `index`'s id in the stores above (synth_image's id). */
void fuzz_store_id(const fuzz_store_params *p, uint64_t index, char id[64]);

#endif /* LMAP_FUZZ_H */
