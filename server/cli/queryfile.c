/* queryfile: JSON-lines query files (see queryfile.h). */
#include "queryfile.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "pool/queryjson.h"
#include "pool/queryopt.h"

int query_flag(const char *cmd, int c, const char *arg, pool_query *q,
               itemjson_format *fmt, int *have_box) {
  switch (c) {
  case 'b':
    if (queryopt_box(arg, q->box))
      return cli_usage(cmd, "--box: '%s' is not four finite numbers A,B,C,D",
                       arg);
    *have_box = 1;
    return 0;
  case QUERY_OPT_BOX_FORMAT:
    if (queryopt_box_format(arg, &q->box_format))
      return cli_usage(cmd, "--box-format: '%s' is not xyxy or relabel", arg);
    return 0;
  case 'G':
    if (cli_u32(arg, 1, POOL_MAX_OUTPUT_SIZE, &q->output_size))
      return cli_usage(cmd, "--output-size: '%s' is not in [1, %u]", arg,
                       POOL_MAX_OUTPUT_SIZE);
    return 0;
  case QUERY_OPT_FLIP: q->flip = true; return 0;
  case QUERY_OPT_FORMAT:
    if (queryopt_format(arg, fmt))
      return cli_usage(cmd, "--format: '%s' is not dense or sparse", arg);
    return 0;
  case QUERY_OPT_NO_SOFTMAX: q->softmax = false; return 0;
  }
  return -1;
}

/* A query line is ~100 bytes; getline grows its buffer with the line, so
 * a stream without newlines is stopped here rather than by the OOM killer
 * (getline itself still reads the whole line first). */
#define QUERY_LINE_MAX (1u << 20)

/* Parses one line, with the command line's options as defaults, and hands
 * it to `fn`. */
static int run_line(const char *line, size_t len, unsigned long lineno,
                    const pool_query *defq, itemjson_format deff,
                    queryfile_fn fn, void *ctx, diag *d) {
  json_error_t err;
  json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES, &err);
  if (o == NULL)
    return diag_set(d, LMAP_EFORMAT, "invalid JSON: %s", err.text);
  pool_query q = *defq;
  itemjson_format fmt = deff;
  const char *id;
  int rc = queryjson_query(o, "", true, &q, &fmt, &id, d);
  if (rc == 0) {
    queryline l = {id, q, fmt, lineno};
    rc = fn(ctx, &l, d);
  }
  json_decref(o);
  return rc;
}

int queryfile_run(const char *cmd, const char *path, const pool_query *defq,
                  itemjson_format deff, queryfile_fn fn, void *ctx) {
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
  struct stat sb;
  if (f == NULL) {
    fprintf(stderr, "lmap %s: %s: %s\n", cmd, path, strerror(errno));
    return EXIT_FAIL;
  }
  if (fstat(fileno(f), &sb) == 0 && S_ISDIR(sb.st_mode)) {
    fprintf(stderr, "lmap %s: %s: is a directory, not a query file\n", cmd,
            path);
    fclose(f);
    return EXIT_FAIL;
  }
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  int rc = EXIT_OK;
  for (unsigned long lineno = 1; (n = getline(&line, &cap, f)) >= 0; lineno++) {
    if ((size_t)n > QUERY_LINE_MAX) {
      fprintf(stderr, "lmap %s: line %lu: longer than %u bytes\n", cmd, lineno,
              QUERY_LINE_MAX);
      rc = EXIT_FAIL;
      break;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
      n--;
    if (n == 0)
      continue;
    diag d;
    diag_clear(&d);
    if (run_line(line, (size_t)n, lineno, defq, deff, fn, ctx, &d)) {
      fprintf(stderr, "lmap %s: line %lu: %s\n", cmd, lineno, diag_text(&d));
      rc = EXIT_FAIL;
      break;
    }
  }
  if (rc == EXIT_OK && ferror(f)) {
    fprintf(stderr, "lmap %s: %s: read error: %s\n", cmd, path,
            strerror(errno));
    rc = EXIT_FAIL;
  }
  free(line);
  if (f != stdin)
    fclose(f);
  return rc;
}
