/*
 * http: lmapd's HTTP front end on libmicrohttpd. The only module that
 * includes microhttpd.h.
 *
 * It runs MHD's internal thread pool with poll, gives each pool thread its
 * own api_worker (created lazily on the thread's first request), checks
 * the framing of every request on MHD's first handler call (duplicate or
 * conflicting Content-Length / Transfer-Encoding, header names with
 * spaces: 400; a POST without a length: 411; a body over the cap: 413,
 * decided from the headers before any body is read), and answers on a
 * later call so that keep-alive is preserved (MHD closes the connection
 * after a GET answered on its first call).
 * Every answer carries an X-Request-Id: the client's own when it is a
 * short token, otherwise one made here.
 *
 * The request head is checked here too, so that api.c only ever sees
 * plain C strings that mean what the client sent: a NUL byte anywhere in
 * the request line or a header (raw, or %00 in the URL) is refused with
 * 400 (a NUL in Authorization makes the credential invalid: 401 where a
 * token is required), as are a space or control byte in the URL, a URL
 * over HTTP_MAX_URL bytes and a query of more than HTTP_MAX_ARGS
 * parameters. A new connection has `header_timeout` seconds of silence
 * to complete its request head; after that `idle_timeout` applies.
 */
#ifndef LMAP_HTTP_H
#define LMAP_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "core/diag.h"

/* One answered request, for the access log. Strings are borrowed for the
 * duration of the callback. */
typedef struct http_access {
  const char *request_id;
  const char *method;
  const char *path;
  int status;
  size_t bytes;
  double ms; /* from the headers' arrival to the answer being queued */
} http_access;

/* Limits of the request line checked at the edge (docs/API.md). */
#define HTTP_MAX_URL 4096u /* bytes of the raw URL, query included */
#define HTTP_MAX_ARGS 64u  /* query parameters */

/* Answers above this size are handed to MHD without a copy and counted
 * against http_config.max_answer_memory until MHD frees them. */
#define HTTP_HANDOVER_BYTES ((size_t)1 << 20)

typedef struct http_config {
  /* Numeric address to bind: IPv4, or IPv6 without brackets (bound dual
   * stack: [::] takes IPv4 clients too where the system allows). */
  const char *host;
  uint16_t port;         /* 0 = an ephemeral port */
  unsigned threads;      /* MHD pool threads */
  size_t max_body;       /* bytes */
  unsigned idle_timeout; /* seconds, 0 = never */
  /* Seconds of silence allowed on a connection before its first request
   * head is complete; 0 = idle_timeout applies from the start. */
  unsigned header_timeout;
  unsigned max_connections;
  unsigned max_per_ip; /* 0 = unlimited */
  /* Bytes of large answers (over HTTP_HANDOVER_BYTES) that may wait in
   * MHD for their clients to read them, all connections together; an
   * answer that would pass it is replaced by 503 with Retry-After. */
  size_t max_answer_memory;
  /* Called from the worker threads for every answered request with
   * status >= 400, and for all when log_all is set. May be NULL. */
  void (*on_access)(const http_access *);
  int log_all;
  /* Receives libmicrohttpd's own messages (one line each). May be NULL. */
  void (*on_message)(const char *message);
  /* HTTPS through libmicrohttpd's own TLS (GnuTLS): the certificate chain
   * and its private key as PEM text (not paths), both or neither; NULL:
   * plain HTTP. Kept by the caller until http_stop. */
  const char *tls_cert, *tls_key;
} http_config;

typedef struct http_server http_server;

/* Makes sure the process may open the descriptors that `c` needs
 * (max_connections plus the listener, the pool threads' own and a
 * reserve for the store and logs), raising the soft RLIMIT_NOFILE up to
 * the hard one if needed. On success *before and *after are the soft
 * limit found and the one now in force. Returns 0, or LMAP_EINVAL when the
 * hard limit is too low for max_connections (the message names both). */
int http_reserve_files(const http_config *c, unsigned long *before,
                       unsigned long *after, diag *d);

/* Starts serving `a` (borrowed). On success *port_out is the bound port.
 * Returns 0, LMAP_EINVAL (bad address, or IPv6 with a libmicrohttpd built
 * without it) or LMAP_EIO (cannot bind). */
int http_start(const http_config *c, api *a, http_server **out,
               uint16_t *port_out, diag *d);

/* Stops accepting new connections (the listening socket is shut down);
 * connections already open are served, and every answer from now on says
 * "Connection: close" so that kept-alive clients move elsewhere. */
void http_quiesce(http_server *s);

/* Connections currently open. */
unsigned http_connections(http_server *s);

/* Requests being served now; *quiet_ms is the time since one last started
 * or ended. */
unsigned http_in_flight(http_server *s, unsigned long long *quiet_ms);

/* Stops the server and frees it (accepts NULL). */
void http_stop(http_server *s);

#endif /* LMAP_HTTP_H */
