/*
 * queryfile: the JSON-lines query files read by `lmap get --queries` and
 * `lmap query --batch`, one parser for both so a file works with either.
 * Each line is {"id", "box", "flip", "output_size", "box_format", "format",
 * "softmax"} with all but id and box optional (the command line gives the
 * defaults); unknown keys are refused, so a misspelt option is never
 * silently ignored.
 */
#ifndef LMAP_CLI_QUERYFILE_H
#define LMAP_CLI_QUERYFILE_H

#include "diag.h"
#include "itemjson.h"
#include "pool.h"

typedef struct queryline {
  const char *id; /* valid during the callback only */
  pool_query q;
  itemjson_format fmt;
  unsigned long lineno;
} queryline;

typedef int (*queryfile_fn)(void *ctx, const queryline *l, diag *d);

/* Reads `path` ("-" for stdin) and calls `fn` for each non-empty line, in
 * order. The first bad line or failing callback stops the run with
 * "lmap <cmd>: line N: <reason>" on stderr. Returns EXIT_OK or EXIT_FAIL. */
int queryfile_run(const char *cmd, const char *path, const pool_query *defq,
                  itemjson_format deff, queryfile_fn fn, void *ctx);

#endif /* LMAP_CLI_QUERYFILE_H */
