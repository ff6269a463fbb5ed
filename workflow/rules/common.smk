# Config validation, variants, and input functions shared by every rule file.
import copy
import re
import shlex
import yaml
import json
import os
import sys
from functools import cache
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

# the package beside this workflow; the modules imported here use the standard library only
sys.path.insert(0, str(Path(str(workflow.current_basedir)).resolve().parents[1]))
from clipes import manifest as data_manifest
from clipes.locks import stale_lock

SCHEMA = workflow.source_path("../schemas/config.schema.yaml")

# Config sections each stage depends on, upstream included. A variant shares a stage's
# outputs with the first variant whose sections agree: that variant "owns" the stage.
STAGE_SECTIONS = {
    "pretrain": ("dataset", "model"),
    "tags": ("dataset", "model", "labels"),
    "prompts": ("dataset", "model", "labels", "text"),
    "cams": ("dataset", "model", "labels", "text", "cam"),
    "crf": ("dataset", "model", "labels", "text", "cam", "crf"),
    "segmentation": (
        "dataset",
        "model",
        "labels",
        "text",
        "cam",
        "crf",
        "segmentation",
    ),
}


# Cluster requests per rule: memory (MB) and runtime (minutes, SLURM's -t), sized for VOC12
# (train_aug, 10,582 images; 8 CAM shards, 32 CRF shards) with ResNet-101 on one GPU.
# Config 'resources' overrides them rule by rule (config/coco14.yaml does), a profile's
# set-resources overrides both. Basis (benchmarks/memory.py, README "Scale"): every
# stage's peak memory is flat in the image count (40 vs 160 VOC-sized images: 0.5-0.9 GB,
# training 1.4 GB with the tiny network); per image on one CPU core, CRF 0.44 s, CAM
# evaluation 0.09 s (two maps), pseudo-mask evaluation 0.02 s; ViT-B/16 CAMs 1.1 s on a
# CPU core pair and 0.02 s on an H200 (fp32), peaking at 1.7 GB on the CPU; ResNet-101
# training peaks at 9.9 GB on a CPU (batch 10, crop 321), 4.3 GB of GPU memory with AMP.
RESOURCES = {
    "tag_images": {
        "mem_mb": 8000,
        "runtime": 240,
    },  # as the CAM stage: one ViT-B/16 pass + crops
    "convert_voc12": {
        "mem_mb": 2000,
        "runtime": 30,
    },  # 0.5 GB flat; ~1 min for 12k masks
    "convert_coco14": {
        "mem_mb": 16000,
        "runtime": 120,
    },  # the instances JSON as Python objects
    "prepare_dataset": {"mem_mb": 2000, "runtime": 30},
    "train_clip": {"mem_mb": 4000, "runtime": 60},
    "score_prompts": {"mem_mb": 8000, "runtime": 120},
    "cams": {
        "mem_mb": 8000,
        "runtime": 120,
    },  # 1,323 images a shard: 25 min even on a CPU
    "eval_cams": {"mem_mb": 2000, "runtime": 60},  # 10,582 x 0.09 s = 16 min
    "crf": {"mem_mb": 2000, "runtime": 30},  # 331 images a shard x 0.44 s = 2.5 min
    "eval_pseudo_masks": {"mem_mb": 2000, "runtime": 30},
    "eval_crf_labels": {"mem_mb": 2000, "runtime": 30},
    "train_segmentation": {"mem_mb": 16000, "runtime": 720},  # data streamed from disk
    "predict_segmentation": {"mem_mb": 8000, "runtime": 120},
    "eval_segmentation": {"mem_mb": 2000, "runtime": 30},
    "report": {"mem_mb": 4000, "runtime": 30},
    "comparison_report": {"mem_mb": 2000, "runtime": 10},
}


def res(rule, key):
    """A rule's request: config 'resources' if set there, else RESOURCES."""
    return config["resources"].get(rule, {}).get(key, RESOURCES[rule][key])


def deep_merge(base, overrides, where="variants"):
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value, f"{where}.{key}")
        else:
            out[key] = copy.deepcopy(value)
    return out


SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# folders and reports of the workflow's own under results/<dataset>/ and reports/<dataset>/
RESERVED_VARIANTS = ("data", "logs", "benchmarks", "comparison")


def check_names(cfg):
    """Names that become paths: safe characters, no collision with the workflow's own."""
    for what, name in [("dataset.name", cfg.get("dataset", {}).get("name", "demo"))] + [
        ("variant", v) for v in cfg.get("variants") or {}
    ]:
        if not isinstance(name, str) or not SAFE_NAME.match(name):
            raise WorkflowError(
                f"{what} {name!r}: names become folders, so they take letters, digits, '_', "
                f"'.' and '-', starting with a letter or digit; rename it"
            )
        if what == "dataset.name" and name in ("metrics", "plots"):
            raise WorkflowError(
                f"dataset.name {name!r}: reports/{name}/ holds every dataset's "
                f"{name} for DVC; rename the dataset"
            )
        if what == "variant" and name in RESERVED_VARIANTS:
            raise WorkflowError(
                f"variant {name!r}: the name of one of the workflow's own folders or reports "
                f"({', '.join(RESERVED_VARIANTS)}); rename the variant"
            )


def load_variants(cfg):
    """Validate the base config, then every variant (base + overrides) on its own."""
    raw = copy.deepcopy(cfg)
    check_names(cfg)
    validate(cfg, SCHEMA)  # fills defaults, names the bad key on error
    variants = {}
    for name, overrides in cfg["variants"].items():
        fixed = [
            k for k in ("dataset", "report", "resources", "variants") if k in overrides
        ]
        if fixed:
            raise WorkflowError(
                f"variant {name!r}: overrides may not change {fixed[0]!r} ('dataset', "
                f"'report', 'resources' and 'variants' hold for every variant of a config)"
            )
        merged = deep_merge(
            {k: v for k, v in raw.items() if k != "variants"}, overrides
        )
        try:
            validate(merged, SCHEMA)
        except WorkflowError as e:
            raise WorkflowError(f"config of variant {name!r} is invalid: {e}") from None
        if merged["cam"]["autocast"] and merged["cam"]["mode"] == "reference":
            raise WorkflowError(
                f"variant {name!r}: cam.autocast applies to cam.mode 'batched'; 'reference' "
                f"reproduces the authors' fp32 computation"
            )
        merged["variants"] = {}
        variants[name] = merged
    return variants


VARIANTS = load_variants(config)
BASE = next(iter(VARIANTS))
DATASET = config["dataset"]["name"]
DATA = f"results/{DATASET}/data"
DATASET_KIND = config["dataset"]["kind"]


def vcfg(variant):
    return VARIANTS[variant]


def predicted(variant):
    """Whether the variant runs on TagCLIP's tags instead of the dataset's labels."""
    return vcfg(variant)["labels"]["source"] == "predicted"


def result_config(variant):
    """The config a variant's results depend on: without cluster requests or variants."""
    return {
        k: v for k, v in vcfg(variant).items() if k not in ("resources", "variants")
    }


def owner(variant, stage):
    """The first variant whose config agrees with `variant` on everything `stage` uses."""

    def key(v):
        return json.dumps(
            {s: VARIANTS[v][s] for s in STAGE_SECTIONS[stage]}, sort_keys=True
        )

    mine = key(variant)
    return next(v for v in VARIANTS if key(v) == mine)


# ---------------------------------------------------------------- dataset arguments
HINTS = {
    "voc12": "download the VOC2012 trainval tar and SBD or SegmentationClassAug (README: "
    "'Reproducing VOC12')",
    "coco14": "download COCO 2014 train/val images and annotations (README: 'Reproducing COCO14')",
    "custom": "point dataset.root at the folder holding images/ (README: 'Your own dataset')",
}
CONVERTED_MARKER = {"voc12": "SegmentationClassAug", "coco14": "SegmentationClass"}


def dataset_layout():
    """'official' (downloads, converted by a rule) or 'converted' (ready for the stages)."""
    ds = config["dataset"]
    if ds["kind"] not in CONVERTED_MARKER:
        return "converted"
    if ds["layout"] != "auto":
        return ds["layout"]
    root = Path(ds["root"])
    ready = (root / CONVERTED_MARKER[ds["kind"]]).is_dir()
    if ready and ds["kind"] == "voc12" and ds["train_split"]:
        # the layout of CLIP-ES's and deeplab-pytorch's READMEs: SegmentationClassAug/
        # inside VOC2012/ but no train_aug.txt: converted from there like the downloads
        split = Path(ds["train_split"])
        ready = (split if split.is_absolute() else root / split).is_file()
    return "converted" if ready else "official"


def aug_masks_dir():
    """SegmentationClassAug masks for the VOC conversion: dataset.aug_masks, or the
    folder inside dataset.root where CLIP-ES's layout keeps them."""
    ds = config["dataset"]
    if ds["aug_masks"] and Path(ds["aug_masks"]).is_dir():
        return ds["aug_masks"]
    inside = Path(ds["root"] or ".") / "SegmentationClassAug"
    return str(inside) if inside.is_dir() else ds["aug_masks"]


def check_dataset_root():
    ds = config["dataset"]
    kind = ds["kind"]
    if kind == "synthetic":
        return
    if not ds["root"]:
        raise WorkflowError(f"dataset.root is not set: {HINTS[kind]}")
    if not Path(ds["root"]).is_dir():
        raise WorkflowError(
            f"dataset.root {ds['root']!r} does not exist: {HINTS[kind]}"
        )
    given = [v for v in VARIANTS if not predicted(v)]
    if kind == "custom" and not ds["labels"] and given:
        raise WorkflowError(
            f"dataset.labels is not set: a custom dataset needs a CSV of image labels, or "
            f"labels.source: predicted (TagCLIP's tags) in every variant ({given[0]!r} has "
            f"'given')"
        )
    if ds["test_root"]:
        if kind != "voc12":
            raise WorkflowError(
                f"dataset.test_root is for VOC12's evaluation server (VOC2012test.tar); "
                f"a {kind} dataset has none: remove it"
            )
        split = Path(ds["test_root"]) / ds["test_split"]
        if not split.is_file():
            raise WorkflowError(
                f"dataset.test_root: {split} does not exist: unpack VOC2012test.tar and "
                f"set dataset.test_root to its VOCdevkit/VOC2012 folder (README: "
                f"'Reproducing VOC12')"
            )
    if kind == "voc12" and dataset_layout() == "official":
        found = [p for p in (aug_masks_dir(), ds["sbd"]) if p and Path(p).is_dir()]
        if not found:
            raise WorkflowError(
                f"dataset.root {ds['root']!r} has no SegmentationClassAug/, so it is read as "
                f"the official VOC2012 folder, and the SBD masks are missing: dataset.sbd "
                f"{ds['sbd']!r} and dataset.aug_masks {ds['aug_masks']!r} do not exist. "
                f"{HINTS['voc12']}"
            )


check_dataset_root()


def check_model_files():
    """A CLIP checkpoint path that does not exist is an error now, not a hub download."""
    for name, v in VARIANTS.items():
        ckpt = v["model"]["checkpoint"]
        if ckpt and not v["model"]["pretrain"]["enabled"] and not Path(ckpt).is_file():
            raise WorkflowError(
                f"model.checkpoint {ckpt!r} (variant {name!r}) does not exist: give the path "
                f"of an OpenAI-format CLIP file such as ViT-B-16.pt, or unset model.checkpoint "
                f"to have open_clip download model.name with model.pretrained"
            )


check_model_files()
LAYOUT = dataset_layout()
CONVERTED = f"{DATA}/converted"
if config["dataset"]["kind"] in CONVERTED_MARKER:
    logger.info(
        f"dataset {DATASET}: {config['dataset']['kind']} in the {LAYOUT} layout at "
        f"{config['dataset']['root']}"
        + (
            f" (converted into {CONVERTED} by convert_{config['dataset']['kind']})"
            if LAYOUT == "official"
            else ""
        )
    )


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


def dataset_root():
    """The folder the stages read: generated, converted from the downloads, or root."""
    ds = config["dataset"]
    if ds["kind"] == "synthetic":
        return f"{DATA}/synthetic"
    return CONVERTED if LAYOUT == "official" else ds["root"]


# ---------------------------------------------------------------- dataset digests
# Each job that reads dataset files has, among its params, a digest of exactly those files
# (clipes/manifest.py): an edited image, label or mask reruns the jobs that read it and
# nothing else; a file touched without a change reruns nothing. Content hashes are cached
# by (size, mtime, ctime) in .snakemake/clipes/. Datasets the workflow makes itself
# (synthetic, converted from the official downloads) are followed through dataset.json:
# a changed download reruns the conversion (its params hold the downloads' digest) and
# everything after it.

TRACKED = DATASET_KIND == "custom" or (
    DATASET_KIND in CONVERTED_MARKER and LAYOUT == "converted"
)
HASH_CACHE = f".snakemake/clipes/hashes-{DATASET}.json"
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


def has_split(which):
    """Whether split `which` exists: a split file, or (custom train) every labelled row."""
    return split_path(which) is not None or (
        DATASET_KIND == "custom" and which == "train"
    )


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


def dataset_json():
    """dataset.json as a stage's input, where the workflow makes the dataset (synthetic,
    converted). A dataset the user keeps is followed file by file (the digests above) and
    each stage checks what it reads up front; dataset.json is then an input of the report
    only: as a stage's input, a change of one image would rerun every stage."""
    return [] if TRACKED else [f"{DATA}/dataset.json"]


def downloads_stamp():
    """Content digest of the files of the official downloads the conversion reads: a file
    touched or extracted again without a change, or a stray file, reruns nothing."""
    ds = config["dataset"]
    parts = {DATASET_KIND: ds["root"]}
    if DATASET_KIND == "voc12":
        parts.update(sbd=ds.get("sbd"), aug_masks=aug_masks_dir())
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


def conversion_output():
    """The conversion rule's summary, where the dataset comes as official downloads."""
    return [f"{CONVERTED}/convert.json"] if LAYOUT == "official" else []


def split_path(which):
    """Path of a split file: relative paths are relative to the dataset root."""
    ds = config["dataset"]
    name = ds[f"{which}_split"]
    if ds["kind"] == "synthetic":
        return f"{DATA}/synthetic/{which}.txt"
    if name is None:
        return None
    if os.path.isabs(name) or ds["kind"] == "custom" and Path(name).is_file():
        return name
    return str(Path(dataset_root()) / name)


def tags_file(variant):
    """The tagging stage's label file (label-free mode), or None."""
    if variant is None or not predicted(variant):
        return None
    return f"{stage_dir(variant, 'tags')}/tags/tags.txt"


def tags_input(variant):
    return [tags_file(variant)] if tags_file(variant) else []


def dataset_args(which="train", variant=None):
    """Command-line arguments the stage scripts take for the configured dataset; for a
    variant on predicted labels, the tags file replaces the dataset's own labels."""
    tags = tags_file(variant) if which == "train" else None
    return _dataset_args(which) + (f" --tags {shlex.quote(tags)}" if tags else "")


def _dataset_args(which="train"):
    ds = config["dataset"]
    kind = ds["kind"]
    q = shlex.quote  # paths may hold spaces
    args = [f"--dataset {kind}", f"--root {q(dataset_root())}"]
    split = split_path(which)
    if split:
        args.append(f"--split {q(split)}")
    if kind == "synthetic":
        root = dataset_root()
        args += [
            f"--classes {q(str(Path(root, 'classes.yaml')))}",
            f"--labels {q(str(Path(root, 'labels.csv')))}",
            f"--background {q(str(Path(root, 'background.txt')))}",
        ]
    elif kind == "custom":
        args.append(custom_list_arg("classes"))
        if ds[
            "labels"
        ]:  # none: every image of the folder, tagged (labels.source: predicted)
            args.append(f"--labels {q(ds['labels'])}")
        if ds["background"] is not None:
            args.append(custom_list_arg("background"))
    if not ds["reference_quirks"]:
        args.append("--no-reference-quirks")
    if ds["exif"] != "ignore":
        args.append(f"--exif {ds['exif']}")
    return " ".join(args)


def custom_list_arg(key):
    """--classes / --background: the config's file, or its inline list as JSON."""
    value = config["dataset"][key]
    value = value if isinstance(value, str) else json.dumps(value)
    return f"--{key} {shlex.quote(value)}"


def model_args(variant):
    m = vcfg(variant)["model"]
    if m["pretrain"]["enabled"]:
        return (
            f"--checkpoint results/{DATASET}/{owner(variant, 'pretrain')}/clip/clip.pt"
        )
    if m["checkpoint"]:
        return f"--checkpoint {shlex.quote(m['checkpoint'])}"
    args = f"--model {m['name']} --pretrained {m['pretrained'] or 'none'} --model-seed {m['seed']}"
    return args + (f" --cache-dir {m['cache_dir']}" if m["cache_dir"] else "")


def model_input(variant):
    m = vcfg(variant)["model"]
    if m["pretrain"]["enabled"]:
        return [f"results/{DATASET}/{owner(variant, 'pretrain')}/clip/clip.pt"]
    return [m["checkpoint"]] if m["checkpoint"] else []


def cam_device(variant):
    return vcfg(variant)["cam"]["device"]


def wants_gpu(device):
    """GPU resource request: 1 unless the stage is pinned to the CPU."""
    return 0 if device == "cpu" else 1


# ---------------------------------------------------------------- stage paths
def stage_dir(variant, stage):
    return f"results/{DATASET}/{owner(variant, stage)}"


def cam_shards(variant):
    v = owner(variant, "cams")
    return expand(
        "results/{d}/{v}/cams/shard{s}",
        d=DATASET,
        v=v,
        s=range(vcfg(v)["cam"]["shards"]),
    )


def crf_shards(variant, what="pseudo_masks"):
    v = owner(variant, "crf")
    return expand(
        "results/{d}/{v}/{what}/shard{s}",
        d=DATASET,
        v=v,
        what=what,
        s=range(vcfg(v)["crf"]["shards"]),
    )


def has_val():
    return split_path("val") is not None


def variant_outputs(variant):
    """Every file the report of `variant` reads (what is switched off is left out)."""
    c = vcfg(variant)
    out = {
        "dataset": f"{DATA}/dataset.json",
        "eval_cams": f"{stage_dir(variant, 'cams')}/eval/cams.json",
        "cams_plain": f"{stage_dir(variant, 'cams')}/eval/cams_plain.json",
        "eval_pseudo": f"{stage_dir(variant, 'crf')}/eval/pseudo_masks.json",
        "eval_crf_labels": None,
        "eval_seg": None,
        "train_log": None,
        "prompts": None,
    }
    if c["crf"]["enabled"]:
        out["eval_crf_labels"] = f"{stage_dir(variant, 'crf')}/eval/crf_labels.json"
    if c["segmentation"]["enabled"] and has_val():
        out["eval_seg"] = (
            f"{stage_dir(variant, 'segmentation')}/eval/segmentation_val.json"
        )
        out["train_log"] = (
            f"{stage_dir(variant, 'segmentation')}/segmentation/train_log.csv"
        )
    if c["text"]["select_prompt"]["enabled"]:
        out["prompts"] = f"{stage_dir(variant, 'prompts')}/prompts/scores.tsv"
    return {k: v for k, v in out.items() if v}


def voc_test_targets():
    """The evaluation server's tarball of every segmentation model, where VOC2012's test
    images are configured (dataset.test_root)."""
    if not config["dataset"]["test_root"]:
        return []
    return sorted(
        {
            f"{stage_dir(v, 'segmentation')}/voc_test/comp6_test_cls.tar.gz"
            for v in VARIANTS
            if vcfg(v)["segmentation"]["enabled"]
        }
    )


def voc_test_split():
    ds = config["dataset"]
    return str(Path(ds["test_root"]) / ds["test_split"])


def voc_test_digest():
    """Content digest of the test images and the test split."""
    value = data_manifest.downloads_digest(
        {"voc_test": config["dataset"]["test_root"]}, HASHES
    )
    HASHES.save()
    return value


def all_targets():
    targets = []
    for v in VARIANTS:
        targets += [f"reports/{DATASET}/{v}.html", f"reports/{DATASET}/{v}.md"]
    targets += [
        f"reports/{DATASET}/comparison.html",
        f"reports/{DATASET}/comparison.md",
        f"reports/metrics/{DATASET}.json",
    ]
    return targets + voc_test_targets()


# The repository this file belongs to (not the outer workflow's folder when this workflow
# is used as a module of another one).
REPO = Path(str(workflow.current_basedir)).resolve().parents[1]
SCRIPTS = REPO / "scripts"
PKG = REPO / "clipes"

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


# ---------------------------------------------------------------- dataset helpers
def prepare_args():
    ds = config["dataset"]
    kind = ds["kind"]
    args = [f"--kind {kind}"]
    if kind == "synthetic":
        s = ds["synthetic"]
        return " ".join(
            args + [f"--seed {s['seed']} --n-train {s['n_train']} --n-val {s['n_val']}"]
        )
    args.append(f"--root {shlex.quote(dataset_root())}")
    args.append(f"--cam-memory-mb {res('cams', 'mem_mb')} --hash-cache {HASH_CACHE}")
    sides = [v["cam"]["max_side"] for v in VARIANTS.values()]
    if None not in sides:
        args.append(f"--max-side {max(sides)}")
    if LAYOUT == "official":
        args.append(f"--conversion {CONVERTED}/convert.json")
    if split_path("train"):
        args.append(f"--train-split {shlex.quote(split_path('train'))}")
    if has_val():
        args.append(f"--val-split {shlex.quote(split_path('val'))}")
    if kind == "custom":
        for key in ("classes", "background"):
            value = ds[key]
            if value is not None:
                value = value if isinstance(value, str) else json.dumps(value)
                args.append(f"--{key} {shlex.quote(value)}")
        if ds["labels"]:
            args.append(f"--labels {shlex.quote(ds['labels'])}")
    if not ds["reference_quirks"]:
        args.append("--no-reference-quirks")
    if ds["exif"] != "ignore":
        args.append(f"--exif {ds['exif']}")
    return " ".join(args)


def voc_convert_args():
    ds = config["dataset"]
    args = [f"--voc {shlex.quote(ds['root'])}"]
    if ds["sbd"]:
        args.append(f"--sbd {shlex.quote(ds['sbd'])}")
    if aug_masks_dir():
        args.append(f"--aug-masks {shlex.quote(aug_masks_dir())}")
    return " ".join(args)


# ---------------------------------------------------------------- prompts helpers
def candidate_args(variant):
    c = vcfg(variant)["text"]["select_prompt"]["candidates"]
    items = [c] if isinstance(c, str) else c
    return " ".join(shlex.quote(t) for t in items)


# ---------------------------------------------------------------- cams helpers
def cam_args(variant):
    c = vcfg(variant)["cam"]
    t = vcfg(variant)["text"]
    args = [
        f"--mode {c['mode']}",
        f"--batch-size {c['batch_size']}",
        f"--device {c['device']}",
        f"--synonym-fusion {t['synonym_fusion']}",
        f"--text-context {t['context']}",
        "--keep-plain",
    ]
    if t["select_prompt"]["enabled"] and t["select_prompt"]["use_selected"]:
        args.append(
            f"--template-table {stage_dir(variant, 'prompts')}/prompts/scores.tsv"
        )
    else:
        args.append(f"--template {shlex.quote(t['template'])}")
    if c["autocast"]:
        args.append(
            f"--autocast {c['autocast']} --autocast-scope {c['autocast_scope']}"
        )
    if c["box_threshold"] is not None:
        args.append(f"--box-threshold {c['box_threshold']}")
    if c["max_side"] is not None:
        args.append(f"--max-side {c['max_side']}")
    args.append(f"--loaders {c['loaders']} --store {c['store']}")
    if not c["compress"]:
        args.append("--no-compress")
    for key, flag in (
        ("caa", "--no-caa"),
        ("background", "--no-background"),
        ("softmax", "--no-softmax"),
        ("clip_box_border", "--no-box-border-clip"),
    ):
        if not c[key]:
            args.append(flag)
    return " ".join(args)


def prompt_table(variant):
    sp = vcfg(variant)["text"]["select_prompt"]
    if sp["enabled"] and sp["use_selected"]:
        return [f"{stage_dir(variant, 'prompts')}/prompts/scores.tsv"]
    return []


# ---------------------------------------------------------------- crf helpers
def crf_args(variant):
    c = vcfg(variant)["crf"]
    args = [
        f"--confidence {c['confidence']}",
        f"--bg-power {c['bg_power']}",
        f"--iterations {c['iterations']}",
        f"--image-input {c['image_input']}",
    ]
    if not c["enabled"]:
        args.append("--no-crf")
    return " ".join(args)


# ---------------------------------------------------------------- segmentation helpers
def seg_cfg(variant):
    return vcfg(variant)["segmentation"]


def seg_label_dirs(variant):
    """cgl: the confidence-masked pseudo masks; plain/soft: CRF labels without the ignore
    region (soft also reads the confidence maps)."""
    loss = seg_cfg(variant)["loss"]
    return crf_shards(variant, "pseudo_masks" if loss == "cgl" else "crf_labels")


def seg_conf_dirs(variant):
    return crf_shards(variant, "crf_conf") if seg_cfg(variant)["loss"] == "soft" else []


def extra_seeds(variant):
    """The seeds of a variant's further trainings (segmentation.extra_seeds, less the
    first seed's repeats), where the variant trains a network."""
    s = seg_cfg(variant)
    if not s["enabled"] or not has_val():
        return []
    return [x for x in dict.fromkeys(s["extra_seeds"]) if x != s["seed"]]


def seed_evals(variant):
    """Each further seed's val evaluation, from the variant that trains them."""
    d = stage_dir(variant, "segmentation")
    return [f"{d}/eval/segmentation_val_seed{x}.json" for x in extra_seeds(variant)]


def seg_train_args(variant, seed=None):
    s = seg_cfg(variant)
    args = [
        f"--backbone {s['backbone']}",
        f"--init {shlex.quote(str(s['init'] or 'none'))}",
        f"--loss {s['loss']}",
        f"--iterations {s['iterations']}",
        f"--batch-size {s['batch_size']}",
        f"--crop {s['crop']}",
        f"--lr {s['lr']}",
        f"--momentum {s['momentum']}",
        f"--weight-decay {s['weight_decay']}",
        f"--poly-power {s['poly_power']}",
        f"--scale-range {s['scale_range'][0]} {s['scale_range'][1]}",
        f"--checkpoint-every {s['checkpoint_every']}",
        f"--seed {s['seed'] if seed is None else seed}",
        f"--device {s['device']}",
        f"--workers {s['workers']}",
        f"--protocol {s['protocol']}",
        f"--iter-size {s['iter_size']}",
        f"--scales {' '.join(map(str, s['scales']))}",
    ]
    if s["blocks"]:
        args.append(f"--blocks {' '.join(map(str, s['blocks']))}")
    if s["class_balanced"]:
        args.append("--class-balanced")
    return " ".join(args)


def test_protocol(variant):
    """The named test-time protocol of a variant's segmentation numbers."""
    s = seg_cfg(variant)
    if s["test_protocol"]:
        return s["test_protocol"]
    return "msc-max" if s["protocol"] == "deeplab-pytorch" else "mean-softmax-flip"


def seg_init_input(variant):
    init = seg_cfg(variant)["init"]
    return [init] if init and init != "imagenet" else []


# ---------------------------------------------------------------- report helpers
def report_inputs(variant):
    files = variant_outputs(variant)
    c = vcfg(variant)
    ins = dict(files)
    ins["cams"] = cam_shards(variant)
    ins["pseudo"] = crf_shards(variant)
    if predicted(variant):
        ins["eval_tags"] = f"{stage_dir(variant, 'tags')}/eval/tags.json"
    if seed_evals(variant):
        ins["eval_seeds"] = seed_evals(variant)
    if "eval_seg" in files:
        ins["pred"] = f"{stage_dir(variant, 'segmentation')}/segmentation/pred_val"
        seg = f"{stage_dir(variant, 'segmentation')}/segmentation"
        ins["train_plot"] = f"{seg}/train_log.png"
        ins["seg_info"] = f"{seg}/train_info.json"
    return ins


def train_logs():
    """variant -> the training log of its segmentation network, where it has one."""
    return {
        v: f"{stage_dir(v, 'segmentation')}/segmentation/train_log.csv"
        for v in VARIANTS
        if "train_log" in variant_outputs(v)
    }


def comparison_variants():
    """Each variant's overrides of the config and the variant whose run made each of its
    stages, for the comparison report (JSON, quoted for the shell)."""
    info = {
        v: {
            "overrides": config["variants"][v] or {},
            "owners": {s: owner(v, s) for s in STAGE_SECTIONS},
        }
        for v in VARIANTS
    }
    return shlex.quote(json.dumps(info, sort_keys=True))


def report_args(variant, input):
    evals = [
        f"cams_plain={input.cams_plain}",
        f"cams={input.eval_cams}",
        f"pseudo_masks={input.eval_pseudo}",
    ]
    if "eval_crf_labels" in input.keys():
        evals.append(f"crf_labels={input.eval_crf_labels}")
    if "eval_seg" in input.keys():
        evals.append(f"segmentation={input.eval_seg}")
    if "eval_tags" in input.keys():
        evals.append(f"tags={input.eval_tags}")
    for x, path in zip(extra_seeds(variant), seed_evals(variant)):
        evals.append(f"segmentation_seed{x}={path}")
    # each stage's benchmarks come from the variant that owns the stage, and only that
    # stage's rules: an owner's folder also holds its other stages' files
    c = vcfg(variant)
    stage_rules = {
        "pretrain": "train_clip" if c["model"]["pretrain"]["enabled"] else None,
        "tags": "tag_images" if predicted(variant) else None,
        "prompts": "score_prompts" if c["text"]["select_prompt"]["enabled"] else None,
        "cams": "cams,eval_cams",
        "crf": "crf,eval_pseudo_masks,eval_crf_labels",
        "segmentation": (
            "train_segmentation,predict_segmentation,eval_segmentation"
            + (
                ",train_segmentation_seed,predict_segmentation_seed,eval_segmentation_seed"
                if extra_seeds(variant)
                else ""
            )
            if "eval_seg" in input.keys()
            else None
        ),
    }
    bench = [
        f"{stage_dir(variant, s)}/benchmarks:{r}" for s, r in stage_rules.items() if r
    ]
    bench.append(f"results/{DATASET}/benchmarks:prepare_dataset")
    args = [
        f"--eval {' '.join(evals)}",
        f"--bench-dirs {' '.join(bench)}",
        f"--cams {' '.join(input.cams)}",
        f"--pseudo {' '.join(input.pseudo)}",
        f"--gallery {config['report']['gallery']}",
    ]
    if "pred" in input.keys():
        val = split_path("val")
        args += [f"--pred {input.pred}"] + (
            [f"--val-split {shlex.quote(val)}"] if val else []
        )
        args += [
            f"--train-log {input.train_plot}",
            f"--seg-info {input.seg_info}",
        ]
    if "prompts" in input.keys():
        args.append(f"--prompts {input.prompts}")
    return " ".join(args)


wildcard_constraints:
    dataset=DATASET,
    seed=r"\d+",
    variant="|".join(map(re.escape, VARIANTS)),
    shard=r"\d+",
