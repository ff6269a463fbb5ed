"""What a report reads from a run's results folder: evaluation JSONs, Snakemake benchmark
files, the prompt ranking, and the images, masks and CAMs of the galleries (best and worst
by per-image IoU); the trivial baselines scored on the ground truth."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import IGNORE, load_mask


@dataclass
class RunInputs:
    variant: str
    dataset: dict  # dataset.json
    config: dict  # the variant's effective config
    evals: dict[str, dict | None]  # stage name -> metrics JSON (None: not run)
    benchmark_dirs: list[Path] = field(default_factory=list)
    train_log: Path | None = None
    prompts: Path | None = None  # prompt-selection table (TSV)
    seg_info: dict | None = None  # train_info.json: protocol, init, whether it is the paper's


def stage_evals(evals: dict, config: dict) -> dict:
    """The evaluations a run report shows. With ``cam.caa`` false the CAA stage's maps are
    the initial CAM's, so their evaluation is not a CAA number: it is left out, and every
    table says the stage is off (the initial CAM row keeps the number)."""
    if (config.get("cam") or {}).get("caa", True) is False:
        return {k: v for k, v in evals.items() if k != "cams"}
    return dict(evals)


def load_json(path) -> dict | None:
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else None


def read_benchmarks(dirs: list) -> pd.DataFrame:
    """Snakemake benchmark TSVs in ``dirs``; an entry ``DIR:rule1,rule2`` reads only those
    rules' files (shards, ``<rule><i>.tsv``, included)."""
    rows = []
    for entry in dirs:
        d, _, only = str(entry).partition(":")
        only = set(only.split(",")) if only else None
        for f in sorted(Path(d).glob("*.tsv")):
            rule = f.stem.rstrip("0123456789")
            if only is not None and rule not in only:
                continue
            b = pd.read_csv(f, sep="\t")
            if b.empty:
                continue
            rows.append({"rule": rule, "wall_s": float(b["s"].iloc[-1]),
                         "cpu_s": float(pd.to_numeric(b.get("cpu_time", pd.Series([np.nan])),
                                                      errors="coerce").iloc[-1]),
                         "max_rss_mb": float(pd.to_numeric(b.get("max_rss", pd.Series([np.nan])),
                                                           errors="coerce").iloc[-1])})
    return pd.DataFrame(rows, columns=["rule", "wall_s", "cpu_s", "max_rss_mb"])


def per_image_iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """Mean IoU over the classes present in this image's ground truth (255 ignored)."""
    ok = gt != IGNORE
    vals = []
    for c in np.unique(gt[ok]):
        inter = np.sum((gt == c) & (pred == c) & ok)
        union = np.sum(((gt == c) | (pred == c)) & ok)
        vals.append(inter / union if union else 0.0)
    return float(np.mean(vals)) if vals else float("nan")


def _best_and_worst(scored: list, n: int) -> list:
    scored.sort(key=lambda t: (np.nan_to_num(t[0], nan=-1), t[1].id))
    return scored[-n:][::-1] + [t for t in scored[:n] if t not in scored[-n:]]


def _ranked_masks(samples, mask_dirs, n: int) -> list:
    """(IoU, sample, mask) of the n best and n worst images by per-image IoU of their mask
    PNG (first of ``mask_dirs`` holding it) against the ground truth. Only the paths of
    the others are kept while scoring: the chosen 2n masks are read again, not every
    image's mask held in memory."""
    from ..datasets import load_gt
    from ..metrics import find_file

    scored = []
    for s in samples:
        if s.gt is None:
            continue
        try:
            path = find_file(mask_dirs, f"{s.id}.png")
        except FileNotFoundError:
            continue
        mask = load_mask(path)
        scored.append((per_image_iou(load_gt(s, mask.shape), mask), s, path))
    return [(iou, s, load_mask(path)) for iou, s, path in _best_and_worst(scored, n)]


def gallery_items(samples, pseudo_dirs, cam_dirs, n: int) -> list[dict]:
    """The n best and n worst training images by per-image IoU of their pseudo masks."""
    from ..camstore import load_cams
    from ..datasets import load_gt
    from ..metrics import find_file
    from ..segmentation import load_rgb

    if n <= 0 or not samples:
        return []
    items = []
    for iou, s, pseudo in _ranked_masks(samples, pseudo_dirs, n):
        _, cams = load_cams(find_file(cam_dirs, f"{s.id}.npz"))
        items.append({"image": load_rgb(s.image), "gt": load_gt(s, pseudo.shape),
                      "cam": cams.astype(np.float32).max(0), "pseudo": pseudo,
                      "title": f"{s.id}: IoU {100 * iou:.1f}"})
    return items


def val_gallery_items(samples, pred_dirs, n: int) -> list[dict]:
    """The n best and n worst validation images by per-image IoU of the final model's
    predictions."""
    from ..datasets import load_gt
    from ..segmentation import load_rgb

    if n <= 0 or not samples or not pred_dirs:
        return []
    return [{"image": load_rgb(s.image), "gt": load_gt(s, pred.shape), "pred": pred,
             "title": f"{s.id}: IoU {100 * iou:.1f}"}
            for iou, s, pred in _ranked_masks(samples, pred_dirs, n)]


def prompt_rows(path, top: int = 10) -> list[dict] | None:
    """The prompt-selection ranking (least sharp first), top rows and the last one."""
    if not path or not Path(path).is_file():
        return None
    t = pd.read_csv(path, sep="\t")
    rows = t.head(top).to_dict("records")
    if len(t) > top:
        rows.append(t.iloc[-1].to_dict())
    return rows


def trivial_baselines(samples, n_classes: int) -> dict:
    """mIoU of predictions that need no model: all background, and a centre box (half
    the image) labelled with the image's first class. Shows how much signal there is."""
    from ..datasets import load_gt
    from ..metrics import ConfusionMatrix

    bg, box = ConfusionMatrix(n_classes), ConfusionMatrix(n_classes)
    for s in samples:
        if s.gt is None:
            continue
        gt = load_gt(s)
        h, w = gt.shape
        bg.update(gt, np.zeros_like(gt))
        pred = np.zeros_like(gt)
        pred[h // 4: h - h // 4, w // 4: w - w // 4] = s.keys[0] + 1
        box.update(gt, pred)
    return {"all background": bg.scores()["mIoU"], "centre box, first label": box.scores()["mIoU"]}
