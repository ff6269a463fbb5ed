#!/usr/bin/env python
"""Compare two CAM runs that cannot be bit-exact (GPU vs CPU, fp16/bf16 vs fp32, other
thread counts, the authors' code vs this one): max map difference, CAM label agreement
at each background power (overall and the worst image) and, with a dataset whose images
have masks, the mIoU of each run. Prints a Markdown table and writes JSON with --out;
with --check, exits with status 1 when a bound of clipes.parity.BOUNDS fails (labels
agree on >= 99.9% of pixels at every power; mIoU equal to 3 decimals).

Folders hold <id>.npz archives of scripts/cams.py or <id>.npy files of the authors' code.

Example:
    python scripts/compare_cams.py results/cams_fp32 results/cams_bf16 \\
        --dataset voc12 --root data/VOC2012 --split data/VOC2012/ImageSets/Segmentation/train.txt
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipes import cli, io, parity  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    p.add_argument("a", type=Path, help="folder of the first run (the baseline)")
    p.add_argument("b", type=Path, help="folder of the second run")
    g = p.add_argument_group("dataset (optional: without it, the ids the first folder holds "
                             "are compared and no mIoU is computed)")
    g.add_argument("--dataset", choices=["voc12", "coco14", "custom", "synthetic"],
                   help="dataset kind (for the mIoU of each run)")
    g.add_argument("--root", type=Path, help="dataset root folder")
    g.add_argument("--split", type=Path, help="split file")
    g.add_argument("--classes", help="custom: class list (file or JSON)")
    g.add_argument("--labels", type=Path, help="custom: label CSV")
    g.add_argument("--powers", type=float, nargs="+", default=[1, 2],
                   help="background powers of the CAM labels (default 1 2)")
    p.add_argument("--out", type=Path, help="JSON summary")
    p.add_argument("--check", action="store_true", help="exit 1 when a bound fails")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for d in (args.a, args.b):
        if not d.is_dir():
            raise parity.DatasetError(f"{d}: no such folder of CAM archives")
    powers = [int(p) if float(p).is_integer() else p for p in args.powers]
    samples = n_classes = None
    if args.dataset:
        if args.root is None:
            raise parity.DatasetError("--dataset needs --root (and --split for voc12/coco14)")
        args.background, args.no_reference_quirks, args.exif = None, False, "ignore"
        ds = cli.dataset_from_args(args)
        ids = [s.id for s in ds.samples]
        samples = [s for s in ds.samples if s.gt is not None]
        n_classes = ds.n_classes
    else:
        ids = sorted({f.stem for f in args.a.iterdir() if f.suffix in (".npz", ".npy")})
    summary = parity.compare_runs(args.a, args.b, ids, powers, samples, n_classes)
    summary["bounds"] = parity.BOUNDS
    summary["holds"] = parity.check(summary)
    print(f"{summary['images']} images, {summary['pixels']} pixels: {args.a} vs {args.b}")
    print()
    print("| measure | value | bound | holds |")
    print("|---|---|---|---|")
    print(f"| max / mean abs map difference | {summary['max_abs']:.2e} / {summary['mean_abs']:.2e} | - | - |")
    for p, v in summary["label_agreement"].items():
        w = summary["worst_image"][p]
        print(f"| CAM labels equal, power {p} | {100 * v:.3f}% (worst image {100 * w['agreement']:.2f}%) "
              f"| >= {100 * parity.BOUNDS['label_agreement']:.1f}% | "
              f"{'yes' if v >= parity.BOUNDS['label_agreement'] else 'no'} |")
    if "miou" in summary:
        for p in summary["miou"]["a"]:
            a, b = summary["miou"]["a"][p], summary["miou"]["b"][p]
            print(f"| CAM mIoU, power {p} | {a:.4f} vs {b:.4f} | differ by < 0.0005 | "
                  f"{'yes' if abs(a - b) < parity.BOUNDS['miou_abs'] else 'no'} |")
    if args.out:
        io.write_json(args.out, summary)
    if args.check and not all(summary["holds"].values()):
        failed = ", ".join(k for k, v in summary["holds"].items() if not v)
        print(f"bound failed: {failed}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main, fast_exit=True)
