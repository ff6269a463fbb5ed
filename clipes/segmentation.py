"""Segmentation stage: DeepLabV2 trained on pseudo masks with the confidence-guided loss.

- :class:`DeepLabV2`: ResNet-101 (or -50) backbone at output stride 8 (dilated layer3/4)
  and the ASPP head of DeepLabV2 (four 3x3 convolutions, rates 6/12/18/24, summed); a
  ``tiny`` backbone for the demo and tests.
- :func:`cgl_loss`: cross-entropy ignoring 255 (CGL), or the ``soft`` variant weighting
  each pixel by its CRF confidence.
- :func:`train`: SGD with momentum, poly schedule, head learning rate x10, random scale,
  crop and flip; checkpoints every N iterations and exact resume. Each iteration's batch
  and augmentation are drawn from an RNG seeded by (seed, iteration), so a resumed run
  sees the same data as an uninterrupted one and ends at the same weights. Images and
  masks are decoded from disk by DataLoader workers as batches are needed (:class:`TrainData`).
- :func:`predict`: multi-scale + flip inference, optional CRF.
"""

from __future__ import annotations

import csv
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from .errors import DatasetError
from .io import IGNORE, atomic_path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ASPP_RATES = (6, 12, 18, 24)


# ------------------------------------------------------------------------------ model
class ASPPv2(nn.Module):
    """DeepLabV2 head: parallel dilated 3x3 convolutions to class scores, summed."""

    def __init__(self, in_ch: int, n_classes: int, rates=ASPP_RATES):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_ch, n_classes, 3, padding=r, dilation=r, bias=True) for r in rates)
        for b in self.branches:
            nn.init.normal_(b.weight, 0, 0.01)
            nn.init.zeros_(b.bias)

    def forward(self, x):
        return sum(b(x) for b in self.branches)


class TinyBackbone(nn.Module):
    """A small dilated CNN at output stride 8 (for the demo and tests)."""

    out_channels = 128

    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin, cout, stride=1, dilation=1):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.body = nn.Sequential(
            block(3, width, 2), block(width, width), block(width, 2 * width, 2),
            block(2 * width, 2 * width), block(2 * width, 4 * width, 2),
            block(4 * width, 4 * width, dilation=2), block(4 * width, self.out_channels, dilation=4))

    def forward(self, x):
        return self.body(x)


def _resnet_backbone(depth: int):
    import torchvision

    ctor = {101: torchvision.models.resnet101, 50: torchvision.models.resnet50}[depth]
    net = ctor(weights=None, replace_stride_with_dilation=[False, True, True])
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                         net.layer1, net.layer2, net.layer3, net.layer4)
    body.out_channels = 2048
    return body, net


class DeepLabV2(nn.Module):
    """images (B, 3, H, W) -> logits (B, n_classes, ceil(H/8), ceil(W/8))."""

    def __init__(self, n_classes: int, backbone: str = "resnet101"):
        super().__init__()
        self.backbone_name = backbone
        if backbone == "tiny":
            self.backbone = TinyBackbone()
            ch = TinyBackbone.out_channels
        elif backbone in ("resnet101", "resnet50"):
            self.backbone, self._tv = _resnet_backbone(int(backbone[6:]))
            ch = 2048
        else:
            raise ValueError(f"unknown backbone {backbone!r}: resnet101, resnet50 or tiny")
        self.head = ASPPv2(ch, n_classes)

    def forward(self, x):
        return self.head(self.backbone(x))

    def param_groups(self, lr: float, weight_decay: float):
        """Backbone at lr, head at 10 x lr (DeepLab recipe)."""
        return [
            {"params": list(self.backbone.parameters()), "lr": lr, "base_lr": lr,
             "weight_decay": weight_decay},
            {"params": list(self.head.parameters()), "lr": 10 * lr, "base_lr": 10 * lr,
             "weight_decay": weight_decay},
        ]


def imagenet_weights() -> dict:
    """torchvision's ImageNet weights of the ResNets the protocols build, by backbone name."""
    import torchvision

    return {"resnet101": torchvision.models.ResNet101_Weights.IMAGENET1K_V1,
            "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1}


def init_backbone(model: DeepLabV2, init: str | None, log=print) -> str:
    """Initialise the backbone from a checkpoint path, torchvision's ImageNet weights
    ('imagenet', downloaded), or leave it random (loud warning). Returns what was used."""
    if model.backbone_name == "tiny" or init is None:
        if model.backbone_name != "tiny":
            warnings.warn("segmentation backbone is RANDOMLY initialised: results will be far "
                          "below the paper's (set segmentation.init to an ImageNet or COCO "
                          "checkpoint)", stacklevel=2)
        return "random"
    if init == "imagenet":
        weights = imagenet_weights()[model.backbone_name]
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as e:  # offline
            warnings.warn(f"could not download torchvision ImageNet weights ({e}); the backbone "
                          f"is RANDOMLY initialised. Give a checkpoint path in "
                          f"segmentation.init to fix this.", stacklevel=2)
            return "random (download failed)"
        model._tv.load_state_dict(state)
        return "torchvision imagenet"
    path = Path(init)
    if not path.is_file():
        raise FileNotFoundError(f"segmentation.init: checkpoint {path} not found (give an "
                                f"ImageNet/COCO-pretrained ResNet or DeepLabV2 state dict)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    target = model if any(k.startswith("backbone.") for k in state) else model._tv
    missing, unexpected = target.load_state_dict(state, strict=False)
    log(f"init from {path}: {len(missing)} missing, {len(unexpected)} unexpected keys")
    return str(path)


def freeze_bn(model: nn.Module) -> None:
    """Keep BatchNorm statistics and affine parameters fixed (pretrained backbones)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


# ------------------------------------------------------------------------------- loss
def cgl_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None):
    """Confidence-guided loss.

    logits (B, C, h, w) are upsampled (bilinear) to the labels' (B, H, W). Pixels labelled
    255 are ignored: no loss, no gradient. With ``weights`` (B, H, W) in [0, 1] (the soft
    variant), each pixel's cross-entropy is weighted, normalised by the weight sum.
    """
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if weights is None:
        return F.cross_entropy(logits, labels, ignore_index=IGNORE)
    per_pixel = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none")
    w = weights * (labels != IGNORE)
    return (per_pixel * w).sum() / w.sum().clamp_min(1e-6)


# ------------------------------------------------------------------------------- data
@dataclass
class TrainItem:
    image: Path
    label: Path  # uint8 PNG, 255 = ignore
    conf: Path | None = None  # uint8 PNG, confidence x 255 (soft loss)


def load_rgb(path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, high bit-depth grey images scaled (datasets.open_image)."""
    from .datasets import open_image

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


# --------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    n_classes: int
    backbone: str = "resnet101"
    init: str | None = "imagenet"
    loss: str = "cgl"  # cgl (ignore 255) | soft (confidence-weighted) | plain (labels have no 255)
    iterations: int = 20000
    batch_size: int = 10
    crop: int = 321
    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    scale_range: tuple = (0.5, 1.5)
    checkpoint_every: int = 1000
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # mixed precision on CUDA
    workers: int = 2  # data loader processes (0: decode in the training process)
    # "deeplab-pytorch" (the paper's: clipes.deeplab) or "torchvision" (this module's)
    protocol: str = "torchvision"
    blocks: tuple | None = None  # deeplab-pytorch: ResNet block counts (default from backbone)
    iter_size: int = 1  # deeplab-pytorch: sub-batches accumulated per iteration
    scales: tuple = (0.5, 0.75, 1.0, 1.25, 1.5)  # deeplab-pytorch: training scales
    class_balanced: bool = False  # median-frequency class weights in the cross-entropy


def poly_lr(base: float, it: int, total: int, power: float) -> float:
    return base * (1 - it / total) ** power


PROTOCOLS = ("deeplab-pytorch", "torchvision")


def build_model(cfg: TrainConfig, log=print) -> tuple[nn.Module, str]:
    """The network of the protocol, initialised; returns it and a description of the init."""
    torch.manual_seed(cfg.seed)
    if cfg.protocol == "torchvision":
        model = DeepLabV2(cfg.n_classes, cfg.backbone)
        return model, init_backbone(model, cfg.init, log)
    if cfg.protocol != "deeplab-pytorch":
        raise ValueError(f"segmentation protocol {cfg.protocol!r}: one of {PROTOCOLS}")
    from . import deeplab

    model = deeplab.build(cfg.n_classes, cfg.backbone, cfg.blocks)
    if cfg.init is None:
        warnings.warn("segmentation backbone is RANDOMLY initialised: results will be far "
                      "below the paper's (set segmentation.init)", stacklevel=2)
        return model, "random"
    if cfg.init == "imagenet":
        return model, _torchvision_imagenet_into_caffe(model, cfg, log)
    fmt = deeplab.load_init(model, cfg.init, log)
    return model, f"{cfg.init} ({fmt})"


def _torchvision_imagenet_into_caffe(model, cfg, log) -> str:
    from . import deeplab

    blocks = tuple(cfg.blocks) if cfg.blocks else deeplab.BLOCKS[cfg.backbone]
    by_blocks = {deeplab.BLOCKS[name]: w for name, w in imagenet_weights().items()}
    if blocks not in by_blocks:
        raise DatasetError(f"segmentation.init 'imagenet': torchvision has no ResNet with blocks "
                         f"{blocks}; give an init file or init: null")
    try:
        state = by_blocks[blocks].get_state_dict(progress=False)
    except Exception as e:  # noqa: BLE001 (offline)
        raise FileNotFoundError(
            f"segmentation.init 'imagenet': could not download torchvision's ImageNet ResNet "
            f"({type(e).__name__}: {e}); give an init file by path (deeplab-pytorch's "
            f"converted ImageNet or COCO init, or a torchvision ResNet state dict)") from None
    fmt = deeplab.load_init_state(model, state, "torchvision's ImageNet weights", log)
    return f"torchvision imagenet ({fmt}; not the paper's Caffe ImageNet init)"


def describe_init(cfg: TrainConfig, used: str) -> dict:
    """What the report says about the initialisation: which, and whether it is the paper's."""
    paper = (cfg.protocol == "deeplab-pytorch" and "deeplab-pytorch converted init" in used)
    return {"protocol": cfg.protocol, "init": used, "paper_init": paper}


PROGRESS_EVERY_S = 60  # a progress line at least this often (and every 5% of the run)


def train(cfg: TrainConfig, data: TrainData, out_dir, log=None, stop_after: int | None = None):
    """Train and write OUT/model.pt, OUT/train_log.csv, OUT/checkpoint.pt (resume state).

    A run finds OUT/checkpoint.pt and continues from it. ``stop_after`` stops after that
    many iterations of this call (to test interruption). Returns the final model.
    """
    log = log or (lambda m: print(m, file=sys.stderr))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    model, used = build_model(cfg, log)
    deeplab_protocol = cfg.protocol == "deeplab-pytorch"
    # deeplab-pytorch freezes BN whatever the init; the torchvision protocol only for a
    # pretrained backbone
    pretrained_bn = deeplab_protocol or used not in ("random", "random (download failed)")
    model.to(device)
    if deeplab_protocol:
        from . import deeplab

        groups = deeplab.param_groups(model, cfg.lr, cfg.weight_decay)
    else:
        groups = model.param_groups(cfg.lr, cfg.weight_decay)
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    weights = _class_weights(data, cfg.n_classes).to(device) if cfg.class_balanced else None
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start = 0
    ckpt_path = out_dir / "checkpoint.pt"
    log_path = out_dir / "train_log.csv"
    state = _load_checkpoint(ckpt_path, device, log) if ckpt_path.is_file() else None
    if state is not None and state.get("fingerprint") != fingerprint(cfg):
        log(f"{ckpt_path} was written by another config or code version: starting afresh")
        state = None
    if state is not None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            from .datasets import DatasetError

            raise DatasetError(f"{ckpt_path} is a checkpoint of another network (other class "
                             f"count, protocol or backbone: {str(e).splitlines()[0]}); delete it "
                             f"to start this training afresh") from None
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start = state["iteration"]
        log(f"resuming from iteration {start} ({ckpt_path})")
        if deeplab_protocol:
            for k in range(start + 1):  # the lr the schedule had reached
                deeplab.poly_lr_step(opt, k, cfg.iterations, cfg.poly_power)
    rows = list(state.get("log_rows", [])) if state is not None else []
    t0 = last_line = time.time()
    done_here = 0
    batches = batch_stream(data, cfg, start)
    for it in range(start, cfg.iterations):
        model.train()
        if pretrained_bn:
            freeze_bn(model)
        if deeplab_protocol:
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for x, y in next(batches):  # iter_size sub-batches, gradients accumulated
                x, y = x.to(device), y.to(device)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    outputs = model(x)
                sub_loss, _ = deeplab.msc_loss([o.float() for o in outputs], y, weights)
                scaler.scale(sub_loss / cfg.iter_size).backward()
                total += float(sub_loss.detach()) / cfg.iter_size
            scaler.step(opt)
            scaler.update()
            loss_value = total
            lr_now = opt.param_groups[0]["lr"]
            deeplab.poly_lr_step(opt, it + 1, cfg.iterations, cfg.poly_power)
        else:
            for g in opt.param_groups:
                g["lr"] = poly_lr(g["base_lr"], it, cfg.iterations, cfg.poly_power)
            x, y, w = next(batches)
            x, y, w = x.to(device), y.to(device), w.to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(x)
            if weights is not None:
                up = F.interpolate(logits.float(), size=y.shape[-2:], mode="bilinear",
                                   align_corners=False)
                loss = F.cross_entropy(up, y, weight=weights, ignore_index=IGNORE)
            else:
                loss = cgl_loss(logits.float(), y, w if cfg.loss == "soft" else None)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            loss_value = float(loss.detach())
            lr_now = opt.param_groups[0]["lr"]
        rows.append({"iteration": it + 1, "loss": loss_value, "lr": lr_now,
                     "seconds": time.time() - t0})
        done_here += 1
        n = it + 1
        if (n % max(1, cfg.iterations // 20) == 0 or n == cfg.iterations
                or time.time() - last_line > PROGRESS_EVERY_S):
            last_line = time.time()
            rate = done_here / (time.time() - t0)
            eta = (cfg.iterations - n) / max(rate, 1e-9)
            log(f"[{'#' * (20 * n // cfg.iterations):<20}] {n}/{cfg.iterations} "
                f"loss {np.mean([r['loss'] for r in rows[-20:]]):.4f} "
                f"{rate:.2f} it/s, eta {eta:.0f} s")
        if n % cfg.checkpoint_every == 0 and n < cfg.iterations:
            _save_checkpoint(ckpt_path, model, opt, scaler, n, cfg, rows)
            _write_log(log_path, rows)
        if stop_after is not None and done_here >= stop_after:
            _save_checkpoint(ckpt_path, model, opt, scaler, n, cfg, rows)
            _write_log(log_path, rows)
            return model
    _write_log(log_path, rows)
    if device.type == "cuda":
        log(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB (allocated)")
    with atomic_path(out_dir / "model.pt", suffix=".pt") as tmp:
        torch.save({"model": model.state_dict(), "config": asdict(cfg), "init": used}, tmp)
    from .io import write_json

    write_json(out_dir / "train_info.json", describe_init(cfg, used))
    ckpt_path.unlink(missing_ok=True)
    return model


_LOAD_ERRORS = (RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError)


def _as_data(path, device):
    """(state, None), or (None, why) where the file cannot be loaded as data only."""
    import pickle
    import warnings

    try:  # weights_only: tensors, numbers, strings and containers; no pickle code runs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle protocol notes
            return torch.load(path, map_location=device, weights_only=True), None
    except (pickle.UnpicklingError, *_LOAD_ERRORS) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        # torch's message opens with advice to load the file unsafely: keep the cause only
        cause = next((ln for ln in lines if "WeightsUnpickler error" in ln), lines[0])
        return None, cause.replace("WeightsUnpickler error: ", "")[:200]


def load_tensors(path, device="cpu", what: str = "checkpoint"):
    """torch.load of a file as data only; a file that is not such data (damaged, or holding
    code, which is never run) is a one-line error naming it."""
    state, why = _as_data(path, device)
    if why is not None:
        from .datasets import DatasetError

        raise DatasetError(f"{path}: the {what} cannot be loaded as plain tensors and numbers "
                           f"({why}); it is damaged, or holds code, which is never run: "
                           f"delete it, or retrain")
    return state


def _load_checkpoint(path: Path, device, log):
    """The resume state, or None after setting aside a file that cannot be loaded as data
    (cut short by a crash or a full disk while it was copied, or holding code): it is
    renamed to checkpoint.pt.damaged-<n>, the log says so, and training starts afresh."""
    state, why = _as_data(path, device)
    if why is None:
        return state
    n = 0
    while path.with_name(f"{path.name}.damaged-{n}").exists():
        n += 1
    aside = path.with_name(f"{path.name}.damaged-{n}")
    path.rename(aside)
    log(f"warning: {path} cannot be loaded as plain tensors and numbers ({why}): set aside "
        f"as {aside.name}, training starts afresh")
    return None


def fingerprint(cfg: TrainConfig) -> str:
    """Hash of what a training's result depends on: its config (less the knobs that do not
    change results: data loader workers, checkpoint interval) and the training code."""
    import hashlib
    import json

    d = {k: v for k, v in asdict(cfg).items() if k not in ("workers", "checkpoint_every")}
    code = b"".join(Path(__file__).with_name(f).read_bytes() for f in ("segmentation.py", "deeplab.py"))
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode() + code).hexdigest()


def _save_checkpoint(path, model, opt, scaler, iteration, cfg, rows):
    """Model, optimiser and log rows in one file, written atomically: the log of a resumed
    run continues from exactly the checkpoint's iteration."""
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scaler": scaler.state_dict(), "iteration": iteration,
                    "fingerprint": fingerprint(cfg), "log_rows": list(rows)}, tmp)


def _write_log(path, rows):
    import io as _io

    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["iteration", "loss", "lr", "seconds"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def plot_log(log_csv, out_png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(log_csv)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(df["iteration"], df["loss"], lw=0.8, color="tab:blue", alpha=0.5)
    ax.plot(df["iteration"], df["loss"].rolling(20, min_periods=1).mean(), color="tab:blue")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(df["iteration"], df["lr"], color="tab:orange")
    ax2.set_ylabel("backbone lr", color="tab:orange")
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


# -------------------------------------------------------------------------- inference
def load_trained(path, device="cpu") -> nn.Module:
    """A model.pt of train(), either protocol; ``model.protocol`` says which."""
    state = load_tensors(path, device, "trained model")
    if not isinstance(state, dict) or not {"model", "config"} <= set(state):
        from .datasets import DatasetError

        raise DatasetError(f"{path}: not a model written by scripts/train_seg.py (no 'model' "
                           f"and 'config'); retrain, or give that script's model.pt")
    cfg = state["config"]
    protocol = cfg.get("protocol", "torchvision")
    if protocol == "deeplab-pytorch":
        from . import deeplab

        model = deeplab.build(cfg["n_classes"], cfg["backbone"], cfg.get("blocks"))
    else:
        model = DeepLabV2(cfg["n_classes"], cfg["backbone"])
    model.load_state_dict(state["model"])
    model.protocol = protocol
    model.n_classes = cfg["n_classes"]
    return model.to(device).eval()


TEST_PROTOCOLS = ("msc-max", "mean-softmax-flip")


def predict_for_protocol(model, rgb, test_protocol: str, scales=(1.0,), flip=True,
                         use_crf=False, device="cpu") -> np.ndarray:
    """One image's label map under a named test-time protocol.

    ``msc-max`` (deeplab-pytorch's main.py test, the paper's): the whole image, logits at
    1x, 0.5x, 0.75x max-fused, upsampled, softmax, argmax; with ``use_crf`` deeplab-pytorch's
    DenseCRF on the mean-subtracted BGR image cast to uint8. Needs a deeplab-pytorch model.
    ``mean-softmax-flip``: softmax averaged over ``scales`` and horizontal flips; CRF on the
    RGB image.
    """
    protocol = getattr(model, "protocol", "torchvision")
    if test_protocol == "msc-max":
        if protocol != "deeplab-pytorch":
            raise DatasetError("test protocol 'msc-max' needs a model trained with "
                             "segmentation.protocol 'deeplab-pytorch'")
        from . import deeplab

        return deeplab.predict_mask(model, rgb, use_crf, device)
    if test_protocol != "mean-softmax-flip":
        raise ValueError(f"test protocol {test_protocol!r}: one of {TEST_PROTOCOLS}")
    if protocol == "deeplab-pytorch":
        probs = _deeplab_mean_softmax(model, rgb, scales, flip, device)
        if use_crf:
            from .crf import dense_crf

            probs = torch.from_numpy(dense_crf(rgb, probs.numpy().astype(np.float32)))
        return probs.argmax(0).numpy().astype(np.uint8)
    return predict_mask(model, rgb, scales, flip, use_crf, device)


@torch.no_grad()
def _deeplab_mean_softmax(model, rgb, scales, flip, device) -> torch.Tensor:
    from . import deeplab

    h, w = rgb.shape[:2]
    x = deeplab.preprocess(rgb)[None].to(device)
    total = 0
    for s in scales:
        xs = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False) if s != 1 else x
        batch = torch.cat([xs, xs.flip(-1)]) if flip else xs
        logits = F.interpolate(model.base(batch), size=(h, w), mode="bilinear", align_corners=False)
        if flip:
            logits = torch.stack([logits[0], logits[1].flip(-1)])
        total = total + logits.softmax(1).mean(0)
    return (total / len(scales)).cpu()


def _class_weights(data: "TrainData", n_classes: int) -> torch.Tensor:
    """Median-frequency weights from the pixel counts of every training label map."""
    from . import deeplab

    counts = np.zeros(n_classes, np.float64)
    for it in data.items:
        lb = _load_u8(it.label)
        counts += np.bincount(lb[lb != IGNORE].ravel(), minlength=256)[:n_classes]
    return deeplab.class_balanced_weights(counts)


@torch.no_grad()
def predict_probs(model: DeepLabV2, rgb: np.ndarray, scales=(1.0,), flip: bool = True,
                  device="cpu") -> torch.Tensor:
    """Class probabilities (C, H, W) averaged over scales and flips."""
    h, w = rgb.shape[:2]
    x = normalise(rgb)[None].to(device)
    total = 0
    for s in scales:
        xs = F.interpolate(x, size=(max(8, math.ceil(h * s)), max(8, math.ceil(w * s))),
                           mode="bilinear", align_corners=False) if s != 1 else x
        batch = torch.cat([xs, xs.flip(-1)]) if flip else xs
        logits = model(batch)
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        if flip:
            logits = logits[:1] + logits[1:].flip(-1)
        total = total + logits[0].softmax(0) / (2 if flip else 1)
    return (total / len(scales)).cpu()


def predict_mask(model, rgb, scales=(1.0,), flip=True, use_crf=False, device="cpu") -> np.ndarray:
    probs = predict_probs(model, rgb, scales, flip, device)
    if use_crf:
        from .crf import dense_crf

        probs = torch.from_numpy(dense_crf(rgb, probs.numpy().astype(np.float32)))
    return probs.argmax(0).numpy().astype(np.uint8)
