"""DeepLabV2 as kazuto1011/deeplab-pytorch runs it: the protocol of the CLIP-ES paper's
segmentation numbers (``segmentation.protocol: deeplab-pytorch``).

What makes it differ from a torchvision-based DeepLabV2 (each one moves the logits):

- Caffe (MSRA) ResNet: the stride of a downsampling block sits in its first 1x1 conv
  (``reduce``), every block of res4 / res5 is dilated (2 / 4, the first block too), and the
  stem max-pool uses ``ceil_mode=True``. Module names are deeplab-pytorch's
  (``layer1.conv1``, ``layer2.block1.reduce``, ..., ``aspp.c0``), so its checkpoints and
  converted init files load key for key. Any block counts (ResNet-101: 3, 4, 23, 3).
- Input: BGR, 0-255, minus (104.008, 116.669, 122.675) subtracted in float64; no scaling.
- MSC: the network at 1x, 0.5x and 0.75x (inputs resized with ``scale_factor``), the
  pyramid logits upsampled to the 1x size and max-fused. Training puts a cross-entropy on
  each of the four outputs (labels resized to each logit size with PIL NEAREST, 255
  ignored, averaged over the batch's valid pixels) and sums them; evaluation uses the max.
- Optimiser groups: backbone conv weights at lr (weight decay), ASPP weights at 10 x lr,
  ASPP biases at 20 x lr without weight decay, BN parameters in no group (frozen BN); poly
  lr recomputed every 10 iterations.

Shapes: images (B, 3, H, W) -> logits (B, C, h, w) with h = ceil(ceil(H / 2) / 2) ... (output
stride 8 with ceil-mode pooling).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ..crf import BGR_MEAN, dense_crf
from ..datasets import DatasetError
from ..io import IGNORE

MEAN_BGR = BGR_MEAN  # the Caffe means, the same as the CRF stage's
MSC_SCALES = (0.5, 0.75)
ASPP_RATES = (6, 12, 18, 24)
BLOCKS = {"resnet101": (3, 4, 23, 3), "resnet50": (3, 4, 6, 3), "tiny": (1, 1, 1, 1)}
BN_EPS = 1e-5


# ------------------------------------------------------------------------------ model
class ConvBnReLU(nn.Sequential):
    def __init__(self, cin, cout, kernel, stride, padding, dilation, relu=True):
        super().__init__()
        self.add_module("conv", nn.Conv2d(cin, cout, kernel, stride, padding, dilation, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout, eps=BN_EPS, momentum=1 - 0.999))
        if relu:
            self.add_module("relu", nn.ReLU())


class Bottleneck(nn.Module):
    """reduce (1x1, carries the stride) -> conv3x3 (dilated) -> increase (1x1) + shortcut."""

    def __init__(self, cin, cout, stride, dilation, downsample):
        super().__init__()
        mid = cout // 4
        self.reduce = ConvBnReLU(cin, mid, 1, stride, 0, 1)
        self.conv3x3 = ConvBnReLU(mid, mid, 3, 1, dilation, dilation)
        self.increase = ConvBnReLU(mid, cout, 1, 1, 0, 1, relu=False)
        self.shortcut = ConvBnReLU(cin, cout, 1, stride, 0, 1, relu=False) if downsample else None

    def forward(self, x):
        h = self.increase(self.conv3x3(self.reduce(x)))
        return F.relu(h + (self.shortcut(x) if self.shortcut is not None else x))


class ResLayer(nn.Sequential):
    def __init__(self, n, cin, cout, stride, dilation):
        super().__init__()
        for i in range(n):
            self.add_module(f"block{i + 1}", Bottleneck(cin if i == 0 else cout, cout,
                                                        stride if i == 0 else 1, dilation, i == 0))


class Stem(nn.Sequential):
    def __init__(self, cout=64):
        super().__init__()
        self.add_module("conv1", ConvBnReLU(3, cout, 7, 2, 3, 1))
        self.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))


class ASPP(nn.Module):
    """Four dilated 3x3 convolutions to class scores, summed (c0..c3)."""

    def __init__(self, cin, n_classes, rates=ASPP_RATES):
        super().__init__()
        for i, r in enumerate(rates):
            conv = nn.Conv2d(cin, n_classes, 3, 1, padding=r, dilation=r, bias=True)
            nn.init.normal_(conv.weight, 0, 0.01)
            nn.init.constant_(conv.bias, 0)
            self.add_module(f"c{i}", conv)

    def forward(self, x):
        return sum(m(x) for m in self.children())


class DeepLabV2Caffe(nn.Sequential):
    """deeplab-pytorch's DeepLabV2: images (B, 3, H, W) -> logits (B, n_classes, h, w)."""

    def __init__(self, n_classes: int, n_blocks=BLOCKS["resnet101"], rates=ASPP_RATES):
        super().__init__()
        ch = [64 * 2 ** p for p in range(6)]
        self.add_module("layer1", Stem(ch[0]))
        self.add_module("layer2", ResLayer(n_blocks[0], ch[0], ch[2], 1, 1))
        self.add_module("layer3", ResLayer(n_blocks[1], ch[2], ch[3], 2, 1))
        self.add_module("layer4", ResLayer(n_blocks[2], ch[3], ch[4], 1, 2))
        self.add_module("layer5", ResLayer(n_blocks[3], ch[4], ch[5], 1, 4))
        self.add_module("aspp", ASPP(ch[5], n_classes, rates))

    def freeze_bn(self):
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()


class MSC(nn.Module):
    """Multi-scale inputs: train -> [1x, 0.5x, 0.75x, max]; eval -> max (at the 1x size)."""

    def __init__(self, base: nn.Module, scales=MSC_SCALES):
        super().__init__()
        self.base = base
        self.scales = tuple(scales)

    def forward(self, x):
        logits = self.base(x)
        h, w = logits.shape[-2:]
        pyramid = [self.base(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
                   for s in self.scales]
        up = [F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False) for p in pyramid]
        fused = torch.max(torch.stack([logits, *up]), dim=0)[0]
        if self.training:
            return [logits, *pyramid, fused]
        return fused


def build(n_classes: int, backbone: str = "resnet101", blocks=None) -> MSC:
    return MSC(DeepLabV2Caffe(n_classes, tuple(blocks) if blocks else BLOCKS[backbone]))


# ------------------------------------------------------------------------------ input
def preprocess(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32: BGR minus the Caffe mean (in float64)."""
    bgr = rgb[..., ::-1].astype(np.float32)
    out = (bgr - np.array(MEAN_BGR)).astype(np.float32)  # float64 subtraction, then rounded
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def crf_image(pre: torch.Tensor | np.ndarray) -> np.ndarray:
    """The image term deeplab-pytorch hands DenseCRF: the preprocessed (3, H, W) array cast
    to uint8 (truncated toward zero, wrapped modulo 256), as (H, W, 3)."""
    a = np.asarray(pre)
    return np.ascontiguousarray(a.astype(np.int64).astype(np.uint8).transpose(1, 2, 0))


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) int64 -> (B, h, w): PIL NEAREST on a float32 image, per label map."""
    h, w = size
    out = [np.asarray(Image.fromarray(lb.float().numpy()).resize((w, h), Image.NEAREST))
           for lb in labels]
    return torch.from_numpy(np.stack(out).astype(np.int64))


def msc_loss(outputs: list[torch.Tensor], labels: torch.Tensor, class_weights=None):
    """Sum over the MSC outputs of the cross-entropy against labels resized to each one
    (255 ignored, averaged over the valid pixels of the whole batch). Returns (sum, terms)."""
    terms = []
    for logit in outputs:
        target = resize_labels(labels.cpu(), logit.shape[-2:]).to(logit.device)
        terms.append(F.cross_entropy(logit, target, weight=class_weights, ignore_index=IGNORE))
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total, terms


def class_balanced_weights(label_counts: np.ndarray) -> torch.Tensor:
    """Median-frequency class weights (C,) from pixel counts per class (the class-balanced
    cross-entropy; classes never seen get weight 1)."""
    freq = label_counts / max(label_counts.sum(), 1)
    seen = freq > 0
    w = np.ones_like(freq, dtype=np.float64)
    w[seen] = np.median(freq[seen]) / freq[seen]
    return torch.tensor(w, dtype=torch.float32)


# ------------------------------------------------------------------------------ optimiser
def param_groups(model: MSC, lr: float, weight_decay: float) -> list[dict]:
    """deeplab-pytorch's get_params: 1x backbone conv weights, 10x ASPP weights, 20x ASPP
    biases (no weight decay); BN parameters in no group."""
    one, ten, twenty = [], [], []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d):
            continue
        if "aspp" in name:
            ten.append(m.weight)
            twenty.append(m.bias)
        elif "layer" in name:
            one.append(m.weight)
    return [
        {"params": one, "lr": lr, "base_lr": lr, "weight_decay": weight_decay},
        {"params": ten, "lr": 10 * lr, "base_lr": 10 * lr, "weight_decay": weight_decay},
        {"params": twenty, "lr": 20 * lr, "base_lr": 20 * lr, "weight_decay": 0.0},
    ]


def poly_lr_step(opt: torch.optim.Optimizer, epoch: int, iter_max: int, power: float,
                 step_size: int = 10) -> None:
    """deeplab-pytorch's PolynomialLR.step(epoch): the lr changes only every step_size."""
    if epoch % step_size != 0 or epoch == 0 or epoch > iter_max:
        return
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * (1 - epoch / iter_max) ** power


# ------------------------------------------------------------------------------ inference
@torch.no_grad()
def predict_probs(model: MSC, rgb: np.ndarray, device="cpu") -> torch.Tensor:
    """main.py test: the whole image, max-fused MSC logits upsampled (bilinear) to the
    image, softmax. (C, H, W)"""
    h, w = rgb.shape[:2]
    model.eval()
    x = preprocess(rgb)[None].to(device)
    logits = model(x)
    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return F.softmax(logits, dim=1)[0].cpu()


def predict_mask(model: MSC, rgb: np.ndarray, use_crf: bool = False, device="cpu") -> np.ndarray:
    probs = predict_probs(model, rgb, device)
    if use_crf:
        image = crf_image(preprocess(rgb))
        # deeplab-pytorch's DenseCRF (configs/voc12.yaml) has the CRF stage's kernels and
        # parameters: 10 iterations, Gaussian 1/3, bilateral 67/3/4
        return dense_crf(image, probs.numpy().astype(np.float32)).argmax(0).astype(np.uint8)
    return probs.argmax(0).numpy().astype(np.uint8)


# ------------------------------------------------------------------------------ init files
class InitError(DatasetError):
    """An init file that cannot give the whole backbone; names the file and the fix."""


def _torchvision_to_deeplab(state: dict) -> OrderedDict:
    """torchvision ResNet keys -> deeplab-pytorch backbone keys (same tensors)."""
    out = OrderedDict()
    sub = {"conv1": "reduce.conv", "bn1": "reduce.bn", "conv2": "conv3x3.conv",
           "bn2": "conv3x3.bn", "conv3": "increase.conv", "bn3": "increase.bn",
           "downsample.0": "shortcut.conv", "downsample.1": "shortcut.bn"}
    for k, v in state.items():
        if k.startswith("fc."):
            continue
        if k.startswith("conv1."):
            out["layer1.conv1.conv." + k[6:]] = v
        elif k.startswith("bn1."):
            out["layer1.conv1.bn." + k[4:]] = v
        elif k.startswith("layer"):
            layer, block, rest = k.split(".", 2)
            n = int(layer[5:]) + 1
            for a, b in sub.items():
                if rest.startswith(a + "."):
                    out[f"layer{n}.block{int(block) + 1}.{b}.{rest[len(a) + 1:]}"] = v
                    break
    return out


def detect_format(state: dict) -> str:
    keys = list(state)
    if any(k.startswith("base.layer") for k in keys):
        return "deeplab-pytorch checkpoint (MSC, base.*)"
    if any(k.startswith("layer1.conv1.conv.") for k in keys):
        if any(k.startswith("fc.") for k in keys):
            return "deeplab-pytorch converted init (DeepLabV1 / ResNet with fc)"
        return "deeplab-pytorch backbone (layer*.block*)"
    if "conv1.weight" in keys and any(k.startswith("layer1.0.") for k in keys):
        return "torchvision ResNet"
    if any(k.startswith("backbone.") for k in keys):
        return "clipes torchvision-protocol DeepLabV2 checkpoint"
    return "unknown"


def load_init(model: MSC, path, log=print) -> str:
    """Initialise the backbone (``model.base.layer*``) from any init file a user may hold.

    Formats: deeplab-pytorch's converted COCO / ImageNet files (DeepLabV1 state dicts with
    a 91- or 1000-class ``fc``, ignored), deeplab-pytorch checkpoints (``base.*``), this
    project's checkpoints of this protocol (``{"model": ...}``), torchvision ResNet state
    dicts (keys mapped; note the stride sits in the 3x3 conv in torchvision's ResNet, so
    the network computes a slightly different function from the one those weights were
    trained in). Returns the detected format. Loading less than the whole backbone, or
    tensors of other shapes, raises :class:`InitError` naming the file and the keys.
    """
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise InitError(f"segmentation.init: {path} not found (give a deeplab-pytorch init "
                        f"file, a deeplab-pytorch checkpoint, a torchvision ResNet or "
                        f"'imagenet')")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (pickles, truncated files)
        raise InitError(f"{path}: not a torch state dict ({type(e).__name__}: {e})") from None
    return load_init_state(model, state, path, log)


def load_init_state(model: MSC, state, path, log=print) -> str:
    """:func:`load_init` for a state already in memory; ``path`` names it in messages."""
    own = isinstance(state, dict) and isinstance(state.get("model"), dict) and "config" in state
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not state:
        raise InitError(f"{path}: holds no state dict")
    fmt = detect_format(state)
    if own and fmt.startswith("deeplab-pytorch checkpoint"):
        fmt = "clipes checkpoint (deeplab-pytorch protocol, base.*)"
    if fmt == "unknown":
        raise InitError(f"{path}: unknown init format (first keys {list(state)[:4]}); expected "
                        f"deeplab-pytorch's converted init (layer1.conv1.conv.weight, ...), a "
                        f"deeplab-pytorch checkpoint (base.*) or a torchvision ResNet (conv1.weight, "
                        f"layer1.0.*)")
    if fmt.startswith("clipes torchvision"):
        raise InitError(f"{path}: a checkpoint of segmentation.protocol 'torchvision' (keys "
                        f"backbone.*); it does not fit the deeplab-pytorch network: train with "
                        f"protocol 'torchvision' or give a deeplab-pytorch / ResNet init")
    if "base.*" in fmt:
        state = OrderedDict((k[5:], v) for k, v in state.items() if k.startswith("base."))
    elif fmt == "torchvision ResNet":
        state = _torchvision_to_deeplab(state)
    backbone = {k: v for k, v in state.items() if k.startswith("layer")}
    target = model.base.state_dict()
    want = [k for k in target if k.startswith("layer")]
    missing = [k for k in want if k not in backbone]
    if missing:
        raise InitError(f"{path} ({fmt}) lacks {len(missing)} of the {len(want)} backbone "
                        f"tensors, first {missing[:3]}: it is for another network depth "
                        f"(segmentation.backbone / blocks) or not a full backbone")
    bad = [k for k in want if tuple(backbone[k].shape) != tuple(target[k].shape)]
    if bad:
        k = bad[0]
        raise InitError(f"{path} ({fmt}): {k} has shape {tuple(backbone[k].shape)}, the network "
                        f"needs {tuple(target[k].shape)}")
    extra = {k: v for k, v in state.items() if k.startswith("aspp.")}
    load = {k: backbone[k] for k in want}
    aspp_shapes_fit = extra and all(k in target and tuple(v.shape) == tuple(target[k].shape)
                                    for k, v in extra.items())
    if aspp_shapes_fit:
        load.update(extra)  # a checkpoint of the same class count: keep its head too
    model.base.load_state_dict(load, strict=False)
    log(f"init from {path}: {fmt}; {len(want)} backbone tensors"
        + (", ASPP head too" if aspp_shapes_fit else ", head freshly initialised"))
    return fmt


def output_size(h: int, w: int) -> tuple[int, int]:
    """Logit grid of an H x W input (stride-2 conv, ceil-mode pool, stride-2 reduce)."""
    def f(n):
        n = (n + 2 * 3 - 7) // 2 + 1  # conv1
        n = math.ceil((n + 2 - 3) / 2) + 1  # pool, ceil mode
        return (n - 1) // 2 + 1  # layer3 reduce (1x1, stride 2)
    return f(h), f(w)
