"""Sharing through DVC, as the README's "Sharing data and results" section does it: the
producer tracks data/ (data.dvc) and a finished run (results/<dataset>, reports/<dataset>;
the CAMs are left out by .dvcignore) and pushes them; a colleague clones, pulls,
re-stamps, and has nothing left to compute, yet a config change still reruns its stage."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

import workflow_helpers as helpers
from workflow_helpers import SNAKEMAKE, TINY_DEMO

CONFIG = {**TINY_DEMO, "variants": {"base": {}}}
SHARED = ["data", "results/tiny", "reports/tiny"]


def run(cwd: Path, *cmd) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def git(cwd, *args):
    return run(cwd, "git", "-c", "user.name=clipes-test", "-c", "user.email=test@clipes.invalid",
               "-c", "init.defaultBranch=main", *args)


def dvc(cwd, *args):
    return run(cwd, sys.executable, "-m", "dvc", *args)


def snakemake(cwd, *args):
    return run(cwd, *SNAKEMAKE, "--configfile", "config/tiny.yaml", *args)


def tree(root: Path, skip_cams=False) -> dict[str, str]:
    files = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(root.rglob("*")) if p.is_file()}
    if skip_cams:
        files = {k: v for k, v in files.items() if "/cams/" not in f"/{k}"}
    return files


def copy_project(dst: Path):
    """The project as checked out here, as a new git repository."""
    helpers.copy_project(dst)
    git(dst, "init", "-q")


def test_data_and_results_round_trip_through_a_dvc_remote(tmp_path):
    producer, consumer, store = tmp_path / "producer", tmp_path / "consumer", tmp_path / "store"
    copy_project(producer)
    assert "remote = storage" in (producer / ".dvc" / "config").read_text()
    (producer / "config" / "tiny.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    # a dataset in data/, where the README puts VOC2012 and COCO2014
    rng = np.random.default_rng(0)
    for i in range(3):
        img = (rng.random((24, 32, 3)) * 255).astype(np.uint8)
        (producer / "data" / "mine" / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(producer / "data" / "mine" / "images" / f"{i}.png")
    (producer / "data" / "mine" / "labels.csv").write_text("image,labels\n0.png,cat\n")
    git(producer, "add", "-A")
    git(producer, "commit", "-q", "-m", "project with its config")
    dvc(producer, "remote", "modify", "--local", "storage", "url", store)

    # producer: run, track, commit the .dvc files, push
    snakemake(producer, "--cores", "2")
    dvc(producer, "add", "data")
    dvc(producer, "add", "results/tiny", "reports/tiny")
    git(producer, "add", "data.dvc", "results/tiny.dvc", "reports/tiny.dvc", "reports/metrics",
        "reports/plots")
    git(producer, "commit", "-q", "-m", "data and the tiny run")
    assert git(producer, "status", "--porcelain") == ""  # .gitignore already covers them
    # dvc.yaml: the headline numbers and the training curves, for dvc metrics/plots diff
    shown = dvc(producer, "metrics", "show")
    assert "reports/metrics/tiny.json" in shown and "base.CAA" in shown, shown
    out = dvc(producer, "plots", "show", "--json")
    plots, _ = json.JSONDecoder().raw_decode(out[out.index("{"):])
    assert any(k.endswith("base_train_loss.csv") for k in plots["data"]), plots["data"].keys()
    dvc(producer, "push")
    assert "Nothing to be done" in snakemake(producer, "-n")  # tracking changed nothing

    # colleague: clone, pull, re-stamp, nothing to do
    git(tmp_path, "clone", "-q", producer, consumer)
    dvc(consumer, "remote", "modify", "--local", "storage", "url", store)
    for path in SHARED:
        assert not (consumer / path).exists()
    dvc(consumer, "pull")
    for path in SHARED:
        mine, theirs = tree(producer / path, skip_cams=True), tree(consumer / path)
        assert len(mine) > 0 and mine == theirs, path
    assert (producer / "results/tiny/base/cams").is_dir()
    assert not (consumer / "results/tiny/base/cams").exists()  # .dvcignore
    assert "snakemake --touch" in snakemake(consumer, "-n")  # the workflow says what to do
    snakemake(consumer, "--touch", "--cores", "1")
    dry = snakemake(consumer, "-n")
    assert "Nothing to be done" in dry and "snakemake --touch" not in dry
    for path in SHARED:  # re-stamping changes times, never contents
        assert tree(producer / path, skip_cams=True) == tree(consumer / path), path

    # the re-stamp also recorded parameters: a CRF change reruns the CRF (and, since they
    # were not shared, the CAMs it reads), not the CLIP or the dataset
    changed = {**CONFIG, "crf": {**CONFIG["crf"], "confidence": 0.9}}
    (consumer / "config" / "tiny.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    plan = snakemake(consumer, "-n", "--quiet", "rules")
    ran = {line.split()[0] for line in plan.splitlines()
           if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert {"crf", "cams", "train_segmentation", "report"} <= ran, plan
    assert not {"prepare_dataset", "train_clip"} & ran, plan
