#!/usr/bin/python3
"""`lmap render` against torch: maps written with torch.save and imported
with class names (one holding XML's special characters and a control
character), then drawn as SVG:
- the SVG parses (xml.etree), starts with a <title> naming the id, and is
  the same bytes when drawn twice;
- every cell's rectangle names its top-1 class (argmax of the saved
  scores) by name and its probability (softmax over all C classes, the
  zero-filled ones included, computed here) to the 3 digits shown; cells
  of one class share one hue; the legend lists each top-1 class once;
- with a box, the bars are the top 5 of torchvision's roi_align + softmax
  for that box (classes in order, probabilities within 1e-4), for xyxy and
  relabel boxes; a relabel box draws the crop and, dashed, its mirror
  across the diagonal; G = 3 draws the 2 + 2 lines of the token grid;
- errors: an unknown id and an unwritable output exit 1 naming them (no
  file left), a bad box exits 2."""
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from oracle_common import dense_maps, f16_map, make_topk, reference, save_pt  # noqa: E402

LMAP = os.environ.get("LMAP_BIN", "build/lmap")
SVG = "{http://www.w3.org/2000/svg}"
K, H, W, C = 5, 15, 15, 50
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def run(*args):
    return subprocess.run([LMAP, *args], capture_output=True, text=True, timeout=120)


def render(store, id_, out, *extra):
    r = run("render", store, id_, "-o", out, *extra)
    if r.returncode != 0:
        raise SystemExit("lmap render failed (%d): %s" % (r.returncode, r.stderr))
    return open(out, "rb").read()


def group(root, name):
    return next(g for g in root.iter(SVG + "g") if g.get("id") == name)


def main():
    tmp = tempfile.mkdtemp(prefix="lmap-render-", dir=os.environ.get("LMAP_TEST_TMP"))
    gen = torch.Generator().manual_seed(13)
    names = ["class_%02d" % c for c in range(C)]
    # XML's special characters, and a control character XML forbids even
    # as a reference (drawn as '?').
    names[7] = 'a <b> & "c"\x01'
    src = os.path.join(tmp, "src")
    maps = {}
    for i in range(4):
        t = make_topk(gen, K, H, W, C)
        id_ = "n0000000%d_%d" % (i % 2, i)
        save_pt(t, os.path.join(src, id_[:9], id_ + ".pt"), "zip")
        maps[id_] = f16_map(t)
    # Make class 7 the top-1 of a few cells, so that its name is drawn.
    first = sorted(maps)[0]
    t = maps[first]
    t[1, 0, 0, :3] = 7.0
    for k in range(1, K):
        t[1, k, 0, :3] = torch.where(t[1, k, 0, :3] == 7.0, torch.tensor(float(8 + k)),
                                     t[1, k, 0, :3])
    save_pt(t.clone(), os.path.join(src, first[:9], first + ".pt"), "zip")
    classes = os.path.join(tmp, "classes.txt")
    open(classes, "w").write("\n".join(names) + "\n")
    store = os.path.join(tmp, "render.lmap")
    r = run("import", src, "-o", store, "--classes", classes, "--force", "--no-progress")
    if r.returncode != 0:
        raise SystemExit("lmap import failed: " + r.stderr)

    out = os.path.join(tmp, "map.svg")
    for id_ in sorted(maps):
        m = maps[id_]
        data = render(store, id_, out)
        check(render(store, id_, out + ".2") == data, "%s: the same bytes twice" % id_)
        root = ET.fromstring(data)
        title = root.find(SVG + "title")
        check(root.tag == SVG + "svg" and list(root)[0] is title and id_ in title.text,
              "%s: an <svg> whose first child is a <title> naming the id" % id_)
        cells = list(group(root, "cells").iter(SVG + "rect"))
        check(len(cells) == H * W, "%s: %d cells drawn" % (id_, len(cells)))
        scores, cls = m[0], m[1].long()
        dense = dense_maps(m[None], C)[0]  # [C,H,W]
        probs = torch.softmax(dense.double(), dim=0)
        hue_of, bad = {}, []
        for rect in cells:
            t = rect.find(SVG + "title").text
            row, col, c, p = re.match(r"row (\d+), column (\d+): (\d+) .*, p = ([\d.]+)$", t).groups()
            row, col, c = int(row), int(col), int(c)
            want = int(cls[scores[:, row, col].argmax(), row, col])
            name_ok = t.split(": ", 1)[1].startswith("%d %s" % (want, names[want].replace("\x01", "?")))
            if c != want or not name_ok or abs(float(p) - float(probs[want, row, col])) > 6e-4:
                bad.append(t)
            hue = rect.get("fill").split(",")[0]
            if hue_of.setdefault(c, hue) != hue:
                bad.append("hue of %d" % c)
        check(not bad, "%s: every cell names its top-1 class and probability (%s)" % (id_, bad[:3]))
        texts = [t.text for t in group(root, "legend").iter(SVG + "text")]
        n = len(hue_of)
        legend = texts[1:1 + min(n, 24)]
        check(texts[0] == "Top-1 classes (%d)" % n and len(set(legend)) == len(legend) and
              texts[1 + min(n, 24):] == (["and %d more" % (n - 24)] if n > 24 else []),
              "%s: the legend lists the %d top-1 classes once each, at most 24 (%s)"
              % (id_, n, texts[:2] + texts[-1:]))
        if id_ == first:
            check('a <b> & "c"' in "".join(legend), "a class name with <, >, & and \" is drawn as text")

        for fmt, box, g in (("xyxy", [0.1, 0.2, 0.7, 0.9], 1), ("relabel", [0.05, 0.3, 0.6, 0.5], 1),
                            ("xyxy", [0.0, 0.0, 1.0, 1.0], 3)):
            args = ["--box", ",".join(map(str, box)), "--box-format", fmt, "-G", str(g)]
            root = ET.fromstring(render(store, id_, out, *args))
            bars = [(int(b.get("data-class")), float(b.get("data-p")))
                    for b in group(root, "pooled").iter(SVG + "rect") if b.get("class") == "bar"]
            ref = reference(dense_maps(m[None], C), [0], [box], [fmt], g, [False], True)[0, 0]
            top = torch.topk(ref.double(), 5)
            want = [(int(c), float(p)) for p, c in zip(top.values, top.indices)]
            check([c for c, _ in bars] == [c for c, _ in want] and
                  all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(bars, want)),
                  "%s %s G=%d: the bars are torchvision's top 5 (%s vs %s)" % (id_, fmt, g, bars, want))
            box_g = group(root, "box")
            rects = list(box_g.iter(SVG + "rect"))
            lines = list(box_g.iter(SVG + "line"))
            if fmt == "relabel":
                crop, pooled = rects
                cell = float(crop.get("width")) / (box[3] * W)
                x0, y0 = float(cells[0].get("x")), float(cells[0].get("y"))
                got = [(float(pooled.get(a)) - o) / cell for a, o in (("x", x0), ("y", y0))]
                check(len(rects) == 2 and pooled.get("stroke-dasharray") and
                      abs(got[0] - box[0] * W) < 0.01 and abs(got[1] - box[1] * W) < 0.01,
                      "%s: relabel draws the crop and its diagonal mirror, dashed" % id_)
            check(len(lines) == 2 * (g - 1), "%s G=%d: %d token grid lines" % (id_, g, len(lines)))

    r = run("render", store, "n99999999_1", "-o", out)
    check(r.returncode == 1 and "n99999999_1" in r.stderr, "unknown id: exit 1 naming it")
    r = run("render", store, first, "-o", "/nonexistent-dir/x.svg")
    check(r.returncode == 1 and "/nonexistent-dir/x.svg" in r.stderr, "unwritable output: exit 1 naming it")
    r = run("render", store, first, "-o", out, "--box", "0.5,0,0.2,1")
    check(r.returncode == 2 and "box" in r.stderr, "bad box: exit 2")
    print("%d failures" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
