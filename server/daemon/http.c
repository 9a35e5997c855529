/*
 * http: libmicrohttpd front end (see http.h). MHD calls the access handler
 * several times per request: first with the headers only (we check the
 * framing and set up the request state, and answer nothing yet unless the
 * request is refused), then with body chunks, then once with no data (we
 * dispatch to the api and queue its response).
 *
 * Before that, MHD's URI log callback sees the raw request target: the
 * per-request state is made there (its return value becomes the request's
 * con_cls), the URL is checked, and a query MHD could not parse safely is
 * cut off (see uri_logged). A new connection starts with the short header
 * timeout; the first handler call gives it the idle timeout.
 */
#include "http.h"

#include "lmap/version.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Each connection's memory pool holds its request line and headers and
 * the answer's headers (bodies live in our own buffers). MHD clears the
 * pool between requests, so its size is paid on every request: MHD's 32
 * KiB default cost 49 KB of memset per request, a quarter of the
 * instructions of a sparse GET. 16 KiB still takes headers as long as
 * nginx's default limit (8 KiB) with room to spare. */
#define CONNECTION_MEMORY (16u * 1024u)

struct http_server {
  struct MHD_Daemon *mhd;
  api *a;
  size_t max_body;
  unsigned idle_timeout, header_timeout;
  void (*on_message)(const char *);
  /* libmicrohttpd logs one line per refused connection: a flood would
   * become a flood of log lines, so at most MESSAGES_PER_SECOND pass. */
  pthread_mutex_t log_mu;
  int log_mu_made;
  time_t log_second;
  unsigned log_count;
  unsigned long long log_suppressed;
  void (*on_access)(const http_access *);
  int log_all;
  unsigned id_prefix; /* per process, so ids differ across restarts */
  atomic_ullong id_next;
  pthread_key_t worker_key;
  int key_made;
  /* For the drain: requests between their first handler call and their
   * completion, and when one last started or ended. */
  atomic_uint in_flight;
  atomic_ullong last_activity_ms;
  atomic_int draining;
  /* The listening socket MHD_quiesce_daemon handed back: shut down at
   * once, closed only after MHD_stop_daemon, since a pool thread may still
   * hold it until then (MHD's documentation; ThreadSanitizer saw the close
   * race with a pool thread's poll). */
  MHD_socket quiesced_fd;
  /* Large answers handed to MHD and not yet freed by it, and those
   * refused for want of room. */
  size_t max_answer_memory;
  atomic_size_t answer_bytes;
  atomic_ullong answers_over_budget;
  /* Open now, from MHD's notifications: for /metrics and the drain. */
  atomic_uint connections;
};

static unsigned long long monotonic_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (unsigned long long)ts.tv_sec * 1000 +
         (unsigned long long)ts.tv_nsec / 1000000;
}

/* Per-request state, from the URI log callback to the completion
 * callback. */
typedef struct request {
  int started; /* the handler has been called (counted in in_flight) */
  int refused; /* a response was queued on the first call */
  dynbuf body;
  char id[72]; /* X-Request-Id */
  struct timespec start;
  const char *method, *path; /* MHD's, valid for the request's life */
  /* The raw request target as MHD's buffer held it when the URI log
   * callback ran, and where its C string ended then: the request line is
   * checked against these on the first handler call. */
  const char *raw_uri, *raw_end;
  const char *problem; /* a refusal decided from the URL, or NULL */
  char problem_text[96];
  int bad_auth; /* the Authorization line held a NUL: an invalid credential */
} request;

/* Per connection (MHD's socket context): the request made by uri_logged
 * and not yet freed by `completed`. MHD 0.9.75 skips the completion
 * callback when it loses its own 431 (see uri_logged) and the connection
 * then times out; the request is freed when the connection closes. */
typedef struct conn_state {
  request *pending;
} conn_state;

static conn_state *conn_of(struct MHD_Connection *c) {
  const union MHD_ConnectionInfo *info =
      MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  return info ? info->socket_context : NULL;
}

/* ---- the request line, before MHD parses the query ---- */

/* "HTTP/1.d" and the NUL MHD wrote over the line's end. MHD refuses every
 * other version before the URI log callback runs. */
static int is_version(const char *p) {
  return memcmp(p, "HTTP/1.", 7) == 0 && p[7] >= '0' && p[7] <= '9' &&
         p[8] == '\0';
}

/* MHD's URI log callback: `uri` is the raw request target, in MHD's read
 * buffer, before the query is split and percent-decoded; what this returns
 * becomes the request's con_cls.
 *
 * Why the query is cut here: MHD stores each query parameter in the
 * connection's memory pool, and when the pool is full (about 150
 * parameters in our 16 KiB) MHD 0.9.75 queues a 431, then overwrites the
 * state that would send it and waits for more input: the client gets
 * nothing until the connection times out. A query over our limits is
 * refused by us anyway, so its first byte is overwritten with NUL: MHD
 * then parses no parameter at all and calls the handler, which answers
 * 400. The buffer is MHD's, handed out as const; it is writable, and MHD
 * itself writes NULs into it at the next step. */
static void *uri_logged(void *cls, const char *uri, struct MHD_Connection *c) {
  (void)cls;
  request *rq = calloc(1, sizeof *rq);
  conn_state *cs = conn_of(c);
  if (cs) {
    free(cs->pending); /* never started, so it holds nothing else */
    cs->pending = rq;
  }
  if (rq == NULL || uri == NULL)
    return rq;
  size_t n = strlen(uri);
  rq->raw_uri = uri;
  rq->raw_end = uri + n;
  char *query = memchr(uri, '?', n);
  if (!is_version(uri + n + 1)) {
    /* The C string ends before the version: a NUL byte in the target,
     * refused on the first handler call. MHD looks for the query across
     * such NULs, up to the version, so the first '?' there is cut too. */
    const char *p = uri + n + 1;
    while (!(p[0] == '\0' && is_version(p + 1))) {
      if (query == NULL && *p == '?')
        query = (char *)p;
      p++;
    }
    if (query)
      query[1] = '\0';
    return rq;
  }
  unsigned args = 0;
  for (const char *p = query; p && *p; p++)
    args += *p == '&' || *p == '?';
  for (size_t i = 0; i < n && rq->problem == NULL; i++) {
    unsigned char b = (unsigned char)uri[i];
    if (b <= ' ' || b == 0x7f)
      rq->problem = "the URL contains a space or a control byte";
    else if (b == '%' && uri[i + 1] == '0' && uri[i + 2] == '0')
      rq->problem = "the URL contains an encoded NUL byte (%00)";
  }
  if (n > HTTP_MAX_URL) {
    snprintf(rq->problem_text, sizeof rq->problem_text,
             "the URL is %zu bytes long, more than the %u allowed", n,
             HTTP_MAX_URL);
    rq->problem = rq->problem_text;
  } else if (args > HTTP_MAX_ARGS) {
    snprintf(rq->problem_text, sizeof rq->problem_text,
             "the query has %u parameters, more than the %u allowed", args,
             HTTP_MAX_ARGS);
    rq->problem = rq->problem_text;
  }
  if (rq->problem && query)
    query[1] = '\0';
  return rq;
}

/* ---- the request head: no NUL hidden in it ---- */

/* MHD (0.9.75) parses the head in place: the request line and every header
 * line stay where they arrived in its read buffer, with each CR LF (or LF)
 * and the separators it splits on (the space after the method and before
 * the version, each header's colon) overwritten with NUL, and hands out C
 * strings into it. A NUL byte sent inside a line therefore cuts the string
 * MHD hands out, and the bytes after it are silently dropped. So the head
 * is walked here, from the method to its end (MHD reports the head's
 * size), and every string MHD handed out must be followed by exactly the
 * separators MHD wrote: anything else is a NUL the client sent (or a
 * folded header line, which RFC 9112 lets a server refuse).
 *
 * The walk relies on that in-place layout: should a future MHD copy
 * strings elsewhere, every request fails this check (400), which every
 * e2e test would notice at once; none would pass silently. */
typedef struct head_walk {
  const char *p, *end; /* next byte expected; end of the head */
  unsigned nuls;       /* NULs before p since the last string */
  const char *last;    /* the header whose line is being ended, or NULL */
  int bad;             /* a malformed line other than Authorization */
  int auth;            /* the Authorization line is malformed */
} head_walk;

static void skip_nuls(head_walk *w) {
  w->nuls = 0;
  while (w->p < w->end && *w->p == '\0') {
    w->p++;
    w->nuls++;
  }
}

/* Header line `key` is malformed (NULL: a line that MHD moved, i.e. a
 * folded one, since the request line was checked before). */
static int blame(head_walk *w, const char *key) {
  if (key && strcasecmp(key, MHD_HTTP_HEADER_AUTHORIZATION) == 0) {
    w->auth = 1; /* the credential is invalid; the walk goes on */
    return 0;
  }
  w->bad = 1;
  return 1;
}

static enum MHD_Result walk_header(void *cls, enum MHD_ValueKind kind,
                                   const char *key, const char *value) {
  (void)kind;
  head_walk *w = cls;
  /* The previous line ended with CR LF or LF, both turned into NULs. */
  if ((w->nuls < 1 || w->nuls > 2 || w->p != key) && blame(w, w->last))
    return MHD_NO;
  const char *q = key + strlen(key) + 1; /* past the colon's NUL */
  while (*q == ' ' || *q == '\t')
    q++;
  if (value == NULL) {
    blame(w, key);
    return MHD_NO;
  }
  if (q != value && blame(w, key))
    return MHD_NO;
  for (q = value; *q; q++)
    if ((unsigned char)*q < ' ' && *q != '\t' && blame(w, key))
      return MHD_NO; /* a CR alone inside the value */
  w->last = key;
  w->p = q;
  skip_nuls(w);
  return MHD_YES;
}

/* NULL when the head is as MHD parsed it, else why not. *bad_auth is set
 * when only the Authorization line is malformed. */
static const char *head_problem(struct MHD_Connection *c, const char *method,
                                const char *version, const request *rq,
                                int *bad_auth) {
  const union MHD_ConnectionInfo *info =
      MHD_get_connection_info(c, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
  if (info == NULL || rq->raw_uri == NULL)
    return "the request head cannot be checked";
  head_walk w = {.end = method + info->header_size};
  /* method NUL [spaces] target NUL version */
  const char *p = method + strlen(method) + 1;
  while (*p == ' ')
    p++;
  if (p != rq->raw_uri || rq->raw_end + 1 != version)
    return "the request line contains a NUL byte";
  w.p = version + strlen(version);
  skip_nuls(&w);
  MHD_get_connection_values(c, MHD_HEADER_KIND, walk_header, &w);
  /* The last line, then the empty line: two to four NULs to the end. */
  if (!w.bad && !(w.p == w.end && w.nuls >= 2 && w.nuls <= 4))
    blame(&w, w.last);
  *bad_auth = w.auth;
  return w.bad ? "a header line contains a NUL or CR byte, or is folded" : NULL;
}

/* ---- framing checks on the first call ---- */

typedef struct framing {
  int content_length; /* headers seen */
  int transfer_encoding;
  int authorization;
  int te_chunked; /* the only Transfer-Encoding value accepted */
  int bad_name;
  unsigned long long length;
  int length_ok;
} framing;

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind,
                                   const char *key, const char *value) {
  (void)kind;
  framing *f = cls;
  if (strpbrk(key, " \t") != NULL)
    f->bad_name = 1;
  if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
    f->content_length++;
    char *end;
    f->length = strtoull(value ? value : "", &end, 10);
    f->length_ok = value && *value >= '0' && *value <= '9' && *end == '\0';
  } else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
    f->transfer_encoding++;
    f->te_chunked = value && strcasecmp(value, "chunked") == 0;
  } else if (strcasecmp(key, MHD_HTTP_HEADER_AUTHORIZATION) == 0) {
    f->authorization++;
  }
  return MHD_YES;
}

/* A large answer's buffer while MHD holds it: freed, and its bytes taken
 * off the budget, when MHD is done with it (sent, or the client gone). */
typedef struct handed_answer {
  http_server *s;
  char *data;
  size_t len;
} handed_answer;

static void free_handed_answer(void *cls) {
  handed_answer *h = cls;
  atomic_fetch_sub(&h->s->answer_bytes, h->len);
  free(h->data);
  free(h);
}

/* Takes a large answer's buffer from its worker (no copy) into a response,
 * counted against the budget until MHD frees it. NULL with *over_budget
 * set when the budget has no room for it, NULL alone when out of memory. */
static struct MHD_Response *hand_over(http_server *s, api_response *r,
                                      int *over_budget) {
  size_t len = r->body.len;
  size_t held = atomic_fetch_add(&s->answer_bytes, len);
  *over_budget = held + len > s->max_answer_memory;
  handed_answer *h = NULL;
  struct MHD_Response *resp = NULL;
  if (!*over_budget && (h = malloc(sizeof *h)) != NULL) {
    *h = (handed_answer){s, r->body.data, len};
    resp = MHD_create_response_from_buffer_with_free_callback_cls(
        len, h->data, free_handed_answer, h);
  }
  if (resp == NULL) {
    free(h);
    atomic_fetch_sub(&s->answer_bytes, len);
    return NULL;
  }
  /* The worker starts its next answer in a new buffer; `len` stays, for
   * the metrics and the access log. */
  r->body.data = NULL;
  r->body.cap = 0;
  return resp;
}

static enum MHD_Result respond(http_server *s, struct MHD_Connection *c,
                               request *rq, api_response *r);

/* An answer that does not fit in the budget becomes a 503: its work is
 * lost, but clients that do not read cannot take the memory of the
 * others. Its buffer goes back to the system (api_observe, through the
 * worker named here). */
static enum MHD_Result respond_over_budget(http_server *s,
                                           struct MHD_Connection *c,
                                           request *rq, api_response *r) {
  char msg[320];
  snprintf(msg, sizeof msg,
           "the answer of %zu bytes does not fit: answers waiting for their "
           "clients to read them hold %zu bytes of the %zu that lmapd "
           "--max-answer-memory allows; retry later",
           r->body.len, atomic_load(&s->answer_bytes), s->max_answer_memory);
  atomic_fetch_add(&s->answers_over_budget, 1);
  api_response busy = {0};
  lmap_dynbuf_init(&busy.body, 4096);
  api_error_message(&busy, LMAP_EUNAVAILABLE, msg);
  busy.route = r->route;
  busy.batch = r->batch;
  busy.worker = r->worker;
  busy.retry_after = 1;
  enum MHD_Result ok = respond(s, c, rq, &busy);
  lmap_dynbuf_free(&busy.body);
  return ok;
}

#define UI_POLICY                                                              \
  "default-src 'none'; script-src 'self'; style-src 'self'; "                  \
  "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "                \
  "form-action 'none'; frame-ancestors 'none'"

static enum MHD_Result respond(http_server *s, struct MHD_Connection *c,
                               request *rq, api_response *r) {
  struct MHD_Response *resp = NULL;
  if (r->has_file) {
    /* MHD sends it with sendfile() (no copy through user space) and
     * closes the descriptor when done. */
    r->has_file = 0;
    resp = MHD_create_response_from_fd_at_offset64(r->file_length, r->file_fd,
                                                   (int64_t)r->file_offset);
    if (resp == NULL) {
      close(r->file_fd);
      return MHD_NO;
    }
  } else if (r->worker != NULL && r->body.len > HTTP_HANDOVER_BYTES) {
    int over_budget;
    resp = hand_over(s, r, &over_budget);
    if (over_budget)
      return respond_over_budget(s, c, rq, r);
  }
  if (resp == NULL)
    resp = MHD_create_response_from_buffer(
        r->body.len, r->body.data ? r->body.data : (void *)"",
        MHD_RESPMEM_MUST_COPY);
  if (resp == NULL)
    return MHD_NO;
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->content_type);
  MHD_add_response_header(resp, "X-Request-Id", rq->id);
  MHD_add_response_header(resp, MHD_HTTP_HEADER_SERVER,
                          "lmapd/" LMAP_VERSION_STRING);
  if (r->allow)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->allow);
  if (r->store_id[0])
    MHD_add_response_header(resp, "X-Lmap-Store", r->store_id);
  if (r->etag[0])
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, r->etag);
  if (r->accept_ranges)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCEPT_RANGES, "bytes");
  if (r->content_range[0])
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_RANGE,
                            r->content_range);
  if (r->auth_challenge)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
  if (r->page) {
    /* The store browser runs only its own files and talks only to this
     * server; it is never framed (clickjacking) and always revalidated
     * (a new lmapd serves new files). */
    MHD_add_response_header(resp, "Content-Security-Policy", UI_POLICY);
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
  }
  if (r->retry_after) {
    char seconds[16];
    snprintf(seconds, sizeof seconds, "%u", r->retry_after);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, seconds);
  }
  /* While draining, kept-alive clients are told to go: their next request
   * opens a new connection, which another server takes. */
  if (atomic_load(&s->draining))
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
  enum MHD_Result ok = MHD_queue_response(c, (unsigned)r->status, resp);
  MHD_destroy_response(resp);
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  double ms = (double)(now.tv_sec - rq->start.tv_sec) * 1e3 +
              (double)(now.tv_nsec - rq->start.tv_nsec) * 1e-6;
  api_observe(s->a, r, ms);
  if (s->on_access && (s->log_all || r->status >= 400)) {
    http_access a = {rq->id,
                     rq->method,
                     rq->path,
                     r->status,
                     r->file_length ? r->file_length : r->body.len,
                     ms};
    s->on_access(&a);
  }
  return ok;
}

/* The client's X-Request-Id when it is a short token of safe bytes (so it
 * can go into logs as is), otherwise "<process>-<counter>". */
static void request_id(http_server *s, struct MHD_Connection *c, request *rq) {
  const char *v =
      MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
  size_t n = v ? strlen(v) : 0;
  int ok = n > 0 && n < 64;
  for (size_t i = 0; ok && i < n; i++)
    ok = (v[i] >= '0' && v[i] <= '9') || (v[i] >= 'a' && v[i] <= 'z') ||
         (v[i] >= 'A' && v[i] <= 'Z') || v[i] == '-' || v[i] == '_' ||
         v[i] == '.';
  if (ok)
    memcpy(rq->id, v, n + 1);
  else
    snprintf(rq->id, sizeof rq->id, "%08x-%llu", s->id_prefix,
             (unsigned long long)atomic_fetch_add(&s->id_next, 1));
}

/* Refuses a request before its body is read. MHD closes the connection
 * after such an answer, which is right: the rest of the stream cannot be
 * trusted to be framed as the client meant. */
static enum MHD_Result refuse(http_server *s, struct MHD_Connection *c,
                              request *rq, int err, const char *message) {
  api_response r = {0};
  lmap_dynbuf_init(&r.body, 4096);
  api_error_message(&r, err, message);
  r.route = ROUTE_OTHER;
  rq->refused = 1;
  enum MHD_Result ok = respond(s, c, rq, &r);
  lmap_dynbuf_free(&r.body);
  return ok;
}

static enum MHD_Result first_call(http_server *s, struct MHD_Connection *c,
                                  const char *method, const char *version,
                                  request *rq) {
  framing f = {0};
  char msg[160];
  if (rq->problem)
    return refuse(s, c, rq, LMAP_EREQUEST, rq->problem);
  const char *head = head_problem(c, method, version, rq, &rq->bad_auth);
  if (head)
    return refuse(s, c, rq, LMAP_EREQUEST, head);
  MHD_get_connection_values(c, MHD_HEADER_KIND, scan_header, &f);
  if (f.bad_name)
    return refuse(s, c, rq, LMAP_EREQUEST,
                  "a header name contains white space");
  if (f.content_length > 1)
    return refuse(s, c, rq, LMAP_EREQUEST,
                  "more than one Content-Length header");
  if (f.authorization > 1)
    return refuse(s, c, rq, LMAP_EREQUEST,
                  "more than one Authorization header");
  if (f.transfer_encoding && f.content_length)
    return refuse(s, c, rq, LMAP_EREQUEST,
                  "Content-Length together with Transfer-Encoding");
  if (f.transfer_encoding > 1 || (f.transfer_encoding && !f.te_chunked))
    return refuse(s, c, rq, LMAP_EREQUEST,
                  "Transfer-Encoding other than chunked");
  if (f.content_length && !f.length_ok)
    return refuse(s, c, rq, LMAP_EREQUEST, "malformed Content-Length");
  if (strcmp(method, "POST") == 0 && !f.content_length)
    return refuse(s, c, rq, LMAP_ELENGTH, "a POST body needs a Content-Length");
  if (f.content_length && f.length > s->max_body) {
    snprintf(msg, sizeof msg,
             "the body is %llu bytes, more than the %zu "
             "allowed",
             f.length, s->max_body);
    return refuse(s, c, rq, LMAP_ETOOBIG, msg);
  }
  lmap_dynbuf_init(&rq->body, s->max_body);
  if (f.content_length && lmap_dynbuf_reserve(&rq->body, (size_t)f.length))
    return refuse(s, c, rq, LMAP_EINTERNAL, "out of memory");
  return MHD_YES;
}

/* ---- dispatch ---- */

static const char *get_arg(void *ctx, const char *name) {
  return MHD_lookup_connection_value(ctx, MHD_GET_ARGUMENT_KIND, name);
}

static api_worker *thread_worker(http_server *s) {
  api_worker *w = pthread_getspecific(s->worker_key);
  if (w == NULL) {
    w = api_worker_new(s->a);
    if (w != NULL)
      pthread_setspecific(s->worker_key, w);
  }
  return w;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c,
                              const char *url, const char *method,
                              const char *version, const char *upload_data,
                              size_t *upload_size, void **con_cls) {
  http_server *s = cls;
  request *rq = *con_cls; /* made by uri_logged */
  if (rq == NULL)
    return MHD_NO; /* out of memory there: close the connection */
  if (!rq->started) {
    rq->started = 1;
    atomic_fetch_add(&s->in_flight, 1);
    atomic_store(&s->last_activity_ms, monotonic_ms());
    clock_gettime(CLOCK_MONOTONIC, &rq->start);
    rq->method = method;
    rq->path = url;
    /* The head is complete: from now on the connection may idle as long
     * as any kept-alive one. */
    if (s->header_timeout != s->idle_timeout)
      MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT,
                                s->idle_timeout);
    request_id(s, c, rq);
    return first_call(s, c, method, version, rq);
  }
  if (rq->refused) {
    *upload_size = 0; /* the answer is queued; drop what still arrives */
    return MHD_YES;
  }
  if (*upload_size) {
    if (lmap_dynbuf_add(&rq->body, upload_data, *upload_size))
      return refuse(s, c, rq, LMAP_ETOOBIG, "the body exceeds the limit");
    *upload_size = 0;
    return MHD_YES;
  }
  api_worker *w = thread_worker(s);
  if (w == NULL)
    return refuse(s, c, rq, LMAP_EINTERNAL, "cannot set up a worker");
  api_request req = {
      .method = method,
      .path = url,
      .arg = get_arg,
      .arg_ctx = c,
      .accept = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                            MHD_HTTP_HEADER_ACCEPT),
      .authorization =
          rq->bad_auth ? ""
                       : MHD_lookup_connection_value(
                             c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION),
      .range = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                           MHD_HTTP_HEADER_RANGE),
      .if_range = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                              MHD_HTTP_HEADER_IF_RANGE),
      .content_type = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                  MHD_HTTP_HEADER_CONTENT_TYPE),
      .body = (const uint8_t *)rq->body.data,
      .body_len = rq->body.len,
  };
  return respond(s, c, rq, api_handle(w, &req));
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe) {
  (void)toe;
  http_server *s = cls;
  request *rq = *con_cls;
  if (rq == NULL)
    return;
  if (rq->started) {
    atomic_fetch_sub(&s->in_flight, 1);
    atomic_store(&s->last_activity_ms, monotonic_ms());
  }
  lmap_dynbuf_free(&rq->body);
  conn_state *cs = conn_of(c);
  if (cs && cs->pending == rq)
    cs->pending = NULL;
  free(rq);
  *con_cls = NULL;
}

static void free_worker(void *w) {
  api_worker_free(w);
}

/* A new connection (accepted by MHD, or handed over by http_quiesce) has
 * the header timeout until its first request head is complete. */
static void connection_event(void *cls, struct MHD_Connection *c,
                             void **socket_context,
                             enum MHD_ConnectionNotificationCode code) {
  http_server *s = cls;
  if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
    atomic_fetch_sub(&s->connections, 1);
    conn_state *cs = *socket_context;
    if (cs && cs->pending) {
      lmap_dynbuf_free(&cs->pending->body);
      free(cs->pending);
    }
    free(cs);
    *socket_context = NULL;
    return;
  }
  atomic_fetch_add(&s->connections, 1);
  *socket_context = calloc(1, sizeof(conn_state)); /* NULL: not tracked */
  if (s->header_timeout != s->idle_timeout)
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT,
                              s->header_timeout);
}

/* The edge's lines of /metrics (api_set_edge_metrics). */
static int render_metrics(void *ctx, dynbuf *b) {
  http_server *s = ctx;
  return lmap_dynbuf_printf(
      b,
      "# HELP lmap_connections Open client connections.\n"
      "# TYPE lmap_connections gauge\nlmap_connections %u\n"
      "# HELP lmap_answer_bytes_waiting Bytes of answers over 1 MiB "
      "waiting for their clients to read them.\n"
      "# TYPE lmap_answer_bytes_waiting gauge\n"
      "lmap_answer_bytes_waiting %zu\n"
      "# HELP lmap_answer_memory_limit_bytes --max-answer-memory.\n"
      "# TYPE lmap_answer_memory_limit_bytes gauge\n"
      "lmap_answer_memory_limit_bytes %zu\n"
      "# HELP lmap_answers_over_budget_total Answers refused with 503 "
      "because --max-answer-memory was full.\n"
      "# TYPE lmap_answers_over_budget_total counter\n"
      "lmap_answers_over_budget_total %llu\n",
      atomic_load(&s->connections), atomic_load(&s->answer_bytes),
      s->max_answer_memory, atomic_load(&s->answers_over_budget));
}

#define MESSAGES_PER_SECOND 10

static void mhd_log(void *cls, const char *fmt, va_list ap) {
  http_server *s = cls;
  if (s->on_message == NULL)
    return;
  char msg[512];
  vsnprintf(msg, sizeof msg, fmt, ap);
  size_t n = strlen(msg);
  while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
    msg[--n] = '\0';
  time_t now = time(NULL);
  unsigned long long dropped = 0;
  int pass = 1;
  pthread_mutex_lock(&s->log_mu);
  if (now != s->log_second) {
    dropped = s->log_suppressed;
    s->log_suppressed = 0;
    s->log_second = now;
    s->log_count = 0;
  }
  if (++s->log_count > MESSAGES_PER_SECOND) {
    s->log_suppressed++;
    pass = 0;
  }
  pthread_mutex_unlock(&s->log_mu);
  if (dropped) {
    char note[96];
    snprintf(note, sizeof note,
             "%llu more messages were suppressed (at most %d a second)",
             dropped, MESSAGES_PER_SECOND);
    s->on_message(note);
  }
  if (pass)
    s->on_message(msg);
}

/* Descriptors lmapd needs besides its connections: stdio, the listener,
 * each pool thread's wake-up descriptors, the store (file and
 * lock, twice during a reload), the control loop's. Generous on purpose. */
static unsigned long files_needed(const http_config *c) {
  return (unsigned long)c->max_connections + 64ul + 4ul * c->threads;
}

int http_reserve_files(const http_config *c, unsigned long *before,
                       unsigned long *after, diag *d) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return diag_set(d, LMAP_EIO, "cannot read the open-file limit: %s",
                    strerror(errno));
  unsigned long need = files_needed(c);
  *before = *after = (unsigned long)rl.rlim_cur;
  if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need)
    return 0;
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need)
    return diag_field(d, LMAP_EINVAL, "max-connections",
                      "--max-connections %u needs %lu open files, but this "
                      "process may open at most %lu (its hard RLIMIT_NOFILE, "
                      "ulimit -Hn): lower --max-connections or raise the "
                      "limit",
                      c->max_connections, need, (unsigned long)rl.rlim_max);
  rl.rlim_cur = need;
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
    return diag_set(d, LMAP_EIO, "cannot raise the open-file limit to %lu: %s",
                    need, strerror(errno));
  *after = need;
  return 0;
}

/* Undoes what http_start made before MHD started. */
static void http_unmake(http_server *s, api *a) {
  api_set_edge_metrics(a, NULL, NULL);
  pthread_key_delete(s->worker_key);
  pthread_mutex_destroy(&s->log_mu);
  free(s);
}

/* The socket address for `c` into *addr, and the MHD flags its family
 * needs. An IPv6 address is bound with MHD_USE_DUAL_STACK (IPV6_V6ONLY
 * off): then [::] takes IPv4 clients too, as ::ffff:a.b.c.d, where the
 * system allows it (MHD only logs when it cannot), and a specific address
 * is served as it would be anyway. */
static int listen_address(const http_config *c, struct sockaddr_storage *addr,
                          unsigned *flags, diag *d) {
  memset(addr, 0, sizeof *addr);
  if (strchr(c->host, ':') == NULL) {
    struct sockaddr_in *v4 = (struct sockaddr_in *)addr;
    v4->sin_family = AF_INET;
    v4->sin_port = htons(c->port);
    if (inet_pton(AF_INET, c->host, &v4->sin_addr) != 1)
      return diag_field(d, LMAP_EINVAL, "listen",
                        "'%s' is not a numeric IPv4 address", c->host);
    *flags = 0;
    return 0;
  }
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)addr;
  v6->sin6_family = AF_INET6;
  v6->sin6_port = htons(c->port);
  if (inet_pton(AF_INET6, c->host, &v6->sin6_addr) != 1)
    return diag_field(d, LMAP_EINVAL, "listen",
                      "'%s' is not a numeric IPv6 address", c->host);
  if (MHD_is_feature_supported(MHD_FEATURE_IPv6) != MHD_YES)
    return diag_field(d, LMAP_EINVAL, "listen",
                      "this libmicrohttpd was built without IPv6: [%s] "
                      "cannot be served",
                      c->host);
  *flags = MHD_USE_DUAL_STACK;
  return 0;
}

int http_start(const http_config *c, api *a, http_server **out,
               uint16_t *port_out, diag *d) {
  struct sockaddr_storage addr;
  unsigned family_flags = 0;
  int rc = listen_address(c, &addr, &family_flags, d);
  if (rc != 0)
    return rc;
  http_server *s = calloc(1, sizeof *s);
  if (s == NULL)
    return diag_set(d, LMAP_ENOMEM, "out of memory");
  s->a = a;
  s->quiesced_fd = MHD_INVALID_SOCKET;
  s->max_answer_memory = c->max_answer_memory;
  s->max_body = c->max_body;
  s->idle_timeout = c->idle_timeout;
  /* A connection that has not sent a request never gets more time than
   * an idle kept-alive one. */
  s->header_timeout = c->header_timeout;
  if (s->header_timeout == 0 ||
      (c->idle_timeout && c->idle_timeout < s->header_timeout))
    s->header_timeout = c->idle_timeout;
  s->on_message = c->on_message;
  s->on_access = c->on_access;
  s->log_all = c->log_all;
  struct timespec seed;
  clock_gettime(CLOCK_REALTIME, &seed);
  s->id_prefix = (unsigned)(seed.tv_nsec ^ (seed.tv_sec << 20) ^ getpid());
  if (pthread_mutex_init(&s->log_mu, NULL) != 0) {
    free(s);
    return diag_set(d, LMAP_ENOMEM, "cannot create a mutex");
  }
  s->log_mu_made = 1;
  if (pthread_key_create(&s->worker_key, free_worker) != 0) {
    pthread_mutex_destroy(&s->log_mu);
    free(s);
    return diag_set(d, LMAP_ENOMEM, "cannot create a thread key");
  }
  s->key_made = 1;
  /* Before MHD's threads start (which orders it before their reads). */
  api_set_edge_metrics(a, render_metrics, s);
  /* MHD's messages go through our log, so that every stderr line stays a
   * log line (the logger must be the first option, or MHD says so on
   * stderr); one thread is MHD's plain internal thread, more a pool.
   * poll, not epoll: with the per-connection timeout that
   * connection_event sets, MHD 0.9.75's edge-triggered epoll loses the end
   * of a stream that arrives with the last bytes of a partial request (the
   * socket stays in CLOSE_WAIT until a timeout, and a drain waits for it;
   * see test_e2e_limits.py's abandoned_requests). poll served as many
   * requests a second as epoll from 16 to 1,000 connections. */
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                   MHD_USE_ITC | MHD_USE_ERROR_LOG | family_flags;
  struct MHD_OptionItem extra[4];
  size_t n = 0;
  if (c->threads > 1)
    extra[n++] = (struct MHD_OptionItem){MHD_OPTION_THREAD_POOL_SIZE,
                                         (intptr_t)c->threads, NULL};
  if (c->tls_cert != NULL) {
    if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
      http_unmake(s, a);
      return diag_set(d, LMAP_EINVAL,
                      "this libmicrohttpd was built without TLS: --tls-cert "
                      "cannot be served");
    }
    flags |= MHD_USE_TLS;
    extra[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0,
                                         (void *)c->tls_cert};
    extra[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0,
                                         (void *)c->tls_key};
  }
  extra[n] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
  s->mhd = MHD_start_daemon(
      flags, c->port, NULL, NULL, handle, s, MHD_OPTION_EXTERNAL_LOGGER,
      mhd_log, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
      MHD_OPTION_ARRAY, extra, MHD_OPTION_CONNECTION_TIMEOUT, c->idle_timeout,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONNECTION_MEMORY,
      MHD_OPTION_CONNECTION_LIMIT, c->max_connections,
      MHD_OPTION_PER_IP_CONNECTION_LIMIT, c->max_per_ip,
      MHD_OPTION_NOTIFY_COMPLETED, completed, s, MHD_OPTION_NOTIFY_CONNECTION,
      connection_event, s, MHD_OPTION_URI_LOG_CALLBACK, uri_logged, s,
      MHD_OPTION_END);
  if (s->mhd == NULL) {
    http_unmake(s, a);
    int v6 = addr.ss_family == AF_INET6;
    return diag_field(d, LMAP_EIO, "listen",
                      c->tls_cert ? "cannot listen with TLS on %s%s%s:%u (is "
                                    "the key the certificate's? "
                                    "libmicrohttpd's message is logged above)"
                                  : "cannot listen on %s%s%s:%u",
                      v6 ? "[" : "", c->host, v6 ? "]" : "", (unsigned)c->port);
  }
  const union MHD_DaemonInfo *info =
      MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
  *port_out = info ? info->port : c->port;
  *out = s;
  return 0;
}

/* Connections the kernel has completed but MHD not yet accepted sit in the
 * listen backlog; closing the socket would reset them, although their
 * clients already sent a request. They are accepted here and handed to MHD
 * to be served like the others; only connections arriving after this are
 * refused. */
void http_quiesce(http_server *s) {
  atomic_store(&s->draining, 1);
  MHD_socket fd = MHD_quiesce_daemon(s->mhd);
  if (fd == MHD_INVALID_SOCKET)
    return;
  int flags = fcntl(fd, F_GETFL);
  if (flags >= 0)
    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  for (;;) {
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    int c = accept(fd, (struct sockaddr *)&addr, &len);
    if (c < 0)
      break;
    /* MHD owns the socket from here, and closes it even on failure. */
    MHD_add_connection(s->mhd, c, (struct sockaddr *)&addr, len);
  }
  /* Connections arriving from now on are refused; the descriptor itself
   * is closed by http_stop. */
  shutdown(fd, SHUT_RDWR);
  s->quiesced_fd = fd;
}

unsigned http_connections(http_server *s) {
  return atomic_load(&s->connections);
}

unsigned http_in_flight(http_server *s, unsigned long long *quiet_ms) {
  unsigned long long last = atomic_load(&s->last_activity_ms),
                     now = monotonic_ms();
  *quiet_ms = now > last ? now - last : 0;
  return atomic_load(&s->in_flight);
}

void http_stop(http_server *s) {
  if (s == NULL)
    return;
  /* Joining the pool threads runs their key destructors, which free the
   * workers (and their store readers) before the caller closes the store. */
  MHD_stop_daemon(s->mhd);
  api_set_edge_metrics(s->a, NULL, NULL);
  if (s->quiesced_fd != MHD_INVALID_SOCKET)
    close(s->quiesced_fd);
  if (s->key_made)
    pthread_key_delete(s->worker_key);
  if (s->log_mu_made)
    pthread_mutex_destroy(&s->log_mu);
  free(s);
}
