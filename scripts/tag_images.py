#!/usr/bin/env python
"""Label-free mode: TagCLIP's tags for every image of a split, from a frozen CLIP.

Writes OUT (the authors' label file: '<id> <class index> ...' per line, 0-based into the
dataset's class list) and, with --scores, the local and final scores of every image
(NPZ). Where the images have labels of their own (VOC XML, COCO split lines, a custom
label table), they only score the tags: --metrics writes TagCLIP's mAP, F1, precision,
recall, per-class AP and how many images' tags differ from the labels.

    python scripts/tag_images.py --dataset voc12 --root data/VOC2012 \\
        --split data/VOC2012/ImageSets/Segmentation/train_aug.txt \\
        --checkpoint ViT-B-16.pt --out tags.txt --metrics tags.json
    python scripts/tag_images.py --dataset custom --root my_images --classes classes.txt \\
        --checkpoint ViT-B-16.pt --out tags.txt
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipes import cli, datasets, io, tagclip  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    cli.add_dataset_args(p)
    cli.add_model_args(p)
    p.add_argument("--out", required=True, type=Path, help="the tags, in the authors' format")
    p.add_argument("--scores", type=Path, help="NPZ of ids and local and final scores")
    p.add_argument("--metrics", type=Path,
                   help="JSON of mAP, F1, P, R against the images' own labels (where they have them)")
    p.add_argument("--tag-background", choices=["voc", "coco"],
                   help="TagCLIP's background words: its VOC list or its COCO list (default: voc "
                        "for voc12, coco otherwise, as the original)")
    p.add_argument("--tag-mode", choices=tagclip.MODES, default="reference",
                   help="reference: one crop at a time as the original; batched: an image's "
                        "crops in one pass (the same numbers to float rounding)")
    p.add_argument("--shard", default="0/1", help="I/N: every N-th image from the I-th")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    ds = cli.dataset_from_args(args, labels_optional=True)
    samples = datasets.shard(ds.samples, *cli.parse_shard(args.shard))
    datasets.check_damaged(samples, f"shard {args.shard}", "the split or label table")
    if len(ds.classes) < 2:
        raise datasets.DatasetError(
            f"the class list has {len(ds.classes)} class: TagCLIP tags an image with the classes "
            f"above the middle of its score range, which needs at least two classes; with one "
            f"class, label every image with it (no tagging needed)")
    clip = cli.load_model(args)
    tagclip.check_model(clip)
    device = cli.resolve_device(args.device)
    names = [c.name for c in ds.classes]
    bg = tagclip.BACKGROUND[args.tag_background or ("voc" if args.dataset == "voc12" else "coco")]
    t0 = time.perf_counter()
    text = tagclip.text_features(clip, names + list(bg), device=device)
    engine = tagclip.TagEngine(clip, text, len(names), device, mode=args.tag_mode)
    print(f"text features: {time.perf_counter() - t0:.1f} s ({len(names)} classes, {len(bg)} "
          f"background words, {len(tagclip.TAG_TEMPLATES)} templates)", file=sys.stderr)
    import numpy as np

    from clipes import cam

    ids, tags, local, final, fallback = [], [], [], [], []
    t1, every = time.perf_counter(), max(1, len(samples) // 20)
    for n, s in enumerate(samples, start=1):
        size = tagclip.input_size(s.orig_hw)
        with datasets.open_image(s.image) as im:
            r = engine.classify(cam.preprocess(im, size))
        if np.all(r.final_score == r.final_score[0]):  # e.g. one patch high: nothing scored
            fallback.append(s.id)
        ids.append(s.id)
        tags.append(r.tags)
        local.append(r.local_score)
        final.append(r.final_score)
        if n % every == 0 or n == len(samples):
            rate = n / (time.perf_counter() - t1)
            print(f"tags {n}/{len(samples)}: {rate:.2f} images/s, eta "
                  f"{(len(samples) - n) / rate:.0f} s", file=sys.stderr, flush=True)
    seconds = (time.perf_counter() - t1) / max(1, len(samples))
    tagclip.write_tags(args.out, ids, tags)
    if args.scores:
        import io as _io

        buf = _io.BytesIO()
        np.savez(buf, ids=np.array(ids), local=np.array(local, np.float32).reshape(len(ids), -1),
                 final=np.array(final, np.float32).reshape(len(ids), -1))
        with io.atomic_path(args.scores, suffix=".npz") as tmp:
            tmp.write_bytes(buf.getvalue())
    if args.metrics:
        labelled = [i for i, s in enumerate(samples) if s.keys]
        res = {"n_images": len(ids), "seconds_per_image": seconds, "class_names": names,
               "background": list(bg), "mode": args.tag_mode, "fallback_ids": fallback}
        if labelled:
            gt = np.zeros((len(labelled), len(names)), bool)
            for row, i in enumerate(labelled):
                gt[row, list(samples[i].keys)] = True
            m = tagclip.tag_metrics(np.stack([final[i] for i in labelled]), gt,
                                    [tags[i] for i in labelled])
            res.update(m, n_scored=len(labelled))
            print(f"tags against the images' labels: mAP {100 * m['mAP']:.2f}, F1 "
                  f"{100 * m['F1']:.2f} ({m['n_differ']} of {len(labelled)} images differ)",
                  file=sys.stderr)
        else:
            res["note"] = "no image-level labels to score the tags against"
        io.write_json(args.metrics, res)
    if fallback:
        print(f"warning: {len(fallback)} image(s) got equal scores for every class (e.g. "
              f"{fallback[0]}: an image one 16-pixel patch high or wide has no region to "
              f"score): tagged with the first class, as the original does", file=sys.stderr)
    print(f"tags of {len(ids)} images in {args.out} ({seconds:.2f} s/image)", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main, fast_exit=True)
