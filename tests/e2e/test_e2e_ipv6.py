#!/usr/bin/python3
"""End-to-end: lmapd on IPv6 (issue 15, part 4). On [::1]:0 it serves
/livez, a label and the store file over ::1 to urllib, `lmap query`,
`lmap pull` and the Python binding (liblmap through libcurl), and logs the
`listening` event with the address without brackets; on [::]:0 (from
LMAPD_LISTEN) it answers on ::1 and, when the kernel lets a socket take
both families (/proc/sys/net/ipv6/bindv6only is 0), on 127.0.0.1 with the
same answers. Every answer says `Server: lmapd/<version>`; --max-per-ip
counts ::1 as one client; listen values that do not parse exit 2 naming
the value, and one that cannot be bound exits 1 naming the address. A
machine without ::1 fails this test: IPv6 is a feature here, not an
option. Talks to ::1 and 127.0.0.1 only; every daemon is stopped by its
PID."""
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

from e2e_common import (LMAP, LMAPD, TMP, check, closed_by_server, launch, log_events, stop_daemon,
                        summary)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# A sanitizer build's liblmap cannot be loaded into Python (its runtime must
# come first): the binding's part runs in the regular build only.
BINDING = os.environ.get("LMAP_SANITIZED", "0") != "1"
if BINDING:
    sys.path.insert(0, os.path.join(ROOT, "client", "python"))
    import lmap  # noqa: E402


def url_of(host, port):
    return "http://[%s]:%d" % (host, port) if ":" in host else "http://%s:%d" % (host, port)


def http(host, port, path):
    """GET `path` from host (::1 or 127.0.0.1): (status, headers, body)."""
    try:
        with urllib.request.urlopen(url_of(host, port) + path, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def run(*args, env=None):
    return subprocess.run([LMAP, *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **(env or {})))


def connect(host, port):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect((host, port))
    return s


def served(s):
    s.settimeout(5)
    s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
    return b"200 OK" in s.recv(4096)


def require_ipv6():
    """Fails the test loudly when this machine has no ::1."""
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
    except OSError as e:
        print("FAIL: IPv6 is not available here (cannot bind ::1: %s); this test needs it" % e)
        sys.exit(1)


def main():
    require_ipv6()
    work = os.path.join(TMP, "ipv6")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    store = os.path.join(work, "s.lmap")
    subprocess.run([LMAP, "synth", "-o", store, "--images", "40", "--seed", "5", "--force",
                    "--no-progress"], check=True, capture_output=True)
    ident = run("ids", store).stdout.split()[0]
    ref = run("get", store, ident, "--box", "0.1,0.2,0.8,0.9").stdout
    label_path = "/v1/labels/%s?box=0.1,0.2,0.8,0.9" % ident
    version = subprocess.run([LMAPD, "--version"], capture_output=True, text=True,
                             check=True).stdout.split()[-1]
    server = "lmapd/" + version
    help_text = subprocess.run([LMAPD, "--help"], capture_output=True, text=True).stdout
    check("HOST:PORT or [IPV6]:PORT" in help_text, "--help names both forms of --listen")
    bindv6only = open("/proc/sys/net/ipv6/bindv6only").read().strip()
    dual = bindv6only == "0"
    if not dual:
        print("net.ipv6.bindv6only is %s: [::] takes IPv6 clients only on this machine, "
              "so its IPv4 half is not checked" % bindv6only)

    # [::1]: the loopback address alone.
    p, port, log = launch([LMAPD, "--store", store, "--listen", "[::1]:0", "--serve-store"])
    try:
        ev = log_events(log, "listening")
        check(len(ev) == 1 and ev[0]["host"] == "::1" and ev[0]["port"] == port and port > 0,
              "listening event: host ::1 without brackets, the bound port (%s)" % ev)
        cfg = log_events(log, "config")[0]["config"]
        check(cfg["listen"] == "[::1]:0", "the config line shows the value given (%s)" % cfg["listen"])
        st, hd, body = http("::1", port, "/livez")
        check(st == 200 and json.loads(body) == {"status": "ok"}, "GET /livez over ::1")
        check(hd.get("Server") == server, "Server header %r, want %r" % (hd.get("Server"), server))
        st, hd, body = http("::1", port, label_path)
        check(st == 200 and body + b"\n" == ref.encode(), "a label over ::1 equals lmap get")
        check(hd.get("Server") == server, "Server header on a label")
        st, hd, body = http("::1", port, "/v1/labels/n99999999_1?box=0,0,1,1")
        check(st == 404 and hd.get("Server") == server, "Server header on a 404 (%d %s)"
              % (st, hd.get("Server")))
        st, hd, _ = http("::1", port, "/v1/labels/x?" + "&".join("a%d=1" % i for i in range(70)))
        check(st == 400 and hd.get("Server") == server,
              "Server header on a request refused at the edge (%d %s)" % (st, hd.get("Server")))
        got = run("query", url_of("::1", port), ident, "--box", "0.1,0.2,0.8,0.9")
        check(got.returncode == 0 and got.stdout == ref,
              "lmap query http://[::1]:PORT equals lmap get: %s" % got.stderr)
        got = run("query", url_of("::1", port) + "/", "--info")
        check(got.returncode == 0 and json.loads(got.stdout)["record_count"] == 40,
              "lmap query http://[::1]:PORT/ --info: %s" % got.stderr)
        got = run("query", "--ready", env={"LMAPD_LISTEN": "[::1]:%d" % port})
        check(got.returncode == 0 and got.stdout == "ready: %s\n" % url_of("::1", port),
              "lmap query --ready from LMAPD_LISTEN=[::1]:PORT: %r" % (got,))
        out = os.path.join(work, "pulled.lmap")
        got = run("pull", url_of("::1", port) + "/v1/store", "-o", out)
        check(got.returncode == 0 and open(out, "rb").read() == open(store, "rb").read(),
              "lmap pull http://[::1]:PORT/v1/store copies the store: %s" % got.stderr)
        if BINDING:
            with lmap.Client(url_of("::1", port)) as c:
                dense = c.labels([ident], [[0.1, 0.2, 0.8, 0.9]])
            want = json.loads(ref)["probs"]
            check(dense.shape == (1, len(want)) and
                  all(float(a) == struct.unpack("f", struct.pack("f", b))[0]
                      for a, b in zip(dense[0], want)),
                  "the Python binding over http://[::1]:PORT: the same probabilities")
        else:
            print("sanitizer build: the Python binding is left out")
    finally:
        check(stop_daemon(p) == 0, "exit 0 ([::1] daemon)")

    # [::] from LMAPD_LISTEN: both families on one socket where allowed.
    p, port, log = launch([LMAPD, "--store", store], env={"LMAPD_LISTEN": "[::]:0"})
    try:
        ev = log_events(log, "listening")
        check(ev and ev[0]["host"] == "::" and ev[0]["port"] == port,
              "listening event for [::]: host :: (%s)" % ev)
        st, hd, _ = http("::1", port, "/livez")
        check(st == 200 and hd.get("Server") == server, "[::] answers on ::1")
        over6 = run("query", url_of("::1", port), ident, "--box", "0.1,0.2,0.8,0.9")
        check(over6.returncode == 0 and over6.stdout == ref, "lmap query over ::1: %s" % over6.stderr)
        if dual:
            st, hd, _ = http("127.0.0.1", port, "/livez")
            check(st == 200 and hd.get("Server") == server, "[::] answers on 127.0.0.1 too")
            over4 = run("query", url_of("127.0.0.1", port), ident, "--box", "0.1,0.2,0.8,0.9")
            check(over4.returncode == 0 and over4.stdout == over6.stdout,
                  "lmap query: the same answer over 127.0.0.1 as over ::1: %s" % over4.stderr)
            print("[::] served ::1 and 127.0.0.1 on port %d" % port)
        got = run("query", "--ready", env={"LMAPD_LISTEN": "[::]:%d" % port})
        check(got.returncode == 0 and got.stdout == "ready: %s\n" % url_of("::1", port),
              "lmap query --ready from LMAPD_LISTEN=[::]:PORT asks ::1: %r" % (got,))
    finally:
        check(stop_daemon(p) == 0, "exit 0 ([::] daemon)")

    # --max-per-ip counts ::1 as one client; 127.0.0.1 (on [::], as
    # ::ffff:127.0.0.1) is another.
    p, port, _ = launch([LMAPD, "--store", store, "--listen", "[::]:0", "--max-per-ip", "2",
                         "--threads", "1"])
    try:
        held = [connect("::1", port) for _ in range(3)]
        time.sleep(0.2)
        refused = [s for s in held if closed_by_server(s, 0.3)]
        check(len(refused) == 1, "--max-per-ip 2: the third connection from ::1 refused (%d)"
              % len(refused))
        kept = [s for s in held if s not in refused]
        check(len(kept) == 2 and all(served(s) for s in kept), "the two others are served")
        if dual:
            other = connect("127.0.0.1", port)
            check(served(other), "127.0.0.1 served while ::1 is at its limit")
            other.close()
        for s in held:
            s.close()
    finally:
        check(stop_daemon(p) == 0, "exit 0 (--max-per-ip daemon)")

    # Values that do not parse: exit 2 naming the value, from the flag and
    # from LMAPD_LISTEN; nothing is served.
    for bad in ("::1:8080", "[::1:8080", "[::1]8080", "[]:8080", "[::1]:65536", "[::1]:",
                "[::1]", "[localhost]:80", "localhost:80", "[127.0.0.1]:80", "::1", "[::1]:-1"):
        for how in ("flag", "env"):
            args, env = ([LMAPD, "--store", store, "--listen", bad], None) if how == "flag" else \
                ([LMAPD, "--store", store], dict(os.environ, LMAPD_LISTEN=bad))
            r = subprocess.run(args, capture_output=True, text=True, timeout=30, env=env)
            check(r.returncode == 2 and ("'%s'" % bad) in r.stderr and "lmapd --help" in r.stderr,
                  "--listen %s (%s): exit 2 naming it (got %d %r)" % (bad, how, r.returncode,
                                                                       r.stderr[-200:]))
    # Parses, but no interface has it (2001:db8::/32 is for documentation).
    r = subprocess.run([LMAPD, "--store", store, "--listen", "[2001:db8::1]:0"],
                       capture_output=True, text=True, timeout=30)
    check(r.returncode == 1 and "[2001:db8::1]:0" in r.stderr,
          "an address that cannot be bound: exit 1 naming it (got %d %r)" % (r.returncode,
                                                                            r.stderr[-300:]))
    return summary()


if __name__ == "__main__":
    sys.exit(main())
