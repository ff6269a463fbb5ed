#!/usr/bin/env python
"""Demo only: train a tiny CLIP on the synthetic dataset's captions (train split).

The result is an OpenAI-format checkpoint that the CAM stage loads like ViT-B-16.pt.

    python scripts/train_clip.py --data results/demo/data/synthetic --out clip.pt --steps 600
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipes import cli, io, pretrain, synthetic  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="synthetic dataset folder (captions.csv)")
    p.add_argument("--out", required=True, type=Path, help="checkpoint to write")
    p.add_argument("--summary", type=Path, help="JSON summary (steps, seconds, loss)")
    d = pretrain.TinyClipConfig()
    helps = {"steps": "training steps", "batch_size": "image-caption pairs per step",
             "seed": "seed of the initialisation and the batches",
             "image_size": "input size of the vision tower", "patch_size": "its patch size",
             "vision_layers": "its transformer blocks", "vision_width": "its width"}
    for name, text in helps.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name),
                       help=text)
    p.add_argument("--pool", choices=["tok", "avg"], default=d.pool,
                   help="image embedding in training: CLS token (tok) or patch mean (avg)")
    p.add_argument("--corpus", type=int, default=0,
                   help="extra generated image-caption pairs (another seed) beside the train split")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    return p.parse_args(argv)


def main(argv=None):
    import torch

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    caps = synthetic.read_captions(args.data)
    ids = (args.data / "train.txt").read_text().split()
    cfg = pretrain.TinyClipConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                                  image_size=args.image_size, patch_size=args.patch_size,
                                  vision_layers=args.vision_layers, vision_width=args.vision_width,
                                  pool=args.pool)
    images = [args.data / "images" / f"{i}.png" for i in ids]
    captions = [caps[i] for i in ids]
    if args.corpus:
        extra_images, extra_captions = synthetic.caption_corpus(args.seed + 10_000, args.corpus)
        images, captions = images + extra_images, captions + extra_captions
    summary = pretrain.train_tiny_clip(images, captions, args.out, cfg,
                                       log=lambda m: print(m, file=sys.stderr))
    if args.summary:
        io.write_json(args.summary, summary)


if __name__ == "__main__":
    cli.run(main, fast_exit=True)
