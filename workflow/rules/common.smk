# The workflow's shared part: the Plan of the config (clipes/plan.py: variants, stage
# ownership, dataset layout, resources, every stage's arguments, plain Python and
# unit-tested), and what needs Snakemake: validation against the schema, dataset digests
# for params, the code inputs of each rule, log and benchmark paths, hints to the user.
import json
import re
import shlex
import yaml
import sys
from functools import cache
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate


def _materialise_source():
    """The folder holding this workflow's package and scripts. From a clone, or a module
    given as a local path, that is the repository beside this file. From a module fetched
    by Snakemake (github(...), gitlab(...), gitfile(...): how `snakedeploy deploy-workflow`
    deploys), only the workflow's own files reach this machine, one by one through
    Snakemake's source cache: the files listed in workflow/source-files.txt are copied
    into .snakemake/clipes/source/<content digest>/ (written under a temporary name, then
    renamed: a folder there is always complete), where the jobs run them.
    """
    here = Path(str(workflow.current_basedir))
    if here.is_dir() and (here.parents[1] / "clipes" / "__init__.py").is_file():
        return here.resolve().parents[1]
    import hashlib
    import os
    import shutil
    import tempfile

    listed = Path(workflow.source_path("../source-files.txt")).read_text().split()
    bad = [r for r in listed if Path(r).is_absolute() or ".." in Path(r).parts]
    if bad:
        raise WorkflowError(
            f"workflow/source-files.txt of {workflow.current_basedir} names files outside "
            f"the workflow ({bad[0]}): use a release of the workflow as published"
        )
    cached = {rel: Path(workflow.source_path(f"../../{rel}")) for rel in listed}
    origin = {"workflow": str(workflow.current_basedir)}  # host/repo/path@ref
    h = hashlib.sha256(json.dumps(origin).encode())  # one folder per release, too
    for rel in sorted(cached):
        h.update(b"\0".join([rel.encode(), cached[rel].read_bytes(), b""]))
    parent = Path(".snakemake/clipes/source")
    root = parent / h.hexdigest()[:16]
    if not root.is_dir():
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=".tmp-"))
        for rel, src in cached.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / rel)  # keeps the source's time: no rerun for a copy
        (tmp / "SOURCE.json").write_text(json.dumps(origin) + "\n")
        try:
            os.rename(tmp, root)
        except OSError:  # another snakemake made it first: the same files
            shutil.rmtree(tmp, ignore_errors=True)
    return root.resolve()


# The repository this file belongs to (not the outer workflow's folder when this workflow
# is used as a module of another one). Its package: the modules imported here use the
# standard library only.
REPO = _materialise_source()
SCRIPTS = REPO / "scripts"
PKG = REPO / "clipes"
sys.path.insert(0, str(REPO))
from clipes import manifest as data_manifest
from clipes import plan as clipes_plan
from clipes.locks import stale_lock

SCHEMA = workflow.source_path("../schemas/config.schema.yaml")


def _plan():
    """Validate the config and its variants; a bad one is a one-line WorkflowError."""
    try:
        variants = clipes_plan.load_variants(config, lambda c: validate(c, SCHEMA))
        plan = clipes_plan.Plan(config, variants)
        plan.check_dataset_root()
        plan.check_model_files()
    except clipes_plan.ConfigError as e:
        raise WorkflowError(str(e)) from None
    return plan


PLAN = _plan()
VARIANTS = PLAN.variants
BASE = PLAN.base
DATASET = PLAN.dataset
DATA = PLAN.data
DATASET_KIND = PLAN.kind
LAYOUT = PLAN.layout
CONVERTED = PLAN.converted
TRACKED = PLAN.tracked
HASH_CACHE = PLAN.hash_cache
STAGE_SECTIONS = clipes_plan.STAGE_SECTIONS
if PLAN.layout_note():
    logger.info(PLAN.layout_note())

# the Plan's methods under the names the rule files use
res = PLAN.res
vcfg = PLAN.vcfg
predicted = PLAN.predicted
result_config = PLAN.result_config
owner = PLAN.owner
stage_dir = PLAN.stage_dir
dataset_root = PLAN.dataset_root
split_path = PLAN.split_path
has_split = PLAN.has_split
has_val = PLAN.has_val
dataset_json = PLAN.dataset_json
conversion_output = PLAN.conversion_output
tags_input = PLAN.tags_input
dataset_args = PLAN.dataset_args
prepare_args = PLAN.prepare_args
voc_convert_args = PLAN.voc_convert_args
model_args = PLAN.model_args
model_input = PLAN.model_input
candidate_args = PLAN.candidate_args
prompt_table = PLAN.prompt_table
cam_args = PLAN.cam_args
cam_shards = PLAN.cam_shards
crf_args = PLAN.crf_args
crf_shards = PLAN.crf_shards
seg_cfg = PLAN.seg_cfg
seg_label_dirs = PLAN.seg_label_dirs
seg_conf_dirs = PLAN.seg_conf_dirs
extra_seeds = PLAN.extra_seeds
seed_evals = PLAN.seed_evals
seg_train_args = PLAN.seg_train_args
test_protocol = PLAN.test_protocol
seg_init_input = PLAN.seg_init_input
voc_test_split = PLAN.voc_test_split
all_targets = PLAN.all_targets
report_inputs = PLAN.report_inputs
train_logs = PLAN.train_logs
comparison_variants = PLAN.comparison_variants


def report_args(variant, input):
    return PLAN.report_args(variant, dict(input.items()))


def cam_device(variant):
    return vcfg(variant)["cam"]["device"]


def wants_gpu(device):
    """GPU resource request: 1 unless the stage is pinned to the CPU."""
    return 0 if device == "cpu" else 1


def hint_pulled_results():
    """Results pulled with DVC into a clone without Snakemake records look out of date
    (pulled files carry the pull's times): say how to re-stamp them (README, Sharing).
    """
    if (
        Path(f"results/{DATASET}.dvc").is_file()
        and Path(f"results/{DATASET}").is_dir()
        and not Path(".snakemake/metadata").is_dir()
    ):
        logger.warning(
            f"results/{DATASET} came with DVC and Snakemake has no records of it here: "
            f"right after 'dvc pull', run 'snakemake --touch --cores 1' with this config "
            f"once, or the jobs below are rerun for the pull's file times alone "
            f"(README, 'Sharing data and results')."
        )


hint_pulled_results()


def hint_stale_lock():
    """After a killed snakemake, its lock stays: say exactly what to type (README, 'When a
    run is interrupted')."""
    if workflow.is_main_process and stale_lock():
        logger.warning(
            "A lock from an interrupted snakemake remains in .snakemake/locks. If no other "
            "snakemake works on this folder (on any machine), type 'snakemake --unlock' "
            "with the same options as your run, then your command again: half-written "
            "outputs are redone (profiles/default sets rerun-incomplete), finished ones kept."
        )


hint_stale_lock()


# ---------------------------------------------------------------- dataset digests
# Each job that reads dataset files has, among its params, a digest of exactly those files
# (clipes/manifest.py): an edited image, label or mask reruns the jobs that read it and
# nothing else; a file touched without a change reruns nothing. Content hashes are cached
# by (size, mtime, ctime) in .snakemake/clipes/. Datasets the workflow makes itself
# (synthetic, converted from the official downloads) are followed through dataset.json:
# a changed download reruns the conversion (its params hold the downloads' digest) and
# everything after it.

HASHES = data_manifest.HashCache.load(HASH_CACHE)


@cache
def split_entries(which):
    ds = config["dataset"]
    try:
        return data_manifest.entries(
            DATASET_KIND, dataset_root(), split_path(which), ds["labels"]
        )
    except (data_manifest.DatasetError, OSError) as e:
        return str(e)  # prepare_dataset reports it, with the file and the fix


def config_files_digest():
    """Class list and background words given as files (custom datasets)."""
    ds = config["dataset"]
    parts = []
    for key in ("classes", "background"):
        value = ds.get(key)
        parts.append(json.dumps(value))
        if isinstance(value, str) and Path(value).is_file():
            parts.append(HASHES.digest(Path(value)))
    return ",".join(parts)


@cache  # many jobs share a digest (every evaluation reads the whole train split)
def data_digest(which="train", gt=False, shard=None):
    """Digest of the files of split `which` a job reads (one shard (i, n) of it)."""
    if not TRACKED or not has_split(which):
        return ""
    rows = split_entries(which)
    if isinstance(rows, str):
        return f"unreadable: {rows}"
    value = data_manifest.digest(rows, HASHES, gt, shard, extra=config_files_digest())
    HASHES.save()
    return value


def downloads_stamp():
    """Content digest of the files of the official downloads the conversion reads: a file
    touched or extracted again without a change, or a stray file, reruns nothing."""
    ds = config["dataset"]
    parts = {DATASET_KIND: ds["root"]}
    if DATASET_KIND == "voc12":
        parts.update(sbd=ds.get("sbd"), aug_masks=PLAN.aug_masks_dir())
    value = data_manifest.downloads_digest(parts, HASHES)
    HASHES.save()
    return value


def source_digest():
    """The digest prepare_dataset (or the conversion) reruns on."""
    if TRACKED:
        return ";".join(
            data_digest(w, gt=True) for w in ("train", "val") if has_split(w)
        )
    return ""


def voc_test_digest():
    """Content digest of the test images and the test split."""
    value = data_manifest.downloads_digest(
        {"voc_test": config["dataset"]["test_root"]}, HASHES
    )
    HASHES.save()
    return value


# The code each stage runs: its script and the package modules it uses. They are inputs
# of the rule, so editing the code of a stage reruns that stage (and what follows).
STAGE_CODE = {
    "convert_voc12": ["convert", "datasets", "cli", "io"],
    "convert_coco14": ["convert", "datasets", "cli", "io"],
    "prepare_dataset": ["datasets", "synthetic", "text", "cli", "io"],
    "train_clip": ["pretrain", "synthetic", "cam", "io"],
    "score_prompts": ["text", "model", "datasets", "cli", "cam", "gpuslots"],
    "cams": [
        "cam",
        "camstore",
        "fastgrad",
        "affinity",
        "model",
        "text",
        "datasets",
        "cli",
        "io",
        "gpuslots",
    ],
    "evaluate": ["metrics", "camstore", "crf", "datasets", "io", "cli"],
    "crf": ["crf", "camstore", "datasets", "io", "metrics", "cli"],
    "train_seg": [
        "segmentation",
        "datasets",
        "metrics",
        "io",
        "cli",
        "gpuslots",
    ],
    "tag_images": [
        "tagclip",
        "model",
        "text",
        "cam",
        "datasets",
        "io",
        "cli",
        "gpuslots",
    ],
    "predict_seg": [
        "segmentation",
        "crf",
        "datasets",
        "io",
        "cli",
        "gpuslots",
        "voctest",
    ],
    "voc_test_submission": ["voctest", "datasets", "manifest", "io", "cli"],
    "report": [
        "report",
        "metrics",
        "camstore",
        "datasets",
        "io",
        "cli",
        "segmentation",
    ],
}


def code(script):
    """The script and the package modules (a sub-package: all its files) a stage runs."""
    files = [str(SCRIPTS / f"{script}.py")]
    for m in STAGE_CODE[script]:
        if (PKG / m).is_dir():
            files += sorted(str(f) for f in (PKG / m).glob("*.py"))
        else:
            files.append(str(PKG / f"{m}.py"))
    if script == "report":
        files += sorted(str(t) for t in (PKG / "report" / "templates").glob("*.j2"))
    return files


def script(name):
    """The command of a stage script: the `python` of the job's environment (the one first
    on PATH: an activated virtual environment, the rule's conda environment, a container's),
    not the Python that runs Snakemake. The script imports the package beside it, the same
    files that are the rule's code inputs."""
    return f"python {shlex.quote(str(SCRIPTS / name))}.py"


def log_path(rule, shard=False):
    s = "{shard}" if shard else ""
    return f"results/{{dataset}}/{{variant}}/logs/{rule}{s}.log"


def bench_path(rule, shard=False):
    s = "{shard}" if shard else ""
    return f"results/{{dataset}}/{{variant}}/benchmarks/{rule}{s}.tsv"


wildcard_constraints:
    dataset=DATASET,
    seed=r"\d+",
    variant="|".join(map(re.escape, VARIANTS)),
    shard=r"\d+",
