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

from e2e_common import (LMAP, LMAPD, TMP, check, closed_by_server, launch, log_events, raw_exchange,
                        start_daemon, stop_daemon, summary)

GOOD = b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def connect_from(source, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


def flood_and_probe(synth):
    """Issue 10 item 5: with the default flags, 1,024 idle connections from
    127.0.0.1 (the default --max-connections) must not stop 127.0.0.2 from
    being served: one address holds at most --max-per-ip (256), and
    connections that never send a request go after --header-timeout."""
    p, port, log = start_daemon(synth)
    held = []
    try:
        cfg = log_events(log, "config")[0]["config"]
        check(cfg["max_per_ip"] == 256 and cfg["header_timeout"] == 10 and cfg["max_connections"] == 1024,
              "defaults: 256 per address, 10 s header timeout, 1024 connections (%s)" % cfg)
        t0 = time.monotonic()
        for _ in range(1024):
            try:
                held.append(connect_from("127.0.0.1", port))
            except OSError:
                break
        time.sleep(0.5)
        open_ = [s for s in held if not closed_by_server(s, 0.01)]
        print("flood: %d connections from 127.0.0.1 opened, %d kept by lmapd" % (len(held), len(open_)))
        check(len(held) == 1024 and len(open_) == 256,
              "127.0.0.1 holds its 256 and no more (%d of %d)" % (len(open_), len(held)))
        waits = []
        for k in range(6):
            r = raw_exchange(port, GOOD, wait=5, source="127.0.0.2")
            waits.append(r["seconds"])
            check(r["status"] == 200, "probe %d from 127.0.0.2 served during the flood" % k)
        print("probes from 127.0.0.2 during the flood: %s s" % ", ".join("%.3f" % w for w in waits))
        # The flood never sent a request: the header timeout closes it.
        gone = [closed_by_server(s, max(0.01, 25 - (time.monotonic() - t0))) for s in open_]
        print("flood connections closed by the header timeout %.1f s after they opened"
              % (time.monotonic() - t0))
        check(all(gone), "idle flood closed by the 10 s header timeout (%d of %d)" % (sum(gone), len(gone)))
        # libmicrohttpd's line per refused connection is rate-limited (the
        # count of dropped lines comes with the next line that passes).
        lib = log_events(log, "http_library")
        check(len(lib) < 100, "768 refusals logged in %d lines, not 768" % len(lib))
    finally:
        for s in held:
            s.close()
        check(stop_daemon(p) == 0, "exit 0 (flood daemon)")


def header_timeout(synth):
    """A connection that sends nothing is closed after --header-timeout; one
    that sent a request stays for --idle-timeout and is served again; and a
    per-address limit leaves another address served."""
    p, port, _ = start_daemon(synth, "--header-timeout", "1", "--idle-timeout", "30",
                              "--max-per-ip", "3", "--threads", "1")
    try:
        silent = connect_from("127.0.0.1", port)
        kept = connect_from("127.0.0.1", port)
        kept.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        check(b"200 OK" in kept.recv(4096), "kept-alive connection answered")
        t0 = time.monotonic()
        check(closed_by_server(silent, 10), "silent connection closed")
        waited = time.monotonic() - t0
        print("silent connection closed after %.2f s (--header-timeout 1)" % waited)
        check(waited < 5, "closed by the 1 s header timeout, not the 30 s idle timeout (%.1f s)" % waited)
        time.sleep(1.5)  # past the header timeout: the kept one has the idle timeout
        kept.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        check(b"200 OK" in kept.recv(4096), "kept-alive connection still served after the header timeout")
        more = [connect_from("127.0.0.1", port) for _ in range(3)]
        time.sleep(0.2)
        refused = [s for s in more if closed_by_server(s, 0.3)]
        check(len(refused) == 1, "--max-per-ip 3: the fourth connection from 127.0.0.1 refused (%d)" % len(refused))
        r = raw_exchange(port, GOOD, source="127.0.0.2")
        check(r["status"] == 200, "127.0.0.2 served while 127.0.0.1 is at its limit")
        for s in more + [kept]:
            s.close()
    finally:
        check(stop_daemon(p) == 0, "exit 0 (header timeout daemon)")


def close_wait_sockets(port):
    """Sockets on the server's port that the client closed but the server
    has not (TCP state CLOSE_WAIT, 08 in /proc/net/tcp)."""
    n = 0
    for line in open("/proc/net/tcp").readlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "08":
            n += 1
    return n


def socket_descriptors(pid):
    n = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            n += os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("socket:")
        except FileNotFoundError:  # closed since the listing
            pass
    return n


def abandoned_requests(synth):
    """A client that sends part of a request and closes: the server sees the
    end of the stream and closes its side at once, not after the header
    timeout (MHD's epoll mode missed that end, and the soak ended with
    dozens of sockets in CLOSE_WAIT and a drain that timed out)."""
    p, port, _ = start_daemon(synth, "--header-timeout", "20", "--idle-timeout", "30",
                              "--threads", "3")
    try:
        # Sockets only: the control loop opens its pipes and eventfds just
        # after the `listening` line, so a count of every descriptor races
        # with start on a loaded machine.
        fds = lambda: socket_descriptors(p.pid)
        before = fds()
        # The part and the end arrive together: a head cut short, and a
        # body cut short (a started request, which the drain waits for).
        parts = [b"GET /v1/labels/x?box=0,0,1,1 HTTP/1.1\r\nHo",
                 b"POST /v1/labels HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"items\""]
        for i in range(40):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(parts[i % len(parts)])
            s.close()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and (close_wait_sockets(port) or fds() > before):
            time.sleep(0.05)
        check(close_wait_sockets(port) == 0 and fds() == before,
              "40 abandoned requests: no socket left in CLOSE_WAIT (%d), socket descriptors %d (before %d)"
              % (close_wait_sockets(port), fds(), before))
        t0 = time.monotonic()
        code = stop_daemon(p)
        check(code == 0, "SIGTERM after abandoned requests: exit %s in %.1f s" % (code, time.monotonic() - t0))
    finally:
        stop_daemon(p)


def open_files(synth):
    """The open-file limit is raised to what --max-connections needs, and a
    limit the process cannot have is refused at start."""
    import resource

    def limit(soft, hard):
        return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    argv = [LMAPD, "--store", synth, "--listen", "127.0.0.1:0", "--max-connections", "1024"]
    p, port, log = launch(argv, preexec_fn=limit(256, 4096))
    try:
        ev = log_events(log, "listening")[0]
        soft = int([l.split()[3] for l in open("/proc/%d/limits" % p.pid) if l.startswith("Max open files")][0])
        check(ev["open_files_limit_was"] == 256 and ev["open_files_limit"] >= 1024 and soft == ev["open_files_limit"],
              "soft limit 256 raised to %s for 1024 connections" % soft)
    finally:
        check(stop_daemon(p) == 0, "exit 0 (raised limit daemon)")
    r = subprocess.run(argv, preexec_fn=limit(256, 512), capture_output=True, text=True, timeout=30)
    errors = [json.loads(l) for l in r.stderr.splitlines() if '"error"' in l]
    check(r.returncode == 1 and errors and "--max-connections 1024" in errors[0]["message"]
          and "512" in errors[0]["message"],
          "hard limit 512 < 1024 connections: exit 1 naming both (%d %r)" % (r.returncode, r.stderr[-300:]))


def token_files(synth):
    """Issue 10 item 10: a token longer than 4,095 bytes is refused at start,
    naming the file; one of exactly 4,095 bytes works."""
    import urllib.error
    big = os.path.join(TMP, "token-5000")
    open(big, "w").write("t" * 5000 + "\n")
    r = subprocess.run([LMAPD, "--store", synth, "--listen", "127.0.0.1:0", "--token-file", big],
                       capture_output=True, text=True, timeout=30)
    check(r.returncode == 1 and big in r.stderr and "longer than 4095 bytes" in r.stderr,
          "5,000-byte token file: exit 1 naming it (%d %r)" % (r.returncode, r.stderr[-300:]))
    nul = os.path.join(TMP, "token-nul")
    open(nul, "wb").write(b"abc\x00def\n")
    r = subprocess.run([LMAPD, "--store", synth, "--listen", "127.0.0.1:0", "--token-file", nul],
                       capture_output=True, text=True, timeout=30)
    check(r.returncode == 1 and nul in r.stderr and "NUL" in r.stderr, "token with a NUL byte refused")
    token = "k" * 4094 + "Z"
    exact = os.path.join(TMP, "token-4095")
    open(exact, "w").write(token + "  \nsecond line ignored\n")
    p, port, _ = start_daemon(synth, "--token-file", exact)
    try:
        st, _ = get(port, "/v1/info", {"Authorization": "Bearer " + token})
        check(st == 200, "4,095-byte token accepted (%s)" % st)
        st, _ = get(port, "/v1/info", {"Authorization": "Bearer " + token[:-1]})
        check(st == 401, "the token cut by one byte refused (%s)" % st)
    finally:
        check(stop_daemon(p) == 0, "exit 0 (4095-byte token daemon)")


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

    flood_and_probe(synth)
    header_timeout(synth)
    abandoned_requests(synth)
    open_files(synth)
    token_files(synth)

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
