/* meminfo: memory this process can still take (see meminfo.h). */
#include "meminfo.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* The value of `key` (a "Name:" line in kB) in a /proc status-like file,
 * in bytes; 0 when absent. */
static uint64_t proc_kb(const char *path, const char *key) {
  FILE *f = fopen(path, "re");
  if (f == NULL)
    return 0;
  char line[256];
  uint64_t kb = 0;
  size_t n = strlen(key);
  while (fgets(line, sizeof line, f))
    if (strncmp(line, key, n) == 0 && sscanf(line + n, " %" SCNu64, &kb) == 1)
      break;
  fclose(f);
  return kb * 1024;
}

/* A cgroup file holding one number ("max" reads as absent). */
static int read_number(const char *path, uint64_t *out) {
  FILE *f = fopen(path, "re");
  if (f == NULL)
    return -1;
  int ok = fscanf(f, "%" SCNu64, out) == 1;
  fclose(f);
  return ok ? 0 : -1;
}

/* The room left under this process's cgroup memory limit, from
 * /proc/self/cgroup: cgroup v2 ("0::/path": memory.max less
 * memory.current) or v1 ("N:memory:/path", mounted at
 * /sys/fs/cgroup/memory: memory.limit_in_bytes less memory.usage_in_bytes).
 * Returns 0, or -1 when there is no limit to read. */
static int cgroup_room(uint64_t *room) {
  FILE *f = fopen("/proc/self/cgroup", "re");
  if (f == NULL)
    return -1;
  char line[512], limit[600], usage[600];
  int found = 0;
  while (!found && fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = '\0';
    const char *v1 = strstr(line, ":memory:");
    if (strncmp(line, "0::", 3) == 0) {
      snprintf(limit, sizeof limit, "/sys/fs/cgroup%s/memory.max", line + 3);
      snprintf(usage, sizeof usage, "/sys/fs/cgroup%s/memory.current",
               line + 3);
    } else if (v1 != NULL) {
      snprintf(limit, sizeof limit,
               "/sys/fs/cgroup/memory%s/memory.limit_in_bytes", v1 + 8);
      snprintf(usage, sizeof usage,
               "/sys/fs/cgroup/memory%s/memory.usage_in_bytes", v1 + 8);
    } else {
      continue;
    }
    uint64_t max, cur;
    if (v1 != NULL && access(limit, R_OK) != 0) {
      /* In a container without a cgroup namespace the path names the
       * host's hierarchy, whose own group is mounted as the root. */
      snprintf(limit, sizeof limit,
               "/sys/fs/cgroup/memory/memory.limit_in_bytes");
      snprintf(usage, sizeof usage,
               "/sys/fs/cgroup/memory/memory.usage_in_bytes");
    }
    if (read_number(limit, &max) == 0 && read_number(usage, &cur) == 0) {
      *room = max > cur ? max - cur : 0;
      found = 1;
    }
  }
  fclose(f);
  return found ? 0 : -1;
}

int mem_available(uint64_t *bytes, char *source, size_t cap) {
  uint64_t best = UINT64_MAX;
  snprintf(source, cap, "no memory figure could be read");
  uint64_t avail = proc_kb("/proc/meminfo", "MemAvailable:");
  if (avail) {
    best = avail;
    snprintf(source, cap, "MemAvailable in /proc/meminfo");
  }
  uint64_t room;
  if (cgroup_room(&room) == 0 && room < best) {
    best = room;
    snprintf(source, cap, "the room left under the cgroup's memory limit");
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
    uint64_t used = proc_kb("/proc/self/status", "VmSize:");
    room = rl.rlim_cur > used ? rl.rlim_cur - used : 0;
    if (room < best) {
      best = room;
      snprintf(source, cap, "the address-space limit (RLIMIT_AS, ulimit -v)");
    }
  }
  *bytes = best;
  return best == UINT64_MAX ? -1 : 0;
}
