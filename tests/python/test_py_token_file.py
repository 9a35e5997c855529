#!/usr/bin/python3
"""A --token-file means the same token to its three readers: lmapd, `lmap
query` and the Python binding (all through liblmap's lmap_token_read).

One rule: the file's first line, without its line break and trailing
spaces, tabs and carriage returns; an empty line, a NUL byte or more than
4,095 bytes refused, naming the file. Before, `lmap query` kept a trailing
space the others dropped (401 where lmapd and Python agreed), and Python
also dropped leading white space. Each case runs against the real lmapd on
a loopback port; every process is stopped by its PID."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import py_common as pc  # noqa: E402

import lmap  # noqa: E402

ck = pc.Checker("test_py_token_file")


def write(d, name, data):
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def query(url, token_file, ident):
    return pc.lmap("query", url, ident, "--box", "0,0,1,1", "--format", "sparse",
                   "--token-file", token_file)


def main():
    d = pc.scratch("token")
    store = os.path.join(d, "s.lmap")
    pc.lmap_ok("synth", "-o", store, "--images", "12", "--force", "--no-progress")
    ident = pc.lmap_ok("ids", store).split()[0].decode()
    # lmapd's file has trailing white space of every kind; the clients'
    # files spell the same token differently.
    served = write(d, "served", b"s3cret \t\r\nsecond line\n")
    spellings = {"plain": b"s3cret", "newline": b"s3cret\n", "space": b"s3cret \n",
                 "crlf": b"s3cret\r\n", "tab": b"s3cret\t\n"}
    with pc.Daemons() as daemons:
        url, _ = daemons.start(store, "--token-file", served)
        for name, data in spellings.items():
            f = write(d, "token-" + name, data)
            rc, out, err = query(url, f, ident)
            ck.check(rc == 0 and b'"classes"' in out, "lmap query with %r: served (%d %s)" % (data, rc, err.strip()))
            c = lmap.Client(url, token_file=f)
            ck.check(len(c.sparse([ident], [(0, 0, 1, 1)])) == 1, "Python with %r: served" % data)
            c.close()
        # Leading white space is part of the token, for every reader.
        lead = write(d, "token-lead", b" s3cret\n")
        rc, _, err = query(url, lead, ident)
        ck.check(rc == 1 and "unauthorized" in err, "lmap query with a leading space: 401 (%d %s)" % (rc, err.strip()))
        c = lmap.Client(url, token_file=lead)
        ck.raises(lmap.UnauthorizedError, lambda: c.sparse([ident], [(0, 0, 1, 1)]),
                  "Python with a leading space: 401")
        c.close()

    # Files that hold no usable token: every reader refuses them, naming
    # the file and the reason, before any request.
    bad = {"empty": (b"\n  \t\n", "empty"), "nul": (b"abc\x00def\n", "NUL"),
           "long": (b"t" * 4096 + b"\n", "longer than 4095 bytes")}
    for name, (data, reason) in bad.items():
        f = write(d, "bad-" + name, data)
        rc, _, err = query("http://127.0.0.1:9", f, ident)
        ck.check(rc == 1 and f in err and reason in err,
                 "lmap query, %s token file: exit 1 naming it (%d %s)" % (name, rc, err.strip()))
        e = ck.raises(ValueError, lambda: lmap.Client("http://127.0.0.1:9", token_file=f),
                      "Python, %s token file: ValueError" % name)
        ck.check(e is not None and f in str(e) and reason in str(e), "Python names the file and reason: %s" % e)
        r = subprocess.run([pc.e2e_common.LMAPD, "--store", store, "--listen", "127.0.0.1:0", "--token-file", f],
                           capture_output=True, text=True, timeout=30)
        ck.check(r.returncode == 1 and f in r.stderr and reason in r.stderr,
                 "lmapd, %s token file: exit 1 naming it (%d %s)" % (name, r.returncode, r.stderr[-200:]))
    exact = write(d, "exact", b"k" * 4095 + b"\n")
    ck.check(query("http://127.0.0.1:9", exact, ident)[0] == 1
             and "token" not in query("http://127.0.0.1:9", exact, ident)[2],
             "a 4,095-byte token is read (the query then fails to connect, not on the token)")
    missing = os.path.join(d, "no-such-file")
    ck.raises(OSError, lambda: lmap.Client("http://127.0.0.1:9", token_file=missing),
              "Python, a missing token file: OSError")
    rc, _, err = query("http://127.0.0.1:9", missing, ident)
    ck.check(rc == 1 and missing in err and "cannot open" in err, "lmap query, a missing file: %s" % err.strip())
    return ck.summary(d)


if __name__ == "__main__":
    sys.exit(main())
