"""What the workflow runs for a config, as plain Python over the config dict: variants
(base config + overrides, each validated), which variant owns each stage, the dataset's
layout and the folder the stages read, resources, and every stage's command-line
arguments. ``workflow/rules/common.smk`` builds one :class:`Plan` and keeps only the input
functions that need Snakemake; this module imports no Snakemake (standard library only,
so the workflow's own process can use it) and is unit-tested on its own.

Errors are :class:`ConfigError`: one line naming the key or path and the fix.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
from pathlib import Path
from typing import Callable, Mapping

from .errors import DatasetError


class ConfigError(DatasetError):
    """A config the workflow cannot run; the message names the key and the fix."""


# Config sections each stage depends on, upstream included. A variant shares a stage's
# outputs with the first variant whose sections agree: that variant "owns" the stage.
STAGE_SECTIONS = {
    "pretrain": ("dataset", "model"),
    "tags": ("dataset", "model", "labels"),
    "prompts": ("dataset", "model", "labels", "text"),
    "cams": ("dataset", "model", "labels", "text", "cam"),
    "crf": ("dataset", "model", "labels", "text", "cam", "crf"),
    "segmentation": ("dataset", "model", "labels", "text", "cam", "crf", "segmentation"),
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
    "tag_images": {"mem_mb": 8000, "runtime": 240},  # as the CAM stage: one ViT-B/16 pass + crops
    "convert_voc12": {"mem_mb": 2000, "runtime": 30},  # 0.5 GB flat; ~1 min for 12k masks
    "convert_coco14": {"mem_mb": 16000, "runtime": 120},  # the instances JSON as Python objects
    "prepare_dataset": {"mem_mb": 2000, "runtime": 30},
    "train_clip": {"mem_mb": 4000, "runtime": 60},
    "score_prompts": {"mem_mb": 8000, "runtime": 120},
    "cams": {"mem_mb": 8000, "runtime": 120},  # 1,323 images a shard: 25 min even on a CPU
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

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# folders and reports of the workflow's own under results/<dataset>/ and reports/<dataset>/
RESERVED_VARIANTS = ("data", "logs", "benchmarks", "comparison")

HINTS = {
    "voc12": "download the VOC2012 trainval tar and SBD or SegmentationClassAug (README: "
    "'Reproducing VOC12')",
    "coco14": "download COCO 2014 train/val images and annotations (README: 'Reproducing COCO14')",
    "custom": "point dataset.root at the folder holding images/ (README: 'Your own dataset')",
}
CONVERTED_MARKER = {"voc12": "SegmentationClassAug", "coco14": "SegmentationClass"}

q = shlex.quote  # paths may hold spaces


def deep_merge(base: dict, overrides: dict) -> dict:
    """base with overrides applied key by key (nested dicts merged, anything else replaced)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def check_names(cfg: dict) -> None:
    """Names that become paths: safe characters, no collision with the workflow's own."""
    for what, name in [("dataset.name", cfg.get("dataset", {}).get("name", "demo"))] + [
        ("variant", v) for v in cfg.get("variants") or {}
    ]:
        if not isinstance(name, str) or not SAFE_NAME.match(name):
            raise ConfigError(
                f"{what} {name!r}: names become folders, so they take letters, digits, '_', "
                f"'.' and '-', starting with a letter or digit; rename it")
        if what == "dataset.name" and name in ("metrics", "plots"):
            raise ConfigError(
                f"dataset.name {name!r}: reports/{name}/ holds every dataset's "
                f"{name} for DVC; rename the dataset")
        if what == "variant" and name in RESERVED_VARIANTS:
            raise ConfigError(
                f"variant {name!r}: the name of one of the workflow's own folders or reports "
                f"({', '.join(RESERVED_VARIANTS)}); rename the variant")


def load_variants(cfg: dict, validate: Callable[[dict], None]) -> dict[str, dict]:
    """Validate the base config (``validate`` fills the schema's defaults in place and
    raises on a bad key), then every variant (base + overrides) on its own. ``cfg`` is
    the config as given; it is validated in place, as Snakemake's config."""
    raw = copy.deepcopy(cfg)
    check_names(cfg)
    validate(cfg)
    variants = {}
    for name, overrides in cfg["variants"].items():
        fixed = [k for k in ("dataset", "report", "resources", "variants") if k in overrides]
        if fixed:
            raise ConfigError(
                f"variant {name!r}: overrides may not change {fixed[0]!r} ('dataset', "
                f"'report', 'resources' and 'variants' hold for every variant of a config)")
        merged = deep_merge({k: v for k, v in raw.items() if k != "variants"}, overrides)
        try:
            validate(merged)
        except Exception as e:  # the validator's own error type
            raise ConfigError(f"config of variant {name!r} is invalid: {e}") from None
        if merged["cam"]["autocast"] and merged["cam"]["mode"] == "reference":
            raise ConfigError(
                f"variant {name!r}: cam.autocast applies to cam.mode 'batched'; 'reference' "
                f"reproduces the authors' fp32 computation")
        merged["variants"] = {}
        variants[name] = merged
    return variants


class Plan:
    """The variants of a validated config and everything derived from them.

    ``root`` is the folder relative paths are read from (the working directory of the
    run); the dataset's layout is looked up there once, at construction.
    """

    def __init__(self, config: dict, variants: dict[str, dict], root: str | Path = "."):
        self.config = config
        self.variants = variants
        self.root = Path(root)
        self.base = next(iter(variants))
        self.dataset = config["dataset"]["name"]
        self.kind = config["dataset"]["kind"]
        self.data = f"results/{self.dataset}/data"
        self.converted = f"{self.data}/converted"
        self.layout = self.dataset_layout()
        # datasets the user keeps are followed file by file (digests); the ones the
        # workflow makes (synthetic, converted) through dataset.json
        self.tracked = self.kind == "custom" or (
            self.kind in CONVERTED_MARKER and self.layout == "converted")
        self.hash_cache = f".snakemake/clipes/hashes-{self.dataset}.json"

    # ------------------------------------------------------------------ variants
    def vcfg(self, variant: str) -> dict:
        return self.variants[variant]

    def predicted(self, variant: str) -> bool:
        """Whether the variant runs on TagCLIP's tags instead of the dataset's labels."""
        return self.vcfg(variant)["labels"]["source"] == "predicted"

    def result_config(self, variant: str) -> dict:
        """The config a variant's results depend on: without cluster requests or variants."""
        return {k: v for k, v in self.vcfg(variant).items() if k not in ("resources", "variants")}

    def owner(self, variant: str, stage: str) -> str:
        """The first variant whose config agrees with `variant` on everything `stage` uses."""
        def key(v):
            return json.dumps({s: self.variants[v][s] for s in STAGE_SECTIONS[stage]},
                              sort_keys=True)

        mine = key(variant)
        return next(v for v in self.variants if key(v) == mine)

    def stage_dir(self, variant: str, stage: str) -> str:
        return f"results/{self.dataset}/{self.owner(variant, stage)}"

    def res(self, rule: str, key: str):
        """A rule's request: config 'resources' if set there, else RESOURCES."""
        return self.config["resources"].get(rule, {}).get(key, RESOURCES[rule][key])

    # ------------------------------------------------------------------ dataset
    def _path(self, p) -> Path:
        p = Path(p)
        return p if p.is_absolute() else self.root / p

    def dataset_layout(self) -> str:
        """'official' (downloads, converted by a rule) or 'converted' (ready for the stages)."""
        ds = self.config["dataset"]
        if ds["kind"] not in CONVERTED_MARKER:
            return "converted"
        if ds["layout"] != "auto":
            return ds["layout"]
        root = self._path(ds["root"])
        ready = (root / CONVERTED_MARKER[ds["kind"]]).is_dir()
        if ready and ds["kind"] == "voc12" and ds["train_split"]:
            # the layout of CLIP-ES's and deeplab-pytorch's READMEs: SegmentationClassAug/
            # inside VOC2012/ but no train_aug.txt: converted from there like the downloads
            split = Path(ds["train_split"])
            ready = (split if split.is_absolute() else root / split).is_file()
        return "converted" if ready else "official"

    def aug_masks_dir(self):
        """SegmentationClassAug masks for the VOC conversion: dataset.aug_masks, or the
        folder inside dataset.root where CLIP-ES's layout keeps them."""
        ds = self.config["dataset"]
        if ds["aug_masks"] and self._path(ds["aug_masks"]).is_dir():
            return ds["aug_masks"]
        inside = Path(ds["root"] or ".") / "SegmentationClassAug"
        return str(inside) if self._path(inside).is_dir() else ds["aug_masks"]

    def check_dataset_root(self) -> None:
        ds = self.config["dataset"]
        kind = ds["kind"]
        if kind == "synthetic":
            return
        if not ds["root"]:
            raise ConfigError(f"dataset.root is not set: {HINTS[kind]}")
        if not self._path(ds["root"]).is_dir():
            raise ConfigError(f"dataset.root {ds['root']!r} does not exist: {HINTS[kind]}")
        given = [v for v in self.variants if not self.predicted(v)]
        if kind == "custom" and not ds["labels"] and given:
            raise ConfigError(
                f"dataset.labels is not set: a custom dataset needs a CSV of image labels, or "
                f"labels.source: predicted (TagCLIP's tags) in every variant ({given[0]!r} has "
                f"'given')")
        if ds["test_root"]:
            if kind != "voc12":
                raise ConfigError(
                    f"dataset.test_root is for VOC12's evaluation server (VOC2012test.tar); "
                    f"a {kind} dataset has none: remove it")
            split = Path(ds["test_root"]) / ds["test_split"]
            if not self._path(split).is_file():
                raise ConfigError(
                    f"dataset.test_root: {split} does not exist: unpack VOC2012test.tar and "
                    f"set dataset.test_root to its VOCdevkit/VOC2012 folder (README: "
                    f"'Reproducing VOC12')")
        if kind == "voc12" and self.layout == "official":
            found = [p for p in (self.aug_masks_dir(), ds["sbd"]) if p and self._path(p).is_dir()]
            if not found:
                raise ConfigError(
                    f"dataset.root {ds['root']!r} has no SegmentationClassAug/, so it is read as "
                    f"the official VOC2012 folder, and the SBD masks are missing: dataset.sbd "
                    f"{ds['sbd']!r} and dataset.aug_masks {ds['aug_masks']!r} do not exist. "
                    f"{HINTS['voc12']}")

    def check_model_files(self) -> None:
        """A CLIP checkpoint path that does not exist is an error now, not a hub download."""
        for name, v in self.variants.items():
            ckpt = v["model"]["checkpoint"]
            if ckpt and not v["model"]["pretrain"]["enabled"] and not self._path(ckpt).is_file():
                raise ConfigError(
                    f"model.checkpoint {ckpt!r} (variant {name!r}) does not exist: give the path "
                    f"of an OpenAI-format CLIP file such as ViT-B-16.pt, or unset model.checkpoint "
                    f"to have open_clip download model.name with model.pretrained")

    def layout_note(self) -> str | None:
        """The log line that says how a VOC12/COCO14 root is read."""
        ds = self.config["dataset"]
        if ds["kind"] not in CONVERTED_MARKER:
            return None
        return (f"dataset {self.dataset}: {ds['kind']} in the {self.layout} layout at {ds['root']}"
                + (f" (converted into {self.converted} by convert_{ds['kind']})"
                   if self.layout == "official" else ""))

    def dataset_root(self) -> str:
        """The folder the stages read: generated, converted from the downloads, or root."""
        ds = self.config["dataset"]
        if ds["kind"] == "synthetic":
            return f"{self.data}/synthetic"
        return self.converted if self.layout == "official" else ds["root"]

    def split_path(self, which: str):
        """Path of a split file: relative paths are relative to the dataset root."""
        ds = self.config["dataset"]
        name = ds[f"{which}_split"]
        if ds["kind"] == "synthetic":
            return f"{self.data}/synthetic/{which}.txt"
        if name is None:
            return None
        if os.path.isabs(name) or ds["kind"] == "custom" and self._path(name).is_file():
            return name
        return str(Path(self.dataset_root()) / name)

    def has_split(self, which: str) -> bool:
        """Whether split `which` exists: a split file, or (custom train) every labelled row."""
        return self.split_path(which) is not None or (self.kind == "custom" and which == "train")

    def has_val(self) -> bool:
        return self.split_path("val") is not None

    def dataset_json(self) -> list[str]:
        """dataset.json as a stage's input, where the workflow makes the dataset (synthetic,
        converted). A dataset the user keeps is followed file by file (digests) and each
        stage checks what it reads up front; dataset.json is then an input of the report
        only: as a stage's input, a change of one image would rerun every stage."""
        return [] if self.tracked else [f"{self.data}/dataset.json"]

    def conversion_output(self) -> list[str]:
        """The conversion rule's summary, where the dataset comes as official downloads."""
        return [f"{self.converted}/convert.json"] if self.layout == "official" else []

    # ------------------------------------------------------------------ arguments
    def tags_file(self, variant):
        """The tagging stage's label file (label-free mode), or None."""
        if variant is None or not self.predicted(variant):
            return None
        return f"{self.stage_dir(variant, 'tags')}/tags/tags.txt"

    def tags_input(self, variant) -> list[str]:
        return [self.tags_file(variant)] if self.tags_file(variant) else []

    def dataset_args(self, which: str = "train", variant=None) -> str:
        """Command-line arguments the stage scripts take for the configured dataset; for a
        variant on predicted labels, the tags file replaces the dataset's own labels."""
        tags = self.tags_file(variant) if which == "train" else None
        return self._dataset_args(which) + (f" --tags {q(tags)}" if tags else "")

    def _dataset_args(self, which: str) -> str:
        ds = self.config["dataset"]
        kind = ds["kind"]
        args = [f"--dataset {kind}", f"--root {q(self.dataset_root())}"]
        split = self.split_path(which)
        if split:
            args.append(f"--split {q(split)}")
        if kind == "synthetic":
            root = self.dataset_root()
            args += [f"--classes {q(str(Path(root, 'classes.yaml')))}",
                     f"--labels {q(str(Path(root, 'labels.csv')))}",
                     f"--background {q(str(Path(root, 'background.txt')))}"]
        elif kind == "custom":
            args.append(self.custom_list_arg("classes"))
            if ds["labels"]:  # none: every image of the folder, tagged (labels.source: predicted)
                args.append(f"--labels {q(ds['labels'])}")
            if ds["background"] is not None:
                args.append(self.custom_list_arg("background"))
        args += self._reading_args()
        return " ".join(args)

    def _reading_args(self) -> list[str]:
        ds = self.config["dataset"]
        args = []
        if not ds["reference_quirks"]:
            args.append("--no-reference-quirks")
        if ds["exif"] != "ignore":
            args.append(f"--exif {ds['exif']}")
        return args

    def custom_list_arg(self, key: str) -> str:
        """--classes / --background: the config's file, or its inline list as JSON."""
        value = self.config["dataset"][key]
        value = value if isinstance(value, str) else json.dumps(value)
        return f"--{key} {q(value)}"

    def prepare_args(self) -> str:
        ds = self.config["dataset"]
        kind = ds["kind"]
        args = [f"--kind {kind}"]
        if kind == "synthetic":
            s = ds["synthetic"]
            return " ".join(args + [f"--seed {s['seed']} --n-train {s['n_train']} --n-val {s['n_val']}"])
        args.append(f"--root {q(self.dataset_root())}")
        args.append(f"--cam-memory-mb {self.res('cams', 'mem_mb')} --hash-cache {self.hash_cache}")
        sides = [v["cam"]["max_side"] for v in self.variants.values()]
        if None not in sides:
            args.append(f"--max-side {max(sides)}")
        if self.layout == "official":
            args.append(f"--conversion {self.converted}/convert.json")
        if self.split_path("train"):
            args.append(f"--train-split {q(self.split_path('train'))}")
        if self.has_val():
            args.append(f"--val-split {q(self.split_path('val'))}")
        if kind == "custom":
            for key in ("classes", "background"):
                if ds[key] is not None:
                    args.append(self.custom_list_arg(key))
            if ds["labels"]:
                args.append(f"--labels {q(ds['labels'])}")
        args += self._reading_args()
        return " ".join(args)

    def voc_convert_args(self) -> str:
        ds = self.config["dataset"]
        args = [f"--voc {q(ds['root'])}"]
        if ds["sbd"]:
            args.append(f"--sbd {q(ds['sbd'])}")
        if self.aug_masks_dir():
            args.append(f"--aug-masks {q(self.aug_masks_dir())}")
        return " ".join(args)

    def model_args(self, variant: str) -> str:
        m = self.vcfg(variant)["model"]
        if m["pretrain"]["enabled"]:
            return f"--checkpoint {self.model_input(variant)[0]}"
        if m["checkpoint"]:
            return f"--checkpoint {q(m['checkpoint'])}"
        args = f"--model {m['name']} --pretrained {m['pretrained'] or 'none'} --model-seed {m['seed']}"
        return args + (f" --cache-dir {m['cache_dir']}" if m["cache_dir"] else "")

    def model_input(self, variant: str) -> list[str]:
        m = self.vcfg(variant)["model"]
        if m["pretrain"]["enabled"]:
            return [f"results/{self.dataset}/{self.owner(variant, 'pretrain')}/clip/clip.pt"]
        return [m["checkpoint"]] if m["checkpoint"] else []

    def candidate_args(self, variant: str) -> str:
        c = self.vcfg(variant)["text"]["select_prompt"]["candidates"]
        return " ".join(q(t) for t in ([c] if isinstance(c, str) else c))

    def prompt_table(self, variant: str) -> list[str]:
        sp = self.vcfg(variant)["text"]["select_prompt"]
        if sp["enabled"] and sp["use_selected"]:
            return [f"{self.stage_dir(variant, 'prompts')}/prompts/scores.tsv"]
        return []

    def cam_args(self, variant: str) -> str:
        c = self.vcfg(variant)["cam"]
        t = self.vcfg(variant)["text"]
        args = [f"--mode {c['mode']}", f"--batch-size {c['batch_size']}",
                f"--device {c['device']}", f"--synonym-fusion {t['synonym_fusion']}",
                f"--text-context {t['context']}", "--keep-plain"]
        table = self.prompt_table(variant)
        args.append(f"--template-table {table[0]}" if table else f"--template {q(t['template'])}")
        if c["autocast"]:
            args.append(f"--autocast {c['autocast']} --autocast-scope {c['autocast_scope']}")
        if c["box_threshold"] is not None:
            args.append(f"--box-threshold {c['box_threshold']}")
        if c["max_side"] is not None:
            args.append(f"--max-side {c['max_side']}")
        if c["resize"] != "pil":  # the reference's resize needs no flag
            args.append(f"--resize {c['resize']}")
        args.append(f"--loaders {c['loaders']} --store {c['store']}")
        if not c["compress"]:
            args.append("--no-compress")
        for key, flag in (("caa", "--no-caa"), ("background", "--no-background"),
                          ("softmax", "--no-softmax"), ("clip_box_border", "--no-box-border-clip")):
            if not c[key]:
                args.append(flag)
        return " ".join(args)

    def cam_shards(self, variant: str) -> list[str]:
        v = self.owner(variant, "cams")
        return [f"results/{self.dataset}/{v}/cams/shard{s}" for s in range(self.vcfg(v)["cam"]["shards"])]

    def crf_args(self, variant: str) -> str:
        c = self.vcfg(variant)["crf"]
        args = [f"--confidence {c['confidence']}", f"--bg-power {c['bg_power']}",
                f"--iterations {c['iterations']}", f"--image-input {c['image_input']}"]
        if not c["enabled"]:
            args.append("--no-crf")
        return " ".join(args)

    def crf_shards(self, variant: str, what: str = "pseudo_masks") -> list[str]:
        v = self.owner(variant, "crf")
        return [f"results/{self.dataset}/{v}/{what}/shard{s}" for s in range(self.vcfg(v)["crf"]["shards"])]

    # ------------------------------------------------------------------ segmentation
    def seg_cfg(self, variant: str) -> dict:
        return self.vcfg(variant)["segmentation"]

    def seg_label_dirs(self, variant: str) -> list[str]:
        """cgl: the confidence-masked pseudo masks; plain/soft: CRF labels without the ignore
        region (soft also reads the confidence maps)."""
        loss = self.seg_cfg(variant)["loss"]
        return self.crf_shards(variant, "pseudo_masks" if loss == "cgl" else "crf_labels")

    def seg_conf_dirs(self, variant: str) -> list[str]:
        return self.crf_shards(variant, "crf_conf") if self.seg_cfg(variant)["loss"] == "soft" else []

    def extra_seeds(self, variant: str) -> list[int]:
        """The seeds of a variant's further trainings (segmentation.extra_seeds, less the
        first seed's repeats), where the variant trains a network."""
        s = self.seg_cfg(variant)
        if not s["enabled"] or not self.has_val():
            return []
        return [x for x in dict.fromkeys(s["extra_seeds"]) if x != s["seed"]]

    def seed_evals(self, variant: str) -> list[str]:
        """Each further seed's val evaluation, from the variant that trains them."""
        d = self.stage_dir(variant, "segmentation")
        return [f"{d}/eval/segmentation_val_seed{x}.json" for x in self.extra_seeds(variant)]

    def seg_train_args(self, variant: str, seed=None) -> str:
        s = self.seg_cfg(variant)
        args = [
            f"--backbone {s['backbone']}", f"--init {q(str(s['init'] or 'none'))}",
            f"--loss {s['loss']}", f"--iterations {s['iterations']}",
            f"--batch-size {s['batch_size']}", f"--crop {s['crop']}", f"--lr {s['lr']}",
            f"--momentum {s['momentum']}", f"--weight-decay {s['weight_decay']}",
            f"--poly-power {s['poly_power']}",
            f"--scale-range {s['scale_range'][0]} {s['scale_range'][1]}",
            f"--checkpoint-every {s['checkpoint_every']}",
            f"--seed {s['seed'] if seed is None else seed}", f"--device {s['device']}",
            f"--workers {s['workers']}", f"--protocol {s['protocol']}",
            f"--iter-size {s['iter_size']}", f"--scales {' '.join(map(str, s['scales']))}",
        ]
        if s["blocks"]:
            args.append(f"--blocks {' '.join(map(str, s['blocks']))}")
        if s["class_balanced"]:
            args.append("--class-balanced")
        return " ".join(args)

    def test_protocol(self, variant: str) -> str:
        """The named test-time protocol of a variant's segmentation numbers."""
        s = self.seg_cfg(variant)
        if s["test_protocol"]:
            return s["test_protocol"]
        return "msc-max" if s["protocol"] == "deeplab-pytorch" else "mean-softmax-flip"

    def seg_init_input(self, variant: str) -> list[str]:
        init = self.seg_cfg(variant)["init"]
        return [init] if init and init != "imagenet" else []

    # ------------------------------------------------------------------ targets, reports
    def variant_outputs(self, variant: str) -> dict[str, str]:
        """Every file the report of `variant` reads (what is switched off is left out)."""
        c = self.vcfg(variant)
        cams, crf, seg = (self.stage_dir(variant, s) for s in ("cams", "crf", "segmentation"))
        out = {"dataset": f"{self.data}/dataset.json",
               "eval_cams": f"{cams}/eval/cams.json",
               "cams_plain": f"{cams}/eval/cams_plain.json",
               "eval_pseudo": f"{crf}/eval/pseudo_masks.json"}
        if c["crf"]["enabled"]:
            out["eval_crf_labels"] = f"{crf}/eval/crf_labels.json"
        if c["segmentation"]["enabled"] and self.has_val():
            out["eval_seg"] = f"{seg}/eval/segmentation_val.json"
            out["train_log"] = f"{seg}/segmentation/train_log.csv"
        if c["text"]["select_prompt"]["enabled"]:
            out["prompts"] = f"{self.stage_dir(variant, 'prompts')}/prompts/scores.tsv"
        return out

    def voc_test_targets(self) -> list[str]:
        """The evaluation server's tarball of every segmentation model, where VOC2012's test
        images are configured (dataset.test_root)."""
        if not self.config["dataset"]["test_root"]:
            return []
        return sorted({f"{self.stage_dir(v, 'segmentation')}/voc_test/comp6_test_cls.tar.gz"
                       for v in self.variants if self.vcfg(v)["segmentation"]["enabled"]})

    def voc_test_split(self) -> str:
        ds = self.config["dataset"]
        return str(Path(ds["test_root"]) / ds["test_split"])

    def all_targets(self) -> list[str]:
        d = self.dataset
        targets = []
        for v in self.variants:
            targets += [f"reports/{d}/{v}.html", f"reports/{d}/{v}.md"]
        targets += [f"reports/{d}/comparison.html", f"reports/{d}/comparison.md",
                    f"reports/metrics/{d}.json"]
        return targets + self.voc_test_targets()

    def report_inputs(self, variant: str) -> dict:
        files = self.variant_outputs(variant)
        ins = dict(files)
        ins["cams"] = self.cam_shards(variant)
        ins["pseudo"] = self.crf_shards(variant)
        if self.predicted(variant):
            ins["eval_tags"] = f"{self.stage_dir(variant, 'tags')}/eval/tags.json"
        if self.seed_evals(variant):
            ins["eval_seeds"] = self.seed_evals(variant)
        if "eval_seg" in files:
            seg = f"{self.stage_dir(variant, 'segmentation')}/segmentation"
            ins["pred"] = f"{seg}/pred_val"
            ins["train_plot"] = f"{seg}/train_log.png"
            ins["seg_info"] = f"{seg}/train_info.json"
        return ins

    def train_logs(self) -> dict[str, str]:
        """variant -> the training log of its segmentation network, where it has one."""
        return {v: f"{self.stage_dir(v, 'segmentation')}/segmentation/train_log.csv"
                for v in self.variants if "train_log" in self.variant_outputs(v)}

    def comparison_variants(self) -> str:
        """Each variant's overrides of the config and the variant whose run made each of its
        stages, for the comparison report (JSON, quoted for the shell)."""
        info = {v: {"overrides": self.config["variants"][v] or {},
                    "owners": {s: self.owner(v, s) for s in STAGE_SECTIONS}}
                for v in self.variants}
        return q(json.dumps(info, sort_keys=True))

    def report_args(self, variant: str, inputs: Mapping) -> str:
        """The report script's arguments; ``inputs``: the rule's named inputs (as
        :meth:`report_inputs` names them)."""
        evals = [f"cams_plain={inputs['cams_plain']}", f"cams={inputs['eval_cams']}",
                 f"pseudo_masks={inputs['eval_pseudo']}"]
        for key, name in (("eval_crf_labels", "crf_labels"), ("eval_seg", "segmentation"),
                          ("eval_tags", "tags")):
            if key in inputs:
                evals.append(f"{name}={inputs[key]}")
        for x, path in zip(self.extra_seeds(variant), self.seed_evals(variant)):
            evals.append(f"segmentation_seed{x}={path}")
        # each stage's benchmarks come from the variant that owns the stage, and only that
        # stage's rules: an owner's folder also holds its other stages' files
        c = self.vcfg(variant)
        seeds = (",train_segmentation_seed,predict_segmentation_seed,eval_segmentation_seed"
                 if self.extra_seeds(variant) else "")
        stage_rules = {
            "pretrain": "train_clip" if c["model"]["pretrain"]["enabled"] else None,
            "tags": "tag_images" if self.predicted(variant) else None,
            "prompts": "score_prompts" if c["text"]["select_prompt"]["enabled"] else None,
            "cams": "cams,eval_cams",
            "crf": "crf,eval_pseudo_masks,eval_crf_labels",
            "segmentation": ("train_segmentation,predict_segmentation,eval_segmentation" + seeds
                             if "eval_seg" in inputs else None),
        }
        bench = [f"{self.stage_dir(variant, s)}/benchmarks:{r}" for s, r in stage_rules.items() if r]
        bench.append(f"results/{self.dataset}/benchmarks:prepare_dataset")
        args = [f"--eval {' '.join(evals)}", f"--bench-dirs {' '.join(bench)}",
                f"--cams {' '.join(inputs['cams'])}", f"--pseudo {' '.join(inputs['pseudo'])}",
                f"--gallery {self.config['report']['gallery']}"]
        if "pred" in inputs:
            val = self.split_path("val")
            args += [f"--pred {inputs['pred']}"] + ([f"--val-split {q(val)}"] if val else [])
            args += [f"--train-log {inputs['train_plot']}", f"--seg-info {inputs['seg_info']}"]
        if "prompts" in inputs:
            args.append(f"--prompts {inputs['prompts']}")
        return " ".join(args)
