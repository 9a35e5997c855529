#!/usr/bin/python3
"""`lmap import` killed during its commit, and run out of disk space.

Killed: a real `lmap import` of a tar of 60,000 small maps is sent SIGKILL
while it writes the store (its LMDB temporary file
"<target>.tmp.<host>.<pid>.<n>" exists and is not empty); the file stays.
The next import of the same target must remove it and succeed, and leave
alone what is not provably its own leftover: a temporary file of a live
process, of another host, of another target, and names that do not match
the pattern exactly.

Disk full: an import into a 2 MiB tmpfs whose spill file fits but whose
store does not must exit 1 with "No space left on device" naming the
target (LMDB reports the short write as EIO: this said "Input/output
error"), leaving no file behind; one whose spill file does not fit, the
same. Skipped, with a message, where tmpfs cannot be mounted (not root).
Exits 1 on any failure.
"""

import io
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time

import torch

sys.dont_write_bytecode = True  # keep the source tree clean under ctest
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle_common as oc  # noqa: E402


def host_in_names():
    """This host's name as lmap puts it in temporary file names."""
    h = socket.gethostname() or "localhost"
    return re.sub(r"[^A-Za-z0-9-]", "_", h[:32])


def make_tar(path, n, seed):
    """A tar of n 1x2x2 maps (the same .pt bytes under n ids): a quick
    import with a commit long enough to be caught."""
    gen = torch.Generator().manual_seed(seed)
    b = io.BytesIO()
    torch.save(oc.make_topk(gen, 1, 2, 2, 1000), b)
    pt = b.getvalue()
    with tarfile.open(path, "w") as tf:
        for i in range(n):
            ti = tarfile.TarInfo("n%08d_%d.pt" % (i % 1000, i))
            ti.size = len(pt)
            tf.addfile(ti, io.BytesIO(pt))


def temp_files(d, target):
    return sorted(f for f in os.listdir(d) if f.startswith(os.path.basename(target) + ".tmp."))


def kill_during_commit(env, tar, target):
    """Starts lmap import and SIGKILLs it once its store file is being
    written; returns (pid, leftover names) or (None, []) if the import
    finished first."""
    d = os.path.dirname(target)
    p = subprocess.Popen([env.bin, "import", tar, "-o", target, "--level", "1", "--threads", "2"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    killed = False
    while p.poll() is None and time.monotonic() < deadline:
        for f in temp_files(d, target):
            try:
                if os.path.getsize(os.path.join(d, f)) > 0:
                    p.send_signal(signal.SIGKILL)
                    killed = True
                    break
            except OSError:
                pass
        if killed:
            break
        time.sleep(0.0005)
    if not killed and p.poll() is None:
        p.kill()
    p.wait()
    p.stderr.close()
    if not killed or p.returncode != -signal.SIGKILL:
        return None, []
    return p.pid, temp_files(d, target)


def mount_tmpfs(d, size):
    os.makedirs(d, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", d],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return r.returncode == 0, r.stdout.decode(errors="replace").strip()


def main():
    env = oc.Env("test_import_interrupted")
    ck = oc.Checker("test_import_interrupted")
    tar = env.path("maps.tar")
    make_tar(tar, 60000, 1)
    out = env.dir("out")
    target = os.path.join(out, "s.lmap")
    host = host_in_names()

    # -------------------------------------------------- killed in commit
    pid, left = None, []
    for attempt in range(5):
        pid, left = kill_during_commit(env, tar, target)
        if left:
            break
    if ck.check(bool(left), "could not kill lmap import while its store file existed (5 tries)"):
        want = re.compile(re.escape("s.lmap.tmp.%s.%d." % (host, pid)) + r"\d+$")
        ck.check(all(want.match(f) for f in left),
                 "leftovers of the killed import %r do not match s.lmap.tmp.%s.%d.N" % (left, host, pid))
        print("ok   killed import %d left %s (%d bytes)" % (
            pid, left, sum(os.path.getsize(os.path.join(out, f)) for f in left)))
        ck.check(not os.path.exists(target), "the killed import left the target")

        # What the next import must not touch.
        keep = ["s.lmap.tmp.%s.%d.0" % (host, os.getpid()),        # a live process
                "s.lmap.tmp.otherhost.%d.7" % pid,                 # another host
                "other.lmap.tmp.%s.%d.0" % (host, pid),            # another target
                "s.lmap.tmp.%s.%d.x" % (host, pid),                # not the pattern
                "s.lmap.tmp.%s.%d" % (host, pid),
                "s.lmap.tmp.%s.%d.0.old" % (host, pid)]
        for f in keep:
            with open(os.path.join(out, f), "wb") as fh:
                fh.write(b"keep")
        rc, _, err = env.run(["import", tar, "-o", target, "--level", "1"])
        ck.check(rc == 0, "import after the killed one: exit %d: %s" % (rc, err[-300:]))
        now = sorted(os.listdir(out))
        ok = True
        for f in left:
            ok = ck.check(f not in now, "the killed import's %s is still there after the next import"
                          % f) and ok
        for f in keep:
            ok = ck.check(f in now, "%s was removed by the next import (not its leftover)" % f) and ok
        ok = ck.check("s.lmap" in now, "the next import made no store") and ok
        rc, outv, err = env.run(["verify", target])
        ok = ck.check(rc == 0, "verify of the store made after the cleanup: exit %d %s"
                      % (rc, err[-200:])) and ok
        if ok:
            print("ok   the next import removed the leftover and kept %d files that are not its own"
                  % len(keep))

    # -------------------------------------------------- disk full
    small = env.dir("small")
    mounted, why = mount_tmpfs(small, "2m")
    if not mounted:
        print("SKIP disk-full cases: cannot mount a tmpfs here (%s)" % why)
    else:
        try:
            for n, label in ((30000, "commit"), (60000, "spill file")):
                t = env.path("full%d.tar" % n)
                make_tar(t, n, 2)
                target = os.path.join(small, "s.lmap")
                rc, _, err = env.run(["import", t, "-o", target, "--level", "1"])
                ok = ck.check(rc == 1, "disk full in the %s: exit %d (want 1)" % (label, rc))
                ok = ck.check("No space left on device" in err and target in err,
                              "disk full in the %s: stderr %r lacks 'No space left on device' and %s"
                              % (label, err[-300:], target)) and ok
                ok = ck.check("Input/output error" not in err,
                              "disk full in the %s reported as an I/O error: %r" % (label, err[-300:])) and ok
                ck.check(os.listdir(small) == [],
                         "disk full in the %s left %s" % (label, os.listdir(small)))
                if ok:
                    print("ok   disk full in the %s: %s" % (label, err.strip().splitlines()[-1]))
        finally:
            subprocess.run(["umount", small])
    ck.finish(env)


if __name__ == "__main__":
    main()
