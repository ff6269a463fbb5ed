#!/usr/bin/env python
"""PASCAL VOC 2012 test: pack the predictions of the test images for the evaluation server.

Checks that every id of the test split has a palette PNG of values 0..20 and writes a
tar.gz holding results/VOC2012/Segmentation/comp6_test_cls/<id>.png, ready to upload
(README: "Reproducing VOC12", VOC test).

    python scripts/predict_seg.py --dataset voc12 --root data/VOCdevkit/VOC2012 \\
        --split data/VOCdevkit/VOC2012/ImageSets/Segmentation/test.txt --images-only \\
        --model results/voc12/base/segmentation/model.pt --out pred_test
    python scripts/voc_test_submission.py --pred pred_test \\
        --split data/VOCdevkit/VOC2012/ImageSets/Segmentation/test.txt --out comp6_test_cls.tar.gz
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipes import cli, voctest  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    p.add_argument("--pred", required=True, type=Path, help="folder of <id>.png predictions")
    p.add_argument("--split", required=True, type=Path, help="the test split (test.txt)")
    p.add_argument("--out", required=True, type=Path, help="the tar.gz to write")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    res = voctest.write_submission(args.pred, args.split, args.out)
    print(f"{res['images']} test predictions in {args.out} ({res['layout']}/)", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main, fast_exit=True)
