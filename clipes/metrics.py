"""Segmentation metrics with the reference semantics.

One confusion matrix accumulated over all pixels of a split (ground truth 255 ignored);
IoU = TP / (TP + FP + FN) per class; mIoU averages the classes that occur in the ground
truth (a class seen only in predictions gets IoU 0 but is not averaged; a class absent
from both has no IoU).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .io import IGNORE


class ConfusionMatrix:
    """Accumulates hist[gt, pred] over images. n_classes includes background (class 0)."""

    def __init__(self, n_classes: int):
        self.n = int(n_classes)
        self.hist = np.zeros((self.n, self.n), dtype=np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> "ConfusionMatrix":
        gt = np.asarray(gt).ravel().astype(np.int64)
        pred = np.asarray(pred).ravel().astype(np.int64)
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth has {gt.size} pixels, prediction {pred.size}")
        valid = (gt >= 0) & (gt < self.n)  # drops 255 and out-of-range ids
        pred_v = np.where((pred >= 0) & (pred < self.n), pred, 0)[valid]
        self.hist += np.bincount(self.n * gt[valid] + pred_v,
                                 minlength=self.n ** 2).reshape(self.n, self.n)
        return self

    def __iadd__(self, other: "ConfusionMatrix"):
        self.hist += other.hist
        return self

    def scores(self) -> dict:
        return scores_from_hist(self.hist)


def scores_from_hist(hist: np.ndarray) -> dict:
    """Scores of a confusion matrix hist[gt, pred] (None where undefined), and the matrix.

    Per class c, with TP, FP (predicted c, not c), FN (c, predicted otherwise) and the
    union U = TP + FP + FN: IoU = TP / U, precision = TP / (TP + FP), recall = TP / (TP +
    FN), and the false-positive and false-negative ratios FP / U and FN / U of WSSS papers
    (IoU + FP ratio + FN ratio = 1). The means average the classes present in the ground
    truth, as mIoU does (the reference's mean)."""
    counts = np.asarray(hist, dtype=np.int64)
    hist = counts.astype(np.float64)
    tp = np.diag(hist)
    gt_count = hist.sum(axis=1)
    pred_count = hist.sum(axis=0)
    union = gt_count + pred_count - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / union
        acc_cls = tp / gt_count
        precision = tp / pred_count
        fp_ratio = (pred_count - tp) / union
        fn_ratio = (gt_count - tp) / union
    in_gt = gt_count > 0
    total = hist.sum()

    def per_class(v):
        return {i: (None if np.isnan(x) else float(x)) for i, x in enumerate(v)}

    def mean(v):
        v = v[in_gt]
        return float(np.nanmean(v)) if in_gt.any() and not np.isnan(v).all() else None

    return {
        "mIoU": float(np.nanmean(iou[in_gt])) if in_gt.any() else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total else float("nan"),
        "mean_class_acc": float(np.nanmean(acc_cls[in_gt])) if in_gt.any() else float("nan"),
        "mean_precision": mean(precision), "mean_recall": mean(acc_cls),
        "fp_ratio": mean(fp_ratio), "fn_ratio": mean(fn_ratio),
        "class_iou": per_class(iou),
        "class_precision": per_class(precision), "class_recall": per_class(acc_cls),
        "class_fp_ratio": per_class(fp_ratio), "class_fn_ratio": per_class(fn_ratio),
        "n_pixels": int(total),
        "confusion": counts.tolist(),  # [ground truth][prediction] pixel counts
    }


def evaluate(pairs: Iterable[tuple[np.ndarray, np.ndarray]], n_classes: int) -> dict:
    cm = ConfusionMatrix(n_classes)
    for gt, pred in pairs:
        cm.update(gt, pred)
    return cm.scores()


def bg_power_sweep(per_power: dict[float, dict]) -> dict:
    """Pick the background power with the best mIoU (a strictly larger value wins, so the
    first power listed wins ties). This looks at ground truth: an ORACLE choice."""
    best = None
    for p, s in per_power.items():
        if best is None or s["mIoU"] > per_power[best]["mIoU"]:
            best = p
    return {
        "by_power": {str(p): s["mIoU"] for p, s in per_power.items()},
        "chosen_power": best,
        "chosen_is_oracle": True,
        "at_chosen": per_power[best],
        # each power's matrix, so any score of any power can be derived later
        "confusion_by_power": {str(p): s["confusion"] for p, s in per_power.items()
                               if "confusion" in s},
    }


def evaluate_cam_dir(samples, cam_dirs, n_classes: int, powers=(1, 2), key: str = "cams",
                     load=None) -> dict:
    """mIoU of CAM archives at each background power, and the oracle choice.

    Labels = argmax of [(1 - max cam)^p ; cams] computed in float16 as the reference.
    ``load(sample) -> (keys, cams)`` reads another format (default: ``<id>.npz`` of
    ``cam_dirs``, its ``key`` array).
    """
    from .crf import cam_labels
    from .datasets import load_gt
    from .camstore import load_cams

    if load is None:
        def load(s):
            return load_cams(find_file(cam_dirs, f"{s.id}.npz"), key)
    cms = {p: ConfusionMatrix(n_classes) for p in powers}
    for s in samples:
        keys, cams = load(s)
        gt = load_gt(s, cams.shape[1:], n_classes)
        for p in powers:
            cms[p].update(gt, cam_labels(keys, cams, p))
    out = bg_power_sweep({p: cm.scores() for p, cm in cms.items()})
    out["n_images"] = len(samples)
    return out


def evaluate_mask_dir(samples, mask_dirs, n_classes: int) -> dict:
    """mIoU of label PNGs. Predicted 255 (ignored, low confidence) pixels are left out of
    the confusion matrix; ``coverage`` is the fraction of valid ground-truth pixels that
    carry a label."""
    from .datasets import load_gt
    from .io import load_mask

    cm = ConfusionMatrix(n_classes)
    labelled = valid = 0
    for s in samples:
        pred = load_mask(find_file(mask_dirs, f"{s.id}.png"))
        gt = load_gt(s, pred.shape, n_classes).copy()
        ok = gt != IGNORE
        valid += int(ok.sum())
        keep = pred != IGNORE
        labelled += int((ok & keep).sum())
        gt[~keep] = IGNORE
        cm.update(gt, pred)
    out = cm.scores()
    out["coverage"] = labelled / valid if valid else float("nan")
    out["n_images"] = len(samples)
    return out


def find_file(dirs, name: str):
    """``name`` in the first of ``dirs`` (one folder or a list: the shards of a stage)."""
    from pathlib import Path

    dirs = [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
    for d in dirs:
        p = Path(d) / name
        if p.is_file():
            return p
    raise FileNotFoundError(f"{name} not found in {', '.join(map(str, dirs))}: rerun the stage "
                            f"that writes it")
