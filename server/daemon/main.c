/*
 * lmapd: serves one label-map store over HTTP/JSON. This file turns flags
 * and environment variables into a configuration and starts the pieces;
 * the work is in api.c (routes), http.c (transport) and control.c
 * (signals and drain). Every flag has an environment variable; a flag wins
 * over the environment, which wins over the default.
 */
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "control.h"
#include "http.h"
#include "lmap/version.h"
#include "log.h"
#include "store.h"

static const char usage[] =
    "usage: lmapd --store PATH [options]\n"
    "\n"
    "Serves soft labels pooled from a label-map store over HTTP/JSON.\n"
    "Each option also reads an environment variable (shown); a flag wins.\n"
    "\n"
    "  --store PATH             LMAPD_STORE        the store (required)\n"
    "  --listen HOST:PORT       LMAPD_LISTEN       default 127.0.0.1:8080 (port 0:\n"
    "                                              any free port, logged)\n"
    "  --threads N              LMAPD_THREADS      HTTP worker threads (default 2)\n"
    "  --max-body BYTES         LMAPD_MAX_BODY     request body cap (default 8388608)\n"
    "  --max-batch N            LMAPD_MAX_BATCH    queries per request (default 4096)\n"
    "  --max-connections N      LMAPD_MAX_CONNECTIONS  (default 1024)\n"
    "  --max-per-ip N           LMAPD_MAX_PER_IP   connections per client IP (default 0: no limit)\n"
    "  --idle-timeout SECONDS   LMAPD_IDLE_TIMEOUT idle connection timeout (default 60)\n"
    "  --grace SECONDS          LMAPD_GRACE        drain time on SIGTERM (default 30)\n"
    "  --access-log             LMAPD_ACCESS_LOG=1 log every request (default: errors only)\n"
    "  --log-format json|text   LMAPD_LOG_FORMAT   log lines (default json)\n"
    "  --token-file PATH        LMAPD_TOKEN_FILE   require 'Authorization: Bearer <token>'\n"
    "                                              on /v1/ (the file's first line)\n"
    "\n"
    "Signals: SIGTERM/SIGINT drain (readyz 503, stop accepting, finish open\n"
    "requests, exit 0; exit 1 if the grace period ran out). SIGHUP reopens\n"
    "the store path (install a new store with rename) and swaps it in without\n"
    "failing a request; a store that fails to open is logged and the old one\n"
    "kept.\n"
    "exit status: 0 clean stop, 1 failure (logged), 2 usage error.\n";

typedef struct config {
  const char *store;
  const char *listen;
  const char *token_file;
  int access_log;
  const char *log_format;
  unsigned long threads, max_body, max_batch, max_connections, max_per_ip,
      idle_timeout, grace;
} config;

typedef struct setting {
  const char *flag, *env;
  unsigned long *value;
  unsigned long min, max;
} setting;

static int parse_ulong(const char *s, unsigned long min, unsigned long max,
                       unsigned long *out) {
  char *end;
  if (s == NULL || *s < '0' || *s > '9')
    return -1;
  unsigned long long v = strtoull(s, &end, 10);
  if (*end || v < min || v > max)
    return -1;
  *out = (unsigned long)v;
  return 0;
}

/* The token is the file's first line, without trailing white space. */
static int read_token(const char *path, char *buf, size_t cap, size_t *len,
                      diag *d) {
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return diag_set(d, LMAP_EIO, "%s: cannot open the token file", path);
  size_t n = fgets(buf, (int)cap, f) ? strlen(buf) : 0;
  fclose(f);
  while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' ||
               buf[n - 1] == ' ' || buf[n - 1] == '\t'))
    n--;
  if (n == 0)
    return diag_set(d, LMAP_EINVAL, "%s: the token file is empty", path);
  *len = n;
  return 0;
}

/* The access log: one JSON line per answered request. The path comes from
 * the client, so it is JSON-escaped by jansson. */
static void log_access(const http_access *a) {
  json_t *p = json_string(a->path);
  char *path = p ? json_dumps(p, JSON_ENCODE_ANY) : NULL;
  json_decref(p);
  log_event("request",
            "\"request_id\":\"%s\",\"method\":\"%s\",\"path\":%s,"
            "\"status\":%d,\"bytes\":%zu,\"ms\":%.3f",
            a->request_id, a->method, path ? path : "\"?\"", a->status,
            a->bytes, a->ms);
  free(path);
}

/* libmicrohttpd's own messages, as log lines. */
static void log_mhd(const char *message) {
  json_t *m = json_string(message);
  char *text = m ? json_dumps(m, JSON_ENCODE_ANY) : NULL;
  log_event("http_library", "\"message\":%s", text ? text : "\"?\"");
  free(text);
  json_decref(m);
}

static int bad(const char *what, const char *value) {
  fprintf(stderr, "lmapd: %s: '%s' is not valid\nTry 'lmapd --help'.\n", what,
          value);
  return 2;
}

/* "host:port" with a numeric IPv4 host. */
static int split_listen(const char *s, char *host, size_t cap,
                        unsigned long *port) {
  const char *colon = strrchr(s, ':');
  if (colon == NULL || (size_t)(colon - s) >= cap || colon == s)
    return -1;
  memcpy(host, s, (size_t)(colon - s));
  host[colon - s] = '\0';
  return parse_ulong(colon + 1, 0, 65535, port);
}

int main(int argc, char **argv) {
  config c = {.listen = "127.0.0.1:8080", .threads = 2, .max_body = 8u << 20,
              .max_batch = 4096, .max_connections = 1024, .max_per_ip = 0,
              .idle_timeout = 60, .grace = 30};
  setting settings[] = {
      {"threads", "LMAPD_THREADS", &c.threads, 1, 256},
      {"max-body", "LMAPD_MAX_BODY", &c.max_body, 1024, 1ul << 30},
      {"max-batch", "LMAPD_MAX_BATCH", &c.max_batch, 1, 1u << 20},
      {"max-connections", "LMAPD_MAX_CONNECTIONS", &c.max_connections, 1,
       1u << 20},
      {"max-per-ip", "LMAPD_MAX_PER_IP", &c.max_per_ip, 0, 1u << 20},
      {"idle-timeout", "LMAPD_IDLE_TIMEOUT", &c.idle_timeout, 0, 86400},
      {"grace", "LMAPD_GRACE", &c.grace, 0, 86400},
  };
  size_t nsettings = sizeof settings / sizeof settings[0];

  /* Environment first, then flags over it. */
  if (getenv("LMAPD_STORE"))
    c.store = getenv("LMAPD_STORE");
  if (getenv("LMAPD_LISTEN"))
    c.listen = getenv("LMAPD_LISTEN");
  if (getenv("LMAPD_LOG_FORMAT"))
    c.log_format = getenv("LMAPD_LOG_FORMAT");
  if (getenv("LMAPD_ACCESS_LOG"))
    c.access_log = strcmp(getenv("LMAPD_ACCESS_LOG"), "0") != 0;
  if (getenv("LMAPD_TOKEN_FILE"))
    c.token_file = getenv("LMAPD_TOKEN_FILE");
  for (size_t i = 0; i < nsettings; i++) {
    const char *v = getenv(settings[i].env);
    if (v && parse_ulong(v, settings[i].min, settings[i].max,
                         settings[i].value))
      return bad(settings[i].env, v);
  }
  struct option longopts[16] = {
      {"store", required_argument, 0, 's'},
      {"listen", required_argument, 0, 'l'},
      {"help", no_argument, 0, 'h'},
      {"version", no_argument, 0, 'V'},
      {"token-file", required_argument, 0, 't'},
      {"access-log", no_argument, 0, 'a'},
      {"log-format", required_argument, 0, 'L'},
  };
  for (size_t i = 0; i < nsettings; i++)
    longopts[7 + i] = (struct option){settings[i].flag, required_argument, 0,
                                      (int)(100 + i)};
  int opt;
  while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    if (opt == 's')
      c.store = optarg;
    else if (opt == 'l')
      c.listen = optarg;
    else if (opt == 't')
      c.token_file = optarg;
    else if (opt == 'a')
      c.access_log = 1;
    else if (opt == 'L')
      c.log_format = optarg;
    else if (opt == 'h') {
      fputs(usage, stdout);
      return 0;
    } else if (opt == 'V') {
      printf("lmapd %s\n", LMAP_VERSION_STRING);
      return 0;
    } else if (opt >= 100 && opt < 100 + (int)nsettings) {
      setting *st = &settings[opt - 100];
      if (parse_ulong(optarg, st->min, st->max, st->value))
        return bad(st->flag, optarg);
    } else {
      fputs("Try 'lmapd --help'.\n", stderr);
      return 2;
    }
  }
  if (optind != argc)
    return bad("argument", argv[optind]);
  if (c.store == NULL) {
    fputs("lmapd: --store PATH (or LMAPD_STORE) is required\n", stderr);
    return 2;
  }
  if (c.log_format && strcmp(c.log_format, "json") &&
      strcmp(c.log_format, "text"))
    return bad("log-format", c.log_format);
  log_set_text(c.log_format && strcmp(c.log_format, "text") == 0);
  char host[64];
  unsigned long port;
  if (split_listen(c.listen, host, sizeof host, &port))
    return bad("listen", c.listen);

  /* A client that disconnects mid-answer must not kill the daemon. */
  signal(SIGPIPE, SIG_IGN);
  /* Before any thread starts: a SIGTERM or SIGHUP sent as soon as the
   * daemon listens must wait for the control loop, not kill it. */
  control_block_signals();

  json_t *cfg = json_pack(
      "{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s}", "store",
      c.store, "token", c.token_file ? "<redacted, from file>" : "none",
      "listen", c.listen, "threads", (json_int_t)c.threads, "max_body",
      (json_int_t)c.max_body, "max_batch", (json_int_t)c.max_batch,
      "max_connections", (json_int_t)c.max_connections, "max_per_ip",
      (json_int_t)c.max_per_ip, "idle_timeout", (json_int_t)c.idle_timeout,
      "grace", (json_int_t)c.grace, "version", LMAP_VERSION_STRING);
  char *cfg_text = cfg ? json_dumps(cfg, JSON_COMPACT) : NULL;
  log_event("config", "\"config\":%s", cfg_text ? cfg_text : "null");
  free(cfg_text);
  json_decref(cfg);

  diag d;
  diag_clear(&d);
  store *s = NULL;
  api *a = NULL;
  http_server *h = NULL;
  int rc = 1;
  char token[4096];
  size_t token_len = 0;
  if (c.token_file && read_token(c.token_file, token, sizeof token,
                                 &token_len, &d))
    goto fail;
  if (store_open(c.store, &s, &d) || api_new(s, (uint32_t)c.max_batch, &a, &d))
    goto fail;
  unsigned long long records = store_get_meta(s)->record_count;
  s = NULL; /* the api owns the store now */
  if (token_len && api_set_token(a, token, token_len)) {
    diag_set(&d, LMAP_ENOMEM, "cannot keep the token");
    goto fail;
  }
  memset(token, 0, sizeof token);
  http_config hc = {host,
                    (uint16_t)port,
                    (unsigned)c.threads,
                    (size_t)c.max_body,
                    (unsigned)c.idle_timeout,
                    (unsigned)c.max_connections,
                    (unsigned)c.max_per_ip,
                    log_access,
                    c.access_log,
                    log_mhd};
  uint16_t bound;
  if (http_start(&hc, a, &h, &bound, &d))
    goto fail;
  log_event("listening", "\"host\":\"%s\",\"port\":%u,\"records\":%llu", host,
            (unsigned)bound,
            records);
  rc = control_run(a, h, (unsigned)c.grace * 1000u, c.store, 0);
  http_stop(h);
  api_free(a);
  log_event("stopped", "\"exit\":%d", rc);
  return rc;
fail:;
  json_t *msg = json_string(diag_text(&d));
  char *m = msg ? json_dumps(msg, JSON_ENCODE_ANY) : NULL;
  log_event("error", "\"message\":%s", m ? m : "\"?\"");
  free(m);
  json_decref(msg);
  http_stop(h);
  api_free(a);
  store_close(s);
  return 1;
}
