"""Label maps for your own images: a classifier run as a dense annotator,
its maps streamed into an lmap store.

    python3 -m lmap.annotate IMAGES -o STORE --model resnet50 --weights resnet50.pth

or, from Python, lmap.annotate.run("images/", "mine.lmap", "resnet50",
weights="resnet50.pth").

The annotator is the one of the ReLabel paper's Appendix A: the network
without its global pooling, and its classifier head, the final linear layer,
applied to every cell of the last feature map as a 1 x 1 convolution, so
each cell gets the network's C logits; the top K logits and their classes
are kept per cell, a [2, K, H, W] map (plane 0 the logits, plane 1 the
classes), the official maps' layout. Every map is written with torch.save
into a tar that streams into `lmap import -`: nothing of the maps' size
lands on disk but the store, which appears only when the import succeeds,
with every check of the importer applied. The store's metadata names the
annotator: the model, the weights' SHA-256, the input size, the resize
policy and this lmap's version. docs/ANNOTATE.md has the recipe that
reproduces the official maps' conventions.

Needs torch and torchvision (and Pillow, which torchvision brings), and the
`lmap` tool (--lmap, $LMAP_BIN, or on PATH).
"""

import argparse
import hashlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

from ._version import __version__

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif")
RESIZE_POLICIES = ("squash", "center-crop")
# What the map covers, in the store's metadata (lmap import --extent).
EXTENT = {"squash": "full", "center-crop": "center_crop"}
ID_BYTES = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.+:-")
MAX_ID_LEN = 255


class AnnotateError(Exception):
    """A problem with the arguments, the model, an image or the import,
    named in the message."""


# ---- images ----

def list_images(root):
    """(id, path) of every image under `root`, sorted by id; ids are file
    stems, as everywhere in lmap. Two files with one stem, or a stem that is
    not an lmap id, are errors naming the files."""
    if not os.path.isdir(root):
        raise AnnotateError("%s: not a directory of images" % root)
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in IMAGE_EXTENSIONS:
                continue
            path = os.path.join(dirpath, name)
            check_id(stem, path)
            if stem in found:
                raise AnnotateError("%s and %s: two images with the id '%s' (ids are file stems)"
                                    % (found[stem], path, stem))
            found[stem] = path
    if not found:
        raise AnnotateError("%s: no images (%s)" % (root, " ".join(IMAGE_EXTENSIONS)))
    return sorted(found.items())


def check_id(stem, path):
    if not stem or len(stem.encode()) > MAX_ID_LEN or stem[0] in ".-" or \
            any(ch not in ID_BYTES for ch in stem):
        raise AnnotateError("%s: '%s' is not an lmap id (1-255 bytes of A-Z a-z 0-9 _ . + : -, "
                            "not starting with . or -): rename the file" % (path, stem))


def preprocess(resize, size, mean, std):
    """The input transform: the whole image squashed to size x size (the
    official maps'), or its shorter side to `size` and the centre size x
    size (TokenLabeling's); then ImageNet normalization by default."""
    import torchvision.transforms as T
    if resize == "squash":
        geometry = [T.Resize((size, size))]
    else:
        geometry = [T.Resize(size), T.CenterCrop(size)]
    return T.Compose(geometry + [T.ToTensor(), T.Normalize(mean, std)])


class _Images:
    """A torch Dataset of (index, tensor or None, error or None): an image
    that does not decode is reported, not raised, so that the main process
    decides (--skip-bad) and names it."""

    def __init__(self, items, transform):
        self.items = items
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from PIL import Image
        path = self.items[i][1]
        try:
            with Image.open(path) as im:
                return i, self.transform(im.convert("RGB")), None
        except Exception as e:  # any decoder failure names the file
            return i, None, "%s: cannot decode the image: %s" % (path, e)


def _collate(batch):
    return batch


# ---- the dense annotator ----

def build_model(name, weights=None, seed=0):
    """The classifier: a torchvision builder name (resnet50, efficientnet_b0,
    ...) or "module:function" returning an nn.Module; with `weights` a
    state_dict saved by torch.save, else random weights from `seed`."""
    import torch
    # The seed decides random weights without touching the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _new_model(name)
    if weights:
        try:
            state = torch.load(weights, map_location="cpu")
        except Exception as e:
            raise AnnotateError("--weights %s: cannot load it with torch.load: %s" % (weights, e))
        if not isinstance(state, dict):
            raise AnnotateError("--weights %s: holds a %s, not a state_dict" % (weights, type(state).__name__))
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise AnnotateError("--weights %s: not the weights of %s: %s" % (weights, name, str(e)[:500]))
    return model.eval()


def _new_model(name):
    import torch
    import torchvision
    if ":" in name:
        module, _, function = name.partition(":")
        try:
            model = getattr(importlib.import_module(module), function)()
        except (ImportError, AttributeError) as e:
            raise AnnotateError("--model %s: %s" % (name, e))
    else:
        try:
            model = torchvision.models.get_model(name, weights=None)
        except ValueError:
            raise AnnotateError("--model %s: not a torchvision model builder (torchvision.models."
                                "list_models() lists them), nor module:function" % name)
    if not isinstance(model, torch.nn.Module):
        raise AnnotateError("--model %s: returned %s, not a torch.nn.Module" % (name, type(model).__name__))
    return model


def split_classifier(model, name="the model"):
    """(body, head): the network up to its last feature map, and its final
    linear layer. Recognised shapes: a network whose children run in order
    up to a linear `fc` (ResNet, RegNet, ShuffleNetV2: the global pooling
    between them is dropped), and a features/classifier network whose
    classifier is dropout and one linear layer (EfficientNet, MobileNetV2,
    DenseNet with its final ReLU). Others are refused, saying why: a head
    with more than the linear layer cannot be applied per cell as one
    1 x 1 convolution. check_split then proves the split on an input."""
    import torch.nn as nn
    children = dict(model.named_children())
    if isinstance(children.get("fc"), nn.Linear):
        body = []
        for key, child in model.named_children():
            if key in ("avgpool", "fc"):
                break
            body.append(child)
        return nn.Sequential(*body), children["fc"]
    if {"features", "classifier"} <= set(children):
        head = children["classifier"]
        layers = list(head) if isinstance(head, nn.Sequential) else [head]
        linears = [m for m in layers if isinstance(m, nn.Linear)]
        others = [m for m in layers if not isinstance(m, (nn.Linear, nn.Dropout))]
        if len(linears) == 1 and not others and layers[-1] is linears[0]:
            body = children["features"]
            if type(model).__name__ == "DenseNet":  # its forward applies a ReLU first
                body = nn.Sequential(body, nn.ReLU())
            return body, linears[0]
        raise AnnotateError("%s: its classifier (%s) is more than dropout and one linear layer: it "
                            "cannot be applied to every cell as a 1 x 1 convolution"
                            % (name, ", ".join(type(m).__name__ for m in layers)))
    raise AnnotateError("%s: neither a network ending in a linear fc nor a features/classifier "
                        "one: lmap.annotate cannot find its last feature map and head" % name)


def check_split(model, body, head, size, name="the model"):
    """The split is the model: on a random input, the head applied to the
    mean of the last feature map (global average pooling, then the linear
    layer) must give the model's own logits. A network whose forward does
    more than that between its parts (an extra activation, an input
    transform) is refused here rather than annotated wrongly."""
    import torch
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)
        got = head(body(x).mean((2, 3)))
    if want.shape != got.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
        diff = float((got - want).abs().max()) if want.shape == got.shape else float("nan")
        raise AnnotateError("%s: its last feature map, pooled, and its head do not give its own "
                            "output (max difference %.3g): its forward does more than pooling "
                            "between them, so its head cannot be applied per cell" % (name, diff))


class DenseAnnotator:
    """The body, then the head's weights and bias as a 1 x 1 convolution:
    [N, 3, S, S] images to [N, C, H, W] logits."""

    def __init__(self, model, name="the model", check_size=None):
        self.body, head = split_classifier(model, name)
        if check_size:
            check_split(model, self.body, head, check_size, name)
        self.weight = head.weight.detach()[:, :, None, None]
        self.bias = head.bias.detach() if head.bias is not None else None
        self.num_classes = head.out_features

    def to(self, device):
        self.body.to(device)
        self.weight = self.weight.to(device)
        self.bias = self.bias.to(device) if self.bias is not None else None
        return self

    def __call__(self, x):
        import torch.nn.functional as F
        features = self.body(x)
        if features.dim() != 4 or features.shape[1] != self.weight.shape[1]:
            raise AnnotateError("the last feature map is %s, not [N, %d, H, W] as the head expects"
                                % (list(features.shape), self.weight.shape[1]))
        return F.conv2d(features, self.weight, self.bias)


def top_k_maps(logits, k):
    """[N, C, H, W] logits to N maps [2, K, H, W]: plane 0 the top K logits
    of each cell, best first, plane 1 their classes (as floats, as the
    official maps hold them)."""
    import torch
    values, classes = logits.topk(k, dim=1)
    return torch.stack([values, classes.to(values.dtype)], dim=1).float().cpu()


# ---- the run ----

def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Progress:
    """images/s and an ETA on stderr: rewritten in place on a terminal,
    a line every 10 s otherwise."""

    def __init__(self, total, enabled):
        self.total, self.enabled = total, enabled
        self.tty = sys.stderr.isatty()
        self.t0 = self.last = time.monotonic()

    def update(self, done, final=False):
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self.last < (0.2 if self.tty else 10):
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        left = (self.total - done) / rate if rate > 0 else 0
        line = "annotate: %d/%d images, %.1f images/s, ETA %dm%02ds" % (
            done, self.total, rate, left // 60, left % 60)
        sys.stderr.write(("\r%s\033[K" % line) if self.tty else line + "\n")
        if final and self.tty:
            sys.stderr.write("\n")
        sys.stderr.flush()


def find_lmap(explicit=None):
    path = explicit or os.environ.get("LMAP_BIN") or shutil.which("lmap")
    if not path or not os.access(path, os.X_OK):
        raise AnnotateError("the lmap tool was not found (--lmap PATH, $LMAP_BIN, or lmap on PATH)")
    return path


def run(images, output, model, weights=None, input_size=480, resize="squash", topk=5,
        batch_size=32, device="cpu", classes=None, workers=2, mean=IMAGENET_MEAN,
        std=IMAGENET_STD, encoding="f16", force=False, skip_bad=False, seed=0, lmap=None,
        progress=None, threads=None, resume=False, shard_size=10000):
    """Annotates every image under `images` and writes the store `output`
    (see the module's doc; the arguments are the command's options).
    Returns a dict: images, skipped (the files that did not decode, with
    --skip-bad), seconds, images_per_second, grid [H, W], num_classes,
    annotator (the metadata text). Raises AnnotateError naming the problem."""
    import torch
    # torch's default here can be one thread on a machine with more (3x
    # slower on 2 CPUs): every CPU unless told otherwise, for this run only.
    before = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        return _run(images, output, model, weights, input_size, resize, topk, batch_size, device,
                    classes, workers, mean, std, encoding, force, skip_bad, seed, lmap, progress,
                    resume, shard_size)
    finally:
        torch.set_num_threads(before)


def _run(images, output, model, weights, input_size, resize, topk, batch_size, device, classes,
         workers, mean, std, encoding, force, skip_bad, seed, lmap, progress, resume, shard_size):
    import torch
    if resize not in RESIZE_POLICIES:
        raise AnnotateError("--resize %s: one of %s" % (resize, ", ".join(RESIZE_POLICIES)))
    if input_size < 32 or topk < 1 or batch_size < 1 or workers < 0 or shard_size < 1:
        raise AnnotateError("--input-size >= 32, --topk >= 1, --batch-size >= 1, --workers >= 0 "
                            "and --shard-size >= 1")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise AnnotateError("--mean and --std: three numbers each, std > 0")
    if os.path.exists(output) and not force:
        raise AnnotateError("%s exists (--force replaces it)" % output)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AnnotateError("--device %s: CUDA is not available here" % device)
    lmap_bin = find_lmap(lmap)
    items = list_images(images)
    net = build_model(model, weights, seed)
    annotator = DenseAnnotator(net, model, check_size=input_size).to(device)
    C = annotator.num_classes
    if topk > C:
        raise AnnotateError("--topk %d: the model has %d classes" % (topk, C))
    digest = file_sha256(weights) if weights else "none (random, seed %d)" % seed
    text = ("lmap.annotate %s: model=%s weights=%s input_size=%d resize=%s topk=%d "
            "mean=%s std=%s logits"
            % (__version__, model, ("sha256:" + digest) if weights else digest, input_size, resize,
               topk, ",".join("%g" % v for v in mean), ",".join("%g" % v for v in std)))

    # The work: shard stores of `shard_size` maps in OUTPUT.annotate/, each
    # complete when it appears; a resumed run skips their ids. The target
    # appears only when every shard is in.
    work = output + ".annotate"
    stamp = os.path.join(work, "annotator.txt")
    done_ids = set()
    if os.path.isdir(work):
        if not resume:
            raise AnnotateError("%s holds an interrupted run's maps: --resume goes on with them "
                                "(or remove it)" % work)
        try:
            with open(stamp) as f:
                made_by = f.read()
        except OSError:
            made_by = None  # not lmap.annotate's folder
        if made_by != text:
            raise AnnotateError("%s was made by another annotator, or is not lmap.annotate's (%s): "
                                "remove it, or resume with the same options" % (work, stamp))
        for part in shard_paths(work):
            done_ids.update(subprocess.run([lmap_bin, "ids", part], capture_output=True, text=True,
                                           check=True).stdout.split())
    else:
        os.makedirs(work)
        with open(stamp, "w") as f:
            f.write(text)
    todo = [it for it in items if it[0] not in done_ids]
    try:
        return _annotate(todo, len(items), work, images, output, annotator, text, lmap_bin, C,
                         input_size, resize, topk, batch_size, device, classes, workers, mean, std,
                         encoding, force, skip_bad, progress, shard_size)
    except BaseException:
        if not shard_paths(work):  # nothing to resume: no trace
            shutil.rmtree(work, ignore_errors=True)
        raise


def _annotate(todo, total, work, images, output, annotator, text, lmap_bin, C, input_size, resize,
              topk, batch_size, device, classes, workers, mean, std, encoding, force, skip_bad,
              progress, shard_size):
    import torch
    bar = Progress(len(todo), sys.stderr.isatty() if progress is None else progress)
    skipped, done, grid = [], 0, None
    t0 = time.monotonic()
    transform = preprocess(resize, input_size, mean, std)
    for first in range(0, len(todo), shard_size):
        shard = todo[first:first + shard_size]
        loader = torch.utils.data.DataLoader(_Images(shard, transform), batch_size=batch_size,
                                             num_workers=workers, collate_fn=_collate)
        part = os.path.join(work, "part-%05d.lmap" % len(shard_paths(work)))
        out = write_shard(loader, shard, part, annotator, topk, device, skip_bad,
                          import_command(lmap_bin, part, C, encoding, images, text, resize, classes),
                          bar, done)
        skipped += out["skipped"]
        done += len(shard)
        grid = out["grid"] or grid
    bar.update(done, final=True)
    if done and done == len(skipped):
        raise AnnotateError("%s: no image decoded" % images)
    parts = shard_paths(work)
    if not parts:
        raise AnnotateError("%s: no map was made" % images)
    if len(parts) == 1:  # already the store, metadata and all
        os.replace(parts[0], output)
    else:
        cmd = import_command(lmap_bin, output, C, encoding, images, text, resize, classes)
        cmd[2:3] = parts
        r = subprocess.run(cmd + (["--force"] if force else []), capture_output=True, text=True)
        if r.returncode != 0:
            raise AnnotateError("lmap import of the shards in %s failed (exit %d): %s"
                                % (work, r.returncode, r.stderr.strip()))
    shutil.rmtree(work)
    seconds = time.monotonic() - t0
    if grid is None:
        info = json.loads(subprocess.run([lmap_bin, "info", "--json", output], capture_output=True,
                                         text=True, check=True).stdout)
        grid = [info["grid_h"], info["grid_w"]]
    made = done - len(skipped)
    return {"images": made, "resumed": total - len(todo), "skipped": skipped,
            "seconds": seconds, "images_per_second": made / seconds if seconds > 0 else 0.0,
            "grid": grid, "num_classes": C, "annotator": text}


def shard_paths(work):
    return sorted(os.path.join(work, n) for n in os.listdir(work)
                  if n.startswith("part-") and n.endswith(".lmap"))


def import_command(lmap_bin, output, num_classes, encoding, images, text, resize, classes):
    cmd = [lmap_bin, "import", "-", "-o", output, "--num-classes", str(num_classes),
           "--encoding", encoding, "--source", "lmap.annotate of %s" % os.path.abspath(images),
           "--annotator", text, "--extent", EXTENT[resize], "--no-progress"]
    return cmd + (["--classes", classes] if classes else [])


def write_shard(loader, items, part, annotator, topk, device, skip_bad, cmd, bar, done):
    """Annotates `items` into the store `part`, streamed through `cmd`
    (lmap import -): it appears only when complete."""
    import torch
    err = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=err)
    skipped, grid = [], None
    try:
        with tarfile.open(fileobj=proc.stdin, mode="w|") as tar, torch.no_grad():
            for batch in loader:
                bad = [e for _, x, e in batch if x is None]
                if bad and not skip_bad:
                    raise AnnotateError(bad[0] + " (--skip-bad goes on without it; --resume keeps "
                                        "the maps already made)")
                skipped += [items[i][1] for i, x, _ in batch if x is None]
                good = [(i, x) for i, x, _ in batch if x is not None]
                if good:
                    x = torch.stack([t for _, t in good]).to(device)
                    maps = top_k_maps(annotator(x), topk)
                    grid = list(maps.shape[-2:])
                    for (i, _), m in zip(good, maps):
                        buf = io.BytesIO()
                        torch.save(m.clone(), buf)
                        info = tarfile.TarInfo(items[i][0] + ".pt")
                        info.size = buf.tell()
                        buf.seek(0)
                        tar.addfile(info, buf)
                done += len(batch)
                bar.update(done)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # lmap import stopped: its message follows
    except BaseException:
        proc.kill()  # this shard never appears: the importer commits only at the end
        proc.wait()
        raise
    rc = proc.wait()
    err.seek(0)
    if rc != 0 and len(skipped) < len(items):
        raise AnnotateError("lmap import failed (exit %d): %s" % (rc, err.read().strip()))
    return {"skipped": skipped, "grid": grid}


# ---- the command ----

def _floats(text):
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("'%s' is not three comma-separated numbers" % text)


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python3 -m lmap.annotate",
        description="Dense label maps of every image under IMAGES by a classifier (its head "
                    "applied to every cell of its last feature map), written into an lmap store.")
    p.add_argument("images", metavar="IMAGES", help="a folder of images (searched recursively); "
                   "ids are file stems")
    p.add_argument("-o", "--output", required=True, metavar="STORE", help="the store to write")
    p.add_argument("--model", required=True, metavar="NAME",
                   help="a torchvision model builder (resnet50, efficientnet_b0, ...) or "
                        "module:function returning a model")
    p.add_argument("--weights", metavar="PATH|none", default="none",
                   help="a state_dict saved with torch.save (default none: random weights)")
    p.add_argument("--input-size", type=int, default=480, metavar="N",
                   help="the input's side (default 480: a 15 x 15 map for a stride-32 network, "
                        "as the official maps)")
    p.add_argument("--resize", choices=RESIZE_POLICIES, default="squash",
                   help="squash: the whole image to N x N (the official maps'); center-crop: the "
                        "shorter side to N, then the centre (TokenLabeling's)")
    p.add_argument("--topk", type=int, default=5, metavar="K", help="classes kept per cell (default 5)")
    p.add_argument("--batch-size", type=int, default=32, metavar="B")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--classes", metavar="FILE", help="class names, one per line (or a JSON array)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="image decoding processes")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch's threads for the network on the CPU (default: every CPU)")
    p.add_argument("--mean", type=_floats, default=IMAGENET_MEAN, metavar="R,G,B")
    p.add_argument("--std", type=_floats, default=IMAGENET_STD, metavar="R,G,B")
    p.add_argument("--encoding", choices=("f16", "f32"), default="f16", help="score encoding")
    p.add_argument("--seed", type=int, default=0, help="for --weights none (default 0)")
    p.add_argument("--skip-bad", action="store_true", help="report images that do not decode and go on")
    p.add_argument("--resume", action="store_true",
                   help="go on with an interrupted run's maps (STORE.annotate/): its images are "
                        "not annotated again")
    p.add_argument("--shard-size", type=int, default=10000, metavar="N",
                   help="maps per shard of the work in STORE.annotate/ (default 10000): what an "
                        "interruption can lose")
    p.add_argument("-f", "--force", action="store_true", help="replace STORE if it exists")
    p.add_argument("--lmap", metavar="PATH", help="the lmap tool (default $LMAP_BIN, or on PATH)")
    p.add_argument("--progress", dest="progress", action="store_true", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = p.parse_args(argv)
    try:
        out = run(a.images, a.output, a.model, None if a.weights == "none" else a.weights,
                  a.input_size, a.resize, a.topk, a.batch_size, a.device, a.classes, a.workers,
                  a.mean, a.std, a.encoding, a.force, a.skip_bad, a.seed, a.lmap, a.progress,
                  a.threads, a.resume, a.shard_size)
    except AnnotateError as e:
        print("lmap.annotate: %s" % e, file=sys.stderr)
        return 1
    for path in out["skipped"]:
        print("lmap.annotate: skipped %s (does not decode)" % path, file=sys.stderr)
    if out["resumed"]:
        print("lmap.annotate: %d images were annotated by the interrupted run" % out["resumed"],
              file=sys.stderr)
    print("lmap.annotate: %d images in %.1f s (%.1f images/s), %d x %d maps of %d classes -> %s"
          % (out["images"], out["seconds"], out["images_per_second"], out["grid"][0],
             out["grid"][1], out["num_classes"], a.output), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
