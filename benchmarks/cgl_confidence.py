#!/usr/bin/env python
"""Benchmark: does the CRF's confidence single out the pseudo masks' errors?

CGL (the confidence-guided loss) trains the segmentation network without the pixels whose
max CRF probability is below a threshold (0.95 in the paper). That helps only where the
wrong labels are the unsure ones. This script reruns the CRF stage's computation (the
reference recipe, as scripts/crf.py) on the CAM archives of a finished run and prints,
against the ground truth:

- the share of wrong CRF labels and the commonest confusions among them (ground truth
  class -> CRF label, as a share of all wrong pixels);
- for each threshold: the share of pixels ignored, the error rate of the ignored and of
  the kept pixels, and the share of all wrong pixels that are ignored;
- the same table for the CRF's input (``[background; CAMs]`` normalised to sum 1 per
  pixel, its argmax as labels): how far the CRF's mean-field iterations shrink the region
  of unsure pixels, and how many of the errors it held (``--iterations`` tries fewer or
  more than the reference's 10).

The demo (after `snakemake --cores all`):

    python benchmarks/cgl_confidence.py --dataset synthetic --root results/demo/data/synthetic \\
        --split results/demo/data/synthetic/train.txt \\
        --labels results/demo/data/synthetic/labels.csv \\
        --classes results/demo/data/synthetic/classes.yaml \\
        --background results/demo/data/synthetic/background.txt \\
        --cams results/demo/base/cams/shard0 results/demo/base/cams/shard1 --jobs 2
"""

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from clipes import camstore, cli, crf, datasets, metrics  # noqa: E402

THRESHOLDS = (0.5, 0.9, 0.95, 0.99, 0.999, 0.9999)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    cli.add_dataset_args(p)
    p.add_argument("--cams", required=True, type=Path, nargs="+",
                   help="folder(s) of <id>.npz CAM archives (the CAM stage's shards)")
    p.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS),
                   help="confidence thresholds to tabulate (the paper's is 0.95)")
    p.add_argument("--image-input", choices=["reference", "rgb"], default="reference",
                   help="the CRF's image, as scripts/crf.py --image-input")
    p.add_argument("--iterations", type=int, default=crf.CrfParams.iterations,
                   help="mean-field iterations of the CRF (the reference runs 10)")
    p.add_argument("--images", type=int, help="only the first N images of the split")
    p.add_argument("--confusions", type=int, default=5, help="commonest confusions to list")
    p.add_argument("--jobs", type=int, default=1, help="parallel processes")
    return p.parse_args(argv)


def crf_input(keys, cams: np.ndarray, bg_power: float):
    """What the CRF starts from: labels (H, W) (the argmax of [background; CAMs], as
    ``crf.cam_labels``) and confidence (H, W), the max of those scores normalised to sum 1
    per pixel (the CRF's own normalisation of its unary)."""
    scores = crf.with_background(cams, bg_power)
    probs = scores.astype(np.float32)
    return crf.argmax_labels(keys, scores), probs.max(0) / np.maximum(probs.sum(0), 1e-12)


def _per_threshold(conf, wrong, thresholds):
    """Per threshold (pixels below it, wrong pixels below it)."""
    return [(int((conf < t).sum()), int((wrong & (conf < t)).sum())) for t in thresholds]


def one_image(sample, cam_dirs, n_classes: int, thresholds, image_input: str, iterations: int):
    """Counts of one image: confusion of the CRF labels on the valid pixels (n, n) int64,
    per threshold (pixels ignored, wrong pixels ignored), and the same two for the CRF's
    input: (wrong pixels, per-threshold counts)."""
    keys, cams = camstore.load_cams(metrics.find_file(cam_dirs, f"{sample.id}.npz"))
    image = crf.image_for(sample.image, image_input)
    params = crf.CrfParams(image_input=image_input, iterations=iterations)
    labels, _, conf = crf.crf_pseudo_mask(image, keys, cams, params)
    gt = datasets.load_gt(sample, labels.shape, n_classes)
    hist = metrics.ConfusionMatrix(n_classes).update(gt, labels).hist
    valid = gt < n_classes  # the pixels the confusion counts (255, ignore, left out)
    wrong = (gt != labels)[valid]
    in_labels, in_conf = crf_input(keys, cams, params.bg_power)
    in_wrong = (gt != in_labels)[valid]
    return (hist, _per_threshold(conf[valid], wrong, thresholds),
            (int(in_wrong.sum()), _per_threshold(in_conf[valid], in_wrong, thresholds)))


def print_thresholds(thresholds, per_t, total: int, n_wrong: int) -> None:
    print("\n| threshold | ignored (%) | wrong among ignored (%) | wrong among kept (%) | "
          "wrong pixels ignored (%) |\n|---|---|---|---|---|")
    cell = (lambda a, b: f"{100 * a / b:.2f}" if b else "n/a")  # noqa: E731
    for t, (ign, ign_wrong) in zip(thresholds, per_t):
        kept, kept_wrong = total - ign, n_wrong - ign_wrong
        print(f"| {t:g} | {100 * ign / total:.2f} | {cell(ign_wrong, ign)} | "
              f"{cell(kept_wrong, kept)} | {cell(ign_wrong, n_wrong)} |")


def main(argv=None):
    args = parse_args(argv)
    if any(not 0 < t <= 1 for t in args.thresholds):
        raise datasets.DatasetError(f"--thresholds {args.thresholds}: each must be in (0, 1]")
    if args.iterations < 1:
        raise datasets.DatasetError(f"--iterations {args.iterations}: give 1 or more")
    ds = cli.dataset_from_args(args, need_gt=True)
    samples = [s for s in ds.samples if s.gt is not None][:args.images]
    if not samples:
        raise datasets.DatasetError(f"{args.root}: no image of the split has a ground-truth mask")
    n = ds.n_classes
    cm = metrics.ConfusionMatrix(n)
    per_t = np.zeros((len(args.thresholds), 2), np.int64)
    in_per_t, in_wrong = np.zeros_like(per_t), 0
    work = ([s, args.cams, n, args.thresholds, args.image_input, args.iterations]
            for s in samples)
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(one_image, *zip(*work), chunksize=4))
    else:
        results = [one_image(*w) for w in work]
    for hist, t, (w_in, t_in) in results:
        cm.hist += hist
        per_t += np.asarray(t)
        in_wrong += w_in
        in_per_t += np.asarray(t_in)
    total = int(cm.hist.sum())
    n_wrong = total - int(np.trace(cm.hist))
    names = ds.class_names
    print(f"{len(samples)} images, {total:,} pixels scored; CRF labels wrong on "
          f"{100 * n_wrong / total:.2f}% ({args.iterations} mean-field iteration"
          f"{'s' if args.iterations != 1 else ''})")
    if n_wrong:
        off = cm.hist.copy()
        np.fill_diagonal(off, 0)
        order = np.argsort(off, axis=None)[::-1][:args.confusions]
        print("\n| ground truth -> CRF label | share of the wrong pixels (%) |\n|---|---|")
        for flat in order:
            i, j = divmod(int(flat), n)
            if off[i, j]:
                print(f"| {names[i]} -> {names[j]} | {100 * off[i, j] / n_wrong:.1f} |")
    print_thresholds(args.thresholds, per_t, total, n_wrong)
    print(f"\nBefore the CRF (its input, [background; CAMs] normalised to sum 1, argmax as "
          f"labels): wrong on {100 * in_wrong / total:.2f}%")
    print_thresholds(args.thresholds, in_per_t, total, in_wrong)


if __name__ == "__main__":
    cli.run(main, fast_exit=True)
