#!/usr/bin/env python
"""Benchmark: the whole CAM stage as a user runs it (process start to last archive), for
this project and, given the path of a checkout of the authors' code (github
linyq2117/CLIP-ES), for theirs, in alternating runs on the same images and weights.

Generates N VOC-format images (VOC's size mix around 500x375, 1-3 labels from the XML)
and an OpenAI-format ViT-B/16 checkpoint with random weights (fp16, as OpenAI's release;
attention peaked as in cam_model.py, so the maps have structure). Then, R times:
each variant of ``scripts/cams.py`` and the authors' ``generate_cams_voc12.py``, each
in a fresh process. Prints the median wall time of each, the ratio to the authors', and
how far the maps and CAM labels of each variant are from theirs (clipes.parity).

The authors' script picks ``cuda:<worker % GPU count>``, which fails on a machine without
a GPU; there it is started through a shim that maps their CUDA device names to the CPU
(nothing else is touched). Their code needs its own packages (opencv, lxml, ttach, tqdm):
give the Python that has them with --authors-python, or extra folders with
--authors-pythonpath.

    python benchmarks/cam_stage.py --images 10 --repeats 3 --authors-code ~/CLIP-ES
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

VARIANTS = {  # name -> scripts/cams.py options
    "reference": "--mode reference",
    "batched": "--mode batched",
    "batched, trimmed text": "--mode batched --text-context trimmed",
    "batched, full archives": "--mode batched --store full",
}

SHIM = r"""
import os, runpy, sys
import torch
if not torch.cuda.is_available():  # their perform() takes cuda:<i % device count>
    torch.cuda.device_count = lambda: 1
    def _cpu(a):
        return "cpu" if isinstance(a, str) and a.startswith("cuda") else a
    _tensor_to, _module_to = torch.Tensor.to, torch.nn.Module.to
    torch.Tensor.to = lambda self, *a, **k: _tensor_to(self, *map(_cpu, a), **k)
    torch.nn.Module.to = lambda self, *a, **k: _module_to(self, *map(_cpu, a), **k)
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
runpy.run_path(script, run_name="__main__")
"""


def parse_args(argv=None):
    from clipes.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--images", type=int, default=10, help="generated VOC-format images")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds; the median counts")
    p.add_argument("--device", default="cpu", help="device of this project's runs (the authors' script picks its own)")
    p.add_argument("--model", default="ViT-B-16", help="architecture of the random checkpoint")
    p.add_argument("--checkpoint", type=Path, help="an OpenAI-format file instead of random weights")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS)[:3], choices=list(VARIANTS),
                   help="which scripts/cams.py option sets to time (names of VARIANTS)")
    p.add_argument("--extra", default="", help="more scripts/cams.py options for every variant")
    p.add_argument("--authors-code", type=Path, help="checkout of linyq2117/CLIP-ES")
    p.add_argument("--authors-python", default=sys.executable,
                   help="the Python to run their code with (default: this one)")
    p.add_argument("--authors-pythonpath", default="", help="extra import folders for their code")
    p.add_argument("--workdir", type=Path, help="keep data, checkpoint and outputs here")
    p.add_argument("--out", type=Path, help="JSON of every timing")
    return p.parse_args(argv)


def write_random_checkpoint(path: Path, model: str) -> None:
    """A random CLIP in OpenAI's format: a plain state dict, fp16 tensors."""
    import torch

    from cam_model import peaked_attention
    from clipes.model import build_random_clip

    clip = build_random_clip(model, seed=0)
    peaked_attention(clip)
    torch.save({k: v.half() for k, v in clip.model.state_dict().items()}, path)


def out_dir(work: Path, run: str) -> Path:
    return work / "out" / run.replace(", ", "-").replace(" ", "_")


def timed(cmd, cwd=None, env=None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{proc.stderr[-3000:]}")
    return wall


def main(argv=None):
    args = parse_args(argv)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="clipes-stage-")
        args.workdir = Path(tmp.name)
    work = args.workdir
    if args.authors_code is not None:
        script = args.authors_code / "generate_cams_voc12.py"
        if not script.is_file():
            sys.exit(f"error: {script} not found: give the folder of a checkout of "
                     f"linyq2117/CLIP-ES with --authors-code")
    from cam_scaling import make_images

    root = work / "VOC2012"
    ids = make_images(root, args.images, layout="voc", workers=min(8, os.cpu_count() or 1))
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    ckpt = args.checkpoint
    if ckpt is None:
        ckpt = work / f"{args.model}-random.pt"
        write_random_checkpoint(ckpt, args.model)
    runs = {name: [] for name in args.variants}
    if args.authors_code is not None:
        runs["authors"] = []
    for _ in range(args.repeats):
        for name in runs:  # alternating: every round runs each once
            out = out_dir(work, name)
            shutil.rmtree(out, ignore_errors=True)
            if name == "authors":
                env = dict(os.environ)
                env["PYTHONPATH"] = os.pathsep.join(
                    p for p in (str(args.authors_code), args.authors_pythonpath,
                                env.get("PYTHONPATH", "")) if p)
                if args.device == "cpu":
                    env["CUDA_VISIBLE_DEVICES"] = ""
                cmd = [args.authors_python, "-c", SHIM, str(script), "--img_root",
                       str(root / "JPEGImages"), "--split_file", str(split), "--model", str(ckpt),
                       "--cam_out_dir", str(out), "--num_workers", "1"]
                runs[name].append(timed(cmd, cwd=args.authors_code, env=env))
            else:
                cmd = [sys.executable, str(REPO / "scripts" / "cams.py"), "--dataset", "voc12",
                       "--root", str(root), "--split", str(split), "--checkpoint", str(ckpt),
                       "--device", args.device, "--out", str(out),
                       *VARIANTS[name].split(), *args.extra.split()]
                runs[name].append(timed(cmd))
    from clipes import parity
    from clipes.report import machine_description

    print(f"device: {machine_description(args.device)}; {args.images} VOC-like images, "
          f"{args.checkpoint if args.checkpoint else args.model + ' random weights'}; "
          f"wall time from process start to the last archive, median of {args.repeats} "
          f"alternating rounds" + (f"; every variant also with: {args.extra}" if args.extra else ""))
    print()
    base = statistics.median(runs["authors"]) if "authors" in runs else None
    head = "| run | options | median s | s/image | all runs s |"
    head += " speed-up vs authors | max abs map diff | CAM labels equal (power 1 / 2) |" if base else ""
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    summary = {"images": args.images, "device": args.device, "runs": runs}
    for name, times in runs.items():
        med = statistics.median(times)
        opts = "generate_cams_voc12.py" if name == "authors" else VARIANTS[name]
        row = f"| {name} | {opts} | {med:.1f} | {med / args.images:.2f} | " + \
            " ".join(f"{t:.1f}" for t in times) + " |"
        if base:
            if name == "authors":
                row += " 1.00x | - | - |"
            else:
                cmp = parity.compare_runs(out_dir(work, "authors"), out_dir(work, name), ids)
                agree = cmp["label_agreement"]
                row += (f" {base / med:.2f}x | {cmp['max_abs']:.1e} | "
                        f"{100 * agree['1']:.3f}% / {100 * agree['2']:.3f}% |")
                summary.setdefault("parity", {})[name] = cmp
        print(row)
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
