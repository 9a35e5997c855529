/*
 * control: lmapd's libuv control loop. The only module that includes uv.h.
 * It owns signals: SIGTERM/SIGINT start a drain (readyz turns 503, the
 * listener closes, open connections finish, then the loop ends, or the
 * grace period runs out first); SIGHUP reopens the store path and swaps
 * the new store in (api_swap), keeping the old one if the new one fails.
 */
#ifndef LMAPD_CONTROL_H
#define LMAPD_CONTROL_H

#include "api.h"
#include "http.h"

/* Runs until a drain completes. Returns 0 when every connection finished
 * within `grace_ms`, 1 when the grace period ran out first. */
int control_run(api *a, http_server *h, unsigned grace_ms,
                const char *store_path);

#endif /* LMAPD_CONTROL_H */
