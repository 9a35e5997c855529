#!/usr/bin/python3
"""The Python binding (lmap.Client over liblmap) against real lmapd processes
serving a `lmap synth` store, checked against the lmap tool run as a
separate process (the same pooling code, no HTTP, no client library):

- labels (dense .npy through the C library into numpy) equal `lmap get`
  within 1e-6: G=1, G=2 with flips, relabel boxes, softmax off, G=3;
- sparse equals `lmap get --format sparse` (same classes in the same order,
  values and rest within 1e-6), G=1 and G=2 with flips;
- map equals `lmap export`'s .npy exactly; info equals `lmap info --json`;
- errors raise the LmapError subclass with code, errno, http_status, field,
  endpoint and request id: not_found, bad_box (server and library side),
  bad_id, too_large (--max-batch), unauthorized (--token-file), no server;
- a dead endpoint followed by a live one answers, and `endpoint` names it;
  a server that never answers gives UnavailableError "timeout";
- a hostile server's answers (NaN, infinities, probabilities outside
  [0, 1], another width than asked, bodies over what was asked) raise
  ProtocolError naming the problem;
- after lmapd swaps (SIGHUP) to a store of another shape, labels() and
  map() refresh the cached shape; a caller's stale out= buffer gets
  LMAP_ERANGE ("out_of_range"), as include/lmap/client.h promises;
- after fork() the inherited Client refuses use, a new one in the child
  works, and the parent's keeps working;
- input forms (lists, numpy, torch tensors, one id), out=, empty batches,
  closing, pickling.
Every lmapd started is stopped by PID, also on failure. Exit 1 on failure.
"""

import json
import os
import pickle
import random
import sys
import time

import numpy as np

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import py_common as pc  # noqa: E402

import lmap  # noqa: E402

TOL = 1e-6


def rand_box(rng):
    r = rng.random()
    if r < 0.1:
        return [0.0, 0.0, 1.0, 1.0]
    if r < 0.15:
        x, y = rng.random(), rng.random()
        return [x, y, x, y]  # zero area: one sample point
    w, h = rng.uniform(0.05, 1.0), rng.uniform(0.05, 1.0)
    x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
    return [x0, y0, x0 + w, y0 + h]


def rand_relabel(rng):
    """(i/H, j/W, h/H, w/W) on an image of random integer size."""
    ih, iw = rng.randint(100, 700), rng.randint(100, 700)
    ch, cw = rng.randint(1, ih), rng.randint(1, iw)
    i, j = rng.randint(0, ih - ch), rng.randint(0, iw - cw)
    return [i / ih, j / iw, ch / ih, cw / iw]


def cli_items(ck, env_dir, store, ids, boxes, flips, g, box_format, softmax, fmt, tag):
    qf = os.path.join(env_dir, "q-%s.jsonl" % tag)
    with open(qf, "w") as f:
        for i in range(len(ids)):
            f.write(json.dumps({"id": ids[i], "box": boxes[i], "flip": bool(flips[i]),
                                "output_size": g, "box_format": box_format, "format": fmt,
                                "softmax": softmax}) + "\n")
    rc, out, err = pc.lmap("get", store, "--queries", qf)
    if not ck.check(rc == 0, "%s: lmap get exit %d: %s" % (tag, rc, err.strip()[:300])):
        return None
    its = pc.items(out)
    ck.check(len(its) == len(ids), "%s: lmap get gave %d items for %d queries" % (tag, len(its), len(ids)))
    return its


def dense_of_item(item, g, c, softmax):
    """JSON dense item -> [C] (G=1) or [C, G, G]."""
    vals = np.array(item["probs" if softmax else "logits"], dtype=np.float64)
    if g == 1:
        return vals
    return vals.reshape(g * g, c).T.reshape(c, g, g)


def check_dense(ck, client, store, d, ids, boxes, flips, g, box_format, softmax, tag):
    got = client.labels(ids, boxes, output_size=g, flip=flips, box_format=box_format, softmax=softmax)
    c = client.num_classes
    want_shape = (len(ids), c) if g == 1 else (len(ids), c, g, g)
    if not ck.check(got.shape == want_shape and got.dtype == np.float32,
                    "%s: labels shape %s dtype %s, expected %s float32" % (tag, got.shape, got.dtype, want_shape)):
        return
    its = cli_items(ck, d, store, ids, boxes, flips, g, box_format, softmax, "dense", tag)
    if its is None:
        return
    worst = 0.0
    for i, it in enumerate(its):
        ref = dense_of_item(it, g, c, softmax)
        e = float(np.abs(got[i].astype(np.float64) - ref).max())
        worst = max(worst, e)
        if e > TOL:
            ck.check(False, "%s: query %d (%s box %s flip %s) differs from lmap get by %.3g"
                     % (tag, i, ids[i], boxes[i], flips[i], e))
    ck.err("labels vs lmap get, " + tag, worst)
    ck.check(worst <= TOL, "%s: max difference %.3g" % (tag, worst))


def check_sparse(ck, client, store, d, ids, boxes, flips, g, box_format, softmax, tag):
    got = client.sparse(ids, boxes, output_size=g, flip=flips, box_format=box_format, softmax=softmax)
    its = cli_items(ck, d, store, ids, boxes, flips, g, box_format, softmax, "sparse", tag)
    if its is None or not ck.check(len(got) == len(ids), "%s: %d results" % (tag, len(got))):
        return
    key = "probs" if softmax else "logits"
    worst = 0.0
    for i, it in enumerate(its):
        cells_got = [got[i]] if g == 1 else got[i]
        cls, vals, rest = it["classes"], it[key], it.get("rest", 0.0)
        if g == 1:
            cls, vals, rest = [cls], [vals], [rest]
        if not ck.check(len(cells_got) == g * g, "%s: query %d has %d cells" % (tag, i, len(cells_got))):
            continue
        for j in range(g * g):
            s = cells_got[j]
            if not isinstance(s, lmap.SparseLabel) or s.classes.dtype != np.int32 or s.values.dtype != np.float32:
                ck.check(False, "%s: query %d cell %d is not a SparseLabel of int32/float32" % (tag, i, j))
                continue
            if s.classes.tolist() != cls[j]:
                ck.check(False, "%s: query %d cell %d classes %s... differ from lmap get %s..."
                         % (tag, i, j, s.classes.tolist()[:6], cls[j][:6]))
                continue
            e = max([0.0] + [abs(float(a) - b) for a, b in zip(s.values, vals[j])] + [abs(s.rest - rest[j])])
            worst = max(worst, e)
    ck.err("sparse vs lmap get --format sparse, " + tag, worst)
    ck.check(worst <= TOL, "%s: max difference %.3g" % (tag, worst))
    # The sparse form expands to the dense one.
    dense = client.labels(ids[:8], boxes[:8], output_size=g, flip=flips[:8], box_format=box_format, softmax=softmax)
    c = client.num_classes
    e = 0.0
    for i in range(min(8, len(ids))):
        cells_got = [got[i]] if g == 1 else got[i]
        for j, s in enumerate(cells_got):
            ref = dense[i] if g == 1 else dense[i][:, j // g, j % g]
            e = max(e, float(np.abs(s.to_dense(c) - ref).max()))
    ck.err("sparse.to_dense vs labels, " + tag, e)
    ck.check(e <= TOL, "%s: sparse expanded differs from dense by %.3g" % (tag, e))


class HostileServer:
    """A loopback HTTP server that is not lmapd: GET /v1/info gets a real
    store description, every other request the canned (status, type, body)
    of the moment. Stopped by close()."""

    def __init__(self, info):
        import http.server
        import threading
        outer = self
        self.info = json.dumps(info).encode()
        self.answer = (200, "application/json", b"{}", None)

        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self, status, ctype, body, length=None):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up on an answer it refused

            def do_GET(self):
                if self.path == "/v1/info":
                    self._send(200, "application/json", outer.info)
                else:
                    self._send(*outer.answer)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self._send(*outer.answer)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def npy(self, arr, length=None):
        import io
        b = io.BytesIO()
        np.save(b, np.asarray(arr))
        self.answer = (200, "application/x-npy", b.getvalue(), length)

    def json(self, doc, length=None):
        self.answer = (200, "application/json", doc.encode(), length)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def check_hostile(ck, info):
    """What a server that is not lmapd answers (NaN, infinities, impossible
    probabilities, another width, a body over what was asked) raises
    lmap.ProtocolError (code "bad_answer", errno LMAP_EPROTOCOL) naming the
    problem; never labels, and never the caller's out_of_range."""
    srv = HostileServer(info)
    c = lmap.Client(srv.url, retries=0)
    nc, k, h, w = info["num_classes"], info["topk"], info["grid_h"], info["grid_w"]
    ids, boxes = ["a", "b"], [[0, 0, 1, 1]] * 2
    try:
        good = np.full((2, nc), 1.0 / nc, np.float32)
        srv.npy(good)
        ck.check(np.array_equal(c.labels(ids, boxes), good), "hostile: a good answer passes")

        def refused(what, fn, needle):
            e = ck.raises(lmap.ProtocolError, fn, "hostile: " + what)
            if e is not None:
                ck.check(e.code == "bad_answer" and e.errno == -21 and needle in e.message,
                         "hostile %s: code %r errno %r message %r (wants %r)"
                         % (what, e.code, e.errno, e.message, needle))

        for value, softmax, needle in ((np.nan, True, "[1, 7] is nan, not a finite number"),
                                       (np.inf, False, "[1, 7] is inf, not a finite number"),
                                       (1.5, True, "[1, 7] is 1.5, not a probability in [0, 1]"),
                                       (-0.5, True, "not a probability")):
            bad = good.copy()
            bad[1, 7] = value
            srv.npy(bad)
            refused("dense %r softmax=%s" % (value, softmax),
                    lambda: c.labels(ids, boxes, softmax=softmax), needle)
        bad = good.copy()
        bad[1, 7] = 1.5
        srv.npy(bad)
        ck.check(c.labels(ids, boxes, softmax=False)[1, 7] == 1.5, "hostile: a logit of 1.5 passes")
        # Another width than the store's: once the caller's out_of_range.
        srv.npy(np.zeros((2, nc + 1), np.float32))
        refused("dense of width C + 1", lambda: c.labels(ids, boxes),
                "shape is (2, %d), not the (2, %d) asked for" % (nc + 1, nc))
        srv.npy(np.zeros((2, nc + 1), np.float32))
        refused("dense of width C + 1 into out=",
                lambda: c.labels(ids, boxes, out=np.empty((2, nc), np.float32)),
                "not the (2, %d) asked for" % nc)
        m = np.zeros((2, k, h, w), np.float32)
        m[0, 0, 1, 1] = np.nan
        srv.npy(m)
        refused("map with a NaN score", lambda: c.map("a"), "[0, 0, 1, 1] is nan")
        m[0, 0, 1, 1] = 0
        m[1, 0, 1, 1] = nc
        srv.npy(m)
        refused("map with class index C", lambda: c.map("a"), "not a class index")
        srv.json('{"results":[{"id":"a","classes":[3,1],"probs":[0.5,1e39],"rest":0}]}')
        refused("sparse probs 1e39", lambda: c.sparse(["a"], [[0, 0, 1, 1]]),
                "results[0]: probs[1] is 1e+39, not a finite number")
        srv.json('{"results":[{"id":"a","classes":[3,1],"probs":[0.5,0.25],"rest":0}]}', length=900000000)
        refused("sparse with a Content-Length of 900 MB", lambda: c.sparse(["a"], [[0, 0, 1, 1]]),
                "Content-Length is 900000000 bytes, over the")
    finally:
        c.close()
        srv.close()


def main():
    ck = pc.Checker("test_py_client")
    d = pc.scratch("test_py_client")
    store = os.path.join(d, "s.lmap")
    pc.lmap_ok("synth", "-o", store, "-n", 300, "--no-progress")
    all_ids = pc.lmap_ok("ids", store).decode().split()
    ck.check(len(all_ids) == 300, "lmap ids gave %d ids" % len(all_ids))
    rng = random.Random(5)
    tok = os.path.join(d, "token")
    with open(tok, "w") as f:
        f.write("s3cret-token-for-tests\n")

    with pc.Daemons() as daemons:
        url, _ = daemons.start(store)
        print("lmapd at %s, liblmap %s (%s)" % (url, lmap.library_version(), os.environ["LMAP_LIBRARY"]),
              flush=True)
        client = lmap.Client(url)
        n = 96
        ids = [rng.choice(all_ids) for _ in range(n)]
        boxes = [rand_box(rng) for _ in range(n)]
        rboxes = [rand_relabel(rng) for _ in range(n)]
        flips = [rng.random() < 0.5 for _ in range(n)]
        noflip = [False] * n

        # ---- dense and sparse against lmap get ----
        check_dense(ck, client, store, d, ids, boxes, noflip, 1, "xyxy", True, "G1-xyxy")
        check_dense(ck, client, store, d, ids, boxes, flips, 2, "xyxy", True, "G2-xyxy-flip")
        check_dense(ck, client, store, d, ids, rboxes, flips, 1, "relabel", True, "G1-relabel-flip")
        check_dense(ck, client, store, d, ids, boxes, noflip, 1, "xyxy", False, "G1-logits")
        check_dense(ck, client, store, d, ids, rboxes, flips, 3, "relabel", False, "G3-relabel-flip-logits")
        check_sparse(ck, client, store, d, ids, boxes, noflip, 1, "xyxy", True, "sparse-G1")
        check_sparse(ck, client, store, d, ids, boxes, flips, 2, "xyxy", True, "sparse-G2-flip")
        check_sparse(ck, client, store, d, ids, rboxes, noflip, 1, "relabel", False, "sparse-G1-relabel-logits")
        ck.check(client.endpoint == url, "endpoint %r, expected %r" % (client.endpoint, url))

        # ---- map, info ----
        for ident in rng.sample(all_ids, 5):
            f = os.path.join(d, ident + ".npy")
            pc.lmap_ok("export", store, ident, "-o", f)
            ref = np.load(f)
            got = client.map(ident)
            ck.check(got.dtype == np.float32 and got.shape == ref.shape and np.array_equal(got, ref),
                     "map(%s): shape %s differs from lmap export %s" % (ident, got.shape, ref.shape))
        info = client.info()
        ref = json.loads(pc.lmap_ok("info", store, "--json"))
        ck.check(isinstance(info, dict), "info() is a %s" % type(info).__name__)
        for k in ("num_classes", "topk", "grid_h", "grid_w", "record_count", "encoding", "format_version",
                  "source", "score_stats"):
            ck.check(info.get(k) == ref.get(k), "info()[%r] = %r, lmap info says %r" % (k, info.get(k), ref.get(k)))
        ck.check(client.num_classes == 1000, "num_classes %r" % client.num_classes)

        # ---- a server that is not lmapd ----
        check_hostile(ck, info)

        # ---- input forms ----
        a = client.labels(ids[:4], boxes[:4])
        b = client.labels(ids[:4], np.array(boxes[:4], dtype=np.float32).astype(np.float64))
        ck.check(np.array_equal(a, b), "numpy boxes differ from list boxes")
        import torch
        t = client.labels(ids[:4], torch.tensor(boxes[:4], dtype=torch.float64),
                          flip=torch.tensor([True, False, True, False]), output_size=2)
        t2 = client.labels(ids[:4], boxes[:4], flip=[True, False, True, False], output_size=2)
        ck.check(np.array_equal(t, t2), "torch tensor boxes/flips differ from lists")
        allf = client.labels(ids[:4], boxes[:4], flip=True, output_size=2)
        ck.check(np.array_equal(allf, client.labels(ids[:4], boxes[:4], flip=[True] * 4, output_size=2)),
                 "flip=True differs from a list of True")
        ck.check(np.array_equal(allf[:, :, :, ::-1], client.labels(ids[:4], boxes[:4], output_size=2)),
                 "flip=True is not the left-right mirror of the G=2 grid")
        one = client.labels(ids[0], boxes[0])
        ck.check(one.shape == (1, 1000) and np.array_equal(one[0], a[0]), "one id as a str: shape %s" % (one.shape,))
        out = np.full((4, 1000), -1.0, dtype=np.float32)
        r = client.labels(ids[:4], boxes[:4], out=out)
        ck.check(r is out and np.array_equal(out, a), "out= is not filled in place")
        ck.raises(ValueError, lambda: client.labels(ids[:4], boxes[:4], out=np.empty((4, 999), np.float32)),
                  "out= of the wrong shape")
        e0 = client.labels([], np.zeros((0, 4)))
        ck.check(e0.shape == (0, 1000), "empty batch shape %s" % (e0.shape,))
        ck.check(client.sparse([], []) == [], "empty sparse batch")
        ck.raises(ValueError, lambda: client.labels(ids[:3], boxes[:4]), "3 ids with 4 boxes")
        ck.raises(ValueError, lambda: client.labels(ids[:4], boxes[:4], box_format="yxyx"), "unknown box_format")
        ck.raises(ValueError, lambda: client.labels(ids[:4], boxes[:4], output_size=0), "output_size 0")
        ck.raises(ValueError, lambda: client.labels(ids[:4], boxes[:4], flip=[True]), "1 flip for 4 ids")
        ck.raises(TypeError, lambda: client.labels([1, 2], [[0, 0, 1, 1]] * 2), "int ids")

        # ---- errors ----
        e = ck.raises(lmap.NotFoundError, lambda: client.labels([ids[0], "n00000000_404404"], boxes[:2]),
                      "unknown id raises NotFoundError")
        if e is not None:
            ck.check(e.code == "not_found" and e.errno == -3 and e.http_status == 404,
                     "not_found: code %r errno %r status %r" % (e.code, e.errno, e.http_status))
            ck.check("n00000000_404404" in e.message, "not_found message does not name the id: %r" % e.message)
            ck.check(e.field == "queries", "not_found field %r" % e.field)
            ck.check(e.endpoint == url and e.request_id != "", "not_found endpoint %r request id %r"
                     % (e.endpoint, e.request_id))
            e2 = pickle.loads(pickle.dumps(e))
            ck.check(type(e2) is type(e) and (e2.code, e2.errno, e2.http_status, e2.field, e2.request_id)
                     == (e.code, e.errno, e.http_status, e.field, e.request_id), "LmapError does not pickle")
        e = ck.raises(lmap.NotFoundError, lambda: client.map("n00000000_404404"), "map of an unknown id")
        if e is not None:
            ck.check(e.http_status == 404 and e.code == "not_found", "map not_found status %r" % e.http_status)
        e = ck.raises(lmap.BadBoxError, lambda: client.labels(ids[:1], [[0.6, 0.1, 0.2, 0.9]]),
                      "inverted box raises BadBoxError")
        if e is not None:
            ck.check(e.code == "bad_box" and e.errno == -11 and e.http_status == 400 and e.field == "box",
                     "bad_box: code %r errno %r status %r field %r" % (e.code, e.errno, e.http_status, e.field))
            ck.check(isinstance(e, lmap.BadRequestError) and isinstance(e, lmap.LmapError), "bad_box class tree")
        e = ck.raises(lmap.BadBoxError, lambda: client.labels(ids[:2], [[0, 0, 1, 1], [0, float("nan"), 1, 1]]),
                      "NaN box raises BadBoxError (library side)")
        if e is not None:
            ck.check(e.code == "bad_box" and e.http_status == 0 and "queries[1]" in e.field,
                     "NaN box: code %r status %r field %r" % (e.code, e.http_status, e.field))
        e = ck.raises(lmap.BadIdError, lambda: client.labels(["bad id/with space"], [[0, 0, 1, 1]]),
                      "malformed id raises BadIdError")
        if e is not None:
            ck.check(e.code == "bad_id" and e.http_status == 400, "bad_id: code %r status %r" % (e.code, e.http_status))
        ck.check(client.labels(ids[:2], boxes[:2]).shape == (2, 1000), "the client works after errors")

        # ---- the request form: binary queries by default, JSON on request ----
        jclient = lmap.Client(url, json_queries=True)
        for opts in ({}, {"output_size": 2, "flip": [k % 2 == 0 for k in range(16)]},
                     {"box_format": "relabel"}):
            bx = [[0.1, 0.1, 0.4, 0.5]] * 16 if opts.get("box_format") else boxes[:16]
            a, b = client.labels(ids[:16], bx, **opts), jclient.labels(ids[:16], bx, **opts)
            ck.check(a.tobytes() == b.tobytes(), "json_queries=True answers as the binary default %s" % opts)
        # An id over 255 bytes: the binary form cannot carry it and the
        # library says so; as JSON it goes to lmapd, which refuses it.
        long_id = "n" * 300
        e = ck.raises(lmap.BadIdError, lambda: client.labels([long_id], [[0, 0, 1, 1]]), "long id, binary")
        if e is not None:
            ck.check(e.http_status == 0 and "255" in str(e), "binary queries by default: refused by the library (%s)" % e)
        e = ck.raises(lmap.BadIdError, lambda: jclient.labels([long_id], [[0, 0, 1, 1]]), "long id, JSON")
        if e is not None:
            ck.check(e.http_status == 400, "json_queries=True: refused by lmapd (%s)" % e)
        jclient.close()

        # ---- a limited daemon: token and batch cap ----
        url2, _ = daemons.start(store, "--token-file", tok, "--max-batch", "8")
        anon = lmap.Client(url2)
        e = ck.raises(lmap.UnauthorizedError, lambda: anon.labels(ids[:2], boxes[:2]), "no token: UnauthorizedError")
        if e is not None:
            ck.check(e.code == "unauthorized" and e.http_status == 401 and e.errno == -15,
                     "unauthorized: code %r status %r errno %r" % (e.code, e.http_status, e.errno))
        ck.raises(lmap.UnauthorizedError, anon.info, "no token: info() refused")
        wrong = lmap.Client(url2, token="not-the-token")
        ck.raises(lmap.UnauthorizedError, lambda: wrong.labels(ids[:2], boxes[:2]), "wrong token refused")
        authed = lmap.Client(url2, token_file=tok)
        got = authed.labels(ids[:8], boxes[:8])
        ck.check(np.array_equal(got, client.labels(ids[:8], boxes[:8])), "token_file client answers as the open daemon")
        ck.check(np.array_equal(lmap.Client(url2, token="s3cret-token-for-tests").labels(ids[:2], boxes[:2]), got[:2]),
                 "token= client works")
        e = ck.raises(lmap.TooLargeError, lambda: authed.labels(ids[:9], boxes[:9]), "9 queries over --max-batch 8")
        if e is not None:
            ck.check(e.code == "too_large" and e.http_status == 413, "too_large: code %r status %r" % (e.code, e.http_status))
        for c in (anon, wrong, authed):
            c.close()

        # ---- failover and unreachable servers ----
        dead = pc.dead_url()
        fo = lmap.Client([dead, url], connect_timeout=1.0)
        got = fo.labels(ids[:8], boxes[:8])
        ck.check(np.array_equal(got, client.labels(ids[:8], boxes[:8])), "dead then live: labels differ")
        ck.check(fo.endpoint == url, "dead then live: endpoint %r, expected %r" % (fo.endpoint, url))
        fo2 = lmap.Client("%s, %s" % (dead, url))
        ck.check(np.array_equal(fo2.labels(ids[:8], boxes[:8]), got) and fo2.endpoint == url,
                 "comma-separated urls with a dead first one")
        nobody = lmap.Client(dead, retries=0, connect_timeout=0.5, timeout=2.0)
        e = ck.raises(lmap.UnavailableError, lambda: nobody.labels(ids[:2], boxes[:2]), "no server: UnavailableError")
        if e is not None:
            ck.check(e.http_status == 0 and e.errno < 0 and dead in (e.endpoint + e.message),
                     "no server: status %r errno %r endpoint %r message %r" % (e.http_status, e.errno, e.endpoint, e.message))
        import socket
        mute = socket.socket()  # accepts connections (backlog) but never answers
        mute.bind(("127.0.0.1", 0))
        mute.listen(4)
        slow = lmap.Client("http://127.0.0.1:%d" % mute.getsockname()[1], retries=0, timeout=0.5)
        e = ck.raises(lmap.UnavailableError, lambda: slow.info(), "silent server: UnavailableError")
        if e is not None:
            ck.check(e.code == "timeout" and e.errno == -20, "silent server: code %r errno %r" % (e.code, e.errno))
        slow.close()
        mute.close()
        ck.raises(lmap.LmapError, lambda: lmap.Client("ftp://127.0.0.1:1"), "ftp URL refused at creation")
        ck.raises(ValueError, lambda: lmap.Client([]), "no URL")
        ck.raises(ValueError, lambda: lmap.Client(url, token="a", token_file=tok), "token and token_file")
        fo.close(), fo2.close(), nobody.close()

        # ---- fork ----
        before = client.labels(ids[:4], boxes[:4])
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: report through the pipe, never return into the test
            code = 0
            try:
                os.close(r)
                msg = []
                try:
                    client.labels(ids[:4], boxes[:4])
                    msg.append("inherited client answered")
                except lmap.UsedAfterForkError as ex:
                    if "process" not in str(ex) or ex.code != "used_after_fork":
                        msg.append("unclear fork error: %s" % ex)
                try:
                    client.info()
                    msg.append("inherited client info() answered")
                except lmap.UsedAfterForkError:
                    pass
                mine = lmap.Client(url)
                if not np.array_equal(mine.labels(ids[:4], boxes[:4]), before):
                    msg.append("child's own client gives different labels")
                mine.close()
                client.close()  # allowed: forgets the inherited handle
                os.write(w, ("|".join(msg) or "ok").encode())
            except BaseException as ex:  # noqa: BLE001
                os.write(w, ("child crashed: %r" % ex).encode())
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        child_says = b""
        while True:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            child_says += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        ck.check(os.waitstatus_to_exitcode(status) == 0 and child_says == b"ok",
                 "fork child: exit %d, %s" % (os.waitstatus_to_exitcode(status), child_says.decode()))
        ck.check(np.array_equal(client.labels(ids[:4], boxes[:4]), before), "parent's client after the fork")

        # ---- threads: one shared Client (serialised) and one Client each ----
        import threading
        want = client.labels(ids[:32], boxes[:32], flip=flips[:32], output_size=2)
        bad = []

        def worker(c, k):
            for _ in range(10):
                got = c.labels(ids[:32], boxes[:32], flip=flips[:32], output_size=2)
                if not np.array_equal(got, want):
                    bad.append(k)
        own = [lmap.Client(url) for _ in range(3)]
        threads = [threading.Thread(target=worker, args=(client, k)) for k in range(3)] + \
                  [threading.Thread(target=worker, args=(own[k], 3 + k)) for k in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        ck.check(not bad, "threads: wrong answers in threads %s" % sorted(set(bad)))
        for c in own:
            c.close()

        # ---- the store behind a Client changes shape (SIGHUP swap) ----
        s3 = os.path.join(d, "swap.lmap")
        pc.lmap_ok("synth", "-o", s3, "-n", 40, "--no-progress")
        url3, p3 = daemons.start(s3)
        c3 = lmap.Client(url3)
        ids3 = pc.lmap_ok("ids", s3).decode().split()[:3]
        ck.check(c3.labels(ids3, [[0, 0, 1, 1]] * 3).shape == (3, 1000) and c3.map(ids3[0]).shape == (2, 5, 15, 15),
                 "swap store: first shape")
        pc.lmap_ok("synth", "-o", s3, "-n", 40, "-C", 10, "-g", 7, "-k", 3, "-f", "--no-progress")
        ids3 = pc.lmap_ok("ids", s3).decode().split()[:3]
        import signal
        p3.send_signal(signal.SIGHUP)
        for _ in range(100):
            try:
                if c3.info()["num_classes"] == 10:
                    break
            except lmap.LmapError:
                pass
            time.sleep(0.05)
        c3._shape = (1000, 5, 15, 15)  # as cached before the swap: the next calls must notice
        got = c3.labels(ids3, [[0, 0, 1, 1]] * 3)
        ck.check(got.shape == (3, 10) and abs(float(got.sum()) - 3.0) < 1e-4,
                 "after the swap to 10 classes: labels %s (the cached shape was not refreshed)" % (got.shape,))
        c3._shape = (1000, 5, 15, 15)
        m = c3.map(ids3[0])
        ck.check(m.shape == (2, 3, 7, 7), "after the swap to K=3, 7x7: map %s" % (m.shape,))
        c3._shape = (1000, 5, 15, 15)
        e = ck.raises(lmap.LmapError, lambda: c3.labels(ids3, [[0, 0, 1, 1]] * 3, out=np.empty((3, 1000), np.float32)),
                      "out= of the old shape after a swap")
        if e is not None:
            ck.check(e.code == "out_of_range" and e.errno == -13, "stale out=: code %r errno %r" % (e.code, e.errno))
        c3.close()

        # ---- lifecycle ----
        ck.raises(TypeError, lambda: pickle.dumps(client), "a Client does not pickle")
        with lmap.Client(url) as cm:
            ck.check(cm.labels(ids[:1], boxes[:1]).shape == (1, 1000), "context manager client works")
        e = ck.raises(lmap.ClientClosedError, lambda: cm.labels(ids[:1], boxes[:1]), "closed after with")
        cm.close()  # idempotent
        client.close()
        ck.raises(lmap.ClientClosedError, lambda: client.info(), "closed client refuses info()")
        client = None  # __del__ of a closed client
        # Every Client is closed: both daemons drain at once and exit 0
        # (a connection left open would hold the drain until --grace).
        for p in list(daemons.procs):
            rc = daemons.stop(p)
            ck.check(rc == 0, "lmapd pid %d stopped with %r: a connection was left open" % (p.pid, rc))

    return ck.summary(d)


if __name__ == "__main__":
    sys.exit(main())
