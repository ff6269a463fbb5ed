"""The reports' matplotlib figures (PNG bytes): timing, per-class IoU, the comparison of
variants, the galleries with their legend, and the training curves."""

from __future__ import annotations

import io as _io
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import IGNORE, voc_palette, write_text


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
