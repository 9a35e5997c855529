/*
 * transport: one HTTP exchange with one endpoint, over libcurl (the only
 * curl.h includer). One easy handle per client keeps its connections alive
 * between calls, whichever endpoint they go to. The exchange reports what
 * happened without judging it; failover is client.c's business.
 */
#ifndef LMAP_CLIENT_TRANSPORT_H
#define LMAP_CLIENT_TRANSPORT_H

#include <stddef.h>

#include "shared/dynbuf.h"
#include "wire.h"

/* The most any answer body may hold, whatever was asked. Each exchange
 * has its own, smaller cap (lmap_http_perform). */
#define LMAP_HTTP_MAX_ANSWER ((size_t)1 << 30)

typedef struct lmap_http lmap_http;

typedef struct lmap_http_config {
  long connect_timeout_ms;
  long timeout_ms;
  const char *token;   /* NULL for none */
  const char *ca_file; /* CA certificates for https; NULL: the system's */
} lmap_http_config;

/* What one exchange gave. */
typedef struct lmap_http_outcome {
  int transport_failed; /* no complete HTTP answer arrived */
  int timed_out;        /* ... because a timeout ran out */
  long status;          /* HTTP status, 0 when none */
  char request_id[64];  /* X-Request-Id of the answer */
  char content_type[64];
  long long declared; /* the answer's Content-Length, -1 when none */
  size_t received;    /* body bytes received */
  size_t cap;         /* the cap the body was held to */
  int too_large;      /* the body, or its Content-Length, was over `cap`:
                         the transfer was abandoned at once */
  char error[256];    /* what went wrong in the transport */
} lmap_http_outcome;

/* Checks a base URL: http or https, a host, no query or fragment. Returns 0
 * or LMAP_EINVAL with a sentence in `err`. */
int lmap_http_check_url(const char *url, char err[256]);

int lmap_http_new(const lmap_http_config *cfg, lmap_http **out, char err[256]);
void lmap_http_free(lmap_http *h);

/* Where a 200 answer holding an array may stream instead of into a
 * buffer: a .npy answer into `npy`; with `sparse` set, lmapd is also
 * offered sparse binary answers (client/shared/sparsebin.h), which stream
 * into it. Each sink is told the Content-Length and refuses what its array
 * cannot hold. */
typedef struct lmap_http_sinks {
  lmap_npy_sink *npy;
  lmap_sparsebin_sink *sparse; /* NULL: .npy only */
} lmap_http_sinks;

/* GET `url` (POST when `post` is not NULL: JSON, or binary queries with
 * `binary_post`, client/shared/querybin.h). A 200 answer goes to `body`,
 * at most `max_ok` bytes, or, when `sinks` is not NULL and the answer is
 * in a form they read, streamed into its sink. Any other answer goes to
 * `body`, at most LMAP_WIRE_ERROR_MAX bytes. An answer whose
 * Content-Length is over its cap is abandoned when its headers arrive, one
 * without a Content-Length when its bytes pass the cap (out->too_large).
 * Returns 0 whenever the exchange could be attempted (the outcome tells
 * how it went; a sink's refusal is in its err), or LMAP_ENOMEM. */
int lmap_http_perform(lmap_http *h, const char *url, const dynbuf *post,
                      int binary_post, size_t max_ok, dynbuf *body,
                      const lmap_http_sinks *sinks, lmap_http_outcome *out);

#endif /* LMAP_CLIENT_TRANSPORT_H */
