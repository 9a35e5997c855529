/*
 * queryfile: what `lmap get` and `lmap query` share: the pooling flags, and
 * the JSON-lines query files read by `lmap get --queries` and
 * `lmap query --batch`, one parser for both so a file works with either.
 * Each line is one query with its options (pool/queryjson.h, the reader
 * lmapd uses for POST /v1/labels): all but id and box optional, the
 * command line giving the defaults.
 */
#ifndef LMAP_CLI_QUERYFILE_H
#define LMAP_CLI_QUERYFILE_H

#include <getopt.h>

#include "core/diag.h"
#include "pool/itemjson.h"
#include "pool/pool.h"

/* The pooling flags' getopt values and long options, for both commands'
 * option tables; -b/--box and -G/--output-size use their short letters. */
enum {
  QUERY_OPT_FORMAT = 256,
  QUERY_OPT_BOX_FORMAT,
  QUERY_OPT_FLIP,
  QUERY_OPT_NO_SOFTMAX,
  QUERY_OPT_NEXT /* the first value free for a command's own flags */
};
#define QUERY_LONGOPTS                                                         \
  {"box", required_argument, 0, 'b'},                                          \
      {"box-format", required_argument, 0, QUERY_OPT_BOX_FORMAT},              \
      {"output-size", required_argument, 0, 'G'},                              \
      {"flip", no_argument, 0, QUERY_OPT_FLIP},                                \
      {"format", required_argument, 0, QUERY_OPT_FORMAT}, {                    \
    "no-softmax", no_argument, 0, QUERY_OPT_NO_SOFTMAX                         \
  }

/* Applies pooling flag `c` (with `arg`) to `q` and `fmt`, setting *have_box
 * for --box. Returns 0, EXIT_USAGE after the usage message for a bad value,
 * or -1 when `c` is not a pooling flag. */
int query_flag(const char *cmd, int c, const char *arg, pool_query *q,
               itemjson_format *fmt, int *have_box);

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
