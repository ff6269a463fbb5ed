#!/usr/bin/env python
"""Evaluate CAMs (--cams) or label PNGs (--masks) against ground truth: mIoU as JSON.

CAMs are scored at each background power (--powers); picking the best one looks at the
ground truth, so the chosen power is reported as an ORACLE choice (as the reference does).
For masks, 255 (ignored) predictions are left out and their share reported as coverage.

Example:
    python scripts/evaluate.py --dataset voc12 --root data/VOC2012 --split train.txt \\
        --cams results/cams --out results/eval_cams.json
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipes import cli, io, metrics  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    cli.add_dataset_args(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--cams", type=Path, nargs="+", help="folder(s) of <id>.npz CAM archives")
    what.add_argument("--masks", type=Path, nargs="+", help="folder(s) of <id>.png label maps")
    p.add_argument("--cam-key", default="cams", choices=["cams", "cams_plain"],
                   help="cams_plain: the Grad-CAM before CAA (archives written with --keep-plain)")
    p.add_argument("--powers", type=float, nargs="+", default=[1, 2],
                   help="background powers to try for CAMs (default 1 2)")
    p.add_argument("--out", required=True, type=Path, help="metrics JSON")
    return p.parse_args(argv)


def split_info(split, n_images: int, n_scored: int) -> dict:
    """What a number is measured on: the split's name (its file's stem: train, train_aug,
    val, ...; 'all rows' of a label table without a split file) and its image counts."""
    name = Path(split).stem if split else "all rows"
    return {"name": name, "file": str(split) if split else None, "n_images": n_images,
            "n_scored": n_scored}


def main(argv=None):
    args = parse_args(argv)
    ds = cli.dataset_from_args(args, labels_optional=True)  # masks optional image by image
    scored = [s for s in ds.samples if s.gt is not None]
    what = args.cam_key if args.cams is not None else "masks"
    if not scored and ds.name in ("voc12", "coco14"):
        raise cli.datasets.DatasetError(
            f"no ground-truth mask for any of the {len(ds.samples)} images of {args.split} "
            f"under {args.root}: the converted layout keeps them in SegmentationClassAug/ "
            f"(VOC12) or SegmentationClass/ (COCO14); see the README, 'Reproducing VOC12'")
    powers = [int(p) if float(p).is_integer() else p for p in args.powers]
    if not scored:
        res = {"what": what, "mIoU": None, "n_images": 0,
               "note": "no ground-truth masks: nothing to score"}
    elif args.cams is not None:
        res = metrics.evaluate_cam_dir(scored, args.cams, ds.n_classes, powers, args.cam_key)
    else:
        res = metrics.evaluate_mask_dir(scored, args.masks, ds.n_classes)
    res["what"] = what
    res["split"] = split_info(args.split, len(ds.samples), len(scored))
    res["n_without_gt"] = len(ds.samples) - len(scored)
    res["dataset"] = ds.name
    res["class_names"] = ds.class_names
    res["skipped"] = ds.skipped
    io.write_json(args.out, res)
    head = res["at_chosen"]["mIoU"] if "at_chosen" in res else res["mIoU"]
    without = f", {res['n_without_gt']} without a mask left out" if res["n_without_gt"] else ""
    score = "no mIoU" if head is None else f"mIoU {100 * head:.2f}"
    print(f"{score} ({what}, {len(scored)} images{without}) -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main, fast_exit=True)
