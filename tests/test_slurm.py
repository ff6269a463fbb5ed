"""The workflow on a real SLURM: a single-node cluster started by tests/slurm/minicluster.sh
(slurmctld, slurmd and munge on this machine; a `gpu` gres backed by a dummy device), the
shipped profiles/slurm and profiles/slurm-packed, and the outputs compared with a local run.

Skipped, with the reason, where the daemons cannot run (no root, no apt, another Slurm
installed). The module's cluster is stopped at the end, whatever happened."""

import csv
import importlib.util
import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from workflow_helpers import TINY_DEMO, planned_rules, smk

MINICLUSTER = REPO / "tests" / "slurm" / "minicluster.sh"
# one variant; CAMs, prompts and segmentation on device 'auto', so their jobs request a
# GPU (they run on the CPU: the gres is a dummy); requests small enough for the node
CONFIG = {
    **TINY_DEMO,
    "cam": {**TINY_DEMO["cam"], "device": "auto"},
    "segmentation": {**TINY_DEMO["segmentation"], "device": "auto"},
    "resources": {rule: {"mem_mb": 2000, "runtime": 10}
                  for rule in ("score_prompts", "cams", "train_segmentation", "predict_segmentation")},
    "variants": {"base": {}},
}
GPU_RULES = {"cams", "score_prompts", "train_segmentation", "predict_segmentation"}
LOCAL_RULES = {"all", "variant_config"}
# outputs that record time, not results; compared by their other fields below
# files with timing fields, and those fields
TIMED = {"records.tsv": ("seconds", "decode_s", "write_s"), "train_log.csv": ("seconds",),
         "summary.json": ("seconds",)}


@pytest.fixture(scope="module")
def slurm_cluster():
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')")
    if shutil.which("bash") is None:
        pytest.skip("bash is needed to start the test cluster")
    state = Path(tempfile.mkdtemp(prefix="clipes-slurm-"))  # short: munge's socket lives here
    try:
        proc = subprocess.run(["bash", str(MINICLUSTER), "start", str(state)],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode == 3:
            pytest.skip(f"no SLURM on this machine: {proc.stderr.strip().splitlines()[-1]}")
        assert proc.returncode == 0, f"minicluster start failed:\n{proc.stdout}\n{proc.stderr}"
        yield state
    finally:
        subprocess.run(["bash", str(MINICLUSTER), "stop", str(state)],
                       capture_output=True, text=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def slurm_jobs(ids: list[str]) -> dict[str, dict]:
    """SLURM's record of each job: its state, comment (the rule) and GPU request."""
    jobs = {}
    for jid in ids:
        out = subprocess.run(["scontrol", "show", "job", "-o", jid],
                             capture_output=True, text=True, check=True).stdout
        fields = dict(re.findall(r"(\w+)=(\S*)", out))
        jobs[jid] = {"state": fields.get("JobState"), "comment": fields.get("Comment", ""),
                     "gpu": "gpu" in fields.get("TresPerJob", "") + fields.get("TresPerNode", "")}
    return jobs


def result_files(root: Path) -> dict[str, Path]:
    """Files of a run that hold results: everything but logs, benchmarks and reports
    (those record times and machine load)."""
    files = {}
    for p in sorted((root / "results").rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and "/logs/" not in rel and "/benchmarks/" not in rel:
            files[rel] = p
    return files


def same_content(a: Path, b: Path) -> bool:
    if a.suffix == ".pt":  # checkpoints: equal tensors (torch.save stamps a fresh id)
        ta, tb = (torch.load(p, map_location="cpu", weights_only=False) for p in (a, b))
        return _equal(ta, tb)
    if a.name in TIMED:
        drop = TIMED[a.name]
        if a.suffix == ".json":
            ja, jb = (json.loads(p.read_text()) for p in (a, b))
            for k in drop:
                ja.pop(k), jb.pop(k)
            return ja == jb
        rows = [[{k: v for k, v in r.items() if k not in drop}
                 for r in csv.DictReader(io.StringIO(p.read_text()),
                                         delimiter="\t" if a.suffix == ".tsv" else ",")]
                for p in (a, b)]
        return rows[0] == rows[1]
    return a.read_bytes() == b.read_bytes()


def _equal(x, y) -> bool:
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_equal(x[k], y[k]) for k in x)
    if torch.is_tensor(x):
        return torch.equal(x, y)
    if isinstance(x, np.ndarray):
        return np.array_equal(x, y)
    return x == y


def test_workflow_through_slurm_equals_local_run(slurm_cluster, tmp_path):
    local, cluster = tmp_path / "local", tmp_path / "slurm"
    planned = planned_rules(local, CONFIG)
    smk(local, CONFIG)
    proc = smk(cluster, CONFIG,
               "--profile", REPO / "profiles" / "slurm",
               "--profile", REPO / "profiles" / "slurm-packed",
               "--profile", REPO / "tests" / "slurm" / "profile",
               timeout=1200)
    log = proc.stdout + proc.stderr

    # every job went through SLURM, except the rules meant to run on the submitting host
    ran_here = set(re.findall(r"^\s*localrule (\w+):", log, re.M))
    assert ran_here <= LOCAL_RULES, ran_here
    for rule in set(planned) - LOCAL_RULES:
        assert re.search(rf"^\s*rule {rule}:", log, re.M), f"{rule} did not run:\n{log[-3000:]}"
    ids = re.findall(r"submitted with SLURM jobid (\d+)", log)
    jobs = slurm_jobs(ids)
    assert ids and all(j["state"] == "COMPLETED" for j in jobs.values()), jobs
    finished = len(re.findall(r"^Finished jobid", log, re.M))
    assert finished == sum(planned.values()), (finished, planned)
    # GPU stages asked SLURM for the gres; CPU stages did not; the packed profile packed
    by_rule = {j["comment"]: j for j in jobs.values()}
    for comment, job in by_rule.items():
        rule = re.match(r"rule_(\w+?)_wildcards", comment)
        if rule:
            assert job["gpu"] == (rule.group(1) in GPU_RULES), (comment, job)
    assert any(c.startswith("rule_crf_shards") for c in by_rule), by_rule.keys()
    assert any(c.startswith("rule_evaluation") for c in by_rule), by_rule.keys()

    # the same results as on one machine
    a, b = result_files(local), result_files(cluster)
    assert a.keys() == b.keys(), set(a) ^ set(b)
    assert len(a) > 50
    differ = [rel for rel in a if not same_content(a[rel], b[rel])]
    assert not differ, differ
    for name in ("base.html", "base.md", "comparison.md"):
        assert (cluster / "reports" / "tiny" / name).is_file()
    # and a dry run on the cluster side has nothing left to do
    assert "Nothing to be done" in smk(cluster, CONFIG, "-n").stdout
