/* lmap import: the official release (or any [2,K,H,W] .pt set) -> store. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "import/importer.h"

static const char help[] =
    "usage: lmap import SRC... -o STORE [options]\n"
    "\n"
    "Imports label maps saved with torch.save (zip or legacy format; float32,\n"
    "float16 or bfloat16; shape [2, K, H, W]: plane 0 scores, plane 1 class\n"
    "indices) into a new store. Each SRC is a directory tree of .pt files, a\n"
    ".tar of them (optionally compressed), - for a tar on stdin, or an lmap\n"
    "store, whose maps are copied (merging stores); the sources are read one\n"
    "after the other, and an id in two of them is an error. The id of each\n"
    "map is its file name without .pt. The store appears only when the\n"
    "import succeeds.\n"
    "\n"
    "options:\n"
    "  -o, --output STORE        the store to create (required)\n"
    "  -C, --num-classes C       number of classes (default 1000, or the\n"
    "                            number of names in --classes, or the first\n"
    "                            store SRC's, whose names it takes too)\n"
    "      --classes FILE        class names: one per line, or a JSON array\n"
    "  -e, --encoding f16|f32    score encoding (default f16)\n"
    "  -l, --level N             zstd level 1..19 (default 15, the smallest\n"
    "                            store; 1 writes about 5x faster, 3% larger)\n"
    "      --skip-bad            report bad files and go on (default: fail)\n"
    "  -j, --threads N           worker threads (default: one per core)\n"
    "  -f, --force               replace STORE if it exists\n"
    "      --source TEXT         where the maps come from (metadata)\n"
    "      --annotator TEXT      the model that made them (metadata)\n"
    "      --extent full|center_crop  what the map covers (default full)\n"
    "      --progress / --no-progress  progress line (default: on a terminal)\n"
    "\n"
    "exit status: 0 success, 1 a bad file or I/O failure (named), 2 usage.\n";

int cmd_import(int argc, char **argv) {
  enum {
    O_CLASSES = 256,
    O_SKIP,
    O_SOURCE,
    O_ANNOT,
    O_EXTENT,
    O_PROG,
    O_NOPROG
  };
  static const struct option longopts[] = {
      {"output", required_argument, 0, 'o'},
      {"num-classes", required_argument, 0, 'C'},
      {"classes", required_argument, 0, O_CLASSES},
      {"encoding", required_argument, 0, 'e'},
      {"level", required_argument, 0, 'l'},
      {"skip-bad", no_argument, 0, O_SKIP},
      {"threads", required_argument, 0, 'j'},
      {"force", no_argument, 0, 'f'},
      {"source", required_argument, 0, O_SOURCE},
      {"annotator", required_argument, 0, O_ANNOT},
      {"extent", required_argument, 0, O_EXTENT},
      {"progress", no_argument, 0, O_PROG},
      {"no-progress", no_argument, 0, O_NOPROG},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  build_opts o = {.cmd = "import",
                  .encoding = CODEC_F16,
                  .extent = "full",
                  .progress = isatty(2)};
  const char *classes_file = NULL;
  uint32_t num_classes = 0;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "o:C:e:l:j:fh", longopts, NULL)) != -1) {
    switch (c) {
    case 'o': o.out = optarg; break;
    case 'C':
      if (cli_u32(optarg, 1, LABELMAP_MAX_CLASSES, &num_classes))
        return cli_usage("import",
                         "--num-classes: '%s' is not an integer in [1, %u]",
                         optarg, LABELMAP_MAX_CLASSES);
      break;
    case O_CLASSES: classes_file = optarg; break;
    case 'e':
    case 'l':
    case 'j':
      if (cli_build_option("import", c, optarg, &o) != EXIT_OK)
        return EXIT_USAGE;
      break;
    case O_SKIP: o.skip_bad = true; break;
    case 'f': o.overwrite = 1; break;
    case O_SOURCE: o.source_desc = optarg; break;
    case O_ANNOT: o.annotator = optarg; break;
    case O_EXTENT:
      if (strcmp(optarg, "full") && strcmp(optarg, "center_crop"))
        return cli_usage("import", "--extent: '%s' is not full or center_crop",
                         optarg);
      o.extent = optarg;
      break;
    case O_PROG: o.progress = true; break;
    case O_NOPROG: o.progress = false; break;
    case 'h': fputs(help, stdout); return EXIT_OK;
    default: return cli_usage("import", "bad option");
    }
  }
  if (optind == argc)
    return cli_usage("import", "missing SRC");
  if (o.out == NULL)
    return cli_usage("import", "missing -o STORE");
  const char *const *srcs = (const char *const *)argv + optind;
  size_t nsrc = (size_t)(argc - optind);
  for (size_t i = 0; i < nsrc; i++)
    for (size_t j = 0; j < i; j++)
      if (strcmp(srcs[i], "-") == 0 && strcmp(srcs[j], "-") == 0)
        return cli_usage("import", "stdin (-) given twice");
  const char *src = srcs[0];

  diag d;
  diag_clear(&d);
  char *classes_json = NULL;
  if (classes_file) {
    uint32_t named;
    if (importer_read_classes(classes_file, &classes_json, &named, &d))
      return cli_fail("import", &d);
    if (num_classes && num_classes != named) {
      free(classes_json);
      return cli_usage("import", "--num-classes %u but %s names %u classes",
                       num_classes, classes_file, named);
    }
    num_classes = named;
  }
  /* Without -C or --classes, a store source decides both. */
  for (size_t i = 0; !num_classes && i < nsrc; i++)
    if (importer_is_store(srcs[i]) &&
        importer_store_classes(srcs[i], &num_classes, &classes_json, &d))
      return cli_fail("import", &d);
  o.num_classes = num_classes ? num_classes : 1000;
  o.classes_json = classes_json;
  o.input = strcmp(src, "-") ? src : "<stdin>";
  if (o.source_desc == NULL)
    o.source_desc = src;

  build_stats st;
  int rc = importer_run(srcs, nsrc, &o, &st, &d);
  free(classes_json);
  if (rc)
    return cli_fail("import", &d);
  fprintf(stderr,
          "lmap import: %llu records (%llu skipped) in %.2fs, %.0f records/s, "
          "%.0f bytes/record, max prob error of %s %.3g -> %s\n",
          (unsigned long long)st.records, (unsigned long long)st.skipped,
          st.seconds, st.seconds > 0 ? (double)st.records / st.seconds : 0,
          st.records ? (double)st.store_bytes / (double)st.records : 0,
          codec_encoding_name(o.encoding), st.max_prob_error, o.out);
  return EXIT_OK;
}
