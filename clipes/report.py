"""Run and comparison reports: Jinja templates rendered to self-contained HTML and Markdown.

A run report (one dataset and variant) answers: how good are the masks after each stage,
where did the time go, and what do the masks look like. A comparison report puts the
variants of a dataset side by side. Missing inputs (a stage switched off) are reported in
place as missing, never as zeros.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import io as _io
import json
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .io import IGNORE, atomic_path, load_mask, voc_palette, write_text

# The CLIP-ES paper's numbers (docs/method.md; mIoU %): (stage, what, split as the paper
# names it, the split's name here (its file's stem), value)
PAPER = {
    "voc12": [
        ("initial CAM", "initial softmax-GradCAM", "VOC train (1,464)", "train", 58.6),
        ("CAA", "+ CAA", "VOC train (1,464)", "train", 70.8),
        ("pseudo masks (CRF)", "+ CAA + dense CRF", "VOC train (1,464)", "train", 75.0),
        ("pseudo masks (CRF)", "pseudo masks after CRF", "VOC train_aug (10,582)", "train_aug", 68.7),
        ("segmentation (val)", "DeepLabV2, ImageNet init", "VOC val", "val", 71.1),
        ("segmentation (val)", "DeepLabV2, COCO init", "VOC val", "val", 73.8),
    ],
    "coco14": [
        ("segmentation (val)", "DeepLabV2, ImageNet init", "COCO14 val", "val", 45.4),
    ],
}


# stage of the pipeline -> the Snakemake rules whose benchmarks it sums
STAGE_RULES = {
    "prepare": ["prepare_dataset"],
    "CLIP pre-training": ["train_clip"],
    "tagging (label-free)": ["tag_images"],
    "prompt selection": ["score_prompts"],
    "CAMs + CAA": ["cams"],
    "CAM evaluation": ["eval_cams"],
    "CRF + confidence": ["crf"],
    "pseudo-mask evaluation": ["eval_pseudo_masks", "eval_crf_labels"],
    "segmentation training": ["train_segmentation", "train_segmentation_seed"],
    "segmentation inference": ["predict_segmentation", "predict_segmentation_seed"],
    "segmentation evaluation": ["eval_segmentation", "eval_segmentation_seed"],
}
IMAGES_OF_STAGE = {"CAMs + CAA": "train", "CRF + confidence": "train",
                   "tagging (label-free)": "train",
                   "segmentation inference": "val"}


@dataclass
class RunInputs:
    variant: str
    dataset: dict  # dataset.json
    config: dict  # the variant's effective config
    evals: dict[str, dict | None]  # stage name -> metrics JSON (None: not run)
    benchmark_dirs: list[Path] = field(default_factory=list)
    train_log: Path | None = None
    prompts: Path | None = None  # prompt-selection table (TSV)
    seg_info: dict | None = None  # train_info.json: protocol, init, whether it is the paper's


def segmentation_note(config: dict, info: dict | None) -> str:
    """Which protocol, test protocol and init a segmentation number comes from."""
    s = config.get("segmentation", {})
    protocol = (info or {}).get("protocol", s.get("protocol", "torchvision"))
    test = s.get("test_protocol") or ("msc-max" if protocol == "deeplab-pytorch"
                                      else "mean-softmax-flip")
    crf = " + CRF" if s.get("test_crf") else ""
    note = f"protocol {protocol}, test {test}{crf}"
    if info:
        note += (f"; init {info['init']}"
                 + (" (the paper's)" if info.get("paper_init") else " (not the paper's init)"))
    return note


def load_json(path) -> dict | None:
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else None


# ------------------------------------------------------------------------- provenance
def clip_used(config: dict) -> str:
    """The CLIP the CAM stage ran with, in words: the config dump keeps the unused
    name/pretrained defaults, so the header says which weights were actually loaded."""
    m = config.get("model", {})
    if m.get("pretrain", {}).get("enabled"):
        p = m["pretrain"]
        return (f"tiny CLIP trained by this workflow on the dataset's captions (model.pretrain: "
                f"{p.get('steps')} steps, seed {p.get('seed', 0)})")
    if m.get("checkpoint"):
        return f"checkpoint {m['checkpoint']}"
    tag = m.get("pretrained", "openai")
    if tag is None or str(tag).lower() in ("", "none", "null", "random"):
        return f"{m.get('name', 'ViT-B-16')} with random weights (seed {m.get('seed', 0)})"
    return f"{m.get('name', 'ViT-B-16')} / {tag}"


def provenance(config: dict, repo: Path | None = None) -> dict:
    import torch

    repo = repo or Path(__file__).resolve().parents[1]

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    versions = {}
    for mod in ("torch", "open_clip", "numpy", "pandas", "snakemake", "pydensecrf"):
        try:
            m = __import__(mod)
            versions[mod] = getattr(m, "__version__", "installed")
        except ImportError:
            versions[mod] = "not installed"
    device = machine_description("cuda" if torch.cuda.is_available() else "cpu")
    cfg_text = json.dumps(config, sort_keys=True)
    return {
        "config_hash": hashlib.sha256(cfg_text.encode()).hexdigest()[:12],
        "config_yaml": _yaml(config),
        "git_commit": commit, "git_dirty": dirty, "versions": versions, "device": device,
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


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


# ----------------------------------------------------------------------------- timing
def read_benchmarks(dirs: list) -> pd.DataFrame:
    """Snakemake benchmark TSVs in ``dirs``; an entry ``DIR:rule1,rule2`` reads only those
    rules' files (shards, ``<rule><i>.tsv``, included)."""
    rows = []
    for entry in dirs:
        d, _, only = str(entry).partition(":")
        only = set(only.split(",")) if only else None
        for f in sorted(Path(d).glob("*.tsv")):
            rule = f.stem.rstrip("0123456789")
            if only is not None and rule not in only:
                continue
            b = pd.read_csv(f, sep="\t")
            if b.empty:
                continue
            rows.append({"rule": rule, "wall_s": float(b["s"].iloc[-1]),
                         "cpu_s": float(pd.to_numeric(b.get("cpu_time", pd.Series([np.nan])),
                                                      errors="coerce").iloc[-1]),
                         "max_rss_mb": float(pd.to_numeric(b.get("max_rss", pd.Series([np.nan])),
                                                           errors="coerce").iloc[-1])})
    return pd.DataFrame(rows, columns=["rule", "wall_s", "cpu_s", "max_rss_mb"])


def timing_table(bench: pd.DataFrame, n_images: dict[str, int]) -> pd.DataFrame:
    out = []
    for stage, rules in STAGE_RULES.items():
        b = bench[bench["rule"].isin(rules)]
        if b.empty:
            continue
        wall = b["wall_s"].sum()
        n = n_images.get(IMAGES_OF_STAGE.get(stage, ""), 0)
        out.append({"stage": stage, "wall_s": wall, "cpu_s": b["cpu_s"].sum(),
                    "peak_mem_mb": b["max_rss_mb"].max(), "jobs": len(b),
                    "images_per_s": n / wall if n and wall > 0 else np.nan})
    return pd.DataFrame(out, columns=["stage", "wall_s", "cpu_s", "peak_mem_mb", "jobs",
                                      "images_per_s"])


# ---------------------------------------------------------------------------- quality
QUALITY_STAGES = [
    ("initial CAM", "cams_plain"),
    ("CAA", "cams"),
    ("CRF labels", "crf_labels"),
    ("pseudo masks (CRF)", "pseudo_masks"),
    ("segmentation (val)", "segmentation"),
]


def miou_of(ev: dict | None) -> float | None:
    if ev is None:
        return None
    if "at_chosen" in ev:
        return ev["at_chosen"]["mIoU"]
    return ev.get("mIoU")


def split_of(ev: dict | None) -> dict | None:
    """The split an evaluation was measured on: {name, n_images, n_scored} (older files:
    the image count only)."""
    if not ev:
        return None
    if ev.get("split"):
        return ev["split"]
    return {"name": None, "n_images": ev.get("n_images"), "n_scored": ev.get("n_images")}


def split_label(split: dict | None) -> str:
    if not split:
        return ""
    n = split.get("n_scored") if split.get("n_scored") is not None else split.get("n_images")
    count = f"{n:,} images" if n is not None else ""
    return f"{split['name']} ({count})" if split.get("name") else count


def seed_summary(evals: dict, config: dict) -> dict | None:
    """The val mIoU (%) of each seed the segmentation network was trained with (the
    configured seed, and segmentation.extra_seeds), their mean and sample standard
    deviation; None with one seed."""
    per = {}
    first = miou_of(evals.get("segmentation"))
    if first is not None:
        per[int(config.get("segmentation", {}).get("seed", 0))] = 100 * first
    for key, ev in evals.items():
        if key.startswith("segmentation_seed") and miou_of(ev) is not None:
            per[int(key[len("segmentation_seed"):])] = 100 * miou_of(ev)
    if len(per) < 2:
        return None
    v = np.array(list(per.values()))
    return {"seeds": per, "mean": float(v.mean()), "std": float(v.std(ddof=1)), "n": len(v)}


def quality_table(evals: dict[str, dict | None], config: dict | None = None) -> list[dict]:
    rows = []
    for label, key in QUALITY_STAGES:
        ev = evals.get(key)
        row = {"stage": label, "key": key, "available": miou_of(ev) is not None}
        if ev is not None and miou_of(ev) is None:
            row["note"] = ev.get("note", "not scored")
        elif ev is not None:
            base = ev["at_chosen"] if "at_chosen" in ev else ev
            pct = (lambda v: None if v is None else 100 * v)  # noqa: E731
            row.update(mIoU=100 * base["mIoU"], pixel_acc=pct(base.get("pixel_acc")),
                       precision=pct(base.get("mean_precision")),
                       recall=pct(base.get("mean_recall")),
                       n_images=ev.get("n_images"), coverage=ev.get("coverage"),
                       split=split_label(split_of(ev)),
                       split_name=(split_of(ev) or {}).get("name"))
            if "chosen_power" in ev:
                row["note"] = (f"background power {ev['chosen_power']} chosen on ground truth "
                               f"(oracle) from {', '.join(ev['by_power'])}; "
                               + ", ".join(f"p={p}: {100 * v:.2f}" for p, v in ev["by_power"].items()))
            elif ev.get("coverage") is not None and ev["coverage"] < 1:
                row["note"] = f"confident pixels only ({100 * ev['coverage']:.1f}% of the labelled pixels)"
            if ev.get("n_without_gt"):
                row["note"] = (row.get("note", "") + f"; {ev['n_without_gt']} images without "
                               f"a ground-truth mask left out").lstrip("; ")
            seeds = seed_summary(evals, config or {}) if key == "segmentation" else None
            if seeds:
                row["seeds"] = seeds
                each = ", ".join(f"seed {k}: {v:.2f}" for k, v in seeds["seeds"].items())
                row["note"] = (f"mean ± std over {seeds['n']} seeds {seeds['mean']:.2f} ± "
                               f"{seeds['std']:.2f} ({each}); the mIoU shown is seed "
                               f"{next(iter(seeds['seeds']))}'s; " + row.get("note", "")).rstrip("; ")
        rows.append(row)
    return rows


def labels_section(config: dict, tags: dict | None, class_names: list[str]) -> dict:
    """Where the image-level labels came from and, for TagCLIP's tags, how good they are."""
    source = config.get("labels", {}).get("source", "given")
    out = {"source": source, "metrics": None, "per_class": []}
    if source == "predicted" and tags:
        names = tags.get("class_names") or class_names[1:]
        out["metrics"] = {k: tags.get(k) for k in ("mAP", "F1", "P", "R", "n_differ", "n_scored",
                                                    "n_images", "seconds_per_image", "note")}
        out["per_class"] = [{"class": n, "AP": 100 * ap}
                            for n, ap in zip(names, tags.get("ap_per_class") or [])]
    return out


def paper_table(kind: str, quality: list[dict]) -> list[dict]:
    """The paper's numbers beside this run's, with the difference where the run measured
    the same stage on the same split (train and train_aug are told apart)."""
    mine = {(r["stage"], r.get("split_name")): r for r in quality if r.get("available")}
    rows = []
    for stage, what, split, split_name, value in PAPER.get(kind, []):
        r = mine.get((stage, split_name))
        other = next((q for q in quality if q["stage"] == stage and q.get("available")), None)
        rows.append({"stage": stage, "what": what, "split": split, "paper": value,
                     "yours": r["mIoU"] if r else None,
                     "delta": r["mIoU"] - value if r else None,
                     "note": "" if r or other is None else
                     f"this run measured it on {other.get('split') or 'another split'}"})
    return rows


def per_class_table(ev: dict | None, class_names: list[str]) -> pd.DataFrame | None:
    """Per-class scores (%) of one evaluation: IoU, precision, recall, FP and FN ratios
    (the last four where the evaluation file has them)."""
    if miou_of(ev) is None:
        return None
    base = ev["at_chosen"] if "at_chosen" in ev else ev
    cols = {"IoU": "class_iou", "precision": "class_precision", "recall": "class_recall",
            "FP ratio": "class_fp_ratio", "FN ratio": "class_fn_ratio"}
    rows = []
    for i in base["class_iou"]:
        row = {"class": class_names[int(i)] if int(i) < len(class_names) else i}
        for col, key in cols.items():
            if key in base:
                v = base[key].get(i, base[key].get(str(i)))
                row[col] = None if v is None else 100 * v
        rows.append(row)
    return pd.DataFrame(rows)


def per_class_tables(evals: dict, class_names: list[str]) -> list[dict]:
    """One per-class table per evaluated stage, in pipeline order."""
    out = []
    for label, key in QUALITY_STAGES:
        t = per_class_table(evals.get(key), class_names)
        if t is not None:
            out.append({"stage": label, "split": split_label(split_of(evals.get(key))),
                        "columns": [c for c in t.columns if c != "class"],
                        "rows": t.to_dict("records")})
    return out


# ---------------------------------------------------------------------------- figures
def _fig_png(fig) -> bytes:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig_timing(timing: pd.DataFrame) -> bytes | None:
    if timing.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 1.6 + 0.1 * len(timing)))
    left = 0.0
    colors = plt.get_cmap("tab20").colors
    for i, r in enumerate(timing.itertuples()):
        ax.barh([0], [r.wall_s], left=left, color=colors[i % 20], label=r.stage)
        left += r.wall_s
    ax.set_yticks([])
    ax.set_xlabel("wall time (s), stages stacked")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=3, fontsize=7, frameon=False)
    return _fig_png(fig)


def fig_per_class(table: pd.DataFrame | None) -> bytes | None:
    if table is None or table["IoU"].isna().all():
        return None
    plt = _plt()
    t = table.dropna()
    fig, ax = plt.subplots(figsize=(max(5, 0.28 * len(t)), 3))
    ax.bar(range(len(t)), t["IoU"], color="tab:blue")
    ax.set_xticks(range(len(t)))
    ax.set_xticklabels(t["class"], rotation=70, fontsize=7)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    return _fig_png(fig)


def fig_comparison(df: pd.DataFrame, stages: list[str]) -> bytes | None:
    cols = [s for s in stages if s in df and df[s].notna().any()]
    if not cols:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(df) * len(cols) / 3), 3.2))
    width = 0.8 / len(cols)
    for j, c in enumerate(cols):
        ax.bar(np.arange(len(df)) + j * width, df[c].fillna(0), width, label=c)
    ax.set_xticks(np.arange(len(df)) + 0.4 - width / 2)
    ax.set_xticklabels(df["variant"], rotation=20)
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize=7)
    return _fig_png(fig)


# ---------------------------------------------------------------------------- gallery
def _colorize(mask: np.ndarray) -> np.ndarray:
    pal = np.asarray(voc_palette(), np.uint8).reshape(256, 3)
    pal[IGNORE] = (255, 255, 255)
    return pal[mask]


def _legend(fig, masks: list[np.ndarray], class_names: list[str] | None) -> None:
    """Colour key of the classes the shown masks hold, and white for ignored pixels."""
    from matplotlib.patches import Patch

    pal = np.asarray(voc_palette(), np.uint8).reshape(256, 3) / 255
    present = sorted({int(v) for m in masks if m is not None for v in np.unique(m)} - {IGNORE})
    names = class_names or []
    handles = [Patch(facecolor=pal[v], edgecolor="0.5",
                     label=names[v] if v < len(names) else f"class {v}") for v in present]
    handles.append(Patch(facecolor="white", edgecolor="0.3", label="ignored (255)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7,
               frameon=False, bbox_to_anchor=(0.5, -0.02))


GALLERY_COLUMNS = {
    "pseudo": ["image", "ground truth", "CAM (max over classes)", "pseudo mask"],
    "pred": ["image", "ground truth", "prediction"],
}


def gallery_figure(items: list[dict], kind: str = "pseudo",
                   class_names: list[str] | None = None) -> bytes | None:
    """items: dicts with image (RGB), gt, and cam (H, W) in [0, 1] and pseudo (kind
    "pseudo": training images) or pred (kind "pred": validation images), and title. One row
    per image, a colour key below."""
    if not items:
        return None
    plt = _plt()
    cols = GALLERY_COLUMNS[kind]
    fig, axes = plt.subplots(len(items), len(cols), figsize=(2.2 * len(cols), 2.0 * len(items) + 0.4),
                             squeeze=False)
    for r, it in enumerate(items):
        panels = [it["image"], _colorize(it["gt"])] + (
            [None, _colorize(it["pseudo"])] if kind == "pseudo" else [_colorize(it["pred"])])
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if r == 0:
                ax.set_title(cols[c], fontsize=8)
            if kind == "pseudo" and c == 2:
                ax.imshow(it["image"])
                ax.imshow(it["cam"], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            else:
                ax.imshow(panels[c])
        axes[r][0].text(0, -0.08, it["title"], fontsize=7, transform=axes[r][0].transAxes,
                        va="top")
    _legend(fig, [it["gt"] for it in items] + [it.get(kind) for it in items], class_names)
    return _fig_png(fig)


def per_image_iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """Mean IoU over the classes present in this image's ground truth (255 ignored)."""
    ok = gt != IGNORE
    vals = []
    for c in np.unique(gt[ok]):
        inter = np.sum((gt == c) & (pred == c) & ok)
        union = np.sum(((gt == c) | (pred == c)) & ok)
        vals.append(inter / union if union else 0.0)
    return float(np.mean(vals)) if vals else float("nan")


def _best_and_worst(scored: list, n: int) -> list:
    scored.sort(key=lambda t: (np.nan_to_num(t[0], nan=-1), t[1].id))
    return scored[-n:][::-1] + [t for t in scored[:n] if t not in scored[-n:]]


def gallery_items(samples, pseudo_dirs, cam_dirs, n: int) -> list[dict]:
    """The n best and n worst training images by per-image IoU of their pseudo masks."""
    from .camstore import load_cams
    from .datasets import load_gt
    from .metrics import find_file
    from .segmentation import load_rgb

    if n <= 0 or not samples:
        return []
    scored = []
    for s in samples:
        if s.gt is None:
            continue
        try:
            pseudo = load_mask(find_file(pseudo_dirs, f"{s.id}.png"))
        except FileNotFoundError:
            continue
        scored.append((per_image_iou(load_gt(s, pseudo.shape), pseudo), s, pseudo))
    items = []
    for iou, s, pseudo in _best_and_worst(scored, n):
        _, cams = load_cams(find_file(cam_dirs, f"{s.id}.npz"))
        items.append({"image": load_rgb(s.image), "gt": load_gt(s, pseudo.shape),
                      "cam": cams.astype(np.float32).max(0), "pseudo": pseudo,
                      "title": f"{s.id}: IoU {100 * iou:.1f}"})
    return items


def val_gallery_items(samples, pred_dirs, n: int) -> list[dict]:
    """The n best and n worst validation images by per-image IoU of the final model's
    predictions."""
    from .datasets import load_gt
    from .metrics import find_file
    from .segmentation import load_rgb

    if n <= 0 or not samples or not pred_dirs:
        return []
    scored = []
    for s in samples:
        if s.gt is None:
            continue
        try:
            pred = load_mask(find_file(pred_dirs, f"{s.id}.png"))
        except FileNotFoundError:
            continue
        scored.append((per_image_iou(load_gt(s, pred.shape), pred), s, pred))
    return [{"image": load_rgb(s.image), "gt": load_gt(s, pred.shape), "pred": pred,
             "title": f"{s.id}: IoU {100 * iou:.1f}"} for iou, s, pred in _best_and_worst(scored, n)]


# -------------------------------------------------------------------------- rendering
class Verbatim(str):
    """Text a Markdown template prints as it is (it is in a code block or span already)."""


def md_escape(value):
    """What a Markdown report prints of a value it did not write itself: HTML's special
    characters as entities (Markdown viewers render raw HTML), the characters that would
    start code, a link or an image, or split a table cell backslash-escaped, line breaks
    as spaces."""
    if value is None or isinstance(value, Verbatim):
        return "" if value is None else value
    import html
    import re

    text = re.sub(r"[\r\n]+", " ", html.escape(str(value), quote=False))
    return re.sub(r"([\\`\[\]|])", r"\\\1", text)


def md_code(value) -> Verbatim:
    """A value as a Markdown code span, safe whatever it holds: fenced with more backticks
    than it contains, line breaks as spaces."""
    import re

    text = re.sub(r"[\r\n]+", " ", str(value))
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return Verbatim(f"{ticks}{pad}{text}{pad}{ticks}")


def md_block(value, lang: str = "") -> Verbatim:
    """A value as a fenced Markdown code block that no line of it can close."""
    import re

    text = str(value).rstrip("\n")
    fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return Verbatim(f"{fence}{lang}\n{text}\n{fence}")


def _env(markdown: bool = False):
    """The templates' environment. HTML templates (``*.html.j2``) escape every value they
    print; Markdown templates (``*.md.j2``) print values through :func:`md_escape`."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(loader=PackageLoader("clipes", "templates"), undefined=StrictUndefined,
                      autoescape=select_autoescape(enabled_extensions=("html", "html.j2"),
                                                   disabled_extensions=("md", "md.j2"),
                                                   default_for_string=True, default=True),
                      trim_blocks=True, lstrip_blocks=True,
                      finalize=md_escape if markdown else None)
    env.filters["num"] = lambda v, d=2: "n/a" if v is None or (isinstance(v, float) and
                                                                  np.isnan(v)) else f"{v:.{d}f}"
    env.filters["b64"] = lambda b: base64.b64encode(b).decode()
    env.filters["code"] = md_code
    env.filters["block"] = md_block
    return env


def _write_figures(figs: dict[str, bytes | None], md_path: Path) -> dict[str, str | None]:
    """PNG files next to the Markdown report; returns their relative paths."""
    folder = md_path.with_name(md_path.stem + "_files")
    rel = {}
    for name, data in figs.items():
        if data is None:
            rel[name] = None
            continue
        with atomic_path(folder / f"{name}.png", suffix=".png") as tmp:
            tmp.write_bytes(data)
        rel[name] = f"{folder.name}/{name}.png"
    return rel


def render_run(inp: RunInputs, html_path, md_path, gallery: list[dict] | None = None,
               val_gallery: list[dict] | None = None) -> dict:
    """Render the run report of one variant. Returns the context (for tests)."""
    kind = inp.dataset.get("kind")
    class_names = inp.dataset.get("class_names", [])
    splits = inp.dataset.get("splits", {})
    n_images = {k: v.get("n_images", 0) for k, v in splits.items()}
    bench = read_benchmarks(inp.benchmark_dirs)
    timing = timing_table(bench, n_images)
    quality = quality_table(inp.evals, inp.config)
    for row in quality:
        if row["key"] == "segmentation" and row["available"]:
            note = segmentation_note(inp.config, inp.seg_info)
            row["note"] = f"{row['note']}; {note}" if row.get("note") else note
    best_key = next((k for _, k in reversed(QUALITY_STAGES) if inp.evals.get(k)), None)
    per_class = per_class_table(inp.evals.get("pseudo_masks") or inp.evals.get(best_key),
                                class_names)
    figs = {"timing": fig_timing(timing), "per_class": fig_per_class(per_class),
            "gallery": gallery_figure(gallery or [], "pseudo", class_names),
            "val_gallery": gallery_figure(val_gallery or [], "pred", class_names),
            "train_log": Path(inp.train_log).read_bytes() if inp.train_log and
            Path(inp.train_log).is_file() else None}
    ctx = {
        "title": f"CLIP-ES run report: {inp.config['dataset']['name']} / {inp.variant}",
        "variant": inp.variant, "dataset": inp.dataset, "kind": kind,
        "prov": provenance(inp.config), "clip": clip_used(inp.config), "timing": timing.to_dict("records"),
        "total_wall": float(timing["wall_s"].sum()) if not timing.empty else None,
        "quality": quality, "paper": paper_table(kind, quality),
        "labels": labels_section(inp.config, inp.evals.get("tags"), class_names),
        "per_class": None if per_class is None else per_class.to_dict("records"),
        "per_class_tables": per_class_tables(inp.evals, class_names),
        "per_class_source": "pseudo masks" if inp.evals.get("pseudo_masks") else best_key,
        "baselines": inp.evals.get("baselines"), "skipped": {k: v.get("skipped", [])
                                                              for k, v in splits.items()},
        "figs": figs,
        "prompts": _prompt_rows(inp.prompts), "template": inp.config.get("text", {}),
    }
    html = _env().get_template("run.html.j2").render(**ctx)
    write_text(html_path, html)
    ctx_md = dict(ctx, figs=_write_figures(figs, Path(md_path)))
    write_text(md_path, _env(markdown=True).get_template("run.md.j2").render(**ctx_md))
    return ctx


def _prompt_rows(path, top: int = 10) -> list[dict] | None:
    """The prompt-selection ranking (least sharp first), top rows and the last one."""
    if not path or not Path(path).is_file():
        return None
    t = pd.read_csv(path, sep="\t")
    rows = t.head(top).to_dict("records")
    if len(t) > top:
        rows.append(t.iloc[-1].to_dict())
    return rows


# timing stages of a run report -> the workflow stage that makes them (variants sharing
# a workflow stage share its time)
TIMING_OWNER = {"CLIP pre-training": "pretrain", "tagging (label-free)": "tags",
                "prompt selection": "prompts",
                "CAMs + CAA": "cams", "CAM evaluation": "cams", "CRF + confidence": "crf",
                "pseudo-mask evaluation": "crf", "segmentation training": "segmentation",
                "segmentation inference": "segmentation",
                "segmentation evaluation": "segmentation"}
TIME_STAGES = ("CAMs + CAA", "CRF + confidence", "segmentation training")


def override_note(overrides: dict | None) -> str:
    """A variant's overrides of the config, as dotted keys: 'cam.mode=reference'."""
    if not overrides:
        return "the config as it is (no overrides)"

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}={json.dumps(v) if not isinstance(v, str) else v}"

    return "; ".join(flat(overrides))


def comparison_frame(runs: dict[str, dict], base: str,
                     owners: dict[str, dict] | None = None) -> pd.DataFrame:
    """runs: variant -> {"evals": {...}, "timing": DataFrame}. One row per variant.

    owners: variant -> {workflow stage: the variant whose run made it}. A stage a variant
    shares is shown as shared, not as its time again, and its total counts only the
    stages it ran itself."""
    owners = owners or {}
    rows = []
    for v, r in runs.items():
        row = {"variant": v, "shared": {}}
        for label, key in QUALITY_STAGES:
            m = miou_of(r["evals"].get(key))
            row[label] = None if m is None else 100 * m
        t = r["timing"]
        own = owners.get(v, {})
        total = 0.0
        for _, tr in t.iterrows():
            owner = own.get(TIMING_OWNER.get(tr["stage"], ""), v)
            if owner == v and pd.notna(tr["wall_s"]):
                total += float(tr["wall_s"])
        for stage in TIME_STAGES:
            sel = t[t["stage"] == stage]["wall_s"]
            owner = own.get(TIMING_OWNER[stage], v)
            if owner != v:
                row[f"{stage} (s)"] = None
                row["shared"][f"{stage} (s)"] = owner
            else:
                row[f"{stage} (s)"] = float(sel.iloc[0]) if len(sel) else None
        row["total (s)"] = total if not t.empty else None
        seeds = seed_summary(r["evals"], r.get("config") or {})
        row["seeds"] = (f"{seeds['mean']:.2f} ± {seeds['std']:.2f} (n={seeds['n']})"
                        if seeds else None)
        rows.append(row)
    df = pd.DataFrame(rows)
    for label, _ in QUALITY_STAGES:
        b = df.loc[df["variant"] == base, label]
        bv = b.iloc[0] if len(b) else None
        df[f"Δ {label}"] = [None if (x is None or bv is None or pd.isna(x) or pd.isna(bv))
                            else x - bv for x in df[label]]
    return df


def per_class_side_by_side(runs: dict[str, dict], class_names: list[str] | None) -> dict | None:
    """Per-class IoU (%) of each variant's best evaluated stage (pseudo masks where they
    exist), one column per variant."""
    cols, table = [], {}
    for v, r in runs.items():
        key = "pseudo_masks" if r["evals"].get("pseudo_masks") else next(
            (k for _, k in reversed(QUALITY_STAGES) if miou_of(r["evals"].get(k)) is not None), None)
        ev = r["evals"].get(key) if key else None
        if miou_of(ev) is None:
            continue
        base = ev["at_chosen"] if "at_chosen" in ev else ev
        if "class_iou" not in base:
            continue
        names = class_names or ev.get("class_names") or []
        cols.append({"variant": v, "stage": dict((k, lbl) for lbl, k in QUALITY_STAGES)[key]})
        for i, iou in base["class_iou"].items():
            name = names[int(i)] if int(i) < len(names) else str(i)
            table.setdefault(name, {})[v] = None if iou is None else 100 * iou
    if not cols:
        return None
    return {"columns": cols, "rows": [{"class": c, **vals} for c, vals in table.items()]}


def paper_side_by_side(kind: str | None, runs: dict[str, dict]) -> list[dict]:
    """The paper's numbers, each variant's number on the same split beside it, and the
    difference."""
    rows = []
    for stage, what, split, split_name, value in PAPER.get(kind or "", []):
        key = dict(QUALITY_STAGES)[stage]
        cells = {}
        for v, r in runs.items():
            ev = r["evals"].get(key)
            same = miou_of(ev) is not None and (split_of(ev) or {}).get("name") == split_name
            cells[v] = {"value": 100 * miou_of(ev) if same else None,
                        "delta": 100 * miou_of(ev) - value if same else None}
        rows.append({"stage": stage, "what": what, "split": split, "paper": value, "cells": cells})
    return rows


def metrics_summary(runs: dict[str, dict]) -> dict:
    """The numbers `dvc metrics diff` compares between commits: per variant, the mIoU (%)
    after each stage, the seeds' mean and spread, and the tags' mAP and F1 (label-free)."""
    out = {}
    for v, r in runs.items():
        row = {}
        for label, key in QUALITY_STAGES:
            m = miou_of(r["evals"].get(key))
            if m is not None:
                row[label] = round(100 * m, 4)
        seeds = seed_summary(r["evals"], r.get("config") or {})
        if seeds:
            row["segmentation (val) mean over seeds"] = round(seeds["mean"], 4)
            row["segmentation (val) std over seeds"] = round(seeds["std"], 4)
        tags = r["evals"].get("tags") or {}
        for k in ("mAP", "F1"):
            if tags.get(k) is not None:
                row[f"tags {k}"] = round(100 * tags[k], 4)
        out[v] = row
    return out


def write_train_curves(logs: dict[str, Path], folder) -> list[Path]:
    """Each variant's training loss (iteration, loss) as <variant>_train_loss.csv in
    ``folder``: the curves `dvc plots diff` draws."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for v, path in logs.items():
        t = pd.read_csv(path)[["iteration", "loss"]]
        out = folder / f"{v}_train_loss.csv"
        write_text(out, t.to_csv(index=False, lineterminator="\n"))
        written.append(out)
    return written


def render_comparison(dataset_name: str, runs: dict[str, dict], base: str, html_path, md_path,
                      notes: dict[str, str] | None = None, owners: dict | None = None,
                      kind: str | None = None, class_names: list[str] | None = None
                      ) -> pd.DataFrame:
    df = comparison_frame(runs, base, owners)
    stages = [label for label, _ in QUALITY_STAGES]
    figs = {"comparison": fig_comparison(df, stages)}
    shared_note = {}
    for r in df.to_dict("records"):
        for col, owner in (r.get("shared") or {}).items():
            shared_note.setdefault(r["variant"], []).append(f"{col[:-4]} from {owner}")
    time_cols = [c for c in df.columns if c.endswith("(s)")]
    grand = None
    if owners and "total (s)" in df:
        grand = float(pd.to_numeric(df["total (s)"], errors="coerce").fillna(0).sum())
    ctx = {"title": f"CLIP-ES variants: {dataset_name}", "base": base,
           "stages": stages, "rows": df.to_dict("records"), "notes": notes or {},
           "shared": {v: "; ".join(n) for v, n in shared_note.items()},
           "time_cols": time_cols, "grand_total": grand, "figs": figs,
           "per_class": per_class_side_by_side(runs, class_names),
           "paper": paper_side_by_side(kind, runs), "variants": list(runs),
           "any_seeds": bool(df["seeds"].notna().any()) if "seeds" in df else False}
    write_text(html_path, _env().get_template("comparison.html.j2").render(**ctx))
    ctx_md = dict(ctx, figs=_write_figures(figs, Path(md_path)))
    write_text(md_path, _env(markdown=True).get_template("comparison.md.j2").render(**ctx_md))
    return df


# -------------------------------------------------------------------------- baselines
def trivial_baselines(samples, n_classes: int) -> dict:
    """mIoU of predictions that need no model: all background, and a centre box (half
    the image) labelled with the image's first class. Shows how much signal there is."""
    from .datasets import load_gt
    from .metrics import ConfusionMatrix

    bg, box = ConfusionMatrix(n_classes), ConfusionMatrix(n_classes)
    for s in samples:
        if s.gt is None:
            continue
        gt = load_gt(s)
        h, w = gt.shape
        bg.update(gt, np.zeros_like(gt))
        pred = np.zeros_like(gt)
        pred[h // 4: h - h // 4, w // 4: w - w // 4] = s.keys[0] + 1
        box.update(gt, pred)
    return {"all background": bg.scores()["mIoU"], "centre box, first label": box.scores()["mIoU"]}
