/* lmap info / ids / get / export: read-only views of a store. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "pool/itemjson.h"
#include "pool/mapsvg.h"
#include "pool/npy.h"
#include "pool/pool.h"
#include "pool/queryopt.h"
#include "queryfile.h"
#include "shared/dynbuf.h"
#include "store/store.h"

static int open_store(const char *cmd, const char *path, store **s) {
  diag d;
  diag_clear(&d);
  if (store_open(path, s, &d))
    return cli_fail(cmd, &d);
  return EXIT_OK;
}

/* ---- info ---- */

static const char info_help[] =
    "usage: lmap info STORE [--json]\n"
    "\n"
    "Shows the store's metadata: shape, classes, encoding and its measured\n"
    "error, record count, score statistics, provenance.\n";

static void print_value(const char *key, json_t *v, int indent) {
  printf("%*s%-26s ", indent, "", key);
  if (json_is_string(v))
    printf("%s\n", json_string_value(v));
  else if (json_is_integer(v))
    printf("%lld\n", (long long)json_integer_value(v));
  else if (json_is_real(v))
    printf("%.6g\n", json_real_value(v));
  else if (json_is_boolean(v))
    printf("%s\n", json_is_true(v) ? "yes" : "no");
  else if (json_is_object(v)) {
    printf("\n");
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x) print_value(k, x, indent + 2);
  } else {
    char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    printf("%s\n", t ? t : "?");
    free(t);
  }
}

int cmd_info(int argc, char **argv) {
  int as_json = 0;
  const char *path = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--json") == 0)
      as_json = 1;
    else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      fputs(info_help, stdout);
      return EXIT_OK;
    } else if (argv[i][0] == '-' && argv[i][1])
      return cli_usage("info", "unknown option '%s'", argv[i]);
    else if (path)
      return cli_usage("info", "one STORE expected");
    else
      path = argv[i];
  }
  if (path == NULL)
    return cli_usage("info", "missing STORE");
  store *s;
  int rc = open_store("info", path, &s);
  if (rc)
    return rc;
  json_t *meta = store_info(s);
  if (meta == NULL) {
    store_close(s);
    fprintf(stderr, "lmap info: %s: out of memory\n", path);
    return EXIT_FAIL;
  }
  json_object_set_new(meta, "path", json_string(path));
  if (as_json) {
    char *t = json_dumps(meta, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
    puts(t ? t : "{}");
    free(t);
  } else {
    const char *k;
    json_t *v;
    json_object_foreach(meta, k, v) print_value(k, v, 0);
  }
  json_decref(meta);
  store_close(s);
  return EXIT_OK;
}

/* ---- ids ---- */

static int print_id(void *ctx, const char *id, size_t id_len,
                    const uint8_t *rec, size_t rec_len) {
  (void)ctx;
  (void)rec;
  (void)rec_len;
  fwrite(id, 1, id_len, stdout);
  return putchar('\n') == EOF ? LMAP_EIO : 0;
}

int cmd_ids(int argc, char **argv) {
  if (argc == 2 &&
      (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
    fputs(
        "usage: lmap ids STORE\n\nPrints every image id, one per line, in key order.\n",
        stdout);
    return EXIT_OK;
  }
  if (argc != 2 || argv[1][0] == '-')
    return cli_usage("ids", "expected exactly one STORE");
  store *s;
  int rc = open_store("ids", argv[1], &s);
  if (rc)
    return rc;
  diag d;
  diag_clear(&d);
  rc = store_foreach(s, print_id, NULL, &d);
  store_close(s);
  if (rc && d.msg[0] == '\0') /* print_id's failure: stdout */
    diag_set(&d, rc, "stdout: %s", strerror(errno));
  return rc ? cli_fail("ids", &d) : EXIT_OK;
}

/* ---- get ---- */

static const char get_help[] =
    "usage: lmap get STORE ID --box A,B,C,D [options]\n"
    "       lmap get STORE --queries FILE [options]\n"
    "\n"
    "Pools the stored map of ID over a box (RoIAlign as torchvision defines\n"
    "it, then softmax) and prints the JSON item the server returns.\n"
    "\n"
    "options:\n"
    "  -b, --box A,B,C,D          the box (see --box-format)\n"
    "      --box-format xyxy|relabel\n"
    "                             xyxy (default): normalized [x0, y0, x1, y1];\n"
    "                             relabel: the official (i/H, j/W, h/H, w/W)\n"
    "                             tuple, pooled exactly as the official code\n"
    "                             does (its diagonal mirror included)\n"
    "  -G, --output-size G        output grid G x G (default 1)\n"
    "      --flip                 the crop was flipped: mirror the grid\n"
    "      --format dense|sparse  C values per cell, or the non-zero classes\n"
    "                             with 'rest' for every other (default dense)\n"
    "      --no-softmax           print the pooled logits\n"
    "  -q, --queries FILE         JSON lines {\"id\", \"box\", \"flip\",\n"
    "                             \"output_size\", \"box_format\", \"format\",\n"
    "                             \"softmax\"} (- for stdin); one item per line\n";

typedef struct get_ctx {
  store *s;
  store_reader *r;
  pool_ws *ws;
  float *dense;
  size_t dense_cap;
  dynbuf out;
  uint32_t num_classes;
  const char *path; /* the store, for messages */
} get_ctx;

/* Pools one query and prints its item on its own line. */
static int run_query(get_ctx *g, const char *id, const pool_query *q,
                     itemjson_format fmt, diag *d) {
  int rc = labelmap_id_check(id, strlen(id), d);
  if (rc == 0)
    rc = pool_check_query(q, d);
  if (rc)
    return rc;
  labelmap m;
  rc = store_reader_get(g->r, id, strlen(id), &m, d);
  if (rc) {
    diag_prefix(d, g->path);
    return rc;
  }
  size_t need = (size_t)q->output_size * q->output_size * g->num_classes;
  /* A dense item costs about 12 bytes per value: refuse before spending
   * memory on an answer the output buffer's cap would refuse anyway. */
  if (fmt == ITEM_DENSE && need > g->out.max / 12)
    return diag_field(d, LMAP_ETOOBIG, "output_size",
                      "a dense answer of %u x %u cells x %u classes is too "
                      "large; use --format sparse or a smaller output size",
                      q->output_size, q->output_size, g->num_classes);
  if (fmt == ITEM_DENSE && need > g->dense_cap) {
    float *p = realloc(g->dense, need * sizeof *p);
    if (p == NULL)
      return diag_set(d, LMAP_ENOMEM, "out of memory");
    g->dense = p;
    g->dense_cap = need;
  }
  lmap_dynbuf_reset(&g->out);
  rc = itemjson_write(&g->out, id, &m, g->num_classes, q, fmt, g->ws, g->dense);
  if (rc)
    return diag_set(d, rc, "cannot format the item: %s", lmap_strerror(rc));
  fwrite(g->out.data, 1, g->out.len, stdout);
  putchar('\n');
  return 0;
}

/* One line of a --queries file. */
static int run_line(void *ctx, const queryline *l, diag *d) {
  return run_query(ctx, l->id, &l->q, l->fmt, d);
}

int cmd_get(int argc, char **argv) {
  static const struct option longopts[] = {
      QUERY_LONGOPTS,
      {"queries", required_argument, 0, 'q'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  pool_query q = {{0, 0, 1, 1}, POOL_BOX_XYXY, 1, false, true};
  itemjson_format fmt = ITEM_DENSE;
  const char *queries = NULL;
  int have_box = 0, c, rc;
  optind = 1;
  while ((c = getopt_long(argc, argv, "b:G:q:h", longopts, NULL)) != -1) {
    if ((rc = query_flag("get", c, optarg, &q, &fmt, &have_box)) >= 0) {
      if (rc)
        return rc;
      continue;
    }
    switch (c) {
    case 'q': queries = optarg; break;
    case 'h': fputs(get_help, stdout); return EXIT_OK;
    default: return cli_usage("get", "bad option");
    }
  }
  int nargs = argc - optind;
  if (queries ? nargs != 1 : nargs != 2)
    return cli_usage("get", queries ? "expected STORE with --queries"
                                    : "expected STORE and ID");
  if (!queries && !have_box)
    return cli_usage("get", "missing --box A,B,C,D");
  diag qd;
  if (!queries && pool_check_query(&q, &qd))
    return cli_usage("get", "%s", diag_text(&qd));

  get_ctx g = {0};
  lmap_dynbuf_init(&g.out, (size_t)1 << 30);
  g.path = argv[optind];
  rc = open_store("get", g.path, &g.s);
  if (rc)
    return rc;
  g.num_classes = store_get_meta(g.s)->shape.num_classes;
  diag d;
  diag_clear(&d);
  g.ws = pool_ws_new(g.num_classes);
  if (g.ws == NULL) {
    diag_set(&d, LMAP_ENOMEM, "out of memory");
    rc = cli_fail("get", &d);
  } else if (store_reader_new(g.s, &g.r, &d)) {
    rc = cli_fail("get", &d);
  } else if (queries) {
    rc = queryfile_run("get", queries, &q, fmt, run_line, &g);
  } else if (run_query(&g, argv[optind + 1], &q, fmt, &d)) {
    rc = cli_fail("get", &d);
  }
  store_reader_free(g.r);
  pool_ws_free(g.ws);
  free(g.dense);
  lmap_dynbuf_free(&g.out);
  store_close(g.s);
  return rc;
}

/* Writes `b` to the file `path` (`-`: stdout); a file that cannot be
 * written whole is removed. Returns 0 or LMAP_EIO with `d` naming it. */
static int write_output(const char *path, const dynbuf *b, diag *d) {
  if (strcmp(path, "-") == 0)
    return fwrite(b->data, 1, b->len, stdout) == b->len && fflush(stdout) == 0
               ? 0
               : diag_set(d, LMAP_EIO, "stdout: %s", strerror(errno));
  FILE *f = fopen(path, "wb");
  int bad = f == NULL || fwrite(b->data, 1, b->len, f) != b->len;
  int err = errno;
  if ((f && fclose(f) != 0) || bad) {
    diag_set(d, LMAP_EIO, "%s: cannot write the file: %s", path,
             strerror(bad ? err : errno));
    if (f)
      remove(path); /* nothing partial left behind */
    return LMAP_EIO;
  }
  return 0;
}

/* ---- export ---- */

int cmd_export(int argc, char **argv) {
  static const struct option longopts[] = {
      {"output", required_argument, 0, 'o'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  const char *out = NULL;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
    if (c == 'o')
      out = optarg;
    else if (c == 'h') {
      fputs(
          "usage: lmap export STORE ID -o FILE.npy\n\n"
          "Writes the stored map of ID as a float32 [2, K, H, W] .npy: plane 0\n"
          "the scores as stored (f16 stores: the rounded values), plane 1 the\n"
          "class indices, the official tensor layout.\n",
          stdout);
      return EXIT_OK;
    } else
      return cli_usage("export", "bad option");
  }
  if (argc - optind != 2 || out == NULL)
    return cli_usage("export", "expected STORE ID -o FILE.npy");
  const char *id = argv[optind + 1];
  store *s;
  int rc = open_store("export", argv[optind], &s);
  if (rc)
    return rc;
  diag d;
  diag_clear(&d);
  store_reader *r = NULL;
  dynbuf b;
  lmap_dynbuf_init(&b, (size_t)1 << 31);
  labelmap m;
  if (labelmap_id_check(id, strlen(id), &d) || store_reader_new(s, &r, &d) ||
      store_reader_get(r, id, strlen(id), &m, &d)) {
    if (d.code != LMAP_EBADID)
      diag_prefix(&d, argv[optind]);
    rc = cli_fail("export", &d);
    goto done;
  }
  size_t shape[4] = {2, m.k, m.h, m.w};
  size_t cells = (size_t)m.h * m.w;
  if (npy_header_f32(&b, shape, 4) ||
      lmap_dynbuf_reserve(&b, 2 * labelmap_entries(&m) * sizeof(float))) {
    diag_set(&d, LMAP_ENOMEM, "out of memory");
    rc = cli_fail("export", &d);
    goto done;
  }
  /* Cell-major in memory, [plane][k][row][col] in the file. */
  for (int plane = 0; plane < 2; plane++)
    for (uint32_t k = 0; k < m.k; k++)
      for (size_t cell = 0; cell < cells; cell++) {
        size_t i = cell * m.k + k;
        float v = plane == 0 ? m.scores[i] : (float)m.classes[i];
        lmap_dynbuf_add(&b, &v, sizeof v);
      }
  if (write_output(out, &b, &d))
    rc = cli_fail("export", &d);
done:
  lmap_dynbuf_free(&b);
  store_reader_free(r);
  store_close(s);
  return rc;
}

/* ---- render ---- */

static const char render_help[] =
    "usage: lmap render STORE ID -o FILE.svg [--box A,B,C,D] [options]\n"
    "\n"
    "Draws the stored map of ID as SVG: each cell in its top-1 class's colour,\n"
    "darker when surer, with row and column numbers and a legend of the\n"
    "classes (names when the store has them). With --box: the box, for\n"
    "relabel boxes also the region the official code pools (dashed), the\n"
    "G x G token grid, and the pooled soft label's top 5 as bars.\n"
    "\n"
    "options:\n"
    "  -o, --output FILE.svg      where to write (- for stdout)\n"
    "  -b, --box A,B,C,D          the box (see --box-format)\n"
    "      --box-format xyxy|relabel\n"
    "  -G, --output-size G        the token grid G x G (default 1)\n"
    "      --flip                 the crop was flipped\n";

int cmd_render(int argc, char **argv) {
  static const struct option longopts[] = {
      QUERY_LONGOPTS,
      {"output", required_argument, 0, 'o'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  pool_query q = {{0, 0, 1, 1}, POOL_BOX_XYXY, 1, false, true};
  itemjson_format fmt = ITEM_DENSE;
  const char *out = NULL;
  int have_box = 0, c, rc;
  optind = 1;
  while ((c = getopt_long(argc, argv, "b:G:o:h", longopts, NULL)) != -1) {
    if ((rc = query_flag("render", c, optarg, &q, &fmt, &have_box)) >= 0) {
      if (rc)
        return rc;
      continue;
    }
    switch (c) {
    case 'o': out = optarg; break;
    case 'h': fputs(render_help, stdout); return EXIT_OK;
    default: return cli_usage("render", "bad option");
    }
  }
  if (argc - optind != 2 || out == NULL)
    return cli_usage("render", "expected STORE ID -o FILE.svg");
  diag d;
  if (have_box && pool_check_query(&q, &d))
    return cli_usage("render", "%s", diag_text(&d));
  const char *id = argv[optind + 1];
  store *s;
  if ((rc = open_store("render", argv[optind], &s)) != 0)
    return rc;
  diag_clear(&d);
  store_reader *r = NULL;
  uint32_t C = store_get_meta(s)->shape.num_classes;
  pool_ws *ws = pool_ws_new(C);
  dynbuf b;
  lmap_dynbuf_init(&b, (size_t)1 << 30);
  labelmap m;
  if (labelmap_id_check(id, strlen(id), &d) || store_reader_new(s, &r, &d) ||
      store_reader_get(r, id, strlen(id), &m, &d)) {
    if (d.code != LMAP_EBADID)
      diag_prefix(&d, argv[optind]);
    rc = cli_fail("render", &d);
  } else {
    mapsvg_input in = {id, &m, C, store_class_names(s), have_box ? &q : NULL};
    int err = ws ? mapsvg_write(&b, &in, ws) : LMAP_ENOMEM;
    if (err)
      diag_set(&d, err, "cannot draw the map: %s", lmap_strerror(err));
    if (err || write_output(out, &b, &d))
      rc = cli_fail("render", &d);
  }
  lmap_dynbuf_free(&b);
  pool_ws_free(ws);
  store_reader_free(r);
  store_close(s);
  return rc;
}
