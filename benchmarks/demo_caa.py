#!/usr/bin/env python
"""Benchmark: what CAA's refinement can gain on the demo's world, and with which affinity.

Runs the demo's tiny CLIP (config/demo/clip.npz) on N generated demo images (the demo's
generator and seed) in reference mode, keeps each image's Grad-CAM on the patch grid, its
box masks and every block's attention, and evaluates (mIoU %, the better background power
of 1 and 2, as the CAM evaluation does):

- the initial CAM (no CAA), and CAA with the attention of all blocks (what the stage
  does on a 4-block tower), of the last 1-3 blocks, of the first 1-2;
- CAA's mechanism (box mask, Sinkhorn, symmetrise, square, refine, min-max) with
  affinities that no CLIP gives: patch-colour similarity, ground-truth segments (the
  background one segment), ground-truth objects only (background linked to nothing);
- the ground truth pooled on the patch grid: the ceiling of any map on that grid.

If even the ground-truth affinities do not beat the initial CAM, the world gives CAA
nothing to complete, whatever the CLIP's attention.

    python benchmarks/demo_caa.py --images 60
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    from clipes.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--images", type=int, default=60, help="demo training images to use")
    p.add_argument("--checkpoint", type=Path, default=REPO / "config" / "demo" / "clip.npz",
                   help="the CLIP (default: the demo's)")
    p.add_argument("--seed", type=int, default=0, help="the demo world's seed")
    p.add_argument("--workdir", type=Path, help="keep the generated images here")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import tempfile

    import numpy as np
    import torch
    from PIL import Image

    from clipes import affinity, cam, camstore, datasets, metrics, synthetic, text
    from clipes.crf import cam_labels
    from clipes.model import load_clip

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="clipes-demo-caa-")
        args.workdir = Path(tmp.name)
    data = args.workdir / "synthetic"
    if not (data / "train.txt").is_file():
        synthetic.generate(data, seed=args.seed, n_train=args.images, n_val=1)
    # the demo's background words (the workflow passes the dataset's background.txt)
    ds = datasets.load("synthetic", data, data / "train.txt", classes=list(synthetic.CLASSES),
                       labels_csv=data / "labels.csv", background=list(synthetic.BACKGROUNDS))
    samples = ds.samples[:args.images]
    clip = load_clip(checkpoint=args.checkpoint)
    fg, bg = text.dataset_text_features(clip, ds.classes, ds.background, "a photo of a {}.")
    engine = cam.CamEngine(clip, fg, bg, cam.CamConfig(mode="reference", dump=True,
                                                       dump_deep=True, box_threshold=0.4))
    patch = engine.tower.patch
    recs = []
    for s in samples:
        h, w = cam.input_size(s.orig_hw)
        with datasets.open_image(s.image) as im:
            x = cam.preprocess(im, (h, w))
            rgb = np.asarray(im.convert("RGB").resize((w, h), Image.BICUBIC), np.float32) / 255
        e = engine.run([x], [np.asarray(s.keys)], [s.orig_hw])[0].extras
        gh, gw = h // patch, w // patch
        gt = datasets.load_gt(s, s.orig_hw, ds.n_classes).astype(np.uint8)
        gt = np.asarray(Image.fromarray(gt).resize((w, h), Image.NEAREST)).astype(np.int64)
        cells = gt[:gh * patch, :gw * patch].reshape(gh, patch, gw, patch).transpose(0, 2, 1, 3)
        cells = cells.reshape(gh * gw, -1)
        seg = np.array([np.bincount(c[c < 255], minlength=ds.n_classes).argmax()
                        if (c < 255).any() else 0 for c in cells])  # majority label per patch
        colour = rgb[:gh * patch, :gw * patch].reshape(gh, patch, gw, patch, 3).mean((1, 3))
        recs.append({"s": s, "keys": np.asarray(s.keys), "cam": e["grayscale_cam"],
                     "attn": torch.as_tensor(e["attn_layers"]).float(),
                     "mask": e["box_mask"], "seg": seg, "cells": cells,
                     "colour": torch.as_tensor(colour.reshape(-1, 3))})

    def miou(maps_of):
        cms = {p: metrics.ConfusionMatrix(ds.n_classes) for p in (1, 2)}
        for r in recs:
            full = camstore.full_maps(maps_of(r), r["s"].orig_hw)
            gt = datasets.load_gt(r["s"], full.shape[1:], ds.n_classes)
            for p in cms:
                cms[p].update(gt, cam_labels(r["keys"], full, p))
        return max(100 * cm.scores()["mIoU"] for cm in cms.values())

    def caa_with(affinity_of):
        def maps(r):
            t = affinity.transition_matrix(affinity_of(r))  # CAA's, 3 Sinkhorn rounds
            c = torch.as_tensor(r["cam"]).float()
            refined = affinity.refine(t, torch.as_tensor(r["mask"]).float(), c)
            return cam.minmax_norm(refined).numpy()
        return maps

    n_blocks = recs[0]["attn"].shape[0]
    blocks = {f"all {n_blocks} blocks (what the stage uses)": list(range(n_blocks)),
              "the last block": [n_blocks - 1],
              "the last 2 blocks": list(range(n_blocks - 2, n_blocks)),
              "the last 3 blocks": list(range(n_blocks - 3, n_blocks)),
              "the first block": [0], "the first 2 blocks": [0, 1]}
    rows = [("initial CAM (no CAA)", miou(lambda r: np.asarray(r["cam"])))]
    for name, idx in blocks.items():
        rows.append((f"CAA, CLIP attention of {name}",
                     miou(caa_with(lambda r, idx=idx: r["attn"][idx].mean(0)[1:, 1:]))))

    def colour_affinity(r, sigma=0.05):
        c = r["colour"]
        return torch.exp(-((c[:, None] - c[None]) ** 2).sum(-1) / sigma ** 2)

    def segment_affinity(r, objects_only=False):
        seg = torch.as_tensor(r["seg"])
        same = seg[:, None] == seg[None]
        if objects_only:
            same &= seg[:, None] > 0
        return same.float() + torch.eye(len(seg)) + 1e-3

    rows.append(("CAA, patch-colour affinity (no CLIP)", miou(caa_with(colour_affinity))))
    rows.append(("CAA, ground-truth segments as affinity",
                 miou(caa_with(segment_affinity))))
    rows.append(("CAA, ground-truth objects as affinity, background linked to nothing",
                 miou(caa_with(lambda r: segment_affinity(r, objects_only=True)))))

    def grid_truth(r):
        return np.stack([(r["cells"] == k + 1).mean(1).reshape(r["cam"].shape[1:])
                         for k in r["keys"]]).astype(np.float32)
    rows.append(("ground truth pooled on the patch grid (ceiling)", miou(grid_truth)))
    print(f"{len(recs)} demo images (seed {args.seed}), CLIP {args.checkpoint.name}, "
          f"{n_blocks}-block tower, patch {patch}\n")
    print("| maps | mIoU % |\n|---|---|")
    for name, v in rows:
        print(f"| {name} | {v:.2f} |")
    if tmp is not None:
        tmp.cleanup()
    return dict(rows)


if __name__ == "__main__":
    main()
