#!/usr/bin/python3
"""End-to-end: hostile request heads against the real lmapd, each with its
exact expected answer (in the spirit of h2o's t/40bad-request.t), and after
each one a check that the daemon still serves a good request.

Covered: a NUL byte anywhere in the head (raw, or %00 in the URL: the value
must not be cut there), the Authorization header with a NUL (401), a space
or control byte in the URL, too many query parameters or too long a URL
(libmicrohttpd 0.9.75 used to hang on those), headers near the connection's
memory limit, and garbage request lines (binary, a TLS ClientHello, a bare
method, an unknown version), which must be answered and closed, or closed,
well before the idle timeout. Loopback only; every process is stopped by
its PID."""
import os
import ssl
import subprocess
import sys

from e2e_common import (LMAP, TMP, check, json_error, raw_exchange, start_daemon, stop_daemon,
                        summary)

GOOD = b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def serves(port):
    r = raw_exchange(port, GOOD)
    return r["status"] == 200 and r["body"] == b'{"status":"ok"}'


def get(target, *headers):
    """A GET head with `target` (bytes) and extra header lines."""
    return b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


def params(n):
    return b"&".join(b"a%d=1" % k for k in range(n))


def tls_client_hello():
    """The first flight of a real TLS client, as a browser or curl sends it
    to an https:// URL pointed at a plain-HTTP port."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def expect(port, name, data, want, wait=5.0):
    """want: ("json", status, code) an answer of ours, then close;
    ("json_open", status, code) an answer of ours on a kept-alive connection;
    ("mhd", status) libmicrohttpd's own HTML answer, then close;
    ("close",) closed at once without an answer;
    ("answer_or_close", status) either of those;
    ("ok", status) answered, connection kept alive;
    ("timeout",) no answer, closed by the header timeout."""
    r = raw_exchange(port, data, wait=wait)
    got = "%s closed=%s after %.1fs %r" % (r["status"], r["closed"], r["seconds"], r["body"][:90])
    kind = want[0]
    if kind in ("json", "json_open"):
        code, _ = json_error(r["body"])
        ok = (r["status"] == want[1] and code == want[2] and r["closed"] == (kind == "json")
              and r["headers"].get("content-type") == "application/json")
    elif kind == "mhd":
        ok = r["status"] == want[1] and r["closed"]
    elif kind == "close":
        ok = r["status"] is None and r["closed"]
    elif kind == "answer_or_close":
        ok = r["closed"] and r["status"] in (None, want[1])
    elif kind == "ok":
        ok = r["status"] == want[1] and not r["closed"]
    else:  # timeout
        ok = r["status"] is None and r["closed"]
    check(ok, "%s -> %s (got %s)" % (name, want, got))
    check(serves(port), "serving after " + name)
    return r


def main():
    os.makedirs(TMP, exist_ok=True)
    store = os.path.join(TMP, "hostile.lmap")
    subprocess.run([LMAP, "synth", "-o", store, "--images", "20", "--force", "--no-progress"],
                   check=True, capture_output=True)
    ids = subprocess.run([LMAP, "ids", store], check=True, capture_output=True,
                         text=True).stdout.split()
    i = ids[0].encode()

    # Timeouts far longer than any wait below: every answer or close seen
    # here is the daemon's reaction to the input, not a timeout.
    p, port, _ = start_daemon(store, "--header-timeout", "30", "--idle-timeout", "60")
    try:
        check(expect(port, "control: a good label", get(b"/v1/labels/" + i + b"?box=0,0,1,1"),
                     ("ok", 200))["status"] == 200, "control request answered")
        cases = [
            # A NUL must not end a value (item 8).
            ("id%00junk in the path", get(b"/v1/labels/" + i + b"%00junk?box=0,0,1,1"),
             ("json", 400, "bad_request")),
            ("id%00x in a map path", get(b"/v1/maps/" + i + b"%00x"), ("json", 400, "bad_request")),
            ("raw NUL in the path", get(b"/v1/maps/" + i + b"\x00x"), ("json", 400, "bad_request")),
            ("raw NUL in the method", b"GE\x00T /livez HTTP/1.1\r\nHost: x\r\n\r\n",
             ("json", 400, "bad_request")),
            # A method that is not UTF-8 is named with escapes, under its own code.
            ("non-UTF-8 method", b"\xa5 /livez HTTP/1.1\r\nHost: x\r\n\r\n",
             ("json_open", 405, "method_not_allowed")),
            ("box=...%00junk", get(b"/v1/labels/" + i + b"?box=0,0,1,1%00junk"),
             ("json", 400, "bad_request")),
            ("raw NUL in the query", get(b"/v1/labels/" + i + b"?box=0,0,1,1\x00junk"),
             ("json", 400, "bad_request")),
            ("%00 in a parameter name", get(b"/v1/labels/" + i + b"?bo%00x=0,0,1,1"),
             ("json", 400, "bad_request")),
            ("raw NUL then 300 parameters", get(b"/livez\x00junk?" + b"&".join([b"a"] * 300)),
             ("json", 400, "bad_request")),
            ("NUL in a header (not the last)", get(b"/livez", b"X-Request-Id: abc\x00def", b"Accept: */*"),
             ("json", 400, "bad_request")),
            ("NUL in the last header", get(b"/livez", b"X-Trace: t\x00junk"), ("json", 400, "bad_request")),
            ("NUL at the end of the last header", get(b"/livez", b"X-Trace: t\x00"),
             ("json", 400, "bad_request")),
            ("lone CR in a header value", get(b"/livez", b"X-Trace: a\rb"), ("json", 400, "bad_request")),
            ("folded header line", get(b"/livez", b"X-Trace: a", b" b"), ("json", 400, "bad_request")),
            # The URL itself.
            ("space in the URL", b"GET /li vez HTTP/1.1\r\nHost: x\r\n\r\n", ("json", 400, "bad_request")),
            ("control byte in the URL", get(b"/livez\x01"), ("json", 400, "bad_request")),
            # Many query parameters (item 7): answered at once, not hung.
            ("64 parameters", get(b"/v1/info?" + params(64)), ("ok", 200)),
            ("65 parameters", get(b"/v1/info?" + params(65)), ("json", 400, "bad_request")),
            ("300 parameters", get(b"/v1/info?" + params(300)), ("json", 400, "bad_request")),
            ("1000 parameters", get(b"/v1/info?" + params(1000)), ("json", 400, "bad_request")),
            ("5000 parameters (over the connection's memory)", get(b"/v1/info?" + params(5000)),
             ("mhd", 414)),
            ("URL of 4096 bytes", get(b"/livez?x=" + b"v" * (4096 - 9)), ("ok", 200)),
            ("URL of 4097 bytes", get(b"/livez?x=" + b"v" * (4097 - 9)), ("json", 400, "bad_request")),
            # Headers near the connection's 16 KiB.
            ("50 headers of 200 bytes", get(b"/livez", *[b"X-H%d: %s" % (k, b"v" * 200) for k in range(50)]),
             ("ok", 200)),
            ("one header of 15000 bytes", get(b"/livez", b"X-Big: " + b"v" * 15000), ("ok", 200)),
            ("one header of 20000 bytes", get(b"/livez", b"X-Big: " + b"v" * 20000), ("mhd", 431)),
            ("300 short headers", get(b"/livez", *[b"X-H%d: v" % k for k in range(300)]), ("mhd", 431)),
            # Garbage request lines (item 9).
            ("binary junk", bytes(range(256)) * 2, ("mhd", 400)),
            ("a method alone", b"GET\r\n\r\n", ("close",)),
            ("HTTP/9.9", b"GET /livez HTTP/9.9\r\nHost: x\r\n\r\n", ("mhd", 505)),
            ("no version", b"GET /livez\r\nHost: x\r\n\r\n", ("mhd", 400)),
            ("a TLS ClientHello", tls_client_hello(), ("answer_or_close", 400)),
        ]
        for name, data, want in cases:
            expect(port, name, data, want)
    finally:
        check(stop_daemon(p) == 0, "exit 0 (hostile daemon)")

    # The Authorization header: a NUL makes the credential invalid (401),
    # wherever the header is; two of them are ambiguous (400).
    token = b"hostile-token-0123456789"
    tf = os.path.join(TMP, "hostile.token")
    open(tf, "wb").write(token + b"\n")
    p, port, _ = start_daemon(store, "--token-file", tf, "--header-timeout", "30")
    try:
        target = b"/v1/labels/" + i + b"?box=0,0,1,1"
        auth = b"Authorization: Bearer " + token
        for name, data, want in [
            ("good token", get(target, auth), ("ok", 200)),
            ("token NUL junk, not the last header", get(target, auth + b"\x00junk", b"Accept: */*"),
             ("json_open", 401, "unauthorized")),
            ("token NUL junk, the last header", get(target, auth + b"\x00junk"),
             ("json_open", 401, "unauthorized")),
            ("token then NUL", get(target, auth + b"\x00"), ("json_open", 401, "unauthorized")),
            ("two Authorization headers", get(target, auth, auth), ("json", 400, "bad_request")),
        ]:
            expect(port, name, data, want)
    finally:
        check(stop_daemon(p) == 0, "exit 0 (token daemon)")

    # What lmapd cannot answer is closed by the header timeout (1 s here,
    # the idle timeout being 60 s): a line that starts with a NUL (MHD
    # skips it as an empty line), bytes that never end a line, and a NUL
    # hidden before a fake version (MHD 0.9.75 loses its own 431 then).
    p, port, _ = start_daemon(store, "--header-timeout", "1", "--idle-timeout", "60")
    try:
        for name, data in [
            ("a line starting with NUL", b"\x00\x01\x02\xff\xfe\r\n\r\n"),
            ("bytes without a line end", b"\x16\x03\x01" + bytes(range(32, 128))),
            ("NUL, fake version, 300 parameters",
             b"GET /x\x00HTTP/1.1\x00?" + b"&".join([b"a"] * 300) + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        ]:
            expect(port, name, data, ("timeout",), wait=15)
    finally:
        check(stop_daemon(p) == 0, "exit 0 (short header timeout daemon)")
    return summary()


if __name__ == "__main__":
    sys.exit(main())
