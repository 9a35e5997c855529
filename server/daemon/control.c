/* control: signals and the drain, on a libuv loop (see control.h). */
#include "control.h"

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
  const control_config *cfg;
  uint64_t drain_started;
  int draining;
  int failed; /* exit status 1: a grace period ran out, a first build failed */
  uv_signal_t sigterm, sigint, sighup;
  uv_timer_t poll;
  uv_timer_t watch;
  /* The resident arena's build, one at a time, on a libuv work thread. */
  uv_work_t build;
  int building;
  int reload_pending; /* a SIGHUP came during a build */
  int first_build;    /* the build is the first store's (generation 1) */
  store *build_store; /* the store decoded (a reload's is owned here) */
  arena *built;
  int build_rc;
  diag build_diag;
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
  if (open == 0 || idle || waited >= c->cfg->grace_ms) {
    c->failed |= open != 0 && !idle;
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

/* Starts the drain (signal 0: a failed first build). */
static void drain(control *c, int signum) {
  if (c->draining)
    return;
  c->draining = 1;
  log_event("draining", "\"signal\":%d,\"grace_ms\":%u", signum,
            c->cfg->grace_ms);
  notify_stopping();
  if (c->building) /* the build ends soon, and the loop waits for it */
    atomic_store(&c->cfg->progress->cancel, 1);
  api_set_draining(c->a);
  http_quiesce(c->h);
  c->drain_started = uv_now(c->poll.loop);
  uv_timer_start(&c->poll, on_poll, 0, 20);
}

static void on_signal(uv_signal_t *s, int signum) {
  drain(s->data, signum);
}

/* ---- the resident arena ---- */

static void reload(control *c);

static void build_work(uv_work_t *req) {
  control *c = req->data;
  diag_clear(&c->build_diag);
  c->build_rc = arena_build(c->build_store, c->cfg->resident_threads,
                            c->cfg->progress, &c->built, &c->build_diag);
}

static void log_arena(const char *event, uint64_t generation, const arena *ar,
                      const char *id) {
  log_event(event,
            "\"generation\":%llu,\"records\":%llu,\"store\":\"%s\","
            "\"arena_bytes\":%llu,\"build_seconds\":%.3f,"
            "\"walk_seconds\":%.3f,\"build_threads\":%u",
            (unsigned long long)generation,
            (unsigned long long)arena_records(ar), id,
            (unsigned long long)arena_bytes(ar), arena_build_seconds(ar),
            arena_walk_seconds(ar), arena_build_threads(ar));
}

/* On the loop thread once a build has ended: the first store gets its
 * arena (and lmapd turns ready), or a reloaded store is swapped in with
 * its own; a failure stops lmapd (first) or keeps the current store. */
static void build_done(uv_work_t *req, int status) {
  (void)status;
  control *c = req->data;
  c->building = 0;
  store *st = c->build_store;
  arena *ar = c->built;
  c->build_store = NULL;
  c->built = NULL;
  char id[20];
  snprintf(id, sizeof id, "%s", store_id(st));
  uint64_t records = store_get_meta(st)->record_count;
  if (c->first_build) {
    c->first_build = 0;
    if (c->build_rc == 0 && api_attach_arena(c->a, 1, ar) == 0) {
      log_arena("resident_ready", 1, ar, id);
      notify_ready(records, id, c->cfg->port);
    } else if (c->build_rc == 0) { /* a reload came first: not reachable */
      arena_free(ar);
    } else if (!c->draining) {
      log_message("error", diag_text(&c->build_diag));
      c->failed = 1;
      drain(c, 0);
    }
  } else if (c->build_rc != 0) {
    store_close(st);
    log_message("reload_failed", diag_text(&c->build_diag));
    notify_reloaded(0, NULL, diag_text(&c->build_diag));
  } else {
    uint64_t gen = api_swap(c->a, st, ar);
    if (gen == 0) {
      arena_free(ar);
      store_close(st);
      log_message("reload_failed", "out of memory");
      notify_reloaded(0, NULL, "out of memory");
    } else {
      log_arena("reloaded", gen, ar, id);
      notify_reloaded(records, id, NULL);
      api_watch(c->a);
    }
  }
  if (c->reload_pending && !c->draining) {
    c->reload_pending = 0;
    reload(c);
  }
}

/* Decodes `st` on a work thread; `first`: the store of generation 1. */
static void build_start(control *c, store *st, int first) {
  c->building = 1;
  c->first_build = first;
  c->build_store = st;
  c->build.data = c;
  log_event("resident_building", "\"records\":%llu,\"arena_bytes_need\":%llu",
            (unsigned long long)store_get_meta(st)->record_count,
            (unsigned long long)arena_need(st));
  uv_queue_work(c->poll.loop, &c->build, build_work, build_done);
}

/* Opens the store path afresh (a new store arrives by rename, so the path
 * now names a new inode) and hands it to the api, after decoding it when
 * resident. Requests keep flowing on the old store meanwhile; a store that
 * fails to open changes nothing. */
static void reload(control *c) {
  diag d;
  diag_clear(&d);
  store *st;
  notify_reloading();
  if (store_open_flags(c->cfg->store_path, c->cfg->store_open_flags, &st, &d) !=
      0) {
    log_message("reload_failed", diag_text(&d));
    notify_reloaded(0, NULL, diag_text(&d));
    return;
  }
  if (c->cfg->resident) {
    build_start(c, st, 0);
    return;
  }
  unsigned long long records = store_get_meta(st)->record_count;
  char id[20];
  snprintf(id, sizeof id, "%s", store_id(st));
  uint64_t gen = api_swap(c->a, st, NULL);
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

static void on_reload(uv_signal_t *s, int signum) {
  (void)signum;
  control *c = s->data;
  if (c->draining)
    return;
  if (c->building) {
    c->reload_pending = 1;
    log_event("reload_queued", "\"reason\":\"a resident arena is being "
                               "built; the reload follows it\"");
    return;
  }
  reload(c);
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

int control_run(api *a, http_server *h, const control_config *cfg) {
  control c = {.a = a, .h = h, .cfg = cfg};
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
  if (cfg->resident)
    build_start(&c, cfg->first, 1);
  pthread_sigmask(SIG_UNBLOCK, &set, NULL); /* pending ones arrive now */
  uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
  return c.failed;
}
