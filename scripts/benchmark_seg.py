#!/usr/bin/env python
"""Benchmark: DeepLabV2 training iterations per second and peak memory.

Random images and masks (no data, no download), the reference setup by default:
ResNet-101, crop 321, batch 10, SGD with the head at 10x. A few iterations on the CPU;
on CUDA with mixed precision as training uses it.

    python scripts/benchmark_seg.py --iterations 3 --device cpu
    python scripts/benchmark_seg.py --iterations 50 --device cuda
"""

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet101", choices=["resnet101", "resnet50", "tiny"])
    p.add_argument("--crop", type=int, default=321)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--iterations", type=int, default=3, help="timed iterations (after 1 warm-up)")
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-amp", action="store_true")
    args = p.parse_args()

    import torch

    from clipes import segmentation as seg
    from clipes.report import machine_description

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = seg.DeepLabV2(args.classes, args.backbone).to(device)
    seg.freeze_bn(model)
    opt = torch.optim.SGD(model.param_groups(2.5e-4, 5e-4), lr=2.5e-4, momentum=0.9)
    amp = device.type == "cuda" and not args.no_amp
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    x = torch.randn(args.batch_size, 3, args.crop, args.crop, device=device)
    y = torch.randint(0, args.classes, (args.batch_size, args.crop, args.crop), device=device)
    y[:, :20] = 255

    def step():
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(x)
        loss = seg.cgl_loss(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
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
    name = machine_description(args.device)
    dt = (time.perf_counter() - t0) / args.iterations
    print(f"device: {name}; torch {torch.__version__}; {'AMP fp16' if amp else 'fp32'}")
    print()
    print("| backbone | crop | batch | s/iteration | iterations/s | peak memory (MB) | 20k iterations (h) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.backbone} | {args.crop} | {args.batch_size} | {dt:.2f} | {1 / dt:.3f} | "
          f"{peak:.0f} ({'GPU allocated' if device.type == 'cuda' else 'max RSS'}) | {20000 * dt / 3600:.1f} |")


if __name__ == "__main__":
    main()
