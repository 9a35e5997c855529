"""Shared helpers of the e2e tests: the binaries, a check counter, and
starting / stopping the real lmapd on an ephemeral loopback port."""
import json
import os
import signal
import subprocess
import tempfile
import time

LMAP = os.environ.get("LMAP_BIN", "build/lmap")
LMAPD = os.environ.get("LMAPD_BIN", "build/lmapd")
TMP = os.environ.get("LMAP_TEST_TMP", tempfile.gettempdir())

failures = []
counted = [0]


def check(cond, what):
    counted[0] += 1
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def summary():
    """Prints the closing line and returns the exit code."""
    print("%d passed, %d failed" % (counted[0] - len(failures), len(failures)))
    return 1 if failures else 0


def start_daemon(store, *extra):
    """Starts lmapd on 127.0.0.1:0; returns (process, port, log path). The
    daemon's stdout is detached so that it never holds the test runner's
    pipe; its log (stderr) goes to a file."""
    os.makedirs(TMP, exist_ok=True)
    log = os.path.join(TMP, "lmapd-%d.log" % time.monotonic_ns())
    with open(log, "w") as f:
        p = subprocess.Popen([LMAPD, "--store", store, "--listen", "127.0.0.1:0", *extra],
                             stderr=f, stdout=subprocess.DEVNULL)
    for _ in range(250):
        time.sleep(0.02)
        for line in open(log):
            if not line.endswith("\n"):
                break  # still being written
            ev = json.loads(line)
            if ev["event"] == "listening":
                return p, ev["port"], log
        if p.poll() is not None:
            break
    p.kill()
    raise SystemExit("lmapd did not start: " + open(log).read())


def stop_daemon(p, timeout=30):
    """SIGTERM, then the exit code (or "killed" if it did not stop)."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        return "killed"
