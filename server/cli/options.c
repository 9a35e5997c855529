/* Shared helpers of the lmap subcommands: messages and strict parsing. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int cli_usage(const char *cmd, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "lmap %s: ", cmd);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\nTry 'lmap %s --help'.\n", cmd);
  return EXIT_USAGE;
}

int cli_fail(const char *cmd, const diag *d) {
  fprintf(stderr, "lmap %s: %s\n", cmd, diag_text(d));
  return EXIT_FAIL;
}

int cli_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out) {
  if (s == NULL || *s < '0' || *s > '9')
    return -1;
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end || v < min || v > max)
    return -1;
  *out = v;
  return 0;
}

int cli_u32(const char *s, uint32_t min, uint32_t max, uint32_t *out) {
  uint64_t v;
  if (cli_u64(s, min, max, &v))
    return -1;
  *out = (uint32_t)v;
  return 0;
}

int cli_grid(const char *s, uint32_t *h, uint32_t *w) {
  char buf[64];
  if (strlen(s) >= sizeof buf)
    return -1;
  strcpy(buf, s);
  char *x = strchr(buf, 'x');
  if (x)
    *x = '\0';
  if (cli_u32(buf, 1, 1024, h))
    return -1;
  if (x == NULL) {
    *w = *h;
    return 0;
  }
  return cli_u32(x + 1, 1, 1024, w);
}

int cli_build_option(const char *cmd, int c, const char *arg, build_opts *o) {
  uint32_t v;
  switch (c) {
  case 'e':
    if (codec_encoding_from_name(arg, &o->encoding))
      return cli_usage(cmd, "--encoding: '%s' is not f16 or f32", arg);
    return EXIT_OK;
  case 'l':
    if (cli_u32(arg, CODEC_LEVEL_MIN, CODEC_LEVEL_MAX, &v))
      return cli_usage(cmd, "--level: '%s' is not an integer in [%d, %d]", arg,
                       CODEC_LEVEL_MIN, CODEC_LEVEL_MAX);
    o->level = (int)v;
    return EXIT_OK;
  case 'j':
    if (cli_u32(arg, 1, 64, &v))
      return cli_usage(cmd, "--threads: '%s' is not in [1, 64]", arg);
    o->threads = (int)v;
    return EXIT_OK;
  default: return cli_usage(cmd, "bad option");
  }
}
