#!/usr/bin/python3
"""End-to-end: connection limits and slow clients, and a store made by
`lmap import` from real torch.save files served equal to `lmap get` and to
the saved tensors. Loopback only; every process is stopped by its PID."""
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import torch

from e2e_common import LMAP, TMP, check, start_daemon, stop_daemon, summary


def get(port, path, headers=None):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def main():
    os.makedirs(TMP, exist_ok=True)
    synth = os.path.join(TMP, "limits.lmap")
    subprocess.run([LMAP, "synth", "-o", synth, "--images", "50", "--force", "--no-progress"],
                   check=True, capture_output=True)

    # Slow client: a request that stops half-way is closed after the idle
    # timeout, and the daemon serves others meanwhile.
    p, port, _ = start_daemon(synth, "--idle-timeout", "1", "--threads", "1")
    try:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /livez HTTP/1.1\r\nHo")
        t0 = time.time()
        check(get(port, "/livez")[0] == 200, "serving while a client stalls")
        s.settimeout(5)
        try:
            closed = s.recv(100) == b""
        except (ConnectionResetError, socket.timeout):
            closed = True
        waited = time.time() - t0
        check(closed and 0.5 < waited < 4, "stalled client closed after the idle timeout (%.1fs)" % waited)
        s.close()
    finally:
        check(stop_daemon(p) == 0, "exit 0 (slow client daemon)")

    # Too many connections: the one over the limit is turned away, the
    # others are unaffected, and the slot frees when a client leaves.
    p, port, _ = start_daemon(synth, "--max-connections", "4", "--threads", "1", "--idle-timeout", "30")
    try:
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        time.sleep(0.2)
        try:
            status, _ = get(port, "/livez")
        except Exception as e:  # closed or reset by the server: turned away
            status = type(e).__name__
        check(status != 200, "fifth connection turned away (got %s)" % status)
        held[0].sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        held[0].settimeout(5)
        check(b"200 OK" in held[0].recv(4096), "held connections still served")
        for h in held:
            h.close()
        time.sleep(0.3)
        check(get(port, "/livez")[0] == 200, "served again once clients left")
    finally:
        check(stop_daemon(p) == 0, "exit 0 (limited daemon)")

    # A store made by lmap import from real torch.save files.
    src = os.path.join(TMP, "limits-src", "n01")
    os.makedirs(src, exist_ok=True)
    g = torch.Generator().manual_seed(11)
    tensors = {}
    for i in range(6):
        scores = torch.randn(5, 15, 15, generator=g) * 3 + 2
        classes = torch.stack([torch.randperm(1000, generator=g)[:5] for _ in range(225)], 1)
        t = torch.stack([scores, classes.reshape(5, 15, 15).float()])
        name = "n01_%d" % i
        torch.save(t, os.path.join(src, name + ".pt"), _use_new_zipfile_serialization=bool(i % 2))
        tensors[name] = t
    store = os.path.join(TMP, "limits-import.lmap")
    subprocess.run([LMAP, "import", os.path.dirname(src), "-o", store, "--encoding", "f32",
                    "--force", "--no-progress"], check=True, capture_output=True)
    p, port, _ = start_daemon(store)
    try:
        for name, t in tensors.items():
            st, body = get(port, "/v1/maps/" + name, {"Accept": "application/x-npy"})
            arr = np.load(io.BytesIO(body))
            check(st == 200 and np.array_equal(arr, t.numpy()), "imported map %s served exactly" % name)
            q = "box=0.1,0.2,0.8,0.7&format=sparse&output_size=2"
            st, body = get(port, "/v1/labels/%s?%s" % (name, q))
            want = subprocess.run([LMAP, "get", store, name, "--box", "0.1,0.2,0.8,0.7", "--format",
                                   "sparse", "--output-size", "2"], capture_output=True, text=True,
                                  check=True).stdout
            check(st == 200 and json.loads(body) == json.loads(want), "imported %s label equals lmap get" % name)
    finally:
        check(stop_daemon(p) == 0, "exit 0 (import store daemon)")
    return summary()


if __name__ == "__main__":
    sys.exit(main())
