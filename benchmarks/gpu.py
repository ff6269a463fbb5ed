#!/usr/bin/env python
"""Every GPU measurement of the project in one run, for a machine lent for minutes.

Each step runs the stage scripts as the workflow runs them (fresh processes, timed from
process start to the last file written) while a sampler reads the GPU's utilisation
(NVML, where present) and the machine's CPU use (/proc/stat), to say what limited it.

1. cam: N generated VOC-format JPEGs (default 10,582, VOC train_aug's count; VOC's size
   mix around 500x375, 1-3 labels) and a random OpenAI-format ViT-B/16; ``scripts/cams.py``
   with the fastest documented options in fp16 on all of them (the target), then on the
   first --subset images: the same in fp32 and bf16, fp16 writing the full layout, fp16
   with the reference's PIL resize instead of ``--resize torch``, and the VOC config's
   defaults (all in the default grid layout but the one). images/s, seconds to the first
   archive, a projection to N, and the maps and labels of the other runs against fp32
   (clipes.parity).
2. crf: ``scripts/crf.py --jobs <cores>`` on the fp16 CAMs of the first --crf-images.
3. seg: ``scripts/train_seg.py``, deeplab-pytorch protocol (ResNet-101, MSC, batch 5 x
   iter_size 2, crop 321), random init, on the CRF's pseudo masks with the real data
   loader: iterations/s after a warm-up, peak GPU memory, 20k iterations projected; and
   ``benchmarks/segmentation.py``'s model step alone on random tensors (the GPU's own rate).
4. parity: the golden set (--golden) through ``scripts/cams.py`` on the device in
   reference and batched fp32, batched fp16 and bf16, against the authors' maps and
   fp32 (``scripts/compare_cams.py --check``); then ``tests/test_parity.py`` with
   CLIPES_TEST_DEVICE set to the device.

The targets run first (the CAM run on all images, then CRF, training, parity) and the
CAM runs on the subset last; from --deadline seconds on no step starts and a running one
is stopped, and what did not run is listed. Markdown tables for the README go to OUT/summary.md (and
stdout), every number to OUT/summary.json, subprocess logs to OUT/log.txt.

    python benchmarks/gpu.py --device cuda --out-dir "$OUT" --golden PARITY_SET
    python benchmarks/gpu.py --device cpu --images 4 --subset 2 --crf-images 2 \\
        --seg-images 2 --seg-iterations 3 --seg-backbone tiny --seg-crop 65 \\
        --checkpoint clip_tiny.pt --golden PARITY_SET --parity-datasets voc12
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

FAST = ["--mode", "batched", "--batch-size", "16", "--loaders", "6", "--text-context", "trimmed"]
FASTEST = FAST + ["--resize", "torch"]  # cam.resize: torch, 4x less CPU per image than PIL's
# (name, cams.py options, on all images or the subset); every run keeps the plain
# Grad-CAM (--keep-plain) as the workflow does
CAM_RUNS = [
    ("fastest, fp16", FASTEST + ["--autocast", "fp16"], "all"),
    ("fastest, fp32", FASTEST, "subset"),
    ("fastest, bf16", FASTEST + ["--autocast", "bf16"], "subset"),
    ("fastest, fp16, full archives", FASTEST + ["--autocast", "fp16", "--store", "full"], "subset"),
    ("fastest, fp16, reference resize (PIL)", FAST + ["--autocast", "fp16"], "subset"),
    ("VOC config defaults, fp32", ["--mode", "batched", "--batch-size", "8"], "subset"),
]
STEPS = ("cam", "crf", "seg", "parity")
PARITY_SETS = {"voc12": ("voc", "voc/ImageSets/Segmentation/train.txt"), "coco14": ("coco", "coco/train.txt")}
PARITY_RUNS = {"reference fp32": ["--mode", "reference"], "batched fp32": ["--mode", "batched"],
               "batched fp16": ["--mode", "batched", "--autocast", "fp16"],
               "batched bf16": ["--mode", "batched", "--autocast", "bf16"]}


def parse_args(argv=None):
    from clipes.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--device", default="cuda",
                   help="cuda (cpu: a trial of every step on a few images)")
    p.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS,
                   help="which measurements to run")
    p.add_argument("--deadline", type=float, default=420,
                   help="seconds after which no step starts and running ones are stopped")
    p.add_argument("--images", type=int, default=10582,
                   help="generated VOC-format images (VOC train_aug has 10,582)")
    p.add_argument("--subset", type=int, default=2000, help="images of the other CAM runs")
    p.add_argument("--cam-runs", nargs="+", default=[r[0] for r in CAM_RUNS],
                   choices=[r[0] for r in CAM_RUNS], metavar="RUN",
                   help="which CAM runs (default: all of %(choices)s)")
    p.add_argument("--parity-images", type=int, default=500,
                   help="images compared between precisions")
    p.add_argument("--checkpoint", type=Path, help="an OpenAI-format file instead of random ViT-B/16")
    p.add_argument("--crf-images", type=int, default=640, help="images the CRF step runs on")
    p.add_argument("--crf-jobs", type=int, default=os.cpu_count() or 1,
                   help="CRF processes (default: every core)")
    p.add_argument("--seg-images", type=int, default=640, help="pseudo masks the training reads")
    p.add_argument("--seg-iterations", type=int, default=100, help="training iterations timed")
    p.add_argument("--seg-warmup", type=int, default=20, help="iterations left out of the rate")
    p.add_argument("--seg-backbone", default="resnet101", choices=["resnet101", "resnet50", "tiny"],
                   help="segmentation backbone")
    p.add_argument("--seg-workers", type=int, default=max(1, (os.cpu_count() or 2) - 4),
                   help="training data loader processes")
    p.add_argument("--seg-crop", type=int, default=321, help="training crop size")
    p.add_argument("--golden", type=Path, help="the parity set (clip_tiny.pt, voc/, coco/)")
    p.add_argument("--parity-datasets", nargs="+", default=list(PARITY_SETS), choices=list(PARITY_SETS),
                   help="golden sets of the parity step")
    p.add_argument("--parity-runs", nargs="+", default=list(PARITY_RUNS), choices=list(PARITY_RUNS),
                   metavar="RUN", help="default: all of %(choices)s")
    p.add_argument("--no-pytest", action="store_true", help="parity: leave out tests/test_parity.py")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/clipes-gpu"),
                   help="where the generated data and runs go")
    p.add_argument("--out-dir", type=Path, default=Path("."),
                   help="where summary.md, summary.json and log.txt go")
    return p.parse_args(argv)


class Clock:
    def __init__(self, deadline):
        self.t0, self.deadline = time.perf_counter(), deadline

    def left(self) -> float:
        return self.deadline - (time.perf_counter() - self.t0)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Sampler:
    """Mean GPU utilisation (NVML) and busy share of all CPU cores (/proc/stat) while a
    block runs; None where a reading is not available."""

    def __init__(self, period=0.5):
        self.period, self.gpu, self.cpu = period, [], None
        self._stop = threading.Event()
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(0))
        except Exception:  # no NVML: CPU only
            pass

    @staticmethod
    def _cpu_times():
        try:
            f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except OSError:
            return None
        return sum(f), f[3] + (f[4] if len(f) > 4 else 0)  # total, idle + iowait

    def _run(self):
        while not self._stop.wait(self.period):
            if self._nvml:
                nv, h = self._nvml
                self.gpu.append(nv.nvmlDeviceGetUtilizationRates(h).gpu)

    def __enter__(self):
        self._c0 = self._cpu_times()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        c1 = self._cpu_times()
        if self._c0 and c1 and c1[0] > self._c0[0]:
            self.cpu = 100 * (1 - (c1[1] - self._c0[1]) / (c1[0] - self._c0[0]))

    def reading(self) -> dict:
        return {"gpu_util_pct": sum(self.gpu) / len(self.gpu) if self.gpu else None,
                "cpu_busy_pct": self.cpu}


def _pct(x):
    return "-" if x is None else f"{x:.0f}%"


def run(cmd, clock, logf, env=None, label="") -> tuple[int | str, float, Sampler, str]:
    """Run a command until the deadline: exit status (or "deadline"), wall seconds, the
    sampler's readings and its output (also appended to the log file)."""
    cmd = [str(c) for c in cmd]
    t = time.perf_counter()
    with Sampler() as s:
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                  text=True, timeout=max(1.0, clock.left()))
            rc, text = proc.returncode, proc.stdout
        except subprocess.TimeoutExpired as e:
            rc, text = "deadline", (e.stdout or b"").decode(errors="replace") \
                if isinstance(e.stdout, bytes) else (e.stdout or "")
    wall = time.perf_counter() - t
    logf.write(f"\n### {label}\n$ {' '.join(cmd)}\n{text[-6000:]}\n### exit {rc}, {wall:.1f} s\n")
    logf.flush()
    return rc, wall, s, text


# ----------------------------------------------------------------------------- steps
def prepare(args, summary):
    from cam_scaling import make_images
    from cam_stage import write_random_checkpoint

    root = args.workdir / "VOC2012"
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    t = time.perf_counter()
    if not split.is_file() or len(split.read_text().split()) != args.images:
        make_images(root, args.images, layout="voc", workers=os.cpu_count() or 1)
    ids = split.read_text().split()
    ckpt = args.checkpoint or args.workdir / "ViT-B-16-random.pt"
    if not ckpt.is_file():
        write_random_checkpoint(ckpt, "ViT-B-16")
    # the first start of torch reads its libraries from disk: not a cost of the first run
    subprocess.run([sys.executable, "-c", "import open_clip, torch; torch.zeros(1, device="
                    f"{args.device!r})"], check=False)
    summary["prepare_s"] = time.perf_counter() - t
    log(f"{len(ids)} images and the checkpoint: {summary['prepare_s']:.0f} s")
    return root, ids, ckpt


def _split(args, ids, n, name) -> Path:
    path = args.workdir / f"split_{name}_{n}.txt"
    path.write_text("".join(f"{i}\n" for i in ids[:n]))
    return path


def _archive_times(folder: Path) -> tuple[float, float]:
    m = [p.stat().st_mtime for p in folder.glob("*.npz")]
    return (min(m), max(m)) if m else (float("nan"), float("nan"))


def cam_step(args, clock, logf, summary, root, ids, ckpt, which):
    """The CAM runs on all images (which="all") or on the subset, then reduced precision
    against fp32 where both ran."""
    from clipes import parity

    rows = summary.setdefault("cam", [])
    folders = {k: Path(v) for k, v in summary.setdefault("cam_folders", {}).items()}
    for name, opts, size in CAM_RUNS:
        if size != which or name not in args.cam_runs:
            continue
        n = len(ids) if which == "all" else min(args.subset, len(ids))
        if clock.left() <= 0:
            rows.append({"run": name, "images": n, "status": "not run (deadline)"})
            continue
        out = args.workdir / ("cams_" + name.replace(", ", "_").replace(" ", "-"))
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, REPO / "scripts" / "cams.py", "--dataset", "voc12", "--root", root,
               "--split", _split(args, ids, n, "cam"), "--checkpoint", ckpt,
               "--device", args.device, "--out", out, "--keep-plain", *opts]
        start = time.time()
        rc, wall, s, _ = run(cmd, clock, logf, label=f"cams {name}")
        row = {"run": name, "options": " ".join(opts), "images": n, "wall_s": wall,
               "status": "ok" if rc == 0 else f"failed ({rc})", **s.reading()}
        if rc == 0:
            first, last = _archive_times(out)
            row.update(images_per_s=n / wall, first_archive_s=first - start)
            if n > 1 and last > first:
                steady = (n - 1) / (last - first)  # archives/s once the loop runs
                row.update(steady_images_per_s=steady,
                           projected_s=row["first_archive_s"] + (args.images - 1) / steady
                           + (start + wall - last))
            row["archive_mb"] = sum(p.stat().st_size for p in out.glob("*.npz")) / 2**20
            folders[name] = out
        rows.append(row)
        log(f"cams {name}: {row['status']}, {wall:.1f} s for {n} images")
        write_summary(args, summary)
    # reduced precision against fp32 on the images both runs hold
        summary["cam_folders"][name] = str(out) if rc == 0 else None
    base = folders.get("fastest, fp32")
    for row in rows:
        if (base is None or row["run"] not in folders or "fp32" in row["run"] or clock.left() <= 0
                or "vs_fp32_labels" in row):
            continue
        n = min(args.parity_images, row["images"], args.subset)
        cmp = parity.compare_runs(base, folders[row["run"]], ids[:n])
        row.update(vs_fp32_images=n, vs_fp32_max_abs=cmp["max_abs"],
                   vs_fp32_labels=cmp["label_agreement"],
                   vs_fp32_holds=parity.check(cmp)["label_agreement"])


def crf_step(args, clock, logf, summary, root, ids):
    cams = Path(summary.get("cam_folders", {}).get("fastest, fp16") or "/nonexistent")
    n = min(args.crf_images, len(ids))
    if not cams.is_dir():
        summary["crf"] = {"status": "not run (no fp16 CAMs)"}
        return None
    out = args.workdir / "crf"
    shutil.rmtree(out, ignore_errors=True)
    split = _split(args, ids, n, "crf")
    cmd = [sys.executable, REPO / "scripts" / "crf.py", "--dataset", "voc12", "--root", root,
           "--split", split, "--cams", cams, "--out", out / "pseudo_masks",
           "--labels-out", out / "labels", "--jobs", args.crf_jobs]
    rc, wall, s, _ = run(cmd, clock, logf, label="crf")
    summary["crf"] = {"images": n, "jobs": args.crf_jobs, "wall_s": wall,
                      "status": "ok" if rc == 0 else f"failed ({rc})", **s.reading()}
    if rc == 0:
        summary["crf"].update(images_per_s=n / wall,
                              voc_train_aug_min=10582 / (n / wall) / 60,
                              # COCO train: 82,783 images of about 640x480 (1.64x VOC's
                              # pixels) with 2.9 labels against VOC's 1.5: cost taken as
                              # pixels x (labels + 1)
                              coco_train_min_estimate=82783 * 1.64 * (3.9 / 2.5)
                              / (n / wall) / 60)
    log(f"crf: {summary['crf']['status']}, {wall:.1f} s for {n} images")
    return out / "pseudo_masks" if rc == 0 else None


def seg_step(args, clock, logf, summary, root, ids, masks):
    import csv

    res = summary.setdefault("seg", {})
    if masks is None:
        res["status"] = "not run (no pseudo masks)"
        return
    n = min(args.seg_images, len(list(masks.glob("*.png"))))
    out = args.workdir / "seg"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, REPO / "scripts" / "train_seg.py", "--dataset", "voc12", "--root", root,
           "--split", _split(args, ids, n, "seg"), "--masks", masks, "--out", out,
           "--protocol", "deeplab-pytorch", "--backbone", args.seg_backbone, "--init", "none",
           "--iterations", args.seg_iterations, "--batch-size", 5, "--iter-size", 2,
           "--crop", args.seg_crop, "--workers", args.seg_workers, "--device", args.device,
           "--checkpoint-every", 10**6]
    rc, wall, s, text = run(cmd, clock, logf, label="train_seg")
    res.update(images=n, iterations=args.seg_iterations, workers=args.seg_workers,
               backbone=args.seg_backbone, wall_s=wall, status="ok" if rc == 0 else f"failed ({rc})",
               **s.reading())
    if rc == 0:
        with open(out / "train_log.csv") as f:
            t = [float(r["seconds"]) for r in csv.DictReader(f)]
        w = min(args.seg_warmup, len(t) - 2)
        rate = (len(t) - 1 - w) / (t[-1] - t[w])
        res.update(iterations_per_s=rate, projected_20k_min=20000 / rate / 60)
        peak = re.findall(r"peak GPU memory ([0-9.]+) MB", text)
        res["peak_gpu_mb"] = float(peak[-1]) if peak else None
    log(f"train_seg: {res['status']}, {wall:.1f} s")
    if clock.left() <= 0:
        return
    cmd = [sys.executable, REPO / "benchmarks" / "segmentation.py", "--protocol", "deeplab-pytorch",
           "--backbone", args.seg_backbone, "--iterations", max(3, args.seg_iterations // 4),
           "--crop", args.seg_crop,
           "--device", args.device, "--json", args.workdir / "seg_model_step.json"]
    rc, wall, s, _ = run(cmd, clock, logf, label="benchmarks/segmentation.py (model step, random tensors)")
    if rc == 0:
        step = json.loads((args.workdir / "seg_model_step.json").read_text())[0]
        res["model_step"] = {**step, **s.reading()}


def parity_step(args, clock, logf, summary):
    g = args.golden
    res = summary.setdefault("parity", {})
    if g is None or not (g / "clip_tiny.pt").is_file():
        res["status"] = "not run (no --golden set)"
        return
    sets = {k: v for k, v in PARITY_SETS.items() if k in args.parity_datasets}
    runs = {k: v for k, v in PARITY_RUNS.items() if k in args.parity_runs}
    work = args.workdir / "parity"
    shutil.rmtree(work, ignore_errors=True)
    procs = []
    t = time.perf_counter()
    for ds, (sub, split) in sets.items():  # small runs: all at once
        for name, opts in runs.items():
            out = work / ds / name.replace(" ", "_")
            cmd = [sys.executable, REPO / "scripts" / "cams.py", "--dataset", ds, "--root", g / sub,
                   "--split", g / split, "--checkpoint", g / "clip_tiny.pt", "--device", args.device,
                   "--out", out, *opts]
            procs.append((ds, name, out, subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                                                          stderr=subprocess.STDOUT, text=True)))
    import numpy as np

    rows = []
    for ds, name, out, proc in procs:
        try:
            text, _ = proc.communicate(timeout=max(1.0, clock.left()))
        except subprocess.TimeoutExpired:
            proc.kill()
            text = "deadline"
        logf.write(f"\n### parity cams {ds} {name}: exit {proc.returncode}\n{text[-3000:]}\n")
        if proc.returncode != 0:
            rows.append({"dataset": ds, "run": name, "status": f"failed ({proc.returncode})"})
            continue
        sub, split = sets[ds]
        authors = work / ds / "authors"
        if not authors.is_dir():  # the golden maps as the authors' script writes them
            authors.mkdir(parents=True)
            for f in (g / sub / "golden").glob("*.npz"):
                z = np.load(f)
                np.save(authors / f"{f.stem}.npy", {"keys": z["keys"], "attn_highres": z["attn_highres_fp16"]})
        for against, base in (("authors", authors), ("batched fp32, same device", work / ds / "batched_fp32")):
            if against != "authors" and ("fp32" in name or "batched fp32" not in runs):
                continue
            js = work / ds / f"{name.replace(' ', '_')}_vs_{'authors' if against == 'authors' else 'fp32'}.json"
            rc, _, _, _ = run([sys.executable, REPO / "scripts" / "compare_cams.py", base, out,
                            "--dataset", ds, "--root", g / sub, "--split", g / split, "--out", js,
                            "--check"], clock, logf, label=f"compare {ds} {name} vs {against}")
            if js.is_file():
                c = json.loads(js.read_text())
                mi = c.get("miou")
                rows.append({"dataset": ds, "run": name, "against": against, "max_abs": c["max_abs"],
                             "labels_worst_power": min(c["label_agreement"].values()),
                             "miou_abs_diff": max(abs(mi["a"][p] - mi["b"][p]) for p in mi["a"]) if mi else None, "holds": c.get("holds"),
                             "check_exit": rc})
    res.update(rows=rows, cam_runs_s=time.perf_counter() - t)
    if clock.left() <= 0 or args.no_pytest:
        res["pytest"] = "not run (deadline)" if not args.no_pytest else "not run (--no-pytest)"
        return
    env = dict(os.environ, CLIPES_TEST_DEVICE=args.device, CLIPES_GOLDEN_DIR=str(g))
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
           str(REPO / "tests" / "test_parity.py")]
    try:
        import xdist  # noqa: F401

        cmd += ["-n", str(min(8, os.cpu_count() or 1))]
    except ImportError:
        pass
    rc, wall, _, text = run(cmd, clock, logf, env=env, label="pytest tests/test_parity.py")
    res["pytest_tail"] = text[-1500:]
    res["pytest_exit"], res["pytest_s"] = rc, wall


# ----------------------------------------------------------------------------- output
def markdown(summary) -> str:
    m = summary["machine"]
    out = [f"# GPU measurements: {m}", "",
           f"torch {summary['torch']}, {summary['cores']} CPU cores; "
           f"{summary['images']} generated VOC-format images, random ViT-B/16; "
           f"data and checkpoint made in {summary.get('prepare_s', 0):.0f} s", ""]
    if summary.get("cam"):
        out += ["## CAM stage (scripts/cams.py --keep-plain, process start to last archive)", "",
                "| run | images | wall s | images/s | first archive s | steady images/s | "
                f"projected s for {summary['images']} | GPU util | CPU busy | archives MB | "
                "max abs diff vs fp32 | CAM labels equal vs fp32 (power 1 / 2) |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in summary["cam"]:
            if r.get("status") != "ok":
                out.append(f"| {r['run']} | {r['images']} | {r.get('status')} |" + " |" * 9)
                continue
            lab = r.get("vs_fp32_labels")
            par = (f"{r['vs_fp32_max_abs']:.1e} | {100 * lab['1']:.3f}% / {100 * lab['2']:.3f}% "
                   f"({r['vs_fp32_images']} images)") if lab else "- | -"
            out.append(f"| {r['run']} | {r['images']} | {r['wall_s']:.1f} | {r['images_per_s']:.1f} | "
                       f"{r['first_archive_s']:.1f} | {r.get('steady_images_per_s', 0):.1f} | "
                       f"{r.get('projected_s', float('nan')):.0f} | {_pct(r['gpu_util_pct'])} | "
                       f"{_pct(r['cpu_busy_pct'])} | {r['archive_mb']:.0f} | {par} |")
        out += ["", "Options: " + "; ".join(f"{r['run']}: `{r.get('options', '')}`"
                                            for r in summary["cam"]), ""]
    c = summary.get("crf")
    if c:
        out += ["## CRF stage (scripts/crf.py, CPU)", ""]
        if c.get("status") == "ok":
            out += ["| images | jobs | wall s | images/s | CPU busy | VOC train_aug (10,582) | "
                    "COCO train (82,783), estimate |", "|---|---|---|---|---|---|---|",
                    f"| {c['images']} | {c['jobs']} | {c['wall_s']:.1f} | {c['images_per_s']:.1f} | "
                    f"{_pct(c['cpu_busy_pct'])} | {c['voc_train_aug_min']:.1f} min | "
                    f"{c['coco_train_min_estimate']:.0f} min |", ""]
        else:
            out += [c["status"], ""]
    s = summary.get("seg")
    if s:
        out += ["## Segmentation training (scripts/train_seg.py, deeplab-pytorch protocol)", ""]
        if s.get("status") == "ok":
            out += ["| what | backbone | iterations/s | peak GPU MB | 20k iterations | GPU util | CPU busy |",
                    "|---|---|---|---|---|---|---|",
                    f"| train_seg.py, real loader ({s['workers']} workers), {s['iterations']} "
                    f"iterations | {s['backbone']} | {s['iterations_per_s']:.2f} | "
                    f"{s['peak_gpu_mb'] if s['peak_gpu_mb'] is None else round(s['peak_gpu_mb'])} | "
                    f"{s['projected_20k_min']:.0f} min | {_pct(s['gpu_util_pct'])} | "
                    f"{_pct(s['cpu_busy_pct'])} |"]
            ms = s.get("model_step")
            if ms:
                out.append(f"| benchmarks/segmentation.py model step, random tensors | {ms['backbone']} | "
                           f"{ms['iterations_per_s']:.2f} | {ms['peak_mb']:.0f} | "
                           f"{20000 / ms['iterations_per_s'] / 60:.0f} min | "
                           f"{_pct(ms['gpu_util_pct'])} | {_pct(ms['cpu_busy_pct'])} |")
            out.append("")
        else:
            out += [s["status"], ""]
    p = summary.get("parity")
    if p:
        out += ["## Parity on the device (golden set)", ""]
        if "rows" in p:
            out += ["| dataset | run | against | max abs map diff | CAM labels equal, worst power | "
                    "mIoU difference | labels >= 99.9% | mIoU to 3 decimals |",
                    "|---|---|---|---|---|---|---|---|"]
            for r in p["rows"]:
                if "against" not in r:
                    out.append(f"| {r['dataset']} | {r['run']} | {r['status']} |" + " |" * 5)
                    continue
                h = r.get("holds") or {}
                d = r["miou_abs_diff"]
                out.append(f"| {r['dataset']} | {r['run']} | {r['against']} | {r['max_abs']:.1e} | "
                           f"{100 * r['labels_worst_power']:.5f}% | "
                           f"{'-' if d is None else f'{d:.1e}'} | "
                           f"{'holds' if h.get('label_agreement') else 'fails'} | "
                           f"{'holds' if h.get('miou_abs') else 'fails'} |")
            out.append("")
        out += [f"tests/test_parity.py on the device: exit {p.get('pytest_exit', p.get('pytest', p.get('status')))}"
                f" ({p.get('pytest_s', 0):.0f} s; failures in log.txt)", ""]
    if summary.get("not_run"):
        out += ["Not run (deadline): " + ", ".join(summary["not_run"]), ""]
    return "\n".join(out)


def write_summary(args, summary):
    from clipes.io import write_json, write_text

    write_json(args.out_dir / "summary.json", summary)
    write_text(args.out_dir / "summary.md", markdown(summary))


def main(argv=None):
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    import torch

    from clipes.report import machine_description

    clock = Clock(args.deadline)
    summary = {"machine": machine_description(args.device), "torch": torch.__version__,
               "cores": os.cpu_count(), "images": args.images, "not_run": []}
    root, ids, ckpt = prepare(args, summary)
    masks = None
    with open(args.out_dir / "log.txt", "w") as logf:
        # the targets first; the CAM runs on the subset last (the deadline may cut them)
        for step in ("cam", "crf", "seg", "parity", "cam-subset"):
            if step.split("-")[0] not in args.steps:
                continue
            if clock.left() <= 0:
                summary["not_run"].append(step)
                continue
            t = time.perf_counter()
            if step.startswith("cam"):
                cam_step(args, clock, logf, summary, root, ids, ckpt,
                         "all" if step == "cam" else "subset")
            elif step == "crf":
                masks = crf_step(args, clock, logf, summary, root, ids)
            elif step == "seg":
                seg_step(args, clock, logf, summary, root, ids, masks)
            else:
                parity_step(args, clock, logf, summary)
            log(f"step {step}: {time.perf_counter() - t:.0f} s")
            write_summary(args, summary)
    write_summary(args, summary)
    print(markdown(summary), flush=True)
    log(f"all done in {time.perf_counter() - clock.t0:.0f} s")


if __name__ == "__main__":
    main()
