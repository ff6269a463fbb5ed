"""A tiny custom dataset and config for the fault suite (tests/test_faults*.py)."""

from pathlib import Path

import numpy as np
from PIL import Image

from conftest import golden_dir

CLASSES = ["cat", "dog"]


def draw(rng, h=48, w=64):
    """An image with one or two coloured boxes and its mask (0 bg, 1 cat, 2 dog)."""
    img = np.full((h, w, 3), 40, np.uint8) + rng.integers(0, 30, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    labels = []
    for k, colour in ((1, (220, 60, 40)), (2, (40, 80, 220))):
        if rng.random() < 0.7 or (k == 2 and not labels):
            y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
            img[y:y + h // 2, x:x + w // 2] = colour
            mask[y:y + h // 2, x:x + w // 2] = k
            labels.append(CLASSES[k - 1])
    return img, mask, labels


def make_custom(root: Path, n_train=8, n_val=3, seed=0, masks=True) -> Path:
    """ROOT/images/*.jpg, ROOT/masks/*.png, ROOT/labels.csv, ROOT/val.txt."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rows = ["image,labels"]
    ids = [f"im{i:02d}" for i in range(n_train + n_val)]
    for iid in ids:
        img, mask, labels = draw(rng)
        Image.fromarray(img).save(root / "images" / f"{iid}.jpg", quality=92)
        if masks:
            Image.fromarray(mask).save(root / "masks" / f"{iid}.png")
        rows.append(f"{iid}.jpg,{';'.join(labels)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "train.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (root / "val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    return root


def custom_config(root: Path, name="faulty", seg=True, shards=2) -> dict:
    return {
        "dataset": {"name": name, "kind": "custom", "root": str(root),
                    "labels": str(root / "labels.csv"), "train_split": "train.txt",
                    "val_split": "val.txt", "classes": CLASSES,
                    "background": ["ground", "wall"]},
        "model": {"checkpoint": str(golden_dir() / "clip_tiny.pt")},
        "cam": {"mode": "batched", "device": "cpu", "shards": shards},
        "crf": {"shards": shards, "threads": 1},
        "segmentation": {"enabled": seg, "protocol": "torchvision", "backbone": "tiny",
                         "init": None, "iterations": 6, "batch_size": 2, "crop": 32,
                         "checkpoint_every": 2, "device": "cpu", "test_scales": [1.0],
                         "workers": 0},
        "report": {"gallery": 2},
        "variants": {"base": {}},
    }
