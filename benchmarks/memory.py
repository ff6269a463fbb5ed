#!/usr/bin/env python
"""Peak memory of every stage at two dataset sizes: does any stage grow with the dataset?

Runs the shipped VOC12 config (from the official layout: conversion included) through
the `snakemake` command on generated VOC/SBD stand-ins of VOC's image size (500x375), once
per size, with an untrained tiny CLIP (no download) and a tiny segmentation network, and
prints each rule's peak resident memory (max_rss from Snakemake's benchmark files) and
wall time at both sizes. A stage that holds the dataset in memory shows a peak that grows
with the image count; a streaming one stays flat.

    python benchmarks/memory.py --sizes 40 160
"""

import argparse
import csv
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clipes import report, standins  # noqa: E402


def parse_args(argv=None):
    from clipes.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--sizes", type=int, nargs=2, default=[40, 160], metavar=("SMALL", "LARGE"),
                   help="images generated (VOC and SBD lists together) for each run")
    p.add_argument("--cores", type=int, default=2, help='cores given to snakemake')
    p.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    return p.parse_args(argv)


def tiny_checkpoint(path: Path) -> None:
    import torch

    from clipes.pretrain import TinyClipConfig, build_tiny_clip

    torch.manual_seed(0)
    net = build_tiny_clip(TinyClipConfig(image_size=224, patch_size=16, vision_layers=6, pool="avg"))
    torch.save(net.state_dict(), path)


def run(workdir: Path, n: int, cores: int) -> dict[str, dict]:
    workdir.mkdir(parents=True, exist_ok=True)
    standins.write_voc(workdir / "data", n=n, size=(500, 375), aug_masks=False)
    ckpt = workdir / "clip_tiny_random.pt"
    tiny_checkpoint(ckpt)
    overrides = {
        "dataset": {"convert_workers": 1},
        "model": {"checkpoint": str(ckpt)},
        "cam": {"device": "cpu", "shards": 1, "batch_size": 1},
        "crf": {"shards": 1, "threads": 1},
        "segmentation": {"backbone": "tiny", "init": None, "iterations": 40, "batch_size": 4,
                         "crop": 321, "checkpoint_every": 20, "device": "cpu", "workers": 1,
                         "test_scales": [1.0]},
    }
    cfg = _merge(yaml.safe_load((REPO / "config" / "voc12.yaml").read_text()), overrides)
    cfg["variants"] = {"base": {}}
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", str(cores)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"snakemake failed for {n} images:\n{proc.stderr[-4000:]}")
    rows: dict[str, dict] = defaultdict(lambda: {"max_rss": 0.0, "s": 0.0, "jobs": 0})
    for tsv in sorted((workdir / "results").rglob("benchmarks/*.tsv")):
        rule = _rule_of(tsv.stem)
        with tsv.open() as f:
            r = next(csv.DictReader(f, delimiter="\t"))
        rss = float(r["max_rss"]) if r["max_rss"] not in ("-", "") else 0.0
        rows[rule]["max_rss"] = max(rows[rule]["max_rss"], rss)
        rows[rule]["s"] += float(r["s"])
        rows[rule]["jobs"] += 1
    return dict(rows)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _rule_of(stem: str) -> str:
    return re.sub(r"^(cams|crf)\d+$", r"\1", stem)  # shard jobs: cams0 -> cams


def main(argv=None):
    a = parse_args(argv)
    small, large = a.sizes
    with tempfile.TemporaryDirectory() as tmp:
        base = a.keep or Path(tmp)
        res = {n: run(base / f"n{n}", n, a.cores) for n in (small, large)}
    print(f"machine: {report.machine_description()}")
    print(f"VOC12 config from the official layout, stand-ins at 500x375; images: {small} vs {large}\n")
    print(f"| rule | peak MB ({small}) | peak MB ({large}) | ratio | s ({small}) | s ({large}) |")
    print("|---|---|---|---|---|---|")
    for rule in sorted(set(res[small]) & set(res[large])):
        s, b = res[small][rule], res[large][rule]
        ratio = b["max_rss"] / s["max_rss"] if s["max_rss"] else float("nan")
        print(f"| {rule} | {s['max_rss']:.0f} | {b['max_rss']:.0f} | {ratio:.2f} | "
              f"{s['s']:.1f} | {b['s']:.1f} |")


if __name__ == "__main__":
    main()
