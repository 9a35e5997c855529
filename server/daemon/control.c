/* control: signals and the drain, on a libuv loop (see control.h). */
#include "control.h"

#include <stdio.h>
#include <uv.h>

#include "log.h"

typedef struct control {
  api *a;
  http_server *h;
  unsigned grace_ms;
  uint64_t drain_started;
  int draining;
  int timed_out;
  uv_signal_t sigterm, sigint;
  uv_timer_t poll;
} control;

static void stop_all(control *c) {
  uv_signal_stop(&c->sigterm);
  uv_signal_stop(&c->sigint);
  uv_timer_stop(&c->poll);
  uv_close((uv_handle_t *)&c->sigterm, NULL);
  uv_close((uv_handle_t *)&c->sigint, NULL);
  uv_close((uv_handle_t *)&c->poll, NULL);
}

/* Every 20 ms while draining: done when no connection is left. */
static void on_poll(uv_timer_t *t) {
  control *c = t->data;
  unsigned open = http_connections(c->h);
  uint64_t waited = uv_now(t->loop) - c->drain_started;
  if (open == 0 || waited >= c->grace_ms) {
    c->timed_out = open != 0;
    log_event("drained", "\"open_connections\":%u,\"waited_ms\":%llu", open,
              (unsigned long long)waited);
    stop_all(c);
  }
}

static void on_signal(uv_signal_t *s, int signum) {
  control *c = s->data;
  if (c->draining)
    return;
  c->draining = 1;
  log_event("draining", "\"signal\":%d,\"grace_ms\":%u", signum, c->grace_ms);
  api_set_draining(c->a);
  http_quiesce(c->h);
  c->drain_started = uv_now(s->loop);
  uv_timer_start(&c->poll, on_poll, 0, 20);
}

int control_run(api *a, http_server *h, unsigned grace_ms) {
  control c = {.a = a, .h = h, .grace_ms = grace_ms};
  uv_loop_t *loop = uv_default_loop();
  uv_signal_init(loop, &c.sigterm);
  uv_signal_init(loop, &c.sigint);
  uv_timer_init(loop, &c.poll);
  c.sigterm.data = c.sigint.data = c.poll.data = &c;
  uv_signal_start(&c.sigterm, on_signal, SIGTERM);
  uv_signal_start(&c.sigint, on_signal, SIGINT);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
  return c.timed_out;
}
