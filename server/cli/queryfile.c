/* queryfile: JSON-lines query files (see queryfile.h). */
#include "queryfile.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
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

/* A misspelt option must not be silently ignored. */
static int check_keys(json_t *o, diag *d) {
  static const char *const known[] = {
      "id", "box", "flip", "softmax", "output_size", "box_format", "format"};
  const char *key;
  json_t *v;
  json_object_foreach(o, key, v) {
    int ok = 0;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
      ok |= strcmp(key, known[i]) == 0;
    if (!ok)
      return diag_field(d, LMAP_EFORMAT, key, "unknown key \"%s\"", key);
  }
  return 0;
}

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
  int rc = 0;
  json_t *id = json_object_get(o, "id"), *box = json_object_get(o, "box"), *v;
  if (!json_is_object(o))
    rc = diag_set(d, LMAP_EFORMAT, "a query must be a JSON object");
  else if (!json_is_string(id))
    rc = diag_field(d, LMAP_EFORMAT, "id", "\"id\" must be a string");
  else if (!json_is_array(box) || json_array_size(box) != 4)
    rc = diag_field(d, LMAP_EBADBOX, "box",
                    "\"box\" must be an array of 4 numbers");
  if (rc == 0)
    rc = check_keys(o, d);
  for (size_t i = 0; rc == 0 && i < 4; i++) {
    v = json_array_get(box, i);
    if (!json_is_number(v))
      rc = diag_field(d, LMAP_EBADBOX, "box", "box[%zu] is not a number", i);
    else
      q.box[i] = json_number_value(v);
  }
  if (rc == 0 && (v = json_object_get(o, "flip")) != NULL) {
    if (!json_is_boolean(v))
      rc =
          diag_field(d, LMAP_EFORMAT, "flip", "\"flip\" must be true or false");
    q.flip = json_is_true(v);
  }
  if (rc == 0 && (v = json_object_get(o, "softmax")) != NULL) {
    if (!json_is_boolean(v))
      rc = diag_field(d, LMAP_EFORMAT, "softmax",
                      "\"softmax\" must be true or false");
    q.softmax = json_is_true(v);
  }
  if (rc == 0 && (v = json_object_get(o, "output_size")) != NULL) {
    if (!json_is_integer(v) || json_integer_value(v) < 1 ||
        json_integer_value(v) > POOL_MAX_OUTPUT_SIZE)
      rc = diag_field(d, LMAP_EINVAL, "output_size",
                      "\"output_size\" must be an integer in [1, %u]",
                      POOL_MAX_OUTPUT_SIZE);
    else
      q.output_size = (uint32_t)json_integer_value(v);
  }
  if (rc == 0 && (v = json_object_get(o, "box_format")) != NULL &&
      (!json_is_string(v) ||
       queryopt_box_format(json_string_value(v), &q.box_format)))
    rc = diag_field(d, LMAP_EINVAL, "box_format",
                    "\"box_format\" must be \"xyxy\" or \"relabel\"");
  if (rc == 0 && (v = json_object_get(o, "format")) != NULL &&
      (!json_is_string(v) || queryopt_format(json_string_value(v), &fmt)))
    rc = diag_field(d, LMAP_EINVAL, "format",
                    "\"format\" must be \"dense\" or \"sparse\"");
  if (rc == 0) {
    queryline l = {json_string_value(id), q, fmt, lineno};
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
