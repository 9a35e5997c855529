/* lmap synth: a realistic synthetic store, through the same build pipeline. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "import/build.h"
#include "import/importer.h"
#include "import/synth.h"

static const char help[] =
    "usage: lmap synth -o STORE --images N [options]\n"
    "\n"
    "Makes a synthetic store: 1-3 objects per image as spatial blobs,\n"
    "confusable neighbouring classes, background noise, logits on a real\n"
    "classifier's scale, ImageNet-style ids. Deterministic per seed.\n"
    "\n"
    "options:\n"
    "  -o, --output STORE     the store to create (required)\n"
    "  -n, --images N         number of images (required)\n"
    "  -C, --classes C        number of classes (default 1000, or the\n"
    "                         number of names in --class-names)\n"
    "      --class-names FILE names for the classes: one per line, or a\n"
    "                         JSON array (as lmap import --classes)\n"
    "  -g, --grid H[xW]       grid size (default 15)\n"
    "  -k, --topk K           entries per cell (default 5)\n"
    "  -s, --seed S           seed (default 1)\n"
    "  -e, --encoding f16|f32 score encoding (default f16)\n"
    "  -l, --level N          zstd level 1..19 (default 15, the smallest\n"
    "                         store; 1 writes about 5x faster, 3% larger)\n"
    "  -j, --threads N        worker threads (default: one per core)\n"
    "  -f, --force            replace STORE if it exists\n"
    "      --progress / --no-progress  progress line (default: on a terminal)\n"
    "\n"
    "exit status: 0 success, 1 failure, 2 usage.\n";

typedef struct synth_source {
  synth_params p;
  uint64_t images, next;
} synth_source;

typedef struct synth_worker {
  float *scores;
  uint32_t *classes;
} synth_worker;

static int synth_next(void *ctx, build_item *it, diag *d) {
  (void)d;
  synth_source *s = ctx;
  if (s->next == s->images)
    return 0;
  it->index = s->next++;
  snprintf(it->name, sizeof it->name, "synthetic image %llu",
           (unsigned long long)it->index);
  return 1;
}

static void *synth_worker_new(void *ctx) {
  synth_source *s = ctx;
  size_t n = (size_t)s->p.k * s->p.h * s->p.w;
  synth_worker *w = calloc(1, sizeof *w);
  if (w == NULL)
    return NULL;
  w->scores = malloc(n * sizeof *w->scores);
  w->classes = malloc(n * sizeof *w->classes);
  if (!w->scores || !w->classes) {
    free(w->scores);
    free(w->classes);
    free(w);
    return NULL;
  }
  return w;
}

static void synth_worker_free(void *p) {
  synth_worker *w = p;
  free(w->scores);
  free(w->classes);
  free(w);
}

/* The id is made on the worker with the map; build takes it from `it`, so
 * it is written back there (the item belongs to this worker now). */
static int synth_load(void *ctx, void *wstate, const build_item *it,
                      labelmap *out, diag *d) {
  (void)d;
  synth_source *s = ctx;
  synth_worker *w = wstate;
  out->scores = w->scores;
  out->classes = w->classes;
  char id[64];
  synth_image(&s->p, it->index, id, out);
  snprintf(((build_item *)it)->id, sizeof it->id, "%s", id);
  return 0;
}

static double synth_progress(void *ctx) {
  synth_source *s = ctx;
  return (double)s->next / (double)s->images;
}

int cmd_synth(int argc, char **argv) {
  static const struct option longopts[] = {
      {"output", required_argument, 0, 'o'},
      {"images", required_argument, 0, 'n'},
      {"classes", required_argument, 0, 'C'},
      {"grid", required_argument, 0, 'g'},
      {"topk", required_argument, 0, 'k'},
      {"seed", required_argument, 0, 's'},
      {"encoding", required_argument, 0, 'e'},
      {"level", required_argument, 0, 'l'},
      {"threads", required_argument, 0, 'j'},
      {"force", no_argument, 0, 'f'},
      {"progress", no_argument, 0, 'P'},
      {"no-progress", no_argument, 0, 'Q'},
      {"class-names", required_argument, 0, 'N'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  synth_source src = {
      .p = {.num_classes = 1000, .h = 15, .w = 15, .k = 5, .seed = 1}};
  build_opts o = {.cmd = "synth",
                  .encoding = CODEC_F16,
                  .extent = "full",
                  .progress = isatty(2),
                  .annotator = "lmap synth"};
  int have_images = 0, have_classes = 0, c;
  const char *names_file = NULL;
  optind = 1;
  while ((c = getopt_long(argc, argv, "o:n:C:g:k:s:e:l:j:fh", longopts,
                          NULL)) != -1) {
    switch (c) {
    case 'o': o.out = optarg; break;
    case 'n':
      if (cli_u64(optarg, 1, 1ull << 32, &src.images))
        return cli_usage("synth", "--images: '%s' is not a count in [1, 2^32]",
                         optarg);
      have_images = 1;
      break;
    case 'C':
      if (cli_u32(optarg, 1, LABELMAP_MAX_CLASSES, &src.p.num_classes))
        return cli_usage("synth", "--classes: '%s' is not in [1, %u]", optarg,
                         LABELMAP_MAX_CLASSES);
      have_classes = 1;
      break;
    case 'N': names_file = optarg; break;
    case 'g':
      if (cli_grid(optarg, &src.p.h, &src.p.w))
        return cli_usage("synth", "--grid: '%s' is not H or HxW (1..1024)",
                         optarg);
      break;
    case 'k':
      if (cli_u32(optarg, 1, LABELMAP_MAX_K, &src.p.k))
        return cli_usage("synth", "--topk: '%s' is not in [1, %u]", optarg,
                         LABELMAP_MAX_K);
      break;
    case 's':
      if (cli_u64(optarg, 0, UINT64_MAX, &src.p.seed))
        return cli_usage("synth", "--seed: '%s' is not an unsigned integer",
                         optarg);
      break;
    case 'e':
    case 'l':
    case 'j':
      if (cli_build_option("synth", c, optarg, &o) != EXIT_OK)
        return EXIT_USAGE;
      break;
    case 'f': o.overwrite = 1; break;
    case 'P': o.progress = true; break;
    case 'Q': o.progress = false; break;
    case 'h': fputs(help, stdout); return EXIT_OK;
    default: return cli_usage("synth", "bad option");
    }
  }
  if (optind != argc)
    return cli_usage("synth", "unexpected argument '%s'", argv[optind]);
  if (o.out == NULL || !have_images)
    return cli_usage("synth", "-o STORE and --images N are required");
  diag d;
  diag_clear(&d);
  char *names_json = NULL;
  if (names_file) {
    uint32_t named;
    if (importer_read_classes(names_file, &names_json, &named, &d))
      return cli_fail("synth", &d);
    if (have_classes && named != src.p.num_classes) {
      free(names_json);
      return cli_usage("synth", "--classes %u but %s names %u classes",
                       src.p.num_classes, names_file, named);
    }
    src.p.num_classes = named;
    o.classes_json = names_json;
  }
  if (synth_check(&src.p, &d)) {
    free(names_json);
    return cli_usage("synth", "%s", diag_text(&d));
  }
  o.num_classes = src.p.num_classes;
  char desc[128];
  snprintf(desc, sizeof desc, "lmap synth --seed %llu",
           (unsigned long long)src.p.seed);
  o.source_desc = desc;

  build_source bs = {.ctx = &src,
                     .next = synth_next,
                     .worker_new = synth_worker_new,
                     .worker_free = synth_worker_free,
                     .load = synth_load,
                     .progress = synth_progress};
  build_stats st;
  int rc = build_run(&o, &bs, &st, &d);
  free(names_json);
  if (rc)
    return cli_fail("synth", &d);
  fprintf(stderr,
          "lmap synth: %llu records in %.2fs, %.0f records/s, %.0f bytes/record"
          " -> %s\n",
          (unsigned long long)st.records, st.seconds,
          st.seconds > 0 ? (double)st.records / st.seconds : 0,
          (double)st.store_bytes / (double)st.records, o.out);
  return EXIT_OK;
}
