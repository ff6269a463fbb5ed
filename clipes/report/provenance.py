"""What a report says about where its numbers come from: git commit, config hash, package
versions, the machine, and the CLIP the CAM stage loaded."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import subprocess
from pathlib import Path


def clip_used(config: dict) -> str:
    """The CLIP the CAM stage ran with, in words: the config dump keeps the unused
    name/pretrained defaults, so the header says which weights were actually loaded."""
    from ..model import RANDOM_TAGS  # load_clip's own list of "no weights" tags

    m = config.get("model", {})
    if m.get("pretrain", {}).get("enabled"):
        p = m["pretrain"]
        return (f"tiny CLIP trained by this workflow on the dataset's captions (model.pretrain: "
                f"{p.get('steps')} steps, seed {p.get('seed', 0)})")
    if m.get("checkpoint"):
        return f"checkpoint {m['checkpoint']}"
    tag = m.get("pretrained", "openai")
    if tag is None or str(tag).lower() in RANDOM_TAGS:
        return f"{m.get('name', 'ViT-B-16')} with random weights (seed {m.get('seed', 0)})"
    return f"{m.get('name', 'ViT-B-16')} / {tag}"


PACKAGES = {  # name in the report -> distributions that provide it
    "open_clip": ("open_clip_torch",), "numpy": ("numpy",), "pandas": ("pandas",),
    "snakemake": ("snakemake",), "pydensecrf": ("pydensecrf2", "pydensecrf"),
}


def _dist_version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(config: dict, repo: Path | None = None) -> dict:
    import torch

    repo = repo or Path(__file__).resolve().parents[2]

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit, dirty = _deployed_source(repo), False
    if commit is None:  # a clone (or a module given as a local path): ask git
        commit = git("rev-parse", "--short", "HEAD") or "unknown"
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    versions = {"torch": torch.__version__}  # with its build tag (+cu130), which metadata lacks
    for mod, dists in PACKAGES.items():  # read from the installed metadata: nothing imported
        versions[mod] = next((v for v in map(_dist_version, dists) if v), "not installed")
    device = machine_description("cuda" if torch.cuda.is_available() else "cpu")
    cfg_text = json.dumps(config, sort_keys=True)
    return {
        "config_hash": hashlib.sha256(cfg_text.encode()).hexdigest()[:12],
        "config_yaml": _yaml(config),
        "git_commit": commit, "git_dirty": dirty, "versions": versions, "device": device,
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


def _deployed_source(repo: Path) -> str | None:
    """Where a deployed copy of the workflow came from (`host/owner/repo/workflow/rules@tag`):
    the workflow writes SOURCE.json into the copy it makes of its files when Snakemake
    fetched them (`snakedeploy`, `github(...)` modules). None for a clone, where git is
    asked instead (a deployment folder may be a git repository of its own)."""
    try:
        data = json.loads((repo / "SOURCE.json").read_text())
    except (OSError, ValueError):
        return None
    value = data.get("workflow") if isinstance(data, dict) else None
    return str(value)[:300] if value else None


def machine_description(device: str = "cpu") -> str:
    """GPU name, or CPU model and core count: what timings are reported with."""
    import os

    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def _yaml(obj) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)
