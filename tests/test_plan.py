"""clipes.plan: the workflow's logic over a config dict, without Snakemake."""

import subprocess
import sys

import pytest
import yaml

from clipes import plan
from conftest import REPO

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def validate(cfg):
    from snakemake.utils import validate as smk_validate

    smk_validate(cfg, str(SCHEMA))


def make_plan(cfg, root="."):
    variants = plan.load_variants(cfg, validate)
    return plan.Plan(cfg, variants, root)


def demo(**variants):
    """The demo config, with the tiny CLIP trained by the workflow (model.pretrain) instead
    of the shipped one, so that pre-training is a stage the variants can share."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["model"] = {"pretrain": {"enabled": True, "steps": 5}}
    if variants:
        cfg["variants"] = variants
    return cfg


def test_the_module_imports_no_snakemake():
    code = "import sys, clipes.plan; assert not [m for m in sys.modules if m.startswith('snakemake')]"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_variants_merge_key_by_key_and_share_the_stages_they_agree_on():
    p = make_plan(demo(base={}, strict={"crf": {"confidence": 0.99}},
                       no_caa={"cam": {"caa": False}}, other_seed={"segmentation": {"seed": 3}}))
    assert p.vcfg("strict")["crf"]["confidence"] == 0.99
    assert p.vcfg("strict")["crf"]["shards"] == 2  # the rest of the section is the base's
    assert p.owner("strict", "cams") == "base" and p.owner("strict", "crf") == "strict"
    assert p.owner("no_caa", "pretrain") == "base" and p.owner("no_caa", "cams") == "no_caa"
    assert p.owner("other_seed", "crf") == "base"
    assert p.owner("other_seed", "segmentation") == "other_seed"
    assert p.stage_dir("strict", "cams") == "results/demo/base"
    assert "--no-caa" in p.cam_args("no_caa") and "--no-caa" not in p.cam_args("base")
    # the pre-trained CLIP comes from the variant that owns pre-training
    assert p.model_args("no_caa") == "--checkpoint results/demo/base/clip/clip.pt"
    assert p.cam_shards("strict") == ["results/demo/base/cams/shard0", "results/demo/base/cams/shard1"]
    assert p.crf_shards("strict", "crf_conf")[1] == "results/demo/strict/crf_conf/shard1"
    fast = make_plan(demo(base={}, fast={"cam": {"resize": "torch"}}))
    assert "--resize torch" in fast.cam_args("fast") and "--resize" not in fast.cam_args("base")
    assert fast.owner("fast", "cams") == "fast"  # its own CAMs: the inputs differ


@pytest.mark.parametrize("variants, words", [
    ({"base": {"dataset": {"name": "x"}}}, "may not change 'dataset'"),
    ({"data": {}}, "one of the workflow's own folders"),
    ({"a b": {}}, "names become folders"),
    ({"base": {"cam": {"autocast": "fp16", "mode": "reference"}}}, "applies to cam.mode 'batched'"),
    ({"base": {"crf": {"confidence": "high"}}}, "config of variant 'base' is invalid"),
])
def test_bad_variants_are_one_line_config_errors(variants, words):
    with pytest.raises(plan.ConfigError) as e:
        make_plan(demo(**variants))
    assert str(e.value).startswith(words) or words in str(e.value).splitlines()[0]


def test_resources_come_from_the_config_before_the_defaults():
    cfg = demo()
    p = make_plan(cfg)
    assert p.res("cams", "mem_mb") == 4000  # the demo config's own request
    assert p.res("crf", "mem_mb") == plan.RESOURCES["crf"]["mem_mb"]


def test_prompt_selection_feeds_the_cam_stage_its_table():
    p = make_plan(demo(base={"text": {"select_prompt": {"use_selected": True}}},
                       fixed={"text": {"select_prompt": {"enabled": False}}}))
    assert "--template-table results/demo/base/prompts/scores.tsv" in p.cam_args("base")
    assert p.prompt_table("base") == ["results/demo/base/prompts/scores.tsv"]
    assert "--template 'a photo of a {}.'" in p.cam_args("fixed") and p.prompt_table("fixed") == []
    assert p.candidate_args("base").startswith("'a photo of a {}.' 'a clean origami {}.'")


def test_segmentation_arguments_seeds_and_protocols():
    p = make_plan(demo(base={"segmentation": {"extra_seeds": [0, 1, 1, 2]}},
                       dl={"segmentation": {"protocol": "deeplab-pytorch", "loss": "soft"}}))
    assert p.extra_seeds("base") == [1, 2]  # the first seed and repeats left out
    assert p.seed_evals("base")[0] == "results/demo/base/eval/segmentation_val_seed1.json"
    assert "--seed 7" in p.seg_train_args("base", seed=7) and "--seed 0" in p.seg_train_args("base")
    assert p.test_protocol("base") == "mean-softmax-flip" and p.test_protocol("dl") == "msc-max"
    assert p.seg_conf_dirs("dl") and not p.seg_conf_dirs("base")
    assert p.seg_label_dirs("dl")[0].endswith("/crf_labels/shard0")


def test_report_arguments_follow_what_each_variant_ran():
    p = make_plan(demo(base={}, no_crf={"crf": {"enabled": False}, "segmentation": {"enabled": False}}))
    ins = p.report_inputs("no_crf")
    assert "eval_seg" not in ins and "eval_crf_labels" not in ins
    args = p.report_args("no_crf", ins)
    assert "segmentation=" not in args and "--pred" not in args
    assert "results/demo/base/benchmarks:train_clip" in args  # pre-training shared with base
    full = p.report_args("base", p.report_inputs("base"))
    assert "segmentation=results/demo/base/eval/segmentation_val.json" in full
    shipped = make_plan(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    assert shipped.model_args("base") == "--checkpoint config/demo/clip.npz"
    assert shipped.model_input("base") == ["config/demo/clip.npz"]
    assert "benchmarks:train_clip" not in shipped.report_args("base", shipped.report_inputs("base"))
    assert "--val-split results/demo/data/synthetic/val.txt" in full
    assert p.all_targets()[-1] == "reports/metrics/demo.json"


def voc(tmp_path, **dataset):
    cfg = yaml.safe_load((REPO / "config" / "voc12.yaml").read_text())
    cfg["dataset"].update(dataset)
    return cfg


def test_voc_layout_is_found_from_the_folder(tmp_path):
    root = tmp_path / "VOC2012"
    (root / "SegmentationClassAug").mkdir(parents=True)
    (tmp_path / "sbd").mkdir()
    p = make_plan(voc(tmp_path, root=str(root), sbd=str(tmp_path / "sbd")))
    # CLIP-ES's layout: the masks inside VOC2012/ but no train_aug.txt -> converted by a rule
    assert p.layout == "official" and p.dataset_root() == "results/voc12/data/converted"
    assert f"--aug-masks {root / 'SegmentationClassAug'}" in p.voc_convert_args()
    p.check_dataset_root()
    split = root / "ImageSets" / "Segmentation" / "train_aug.txt"
    split.parent.mkdir(parents=True)
    split.write_text("2007_000032\n")
    p = make_plan(voc(tmp_path, root=str(root)))
    assert p.layout == "converted" and p.dataset_root() == str(root)
    assert p.dataset_args("train").startswith(f"--dataset voc12 --root {root} --split {split}")


def test_dataset_errors_name_the_key_and_the_fix(tmp_path):
    p = make_plan(voc(tmp_path, root=str(tmp_path / "missing")))
    with pytest.raises(plan.ConfigError, match="dataset.root .* does not exist: download"):
        p.check_dataset_root()
    root = tmp_path / "VOC2012"
    root.mkdir()
    p = make_plan(voc(tmp_path, root=str(root), sbd=str(tmp_path / "nosbd"), aug_masks=None))
    with pytest.raises(plan.ConfigError, match="SBD masks are missing"):
        p.check_dataset_root()
    cfg = demo()
    cfg["model"] = {"checkpoint": str(tmp_path / "ViT-B-16.pt")}
    with pytest.raises(plan.ConfigError, match="does not exist: give the path"):
        make_plan(cfg).check_model_files()


def test_custom_lists_and_paths_are_quoted_for_the_shell(tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "custom.example.yaml").read_text())
    cfg["dataset"].update(root=str(tmp_path / "my data"), labels=str(tmp_path / "my data/l.csv"))
    p = make_plan(cfg)
    args = p.dataset_args("train")
    assert f"--root '{tmp_path}/my data'" in args and "--classes '[\"cat\", " in args
    assert p.dataset_args("train", "base") == args  # given labels: no tags file
    assert p.prepare_args().startswith(f"--kind custom --root '{tmp_path}/my data'")
