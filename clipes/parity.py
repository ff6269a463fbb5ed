"""Agreement of two CAM runs that cannot be bit-exact.

A GPU, reduced precision or another thread count changes float rounding, and with weights
whose refined maps are nearly flat, min-max normalisation turns one ulp of a raw map into
a visible difference of the output: a max-abs bound on the maps then demands bit-exact
arithmetic. What a user depends on is the labels the maps give and the score they reach,
so runs are compared on three levels:

- ``max_abs``: the largest map difference (reported, bounded only for fp32 runs);
- label agreement: the share of pixels whose CAM label (argmax of the background score
  and the maps, :func:`clipes.crf.cam_labels`) is the same, at each background power;
- mIoU against ground truth, where the images have masks.

:data:`BOUNDS` are the bounds the README's parity table states for such runs.

Both the project's archives (``<id>.npz`` with ``keys``, ``cams``) and the authors' files
(``<id>.npy``: a pickled dict with ``keys``, ``attn_highres``, read without running pickle
code) are read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DatasetError

BOUNDS = {
    "label_agreement": 0.999,  # share of pixels with the same CAM label, at every power
    "miou_abs": 5e-4,  # |mIoU a - mIoU b|: equal to 3 decimals
}


def read_cam_file(path) -> tuple[np.ndarray, np.ndarray]:
    """(keys (K,) int64, cams (K, H, W) float16) of an archive of either kind."""
    from .camstore import load_authors_npy, load_cams

    path = Path(path)
    return load_authors_npy(path) if path.suffix == ".npy" else load_cams(path)


def find_cam_file(folder, image_id: str) -> Path:
    for suffix in (".npz", ".npy"):
        p = Path(folder) / f"{image_id}{suffix}"
        if p.is_file():
            return p
    raise DatasetError(f"no CAM file for {image_id} in {folder} (looked for .npz and .npy)")


def compare_image(a, b, powers=(1, 2)) -> dict:
    """a, b: (keys, cams) of one image. Returns max_abs, the pixel count and, per power,
    the number of pixels with the same label."""
    (ka, ca), (kb, cb) = a, b
    if not np.array_equal(ka, kb):
        raise DatasetError(f"the two runs have different labels for an image: {ka.tolist()} "
                           f"vs {kb.tolist()}")
    if ca.shape != cb.shape:
        raise DatasetError(f"map shapes differ: {ca.shape} vs {cb.shape}")
    from .crf import cam_labels

    diff = np.abs(ca.astype(np.float32) - cb.astype(np.float32))
    out = {"max_abs": float(diff.max()) if diff.size else 0.0,
           "mean_abs": float(diff.mean()) if diff.size else 0.0,
           "pixels": int(np.prod(ca.shape[1:]))}
    for p in powers:
        out[f"same_{p}"] = int((cam_labels(ka, ca, p) == cam_labels(kb, cb, p)).sum())
    return out


def compare_runs(dir_a, dir_b, ids, powers=(1, 2), samples=None, n_classes=None) -> dict:
    """Compare two CAM folders image by image. With ``samples`` (dataset samples with
    ground truth) and ``n_classes``, also the mIoU of each run at each power."""
    rows = {}
    for iid in ids:
        rows[iid] = compare_image(read_cam_file(find_cam_file(dir_a, iid)),
                                  read_cam_file(find_cam_file(dir_b, iid)), powers)
    if not rows:
        raise DatasetError(f"no images to compare in {dir_a} and {dir_b}")
    pixels = sum(r["pixels"] for r in rows.values())
    out = {"images": len(rows), "pixels": pixels,
           "max_abs": max(r["max_abs"] for r in rows.values()),
           "mean_abs": sum(r["mean_abs"] * r["pixels"] for r in rows.values()) / pixels,
           "label_agreement": {}, "worst_image": {}}
    for p in powers:
        out["label_agreement"][str(p)] = sum(r[f"same_{p}"] for r in rows.values()) / pixels
        worst = min(rows, key=lambda i: rows[i][f"same_{p}"] / rows[i]["pixels"])
        out["worst_image"][str(p)] = {"id": worst,
                                      "agreement": rows[worst][f"same_{p}"] / rows[worst]["pixels"]}
    if samples:
        out["miou"] = {"a": _miou(samples, dir_a, n_classes, powers),
                       "b": _miou(samples, dir_b, n_classes, powers)}
    return out


def _miou(samples, folder, n_classes, powers) -> dict:
    from .metrics import evaluate_cam_dir

    res = evaluate_cam_dir(samples, folder, n_classes, powers,
                           load=lambda s: read_cam_file(find_cam_file(folder, s.id)))
    return res["by_power"]


def check(summary: dict, bounds: dict = BOUNDS) -> dict:
    """Which bound holds: {'label_agreement': bool, 'miou_abs': bool (when scored)}."""
    out = {"label_agreement": min(summary["label_agreement"].values()) >= bounds["label_agreement"]}
    if "miou" in summary:
        a, b = summary["miou"]["a"], summary["miou"]["b"]
        out["miou_abs"] = all(abs(a[p] - b[p]) < bounds["miou_abs"] for p in a)
    return out
