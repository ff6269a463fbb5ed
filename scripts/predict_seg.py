#!/usr/bin/env python
"""Stage 6: predict with the trained segmentation network under a named test protocol
(msc-max: deeplab-pytorch's max-fused 1/0.5/0.75 logits; mean-softmax-flip), optional
CRF; one palette PNG per image in OUT.

    python scripts/predict_seg.py --dataset voc12 --root data/VOC2012 --split val.txt \\
        --model results/segmentation/model.pt --out results/pred_val
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipes import cli, datasets, io, segmentation  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    cli.add_dataset_args(p)
    p.add_argument("--model", required=True, type=Path, help="model.pt from train_seg.py")
    p.add_argument("--out", required=True, type=Path, help="output folder of the prediction PNGs")
    p.add_argument("--test-protocol", choices=segmentation.TEST_PROTOCOLS,
                   help="msc-max: deeplab-pytorch's (the paper's; default for its models); "
                        "mean-softmax-flip: softmax averaged over --scales and flips "
                        "(default for torchvision-protocol models)")
    p.add_argument("--scales", type=float, nargs="+", default=[0.75, 1.0, 1.25],
                   help="test scales (mean-softmax-flip)")
    p.add_argument("--no-flip", action="store_true", help="mean-softmax-flip: no horizontal flips")
    p.add_argument("--crf", action="store_true", help="dense CRF on the predicted probabilities")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--images-only", action="store_true",
                   help="voc12: predict every id of --split from ROOT/JPEGImages without "
                        "labels or masks (the VOC test images)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.images_only:
        from clipes import voctest

        if args.dataset != "voc12" or args.split is None:
            raise datasets.DatasetError("--images-only reads the VOC test images: give "
                                        "--dataset voc12 and --split test.txt")
        ds = argparse.Namespace(samples=voctest.test_samples(args.root, args.split),
                                n_classes=voctest.N_CLASSES)
    else:
        ds = cli.dataset_from_args(args, labels_optional=True)
    device = cli.resolve_device(args.device)
    model = segmentation.load_trained(args.model, device)
    if model.n_classes != ds.n_classes:
        raise datasets.DatasetError(
            f"{args.model} was trained for {model.n_classes} classes (background included) but "
            f"the {args.dataset} dataset has {ds.n_classes}: give the model trained on this dataset")
    test = args.test_protocol or ("msc-max" if model.protocol == "deeplab-pytorch"
                                  else "mean-softmax-flip")
    print(f"model protocol {model.protocol}, test protocol {test}", file=sys.stderr)
    for s in ds.samples:
        rgb = segmentation.load_rgb(s.image)
        mask = segmentation.predict_for_protocol(model, rgb, test, tuple(args.scales),
                                                 not args.no_flip, args.crf, device)
        io.save_mask(args.out / f"{s.id}.png", mask)
    print(f"{len(ds.samples)} predictions in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main, fast_exit=True)
