#!/usr/bin/env python
"""Demo only: train a tiny CLIP on synthetic image-caption pairs.

The result is an OpenAI-format checkpoint that the CAM stage loads like ViT-B-16.pt. The
pairs are the synthetic dataset's train split (--data) plus --corpus generated ones, or,
with --stream, fresh generated pairs at every step (no --data needed). --npz also writes
the compact data-only copy (zeroed unused token rows, compressed) the repository ships as
config/demo/clip.npz; how that file was made is in config/demo/README.md.

    python scripts/train_clip.py --data results/demo/data/synthetic --out clip.pt --steps 600
    python scripts/train_clip.py --stream --steps 2000 --pool avg --group-loss 1 \\
        --group-scope early+mean --out clip.pt --npz clip.npz
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipes import cli, io, pretrain, synthetic  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    p.add_argument("--data", type=Path, help="synthetic dataset folder (captions.csv); "
                   "required unless --stream")
    p.add_argument("--stream", action="store_true",
                   help="fresh generated pairs at every step instead of a fixed set")
    p.add_argument("--out", required=True, type=Path, help="checkpoint to write")
    p.add_argument("--summary", type=Path, help="JSON summary (steps, seconds, loss)")
    p.add_argument("--npz", type=Path, help="also write the compact data-only copy here")
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
    p.add_argument("--group-loss", type=float, default=d.group_loss,
                   help="weight of the auxiliary loss that teaches the vision tower's attention "
                   "to link patches of similar colour (0: plain CLIP training)")
    p.add_argument("--group-sigma", type=float, default=d.group_sigma,
                   help="colour distance (RGB in [0, 1]) within which that loss links patches")
    p.add_argument("--group-scope", choices=pretrain.GROUP_SCOPES, default=d.group_scope,
                   help="which attention that loss constrains: the mean over blocks and heads "
                   "(mean, as CAA averages it), each block's (block), each block's but the "
                   "last (early), or early plus the mean (early+mean); "
                   "config/demo/README.md gives what each did")
    p.add_argument("--corpus", type=int, default=0,
                   help="extra generated image-caption pairs (another seed) beside the train split")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    a = p.parse_args(argv)
    if a.data is None and not a.stream:
        p.error("--data is required unless --stream: give the synthetic dataset folder "
                "(results/demo/data/synthetic)")
    if a.group_loss < 0 or a.group_sigma <= 0:
        p.error("--group-loss must be 0 or more and --group-sigma more than 0 "
                f"(got {a.group_loss} and {a.group_sigma})")
    return a


def main(argv=None):
    import torch

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = pretrain.TinyClipConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                                  image_size=args.image_size, patch_size=args.patch_size,
                                  vision_layers=args.vision_layers, vision_width=args.vision_width,
                                  pool=args.pool, group_loss=args.group_loss,
                                  group_sigma=args.group_sigma, group_scope=args.group_scope)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if args.stream:
        summary = pretrain.train_tiny_clip(None, None, args.out, cfg, log=log,
                                           stream=synthetic.stream_pairs)
    else:
        caps = synthetic.read_captions(args.data)
        ids = (args.data / "train.txt").read_text().split()
        images = [args.data / "images" / f"{i}.png" for i in ids]
        captions = [caps[i] for i in ids]
        if args.corpus:
            extra_images, extra_captions = synthetic.caption_corpus(args.seed + 10_000, args.corpus)
            images, captions = images + extra_images, captions + extra_captions
        summary = pretrain.train_tiny_clip(images, captions, args.out, cfg, log=log)
    if args.npz:
        from clipes.model import save_npz_state_dict

        state = torch.load(args.out, map_location="cpu", weights_only=True)
        save_npz_state_dict(pretrain.compact_state(state, summary["tokens_seen"]), args.npz)
    summary["tokens_seen"] = len(summary["tokens_seen"])
    if args.summary:
        io.write_json(args.summary, summary)


if __name__ == "__main__":
    cli.run(main, fast_exit=True)
