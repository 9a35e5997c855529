/*
 * meminfo: how much memory this process can still take, before it asks for
 * a large block that it will fill (the resident arena): on Linux an
 * anonymous mapping of almost any size succeeds and the process is killed
 * later, when it touches pages the system does not have. So the caller
 * compares its need with what the system and its control group can give.
 */
#ifndef LMAP_MEMINFO_H
#define LMAP_MEMINFO_H

#include <stddef.h>
#include <stdint.h>

/* The bytes of memory available to this process now: the smallest of
 * MemAvailable in /proc/meminfo, the room left under its cgroup's memory
 * limit (v2 or v1: a container's or a Kubernetes pod's limit), and the room
 * left under RLIMIT_AS.
 * `source` (`cap` bytes) names the bound that gave the figure, for error
 * messages. Returns 0, or -1 when no bound could be read (then *bytes is
 * UINT64_MAX and `source` says so). */
int mem_available(uint64_t *bytes, char *source, size_t cap);

#endif /* LMAP_MEMINFO_H */
