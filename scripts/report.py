#!/usr/bin/env python
"""Reports: `run` renders one variant's report (HTML + Markdown + a JSON summary);
`compare` renders the comparison of several variants from their summaries.

    python scripts/report.py run --variant base --dataset-json results/demo/data/dataset.json \\
        --config config.json --eval cams=results/demo/base/eval/cams.json ... \\
        --html reports/demo/base.html --md reports/demo/base.md
    python scripts/report.py compare --summary reports/demo/base.json reports/demo/no_crf.json \\
        --html reports/demo/comparison.html --md reports/demo/comparison.md
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipes import cli, io, report  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one variant's report")
    cli.add_dataset_args(r)
    r.add_argument("--variant", required=True, help="the variant's name")
    r.add_argument("--dataset-json", required=True, type=Path,
                   help="dataset.json of the preparation")
    r.add_argument("--config", required=True, type=Path, help="the variant's config (JSON or YAML)")
    r.add_argument("--eval", nargs="*", default=[], metavar="STAGE=JSON",
                   help="metrics files: cams_plain, cams, crf_labels, pseudo_masks, segmentation")
    r.add_argument("--bench-dirs", nargs="*", default=[],
                   help="benchmark folders, each optionally DIR:rule,rule to read only those rules")
    r.add_argument("--train-log", type=Path, help="training loss plot (PNG)")
    r.add_argument("--seg-info", type=Path, help="train_info.json of the segmentation training")
    r.add_argument("--prompts", type=Path, help="prompt-selection table (score_prompts.py)")
    r.add_argument("--cams", nargs="*", type=Path, default=[], help="CAM folders (gallery)")
    r.add_argument("--pseudo", nargs="*", type=Path, default=[], help="pseudo-mask folders (gallery)")
    r.add_argument("--pred", nargs="*", type=Path, default=[],
                   help="prediction folders of the validation split (its gallery)")
    r.add_argument("--val-split", type=Path, help="the validation split file (its gallery)")
    r.add_argument("--gallery", type=int, default=4, help="best and worst images shown")
    r.add_argument("--html", required=True, type=Path, help="HTML report to write")
    r.add_argument("--md", required=True, type=Path, help="Markdown report to write")
    r.add_argument("--summary", type=Path, help="JSON summary for `compare`")
    c = sub.add_parser("compare", help="variants side by side")
    c.add_argument("--summary", nargs="+", required=True, type=Path,
                   help="JSON summary(ies) of run reports")
    c.add_argument("--base", help="variant the deltas are taken against (default: the first)")
    c.add_argument("--variants", help="JSON: variant -> {overrides: the variant's overrides of "
                                      "the config, owners: workflow stage -> the variant that "
                                      "ran it} (the workflow passes it)")
    c.add_argument("--title", default="dataset", help="dataset name shown in the title")
    c.add_argument("--metrics", type=Path,
                   help="JSON of every variant's headline numbers (dvc.yaml's metrics)")
    c.add_argument("--curves", type=Path,
                   help="folder for each variant's training loss CSV (dvc.yaml's plots)")
    c.add_argument("--train-log", nargs="*", default=[], metavar="VARIANT=CSV",
                   help="training logs of the variants that train a network (--curves)")
    c.add_argument("--html", required=True, type=Path, help="HTML report to write")
    c.add_argument("--md", required=True, type=Path, help="Markdown report to write")
    return p.parse_args(argv)


def run(args):
    import yaml

    evals = {}
    for item in args.eval:
        key, _, path = item.partition("=")
        evals[key] = report.load_json(path)
    cfg = yaml.safe_load(args.config.read_text())
    evals = report.stage_evals(evals, cfg)
    ds = cli.dataset_from_args(args)
    evals["baselines"] = report.trivial_baselines(ds.samples, ds.n_classes)
    gallery = report.gallery_items(ds.samples, args.pseudo, args.cams, args.gallery) \
        if args.pseudo and args.cams else []
    val_gallery = []
    if args.pred and args.val_split:
        val = cli.dataset_from_args(argparse.Namespace(**{**vars(args), "split": args.val_split,
                                                          "tags": None}), labels_optional=True)
        val_gallery = report.val_gallery_items(val.samples, args.pred, args.gallery)
    inp = report.RunInputs(args.variant, json.loads(args.dataset_json.read_text()), cfg, evals,
                           args.bench_dirs, args.train_log, args.prompts,
                           report.load_json(args.seg_info) if args.seg_info else None)
    ctx = report.render_run(inp, args.html, args.md, gallery, val_gallery)
    if args.summary:
        io.write_json(args.summary, {"variant": args.variant, "evals": evals,
                                     "timing": ctx["timing"], "dataset": cfg["dataset"]["name"],
                                     "config": {"segmentation": {
                                         "seed": cfg.get("segmentation", {}).get("seed", 0)}},
                                     "kind": inp.dataset.get("kind"),
                                     "class_names": inp.dataset.get("class_names", [])})


def compare(args):
    import pandas as pd

    runs, kind, class_names = {}, None, None
    for path in args.summary:
        s = json.loads(path.read_text())
        runs[s["variant"]] = {"evals": s["evals"], "config": s.get("config", {}), "timing": pd.DataFrame(
            s["timing"], columns=["stage", "wall_s", "cpu_s", "peak_mem_mb", "jobs", "images_per_s"])}
        kind, class_names = s.get("kind", kind), s.get("class_names") or class_names
    info = json.loads(args.variants) if args.variants else {}
    notes = {v: report.override_note(info[v].get("overrides")) for v in runs if v in info}
    owners = {v: info[v].get("owners", {}) for v in runs if v in info}
    base = args.base or next(iter(runs))
    report.render_comparison(args.title, runs, base, args.html, args.md, notes, owners,
                             kind, class_names)
    if args.metrics:
        io.write_json(args.metrics, report.metrics_summary(runs))
    if args.curves:
        logs = dict(item.split("=", 1) for item in args.train_log)
        report.write_train_curves({v: Path(p) for v, p in logs.items()}, args.curves)


def main(argv=None):
    args = parse_args(argv)
    (run if args.cmd == "run" else compare)(args)


if __name__ == "__main__":
    cli.run(main, fast_exit=True)
