/*
 * lmapd: serves one label-map store over HTTP/JSON. This file turns flags
 * and environment variables into a configuration and starts the pieces;
 * the work is in api.c (routes), http.c (transport) and control.c
 * (signals and drain). Every flag has an environment variable; a flag wins
 * over the environment, which wins over the default.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "control.h"
#include "http.h"
#include "lmap/client.h"
#include "lmap/version.h"
#include "log.h"
#include "notify.h"
#include "store/arena.h"
#include "store/store.h"

static const char usage[] =
    "usage: lmapd --store PATH [options]\n"
    "\n"
    "Serves soft labels pooled from a label-map store over HTTP/JSON.\n"
    "Each option also reads an environment variable (shown); a flag wins.\n"
    "\n"
    "  --store PATH             LMAPD_STORE        the store (required)\n"
    "  --listen ADDRESS         LMAPD_LISTEN       HOST:PORT or [IPV6]:PORT, numeric\n"
    "                                              hosts (default 127.0.0.1:8080; [::]\n"
    "                                              takes IPv4 clients too where the\n"
    "                                              system allows; port 0: any free\n"
    "                                              port, logged)\n"
    "  --threads N              LMAPD_THREADS      HTTP worker threads (default 2)\n"
    "  --max-body BYTES         LMAPD_MAX_BODY     request body cap (default 8388608)\n"
    "  --max-batch N            LMAPD_MAX_BATCH    queries per request (default 4096)\n"
    "  --max-answer BYTES       LMAPD_MAX_ANSWER   answer body cap (default 268435456)\n"
    "  --max-answer-memory BYTES  LMAPD_MAX_ANSWER_MEMORY  answers over 1 MiB waiting\n"
    "                                              to be read, all clients together;\n"
    "                                              past it 503 (default 1073741824;\n"
    "                                              at least --max-answer)\n"
    "  --max-connections N      LMAPD_MAX_CONNECTIONS  open connections (default 1024;\n"
    "                                              the open-file limit is raised to fit)\n"
    "  --max-per-ip N           LMAPD_MAX_PER_IP   connections per client address\n"
    "                                              (default 256; 0: no limit)\n"
    "  --header-timeout SECONDS LMAPD_HEADER_TIMEOUT  a new connection's time to send\n"
    "                                              its request head (default 10; 0: the\n"
    "                                              idle timeout)\n"
    "  --idle-timeout SECONDS   LMAPD_IDLE_TIMEOUT idle connection timeout (default 60;\n"
    "                                              0: never)\n"
    "  --grace SECONDS          LMAPD_GRACE        drain time on SIGTERM (default 30)\n"
    "  --no-page-check          LMAPD_PAGE_CHECK=0 skip the check of every page of the\n"
    "                                              store when it is opened\n"
    "  --access-log             LMAPD_ACCESS_LOG=1 log every request (default: errors only)\n"
    "  --serve-store            LMAPD_SERVE_STORE=1 serve the store file itself at\n"
    "                                              GET /v1/store (ETag, Range), for\n"
    "                                              `lmap pull` on new replicas; behind\n"
    "                                              the token when one is set (default off)\n"
    "  --resident               LMAPD_RESIDENT=1   decode every record into memory\n"
    "                                              at start and at each reload, on\n"
    "                                              all cores, and serve from there\n"
    "                                              (no decoding per request); ready\n"
    "                                              once built. Needs the decoded size\n"
    "                                              in memory (ImageNet at f16: 5.8 GB),\n"
    "                                              twice during a reload: a store it\n"
    "                                              cannot hold is refused at start and\n"
    "                                              at reload (the current one stays)\n"
    "  --resident-threads N     LMAPD_RESIDENT_THREADS  decoding threads (default 0:\n"
    "                                              one per CPU)\n"
    "  --no-ui                  LMAPD_UI=0         do not serve the store browser, a\n"
    "                                              page at / to search the ids, see a\n"
    "                                              map and its soft labels (default on;\n"
    "                                              it asks for the token, if one is set)\n"
    "  --log-format json|text   LMAPD_LOG_FORMAT   log lines (default json)\n"
    "  --token-file PATH        LMAPD_TOKEN_FILE   require 'Authorization: Bearer <token>'\n"
    "                                              on /v1/ (the file's first line,\n"
    "                                              at most 4095 bytes)\n"
    "  --tls-cert PATH          LMAPD_TLS_CERT     serve HTTPS: the certificate chain\n"
    "                                              (PEM); needs --tls-key\n"
    "  --tls-key PATH           LMAPD_TLS_KEY      its private key (PEM, unencrypted);\n"
    "                                              both are read once, at start\n"
    "  --help, --version\n"
    "\n"
    "Signals: SIGTERM/SIGINT drain (readyz 503, stop accepting, finish open\n"
    "requests, exit 0; exit 1 if the grace period ran out). SIGHUP reopens\n"
    "the store path (install a new store with rename) and swaps it in without\n"
    "failing a request (with --resident, once its arena is built); a store\n"
    "that fails to open is logged and the old one kept.\n"
    "exit status: 0 clean stop, 1 failure (logged), 2 usage error.\n";

typedef struct config {
  const char *store;
  const char *listen;
  const char *token_file;
  const char *tls_cert, *tls_key;
  unsigned long access_log, page_check, serve_store, resident, resident_threads,
      ui;
  const char *log_format;
  unsigned long threads, max_body, max_batch, max_answer, max_answer_memory,
      max_connections, max_per_ip, header_timeout, idle_timeout, grace;
} config;

typedef struct setting {
  const char *flag, *env;
  unsigned long *value;
  unsigned long min, max;
} setting;

/* Switches: a flag without argument sets `value` to `flag_sets`; the
 * environment variable says 0 or 1. */
typedef struct toggle {
  const char *flag, *env;
  unsigned long *value;
  unsigned long flag_sets;
} toggle;

static int parse_ulong(const char *s, unsigned long min, unsigned long max,
                       unsigned long *out) {
  char *end;
  if (s == NULL || *s < '0' || *s > '9')
    return -1;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (*end || errno == ERANGE || v < min || v > max)
    return -1;
  *out = (unsigned long)v;
  return 0;
}

/* --token-file, by the rule every reader of it shares (lmap_token_read):
 * too long or holding a NUL is refused, never cut (a cut token would be
 * accepted in place of the real one). */
/* Reads the PEM file at `path` (the value of `flag`) into *out (owned,
 * NUL-terminated): at most 1 MiB, and PEM ("-----BEGIN"). */
static int read_pem(const char *flag, const char *path, char **out, diag *d) {
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  size_t n = 0;
  int rc = 0;
  if (f == NULL)
    return diag_set(d, LMAP_EIO, "%s %s: cannot open: %s", flag, path,
                    strerror(errno));
  if ((buf = malloc((1u << 20) + 1)) == NULL) {
    rc = diag_set(d, LMAP_ENOMEM, "%s: out of memory", flag);
  } else if ((n = fread(buf, 1, (1u << 20) + 1, f)) > (1u << 20)) {
    rc = diag_set(d, LMAP_ETOOBIG, "%s %s: larger than 1 MiB", flag, path);
  } else if (ferror(f)) {
    rc = diag_set(d, LMAP_EIO, "%s %s: cannot read: %s", flag, path,
                  strerror(errno));
  } else {
    buf[n] = '\0';
    if (strlen(buf) != n || strstr(buf, "-----BEGIN ") == NULL)
      rc = diag_set(d, LMAP_EFORMAT, "%s %s: not a PEM file", flag, path);
  }
  fclose(f);
  if (rc != 0) {
    free(buf);
    return rc;
  }
  *out = buf;
  return 0;
}

/* Frees a buffer that held a secret, wiped first. Accepts NULL. */
static void free_secret(char *p) {
  if (p != NULL) {
    memset(p, 0, strlen(p));
    free(p);
  }
}

static int read_token(const char *path, char *buf, size_t *len, diag *d) {
  char why[LMAP_ERRBUF_SIZE + 4096];
  int rc = lmap_token_read(path, buf, len, why, sizeof why);
  return rc ? diag_set(d, rc, "%s", why) : 0;
}

/* The access log: one JSON line per answered request. The path comes from
 * the client, so it is JSON-escaped by jansson. */
static void log_access(const http_access *a) {
  char *path = log_quote(a->path);
  log_event("request",
            "\"request_id\":\"%s\",\"method\":\"%s\",\"path\":%s,"
            "\"status\":%d,\"bytes\":%zu,\"ms\":%.3f",
            a->request_id, a->method, path ? path : "\"?\"", a->status,
            a->bytes, a->ms);
  free(path);
}

/* libmicrohttpd's own messages, as log lines. */
static void log_mhd(const char *message) {
  log_message("http_library", message);
}

static int bad(const char *what, const char *value) {
  fprintf(stderr, "lmapd: %s: '%s' is not valid\nTry 'lmapd --help'.\n", what,
          value);
  return 2;
}

/* The listen address: "HOST:PORT" with a numeric IPv4 host, or
 * "[IPV6]:PORT" with a numeric IPv6 one (brackets, as in a URL, because the
 * address holds colons itself). `host` receives the address without
 * brackets. An unbracketed IPv6 address ("::1:80") is refused, not guessed
 * at: its last group could be the port or part of the address. */
static int split_listen(const char *s, char *host, size_t cap,
                        unsigned long *port) {
  int family = AF_INET;
  const char *start = s, *end;
  if (*s == '[') {
    family = AF_INET6;
    start = s + 1;
    end = strchr(start, ']');
    if (end == NULL || end[1] != ':')
      return -1;
  } else if ((end = strrchr(s, ':')) == NULL) {
    return -1;
  }
  size_t n = (size_t)(end - start);
  if (n == 0 || n >= cap)
    return -1;
  memcpy(host, start, n);
  host[n] = '\0';
  struct in6_addr addr; /* large enough for either family */
  if (inet_pton(family, host, &addr) != 1)
    return -1;
  return parse_ulong(end + (family == AF_INET6 ? 2 : 1), 0, 65535, port);
}

/* Long options get codes above every character, so that none can be
 * mistaken for a short option (--max-per-ip once came out as 'h'). */
enum {
  OPT_STORE = 256,
  OPT_LISTEN,
  OPT_TOKEN,
  OPT_LOG_FORMAT,
  OPT_VERSION,
  OPT_TLS_CERT,
  OPT_TLS_KEY,
  OPT_TOGGLE = 300,
  OPT_SETTING = 400
};

int main(int argc, char **argv) {
  config c = {.listen = "127.0.0.1:8080",
              .threads = 2,
              .max_body = 8u << 20,
              .max_batch = 4096,
              .max_answer = 256ul << 20,
              .max_answer_memory = 1ul << 30,
              .max_connections = 1024,
              .max_per_ip = 256,
              .header_timeout = 10,
              .idle_timeout = 60,
              .grace = 30,
              .page_check = 1,
              .ui = 1};
  setting settings[] = {
      {"threads", "LMAPD_THREADS", &c.threads, 1, 256},
      {"max-body", "LMAPD_MAX_BODY", &c.max_body, 1024, 1ul << 30},
      {"max-batch", "LMAPD_MAX_BATCH", &c.max_batch, 1, 1u << 20},
      {"max-answer", "LMAPD_MAX_ANSWER", &c.max_answer, 1024, 1ul << 32},
      {"max-answer-memory", "LMAPD_MAX_ANSWER_MEMORY", &c.max_answer_memory,
       1024, 1ul << 40},
      {"max-connections", "LMAPD_MAX_CONNECTIONS", &c.max_connections, 1,
       1u << 20},
      {"max-per-ip", "LMAPD_MAX_PER_IP", &c.max_per_ip, 0, 1u << 20},
      {"header-timeout", "LMAPD_HEADER_TIMEOUT", &c.header_timeout, 0, 86400},
      {"idle-timeout", "LMAPD_IDLE_TIMEOUT", &c.idle_timeout, 0, 86400},
      {"grace", "LMAPD_GRACE", &c.grace, 0, 86400},
      {"resident-threads", "LMAPD_RESIDENT_THREADS", &c.resident_threads, 0,
       256},
  };
  toggle toggles[] = {
      {"access-log", "LMAPD_ACCESS_LOG", &c.access_log, 1},
      {"serve-store", "LMAPD_SERVE_STORE", &c.serve_store, 1},
      {"no-page-check", "LMAPD_PAGE_CHECK", &c.page_check, 0},
      {"resident", "LMAPD_RESIDENT", &c.resident, 1},
      {"no-ui", "LMAPD_UI", &c.ui, 0},
  };
  enum {
    NSETTINGS = sizeof settings / sizeof settings[0],
    NTOGGLES = sizeof toggles / sizeof toggles[0]
  };

  /* Environment first, then flags over it. */
  if (getenv("LMAPD_STORE"))
    c.store = getenv("LMAPD_STORE");
  if (getenv("LMAPD_LISTEN"))
    c.listen = getenv("LMAPD_LISTEN");
  if (getenv("LMAPD_LOG_FORMAT"))
    c.log_format = getenv("LMAPD_LOG_FORMAT");
  if (getenv("LMAPD_TOKEN_FILE"))
    c.token_file = getenv("LMAPD_TOKEN_FILE");
  if (getenv("LMAPD_TLS_CERT"))
    c.tls_cert = getenv("LMAPD_TLS_CERT");
  if (getenv("LMAPD_TLS_KEY"))
    c.tls_key = getenv("LMAPD_TLS_KEY");
  for (size_t i = 0; i < NSETTINGS; i++) {
    const char *v = getenv(settings[i].env);
    if (v &&
        parse_ulong(v, settings[i].min, settings[i].max, settings[i].value))
      return bad(settings[i].env, v);
  }
  for (size_t i = 0; i < NTOGGLES; i++) {
    const char *v = getenv(toggles[i].env);
    if (v && parse_ulong(v, 0, 1, toggles[i].value))
      return bad(toggles[i].env, v);
  }
  struct option longopts[10 + NSETTINGS + NTOGGLES] = {
      {"store", required_argument, 0, OPT_STORE},
      {"listen", required_argument, 0, OPT_LISTEN},
      {"help", no_argument, 0, 'h'},
      {"version", no_argument, 0, OPT_VERSION},
      {"token-file", required_argument, 0, OPT_TOKEN},
      {"log-format", required_argument, 0, OPT_LOG_FORMAT},
      {"tls-cert", required_argument, 0, OPT_TLS_CERT},
      {"tls-key", required_argument, 0, OPT_TLS_KEY},
  };
  size_t nopts = 8;
  for (size_t i = 0; i < NSETTINGS; i++)
    longopts[nopts++] = (struct option){settings[i].flag, required_argument, 0,
                                        OPT_SETTING + (int)i};
  for (size_t i = 0; i < NTOGGLES; i++)
    longopts[nopts++] =
        (struct option){toggles[i].flag, no_argument, 0, OPT_TOGGLE + (int)i};
  int opt;
  while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    if (opt == OPT_STORE)
      c.store = optarg;
    else if (opt == OPT_LISTEN)
      c.listen = optarg;
    else if (opt == OPT_TOKEN)
      c.token_file = optarg;
    else if (opt == OPT_LOG_FORMAT)
      c.log_format = optarg;
    else if (opt == OPT_TLS_CERT)
      c.tls_cert = optarg;
    else if (opt == OPT_TLS_KEY)
      c.tls_key = optarg;
    else if (opt == 'h') {
      fputs(usage, stdout);
      return 0;
    } else if (opt == OPT_VERSION) {
      printf("lmapd %s\n", LMAP_VERSION_STRING);
      return 0;
    } else if (opt >= OPT_SETTING && opt < OPT_SETTING + (int)NSETTINGS) {
      setting *st = &settings[opt - OPT_SETTING];
      if (parse_ulong(optarg, st->min, st->max, st->value))
        return bad(st->flag, optarg);
    } else if (opt >= OPT_TOGGLE && opt < OPT_TOGGLE + (int)NTOGGLES) {
      *toggles[opt - OPT_TOGGLE].value = toggles[opt - OPT_TOGGLE].flag_sets;
    } else {
      fputs("Try 'lmapd --help'.\n", stderr);
      return 2;
    }
  }
  if (optind != argc)
    return bad("argument", argv[optind]);
  if ((c.tls_cert == NULL) != (c.tls_key == NULL)) {
    fputs("lmapd: --tls-cert and --tls-key (LMAPD_TLS_CERT, LMAPD_TLS_KEY) go "
          "together\nTry 'lmapd --help'.\n",
          stderr);
    return 2;
  }
  if (c.store == NULL) {
    fputs("lmapd: --store PATH (or LMAPD_STORE) is required\n"
          "Try 'lmapd --help'.\n",
          stderr);
    return 2;
  }
  if (c.max_answer_memory < c.max_answer) {
    fprintf(stderr,
            "lmapd: --max-answer-memory %lu is less than --max-answer %lu: "
            "an answer of the largest size allowed could never be sent\n"
            "Try 'lmapd --help'.\n",
            c.max_answer_memory, c.max_answer);
    return 2;
  }
  if (c.log_format && strcmp(c.log_format, "json") &&
      strcmp(c.log_format, "text"))
    return bad("log-format", c.log_format);
  log_set_text(c.log_format && strcmp(c.log_format, "text") == 0);
  char host[64];
  unsigned long port;
  if (split_listen(c.listen, host, sizeof host, &port)) {
    fprintf(stderr,
            "lmapd: listen: '%s' is not valid: expected HOST:PORT with a "
            "numeric IPv4 HOST, or [IPV6]:PORT, and a PORT from 0 to 65535\n"
            "Try 'lmapd --help'.\n",
            c.listen);
    return 2;
  }

  /* A client that disconnects mid-answer must not kill the daemon. */
  signal(SIGPIPE, SIG_IGN);
  /* Before any thread starts: a SIGTERM or SIGHUP sent as soon as the
   * daemon listens must wait for the control loop, not kill it. */
  control_block_signals();

  json_t *cfg = json_pack(
      "{s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I,"
      " s:b, s:b, s:b, s:b, s:I, s:b, s:s, s:s}",
      "store", c.store, "token",
      c.token_file ? "<redacted, from file>" : "none", "tls",
      c.tls_cert ? c.tls_cert : "none", "listen", c.listen, "threads",
      (json_int_t)c.threads, "max_body", (json_int_t)c.max_body, "max_batch",
      (json_int_t)c.max_batch, "max_answer", (json_int_t)c.max_answer,
      "max_answer_memory", (json_int_t)c.max_answer_memory, "max_connections",
      (json_int_t)c.max_connections, "max_per_ip", (json_int_t)c.max_per_ip,
      "header_timeout", (json_int_t)c.header_timeout, "idle_timeout",
      (json_int_t)c.idle_timeout, "grace", (json_int_t)c.grace, "page_check",
      (int)c.page_check, "access_log", (int)c.access_log, "serve_store",
      (int)c.serve_store, "resident", (int)c.resident, "resident_threads",
      (json_int_t)c.resident_threads, "ui", (int)c.ui, "log_format",
      c.log_format ? c.log_format : "json", "version", LMAP_VERSION_STRING);
  char *cfg_text = cfg ? json_dumps(cfg, JSON_COMPACT) : NULL;
  log_event("config", "\"config\":%s", cfg_text ? cfg_text : "null");
  free(cfg_text);
  json_decref(cfg);

  diag d;
  diag_clear(&d);
  store *s = NULL;
  api *a = NULL;
  http_server *h = NULL;
  unsigned open_flags = c.page_check ? 0 : STORE_OPEN_NO_PAGE_CHECK;
  char token[LMAP_TOKEN_MAX + 1];
  size_t token_len = 0;
  http_config hc = {host,
                    (uint16_t)port,
                    (unsigned)c.threads,
                    (size_t)c.max_body,
                    (unsigned)c.idle_timeout,
                    (unsigned)c.header_timeout,
                    (unsigned)c.max_connections,
                    (unsigned)c.max_per_ip,
                    (size_t)c.max_answer_memory,
                    log_access,
                    (int)c.access_log,
                    log_mhd,
                    NULL,
                    NULL};
  char *tls_cert = NULL, *tls_key = NULL;
  unsigned long files_before, files_after;
  if (http_reserve_files(&hc, &files_before, &files_after, &d))
    goto fail;
  if (c.token_file && read_token(c.token_file, token, &token_len, &d))
    goto fail;
  if (c.tls_cert && (read_pem("--tls-cert", c.tls_cert, &tls_cert, &d) ||
                     read_pem("--tls-key", c.tls_key, &tls_key, &d)))
    goto fail;
  hc.tls_cert = tls_cert;
  hc.tls_key = tls_key;
  static arena_progress progress; /* the api reads it until api_free */
  if (store_open_flags(c.store, open_flags, &s, &d) ||
      (c.resident && arena_check_memory(s, &d)))
    goto fail;
  store *first = s;
  if (api_new(s, (uint32_t)c.max_batch, &a, &d))
    goto fail;
  unsigned long long records = store_get_meta(s)->record_count;
  char id[20];
  snprintf(id, sizeof id, "%s", store_id(s));
  s = NULL; /* the api owns the store now */
  api_set_max_answer(a, (size_t)c.max_answer);
  api_set_serve_store(a, (int)c.serve_store);
  api_set_ui(a, (int)c.ui);
  if (c.resident)
    api_set_resident(a, &progress);
  if (token_len && api_set_token(a, token, token_len)) {
    diag_set(&d, LMAP_ENOMEM, "cannot keep the token");
    goto fail;
  }
  memset(token, 0, sizeof token);
  uint16_t bound;
  if (http_start(&hc, a, &h, &bound, &d))
    goto fail;
  log_event("listening",
            "\"host\":\"%s\",\"port\":%u,\"records\":%llu,\"store\":\"%s\","
            "\"open_files_limit\":%lu,\"open_files_limit_was\":%lu",
            host, (unsigned)bound, records, id, files_after, files_before);
  if (!c.resident) /* else once the arena is built */
    notify_ready(records, id, (unsigned)bound);
  control_config cc = {.grace_ms = (unsigned)c.grace * 1000u,
                       .store_path = c.store,
                       .store_open_flags = open_flags,
                       .port = bound,
                       .resident = (int)c.resident,
                       .resident_threads = (unsigned)c.resident_threads,
                       .progress = &progress,
                       .first = first};
  int rc = control_run(a, h, &cc);
  http_stop(h);
  api_free(a);
  free(tls_cert);
  free_secret(tls_key);
  log_event("stopped", "\"exit\":%d", rc);
  return rc;
fail:;
  memset(token, 0, sizeof token);
  log_message("error", diag_text(&d));
  http_stop(h);
  api_free(a);
  store_close(s);
  free(tls_cert);
  free_secret(tls_key);
  return 1;
}
