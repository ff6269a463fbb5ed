#!/usr/bin/env python
"""Benchmark: the CAM stage's work per image outside the model, in single-thread CPU time
(one core, whatever else runs): JPEG decoding, the input resize (``pil``, the reference,
and ``torch``, the named faster option), the CLIP normalisation and writing a grid archive
(refined and plain maps), as ``scripts/cams.py`` does them.

Generates N JPEGs of VOC's or COCO's size mix (benchmarks/cam_scaling.py's generator) and
prints a Markdown table of the median milliseconds per image of each step, and the totals.

    python benchmarks/cam_io.py --images 40 --mix voc
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def parse_args(argv=None):
    from clipes.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--images", type=int, default=40, help="generated JPEGs")
    p.add_argument("--mix", choices=["voc", "coco"], default="voc", help="image sizes")
    p.add_argument("--repeats", type=int, default=5,
                   help="passes over the images; each step's time is its best pass")
    return p.parse_args(argv)


def cpu_ms(fn, items, repeats):
    """Best pass's CPU time per item, in ms (single thread: process time is one core's)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for it in items:
            fn(it)
        best = min(best, (time.process_time() - t0) / len(items) * 1000)
    return best


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import torch
    from PIL import Image

    from cam_scaling import make_images
    from clipes import cam, camstore
    from clipes.datasets import open_image
    from clipes.report.provenance import machine_description

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        make_images(root, args.images, mix=args.mix)
        files = sorted((root / "images").glob("*.jpg"))

        def decode(f):
            with open_image(f) as im:
                im.load()
        images = []
        for f in files:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        sizes = [cam.input_size((im.height, im.width)) for im in images]
        pairs = list(zip(images, sizes))
        rows = {"decode": cpu_ms(decode, files, args.repeats)}
        for how in cam.RESIZES:
            rows[f"resize ({how})"] = cpu_ms(lambda p, how=how: cam.resize_rgb(*p, how),
                                             pairs, args.repeats)
        resized = [cam.resize_rgb(im, s) for im, s in pairs]
        rows["normalise"] = cpu_ms(cam.normalise, resized, args.repeats)
        rng = np.random.default_rng(0)
        out = Path(tmp) / "out"
        jobs = []
        for i, (im, (h, w)) in enumerate(pairs):
            k = int(rng.integers(1, 4))
            grid = rng.random((k, h // 16, w // 16)).astype(np.float32)
            jobs.append((out / f"{i}.npz", np.arange(k), grid, (im.height, im.width)))
        rows["write (grid archive)"] = cpu_ms(
            lambda j: camstore.save_cams(j[0], j[1], j[2], j[3], plain_grid=j[2]), jobs,
            args.repeats)
    common = rows["decode"] + rows["normalise"] + rows["write (grid archive)"]
    print(f"{args.images} {args.mix.upper()}-sized JPEGs; single-thread CPU ms per image, best "
          f"of {args.repeats} passes; {machine_description()}, torch {torch.__version__}\n")
    print("| step | ms/image |\n|---|---|")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.2f} |")
    for how in cam.RESIZES:
        print(f"| **total outside the model, resize {how}** | "
              f"**{common + rows[f'resize ({how})']:.2f}** |")
    return rows


if __name__ == "__main__":
    main()
