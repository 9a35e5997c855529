#!/usr/bin/python3
"""End-to-end: lmapd --resident against lmapd serving the same store from its
mapping (the reference):
- every route that reads a map answers byte for byte the same (sparse and
  dense JSON, .npy, G = 1 and 3, relabel boxes, flip, logits, POST batches
  in JSON and .npy, whole maps, unknown ids);
- while the first arena is built, /readyz is 503 naming the progress and
  labels are already answered (from the mapping), equal to the reference;
  then /readyz turns 200, /v1/info and /metrics show the arena;
- SIGHUP: the new store is served once its arena is built, /readyz stays
  200 throughout, the log names the arena;
- memory (a memory cgroup of the test's, as a container's limit): a store
  whose arena does not fit is refused at start (exit 1, the message names
  the need and the bound) and at reload (the current store kept and served,
  the log names why).
Loopback only, bounded; every daemon is stopped by its PID."""
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

from e2e_common import (LMAP, LMAPD, TMP, check, launch, log_events, start_daemon,
                        stop_daemon, summary, wait_until)

NPY = "application/x-npy"


def http(port, path, body=None, accept=None, timeout=20):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=body,
                                 method="POST" if body is not None else "GET")
    if accept:
        req.add_header("Accept", accept)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def synth(path, images, *extra):
    r = subprocess.run([LMAP, "synth", "-o", path, "--images", str(images), "--level", "1",
                        "--force", "--no-progress", *extra], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit("lmap synth %s failed (exit %d): %s" % (path, r.returncode, r.stderr))


def ids_of(path):
    return subprocess.run([LMAP, "ids", path], capture_output=True, text=True,
                          check=True).stdout.split()


def requests(ids):
    """(path, body, accept) of every kind of request that reads maps."""
    out = []
    boxes = ["0,0,1,1", "0.1,0.2,0.7,0.9", "0.55,0.05,0.6,0.5", "0.3,0.3,0.3001,0.9"]
    for n, i in enumerate(ids[:12]):
        b = boxes[n % len(boxes)]
        out.append(("/v1/labels/%s?box=%s&format=sparse" % (i, b), None, None))
        out.append(("/v1/labels/%s?box=%s" % (i, b), None, None))
        out.append(("/v1/labels/%s?box=%s&output_size=3&flip=true" % (i, b), None, NPY))
        out.append(("/v1/labels/%s?box=0.1,0.2,0.5,0.6&box_format=relabel&softmax=false"
                    "&format=sparse" % i, None, None))
        out.append(("/v1/maps/%s" % i, None, None))
        out.append(("/v1/maps/%s" % i, None, NPY))
    queries = [{"id": i, "box": [0.05 * (k % 5), 0.1, 0.9, 0.95], "flip": k % 2 == 0}
               for k, i in enumerate(ids[:40])]
    for opts in ({}, {"output_size": 2}, {"format": "sparse", "box_format": "relabel"},
                 {"softmax": False}):
        body = json.dumps(dict(opts, queries=queries)).encode()
        out.append(("/v1/labels", body, None))
        out.append(("/v1/labels", body, NPY))
    out.append(("/v1/labels/not_an_id?box=0,0,1,1", None, None))
    out.append(("/v1/labels", json.dumps({"queries": [{"id": ids[0], "box": [0, 0, 1, 1]},
                                                      {"id": "nope", "box": [0, 0, 1, 1]}]}
                                         ).encode(), None))
    return out


def same_answers(port_a, port_b, reqs, what):
    bad = []
    for path, body, accept in reqs:
        a, b = http(port_a, path, body, accept), http(port_b, path, body, accept)
        if a != b:
            bad.append(path)
    check(not bad, "%s: %d of %d answers equal to the mapped daemon's (first differing: %s)"
          % (what, len(reqs) - len(bad), len(reqs), bad[:3]))
    return not bad


def metric(port, name):
    _, text = http(port, "/metrics")
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_equal_and_building(store, ids):
    sample = ids[::97] + ids[-3:]
    ref, ref_port, _ = start_daemon(store)
    # One decoding thread and a store large enough that the first requests
    # arrive while the arena is being built.
    p, port, log = start_daemon(store, "--resident", "--resident-threads", "1")
    try:
        status, body = http(port, "/readyz")
        check(status == 503, "readyz during the first build: 503 (got %d)" % status)
        reason = json.loads(body).get("reason", "")
        check(json.loads(body).get("status") == "building" and "records decoded" in reason,
              "readyz names the build and its progress: %s" % body[:160])
        same_answers(port, ref_port, requests(sample)[:6], "during the build")
        check(wait_until(lambda: http(port, "/readyz")[0] == 200, 60),
              "readyz turns 200 once the arena is built")
        ready = log_events(log, "resident_ready")
        check(len(ready) == 1 and ready[0]["records"] == len(ids) and
              ready[0]["arena_bytes"] > 0, "the log says the arena is ready: %s" % ready)
        same_answers(port, ref_port, requests(sample), "resident")
        _, info = http(port, "/v1/info")
        serving = json.loads(info)["serving"]
        check(serving["mode"] == "resident" and serving["arena"]["records"] == len(ids) and
              serving["arena"]["bytes"] == ready[0]["arena_bytes"] and
              serving["arena"]["build_threads"] == 1, "/v1/info: %s" % serving)
        check(json.loads(http(ref_port, "/v1/info")[1])["serving"] == {"mode": "mapped"},
              "/v1/info of the mapped daemon: mode mapped")
        check(metric(port, "lmap_resident_arena_bytes") == serving["arena"]["bytes"] and
              metric(port, "lmap_resident_build_records_decoded") == len(ids) and
              metric(port, "lmap_resident_build_seconds") > 0 and
              metric(port, "lmap_ready") == 1, "/metrics shows the arena")
        # The arena is the daemon's memory, the store's pages are let go.
        rss = int(next(line for line in open("/proc/%d/status" % p.pid)
                       if line.startswith("VmRSS:")).split()[1]) * 1024
        # Under a sanitizer its shadow memory (4x and more for
        # ThreadSanitizer) is most of the process: nothing to compare.
        if os.environ.get("LMAP_SANITIZED") != "1":
            check(rss < serving["arena"]["bytes"] + (64 << 20),
                  "resident memory %d B is the arena (%d B) plus less than 64 MiB"
                  % (rss, serving["arena"]["bytes"]))
    finally:
        check(stop_daemon(p) == 0, "resident lmapd stops cleanly")
        stop_daemon(ref)


def test_reload(store, ids, other):
    served = os.path.join(TMP, "resident-served.lmap")
    subprocess.run(["cp", store, served], check=True)
    p, port, log = start_daemon(served, "--resident")
    try:
        check(wait_until(lambda: http(port, "/readyz")[0] == 200, 60), "ready before the reload")
        other_ids = ids_of(other)
        subprocess.run(["cp", other, served + ".new"], check=True)
        os.rename(served + ".new", served)
        p.send_signal(signal.SIGHUP)
        statuses = set()
        deadline = time.monotonic() + 60
        while not log_events(log, "reloaded") and time.monotonic() < deadline:
            statuses.add(http(port, "/readyz")[0])
            time.sleep(0.01)
        check(statuses == {200}, "readyz stays 200 while the new arena is built: %s" % statuses)
        ev = log_events(log, "reloaded")
        check(len(ev) == 1 and ev[0]["generation"] == 2 and
              ev[0]["records"] == len(other_ids) and ev[0]["arena_bytes"] > 0,
              "the reload log names the new arena: %s" % ev)
        status, _ = http(port, "/v1/labels/%s?box=0,0,1,1" % other_ids[-1])
        check(status == 200, "an id of the new store is served after the swap")
        ref, ref_port, _ = start_daemon(other)
        try:
            same_answers(port, ref_port, requests(other_ids), "after the reload")
        finally:
            stop_daemon(ref)
    finally:
        check(stop_daemon(p) == 0, "lmapd stops cleanly after the reload")


class MemoryCgroup:
    """A memory cgroup of the test's own with a limit (v2 where the memory
    controller is there, else v1), for a daemon started inside it: the
    limit a container or a Kubernetes pod runs under."""

    def __init__(self, limit):
        name = "lmap-e2e-%d" % os.getpid()
        if "memory" in open("/sys/fs/cgroup/cgroup.controllers").read().split() \
                if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else False:
            self.dir, limit_file = "/sys/fs/cgroup/" + name, "memory.max"
        else:
            self.dir, limit_file = "/sys/fs/cgroup/memory/" + name, "memory.limit_in_bytes"
        os.mkdir(self.dir)
        with open(os.path.join(self.dir, limit_file), "w") as f:
            f.write(str(limit))

    def enter(self):  # preexec_fn: the child moves itself in
        with open(os.path.join(self.dir, "cgroup.procs"), "w") as f:
            f.write("0")

    def remove(self):
        for _ in range(50):
            try:
                os.rmdir(self.dir)
                return
            except OSError:
                time.sleep(0.1)


def test_memory(small, big):
    """A 150 MB memory cgroup: big's arena (about 250 MB) cannot fit,
    small's can."""
    cg = MemoryCgroup(150 << 20)
    try:
        r = subprocess.run([LMAPD, "--store", big, "--listen", "127.0.0.1:0", "--resident"],
                           capture_output=True, text=True, preexec_fn=cg.enter, timeout=60)
        errors = [json.loads(line) for line in r.stderr.splitlines()
                  if '"event":"error"' in line]
        check(r.returncode == 1, "a store whose arena cannot fit: exit 1 (got %d)" % r.returncode)
        check(errors and "resident arena needs" in errors[0]["message"] and
              "cgroup" in errors[0]["message"],
              "the refusal names the need and the bound: %s" % errors)
        check('"event":"listening"' not in r.stderr, "it is refused before listening")

        served = os.path.join(TMP, "resident-limited.lmap")
        subprocess.run(["cp", small, served], check=True)
        small_ids = ids_of(small)
        p, port, log = launch([LMAPD, "--store", served, "--listen", "127.0.0.1:0",
                               "--resident"], preexec_fn=cg.enter)
        try:
            check(wait_until(lambda: http(port, "/readyz")[0] == 200, 60),
                  "the small store's arena fits under the limit")
            subprocess.run(["cp", big, served + ".new"], check=True)
            os.rename(served + ".new", served)
            p.send_signal(signal.SIGHUP)
            check(wait_until(lambda: log_events(log, "reload_failed"), 60), "the reload fails")
            ev = log_events(log, "reload_failed")
            check(ev and "resident arena needs" in ev[0]["message"],
                  "reload_failed names the memory: %s" % ev)
            status, _ = http(port, "/v1/labels/%s?box=0,0,1,1" % small_ids[3])
            check(status == 200 and http(port, "/readyz")[0] == 200,
                  "the current store is kept, served and ready")
            check(not log_events(log, "reloaded"), "nothing was swapped")
        finally:
            check(stop_daemon(p) == 0, "lmapd stops cleanly after the refused reload")
    finally:
        cg.remove()


def main():
    os.makedirs(TMP, exist_ok=True)
    store = os.path.join(TMP, "resident.lmap")
    synth(store, 40000, "--seed", "3")
    ids = ids_of(store)
    other = os.path.join(TMP, "resident-other.lmap")
    synth(other, 500, "--seed", "4", "--classes", "70000", "--encoding", "f32")
    big = os.path.join(TMP, "resident-big.lmap")
    synth(big, 3000, "--seed", "5", "--grid", "64")
    test_equal_and_building(store, ids)
    test_reload(store, ids, other)
    test_memory(other, big)
    return summary()


if __name__ == "__main__":
    raise SystemExit(main())
