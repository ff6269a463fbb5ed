#!/usr/bin/env python
"""Stage 2+3: softmax-GradCAM + CAA refined CAMs, one OUT/<id>.npz per image.

Each archive holds ``keys`` (int64, class indices in label order) and the refined maps,
by default on the model's patch grid (``--store grid``: a few KB per image) or at the image
size (``--store full``: float16, the reference's ``attn_highres``). clipes.camstore reads
both to the same float16 maps; ``scripts/export_cams.py`` writes the authors' .npy files.

Example (the paper's setting on VOC12 train):
    python scripts/cams.py --dataset voc12 --root data/VOC2012 \\
        --split data/VOC2012/ImageSets/Segmentation/train.txt \\
        --checkpoint ViT-B-16.pt --out results/cams
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipes import affinity, cam, camstore, cli, datasets, io, text  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    cli.add_dataset_args(p)
    cli.add_model_args(p)
    p.add_argument("--out", required=True, type=Path, help="output folder for <id>.npz")
    g = p.add_argument_group("method")
    g.add_argument("--mode", choices=cam.MODES, default="reference",
                   help="reference: one backward per class as the authors; batched: all classes "
                        "(and several images of one size) in one pass. Same numbers.")
    g.add_argument("--template", default=text.REFERENCE_TEMPLATE, help="prompt template")
    g.add_argument("--text-context", choices=text.CONTEXTS, default="full",
                   help="full (reference): the text tower over all 77 positions; trimmed: up "
                        "to the longest prompt's end token (features within ~2e-7, 4-5x faster)")
    g.add_argument("--synonym-fusion", choices=["sentence", "average"], default="sentence",
                   help="sentence (reference) or averaged synonym embeddings")
    g.add_argument("--box-threshold", type=float,
                   help="CAA box threshold (default 0.4 VOC/custom, 0.7 COCO)")
    g.add_argument("--no-caa", action="store_true", help="ablation: plain softmax-GradCAM")
    g.add_argument("--no-background", action="store_true", help="ablation: no background texts")
    g.add_argument("--no-softmax", action="store_true", help="ablation: Grad-CAM of the logit")
    g.add_argument("--no-box-border-clip", action="store_true",
                   help="improvement: boxes may include the last patch row/column")
    g.add_argument("--batch-size", type=int, default=1,
                   help="batched: images of one size per pass (>1 pays off on GPUs)")
    g.add_argument("--resize", choices=cam.RESIZES, default="pil",
                   help="input resize: pil (the reference, PIL's bicubic) or torch (torch's "
                        "antialiased bicubic on uint8, about 4x faster on a CPU core, a level "
                        "or two apart on about 1%% of the pixel values)")
    g.add_argument("--max-side", type=int,
                   help="scale images whose long side exceeds this down to it before the "
                        "model (default: every image at its own size, the reference); CAMs "
                        "are still written at the image size")
    g.add_argument("--autocast", choices=["fp16", "bf16"], help="CUDA mixed precision")
    g.add_argument("--autocast-scope", choices=list(cam.AUTOCAST_SCOPES), default="all",
                   help="all: every block and the Grad-CAM backward in reduced precision; "
                        "trunk: the last block (what Grad-CAM reads) in fp32")
    g.add_argument("--no-fast-grad", action="store_true",
                   help="batched: use autograd instead of the hand-written Grad-CAM backward")
    r = p.add_argument_group("run")
    r.add_argument("--shard", default="0/1", help="I/N: process every N-th image from the I-th")
    r.add_argument("--resume", action="store_true", help="keep archives that already exist")
    r.add_argument("--loaders", type=int, default=0,
                   help="DataLoader worker processes decoding the next images while the "
                        "model runs (default 0: decoded in this process)")
    r.add_argument("--store", choices=camstore.STORES, default=camstore.STORE_GRID,
                   help="archive layout: grid (the maps on the patch grid, resized when read; "
                        "about 7 KB per VOC image) or full (float16 maps at the image size, "
                        "about 585 KB); readers get the same bits from either")
    r.add_argument("--no-compress", action="store_true",
                   help="write plain .npz archives (read the same way)")
    r.add_argument("--memory-mb", type=float,
                   help="memory this run may use: images whose CAMs need more are refused up "
                        "front, naming them (the workflow passes the rule's mem_mb)")
    r.add_argument("--keep-plain", action="store_true",
                   help="also store the Grad-CAM before CAA (cams_plain) for the 'initial CAM' mIoU")
    r.add_argument("--template-table", type=Path,
                   help="prompt-selection table (score_prompts.py): use its selected template")
    r.add_argument("--dump-intermediates", action="store_true",
                   help="also store the intermediate arrays (dbg_* keys) in each archive")
    r.add_argument("--skips", type=Path, help="JSON file recording skipped images")
    r.add_argument("--records", type=Path, help="TSV of per-image timings (written last)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    ds = cli.dataset_from_args(args)
    cli.write_skips(args.skips, ds.skipped)
    samples = datasets.shard(ds.samples, *cli.parse_shard(args.shard))
    datasets.check_damaged(samples, f"shard {args.shard}", "the split or label table")
    if args.memory_mb is not None:
        cam.check_memory(samples, args.memory_mb, args.max_side)
    clip = cli.load_model(args)
    device = cli.resolve_device(args.device)
    template = args.template
    if args.template_table is not None:
        template = text.selected_template(args.template_table)
        print(f"template from prompt selection: {template!r}", file=sys.stderr)
    fg, bg = text.dataset_text_features(clip, ds.classes, ds.background, template,
                                        args.synonym_fusion, device, context=args.text_context)
    cfg = cam.CamConfig(
        mode=args.mode,
        box_threshold=args.box_threshold or affinity.BOX_THRESHOLD.get(args.dataset, 0.4),
        use_caa=not args.no_caa, use_background=not args.no_background,
        use_softmax=not args.no_softmax, clip_box_border=not args.no_box_border_clip,
        batch_size=args.batch_size, autocast=args.autocast,
        autocast_scope=args.autocast_scope, dump=args.dump_intermediates,
        keep_plain=args.keep_plain, fast_grad=not args.no_fast_grad,
        max_side=args.max_side)
    engine = cam.CamEngine(clip, fg, bg, cfg, device)
    records = cam.run_dataset(engine, samples, args.out, resume=args.resume,
                              dump=args.dump_intermediates, loaders=args.loaders,
                              store=args.store, compress=not args.no_compress,
                              resize=args.resize)
    if args.records:  # the standard library: pandas would cost a second of start-up
        import csv
        import io as _io

        buf = _io.StringIO()
        w = csv.writer(buf, delimiter="\t", lineterminator="\n")
        cols = ["id", "seconds", "decode_s", "write_s", "n_classes", "reused"]
        w.writerow(cols)
        w.writerows([r[c] for c in cols] for r in records)
        io.write_text(args.records, buf.getvalue())


if __name__ == "__main__":
    cli.run(main, fast_exit=True)
