#!/usr/bin/python3
"""Soak: the real lmapd under mixed valid and hostile traffic with reloads,
its resources sampled before, during and after. Standard library only.

    soak.py SECONDS LMAPD LMAP [--threads N] [--tmp DIR]

Setup: two stores made by `lmap synth` with one seed (the second has more
images, so every id of the first is valid on both), the first installed by
rename as the served path, lmapd started on 127.0.0.1:0.

Warm-up (3 s): every kind of valid request below, and one reload, so that
what lmapd creates once (worker buffers at their usual sizes, thread pools,
the first reload's state, the store's pages) exists before the baseline. Baseline: VmRSS, open descriptors, threads, and the
store files lmapd holds (mapped or open), sampled after 1 s of quiet.

Traffic (SECONDS): client threads send a weighted mix of valid requests
(GET dense / sparse / G > 1 / flipped / relabel boxes / maps, POST batches
as JSON and as .npy, info, metrics) and hostile ones (unknown ids, bad ids,
bad boxes, malformed JSON, unknown keys, a body over --max-body, framing
that must be refused, a wrong method, a chunked POST, too many query
parameters, NUL bytes, garbage request lines, connections closed mid-request
and mid-answer, slow senders, idle connections, answers of tens of MiB and
answers over the answer cap). A reloader installs the other store by
rename + SIGHUP every 3 s, and once more as the traffic stops, so that the
replaced store must be let go by workers that see no further request.

After: the traffic stops, every connection the driver opened is closed, and
the samples are taken again until they are back within the margins, for at
most SETTLE_S seconds. Fails (exit 1) if lmapd died, if any valid request got
anything but its 200 with a body that parses and has the right shape, if
any hostile request got a 5xx, if a sample is not back to its baseline, or
if lmapd does not exit 0 on SIGTERM. Prints a summary table.

Margins, and why:
- threads: exactly the baseline (lmapd's threads are a fixed pool; anything
  it creates lazily was created during the warm-up).
- open descriptors: at most the baseline once settled (every connection of
  the driver is closed by then, and the replaced store's descriptor must be
  closed once no worker uses it). A connection that lmapd keeps after its
  client closed it counts, until lmapd's own timeout closes it: SETTLE_S
  (15 s) is longer than the default --header-timeout (10 s) of a connection
  that has not sent its head, shorter than the idle timeout (60 s).
- replaced stores: none held, mapped or open ("(deleted)" in /proc/PID/maps
  or fd), after the settle, although the last reload came with no request
  after it.
- VmRSS: the baseline + RSS_MARGIN_MB (24 MiB). The baseline already holds
  the served store's touched pages and each worker's buffers at their
  usual size; what may remain is allocator slack (glibc keeps freed chunks
  below its mmap threshold in each worker's arena) and the other store's
  pages (it has 200 more records, 0.4 MiB). A server that keeps a large
  answer's buffer keeps tens to hundreds of MiB (the huge answers here are
  61 MiB of JSON, and a refused one may grow to the 256 MiB cap first), so
  the margin separates the two by an order of magnitude.
"""
import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

RSS_MARGIN_MB = 24
SETTLE_S = 15
GRACE_S = 10             # lmapd --grace: the drain has no request left to wait for
WARMUP_S = 3
RELOAD_EVERY_S = 3
FAST_CLIENTS = 4         # valid and quickly answered hostile requests
SLOW_CLIENTS = 2         # idle, trickling, unanswered connections
HUGE_EVERY_S = 4         # one answer of tens of MiB (or over the cap) this often
TIMEOUT_S = 30           # a request's socket timeout (bounded wait)
MAX_REQUESTS = 2_000_000  # a bound on the run, whatever SECONDS says
HOST = "127.0.0.1"


# --- lmapd's resources ------------------------------------------------------

def sample(pid, store_dir):
    """VmRSS (KiB), threads, open descriptors and store files held, from
    /proc. Store files: distinct files under store_dir that lmapd has mapped
    or open (a replaced store shows as "(deleted)")."""
    st = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "Threads"):
                st[k] = int(v.split()[0])
    fds = os.listdir("/proc/%d/fd" % pid)
    held = set()
    sockets = 0
    for fd in fds:
        try:
            t = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue  # closed meanwhile
        if t.startswith(store_dir):
            held.add(t)
        sockets += t.startswith("socket:")
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith(store_dir):
                held.add(parts[5].strip())
    return {"rss_kb": st["VmRSS"], "anon_kb": st.get("RssAnon", 0),
            "file_kb": st.get("RssFile", 0), "threads": st["Threads"],
            "fds": len(fds), "sockets": sockets, "stores": len(held),
            "stale": sum(1 for h in held if h.endswith("(deleted)")), "held": sorted(held)}


TCP_STATES = {"01": "ESTABLISHED", "06": "TIME_WAIT", "08": "CLOSE_WAIT", "0A": "LISTEN"}


def connections(port):
    """lmapd's side of its TCP connections on port, by state (from
    /proc/net/tcp), the listener left out."""
    out = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if int(parts[1].split(":")[1], 16) == port and parts[3] != "0A":
                st = TCP_STATES.get(parts[3], parts[3])
                out[st] = out.get(st, 0) + 1
    return out


def within(s, base):
    """The list of samples not back to the baseline (empty: all are)."""
    bad = []
    if s["threads"] != base["threads"]:
        bad.append("threads %d (baseline %d)" % (s["threads"], base["threads"]))
    if s["fds"] > base["fds"]:
        bad.append("descriptors %d (baseline %d)" % (s["fds"], base["fds"]))
    if s["stale"]:
        bad.append("%d replaced store file(s) still held: %s"
                   % (s["stale"], [h for h in s["held"] if h.endswith("(deleted)")]))
    if s["rss_kb"] > base["rss_kb"] + RSS_MARGIN_MB * 1024:
        bad.append("VmRSS %.1f MiB (baseline %.1f MiB + margin %d MiB)"
                   % (s["rss_kb"] / 1024, base["rss_kb"] / 1024, RSS_MARGIN_MB))
    return bad


# --- results ----------------------------------------------------------------

started = threading.local()  # .t: when this thread's current request began


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.by = {}         # (kind, valid, outcome) -> count
        self.slowest = {}    # (kind, valid, outcome) -> longest seconds
        self.labels = 0
        self.wrong = []      # valid requests with a wrong answer
        self.fivexx = []     # hostile requests answered 5xx
        self.total = 0

    def add(self, kind, valid, outcome, labels=0, problem=None):
        took = time.monotonic() - getattr(started, "t", time.monotonic())
        with self.lock:
            key = (kind, valid, str(outcome))
            self.by[key] = self.by.get(key, 0) + 1
            self.slowest[key] = max(self.slowest.get(key, 0), took)
            self.labels += labels
            self.total += 1
            if problem and valid and len(self.wrong) < 50:
                self.wrong.append("%s: %s" % (kind, problem))
            if problem and not valid and len(self.fivexx) < 50:
                self.fivexx.append("%s: %s" % (kind, problem))


# --- requests ---------------------------------------------------------------

class Ctx:
    def __init__(self, port, ids, classes, tally, stop):
        self.port, self.ids, self.classes = port, ids, classes
        self.tally, self.stop = tally, stop


def rbox(r):
    """A random valid xyxy box, at least 0.01 wide and high."""
    x0, y0 = r.uniform(0, 0.95), r.uniform(0, 0.95)
    return [round(x0, 4), round(y0, 4), round(r.uniform(x0 + 0.02, 1), 4),
            round(r.uniform(y0 + 0.02, 1), 4)]


def check_item(item, fmt, g, classes, softmax=True):
    """None if a JSON item has the documented shape, else the problem."""
    cells = g * g
    if fmt == "dense":
        p = item.get("probs")
        rows = [p] if g == 1 else p
        if not isinstance(rows, list) or len(rows) != cells:
            return "dense: %s cells, want %d" % (len(rows) if isinstance(rows, list) else None, cells)
        for row in rows:
            if not isinstance(row, list) or len(row) != classes:
                return "dense: a row of %s, want %d" % (len(row) if isinstance(row, list) else None, classes)
            if softmax and abs(sum(row) - 1) > 1e-3:
                return "dense: probabilities sum to %g" % sum(row)
    else:
        key = "probs" if softmax else "logits"
        c, p = item.get("classes"), item.get(key)
        if g > 1:
            if not (isinstance(c, list) and isinstance(p, list) and len(c) == cells == len(p)):
                return "sparse: cells"
            pairs = zip(c, p)
        else:
            pairs = [(c, p)]
        for cc, pp in pairs:
            if not (isinstance(cc, list) and isinstance(pp, list) and len(cc) == len(pp)):
                return "sparse: classes and %s differ" % key
            if any(not (0 <= x < classes) for x in cc):
                return "sparse: a class out of range"
        if "rest" not in item:
            return "sparse: no rest"
    return None


def request(ctx, conn, method, path, body=None, headers=None):
    """One request on a kept-alive connection (reconnecting if needed):
    (status, body) or (exception text, None)."""
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        if r.getheader("Connection", "").lower() == "close":
            conn.close()
        return r.status, data
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        return type(e).__name__, None


def valid_get(ctx, conn, r):
    i = r.choice(ctx.ids)
    fmt = r.choice(("dense", "sparse", "sparse"))
    g = r.choice((1, 1, 1, 2, 3, 4))
    q = "box=%s&format=%s&output_size=%d" % (",".join(map(str, rbox(r))), fmt, g)
    kind = "get %s G=%d" % (fmt, g) if g > 1 else "get " + fmt
    softmax = True
    if r.random() < 0.2:
        q += "&flip=true"
    if r.random() < 0.1:
        # The official tuple: top, left, height, width.
        t, l = r.uniform(0, 0.8), r.uniform(0, 0.8)
        box = [round(t, 4), round(l, 4), round(r.uniform(0.05, 1 - t), 4),
               round(r.uniform(0.05, 1 - l), 4)]
        q = "box=%s&format=%s&output_size=%d&box_format=relabel" % (
            ",".join(map(str, box)), fmt, g)
    if fmt == "sparse" and r.random() < 0.1:
        q += "&softmax=false"
        softmax = False
    st, body = request(ctx, conn, "GET", "/v1/labels/%s?%s" % (i, q))
    problem = None
    if st != 200:
        problem = "status %s for %s: %s" % (st, q, body[:200] if body else None)
    else:
        try:
            problem = check_item(json.loads(body), fmt, g, ctx.classes, softmax)
        except ValueError as e:
            problem = "body does not parse: %s" % e
    ctx.tally.add(kind, True, st, 1 if st == 200 else 0, problem)


def valid_post(ctx, conn, r, npy):
    n = r.choice((1, 8, 32, 64, 128))
    fmt = "dense" if npy else r.choice(("dense", "sparse"))
    doc = {"queries": [{"id": r.choice(ctx.ids), "box": rbox(r), "flip": r.random() < 0.5}
                       for _ in range(n)], "format": fmt}
    headers = {"Content-Type": "application/json"}
    if npy:
        headers["Accept"] = "application/x-npy"
    kind = "post npy" if npy else "post json " + fmt
    st, body = request(ctx, conn, "POST", "/v1/labels", json.dumps(doc).encode(), headers)
    problem = None
    if st != 200:
        problem = "status %s: %s" % (st, body[:200] if body else None)
    elif npy:
        problem = check_npy(body, n, ctx.classes)
    else:
        try:
            res = json.loads(body)["results"]
            if len(res) != n:
                problem = "%d results for %d queries" % (len(res), n)
            else:
                for it in res:
                    problem = check_item(it, fmt, 1, ctx.classes)
                    if problem:
                        break
        except (ValueError, KeyError, TypeError) as e:
            problem = "body does not parse: %r" % e
    ctx.tally.add(kind, True, st, n if st == 200 else 0, problem)


def check_npy(body, n, classes):
    if body[:6] != b"\x93NUMPY":
        return "not an .npy"
    hlen = struct.unpack("<H", body[8:10])[0]
    head = body[10:10 + hlen].decode("latin1")
    want = "(%d, %d)" % (n, classes)
    if want not in head.replace(",)", ")") or "'<f4'" not in head:
        return "npy header %r, want shape %s" % (head.strip(), want)
    data = body[10 + hlen:]
    if len(data) != n * classes * 4:
        return "npy data of %d bytes, want %d" % (len(data), n * classes * 4)
    vals = struct.unpack("<%df" % (n * classes), data)
    for k in range(n):
        s = sum(vals[k * classes:(k + 1) * classes])
        if abs(s - 1) > 1e-3:
            return "npy row %d sums to %g" % (k, s)
    return None


def valid_other(ctx, conn, r):
    path = r.choice(("/v1/info", "/metrics", "/readyz", "/livez", "/v1/maps/"))
    if path == "/v1/maps/":
        path += r.choice(ctx.ids)
    st, body = request(ctx, conn, "GET", path)
    problem = None
    if st != 200:
        problem = "status %s" % st
    elif path != "/metrics":
        try:
            json.loads(body)
        except ValueError as e:
            problem = "body does not parse: %s" % e
    kind = "get maps" if path.startswith("/v1/maps/") else "get " + path
    ctx.tally.add(kind, True, st, 0, problem)


def hostile_http(ctx, conn, r):
    """Hostile requests that http.client can send: any 4xx is fine (the
    summary shows which), a 5xx is a failure."""
    i = r.choice(ctx.ids)
    cases = [
        ("unknown id", "GET", "/v1/labels/n99999999_1?box=0,0,1,1", None, {}),
        ("bad id", "GET", "/v1/labels/..%2f..%2fetc?box=0,0,1,1", None, {}),
        ("bad id", "GET", "/v1/labels/" + "a" * 300 + "?box=0,0,1,1", None, {}),
        ("bad box", "GET", "/v1/labels/%s?box=0.9,0.1,0.2,0.8" % i, None, {}),
        ("bad box", "GET", "/v1/labels/%s?box=0,0,1" % i, None, {}),
        ("bad box", "GET", "/v1/labels/%s?box=nan,0,1,1" % i, None, {}),
        ("bad box", "GET", "/v1/labels/%s?box=a,b,c,d" % i, None, {}),
        ("bad option", "GET", "/v1/labels/%s?box=0,0,1,1&output_size=0" % i, None, {}),
        ("bad option", "GET", "/v1/labels/%s?box=0,0,1,1&format=png" % i, None, {}),
        ("bad json", "POST", "/v1/labels", b'{"queries": [{"id": "x", "box": [0,0,1', {}),
        ("bad json", "POST", "/v1/labels", b'\xff\xfe{}', {}),
        ("bad json", "POST", "/v1/labels", b'{"queries": [], "queries": []}', {}),
        ("bad json", "POST", "/v1/labels",
         json.dumps({"queries": [{"id": i, "box": [0, 0, 1, 1]}], "bogus": 1}).encode(), {}),
        ("bad json", "POST", "/v1/labels", b'[' * 5000 + b']' * 5000, {}),
        ("unknown id", "POST", "/v1/labels",
         json.dumps({"queries": [{"id": "n99999999_%d" % k, "box": [0, 0, 1, 1]}
                                 for k in range(20)]}).encode(), {}),
        ("wrong method", "DELETE", "/v1/labels", None, {}),
        ("unknown route", "GET", "/v2/everything", None, {}),
        ("nul", "GET", "/v1/labels/%s%%00junk?box=0,0,1,1" % i, None, {}),
        ("nul", "GET", "/v1/labels/%s?box=0,0,1,1%%00junk" % i, None, {}),
    ]
    kind, method, path, body, headers = r.choice(cases)
    st, _ = request(ctx, conn, method, path, body, headers)
    problem = "status %s" % st if isinstance(st, int) and st >= 500 else None
    ctx.tally.add(kind, False, st, 0, problem)


def raw(ctx, payload, read=True, wait=2.0, linger0=False, pause=0.0):
    """Sends raw bytes on a fresh connection; returns the status line's code
    (or "closed" / "no answer" / the error), closing the socket."""
    s = socket.create_connection((HOST, ctx.port), timeout=wait)
    try:
        if linger0:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if payload:
            s.sendall(payload)
        if pause:
            time.sleep(pause)
        if not read:
            return "closed"
        try:
            head = s.recv(64)
        except socket.timeout:
            return "no answer"
        except OSError as e:
            return type(e).__name__
        if not head:
            return "closed"
        parts = head.split(b" ", 2)
        try:
            return int(parts[1])
        except (IndexError, ValueError):
            return "garbage"
    finally:
        s.close()


def hostile_fast(ctx, r):
    """Hostile requests on raw sockets that are answered (or dropped) at
    once: a body over --max-body announced by its headers, ambiguous
    framing, a NUL in a header, connections closed mid-request and
    mid-answer (half of them with a reset)."""
    i = r.choice(ctx.ids)
    get = ("GET /v1/labels/%s?box=0,0,1,1 HTTP/1.1\r\nHost: x\r\n\r\n" % i).encode()
    choice = r.randrange(6)
    if choice == 0:
        kind, st = "body > max-body", raw(ctx, (
            "POST /v1/labels HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: %d\r\n\r\n" % (9 << 20)).encode())
    elif choice == 1:
        kind, st = "framing", raw(ctx, r.choice((
            b"POST /v1/labels HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}",
            b"POST /v1/labels HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            b"POST /v1/labels HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\n{}\r\n0\r\n\r\n")))
    elif choice == 2:
        kind, st = "closed mid-body", raw(ctx, (
            "POST /v1/labels HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
            '{"queries": [{"id": "%s", "bo' % i).encode(), read=False, linger0=r.random() < 0.5)
    elif choice == 3:
        kind, st = "closed mid-head", raw(ctx, get[:r.randrange(1, len(get) - 2)], read=False,
                                             linger0=r.random() < 0.5)
    elif choice == 4:
        # A 1 MB answer (G=8, dense), of which the first bytes are read
        # before a close (a reset half of the time).
        kind = "closed mid-answer"
        s = socket.create_connection((HOST, ctx.port), timeout=TIMEOUT_S)
        try:
            if r.random() < 0.5:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.sendall(("GET /v1/labels/%s?box=0,0,1,1&output_size=8 HTTP/1.1\r\n"
                       "Host: x\r\n\r\n" % i).encode())
            try:
                head = s.recv(4096)
                st = int(head.split(b" ", 2)[1]) if head else "closed"
            except (OSError, IndexError, ValueError) as e:
                st = type(e).__name__
        finally:
            s.close()
    else:
        kind, st = "nul header", raw(ctx, (
            "GET /v1/labels/%s?box=0,0,1,1 HTTP/1.1\r\nHost: x\r\nX-Junk: a\x00b\r\n\r\n"
            % i).encode())
    problem = "status %s" % st if isinstance(st, int) and st >= 500 else None
    ctx.tally.add(kind, False, st, 0, problem)


def hostile_slow(ctx, r):
    """Connections that take time: garbage request lines and too many query
    parameters (lmapd before its fix answers neither: "no answer" after the
    2 s the driver waits), an HTTP version it does not speak, idle
    connections held 1-4 s, and a valid request trickled over about 2 s
    (which must get its 200)."""
    i = r.choice(ctx.ids)
    choice = r.randrange(5)
    if choice == 0:
        kind, st = "garbage line", raw(ctx, r.choice((
            b"GARBAGE\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(40),
            b"GET /v1/info HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
            b"GET /v1/l\x00abels HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(200) + b"\r\n\r\n")))
    elif choice == 1:
        kind, st = "http version", raw(ctx, b"GET /v1/info HTTP/9.9\r\nHost: x\r\n\r\n")
    elif choice == 2:
        kind, st = "many params", raw(ctx, ("GET /v1/labels/%s?box=0,0,1,1&%s HTTP/1.1\r\n"
                                            "Host: x\r\n\r\n" % (i, "&".join(
                                                "p%d=1" % k for k in range(400)))).encode())
    elif choice == 3:
        kind, st = "idle connection", raw(ctx, b"", read=False, pause=r.uniform(1, 4))
    else:
        kind = "slow sender"
        get = ("GET /v1/labels/%s?box=0,0,1,1 HTTP/1.1\r\nHost: x\r\n\r\n" % i).encode()
        s = socket.create_connection((HOST, ctx.port), timeout=TIMEOUT_S)
        try:
            step = max(1, len(get) // 20)
            for k in range(0, len(get), step):
                if ctx.stop.is_set():
                    break
                s.sendall(get[k:k + step])
                time.sleep(0.1)
            if ctx.stop.is_set():
                st = "stopped"
            else:
                head = s.recv(64)
                st = int(head.split(b" ", 2)[1]) if head else "closed"
        except (OSError, IndexError, ValueError) as e:
            st = type(e).__name__
        finally:
            s.close()
        ctx.tally.add(kind, True, st, 1 if st == 200 else 0,
                      None if st in (200, "stopped") else "status %s" % st)
        return
    problem = "status %s" % st if isinstance(st, int) and st >= 500 else None
    if kind == "http version" and st == 505:
        problem = None  # the status RFC 9110 gives an unsupported version
    ctx.tally.add(kind, False, st, 0, problem)


def huge(ctx, r):
    """Answers of tens of MiB (a GET with output_size=64: 61 MiB of JSON)
    and batches whose answer exceeds the 256 MiB cap (refused with 413).
    Either a 200 that parses or a 4xx is right."""
    i = r.choice(ctx.ids)
    conn = http.client.HTTPConnection(HOST, ctx.port, timeout=120)
    if r.random() < 0.5:
        kind = "huge answer (GET G=64)"
        st, body = request(ctx, conn, "GET", "/v1/labels/%s?box=0,0,1,1&output_size=64" % i)
    else:
        kind = "answer over cap (POST 8xG=64)"
        doc = {"queries": [{"id": r.choice(ctx.ids), "box": [0, 0, 1, 1]} for _ in range(8)],
               "output_size": 64}
        st, body = request(ctx, conn, "POST", "/v1/labels", json.dumps(doc).encode())
    conn.close()
    problem = None
    if isinstance(st, int) and st >= 500:
        problem = "status %s" % st
    elif st == 200:
        try:
            json.loads(body)
        except ValueError as e:
            problem = "200 whose body does not parse: %s" % e
    ctx.tally.add(kind, False, st, 0, problem)


def fast_client(ctx, seed, deadline, hostile=True):
    """Valid requests (70%) and quickly answered hostile ones (none unless
    hostile), on a kept-alive connection renewed now and then."""
    r = random.Random(seed)
    conn = http.client.HTTPConnection(HOST, ctx.port, timeout=TIMEOUT_S)
    while not ctx.stop.is_set() and time.monotonic() < deadline \
            and ctx.tally.total < MAX_REQUESTS:
        if r.random() < 0.05:
            conn.close()
            conn = http.client.HTTPConnection(HOST, ctx.port, timeout=TIMEOUT_S)
        x = r.random() if hostile else r.random() * 0.70
        started.t = time.monotonic()
        if x < 0.40:
            valid_get(ctx, conn, r)
        elif x < 0.55:
            valid_post(ctx, conn, r, npy=False)
        elif x < 0.65:
            valid_post(ctx, conn, r, npy=True)
        elif x < 0.70:
            valid_other(ctx, conn, r)
        elif x < 0.90:
            hostile_http(ctx, conn, r)
        else:
            hostile_fast(ctx, r)
    conn.close()


def slow_client(ctx, seed, deadline):
    r = random.Random(seed)
    while not ctx.stop.is_set() and time.monotonic() < deadline:
        started.t = time.monotonic()
        hostile_slow(ctx, r)


def huge_client(ctx, seed, deadline):
    """One huge answer every HUGE_EVERY_S."""
    r = random.Random(seed)
    while not ctx.stop.is_set() and time.monotonic() < deadline:
        t = started.t = time.monotonic()
        huge(ctx, r)
        ctx.stop.wait(max(0.0, HUGE_EVERY_S - (time.monotonic() - t)))


def traffic(ctx, seconds, seed, hostile=True):
    """Starts the clients: FAST_CLIENTS fast ones and, if hostile,
    SLOW_CLIENTS slow ones and the huge one (else valid requests only).
    Returns their threads."""
    deadline = time.monotonic() + seconds
    if not hostile:
        ts = [threading.Thread(target=fast_client, args=(ctx, seed + k, deadline, False))
              for k in range(FAST_CLIENTS)]
    else:
        roles = [fast_client] * FAST_CLIENTS + [slow_client] * SLOW_CLIENTS + [huge_client]
        ts = [threading.Thread(target=f, args=(ctx, seed + k, deadline))
              for k, f in enumerate(roles)]
    for t in ts:
        t.start()
    return ts


def synth(lmap, path, images):
    subprocess.run([lmap, "synth", "-o", path, "--images", str(images), "--seed", "11",
                    "--level", "1", "--force", "--no-progress"], check=True,
                   capture_output=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("seconds", type=float)
    ap.add_argument("lmapd")
    ap.add_argument("lmap")
    ap.add_argument("--threads", type=int, default=3)
    ap.add_argument("--tmp", default=None)
    a = ap.parse_args()

    tmp = a.tmp or tempfile.mkdtemp(prefix="lmap-soak-")
    os.makedirs(tmp, exist_ok=True)
    tmp = os.path.realpath(tmp)
    stores = os.path.join(tmp, "stores")
    shutil.rmtree(stores, ignore_errors=True)
    os.makedirs(stores)
    src = [os.path.join(tmp, "a.lmap"), os.path.join(tmp, "b.lmap")]
    t0 = time.monotonic()
    synth(a.lmap, src[0], 2000)
    synth(a.lmap, src[1], 2200)
    ids = subprocess.run([a.lmap, "ids", src[0]], capture_output=True, text=True,
                         check=True).stdout.split()
    ids_b = set(subprocess.run([a.lmap, "ids", src[1]], capture_output=True, text=True,
                               check=True).stdout.split())
    if not set(ids) <= ids_b:
        raise SystemExit("soak: the two stores do not share their ids")
    print("soak: stores made in %.1f s (%d and %d records, %.1f MiB each)"
          % (time.monotonic() - t0, len(ids), len(ids_b), os.path.getsize(src[0]) / 2**20))
    served = os.path.join(stores, "served.lmap")
    installed = [0]

    def install(k):
        nxt = os.path.join(stores, "next.lmap")
        shutil.copyfile(src[k], nxt)
        os.rename(nxt, served)
        installed[0] = k

    install(0)
    log_path = os.path.join(tmp, "lmapd.log")
    log = open(log_path, "w")
    p = subprocess.Popen([a.lmapd, "--store", served, "--listen", HOST + ":0",
                          "--threads", str(a.threads), "--grace", str(GRACE_S)],
                         stderr=log, stdout=subprocess.DEVNULL)
    failures = []
    try:
        port = None
        for _ in range(500):
            time.sleep(0.02)
            with open(log_path) as f:
                for line in f:
                    if line.endswith("\n") and '"listening"' in line:
                        port = json.loads(line)["port"]
            if port or p.poll() is not None:
                break
        if not port:
            raise SystemExit("soak: lmapd did not start: " + open(log_path).read())
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        conn.request("GET", "/v1/info")
        classes = json.loads(conn.getresponse().read())["num_classes"]
        conn.close()

        reloads = [0]

        def reload():
            install(1 - installed[0])
            p.send_signal(signal.SIGHUP)
            reloads[0] += 1

        phases = {"setup": time.monotonic() - t0}
        t_warm = time.monotonic()
        # Warm-up: valid requests of every kind, and one reload. Hostile
        # ones are left out: some leave a connection lmapd keeps until a
        # timeout, which would inflate the baseline.
        warm = Tally()
        ctx = Ctx(port, ids, classes, warm, threading.Event())
        ts = traffic(ctx, WARMUP_S, 1000, hostile=False)
        time.sleep(0.5)
        reload()
        for t in ts:
            t.join()
        time.sleep(1)
        base = sample(p.pid, stores)
        phases["warm-up"] = time.monotonic() - t_warm

        # Traffic, a reload every RELOAD_EVERY_S, samples every second.
        tally = Tally()
        ctx = Ctx(port, ids, classes, tally, threading.Event())
        samples = []
        t_start = time.monotonic()
        ts = traffic(ctx, a.seconds, 1)
        next_reload = t_start + RELOAD_EVERY_S
        while any(t.is_alive() for t in ts):
            time.sleep(0.25)
            if p.poll() is not None:
                ctx.stop.set()
                break
            now = time.monotonic()
            if now >= next_reload and now < t_start + a.seconds - 0.5:
                reload()
                next_reload = now + RELOAD_EVERY_S
            if not samples or now - samples[-1][0] >= 1:
                samples.append((now, sample(p.pid, stores)))
            if now > t_start + a.seconds + 2 * TIMEOUT_S + 130:
                ctx.stop.set()  # bounded: no request outlives its timeout
        for t in ts:
            t.join()
        elapsed = time.monotonic() - t_start
        if p.poll() is not None:
            failures.append("lmapd died during the traffic (exit %s)" % p.returncode)
        else:
            # The last store change, with no request after it: workers that
            # stay idle must still let the replaced store go.
            reload()
            time.sleep(0.5)

        # Settle: back to the baseline within SETTLE_S, or a failure.
        after, bad = None, ["not sampled"]
        t_settle = time.monotonic()
        while p.poll() is None and time.monotonic() - t_settle < SETTLE_S:
            time.sleep(0.5)
            after = sample(p.pid, stores)
            bad = within(after, base)
            if not bad:
                break
        settled_in = time.monotonic() - t_settle
        phases["traffic"] = elapsed
        phases["settle"] = settled_in
        if p.poll() is not None:
            failures.append("lmapd died (exit %s)" % p.returncode)
        elif bad:
            failures.append("not back to the baseline after %d s: %s; lmapd's connections: %s"
                            % (SETTLE_S, "; ".join(bad), connections(port) or "none"))
        if p.poll() is None:
            conn = http.client.HTTPConnection(HOST, port, timeout=10)
            st, body = request(ctx, conn, "GET", "/v1/labels/%s?box=0,0,1,1" % ids[0])
            conn.close()
            if st != 200:
                failures.append("a request after the soak got %s" % st)
        failures += ["wrong answer to a valid request: " + w for w in tally.wrong]
        failures += ["hostile request answered 5xx: " + w for w in tally.fivexx]
        failures += ["warm-up: " + w for w in warm.wrong + warm.fivexx]

        # Summary.
        print("\nsoak: %.0f s of traffic, %d+%d+1 clients, lmapd --threads %d, %d reloads, %d requests"
              " (%.0f/s), %d labels (%.0f labels/s)"
              % (elapsed, FAST_CLIENTS, SLOW_CLIENTS, a.threads, reloads[0], tally.total, tally.total / elapsed,
                 tally.labels, tally.labels / elapsed))
        print("\n%-32s %-7s %-12s %8s %9s" % ("kind", "valid", "outcome", "count", "max s"))
        for key, n in sorted(tally.by.items()):
            kind, valid, outcome = key
            print("%-32s %-7s %-12s %8d %9.2f" % (kind, "valid" if valid else "hostile", outcome,
                                                 n, tally.slowest[key]))
        print("\n%-22s %10s %10s %10s %8s %6s %8s %7s %6s" % (
            "sample", "VmRSS MiB", "anon MiB", "file MiB", "threads", "fds", "sockets", "stores",
            "stale"))

        def row(name, s):
            print("%-22s %10.1f %10.1f %10.1f %8d %6d %8d %7d %6d" % (
                name, s["rss_kb"] / 1024, s["anon_kb"] / 1024, s["file_kb"] / 1024,
                s["threads"], s["fds"], s["sockets"], s["stores"], s["stale"]))
        row("baseline", base)
        if samples:
            peak = max(samples, key=lambda x: x[1]["rss_kb"])
            row("peak RSS (t=%.0f s)" % (peak[0] - t_start), peak[1])
            row("max fds", max((s for _, s in samples), key=lambda s: s["fds"]))
            row("last during", samples[-1][1])
        if after:
            row("after (%.1f s settle)" % settled_in, after)
        print("margins: threads = baseline, descriptors <= baseline, no replaced store held, "
              "VmRSS <= baseline + %d MiB" % RSS_MARGIN_MB)
    finally:
        t_stop = time.monotonic()
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                code = p.wait(timeout=GRACE_S + 30)
                if code != 0:
                    failures.append("lmapd exit %s on SIGTERM" % code)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                failures.append("lmapd did not stop on SIGTERM within %d s" % (GRACE_S + 30))
        log.close()
        if "phases" in locals():
            phases["stop"] = time.monotonic() - t_stop
            print("phases (s): %s, total %.1f" % (", ".join(
                "%s %.1f" % kv for kv in phases.items()), time.monotonic() - t0))
    events = {}
    for line in open(log_path):
        try:
            e = json.loads(line)["event"]
        except (ValueError, KeyError):
            e = "(not JSON) " + line[:60].strip()
        events[e] = events.get(e, 0) + 1
    print("lmapd log events: %s" % json.dumps(events, sort_keys=True))
    for f in failures:
        print("FAIL:", f)
    print("soak: %s (log: %s)" % ("FAILED" if failures else "passed", log_path))
    if not a.tmp and not failures:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
