"""The README's real-data commands, run verbatim from the root of a fresh copy of the
project, as a user types them: the VOC12 and COCO14 configs mean exactly what they say
(no demo job, no demo variant), and they run from the official downloads' layout (the
stand-ins) through every stage to the reports."""

import json
import os
import re

import pytest
import yaml

from conftest import REPO
from workflow_helpers import copy_project, dry_run_jobs, readme_commands, shell

pytestmark = pytest.mark.slow

DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
SECTIONS = {"voc12": "Reproducing VOC12", "coco14": "Reproducing COCO14"}
STANDINS = "python scripts/make_standins.py --out data/standins"


def command(section: str, starts: str) -> str:
    cmds = [c for c in readme_commands(section) if c.startswith(starts)]
    assert len(cmds) == 1, (section, starts, readme_commands(section))
    return cmds[0]


def deep_merge(base, over):
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def owners(cfg: dict, sections: tuple) -> set[str]:
    """Variants that compute a stage themselves: the first of each group agreeing on the
    config sections the stage depends on."""
    seen, out = set(), set()
    for name, over in cfg["variants"].items():
        merged = deep_merge({k: v for k, v in cfg.items() if k != "variants"}, over)
        key = json.dumps({s: merged.get(s) for s in sections}, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.add(name)
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("fresh") / "clipes")
    assert (root / "config" / "config.yaml").is_file()  # the demo config is there to leak
    assert STANDINS in readme_commands("Trying the real-data path offline")
    shell(root, STANDINS)
    return root


@pytest.mark.parametrize("kind", ["voc12", "coco14"])
def test_readme_dry_run_plans_exactly_the_named_config(project, kind):
    cmd = command(SECTIONS[kind], "snakemake")
    assert cmd == f"snakemake --cores all --configfile config/{kind}.yaml"
    # no data yet: a clear error naming the folder, before any job
    proc = shell(project, cmd + " -n", check=False)
    assert proc.returncode != 0 and "does not exist" in proc.stdout + proc.stderr
    assert not (project / "results" / kind).exists()
    # the downloads where the README puts them (here: the stand-ins, linked)
    data = project / "data"
    for name in (["VOCdevkit", "benchmark_RELEASE"] if kind == "voc12" else ["COCO2014"]):
        (data / name).symlink_to(data / "standins" / name)
    try:
        jobs = dry_run_jobs(project, cmd)
        cfg = yaml.safe_load((project / "config" / f"{kind}.yaml").read_text())
        rules = {r for r, _ in jobs}
        variants = set()
        for _, out in jobs:
            m = re.match(rf"(?:results|reports)/{kind}/([^/.]+)", out)
            if m and m.group(1) not in ("data", "comparison"):
                variants.add(m.group(1))
        assert variants == set(cfg["variants"]), variants
        assert not variants & set(DEMO["variants"]) - set(cfg["variants"])
        assert "train_clip" not in rules and "score_prompts" not in rules  # demo-only stages
        assert f"convert_{kind}" in rules  # from the official layout
        n = {r: sum(1 for rr, _ in jobs if rr == r) for r in rules}
        cam_owners = owners(cfg, ("dataset", "model", "labels", "text", "cam"))
        crf_owners = owners(cfg, ("dataset", "model", "labels", "text", "cam", "crf"))
        seg = {v for v in owners(cfg, ("dataset", "model", "labels", "text", "cam", "crf",
                                       "segmentation"))
               if deep_merge(cfg, cfg["variants"][v]).get("segmentation", {}).get("enabled", True)}
        assert n["cams"] == cfg["cam"]["shards"] * len(cam_owners), n
        assert n["crf"] == cfg["crf"]["shards"] * len(crf_owners), n
        assert n.get("train_segmentation", 0) == len(seg), n
        assert n["report"] == len(cfg["variants"]) and n["prepare_dataset"] == 1, n
        assert not any(o.startswith("results/demo") for _, o in jobs)
    finally:
        for name in ("VOCdevkit", "benchmark_RELEASE", "COCO2014"):
            if (data / name).is_symlink():
                (data / name).unlink()


@pytest.mark.parametrize("kind", ["voc12", "coco14"])
def test_readme_run_on_the_standins(project, golden, kind):
    """The offline section's command (CLIP weights by path, as the README says), through
    every stage; then a rerun has nothing to do."""
    cmd = command("Trying the real-data path offline", f"snakemake --cores all --configfile config/{kind}.yaml")
    weights = f" --config 'model={{checkpoint: {golden / 'clip_tiny.pt'}}}'"
    shell(project, cmd + weights, timeout=1500)
    name = f"{kind}_standins"
    results, reports = project / "results" / name, project / "reports" / name
    cfg = deep_merge(yaml.safe_load((project / "config" / f"{kind}.yaml").read_text()),
                     yaml.safe_load((project / "config" / "standins" / f"{kind}.yaml").read_text()))
    ds = json.loads((results / "data" / "dataset.json").read_text())
    conv = ds["conversion"]
    if kind == "voc12":
        assert conv["mask_source"] == "SBD" and conv["train_aug"] == ds["splits"]["train"]["n_images"]
        assert ds["splits"]["train"]["file"].endswith("train_aug.txt")
    else:
        empty = conv["splits"]["train"]["no_annotation"]
        assert len(empty) == 1 and ds["splits"]["train"]["n_images"] == conv["splits"]["train"]["with_labels"]
    n_train = ds["splits"]["train"]["n_images"]
    assert n_train > 0 and ds["splits"]["val"]["n_with_gt"] == ds["splits"]["val"]["n_images"] > 0
    for v in cfg["variants"]:
        assert (reports / f"{v}.html").is_file() and (reports / f"{v}.md").is_file()
    assert (reports / "comparison.html").is_file()
    assert {p.name for p in results.iterdir()} == {"data", "logs", "benchmarks", *cfg["variants"]}
    base = results / "base"
    cams = [p for s in base.glob("cams/shard*") for p in s.glob("*.npz")]
    masks = [p for s in base.glob("pseudo_masks/shard*") for p in s.glob("*.png")]
    assert len(cams) == len(masks) == n_train
    for ev in ("cams", "cams_plain", "pseudo_masks", "crf_labels", "segmentation_val"):
        assert (base / "eval" / f"{ev}.json").is_file(), ev
    assert (base / "segmentation" / "model.pt").is_file()
    # label-free: TagCLIP's tags, scored against the real labels, replace them downstream
    pred = results / "predicted_labels"
    tag_lines = (pred / "tags" / "tags.txt").read_text().splitlines()
    assert len(tag_lines) == n_train and all(len(ln.split()) >= 2 for ln in tag_lines)
    tags = json.loads((pred / "eval" / "tags.json").read_text())
    assert tags["n_scored"] == n_train and 0 <= tags["mAP"] <= 1 and 0 <= tags["F1"] <= 1
    html = (reports / "predicted_labels.html").read_text()
    assert "Label-free run" in html and "Tags (TagCLIP, label-free mode)" in html
    assert "Label-free run" not in (reports / "base.html").read_text()
    assert "labels.source=predicted" in (reports / "comparison.md").read_text()
    if kind == "voc12":  # the stand-in of VOC2012test.tar: packed for the evaluation server
        import tarfile

        test_ids = (project / cfg["dataset"]["test_root"] / "ImageSets" / "Segmentation" /
                    "test.txt").read_text().split()
        with tarfile.open(base / "voc_test" / "comp6_test_cls.tar.gz") as tar:
            names = {m.name for m in tar.getmembers() if m.isfile()}
        assert names == {f"results/VOC2012/Segmentation/comp6_test_cls/{i}.png" for i in test_ids}
        assert not (results / "reference" / "voc_test").exists()  # no model there
    assert not (base / "clip").exists() and not (base / "prompts").exists()
    assert not (project / "results" / "demo").exists()
    assert (results / "benchmarks" / f"convert_{kind}.tsv").is_file()
    assert "Nothing to be done" in shell(project, cmd + weights + " -n").stdout
    # the downloads extracted again (every file touched), with stray files beside them:
    # the conversion's inputs are followed by content, so nothing reruns
    standins = project / "data" / "standins"
    for p in standins.rglob("*"):
        if p.is_file():
            os.utime(p)
    for folder in [p for p in standins.rglob("*") if p.is_dir()]:
        (folder / ".DS_Store").write_bytes(b"\0\1")
        (folder / "._stray.png").write_bytes(b"macOS resource fork")
    if kind == "voc12":
        main = standins / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
        main.mkdir(exist_ok=True)
        (main / "cat_train.txt").write_text("2007_000001 1\n")
    else:
        (standins / "COCO2014" / "annotations" / "captions_val2014.json").write_text("{}")
    assert "Nothing to be done" in shell(project, cmd + weights + " -n").stdout
    # a real change of what the conversion reads reruns it
    changed = next((standins / "VOCdevkit" / "VOC2012" / "Annotations").glob("*.xml")) \
        if kind == "voc12" else standins / "COCO2014" / "annotations" / "instances_val2014.json"
    changed.write_text(changed.read_text().replace("</annotation>", "<!-- edited --></annotation>")
                       if kind == "voc12" else changed.read_text() + "\n")
    planned = {r for r, _ in dry_run_jobs(project, cmd + weights)}
    assert f"convert_{kind}" in planned, planned


def test_the_voc_layout_of_clip_es_readme_is_converted(project, golden, tmp_path):
    """CLIP-ES's and deeplab-pytorch's READMEs put SegmentationClassAug/ inside
    VOCdevkit/VOC2012/ without train_aug.txt (macOS ._ files included, as a zip made on a
    Mac carries them): the workflow builds train_aug.txt from it and runs through."""
    import shutil

    voc = tmp_path / "VOCdevkit" / "VOC2012"
    shutil.copytree(project / "data" / "standins" / "VOCdevkit" / "VOC2012", voc, symlinks=True)
    shutil.copytree(project / "data" / "standins" / "SegmentationClassAug", voc / "SegmentationClassAug")
    (voc / "SegmentationClassAug" / "._2007_000001.png").write_bytes(b"resource fork")
    assert not (voc / "ImageSets" / "Segmentation" / "train_aug.txt").exists()
    over = tmp_path / "clip_es_layout.yaml"
    over.write_text(yaml.safe_dump({
        "dataset": {"name": "voc12_clipes_layout", "root": str(voc), "sbd": None, "aug_masks": None,
                    "test_root": None},
        "variants": {"base": {}, "reference": {"segmentation": {"enabled": False}},
                     "no_crf": {"segmentation": {"enabled": False}}},
        "model": {"checkpoint": str(golden / "clip_tiny.pt")}}))
    cmd = (f"snakemake --cores all --configfile config/voc12.yaml config/standins/voc12.yaml {over}")
    rules = {r for r, _ in dry_run_jobs(project, cmd)}
    assert "convert_voc12" in rules
    # end to end for the base variant (the others add nothing to what the layout tests)
    shell(project, cmd.replace("snakemake ", "snakemake reports/voc12_clipes_layout/base.html ", 1),
          timeout=1500)
    results = project / "results" / "voc12_clipes_layout"
    conv = json.loads((results / "data" / "converted" / "convert.json").read_text())
    assert conv["mask_source"] == "SegmentationClassAug"
    train_aug = (results / "data" / "converted" / "ImageSets" / "Segmentation" / "train_aug.txt")
    ids = train_aug.read_text().split()
    assert ids and not any(i.startswith(".") for i in ids)
    assert (project / "reports" / "voc12_clipes_layout" / "base.html").is_file()
