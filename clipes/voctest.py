"""PASCAL VOC 2012 test: the images of the test archive and the evaluation server's layout.

The test archive (``VOC2012test.tar``) unpacks to ``VOCdevkit/VOC2012/`` with
``JPEGImages/`` and ``ImageSets/Segmentation/test.txt`` (1,456 ids); it has no masks, so
the numbers come from the server. A submission is a tar.gz holding one palette PNG per
test image, values 0 (background) to 20, at::

    results/VOC2012/Segmentation/comp6_test_cls/<id>.png

``comp6`` is the server's competition for methods trained with data beyond VOC's own
(CLIP's pre-training counts; ``comp5`` is VOC data only).
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from .datasets import Sample, image_size_hw
from .errors import DatasetError
from .manifest import read_split_lines

COMPETITION = "comp6"
LAYOUT = f"results/VOC2012/Segmentation/{COMPETITION}_test_cls"
N_CLASSES = 21  # background + the 20 VOC classes
TEST_TAR = "VOC2012test.tar (the PASCAL VOC evaluation server's test images)"


def test_samples(root, split) -> list[Sample]:
    """Every id of the split as a sample without labels: ROOT/JPEGImages/<id>.jpg."""
    root = Path(root)
    if not (root / "JPEGImages").is_dir():
        raise DatasetError(f"{root / 'JPEGImages'} not found: unpack {TEST_TAR} and set "
                           f"dataset.test_root to its VOCdevkit/VOC2012 folder")
    out = []
    for r, (line, row) in enumerate(read_split_lines(split)):
        img = root / "JPEGImages" / f"{row[0]}.jpg"
        if not img.is_file():
            raise DatasetError(f"{split}:{line}: id {row[0]!r} has no image {img}; unpack "
                               f"{TEST_TAR} again")
        out.append(Sample(row[0], img, (), image_size_hw(img), None, r))
    return out


def _checked_png(path: Path, iid: str) -> bytes:
    """The prediction as the server wants it: a palette (or grey) PNG of values 0..20."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DatasetError(f"{path}: mode {im.mode}, expected a palette PNG of labels")
            values = np.unique(np.asarray(im))
    except OSError as e:
        raise DatasetError(f"{path}: unreadable prediction ({e}); rerun the prediction") from e
    bad = [int(v) for v in values if v >= N_CLASSES]
    if bad:
        raise DatasetError(f"{path}: label values {bad} beyond the 21 VOC classes (the server "
                           f"takes 0..20; no 255)")
    return path.read_bytes()


def write_submission(pred_dir, split, tar_path) -> dict:
    """The server's tar.gz of the predictions of every id of the split, byte for byte the
    same for the same predictions (sorted members, no file times, no owner names)."""
    from .io import atomic_path

    pred_dir = Path(pred_dir)
    ids = [row[0] for _, row in read_split_lines(split)]
    missing = [i for i in ids if not (pred_dir / f"{i}.png").is_file()]
    if missing:
        raise DatasetError(f"{pred_dir}: no prediction for {missing[0]} (and {len(missing) - 1} "
                           f"more of {split}); rerun the test prediction")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for part in ("results", "results/VOC2012", "results/VOC2012/Segmentation", LAYOUT):
            info = tarfile.TarInfo(part)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for iid in sorted(ids):
            data = _checked_png(pred_dir / f"{iid}.png", iid)
            info = tarfile.TarInfo(f"{LAYOUT}/{iid}.png")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    with atomic_path(tar_path, suffix=".tar.gz") as tmp:
        with open(tmp, "wb") as f, gzip.GzipFile(filename="", fileobj=f, mode="wb", mtime=0) as gz:
            gz.write(raw.getvalue())
    return {"images": len(ids), "tarball": str(tar_path), "layout": LAYOUT}
