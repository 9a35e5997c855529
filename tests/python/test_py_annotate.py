#!/usr/bin/python3
"""lmap.annotate against an independent computation.

A few dozen generated images (JPEG and PNG, sizes and aspect ratios that
differ, in nested folders) are annotated by randomly initialised models
(fixed seeds; no weights can be downloaded here): ResNet-18 (a ResNet: fc)
and DenseNet-121 (features/classifier; random MobileNetV2 and EfficientNet
give logits of 1e-9 and less, below binary16's range), each with both resize
policies, one of them through `python3 -m lmap.annotate`, each with a
--weights file. The test
computes every map itself: its own resize (PIL, as torchvision defines
Resize and CenterCrop), the network's last feature map taken by
torchvision's feature extractor, the final linear layer applied per cell
with einsum, then torch.topk. Each stored map (`lmap export`) must hold,
per cell, K classes whose reference logits are the K largest and equal the
stored scores within binary16's precision. Also: the store's metadata
(model, weights digest, input size, resize, extent, lmap version), ids are
file stems, a run killed midway goes on with --resume and gives the same
maps, an image that does not decode fails the run naming it (no store)
or is skipped with --skip-bad, heads that are not one linear layer
and unknown models are refused, and one image folder served by lmapd gives
the soft label the reference map pools to with torchvision's roi_align.
Loopback only; lmapd is stopped by its PID."""
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.models.feature_extraction import create_feature_extractor

from py_common import LMAP, TMP  # puts client/python and tests/e2e on sys.path
from e2e_common import check, start_daemon, stop_daemon, summary  # noqa: E402
import lmap.annotate as annotate  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
SIZE = 96  # a 3 x 3 map for these stride-32 networks
K = 5


def make_images(root, n, seed):
    """n images of differing sizes, shapes in colour on noise, JPEG and PNG,
    in nested folders; returns {id: path}."""
    rng = np.random.default_rng(seed)
    paths = {}
    for i in range(n):
        w, h = int(rng.integers(60, 260)), int(rng.integers(60, 260))
        a = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        a[y0:y0 + h // 2, x0:x0 + w // 2] = rng.integers(0, 255, 3, dtype=np.uint8)
        sub = os.path.join(root, "class_%d" % (i % 3), "deeper" if i % 5 == 0 else "")
        os.makedirs(sub, exist_ok=True)
        stem = "img_%03d" % i
        path = os.path.join(sub, stem + (".png" if i % 4 == 0 else ".jpg"))
        Image.fromarray(a).save(path)
        paths[stem] = path
    return paths


def reference_input(path, resize):
    """The input tensor, computed here: PIL's bilinear resize as torchvision
    calls it, its centre crop, ToTensor and ImageNet normalisation."""
    im = Image.open(path).convert("RGB")
    if resize == "squash":
        im = im.resize((SIZE, SIZE), Image.BILINEAR)
    else:
        w, h = im.size
        if w <= h:
            nw, nh = SIZE, int(SIZE * h / w)
        else:
            nw, nh = int(SIZE * w / h), SIZE
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = int(round((nw - SIZE) / 2.0)), int(round((nh - SIZE) / 2.0))
        im = im.crop((left, top, left + SIZE, top + SIZE))
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - MEAN) / STD


def reference_logits(model, family, x):
    """[C, H, W]: the last feature map (DenseNet's forward applies a ReLU to
    its features first), and the final linear layer applied to every
    cell."""
    node, head = ("layer4", model.fc) if family == "resnet" else ("features", model.classifier)
    feats = create_feature_extractor(model, {node: "f"})(x[None])["f"][0]
    if family == "densenet":
        feats = torch.relu(feats)
    return torch.einsum("chw,kc->khw", feats, head.weight) + head.bias[:, None, None]


def stored_map(store, id_):
    out = os.path.join(TMP, "annotate-map.npy")
    subprocess.run([LMAP, "export", store, id_, "-o", out], check=True, capture_output=True)
    return np.load(out)


def check_maps(store, model, family, resize, paths, what):
    """Every cell's stored classes are the reference's top K, with the
    reference logits as scores (binary16's precision)."""
    worst, bad, exact = 0.0, [], 0
    with torch.no_grad():
        for id_, path in sorted(paths.items()):
            ref = reference_logits(model, family, reference_input(path, resize))
            m = stored_map(store, id_)
            if m.shape != (2, K) + tuple(ref.shape[1:]):
                bad.append("%s: shape %s" % (id_, m.shape))
                continue
            top = ref.topk(K + 1, dim=0).values
            for r in range(m.shape[2]):
                for q in range(m.shape[3]):
                    classes = m[1, :, r, q].astype(np.int64)
                    got = ref[classes, r, q].numpy()
                    tol = 2e-3 * np.abs(got) + 1e-3 * float(ref[:, r, q].abs().max())
                    err = np.abs(m[0, :, r, q] - got)
                    worst = max(worst, float(np.max(err / tol)))
                    # The K stored classes are K distinct ones whose logits
                    # are the K largest (up to a tie at the K-th).
                    ok = len(set(classes)) == K and np.all(err <= tol) and \
                        np.all(np.abs(np.sort(got)[::-1] - top[:K, r, q].numpy()) <= tol)
                    exact += bool(np.array_equal(classes, ref[:, r, q].topk(K).indices.numpy()))
                    if not ok:
                        bad.append("%s cell (%d, %d): stored %s / %s, reference %s"
                                   % (id_, r, q, classes, m[0, :, r, q], ref[:, r, q].topk(K)))
    line = ("%s: %d maps: stored classes and scores are the reference top-%d (worst error %.2f of "
            "the tolerance; %d cells in the reference's exact order)" % (what, len(paths), K, worst, exact))
    print(line)
    check(not bad, line + ((": " + bad[0]) if bad else ""))


def importers_of(path):
    """The pids of lmap processes whose command line names `path`."""
    pids = []
    for pid in os.listdir("/proc"):
        try:
            argv = open("/proc/%s/cmdline" % pid, "rb").read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"lmap" and any(path.encode() in a for a in argv):
            pids.append(int(pid))
    return pids


def info(store):
    return json.loads(subprocess.run([LMAP, "info", "--json", store], capture_output=True, text=True,
                                     check=True).stdout)


def main():
    work = os.path.join(TMP, "annotate")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    images = os.path.join(work, "images")
    paths = make_images(images, 30, seed=7)
    version = subprocess.run([LMAP, "--version"], capture_output=True, text=True).stdout.split()[1]
    grid = math.ceil(SIZE / 32)

    for family, name, resize, seed, how in (("resnet", "resnet18", "squash", 1, "cli"),
                                            ("resnet", "resnet18", "center-crop", 2, "run"),
                                            ("densenet", "densenet121", "squash", 3, "run"),
                                            ("densenet", "densenet121", "center-crop", 4, "cli")):
        what = "%s, %s" % (name, resize)
        store = os.path.join(work, "%s-%s.lmap" % (name, resize))
        torch.manual_seed(seed)
        model = torchvision.models.get_model(name, weights=None).eval()
        weights = os.path.join(work, "%s-%d.pth" % (name, seed))
        torch.save(model.state_dict(), weights)
        if how == "cli":
            r = subprocess.run([sys.executable, "-m", "lmap.annotate", images, "-o", store, "--model", name,
                                "--weights", weights, "--input-size", str(SIZE), "--resize", resize,
                                "--topk", str(K), "--batch-size", "7", "--workers", "2", "--no-progress"],
                               capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=os.path.join(HERE, "..", "..", "client", "python")))
            check(r.returncode == 0 and "30 images" in r.stderr, "%s: python3 -m lmap.annotate (%s)"
                  % (what, r.stderr[-300:]))
        else:
            out = annotate.run(images, store, name, weights=weights, input_size=SIZE, resize=resize,
                               topk=K, batch_size=7, workers=0, lmap=LMAP, progress=False)
            check(out["images"] == 30 and out["grid"] == [grid, grid] and out["num_classes"] == 1000,
                  "%s: lmap.annotate.run: %s" % (what, {k: out[k] for k in ("images", "grid", "num_classes")}))
        check_maps(store, model, family, resize, paths, what)
        meta = info(store)
        digest = hashlib.sha256(open(weights, "rb").read()).hexdigest()
        ann = meta.get("annotator", "")
        check(meta["record_count"] == 30 and meta["grid_h"] == grid and meta["topk"] == K and
              meta["extent"] == ("full" if resize == "squash" else "center_crop") and
              "model=%s" % name in ann and "sha256:" + digest in ann and "input_size=%d" % SIZE in ann and
              "resize=%s" % resize in ann and ann.startswith("lmap.annotate %s:" % version),
              "%s: metadata names the annotator: %s, extent %s" % (what, ann, meta["extent"]))
        ids = subprocess.run([LMAP, "ids", store], capture_output=True, text=True).stdout.split()
        check(ids == sorted(paths), "%s: ids are the file stems" % what)

    # An interrupted run (killed while its third shard of 6 is made) and
    # --resume: the maps already made are not made again, and the store is
    # the one an uninterrupted run makes.
    store = os.path.join(work, "resumed.lmap")
    weights = os.path.join(work, "resnet18-1.pth")
    cmd = [sys.executable, "-m", "lmap.annotate", images, "-o", store, "--model", "resnet18",
           "--weights", weights, "--input-size", str(SIZE), "--batch-size", "2", "--workers", "0",
           "--shard-size", "6", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=os.path.join(HERE, "..", "..", "client", "python"))
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    part = os.path.join(store + ".annotate", "part-00001.lmap")
    deadline = time.monotonic() + 120
    while not os.path.exists(part) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    # Its lmap import sees the stream end: it refuses a cut tar, or keeps
    # the maps it got when the cut fell between two of them.
    deadline = time.monotonic() + 30
    while importers_of(store + ".annotate") and time.monotonic() < deadline:
        time.sleep(0.05)
    kept = [os.path.join(store + ".annotate", n) for n in os.listdir(store + ".annotate")
            if n.startswith("part-") and n.endswith(".lmap")]
    before = sum(len(subprocess.run([LMAP, "ids", k], capture_output=True, text=True).stdout.split())
                 for k in kept)
    check(len(kept) >= 2 and before >= 12 and not os.path.exists(store),
          "killed during its third shard: %d shards of %d maps kept, no store at the target"
          % (len(kept), before))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    check(r.returncode == 1 and store + ".annotate" in r.stderr and "--resume" in r.stderr,
          "without --resume, the interrupted run's work is named (%s)" % r.stderr.strip()[-200:])
    try:
        annotate.run(images, store, "resnet18", weights=weights, input_size=SIZE, topk=3, workers=0,
                     lmap=LMAP, progress=False, resume=True, shard_size=6)
        check(False, "--resume with another --topk is refused")
    except annotate.AnnotateError as e:
        check("another annotator" in str(e) and len(os.listdir(store + ".annotate")) == len(kept) + 1,
              "--resume with another --topk is refused, the work kept (%s)" % e)
    out = annotate.run(images, store, "resnet18", weights=weights, input_size=SIZE, batch_size=5,
                       workers=0, lmap=LMAP, progress=False, resume=True, shard_size=6)
    check(out["resumed"] == before and out["images"] == 30 - before and
          not os.path.exists(store + ".annotate") and info(store)["record_count"] == 30,
          "--resume: %d images done before, %d annotated now, 30 maps, the work removed"
          % (out["resumed"], out["images"]))
    torch.manual_seed(1)
    check_maps(store, torchvision.models.get_model("resnet18", weights=None).eval(), "resnet",
               "squash", paths, "resumed run")

    # An image that does not decode: named, and no store; --skip-bad goes on.
    broken = os.path.join(images, "class_1", "broken_01.jpg")
    open(broken, "wb").write(b"\xff\xd8 not a jpeg at all")
    store = os.path.join(work, "bad.lmap")
    try:
        annotate.run(images, store, "resnet18", input_size=SIZE, workers=0, lmap=LMAP, progress=False)
        check(False, "a broken image fails the run")
    except annotate.AnnotateError as e:
        check(broken in str(e) and "cannot decode" in str(e) and not os.path.exists(store) and
              not os.path.exists(store + ".annotate"),
              "a broken image fails the run naming it, and no store (nor work) is left (%s)" % e)
    out = annotate.run(images, store, "resnet18", input_size=SIZE, workers=2, lmap=LMAP, progress=False,
                       skip_bad=True)
    check(out["skipped"] == [broken] and info(store)["record_count"] == 30,
          "--skip-bad: the broken image skipped and named, 30 maps stored")
    os.remove(broken)

    # Refusals, each naming the problem.
    for kwargs, words in ((dict(model="mobilenet_v3_small"), "more than dropout and one linear"),
                          (dict(model="no_such_net"), "not a torchvision model builder"),
                          (dict(model="resnet18", weights=os.path.join(work, "densenet121-3.pth")),
                           "not the weights of resnet18"),
                          (dict(model="resnet18", resize="stretch"), "--resize stretch"),
                          (dict(model="resnet18", topk=2000), "--topk 2000")):
        try:
            annotate.run(images, os.path.join(work, "refused.lmap"), input_size=SIZE, workers=0, lmap=LMAP,
                         progress=False, **kwargs)
            check(False, "%s refused" % kwargs)
        except annotate.AnnotateError as e:
            check(words in str(e) and not os.path.exists(os.path.join(work, "refused.lmap")),
                  "%s refused: %s" % (kwargs, e))
    # module:function returning a model.
    mod = os.path.join(work, "my_nets.py")
    open(mod, "w").write("import torchvision\n\ndef small():\n    return torchvision.models.resnet18(num_classes=10)\n")
    sys.path.insert(0, work)
    store = os.path.join(work, "custom.lmap")
    out = annotate.run(images, store, "my_nets:small", input_size=SIZE, topk=3, workers=0, lmap=LMAP,
                       progress=False)
    check(out["num_classes"] == 10 and info(store)["num_classes"] == 10 and info(store)["topk"] == 3,
          "module:function: a 10-class model, top-3 maps")

    # From an image folder to a soft label served by lmapd.
    store = os.path.join(work, "resnet18-squash.lmap")
    torch.manual_seed(1)
    model = torchvision.models.get_model("resnet18", weights=None).eval()
    id_ = sorted(paths)[4]
    with torch.no_grad():
        ref = reference_logits(model, "resnet", reference_input(paths[id_], "squash"))
    top = ref.topk(K, dim=0)
    dense = torch.zeros_like(ref).scatter_(0, top.indices, top.values)
    box = [0.1, 0.2, 0.8, 0.9]
    H, W = dense.shape[1:]
    roi = torch.tensor([[0, box[0] * W - 0.5, box[1] * H - 0.5, box[2] * W - 0.5, box[3] * H - 0.5]])
    want = torch.softmax(torchvision.ops.roi_align(dense[None], roi, (1, 1), 1.0, -1, False)[0, :, 0, 0], 0)
    p, port, _ = start_daemon(store)
    try:
        body = json.dumps({"queries": [{"id": id_, "box": box, "flip": False}]}).encode()
        req = urllib.request.Request("http://127.0.0.1:%d/v1/labels" % port, data=body,
                                     headers={"Content-Type": "application/json"})
        got = np.array(json.loads(urllib.request.urlopen(req, timeout=20).read())["results"][0]["probs"])
        diff = float(np.max(np.abs(got - want.numpy())))
        check(diff < 1e-3 and int(np.argmax(got)) == int(torch.argmax(want)),
              "images -> lmap.annotate -> lmapd: the soft label of %s equals the reference's (max "
              "difference %.2g)" % (id_, diff))
    finally:
        check(stop_daemon(p) == 0, "lmapd exit 0")
    return summary()


if __name__ == "__main__":
    raise SystemExit(main())
