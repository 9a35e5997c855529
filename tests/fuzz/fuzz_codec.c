/*
 * fuzz_codec: the record codec's decoder on any bytes, with the shape and
 * trained dictionary of a real store (made once at start-up).
 *
 * Input: one selector byte, then the bytes.
 *   bit 0 of the selector: the f16 store (9x9, top-3, 50 classes, class
 *         names) or the f32 one (15x15, top-5, 1000 classes)
 *   bit 1: 0 = a record, decoded as a lookup decodes it
 *          (store_reader_decode: both zstd frames, their checksums, the
 *          body transform); 1 = a transformed body, given straight to
 *          codec_untransform (zero-padded or cut to the body's size), so
 *          that mutations reach the class stream and the score predictor
 *          without having to pass zstd's checksums.
 * A decoded map must hold what pooling relies on: classes below C and
 * finite scores.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "store/store.h"

static store *stores[2];
static store_reader *readers[2];
static const fuzz_store_params *params[2] = {&FUZZ_STORE_F16, &FUZZ_STORE_F32};
static float *scores;
static uint32_t *classes;

static void cleanup(void) {
  for (int i = 0; i < 2; i++) {
    store_reader_free(readers[i]);
    store_close(stores[i]);
  }
  free(scores);
  free(classes);
}

static void init(void) {
  static const char *const names[2] = {"codec-f16.lmap", "codec-f32.lmap"};
  size_t most = 0;
  for (int i = 0; i < 2; i++) {
    char path[600];
    diag d;
    diag_clear(&d);
    fuzz_path(path, sizeof path, names[i]);
    fuzz_make_store(path, params[i]);
    if (store_open(path, &stores[i], &d) != 0 ||
        store_reader_new(stores[i], &readers[i], &d) != 0) {
      fprintf(stderr, "fuzz_codec: %s\n", diag_text(&d));
      abort();
    }
    size_t n = (size_t)params[i]->k * params[i]->h * params[i]->w;
    most = n > most ? n : most;
  }
  scores = malloc(most * sizeof *scores);
  classes = malloc(most * sizeof *classes);
  if (scores == NULL || classes == NULL)
    abort();
  atexit(cleanup);
}

static void check_map(const labelmap *m, const codec_shape *s) {
  if (m->k != s->k || m->h != s->h || m->w != s->w)
    abort();
  size_t n = labelmap_entries(m);
  for (size_t i = 0; i < n; i++)
    if (m->classes[i] >= s->num_classes || !isfinite(m->scores[i]))
      abort();
}

/* libFuzzer calls this before the first input: making the store (over a
 * second, more on a busy machine) then does not count against the first
 * input's timeout. driver.c does not call it; the first input does. */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  init();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (stores[0] == NULL)
    init();
  if (size < 1)
    return 0;
  int which = data[0] & 1, raw = data[0] >> 1 & 1;
  const codec_shape *s = &store_get_meta(stores[which])->shape;
  data++;
  size--;
  diag d;
  diag_clear(&d);
  labelmap m;
  int rc;
  if (!raw) {
    /* An exact-size copy: a read past the record is caught. */
    uint8_t *rec = malloc(size ? size : 1);
    if (rec == NULL)
      return 0;
    memcpy(rec, data, size);
    rc = store_reader_decode(readers[which], rec, size, &m, &d);
    free(rec);
  } else {
    size_t need = codec_raw_size(s);
    uint8_t *body = calloc(1, need);
    if (body == NULL)
      return 0;
    memcpy(body, data, size < need ? size : need);
    m = (labelmap){
        .k = s->k, .h = s->h, .w = s->w, .scores = scores, .classes = classes};
    rc = codec_untransform(s, body, &m, &d);
    free(body);
  }
  if (rc == 0)
    check_map(&m, s);
  else if (rc != LMAP_ECORRUPT || d.code != rc || d.msg[0] == '\0')
    abort();
  return 0;
}
