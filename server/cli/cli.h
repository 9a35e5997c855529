/*
 * The `lmap` tool's subcommands and the helpers they share.
 *
 * Exit codes (documented in `lmap --help` and the README):
 *   0  success
 *   1  the operation failed: bad input file, bad or missing store, I/O
 *   2  usage error: unknown flag, missing or malformed argument
 */
#ifndef LMAP_CLI_H
#define LMAP_CLI_H

#include <stdint.h>

#include "core/diag.h"
#include "import/build.h"

#define EXIT_OK 0
#define EXIT_FAIL 1
#define EXIT_USAGE 2

int cmd_import(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_ids(int argc, char **argv);
int cmd_get(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_render(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_query(int argc, char **argv);
int cmd_pull(int argc, char **argv);

/* cli_verify's modes. */
#define VERIFY_PAGES 0 /* every page against its checksum first */
#define VERIFY_NO_CHECKSUMS                                                    \
  1 /* a store without page checksums (refused                                 \
       if it has them) */

/* Checks the store at `path` as `lmap verify` does: every page (in
 * VERIFY_PAGES), then every record decoded and checked, and the count
 * against the metadata. Prints the problems to stderr under "lmap <cmd>"
 * and the summary line to stdout. Returns EXIT_OK or EXIT_FAIL. */
int cli_verify(const char *cmd, const char *path, int mode);

/* Prints "lmap <cmd>: <message>" and "Try 'lmap <cmd> --help'"; returns
 * EXIT_USAGE. */
int cli_usage(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prints "lmap <cmd>: <diag text>"; returns EXIT_FAIL. */
int cli_fail(const char *cmd, const diag *d);

/* Strict number parsing: the whole string, within [min, max]. 0 or -1. */
int cli_u32(const char *s, uint32_t min, uint32_t max, uint32_t *out);
int cli_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);

/* "H" or "HxW" -> grid sides. 0 or -1. */
int cli_grid(const char *s, uint32_t *h, uint32_t *w);

/* The options every command that writes a store shares (import, synth):
 * 'e' --encoding, 'l' --level, 'j' --threads. Parses option `c`'s `arg`
 * into `o`; returns EXIT_OK, or EXIT_USAGE after cli_usage. */
int cli_build_option(const char *cmd, int c, const char *arg, build_opts *o);

#endif /* LMAP_CLI_H */
