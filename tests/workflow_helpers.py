"""Running the workflow through the `snakemake` command, shared by the workflow tests."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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
                     "crop": 48, "checkpoint_every": 3, "device": "cpu", "test_scales": [1.0],
                     "workers": 0},
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


def copy_project(dst: Path) -> Path:
    """The project as it is checked out here (uncommitted edits included, ignored files
    left out): what a fresh clone of this state holds."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout")
    for rel in filter(None, listed.stdout.split("\0")):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def user_env() -> dict:
    """The environment of a user's shell: this Python's scripts (snakemake) first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def shell(cwd: Path, command: str, check: bool = True, timeout=None) -> subprocess.CompletedProcess:
    """Run a command line as a user types it, from `cwd`."""
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True,
                          env=user_env(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{command!r} in {cwd} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def readme_commands(section: str) -> list[str]:
    """The command lines of the bash blocks in one README section (## heading)."""
    text = (REPO / "README.md").read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start:end if end > 0 else None]
    cmds, inside = [], False
    for line in body.splitlines():
        if line.lstrip().startswith("```"):  # a fence, also indented under a list item
            inside = line.strip() == "```bash" if not inside else False
            continue
        if inside and line.strip() and not line.lstrip().startswith("#"):
            cmds.append(line.split("  #")[0].strip())
    return cmds


def dry_run_jobs(cwd: Path, command: str) -> list[tuple[str, str]]:
    """(rule, first output) of every job a command's dry run (-n appended) plans."""
    out = shell(cwd, command + " -n").stdout
    jobs, rule = [], None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("rule ") or line.startswith("localrule "):
            rule = line.split()[1].rstrip(":")
        elif line.startswith("output:") and rule:
            jobs.append((rule, line.split()[1].rstrip(",")))
            rule = None
    return jobs
