"""Background score, argmax labels, dense CRF and confidence masks (CLIP-ES Stage 4).

Reference recipe (authors' ``eval_cam_with_crf.py``): probabilities
``[(1 - max_k cam_k)^1 ; cams]`` kept in float16, unary ``-log(clip(p, 1e-5, 1))``,
DenseCRF2D with Gaussian (sxy 1, compat 3) and bilateral (sxy 67, srgb 3, compat 4)
kernels, 10 iterations, on the BGR image minus the Caffe means cast to uint8 (wrapping).
Pixels whose max CRF probability is below 0.95 become 255 (confidence-guided ignore).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DatasetError
from .io import IGNORE
BGR_MEAN = (104.008, 116.669, 122.675)  # subtracted from B, G, R before the CRF


@dataclass(frozen=True)
class CrfParams:
    iterations: int = 10
    gaussian_sxy: float = 1
    gaussian_compat: float = 3
    bilateral_sxy: float = 67
    bilateral_srgb: float = 3
    bilateral_compat: float = 4
    bg_power: float = 1  # background score power used for the CRF input
    confidence: float = 0.95  # max probability below which a pixel is ignored (CGL)
    image_input: str = "reference"  # "reference" (BGR - mean, wrapped) | "rgb" (plain RGB)


def background_score(cams: np.ndarray, power: float) -> np.ndarray:
    """(1 - max_k cam_k) ** power, in the dtype of ``cams`` (float16 in the reference).
    cams (K, H, W) -> (1, H, W)."""
    return np.power(1 - np.max(cams, axis=0, keepdims=True), cams.dtype.type(power))


def with_background(cams: np.ndarray, power: float) -> np.ndarray:
    """[background; cams], what the labels and the CRF are computed from, in the dtype of
    ``cams``. cams (K, H, W) -> (1 + K, H, W)."""
    return np.concatenate([background_score(cams, power), cams], axis=0)


def argmax_labels(keys: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Argmax labels of scores (1 + K, H, W) laid out as :func:`with_background`: 0 or
    keys[k] + 1 (first maximum wins, so the background wins ties). -> (H, W) int64."""
    lut = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1])
    return lut[np.argmax(scores, axis=0)]


def cam_labels(keys: np.ndarray, cams: np.ndarray, power: float) -> np.ndarray:
    """Argmax labels of [background; cams]. cams (K, H, W) -> (H, W) int64."""
    return argmax_labels(keys, with_background(cams, power))


def crf_image(path) -> np.ndarray:
    """The reference's CRF image: BGR (as cv2.imread), minus BGR_MEAN, cast to uint8 with
    wrap-around (truncate toward zero, then mod 256, as numpy does on x86-64).
    Returns (H, W, 3) uint8, C-contiguous."""
    from .datasets import open_image

    with open_image(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
    bgr = rgb[..., ::-1] - np.asarray(BGR_MEAN, dtype=np.float32)
    return np.ascontiguousarray(np.mod(np.trunc(bgr).astype(np.int64), 256).astype(np.uint8))


def rgb_image(path) -> np.ndarray:
    """Plain RGB uint8 image (the ``image_input: rgb`` improvement)."""
    from .datasets import open_image

    with open_image(path) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def image_for(path, image_input: str) -> np.ndarray:
    """The CRF's image of ``path`` as ``CrfParams.image_input`` asks: "reference" (BGR minus
    the Caffe means, wrapped) or "rgb". (H, W, 3) uint8."""
    return crf_image(path) if image_input == "reference" else rgb_image(path)


def dense_crf(image: np.ndarray, probs: np.ndarray, p: CrfParams = CrfParams()) -> np.ndarray:
    """Mean-field dense CRF. image (H, W, 3) uint8; probs (L, H, W) (float16 in the
    reference; not renormalised). Returns Q (L, H, W) float32."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    n_labels, h, w = probs.shape
    if image.shape[:2] != (h, w):
        raise DatasetError(f"CRF image is {image.shape[1]}x{image.shape[0]} but the CAMs are "
                         f"{w}x{h}")
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    d.addPairwiseGaussian(sxy=p.gaussian_sxy, compat=p.gaussian_compat)
    d.addPairwiseBilateral(sxy=p.bilateral_sxy, srgb=p.bilateral_srgb,
                           rgbim=np.ascontiguousarray(image), compat=p.bilateral_compat)
    q = d.inference(p.iterations)
    return np.asarray(q, dtype=np.float32).reshape(n_labels, h, w)


def crf_pseudo_mask(image: np.ndarray, keys: np.ndarray, cams: np.ndarray,
                    p: CrfParams = CrfParams()):
    """CRF labels and the confidence-masked pseudo mask of one image.

    cams (K, H, W) float16 as stored. Returns (labels (H, W) uint8 before the ignore
    step, pseudo mask (H, W) uint8 with 255 where max Q < p.confidence, max Q (H, W)).
    """
    cams = np.asarray(cams)
    probs = with_background(cams, p.bg_power)
    q = dense_crf(image, probs, p)
    labels = argmax_labels(keys, q).astype(np.uint8)  # q is laid out as [background; cams]
    conf = q.max(axis=0)
    return labels, confidence_mask(labels, conf, p.confidence), conf


def confidence_mask(labels: np.ndarray, conf: np.ndarray, threshold: float) -> np.ndarray:
    """Labels with pixels of confidence below ``threshold`` set to 255."""
    out = np.asarray(labels, dtype=np.uint8).copy()
    out[conf < threshold] = IGNORE
    return out
