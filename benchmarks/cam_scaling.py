#!/usr/bin/env python
"""Benchmark: does the CAM stage stay flat as the dataset grows? Seconds per image and peak
memory of the whole stage (process start to last archive, as a user runs scripts/cams.py)
at several dataset sizes.

Generates VOC-like JPEGs (sizes drawn from VOC's mix around 500x375, 1-3 labels each) as
a custom dataset, runs scripts/cams.py once per size in its own process and prints a
Markdown table: images, wall seconds, seconds per image (startup included and excluded),
peak resident memory. ViT-B/16 with random weights by default (no download), or any
OpenAI-format file with --checkpoint.

    python benchmarks/cam_scaling.py --sizes 10 100 1000 --device cpu
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clipes.text import VOC12_CLASSES  # noqa: E402 (standard library and numpy only)

# (width, height) of VOC images, most common first, with their share
VOC_SIZES = [((500, 375), 0.45), ((500, 333), 0.2), ((375, 500), 0.15), ((500, 400), 0.1),
             ((480, 360), 0.1)]
# COCO's: mostly 640 on the long side
COCO_SIZES = [((640, 480), 0.45), ((640, 427), 0.25), ((480, 640), 0.15), ((640, 426), 0.1),
              ((500, 375), 0.05)]
MIXES = {"voc": (VOC_SIZES, 3), "coco": (COCO_SIZES, 5)}  # sizes, most labels per image
CLASSES = ["cat", "dog", "person", "car", "bird"]


def parse_args(argv=None):
    from clipes.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000],
                   help="dataset sizes to run, each in its own process")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--mode", default="batched", choices=["reference", "batched"],
                   help="CAM mode of cams.py")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images of one size per pass (batched mode)")
    p.add_argument("--checkpoint", help="OpenAI-format CLIP file (default: random ViT-B/16)")
    p.add_argument("--extra", default="", help="more scripts/cams.py options, one string")
    p.add_argument("--mix", choices=list(MIXES), default="voc",
                   help="image sizes and label counts: voc (around 500x375, 1-3 labels) or "
                        "coco (around 640x480, 1-5 labels)")
    p.add_argument("--workdir", type=Path, help="keep the generated data here")
    return p.parse_args(argv)


VOC_CLASSES = list(VOC12_CLASSES)


def _image(rng, sizes, weights):
    import numpy as np
    from PIL import Image

    w, h = sizes[rng.choice(len(sizes), p=weights)]
    img = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)  # smooth content
    return Image.fromarray(img).resize((w, h), Image.BILINEAR)


def _write_one(job):
    """One generated image (and its VOC XML); a job of a process pool."""
    root, i, seed, layout, mix = job
    import numpy as np

    rng = np.random.default_rng([seed, i])
    size_mix, most = MIXES[mix]
    sizes, weights = zip(*size_mix)
    im = _image(rng, sizes, weights)
    names = VOC_CLASSES if layout == "voc" else CLASSES
    labels = [names[k] for k in rng.choice(len(names), size=int(rng.integers(1, most + 1)),
                                           replace=False)]
    iid = f"{i:05d}" if layout == "custom" else f"2099_{i:06d}"
    if layout == "custom":
        im.save(root / "images" / f"{iid}.jpg", quality=90)
        return f"{iid}.jpg,{';'.join(labels)}"
    im.save(root / "JPEGImages" / f"{iid}.jpg", quality=90)
    objects = "".join(f"<object><name>{n}</name></object>" for n in labels)
    (root / "Annotations" / f"{iid}.xml").write_text(
        f"<annotation><filename>{iid}.jpg</filename><size><width>{im.width}</width>"
        f"<height>{im.height}</height><depth>3</depth></size>{objects}</annotation>\n")
    return iid


def make_images(root: Path, n: int, seed: int = 0, layout: str = "custom", workers: int = 1,
                mix: str = "voc"):
    """n VOC-like JPEGs (VOC's size mix, 1-3 labels each; with mix "coco" COCO's sizes and
    1-5 labels), the same for a seed.

    layout "custom": ROOT/images/<id>.jpg and ROOT/labels.csv (a dataset of your own);
    "voc": ROOT/JPEGImages, ROOT/Annotations (XML: size and objects) and
    ROOT/ImageSets/Segmentation/train.txt, as the official VOC2012 folder (no masks)."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in (("images",) if layout == "custom" else ("JPEGImages", "Annotations",
                                                         "ImageSets/Segmentation")):
        (root / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(root, i, seed, layout, mix) for i in range(n)]
    if workers > 1:
        from multiprocessing import Pool

        with Pool(workers) as pool:
            rows = pool.map(_write_one, jobs, chunksize=64)
    else:
        rows = [_write_one(j) for j in jobs]
    if layout == "custom":
        (root / "labels.csv").write_text("\n".join(["image,labels", *rows]) + "\n")
    else:
        (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(rows) + "\n")
    return rows


def run_once(root: Path, n: int, args) -> dict:
    out = root / f"cams_{n}"
    cmd = [sys.executable, str(REPO / "scripts" / "cams.py"), "--dataset", "custom",
           "--root", str(root), "--labels", str(root / "labels.csv"),
           "--classes", json.dumps(CLASSES), "--device", args.device, "--mode", args.mode,
           "--batch-size", str(args.batch_size), "--out", str(out),
           "--records", str(out / "records.tsv"), *args.extra.split()]
    cmd += ["--checkpoint", args.checkpoint] if args.checkpoint else ["--pretrained", "none"]
    # rows n.. of the label table are left out by a split file of the first n ids
    split = root / f"split_{n}.txt"
    split.write_text("".join(f"{i:05d}\n" for i in range(n)))
    cmd += ["--split", str(split)]
    # a fresh wrapper process per size: its RUSAGE_CHILDREN peak is this run's alone
    wrapper = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"cams.py failed for {n} images:\n{proc.stderr[-3000:]}")
    peak_kb = int(proc.stdout.strip().splitlines()[-1])
    import pandas as pd

    rec = pd.read_csv(out / "records.tsv", sep="\t")
    loop = float(rec["seconds"].sum())
    archives = list(out.glob("*.npz"))
    return {"images": n, "wall_s": wall, "s_per_image": wall / n, "loop_s_per_image": loop / n,
            "decode_ms": 1000 * float(rec["decode_s"].mean()),
            "write_ms": 1000 * float(rec["write_s"].mean()),
            "labels_per_image": float(rec["n_classes"].mean()),
            "bytes_per_image": sum(p.stat().st_size for p in archives) / len(archives),
            "startup_s": wall - loop - float(rec["decode_s"].sum() + rec["write_s"].sum()),
            "peak_mb": peak_kb / 1024}


def main(argv=None):
    args = parse_args(argv)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="clipes-scaling-")
        args.workdir = Path(tmp.name)
    root = args.workdir / "data"
    make_images(root, max(args.sizes), mix=args.mix)
    rows = [run_once(root, n, args) for n in sorted(args.sizes)]
    print(f"{args.mix} mix, cams.py {args.extra or '(defaults)'}")
    print()
    print("| images | labels/image | wall s | s/image | model s/image | decode ms/image | "
          "write ms/image | other s | archive KB/image | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']} | {r['labels_per_image']:.2f} | {r['wall_s']:.1f} | "
              f"{r['s_per_image']:.3f} | {r['loop_s_per_image']:.3f} | {r['decode_ms']:.1f} | "
              f"{r['write_ms']:.1f} | {r['startup_s']:.1f} | {r['bytes_per_image'] / 1000:.1f} | "
              f"{r['peak_mb']:.0f} |")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
