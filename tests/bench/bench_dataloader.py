#!/usr/bin/python3
"""The trainer's own figure: images/s of a real PyTorch input pipeline with
hard labels, with lmap soft labels, and with the official ReLabel label path.

What it measures. A torch.utils.data.DataLoader (2 worker processes,
batch 256) over torchvision.datasets.ImageFolder on small JPEG images this
script makes itself (10 class folders, about 160x120, gradient plus noise,
ids = file stems such as n00000003_17), with the usual training transforms
(RandomResizedCrop 112, RandomHorizontalFlip, ToTensor, Normalize):

 (a) hard:     plain ImageFolder targets (torchvision's transforms);
 (b) lmap:     lmap.torch.SoftLabelDataset over ImageFolder with
               ComposeWithBox([RandomResizedCropWithBox, RandomHorizontalFlipWithBox,
               ToTensor, Normalize]): each worker sends the crop boxes of its
               whole batch to lmapd in one request (__getitems__) and gets
               [256, 1000] soft labels; box_format "relabel", so that it
               computes exactly the official targets;
 (c) official: the same images and boxes; in each worker, per sample, what
               the official ReLabel code does: torch.load of the image's .pt
               (float32 [2, 5, 15, 15], from a tmpfs copy under /dev/shm),
               scatter into a dense [1000, 15, 15] map, torchvision
               roi_align over the official box (i/H, j/W, (i+h)/H, (j+w)/W)
               * 15 - 0.5, softmax. Per sample in the workers is the cheapest
               CPU placement of these steps (the official loop runs them per
               batch of 256 in the main process, which costs more: FACTS.md).

Table 1: (a), (b), (c) in one trainer process, alternating in rounds (the
order rotates every round), each figure the median of its rounds, and its
fraction of (a) (cost = 1 - fraction). Table 2: (b) against lmapd with
--threads 1 and --threads 2, and (a) as the reference, with 1, 2, 4 and 8
concurrent trainer processes (each with its own DataLoader and 2 workers):
summed images/s and soft labels/s, lmapd's CPU per label; its one-trainer
rows for (a) and for (b) at --threads 2 are table 1's rounds.

How. Every trainer is a separate process (this script with --trainer),
started once and driven over a pipe. For each measurement it builds a new
DataLoader whose workers stamp every batch with [worker, start, end]
(CLOCK_MONOTONIC, shared by all processes), takes a first small batch
(8 samples) from each worker (start-up) and reports ready. When all trainers of the measurement are
ready they get "go"; the window starts 0.5 s later (the batches queued
while waiting are taken meanwhile) and lasts a fixed time; each trainer
consumes batches until every one of its workers delivered a batch that
ended after the window. The figure is the images made inside the window
(a batch counts in proportion to the part of its [start, end] inside),
summed over the trainers, divided by the window's length: no error of a
whole batch at either end, whatever the number of trainers. lmapd (two
instances, --threads 1 and 2) runs on 127.0.0.1 with an ephemeral port;
lmapd's CPU and the share of the machine used by processes not started
here (another job lowers every figure) are recorded for every window.
Speed is measured, never asserted.

The data: the label maps follow make_official_tar.py's model (objects,
confusable classes, smooth backgrounds), with scores rounded to float16
values, so that the f16 store holds them exactly; they are torch.save'd in
the release's layout (nXXXXXXXX/nXXXXXXXX_N.pt) under /dev/shm and imported
with `lmap import --encoding f16`. Before measuring, the soft labels are
checked: a batch of (b)'s DataLoader against the official steps (per sample
as (c) does them, and the batched get_labelmaps/get_relabel copied in
tests/oracle/test_oracle_relabel.py) on the .pt files, and a batch of (c)'s
DataLoader against lmapd's answer for the same boxes; any difference above
1e-4 fails the run, so it cannot measure garbage.

Exit 1 if a step fails, a trainer fails, lmapd answers an error (or logs
one) or the check fails. Every process started here (lmapd, trainers and
their workers: each in its own process group) is stopped by its PID in a
finally block; every wait is bounded.

    /usr/bin/python3 tests/bench/bench_dataloader.py [--quick] [--lmap BIN]
        [--lmapd BIN] [--library liblmap.so] [--dir DIR] [--json OUT]

Defaults: build/lmap, build/lmapd, build/client/liblmap.so of this tree
(or LMAP_BIN, LMAPD_BIN, LMAP_LIBRARY), --dir /tmp/lmap-bench/dataloader.
--quick: 512 images, 1 s windows, 2 rounds in table 1, 1 round of 1 and 2
trainers in table 2, under a minute on an idle machine; full: 2,560
images, 3 rounds of 3 s in table 1, 2 rounds of 2.5 s in table 2, about
3.5 minutes.
"""

import argparse
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"  # the trainers too

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
for _p in (os.path.join(ROOT, "client", "python"), os.path.join(ROOT, "tests", "oracle"), HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.utils.data  # noqa: E402
import torchvision  # noqa: E402
import torchvision.transforms as T  # noqa: E402
from torchvision.ops import roi_align  # noqa: E402

import lmap  # noqa: E402
import lmap.torch as lt  # noqa: E402

NUM_CLASSES = 1000
TOPK, GRID = 5, 15
FOLDERS = 10
CROP = 112
BATCH = 256
WORKERS = 2
PREFETCH = 2  # torch's default prefetch_factor
WARM_SIZE = 8  # the first batch of each worker (start-up)
LEAD = 0.5  # seconds from go to the window's start: queued batches are taken first
TOL = 1e-4
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
MODES = ("hard", "lmap", "official")

QUICK = {"images": 512, "rounds1": 2, "seconds1": 1.0, "rounds2": 1, "seconds2": 1.0,
         "procs": (1, 2)}
FULL = {"images": 2560, "rounds1": 3, "seconds1": 3.0, "rounds2": 2, "seconds2": 2.5,
        "procs": (1, 2, 4, 8)}


class BenchError(Exception):
    """A step failed: the message says which and why."""


def log(msg):
    print("[%6.1fs] %s" % (time.monotonic() - T_START, msg), file=sys.stderr, flush=True)


T_START = time.monotonic()


# ======================================================================
# Transforms, datasets and the official label steps (trainers and checks)
# ======================================================================

def plain_transform():
    """(a): torchvision's own transforms."""
    return T.Compose([T.RandomResizedCrop(CROP), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(MEAN, STD)])


def box_transform():
    """(b) and (c): the same draws and images, plus the CropBox."""
    return lt.ComposeWithBox([lt.RandomResizedCropWithBox(CROP), lt.RandomHorizontalFlipWithBox(),
                              T.ToTensor(), T.Normalize(MEAN, STD)])


def official_soft_label(topk, relabel):
    """The official ReLabel label steps for one sample: the map `topk`
    ([2, K, H, W], as torch.load gives it) scattered into a dense
    [1000, H, W] map, roi_align over the official tuple
    (i/H, j/W, h/H, w/W) turned into corners as the training loop does
    (float64, `coords[:, 2:] += coords[:, :2]`, then float32 * W - 0.5),
    softmax over the classes. Returns float32 [1000]."""
    dense = torch.zeros([NUM_CLASSES, topk.size(2), topk.size(3)])
    dense.scatter_(0, topk[1].long(), topk[0].float())
    coords = torch.tensor([relabel], dtype=torch.float64)
    coords[:, 2:] += coords[:, :2]
    rois = torch.cat([torch.zeros(1, 1), coords.float() * dense.size(2) - 0.5], 1)
    pooled = roi_align(dense[None], rois, output_size=(1, 1))
    return torch.softmax(pooled.view(1, -1), 1)[0]


def map_path(maps_root, image_path):
    """The .pt of an image: maps_root/<folder>/<stem>.pt (the release's layout)."""
    stem = os.path.splitext(os.path.basename(image_path))[0]
    return os.path.join(maps_root, os.path.basename(os.path.dirname(image_path)), stem + ".pt")


class OfficialLabelDataset(torch.utils.data.Dataset):
    """(c): items (img, soft label [1000], target[, CropBox, id]) from an
    ImageFolder with box_transform(), the soft label computed in the
    worker from the image's .pt by official_soft_label()."""

    def __init__(self, folder, maps_root, return_box=False):
        self.folder = folder
        self.paths = [map_path(maps_root, s[0]) for s in folder.samples]
        self.return_box = return_box

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, index):
        (img, box), target = self.folder[index]
        soft = official_soft_label(torch.load(self.paths[index]), box.relabel)
        if not self.return_box:
            return img, soft, target
        stem = os.path.splitext(os.path.basename(self.folder.samples[index][0]))[0]
        return img, soft, target, box, stem


def make_dataset(mode, root, maps_root, url, return_box=False):
    if mode == "hard":
        return torchvision.datasets.ImageFolder(root, transform=plain_transform())
    folder = torchvision.datasets.ImageFolder(root, transform=box_transform())
    if mode == "lmap":
        return lt.SoftLabelDataset(folder, url, box_format="relabel", return_box=return_box,
                                   return_id=return_box)
    if mode == "official":
        return OfficialLabelDataset(folder, maps_root, return_box=return_box)
    raise ValueError("unknown mode %r" % (mode,))


class Timed(torch.utils.data.Dataset):
    """Wraps a training dataset so that every batch comes with when and
    where it was made: the DataLoader gets (collated batch, [worker id,
    start, end]) with CLOCK_MONOTONIC times (the same clock in every
    process), start when the worker began the batch, end after collation.
    The wrapped dataset's __getitems__ (lmap's one request per batch) is
    used when it has one, as the DataLoader itself would."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitems__(self, indices):
        start = time.monotonic()
        if hasattr(self.ds, "__getitems__"):
            items = self.ds.__getitems__(indices)
        else:
            items = [self.ds[i] for i in indices]
        batch = torch.utils.data.default_collate(items)
        info = torch.utils.data.get_worker_info()
        stamp = torch.tensor([info.id if info else -1, start, time.monotonic()], dtype=torch.float64)
        return batch, stamp


def _collated(batch):
    """collate_fn for Timed: its __getitems__ has collated already."""
    return batch


class RandomBatches(torch.utils.data.Sampler):
    """Endless batches of random indices (with replacement: no epoch end
    inside a measurement): first `warm` batches of WARM_SIZE, then batches
    of `batch`. The small first ones start the workers (fork, first
    request) without making a whole batch each before the window."""

    def __init__(self, n, batch, seed, warm=0):
        super().__init__(None)
        self.n, self.batch, self.seed, self.warm = n, batch, seed, warm

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed)
        k = 0
        while True:
            size = WARM_SIZE if k < self.warm else self.batch
            yield torch.randint(self.n, (size,), generator=gen).tolist()
            k += 1


def make_loader(ds, batch=BATCH, seed=0, warm=0, timed=False):
    """The training DataLoader: WORKERS workers, default prefetch."""
    sampler = RandomBatches(len(ds), batch, seed, warm)
    if timed:
        ds = Timed(ds)
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=WORKERS,
                                       prefetch_factor=PREFETCH,
                                       collate_fn=_collated if timed else None)


def check_batch(mode, batch, n=BATCH):
    """Shapes of one training batch of n samples; raises BenchError if wrong."""
    imgs = batch[0]
    if tuple(imgs.shape) != (n, 3, CROP, CROP):
        raise BenchError("%s: a batch of images has shape %s" % (mode, tuple(imgs.shape)))
    if mode != "hard" and tuple(batch[1].shape) != (n, NUM_CLASSES):
        raise BenchError("%s: a batch of soft labels has shape %s" % (mode, tuple(batch[1].shape)))


# ======================================================================
# Trainer process (--trainer): JSON lines on a pipe
# ======================================================================

def trainer_main(cfg_json):
    """Serves measurement commands from the parent until EOF (or SIGTERM).

    {"cmd": "prepare", "mode", "url", "seed"} builds a new DataLoader,
    takes a small batch from each worker (start-up) and answers
    {"ready": true}; then
    {"cmd": "go", "end_at"} consumes batches until every worker has
    delivered one finished at or after end_at (so every batch made before
    then has arrived), and answers {"stamps": [[worker, start, end], ...]}
    for the batches received after go. Any failure answers {"error": text}
    and ends the process."""
    cfg = json.loads(cfg_json)
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed goes to the log, never into the protocol
    torch.set_num_threads(1)

    def say(obj):
        proto.write(json.dumps(obj) + "\n")

    say({"hello": os.getpid()})
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["cmd"] != "prepare":
                raise BenchError("unexpected command %r" % (cmd,))
            say(trainer_measure(cfg, cmd, say))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the run
        say({"error": "%s: %s" % (type(e).__name__, e)})
        raise
    return 0


def trainer_measure(cfg, cmd, say):
    mode = cmd["mode"]
    ds = make_dataset(mode, cfg["root"], cfg["maps"], cmd.get("url"))
    loader = make_loader(ds, seed=cmd["seed"], warm=WORKERS, timed=True)
    torch.manual_seed(cmd["seed"])
    it = iter(loader)
    try:
        for _ in range(WORKERS):  # worker start-up, one small batch each
            check_batch(mode, next(it)[0], WARM_SIZE)
        say({"ready": True})
        go = json.loads(sys.stdin.readline() or "{}")
        if go.get("cmd") != "go":
            raise BenchError("expected go, got %r" % (go,))
        end_at, give_up = go["end_at"], go["end_at"] + go["timeout"]
        stamps, pending = [], set(range(WORKERS))
        while pending:
            batch, stamp = next(it)
            check_batch(mode, batch)
            wid, start, end = stamp.tolist()
            stamps.append([int(wid), start, end])
            if end >= end_at:
                pending.discard(int(wid))
            if time.monotonic() > give_up:
                raise BenchError("no batch finished after the window within %.0f s" % go["timeout"])
        return {"stamps": stamps}
    finally:
        del it  # shuts the workers down
        if hasattr(ds, "close"):
            ds.close()


# ======================================================================
# Parent side: processes
# ======================================================================

def proc_alive(p):
    return p is not None and p.poll() is None


def stop_group(p, grace):
    """SIGTERM to the process group led by p (p.pid), SIGKILL after
    `grace` seconds; returns the exit code (None if it had to be killed)."""
    if p is None:
        return None
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        return p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(timeout=10)
    return None


class Lmapd:
    """One lmapd on 127.0.0.1:<ephemeral>, its own process group."""

    def __init__(self, binary, store, threads, log_path, resident=False):
        self.threads = threads
        self.log_path = log_path
        with open(log_path, "w") as f:
            self.p = subprocess.Popen([binary, "--store", store, "--listen", "127.0.0.1:0",
                                       "--threads", str(threads), "--grace", "5",
                                       "--max-per-ip", "0"] + (["--resident"] if resident else []),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f,
                                      start_new_session=True)
        try:
            self.port = self._wait_port(20.0)
            if resident:
                self._wait_event("resident_ready", 60.0)
        except BaseException:
            self.stop()  # not yet in the caller's list of processes to stop
            raise
        self.url = "http://127.0.0.1:%d" % self.port

    def _wait_port(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for ev in self.events():
                if ev.get("event") == "listening":
                    return int(ev["port"])
            if not proc_alive(self.p):
                break
            time.sleep(0.05)
        raise BenchError("lmapd --threads %d did not start: %s" % (self.threads, self.log_tail()))

    def _wait_event(self, name, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if any(ev.get("event") == name for ev in self.events()):
                return
            if not proc_alive(self.p):
                break
            time.sleep(0.05)
        raise BenchError("lmapd --threads %d logged no %s: %s" % (self.threads, name, self.log_tail()))

    def events(self):
        out = []
        with open(self.log_path) as f:
            for line in f:
                if line.endswith("\n") and line.startswith("{"):
                    out.append(json.loads(line))
        return out

    def log_tail(self):
        with open(self.log_path) as f:
            return f.read()[-1500:]

    def errors(self):
        """Error answers lmapd logged (it logs only those by default)."""
        return [ev for ev in self.events() if ev.get("event") == "request"]

    def cpu_s(self):
        with open("/proc/%d/stat" % self.p.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        rc = stop_group(self.p, 10)
        self.p = None
        return rc


class Trainer:
    """A trainer process (this script with --trainer), its own process
    group (with its DataLoader workers), driven over stdin/stdout."""

    def __init__(self, index, cfg, log_path):
        self.index = index
        self.log_path = log_path
        self.buf = b""
        with open(log_path, "wb") as f:
            self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--trainer",
                                       json.dumps(cfg)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=f,
                                      bufsize=0, start_new_session=True)

    def send(self, obj):
        try:
            self.p.stdin.write((json.dumps(obj) + "\n").encode())
        except BrokenPipeError:
            raise BenchError("trainer %d exited: %s" % (self.index, self.log_tail())) from None

    def recv(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError("trainer %d: no answer within %.0f s: %s"
                                 % (self.index, timeout, self.log_tail()))
            ready, _, _ = select.select([self.p.stdout], [], [], left)
            if ready:
                chunk = os.read(self.p.stdout.fileno(), 1 << 16)
                if not chunk:
                    raise BenchError("trainer %d exited (%s): %s"
                                     % (self.index, self.p.poll(), self.log_tail()))
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        msg = json.loads(line)
        if "error" in msg:
            raise BenchError("trainer %d: %s" % (self.index, msg["error"]))
        return msg

    def log_tail(self):
        with open(self.log_path, "rb") as f:
            return f.read()[-1500:].decode("utf-8", "replace")

    def stop(self):
        """SIGTERM to the trainer and its workers (idle or not: no need to
        wait for a measurement to end), SIGKILL if still there after 5 s."""
        if self.p is None:
            return
        stop_group(self.p, 5)
        self.p.stdin.close()
        self.p.stdout.close()
        self.p = None


# ======================================================================
# Parent side: data
# ======================================================================

def folder_names():
    return ["n%08d" % c for c in range(FOLDERS)]


def make_images(root, n, seed):
    """n JPEGs of about 160x120 (gradient plus noise) in FOLDERS class
    folders, named <folder>_<i>.JPEG. Returns the ids in the order made."""
    from PIL import Image
    rng = np.random.RandomState(seed)
    ids, names = [], folder_names()
    for name in names:
        os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(n):
        name = names[i % FOLDERS]
        h, w = rng.randint(108, 133), rng.randint(144, 177)
        corners = rng.uniform(0, 255, size=(2, 2, 3))
        yy, xx = np.linspace(0, 1, h)[:, None, None], np.linspace(0, 1, w)[None, :, None]
        grad = (corners[0, 0] * (1 - yy) * (1 - xx) + corners[0, 1] * (1 - yy) * xx
                + corners[1, 0] * yy * (1 - xx) + corners[1, 1] * yy * xx)
        img = np.clip(grad + rng.normal(0, 24, size=(h, w, 3)), 0, 255).astype(np.uint8)
        ident = "%s_%d" % (name, i)
        Image.fromarray(img).save(os.path.join(root, name, ident + ".JPEG"), quality=90)
        ids.append(ident)
    return ids


def make_maps(maps_root, ids, seed):
    """One official-format .pt per id (float32 [2, 5, 15, 15], zip
    serialization) at maps_root/<folder>/<id>.pt, from make_official_tar's
    model, scores rounded to float16 values (exact in an f16 store)."""
    import make_official_tar as mot
    bs = mot.batch_size(TOPK, GRID, GRID)
    for b0 in range(0, len(ids), bs):
        rng = np.random.Generator(np.random.PCG64([seed, b0 // bs]))
        scores, classes, _ = mot.make_batch(rng, bs, NUM_CLASSES, TOPK, GRID, GRID)
        scores = scores.astype(np.float16).astype(np.float32)
        maps = np.stack([scores, classes.astype(np.float32)], axis=1)
        for k, ident in enumerate(ids[b0:b0 + bs]):
            d = os.path.join(maps_root, ident.split("_")[0])
            os.makedirs(d, exist_ok=True)
            torch.save(torch.from_numpy(maps[k].copy()), os.path.join(d, ident + ".pt"))


def run_tool(argv, timeout):
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError("%s: no result within %d s" % (" ".join(argv), timeout)) from None
    if p.returncode != 0:
        raise BenchError("%s: exit %d: %s" % (" ".join(argv), p.returncode,
                                              p.stderr.decode("utf-8", "replace")[-1500:]))
    return p.stdout.decode("utf-8", "replace")


def build_data(a, cfg, work, shm):
    """Images in work/images, .pt maps in shm/maps, the store work/store.lmap."""
    root, maps, store = os.path.join(work, "images"), os.path.join(shm, "maps"), \
        os.path.join(work, "store.lmap")
    shutil.rmtree(root, ignore_errors=True)
    t = time.monotonic()
    ids = make_images(root, cfg["images"], seed=5)
    log("made %d JPEGs in %.1f s" % (len(ids), time.monotonic() - t))
    t = time.monotonic()
    make_maps(maps, ids, seed=5)
    log("wrote %d .pt maps to %s in %.1f s" % (len(ids), maps, time.monotonic() - t))
    t = time.monotonic()
    run_tool([a.lmap, "import", maps, "-o", store, "--encoding", "f16", "--level", "1", "--force",
              "--no-progress"], timeout=300)
    stored = run_tool([a.lmap, "ids", store], timeout=60).split()
    if sorted(stored) != sorted(ids):
        raise BenchError("the store holds %d ids, not the %d image stems" % (len(stored), len(ids)))
    log("lmap import: %d records in %.1f s" % (len(stored), time.monotonic() - t))
    return root, maps, store


# ======================================================================
# Parent side: the check that the soft labels are real
# ======================================================================

def first_batch(ds, batch, seed):
    """One batch of a fresh training DataLoader (its workers stop after)."""
    torch.manual_seed(seed)
    return next(iter(make_loader(ds, batch=batch, seed=seed)))


def check_labels(root, maps, url):
    """A batch of (b)'s DataLoader against the official steps on the .pt
    files, and a batch of (c)'s against lmapd for the same boxes. Returns
    the max differences; raises BenchError above TOL."""
    from test_oracle_relabel import official_get_labelmaps, official_get_relabel
    n = 64
    res = {}
    # (b) against the official steps.
    ds = make_dataset("lmap", root, maps, url, return_box=True)
    _, soft, _, box, ids = first_batch(ds, n, seed=11)
    ds.close()
    folder = ds.dataset
    by_id = {os.path.splitext(os.path.basename(p))[0]: p for p, _ in folder.samples}
    topk = [torch.load(map_path(maps, by_id[i])) for i in ids]
    rel = lt.box_tensor(box, "relabel")
    per_sample = torch.stack([official_soft_label(t, tuple(r.tolist())) for t, r in zip(topk, rel)])
    coords = rel.clone()
    coords[:, 2:] += coords[:, :2]
    batched = official_get_relabel(official_get_labelmaps(topk, n), coords, n)
    res["lmap_vs_official_per_sample"] = float((soft - per_sample).abs().max())
    res["lmap_vs_official_batched"] = float((soft - batched).abs().max())
    res["mean_top_probability"] = float(soft.max(1).values.mean())
    res["max_row_sum_error"] = float((soft.sum(1) - 1).abs().max())
    # (c) against lmapd.
    ds = make_dataset("official", root, maps, url, return_box=True)
    _, soft_c, _, box_c, ids_c = first_batch(ds, n, seed=12)
    with lmap.Client(url) as c:
        ref = torch.from_numpy(c.labels(ids_c, lt.box_tensor(box_c, "relabel").numpy(),
                                        box_format="relabel"))
    res["official_loader_vs_lmapd"] = float((soft_c - ref).abs().max())
    bad = {k: v for k, v in res.items() if k.endswith(("official_per_sample", "official_batched",
                                                       "vs_lmapd")) and not v <= TOL}
    if bad or not res["max_row_sum_error"] <= 1e-3 or not res["mean_top_probability"] > 0.01:
        raise BenchError("soft labels are not the official ones: %s" % json.dumps(res))
    return res


# ======================================================================
# Parent side: measurements
# ======================================================================

def machine_busy():
    """(busy ticks of all cores: user, nice, system, irq, softirq; steal ticks)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v[0:3]) + sum(v[5:7]), v[7] if len(v) > 7 else 0


def group_ticks(pgids):
    """CPU ticks of every process in the process groups `pgids` (the
    trainers with their workers, the lmapds), reaped children included."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) in pgids:
            total += sum(int(x) for x in fields[11:15])
    return total


def cpu_mark(pgids):
    busy, steal = machine_busy()
    return {"t": time.monotonic(), "busy": busy, "steal": steal, "ours": group_ticks(pgids),
            "self": sum(os.times()[:2])}


def cpu_shares(mark, pgids):
    """The machine's busy share, and the share used by processes other than
    ours (another job's load lowers every figure), and steal, in % of all
    cores since `mark`. /proc/stat counts sampled ticks: good to a few %."""
    now = cpu_mark(pgids)
    hz, ncpu = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
    cap = max(1e-9, (now["t"] - mark["t"]) * ncpu)
    busy = (now["busy"] - mark["busy"]) / hz
    ours = (now["ours"] - mark["ours"]) / hz + (now["self"] - mark["self"])
    return {"machine_busy_pct": 100.0 * busy / cap, "our_cpu_s": ours,
            "foreign_cpu_pct": 100.0 * max(0.0, busy - ours) / cap,
            "steal_pct": 100.0 * (now["steal"] - mark["steal"]) / hz / cap}


def window_images(stamps, start, end):
    """Images made in [start, end] by batches stamped [worker, s, e]: a
    batch's BATCH images count in proportion to the part of [s, e] inside
    the window (a worker makes its images one after another)."""
    total = 0.0
    for _, s, e in stamps:
        overlap = min(e, end) - max(s, start)
        if overlap > 0:
            total += BATCH * overlap / max(e - s, 1e-9)
    return total


def measure(trainers, mode, server, seconds, seed, timeout, pgids):
    """One measurement with all `trainers` at once: after every one is
    ready, all get go; the window starts LEAD seconds later (the batches
    queued while waiting are taken meanwhile) and lasts `seconds`.
    Returns its record: summed images/s made inside the window; the CPU
    time of every process started here (trainers, workers, lmapd) per image
    made in it; lmapd's CPU per label over all the batches made after go
    (its work comes in one request per batch, too coarse for the window)."""
    url = server.url if server else None
    for k, tr in enumerate(trainers):
        tr.send({"cmd": "prepare", "mode": mode, "url": url, "seed": seed * 100 + k})
    t = time.monotonic()
    for tr in trainers:
        tr.recv(timeout)
    prepare_s = time.monotonic() - t
    server_cpu0 = server.cpu_s() if server else 0.0
    go = time.monotonic()
    start, end = go + LEAD, go + LEAD + seconds
    for tr in trainers:
        tr.send({"cmd": "go", "end_at": end, "timeout": timeout})
    time.sleep(max(0.0, start - time.monotonic()))
    mark = cpu_mark(pgids)
    time.sleep(max(0.0, end - time.monotonic()))
    shares = cpu_shares(mark, pgids)
    results = [tr.recv(timeout) for tr in trainers]
    server_cpu = (server.cpu_s() - server_cpu0) if server else 0.0
    per_trainer = [window_images(r["stamps"], start, end) / seconds for r in results]
    rate = sum(per_trainer)
    served = sum(BATCH for r in results for _, _, e in r["stamps"] if e > go)
    return dict({"mode": mode, "trainers": len(trainers),
                 "lmapd_threads": server.threads if server else None,
                 "images_per_s": rate, "labels_per_s": rate if mode != "hard" else 0.0,
                 "per_trainer_images_per_s": per_trainer, "window_s": seconds,
                 "batches_received": [len(r["stamps"]) for r in results], "prepare_s": prepare_s,
                 "tail_s": time.monotonic() - end,
                 "cpu_ms_per_image": 1e3 * shares["our_cpu_s"] / max(rate * seconds, 1e-9),
                 "lmapd_cpu_s": server_cpu,
                 "lmapd_cpu_us_per_label": server_cpu / served * 1e6 if server else None}, **shares)


def rotated(seq, r):
    k = r % len(seq)
    return list(seq[k:]) + list(seq[:k])


def table1(trainers, server, cfg, timeout, pgids):
    raw = []
    for r in range(cfg["rounds1"]):
        for mode in rotated(MODES, r):
            m = measure(trainers[:1], mode, server if mode == "lmap" else None, cfg["seconds1"],
                        seed=len(raw) + 1, timeout=timeout, pgids=pgids)
            m["round"] = r + 1
            raw.append(m)
            log("table 1 round %d %-8s %7.0f images/s" % (r + 1, mode, m["images_per_s"]))
    out = {}
    for mode in MODES:
        ms = [x for x in raw if x["mode"] == mode]
        out[mode] = {"images_per_s": statistics.median(x["images_per_s"] for x in ms),
                     "cpu_ms_per_image": statistics.median(x["cpu_ms_per_image"] for x in ms),
                     "foreign_cpu_pct_max": max(x["foreign_cpu_pct"] for x in ms)}
    for mode in MODES:
        f = out[mode]["images_per_s"] / out["hard"]["images_per_s"]
        out[mode].update(fraction_of_hard=f, cost=1.0 - f, cpu_fraction_of_hard=(
            out["hard"]["cpu_ms_per_image"] / out[mode]["cpu_ms_per_image"]))
    return out, raw


def same_config(x, mode, threads, n):
    return x["mode"] == mode and x["lmapd_threads"] == threads and x["trainers"] == n


def table2(trainers, servers, cfg, timeout, pgids, raw1):
    """(a) and (b) at each lmapd thread count with 1..N trainers. A
    configuration table 1 measured already (one trainer: hard, lmap at the
    --threads 2 server) is not measured again: its table 1 rounds are used."""
    configs = [("hard", None)] + [("lmap", s) for s in servers]
    raw = []
    for r in range(cfg["rounds2"]):
        for n in cfg["procs"]:
            for mode, server in rotated(configs, r):
                threads = server.threads if server else None
                if any(same_config(x, mode, threads, n) for x in raw1):
                    continue
                m = measure(trainers[:n], mode, server, cfg["seconds2"], seed=1000 + len(raw),
                            timeout=timeout, pgids=pgids)
                m["round"] = r + 1
                raw.append(m)
                log("table 2 round %d %d trainer(s) %-4s%s %7.0f images/s" % (
                    r + 1, n, mode, " t%d" % threads if server else "   ", m["images_per_s"]))
    rows = []
    for mode, server in configs:
        threads = server.threads if server else None
        for n in cfg["procs"]:
            ms = [x for x in raw + raw1 if same_config(x, mode, threads, n)]
            cpu = [x["lmapd_cpu_us_per_label"] for x in ms if x["lmapd_cpu_us_per_label"] is not None]
            rows.append({"mode": mode, "lmapd_threads": threads, "trainers": n, "rounds": len(ms),
                         "from_table1": any(x in raw1 for x in ms),
                         "images_per_s": statistics.median(x["images_per_s"] for x in ms),
                         "labels_per_s": statistics.median(x["labels_per_s"] for x in ms),
                         "cpu_ms_per_image": statistics.median(x["cpu_ms_per_image"] for x in ms),
                         "lmapd_cpu_us_per_label": statistics.median(cpu) if cpu else None,
                         "foreign_cpu_pct_max": max(x["foreign_cpu_pct"] for x in ms)})
    hard = {row["trainers"]: row["images_per_s"] for row in rows if row["mode"] == "hard"}
    for row in rows:
        row["fraction_of_hard"] = row["images_per_s"] / hard[row["trainers"]]
    return rows, raw


# ======================================================================
# Report
# ======================================================================

LABELS = {"hard": "(a) hard labels (ImageFolder target)",
          "lmap": "(b) lmap soft labels (lmap.torch, lmapd)",
          "official": "(c) official .pt path (load, scatter, roi_align)"}


def print_report(doc):
    print_table1(doc)
    print_table2(doc)
    v = doc["validation"]
    print()
    print("Soft labels checked (64 samples each): lmap vs official per-sample %.2g, vs official "
          "batched %.2g; official loader vs lmapd %.2g (limit %g)" % (
              v["lmap_vs_official_per_sample"], v["lmap_vs_official_batched"],
              v["official_loader_vs_lmapd"], TOL))
    print("CPU ms/img: CPU time of every process started here (trainers, workers, lmapd) per image "
          "made; 'by CPU': (a)'s CPU per image over the row's, the fraction of (a) a CPU-bound "
          "trainer would get (less disturbed by other jobs than images/s, not immune).")
    raw = doc["raw"]["table1"] + doc["raw"]["table2"]
    worst = max(x["foreign_cpu_pct"] for x in raw)
    print("other%%: the largest share of the machine's %d cores used by processes not started "
          "here, over a row's rounds%s" % (os.cpu_count() or 0, "" if worst < 10 else
                                           " -- up to %.0f%%: another job shared the cores, "
                                           "images/s are low and noisy" % worst))
    print("total %.0f s" % doc["seconds_total"])


def print_table1(doc):
    print()
    print("Table 1: one trainer, DataLoader(2 workers, batch %d), JPEG ~160x120 -> %d, %d rounds "
          "(median)" % (BATCH, CROP, doc["config"]["rounds1"]))
    print("  %-50s %8s %7s %6s %10s %7s %6s  %s" % ("", "images/s", "of (a)", "cost", "CPU ms/img",
                                                   "by CPU", "other%", "rounds (images/s)"))
    for mode in MODES:
        row = doc["table1"][mode]
        rounds = " ".join("%.0f" % x["images_per_s"] for x in doc["raw"]["table1"] if x["mode"] == mode)
        print("  %-50s %8.0f %6.1f%% %5.1f%% %10.3f %6.1f%% %6.0f  %s" % (
            LABELS[mode], row["images_per_s"], 100 * row["fraction_of_hard"], 100 * row["cost"],
            row["cpu_ms_per_image"], 100 * row["cpu_fraction_of_hard"], row["foreign_cpu_pct_max"],
            rounds))


def print_table2(doc):
    print()
    print("Table 2: N concurrent trainers (each its own DataLoader, 2 workers), summed, "
          "%d round(s) (median; * = table 1's rounds)" % doc["config"]["rounds2"])
    print("  %-28s %8s %9s %9s %7s %10s %12s %6s" % ("", "trainers", "images/s", "labels/s", "of (a)",
                                                    "CPU ms/img", "lmapd us/lbl", "other%"))
    for row in doc["table2"]:
        name = "(a) hard" if row["mode"] == "hard" else "(b) lmap, lmapd --threads %d" % row["lmapd_threads"]
        cpu = "%.1f" % row["lmapd_cpu_us_per_label"] if row["lmapd_cpu_us_per_label"] is not None else "-"
        print("  %-28s %7d%s %9.0f %9.0f %6.1f%% %10.3f %12s %6.0f" % (
            name, row["trainers"], "*" if row["from_table1"] else " ", row["images_per_s"],
            row["labels_per_s"], 100 * row["fraction_of_hard"], row["cpu_ms_per_image"], cpu,
            row["foreign_cpu_pct_max"]))


# ======================================================================
# main
# ======================================================================

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small and short: under a minute")
    ap.add_argument("--lmap", default=os.environ.get("LMAP_BIN", os.path.join(ROOT, "build", "lmap")))
    ap.add_argument("--lmapd", default=os.environ.get("LMAPD_BIN", os.path.join(ROOT, "build", "lmapd")))
    ap.add_argument("--library", default=os.environ.get("LMAP_LIBRARY",
                                                        os.path.join(ROOT, "build", "client", "liblmap.so")))
    ap.add_argument("--dir", default="/tmp/lmap-bench/dataloader", help="work directory")
    ap.add_argument("--json", help="write every figure and raw measurement here")
    ap.add_argument("--resident", action="store_true",
                    help="run lmapd --resident (every map decoded in memory)")
    ap.add_argument("--trainer", help=argparse.SUPPRESS)
    a = ap.parse_args()
    for path in (a.lmap, a.lmapd):
        if not os.access(path, os.X_OK):
            ap.error("%s is not an executable (build first, or pass --lmap/--lmapd)" % path)
    if not os.path.isfile(a.library):
        ap.error("%s not found (pass --library)" % a.library)
    return a


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)  # runs the finally blocks


def run(a, cfg, work, shm, procs):
    """Everything between setup and cleanup; `procs` collects what to stop."""
    root, maps, store = build_data(a, cfg, work, shm)
    servers = []
    for threads in (1, 2):
        s = Lmapd(a.lmapd, store, threads, os.path.join(work, "lmapd-t%d.log" % threads),
                  resident=a.resident)
        procs.append(s)
        servers.append(s)
        log("lmapd --threads %d on %s (pid %d)" % (threads, s.url, s.p.pid))
    validation = check_labels(root, maps, servers[1].url)
    log("soft labels checked: %s" % json.dumps({k: float("%.3g" % v) for k, v in validation.items()}))

    tcfg = {"root": root, "maps": maps}
    trainers = []
    for k in range(max(cfg["procs"])):
        tr = Trainer(k, tcfg, os.path.join(work, "trainer-%d.log" % k))
        procs.append(tr)
        trainers.append(tr)
    for tr in trainers:
        tr.recv(120)
    log("%d trainer processes up" % len(trainers))
    timeout = 120 + 30 * len(trainers)
    pgids = {p.p.pid for p in procs}
    t1, raw1 = table1(trainers, servers[1], cfg, timeout, pgids)
    t2, raw2 = table2(trainers, servers, cfg, timeout, pgids, raw1)
    for s in servers:
        errs = s.errors()
        if errs:
            raise BenchError("lmapd --threads %d logged %d error answers, first: %s"
                             % (s.threads, len(errs), json.dumps(errs[0])))
    return {"table1": t1, "table2": t2, "validation": validation,
            "raw": {"table1": raw1, "table2": raw2}}


def main():
    if "--trainer" in sys.argv:
        return trainer_main(sys.argv[sys.argv.index("--trainer") + 1])
    a = parse_args()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    os.environ["LMAP_LIBRARY"] = os.path.abspath(a.library)
    cfg = dict(QUICK if a.quick else FULL)
    work = os.path.abspath(a.dir)
    os.makedirs(work, exist_ok=True)
    shm = "/dev/shm/lmap-bench-dataloader-%d" % os.getpid()
    torch.set_num_threads(1)
    log("mode %s, work dir %s, .pt maps in %s" % ("quick" if a.quick else "full", work, shm))
    procs = []
    t0 = time.monotonic()
    try:
        doc = run(a, cfg, work, shm, procs)
    except BenchError as e:
        print("bench_dataloader: FAILED: %s" % e, file=sys.stderr)
        return 1
    finally:
        for p in reversed(procs):
            rc = p.stop()
            if isinstance(p, Lmapd) and rc != 0:
                log("note: lmapd --threads %d stopped with %r" % (p.threads, rc))
        shutil.rmtree(shm, ignore_errors=True)
    doc.update({
        "tool": "bench_dataloader", "mode": "quick" if a.quick else "full",
        "config": dict(cfg, procs=list(cfg["procs"]), batch=BATCH, workers=WORKERS,
                       prefetch_factor=PREFETCH, crop=CROP, folders=FOLDERS, grid=GRID, topk=TOPK,
                       box_format="relabel", store_encoding="f16", lmapd_resident=a.resident),
        "seconds_total": time.monotonic() - t0, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "loadavg_after": open("/proc/loadavg").read().split()[:3],
                    "kernel": platform.release()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__}})
    print_report(doc)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json + ".tmp", "w") as f:
            json.dump(doc, f, separators=(",", ":"))  # one line: fits a JSON-lines record
            f.write("\n")
        os.replace(a.json + ".tmp", a.json)
        log("wrote %s" % a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
