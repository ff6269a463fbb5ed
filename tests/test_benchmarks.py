"""The benchmark scripts run as the README gives them, on sizes small enough for CI."""

import json

import pytest

from conftest import golden_dir, run_benchmark


@pytest.mark.skipif(not (golden_dir() / "clip_tiny.pt").is_file(), reason="no tiny CLIP")
def test_cam_scaling_benchmark_prints_one_row_per_size(tmp_path):
    proc = run_benchmark("cam_scaling", "--sizes", "2", "4", "--checkpoint",
                      golden_dir() / "clip_tiny.pt", "--workdir", tmp_path, "--mix", "coco",
                      "--extra", "--keep-plain --store full")
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert [r.split("|")[1].strip() for r in rows] == ["2", "4"]
    for r in rows:
        cells = [float(c) for c in r.strip("|").split("|")]
        assert all(c > 0 for c in cells)
    assert len(list((tmp_path / "data" / "cams_4").glob("*.npz"))) == 4
    assert float(rows[-1].split("|")[9]) > 100  # KB per image of the full layout, COCO sizes


def test_cam_io_benchmark_prints_each_step_and_both_totals():
    proc = run_benchmark("cam_io", "--images", "3", "--repeats", "1", "--mix", "voc")
    rows = {ln.split("|")[1].strip(): ln.split("|")[2].strip()
            for ln in proc.stdout.splitlines() if ln.startswith("| ") and not ln.startswith("| step")}
    for step in ("decode", "resize (pil)", "resize (torch)", "normalise", "write (grid archive)"):
        assert float(rows[step]) > 0, (step, proc.stdout)
    totals = [v for k, v in rows.items() if k.startswith("**total")]
    assert len(totals) == 2 and all(float(t.strip("*")) > 0 for t in totals)


FAKE_AUTHORS = '''
"""Stands in for the authors' generate_cams_voc12.py: the same command line, the same
device choice (cuda:<worker % GPU count>) and the same output files."""
import argparse, os
import numpy as np
import torch
from lxml_free import labels_and_size

p = argparse.ArgumentParser()
for a in ("--img_root", "--split_file", "--cam_out_dir", "--model"):
    p.add_argument(a)
p.add_argument("--num_workers", type=int, default=1)
args = p.parse_args()
assert os.path.isfile(args.model)
device_id = "cuda:{}".format(0 % torch.cuda.device_count())
os.makedirs(args.cam_out_dir, exist_ok=True)
for iid in np.loadtxt(args.split_file, dtype=str, ndmin=1):
    keys, (w, h) = labels_and_size(args.img_root.replace("JPEGImages", "Annotations"), iid)
    cams = torch.linspace(0, 1, w).expand(len(keys), h, w).to(device_id)
    np.save(os.path.join(args.cam_out_dir, iid + ".npy"),
            {"keys": np.asarray(keys), "attn_highres": cams.cpu().numpy().astype(np.float16)})
'''

LABELS = '''
import re
NAMES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
         "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
         "train", "tvmonitor"]
def labels_and_size(folder, iid):
    xml = open(f"{folder}/{iid}.xml").read()
    keys = []
    for n in re.findall(r"<name>(\\w+)</name>", xml):
        if NAMES.index(n) not in keys:
            keys.append(NAMES.index(n))
    size = [int(re.search(rf"<{t}>(\\d+)</{t}>", xml).group(1)) for t in ("width", "height")]
    return keys, size
'''


@pytest.mark.skipif(not (golden_dir() / "clip_tiny.pt").is_file(), reason="no tiny CLIP")
def test_stage_benchmark_runs_the_authors_command_line_and_prints_the_ratio(tmp_path):
    authors = tmp_path / "CLIP-ES"
    authors.mkdir()
    (authors / "generate_cams_voc12.py").write_text(FAKE_AUTHORS)
    (authors / "lxml_free.py").write_text(LABELS)
    proc = run_benchmark("cam_stage", "--images", "2", "--repeats", "1", "--variants",
                      "batched", "--checkpoint", golden_dir() / "clip_tiny.pt", "--authors-code",
                      authors, "--workdir", tmp_path / "work", "--out", tmp_path / "stage.json")
    rows = {r.split("|")[1].strip(): r for r in proc.stdout.splitlines() if r.startswith("| ")}
    assert set(rows) == {"run", "batched", "authors"}
    ratio = rows["batched"].split("|")[6].strip()
    assert ratio.endswith("x") and float(ratio[:-1]) > 0
    assert len(list((tmp_path / "work" / "out" / "authors").glob("*.npy"))) == 2
    import json

    summary = json.loads((tmp_path / "stage.json").read_text())
    assert len(summary["runs"]["authors"]) == 1 and summary["parity"]["batched"]["images"] == 2


@pytest.mark.skipif(not (golden_dir() / "clip_tiny.pt").is_file(), reason="no tiny CLIP")
def test_gpu_benchmark_script_runs_its_steps_on_the_cpu(tmp_path):
    """The script prepared for a lent GPU, on a few images and the smallest settings, every
    step, so it does not fail there for a reason a CPU run would have shown."""
    g = golden_dir()
    proc = run_benchmark("gpu", "--device", "cpu", "--images", "2", "--subset", "1",
                      "--cam-runs", "fastest, fp16", "fastest, fp32", "--parity-images", "1",
                      "--crf-images", "2", "--crf-jobs", "1", "--seg-images", "2",
                      "--seg-iterations", "2", "--seg-warmup", "0", "--seg-backbone", "tiny",
                      "--seg-crop", "33", "--seg-workers", "0", "--checkpoint", g / "clip_tiny.pt",
                      "--golden", g, "--parity-datasets", "voc12", "--parity-runs",
                      "batched fp32", "batched bf16", "--no-pytest",
                      "--workdir", tmp_path / "w", "--out-dir", tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    md = (tmp_path / "out" / "summary.md").read_text()
    assert md.strip() in proc.stdout and not summary["not_run"]
    cam = {r["run"]: r for r in summary["cam"]}
    assert cam["fastest, fp16"]["status"] == cam["fastest, fp32"]["status"] == "ok"
    assert cam["fastest, fp16"]["images"] == 2 and cam["fastest, fp32"]["images"] == 1
    assert 0.99 < cam["fastest, fp16"]["vs_fp32_labels"]["1"] <= 1
    assert len(list((tmp_path / "w" / "cams_fastest_fp16").glob("*.npz"))) == 2
    assert summary["crf"]["status"] == "ok" and summary["crf"]["images"] == 2
    seg = summary["seg"]
    assert seg["status"] == "ok" and seg["iterations_per_s"] > 0 and seg["model_step"]["peak_mb"] > 0
    rows = {(r["run"], r["against"]) for r in summary["parity"]["rows"]}
    assert rows == {("batched fp32", "authors"), ("batched bf16", "authors"),
                    ("batched bf16", "batched fp32, same device")}
    for heading in ("## CAM stage", "## CRF stage", "## Segmentation training", "## Parity"):
        assert heading in md


def test_demo_seeds_benchmark_prints_mean_and_spread_per_stage(tmp_path):
    import json

    proc = run_benchmark("demo_seeds", "--seeds", "0", "1", "--steps", "2", "--n-train", "6",
                         "--n-val", "2", "--group-scope", "early+mean", "--workdir", tmp_path / "w")
    table = proc.stdout[proc.stdout.index("| stage |"):]
    assert "| seed 0 | seed 1 | mean | sd |" in table
    for stage in ("initial CAM", "+ CAA", "CRF pseudo masks (CAA)", "CRF pseudo masks (no CAA)",
                  "trivial: centre box"):
        assert f"| {stage}" in table, table
    # every seed's CLIP was trained with the recipe asked for, which its summary records
    for s in (0, 1):
        summary = json.loads((tmp_path / "w" / "results" / "demo" / f"seed{s}" / "clip"
                              / "summary.json").read_text())
        assert summary["steps"] == 2 and summary["stream"]
        assert summary["recipe"]["seed"] == s and summary["recipe"]["group_scope"] == "early+mean"
        assert summary["recipe"]["pool"] == "avg" and summary["recipe"]["group_loss"] == 1.0


def test_demo_caa_benchmark_prints_every_affinity_and_the_ceiling(tmp_path):
    proc = run_benchmark("demo_caa", "--images", "3", "--workdir", tmp_path)
    rows = {ln.split("|")[1].strip(): float(ln.split("|")[2])
            for ln in proc.stdout.splitlines() if ln.startswith("| ") and not ln.startswith("| maps")}
    assert len(rows) == 11, proc.stdout
    assert all(0 <= v <= 100 for v in rows.values())
    # the ground truth, pooled on the grid and read back like a CAM, scores high: the grid,
    # the masks and the evaluation line up (about 85 on the demo's images)
    assert rows["ground truth pooled on the patch grid (ceiling)"] > 50, rows


def test_cgl_confidence_benchmark_agrees_with_the_crf_stage(tmp_path):
    """On demo images with the shipped CLIP's CAMs: the share the benchmark says the 0.95
    threshold ignores is the share the CRF stage's pseudo masks leave out; its table of
    the CRF's input agrees with the CAM archives counted here; each row's error rates add
    up to the overall one."""
    import numpy as np

    from conftest import REPO, run_script

    from clipes import camstore, crf, datasets, metrics, synthetic

    d = synthetic.generate(tmp_path / "data", seed=0, n_train=6, n_val=1)
    data = ["--dataset", "synthetic", "--root", d, "--split", d / "train.txt", "--labels",
            d / "labels.csv", "--classes", d / "classes.yaml", "--background", d / "background.txt"]
    run_script("cams", *data, "--checkpoint", REPO / "config" / "demo" / "clip.npz",
               "--out", tmp_path / "cams")
    run_script("crf", *data, "--cams", tmp_path / "cams", "--out", tmp_path / "masks")
    ds = datasets.load("synthetic", d, d / "train.txt", classes=list(synthetic.CLASSES),
                       labels_csv=d / "labels.csv")
    coverage = metrics.evaluate_mask_dir(ds.samples, tmp_path / "masks", ds.n_classes)["coverage"]
    # the CRF's input, counted here from the archives: its argmax labels and normalised max
    wrong_in = unsure_in = total = 0
    for s in ds.samples:
        keys, cams = camstore.load_cams(tmp_path / "cams" / f"{s.id}.npz")
        probs = np.concatenate([crf.background_score(cams, 1), cams]).astype(np.float32)
        gt = datasets.load_gt(s, cams.shape[1:], ds.n_classes)
        valid = gt != 255
        wrong_in += int((crf.cam_labels(keys, cams, 1) != gt)[valid].sum())
        unsure_in += int((probs.max(0) / probs.sum(0) < 0.95)[valid].sum())
        total += int(valid.sum())

    out = run_benchmark("cgl_confidence", *data, "--cams", tmp_path / "cams",
                        "--thresholds", "0.95", "0.9999").stdout
    after, before = out.split("Before the CRF")
    assert "(10 mean-field iterations)" in after
    for part, unsure in ((after, 100 * (1 - coverage)), (before, 100 * unsure_in / total)):
        overall = float(part.split("wrong on ")[1].split("%")[0])
        rows = {ln.split("|")[1].strip(): [float(c) if c.strip() != "n/a" else 0.0
                                           for c in ln.strip().strip("|").split("|")[1:]]
                for ln in part.splitlines() if ln.startswith("| 0.")}
        assert set(rows) == {"0.95", "0.9999"}, out
        assert rows["0.95"][0] == pytest.approx(unsure, abs=0.006), out
        for ignored, wrong_ignored, wrong_kept, share in rows.values():  # n/a: nothing there
            mixed = (ignored * wrong_ignored + (100 - ignored) * wrong_kept) / 100
            assert mixed == pytest.approx(overall, abs=0.02), out
            # the share recomputed from the printed values, each rounded to +-0.005: to first
            # order it is off by its value times the sum of their relative rounding errors
            est = ignored * wrong_ignored / overall
            tol = 0.006 + est * sum(0.005 / max(v, 0.005) for v in (ignored, wrong_ignored, overall))
            assert share == pytest.approx(est, abs=tol), out
        assert rows["0.9999"][0] >= rows["0.95"][0]
    assert float(before.split("wrong on ")[1].split("%")[0]) == pytest.approx(
        100 * wrong_in / total, abs=0.006)

    one = run_benchmark("cgl_confidence", *data, "--cams", tmp_path / "cams", "--iterations",
                        "1", "--thresholds", "0.95").stdout
    assert "(1 mean-field iteration)" in one
    row95 = (lambda text: next(ln for ln in text.split("Before the CRF")[1].splitlines()  # noqa: E731
                               if ln.startswith("| 0.95 |")))
    assert row95(one) == row95(out)  # the CRF's input does not depend on its iterations
    bad = run_benchmark("cgl_confidence", *data, "--cams", tmp_path / "cams", "--iterations",
                        "0", check=False)
    assert bad.returncode != 0 and "--iterations 0: give 1 or more" in bad.stderr
    assert "Traceback" not in bad.stderr
