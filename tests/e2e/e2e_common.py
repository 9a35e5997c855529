"""Shared helpers of the e2e tests: the binaries, a check counter, and
starting / stopping the real lmapd on an ephemeral loopback port."""
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

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


def free_ports(n):
    """`n` loopback ports free now (for servers whose port must be known
    before they start: a balancer's configuration, a restart)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_until(pred, seconds, step=0.05):
    """Polls pred() (an OSError counts as not yet) until it is true; True,
    or False when `seconds` passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if pred():
                return True
        except OSError:
            pass
        time.sleep(step)
    return False


def start_daemon(store, *extra, env=None):
    """Starts lmapd on 127.0.0.1:0; returns (process, port, log path). The
    daemon's stdout is detached so that it never holds the test runner's
    pipe; its log (stderr) goes to a file. `env` adds environment
    variables."""
    return launch([LMAPD, "--store", store, "--listen", "127.0.0.1:0", *extra], env=env)


def launch(argv, env=None, preexec_fn=None):
    """Starts lmapd with exactly `argv` (which must make it listen) and
    waits for its `listening` log line; returns (process, port, log path).
    Raises SystemExit with the log if it does not start."""
    os.makedirs(TMP, exist_ok=True)
    log = os.path.join(TMP, "lmapd-%d.log" % time.monotonic_ns())
    full_env = dict(os.environ, **(env or {}))
    with open(log, "w") as f:
        p = subprocess.Popen(argv, stderr=f, stdout=subprocess.DEVNULL, env=full_env,
                             preexec_fn=preexec_fn)
    try:
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
    except Exception:
        p.kill()  # never leave a daemon behind, whatever went wrong
        p.wait()
        raise
    p.kill()
    p.wait()
    raise SystemExit("lmapd did not start: " + open(log).read())


def log_events(log, name=None):
    """The JSON log lines of a daemon (those named `name` if given)."""
    out = []
    for line in open(log):
        if line.endswith("\n"):
            ev = json.loads(line)
            if name is None or ev.get("event") == name:
                out.append(ev)
    return out


def closed_by_server(s, wait):
    """True when the server closes `s` within `wait` seconds."""
    s.settimeout(wait)
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def raw_exchange(port, data, wait=5.0, source=None):
    """Sends raw bytes on a new connection (from `source`, a loopback
    address, if given) and reads until the server closes or `wait` seconds
    pass. Returns a dict: status (int, or None when no answer), headers
    (lower-case names), body (bytes), closed (the server closed the
    connection), seconds (until close or the wait ended)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if source:
        s.bind((source, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    t0 = time.monotonic()
    got, closed = b"", False
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    deadline = t0 + wait
    while not closed:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        got += chunk
    seconds = time.monotonic() - t0
    s.close()
    status, headers, body = None, {}, b""
    if got.startswith(b"HTTP/"):
        head, _, body = got.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return {"status": status, "headers": headers, "body": body, "closed": closed,
            "seconds": seconds}


def json_error(body):
    """(code, message) of a JSON error body, or (None, the start of the body)."""
    try:
        e = json.loads(body)["error"]
        return e["code"], e["message"]
    except Exception:
        return None, body[:80]


def stop_daemon(p, timeout=30):
    """SIGTERM, then the exit code (or "killed" if it did not stop)."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        return "killed"


def post_labels(port, body, content_type="application/json", query="", accept=None, timeout=30):
    """POST /v1/labels`query` with `body`: (status, Content-Type, body
    bytes), error answers included."""
    req = urllib.request.Request("http://127.0.0.1:%d/v1/labels%s" % (port, query), data=body,
                                 method="POST", headers={"Content-Type": content_type})
    if accept:
        req.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()
