#!/usr/bin/python3
"""Hostile inputs to `lmap import`, to the store readers and to `lmap get`.

Import: every bad file (truncated zip and legacy .pt, wrong or huge shape,
wrong dtype (int64), not a tensor, NaN/Inf score, a score beyond the f16
range, class index = C, 2.5, -1, NaN, a class repeated in a cell, a
forbidden pickle global, an unknown pickle opcode, tar members that are not
a .pt or not a valid id, a truncated or garbage tar, an empty directory or
tar, a directory with no .pt file, a missing source, mixed shapes) must make
`lmap import` exit 1 with
"lmap import: <path naming the file>: <reason>" on stderr and leave no file
in the output directory. --skip-bad must import the good files, report each
bad one and exit 0 (1 and no store when every file is bad); an existing
output is kept unless --force.

Stores: a truncated store (several cut points), a zero-length file, a text
file, random bytes, a directory and a missing path given to `lmap info`,
`info --json`, `ids`, `get`, `export` and `verify` must exit 1 (never a
signal) with "lmap <cmd>: <path>: <reason>". 60 single-byte corruptions of
a valid store: every command exits 0 or 1, and whenever `lmap verify` passes
the store still answers exactly as the original.

Queries: a bad line in `lmap get --queries` must exit 1 with
"lmap get: line N: <reason>". Usage errors exit 2.
Exits 1 on any failure and prints a summary.
"""

import io
import json
import os
import random
import subprocess
import sys
import tarfile
import zipfile

import torch

sys.dont_write_bytecode = True  # keep the source tree clean under ctest
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle_common as oc  # noqa: E402

K, H, W, C = 5, 15, 15, 1000


class Evil:
    """Pickles as a call to os.system: a .pt that must never be executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch " + self.marker,))


def good_tensor(gen, h=H, w=W, k=K, c=C):
    return oc.make_topk(gen, k, h, w, c)


def pt_bytes(obj, fmt="zip"):
    b = io.BytesIO()
    torch.save(obj, b, _use_new_zipfile_serialization=(fmt == "zip"))
    return b.getvalue()


def rewrite_zip(data, edit):
    """Rewrites a torch zip with Python's zipfile (stored, CRCs recomputed),
    applying edit(name, bytes) -> bytes to each member."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, edit(info.filename, src.read(info.filename)))
    return out.getvalue()


def main():
    env = oc.Env("test_hostile_import")
    ck = oc.Checker("test_hostile_import")
    gen = torch.Generator().manual_seed(99)
    rng = random.Random(5)
    case_no = [0]

    def write(path, data):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def good_pt(path, fmt="zip", **kw):
        write(path, pt_bytes(good_tensor(gen, **kw), fmt))

    def expect_fail(label, args, names, reasons, outdir=None, stdin_path=None, cmd=None, code=1):
        """Runs lmap; checks exit `code`, "lmap <cmd>: ", every string of
        `names` and one of `reasons` (case-insensitive) in stderr, and an
        empty outdir."""
        cmd = cmd or args[0]
        nfail = len(ck.failures)
        if stdin_path:
            with open(stdin_path, "rb") as f:
                rc, out, err = env.run(args, stdin=f)
        else:
            rc, out, err = env.run(args, stdin=subprocess.DEVNULL)
        e1 = err.strip().splitlines()
        first = next((l for l in e1 if l.startswith("lmap ")), e1[0] if e1 else "")
        ok = ck.check(rc == code, "%s: exit %d (expected %d)%s; stderr: %s" % (
            label, rc, code, " = killed by signal %d" % -rc if rc < 0 else "", err.strip()[:400]))
        if rc < 0:
            return
        if code == 1:
            ck.check(("lmap %s: " % cmd) in err, "%s: stderr lacks \"lmap %s: \": %r" % (label, cmd, err[:300]))
            for n in names:
                ck.check(n in err, "%s: stderr does not name %r: %r" % (label, n, err[:300]))
            low = err.lower()
            ck.check(any(r.lower() in low for r in reasons),
                     "%s: stderr gives none of the reasons %s: %r" % (label, reasons, err[:300]))
        if outdir is not None:
            left = os.listdir(outdir)
            ck.check(left == [], "%s: files left in the output directory: %s" % (label, left))
        if ok and len(ck.failures) == nfail:
            print("ok   %-55s %s" % (label, first[:150]), flush=True)

    def import_case(label, files, names, reasons, extra_args=(), src_is_tar=False, stdin=False):
        """files: {relative path: bytes}; builds the source, imports it to a
        fresh output directory, expects failure."""
        case_no[0] += 1
        base = env.dir("import%02d" % case_no[0])
        outdir = env.dir("import%02d" % case_no[0], "out")
        if src_is_tar:
            src = os.path.join(base, "maps.tar")
            write(src, files)
        else:
            src = env.dir("import%02d" % case_no[0], "src")
            for rel, data in files.items():
                write(os.path.join(src, rel), data)
        store = os.path.join(outdir, "s.lmap")
        args = ["import", "-" if stdin else src, "-o", store, "--num-classes", str(C)] + list(extra_args)
        expect_fail(label, args, names, reasons, outdir=outdir, stdin_path=src if stdin else None)
        return src

    # ---------------------------------------------------------- bad .pt files
    t = good_tensor(gen)
    zip_ok, leg_ok = pt_bytes(t, "zip"), pt_bytes(t, "legacy")

    def bad_tensor(fn):
        x = good_tensor(gen).clone()
        fn(x)
        return x

    def setv(x, idx, v):
        x[idx] = v

    good_files = {"n01/n01_%d.pt" % i: pt_bytes(good_tensor(gen), "zip" if i % 2 else "legacy")
                  for i in range(3)}

    bad_cases = [
        ("truncated zip .pt", zip_ok[: len(zip_ok) * 6 // 10], ["truncat", "end of", "short", "eof", "zip", "corrupt"]),
        ("zip .pt cut to 100 bytes", zip_ok[:100], ["truncat", "end of", "short", "eof", "zip", "corrupt"]),
        ("truncated legacy .pt", leg_ok[: len(leg_ok) * 6 // 10], ["truncat", "end of", "short", "eof", "storage", "corrupt"]),
        ("empty .pt", b"", ["empty", "truncat", "short", "eof", "end of", "not a", "format"]),
        ("text .pt", b"hello, I am not a pickle\n" * 4, ["pickle", "zip", "format", "not a", "opcode", "magic"]),
        ("wrong shape [2,5,15]", pt_bytes(torch.zeros(2, 5, 15)), ["shape"]),
        ("wrong shape [3,5,15,15]", pt_bytes(torch.zeros(3, 5, 15, 15)), ["shape"]),
        ("huge shape [2,1024,1024,1024] (stride-0 view)", pt_bytes(torch.zeros(2, 1, 1, 1).expand(2, 1024, 1024, 1024)),
         ["shape", "entries", "too large", "over"]),
        ("grid side 2000", pt_bytes(torch.zeros(2, 5, 2000, 15)), ["shape"]),
        ("dtype int64", pt_bytes(good_tensor(gen).long()), ["dtype", "int64", "long"]),
        ("not a tensor (dict)", pt_bytes({"maps": good_tensor(gen)}), ["tensor", "dict", "opcode", "object", "global"]),
        ("NaN score", pt_bytes(bad_tensor(lambda x: setv(x, (0, 1, 3, 4), float("nan")))), ["nan"]),
        ("Inf score", pt_bytes(bad_tensor(lambda x: setv(x, (0, 0, 2, 2), float("inf")))), ["inf", "finite"]),
        ("score 1e5 overflows the default f16 encoding", pt_bytes(bad_tensor(lambda x: setv(x, (0, 0, 0, 0), 1e5))),
         ["f16", "range", "overflow"]),
        ("class index 1000 with C=1000", pt_bytes(bad_tensor(lambda x: setv(x, (1, 0, 0, 0), 1000.0))), ["1000"]),
        ("class index 2.5", pt_bytes(bad_tensor(lambda x: setv(x, (1, 2, 3, 4), 2.5))), ["2.5"]),
        ("negative class -1", pt_bytes(bad_tensor(lambda x: setv(x, (1, 4, 14, 14), -1.0))), ["-1", "negative"]),
        # The official scatter_ keeps one of two equal indices; lmap cannot
        # reproduce that, so a repeated class in a cell is a bad file.
        ("class repeated in a cell", pt_bytes(bad_tensor(lambda x: setv(x, (1, 1, 2, 2), float(x[1, 0, 2, 2])))),
         ["twice", "duplicate", "repeat"]),
        ("NaN class index", pt_bytes(bad_tensor(lambda x: setv(x, (1, 1, 1, 1), float("nan")))), ["nan"]),
    ]
    for label, data, reasons in bad_cases:
        files = dict(good_files)
        files["n02/n02_bad.pt"] = data
        import_case(label, files, ["n02_bad.pt"], reasons)

    # A forbidden global (os.system): zip and legacy; it must never run.
    marker = env.path("evil_marker")
    for fmt in ("zip", "legacy"):
        files = dict(good_files)
        files["n02/n02_evil.pt"] = pt_bytes(Evil(marker), fmt)
        import_case("forbidden global os.system (%s)" % fmt, files, ["n02_evil.pt"],
                    ["global", "system", "posix", "not supported", "forbidden", "not allowed"])
    ck.check(not os.path.exists(marker), "the forbidden global was executed (marker file exists)")

    # Unknown pickle opcode: data.pkl's first opcode after PROTO replaced by 0xff.
    def bad_opcode(name, data):
        if name.endswith("data.pkl"):
            assert data[:2] == b"\x80\x02", data[:4]
            return data[:2] + b"\xff" + data[3:]
        return data

    files = dict(good_files)
    files["n02/n02_opcode.pt"] = rewrite_zip(zip_ok, bad_opcode)
    import_case("unknown pickle opcode 0xff", files, ["n02_opcode.pt"], ["opcode", "0xff", "pickle"])
    # Control: the same rewrite without the edit is a valid .pt (torch loads it).
    ctl = rewrite_zip(zip_ok, lambda n, d: d)
    ck.check(torch.equal(torch.load(io.BytesIO(ctl)), t), "control zip rewrite is not loadable by torch")

    # Mixed shapes across files.
    files = dict(good_files)
    files["n02/n02_big.pt"] = pt_bytes(good_tensor(gen, h=18, w=18))
    import_case("mixed shapes 15x15 and 18x18", files, [], ["shape"])
    # The message must name one of the files of the differing shape pair.
    # (checked loosely above: which file is 'first' depends on walk order)

    # ------------------------------------------------------------- tars
    def tar_bytes(members):
        b = io.BytesIO()
        with tarfile.open(fileobj=b, mode="w", format=tarfile.GNU_FORMAT) as tf:
            for name, data in members:
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
        return b.getvalue()

    members = [(k, v) for k, v in sorted(good_files.items())]
    tar_non_pt = tar_bytes(members + [("n01/README.txt", b"hello\n")])
    import_case("tar member not a .pt", tar_non_pt, ["README.txt"], ["README.txt"], src_is_tar=True)
    import_case("tar member not a .pt (stdin)", tar_non_pt, ["README.txt"], ["README.txt"],
                src_is_tar=True, stdin=True)
    # A hard-linked .pt holds no data of its own in the tar: refused by name,
    # never dropped silently.
    hb = io.BytesIO()
    with tarfile.open(fileobj=hb, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        link = tarfile.TarInfo("n02/n02_link.pt")
        link.type = tarfile.LNKTYPE
        link.linkname = members[0][0]
        tf.addfile(link)
    import_case("tar member is a hard link", hb.getvalue(), ["n02_link.pt"], ["hard link"],
                src_is_tar=True)
    # Member names that cannot be ids (empty, too long, bytes outside the id alphabet).
    for bad_name in ["n01/.pt", "n01/" + "x" * 300 + ".pt", "n01/with space.pt", "n01/quote\"d.pt"]:
        import_case("tar member id %r" % bad_name[:24], tar_bytes(members + [(bad_name, zip_ok)]),
                    [bad_name[:60]], ["id"], src_is_tar=True)
    big = tar_bytes(members + [("n01/n01_9.pt", pt_bytes(good_tensor(gen)))])
    # Cut in the middle of the last member's data.
    last = tarfile.open(fileobj=io.BytesIO(big)).getmembers()[-1]
    cut = big[: last.offset_data + last.size // 2]
    import_case("truncated tar", cut, ["maps.tar"],
                ["truncat", "eof", "end of", "premature", "short", "damaged", "tar", "archive"], src_is_tar=True)
    import_case("garbage tar", b"\x13" * 5000, ["maps.tar"],
                ["tar", "archive", "format", "unrecognized", "not a"], src_is_tar=True)

    # --------------------------------------------------- empty sources
    case_no[0] += 1
    empty = env.dir("import%02d" % case_no[0], "empty")
    outdir = env.dir("import%02d" % case_no[0], "out")
    expect_fail("empty directory", ["import", empty, "-o", os.path.join(outdir, "s.lmap")],
                [empty.rstrip("/")], ["no .pt", "no ", "empty", "nothing"], outdir=outdir)
    case_no[0] += 1
    nopt = env.dir("import%02d" % case_no[0], "nopt")
    write(os.path.join(nopt, "a", "README.txt"), b"x")
    outdir = env.dir("import%02d" % case_no[0], "out")
    expect_fail("directory without .pt files", ["import", nopt, "-o", os.path.join(outdir, "s.lmap")],
                [nopt.rstrip("/")], ["no .pt", "no ", "empty", "nothing"], outdir=outdir)
    case_no[0] += 1
    outdir = env.dir("import%02d" % case_no[0], "out")
    missing = os.path.join(env.tmp, "does", "not", "exist")
    expect_fail("missing source", ["import", missing, "-o", os.path.join(outdir, "s.lmap")],
                [missing], ["no such", "not found", "exist", "cannot", "open"], outdir=outdir)
    case_no[0] += 1
    outdir = env.dir("import%02d" % case_no[0], "out")
    emptytar = env.path("import%02d" % case_no[0], "empty.tar")
    write(emptytar, tar_bytes([]))
    expect_fail("empty tar", ["import", emptytar, "-o", os.path.join(outdir, "s.lmap")],
                ["empty.tar"], ["no .pt", "no ", "empty", "nothing"], outdir=outdir)

    # ------------------------------------------------------ --skip-bad
    case_no[0] += 1
    src = env.dir("import%02d" % case_no[0], "src")
    outdir = env.dir("import%02d" % case_no[0], "out")
    good_ids = []
    for i in range(6):
        ident = "n03_%d" % i
        good_pt(os.path.join(src, "n03", ident + ".pt"), "zip" if i % 2 else "legacy")
        good_ids.append(ident)
    bad_names = {"n04_trunc.pt": zip_ok[:300],
                 "n04_nan.pt": pt_bytes(bad_tensor(lambda x: setv(x, (0, 0, 0, 0), float("nan")))),
                 "n04_cls.pt": pt_bytes(bad_tensor(lambda x: setv(x, (1, 0, 0, 0), 1000.0))),
                 "n04_evil.pt": pt_bytes(Evil(marker))}
    for n, data in bad_names.items():
        write(os.path.join(src, "n04", n), data)
    store = os.path.join(outdir, "s.lmap")
    rc, out, err = env.run(["import", src, "-o", store, "--skip-bad", "--num-classes", str(C)])
    if ck.check(rc == 0, "--skip-bad: exit %d: %s" % (rc, err.strip()[:400])):
        rc2, out2, err2 = env.run(["ids", store])
        ck.check(rc2 == 0 and out2.decode().split() == sorted(good_ids),
                 "--skip-bad: store ids %r, expected %r" % (out2.decode().split(), sorted(good_ids)))
        for n in bad_names:
            ck.check(n in err, "--skip-bad: bad file %s not reported on stderr: %r" % (n, err[:500]))
        rc3, _, err3 = env.run(["verify", store])
        ck.check(rc3 == 0, "--skip-bad: verify exit %d: %s" % (rc3, err3.strip()))
        print("ok   --skip-bad imported %d, reported %d" % (len(good_ids), len(bad_names)))

    # --skip-bad on a tar with a non-.pt member and a bad .pt.
    case_no[0] += 1
    outdir = env.dir("import%02d" % case_no[0], "out")
    tpath = env.path("import%02d" % case_no[0], "m.tar")
    write(tpath, tar_bytes(members + [("n01/README.txt", b"x"), ("n01/n01_bad.pt", zip_ok[:200])]))
    store = os.path.join(outdir, "s.lmap")
    rc, out, err = env.run(["import", tpath, "-o", store, "--skip-bad"])
    if ck.check(rc == 0, "--skip-bad tar: exit %d: %s" % (rc, err.strip()[:400])):
        rc2, out2, _ = env.run(["ids", store])
        want = sorted(os.path.basename(k)[:-3] for k in good_files)
        ck.check(out2.decode().split() == want, "--skip-bad tar: ids %r, expected %r" % (out2.decode().split(), want))
        ck.check("README.txt" in err and "n01_bad.pt" in err, "--skip-bad tar: skipped members not reported: %r" % err[:400])

    # --skip-bad where every file is bad: exit 1, no store.
    case_no[0] += 1
    src = env.dir("import%02d" % case_no[0], "src")
    outdir = env.dir("import%02d" % case_no[0], "out")
    write(os.path.join(src, "n05", "n05_a.pt"), zip_ok[:300])
    write(os.path.join(src, "n05", "n05_b.pt"), b"junk")
    expect_fail("--skip-bad with every file bad", ["import", src, "-o", os.path.join(outdir, "s.lmap"), "--skip-bad"],
                [], ["no ", "nothing", "imported", "empty", "bad", "skip"], outdir=outdir)

    # An existing output is kept without --force and replaced with it.
    case_no[0] += 1
    src = env.dir("import%02d" % case_no[0], "src")
    for k_, v in good_files.items():
        write(os.path.join(src, k_), v)
    outdir = env.dir("import%02d" % case_no[0], "out")
    store = os.path.join(outdir, "s.lmap")
    write(store, b"precious")
    rc, out, err = env.run(["import", src, "-o", store])
    ck.check(rc == 1 and "s.lmap" in err, "existing output without --force: exit %d: %s" % (rc, err.strip()[:300]))
    ck.check(open(store, "rb").read() == b"precious", "existing output was modified without --force")
    ck.check(sorted(os.listdir(outdir)) == ["s.lmap"], "files left beside the existing output: %s" % os.listdir(outdir))
    rc, out, err = env.run(["import", src, "-o", store, "--force"])
    ck.check(rc == 0, "--force over an existing file: exit %d: %s" % (rc, err.strip()[:300]))
    good_store = store
    rc, out, _ = env.run(["ids", good_store])
    good_store_ids = out.decode().split()
    ck.check(rc == 0 and len(good_store_ids) == 3, "the --force store has ids %r" % good_store_ids)

    # Duplicate id (same stem in two directories): not in the CLI contract;
    # reported, not asserted.
    case_no[0] += 1
    src = env.dir("import%02d" % case_no[0], "src")
    outdir = env.dir("import%02d" % case_no[0], "out")
    write(os.path.join(src, "a", "dup.pt"), zip_ok)
    write(os.path.join(src, "b", "dup.pt"), leg_ok)
    rc, out, err = env.run(["import", src, "-o", os.path.join(outdir, "s.lmap")])
    print("NOTE duplicate id 'dup' in two directories: exit %d, stderr %r, output dir %s"
          % (rc, err.strip()[:200], os.listdir(outdir)))

    # ------------------------------------------------------ hostile stores
    sdir = env.dir("stores")
    size = os.path.getsize(good_store)
    data = open(good_store, "rb").read()
    ident = good_store_ids[0] if good_store_ids else "n01_0"
    hostile = {
        "truncated_half.lmap": data[: size // 2],
        "truncated_4096.lmap": data[:4096],
        "truncated_100.lmap": data[:100],
        "truncated_minus1.lmap": data[:-1],
        "zero_length.lmap": b"",
        "text.lmap": b"this is a text file, not an lmap store\n" * 50,
        "random.lmap": bytes(rng.getrandbits(8) for _ in range(16384)),
    }
    for name, content in hostile.items():
        write(os.path.join(sdir, name), content)
    os.makedirs(os.path.join(sdir, "a_directory.lmap"), exist_ok=True)
    paths = [os.path.join(sdir, n) for n in list(hostile) + ["a_directory.lmap", "missing.lmap"]]
    reasons = ["truncat", "not", "invalid", "corrupt", "short", "missing", "no such", "empty",
               "bad", "version", "directory", "size", "lmdb", "store"]
    for p in paths:
        name = os.path.basename(p)
        npy = os.path.join(env.dir("stores_out"), "x.npy")
        for args in (["info", p], ["info", p, "--json"], ["ids", p],
                     ["get", p, ident, "--box", "0,0,1,1"], ["export", p, ident, "-o", npy],
                     ["verify", p]):
            expect_fail("store %s: lmap %s" % (name, " ".join(args[2:]) or args[0]), args, [p], reasons)

    # Single-byte corruptions anywhere in a valid store: every command exits
    # 0 or 1 (never a signal), and when `lmap verify` passes, what the store
    # answers (ids, pooled maps, metadata) is unchanged.
    def snapshot(p):
        outs = []
        rc, out, _ = env.run(["ids", p])
        outs.append((rc, out))
        body = "".join('{"id": "%s", "box": [0, 0, 1, 1], "format": "sparse", "output_size": 3}\n' % i
                       for i in good_store_ids).encode()
        rc2, out2, _ = env.run(["get", p, "--queries", "-"], input_bytes=body)
        outs.append((rc2, out2))
        rc3, out3, _ = env.run(["info", p, "--json"])
        try:
            meta = json.loads(out3.decode())
            meta.pop("path", None)
        except ValueError:
            meta = None
        outs.append((rc3, meta))
        return [rc, rc2, rc3], outs

    _, baseline = snapshot(good_store)
    caught = unchanged = 0
    for trial in range(60):
        x = bytearray(data)
        off = rng.randrange(len(x))
        x[off] ^= rng.randrange(1, 256)
        p = os.path.join(sdir, "flipped.lmap")
        write(p, bytes(x))
        rc, out, err = env.run(["verify", p])
        rcs, snap = snapshot(p)
        ok = ck.check(all(r in (0, 1) for r in [rc] + rcs),
                      "store with byte %d flipped: exit codes verify %d, ids/get/info %s (a signal or "
                      "an unexpected code); stderr %r" % (off, rc, rcs, err[-300:]))
        if rc == 0:
            ok = ck.check(snap == baseline, "store with byte %d flipped: verify passes but the answers changed"
                          % off) and ok
            unchanged += 1
        else:
            caught += 1
    print("ok   60 single-byte corruptions: verify refused %d, the %d it passed answer as the original"
          % (caught, unchanged))

    # ------------------------------------------------------ hostile queries
    good_line = '{"id": "%s", "box": [0, 0, 1, 1]}' % ident
    bad_lines = [
        ("invalid JSON", '{"id": "%s", "box": [0, 0, 1' % ident, ["json", "parse", "invalid", "expected", "end"]),
        ("missing id", '{"box": [0, 0, 1, 1]}', ["id"]),
        ("unknown id", '{"id": "no_such_image", "box": [0, 0, 1, 1]}', ["no_such_image", "not found"]),
        ("box of 3 numbers", '{"id": "%s", "box": [0, 0, 1]}' % ident, ["box"]),
        ("box outside the unit square", '{"id": "%s", "box": [0, 0, 1.5, 1]}' % ident, ["box"]),
        ("box x0 > x1", '{"id": "%s", "box": [0.6, 0, 0.5, 1]}' % ident, ["box"]),
        ("box with a string", '{"id": "%s", "box": [0, "a", 1, 1]}' % ident, ["box"]),
        ("output_size 0", '{"id": "%s", "box": [0, 0, 1, 1], "output_size": 0}' % ident, ["output_size"]),
        ("output_size 65", '{"id": "%s", "box": [0, 0, 1, 1], "output_size": 65}' % ident, ["output_size"]),
        ("box_format foo", '{"id": "%s", "box": [0, 0, 1, 1], "box_format": "foo"}' % ident, ["box_format"]),
        ("format foo", '{"id": "%s", "box": [0, 0, 1, 1], "format": "foo"}' % ident, ["format"]),
        ("softmax 1", '{"id": "%s", "box": [0, 0, 1, 1], "softmax": "yes"}' % ident, ["softmax"]),
        ("not an object", '[1, 2, 3]', ["object", "id"]),
    ]
    for label, line, reasons in bad_lines:
        qf = env.path("queries", label.replace(" ", "_") + ".jsonl")
        write(qf, ("%s\n%s\n%s\n%s\n" % (good_line, good_line, line, good_line)).encode())
        expect_fail("query %s" % label, ["get", good_store, "--queries", qf], ["line 3"], reasons)
    missing_q = os.path.join(env.tmp, "no_such_queries.jsonl")
    expect_fail("get --queries missing file", ["get", good_store, "--queries", missing_q],
                [missing_q], ["no such", "not found", "cannot", "open"])
    qdir = env.dir("a_queries_dir")
    expect_fail("get --queries a directory", ["get", good_store, "--queries", qdir],
                [qdir], ["directory", "read", "cannot", "not a"])
    expect_fail("get unknown id", ["get", good_store, "no_such_image", "--box", "0,0,1,1"],
                ["no_such_image"], ["not found", "no such", "unknown", "no map"])
    expect_fail("export unknown id", ["export", good_store, "no_such_image", "-o", env.path("x.npy")],
                ["no_such_image"], ["not found", "no such", "unknown", "no map"])

    # ------------------------------------------------------ usage errors
    for label, args in [
        ("import without -o", ["import", env.tmp]),
        ("import --encoding f8", ["import", env.tmp, "-o", env.path("u", "s.lmap"), "--encoding", "f8"]),
        ("import --num-classes abc", ["import", env.tmp, "-o", env.path("u", "s.lmap"), "--num-classes", "abc"]),
        ("get --output-size abc", ["get", good_store, ident, "--box", "0,0,1,1", "--output-size", "abc"]),
        ("get --format xml", ["get", good_store, ident, "--box", "0,0,1,1", "--format", "xml"]),
        ("unknown command", ["frobnicate"]),
        ("unknown flag", ["info", good_store, "--bogus"]),
    ]:
        expect_fail("usage: " + label, args, [], [], code=2)

    ck.finish(env)


if __name__ == "__main__":
    main()
