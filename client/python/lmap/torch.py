"""PyTorch helpers: crop transforms that record the crop box, and a Dataset
wrapper that fetches the soft labels of a whole batch in one request.

Why: ReLabel-style training pools each sample's dense label map over the
sample's random crop. The transforms here behave exactly like torchvision's
(same random draws, same output image) and also return a CropBox, the region
of the original image the output shows; SoftLabelDataset sends the boxes of a
batch to lmapd in one request and returns soft labels next to the images.

Invariants:
- A CropBox is always expressed in the original (untransformed) image:
  x0, y0, x1, y1 are fractions of its width and height, `flip` says whether
  the output is mirrored left-right. Crops and flips compose in any order
  (a crop of a flipped image is mapped back to original coordinates).
- The official ReLabel tuple (top, left, height, width) = (i/H, j/W, h/H, w/W)
  is the exact value the official RandomResizedCropWithCoords computes
  whenever the crop is taken from the original image; after other recorded
  geometry it is derived from the xyxy box (y0, x0, y1 - y0, x1 - x0).
- A flip never changes the box: lmapd mirrors the output grid of a flipped
  crop instead (a 1x1 target is unchanged), see docs/POOLING.md.
- SoftLabelDataset never pickles or shares a Client: each process (the main
  one, each DataLoader worker) creates its own on first use.

torch and torchvision are imported here, so `import lmap` alone does not need them.
"""

import os
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as nnf
import torch.utils.data
import torchvision.transforms as T
import torchvision.transforms.functional as F

from .client import Client

__all__ = ["CropBox", "RandomResizedCropWithBox", "RandomHorizontalFlipWithBox", "ComposeWithBox",
           "SoftLabelDataset", "box_tensor", "soft_cross_entropy"]


class CropBox(NamedTuple):
    """The region of the original image a transformed sample shows.

    x0, y0, x1, y1: fractions of the original width and height (xyxy);
    flip: the output is mirrored left-right;
    top, left, height, width: the official ReLabel tuple (i/H, j/W, h/H, w/W).

    A NamedTuple of numbers, so torch's default_collate turns a batch of
    them into a CropBox of [B] tensors (float64, flip bool).
    """

    x0: float
    y0: float
    x1: float
    y1: float
    flip: bool
    top: float
    left: float
    height: float
    width: float

    @staticmethod
    def full():
        """The whole image, not flipped."""
        return CropBox(0.0, 0.0, 1.0, 1.0, False, 0.0, 0.0, 1.0, 1.0)

    @property
    def xyxy(self):
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def relabel(self):
        """The official (i/H, j/W, h/H, w/W) tuple."""
        return (self.top, self.left, self.height, self.width)

    def box(self, box_format="xyxy"):
        """The four numbers lmap reads for `box_format`."""
        if box_format == "xyxy":
            return self.xyxy
        if box_format == "relabel":
            return self.relabel
        raise ValueError("box_format must be 'xyxy' or 'relabel', not %r" % (box_format,))

    def is_identity(self):
        return (self.x0, self.y0, self.x1, self.y1, bool(self.flip)) == (0.0, 0.0, 1.0, 1.0, False)


def box_tensor(box, box_format="xyxy"):
    """A collated CropBox (fields [B] tensors) -> float64 tensor [B, 4] of
    the numbers lmap reads for `box_format`."""
    return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in box.box(box_format)], 1)


def _crop(outer, i, j, h, w, img_h, img_w):
    """The CropBox of rows i..i+h, columns j..j+w of an img_h x img_w image
    that itself shows `outer` (None: the original image)."""
    if outer is None or outer.is_identity():
        # Exactly the official numbers: integer ratios, no rounding chain.
        return CropBox(j / img_w, i / img_h, (j + w) / img_w, (i + h) / img_h, False,
                       i / img_h, j / img_w, h / img_h, w / img_w)
    bw, bh = outer.x1 - outer.x0, outer.y1 - outer.y0
    a, c = j / img_w, (j + w) / img_w
    if outer.flip:  # column u of the image shows original x = x1 - u * bw
        x0, x1 = outer.x1 - c * bw, outer.x1 - a * bw
    else:
        x0, x1 = outer.x0 + a * bw, outer.x0 + c * bw
    y0, y1 = outer.y0 + i / img_h * bh, outer.y0 + (i + h) / img_h * bh
    x0, y0 = min(max(x0, 0.0), 1.0), min(max(y0, 0.0), 1.0)
    x1, y1 = min(max(x1, x0), 1.0), min(max(y1, y0), 1.0)
    return CropBox(x0, y0, x1, y1, bool(outer.flip), y0, x0, y1 - y0, x1 - x0)


class RandomResizedCropWithBox(T.RandomResizedCrop):
    """torchvision's RandomResizedCrop (same arguments, same random draws,
    same output image) that also returns the CropBox of the crop:
    `img, box = t(img)`. Inside ComposeWithBox the box is composed with
    the crops and flips before it."""

    def forward(self, img):
        return self.with_box(img, None)

    def with_box(self, img, box):
        i, j, h, w = self.get_params(img, self.scale, self.ratio)
        _, img_h, img_w = F.get_dimensions(img)
        out = F.resized_crop(img, i, j, h, w, self.size, self.interpolation,
                             antialias=self.antialias)
        return out, _crop(box, i, j, h, w, img_h, img_w)


class RandomHorizontalFlipWithBox(T.RandomHorizontalFlip):
    """torchvision's RandomHorizontalFlip that records the flip:
    `img, box = t(img)` (box: the whole image, flip True or False)."""

    def forward(self, img):
        return self.with_box(img, None)

    def with_box(self, img, box):
        if box is None:
            box = CropBox.full()
        if torch.rand(1) < self.p:
            return F.hflip(img), box._replace(flip=not box.flip)
        return img, box


# torchvision transforms that move or mirror the visible region in a way a
# CropBox could record: refused inside ComposeWithBox (use the WithBox
# variants), since the soft label would silently pool the wrong region.
_UNRECORDED = tuple(getattr(T, n) for n in (
    "RandomResizedCrop", "RandomCrop", "CenterCrop", "FiveCrop", "TenCrop", "Pad",
    "RandomHorizontalFlip", "RandomVerticalFlip") if hasattr(T, n))


def _check_recordable(t, where, nested=False):
    if isinstance(t, _UNRECORDED) and not hasattr(t, "with_box"):
        raise TypeError("%s: %s changes the image region without recording it in the CropBox; "
                        "use lmap.torch.RandomResizedCropWithBox / RandomHorizontalFlipWithBox "
                        "(or apply it before ComposeWithBox)" % (where, type(t).__name__))
    if nested and hasattr(t, "with_box"):
        raise TypeError("%s: %s is inside %s, which cannot pass the CropBox on; put it directly "
                        "in ComposeWithBox's list" % (where, type(t).__name__, nested))
    for sub in getattr(t, "transforms", None) or []:
        _check_recordable(sub, where, type(t).__name__)


class ComposeWithBox(T.Compose):
    """Like torchvision.transforms.Compose, but returns (img, CropBox):
    box-recording transforms (those with a `with_box` method) update the
    box, every other transform is applied to the image as usual
    (ToTensor, Normalize, ColorJitter, ...). Resize keeps the box (it
    scales the whole image). Crops and flips that cannot record the box are
    refused at construction. With no crop at all the box is the whole image.
    """

    def __init__(self, transforms):
        for k, t in enumerate(transforms):
            _check_recordable(t, "ComposeWithBox transform %d" % k)
        super().__init__(transforms)

    def __call__(self, img):
        box = None
        for t in self.transforms:
            if hasattr(t, "with_box"):
                img, box = t.with_box(img, box)
            else:
                img = t(img)
        return img, (box if box is not None else CropBox.full())


def soft_cross_entropy(logits, soft_targets):
    """Mean over the batch of -sum_c q_c log softmax(logits)_c: the loss of
    ReLabel training for targets [B, C] (probabilities)."""
    return torch.sum(-soft_targets * nnf.log_softmax(logits, dim=1), dim=1).mean()


class SoftLabelDataset(torch.utils.data.Dataset):
    """Wraps a map-style dataset whose samples are ((img, CropBox), target, ...)
    (e.g. torchvision.datasets.ImageFolder with transform=ComposeWithBox([...]))
    and adds each sample's soft label from lmapd.

    Items: (img, soft_label, target, ...) where soft_label is a float32 tensor
    [C] (output_size 1) or [C, G, G]; then the CropBox if return_box, then
    the image id if return_id. default_collate batches them ([B, C] labels,
    a CropBox of [B] tensors, a list of ids).

    ids: the image id of each index: None (the file name without extension
    of dataset.samples[i][0], as ImageFolder stores it: 'n01440764_10026'),
    a sequence, or a function index -> id.
    output_size, box_format ("xyxy" or "relabel"), softmax: as Client.labels.
    **client_options: passed to lmap.Client (token, token_file, timeout, ...).

    The DataLoader (torch >= 1.13) calls __getitems__ with a whole batch's
    indices when batch_size is set: the batch's labels come in one request.
    Each process creates its own Client when it first needs one; a pickled
    dataset (spawn start method) carries no Client.
    """

    def __init__(self, dataset, urls, ids=None, output_size=1, box_format="xyxy", softmax=True,
                 return_box=False, return_id=False, **client_options):
        if box_format not in ("xyxy", "relabel"):
            raise ValueError("box_format must be 'xyxy' or 'relabel', not %r" % (box_format,))
        if int(output_size) != output_size or output_size < 1:
            raise ValueError("output_size must be an integer >= 1, not %r" % (output_size,))
        self.dataset = dataset
        self.urls = urls
        self.output_size = int(output_size)
        self.box_format = box_format
        self.softmax = bool(softmax)
        self.return_box = bool(return_box)
        self.return_id = bool(return_id)
        self.client_options = dict(client_options)
        if ids is None:
            samples = getattr(dataset, "samples", None)
            if samples is None:
                raise TypeError("%s has no .samples: pass ids= (a sequence or a function index -> id)"
                                % type(dataset).__name__)
            self._ids = [os.path.splitext(os.path.basename(s[0]))[0] for s in samples]
        elif callable(ids):
            self._ids = ids
        else:
            self._ids = list(ids)
            if len(self._ids) != len(dataset):
                raise ValueError("ids has %d entries for a dataset of %d" % (len(self._ids), len(dataset)))
        self._client = None
        self._client_pid = None

    def __len__(self):
        return len(self.dataset)

    def image_id(self, index):
        """The image id of `index`."""
        return self._ids(index) if callable(self._ids) else self._ids[index]

    def client(self):
        """This process's Client (created on first use, again after fork)."""
        pid = os.getpid()
        if self._client is None or self._client_pid != pid:
            # A Client inherited across fork is dropped, never used
            # (Client.close() in another process only forgets its handle).
            self._client = Client(self.urls, **self.client_options)
            self._client_pid = pid
        return self._client

    def close(self):
        """Closes this process's Client (another is made if needed again)."""
        c, self._client = self._client, None
        if c is not None:
            c.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_client"] = None
        state["_client_pid"] = None
        return state

    def __getitem__(self, index):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices):
        indices = list(indices)
        items = [self.dataset[i] for i in indices]
        ids, boxes, flips, imgs = [], [], [], []
        for index, item in zip(indices, items):
            sample = item[0] if isinstance(item, (tuple, list)) and len(item) >= 1 else None
            if not (isinstance(sample, (tuple, list)) and len(sample) == 2 and isinstance(sample[1], CropBox)):
                raise TypeError("item %d of %s is not ((img, CropBox), target, ...): give the dataset "
                                "transform=lmap.torch.ComposeWithBox([...])"
                                % (index, type(self.dataset).__name__))
            imgs.append(sample[0])
            ids.append(self.image_id(index))
            boxes.append(sample[1].box(self.box_format))
            flips.append(bool(sample[1].flip))
        labels = self.client().labels(ids, np.array(boxes, dtype=np.float64).reshape(-1, 4),
                                      output_size=self.output_size, flip=flips,
                                      box_format=self.box_format, softmax=self.softmax)
        soft = torch.from_numpy(labels)
        out = []
        for k, item in enumerate(items):
            row = (imgs[k], soft[k]) + tuple(item[1:])
            if self.return_box:
                row += (item[0][1],)
            if self.return_id:
                row += (ids[k],)
            out.append(row)
        return out
