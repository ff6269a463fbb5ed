#!/usr/bin/env python
"""Benchmark: DeepLabV2 training iterations per second and peak memory, for both
segmentation protocols, and how fast the real data loader makes batches.

Random images and masks for the model step (no data, no download): ResNet-101, crop 321,
batch 10 by default. The deeplab-pytorch protocol (the paper's) runs MSC (three scales,
four losses) with its batch as iter_size sub-batches (default 5 x 2); the torchvision
protocol one single-scale batch. A few iterations on the CPU; on CUDA with mixed precision as
training uses it. ``--loader N`` also writes N generated 500x375 JPEGs with masks and times
the training data loader (decoding and augmentation in ``--workers`` processes) alone.

    python benchmarks/segmentation.py --iterations 3 --device cpu
    python benchmarks/segmentation.py --iterations 50 --device cuda --loader 200 --workers 8
"""

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def model_step(args, protocol, device):
    import torch

    from clipes.segmentation import deeplab
    from clipes import segmentation as seg

    torch.manual_seed(0)
    amp = device.type == "cuda" and not args.no_amp
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    if protocol == "deeplab-pytorch":
        model = deeplab.build(args.classes, args.backbone).to(device)
        model.train()
        model.base.freeze_bn()
        opt = torch.optim.SGD(deeplab.param_groups(model, 2.5e-4, 5e-4), lr=2.5e-4, momentum=0.9)
        sub = args.batch_size // args.iter_size
    else:
        model = seg.DeepLabV2(args.classes, args.backbone).to(device)
        seg.freeze_bn(model)
        opt = torch.optim.SGD(model.param_groups(2.5e-4, 5e-4), lr=2.5e-4, momentum=0.9)
        sub = args.batch_size
    n_sub = args.batch_size // sub
    x = torch.randn(sub, 3, args.crop, args.crop, device=device)
    y = torch.randint(0, args.classes, (sub, args.crop, args.crop), device=device)
    y[:, :20] = 255

    def step():
        opt.zero_grad(set_to_none=True)
        for _ in range(n_sub):
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                out = model(x)
            if protocol == "deeplab-pytorch":
                loss, _ = deeplab.msc_loss([o.float() for o in out], y)
            else:
                loss = seg.cgl_loss(out.float(), y)
            scaler.scale(loss / n_sub).backward()
        scaler.step(opt)
        scaler.update()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.iterations):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return (time.perf_counter() - t0) / args.iterations, peak, f"{n_sub} x {sub}"


def loader_rate(args, protocol) -> float:
    """Batches per second of the training data loader on generated JPEGs."""
    import numpy as np
    from PIL import Image

    from clipes import segmentation as seg

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        items = []
        for i in range(args.loader):
            img = rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)
            lab = rng.integers(0, args.classes, (375, 500), dtype=np.uint8)
            Image.fromarray(img).save(tmp / f"{i}.jpg", quality=90)
            Image.fromarray(lab).save(tmp / f"{i}.png")
            items.append(seg.TrainItem(tmp / f"{i}.jpg", tmp / f"{i}.png"))
        cfg = seg.TrainConfig(n_classes=args.classes, protocol=protocol, crop=args.crop,
                              batch_size=args.batch_size // args.iter_size if protocol ==
                              "deeplab-pytorch" else args.batch_size,
                              iter_size=args.iter_size if protocol == "deeplab-pytorch" else 1,
                              iterations=args.iterations + 4, workers=args.workers)
        stream = seg.batch_stream(seg.TrainData(items), cfg, 0)
        next(stream)  # workers started
        t0 = time.perf_counter()
        for _ in range(args.iterations + 3):
            next(stream)
        return (args.iterations + 3) / (time.perf_counter() - t0)


def main():
    from clipes.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--protocol", default="both", choices=["both", "deeplab-pytorch", "torchvision"],
                   help="segmentation protocol(s) to time")
    p.add_argument("--backbone", default="resnet101", choices=["resnet101", "resnet50", "tiny"],
                   help="ResNet depth (tiny: a few blocks)")
    p.add_argument("--crop", type=int, default=321, help="crop size")
    p.add_argument("--batch-size", type=int, default=10, help="images per iteration")
    p.add_argument("--iter-size", type=int, default=2,
                   help="deeplab-pytorch: sub-batches per iteration (batch 10 = 5 x 2)")
    p.add_argument("--iterations", type=int, default=3, help="timed iterations (after 1 warm-up)")
    p.add_argument("--classes", type=int, default=21, help="classes, background included")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--no-amp", action="store_true", help="fp32 on CUDA (default: fp16 autocast)")
    p.add_argument("--loader", type=int, default=0, help="also time the data loader on N JPEGs")
    p.add_argument("--workers", type=int, default=4, help="data loader processes")
    p.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = p.parse_args()

    import torch

    from clipes.report import machine_description

    device = torch.device(args.device)
    amp = device.type == "cuda" and not args.no_amp
    print(f"device: {machine_description(args.device)}; torch {torch.__version__}; "
          f"{'AMP fp16' if amp else 'fp32'}")
    print()
    print("| protocol | backbone | crop | batch | s/iteration | iterations/s | peak memory (MB) | "
          "20k iterations (h) | loader batches/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    protocols = ["deeplab-pytorch", "torchvision"] if args.protocol == "both" else [args.protocol]
    rows = []
    for protocol in protocols:
        dt, peak, shape = model_step(args, protocol, device)
        loader = loader_rate(args, protocol) if args.loader else None
        rate = f"{loader:.2f} ({args.workers} workers)" if args.loader else "-"
        rows.append({"protocol": protocol, "backbone": args.backbone, "crop": args.crop,
                     "batch": shape, "s_per_iteration": dt, "iterations_per_s": 1 / dt,
                     "peak_mb": peak, "loader_batches_per_s": loader})
        print(f"| {protocol} | {args.backbone} | {args.crop} | {shape} | {dt:.2f} | {1 / dt:.3f} | "
              f"{peak:.0f} ({'GPU allocated' if device.type == 'cuda' else 'max RSS'}) | "
              f"{20000 * dt / 3600:.1f} | {rate} |", flush=True)
    if args.json:
        import json

        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
