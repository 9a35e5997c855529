#!/usr/bin/python3
"""End-to-end: an idle worker does not keep a replaced store (issue 10,
item 14).

lmapd with 4 worker threads serves a store; a few requests reach every
worker (each opens a read transaction on the store); then two stores are
installed by rename + SIGHUP with almost no traffic. The replaced files
(unlinked by the renames) must leave /proc/PID/maps and /proc/PID/fd, so
that their disk space is freed, within a bounded time and without a
request on each worker; before the fix they stayed mapped until every
worker had served a request. Every process is stopped by its PID."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from e2e_common import LMAP, TMP, check, start_daemon, stop_daemon, summary


def call(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def synth(path, images, seed):
    subprocess.run([LMAP, "synth", "-o", path, "--images", str(images), "--seed", str(seed),
                    "--force", "--no-progress"], check=True, capture_output=True)


def deleted_stores(pid, served):
    """Mappings and descriptors of replaced (deleted) files at the served
    path."""
    name = os.path.basename(served)
    maps = [l.strip() for l in open("/proc/%d/maps" % pid) if name in l and "(deleted)" in l]
    fds = []
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if name in target and "(deleted)" in target:
            fds.append(target)
    return maps + fds


def wait_released(pid, served, rounds=100):
    left = deleted_stores(pid, served)
    for _ in range(rounds):
        if not left:
            break
        time.sleep(0.1)
        left = deleted_stores(pid, served)
    return left


def main():
    os.makedirs(TMP, exist_ok=True)
    served = os.path.join(TMP, "idle-served.lmap")
    synth(served, 300, 5)
    ids = subprocess.run([LMAP, "ids", served], capture_output=True, text=True,
                         check=True).stdout.split()
    p, port, log = start_daemon(served, "--threads", "4")
    try:
        # Concurrent requests so that every worker thread serves some and
        # holds a read transaction on the store.
        def burst():
            for i in ids[:60]:
                call(port, "/v1/labels/%s?box=0,0,1,1&format=sparse" % i)

        threads = [threading.Thread(target=burst) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        check(not deleted_stores(p.pid, served), "nothing replaced yet")
        for generation, seed in ((2, 6), (3, 7)):
            fresh = served + ".new"
            synth(fresh, 300, seed)
            os.rename(fresh, served)
            p.send_signal(signal.SIGHUP)
            for _ in range(100):  # until the reload is logged (bounded)
                if any('"reloaded"' in l and '"generation":%d' % generation in l for l in open(log)):
                    break
                time.sleep(0.05)
            call(port, "/v1/labels/%s?box=0,0,1,1" % ids[0])  # little traffic: one request
        left = wait_released(p.pid, served)
        check(not left, "replaced stores are no longer mapped or open: %s" % left[:4])
        st, body = call(port, "/v1/info")
        check(st == 200 and "--seed 7" in json.loads(body)["source"], "the last store is served")
        check(stop_daemon(p) == 0, "clean stop")
    finally:
        if p.poll() is None:
            p.kill()
    return summary()


if __name__ == "__main__":
    sys.exit(main())
