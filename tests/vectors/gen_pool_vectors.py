#!/usr/bin/python3
"""Generates the golden pooling vectors in tests/vectors/pool/ from torchvision.

What: small sparse top-K label maps, a set of queries over each (random,
full-image, tiny, zero-area, edge and corner boxes; output sizes 1, 2, 3, 7;
flip; both box formats), and for every query the torchvision reference:
roi_align (float32, sampling_ratio=-1, aligned=False) of the dense zero-filled
map, with and without softmax. tests/unit/test_pool_vectors.c replays them
against server/pool/pool.c with no Python at test time.

Why a file and not a live oracle: the unit suite must run in milliseconds on
any machine, and a committed file pins the reference so a change of either
side shows up as a diff.

Invariants of the output (pool/vectors.json, one JSON document):
- Deterministic: fixed seeds, no dependence on time or environment; running
  the script twice gives byte-identical output.
- Maps are written as float32 values printed with 9 significant digits (they
  round-trip to the same float32 through strtod + cast), boxes as Python
  doubles printed with repr (round-trip exact).
- Each query's reference is given per output cell (row-major, after flip) in
  sparse form: the classes whose torchvision pooled logit is non-zero,
  sorted by class id, with their pooled logits (float32, 9 digits) and
  softmax probabilities (to 1e-10 absolute), and `rest`, the probability
  that every other class has (null when every class is listed). The script asserts, before writing, that this sparse
  form reproduces torchvision's dense output exactly, so it loses nothing.

Run: /usr/bin/python3 tests/vectors/gen_pool_vectors.py   (from anywhere)
"""

import json
import math
import os
import random
import sys

import numpy as np
import torch
from torchvision.ops import roi_align

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pool", "vectors.json")
MAX_BYTES = 1_000_000


def f32s(x):
    return format(float(np.float32(x)), ".9g")


def prob_s(x):
    """A probability to 1e-10 absolute (the tests' tolerance is 1e-4): keeps
    the file under its size budget without changing any verdict."""
    s = "%.10f" % float(x)
    s = s.rstrip("0").rstrip(".")
    return s if s not in ("", "-0") else "0"


def make_map(rng, k, h, w, c, kind):
    """Returns (scores [K,H,W] float32, classes [K,H,W] int64), classes distinct per cell."""
    scores = np.zeros((k, h, w), np.float32)
    classes = np.zeros((k, h, w), np.int64)
    vocab = None
    if kind == "coherent":
        # Real maps: neighbouring cells share most of a small vocabulary.
        vocab = rng.choice(c, size=min(c, max(k + 3, 12)), replace=False)
    for r in range(h):
        for q in range(w):
            if vocab is not None:
                cls = rng.choice(vocab, size=k, replace=False)
            else:
                cls = rng.choice(c, size=k, replace=False)
            if kind == "negative":
                s = -np.sort(rng.uniform(0.1, 6.0, size=k))
            elif kind == "ties":
                s = np.full(k, 1.0)
            elif kind == "mixed":
                s = rng.normal(0.0, 3.0, size=k)
            else:
                top = rng.normal(9.0, 3.0)
                s = top - np.concatenate([[0.0], np.cumsum(rng.exponential(1.5, size=k - 1))])
            classes[:, r, q] = cls
            scores[:, r, q] = s.astype(np.float32)
    # A realistic map never stores an exact 0 score; keep it that way so the
    # listed-classes check is about pooling, not about the input.
    scores[scores == 0] = np.float32(0.125)
    return scores, classes


def dense(scores, classes, c):
    k, h, w = scores.shape
    m = torch.zeros((c, h, w), dtype=torch.float32)
    m.scatter_(0, torch.from_numpy(classes), torch.from_numpy(scores))
    return m


def ref_box(box, fmt, h, w):
    """The roi_align box, computed exactly as cli.md / the official loader do."""
    if fmt == "xyxy":
        b = torch.tensor(box, dtype=torch.float32) * torch.tensor([w, h, w, h], dtype=torch.float32) - 0.5
    else:
        t = torch.tensor([box], dtype=torch.float64)
        t[:, 2:] += t[:, :2]
        b = (t.float() * w - 0.5)[0]
    return torch.cat([torch.zeros(1), b]).view(1, 5)


def reference(m, box, fmt, g, flip):
    c, h, w = m.shape
    out = roi_align(m[None], ref_box(box, fmt, h, w), output_size=(g, g),
                    spatial_scale=1.0, sampling_ratio=-1, aligned=False)[0]  # [C,G,G]
    if flip:
        out = out.flip(-1)
    logits = out.permute(1, 2, 0).reshape(g * g, c)  # row-major cells
    probs = torch.softmax(logits, dim=1)
    cells = []
    for i in range(g * g):
        lg = logits[i]
        pr = probs[i]
        nz = torch.nonzero(lg != 0).flatten()
        z = torch.nonzero(lg == 0).flatten()
        rest = None
        if len(z):
            rest = float(pr[z[0]])
            # The sparse form must be lossless: all zero-logit classes share one probability.
            assert bool((pr[z] == pr[z[0]]).all())
        cells.append({
            "classes": [int(x) for x in nz],
            "logits": [float(lg[x]) for x in nz],
            "probs": [float(pr[x]) for x in nz],
            "rest": rest,
        })
    return cells


def rrc_xyxy(rng):
    """A RandomResizedCrop-like box (scale 0.08..1, ratio 3/4..4/3) in xyxy."""
    for _ in range(100):
        area = rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        bw = math.sqrt(area * ratio)
        bh = math.sqrt(area / ratio)
        if bw <= 1 and bh <= 1:
            x0 = rng.uniform(0, 1 - bw)
            y0 = rng.uniform(0, 1 - bh)
            return [x0, y0, min(1.0, x0 + bw), min(1.0, y0 + bh)]
    return [0.0, 0.0, 1.0, 1.0]


def rrc_relabel(rng):
    """The official tuple (i/H, j/W, h/H, w/W) of a RandomResizedCrop on an
    image of random integer size, as RandomResizedCropWithCoords returns it."""
    iw, ih = rng.randint(200, 640), rng.randint(200, 640)
    for _ in range(10):
        area = iw * ih * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw = int(round(math.sqrt(area * ratio)))
        ch = int(round(math.sqrt(area / ratio)))
        if 0 < cw <= iw and 0 < ch <= ih:
            i = rng.randint(0, ih - ch)
            j = rng.randint(0, iw - cw)
            return [i / ih, j / iw, ch / ih, cw / iw]
    return [0.0, 0.0, 1.0, 1.0]


def queries_for(rng, h, w, c, n_random):
    qs = []
    # With C = 1000 a full-image cell lists ~1,000 classes: keep those few.
    full_sizes = (1, 2) if c > 100 else (1, 2, 3, 7)
    flip_size = 1 if c > 100 else (7 if h * w <= 12 else 3)

    def add(box, fmt="xyxy", g=1, flip=False, note=""):
        if fmt == "xyxy":
            assert 0 <= box[0] <= box[2] <= 1 and 0 <= box[1] <= box[3] <= 1, box
        else:
            assert min(box) >= 0 and box[0] + box[2] <= 1 and box[1] + box[3] <= 1, box
        qs.append({"box": [float(v) for v in box], "box_format": fmt,
                   "output_size": g, "flip": flip, "note": note})

    for g in full_sizes:
        add([0, 0, 1, 1], g=g, note="full")
    add([0, 0, 1, 1], g=flip_size, flip=True, note="full flip")
    add([0, 0, 1, 1], g=1, flip=True, note="full flip g1")
    x, y = rng.uniform(0, 0.99), rng.uniform(0, 0.99)
    add([x, y, x + 1e-4, y + 1e-4], note="tiny")
    add([x, y, x + 1e-4, y + 1e-4], g=2, note="tiny g2")
    add([x, y, x, y], note="zero area")
    add([x, y, x, y], g=3, flip=True, note="zero area g3 flip")
    add([x, 0.1, x, 0.9], note="zero width")
    add([0, 0, 0, 0], note="zero area corner 0")
    add([1, 1, 1, 1], note="zero area corner 1")
    add([0, 0, 0.05, 0.05], note="corner tl")
    add([0.95, 0.95, 1, 1], note="corner br")
    add([0.9, 0, 1, 0.1], g=2, note="corner tr")
    add([0, 0.3, 0.4, 1], g=2, flip=True, note="edge left-bottom")
    add([0.6, 0, 1, 1], g=7 if (h * w <= 100 and c <= 100) else 3, note="edge right strip")
    add([0, 0.5, 1, 1], g=3, note="edge bottom half")
    # Boxes on cell boundaries, where bilinear weights are exactly 0 or 1.
    add([min(1.0, 1 / w), min(1.0, 1 / h), min(1.0, 3 / w), min(1.0, 2 / h)], note="grid aligned")
    add([0.5 / w, 0.5 / h, min(1.0, 1.5 / w), min(1.0, 1.5 / h)], g=2, note="cell centres")
    for i in range(n_random):
        # G = 7 answers are large (~10 classes per cell): full-image boxes
        # test it on every map, random boxes only on the small maps.
        g = 7 if (i == 0 and h * w <= 12) else rng.choice([1, 1, 1, 2, 2, 3])
        add(rrc_xyxy(rng), g=g, flip=rng.random() < 0.5, note="random")
    # The official relabel format.
    add([0, 0, 1, 1], fmt="relabel", note="relabel full")
    add([0, 0, 1, 1], fmt="relabel", g=2 if c <= 100 else 1, flip=True, note="relabel full flip")
    add([0.3, 0.2, 0.0, 0.0], fmt="relabel", note="relabel zero size")
    add([0.0, 0.5, 1.0, 0.5], fmt="relabel", g=3, note="relabel edge")
    for i in range(max(4, n_random // 2)):
        g = 7 if (i == 0 and h * w <= 12) else rng.choice([1, 1, 1, 2, 3])
        add(rrc_relabel(rng), fmt="relabel", g=g, flip=rng.random() < 0.5, note="relabel random")
    return qs


MAPS = [
    # name, K, H, W, C, kind, random queries
    ("k2_3x4_c7", 2, 3, 4, 7, "realistic", 20),
    ("k3_7x11_c13", 3, 7, 11, 13, "realistic", 20),
    ("k4_11x7_c20", 4, 11, 7, 20, "mixed", 16),
    ("k5_15x15_c50", 5, 15, 15, 50, "realistic", 6),
    ("k5_15x15_c50_coherent", 5, 15, 15, 50, "coherent", 8),
    ("k3_5x5_c9_negative", 3, 5, 5, 9, "negative", 10),
    ("k4_4x4_c8_ties", 4, 4, 4, 8, "ties", 8),
    ("k1_1x1_c3", 1, 1, 1, 3, "realistic", 6),
    ("k5_9x9_c1000", 5, 9, 9, 1000, "realistic", 4),
    ("k5_15x15_c1000_coherent", 5, 15, 15, 1000, "coherent", 6),
]


def main():
    torch.set_num_threads(1)
    doc = {"version": 1, "generator": "tests/vectors/gen_pool_vectors.py",
           "torchvision": "roi_align(spatial_scale=1, sampling_ratio=-1, aligned=False) + softmax, float32",
           "maps": []}
    for idx, (name, k, h, w, c, kind, nrand) in enumerate(MAPS):
        nrng = np.random.RandomState(1000 + idx)
        qrng = random.Random(2000 + idx)
        scores, classes = make_map(nrng, k, h, w, c, kind)
        m = dense(scores, classes, c)
        qs = queries_for(qrng, h, w, c, nrand)
        for q in qs:
            q["cells"] = reference(m, q["box"], q["box_format"], q["output_size"], q["flip"])
        doc["maps"].append({"name": name, "k": k, "h": h, "w": w, "num_classes": c,
                            "scores": scores.flatten().tolist(),
                            "classes": classes.flatten().tolist(),
                            "queries": qs})
    text = dump(doc)
    # Self-check: the text parses and reproduces the reference densely.
    back = json.loads(text)
    for mp, orig in zip(back["maps"], doc["maps"]):
        sc = np.array(mp["scores"], np.float32).reshape(mp["k"], mp["h"], mp["w"])
        assert (sc == np.array(orig["scores"], np.float32).reshape(sc.shape)).all()
    if len(text) > MAX_BYTES:
        sys.exit("vectors too large: %d bytes" % len(text))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write(text)
    nq = sum(len(mp["queries"]) for mp in doc["maps"])
    print("wrote %s: %d maps, %d queries, %d bytes" % (OUT, len(doc["maps"]), nq, len(text)))


def dump(doc):
    """JSON with float32 values at 9 significant digits and boxes at repr."""
    out = ['{"version": 1,\n "generator": %s,\n "torchvision": %s,\n "maps": [\n'
           % (json.dumps(doc["generator"]), json.dumps(doc["torchvision"]))]
    for mi, mp in enumerate(doc["maps"]):
        out.append(' {"name": %s, "k": %d, "h": %d, "w": %d, "num_classes": %d,\n'
                   % (json.dumps(mp["name"]), mp["k"], mp["h"], mp["w"], mp["num_classes"]))
        out.append('  "scores": [%s],\n' % ",".join(f32s(v) for v in mp["scores"]))
        out.append('  "classes": [%s],\n' % ",".join(str(v) for v in mp["classes"]))
        out.append('  "queries": [\n')
        for qi, q in enumerate(mp["queries"]):
            cells = []
            for cell in q["cells"]:
                cells.append('{"classes":[%s],"logits":[%s],"probs":[%s],"rest":%s}' % (
                    ",".join(str(v) for v in cell["classes"]),
                    ",".join(f32s(v) for v in cell["logits"]),
                    ",".join(prob_s(v) for v in cell["probs"]),
                    "null" if cell["rest"] is None else prob_s(cell["rest"])))
            out.append('   {"note": %s, "box": [%s], "box_format": "%s", "output_size": %d, "flip": %s,\n'
                       '    "cells": [%s]}%s\n' % (
                           json.dumps(q["note"]), ",".join(repr(float(v)) for v in q["box"]),
                           q["box_format"], q["output_size"], "true" if q["flip"] else "false",
                           ",\n     ".join(cells), "," if qi + 1 < len(mp["queries"]) else ""))
        out.append('  ]}%s\n' % ("," if mi + 1 < len(doc["maps"]) else ""))
    out.append(']}\n')
    return "".join(out)


if __name__ == "__main__":
    main()
