/*
 * consumer: a program built against the installed liblmap (CMake package
 * or pkg-config, shared or static), to prove that the installed headers,
 * libraries and package files are enough. It makes a handle on an endpoint
 * where nothing listens and expects LMAP_EUNAVAILABLE; the last line is
 * "consumer: ok" only when every step did what the header promises.
 */
#include <stdio.h>
#include <string.h>

#include <lmap/client.h>

int main(void) {
  int ok = 1;
  printf("consumer: liblmap %s (header %s)\n", lmap_version(),
         LMAP_VERSION_STRING);
  ok &= strcmp(lmap_version(), LMAP_VERSION_STRING) == 0;

  lmap_client_options opts;
  lmap_client_options_init(&opts);
  opts.connect_timeout_ms = 1000;
  opts.retries = -1;
  lmap_client *c = NULL;
  char err[LMAP_ERRBUF_SIZE] = "";
  int rc = lmap_client_new("http://127.0.0.1:1", &opts, &c, err);
  printf("consumer: lmap_client_new: %d %s\n", rc, err);
  ok &= rc == 0 && c != NULL;

  lmap_info info;
  rc = c ? lmap_client_info(c, &info, NULL) : -1;
  printf("consumer: lmap_client_info: %d (%s): %s\n", rc, lmap_strerror(rc),
         c ? lmap_client_errmsg(c) : "");
  ok &= rc == LMAP_EUNAVAILABLE;
  ok &= strcmp(lmap_strerror(rc), "server unavailable") == 0;
  lmap_client_free(c);

  printf("consumer: %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
