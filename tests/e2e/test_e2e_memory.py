#!/usr/bin/python3
"""End-to-end: memory after large answers (issue 10, item 1).

The real lmapd on a loopback port; its resident memory read from
/proc/PID/status before, during and after large answers:
- a batch whose answer would exceed the cap (4,096 queries of output_size
  64: 268 GB of JSON at most) is refused with 413 at once, naming the size,
  the cap and the flag, and the process does not grow (it used to grow by
  275 MB per such request before refusing);
- large answers (a 61 MB GET of output_size 64, 4,096-query JSON and .npy
  batches) from four clients at once are answered in full, and once they
  are done the process returns to its baseline (a generous margin, no
  timing: it is polled for a bounded time);
- a single GET whose answer cannot fit (5,000 classes, output_size 64,
  dense: up to 327 MB) is refused, its sparse form is served;
- clients that ask for large answers and never read them hold at most
  --max-answer-memory: past it their requests get 503 `unavailable` with
  Retry-After, naming the flag, while small answers go on; once they close,
  large answers are served again and the memory comes back.
Every process is stopped by its PID."""
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from e2e_common import LMAP, LMAPD, TMP, check, start_daemon, stop_daemon, summary

MiB = 1 << 20
CAP = 256 * MiB  # lmapd's default --max-answer


def under_tsan():
    """True when lmapd is built with ThreadSanitizer (tests/tsan.sh): its
    shadow memory and allocator make RSS a measure of TSan, not of lmapd,
    so the RSS bounds are checked by the plain and ASan runs only; the
    behaviour (413s, 503s, answers, metrics) is checked under TSan too."""
    out = subprocess.run(["ldd", LMAPD], capture_output=True, text=True).stdout
    return "libtsan" in out


TSAN = under_tsan()


def check_rss(cond, what):
    if TSAN:
        print("NOTE (ThreadSanitizer build, RSS not checked): %s" % what)
    else:
        check(cond, what)


def rss(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no VmRSS for %d" % pid)


def call(port, path, body=None, accept=None):
    headers = {"Accept": accept} if accept else {}
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=body,
                                 method="POST" if body else "GET", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def synth(path, images, *extra):
    subprocess.run([LMAP, "synth", "-o", path, "--images", str(images), "--seed", "3",
                    "--force", "--no-progress", *extra], check=True, capture_output=True)


def settle(pid, limit, rounds=100):
    """Polls the resident size until it is under `limit` (at most `rounds`
    tenths of a second); returns the last reading."""
    now = rss(pid)
    for _ in range(rounds):
        if now <= limit:
            break
        time.sleep(0.1)
        now = rss(pid)
    return now


def status_line(s):
    """The status code and headers at the head of what `s` has received."""
    s.settimeout(10)
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 65536:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    lines = head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in
                   (l.partition(":") for l in lines[1:]))
    return int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else None, headers


def metric(port, name):
    st, body = call(port, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def non_readers(store, ids):
    """Eight clients ask for 61 MB answers and read nothing. With a budget
    of 150 MB two answers wait in lmapd, the other six are refused with
    503; the process stays within the budget plus the answers being built;
    small answers go on; after the clients close, all comes back."""
    budget = 150000000
    p, port, _ = start_daemon(store, "--threads", "2", "--max-answer", str(64 * MiB),
                              "--max-answer-memory", str(budget))
    held = []
    try:
        for i in ids[:20]:
            call(port, "/v1/labels/%s?box=0,0,1,1&format=sparse" % i)
        base = rss(p.pid)
        peak = base
        for k in range(8):
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /v1/labels/%s?box=0,0,1,1&output_size=64 HTTP/1.1\r\nHost: x\r\n\r\n"
                      % ids[k].encode())
            held.append(s)
            time.sleep(0.3)  # each answer is built before the next request
            peak = max(peak, rss(p.pid))
        answers = [status_line(s) for s in held]
        codes = sorted(st for st, _ in answers)
        check(codes == [200] * 2 + [503] * 6,
              "8 clients that do not read, budget %d: two 61 MB answers wait, six 503 (%s)"
              % (budget, codes))
        refused = [h for st, h in answers if st == 503]
        check(all(h.get("retry-after") == "1" for h in refused), "the 503s carry Retry-After: 1")
        st, body = call(port, "/v1/labels/%s?box=0,0,1,1&output_size=64" % ids[9])
        err = json.loads(body).get("error", {}) if st == 503 else {}
        msg = err.get("message", "")
        check(st == 503 and err.get("code") == "unavailable" and "--max-answer-memory" in msg
              and str(budget) in msg,
              "a large answer while the budget is full: 503 naming the flag (%s %s)" % (st, body[:300]))
        st, body = call(port, "/v1/labels/%s?box=0,0,1,1&format=sparse" % ids[9])
        check(st == 200, "small answers are served meanwhile (%s)" % st)
        waiting = metric(port, "lmap_answer_bytes_waiting")
        check(waiting is not None and 2 * 60e6 < waiting <= budget,
              "/metrics: lmap_answer_bytes_waiting %s (two 61 MB answers)" % waiting)
        over, limit = metric(port, "lmap_answers_over_budget_total"), metric(port, "lmap_answer_memory_limit_bytes")
        check(over == 7 and limit == budget, "/metrics: 7 over the budget (%s), the budget (%s)" % (over, limit))
        # The 8 held and the one asking; the connections of the calls
        # before may still be closing (slowly under ASan): polled, bounded.
        for _ in range(50):
            conns = metric(port, "lmap_connections")
            if conns == 9:
                break
            time.sleep(0.05)
        check(conns == 9, "/metrics: 9 connections, 8 held and the one asking (%s)" % conns)
        print("8 non-reading clients of 61 MB answers, budget %.0f MB: peak RSS %.1f MB over a "
              "baseline of %.1f MB" % (budget / 1e6, (peak - base) / 1e6, base / 1e6))
        # Held: the budget; being built or refused: one 61 MB buffer per
        # thread at most; plus the margin of the other checks.
        check_rss(peak - base <= budget + 2 * 64 * MiB + 48 * MiB,
              "RSS bounded by the budget: grew %.1f MB" % ((peak - base) / 1e6))
        for s in held:
            s.close()
        held = []
        after = settle(p.pid, base + 48 * MiB)
        check_rss(after <= base + 48 * MiB, "memory returns once they close: %.1f MB over the baseline"
              % ((after - base) / 1e6))
        check(metric(port, "lmap_answer_bytes_waiting") == 0, "and nothing waits any more")
        st, body = call(port, "/v1/labels/%s?box=0,0,1,1&output_size=64" % ids[9])
        check(st == 200 and len(body) > 60e6, "then large answers are served again (%s)" % st)
    finally:
        for s in held:
            s.close()
        check(stop_daemon(p) == 0, "clean stop (non-readers daemon)")


def main():
    # Under AddressSanitizer (CI's sanitizer run) freed blocks wait in a
    # 256 MB quarantine instead of going back to the system, which is what
    # this test measures; without the quarantine large blocks are unmapped
    # on free as glibc's are. (No effect on a build without ASan.)
    opts = os.environ.get("ASAN_OPTIONS", "")
    os.environ["ASAN_OPTIONS"] = (opts + ":" if opts else "") + \
        "quarantine_size_mb=0:thread_local_quarantine_size_kb=0"
    os.makedirs(TMP, exist_ok=True)
    store = os.path.join(TMP, "memory.lmap")
    synth(store, 300)
    ids = subprocess.run([LMAP, "ids", store], capture_output=True, text=True,
                         check=True).stdout.split()
    p, port, log = start_daemon(store, "--threads", "2")
    try:
        for i in ids[:20]:  # warm up both workers
            call(port, "/v1/labels/%s?box=0,0,1,1&format=sparse" % i)
        base = rss(p.pid)
        print("baseline RSS %.1f MB" % (base / 1e6))

        # The trial's reproduction: refused before anything grows.
        huge = json.dumps({"queries": [{"id": ids[k % len(ids)], "box": [0, 0, 1, 1]}
                                       for k in range(4096)], "output_size": 64}).encode()
        for attempt in range(2):
            st, body = call(port, "/v1/labels", huge)
            err = json.loads(body).get("error", {}) if st == 413 else {}
            msg = err.get("message", "")
            check(st == 413 and err.get("code") == "too_large" and str(CAP) in msg
                  and "--max-answer" in msg and "4096" in msg and err.get("field") == "queries",
                  "batch over the cap: 413 naming size, cap and flag (%s %s)" % (st, body[:300]))
            grown = rss(p.pid) - base
            check_rss(grown < 16 * MiB,
                  "refusing an oversized batch does not grow the process (grew %.1f MB)" % (grown / 1e6))
        st, body = call(port, "/v1/labels", huge, accept="application/x-npy")
        check(st == 413 and b"npy" in body, "the .npy form is refused too: %s %s" % (st, body[:200]))

        # Large answers, four clients at once.
        dense1 = json.dumps({"queries": [{"id": ids[k % len(ids)], "box": [0, 0, 1, 1]}
                                         for k in range(4096)]}).encode()
        npy2 = json.dumps({"queries": [{"id": ids[k % len(ids)], "box": [0.1, 0, 1, 0.9]}
                                       for k in range(4096)], "output_size": 2}).encode()
        sizes, bad, peak = [], [], [0]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss(p.pid))
                time.sleep(0.02)

        def client(k):
            for n in range(3):
                kind = (k + n) % 3
                if kind == 0:
                    st, body = call(port, "/v1/labels/%s?box=0,0,1,1&output_size=64" % ids[k + n])
                elif kind == 1:
                    st, body = call(port, "/v1/labels", dense1)
                else:
                    st, body = call(port, "/v1/labels", npy2, accept="application/x-npy")
                (sizes if st == 200 else bad).append((st, len(body)))

        sampler = threading.Thread(target=sample)
        sampler.start()
        clients = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        done.set()
        sampler.join()
        check(not bad and len(sizes) == 12, "12 large answers served: bad %s" % bad[:3])
        check(any(n > 60e6 for _, n in sizes), "the output_size 64 GET is over 60 MB")
        print("peak RSS during 4 x large answers: %.1f MB (answers up to %.1f MB)"
              % (peak[0] / 1e6, max(n for _, n in sizes) / 1e6))
        # Back to the baseline: the README promises at most 64 MiB beyond
        # the store; allow 48 MiB over the warmed-up baseline.
        after = settle(p.pid, base + 48 * MiB)
        print("RSS after: %.1f MB (baseline %.1f MB)" % (after / 1e6, base / 1e6))
        check_rss(after <= base + 48 * MiB,
              "memory returns after large answers: %.1f MB, baseline %.1f MB"
              % (after / 1e6, base / 1e6))
        check(stop_daemon(p) == 0, "clean stop")

        # A single GET over the cap: 5,000 classes at output_size 64.
        wide = os.path.join(TMP, "memory-wide.lmap")
        synth(wide, 20, "--classes", "5000")
        wide_ids = subprocess.run([LMAP, "ids", wide], capture_output=True, text=True,
                                  check=True).stdout.split()
        p, port, log = start_daemon(wide)
        base = rss(p.pid)
        st, body = call(port, "/v1/labels/%s?box=0,0,1,1&output_size=64" % wide_ids[0])
        err = json.loads(body).get("error", {}) if st == 413 else {}
        check(st == 413 and err.get("field") == "output_size" and str(CAP) in err.get("message", ""),
              "one GET over the cap: 413 (%s %s)" % (st, body[:300]))
        check_rss(rss(p.pid) - base < 16 * MiB, "refused without growing")
        st, body = call(port, "/v1/labels/%s?box=0,0,1,1&output_size=64&format=sparse" % wide_ids[0])
        check(st == 200 and len(json.loads(body)["classes"]) == 64 * 64,
              "its sparse form is served (%s, %d bytes)" % (st, len(body)))
        st, body = call(port, "/v1/maps/%s" % wide_ids[0])
        check(st == 200, "a whole map is served")
        check(stop_daemon(p) == 0, "clean stop")

        non_readers(store, ids)

        # --max-answer sets the cap (wired in lmapd's main; checked when
        # this build's lmapd has the flag).
        usage = subprocess.run([LMAPD, "--help"], capture_output=True, text=True).stdout
        if "--max-answer" not in usage:
            print("SKIP: this lmapd has no --max-answer flag")
        else:
            cap = 4000000  # an output_size 16 dense item is up to 4.1 MB
            p, port, log = start_daemon(store, "--max-answer", str(cap))
            st, body = call(port, "/v1/labels/%s?box=0,0,1,1&output_size=16" % ids[0])
            err = json.loads(body).get("error", {}) if st == 413 else {}
            check(st == 413 and str(cap) in err.get("message", ""),
                  "--max-answer %d: an item over it is refused (%s %s)" % (cap, st, body[:200]))
            st, body = call(port, "/v1/labels/%s?box=0,0,1,1&output_size=15" % ids[0])
            check(st == 200, "--max-answer %d: an item under it is served (%s)" % (cap, st))
            check(stop_daemon(p) == 0, "clean stop")
    finally:
        if p.poll() is None:
            p.kill()
    return summary()


if __name__ == "__main__":
    sys.exit(main())
