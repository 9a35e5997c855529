#!/usr/bin/python3
"""lmap.torch in a real training input pipeline, checked against the
official ReLabel targets and the DESIGN.md pooling definition.

Builds an ImageNet-like folder of 48 JPEG images of random sizes in 2 class
folders (PIL), one label map per image written with torch.save like the
official release (float32 [2, 5, 15, 15], zip serialization), imports the
maps with `lmap import --encoding f32`, serves them with lmapd, then runs a
torch.utils.data.DataLoader(num_workers=2, persistent_workers=True,
batch_size=16, shuffle=True) over
SoftLabelDataset(ImageFolder(root, transform=ComposeWithBox([
RandomResizedCropWithBox, RandomHorizontalFlipWithBox, ToTensor, Normalize])))
for 2 epochs in two configurations, and checks every sample:

(a) box_format "relabel", G=1: the soft labels equal, within 1e-4, the
    official get_labelmaps/get_relabel (the inline copy in
    tests/oracle/test_oracle_relabel.py) run on the torch.load-ed .pt maps and
    the recorded official crop tuples, collated and summed exactly as the
    official training loop does;
(b) box_format "xyxy", G=2: the soft labels equal, within 1e-4, DESIGN.md's
    definition: roi_align of the dense zero-filled map over
    [x0, y0, x1, y1] * [W, H, W, H] - 0.5 (float32), spatial_scale 1,
    sampling_ratio -1, aligned=False, the 2x2 grid mirrored left-right for a
    flipped crop, softmax over classes.

It also checks that the WithBox transforms draw and output exactly what
torchvision's RandomResizedCrop does and record its box, and that a crop of
a flipped image maps back to the right columns; that every batch came in
one request (lmapd's /metrics: lmap_batch_size counts 6 requests of 16 per
configuration, none smaller); that the main process never opened a Client
while the workers fetched; that targets and boxes are consistent; that
single-item access and pickling work; 1 epoch with the spawn start method
(the dataset pickled into the workers); that a worker's NotFoundError
reaches the loop with its code; that examples/train_relabel.py runs 3
steps; and that lmapd drains at once at the end (no connection left open).
Every lmapd started is stopped by PID. Exit 1 on failure.
"""

import gc
import os
import pickle
import random
import subprocess
import sys

import numpy as np

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import py_common as pc  # noqa: E402

import torch  # noqa: E402
import torchvision  # noqa: E402
import torchvision.transforms as T  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.ops import roi_align  # noqa: E402

import lmap  # noqa: E402
import lmap.torch as lt  # noqa: E402
import oracle_common as oc  # noqa: E402
from test_oracle_relabel import official_get_labelmaps, official_get_relabel  # noqa: E402

N_IMAGES = 48
BATCH = 16
EPOCHS = 2
CROP = 32
TOL = 1e-4
CLASSES = ("n01440764", "n01443537")


def make_data(d, seed=3):
    """Images and .pt maps; returns {image id: .pt path}."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    maps = {}
    for k in range(N_IMAGES):
        wnid = CLASSES[k % 2]
        ident = "%s_%d" % (wnid, 1000 + k)
        w, h = rng.randint(40, 200), rng.randint(40, 200)
        arr = np.random.RandomState(k).randint(0, 256, (h, w, 3), dtype=np.uint8)
        ipath = os.path.join(d, "images", wnid, ident + ".JPEG")
        os.makedirs(os.path.dirname(ipath), exist_ok=True)
        Image.fromarray(arr).save(ipath, quality=90)
        mpath = os.path.join(d, "maps", wnid, ident + ".pt")
        oc.save_pt(oc.make_topk(gen, 5, 15, 15, 1000), mpath, "zip")
        maps[ident] = mpath
    return maps


def transform():
    return lt.ComposeWithBox([
        lt.RandomResizedCropWithBox(CROP),
        lt.RandomHorizontalFlipWithBox(),
        T.ToTensor(),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])


def design_reference(dense, boxes_xyxy, flips, g):
    """DESIGN.md: roi_align over box*[W,H,W,H]-0.5 (float32), spatial_scale 1,
    sampling_ratio -1, aligned=False; flipped grid mirrored; softmax."""
    n, c, h, w = dense.shape
    region = boxes_xyxy.float() * torch.tensor([w, h, w, h], dtype=torch.float32) - 0.5
    rois = torch.cat([torch.arange(n, dtype=torch.float32).view(n, 1), region], 1)
    out = roi_align(dense, rois, output_size=(g, g), spatial_scale=1.0, sampling_ratio=-1, aligned=False)
    out[flips] = out[flips].flip(-1)
    return torch.softmax(out, dim=1)  # [N, C, G, G]


def check_boxes(ck, box, tag):
    """The recorded CropBox: xyxy and the official tuple describe the same
    crop, inside the image."""
    xyxy = lt.box_tensor(box, "xyxy")
    rel = lt.box_tensor(box, "relabel")
    same = torch.stack([rel[:, 1], rel[:, 0], rel[:, 1] + rel[:, 3], rel[:, 0] + rel[:, 2]], 1)
    ck.check(torch.allclose(xyxy, same, atol=1e-12, rtol=0), "%s: xyxy and relabel tuple disagree" % tag)
    ck.check(bool(((xyxy >= 0) & (xyxy <= 1)).all()) and bool((xyxy[:, 2] > xyxy[:, 0]).all())
             and bool((xyxy[:, 3] > xyxy[:, 1]).all()), "%s: a box outside the image or empty" % tag)
    ck.check(box.flip.dtype == torch.bool, "%s: flip collated as %s" % (tag, box.flip.dtype))


def run_loader(ck, url, root, maps, box_format, g, epochs, ctx=None, tag=""):
    folder = torchvision.datasets.ImageFolder(root, transform=transform())
    ds = lt.SoftLabelDataset(folder, url, output_size=g, box_format=box_format, return_box=True,
                             return_id=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=2,
                                         persistent_workers=True, multiprocessing_context=ctx)
    seen = 0
    flips_seen = set()
    worst = 0.0
    for epoch in range(epochs):
        for b, batch in enumerate(loader):
            where = "%s epoch %d batch %d" % (tag, epoch, b)
            if not ck.check(isinstance(batch, (list, tuple)) and len(batch) == 5, "%s: batch has %d parts"
                            % (where, len(batch))):
                continue
            imgs, soft, target, box, ids = batch
            n = len(ids)
            shape = (n, 1000) if g == 1 else (n, 1000, g, g)
            ck.check(tuple(imgs.shape) == (n, 3, CROP, CROP), "%s: images %s" % (where, tuple(imgs.shape)))
            if not ck.check(tuple(soft.shape) == shape and soft.dtype == torch.float32,
                            "%s: soft labels %s %s, expected %s" % (where, tuple(soft.shape), soft.dtype, shape)):
                continue
            ck.check(isinstance(box, lt.CropBox), "%s: box collated as %s" % (where, type(box).__name__))
            ck.check([folder.classes[t] for t in target.tolist()] == [i.split("_")[0] for i in ids],
                     "%s: targets do not match the ids' folders" % where)
            check_boxes(ck, box, where)
            flips_seen.update(box.flip.tolist())
            topk = [torch.load(maps[i]).float() for i in ids]
            if box_format == "relabel":
                # Exactly what the official loop does with the collated tuples.
                coords = lt.box_tensor(box, "relabel")  # float64, as default_collate makes them
                coords[:, 2:] += coords[:, :2]
                ref = official_get_relabel(official_get_labelmaps(topk, n), coords, n)
            else:
                ref = design_reference(oc.dense_maps(torch.stack(topk), 1000), lt.box_tensor(box, "xyxy"),
                                       box.flip, g)
            e = float((soft - ref).abs().max())
            worst = max(worst, e)
            ck.check(e <= TOL, "%s: soft labels differ from the reference by %.3g" % (where, e))
            seen += n
    ck.err("%s vs reference" % tag, worst)
    ck.check(seen == epochs * N_IMAGES, "%s: %d samples seen, expected %d" % (tag, seen, epochs * N_IMAGES))
    ck.check(flips_seen == {True, False}, "%s: flips seen %s" % (tag, flips_seen))
    ck.check(ds._client is None, "%s: the main process opened a Client" % tag)
    return ds


def check_transforms(ck):
    """The WithBox transforms draw and output exactly what torchvision's do,
    and the box composes through a flip taken before the crop."""
    import torchvision.transforms.functional as F
    img = Image.fromarray(np.random.RandomState(0).randint(0, 256, (90, 130, 3), dtype=np.uint8))
    for seed in range(20):
        torch.manual_seed(seed)
        ref = T.RandomResizedCrop(24)(img)
        torch.manual_seed(seed)
        i, j, h, w = T.RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))
        torch.manual_seed(seed)
        out, box = lt.RandomResizedCropWithBox(24)(img)
        ck.check(np.array_equal(np.asarray(out), np.asarray(ref)), "seed %d: crop differs from torchvision's" % seed)
        ck.check(box == lt.CropBox(j / 130, i / 90, (j + w) / 130, (i + h) / 90, False, i / 90, j / 130, h / 90, w / 130),
                 "seed %d: box %s for crop (%d, %d, %d, %d)" % (seed, box, i, j, h, w))
    # Flip first, then crop: the box is mapped back to the original image.
    col = torch.arange(130, dtype=torch.float32).view(1, 1, 130).expand(1, 90, 130).contiguous()
    t = lt.ComposeWithBox([lt.RandomHorizontalFlipWithBox(p=1.0), lt.RandomResizedCropWithBox((90, 130), scale=(0.2, 0.5))])
    for seed in range(10):
        torch.manual_seed(seed)
        _, box = t(col)
        torch.manual_seed(seed)
        torch.rand(1)  # the flip's draw
        i, j, h, w = T.RandomResizedCrop.get_params(col, (0.2, 0.5), (3 / 4, 4 / 3))
        shown = F.hflip(col)[0, 0, j:j + w]  # original columns the crop shows
        ck.check(box.flip and abs(box.x0 * 130 - float(shown.min())) < 1e-9 and abs(box.x1 * 130 - float(shown.max()) - 1) < 1e-9
                 and abs(box.y0 - i / 90) < 1e-12 and abs(box.y1 - (i + h) / 90) < 1e-12,
                 "flip then crop: box %s, crop shows columns %d..%d" % (box, shown.min(), shown.max()))


def requests_of(url):
    m = pc.metrics(url)
    return (m.get("lmap_batch_size_count", 0.0), m.get("lmap_batch_size_sum", 0.0),
            m.get('lmap_batch_size_bucket{le="4"}', 0.0))


def check_requests(ck, url, before, batches, tag):
    after = requests_of(url)
    count, total, small = (a - b for a, b in zip(after, before))
    ck.check(count == batches and total == batches * BATCH and small == 0,
             "%s: lmapd saw %d label requests for %d labels (%d of <= 4); expected %d requests of %d "
             "(one per batch through __getitems__)" % (tag, count, total, small, batches, BATCH))
    print("%s: %d requests, %d labels" % (tag, count, total), flush=True)


def main():
    ck = pc.Checker("test_py_dataloader")
    torch.set_num_threads(1)
    check_transforms(ck)
    d = pc.scratch("test_py_dataloader")
    maps = make_data(d)
    store = os.path.join(d, "maps.lmap")
    pc.lmap_ok("import", os.path.join(d, "maps"), "-o", store, "--encoding", "f32", "--no-progress")
    root = os.path.join(d, "images")
    batches = EPOCHS * N_IMAGES // BATCH
    with pc.Daemons() as daemons:
        url, _ = daemons.start(store)

        # (a) the official targets, (b) DESIGN.md's definition with a 2x2 grid.
        before = requests_of(url)
        run_loader(ck, url, root, maps, "relabel", 1, EPOCHS, tag="relabel G=1")
        check_requests(ck, url, before, batches, "relabel G=1")
        before = requests_of(url)
        ds = run_loader(ck, url, root, maps, "xyxy", 2, EPOCHS, tag="xyxy G=2")
        check_requests(ck, url, before, batches, "xyxy G=2")

        # Single items in the main process; the dataset pickles without its Client.
        before = requests_of(url)
        img, soft, target, box, ident = ds[5]
        ck.check(tuple(soft.shape) == (1000, 2, 2) and ident == os.path.splitext(os.path.basename(
            ds.dataset.samples[5][0]))[0], "ds[5]: soft %s id %s" % (tuple(soft.shape), ident))
        ck.check(ds._client is not None and ds._client_pid == os.getpid(), "ds[5] made no Client")
        ds2 = pickle.loads(pickle.dumps(ds))
        ck.check(ds2._client is None and len(ds2) == N_IMAGES, "unpickled dataset carries a Client")
        ck.check(tuple(ds2[5][1].shape) == (1000, 2, 2), "unpickled dataset answers")
        check_requests_single = requests_of(url)
        ck.check(check_requests_single[0] - before[0] == 2, "2 single items: %d requests"
                 % (check_requests_single[0] - before[0]))

        # spawn: the dataset travels pickled into fresh worker processes.
        before = requests_of(url)
        run_loader(ck, url, root, maps, "relabel", 1, 1, ctx="spawn", tag="relabel G=1 spawn")
        check_requests(ck, url, before, N_IMAGES // BATCH, "relabel G=1 spawn")

        # Errors reach the training loop as LmapError with their details.
        folder = torchvision.datasets.ImageFolder(root, transform=transform())
        bad = lt.SoftLabelDataset(folder, url, ids=["n00000000_%d" % i for i in range(N_IMAGES)])
        loader = torch.utils.data.DataLoader(bad, batch_size=BATCH, num_workers=1)
        try:
            next(iter(loader))
            ck.check(False, "unknown ids: the loader raised nothing")
        except Exception as e:  # noqa: BLE001 - torch re-raises the worker's exception type
            # torch rebuilds the worker's exception from its class and text:
            # the class carries the code, the text the worker's details.
            ck.check(isinstance(e, lmap.NotFoundError) and "n00000000_" in str(e) and e.code == "not_found"
                     and e.http_status == 404 and "HTTP 404" in str(e),
                     "unknown ids: loader raised %s (code %r): %s" % (type(e).__name__, getattr(e, "code", None),
                                                                      str(e)[:300]))
        del loader
        plain = torchvision.datasets.ImageFolder(root, transform=T.ToTensor())
        ck.raises(TypeError, lambda: lt.SoftLabelDataset(plain, url)[0], "a dataset without ComposeWithBox")
        ck.raises(TypeError, lambda: lt.ComposeWithBox([T.RandomResizedCrop(8)]),
                  "ComposeWithBox refuses an unrecorded crop")
        ck.raises(TypeError, lambda: lt.ComposeWithBox([T.RandomApply([T.RandomHorizontalFlip()])]),
                  "ComposeWithBox refuses an unrecorded flip inside RandomApply")
        ck.raises(TypeError, lambda: lt.ComposeWithBox([T.Compose([lt.RandomResizedCropWithBox(8)])]),
                  "ComposeWithBox refuses a WithBox transform nested in Compose")

        # The example script runs against this daemon (a smoke run: 3 steps).
        env = dict(os.environ, PYTHONPATH=os.path.join(pc.ROOT, "client", "python"))
        ex = subprocess.run([sys.executable, os.path.join(pc.ROOT, "client", "python", "examples",
                                                          "train_relabel.py"),
                             "--url", url, "--images", root, "--steps", "3", "--crop", "32"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=120)
        text = ex.stdout.decode("utf-8", "replace")
        ck.check(ex.returncode == 0 and "3 steps, 48 samples" in text,
                 "examples/train_relabel.py: exit %d: %s" % (ex.returncode, text[-1500:]))

        # Workers gone and every Client closed: lmapd drains at once, exit 0.
        ds.close()
        ds2.close()
        gc.collect()
        for p in list(daemons.procs):
            rc = daemons.stop(p)
            ck.check(rc == 0, "lmapd pid %d stopped with %r: a connection was left open" % (p.pid, rc))

    return ck.summary(d)


if __name__ == "__main__":
    sys.exit(main())
