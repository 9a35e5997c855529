#!/usr/bin/python3
"""`lmap import` with stores as sources (merging them, as lmap.annotate
--resume does with its shards):
- two synthetic stores and a tar of .pt files written by torch.save, in one
  import: every map of the result equals its source's (`lmap export`, byte
  for byte), the ids are the union, the class count and names come from
  the first store;
- an id in two sources fails the import naming it, and no store appears;
- a damaged store source is refused naming the file;
- stdin twice is a usage error."""
import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from e2e_common import LMAP, TMP, check, summary  # noqa: E402


def run(*args):
    return subprocess.run([LMAP, *args], capture_output=True, text=True)


def ids(store):
    return run("ids", store).stdout.split()


def exported(store, id_, work):
    out = os.path.join(work, "m.npy")
    r = run("export", store, id_, "-o", out)
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return np.load(out)


def main():
    work = os.path.join(TMP, "import-stores")
    os.makedirs(work, exist_ok=True)
    names = os.path.join(work, "names.txt")
    open(names, "w").write("".join("class %d\n" % c for c in range(1000)))
    a, b = os.path.join(work, "a.lmap"), os.path.join(work, "b.lmap")
    run("synth", "-o", a, "--images", "300", "--seed", "1", "--class-names", names, "--force", "--no-progress")
    run("synth", "-o", b, "--images", "200", "--seed", "2", "--force", "--no-progress")
    # A tar of .pt maps written by torch.save, ids apart from the stores'.
    tar_path = os.path.join(work, "c.tar")
    gen = torch.Generator().manual_seed(5)
    with tarfile.open(tar_path, "w") as tar:
        for i in range(20):
            classes = torch.rand(1000, 15, 15, generator=gen).topk(5, dim=0).indices  # distinct per cell
            t = torch.stack([torch.randn(5, 15, 15, generator=gen) * 3, classes.float()])
            buf = io.BytesIO()
            torch.save(t, buf)
            info = tarfile.TarInfo("zz_extra_%02d.pt" % i)
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    merged = os.path.join(work, "merged.lmap")
    r = run("import", a, b, tar_path, "-o", merged, "--force", "--no-progress")
    check(r.returncode == 0, "lmap import A.lmap B.lmap C.tar (%s)" % r.stderr[-300:])
    want = sorted(ids(a) + ids(b) + ["zz_extra_%02d" % i for i in range(20)])
    check(ids(merged) == want, "the merged store holds the union of the ids (%d)" % len(want))
    meta = run("info", merged).stdout
    check("num_classes                1000" in meta and "class_names                yes" in meta,
          "the class count and names come from the first store")
    bad = [i for src in (a, b) for i in ids(src)[::9]
           if not np.array_equal(exported(src, i, work), exported(merged, i, work))]
    check(not bad, "every map checked equals its source store's, byte for byte (%s)" % bad[:3])
    r = run("import", a, a, "-o", os.path.join(work, "twice.lmap"), "--no-progress")
    check(r.returncode == 1 and "duplicate id" in r.stderr and not os.path.exists(os.path.join(work, "twice.lmap")),
          "an id in two sources fails, naming it, and no store appears (%s)" % r.stderr.strip()[-200:])
    damaged = os.path.join(work, "damaged.lmap")
    data = bytearray(open(a, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(damaged, "wb").write(data)
    r = run("import", damaged, "-o", os.path.join(work, "d.lmap"), "--no-progress")
    check(r.returncode == 1 and damaged in r.stderr and not os.path.exists(os.path.join(work, "d.lmap")),
          "a damaged store source is refused naming it (%s)" % r.stderr.strip()[-200:])
    r = run("import", "-", "-", "-o", os.path.join(work, "e.lmap"))
    check(r.returncode == 2 and "twice" in r.stderr, "stdin twice: a usage error")
    return summary()


if __name__ == "__main__":
    raise SystemExit(main())
