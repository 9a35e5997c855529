/* The bearer-token file, read one way by lmapd, `lmap query`, liblmap's
 * callers and the Python binding (include/lmap/client.h). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "lmap/client.h"

static int fail(char *errbuf, size_t errcap, int code, const char *path,
                const char *reason) {
  if (errbuf && errcap)
    snprintf(errbuf, errcap, "%s: %s", path, reason);
  return code;
}

int lmap_token_read(const char *path, char buf[LMAP_TOKEN_MAX + 1], size_t *len,
                    char *errbuf, size_t errcap) {
  char reason[160];
  if (buf)
    buf[0] = '\0';
  if (len)
    *len = 0;
  if (path == NULL || buf == NULL)
    return fail(errbuf, errcap, LMAP_EINVAL, "(null)",
                "no token file or no buffer given");
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    snprintf(reason, sizeof reason, "cannot open the token file: %s",
             strerror(errno));
    return fail(errbuf, errcap, LMAP_EIO, path, reason);
  }
  /* `kept`: the line's bytes up to its last one that is not trailing white
   * space; reading stops once the line is known to be too long. */
  size_t n = 0, kept = 0;
  int ch, nul = 0;
  while ((ch = getc(f)) != EOF && ch != '\n' && kept <= LMAP_TOKEN_MAX) {
    if (n < LMAP_TOKEN_MAX)
      buf[n] = (char)ch;
    n++;
    nul |= ch == '\0';
    if (ch != ' ' && ch != '\t' && ch != '\r')
      kept = n;
  }
  int failed = ferror(f);
  fclose(f);
  if (failed)
    return fail(errbuf, errcap, LMAP_EIO, path, "cannot read the token file");
  if (kept > LMAP_TOKEN_MAX) {
    buf[0] = '\0';
    snprintf(reason, sizeof reason,
             "the token (the file's first line) is longer than %d bytes",
             LMAP_TOKEN_MAX);
    return fail(errbuf, errcap, LMAP_ETOOBIG, path, reason);
  }
  if (nul) {
    buf[0] = '\0';
    return fail(errbuf, errcap, LMAP_EINVAL, path,
                "the token contains a NUL byte");
  }
  if (kept == 0) {
    buf[0] = '\0';
    return fail(errbuf, errcap, LMAP_EINVAL, path, "the token file is empty");
  }
  buf[kept] = '\0';
  if (len)
    *len = kept;
  return 0;
}
