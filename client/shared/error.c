/* The error table's functions (client/shared/README.md). */
#include "lmap/error.h"

#include <string.h>

const char *lmap_strerror(int err) {
  switch (err) {
  case 0: return "success";
#define XX(name, value, msg, status, code)                                     \
  case value: return msg;
    LMAP_ERRNO_MAP(XX)
#undef XX
  }
  return "unknown error";
}

const char *lmap_err_code(int err) {
  switch (err) {
  case 0: return "ok";
#define XX(name, value, msg, status, code)                                     \
  case value: return code;
    LMAP_ERRNO_MAP(XX)
#undef XX
  }
  return "unknown";
}

int lmap_err_http_status(int err) {
  switch (err) {
  case 0: return 200;
#define XX(name, value, msg, status, code)                                     \
  case value: return status;
    LMAP_ERRNO_MAP(XX)
#undef XX
  }
  return 500;
}

int lmap_err_from_code(const char *code) {
  if (!code)
    return 0;
#define XX(name, value, msg, status, jcode)                                    \
  if (strcmp(code, jcode) == 0)                                                \
    return value;
  LMAP_ERRNO_MAP(XX)
#undef XX
  return 0;
}
