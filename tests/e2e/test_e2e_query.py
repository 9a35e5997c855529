#!/usr/bin/python3
"""End-to-end: `lmap query` (the CLI on liblmap) against the real lmapd.

Its items must equal, byte for byte, what `lmap get` prints from the same
store for the same queries (dense and sparse, G x G, flip, relabel, softmax
off), one at a time and as --batch files whose lines change options midway
(several requests); --info must be the server's /v1/info and --map the .npy
`lmap export` writes. Failures: an unknown id, a bad box, a missing token,
dead endpoints (every one named), bad URLs and flags, each with its exit
code and a message naming the problem. Every process is stopped by PID."""
import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request

from e2e_common import LMAP, TMP, check, start_daemon, stop_daemon, summary


def run(*args, stdin=None):
    return subprocess.run([LMAP, *args], capture_output=True, text=True, input=stdin,
                          timeout=60)


def main():
    os.makedirs(TMP, exist_ok=True)
    store = os.path.join(TMP, "query.lmap")
    subprocess.run([LMAP, "synth", "-o", store, "--images", "120", "--seed", "9", "--force",
                    "--no-progress"], check=True, capture_output=True)
    ids = run("ids", store).stdout.split()
    token_file = os.path.join(TMP, "query.token")
    with open(token_file, "w") as f:
        f.write("s3cret-token\n")
    d, port, _ = start_daemon(store)
    dt, tport, _ = start_daemon(store, "--token-file", token_file)
    url = "http://127.0.0.1:%d" % port
    try:
        rng = random.Random(3)
        # Single queries: every option combination against `lmap get`.
        variants = [[], ["--format", "sparse"], ["--output-size", "3"],
                    ["--output-size", "2", "--flip", "--format", "sparse"], ["--no-softmax"],
                    ["--box-format", "relabel"], ["--flip", "--no-softmax", "--format", "sparse"]]
        for opts in variants:
            for _ in range(3):
                ident = rng.choice(ids)
                if "relabel" in opts:
                    a, b = rng.uniform(0, 0.5), rng.uniform(0, 0.5)
                    box = [a, b, rng.uniform(0.05, 1 - a), rng.uniform(0.05, 1 - b)]
                else:
                    x0, y0 = rng.uniform(0, 0.6), rng.uniform(0, 0.6)
                    box = [x0, y0, rng.uniform(x0 + 0.05, 1), rng.uniform(y0 + 0.05, 1)]
                boxarg = ",".join("%.17g" % v for v in box)
                ref = run("get", store, ident, "--box", boxarg, *opts)
                got = run("query", url, ident, "--box", boxarg, *opts)
                check(ref.returncode == 0 and got.returncode == 0,
                      "query %s %s exit %d: %s" % (ident, opts, got.returncode, got.stderr))
                check(got.stdout == ref.stdout and got.stdout.startswith("{\"id\""),
                      "query %s %s differs from lmap get" % (ident, opts))

        # A batch file whose options change midway: the same lines as get --queries.
        lines = []
        for i in range(700):
            x0, y0 = rng.uniform(0, 0.6), rng.uniform(0, 0.6)
            q = {"id": rng.choice(ids),
                 "box": [x0, y0, rng.uniform(x0 + 0.05, 1), rng.uniform(y0 + 0.05, 1)],
                 "flip": rng.random() < 0.5}
            if i >= 400:
                q["format"] = "sparse"
            if i >= 600:
                q["output_size"] = 2
            lines.append(json.dumps(q))
        batch = os.path.join(TMP, "query-batch.jsonl")
        with open(batch, "w") as f:
            f.write("\n".join(lines) + "\n")
        ref = run("get", store, "--queries", batch)
        got = run("query", url, "--batch", batch, "--batch-size", "128")
        check(got.returncode == 0, "batch exit %d: %s" % (got.returncode, got.stderr))
        check(got.stdout == ref.stdout and got.stdout.count("\n") == 700,
              "batch output differs from lmap get --queries")
        got = run("query", url, "--batch", "-", stdin="\n".join(lines[:5]) + "\n")
        check(got.stdout == "".join(ref.stdout.splitlines(True)[:5]), "batch from stdin")

        # --info and --map.
        got = run("query", url, "--info")
        with urllib.request.urlopen(url + "/v1/info", timeout=10) as r:
            served = json.loads(r.read())
        check(got.returncode == 0 and json.loads(got.stdout) == served, "--info is /v1/info")
        m1, m2 = os.path.join(TMP, "q-map.npy"), os.path.join(TMP, "q-export.npy")
        got = run("query", url, "--map", ids[7], "-o", m1)
        run("export", store, ids[7], "-o", m2)
        check(got.returncode == 0 and open(m1, "rb").read() == open(m2, "rb").read(),
              "--map writes what lmap export writes: %s" % got.stderr)

        # Failover: a dead endpoint first, then the live one.
        got = run("query", "http://127.0.0.1:1," + url, ids[0], "--box", "0,0,1,1",
                  "--format", "sparse")
        ref = run("get", store, ids[0], "--box", "0,0,1,1", "--format", "sparse")
        check(got.returncode == 0 and got.stdout == ref.stdout, "dead endpoint, then live")

        # Errors: exit 1 with the problem named.
        got = run("query", url, "n09999999_1", "--box", "0,0,1,1")
        check(got.returncode == 1 and "n09999999_1" in got.stderr and "not_found" in got.stderr,
              "unknown id: %s" % got.stderr)
        bad = os.path.join(TMP, "query-bad.jsonl")
        with open(bad, "w") as f:
            f.write(lines[0] + "\n" + lines[1] + "\n" +
                    json.dumps({"id": "n09999999_2", "box": [0, 0, 1, 1]}) + "\n")
        got = run("query", url, "--batch", bad)
        check(got.returncode == 1 and "n09999999_2" in got.stderr, "unknown id in a batch: %s"
              % got.stderr)
        with open(bad, "w") as f:
            f.write(lines[0] + "\n" + json.dumps({"id": ids[0], "box": [0, 0, 1, 1],
                                                  "fl1p": True}) + "\n")
        got = run("query", url, "--batch", bad)
        check(got.returncode == 1 and "line 2" in got.stderr and "fl1p" in got.stderr,
              "misspelt key named with its line: %s" % got.stderr)
        tok_url = "http://127.0.0.1:%d" % tport
        got = run("query", tok_url, ids[0], "--box", "0,0,1,1")
        check(got.returncode == 1 and "unauthorized" in got.stderr, "no token: %s" % got.stderr)
        got = run("query", tok_url, ids[0], "--box", "0,0,1,1", "--token-file", token_file)
        check(got.returncode == 0 and got.stdout == run("get", store, ids[0], "--box",
                                                         "0,0,1,1").stdout, "with the token")
        got = run("query", "http://127.0.0.1:1,http://127.0.0.1:2", ids[0], "--box", "0,0,1,1",
                  "--retries", "0")
        check(got.returncode == 1 and "127.0.0.1:1" in got.stderr and "127.0.0.1:2" in got.stderr
              and "unavailable" in got.stderr, "all endpoints dead: %s" % got.stderr)
        for args, what in [(["ftp://127.0.0.1:1", ids[0], "--box", "0,0,1,1"], "scheme"),
                           (["http://", ids[0], "--box", "0,0,1,1"], "URL"),
                           ([url, ids[0]], "--box"),
                           ([url, ids[0], "--box", "0,0,2,1"], "box"),
                           ([url, "../etc", "--box", "0,0,1,1"], "id"),
                           ([url, "--map", ids[0]], "-o")]:
            got = run("query", *args)
            check(got.returncode == 2 and what in got.stderr,
                  "usage error %s: exit %d %s" % (args, got.returncode, got.stderr))
        same_errors(url, store, ids[0])
        readiness(url, tport, store)
    finally:
        for p in (d, dt):
            stop_daemon(p)
    return summary()


def readiness(url, tport, store):
    """lmap query --ready: the health check of the container image."""
    got = run("query", url, "--ready")
    check(got.returncode == 0 and got.stdout == "ready: %s\n" % url, "ready: %r" % (got,))
    # /readyz is outside the token: the check needs none.
    got = run("query", "http://127.0.0.1:%d" % tport, "--ready")
    check(got.returncode == 0, "ready without the token: %s" % got.stderr)
    # Without URLS: the address LMAPD_LISTEN names, a wildcard asked on
    # loopback; lmapd's default otherwise.
    port = url.rsplit(":", 1)[1]
    for listen in ("127.0.0.1:" + port, "0.0.0.0:" + port):
        got = subprocess.run([LMAP, "query", "--ready"], capture_output=True, text=True,
                             timeout=60, env=dict(os.environ, LMAPD_LISTEN=listen))
        check(got.returncode == 0 and got.stdout == "ready: %s\n" % url,
              "ready from LMAPD_LISTEN=%s: %r" % (listen, got))
    got = run("query", "--ready", "--retries", "0")
    check(got.returncode == 1 and "127.0.0.1:8080" in got.stderr or got.returncode == 0,
          "default address: %r" % (got,))
    # A replica whose store changed under it answers 503: not ready, and
    # the reason is the server's.
    served = os.path.join(TMP, "query-ready.lmap")
    with open(store, "rb") as f, open(served, "wb") as g:
        g.write(f.read())
    p, port, _ = start_daemon(served)
    try:
        with open(served, "ab") as g:
            g.write(b"x")  # in place, as `cp` over a served file would
        deadline = time.monotonic() + 10
        got = None
        while time.monotonic() < deadline:
            got = run("query", "http://127.0.0.1:%d" % port, "--ready", "--retries", "0")
            if got.returncode != 0:
                break
            time.sleep(0.1)
        check(got.returncode == 1 and "not ready (unavailable)" in got.stderr
              and "changed size" in got.stderr, "unready replica: %r" % (got,))
        got = run("query", "http://127.0.0.1:%d,%s" % (port, url), "--ready", "--retries", "0")
        check(got.returncode == 0 and got.stdout == "ready: %s\n" % url,
              "the next server is asked: %r" % (got,))
    finally:
        stop_daemon(p)


def same_errors(url, store, ident):
    """A bad query gets the same code, field and message from lmapd (POST
    /v1/labels, naming it queries[0]) and from a query file (lmap get
    --queries and lmap query --batch, naming its line): one reader,
    pool/queryjson.c. They used to differ (bad_format against
    invalid_argument, quoted key names)."""
    cases = [
        ("box of 3 numbers", {"id": ident, "box": [0, 0, 1]}),
        ("box with a string", {"id": ident, "box": [0, "a", 1, 1]}),
        ("box outside the image", {"id": ident, "box": [0, 0, 1.5, 1]}),
        ("id a number", {"id": 7, "box": [0, 0, 1, 1]}),
        ("id with a slash", {"id": "a/b", "box": [0, 0, 1, 1]}),
        ("flip a string", {"id": ident, "box": [0, 0, 1, 1], "flip": "yes"}),
        ("misspelt key", {"id": ident, "box": [0, 0, 1, 1], "flipp": True}),
        ("not an object", [1, 2, 3]),
    ]
    for what, query in cases:
        req = urllib.request.Request(url + "/v1/labels", data=json.dumps({"queries": [query]}).encode(),
                                     method="POST")
        try:
            urllib.request.urlopen(req, timeout=10)
            api = {}
        except urllib.error.HTTPError as e:
            api = json.loads(e.read())["error"]
        # The server names the query queries[0]; a file names its line.
        message = api.get("message", "").replace("queries[0].", "").replace("queries[0]: ", "")
        if what == "not an object":
            message = message.replace("queries[0]", "a query")
        line = json.dumps(query) + "\n"
        for cmd in (["get", store, "--queries", "-"], ["query", url, "--batch", "-"]):
            got = run(*cmd, stdin=line)
            check(got.returncode == 1 and api and
                  got.stderr.strip() == "lmap %s: line 1: %s" % (cmd[0], message),
                  "%s: lmap %s says %r, lmapd %s %r" % (what, cmd[0], got.stderr.strip(), api.get("code"),
                                                      api.get("message")))


if __name__ == "__main__":
    sys.exit(main())
