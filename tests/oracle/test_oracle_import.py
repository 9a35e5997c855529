#!/usr/bin/python3
"""Oracle test: real torch.save files through `lmap import`, then `lmap get`
against torchvision.

For three shapes ([2,5,15,15] C=1000, [2,5,18,18] C=1000, [2,3,7,11] C=10)
it writes 24-30 .pt files laid out like ImageNet (nXXXXXXXX/nXXXXXXXX_N.pt)
with torch.save in every combination of {zip, legacy} x {float32, float16} x
{contiguous, permuted strides, storage offset}, plus non-.pt files that a
directory import must ignore. It imports each tree four ways (directory f32,
directory f16 with --threads 2, a .tar f32, the same tar on stdin f16) and
checks `lmap ids`, `lmap info --json`, `lmap verify` and every record through
`lmap export` (equal to the tensor, scores rounded to f16 in f16 stores).

Then, per shape, it sends >= 2,000 queries in one `lmap get --queries` call
to the f32 and to the f16 store (full-image, tiny, zero-area, edge and
RandomResizedCrop boxes; G = 1, 2, 7, 14; flip; xyxy and relabel; dense and
sparse; softmax on and off, all set per line) and compares each answer with
torchvision roi_align + softmax on the exact map (f32 store) or the
f16-rounded map (f16 store): max abs diff <= 1e-4 on probabilities and 5e-4
on pooled logits; sparse answers are expanded with `rest` and also checked
against the contract (sorted, listed = torchvision's non-zero logits, rest 0
for logits, probabilities sum to 1). A second call per store takes its
options from the command-line flags with '-' (stdin) as the query file, and
a few queries go through the one-query form `lmap get STORE ID --box ...`.
Last, two `lmap synth` stores: their exported maps must be valid top-K maps
and their answers must match torchvision on those maps.
Prints the max error per case; exits 1 on any failure.
"""

import itertools
import json
import os
import random
import sys
import time
import zlib

import numpy as np
import torch

sys.dont_write_bytecode = True  # keep the source tree clean under ctest
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle_common as oc  # noqa: E402

SHAPES = [
    # name, K, H, W, C, files
    ("k5_15x15_c1000", 5, 15, 15, 1000, 30),
    ("k5_18x18_c1000", 5, 18, 18, 1000, 24),
    ("k3_7x11_c10", 3, 7, 11, 10, 30),
]
VARIANTS = list(itertools.product(["zip", "legacy"], [torch.float32, torch.float16],
                                  ["contig", "permuted", "offset"]))
# Queries per output size: (count, fraction sparse).
PLAN_C1000 = {1: (1500, 0.5), 2: (300, 0.5), 7: (150, 0.85), 14: (60, 0.95)}
PLAN_SMALL = {1: (1400, 0.5), 2: (300, 0.5), 7: (200, 0.5), 14: (100, 0.5)}


def write_tree(env, name, k, h, w, c, nfiles, gen, ck):
    """Writes the .pt tree; returns (dir, {id: exact [2,K,H,W] float32})."""
    root = env.dir(name, "src")
    syns = ["n%08d" % (1440764 + 1000 * i + zlib.crc32(name.encode()) % 997) for i in range(3)]
    expected = {}
    for i in range(nfiles):
        syn = syns[i % 3]
        ident = "%s_%d" % (syn, 1000 + 37 * i)
        fmt, dtype, layout = VARIANTS[i % len(VARIANTS)]
        t = oc.make_topk(gen, k, h, w, c)
        saved = oc.as_variant(t, dtype, layout)
        path = os.path.join(root, syn, ident + ".pt")
        oc.save_pt(saved, path, fmt)
        back = torch.load(path)
        ck.check(back.dtype == dtype and torch.equal(back.float(), saved.float())
                 and back.stride() == saved.stride(),
                 "%s: torch.load of the written file differs (test harness)" % path)
        expected[ident] = oc.exact_map(saved)
    # Files a directory import must ignore.
    with open(os.path.join(root, "README.txt"), "w") as f:
        f.write("not a label map\n")
    with open(os.path.join(root, syns[0], "LOC_notes.json"), "w") as f:
        f.write("{}\n")
    return root, expected


def check_store(env, ck, store, label, expected, k, h, w, c, enc, level=15):
    ids = sorted(expected)
    rc, out, err = env.run(["ids", store])
    ck.check(rc == 0, "%s: lmap ids exit %d: %s" % (label, rc, err.strip()))
    got = out.decode().split()
    ck.check(got == ids, "%s: lmap ids gave %d ids (first %s), expected %d (first %s)"
             % (label, len(got), got[:2], len(ids), ids[:2]))

    rc, out, err = env.run(["info", store])
    ck.check(rc == 0 and len(out.strip()) > 0, "%s: lmap info exit %d: %s" % (label, rc, err.strip()))
    rc, out, err = env.run(["info", store, "--json"])
    ck.check(rc == 0, "%s: lmap info --json exit %d: %s" % (label, rc, err.strip()))
    try:
        info = json.loads(out.decode())
    except ValueError as e:
        ck.check(False, "%s: lmap info --json is not JSON: %s: %r" % (label, e, out[:200]))
        info = {}
    # Field names as the importer writes them (server/import/build.c meta_json).
    want = {"record_count": len(ids), "topk": k, "grid_h": h, "grid_w": w,
            "num_classes": c, "encoding": enc, "extent": "full", "zstd_level": level}
    for key, val in want.items():
        ck.check(info.get(key) == val, "%s: info --json %s = %r, expected %r" % (label, key, info.get(key), val))
    e = info.get("encoding_max_prob_error")
    ck.check(isinstance(e, (int, float)) and (e == 0 if enc == "f32" else 0 <= e <= 1e-3),
             "%s: info --json encoding_max_prob_error = %r" % (label, e))

    rc, out, err = env.run(["verify", store])
    ck.check(rc == 0, "%s: lmap verify exit %d: %s %s" % (label, rc, out.decode()[-300:], err.strip()))

    maxd = 0.0
    for ident in ids:
        npy = env.path("export", label.replace(" ", "_"), ident + ".npy")
        rc, out, err = env.run(["export", store, ident, "-o", npy])
        if not ck.check(rc == 0, "%s: lmap export %s exit %d: %s" % (label, ident, rc, err.strip())):
            continue
        a = np.load(npy)
        want_t = expected[ident] if enc == "f32" else oc.f16_map(expected[ident])
        if not ck.check(a.dtype == np.float32 and a.shape == tuple(want_t.shape),
                        "%s: export %s has dtype %s shape %s, expected float32 %s"
                        % (label, ident, a.dtype, a.shape, tuple(want_t.shape))):
            continue
        d = float(np.abs(a.astype(np.float64) - want_t.double().numpy()).max())
        maxd = max(maxd, d)
        ck.check(d == 0.0, "%s: export %s differs from the %s tensor by %g"
                 % (label, ident, "exact" if enc == "f32" else "f16-rounded", d))
        os.unlink(npy)
    ck.err("export vs tensor (%s)" % label, maxd)


def make_queries(rng, ids, h, w, c, plan):
    qs = []
    for g, (n, frac_sparse) in plan.items():
        for _ in range(n):
            fmt = "relabel" if rng.random() < 0.25 else "xyxy"
            if rng.random() < 0.3:
                box = oc.special_relabel(rng) if fmt == "relabel" else oc.special_xyxy(rng, h, w)
            else:
                box = oc.rrc_relabel(rng) if fmt == "relabel" else oc.rrc_xyxy(rng)
            qs.append({"id": rng.choice(ids), "box": box, "box_format": fmt, "output_size": g,
                       "flip": rng.random() < 0.3,
                       "format": "sparse" if rng.random() < frac_sparse else "dense",
                       "softmax": rng.random() < 0.7})
    rng.shuffle(qs)
    return qs


def compare(ck, label, qs, items, dense, idmap, c):
    """Checks lmap's items against torchvision, batched per (G, softmax)."""
    if not ck.check(len(items) == len(qs), "%s: %d answers for %d queries" % (label, len(items), len(qs))):
        return
    groups = {}
    for i, q in enumerate(qs):
        groups.setdefault((q["output_size"], q["softmax"]), []).append(i)
    nbad = 0
    for (g, sm), idxs in sorted(groups.items()):
        sub = [qs[i] for i in idxs]
        logits = oc.reference(dense, [idmap[q["id"]] for q in sub], [q["box"] for q in sub],
                              [q["box_format"] for q in sub], g, [q["flip"] for q in sub], False)
        ref = torch.softmax(logits, dim=2) if sm else logits
        ref = ref.double().numpy()
        nonzero = (logits != 0).numpy()
        tol = oc.TOL_PROB if sm else oc.TOL_LOGIT
        for j, i in enumerate(idxs):
            q = qs[i]
            try:
                item = items[i]
            except ValueError as e:
                ck.check(False, "%s line %d: answer is not JSON: %s" % (label, i + 1, e))
                continue
            sparse = q["format"] == "sparse"
            case = "%s G=%d %s %s" % (label, g, q["format"], "probs" if sm else "logits")
            where = "%s line %d %s" % (label, i + 1, json.dumps(q))
            if item.get("id") != q["id"]:
                ck.check(False, "%s: answer id %r" % (where, item.get("id")))
                continue
            try:
                a = oc.item_to_dense(item, g, c, sm, sparse)
            except (ValueError, KeyError, TypeError, IndexError) as e:
                ck.check(False, "%s: malformed answer: %s" % (where, e))
                continue
            e = float(np.abs(a - ref[j]).max())
            ck.err(case, e)
            if e > tol:
                nbad += 1
                cell, cls = np.unravel_index(int(np.abs(a - ref[j]).argmax()), a.shape)
                ck.check(False, "%s: max abs diff %.3g > %g at cell %d class %d: torchvision %.9g, lmap %.9g"
                         % (where, e, tol, cell, cls, ref[j][cell, cls], a[cell, cls]))
            else:
                ck.check(True, "")
            if sparse:
                for p in oc.sparse_problems(item, g, c, sm, nonzero[j]):
                    ck.check(False, "%s: %s" % (where, p))
    return nbad


def pool_store(env, ck, rng, store, label, maps, idmap, h, w, c, plan):
    dense = oc.dense_maps(maps, c)
    ids = sorted(idmap)
    qs = make_queries(rng, ids, h, w, c, plan)
    qfile = env.path("q", label.replace(" ", "_") + ".jsonl")
    with open(qfile, "w") as f:
        for q in qs:
            f.write(json.dumps(q) + "\n")
    t0 = time.time()
    rc, out, err = env.run(["get", store, "--queries", qfile])
    t1 = time.time()
    if not ck.check(rc == 0, "%s: lmap get --queries exit %d: %s" % (label, rc, err.strip()[:500])):
        return
    items = oc.parse_items(out)
    compare(ck, label, qs, items, dense, idmap, c)
    print("%s: %d queries, lmap get %.2f s, %.1f MB of JSON, compared in %.2f s"
          % (label, len(qs), t1 - t0, len(out) / 1e6, time.time() - t1), flush=True)

    # The one-query form prints the same item as the query file.
    for i in rng.sample(range(len(qs)), 8):
        q = qs[i]
        args = ["get", store, q["id"], "--box", ",".join(repr(float(v)) for v in q["box"]),
                "--box-format", q["box_format"], "--output-size", str(q["output_size"]),
                "--format", q["format"]]
        if q["flip"]:
            args.append("--flip")
        if not q["softmax"]:
            args.append("--no-softmax")
        rc, out1, err = env.run(args)
        if ck.check(rc == 0, "%s: %s exit %d: %s" % (label, " ".join(args[2:]), rc, err.strip())):
            one = oc.parse_items(out1)
            ck.check(len(one) == 1 and one[0] == items[i],
                     "%s: one-query form of line %d differs from the --queries answer" % (label, i + 1))

    # Options from the command-line flags, queries on stdin.
    g = 3
    qs2 = []
    for _ in range(120):
        box = oc.rrc_relabel(rng) if rng.random() < 0.8 else oc.special_relabel(rng)
        qs2.append({"id": rng.choice(ids), "box": box, "box_format": "relabel", "output_size": g,
                    "flip": True, "format": "sparse", "softmax": False})
    body = "".join(json.dumps({"id": q["id"], "box": q["box"]}) + "\n" for q in qs2).encode()
    rc, out, err = env.run(["get", store, "--queries", "-", "--box-format", "relabel",
                            "--output-size", str(g), "--flip", "--format", "sparse", "--no-softmax"],
                           input_bytes=body)
    if ck.check(rc == 0, "%s: lmap get --queries - with flags exit %d: %s" % (label, rc, err.strip()[:500])):
        compare(ck, label + " flags", qs2, oc.parse_items(out), dense, idmap, c)


def main():
    env = oc.Env("test_oracle_import")
    ck = oc.Checker("test_oracle_import")
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(20240601)
    rng = random.Random(7)
    t_start = time.time()
    for name, k, h, w, c, nfiles in SHAPES:
        t0 = time.time()
        src, expected = write_tree(env, name, k, h, w, c, nfiles, gen, ck)
        tar = env.path(name, "maps.tar")
        # The tar holds only the .pt files (a non-.pt member is an error in a tar).
        tree_pt = env.dir(name, "src_pt")
        for ident in expected:
            syn = ident.split("_")[0]
            os.makedirs(os.path.join(tree_pt, syn), exist_ok=True)
            os.link(os.path.join(src, syn, ident + ".pt"), os.path.join(tree_pt, syn, ident + ".pt"))
        oc.make_tar(tree_pt, tar)

        stores = {}
        cflag = ["--num-classes", str(c)]
        specs = [
            ("dir f32", ["import", src, "-o", env.path(name, "dir_f32.lmap"), "--encoding", "f32"] + cflag, None, "f32"),
            # Default encoding (f16); for C = 1000 also the default class count.
            ("dir f16", ["import", src, "-o", env.path(name, "dir_f16.lmap"), "--threads", "2"]
             + ([] if c == 1000 else cflag), None, "f16"),
            ("tar f32", ["import", tar, "-o", env.path(name, "tar_f32.lmap"), "--encoding", "f32"] + cflag, None, "f32"),
            ("stdin f16", ["import", "-", "-o", env.path(name, "stdin_f16.lmap"), "--encoding", "f16"] + cflag, tar, "f16"),
            # The fast level writes other bytes for the same maps.
            ("tar f16 level 1", ["import", tar, "-o", env.path(name, "tar_f16_l1.lmap"), "--level", "1"] + cflag,
             None, "f16"),
        ]
        for label, args, stdin_path, enc in specs:
            label = "%s %s" % (name, label)
            store = args[args.index("-o") + 1]
            if stdin_path:
                with open(stdin_path, "rb") as f:
                    rc, out, err = env.run(args, stdin=f)
            else:
                rc, out, err = env.run(args)
            if not ck.check(rc == 0 and os.path.isfile(store),
                            "%s: lmap %s exit %d: %s" % (label, " ".join(args[:2]), rc, err.strip()[:500])):
                continue
            stores[label] = (store, enc)
            level = int(args[args.index("--level") + 1]) if "--level" in args else 15
            check_store(env, ck, store, label, expected, k, h, w, c, enc, level)
        print("%s: wrote %d files and checked %d stores in %.1f s"
              % (name, nfiles, len(stores), time.time() - t0), flush=True)

        ids = sorted(expected)
        idmap = {ident: i for i, ident in enumerate(ids)}
        exact = torch.stack([expected[i] for i in ids])
        plan = PLAN_C1000 if c >= 1000 else PLAN_SMALL
        for label, maps in (("dir f32", exact), ("dir f16", torch.stack([oc.f16_map(m) for m in exact]))):
            key = "%s %s" % (name, label)
            if key in stores:
                pool_store(env, ck, rng, stores[key][0], key, maps, idmap, h, w, c, plan)
        print("%s done at %.1f s" % (name, time.time() - t_start), flush=True)
    check_synth(env, ck, rng)
    check_level_usage(env, ck, src)
    ck.finish(env)


def check_level_usage(env, ck, src):
    """A --level outside 1..19 is a usage error that names the option, and
    leaves no store behind."""
    for cmd in (["import", src], ["synth", "--images", "4"]):
        for bad in ("0", "20", "-3", "fast", ""):
            store = env.path("level_usage", "bad.lmap")
            rc, out, err = env.run(cmd + ["-o", store, "--level", bad])
            ck.check(rc == 2 and "--level" in err and "1, 19" in err and not os.path.exists(store),
                     "lmap %s --level %r: exit %d, stderr %r" % (cmd[0], bad, rc, err[:200]))


SYNTH = [
    # name, synth flags, K, H, W, C
    ("synth_15x15_c1000_f16", ["--images", "24", "--seed", "3"], 5, 15, 15, 1000),
    ("synth_7x11_c10_f32", ["--images", "24", "--grid", "7x11", "--topk", "3", "--classes", "10",
                            "--encoding", "f32", "--seed", "5"], 3, 7, 11, 10),
]
PLAN_SYNTH = {1: (200, 0.5), 2: (60, 0.5), 7: (30, 0.8)}


def check_synth(env, ck, rng):
    """`lmap synth` stores: what they hold (via export) is a valid top-K map
    (classes distinct per cell, in range, integral; scores finite), and
    pooling them agrees with torchvision on those exported maps."""
    for name, flags, k, h, w, c in SYNTH:
        store = env.path(name, "s.lmap")
        rc, out, err = env.run(["synth", "-o", store] + flags)
        if not ck.check(rc == 0, "%s: lmap synth exit %d: %s" % (name, rc, err.strip()[:300])):
            continue
        rc, out, err = env.run(["ids", store])
        ids = out.decode().split()
        ck.check(rc == 0 and len(ids) == 24, "%s: %d ids" % (name, len(ids)))
        maps = []
        for ident in ids:
            npy = env.path(name, "e.npy")
            rc, _, err = env.run(["export", store, ident, "-o", npy])
            if not ck.check(rc == 0, "%s: export %s exit %d: %s" % (name, ident, rc, err.strip())):
                return
            a = np.load(npy)
            if not ck.check(a.shape == (2, k, h, w), "%s: export %s shape %s" % (name, ident, a.shape)):
                return
            cls = a[1].reshape(k, -1).T  # [cells, K]
            ck.check(bool(np.isfinite(a[0]).all()), "%s %s: non-finite score" % (name, ident))
            ck.check(bool(((cls >= 0) & (cls < c) & (cls == np.round(cls))).all()),
                     "%s %s: class index outside [0, %d) or not integral" % (name, ident, c))
            ck.check(all(len(set(row.tolist())) == k for row in cls),
                     "%s %s: a cell repeats a class" % (name, ident))
            maps.append(torch.from_numpy(a))
        idmap = {ident: i for i, ident in enumerate(ids)}
        pool_store(env, ck, rng, store, name, torch.stack(maps), idmap, h, w, c, PLAN_SYNTH)


if __name__ == "__main__":
    main()
