#!/usr/bin/python3
"""End-to-end: store swap by rename + SIGHUP under steady load (zero failed
requests, answers from the new store afterwards, a bad store refused and the
old one kept), then SIGTERM with requests in flight (all answered, exit 0), and SIGTERM
with an idle kept-alive connection (no wait for it; answers during the drain
say "Connection: close").
Load goes to 127.0.0.1 only, bounded in time and count; every process is
stopped by its PID."""
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from e2e_common import LMAP, TMP, check, log_events, start_daemon, summary


def get(port, path, body=None, timeout=20):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=body,
                                 method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def synth(path, images):
    r = subprocess.run([LMAP, "synth", "-o", path, "--images", str(images), "--seed", "5",
                        "--force", "--no-progress"], capture_output=True, text=True)
    if r.returncode != 0:  # say why: the suite runs once on a fresh machine
        raise SystemExit("lmap synth %s failed (exit %d): %s" % (path, r.returncode, r.stderr))


def main():
    os.makedirs(TMP, exist_ok=True)
    served = os.path.join(TMP, "served.lmap")
    synth(served, 300)
    ids = subprocess.run([LMAP, "ids", served], capture_output=True, text=True,
                         check=True).stdout.split()
    # Same seed, more images: the first 300 ids and maps are the same, so
    # every request of the load is valid on both stores.
    bigger = os.path.join(TMP, "bigger.lmap")
    synth(bigger, 500)
    new_ids = sorted(set(subprocess.run([LMAP, "ids", bigger], capture_output=True, text=True,
                                        check=True).stdout.split()) - set(ids))
    # The log goes to a file of the daemon's own (start_daemon): a file the
    # test also read through the descriptor it handed to lmapd shared its
    # offset, and a seek here made lmapd write over its own lines.
    p, port, log_path = start_daemon(served, "--threads", "2")
    try:
        stop = threading.Event()
        results = []

        def load(k):
            n = 0
            while not stop.is_set() and n < 5000:
                i = ids[(k * 31 + n) % len(ids)]
                try:
                    st, _ = get(port, "/v1/labels/%s?box=0.1,0.1,0.8,0.9&format=sparse" % i)
                except Exception as e:  # a refused or reset connection is a failure
                    st = repr(e)
                results.append(st)
                n += 1

        threads = [threading.Thread(target=load, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        os.rename(bigger, served)  # install the new store the documented way
        p.send_signal(signal.SIGHUP)
        time.sleep(0.7)
        # A store that cannot be opened: refused, the current one kept.
        junk = os.path.join(TMP, "junk.lmap")
        open(junk, "w").write("not a store\n")
        os.rename(junk, served)
        p.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        bad = [r for r in results if r != 200]
        check(len(results) > 100 and not bad,
              "load across two reloads: %d requests, %d failed %s" % (len(results), len(bad), bad[:3]))
        st, body = get(port, "/v1/info")
        check(st == 200 and json.loads(body)["record_count"] == 500, "answers come from the new store")
        st, _ = get(port, "/v1/labels/%s?box=0,0,1,1" % new_ids[0])
        check(st == 200, "an id only in the new store is served")
        events = log_events(log_path)
        check(any(e["event"] == "reloaded" and e.get("records") == 500 for e in events), "reload logged")
        check(any(e["event"] == "reload_failed" for e in events), "failed reload logged")

        # SIGTERM with requests in flight: each is answered, then exit 0.
        # Sparse answers: the requests take long enough to be in flight,
        # and short enough under ThreadSanitizer (dense ones took minutes).
        batch = json.dumps({"queries": [{"id": ids[k % len(ids)], "box": [0, 0, 1, 1]}
                                        for k in range(4096)], "format": "sparse"}).encode()
        answers = []

        def slow():
            try:
                answers.append(get(port, "/v1/labels", batch)[0])
            except Exception as e:
                answers.append(repr(e))

        inflight = [threading.Thread(target=slow) for _ in range(6)]
        for t in inflight:
            t.start()
        time.sleep(0.15)
        p.send_signal(signal.SIGTERM)
        for t in inflight:
            t.join()
        code = p.wait(timeout=30)
        check(answers == [200] * 6, "in-flight requests all answered during drain: %s" % answers)
        check(code == 0, "exit 0 after drain (got %s)" % code)
        p.wait()

        # An idle kept-alive connection does not hold the drain, and a
        # request on a kept-alive connection during the drain is answered
        # with "Connection: close" (the client moves to another server).
        calm = os.path.join(TMP, "calm.lmap")
        synth(calm, 300)
        p, port, log_path = start_daemon(calm, "--grace", "20")
        idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        busy = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for conn in (idle, busy):
            conn.request("GET", "/v1/labels/%s?box=0,0,1,1" % ids[0])
            r = conn.getresponse()
            r.read()
            check(r.status == 200 and r.getheader("Connection") != "close", "kept alive before")
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        busy.request("GET", "/v1/labels/%s?box=0,0,1,1" % ids[1])
        r = busy.getresponse()
        r.read()
        check(r.status == 200 and r.getheader("Connection") == "close",
              "answered during the drain with Connection: close (%s)" % r.getheader("Connection"))
        code = p.wait(timeout=30)
        took = time.monotonic() - t0
        check(code == 0 and took < 5,
              "idle keep-alive connection: exit %s after %.1f s (grace 20 s)" % (code, took))
        drained = [json.loads(l) for l in open(log_path) if '"drained"' in l]
        check(drained and drained[0]["requests_in_flight"] == 0, "drained log: %s" % drained)
        idle.close()
        busy.close()
    finally:
        if p.poll() is None:
            p.kill()
    return summary()


if __name__ == "__main__":
    sys.exit(main())
