/*
 * lmap: the command-line tool. Builds, imports, inspects and verifies
 * stores; this file only dispatches to the subcommands.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <signal.h>

#include "cli.h"
#include "lmap/version.h"
#include "store/store.h"

static const char usage[] =
    "usage: lmap <command> [options]\n"
    "\n"
    "Label-map stores for ReLabel-style dense soft labels.\n"
    "\n"
    "commands:\n"
    "  import SRC -o STORE   import .pt label maps (directory, .tar, or - for a tar on stdin)\n"
    "  synth -o STORE        make a realistic synthetic store\n"
    "  info STORE            show a store's metadata\n"
    "  ids STORE             list the image ids of a store\n"
    "  get STORE ID --box .. pool one box and print the JSON item the server returns\n"
    "  export STORE ID -o F  write one stored map as a float32 [2,K,H,W] .npy\n"
    "  render STORE ID -o F  draw one stored map (and a box over it) as SVG\n"
    "  verify STORE          check every page, decode and check every record\n"
    "  query URLS ID --box . ask lmapd servers for soft labels (as `get` prints them)\n"
    "  pull URL -o STORE     copy a store from a server (resumable), verify it, install it\n"
    "\n"
    "Run 'lmap <command> --help' for a command's options.\n"
    "\n"
    "exit status: 0 success, 1 failure (the message names the file and the reason),\n"
    "2 usage error.\n";

/* An import or synth interrupted by a signal removes its temporary files
 * (the store never appears half-written), then dies of the same signal. */
static void on_signal(int sig) {
  store_remove_temp_files();
  signal(sig, SIG_DFL);
  raise(sig);
}

int main(int argc, char **argv) {
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  signal(SIGHUP, on_signal);
  /* libarchive converts each zip entry's time with mktime(); with TZ unset
   * glibc re-reads /etc/localtime on every call under a process-wide lock,
   * which serialised the import threads. Naming the same file loads it
   * once (local time is unchanged). */
  if (getenv("TZ") == NULL)
    setenv("TZ", ":/etc/localtime", 1);
  if (argc < 2) {
    fputs(usage, stderr);
    return EXIT_USAGE;
  }
  const char *cmd = argv[1];
  if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 ||
      strcmp(cmd, "help") == 0) {
    fputs(usage, stdout);
    return EXIT_OK;
  }
  if (strcmp(cmd, "--version") == 0) {
    printf("lmap %s\n", LMAP_VERSION_STRING);
    return EXIT_OK;
  }
  static const struct {
    const char *name;
    int (*run)(int, char **);
  } commands[] = {
      {"import", cmd_import}, {"synth", cmd_synth},   {"info", cmd_info},
      {"ids", cmd_ids},       {"get", cmd_get},       {"export", cmd_export},
      {"render", cmd_render}, {"verify", cmd_verify}, {"query", cmd_query},
      {"pull", cmd_pull},
  };
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (strcmp(cmd, commands[i].name) == 0) {
      int rc = commands[i].run(argc - 1, argv + 1);
      /* Output that did not reach its destination is a failure. */
      if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "lmap %s: stdout: %s\n", cmd, strerror(errno));
        return EXIT_FAIL;
      }
      return rc;
    }
  fprintf(stderr, "lmap: unknown command '%s'\n\n%s", cmd, usage);
  return EXIT_USAGE;
}
