#!/usr/bin/env python
"""Stage 4: dense CRF on the CAMs and confidence-masked pseudo masks, OUT/<id>.png.

Each PNG holds 0 (background), k + 1 (class k) or 255 where the CRF's max probability is
below --confidence (ignored by the segmentation loss: CGL). --labels-out also keeps the
CRF labels before that step (what the reference's CRF mIoU is computed on).

Example:
    python scripts/crf.py --dataset voc12 --root data/VOC2012 --split train.txt \\
        --cams results/cams --out results/pseudo_masks --jobs 8
"""

import argparse
import contextlib
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipes import camstore, cli, crf, datasets, io, metrics  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    cli.add_dataset_args(p)
    p.add_argument("--cams", required=True, type=Path, nargs="+",
                   help="folder(s) of <id>.npz CAM archives (the CAM stage's shards)")
    p.add_argument("--out", required=True, type=Path, help="folder for the pseudo-mask PNGs")
    p.add_argument("--labels-out", type=Path, help="folder for the CRF labels before the ignore step")
    p.add_argument("--conf-out", type=Path,
                   help="folder for the CRF confidence (max probability x 255, uint8 PNG)")
    d = crf.CrfParams()
    g = p.add_argument_group("CRF (defaults: the reference recipe)")
    g.add_argument("--iterations", type=int, default=d.iterations,
                   help="mean-field iterations of the dense CRF")
    g.add_argument("--bg-power", type=float, default=d.bg_power,
                   help="background score = (1 - max CAM) ** power")
    g.add_argument("--confidence", type=float, default=d.confidence,
                   help="pixels with max CRF probability below this become 255")
    g.add_argument("--image-input", choices=["reference", "rgb"], default=d.image_input,
                   help="reference: BGR minus the Caffe means, wrapped to uint8; rgb: plain RGB")
    g.add_argument("--no-crf", action="store_true",
                   help="ablation: argmax of the CAMs (bg power --bg-power), no CRF, no ignore")
    r = p.add_argument_group("run")
    r.add_argument("--shard", default="0/1", help="I/N: every N-th image from the I-th")
    r.add_argument("--jobs", type=int, default=1, help="parallel processes")
    r.add_argument("--resume", action="store_true", help="keep PNGs that already exist")
    return p.parse_args(argv)


def one_image(sample: datasets.Sample, args, params: crf.CrfParams) -> str:
    out = args.out / f"{sample.id}.png"
    if args.resume and out.is_file() and (args.labels_out is None
                                          or (args.labels_out / f"{sample.id}.png").is_file()):
        return sample.id
    path = metrics.find_file(args.cams, f"{sample.id}.npz")
    keys, cams = camstore.load_cams(path)
    if cams.shape[1:] != tuple(sample.orig_hw):
        raise datasets.DatasetError(
            f"{path}: CAMs are {cams.shape[2]}x{cams.shape[1]} but "
            f"{sample.image} is {sample.orig_hw[1]}x{sample.orig_hw[0]}; recompute the CAMs")
    if args.no_crf:
        labels = crf.cam_labels(keys, cams, params.bg_power).astype("uint8")
        mask = labels
        conf = None
    else:
        image = crf.image_for(sample.image, params.image_input)
        if image.shape[:2] != tuple(sample.orig_hw):
            raise datasets.DatasetError(f"{sample.image} is {image.shape[1]}x{image.shape[0]} "
                                        f"but its annotation says {sample.orig_hw[1]}x{sample.orig_hw[0]}")
        labels, mask, conf = crf.crf_pseudo_mask(image, keys, cams, params)
    if args.labels_out is not None:
        io.save_mask(args.labels_out / f"{sample.id}.png", labels)
    if args.conf_out is not None:
        import numpy as np

        c = np.full(labels.shape, 255, np.uint8) if conf is None else \
            np.clip(np.round(conf * 255), 0, 255).astype(np.uint8)
        io.save_mask(args.conf_out / f"{sample.id}.png", c, palette=False)
    io.save_mask(out, mask)
    return sample.id


def main(argv=None):
    args = parse_args(argv)
    ds = cli.dataset_from_args(args)
    samples = datasets.shard(ds.samples, *cli.parse_shard(args.shard))
    datasets.check_damaged(samples, f"shard {args.shard}", "the split or label table")
    params = crf.CrfParams(iterations=args.iterations, bg_power=args.bg_power,
                           confidence=args.confidence, image_input=args.image_input)
    for folder in (args.out, args.labels_out, args.conf_out):  # a shard may hold no image
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    t0, every = time.perf_counter(), max(1, len(samples) // 20)  # about 20 progress lines
    with contextlib.ExitStack() as stack:
        if args.jobs > 1:
            pool = stack.enter_context(ProcessPoolExecutor(args.jobs))
            done = pool.map(one_image, samples, [args] * len(samples), [params] * len(samples),
                            chunksize=4)
        else:
            done = (one_image(s, args, params) for s in samples)
        for n, _ in enumerate(done, start=1):
            if n % every == 0 or n == len(samples):
                rate = n / (time.perf_counter() - t0)
                print(f"crf {n}/{len(samples)}: {rate:.2f} images/s, eta "
                      f"{(len(samples) - n) / rate:.0f} s", file=sys.stderr, flush=True)
    print(f"{len(samples)} pseudo masks in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main, fast_exit=True)
