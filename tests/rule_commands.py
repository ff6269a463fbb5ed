"""The shell command and resources of every job the shipped configs plan, as text.

The workflow builds each rule's command line from the config (variant merging, stage
ownership, argument building, resources); this records what it builds for every config the
repository ships, from a dry run of a copy of the project, so that moving that logic
(or changing it by accident) shows as a difference. tests/test_rule_commands.py compares
a fresh record with the one in tests/data/rule_commands/; after an intended change:

    python tests/rule_commands.py --update
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import REPO  # noqa: E402
from workflow_helpers import copy_project  # noqa: E402

GOLDEN = REPO / "tests" / "data" / "rule_commands"

# name -> the config files a user gives (the stand-in configs override the official ones)
CONFIGS = {
    "demo": [],
    "voc12_standins": ["config/voc12.yaml", "config/standins/voc12.yaml"],
    "coco14_standins": ["config/coco14.yaml", "config/standins/coco14.yaml"],
    "custom_example": ["config/custom.example.yaml"],
}


def make_inputs(root: Path) -> None:
    """What the configs read before they plan: the stand-in archives and a two-image
    custom dataset where config/custom.example.yaml looks for one."""
    subprocess.run([sys.executable, "scripts/make_standins.py", "--out", "data/standins"],
                   cwd=root, check=True, capture_output=True)
    from PIL import Image

    d = root / "data" / "my_dataset"
    d.mkdir(parents=True, exist_ok=True)
    for name in ("img001.jpg", "img002.jpg"):
        Image.new("RGB", (32, 24), (90, 120, 40)).save(d / name)
    (d / "labels.csv").write_text("image,labels\nimg001.jpg,cat\nimg002.jpg,cat;person\n")


def _jobs(text: str, root: Path) -> list[str]:
    """One block per job: rule, wildcards, resources, shell command; repository path and
    interpreter written as <repo> and <python>, jobs sorted."""
    blocks, cur = [], None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith(("rule ", "localrule ")) and s.endswith(":"):
            cur = {"rule": s.split()[1].rstrip(":")}
            blocks.append(cur)
        elif cur is not None and s.startswith(("wildcards:", "resources:")):
            key, _, value = s.partition(":")
            if key == "resources":  # the tmpdir Snakemake picks is the machine's, not ours
                value = ", ".join(v for v in value.split(", ") if not v.strip().startswith("tmpdir"))
            cur[key] = value.strip()
        elif cur is not None and s.startswith("Shell command:"):
            cur["shell"] = s.partition(":")[2].strip()
        elif not s:
            cur = None
    out = []
    for b in blocks:
        cmd = b.get("shell", "")
        cmd = cmd.replace(str(root), "<repo>").replace(sys.executable, "<python>")
        cmd = re.sub(r"\s+", " ", cmd)
        out.append(f"{b['rule']} [{b.get('wildcards', '')}]\n  resources: "
                   f"{b.get('resources', '')}\n  shell: {cmd}")
    return sorted(out)


def record(root: Path, name: str) -> str:
    files = CONFIGS[name]
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "--cores", "2"]
    if files:
        cmd += ["--configfile", *files]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dry run of {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return "\n".join(_jobs(proc.stdout, root)) + "\n"


def record_all(workdir: Path) -> dict[str, str]:
    root = copy_project(workdir / "project")
    make_inputs(root)
    return {name: record(root, name) for name in CONFIGS}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--update", action="store_true", help="rewrite tests/data/rule_commands/")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        records = record_all(Path(tmp))
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name, text in records.items():
        path = GOLDEN / f"{name}.txt"
        if a.update:
            path.write_text(text)
        print(f"{name}: {text.count(chr(10) + '  shell:')} jobs"
              f"{'' if a.update else ' (same)' if path.is_file() and path.read_text() == text else ' (differs)'}")


if __name__ == "__main__":
    main()
