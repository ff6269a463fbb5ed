#!/usr/bin/env python
"""The GPU measurements of the CAM stage, in one run (for a machine lent for minutes).

1. VOC train_aug's size: N generated VOC-format JPEGs (default 10,582; VOC's size mix
   around 500x375, 1-3 labels each) and a random OpenAI-format ViT-B/16 checkpoint.
2. The whole stage as a user runs it (``scripts/cams.py``, process start to last
   archive) in fp32, fp16 and bf16 autocast: wall seconds and images/s.
3. Parity of fp16 and bf16 against fp32 on the first --parity-images images: max map
   difference and CAM label agreement (clipes.parity; bound: labels >= 99.9%).
4. The loop alone at 1, 2 and 3 labels (``scripts/benchmark_cams.py``), in fp32 (and
   the autocasts of --loop-precisions), with the GPU's measured fp32 GEMM rate.

Prints Markdown tables ready for the README and writes them to --out-dir (stage.md,
loop_*.md, summary.json). Each step's time is printed, so a run cut short still reports
the steps it finished.

    python scripts/benchmark_cam_gpu.py --device cuda --out-dir "$OUT"
    python scripts/benchmark_cam_gpu.py --device cpu --images 8 --parity-images 8 --loop-images 1
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

PRECISIONS = ("fp32", "fp16", "bf16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--images", type=int, default=10582)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--loaders", type=int, default=6, help="DataLoader workers of cams.py")
    p.add_argument("--writers", type=int, default=8, help="archive writer threads of cams.py")
    p.add_argument("--stage-options", default="--text-context trimmed",
                   help="more cams.py options for every precision")
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--loop-precisions", nargs="+", default=["fp32"], choices=PRECISIONS,
                   help="step 4's precisions (default fp32: each costs nine process starts)")
    p.add_argument("--parity-images", type=int, default=500)
    p.add_argument("--loop-images", type=int, default=8,
                   help="benchmark_cams.py images per label count (0: skip step 4)")
    p.add_argument("--checkpoint", type=Path, help="an OpenAI-format file instead of random ViT-B/16")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/clipes-gpu"))
    p.add_argument("--out-dir", type=Path, default=Path("."))
    return p.parse_args(argv)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv=None):
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    from benchmark_cam_scaling import make_images
    from benchmark_cam_stage import write_random_checkpoint
    from clipes import parity
    from clipes.report import machine_description

    summary = {"machine": machine_description(args.device), "images": args.images}
    t0 = time.perf_counter()
    root = args.workdir / "VOC2012"
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    if not split.is_file() or len(split.read_text().split()) != args.images:
        make_images(root, args.images, layout="voc", workers=os.cpu_count() or 1)
    ids = split.read_text().split()
    ckpt = args.checkpoint or args.workdir / "ViT-B-16-random.pt"
    if not ckpt.is_file():
        write_random_checkpoint(ckpt, "ViT-B-16")
    log(f"data and checkpoint: {time.perf_counter() - t0:.0f} s")

    rows = []
    for prec in args.precisions:
        out = args.workdir / f"cams_{prec}"
        cmd = [sys.executable, str(REPO / "scripts" / "cams.py"), "--dataset", "voc12",
               "--root", str(root), "--split", str(split), "--checkpoint", str(ckpt),
               "--device", args.device, "--out", str(out), "--mode", "batched",
               "--batch-size", str(args.batch_size), "--loaders", str(args.loaders),
               "--writers", str(args.writers), *args.stage_options.split()]
        cmd += [] if prec == "fp32" else ["--autocast", prec]
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode:
            log(f"{prec} failed:\n{proc.stderr[-2000:]}")
            continue
        row = {"precision": prec, "wall_s": wall, "images_per_s": args.images / wall}
        if prec != "fp32" and (args.workdir / "cams_fp32").is_dir():
            cmp = parity.compare_runs(args.workdir / "cams_fp32", out, ids[:args.parity_images])
            row.update(max_abs=cmp["max_abs"], labels=cmp["label_agreement"],
                       holds=parity.check(cmp)["label_agreement"])
        rows.append(row)
        log(f"{prec}: {wall:.1f} s, {row['images_per_s']:.0f} images/s")
    summary["stage"] = rows
    lines = [f"{summary['machine']}; {args.images} VOC-like images, "
             f"{args.checkpoint or 'random ViT-B/16'}, "
             f"batched mode, batch {args.batch_size}, {args.loaders} loaders, {args.writers} "
             f"writers, {args.stage_options}; process start to last archive", "",
             "| precision | wall s | images/s | max abs diff vs fp32 | CAM labels equal vs fp32 "
             "(power 1 / 2) | label bound |", "|---|---|---|---|---|---|"]
    for r in rows:
        par = (f"{r['max_abs']:.1e} | {100 * r['labels']['1']:.3f}% / {100 * r['labels']['2']:.3f}% | "
               f"{'holds' if r['holds'] else 'fails'}") if "labels" in r else "- | - | -"
        lines.append(f"| {r['precision']} | {r['wall_s']:.1f} | {r['images_per_s']:.0f} | {par} |")
    (args.out_dir / "stage.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)

    for prec in args.loop_precisions if args.loop_images > 0 else []:
        cmd = [sys.executable, str(REPO / "scripts" / "benchmark_cams.py"), "--device", args.device,
               "--images", str(args.loop_images), "--batch-size", str(args.loop_images),
               "--repeats", "3"] + ([] if prec == "fp32" else ["--autocast", prec])
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        text = proc.stdout if proc.returncode == 0 else proc.stdout + proc.stderr[-2000:]
        (args.out_dir / f"loop_{prec}.md").write_text(text)
        print(f"\n## loop, {prec}\n\n{text}", flush=True)
        log(f"loop {prec}: {time.perf_counter() - t:.0f} s")
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    log(f"all done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
