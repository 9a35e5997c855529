/*
 * transport: HTTP exchanges over one libcurl easy handle (see transport.h).
 *
 * Reusing the easy handle is what keeps connections alive: curl's connection
 * cache lives in it. Signals are off (CURLOPT_NOSIGNAL) so timeouts are safe
 * in threaded programs, "Expect: 100-continue" is off so a batch is sent at
 * once, and only http and https are allowed so a URL cannot make the client
 * speak another protocol.
 */
#include "transport.h"

#include "shared/querybin.h"
#include "shared/sparsebin.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The Accept headers a request may carry: JSON; .npy; the sparse binary
 * form preferred and .npy next, which an lmapd without sparse answers
 * (0.2.0) answers as .npy, since it looks for .npy in Accept alone. */
enum { ACCEPT_JSON, ACCEPT_NPY, ACCEPT_SPARSE, ACCEPT_FORMS };
static const char *const accept_header[ACCEPT_FORMS] = {
    "Accept: application/json",
    "Accept: application/x-npy",
    "Accept: " LMAP_SPARSEBIN_TYPE ", application/x-npy;q=0.5",
};

/* Where an answer's body goes. */
enum stream_target { INTO_BODY, INTO_NPY, INTO_SPARSE };

/* Whether Content-Type `ct` is the media type `type` (parameters
 * allowed). */
static int is_type(const char *ct, const char *type) {
  size_t n = strlen(type);
  return strncasecmp(ct, type, n) == 0 &&
         (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

struct lmap_http {
  CURL *curl;
  /* The request headers: [answer accepted][body of binary queries]. */
  struct curl_slist *headers[ACCEPT_FORMS][2];
  char errbuf[CURL_ERROR_SIZE];
  /* The exchange in progress. */
  dynbuf *body;
  lmap_http_sinks sinks; /* none when both are NULL */
  size_t max_ok;         /* cap of a 200 answer's body */
  long status;           /* of the answer whose headers are arriving */
  int streaming;         /* -1 undecided, else a stream_target */
  int sink_error;        /* the body or the sink refused bytes */
  lmap_http_outcome *out;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_FAILED_INIT;

static void global_init(void) {
  global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static struct curl_slist *
header_list(const char *accept, const char *content_type, const char *auth) {
  const char *fixed[] = {accept, content_type, "Expect:", auth};
  struct curl_slist *list = NULL;
  for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++) {
    if (fixed[i] == NULL)
      continue;
    struct curl_slist *next = curl_slist_append(list, fixed[i]);
    if (next == NULL) {
      curl_slist_free_all(list);
      return NULL;
    }
    list = next;
  }
  return list;
}

/* Copies header `name`'s value from a header line into `dst`. */
static void header_value(const char *line, size_t len, const char *name,
                         char *dst, size_t cap) {
  size_t nlen = strlen(name);
  if (len <= nlen || strncasecmp(line, name, nlen) != 0)
    return;
  const char *v = line + nlen, *end = line + len;
  while (v < end && (*v == ' ' || *v == '\t'))
    v++;
  while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
    end--;
  size_t n = (size_t)(end - v) < cap - 1 ? (size_t)(end - v) : cap - 1;
  memcpy(dst, v, n);
  dst[n] = '\0';
}

/* Where the answer's body goes and what caps it, decided once its headers
 * are in (or at its first byte): a 200 answer in a form a sink reads into
 * that sink, anything else into `body`. Returns 0, or -1 when the answer
 * is refused already. */
static int decide(lmap_http *h) {
  lmap_http_outcome *out = h->out;
  const char *ct = out->content_type;
  h->streaming = INTO_BODY;
  if (h->status == 200 && h->sinks.npy && is_type(ct, "application/x-npy"))
    h->streaming = INTO_NPY;
  else if (h->status == 200 && h->sinks.sparse &&
           is_type(ct, LMAP_SPARSEBIN_TYPE))
    h->streaming = INTO_SPARSE;
  int refused = 0;
  if (h->streaming == INTO_NPY)
    refused = lmap_npy_sink_declare(h->sinks.npy, out->declared);
  else if (h->streaming == INTO_SPARSE)
    refused = lmap_sparsebin_sink_declare(h->sinks.sparse, out->declared);
  if (refused) {
    h->sink_error = LMAP_EPROTOCOL;
    return -1;
  }
  if (h->streaming != INTO_BODY)
    return 0;
  out->cap = h->status == 200 ? h->max_ok : LMAP_WIRE_ERROR_MAX;
  h->body->max = out->cap;
  if (out->declared >= 0 && (unsigned long long)out->declared > out->cap) {
    out->too_large = 1;
    return -1;
  }
  return 0;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg) {
  lmap_http *h = arg;
  lmap_http_outcome *out = h->out;
  size_t len = size * n;
  if (len >= 5 &&
      strncmp(p, "HTTP/", 5) == 0) { /* a new answer (after a 1xx) */
    out->request_id[0] = '\0';
    out->content_type[0] = '\0';
    out->declared = -1;
    const char *sp = memchr(p, ' ', len);
    h->status = sp ? strtol(sp + 1, NULL, 10) : 0;
    h->streaming = -1;
    return len;
  }
  if ((len == 2 && p[0] == '\r') ||
      (len == 1 && p[0] == '\n')) { /* end of the headers */
    if (h->status >= 200 && h->streaming < 0 && decide(h) != 0)
      return 0; /* curl abandons the transfer */
    return len;
  }
  header_value(p, len, "x-request-id:", out->request_id,
               sizeof out->request_id);
  header_value(p, len, "content-type:", out->content_type,
               sizeof out->content_type);
  char cl[32] = "";
  header_value(p, len, "content-length:", cl, sizeof cl);
  if (cl[0]) {
    char *end;
    long long v = strtoll(cl, &end, 10);
    out->declared = *end == '\0' && v >= 0 ? v : -1;
  }
  return len;
}

static size_t on_data(char *p, size_t size, size_t n, void *arg) {
  lmap_http *h = arg;
  size_t len = size * n;
  if (h->streaming < 0) {
    if (h->status == 0)
      curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &h->status);
    if (decide(h) != 0)
      return 0;
  }
  h->out->received += len;
  int rc = h->streaming == INTO_NPY ? lmap_npy_feed(h->sinks.npy, p, len)
           : h->streaming == INTO_SPARSE
               ? lmap_sparsebin_feed(h->sinks.sparse, p, len)
               : lmap_dynbuf_add(h->body, p, len);
  if (rc == LMAP_ETOOBIG) {
    h->out->too_large = 1;
    return 0;
  }
  if (rc) {
    h->sink_error = rc;
    return 0; /* curl aborts the transfer */
  }
  return len;
}

int lmap_http_check_url(const char *url, char err[256]) {
  CURLU *u = curl_url();
  if (u == NULL) {
    snprintf(err, 256, "out of memory");
    return LMAP_ENOMEM;
  }
  char *scheme = NULL, *host = NULL, *query = NULL, *fragment = NULL;
  int rc = LMAP_EINVAL;
  CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
  if (uc != CURLUE_OK) {
    snprintf(err, 256,
             "bad server URL '%.120s': %s (expected http://HOST:PORT)", url,
             curl_url_strerror(uc));
  } else if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
             (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)) {
    snprintf(err, 256,
             "bad server URL '%.120s': the scheme must be http or https", url);
  } else if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
             host[0] == '\0') {
    snprintf(err, 256, "bad server URL '%.120s': no host", url);
  } else if (curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK ||
             curl_url_get(u, CURLUPART_FRAGMENT, &fragment, 0) == CURLUE_OK) {
    snprintf(err, 256,
             "bad server URL '%.120s': a base URL has no query or fragment",
             url);
  } else {
    rc = 0;
  }
  curl_free(scheme);
  curl_free(host);
  curl_free(query);
  curl_free(fragment);
  curl_url_cleanup(u);
  return rc;
}

int lmap_http_new(const lmap_http_config *cfg, lmap_http **out, char err[256]) {
  *out = NULL;
  pthread_once(&global_once, global_init);
  if (global_rc != CURLE_OK) {
    snprintf(err, 256, "libcurl failed to initialise: %s",
             curl_easy_strerror(global_rc));
    return LMAP_EINTERNAL;
  }
  lmap_http *h = calloc(1, sizeof *h);
  char *auth = NULL;
  if (h == NULL)
    goto nomem;
  if (cfg->token) {
    size_t len = strlen(cfg->token) + sizeof "Authorization: Bearer ";
    if ((auth = malloc(len)) == NULL)
      goto nomem;
    snprintf(auth, len, "Authorization: Bearer %s", cfg->token);
  }
  h->curl = curl_easy_init();
  int lists_made = 1;
  for (int form = 0; form < ACCEPT_FORMS; form++)
    for (int bin = 0; bin < 2; bin++) {
      h->headers[form][bin] =
          header_list(accept_header[form],
                      bin ? "Content-Type: " LMAP_QUERYBIN_TYPE
                          : "Content-Type: application/json",
                      auth);
      lists_made &= h->headers[form][bin] != NULL;
    }
  if (auth) {
    memset(auth, 0, strlen(auth)); /* the token is a secret */
    free(auth);
    auth = NULL;
  }
  if (h->curl == NULL || !lists_made)
    goto nomem;
  CURL *c = h->curl;
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, cfg->connect_timeout_ms);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, cfg->timeout_ms);
  curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_USERAGENT, "liblmap/" LMAP_VERSION_STRING);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, h->errbuf);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, h);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, h);
  /* Certificates are verified (libcurl's default), against these CAs. */
  if (cfg->ca_file != NULL &&
      curl_easy_setopt(c, CURLOPT_CAINFO, cfg->ca_file) != CURLE_OK)
    goto nomem;
  *out = h;
  return 0;
nomem:
  free(auth);
  lmap_http_free(h);
  snprintf(err, 256, "out of memory");
  return LMAP_ENOMEM;
}

void lmap_http_free(lmap_http *h) {
  if (h == NULL)
    return;
  curl_easy_cleanup(h->curl);
  for (int form = 0; form < ACCEPT_FORMS; form++)
    for (int bin = 0; bin < 2; bin++)
      curl_slist_free_all(h->headers[form][bin]);
  free(h);
}

int lmap_http_perform(lmap_http *h, const char *url, const dynbuf *post,
                      int binary_post, size_t max_ok, dynbuf *body,
                      const lmap_http_sinks *sinks, lmap_http_outcome *out) {
  *out = (lmap_http_outcome){.declared = -1};
  lmap_dynbuf_reset(body);
  h->body = body;
  h->sinks = sinks ? *sinks : (lmap_http_sinks){NULL, NULL};
  int accept = h->sinks.sparse ? ACCEPT_SPARSE
               : h->sinks.npy  ? ACCEPT_NPY
                               : ACCEPT_JSON;
  h->max_ok = max_ok < LMAP_HTTP_MAX_ANSWER ? max_ok : LMAP_HTTP_MAX_ANSWER;
  h->status = 0;
  h->streaming = -1;
  h->sink_error = 0;
  h->out = out;
  h->errbuf[0] = '\0';
  CURL *c = h->curl;
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER,
                   h->headers[accept][post != NULL && binary_post]);
  if (post) {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, post->data);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)post->len);
  } else {
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
  }
  CURLcode rc = curl_easy_perform(c);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
  if (rc == CURLE_WRITE_ERROR && out->too_large) {
    if (out->declared >= 0 && (unsigned long long)out->declared > out->cap)
      snprintf(
          out->error, sizeof out->error,
          "the HTTP %ld answer's Content-Length is %lld bytes, over the %zu allowed for it",
          out->status, out->declared, out->cap);
    else
      snprintf(
          out->error, sizeof out->error,
          "the HTTP %ld answer is over the %zu bytes allowed for it (abandoned after %zu)",
          out->status, out->cap, out->received);
    return 0;
  }
  if (rc == CURLE_WRITE_ERROR && h->sink_error)
    return h->sink_error == LMAP_ENOMEM ? LMAP_ENOMEM
                                        : 0; /* the sink holds its error */
  if (rc != CURLE_OK) {
    out->transport_failed = 1;
    out->timed_out = rc == CURLE_OPERATION_TIMEDOUT;
    snprintf(out->error, sizeof out->error, "%s",
             h->errbuf[0] ? h->errbuf : curl_easy_strerror(rc));
  }
  return 0;
}
