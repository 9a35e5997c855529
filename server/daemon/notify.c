/* notify: the service manager's view of lmapd (contract in notify.h). */
#include "notify.h"

#include <time.h>

#include <systemd/sd-daemon.h>

void notify_ready(uint64_t records, const char *id, unsigned port) {
  sd_notifyf(0, "READY=1\nSTATUS=serving %llu records of store %s on port %u",
             (unsigned long long)records, id, port);
}

void notify_reloading(void) {
  /* MONOTONIC_USEC: what Type=notify-reload (systemd 253+) asks for; older
   * managers ignore it. */
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading the store",
             (unsigned long long)now.tv_sec * 1000000ull +
                 (unsigned long long)now.tv_nsec / 1000u);
}

void notify_reloaded(uint64_t records, const char *id, const char *failed) {
  if (failed != NULL)
    sd_notifyf(0,
               "READY=1\nSTATUS=reload failed, still serving the previous "
               "store: %s",
               failed);
  else
    sd_notifyf(0, "READY=1\nSTATUS=serving %llu records of store %s",
               (unsigned long long)records, id);
}

void notify_stopping(void) {
  sd_notify(0, "STOPPING=1\nSTATUS=draining");
}
