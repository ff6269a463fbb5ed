"""The confidence-guided loss (CGL) of CLIP-ES's stage 3."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..io import IGNORE


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
