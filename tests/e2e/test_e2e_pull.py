#!/usr/bin/python3
"""End-to-end: store distribution. lmapd --serve-store sends its store file
at GET /v1/store (ETag = the store's id, one Range, If-Range, HEAD, 416,
404 when off, behind the token), and `lmap pull` copies a store from it and
from nginx, resumes a transfer killed halfway, refuses a copy with a byte
changed in transit (nothing left at the target, an existing target
untouched), starts over when the server's file changed between two pulls,
and installs by rename so that a SIGHUP serves the copy. A small proxy in
this test slows the transfer and damages it on demand. Everything runs on
127.0.0.1; every process is stopped by its PID."""
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time

from e2e_common import LMAP, TMP, check, start_daemon, stop_daemon, summary


def run(*args, timeout=120):
    return subprocess.run([LMAP, *args], capture_output=True, text=True, timeout=timeout)


def request(port, method, path, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request(method, path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def synth(path, images, seed):
    subprocess.run([LMAP, "synth", "-o", path, "--images", str(images), "--seed", str(seed),
                    "--force", "--no-progress"], check=True, capture_output=True)


class Proxy:
    """Forwards GETs to 127.0.0.1:upstream with their Range and If-Range,
    sending the answer's body at `rate` bytes/s and, when `flip_at` is set,
    with the byte at that file offset changed."""

    def __init__(self, upstream):
        self.upstream, self.rate, self.flip_at = upstream, None, None
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                fwd = {k: v for k, v in self.headers.items()
                       if k.lower() in ("range", "if-range", "authorization")}
                c = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=30)
                c.request("GET", self.path, headers=fwd)
                r = c.getresponse()
                first = 0
                cr = r.getheader("Content-Range")
                if cr and cr.startswith("bytes ") and "-" in cr:
                    first = int(cr[6:].split("-")[0])
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("connection", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Connection", "close")
                self.end_headers()
                pos = first
                try:
                    while True:
                        chunk = r.read(65536)
                        if not chunk:
                            break
                        if proxy.flip_at is not None and pos <= proxy.flip_at < pos + len(chunk):
                            b = bytearray(chunk)
                            b[proxy.flip_at - pos] ^= 0x40
                            chunk = bytes(b)
                        self.wfile.write(chunk)
                        pos += len(chunk)
                        if proxy.rate:
                            time.sleep(len(chunk) / proxy.rate)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                c.close()

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def start_nginx(root):
    """nginx serving `root` on a free loopback port; returns (process, port)."""
    conf_dir = os.path.join(TMP, "pull-nginx")
    os.makedirs(conf_dir, exist_ok=True)
    for _ in range(20):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        conf = os.path.join(conf_dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""daemon off; worker_processes 1; pid %(d)s/nginx.pid;
error_log %(d)s/error.log;
events { worker_connections 64; }
http { access_log off; client_body_temp_path %(d)s; proxy_temp_path %(d)s;
  fastcgi_temp_path %(d)s; uwsgi_temp_path %(d)s; scgi_temp_path %(d)s;
  server { listen 127.0.0.1:%(p)d; root %(r)s; } }
""" % {"d": conf_dir, "p": port, "r": root})
        p = subprocess.Popen(["nginx", "-c", conf, "-p", conf_dir], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        for _ in range(50):
            time.sleep(0.05)
            try:
                if request(port, "HEAD", "/")[0] in (200, 403, 404):
                    return p, port
            except OSError:
                pass
            if p.poll() is not None:
                break
        p.kill()
        p.wait()
    raise SystemExit("nginx did not start: " + open(os.path.join(conf_dir, "error.log")).read())


def same(a, b):
    with open(a, "rb") as f, open(b, "rb") as g:
        return f.read() == g.read()


def main():
    work = os.path.join(TMP, "pull")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    a, b = os.path.join(work, "a.lmap"), os.path.join(work, "b.lmap")
    synth(a, 3000, 31)
    synth(b, 500, 32)
    size_a = os.path.getsize(a)
    token = os.path.join(work, "token")
    with open(token, "w") as f:
        f.write("pull-secret\n")
    served = os.path.join(work, "served.lmap")
    shutil.copyfile(a, served)
    d, port, _ = start_daemon(served, "--serve-store")
    off, off_port, _ = start_daemon(a)
    tok, tok_port, _ = start_daemon(b, "--serve-store", "--token-file", token)
    nginx, nginx_port = start_nginx(work)
    proxy = Proxy(port)
    procs = [d, off, tok]
    try:
        # GET /v1/store: the file, its id as ETag and X-Lmap-Store.
        st, h, body = request(port, "GET", "/v1/store")
        info = json.loads(request(port, "GET", "/v1/info")[2])
        check(st == 200 and body == open(a, "rb").read() and
              h["content-type"] == "application/octet-stream" and
              h["accept-ranges"] == "bytes", "GET /v1/store sends the file")
        etag = h.get("etag", "")
        check(etag == '"%s"' % h.get("x-lmap-store") and len(etag) == 18,
              "ETag is the store's id: %s" % etag)
        check(info["file_bytes"] == size_a, "file_bytes agrees")
        metrics = request(port, "GET", "/metrics")[2].decode()
        check('lmap_store_info{store=%s,' % etag in metrics, "lmap_store_info names the store id")
        # The same bytes under another daemon: the same id; other bytes: another.
        st, h2, _ = request(off_port, "GET", "/v1/info")
        check(h2.get("x-lmap-store") == etag.strip('"'), "same bytes, same id elsewhere")
        st, h3, _ = request(tok_port, "GET", "/v1/info", {"Authorization": "Bearer pull-secret"})
        check(h3.get("x-lmap-store") not in (None, etag.strip('"')), "another store, another id")
        data = open(a, "rb").read()
        for rng, want, first in [("bytes=100-199", data[100:200], 100),
                                 ("bytes=%d-" % (size_a - 10), data[-10:], size_a - 10),
                                 ("bytes=-25", data[-25:], size_a - 25),
                                 ("bytes=5-%d" % (size_a * 2), data[5:], 5)]:
            st, h, body = request(port, "GET", "/v1/store", {"Range": rng})
            check(st == 206 and body == want and h["content-range"] ==
                  "bytes %d-%d/%d" % (first, first + len(want) - 1, size_a),
                  "Range %s: %d %s" % (rng, st, h.get("content-range")))
        st, h, body = request(port, "GET", "/v1/store", {"Range": "bytes=%d-" % size_a})
        check(st == 416 and h.get("content-range") == "bytes */%d" % size_a and
              json.loads(body)["error"]["field"] == "Range", "416 past the end: %s" % body[:200])
        for ignored in ("bytes=0-1,5-6", "items=0-1", "bytes=9-3", "bytes=x"):
            st, _, body = request(port, "GET", "/v1/store", {"Range": ignored})
            check(st == 200 and len(body) == size_a, "Range %r ignored: whole file" % ignored)
        st, _, body = request(port, "GET", "/v1/store",
                              {"Range": "bytes=0-9", "If-Range": '"0123456789abcdef"'})
        check(st == 200 and len(body) == size_a, "If-Range of another file: the whole file")
        st, _, body = request(port, "GET", "/v1/store", {"Range": "bytes=0-9", "If-Range": etag})
        check(st == 206 and body == data[:10], "If-Range of this file: the part")
        st, h, body = request(port, "HEAD", "/v1/store")
        check(st == 200 and body == b"" and h["content-length"] == str(size_a), "HEAD")
        st, _, body = request(off_port, "GET", "/v1/store")
        check(st == 404 and b"--serve-store" in body, "off by default: %s" % body[:200])
        st, _, _ = request(tok_port, "GET", "/v1/store")
        check(st == 401, "behind the token")

        # lmap pull from lmapd, from nginx, with a token.
        out = os.path.join(work, "pulled.lmap")
        got = run("pull", "http://127.0.0.1:%d/v1/store" % port, "-o", out)
        check(got.returncode == 0 and same(out, a) and "installed" in got.stdout,
              "pull from lmapd: %s" % got.stderr)
        check(not os.path.exists(out + ".part") and not os.path.exists(out + ".part.validator"),
              "nothing left beside the target")
        got = run("pull", "http://127.0.0.1:%d/v1/store" % port, "-o", out)
        check(got.returncode == 1 and "already exists" in got.stderr, "no replace without --force")
        nout = os.path.join(work, "from-nginx.lmap")
        got = run("pull", "http://127.0.0.1:%d/b.lmap" % nginx_port, "-o", nout)
        check(got.returncode == 0 and same(nout, b), "pull from nginx: %s" % got.stderr)
        tout = os.path.join(work, "tok.lmap")
        got = run("pull", "http://127.0.0.1:%d/v1/store" % tok_port, "-o", tout)
        check(got.returncode == 1 and "401" in got.stderr and not os.path.exists(tout),
              "no token: %s" % got.stderr)
        got = run("pull", "http://127.0.0.1:%d/v1/store" % tok_port, "-o", tout,
                  "--token-file", token)
        check(got.returncode == 0 and same(tout, b), "with the token: %s" % got.stderr)
        got = run("pull", "http://127.0.0.1:%d/missing.lmap" % nginx_port, "-o", tout + "x")
        check(got.returncode == 1 and "HTTP 404" in got.stderr, "404: %s" % got.stderr)
        got = run("pull", "http://127.0.0.1:%d/a.lmap" % nginx_port, "-o",
                  os.path.join(work, "no-such-dir", "x.lmap"))
        check(got.returncode == 1 and "no-such-dir" in got.stderr, "unwritable: %s" % got.stderr)

        # Killed halfway, then resumed.
        proxy.rate = size_a / 3  # about 3 s for the whole file
        rout = os.path.join(work, "resumed.lmap")
        p = subprocess.Popen([LMAP, "pull", "http://127.0.0.1:%d/v1/store" % proxy.port, "-o",
                              rout], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if os.path.exists(rout + ".part") and os.path.getsize(rout + ".part") > size_a // 3:
                break
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait()
        had = os.path.getsize(rout + ".part")
        check(size_a // 3 < had < size_a and not os.path.exists(rout),
              "killed halfway: %d of %d bytes in the part" % (had, size_a))
        proxy.rate = None
        got = run("pull", "http://127.0.0.1:%d/v1/store" % proxy.port, "-o", rout)
        check(got.returncode == 0 and "resuming at byte %d" % had in got.stderr and same(rout, a),
              "resumed: %s" % got.stderr)

        # The server's file changed between the two pulls: started over.
        cout = os.path.join(work, "changed.lmap")
        with open(cout + ".part", "wb") as f:
            f.write(data[:size_a // 2])
        with open(cout + ".part.validator", "w") as f:
            f.write(etag + "\n")
        shutil.copyfile(b, served + ".new")
        os.rename(served + ".new", served)
        d.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if json.loads(request(port, "GET", "/v1/info")[2])["record_count"] == 500:
                break
            time.sleep(0.05)
        got = run("pull", "http://127.0.0.1:%d/v1/store" % port, "-o", cout)
        check(got.returncode == 0 and same(cout, b), "changed file: fetched anew: %s" % got.stderr)

        # A byte changed in transit: refused, nothing at the target, and an
        # existing target left as it was.
        proxy.flip_at = os.path.getsize(b) // 2
        bad = os.path.join(work, "damaged.lmap")
        got = run("pull", "http://127.0.0.1:%d/v1/store" % proxy.port, "-o", bad)
        check(got.returncode == 1 and "failed the check" in got.stderr and
              "fails its checksum" in got.stderr, "damaged in transit: %s" % got.stderr)
        check(not any(n.startswith("damaged.lmap") for n in os.listdir(work)),
              "nothing left: %s" % [n for n in os.listdir(work) if n.startswith("damaged")])
        got = run("pull", "http://127.0.0.1:%d/v1/store" % proxy.port, "-o", out, "--force")
        check(got.returncode == 1 and same(out, a), "existing target untouched")
        proxy.flip_at = None

        # Installed by rename: a SIGHUP serves the pulled store.
        got = run("pull", "http://127.0.0.1:%d/a.lmap" % nginx_port, "-o", served, "--force")
        check(got.returncode == 0, "pull over the served path: %s" % got.stderr)
        d.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        n = None
        while time.monotonic() < deadline:
            st, h, body = request(port, "GET", "/v1/info")
            n = json.loads(body)["record_count"]
            if n == 3000:
                break
            time.sleep(0.05)
        check(n == 3000 and h["x-lmap-store"] == etag.strip('"'), "SIGHUP serves the copy")
        for bad_args, what in [(["ftp://x/y", "-o", "z"], "http"), (["http://x/y"], "-o"),
                               ([], "URL")]:
            got = run("pull", *bad_args)
            check(got.returncode == 2 and what in got.stderr, "usage %s: %s" % (bad_args, got.stderr))
    finally:
        proxy.close()
        for p in procs:
            stop_daemon(p)
        nginx.terminate()
        nginx.wait()
    return summary()


if __name__ == "__main__":
    sys.exit(main())
