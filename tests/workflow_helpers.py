"""Running the workflow through the `snakemake` command, shared by the workflow tests."""

import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake"]

TINY_DEMO = {
    "dataset": {"name": "tiny", "kind": "synthetic",
                "synthetic": {"seed": 3, "n_train": 16, "n_val": 6}},
    "model": {"pretrain": {"enabled": True, "steps": 15, "batch_size": 16, "corpus": 32}},
    "text": {"template": "a photo of a {}.",
             "select_prompt": {"enabled": True, "candidates": ["a photo of a {}.", "art of the {}."]}},
    "cam": {"mode": "batched", "device": "cpu", "shards": 2},
    "crf": {"shards": 2, "threads": 1},
    "segmentation": {"backbone": "tiny", "init": None, "iterations": 6, "batch_size": 2,
                     "crop": 48, "checkpoint_every": 3, "device": "cpu", "test_scales": [1.0]},
    "variants": {"base": {}, "strict": {"crf": {"confidence": 0.99}},
                 "no_caa": {"cam": {"caa": False}, "segmentation": {"enabled": False}}},
}


def smk(workdir: Path, config: dict, *args, check=True, timeout=None, env=None):
    """Run the workflow in `workdir` with `config` (written there as config.yaml)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "config.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(cfg), "--cores", "2", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_rules(workdir, config, *args) -> dict[str, int]:
    """Rule -> job count of a dry run."""
    out = smk(workdir, config, "-n", "--quiet", "rules", *args).stdout
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            counts[parts[0]] = int(parts[1])
    return counts
