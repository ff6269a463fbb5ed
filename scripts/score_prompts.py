#!/usr/bin/env python
"""Stage 1: sharpness-based prompt selection. Ranks candidate templates on labelled images.

For each template, plain CLIP classifies the images zero-shot (softmax over all
foreground classes); an image's scores at its ground-truth classes are dispersed by
var/mean; the template's sharpness is the sum over images. The least sharp template is
selected. Writes a TSV (template, sharpness, n_multilabel, rank, selected).

    python scripts/score_prompts.py --dataset voc12 --root data/VOC2012 --split train.txt \\
        --checkpoint ViT-B-16.pt --candidates imagenet --out results/prompts.tsv
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipes import cli, io, text  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    cli.add_dataset_args(p)
    cli.add_model_args(p)
    p.add_argument("--candidates", nargs="+", default=["imagenet"],
                   help="'imagenet' (CLIP's 80 templates), templates, or a file with one per line")
    p.add_argument("--synonym-fusion", choices=["sentence", "average"], default="sentence",
                   help="sentence (reference) or averaged synonym embeddings")
    p.add_argument("--max-images", type=int, default=1000, help="images scored (first N of the split)")
    p.add_argument("--out", required=True, type=Path, help="TSV table")
    return p.parse_args(argv)


def candidate_templates(items) -> list[str]:
    out = []
    for item in items:
        if item == "imagenet":
            out += list(text.IMAGENET_TEMPLATES)
        elif "{}" not in item and Path(item).is_file():
            out += [ln.strip() for ln in Path(item).read_text().splitlines() if ln.strip()]
        else:
            out.append(item)
    return list(dict.fromkeys(out))


def main(argv=None):
    import numpy as np
    import torch
    from PIL import Image

    from clipes.cam import CLIP_MEAN, CLIP_STD
    from clipes.datasets import open_image

    args = parse_args(argv)
    ds = cli.dataset_from_args(args)
    clip = cli.load_model(args)
    device = cli.resolve_device(args.device)
    size = clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    samples = ds.samples[: args.max_images]
    feats = []
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    with torch.no_grad():
        for s in samples:  # plain CLIP: square resize, CLS-pooled image embedding
            with open_image(s.image) as im:
                rgb = np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), np.float32)
            x = torch.from_numpy(rgb / 255)
            x = ((x.permute(2, 0, 1) - mean) / std)[None].to(device)
            feats.append(clip.model.encode_image(x).float().cpu())
    table = text.score_templates(clip.model, clip.tokenizer, ds.classes,
                                 candidate_templates(args.candidates), torch.cat(feats),
                                 [list(s.keys) for s in samples], args.synonym_fusion, device)
    io.write_text(args.out, table.to_csv(sep="\t", index=False))
    best = table.iloc[0]
    print(f"selected {best['template']!r} (sharpness {best['sharpness']:.4f}) of {len(table)} "
          f"templates on {len(samples)} images", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main, fast_exit=True)
