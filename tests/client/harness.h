/*
 * harness: what the liblmap tests need around the library under test.
 *
 * It starts real lmapd processes (posix_spawn, stderr to a log file whose
 * JSON "listening" line gives the ephemeral port), runs the lmap tool for
 * references, and provides small TCP fakes: a proxy that counts the
 * connections it accepts (and can cut answers short), a responder that
 * answers every request with one canned HTTP answer, and a listener that
 * never accepts. Invariant: no process started here outlives the test: every
 * daemon is registered before anything else can fail, and an atexit handler,
 * the fatal-signal handlers and (under ASan/UBSan) the sanitizer's death
 * callback SIGKILL and reap whatever is still registered.
 *
 * Environment: LMAP_BIN, LMAPD_BIN (the binaries), LMAP_TEST_TMP (scratch
 * directory, created if missing).
 */
#ifndef LMAP_TEST_HARNESS_H
#define LMAP_TEST_HARNESS_H

#include <stddef.h>
#include <sys/types.h>

/* Reads the environment, creates the scratch directory and installs the
 * clean-up handlers. Exits with a message when a variable is missing. */
void th_init(void);

const char *th_tmp(void);
const char *th_lmap(void);

/* A running lmapd. */
typedef struct th_daemon {
  pid_t pid; /* 0 once reaped */
  int port;
  char log[512];
  char url[64]; /* "http://127.0.0.1:PORT" */
} th_daemon;

/* Starts lmapd --store STORE --listen 127.0.0.1:0 plus `extra` (a NULL-
 * terminated list, may be NULL) and waits for its "listening" line. Returns
 * NULL (after printing the log) when it does not come within 20 s. */
th_daemon *th_start(const char *store, const char *const *extra);

/* SIGTERM, then waits up to `wait_s` seconds (SIGKILL after). Returns the
 * exit status, or -1 when it had to be killed or died by a signal. */
int th_stop(th_daemon *d, int wait_s);

/* SIGKILL and reap. */
void th_kill9(th_daemon *d);

/* Sends `sig` without waiting (SIGTERM drain tests); th_stop reaps later. */
void th_signal(th_daemon *d, int sig);

/* Removes the log files of every daemon started so far (call after a
 * successful run; a failed run keeps them for the post-mortem). */
void th_remove_logs(void);

/* Runs argv (argv[0] a path), stdout to `out_path` (or /dev/null when
 * NULL), stderr inherited. Returns the exit status, or -1. */
int th_run(const char *const *argv, const char *out_path);

/* Reads a whole file into a NUL-terminated buffer (free()); NULL on error. */
char *th_read_file(const char *path, size_t *len);

/* A TCP port on 127.0.0.1 that was just bound and closed: connecting to it
 * is refused (nothing else binds ephemeral ports that fast here). */
int th_dead_port(void);

/* Monotonic seconds. */
double th_now(void);

/* ---- TCP fakes, each served by its own thread ---- */

typedef struct th_fake th_fake;

/* Listens and never accepts: connections complete in the kernel's backlog
 * and requests are never answered (a hung server). */
th_fake *th_fake_silent(void);

/* Answers every request (read to the end of its headers and
 * Content-Length body) with `response` verbatim, then closes. When
 * `cut_after` > 0 only that many bytes are written before closing. */
th_fake *th_fake_canned(const char *response, size_t cut_after);

/* A canned fake for answers of any bytes (NULs included): GET /v1/info
 * gets `info` (a whole HTTP answer, NUL-terminated) when it is not NULL,
 * every other request the `len` bytes of `response`. Lets a test give the
 * client a real store description and a hostile labels or map answer. */
th_fake *th_fake_routed(const char *info, const void *response, size_t len);

/* Like th_fake_routed, but after the `len` bytes of `head` (the status line,
 * headers, the blank line and maybe the start of a body) it writes filler
 * bytes ("0,0,...") until the client closes
 * the connection or `limit` bytes of body went out: a server that sends an
 * answer without end. th_fake_sent() says how many body bytes it wrote. */
th_fake *th_fake_flood(const char *info, const void *head, size_t len,
                       size_t limit);
unsigned long long th_fake_sent(th_fake *f);

/* Forwards to 127.0.0.1:upstream_port. When `cut_after` > 0 each
 * connection's answer stream is cut after that many bytes (both sockets
 * closed), an answer cut short. */
th_fake *th_fake_proxy(int upstream_port, size_t cut_after);

int th_fake_port(const th_fake *f);
const char *th_fake_url(const th_fake *f);
/* Connections accepted so far (proxy and canned). */
unsigned th_fake_accepted(th_fake *f);
/* Requests answered (canned only). */
unsigned th_fake_answered(th_fake *f);
/* Stops the thread, closes every socket, frees. Accepts NULL. */
void th_fake_free(th_fake *f);

#endif /* LMAP_TEST_HARNESS_H */
