/*
 * control: lmapd's libuv control loop. The only module that includes uv.h.
 * It owns signals: SIGTERM/SIGINT start a drain (readyz turns 503, the
 * listener closes, open connections finish, then the loop ends, or the
 * grace period runs out first); SIGHUP reopens the store path and swaps
 * the new store in (api_swap), keeping the old one if the new one fails.
 * A timer calls api_watch every 250 ms: the served file is checked for
 * changes, and idle workers let go of replaced stores.
 *
 * With `resident`, every store is decoded into an arena (store/arena.h) on
 * a libuv work thread, which spreads the decoding over its own threads:
 * the first store's at start (lmapd answers from the mapping meanwhile,
 * not ready; a build that fails stops lmapd with exit status 1), and each
 * reloaded store's before it is swapped in, while the old one serves. A
 * SIGHUP during a build is kept and handled when the build ends. A
 * reload whose arena cannot be had (memory) is logged and the current
 * store kept.
 */
#ifndef LMAPD_CONTROL_H
#define LMAPD_CONTROL_H

#include "api.h"
#include "http.h"

/* Blocks SIGTERM, SIGINT and SIGHUP in the calling thread. Called before
 * any thread starts, so the HTTP threads inherit the mask: a signal that
 * arrives before control_run() stays pending instead of killing the
 * process (the default action), and is handled once the loop is ready. */
void control_block_signals(void);

typedef struct control_config {
  unsigned grace_ms;         /* drain time */
  const char *store_path;    /* reopened at each SIGHUP */
  unsigned store_open_flags; /* store_open_flags() flags for reloads */
  unsigned port;             /* the port served, for the service manager */
  /* lmapd --resident: decode on this many threads (0: one per CPU), with
   * `progress` (the api's, see api_set_resident) and `first` the store the
   * api was made with (borrowed: the api keeps it while it is current). */
  int resident;
  unsigned resident_threads;
  arena_progress *progress;
  store *first;
} control_config;

/* Runs until a drain completes (unblocking the signals once their handlers
 * are in place). Returns 0 when every connection finished within the grace
 * period, 1 when the grace period ran out first or the first resident
 * arena could not be built. */
int control_run(api *a, http_server *h, const control_config *cfg);

#endif /* LMAPD_CONTROL_H */
