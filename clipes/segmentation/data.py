"""Training data of the segmentation stage: pseudo-mask items, decoding, the two
protocols' augmentations, and the per-iteration batch stream.

Each iteration's batch and augmentation are drawn from an RNG seeded by (seed, iteration),
so a resumed run sees the same data as an uninterrupted one. Images and masks are decoded
from disk by DataLoader workers as batches are needed (:class:`TrainData`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DatasetError
from ..io import IGNORE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TrainItem:
    image: Path
    label: Path  # uint8 PNG, 255 = ignore
    conf: Path | None = None  # uint8 PNG, confidence x 255 (soft loss)


def load_rgb(path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, high bit-depth grey images scaled (datasets.open_image)."""
    from ..datasets import open_image

    with open_image(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _load_u8(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im, dtype=np.uint8)


def normalise(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) ImageNet-normalised float32."""
    x = torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)
    return (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def augment(rng: np.random.Generator, rgb, label, conf, crop: int, scale_range):
    """Random scale, pad (label 255, image mean), random crop to crop x crop, flip."""
    s = rng.uniform(*scale_range)
    h, w = label.shape
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
    label = np.asarray(Image.fromarray(label).resize((nw, nh), Image.NEAREST))
    conf = np.asarray(Image.fromarray(conf).resize((nw, nh), Image.NEAREST))
    ph, pw = max(crop - nh, 0), max(crop - nw, 0)
    if ph or pw:
        mean = np.array([int(255 * m) for m in IMAGENET_MEAN], np.uint8)
        rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)))
        rgb[nh:, :] = mean
        rgb[:, nw:] = mean
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE)
        conf = np.pad(conf, ((0, ph), (0, pw)))
    y = int(rng.integers(0, label.shape[0] - crop + 1))
    x = int(rng.integers(0, label.shape[1] - crop + 1))
    sl = (slice(y, y + crop), slice(x, x + crop))
    rgb, label, conf = rgb[sl], label[sl], conf[sl]
    if rng.random() < 0.5:
        rgb, label, conf = rgb[:, ::-1], label[:, ::-1], conf[:, ::-1]
    return np.ascontiguousarray(rgb), np.ascontiguousarray(label), np.ascontiguousarray(conf)


class TrainData:
    """Training batches read from disk as they are needed: nothing is held in memory but
    the file list, so memory does not grow with the dataset.

    ``batch(seed, iteration, ...)`` is a pure function of its arguments: the images and
    their augmentation come from an RNG seeded by (seed, iteration), so batches can be made
    in any order, by any worker process, and a resumed run sees the same data as an
    uninterrupted one. Sizes are checked up front from the file headers.
    """

    def __init__(self, items: list[TrainItem]):
        if not items:
            raise DatasetError("no training images (all pseudo masks missing?)")
        self.items = list(items)
        for it in self.items:
            with Image.open(it.image) as im, Image.open(it.label) as lb:
                if im.size != lb.size:
                    raise DatasetError(f"{it.label} is {lb.size[0]}x{lb.size[1]} but {it.image} is "
                                     f"{im.size[0]}x{im.size[1]}")

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, i: int):
        """(rgb (H, W, 3), label (H, W), conf (H, W)) uint8 of item i, decoded now."""
        it = self.items[i]
        label = _load_u8(it.label)
        conf = _load_u8(it.conf) if it.conf else np.full(label.shape, 255, np.uint8)
        return load_rgb(it.image), label, conf

    def batch(self, seed: int, iteration: int, batch_size: int, crop: int, scale_range):
        rng = np.random.default_rng([seed, iteration])
        idx = rng.integers(0, len(self.items), batch_size)
        xs, ys, ws = [], [], []
        for i in idx:
            r, lb, c = augment(rng, *self.sample(int(i)), crop, scale_range)
            xs.append(normalise(r))
            ys.append(torch.from_numpy(lb.astype(np.int64)))
            ws.append(torch.from_numpy(c.astype(np.float32) / 255))
        return torch.stack(xs), torch.stack(ys), torch.stack(ws)


    def batch_deeplab(self, seed: int, iteration: int, sub: int, batch_size: int, crop: int,
                      scales):
        """deeplab-pytorch's VOCAug batch: a scale drawn from ``scales``, bilinear resize of
        the image (nearest for the labels), padding bottom/right with the mean and 255, a
        random crop, a flip with p = 0.5, then BGR minus the mean. (B, 3, crop, crop), (B, crop,
        crop). A pure function of (seed, iteration, sub) like :meth:`batch`."""
        rng = np.random.default_rng([seed, iteration, sub])
        idx = rng.integers(0, len(self.items), batch_size)
        xs, ys = [], []
        for i in idx:
            rgb, label, _ = self.sample(int(i))
            x, y = deeplab_augment(rng, rgb, label, crop, scales)
            xs.append(x)
            ys.append(y)
        return torch.stack(xs), torch.stack(ys)


def resize_bilinear(img: np.ndarray, nh: int, nw: int) -> np.ndarray:
    """(H, W, C) float32 -> (nh, nw, C): bilinear with half-pixel centres (cv2's INTER_LINEAR,
    no antialiasing), in plain numpy so the result does not depend on thread counts (torch's
    CPU kernels round differently with another number of threads)."""
    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(np.float32)

    y0, y1, wy = axis(img.shape[0], nh)
    x0, x1, wx = axis(img.shape[1], nw)
    rows = img[y0] * (1 - wy)[:, None, None] + img[y1] * wy[:, None, None]
    return np.ascontiguousarray(rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None])


def deeplab_augment(rng, rgb: np.ndarray, label: np.ndarray, crop: int, scales):
    """One VOCAug item: (3, crop, crop) float32 preprocessed image, (crop, crop) int64 labels."""
    from . import deeplab

    s = float(scales[int(rng.integers(0, len(scales)))])
    h, w = label.shape
    nh, nw = int(h * s), int(w * s)
    bgr = torch.from_numpy(resize_bilinear(rgb[..., ::-1].astype(np.float32), nh, nw)).permute(2, 0, 1)
    label = np.asarray(Image.fromarray(label).resize((nw, nh), Image.NEAREST))
    mean = torch.tensor(deeplab.MEAN_BGR, dtype=torch.float32).view(3, 1, 1)
    ph, pw = max(crop - nh, 0), max(crop - nw, 0)
    if ph or pw:
        canvas = mean.expand(3, nh + ph, nw + pw).clone()
        canvas[:, :nh, :nw] = bgr
        bgr = canvas
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE)
    y0 = int(rng.integers(0, label.shape[0] - crop + 1))
    x0 = int(rng.integers(0, label.shape[1] - crop + 1))
    bgr = bgr[:, y0:y0 + crop, x0:x0 + crop]
    label = label[y0:y0 + crop, x0:x0 + crop]
    if rng.random() < 0.5:
        bgr, label = bgr.flip(-1), label[:, ::-1]
    mean64 = torch.tensor(deeplab.MEAN_BGR, dtype=torch.float64).view(3, 1, 1)
    x = (bgr.double() - mean64).float()  # float64 subtraction, as deeplab-pytorch's numpy
    return x.contiguous(), torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))


class _Batches(torch.utils.data.Dataset):
    """Iteration i -> its batch, or its iter_size sub-batches under the deeplab-pytorch
    protocol (for a DataLoader that decodes in worker processes)."""

    def __init__(self, data: TrainData, cfg, start: int):
        self.data, self.cfg, self.start = data, cfg, start

    def __len__(self):
        return self.cfg.iterations - self.start

    def __getitem__(self, k):
        c = self.cfg
        if c.protocol == "deeplab-pytorch":
            return [self.data.batch_deeplab(c.seed, self.start + k, j, c.batch_size, c.crop,
                                            c.scales) for j in range(c.iter_size)]
        return self.data.batch(c.seed, self.start + k, c.batch_size, c.crop, c.scale_range)


def _worker_init(_):
    torch.set_num_threads(1)


def batch_stream(data: TrainData, cfg, start: int):
    """Batches of iterations start..cfg.iterations-1 in order, decoded by cfg.workers
    processes (0: in this process)."""
    loader = torch.utils.data.DataLoader(
        _Batches(data, cfg, start), batch_size=None, shuffle=False, num_workers=cfg.workers,
        worker_init_fn=_worker_init if cfg.workers else None,
        prefetch_factor=4 if cfg.workers else None, persistent_workers=False)
    return iter(loader)


def median_frequency_weights(data: "TrainData", n_classes: int) -> torch.Tensor:
    """Median-frequency weights from the pixel counts of every training label map."""
    from . import deeplab

    counts = np.zeros(n_classes, np.float64)
    for it in data.items:
        lb = _load_u8(it.label)
        counts += np.bincount(lb[lb != IGNORE].ravel(), minlength=256)[:n_classes]
    return deeplab.class_balanced_weights(counts)
