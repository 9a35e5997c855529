/* control: signals and the drain, on a libuv loop (see control.h). */
#include "control.h"

#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

#include "store/store.h"

#include "log.h"
#include "notify.h"

typedef struct control {
  api *a;
  http_server *h;
  unsigned grace_ms;
  uint64_t drain_started;
  int draining;
  int timed_out;
  const char *store_path;
  unsigned open_flags; /* store_open_flags() flags for reloads */
  uv_signal_t sigterm, sigint, sighup;
  uv_timer_t poll;
  uv_timer_t watch;
} control;

/* How often the served file is checked and replaced stores are taken from
 * idle workers. A timer, not a file watcher: one fstat() is about a
 * microsecond, it works on every file system (inotify misses changes made
 * through NFS and other hosts' writes), and it cannot miss a change that a
 * coalesced event would hide. A read that meets a truncated page in the
 * meantime is caught by the store's SIGBUS guard and reported at once. */
#define WATCH_MS 250

static void stop_all(control *c) {
  uv_signal_stop(&c->sigterm);
  uv_signal_stop(&c->sigint);
  uv_signal_stop(&c->sighup);
  uv_timer_stop(&c->poll);
  uv_timer_stop(&c->watch);
  uv_close((uv_handle_t *)&c->watch, NULL);
  uv_close((uv_handle_t *)&c->sighup, NULL);
  uv_close((uv_handle_t *)&c->sigterm, NULL);
  uv_close((uv_handle_t *)&c->sigint, NULL);
  uv_close((uv_handle_t *)&c->poll, NULL);
}

#define DRAIN_QUIET_MS 200

/* Every 20 ms while draining: done when no connection is left, or when
 * no request is in flight and none has started for DRAIN_QUIET_MS (the
 * connections left are idle keep-alives, closed by the stop; a connection
 * taken from the backlog sends its request well within that time). */
static void on_poll(uv_timer_t *t) {
  control *c = t->data;
  unsigned open = http_connections(c->h);
  unsigned long long quiet_ms;
  unsigned busy = http_in_flight(c->h, &quiet_ms);
  uint64_t waited = uv_now(t->loop) - c->drain_started;
  int idle =
      busy == 0 && quiet_ms >= DRAIN_QUIET_MS && waited >= DRAIN_QUIET_MS;
  if (open == 0 || idle || waited >= c->grace_ms) {
    c->timed_out = open != 0 && !idle;
    log_event(
        "drained",
        "\"open_connections\":%u,\"requests_in_flight\":%u,\"waited_ms\":%llu",
        open, busy, (unsigned long long)waited);
    stop_all(c);
  }
}

static void on_watch(uv_timer_t *t) {
  control *c = t->data;
  api_watch(c->a);
}

static void on_signal(uv_signal_t *s, int signum) {
  control *c = s->data;
  if (c->draining)
    return;
  c->draining = 1;
  log_event("draining", "\"signal\":%d,\"grace_ms\":%u", signum, c->grace_ms);
  notify_stopping();
  api_set_draining(c->a);
  http_quiesce(c->h);
  c->drain_started = uv_now(s->loop);
  uv_timer_start(&c->poll, on_poll, 0, 20);
}

/* Opens the store path afresh (a new store arrives by rename, so the path
 * now names a new inode) and hands it to the api. Requests keep flowing on
 * the old store meanwhile; a store that fails to open changes nothing. */
static void on_reload(uv_signal_t *s, int signum) {
  (void)signum;
  control *c = s->data;
  if (c->draining)
    return;
  diag d;
  diag_clear(&d);
  store *st;
  notify_reloading();
  if (store_open_flags(c->store_path, c->open_flags, &st, &d) != 0) {
    json_t *m = json_string(diag_text(&d));
    char *text = m ? json_dumps(m, JSON_ENCODE_ANY) : NULL;
    log_event("reload_failed", "\"message\":%s", text ? text : "\"?\"");
    free(text);
    json_decref(m);
    notify_reloaded(0, NULL, diag_text(&d));
    return;
  }
  unsigned long long records = store_get_meta(st)->record_count;
  char id[20];
  snprintf(id, sizeof id, "%s", store_id(st));
  uint64_t gen = api_swap(c->a, st);
  if (gen == 0) {
    store_close(st);
    log_event("reload_failed", "\"message\":\"out of memory\"");
    notify_reloaded(0, NULL, "out of memory");
    return;
  }
  log_event("reloaded", "\"generation\":%llu,\"records\":%llu,\"store\":\"%s\"",
            (unsigned long long)gen, records, id);
  notify_reloaded(records, id, NULL);
  /* Idle workers let go of the replaced store now, not at their next
   * request: it is closed as soon as no request reads it. */
  api_watch(c->a);
}

static void signal_set(sigset_t *set) {
  sigemptyset(set);
  sigaddset(set, SIGTERM);
  sigaddset(set, SIGINT);
  sigaddset(set, SIGHUP);
}

void control_block_signals(void) {
  sigset_t set;
  signal_set(&set);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
}

int control_run(api *a, http_server *h, unsigned grace_ms,
                const char *store_path, unsigned store_open_flags) {
  control c = {.a = a,
               .h = h,
               .grace_ms = grace_ms,
               .store_path = store_path,
               .open_flags = store_open_flags};
  uv_loop_t *loop = uv_default_loop();
  uv_signal_init(loop, &c.sigterm);
  uv_signal_init(loop, &c.sigint);
  uv_signal_init(loop, &c.sighup);
  uv_timer_init(loop, &c.poll);
  uv_timer_init(loop, &c.watch);
  c.sigterm.data = c.sigint.data = c.sighup.data = c.poll.data = &c;
  c.watch.data = &c;
  uv_timer_start(&c.watch, on_watch, WATCH_MS, WATCH_MS);
  uv_signal_start(&c.sigterm, on_signal, SIGTERM);
  uv_signal_start(&c.sigint, on_signal, SIGINT);
  uv_signal_start(&c.sighup, on_reload, SIGHUP);
  sigset_t set;
  signal_set(&set);
  pthread_sigmask(SIG_UNBLOCK, &set, NULL); /* pending ones arrive now */
  uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
  return c.timed_out;
}
