"""The torchvision-protocol DeepLabV2 and how either protocol's network is built and
initialised.

- :class:`DeepLabV2`: ResNet-101 (or -50) backbone at output stride 8 (dilated layer3/4)
  and the ASPP head of DeepLabV2 (four 3x3 convolutions, rates 6/12/18/24, summed); a
  ``tiny`` backbone for the demo and tests.
- :func:`build_model`: the network of a :class:`~.config.TrainConfig` (either protocol) and
  its initialisation (torchvision ImageNet, deeplab-pytorch's converted Caffe init, or none),
  :func:`describe_init` what the report says about it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import DatasetError
from .config import PROTOCOLS, TrainConfig

ASPP_RATES = (6, 12, 18, 24)


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
