/* common: the store layer's shared helpers (contract in common.h). */
#include "common.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <lmdb.h>

#include "core/labelmap.h"

const char *store_id_text(char out[STORE_ID_TEXT], const char *id, size_t len) {
  size_t o = 0;
  for (size_t i = 0; i < len && i < 64; i++) {
    unsigned char ch = (unsigned char)id[i];
    if (ch >= 0x20 && ch < 0x7F && ch != '\\' && ch != '\'')
      out[o++] = (char)ch;
    else
      o += (size_t)snprintf(out + o, 5, "\\x%02x", ch);
  }
  if (len > 64) {
    memcpy(out + o, "...", 3);
    o += 3;
  }
  out[o] = '\0';
  return out;
}

int store_check_id(const char *id, size_t len, diag *d) {
  char t[STORE_ID_TEXT];
  if (len == 0)
    return diag_set(d, LMAP_EBADID, "id is empty");
  if (len > LABELMAP_MAX_ID_LEN)
    return diag_set(d, LMAP_EBADID, "id '%s' is %zu bytes; the limit is %u",
                    store_id_text(t, id, len), len, LABELMAP_MAX_ID_LEN);
  if (memchr(id, '\0', len) != NULL)
    return diag_set(d, LMAP_EBADID, "id '%s' contains a NUL byte",
                    store_id_text(t, id, len));
  return 0;
}

int store_lmdb_fail(diag *d, int code, const char *what, int err) {
  return diag_set(d, code, "%s: %s", what, mdb_strerror(err));
}

int store_pread_full(int fd, void *buf, size_t n, uint64_t off) {
  uint8_t *p = buf;
  while (n > 0) {
    /* Linux moves at most about 2 GiB per call. */
    size_t want = n < ((size_t)1 << 30) ? n : (size_t)1 << 30;
    ssize_t k = pread(fd, p, want, (off_t)off);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0) {
      if (k == 0)
        errno = 0;
      return -1;
    }
    p += k;
    n -= (size_t)k;
    off += (uint64_t)k;
  }
  return 0;
}

int store_read_fail(diag *d, const char *what) {
  if (errno == 0)
    return diag_set(d, LMAP_EBADSTORE,
                    "the file ended while reading %s (truncated meanwhile?)",
                    what);
  return diag_set(d, LMAP_EIO, "cannot read %s: %s", what, strerror(errno));
}
