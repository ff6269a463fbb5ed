"""The workflow wherever Snakemake runs: the job's own Python, use as a module of another
workflow, the catalog's files, `snakemake --report`, one GPU slot per job, and model
towers refused at load time."""

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_script
from workflow_helpers import SNAKEMAKE, TINY_DEMO, smk

SMALL = {**TINY_DEMO, "variants": {"base": {}}}


def test_a_job_runs_the_python_first_on_path(tmp_path):
    """Snakemake runs in this Python; a virtual environment first on PATH (as an activated
    conda environment or a container's Python would be) must run the jobs."""
    env_dir = tmp_path / "jobenv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    site = next(env_dir.glob("lib/python*/site-packages"))
    marker = tmp_path / "pythons.txt"
    (site / "sitecustomize.py").write_text(
        f"import sys\nopen({str(marker)!r}, 'a').write(sys.executable + '\\n')\n")
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    cfg = {**SMALL, "model": {**SMALL["model"], "pretrain": {**SMALL["model"]["pretrain"], "steps": 2}}}
    smk(tmp_path / "wd", cfg, "--until", "prepare_dataset", env=env)
    used = set(marker.read_text().split())
    assert str(env_dir / "bin" / "python") in used, used
    assert (tmp_path / "wd" / "results" / "tiny" / "data" / "dataset.json").is_file()


def outer_workflow(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(SMALL, sort_keys=False))
    (folder / "Snakefile").write_text(
        'configfile: "config.yaml"\n\n\n'
        "module clipes:\n"
        f'    snakefile: "{REPO / "workflow" / "Snakefile"}"\n'
        "    config: config\n\n\n"
        "use rule * from clipes as clipes_*\n\n\n"
        "rule everything:\n"
        "    input:\n"
        "        rules.clipes_all.input,\n"
        "    default_target: True\n")


def test_used_as_a_module_of_another_workflow_with_snakemake_report(tmp_path):
    outer = tmp_path / "outer"
    outer_workflow(outer)
    run = lambda *a: subprocess.run([*SNAKEMAKE, "--cores", "2", *a], cwd=outer,  # noqa: E731
                                    capture_output=True, text=True)
    dry = run("-n")
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    assert "clipes_cams" in dry.stdout and "clipes_report" in dry.stdout
    real = run()
    assert real.returncode == 0, real.stdout[-3000:] + real.stderr[-3000:]
    assert (outer / "reports" / "tiny" / "base.html").is_file()
    assert not (outer / "scripts").exists()  # nothing resolved against the outer folder
    assert "Nothing to be done" in run("-n").stdout
    # Snakemake's own report of that run carries the results flagged with report()
    rep = run("--report", str(tmp_path / "report.zip"))
    assert rep.returncode == 0, rep.stderr[-3000:]
    with zipfile.ZipFile(tmp_path / "report.zip") as z:
        joined = "\n".join(z.namelist())
    for want in ("base.html", "comparison.html", "cams.json", "pseudo_masks.json",
                 "segmentation_val.json", "train_log.png"):
        assert want in joined, (want, joined[:2000])


def test_config_readme_matches_the_schema():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "config_docs.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = (REPO / "config" / "README.md").read_text()
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    for section, node in schema["properties"].items():
        for key in node.get("properties", {}):
            assert f"`{section}.{key}`" in text, (section, key)


def test_catalog_files_state_what_is_there():
    cat = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    assert (REPO / "workflow" / "Snakefile").is_file() and (REPO / "LICENSE").is_file()
    assert "--configfile config/voc12.yaml" in cat["usage"]["mandatory-flags"]["flags"]
    assert (REPO / "config" / "voc12.yaml").is_file()
    assert cat["usage"]["software-stack-deployment"]["conda"] is True
    envs = list((REPO / "workflow" / "envs").glob("*.yaml"))
    assert envs and all("conda:" in p.read_text() for p in (REPO / "workflow" / "rules").glob("[!c]*.smk"))
    assert "Lin" in (REPO / "CITATION.cff").read_text() and "CVPR" in (REPO / "CITATION.cff").read_text()


def test_snakefmt_is_clean():
    pytest.importorskip("snakefmt")
    files = [REPO / "Snakefile", REPO / "workflow"]
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *map(str, files)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ GPU slots
HOLD = """
import json, sys, time
from clipes import gpuslots
t0 = time.time()
slot = gpuslots.acquire(poll=0.05, log=lambda m: None)
t1 = time.time()
time.sleep(float(sys.argv[1]))
import os
print(json.dumps({"slot": slot, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                  "start": t1, "end": time.time(), "waited": t1 - t0}))
"""


def hold_slots(tmp_path, n_jobs, slots, seconds):
    env = {**os.environ, "CLIPES_GPU_SLOTS": str(slots), "CLIPES_GPU_LOCK_DIR": str(tmp_path / "locks"),
           "PYTHONPATH": str(REPO)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    procs = [subprocess.Popen([sys.executable, "-c", HOLD, str(seconds)], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(n_jobs)]
    return [json.loads(p.communicate(timeout=120)[0]) for p in procs]


def test_gpu_slots_give_concurrent_jobs_distinct_devices(tmp_path):
    jobs = hold_slots(tmp_path, 4, 4, 3.0)
    assert sorted(j["slot"] for j in jobs) == [0, 1, 2, 3]
    assert sorted(j["cuda"] for j in jobs) == ["0", "1", "2", "3"]
    latest_start = max(j["start"] for j in jobs)
    assert all(j["end"] > latest_start for j in jobs)  # all four held at once


def test_a_job_waits_for_a_free_slot(tmp_path):
    jobs = hold_slots(tmp_path, 3, 2, 2.0)
    for a in jobs:  # no two jobs hold one slot at the same time
        for b in jobs:
            if a is not b and a["slot"] == b["slot"]:
                assert a["end"] <= b["start"] or b["end"] <= a["start"], (a, b)
    assert max(j["waited"] for j in jobs) > 1.0


def test_one_gpu_or_a_scheduler_given_gpu_is_left_alone(monkeypatch):
    from clipes import gpuslots

    monkeypatch.delenv("CLIPES_GPU_SLOTS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # e.g. set by SLURM for --gpus=1
    assert gpuslots.acquire() is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"


# ------------------------------------------------------------------------------ model towers
@pytest.mark.parametrize("name,why", [
    ("RN50", "not a ViT"),
    ("coca_ViT-B-32", "attention pooler"),
    ("EVA02-B-16", "timm trunk"),
])
def test_unsupported_towers_are_refused_at_load_time(name, why):
    from clipes.model import ClipLoadError, load_clip

    with pytest.raises(ClipLoadError) as e:
        load_clip(name, "none")
    assert why in str(e.value) and name in str(e.value) and "ViT-B-16" in str(e.value)


def test_random_weights_are_seeded():
    import torch

    from clipes.model import load_clip

    a, b = load_clip("ViT-M-16-alt", "none", seed=1), load_clip("ViT-M-16-alt", None, seed=1)
    c = load_clip("ViT-M-16-alt", "none", seed=2)
    pa, pb, pc = (next(iter(m.model.visual.parameters())) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_refused_tower_is_one_line_from_a_script(golden):
    voc = golden / "voc"
    proc = run_script("cams", "--dataset", "voc12", "--root", voc, "--split",
                      voc / "ImageSets/Segmentation/train.txt", "--model", "RN50",
                      "--pretrained", "none", "--out", "/tmp/unused-cams", "--device", "cpu",
                      check=False)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "RN50" in lines[0] and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------ --help
def _parsers(script: Path):
    """The argument parsers a script builds (its own, and its subcommands')."""
    import argparse
    import importlib.util

    class Built(Exception):
        pass

    def grab(self, *a, **k):
        raise Built(self)

    spec = importlib.util.spec_from_file_location(f"script_{script.stem}", script)
    mod = importlib.util.module_from_spec(spec)
    saved = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = grab
    try:
        spec.loader.exec_module(mod)
        build = getattr(mod, "parse_args", None) or mod.main
        try:
            build([])
        except TypeError:  # main() reads sys.argv itself
            build()
    except Built as b:
        parser = b.args[0]
    finally:
        argparse.ArgumentParser.parse_args = saved
    out = [parser]
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            out += list(a.choices.values())
    return out


SCRIPTS = sorted([*(REPO / "scripts").glob("*.py"), *(REPO / "benchmarks").glob("*.py")])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_option_has_help_and_examples_print_as_written(script):
    import argparse
    import ast

    for parser in _parsers(script):
        for a in parser._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert a.help, (script.name, a.option_strings or a.dest)
    source = script.read_text()
    doc = ast.get_docstring(ast.parse(source), clean=False)
    literal = source[source.index('"""') + 3:source.index('"""', source.index('"""') + 3)]
    assert doc.count("\n") == literal.count("\n"), f"{script.name}: a line of the docstring " \
        f"ends in a single backslash, which joins it to the next: write \\\\"
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for line in doc.splitlines():
        if line.strip().startswith("python "):
            assert line.rstrip() in proc.stdout, (script.name, line)


# ------------------------------------------------------------------------------ install
@pytest.mark.slow
def test_the_quick_start_install_resolves_in_a_fresh_virtual_environment(tmp_path):
    """The README's quick start as written, from a fresh copy, up to the demo: a new venv,
    the CPU build of torch first, then the project with constraints.txt (pip's resolver in
    dry-run mode: a real install takes minutes; PyTorch's CPU index is replaced by PyPI,
    which this machine reaches)."""
    from workflow_helpers import copy_project, readme_commands

    (cmd,) = readme_commands("Quick start")[:1]
    install, _, rest = cmd.partition(" && ")
    assert install == "bash scripts/install.sh" and rest.startswith(". .venv/bin/activate")
    project = copy_project(tmp_path / "clipes")
    env = dict(os.environ, CLIPES_INSTALL_DRY_RUN="1",
               CLIPES_TORCH_CPU_INDEX="https://pypi.org/simple")
    proc = subprocess.run(["bash", "-c", install + " cpu"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (project / ".venv" / "bin" / "python").is_file()
    would = proc.stdout + proc.stderr
    assert "Would install" in would and "torch-2.14.1" in would and "clipes-0.1.0" in would
    bad = subprocess.run(["bash", "scripts/install.sh", "gpu"], cwd=project, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "usage: bash scripts/install.sh" in bad.stderr


def test_readme_layout_names_every_module_and_only_what_exists():
    import re

    text = (REPO / "README.md").read_text()
    start = text.index("## Layout\n")
    end = text.find("\n## ", start + 1)
    layout = text[start:end if end > 0 else None]
    rows = {}
    for line in layout.splitlines():
        if line.startswith("| `"):
            cells = line.split(" | ")
            for path in re.findall(r"`([^`]+)`", cells[0]):
                rows[path] = line
    pkg = REPO / "clipes"
    for mod in sorted(pkg.glob("*.py")):
        if mod.name != "__init__.py":
            assert f"clipes/{mod.name}" in rows, f"README layout: no line for clipes/{mod.name}"
    for sub in sorted(p for p in pkg.iterdir() if (p / "__init__.py").is_file()):
        row = rows.get(f"clipes/{sub.name}/")
        assert row, f"README layout: no line for clipes/{sub.name}/"
        for mod in sorted(sub.glob("*.py")):
            if mod.name != "__init__.py":
                assert f"`{mod.stem}`" in row, f"README layout: clipes/{sub.name}/{mod.name} not named"
    for path in rows:
        if "/" in path and not path.startswith(("results", "reports")):
            assert (REPO / path.rstrip("/")).exists(), f"README layout names {path}, which is not in the tree"
