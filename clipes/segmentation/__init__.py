"""Segmentation stage (CLIP-ES stage 3): DeepLabV2 trained on the pseudo masks with the
confidence-guided loss, then inference and evaluation on val.

One concept per module:

- :mod:`.config`: :class:`TrainConfig` and the two training protocols (``PROTOCOLS``);
- :mod:`.model`: the torchvision-protocol DeepLabV2, building and initialising either
  protocol's network;
- :mod:`.deeplab`: the deeplab-pytorch protocol (Caffe-layout ResNet, MSC, its loss,
  parameter groups, schedule and init formats), matching kazuto1011/deeplab-pytorch;
- :mod:`.loss`: the confidence-guided loss;
- :mod:`.data`: training items, decoding, augmentation, the per-iteration batch stream;
- :mod:`.checkpoints`: data-only loading, resume state, the loss log and its plot;
- :mod:`.train`: the training loop;
- :mod:`.infer`: a trained model under the two test protocols (``TEST_PROTOCOLS``).

The names below are the stage's interface (``from clipes import segmentation``).
"""

from .checkpoints import load_tensors, plot_log
from .config import PROTOCOLS, TrainConfig
from .data import (TrainData, TrainItem, augment, batch_stream, deeplab_augment, load_rgb,
                   normalise, resize_bilinear)
from .infer import TEST_PROTOCOLS, load_trained, predict_for_protocol, predict_mask, predict_probs
from .loss import cgl_loss
from .model import DeepLabV2, build_model, describe_init, freeze_bn, init_backbone
from .train import PROGRESS_EVERY_S, poly_lr, train

__all__ = [
    "PROGRESS_EVERY_S", "PROTOCOLS", "TEST_PROTOCOLS", "DeepLabV2", "TrainConfig", "TrainData",
    "TrainItem", "augment", "batch_stream", "build_model", "cgl_loss", "deeplab_augment",
    "describe_init", "freeze_bn", "init_backbone", "load_rgb", "load_tensors", "load_trained",
    "normalise", "plot_log", "predict_for_protocol", "predict_mask", "predict_probs",
    "poly_lr", "resize_bilinear", "train",
]
