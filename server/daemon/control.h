/*
 * control: lmapd's libuv control loop. The only module that includes uv.h.
 * It owns signals: SIGTERM/SIGINT start a drain (readyz turns 503, the
 * listener closes, open connections finish, then the loop ends, or the
 * grace period runs out first); SIGHUP reopens the store path and swaps
 * the new store in (api_swap), keeping the old one if the new one fails.
 * A timer calls api_watch every 250 ms: the served file is checked for
 * changes, and idle workers let go of replaced stores.
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

/* Runs until a drain completes (unblocking the signals once their handlers
 * are in place). Returns 0 when every connection finished
 * within `grace_ms`, 1 when the grace period ran out first. */
int control_run(api *a, http_server *h, unsigned grace_ms,
                const char *store_path, unsigned store_open_flags);

#endif /* LMAPD_CONTROL_H */
