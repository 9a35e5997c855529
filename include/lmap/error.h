/*
 * lmap error codes: one table shared by the server, the CLI and the client.
 *
 * Every fallible lmap function returns 0 on success or one of the negative
 * codes below. The table maps each code to its message, the HTTP status the
 * server answers with, and the stable JSON "code" string that travels on the
 * wire. Codes are never renumbered; new ones are appended.
 */
#ifndef LMAP_ERROR_H
#define LMAP_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

/* XX(NAME, value, message, http status, json code) */
#define LMAP_ERRNO_MAP(XX)                                                     \
  XX(INVAL, -1, "invalid argument", 400, "invalid_argument")                   \
  XX(NOMEM, -2, "out of memory", 500, "out_of_memory")                         \
  XX(NOTFOUND, -3, "not found", 404, "not_found")                              \
  XX(IO, -4, "input/output error", 500, "io_error")                            \
  XX(CORRUPT, -5, "corrupt record or store", 500, "corrupt")                   \
  XX(FORMAT, -6, "malformed or unsupported input", 400, "bad_format")          \
  XX(BADSTORE, -7, "not a valid lmap store", 500, "bad_store")                 \
  XX(VERSION, -8, "unsupported format version", 500, "unsupported_version")    \
  XX(TOOBIG, -9, "input too large", 413, "too_large")                          \
  XX(EXIST, -10, "already exists", 409, "exists")                              \
  XX(BADBOX, -11, "invalid box", 400, "bad_box")                               \
  XX(BADID, -12, "invalid id", 400, "bad_id")                                  \
  XX(RANGE, -13, "value out of range", 400, "out_of_range")                    \
  XX(INTERNAL, -14, "internal error", 500, "internal")                         \
  XX(UNAUTHORIZED, -15, "missing or invalid bearer token", 401,                \
     "unauthorized")                                                           \
  XX(METHOD, -16, "method not allowed", 405, "method_not_allowed")             \
  XX(LENGTH, -17, "length required", 411, "length_required")                   \
  XX(REQUEST, -18, "malformed HTTP request", 400, "bad_request")               \
  XX(UNAVAILABLE, -19, "server unavailable", 503, "unavailable")               \
  XX(TIMEOUT, -20, "timed out", 504, "timeout")                                \
  XX(PROTOCOL, -21, "unexpected answer from the server", 502, "bad_answer")

#ifndef LMAP_API
#if defined(__GNUC__)
#define LMAP_API __attribute__((visibility("default")))
#else
#define LMAP_API
#endif
#endif

typedef enum lmap_errno {
#define LMAP__ERR_ENUM(name, value, msg, status, code) LMAP_E##name = (value),
  LMAP_ERRNO_MAP(LMAP__ERR_ENUM)
#undef LMAP__ERR_ENUM
} lmap_errno;

/** Human-readable message for an lmap error code ("unknown error" otherwise).
 *  The string is static. */
LMAP_API const char *lmap_strerror(int err);

/** Stable JSON code string ("bad_box", ...) for an error; "unknown" otherwise.
 *  The string is static. */
LMAP_API const char *lmap_err_code(int err);

/** The error whose JSON code string is `code` (as a server answers it), or
 *  0 when the table has no such code or `code` is NULL. `code` is only
 *  read during the call. */
LMAP_API int lmap_err_from_code(const char *code);

/** HTTP status that the server answers an error with (200 for 0, 500 for
 *  an unknown code). */
LMAP_API int lmap_err_http_status(int err);

#ifdef __cplusplus
}
#endif
#endif /* LMAP_ERROR_H */
