#!/usr/bin/env python
"""Stage 0a (VOC12 from the official downloads): the layout the stages read.

From VOCdevkit/VOC2012 (the VOC2012 trainval tar) and the SBD masks, either SBD's release
(benchmark_RELEASE/, .mat class masks) or the ready SegmentationClassAug/ PNGs, writes
OUT/SegmentationClassAug/<id>.png, OUT/ImageSets/Segmentation/{train_aug,train,val,trainval}.txt,
links OUT/JPEGImages and OUT/Annotations to the VOC folders, and OUT/convert.json (how many
ids each source gave). train_aug = SBD train + SBD val + VOC train - VOC val.

    python scripts/convert_voc12.py --voc data/VOCdevkit/VOC2012 \\
        --sbd data/benchmark_RELEASE --out results/voc12/data/converted
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipes import cli, convert  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    p.add_argument("--voc", required=True, type=Path, help="VOCdevkit/VOC2012 folder")
    p.add_argument("--sbd", type=Path, help="SBD's benchmark_RELEASE folder")
    p.add_argument("--aug-masks", type=Path,
                   help="a SegmentationClassAug folder (used instead of --sbd when both exist)")
    p.add_argument("--out", required=True, type=Path, help='output folder of the converted layout')
    p.add_argument("--workers", type=int, default=1, help="processes writing masks")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    s = convert.convert_voc12(a.voc, a.out, sbd=a.sbd, aug_masks=a.aug_masks, workers=a.workers)
    print(f"train_aug: {s['train_aug']} ids (masks from {s['mask_source']}: "
          f"{s['train_aug_from']}), {s['masks_written']} masks", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main, fast_exit=True)
