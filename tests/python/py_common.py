"""Shared helpers of the Python-binding tests (not a test itself: ctest runs
only test_*.py).

Sets the environment a test needs when run by hand from the source tree
(ctest sets LMAP_BIN, LMAPD_BIN, LMAP_TEST_TMP and LMAP_LIBRARY itself), puts
client/python, tests/e2e and tests/oracle on sys.path, and keeps a registry
of the lmapd processes a test started so that every one is stopped by its
PID, on success or failure (Daemons is a context manager).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.dont_write_bytecode = True  # keep the source tree clean under ctest,
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"  # also in spawned workers and subprocesses

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BUILD = os.path.join(ROOT, "build")
os.environ.setdefault("LMAP_BIN", os.path.join(BUILD, "lmap"))
os.environ.setdefault("LMAPD_BIN", os.path.join(BUILD, "lmapd"))
os.environ.setdefault("LMAP_TEST_TMP", os.path.join(BUILD, "tests", "tmp", "python"))
if not os.environ.get("LMAP_LIBRARY"):
    os.environ["LMAP_LIBRARY"] = os.path.join(BUILD, "client", "liblmap.so.1")

for p in (os.path.join(ROOT, "client", "python"), os.path.join(ROOT, "tests", "e2e"),
          os.path.join(ROOT, "tests", "oracle")):
    if p not in sys.path:
        sys.path.insert(0, p)

import e2e_common  # noqa: E402

LMAP = os.environ["LMAP_BIN"]
TMP = os.environ["LMAP_TEST_TMP"]


def scratch(name):
    """A fresh private directory under LMAP_TEST_TMP."""
    os.makedirs(TMP, exist_ok=True)
    return tempfile.mkdtemp(prefix=name + ".", dir=TMP)


def lmap(*args, timeout=300):
    """Runs the lmap tool; returns (exit code, stdout bytes, stderr text)."""
    p = subprocess.run([LMAP] + [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def lmap_ok(*args, timeout=300):
    rc, out, err = lmap(*args, timeout=timeout)
    if rc != 0:
        raise SystemExit("lmap %s failed (exit %d): %s" % (" ".join(map(str, args)), rc, err.strip()))
    return out


class Daemons:
    """Starts lmapd processes and stops every one of them (by PID) on exit."""

    def __init__(self):
        self.procs = []

    def start(self, store, *extra):
        """Returns (url, process). A short --grace: a test that forgets to
        close a connection costs 5 s at stop, not 30."""
        p, port, _log = e2e_common.start_daemon(store, "--grace", "5", *extra)
        self.procs.append(p)
        return "http://127.0.0.1:%d" % port, p

    def stop(self, p):
        rc = e2e_common.stop_daemon(p)
        if p in self.procs:
            self.procs.remove(p)
        return rc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in list(self.procs):
            rc = self.stop(p)
            if rc not in (0,):
                print("note: lmapd pid %d ended with %r" % (p.pid, rc))
        return False


def metrics(url):
    """The daemon's /metrics as {sample name with labels: float}."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode("utf-8")
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


def dead_url():
    """A loopback URL where nothing listens (a port just released)."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return "http://127.0.0.1:%d" % port


class Checker:
    """Counts checks; prints failures; summary() gives the exit code."""

    def __init__(self, name):
        self.name = name
        self.n = 0
        self.failures = []
        self.maxerr = {}
        self.t0 = time.monotonic()

    def check(self, cond, what):
        self.n += 1
        if not cond:
            self.failures.append(what)
            if len(self.failures) <= 40:
                print("FAIL:", what, flush=True)
        return bool(cond)

    def err(self, key, value):
        self.maxerr[key] = max(self.maxerr.get(key, 0.0), float(value))

    def raises(self, exc_type, fn, what):
        """Checks that fn() raises exc_type; returns the exception or None."""
        try:
            fn()
        except exc_type as e:
            self.check(True, what)
            return e
        except Exception as e:  # noqa: BLE001 - report what came instead
            self.check(False, "%s: raised %s: %s" % (what, type(e).__name__, e))
            return None
        self.check(False, "%s: nothing raised" % what)
        return None

    def summary(self, scratch_dir=None):
        """Prints the summary; removes scratch_dir on success (kept and
        named on failure). Returns the exit code."""
        if scratch_dir:
            if self.failures:
                print("scratch kept: " + scratch_dir)
            else:
                shutil.rmtree(scratch_dir, ignore_errors=True)
        print("---- %s summary (%.1f s) ----" % (self.name, time.monotonic() - self.t0))
        for k in sorted(self.maxerr):
            print("max error %-55s %.3g" % (k, self.maxerr[k]))
        print("%d checks, %d failed" % (self.n, len(self.failures)))
        print("FAIL" if self.failures else "PASS")
        return 1 if self.failures else 0


def items(stdout):
    return [json.loads(l) for l in stdout.split(b"\n") if l.strip()]
