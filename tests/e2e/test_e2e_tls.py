#!/usr/bin/python3
"""End-to-end: lmapd serving HTTPS with libmicrohttpd's own TLS
(--tls-cert/--tls-key, or LMAPD_TLS_CERT/_KEY), with a self-signed
certificate made here by openssl: Python's ssl (verifying against the
certificate) gets the same answers as `lmap get`; liblmap verifies through
libcurl (`lmap query --cacert`, the Python binding's ca_file), refuses the
server without the CA and names why; `lmap query --ready` finds this host's
lmapd over https from LMAPD_LISTEN and LMAPD_TLS_CERT; plain HTTP on the TLS
port is refused without harm; lmap pull copies the store over https; bad
certificate setups fail at start naming the file. Runs on 127.0.0.1; every
process is stopped by its PID."""
import http.client
import json
import os
import shutil
import ssl
import struct
import subprocess
import sys

from e2e_common import LMAP, LMAPD, TMP, check, launch, stop_daemon, summary

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# A sanitizer build's liblmap cannot be loaded into Python (its runtime must
# come first): the binding's part runs in the regular build only.
BINDING = os.environ.get("LMAP_SANITIZED", "0") != "1"
if BINDING:
    sys.path.insert(0, os.path.join(ROOT, "client", "python"))
    import lmap  # noqa: E402


def run(*args, env=None):
    return subprocess.run([LMAP, *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **(env or {})))


def make_cert(work, name, san="IP:127.0.0.1"):
    key, crt = os.path.join(work, name + ".key"), os.path.join(work, name + ".crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", crt, "-days", "2", "-subj", "/CN=lmap test",
                    "-addext", "subjectAltName=" + san], check=True, capture_output=True)
    return crt, key


def https_get(port, path, ca):
    ctx = ssl.create_default_context(cafile=ca)
    c = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def main():
    work = os.path.join(TMP, "tls")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    store = os.path.join(work, "s.lmap")
    subprocess.run([LMAP, "synth", "-o", store, "--images", "60", "--seed", "3", "--force",
                    "--no-progress"], check=True, capture_output=True)
    ident = run("ids", store).stdout.split()[0]
    crt, key = make_cert(work, "server")
    other, _ = make_cert(work, "other")
    p, port, log = launch([LMAPD, "--store", store, "--listen", "127.0.0.1:0", "--tls-cert", crt,
                           "--tls-key", key, "--serve-store"])
    url = "https://127.0.0.1:%d" % port
    try:
        cfg = [json.loads(l) for l in open(log) if '"config"' in l][0]["config"]
        check(cfg["tls"] == crt, "the config line names the certificate")
        ref = run("get", store, ident, "--box", "0.1,0.1,0.9,0.9").stdout
        st, body = https_get(port, "/v1/labels/%s?box=0.1,0.1,0.9,0.9" % ident, crt)
        check(st == 200 and body + b"\n" == ref.encode(), "HTTPS answer equals lmap get")
        try:
            https_get(port, "/readyz", other)
            check(False, "a client trusting another CA is refused")
        except ssl.SSLError:
            pass
        got = run("query", url, ident, "--box", "0.1,0.1,0.9,0.9", "--cacert", crt)
        check(got.returncode == 0 and got.stdout == ref, "lmap query --cacert: %s" % got.stderr)
        got = run("query", url, ident, "--box", "0,0,1,1", "--retries", "0")
        check(got.returncode == 1 and "certificate" in got.stderr.lower(),
              "liblmap verifies by default: %s" % got.stderr)
        got = run("query", url, ident, "--box", "0,0,1,1", "--cacert", other, "--retries", "0")
        check(got.returncode == 1 and "certificate" in got.stderr.lower(),
              "another CA: refused: %s" % got.stderr)
        got = run("query", url, ident, "--box", "0,0,1,1", "--cacert",
                  os.path.join(work, "missing.pem"))
        check(got.returncode == 2 and "missing.pem" in got.stderr, "a missing CA file named")
        if BINDING:
            with lmap.Client(url, ca_file=crt) as c:
                dense = c.labels([ident], [[0.1, 0.1, 0.9, 0.9]])
            want = json.loads(ref)["probs"]
            check(dense.shape == (1, len(want)) and
                  all(float(a) == struct.unpack("f", struct.pack("f", b))[0]
                      for a, b in zip(dense[0], want)),
                  "the Python binding with ca_file: the same probabilities")
        got = run("query", "--ready", env={"LMAPD_LISTEN": "0.0.0.0:%d" % port,
                                            "LMAPD_TLS_CERT": crt})
        check(got.returncode == 0 and got.stdout == "ready: %s\n" % url,
              "--ready over https from LMAPD_LISTEN and LMAPD_TLS_CERT: %r" % (got,))
        out = os.path.join(work, "pulled.lmap")
        got = run("pull", url + "/v1/store", "-o", out, "--cacert", crt)
        check(got.returncode == 0 and open(out, "rb").read() == open(store, "rb").read(),
              "lmap pull over https: %s" % got.stderr)
        # Plain HTTP on the TLS port: no answer, and the daemon goes on.
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            c.request("GET", "/readyz")
            status = c.getresponse().status
        except (OSError, http.client.HTTPException):
            status = None
        finally:
            c.close()
        check(status is None, "plain HTTP on the TLS port gets no answer (%s)" % status)
        check(https_get(port, "/readyz", crt)[0] == 200, "still serving")
    finally:
        check(stop_daemon(p) == 0, "exit 0")

    # Set up wrong: refused at start, naming the problem.
    _, other_key = make_cert(work, "third")
    junk = os.path.join(work, "junk.pem")
    open(junk, "w").write("not a certificate\n")
    for args, code, what in [
            (["--tls-cert", crt], 2, "go together"),
            (["--tls-cert", os.path.join(work, "none.crt"), "--tls-key", key], 1, "none.crt"),
            (["--tls-cert", junk, "--tls-key", key], 1, "not a PEM file"),
            (["--tls-cert", crt, "--tls-key", other_key], 1, "TLS")]:
        r = subprocess.run([LMAPD, "--store", store, "--listen", "127.0.0.1:0", *args],
                           capture_output=True, text=True, timeout=30)
        check(r.returncode == code and what in r.stderr,
              "%s: exit %d (want %d) %s" % (args, r.returncode, code, r.stderr[-300:]))
    # The variables work as the flags.
    p, port, _ = launch([LMAPD, "--store", store, "--listen", "127.0.0.1:0"],
                        env={"LMAPD_TLS_CERT": crt, "LMAPD_TLS_KEY": key})
    try:
        check(https_get(port, "/readyz", crt)[0] == 200, "LMAPD_TLS_CERT and _KEY")
    finally:
        stop_daemon(p)
    return summary()


if __name__ == "__main__":
    sys.exit(main())
