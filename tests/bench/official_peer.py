#!/usr/bin/python3
"""The official ReLabel label path, as the peer of lmap's batch benchmark.

What a trainer without lmap does for every sample of every batch: torch.load
the sample's `.pt` label map (float32 [2, K, H, W]: top-K scores, class
indices as floats), scatter the batch into a dense [B, 1000, H, W] tensor,
torchvision roi_align over the crop boxes, softmax: get_labelmaps() and
get_relabel() of the official code (utils/relabel_functions.py), as copied
inline by tests/oracle/test_oracle_relabel.py (imported from there). Boxes are
RandomResizedCrop draws (torchvision's get_params) in the official
(i/H, j/W, h/H, w/W) form, turned into corners by the training loop's
`coords[:, 2:] += coords[:, :2]`.

Same maps as lmap: the maps of --maps ids drawn from --ids are fetched from
the running lmapd (GET /v1/maps/{id}, .npy, the official float32 layout) and
torch.save'd into a tmpfs directory (--dir, under /dev/shm) in the release's
layout (nXXXXXXXX/nXXXXXXXX_N.pt), so loading costs what it costs from a
warm page cache. The label work runs in --workers DataLoader worker
processes (torch uses one thread in each), one batch per worker call, so the
main process only receives finished [B, C] soft labels, as lmap's client
does. Output: one JSON line on stdout (labels/s, per-batch time p50/p99 as
measured inside the workers, the workers' CPU time for the batches received,
memory of the main process and its workers, sampled between batches, so
without the 230 MB dense batch each worker holds while it computes).
Measured, never asserted. The tmpfs directory is removed at exit unless
--keep is given.

Usage: official_peer.py --url URL --ids FILE --dir /dev/shm/X
       [--maps N] [--batch B] [--workers W] [--seconds S] [--max-batches N]
       [--seed S] [--keep]
"""
import argparse
import http.client
import io
import json
import os
import random
import shutil
import sys
import time
import urllib.parse

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset

sys.dont_write_bytecode = True


# The official loader's label pooling: the inline copy the oracle test
# checks lmap against (tests/oracle/test_oracle_relabel.py).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "oracle"))
from test_oracle_relabel import official_get_labelmaps as get_labelmaps  # noqa: E402
from test_oracle_relabel import official_get_relabel as get_relabel  # noqa: E402


_mem = {"t": -1e9, "v": (0, 0)}


def mem_kib():
    """(rss, pss) of this process in KiB, from /proc/self/smaps_rollup, read
    at most once a second (a read walks the page tables: milliseconds for a
    process holding a dense batch, which would slow the path measured)."""
    now = time.monotonic()
    if now - _mem["t"] >= 1.0:
        rss = pss = 0
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
        _mem["t"], _mem["v"] = now, (rss, pss)
    return _mem["v"]


class LabelBatches(Dataset):
    """Item = one batch (a list of sample indices, from the batch sampler):
    the official per-sample work of the whole batch, done in the worker."""

    def __init__(self, paths, seed):
        self.paths = paths
        self.seed = seed
        self.rrc = torchvision.transforms.RandomResizedCrop(224)
        self.img = None

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, indices):
        if self.img is None:  # per worker: RandomResizedCrop only reads the size
            self.img = torch.empty(1, 375, 500)
            torch.manual_seed(self.seed * 1000 + os.getpid())
        t0, c0 = time.perf_counter(), time.process_time()
        topk, coords = [], []
        for i in indices:
            topk.append(torch.load(self.paths[i]))
            a, b, h, w = self.rrc.get_params(self.img, self.rrc.scale, self.rrc.ratio)
            coords.append((a / 375, b / 500, h / 375, w / 500))
        label_maps_topk = torch.stack(topk)                       # default_collate
        coords = torch.tensor(coords, dtype=torch.float64)        # default_collate
        coords[:, 2:] += coords[:, :2]                            # the training loop
        n = len(indices)
        target = get_relabel(get_labelmaps(label_maps_topk, n), coords, n)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        return target, elapsed, cpu, mem_kib()


def fetch_maps(url, ids, root):
    """GET /v1/maps/{id} as .npy for each id and torch.save it as the
    official release stores it. Returns the list of paths."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    paths = []
    for ident in ids:
        conn.request("GET", "%s/v1/maps/%s" % (u.path.rstrip("/"), urllib.parse.quote(ident)),
                     headers={"Accept": "application/x-npy"})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise SystemExit("official_peer: GET /v1/maps/%s: HTTP %d %s" % (ident, r.status, body[:200]))
        arr = np.load(io.BytesIO(body))
        if arr.ndim != 4 or arr.shape[0] != 2 or arr.dtype != np.float32:
            raise SystemExit("official_peer: map %s has shape %s %s" % (ident, arr.shape, arr.dtype))
        sub = os.path.join(root, ident.split("_")[0])
        os.makedirs(sub, exist_ok=True)
        p = os.path.join(sub, ident + ".pt")
        torch.save(torch.from_numpy(arr.copy()), p)
        paths.append(p)
    conn.close()
    return paths


def batches(n, batch, seed):
    """Endless batches of random sample indices (with replacement)."""
    rng = random.Random(seed)
    while True:
        yield [rng.randrange(n) for _ in range(batch)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--dir", required=True, help="tmpfs directory for the .pt copies")
    ap.add_argument("--maps", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--max-batches", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if not (0 < a.maps <= 1_000_000 and 0 < a.batch <= 4096 and 0 < a.workers <= 16
            and 0 < a.seconds <= 3600 and a.max_batches > 0):
        ap.error("argument out of range")

    with open(a.ids) as f:
        all_ids = [l.strip() for l in f if l.strip()]
    ids = random.Random(a.seed).sample(all_ids, min(a.maps, len(all_ids)))
    os.makedirs(a.dir, exist_ok=True)
    try:
        t = time.perf_counter()
        paths = fetch_maps(a.url, ids, a.dir)
        setup_s = time.perf_counter() - t

        ds = LabelBatches(paths, a.seed)
        loader = DataLoader(ds, batch_size=None, sampler=batches(len(paths), a.batch, a.seed),
                            num_workers=a.workers, prefetch_factor=2)
        it = iter(loader)
        # One batch per worker first: worker start-up and torch imports are
        # not part of the steady state.
        for _ in range(a.workers):
            next(it)
        lat, labels, n, cpu_s = [], 0, 0, 0.0
        pss = rss = 0
        t0 = time.perf_counter()
        while True:
            target, elapsed, cpu, (w_rss, w_pss) = next(it)
            if tuple(target.shape) != (a.batch, 1000):
                raise SystemExit("official_peer: a batch came back with shape %s" % (tuple(target.shape),))
            n += 1
            labels += target.shape[0]
            lat.append(elapsed * 1e3)
            cpu_s += cpu
            # Memory: the main process plus the worker that sent this batch,
            # times the number of workers (they run the same code).
            m_rss, m_pss = mem_kib()
            rss = max(rss, m_rss + a.workers * w_rss)
            pss = max(pss, m_pss + a.workers * w_pss)
            t1 = time.perf_counter()
            if t1 - t0 >= a.seconds or n >= a.max_batches:
                break
        seconds = t1 - t0
        del it, loader
        lat.sort()
        pick = lambda p: lat[max(0, min(len(lat) - 1, int(np.ceil(p / 100 * len(lat))) - 1))]
        print(json.dumps({
            "tool": "official_peer", "workers": a.workers, "batch": a.batch, "maps": len(paths),
            "batches": n, "labels": labels, "seconds": round(seconds, 3),
            "labels_per_s": round(labels / seconds), "p50_ms": round(pick(50), 3),
            "p99_ms": round(pick(99), 3), "max_ms": round(lat[-1], 3),
            "cpu_s": round(cpu_s, 3), "rss_kib": rss, "pss_kib": pss, "setup_s": round(setup_s, 2),
            "torch": torch.__version__, "torchvision": torchvision.__version__}), flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
