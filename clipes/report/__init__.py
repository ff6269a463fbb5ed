"""Run and comparison reports: Jinja templates rendered to self-contained HTML and Markdown.

A run report (one dataset and variant) answers: how good are the masks after each stage,
where did the time go, and what do the masks look like. A comparison report puts the
variants of a dataset side by side. Missing inputs (a stage switched off) are reported in
place as missing, never as zeros.

- :mod:`.data`: what the reports read from the results folders (gathering);
- :mod:`.tables`: the tables built from it (quality, timing, paper numbers, per class,
  seeds, variants side by side);
- :mod:`.figures`: the matplotlib figures;
- :mod:`.provenance`: commit, config hash, versions, machine, the CLIP that ran;
- :mod:`.render`: the templates (``templates/``) rendered to HTML and Markdown.

The names below are the interface ``scripts/report.py`` and the tests use.
"""

from .data import (RunInputs, gallery_items, load_json, read_benchmarks, stage_evals,
                   trivial_baselines, val_gallery_items)
from .figures import write_train_curves
from .provenance import clip_used, machine_description, provenance
from .render import md_block, md_code, md_escape, render_comparison, render_run
from .tables import metrics_summary, override_note, quality_table, seed_summary

__all__ = [
    "RunInputs", "clip_used", "gallery_items", "load_json", "machine_description", "md_block",
    "md_code", "md_escape", "metrics_summary", "override_note", "provenance", "quality_table",
    "read_benchmarks", "render_comparison", "render_run", "seed_summary", "stage_evals",
    "trivial_baselines", "val_gallery_items", "write_train_curves",
]
