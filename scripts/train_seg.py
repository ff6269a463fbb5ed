#!/usr/bin/env python
"""Stage 5: train DeepLabV2 on pseudo masks with the confidence-guided loss (CGL).

Writes OUT/model.pt, OUT/train_log.csv and OUT/train_log.png. Checkpoints every
--checkpoint-every iterations to OUT/checkpoint.pt; rerunning the same command resumes
from there and ends at the same weights as an uninterrupted run.

    python scripts/train_seg.py --dataset voc12 --root data/VOC2012 --split train_aug.txt \\
        --masks results/pseudo_masks --out results/segmentation --init resnet101-imagenet.pth
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipes import cli, datasets, metrics, segmentation  # noqa: E402


HELP = {  # the options made in a loop below
    "iterations": "training iterations", "batch_size": "images per (sub-)batch",
    "crop": "crop size", "checkpoint_every": "iterations between resume checkpoints",
    "seed": "seed of the data order and the initialisation", "lr": "base learning rate",
    "momentum": "SGD momentum", "weight_decay": "SGD weight decay",
    "poly_power": "power of the poly learning-rate schedule",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    cli.add_dataset_args(p)
    p.add_argument("--masks", required=True, type=Path, nargs="+",
                   help="folder(s) of pseudo-mask PNGs (255 = ignored)")
    p.add_argument("--conf", type=Path, nargs="+", help="folder(s) of confidence PNGs (--loss soft)")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (model.pt, train_log.csv, checkpoint.pt)")
    d = segmentation.TrainConfig(n_classes=0)
    p.add_argument("--protocol", choices=segmentation.PROTOCOLS, default=d.protocol,
                   help="deeplab-pytorch: the paper's (Caffe ResNet, MSC, BGR-mean input); "
                        "torchvision: torchvision ResNet, ImageNet normalisation")
    p.add_argument("--backbone", choices=["resnet101", "resnet50", "tiny"], default=d.backbone,
                   help="ResNet depth (tiny: a few blocks, for tests)")
    p.add_argument("--blocks", type=int, nargs=4, help="deeplab-pytorch: ResNet block counts")
    p.add_argument("--iter-size", type=int, default=d.iter_size,
                   help="deeplab-pytorch: sub-batches accumulated per iteration")
    p.add_argument("--scales", type=float, nargs="+", default=list(d.scales),
                   help="deeplab-pytorch: training scales drawn per image")
    p.add_argument("--class-balanced", action="store_true",
                   help="median-frequency class weights in the cross-entropy")
    p.add_argument("--init", default=d.init,
                   help="'imagenet' (torchvision download), a checkpoint path, or 'none' (random)")
    p.add_argument("--loss", choices=["cgl", "soft", "plain"], default=d.loss,
                   help="cgl: ignore 255; plain: no ignore region; soft: confidence-weighted")
    for name in ("iterations", "batch_size", "crop", "checkpoint_every", "seed"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name),
                       help=HELP[name])
    for name in ("lr", "momentum", "weight_decay", "poly_power"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name),
                       help=HELP[name])
    p.add_argument("--scale-range", type=float, nargs=2, default=list(d.scale_range),
                   help="torchvision protocol: random scaling range")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="data loader processes decoding images and masks (0: none)")
    return p.parse_args(argv)


def main(argv=None):
    import torch

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = cli.dataset_from_args(args)
    if args.loss == "soft" and not args.conf:
        raise datasets.DatasetError("--loss soft needs --conf (the CRF stage's --conf-out)")
    missing = [s.id for s in ds.samples
               if not any((d / f"{s.id}.png").is_file() for d in args.masks)]
    if missing:
        raise datasets.DatasetError(
            f"{len(missing)} of the {len(ds.samples)} training images have no pseudo mask in "
            f"{', '.join(map(str, args.masks))} (first: {missing[0]}.png): rerun the CRF stage "
            f"for this split, or leave those images out of the split")
    items = [segmentation.TrainItem(
        s.image, metrics.find_file(args.masks, f"{s.id}.png"),
        metrics.find_file(args.conf, f"{s.id}.png") if args.conf else None) for s in ds.samples]
    cfg = segmentation.TrainConfig(
        n_classes=ds.n_classes, backbone=args.backbone,
        init=None if args.init in (None, "none", "null") else args.init, loss=args.loss,
        iterations=args.iterations, batch_size=args.batch_size, crop=args.crop, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, poly_power=args.poly_power,
        scale_range=tuple(args.scale_range), checkpoint_every=args.checkpoint_every,
        seed=args.seed, device=cli.resolve_device(args.device), amp=not args.no_amp,
        workers=args.workers, protocol=args.protocol,
        blocks=tuple(args.blocks) if args.blocks else None, iter_size=args.iter_size,
        scales=tuple(args.scales), class_balanced=args.class_balanced)
    segmentation.train(cfg, segmentation.TrainData(items), args.out)
    segmentation.plot_log(args.out / "train_log.csv", args.out / "train_log.png")


if __name__ == "__main__":
    cli.run(main, fast_exit=True)
