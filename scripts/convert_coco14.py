#!/usr/bin/env python
"""Stage 0a (COCO14 from the official downloads): semantic masks and label lists.

From ROOT/train2014/, ROOT/val2014/ and ROOT/annotations/instances_{train,val}2014.json
(with pycocotools) writes OUT/SegmentationClass/<id>.png (0 background, k + 1 = class k in
the reference's 80-class order), OUT/train.txt and OUT/val.txt ('<id> <label> ...',
0-based), links OUT/JPEGImages/{train2014,val2014} to the image folders, and
OUT/convert.json. Overlapping annotations: the later one in the JSON wins. Crowd regions
get their class (--crowd class) or 255 (--crowd ignore). Images without any annotation are
listed in convert.json and left out of the split files.

    python scripts/convert_coco14.py --root data/COCO2014 --out results/coco14/data/converted
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipes import cli, convert  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    p.add_argument("--root", required=True, type=Path,
                   help="folder holding train2014/, val2014/ and annotations/")
    p.add_argument("--out", required=True, type=Path, help='output folder of the converted layout')
    p.add_argument("--crowd", choices=["class", "ignore"], default="class",
                   help="crowd regions: their class (default) or 255")
    p.add_argument("--workers", type=int, default=1, help="processes writing masks")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    s = convert.convert_coco14(a.root, a.out, crowd=a.crowd, workers=a.workers)
    for name, sp in s["splits"].items():
        print(f"{name}: {sp['with_labels']} of {sp['images']} images have annotations "
              f"({len(sp['no_annotation'])} without, left out)", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main, fast_exit=True)
