/*
 * transport: one HTTP exchange with one endpoint, over libcurl (the only
 * curl.h includer). One easy handle per client keeps its connections alive
 * between calls, whichever endpoint they go to. The exchange reports what
 * happened without judging it; failover is client.c's business.
 */
#ifndef LMAP_CLIENT_TRANSPORT_H
#define LMAP_CLIENT_TRANSPORT_H

#include <stddef.h>

#include "dynbuf.h"
#include "wire.h"

/* The most an answer body may hold (a bigger one is a transport failure). */
#define LMAP_HTTP_MAX_ANSWER ((size_t)1 << 30)

typedef struct lmap_http lmap_http;

typedef struct lmap_http_config {
  long connect_timeout_ms;
  long timeout_ms;
  const char *token; /* NULL for none */
} lmap_http_config;

/* What one exchange gave. */
typedef struct lmap_http_outcome {
  int transport_failed; /* no complete HTTP answer arrived */
  int timed_out;        /* ... because a timeout ran out */
  long status;          /* HTTP status, 0 when none */
  char request_id[64];  /* X-Request-Id of the answer */
  char content_type[64];
  char error[256];      /* what went wrong in the transport */
} lmap_http_outcome;

/* Checks a base URL: http or https, a host, no query or fragment. Returns 0
 * or LMAP_EINVAL with a sentence in `err`. */
int lmap_http_check_url(const char *url, char err[256]);

int lmap_http_new(const lmap_http_config *cfg, lmap_http **out, char err[256]);
void lmap_http_free(lmap_http *h);

/* GET `url` (POST when `post` is not NULL) with the answer in `body` (whose
 * max should be LMAP_HTTP_MAX_ANSWER), or,
 * when `npy` is not NULL and the status is 200, streamed into `npy`.
 * Returns 0 whenever the exchange could be attempted (the outcome tells how
 * it went), or LMAP_ENOMEM. */
int lmap_http_perform(lmap_http *h, const char *url, const dynbuf *post,
                      dynbuf *body, lmap_npy_sink *npy, lmap_http_outcome *out);

#endif /* LMAP_CLIENT_TRANSPORT_H */
