#!/usr/bin/env python
"""The demo's stages over several tiny-CLIP seeds: mean and spread of each stage's mIoU.

The demo runs the one tiny CLIP the repository ships (config/demo/clip.npz, seed 1), so
its CAM, CAA and CRF numbers come from one training. This benchmark retrains the tiny CLIP
with the same recipe (scripts/train_clip.py --stream, the steps, pooling and grouping loss
and scope of config/demo/README.md) for each seed, runs the demo's CAM, CRF and evaluation
stages with each (the workflow, in a folder of its own; no segmentation training) and prints, per
stage, every seed's mIoU, the mean and the sample standard deviation, beside the trivial
baselines. The CLIP trainings run on one thread each, two side by side on 2 CPU cores
(about 23 minutes a pair for the shipped recipe's 2,000 steps on the development machine;
the previous 1,000-step recipe took 32 minutes for three seeds in all).

    python benchmarks/demo_seeds.py --seeds 0 1 2 3 --workdir /tmp/demo_seeds
    python benchmarks/demo_seeds.py --seeds 0 --steps 20 --n-train 24 --n-val 8 --workdir /tmp/ds
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGES = (("initial CAM", "cams_plain"), ("+ CAA", "cams"), ("CRF pseudo masks (CAA)", "pseudo_masks"),
          ("CRF pseudo masks (no CAA)", "pseudo_masks@no_caa"))


def parse_args(argv=None):
    from clipes.cli import HelpFormatter
    from clipes.pretrain import GROUP_SCOPES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="tiny-CLIP seeds")
    p.add_argument("--steps", type=int, default=2000,
                   help="CLIP training steps (the shipped recipe's: 2000)")
    p.add_argument("--group-loss", type=float, default=1.0,
                   help="weight of the attention grouping loss (the shipped recipe's: 1)")
    p.add_argument("--group-scope", default="early+mean", choices=GROUP_SCOPES,
                   help="which attention the grouping loss constrains (scripts/train_clip.py "
                   "--group-scope; the shipped recipe's: early+mean)")
    p.add_argument("--n-train", type=int, default=400, help="demo training images")
    p.add_argument("--n-val", type=int, default=80, help="demo validation images")
    p.add_argument("--workdir", type=Path, required=True, help="folder for the runs")
    p.add_argument("--cores", type=int, default=2, help="snakemake --cores")
    p.add_argument("--clip-threads", type=int, default=1,
                   help="torch threads of each CLIP training (the shipped CLIP was trained "
                   "with 1; with --cores 2, two seeds train side by side)")
    return p.parse_args(argv)


def config(args) -> dict:
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    demo["dataset"]["synthetic"].update(n_train=args.n_train, n_val=args.n_val)
    demo["model"] = {"checkpoint": None}
    demo["segmentation"] = {"enabled": False}
    demo["text"]["select_prompt"]["enabled"] = False
    variants = {}
    for s in args.seeds:
        clip = {"model": {"pretrain": {"enabled": True, "steps": args.steps, "seed": s,
                                       "stream": True, "pool": "avg",
                                       "group_loss": args.group_loss,
                                       "group_scope": args.group_scope}}}
        variants[f"seed{s}"] = clip
        variants[f"seed{s}_no_caa"] = {**clip, "cam": {"caa": False}}
    demo["variants"] = variants
    return demo


def miou(path: Path) -> float:
    d = json.loads(path.read_text())
    return 100 * (d["at_chosen"]["mIoU"] if "at_chosen" in d else d["mIoU"])


def main(argv=None):
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = args.workdir / "demo_seeds.yaml"
    cfg_path.write_text(yaml.safe_dump(config(args), sort_keys=False))
    targets = []
    for s in args.seeds:
        for v in (f"seed{s}", f"seed{s}_no_caa"):
            targets += [f"results/demo/{v}/eval/{n}.json" for n in ("cams_plain", "cams", "pseudo_masks")]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
           str(args.workdir), "--configfile", str(cfg_path), "--cores", str(args.cores),
           *targets, "--set-threads", f"train_clip={args.clip_threads}"]  # nargs="+": last
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    res = args.workdir / "results" / "demo"
    rows = {}
    for label, what in STAGES:
        name, _, variant = what.partition("@")
        rows[label] = [miou(res / (f"seed{s}" + (f"_{variant}" if variant else "")) / "eval"
                            / f"{name}.json") for s in args.seeds]
    from clipes import datasets, report, synthetic

    data = res / "data" / "synthetic"
    ds = datasets.load("synthetic", data, data / "train.txt", classes=list(synthetic.CLASSES),
                       labels_csv=data / "labels.csv")
    base = report.trivial_baselines(ds.samples, ds.n_classes)
    print(f"\n| stage | {' | '.join(f'seed {s}' for s in args.seeds)} | mean | sd |")
    print("|---|" + "---|" * (len(args.seeds) + 2))
    for label, vals in rows.items():
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        print(f"| {label} | {' | '.join(f'{v:.2f}' for v in vals)} | {statistics.mean(vals):.2f} | {sd:.2f} |")
    for k, v in base.items():
        print(f"| trivial: {k} | {' | '.join('' for _ in args.seeds)} | {100 * v:.2f} | |")


if __name__ == "__main__":
    main()
