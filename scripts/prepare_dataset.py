#!/usr/bin/env python
"""Stage 0: prepare a dataset: generate it (synthetic) or check it and index it.

Writes OUT/dataset.json: the kind, root, class names, the images of each split and the
images left out (empty label lists) with the reason. For custom datasets it also writes
OUT/classes.yaml and OUT/background.txt from the config; for the synthetic dataset it
generates the images under OUT/synthetic/.

    python scripts/prepare_dataset.py --kind voc12 --root data/VOC2012 \
        --train-split data/VOC2012/ImageSets/Segmentation/train.txt --out results/voc12/data
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipes import cli, datasets, io, synthetic  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", required=True, choices=["synthetic", "voc12", "coco14", "custom"])
    p.add_argument("--root", type=Path, help="dataset folder (not for synthetic)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--train-split", type=Path)
    p.add_argument("--val-split", type=Path)
    p.add_argument("--classes", help="custom: JSON list of classes, or a class-list file")
    p.add_argument("--labels", type=Path, help="custom: CSV image,labels")
    p.add_argument("--background", help="custom: JSON list of words, or a file (default VOC12 set)")
    p.add_argument("--no-reference-quirks", action="store_true")
    p.add_argument("--conversion", type=Path,
                   help="convert.json of the conversion from the official downloads, kept "
                        "in dataset.json (what came from where)")
    g = p.add_argument_group("synthetic")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--n-train", type=int, default=400)
    g.add_argument("--n-val", type=int, default=80)
    return p.parse_args(argv)


def _json_or_file(value, what):
    if value is None:
        return None
    if Path(value).is_file():
        return Path(value)
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise datasets.DatasetError(f"{what}: {value!r} is neither a file nor a JSON list") from None


def main(argv=None):
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ns = argparse.Namespace(dataset=args.kind, root=args.root, classes=None, labels=args.labels,
                            background=None, no_reference_quirks=args.no_reference_quirks)
    if args.kind == "synthetic":
        root = synthetic.generate(args.out / "synthetic", args.seed, args.n_train, args.n_val)
        ns.root, ns.labels = root, root / "labels.csv"
        ns.classes, ns.background = root / "classes.yaml", root / "background.txt"
        splits = {"train": root / "train.txt", "val": root / "val.txt"}
    else:
        splits = {"train": args.train_split, "val": args.val_split}
    if args.kind == "custom":
        classes = _json_or_file(args.classes, "--classes")
        if classes is None:
            raise datasets.DatasetError("custom datasets need dataset.classes")
        if isinstance(classes, Path):
            classes = cli.read_class_list(classes)
        import yaml

        io.write_text(args.out / "classes.yaml", yaml.safe_dump(classes, sort_keys=False))
        bg = _json_or_file(args.background, "--background")
        if isinstance(bg, Path):
            bg = [w.strip() for w in bg.read_text().splitlines() if w.strip()]
        from clipes.text import VOC12_BACKGROUND

        io.write_text(args.out / "background.txt", "\n".join(bg or VOC12_BACKGROUND) + "\n")
        ns.classes, ns.background = args.out / "classes.yaml", args.out / "background.txt"
    manifest = {"kind": args.kind, "root": str(ns.root), "splits": {}}
    if args.conversion is not None:
        manifest["conversion"] = json.loads(args.conversion.read_text())
    for name, split in splits.items():
        if split is None and not (name == "train" and args.kind == "custom"):
            continue  # custom train without a split file: every row of the label table
        ns.split = split
        ds = cli.dataset_from_args(ns, need_gt=(name == "val"))
        manifest["class_names"] = ds.class_names
        manifest["splits"][name] = {
            "file": str(split), "n_images": len(ds.samples),
            "n_with_gt": sum(s.gt is not None for s in ds.samples),
            "skipped": ds.skipped,
        }
        cli.write_skips(None, ds.skipped)
    io.write_json(args.out / "dataset.json", manifest)
    print(" ".join(f"{k}: {v['n_images']} images" for k, v in manifest["splits"].items()),
          file=sys.stderr)


if __name__ == "__main__":
    cli.run(main)
