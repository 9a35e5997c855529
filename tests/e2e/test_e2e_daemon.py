#!/usr/bin/python3
"""End-to-end: the real lmapd on an ephemeral loopback port, over a store
made by `lmap synth`. Answers are checked against `lmap get` / `lmap export`
(the same code path, run as a separate process), .npy answers with numpy,
and hostile requests for their exact status and JSON error body, each
followed by a check that the daemon still serves. Every process started is
stopped by its PID; requests go to 127.0.0.1 only."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np

from e2e_common import LMAP, TMP, check, start_daemon, stop_daemon, summary


def http(port, method, path, body=None, headers=None):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=body,
                                 method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def raw(port, data, read_for=1.0):
    """Sends raw bytes, returns the status line of the first answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(data)
    s.settimeout(read_for)
    got = b""
    try:
        while b"\r\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    except socket.timeout:
        pass
    s.close()
    return got.split(b"\r\n", 1)[0].decode("latin-1")


def error_of(body):
    e = json.loads(body)["error"]
    return e["code"], e["message"], e.get("field")


def lmap_get(store, lines):
    p = subprocess.run([LMAP, "get", store, "--queries", "-"], input="\n".join(lines) + "\n",
                       capture_output=True, text=True, check=True)
    return [json.loads(x) for x in p.stdout.splitlines()]


def main():
    os.makedirs(TMP, exist_ok=True)
    store = os.path.join(TMP, "e2e.lmap")
    subprocess.run([LMAP, "synth", "-o", store, "--images", "300", "--force", "--no-progress"],
                   check=True, capture_output=True)
    ids = subprocess.run([LMAP, "ids", store], check=True, capture_output=True,
                         text=True).stdout.split()
    p, port, logname = start_daemon(store, "--max-body", "65536", "--max-batch", "64")
    try:
        alive = lambda: http(port, "GET", "/livez")[0] == 200
        st, _, body = http(port, "GET", "/livez")
        check(st == 200 and json.loads(body) == {"status": "ok"}, "livez")
        st, _, body = http(port, "GET", "/readyz")
        check(st == 200, "readyz while serving")
        st, _, body = http(port, "GET", "/v1/info")
        info = json.loads(body)
        check(st == 200 and info["record_count"] == 300 and info["num_classes"] == 1000, "info")
        st, _, body = http(port, "GET", "/v1/classes")
        check(st == 404 and error_of(body)[0] == "not_found", "classes absent -> 404")

        # GET /v1/labels/{id} equals lmap get, for several option sets.
        rng = np.random.default_rng(3)
        for fmt, G, flip, bf in [("dense", 1, False, "xyxy"), ("sparse", 1, False, "xyxy"),
                                 ("sparse", 3, True, "xyxy"), ("dense", 2, False, "relabel")]:
            for _ in range(5):
                i = ids[rng.integers(len(ids))]
                if bf == "xyxy":
                    x0, x1 = sorted(rng.random(2)); y0, y1 = sorted(rng.random(2))
                    box = [x0, y0, x1, y1]
                else:
                    a, b = rng.random(2) * 0.5
                    box = [a, b, rng.random() * 0.5, rng.random() * 0.5]
                q = "box=%s&format=%s&output_size=%d&flip=%s&box_format=%s" % (
                    ",".join(repr(float(v)) for v in box), fmt, G, str(flip).lower(), bf)
                st, hd, body = http(port, "GET", "/v1/labels/%s?%s" % (i, q))
                want = lmap_get(store, [json.dumps({"id": i, "box": box, "format": fmt,
                                                    "output_size": G, "flip": flip,
                                                    "box_format": bf})])[0]
                check(st == 200 and json.loads(body) == want, "GET label %s %s equals lmap get" % (i, q))

        # POST /v1/labels: JSON and .npy.
        queries = [{"id": ids[k], "box": [0.1 * (k % 5), 0.05, 0.9, 0.6 + 0.01 * (k % 30)],
                    "flip": bool(k % 2)} for k in range(40)]
        for fmt in ("dense", "sparse"):
            st, _, body = http(port, "POST", "/v1/labels",
                               json.dumps({"queries": queries, "format": fmt}).encode())
            want = lmap_get(store, [json.dumps(dict(q, format=fmt)) for q in queries])
            check(st == 200 and json.loads(body)["results"] == want, "POST batch %s equals lmap get" % fmt)
        for G in (1, 2):
            st, hd, body = http(port, "POST", "/v1/labels",
                                json.dumps({"queries": queries, "output_size": G}).encode(),
                                {"Accept": "application/x-npy"})
            path = os.path.join(TMP, "e2e.npy")
            open(path, "wb").write(body)
            arr = np.load(path)
            want = lmap_get(store, [json.dumps(dict(q, output_size=G)) for q in queries])
            dense = np.array([w["probs"] for w in want], dtype=np.float32)
            if G > 1:  # cells x C -> C x G x G
                dense = dense.reshape(len(queries), G, G, -1).transpose(0, 3, 1, 2)
            check(st == 200 and hd.get("Content-Type") == "application/x-npy"
                  and arr.shape == dense.shape and np.array_equal(arr, dense),
                  "POST .npy G=%d equals lmap get" % G)

        # GET /v1/maps/{id}: JSON and .npy against lmap export.
        exp = os.path.join(TMP, "e2e-export.npy")
        subprocess.run([LMAP, "export", store, ids[7], "-o", exp], check=True)
        ref = np.load(exp)
        st, _, body = http(port, "GET", "/v1/maps/" + ids[7], headers={"Accept": "application/x-npy"})
        open(exp + ".srv", "wb").write(body)
        check(st == 200 and np.array_equal(np.load(exp + ".srv"), ref), "map .npy equals lmap export")
        st, _, body = http(port, "GET", "/v1/maps/" + ids[7])
        m = json.loads(body)
        K, H, W = m["k"], m["h"], m["w"]
        check(st == 200 and np.array_equal(np.array(m["scores"], np.float32).reshape(K, H, W), ref[0])
              and np.array_equal(np.array(m["classes"], np.float32).reshape(K, H, W), ref[1]),
              "map JSON equals lmap export")

        # /metrics: Prometheus text; counts match what this test asked so far
        # (20 GET labels, 4 POST batches of 40 queries).
        st, hd, body = http(port, "GET", "/metrics")
        text = body.decode()
        series = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                series[name] = float(value)
        check(st == 200 and hd.get("Content-Type", "").startswith("text/plain"), "metrics content type")
        check(series.get("lmap_labels_served_total") == 180, "labels served 180 (got %s)" % series.get("lmap_labels_served_total"))
        check(series.get('lmap_requests_total{route="POST /v1/labels",status="200"}') == 4, "4 POSTs counted")
        check(series.get('lmap_requests_total{route="GET /v1/labels/{id}",status="200"}') == 20, "20 GETs counted")
        check(series.get('lmap_batch_size_bucket{le="64"}') == 24 and series.get("lmap_batch_size_sum") == 180,
              "batch-size histogram")
        check(series.get('lmap_request_duration_seconds_bucket{le="+Inf"}') ==
              series.get("lmap_request_duration_seconds_count"), "latency histogram closes at +Inf")
        check(series.get("lmap_store_records") == 300, "store records gauge")

        # Errors: status, code, field; the daemon keeps serving after each.
        cases = [
            ("GET", "/v1/labels/nope_1?box=0,0,1,1", None, {}, 404, "not_found", "id"),
            ("GET", "/v1/labels/%s?box=0,0,2,1" % ids[0], None, {}, 400, "bad_box", "box"),
            ("GET", "/v1/labels/%s?box=0,0,1" % ids[0], None, {}, 400, "bad_box", "box"),
            ("GET", "/v1/labels/%s" % ids[0], None, {}, 400, "bad_box", "box"),
            ("GET", "/v1/labels/%s?box=nan,0,1,1" % ids[0], None, {}, 400, "bad_box", "box"),
            ("GET", "/v1/labels/%s?box=0,0,1,1&output_size=0" % ids[0], None, {}, 400,
             "invalid_argument", "output_size"),
            ("GET", "/v1/labels/%s?box=0,0,1,1&format=fancy" % ids[0], None, {}, 400,
             "invalid_argument", "format"),
            ("GET", "/v1/labels/bad%%2Fid?box=0,0,1,1", None, {}, 400, "bad_id", "id"),
            ("GET", "/nope", None, {}, 404, "not_found", None),
            ("DELETE", "/v1/info", None, {}, 405, "method_not_allowed", None),
            ("POST", "/v1/labels", b"{not json", {}, 400, "bad_format", None),
            ("POST", "/v1/labels", b'{"queries":[],"queries":[]}', {}, 400, "bad_format", None),
            ("POST", "/v1/labels", b'{"queries":[]}', {}, 400, "invalid_argument", "queries"),
            ("POST", "/v1/labels", json.dumps({"queries": [{"id": ids[0], "box": [0, 0, 1, 1]}] * 65}).encode(),
             {}, 413, "too_large", "queries"),
            ("POST", "/v1/labels", json.dumps({"queries": [{"id": ids[0], "box": [0, 0, 1, 1]}],
                                               "colour": 1}).encode(), {}, 400, "invalid_argument", "colour"),
            ("POST", "/v1/labels", json.dumps({"queries": [{"id": ids[0], "box": [0.5, 0, 0.4, 1]}]}).encode(),
             {}, 400, "bad_box", "box"),
            ("POST", "/v1/labels", b'{"queries":[{"id":"x_1","box":[NaN,0,1,1]}]}', {}, 400, "bad_format", None),
            ("POST", "/v1/labels", json.dumps({"queries": [{"id": "a_1", "box": [0, 0, 1, 1]},
                                                           {"id": "b_2", "box": [0, 0, 1, 1]}]}).encode(),
             {}, 404, "not_found", "queries"),
            ("POST", "/v1/labels", b"x" * 70000, {}, 413, "too_large", None),
        ]
        for method, path, body, hdrs, status, code, field in cases:
            st, hd, rb = http(port, method, path, body, hdrs)
            try:
                got = error_of(rb)
            except Exception:
                got = (None, rb[:80], None)
            ok = st == status and got[0] == code and (field is None or got[2] == field)
            if status == 405:
                ok = ok and hd.get("Allow") == "GET, HEAD"
            if path.startswith("/v1/labels") and method == "POST" and status == 404:
                ok = ok and "'a_1'" in got[1] and "'b_2'" in got[1]
            check(ok, "%s %s -> %d %s %s (got %d %s)" % (method, path[:40], status, code, field, st, got))
            check(alive(), "serving after %s %s" % (method, path[:40]))

        # Request ids: the client's is echoed, otherwise one is made; errors
        # are logged with theirs.
        st, hd, _ = http(port, "GET", "/livez", headers={"X-Request-Id": "trainer-7.42"})
        check(hd.get("X-Request-Id") == "trainer-7.42", "client request id echoed")
        st, hd, _ = http(port, "GET", "/v1/labels/zz_9?box=0,0,1,1", headers={"X-Request-Id": "bad id!"})
        rid = hd.get("X-Request-Id", "")
        check(st == 404 and rid and rid != "bad id!", "unsafe request id replaced (%r)" % rid)
        logged = [json.loads(l) for l in open(logname) if '"request"' in l]
        check(any(e.get("request_id") == rid and e.get("status") == 404 and e.get("path") == "/v1/labels/zz_9"
                  for e in logged), "error request logged with its id")

        # Framing attacks, on raw sockets.
        smuggling = [
            (b"POST /v1/labels HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
             "400", "duplicate Content-Length"),
            (b"POST /v1/labels HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
             "400", "Content-Length with Transfer-Encoding"),
            (b"POST /v1/labels HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
             "400", "Transfer-Encoding gzip"),
            (b"POST /v1/labels HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
             "411", "chunked body without length"),
            (b"POST /v1/labels HTTP/1.1\r\nHost: x\r\n\r\n", "411", "POST without length"),
            (b"POST /v1/labels HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
             "413", "lying huge Content-Length, decided before the body"),
        ]
        for data, status, what in smuggling:
            line = raw(port, data)
            check(status in line, "%s -> %s (got %r)" % (what, status, line))
            check(alive(), "serving after " + what)
        # Keep-alive: two requests on one connection, two answers.
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\nGET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        got, deadline = b"", time.time() + 3
        while got.count(b"HTTP/1.1 200") < 2 and time.time() < deadline:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        s.close()
        check(got.count(b"HTTP/1.1 200") == 2, "keep-alive serves two requests on one connection")
    finally:
        code = stop_daemon(p)
    check(code == 0, "SIGTERM: exit 0 (got %s)" % code)
    events = [json.loads(l)["event"] for l in open(logname)]
    check("draining" in events and events[-1] == "stopped", "drain logged: %s" % events[-3:])

    # Bearer token: required on /v1/, not on health checks; never logged.
    token = "s3cret-token-for-e2e"
    tf = os.path.join(TMP, "token")
    open(tf, "w").write(token + "\n")
    p, port, logname = start_daemon(store, "--token-file", tf)
    try:
        path = "/v1/labels/%s?box=0,0,1,1" % ids[0]
        st, hd, body = http(port, "GET", path)
        check(st == 401 and error_of(body)[0] == "unauthorized" and hd.get("WWW-Authenticate") == "Bearer",
              "no token -> 401 with WWW-Authenticate (got %d)" % st)
        for bad in ("Bearer wrong", "Bearer " + token[:-1], "Bearer " + token + "x", token, "Basic " + token):
            st, _, body = http(port, "GET", path, headers={"Authorization": bad})
            check(st == 401, "bad token %r -> 401 (got %d)" % (bad, st))
        st, _, body = http(port, "GET", path, headers={"Authorization": "Bearer " + token})
        check(st == 200 and json.loads(body)["id"] == ids[0], "good token -> 200")
        check(http(port, "GET", "/livez")[0] == 200, "livez needs no token")
        check(token not in open(logname).read(), "the token is not logged")
    finally:
        code = stop_daemon(p)
    check(code == 0, "SIGTERM (token daemon): exit 0 (got %s)" % code)
    return summary()


if __name__ == "__main__":
    sys.exit(main())
