"""Inference with a trained model under the two named test protocols: ``msc-max``
(deeplab-pytorch's MSC, max over scales) and ``mean-softmax-flip`` (softmax averaged over
scales and flips), optional dense CRF."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DatasetError
from .checkpoints import load_tensors
from .data import normalise
from .model import DeepLabV2


def load_trained(path, device="cpu") -> nn.Module:
    """A model.pt of train(), either protocol; ``model.protocol`` says which."""
    state = load_tensors(path, device, "trained model")
    if not isinstance(state, dict) or not {"model", "config"} <= set(state):
        from ..datasets import DatasetError

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
            from ..crf import dense_crf

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
        from ..crf import dense_crf

        probs = torch.from_numpy(dense_crf(rgb, probs.numpy().astype(np.float32)))
    return probs.argmax(0).numpy().astype(np.uint8)
