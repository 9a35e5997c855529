/*
 * lmap query: the CLI as a client of lmapd, built on liblmap. Prints the
 * same JSON items as `lmap get` prints from a local store (one line per
 * query, 9 significant digits), so the two can be compared byte for byte.
 * A --batch file is sent in requests of up to --batch-size consecutive
 * queries that share their options.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/labelmap.h"
#include "lmap/client.h"
#include "pool/itemjson.h"
#include "pool/npy.h"
#include "pool/queryopt.h"
#include "queryfile.h"
#include "shared/dynbuf.h"

#define DEFAULT_BATCH 256u
#define MAX_BATCH 65536u

static const char query_help[] =
    "usage: lmap query URLS ID --box A,B,C,D [options]\n"
    "       lmap query URLS --batch FILE.jsonl [options]\n"
    "       lmap query URLS --info\n"
    "       lmap query [URLS] --ready\n"
    "       lmap query URLS --map ID -o FILE.npy\n"
    "\n"
    "Asks lmapd for soft labels and prints the JSON items `lmap get` prints.\n"
    "URLS is one base URL or a comma-separated list (http://HOST:PORT,...):\n"
    "a failed server is retried on the next one.\n"
    "\n"
    "options:\n"
    "  -b, --box A,B,C,D          the crop box (see --box-format)\n"
    "      --box-format xyxy|relabel\n"
    "                             xyxy: corners as fractions of width and height\n"
    "                             (default); relabel: the official tuple\n"
    "  -G, --output-size G        a G x G grid of labels (default 1)\n"
    "      --flip                 the crop was flipped\n"
    "      --format dense|sparse  all C values, or the non-zero classes (default dense)\n"
    "      --no-softmax           the pooled logits\n"
    "  -q, --batch FILE           JSON lines as for `lmap get --queries` (- for stdin)\n"
    "      --batch-size N         queries per request (default 256)\n"
    "      --info                 print the server's store description (JSON)\n"
    "      --ready                exit 0 when a server answers /readyz 200, 1 with\n"
    "                             its reason otherwise (a health check); without\n"
    "                             URLS, this host's lmapd: the address LMAPD_LISTEN\n"
    "                             names (0.0.0.0 asked as 127.0.0.1, [::] as [::1]),\n"
    "                             else 127.0.0.1:8080; https when LMAPD_TLS_CERT is\n"
    "                             set, verified against that certificate\n"
    "      --map ID               fetch a raw map as float32 [2,K,H,W]; needs -o\n"
    "  -o, --output FILE.npy      where --map writes\n"
    "      --token-file PATH      bearer token: the file's first line\n"
    "      --cacert FILE          CA certificates (PEM) for https servers\n"
    "                             (default: the system's)\n"
    "      --timeout SEC          per request (default 30)\n"
    "      --connect-timeout SEC  per connection attempt (default 2)\n"
    "      --retries N            extra passes over the servers (default 1)\n";

typedef struct query_ctx {
  lmap_client *client;
  uint32_t num_classes; /* from /v1/info, for dense answers */
  uint32_t batch_size;
  /* The batch being gathered: queries sharing `q` and `fmt`. */
  lmap_query *queries;
  char **ids;
  unsigned long *lines;
  size_t n;
  pool_query q;
  itemjson_format fmt;
  float *dense;
  dynbuf out;
} query_ctx;

/* "lmap query: <client error>", with the line of the query at fault. */
static int client_fail(query_ctx *x, int rc) {
  lmap_error_detail e;
  lmap_client_last_error(x->client, &e);
  const char *field = e.field;
  unsigned long index;
  /* The server names a query as queries[i]: point at its line. */
  if (x->n && sscanf(field, "queries[%lu]", &index) == 1 && index < x->n)
    fprintf(stderr, "lmap query: line %lu: ", x->lines[index]);
  else
    fputs("lmap query: ", stderr);
  fprintf(stderr, "%s%s%s (%s)\n", field[0] ? field : "", field[0] ? ": " : "",
          e.message[0] ? e.message : lmap_strerror(rc), e.server_code);
  return EXIT_FAIL;
}

/* Prints the dense items of the batch from its [n, C(, G, G)] floats
 * (class-major: the classes of one cell are G*G apart). */
static int print_dense(query_ctx *x) {
  uint32_t g = x->q.output_size, cells = g * g;
  for (size_t i = 0; i < x->n; i++) {
    lmap_dynbuf_reset(&x->out);
    int rc = itemjson_write_dense(
        &x->out, x->ids[i], x->dense + i * x->num_classes * cells,
        x->num_classes, cells, 1, cells, x->q.softmax);
    rc = rc ? rc : lmap_dynbuf_addstr(&x->out, "\n");
    if (rc)
      return rc;
    fwrite(x->out.data, 1, x->out.len, stdout);
  }
  return 0;
}

/* A cell of liblmap's sparse answer as the item writer takes it (its
 * class indices were checked to be in [0, C) by liblmap). */
typedef struct sparse_item {
  const lmap_sparse *s;
  size_t i;
} sparse_item;

static int sparse_cell(void *ctx, uint32_t j, pool_cell *out) {
  const sparse_item *it = ctx;
  const lmap_sparse *s = it->s;
  size_t slot = it->i * s->cells + j, from = s->offsets[slot];
  *out = (pool_cell){(uint32_t)(s->offsets[slot + 1] - from),
                     (const uint32_t *)(s->classes + from), s->values + from,
                     s->rest[slot]};
  return 0;
}

static int print_sparse(query_ctx *x, const lmap_sparse *s) {
  for (size_t i = 0; i < x->n; i++) {
    sparse_item it = {s, i};
    lmap_dynbuf_reset(&x->out);
    int rc = itemjson_write_sparse(&x->out, x->ids[i], (uint32_t)s->cells,
                                   x->q.softmax, sparse_cell, &it);
    rc = rc ? rc : lmap_dynbuf_addstr(&x->out, "\n");
    if (rc)
      return rc;
    fwrite(x->out.data, 1, x->out.len, stdout);
  }
  return 0;
}

/* Sends the gathered batch and prints its items. */
static int flush(query_ctx *x) {
  if (x->n == 0)
    return EXIT_OK;
  lmap_label_options o = {(int)x->q.output_size,
                          x->q.box_format == POOL_BOX_RELABEL ? LMAP_BOX_RELABEL
                                                              : LMAP_BOX_XYXY,
                          x->q.softmax};
  int rc, out_rc = 0;
  if (x->fmt == ITEM_DENSE) {
    size_t len =
        x->n * x->num_classes * (size_t)o.output_size * (size_t)o.output_size;
    float *p = realloc(x->dense, len * sizeof *p);
    if (p == NULL) {
      fprintf(stderr, "lmap query: out of memory for %zu labels\n", x->n);
      return EXIT_FAIL;
    }
    x->dense = p;
    rc = lmap_client_labels(x->client, x->queries, x->n, &o, x->dense, len);
    if (rc == 0)
      out_rc = print_dense(x);
  } else {
    lmap_sparse *s = NULL;
    rc = lmap_client_sparse(x->client, x->queries, x->n, &o, &s);
    if (rc == 0)
      out_rc = print_sparse(x, s);
    lmap_sparse_free(s);
  }
  if (rc)
    return client_fail(x, rc);
  if (out_rc) {
    fprintf(stderr, "lmap query: cannot format an item: %s\n",
            lmap_strerror(out_rc));
    return EXIT_FAIL;
  }
  for (size_t i = 0; i < x->n; i++)
    free(x->ids[i]);
  x->n = 0;
  return EXIT_OK;
}

static int same_options(const query_ctx *x, const queryline *l) {
  return x->fmt == l->fmt && x->q.output_size == l->q.output_size &&
         x->q.box_format == l->q.box_format && x->q.softmax == l->q.softmax;
}

/* Adds one query to the batch, sending the batch first when it is full or
 * its options differ. */
static int add_query(void *ctx, const queryline *l, diag *d) {
  query_ctx *x = ctx; /* the line's id and box were checked (queryjson) */
  if (x->n && (x->n == x->batch_size || !same_options(x, l)) &&
      flush(x) != EXIT_OK)
    return diag_set(d, LMAP_EUNAVAILABLE,
                    "the batch ending before this line failed");
  if ((x->ids[x->n] = strdup(l->id)) == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory");
  x->queries[x->n] =
      (lmap_query){x->ids[x->n],
                   {l->q.box[0], l->q.box[1], l->q.box[2], l->q.box[3]},
                   l->q.flip};
  x->lines[x->n] = l->lineno;
  x->q = l->q;
  x->fmt = l->fmt;
  x->n++;
  return 0;
}

static int seconds_ms(const char *s, long *ms) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !(v > 0) || v > 86400)
    return -1;
  *ms = (long)(v * 1000 + 0.5) ? (long)(v * 1000 + 0.5) : 1;
  return 0;
}

/* The URL of this host's lmapd for --ready without URLS: LMAPD_LISTEN
 * (lmapd's own setting, in a URL's syntax already, [IPV6]:PORT included; a
 * wildcard host asked on loopback: [::] on ::1, which answers even where
 * [::] takes no IPv4) or lmapd's default. */
static void local_url(char *out, size_t cap) {
  const char *listen = getenv("LMAPD_LISTEN");
  const char *scheme = getenv("LMAPD_TLS_CERT") ? "https" : "http";
  if (listen == NULL || listen[0] == '\0')
    listen = "127.0.0.1:8080";
  const char *colon = strrchr(listen, ':');
  if (colon != NULL && (strncmp(listen, "0.0.0.0:", 8) == 0 || colon == listen))
    snprintf(out, cap, "%s://127.0.0.1%s", scheme, colon);
  else if (strncmp(listen, "[::]:", 5) == 0)
    snprintf(out, cap, "%s://[::1]%s", scheme, listen + 4);
  else
    snprintf(out, cap, "%s://%s", scheme, listen);
}

static int print_info(lmap_client *c) {
  char *json = NULL;
  int rc = lmap_client_info(c, NULL, &json);
  if (rc == 0)
    printf("%s\n", json);
  lmap_free(json);
  return rc;
}

/* --map ID -o FILE: the raw map as the .npy `lmap export` writes. */
static int write_map(query_ctx *x, const char *id, const char *path) {
  lmap_info info;
  int rc = lmap_client_info(x->client, &info, NULL);
  if (rc)
    return client_fail(x, rc);
  size_t len = 2 * (size_t)info.top_k * info.height * info.width;
  float *map = malloc(len * sizeof *map);
  dynbuf b;
  lmap_dynbuf_init(&b, (size_t)1 << 31);
  uint32_t shape[4];
  int status = EXIT_FAIL;
  if (map == NULL) {
    fputs("lmap query: out of memory\n", stderr);
    goto done;
  }
  if ((rc = lmap_client_map(x->client, id, map, len, shape)) != 0) {
    status = client_fail(x, rc);
    goto done;
  }
  size_t dims[4] = {shape[0], shape[1], shape[2], shape[3]};
  FILE *f = NULL;
  if (npy_header_f32(&b, dims, 4) ||
      lmap_dynbuf_add(&b, map, len * sizeof *map)) {
    fputs("lmap query: out of memory\n", stderr);
  } else if ((f = fopen(path, "wb")) == NULL ||
             fwrite(b.data, 1, b.len, f) != b.len || fclose(f) != 0) {
    fprintf(stderr, "lmap query: %s: %s\n", path, strerror(errno));
    f = NULL;
  } else {
    status = EXIT_OK;
  }
done:
  free(map);
  lmap_dynbuf_free(&b);
  return status;
}

int cmd_query(int argc, char **argv) {
  enum {
    O_BSIZE = QUERY_OPT_NEXT,
    O_INFO,
    O_READY,
    O_CACERT,
    O_MAP,
    O_TOKEN,
    O_TIMEOUT,
    O_CTIMEOUT,
    O_RETRIES
  };
  static const struct option longopts[] = {
      QUERY_LONGOPTS,
      {"batch", required_argument, 0, 'q'},
      {"batch-size", required_argument, 0, O_BSIZE},
      {"info", no_argument, 0, O_INFO},
      {"ready", no_argument, 0, O_READY},
      {"cacert", required_argument, 0, O_CACERT},
      {"map", required_argument, 0, O_MAP},
      {"output", required_argument, 0, 'o'},
      {"token-file", required_argument, 0, O_TOKEN},
      {"timeout", required_argument, 0, O_TIMEOUT},
      {"connect-timeout", required_argument, 0, O_CTIMEOUT},
      {"retries", required_argument, 0, O_RETRIES},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  query_ctx x = {.batch_size = DEFAULT_BATCH,
                 .q = {{0, 0, 1, 1}, POOL_BOX_XYXY, 1, false, true},
                 .fmt = ITEM_DENSE};
  lmap_client_options copts;
  lmap_client_options_init(&copts);
  const char *batch = NULL, *map_id = NULL, *output = NULL, *token_file = NULL;
  int have_box = 0, info = 0, ready = 0, c, rc;
  uint32_t retries;
  optind = 1;
  while ((c = getopt_long(argc, argv, "b:G:q:o:h", longopts, NULL)) != -1) {
    if ((rc = query_flag("query", c, optarg, &x.q, &x.fmt, &have_box)) >= 0) {
      if (rc)
        return rc;
      continue;
    }
    switch (c) {
    case 'q': batch = optarg; break;
    case O_BSIZE:
      if (cli_u32(optarg, 1, MAX_BATCH, &x.batch_size))
        return cli_usage("query", "--batch-size: '%s' is not in [1, %u]",
                         optarg, MAX_BATCH);
      break;
    case O_INFO: info = 1; break;
    case O_READY: ready = 1; break;
    case O_CACERT: copts.ca_file = optarg; break;
    case O_MAP: map_id = optarg; break;
    case 'o': output = optarg; break;
    case O_TOKEN: token_file = optarg; break;
    case O_TIMEOUT:
      if (seconds_ms(optarg, &copts.timeout_ms))
        return cli_usage("query", "--timeout: '%s' is not a number of seconds",
                         optarg);
      break;
    case O_CTIMEOUT:
      if (seconds_ms(optarg, &copts.connect_timeout_ms))
        return cli_usage("query",
                         "--connect-timeout: '%s' is not a number of seconds",
                         optarg);
      break;
    case O_RETRIES:
      if (cli_u32(optarg, 0, 10, &retries))
        return cli_usage("query", "--retries: '%s' is not in [0, 10]", optarg);
      copts.retries = retries ? (int)retries : -1;
      break;
    case 'h': fputs(query_help, stdout); return EXIT_OK;
    default: return cli_usage("query", "bad option");
    }
  }
  int nargs = argc - optind;
  int modes = (batch != NULL) + info + ready + (map_id != NULL);
  if (modes > 1)
    return cli_usage("query",
                     "--batch, --info, --ready and --map exclude each other");
  char here[300];
  const char *urls = nargs > 0 ? argv[optind] : NULL;
  if (ready && nargs == 0) {
    local_url(here, sizeof here);
    urls = here;
    nargs = 1;
    /* This host's lmapd serves its own certificate: trust that one. */
    if (copts.ca_file == NULL)
      copts.ca_file = getenv("LMAPD_TLS_CERT");
  }
  if (modes ? nargs != 1 : nargs != 2)
    return cli_usage("query", modes ? "expected URLS" : "expected URLS and ID");
  if (modes == 0 && !have_box)
    return cli_usage("query", "missing --box A,B,C,D");
  if (map_id && output == NULL)
    return cli_usage("query", "--map needs -o FILE.npy");
  diag d;
  if (modes == 0 &&
      (pool_check_query(&x.q, &d) ||
       labelmap_id_check(argv[optind + 1], strlen(argv[optind + 1]), &d)))
    return cli_usage("query", "%s", diag_text(&d));

  char token[LMAP_TOKEN_MAX + 1];
  if (token_file) {
    char why[LMAP_ERRBUF_SIZE + 4096];
    if (lmap_token_read(token_file, token, NULL, why, sizeof why) != 0) {
      fprintf(stderr, "lmap query: %s\n", why);
      return EXIT_FAIL;
    }
    copts.token = token;
  }
  char err[LMAP_ERRBUF_SIZE];
  rc = lmap_client_new(urls, &copts, &x.client, err);
  memset(token, 0, sizeof token);
  if (rc)
    return cli_usage("query", "%s", err);
  int status = EXIT_FAIL;
  lmap_dynbuf_init(&x.out, (size_t)1 << 30);
  x.queries = calloc(x.batch_size, sizeof *x.queries);
  x.ids = calloc(x.batch_size, sizeof *x.ids);
  x.lines = calloc(x.batch_size, sizeof *x.lines);
  lmap_info meta;
  if (x.queries == NULL || x.ids == NULL || x.lines == NULL) {
    fputs("lmap query: out of memory\n", stderr);
  } else if (info) {
    rc = print_info(x.client);
    status = rc ? client_fail(&x, rc) : EXIT_OK;
  } else if (ready) {
    if ((rc = lmap_client_ready(x.client)) == 0)
      printf("ready: %s\n", lmap_client_endpoint(x.client));
    status = rc ? client_fail(&x, rc) : EXIT_OK;
  } else if (map_id) {
    status = write_map(&x, map_id, output);
  } else if ((rc = lmap_client_info(x.client, &meta, NULL)) != 0) {
    status = client_fail(&x, rc);
  } else {
    x.num_classes = meta.num_classes;
    if (batch) {
      pool_query defq = x.q;
      status = queryfile_run("query", batch, &defq, x.fmt, add_query, &x);
    } else {
      queryline l = {argv[optind + 1], x.q, x.fmt, 1};
      status = add_query(&x, &l, &d) ? cli_fail("query", &d) : EXIT_OK;
    }
    if (status == EXIT_OK)
      status = flush(&x);
  }
  for (size_t i = 0; i < x.n; i++)
    free(x.ids[i]);
  free(x.ids);
  free(x.queries);
  free(x.lines);
  free(x.dense);
  lmap_dynbuf_free(&x.out);
  lmap_client_free(x.client);
  return status;
}
