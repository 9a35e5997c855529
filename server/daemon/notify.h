/*
 * notify: tells the service manager what lmapd is doing, through libsystemd's
 * sd_notify (the NOTIFY_SOCKET datagram protocol; nothing happens when the
 * variable is not set, as outside a Type=notify unit). READY=1 once the
 * store is open and the socket bound; RELOADING=1 around a SIGHUP swap, then
 * READY=1 again; STOPPING=1 when the drain begins; STATUS= a line for
 * `systemctl status`.
 */
#ifndef LMAP_NOTIFY_H
#define LMAP_NOTIFY_H

#include <stdint.h>

/* Serving `records` records of the store `id` on `port`. */
void notify_ready(uint64_t records, const char *id, unsigned port);

/* A SIGHUP swap begins. */
void notify_reloading(void);

/* The swap ended: serving `records` records of the store `id`, or, when
 * `failed` is not NULL, still the previous store, for that reason (`id`
 * and `records` unused). */
void notify_reloaded(uint64_t records, const char *id, const char *failed);

/* The drain begins (SIGTERM or SIGINT). */
void notify_stopping(void);

#endif /* LMAP_NOTIFY_H */
