#!/usr/bin/python3
"""End-to-end: a served store that is damaged, truncated or rewritten
(issue 10, items 2, 4 and 13), against the real lmapd on a loopback port.

1. Bytes of one record overwritten in place (size and mtime kept): that
   record answers 500 "corrupt" naming it, every other record is still
   served, a log line names the record, lmap_store_errors_total counts it,
   /readyz answers 503 "damaged" with the reason; a batch holding it fails
   whole (500 naming the query and the record, JSON and .npy), a batch
   without it is served; a reload with a good store makes /readyz 200.
2. A leaf node of LMDB's tree pointed past the end of the file: the ids of
   that chunk answer 500 naming the record, and no worker is poisoned
   (every other id answers 200 on every pass, with 2 worker threads).
3. The served file truncated: a read past the cut at once answers 503
   (the store's SIGBUS guard) and lmapd stays alive, /readyz turns 503
   "unavailable" naming the change (polled, bounded), every store route
   answers 503 naming the cause, one log line; a good store installed by
   rename + SIGHUP serves again.
4. Another store copied over the served file (cp): the same, and a SIGHUP
   then serves the copied store.
Every process is stopped by its PID."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

from e2e_common import LMAP, TMP, check, start_daemon, stop_daemon, summary
import store_damage


def call(port, path, body=None, accept=None):
    headers = {"Accept": accept} if accept else {}
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=body,
                                 method="POST" if body else "GET", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def error_of(body):
    try:
        return json.loads(body).get("error", {})
    except ValueError:
        return {}


def synth(path, images, seed=5):
    subprocess.run([LMAP, "synth", "-o", path, "--images", str(images), "--seed", str(seed),
                    "--force", "--no-progress"], check=True, capture_output=True)


def ids_of(path):
    return subprocess.run([LMAP, "ids", path], capture_output=True, text=True,
                          check=True).stdout.split()


def label(port, i):
    return call(port, "/v1/labels/%s?box=0,0,1,1&format=sparse" % i)


def events(log, name):
    return [json.loads(l) for l in open(log) if '"event":"%s"' % name in l]


def wait_status(port, want, rounds=100):
    """Polls /readyz (at most `rounds` tenths of a second) until it answers
    `want`; returns the last (status, body)."""
    st, body = call(port, "/readyz")
    for _ in range(rounds):
        if st == want:
            break
        time.sleep(0.1)
        st, body = call(port, "/readyz")
    return st, body


def metric(port, name):
    st, body = call(port, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def reload(p, port, served, good):
    """Installs `good` over `served` by rename and sends SIGHUP; waits for
    /readyz 200 (bounded)."""
    tmp = served + ".new"
    shutil.copyfile(good, tmp)
    os.rename(tmp, served)
    p.send_signal(signal.SIGHUP)
    return wait_status(port, 200)


def damaged_record(p, port, log, served, good, ids):
    # Overwrite bytes in the middle of the file: they land in one record.
    size = os.path.getsize(served)
    store_damage.overwrite_in_place(served, size // 2 + 1000, b"\xff" * 64)
    answers = {i: label(port, i) for i in ids}
    bad = {i: a for i, a in answers.items() if a[0] != 200}
    check(len(bad) == 1, "one record damaged, the %d others served (bad: %s)"
          % (len(ids) - 1, list(bad)[:5]))
    if len(bad) != 1:
        return
    rid, (st, body) = next(iter(bad.items()))
    err = error_of(body)
    check(st == 500 and err.get("code") == "corrupt" and rid in err.get("message", ""),
          "the damaged record answers 500 corrupt naming it: %s %s" % (st, body[:200]))
    logged = events(log, "store_error")
    check(any(e.get("record") == rid and e.get("kind") == "corrupt" for e in logged),
          "a log line names the record: %s" % logged[:2])
    check((metric(port, 'lmap_store_errors_total{kind="corrupt"}') or 0) >= 1, "counted in the metrics")
    st, body = call(port, "/readyz")
    check(st == 503 and json.loads(body).get("status") == "damaged" and rid in json.loads(body).get("reason", ""),
          "/readyz 503 damaged naming the record: %s %s" % (st, body[:200]))
    check(metric(port, "lmap_ready") == 0, "lmap_ready 0")
    healthy = [i for i in ids if i != rid]
    check(all(label(port, i)[0] == 200 for i in healthy[:40]), "healthy records still served")

    # Item 13: a batch holding the damaged record fails whole, naming it.
    k = 3
    queries = [{"id": i, "box": [0, 0, 1, 1]} for i in healthy[:k]] + \
              [{"id": rid, "box": [0, 0, 1, 1]}] + [{"id": healthy[k], "box": [0, 0, 1, 1]}]
    for accept in (None, "application/x-npy"):
        st, body = call(port, "/v1/labels", json.dumps({"queries": queries}).encode(), accept)
        err = error_of(body)
        check(st == 500 and err.get("code") == "corrupt" and err.get("field") == "queries[%d]" % k
              and ("queries[%d]" % k) in err.get("message", "") and rid in err.get("message", "")
              and b"results" not in body,
              "a batch with the damaged record fails whole, naming query and record (%s): %s %s"
              % (accept, st, body[:300]))
    st, body = call(port, "/v1/labels", json.dumps({"queries": queries[:k]}).encode())
    check(st == 200 and len(json.loads(body)["results"]) == k, "a batch without it is served")

    st, body = reload(p, port, served, good)
    check(st == 200, "a reload with a good store makes the replica ready: %s %s" % (st, body))
    check(label(port, rid)[0] == 200, "the record is served from the good store")


def poisoned_chunk(p, port, log, served, ids):
    key = store_damage.point_past_end(served, 0)  # the first chunk
    passes = []
    for _ in range(3):
        passes.append({i: label(port, i) for i in ids})
    bad = [sorted(i for i, a in answers.items() if a[0] != 200) for answers in passes]
    check(bad[0] and bad[0] == bad[1] == bad[2] and len(bad[0]) < len(ids) // 2,
          "only the damaged chunk's ids fail, on every pass (%s)" % [len(b) for b in bad])
    if bad[0]:
        st, body = passes[0][bad[0][0]]
        err = error_of(body)
        check(st == 500 and bad[0][0] in err.get("message", "") and err.get("code") in ("corrupt", "io_error"),
              "an id of the damaged chunk answers 500 naming it: %s %s" % (st, body[:200]))
        check(key in bad[0], "the chunk's first id is among them")
    check(call(port, "/readyz")[0] == 503, "/readyz 503 after LMDB damage")


def truncated(p, port, log, served, good, ids):
    # The read must come before the file watch (every 250 ms) notices the
    # cut, or it is refused without reading: on a loaded machine (ASan, CI)
    # the watch sometimes wins, and then a good store goes back and the
    # file is cut again, a few times at most.
    for attempt in range(6):
        if attempt:
            print("NOTE: the watch saw the cut before the read (attempt %d): again" % attempt)
            st, body = reload(p, port, served, good)
            check(st == 200, "truncated: a good store again before another cut: %s" % st)
        unavailable_before = len(events(log, "store_unavailable"))
        for i in ids[:40]:  # both workers hold a read transaction on the store
            label(port, i)
        size = os.path.getsize(served)
        os.truncate(served, size // 3)
        # At once: the last id's chunk lies past the cut, so this read
        # meets a page past the end of the file (SIGBUS, which the store's
        # guard turns into an error).
        st, body = call(port, "/v1/labels/%s?box=0,0,1,1" % ids[-1])
        read_past_cut = any(e.get("kind") == "truncated_read" and e.get("record") == ids[-1]
                            for e in events(log, "store_error"))
        if read_past_cut:
            break
    err = error_of(body)
    check(st == 503 and err.get("code") == "unavailable" and p.poll() is None,
          "truncated: a read past the cut answers 503 and lmapd lives: %s %s" % (st, body[:300]))
    check(read_past_cut, "truncated: the read past the cut is logged naming the record")
    st, body = wait_status(port, 503)
    doc = json.loads(body) if st == 503 else {}
    check(st == 503 and doc.get("status") == "unavailable" and "truncated" in doc.get("reason", ""),
          "truncated: /readyz 503 unavailable naming the change: %s %s" % (st, body[:300]))
    for path in ("/v1/labels/%s?box=0,0,1,1" % ids[0], "/v1/maps/%s" % ids[1], "/v1/info"):
        st, body = call(port, path)
        err = error_of(body)
        check(st == 503 and err.get("code") == "unavailable" and "truncated" in err.get("message", ""),
              "truncated: %s answers 503 naming the cause: %s %s" % (path, st, body[:200]))
    st, body = call(port, "/v1/labels", json.dumps({"queries": [{"id": ids[0], "box": [0, 0, 1, 1]}]}).encode())
    check(st == 503, "truncated: a batch answers 503")
    check(call(port, "/livez")[0] == 200 and p.poll() is None, "truncated: lmapd alive")
    check(len(events(log, "store_unavailable")) == unavailable_before + 1, "truncated: one log line")
    counted = sum(metric(port, 'lmap_store_errors_total{kind="%s"}' % k) or 0
                  for k in ("file_changed", "truncated_read"))
    check(counted >= 1, "truncated: counted")
    st, body = reload(p, port, served, good)
    check(st == 200 and label(port, ids[0])[0] == 200,
          "truncated: rename + SIGHUP with a good store serves again: %s %s" % (st, body))


def copied_over(p, port, log, served, other, other_ids):
    shutil.copyfile(other, served)  # what `cp other served` does: the same inode rewritten
    st, body = wait_status(port, 503)
    doc = json.loads(body) if st == 503 else {}
    check(st == 503 and doc.get("status") == "unavailable",
          "copied over: /readyz 503 unavailable: %s %s" % (st, body[:300]))
    st, body = call(port, "/v1/labels/%s?box=0,0,1,1" % other_ids[0])
    check(st == 503 and error_of(body).get("code") == "unavailable",
          "copied over: 503 naming the cause: %s %s" % (st, body[:200]))
    check(p.poll() is None, "copied over: lmapd alive")
    p.send_signal(signal.SIGHUP)  # the copy is complete and good: serve it
    st, body = wait_status(port, 200)
    check(st == 200, "copied over: SIGHUP serves the copied store")
    st, body = call(port, "/v1/info")
    check(st == 200 and json.loads(body)["record_count"] == len(other_ids), "copied over: its records")


def main():
    os.makedirs(TMP, exist_ok=True)
    good = os.path.join(TMP, "faults-good.lmap")
    synth(good, 300)
    other = os.path.join(TMP, "faults-other.lmap")
    synth(other, 200, seed=8)
    ids, other_ids = ids_of(good), ids_of(other)
    served = os.path.join(TMP, "faults-served.lmap")
    shutil.copyfile(good, served)
    p, port, log = start_daemon(served, "--threads", "2")
    try:
        damaged_record(p, port, log, served, good, ids)
        poisoned_chunk(p, port, log, served, ids)
        reload(p, port, served, good)
        truncated(p, port, log, served, good, ids)
        copied_over(p, port, log, served, other, other_ids)
        check(stop_daemon(p) == 0, "clean stop")
    finally:
        if p.poll() is None:
            p.kill()
    return summary()


if __name__ == "__main__":
    sys.exit(main())
