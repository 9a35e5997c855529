/* fileio: writing a file safely (contract in fileio.h). */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int file_write_all(int fd, const void *buf, size_t n) {
  const uint8_t *p = buf;
  while (n > 0) {
    /* Linux moves at most about 2 GiB per call. */
    ssize_t k = write(fd, p, n < ((size_t)1 << 30) ? n : (size_t)1 << 30);
    if (k < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    p += k;
    n -= (size_t)k;
  }
  return 0;
}

void file_sync_dir(const char *path) {
  char *dir = strdup(path);
  if (dir == NULL)
    return;
  char *slash = strrchr(dir, '/');
  const char *name = ".";
  if (slash == dir)
    name = "/";
  else if (slash != NULL) {
    *slash = '\0';
    name = dir;
  }
  int fd = open(name, O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    (void)fsync(fd);
    close(fd);
  }
  free(dir);
}
