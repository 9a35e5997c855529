/* fuzz_common: scratch files and the synthetic stores of the fuzz targets
 * (see fuzz.h). */
#include "fuzz.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "import/build.h"
#include "import/synth.h"

/* Small enough that a store is made in well under a second and that the
 * largest answer (64 x 64 cells of every class) stays a few MB; large
 * enough for several chunks and a trained dictionary. */
const fuzz_store_params FUZZ_STORE_F16 = {200, 50, 9, 9, 3, CODEC_F16, 1};
const fuzz_store_params FUZZ_STORE_F32 = {100, 1000, 15, 15, 5, CODEC_F32, 0};

static char tmpdir[512];

static void remove_tmpdir(void) {
  DIR *dh = opendir(tmpdir);
  if (dh == NULL)
    return;
  struct dirent *e;
  char path[1024];
  while ((e = readdir(dh)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    snprintf(path, sizeof path, "%s/%s", tmpdir, e->d_name);
    unlink(path);
  }
  closedir(dh);
  rmdir(tmpdir);
}

const char *fuzz_tmpdir(void) {
  if (tmpdir[0])
    return tmpdir;
  const char *base = getenv("TMPDIR");
  snprintf(tmpdir, sizeof tmpdir, "%s/lmap-fuzz.XXXXXX",
           base && base[0] ? base : "/tmp");
  if (mkdtemp(tmpdir) == NULL) {
    perror(tmpdir);
    abort();
  }
  atexit(remove_tmpdir);
  return tmpdir;
}

char *fuzz_path(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/%s", fuzz_tmpdir(), name);
  return out;
}

void fuzz_write_file(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  if (f == NULL || (len && fwrite(data, 1, len, f) != len) || fclose(f)) {
    perror(path);
    abort();
  }
}

/* ---- the synthetic stores: cmd_synth's source, in miniature ---- */

typedef struct source {
  synth_params p;
  uint64_t images, next;
} source;

typedef struct worker {
  float *scores;
  uint32_t *classes;
} worker;

static int next(void *ctx, build_item *it, diag *d) {
  (void)d;
  source *s = ctx;
  if (s->next == s->images)
    return 0;
  it->index = s->next++;
  snprintf(it->name, sizeof it->name, "image %llu",
           (unsigned long long)it->index);
  return 1;
}

static void *worker_new(void *ctx) {
  source *s = ctx;
  size_t n = (size_t)s->p.k * s->p.h * s->p.w;
  worker *w = calloc(1, sizeof *w);
  if (w == NULL || (w->scores = malloc(n * sizeof *w->scores)) == NULL ||
      (w->classes = malloc(n * sizeof *w->classes)) == NULL)
    abort();
  return w;
}

static void worker_free(void *p) {
  worker *w = p;
  free(w->scores);
  free(w->classes);
  free(w);
}

static int load(void *ctx, void *wstate, const build_item *it, labelmap *out,
                diag *d) {
  (void)d;
  source *s = ctx;
  worker *w = wstate;
  out->scores = w->scores;
  out->classes = w->classes;
  char id[64];
  synth_image(&s->p, it->index, id, out);
  /* The item is this worker's now; build takes the id from it. */
  snprintf(((build_item *)it)->id, sizeof it->id, "%s", id);
  return 0;
}

void fuzz_make_store(const char *path, const fuzz_store_params *p) {
  source src = {{p->num_classes, p->h, p->w, p->k, 7}, p->images, 0};
  char *names = NULL;
  if (p->class_names) {
    size_t cap = (size_t)p->num_classes * 16 + 8, at = 0;
    names = malloc(cap);
    if (names == NULL)
      abort();
    at += (size_t)snprintf(names, cap, "[");
    for (uint32_t c = 0; c < p->num_classes; c++)
      at +=
          (size_t)snprintf(names + at, cap - at, "%s\"c%u\"", c ? "," : "", c);
    snprintf(names + at, cap - at, "]");
  }
  build_opts o = {.cmd = "synth",
                  .out = path,
                  .overwrite = 1,
                  .num_classes = p->num_classes,
                  .encoding = p->encoding,
                  .level = CODEC_LEVEL_FAST,
                  .threads = 1,
                  .source_desc = "tests/fuzz",
                  .annotator = "lmap synth",
                  .extent = "full",
                  .classes_json = names};
  build_source bs = {.ctx = &src,
                     .next = next,
                     .worker_new = worker_new,
                     .worker_free = worker_free,
                     .load = load};
  build_stats st;
  diag d;
  diag_clear(&d);
  if (build_run(&o, &bs, &st, &d) != 0) {
    fprintf(stderr, "fuzz: cannot make the store %s: %s\n", path,
            diag_text(&d));
    abort();
  }
  free(names);
}

void fuzz_store_id(const fuzz_store_params *p, uint64_t index, char id[64]) {
  size_t n = (size_t)p->k * p->h * p->w;
  float *scores = malloc(n * sizeof *scores);
  uint32_t *classes = malloc(n * sizeof *classes);
  if (scores == NULL || classes == NULL)
    abort();
  synth_params sp = {p->num_classes, p->h, p->w, p->k, 7};
  labelmap m = {
      .k = p->k, .h = p->h, .w = p->w, .scores = scores, .classes = classes};
  synth_image(&sp, index, id, &m);
  free(scores);
  free(classes);
}
