/*
 * lmap pull: copies a store from a server over HTTP(S) (libcurl), resuming
 * an interrupted transfer, verifies the copy as `lmap verify` does and
 * installs it with rename(), so that lmapd's next SIGHUP serves it.
 *
 * The bytes go to STORE.part beside the target, and the server's validator
 * (its ETag, else its Last-Modified) to STORE.part.validator. A later pull
 * of the same target asks for the rest (Range: bytes=N-) only if the file
 * is still the same (If-Range: the validator): a server whose file changed
 * answers with all of the new one, which replaces the part. Nothing but a
 * verified store ever appears at the target.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "cli.h"
#include "core/fileio.h"
#include "lmap/client.h"

static const char pull_help[] =
    "usage: lmap pull URL -o STORE [options]\n"
    "\n"
    "Fetches a store file over HTTP(S) from any server that supports Range:\n"
    "lmapd --serve-store (URL http://HOST:PORT/v1/store), nginx, an object\n"
    "store. The bytes land in STORE.part; an interrupted pull resumes there\n"
    "when run again (if the server's file is still the same: its ETag or\n"
    "Last-Modified). The copy is then checked as `lmap verify` checks a\n"
    "store (every page against its checksum, every record decoded) and\n"
    "renamed to STORE, so that a SIGHUP to lmapd swaps it in. A copy that\n"
    "fails the check is removed and STORE is left as it was.\n"
    "\n"
    "options:\n"
    "  -o, --output STORE         where the store goes (required)\n"
    "  -f, --force                replace STORE if it exists\n"
    "      --token-file PATH      bearer token (the file's first line)\n"
    "      --cacert FILE          CA certificates for https (default: the\n"
    "                             system's)\n"
    "      --connect-timeout SEC  per connection attempt (default 10)\n"
    "      --stall-timeout SEC    give up when under 1 KiB/s for this long\n"
    "                             (default 60)\n";

/* One transfer: the part it writes, and what its answer said (filled by
 * the header and body callbacks). */
typedef struct transfer {
  int fd;                     /* STORE.part */
  const char *validator_path; /* STORE.part.validator */
  uint64_t have;              /* bytes of the part before this transfer */
  long status;                /* of the final answer (after redirects) */
  int started;         /* the first body byte of that answer was handled */
  char validator[256]; /* its ETag, else Last-Modified */
  int validator_is_etag;
  uint64_t range_first; /* of its Content-Range */
  int has_range;
  uint64_t written;      /* body bytes written to the part */
  char abort[200];       /* why the transfer was stopped here, or "" */
  char error_body[1024]; /* the start of an error answer */
  size_t error_len;
  int write_errno; /* why the part could not be written */
} transfer;

/* What a transfer came to. */
typedef enum fetched { FETCHED, FETCH_FAILED, FETCH_AGAIN } fetched;

/* Copies header value `v` (of `len` bytes) without the line end. */
static void header_value(char *out, size_t cap, const char *v, size_t len) {
  while (len > 0 && (*v == ' ' || *v == '\t'))
    v++, len--;
  while (len > 0 && (v[len - 1] == '\r' || v[len - 1] == '\n' ||
                     v[len - 1] == ' ' || v[len - 1] == '\t'))
    len--;
  if (len >= cap)
    len = cap - 1;
  memcpy(out, v, len);
  out[len] = '\0';
}

static size_t on_header(char *line, size_t size, size_t n, void *ctx) {
  transfer *t = ctx;
  size_t len = size * n;
  if (len >= 5 && strncmp(line, "HTTP/", 5) == 0) {
    /* A new answer (a redirect's target, or after 100 Continue). */
    t->status = 0;
    t->validator[0] = '\0';
    t->validator_is_etag = 0;
    t->has_range = 0;
    const char *sp = memchr(line, ' ', len);
    if (sp != NULL)
      t->status = strtol(sp + 1, NULL, 10);
  } else if (len > 5 && strncasecmp(line, "ETag:", 5) == 0) {
    header_value(t->validator, sizeof t->validator, line + 5, len - 5);
    t->validator_is_etag = 1;
  } else if (len > 14 && strncasecmp(line, "Last-Modified:", 14) == 0 &&
             !t->validator_is_etag) {
    header_value(t->validator, sizeof t->validator, line + 14, len - 14);
  } else if (len > 14 && strncasecmp(line, "Content-Range:", 14) == 0) {
    char v[128];
    unsigned long long first;
    header_value(v, sizeof v, line + 14, len - 14);
    if (sscanf(v, "bytes %llu-", &first) == 1) {
      t->range_first = first;
      t->has_range = 1;
    }
  }
  return len;
}

/* Before the first byte of a 200 or 206 answer: where the part continues
 * (at its end for a 206 that starts there, from zero for a 200), and the
 * validator saved for a later resume. Returns 0, or -1 to abort. */
static int start_body(transfer *t) {
  t->started = 1;
  if (t->status == 206) {
    if (!t->has_range || t->range_first != t->have) {
      snprintf(t->abort, sizeof t->abort,
               "the server sent a part from byte %llu, not from %llu",
               (unsigned long long)t->range_first, (unsigned long long)t->have);
      return -1;
    }
  } else {
    t->have = 0; /* the whole file: the part starts over */
    if (ftruncate(t->fd, 0) != 0) {
      t->write_errno = errno;
      return -1;
    }
  }
  if (lseek(t->fd, (off_t)t->have, SEEK_SET) < 0) {
    t->write_errno = errno;
    return -1;
  }
  /* The validator goes first: a part without it is never resumed. */
  unlink(t->validator_path);
  if (t->validator[0]) {
    FILE *f = fopen(t->validator_path, "w");
    if (f == NULL || fprintf(f, "%s\n", t->validator) < 0 || fclose(f) != 0) {
      t->write_errno = errno;
      return -1;
    }
  }
  return 0;
}

static size_t on_body(char *data, size_t size, size_t n, void *ctx) {
  transfer *t = ctx;
  size_t len = size * n;
  if (t->status != 200 && t->status != 206) {
    /* An error answer: keep its start for the message. */
    size_t room = sizeof t->error_body - 1 - t->error_len;
    size_t k = len < room ? len : room;
    memcpy(t->error_body + t->error_len, data, k);
    t->error_len += k;
    t->error_body[t->error_len] = '\0';
    return len;
  }
  if (!t->started && start_body(t) != 0)
    return 0; /* aborts the transfer */
  if (file_write_all(t->fd, data, len) != 0) {
    t->write_errno = errno;
    return 0;
  }
  t->written += len;
  return len;
}

/* Reads the validator a previous pull saved ("" when none). */
static void read_validator(const char *path, char *out, size_t cap) {
  out[0] = '\0';
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return;
  if (fgets(out, (int)cap, f) == NULL)
    out[0] = '\0';
  out[strcspn(out, "\r\n")] = '\0';
  fclose(f);
}

static int seconds(const char *s, long *out) {
  uint32_t v;
  if (cli_u32(s, 1, 86400, &v))
    return -1;
  *out = (long)v;
  return 0;
}

typedef struct pull_opts {
  const char *url, *out, *token_file, *cacert;
  int force;
  long connect_timeout, stall_timeout;
} pull_opts;

/* One transfer into `t`: the rest of the part when it can be resumed, else
 * all of it. FETCH_AGAIN: the part could not be resumed (the server's file
 * is not longer than it), and is to be fetched again from zero. */
static fetched fetch(const pull_opts *o, transfer *t, const char *part) {
  char validator[256], auth[LMAP_TOKEN_MAX + 32] = "";
  struct stat st;
  read_validator(t->validator_path, validator, sizeof validator);
  t->have = fstat(t->fd, &st) == 0 ? (uint64_t)st.st_size : 0;
  if (validator[0] == '\0')
    t->have = 0; /* nothing says the part is of the same file */
  CURL *curl = curl_easy_init();
  struct curl_slist *headers = NULL;
  char range[64];
  fetched result = FETCH_FAILED;
  if (curl == NULL) {
    fprintf(stderr, "lmap pull: cannot start libcurl\n");
    return FETCH_FAILED;
  }
  if (t->have > 0) {
    char if_range[300];
    snprintf(range, sizeof range, "%llu-", (unsigned long long)t->have);
    curl_easy_setopt(curl, CURLOPT_RANGE, range);
    snprintf(if_range, sizeof if_range, "If-Range: %s", validator);
    headers = curl_slist_append(headers, if_range);
    fprintf(stderr, "lmap pull: %s: resuming at byte %llu\n", part,
            (unsigned long long)t->have);
  }
  if (o->token_file != NULL) {
    char token[LMAP_TOKEN_MAX + 1], why[LMAP_ERRBUF_SIZE + 4096];
    if (lmap_token_read(o->token_file, token, NULL, why, sizeof why) != 0) {
      fprintf(stderr, "lmap pull: %s\n", why);
      goto done;
    }
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
    memset(token, 0, sizeof token);
    headers = curl_slist_append(headers, auth);
  }
  curl_easy_setopt(curl, CURLOPT_URL, o->url);
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(curl, CURLOPT_MAXREDIRS, 5L);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, o->connect_timeout);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1024L);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, o->stall_timeout);
  curl_easy_setopt(curl, CURLOPT_USERAGENT, "lmap-pull");
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  if (o->cacert != NULL)
    curl_easy_setopt(curl, CURLOPT_CAINFO, o->cacert);
  char curl_error[CURL_ERROR_SIZE] = "";
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_error);
  CURLcode rc = curl_easy_perform(curl);
  if (t->write_errno != 0) {
    fprintf(stderr, "lmap pull: %s: cannot write: %s\n", part,
            strerror(t->write_errno));
  } else if (t->status == 416 && t->have > 0) {
    unlink(t->validator_path);
    result = FETCH_AGAIN;
  } else if (t->abort[0] != '\0') {
    fprintf(stderr, "lmap pull: %s: %s\n", o->url, t->abort);
  } else if (rc != CURLE_OK) {
    fprintf(stderr, "lmap pull: %s: %s (%llu bytes in %s%s)\n", o->url,
            curl_error[0] ? curl_error : curl_easy_strerror(rc),
            (unsigned long long)(t->have + t->written), part,
            t->validator[0] ? ", kept: run again to resume"
                            : "; the server gives no ETag or Last-Modified, so "
                              "a pull cannot resume");
  } else if (t->status != 200 && t->status != 206) {
    fprintf(stderr, "lmap pull: %s: HTTP %ld%s%.600s\n", o->url, t->status,
            t->error_len ? ": " : "", t->error_body);
  } else if (!t->started && start_body(t) != 0) { /* an empty answer */
    fprintf(stderr, "lmap pull: %s: cannot write: %s\n", part,
            strerror(t->write_errno));
  } else if (fsync(t->fd) != 0) {
    fprintf(stderr, "lmap pull: %s: cannot sync: %s\n", part, strerror(errno));
  } else {
    result = FETCHED;
  }
done:
  curl_slist_free_all(headers);
  memset(auth, 0, sizeof auth);
  curl_easy_cleanup(curl);
  return result;
}

int cmd_pull(int argc, char **argv) {
  enum { O_TOKEN = 256, O_CACERT, O_CTIMEOUT, O_STALL };
  static const struct option longopts[] = {
      {"output", required_argument, 0, 'o'},
      {"force", no_argument, 0, 'f'},
      {"token-file", required_argument, 0, O_TOKEN},
      {"cacert", required_argument, 0, O_CACERT},
      {"connect-timeout", required_argument, 0, O_CTIMEOUT},
      {"stall-timeout", required_argument, 0, O_STALL},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  pull_opts o = {.connect_timeout = 10, .stall_timeout = 60};
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "o:fh", longopts, NULL)) != -1) {
    switch (c) {
    case 'o': o.out = optarg; break;
    case 'f': o.force = 1; break;
    case O_TOKEN: o.token_file = optarg; break;
    case O_CACERT: o.cacert = optarg; break;
    case O_CTIMEOUT:
      if (seconds(optarg, &o.connect_timeout))
        return cli_usage("pull", "--connect-timeout: '%s' is not in [1, 86400]",
                         optarg);
      break;
    case O_STALL:
      if (seconds(optarg, &o.stall_timeout))
        return cli_usage("pull", "--stall-timeout: '%s' is not in [1, 86400]",
                         optarg);
      break;
    case 'h': fputs(pull_help, stdout); return EXIT_OK;
    default: return cli_usage("pull", "bad option");
    }
  }
  if (argc - optind != 1)
    return cli_usage("pull", "expected one URL");
  o.url = argv[optind];
  if (strncmp(o.url, "http://", 7) != 0 && strncmp(o.url, "https://", 8) != 0)
    return cli_usage("pull", "'%s' is not an http:// or https:// URL", o.url);
  if (o.out == NULL || o.out[0] == '\0')
    return cli_usage("pull", "missing -o STORE");
  if (strlen(o.out) > 4000)
    return cli_usage("pull", "the STORE path is too long");
  struct stat st;
  if (!o.force && lstat(o.out, &st) == 0) {
    fprintf(stderr,
            "lmap pull: %s: already exists (use --force to replace "
            "it)\n",
            o.out);
    return EXIT_FAIL;
  }

  char part[4200], validator_path[4200];
  snprintf(part, sizeof part, "%s.part", o.out);
  snprintf(validator_path, sizeof validator_path, "%s.part.validator", o.out);
  int fd = open(part, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    fprintf(stderr, "lmap pull: %s: cannot open: %s\n", part, strerror(errno));
    return EXIT_FAIL;
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  transfer t = {.fd = fd, .validator_path = validator_path};
  fetched got = fetch(&o, &t, part);
  if (got == FETCH_AGAIN) {
    t = (transfer){.fd = fd, .validator_path = validator_path};
    got = fetch(&o, &t, part);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  curl_global_cleanup();
  struct stat ps;
  uint64_t size = fstat(fd, &ps) == 0 ? (uint64_t)ps.st_size : 0;
  close(fd);
  if (got != FETCHED)
    return EXIT_FAIL; /* the part stays, for the next pull to resume */
  double secs = (double)(t1.tv_sec - t0.tv_sec) +
                (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
  fprintf(stderr,
          "lmap pull: %llu bytes in %.1f s (%.1f MB/s)%s; checking %s\n",
          (unsigned long long)t.written, secs,
          secs > 0 ? (double)t.written / secs / 1e6 : 0.0,
          t.have ? " after resuming" : "", part);
  if (cli_verify("pull", part, VERIFY_PAGES) != EXIT_OK) {
    unlink(part);
    unlink(validator_path);
    fprintf(stderr,
            "lmap pull: %s: the copy (%llu bytes) failed the check and was "
            "removed; %s was not touched\n",
            o.url, (unsigned long long)size, o.out);
    return EXIT_FAIL;
  }
  if (!o.force && lstat(o.out, &st) == 0) {
    fprintf(stderr,
            "lmap pull: %s: appeared meanwhile; not replaced (the "
            "checked copy is %s)\n",
            o.out, part);
    return EXIT_FAIL;
  }
  if (rename(part, o.out) != 0) {
    fprintf(stderr, "lmap pull: %s: cannot rename into place: %s\n", o.out,
            strerror(errno));
    return EXIT_FAIL;
  }
  unlink(validator_path);
  file_sync_dir(o.out);
  printf("%s: installed from %s (%llu bytes)\n", o.out, o.url,
         (unsigned long long)size);
  return EXIT_OK;
}
