/*
 * harness: real lmapd processes, the lmap tool and TCP fakes for the liblmap
 * tests (see harness.h). Every child pid lives in one static table that the
 * clean-up paths (atexit, fatal signals, sanitizer death) walk with only
 * async-signal-safe calls, so a failing or crashing test leaves nothing
 * running. The fakes use send(MSG_NOSIGNAL) so that SIGPIPE stays at its
 * default: a library that let SIGPIPE through would kill the test, which is
 * what it would do to a user's program.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define TH_HAVE_SANITIZER 1
#endif

extern char **environ;

#define MAX_DAEMONS 32

static th_daemon daemons[MAX_DAEMONS];
static int n_daemons;
static const char *tmp_dir, *lmap_bin, *lmapd_bin;
static unsigned log_seq;

static const int fatal_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGSEGV,
                                    SIGBUS, SIGFPE,  SIGILL, SIGABRT};
#define N_FATAL (sizeof fatal_signals / sizeof fatal_signals[0])
static struct sigaction old_actions[N_FATAL];

/* Async-signal-safe: kill() only. */
static void kill_all_now(void) {
  for (int i = 0; i < n_daemons; i++)
    if (daemons[i].pid > 0)
      kill(daemons[i].pid, SIGKILL);
}

static void cleanup_at_exit(void) {
  for (int i = 0; i < n_daemons; i++)
    if (daemons[i].pid > 0) {
      kill(daemons[i].pid, SIGKILL);
      waitpid(daemons[i].pid, NULL, 0);
      daemons[i].pid = 0;
    }
}

/* Kills the children, then hands the signal to whoever had it before (the
 * sanitizer's report, or the default action). */
static void on_fatal(int sig, siginfo_t *info, void *ctx) {
  kill_all_now();
  for (size_t i = 0; i < N_FATAL; i++) {
    if (fatal_signals[i] != sig)
      continue;
    struct sigaction *old = &old_actions[i];
    if ((old->sa_flags & SA_SIGINFO) && old->sa_sigaction) {
      old->sa_sigaction(sig, info, ctx);
      return;
    }
    if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) {
      old->sa_handler(sig);
      return;
    }
    signal(sig, SIG_DFL);
    raise(sig);
    return;
  }
}

#ifdef TH_HAVE_SANITIZER
static void on_sanitizer_death(void) {
  kill_all_now();
}
#endif

static int mkdir_p(const char *path) {
  char buf[1024];
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof buf)
    return -1;
  memcpy(buf, path, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (buf[i] == '/' || buf[i] == '\0') {
      char c = buf[i];
      buf[i] = '\0';
      if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return -1;
      buf[i] = c;
    }
  }
  return 0;
}

static const char *need_env(const char *name) {
  const char *v = getenv(name);
  if (v == NULL || v[0] == '\0') {
    fprintf(stderr, "harness: the environment variable %s is not set\n", name);
    exit(2);
  }
  return v;
}

void th_init(void) {
  lmap_bin = need_env("LMAP_BIN");
  lmapd_bin = need_env("LMAPD_BIN");
  tmp_dir = need_env("LMAP_TEST_TMP");
  if (mkdir_p(tmp_dir) != 0) {
    fprintf(stderr, "harness: cannot create %s: %s\n", tmp_dir,
            strerror(errno));
    exit(2);
  }
  atexit(cleanup_at_exit);
  for (size_t i = 0; i < N_FATAL; i++) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fatal;
    sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(fatal_signals[i], &sa, &old_actions[i]);
  }
#ifdef TH_HAVE_SANITIZER
  __sanitizer_set_death_callback(on_sanitizer_death);
#endif
}

const char *th_tmp(void) {
  return tmp_dir;
}
const char *th_lmap(void) {
  return lmap_bin;
}

double th_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

char *th_read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL)
    return NULL;
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap + 1);
  while (buf) {
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (n < cap)
      break;
    if (cap > ((size_t)1 << 31)) { /* 2 GiB: no test file is that large */
      free(buf);
      buf = NULL;
      break;
    }
    char *bigger = realloc(buf, cap * 2 + 1);
    if (bigger == NULL) {
      free(buf);
      buf = NULL;
      break;
    }
    buf = bigger;
    cap *= 2;
  }
  fclose(f);
  if (buf == NULL)
    return NULL;
  buf[n] = '\0';
  if (len)
    *len = n;
  return buf;
}

/* The port of the log's "listening" line, 0 while it is not there. Only
 * complete lines are parsed: the daemon may be writing the last one. */
static int listening_port(const char *log) {
  char *text = th_read_file(log, NULL);
  if (text == NULL)
    return 0;
  int port = 0;
  for (char *line = text; *line && port == 0;) {
    char *nl = strchr(line, '\n');
    if (nl == NULL)
      break;
    *nl = '\0';
    json_t *ev = json_loads(line, 0, NULL);
    const char *name = json_string_value(json_object_get(ev, "event"));
    if (name && strcmp(name, "listening") == 0)
      port = (int)json_integer_value(json_object_get(ev, "port"));
    json_decref(ev);
    line = nl + 1;
  }
  free(text);
  return port;
}

th_daemon *th_start(const char *store, const char *const *extra) {
  if (n_daemons == MAX_DAEMONS) {
    fprintf(stderr, "harness: more than %d daemons\n", MAX_DAEMONS);
    return NULL;
  }
  th_daemon *d = &daemons[n_daemons];
  memset(d, 0, sizeof *d);
  snprintf(d->log, sizeof d->log, "%s/lmapd-%ld-%u.log", tmp_dir,
           (long)getpid(), log_seq++);
  const char *argv[32];
  int argc = 0;
  argv[argc++] = lmapd_bin;
  argv[argc++] = "--store";
  argv[argc++] = store;
  argv[argc++] = "--listen";
  argv[argc++] = "127.0.0.1:0";
  for (int i = 0; extra && extra[i] && argc < 31; i++)
    argv[argc++] = extra[i];
  argv[argc] = NULL;

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, d->log, O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  pid_t pid;
  int rc =
      posix_spawn(&pid, lmapd_bin, &fa, NULL, (char *const *)argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    fprintf(stderr, "harness: cannot start %s: %s\n", lmapd_bin, strerror(rc));
    return NULL;
  }
  d->pid = pid;
  n_daemons++; /* registered: the clean-up paths now know it */

  double deadline = th_now() + 20.0;
  while (th_now() < deadline) {
    int port = listening_port(d->log);
    if (port > 0) {
      d->port = port;
      snprintf(d->url, sizeof d->url, "http://127.0.0.1:%d", port);
      return d;
    }
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      d->pid = 0;
      break;
    }
    sleep_ms(10);
  }
  char *log = th_read_file(d->log, NULL);
  fprintf(stderr, "harness: lmapd did not start; its log:\n%s\n",
          log ? log : "(none)");
  free(log);
  th_kill9(d);
  return NULL;
}

int th_stop(th_daemon *d, int wait_s) {
  if (d == NULL || d->pid <= 0)
    return -1;
  kill(d->pid, SIGTERM);
  double deadline = th_now() + wait_s;
  int st;
  while (th_now() < deadline) {
    pid_t r = waitpid(d->pid, &st, WNOHANG);
    if (r == d->pid) {
      d->pid = 0;
      return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    }
    if (r < 0) {
      d->pid = 0;
      return -1;
    }
    sleep_ms(10);
  }
  th_kill9(d);
  return -1;
}

void th_kill9(th_daemon *d) {
  if (d == NULL || d->pid <= 0)
    return;
  kill(d->pid, SIGKILL);
  waitpid(d->pid, NULL, 0);
  d->pid = 0;
}

void th_signal(th_daemon *d, int sig) {
  if (d && d->pid > 0)
    kill(d->pid, sig);
}

void th_remove_logs(void) {
  for (int i = 0; i < n_daemons; i++)
    if (daemons[i].log[0])
      remove(daemons[i].log);
}

int th_run(const char *const *argv, const char *out_path) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out_path ? out_path : "/dev/null",
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid;
  int rc = posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    fprintf(stderr, "harness: cannot run %s: %s\n", argv[0], strerror(rc));
    return -1;
  }
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR)
      return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* 127.0.0.1:port (0: any free port). */
static struct sockaddr_in loopback(int port) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons((uint16_t)port);
  return a;
}

static int bound_socket(int *port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  struct sockaddr_in a = loopback(0);
  socklen_t len = sizeof a;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
    close(fd);
    return -1;
  }
  *port = ntohs(a.sin_port);
  return fd;
}

int th_dead_port(void) {
  int port = 0;
  int fd = bound_socket(&port);
  if (fd < 0)
    return 1;
  close(fd);
  return port;
}

/* ---- fakes ---- */

enum { FAKE_SILENT, FAKE_CANNED, FAKE_PROXY, FAKE_FLOOD };
#define MAX_PAIRS 16

struct th_fake {
  int kind;
  int lfd;
  int port;
  char url[64];
  pthread_t thread;
  int has_thread;
  atomic_int stop;
  atomic_uint accepted, answered;
  atomic_ullong sent;
  char *response, *info;
  size_t response_len, cut_after, flood_limit;
  int upstream_port;
};

static int send_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Waits for the listener up to 50 ms; returns an accepted socket or -1. */
static int accept_tick(th_fake *f) {
  struct pollfd p = {f->lfd, POLLIN, 0};
  if (poll(&p, 1, 50) <= 0)
    return -1;
  int c = accept(f->lfd, NULL, NULL);
  if (c >= 0)
    atomic_fetch_add(&f->accepted, 1);
  return c;
}

/* Reads one request: headers to the blank line, then Content-Length bytes
 * of body. Returns 0, or -1 when the peer closed or stalled (2 s). Sets
 * *is_info when it is GET /v1/info. */
static int read_request(int fd, int *is_info) {
  char buf[65536];
  size_t n = 0;
  char *end = NULL;
  while (end == NULL) {
    if (n == sizeof buf - 1)
      return -1;
    ssize_t r = recv(fd, buf + n, sizeof buf - 1 - n, 0);
    if (r <= 0)
      return -1;
    n += (size_t)r;
    buf[n] = '\0';
    end = strstr(buf, "\r\n\r\n");
  }
  if (is_info)
    *is_info = strncmp(buf, "GET /v1/info ", 13) == 0;
  size_t head = (size_t)(end + 4 - buf), body = 0;
  for (char *line = buf; line < end;) {
    char *eol = strstr(line, "\r\n");
    if (strncasecmp(line, "Content-Length:", 15) == 0)
      body = strtoul(line + 15, NULL, 10);
    line = eol + 2;
  }
  size_t have = n - head;
  while (have < body) {
    ssize_t r = recv(fd, buf, sizeof buf, 0);
    if (r <= 0)
      return -1;
    have += (size_t)r;
  }
  return 0;
}

/* Writes filler after the head until the client goes or the limit. */
static void flood(th_fake *f, int c) {
  char fill[65536];
  for (size_t i = 0; i < sizeof fill; i += 2)
    memcpy(fill + i, "0,", 2);
  size_t left = f->flood_limit;
  while (left && !atomic_load(&f->stop)) {
    size_t n = left < sizeof fill ? left : sizeof fill;
    ssize_t w = send(c, fill, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      break; /* the client closed: EPIPE or ECONNRESET */
    atomic_fetch_add(&f->sent, (unsigned long long)w);
    left -= (size_t)w;
  }
}

static void *canned_main(void *arg) {
  th_fake *f = arg;
  while (!atomic_load(&f->stop)) {
    int c = accept_tick(f);
    if (c < 0)
      continue;
    struct timeval tv = {2, 0};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int is_info = 0;
    if (read_request(c, &is_info) == 0) {
      if (is_info && f->info) {
        send_all(c, f->info, strlen(f->info));
      } else {
        size_t n = f->response_len;
        if (f->cut_after && f->cut_after < n)
          n = f->cut_after;
        /* Counted before the bytes go out, so a client that has its answer
         * always sees the count. */
        atomic_fetch_add(&f->answered, 1);
        if (send_all(c, f->response, n) == 0 && f->kind == FAKE_FLOOD)
          flood(f, c);
      }
    }
    shutdown(c, SHUT_RDWR);
    close(c);
  }
  return NULL;
}

static int connect_local(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  struct sockaddr_in a = loopback(port);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

typedef struct pair {
  int cfd, ufd;
  size_t down;
} pair;

static void close_pair(pair *p) {
  if (p->cfd >= 0) {
    shutdown(p->cfd, SHUT_RDWR);
    close(p->cfd);
  }
  if (p->ufd >= 0)
    close(p->ufd);
  p->cfd = p->ufd = -1;
}

/* One poll loop over the listener and every (client, upstream) pair. */
static void *proxy_main(void *arg) {
  th_fake *f = arg;
  pair pairs[MAX_PAIRS];
  for (int i = 0; i < MAX_PAIRS; i++)
    pairs[i].cfd = pairs[i].ufd = -1;
  char buf[65536];
  while (!atomic_load(&f->stop)) {
    struct pollfd pf[1 + 2 * MAX_PAIRS];
    int map[1 + 2 * MAX_PAIRS];
    int np = 0;
    pf[np].fd = f->lfd;
    pf[np].events = POLLIN;
    map[np++] = -1;
    for (int i = 0; i < MAX_PAIRS; i++) {
      if (pairs[i].cfd < 0)
        continue;
      pf[np].fd = pairs[i].cfd;
      pf[np].events = POLLIN;
      map[np++] = 2 * i;
      pf[np].fd = pairs[i].ufd;
      pf[np].events = POLLIN;
      map[np++] = 2 * i + 1;
    }
    if (poll(pf, (nfds_t)np, 50) <= 0)
      continue;
    for (int k = 0; k < np; k++) {
      if (!(pf[k].revents & (POLLIN | POLLHUP | POLLERR)))
        continue;
      if (map[k] < 0) {
        int c = accept(f->lfd, NULL, NULL);
        if (c < 0)
          continue;
        atomic_fetch_add(&f->accepted, 1);
        int u = connect_local(f->upstream_port);
        int slot = -1;
        for (int i = 0; i < MAX_PAIRS && slot < 0; i++)
          if (pairs[i].cfd < 0)
            slot = i;
        if (u < 0 || slot < 0) {
          if (u >= 0)
            close(u);
          close(c);
          continue;
        }
        pairs[slot] = (pair){c, u, 0};
        continue;
      }
      pair *p = &pairs[map[k] / 2];
      if (p->cfd < 0)
        continue; /* closed earlier in this round */
      int from_client = map[k] % 2 == 0;
      ssize_t r = recv(from_client ? p->cfd : p->ufd, buf, sizeof buf, 0);
      if (r <= 0) {
        close_pair(p);
        continue;
      }
      size_t n = (size_t)r;
      if (from_client) {
        if (send_all(p->ufd, buf, n) != 0)
          close_pair(p);
        continue;
      }
      int cut = 0;
      if (f->cut_after && p->down + n >= f->cut_after) {
        n = f->cut_after - p->down;
        cut = 1;
      }
      p->down += n;
      if (send_all(p->cfd, buf, n) != 0 || cut)
        close_pair(p);
    }
  }
  for (int i = 0; i < MAX_PAIRS; i++)
    close_pair(&pairs[i]);
  return NULL;
}

static th_fake *fake_new(int kind) {
  th_fake *f = calloc(1, sizeof *f);
  if (f == NULL)
    return NULL;
  f->kind = kind;
  f->lfd = bound_socket(&f->port);
  if (f->lfd < 0 || listen(f->lfd, 128) != 0) {
    if (f->lfd >= 0)
      close(f->lfd);
    free(f);
    return NULL;
  }
  snprintf(f->url, sizeof f->url, "http://127.0.0.1:%d", f->port);
  return f;
}

static th_fake *fake_run(th_fake *f, void *(*fn)(void *)) {
  if (f == NULL)
    return NULL;
  if (pthread_create(&f->thread, NULL, fn, f) != 0) {
    th_fake_free(f);
    return NULL;
  }
  f->has_thread = 1;
  return f;
}

th_fake *th_fake_silent(void) {
  return fake_new(FAKE_SILENT);
}

th_fake *th_fake_canned(const char *response, size_t cut_after) {
  th_fake *f = fake_new(FAKE_CANNED);
  if (f == NULL)
    return NULL;
  f->response_len = strlen(response);
  f->response = malloc(f->response_len + 1);
  if (f->response == NULL) {
    th_fake_free(f);
    return NULL;
  }
  memcpy(f->response, response, f->response_len + 1);
  f->cut_after = cut_after;
  return fake_run(f, canned_main);
}

/* A canned fake whose answer is `len` bytes and whose /v1/info answer,
 * when not NULL, is `info`. */
static th_fake *fake_canned(int kind, const char *info, const void *response,
                            size_t len) {
  th_fake *f = fake_new(kind);
  if (f == NULL)
    return NULL;
  f->response_len = len;
  f->response = malloc(len + 1);
  f->info = info ? strdup(info) : NULL;
  if (f->response == NULL || (info && f->info == NULL)) {
    th_fake_free(f);
    return NULL;
  }
  memcpy(f->response, response, len);
  f->response[len] = '\0';
  return fake_run(f, canned_main);
}

th_fake *th_fake_routed(const char *info, const void *response, size_t len) {
  return fake_canned(FAKE_CANNED, info, response, len);
}

th_fake *th_fake_flood(const char *info, const void *head, size_t len,
                       size_t limit) {
  th_fake *f = fake_canned(FAKE_FLOOD, info, head, len);
  if (f)
    f->flood_limit = limit;
  return f;
}

unsigned long long th_fake_sent(th_fake *f) {
  return atomic_load(&f->sent);
}

th_fake *th_fake_proxy(int upstream_port, size_t cut_after) {
  th_fake *f = fake_new(FAKE_PROXY);
  if (f == NULL)
    return NULL;
  f->upstream_port = upstream_port;
  f->cut_after = cut_after;
  return fake_run(f, proxy_main);
}

int th_fake_port(const th_fake *f) {
  return f->port;
}
const char *th_fake_url(const th_fake *f) {
  return f->url;
}
unsigned th_fake_accepted(th_fake *f) {
  return atomic_load(&f->accepted);
}
unsigned th_fake_answered(th_fake *f) {
  return atomic_load(&f->answered);
}

void th_fake_free(th_fake *f) {
  if (f == NULL)
    return;
  atomic_store(&f->stop, 1);
  if (f->has_thread)
    pthread_join(f->thread, NULL);
  close(f->lfd);
  free(f->response);
  free(f->info);
  free(f);
}
