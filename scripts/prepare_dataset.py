#!/usr/bin/env python
"""Stage 0: prepare a dataset: generate it (synthetic) or check it and index it.

Writes OUT/dataset.json: the kind, root, class names, the images of each split and the
images left out (empty label lists) with the reason. For custom datasets it also writes
OUT/classes.yaml and OUT/background.txt from the config; for the synthetic dataset it
generates the images under OUT/synthetic/.

    python scripts/prepare_dataset.py --kind voc12 --root data/VOC2012 \\
        --train-split data/VOC2012/ImageSets/Segmentation/train.txt --out results/voc12/data
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipes import cli, datasets, io, sizes, synthetic  # noqa: E402
from clipes import manifest as data_manifest  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    p.add_argument("--kind", required=True, choices=["synthetic", "voc12", "coco14", "custom"],
                   help="dataset kind")
    p.add_argument("--root", type=Path, help="dataset folder (not for synthetic)")
    p.add_argument("--out", required=True, type=Path,
                   help="folder for dataset.json and manifest.tsv (and the synthetic data)")
    p.add_argument("--train-split", type=Path, help="training split file")
    p.add_argument("--val-split", type=Path, help="validation split file")
    p.add_argument("--classes", help="custom: JSON list of classes, or a class-list file")
    p.add_argument("--labels", type=Path, help="custom: CSV image,labels")
    p.add_argument("--background", help="custom: JSON list of words, or a file (default VOC12 set)")
    p.add_argument("--no-reference-quirks", action="store_true", help="fix the reference's quirks in class prompts and labels")
    p.add_argument("--exif", choices=datasets.EXIF_POLICIES, default="ignore",
                   help="EXIF orientation policy of the stages (see --help of cams.py)")
    p.add_argument("--hash-cache", type=Path,
                   help="content-hash cache (clipes.manifest.HashCache): files whose size and "
                        "times match are not read again (the workflow passes its own)")
    p.add_argument("--cam-memory-mb", type=float,
                   help="memory the CAM stage may use: images whose CAMs need more are "
                        "listed and refused here, before any stage runs")
    p.add_argument("--max-side", type=int,
                   help="the CAM stage's cam.max_side (largest over the variants; none: "
                        "images at their own size, as the reference)")
    p.add_argument("--conversion", type=Path,
                   help="convert.json of the conversion from the official downloads, kept "
                        "in dataset.json (what came from where)")
    g = p.add_argument_group("synthetic")
    g.add_argument("--seed", type=int, default=0, help="synthetic: seed of the generated world")
    g.add_argument("--n-train", type=int, default=400, help="synthetic: training images")
    g.add_argument("--n-val", type=int, default=80, help="synthetic: validation images")
    return p.parse_args(argv)


def check_images(ds, split_name, args) -> None:
    """Damaged image files and images too large for the CAM stage, all named at once,
    before any stage runs (a shard would otherwise fail after hours of work)."""
    datasets.check_damaged(ds.samples, f"the {split_name} split",
                           "the split file" if ds.name in ("voc12", "coco14") else "the label table")
    if split_name == "train" and args.cam_memory_mb is not None:
        sizes.check_memory(ds.samples, args.cam_memory_mb, args.max_side)


def exif_turned(ds, policy: str) -> dict:
    """Images whose EXIF orientation turns them, counted (the policy says what happens)."""
    from PIL import Image

    ids = []
    for s in ds.samples:
        if s.image.suffix.lower() in (".jpg", ".jpeg", ".tif", ".tiff", ".webp"):
            with Image.open(s.image) as im:
                if datasets.exif_orientation(im) != 1:
                    ids.append(s.id)
    if ids and policy == "ignore":
        print(f"warning: {len(ids)} image(s) carry an EXIF orientation (first: {ids[0]}); "
              f"they are read as stored (dataset.exif: ignore, the reference). If the masks "
              f"follow the turned images, set dataset.exif: apply", file=sys.stderr)
    return {"count": len(ids), "first": ids[:10], "policy": policy}


def main(argv=None):
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ns = argparse.Namespace(dataset=args.kind, root=args.root, classes=None, labels=args.labels,
                            background=None, no_reference_quirks=args.no_reference_quirks,
                            exif=args.exif)
    if args.kind == "synthetic":
        root = synthetic.generate(args.out / "synthetic", args.seed, args.n_train, args.n_val)
        ns.root, ns.labels = root, root / "labels.csv"
        ns.classes, ns.background = root / "classes.yaml", root / "background.txt"
        splits = {"train": root / "train.txt", "val": root / "val.txt"}
    else:
        splits = {"train": args.train_split, "val": args.val_split}
    if args.kind == "custom":
        if args.classes is None:
            raise datasets.DatasetError("custom datasets need dataset.classes")
        ns.classes, ns.background = args.classes, args.background
    manifest = {"kind": args.kind, "root": str(ns.root), "splits": {}}
    if args.conversion is not None:
        manifest["conversion"] = json.loads(args.conversion.read_text())
    entries = {}
    for name, split in splits.items():
        if split is None and not (name == "train" and args.kind == "custom"):
            continue  # custom train without a split file: every row of the label table
        ns.split = split
        ds = cli.dataset_from_args(ns, labels_optional=True)  # label-free: images only
        check_images(ds, name, args)
        manifest["class_names"] = ds.class_names
        if ds.background_removed and "background_removed" not in manifest:
            manifest["background_removed"] = ds.background_removed
            print(f"warning: background words {ds.background_removed} name a class of the "
                  f"dataset: they are left out of its background set (each would suppress its "
                  f"class)", file=sys.stderr)
        manifest["splits"][name] = {
            "file": str(split), "n_images": len(ds.samples),
            "n_with_gt": sum(s.gt is not None for s in ds.samples),
            "skipped": ds.skipped,
            "exif_turned": exif_turned(ds, args.exif),
        }
        cli.write_skips(None, ds.skipped)
        entries[name] = data_manifest.entries("custom" if args.kind == "synthetic" else args.kind,
                                              ns.root, split, ns.labels)
    if not any(v["n_images"] for v in manifest["splits"].values()):
        raise datasets.DatasetError(
            f"no image of {args.kind} dataset {ns.root} has a label: every label list is empty "
            f"({sum(len(v['skipped']) for v in manifest['splits'].values())} rows skipped); "
            f"give each image at least one class")
    data_manifest.write_manifest(args.out / "manifest.tsv", entries,
                                 data_manifest.HashCache.load(args.hash_cache), ns.root)
    io.write_json(args.out / "dataset.json", manifest)
    print(" ".join(f"{k}: {v['n_images']} images" for k, v in manifest["splits"].items()),
          file=sys.stderr)


if __name__ == "__main__":
    cli.run(main, fast_exit=True)
