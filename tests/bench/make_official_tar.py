#!/usr/bin/python3
"""Writes a tar of synthetic label maps in the official ReLabel file format.

Each member is what the official release holds for one ImageNet image:
"nXXXXXXXX/nXXXXXXXX_N.pt", a torch.save'd tensor [2, K, H, W] (default
[2, 5, 15, 15], float32), plane 0 the top-K scores (classifier logits) of
each grid cell in decreasing order, plane 1 their class indices as floats.
The maps follow the same model as lmap's C generator (server/import/synth.c): 1-3
objects drawn as rotated elliptic blobs of a main class with confusable
neighbouring classes (indices within +-10), over a background scene of a
few clustered classes whose logits drift smoothly across the image, so
neighbouring cells share their class lists. Top-1 logits reach 8-16 inside
objects, the background stays around -3..5. Class folders are ImageNet-like
wnids sorted in class order, as in ImageNet (class 0 has the smallest).

It exists to measure `lmap import` on realistic input (100,000 files and
more), so it is vectorized over batches of images and writes with
torch.save into memory and tarfile.addfile. The output depends only on the
arguments: batch b is generated from numpy's PCG64 seeded with (seed, b),
and every tar header is fixed (mtime, owner, mode).

Usage: make_official_tar.py OUT.tar|- [--images N] [--seed S] [--classes C]
       [--topk K] [--grid H[xW]] [--dtype float32|float16] [--legacy]
       [--dirs]
Writing to '-' sends the tar to stdout and nothing else there; the summary
(files, bytes, files/s, bytes per member) goes to stderr.
"""
import argparse
import io
import sys
import tarfile
import time

import numpy as np
import torch

BATCH = 512  # images generated together (fewer for big maps, see batch_size)
MTIME = 1262304000  # 2010-01-01, the ImageNet era; any fixed value keeps tars reproducible
MAX_OBJ, MAX_NB, MAX_SCENE = 3, 4, 6


def class_wnids(seed, num_classes):
    """Distinct 8-digit synset-like numbers, ascending with the class index."""
    rng = np.random.Generator(np.random.PCG64([seed, 0x776E6964]))
    span = 15100000 - 1000000
    if num_classes > span:
        raise SystemExit("make_official_tar: --classes %d exceeds %d" % (num_classes, span))
    picks = rng.choice(span, size=num_classes, replace=False)
    return ["n%08d" % v for v in np.sort(picks) + 1000000]


def near(rng, center, spread, num_classes, shape):
    """Classes within +-spread of center (never center itself), wrapping."""
    off = rng.integers(1, spread + 1, size=shape) * rng.choice([-1, 1], size=shape)
    return (center + off) % num_classes


def make_batch(rng, n, num_classes, k, h, w):
    """Returns scores [n, k, h, w] float32 and classes [n, k, h, w] int64,
    and the main class of each image [n]."""
    C = num_classes
    # Candidate layout per image: for each object, its main class then its
    # MAX_NB neighbours; then MAX_SCENE scene classes; then k tail classes
    # with low scores that guarantee k distinct candidates in every cell.
    per_obj = 1 + MAX_NB
    n_obj_c = MAX_OBJ * per_obj
    ncand = n_obj_c + MAX_SCENE + k
    cls = np.zeros((n, ncand), np.int64)
    valid = np.zeros((n, ncand), bool)
    base = np.zeros((n, ncand), np.float32)
    amp = np.zeros((n, ncand), np.float32)
    gx = np.zeros((n, ncand), np.float32)
    gy = np.zeros((n, ncand), np.float32)
    ns = np.zeros((n, ncand), np.float32)
    slot = np.full((n, ncand), MAX_OBJ, np.int64)  # MAX_OBJ = "max over objects"

    nobj = rng.choice([1, 2, 3], size=n, p=[0.55, 0.30, 0.15])
    main = rng.integers(0, C, size=(n, MAX_OBJ))
    # Blobs: the first object large and central (as ImageNet's labelled one
    # usually is), the others smaller and anywhere.
    first = np.zeros((n, MAX_OBJ), bool)
    first[:, 0] = True
    lo = np.where(first, 0.30, 0.12)
    hi = np.where(first, 0.60, 0.35)
    rx = np.maximum(rng.uniform(lo, hi) * w, 0.75)
    ry = np.maximum(rng.uniform(lo, hi) * h, 0.75)
    cx = rng.uniform(np.where(first, 0.25, 0.0), np.where(first, 0.75, 1.0)) * w
    cy = rng.uniform(np.where(first, 0.25, 0.0), np.where(first, 0.75, 1.0)) * h
    th = rng.uniform(0.0, np.pi, size=(n, MAX_OBJ))
    co, si = np.cos(th), np.sin(th)
    irx, iry = 1.0 / rx**2, 1.0 / ry**2
    qa = co * co * irx + si * si * iry
    qb = 2.0 * co * si * (irx - iry)
    qc = si * si * irx + co * co * iry
    peak = np.where(first, rng.uniform(8.5, 16.0, (n, MAX_OBJ)), rng.uniform(6.5, 13.0, (n, MAX_OBJ)))
    obj_on = np.arange(MAX_OBJ)[None, :] < nobj[:, None]

    for o in range(MAX_OBJ):
        i0 = o * per_obj
        cls[:, i0] = main[:, o]
        valid[:, i0] = obj_on[:, o]
        base[:, i0] = 0.12 * peak[:, o]
        amp[:, i0] = 0.88 * peak[:, o]
        gx[:, i0] = rng.uniform(-1.5, 1.5, n)
        gy[:, i0] = rng.uniform(-1.5, 1.5, n)
        ns[:, i0] = 0.35
        slot[:, i0] = o
        # Siblings: peaks from about half the main logit (at most 8) down.
        nnb = rng.integers(0, MAX_NB + 1, n)
        top = np.minimum(peak[:, o] * rng.uniform(0.35, 0.65, n), 8.0)
        pk = top[:, None] * np.cumprod(rng.uniform(0.75, 1.0, (n, MAX_NB)), axis=1)
        sl = slice(i0 + 1, i0 + per_obj)
        cls[:, sl] = near(rng, main[:, o:o + 1], 10, C, (n, MAX_NB))
        valid[:, sl] = obj_on[:, o:o + 1] & (np.arange(MAX_NB)[None, :] < nnb[:, None])
        base[:, sl] = 0.1 * pk
        amp[:, sl] = 0.9 * pk
        gx[:, sl] = rng.uniform(-4.0, 4.0, (n, MAX_NB))
        gy[:, sl] = rng.uniform(-4.0, 4.0, (n, MAX_NB))
        ns[:, sl] = 0.45
        slot[:, sl] = o

    # Scene: 3-6 classes around 1-2 centres, sinking inside objects.
    sl = slice(n_obj_c, n_obj_c + MAX_SCENE)
    nsc = rng.integers(3, MAX_SCENE + 1, n)
    ncent = rng.integers(1, 3, n)
    centers = rng.integers(0, C, (n, 2))
    j = np.arange(MAX_SCENE)[None, :]
    which = np.where(j < ncent[:, None], np.minimum(j, 1), rng.integers(0, 2, (n, MAX_SCENE)) % ncent[:, None])
    ctr = np.take_along_axis(centers, which, axis=1)
    cls[:, sl] = np.where(j < ncent[:, None], ctr, near(rng, ctr, 15, C, (n, MAX_SCENE)))
    valid[:, sl] = j < nsc[:, None]
    base[:, sl] = rng.uniform(-1.0, 2.5, (n, MAX_SCENE))
    amp[:, sl] = -rng.uniform(1.0, 3.0, (n, MAX_SCENE))
    gx[:, sl] = rng.uniform(-3.0, 3.0, (n, MAX_SCENE))
    gy[:, sl] = rng.uniform(-3.0, 3.0, (n, MAX_SCENE))
    ns[:, sl] = 0.6

    # Tail: k consecutive classes from a random start, far below the rest.
    sl = slice(n_obj_c + MAX_SCENE, ncand)
    cls[:, sl] = (rng.integers(0, C, (n, 1)) + np.arange(k)[None, :]) % C
    valid[:, sl] = True
    base[:, sl] = rng.uniform(-4.0, -2.5, (n, k)) - 0.05 * np.arange(k)[None, :]
    ns[:, sl] = 0.3

    # A class may appear twice (two objects of one class, a sibling that is
    # also a scene class, small C): only its first candidate stays.
    # (Earlier invalid candidates do not count.)
    same = cls[:, :, None] == cls[:, None, :]  # [n, i, j]
    dup = (np.triu(same, 1) & valid[:, :, None]).any(axis=1)
    valid &= ~dup

    # Footprints f[n, h, w, MAX_OBJ + 1]: t * (2 - t) with t = 1 - d2 >= 0.
    # Arrays put the candidate axis last, where numpy's reductions and
    # partitions are fastest.
    f32 = np.float32
    yy = (np.arange(h, dtype=f32) + 0.5)[None, :, None, None]
    xx = (np.arange(w, dtype=f32) + 0.5)[None, None, :, None]
    dx = xx - cx[:, None, None, :].astype(f32)
    dy = yy - cy[:, None, None, :].astype(f32)
    d2 = (qa[:, None, None, :].astype(f32) * dx * dx + qb[:, None, None, :].astype(f32) * dx * dy
          + qc[:, None, None, :].astype(f32) * dy * dy)
    t = np.clip(1.0 - d2, 0.0, None)
    f = t * (2.0 - t) * obj_on[:, None, None, :]
    f = np.concatenate([f, f.max(axis=-1, keepdims=True)], axis=-1)  # [n, h, w, MAX_OBJ + 1]

    xn = ((np.arange(w, dtype=f32) + 0.5) / w - 0.5)[None, None, :, None]
    yn = ((np.arange(h, dtype=f32) + 0.5) / h - 0.5)[None, :, None, None]
    e = lambda v: v[:, None, None, :]
    # amp * f[slot] for all candidates at once: a batched product of the
    # footprints [n, cells, slots] with one-hot slot weights [n, slots, cand].
    w_slot = (slot[:, None, :] == np.arange(MAX_OBJ + 1)[None, :, None]) * amp[:, None, :]
    score = np.matmul(f.reshape(n, h * w, MAX_OBJ + 1), w_slot.astype(f32)).reshape(n, h, w, ncand)
    score += e(base) + e(gx) * xn + e(gy) * yn
    score += e(ns) * (rng.random((n, h, w, ncand), dtype=f32) * 2.0 - 1.0)
    score[~np.broadcast_to(e(valid), score.shape)] = -np.inf
    # A rare stray class per cell (1 in 16), as real maps show in textured
    # background, unless it is one of the image's candidates already.
    stray = rng.integers(0, C, (n, h, w, 1))
    stray_on = (rng.random((n, h, w, 1), dtype=f32) < 1.0 / 16) & ~(
        (e(cls) == stray) & e(valid)).any(axis=-1, keepdims=True)
    stray_score = np.where(stray_on, rng.uniform(-1.5, 3.5, (n, h, w, 1)), -np.inf).astype(f32)
    score = np.concatenate([score, stray_score], axis=-1)  # candidate ncand = the stray
    # Top k on packed keys: the score's bits mapped to an order-preserving
    # integer, shifted up, with the candidate index below; partitioning and
    # sorting plain integers beats argpartition plus gathers.
    bits = score.view(np.int32).astype(np.int64)
    bits = np.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    key = (bits << 16) | np.arange(ncand + 1, dtype=np.int64)
    top = np.sort(np.partition(key, key.shape[-1] - k, axis=-1)[..., -k:], axis=-1)[..., ::-1]
    idx = top & 0xFFFF
    tb = (top >> 16).astype(np.int32)
    top_scores = np.where(tb < 0, tb ^ 0x7FFFFFFF, tb).view(f32)
    cls_all = np.concatenate([np.broadcast_to(cls[:, None, None, :], (n, h, w, ncand)), stray], axis=-1)
    top_classes = np.take_along_axis(cls_all, idx, axis=-1)
    # [n, h, w, k] -> [n, k, h, w]
    top_scores = np.ascontiguousarray(top_scores.transpose(0, 3, 1, 2))
    top_classes = np.ascontiguousarray(top_classes.transpose(0, 3, 1, 2))
    assert np.isfinite(top_scores).all()
    return top_scores, top_classes, main[:, 0]


def batch_size(k, h, w):
    """Images per batch: 512, or fewer so that the per-batch candidate
    arrays stay near 2M cells x candidates. A function of the shape only,
    so the output still depends on the arguments alone."""
    per_image = h * w * (MAX_OBJ * (1 + MAX_NB) + MAX_SCENE + k + 1)
    return max(1, min(BATCH, 2000000 // per_image))


def parse_grid(text):
    parts = text.lower().split("x")
    if len(parts) == 1:
        parts = parts * 2
    h, w = (int(v) for v in parts)
    if not (1 <= h <= 1024 and 1 <= w <= 1024):
        raise argparse.ArgumentTypeError("grid sides must be within 1..1024")
    return h, w


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="output tar path, or - for stdout")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--topk", type=int, default=5)
    ap.add_argument("--grid", type=parse_grid, default=(15, 15), help="H or HxW (default 15)")
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    ap.add_argument("--legacy", action="store_true",
                    help="torch's legacy (pre-1.6) serialization instead of the zip format")
    ap.add_argument("--dirs", action="store_true",
                    help="also write a directory member before each folder's first file, as `tar cf` does")
    a = ap.parse_args()
    h, w = a.grid
    if a.images < 0 or a.seed < 0 or not (1 <= a.topk <= min(a.classes, 1024)):
        ap.error("need --images >= 0, --seed >= 0 and 1 <= --topk <= min(--classes, 1024)")
    if a.dtype == "float16" and a.classes > 2048:
        ap.error("float16 represents class indices exactly only up to 2048")
    torch.set_num_threads(1)
    wnids = class_wnids(a.seed, a.classes)
    dtype = torch.float16 if a.dtype == "float16" else torch.float32

    out = sys.stdout.buffer if a.out == "-" else open(a.out, "wb")
    t0 = time.perf_counter()
    data_bytes = 0
    seen_dirs = set()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        def header(name, size, kind=tarfile.REGTYPE):
            ti = tarfile.TarInfo(name)
            ti.size, ti.type, ti.mtime = size, kind, MTIME
            ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            return ti

        bs = batch_size(a.topk, h, w)
        for b0 in range(0, a.images, bs):
            n = min(bs, a.images - b0)
            rng = np.random.Generator(np.random.PCG64([a.seed, b0 // bs]))
            scores, classes, mains = make_batch(rng, bs, a.classes, a.topk, h, w)
            maps = np.stack([scores, classes.astype(np.float32)], axis=1)  # [B, 2, K, H, W]
            for i in range(n):
                wnid = wnids[mains[i]]
                if a.dirs and wnid not in seen_dirs:
                    seen_dirs.add(wnid)
                    tar.addfile(header(wnid + "/", 0, tarfile.DIRTYPE))
                # A copy, so that torch.save writes this image's storage
                # only and not the whole batch behind a view.
                t = torch.from_numpy(maps[i].copy())
                if dtype != torch.float32:
                    t = t.to(dtype)
                buf = io.BytesIO()
                torch.save(t, buf, _use_new_zipfile_serialization=not a.legacy)
                size = buf.tell()
                buf.seek(0)
                data_bytes += size
                tar.addfile(header("%s/%s_%d.pt" % (wnid, wnid, b0 + i), size), buf)
    out.flush()
    tar_bytes = out.tell() if a.out != "-" else None
    if out is not sys.stdout.buffer:
        out.close()
    dt = time.perf_counter() - t0
    msg = "make_official_tar: %d files in %.2f s (%.0f files/s)" % (
        a.images, dt, a.images / dt if dt > 0 else 0.0)
    if a.images > 0:
        msg += ", %.0f bytes per .pt" % (data_bytes / a.images)
        if tar_bytes is not None:
            msg += ", %.0f tar bytes per member" % (tar_bytes / a.images)
    if tar_bytes is not None:
        msg += ", %d bytes in all" % tar_bytes
    print(msg, file=sys.stderr)


if __name__ == "__main__":
    main()
