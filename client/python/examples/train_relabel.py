#!/usr/bin/python3
"""A few training steps with ReLabel soft labels served by lmapd.

The input pipeline is the usual torchvision one (ImageFolder, random resized
crop, flip, ToTensor, Normalize) with the box-recording variants of the crop
and flip; lmap.torch.SoftLabelDataset adds each sample's soft label, fetched
for the whole batch in one request from a DataLoader worker. The loss is the
soft-label cross entropy of ReLabel's LabelPooling.

    # a store and a server (here: synthetic maps for 1000 images)
    lmap synth -o demo.lmap -n 1000
    lmapd --store demo.lmap --listen 127.0.0.1:8080 &
    # images whose file names are ids of the store (here: made up)
    lmap ids demo.lmap | head -64 > ids.txt
    LMAP_LIBRARY=build/client/liblmap.so.1 PYTHONPATH=client/python \\
        python3 client/python/examples/train_relabel.py --url http://127.0.0.1:8080 \\
        --images /tmp/demo-images --make-demo ids.txt

With the official release: import the maps (`lmap import relabel.tar -o
imagenet.lmap`), serve them, and point --images at the ImageNet train folder
(file n01440764/n01440764_10026.JPEG has id n01440764_10026).
"""

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torchvision
import torchvision.transforms as T
from PIL import Image

import lmap
import lmap.torch as lt


def make_demo(ids_file, root, seed=0):
    """Random JPEG images named after the ids in ids_file, in ImageNet-style
    class folders (the part of the id before '_')."""
    rng = np.random.RandomState(seed)
    with open(ids_file) as f:
        ids = [line.strip() for line in f if line.strip()]
    for ident in ids:
        folder = os.path.join(root, ident.split("_")[0])
        os.makedirs(folder, exist_ok=True)
        h, w = rng.randint(64, 256, size=2)
        Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(
            os.path.join(folder, ident + ".JPEG"), quality=85)
    print("made %d demo images under %s" % (len(ids), root))


def tiny_model(num_classes):
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080",
                    help="lmapd base URL(s), comma-separated (default %(default)s)")
    ap.add_argument("--images", required=True, help="ImageFolder root (class folders of images)")
    ap.add_argument("--make-demo", metavar="IDS_FILE",
                    help="first create random images named after the ids in IDS_FILE under --images")
    ap.add_argument("--steps", type=int, default=5, help="training steps (default %(default)s)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--crop", type=int, default=64, help="crop size in pixels (default %(default)s)")
    ap.add_argument("--box-format", choices=("xyxy", "relabel"), default="xyxy",
                    help="xyxy: the geometrically correct region; relabel: the official code's "
                         "targets, diagonal mirror included (default %(default)s)")
    ap.add_argument("--token-file", help="bearer token file, if lmapd has --token-file")
    ap.add_argument("--lr", type=float, default=0.1)
    args = ap.parse_args(argv)

    if args.make_demo:
        make_demo(args.make_demo, args.images)

    client_options = {"token_file": args.token_file} if args.token_file else {}
    with lmap.Client(args.url, **client_options) as c:
        info = c.info()
    num_classes = info["num_classes"]
    print("store: %d records, %d classes, %dx%d grid, top-%d" % (
        info["record_count"], num_classes, info["grid_h"], info["grid_w"], info["topk"]))

    transform = lt.ComposeWithBox([
        lt.RandomResizedCropWithBox(args.crop),
        lt.RandomHorizontalFlipWithBox(),
        T.ToTensor(),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    folder = torchvision.datasets.ImageFolder(args.images, transform=transform)
    dataset = lt.SoftLabelDataset(folder, args.url, box_format=args.box_format, **client_options)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, drop_last=True,
                                         persistent_workers=args.workers > 0)
    model = tiny_model(num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    step, t0 = 0, time.monotonic()
    while step < args.steps:
        for images, soft, _target in loader:
            loss = lt.soft_cross_entropy(model(images), soft)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            top = soft.max(1)
            print("step %d: loss %.4f, batch %s, soft labels %s (mean top prob %.3f)" % (
                step, loss.item(), tuple(images.shape), tuple(soft.shape), top.values.mean().item()),
                flush=True)
            if step >= args.steps:
                break
        else:
            if step == 0:
                sys.exit("no full batch: the folder has fewer than --batch-size images")
    dt = time.monotonic() - t0
    print("%d steps, %d samples in %.1f s" % (step, step * args.batch_size, dt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
