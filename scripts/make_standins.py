#!/usr/bin/env python
"""Write small stand-ins of the official downloads, laid out as their archives unpack:

    OUT/VOCdevkit/VOC2012/        the VOC2012 trainval tar (JPEGImages, Annotations,
                                  SegmentationClass, ImageSets)
    OUT/benchmark_RELEASE/        SBD (dataset/cls/*.mat, dataset/{train,val}.txt)
    OUT/SegmentationClassAug/     the SegmentationClassAug zip
    OUT/VOC2012test/VOCdevkit/VOC2012/  the VOC2012 test tar (JPEGImages,
                                  ImageSets/Segmentation/test.txt)
    OUT/COCO2014/                 train2014/, val2014/, annotations/instances_*2014.json

With config/standins/voc12.yaml or coco14.yaml they run the real-data path offline:

    python scripts/make_standins.py --out data/standins
    snakemake --cores all --configfile config/voc12.yaml config/standins/voc12.yaml
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipes import cli, standins  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="folder to write the stand-ins into")
    p.add_argument("--voc-images", type=int, default=30, help="VOC/SBD images (default 30)")
    p.add_argument("--coco-images", type=int, nargs=2, default=[12, 6], metavar=("TRAIN", "VAL"),
                   help="COCO stand-in images in train and val")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    v = standins.write_voc(a.out, n=a.voc_images, seed=a.seed)
    t = standins.write_voc_test(a.out, seed=a.seed + 1)
    c = standins.write_coco(a.out, *a.coco_images, seed=a.seed)
    print(f"{a.out}: VOC {len(v['ids'])} images, VOC test {len(t)}, COCO {len(c['images'])} "
          f"images", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main, fast_exit=True)
