"""The Snakemake workflow, run through the `snakemake` command in temporary folders."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from workflow_helpers import SNAKEMAKE, TINY_DEMO, planned_rules, smk


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("demo")
    smk(wd, TINY_DEMO)
    return wd


def test_every_stage_writes_its_outputs(demo_run):
    r = demo_run / "results" / "tiny"
    ds = json.loads((r / "data" / "dataset.json").read_text())
    n_train = ds["splits"]["train"]["n_images"]
    assert n_train > 0 and ds["splits"]["val"]["n_images"] > 0
    assert (r / "base" / "clip" / "clip.pt").is_file()
    assert "selected" in (r / "base" / "prompts" / "scores.tsv").read_text()
    npz = sorted(p.stem for s in (0, 1) for p in (r / "base" / "cams" / f"shard{s}").glob("*.npz"))
    assert len(npz) == n_train  # shards partition the images
    pngs = sorted(p.stem for s in (0, 1) for p in (r / "base" / "pseudo_masks" / f"shard{s}").glob("*.png"))
    assert pngs == npz
    for name in ("cams", "cams_plain", "pseudo_masks", "crf_labels", "segmentation_val"):
        ev = json.loads((r / "base" / "eval" / f"{name}.json").read_text())
        m = ev["at_chosen"]["mIoU"] if "at_chosen" in ev else ev["mIoU"]
        assert 0 <= m <= 1
    assert (r / "base" / "segmentation" / "model.pt").is_file()
    assert (r / "base" / "segmentation" / "train_log.csv").read_text().count("\n") == 7
    # variants share what they do not change: no CAMs for 'strict', no CRF for 'no_caa' seg
    assert not (r / "strict" / "cams").exists()
    assert (r / "strict" / "pseudo_masks").is_dir()
    assert (r / "no_caa" / "cams").is_dir() and not (r / "no_caa" / "segmentation").exists()
    for v in ("base", "strict", "no_caa", "comparison"):
        html = (demo_run / "reports" / "tiny" / f"{v}.html").read_text()
        assert "<table" in html and (demo_run / "reports" / "tiny" / f"{v}.md").is_file()
    # the final model's predictions on val images are shown where there is a model
    base = (demo_run / "reports" / "tiny" / "base.html").read_text()
    assert 'alt="validation gallery"' in base and 'alt="gallery"' in base
    assert 'alt="validation gallery"' not in (demo_run / "reports" / "tiny" / "no_caa.html").read_text()
    # the comparison says what each variant changes, and which stages it shares
    comparison = (demo_run / "reports" / "tiny" / "comparison.md").read_text()
    assert "- **strict**: crf.confidence=0.99; shared: CAMs + CAA from base" in comparison
    assert "- **no_caa**: cam.caa=false" in comparison
    for name in ("base.json", "comparison.json"):  # strict JSON: no bare NaN
        if (demo_run / "reports" / "tiny" / name).is_file():
            json.loads((demo_run / "reports" / "tiny" / name).read_text(),
                       parse_constant=lambda c: pytest.fail(f"{name}: {c} is not JSON"))
    # benchmarks and logs for every rule that ran
    for rule in ("cams0", "cams1", "crf0", "train_segmentation", "eval_cams"):
        assert (r / "base" / "benchmarks" / f"{rule}.tsv").is_file()
        assert (r / "base" / "logs" / f"{rule}.log").is_file()


def test_rerun_recomputes_nothing(demo_run):
    out = smk(demo_run, TINY_DEMO, "-n").stdout
    assert "Nothing to be done" in out, out[-3000:]


def test_changing_one_variants_crf_reruns_only_downstream(demo_run, tmp_path):
    cfg = json.loads(json.dumps(TINY_DEMO))
    cfg["variants"]["strict"]["crf"]["confidence"] = 0.9
    rules = planned_rules(demo_run, cfg)
    assert rules.get("crf") == 2, rules  # the two shards of 'strict' only
    for upstream in ("prepare_dataset", "train_clip", "score_prompts", "cams", "eval_cams"):
        assert upstream not in rules, rules
    assert {"eval_pseudo_masks", "train_segmentation", "report", "comparison_report"} <= set(rules)
    assert rules["train_segmentation"] == 1 and rules["report"] == 1


def test_editing_a_stages_code_reruns_that_stage_only_downstream(demo_run):
    """The CRF script is an input of the CRF rule: an edit reruns the CRF shards and what
    follows, not the CAMs. A new modification time alone does not (Snakemake compares
    checksums). The file is restored afterwards."""
    import os
    import time

    script = REPO / "scripts" / "crf.py"
    text, st = script.read_bytes(), script.stat()
    try:
        later = time.time() + 3600
        os.utime(script, (later, later))
        assert planned_rules(demo_run, TINY_DEMO) == {}
        script.write_bytes(text + b"# edited\n")
        os.utime(script, (later, later))
        rules = planned_rules(demo_run, TINY_DEMO)
    finally:
        script.write_bytes(text)
        os.utime(script, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert rules.get("crf") == 6, rules  # base, strict and no_caa, two shards each
    assert "cams" not in rules and "train_clip" not in rules, rules
    assert "train_segmentation" in rules and "report" in rules


@pytest.mark.parametrize("mutate,expect", [
    (lambda c: c["cam"].update(bogus=1), "bogus"),
    (lambda c: c["cam"].update(shards="two"), "shards"),
    (lambda c: c["variants"].update(bad={"crf": {"nonsense": True}}), "nonsense"),
    (lambda c: c["dataset"].update(kind="voc12", root="/nonexistent/VOC2012"), "/nonexistent/VOC2012"),
    (lambda c: c["cam"].update(mode="reference", autocast="fp16"), "autocast"),
    (lambda c: c.update(resources={"cams": {"mem": 4}}), "mem"),
    # names that become paths: inside their folder, apart from the workflow's own
    (lambda c: c["dataset"].update(name=".."), "dataset.name '..': names become folders"),
    (lambda c: c["variants"].update({"..": {}}), "variant '..': names become folders"),
    (lambda c: c["variants"].update({"a/b": {}}), "variant 'a/b'"),
    (lambda c: c["variants"].update(comparison={}), "variant 'comparison': the name of one of"),
    (lambda c: c["variants"].update(data={}), "variant 'data'"),
])
def test_config_errors_fail_before_any_job(tmp_path, mutate, expect):
    cfg = json.loads(json.dumps(TINY_DEMO))
    mutate(cfg)
    proc = smk(tmp_path, cfg, "-n", check=False)
    assert proc.returncode != 0
    assert expect in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    assert not (tmp_path / "results").exists()


def test_lint_is_clean():
    proc = subprocess.run([*SNAKEMAKE, "--lint", "-s", str(REPO / "Snakefile"),
                           "--directory", str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def shipped_config_on_golden(golden: Path, kind: str) -> dict:
    """The shipped config/<kind>.yaml, its data pointed at the golden set's layout, the
    small reference checkpoint given by path, and a segmentation stage small enough for CI."""
    sub, split = {"voc12": ("voc", "ImageSets/Segmentation/train.txt"),
                  "coco14": ("coco", "train.txt")}[kind]
    shipped = yaml.safe_load((REPO / "config" / f"{kind}.yaml").read_text())
    return deep_merge(shipped, {
        "dataset": {"name": f"g{kind}", "root": str(golden / sub), "train_split": split,
                    "val_split": split},
        "model": {"checkpoint": str(golden / "clip_tiny.pt")},
        "cam": {"device": "cpu", "shards": 2, "batch_size": 2},
        "crf": {"shards": 1, "threads": 2},
        # the shipped deeplab-pytorch protocol runs in test_real_data; here the CAM and CRF
        # parity is the point, so the cheaper single-scale protocol keeps this test short
        "segmentation": {"protocol": "torchvision", "iter_size": 1, "workers": 0,
                         "backbone": "tiny", "init": None, "iterations": 4, "batch_size": 2,
                         "crop": 64, "checkpoint_every": 2, "device": "cpu", "test_scales": [1.0]},
    })


@pytest.mark.parametrize("kind", ["voc12", "coco14"])
def test_benchmark_configs_on_real_layouts(golden, tmp_path, kind):
    """The shipped VOC12/COCO14 configs: as shipped, the missing data folder is reported
    before anything runs; pointed at the golden layout, a dry run and a real run whose
    CAM and CRF mIoU equal the authors' (every variant that keeps the method unchanged)."""
    shipped = yaml.safe_load((REPO / "config" / f"{kind}.yaml").read_text())
    dry = smk(tmp_path, shipped, "-n", check=False)
    assert dry.returncode != 0 and "does not exist" in dry.stdout + dry.stderr
    assert not (tmp_path / "results").exists()
    cfg = shipped_config_on_golden(golden, kind)
    assert "Job stats" in smk(tmp_path, cfg, "-n").stdout
    # the golden folders hold the converted layout (SegmentationClassAug/ or
    # SegmentationClass/): the conversion from the official downloads is skipped
    assert f"convert_{kind}" not in planned_rules(tmp_path, cfg)
    # the run: the variants that keep the method (the parity checked here); the ablations,
    # planned above, run on the stand-ins in test_real_data. One CAM shard: shards run in
    # test_faults, and each CAM job's start is most of its time on these ten images.
    cfg["variants"] = {v: o for v, o in cfg["variants"].items() if v in ("base", "reference")}
    cfg["cam"]["shards"] = 1
    smk(tmp_path, cfg)
    sub = {"voc12": "voc", "coco14": "coco"}[kind]
    ref = json.loads((golden / sub / "eval.json").read_text())
    results = tmp_path / "results" / f"g{kind}"
    same_method = [v for v, over in cfg["variants"].items()
                   if not over or over == {"cam": {"mode": "reference"}}]
    assert "base" in same_method
    for variant in same_method:
        ev = results / variant / "eval"
        cams = json.loads((ev / "cams.json").read_text())
        assert round(cams["at_chosen"]["mIoU"], 4) == round(ref["eval_cam_at_chosen_power"]["mIoU"], 4)
        crf = json.loads((ev / "crf_labels.json").read_text())
        assert round(crf["mIoU"], 4) == round(ref["crf_eval"]["mIoU"], 4)
    for variant in cfg["variants"]:
        assert (tmp_path / "reports" / f"g{kind}" / f"{variant}.html").is_file()
    assert (tmp_path / "reports" / f"g{kind}" / "comparison.md").is_file()


@pytest.mark.slow
def test_extra_seeds_train_predict_and_evaluate_once_each(tmp_path, golden):
    """segmentation.extra_seeds: one more training per seed; the run report and the
    comparison give each seed's number and the mean and spread."""
    from faults_helpers import custom_config, make_custom

    root = make_custom(tmp_path / "data", n_train=4, n_val=2)
    cfg = custom_config(root, name="seeds", shards=1)
    cfg["segmentation"]["extra_seeds"] = [5]
    cfg["variants"] = {"base": {}, "no_crf": {"crf": {"enabled": False}}}
    smk(tmp_path, cfg)
    r = tmp_path / "results" / "seeds"
    for v in ("base", "no_crf"):
        assert (r / v / "segmentation" / "seed5" / "model.pt").is_file()
        assert (r / v / "eval" / "segmentation_val_seed5.json").is_file()
        md = (tmp_path / "reports" / "seeds" / f"{v}.md").read_text()
        assert "mean ± std over 2 seeds" in md and "seed 0:" in md and "seed 5:" in md
    comparison = (tmp_path / "reports" / "seeds" / "comparison.md").read_text()
    assert "mean ± std over seeds" in comparison and "(n=2)" in comparison
    import torch

    from clipes.segmentation import load_trained

    a = load_trained(r / "base" / "segmentation" / "model.pt").state_dict()
    b = load_trained(r / "base" / "segmentation" / "seed5" / "model.pt").state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # another seed, another network
