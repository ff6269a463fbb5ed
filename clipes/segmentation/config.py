"""The segmentation stage's training options (:class:`TrainConfig`) and its two named
training protocols: ``torchvision`` (this project's DeepLabV2 on torchvision's ResNet) and
``deeplab-pytorch`` (kazuto1011/deeplab-pytorch's Caffe-layout DeepLabV2 with MSC, the
authors' stage 3)."""

from __future__ import annotations

from dataclasses import dataclass


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
    # "deeplab-pytorch" (the paper's: .deeplab) or "torchvision" (.model's DeepLabV2)
    protocol: str = "torchvision"
    blocks: tuple | None = None  # deeplab-pytorch: ResNet block counts (default from backbone)
    iter_size: int = 1  # deeplab-pytorch: sub-batches accumulated per iteration
    scales: tuple = (0.5, 0.75, 1.0, 1.25, 1.5)  # deeplab-pytorch: training scales
    class_balanced: bool = False  # median-frequency class weights in the cross-entropy


PROTOCOLS = ("deeplab-pytorch", "torchvision")
