"""The tables of the reports, built from what :mod:`.data` read: timing per stage, mIoU
after each stage (missing stages reported as missing, never as zeros), the paper's numbers
and the deltas, per-class scores, seeds, and the comparison of variants."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

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


def ignored_pixel_accuracy(crf_labels: dict | None, pseudo: dict | None) -> dict | None:
    """How right the CRF labels are on the pixels CGL ignores, and on those it keeps (%).

    Both evaluations count the valid ground-truth pixels of the same images: the CRF
    labels all of them (pixel accuracy a), the pseudo masks only the confident share c
    (pixel accuracy k over those), so the ignored pixels' accuracy is (a - k c) / (1 - c).
    None when either is missing, they cover other images, or nothing is ignored."""
    if not crf_labels or not pseudo:
        return None
    a, k, c = crf_labels.get("pixel_acc"), pseudo.get("pixel_acc"), pseudo.get("coverage")
    if None in (a, k, c) or not 0 < c < 1 or crf_labels.get("n_images") != pseudo.get("n_images"):
        return None
    inside = (a - k * c) / (1 - c)
    return {"ignored": 100 * (1 - c), "right_ignored": 100 * min(1.0, max(0.0, inside)),
            "right_kept": 100 * k}


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
                cgl = ignored_pixel_accuracy(evals.get("crf_labels"), ev) \
                    if key == "pseudo_masks" else None
                if cgl:
                    row["ignored"] = cgl
                    row["note"] += (f"; the CRF labels are right on {cgl['right_ignored']:.1f}% of "
                                    f"the {cgl['ignored']:.1f}% ignored (CGL) and on "
                                    f"{cgl['right_kept']:.1f}% of the kept")
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
        # text, never None: a column of None and strings reads back as NaN ("nan" shown)
        row["seeds"] = (f"{seeds['mean']:.2f} ± {seeds['std']:.2f} (n={seeds['n']})" if seeds
                        else "" if r["evals"].get("segmentation") else "n/a")
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
