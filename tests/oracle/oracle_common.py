"""Shared helpers of the oracle tests: run lmap, write real .pt files with
torch.save, build ImageNet-like trees and tars, and compute the torchvision
reference of a batch of lmap queries.

What "reference" means here is cli.md's definition: torchvision roi_align
(spatial_scale=1, sampling_ratio=-1, aligned=False) of the dense zero-filled
map, float32, box computed in float32 as [x0,y0,x1,y1] * [W,H,W,H] - 0.5
(xyxy) or the official loader's float64 (a, b, a+c, b+d) -> float32 -> * W -
0.5 (relabel), output grid mirrored left-right with flip, softmax over
classes. Not a test script itself (ctest runs only test_*.py).
"""

import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
import torch
from torchvision.ops import roi_align

TOL_PROB = 1e-4
TOL_LOGIT = 5e-4
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error: ",
                     "ERROR: UndefinedBehaviorSanitizer")


class Env:
    """LMAP_BIN and a private scratch dir under LMAP_TEST_TMP."""

    def __init__(self, name):
        self.bin = os.environ.get("LMAP_BIN")
        if not self.bin:
            # Fallback for running by hand from the source tree.
            here = os.path.dirname(os.path.abspath(__file__))
            self.bin = os.path.join(here, "..", "..", "build", "lmap")
        if not (os.path.isfile(self.bin) and os.access(self.bin, os.X_OK)):
            print("%s: LMAP_BIN=%s is not an executable" % (name, self.bin))
            sys.exit(1)
        root = os.environ.get("LMAP_TEST_TMP") or tempfile.gettempdir()
        os.makedirs(root, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=name + ".", dir=root)
        self.name = name
        self.sanitizer_reports = []

    def path(self, *parts):
        p = os.path.join(self.tmp, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def dir(self, *parts):
        p = os.path.join(self.tmp, *parts)
        os.makedirs(p, exist_ok=True)
        return p

    def cleanup(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run(self, args, stdin=None, input_bytes=None, timeout=300):
        """Runs lmap; returns (returncode, stdout bytes, stderr text)."""
        p = subprocess.run([self.bin] + [str(a) for a in args], stdin=stdin,
                           input=input_bytes, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout)
        err = p.stderr.decode("utf-8", "replace")
        # A sanitizer build reports memory errors on stderr, possibly with
        # the very exit code a hostile case expects: catch them by text.
        for marker in SANITIZER_MARKERS:
            if marker in err:
                self.sanitizer_reports.append("lmap %s: %s" % (" ".join(str(a) for a in args)[:200],
                                                                err[err.index(marker):][:1500]))
                break
        return p.returncode, p.stdout, err


class Checker:
    """Counts checks and failures; prints each failure with its context."""

    def __init__(self, name):
        self.name = name
        self.checks = 0
        self.failures = []
        self.maxerr = {}

    def check(self, cond, msg):
        self.checks += 1
        if not cond:
            self.failures.append(msg)
            if len(self.failures) <= 40:
                print("FAIL: " + msg, flush=True)
        return cond

    def err(self, key, value):
        self.maxerr[key] = max(self.maxerr.get(key, 0.0), float(value))

    def finish(self, env=None):
        if env is not None:
            for r in env.sanitizer_reports[:5]:
                self.check(False, "sanitizer report: " + r)
            if len(env.sanitizer_reports) > 5:
                self.check(False, "%d more sanitizer reports" % (len(env.sanitizer_reports) - 5))
        print("---- %s summary ----" % self.name)
        for k in sorted(self.maxerr):
            print("max error %-50s %.3g" % (k, self.maxerr[k]))
        print("%d checks, %d failures" % (self.checks, len(self.failures)))
        if self.failures:
            if len(self.failures) > 40:
                print("(first 40 failures shown)")
            if env is not None:
                print("scratch kept: " + env.tmp)
            sys.exit(1)
        if env is not None:
            env.cleanup()
        print("PASS")
        sys.exit(0)


# ---------------------------------------------------------------- maps ----

def make_topk(gen, k, h, w, c):
    """A realistic top-K map [2,K,H,W] float32: plane 0 decreasing logits,
    plane 1 class indices, distinct per cell, stored as floats."""
    top = torch.randn(h, w, generator=gen) * 3.0 + 9.0
    gaps = torch.empty(h, w, k - 1).exponential_(0.7, generator=gen) if k > 1 else None
    scores = torch.empty(k, h, w)
    scores[0] = top
    for i in range(1, k):
        scores[i] = scores[i - 1] - gaps[:, :, i - 1]
    # Neighbouring cells share classes, as in real maps: draw each cell's
    # classes from a small per-image vocabulary plus random ones.
    vocab = torch.randperm(c, generator=gen)[: max(k + 2, min(c, 20))]
    classes = torch.empty(k, h, w)
    for r in range(h):
        for q in range(w):
            if torch.rand(1, generator=gen).item() < 0.7:
                pick = vocab[torch.randperm(len(vocab), generator=gen)[:k]]
            else:
                pick = torch.randperm(c, generator=gen)[:k]
            classes[:, r, q] = pick.float()
    scores[scores == 0] = 0.125
    return torch.stack([scores, classes]).float()


def as_variant(t, dtype, layout):
    """The tensor t [2,K,H,W] as saved: dtype float32/float16, and layout
    'contig', 'permuted' (a [2,H,W,K] tensor .permute(0,3,1,2), not made
    contiguous) or 'offset' (a slice of a bigger storage)."""
    t = t.to(dtype)
    if layout == "contig":
        return t.contiguous()
    if layout == "permuted":
        base = t.permute(0, 2, 3, 1).contiguous()  # [2,H,W,K]
        v = base.permute(0, 3, 1, 2)
        assert not v.is_contiguous() or t.shape[1] == 1 or t.shape[2] * t.shape[3] == 1
        return v
    if layout == "offset":
        big = torch.zeros((3,) + tuple(t.shape[1:]), dtype=dtype)
        big[1:] = t
        v = big[1:]
        assert v.storage_offset() > 0
        return v
    raise ValueError(layout)


def save_pt(t, path, fmt):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(t, path, _use_new_zipfile_serialization=(fmt == "zip"))


def exact_map(saved):
    """What lmap must hold for a saved tensor in an f32 store."""
    return saved.float().contiguous()


def f16_map(exact):
    """What an f16 store holds: scores rounded to binary16, classes exact."""
    m = exact.clone()
    m[0] = m[0].half().float()
    return m


def make_tar(src_dir, tar_path, extra=None):
    """A tar of the tree under src_dir as `tar -cf X -C src_dir .` makes it:
    members "./", "./nXXX/" (directory entries) and "./nXXX/nXXX_N.pt"."""
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tf:
        tf.add(src_dir, arcname=".")  # recursive, sorted
        for name, data in (extra or []):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


# ----------------------------------------------------------- reference ----

def dense_maps(maps, c):
    """[N,2,K,H,W] top-K maps -> [N,C,H,W] dense float32 (zero-filled)."""
    n, _, k, h, w = maps.shape
    d = torch.zeros(n, c, h, w)
    d.scatter_(1, maps[:, 1].long(), maps[:, 0])
    return d


def ref_boxes(boxes, fmts, h, w):
    """roi_align box coordinates [Q,4] float32 for lmap boxes (float64 [Q,4])
    in per-query formats ('xyxy' / 'relabel')."""
    b64 = torch.tensor(boxes, dtype=torch.float64)
    out = torch.empty(len(boxes), 4, dtype=torch.float32)
    is_rel = torch.tensor([f == "relabel" for f in fmts])
    if (~is_rel).any():
        xy = b64[~is_rel].float()  # torch.tensor([x0,y0,x1,y1], float32)
        out[~is_rel] = xy * torch.tensor([w, h, w, h], dtype=torch.float32) - 0.5
    if is_rel.any():
        r = b64[is_rel].clone()
        r[:, 2:] += r[:, :2]
        out[is_rel] = r.float() * w - 0.5
    return out


def reference(dense, idx, boxes, fmts, g, flips, softmax, chunk=256):
    """torchvision answers [Q, G*G, C] (cells row-major after flip) for
    queries on dense maps dense[idx[i]]."""
    n, c, h, w = dense.shape
    rb = ref_boxes(boxes, fmts, h, w)
    outs = []
    for s in range(0, len(idx), chunk):
        e = min(len(idx), s + chunk)
        bi = torch.tensor(idx[s:e], dtype=torch.float32).view(-1, 1)
        o = roi_align(dense, torch.cat([bi, rb[s:e]], 1), output_size=(g, g),
                      spatial_scale=1.0, sampling_ratio=-1, aligned=False)  # [q,C,G,G]
        fl = torch.tensor(flips[s:e], dtype=torch.bool)
        if fl.any():
            o[fl] = o[fl].flip(-1)
        o = o.permute(0, 2, 3, 1).reshape(e - s, g * g, c)
        if softmax:
            o = torch.softmax(o, dim=2)
        outs.append(o)
    return torch.cat(outs, 0)


# --------------------------------------------------------------- boxes ----

def rrc_xyxy(rng):
    for _ in range(100):
        area = rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        bw, bh = math.sqrt(area * ratio), math.sqrt(area / ratio)
        if bw <= 1 and bh <= 1:
            x0, y0 = rng.uniform(0, 1 - bw), rng.uniform(0, 1 - bh)
            return [x0, y0, min(1.0, x0 + bw), min(1.0, y0 + bh)]
    return [0.0, 0.0, 1.0, 1.0]


def rrc_relabel(rng):
    """(i/H, j/W, h/H, w/W) as RandomResizedCropWithCoords returns it, on an
    image of random integer size."""
    iw, ih = rng.randint(160, 800), rng.randint(160, 800)
    for _ in range(10):
        area = iw * ih * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw = int(round(math.sqrt(area * ratio)))
        ch = int(round(math.sqrt(area / ratio)))
        if 0 < cw <= iw and 0 < ch <= ih:
            i, j = rng.randint(0, ih - ch), rng.randint(0, iw - cw)
            return [i / ih, j / iw, ch / ih, cw / iw]
    return [0.0, 0.0, 1.0, 1.0]


def special_xyxy(rng, h, w):
    """Full, tiny, zero-area, edge and corner boxes."""
    x, y = rng.uniform(0, 0.999), rng.uniform(0, 0.999)
    a, b = rng.uniform(0, 1), rng.uniform(0, 1)
    choices = [
        [0.0, 0.0, 1.0, 1.0],
        [x, y, min(1.0, x + 1e-4), min(1.0, y + 1e-4)],
        [x, y, x, y],
        [x, 0.0, x, 1.0],
        [0.0, y, 1.0, y],
        [0.0, 0.0, 0.0, 0.0],
        [1.0, 1.0, 1.0, 1.0],
        [0.0, 0.0, 1.0, 1.0 / h],
        [1.0 - 1.0 / w, 0.0, 1.0, 1.0],
        [0.0, 0.0, min(a, 1.0), min(b, 1.0)],
        [a, b, 1.0, 1.0],
        [0.0, b, a, 1.0],
        [a, 0.0, 1.0, b],
        [round(a * w) / w, round(b * h) / h, 1.0, 1.0],
    ]
    bx = choices[rng.randrange(len(choices))]
    return bx


def special_relabel(rng):
    a, b = rng.uniform(0, 1), rng.uniform(0, 1)
    choices = [
        [0.0, 0.0, 1.0, 1.0],
        [a, b, 0.0, 0.0],
        [0.0, 0.0, a, b],
        [a, b, 1.0 - a, 1.0 - b],
        [a, 0.0, 1e-4 * (1 - a), 1.0],
    ]
    return choices[rng.randrange(len(choices))]


# -------------------------------------------------------- lmap answers ----

class LazyItems:
    """lmap's output lines, each parsed to JSON when read: tens of MB of
    JSON held as Python floats at once would cost ~1 GB."""

    def __init__(self, stdout):
        self.lines = [l for l in stdout.split(b"\n") if l.strip()]

    def __len__(self):
        return len(self.lines)

    def __getitem__(self, i):
        return json.loads(self.lines[i])


def parse_items(stdout):
    return LazyItems(stdout)


def item_to_dense(item, g, c, softmax, sparse):
    """An lmap JSON item -> numpy [G*G, C] (sparse expanded with rest)."""
    key = "probs" if softmax else "logits"
    if key not in item:
        raise ValueError("item has no key %r: keys %s" % (key, sorted(item)))
    vals = item[key]
    if not sparse:
        cells = [vals] if g == 1 else vals
        a = np.array(cells, dtype=np.float64)
        if a.shape != (g * g, c):
            raise ValueError("dense answer has shape %s, expected %s" % (a.shape, (g * g, c)))
        return a
    classes = item["classes"]
    rest = item.get("rest", 0.0)
    if g == 1:
        classes, vals, rest = [classes], [vals], [rest]
    if not (len(classes) == len(vals) == len(rest) == g * g):
        raise ValueError("sparse answer has %d/%d/%d cells, expected %d" % (
            len(classes), len(vals), len(rest), g * g))
    a = np.empty((g * g, c), dtype=np.float64)
    for i in range(g * g):
        a[i, :] = rest[i]
        if len(classes[i]) != len(vals[i]):
            raise ValueError("cell %d: %d classes but %d values" % (i, len(classes[i]), len(vals[i])))
        if len(classes[i]):
            a[i, np.array(classes[i], dtype=np.int64)] = vals[i]
    return a


def sparse_problems(item, g, c, softmax, ref_nonzero):
    """Contract checks of one sparse item; ref_nonzero [G*G, C] bool is the
    set of classes with a non-zero torchvision pooled logit. Returns a list
    of problem strings."""
    key = "probs" if softmax else "logits"
    classes, vals, rest = item["classes"], item[key], item.get("rest")
    if g == 1:
        classes, vals, rest = [classes], [vals], [rest]
    probs = []
    for i in range(g * g):
        cl, v = classes[i], vals[i]
        if len(set(cl)) != len(cl):
            probs.append("cell %d: a class is listed twice" % i)
        if any((not isinstance(x, int)) or x < 0 or x >= c for x in cl):
            probs.append("cell %d: class index outside [0, %d)" % (i, c))
            continue
        for j in range(1, len(v)):
            if v[j - 1] < v[j] or (v[j - 1] == v[j] and cl[j - 1] > cl[j]):
                probs.append("cell %d: not sorted by decreasing value (ties by class) at %d: "
                             "(%d, %r) before (%d, %r)" % (i, j, cl[j - 1], v[j - 1], cl[j], v[j]))
                break
        want = set(np.nonzero(ref_nonzero[i])[0].tolist())
        got = set(cl)
        if want != got:
            probs.append("cell %d: listed classes differ from torchvision's non-zero logits: "
                          "missing %s, extra %s" % (i, sorted(want - got)[:5], sorted(got - want)[:5]))
        if not softmax and rest[i] != 0:
            probs.append("cell %d: rest %r for logits (expected 0)" % (i, rest[i]))
        if softmax and len(cl) < c:
            total = sum(v) + (c - len(cl)) * rest[i]
            if abs(total - 1.0) > 1e-4:
                probs.append("cell %d: probabilities sum to %r" % (i, total))
    return probs
