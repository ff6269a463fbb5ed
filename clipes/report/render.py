"""Rendering the run and comparison reports with the Jinja templates (``templates/``) to
self-contained HTML (figures embedded, every value escaped) and Markdown (figures beside it,
values escaped for Markdown)."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_path, write_text
from .data import RunInputs, prompt_rows, read_benchmarks
from .figures import fig_comparison, fig_per_class, fig_timing, gallery_figure
from .provenance import clip_used, provenance
from .tables import (
    QUALITY_STAGES,
    comparison_frame,
    labels_section,
    paper_side_by_side,
    paper_table,
    per_class_side_by_side,
    per_class_table,
    per_class_tables,
    quality_table,
    segmentation_note,
    timing_table,
)


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

    env = Environment(loader=PackageLoader("clipes.report", "templates"), undefined=StrictUndefined,
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
        "prompts": prompt_rows(inp.prompts), "template": inp.config.get("text", {}),
    }
    html = _env().get_template("run.html.j2").render(**ctx)
    write_text(html_path, html)
    ctx_md = dict(ctx, figs=_write_figures(figs, Path(md_path)))
    write_text(md_path, _env(markdown=True).get_template("run.md.j2").render(**ctx_md))
    return ctx


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
