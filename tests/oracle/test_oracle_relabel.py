#!/usr/bin/python3
"""Oracle test: lmap's relabel box format against an inline copy of what the
official ReLabel loader does, on square maps.

The official training code gets (i/H, j/W, h/H, w/W) per sample from
RandomResizedCropWithCoords (Python floats), the DataLoader's default
collate turns them into float64 tensors, the loop does
`coords[:, 2:] += coords[:, :2]`, then get_labelmaps() scatters the torch.load'ed
top-K maps into a dense [B, 1000, H, W] float32 batch and get_relabel() runs
roi_align(label_maps, cat([batch index, coords.float() * label_maps.size(3) -
0.5]), output_size=(1, 1)) and softmax over classes. This script replays
exactly that for batches of real RandomResizedCrop parameters (torchvision's
get_params on images of random sizes) over .pt files written by torch.save
([2,5,15,15] float32 and [2,5,18,18] float16 with permuted strides, like the
NFNet maps), and checks that `lmap get --box-format relabel` (dense and sparse,
flip on and off: a 1x1 target does not change with flip) gives the official
targets within 1e-4, and that on square maps it equals lmap's xyxy answer for
the box (a, b, a+c, b+d) exactly (same float32 geometry).
Prints the max errors; exits 1 on any failure.
"""

import json
import os
import random
import sys

import numpy as np
import torch
import torchvision
from torch.utils.data import default_collate
from torchvision.ops import roi_align

sys.dont_write_bytecode = True  # keep the source tree clean under ctest
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle_common as oc  # noqa: E402

SHAPES = [("k5_15x15_f32", 5, 15, 15, torch.float32, "contig", "zip", 24),
          ("k5_18x18_f16_permuted", 5, 18, 18, torch.float16, "permuted", "zip", 16)]
BATCH = 64
BATCHES = 8


# ---- inline copy of the official loader's label pooling (see docstring) ----
def official_get_labelmaps(label_maps_topk, num_batches):
    sizes = label_maps_topk[0].size()
    label_maps = torch.zeros([num_batches, 1000, sizes[2], sizes[3]])
    for _label_map, _label_topk in zip(label_maps, label_maps_topk):
        _label_map.scatter_(0, _label_topk[1][:, :, :].long(), _label_topk[0][:, :, :])
    return label_maps


def official_get_relabel(label_maps, batch_coords, num_batches):
    target_relabel = roi_align(
        input=label_maps,
        boxes=torch.cat([torch.arange(num_batches).view(num_batches, 1).float(),
                         batch_coords.float() * label_maps.size(3) - 0.5], 1),
        output_size=(1, 1))
    return torch.nn.functional.softmax(target_relabel.squeeze(), 1)
# ---------------------------------------------------------------------------


def main():
    env = oc.Env("test_oracle_relabel")
    ck = oc.Checker("test_oracle_relabel")
    torch.set_num_threads(2)
    torch.manual_seed(1234)
    gen = torch.Generator().manual_seed(4321)
    rng = random.Random(11)
    rrc = torchvision.transforms.RandomResizedCrop(224)
    bit_equal = total = 0
    for name, k, h, w, dtype, layout, fmt, nfiles in SHAPES:
        assert h == w
        src = env.dir(name, "src")
        paths = {}
        for i in range(nfiles):
            ident = "n0%07d_%d" % (1000 + i % 2, i)
            p = os.path.join(src, ident.split("_")[0], ident + ".pt")
            oc.save_pt(oc.as_variant(oc.make_topk(gen, k, h, w, 1000), dtype, layout), p, fmt)
            paths[ident] = p
        store = env.path(name, "s.lmap")
        rc, out, err = env.run(["import", src, "-o", store, "--encoding", "f32"])
        if not ck.check(rc == 0, "%s: import exit %d: %s" % (name, rc, err.strip()[:400])):
            continue
        ids = sorted(paths)
        for b in range(BATCHES):
            # What the official Dataset yields per sample, then default_collate.
            sample_ids, sample_coords = [], []
            for _ in range(BATCH):
                ident = rng.choice(ids)
                img = torch.empty(1, rng.randint(120, 900), rng.randint(120, 900))  # [C, H, W]
                i, j, hh, ww = rrc.get_params(img, rrc.scale, rrc.ratio)
                sample_ids.append(ident)
                sample_coords.append((i / img.shape[1], j / img.shape[2], hh / img.shape[1], ww / img.shape[2]))
            if b == 0:  # the full image and a 1-pixel crop at the bottom-right
                sample_coords[0] = (0.0, 0.0, 1.0, 1.0)
                sample_coords[1] = (499 / 500, 374 / 375, 1 / 500, 1 / 375)
            coords = torch.stack(default_collate(sample_coords), 1)  # float64 [B, 4]
            assert coords.dtype == torch.float64
            coords[:, 2:] += coords[:, :2]
            label_maps_topk = [torch.load(paths[s]).float() for s in sample_ids]
            label_maps = official_get_labelmaps(label_maps_topk, BATCH)
            target = official_get_relabel(label_maps, coords, BATCH).numpy()  # [B, 1000]

            # The same samples through lmap: relabel (dense, sparse, flipped)
            # and xyxy with the box the official code actually pools.
            lines = []
            for s in range(BATCH):
                a, bb, c, d = sample_coords[s]
                base = {"id": sample_ids[s], "box": [a, bb, c, d], "box_format": "relabel"}
                lines.append(dict(base, format="dense"))
                lines.append(dict(base, format="sparse", flip=True))
                lines.append(dict(base, format="dense", flip=True))
                lines.append({"id": sample_ids[s], "box": [a, bb, a + c, bb + d], "box_format": "xyxy",
                              "format": "dense"})
            qf = env.path(name, "q%d.jsonl" % b)
            with open(qf, "w") as f:
                for q in lines:
                    f.write(json.dumps(q) + "\n")
            rc, out, err = env.run(["get", store, "--queries", qf])
            if not ck.check(rc == 0, "%s batch %d: lmap get exit %d: %s" % (name, b, rc, err.strip()[:400])):
                continue
            items = [json.loads(l) for l in out.splitlines() if l.strip()]
            if not ck.check(len(items) == len(lines), "%s: %d answers for %d queries" % (name, len(items), len(lines))):
                continue
            for s in range(BATCH):
                where = "%s batch %d sample %d %s coords %r" % (name, b, s, sample_ids[s], sample_coords[s])
                try:
                    dense = oc.item_to_dense(items[4 * s], 1, 1000, True, False)[0]
                    sparse = oc.item_to_dense(items[4 * s + 1], 1, 1000, True, True)[0]
                    dflip = oc.item_to_dense(items[4 * s + 2], 1, 1000, True, False)[0]
                except (ValueError, KeyError, TypeError) as e:
                    ck.check(False, "%s: malformed answer: %s" % (where, e))
                    continue
                for label, a in (("relabel dense", dense), ("relabel sparse flip", sparse),
                                 ("relabel dense flip", dflip)):
                    e = float(np.abs(a - target[s]).max())
                    ck.err("%s %s vs official" % (name, label), e)
                    ck.check(e <= oc.TOL_PROB, "%s: %s differs from the official target by %.3g" % (where, label, e))
                ck.check(items[4 * s + 2]["probs"] == items[4 * s]["probs"],
                         "%s: flip changed a 1x1 relabel target" % where)
                ck.check(items[4 * s + 3]["probs"] == items[4 * s]["probs"],
                         "%s: xyxy (a, b, a+c, b+d) differs from relabel (a, b, c, d) on a square map" % where)
                bit_equal += int((dense.astype(np.float32) == target[s]).sum())
                total += 1
        print("%s: %d samples compared" % (name, BATCH * BATCHES), flush=True)
    # Informational: lmap accumulates in double, torchvision in float32.
    print("official target values reproduced bit for bit (9-digit printing): %d of %d (%.1f%%)"
          % (bit_equal, total * 1000, 100.0 * bit_equal / max(1, total * 1000)))
    ck.check(total == BATCH * BATCHES * len(SHAPES), "compared %d samples" % total)
    ck.finish(env)


if __name__ == "__main__":
    main()
