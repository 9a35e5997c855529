#!/usr/bin/python3
"""End-to-end: the sparse binary answer of POST /v1/labels
(Accept: application/x-lmap-sparse, docs/API.md), read here with Python's
struct from the layout in the docs, not by liblmap:
- expanded to dense, it equals lmapd's own .npy answer bit for bit (numpy's
  np.load reads that one), for G = 1, 2 and 3, flips, relabel boxes and
  logits, with JSON and binary queries, mapped and resident; its header,
  Content-Type and length are as documented, every cell lists distinct
  classes below C, and a cell's listed classes are at most what the crop
  can touch;
- Accept decides: sparse wins over .npy when both are named (what liblmap
  sends), .npy alone is .npy, JSON otherwise; errors stay JSON (404);
- --max-answer bounds a sparse answer before pooling (413 naming it);
- the Python binding (regular build only): lmap.Client.labels, which asks
  for sparse answers by default, equals the .npy answer bit for bit, and
  Client(npy_answers=True) too; an endpoint that answers .npy when asked
  for sparse (lmapd 0.2.0 does: a proxy here forwards with Accept: .npy
  only) still gives the same labels.
Loopback only; every daemon is stopped by its PID."""
import http.server
import io
import json
import os
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np

from e2e_common import LMAP, TMP, check, post_labels, start_daemon, stop_daemon, summary

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# A sanitizer build's liblmap cannot be loaded into Python (its runtime must
# come first): the binding's part runs in the regular build only.
BINDING = os.environ.get("LMAP_SANITIZED", "0") != "1"
if BINDING:
    sys.path.insert(0, os.path.join(ROOT, "client", "python"))
    import lmap  # noqa: E402

SPARSE = "application/x-lmap-sparse"
NPY = "application/x-npy"
BOTH = SPARSE + ", " + NPY + ";q=0.5"


def post(port, body, accept, query="", content_type="application/json"):
    return post_labels(port, body, content_type, query, accept)


def expand(body, classes_max_touched=None):
    """The sparse answer as a dense float32 [N, C, G, G] array, and the
    problems found in its layout (a list of strings)."""
    problems = []
    if body[:4] != b"LMS1":
        return None, ["no LMS1 magic: %r" % body[:8]]
    n, c, g = struct.unpack_from("<III", body, 4)
    out = np.empty((n, c, g, g), dtype=np.float32)
    at = 16
    for i in range(n):
        for cell in range(g * g):
            count, rest = struct.unpack_from("<If", body, at)
            at += 8
            out[i, :, cell // g, cell % g] = rest
            pairs = np.frombuffer(body, dtype="<u4", count=2 * count, offset=at).reshape(-1, 2)
            at += 8 * count
            cls = pairs[:, 0]
            vals = pairs[:, 1].copy().view("<f4")
            if len(set(cls.tolist())) != count or (count and cls.max() >= c):
                problems.append("item %d cell %d: classes repeat or reach C" % (i, cell))
                continue
            if classes_max_touched is not None and count > classes_max_touched:
                problems.append("item %d cell %d lists %d classes" % (i, cell, count))
            out[i, cls, cell // g, cell % g] = vals
    if at != len(body):
        problems.append("%d bytes after the cells" % (len(body) - at))
    return out, problems


def as_json(queries, options):
    return json.dumps(dict(options, queries=[{"id": i, "box": list(b), "flip": f}
                                             for i, b, f in queries])).encode()


def as_binary(queries):
    parts = [b"LMQ1", struct.pack("<I", len(queries))]
    for id_, box, flip in queries:
        raw = id_.encode()
        parts.append(struct.pack("<BB4d", len(raw), 1 if flip else 0, *box) + raw)
    return b"".join(parts)


def crops(ids, count, seed):
    """RandomResizedCrop-like xyxy boxes with flips, as a trainer sends."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        area = rng.uniform(0.08, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w = min(1.0, float(np.sqrt(area * ratio)))
        h = min(1.0, float(np.sqrt(area / ratio)))
        x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        out.append((ids[int(rng.integers(len(ids)))], (x, y, x + w, y + h), bool(k % 3 == 0)))
    return out


CASES = [  # (options, query string)
    ({}, ""),
    ({"output_size": 2}, "?output_size=2"),
    ({"output_size": 3}, "?output_size=3"),
    ({"softmax": False}, "?softmax=false"),
    ({"output_size": 2, "softmax": False}, "?output_size=2&softmax=false"),
]


def check_forms(port, queries, relabel, mode):
    """Sparse expanded = .npy, bit for bit, for every case and body form."""
    for opts, query in CASES:
        G = opts.get("output_size", 1)
        # The most classes a cell can list: K per map cell its bin samples
        # (15x15 grid, top-5; docs/API.md "Answer size").
        most = 5 * min(15, -(-15 // G) + 4) ** 2
        for body, ctype, q in ((as_json(queries, opts), "application/json", ""),
                               (as_binary(queries), "application/x-lmap-queries", query)):
            s = post(port, body, BOTH, q, ctype)
            d = post(port, body, NPY, q, ctype)
            check(s[0] == 200 and s[1] == SPARSE and d[0] == 200 and d[1] == NPY,
                  "%s %s %s: sparse and .npy answers (%s, %s / %s, %s)"
                  % (mode, opts, ctype, s[0], s[1], d[0], d[1]))
            if s[0] != 200 or d[0] != 200:
                continue
            dense = np.load(io.BytesIO(d[2]))
            got, problems = expand(s[2], most)
            n, c, g = struct.unpack_from("<III", s[2], 4)
            check((n, g) == (len(queries), G) and c == dense.shape[1],
                  "%s %s: header (%d, %d, %d)" % (mode, opts, n, c, g))
            check(not problems, "%s %s %s: layout: %s" % (mode, opts, ctype, problems[:3]))
            check(got is not None and got.reshape(dense.shape).tobytes() == dense.tobytes(),
                  "%s %s %s: expanded sparse = .npy bit for bit" % (mode, opts, ctype))
            check(len(s[2]) * 10 < len(d[2]),
                  "%s %s: sparse is under a tenth of .npy (%d vs %d bytes)"
                  % (mode, opts, len(s[2]), len(d[2])))
    s = post(port, as_json(relabel, {"box_format": "relabel", "output_size": 2}), SPARSE)
    d = post(port, as_json(relabel, {"box_format": "relabel", "output_size": 2}), NPY)
    got, problems = expand(s[2])
    check(s[0] == 200 and not problems and got.tobytes() == np.load(io.BytesIO(d[2])).tobytes(),
          "%s relabel G 2: expanded sparse = .npy" % mode)


def check_negotiation(port, queries, ids):
    body = as_json(queries[:3], {})
    for accept, want in ((SPARSE, SPARSE), (BOTH, SPARSE), (NPY + ", " + SPARSE, SPARSE),
                         (NPY, NPY), (None, "application/json"),
                         ("application/json", "application/json")):
        r = post(port, body, accept)
        check(r[0] == 200 and r[1] == want, "Accept %s -> %s (got %s %s)" % (accept, want, r[0], r[1]))
    bad = as_json([("no-such-id", (0, 0, 1, 1), False)] + queries[:2], {})
    r = post(port, bad, BOTH)
    check(r[0] == 404 and r[1] == "application/json"
          and json.loads(r[2])["error"]["code"] == "not_found",
          "an unknown id with Accept sparse: a JSON 404 (%s %s)" % (r[0], r[1]))
    # GET of one item and maps do not take the form: JSON / .npy as before.
    with urllib.request.urlopen(urllib.request.Request(
            "http://127.0.0.1:%d/v1/labels/%s?box=0,0,1,1" % (port, ids[0]),
            headers={"Accept": SPARSE}), timeout=10) as r:
        check(r.headers.get("Content-Type") == "application/json", "GET one item stays JSON")


class NpyOnlyProxy(http.server.BaseHTTPRequestHandler):
    """Forwards POST /v1/labels and GET /v1/info to lmapd, asking for .npy
    only whatever the client asked: an lmapd 0.2.0 as liblmap sees it. The
    Accept headers it was sent are kept in `seen`."""
    upstream = 0
    seen = []

    def forward(self, body):
        self.seen.append(self.headers.get("Accept"))
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.upstream, self.path),
                                     data=body, method=self.command)
        for h in ("Content-Type",):
            if self.headers.get(h):
                req.add_header(h, self.headers[h])
        if self.headers.get("Accept") and SPARSE in self.headers["Accept"]:
            req.add_header("Accept", NPY)
        elif self.headers.get("Accept"):
            req.add_header("Accept", self.headers["Accept"])
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, ctype, data = r.status, r.headers.get("Content-Type"), r.read()
        except urllib.error.HTTPError as e:
            status, ctype, data = e.code, e.headers.get("Content-Type"), e.read()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.forward(None)

    def do_POST(self):
        self.forward(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

    def log_message(self, *args):
        pass


def check_binding(port, queries):
    ids = [q[0] for q in queries]
    boxes = np.array([q[1] for q in queries], dtype=np.float64)
    flips = [q[2] for q in queries]
    url = "http://127.0.0.1:%d" % port
    for G, softmax in ((1, True), (3, True), (2, False)):
        opts = {"output_size": G, "softmax": softmax}
        d = post(port, as_json(queries, opts), NPY)
        want = np.load(io.BytesIO(d[2]))
        with lmap.Client(url) as c:
            got = c.labels(ids, boxes, flip=flips, output_size=G, softmax=softmax)
        check(got.tobytes() == want.tobytes(),
              "binding G %d softmax %s (sparse answers) = .npy bit for bit" % (G, softmax))
        with lmap.Client(url, npy_answers=True) as c:
            got = c.labels(ids, boxes, flip=flips, output_size=G, softmax=softmax)
        check(got.tobytes() == want.tobytes(),
              "binding G %d softmax %s (npy_answers=True) = .npy" % (G, softmax))
    # An endpoint without sparse answers.
    NpyOnlyProxy.upstream = port
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NpyOnlyProxy)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        d = post(port, as_json(queries, {}), NPY)
        with lmap.Client("http://127.0.0.1:%d" % server.server_address[1]) as c:
            got = c.labels(ids, boxes, flip=flips)
        check(got.tobytes() == np.load(io.BytesIO(d[2])).tobytes(),
              "binding through an endpoint that answers .npy only: the same labels")
        check(any(a and a.startswith(SPARSE) and NPY in a for a in NpyOnlyProxy.seen),
              "liblmap's Accept names sparse first and .npy after (%s)" % NpyOnlyProxy.seen[-1:])
    finally:
        server.shutdown()
        server.server_close()


def main():
    os.makedirs(TMP, exist_ok=True)
    store = os.path.join(TMP, "answers.lmap")
    subprocess.run([LMAP, "synth", "-o", store, "--images", "400", "--level", "1", "--force",
                    "--no-progress"], check=True, capture_output=True)
    ids = subprocess.run([LMAP, "ids", store], capture_output=True, text=True,
                         check=True).stdout.split()
    queries = crops(ids, 60, 7)
    relabel = [(i, (0.1 + 0.01 * k % 0.3, 0.2, 0.5, 0.6), k % 2 == 0)
               for k, (i, _, _) in enumerate(queries[:20])]
    for mode, extra in (("mapped", ()), ("resident", ("--resident",))):
        p, port, _ = start_daemon(store, *extra)
        try:
            if mode == "resident":
                import time
                for _ in range(400):
                    try:
                        urllib.request.urlopen("http://127.0.0.1:%d/readyz" % port, timeout=5)
                        break
                    except (urllib.error.URLError, OSError):
                        time.sleep(0.05)
            check_forms(port, queries, relabel, mode)
            if mode == "mapped":
                check_negotiation(port, queries, ids)
                if BINDING:
                    check_binding(port, queries)
        finally:
            check(stop_daemon(p) == 0, "%s lmapd stopped cleanly" % mode)
    # The bound: 256 queries of G = 8 can list at most 5 * 6 * 6 classes a
    # cell (over 1,000 classes: 180); with a cap just under the bound of
    # the sparse answer the batch is refused before pooling.
    n, G = 256, 8
    bound = 16 + n * G * G * 8 * (1 + 5 * (-(-15 // G) + 4) ** 2)
    p, port, _ = start_daemon(store, "--max-answer", str(bound - 1))
    try:
        many = crops(ids, n, 9)
        r = post(port, as_json(many, {"output_size": G}), BOTH)
        err = json.loads(r[2]).get("error", {}) if r[1] == "application/json" else {}
        check(r[0] == 413 and "binary sparse" in err.get("message", "")
              and str(bound) in err.get("message", ""),
              "sparse bound over --max-answer: 413 naming it (%s %s)" % (r[0], err.get("message")))
    finally:
        stop_daemon(p)
    p, port, _ = start_daemon(store, "--max-answer", str(bound))
    try:
        r = post(port, as_json(many, {"output_size": G}), BOTH)
        check(r[0] == 200 and r[1] == SPARSE, "the same batch at the bound: served (%s)" % r[0])
    finally:
        stop_daemon(p)
    return summary()


if __name__ == "__main__":
    sys.exit(main())
