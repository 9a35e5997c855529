#!/usr/bin/python3
"""End-to-end: what lmapd tells systemd (Type=notify), read from the
NOTIFY_SOCKET datagram socket this test binds: READY=1 only once the store
is open and the port answers, RELOADING=1 then READY=1 around a SIGHUP swap
(STATUS naming the new store's records and id), READY=1 with the reason
after a failed reload, STOPPING=1 when SIGTERM starts the drain; and no
READY=1 at all from a daemon whose store does not open. Runs on
127.0.0.1; every process is stopped by its PID."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from e2e_common import LMAP, LMAPD, TMP, check, launch, stop_daemon, summary


def messages(sock, want, seconds=10):
    """Datagrams until one holds `want` (a line such as READY=1)."""
    got = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            m = sock.recv(4096).decode()
        except socket.timeout:
            break
        got.append(m)
        if want in m.split("\n"):
            break
    return got


def main():
    work = os.path.join(TMP, "notify")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    a, b = os.path.join(work, "a.lmap"), os.path.join(work, "b.lmap")
    for path, n, seed in ((a, 100, 1), (b, 140, 2)):
        subprocess.run([LMAP, "synth", "-o", path, "--images", str(n), "--seed", str(seed),
                        "--force", "--no-progress"], check=True, capture_output=True)
    served = os.path.join(work, "served.lmap")
    shutil.copyfile(a, served)
    path = os.path.join(work, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    env = {"NOTIFY_SOCKET": path}
    p, port, _ = launch([LMAPD, "--store", served, "--listen", "127.0.0.1:0"], env=env)
    try:
        got = messages(sock, "READY=1")
        ready = [m for m in got if "READY=1" in m.split("\n")]
        check(len(ready) == 1 and "STATUS=serving 100 records of store " in ready[0]
              and "on port %d" % port in ready[0], "READY=1 with its status: %r" % got)
        with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % port, timeout=5) as r:
            check(r.status == 200, "ready when READY=1 was sent")

        shutil.copyfile(b, served + ".new")
        os.rename(served + ".new", served)
        p.send_signal(signal.SIGHUP)
        got = messages(sock, "READY=1")
        check(len(got) == 2 and "RELOADING=1" in got[0].split("\n")
              and "MONOTONIC_USEC=" in got[0] and "READY=1" in got[1].split("\n")
              and "STATUS=serving 140 records of store " in got[1],
              "RELOADING=1, then READY=1 on the new store: %r" % got)

        with open(served + ".new", "w") as f:
            f.write("not a store\n")
        os.rename(served + ".new", served)
        p.send_signal(signal.SIGHUP)
        got = messages(sock, "READY=1")
        check(len(got) == 2 and "RELOADING=1" in got[0] and
              "STATUS=reload failed, still serving the previous store: " in got[1]
              and "not an LMDB file" in got[1], "failed reload: READY=1 with why: %r" % got)

        p.send_signal(signal.SIGTERM)
        got = messages(sock, "STOPPING=1")
        check(got and "STOPPING=1" in got[-1].split("\n"), "STOPPING=1 on SIGTERM: %r" % got)
        check(p.wait(timeout=30) == 0, "exit 0")
    finally:
        stop_daemon(p)

    # A store that does not open: lmapd exits 1 and never says READY=1.
    q = subprocess.Popen([LMAPD, "--store", os.path.join(work, "missing.lmap"), "--listen",
                          "127.0.0.1:0"], env=dict(os.environ, **env),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        code = q.wait(timeout=30)
    finally:
        stop_daemon(q)
    got = messages(sock, "READY=1", seconds=0.5)
    check(code == 1 and not any("READY=1" in m for m in got), "no READY=1 from a failed start: %r" % got)
    sock.close()
    return summary()


if __name__ == "__main__":
    sys.exit(main())
