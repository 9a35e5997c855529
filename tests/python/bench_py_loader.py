#!/usr/bin/python3
"""Measures (never asserts) soft labels per second through the Python binding.

Makes a `lmap synth` store (default 20,000 images, 1000 classes, 15x15,
top-5), serves it with lmapd (--threads 2) on 127.0.0.1, then measures for a
few seconds each:

1. Client.labels in a loop, batch 256, dense G=1 (float32 [256, 1000]
   streamed into numpy from sparse binary answers, liblmap's default; and
   from .npy answers, Client(npy_answers=True)): one process, one
   connection;
2. the same with Client.sparse (JSON answer, parsed by the C library);
3. a torch DataLoader(num_workers=2, batch_size=256, persistent_workers) over
   SoftLabelDataset wrapping a dataset that returns only a random crop box
   (no image decoding), so the label fetch dominates: each batch is one
   request from a worker, collated into a [256, 1000] tensor.

Random ids and RandomResizedCrop-like boxes; flip random. Everything (lmapd,
workers, this process) shares the machine's cores: on a 2-core machine the
figures are what one trainer host gets when lmapd runs next to it.

    /usr/bin/python3 tests/python/bench_py_loader.py [--images N] [--seconds S]

Uses build/lmap, build/lmapd and build/client/liblmap.so.1 unless LMAP_BIN,
LMAPD_BIN, LMAP_LIBRARY say otherwise. Not run by ctest (not a test_*.py).
"""

import argparse
import math
import os
import random
import shutil
import sys
import time

import numpy as np

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import py_common as pc  # noqa: E402

import torch  # noqa: E402
import torch.utils.data  # noqa: E402

import lmap  # noqa: E402
import lmap.torch as lt  # noqa: E402


def rrc_box(rng):
    """A CropBox like RandomResizedCrop's (scale 0.08-1, ratio 3/4-4/3) on
    an image of random size, flipped half the time."""
    ih, iw = rng.randint(200, 600), rng.randint(200, 600)
    for _ in range(10):
        area = ih * iw * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if 0 < w <= iw and 0 < h <= ih:
            i, j = rng.randint(0, ih - h), rng.randint(0, iw - w)
            break
    else:
        i, j, h, w = 0, 0, ih, iw
    b = lt.CropBox(j / iw, i / ih, (j + w) / iw, (i + h) / ih, False, i / ih, j / iw, h / ih, w / iw)
    return b._replace(flip=rng.random() < 0.5)


class BoxOnly(torch.utils.data.Dataset):
    """Items ((empty image, CropBox), 0): no decoding, only boxes, drawn
    once (4096 of them) so that the item itself costs next to nothing."""

    def __init__(self, n):
        self.n = n
        rng = random.Random(7)
        self.boxes = [rrc_box(rng) for _ in range(4096)]
        self.img = torch.empty(0)

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return (self.img, self.boxes[index % 4096]), 0


def timed(fn, seconds):
    """Runs fn() (returning labels done) repeatedly for ~seconds after one
    warm-up call; returns (labels, seconds)."""
    fn()
    t0 = time.perf_counter()
    done = 0
    while time.perf_counter() - t0 < seconds:
        done += fn()
    return done, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    d = pc.scratch("bench_py_loader")
    store = os.path.join(d, "s.lmap")
    pc.lmap_ok("synth", "-o", store, "-n", args.images, "--no-progress")
    ids = pc.lmap_ok("ids", store).decode().split()
    B = args.batch
    print("store: %d images (synth, 1000 classes, 15x15, top-5, f16); batch %d; %d cores"
          % (len(ids), B, os.cpu_count()), flush=True)
    with pc.Daemons() as daemons:
        url, _ = daemons.start(store, "--threads", "2")
        rng = random.Random(1)
        with lmap.Client(url) as c, lmap.Client(url, npy_answers=True) as cn:
            c.labels(ids[:1], [[0, 0, 1, 1]])  # warm: info cached, connection open
            cn.labels(ids[:1], [[0, 0, 1, 1]])

            def batch():
                boxes = [rrc_box(rng) for _ in range(B)]
                return ([rng.choice(ids) for _ in range(B)], np.array([b.xyxy for b in boxes]),
                        [b.flip for b in boxes])
            batches = [batch() for _ in range(64)]
            k = [0]

            def dense():
                q = batches[k[0] % len(batches)]
                k[0] += 1
                c.labels(q[0], q[1], flip=q[2])
                return B

            def dense_npy():
                q = batches[k[0] % len(batches)]
                k[0] += 1
                cn.labels(q[0], q[1], flip=q[2])
                return B

            def sparse():
                q = batches[k[0] % len(batches)]
                k[0] += 1
                c.sparse(q[0], q[1], flip=q[2])
                return B

            n, t = timed(dense, args.seconds)
            print("Client.labels  (dense [%d,1000], sparse answers), loop  : %9.0f labels/s (%.2f ms/batch)"
                  % (B, n / t, 1000.0 * t * B / n), flush=True)
            n, t = timed(dense_npy, args.seconds)
            print("Client.labels  (dense [%d,1000], .npy answers), loop    : %9.0f labels/s (%.2f ms/batch)"
                  % (B, n / t, 1000.0 * t * B / n), flush=True)
            n, t = timed(sparse, args.seconds)
            print("Client.sparse  (JSON, C-parsed), loop, 1 process         : %9.0f labels/s (%.2f ms/batch)"
                  % (n / t, 1000.0 * t * B / n), flush=True)

        ds = lt.SoftLabelDataset(BoxOnly(B * 100000), url, ids=lambda i: ids[i % len(ids)])
        loader = torch.utils.data.DataLoader(ds, batch_size=B, shuffle=False, num_workers=2,
                                             persistent_workers=True, prefetch_factor=4)
        it = iter(loader)
        for _ in range(4):  # workers started, connections open
            next(it)
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < args.seconds:
            _, soft, _ = next(it)
            n += soft.shape[0]
        t = time.perf_counter() - t0
        print("DataLoader(2 workers) over SoftLabelDataset(box-only)  : %9.0f labels/s (%.2f ms/batch)"
              % (n / t, 1000.0 * t * B / n), flush=True)
        del it, loader
        m = pc.metrics(url)
        print("lmapd: %d label requests, mean batch %.0f" % (
            m.get("lmap_batch_size_count", 0), m.get("lmap_batch_size_sum", 0) / max(1, m.get("lmap_batch_size_count", 1))))
    shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
